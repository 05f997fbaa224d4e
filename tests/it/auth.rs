//! HTTPS upstreams with verification on, and every way of authenticating the README
//! promises: a private CA through `--ca-cert` and `--cert-dir`, Basic auth (htpasswd),
//! token auth with a real token exchange, credential helpers and auth files.
//!
//! Each upstream is a real docker-registry serving TLS with a certificate from a CA
//! made for the test. It serves the filesystem storage of a plain registry the
//! fixtures were pushed into, so pushing never has to authenticate.
//!
//! Every fetch runs with an empty HOME and without the auth-file and credential
//! variables, so the logins of the machine running the tests neither help nor hinder.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;

use crate::harness::fixtures::Fixtures;
use crate::harness::registry::{Registry, RegistryConfig};
use crate::harness::store::{assert_consistent, tags};
use crate::harness::tls::TestCa;
use crate::harness::token::{Issued, TokenServer};
use crate::harness::{run_with_timeout, served_tempdir};

pub(crate) const USER: &str = "mirror-bot";
pub(crate) const PASSWORD: &str = "correct horse battery";

/// A Docker v2s2 image, pulled anonymously where the token server allows it.
pub(crate) const PUBLIC: (&str, &str) = ("base/alpine", "3.19");
/// An OCI image, pulled only with credentials under token auth.
const PRIVATE: (&str, &str) = ("apps/api", "v1");

/// What the fetch of an upstream holding an unknown CA's certificate must say:
/// the product's TLS error and the rustls cause.
const TLS_ERROR: &str = "TLS handshake with 127.0.0.1 failed";
const UNKNOWN_ISSUER: &str = "invalid peer certificate: UnknownIssuer";

/// A TLS docker-registry (possibly with auth) serving [`PUBLIC`] and [`PRIVATE`].
pub(crate) struct Upstream {
    /// Declared first so it stops before the registry owning its storage.
    pub(crate) registry: Registry,
    _content: Registry,
    /// The CA that issued the registry's certificate, as a PEM file.
    pub(crate) ca_pem: PathBuf,
    dir: tempfile::TempDir,
}

impl Upstream {
    /// `auth_yaml` gets the upstream's directory (for htpasswd and certificate bundle
    /// files) and returns the config's `auth:` section, or "".
    async fn start(ca: &TestCa, auth_yaml: impl FnOnce(&Path) -> String) -> Upstream {
        Self::start_as(ca, "127.0.0.1", auth_yaml).await
    }

    /// [`Upstream::start`] with a certificate for `name` (nginx verifies an upstream's
    /// certificate by host name only), in a directory nginx's workers can read.
    pub(crate) async fn start_as(
        ca: &TestCa,
        name: &str,
        auth_yaml: impl FnOnce(&Path) -> String,
    ) -> Upstream {
        let dir = served_tempdir("it-auth-");
        let ca_pem = ca.write_pem(&dir.path().join("ca.pem"));
        let (cert, key) = ca.server_cert(name).write(dir.path(), "server");
        let content = Registry::start();
        let fx = Fixtures::get();
        for (repo, tag) in [PUBLIC, PRIVATE] {
            let m = fx.manifest(repo, tag);
            for blob in &m.blobs {
                content.push_blob(repo, fx.blob(blob)).await;
            }
            content
                .push_manifest(repo, tag, &m.media_type, &m.bytes)
                .await;
        }
        let registry = Registry::start_with(RegistryConfig {
            storage: Some(content.storage().to_path_buf()),
            tls: Some((cert, key)),
            extra_yaml: auth_yaml(dir.path()),
        });
        Upstream {
            registry,
            _content: content,
            ca_pem,
            dir,
        }
    }

    fn reference(&self, (repo, tag): (&str, &str)) -> String {
        format!("{}/{repo}:{tag}", self.registry.addr())
    }
}

/// The htpasswd `auth:` section for [`USER`]/[`PASSWORD`], writing the file into `dir`.
pub(crate) fn htpasswd_yaml(dir: &Path) -> String {
    // distribution only accepts bcrypt entries; the lowest cost keeps each login fast.
    let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
    let path = dir.join("htpasswd");
    std::fs::write(&path, format!("{USER}:{hash}\n")).expect("write htpasswd");
    format!(
        "auth:\n  htpasswd:\n    realm: it-basic-realm\n    path: \"{}\"\n",
        path.display()
    )
}

struct Outcome {
    code: i32,
    stderr: String,
}

/// `static-registry fetch --root ROOT ARGS... REFS...` with TLS verification on (the
/// default), no retries, and a hermetic environment plus `env`.
async fn fetch(root: &Path, refs: &[String], args: &[&str], env: &[(&str, OsString)]) -> Outcome {
    let home = tempfile::tempdir().expect("create HOME");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_static-registry"));
    cmd.args(["fetch", "--retries", "0", "--root"])
        .arg(root)
        .args(args)
        .args(refs)
        .env("HOME", home.path());
    for var in [
        "REGISTRY_AUTH_FILE",
        "XDG_RUNTIME_DIR",
        "XDG_CONFIG_HOME",
        "DOCKER_CONFIG",
        "STATIC_REGISTRY_CREDS",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Blocking, and the token server may live on this test's runtime.
    let out = tokio::task::spawn_blocking(move || {
        let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
        drop(home);
        out
    })
    .await
    .unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The fetch succeeded and `root` holds exactly the pushed manifests of `images`.
fn assert_fetched(root: &Path, out: &Outcome, images: &[(&str, &str)]) {
    assert_eq!(out.code, 0, "fetch failed:\n{}", out.stderr);
    let fx = Fixtures::get();
    for &(repo, tag) in images {
        let want = (tag.to_string(), fx.manifest(repo, tag).digest.clone());
        assert_eq!(tags(root, repo), vec![want], "{repo} in the store");
    }
    assert_consistent(root);
}

/// The fetch failed with `needle` in its error output and published nothing.
fn assert_failed(root: &Path, out: &Outcome, needle: &str) {
    assert_eq!(out.code, 1, "fetch should fail:\n{}", out.stderr);
    assert!(
        out.stderr.contains(needle),
        "error output should say {needle:?}:\n{}",
        out.stderr
    );
    for (repo, _) in [PUBLIC, PRIVATE] {
        assert!(
            !root.join(repo).join("index.json").exists(),
            "{repo} published by a failed fetch"
        );
    }
}

fn store() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("it-store-")
        .tempdir()
        .expect("create store dir")
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

// ---------------------------------------------------------------------------
// TLS

/// README: "for a private CA use --ca-cert/--cert-dir". Both make the CA trusted with
/// verification left on; the cert dir holds the CA as `*.crt`, as certs.d does.
#[tokio::test(flavor = "multi_thread")]
async fn private_ca_is_trusted_through_ca_cert_and_through_cert_dir() {
    let ca = TestCa::new("it private CA");
    let up = Upstream::start(&ca, |_| String::new()).await;
    let refs = [up.reference(PUBLIC), up.reference(PRIVATE)];

    let root = store();
    let out = fetch(root.path(), &refs, &["--ca-cert", arg(&up.ca_pem)], &[]).await;
    assert_fetched(root.path(), &out, &[PUBLIC, PRIVATE]);

    let cert_dir = up.dir.path().join("certs.d").join(up.registry.addr());
    std::fs::create_dir_all(&cert_dir).unwrap();
    ca.write_pem(&cert_dir.join("ca.crt"));
    let root = store();
    let out = fetch(root.path(), &refs, &["--cert-dir", arg(&cert_dir)], &[]).await;
    assert_fetched(root.path(), &out, &[PUBLIC, PRIVATE]);
}

/// Verification is on by default: neither the system roots nor another CA (given
/// either way) vouch for the upstream, and the error says it is a certificate problem.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_or_wrong_ca_fails_as_a_certificate_error() {
    let ca = TestCa::new("it private CA");
    let up = Upstream::start(&ca, |_| String::new()).await;
    let refs = [up.reference(PUBLIC)];
    let other = TestCa::new("it other CA");
    let other_pem = other.write_pem(&up.dir.path().join("other.pem"));
    let other_dir = up.dir.path().join("other.d");
    std::fs::create_dir(&other_dir).unwrap();
    other.write_pem(&other_dir.join("ca.crt"));

    let cases: [&[&str]; 3] = [
        &[],
        &["--ca-cert", arg(&other_pem)],
        &["--cert-dir", arg(&other_dir)],
    ];
    for args in cases {
        let root = store();
        let out = fetch(root.path(), &refs, args, &[]).await;
        assert_failed(root.path(), &out, TLS_ERROR);
        assert!(
            out.stderr.contains(UNKNOWN_ISSUER),
            "{args:?}: the cause should be the unknown issuer:\n{}",
            out.stderr
        );
    }
}

// ---------------------------------------------------------------------------
// Basic auth

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_registry_is_fetched_with_creds() {
    let ca = TestCa::new("it private CA");
    let up = Upstream::start(&ca, htpasswd_yaml).await;
    let root = store();
    let creds = format!("{USER}:{PASSWORD}");
    let out = fetch(
        root.path(),
        &[up.reference(PUBLIC), up.reference(PRIVATE)],
        &["--ca-cert", arg(&up.ca_pem), "--creds", &creds],
        &[],
    )
    .await;
    assert_fetched(root.path(), &out, &[PUBLIC, PRIVATE]);
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_without_creds_or_with_a_wrong_password_fails_as_an_auth_error() {
    let ca = TestCa::new("it private CA");
    let up = Upstream::start(&ca, htpasswd_yaml).await;
    let refs = [up.reference(PUBLIC)];
    let ca_cert = ["--ca-cert", arg(&up.ca_pem)];

    let root = store();
    let out = fetch(root.path(), &refs, &ca_cert, &[]).await;
    assert_failed(root.path(), &out, "authentication required for base/alpine");

    // Issue: a refused password was reported as missing credentials ("pass --creds").
    let root = store();
    let wrong = format!("{USER}:not-the-password");
    let out = fetch(
        root.path(),
        &refs,
        &[ca_cert[0], ca_cert[1], "--creds", &wrong],
        &[],
    )
    .await;
    assert_failed(
        root.path(),
        &out,
        &format!(
            "the credentials for {} were refused for base/alpine",
            up.registry.addr()
        ),
    );
    assert!(!out.stderr.contains("pass --creds"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// Token auth

/// A full docker token exchange against distribution's own JWT verification: the
/// public repository anonymously, the private one with credentials sent to the
/// token server (and only there).
#[tokio::test(flavor = "multi_thread")]
async fn token_auth_pulls_public_repo_anonymously_and_private_repo_with_creds() {
    let ca = TestCa::new("it private CA");
    let tokens = TokenServer::start(&ca, &[PUBLIC.0], USER, PASSWORD).await;
    let up = Upstream::start(&ca, |dir| {
        tokens.registry_yaml(&ca.write_pem(&dir.join("token-roots.pem")))
    })
    .await;
    let ca_cert = ["--ca-cert", arg(&up.ca_pem)];

    let root = store();
    let out = fetch(root.path(), &[up.reference(PUBLIC)], &ca_cert, &[]).await;
    assert_fetched(root.path(), &out, &[PUBLIC]);
    // One anonymous token, reused for the manifest and every blob (README: "per-scope
    // tokens cached until expiry").
    assert_eq!(
        tokens.issued(),
        [issued(PUBLIC.0, None)],
        "token requests of the anonymous run"
    );

    let root = store();
    let creds = format!("{USER}:{PASSWORD}");
    let out = fetch(
        root.path(),
        &[up.reference(PRIVATE)],
        &[ca_cert[0], ca_cert[1], "--creds", &creds],
        &[],
    )
    .await;
    assert_fetched(root.path(), &out, &[PRIVATE]);
    assert_eq!(
        tokens.issued()[1..],
        [issued(PRIVATE.0, Some(USER))],
        "token requests of the credentialed run"
    );
}

/// A granted pull token for `repo`, as the token server logs it.
fn issued(repo: &str, account: Option<&str>) -> Issued {
    Issued {
        scopes: vec![format!("repository:{repo}:pull")],
        account: account.map(str::to_string),
        granted: vec![repo.to_string()],
        status: 200,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_refuses_private_repo_without_creds_or_with_a_wrong_password() {
    let ca = TestCa::new("it private CA");
    let tokens = TokenServer::start(&ca, &[PUBLIC.0], USER, PASSWORD).await;
    let up = Upstream::start(&ca, |dir| {
        tokens.registry_yaml(&ca.write_pem(&dir.join("token-roots.pem")))
    })
    .await;
    let refs = [up.reference(PRIVATE)];
    let ca_cert = ["--ca-cert", arg(&up.ca_pem)];

    // The token server hands out a token without access; the registry refuses it.
    let root = store();
    let out = fetch(root.path(), &refs, &ca_cert, &[]).await;
    assert_failed(root.path(), &out, "authentication required for apps/api");

    let root = store();
    let wrong = format!("{USER}:not-the-password");
    let out = fetch(
        root.path(),
        &refs,
        &[ca_cert[0], ca_cert[1], "--creds", &wrong],
        &[],
    )
    .await;
    assert_failed(root.path(), &out, "credentials for 127.0.0.1");
    assert!(out.stderr.contains("were refused"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// Auth files and credential helpers

/// A `docker-credential-<name>` on a private PATH directory that answers `get` for
/// `server` with [`USER`] and `secret`, and logs each call (`<verb> <server>`).
struct Helper {
    bin: tempfile::TempDir,
    log: PathBuf,
}

impl Helper {
    fn install(name: &str, server: &str, secret: &str) -> Helper {
        use std::os::unix::fs::PermissionsExt;
        let bin = tempfile::tempdir().expect("create helper dir");
        let log = bin.path().join("calls.log");
        let script = format!(
            r#"#!/bin/sh
# The docker credential helper protocol: verb as argument, server on stdin, JSON out.
server=$(cat)
echo "$1 $server" >> '{log}'
if [ "$1" = get ] && [ "$server" = '{server}' ]; then
    printf '{{"ServerURL":"%s","Username":"%s","Secret":"%s"}}\n' "$server" '{USER}' '{secret}'
else
    echo "credentials not found in native keychain"
    exit 1
fi
"#,
            log = log.display()
        );
        let path = bin.path().join(format!("docker-credential-{name}"));
        std::fs::write(&path, script).expect("write helper");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Helper { bin, log }
    }

    /// `PATH` with the helper's directory first.
    fn path_env(&self) -> (&'static str, OsString) {
        let mut dirs = vec![self.bin.path().to_path_buf()];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        ("PATH", std::env::join_paths(dirs).unwrap())
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn write_authfile(up: &Upstream, name: &str, json: serde_json::Value) -> PathBuf {
    let path = up.dir.path().join(name);
    std::fs::write(&path, json.to_string()).expect("write auth file");
    path
}

/// Fetch both images from the Basic-auth upstream with the auth file given by
/// `--authfile` or `$REGISTRY_AUTH_FILE`, and `helper` on PATH; the helper must have
/// been asked for exactly this registry.
async fn fetch_with_helper(up: &Upstream, helper: &Helper, authfile: &Path, by_env: bool) {
    let root = store();
    let mut args = vec!["--ca-cert", arg(&up.ca_pem)];
    let mut env = vec![helper.path_env()];
    if by_env {
        env.push(("REGISTRY_AUTH_FILE", authfile.as_os_str().to_owned()));
    } else {
        args.extend(["--authfile", arg(authfile)]);
    }
    let refs = [up.reference(PUBLIC), up.reference(PRIVATE)];
    let out = fetch(root.path(), &refs, &args, &env).await;
    assert_fetched(root.path(), &out, &[PUBLIC, PRIVATE]);
    let calls = helper.calls();
    assert!(!calls.is_empty(), "the credential helper never ran");
    let want = format!("get {}", up.registry.addr());
    assert!(calls.iter().all(|c| *c == want), "helper calls: {calls:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn authfile_cred_helpers_entry_runs_the_helper_for_basic_auth() {
    let ca = TestCa::new("it private CA");
    let up = Upstream::start(&ca, htpasswd_yaml).await;
    let helper = Helper::install("it-helper", &up.registry.addr(), PASSWORD);
    let file = write_authfile(
        &up,
        "config.json",
        serde_json::json!({"credHelpers": {up.registry.addr(): "it-helper"}}),
    );
    fetch_with_helper(&up, &helper, &file, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_auth_file_env_cred_helpers_entry_runs_the_helper_for_basic_auth() {
    let ca = TestCa::new("it private CA");
    let up = Upstream::start(&ca, htpasswd_yaml).await;
    let helper = Helper::install("it-helper", &up.registry.addr(), PASSWORD);
    let file = write_authfile(
        &up,
        "auth.json",
        serde_json::json!({"credHelpers": {up.registry.addr(): "it-helper"}}),
    );
    fetch_with_helper(&up, &helper, &file, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn authfile_creds_store_runs_the_default_helper_for_basic_auth() {
    let ca = TestCa::new("it private CA");
    let up = Upstream::start(&ca, htpasswd_yaml).await;
    let helper = Helper::install("it-store", &up.registry.addr(), PASSWORD);
    let file = write_authfile(
        &up,
        "config.json",
        serde_json::json!({"auths": {}, "credsStore": "it-store"}),
    );
    fetch_with_helper(&up, &helper, &file, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn authfile_auths_entry_with_base64_credentials_authenticates() {
    let ca = TestCa::new("it private CA");
    let up = Upstream::start(&ca, htpasswd_yaml).await;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let file = write_authfile(
        &up,
        "config.json",
        serde_json::json!({"auths": {up.registry.addr(): {"auth": auth}}}),
    );
    let root = store();
    let out = fetch(
        root.path(),
        &[up.reference(PUBLIC), up.reference(PRIVATE)],
        &["--ca-cert", arg(&up.ca_pem), "--authfile", arg(&file)],
        &[],
    )
    .await;
    assert_fetched(root.path(), &out, &[PUBLIC, PRIVATE]);
}

/// Pushing asks the token server for `pull,push` on the target repository (and `pull`
/// on the repository a blob is mounted from); without credentials the push is refused.
#[tokio::test(flavor = "multi_thread")]
async fn token_auth_push_asks_for_push_scopes_and_needs_credentials() {
    use bytes::Bytes;
    use static_registry::registry::{Client, ClientOptions};

    use crate::harness::client_push::{Pushed, push_blob};

    let ca = TestCa::new("it private CA");
    let tokens = TokenServer::start(&ca, &[PUBLIC.0], USER, PASSWORD).await;
    let up = Upstream::start(&ca, |dir| {
        tokens.registry_yaml(&ca.write_pem(&dir.join("token-roots.pem")))
    })
    .await;
    let client = |creds: Option<(String, String)>| {
        Client::new(ClientOptions {
            ca_certs: vec![up.ca_pem.clone()],
            creds,
            retries: 0,
            ..ClientOptions::default()
        })
        .unwrap()
    };
    let fx = Fixtures::get();
    let host = up.registry.addr();
    let m = fx.manifest(PRIVATE.0, PRIVATE.1);
    let layer = m.blobs.last().unwrap();
    let layer_digest = layer.parse().unwrap();
    let bytes = Bytes::copy_from_slice(fx.blob(layer));

    let anonymous = client(None);
    let refused = push_blob(
        &anonymous,
        &host,
        "pushed/app",
        &layer_digest,
        bytes.clone(),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("authentication required"),
        "{refused}"
    );

    let user = client(Some((USER.to_string(), PASSWORD.to_string())));
    let pushed = push_blob(
        &user,
        &host,
        "pushed/app",
        &layer_digest,
        bytes.clone(),
        Some(PRIVATE.0),
    )
    .await
    .unwrap();
    assert_eq!(
        pushed,
        Pushed::Mounted,
        "the layer is in {} already",
        PRIVATE.0
    );
    for blob in &m.blobs {
        let b = Bytes::copy_from_slice(fx.blob(blob));
        push_blob(&user, &host, "pushed/app", &blob.parse().unwrap(), b, None)
            .await
            .unwrap();
    }
    user.put_manifest(
        &host,
        "pushed/app",
        "v1",
        &m.media_type,
        &m.digest.parse().unwrap(),
        Bytes::copy_from_slice(&m.bytes),
    )
    .await
    .unwrap();
    let body = user.get_manifest(&host, "pushed/app", "v1").await.unwrap();
    assert_eq!(crate::harness::sha256_digest(&body.bytes), m.digest);

    let asked: Vec<Vec<String>> = tokens.issued().into_iter().map(|i| i.scopes).collect();
    assert!(
        asked.contains(&vec![
            "repository:pushed/app:pull,push".to_string(),
            format!("repository:{}:pull", PRIVATE.0)
        ]),
        "{asked:?}"
    );
    assert!(
        asked.contains(&vec!["repository:pushed/app:pull,push".to_string()]),
        "{asked:?}"
    );
}
