//! The Dockerfile's image, built without its base images (these machines cannot pull
//! them): a root filesystem holding this machine's Debian nginx, dash and the few tools
//! the entrypoint runs, laid out as the official nginx image lays them out, plus what the
//! Dockerfile's final stage copies in. The final stage is read from the Dockerfile itself
//! (COPY, RUN rm, VOLUME, ENTRYPOINT, CMD), so the test image cannot drift from it: an
//! instruction this file does not know fails the build. podman runs it with `--rootfs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{START_TIMEOUT, free_port, keep_tmp, raw_http_get, require_bin, run_with_timeout};

const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

/// What the base image (`nginx:1-bookworm`) brings that the Dockerfile relies on:
/// nginx, a shell, and the tools `static-registry-nginx` runs.
const BASE_TOOLS: [&str; 5] = [
    "/usr/sbin/nginx",
    "/usr/bin/dash",
    "/usr/bin/ls",
    "/usr/bin/mkdir",
    "/usr/bin/mv",
];

pub struct TestImage {
    dir: tempfile::TempDir,
    /// ENTRYPOINT then CMD, as the container runtime joins them.
    command: Vec<String>,
}

impl TestImage {
    pub fn build() -> TestImage {
        let dir = tempfile::Builder::new()
            .prefix("it-image-")
            .tempdir()
            .expect("create image dir");
        let root = dir.path();
        for d in [
            "usr/bin",
            "usr/sbin",
            "usr/lib64",
            "usr/local/bin",
            "etc/nginx/conf.d",
            "var/log/nginx",
            "var/cache/nginx",
            "run",
            "tmp",
            "proc",
            "sys",
            "dev",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        // Debian's merged /usr.
        for (link, to) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            std::os::unix::fs::symlink(to, root.join(link)).unwrap();
        }
        let mut libs = Vec::new();
        for tool in BASE_TOOLS {
            install(Path::new(tool), &root.join(&tool[1..]));
            libs.extend(shared_libraries(Path::new(tool)));
        }
        std::os::unix::fs::symlink("dash", root.join("usr/bin/sh")).unwrap();
        fs::copy("/etc/nginx/mime.types", root.join("etc/nginx/mime.types")).unwrap();
        // The official image's nginx user (uid 101) and its logs on the container's output.
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101:nginx:/nonexistent:/bin/false\n",
        )
        .unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\nnginx:x:101:\n").unwrap();
        std::os::unix::fs::symlink("/dev/stdout", root.join("var/log/nginx/access.log")).unwrap();
        std::os::unix::fs::symlink("/dev/stderr", root.join("var/log/nginx/error.log")).unwrap();

        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dockerfile = fs::read_to_string(repo.join("Dockerfile")).unwrap();
        let final_stage = dockerfile
            .rsplit_once("\nFROM ")
            .expect("the Dockerfile has a final FROM")
            .1;
        let (mut entrypoint, mut cmd) = (Vec::new(), Vec::new());
        for line in final_stage.lines().skip(1) {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (instruction, rest) = line.split_once(' ').unwrap_or((line, ""));
            match instruction {
                "COPY" => {
                    let words: Vec<&str> = rest.split_whitespace().collect();
                    match words[..] {
                        // The build stage's binary: this test build's, with its libraries.
                        ["--from=build", from, to] => {
                            assert!(
                                from.ends_with("/static-registry"),
                                "unknown build output {from}"
                            );
                            let bin = Path::new(env!("CARGO_BIN_EXE_static-registry"));
                            install(bin, &root.join(to.trim_start_matches('/')));
                            libs.extend(shared_libraries(bin));
                        }
                        [from, to] => {
                            install(&repo.join(from), &root.join(to.trim_start_matches('/')))
                        }
                        _ => panic!("the test image cannot read `{line}`: teach {}", file!()),
                    }
                }
                "RUN" => {
                    let paths = rest.strip_prefix("rm -f ").unwrap_or_else(|| {
                        panic!("the test image cannot run `{line}`: teach {}", file!())
                    });
                    for p in paths.split_whitespace() {
                        let _ = fs::remove_file(root.join(p.trim_start_matches('/')));
                    }
                }
                "VOLUME" => fs::create_dir_all(root.join(rest.trim_start_matches('/'))).unwrap(),
                "EXPOSE" => {}
                "ENTRYPOINT" => entrypoint = serde_json::from_str(rest).unwrap(),
                "CMD" => cmd = serde_json::from_str(rest).unwrap(),
                other => panic!(
                    "the test image knows no {other} (`{line}`): teach {}",
                    file!()
                ),
            }
        }
        libs.sort();
        libs.dedup();
        for lib in libs {
            let real = fs::canonicalize(&lib).unwrap();
            install(&real, &in_usr(root, &real));
            let named = in_usr(root, &lib);
            if !named.exists() {
                std::os::unix::fs::symlink(&real, named).unwrap();
            }
        }
        entrypoint.extend(cmd);
        TestImage {
            dir,
            command: entrypoint,
        }
    }

    pub fn rootfs(&self) -> &Path {
        self.dir.path()
    }

    /// ENTRYPOINT followed by CMD.
    pub fn command(&self) -> &[String] {
        &self.command
    }
}

/// Where a host path is in the image: under its /usr, as /lib, /lib64 and /bin are
/// there and on the host (Debian's merged /usr).
fn in_usr(root: &Path, path: &Path) -> PathBuf {
    let rel = path
        .strip_prefix("/usr")
        .or_else(|_| path.strip_prefix("/"))
        .unwrap();
    root.join("usr").join(rel)
}

/// Hardlink (the test binary is large), else copy, creating the parent.
fn install(from: &Path, to: &Path) {
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copy {} into the image: {e}", from.display()));
    }
}

/// The shared libraries `ldd` finds for a binary, loader included.
fn shared_libraries(bin: &Path) -> Vec<PathBuf> {
    let out = run_with_timeout(Command::new("ldd").arg(bin), Duration::from_secs(10));
    assert!(
        out.status.success(),
        "ldd {}: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// A container of the test image run by a private podman (its state in a temp dir); it
/// is removed on drop.
pub struct Container {
    state: tempfile::TempDir,
    name: String,
    addr: String,
}

impl Container {
    /// `podman run -d` with `args` (mounts, environment) before the image's command; the
    /// container's nginx listens on a free loopback port given in
    /// `STATIC_REGISTRY_LISTEN`, on the host's network. Waits until `/v2/` answers.
    pub fn run(image: &TestImage, args: &[&str]) -> Container {
        let state = tempfile::Builder::new()
            .prefix("it-podman-")
            .tempdir()
            .expect("create podman state dir");
        let addr = format!("127.0.0.1:{}", free_port());
        let name = format!("it-image-{}", addr.rsplit(':').next().unwrap());
        let c = Container { state, name, addr };
        let listen = format!("STATIC_REGISTRY_LISTEN={}", c.addr);
        let mut run_args = vec!["run", "-d", "--name", &c.name, "--runtime", "runc"];
        run_args.extend(["--network", "host", "--env", &listen]);
        // podman's default limits (a million files) are above what these VMs let a
        // container raise to; nginx needs far fewer.
        run_args.extend([
            "--ulimit",
            "nofile=16384:16384",
            "--ulimit",
            "nproc=4096:4096",
        ]);
        run_args.extend(args);
        run_args.extend(["--rootfs", c_str(image.rootfs())]);
        run_args.extend(image.command().iter().map(String::as_str));
        let out = c.podman(&run_args);
        assert!(
            out.status.success(),
            "podman run failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + START_TIMEOUT;
        while !matches!(
            raw_http_get(&c.addr, "/v2/", Duration::from_secs(1)),
            Ok(200)
        ) {
            assert!(
                Instant::now() < deadline,
                "the container did not serve /v2/ on {}:\n{}",
                c.addr,
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `podman exec <container> args...`.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.podman(&[&["exec", &self.name][..], args].concat())
    }

    /// The container's output so far (nginx's logs and the entrypoint's messages).
    pub fn logs(&self) -> String {
        let out = self.podman(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn podman(&self, args: &[&str]) -> Output {
        let s = self.state.path();
        run_with_timeout(
            Command::new(require_bin("podman", "podman"))
                .arg("--root")
                .arg(s.join("root"))
                .arg("--runroot")
                .arg(s.join("run"))
                .arg("--tmpdir")
                .arg(s.join("tmp"))
                .args([
                    "--storage-driver",
                    "vfs",
                    "--cgroup-manager",
                    "cgroupfs",
                    "--events-backend",
                    "file",
                ])
                .args(args),
            PODMAN_TIMEOUT,
        )
    }
}

fn c_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

impl Drop for Container {
    fn drop(&mut self) {
        if keep_tmp() {
            eprintln!("--- container {} log ---\n{}", self.name, self.logs());
        }
        let _ = self.podman(&["rm", "-f", "-t", "0", &self.name]);
    }
}
