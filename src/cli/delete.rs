//! `ferry delete docker://HOST/REPO:TAG|@DIGEST`: resolves the tag and deletes
//! the manifest by digest (registries refuse deletes by tag), as skopeo does.

use std::process::ExitCode;

use anyhow::bail;

use super::registry_flags::RegistryFlags;
use crate::reference::DEFAULT_REGISTRY;
use crate::registry::RegistryError;
use crate::transport::ImageRef;
use crate::transport::registry::Clients;

/// Flags of `ferry delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The image, docker://HOST/REPO[:TAG|@DIGEST].
    image: String,
    #[command(flatten)]
    registry: RegistryFlags,
}

/// Deletes the image's manifest by digest, since registries refuse deletes by tag.
pub fn run(g: &super::GlobalArgs, a: DeleteArgs) -> anyhow::Result<ExitCode> {
    let r = match ImageRef::parse(&a.image)? {
        ImageRef::Docker(r) => r,
        other => bail!("{other}: delete works on registry images; write docker://HOST/REPO:TAG"),
    };
    let opts = a.registry.client_options()?;
    let rt = super::runtime()?;
    let repo = r.remote_repository(DEFAULT_REGISTRY);
    let digest = rt.block_on(async {
        let clients = Clients::default();
        let client = clients.get(r.registry(DEFAULT_REGISTRY), &opts)?;
        let digest = match r.digest() {
            Some(d) => d.clone(),
            None => {
                let tag = r.remote_ref();
                match client.head_manifest(&repo, &tag).await {
                    Ok(Some(h)) => h.digest,
                    Ok(None) => client.get_manifest(&repo, &tag).await?.digest().clone(),
                    Err(e) if e.is_not_found() => bail!("tag {tag} not found"),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        match client.delete_manifest(&repo, &digest).await {
            Ok(()) => anyhow::Ok(digest),
            Err(e) if is_unsupported(&e) => bail!(
                "the registry does not allow deletes (HTTP 405; distribution needs storage.delete.enabled: true)"
            ),
            Err(e) if e.is_not_found() => bail!("manifest {digest} not found"),
            Err(e) => Err(e.into()),
        }
    });
    let digest = digest.map_err(|e| e.context(format!("deleting {}", a.image)))?;
    if !g.quiet {
        eprintln!("ferry: deleted {} ({digest})", a.image);
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the registry refused a delete because deletes are off (405 / UNSUPPORTED).
fn is_unsupported(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Status { status, .. } if status.as_u16() == 405)
}
