//! `ferry keygen -o NAME`: a minisign key pair for `bundle --sign` and `--key`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::GlobalArgs;
use super::out::outln;

/// Flags of `ferry keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Writes NAME.key (secret, mode 0600, UNENCRYPTED so a pipeline can sign without a prompt:
    /// guard it like a password) and NAME.pub (give it to the sites); never over existing files.
    #[arg(short, long, value_name = "NAME")]
    output: PathBuf,
}

/// Runs `ferry keygen`: the two paths and the key id go to stdout.
pub fn run(g: &GlobalArgs, a: KeygenArgs) -> anyhow::Result<ExitCode> {
    let (key, public, id) = crate::bundlefile::sign::generate(&a.output)?;
    outln!("{}", key.display());
    outln!("{}", public.display());
    if !g.quiet {
        eprintln!(
            "ferry: key {id}: sign with `ferry bundle --sign {}`, check with `--key {}` (also `minisign -V -p {}`)",
            key.display(),
            public.display(),
            public.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
