//! A received bundle as a source: its images as its index.json named them, their
//! manifests and blobs read from the store's pool, where `bundle::receive` verified
//! them on arrival. The store destination then links and publishes them as it does a
//! fetch's.

use std::collections::HashMap;
use std::path::PathBuf;

use super::store::{file_stream, read_file};
use super::{BlobRead, CopyError, Referrers, Source};
use crate::bundle::Image;
use crate::manifest::{Descriptor, Verified};
use crate::reference::Digest;
use crate::store::StoreError;

pub struct BundleSource {
    pool: PathBuf,
    /// Each tag's index.json entry, by repository and tag.
    tags: HashMap<(String, String), Descriptor>,
}

impl BundleSource {
    pub fn new(pool: PathBuf, images: &[Image]) -> BundleSource {
        let tags = images
            .iter()
            .filter_map(|i| {
                let tag = i.tag.clone()?;
                Some(((i.repo.clone(), tag), i.descriptor.clone()))
            })
            .collect();
        BundleSource { pool, tags }
    }

    fn entry(&self, repo: &str, tag: &str) -> Result<&Descriptor, CopyError> {
        self.tags
            .get(&(repo.to_owned(), tag.to_owned()))
            .ok_or_else(|| {
                StoreError::UnknownTag {
                    name: repo.to_owned(),
                    tag: tag.to_owned(),
                }
                .into()
            })
    }
}

impl Source for BundleSource {
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
        why: &'static str,
    ) -> Result<Verified, CopyError> {
        let bytes = read_file(self.pool.join(digest.hex())).await?;
        let what = format!("{repo}@{digest} of the bundle");
        super::verified_as(bytes, media_type, what, digest, why)
    }

    async fn blob(
        &self,
        _repo: &str,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<BlobRead, CopyError> {
        file_stream(self.pool.join(desc.digest.hex()), offset).await
    }

    /// Referrers are images of the bundle of their own, copied after the tags.
    async fn referrers(&self, _repo: &str, _subject: &Digest) -> Result<Referrers, CopyError> {
        Ok(Referrers::default())
    }
}
