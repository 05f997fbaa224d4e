//! HTTP client for OCI/Docker v2 registries: pulls here, pushes in `push`.
//!
//! It resolves the scheme per host, authenticates (anonymous, Basic, Bearer
//! tokens with pull or push scopes), retries transient failures and hands raw
//! manifest bytes and blob byte streams to the caller (or sends the caller's). It
//! never writes files and never prints.

mod auth;
mod error;
mod push;
#[cfg(test)]
mod tests;

pub use error::{OciError, RegistryError, Remedy};
pub use push::{PutManifest, Started, Upload};

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use rand::Rng;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::manifest::{Manifest, OCI_INDEX, Verified};
use crate::reference::{self, Digest};
use auth::{AuthScheme, Credential, TokenSlot};
use error::{error_chain, from_body_error, from_transport};

/// Manifest media types we ask for, in order of preference: indexes first so
/// multi-arch images are mirrored whole. Schema 1 is deliberately left out:
/// it is deprecated and unsupported downstream, so a schema-1-only image
/// should fail at the registry rather than be mirrored half-usable.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// The `Accept` header sent with manifest requests: [`MANIFEST_MEDIA_TYPES`] joined.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// containerd's manifest size cap: real manifests are a few KiB, so anything
/// bigger is a broken or hostile registry.
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 4 << 20;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default per-read stall timeout, instead of a total one: blobs can take hours.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REDIRECTS: usize = 10;
const MAX_ERROR_BODY: u64 = 64 << 10;
const MAX_TOKEN_BODY: u64 = 1 << 20;
/// One page of tags; 64 MiB is over a million tags.
const MAX_TAG_LIST_BYTES: u64 = 64 << 20;
/// Bounds a registry whose `Link` headers never end.
const MAX_TAG_PAGES: usize = 10_000;
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);
/// Sent with OAuth2 refresh-token grants, which require a client id.
const OAUTH_CLIENT_ID: &str = "static-registry";

#[derive(Clone)]
pub struct ClientOptions {
    /// false = skopeo's meaning: allow plain http and unverified TLS.
    pub tls_verify: bool,
    /// Extra PEM CA files (--ca-cert), trusted in addition to the system roots.
    pub ca_certs: Vec<PathBuf>,
    /// Directory laid out like containers-certs.d: `*.crt` CA files, and
    /// `name.cert` + `name.key` client certificate pairs (--cert-dir).
    pub cert_dir: Option<PathBuf>,
    /// --creds user:pass, used for every registry.
    pub creds: Option<(String, String)>,
    /// --authfile (docker config.json / containers auth.json format).
    pub authfile: Option<PathBuf>,
    pub user_agent: String,
    pub max_manifest_bytes: u64,
    pub retries: u32,
    /// A response that sends no byte for this long fails (and a blob resumes).
    pub stall_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            tls_verify: true,
            ca_certs: Vec::new(),
            cert_dir: None,
            creds: None,
            authfile: None,
            user_agent: concat!("static-registry/", env!("CARGO_PKG_VERSION")).to_string(),
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            retries: 3,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

// Hand-written so the password never reaches a log line.
impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("tls_verify", &self.tls_verify)
            .field("ca_certs", &self.ca_certs)
            .field("cert_dir", &self.cert_dir)
            .field("creds", &self.creds.as_ref().map(|(u, _)| (u, "***")))
            .field("authfile", &self.authfile)
            .field("user_agent", &self.user_agent)
            .field("max_manifest_bytes", &self.max_manifest_bytes)
            .field("retries", &self.retries)
            .field("stall_timeout", &self.stall_timeout)
            .finish()
    }
}

/// Result of a manifest HEAD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`.
    pub digest: Option<String>,
    /// `Content-Type` without parameters, lower-cased.
    pub media_type: Option<String>,
    /// `Content-Length`.
    pub size: Option<u64>,
}

/// A manifest as the registry sent it. The digest header is the registry's
/// claim only; the caller must hash `bytes` itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestBody {
    pub bytes: Bytes,
    /// `Content-Type` without parameters, lower-cased.
    pub media_type: Option<String>,
    /// `Docker-Content-Digest`.
    pub digest: Option<String>,
}

/// A blob download in progress.
pub struct BlobResponse {
    /// Where the body starts in the blob: the requested offset when the
    /// server honoured the Range request, else 0 (restart from scratch).
    pub offset: u64,
    /// Length of *this body* (from `offset` to the end), if the server said.
    pub content_length: Option<u64>,
    /// The body. Not retried here: on an error, call `get_blob` again with the
    /// number of bytes already stored as offset.
    pub stream: BoxStream<'static, Result<Bytes, RegistryError>>,
}

impl fmt::Debug for BlobResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobResponse")
            .field("offset", &self.offset)
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Https,
    Http,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

/// Registry client. Cheap to clone; clones share connections, tokens and
/// per-host state.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    tls_verify: bool,
    creds: Option<(String, String)>,
    auth_files: Vec<PathBuf>,
    explicit_authfile: Option<PathBuf>,
    max_manifest_bytes: u64,
    retries: u32,
    /// Scheme that worked for each host; absent = not yet probed.
    schemes: Mutex<HashMap<String, Scheme>>,
    /// Last challenge seen per host, so later requests authenticate up front
    /// instead of paying an anonymous 401 round trip each time.
    challenges: Mutex<HashMap<String, AuthScheme>>,
    /// Credential lookups per (host, repo); async mutex so a credential
    /// helper runs once, not once per concurrent request.
    credentials: tokio::sync::Mutex<HashMap<(String, String), Option<Credential>>>,
    tokens: auth::TokenCache,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("tls_verify", &self.inner.tls_verify)
            .field("retries", &self.inner.retries)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a request needs the registry to allow, as token scopes: pulling from `repo`, or
/// pushing to it (and, for a cross-repository mount, pulling from `from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Access {
    Pull,
    Push {
        mount_from: Option<String>,
    },
    /// The repository list (`/v2/_catalog`); `repo` is ignored.
    Catalog,
}

impl Access {
    /// The token scopes for `repo` (distribution's `repository:<name>:<actions>`).
    fn scopes(&self, repo: &str) -> Vec<String> {
        match self {
            Access::Pull => vec![format!("repository:{repo}:pull")],
            Access::Push { mount_from } => std::iter::once(format!("repository:{repo}:pull,push"))
                .chain(
                    mount_from
                        .iter()
                        .map(|from| format!("repository:{from}:pull")),
                )
                .collect(),
            Access::Catalog => vec!["registry:catalog:*".to_owned()],
        }
    }
}

/// One request to a registry's API: where, what it needs allowed, and a body that every
/// attempt (retry, re-authentication) sends again.
pub(crate) struct ApiRequest<'a> {
    pub method: Method,
    pub host: &'a str,
    pub repo: &'a str,
    /// Path and query, e.g. `/v2/<repo>/blobs/uploads/?digest=...`.
    pub path: &'a str,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    pub access: Access,
}

/// An Authorization header and, for a token taken from the cache, what is
/// needed to drop it if the registry rejects it.
struct Authz {
    header: HeaderValue,
    cached_token: Option<(TokenSlot, String)>,
    /// Basic credentials, sent as they are: a 401 then means they were refused.
    basic: bool,
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Client, RegistryError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(opts.user_agent.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(opts.stall_timeout)
            // reqwest already drops Authorization (and cookies) when a redirect
            // changes host, port or scheme (redirect::remove_sensitive_headers,
            // applied whatever the policy), so tokens never reach blob storage
            // or CDNs; we only pin the hop limit.
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            // Blob storage has no business knowing which registry URL sent us.
            .referer(false)
            .tcp_keepalive(Duration::from_secs(60));
        if !opts.tls_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let (roots, identity) = load_tls_material(&opts)?;
        if !roots.is_empty() {
            builder = builder.tls_certs_merge(roots);
        }
        if let Some(id) = identity {
            builder = builder.identity(id);
        }
        let http = builder
            .build()
            .map_err(|e| RegistryError::Config(error_chain(&e)))?;
        let auth_files = auth::candidate_files(opts.authfile.as_deref(), &|k| std::env::var_os(k));
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                tls_verify: opts.tls_verify,
                creds: opts.creds,
                auth_files,
                explicit_authfile: opts.authfile,
                max_manifest_bytes: opts.max_manifest_bytes,
                retries: opts.retries,
                schemes: Mutex::new(HashMap::new()),
                challenges: Mutex::new(HashMap::new()),
                credentials: tokio::sync::Mutex::new(HashMap::new()),
                tokens: auth::TokenCache::default(),
            }),
        })
    }

    /// HEAD /v2/<repo>/manifests/<reference> with the Accept header of all
    /// manifest types. A missing manifest is `Err` with
    /// [`RegistryError::is_not_found`] true (HEAD responses carry no OCI code).
    pub async fn head_manifest(
        &self,
        host: &str,
        repo: &str,
        reference: &str,
    ) -> Result<ManifestHead, RegistryError> {
        validate_host(host)?;
        validate_repo(repo)?;
        validate_reference(reference)?;
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .registry_request(Method::HEAD, host, repo, &path, accept_manifests())
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp, host, repo).await);
        }
        let h = resp.headers();
        Ok(ManifestHead {
            digest: header_string(h, "docker-content-digest"),
            media_type: media_type(h),
            // Read the header, not the body size hint, which is 0 for HEAD.
            size: content_length(h),
        })
    }

    /// GET the manifest (see `get_document` for the size cap).
    pub async fn get_manifest(
        &self,
        host: &str,
        repo: &str,
        reference: &str,
    ) -> Result<ManifestBody, RegistryError> {
        validate_host(host)?;
        validate_repo(repo)?;
        validate_reference(reference)?;
        let path = format!("/v2/{repo}/manifests/{reference}");
        self.get_document(host, repo, &path, accept_manifests())
            .await
    }

    /// GET a manifest and make it a [`Verified`] value: its bytes must hash to
    /// `expected` (a digest and where it came from, for the error), else, for a tag, to
    /// the registry's `Docker-Content-Digest` when that is a sha256; then parsed, with
    /// `media_type` (its descriptor's) before the response's Content-Type.
    pub async fn get_verified(
        &self,
        host: &str,
        repo: &str,
        reference: &str,
        expected: Option<(&Digest, &'static str)>,
        media_type: Option<&str>,
    ) -> Result<Verified, RegistryError> {
        let body = self.get_manifest(host, repo, reference).await?;
        let sep = if reference.contains(':') { '@' } else { ':' };
        let named = || format!("{host}/{repo}{sep}{reference}");
        let announced = body
            .digest
            .as_deref()
            .filter(|d| d.starts_with("sha256:"))
            .and_then(|d| d.parse::<Digest>().ok());
        let expected = expected.or_else(|| {
            announced
                .as_ref()
                .map(|d| (d, "its Docker-Content-Digest header"))
        });
        // The digest first: bytes that are not what was asked for are that, whatever
        // they parse as.
        let digest = Digest::sha256_of(&body.bytes);
        if let Some((d, origin)) = expected
            && *d != digest
        {
            return Err(RegistryError::ManifestDigest {
                reference: named(),
                expected: d.to_string(),
                actual: digest.to_string(),
                origin,
            });
        }
        let manifest = Manifest::parse(&body.bytes, media_type.or(body.media_type.as_deref()))
            .map_err(|source| RegistryError::Manifest {
                reference: named(),
                source,
            })?;
        Ok(Verified {
            digest,
            bytes: body.bytes,
            manifest,
        })
    }

    /// GET /v2/<repo>/referrers/<digest>: the OCI index of manifests whose `subject` is
    /// `digest`. `Ok(None)` when the registry does not offer the referrers API (404, as
    /// the distribution spec tells clients to expect; 405/501 from some proxies): the
    /// caller falls back to the `sha256-<hex>` tag schema.
    pub async fn get_referrers(
        &self,
        host: &str,
        repo: &str,
        digest: &str,
    ) -> Result<Option<ManifestBody>, RegistryError> {
        validate_host(host)?;
        validate_repo(repo)?;
        validate_digest(digest)?;
        let path = format!("/v2/{repo}/referrers/{digest}");
        let mut accept = HeaderMap::new();
        // The referrers API always answers with an OCI index.
        accept.insert(header::ACCEPT, HeaderValue::from_static(OCI_INDEX));
        match self.get_document(host, repo, &path, accept).await {
            Ok(body) => Ok(Some(body)),
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(RegistryError::Status {
                status: 405 | 501, ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// GET a JSON document (manifest, referrers index), read fully but capped at
    /// `max_manifest_bytes`, counted while streaming so a lying or absent Content-Length
    /// cannot get past it.
    async fn get_document(
        &self,
        host: &str,
        repo: &str,
        path: &str,
        accept: HeaderMap,
    ) -> Result<ManifestBody, RegistryError> {
        let limit = self.inner.max_manifest_bytes;
        let mut attempt = 0;
        loop {
            let resp = self
                .registry_request(Method::GET, host, repo, path, accept.clone())
                .await?;
            if !resp.status().is_success() {
                return Err(status_error(resp, host, repo).await);
            }
            let digest = header_string(resp.headers(), "docker-content-digest");
            let media_type = media_type(resp.headers());
            let url = resp.url().to_string();
            match read_capped(resp, limit).await {
                Ok(Some(bytes)) => {
                    return Ok(ManifestBody {
                        bytes,
                        media_type,
                        digest,
                    });
                }
                Ok(None) => return Err(RegistryError::ManifestTooLarge { url, limit }),
                // A manifest is small, so re-reading it whole is the simplest
                // recovery from a connection dropped mid-body.
                Err(e) if e.is_transient() && attempt < self.inner.retries => {
                    let delay = backoff(attempt);
                    tracing::warn!(
                        "{e}; retry {}/{} in {delay:?}",
                        attempt + 1,
                        self.inner.retries
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every tag of a repository, following `Link: <...>; rel="next"` pagination (some
    /// registries hold tens of thousands of tags). Tags are returned as the registry sent
    /// them; the caller validates them before they touch a path.
    pub async fn list_tags(&self, host: &str, repo: &str) -> Result<Vec<String>, RegistryError> {
        validate_host(host)?;
        validate_repo(repo)?;
        let path = format!("/v2/{repo}/tags/list");
        self.list_pages(host, repo, Access::Pull, path, "tags")
            .await
    }

    /// The repositories the registry lists at `/v2/_catalog` (registries may refuse it,
    /// or list only what the credentials may pull), across pages. Names as sent.
    pub async fn catalog(&self, host: &str) -> Result<Vec<String>, RegistryError> {
        validate_host(host)?;
        let path = "/v2/_catalog?n=1000".to_owned();
        self.list_pages(host, "", Access::Catalog, path, "repositories")
            .await
    }

    /// The `field` list of each page from `path` on, following `Link` headers.
    async fn list_pages(
        &self,
        host: &str,
        repo: &str,
        access: Access,
        mut path: String,
        field: &str,
    ) -> Result<Vec<String>, RegistryError> {
        let mut items = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            let resp = self
                .api_request(&ApiRequest {
                    method: Method::GET,
                    host,
                    repo,
                    path: &path,
                    headers: HeaderMap::new(),
                    body: None,
                    access: access.clone(),
                })
                .await?;
            if !resp.status().is_success() {
                return Err(status_error(resp, host, repo).await);
            }
            let next = next_page(resp.headers(), resp.url())?;
            let url = resp.url().to_string();
            let body = read_capped(resp, MAX_TAG_LIST_BYTES)
                .await?
                .ok_or_else(|| RegistryError::Status {
                    url: url.clone(),
                    status: 200,
                    oci: None,
                })?;
            let page: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
                .map_err(|e| RegistryError::Body {
                    url: url.clone(),
                    cause: format!("not a JSON object: {e}"),
                })?;
            match page.get(field) {
                None | Some(serde_json::Value::Null) => {}
                Some(list) => {
                    items.extend(serde_json::from_value::<Vec<String>>(list.clone()).map_err(
                        |e| RegistryError::Body {
                            url: url.clone(),
                            cause: format!("`{field}` is not a list of names: {e}"),
                        },
                    )?)
                }
            }
            match next {
                Some(p) if p != path => path = p,
                _ => return Ok(items),
            }
        }
        Err(RegistryError::Body {
            url: registry_url(Scheme::Https, host, &path)?.to_string(),
            cause: format!("more than {MAX_TAG_PAGES} pages; refusing to follow further"),
        })
    }

    /// GET /v2/<repo>/blobs/<digest>, from byte `offset` (Range request) when
    /// non-zero. Redirects to blob storage/CDNs are followed without
    /// forwarding Authorization to another host. Check
    /// [`BlobResponse::offset`]: the server may restart from 0.
    pub async fn get_blob(
        &self,
        host: &str,
        repo: &str,
        digest: &str,
        offset: u64,
    ) -> Result<BlobResponse, RegistryError> {
        validate_host(host)?;
        validate_repo(repo)?;
        validate_digest(digest)?;
        let path = format!("/v2/{repo}/blobs/{digest}");
        let mut want = offset;
        loop {
            let mut headers = HeaderMap::new();
            if want > 0 {
                let range = HeaderValue::from_str(&format!("bytes={want}-"))
                    .expect("digits and ASCII only");
                headers.insert(header::RANGE, range);
            }
            let resp = self
                .registry_request(Method::GET, host, repo, &path, headers)
                .await?;
            let start = match resp.status() {
                StatusCode::OK => {
                    if want > 0 {
                        tracing::debug!(url = %resp.url(), "server ignored Range; body starts at 0");
                    }
                    0
                }
                StatusCode::PARTIAL_CONTENT => {
                    let got = content_range_start(resp.headers());
                    if got == Some(want) {
                        want
                    } else if want > 0 {
                        // A range we did not ask for is useless to the caller;
                        // fetching the whole blob is always correct.
                        tracing::warn!(
                            url = %resp.url(),
                            "asked for bytes from {want}, got Content-Range starting at {got:?}; restarting from 0"
                        );
                        want = 0;
                        continue;
                    } else {
                        return Err(RegistryError::Status {
                            url: resp.url().to_string(),
                            status: 206,
                            oci: None,
                        });
                    }
                }
                // The stored part is probably longer than the blob: start over.
                StatusCode::RANGE_NOT_SATISFIABLE if want > 0 => {
                    tracing::debug!(url = %resp.url(), "range from {want} not satisfiable; restarting from 0");
                    want = 0;
                    continue;
                }
                _ => return Err(status_error(resp, host, repo).await),
            };
            let content_length = content_length(resp.headers());
            let url = resp.url().to_string();
            let stream = resp
                .bytes_stream()
                .map_err(move |e| from_body_error(e, &url))
                .boxed();
            return Ok(BlobResponse {
                offset: start,
                content_length,
                stream,
            });
        }
    }

    // -----------------------------------------------------------------------
    // Request pipeline: auth (outer) → retries → scheme choice → reqwest.

    /// Sends a request to the registry API, answering 401 challenges. The
    /// returned response may have any status; a final 401 is left to the caller.
    /// A pull request: GET or HEAD under the repository's pull scope, no body.
    async fn registry_request(
        &self,
        method: Method,
        host: &str,
        repo: &str,
        path: &str,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, RegistryError> {
        self.api_request(&ApiRequest {
            method,
            host,
            repo,
            path,
            headers,
            body: None,
            access: Access::Pull,
        })
        .await
    }

    pub(crate) async fn api_request(
        &self,
        req: &ApiRequest<'_>,
    ) -> Result<reqwest::Response, RegistryError> {
        let (host, repo) = (req.host, req.repo);
        // Anonymous (or remembered auth), then at most two more rounds: one
        // after the first challenge and one to replace a stale cached token.
        let mut rounds = 0;
        loop {
            let authz = self.authorization(host, repo, &req.access).await?;
            let send = || self.send_registry(req, authz.as_ref());
            // A PATCH appends to an upload session at an offset, and a failed one may
            // have left part of its body there: sent again blind it is refused (416) or,
            // by a registry that ignores Content-Range, appended twice. Its caller asks
            // the session what it holds and sends the rest instead.
            let resp = if req.method == Method::PATCH {
                send().await?
            } else {
                self.with_retries(send).await?
            };
            if resp.status() != StatusCode::UNAUTHORIZED || rounds >= 2 {
                return Ok(resp);
            }
            rounds += 1;
            let challenges: Vec<_> = resp
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(auth::parse_challenges)
                .collect();
            let Some(scheme) = auth::select_scheme(&challenges) else {
                tracing::debug!(url = %resp.url(), "401 without a usable WWW-Authenticate challenge");
                return Ok(resp);
            };
            match authz {
                None => {}
                Some(Authz {
                    cached_token: Some((slot, value)),
                    ..
                }) => {
                    // Possibly revoked or expired early: drop it and fetch anew,
                    // unless another request already replaced it.
                    let mut guard = slot.lock().await;
                    if guard.as_ref().is_some_and(|t| t.value == value) {
                        *guard = None;
                    }
                }
                // Basic credentials refused: say so, not "authentication required"
                // (which tells the user to pass the credentials they passed).
                Some(Authz { basic: true, .. }) => {
                    let (url, _, oci) = read_error(resp).await;
                    return Err(RegistryError::CredentialsRejected {
                        registry: host.to_string(),
                        repo: repo.to_string(),
                        url: url.to_string(),
                        oci,
                    });
                }
                // A fresh token was refused: asking again would get the same answer.
                Some(_) => return Ok(resp),
            }
            let usable = match scheme {
                AuthScheme::Bearer { .. } => true,
                AuthScheme::Basic => matches!(
                    self.credentials(host, repo).await?,
                    Some(Credential::Basic { .. })
                ),
            };
            tracing::debug!(host, repo, ?scheme, "registry requires authentication");
            lock(&self.inner.challenges).insert(host.to_string(), scheme);
            if !usable {
                return Ok(resp);
            }
        }
    }

    /// The Authorization header for (host, repo) given what the host
    /// challenged us with before, fetching a token if needed.
    async fn authorization(
        &self,
        host: &str,
        repo: &str,
        access: &Access,
    ) -> Result<Option<Authz>, RegistryError> {
        let scheme = lock(&self.inner.challenges).get(host).cloned();
        match scheme {
            None => Ok(None),
            Some(AuthScheme::Basic) => match self.credentials(host, repo).await? {
                Some(Credential::Basic { username, password }) => Ok(Some(Authz {
                    header: basic_header(&username, &password),
                    cached_token: None,
                    basic: true,
                })),
                _ => Ok(None),
            },
            Some(AuthScheme::Bearer { realm, service }) => {
                let scopes = access.scopes(repo);
                let slot = self.inner.tokens.slot(host, &scopes.join(" "));
                // Held across the fetch: concurrent requests for the same scope
                // wait here and then reuse the token instead of fetching their own.
                let mut guard = slot.lock().await;
                if let Some(t) = guard.as_ref()
                    && t.is_fresh()
                {
                    let header = bearer_header(host, &realm, &t.value)?;
                    let value = t.value.clone();
                    drop(guard);
                    return Ok(Some(Authz {
                        header,
                        cached_token: Some((slot, value)),
                        basic: false,
                    }));
                }
                let token = self
                    .fetch_token(host, repo, &realm, service.as_deref(), &scopes)
                    .await?;
                let header = bearer_header(host, &realm, &token.value)?;
                *guard = Some(token);
                Ok(Some(Authz {
                    header,
                    cached_token: None,
                    basic: false,
                }))
            }
        }
    }

    async fn credentials(
        &self,
        host: &str,
        repo: &str,
    ) -> Result<Option<Credential>, RegistryError> {
        let key = (host.to_string(), repo.to_string());
        let mut cache = self.inner.credentials.lock().await;
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let inner = Arc::clone(&self.inner);
        let (h, r) = key.clone();
        // File reads and credential helpers block.
        let found = tokio::task::spawn_blocking(move || {
            auth::lookup_credentials(
                inner.creds.as_ref(),
                &inner.auth_files,
                inner.explicit_authfile.as_deref(),
                &h,
                &r,
            )
        })
        .await
        .map_err(|e| {
            RegistryError::Config(format!("credential lookup for {host} failed: {e}"))
        })??;
        cache.insert(key, found.clone());
        Ok(found)
    }

    /// Gets a bearer token from the realm the registry named (docker token
    /// protocol; OAuth2 refresh-token grant when the auth file holds an
    /// identity token).
    async fn fetch_token(
        &self,
        host: &str,
        repo: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<auth::CachedToken, RegistryError> {
        let token_err = |reason: String| RegistryError::Token {
            registry: host.to_string(),
            realm: realm.to_string(),
            reason,
        };
        let mut url = Url::parse(realm)
            .map_err(|e| token_err(format!("the registry sent an invalid realm URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(token_err(
                "the registry sent a realm URL that is not http(s)".into(),
            ));
        }
        let cred = self.credentials(host, repo).await?;
        let form = match &cred {
            Some(Credential::IdentityToken(refresh)) => {
                let mut f = url::form_urlencoded::Serializer::new(String::new());
                f.append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", refresh)
                    .append_pair("client_id", OAUTH_CLIENT_ID)
                    // OAuth2 takes several scopes space-separated in one parameter.
                    .append_pair("scope", &scopes.join(" "));
                if let Some(s) = service {
                    f.append_pair("service", s);
                }
                Some(f.finish())
            }
            _ => {
                let mut q = url.query_pairs_mut();
                if let Some(s) = service {
                    q.append_pair("service", s);
                }
                // The docker token protocol repeats the parameter, a scope each.
                for scope in scopes {
                    q.append_pair("scope", scope);
                }
                None
            }
        };
        let http = &self.inner.http;
        let make = || match (&form, &cred) {
            (Some(body), _) => http
                .post(url.clone())
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body.clone()),
            (None, Some(Credential::Basic { username, password })) => {
                http.get(url.clone()).basic_auth(username, Some(password))
            }
            (None, _) => http.get(url.clone()),
        };
        tracing::debug!(host, %url, authenticated = cred.is_some(), "fetching token");
        let resp = self.with_retries(|| send(make(), &url)).await?;
        let status = resp.status();
        if !status.is_success() {
            let (url_s, _, oci) = read_error(resp).await;
            let url_s = url_s.to_string();
            return Err(match (status, &cred) {
                (StatusCode::UNAUTHORIZED, None) => RegistryError::Unauthorized {
                    registry: host.to_string(),
                    repo: repo.to_string(),
                    url: url_s,
                    oci,
                },
                (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, Some(_)) => {
                    RegistryError::CredentialsRejected {
                        registry: host.to_string(),
                        repo: repo.to_string(),
                        url: url_s,
                        oci,
                    }
                }
                (StatusCode::FORBIDDEN, None) => RegistryError::Denied {
                    registry: host.to_string(),
                    repo: repo.to_string(),
                    url: url_s,
                    oci,
                },
                _ => token_err(format!(
                    "HTTP {status}{}",
                    oci.map(|e| format!(" ({e})")).unwrap_or_default()
                )),
            });
        }
        let body = read_capped(resp, MAX_TOKEN_BODY)
            .await?
            .ok_or_else(|| token_err("token response is implausibly large".into()))?;
        parse_token_response(&body).map_err(token_err)
    }

    /// One logical request to the registry API with the scheme resolved: https
    /// first; with `tls_verify` off, plain http when https cannot even connect,
    /// remembered per host.
    async fn send_registry(
        &self,
        req: &ApiRequest<'_>,
        authz: Option<&Authz>,
    ) -> Result<reqwest::Response, RegistryError> {
        let (host, path) = (req.host, req.path);
        let known = lock(&self.inner.schemes).get(host).copied();
        let scheme = known.unwrap_or(Scheme::Https);
        let url = registry_url(scheme, host, path)?;
        match send(self.build(req, &url, authz), &url).await {
            Ok(resp) => {
                if known.is_none() {
                    lock(&self.inner.schemes).insert(host.to_string(), scheme);
                }
                Ok(resp)
            }
            Err(e) if known.is_none() && !self.inner.tls_verify && e.is_connection_level() => {
                let http_url = registry_url(Scheme::Http, host, path)?;
                match send(self.build(req, &http_url, authz), &http_url).await {
                    Ok(resp) => {
                        // Expected for plain-http registries; not worth a warning.
                        tracing::info!(
                            "{host}: https failed ({e}); using plain http because TLS verification is off"
                        );
                        lock(&self.inner.schemes).insert(host.to_string(), Scheme::Http);
                        Ok(resp)
                    }
                    Err(e2) if e2.is_connection_level() => {
                        // Unreachable either way; the https error says more.
                        tracing::debug!("plain http to {host} failed too: {e2}");
                        Err(e)
                    }
                    Err(e2) => Err(e2),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn build(
        &self,
        req: &ApiRequest<'_>,
        url: &Url,
        authz: Option<&Authz>,
    ) -> reqwest::RequestBuilder {
        let mut rb = self
            .inner
            .http
            .request(req.method.clone(), url.clone())
            .headers(req.headers.clone());
        if let Some(a) = authz {
            rb = rb.header(header::AUTHORIZATION, a.header.clone());
        }
        if let Some(body) = &req.body {
            // Bytes: a cheap clone, so a retry sends the whole body again.
            rb = rb.body(body.clone());
        }
        rb
    }

    /// Runs `attempt` until it succeeds, fails for good, or retries run out.
    /// Retried: 429/502/503/504 and transient transport errors, with
    /// exponential backoff or the server's Retry-After.
    async fn with_retries<F, Fut>(&self, mut attempt: F) -> Result<reqwest::Response, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<reqwest::Response, RegistryError>>,
    {
        let retries = self.inner.retries;
        let mut n = 0;
        loop {
            let res = attempt().await;
            let delay = match &res {
                Ok(r) if is_retry_status(r.status()) => {
                    Some(retry_after(r.headers()).unwrap_or_else(|| backoff(n)))
                }
                Err(e) if e.is_transient() => Some(backoff(n)),
                _ => None,
            };
            match delay {
                Some(d) if n < retries => {
                    match &res {
                        Ok(r) => tracing::warn!(
                            "{} answered HTTP {}; retry {}/{retries} in {d:?}",
                            r.url(),
                            r.status(),
                            n + 1
                        ),
                        Err(e) => tracing::warn!("{e}; retry {}/{retries} in {d:?}", n + 1),
                    }
                    // Dropping the response before sleeping frees its connection.
                    drop(res);
                    tokio::time::sleep(d).await;
                    n += 1;
                }
                _ => return res,
            }
        }
    }
}

async fn send(rb: reqwest::RequestBuilder, url: &Url) -> Result<reqwest::Response, RegistryError> {
    let resp = rb.send().await.map_err(|e| from_transport(e, url))?;
    tracing::debug!(url = %resp.url(), status = %resp.status(), "registry response");
    Ok(resp)
}

/// An error response's URL, (capped) body and the OCI error in it, if any.
async fn read_error(resp: reqwest::Response) -> (Url, Bytes, Option<OciError>) {
    let url = resp.url().clone();
    let body = read_capped(resp, MAX_ERROR_BODY)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let oci = error::parse_oci_error(&body);
    (url, body, oci)
}

/// Maps a final non-success response to an error, keeping the OCI error body.
async fn status_error(resp: reqwest::Response, host: &str, repo: &str) -> RegistryError {
    let status = resp.status();
    let (url, body, oci) = read_error(resp).await;
    if oci.is_none() && !body.is_empty() {
        tracing::debug!(%url, "error body: {}", String::from_utf8_lossy(&body[..body.len().min(500)]));
    }
    // After a redirect to blob storage, 401/403 are about that storage's
    // signed URL, not about the operator's registry credentials.
    let same_host = url.host_str().is_some_and(|h| {
        registry_url(Scheme::Https, host, "/").is_ok_and(|u| u.host_str() == Some(h))
    });
    let (registry, repo, url) = (host.to_string(), repo.to_string(), url.to_string());
    match status {
        StatusCode::UNAUTHORIZED if same_host => RegistryError::Unauthorized {
            registry,
            repo,
            url,
            oci,
        },
        StatusCode::FORBIDDEN if same_host => RegistryError::Denied {
            registry,
            repo,
            url,
            oci,
        },
        StatusCode::NOT_FOUND => RegistryError::NotFound {
            registry,
            repo,
            url,
            oci,
        },
        _ => RegistryError::Status {
            url,
            status: status.as_u16(),
            oci,
        },
    }
}

/// Reads a whole body, or `None` as soon as it exceeds `limit` bytes.
async fn read_capped(
    mut resp: reqwest::Response,
    limit: u64,
) -> Result<Option<Bytes>, RegistryError> {
    if content_length(resp.headers()).is_some_and(|n| n > limit) {
        return Ok(None);
    }
    let url = resp.url().to_string();
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| from_body_error(e, &url))? {
        if (buf.len() + chunk.len()) as u64 > limit {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf.freeze()))
}

fn parse_token_response(body: &[u8]) -> Result<auth::CachedToken, String> {
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
        #[serde(default)]
        expires_in: Option<u64>,
    }
    let r: TokenResponse = serde_json::from_slice(body)
        .map_err(|e| format!("token response is not the expected JSON: {e}"))?;
    let value = r
        .token
        .filter(|t| !t.is_empty())
        .or(r.access_token.filter(|t| !t.is_empty()))
        .ok_or("token response has neither `token` nor `access_token`")?;
    // The token spec's default lifetime.
    let ttl = Duration::from_secs(r.expires_in.unwrap_or(60));
    Ok(auth::CachedToken::new(value, ttl))
}

fn accept_manifests() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
    h
}

fn basic_header(user: &str, pass: &str) -> HeaderValue {
    use base64::Engine;
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let mut v = HeaderValue::from_str(&format!("Basic {enc}")).expect("base64 is a valid header");
    v.set_sensitive(true);
    v
}

fn bearer_header(host: &str, realm: &str, token: &str) -> Result<HeaderValue, RegistryError> {
    let mut v =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| RegistryError::Token {
            registry: host.to_string(),
            realm: realm.to_string(),
            reason: "the token contains characters not allowed in an HTTP header".into(),
        })?;
    v.set_sensitive(true);
    Ok(v)
}

fn header_string(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `Content-Type` without parameters such as `charset`, lower-cased since
/// media types are case-insensitive.
fn media_type(h: &HeaderMap) -> Option<String> {
    let ct = header_string(h, header::CONTENT_TYPE.as_str())?;
    let mt = ct.split(';').next().unwrap_or_default().trim();
    (!mt.is_empty()).then(|| mt.to_ascii_lowercase())
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    header_string(h, header::CONTENT_LENGTH.as_str())?
        .parse()
        .ok()
}

/// The path and query of the `rel="next"` page in a `Link` header. Only the same host is
/// followed: credentials belong to it alone.
fn next_page(h: &HeaderMap, current: &Url) -> Result<Option<String>, RegistryError> {
    let Some(link) = header_string(h, header::LINK.as_str()) else {
        return Ok(None);
    };
    for part in link.split(',') {
        let Some((target, params)) = part.trim().split_once(';') else {
            continue;
        };
        let is_next = params
            .split(';')
            .any(|p| p.trim().trim_start_matches("rel=").trim_matches('"') == "next");
        let target = target.trim().trim_start_matches('<').trim_end_matches('>');
        if !is_next {
            continue;
        }
        let next = current.join(target).map_err(|e| RegistryError::Body {
            url: current.to_string(),
            cause: format!("invalid Link header {link:?}: {e}"),
        })?;
        if next.host_str() != current.host_str() || next.port() != current.port() {
            return Err(RegistryError::Body {
                url: current.to_string(),
                cause: format!("Link header points to another host ({next}); refusing to follow"),
            });
        }
        let mut path = next.path().to_owned();
        if let Some(q) = next.query() {
            path.push('?');
            path.push_str(q);
        }
        return Ok(Some(path));
    }
    Ok(None)
}

/// First byte position of `Content-Range: bytes <first>-<last>/<total>`.
fn content_range_start(h: &HeaderMap) -> Option<u64> {
    let v = header_string(h, header::CONTENT_RANGE.as_str())?;
    let rest = v.strip_prefix("bytes")?.trim_start();
    let (first, _) = rest.split_once('-')?;
    first.trim().parse().ok()
}

fn is_retry_status(s: StatusCode) -> bool {
    matches!(s.as_u16(), 429 | 502 | 503 | 504)
}

/// `Retry-After` in seconds (HTTP dates are rare from registries and ignored).
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let secs: u64 = header_string(h, header::RETRY_AFTER.as_str())?
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(RETRY_AFTER_CAP))
}

/// 200 ms · 2^n with ±20 % jitter (so parallel downloads do not retry in
/// lockstep), capped at 10 s.
fn backoff(n: u32) -> Duration {
    let base = BACKOFF_BASE.saturating_mul(1u32 << n.min(16));
    let jitter = rand::rng().random_range(0.8..1.2);
    base.mul_f64(jitter).min(BACKOFF_CAP)
}

fn registry_url(scheme: Scheme, host: &str, path: &str) -> Result<Url, RegistryError> {
    Url::parse(&format!("{}://{host}{path}", scheme.as_str())).map_err(|e| {
        RegistryError::InvalidArgument {
            what: "registry URL",
            value: format!("{}://{host}{path}", scheme.as_str()),
            reason: if e == url::ParseError::InvalidPort {
                "invalid port"
            } else {
                "not a valid URL"
            },
        }
    })
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> RegistryError {
    RegistryError::InvalidArgument {
        what,
        value: value.to_string(),
        reason,
    }
}

/// Host names go into URLs verbatim, so anything that could change the URL's
/// structure (scheme, path, userinfo) is refused.
fn validate_host(host: &str) -> Result<(), RegistryError> {
    const WHAT: &str = "registry host";
    if host.is_empty() {
        return Err(invalid(WHAT, host, "empty"));
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '@' | '\\'))
    {
        return Err(invalid(
            WHAT,
            host,
            "expected host[:port] without scheme or path",
        ));
    }
    let url = registry_url(Scheme::Https, host, "/")?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(WHAT, host, "expected host[:port]"));
    }
    Ok(())
}

// Repository, tag and digest go into URL paths: the OCI grammar keeps them from changing
// the URL's structure.
fn validate_repo(repo: &str) -> Result<(), RegistryError> {
    Ok(reference::validate_repository(repo)?)
}

/// A tag or a digest.
fn validate_reference(r: &str) -> Result<(), RegistryError> {
    if r.contains(':') {
        validate_digest(r)
    } else {
        Ok(reference::validate_tag(r)?)
    }
}

fn validate_digest(digest: &str) -> Result<(), RegistryError> {
    digest.parse::<reference::Digest>()?;
    Ok(())
}

/// CA roots from --ca-cert and the cert dir, and the client identity from a
/// `*.cert`/`*.key` pair in the cert dir.
fn load_tls_material(
    opts: &ClientOptions,
) -> Result<(Vec<reqwest::Certificate>, Option<reqwest::Identity>), RegistryError> {
    let mut roots = Vec::new();
    for path in &opts.ca_certs {
        roots.extend(read_ca_file(path)?);
    }
    let mut identity = None;
    let Some(dir) = &opts.cert_dir else {
        return Ok((roots, identity));
    };
    let file_err = |what: &'static str, path: &Path, cause: String| RegistryError::File {
        what,
        path: path.to_path_buf(),
        cause,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| file_err("cannot read certificate directory", dir, e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    // Deterministic choice when several client pairs exist.
    paths.sort();
    for path in &paths {
        match path.extension().and_then(|e| e.to_str()) {
            Some("crt") => roots.extend(read_ca_file(path)?),
            Some("cert") => {
                let key = path.with_extension("key");
                if !key.is_file() {
                    return Err(file_err(
                        "client certificate without its key",
                        path,
                        format!("expected {}", key.display()),
                    ));
                }
                if identity.is_some() {
                    tracing::warn!(
                        "{}: only the first client certificate in {} is used",
                        path.display(),
                        dir.display()
                    );
                    continue;
                }
                let mut pem = std::fs::read(path)
                    .map_err(|e| file_err("cannot read client certificate", path, e.to_string()))?;
                pem.push(b'\n');
                pem.extend(
                    std::fs::read(&key)
                        .map_err(|e| file_err("cannot read client key", &key, e.to_string()))?,
                );
                identity = Some(reqwest::Identity::from_pem(&pem).map_err(|e| {
                    file_err("invalid client certificate or key", path, error_chain(&e))
                })?);
            }
            Some("key") if !path.with_extension("cert").is_file() => {
                return Err(file_err(
                    "client key without its certificate",
                    path,
                    format!("expected {}", path.with_extension("cert").display()),
                ));
            }
            _ => {}
        }
    }
    Ok((roots, identity))
}

fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, RegistryError> {
    let bad = |what: &'static str, cause: String| RegistryError::File {
        what,
        path: path.to_path_buf(),
        cause,
    };
    let pem =
        std::fs::read(path).map_err(|e| bad("cannot read CA certificate file", e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| bad("invalid CA certificate file", error_chain(&e)))?;
    if certs.is_empty() {
        return Err(bad(
            "invalid CA certificate file",
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found".into(),
        ));
    }
    Ok(certs)
}
