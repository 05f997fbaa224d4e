//! Fetch: the only place that joins the registry client and the store. `plan` checks the
//! references and where each will be stored (no network); `execute` fetches every image
//! concurrently, each blob once, and publishes each image only when all of it is stored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, try_join_all};
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use tokio::sync::{Mutex, OnceCell, Semaphore, SemaphorePermit};

use crate::config::ImageSpec;
use crate::manifest::{
    Descriptor, KEPT_PLATFORMS, Kind, Manifest, ManifestError, OCI_INDEX, REF_NAME, SOURCE,
    UPSTREAM_DIGEST, Verified,
};
use crate::plan::Planned;
use crate::reference::{Digest, Reference, ReferenceError, validate_tag};
use crate::registry::{Client, RegistryError};
use crate::report::{ImageReport, Reporter, Status, error_chain};
use crate::select::{PlatformCut, PlatformSpec, cut_index};
use crate::store::inventory::reachable;
use crate::store::{
    self, BlobClaim, PartialBlob, Removal, Removed, Store, StoreError, TagIndex, TagUpdate,
};

/// Index nesting deeper than this is refused (real images use one level).
const MAX_INDEX_DEPTH: usize = 4;
/// Attempts to resume a blob whose body broke off or came up short.
const BLOB_RESUMES: u32 = 3;
/// Longest wait between two index.json writes of one repository (see `flush_publishes`).
const MAX_PUBLISH_PAUSE: Duration = Duration::from_millis(100);
/// Images that may wait for their publish, per discovery permit.
const PUBLISH_WAITERS_PER_SLOT: usize = 8;

#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Blob downloads in flight at once.
    pub jobs: usize,
    /// Download foreign (non-distributable) layers from their `urls` registry copy.
    pub include_foreign: bool,
    /// Blob downloads in flight at once from one registry host.
    pub jobs_per_host: usize,
    /// Stop at the first image that fails.
    pub fail_fast: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            jobs: 8,
            include_foreign: false,
            jobs_per_host: 8,
            fail_fast: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Registry(Box<RegistryError>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("manifest {digest} could not be read")]
    Manifest {
        digest: String,
        #[source]
        source: ManifestError,
    },
    #[error("manifest {digest} is {actual} bytes but its descriptor says {expected}")]
    ManifestSize {
        digest: Digest,
        expected: u64,
        actual: usize,
    },
    #[error("index {digest} refers to itself through {child}; refusing a cycle")]
    IndexCycle { digest: Digest, child: Digest },
    #[error("index nesting deeper than {MAX_INDEX_DEPTH} levels at {digest}; refusing")]
    IndexTooDeep { digest: Digest },
    #[error("blob {digest} broke off at byte {got} of {size} after {BLOB_RESUMES} resumes")]
    BlobIncomplete {
        digest: Digest,
        got: u64,
        size: u64,
        #[source]
        source: Option<Box<RegistryError>>,
    },
    #[error(
        "{name:?} in the store holds images of {stored}; {second} would be merged into it: fetch into another --root, use --keep-host (or a config `target`), or remove it first (static-registry rm {name})"
    )]
    StoredNameClash {
        name: String,
        stored: String,
        second: String,
    },
    #[error("{reference} has none of the platforms asked for ({wanted}); it offers {available}")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("publishing into {name}: {cause}")]
    Publish { name: String, cause: String },
    #[error("internal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl FetchError {
    /// What the operator can do about it (see [`RegistryError::remedy`]).
    pub fn remedy(&self) -> Option<crate::registry::Remedy> {
        match self {
            FetchError::Registry(e) => e.remedy(),
            _ => None,
        }
    }
}

impl From<RegistryError> for FetchError {
    fn from(e: RegistryError) -> Self {
        FetchError::Registry(Box::new(e))
    }
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub images: Vec<ImageReport>,
    pub images_fetched: usize,
    pub images_unchanged: usize,
    pub images_failed: usize,
    pub blobs_fetched: u64,
    pub blobs_reused: u64,
    pub manifests_fetched: u64,
    /// Blob and manifest bytes downloaded.
    pub bytes_fetched: u64,
    pub seconds: f64,
    /// What `--delete` took out (tags the selection no longer picks).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<Removed>,
}

/// The registry client for each registry: the default one, and others where a config
/// gives a registry its own TLS settings or credentials.
#[derive(Clone)]
pub struct Clients {
    default: Client,
    by_registry: HashMap<String, Client>,
}

impl Clients {
    pub fn new(default: Client) -> Clients {
        Clients {
            default,
            by_registry: HashMap::new(),
        }
    }

    /// Use `client` for `registry` (as in `Reference::registry`, e.g. "docker.io").
    pub fn insert(&mut self, registry: &str, client: Client) {
        self.by_registry.insert(registry.to_owned(), client);
    }

    pub fn get(&self, registry: &str) -> &Client {
        self.by_registry.get(registry).unwrap_or(&self.default)
    }
}

/// The tags a registry listed that are valid tag names; the others are dropped with a
/// warning naming them, so they never reach a path or a config.
pub fn valid_tags(listed: Vec<String>, source: &str, reporter: &dyn Reporter) -> Vec<String> {
    listed
        .into_iter()
        .filter(|t| match validate_tag(t) {
            Ok(()) => true,
            Err(e) => {
                reporter.warn(&format!(
                    "{source}: ignoring a tag the registry listed: {e}"
                ));
                false
            }
        })
        .collect()
}

/// Turn a mirror configuration into images to fetch: list tags where a selector needs
/// them, keep what the selectors select, add digests. Tags the registry lists that are
/// not valid tag names are dropped with a warning (they never reach a path). Repositories
/// whose tags cannot be listed come back as failed reports.
pub async fn resolve(
    clients: &Clients,
    specs: &[ImageSpec],
    reporter: &dyn Reporter,
) -> (Vec<Planned>, Vec<ImageReport>) {
    let listed = futures::future::join_all(specs.iter().map(|spec| async move {
        if !spec.tags.needs_listing() {
            return Ok(Vec::new());
        }
        let r = &spec.source;
        clients
            .get(&r.registry)
            .list_tags(r.api_host(), &r.repository)
            .await
    }))
    .await;
    let mut planned = Vec::new();
    let mut failed = Vec::new();
    for (spec, listed) in specs.iter().zip(listed) {
        let source = spec.source.origin();
        let remote = match listed {
            Ok(tags) => tags,
            Err(e) => {
                failed.push(ImageReport::failed(
                    source,
                    spec.target.clone(),
                    None,
                    None,
                    &FetchError::from(e),
                ));
                continue;
            }
        };
        let valid = valid_tags(remote, &source, reporter);
        let image = |tag: Option<String>, digest: Option<Digest>| Planned {
            source: Reference {
                tag,
                digest,
                ..spec.source.clone()
            },
            name: spec.target.clone(),
            platforms: spec.platforms.clone(),
            referrers: spec.referrers,
        };
        planned.extend(
            spec.tags
                .select(&valid)
                .into_iter()
                .map(|t| image(Some(t), None)),
        );
        planned.extend(spec.digests.iter().map(|d| image(None, Some(d.clone()))));
    }
    (planned, failed)
}

impl ImageReport {
    fn failed(
        source: String,
        name: String,
        tag: Option<String>,
        digest: Option<String>,
        error: &FetchError,
    ) -> ImageReport {
        ImageReport {
            source,
            name,
            tag,
            digest,
            status: Status::Failed,
            upstream_digest: None,
            referrers: 0,
            error: error_chain(error),
            remedy: error.remedy(),
        }
    }
}

impl Summary {
    /// Count images that failed before they could be fetched (their tags could not be
    /// listed).
    pub fn add_failed(&mut self, reports: Vec<ImageReport>) {
        self.images_failed += reports.len();
        self.images.extend(reports);
    }
}

/// What a configuration selected in this run, for `fetch --delete`: per repository the
/// config names, the tags planned, and whether its tag list could be read. Taken from the
/// plan, before the fetch (a summary leaves out what --fail-fast never started).
#[derive(Debug, Default)]
pub struct Selection {
    /// Stored name -> tags planned (an entry even when nothing was selected).
    tags: BTreeMap<String, HashSet<String>>,
    /// Stored names whose tag list could not be read: nothing of theirs may go.
    unlisted: HashSet<String>,
}

impl Selection {
    pub fn of(specs: &[ImageSpec], planned: &[Planned], unresolved: &[ImageReport]) -> Selection {
        let mut tags: BTreeMap<String, HashSet<String>> = specs
            .iter()
            .map(|s| (s.target.clone(), HashSet::new()))
            .collect();
        for p in planned {
            if let (Some(set), Some(tag)) = (tags.get_mut(&p.name), &p.source.tag) {
                set.insert(tag.clone());
            }
        }
        Selection {
            tags,
            unlisted: unresolved.iter().map(|r| r.name.clone()).collect(),
        }
    }
}

/// `fetch --config --delete`: take out of each repository the config names the tags this
/// run's selection no longer picks (mirror semantics). Kept: every tag the selection
/// picks (whether or not its fetch succeeded), and the referrer tags
/// (`sha256-<hex>[.sig|.att|.sbom]`) of manifests those reach. A repository whose tags
/// could not be listed is left alone, and so is every repository the config does not
/// name.
pub fn remove_unselected(store: &Store, selection: &Selection) -> Result<Vec<Removed>, StoreError> {
    let mut removed = Vec::new();
    for (name, selected) in &selection.tags {
        if selection.unlisted.contains(name) {
            continue;
        }
        let index = store.read_index(name)?;
        let roots: Vec<Descriptor> = index
            .entries()
            .iter()
            .filter(|d| {
                d.annotations
                    .get(REF_NAME)
                    .is_none_or(|t| selected.contains(t))
            })
            .cloned()
            .collect();
        let live: HashSet<String> = reachable(&store.repo_dir(name)?, &roots)
            .into_iter()
            .map(|d| d.digest.hex().to_owned())
            .collect();
        let stale: Vec<Removal> = index
            .entries()
            .iter()
            .filter_map(|d| d.annotations.get(REF_NAME))
            .filter(|t| !selected.contains(*t))
            .filter(|t| referrer_tag_subject(t).is_none_or(|hex| !live.contains(hex)))
            .map(|t| Removal::Tag(t.clone()))
            .collect();
        if !stale.is_empty() {
            removed.push(store.remove(name, &stale)?);
        }
    }
    Ok(removed)
}

/// The subject's hex of a referrer tag: the referrers tag schema's `sha256-<hex>`, and
/// cosign's `sha256-<hex>.sig`, `.att` and `.sbom`.
fn referrer_tag_subject(tag: &str) -> Option<&str> {
    let rest = tag.strip_prefix("sha256-")?;
    let hex = [".sig", ".att", ".sbom"]
        .iter()
        .find_map(|s| rest.strip_suffix(s))
        .unwrap_or(rest);
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

/// What fetching one image would bring, for `plan`.
#[derive(Debug, Serialize)]
pub struct PlanRow {
    pub source: String,
    pub name: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
    /// Bytes of the manifests, configs and layers the image reaches, each once.
    pub size: u64,
    /// Of those, bytes the store does not hold yet and no earlier row counts: the rows
    /// add up to what the fetch will download, each blob counted once.
    pub to_download: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<crate::registry::Remedy>,
}

/// Read (never write) what each planned image reaches: its manifests from the registry,
/// sizes from their descriptors; with `root`, what the store lacks. A tag the store
/// holds as fetch would store it (a platform-cut index included) costs nothing.
pub async fn survey(clients: &Clients, planned: &[Planned], root: Option<&Path>) -> Vec<PlanRow> {
    let mut indexes: HashMap<&str, TagIndex> = HashMap::new();
    if let Some(root) = root {
        for p in planned {
            if !indexes.contains_key(p.name.as_str()) {
                let index = store::repo_path(root, &p.name)
                    .and_then(|dir| store::read_index_file(&dir.join("index.json")))
                    .map(TagIndex::from)
                    .unwrap_or_default();
                indexes.insert(&p.name, index);
            }
        }
    }
    let indexes = &indexes;
    let surveyed: Vec<(PlanRow, Lacking)> = futures::stream::iter(planned)
        .map(|p| async move {
            let mut row = PlanRow {
                source: p.source.to_string(),
                name: p.name.clone(),
                tag: p.source.tag.clone(),
                digest: None,
                size: 0,
                to_download: 0,
                error: Vec::new(),
                remedy: None,
            };
            let stored = indexes.get(p.name.as_str());
            let lacking = match survey_image(clients, p, root, stored, &mut row).await {
                Ok(lacking) => lacking,
                Err(e) => {
                    row.error = error_chain(&e);
                    row.remedy = e.remedy();
                    Lacking::default()
                }
            };
            (row, lacking)
        })
        .buffered(16)
        .collect()
        .await;
    // In plan order, so the same plan always attributes a shared blob to the same row.
    let mut counted = HashSet::new();
    surveyed
        .into_iter()
        .map(|(mut row, lacking)| {
            row.to_download = lacking.by_tag
                + lacking
                    .shared
                    .into_iter()
                    .filter(|(d, _)| counted.insert(d.clone()))
                    .map(|(_, size)| size)
                    .sum::<u64>();
            row
        })
        .collect()
}

/// What one image would download.
#[derive(Default)]
struct Lacking {
    /// The manifest of a tag the store has never seen: fetched by tag whatever else
    /// shares it (its digest is unknown until it arrives).
    by_tag: u64,
    /// Everything else the store lacks, by digest: fetched once per run.
    shared: Vec<(Digest, u64)>,
}

/// Walk one image's manifests (sizing `row`) and return what the store lacks of it.
async fn survey_image(
    clients: &Clients,
    p: &Planned,
    root: Option<&Path>,
    stored: Option<&TagIndex>,
    row: &mut PlanRow,
) -> Result<Lacking, FetchError> {
    let r = &p.source;
    let client = clients.get(&r.registry);
    let filter = (!p.platforms.is_empty()).then(|| platform_list(&p.platforms));
    let mut pending = vec![(r.manifest_reference(), None::<String>, r.digest.clone())];
    let mut seen = std::collections::HashSet::new();
    let mut lacking = Lacking::default();
    let new_tag = r.digest.is_none()
        && r.tag
            .as_deref()
            .is_some_and(|t| stored.is_none_or(|i| i.tag(t).is_none()));
    let lacks = |d: &Digest| root.is_none_or(|root| !store::inventory::has_blob(root, d));
    // A platform list cuts the top index only, as fetch does.
    let mut top = true;
    while let Some((reference, media_type, expected)) = pending.pop() {
        let verified = client
            .get_verified(
                r.api_host(),
                &r.repository,
                &reference,
                expected.as_ref().map(|d| (d, "the digest asked for")),
                media_type.as_deref(),
            )
            .await?;
        let Verified {
            digest,
            bytes,
            manifest,
        } = verified;
        if top {
            row.digest = Some(digest.to_string());
            // Stored as fetch would store it (after a platform cut its own digest
            // differs from the registry's): a warm fetch downloads nothing of it.
            let copy = stored.and_then(|i| match &r.tag {
                Some(tag) => i.tag(tag),
                None => i
                    .entries()
                    .iter()
                    .find(|s| is_copy_of(s, &digest, filter.as_deref())),
            });
            if copy.is_some_and(|s| is_copy_of(s, &digest, filter.as_deref())) {
                row.size += bytes.len() as u64;
                return Ok(Lacking::default());
            }
        }
        let size = bytes.len() as u64;
        row.size += size;
        if top && new_tag {
            lacking.by_tag += size;
        } else if lacks(&digest) {
            lacking.shared.push((digest.clone(), size));
        }
        match manifest.kind {
            Kind::Index(children) => pending.extend(
                children
                    .into_iter()
                    .filter(|c| {
                        !top || p.platforms.is_empty()
                            || c.platform
                                .as_ref()
                                .is_some_and(|pl| PlatformSpec::any_matches(&p.platforms, pl))
                    })
                    .map(|c| (c.digest.to_string(), Some(c.media_type), Some(c.digest))),
            ),
            Kind::Image { config, layers } => {
                for d in std::iter::once(*config).chain(layers) {
                    if d.is_foreign() || !seen.insert(d.digest.clone()) {
                        continue;
                    }
                    row.size += d.size;
                    if lacks(&d.digest) {
                        lacking.shared.push((d.digest, d.size));
                    }
                }
            }
        }
        top = false;
    }
    Ok(lacking)
}

#[derive(Default)]
struct Stats {
    blobs_fetched: AtomicU64,
    blobs_reused: AtomicU64,
    manifests_fetched: AtomicU64,
    /// Blob and manifest bytes downloaded.
    bytes_fetched: AtomicU64,
}

impl Stats {
    fn manifest_fetched(&self, bytes: &[u8]) {
        self.manifests_fetched.fetch_add(1, Ordering::Relaxed);
        self.bytes_fetched
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
}

/// Work done at most once per key (a digest, a repository) in a run; later askers wait
/// for the first.
struct OncePer<K, T>(Mutex<HashMap<K, Arc<OnceCell<T>>>>);

impl<K: std::hash::Hash + Eq + Clone, T> OncePer<K, T> {
    fn new() -> Self {
        OncePer(Mutex::new(HashMap::new()))
    }

    async fn cell(&self, key: &K) -> Arc<OnceCell<T>> {
        self.0.lock().await.entry(key.clone()).or_default().clone()
    }
}

struct Ctx {
    clients: Clients,
    store: Arc<Store>,
    opts: FetchOptions,
    reporter: Arc<dyn Reporter>,
    downloads: Semaphore,
    /// Images resolving and storing at once (not counting those waiting to publish).
    discovering: Semaphore,
    /// Index updates per repository, written in batches (see `publish`).
    publish: std::sync::Mutex<HashMap<String, PublishQueue>>,
    /// Per registry host, so one slow registry cannot take every download slot.
    host_downloads: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
    /// One claimant per blob in this process; other images wanting it wait for it.
    blobs: OncePer<Digest, ()>,
    /// Likewise per manifest: many tags and indexes share manifests.
    manifests: OncePer<Digest, Arc<Verified>>,
    /// Each source repository's tags, listed once (to find referrer tags).
    tags: OncePer<String, Arc<HashSet<String>>>,
    /// Each repository's index.json as the run found it, read once (not once per tag:
    /// that is quadratic for repositories with thousands of tags).
    indexes: OncePer<String, Arc<TagIndex>>,
    /// Whether the store still holds everything a stored manifest reaches, checked once
    /// per repository and manifest (many tags share manifests).
    complete: OncePer<(String, Digest), bool>,
    stats: Stats,
}

/// Fetch every planned image. Each image succeeds or fails on its own; the summary says
/// which.
pub async fn execute(
    clients: Clients,
    store: Arc<Store>,
    planned: Vec<Planned>,
    opts: FetchOptions,
    reporter: Arc<dyn Reporter>,
) -> Summary {
    let started = Instant::now();
    let ctx = Arc::new(Ctx {
        clients,
        store,
        downloads: Semaphore::new(opts.jobs.max(1)),
        discovering: Semaphore::new((opts.jobs * 4).max(16)),
        host_downloads: std::sync::Mutex::new(HashMap::new()),
        publish: std::sync::Mutex::new(HashMap::new()),
        opts,
        reporter,
        blobs: OncePer::new(),
        manifests: OncePer::new(),
        indexes: OncePer::new(),
        complete: OncePer::new(),
        tags: OncePer::new(),
        stats: Stats::default(),
    });
    // Discovery of every image starts at once (bounded by `discovering`), and blob
    // downloads overlap with it; the download semaphore is what bounds the heavy
    // traffic. Images waiting for their index.json write hold no discovery permit, so
    // publish batches can grow without slowing discovery.
    let width = ctx.discovering.available_permits();
    let total = planned.len();
    let mut reports = futures::stream::iter(planned.into_iter().enumerate())
        .map(|(i, p)| {
            let ctx = ctx.clone();
            async move {
                let source = p.source.to_string();
                ctx.reporter.image_started(&source);
                let permit = ctx
                    .discovering
                    .acquire()
                    .await
                    .expect("semaphore never closed");
                let report = match fetch_image(&ctx, &p, permit).await {
                    Ok(outcome) => ImageReport {
                        source,
                        name: p.name,
                        tag: p.source.tag.clone(),
                        digest: Some(outcome.digest.to_string()),
                        status: outcome.status,
                        upstream_digest: outcome.upstream.as_ref().map(Digest::to_string),
                        referrers: outcome.referrers,
                        error: Vec::new(),
                        remedy: None,
                    },
                    Err(e) => ImageReport::failed(
                        source,
                        p.name,
                        p.source.tag.clone(),
                        p.source.digest.as_ref().map(Digest::to_string),
                        &e,
                    ),
                };
                ctx.reporter.image_finished(&report);
                (i, report)
            }
        })
        .buffer_unordered(width * PUBLISH_WAITERS_PER_SLOT);
    let mut images = Vec::with_capacity(total);
    while let Some((i, report)) = reports.next().await {
        let failed = report.status == Status::Failed;
        images.push((i, report));
        if failed && ctx.opts.fail_fast {
            // Dropping the stream cancels the images in flight; none is half-published.
            ctx.reporter.warn(&format!(
                "stopping after the first failure (--fail-fast); {} of {total} images not finished",
                total - images.len()
            ));
            break;
        }
    }
    drop(reports);
    images.sort_by_key(|(i, _)| *i);
    let images: Vec<ImageReport> = images.into_iter().map(|(_, r)| r).collect();
    let count = |s| images.iter().filter(|i| i.status == s).count();
    Summary {
        images_fetched: count(Status::Fetched),
        images_unchanged: count(Status::Unchanged),
        images_failed: count(Status::Failed),
        images,
        blobs_fetched: ctx.stats.blobs_fetched.load(Ordering::Relaxed),
        blobs_reused: ctx.stats.blobs_reused.load(Ordering::Relaxed),
        manifests_fetched: ctx.stats.manifests_fetched.load(Ordering::Relaxed),
        bytes_fetched: ctx.stats.bytes_fetched.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        removed: Vec::new(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, FetchError> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

/// How one image went.
struct Outcome {
    status: Status,
    /// What the reference now resolves to in the store.
    digest: Digest,
    /// The registry's digest, when a platform cut made the stored one differ.
    upstream: Option<Digest>,
    /// Referrer manifests newly stored with it.
    referrers: usize,
}

async fn fetch_image(
    ctx: &Arc<Ctx>,
    p: &Planned,
    discovering: SemaphorePermit<'_>,
) -> Result<Outcome, FetchError> {
    let cell = ctx.indexes.cell(&p.name).await;
    let index = cell
        .get_or_try_init(|| {
            let store = ctx.store.clone();
            let name = p.name.clone();
            async move { blocking(move || store.read_index(&name).map(Arc::new)).await }
        })
        .await?;
    // The same stored name from another source, fetched by an earlier run.
    let origin = p.source.origin();
    if let Some(stored) = index.sources().iter().find(|s| **s != origin) {
        return Err(FetchError::StoredNameClash {
            name: p.name.clone(),
            stored: stored.clone(),
            second: origin,
        });
    }
    let (status, digest, upstream, mut updates, mut referrers, top) =
        match get_image(ctx, p, index).await? {
            Got::Unchanged(stored) => (
                Status::Unchanged,
                stored.digest.clone(),
                upstream_of(&stored.digest, &stored.annotations),
                Vec::new(),
                Vec::new(),
                None,
            ),
            Got::Fetched {
                update,
                referrers,
                top,
            } => (
                Status::Fetched,
                update.digest.clone(),
                upstream_of(&update.digest, &update.annotations),
                vec![update],
                referrers,
                Some(top),
            ),
        };
    let mut outcome = Outcome {
        status,
        upstream: (upstream != digest).then_some(upstream),
        digest,
        referrers: 0,
    };
    if p.referrers {
        let subjects = subjects(ctx, &outcome, top).await?;
        let (more, found) = fetch_referrers(ctx, p, index, &subjects).await?;
        // Referrers stored by an earlier run are already in the index and served files.
        let new: Vec<TagUpdate> = more
            .into_iter()
            .filter(|u| u.tag.is_some() || !index.contains(&u.digest))
            .collect();
        let mut found: Vec<(Digest, Descriptor)> = found
            .into_iter()
            .filter(|(_, r)| !index.contains(&r.digest))
            .collect();
        found.sort_by(|a, b| (&a.0, &a.1.digest).cmp(&(&b.0, &b.1.digest)));
        found.dedup_by(|a, b| (&a.0, &a.1.digest) == (&b.0, &b.1.digest));
        outcome.referrers = found.len();
        if !new.is_empty() {
            outcome.status = Status::Fetched;
        }
        updates.extend(new);
        referrers.extend(found);
    }
    drop(discovering);
    for u in &mut updates {
        u.annotations.insert(SOURCE.to_owned(), origin.clone());
    }
    if !updates.is_empty() {
        publish(ctx, &p.name, updates, referrers).await?;
    }
    Ok(outcome)
}

/// The digest the registry has for an index.json entry (differs after a platform cut).
fn upstream_of(digest: &Digest, annotations: &BTreeMap<String, String>) -> Digest {
    annotations
        .get(UPSTREAM_DIGEST)
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| digest.clone())
}

/// What looking up one reference found.
enum Got {
    /// The store already holds what it resolves to: its index.json entry.
    Unchanged(Descriptor),
    /// Stored (not yet published): the index.json entry to write, and the referrers
    /// found in the tree.
    Fetched {
        update: TagUpdate,
        referrers: Vec<(Digest, Descriptor)>,
        /// The manifest stored, as it is stored.
        top: Arc<Verified>,
    },
}

/// Whether a stored index.json entry is what `upstream` becomes under `filter` (the
/// image's platform list, if any).
fn is_copy_of(stored: &Descriptor, upstream: &Digest, filter: Option<&str>) -> bool {
    let kept = stored.annotations.get(KEPT_PLATFORMS).map(String::as_str);
    match filter {
        None => kept.is_none() && &stored.digest == upstream,
        Some(_) => kept == filter && upstream_of(&stored.digest, &stored.annotations) == *upstream,
    }
}

/// Resolve one reference and store its manifest tree (unless the store has it already).
async fn get_image(ctx: &Arc<Ctx>, p: &Planned, index: &TagIndex) -> Result<Got, FetchError> {
    let r = &p.source;
    let host = r.api_host();
    let filter = (!p.platforms.is_empty()).then(|| platform_list(&p.platforms));
    let filter = filter.as_deref();

    // What the manifest must hash to, when known before downloading it.
    let mut expected = r.digest.clone();
    match (&r.tag, &r.digest) {
        // A tag stored before: one HEAD decides whether anything changed since. A tag
        // never stored is fetched with one GET by tag below, not a HEAD and then a GET:
        // a cold mirror of a repository with a manifest per tag sends half the requests.
        (Some(tag), None) => {
            if let Some(stored) = index.tag(tag) {
                let head = ctx
                    .clients
                    .get(&r.registry)
                    .head_manifest(host, &r.repository, tag)
                    .await?;
                if let Some(d) = head.digest.and_then(|d| d.parse::<Digest>().ok()) {
                    if is_copy_of(stored, &d, filter) && complete(ctx, &p.name, stored).await? {
                        return Ok(Got::Unchanged(stored.clone()));
                    }
                    if d.algorithm() == "sha256" {
                        expected = Some(d);
                    }
                }
            }
        }
        (tag, Some(d)) => {
            let stored = match tag {
                Some(tag) => index.tag(tag).filter(|s| is_copy_of(s, d, filter)),
                None => index.entries().iter().find(|s| is_copy_of(s, d, filter)),
            };
            if let Some(stored) = stored
                && complete(ctx, &p.name, stored).await?
            {
                return Ok(Got::Unchanged(stored.clone()));
            }
        }
        (None, None) => {}
    }

    let upstream = match expected {
        Some(d) => {
            let origin = if r.digest.is_some() {
                "the digest asked for"
            } else {
                "the digest the registry announced"
            };
            manifest_by_digest(ctx, p, &d, origin, None).await?
        }
        None => {
            let reference = r.manifest_reference();
            let v = ctx
                .clients
                .get(&r.registry)
                .get_verified(host, &r.repository, &reference, None, None)
                .await?;
            ctx.stats.manifest_fetched(&v.bytes);
            Arc::new(v)
        }
    };
    let (top, annotations) = match filter {
        Some(list) => cut_platforms(ctx, p, list, upstream)?,
        None => (upstream, BTreeMap::new()),
    };
    let Stored {
        media_type,
        referrers,
    } = ensure_manifest(ctx, p, top.clone(), Vec::new()).await?;
    Ok(Got::Fetched {
        update: TagUpdate {
            tag: r.tag.clone(),
            media_type,
            digest: top.digest.clone(),
            size: top.size(),
            annotations,
        },
        referrers,
        top,
    })
}

/// Whether the store still holds everything the stored entry reaches (a stat a file):
/// if a damaged store lost some of it, or `verify --repair` removed corrupt files, the
/// image is fetched again instead of reported unchanged.
async fn complete(ctx: &Ctx, name: &str, stored: &Descriptor) -> Result<bool, FetchError> {
    let cell = ctx
        .complete
        .cell(&(name.to_owned(), stored.digest.clone()))
        .await;
    let complete = cell
        .get_or_try_init(|| {
            let (store, name, stored) = (ctx.store.clone(), name.to_owned(), stored.clone());
            blocking(move || store.is_complete(&name, &stored))
        })
        .await?;
    Ok(*complete)
}

/// "linux/amd64,linux/arm64": the platform list as recorded in annotations.
fn platform_list(platforms: &[PlatformSpec]) -> String {
    let list: Vec<String> = platforms.iter().map(ToString::to_string).collect();
    list.join(",")
}

/// Apply an image's platform list to its top manifest. An index loses the children of
/// other platforms and so gets a new digest (the user is told); an index whose children
/// are all wanted, and a single-platform image, keep their upstream bytes. The returned
/// annotations record the upstream digest and the list, for the index.json entry.
fn cut_platforms(
    ctx: &Ctx,
    p: &Planned,
    list: &str,
    upstream: Arc<Verified>,
) -> Result<(Arc<Verified>, BTreeMap<String, String>), FetchError> {
    let annotations = BTreeMap::from([
        (UPSTREAM_DIGEST.to_owned(), upstream.digest.to_string()),
        (KEPT_PLATFORMS.to_owned(), list.to_owned()),
    ]);
    if !matches!(upstream.manifest.kind, Kind::Index(_)) {
        return Ok((upstream, annotations));
    }
    let bad = |source| FetchError::Manifest {
        digest: upstream.digest.to_string(),
        source,
    };
    let cut = cut_index(&upstream.bytes, &p.platforms, &upstream.digest.to_string())
        .map_err(|e| bad(ManifestError::Json(e)))?;
    match cut {
        PlatformCut::Whole => Ok((upstream, annotations)),
        PlatformCut::Nothing { available } => Err(FetchError::NoPlatform {
            reference: p.source.to_string(),
            wanted: list.to_owned(),
            available: available.join(", "),
        }),
        PlatformCut::Cut { bytes, dropped } => {
            // New bytes: made a value of their own here, where they come to be.
            let cut =
                Verified::new(Bytes::from(bytes), Some(upstream.media_type())).map_err(bad)?;
            ctx.reporter.warn(&format!(
                "{}: kept {list}, left out {}; the stored index is {}, not the registry's \
                 {} (pull it by tag or by the new digest)",
                p.source,
                dropped.join(", "),
                cut.digest,
                upstream.digest
            ));
            Ok((Arc::new(cut), annotations))
        }
    }
}

/// The manifests whose referrers to look up: the image as the registry knows it, and
/// the children of the stored index (per-platform signatures). `top` is the stored
/// manifest when this run stored it; an unchanged one is read from the store.
async fn subjects(
    ctx: &Ctx,
    outcome: &Outcome,
    top: Option<Arc<Verified>>,
) -> Result<Vec<Digest>, FetchError> {
    let top = match top {
        Some(top) => top,
        None => stored_manifest(ctx, &outcome.digest, None).await?,
    };
    let mut subjects = vec![outcome.upstream.clone().unwrap_or(outcome.digest.clone())];
    if let Kind::Index(children) = &top.manifest.kind {
        subjects.extend(children.iter().map(|c| c.digest.clone()));
    }
    Ok(subjects)
}

/// Signatures, SBOMs and attestations of `subjects`: what the referrers API lists (or,
/// where the registry lacks it, the `sha256-<hex>` tag's index lists), plus cosign's
/// `sha256-<hex>.sig`/`.att`/`.sbom` tags. Everything is stored; the returned entries are
/// for index.json (untagged for API-listed referrers, so prune keeps them) and for the
/// served referrers lists.
async fn fetch_referrers(
    ctx: &Arc<Ctx>,
    p: &Planned,
    index: &TagIndex,
    subjects: &[Digest],
) -> Result<(Vec<TagUpdate>, Vec<(Digest, Descriptor)>), FetchError> {
    let tags = repo_tags(ctx, p).await;
    let found = try_join_all(
        subjects
            .iter()
            .map(|s| referrers_of(ctx, p, index, s, &tags)),
    )
    .await?;
    let mut updates = Vec::new();
    let mut referrers = Vec::new();
    for (u, r) in found {
        updates.extend(u);
        referrers.extend(r);
    }
    Ok((updates, referrers))
}

async fn referrers_of(
    ctx: &Arc<Ctx>,
    p: &Planned,
    index: &TagIndex,
    subject: &Digest,
    tags: &HashSet<String>,
) -> Result<(Vec<TagUpdate>, Vec<(Digest, Descriptor)>), FetchError> {
    let r = &p.source;
    let listed = ctx
        .clients
        .get(&r.registry)
        .get_referrers(r.api_host(), &r.repository, &subject.to_string())
        .await?;
    let mut updates = Vec::new();
    let mut referrers = Vec::new();
    let mut tag_names = Vec::new();
    let schema_tag = format!("{}-{}", subject.algorithm(), subject.hex());
    match listed {
        Some(body) => {
            let bad = |source| FetchError::Manifest {
                digest: format!("referrers of {subject}"),
                source,
            };
            let children = match Manifest::parse(&body.bytes, Some(OCI_INDEX)).map_err(bad)? {
                Manifest {
                    kind: Kind::Index(children),
                    ..
                } => children,
                _ => {
                    return Err(bad(ManifestError::UnknownMediaType(
                        body.media_type.unwrap_or_default(),
                    )));
                }
            };
            let stored = try_join_all(
                children
                    .iter()
                    .map(|c| ensure_child(ctx, p, subject, c, Vec::new(), REFERRER_ORIGIN)),
            )
            .await?;
            for (c, s) in children.iter().zip(stored) {
                updates.push(TagUpdate {
                    tag: None,
                    media_type: s.media_type,
                    digest: c.digest.clone(),
                    size: c.size,
                    annotations: BTreeMap::new(),
                });
                referrers.extend(s.referrers);
            }
        }
        // No referrers API: the distribution spec's fallback is an index under this tag.
        None => tag_names.push(schema_tag.clone()),
    }
    tag_names.extend([".sig", ".att", ".sbom"].map(|suffix| format!("{schema_tag}{suffix}")));
    for tag in tag_names.into_iter().filter(|t| tags.contains(t)) {
        let tagged = Planned {
            source: Reference {
                tag: Some(tag),
                digest: None,
                ..r.clone()
            },
            name: p.name.clone(),
            platforms: Vec::new(),
            referrers: false,
        };
        if let Got::Fetched {
            update,
            referrers: found,
            ..
        } = get_image(ctx, &tagged, index).await?
        {
            updates.push(update);
            referrers.extend(found);
        }
    }
    Ok((updates, referrers))
}

/// The repository's tags, listed once per run (for referrer tags).
async fn repo_tags(ctx: &Ctx, p: &Planned) -> Arc<HashSet<String>> {
    let r = &p.source;
    let key = r.origin();
    let cell = ctx.tags.cell(&key).await;
    let tags = cell
        .get_or_init(|| async {
            // Some registries refuse listing to tokens that may pull; the referrers API
            // still works there.
            let listed = match ctx
                .clients
                .get(&r.registry)
                .list_tags(r.api_host(), &r.repository)
                .await
            {
                Ok(listed) => listed,
                Err(e) => {
                    ctx.reporter.warn(&format!(
                        "{key}: cannot list tags, so referrer tags (sha256-<hex>, cosign's \
                         .sig/.att/.sbom) are not looked for: {}",
                        error_chain(&e).join(": ")
                    ));
                    Vec::new()
                }
            };
            let valid = valid_tags(listed, &key, ctx.reporter.as_ref());
            Arc::new(valid.into_iter().collect::<HashSet<_>>())
        })
        .await;
    tags.clone()
}

/// Write everything queued for `name`, again and again until its queue is empty.
async fn flush_publishes(ctx: Arc<Ctx>, name: String) {
    let mut pause = Duration::ZERO;
    loop {
        // Group commit: a write costs as much as the whole index, so a writer going
        // back to back spends a core rewriting a big repository's index.json for a few
        // tags each time. Waiting twice as long as the last write took gathers larger
        // batches and keeps writing to at most a third of the time.
        tokio::time::sleep(pause).await;
        let (updates, referrers, waiters) = {
            let mut queues = ctx.publish.lock().expect("publish queue lock");
            let q = queues.get_mut(&name).expect("queue exists while flushing");
            if q.waiters.is_empty() {
                q.flushing = false;
                return;
            }
            (
                std::mem::take(&mut q.updates),
                std::mem::take(&mut q.referrers),
                std::mem::take(&mut q.waiters),
            )
        };
        let store = ctx.store.clone();
        let repo = name.clone();
        let started = Instant::now();
        let result = blocking(move || store.publish(&repo, &updates, &referrers))
            .await
            .map_err(|e| error_chain(&e).join(": "));
        pause = (started.elapsed() * 2).min(MAX_PUBLISH_PAUSE);
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

/// Updates waiting to be written into one repository's index.json, and who waits.
#[derive(Default)]
struct PublishQueue {
    updates: Vec<TagUpdate>,
    referrers: Vec<(Digest, Descriptor)>,
    waiters: Vec<tokio::sync::oneshot::Sender<Result<(), String>>>,
    flushing: bool,
}

/// Publish one image's entries. Every publish rewrites the repository's whole index.json,
/// so publishes are coalesced: the first caller starts a writer that takes everything
/// queued for the repository (again, until the queue is empty), and every caller waits
/// for the write that holds its update. A repository with 10k tags costs a handful of
/// rewrites, not 10k.
async fn publish(
    ctx: &Arc<Ctx>,
    name: &str,
    updates: Vec<TagUpdate>,
    referrers: Vec<(Digest, Descriptor)>,
) -> Result<(), FetchError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let leader = {
        let mut queues = ctx.publish.lock().expect("publish queue lock");
        let q = queues.entry(name.to_owned()).or_default();
        q.updates.extend(updates);
        q.referrers.extend(referrers);
        q.waiters.push(tx);
        !std::mem::replace(&mut q.flushing, true)
    };
    if leader {
        // A task of its own: cancelling this image (--fail-fast) must not strand the
        // others waiting on the same write.
        tokio::spawn(flush_publishes(ctx.clone(), name.to_owned()));
    }
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(cause)) => Err(FetchError::Publish {
            name: name.to_owned(),
            cause,
        }),
        Err(_) => Err(FetchError::Publish {
            name: name.to_owned(),
            cause: "the run stopped before the index was written".into(),
        }),
    }
}

/// What storing a manifest tree found out.
struct Stored {
    media_type: String,
    /// (subject, referrer descriptor) for every manifest in the tree that has a subject.
    referrers: Vec<(Digest, Descriptor)>,
}

/// Store a verified manifest and everything it reaches in the image's repository. The
/// manifest itself is linked last, after all it needs.
fn ensure_manifest<'a>(
    ctx: &'a Ctx,
    p: &'a Planned,
    verified: Arc<Verified>,
    parents: Vec<Digest>,
) -> BoxFuture<'a, Result<Stored, FetchError>> {
    async move {
        let (digest, manifest) = (&verified.digest, &verified.manifest);
        let mut referrers = Vec::new();
        if let Some(subject) = &manifest.subject {
            let me = manifest.referrer_descriptor(digest, verified.size());
            referrers.push((subject.digest.clone(), me));
        }
        match &manifest.kind {
            Kind::Index(children) => {
                if parents.len() >= MAX_INDEX_DEPTH {
                    return Err(FetchError::IndexTooDeep {
                        digest: digest.clone(),
                    });
                }
                let mut chain = parents.clone();
                chain.push(digest.clone());
                let stored =
                    try_join_all(children.iter().map(|child| {
                        ensure_child(ctx, p, digest, child, chain.clone(), CHILD_ORIGIN)
                    }))
                    .await?;
                referrers.extend(stored.into_iter().flat_map(|s| s.referrers));
            }
            Kind::Image { config, layers } => {
                let wanted = std::iter::once(config.as_ref())
                    .chain(layers.iter())
                    .filter(|d| {
                        if d.is_foreign() && !ctx.opts.include_foreign {
                            ctx.reporter.warn(&format!(
                            "{}: skipping foreign layer {} (pass --include-foreign to fetch it)",
                            p.source, d.digest
                        ));
                            false
                        } else {
                            true
                        }
                    });
                try_join_all(wanted.map(|d| ensure_blob(ctx, p, d))).await?;
            }
        }
        let store = ctx.store.clone();
        let name = p.name.clone();
        let media_type = manifest.media_type.clone();
        blocking(move || {
            store.put_manifest(&verified)?;
            store.link_blob(&name, &verified.digest)
        })
        .await?;
        Ok(Stored {
            media_type,
            referrers,
        })
    }
    .boxed()
}

/// Where a child's expected digest came from, for the error when its bytes disagree.
const CHILD_ORIGIN: &str = "the digest in its parent index";
const REFERRER_ORIGIN: &str = "the digest the registry's referrers list gave";

async fn ensure_child(
    ctx: &Ctx,
    p: &Planned,
    parent: &Digest,
    child: &Descriptor,
    chain: Vec<Digest>,
    origin: &'static str,
) -> Result<Stored, FetchError> {
    let d = &child.digest;
    if chain.contains(d) {
        return Err(FetchError::IndexCycle {
            digest: parent.clone(),
            child: d.clone(),
        });
    }
    let verified = manifest_by_digest(ctx, p, d, origin, Some(&child.media_type)).await?;
    if verified.size() != child.size {
        return Err(FetchError::ManifestSize {
            digest: d.clone(),
            expected: child.size,
            actual: verified.bytes.len(),
        });
    }
    ensure_manifest(ctx, p, verified, chain).await
}

/// A manifest the pool holds, read and parsed once; bytes that no longer hash to their
/// name are a damaged store.
async fn stored_manifest(
    ctx: &Ctx,
    digest: &Digest,
    media_type: Option<&str>,
) -> Result<Arc<Verified>, FetchError> {
    let store = ctx.store.clone();
    let d = digest.clone();
    let bytes = Bytes::from(blocking(move || store.read_blob(&d)).await?);
    let verified = Verified::new(bytes, media_type).map_err(|source| FetchError::Manifest {
        digest: digest.to_string(),
        source,
    })?;
    if verified.digest != *digest {
        return Err(StoreError::DigestMismatch {
            expected: digest.clone(),
            actual: verified.digest.clone(),
        }
        .into());
    }
    Ok(Arc::new(verified))
}

/// A manifest by digest, from the pool when a previous run stored it, else downloaded
/// once however many tags or indexes share it.
async fn manifest_by_digest(
    ctx: &Ctx,
    p: &Planned,
    digest: &Digest,
    origin: &'static str,
    media_type: Option<&str>,
) -> Result<Arc<Verified>, FetchError> {
    if ctx.store.has_blob(digest)? {
        return stored_manifest(ctx, digest, media_type).await;
    }
    let cell = ctx.manifests.cell(digest).await;
    let fetched = cell
        .get_or_try_init(|| async {
            let v = ctx
                .clients
                .get(&p.source.registry)
                .get_verified(
                    p.source.api_host(),
                    &p.source.repository,
                    &digest.to_string(),
                    Some((digest, origin)),
                    media_type,
                )
                .await?;
            ctx.stats.manifest_fetched(&v.bytes);
            Ok::<_, FetchError>(Arc::new(v))
        })
        .await?;
    Ok(fetched.clone())
}

async fn ensure_blob(ctx: &Ctx, p: &Planned, desc: &Descriptor) -> Result<(), FetchError> {
    if ctx.store.has_blob(&desc.digest)? {
        ctx.stats.blobs_reused.fetch_add(1, Ordering::Relaxed);
    } else {
        ctx.blobs
            .cell(&desc.digest)
            .await
            .get_or_try_init(|| download(ctx, p, desc))
            .await?;
    }
    let store = ctx.store.clone();
    let name = p.name.clone();
    let digest = desc.digest.clone();
    blocking(move || store.link_blob(&name, &digest)).await?;
    Ok(())
}

/// Download one blob into the pool, resuming with Range after a broken or short body.
async fn download(ctx: &Ctx, p: &Planned, desc: &Descriptor) -> Result<(), FetchError> {
    let host = ctx
        .host_downloads
        .lock()
        .expect("host limiter lock")
        .entry(p.source.api_host().to_owned())
        .or_insert_with(|| Arc::new(Semaphore::new(ctx.opts.jobs_per_host.max(1))))
        .clone();
    let _host_permit = host.acquire().await.expect("semaphore never closed");
    let _permit = ctx
        .downloads
        .acquire()
        .await
        .expect("semaphore never closed");
    let result = download_verified(ctx, p, desc).await;
    ctx.reporter.blob_finished(&desc.digest);
    result
}

async fn download_verified(ctx: &Ctx, p: &Planned, desc: &Descriptor) -> Result<(), FetchError> {
    let (d, size) = (&desc.digest, desc.size);
    let mut from_scratch = false;
    loop {
        let store = ctx.store.clone();
        let digest = d.clone();
        let mut partial = match blocking(move || store.claim_blob(&digest, size)).await? {
            BlobClaim::Present => {
                ctx.stats.blobs_reused.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            BlobClaim::Write(w) => *w,
        };
        let resumed = partial.offset() > 0;
        ctx.reporter.blob_started(d, size, partial.offset());
        let mut resumes = 0;
        // A part that a killed run completed (but did not move into the pool) needs no
        // request: asking for bytes from its end would only earn a 416 and a restart.
        while partial.offset() != size {
            let (back, broke) = stream_into(ctx, p, partial).await?;
            partial = back;
            if partial.offset() == size {
                break;
            }
            if resumes == BLOB_RESUMES {
                return Err(FetchError::BlobIncomplete {
                    digest: d.clone(),
                    got: partial.offset(),
                    size,
                    source: broke.map(Box::new),
                });
            }
            resumes += 1;
            ctx.reporter.warn(&format!(
                "{}: blob {d} stopped at byte {} of {size}{}; resuming",
                p.source,
                partial.offset(),
                broke.map(|e| format!(" ({e})")).unwrap_or_default()
            ));
        }
        match blocking(move || partial.commit()).await {
            Ok(()) => {
                ctx.stats.blobs_fetched.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            // Bytes kept from an earlier run may be what was wrong (a different
            // upstream, a damaged disk); the part is gone now, so one clean try is owed.
            Err(FetchError::Store(StoreError::DigestMismatch { .. }))
                if resumed && !from_scratch =>
            {
                ctx.reporter.warn(&format!(
                    "{}: blob {d} resumed from an earlier run did not verify; downloading it again from the start",
                    p.source
                ));
                from_scratch = true;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One GET of the blob from `partial`'s offset, written on a blocking thread (file writes
/// and hashing stay off the async workers) while the network side keeps reading. Returns
/// the writer and the stream error, if the body broke off.
async fn stream_into(
    ctx: &Ctx,
    p: &Planned,
    mut partial: PartialBlob,
) -> Result<(PartialBlob, Option<RegistryError>), FetchError> {
    let resp = ctx
        .clients
        .get(&p.source.registry)
        .get_blob(
            p.source.api_host(),
            &p.source.repository,
            &partial.digest().to_string(),
            partial.offset(),
        )
        .await?;
    if resp.offset != partial.offset() {
        // The server ignored Range: start over.
        partial = blocking(move || partial.restart().map(|()| partial)).await?;
    }
    let digest = partial.digest().clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(32);
    let writer = tokio::task::spawn_blocking(move || {
        while let Some(chunk) = rx.blocking_recv() {
            partial.write(&chunk)?;
        }
        Ok::<_, StoreError>(partial)
    });
    let mut stream = resp.stream;
    let mut broke = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                let n = chunk.len() as u64;
                if tx.send(chunk).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
                ctx.stats.bytes_fetched.fetch_add(n, Ordering::Relaxed);
                ctx.reporter.blob_progress(&digest, n);
            }
            Err(e) => {
                broke = Some(e);
                break;
            }
        }
    }
    drop(tx);
    Ok((writer.await??, broke))
}
