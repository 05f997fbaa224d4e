//! A push target that misbehaves on purpose (in-process axum, test code only): just
//! enough of the distribution push API (blob HEAD/GET, upload sessions with mount, PATCH,
//! status GET and PUT ?digest=, manifest PUT/HEAD/GET) for the client's push primitives.
//! The repository `fault/<case>` (or `fault/<case>/<anything>`, for a second repository
//! of one case) selects how it misbehaves; `fault/good` behaves. Only for fault
//! injection: pushing as such is tested against the real docker-registry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use super::sha256_digest;

/// Every case; a repository naming another one is unknown.
pub const CASES: [&str; 10] = [
    "good",
    // Every PATCH is answered after SLOW_PATCH: a target slower than the others.
    "slow",
    // The first PATCH of each session keeps half its body, then answers 500.
    "patch-500-midway",
    // The first PATCH of each session keeps half its body, then drops the connection.
    "patch-reset",
    // The first PATCH of each session keeps nothing: 503 with `Retry-After: 1`.
    "patch-busy",
    // Bearer tokens from /token, which only hands them out for a push scope.
    "token",
    // A POST asking for a mount opens a session instead, as when the source is unknown.
    "mount-refused",
    // Locations are absolute URLs on this server (others are relative paths).
    "absolute-location",
    // The POST's Location is on another host (the `elsewhere` listener).
    "location-elsewhere",
    // Manifest PUTs answer 400 MANIFEST_INVALID.
    "manifest-rejected",
];

/// The one token `/token` issues and the `token` case accepts.
const TOKEN: &str = "fault-push-token";

/// One request as the target saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub content_range: Option<String>,
    /// Body bytes received.
    pub body: usize,
    /// `None`: the connection was dropped instead of answered.
    pub status: Option<u16>,
}

/// An open upload session.
struct Session {
    name: String,
    bytes: Vec<u8>,
    patches: usize,
}

#[derive(Default)]
struct Store {
    /// (repository, digest) → blob
    blobs: HashMap<(String, String), Bytes>,
    /// (repository, tag or digest) → (media type, manifest)
    manifests: HashMap<(String, String), (String, Bytes)>,
    sessions: HashMap<String, Session>,
    next_session: usize,
    log: Vec<Seen>,
    /// The `scope` parameters of each token request.
    token_scopes: Vec<Vec<String>>,
}

struct Shared {
    me: String,
    /// Address of a listener on another host that no upload may reach.
    elsewhere: String,
    elsewhere_connections: AtomicUsize,
    store: Mutex<Store>,
}

pub struct FaultTarget {
    shared: Arc<Shared>,
    _server: tokio::task::JoinHandle<()>,
    _elsewhere: tokio::task::JoinHandle<()>,
}

impl FaultTarget {
    pub async fn start() -> FaultTarget {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // 127.0.0.2 is another host as far as a URL is concerned, and still loopback.
        let other = tokio::net::TcpListener::bind("127.0.0.2:0")
            .await
            .expect("bind 127.0.0.2 (loopback is 127.0.0.0/8 on Linux)");
        let shared = Arc::new(Shared {
            me: listener.local_addr().unwrap().to_string(),
            elsewhere: other.local_addr().unwrap().to_string(),
            elsewhere_connections: AtomicUsize::new(0),
            store: Mutex::default(),
        });
        let counter = shared.clone();
        let elsewhere = tokio::spawn(async move {
            // Counts connections and answers nothing: any is a failure of the client.
            while let Ok((_socket, _)) = other.accept().await {
                counter.elsewhere_connections.fetch_add(1, Ordering::SeqCst);
            }
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultTarget {
            shared,
            _server: server,
            _elsewhere: elsewhere,
        }
    }

    pub fn addr(&self) -> &str {
        &self.shared.me
    }

    /// The `host:port` that `location-elsewhere` sends uploads to.
    pub fn elsewhere(&self) -> &str {
        &self.shared.elsewhere
    }

    /// Connections the `elsewhere` listener accepted.
    pub fn elsewhere_connections(&self) -> usize {
        self.shared.elsewhere_connections.load(Ordering::SeqCst)
    }

    /// Every request so far, in order of arrival of its whole body.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.store.lock().unwrap().log.clone()
    }

    /// The `scope` parameters of each token request.
    pub fn token_scopes(&self) -> Vec<Vec<String>> {
        self.shared.store.lock().unwrap().token_scopes.clone()
    }

    /// The blob `repo` holds under `digest`.
    pub fn blob(&self, repo: &str, digest: &str) -> Option<Bytes> {
        let store = self.shared.store.lock().unwrap();
        store
            .blobs
            .get(&(repo.to_owned(), digest.to_owned()))
            .cloned()
    }

    /// Put `bytes` into `repo` behind the API's back (a mount source); returns the digest.
    pub fn seed_blob(&self, repo: &str, bytes: Bytes) -> String {
        let digest = sha256_digest(&bytes);
        let mut store = self.shared.store.lock().unwrap();
        store.blobs.insert((repo.to_owned(), digest.clone()), bytes);
        digest
    }
}

/// How long the `slow` case takes over each PATCH.
const SLOW_PATCH: std::time::Duration = std::time::Duration::from_millis(400);

/// The connection is to be dropped instead of answered.
struct Dropped;

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.to_string());
    let content_range = parts
        .headers
        .get(header::CONTENT_RANGE)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    if parts.method == Method::PATCH && parts.uri.path().starts_with("/v2/fault/slow/") {
        tokio::time::sleep(SLOW_PATCH).await;
    }
    let answer = answer(&shared, &parts.method, &parts.uri, &parts.headers, &body);
    let status = answer.as_ref().ok().map(|r| r.status().as_u16());
    shared.store.lock().unwrap().log.push(Seen {
        method: parts.method.to_string(),
        path,
        content_range,
        body: body.len(),
        status,
    });
    answer.unwrap_or_else(|Dropped| {
        // A body that fails before its first byte makes hyper close the connection
        // with nothing sent, not even the status line: the client sees the request fail
        // as on a reset, with no idea how much was kept.
        let reset = futures::stream::once(async {
            Err::<Bytes, _>(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected reset",
            ))
        });
        Response::new(Body::from_stream(reset))
    })
}

fn answer(
    shared: &Shared,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Dropped> {
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let param = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    if uri.path() == "/token" {
        return Ok(token(shared, &query));
    }
    let Some(rest) = uri.path().strip_prefix("/v2/") else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    let found = [
        ("/blobs/uploads/", Kind::Upload),
        ("/blobs/", Kind::Blob),
        ("/manifests/", Kind::Manifest),
    ]
    .into_iter()
    .find_map(|(sep, kind)| rest.split_once(sep).map(|(n, t)| (n, kind, t)));
    let Some((name, kind, tail, case)) = found.and_then(|(name, kind, tail)| {
        let case = name.strip_prefix("fault/")?.split('/').next()?;
        CASES.contains(&case).then_some((name, kind, tail, case))
    }) else {
        return Ok(oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "no such repository",
        ));
    };
    let bearer = format!("Bearer {TOKEN}");
    if case == "token"
        && headers
            .get(header::AUTHORIZATION)
            .is_none_or(|v| v.as_bytes() != bearer.as_bytes())
    {
        let challenge = format!(
            r#"Bearer realm="http://{}/token",service="fault",scope="repository:{name}:pull,push""#,
            shared.me
        );
        return Ok(Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(header::WWW_AUTHENTICATE, challenge)
            .body(Body::empty())
            .unwrap());
    }
    let mut store = shared.store.lock().unwrap();
    let key = |reference: &str| (name.to_owned(), reference.to_owned());
    match (kind, method.clone()) {
        (Kind::Blob, Method::HEAD | Method::GET) => match store.blobs.get(&key(tail)) {
            Some(blob) => Ok(Response::builder()
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_LENGTH, blob.len())
                .header("Docker-Content-Digest", tail)
                .body(if method == Method::GET {
                    Body::from(blob.clone())
                } else {
                    Body::empty()
                })
                .unwrap()),
            None => Ok(oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", tail)),
        },
        (Kind::Upload, Method::POST) if tail.is_empty() => {
            if let (Some(digest), Some(from)) = (param("mount"), param("from"))
                && case != "mount-refused"
                && let Some(blob) = store.blobs.get(&(from, digest.clone())).cloned()
            {
                store.blobs.insert(key(&digest), blob);
                return Ok(Response::builder()
                    .status(StatusCode::CREATED)
                    .header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
                    .header("Docker-Content-Digest", digest)
                    .body(Body::empty())
                    .unwrap());
            }
            let id = format!("s{}", store.next_session);
            store.next_session += 1;
            store.sessions.insert(
                id.clone(),
                Session {
                    name: name.to_owned(),
                    bytes: Vec::new(),
                    patches: 0,
                },
            );
            let session = &store.sessions[&id];
            let mut resp = session_response(shared, case, &id, session, StatusCode::ACCEPTED);
            if case == "location-elsewhere" {
                let path = session_path(&id, session);
                resp.headers_mut().insert(
                    header::LOCATION,
                    format!("http://{}{path}", shared.elsewhere)
                        .parse()
                        .unwrap(),
                );
            }
            Ok(resp)
        }
        (Kind::Upload, method) if !tail.is_empty() => {
            let Some(session) = store.sessions.get_mut(tail).filter(|s| s.name == name) else {
                return Ok(oci_error(
                    StatusCode::NOT_FOUND,
                    "BLOB_UPLOAD_UNKNOWN",
                    tail,
                ));
            };
            // Session URLs carry a `_state` query, as distribution's do: a client must
            // keep the query of the Location it was given, and add `digest` to it.
            if method != Method::GET && param("_state").is_none() {
                return Ok(oci_error(
                    StatusCode::BAD_REQUEST,
                    "BLOB_UPLOAD_INVALID",
                    "no _state",
                ));
            }
            match method {
                Method::GET => Ok(session_response(
                    shared,
                    case,
                    tail,
                    session,
                    StatusCode::NO_CONTENT,
                )),
                Method::PATCH => {
                    if let Some(range) = headers.get(header::CONTENT_RANGE) {
                        let Some((start, end)) = parse_content_range(range.to_str().unwrap_or(""))
                        else {
                            return Ok(oci_error(
                                StatusCode::BAD_REQUEST,
                                "BLOB_UPLOAD_INVALID",
                                "bad Content-Range",
                            ));
                        };
                        if start != session.bytes.len() as u64 {
                            return Ok(session_response(
                                shared,
                                case,
                                tail,
                                session,
                                StatusCode::RANGE_NOT_SATISFIABLE,
                            ));
                        }
                        if end + 1 - start != body.len() as u64 {
                            return Ok(oci_error(
                                StatusCode::BAD_REQUEST,
                                "BLOB_UPLOAD_INVALID",
                                "Content-Range does not match the body",
                            ));
                        }
                    }
                    session.patches += 1;
                    if session.patches == 1 && case == "patch-busy" {
                        return Ok(Response::builder()
                            .status(StatusCode::SERVICE_UNAVAILABLE)
                            .header(header::RETRY_AFTER, "1")
                            .body(Body::empty())
                            .unwrap());
                    }
                    let fails =
                        session.patches == 1 && matches!(case, "patch-500-midway" | "patch-reset");
                    if fails {
                        session.bytes.extend_from_slice(&body[..body.len() / 2]);
                        return match case {
                            "patch-reset" => Err(Dropped),
                            _ => Ok(StatusCode::INTERNAL_SERVER_ERROR.into_response()),
                        };
                    }
                    session.bytes.extend_from_slice(body);
                    Ok(session_response(
                        shared,
                        case,
                        tail,
                        session,
                        StatusCode::ACCEPTED,
                    ))
                }
                Method::PUT => {
                    let Some(digest) = param("digest") else {
                        return Ok(oci_error(
                            StatusCode::BAD_REQUEST,
                            "DIGEST_INVALID",
                            "no digest",
                        ));
                    };
                    let mut bytes = std::mem::take(&mut session.bytes);
                    bytes.extend_from_slice(body);
                    if sha256_digest(&bytes) != digest {
                        session.bytes = bytes;
                        return Ok(oci_error(
                            StatusCode::BAD_REQUEST,
                            "DIGEST_INVALID",
                            "the uploaded bytes do not hash to the digest",
                        ));
                    }
                    store.sessions.remove(tail);
                    store.blobs.insert(key(&digest), Bytes::from(bytes));
                    Ok(Response::builder()
                        .status(StatusCode::CREATED)
                        .header(
                            header::LOCATION,
                            location(shared, case, &format!("/v2/{name}/blobs/{digest}")),
                        )
                        .header("Docker-Content-Digest", digest)
                        .body(Body::empty())
                        .unwrap())
                }
                _ => Ok(StatusCode::METHOD_NOT_ALLOWED.into_response()),
            }
        }
        (Kind::Manifest, Method::PUT) => {
            if case == "manifest-rejected" {
                return Ok(oci_error(
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_INVALID",
                    "manifest invalid",
                ));
            }
            let media_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let digest = sha256_digest(body);
            for reference in [tail, &digest] {
                store
                    .manifests
                    .insert(key(reference), (media_type.clone(), body.clone()));
            }
            Ok(Response::builder()
                .status(StatusCode::CREATED)
                .header(
                    header::LOCATION,
                    location(shared, case, &format!("/v2/{name}/manifests/{digest}")),
                )
                .header("Docker-Content-Digest", digest)
                .body(Body::empty())
                .unwrap())
        }
        (Kind::Manifest, Method::HEAD | Method::GET) => match store.manifests.get(&key(tail)) {
            Some((media_type, bytes)) => Ok(Response::builder()
                .header(header::CONTENT_TYPE, media_type.as_str())
                .header(header::CONTENT_LENGTH, bytes.len())
                .header("Docker-Content-Digest", sha256_digest(bytes))
                .body(if method == Method::GET {
                    Body::from(bytes.clone())
                } else {
                    Body::empty()
                })
                .unwrap()),
            None => Ok(oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", tail)),
        },
        _ => Ok(StatusCode::METHOD_NOT_ALLOWED.into_response()),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Upload,
    Blob,
    Manifest,
}

/// GET /token: a token for any scope list that asks to push, as a registry's token
/// service gives a pusher; anything less is denied.
fn token(shared: &Shared, query: &[(String, String)]) -> Response {
    let scopes: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    let push = scopes.iter().any(|s| {
        s.rsplit_once(':')
            .is_some_and(|(_, actions)| actions.split(',').any(|a| a == "push"))
    });
    shared.store.lock().unwrap().token_scopes.push(scopes);
    if !push {
        return oci_error(StatusCode::FORBIDDEN, "DENIED", "no push scope asked for");
    }
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "token": TOKEN }).to_string()))
        .unwrap()
}

/// `/v2/<name>/blobs/uploads/<id>?_state=...`
fn session_path(id: &str, session: &Session) -> String {
    format!(
        "/v2/{}/blobs/uploads/{id}?_state={id}.{}",
        session.name,
        session.bytes.len()
    )
}

/// A path on this server as the case sends it in a `Location`.
fn location(shared: &Shared, case: &str, path: &str) -> String {
    match case {
        "absolute-location" => format!("http://{}{path}", shared.me),
        _ => path.to_owned(),
    }
}

/// A session's state as distribution sends it: where it is and `Range: 0-<last>`
/// (`0-0` when empty too).
fn session_response(
    shared: &Shared,
    case: &str,
    id: &str,
    session: &Session,
    status: StatusCode,
) -> Response {
    let last = session.bytes.len().saturating_sub(1);
    Response::builder()
        .status(status)
        .header(
            header::LOCATION,
            location(shared, case, &session_path(id, session)),
        )
        .header(header::RANGE, format!("0-{last}"))
        .header("Docker-Upload-UUID", id)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap()
}

/// `<start>-<end>` (inclusive), with or without distribution's optional `bytes ` and
/// `/<total>`.
fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let range = value.trim().trim_start_matches("bytes").trim();
    let range = range.split('/').next()?;
    let (start, end) = range.split_once('-')?;
    let (start, end) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    (end >= start).then_some((start, end))
}

fn oci_error(status: StatusCode, code: &str, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"errors": [{"code": code, "message": message}]}).to_string(),
        ))
        .unwrap()
}
