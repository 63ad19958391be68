//! `ferry login REGISTRY` / `ferry logout REGISTRY|--all`: credentials checked
//! against the registry, then stored in the auth file skopeo, podman and docker
//! read. The password is never printed, logged or put in an error.

use super::out::outln;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::auth::Credentials;
use crate::auth::file::{default_path, registry_key, remove, remove_all, store};
use crate::registry::{Client, ClientOptions, RegistryError};

/// Flags of `ferry login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The registry, HOST[:PORT].
    registry: String,
    /// User name (asked for when missing and stdin is a terminal).
    #[arg(short, long)]
    username: Option<String>,
    /// Password (visible in the process list: prefer --password-stdin).
    #[arg(short, long)]
    password: Option<String>,
    /// Read the password from stdin.
    #[arg(long)]
    password_stdin: bool,
    /// Print the user name stored for the registry and change nothing.
    #[arg(long)]
    get_login: bool,
    /// Auth file to write (default $REGISTRY_AUTH_FILE, else ${XDG_RUNTIME_DIR}/containers/auth.json).
    #[arg(long)]
    authfile: Option<PathBuf>,
    /// Verify the registry's TLS certificate (false also allows plain http).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", action = clap::ArgAction::Set)]
    tls_verify: bool,
    /// Directory of CA certificates (*.crt) for the registry.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
}

/// Flags of `ferry logout`.
#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The registry, HOST[:PORT].
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    registry: Option<String>,
    /// Remove the stored credentials of every registry.
    #[arg(short, long)]
    all: bool,
    /// Auth file to change (default as for login).
    #[arg(long)]
    authfile: Option<PathBuf>,
}

/// Reads one line from stdin after printing `prompt` on stderr, for a person at a terminal.
fn prompt_line(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Stores credentials only after the registry accepted them, so a typo never lands in the file.
pub fn login(a: LoginArgs) -> anyhow::Result<ExitCode> {
    let key = registry_key(&a.registry).map_err(anyhow::Error::msg)?;
    let host = key.split('/').next().unwrap_or(&key).to_string();
    if a.get_login {
        if a.authfile.as_ref().is_some_and(|f| !f.exists()) {
            bail!("not logged into {key}");
        }
        let c = crate::auth::lookup(&host, None, a.authfile.as_deref())
            .with_context(|| format!("reading the login for {key}"))?;
        match c {
            Some(c) if !c.username.is_empty() => {
                outln!("{}", c.username);
                return Ok(ExitCode::SUCCESS);
            }
            _ => bail!("not logged into {key}"),
        }
    }
    if a.password.is_some() && a.password_stdin {
        return Err(super::UsageError(
            "--password and --password-stdin are mutually exclusive".into(),
        )
        .into());
    }
    let terminal = std::io::stdin().is_terminal();
    let username = match a.username.clone() {
        Some(u) => u,
        None if a.password_stdin => {
            return Err(super::UsageError("--password-stdin needs --username".into()).into());
        }
        None if terminal => prompt_line("Username: ")?,
        None => bail!("logging into {key}: no --username given and stdin is not a terminal"),
    };
    if username.is_empty() {
        bail!("logging into {key}: the user name is empty");
    }
    let secret = match (a.password.clone(), a.password_stdin) {
        (Some(p), _) => p,
        (None, true) => {
            let mut s = String::new();
            std::io::stdin()
                .lock()
                .read_to_string(&mut s)
                .context("reading the password from stdin")?;
            s.trim_end_matches(['\r', '\n']).to_string()
        }
        (None, false) if terminal => super::read_password("Password: ")?,
        (None, false) => bail!(
            "logging into {key}: no password given (-p, or --password-stdin) and stdin is not a terminal"
        ),
    };
    if secret.is_empty() {
        bail!("logging into {key}: the password is empty");
    }
    let creds = Credentials { username, secret };
    let opts = ClientOptions {
        tls_verify: a.tls_verify,
        credentials: Some(creds.clone()),
        cert_dir: a.cert_dir.clone(),
        ..ClientOptions::default()
    };
    let rt = super::runtime()?;
    let checked = rt.block_on(async {
        let client = Client::new(&host, &opts)?;
        client.check_login().await
    });
    match checked {
        Ok(()) => {}
        Err(RegistryError::Status { status, .. }) if status.as_u16() == 401 => {
            bail!("logging into {key}: invalid username or password (the registry answered 401)")
        }
        Err(RegistryError::Token { why, .. }) if why.contains("401") => {
            bail!(
                "logging into {key}: invalid username or password (the token service answered 401)"
            )
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("logging into {key}"))),
    }
    let path = a.authfile.clone().unwrap_or_else(default_path);
    store(&path, &key, &creds).with_context(|| format!("storing the login for {key}"))?;
    outln!("Login Succeeded!");
    Ok(ExitCode::SUCCESS)
}

/// Removes stored credentials, keeping every other entry of the auth file.
pub fn logout(a: LogoutArgs) -> anyhow::Result<ExitCode> {
    let path = a.authfile.clone().unwrap_or_else(default_path);
    if a.all {
        remove_all(&path).context("removing every login")?;
        outln!("Removed login credentials for all registries");
        return Ok(ExitCode::SUCCESS);
    }
    let arg = a
        .registry
        .as_deref()
        .expect("clap requires it without --all");
    let key = registry_key(arg).map_err(anyhow::Error::msg)?;
    if !remove(&path, &key).with_context(|| format!("logging out of {key}"))? {
        bail!("not logged into {key} (no entry in {})", path.display());
    }
    outln!("Removed login credentials for {key}");
    Ok(ExitCode::SUCCESS)
}
