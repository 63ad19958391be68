//! The one walk of an image: top manifest → index children (followed to a
//! fixed depth, chosen by platform, present or absent) → config and layers.
//! Every mover, checker and lister asks this module what an image consists
//! of; nothing else follows `manifests[]` or `layers[]` by hand.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;

use crate::digest::Digest;
use crate::manifest::{Descriptor, Manifest, ManifestError, Platform, RawManifest};
use crate::media_type;

/// How deep indexes may nest before the walk stops (a loop, or a hostile manifest).
pub const MAX_INDEX_DEPTH: usize = 4;

/// Where the walk reads manifests from: any source of images.
pub trait Manifests: Sync {
    /// The source's error, shown in one line.
    type Error: fmt::Display + Send;
    /// The manifest `digest`, or `None` when the source does not hold it (a sparse index's absent child).
    fn manifest(
        &self,
        digest: &Digest,
    ) -> impl Future<Output = Result<Option<RawManifest>, Self::Error>> + Send;
}

/// Which children of an index a walk keeps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Selection {
    /// Every child (skopeo `--all`, bundle `--all-platforms`).
    #[default]
    All,
    /// Children whose platform matches any of these (skopeo's system choice, bundle `--platform`).
    Platforms(Vec<Platform>),
    /// The index alone, no child (skopeo `--multi-arch index-only`).
    IndexOnly,
}

/// How a walk treats what it finds.
#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    /// Children to keep.
    pub selection: Selection,
    /// Whether a kept child the source does not hold is recorded as absent (a bundle's sparse index) instead of an error.
    pub allow_absent: bool,
}

/// One child of an index, as the walk found it.
#[derive(Debug, Clone)]
pub struct Child {
    /// Its entry in the parent index.
    pub descriptor: Descriptor,
    /// The index that lists it.
    pub parent: Digest,
    /// Whether the selection keeps it.
    pub selected: bool,
    /// Its bytes, when selected and held by the source.
    pub manifest: Option<RawManifest>,
}

impl Child {
    /// `os/arch[/variant]`, or `unknown` when the index does not say.
    pub fn platform_label(&self) -> String {
        self.descriptor
            .platform
            .as_ref()
            .map_or_else(|| "unknown".to_string(), ToString::to_string)
    }

    /// Kept by the selection but not held by the source.
    pub fn is_absent(&self) -> bool {
        self.selected && self.manifest.is_none()
    }
}

/// An image as the walk found it: what to move, in the order to move it.
#[derive(Debug, Clone)]
pub struct ImageWalk {
    /// The top manifest.
    pub top: RawManifest,
    /// Every child of every index, deepest first, so that iterating puts children before their parents.
    pub children: Vec<Child>,
    /// Unique distributable config and layer blobs of every kept image, in first-seen order.
    pub blobs: Vec<Descriptor>,
    /// Non-distributable (foreign) layers, left out of `blobs` as registries leave them out.
    pub foreign: Vec<Descriptor>,
}

impl ImageWalk {
    /// Kept child manifests held by the source, children before parents, each once.
    pub fn present_children(&self) -> impl Iterator<Item = &RawManifest> {
        let mut once = std::collections::HashSet::new();
        self.children
            .iter()
            .filter_map(|c| c.manifest.as_ref())
            .filter(move |m| once.insert(m.digest()))
    }

    /// Kept children the source does not hold (a sparse index).
    pub fn absent(&self) -> impl Iterator<Item = &Child> {
        self.children.iter().filter(|c| c.is_absent())
    }

    /// Every manifest to move: kept children (deepest first), then the top.
    pub fn manifests(&self) -> impl Iterator<Item = &RawManifest> {
        self.present_children().chain(std::iter::once(&self.top))
    }

    /// Whether the top is an index.
    pub fn is_index(&self) -> bool {
        media_type::is_index(self.top.media_type())
    }
}

/// Why an image cannot be walked; names the manifest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalkError {
    /// The source failed.
    #[error("{0}")]
    Source(String),
    /// A manifest that does not parse.
    #[error("manifest {digest}: {source}")]
    Manifest {
        /// The manifest.
        digest: Digest,
        /// Why.
        source: ManifestError,
    },
    /// Indexes nest deeper than [`MAX_INDEX_DEPTH`].
    #[error("manifest {0}: indexes nest deeper than {MAX_INDEX_DEPTH} levels")]
    TooDeep(Digest),
    /// More index children than any real image has (a hostile or looping index).
    #[error("manifest {0}: more than {max} index children in all", max = crate::limits::MAX_WALK_CHILDREN)]
    TooManyChildren(Digest),
    /// A kept child the source does not hold.
    #[error("index {index} lists {child}, which the source does not have")]
    Absent {
        /// The index.
        index: Digest,
        /// The child.
        child: Digest,
    },
    /// No child of an index matches the wanted platforms.
    #[error("no manifest for {want} in index {index} (it has {have})")]
    NoPlatform {
        /// The index.
        index: Digest,
        /// The platforms asked for.
        want: String,
        /// The platforms it has.
        have: String,
    },
}

fn parse(raw: &RawManifest) -> Result<Manifest, WalkError> {
    raw.parse().map_err(|source| WalkError::Manifest {
        digest: raw.digest().clone(),
        source,
    })
}

/// Walks the image whose top manifest is `top`, reading children from `source`.
pub async fn walk<M: Manifests>(
    source: &M,
    top: RawManifest,
    opts: &WalkOptions,
) -> Result<ImageWalk, WalkError> {
    let mut w = ImageWalk {
        top: top.clone(),
        children: Vec::new(),
        blobs: Vec::new(),
        foreign: Vec::new(),
    };
    let mut seen = Seen::default();
    visit(source, &top, 0, opts, &mut w, &mut seen).await?;
    Ok(w)
}

/// What a walk has met: blobs and manifests each once, so an index that lists a
/// child many times costs one fetch, and foreign layers without a quadratic scan.
#[derive(Default)]
struct Seen {
    blobs: BTreeSet<Digest>,
    foreign: BTreeSet<Digest>,
    manifests: std::collections::HashMap<Digest, Option<RawManifest>>,
}

/// Visits one manifest; boxed because indexes recurse.
fn visit<'a, M: Manifests>(
    source: &'a M,
    raw: &'a RawManifest,
    depth: usize,
    opts: &'a WalkOptions,
    w: &'a mut ImageWalk,
    seen: &'a mut Seen,
) -> std::pin::Pin<Box<dyn Future<Output = Result<(), WalkError>> + Send + 'a>> {
    Box::pin(async move {
        if depth > MAX_INDEX_DEPTH {
            return Err(WalkError::TooDeep(raw.digest().clone()));
        }
        match parse(raw)? {
            Manifest::Image(_) => {
                for b in parse(raw)?.blobs() {
                    if !media_type::is_distributable(&b.media_type) {
                        if seen.foreign.insert(b.digest.clone()) {
                            w.foreign.push(b.clone());
                        }
                    } else if seen.blobs.insert(b.digest.clone()) {
                        w.blobs.push(b.clone());
                    }
                }
                Ok(())
            }
            Manifest::Index(index) => {
                let mut kept = 0;
                for c in &index.manifests {
                    if w.children.len() >= crate::limits::MAX_WALK_CHILDREN {
                        return Err(WalkError::TooManyChildren(raw.digest().clone()));
                    }
                    let selected = match &opts.selection {
                        Selection::All => true,
                        Selection::IndexOnly => false,
                        Selection::Platforms(want) => {
                            media_type::is_index(&c.media_type)
                                || c.platform
                                    .as_ref()
                                    .is_some_and(|p| want.iter().any(|w| w.matches(p)))
                        }
                    };
                    // A child met before (listed twice, or by two indexes) is recorded, not fetched or walked again.
                    let again = seen.manifests.get(&c.digest).cloned();
                    let manifest = match (&again, selected) {
                        (Some(m), true) => m.clone(),
                        (None, true) => source
                            .manifest(&c.digest)
                            .await
                            .map_err(|e| WalkError::Source(e.to_string()))?,
                        (_, false) => None,
                    };
                    if selected && again.is_none() {
                        seen.manifests.insert(c.digest.clone(), manifest.clone());
                    }
                    let again = again.is_some();
                    if selected && manifest.is_none() && !opts.allow_absent {
                        return Err(WalkError::Absent {
                            index: raw.digest().clone(),
                            child: c.digest.clone(),
                        });
                    }
                    if let Some(m) = &manifest {
                        if m.digest() != &c.digest {
                            return Err(WalkError::Source(format!(
                                "index {} lists {}, the source gave {}",
                                raw.digest(),
                                c.digest,
                                m.digest()
                            )));
                        }
                        if !again {
                            visit(source, m, depth + 1, opts, w, seen).await?;
                        }
                    }
                    kept += usize::from(selected);
                    w.children.push(Child {
                        descriptor: c.clone(),
                        parent: raw.digest().clone(),
                        selected,
                        manifest,
                    });
                }
                if kept == 0
                    && let Selection::Platforms(want) = &opts.selection
                    && depth == 0
                {
                    return Err(WalkError::NoPlatform {
                        index: raw.digest().clone(),
                        want: want
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        have: platform_list(&index.manifests),
                    });
                }
                Ok(())
            }
        }
    })
}

/// The platforms of an index's children, for an error that says which are there.
fn platform_list(children: &[Descriptor]) -> String {
    children
        .iter()
        .map(|c| {
            c.platform
                .as_ref()
                .map_or_else(|| "unknown".to_string(), ToString::to_string)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The child of an index for one platform (the first that matches, as
/// containers/image chooses), for copying a single image out of an index.
pub fn choose_platform(index: &RawManifest, want: &Platform) -> Result<Descriptor, WalkError> {
    let parsed = parse(index)?;
    let children = parsed.children();
    children
        .iter()
        .find(|c| c.platform.as_ref().is_some_and(|p| want.matches(p)))
        .cloned()
        .ok_or_else(|| WalkError::NoPlatform {
            index: index.digest().clone(),
            want: want.to_string(),
            have: platform_list(children),
        })
}

/// Why the child of an index for one platform could not be read; the caller
/// words it (each verb has its own message).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformChildError<E: fmt::Display> {
    /// The index does not parse, or no child matches the platform.
    #[error("{0}")]
    Choose(WalkError),
    /// The source failed reading the child.
    #[error("{0}")]
    Source(E),
    /// The index lists a child the source does not hold.
    #[error("the index lists {child}, which the source does not have")]
    Absent {
        /// The chosen child.
        child: Digest,
    },
    /// The source gave a manifest of another digest than the index lists.
    #[error("the index lists {child}, the source gave {got}")]
    Mismatch {
        /// The chosen child.
        child: Digest,
        /// What the source gave.
        got: Digest,
    },
}

/// The child manifest of `index` for one platform ([`choose_platform`]), read
/// from `source` and checked to be the manifest the index lists.
pub async fn platform_child<M: Manifests>(
    source: &M,
    index: &RawManifest,
    want: &Platform,
) -> Result<RawManifest, PlatformChildError<M::Error>> {
    let child = choose_platform(index, want).map_err(PlatformChildError::Choose)?;
    let m = source
        .manifest(&child.digest)
        .await
        .map_err(PlatformChildError::Source)?
        .ok_or_else(|| PlatformChildError::Absent {
            child: child.digest.clone(),
        })?;
    if m.digest() != &child.digest {
        return Err(PlatformChildError::Mismatch {
            child: child.digest,
            got: m.digest().clone(),
        });
    }
    Ok(m)
}

/// Walks already done in one run, by top digest: a list that names one image
/// many times walks it once, and every plan holding it shares one copy. Use one
/// per run and per selection; walks that allow absent children are kept apart
/// from walks that do not (what is absent depends on the source).
#[derive(Debug, Default, Clone)]
pub struct Walks(std::sync::Arc<std::sync::Mutex<WalksByTop>>);

/// Walks by (top digest, absent children allowed).
type WalksByTop = std::collections::HashMap<(Digest, bool), std::sync::Arc<ImageWalk>>;

impl Walks {
    /// [`walk`], or the walk this run already did of the same top manifest.
    pub async fn walk<M: Manifests>(
        &self,
        source: &M,
        top: RawManifest,
        opts: &WalkOptions,
    ) -> Result<std::sync::Arc<ImageWalk>, WalkError> {
        let key = (top.digest().clone(), opts.allow_absent);
        if let Some(w) = self.0.lock().unwrap().get(&key) {
            return Ok(w.clone());
        }
        let w = std::sync::Arc::new(walk(source, top, opts).await?);
        self.0.lock().unwrap().insert(key, w.clone());
        Ok(w)
    }
}

/// A source whose manifests are read synchronously (a root on disk): its walk completes without waiting.
pub fn walk_now<M: Manifests>(
    source: &M,
    top: RawManifest,
    opts: &WalkOptions,
) -> Result<ImageWalk, WalkError> {
    use futures_util::FutureExt;
    walk(source, top, opts)
        .now_or_never()
        .expect("a synchronous source never waits")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Mem(HashMap<Digest, RawManifest>, std::sync::atomic::AtomicUsize);
    impl Manifests for Mem {
        type Error = String;
        fn manifest(
            &self,
            d: &Digest,
        ) -> impl Future<Output = Result<Option<RawManifest>, String>> + Send {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::future::ready(Ok(self.0.get(d).cloned()))
        }
    }
    fn mem(all: HashMap<Digest, RawManifest>) -> Mem {
        Mem(all, Default::default())
    }

    fn image(layer: &str) -> RawManifest {
        let cfg = Digest::sha256_of(b"cfg");
        let l = Digest::sha256_of(layer.as_bytes());
        RawManifest::new(
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{cfg}","size":3}},"layers":[{{"mediaType":"{}","digest":"{l}","size":1}},{{"mediaType":"{}","digest":"{l}","size":1}}]}}"#,
                media_type::OCI_MANIFEST,
                media_type::OCI_CONFIG,
                media_type::OCI_LAYER_GZIP,
                media_type::DOCKER_LAYER_FOREIGN
            )
            .into_bytes(),
            None,
        )
        .unwrap()
    }

    fn index(children: &[(&RawManifest, &str)]) -> RawManifest {
        let entries: Vec<String> = children
            .iter()
            .map(|(m, p)| {
                let (os, arch) = p.split_once('/').unwrap();
                format!(
                    r#"{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"os":"{os}","architecture":"{arch}"}}}}"#,
                    m.media_type(),
                    m.digest(),
                    m.bytes().len()
                )
            })
            .collect();
        RawManifest::new(
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#,
                media_type::OCI_INDEX,
                entries.join(",")
            )
            .into_bytes(),
            None,
        )
        .unwrap()
    }

    #[test]
    fn selects_platforms_dedups_blobs_and_orders_children_first() {
        let (a, b) = (image("a"), image("b"));
        let inner = index(&[(&b, "linux/arm64")]);
        let top = index(&[(&a, "linux/amd64"), (&inner, "linux/arm64")]);
        let mem = mem([&a, &b, &inner]
            .into_iter()
            .map(|m| (m.digest().clone(), m.clone()))
            .collect());
        let all = walk_now(&mem, top.clone(), &WalkOptions::default()).unwrap();
        let order: Vec<&Digest> = all.manifests().map(|m| m.digest()).collect();
        assert_eq!(
            order,
            [a.digest(), b.digest(), inner.digest(), top.digest()]
        );
        assert_eq!(all.blobs.len(), 3, "config shared, layers a and b");
        assert_eq!(all.foreign.len(), 2);

        let amd = WalkOptions {
            selection: Selection::Platforms(vec![Platform::parse("linux/amd64").unwrap()]),
            allow_absent: false,
        };
        let w = walk_now(&mem, top.clone(), &amd).unwrap();
        assert_eq!(w.present_children().count(), 2, "a, and the nested index");

        let s390 = WalkOptions {
            selection: Selection::Platforms(vec![Platform::parse("linux/s390x").unwrap()]),
            allow_absent: false,
        };
        let e = walk_now(&mem, a.clone(), &s390).map(|_| ());
        assert!(e.is_ok(), "an image has no platforms to choose from");
        let only = index(&[(&a, "linux/amd64")]);
        assert!(matches!(
            walk_now(&mem, only, &s390),
            Err(WalkError::NoPlatform { .. })
        ));
    }

    #[test]
    fn absent_children_are_errors_unless_allowed() {
        let a = image("a");
        let top = index(&[(&a, "linux/amd64")]);
        let empty = mem(HashMap::new());
        assert!(matches!(
            walk_now(&empty, top.clone(), &WalkOptions::default()),
            Err(WalkError::Absent { .. })
        ));
        let sparse = WalkOptions {
            allow_absent: true,
            ..WalkOptions::default()
        };
        let w = walk_now(&empty, top, &sparse).unwrap();
        assert_eq!(w.absent().count(), 1);
        assert!(w.blobs.is_empty());
    }

    #[test]
    fn stops_at_the_depth_cap() {
        let mut m = image("x");
        let mut all = HashMap::new();
        all.insert(m.digest().clone(), m.clone());
        for _ in 0..=MAX_INDEX_DEPTH + 1 {
            m = index(&[(&m, "linux/amd64")]);
            all.insert(m.digest().clone(), m.clone());
        }
        assert!(matches!(
            walk_now(&mem(all), m, &WalkOptions::default()),
            Err(WalkError::TooDeep(_))
        ));
    }

    #[test]
    fn a_child_listed_many_times_is_fetched_once() {
        let a = image("a");
        let top = index(&vec![(&a, "linux/amd64"); 50]);
        let m = mem(HashMap::from([(a.digest().clone(), a.clone())]));
        let w = walk_now(&m, top, &WalkOptions::default()).unwrap();
        assert_eq!(m.1.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(w.children.len(), 50);
        assert_eq!(w.present_children().count(), 1);
        assert_eq!(w.absent().count(), 0);
    }
}
