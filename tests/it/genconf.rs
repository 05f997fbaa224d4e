//! `static-registry gen-conf` served by a real nginx, pulled from by real clients.

use std::fs;
use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_fronts;
use crate::harness::clients::{Containerd, podman_pull};
use crate::harness::fixtures::{FOREIGN_URL, Fixtures, OCI_INDEX, SBOM_ARTIFACT_TYPE};
use crate::harness::front::{Front, Kind};
use crate::harness::nginx::Nginx;
use crate::harness::sha256_digest;
use crate::harness::skopeo::{skopeo, skopeo_inspect_raw};
use crate::harness::store::{all_tag_refs, fetch_ok, registry_with_fixtures, static_registry};

/// A port placeholder gen-conf accepts; the harness substitutes its free port.
pub const LISTEN: &str = "127.0.0.1:65000";

pub fn gen_conf(root: &Path, extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "gen-conf",
        "--root",
        root.to_str().unwrap(),
        "--listen",
        LISTEN,
    ];
    args.extend_from_slice(extra);
    let out = static_registry(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "gen-conf failed:\n{stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

pub fn serve(config: &str) -> Nginx {
    Nginx::start(&config.replace(&format!("listen {LISTEN};"), "listen 127.0.0.1:{{PORT}};"))
}

/// A store holding every fixture tag, fetched from a real registry.
pub async fn fetched_store() -> (Fixtures, tempfile::TempDir) {
    let (reg, fx, root) = registry_with_fixtures().await;
    fetch_ok(root.path(), &all_tag_refs(&reg, &fx));
    (fx, root)
}

pub async fn request(
    method: Method,
    url: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let resp = reqwest::Client::new()
        .request(method, url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

pub fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).map(|v| v.to_str().unwrap()).unwrap_or_default()
}

async fn skopeo_blocking(args: Vec<String>) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        skopeo(&args).stdout
    })
    .await
    .unwrap()
}

both_fronts!(every_tag_and_digest_pulls_byte_exact);
/// Every manifest of the fixture set, tag and digest, pulls through nginx byte for
/// byte with skopeo, with the right headers on GET and HEAD; every image copies whole.
async fn every_tag_and_digest_pulls_byte_exact(kind: Kind) {
    let (fx, root) = fetched_store().await;
    let (config, warnings) = gen_conf(root.path(), &[]);
    assert!(warnings.is_empty(), "{warnings}");
    let nginx = Front::start(kind, root.path(), &[]);
    let addr = nginx.addr();

    for (repo, tag, digest) in fx.all_refs() {
        let m = fx.by_digest(&repo, &digest);
        for reference in [format!(":{tag}"), format!("@{digest}")] {
            let target = format!("docker://{addr}/{repo}{reference}");
            let raw = tokio::task::spawn_blocking(move || {
                skopeo_inspect_raw(&target, &["--tls-verify=false"])
            })
            .await
            .unwrap();
            assert_eq!(sha256_digest(&raw), digest, "{repo}{reference}");
        }
        for method in [Method::GET, Method::HEAD] {
            let url = format!("{}/v2/{repo}/manifests/{tag}", nginx.url());
            let (status, h, body) = request(method.clone(), &url).await;
            assert_eq!(status, StatusCode::OK, "{method} {url}");
            assert_eq!(
                header(&h, "docker-content-digest"),
                digest,
                "{method} {url}"
            );
            assert_eq!(header(&h, "content-type"), m.media_type, "{method} {url}");
            assert_eq!(header(&h, "content-length"), m.bytes.len().to_string());
            assert_eq!(
                header(&h, "docker-distribution-api-version"),
                "registry/2.0"
            );
            if method == Method::GET {
                assert_eq!(body, m.bytes);
            }
        }
    }
    // Index children by digest too.
    for m in fx.manifests.iter().filter(|m| m.tags.is_empty()) {
        let url = format!("{}/v2/{}/manifests/{}", nginx.url(), m.repo, m.digest);
        let (status, h, body) = request(Method::GET, &url).await;
        assert_eq!(status, StatusCode::OK, "{url}");
        assert_eq!(header(&h, "content-type"), m.media_type, "{url}");
        assert_eq!(body, m.bytes, "{url}");
    }

    // Whole images copy out with skopeo (foreign layers live at FOREIGN_URL, not here).
    let dest = tempfile::tempdir().unwrap();
    for repo in fx.repos().iter().filter(|r| *r != "foreign/win") {
        let tag = &fx.tags(repo)[0];
        let out = format!(
            "oci:{}/{}:{tag}",
            dest.path().display(),
            repo.replace('/', "_")
        );
        skopeo_blocking(vec![
            "copy".into(),
            "--all".into(),
            "--src-tls-verify=false".into(),
            format!("docker://{addr}/{repo}:{tag}"),
            out,
        ])
        .await;
    }
    assert!(!config.contains(FOREIGN_URL));
}

both_fronts!(blobs_support_range_and_stay_in_their_repository);
async fn blobs_support_range_and_stay_in_their_repository(kind: Kind) {
    let (fx, root) = fetched_store().await;
    let nginx = Front::start(kind, root.path(), &[]);
    let base = &fx.base_layer;
    let bytes = fx.blob(base);
    let url = format!("{}/v2/apps/web/blobs/{base}", nginx.url());
    let (status, h, body) = request(Method::GET, &url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, bytes);
    assert_eq!(header(&h, "docker-content-digest"), base.as_str());
    assert_eq!(header(&h, "content-type"), "application/octet-stream");

    let resp = reqwest::Client::new()
        .get(&url)
        .header("Range", "bytes=10-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &bytes[10..]);

    // The base layer is not part of a/b/c: a repository serves only its own blobs.
    let other = format!("{}/v2/a/b/c/blobs/{base}", nginx.url());
    let (status, _, body) = request(Method::GET, &other).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "BLOB_UNKNOWN");
}

pub fn error_code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    v["errors"][0]["code"].as_str().unwrap().to_owned()
}

both_fronts!(tags_catalog_and_referrers_match_the_store);
async fn tags_catalog_and_referrers_match_the_store(kind: Kind) {
    let (fx, root) = fetched_store().await;
    let nginx = Front::start(kind, root.path(), &[]);
    let get_json = |path: String| {
        let url = format!("{}{path}", nginx.url());
        async move {
            let (status, h, body) = request(Method::GET, &url).await;
            assert_eq!(status, StatusCode::OK, "{url}");
            (
                header(&h, "content-type").to_owned(),
                serde_json::from_slice::<Value>(&body).unwrap(),
            )
        }
    };
    let (ct, catalog) = get_json("/v2/_catalog".into()).await;
    assert_eq!(ct, "application/json");
    assert_eq!(catalog, json!({ "repositories": fx.repos() }));
    for repo in fx.repos() {
        let (_, tags) = get_json(format!("/v2/{repo}/tags/list")).await;
        assert_eq!(tags, json!({ "name": repo, "tags": fx.tags(&repo) }));
    }
    let (ct, referrers) = get_json(format!("/v2/apps/web/referrers/{}", fx.artifact_subject)).await;
    assert_eq!(ct, OCI_INDEX);
    assert_eq!(referrers["manifests"][0]["digest"], fx.artifact.as_str());
    assert_eq!(
        referrers["manifests"][0]["artifactType"],
        SBOM_ARTIFACT_TYPE
    );
    // A manifest nothing refers to has an empty referrers index, not an error.
    let api = &fx.manifest("apps/api", "v1").digest;
    let (ct, empty) = get_json(format!("/v2/apps/api/referrers/{api}")).await;
    assert_eq!(ct, OCI_INDEX);
    assert_eq!(empty["manifests"], json!([]));
}

both_fronts!(errors_are_oci_json_with_the_right_status_and_code);
async fn errors_are_oci_json_with_the_right_status_and_code(kind: Kind) {
    let (fx, root) = fetched_store().await;
    let nginx = Front::start(kind, root.path(), &[]);
    let unknown = format!("sha256:{}", "0".repeat(64));
    let cases = [
        ("/v2/apps/web/manifests/nope", 404, "MANIFEST_UNKNOWN"),
        (
            &format!("/v2/apps/web/manifests/{unknown}") as &str,
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            &format!("/v2/apps/web/blobs/{unknown}"),
            404,
            "BLOB_UNKNOWN",
        ),
        // A blob digest is not a manifest.
        (
            &format!("/v2/apps/web/manifests/{}", fx.base_layer),
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("/v2/no/such/manifests/1", 404, "NAME_UNKNOWN"),
        ("/v2/no/such/tags/list", 404, "NAME_UNKNOWN"),
        (&format!("/v2/no/such/blobs/{unknown}"), 404, "NAME_UNKNOWN"),
        ("/v2/apps/web/manifests/sha256:abc", 400, "DIGEST_INVALID"),
        ("/v2/apps/web/blobs/md5:abc", 400, "DIGEST_INVALID"),
        ("/v2/Apps/Web/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/apps/-web/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/apps/web_/blobs/sha256:abc", 400, "NAME_INVALID"),
    ];
    for (path, status, code) in cases {
        let url = format!("{}{path}", nginx.url());
        let (got, h, body) = request(Method::GET, &url).await;
        assert_eq!(
            got.as_u16(),
            status,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(header(&h, "content-type"), "application/json", "{path}");
        assert_eq!(error_code(&body), code, "{path}");
    }
    for method in [Method::PUT, Method::POST, Method::PATCH, Method::DELETE] {
        for path in [
            "/v2/",
            "/v2/apps/web/manifests/v1",
            "/v2/apps/web/blobs/uploads/",
        ] {
            let url = format!("{}{path}", nginx.url());
            let (got, h, body) = request(method.clone(), &url).await;
            assert_eq!(got, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(header(&h, "allow"), "GET, HEAD", "{method} {path}");
            assert_eq!(error_code(&body), "UNSUPPORTED", "{method} {path}");
        }
    }
}

both_fronts!(name_prefix_serves_the_same_images);
async fn name_prefix_serves_the_same_images(kind: Kind) {
    let (fx, root) = fetched_store().await;
    if kind == Kind::Serve {
        let front = Front::start(kind, root.path(), &["--name-prefix", "mirror/hub"]);
        return name_prefix_checks(&fx, &front).await;
    }
    let root_path = root.path().to_str().unwrap().to_owned();
    let (config, _) = gen_conf(
        root.path(),
        &[
            "--name-prefix",
            "mirror/hub",
            "--server-root",
            "$registry_root",
        ],
    );
    assert!(
        !config.contains(&root_path),
        "the variable replaces the path"
    );
    // After the generated maps: nginx wants map_hash_* set before the first map.
    let config = format!("{config}\nmap $host $registry_root {{ default \"{root_path}\"; }}\n");
    let nginx = Front::Nginx(serve(&config));
    name_prefix_checks(&fx, &nginx).await;
}

async fn name_prefix_checks(fx: &Fixtures, nginx: &Front) {
    let addr = nginx.addr();

    let web = fx.manifest("oci/multi", "1.0");
    let target = format!("docker://{addr}/mirror/hub/oci/multi:1.0");
    let raw =
        tokio::task::spawn_blocking(move || skopeo_inspect_raw(&target, &["--tls-verify=false"]))
            .await
            .unwrap();
    assert_eq!(sha256_digest(&raw), web.digest);
    let dest = tempfile::tempdir().unwrap();
    skopeo_blocking(vec![
        "copy".into(),
        "--all".into(),
        "--src-tls-verify=false".into(),
        format!("docker://{addr}/mirror/hub/apps/api:v1"),
        format!("oci:{}/api:v1", dest.path().display()),
    ])
    .await;

    let url = |p: &str| format!("{}{p}", nginx.url());
    let (_, _, body) = request(Method::GET, &url("/v2/_catalog")).await;
    let names: Vec<String> = fx
        .repos()
        .iter()
        .map(|r| format!("mirror/hub/{r}"))
        .collect();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({ "repositories": names })
    );
    let (_, _, body) = request(Method::GET, &url("/v2/mirror/hub/many/tags/tags/list")).await;
    let tags: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        tags,
        json!({ "name": "mirror/hub/many/tags", "tags": fx.tags("many/tags") })
    );
    // Without the prefix the names are unknown.
    let (status, _, body) = request(Method::GET, &url("/v2/apps/api/manifests/v1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "NAME_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread")]
async fn locations_only_drop_into_an_existing_server_block() {
    let (fx, root) = fetched_store().await;
    let (maps, _) = gen_conf(root.path(), &["--maps-only"]);
    let (locations, _) = gen_conf(root.path(), &["--locations-only"]);
    assert!(!maps.contains("server {") && !maps.contains("location ~"));
    assert!(!locations.contains("server {") && !locations.contains("map "));
    let nginx = Nginx::start(&format!(
        "{maps}\nserver {{\n    listen 127.0.0.1:{{{{PORT}}}};\n    location = /healthz {{ return 200 'ok'; }}\n{locations}\n}}\n"
    ));
    let m = fx.manifest("docker/multi", "v1");
    let (status, h, body) = request(
        Method::GET,
        &format!("{}/v2/docker/multi/manifests/v1", nginx.url()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "content-type"), m.media_type);
    assert_eq!(body, m.bytes);
    let (status, _, _) = request(Method::GET, &format!("{}/healthz", nginx.url())).await;
    assert_eq!(status, StatusCode::OK);
}

/// A store edited by hand (or by a malicious upstream, were fetch not to validate):
/// nothing outside the OCI grammar may reach the config or a path.
#[test]
fn hostile_names_and_tags_never_reach_the_config() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let digest = |body: &str| sha256_digest(body.as_bytes());
    let manifest = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":1},"layers":[]}"#;
    let d = digest(manifest);
    let evil_tag = "x\";} location / { root /;";
    let index = |tag: &str, media_type: &str| {
        json!({"schemaVersion": 2, "manifests": [{
            "mediaType": media_type, "digest": d, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }]})
        .to_string()
    };
    fs::write(r.join(".static-registry"), r#"{"format":1}"#).unwrap();
    fs::create_dir_all(r.join("good")).unwrap();
    let oci = "application/vnd.oci.image.manifest.v1+json";
    for (name, tag, media_type) in [
        ("good/repo", "v1", oci),
        ("good/evil-tag", evil_tag, oci),
        ("good/evil-type", "v1", "text/plain\"; } server {"),
        ("Upper/Case", "v1", oci),
        ("semi;colon", "v1", oci),
        ("good/blobs/nested", "v1", oci),
    ] {
        let dir = r.join(name);
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("index.json"), index(tag, media_type)).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        fs::write(dir.join("blobs/sha256").join(&d[7..]), manifest).unwrap();
    }
    let (config, warnings) = gen_conf(r, &[]);
    for bad in [
        evil_tag,
        "text/plain",
        "Upper",
        "semi;colon",
        "good/blobs",
        "good/evil-type@",
    ] {
        assert!(!config.contains(bad), "{bad:?} reached the config");
    }
    for named in [
        "good/evil-tag",
        "good/evil-type",
        "Upper/Case",
        "semi;colon",
        "good/blobs/nested",
    ] {
        assert!(
            warnings.contains(named),
            "no warning names {named}:\n{warnings}"
        );
    }
    assert!(config.contains("\"good/repo:v1\""));
    // And the result is a config nginx accepts.
    drop(serve(&config));
}

/// The container's helper script renders the same config, atomically, from env settings.
#[tokio::test(flavor = "multi_thread")]
async fn container_helper_renders_a_config_nginx_serves() {
    let (fx, root) = fetched_store().await;
    let out_dir = tempfile::tempdir().unwrap();
    let conf = out_dir.path().join("static-registry.conf");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_static-registry"))
        .parent()
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx/static-registry-nginx");
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let mappings = out_dir.path().join("config.json");
    fs::write(&mappings, r#"{"mappings": {"nested": "a/b"}}"#).unwrap();
    let out = crate::harness::run_with_timeout(
        std::process::Command::new(script)
            .args(["start", "true"])
            .env("PATH", path)
            .env("STATIC_REGISTRY_ROOT", root.path())
            .env("STATIC_REGISTRY_LISTEN", LISTEN)
            .env("STATIC_REGISTRY_NAME_PREFIX", "mirror")
            .env("STATIC_REGISTRY_MAPPINGS", &mappings)
            .env("STATIC_REGISTRY_CONF", &conf),
        std::time::Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nginx = serve(&fs::read_to_string(&conf).unwrap());
    let m = fx.manifest("a/b/c", "1");
    let (status, _, body) = request(
        Method::GET,
        &format!("{}/v2/mirror/a/b/c/manifests/1", nginx.url()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, m.bytes);
    let (status, _, body) = request(
        Method::GET,
        &format!("{}/v2/nested/c/manifests/1", nginx.url()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, m.bytes);
}

both_fronts!(podman_and_containerd_pull);
/// podman and containerd pull every manifest shape (Docker v2s2 and list, OCI manifest
/// and index, nested names) through nginx, by tag and by digest.
async fn podman_and_containerd_pull(kind: Kind) {
    let (fx, root) = fetched_store().await;
    let nginx = Front::start(kind, root.path(), &[]);
    let addr = nginx.addr();
    let images: Vec<String> = [
        ("base/alpine", "latest"),
        ("docker/multi", "v1"),
        ("oci/multi", "1.0"),
        ("a/b/c", "1"),
    ]
    .iter()
    .flat_map(|(repo, tag)| {
        let digest = &fx.manifest(repo, tag).digest;
        [
            format!("{addr}/{repo}:{tag}"),
            format!("{addr}/{repo}@{digest}"),
        ]
    })
    .collect();
    tokio::task::spawn_blocking(move || {
        let podman = tempfile::tempdir().unwrap();
        let containerd = Containerd::start();
        for image in &images {
            podman_pull(podman.path(), image);
            containerd.pull(image);
        }
    })
    .await
    .unwrap();
}

/// nginx sized the maps too small once ("could not build optimal map_hash" from a few
/// hundred tags on); a store with thousands of tags must pass `nginx -t` without it.
#[test]
fn thousands_of_tags_build_the_maps_without_a_hash_warning() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let tags: Vec<String> = (0..3000).map(|i| format!("t{i:05}")).collect();
    one_manifest_per_tag(r, "bench/big", &tags);
    let (config, _) = gen_conf(r, &[]);
    let prefix = tempfile::tempdir().unwrap();
    let p = prefix.path();
    fs::write(
        p.join("nginx.conf"),
        format!(
            "pid {0}/nginx.pid;\nerror_log {0}/error.log;\nevents {{}}\nhttp {{\n{config}\n}}\n",
            p.display()
        ),
    )
    .unwrap();
    let out = crate::harness::run_with_timeout(
        std::process::Command::new(crate::harness::require_bin("nginx", "nginx"))
            .args(["-t", "-e", "stderr", "-p"])
            .arg(p)
            .arg("-c")
            .arg(p.join("nginx.conf")),
        std::time::Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("map_hash"), "{stderr}");
}

/// nginx compares map keys ignoring case: a store with tags `v1` and `V1` made
/// `nginx -t` fail ("conflicting parameter"), and a request for `LATEST` got `latest`.
/// Tags are case-sensitive.
#[tokio::test(flavor = "multi_thread")]
async fn tags_differing_only_in_case_are_served_apart_and_a_wrongly_cased_tag_is_unknown() {
    let root = crate::harness::served_tempdir("it-store-");
    let r = root.path();
    let tags = ["v1", "V1", "latest", "Release.1"];
    let digests: Vec<(&str, String)> = tags
        .into_iter()
        .zip(one_manifest_per_tag(r, "lab/app.v2", &tags))
        .collect();
    let nginx = serve(&gen_conf(r, &[]).0);
    for (tag, digest) in &digests {
        let url = format!("{}/v2/lab/app.v2/manifests/{tag}", nginx.url());
        let (status, h, _) = request(Method::GET, &url).await;
        assert_eq!(status, StatusCode::OK, "{url}");
        assert_eq!(&header(&h, "docker-content-digest"), digest, "{url}");
    }
    for tag in ["LATEST", "release.1", "Release-1", "ReleaseX1"] {
        let url = format!("{}/v2/lab/app.v2/manifests/{tag}", nginx.url());
        let (status, _, body) = request(Method::GET, &url).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{url}");
        assert!(String::from_utf8_lossy(&body).contains("MANIFEST_UNKNOWN"));
    }
}

/// A store at `root` (made here) whose repository `repo` has one small OCI manifest per
/// tag, written by hand (no registry needed); the manifests' digests, in `tags` order.
pub fn one_manifest_per_tag(root: &Path, repo: &str, tags: &[impl AsRef<str>]) -> Vec<String> {
    fs::write(root.join(".static-registry"), r#"{"format":1}"#).unwrap();
    let dir = root.join(repo);
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut manifests = Vec::new();
    let mut digests = Vec::new();
    for tag in tags {
        let tag = tag.as_ref();
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"x","digest":"sha256:{}","size":1}},"layers":[],"annotations":{{"tag":"{tag}"}}}}"#,
            "1".repeat(64)
        );
        let digest = sha256_digest(body.as_bytes());
        fs::write(dir.join("blobs/sha256").join(&digest[7..]), &body).unwrap();
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": body.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }));
        digests.push(digest);
    }
    fs::write(
        dir.join("index.json"),
        json!({"schemaVersion": 2, "manifests": manifests}).to_string(),
    )
    .unwrap();
    digests
}

both_fronts!(a_tampered_store_and_hostile_urls_get_json_errors_and_leak_nothing);
/// A tampered store served blobs through symbolic links (any file the workers could
/// read), and URLs nginx refuses early or outside /v2/ got its HTML pages. Every answer
/// is now OCI JSON, nothing outside the store leaks, and verify finds and repair removes
/// the links (the next fetch restores the blob).
async fn a_tampered_store_and_hostile_urls_get_json_errors_and_leak_nothing(kind: Kind) {
    let (reg, fx, root) = registry_with_fixtures().await;
    let r = root.path();
    let image = format!("{}/base/alpine:latest", reg.addr());
    fetch_ok(r, std::slice::from_ref(&image));
    let outside = crate::harness::served_tempdir("it-outside-");
    let secret = outside.path().join("secret");
    fs::write(&secret, "TOP-SECRET-OUTSIDE-THE-STORE").unwrap();
    let m = fx.manifest("base/alpine", "latest");
    let blob = m.blobs.last().unwrap();
    let layout_blob = crate::harness::store::repo_blob(r, "base/alpine", blob);
    fs::remove_file(&layout_blob).unwrap();
    std::os::unix::fs::symlink(&secret, &layout_blob).unwrap();
    let fake = "f".repeat(64);
    std::os::unix::fs::symlink(&secret, r.join("base/alpine/blobs/sha256").join(&fake)).unwrap();
    std::os::unix::fs::symlink(r.join("base/alpine"), r.join("base/linked")).unwrap();

    let nginx = Front::start(kind, r, &[]);
    let probes = [
        format!("/v2/base/alpine/blobs/{blob}"),
        format!("/v2/base/alpine/blobs/sha256:{fake}"),
        format!("/v2/base/linked/blobs/{blob}"),
        "/v2/base/linked/tags/list".to_owned(),
        // "/" is the catalog page now; a symlinked repository has none.
        "/r/base/linked/".to_owned(),
        "/index.html".to_owned(),
        "/v2".to_owned(),
        "/.static-registry".to_owned(),
        "/base/alpine/index.json".to_owned(),
        "/v2/%2e%2e/%2e%2e/etc/passwd".to_owned(),
        "/v2/base/../../etc/passwd".to_owned(),
        "/v2/.v2/_catalog.json".to_owned(),
        "/v2/base/alpine/../../.blobs/sha256/x".to_owned(),
        "/v2/base/alpine/manifests/..%2f..%2f".to_owned(),
        "/v2/base/alpine/manifests/%00".to_owned(),
        "/v2/base/alpine/manifests/x.html".to_owned(),
        "/v2/base/alpine/blobs/sha256:%2e%2e".to_owned(),
        "/v2/base/alpine/blobs/sha256:ABC".to_owned(),
        format!("/_sr/blob/base/alpine/{}", &blob[7..]),
    ];
    for path in &probes {
        let url = format!("{}{path}", nginx.url());
        let (status, h, body) = request(Method::GET, &url).await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            [400, 403, 404].contains(&status.as_u16()),
            "{path}: {status} {text}"
        );
        assert_eq!(header(&h, "content-type"), "application/json", "{path}");
        let json: Value =
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
        assert!(json["errors"][0]["code"].is_string(), "{path}: {text}");
        assert!(!text.contains("TOP-SECRET"), "{path} leaked: {text}");
    }

    let out = static_registry(&["verify", "--root", r.to_str().unwrap()]);
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("3 symbolic links in the store"), "{report}");
    let out = static_registry(&["verify", "--root", r.to_str().unwrap(), "--repair"]);
    let repaired =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(secret.exists(), "repair removed the link's target");
    assert!(
        !layout_blob.exists() || !layout_blob.is_symlink(),
        "{repaired}"
    );
    fetch_ok(r, &[image]);
    crate::harness::store::assert_verify_clean(r, "after repair and a fetch");
}

/// `--tls-cert`/`--tls-key`: HTTPS with HTTP/2 (curl), skopeo pulls trusting the CA
/// through `--cert-dir`, and `--tls-redirect-from` sends plain HTTP to HTTPS.
#[tokio::test(flavor = "multi_thread")]
async fn tls_serves_http2_that_skopeo_pulls_and_redirects_plain_http() {
    let (fx, root) = fetched_store().await;
    let ca = crate::harness::tls::TestCa::new("it gen-conf TLS CA");
    let dir = crate::harness::served_tempdir("it-tls-");
    let (cert, key) = ca.server_cert("localhost").write(dir.path(), "server");
    let certs = dir.path().join("certs.d");
    fs::create_dir(&certs).unwrap();
    let ca_pem = ca.write_pem(&certs.join("ca.crt"));
    let plain = format!("127.0.0.1:{}", crate::harness::free_port());
    let (config, _) = gen_conf(
        root.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-redirect-from",
            &plain,
        ],
    );
    let nginx = Nginx::start(
        &config
            .replace(
                &format!("listen {LISTEN} ssl http2;"),
                "listen 127.0.0.1:{{PORT}} ssl http2;",
            )
            .replace(":65000$request_uri", ":{{PORT}}$request_uri"),
    );
    let port = nginx.addr().rsplit_once(':').unwrap().1.to_owned();
    let curl = |args: &[&str]| {
        let out = crate::harness::run_with_timeout(
            std::process::Command::new(crate::harness::require_bin("curl", "curl"))
                .args(["-sS", "-o", "/dev/null"])
                .args(args),
            std::time::Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let https = format!("https://localhost:{port}/v2/");
    assert_eq!(
        curl(&[
            "--http2",
            "--cacert",
            ca_pem.to_str().unwrap(),
            "-w",
            "%{http_version} %{http_code}",
            &https,
        ]),
        "2 200"
    );
    assert_eq!(
        curl(&[
            "-H",
            "Host: localhost",
            "-w",
            "%{http_code} %{redirect_url}",
            &format!("http://{plain}/v2/"),
        ]),
        format!("301 {https}")
    );
    let image = format!("docker://localhost:{port}/base/alpine:latest");
    let cert_dir = certs.to_str().unwrap().to_owned();
    let raw =
        tokio::task::spawn_blocking(move || skopeo_inspect_raw(&image, &["--cert-dir", &cert_dir]))
            .await
            .unwrap();
    assert_eq!(
        sha256_digest(&raw),
        fx.manifest("base/alpine", "latest").digest
    );
}

both_fronts!(pull_auth_refuses_strangers_and_lets_users_pull);
/// `--htpasswd`: no, wrong or unknown credentials get 401 with a Basic challenge and an
/// OCI body on every route (nginx answers most routes before its access check, so they
/// sit behind an internal prefix only the checked gate leads to); users pull with skopeo
/// and podman, and the prefix itself is not reachable from outside.
async fn pull_auth_refuses_strangers_and_lets_users_pull(kind: Kind) {
    const USER: &str = "puller";
    const PASSWORD: &str = "pull-only secret";
    let (reg, fx, root) = registry_with_fixtures().await;
    let r = root.path();
    fetch_ok(r, &[format!("{}/oci/multi:1.0", reg.addr())]);
    let dir = crate::harness::served_tempdir("it-htpasswd-");
    let htpasswd = dir.path().join("htpasswd");
    // Cost 4 keeps the tests fast; nginx checks bcrypt through the system's crypt().
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    fs::write(&htpasswd, format!("{USER}:{hash}\n")).unwrap();
    let front = Front::start(kind, r, &["--htpasswd", htpasswd.to_str().unwrap()]);
    let m = fx.manifest("oci/multi", "1.0");
    let http = reqwest::Client::new();
    let send = |method: Method, path: &str, creds: Option<(&str, &str)>| {
        let req = http.request(method, format!("{}{path}", front.url()));
        let req = match creds {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        };
        async move {
            let resp = req.send().await.unwrap();
            let (status, h) = (resp.status(), resp.headers().clone());
            (status, h, resp.bytes().await.unwrap().to_vec())
        }
    };
    let routes = [
        "/v2/".to_owned(),
        "/v2/_catalog".to_owned(),
        "/v2/oci/multi/manifests/1.0".to_owned(),
        format!("/v2/oci/multi/blobs/{}", m.blobs[0]),
        "/v2/oci/multi/tags/list".to_owned(),
        "/v2/no/such/manifests/x".to_owned(),
        "/v2/Bad/manifests/x".to_owned(),
    ];
    for creds in [None, Some((USER, "wrong")), Some(("stranger", PASSWORD))] {
        for (method, path) in routes
            .iter()
            .map(|p| (Method::GET, p.as_str()))
            .chain([(Method::PUT, "/v2/oci/multi/manifests/1.0")])
        {
            let (status, h, body) = send(method.clone(), path, creds).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {creds:?}"
            );
            assert_eq!(
                header(&h, "www-authenticate"),
                "Basic realm=\"static-registry\"",
                "{path}"
            );
            assert_eq!(header(&h, "content-type"), "application/json", "{path}");
            assert_eq!(error_code(&body), "UNAUTHORIZED", "{path}");
        }
    }
    let user = Some((USER, PASSWORD));
    let (status, _, body) = send(Method::GET, "/v2/_catalog", user).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"repositories": ["oci/multi"]})
    );
    let (status, _, body) = send(Method::GET, "/v2/no/such/manifests/x", user).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "NAME_UNKNOWN");
    let (status, _, _) = send(Method::PUT, "/v2/oci/multi/manifests/1.0", user).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    for creds in [None, user] {
        let (status, _, body) = send(Method::GET, "/_sr_auth/v2/_catalog", creds).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{creds:?}");
        assert_eq!(error_code(&body), "NOT_FOUND");
    }

    let addr = front.addr();
    let creds = format!("{USER}:{PASSWORD}");
    let target = format!("docker://{addr}/oci/multi:1.0");
    let raw = tokio::task::spawn_blocking(move || {
        let args = ["inspect", "--raw", "--tls-verify=false", "--creds", &creds];
        skopeo(&[&args[..], &[target.as_str()]].concat()).stdout
    })
    .await
    .unwrap();
    assert_eq!(sha256_digest(&raw), m.digest);
    let image = format!("{addr}/oci/multi:1.0");
    tokio::task::spawn_blocking(move || {
        let state = tempfile::tempdir().unwrap();
        crate::harness::clients::podman_pull_with_args(
            state.path(),
            &["--creds", &format!("{USER}:{PASSWORD}")],
            &image,
        );
    })
    .await
    .unwrap();
}

both_fronts!(access_lets_each_user_pull_only_its_repositories);
/// `--access`: each user pulls the repositories its patterns name (`*` within one path
/// component, `**` anything), gets 403 DENIED for the others (their pages too), and a
/// user the file does not list pulls nothing.
async fn access_lets_each_user_pull_only_its_repositories(kind: Kind) {
    let (reg, _fx, root) = registry_with_fixtures().await;
    let r = root.path();
    fetch_ok(
        r,
        &[
            format!("{}/oci/multi:1.0", reg.addr()),
            format!("{}/apps/web:v1", reg.addr()),
        ],
    );
    let dir = crate::harness::served_tempdir("it-access-");
    let htpasswd = dir.path().join("htpasswd");
    let hash = bcrypt::hash("pw", 4).unwrap();
    fs::write(
        &htpasswd,
        format!("team:{hash}\nci.bot:{hash}\nother:{hash}\n"),
    )
    .unwrap();
    let access = dir.path().join("access.yaml");
    fs::write(&access, "team: [\"oci/*\"]\nci.bot: [\"**\"]\n").unwrap();
    let front = Front::start(
        kind,
        r,
        &[
            "--htpasswd",
            htpasswd.to_str().unwrap(),
            "--access",
            access.to_str().unwrap(),
        ],
    );
    let http = reqwest::Client::new();
    let get = |user: &'static str, path: &'static str| {
        let req = http
            .get(format!("{}{path}", front.url()))
            .basic_auth(user, Some("pw"));
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.bytes().await.unwrap().to_vec())
        }
    };
    let cases: [(&str, &str, u16); 10] = [
        ("team", "/v2/oci/multi/manifests/1.0", 200),
        ("team", "/v2/oci/multi/tags/list", 200),
        ("team", "/v2/apps/web/manifests/v1", 403),
        ("team", "/v2/apps/web/tags/list", 403),
        ("team", "/r/oci/multi/", 200),
        ("team", "/r/apps/web/", 404),
        ("ci.bot", "/v2/apps/web/manifests/v1", 200),
        ("ci.bot", "/r/apps/web/", 200),
        ("other", "/v2/oci/multi/manifests/1.0", 403),
        ("other", "/v2/", 200),
    ];
    for (user, path, want) in cases {
        let (status, body) = get(user, path).await;
        assert_eq!(
            status,
            want,
            "{user} {path}: {}",
            String::from_utf8_lossy(&body)
        );
        if want == 403 {
            assert_eq!(error_code(&body), "DENIED", "{user} {path}");
        }
    }
}
