//! `static-registry serve`: what only the embedded server does (the pull API itself is
//! checked against both fronts in genconf.rs): new publishes without a restart, a
//! graceful stop, TLS with HTTP/2, and pull auth from an htpasswd file.

use std::fs;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::genconf::{error_code, header, request};
use crate::harness::clients::podman_pull_with_args;
use crate::harness::front::Serve;
use crate::harness::sha256_digest;
use crate::harness::skopeo::skopeo;
use crate::harness::store::{fetch_ok, registry_with_fixtures};

const USER: &str = "puller";
const PASSWORD: &str = "pull-only secret";

/// A publish while serve runs is served at once (new repository, new tag), each request
/// leaves an access-log line, and SIGTERM stops it cleanly (exit 0).
#[tokio::test(flavor = "multi_thread")]
async fn serve_answers_a_new_publish_without_restart_and_stops_on_sigterm() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let r = root.path();
    fetch_ok(r, &[format!("{}/many/tags:t000", reg.addr())]);
    let mut serve = Serve::start(r, &[]);
    let url = |p: &str| format!("http://{}{p}", serve.addr);

    let (_, _, body) = request(Method::GET, &url("/v2/_catalog")).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"repositories": ["many/tags"]})
    );
    let (status, _, body) = request(Method::GET, &url("/v2/apps/web/manifests/v1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "NAME_UNKNOWN");
    let (status, _, body) = request(Method::GET, &url("/v2/many/tags/manifests/latest")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "MANIFEST_UNKNOWN");

    fetch_ok(
        r,
        &[
            format!("{}/many/tags:latest", reg.addr()),
            format!("{}/apps/web:v1", reg.addr()),
        ],
    );
    for (repo, tag) in [("many/tags", "latest"), ("apps/web", "v1")] {
        let (status, h, _) =
            request(Method::GET, &url(&format!("/v2/{repo}/manifests/{tag}"))).await;
        assert_eq!(status, StatusCode::OK, "{repo}:{tag}");
        assert_eq!(
            header(&h, "docker-content-digest"),
            fx.manifest(repo, tag).digest
        );
    }
    let (_, _, body) = request(Method::GET, &url("/v2/_catalog")).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"repositories": ["apps/web", "many/tags"]})
    );

    let log = serve.log();
    assert!(
        log.lines().any(|l| l.contains("method=GET")
            && l.contains("path=/v2/apps/web/manifests/v1")
            && l.contains("status=200")),
        "no access-log line:\n{log}"
    );
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &serve.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = serve.wait(Duration::from_secs(20)).expect("serve stopped");
    assert!(status.success(), "{status}\n{}", serve.log());
}

/// `--tls-cert/--tls-key` with `--htpasswd`: HTTP/2 for curl, 401 with a Basic challenge
/// and an OCI body for no or wrong credentials, and skopeo (trusting the CA) and podman
/// pull with the right ones.
#[tokio::test(flavor = "multi_thread")]
async fn serve_over_tls_with_htpasswd_refuses_strangers_and_lets_users_pull() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let r = root.path();
    fetch_ok(r, &[format!("{}/oci/multi:1.0", reg.addr())]);
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::harness::tls::TestCa::new("it serve CA");
    let (cert, key) = ca.server_cert("localhost").write(dir.path(), "server");
    let certs = dir.path().join("certs.d");
    fs::create_dir(&certs).unwrap();
    let ca_pem = ca.write_pem(&certs.join("ca.crt"));
    let htpasswd = dir.path().join("htpasswd");
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    fs::write(&htpasswd, format!("# pull only\n{USER}:{hash}\n")).unwrap();
    let serve = Serve::start(
        r,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--htpasswd",
            htpasswd.to_str().unwrap(),
        ],
    );
    let port = serve.addr.rsplit_once(':').unwrap().1.to_owned();
    let host = format!("localhost:{port}");
    let http = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&fs::read(&ca_pem).unwrap()).unwrap())
        .resolve("localhost", serve.addr.parse().unwrap())
        .build()
        .unwrap();
    let get = |path: &str, creds: Option<(&str, &str)>| {
        let req = http.get(format!("https://{host}{path}"));
        let req = match creds {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        };
        async move { req.send().await.unwrap() }
    };
    for creds in [None, Some((USER, "wrong")), Some(("nobody", PASSWORD))] {
        for path in ["/v2/", "/v2/_catalog", "/v2/oci/multi/manifests/1.0"] {
            let resp = get(path, creds).await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path} {creds:?}");
            assert_eq!(
                header(resp.headers(), "www-authenticate"),
                "Basic realm=\"static-registry\""
            );
            assert_eq!(error_code(&resp.bytes().await.unwrap()), "UNAUTHORIZED");
        }
    }
    let resp = get("/v2/", Some((USER, PASSWORD))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);

    let digest = fx.manifest("oci/multi", "1.0").digest.clone();
    let creds = format!("{USER}:{PASSWORD}");
    let target = format!("docker://{host}/oci/multi:1.0");
    let cert_dir = format!("--cert-dir={}", certs.display());
    let raw = tokio::task::spawn_blocking(move || {
        skopeo(&["inspect", "--raw", &cert_dir, "--creds", &creds, &target]).stdout
    })
    .await
    .unwrap();
    assert_eq!(sha256_digest(&raw), digest);
    let image = format!("{host}/oci/multi@{digest}");
    tokio::task::spawn_blocking(move || {
        let state = tempfile::tempdir().unwrap();
        podman_pull_with_args(
            state.path(),
            &["--creds", &format!("{USER}:{PASSWORD}")],
            &image,
        );
    })
    .await
    .unwrap();
}
