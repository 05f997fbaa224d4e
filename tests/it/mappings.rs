//! `gen-conf --mappings`: stored names served under other names, live upstream mounts
//! (redirect and proxy), virtual hosts, and mirror mode (`?ns=`), through real nginx,
//! docker-registry upstreams and real clients.

use std::fs;
use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::genconf::{gen_conf, header, request, serve};
use crate::harness::clients::{Containerd, podman_pull, podman_pull_with};
use crate::harness::fault::FaultRegistry;
use crate::harness::fixtures::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST};
use crate::harness::registry::Registry;
use crate::harness::skopeo::{skopeo, skopeo_inspect_raw};
use crate::harness::store::{fetch, fetch_ok, registry_with_fixtures, static_registry};
use crate::harness::{served_tempdir, sha256_digest};

fn write_mappings(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `skopeo inspect --raw` of `image` over plain HTTP: its digest.
pub(crate) async fn inspect_digest(image: String) -> String {
    tokio::task::spawn_blocking(move || {
        sha256_digest(&skopeo_inspect_raw(
            &format!("docker://{image}"),
            &["--tls-verify=false"],
        ))
    })
    .await
    .unwrap()
}

/// podman and containerd (plain HTTP) pull `image`, each into a state of its own.
async fn podman_and_containerd_pull(image: String) {
    tokio::task::spawn_blocking(move || {
        let podman = tempfile::tempdir().unwrap();
        podman_pull(podman.path(), &image);
        Containerd::start().pull(&image);
    })
    .await
    .unwrap();
}

async fn get_with_host(url: &str, host: &str) -> (StatusCode, Vec<u8>) {
    let resp = reqwest::Client::new()
        .get(url)
        .header("host", host)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.bytes().await.unwrap().to_vec())
}

/// collage's config.json shape, unchanged: a stored namespace served under another name
/// (no copy), a live upstream mount answered with redirects that skopeo and podman
/// follow, and a virtual host with its own `/` mapping chosen by Host.
#[tokio::test(flavor = "multi_thread")]
async fn collage_mappings_serve_stored_names_redirect_to_upstreams_and_pick_vhosts() {
    let (reg, fx, root) = registry_with_fixtures().await;
    fetch_ok(
        root.path(),
        &[
            format!("{}/base/alpine:latest", reg.addr()),
            format!("{}/oci/multi:1.0", reg.addr()),
        ],
    );
    let dir = served_tempdir("it-mappings-");
    let file = write_mappings(
        dir.path(),
        "config.json",
        &json!({
            "mappings": {
                "mirror": "base",
                "live": format!("http://{}/docker", reg.addr()),
            },
            "vhosts": {"oci.example": {"mappings": {"/": "oci"}}}
        })
        .to_string(),
    );
    let (config, warnings) = gen_conf(root.path(), &["--mappings", &file]);
    assert!(!warnings.contains("warning"), "{warnings}");
    let nginx = serve(&config);
    let addr = nginx.addr();

    // Stored, under the mapped name and its own.
    let alpine = &fx.manifest("base/alpine", "latest").digest;
    assert_eq!(
        &inspect_digest(format!("{addr}/mirror/alpine:latest")).await,
        alpine
    );
    assert_eq!(
        &inspect_digest(format!("{addr}/base/alpine:latest")).await,
        alpine
    );
    let (status, _, body) = request(
        Method::GET,
        &format!("{}/v2/mirror/alpine/tags/list", nginx.url()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"name": "mirror/alpine", "tags": ["latest"]})
    );
    let (_, _, body) = request(Method::GET, &format!("{}/v2/_catalog", nginx.url())).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"repositories": ["base/alpine", "mirror/alpine", "oci/multi"]})
    );

    // The live mount: a 307 to the upstream's own URL, which clients follow.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects
        .get(format!("{}/v2/live/multi/manifests/v1", nginx.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        header(resp.headers(), "location"),
        format!("http://{}/v2/docker/multi/manifests/v1", reg.addr())
    );
    let multi = fx.manifest("docker/multi", "v1").digest.clone();
    assert_eq!(inspect_digest(format!("{addr}/live/multi:v1")).await, multi);
    podman_and_containerd_pull(format!("{addr}/live/multi:v1")).await;
    // Neither stored nor mounted.
    let (status, _, body) = request(
        Method::GET,
        &format!("{}/v2/elsewhere/x/manifests/v1", nginx.url()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("NAME_UNKNOWN"));

    // The virtual host maps `/` onto the stored namespace `oci`; other hosts do not.
    let url = format!("{}/v2/multi/manifests/1.0", nginx.url());
    let (status, body) = get_with_host(&url, "oci.example").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha256_digest(&body), fx.manifest("oci/multi", "1.0").digest);
    let (status, _) = get_with_host(&url, "unknown.example").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = get_with_host(&format!("{}/v2/_catalog", nginx.url()), "oci.example").await;
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"repositories": ["base/alpine", "multi", "oci/multi"]})
    );
}

/// Proxy mode: nginx fetches from the upstream and caches by digest, so a second pull
/// asks the upstream at most for the tag, and a pull with the upstream stopped is served
/// from the cache (the tag stale, as `proxy_cache_use_stale` allows).
#[tokio::test(flavor = "multi_thread")]
async fn proxy_mode_serves_a_second_pull_from_its_cache_and_survives_the_upstream_stopped() {
    let (reg, fx, root) = registry_with_fixtures().await;
    fetch_ok(root.path(), &[format!("{}/base/alpine:latest", reg.addr())]);
    let dir = served_tempdir("it-proxy-");
    let file = write_mappings(
        dir.path(),
        "config.json",
        &json!({"mappings": {
            "cache": format!("http://{}/oci", reg.addr()),
            "dcache": format!("http://{}/docker", reg.addr()),
        }})
        .to_string(),
    );
    let cache = dir.path().join("cache");
    let (config, _) = gen_conf(
        root.path(),
        &[
            "--mappings",
            &file,
            "--upstream-mode",
            "proxy",
            "--proxy-cache",
            cache.to_str().unwrap(),
            "--proxy-tag-validity",
            "2s",
        ],
    );
    let nginx = serve(&config);
    let image = format!("docker://{}/cache/multi:1.0", nginx.addr());
    let pull = |n: usize| {
        let image = image.clone();
        let out = dir.path().join(format!("pull-{n}"));
        tokio::task::spawn_blocking(move || {
            skopeo(&[
                "copy",
                "--all",
                "--src-tls-verify=false",
                &image,
                &format!("oci:{}", out.display()),
            ]);
        })
    };
    reg.mark();
    pull(1).await.unwrap();
    let first = reg.requests();
    assert!(!first.is_empty());
    reg.mark();
    pull(2).await.unwrap();
    let second = reg.requests();
    eprintln!(
        "upstream requests: first pull {}, second pull {} ({second:?})",
        first.len(),
        second.len()
    );
    assert!(
        second
            .iter()
            .all(|(_, path)| path.ends_with("/manifests/1.0")),
        "a second pull fetched content by digest again: {second:?}"
    );
    assert!(second.len() <= 1, "{second:?}");
    let blob = fx.repo_blobs("oci/multi").into_iter().next().unwrap();
    let (status, h, _) = request(
        Method::GET,
        &format!("{}/v2/cache/multi/blobs/{blob}", nginx.url()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "x-cache-status"), "HIT");
    assert_eq!(header(&h, "docker-content-digest"), blob);

    podman_and_containerd_pull(format!("{}/cache/multi:1.0", nginx.addr())).await;
    let (_, _, body) = request(
        Method::GET,
        &format!("{}/v2/cache/multi/tags/list", nginx.url()),
    )
    .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["name"],
        "cache/multi"
    );

    // A tag's answer depends on what the client accepts (distribution gives a client
    // that takes no lists one image of a list): cached per Accept, never crossed.
    let list = &fx.manifest("docker/multi", "v1").digest;
    let tag_url = format!("{}/v2/dcache/multi/manifests/v1", nginx.url());
    for (accept, list_expected) in [
        (DOCKER_MANIFEST_LIST, true),
        (DOCKER_MANIFEST, false),
        (DOCKER_MANIFEST_LIST, true),
    ] {
        let resp = reqwest::Client::new()
            .get(&tag_url)
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{accept}");
        let digest = header(resp.headers(), "docker-content-digest").to_owned();
        assert_eq!(&digest == list, list_expected, "{accept}: {digest}");
    }

    drop(reg);
    // Past the tag's validity: nginx would ask again, finds no upstream, serves stale.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    pull(3).await.unwrap();
    let index = fs::read_to_string(dir.path().join("pull-3/index.json")).unwrap();
    assert!(index.contains(&fx.manifest("oci/multi", "1.0").digest));
}

/// Mirror mode: one nginx serves a --keep-host store to containerd as the mirror of two
/// upstream registries (both stopped), choosing by the `ns` containerd sends.
#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_two_upstream_hosts_through_one_nginx_by_ns() {
    let (first, fx, root) = registry_with_fixtures().await;
    let second = Registry::start();
    crate::harness::fixtures::Fixtures::push(&second).await;
    let images = [
        format!("{}/base/alpine:latest", first.addr()),
        format!("{}/oci/multi:1.0", second.addr()),
    ];
    let (code, _, stderr) = fetch(root.path(), &images, &["--keep-host"]);
    assert_eq!(code, 0, "{stderr}");
    let hosts = [first.addr(), second.addr()];
    drop(first);
    drop(second);
    let nginx = serve(&gen_conf(root.path(), &[]).0);

    // Without ns the names are the stored ones; with it, the upstream's.
    let alpine = &fx.manifest("base/alpine", "latest").digest;
    let (status, _, _) = request(
        Method::GET,
        &format!("{}/v2/base/alpine/manifests/latest", nginx.url()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for ns in [hosts[0].clone(), hosts[0].replace(':', "%3A")] {
        let (status, h, _) = request(
            Method::GET,
            &format!("{}/v2/base/alpine/manifests/latest?ns={ns}", nginx.url()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "ns={ns}");
        assert_eq!(&header(&h, "docker-content-digest"), alpine);
    }

    let certs = served_tempdir("it-hosts-");
    for host in &hosts {
        let d = certs.path().join(host);
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join("hosts.toml"),
            format!(
                "server = \"http://{host}\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                nginx.url()
            ),
        )
        .unwrap();
    }
    let pulls = [
        format!("{}/base/alpine:latest", hosts[0]),
        format!("{}/oci/multi:1.0", hosts[1]),
    ];
    let certs_dir = certs.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let containerd = Containerd::start();
        for image in &pulls {
            containerd.pull_via_hosts(&certs_dir, image);
        }
    })
    .await
    .unwrap();
    // podman sends no ns: its mirror names the stored namespace instead.
    let conf = certs.path().join("registries.conf");
    fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"{h}\"\nlocation = \"{h}\"\ninsecure = true\n\n[[registry.mirror]]\nlocation = \"{}/{}\"\ninsecure = true\n",
            nginx.addr(),
            hosts[0].replace(':', "-"),
            h = hosts[0],
        ),
    )
    .unwrap();
    let image = format!("{}/base/alpine:latest", hosts[0]);
    tokio::task::spawn_blocking(move || {
        let podman = tempfile::tempdir().unwrap();
        podman_pull_with(podman.path(), Some(&conf), &image);
    })
    .await
    .unwrap();
    let asked: Vec<String> = nginx
        .requests()
        .into_iter()
        .filter(|e| e.path.contains("ns="))
        .map(|e| e.path)
        .collect();
    assert!(
        asked
            .iter()
            .any(|p| p.contains("/v2/oci/multi/manifests/1.0?ns=")),
        "{asked:?}"
    );
}

/// A mapping file that tries to inject nginx syntax, climb out with `..` or point at a
/// local file is refused whole, each problem named, and nothing is printed to serve.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_mapping_files_are_refused_before_anything_is_rendered() {
    let root = served_tempdir("it-store-");
    fs::write(root.path().join(".static-registry"), r#"{"format":1}"#).unwrap();
    let dir = served_tempdir("it-mappings-");
    let file = write_mappings(
        dir.path(),
        "evil.json",
        r#"{"mappings": {
            "x; return 200 pwned": "lab",
            "y": "lab/../../../etc",
            "z": "/etc/passwd",
            "w": "http://evil.example/a\"; include /etc/shadow; #"
        }, "vhosts": {"a.example; root /": {"mappings": {}}}}"#,
    );
    let out = static_registry(&[
        "gen-conf",
        "--root",
        root.path().to_str().unwrap(),
        "--mappings",
        &file,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    for named in [
        "x; return 200 pwned",
        "\"y\"",
        "\"z\"",
        "\"w\"",
        "a.example; root /",
    ] {
        assert!(stderr.contains(named), "{named} not named in:\n{stderr}");
    }
    assert!(stderr.contains("5 problems"), "{stderr}");
}

/// A proxied upstream that sends its blobs from storage by redirect (as registries on
/// S3 do): nginx follows it itself, without the registry's credentials, and caches the
/// blob, so the client never sees the storage URL and a second GET is a cache hit.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_mode_follows_blob_storage_redirects_without_credentials_and_caches_them() {
    let fault = FaultRegistry::start().await;
    let (reg, _fx, root) = registry_with_fixtures().await;
    fetch_ok(root.path(), &[format!("{}/base/alpine:latest", reg.addr())]);
    let dir = served_tempdir("it-proxy-");
    fs::write(dir.path().join("creds"), "someone:secret\n").unwrap();
    let file = write_mappings(
        dir.path(),
        "mirror.yaml",
        &format!(
            "serve:\n  upstream-mode: proxy\n  mappings:\n    f:\n      target: http://{}/fault\n      credentials-file: creds\n",
            fault.addr()
        ),
    );
    let cache = dir.path().join("cache");
    let (config, _) = gen_conf(
        root.path(),
        &[
            "--mappings",
            &file,
            "--proxy-cache",
            cache.to_str().unwrap(),
        ],
    );
    let nginx = serve(&config);
    let image = format!("docker://{}/f/redirect-elsewhere:1", nginx.addr());
    let out = dir.path().join("pulled");
    let target = format!("oci:{}", out.display());
    tokio::task::spawn_blocking(move || {
        skopeo(&["copy", "--src-tls-verify=false", &image, &target]);
    })
    .await
    .unwrap();
    let seen = fault.authorization_seen_elsewhere();
    assert!(!seen.is_empty(), "the storage was never asked");
    assert!(seen.iter().all(Option::is_none), "{seen:?}");

    let (_, _, body) = request(
        Method::GET,
        &format!("{}/v2/f/redirect-elsewhere/manifests/1", nginx.url()),
    )
    .await;
    let manifest: Value = serde_json::from_slice(&body).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let (status, h, body) = request(
        Method::GET,
        &format!("{}/v2/f/redirect-elsewhere/blobs/{layer}", nginx.url()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "x-cache-status"), "HIT");
    assert_eq!(header(&h, "docker-content-digest"), layer);
    assert_eq!(sha256_digest(&body), layer);
}
