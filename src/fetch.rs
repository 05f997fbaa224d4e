//! Fetch: registry → store on the copy engine. `resolve` turns a mirror configuration
//! into planned images (listing tags where a selector needs them), `execute` runs them
//! through the engine (one source per registry, the store the destination: each blob
//! once, each image published only when all of it is stored), `survey` says what a fetch
//! would bring (`plan`), and `remove_unselected` is `fetch --delete`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;

use crate::config::ImageSpec;
use crate::copy::registry::{RegistrySource, valid_tags};
use crate::copy::store::{StoreDestination, held};
use crate::copy::{
    self, Annotations, Engine, ImageJob, JobReport, JobTarget, Overwrite, SourceRef, platform_list,
};
use crate::manifest::{Descriptor, Kind, REF_NAME, SOURCE, Verified};
use crate::plan::Planned;
use crate::reference::{Digest, Reference, ReferenceError};
use crate::registry::{Client, RegistryError};
use crate::report::{CopyStatus, ImageReport, Reporter, Status, error_chain};
use crate::select::PlatformSpec;
use crate::store::inventory::reachable;
use crate::store::{self, Removal, Removed, Store, StoreError, TagIndex};

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
    #[error(
        "{name:?} in the store holds images of {stored}; {second} would be merged into it: fetch into another --root, use --keep-host (or a config `target`), or remove it first (static-registry rm {name})"
    )]
    StoredNameClash {
        name: String,
        stored: String,
        second: String,
    },
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
            policy: spec.verify.clone(),
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
    /// How a planned image went, from the engine's report of its job: failed when it,
    /// or a referrer it asked for, failed; fetched when anything of it (a new referrer
    /// included) was stored.
    fn of(p: &Planned, job: &JobReport) -> ImageReport {
        let main = &job.targets[0].1;
        let referrers = job
            .referrers
            .iter()
            .filter(|(_, r)| r.status == CopyStatus::Copied)
            .count();
        let failure = job
            .all()
            .map(|(_, r)| r)
            .find(|r| r.status == CopyStatus::Failed);
        let status = match (failure, main.status) {
            (Some(_), _) => Status::Failed,
            (None, CopyStatus::Copied) => Status::Fetched,
            (None, _) if referrers > 0 => Status::Fetched,
            (None, _) => Status::Unchanged,
        };
        ImageReport {
            source: p.source.to_string(),
            name: p.name.clone(),
            tag: p.source.tag.clone(),
            digest: main
                .digest
                .clone()
                .or_else(|| p.source.digest.as_ref().map(Digest::to_string)),
            status,
            upstream_digest: main.upstream_digest.clone(),
            referrers,
            error: failure.map(|r| r.error.clone()).unwrap_or_default(),
            remedy: failure.and_then(|r| r.remedy.clone()),
        }
    }

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

impl ImageReport {
    pub fn failed_planned(p: &Planned, error: &FetchError) -> ImageReport {
        ImageReport::failed(
            p.source.to_string(),
            p.name.clone(),
            p.source.tag.clone(),
            p.source.digest.as_ref().map(Digest::to_string),
            error,
        )
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
    let base = [".sig", ".att", ".sbom"]
        .iter()
        .find_map(|s| tag.strip_suffix(s))
        .unwrap_or(tag);
    copy::fallback_subject(base)
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
    let filter = platform_list(&p.platforms);
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
                    .find(|s| held(s).is_copy_of(&digest, filter.as_deref())),
            });
            if copy.is_some_and(|s| held(s).is_copy_of(&digest, filter.as_deref())) {
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

/// Fetch every planned image: registry → store on the copy engine, one source per
/// registry, the store the one destination. Each image succeeds or fails on its own; the
/// summary says which.
pub async fn execute(
    clients: Clients,
    store: Arc<Store>,
    planned: Vec<Planned>,
    opts: FetchOptions,
    reporter: Arc<dyn Reporter>,
) -> Summary {
    let started = Instant::now();
    let mut reports: Vec<Option<ImageReport>> = planned.iter().map(|_| None).collect();
    let (dest, refused) = StoreTarget::open(store, &planned).await;
    for (i, e) in &refused {
        reports[*i] = Some(ImageReport::failed_planned(&planned[*i], e));
    }
    let (sources, jobs, planned_of) = engine_jobs(&clients, &planned, &opts, &reporter, |i, p| {
        (!refused.contains_key(&i)).then(|| vec![StoreTarget::job_target(0, p)])
    });
    let engine = Engine::new(sources, vec![dest], engine_options(&opts), reporter.clone());
    for i in &planned_of {
        reporter.image_started(&planned[*i].source.to_string());
    }
    let finished_reports = std::sync::Mutex::new(Vec::new());
    let finished = |job: &JobReport| {
        let i = planned_of[job.index];
        let report = ImageReport::of(&planned[i], job);
        reporter.image_finished(&report);
        finished_reports
            .lock()
            .expect("reports lock")
            .push((i, report));
    };
    let copied = engine.run(vec![jobs], &finished).await;
    for (i, report) in finished_reports.into_inner().expect("reports lock") {
        reports[i] = Some(report);
    }
    let images: Vec<ImageReport> = reports.into_iter().flatten().collect();
    let count = |s| images.iter().filter(|i| i.status == s).count();
    let store = &copied.targets[0];
    let (manifests, manifest_bytes) = manifests_read(engine.sources());
    Summary {
        images_fetched: count(Status::Fetched),
        images_unchanged: count(Status::Unchanged),
        images_failed: count(Status::Failed),
        images,
        blobs_fetched: store.blobs_uploaded,
        blobs_reused: store.blobs_present + store.blobs_mounted,
        manifests_fetched: manifests,
        bytes_fetched: store.bytes_sent + manifest_bytes,
        seconds: started.elapsed().as_secs_f64(),
        removed: Vec::new(),
    }
}

/// Manifests the sources downloaded, and their bytes.
pub fn manifests_read(sources: &[RegistrySource]) -> (u64, u64) {
    sources
        .iter()
        .map(RegistrySource::manifests_read)
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

pub fn engine_options(opts: &FetchOptions) -> copy::Options {
    copy::Options {
        jobs: opts.jobs,
        images: (opts.jobs * 4).max(16),
        include_foreign: opts.include_foreign,
        fail_fast: opts.fail_fast,
    }
}

/// The store as the destination of planned images.
pub struct StoreTarget;

impl StoreTarget {
    /// The store destination, each repository's index.json read once (what the store
    /// holds, and which source filled it); and the planned images (by index) it refuses:
    /// a name another source filled, an index.json that cannot be read.
    pub async fn open(
        store: Arc<Store>,
        planned: &[Planned],
    ) -> (StoreDestination, HashMap<usize, Arc<FetchError>>) {
        let mut indexes = HashMap::new();
        for p in planned {
            if !indexes.contains_key(&p.name) {
                let (store, name) = (store.clone(), p.name.clone());
                let index = tokio::task::spawn_blocking(move || store.read_index(&name))
                    .await
                    .map_err(FetchError::from)
                    .and_then(|r| r.map_err(FetchError::from));
                indexes.insert(p.name.clone(), index.map(Arc::new).map_err(Arc::new));
            }
        }
        let mut refused = HashMap::new();
        for (i, p) in planned.iter().enumerate() {
            let origin = p.source.origin();
            match &indexes[&p.name] {
                Err(e) => {
                    refused.insert(i, e.clone());
                }
                // The same stored name from another source, fetched by an earlier run.
                Ok(index) => {
                    if let Some(stored) = index.sources().iter().find(|s| **s != origin) {
                        let e = FetchError::StoredNameClash {
                            name: p.name.clone(),
                            stored: stored.clone(),
                            second: origin,
                        };
                        refused.insert(i, Arc::new(e));
                    }
                }
            }
        }
        let indexes = indexes
            .into_iter()
            .filter_map(|(name, index)| Some((name, index.ok()?)))
            .collect();
        (StoreDestination::new(store, indexes), refused)
    }

    /// A planned image's target in the store (destination `dest`): its stored name and tag.
    pub fn job_target(dest: usize, p: &Planned) -> JobTarget {
        JobTarget {
            dest,
            repo: p.name.clone(),
            tag: p.source.tag.clone(),
            overwrite: Overwrite::Replace,
        }
    }
}

/// The engine's sources (one per registry, with the per-host read limit) and a job per
/// planned image that `targets` gives any targets (by planned index); with each job, the
/// index of its planned image.
pub fn engine_jobs(
    clients: &Clients,
    planned: &[Planned],
    opts: &FetchOptions,
    reporter: &Arc<dyn Reporter>,
    mut targets: impl FnMut(usize, &Planned) -> Option<Vec<JobTarget>>,
) -> (Vec<RegistrySource>, Vec<ImageJob>, Vec<usize>) {
    let mut sources: Vec<RegistrySource> = Vec::new();
    let mut by_registry: HashMap<&str, usize> = HashMap::new();
    let mut jobs = Vec::new();
    let mut planned_of = Vec::new();
    for (i, p) in planned.iter().enumerate() {
        let Some(targets) = targets(i, p).filter(|t| !t.is_empty()) else {
            continue;
        };
        let r = &p.source;
        let source = *by_registry.entry(r.registry.as_str()).or_insert_with(|| {
            let client = clients.get(&r.registry).clone();
            let source = RegistrySource::new(client, &r.registry, r.api_host(), reporter.clone())
                .with_reads(opts.jobs_per_host);
            sources.push(source);
            sources.len() - 1
        });
        jobs.push(ImageJob {
            label: r.to_string(),
            source,
            repo: r.repository.clone(),
            reference: match &r.digest {
                Some(d) => SourceRef::Digest(d.clone()),
                None => SourceRef::Tag(r.manifest_reference()),
            },
            platforms: p.platforms.clone(),
            referrers: p.referrers,
            annotations: Annotations::from([(SOURCE.to_owned(), r.origin())]),
            fallback: false,
            policy: p.policy.clone(),
            targets,
        });
        planned_of.push(i);
    }
    (sources, jobs, planned_of)
}
