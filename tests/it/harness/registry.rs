//! A real `docker-registry` (distribution 2.8) on a private loopback port, behind the
//! harness's recording proxy (`proxy.rs`), which is what tests count requests at.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::proxy::Proxy;
use super::{
    AccessLogEntry, HARNESS_QUERY, PORT_ATTEMPTS, START_TIMEOUT, free_port, keep_tmp, raw_http_get,
    require_bin, tail,
};

pub struct Registry {
    child: Child,
    /// docker-registry's own address; clients of a plain one use the proxy's.
    upstream: String,
    /// The recording proxy, for plain-HTTP registries without auth (TLS and auth
    /// registries are addressed directly; their tests count nothing).
    proxy: Option<Proxy>,
    tls: bool,
    storage: PathBuf,
    log_path: PathBuf,
    /// `Option` only so `Drop` can `keep()` it when asked to.
    dir: Option<tempfile::TempDir>,
    /// Number of (non-harness) requests hidden by the last `mark()`.
    mark: AtomicUsize,
    http: reqwest::Client,
}

enum Startup {
    Ready,
    PortTaken,
}

/// What [`Registry::start_with`] adds to the plain registry of [`Registry::start`].
#[derive(Default)]
pub struct RegistryConfig {
    /// Serve this filesystem storage (another registry's [`Registry::storage`], which
    /// the caller keeps alive) instead of a fresh one.
    pub storage: Option<PathBuf>,
    /// Serve HTTPS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Top-level YAML appended to the config, e.g. an `auth:` section.
    pub extra_yaml: String,
}

impl Registry {
    /// Start a registry with filesystem storage in a fresh temp dir, no auth,
    /// access log on. Blocks (≤ ~10 s per port attempt) until `GET /v2/` is 200.
    pub fn start() -> Registry {
        Self::start_with(RegistryConfig::default())
    }

    /// [`Registry::start`] with TLS, auth or shared storage. A registry with TLS or
    /// auth cannot answer the harness's plain anonymous probe, so it counts as up
    /// once it logs that it listens on its port (logged after the bind and the
    /// TLS setup); `sync`, `entries` and the push helpers need a plain one.
    pub fn start_with(cfg: RegistryConfig) -> Registry {
        let bin = require_bin("docker-registry", "docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("it-registry-")
            .tempdir()
            .expect("create registry temp dir");
        let storage = cfg
            .storage
            .clone()
            .unwrap_or_else(|| dir.path().join("storage"));
        let secured = cfg.tls.is_some() || !cfg.extra_yaml.is_empty();
        let log_path = dir.path().join("registry.log");
        let config = dir.path().join("config.yml");

        for attempt in 0..PORT_ATTEMPTS {
            let addr = format!("127.0.0.1:{}", free_port());
            std::fs::write(&config, config_yaml(&addr, &storage, &cfg)).expect("write config.yml");
            // One O_APPEND file for both streams: each log line is a single
            // write(2), so stdout (access log) and stderr (logrus) interleave
            // by whole lines.
            std::fs::write(&log_path, b"").expect("truncate registry.log");
            let log = OpenOptions::new()
                .append(true)
                .open(&log_path)
                .expect("open registry.log");
            let child = Command::new(&bin)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log fd"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin.display()));
            let mut reg = Registry {
                child,
                upstream: addr,
                proxy: None,
                tls: cfg.tls.is_some(),
                storage: storage.clone(),
                log_path: log_path.clone(),
                dir: None,
                mark: AtomicUsize::new(0),
                http: reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .expect("reqwest client"),
            };
            match reg.wait_ready(attempt, secured) {
                Startup::Ready => {
                    reg.dir = Some(dir);
                    if !secured {
                        reg.proxy = Some(Proxy::start(&reg.upstream));
                    }
                    return reg;
                }
                // Lost the race for the port to someone else; `reg` drops
                // (kills the child) and we try another port.
                Startup::PortTaken => continue,
            }
        }
        panic!(
            "docker-registry: no free port after {PORT_ATTEMPTS} attempts; log tail:\n{}",
            tail(&log_path, 30)
        );
    }

    fn wait_ready(&mut self, attempt: usize, secured: bool) -> Startup {
        // A unique probe path proves that *our* process answered, not some
        // other server that won the port.
        let probe = format!("/v2/?{HARNESS_QUERY}ready-{attempt}");
        // Only logged by the process that bound the port.
        let listening = format!("listening on {}", self.upstream);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait registry") {
                let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                if log.contains("address already in use") {
                    return Startup::PortTaken;
                }
                panic!(
                    "docker-registry exited during startup ({status}); log tail:\n{}",
                    tail(&self.log_path, 30)
                );
            }
            if secured {
                let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                if log.contains(&listening) {
                    return Startup::Ready;
                }
            } else if let Ok(200) = raw_http_get(&self.upstream, &probe, Duration::from_secs(1)) {
                let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                if log.contains(&probe) {
                    return Startup::Ready;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "docker-registry on {} not answering 200 on GET /v2/ within {START_TIMEOUT:?}; log tail:\n{}",
                    self.upstream,
                    tail(&self.log_path, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT` (the recording proxy's, for a plain registry)
    pub fn addr(&self) -> String {
        match &self.proxy {
            Some(proxy) => proxy.addr().to_owned(),
            None => self.upstream.clone(),
        }
    }

    /// `http://127.0.0.1:PORT` (`https://` when serving TLS)
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr())
    }

    /// The filesystem storage directory, for [`RegistryConfig::storage`].
    pub fn storage(&self) -> &Path {
        &self.storage
    }

    fn proxy(&self) -> &Proxy {
        self.proxy
            .as_ref()
            .expect("requests are recorded for plain registries only")
    }

    /// Last `n` lines of the combined stdout/stderr log, for assertion messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path, n)
    }

    /// Shared async HTTP client (no proxy). Tied to whichever tokio runtime
    /// first uses it, so use one `Registry` from one runtime.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Every request the registry was sent since start, minus harness probes. Complete
    /// for every response a client has received (see `proxy.rs`).
    pub fn all_entries(&self) -> Vec<AccessLogEntry> {
        self.proxy()
            .entries()
            .into_iter()
            .filter(|e| !e.path.contains(HARNESS_QUERY))
            .collect()
    }

    /// Requests since the last `mark()` (or since start).
    pub fn entries(&self) -> Vec<AccessLogEntry> {
        let mut all = self.all_entries();
        let skip = self.mark.load(Ordering::SeqCst).min(all.len());
        all.drain(..skip);
        all
    }

    /// `(method, uri)` of requests since the last `mark()`.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.entries()
            .into_iter()
            .map(|e| (e.method, e.path))
            .collect()
    }

    /// Requests since the last `mark()` with this method whose URI contains
    /// `path_substring`.
    pub fn count(&self, method: &str, path_substring: &str) -> usize {
        self.entries()
            .iter()
            .filter(|e| e.method.eq_ignore_ascii_case(method) && e.path.contains(path_substring))
            .count()
    }

    /// From now on `entries`/`requests`/`count` only see later requests.
    pub fn mark(&self) {
        let n = self.all_entries().len();
        self.mark.store(n, Ordering::SeqCst);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- docker-registry {} log tail ({}; IT_KEEP_TMP=1 keeps it) ---\n{}",
                self.upstream,
                self.log_path.display(),
                self.log_tail(40)
            );
        }
        if keep_tmp()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("IT_KEEP_TMP: keeping {}", dir.keep().display());
        }
    }
}

fn config_yaml(addr: &str, storage: &Path, cfg: &RegistryConfig) -> String {
    // Upload purging off: nothing should delete state under a running test.
    // A fixed http.secret silences the "no HTTP secret" warning. Foreign-layer
    // URLs are rejected unless an allow list is configured.
    format!(
        r#"version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: "{storage}"
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
validation:
  manifests:
    urls:
      allow:
        - '^https?://'
http:
  addr: "{addr}"
  secret: it-harness-not-a-secret
{tls}{extra}"#,
        storage = storage.display(),
        tls = match &cfg.tls {
            Some((cert, key)) => format!(
                "  tls:\n    certificate: \"{}\"\n    key: \"{}\"\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        },
        extra = cfg.extra_yaml,
    )
}
