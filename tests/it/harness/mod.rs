//! Shared integration-test harness: real `docker-registry`, `nginx` and `skopeo`
//! processes on loopback, plus a deterministic image fixture set.
//!
//! Every child process is killed on `Drop` (also while unwinding from a panic) and
//! every wait is bounded, so a broken environment fails fast instead of hanging CI.

pub mod browser;
pub mod client_push;
pub mod clients;
pub mod cosign;
pub mod fault;
pub mod fault_push;
pub mod fixtures;
pub mod front;
pub mod image;
pub mod nginx;
pub mod proxy;
pub mod push;
pub mod registry;
pub mod rgw;
pub mod service;
pub mod skopeo;
pub mod store;
pub mod tls;
pub mod token;
pub mod zstd;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Marker in the harness's own probe/sync requests, so they can be filtered
/// out of the access-log entries tests count.
pub(crate) const HARNESS_QUERY: &str = "__harness=";
/// Bound on waiting for a server to come up on one port attempt.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on waiting for an access-log line to appear.
pub(crate) const SYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// Free-port races lost before giving up.
pub(crate) const PORT_ATTEMPTS: usize = 5;

/// Locate a binary the tests cannot run without, or panic telling how to install it.
///
/// `/usr/sbin` and `/sbin` are searched too because nginx lives there and a
/// non-login `PATH` often lacks them.
pub fn require_bin(name: &str, apt_pkg: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    let found = std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p));
    match found {
        Some(p) => p,
        None => {
            let what = match name {
                "docker-registry" => "registry",
                other => other,
            };
            panic!(
                "\n\n*** {name} not found: install it (apt-get install {apt_pkg}) — tests need a real {what} ***\n\n"
            )
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A port that was free a moment ago. The caller must tolerate losing a race for
/// it (another test may grab it before the server binds), hence the retries in
/// the process starters.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// `sha256:<hex>` of `bytes`, the OCI digest form.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Effective uid from procfs; avoids pulling in libc just to ask "are we root?".
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Last `n` lines of a log file, for panic messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Minimal blocking HTTP/1.1 GET returning the status code.
///
/// Used for readiness probes and log sync, which must work from sync code and
/// from any (or no) tokio runtime.
pub fn raw_http_get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<u16> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: it-harness\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {head:.200}")))
}

/// Run a command to completion with a deadline, capturing stdout and stderr.
///
/// Panics (with the command line) if it cannot start or overruns `timeout`; the
/// child is killed in the latter case so nothing is left behind.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {shown}: {e}"));
    // Drain pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_t.join().unwrap_or_default();
            panic!(
                "{shown} timed out after {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// A temp dir that nginx's unprivileged workers can traverse (0755 whatever the umask),
/// as a store's directory is on a real host.
pub fn served_tempdir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod 0755 temp dir");
    dir
}

/// Whether the environment asks to keep temp dirs for post-mortem debugging.
pub fn keep_tmp() -> bool {
    std::env::var_os("IT_KEEP_TMP").is_some_and(|v| !v.is_empty() && v != "0")
}

/// One request line of an Apache "combined" access log, the format written by
/// both `docker-registry` (gorilla/handlers, on stdout) and nginx's `combined`:
///
/// `127.0.0.1 - - [25/Nov/2026:04:45:32 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub method: String,
    /// Request URI as sent, including any query string.
    pub path: String,
    pub status: u16,
    /// Body bytes written (`None` for `-`).
    pub bytes: Option<u64>,
    /// The request's `Range` header (the recording proxy sees it; access logs do not).
    pub range: Option<String>,
}

/// Parse every combined-format line in `text`, skipping anything else (the
/// registry interleaves its logrus lines in the same file).
pub fn parse_access_log(text: &str) -> Vec<AccessLogEntry> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(
            r#"^[0-9a-fA-F.:\[\]]+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+)[^"]*" (\d{3}) (\d+|-)"#,
        )
        .expect("access log regex")
    });
    text.lines()
        .filter_map(|line| {
            let c = re.captures(line)?;
            Some(AccessLogEntry {
                method: c[1].to_string(),
                path: c[2].to_string(),
                status: c[3].parse().ok()?,
                bytes: c[4].parse().ok(),
                range: None,
            })
        })
        .collect()
}
