//! The push side of the client: blobs (present already, mounted from another repository
//! of the same registry, or uploaded) and manifests, over the same request pipeline as
//! pulls (push token scopes, retries that re-send bodies, TLS). Bytes are sent as given:
//! a manifest is never re-serialised, so the target's digest is the source's.

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use super::{
    Access, ApiRequest, Client, RegistryError, Scheme, backoff, header_string, lock, registry_url,
    retry_after, status_error, validate_host, validate_reference, validate_repo,
};
use crate::reference::Digest;

/// An upload session a registry opened: where the next bytes go, and how many it holds.
#[derive(Debug)]
pub struct Upload {
    host: String,
    repo: String,
    /// Path and query of the session, from the registry's latest `Location`.
    location: String,
    offset: u64,
    access: Access,
}

impl Upload {
    /// Bytes the registry holds in this session.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// What asking for an upload got.
#[derive(Debug)]
pub enum Started {
    /// The registry mounted the blob from the other repository: nothing to send.
    Mounted,
    Session(Upload),
}

/// What a registry answered to a manifest PUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutManifest {
    /// It sent `OCI-Subject`: it has the referrers API and lists the manifest under its
    /// subject itself. Without it the client keeps the `<alg>-<hex>` fallback tag (OCI
    /// distribution spec 1.1).
    pub subject_indexed: bool,
}

impl Client {
    /// Whether `repo` at `host` holds blob `digest` (a HEAD, with push access, as the
    /// push that may follow needs it anyway).
    pub async fn blob_exists(
        &self,
        host: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        validate_host(host)?;
        validate_repo(repo)?;
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self
            .api_request(&ApiRequest {
                method: Method::HEAD,
                host,
                repo,
                path: &path,
                headers: HeaderMap::new(),
                body: None,
                access: push(None),
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error(resp, host, repo).await),
        }
    }

    /// Open an upload session for blob `digest` in `repo` (POST), asking for a
    /// cross-repository mount from `mount_from` first when given: a registry that mounts
    /// answers 201 and no bytes are needed; one that will not opens a session instead.
    pub async fn start_upload(
        &self,
        host: &str,
        repo: &str,
        digest: &Digest,
        mount_from: Option<&str>,
    ) -> Result<Started, RegistryError> {
        validate_host(host)?;
        validate_repo(repo)?;
        let mut path = format!("/v2/{repo}/blobs/uploads/");
        if let Some(from) = mount_from {
            validate_repo(from)?;
            path.push_str(&format!("?mount={digest}&from={from}"));
        }
        let access = push(mount_from);
        let started = self
            .api_request(&ApiRequest {
                method: Method::POST,
                host,
                repo,
                path: &path,
                headers: HeaderMap::new(),
                body: None,
                access: access.clone(),
            })
            .await?;
        match started.status() {
            StatusCode::CREATED if mount_from.is_some() => return Ok(Started::Mounted),
            StatusCode::ACCEPTED => {}
            _ => return Err(status_error(started, host, repo).await),
        }
        let location = self.session_location(host, repo, started.headers())?;
        Ok(Started::Session(Upload {
            host: host.to_owned(),
            repo: repo.to_owned(),
            location,
            offset: 0,
            access,
        }))
    }

    /// Append `chunk` to the session (PATCH with its Content-Range). When a PATCH fails
    /// part-way (a 5xx, a dropped connection), the registry is asked how much it kept
    /// (GET on the session) and only the rest is sent again, up to the client's retry
    /// count: a failed PATCH is never sent again before the session is asked.
    pub async fn upload_chunk(
        &self,
        upload: &mut Upload,
        chunk: Bytes,
    ) -> Result<(), RegistryError> {
        let start = upload.offset;
        let end = start + chunk.len() as u64;
        let mut resumes = 0;
        while upload.offset < end {
            let rest = chunk.slice((upload.offset - start) as usize..);
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            let range = format!("{}-{}", upload.offset, end - 1);
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&range).expect("digits and '-' only"),
            );
            let sent = self
                .api_request(&ApiRequest {
                    method: Method::PATCH,
                    host: &upload.host,
                    repo: &upload.repo,
                    path: &upload.location,
                    headers,
                    body: Some(rest),
                    access: upload.access.clone(),
                })
                .await;
            let (failure, wait) = match sent {
                Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                    upload.location =
                        self.session_location(&upload.host, &upload.repo, resp.headers())?;
                    upload.offset = received(resp.headers()).unwrap_or(end);
                    continue;
                }
                Ok(resp) => {
                    let wait = retry_after(resp.headers());
                    (status_error(resp, &upload.host, &upload.repo).await, wait)
                }
                Err(e) => (e, None),
            };
            if resumes >= self.inner.retries.max(1) {
                return Err(failure);
            }
            // The pipeline does not retry a PATCH, so the pause it would make before a
            // retry (a rate limit's Retry-After, or backoff) is made here.
            let delay = wait.unwrap_or_else(|| backoff(resumes));
            resumes += 1;
            tracing::warn!(
                "{failure}; asking {} in {delay:?} how much of the upload it kept",
                upload.host
            );
            tokio::time::sleep(delay).await;
            let kept = self.upload_status(upload).await.map_err(|_| failure)?;
            if kept < start {
                return Err(RegistryError::UploadLost {
                    registry: upload.host.clone(),
                    repo: upload.repo.clone(),
                    kept,
                    sent: start,
                });
            }
            upload.offset = kept.min(end);
        }
        Ok(())
    }

    /// Close the session with `last` as its final bytes (empty after chunks): the
    /// registry checks the whole blob against `digest`.
    pub async fn finish_upload(
        &self,
        upload: Upload,
        digest: &Digest,
        last: Bytes,
    ) -> Result<(), RegistryError> {
        let mut target = upload.location.clone();
        target.push(if target.contains('?') { '&' } else { '?' });
        target.push_str(&format!("digest={digest}"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let done = self
            .api_request(&ApiRequest {
                method: Method::PUT,
                host: &upload.host,
                repo: &upload.repo,
                path: &target,
                headers,
                body: Some(last),
                access: upload.access.clone(),
            })
            .await?;
        if done.status() != StatusCode::CREATED {
            return Err(status_error(done, &upload.host, &upload.repo).await);
        }
        check_digest(done.headers(), digest, &upload.host, &upload.repo)
    }

    /// How many bytes the session holds (GET on it: 204 with `Range: 0-<last>`).
    async fn upload_status(&self, upload: &mut Upload) -> Result<u64, RegistryError> {
        let resp = self
            .api_request(&ApiRequest {
                method: Method::GET,
                host: &upload.host,
                repo: &upload.repo,
                path: &upload.location,
                headers: HeaderMap::new(),
                body: None,
                access: upload.access.clone(),
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp, &upload.host, &upload.repo).await);
        }
        if header_string(resp.headers(), header::LOCATION.as_str()).is_some() {
            upload.location = self.session_location(&upload.host, &upload.repo, resp.headers())?;
        }
        Ok(received(resp.headers()).unwrap_or(0))
    }

    /// The session URL a response's `Location` names, as a path and query on `host`.
    fn session_location(
        &self,
        host: &str,
        repo: &str,
        headers: &HeaderMap,
    ) -> Result<String, RegistryError> {
        let location = header_string(headers, header::LOCATION.as_str()).ok_or_else(|| {
            RegistryError::UploadLocation {
                registry: host.to_string(),
                repo: repo.to_string(),
                location: String::new(),
            }
        })?;
        self.upload_path(host, repo, &location)
    }

    /// PUT a manifest as its bytes are, under `reference` (a tag, or its digest). The
    /// registry must answer with the digest of those bytes; whether it indexed the
    /// manifest's subject is in the answer.
    pub async fn put_manifest(
        &self,
        host: &str,
        repo: &str,
        reference: &str,
        media_type: &str,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<PutManifest, RegistryError> {
        validate_host(host)?;
        validate_repo(repo)?;
        validate_reference(reference)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|_| RegistryError::InvalidArgument {
                what: "media type",
                value: media_type.to_string(),
                reason: "not a valid header value",
            })?,
        );
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .api_request(&ApiRequest {
                method: Method::PUT,
                host,
                repo,
                path: &path,
                headers,
                body: Some(bytes),
                access: push(None),
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp, host, repo).await);
        }
        check_digest(resp.headers(), digest, host, repo)?;
        Ok(PutManifest {
            subject_indexed: resp.headers().contains_key("oci-subject"),
        })
    }

    /// An upload session's `Location` as a path and query on `host` (relative, or
    /// absolute on the same host: a session elsewhere would need credentials elsewhere).
    fn upload_path(&self, host: &str, repo: &str, location: &str) -> Result<String, RegistryError> {
        let scheme = lock(&self.inner.schemes)
            .get(host)
            .copied()
            .unwrap_or(Scheme::Https);
        let base = registry_url(scheme, host, "/")?;
        let url = base
            .join(location)
            .ok()
            .filter(|u| same_origin(u, &base))
            .ok_or_else(|| RegistryError::UploadLocation {
                registry: host.to_string(),
                repo: repo.to_string(),
                location: location.to_string(),
            })?;
        Ok(match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        })
    }
}

fn push(mount_from: Option<&str>) -> Access {
    Access::Push {
        mount_from: mount_from.map(str::to_owned),
    }
}

/// The bytes an upload session holds, from its `Range: 0-<last>` header. distribution
/// answers `0-0` for an empty session too; we never send a one-byte chunk, so it is 0.
fn received(headers: &HeaderMap) -> Option<u64> {
    let range = header_string(headers, header::RANGE.as_str())?;
    let (_, last) = range.trim_start_matches("bytes=").split_once('-')?;
    match last.trim().parse::<u64>().ok()? {
        0 => Some(0),
        l => Some(l + 1),
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

/// A `Docker-Content-Digest` that names other bytes than the ones sent means the
/// registry stored something else.
fn check_digest(
    headers: &HeaderMap,
    digest: &Digest,
    host: &str,
    repo: &str,
) -> Result<(), RegistryError> {
    match header_string(headers, "docker-content-digest") {
        Some(got) if got != digest.to_string() => Err(RegistryError::PushedDigest {
            registry: host.to_string(),
            repo: repo.to_string(),
            expected: digest.to_string(),
            got,
        }),
        _ => Ok(()),
    }
}
