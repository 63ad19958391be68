//! `ferry list-tags docker://REPO`: every tag of a repository, followed through
//! every page, printed as skopeo prints it; `docker-archive:PATH`: every image's
//! `RepoTags`, as skopeo lists them.

use super::out::outln;
use std::process::ExitCode;

use anyhow::bail;

use super::registry_flags::{RegistryFlags, docker_name};
use crate::reference::DEFAULT_REGISTRY;
use crate::transport::ImageRef;
use crate::transport::docker_archive::DockerArchiveSource;
use crate::transport::registry::Clients;

/// Flags of `ferry list-tags`.
#[derive(Debug, clap::Args)]
pub struct ListTagsArgs {
    /// The repository, docker://HOST/REPO (no tag or digest).
    repository: String,
    #[command(flatten)]
    registry: RegistryFlags,
}

/// skopeo's `list-tags` document, in its field order.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct TagList {
    /// Left out for an archive, as skopeo does.
    #[serde(skip_serializing_if = "String::is_empty")]
    repository: String,
    tags: Vec<String>,
}

/// Prints every tag of the repository, all pages followed, in skopeo's document.
pub fn run(a: ListTagsArgs) -> anyhow::Result<ExitCode> {
    let r = match ImageRef::parse(&a.repository)? {
        ImageRef::Docker(r) => r,
        // As skopeo: every image of the archive (a NAME:TAG after the path is ignored).
        ImageRef::DockerArchive(path, _) => {
            let tags = DockerArchiveSource::list_tags(&path).map_err(|e| {
                anyhow::Error::new(e).context(format!("listing the tags of {}", a.repository))
            })?;
            outln!(
                "{}",
                crate::gojson::indent(&TagList {
                    repository: String::new(),
                    tags
                })
            );
            return Ok(ExitCode::SUCCESS);
        }
        other => bail!(
            "{other}: list-tags reads a registry repository or a docker-archive; write docker://HOST/REPO or docker-archive:PATH"
        ),
    };
    if r.tag().is_some() || r.digest().is_some() {
        bail!(
            "{}: a repository is named without a tag or digest; write docker://{}",
            a.repository,
            docker_name(&r)
        );
    }
    let opts = a.registry.client_options()?;
    let rt = super::runtime()?;
    let tags = rt.block_on(async {
        let clients = Clients::default();
        let client = clients.get(r.registry(DEFAULT_REGISTRY), &opts)?;
        anyhow::Ok(
            client
                .list_tags(&r.remote_repository(DEFAULT_REGISTRY))
                .await?,
        )
    });
    let tags = tags.map_err(|e| e.context(format!("listing the tags of {}", a.repository)))?;
    let doc = TagList {
        repository: docker_name(&r),
        tags,
    };
    outln!("{}", crate::gojson::indent(&doc));
    Ok(ExitCode::SUCCESS)
}
