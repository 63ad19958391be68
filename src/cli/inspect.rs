//! `ferry inspect IMAGE`: skopeo's `inspect` for every transport ferry reads,
//! with skopeo's flags and output (the summary JSON, `--raw`, `--config`).

use std::process::ExitCode;

use super::registry_flags::RegistryFlags;
use crate::inspect::{Summary, config_bytes, image_manifest, oci_config_json, summary};
use crate::manifest::RawManifest;
use crate::transport::open::{AnySource, OpenOptions, open_source};
use crate::transport::registry::Clients;
use crate::transport::{ImageRef, Source};

/// Flags of `ferry inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The image, TRANSPORT:REFERENCE (docker://, dir:, oci:, oci-archive:, docker-archive:, registry-root:, ferry-bundle:).
    image: String,
    /// Print the manifest exactly as stored (with --config: the config blob exactly as stored).
    #[arg(long)]
    raw: bool,
    /// Print the image's config (re-encoded as an OCI config unless --raw).
    #[arg(long)]
    config: bool,
    /// Print the summary through this Go template (skopeo's: `{{.Digest}}`, `{{index .Labels "k"}}`, `{{range .RepoTags}}…{{end}}`).
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// Do not list the repository's tags (RepoTags stays empty).
    #[arg(short = 'n', long)]
    no_tags: bool,
    #[command(flatten)]
    platform: super::registry_flags::PlatformOverride,
    #[command(flatten)]
    registry: RegistryFlags,
}

/// Prints what skopeo inspect prints for the image, so scripts can switch tools unchanged.
pub fn run(g: &super::GlobalArgs, a: InspectArgs) -> anyhow::Result<ExitCode> {
    // A template that does not parse is refused before anything is read.
    let template = match a.format.as_deref() {
        Some(f) if !is_json_format(f) => Some(skopeo_template(f).map_err(anyhow::Error::msg)?),
        _ => None,
    };
    let r = ImageRef::parse(&a.image)?;
    let platform = a.platform.parsed()?;
    let open = OpenOptions {
        source: a.registry.client_options()?,
        s3_endpoint: g.s3_endpoint.clone(),
        ..Default::default()
    };
    // One thread is plenty for a handful of requests, and starts faster.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out: Vec<u8> = rt
        .block_on(async {
            let clients = Clients::default();
            let source = open_source(&r, &clients, &open).await?;
            // The tag list (skopeo's RepoTags) is asked for while the image is read.
            let want_tags = matches!(r, ImageRef::Docker(_)) && !a.no_tags && !a.config && !a.raw;
            let tags = async {
                if want_tags {
                    source.list_tags().await.map(Some)
                } else {
                    Ok(None)
                }
            };
            let image = async {
                let top = read_top(&source, &r).await?;
                if a.raw && !a.config {
                    return anyhow::Ok((top, None));
                }
                let m = image_manifest(&source, &top, &platform).await?;
                let c = config_bytes(&source, &m).await?;
                Ok((top, Some((m, c))))
            };
            let (tags, image) = tokio::join!(tags, image);
            let (top, image) = image?;
            let Some((manifest, config)) = image else {
                return Ok(top.bytes().to_vec());
            };
            if a.config {
                if a.raw {
                    return Ok(config);
                }
                let mut s = oci_config_json(&config).map_err(anyhow::Error::msg)?;
                s.push('\n');
                return Ok(s.into_bytes());
            }
            let repo_tags = match tags {
                Ok(t) => t.unwrap_or_default(),
                // As skopeo: a registry that refuses to list tags (401/403) leaves RepoTags empty.
                Err(crate::transport::TransportError::Registry(e)) if refused(&e) => {
                    tracing::warn!("registry disallows tag list retrieval; skipping");
                    Vec::new()
                }
                Err(e) => return Err(anyhow::Error::new(e).context("determining repository tags")),
            };
            // skopeo names what has a Docker reference: a registry image, or an archive's NAME:TAG.
            let name = match &r {
                ImageRef::Docker(x) => Some(super::registry_flags::docker_name(x)),
                ImageRef::DockerArchive(_, Some(x)) => crate::reference::Reference::parse(x)
                    .ok()
                    .filter(|x| x.digest().is_none())
                    .map(|x| super::registry_flags::docker_name(&x)),
                _ => None,
            };
            let doc = summary(&top, &manifest, &config, Summary { name, repo_tags })
                .map_err(anyhow::Error::msg)?;
            if let Some(t) = &template {
                // skopeo ranges over a one-element list and writes through a tabwriter it never flushes.
                let data = crate::template::Value::List(vec![doc.template_value()]);
                let text = t.execute(&data).map_err(anyhow::Error::msg)?;
                return Ok(crate::template::tabwriter_unflushed(&text).into_bytes());
            }
            let mut s = doc.to_json();
            s.push('\n');
            Ok(s.into_bytes())
        })
        // Name the image once: most causes already do.
        .map_err(|e| {
            if format!("{e:#}").contains(&a.image) {
                e
            } else {
                e.context(format!("inspecting {}", a.image))
            }
        })?;
    super::out::bytes(&out);
    Ok(ExitCode::SUCCESS)
}

/// The top manifest: from a registry by one GET of the tag (inspect reads it once,
/// so the HEAD that pins a tag for a copy is not needed); elsewhere the source's own (for a
/// docker-archive, the one skopeo synthesises).
async fn read_top(
    source: &AnySource,
    r: &ImageRef,
) -> Result<RawManifest, crate::transport::TransportError> {
    match (source, r) {
        (AnySource::Registry(rs), ImageRef::Docker(x)) if x.digest().is_none() => {
            rs.get_by_tag().await
        }
        _ => source.top().await,
    }
}

/// Whether `--format` asks for the JSON document itself (containers/common `report.IsJSON`:
/// `json` or `{{json .}}`, spaces allowed), which skopeo prints as if no format were given.
fn is_json_format(f: &str) -> bool {
    let f = f.trim();
    f == "json"
        || f.strip_prefix("{{")
            .and_then(|x| x.strip_suffix("}}"))
            .and_then(|x| x.trim().strip_prefix("json"))
            .is_some_and(|x| matches!(x.trim(), "" | "."))
}

/// skopeo's template for `--format F`: `table ` cut from the front, `\t` and `\n` as a tab
/// and a newline, a newline added unless F ends with one (containers/common
/// `report.NormalizeFormat`), ranged over the one-element list skopeo passes.
fn skopeo_template(f: &str) -> Result<crate::template::Template, String> {
    let f = f.strip_prefix("table ").unwrap_or(f);
    let mut f = f.replace("\\t", "\t").replace("\\n", "\n");
    if !f.ends_with('\n') {
        f.push('\n');
    }
    crate::template::Template::parse("skopeo inspect", &format!("{{{{range . }}}}{f}{{{{end}}}}"))
}

/// Whether a tag-list error is the registry refusing to list (skopeo goes on without tags).
fn refused(e: &crate::registry::RegistryError) -> bool {
    matches!(e, crate::registry::RegistryError::Status { status, .. } if status.as_u16() == 401 || status.as_u16() == 403)
}
