//! A registry as an endpoint: as a source it pulls (verifying every manifest against
//! the digest asked for or announced), as a destination it pushes (HEAD before sending,
//! cross-repository mounts, chunked uploads that resume).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use tokio::sync::{OnceCell, Semaphore};

use super::{
    BlobRead, BlobWriter, Chunk, CopyError, Destination, Held, Put, Referrers, Source, Start,
    fallback_tag,
};
use crate::manifest::{Descriptor, Kind, Manifest, OCI_INDEX, Verified};
use crate::reference::{Digest, validate_tag};
use crate::registry::{Client, Started, Upload};
use crate::report::{Reporter, error_chain};

/// Blob reads in flight at once from one registry host, unless told otherwise.
const READS_PER_HOST: usize = 8;

/// A repository's tags.
type Tags = Arc<HashSet<String>>;

/// Pulls from one registry host.
pub struct RegistrySource {
    client: Client,
    /// The registry as references name it (`docker.io`).
    registry: String,
    /// The host the API is reached at (`registry-1.docker.io` for docker.io).
    host: String,
    /// So that one slow registry cannot hold every transfer.
    reads: Arc<Semaphore>,
    /// Each repository's tags, listed once (for referrer tags).
    tags: Mutex<HashMap<String, Arc<OnceCell<Tags>>>>,
    /// Repositories whose referrers API answered 404: a registry with the API answers
    /// every subject (an empty list where nothing refers to it), so it is not asked
    /// again in this run.
    no_referrers_api: Mutex<HashSet<String>>,
    reporter: Arc<dyn Reporter>,
    manifests_read: AtomicU64,
    manifest_bytes: AtomicU64,
}

impl RegistrySource {
    pub fn new(
        client: Client,
        registry: &str,
        host: &str,
        reporter: Arc<dyn Reporter>,
    ) -> RegistrySource {
        RegistrySource {
            client,
            registry: registry.to_owned(),
            host: host.to_owned(),
            reads: Arc::new(Semaphore::new(READS_PER_HOST)),
            tags: Mutex::new(HashMap::new()),
            no_referrers_api: Mutex::new(HashSet::new()),
            reporter,
            manifests_read: AtomicU64::new(0),
            manifest_bytes: AtomicU64::new(0),
        }
    }

    /// At most `n` blob reads at once from this host.
    pub fn with_reads(mut self, n: usize) -> RegistrySource {
        self.reads = Arc::new(Semaphore::new(n.max(1)));
        self
    }

    /// Manifests downloaded so far, and their bytes.
    pub fn manifests_read(&self) -> (u64, u64) {
        (
            self.manifests_read.load(Ordering::Relaxed),
            self.manifest_bytes.load(Ordering::Relaxed),
        )
    }

    fn counted(&self, v: Verified) -> Verified {
        self.manifests_read.fetch_add(1, Ordering::Relaxed);
        self.manifest_bytes
            .fetch_add(v.bytes.len() as u64, Ordering::Relaxed);
        v
    }

    /// The repository's valid tags, listed once per run. Some registries refuse listing
    /// to tokens that may pull (the referrers API still works there): then none, with a
    /// warning.
    async fn repo_tags(&self, repo: &str) -> Tags {
        let cell = self
            .tags
            .lock()
            .expect("tag cache lock")
            .entry(repo.to_owned())
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let name = format!("{}/{repo}", self.registry);
            let listed = match self.client.list_tags(&self.host, repo).await {
                Ok(listed) => listed,
                Err(e) => {
                    self.reporter.warn(&format!(
                        "{name}: cannot list tags, so referrer tags (sha256-<hex>, cosign's \
                         .sig/.att/.sbom) are not looked for: {}",
                        error_chain(&e).join(": ")
                    ));
                    Vec::new()
                }
            };
            Arc::new(
                valid_tags(listed, &name, self.reporter.as_ref())
                    .into_iter()
                    .collect(),
            )
        })
        .await
        .clone()
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

impl Source for RegistrySource {
    fn registry(&self) -> Option<&str> {
        Some(&self.host)
    }

    async fn digest(&self, repo: &str, tag: &str) -> Result<Option<Digest>, CopyError> {
        let head = self.client.head_manifest(&self.host, repo, tag).await?;
        Ok(head
            .digest
            .and_then(|d| d.parse::<Digest>().ok())
            .filter(|d| d.algorithm() == "sha256"))
    }

    async fn resolve(&self, repo: &str, tag: &str) -> Result<Verified, CopyError> {
        let v = self
            .client
            .get_verified(&self.host, repo, tag, None, None)
            .await?;
        Ok(self.counted(v))
    }

    async fn manifest(
        &self,
        repo: &str,
        digest: &Digest,
        media_type: Option<&str>,
        why: &'static str,
    ) -> Result<Verified, CopyError> {
        let expected = Some((digest, why));
        let v = self
            .client
            .get_verified(&self.host, repo, &digest.to_string(), expected, media_type)
            .await?;
        Ok(self.counted(v))
    }

    async fn blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<BlobRead, CopyError> {
        let permit = self
            .reads
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let resp = self
            .client
            .get_blob(&self.host, repo, &desc.digest.to_string(), offset)
            .await?;
        // The permit goes with the body: the read ends when the stream is dropped.
        let stream = resp.stream.map_err(CopyError::from).inspect_ok(move |_| {
            let _ = &permit;
        });
        Ok(BlobRead {
            offset: resp.offset,
            stream: Box::pin(stream),
        })
    }

    async fn referrers(&self, repo: &str, subject: &Digest) -> Result<Referrers, CopyError> {
        let what = || format!("the referrers of {}/{repo}@{subject}", self.host);
        let without_api = self
            .no_referrers_api
            .lock()
            .expect("referrers lock")
            .contains(repo);
        let listed = if without_api {
            None
        } else {
            let listed = self
                .client
                .get_referrers(&self.host, repo, &subject.to_string())
                .await?;
            if listed.is_none() {
                let mut absent = self.no_referrers_api.lock().expect("referrers lock");
                absent.insert(repo.to_owned());
            }
            listed
        };
        let tags = self.repo_tags(repo).await;
        let schema = fallback_tag(subject);
        let mut found = Referrers::default();
        match listed {
            Some(body) => {
                let index = Manifest::parse(&body.bytes, Some(OCI_INDEX)).map_err(|source| {
                    CopyError::Manifest {
                        what: what(),
                        source,
                    }
                })?;
                match index.kind {
                    Kind::Index(referrers) => found.listed = referrers,
                    Kind::Image { .. } => {
                        return Err(CopyError::NotReferrersIndex {
                            what: what(),
                            media_type: index.media_type,
                        });
                    }
                }
            }
            // No referrers API: the spec's fallback tag lists them, where there are any.
            None if tags.contains(&schema) => found.fallback = Some(schema.clone()),
            None => {}
        }
        found.tags.extend(
            super::COSIGN_SUFFIXES
                .map(|suffix| format!("{schema}{suffix}"))
                .into_iter()
                .filter(|t| tags.contains(t)),
        );
        Ok(found)
    }
}

/// Pushes to one registry host.
pub struct RegistryDestination {
    client: Client,
    host: String,
}

impl RegistryDestination {
    pub fn new(client: Client, host: &str) -> RegistryDestination {
        RegistryDestination {
            client,
            host: host.to_owned(),
        }
    }
}

impl RegistryDestination {
    async fn manifest_exists(&self, repo: &str, digest: &Digest) -> Result<bool, CopyError> {
        match self
            .client
            .head_manifest(&self.host, repo, &digest.to_string())
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

pub struct RegistryWriter {
    client: Client,
    upload: Upload,
}

impl BlobWriter for RegistryWriter {
    async fn write(&mut self, chunk: Chunk) -> Result<(), CopyError> {
        let chunk = chunk.into_bytes();
        Ok(self.client.upload_chunk(&mut self.upload, chunk).await?)
    }

    async fn finish(self, digest: &Digest, last: Chunk) -> Result<(), CopyError> {
        let last = last.into_bytes();
        Ok(self.client.finish_upload(self.upload, digest, last).await?)
    }
}

impl Destination for RegistryDestination {
    type Writer = RegistryWriter;

    fn name(&self) -> &str {
        &self.host
    }

    fn registry(&self) -> Option<&str> {
        Some(&self.host)
    }

    async fn tag(&self, repo: &str, tag: &str) -> Result<Option<Held>, CopyError> {
        let digest = match self.client.head_manifest(&self.host, repo, tag).await {
            Ok(head) => match head.digest.and_then(|d| d.parse::<Digest>().ok()) {
                Some(d) => d,
                // No digest header: hash what the tag serves.
                None => {
                    let body = self.client.get_manifest(&self.host, repo, tag).await?;
                    Digest::sha256_of(&body.bytes)
                }
            },
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(Held { digest, cut: None }))
    }

    async fn image(
        &self,
        repo: &str,
        digest: &Digest,
        platforms: Option<&str>,
    ) -> Result<Option<Held>, CopyError> {
        // A registry keeps no note of a cut: what it became is known after the cut.
        if platforms.is_some() || !self.manifest_exists(repo, digest).await? {
            return Ok(None);
        }
        Ok(Some(Held {
            digest: digest.clone(),
            cut: None,
        }))
    }

    async fn has_manifest(&self, repo: &str, desc: &Descriptor) -> Result<bool, CopyError> {
        self.manifest_exists(repo, &desc.digest).await
    }

    async fn has_blob(&self, repo: &str, digest: &Digest) -> Result<bool, CopyError> {
        Ok(self.client.blob_exists(&self.host, repo, digest).await?)
    }

    async fn start_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        mount_from: Option<&str>,
    ) -> Result<Start<RegistryWriter>, CopyError> {
        Ok(
            match self
                .client
                .start_upload(&self.host, repo, &desc.digest, mount_from)
                .await?
            {
                Started::Mounted => Start::Mounted,
                Started::Session(upload) => Start::Write(RegistryWriter {
                    client: self.client.clone(),
                    upload,
                }),
            },
        )
    }

    async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<Verified>, CopyError> {
        match self
            .client
            .get_verified(&self.host, repo, reference, None, None)
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn put_manifest(
        &self,
        repo: &str,
        put: Put<'_>,
        manifest: &Verified,
    ) -> Result<bool, CopyError> {
        Ok(self
            .client
            .put_manifest(
                &self.host,
                repo,
                &put.reference(&manifest.digest),
                manifest.media_type(),
                &manifest.digest,
                manifest.bytes.clone(),
            )
            .await?
            .subject_indexed)
    }
}
