//! `serve`: the store as a read-only registry without nginx. It answers exactly what the
//! generated nginx answers (the same route model, headers and error bodies), reads files
//! below the root without following symbolic links, and sees a new publish at once: each
//! request checks its repository's index.json and re-reads the routes when it changed.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use regex::Regex;

use crate::catalog;
use crate::htpasswd::{Access, AccessError, AuthError, Htpasswd};
use crate::reference;
use crate::routes::{self, ApiError, NAME_RE, NO_REFERRERS, RepoRoutes};
use crate::store::{CATALOG_FILE, REFERRERS_DIR, SERVED_DIR, StoreError, TAGS_FILE};

/// Files up to this size are read in one go (one read, one buffer handed to the socket);
/// larger ones are streamed in chunks this big, read a chunk ahead on a blocking thread.
const CHUNK: usize = 1024 * 1024;
/// How long a stop waits for requests in flight.
const GRACE: Duration = Duration::from_secs(10);
const API_VERSION: &str = "registry/2.0";
/// The challenge of an anonymous or refused request (nginx's wording).
const CHALLENGE: &str = "Basic realm=\"static-registry\"";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reading the store")]
    Store(#[from] StoreError),
    #[error("opening the store {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid --name-prefix {0:?}: it must be a repository name")]
    Prefix(String),
    #[error("loading the TLS certificate {cert} and key {key}: {source}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("--access names users of --htpasswd: give both")]
    AccessWithoutUsers,
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub root: PathBuf,
    pub listen: SocketAddr,
    /// Serve every repository as `<prefix>/<name>`.
    pub name_prefix: Option<String>,
    /// Certificate chain and key (PEM): serve HTTPS (HTTP/2 and HTTP/1.1).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Users who may pull (Basic auth); anonymous requests get 401.
    pub htpasswd: Option<PathBuf>,
    /// Which repositories each of them may pull (all, without it).
    pub access: Option<PathBuf>,
}

/// Serve until `stop` resolves, then finish the requests in flight (up to 10 s).
pub async fn serve(
    opts: ServeOptions,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let state = Arc::new(Served::open(&opts)?);
    let app = axum::Router::new()
        .fallback(answer)
        .with_state(state)
        .into_make_service_with_connect_info::<SocketAddr>();
    // The certificate first: a bad one fails before anything listens.
    let tls = match &opts.tls {
        Some((cert, key)) => Some(
            axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|source| ServeError::Tls {
                    cert: cert.clone(),
                    key: key.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let addr = opts.listen;
    let listen_err = |source| ServeError::Listen { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(listen_err)?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        stop.await;
        tracing::info!("stopping: finishing the requests in flight");
        stopper.graceful_shutdown(Some(GRACE));
    });
    tracing::info!(%addr, tls = tls.is_some(), root = %opts.root.display(), "serving");
    match tls {
        Some(config) => {
            axum_server::from_tcp_rustls(listener, config)
                .map_err(listen_err)?
                .handle(handle)
                .serve(app)
                .await
        }
        None => {
            axum_server::from_tcp(listener)
                .map_err(listen_err)?
                .handle(handle)
                .serve(app)
                .await
        }
    }
    .map_err(listen_err)
}

/// What the server knows: the store's root (held open), and each repository's routes
/// with the identity of the index.json they were read from.
struct Served {
    root: PathBuf,
    root_fd: OwnedFd,
    /// "" or "<prefix>/".
    prefix: String,
    repos: RwLock<HashMap<String, (Stamp, Arc<RepoRoutes>)>>,
    auth: Option<Htpasswd>,
    access: Option<Access>,
    /// Named in catalog pages when a request's Host is not usable.
    listen: SocketAddr,
}

/// Which index.json routes were read from: a publish replaces it by rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    len: u64,
}

impl Served {
    fn open(opts: &ServeOptions) -> Result<Served, ServeError> {
        if !crate::store::inventory::is_store(&opts.root) {
            return Err(StoreError::NotAStore(opts.root.clone()).into());
        }
        let prefix = match &opts.name_prefix {
            Some(p) => {
                reference::validate_repository(p).map_err(|_| ServeError::Prefix(p.clone()))?;
                format!("{p}/")
            }
            None => String::new(),
        };
        let root_err = |source| ServeError::Root {
            path: opts.root.clone(),
            source,
        };
        let c = CString::new(opts.root.as_os_str().as_bytes())
            .map_err(|e| root_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        // SAFETY: a valid C string; the descriptor returned is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(root_err(io::Error::last_os_error()));
        }
        let auth = opts.htpasswd.as_deref().map(Htpasswd::load).transpose()?;
        if opts.access.is_some() && auth.is_none() {
            return Err(ServeError::AccessWithoutUsers);
        }
        let access = opts.access.as_deref().map(Access::load).transpose()?;
        Ok(Served {
            root: opts.root.clone(),
            // SAFETY: fd is a fresh descriptor nothing else owns.
            root_fd: unsafe { OwnedFd::from_raw_fd(fd) },
            prefix,
            repos: RwLock::new(HashMap::new()),
            auth,
            access,
            listen: opts.listen,
        })
    }

    /// The routes of stored repository `name`, re-read when its index.json changed;
    /// `None` when the store has no such repository.
    async fn repo(self: &Arc<Self>, name: &str) -> Option<Arc<RepoRoutes>> {
        let stamp = stat_beneath(&self.root_fd, &format!("{name}/index.json"));
        let Some(stamp) = stamp else {
            self.repos.write().expect("not poisoned").remove(name);
            return None;
        };
        if let Some((seen, routes)) = self.repos.read().expect("not poisoned").get(name)
            && *seen == stamp
        {
            return Some(routes.clone());
        }
        let me = self.clone();
        let owned = name.to_owned();
        let routes = tokio::task::spawn_blocking(move || {
            let mut skipped = Vec::new();
            let routes = routes::scan_repo(&me.root, &owned, &mut skipped);
            for s in skipped {
                tracing::warn!("not served: {s}");
            }
            routes
        })
        .await
        .ok()
        .flatten()?;
        let routes = Arc::new(routes);
        self.repos
            .write()
            .expect("not poisoned")
            .insert(name.to_owned(), (stamp, routes.clone()));
        Some(routes)
    }

    /// The stored name of served name `name`; `None` when there is none or `user` may
    /// not pull it.
    fn stored<'a>(&self, name: &'a str, user: Option<&str>) -> Result<&'a str, ApiError> {
        if let Some(access) = &self.access
            && !user.is_some_and(|u| access.allows(u, name))
        {
            return Err(ApiError::NotAllowed);
        }
        name.strip_prefix(self.prefix.as_str())
            .ok_or(ApiError::NameUnknown)
    }
}

/// Every request: method check, optional auth, route, access log line.
async fn answer(
    State(served): State<Arc<Served>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut user = None;
    // Credentials first, as nginx checks them before any route under /v2/ (a PUT is
    // 401, then 405); nothing else is served anyway.
    let refused = match &served.auth {
        Some(auth) if protected(&path) => match auth.check(request.headers()).await {
            Ok(u) => {
                user = Some(u);
                None
            }
            Err(e) => Some(e),
        },
        _ => None,
    };
    let mut response = if let Some(e) = refused {
        tracing::debug!("refused: {e}");
        let mut r = error(ApiError::Unauthorized);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(CHALLENGE),
        );
        r
    } else if method != Method::GET && method != Method::HEAD {
        let mut r = error(ApiError::Unsupported);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    } else {
        match decode(&path) {
            Some(decoded) => match catalog_page(&decoded) {
                Some(page) => {
                    let host = pull_host(&request, served.listen);
                    page_answer(&served, page, &host, user.as_deref()).await
                }
                None => {
                    let user = user.as_deref();
                    route(&served, &decoded, request.headers(), &method, user).await
                }
            },
            None => error(ApiError::BadRequest),
        }
    };
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    let bytes = axum::body::HttpBody::size_hint(response.body())
        .exact()
        .or_else(|| {
            let length = response.headers().get(header::CONTENT_LENGTH)?;
            length.to_str().ok()?.parse().ok()
        })
        .unwrap_or_default();
    tracing::info!(
        target: "static_registry::access",
        peer = %peer,
        user = %user.as_deref().unwrap_or("-"),
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        bytes,
        ms = started.elapsed().as_secs_f64() * 1000.0,
    );
    response
}

/// What pull auth covers: the API and the catalog page (the rest is 404 anyway).
fn protected(path: &str) -> bool {
    path.starts_with("/v2/") || path == "/" || path.starts_with("/r/")
}

/// The path as nginx matches it: percent-decoded, without dot segments or NUL (`None`:
/// a malformed request).
fn decode(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    let bad = decoded.contains('\0')
        || decoded
            .split('/')
            .any(|segment| segment == "." || segment == "..");
    (!bad).then_some(decoded)
}

static NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!(r"\A{NAME_RE}\z")).expect("valid regex"));
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\z").expect("valid regex"));
static HEX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[a-f0-9]{64}\z").expect("valid regex"));
/// The error routes, in the generated nginx's order.
static SHA512: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"\A/v2/{NAME_RE}/(?:manifests|blobs|referrers)/sha512:[a-f0-9]{{128}}\z"
    ))
    .expect("valid regex")
});
static BAD_DIGEST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"\A/v2/{NAME_RE}/(?:manifests|blobs|referrers)/[^/]*:"
    ))
    .expect("valid regex")
});
static NAMED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"\A/v2/{NAME_RE}/(?:manifests|blobs|tags|referrers)/"
    ))
    .expect("valid regex")
});
static UNNAMED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\A/v2/.+/(?:manifests|blobs|tags|referrers)/").expect("valid regex")
});

static PULL_HOST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\A(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\z").expect("valid regex")
});
static PAGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"\A/r/({NAME_RE})/(?:page/([1-9][0-9]{{0,5}}))?\z"
    ))
    .expect("valid regex")
});

/// A catalog page: `/` (the index) or `/r/<served name>/[page/<n>]`.
fn catalog_page(path: &str) -> Option<(Option<&str>, usize)> {
    if path == "/" {
        return Some((None, 1));
    }
    let c = PAGE.captures(path)?;
    let page = c.get(2).map_or(Some(1), |p| p.as_str().parse().ok())?;
    Some((Some(c.get(1)?.as_str()), page))
}

/// The address the client pulls from, as its request named it when that is a plain
/// host[:port] (the page is HTML: nothing else of the client's may reach it).
fn pull_host(request: &Request, listen: SocketAddr) -> String {
    request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .filter(|h| PULL_HOST.is_match(h))
        .map_or_else(|| listen.to_string(), str::to_owned)
}

async fn page_answer(
    served: &Arc<Served>,
    (name, page): (Option<&str>, usize),
    host: &str,
    user: Option<&str>,
) -> Response {
    let stored = match name {
        Some(name) => match served.stored(name, user) {
            Ok(stored) => Some(stored),
            Err(_) => return error(ApiError::NoPage),
        },
        None => None,
    };
    let rel = Path::new(SERVED_DIR).join(catalog::page_path(stored, page));
    let file = match read(served, &rel.to_string_lossy(), Want::All) {
        Ok(file) => file,
        Err(e) => return file_error(e, ApiError::NoPage),
    };
    let html = String::from_utf8_lossy(&file.bytes())
        .replace(catalog::HOST_PLACEHOLDER, host)
        .replace(catalog::PREFIX_PLACEHOLDER, &served.prefix);
    let mut r = full(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from(html),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// One of the pull API's routes, with the served name.
enum Route<'a> {
    Base,
    Catalog,
    Tag(&'a str, &'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Tags(&'a str),
    Referrers(&'a str, &'a str),
}

fn parse(path: &str) -> Option<Route<'_>> {
    fn digest(d: &str) -> Option<&str> {
        d.strip_prefix("sha256:").filter(|h| HEX.is_match(h))
    }
    if path == "/v2/" {
        return Some(Route::Base);
    }
    if path == "/v2/_catalog" {
        return Some(Route::Catalog);
    }
    let rest = path.strip_prefix("/v2/")?;
    let valid = |name: &str| NAME.is_match(name);
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return valid(name).then_some(Route::Tags(name));
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        if !valid(name) {
            return None;
        }
        return match digest(reference) {
            Some(hex) => Some(Route::Manifest(name, hex)),
            None => TAG
                .is_match(reference)
                .then_some(Route::Tag(name, reference)),
        };
    }
    if let Some((name, d)) = rest.rsplit_once("/blobs/") {
        return (valid(name)).then_some(Route::Blob(name, digest(d)?));
    }
    if let Some((name, d)) = rest.rsplit_once("/referrers/") {
        return (valid(name)).then_some(Route::Referrers(name, digest(d)?));
    }
    None
}

/// What matches no route: the same errors as nginx's fallback locations.
fn unrouted(path: &str) -> ApiError {
    if !path.starts_with("/v2/") {
        ApiError::NotFound
    } else if SHA512.is_match(path) {
        ApiError::OnlySha256
    } else if BAD_DIGEST.is_match(path) {
        ApiError::DigestInvalid
    } else if NAMED.is_match(path) {
        ApiError::NameUnknown
    } else if UNNAMED.is_match(path) {
        ApiError::NameInvalid
    } else {
        ApiError::NoEndpoint
    }
}

async fn route(
    served: &Arc<Served>,
    path: &str,
    headers: &HeaderMap,
    method: &Method,
    user: Option<&str>,
) -> Response {
    let Some(route) = parse(path) else {
        return error(unrouted(path));
    };
    let head = *method == Method::HEAD;
    let (name, routes) = match &route {
        Route::Base => {
            return full(
                StatusCode::OK,
                "application/json",
                Bytes::from_static(b"{}"),
            );
        }
        Route::Catalog => return catalog(served).await,
        Route::Tag(name, _)
        | Route::Manifest(name, _)
        | Route::Blob(name, _)
        | Route::Tags(name)
        | Route::Referrers(name, _) => {
            let stored = match served.stored(name, user) {
                Ok(stored) => stored,
                Err(e) => return error(e),
            };
            match served.repo(stored).await {
                Some(routes) => (stored, routes),
                None => return error(ApiError::NameUnknown),
            }
        }
    };
    match route {
        Route::Tag(_, tag) => match routes.tags.get(tag) {
            Some(hex) => manifest(served, name, &routes, hex, head).await,
            None => error(ApiError::TagUnknown),
        },
        Route::Manifest(_, hex) => manifest(served, name, &routes, hex, head).await,
        Route::Blob(_, hex) => {
            let rel = format!("{name}/blobs/sha256/{hex}");
            match read(served, &rel, Want::send(head, range(headers))) {
                Ok(file) => file.respond(routes::BLOB_TYPE, Some(hex)),
                Err(e) => file_error(e, ApiError::BlobUnknown),
            }
        }
        Route::Tags(served_name) => {
            let rel = format!("{SERVED_DIR}/{name}/{TAGS_FILE}");
            let want = if served.prefix.is_empty() {
                Want::send(head, None)
            } else {
                Want::All
            };
            match read(served, &rel, want) {
                Ok(file) if served.prefix.is_empty() => file.respond("application/json", None),
                Ok(file) => renamed_tags(file.bytes(), served_name),
                Err(e) => file_error(e, ApiError::NameUnknown),
            }
        }
        Route::Referrers(_, hex) => {
            let rel = format!("{SERVED_DIR}/{name}/{REFERRERS_DIR}/{hex}.json");
            match read(served, &rel, Want::send(head, None)) {
                Ok(file) => file.respond(routes::media_type_of("oci-index"), None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => full(
                    StatusCode::OK,
                    routes::media_type_of("oci-index"),
                    Bytes::from_static(NO_REFERRERS.as_bytes()),
                ),
                Err(e) => file_error(e, ApiError::Failed),
            }
        }
        Route::Base | Route::Catalog => unreachable!("answered above"),
    }
}

async fn manifest(
    served: &Arc<Served>,
    name: &str,
    routes: &RepoRoutes,
    hex: &str,
    head: bool,
) -> Response {
    let Some(kind) = routes.manifests.get(hex) else {
        return error(ApiError::ManifestUnknown);
    };
    let rel = format!("{name}/blobs/sha256/{hex}");
    match read(served, &rel, Want::send(head, None)) {
        Ok(file) => file.respond(routes::media_type_of(kind), Some(hex)),
        Err(e) => file_error(e, ApiError::ManifestUnknown),
    }
}

async fn catalog(served: &Arc<Served>) -> Response {
    let rel = format!("{SERVED_DIR}/{CATALOG_FILE}");
    let file = match read(served, &rel, Want::All) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return full(
                StatusCode::OK,
                "application/json",
                Bytes::from_static(br#"{"repositories":[]}"#),
            );
        }
        Err(e) => return file_error(e, ApiError::Failed),
    };
    if served.prefix.is_empty() {
        return file.respond("application/json", None);
    }
    #[derive(serde::Deserialize, serde::Serialize)]
    struct Catalog {
        repositories: Vec<String>,
    }
    match serde_json::from_slice::<Catalog>(&file.bytes()) {
        Ok(mut c) => {
            for r in &mut c.repositories {
                r.insert_str(0, &served.prefix);
            }
            let body = serde_json::to_vec(&c).expect("serialisable");
            full(StatusCode::OK, "application/json", body.into())
        }
        Err(_) => error(ApiError::Failed),
    }
}

/// A stored tag list under the served name.
fn renamed_tags(bytes: Bytes, served_name: &str) -> Response {
    #[derive(serde::Deserialize, serde::Serialize)]
    struct TagList {
        name: String,
        tags: Vec<String>,
    }
    match serde_json::from_slice::<TagList>(&bytes) {
        Ok(mut list) => {
            list.name = served_name.to_owned();
            let body = serde_json::to_vec(&list).expect("serialisable");
            full(StatusCode::OK, "application/json", body.into())
        }
        Err(_) => error(ApiError::Failed),
    }
}

/// A whole answer in memory.
fn full(status: StatusCode, content_type: &'static str, body: Bytes) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status()).expect("a valid status");
    full(status, "application/json", Bytes::from(e.body()))
}

/// A file that may not be read (a symbolic link, no permission) is DENIED as nginx does;
/// a missing one is `missing`.
fn file_error(e: io::Error, missing: ApiError) -> Response {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => error(missing),
        io::ErrorKind::PermissionDenied => error(ApiError::Denied),
        _ if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::EXDEV) => {
            error(ApiError::Denied)
        }
        _ => {
            tracing::error!("reading the store: {e}");
            error(ApiError::Failed)
        }
    }
}

/// The single byte range a request asks for (checked against the length at read time).
#[derive(Debug, Clone, Copy)]
enum Range {
    From(u64),
    FromTo(u64, u64),
    Last(u64),
}

fn range(headers: &HeaderMap) -> Option<Range> {
    let spec = headers
        .get(header::RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?;
    // Several ranges: the whole file, as the spec allows.
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.trim().split_once('-')?;
    match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(a), None) if b.is_empty() => Some(Range::From(a)),
        (Some(a), Some(b)) if a <= b => Some(Range::FromTo(a, b)),
        (None, Some(n)) if a.is_empty() => Some(Range::Last(n)),
        _ => None,
    }
}

/// What was read: the whole (small) content, or an open file to stream from.
struct Opened {
    len: u64,
    /// `Some((start, end))` for a 206; `None` for the whole file.
    part: Option<(u64, u64)>,
    unsatisfiable: bool,
    content: Content,
}

enum Content {
    None,
    Bytes(Bytes),
    File(File),
}

impl Opened {
    fn bytes(self) -> Bytes {
        match self.content {
            Content::Bytes(b) => b,
            _ => Bytes::new(),
        }
    }

    fn respond(self, content_type: &'static str, digest: Option<&str>) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(hex) = digest
            && let Ok(v) = HeaderValue::from_str(&format!("sha256:{hex}"))
        {
            headers.insert("docker-content-digest", v);
        }
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if self.unsatisfiable {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{}", self.len)).expect("ascii"),
            );
            return (StatusCode::RANGE_NOT_SATISFIABLE, headers).into_response();
        }
        let (status, (start, end)) = match self.part {
            Some((start, end)) => {
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes {start}-{}/{}", end - 1, self.len))
                        .expect("ascii"),
                );
                (StatusCode::PARTIAL_CONTENT, (start, end))
            }
            None => (StatusCode::OK, (0, self.len)),
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        let body = match self.content {
            Content::None => Body::empty(),
            Content::Bytes(b) => Body::from(b),
            Content::File(file) => stream(file, end - start),
        };
        (status, headers, body).into_response()
    }
}

/// What a request wants of a file.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Its length (HEAD).
    Head,
    /// All of it in memory (a JSON document that is rewritten).
    All,
    /// The whole file or a range of it, streamed when large.
    Send(Option<Range>),
}

impl Want {
    fn send(head: bool, range: Option<Range>) -> Want {
        if head { Want::Head } else { Want::Send(range) }
    }
}

/// Read `rel` below the root (no symbolic link anywhere below it): the whole content if
/// small, else the open file positioned at the range's start; nothing for HEAD.
///
/// On the async worker itself, as nginx does in its workers: the store is read from the
/// page cache in microseconds, and a hand-off to a blocking thread per request cost half
/// the throughput (measured); only large bodies are streamed from a blocking thread.
fn read(served: &Served, rel: &str, want: Want) -> io::Result<Opened> {
    let mut file = open_beneath(&served.root_fd, rel)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::ErrorKind::NotFound.into());
    }
    let len = meta.len();
    let range = match want {
        Want::Send(range) => range,
        Want::Head | Want::All => None,
    };
    let part = match range {
        None => None,
        Some(Range::From(a)) if a < len => Some((a, len)),
        Some(Range::FromTo(a, b)) if a < len => Some((a, (b + 1).min(len))),
        Some(Range::Last(n)) if n > 0 && len > 0 => Some((len - n.min(len), len)),
        Some(_) => {
            return Ok(Opened {
                len,
                part: None,
                unsatisfiable: true,
                content: Content::None,
            });
        }
    };
    let (start, end) = part.unwrap_or((0, len));
    let content = if matches!(want, Want::Head) {
        Content::None
    } else if end - start <= CHUNK as u64 || matches!(want, Want::All) {
        Content::Bytes(read_part(&mut file, start, end - start)?)
    } else {
        use std::io::Seek;
        file.seek(io::SeekFrom::Start(start))?;
        Content::File(file)
    };
    Ok(Opened {
        len,
        part,
        unsatisfiable: false,
        content,
    })
}

/// `len` bytes of `file` from `start` (into memory never zeroed first: a file read fills
/// it), or an error if the file is shorter.
fn read_part(file: &mut File, start: u64, len: u64) -> io::Result<Bytes> {
    use std::io::Seek;
    if start > 0 {
        file.seek(io::SeekFrom::Start(start))?;
    }
    let mut buf = Vec::with_capacity(len as usize);
    file.take(len).read_to_end(&mut buf)?;
    if (buf.len() as u64) < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(buf.into())
}

/// Stream `len` bytes of `file` from a blocking reader, a chunk ahead of the socket.
fn stream(mut file: File, len: u64) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(2);
    tokio::task::spawn_blocking(move || {
        let mut left = len;
        while left > 0 {
            let n = CHUNK.min(left as usize) as u64;
            let chunk = read_part(&mut file, 0, n);
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return; // the client went away, or the file ended early
            }
            left -= n;
        }
    });
    Body::from_stream(tokio_stream(rx))
}

fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
) -> impl futures::Stream<Item = io::Result<Bytes>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The identity of file `rel` below `root` (one `fstatat`, per request: the file itself is
/// never a link; what is served through it is opened with [`open_beneath`]).
fn stat_beneath(root: &OwnedFd, rel: &str) -> Option<Stamp> {
    let path = CString::new(rel).ok()?;
    // SAFETY: stat is plain integers, filled in by the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, C string and out pointer for the duration of the call.
    let rc = unsafe {
        libc::fstatat(
            root.as_raw_fd(),
            path.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    (rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG).then_some(Stamp {
        ino: st.st_ino,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec,
        len: st.st_size as u64,
    })
}

/// Open `rel` (relative, no `..`) below `root` read-only, refusing a symbolic link in any
/// component (ELOOP), as nginx's `disable_symlinks on from=<root>` does.
fn open_beneath(root: &OwnedFd, rel: &str) -> io::Result<File> {
    let path = CString::new(rel).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: open_how is plain integers; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH;
    // SAFETY: valid pointers for the duration of the call; the result is a new fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: a fresh descriptor nothing else owns.
        return Ok(unsafe { File::from_raw_fd(fd as i32) });
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    open_beneath_walk(root, Path::new(rel))
}

/// Kernels before 5.6 lack openat2: walk the components, none of which may be a link.
fn open_beneath_walk(root: &OwnedFd, rel: &Path) -> io::Result<File> {
    let mut dir = root.as_raw_fd();
    let mut owned: Option<OwnedFd> = None;
    let parts: Vec<_> = rel.components().collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let c = CString::new(part.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let flags = libc::O_NOFOLLOW
            | libc::O_CLOEXEC
            | if last {
                libc::O_RDONLY
            } else {
                libc::O_PATH | libc::O_DIRECTORY
            };
        // SAFETY: dir is a valid descriptor; c a valid C string.
        let fd = unsafe { libc::openat(dir, c.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if last {
            return Ok(File::from(fd));
        }
        dir = fd.as_raw_fd();
        owned = Some(fd);
    }
    drop(owned);
    Err(io::ErrorKind::NotFound.into())
}
