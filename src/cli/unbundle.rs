//! `ferry unbundle serve | link | push`: the site side of the main job.

use super::out::outln;
use std::path::PathBuf;
use std::process::ExitCode;

use std::collections::{HashMap, HashSet};

use anyhow::{Context, bail};

use crate::digest::Digest;
use crate::manifest::RawManifest;

use super::{GlobalArgs, human_bytes};
use crate::bundle::unpack::link;
use crate::bundlefile::merge::{check_tags_agree, distinct_files, distinct_images};
use crate::bundlefile::read::BundleFile;
use crate::store::Store;
use crate::transport::bundle::Bundles;
use crate::transport::catalog::CatalogSource;

/// Flags of `ferry unbundle`.
#[derive(Debug, clap::Args)]
pub struct UnbundleArgs {
    #[command(subcommand)]
    command: UnbundleCommand,
}

#[derive(Debug, clap::Subcommand)]
enum UnbundleCommand {
    /// Serve bundles in place (no unpacking), or a registry root, as a registry.
    Serve(ServeArgs),
    /// Merge a bundle into a registry root (also one a registry is serving).
    Link(LinkArgs),
    /// Push every image of a bundle (read in place) or a registry root to a registry.
    Push(PushArgs),
}

#[derive(Debug, clap::Args)]
struct PushArgs {
    /// The bundle file, or a registry root directory.
    source: PathBuf,
    /// Target registry, HOST[:PORT][/PREFIX] (the prefix goes before every repository).
    #[arg(long)]
    dest: String,
    /// Blobs pushed at once; also the per-host cap unless --max-per-host is given.
    #[arg(long, default_value_t = crate::limits::DEFAULT_JOBS, value_parser = super::jobs_parser())]
    jobs: usize,
    #[command(flatten)]
    net: super::NetArgs,
    /// Verify the target's TLS certificate (false also allows plain http).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", action = clap::ArgAction::Set)]
    dest_tls_verify: bool,
    /// Credentials for the target, USER[:PASS].
    #[arg(long)]
    dest_creds: Option<String>,
    /// Auth file (docker config.json or containers auth.json).
    #[arg(long)]
    authfile: Option<PathBuf>,
    /// When an index is sparse, push an index of the present platforms instead (its digest changes and is reported).
    #[arg(long)]
    rewrite_sparse_index: bool,
    /// For a delta bundle: its base (the bundle it was made --since); left-out blobs the target lacks come from it.
    #[arg(long, value_name = "OLD")]
    base: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    /// The bundle must be signed with this minisign public key, checked before anything is pushed.
    #[arg(long, value_name = "PUB")]
    key: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Bundle files (merged into one registry; they must agree on every tag, except that a delta bundle, served only together with its base, overrides its base's tags), or one registry root directory.
    #[arg(required = true)]
    sources: Vec<PathBuf>,
    #[command(flatten)]
    server: super::serve::ServeFlags,
    /// Unpack into this root first (verified) and serve that, instead of reading the bundles in place; pushes go there.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Every bundle must be signed with this minisign public key, checked before anything is served or unpacked.
    #[arg(long, value_name = "PUB")]
    key: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct LinkArgs {
    /// The bundle file.
    bundle: PathBuf,
    /// The registry root to merge into (distribution's rootdirectory), or s3://BUCKET[/PREFIX].
    #[arg(long)]
    root: PathBuf,
    /// Refuse to move a tag that already points elsewhere.
    #[arg(long)]
    no_clobber: bool,
    /// For a delta bundle: its base (the bundle it was made --since); left-out blobs the root lacks come from it.
    #[arg(long, value_name = "OLD")]
    base: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    /// The bundle must be signed with this minisign public key, checked before anything is written.
    #[arg(long, value_name = "PUB")]
    key: Option<PathBuf>,
}

/// With `--key`, checks each bundle's signature (reading only its first two entries) before any
/// other use of it; a root directory has no signature to check, so `--key` with one is refused.
fn check_keys(key: &Option<PathBuf>, sources: &[PathBuf]) -> anyhow::Result<()> {
    let Some(key) = super::verify::load_key(key)? else {
        return Ok(());
    };
    for s in sources {
        super::must_exist(s)?;
        if s.is_dir() {
            return Err(super::UsageError(format!(
                "--key checks a bundle's signature; {} is a directory (a registry root)",
                s.display()
            ))
            .into());
        }
        crate::bundlefile::read::check_signature(s, &key)?;
    }
    Ok(())
}

/// Runs `ferry unbundle`; with `--json`, `link` and `push` print a JSON document whatever the outcome.
pub fn run(g: &GlobalArgs, a: UnbundleArgs) -> anyhow::Result<ExitCode> {
    let (json, r) = match a.command {
        UnbundleCommand::Serve(s) => return serve(g, s),
        UnbundleCommand::Link(l) => (l.json, link_cmd(g, l)),
        UnbundleCommand::Push(p) => (p.json, push_cmd(g, p)),
    };
    if json && let Err(e) = &r {
        let failed: Vec<serde_json::Value> = match e.downcast_ref::<NotPushed>() {
            Some(NotPushed(causes)) => causes
                .iter()
                .map(|c| serde_json::json!({ "cause": c }))
                .collect(),
            None => Vec::new(),
        };
        let doc = serde_json::json!({ "ok": false, "error": format!("{e:#}"), "failed": failed });
        outln!("{}", serde_json::to_string_pretty(&doc)?);
    }
    r
}

/// Images a push could not bring (each already printed), kept for `--json`.
#[derive(Debug, thiserror::Error)]
#[error("{} image(s) were not pushed; the others were", .0.len())]
struct NotPushed(Vec<String>);

fn serve(g: &GlobalArgs, a: ServeArgs) -> anyhow::Result<ExitCode> {
    let opts = a.server.options()?;
    for s in &a.sources {
        super::must_exist(s)?;
    }
    check_keys(&a.key, &a.sources)?;
    let key = super::verify::load_key(&a.key)?;
    if a.sources.len() == 1 && a.sources[0].is_dir() {
        if a.dir.is_some() {
            bail!(
                "--dir unpacks bundles; {} is already a directory",
                a.sources[0].display()
            );
        }
        return super::serve::serve_root(g, &a.sources[0], &a.server, opts);
    }
    // The same file given twice (by any path) is one bundle.
    let mut sources = distinct_files(&a.sources);
    if let Some(dir) = &a.dir {
        // Unpacked one after another: a base before its deltas, so the newest tags are written last.
        crate::bundlefile::delta::oldest_first(&mut sources)?;
        let mut indexes = Vec::new();
        let mut ids = Vec::new();
        for b in &sources {
            let (index, bytes) = crate::bundlefile::read::read_index_bytes(b)?;
            indexes.push(index);
            ids.push(crate::digest::Digest::sha256_of(&bytes));
        }
        // Several bundles given: a delta's base must be one of them (by digest). One alone
        // goes into DIR as `link` would, where its left-out blobs must already be.
        if sources.len() > 1 {
            crate::bundlefile::delta::check_bases_given(
                &sources
                    .iter()
                    .zip(&ids)
                    .zip(&indexes)
                    .map(|((p, id), i)| (p.as_path(), id, i))
                    .collect::<Vec<_>>(),
            )?;
        }
        let paths: Vec<&std::path::Path> = sources.iter().map(|p| p.as_path()).collect();
        let same_line = crate::bundlefile::delta::same_line(&paths)?;
        check_tags_agree(paths.iter().copied().zip(&indexes), &same_line)?;
        let rt = super::runtime()?;
        for b in &sources {
            rt.block_on(link(
                b,
                dir,
                false,
                None,
                key.as_ref(),
                crate::limits::DEFAULT_JOBS,
                &|_| {},
            ))
            .with_context(|| format!("unpacking {} into {}", b.display(), dir.display()))?;
        }
        return super::serve::serve_root(g, dir, &a.server, opts);
    }
    if a.server.allow_push || a.server.allow_delete {
        return Err(super::UsageError(
            "--allow-push and --allow-delete need --dir DIR: bundles are served read-only in place"
                .to_string(),
        )
        .into());
    }
    let mut bundles = Vec::new();
    for b in &sources {
        // The signature is checked again on the very bytes served; from the bundle's offset table
        // when it has one (blobs are then checked against their digests as they are served).
        bundles.push(BundleFile::open_in_place(b, key.as_ref())?);
    }
    crate::bundlefile::delta::newest_first(&mut bundles);
    // A delta serves only together with its base: its left-out blobs must be in another bundle given.
    for (i, b) in bundles.iter().enumerate() {
        let hint = match &b.scan.index.since {
            Some(s) => format!(
                "serve it with its base: ferry unbundle serve {} {}",
                s.name,
                b.path().display()
            ),
            None => continue,
        };
        crate::bundlefile::delta::check(
            b.path(),
            &b.scan.index,
            "the other bundles given",
            &hint,
            &mut |l| {
                bundles
                    .iter()
                    .enumerate()
                    .any(|(j, o)| j != i && o.scan.blobs.contains_key(&l.digest))
            },
        )?;
    }
    // …and that other bundle must be its very base, by the digest of its ferry-bundle.json.
    crate::bundlefile::delta::check_bases_given(
        &bundles
            .iter()
            .map(|b| (b.path(), &b.scan.index_digest, &b.scan.index))
            .collect::<Vec<_>>(),
    )?;
    let paths: Vec<&std::path::Path> = bundles.iter().map(|b| b.path()).collect();
    let same_line = crate::bundlefile::delta::same_line(&paths)?;
    check_tags_agree(
        bundles.iter().map(|b| (b.path(), &b.scan.index)),
        &same_line,
    )?;
    let images = distinct_images(bundles.iter().map(|b| &b.scan.index));
    let what = format!("{} bundle(s), {images} images, in place", bundles.len());
    let bundles = Bundles(bundles);
    bundles.check_links()?;
    super::serve::listen_and_serve(g, &a.server, opts, &what, bundles)
}

fn link_cmd(g: &GlobalArgs, a: LinkArgs) -> anyhow::Result<ExitCode> {
    super::must_exist(&a.bundle)?;
    if !a.bundle.is_file() {
        bail!("{}: not a bundle file", a.bundle.display());
    }
    check_keys(&a.key, std::slice::from_ref(&a.bundle))?;
    let key = super::verify::load_key(&a.key)?;
    let index = crate::bundlefile::read_index(&a.bundle)?;
    let bar = super::progress::bar(g.quiet || g.debug, "link");
    {
        use crate::bundle::Progress;
        bar.planned(
            index.images.len(),
            index.blobs.len(),
            index.blobs.iter().map(|b| b.size).sum(),
        );
    }
    if let Some(b) = &a.base {
        super::must_exist(b)?;
    }
    let result = if crate::store::s3::is_s3(&a.root) {
        let (bundle, base) = (&a.bundle, a.base.as_deref());
        super::s3::link(
            g,
            bundle,
            &a.root,
            a.no_clobber,
            base,
            key.as_ref(),
            bar.as_ref(),
        )
    } else {
        super::runtime()?
            .block_on(link(
                &a.bundle,
                &a.root,
                a.no_clobber,
                a.base.as_deref(),
                key.as_ref(),
                crate::limits::DEFAULT_JOBS,
                &|n| crate::bundle::Progress::fetched(bar.as_ref(), n),
            ))
            .map_err(Into::into)
    };
    bar.finish();
    let s = result?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&with_ok(&s)?)?);
    }
    if !g.quiet {
        for t in &s.tags {
            match &t.old {
                None => eprintln!("{}:{}: new, {}", t.repository, t.tag, t.new),
                Some(o) if o == &t.new => {
                    eprintln!("{}:{}: unchanged, {}", t.repository, t.tag, t.new)
                }
                Some(o) => eprintln!("{}:{}: moved {} -> {}", t.repository, t.tag, o, t.new),
            }
        }
        eprintln!(
            "ferry: linked {} into {}: {} blobs added ({}), {} already there, {} tags",
            a.bundle.display(),
            a.root.display(),
            s.blobs_added,
            human_bytes(s.bytes_added),
            s.blobs_present,
            s.tags.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn push_cmd(g: &GlobalArgs, a: PushArgs) -> anyhow::Result<ExitCode> {
    use crate::copy::{CopyOptions, MultiArch};
    super::must_exist(&a.source)?;
    check_keys(&a.key, std::slice::from_ref(&a.source))?;
    let key = super::verify::load_key(&a.key)?;
    let (host, prefix) = match a.dest.split_once('/') {
        Some((h, p)) => (h.to_string(), Some(p.trim_end_matches('/').to_string())),
        None => (a.dest.clone(), None),
    };
    if let Some(p) = &prefix {
        crate::reference::validate_repository(p)
            .with_context(|| format!("--dest {}: prefix {p:?}", a.dest))?;
    }
    let client = a.net.side(
        "dest",
        a.dest_tls_verify,
        &a.dest_creds,
        a.authfile.clone(),
        a.jobs,
    )?;
    let opts = CopyOptions {
        multi_arch: MultiArch::All,
        preserve_digests: false,
        format: None,
        rewrite_sparse_index: a.rewrite_sparse_index,
        jobs: a.jobs.max(1),
        sparse_hint: "bundle again with --all-platforms, or push with --rewrite-sparse-index to push an index of the present platforms (its digest changes)",
    };
    let target = crate::registry::Client::new(&host, &client)?;
    let pushed = std::sync::Arc::new(crate::transport::registry::Pushed::default());
    let dest = |repo: &str, tag: Option<String>| {
        let repo = match &prefix {
            Some(p) => format!("{p}/{repo}"),
            None => repo.to_string(),
        };
        crate::transport::registry::RegistryDest::new(target.clone(), repo, tag, pushed.clone())
    };
    let rt = super::runtime()?;
    // One check of the target before any image: a dead or mistyped one is one line, not one per image.
    rt.block_on(target.ping())?;
    let bar = super::progress::bar(g.quiet || g.debug, "push");
    let summary = if a.source.is_dir() {
        let store = Store::open(&a.source);
        if !store.exists() {
            bail!(
                "{}: not a registry root (no docker/registry/v2 directory)",
                a.source.display()
            );
        }
        let catalog = std::sync::Arc::new(store);
        let mut jobs = Vec::new();
        for repo in catalog.repositories()? {
            for tag in catalog.tags(&repo)? {
                let r = crate::reference::Reference::parse(&format!("{repo}:{tag}"))?;
                jobs.push(crate::copy::Job {
                    source: CatalogSource::new(catalog.clone(), r, format!("{repo}:{tag}")),
                    destination: dest(&repo, Some(tag)),
                });
            }
        }
        rt.block_on(crate::copy::copy_all(jobs, &opts, bar.as_ref()))
    } else {
        // The target checks every blob's digest as it receives it, so the bundle is not hashed twice here.
        let bundle = BundleFile::open_checked(
            &a.source,
            &mut crate::bundlefile::read::StructureOnly,
            key.as_ref(),
        )?;
        let images = bundle.scan.index.images.clone();
        let mut bundles = vec![bundle];
        if let Some(b) = &a.base {
            super::must_exist(b)?;
            let opened = BundleFile::open_with(b, &mut crate::bundlefile::read::StructureOnly)?;
            crate::bundlefile::delta::check_base(
                &a.source,
                &bundles[0].scan.index,
                b,
                &opened.scan.index_digest,
            )?;
            bundles.push(opened);
        }
        // A delta's left-out blobs are checked at the target (or in --base) before anything is pushed.
        let manifests = rt.block_on(delta_at_target(
            &bundles,
            &target,
            &|r: &str| match &prefix {
                Some(p) => format!("{p}/{r}"),
                None => r.to_string(),
            },
            &a.dest,
            a.base.as_deref(),
        ))?;
        Bundles(bundles.clone()).check_links()?;
        let catalog = std::sync::Arc::new(crate::transport::bundle::WithManifests {
            bundles: Bundles(bundles),
            manifests,
        });
        let mut jobs = Vec::new();
        for i in images {
            let name = format!(
                "{}{}",
                i.repository,
                i.tag
                    .as_deref()
                    .map(|t| format!(":{t}"))
                    .unwrap_or_default()
            );
            let r = crate::reference::Reference::parse(&format!("{}@{}", i.repository, i.digest))?;
            jobs.push(crate::copy::Job {
                source: CatalogSource::new(catalog.clone(), r, name),
                destination: dest(&i.repository, i.tag.clone()),
            });
        }
        rt.block_on(crate::copy::copy_all(jobs, &opts, bar.as_ref()))
    };
    bar.finish();
    let summary = match summary {
        Ok(s) => s,
        Err(crate::copy::CopyError::Several(v)) => {
            for e in &v {
                eprintln!("error: {e}");
            }
            return Err(NotPushed(v.iter().map(ToString::to_string).collect()).into());
        }
        Err(e) => return Err(e.into()),
    };
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&with_ok(&summary)?)?);
    }
    for r in &summary.rewritten {
        eprintln!(
            "{}: sparse index {} pushed as {} (present platforms only)",
            r.image, r.original, r.pushed
        );
    }
    if !g.quiet {
        eprintln!(
            "ferry: pushed {} images to {}: {} blobs uploaded ({}), {} mounted, {} already there, {} manifests",
            summary.images,
            a.dest,
            summary.blobs_uploaded,
            human_bytes(summary.bytes_uploaded),
            summary.blobs_mounted,
            summary.blobs_present,
            summary.manifests
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a delta leaves out must be at the target (in a repository its images go to, or mountable
/// from another of them) or in `--base`: checked before any blob, manifest or tag is pushed. The
/// left-out manifests are read back from the target, so the copy can re-tag unchanged images.
async fn delta_at_target(
    bundles: &[std::sync::Arc<BundleFile>],
    target: &crate::registry::Client,
    dest_repo: &dyn Fn(&str) -> String,
    dest: &str,
    base: Option<&std::path::Path>,
) -> anyhow::Result<HashMap<(String, Digest), RawManifest>> {
    let delta = &bundles[0];
    let index = &delta.scan.index;
    let mut manifests = HashMap::new();
    let Some(since) = &index.since else {
        return Ok(manifests);
    };
    let in_base = |d: &Digest| bundles[1..].iter().any(|b| b.scan.blobs.contains_key(d));
    let mut found: HashSet<Digest> = HashSet::new();
    let mut mounts: Vec<(String, Digest, u64, String)> = Vec::new();
    for l in &since.left_out {
        if in_base(&l.digest) {
            found.insert(l.digest.clone());
            continue;
        }
        let mut ok = true;
        for (repo, r) in &delta.scan.repos {
            let to = dest_repo(repo);
            if r.revisions.contains(&l.digest) {
                match target.get_manifest(&to, &l.digest.to_string()).await {
                    Ok(m) => {
                        manifests.insert((repo.clone(), l.digest.clone()), m);
                    }
                    Err(e) if e.is_not_found() => ok = false,
                    Err(e) => return Err(e.into()),
                }
            } else if r.layers.contains(&l.digest) && !target.has_blob(&to, &l.digest).await? {
                let mut from = None;
                for other in delta.scan.repos.keys().filter(|o| *o != repo) {
                    let o = dest_repo(other);
                    if target.has_blob(&o, &l.digest).await? {
                        from = Some(o);
                        break;
                    }
                }
                match from {
                    Some(f) => mounts.push((to, l.digest.clone(), l.size, f)),
                    None => ok = false,
                }
            }
        }
        if ok {
            found.insert(l.digest.clone());
        }
    }
    let place = match base {
        Some(b) => format!("{dest} (not mountable there either) and {}", b.display()),
        None => format!("{dest} (not mountable there either)"),
    };
    let hint = format!(
        "push {} to {dest} first, or pass --base {}; nothing was pushed",
        since.name, since.name
    );
    crate::bundlefile::delta::check(delta.path(), index, &place, &hint, &mut |l| {
        found.contains(&l.digest)
    })?;
    for (to, digest, size, from) in mounts {
        let empty = crate::blob::BlobBody::Local(crate::blob::BlobLocation {
            size: 0,
            source: std::sync::Arc::new(crate::blob::Memory(Vec::new())),
        });
        target
            .upload_blob(&to, &digest, size, Some(&from), empty)
            .await
            .with_context(|| format!("mounting {digest} from {from} into {to}"))?;
    }
    Ok(manifests)
}

/// A summary as JSON with `"ok": true`, the key a failed run's document has as `false`.
fn with_ok(s: &impl serde::Serialize) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(s)?;
    if let Some(m) = v.as_object_mut() {
        m.insert("ok".into(), serde_json::Value::Bool(true));
    }
    Ok(v)
}
