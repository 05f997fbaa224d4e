//! The store as an endpoint. As a source: manifests and blobs read from a repository's
//! layout through a read-only view (no lock), tags from the index.json the plan read. As
//! a destination: blobs into the pool (resuming what an earlier run left) and linked into
//! the repository's layout, manifests likewise, and a tag (or an image of its own)
//! published into index.json only when all it reaches is there, many at once.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::sync::OnceCell;

use super::{
    Annotations, BlobRead, BlobWriter, Chunk, CopyError, Destination, Held, Put, Referrers, Source,
    Start,
};
use crate::manifest::{Descriptor, KEPT_PLATFORMS, Kind, Manifest, UPSTREAM_DIGEST, Verified};
use crate::reference::Digest;
use crate::report::error_chain;
use crate::store::{BlobClaim, PartialBlob, Store, StoreError, StoreView, TagIndex, TagUpdate};

/// Bytes per read of a stored blob.
const READ_SIZE: usize = 1 << 20;

pub struct StoreSource {
    view: StoreView,
    /// The index.json of every repository to copy, as planning read it.
    indexes: HashMap<String, Arc<TagIndex>>,
}

impl StoreSource {
    pub fn new(view: StoreView, indexes: HashMap<String, Arc<TagIndex>>) -> StoreSource {
        StoreSource { view, indexes }
    }
}

impl StoreSource {
    /// The index.json entry of `tag`.
    fn entry(&self, repo: &str, tag: &str) -> Result<&Descriptor, StoreError> {
        self.indexes
            .get(repo)
            .and_then(|index| index.tag(tag))
            .ok_or_else(|| StoreError::UnknownTag {
                name: repo.to_owned(),
                tag: tag.to_owned(),
            })
    }
}

/// A manifest read from the store, parsed and checked against the digest it is filed
/// under.
fn stored_manifest(
    bytes: Vec<u8>,
    repo: &str,
    digest: &Digest,
    media_type: Option<&str>,
) -> Result<Verified, CopyError> {
    let what = format!("{repo}@{digest} in the store");
    super::verified_as(
        bytes,
        media_type,
        what,
        digest,
        "its file name; run `static-registry verify --repair`",
    )
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, CopyError> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .expect("store read task panicked")?)
}

impl Source for StoreSource {
    fn registry(&self) -> Option<&str> {
        None
    }

    async fn digest(&self, repo: &str, tag: &str) -> Result<Option<Digest>, CopyError> {
        Ok(Some(self.entry(repo, tag)?.digest.clone()))
    }

    async fn resolve(&self, repo: &str, tag: &str) -> Result<Verified, CopyError> {
        let entry = self.entry(repo, tag)?;
        self.manifest(
            repo,
            &entry.digest,
            Some(&entry.media_type),
            "its index.json entry",
        )
        .await
    }

    async fn manifest(
        &self,
        repo: &str,
        digest: &Digest,
        media_type: Option<&str>,
        _why: &'static str,
    ) -> Result<Verified, CopyError> {
        let (view, name, d) = (self.view.clone(), repo.to_owned(), digest.clone());
        let bytes = blocking(move || view.read_manifest(&name, &d)).await?;
        stored_manifest(bytes, repo, digest, media_type)
    }

    async fn blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<BlobRead, CopyError> {
        file_stream(self.view.blob_path(repo, &desc.digest)?, offset).await
    }

    async fn referrers(&self, repo: &str, subject: &Digest) -> Result<Referrers, CopyError> {
        let schema = super::fallback_tag(subject);
        let (view, name, subject) = (self.view.clone(), repo.to_owned(), subject.clone());
        let listed = blocking(move || view.read_referrers(&name, &subject)).await?;
        let tags = self
            .indexes
            .get(repo)
            .map(|index| {
                super::COSIGN_SUFFIXES
                    .map(|suffix| format!("{schema}{suffix}"))
                    .into_iter()
                    .filter(|t| index.tag(t).is_some())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Referrers {
            listed,
            tags,
            ..Referrers::default()
        })
    }
}

/// The whole file at `path` (a manifest), read on a blocking thread.
pub(super) async fn read_file(path: std::path::PathBuf) -> Result<Vec<u8>, CopyError> {
    blocking(move || std::fs::read(&path).map_err(StoreError::io("read", &path))).await
}

/// The file at `path` from byte `offset`, read on a blocking thread one buffer at a time,
/// as the engine asks.
pub(super) async fn file_stream(
    path: std::path::PathBuf,
    offset: u64,
) -> Result<BlobRead, CopyError> {
    let open = path.clone();
    let file = blocking(move || {
        let mut f = std::fs::File::open(&open).map_err(StoreError::io("open", &open))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(StoreError::io("seek", &open))?;
        Ok(f)
    })
    .await?;
    let stream = futures::stream::try_unfold((file, path), |(mut file, path)| async move {
        let (file, path, chunk) = blocking(move || {
            let mut buf = BytesMut::zeroed(READ_SIZE);
            let n = file.read(&mut buf).map_err(StoreError::io("read", &path))?;
            buf.truncate(n);
            Ok((file, path, buf.freeze()))
        })
        .await?;
        Ok((!chunk.is_empty()).then_some((chunk, (file, path))))
    });
    Ok(BlobRead {
        offset,
        stream: Box::pin(stream),
    })
}

/// Longest wait between two index.json writes of one repository (see `Publisher`).
const MAX_PUBLISH_PAUSE: Duration = Duration::from_millis(100);
/// Bytes handed to a blob's writer at a time (a kill leaves whole slices on disk).
const WRITE_SLICE: usize = 256 << 10;
/// Chunks the store takes: a file write needs no large request, and the engine holds a
/// few chunks per blob in memory.
const STORE_CHUNK: usize = 1 << 20;

/// A manifest's subject and its entry in the subject's referrers list, if it has one.
type Referrer = Option<(Digest, Descriptor)>;

/// A completeness check, made once.
type Checked = Arc<OnceCell<bool>>;

pub struct StoreDestination {
    store: Arc<Store>,
    name: String,
    /// The index.json of every repository written to, as planning read it.
    indexes: HashMap<String, Arc<TagIndex>>,
    /// Whether the store holds all a manifest reaches, per repository and manifest:
    /// checked once (many tags share manifests).
    complete: Mutex<HashMap<(String, Digest), Checked>>,
    /// What each manifest put or looked at refers to: (its subject, its entry in the
    /// subject's referrers list), by digest.
    subjects: Mutex<HashMap<Digest, Referrer>>,
    publisher: Arc<Publisher>,
}

impl StoreDestination {
    pub fn new(store: Arc<Store>, indexes: HashMap<String, Arc<TagIndex>>) -> StoreDestination {
        StoreDestination {
            name: store.root().display().to_string(),
            publisher: Arc::new(Publisher {
                store: store.clone(),
                queues: Mutex::new(HashMap::new()),
            }),
            store,
            indexes,
            complete: Mutex::new(HashMap::new()),
            subjects: Mutex::new(HashMap::new()),
        }
    }

    /// The referrers among an index's children, for the served lists: children this run
    /// put were noted then, others (a rerun after a kill, say) are read from the pool.
    async fn child_referrers(
        &self,
        index: &Verified,
    ) -> Result<Vec<(Digest, Descriptor)>, CopyError> {
        let Kind::Index(children) = &index.manifest.kind else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        for child in children {
            let known = self
                .subjects
                .lock()
                .expect("subjects lock")
                .get(&child.digest)
                .cloned();
            let referrer = match known {
                Some(referrer) => referrer,
                None => {
                    let (store, d) = (self.store.clone(), child.digest.clone());
                    let bytes = blocking(move || store.read_blob(&d)).await?;
                    let referrer = Manifest::parse(&bytes, Some(&child.media_type))
                        .ok()
                        .and_then(|m| {
                            let me = m.referrer_descriptor(&child.digest, child.size);
                            Some((m.subject?.digest, me))
                        });
                    self.subjects
                        .lock()
                        .expect("subjects lock")
                        .insert(child.digest.clone(), referrer.clone());
                    referrer
                }
            };
            found.extend(referrer);
        }
        Ok(found)
    }

    fn index(&self, repo: &str) -> Option<&TagIndex> {
        self.indexes.get(repo).map(Arc::as_ref)
    }

    /// What an index.json entry holds, if all it reaches is still there: a store that
    /// lost files (or that `verify --repair` took them from) gets them again.
    async fn whole(&self, repo: &str, entry: &Descriptor) -> Result<Option<Held>, CopyError> {
        if !self.is_complete(repo, entry).await? {
            return Ok(None);
        }
        Ok(Some(held(entry)))
    }

    async fn is_complete(&self, repo: &str, entry: &Descriptor) -> Result<bool, CopyError> {
        let cell = self
            .complete
            .lock()
            .expect("completeness cache lock")
            .entry((repo.to_owned(), entry.digest.clone()))
            .or_default()
            .clone();
        let complete = cell
            .get_or_try_init(|| {
                let (store, repo, entry) = (self.store.clone(), repo.to_owned(), entry.clone());
                blocking(move || store.is_complete(&repo, &entry))
            })
            .await?;
        Ok(*complete)
    }
}

impl Destination for StoreDestination {
    type Writer = StoreWriter;

    fn name(&self) -> &str {
        &self.name
    }

    fn registry(&self) -> Option<&str> {
        None
    }

    async fn tag(&self, repo: &str, tag: &str) -> Result<Option<Held>, CopyError> {
        match self.index(repo).and_then(|i| i.tag(tag)) {
            Some(entry) => self.whole(repo, entry).await,
            None => Ok(None),
        }
    }

    async fn image(
        &self,
        repo: &str,
        digest: &Digest,
        platforms: Option<&str>,
    ) -> Result<Option<Held>, CopyError> {
        let entry = self.index(repo).and_then(|index| {
            index
                .entries()
                .iter()
                .find(|e| held(e).is_copy_of(digest, platforms))
        });
        match entry {
            Some(entry) => self.whole(repo, entry).await,
            None => Ok(None),
        }
    }

    async fn has_manifest(&self, repo: &str, desc: &Descriptor) -> Result<bool, CopyError> {
        self.is_complete(repo, desc).await
    }

    async fn has_blob(&self, repo: &str, digest: &Digest) -> Result<bool, CopyError> {
        let (store, repo, digest) = (self.store.clone(), repo.to_owned(), digest.clone());
        blocking(move || {
            Ok(store.has_blob(&digest)?
                && store
                    .repo_dir(&repo)?
                    .join("blobs")
                    .join(digest.algorithm())
                    .join(digest.hex())
                    .is_file())
        })
        .await
    }

    async fn start_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        _mount_from: Option<&str>,
    ) -> Result<Start<StoreWriter>, CopyError> {
        // Every repository links the pool's one copy: a blob the pool has is "mounted".
        let (store, name, digest, size) = (
            self.store.clone(),
            repo.to_owned(),
            desc.digest.clone(),
            desc.size,
        );
        blocking(move || match store.claim_blob(&digest, size)? {
            BlobClaim::Present => {
                store.link_blob(&name, &digest)?;
                Ok(Start::Mounted)
            }
            BlobClaim::Write(partial) => Ok(Start::Write(StoreWriter {
                store: store.clone(),
                repo: name,
                offset: partial.offset(),
                partial: Some(partial),
            })),
        })
        .await
    }

    async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<Verified>, CopyError> {
        let (digest, media_type) = match reference.parse::<Digest>() {
            Ok(d) => (d, None),
            Err(_) => match self.index(repo).and_then(|i| i.tag(reference)) {
                Some(entry) => (entry.digest.clone(), Some(entry.media_type.as_str())),
                None => return Ok(None),
            },
        };
        let (store, d) = (self.store.clone(), digest.clone());
        let bytes = blocking(move || store.read_blob(&d)).await?;
        stored_manifest(bytes, repo, &digest, media_type).map(Some)
    }

    fn parallel_puts(&self) -> bool {
        true
    }

    async fn put_manifest(
        &self,
        repo: &str,
        put: Put<'_>,
        manifest: &Verified,
    ) -> Result<bool, CopyError> {
        let (store, name, m) = (self.store.clone(), repo.to_owned(), manifest.clone());
        blocking(move || {
            store.put_manifest(&m)?;
            store.link_blob(&name, &m.digest)
        })
        .await?;
        let referrer = manifest.manifest.subject.as_ref().map(|s| {
            let me = manifest
                .manifest
                .referrer_descriptor(&manifest.digest, manifest.size());
            (s.digest.clone(), me)
        });
        self.subjects
            .lock()
            .expect("subjects lock")
            .insert(manifest.digest.clone(), referrer.clone());
        let mut referrers: Vec<(Digest, Descriptor)> = referrer.into_iter().collect();
        let update = |tag: Option<&str>, annotations: &Annotations| TagUpdate {
            tag: tag.map(str::to_owned),
            media_type: manifest.media_type().to_owned(),
            digest: manifest.digest.clone(),
            size: manifest.size(),
            annotations: annotations.clone(),
        };
        let update = match put {
            Put::Tag(tag, annotations) => Some(update(Some(tag), annotations)),
            Put::Image(annotations) => Some(update(None, annotations)),
            // Part of an index: published with it (a referrer among its children, too).
            Put::Child => None,
        };
        if update.is_some() {
            referrers.extend(self.child_referrers(manifest).await?);
        }
        self.publisher.publish(repo, update, referrers).await?;
        Ok(true)
    }
}

/// What an index.json entry names, with the platform cut its annotations record.
pub fn held(entry: &Descriptor) -> Held {
    let upstream = entry.annotations.get(UPSTREAM_DIGEST);
    let kept = entry.annotations.get(KEPT_PLATFORMS);
    Held {
        digest: entry.digest.clone(),
        cut: match (upstream.and_then(|d| d.parse().ok()), kept) {
            (Some(d), Some(list)) => Some((d, list.clone())),
            _ => None,
        },
    }
}

/// A blob being written into the pool; linked into its repository when committed.
pub struct StoreWriter {
    store: Arc<Store>,
    repo: String,
    /// What an earlier run left of it.
    offset: u64,
    /// Taken while a blocking thread writes it.
    partial: Option<Box<PartialBlob>>,
}

impl StoreWriter {
    /// Write `chunk` on a blocking thread, a slice at a time.
    async fn write_chunk(&mut self, chunk: Chunk) -> Result<(), CopyError> {
        let mut partial = self
            .partial
            .take()
            .expect("a writer is not used after it failed");
        let partial = blocking(move || {
            for part in chunk.parts() {
                for slice in part.chunks(WRITE_SLICE) {
                    partial.write(slice)?;
                }
            }
            Ok(partial)
        })
        .await?;
        self.partial = Some(partial);
        Ok(())
    }
}

impl BlobWriter for StoreWriter {
    fn chunk(&self) -> usize {
        STORE_CHUNK
    }

    fn offset(&self) -> u64 {
        self.offset
    }

    fn verifies(&self) -> bool {
        true
    }

    async fn write(&mut self, chunk: Chunk) -> Result<(), CopyError> {
        self.write_chunk(chunk).await
    }

    async fn finish(mut self, _digest: &Digest, last: Chunk) -> Result<(), CopyError> {
        self.write_chunk(last).await?;
        let partial = self.partial.take().expect("written above");
        let (store, repo) = (self.store, self.repo);
        blocking(move || {
            let digest = partial.digest().clone();
            partial.commit()?;
            store.link_blob(&repo, &digest)?;
            Ok(())
        })
        .await
    }
}

/// Writes index.json updates, coalesced per repository. Every publish rewrites the
/// repository's whole index.json, so the first caller starts a writer that takes
/// everything queued for the repository (again, until the queue is empty), and every
/// caller waits for the write that holds its update: a repository with 10k tags costs a
/// handful of rewrites, not 10k.
struct Publisher {
    store: Arc<Store>,
    queues: Mutex<HashMap<String, PublishQueue>>,
}

/// Updates waiting to be written into one repository's index.json, and who waits.
#[derive(Default)]
struct PublishQueue {
    updates: Vec<TagUpdate>,
    /// (subject, referrer descriptor), for the served referrers lists.
    referrers: Vec<(Digest, Descriptor)>,
    waiters: Vec<tokio::sync::oneshot::Sender<Result<(), String>>>,
    flushing: bool,
}

impl Publisher {
    /// Queue `update` and `referrers` for `repo`; with an update, wait until it is written
    /// (referrers alone go with the next write).
    async fn publish(
        self: &Arc<Self>,
        repo: &str,
        update: Option<TagUpdate>,
        referrers: Vec<(Digest, Descriptor)>,
    ) -> Result<(), CopyError> {
        let Some(update) = update else {
            if !referrers.is_empty() {
                let mut queues = self.queues.lock().expect("publish queue lock");
                queues
                    .entry(repo.to_owned())
                    .or_default()
                    .referrers
                    .extend(referrers);
            }
            return Ok(());
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let leader = {
            let mut queues = self.queues.lock().expect("publish queue lock");
            let q = queues.entry(repo.to_owned()).or_default();
            q.updates.push(update);
            q.referrers.extend(referrers);
            q.waiters.push(tx);
            !std::mem::replace(&mut q.flushing, true)
        };
        if leader {
            // A task of its own: cancelling this image (--fail-fast) must not strand the
            // others waiting on the same write.
            tokio::spawn(self.clone().flush(repo.to_owned()));
        }
        let cause = match rx.await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(cause)) => cause,
            Err(_) => "the run stopped before the index was written".into(),
        };
        Err(CopyError::Publish {
            name: repo.to_owned(),
            cause,
        })
    }

    /// Write everything queued for `repo`, again and again until its queue is empty.
    async fn flush(self: Arc<Self>, repo: String) {
        let mut pause = Duration::ZERO;
        loop {
            // Group commit: a write costs as much as the whole index, so a writer going
            // back to back spends a core rewriting a big repository's index.json for a
            // few tags each time. Waiting twice as long as the last write took gathers
            // larger batches and keeps writing to at most a third of the time.
            tokio::time::sleep(pause).await;
            let (updates, referrers, waiters) = {
                let mut queues = self.queues.lock().expect("publish queue lock");
                let q = queues.get_mut(&repo).expect("queue exists while flushing");
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
            let (store, name) = (self.store.clone(), repo.clone());
            let started = Instant::now();
            let result = blocking(move || store.publish(&name, &updates, &referrers))
                .await
                .map_err(|e| error_chain(&e).join(": "));
            pause = (started.elapsed() * 2).min(MAX_PUBLISH_PAUSE);
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        }
    }
}
