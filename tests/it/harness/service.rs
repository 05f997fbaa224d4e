//! `static-registry sync` as a service process: started with its control API on a free
//! loopback port, driven over HTTP, signalled, and killed on drop.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{PORT_ATTEMPTS, START_TIMEOUT, free_port};

/// Bound on any wait for the service to reach a state.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Service {
    child: Child,
    pub addr: String,
    pub token: Option<String>,
    log: PathBuf,
    _dir: Option<tempfile::TempDir>,
    http: reqwest::Client,
}

impl Service {
    /// `sync --config CONFIG --listen 127.0.0.1:<free>` plus `args`; `token` is written to
    /// a token file and passed.
    pub async fn start(config: &str, args: &[&str], token: Option<&str>) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("service.log");
        let token_file = dir.path().join("token");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        for _ in 0..PORT_ATTEMPTS {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_static-registry"));
            cmd.args(["sync", "--config", config, "--listen", &addr])
                .args(args)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log).unwrap());
            if let Some(t) = token {
                std::fs::write(&token_file, format!("{t}\n")).unwrap();
                cmd.arg("--token-file").arg(&token_file);
            }
            let mut s = Service {
                child: cmd.spawn().expect("spawn static-registry sync"),
                addr,
                token: token.map(str::to_owned),
                log: log.clone(),
                _dir: None,
                http: http.clone(),
            };
            let deadline = Instant::now() + START_TIMEOUT;
            while Instant::now() < deadline {
                if let Some(status) = s.child.try_wait().unwrap() {
                    let log = s.log();
                    assert!(
                        log.contains("Address already in use"),
                        "the service exited ({status}) at start:\n{log}"
                    );
                    break;
                }
                if s.get_as("/healthz", None).await.0 == 200 {
                    s._dir = Some(dir);
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("the service did not come up");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET with the service's token: (status, JSON body or the text as a JSON string).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(path, self.token.as_deref()).await
    }

    pub async fn get_as(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let req = self.http.get(self.url(path));
        answer(match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        })
        .await
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        answer(self.authed(self.http.post(self.url(path)))).await
    }

    /// POST `body` as JSON with the service's token.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        answer(self.authed(self.http.post(self.url(path)).json(body))).await
    }

    /// PUT `body` as JSON with the service's token.
    pub async fn put_json(&self, path: &str, body: &Value) -> (u16, Value) {
        answer(self.authed(self.http.put(self.url(path)).json(body))).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        answer(self.authed(self.http.delete(self.url(path)))).await
    }

    /// POST raw bytes as JSON, on a connection of its own: a server refusing a body
    /// (413) closes the connection while it is still being sent, and a pooled one
    /// would fail the next request.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let req = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .header("connection", "close")
            .body(body);
        answer(self.authed(req)).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `req` with the service's token, when it has one.
    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Polls GET `path` until `done` holds for its body, or panics with the log.
    pub async fn wait_for(&self, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + STATE_TIMEOUT;
        loop {
            let (status, body) = self.get(path).await;
            if status == 200 && done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached; last {status} {body}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Waits (bounded) for the process to exit.
    pub async fn exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STATE_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the service did not exit:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn answer(req: reqwest::RequestBuilder) -> (u16, Value) {
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (status, body)
        }
        Err(_) => (0, Value::Null),
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
