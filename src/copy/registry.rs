//! A registry as an endpoint: as a source it pulls (verifying every manifest against
//! the digest asked for or announced), as a destination it pushes (HEAD before sending,
//! cross-repository mounts, chunked uploads that resume).

use bytes::Bytes;
use futures::TryStreamExt;

use super::{BlobRead, BlobWriter, CopyError, Destination, Source, Start, fallback_tag};
use crate::manifest::{Descriptor, Kind, Manifest, OCI_INDEX, Verified};
use crate::reference::Digest;
use crate::registry::{Client, Started, Upload};

/// Pulls from one registry host.
pub struct RegistrySource {
    client: Client,
    /// The host the API is reached at (`registry-1.docker.io` for docker.io).
    host: String,
}

impl RegistrySource {
    pub fn new(client: Client, host: &str) -> RegistrySource {
        RegistrySource {
            client,
            host: host.to_owned(),
        }
    }
}

impl Source for RegistrySource {
    fn registry(&self) -> Option<&str> {
        Some(&self.host)
    }

    async fn resolve(&self, repo: &str, tag: &str) -> Result<Verified, CopyError> {
        Ok(self
            .client
            .get_verified(&self.host, repo, tag, None, None)
            .await?)
    }

    async fn manifest(
        &self,
        repo: &str,
        digest: &Digest,
        media_type: Option<&str>,
    ) -> Result<Verified, CopyError> {
        let expected = Some((digest, "the digest asked for"));
        Ok(self
            .client
            .get_verified(&self.host, repo, &digest.to_string(), expected, media_type)
            .await?)
    }

    async fn blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<BlobRead, CopyError> {
        let resp = self
            .client
            .get_blob(&self.host, repo, &desc.digest.to_string(), offset)
            .await?;
        Ok(BlobRead {
            offset: resp.offset,
            stream: Box::pin(resp.stream.map_err(CopyError::from)),
        })
    }

    async fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<Descriptor>, CopyError> {
        let what = || format!("the referrers of {}/{repo}@{subject}", self.host);
        let listed = match self
            .client
            .get_referrers(&self.host, repo, &subject.to_string())
            .await?
        {
            Some(body) => Manifest::parse(&body.bytes, Some(OCI_INDEX)).map_err(|source| {
                CopyError::Manifest {
                    what: what(),
                    source,
                }
            })?,
            // No referrers API: the spec's fallback tag lists them, where there are any.
            None => match self
                .client
                .get_verified(&self.host, repo, &fallback_tag(subject), None, None)
                .await
            {
                Ok(v) => v.manifest,
                Err(e) if e.is_not_found() => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            },
        };
        match listed.kind {
            Kind::Index(referrers) => Ok(referrers),
            Kind::Image { .. } => Err(CopyError::NotReferrersIndex {
                what: what(),
                media_type: listed.media_type,
            }),
        }
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

pub struct RegistryWriter {
    client: Client,
    upload: Upload,
}

impl BlobWriter for RegistryWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), CopyError> {
        Ok(self.client.upload_chunk(&mut self.upload, chunk).await?)
    }

    async fn finish(self, digest: &Digest, last: Bytes) -> Result<(), CopyError> {
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

    async fn tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>, CopyError> {
        match self.client.head_manifest(&self.host, repo, tag).await {
            Ok(head) => match head.digest.and_then(|d| d.parse::<Digest>().ok()) {
                Some(d) => Ok(Some(d)),
                // No digest header: hash what the tag serves.
                None => {
                    let body = self.client.get_manifest(&self.host, repo, tag).await?;
                    Ok(Some(Digest::sha256_of(&body.bytes)))
                }
            },
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn has_manifest(&self, repo: &str, digest: &Digest) -> Result<bool, CopyError> {
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
        reference: &str,
        manifest: &Verified,
    ) -> Result<bool, CopyError> {
        Ok(self
            .client
            .put_manifest(
                &self.host,
                repo,
                reference,
                manifest.media_type(),
                &manifest.digest,
                manifest.bytes.clone(),
            )
            .await?
            .subject_indexed)
    }
}
