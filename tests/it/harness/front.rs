//! The two fronts that serve a store: nginx with gen-conf's configuration, and the
//! embedded `static-registry serve`. Pull-API tests run against both.

/// A pull-API test, run against nginx (gen-conf) and against `serve`.
#[macro_export]
macro_rules! both_fronts {
    ($name:ident) => {
        mod $name {
            use $crate::harness::front::Kind;

            #[tokio::test(flavor = "multi_thread")]
            async fn nginx() {
                super::$name(Kind::Nginx).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn serve() {
                super::$name(Kind::Serve).await
            }
        }
    };
}

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::nginx::Nginx;
use super::{PORT_ATTEMPTS, START_TIMEOUT, free_port};

/// Which front a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    Serve,
}

pub enum Front {
    Nginx(Nginx),
    Serve(Serve),
}

impl Front {
    /// Serve the store at `root`: nginx with `gen-conf --root ROOT ARGS`, or
    /// `serve --root ROOT ARGS` (the arguments both take: --name-prefix).
    pub fn start(kind: Kind, root: &Path, args: &[&str]) -> Front {
        match kind {
            Kind::Nginx => {
                let (config, _) = crate::genconf::gen_conf(root, args);
                Front::Nginx(crate::genconf::serve(&config))
            }
            Kind::Serve => Front::Serve(Serve::start(root, args)),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        match self {
            Front::Nginx(n) => n.addr(),
            Front::Serve(s) => s.addr.clone(),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }
}

/// `static-registry serve` on a free loopback port, killed on drop.
pub struct Serve {
    child: Child,
    pub addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Serve {
    /// `serve --root ROOT --listen 127.0.0.1:<free>` plus `args`, up when it listens.
    pub fn start(root: &Path, args: &[&str]) -> Serve {
        for _ in 0..PORT_ATTEMPTS {
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("serve.log");
            let addr = format!("127.0.0.1:{}", free_port());
            let child = Command::new(env!("CARGO_BIN_EXE_static-registry"))
                .args(["serve", "--root"])
                .arg(root)
                .args(["--listen", &addr])
                .args(args)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log).unwrap())
                .spawn()
                .expect("spawn static-registry serve");
            let mut s = Serve {
                child,
                addr,
                log,
                _dir: dir,
            };
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Some(status) = s.child.try_wait().unwrap() {
                    let log = s.log();
                    assert!(
                        log.contains("Address already in use"),
                        "serve exited ({status}) at start:\n{log}"
                    );
                    break;
                }
                // Listening (plain or TLS): requests wait in the backlog until served.
                if TcpStream::connect(&s.addr).is_ok() {
                    return s;
                }
                assert!(
                    Instant::now() < deadline,
                    "serve did not answer within {START_TIMEOUT:?}:\n{}",
                    s.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("serve found no free port");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (bounded) for the process to exit; its status.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
