//! `ferry list-tags docker://REPO`: every tag of a repository, followed through
//! every page, printed as skopeo prints it.

use super::out::outln;
use std::process::ExitCode;

use anyhow::bail;

use super::registry_flags::{RegistryFlags, docker_name};
use crate::reference::DEFAULT_REGISTRY;
use crate::transport::ImageRef;
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
    repository: String,
    tags: Vec<String>,
}

/// Prints every tag of the repository, all pages followed, in skopeo's document.
pub fn run(a: ListTagsArgs) -> anyhow::Result<ExitCode> {
    let r = match ImageRef::parse(&a.repository)? {
        ImageRef::Docker(r) => r,
        other => bail!("{other}: list-tags reads a registry repository; write docker://HOST/REPO"),
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
    outln!("{}", crate::inspect::go_indent(&doc));
    Ok(ExitCode::SUCCESS)
}
