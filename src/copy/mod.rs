//! The copy engine: one walk of a manifest tree from a source endpoint into any number
//! of destination endpoints (registries and the store today; bundles and buckets are the
//! same two traits). `fetch` is registry → store, `push` store → registries, `copy`
//! registry → registries.
//!
//! Order at every destination is the spec's: blobs before the manifest naming them,
//! children before their index, referrers before the name of what they refer to, the
//! name last. The targets are asked first what they hold: where every one holds the tag,
//! one HEAD at the source decides, and nothing else is read. Each source blob is read
//! once per image however many destinations lack it, and streamed to all of them chunk
//! by chunk. Per destination one claimant per blob: a second image wanting the same blob
//! waits, then finds it present (same repository) or mounts it from the repository that
//! got it. One destination failing never stops the others; every outcome is reported per
//! image and destination.
//!
//! Referrers (signatures, SBOMs, attestations: manifests with a `subject`) listed by the
//! source's referrers API are copied by digest; a source without the API has its
//! fallback tag `<alg>-<hex of subject>` (an OCI index of them) copied as a tag, and
//! cosign's `.sig`/`.att`/`.sbom` tags are copied as tags. A destination without the
//! referrers API (no `OCI-Subject` in the answer to the PUT) gets the fallback tag kept
//! for it whenever a referrer is put there by digest; a fallback tag copied as a tag is
//! merged with the destination's own in the same way (sent as it is where the
//! destination has none, or nothing of its own in it).

pub mod any;
pub mod bundle;
pub mod dirtree;
mod fallback;
pub mod registry;
pub mod signed;
pub mod store;
mod transfer;

pub use fallback::{fallback_subject, fallback_tag, referrer_tag};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::future::{BoxFuture, join_all};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use tokio::sync::{OnceCell, Semaphore};

use crate::manifest::{Descriptor, KEPT_PLATFORMS, Kind, ManifestError, UPSTREAM_DIGEST, Verified};
use crate::reference::Digest;
use crate::registry::RegistryError;
use crate::report::{CopyStatus, Reporter, TargetReport, error_chain};
use crate::select::{PlatformCut, PlatformSpec, cut_index};
use crate::signature::{Policy, Refused};
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
    #[error(
        "{what} is missing from the skopeo dir: images of {name}: copy the image again with skopeo; nothing of it was imported"
    )]
    NotInTree { what: String, name: String },
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
    #[error(
        "index nesting deeper than {MAX_INDEX_DEPTH} levels (or a cycle) at {digest}; refusing"
    )]
    IndexTooDeep { digest: Digest },
    #[error(
        "digest mismatch: blob {digest} from the source hashes to {actual}; nothing was committed at the targets"
    )]
    BlobDigest { digest: Digest, actual: Digest },
    #[error("size mismatch for blob {digest}: the source sent more than its {size} bytes")]
    BlobTooLong { digest: Digest, size: u64 },
    #[error("blob {digest} broke off at byte {got} of {size} after {SOURCE_RESUMES} resumes")]
    BlobIncomplete {
        digest: Digest,
        got: u64,
        size: u64,
        #[source]
        source: Option<Box<CopyError>>,
    },
    #[error("{what} is a {media_type}, not an OCI index of referrers")]
    NotReferrersIndex { what: String, media_type: String },
    #[error("{reference} has none of the platforms asked for ({wanted}); it offers {available}")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("a referrer it was asked with failed, so it was not named: {referrer}: {cause}")]
    ReferrerFailed { referrer: String, cause: String },
    #[error("publishing into {name}: {cause}")]
    Publish { name: String, cause: String },
    #[error("{target} points at {existing}, not {digest}; left as it is (--overwrite=fail)")]
    TagExists {
        target: String,
        existing: Digest,
        digest: Digest,
    },
    #[error("{digest} is refused by the signature policy; nothing of it was published")]
    Unsigned {
        digest: Digest,
        #[source]
        refused: Refused,
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

/// `bytes` read from a file as manifest `digest`: parsed, and checked against that digest
/// (`origin` says where the digest came from).
fn verified_as(
    bytes: Vec<u8>,
    media_type: Option<&str>,
    what: String,
    digest: &Digest,
    origin: &'static str,
) -> Result<Verified, CopyError> {
    let v =
        Verified::new(Bytes::from(bytes), media_type).map_err(|source| CopyError::Manifest {
            what: what.clone(),
            source,
        })?;
    if v.digest != *digest {
        return Err(CopyError::ManifestDigest {
            what,
            expected: digest.clone(),
            actual: v.digest,
            origin,
        });
    }
    Ok(v)
}

/// Where images come from. Every manifest it returns is verified (its digest computed
/// from its bytes, checked against the digest asked for) and parsed, once.
pub trait Source: Send + Sync {
    /// The registry host it reads, when it is a registry: a destination on that host
    /// mounts blobs from the source repository instead of taking their bytes.
    fn registry(&self) -> Option<&str>;
    /// The digest `tag` of `repo` points at, where the source can tell without sending
    /// the manifest (a HEAD); `None` where it cannot. An unchanged target costs this.
    fn digest(
        &self,
        repo: &str,
        tag: &str,
    ) -> impl Future<Output = Result<Option<Digest>, CopyError>> + Send;
    /// The manifest `tag` of `repo` points at.
    fn resolve(
        &self,
        repo: &str,
        tag: &str,
    ) -> impl Future<Output = Result<Verified, CopyError>> + Send;
    /// Manifest `digest` of `repo`; `media_type` is what its descriptor says (for
    /// documents without the field), `why` where the digest came from.
    fn manifest(
        &self,
        repo: &str,
        digest: &Digest,
        media_type: Option<&str>,
        why: &'static str,
    ) -> impl Future<Output = Result<Verified, CopyError>> + Send;
    /// Blob `desc` of `repo`, from byte `offset`.
    fn blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        offset: u64,
    ) -> impl Future<Output = Result<BlobRead, CopyError>> + Send;
    /// What refers to `subject` in `repo`.
    fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
    ) -> impl Future<Output = Result<Referrers, CopyError>> + Send;
}

/// Cosign's tags for what refers to `sha256-<hex>`: signatures, attestations, SBOMs.
pub const COSIGN_SUFFIXES: [&str; 3] = [".sig", ".att", ".sbom"];

/// What refers to one subject at a source.
#[derive(Debug, Default)]
pub struct Referrers {
    /// Manifests the referrers API lists (copied by digest).
    pub listed: Vec<Descriptor>,
    /// Where the source lacks the API: the spec's fallback tag, if it has one (copied as
    /// a tag, merged with the target's own).
    pub fallback: Option<String>,
    /// Cosign's `<alg>-<hex>.sig`, `.att` and `.sbom` (copied as tags).
    pub tags: Vec<String>,
}

/// How a destination took a blob.
pub enum Start<W> {
    /// From another repository of the destination: nothing to send.
    Mounted,
    /// Send the bytes to this writer.
    Write(W),
}

/// Bytes of a blob on their way to writers, in the pieces the source's reads gave them
/// (gathered without copying them into one buffer).
#[derive(Debug, Clone, Default)]
pub struct Chunk(Vec<Bytes>);

impl Chunk {
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn parts(&self) -> &[Bytes] {
        &self.0
    }

    /// In one buffer (copied where it is in several parts).
    pub fn into_bytes(self) -> Bytes {
        if self.0.len() == 1 {
            return self.0.into_iter().next().expect("one part");
        }
        let mut one = bytes::BytesMut::with_capacity(self.len());
        for part in &self.0 {
            one.extend_from_slice(part);
        }
        one.freeze()
    }

    fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.0.push(part);
        }
    }

    /// Without its first `n` bytes.
    fn skip(self, mut n: usize) -> Chunk {
        let mut rest = Chunk::default();
        for mut part in self.0 {
            let cut = n.min(part.len());
            n -= cut;
            rest.push(part.split_off(cut));
        }
        rest
    }
}

impl From<Bytes> for Chunk {
    fn from(bytes: Bytes) -> Chunk {
        let mut chunk = Chunk::default();
        chunk.push(bytes);
        chunk
    }
}

/// A blob being written at a destination. Chunks come in order, each as long as the
/// longest [`BlobWriter::chunk`] of the writers of that blob; `finish` gets the rest (all
/// of a blob no longer than one chunk).
pub trait BlobWriter: Send {
    /// The chunk length it wants (what one request carries to a registry).
    fn chunk(&self) -> usize {
        CHUNK
    }
    /// Bytes it holds already (what an earlier run left): the source is read from there.
    fn offset(&self) -> u64 {
        0
    }
    /// Whether it checks the digest itself before it commits; when every writer of a
    /// blob does, the engine does not hash it too.
    fn verifies(&self) -> bool {
        false
    }
    fn write(&mut self, chunk: Chunk) -> impl Future<Output = Result<(), CopyError>> + Send;
    fn finish(
        self,
        digest: &Digest,
        last: Chunk,
    ) -> impl Future<Output = Result<(), CopyError>> + Send;
}

/// Where images go.
pub trait Destination: Send + Sync {
    type Writer: BlobWriter;
    /// How reports name it (`registry.example:5000`).
    fn name(&self) -> &str;
    /// The registry host it writes, when it is a registry.
    fn registry(&self) -> Option<&str>;
    /// What `tag` of `repo` points at, if it holds all of it.
    fn tag(
        &self,
        repo: &str,
        tag: &str,
    ) -> impl Future<Output = Result<Option<Held>, CopyError>> + Send;
    /// The image of its own (not only a child of another) in `repo` that the source's
    /// `digest` became under `platforms`, if it holds all of it; `None` also where it
    /// cannot tell without the manifest.
    fn image(
        &self,
        repo: &str,
        digest: &Digest,
        platforms: Option<&str>,
    ) -> impl Future<Output = Result<Option<Held>, CopyError>> + Send;
    /// Whether manifest `desc` and all it reaches are in `repo`.
    fn has_manifest(
        &self,
        repo: &str,
        desc: &Descriptor,
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
    /// Whether one manifest may be put under two references at once (distribution
    /// rewrites a manifest's link files in place on each PUT: it may not).
    fn parallel_puts(&self) -> bool {
        false
    }
    /// Store `manifest` as its bytes are, as `put` says; true when the destination lists
    /// it under its subject by itself (the referrers API, the store's lists).
    fn put_manifest(
        &self,
        repo: &str,
        put: Put<'_>,
        manifest: &Verified,
    ) -> impl Future<Output = Result<bool, CopyError>> + Send;
}

/// Notes on an image for destinations that keep them (the store's index.json entry):
/// where it came from, and what a platform cut made of it.
pub type Annotations = BTreeMap<String, String>;

/// How a manifest is put.
#[derive(Debug, Clone, Copy)]
pub enum Put<'a> {
    /// Under a tag.
    Tag(&'a str, &'a Annotations),
    /// By digest, as an image of its own (a digest copied, a referrer).
    Image(&'a Annotations),
    /// By digest, as part of an index.
    Child,
}

impl Put<'_> {
    /// The reference a registry puts it under.
    pub fn reference(&self, digest: &Digest) -> String {
        match self {
            Put::Tag(tag, _) => (*tag).to_owned(),
            Put::Image(_) | Put::Child => digest.to_string(),
        }
    }
}

/// What a destination holds under a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub digest: Digest,
    /// Where the destination recorded a platform cut: the source's digest, and the
    /// platform list (`linux/amd64,linux/arm64`).
    pub cut: Option<(Digest, String)>,
}

impl Held {
    /// Whether this is what the source's `upstream` becomes under `platforms`.
    pub fn is_copy_of(&self, upstream: &Digest, platforms: Option<&str>) -> bool {
        match (platforms, &self.cut) {
            (None, None) => &self.digest == upstream,
            (Some(list), Some((from, kept))) => from == upstream && kept == list,
            _ => false,
        }
    }

    /// The source's digest of it.
    pub fn upstream(&self) -> &Digest {
        self.cut.as_ref().map_or(&self.digest, |(d, _)| d)
    }
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
    /// Images resolved and walked at once (those waiting for their tag to be set do not
    /// count: a store writes many tags at once).
    pub images: usize,
    /// Also copy foreign (non-distributable) layers; by default they are left out, as
    /// registries do not hold them.
    pub include_foreign: bool,
    /// Stop at the first image that fails at any target.
    pub fail_fast: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            jobs: 8,
            images: 32,
            include_foreign: false,
            fail_fast: false,
        }
    }
}

/// A manifest at the source: by tag, or by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRef {
    Tag(String),
    Digest(Digest),
    /// A digest the source's referrers list gave.
    Referrer(Digest),
}

impl SourceRef {
    pub fn digest(&self) -> Option<&Digest> {
        match self {
            SourceRef::Tag(_) => None,
            SourceRef::Digest(d) | SourceRef::Referrer(d) => Some(d),
        }
    }
}

/// Where a digest the engine asks the source for came from, for the error when the
/// bytes disagree.
const ASKED: &str = "the digest asked for";
const ANNOUNCED: &str = "the digest the registry announced";
const IN_PARENT: &str = "the digest in its parent index";
const LISTED: &str = "the digest the registry's referrers list gave";

/// One image and where it goes.
#[derive(Debug, Clone)]
pub struct ImageJob {
    /// How reports name the source image (`lab/debian:12`, `reg.example/lab/debian:12`).
    pub label: String,
    /// Index into the engine's sources.
    pub source: usize,
    /// Source repository.
    pub repo: String,
    pub reference: SourceRef,
    /// Keep only these platforms of an index (its digest then changes); empty keeps all.
    pub platforms: Vec<PlatformSpec>,
    /// Afterwards copy what refers to it (and to its index's children): by digest what
    /// the referrers API lists, by tag the referrer tags; and what refers to those,
    /// [`MAX_REFERRER_DEPTH`] levels.
    pub referrers: bool,
    /// Given to destinations that keep notes on images (see [`Annotations`]).
    pub annotations: Annotations,
    /// The tag is a referrers fallback tag: a target's own is merged with it, not
    /// replaced.
    pub fallback: bool,
    /// Publish it only when its signatures satisfy this policy, checked against the
    /// source's digest (an index's, before a platform cut) before anything is sent; its
    /// referrers are then copied as with `referrers`, its signatures among them.
    pub policy: Option<Arc<Policy>>,
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
    /// What a tag there pointing at another digest gets.
    pub overwrite: Overwrite,
}

/// How one job went: a report per target, and one per target for each referrer it
/// led to, each with the index of its destination.
#[derive(Debug)]
pub struct JobReport {
    /// Its place in its wave.
    pub index: usize,
    pub targets: Vec<(usize, TargetReport)>,
    pub referrers: Vec<(usize, TargetReport)>,
}

impl JobReport {
    /// Every report, the job's own first.
    pub fn all(&self) -> impl Iterator<Item = &(usize, TargetReport)> {
        self.targets.iter().chain(&self.referrers)
    }
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

/// Reports with the index of their destination.
type Reports = Vec<(usize, TargetReport)>;

/// Images that may wait for their tag to be set, per image being walked.
const WAITERS_PER_WALKER: usize = 8;

pub struct Engine<S, D> {
    sources: Vec<S>,
    dests: Vec<D>,
    opts: Options,
    reporter: Arc<dyn Reporter>,
    transfers: Semaphore,
    /// Images being resolved and walked (see `Options::images`).
    walking: Semaphore,
    holders: Vec<Mutex<HashMap<Digest, Holder>>>,
    /// Per destination, (repository, manifest digest) → put there in this run.
    manifest_claims: Vec<Mutex<HashMap<(String, Digest), Claim>>>,
    /// Per destination, (repository, fallback tag) → the claim on it.
    fallback_claims: Vec<Mutex<HashMap<(String, String), FallbackClaim>>>,
    /// Source manifests by digest, read once however many images share them.
    manifests: Mutex<HashMap<Digest, Arc<OnceCell<Arc<Verified>>>>>,
    /// Signature checks by (source, repository, digest, policy), made once however many
    /// tags name the image.
    checks: Mutex<HashMap<CheckKey, Arc<OnceCell<Checked>>>>,
    counters: Vec<Counters>,
}

/// The policy is named by its address: jobs hold their `Arc` for the whole run.
type CheckKey = (usize, String, Digest, usize);
type Checked = Result<(), Arc<CopyError>>;

/// A repository of one of the engine's sources.
struct Origin<'a, S> {
    source: &'a S,
    repo: &'a str,
}

impl<S> Clone for Origin<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S> Copy for Origin<'_, S> {}

/// An image as the targets got it: its top manifest (after a platform cut), and the
/// source's digest of it.
struct Copied {
    top: Arc<Verified>,
    upstream: Digest,
}

/// How copying one image went, before it is named at the targets waiting for it.
struct ImageOutcome {
    /// Per target; `None` for those in `pending`.
    reports: Vec<Option<TargetReport>>,
    copied: Option<Copied>,
    /// Targets that hold the image by digest and wait for its name until its referrers
    /// are there.
    pending: Vec<Slot>,
    annotations: Annotations,
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

/// "linux/amd64,linux/arm64": a platform list as destinations record it.
pub fn platform_list(platforms: &[PlatformSpec]) -> Option<String> {
    let list: Vec<String> = platforms.iter().map(ToString::to_string).collect();
    (!list.is_empty()).then(|| list.join(","))
}

impl<S: Source, D: Destination> Engine<S, D> {
    pub fn new(sources: Vec<S>, dests: Vec<D>, opts: Options, reporter: Arc<dyn Reporter>) -> Self {
        let n = dests.len();
        Engine {
            sources,
            transfers: Semaphore::new(opts.jobs.max(1)),
            walking: Semaphore::new(opts.images.max(1)),
            holders: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
            manifest_claims: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
            fallback_claims: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
            manifests: Mutex::new(HashMap::new()),
            checks: Mutex::new(HashMap::new()),
            counters: (0..n).map(|_| Counters::default()).collect(),
            dests,
            opts,
            reporter,
        }
    }

    pub fn sources(&self) -> &[S] {
        &self.sources
    }

    /// Copy every image to each of its targets; `finished` hears of each job as it ends.
    /// The images of a wave run concurrently (transfers bounded by `jobs`); a wave starts
    /// when the one before has ended, so that subjects are at the targets before their
    /// referrers.
    pub async fn run(
        &self,
        waves: Vec<Vec<ImageJob>>,
        finished: &(dyn Fn(&JobReport) + Sync),
    ) -> Summary {
        let started = Instant::now();
        let width = self.opts.images.max(1) * WAITERS_PER_WALKER;
        let total: usize = waves.iter().map(Vec::len).sum();
        let mut done = 0;
        let mut targets: Vec<DestinationSummary> = self
            .dests
            .iter()
            .map(|d| DestinationSummary {
                target: d.name().to_owned(),
                ..DestinationSummary::default()
            })
            .collect();
        let mut images = Vec::new();
        'waves: for (w, wave) in waves.iter().enumerate() {
            // Made before the stream (lazily: nothing runs until polled) so that no closure
            // over a borrowed job is held across an await: rustc could not prove such a
            // stream Send for a caller that spawns the run (the service).
            let jobs: Vec<_> = wave
                .iter()
                .enumerate()
                .map(|(index, job)| {
                    async move {
                        let seen = Mutex::new(HashSet::new());
                        let (main, referrers) = self.copy_job(job, 0, &seen).await;
                        (index, main, referrers)
                    }
                    .boxed()
                })
                .collect();
            let mut reports = futures::stream::iter(jobs).buffer_unordered(width);
            while let Some((index, main, referrers)) = reports.next().await {
                done += 1;
                let report = JobReport {
                    index,
                    targets: main,
                    referrers,
                };
                finished(&report);
                let mut failed = false;
                for (dest, r) in report.targets.into_iter().chain(report.referrers) {
                    let s = &mut targets[dest];
                    *match r.status {
                        CopyStatus::Copied => &mut s.copied,
                        CopyStatus::Unchanged => &mut s.unchanged,
                        CopyStatus::Skipped => &mut s.skipped,
                        CopyStatus::Failed => &mut s.failed,
                    } += 1;
                    failed |= r.status == CopyStatus::Failed;
                    images.push(((w, index), r));
                }
                if failed && self.opts.fail_fast {
                    // Dropping the stream cancels the images in flight: no tag of theirs
                    // was set after the first failure.
                    self.reporter.warn(&format!(
                        "stopping after the first failure (--fail-fast); {} of {total} images not finished",
                        total - done
                    ));
                    break 'waves;
                }
            }
        }
        images.sort_by_key(|(at, _)| *at);
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
            images: images.into_iter().map(|(_, r)| r).collect(),
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// Copy `job`; then, if it asks, what refers to it to the targets that now hold it.
    /// `seen` holds the referrers this job reached already. The job's reports, and its
    /// referrers'.
    fn copy_job<'a>(
        &'a self,
        job: &'a ImageJob,
        depth: usize,
        seen: &'a Mutex<HashSet<Digest>>,
    ) -> BoxFuture<'a, (Reports, Reports)> {
        async move {
            // Referrers go before the image's name: an image is not tagged without the
            // signatures it was asked with, or those a policy checked.
            let defer = (job.referrers || job.policy.is_some()) && depth < MAX_REFERRER_DEPTH;
            let outcome = self.copy_image(job, defer).await;
            let mut out = Reports::new();
            let Some(copied) = outcome.copied.as_ref().filter(|_| defer) else {
                return (self.settle(job, outcome, &out).await, out);
            };
            // A skipped tag left another image there, and a failed one may lack the
            // subject: referrers go where the image is.
            let targets: Vec<JobTarget> = job
                .targets
                .iter()
                .zip(&outcome.reports)
                .filter(|(_, r)| {
                    r.as_ref().is_none_or(|r| {
                        matches!(r.status, CopyStatus::Copied | CopyStatus::Unchanged)
                    })
                })
                .map(|(t, _)| JobTarget {
                    tag: None,
                    ..t.clone()
                })
                .collect();
            if targets.is_empty() {
                return (self.settle(job, outcome, &out).await, out);
            }
            // The image as the source knows it, and the children it kept.
            let mut subjects = vec![copied.upstream.clone()];
            if let Kind::Index(children) = &copied.top.manifest.kind {
                subjects.extend(children.iter().map(|c| c.digest.clone()));
            }
            let source = &self.sources[job.source];
            let found = join_all(subjects.iter().map(|s| source.referrers(&job.repo, s))).await;
            let name = source_name(job);
            let mut jobs = Vec::new();
            for (subject, found) in subjects.iter().zip(found) {
                let found = match found {
                    Ok(found) => found,
                    Err(e) => {
                        // Referrers asked for are never dropped silently.
                        let label = format!("{name}@{subject} (its referrers)");
                        out.extend(targets.iter().map(|t| {
                            let r = self.report(
                                &label,
                                t,
                                None,
                                None,
                                CopyStatus::Failed,
                                None,
                                Some(&e),
                            );
                            (t.dest, r)
                        }));
                        continue;
                    }
                };
                let referrer = |label: String, reference, fallback, targets| ImageJob {
                    label,
                    source: job.source,
                    repo: job.repo.clone(),
                    reference,
                    platforms: Vec::new(),
                    referrers: true,
                    annotations: job.annotations.clone(),
                    fallback,
                    // Signatures are not signed: the image they refer to was checked.
                    policy: None,
                    targets,
                };
                for r in found.listed {
                    if seen.lock().expect("seen lock").insert(r.digest.clone()) {
                        let label = format!("{name}@{}", r.digest);
                        let reference = SourceRef::Referrer(r.digest);
                        jobs.push(referrer(label, reference, false, targets.clone()));
                    }
                }
                let fallback = found.fallback.map(|t| (t, true));
                for (tag, fallback) in fallback
                    .into_iter()
                    .chain(found.tags.into_iter().map(|t| (t, false)))
                {
                    let tagged = targets
                        .iter()
                        .map(|t| JobTarget {
                            tag: Some(tag.clone()),
                            ..t.clone()
                        })
                        .collect();
                    let label = format!("{name}:{tag}");
                    jobs.push(referrer(label, SourceRef::Tag(tag), fallback, tagged));
                }
            }
            for (main, more) in
                join_all(jobs.iter().map(|j| self.copy_job(j, depth + 1, seen))).await
            {
                out.extend(main);
                out.extend(more);
            }
            (self.settle(job, outcome, &out).await, out)
        }
        .boxed()
    }

    /// Name the image at each target still waiting for it (see [`Pending`]), unless a
    /// referrer of it failed there; the job's reports, in target order.
    async fn settle(&self, job: &ImageJob, outcome: ImageOutcome, referrers: &Reports) -> Reports {
        let ImageOutcome {
            mut reports,
            copied,
            pending,
            annotations,
        } = outcome;
        if let Some(copied) = &copied {
            join_all(pending.iter().map(|slot| async {
                let failed = referrers
                    .iter()
                    .find(|(d, r)| *d == slot.dest && r.status == CopyStatus::Failed);
                match failed {
                    Some((_, r)) => slot.fail(Arc::new(CopyError::ReferrerFailed {
                        referrer: r.source.clone(),
                        cause: r.error.join(": "),
                    })),
                    None => {
                        let claim = match self.dests[slot.dest].parallel_puts() {
                            true => None,
                            false => self.claim_manifest(&copied.top.digest, &[slot]).await.pop(),
                        };
                        self.name(job, slot, &copied.top, &annotations).await;
                        drop(claim);
                    }
                }
            }))
            .await;
            for slot in &pending {
                let t = &job.targets[slot.target];
                let report = self.slot_report(job, t, slot, &copied.top.digest, &copied.upstream);
                reports[slot.target] = Some(report);
            }
        }
        job.targets
            .iter()
            .map(|t| t.dest)
            .zip(
                reports
                    .into_iter()
                    .map(|r| r.expect("every target decided")),
            )
            .collect()
    }

    /// How a target the image (`digest`, `upstream` at the source) was sent to fared.
    fn slot_report(
        &self,
        job: &ImageJob,
        t: &JobTarget,
        slot: &Slot,
        digest: &Digest,
        upstream: &Digest,
    ) -> TargetReport {
        let error = slot.error.lock().expect("slot lock").take();
        let status = match error {
            None => CopyStatus::Copied,
            Some(_) => CopyStatus::Failed,
        };
        let (digest, upstream) = (Some(digest), Some(upstream));
        self.report(
            &job.label,
            t,
            digest,
            upstream,
            status,
            None,
            error.as_deref(),
        )
    }

    /// Put the image under its name at the slot: its tag (a fallback tag merged with the
    /// target's own), or by digest as an image of its own; and list a referrer sent by
    /// digest in its subject's fallback tag where the target does not list it itself.
    async fn name(
        &self,
        job: &ImageJob,
        slot: &Slot,
        top: &Verified,
        annotations: &Annotations,
    ) -> bool {
        let t = &job.targets[slot.target];
        let how = match &t.tag {
            Some(tag) if job.fallback => {
                self.merge_fallback(slot, tag, top, annotations).await;
                return !slot.failed();
            }
            Some(tag) => Put::Tag(tag, annotations),
            None => Put::Image(annotations),
        };
        let Some(indexed) = self.put_manifest(slot, how, top).await else {
            return false;
        };
        // Only a referrer sent by digest is listed by us (the module's notes).
        if let (None, false, Some(subject)) = (&t.tag, indexed, &top.manifest.subject) {
            self.update_fallback(slot, &subject.digest, top, annotations)
                .await;
        }
        !slot.failed()
    }

    /// How `t` fared for image `label` (`digest` at the target, `upstream` at the source
    /// where a platform cut made them differ).
    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        label: &str,
        t: &JobTarget,
        digest: Option<&Digest>,
        upstream: Option<&Digest>,
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
        TargetReport {
            source: label.to_owned(),
            target: at,
            digest: digest.map(Digest::to_string),
            upstream_digest: upstream
                .filter(|u| Some(*u) != digest)
                .map(Digest::to_string),
            status,
            existing: existing.as_ref().map(Digest::to_string),
            error: error.map(|e| error_chain(e)).unwrap_or_default(),
            remedy: error.and_then(CopyError::remedy),
        }
    }

    /// What each target holds of the job's image before anything is read from the
    /// source: its tag, or (by digest) the image the digest became there.
    async fn held(
        &self,
        job: &ImageJob,
        filter: Option<&str>,
    ) -> Vec<Result<Option<Held>, CopyError>> {
        join_all(job.targets.iter().map(|t| async {
            let d = &self.dests[t.dest];
            match (&t.tag, job.reference.digest()) {
                (Some(tag), _) => d.tag(&t.repo, tag).await,
                (None, Some(digest)) => d.image(&t.repo, digest, filter).await,
                (None, None) => Ok(None),
            }
        }))
        .await
    }

    /// One image to each of its targets: a report per target, in target order, and the
    /// image as they got it, when it could be read.
    async fn copy_image(&self, job: &ImageJob, defer: bool) -> ImageOutcome {
        let walking = self.walking.acquire().await.expect("never closed");
        let label = &job.label;
        let source = &self.sources[job.source];
        let filter = platform_list(&job.platforms);
        let filter = filter.as_deref();
        let mut reports: Vec<Option<TargetReport>> = vec![None; job.targets.len()];
        let mut held: Vec<Option<Held>> = vec![None; job.targets.len()];
        for (i, found) in self.held(job, filter).await.into_iter().enumerate() {
            match found {
                Ok(h) => held[i] = h,
                Err(e) => {
                    let t = &job.targets[i];
                    reports[i] =
                        Some(self.report(label, t, None, None, CopyStatus::Failed, None, Some(&e)));
                }
            }
        }
        let open = |reports: &[Option<TargetReport>]| -> Vec<usize> {
            (0..reports.len())
                .filter(|i| reports[*i].is_none())
                .collect()
        };
        let fail_open = |reports: &mut Vec<Option<TargetReport>>, e: &CopyError| {
            for i in open(reports) {
                reports[i] = Some(self.report(
                    label,
                    &job.targets[i],
                    None,
                    None,
                    CopyStatus::Failed,
                    None,
                    Some(e),
                ));
            }
        };
        // The source's digest, where it is known without reading the manifest: a digest
        // asked for, or (when every target holds the tag) what a HEAD says.
        let known = match &job.reference {
            SourceRef::Digest(d) | SourceRef::Referrer(d) => Some(d.clone()),
            SourceRef::Tag(tag) if open(&reports).iter().all(|i| held[*i].is_some()) => {
                match source.digest(&job.repo, tag).await {
                    Ok(d) => d,
                    Err(e) => {
                        fail_open(&mut reports, &e);
                        None
                    }
                }
            }
            SourceRef::Tag(_) => None,
        };
        let mut unchanged_top = None;
        if let Some(d) = &known {
            for i in open(&reports) {
                if let Some(h) = held[i].as_ref().filter(|h| h.is_copy_of(d, filter)) {
                    let t = &job.targets[i];
                    reports[i] = Some(self.report(
                        label,
                        t,
                        Some(&h.digest),
                        Some(d),
                        CopyStatus::Unchanged,
                        None,
                        None,
                    ));
                    unchanged_top.get_or_insert((t, h.digest.clone()));
                }
            }
        }
        if open(&reports).is_empty() {
            drop(walking);
            // What the targets hold is read from one of them, for its referrers.
            let copied = match (defer, unchanged_top, known) {
                (true, Some((t, digest)), Some(upstream)) => {
                    match self.dests[t.dest]
                        .get_manifest(&t.repo, &digest.to_string())
                        .await
                    {
                        Ok(Some(top)) => Some(Copied {
                            top: Arc::new(top),
                            upstream,
                        }),
                        Ok(None) => None,
                        Err(e) => {
                            self.reporter.warn(&format!(
                                "{label}: cannot read it back from {} to look for its referrers: {}",
                                self.dests[t.dest].name(),
                                error_chain(&e).join(": ")
                            ));
                            None
                        }
                    }
                }
                _ => None,
            };
            return ImageOutcome {
                reports,
                copied,
                pending: Vec::new(),
                annotations: Annotations::new(),
            };
        }
        let origin = Origin {
            source,
            repo: &job.repo,
        };
        let upstream = match (&known, &job.reference) {
            (Some(d), reference) => {
                let why = match reference {
                    SourceRef::Tag(_) => ANNOUNCED,
                    SourceRef::Digest(_) => ASKED,
                    SourceRef::Referrer(_) => LISTED,
                };
                self.source_manifest(origin, d, None, why).await
            }
            (None, SourceRef::Tag(tag)) => source.resolve(&job.repo, tag).await.map(Arc::new),
            (None, _) => unreachable!("a digest is known"),
        };
        let mut annotations = job.annotations.clone();
        let top = upstream.and_then(|upstream| match filter {
            Some(list) => self.cut(job, list, upstream, &mut annotations),
            None => Ok(upstream.clone()),
        });
        let checked = match top {
            Ok(top) => {
                let upstream: Digest = annotations
                    .get(UPSTREAM_DIGEST)
                    .and_then(|d| d.parse().ok())
                    .unwrap_or_else(|| top.digest.clone());
                // Nothing is sent before the signatures the job's policy asks for hold.
                match &job.policy {
                    Some(policy) => self
                        .check_signatures(job.source, origin, policy, &upstream)
                        .await
                        .map(|()| (top, upstream)),
                    None => Ok((top, upstream)),
                }
            }
            Err(e) => Err(Arc::new(e)),
        };
        let (top, upstream) = match checked {
            Ok(checked) => checked,
            Err(e) => {
                fail_open(&mut reports, &e);
                return ImageOutcome {
                    reports,
                    copied: None,
                    pending: Vec::new(),
                    annotations,
                };
            }
        };
        let report = |t: &JobTarget,
                      status: CopyStatus,
                      existing: Option<Digest>,
                      error: Option<&CopyError>| {
            self.report(
                label,
                t,
                Some(&top.digest),
                Some(&upstream),
                status,
                existing,
                error,
            )
        };
        // Targets asked for by tag hold nothing yet; by digest, the image may be there.
        let found = join_all(open(&reports).into_iter().map(|i| {
            let t = &job.targets[i];
            let known = held[i].take();
            let top = &top;
            async move {
                let found = match (&t.tag, known) {
                    (_, Some(h)) => Ok(Some(h.digest)),
                    (Some(_), None) => Ok(None),
                    (None, None) => self.dests[t.dest]
                        .image(&t.repo, &top.digest, None)
                        .await
                        .map(|h| h.map(|h| h.digest)),
                };
                (i, found)
            }
        }))
        .await;
        let mut slots = Vec::new();
        let mut pending = Vec::new();
        for (i, found) in found {
            let t = &job.targets[i];
            let overwrites = t.tag.is_some() && !job.fallback;
            reports[i] = match found {
                Ok(Some(d)) if d == top.digest => {
                    Some(report(t, CopyStatus::Unchanged, None, None))
                }
                // A fallback tag is merged, and an image by digest is not a tag to keep.
                Ok(Some(d)) if overwrites && t.overwrite == Overwrite::Skip => {
                    Some(report(t, CopyStatus::Skipped, Some(d), None))
                }
                Ok(Some(d)) if overwrites && t.overwrite == Overwrite::Fail => {
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
                    Some(report(t, CopyStatus::Failed, Some(d), Some(&e)))
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
                Err(e) => Some(report(t, CopyStatus::Failed, None, Some(&e))),
            };
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
            self.copy_tree(origin, &top, &need, 0).await;
            drop(walking);
            let (top, annotations) = (&*top, &annotations);
            join_all(claims.into_iter().map(|(slot, put)| async move {
                if slot.failed() {
                    return;
                }
                // Its tree is there: where the destination allows, other tags of it
                // need not wait for this one's put.
                let mut claim = Some(put);
                if self.dests[slot.dest].parallel_puts()
                    && let Some(mut put) = claim.take()
                {
                    *put = true;
                }
                let went = match defer {
                    false => self.name(job, slot, top, annotations).await,
                    // By digest now, its name once its referrers are there.
                    true => self.put_manifest(slot, Put::Child, top).await.is_some(),
                };
                if let Some(mut put) = claim {
                    *put = went;
                }
            }))
            .await;
            for slot in slots {
                if defer && !slot.failed() {
                    pending.push(slot);
                } else {
                    let t = &job.targets[slot.target];
                    let report = self.slot_report(job, t, &slot, &top.digest, &upstream);
                    reports[slot.target] = Some(report);
                }
            }
        }
        ImageOutcome {
            reports,
            copied: Some(Copied { top, upstream }),
            pending,
            annotations,
        }
    }

    /// Apply the job's platform list to its top manifest. An index loses the children of
    /// other platforms and so gets a new digest (the reporter says so); an index whose
    /// children are all wanted, and a single-platform image, keep their source bytes.
    /// `annotations` get the source's digest and the list.
    fn cut(
        &self,
        job: &ImageJob,
        list: &str,
        upstream: Arc<Verified>,
        annotations: &mut Annotations,
    ) -> Result<Arc<Verified>, CopyError> {
        annotations.insert(UPSTREAM_DIGEST.to_owned(), upstream.digest.to_string());
        annotations.insert(KEPT_PLATFORMS.to_owned(), list.to_owned());
        if !matches!(upstream.manifest.kind, Kind::Index(_)) {
            return Ok(upstream);
        }
        let bad = |source| CopyError::Manifest {
            what: upstream.digest.to_string(),
            source,
        };
        let cut = cut_index(
            &upstream.bytes,
            &job.platforms,
            &upstream.digest.to_string(),
        )
        .map_err(|e| bad(ManifestError::Json(e)))?;
        match cut {
            PlatformCut::Whole => Ok(upstream),
            PlatformCut::Nothing { available } => Err(CopyError::NoPlatform {
                reference: job.label.clone(),
                wanted: list.to_owned(),
                available: available.join(", "),
            }),
            PlatformCut::Cut { bytes, dropped } => {
                // New bytes: made a value of their own here, where they come to be.
                let cut =
                    Verified::new(Bytes::from(bytes), Some(upstream.media_type())).map_err(bad)?;
                self.reporter.warn(&format!(
                    "{}: kept {list}, left out {}; the stored index is {}, not the registry's \
                     {} (pull it by tag or by the new digest)",
                    job.label,
                    dropped.join(", "),
                    cut.digest,
                    upstream.digest
                ));
                Ok(Arc::new(cut))
            }
        }
    }

    /// Whether `digest` (what source `source` serves, before any platform cut) is
    /// signed as `policy` asks; checked once per run.
    async fn check_signatures(
        &self,
        source: usize,
        from: Origin<'_, S>,
        policy: &Arc<Policy>,
        digest: &Digest,
    ) -> Checked {
        let key = (
            source,
            from.repo.to_owned(),
            digest.clone(),
            Arc::as_ptr(policy) as usize,
        );
        let cell = self
            .checks
            .lock()
            .expect("check cache lock")
            .entry(key)
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let found = signed::find(from.source, from.repo, digest).await?;
            let refused = |refused| CopyError::Unsigned {
                digest: digest.clone(),
                refused,
            };
            policy.check(digest, &found).map_err(refused)?;
            Ok(())
        })
        .await
        .clone()
    }

    /// Put `manifest` at the slot as `put` says; if it went, whether the destination
    /// listed it under its subject by itself.
    async fn put_manifest(&self, slot: &Slot, put: Put<'_>, manifest: &Verified) -> Option<bool> {
        match self.dests[slot.dest]
            .put_manifest(&slot.repo, put, manifest)
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

    /// A source manifest by digest, read and verified once per run.
    async fn source_manifest(
        &self,
        from: Origin<'_, S>,
        digest: &Digest,
        media_type: Option<&str>,
        why: &'static str,
    ) -> Result<Arc<Verified>, CopyError> {
        let cell = self
            .manifests
            .lock()
            .expect("manifest cache lock")
            .entry(digest.clone())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            from.source
                .manifest(from.repo, digest, media_type, why)
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
        from: Origin<'a, S>,
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
                            .map(|c| self.copy_child(from, c, slots, depth)),
                    )
                    .await;
                }
                Kind::Image { config, layers } => {
                    let blobs = std::iter::once(config.as_ref()).chain(layers).filter(|d| {
                        let skip = d.is_foreign() && !self.opts.include_foreign;
                        if skip {
                            self.reporter.warn(&format!(
                                "{}: skipping foreign layer {} (pass --include-foreign to copy it)",
                                manifest.digest, d.digest
                            ));
                        }
                        !skip
                    });
                    join_all(blobs.map(|b| self.copy_blob(from, b, slots))).await;
                }
            }
        }
        .boxed()
    }

    async fn copy_child(
        &self,
        from: Origin<'_, S>,
        child: &Descriptor,
        slots: &[&Slot],
        depth: usize,
    ) {
        let slots = live(slots);
        if slots.is_empty() {
            return;
        }
        let claims = self.claim_manifest(&child.digest, &slots).await;
        // Targets that have the child have all it reaches (registries check on PUT);
        // the source is read only for those that lack it.
        let has = join_all(claims.iter().map(|(s, put)| async move {
            if **put {
                return Ok(true);
            }
            self.dests[s.dest].has_manifest(&s.repo, child).await
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
        let verified = match self
            .source_manifest(from, &child.digest, Some(&child.media_type), IN_PARENT)
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
        self.copy_tree(from, &verified, &slots, depth + 1).await;
        join_all(need.into_iter().map(|(s, mut put)| {
            let verified = &verified;
            async move {
                if !s.failed() {
                    *put = self.put_manifest(s, Put::Child, verified).await.is_some();
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
}

/// The source repository as a job's label names it (`reg.example/lab/debian` of
/// `reg.example/lab/debian:12`), for naming the referrers it leads to.
fn source_name(job: &ImageJob) -> &str {
    let suffix = match &job.reference {
        SourceRef::Tag(t) => format!(":{t}"),
        SourceRef::Digest(d) | SourceRef::Referrer(d) => format!("@{d}"),
    };
    job.label.strip_suffix(&suffix).unwrap_or(&job.label)
}
