//! The store as a source: manifests and blobs read from a repository's layout through a
//! read-only view (no lock), tags from the index.json the plan read.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{BlobRead, CopyError, Referrers, Source};
use crate::manifest::{Descriptor, Verified};
use crate::reference::Digest;
use crate::store::{StoreError, StoreView, TagIndex};

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

async fn blocking<T: Send + 'static>(
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
        self.manifest(repo, &entry.digest, Some(&entry.media_type))
            .await
    }

    async fn manifest(
        &self,
        repo: &str,
        digest: &Digest,
        media_type: Option<&str>,
    ) -> Result<Verified, CopyError> {
        let (view, name, d) = (self.view.clone(), repo.to_owned(), digest.clone());
        let bytes = blocking(move || view.read_manifest(&name, &d)).await?;
        let what = format!("{repo}@{digest} in the store");
        let v = Verified::new(Bytes::from(bytes), media_type).map_err(|source| {
            CopyError::Manifest {
                what: what.clone(),
                source,
            }
        })?;
        if v.digest != *digest {
            return Err(CopyError::ManifestDigest {
                what,
                expected: digest.clone(),
                actual: v.digest,
                origin: "its file name; run `static-registry verify --repair`",
            });
        }
        Ok(v)
    }

    async fn blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<BlobRead, CopyError> {
        let path = self.view.blob_path(repo, &desc.digest)?;
        let open = path.clone();
        let file = blocking(move || {
            let mut f = std::fs::File::open(&open).map_err(StoreError::io("open", &open))?;
            f.seek(SeekFrom::Start(offset))
                .map_err(StoreError::io("seek", &open))?;
            Ok(f)
        })
        .await?;
        // Reads on a blocking thread, one buffer at a time, as the engine asks.
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

    async fn referrers(&self, repo: &str, subject: &Digest) -> Result<Referrers, CopyError> {
        let (view, name, subject) = (self.view.clone(), repo.to_owned(), subject.clone());
        let listed = blocking(move || view.read_referrers(&name, &subject)).await?;
        Ok(Referrers {
            listed,
            ..Referrers::default()
        })
    }
}
