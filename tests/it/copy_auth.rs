//! `push` and `copy` to (and from) registries that want TLS and credentials: a real
//! docker-registry behind a token server, and one behind Basic auth (htpasswd), each
//! serving HTTPS with a certificate from a CA made for the test.
//!
//! What arrived is checked with the harness's own HTTP client (trusting the test CA,
//! doing the Basic or token exchange itself), not with the crate under test. Every run
//! of the binary has an empty HOME and none of the credential or auth-file variables,
//! so the logins of the machine running the tests neither help nor hinder.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::auth::{PASSWORD, USER, htpasswd_yaml};
use crate::harness::fixtures::{ACCEPT_ALL, Fixtures};
use crate::harness::registry::{Registry, RegistryConfig};
use crate::harness::run_with_timeout;
use crate::harness::store::{all_tag_refs, fetch_ok, registry_with_fixtures};
use crate::harness::tls::TestCa;
use crate::harness::token::{SERVICE, TokenServer};

/// The token server's user for the source registry of a copy: other credentials than
/// the target's, so mixing them up fails.
const SOURCE_USER: &str = "source-bot";
const SOURCE_PASSWORD: &str = "source pass phrase";

/// A TLS docker-registry, possibly with auth, and the CA that vouches for it.
struct Secured {
    registry: Registry,
    ca_pem: PathBuf,
    _dir: tempfile::TempDir,
}

impl Secured {
    /// Start it with a certificate from `ca`, serving `storage` (another registry's,
    /// kept alive by the caller) or a fresh one. `auth_yaml` gets a private directory
    /// and returns the config's `auth:` section.
    async fn start(
        ca: &TestCa,
        storage: Option<PathBuf>,
        auth_yaml: impl FnOnce(&Path) -> String,
    ) -> Secured {
        let dir = tempfile::Builder::new()
            .prefix("it-copy-auth-")
            .tempdir()
            .expect("create temp dir");
        let ca_pem = ca.write_pem(&dir.path().join("ca.pem"));
        let (cert, key) = ca.server_cert("127.0.0.1").write(dir.path(), "server");
        let cfg = RegistryConfig {
            storage,
            tls: Some((cert, key)),
            extra_yaml: auth_yaml(dir.path()),
        };
        let registry = tokio::task::spawn_blocking(move || Registry::start_with(cfg))
            .await
            .unwrap();
        Secured {
            registry,
            ca_pem,
            _dir: dir,
        }
    }

    fn addr(&self) -> String {
        self.registry.addr()
    }

    fn ca_arg(&self) -> &str {
        arg(&self.ca_pem)
    }
}

/// How [`View`] authenticates.
enum Login {
    Basic,
    /// The docker token exchange with this server, as [`USER`].
    Token(String),
}

/// An independent, authenticated reader of a [`Secured`] registry.
struct View {
    base: String,
    http: reqwest::Client,
    login: Login,
}

impl View {
    fn new(target: &Secured, login: Login) -> View {
        let pem = std::fs::read(&target.ca_pem).expect("read CA PEM");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"))
            .build()
            .expect("reqwest client");
        View {
            base: target.registry.url(),
            http,
            login,
        }
    }

    async fn head(&self, repo: &str, path: &str) -> reqwest::Response {
        let url = format!("{}/v2/{repo}/{path}", self.base);
        let req = self
            .http
            .head(&url)
            .header(reqwest::header::ACCEPT, ACCEPT_ALL);
        let req = match &self.login {
            Login::Basic => req.basic_auth(USER, Some(PASSWORD)),
            Login::Token(realm) => {
                let scope = format!("repository:{repo}:pull");
                let mut url = url::Url::parse(realm).expect("realm URL");
                url.query_pairs_mut()
                    .append_pair("service", SERVICE)
                    .append_pair("scope", &scope);
                let resp = self
                    .http
                    .get(url)
                    .basic_auth(USER, Some(PASSWORD))
                    .send()
                    .await
                    .expect("token request");
                assert_eq!(resp.status(), StatusCode::OK, "token for {scope}");
                let body: Value = resp.json().await.expect("token JSON");
                req.bearer_auth(body["token"].as_str().expect("token"))
            }
        };
        req.send()
            .await
            .unwrap_or_else(|e| panic!("HEAD {url}: {e}"))
    }

    /// The digest `repo:reference` resolves to, or `None` when there is no such manifest.
    async fn manifest_digest(&self, repo: &str, reference: &str) -> Option<String> {
        let resp = self.head(repo, &format!("manifests/{reference}")).await;
        match resp.status() {
            StatusCode::NOT_FOUND => None,
            StatusCode::OK => resp
                .headers()
                .get("Docker-Content-Digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            other => panic!("HEAD manifest {repo}:{reference}: {other}"),
        }
    }

    async fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        self.head(repo, &format!("blobs/{digest}")).await.status() == StatusCode::OK
    }

    /// Every fixture tag is at the target under `prefix`, with the source's digest.
    async fn assert_every_tag_arrived(&self, fx: &Fixtures, prefix: &str) {
        for (repo, tag, digest) in fx.all_refs() {
            let name = format!("{prefix}{repo}");
            assert_eq!(
                self.manifest_digest(&name, &tag).await.as_deref(),
                Some(digest.as_str()),
                "{name}:{tag} at {}",
                self.base
            );
        }
    }

    /// No fixture tag is at the target under `prefix`.
    async fn assert_nothing_arrived(&self, fx: &Fixtures, prefix: &str) {
        for (repo, tag, _) in fx.all_refs() {
            let name = format!("{prefix}{repo}");
            assert_eq!(
                self.manifest_digest(&name, &tag).await,
                None,
                "{name}:{tag} at {} after a refused push",
                self.base
            );
        }
    }
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// A store holding every fixture tag, with the plain registry it was fetched from.
async fn fetched_store() -> (Registry, Fixtures, tempfile::TempDir) {
    let (src, fx, root) = registry_with_fixtures().await;
    let refs = all_tag_refs(&src, &fx);
    tokio::task::block_in_place(|| fetch_ok(root.path(), &refs));
    (src, fx, root)
}

/// The binary with `args`, `--json`, no retries at the targets, and a hermetic
/// environment: (exit code, stdout JSON or Null, stderr).
async fn run(args: &[&str]) -> (i32, Value, String) {
    let home = tempfile::tempdir().expect("create HOME");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_static-registry"));
    cmd.args(args)
        .args(["--json", "--dest-retries=0"])
        .env("HOME", home.path());
    for var in [
        "REGISTRY_AUTH_FILE",
        "XDG_RUNTIME_DIR",
        "XDG_CONFIG_HOME",
        "DOCKER_CONFIG",
        "STATIC_REGISTRY_CREDS",
        "STATIC_REGISTRY_DEST_CREDS",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        cmd.env_remove(var);
    }
    // Blocking, and the token server lives on this test's runtime.
    let out = tokio::task::spawn_blocking(move || {
        let out = run_with_timeout(&mut cmd, Duration::from_secs(120));
        drop(home);
        out
    })
    .await
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `push --root ROOT --to TO --dest-ca-cert CA EXTRA...`
async fn push(root: &Path, to: &str, ca: &str, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec![
        "push",
        "--root",
        arg(root),
        "--to",
        to,
        "--dest-ca-cert",
        ca,
    ];
    args.extend_from_slice(extra);
    run(&args).await
}

/// Exit 0, and the one target's summary says every tag was copied.
fn assert_pushed_all(code: i32, json: &Value, stderr: &str, fx: &Fixtures) {
    assert_eq!(code, 0, "{stderr}");
    let t = &json["targets"][0];
    assert_eq!(t["copied"], fx.all_refs().len(), "{json}");
    assert_eq!(t["failed"], 0, "{json}");
}

/// Exit 1, every image failed at the one target, and stderr says `needle` about it.
fn assert_refused(code: i32, json: &Value, stderr: &str, fx: &Fixtures, to: &str, needle: &str) {
    assert_eq!(code, 1, "the push should fail:\n{stderr}");
    assert_eq!(json["targets"][0]["failed"], fx.all_refs().len(), "{json}");
    assert_eq!(json["targets"][0]["copied"], 0, "{json}");
    assert!(stderr.contains(&format!("-> {to}/")), "{stderr}");
    assert!(
        stderr.contains(needle),
        "error output should say {needle:?}:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn push_to_a_token_registry_asks_for_push_scope_and_needs_the_credentials() {
    let ca = TestCa::new("it target CA");
    let tokens = TokenServer::start(&ca, &[], USER, PASSWORD).await;
    let ((_src, fx, root), target) = tokio::join!(
        fetched_store(),
        Secured::start(&ca, None, |dir| {
            tokens.registry_yaml(&ca.write_pem(&dir.join("token-roots.pem")))
        })
    );
    let view = View::new(&target, Login::Token(tokens.realm()));
    let host = target.addr();

    let creds = format!("{USER}:{PASSWORD}");
    let (code, json, stderr) = push(
        root.path(),
        &host,
        target.ca_arg(),
        &["--dest-creds", &creds],
    )
    .await;
    assert_pushed_all(code, &json, &stderr, &fx);
    view.assert_every_tag_arrived(&fx, "").await;
    // Every repository was pushed with a token for pull and push, asked for as the user.
    let issued = tokens.issued();
    for repo in fx.repos() {
        let scope = format!("repository:{repo}:pull,push");
        assert!(
            issued.iter().any(|i| i.status == 200
                && i.account.as_deref() == Some(USER)
                && i.scopes.contains(&scope)),
            "no token asked for {scope}: {issued:?}"
        );
    }
    assert!(
        issued.iter().all(|i| i.account.as_deref() == Some(USER)),
        "a token was asked for anonymously although credentials were given: {issued:?}"
    );

    // Without credentials the token server grants nothing and the registry refuses.
    let to = format!("{host}/anonymous");
    let (code, json, stderr) = push(root.path(), &to, target.ca_arg(), &[]).await;
    assert_refused(
        code,
        &json,
        &stderr,
        &fx,
        &to,
        "authentication required for anonymous/",
    );
    assert!(stderr.contains(&format!("at {host}")), "{stderr}");
    assert_names_the_push_options(&stderr);
    view.assert_nothing_arrived(&fx, "anonymous/").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn push_to_a_tls_basic_registry_trusts_the_given_ca_and_sends_the_credentials() {
    let ca = TestCa::new("it target CA");
    let ((_src, fx, root), target) =
        tokio::join!(fetched_store(), Secured::start(&ca, None, htpasswd_yaml));
    let view = View::new(&target, Login::Basic);
    let host = target.addr();

    let creds = format!("{USER}:{PASSWORD}");
    let (code, json, stderr) = push(
        root.path(),
        &host,
        target.ca_arg(),
        &["--dest-creds", &creds],
    )
    .await;
    assert_pushed_all(code, &json, &stderr, &fx);
    view.assert_every_tag_arrived(&fx, "").await;

    let to = format!("{host}/wrong");
    let wrong = format!("{USER}:not-the-password");
    let (code, json, stderr) =
        push(root.path(), &to, target.ca_arg(), &["--dest-creds", &wrong]).await;
    assert_refused(
        code,
        &json,
        &stderr,
        &fx,
        &to,
        &format!("the credentials for {host} were refused"),
    );
    assert_names_the_push_options(&stderr);
    view.assert_nothing_arrived(&fx, "wrong/").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_from_a_token_registry_to_a_tls_target() {
    // Two CAs: the source's is given with --ca-cert, the target's with --dest-ca-cert,
    // so trusting one for the other fails.
    let (source_ca, target_ca) = (TestCa::new("it source CA"), TestCa::new("it target CA"));
    let tokens = TokenServer::start(&source_ca, &[], SOURCE_USER, SOURCE_PASSWORD).await;
    let ((content, fx, _root), target) = tokio::join!(
        registry_with_fixtures(),
        Secured::start(&target_ca, None, htpasswd_yaml)
    );
    let source = Secured::start(&source_ca, Some(content.storage().to_path_buf()), |dir| {
        tokens.registry_yaml(&source_ca.write_pem(&dir.join("token-roots.pem")))
    })
    .await;
    let view = View::new(&target, Login::Basic);

    let from = format!("{}/oci/multi:1.0", source.addr());
    let to = format!("{}/mirror/multi", target.addr());
    let source_creds = format!("{SOURCE_USER}:{SOURCE_PASSWORD}");
    let target_creds = format!("{USER}:{PASSWORD}");
    let (code, json, stderr) = run(&[
        "copy",
        &from,
        "--to",
        &to,
        "--ca-cert",
        source.ca_arg(),
        "--creds",
        &source_creds,
        "--dest-ca-cert",
        target.ca_arg(),
        "--dest-creds",
        &target_creds,
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["targets"][0]["copied"], 1, "{json}");

    let m = fx.manifest("oci/multi", "1.0");
    assert!(m.is_index() && !m.children.is_empty());
    assert_eq!(
        view.manifest_digest("mirror/multi", "1.0").await,
        Some(m.digest.clone())
    );
    for child in &m.children {
        assert_eq!(
            view.manifest_digest("mirror/multi", child).await.as_deref(),
            Some(child.as_str()),
            "platform manifest {child}"
        );
    }
    for blob in &m.blobs {
        assert!(view.blob_exists("mirror/multi", blob).await, "blob {blob}");
    }
    // The source was only read, as the source's user.
    let issued = tokens.issued();
    assert!(!issued.is_empty(), "the source never asked for a token");
    for i in &issued {
        assert_eq!(i.account.as_deref(), Some(SOURCE_USER), "{issued:?}");
        assert_eq!(i.scopes, ["repository:oci/multi:pull"], "{issued:?}");
    }
}

/// Regression: a refused or missing login at a push target told the user to pass
/// `--creds`, which push does not have (the client's errors named the pulling side's
/// option). The hint names the targets' options.
fn assert_names_the_push_options(stderr: &str) {
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("hint: ") && l.contains("--dest-creds")),
        "{stderr}"
    );
    assert!(!stderr.contains("--creds "), "{stderr}");
}

/// A copy's TLS failure names the options of the side that failed: `--dest-ca-cert`
/// for a target, `--ca-cert` for the source (the remedy says which registry it was).
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_failure_names_the_options_of_the_side_that_failed() {
    let ca = TestCa::new("it CA nobody passes");
    let ((plain, _fx, _root), tls) = tokio::join!(
        registry_with_fixtures(),
        Secured::start(&ca, None, |_| String::new())
    );
    let hint = |stderr: &str| {
        stderr
            .lines()
            .find(|l| l.starts_with("hint: "))
            .unwrap_or_default()
            .to_owned()
    };

    let source = format!("{}/oci/multi:1.0", plain.addr());
    let to = format!("{}/x/multi", tls.addr());
    let (code, _, stderr) = run(&["copy", &source, "--to", &to, "--tls-verify=false"]).await;
    assert_eq!(code, 1, "{stderr}");
    let line = hint(&stderr);
    assert!(line.contains("--dest-ca-cert/--dest-cert-dir"), "{stderr}");

    // The other way round: the TLS registry is the source, the plain one the target.
    let source = format!("{}/oci/multi:1.0", tls.addr());
    let to = format!("{}/y/multi", plain.addr());
    let (code, _, stderr) = run(&["copy", &source, "--to", &to, "--dest-tls-verify=false"]).await;
    assert_eq!(code, 1, "{stderr}");
    let line = hint(&stderr);
    assert!(
        line.contains("--ca-cert/--cert-dir") && !line.contains("--dest-"),
        "{stderr}"
    );
}
