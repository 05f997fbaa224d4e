//! A recording HTTP proxy the harness puts in front of `docker-registry`. Each request is
//! noted (method, URI, `Range`) when it arrives, before it is forwarded, and the body
//! bytes passed back are counted as they go. So a client holding its answer always
//! finds its request in the record, and a request it abandoned is there too: counting
//! needs neither the registry's access log (written after the response, so possibly late)
//! nor a pause.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::AccessLogEntry;

/// One request as the proxy saw it.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    range: Option<String>,
    /// 0 until the registry answered (or when it could not be reached).
    status: AtomicU16,
    bytes: AtomicU64,
}

type Record = Arc<Mutex<Vec<Arc<Seen>>>>;

pub struct Proxy {
    addr: String,
    record: Record,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Headers that belong to one connection, not to the request or response.
const HOP_BY_HOP: [HeaderName; 3] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

impl Proxy {
    /// Listen on a free loopback port and forward everything to `upstream` (host:port),
    /// on a thread and runtime of its own (tests may be sync or async).
    pub fn start(upstream: &str) -> Proxy {
        let record: Record = Arc::default();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let state = (record.clone(), upstream.to_owned());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind proxy");
                addr_tx
                    .send(listener.local_addr().expect("proxy addr").to_string())
                    .expect("send proxy addr");
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .expect("proxy client");
                let app = Router::new()
                    .fallback(forward)
                    .with_state((state.0, state.1, client));
                // Returning drops the runtime, which ends every connection at once.
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stop => {}
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(super::START_TIMEOUT)
            .expect("proxy did not start");
        Proxy {
            addr,
            record,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Every request so far, in arrival order.
    pub fn entries(&self) -> Vec<AccessLogEntry> {
        self.record
            .lock()
            .unwrap()
            .iter()
            .map(|s| AccessLogEntry {
                method: s.method.clone(),
                path: s.path.clone(),
                status: s.status.load(Ordering::SeqCst),
                bytes: Some(s.bytes.load(Ordering::SeqCst)),
                range: s.range.clone(),
            })
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn forward(
    State((record, upstream, client)): State<(Record, String, reqwest::Client)>,
    req: Request,
) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let seen = Arc::new(Seen {
        method: req.method().to_string(),
        path: path.clone(),
        range: req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        status: AtomicU16::new(0),
        bytes: AtomicU64::new(0),
    });
    record.lock().unwrap().push(seen.clone());

    let (parts, body) = req.into_parts();
    let mut upstream_req = client.request(parts.method, format!("http://{upstream}{path}"));
    // The Host header goes along, so the registry's Location headers name the proxy.
    for (name, value) in parts.headers.iter() {
        if !HOP_BY_HOP.contains(name) {
            upstream_req = upstream_req.header(name, value);
        }
    }
    let upstream_req = upstream_req.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    let resp = match upstream_req.send().await {
        Ok(resp) => resp,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("proxy: {e}")).into_response(),
    };
    seen.status.store(resp.status().as_u16(), Ordering::SeqCst);
    let mut out = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        if !HOP_BY_HOP.contains(name) {
            out = out.header(name, value);
        }
    }
    // Counted before each chunk goes on: once the client has the last byte, so does the
    // record.
    let stream = resp.bytes_stream().inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            seen.bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
    });
    out.body(Body::from_stream(stream))
        .unwrap_or_else(|e| (StatusCode::BAD_GATEWAY, format!("proxy: {e}")).into_response())
}
