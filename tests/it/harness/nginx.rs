//! A private nginx: config, logs, pid and temp dirs all inside a temp dir.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{
    AccessLogEntry, HARNESS_QUERY, PORT_ATTEMPTS, START_TIMEOUT, SYNC_TIMEOUT, free_port, keep_tmp,
    parse_access_log, raw_http_get, require_bin, running_as_root, tail,
};

/// The unprivileged user nginx's workers run as when the tests run as root.
pub const WORKER_USER: &str = "nobody";
pub const WORKER_GROUP: &str = "nogroup";

pub struct Nginx {
    child: Child,
    port: u16,
    prefix: PathBuf,
    dir: Option<tempfile::TempDir>,
    seq: AtomicUsize,
}

impl Nginx {
    /// Start nginx with `server_block` (one or more `server { ... }` blocks)
    /// inside `http {}`. Placeholders: `{{PORT}}` (the chosen free port) and
    /// `{{TMP}}` (the prefix dir, e.g. for a `root` the test filled).
    /// `nginx -t` runs first so config mistakes fail with nginx's message.
    pub fn start(server_block: &str) -> Nginx {
        let dir = super::served_tempdir("it-nginx-");
        let mut nginx = Self::start_in(dir.path(), server_block);
        nginx.dir = Some(dir);
        nginx
    }

    /// Like `start`, but in a caller-owned `prefix` directory (kept on drop).
    pub fn start_in(prefix: &Path, server_block: &str) -> Nginx {
        Self::start_with(prefix, server_block, |_| {})
    }

    /// Like `start_in`; `prepare` is called with the chosen port before nginx reads its
    /// configuration, to write files the server block includes.
    pub fn start_with(prefix: &Path, server_block: &str, prepare: impl Fn(u16)) -> Nginx {
        Self::start_config(prefix, |port| {
            prepare(port);
            nginx_conf(prefix, port, server_block)
        })
    }

    /// Start nginx with the whole `nginx.conf` that `config` makes for the chosen port
    /// (it must listen there and write its pid to `<prefix>/nginx.pid`).
    pub fn start_config(prefix: &Path, config: impl Fn(u16) -> String) -> Nginx {
        let bin = require_bin("nginx", "nginx");
        let conf = prefix.join("nginx.conf");
        let log = prefix.join("nginx.stderr.log");
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            std::fs::write(&conf, config(port)).expect("write nginx.conf");
            let test = super::run_with_timeout(
                Command::new(&bin)
                    .arg("-t")
                    .args(["-e", "stderr", "-p"])
                    .arg(prefix)
                    .arg("-c")
                    .arg(&conf),
                Duration::from_secs(10),
            );
            assert!(
                test.status.success(),
                "nginx -t rejected the config:\n{}\n--- nginx.conf ---\n{}",
                String::from_utf8_lossy(&test.stderr),
                std::fs::read_to_string(&conf).unwrap_or_default()
            );
            std::fs::write(&log, b"").expect("truncate nginx log");
            let _ = std::fs::remove_file(prefix.join("nginx.pid"));
            let out = OpenOptions::new()
                .append(true)
                .open(&log)
                .expect("open nginx log");
            let child = Command::new(&bin)
                .args(["-e", "stderr", "-p"])
                .arg(prefix)
                .arg("-c")
                .arg(&conf)
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("dup log fd"))
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin.display()));
            let mut n = Nginx {
                child,
                port,
                prefix: prefix.to_path_buf(),
                dir: None,
                seq: AtomicUsize::new(0),
            };
            if n.wait_ready(&log) {
                return n;
            }
        }
        panic!(
            "nginx: no free port after {PORT_ATTEMPTS} attempts; log tail:\n{}",
            tail(&log, 30)
        );
    }

    /// `false` when the port was taken in the meantime (caller retries).
    fn wait_ready(&mut self, log: &Path) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait nginx") {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                if text.contains("Address already in use") {
                    return false;
                }
                panic!("nginx exited during startup ({status}):\n{}", tail(log, 30));
            }
            // nginx writes its pid file only after binding every listener, so
            // our pid there means the port is ours (not a racing neighbour's).
            let pid = std::fs::read_to_string(self.prefix.join("nginx.pid")).unwrap_or_default();
            if pid.trim() == self.child.id().to_string()
                && TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
            {
                return true;
            }
            if Instant::now() >= deadline {
                panic!(
                    "nginx not listening on {addr} within {START_TIMEOUT:?}:\n{}",
                    tail(log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// Wait until requests already answered are in `access.log`.
    ///
    /// nginx logs after the response is sent, so a client may finish first.
    /// With one worker, requests are finalised in order: once a marker
    /// request's line appears, earlier lines are there too. The marker hits
    /// whatever the server block does with it (usually a 404); that is fine.
    pub fn sync(&self) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = format!("/{HARNESS_QUERY}sync-{n}");
        raw_http_get(&self.addr(), &path, SYNC_TIMEOUT)
            .unwrap_or_else(|e| panic!("nginx sync request failed: {e}"));
        let log = self.prefix.join("access.log");
        let deadline = Instant::now() + SYNC_TIMEOUT;
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&path)
        {
            if Instant::now() >= deadline {
                panic!("nginx access log never showed {path}:\n{}", tail(&log, 20));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Parsed `access.log` (after `sync`), minus the harness's own requests.
    pub fn requests(&self) -> Vec<AccessLogEntry> {
        self.sync();
        let text = std::fs::read_to_string(self.prefix.join("access.log")).unwrap_or_default();
        parse_access_log(&text)
            .into_iter()
            .filter(|e| !e.path.contains(HARNESS_QUERY))
            .collect()
    }

    /// The worker processes (children of the master): (pid, effective uid).
    pub fn workers(&self) -> Vec<(u32, u32)> {
        let master = self.child.id().to_string();
        let mut workers = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            if field("PPid:").first() == Some(&master)
                && let Some(euid) = field("Uid:").get(1)
            {
                workers.push((pid, euid.parse().expect("numeric uid")));
            }
        }
        workers
    }

    /// After a reload: wait until none of `old` workers is left, so every connection
    /// from now on meets the new configuration (old workers finish what they hold).
    pub fn wait_for_new_workers(&self, old: &[(u32, u32)]) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let now = self.workers();
            if !now.is_empty() && now.iter().all(|w| !old.contains(w)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "old nginx workers {old:?} still running after {START_TIMEOUT:?}: {now:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn error_log_tail(&self, n: usize) -> String {
        tail(&self.prefix.join("error.log"), n)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGKILL on the master would orphan its worker (still holding the
        // port), so ask for a fast shutdown first, then make sure.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- nginx {} error.log tail ---\n{}",
                self.addr(),
                self.error_log_tail(40)
            );
        }
        if keep_tmp()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("IT_KEEP_TMP: keeping {}", dir.keep().display());
        }
    }
}

fn nginx_conf(prefix: &Path, port: u16, server_block: &str) -> String {
    let p = prefix.display();
    let body = server_block
        .replace("{{PORT}}", &port.to_string())
        .replace("{{TMP}}", &p.to_string());
    // As users run it: started as root, the workers run as an unprivileged user and
    // read the store only through its own file modes (never workers as root, which hid
    // a store published 0600). Debian's `nobody` has the group `nogroup`.
    let user = if running_as_root() {
        format!("user {WORKER_USER} {WORKER_GROUP};\n")
    } else {
        String::new()
    };
    format!(
        r#"{user}worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {p}/access.log combined;
    client_body_temp_path {p}/client_body_temp;
    proxy_temp_path {p}/proxy_temp;
    fastcgi_temp_path {p}/fastcgi_temp;
    uwsgi_temp_path {p}/uwsgi_temp;
    scgi_temp_path {p}/scgi_temp;
    default_type application/octet-stream;
    sendfile on;
{body}
}}
"#
    )
}
