//! The push side of the client: blobs (present already, mounted from another repository
//! of the same registry, or uploaded) and manifests, over the same request pipeline as
//! pulls (push token scopes, retries that re-send bodies, TLS). Bytes are sent as given:
//! a manifest is never re-serialised, so the target's digest is the source's.

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use super::{
    Access, ApiRequest, Client, RegistryError, Scheme, header_string, lock, registry_url,
    status_error, validate_host, validate_reference, validate_repo,
};
use crate::reference::Digest;

/// How a blob reached the target repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The repository had it already (one HEAD).
    Present,
    /// Mounted from another repository of the same registry: no bytes sent.
    Mounted,
    Uploaded,
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

    /// Put blob `digest` (whose bytes are `bytes`) into `repo`: nothing when the
    /// repository has it, a cross-repository mount from `mount_from` (a repository of the
    /// same registry known to hold it) when the registry allows, else an upload in one
    /// request (POST, then PUT with the bytes).
    pub async fn push_blob(
        &self,
        host: &str,
        repo: &str,
        digest: &Digest,
        bytes: Bytes,
        mount_from: Option<&str>,
    ) -> Result<Pushed, RegistryError> {
        if self.blob_exists(host, repo, digest).await? {
            return Ok(Pushed::Present);
        }
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
            StatusCode::CREATED if mount_from.is_some() => return Ok(Pushed::Mounted),
            // A registry that will not mount starts an upload session instead.
            StatusCode::ACCEPTED => {}
            _ => return Err(status_error(started, host, repo).await),
        }
        let location =
            header_string(started.headers(), header::LOCATION.as_str()).ok_or_else(|| {
                RegistryError::UploadLocation {
                    registry: host.to_string(),
                    repo: repo.to_string(),
                    location: String::new(),
                }
            })?;
        let mut target = self.upload_path(host, repo, &location)?;
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
                host,
                repo,
                path: &target,
                headers,
                body: Some(bytes),
                access,
            })
            .await?;
        if done.status() != StatusCode::CREATED {
            return Err(status_error(done, host, repo).await);
        }
        check_digest(done.headers(), digest, host, repo)?;
        Ok(Pushed::Uploaded)
    }

    /// PUT a manifest as its bytes are, under `reference` (a tag, or its digest). The
    /// registry must answer with the digest of those bytes.
    pub async fn put_manifest(
        &self,
        host: &str,
        repo: &str,
        reference: &str,
        media_type: &str,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<(), RegistryError> {
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
        check_digest(resp.headers(), digest, host, repo)
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
