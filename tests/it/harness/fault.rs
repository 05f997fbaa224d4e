//! A registry that misbehaves on purpose (in-process axum, test code only). Each
//! repository `fault/<case>` serves one small image, tag `1`, broken in the way its case
//! names; `fault/good` is served correctly. Only for fault injection: everything else is
//! tested against the real docker-registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use super::sha256_digest;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Every case, and whether a fetch of it must succeed (after retries or resumes).
pub const CASES: [(&str, bool); 17] = [
    ("good", true),
    ("blob-digest", false),
    ("manifest-digest", false),
    ("huge-manifest", false),
    ("size-short", false),
    ("size-long", false),
    ("truncated", true),
    ("slow-drip", false),
    ("redirect-loop", false),
    ("redirect-elsewhere", true),
    ("token-fails", false),
    ("rate-limited-once", true),
    // 429 with Retry-After: 1 on the first manifest request (a name whose layer bytes
    // differ from every other case's, see `layer`).
    ("throttled-1s", true),
    ("self-index", false),
    ("deep-index", false),
    // Not a fault: the referrers API, which distribution 2.8 lacks.
    ("referrers", true),
    // Not a fault: a tag list in pages of PAGE tags (distribution 2.8 never pages).
    ("paged", true),
];

/// Tags of `fault/paged` besides `1`: t000, t001, ...
pub const PAGED_TAGS: usize = 250;
/// Page size of `fault/paged`'s tag list when the client sends no `n`.
const PAGE: usize = 100;

/// Artifact type of the signature that `fault/referrers` lists for its image.
pub const SIGNATURE_TYPE: &str = "application/vnd.example.signature.v1";

/// One stored document: its bytes and media type.
#[derive(Clone)]
struct Doc {
    bytes: Bytes,
    media_type: &'static str,
}

#[derive(Default)]
struct Repo {
    /// tag or digest → manifest
    manifests: HashMap<String, Doc>,
    /// digest → blob as served (may differ from what its digest says)
    blobs: HashMap<String, Bytes>,
    /// subject digest → referrers index (only `fault/referrers` offers the API)
    referrers: Option<HashMap<String, Bytes>>,
}

struct Shared {
    repos: HashMap<String, Repo>,
    /// Address of the second server that redirected blobs go to.
    elsewhere: Mutex<Option<String>>,
    /// (method, path, authorization) of every request.
    log: Mutex<Vec<(String, String, Option<String>)>>,
    /// Requests seen per path, for "fail once" cases.
    seen: Mutex<HashMap<String, usize>>,
    /// GETs of each case's layer: (case, Range header, body bytes sent).
    layer_gets: Mutex<Vec<(String, Option<String>, usize)>>,
    /// When each manifest request of `throttled-1s` arrived.
    manifest_times: Mutex<Vec<Instant>>,
}

pub struct FaultRegistry {
    addr: String,
    shared: Arc<Shared>,
    _server: tokio::task::JoinHandle<()>,
}

fn layer(case: &str) -> Vec<u8> {
    // 64 KiB that differ per case, so no two cases share a blob.
    (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ case.len() as u8 ^ case.as_bytes()[0])
        .collect()
}

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": sha256_digest(bytes), "size": bytes.len()})
}

fn image(case: &str, layer_size_delta: i64) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let config = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "case": case})
        .to_string()
        .into_bytes();
    let layer = layer(case);
    let mut layer_desc = descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer);
    layer_desc["size"] = json!(layer.len() as i64 + layer_size_delta);
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [layer_desc],
    })
    .to_string()
    .into_bytes();
    let blobs = vec![
        (sha256_digest(&config), config),
        (sha256_digest(&layer), layer),
    ];
    (manifest, blobs)
}

fn index_of(children: &[(&[u8], &str)]) -> Vec<u8> {
    let manifests: Vec<_> = children
        .iter()
        .map(|(bytes, mt)| {
            let mut d = descriptor(mt, bytes);
            d["platform"] = json!({"architecture": "amd64", "os": "linux"});
            d
        })
        .collect();
    json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
        .to_string()
        .into_bytes()
}

fn build(case: &str) -> Repo {
    let mut repo = Repo::default();
    let delta = match case {
        "size-short" => 10, // the descriptor promises more than the body has
        "size-long" => -10,
        _ => 0,
    };
    let (manifest, blobs) = image(case, delta);
    for (digest, mut bytes) in blobs {
        if case == "blob-digest" && bytes.len() == 65536 {
            bytes[100] ^= 0xff;
        }
        repo.blobs.insert(digest, Bytes::from(bytes));
    }
    let doc = |bytes: &[u8], media_type| Doc {
        bytes: Bytes::copy_from_slice(bytes),
        media_type,
    };
    let mut put = |bytes: &[u8], media_type: &'static str, tag: bool| {
        repo.manifests
            .insert(sha256_digest(bytes), doc(bytes, media_type));
        if tag {
            repo.manifests.insert("1".into(), doc(bytes, media_type));
        }
    };
    match case {
        "self-index" => {
            // An index naming a child digest whose bytes are the index again.
            let index = index_of(&[(&manifest, OCI_MANIFEST)]);
            put(&index, OCI_INDEX, true);
            let child = sha256_digest(&manifest);
            repo.manifests.insert(child, doc(&index, OCI_INDEX));
        }
        "deep-index" => {
            let mut level = (manifest.clone(), OCI_MANIFEST);
            put(&manifest, OCI_MANIFEST, false);
            for _ in 0..6 {
                let index = index_of(&[(&level.0, level.1)]);
                put(&index, OCI_INDEX, false);
                level = (index, OCI_INDEX);
            }
            put(&level.0, OCI_INDEX, true);
        }
        "referrers" => {
            put(&manifest, OCI_MANIFEST, true);
            let empty = b"{}".to_vec();
            let signature = format!("signature of {}", sha256_digest(&manifest)).into_bytes();
            let artifact = json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "artifactType": SIGNATURE_TYPE,
                "config": descriptor("application/vnd.oci.empty.v1+json", &empty),
                "layers": [descriptor("application/vnd.example.signature.v1+json", &signature)],
                "subject": descriptor(OCI_MANIFEST, &manifest),
            })
            .to_string()
            .into_bytes();
            put(&artifact, OCI_MANIFEST, false);
            for blob in [empty, signature] {
                repo.blobs.insert(sha256_digest(&blob), Bytes::from(blob));
            }
            let mut listed = descriptor(OCI_MANIFEST, &artifact);
            listed["artifactType"] = json!(SIGNATURE_TYPE);
            let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [listed]});
            // Tag 2: an image whose one listed referrer is served with other bytes than
            // its digest names.
            let (second, blobs) = image("referrers, tag 2", 0);
            repo.manifests
                .insert("2".into(), doc(&second, OCI_MANIFEST));
            repo.manifests
                .insert(sha256_digest(&second), doc(&second, OCI_MANIFEST));
            for (digest, bytes) in blobs {
                repo.blobs.insert(digest, Bytes::from(bytes));
            }
            let claimed = br#"{"schemaVersion":2,"note":"what the list promises"}"#;
            repo.manifests.insert(
                sha256_digest(claimed),
                doc(
                    br#"{"schemaVersion":2,"note":"something else entirely"}"#,
                    OCI_MANIFEST,
                ),
            );
            let lie = json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
                "manifests": [descriptor(OCI_MANIFEST, claimed)]});
            repo.referrers = Some(HashMap::from([
                (sha256_digest(&manifest), Bytes::from(index.to_string())),
                (sha256_digest(&second), Bytes::from(lie.to_string())),
            ]));
        }
        "paged" => {
            put(&manifest, OCI_MANIFEST, true);
            for i in 0..PAGED_TAGS {
                repo.manifests
                    .insert(format!("t{i:03}"), doc(&manifest, OCI_MANIFEST));
            }
        }
        _ => put(&manifest, OCI_MANIFEST, true),
    }
    repo
}

impl FaultRegistry {
    pub async fn start() -> FaultRegistry {
        let repos = CASES
            .iter()
            .map(|(case, _)| (format!("fault/{case}"), build(case)))
            .collect();
        let shared = Arc::new(Shared {
            repos,
            elsewhere: Mutex::new(None),
            log: Mutex::new(Vec::new()),
            seen: Mutex::new(HashMap::new()),
            layer_gets: Mutex::new(Vec::new()),
            manifest_times: Mutex::new(Vec::new()),
        });
        let (addr, server) = serve(shared.clone()).await;
        // The "blob storage" that redirect-elsewhere points to: same content, other port.
        let (other, _) = serve(shared.clone()).await;
        *shared.elsewhere.lock().unwrap() = Some(other);
        FaultRegistry {
            addr,
            shared,
            _server: server,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The GETs of `case`'s layer, in order: (its Range header, the body bytes sent).
    pub fn layer_gets(&self, case: &str) -> Vec<(Option<String>, usize)> {
        self.shared
            .layer_gets
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _, _)| c == case)
            .map(|(_, range, sent)| (range.clone(), *sent))
            .collect()
    }

    /// Arrival times of the manifest requests of `throttled-1s`.
    pub fn retry_after_times(&self) -> Vec<Instant> {
        self.shared.manifest_times.lock().unwrap().clone()
    }

    /// Authorization headers the redirect target received for blob requests.
    pub fn authorization_seen_elsewhere(&self) -> Vec<Option<String>> {
        let other = self.shared.elsewhere.lock().unwrap().clone().unwrap();
        self.shared
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, path, _)| path.starts_with(&format!("//{other}")))
            .map(|(_, _, auth)| auth.clone())
            .collect()
    }
}

async fn serve(shared: Arc<Shared>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = Router::new()
        .fallback(handle)
        .with_state((shared, addr.clone()));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, server)
}

fn status(code: StatusCode) -> Response {
    code.into_response()
}

async fn handle(State((shared, me)): State<(Arc<Shared>, String)>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    shared.log.lock().unwrap().push((
        req.method().to_string(),
        format!("//{me}{path}"),
        auth.clone(),
    ));
    let count = {
        let mut seen = shared.seen.lock().unwrap();
        let n = seen.entry(format!("{} {path}", req.method())).or_default();
        *n += 1;
        *n
    };
    if path == "/v2/" {
        return status(StatusCode::OK);
    }
    if path == "/token" {
        return status(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return status(StatusCode::NOT_FOUND);
    };
    if rest == "fault/good/tags/list" {
        // Names no registry should send: none may reach a path or a config.
        let hostile = [
            "1",
            "../../etc",
            "a/b",
            "x\";} location / { root /;",
            "nul\0",
            "line\nbreak",
            ".hidden",
            "-dash",
            "{{x}}",
        ];
        let long = "a".repeat(129);
        let tags: Vec<&str> = hostile.iter().copied().chain([long.as_str()]).collect();
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"name": "fault/good", "tags": tags}).to_string(),
            ))
            .unwrap();
    }
    // ("fault/referrers/manifests/1" also contains "/referrers/".)
    if let Some((name, subject)) = rest.rsplit_once("/referrers/")
        && subject.starts_with("sha256:")
    {
        let Some(listed) = shared.repos.get(name).and_then(|r| r.referrers.as_ref()) else {
            return status(StatusCode::NOT_FOUND);
        };
        let empty = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []});
        let body = listed
            .get(subject)
            .cloned()
            .unwrap_or_else(|| Bytes::from(empty.to_string()));
        return Response::builder()
            .header(header::CONTENT_TYPE, OCI_INDEX)
            .body(Body::from(body))
            .unwrap();
    }
    if let Some(name) = rest.strip_suffix("/tags/list")
        && shared.repos.contains_key(name)
    {
        let tags: Vec<String> = match name {
            "fault/paged" => {
                let all = std::iter::once("1".to_owned())
                    .chain((0..PAGED_TAGS).map(|i| format!("t{i:03}")));
                let query = req.uri().query().unwrap_or_default();
                let param = |key: &str| {
                    query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                        .map(str::to_owned)
                };
                let n = param("n").and_then(|n| n.parse().ok()).unwrap_or(PAGE);
                let last = param("last");
                all.filter(|t| last.as_ref().is_none_or(|l| t > l))
                    .take(n)
                    .collect()
            }
            _ => vec!["1".to_owned()],
        };
        let mut resp = Response::builder().header(header::CONTENT_TYPE, "application/json");
        if name == "fault/paged"
            && let Some(last) = tags
                .last()
                .filter(|l| **l != format!("t{:03}", PAGED_TAGS - 1))
        {
            resp = resp.header(
                header::LINK,
                format!("</v2/{name}/tags/list?n={PAGE}&last={last}>; rel=\"next\""),
            );
        }
        return resp
            .body(Body::from(json!({"name": name, "tags": tags}).to_string()))
            .unwrap();
    }
    let (name, kind, reference) =
        match (rest.rsplit_once("/manifests/"), rest.rsplit_once("/blobs/")) {
            (Some((n, r)), _) => (n, "manifests", r),
            (_, Some((n, r))) => (n, "blobs", r),
            _ => return status(StatusCode::NOT_FOUND),
        };
    let case = name.strip_prefix("fault/").unwrap_or_default();
    let Some(repo) = shared.repos.get(name) else {
        return status(StatusCode::NOT_FOUND);
    };
    if case == "token-fails" {
        let realm = format!("http://{me}/token");
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(
                header::WWW_AUTHENTICATE,
                format!(r#"Bearer realm="{realm}",service="fault""#),
            )
            .body(Body::empty())
            .unwrap();
    }
    let elsewhere = shared.elsewhere.lock().unwrap().as_deref() == Some(me.as_str());
    if case == "redirect-elsewhere" && !elsewhere && auth.is_none() {
        // The registry wants credentials; its blob storage (elsewhere) does not.
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(header::WWW_AUTHENTICATE, r#"Basic realm="fault""#)
            .body(Body::empty())
            .unwrap();
    }
    if kind == "manifests" {
        if case == "throttled-1s" {
            shared.manifest_times.lock().unwrap().push(Instant::now());
        }
        if (case == "rate-limited-once" || case == "throttled-1s") && count == 1 {
            let wait = if case == "throttled-1s" { "1" } else { "0" };
            return Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header(header::RETRY_AFTER, wait)
                .body(Body::empty())
                .unwrap();
        }
        return manifest(case, repo, reference, req.method());
    }
    let Some(bytes) = repo.blobs.get(reference).cloned() else {
        return status(StatusCode::NOT_FOUND);
    };
    let is_layer = bytes.len() == 65536;
    match case {
        "redirect-loop" if is_layer => {
            return Response::builder()
                .status(StatusCode::FOUND)
                .header(header::LOCATION, path.clone())
                .body(Body::empty())
                .unwrap();
        }
        "redirect-elsewhere" if is_layer && !elsewhere => {
            let other = shared.elsewhere.lock().unwrap().clone().unwrap();
            return Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header(header::LOCATION, format!("http://{other}{path}?signed=1"))
                .body(Body::empty())
                .unwrap();
        }
        _ => {}
    }
    let (start, body) = ranged(req.headers(), &bytes);
    if start.is_none() && req.headers().contains_key(header::RANGE) {
        return status(StatusCode::RANGE_NOT_SATISFIABLE);
    }
    let offset = start.unwrap_or(0);
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, body.len());
    resp = if offset > 0 {
        resp.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {offset}-{}/{}", bytes.len() - 1, bytes.len()),
        )
    } else {
        resp.status(StatusCode::OK)
    };
    let sent = match case {
        "truncated" if is_layer && count == 1 => body.len() / 2,
        "slow-drip" if is_layer => 1,
        _ => body.len(),
    };
    if is_layer && *req.method() == Method::GET {
        let range = req
            .headers()
            .get(header::RANGE)
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        shared
            .layer_gets
            .lock()
            .unwrap()
            .push((case.to_owned(), range, sent));
    }
    let body = match case {
        // The first response breaks off half way; resuming with Range completes it.
        "truncated" if is_layer && count == 1 => broken_body(body.slice(..sent)),
        // One byte, then silence: only a stall timeout ends it.
        "slow-drip" if is_layer => dripping_body(body.slice(..sent)),
        _ => Body::from(body),
    };
    resp.body(body).unwrap()
}

fn manifest(case: &str, repo: &Repo, reference: &str, method: &Method) -> Response {
    if case == "huge-manifest" && *method == Method::GET {
        // 100 MB of JSON-ish bytes, no Content-Length, generated lazily.
        let chunks = futures::stream::iter(
            (0..100).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 1 << 20]))),
        );
        return Response::builder()
            .header(header::CONTENT_TYPE, OCI_MANIFEST)
            .body(Body::from_stream(chunks))
            .unwrap();
    }
    let Some(doc) = repo.manifests.get(reference) else {
        return status(StatusCode::NOT_FOUND);
    };
    let digest = sha256_digest(&doc.bytes);
    let mut bytes = doc.bytes.to_vec();
    if case == "manifest-digest" && *method == Method::GET {
        // Same length, one byte different from what the digest (and HEAD) promise.
        let i = bytes.iter().position(|&b| b == b'2').unwrap();
        bytes[i] = b'3';
    }
    let resp = Response::builder()
        .header(header::CONTENT_TYPE, doc.media_type)
        .header("Docker-Content-Digest", digest)
        .header(header::CONTENT_LENGTH, bytes.len());
    if *method == Method::HEAD {
        return resp.body(Body::empty()).unwrap();
    }
    resp.body(Body::from(bytes)).unwrap()
}

/// The bytes a `Range: bytes=N-` asks for (None if unsatisfiable), or all of them.
fn ranged(headers: &HeaderMap, bytes: &Bytes) -> (Option<usize>, Bytes) {
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return (Some(0), bytes.clone());
    };
    let start: Option<usize> = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok());
    match start {
        Some(s) if s < bytes.len() => (Some(s), bytes.slice(s..)),
        _ => (None, Bytes::new()),
    }
}

/// A body that sends `part` and then fails, as a dropped connection does. Between the
/// two the stream is pending for a moment, which is when hyper writes out what it has:
/// failing at once made it drop the connection with `part` (and the headers) unsent, so
/// the client saw a failed request, and resuming could not be told from starting over.
fn broken_body(part: Bytes) -> Body {
    let first = futures::stream::iter(vec![Ok::<_, std::io::Error>(part)]);
    let reset = futures::stream::once(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected reset",
        ))
    });
    Body::from_stream(futures::StreamExt::chain(first, reset))
}

/// A body that sends `part` and then nothing for a long time.
fn dripping_body(part: Bytes) -> Body {
    let first = futures::stream::iter(vec![Ok::<_, std::io::Error>(part)]);
    let stall = futures::stream::once(async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, std::io::Error>(Bytes::new())
    });
    Body::from_stream(futures::StreamExt::chain(first, stall))
}
