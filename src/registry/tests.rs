//! Tests of the request pipeline against a tiny HTTP/1.1 server on loopback,
//! plus the pure helpers of `mod.rs`.

use super::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use base64::Engine;

// ---------------------------------------------------------------------------
// Mock server

#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: bool,
}

impl Resp {
    fn new(status: u16) -> Self {
        Resp {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            chunked: false,
        }
    }
    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }
    fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }
}

type Handler = Arc<dyn Fn(&Req) -> Resp + Send + Sync>;

/// Serves `handler` on 127.0.0.1 until dropped; logs every request.
struct Mock {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Req>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Mock {
    fn start(handler: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Handler = Arc::new(handler);
        let (log2, stop2) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (h, l) = (handler.clone(), log2.clone());
                        std::thread::spawn(move || serve(s, h, l));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Mock {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn requests(&self) -> Vec<Req> {
        lock(&self.log).clone()
    }

    fn count(&self, path_prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .count()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// Blob digests the mock storage server keys its behaviour on.
const PLAIN: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const IGNORE_RANGE: &str =
    "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const BAD_RANGE: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

fn serve(mut s: TcpStream, handler: Handler, log: Arc<Mutex<Vec<Req>>>) {
    s.set_nonblocking(false).unwrap();
    // Bounded so connection threads end even if a client lingers.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            if buf.first() == Some(&0x16) {
                // A TLS ClientHello on a plain port: answer in plain HTTP like
                // real servers do, which the client sees as a TLS failure.
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
                return;
            }
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let method = first.next().unwrap_or_default().to_string();
        let path = first.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let req = Req {
            method,
            path,
            headers,
        };
        let body_len: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + 4 + body_len {
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        buf.drain(..head_end + 4 + body_len);
        let resp = handler(&req);
        let is_head = req.method == "HEAD";
        lock(&log).push(req);
        let mut out = format!("HTTP/1.1 {} X\r\n", resp.status);
        for (k, v) in &resp.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if resp.chunked {
            out.push_str("Transfer-Encoding: chunked\r\n\r\n");
        } else {
            out.push_str(&format!("Content-Length: {}\r\n\r\n", resp.body.len()));
        }
        let mut bytes = out.into_bytes();
        if !is_head {
            if resp.chunked {
                for c in resp.body.chunks(7) {
                    bytes.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    bytes.extend_from_slice(c);
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend_from_slice(b"0\r\n\r\n");
            } else {
                bytes.extend_from_slice(&resp.body);
            }
        }
        if s.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// A client that never looks at this machine's real auth files.
fn client(opts: ClientOptions) -> Client {
    let mut c = Client::new(opts).unwrap();
    Arc::get_mut(&mut c.inner).unwrap().auth_files = Vec::new();
    c
}

fn insecure() -> ClientOptions {
    ClientOptions {
        tls_verify: false,
        retries: 0,
        ..ClientOptions::default()
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
const UNAUTHORIZED_BODY: &str =
    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;

fn manifest_resp() -> Resp {
    Resp::new(200)
        .header(
            "Content-Type",
            "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
        )
        .header("Docker-Content-Digest", "sha256:abcd")
        .body(MANIFEST)
}

// ---------------------------------------------------------------------------
// Pipeline tests

#[tokio::test]
async fn bearer_flow_fetches_one_token_for_concurrent_requests() {
    let token = Mock::start(|req| {
        let ok_auth = format!("Basic {}", b64("user:pa:ss"));
        if req.header("authorization") != Some(ok_auth.as_str()) {
            return Resp::new(401);
        }
        assert!(req.path.contains("service=mock"), "{}", req.path);
        assert!(
            req.path.contains("scope=repository%3Aa%2Fb%3Apull"),
            "{}",
            req.path
        );
        Resp::new(200).body(r#"{"token":"tok-1","expires_in":300}"#)
    });
    let realm = format!("http://{}/token", token.host());
    let reg = Mock::start(move |req| {
        if req.header("authorization") == Some("Bearer tok-1") {
            return manifest_resp();
        }
        Resp::new(401)
            .header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="{realm}",service="mock",scope="repository:a/b:pull""#),
            )
            .body(UNAUTHORIZED_BODY)
    });
    let c = client(ClientOptions {
        creds: Some(("user".into(), "pa:ss".into())),
        ..insecure()
    });
    let host = reg.host();
    let results =
        futures::future::join_all((0..8).map(|_| c.get_manifest(&host, "a/b", "latest"))).await;
    for r in results {
        let m = r.unwrap();
        assert_eq!(&m.bytes[..], MANIFEST);
        assert_eq!(
            m.media_type.as_deref(),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        assert_eq!(m.digest.as_deref(), Some("sha256:abcd"));
    }
    let head = c.head_manifest(&host, "a/b", "latest").await.unwrap();
    assert_eq!(head.digest.as_deref(), Some("sha256:abcd"));
    assert_eq!(head.size, Some(MANIFEST.len() as u64));
    assert_eq!(token.count("/token"), 1, "token fetched once");
    // Once the host's challenge is known, requests authenticate up front.
    let before = reg.requests().len();
    c.get_manifest(&host, "a/b", "v2").await.unwrap();
    assert_eq!(reg.requests().len(), before + 1);
    for r in reg.requests() {
        assert_eq!(r.header("accept"), Some(MANIFEST_ACCEPT));
    }
    // tls_verify=false and a plain-http server: fell back and remembered it.
    assert_eq!(lock(&c.inner.schemes).get(&host), Some(&Scheme::Http));
}

#[tokio::test]
async fn stale_cached_token_is_replaced_once() {
    let issued = Arc::new(AtomicUsize::new(0));
    let issued2 = issued.clone();
    let token = Mock::start(move |_| {
        let n = issued2.fetch_add(1, Ordering::SeqCst) + 1;
        // access_token is the OAuth2 spelling some registries use.
        Resp::new(200).body(format!(r#"{{"access_token":"tok-{n}"}}"#))
    });
    let realm = format!("http://{}/token", token.host());
    let issued3 = issued.clone();
    let reg = Mock::start(move |req| {
        // Only the newest token is valid: earlier ones count as revoked.
        let current = format!("Bearer tok-{}", issued3.load(Ordering::SeqCst));
        if req.header("authorization") == Some(current.as_str()) && !req.path.contains("revoke") {
            return manifest_resp();
        }
        if req.header("authorization").is_some() && req.path.contains("revoke") {
            return Resp::new(401)
                .header("WWW-Authenticate", &format!(r#"Bearer realm="{realm}""#));
        }
        Resp::new(401).header("WWW-Authenticate", &format!(r#"Bearer realm="{realm}""#))
    });
    let c = client(insecure());
    let host = reg.host();
    c.get_manifest(&host, "a/b", "one").await.unwrap();
    assert_eq!(token.count("/token"), 1);
    issued.fetch_add(1, Ordering::SeqCst); // revoke tok-1 (tok-2 never handed out)
    // Cached tok-1 is refused → dropped → fresh token → accepted.
    c.get_manifest(&host, "a/b", "two").await.unwrap();
    assert_eq!(token.count("/token"), 2);
    // A freshly fetched token that is refused is not fetched again and again.
    let e = c.get_manifest(&host, "a/b", "revoke").await.unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    assert_eq!(token.count("/token"), 3);
}

#[tokio::test]
async fn basic_auth_from_authfile_and_unauthorized_message() {
    let reg = Mock::start(|req| {
        let ok = format!("Basic {}", b64("fileuser:filepw"));
        if req.header("authorization") == Some(ok.as_str()) {
            return manifest_resp();
        }
        Resp::new(401)
            .header("WWW-Authenticate", r#"Basic realm="Registry Realm""#)
            .body(UNAUTHORIZED_BODY)
    });
    let host = reg.host();

    // Anonymous: the error names repo and registry and says what to do.
    let c = client(insecure());
    let e = c.get_manifest(&host, "team/app", "1.0").await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{msg}");
    assert_eq!(e.code(), Some("UNAUTHORIZED"));
    assert!(msg.contains("team/app") && msg.contains(&host), "{msg}");
    assert!(
        matches!(e.remedy(), Some(Remedy::Credentials { .. })),
        "{msg}"
    );
    assert_eq!(
        reg.count("/v2/"),
        1,
        "no pointless retry without credentials"
    );

    // With an auth file (podman format, namespaced key).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.json");
    std::fs::write(
        &file,
        format!(
            r#"{{"auths":{{"{host}/team":{{"auth":"{}"}}}}}}"#,
            b64("fileuser:filepw")
        ),
    )
    .unwrap();
    let mut c = Client::new(ClientOptions {
        authfile: Some(file.clone()),
        ..insecure()
    })
    .unwrap();
    Arc::get_mut(&mut c.inner).unwrap().auth_files = vec![file];
    let m = c.get_manifest(&host, "team/app", "1.0").await.unwrap();
    assert_eq!(&m.bytes[..], MANIFEST);
    // Outside the namespace the file has nothing: refused again.
    let e = c.get_manifest(&host, "other/app", "1.0").await.unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
}

#[tokio::test]
async fn not_found_keeps_oci_code() {
    let reg = Mock::start(|_| {
        Resp::new(404)
            .body(r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#)
    });
    let c = client(insecure());
    let e = c.get_manifest(&reg.host(), "a", "nope").await.unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(e.code(), Some("MANIFEST_UNKNOWN"));
    assert!(e.to_string().contains("manifest unknown"), "{e}");
    assert!(e.url().unwrap().ends_with("/v2/a/manifests/nope"));
    let e = c.head_manifest(&reg.host(), "a", "nope").await.unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(reg.count("/v2/"), 2, "404 is not retried");
}

#[tokio::test]
async fn manifest_cap_is_enforced_while_streaming() {
    let reg = Mock::start(|req| {
        let body = vec![b'x'; 100];
        match req.path.as_str() {
            "/v2/a/manifests/chunked" => Resp::new(200).body(body).chunked(),
            "/v2/a/manifests/exact" => Resp::new(200).body(vec![b'x'; 50]).chunked(),
            _ => Resp::new(200).body(body),
        }
    });
    let c = client(ClientOptions {
        max_manifest_bytes: 50,
        ..insecure()
    });
    for tag in ["chunked", "sized"] {
        let e = c.get_manifest(&reg.host(), "a", tag).await.unwrap_err();
        assert!(
            matches!(e, RegistryError::ManifestTooLarge { limit: 50, .. }),
            "{e}"
        );
    }
    let m = c.get_manifest(&reg.host(), "a", "exact").await.unwrap();
    assert_eq!(m.bytes.len(), 50);
}

#[tokio::test]
async fn retries_transient_statuses_only() {
    let hits = Arc::new(AtomicUsize::new(0));
    let hits2 = hits.clone();
    let reg = Mock::start(move |_| {
        if hits2.fetch_add(1, Ordering::SeqCst) < 2 {
            Resp::new(503).header("Retry-After", "0")
        } else {
            manifest_resp()
        }
    });
    let c = client(ClientOptions {
        retries: 3,
        ..insecure()
    });
    c.get_manifest(&reg.host(), "a", "t").await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    let reg = Mock::start(|_| Resp::new(429).header("Retry-After", "0"));
    let c = client(ClientOptions {
        retries: 2,
        ..insecure()
    });
    let e = c.get_manifest(&reg.host(), "a", "t").await.unwrap_err();
    assert!(
        matches!(e, RegistryError::Status { status: 429, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("rate limiting"), "{e}");
    assert_eq!(reg.count("/v2/"), 3);
}

#[tokio::test]
async fn blob_redirect_drops_authorization_and_honours_range() {
    const BLOB: &[u8] = b"0123456789";
    let storage = Mock::start(|req| {
        if req.path.contains(&IGNORE_RANGE[7..]) {
            return Resp::new(200).body(BLOB);
        }
        if req.path.contains(&BAD_RANGE[7..]) && req.header("range").is_some() {
            return Resp::new(206)
                .header("Content-Range", "bytes 1-9/10")
                .body(&BLOB[1..]);
        }
        match req.header("range") {
            Some("bytes=3-") => Resp::new(206)
                .header("Content-Range", "bytes 3-9/10")
                .body(&BLOB[3..]),
            Some("bytes=20-") => Resp::new(416).header("Content-Range", "bytes */10"),
            Some(r) => panic!("unexpected range {r}"),
            None => Resp::new(200).body(BLOB),
        }
    });
    let storage_host = storage.host();
    let reg = Mock::start(move |req| {
        let ok = format!("Basic {}", b64("u:p"));
        if req.header("authorization") != Some(ok.as_str()) {
            return Resp::new(401).header("WWW-Authenticate", r#"Basic realm="r""#);
        }
        let kind = req.path.rsplit(':').next().unwrap_or_default().to_string();
        Resp::new(307).header(
            "Location",
            &format!("http://{storage_host}/blob/{kind}?sig=secret"),
        )
    });
    let c = client(ClientOptions {
        creds: Some(("u".into(), "p".into())),
        ..insecure()
    });
    let host = reg.host();
    let collect = |b: BlobResponse| async move {
        let chunks: Vec<Bytes> = b.stream.try_collect().await.unwrap();
        chunks.concat()
    };

    let b = c.get_blob(&host, "a", PLAIN, 0).await.unwrap();
    assert_eq!((b.offset, b.content_length), (0, Some(10)));
    assert_eq!(collect(b).await, BLOB);

    let b = c.get_blob(&host, "a", PLAIN, 3).await.unwrap();
    assert_eq!((b.offset, b.content_length), (3, Some(7)));
    assert_eq!(collect(b).await, &BLOB[3..]);

    // Server ignores Range, sends a different range, or cannot satisfy it:
    // the caller gets the whole blob and offset 0.
    for (digest, offset) in [(IGNORE_RANGE, 3), (BAD_RANGE, 3), (PLAIN, 20)] {
        let b = c.get_blob(&host, "a", digest, offset).await.unwrap();
        assert_eq!(b.offset, 0, "{digest} {offset}");
        assert_eq!(collect(b).await, BLOB);
    }

    assert!(!storage.requests().is_empty());
    for r in storage.requests() {
        assert_eq!(
            r.header("authorization"),
            None,
            "credentials leaked to {}",
            r.path
        );
        assert_eq!(r.header("referer"), None);
    }
}

#[tokio::test]
async fn tls_verify_keeps_https_and_explains_failure() {
    let reg = Mock::start(|_| manifest_resp());
    let c = client(ClientOptions {
        retries: 2,
        ..ClientOptions::default()
    });
    let e = c.get_manifest(&reg.host(), "a", "t").await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, RegistryError::Tls { .. }), "{msg}");
    assert!(
        msg.starts_with("TLS handshake with 127.0.0.1 failed"),
        "{msg}"
    );
    assert!(matches!(e.remedy(), Some(Remedy::Tls { .. })), "{msg}");
    assert!(reg.requests().is_empty(), "no plain http with tls_verify");
}

#[tokio::test]
async fn connection_refused_names_host_and_port() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = client(insecure());
    let e = c
        .get_manifest(&format!("127.0.0.1:{port}"), "a", "t")
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::ConnectionRefused { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("127.0.0.1 port {port} refused")),
        "{e}"
    );
    // Nothing worked, so no scheme was remembered.
    assert!(lock(&c.inner.schemes).is_empty());
}

#[tokio::test]
async fn invalid_arguments_are_refused_before_any_request() {
    let c = client(insecure());
    for (host, repo, reference) in [
        ("", "a", "t"),
        ("https://x", "a", "t"),
        ("x/y", "a", "t"),
        ("u@x", "a", "t"),
        ("x:99999", "a", "t"),
        ("x", "", "t"),
        ("x", "a/../b", "t"),
        ("x", "a//b", "t"),
        ("x", "a?b", "t"),
        ("x", "a", ""),
        ("x", "a", "t/../../x"),
        ("x", "a", "sha256:"),
        ("x", "a", "sha256:ab/cd"),
        ("x", "A", "t"),
        ("x", "a", "t#f"),
    ] {
        let e = c.head_manifest(host, repo, reference).await.unwrap_err();
        assert!(
            matches!(
                e,
                RegistryError::InvalidArgument { .. } | RegistryError::Reference(_)
            ),
            "{host} {repo} {reference}: {e}"
        );
    }
    assert!(validate_host("[::1]:5000").is_ok());
    assert!(validate_host("registry-1.docker.io").is_ok());
    assert!(validate_repo("library/alpine").is_ok());
    assert!(validate_reference("v1.2.3-rc_1").is_ok());
    assert!(validate_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
}

#[test]
fn bad_tls_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    let e = Client::new(ClientOptions {
        ca_certs: vec![ca],
        ..ClientOptions::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("ca.pem"), "{e}");
    let e = Client::new(ClientOptions {
        ca_certs: vec![dir.path().join("missing.pem")],
        ..ClientOptions::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
    std::fs::write(dir.path().join("client.key"), "x").unwrap();
    let e = Client::new(ClientOptions {
        cert_dir: Some(dir.path().to_path_buf()),
        ..ClientOptions::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("client.key"), "{e}");
}

// ---------------------------------------------------------------------------
// Helpers

#[test]
fn accept_header_lists_all_manifest_types_index_first() {
    assert_eq!(MANIFEST_ACCEPT, MANIFEST_MEDIA_TYPES.join(", "));
    assert!(MANIFEST_ACCEPT.starts_with("application/vnd.oci.image.index.v1+json"));
    for t in [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ] {
        assert!(MANIFEST_ACCEPT.contains(t), "{t}");
    }
    assert!(HeaderValue::from_str(MANIFEST_ACCEPT).is_ok());
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn header_helpers() {
    let h = headers(&[
        (
            "content-type",
            "Application/Vnd.Docker.Distribution.Manifest.V2+json ; charset=utf-8",
        ),
        ("content-length", " 1234 "),
        ("content-range", "bytes 100-199/200"),
        ("retry-after", "3600"),
    ]);
    assert_eq!(
        media_type(&h).as_deref(),
        Some("application/vnd.docker.distribution.manifest.v2+json")
    );
    assert_eq!(content_length(&h), Some(1234));
    assert_eq!(content_range_start(&h), Some(100));
    assert_eq!(retry_after(&h), Some(RETRY_AFTER_CAP));
    assert_eq!(
        content_range_start(&headers(&[("content-range", "bytes 5-9/*")])),
        Some(5)
    );
    assert_eq!(
        content_range_start(&headers(&[("content-range", "bytes */10")])),
        None
    );
    assert_eq!(
        retry_after(&headers(&[(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT"
        )])),
        None
    );
    assert_eq!(media_type(&headers(&[("content-type", " ; x=y")])), None);
}

#[test]
fn backoff_grows_with_jitter_and_is_capped() {
    for n in 0..40 {
        let d = backoff(n);
        assert!(d <= BACKOFF_CAP, "{n}: {d:?}");
        if n == 0 {
            assert!(d >= Duration::from_millis(160) && d <= Duration::from_millis(240));
        }
    }
    assert_eq!(backoff(10), BACKOFF_CAP);
}

#[test]
fn token_response_forms() {
    let t = parse_token_response(br#"{"token":"a","access_token":"b","expires_in":300}"#).unwrap();
    assert_eq!(t.value, "a");
    let t = parse_token_response(br#"{"token":"","access_token":"b"}"#).unwrap();
    assert_eq!(t.value, "b");
    assert!(t.is_fresh());
    assert!(parse_token_response(br#"{"expires_in":3}"#).is_err());
    assert!(parse_token_response(b"<html>").is_err());
}

#[test]
fn options_debug_hides_password() {
    let o = ClientOptions {
        creds: Some(("me".into(), "hunter2".into())),
        ..ClientOptions::default()
    };
    let s = format!("{o:?}");
    assert!(s.contains("me") && !s.contains("hunter2"), "{s}");
    assert_eq!(o.max_manifest_bytes, 4 * 1024 * 1024);
    assert_eq!(o.retries, 3);
    assert!(o.tls_verify);
}

#[tokio::test]
async fn tag_list_follows_link_pagination_on_the_same_host_only() {
    let reg = Mock::start(|req| {
        if req.path.contains("last=b") {
            return Resp::new(200).body(r#"{"name":"a","tags":["c"]}"#);
        }
        Resp::new(200)
            .header("Link", r#"</v2/a/tags/list?n=2&last=b>; rel="next""#)
            .body(r#"{"name":"a","tags":["a","b"]}"#)
    });
    let c = client(insecure());
    let tags = c.list_tags(&reg.host(), "a").await.unwrap();
    assert_eq!(tags, ["a", "b", "c"]);

    let elsewhere = Mock::start(|_| {
        Resp::new(200)
            .header(
                "Link",
                r#"<http://example.invalid/v2/a/tags/list?last=b>; rel="next""#,
            )
            .body(r#"{"name":"a","tags":["a"]}"#)
    });
    let err = c.list_tags(&elsewhere.host(), "a").await.unwrap_err();
    assert!(err.to_string().contains("another host"), "{err}");
}
