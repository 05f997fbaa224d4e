//! A real S3 server: a single-node Ceph cluster (one mon, one memstore OSD) and a
//! `radosgw` on loopback, everything (config, data, logs, sockets) in one temp dir.
//!
//! Signed requests go through the `curl` binary's own SigV4 (an implementation
//! independent of the one under test), path-style, region `us-east-1`.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::{
    HARNESS_QUERY, PORT_ATTEMPTS, free_port, keep_tmp, raw_http_get, require_bin, run_with_timeout,
    tail,
};

/// Bound on the whole start, port retries included (~1.5 s idle, ~5 s under load).
const RGW_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one S3 request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const REGION: &str = "us-east-1";

/// SigV4 canonical encoding: everything but unreserved characters (and `/` in paths).
const QUERY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
const PATH_SET: &AsciiSet = &QUERY_SET.remove(b'/');

/// Status, headers (names lowercase) and body of one response.
pub type Response = (u16, Vec<(String, String)>, Vec<u8>);

pub struct Rgw {
    /// (name, process) of ceph-mon, ceph-osd and radosgw, in start order.
    children: Vec<(&'static str, Child)>,
    port: u16,
    mon_port: u16,
    access_key: String,
    secret_key: String,
    conf: PathBuf,
    root: PathBuf,
    /// `Option` only so `Drop` can `keep()` it when asked to.
    dir: Option<tempfile::TempDir>,
    /// Names request-body files.
    seq: AtomicUsize,
    /// Start-up failures already carry the log tails; `Drop` repeats them otherwise.
    tails_shown: bool,
}

enum Startup {
    Ready,
    PortTaken,
}

struct Bins {
    mon: PathBuf,
    osd: PathBuf,
    rgw: PathBuf,
    admin: PathBuf,
    ceph: PathBuf,
}

impl Rgw {
    /// Start mon + osd + radosgw, create a user, block until a signed S3 request works.
    /// Panics with log tails on failure.
    pub fn start() -> Rgw {
        let bins = Bins {
            mon: require_bin("ceph-mon", "ceph-mon"),
            osd: require_bin("ceph-osd", "ceph-osd"),
            rgw: require_bin("radosgw", "radosgw"),
            admin: require_bin("radosgw-admin", "ceph-common"),
            ceph: require_bin("ceph", "ceph-common"),
        };
        require_bin("curl", "curl");
        let t0 = Instant::now();
        let deadline = t0 + RGW_START_TIMEOUT;
        for _ in 0..PORT_ATTEMPTS {
            let mut rgw = Rgw::prepare();
            match rgw.boot(&bins, deadline) {
                Startup::Ready => {
                    eprintln!(
                        "rgw: {} up in {:?} ({})",
                        rgw.endpoint(),
                        t0.elapsed(),
                        rgw.root.display()
                    );
                    return rgw;
                }
                // Lost a race for the mon's or radosgw's port; `rgw` drops (kills
                // its children) and the next attempt starts from scratch.
                Startup::PortTaken => eprintln!("rgw: lost a port race, retrying"),
            }
        }
        panic!("rgw: ports taken on all {PORT_ATTEMPTS} attempts");
    }

    fn prepare() -> Rgw {
        let dir = tempfile::Builder::new()
            .prefix("it-rgw-")
            .tempdir()
            .expect("create rgw temp dir");
        let root = dir.path().to_path_buf();
        // Ceph creates none of these itself (a missing osd data dir crashes mkfs).
        for sub in ["log", "run", "mon", "osd/osd.0", "crash", "rgw", "req"] {
            std::fs::create_dir_all(root.join(sub)).expect("create rgw subdir");
        }
        Rgw {
            children: Vec::new(),
            port: free_port(),
            mon_port: free_port(),
            access_key: random_token(20).to_uppercase(),
            secret_key: random_token(40),
            conf: root.join("ceph.conf"),
            root,
            dir: Some(dir),
            seq: AtomicUsize::new(0),
            tails_shown: false,
        }
    }

    fn boot(&mut self, bins: &Bins, deadline: Instant) -> Startup {
        let fsid = uuid();
        std::fs::write(&self.conf, self.ceph_conf(&fsid)).expect("write ceph.conf");

        self.run(
            Command::new(&bins.mon)
                .args(["-i", "a", "--mkfs", "--fsid"])
                .arg(&fsid),
            "ceph-mon --mkfs",
            deadline,
        );
        self.spawn("ceph-mon", Command::new(&bins.mon).args(["-i", "a", "-f"]));
        // Only a mon that bound its port gets to lead; ceph CLI calls would
        // otherwise hang for their whole connect timeout.
        if let Startup::PortTaken = self.wait_log("mon.a.log", "mon.a is new leader", deadline) {
            return Startup::PortTaken;
        }

        let osd_uuid = uuid();
        let out = self.run(
            Command::new(&bins.ceph)
                .args(["--connect-timeout", "20", "osd", "new"])
                .arg(&osd_uuid),
            "ceph osd new",
            deadline,
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if id != "0" {
            self.fail(&format!("`ceph osd new` printed {id:?}, expected 0"));
        }
        self.run(
            Command::new(&bins.osd)
                .args(["-i", "0", "--mkfs", "--osd-uuid"])
                .arg(&osd_uuid),
            "ceph-osd --mkfs",
            deadline,
        );
        self.spawn("ceph-osd", Command::new(&bins.osd).args(["-i", "0", "-f"]));
        // The OSD's ports come from Ceph's own range (6800-7300) and it tries
        // them in turn, so it cannot lose a race with free_port().
        if let Startup::PortTaken = self.wait_log("osd.0.log", "state: booting -> active", deadline)
        {
            self.fail("ceph-osd could not bind");
        }

        self.spawn(
            "radosgw",
            Command::new(&bins.rgw).args(["-n", "client.rgw", "-f"]),
        );
        if let Startup::PortTaken = self.wait_rgw(deadline) {
            return Startup::PortTaken;
        }

        self.run(
            Command::new(&bins.admin).args([
                "user",
                "create",
                "--uid=test",
                "--display-name=test",
                &format!("--access-key={}", self.access_key),
                &format!("--secret-key={}", self.secret_key),
            ]),
            "radosgw-admin user create",
            deadline,
        );
        // Our keys exist only in our cluster, so this also proves the port is ours.
        loop {
            let (status, _, body) = self.request(true, "GET", "/", &[], None);
            if status == 200 {
                return Startup::Ready;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "signed GET / still {status} after {RGW_START_TIMEOUT:?}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ceph_conf(&self, fsid: &str) -> String {
        let d = self.root.display();
        // msgr2 only (v1 → EPERM "wrong fsid"); crc modes (else radosgw hangs in
        // auth); `public addr` only under [osd] (in [global] the mon never forms
        // a quorum); fast paxos (default → ~14 s start-up); one bind attempt so a
        // lost port race fails at once instead of after 3 × 5 s.
        format!(
            r#"[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
ms bind msgr1 = false
ms bind msgr2 = true
ms bind retry count = 1
ms bind retry delay = 0
ms mon client mode = crc
ms client mode = crc
ms cluster mode = crc
ms service mode = crc
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
pid file = {d}/run/$name.pid
crash dir = {d}/crash
keyring = {d}/keyring
mon data = {d}/mon/$name
osd data = {d}/osd/$name
osd objectstore = memstore
memstore device bytes = 1073741824
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon max pg per osd = 1000
osd crush chooseleaf type = 0
mon data avail crit = 0
paxos propose interval = 0.01
paxos min wait = 0.001
[osd]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
[client]
admin socket = {d}/run/$name.$pid.asok
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{port}
rgw data = {d}/rgw
"#,
            mon_port = self.mon_port,
            port = self.port,
        )
    }

    /// A ceph command with our config, isolated from the caller's `CEPH_*` env.
    fn ceph_cmd<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.arg("-c")
            .arg(&self.conf)
            .env_remove("CEPH_ARGS")
            .env_remove("CEPH_CONF")
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command) {
        let out = File::create(self.root.join(format!("log/{name}.out"))).expect("create .out");
        let child = self
            .ceph_cmd(cmd)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup .out fd"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {name}: {e}"));
        self.children.push((name, child));
    }

    fn run(&mut self, cmd: &mut Command, what: &str, deadline: Instant) -> std::process::Output {
        let left = deadline.saturating_duration_since(Instant::now());
        let out = run_with_timeout(self.ceph_cmd(cmd), left.max(Duration::from_secs(1)));
        if !out.status.success() {
            self.fail(&format!(
                "{what} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        out
    }

    /// Wait for `needle` in a daemon's log while every child lives; a child that
    /// died of a taken port means `PortTaken`.
    fn wait_log(&mut self, log: &str, needle: &str, deadline: Instant) -> Startup {
        let path = self.root.join("log").join(log);
        loop {
            if let Some(taken) = self.check_children() {
                return taken;
            }
            if std::fs::read_to_string(&path).is_ok_and(|t| t.contains(needle)) {
                return Startup::Ready;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "no {needle:?} in {log} within {RGW_START_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until radosgw answers an anonymous `GET /` and logs it (proving that
    /// the answer came from our process, not a port thief).
    fn wait_rgw(&mut self, deadline: Instant) -> Startup {
        let probe = format!("/?{HARNESS_QUERY}ready");
        let addr = format!("127.0.0.1:{}", self.port);
        let log = self.root.join("log/client.rgw.log");
        loop {
            if let Some(taken) = self.check_children() {
                return taken;
            }
            if let Ok(200) = raw_http_get(&addr, &probe, Duration::from_secs(1))
                && std::fs::read_to_string(&log).is_ok_and(|t| t.contains(&probe))
            {
                return Startup::Ready;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "radosgw not answering 200 on GET / within {RGW_START_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `Some(PortTaken)` if a child exited because its port was in use; panics
    /// if one exited for any other reason.
    fn check_children(&mut self) -> Option<Startup> {
        let mut dead = None;
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait().expect("try_wait ceph child") {
                dead = Some((*name, status));
                break;
            }
        }
        let (name, status) = dead?;
        let logs = ["mon.a.log", "radosgw.out", "client.rgw.log"];
        let taken = logs.iter().any(|l| {
            std::fs::read_to_string(self.root.join("log").join(l))
                .is_ok_and(|t| t.contains("Address already in use"))
        });
        if taken {
            return Some(Startup::PortTaken);
        }
        self.fail(&format!("{name} exited during start-up ({status})"));
    }

    fn fail(&mut self, msg: &str) -> ! {
        self.tails_shown = true;
        panic!("rgw: {msg}\n{}", self.log_tails(25));
    }

    /// Tails of the three daemons' logs and of their stdout/stderr.
    pub fn log_tails(&self, n: usize) -> String {
        let mut s = format!(
            "(logs in {}; IT_KEEP_TMP=1 keeps them)\n",
            self.root.display()
        );
        for (log, out) in [
            ("mon.a.log", "ceph-mon.out"),
            ("osd.0.log", "ceph-osd.out"),
            ("client.rgw.log", "radosgw.out"),
        ] {
            let log = self.root.join("log").join(log);
            s += &format!("--- {} ---\n{}\n", log.display(), tail(&log, n));
            let out = self.root.join("log").join(out);
            if std::fs::metadata(&out).is_ok_and(|m| m.len() > 0) {
                s += &format!("--- {} ---\n{}\n", out.display(), tail(&out, n));
            }
        }
        s
    }

    /// `http://127.0.0.1:<port>`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The env vars a `static-registry publish` child needs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", REGION.to_string()),
        ]
    }

    /// PUT a bucket (signed).
    pub fn create_bucket(&self, bucket: &str) {
        let (status, _, body) = self.request(true, "PUT", &format!("/{bucket}"), &[], Some(b""));
        assert_eq!(
            status,
            200,
            "rgw: create bucket {bucket}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// Bucket policy allowing anonymous `s3:GetObject` on `arn:aws:s3:::<bucket>/*`
    /// (listing and writes stay denied).
    pub fn allow_anonymous_read(&self, bucket: &str) {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "AnonymousRead",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": format!("arn:aws:s3:::{bucket}/*"),
            }],
        });
        let body = serde_json::to_vec(&policy).expect("policy json");
        // `policy=`: curl signs the query as written, RGW canonicalises it with `=`.
        let (status, _, resp) = self.request(
            true,
            "PUT",
            &format!("/{bucket}?policy="),
            &[("Content-Type", "application/json")],
            Some(&body),
        );
        assert!(
            status == 200 || status == 204,
            "rgw: put policy on {bucket}: {status} {}",
            String::from_utf8_lossy(&resp)
        );
    }

    /// Every object in the bucket (signed ListObjectsV2, following continuation
    /// tokens): (key, size), sorted by key.
    pub fn objects(&self, bucket: &str) -> Vec<(String, u64)> {
        static RE: std::sync::OnceLock<[regex::Regex; 3]> = std::sync::OnceLock::new();
        let [contents, truncated, next] = RE.get_or_init(|| {
            [
                r"(?s)<Contents>.*?<Key>(.*?)</Key>.*?<Size>(\d+)</Size>.*?</Contents>",
                r"<IsTruncated>true</IsTruncated>",
                r"<NextContinuationToken>(.*?)</NextContinuationToken>",
            ]
            .map(|r| regex::Regex::new(r).expect("list regex"))
        });
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // curl 7.88 signs the query as written, so it must already be in
            // canonical (sorted, encoded) order.
            let query = match &token {
                Some(t) => format!(
                    "continuation-token={}&list-type=2",
                    utf8_percent_encode(&xml_unescape(t), QUERY_SET)
                ),
                None => "list-type=2".to_string(),
            };
            let (status, _, body) =
                self.request(true, "GET", &format!("/{bucket}?{query}"), &[], None);
            let text = String::from_utf8_lossy(&body);
            assert_eq!(status, 200, "rgw: list {bucket}: {text}");
            for c in contents.captures_iter(&text) {
                all.push((xml_unescape(&c[1]), c[2].parse().expect("size")));
            }
            if !truncated.is_match(&text) {
                break;
            }
            token = Some(
                next.captures(&text)
                    .unwrap_or_else(|| panic!("rgw: truncated listing without a token: {text}"))[1]
                    .to_string(),
            );
        }
        all.sort();
        all
    }

    /// Signed GET of one object: (status, headers lowercase, body).
    pub fn get(&self, bucket: &str, key: &str) -> Response {
        self.request(true, "GET", &object_path(bucket, key), &[], None)
    }

    /// One request with `curl`, signed with our keys or anonymous. `path` is
    /// `/bucket[/key][?query]`, already percent-encoded (see [`object_path`]);
    /// queries must be in SigV4 canonical order.
    pub fn request(
        &self,
        signed: bool,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        let mut cmd = Command::new(require_bin("curl", "curl"));
        cmd.args(["-sS", "-i", "--noproxy", "*", "-X", method])
            .arg("--max-time")
            .arg(REQUEST_TIMEOUT.as_secs().to_string());
        if signed {
            cmd.args(["--aws-sigv4", &format!("aws:amz:{REGION}:s3")])
                .arg("--user")
                .arg(format!("{}:{}", self.access_key, self.secret_key))
                // Unsigned RGW answers 403 SignatureDoesNotMatch without it.
                .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
        }
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        if let Some(body) = body {
            let n = self.seq.fetch_add(1, Ordering::SeqCst);
            let file = self.root.join(format!("req/{n}"));
            std::fs::write(&file, body).expect("write request body");
            cmd.arg("--data-binary").arg(format!("@{}", file.display()));
        }
        cmd.arg(format!("{}{path}", self.endpoint()));
        let out = run_with_timeout(&mut cmd, REQUEST_TIMEOUT + Duration::from_secs(5));
        assert!(
            out.status.success(),
            "curl {method} {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_curl_i(&out.stdout)
            .unwrap_or_else(|| panic!("curl {method} {path}: unparsable response {:?}", out.stdout))
    }
}

/// `/bucket/key`, the key percent-encoded as SigV4 wants it.
pub fn object_path(bucket: &str, key: &str) -> String {
    format!("/{bucket}/{}", utf8_percent_encode(key, PATH_SET))
}

/// Split `curl -i` output into status, lowercase headers and body, skipping 1xx
/// interim responses.
fn parse_curl_i(mut out: &[u8]) -> Option<Response> {
    loop {
        let end = out.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&out[..end]);
        out = &out[end + 4..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        if (100..200).contains(&status) {
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        return Some((status, headers, out.to_vec()));
    }
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("read /proc/sys/kernel/random/uuid")
        .trim()
        .to_string()
}

fn random_token(len: usize) -> String {
    use rand::Rng as _;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

impl Drop for Rgw {
    fn drop(&mut self) {
        // SIGKILL: SIGTERM takes each daemon ~5 s, and memstore has nothing to flush.
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
        }
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
        if std::thread::panicking() && !self.tails_shown {
            eprintln!("--- rgw {} ---\n{}", self.endpoint(), self.log_tails(30));
        }
        if keep_tmp()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("IT_KEEP_TMP: keeping {}", dir.keep().display());
        }
    }
}
