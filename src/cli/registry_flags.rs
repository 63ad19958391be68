//! The registry flags skopeo's one-image verbs share (`--tls-verify`, `--creds`,
//! `--authfile`, `--cert-dir`), and small helpers those verbs have in common.

use std::path::PathBuf;

use crate::manifest::Platform;
use crate::reference::{DEFAULT_REGISTRY, Reference};
use crate::registry::ClientOptions;

/// skopeo's connection flags for `inspect`, `list-tags` and `delete`.
#[derive(Debug, clap::Args)]
pub struct RegistryFlags {
    /// Verify the registry's TLS certificate (false also allows plain http).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "true", action = clap::ArgAction::Set)]
    tls_verify: bool,
    /// Credentials for the registry, USER[:PASS].
    #[arg(long)]
    creds: Option<String>,
    /// Auth file (docker config.json or containers auth.json).
    #[arg(long)]
    authfile: Option<PathBuf>,
    /// Directory of CA certificates (*.crt) for the registry, instead of the certs.d directories.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Timeouts (and the per-host cap), as on the other verbs that talk to registries.
    #[command(flatten)]
    net: super::NetArgs,
}

impl RegistryFlags {
    /// The client options these flags ask for (a password left out of `--creds` is asked for on a terminal).
    pub fn client_options(&self) -> anyhow::Result<ClientOptions> {
        Ok(self.net.apply(
            ClientOptions {
                tls_verify: self.tls_verify,
                credentials: self
                    .creds
                    .as_deref()
                    .map(|v| super::credentials("--creds", v))
                    .transpose()?,
                authfile: self.authfile.clone(),
                cert_dir: self.cert_dir.clone(),
                ..ClientOptions::default()
            },
            crate::limits::DEFAULT_PER_HOST_CONCURRENCY,
            "--tls-verify=false",
        ))
    }
}

/// The platform to choose from an index: this system's, changed by the `--override-*` flags.
pub fn platform(
    os: Option<&str>,
    arch: Option<&str>,
    variant: Option<&str>,
) -> anyhow::Result<Platform> {
    let crate::copy::MultiArch::System(mut p) = crate::copy::MultiArch::system() else {
        unreachable!("system() is a System choice")
    };
    if let Some(os) = os {
        p.os = os.to_string();
    }
    if let Some(arch) = arch {
        p.architecture = arch.to_string();
        p.variant = None;
    }
    if let Some(v) = variant {
        p.variant = Some(v.to_string());
    }
    Platform::parse(&p.to_string()).map_err(anyhow::Error::msg)
}

/// A repository's full name as skopeo prints it (`HOST/REPO`, Docker Hub's with `docker.io/library/`).
pub fn docker_name(r: &Reference) -> String {
    let host = r.registry(DEFAULT_REGISTRY);
    let host = if crate::reference::is_docker_hub(host) {
        DEFAULT_REGISTRY
    } else {
        host
    };
    format!("{host}/{}", r.remote_repository(DEFAULT_REGISTRY))
}
