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
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", action = clap::ArgAction::Set)]
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
        Ok(ClientOptions {
            cert_dir: self.cert_dir.clone(),
            ..self.net.side(
                "",
                self.tls_verify,
                &self.creds,
                self.authfile.clone(),
                crate::limits::DEFAULT_PER_HOST_CONCURRENCY,
            )?
        })
    }
}

/// The credentials a `--creds`-style flag gives, USER[:PASS] (a password left out is asked for on a terminal).
pub fn creds(
    flag: &str,
    value: &Option<String>,
) -> anyhow::Result<Option<crate::auth::Credentials>> {
    value
        .as_deref()
        .map(|v| super::credentials(flag, v))
        .transpose()
}

/// skopeo's `--override-arch`, `--override-os` and `--override-variant` (copy, inspect).
#[derive(Debug, clap::Args)]
pub struct PlatformOverride {
    /// Choose this architecture from a multi-platform image instead of the system's.
    #[arg(long)]
    override_arch: Option<String>,
    /// Choose this OS from a multi-platform image instead of linux.
    #[arg(long)]
    override_os: Option<String>,
    /// Choose this CPU variant from a multi-platform image.
    #[arg(long)]
    override_variant: Option<String>,
}

impl PlatformOverride {
    /// This system's platform changed by these flags, spelled as given (copy matches
    /// it so); the spelling is validated as `--platform` is.
    pub fn as_given(&self) -> anyhow::Result<Platform> {
        let crate::copy::MultiArch::System(mut p) = crate::copy::MultiArch::system() else {
            unreachable!("system() is a System choice")
        };
        if let Some(os) = &self.override_os {
            p.os = os.clone();
        }
        if let Some(arch) = &self.override_arch {
            p.architecture = arch.clone();
            p.variant = None;
        }
        if let Some(v) = &self.override_variant {
            p.variant = Some(v.clone());
        }
        Platform::parse(&p.to_string()).map_err(anyhow::Error::msg)?;
        Ok(p)
    }

    /// The same platform read back as `--platform` reads it (lower case), as inspect matches it.
    pub fn parsed(&self) -> anyhow::Result<Platform> {
        Platform::parse(&self.as_given()?.to_string()).map_err(anyhow::Error::msg)
    }
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

/// The two sides' TLS and credential flags of `copy` and `sync`, spelled as skopeo spells them.
#[derive(Debug, clap::Args)]
pub struct SideFlags {
    /// Verify the source registry's TLS certificate (false also allows plain http); in `sync`, a sync file's tls-verify wins.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", action = clap::ArgAction::Set)]
    pub src_tls_verify: bool,
    /// Verify the destination registry's TLS certificate (false also allows plain http).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", action = clap::ArgAction::Set)]
    pub dest_tls_verify: bool,
    /// Credentials for the source registry, USER[:PASS]; in `sync`, a sync file's credentials win.
    #[arg(long)]
    pub src_creds: Option<String>,
    /// Credentials for the destination registry, USER[:PASS].
    #[arg(long)]
    pub dest_creds: Option<String>,
    /// Auth file for both sides (docker config.json or containers auth.json).
    #[arg(long)]
    pub authfile: Option<PathBuf>,
}
