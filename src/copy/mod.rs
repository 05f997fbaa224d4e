//! The copy engine: one walk of a manifest tree from a source endpoint into any number
//! of destination endpoints (registries today; the store, bundles and buckets are the
//! same two traits). `push` is store → registries, `copy` is registry → registries.
//!
//! Order at every destination is the spec's: blobs before the manifest naming them,
//! children before their index, the tag last. Each source blob is read once per image
//! however many destinations lack it, and streamed to all of them chunk by chunk. Per
//! destination one claimant per blob: a second image wanting the same blob waits, then
//! finds it present (same repository) or mounts it from the repository that got it.
//! One destination failing never stops the others; every outcome is reported per image
//! and destination.
//!
//! Referrers (signatures, SBOMs, attestations: manifests with a `subject`) are copied by
//! digest after their subject. A destination without the referrers API (no `OCI-Subject`
//! in the answer to the PUT) gets the spec's fallback tag `<alg>-<hex of subject>` kept
//! for it, an OCI index of the subject's referrers, whenever a referrer is put there by
//! digest (an untagged push entry, or one `copy --referrers` found). A referrer put as a
//! child of a tagged index (a stored fallback tag being pushed) leaves the tags alone:
//! that tag is the store's and arrives as it is.

pub mod registry;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, join_all};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};
use tokio::sync::{OnceCell, Semaphore};

use crate::manifest::{Descriptor, Kind, ManifestError, OCI_INDEX, Verified};
use crate::reference::Digest;
use crate::registry::RegistryError;
use crate::report::{CopyStatus, Reporter, TargetReport, error_chain};
use crate::store::StoreError;

/// Blobs up to this size go in one request; larger ones in chunks of this size, which is
/// also what one transfer holds in memory.
pub const CHUNK: usize = 8 << 20;
/// Index nesting deeper than this is refused (real images use one level; a cycle ends
/// here too).
const MAX_INDEX_DEPTH: usize = 4;
/// Times a source blob read that broke off is resumed.
const SOURCE_RESUMES: u32 = 3;
/// Levels of referrers followed from an image (`Options::referrers`): its signatures,
/// and theirs (a signature of an SBOM); a cycle ends here too.
const MAX_REFERRER_DEPTH: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Registry(Box<RegistryError>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("manifest {what} is not usable")]
    Manifest {
        what: String,
        #[source]
        source: ManifestError,
    },
    #[error("manifest {what} hashes to {actual}, not to {expected} ({origin})")]
    ManifestDigest {
        what: String,
        expected: Digest,
        actual: Digest,
        origin: &'static str,
    },
    #[error("manifest {digest} is {actual} bytes; the index naming it says {expected}")]
    ManifestSize {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("index {digest} nests indexes deeper than {MAX_INDEX_DEPTH} levels (or in a cycle)")]
    IndexTooDeep { digest: Digest },
    #[error(
        "blob {digest} from the source hashes to {actual}; nothing was committed at the targets"
    )]
    BlobDigest { digest: Digest, actual: Digest },
    #[error("blob {digest}: the source sent more than its {size} bytes")]
    BlobTooLong { digest: Digest, size: u64 },
    #[error("blob {digest}: the source stopped at byte {got} of {size}")]
    BlobIncomplete {
        digest: Digest,
        got: u64,
        size: u64,
        #[source]
        source: Option<Box<CopyError>>,
    },
    #[error("{what} is a {media_type}, not an OCI index of referrers")]
    NotReferrersIndex { what: String, media_type: String },
    #[error("{target} points at {existing}, not {digest}; left as it is (--overwrite=fail)")]
    TagExists {
        target: String,
        existing: Digest,
        digest: Digest,
    },
}

impl CopyError {
    /// What the operator can do about it (see [`RegistryError::remedy`]).
    pub fn remedy(&self) -> Option<crate::registry::Remedy> {
        match self {
            CopyError::Registry(e) => e.remedy(),
            _ => None,
        }
    }
}

impl From<RegistryError> for CopyError {
    fn from(e: RegistryError) -> Self {
        CopyError::Registry(Box::new(e))
    }
}

/// A blob's bytes from a source, from `offset` (which may be 0 when the source cannot
/// start where it was asked to).
pub struct BlobRead {
    pub offset: u64,
    pub stream: BoxStream<'static, Result<Bytes, CopyError>>,
}

/// Where images come from. Every manifest it returns is verified (its digest computed
/// from its bytes, checked against the digest asked for) and parsed, once.
pub trait Source: Send + Sync {
    /// The registry host it reads, when it is a registry: a destination on that host
    /// mounts blobs from the source repository instead of taking their bytes.
    fn registry(&self) -> Option<&str>;
    /// The manifest `tag` of `repo` points at.
    fn resolve(
        &self,
        repo: &str,
        tag: &str,
    ) -> impl Future<Output = Result<Verified, CopyError>> + Send;
    /// Manifest `digest` of `repo`; `media_type` is what its descriptor says (for
    /// documents without the field).
    fn manifest(
        &self,
        repo: &str,
        digest: &Digest,
        media_type: Option<&str>,
    ) -> impl Future<Output = Result<Verified, CopyError>> + Send;
    /// Blob `desc` of `repo`, from byte `offset`.
    fn blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        offset: u64,
    ) -> impl Future<Output = Result<BlobRead, CopyError>> + Send;
    /// The manifests of `repo` whose subject is `subject`; none when it has none.
    fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
    ) -> impl Future<Output = Result<Vec<Descriptor>, CopyError>> + Send;
}

/// The fallback tag of the distribution spec's referrers tag schema: `<alg>-<hex>` of
/// the subject, holding an OCI index of its referrers.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("{}-{}", subject.algorithm(), subject.hex())
}

/// How a destination took a blob.
pub enum Start<W> {
    /// From another repository of the destination: nothing to send.
    Mounted,
    /// Send the bytes to this writer.
    Write(W),
}

/// A blob being written at a destination. Chunks come in order, each [`CHUNK`] bytes;
/// `finish` gets the rest (all of a blob no larger than one chunk).
pub trait BlobWriter: Send {
    fn write(&mut self, chunk: Bytes) -> impl Future<Output = Result<(), CopyError>> + Send;
    fn finish(
        self,
        digest: &Digest,
        last: Bytes,
    ) -> impl Future<Output = Result<(), CopyError>> + Send;
}

/// Where images go.
pub trait Destination: Send + Sync {
    type Writer: BlobWriter;
    /// How reports name it (`registry.example:5000`).
    fn name(&self) -> &str;
    /// The registry host it writes, when it is a registry.
    fn registry(&self) -> Option<&str>;
    /// The digest `tag` of `repo` points at, if any.
    fn tag(
        &self,
        repo: &str,
        tag: &str,
    ) -> impl Future<Output = Result<Option<Digest>, CopyError>> + Send;
    fn has_manifest(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> impl Future<Output = Result<bool, CopyError>> + Send;
    fn has_blob(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> impl Future<Output = Result<bool, CopyError>> + Send;
    /// Begin blob `desc` in `repo`; `mount_from` is a repository of this destination
    /// that holds it, to mount from where the destination can.
    fn start_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        mount_from: Option<&str>,
    ) -> impl Future<Output = Result<Start<Self::Writer>, CopyError>> + Send;
    /// The manifest `reference` (a tag, or a digest) of `repo` names, if any.
    fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> impl Future<Output = Result<Option<Verified>, CopyError>> + Send;
    /// Store `manifest` as its bytes are, under `reference` (a tag, or its digest); true
    /// when the destination lists it under its subject by itself (the referrers API).
    fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &Verified,
    ) -> impl Future<Output = Result<bool, CopyError>> + Send;
}

/// What a tag that already points at another digest at a target gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overwrite {
    /// Leave it, and report the tag skipped.
    Skip,
    /// Point it at the source's digest.
    #[default]
    Replace,
    /// Leave it, and report the image failed at that target.
    Fail,
}

impl std::str::FromStr for Overwrite {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "skip" => Ok(Overwrite::Skip),
            "replace" => Ok(Overwrite::Replace),
            "fail" => Ok(Overwrite::Fail),
            _ => Err(format!("{s:?}: expected skip, replace or fail")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Blob transfers in flight at once.
    pub jobs: usize,
    pub overwrite: Overwrite,
    /// Also copy foreign (non-distributable) layers; by default they are left out, as
    /// registries do not hold them.
    pub include_foreign: bool,
    /// After each image, copy what refers to it (and to its index's children) by
    /// digest, and what refers to those: [`MAX_REFERRER_DEPTH`] levels.
    pub referrers: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            jobs: 8,
            overwrite: Overwrite::default(),
            include_foreign: false,
            referrers: false,
        }
    }
}

/// A manifest at the source: by tag, or by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRef {
    Tag(String),
    Digest(Digest),
}

/// One image and where it goes.
#[derive(Debug, Clone)]
pub struct ImageJob {
    /// How reports name the source image (`lab/debian:12`, `reg.example/lab/debian:12`).
    pub label: String,
    /// Source repository.
    pub repo: String,
    pub reference: SourceRef,
    pub targets: Vec<JobTarget>,
}

/// One destination of an image.
#[derive(Debug, Clone)]
pub struct JobTarget {
    /// Index into the engine's destinations.
    pub dest: usize,
    pub repo: String,
    /// The tag to set; `None` stores the manifest by digest only.
    pub tag: Option<String>,
}

/// What one destination got in a run.
#[derive(Debug, Default, Serialize)]
pub struct DestinationSummary {
    pub target: String,
    pub copied: usize,
    pub unchanged: usize,
    pub skipped: usize,
    pub failed: usize,
    /// Blobs whose bytes were sent.
    pub blobs_uploaded: u64,
    /// Blobs mounted from another repository of the destination.
    pub blobs_mounted: u64,
    /// Blobs the destination had already.
    pub blobs_present: u64,
    pub manifests_put: u64,
    pub bytes_sent: u64,
    /// Bytes that waited for this target in a spool file, as it was slower than the
    /// others.
    pub bytes_spooled: u64,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub targets: Vec<DestinationSummary>,
    pub images: Vec<TargetReport>,
    pub seconds: f64,
}

impl Summary {
    pub fn failed(&self) -> usize {
        self.targets.iter().map(|t| t.failed).sum()
    }
}

#[derive(Default)]
struct Counters {
    blobs_uploaded: AtomicU64,
    blobs_mounted: AtomicU64,
    blobs_present: AtomicU64,
    manifests_put: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_spooled: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Per destination and blob: a repository of the destination known to hold it. Its
/// async lock is the one claim on the blob there.
type Holder = Arc<tokio::sync::Mutex<Option<String>>>;

/// A claim on one manifest in one repository of a destination: whether this run put it.
type Claim = Arc<tokio::sync::Mutex<bool>>;

/// The one updater, at a time, of a fallback tag at a destination.
type FallbackClaim = Arc<tokio::sync::Mutex<()>>;

/// What one job (and the referrers it led to) came to, each with its destination.
type Reports = Vec<(usize, TargetReport)>;

pub struct Engine<S, D> {
    source: S,
    dests: Vec<D>,
    opts: Options,
    reporter: Arc<dyn Reporter>,
    transfers: Semaphore,
    holders: Vec<Mutex<HashMap<Digest, Holder>>>,
    /// Per destination, (repository, manifest digest) → put there in this run.
    manifest_claims: Vec<Mutex<HashMap<(String, Digest), Claim>>>,
    /// Per destination, (repository, subject) → the claim on its fallback tag.
    fallback_claims: Vec<Mutex<HashMap<(String, Digest), FallbackClaim>>>,
    /// Source manifests by digest, read once however many images share them.
    manifests: Mutex<HashMap<Digest, Arc<OnceCell<Arc<Verified>>>>>,
    counters: Vec<Counters>,
}

/// One image's target while it is copied, and the first error it met (after which
/// nothing more is sent there).
struct Slot {
    /// Index of its target in the job.
    target: usize,
    dest: usize,
    repo: String,
    error: Mutex<Option<Arc<CopyError>>>,
}

impl Slot {
    fn fail(&self, e: Arc<CopyError>) {
        self.error.lock().expect("slot lock").get_or_insert(e);
    }

    fn failed(&self) -> bool {
        self.error.lock().expect("slot lock").is_some()
    }
}

fn live<'a>(slots: &[&'a Slot]) -> Vec<&'a Slot> {
    slots.iter().copied().filter(|s| !s.failed()).collect()
}

fn fail_all(slots: &[&Slot], e: CopyError) {
    let e = Arc::new(e);
    for s in slots {
        s.fail(e.clone());
    }
}

impl<S: Source, D: Destination> Engine<S, D> {
    pub fn new(source: S, dests: Vec<D>, opts: Options, reporter: Arc<dyn Reporter>) -> Self {
        let n = dests.len();
        Engine {
            source,
            transfers: Semaphore::new(opts.jobs.max(1)),
            holders: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
            manifest_claims: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
            fallback_claims: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
            manifests: Mutex::new(HashMap::new()),
            counters: (0..n).map(|_| Counters::default()).collect(),
            dests,
            opts,
            reporter,
        }
    }

    /// Copy every image to each of its targets. The images of a wave run concurrently
    /// (transfers bounded by `jobs`); a wave starts when the one before has ended, so
    /// that subjects are at the targets before their referrers.
    pub async fn run(&self, waves: Vec<Vec<ImageJob>>) -> Summary {
        let started = Instant::now();
        let width = self.opts.jobs.max(1) * 2;
        let mut targets: Vec<DestinationSummary> = self
            .dests
            .iter()
            .map(|d| DestinationSummary {
                target: d.name().to_owned(),
                ..DestinationSummary::default()
            })
            .collect();
        let mut images = Vec::new();
        for wave in &waves {
            let reports: Vec<Reports> = futures::stream::iter(wave)
                .map(|job| async move {
                    let seen = Mutex::new(HashSet::new());
                    self.copy_job(job, 0, &seen).await
                })
                .buffered(width)
                .collect()
                .await;
            for (dest, r) in reports.into_iter().flatten() {
                let s = &mut targets[dest];
                *match r.status {
                    CopyStatus::Copied => &mut s.copied,
                    CopyStatus::Unchanged => &mut s.unchanged,
                    CopyStatus::Skipped => &mut s.skipped,
                    CopyStatus::Failed => &mut s.failed,
                } += 1;
                images.push(r);
            }
        }
        for (s, c) in targets.iter_mut().zip(&self.counters) {
            s.blobs_uploaded = c.blobs_uploaded.load(Ordering::Relaxed);
            s.blobs_mounted = c.blobs_mounted.load(Ordering::Relaxed);
            s.blobs_present = c.blobs_present.load(Ordering::Relaxed);
            s.manifests_put = c.manifests_put.load(Ordering::Relaxed);
            s.bytes_sent = c.bytes_sent.load(Ordering::Relaxed);
            s.bytes_spooled = c.bytes_spooled.load(Ordering::Relaxed);
        }
        Summary {
            targets,
            images,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// Copy `job`; then, with `Options::referrers`, what refers to it, by digest, to the
    /// targets that now hold it. `seen` holds the referrers this job reached already.
    fn copy_job<'a>(
        &'a self,
        job: &'a ImageJob,
        depth: usize,
        seen: &'a Mutex<HashSet<Digest>>,
    ) -> BoxFuture<'a, Reports> {
        async move {
            let (reports, top) = self.copy_image(job).await;
            let mut out: Reports = job.targets.iter().map(|t| t.dest).zip(reports).collect();
            let Some(top) = top.filter(|_| self.opts.referrers && depth < MAX_REFERRER_DEPTH)
            else {
                return out;
            };
            // A skipped tag left another image there, and a failed one may lack the
            // subject: referrers go where the image is.
            let targets: Vec<JobTarget> = job
                .targets
                .iter()
                .zip(&out)
                .filter(|(_, (_, r))| {
                    matches!(r.status, CopyStatus::Copied | CopyStatus::Unchanged)
                })
                .map(|(t, _)| JobTarget {
                    tag: None,
                    ..t.clone()
                })
                .collect();
            if targets.is_empty() {
                return out;
            }
            let mut subjects = vec![top.digest.clone()];
            if let Kind::Index(children) = &top.manifest.kind {
                subjects.extend(children.iter().map(|c| c.digest.clone()));
            }
            let listed =
                join_all(subjects.iter().map(|s| self.source.referrers(&job.repo, s))).await;
            let name = source_name(job);
            let mut jobs = Vec::new();
            for (subject, listed) in subjects.iter().zip(listed) {
                let listed = match listed {
                    Ok(listed) => listed,
                    Err(e) => {
                        // Referrers asked for are never dropped silently.
                        let label = format!("{name}@{subject} (its referrers)");
                        out.extend(targets.iter().map(|t| {
                            let r =
                                self.report(&label, t, None, CopyStatus::Failed, None, Some(&e));
                            (t.dest, r)
                        }));
                        continue;
                    }
                };
                for r in listed {
                    if seen.lock().expect("seen lock").insert(r.digest.clone()) {
                        jobs.push(ImageJob {
                            label: format!("{name}@{}", r.digest),
                            repo: job.repo.clone(),
                            reference: SourceRef::Digest(r.digest),
                            targets: targets.clone(),
                        });
                    }
                }
            }
            for reports in join_all(jobs.iter().map(|j| self.copy_job(j, depth + 1, seen))).await {
                out.extend(reports);
            }
            out
        }
        .boxed()
    }

    /// How `t` fared for image `label` (`digest` at the source), told to the reporter.
    fn report(
        &self,
        label: &str,
        t: &JobTarget,
        digest: Option<&Digest>,
        status: CopyStatus,
        existing: Option<Digest>,
        error: Option<&CopyError>,
    ) -> TargetReport {
        let d = &self.dests[t.dest];
        let at = match (&t.tag, digest) {
            (Some(tag), _) => format!("{}/{}:{tag}", d.name(), t.repo),
            (None, Some(digest)) => format!("{}/{}@{digest}", d.name(), t.repo),
            (None, None) => format!("{}/{}", d.name(), t.repo),
        };
        let r = TargetReport {
            source: label.to_owned(),
            target: at,
            digest: digest.map(Digest::to_string),
            status,
            existing: existing.as_ref().map(Digest::to_string),
            error: error.map(|e| error_chain(e)).unwrap_or_default(),
            remedy: error.and_then(CopyError::remedy),
        };
        self.reporter.copied(&r);
        r
    }

    /// One image to each of its targets: a report per target, in target order, and the
    /// image's manifest when it could be read.
    async fn copy_image(&self, job: &ImageJob) -> (Vec<TargetReport>, Option<Arc<Verified>>) {
        let label = &job.label;
        let report = |t: &JobTarget,
                      digest: Option<&Digest>,
                      status: CopyStatus,
                      existing: Option<Digest>,
                      error: Option<&CopyError>| {
            self.report(label, t, digest, status, existing, error)
        };
        let top = match &job.reference {
            SourceRef::Tag(tag) => self.source.resolve(&job.repo, tag).await.map(Arc::new),
            SourceRef::Digest(d) => self.source_manifest(&job.repo, d, None).await,
        };
        let top = match top {
            Ok(v) => v,
            Err(e) => {
                let reports = job
                    .targets
                    .iter()
                    .map(|t| report(t, None, CopyStatus::Failed, None, Some(&e)))
                    .collect();
                return (reports, None);
            }
        };
        // What each target holds under the name decides whether to copy there at all:
        // an unchanged target costs this one request.
        let found = join_all(job.targets.iter().map(|t| async {
            let d = &self.dests[t.dest];
            match &t.tag {
                Some(tag) => d.tag(&t.repo, tag).await,
                None => Ok(d
                    .has_manifest(&t.repo, &top.digest)
                    .await?
                    .then(|| top.digest.clone())),
            }
        }))
        .await;
        let mut reports: Vec<Option<TargetReport>> = Vec::new();
        let mut slots = Vec::new();
        for (i, (t, found)) in job.targets.iter().zip(found).enumerate() {
            let decided = match found {
                Ok(Some(d)) if d == top.digest => Some(report(
                    t,
                    Some(&top.digest),
                    CopyStatus::Unchanged,
                    None,
                    None,
                )),
                Ok(Some(d)) if self.opts.overwrite == Overwrite::Skip => Some(report(
                    t,
                    Some(&top.digest),
                    CopyStatus::Skipped,
                    Some(d),
                    None,
                )),
                Ok(Some(d)) if self.opts.overwrite == Overwrite::Fail => {
                    let e = CopyError::TagExists {
                        target: format!(
                            "{}/{}:{}",
                            self.dests[t.dest].name(),
                            t.repo,
                            t.tag.as_deref().unwrap_or_default()
                        ),
                        existing: d.clone(),
                        digest: top.digest.clone(),
                    };
                    Some(report(
                        t,
                        Some(&top.digest),
                        CopyStatus::Failed,
                        Some(d),
                        Some(&e),
                    ))
                }
                Ok(_) => {
                    slots.push(Slot {
                        target: i,
                        dest: t.dest,
                        repo: t.repo.clone(),
                        error: Mutex::new(None),
                    });
                    None
                }
                Err(e) => Some(report(
                    t,
                    Some(&top.digest),
                    CopyStatus::Failed,
                    None,
                    Some(&e),
                )),
            };
            reports.push(decided);
        }
        if !slots.is_empty() {
            let refs: Vec<&Slot> = slots.iter().collect();
            let claims = self.claim_manifest(&top.digest, &refs).await;
            // Another tag of this run may have put the same manifest there already.
            let need: Vec<&Slot> = claims
                .iter()
                .filter(|(_, put)| !**put)
                .map(|(s, _)| *s)
                .collect();
            self.copy_tree(&job.repo, &top, &need, 0).await;
            let top = &top;
            join_all(claims.into_iter().map(|(slot, mut put)| async move {
                if slot.failed() {
                    return;
                }
                let t = &job.targets[slot.target];
                let reference = t.tag.clone().unwrap_or_else(|| top.digest.to_string());
                let Some(indexed) = self.put_manifest(slot, &reference, top).await else {
                    return;
                };
                *put = true;
                // Only a referrer sent by digest is listed by us (the module's notes).
                if let (None, false, Some(subject)) = (&t.tag, indexed, &top.manifest.subject) {
                    self.update_fallback(slot, &subject.digest, top).await;
                }
            }))
            .await;
            for slot in &slots {
                let t = &job.targets[slot.target];
                let error = slot.error.lock().expect("slot lock").take();
                reports[slot.target] = Some(match error {
                    None => report(t, Some(&top.digest), CopyStatus::Copied, None, None),
                    Some(e) => report(
                        t,
                        Some(&top.digest),
                        CopyStatus::Failed,
                        None,
                        Some(e.as_ref()),
                    ),
                });
            }
        }
        let reports = reports
            .into_iter()
            .map(|r| r.expect("every target decided"))
            .collect();
        (reports, Some(top))
    }

    /// Put `manifest` under `reference` at the slot; if it went, whether the destination
    /// listed it under its subject by itself.
    async fn put_manifest(
        &self,
        slot: &Slot,
        reference: &str,
        manifest: &Verified,
    ) -> Option<bool> {
        match self.dests[slot.dest]
            .put_manifest(&slot.repo, reference, manifest)
            .await
        {
            Ok(indexed) => {
                bump(&self.counters[slot.dest].manifests_put, 1);
                Some(indexed)
            }
            Err(e) => {
                slot.fail(Arc::new(e));
                None
            }
        }
    }

    /// Add `referrer` to its subject's fallback tag at the slot. One update of a tag at a
    /// time: two referrers of one subject read and rewrite the same index, and the
    /// second must see the first's.
    async fn update_fallback(&self, slot: &Slot, subject: &Digest, referrer: &Verified) {
        let lock = self.fallback_claims[slot.dest]
            .lock()
            .expect("fallback claim lock")
            .entry((slot.repo.clone(), subject.clone()))
            .or_default()
            .clone();
        let _held = lock.lock().await;
        if let Err(e) = self.put_fallback(slot, subject, referrer).await {
            slot.fail(Arc::new(e));
        }
    }

    /// Read the fallback index at the slot, and put it back with `referrer` added (the
    /// descriptors it had kept as they were), unless it lists it already.
    async fn put_fallback(
        &self,
        slot: &Slot,
        subject: &Digest,
        referrer: &Verified,
    ) -> Result<(), CopyError> {
        #[derive(Deserialize)]
        struct Listed {
            #[serde(default)]
            manifests: Vec<Box<RawValue>>,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Fallback {
            schema_version: u32,
            media_type: &'static str,
            manifests: Vec<Box<RawValue>>,
        }
        let dest = &self.dests[slot.dest];
        let tag = fallback_tag(subject);
        let what = || format!("{}/{}:{tag}", dest.name(), slot.repo);
        let mut manifests = Vec::new();
        if let Some(old) = dest.get_manifest(&slot.repo, &tag).await? {
            match &old.manifest.kind {
                Kind::Index(listed) if old.media_type() == OCI_INDEX => {
                    if listed.iter().any(|d| d.digest == referrer.digest) {
                        return Ok(());
                    }
                }
                _ => {
                    return Err(CopyError::NotReferrersIndex {
                        what: what(),
                        media_type: old.media_type().to_owned(),
                    });
                }
            }
            manifests = serde_json::from_slice::<Listed>(&old.bytes)
                .map_err(|e| CopyError::Manifest {
                    what: what(),
                    source: e.into(),
                })?
                .manifests;
        }
        let ours = referrer
            .manifest
            .referrer_descriptor(&referrer.digest, referrer.size());
        manifests.push(serde_json::value::to_raw_value(&ours).expect("a descriptor serialises"));
        let bytes = serde_json::to_vec(&Fallback {
            schema_version: 2,
            media_type: OCI_INDEX,
            manifests,
        })
        .expect("an index serialises");
        let index =
            Verified::new(Bytes::from(bytes), None).map_err(|source| CopyError::Manifest {
                what: what(),
                source,
            })?;
        dest.put_manifest(&slot.repo, &tag, &index).await?;
        bump(&self.counters[slot.dest].manifests_put, 1);
        Ok(())
    }

    /// A source manifest by digest, read and verified once per run.
    async fn source_manifest(
        &self,
        repo: &str,
        digest: &Digest,
        media_type: Option<&str>,
    ) -> Result<Arc<Verified>, CopyError> {
        let cell = self
            .manifests
            .lock()
            .expect("manifest cache lock")
            .entry(digest.clone())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            self.source
                .manifest(repo, digest, media_type)
                .await
                .map(Arc::new)
        })
        .await
        .cloned()
    }

    /// Everything `manifest` reaches, into every slot: blobs, child manifests (by
    /// digest, after their own content). The manifest itself is the caller's to put.
    fn copy_tree<'a>(
        &'a self,
        repo: &'a str,
        manifest: &'a Verified,
        slots: &'a [&'a Slot],
        depth: usize,
    ) -> BoxFuture<'a, ()> {
        async move {
            match &manifest.manifest.kind {
                Kind::Index(children) => {
                    if depth >= MAX_INDEX_DEPTH {
                        return fail_all(
                            slots,
                            CopyError::IndexTooDeep {
                                digest: manifest.digest.clone(),
                            },
                        );
                    }
                    join_all(
                        children
                            .iter()
                            .map(|c| self.copy_child(repo, c, slots, depth)),
                    )
                    .await;
                }
                Kind::Image { config, layers } => {
                    let blobs = std::iter::once(config.as_ref())
                        .chain(layers)
                        .filter(|d| self.opts.include_foreign || !d.is_foreign());
                    join_all(blobs.map(|b| self.copy_blob(repo, b, slots))).await;
                }
            }
        }
        .boxed()
    }

    async fn copy_child(&self, repo: &str, child: &Descriptor, slots: &[&Slot], depth: usize) {
        let slots = live(slots);
        if slots.is_empty() {
            return;
        }
        let verified = match self
            .source_manifest(repo, &child.digest, Some(&child.media_type))
            .await
        {
            Ok(v) if v.size() != child.size => Err(CopyError::ManifestSize {
                digest: child.digest.clone(),
                expected: child.size,
                actual: v.size(),
            }),
            other => other,
        };
        let verified = match verified {
            Ok(v) => v,
            Err(e) => return fail_all(&slots, e),
        };
        let claims = self.claim_manifest(&child.digest, &slots).await;
        // Targets that have the child have all it reaches (registries check on PUT).
        let has = join_all(claims.iter().map(|(s, put)| async move {
            if **put {
                return Ok(true);
            }
            self.dests[s.dest]
                .has_manifest(&s.repo, &child.digest)
                .await
        }))
        .await;
        let mut need = Vec::new();
        for ((s, mut put), has) in claims.into_iter().zip(has) {
            match has {
                Ok(true) => *put = true,
                Ok(false) => need.push((s, put)),
                Err(e) => s.fail(Arc::new(e)),
            }
        }
        if need.is_empty() {
            return;
        }
        let slots: Vec<&Slot> = need.iter().map(|(s, _)| *s).collect();
        self.copy_tree(repo, &verified, &slots, depth + 1).await;
        let digest = child.digest.to_string();
        join_all(need.into_iter().map(|(s, mut put)| {
            let (digest, verified) = (&digest, &verified);
            async move {
                if !s.failed() {
                    *put = self.put_manifest(s, digest, verified).await.is_some();
                }
            }
        }))
        .await;
    }

    /// Each slot's claim on manifest `digest` in its repository, taken in destination
    /// order; the flag says whether this run has put it there. Held while the manifest's
    /// tree is copied and the manifest put: distribution rewrites a manifest's link
    /// files in place, and a PUT or HEAD of the same manifest meanwhile can read one
    /// half-written (DIGEST_INVALID). Two tags of one image were enough to hit it.
    async fn claim_manifest<'s>(
        &self,
        digest: &Digest,
        slots: &[&'s Slot],
    ) -> Vec<(&'s Slot, tokio::sync::OwnedMutexGuard<bool>)> {
        let mut slots = slots.to_vec();
        slots.sort_by_key(|s| s.dest);
        let mut claims = Vec::with_capacity(slots.len());
        for s in slots {
            let lock = self.manifest_claims[s.dest]
                .lock()
                .expect("claim lock")
                .entry((s.repo.clone(), digest.clone()))
                .or_default()
                .clone();
            claims.push((s, lock.lock_owned().await));
        }
        claims
    }

    /// `bytes` more of a blob reached destination `dest`.
    fn sent(&self, dest: usize, bytes: u64) {
        bump(&self.counters[dest].bytes_sent, bytes);
        self.reporter.bytes_sent(self.dests[dest].name(), bytes);
    }

    fn holder(&self, dest: usize, digest: &Digest) -> Holder {
        self.holders[dest]
            .lock()
            .expect("holder lock")
            .entry(digest.clone())
            .or_default()
            .clone()
    }

    /// One blob into every slot that lacks it: present (nothing), mounted, or sent, the
    /// bytes read from the source once for all slots that need them.
    async fn copy_blob(&self, repo: &str, desc: &Descriptor, slots: &[&Slot]) {
        let mut slots = live(slots);
        // Claims taken in destination order, so that two images never wait on each
        // other's.
        slots.sort_by_key(|s| s.dest);
        let mut writers = Vec::new();
        let mut guards = Vec::new();
        for slot in slots {
            let dest = &self.dests[slot.dest];
            let counters = &self.counters[slot.dest];
            let mut held = self.holder(slot.dest, &desc.digest).lock_owned().await;
            if held.as_deref() == Some(slot.repo.as_str()) {
                bump(&counters.blobs_present, 1);
                continue;
            }
            match dest.has_blob(&slot.repo, &desc.digest).await {
                Ok(true) => {
                    bump(&counters.blobs_present, 1);
                    held.get_or_insert_with(|| slot.repo.clone());
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    slot.fail(Arc::new(e));
                    continue;
                }
            }
            // A repository of this destination known to hold it: one this run put it in,
            // else the source repository itself when source and destination are one
            // registry (a copy between its repositories sends no blob bytes).
            let same_registry = self.source.registry().is_some()
                && self.source.registry() == dest.registry()
                && slot.repo != repo;
            let from = held.as_deref().or(same_registry.then_some(repo));
            match dest.start_blob(&slot.repo, desc, from).await {
                Ok(Start::Mounted) => bump(&counters.blobs_mounted, 1),
                Ok(Start::Write(w)) => {
                    writers.push((slot, w));
                    guards.push(held);
                }
                Err(e) => slot.fail(Arc::new(e)),
            }
        }
        if writers.is_empty() {
            return;
        }
        let _permit = self.transfers.acquire().await.expect("never closed");
        self.reporter.blob_started(&desc.digest, desc.size, 0);
        let sent = self.transfer(repo, desc, writers).await;
        self.reporter.blob_finished(&desc.digest);
        for (slot, mut held) in sent.into_iter().zip(guards) {
            if let Some(slot) = slot {
                held.get_or_insert_with(|| slot.repo.clone());
            }
        }
    }

    /// Read the blob from the source once and send it to every writer; returns, in
    /// writer order, the slots that got all of it. Each writer takes the chunks at its
    /// own pace: up to [`QUEUED_CHUNKS`] wait for it in memory, and while it is further
    /// behind than that (a slow target) the rest wait for it in a spool file, so the
    /// others go on at their speed. The source is read at the pace of the fastest.
    async fn transfer<'s>(
        &self,
        repo: &str,
        desc: &Descriptor,
        writers: Vec<(&'s Slot, D::Writer)>,
    ) -> Vec<Option<&'s Slot>> {
        let mut queues = Vec::with_capacity(writers.len());
        let mut receivers = Vec::with_capacity(writers.len());
        for (slot, _) in &writers {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Piece>();
            let budget = Arc::new(Semaphore::new(QUEUED_CHUNKS));
            queues.push((slot.dest, tx, budget.clone()));
            receivers.push(rx);
        }
        // Owns the queues: the writers' queues close when it ends, however it ends.
        let read = async move {
            let mut reader = SourceReader::new(&self.source, repo, desc);
            let mut spool: Option<Spool> = None;
            loop {
                // Read on when the fastest writer can take more: a chunk it would only
                // have to spool for everyone is not worth reading yet.
                let ready: Vec<_> = queues
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, tx, _))| !tx.is_closed())
                    .map(|(i, (_, _, budget))| {
                        let budget = budget.clone();
                        Box::pin(async move { (i, budget.acquire_owned().await) })
                    })
                    .collect();
                if ready.is_empty() {
                    // Every writer failed (each said why): nobody wants the rest.
                    return Ok(());
                }
                let ((first, permit), _, _) = futures::future::select_all(ready).await;
                let mut permit = Some(permit.expect("never closed"));
                let chunk = match reader.next_chunk().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(e) => return Err(e),
                };
                self.reporter
                    .blob_progress(&desc.digest, chunk.len() as u64);
                if reader.done() {
                    reader.verify()?;
                    for (_, tx, _) in &queues {
                        let _ = tx.send(Piece::Last(chunk.clone()));
                    }
                    return Ok(());
                }
                let mut spooled = None;
                for (i, (dest, tx, budget)) in queues.iter().enumerate() {
                    let permit = match i == first {
                        true => permit.take(),
                        false => budget.clone().try_acquire_owned().ok(),
                    };
                    let piece = match permit {
                        Some(permit) => Piece::Memory(chunk.clone(), permit),
                        None => {
                            // Written once however many writers are behind.
                            let at = match spooled {
                                Some(at) => at,
                                None => {
                                    let s = match &mut spool {
                                        Some(s) => s,
                                        None => spool.insert(Spool::new().await?),
                                    };
                                    let at = s.append(chunk.clone()).await?;
                                    spooled = Some(at);
                                    at
                                }
                            };
                            bump(&self.counters[*dest].bytes_spooled, chunk.len() as u64);
                            Piece::Spooled {
                                spool: spool.as_ref().expect("made above").file.clone(),
                                at,
                                len: chunk.len(),
                            }
                        }
                    };
                    // A writer that failed has gone; its error is its slot's.
                    let _ = tx.send(piece);
                }
            }
            // A blob of no bytes: its one piece is empty.
            reader.verify()?;
            for (_, tx, _) in &queues {
                let _ = tx.send(Piece::Last(Bytes::new()));
            }
            Ok(())
        };
        let write = join_all(
            writers
                .into_iter()
                .zip(receivers)
                .map(|((slot, w), rx)| self.write_pieces(slot, w, rx, &desc.digest)),
        );
        let (read, written) = futures::join!(read, write);
        match read {
            Ok(()) => written,
            Err(e) => {
                let e = Arc::new(e);
                for slot in written.iter().flatten() {
                    slot.fail(e.clone());
                }
                written.into_iter().map(|_| None).collect()
            }
        }
    }

    /// One writer's side of [`Self::transfer`]: its pieces in order, then the last one
    /// with the digest. The slot, when all of it went; a queue closed before the last
    /// piece means the read failed (the caller says why).
    async fn write_pieces<'s>(
        &self,
        slot: &'s Slot,
        mut writer: D::Writer,
        mut pieces: tokio::sync::mpsc::UnboundedReceiver<Piece>,
        digest: &Digest,
    ) -> Option<&'s Slot> {
        while let Some(piece) = pieces.recv().await {
            let result = match piece {
                Piece::Memory(chunk, _permit) => {
                    let n = chunk.len() as u64;
                    writer.write(chunk).await.map(|()| n)
                }
                Piece::Spooled { spool, at, len } => match Spool::read(spool, at, len).await {
                    Ok(chunk) => writer.write(chunk).await.map(|()| len as u64),
                    Err(e) => Err(e),
                },
                Piece::Last(chunk) => {
                    let n = chunk.len() as u64;
                    return match writer.finish(digest, chunk).await {
                        Ok(()) => {
                            self.sent(slot.dest, n);
                            bump(&self.counters[slot.dest].blobs_uploaded, 1);
                            Some(slot)
                        }
                        Err(e) => {
                            slot.fail(Arc::new(e));
                            None
                        }
                    };
                }
            };
            match result {
                Ok(n) => self.sent(slot.dest, n),
                Err(e) => {
                    slot.fail(Arc::new(e));
                    return None;
                }
            }
        }
        None
    }
}

/// Chunks one writer may have in memory, queued or being sent (see `transfer`).
const QUEUED_CHUNKS: usize = 2;

/// A chunk on its way to one writer.
enum Piece {
    /// In memory; the permit is the writer's budget, given back when it is sent.
    Memory(Bytes, tokio::sync::OwnedSemaphorePermit),
    /// Waiting in the spool file, at `at`.
    Spooled {
        spool: Arc<std::fs::File>,
        at: u64,
        len: usize,
    },
    /// The end of the blob, read and verified.
    Last(Bytes),
}

/// Chunks a slow writer has not taken yet, in an unnamed temporary file (gone when the
/// last handle closes, a kill included).
struct Spool {
    file: Arc<std::fs::File>,
    len: u64,
}

impl Spool {
    async fn new() -> Result<Spool, CopyError> {
        let file = tokio::task::spawn_blocking(tempfile::tempfile)
            .await
            .expect("spool task panicked")
            .map_err(|e| StoreError::io("create a spool file in", &std::env::temp_dir())(e))?;
        Ok(Spool {
            file: Arc::new(file),
            len: 0,
        })
    }

    /// Append `chunk`; where it starts.
    async fn append(&mut self, chunk: Bytes) -> Result<u64, CopyError> {
        use std::os::unix::fs::FileExt;
        let (file, at, n) = (self.file.clone(), self.len, chunk.len() as u64);
        tokio::task::spawn_blocking(move || file.write_all_at(&chunk, at))
            .await
            .expect("spool task panicked")
            .map_err(|e| StoreError::io("write a spool file in", &std::env::temp_dir())(e))?;
        self.len += n;
        Ok(at)
    }

    async fn read(file: Arc<std::fs::File>, at: u64, len: usize) -> Result<Bytes, CopyError> {
        use std::os::unix::fs::FileExt;
        let bytes = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, at).map(|()| buf)
        })
        .await
        .expect("spool task panicked")
        .map_err(|e| StoreError::io("read a spool file in", &std::env::temp_dir())(e))?;
        Ok(Bytes::from(bytes))
    }
}

/// The source repository as a job's label names it (`reg.example/lab/debian` of
/// `reg.example/lab/debian:12`), for naming the referrers it leads to.
fn source_name(job: &ImageJob) -> &str {
    let suffix = match &job.reference {
        SourceRef::Tag(t) => format!(":{t}"),
        SourceRef::Digest(d) => format!("@{d}"),
    };
    job.label.strip_suffix(&suffix).unwrap_or(&job.label)
}

/// A source blob read in [`CHUNK`]s, hashed on the way, resumed where it broke off.
struct SourceReader<'a, S> {
    source: &'a S,
    repo: &'a str,
    desc: &'a Descriptor,
    stream: Option<BoxStream<'static, Result<Bytes, CopyError>>>,
    /// Bytes of the blob read so far.
    pos: u64,
    /// Bytes the open stream will send that were read already (a restart from 0).
    skip: u64,
    resumes: u32,
    hasher: Sha256,
}

impl<'a, S: Source> SourceReader<'a, S> {
    fn new(source: &'a S, repo: &'a str, desc: &'a Descriptor) -> Self {
        SourceReader {
            source,
            repo,
            desc,
            stream: None,
            pos: 0,
            skip: 0,
            resumes: 0,
            hasher: Sha256::new(),
        }
    }

    fn done(&self) -> bool {
        self.pos == self.desc.size
    }

    /// The next [`CHUNK`] bytes (fewer at the end); `None` past the end.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, CopyError> {
        let size = self.desc.size;
        let want = (size - self.pos).min(CHUNK as u64) as usize;
        let mut buf = BytesMut::with_capacity(want);
        while buf.len() < want {
            let stream = match &mut self.stream {
                Some(s) => s,
                None => {
                    let read = self.source.blob(self.repo, self.desc, self.pos).await?;
                    self.skip = self.pos.saturating_sub(read.offset);
                    self.stream.insert(read.stream)
                }
            };
            let broke = match stream.next().await {
                Some(Ok(mut bytes)) => {
                    let skip = self.skip.min(bytes.len() as u64);
                    self.skip -= skip;
                    let bytes = bytes.split_off(skip as usize);
                    let take = bytes.len().min(want - buf.len());
                    self.hasher.update(&bytes[..take]);
                    buf.extend_from_slice(&bytes[..take]);
                    self.pos += take as u64;
                    if take < bytes.len() {
                        if self.pos == size {
                            return Err(CopyError::BlobTooLong {
                                digest: self.desc.digest.clone(),
                                size,
                            });
                        }
                        // The rest belongs to the next chunk: keep it for then.
                        let rest = bytes.slice(take..);
                        let tail = self.stream.take().expect("open");
                        self.stream = Some(
                            futures::stream::once(async { Ok(rest) })
                                .chain(tail)
                                .boxed(),
                        );
                    }
                    continue;
                }
                Some(Err(e)) => Some(e),
                None => None,
            };
            self.stream = None;
            if self.resumes == SOURCE_RESUMES {
                return Err(CopyError::BlobIncomplete {
                    digest: self.desc.digest.clone(),
                    got: self.pos,
                    size,
                    source: broke.map(Box::new),
                });
            }
            self.resumes += 1;
        }
        Ok((!buf.is_empty()).then(|| buf.freeze()))
    }

    /// After the last chunk: the bytes read hash to the descriptor's digest.
    fn verify(&mut self) -> Result<(), CopyError> {
        let actual = Digest::sha256_finish(std::mem::take(&mut self.hasher));
        if actual == self.desc.digest {
            Ok(())
        } else {
            Err(CopyError::BlobDigest {
                digest: self.desc.digest.clone(),
                actual,
            })
        }
    }
}
