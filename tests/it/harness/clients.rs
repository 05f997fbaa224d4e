//! More real clients than skopeo: podman and containerd, each with its state in a temp
//! dir so nothing on the machine is touched.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{START_TIMEOUT, require_bin, run_with_timeout};

const PULL_TIMEOUT: Duration = Duration::from_secs(120);

fn check(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `podman pull` over plain HTTP into a private store (vfs: works without overlay
/// support in the kernel or a container sandbox).
pub fn podman_pull(state: &Path, image: &str) -> Output {
    podman_pull_with(state, None, image)
}

/// `podman_pull` with a registries.conf of the test's (mirrors, prefixes).
pub fn podman_pull_with(state: &Path, registries_conf: Option<&Path>, image: &str) -> Output {
    podman_pull_inner(state, registries_conf, &[], image)
}

/// `podman_pull` with more arguments (`--creds USER:PASS`).
pub fn podman_pull_with_args(state: &Path, args: &[&str], image: &str) -> Output {
    podman_pull_inner(state, None, args, image)
}

fn podman_pull_inner(
    state: &Path,
    registries_conf: Option<&Path>,
    args: &[&str],
    image: &str,
) -> Output {
    let bin = require_bin("podman", "podman");
    let mut cmd = Command::new(bin);
    if let Some(conf) = registries_conf {
        cmd.env("CONTAINERS_REGISTRIES_CONF", conf);
    }
    let out = run_with_timeout(
        cmd.arg("--root")
            .arg(state.join("root"))
            .arg("--runroot")
            .arg(state.join("run"))
            .args(["--storage-driver", "vfs", "pull", "--tls-verify=false"])
            .args(args)
            .arg(image),
        PULL_TIMEOUT,
    );
    check(&format!("podman pull {image}"), out)
}

/// A private containerd daemon for `ctr image pull`; killed on drop.
pub struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> Containerd {
        let bin = require_bin("containerd", "containerd");
        let dir = tempfile::Builder::new()
            .prefix("it-containerd-")
            .tempdir()
            .expect("create containerd temp dir");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log file");
        let child = Command::new(bin)
            .arg("--address")
            .arg(dir.path().join("sock"))
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let c = Containerd { child, dir };
        let deadline = Instant::now() + START_TIMEOUT;
        while !c.dir.path().join("sock").exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    /// `ctr image pull --plain-http --all-platforms`, unpacked with the native
    /// snapshotter (no overlayfs needed).
    pub fn pull(&self, image: &str) -> Output {
        self.pull_with(&["--plain-http"], image)
    }

    /// `ctr image pull --hosts-dir DIR`: mirrors as `certs.d/<host>/hosts.toml` say.
    pub fn pull_via_hosts(&self, hosts_dir: &Path, image: &str) -> Output {
        self.pull_with(&["--hosts-dir", hosts_dir.to_str().unwrap()], image)
    }

    fn pull_with(&self, args: &[&str], image: &str) -> Output {
        let bin = require_bin("ctr", "containerd");
        let out = run_with_timeout(
            Command::new(bin)
                .arg("--address")
                .arg(self.dir.path().join("sock"))
                .args(["image", "pull"])
                .args(args)
                .args(["--all-platforms", "--snapshotter", "native", image]),
            PULL_TIMEOUT,
        );
        check(&format!("ctr image pull {image}"), out)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
