//! The `s3://BUCKET[/PREFIX]` side of the verbs that take a registry root:
//! opening the bucket from `--s3-endpoint` and the AWS environment, and
//! `unbundle link` into it.

use std::path::Path;

use super::GlobalArgs;
use super::progress::Bar;
use crate::bundle::unpack::LinkSummary;
use crate::store::s3::S3Root;

/// Opens a bucket root named on the command line (no request is sent yet).
pub(super) fn open_root(g: &GlobalArgs, root: &Path) -> anyhow::Result<S3Root> {
    let url = root.to_str().unwrap_or_default();
    Ok(S3Root::open(url, g.s3_endpoint.as_deref())?)
}

/// `unbundle link BUNDLE --root s3://…`: the copy engine moves every image into the bucket.
pub(super) fn link(
    g: &GlobalArgs,
    bundle: &Path,
    root: &Path,
    no_clobber: bool,
    base: Option<&Path>,
    key: Option<&crate::bundlefile::sign::VerifyingKey>,
    bar: &Bar,
) -> anyhow::Result<LinkSummary> {
    let root = open_root(g, root)?;
    let rt = super::runtime()?;
    let jobs = crate::limits::DEFAULT_JOBS;
    let r = rt.block_on(crate::bundle::link_s3::link_s3(
        bundle, &root, no_clobber, base, key, jobs, bar,
    ));
    match r {
        Err(crate::bundle::link_s3::LinkS3Error::Copy(crate::copy::CopyError::Several(v))) => {
            for e in &v[1..] {
                eprintln!("error: {e}");
            }
            Err(anyhow::anyhow!("{}", v[0]))
        }
        r => Ok(r?),
    }
}

/// `ferry verify s3://…`: the bucket checked with one request, then every blob re-hashed and every link resolved.
pub(super) fn verify(g: &GlobalArgs, root: &Path) -> anyhow::Result<crate::store::VerifyReport> {
    let root = open_root(g, root)?;
    let rt = super::runtime()?;
    rt.block_on(async {
        root.check().await?;
        Ok(root.verify(crate::limits::DEFAULT_JOBS).await?)
    })
}

/// `ferry ls s3://…`: each tagged image of each repository, walked over the manifests it links.
pub(super) fn rows(g: &GlobalArgs, root: &Path) -> anyhow::Result<Vec<super::ls::Row>> {
    let root = open_root(g, root)?;
    let rt = super::runtime()?;
    rt.block_on(async {
        root.check().await?;
        let listing = root.listing().await?;
        let mut rows = Vec::new();
        for (repo, links) in &listing.repos {
            for tag in &links.tags {
                let spec = crate::store::paths::PathSpec::TagCurrentLink(repo, tag);
                let Some(digest) = root.read_link(spec).await? else {
                    continue;
                };
                let w = root
                    .walk(&links.revisions, &digest)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}: {repo}:{tag}: {e}", root.url()))?;
                rows.push(super::ls::row(
                    repo.clone(),
                    Some(tag.clone()),
                    digest,
                    &w,
                    &|_| false,
                ));
            }
        }
        Ok(rows)
    })
}

/// `ferry serve s3://…`: the bucket checked with one request, then served read-only, each request
/// answered from the bucket (blobs streamed through ferry; see [`crate::transport::root_s3::S3Catalog`]).
pub(super) fn serve(
    g: &GlobalArgs,
    root: &Path,
    flags: &super::serve::ServeFlags,
    opts: crate::serve::Options,
) -> anyhow::Result<std::process::ExitCode> {
    if flags.allow_push || flags.allow_delete {
        return Err(super::UsageError(format!(
            "{}: a bucket root is served read-only (push into it with unbundle link, or through a registry on it)",
            root.display()
        ))
        .into());
    }
    // Checked on a runtime of its own, so the server's client starts with no pooled connection of it.
    super::runtime()?.block_on(open_root(g, root)?.check())?;
    let root = open_root(g, root)?;
    let what = root.url();
    super::serve::listen_and_serve(
        g,
        flags,
        opts,
        &what,
        crate::transport::root_s3::S3Catalog(root),
    )
}
