//! Proxy-mode mounts (`gen-conf --mappings ... --upstream-mode proxy`) in front of
//! upstreams that need TLS and a login: Basic credentials from the mapping's
//! `credentials-file` sent by nginx, a Bearer challenge relayed to the client (which gets
//! its token from the realm itself and sends it through), and the upstream's certificate
//! verified against `--upstream-ca`.
//!
//! The upstreams are real docker-registries serving TLS with a certificate for
//! `localhost` from a CA made for the test (nginx checks `proxy_ssl_name` as a host
//! name); the clients are real skopeo and reqwest, anonymous and plain HTTP towards nginx.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::auth::{PASSWORD, PUBLIC, USER, Upstream, htpasswd_yaml};
use crate::genconf::{gen_conf, header, request, serve};
use crate::harness::fixtures::Fixtures;
use crate::harness::nginx::Nginx;
use crate::harness::skopeo::skopeo;
use crate::harness::tls::TestCa;
use crate::harness::token::TokenServer;
use crate::harness::{require_bin, run_with_timeout, served_tempdir, sha256_digest};
use crate::mappings::inspect_digest;

/// The image every upstream holds (a Docker v2s2 image), public under token auth.
const IMAGE: (&str, &str) = PUBLIC;

/// A TLS upstream for `localhost` (nginx checks `proxy_ssl_name` as a host name).
async fn upstream(ca: &TestCa, auth_yaml: impl FnOnce(&Path) -> String) -> Upstream {
    Upstream::start_as(ca, "localhost", auth_yaml).await
}

/// `https://localhost:PORT/<namespace>`: the name the certificate is for.
fn target(up: &Upstream, namespace: &str) -> String {
    let port = up.registry.addr().rsplit_once(':').unwrap().1.to_owned();
    format!("https://localhost:{port}/{namespace}")
}

/// An empty store for gen-conf (the mounts are all that is served).
fn empty_store() -> tempfile::TempDir {
    let root = served_tempdir("it-mapauth-store-");
    fs::write(root.path().join(".static-registry"), r#"{"format":1}"#).unwrap();
    root
}

/// gen-conf in proxy mode with `mappings` (a file name in `dir`, holding `body`), a
/// proxy cache `dir/<cache>` that does not exist yet, and `ca` as the upstream CA; nginx
/// serving it and gen-conf's warnings.
fn proxy_conf(
    root: &Path,
    dir: &Path,
    mappings: &str,
    body: &str,
    cache: &str,
    ca: &Path,
) -> (Nginx, String) {
    let file = dir.join(mappings);
    fs::write(&file, body).unwrap();
    let cache = dir.join(cache);
    assert!(!cache.exists());
    let (config, warnings) = gen_conf(
        root,
        &[
            "--mappings",
            file.to_str().unwrap(),
            "--upstream-mode",
            "proxy",
            "--proxy-cache",
            cache.to_str().unwrap(),
            "--upstream-ca",
            ca.to_str().unwrap(),
        ],
    );
    (serve(&config), warnings)
}

/// `skopeo copy` of `image` on nginx into a `dir:` layout at `out`, anonymous (the
/// manifest kept as served); checks that every fixture blob arrived intact and returns
/// the manifest's digest.
async fn copy(image: String, out: PathBuf) -> String {
    let target = format!("dir:{}", out.display());
    tokio::task::spawn_blocking(move || {
        skopeo(&[
            "copy",
            "--src-no-creds",
            "--src-tls-verify=false",
            &format!("docker://{image}"),
            &target,
        ]);
    })
    .await
    .unwrap();
    for blob in &Fixtures::get().manifest(IMAGE.0, IMAGE.1).blobs {
        let hex = blob.strip_prefix("sha256:").unwrap();
        let bytes = fs::read(out.join(hex)).unwrap_or_else(|e| panic!("{blob}: {e}"));
        assert_eq!(&sha256_digest(&bytes), blob);
    }
    sha256_digest(&fs::read(out.join("manifest.json")).unwrap())
}

/// `skopeo inspect --raw` of `image` on nginx, anonymous, which must fail: its stderr.
async fn inspect_fails(image: String) -> String {
    tokio::task::spawn_blocking(move || {
        let bin = require_bin("skopeo", "skopeo");
        let out = run_with_timeout(
            Command::new(bin).args([
                "inspect",
                "--raw",
                "--no-creds",
                "--tls-verify=false",
                &format!("docker://{image}"),
            ]),
            Duration::from_secs(60),
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "skopeo inspect {image} succeeded");
        stderr
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_mode_logs_in_to_a_basic_auth_upstream_with_the_credentials_file() {
    let ca = TestCa::new("it mappings CA");
    let up = upstream(&ca, htpasswd_yaml).await;
    let fx = Fixtures::get();
    let want = &fx.manifest(IMAGE.0, IMAGE.1).digest;
    let root = empty_store();
    let dir = served_tempdir("it-mapauth-");
    fs::write(dir.path().join("creds"), format!("{USER}:{PASSWORD}\n")).unwrap();
    fs::write(
        dir.path().join("wrong"),
        format!("{USER}:not-the-password\n"),
    )
    .unwrap();
    let yaml = |creds: Option<&str>| {
        let creds = creds.map_or(String::new(), |c| format!(", credentials-file: {c}"));
        format!(
            "serve:\n  upstream-mode: proxy\n  mappings:\n    cache: {{target: \"{}\"{creds}}}\n",
            target(&up, "base")
        )
    };

    // The relative credentials file is found next to the mappings file; the client
    // stays anonymous.
    let (nginx, warnings) = proxy_conf(
        root.path(),
        dir.path(),
        "config.yaml",
        &yaml(Some("creds")),
        "cache",
        &up.ca_pem,
    );
    assert!(
        warnings.contains("holds upstream credentials"),
        "{warnings}"
    );
    let image = format!("{}/cache/alpine:{}", nginx.addr(), IMAGE.1);
    assert_eq!(&inspect_digest(image.clone()).await, want);
    let out = dir.path().join("pulled");
    assert_eq!(&copy(image, out).await, want);
    // Asked as skopeo asked (distribution answers a client that accepts no v2s2 with a
    // schema 1 conversion, which nginx caches apart).
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/v2/cache/alpine/manifests/{}",
            nginx.url(),
            IMAGE.1
        ))
        .header(
            reqwest::header::ACCEPT,
            crate::harness::fixtures::DOCKER_MANIFEST,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(resp.headers(), "docker-content-digest"), want);
    // htpasswd let nginx's requests in, sent with the Host the upstream is named by.
    let log = up.registry.log_tail(200);
    let host = target(&up, "")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    assert!(
        log.lines().any(|l| l.contains("msg=\"authorized request\"")
            && l.contains(&format!("http.request.host=\"{host}\""))),
        "the upstream logged no authorized request for {host}:\n{log}"
    );

    // Without the credentials file, or with a wrong password: the upstream's 401,
    // relayed with its challenge.
    for (creds, cache) in [(None, "cache-anon"), (Some("wrong"), "cache-wrong")] {
        let (nginx, _) = proxy_conf(
            root.path(),
            dir.path(),
            &format!("{cache}.yaml"),
            &yaml(creds),
            cache,
            &up.ca_pem,
        );
        let (status, h, body) = request(
            Method::GET,
            &format!("{}/v2/cache/alpine/manifests/{}", nginx.url(), IMAGE.1),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{creds:?}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            header(&h, "www-authenticate").starts_with("Basic "),
            "{creds:?}: {h:?}"
        );
        let stderr = inspect_fails(format!("{}/cache/alpine:{}", nginx.addr(), IMAGE.1)).await;
        assert!(
            stderr.contains("401") || stderr.contains("authentication required"),
            "{creds:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_mode_relays_the_token_challenge_and_forwards_the_clients_bearer_token() {
    let ca = TestCa::new("it mappings CA");
    let tokens = TokenServer::start(&ca, &[IMAGE.0], USER, PASSWORD).await;
    let up = upstream(&ca, |dir| {
        tokens.registry_yaml(&ca.write_pem(&dir.join("token-roots.pem")))
    })
    .await;
    let fx = Fixtures::get();
    let want = &fx.manifest(IMAGE.0, IMAGE.1).digest;
    let root = empty_store();
    let dir = served_tempdir("it-mapauth-");
    // A mirror: `/` maps onto the upstream, so names are the upstream's own (the client
    // asks the token service for the scope of the name it pulls) and /v2/ relays the
    // upstream's challenge (skopeo asks /v2/ first). One nginx (and cache) per client, so
    // the second does not find the first one's content cached.
    let start = |cache: &str| {
        let (nginx, warnings) = proxy_conf(
            root.path(),
            dir.path(),
            &format!("{cache}.json"),
            &json!({"mappings": {"/": target(&up, "")}}).to_string(),
            cache,
            &up.ca_pem,
        );
        assert!(!warnings.contains("warning"), "{warnings}");
        nginx
    };

    // By hand: the upstream's challenge relayed, a token from its realm, the token
    // forwarded.
    let nginx = start("cache-by-hand");
    let manifest_url = format!("{}/v2/{}/manifests/{}", nginx.url(), IMAGE.0, IMAGE.1);
    let (status, h, _) = request(Method::GET, &manifest_url).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let challenge = header(&h, "www-authenticate");
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    let param = |name: &str| {
        regex::Regex::new(&format!(r#"{name}="([^"]*)""#))
            .unwrap()
            .captures(challenge)
            .unwrap_or_else(|| panic!("no {name} in {challenge}"))[1]
            .to_owned()
    };
    assert_eq!(param("realm"), tokens.realm());
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .get(
            url::Url::parse_with_params(
                &param("realm"),
                [("service", param("service")), ("scope", param("scope"))],
            )
            .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = http
        .get(&manifest_url)
        .bearer_auth(token["token"].as_str().unwrap())
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(&sha256_digest(&resp.bytes().await.unwrap()), want);
    assert_eq!(tokens.issued().len(), 1, "{:?}", tokens.issued());
    drop(nginx);

    // skopeo, anonymous, against a fresh nginx: it does the same dance by itself.
    let nginx = start("cache-skopeo");
    let image = format!("{}/{}:{}", nginx.addr(), IMAGE.0, IMAGE.1);
    assert_eq!(&inspect_digest(image.clone()).await, want);
    let out = dir.path().join("pulled");
    assert_eq!(&copy(image, out).await, want);
    let issued = tokens.issued();
    assert!(
        issued[1..]
            .iter()
            .any(|i| i.status == 200 && i.account.is_none() && i.granted == [IMAGE.0.to_string()]),
        "skopeo got no anonymous pull token for {}: {issued:?}",
        IMAGE.0
    );

    // Content by digest, once cached, is served without a token.
    let blob = fx.manifest(IMAGE.0, IMAGE.1).blobs[0].clone();
    let (status, h, body) = request(
        Method::GET,
        &format!("{}/v2/{}/blobs/{blob}", nginx.url(), IMAGE.0),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "x-cache-status"), "HIT");
    assert_eq!(sha256_digest(&body), blob);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_mode_verifies_a_tls_upstream_against_the_given_ca() {
    let ca = TestCa::new("it mappings CA");
    let up = upstream(&ca, |_| String::new()).await;
    let fx = Fixtures::get();
    let want = &fx.manifest(IMAGE.0, IMAGE.1).digest;
    let root = empty_store();
    let dir = served_tempdir("it-mapauth-");
    let body = json!({"mappings": {"cache": target(&up, "base")}}).to_string();
    let manifest = |nginx: &Nginx| format!("{}/v2/cache/alpine/manifests/{}", nginx.url(), IMAGE.1);

    // The right CA: verified, served.
    let (good, _) = proxy_conf(
        root.path(),
        dir.path(),
        "good.json",
        &body,
        "cache-good",
        &up.ca_pem,
    );
    assert_eq!(
        &inspect_digest(format!("{}/cache/alpine:{}", good.addr(), IMAGE.1)).await,
        want
    );
    let (status, _, _) = request(Method::GET, &manifest(&good)).await;
    assert_eq!(status, StatusCode::OK);

    // Another CA: the handshake fails verification, the client gets a 502.
    let other = TestCa::new("it other CA");
    let other_pem = other.write_pem(&dir.path().join("other.pem"));
    let (bad, _) = proxy_conf(
        root.path(),
        dir.path(),
        "bad.json",
        &body,
        "cache-bad",
        &other_pem,
    );
    let (status, _, _) = request(Method::GET, &manifest(&bad)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let stderr = inspect_fails(format!("{}/cache/alpine:{}", bad.addr(), IMAGE.1)).await;
    assert!(stderr.contains("502"), "{stderr}");
    let log = bad.error_log_tail(40);
    assert!(
        log.contains("upstream SSL certificate verify error"),
        "nginx error log:\n{log}"
    );
}
