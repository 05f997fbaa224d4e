//! Proves the harness itself works, so failures elsewhere point at the crate.

use crate::harness::fixtures::{self, ACCEPT_ALL, BASE_REPOS, Fixtures};
use crate::harness::nginx::Nginx;
use crate::harness::registry::Registry;
use crate::harness::skopeo::inspect_raw_insecure;
use crate::harness::{require_bin, run_with_timeout, sha256_digest};

#[tokio::test(flavor = "multi_thread")]
async fn registry_access_log_counts_requests() {
    let reg = Registry::start();
    // Startup probes are harness traffic and must not be counted.
    assert!(reg.requests().is_empty(), "{:?}", reg.requests());

    let digest = reg.push_blob("self/test", b"hello blob").await;
    assert_eq!(digest, sha256_digest(b"hello blob"));
    assert!(reg.blob_exists("self/test", &digest).await);
    assert_eq!(reg.count("POST", "/v2/self/test/blobs/uploads/"), 1);
    assert_eq!(reg.count("PUT", "/v2/self/test/blobs/uploads/"), 1);
    assert_eq!(reg.count("HEAD", &digest), 1);

    reg.mark();
    assert_eq!(
        reg.count("HEAD", &digest),
        0,
        "mark() hides earlier requests"
    );
    let missing = sha256_digest(b"never pushed");
    assert!(!reg.blob_exists("self/test", &missing).await);
    let entries = reg.entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].method, "HEAD");
    assert_eq!(entries[0].status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn fixtures_push_and_read_back_with_skopeo() {
    let reg = Registry::start();
    let fx = Fixtures::push(&reg).await;

    // Shared base layer really is shared by exactly the three base repos.
    for repo in fx.repos() {
        let has = fx.repo_blobs(&repo).contains(&fx.base_layer);
        assert_eq!(has, BASE_REPOS.contains(&repo.as_str()), "{repo}");
    }

    // Every tag the fixtures describe exists, nothing more.
    for repo in fx.repos() {
        let mut tags = reg.tags(&repo).await;
        tags.sort();
        assert_eq!(tags, fx.tags(&repo), "tags of {repo}");
    }
    assert_eq!(fx.tags("many/tags").len(), 56);

    // The registry serves every tag's manifest byte for byte.
    for (repo, tag, digest) in fx.all_refs() {
        let resp = reg
            .http()
            .get(format!("{}/v2/{repo}/manifests/{tag}", reg.url()))
            .header("Accept", ACCEPT_ALL)
            .send()
            .await
            .expect("GET manifest");
        assert_eq!(resp.status(), 200, "{repo}:{tag}");
        let m = fx.manifest(&repo, &tag);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            m.media_type,
            "{repo}:{tag}"
        );
        let body = resp.bytes().await.expect("manifest body");
        assert_eq!(sha256_digest(&body), digest, "{repo}:{tag}");
    }

    // distribution 2.8 quirk that tests of the fetcher rely on: without an
    // explicit Accept, OCI content is a 404 and Docker v2s2 is down-converted
    // to schema1 (different digest).
    let resp = reg
        .http()
        .get(format!("{}/v2/oci/multi/manifests/1.0", reg.url()))
        .send()
        .await
        .expect("GET without Accept");
    assert_eq!(resp.status(), 404);

    reg.mark();
    let index = fx.manifest("oci/multi", "1.0");
    assert_eq!(index.media_type, fixtures::OCI_INDEX);
    assert_eq!(index.children.len(), 3);
    let raw = tokio::task::spawn_blocking({
        let addr = reg.addr();
        move || inspect_raw_insecure(&addr, "oci/multi:1.0")
    })
    .await
    .expect("skopeo task");
    assert_eq!(sha256_digest(&raw), index.digest);
    assert_eq!(raw, index.bytes);
    assert!(
        reg.count("GET", "/v2/oci/multi/manifests/1.0") >= 1,
        "{:?}",
        reg.requests()
    );
    assert_eq!(reg.count("PUT", "/v2/"), 0);

    // Docker manifest list and the referrers fallback tag read back verbatim.
    let list = fx.manifest("docker/multi", "v1");
    let addr = reg.addr();
    let raw = tokio::task::spawn_blocking(move || inspect_raw_insecure(&addr, "docker/multi:v1"))
        .await
        .expect("skopeo task");
    assert_eq!(sha256_digest(&raw), list.digest);
    let referrers_tag = fx.artifact_subject.replacen(':', "-", 1);
    let referrers = fx.manifest("apps/web", &referrers_tag);
    assert_eq!(referrers.children, vec![fx.artifact.clone()]);
    let addr = reg.addr();
    let artifact = fx.artifact.clone();
    let raw = tokio::task::spawn_blocking(move || {
        inspect_raw_insecure(&addr, &format!("apps/web@{artifact}"))
    })
    .await
    .expect("skopeo task");
    assert_eq!(raw, fx.by_digest("apps/web", &fx.artifact).bytes);

    // Foreign layer referenced but absent; zstd layer present.
    assert!(!reg.blob_exists("foreign/win", &fx.foreign_layer).await);
    assert!(reg.blob_exists("oci/zstd", &fx.zstd_layer).await);
}

#[test]
fn zstd_fixture_layer_decodes_to_its_diff_id() {
    let fx = Fixtures::get();
    let blob = fx.blob(&fx.zstd_layer).to_vec();
    assert_eq!(&blob[..4], &[0x28, 0xB5, 0x2F, 0xFD], "zstd magic");
    // Cross-check with the reference decoder (.ci/run installs it; missing, the test
    // fails naming the package).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("layer.tar.zst");
    std::fs::write(&path, &blob).expect("write layer");
    let out = run_with_timeout(
        std::process::Command::new(require_bin("zstd", "zstd"))
            .args(["-d", "-c"])
            .arg(&path),
        std::time::Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "zstd -d: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_digest(&out.stdout), fx.zstd_diff_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_serves_a_file() {
    let nginx = tokio::task::spawn_blocking(|| {
        let n =
            Nginx::start("server { listen 127.0.0.1:{{PORT}}; root {{TMP}}/www; location / { } }");
        std::fs::create_dir_all(n.prefix().join("www")).expect("mkdir www");
        std::fs::write(n.prefix().join("www/hello.txt"), b"hi\n").expect("write file");
        n
    })
    .await
    .expect("start nginx");
    let body = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("{}/hello.txt", nginx.url()))
        .send()
        .await
        .expect("GET hello.txt")
        .error_for_status()
        .expect("status")
        .bytes()
        .await
        .expect("body");
    assert_eq!(&body[..], b"hi\n");
    let log = nginx.requests();
    assert!(
        log.iter()
            .any(|e| e.method == "GET" && e.path == "/hello.txt" && e.status == 200),
        "{log:?}"
    );
}

#[test]
#[should_panic(expected = "not found: install it (apt-get install no-such-pkg)")]
fn require_bin_panics_loudly_when_missing() {
    require_bin("it-harness-no-such-binary", "no-such-pkg");
}

#[test]
fn access_log_parser_reads_registry_and_nginx_lines() {
    let text = concat!(
        "time=\"2026-11-25T04:45:32Z\" level=info msg=\"response completed\" http.request.method=GET\n",
        "127.0.0.1 - - [25/Nov/2026:04:45:32 +0000] \"HEAD /v2/a/b/blobs/sha256:ab HTTP/1.1\" 404 93 \"\" \"curl/7.88.1\"\n",
        "127.0.0.1 - - [25/Nov/2026:04:45:33 +0000] \"GET /v2/x/manifests/1?n=2 HTTP/1.1\" 200 - \"-\" \"-\"\n",
    );
    let e = crate::harness::parse_access_log(text);
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(
        (
            e[0].method.as_str(),
            e[0].path.as_str(),
            e[0].status,
            e[0].bytes
        ),
        ("HEAD", "/v2/a/b/blobs/sha256:ab", 404, Some(93))
    );
    assert_eq!(
        (e[1].path.as_str(), e[1].status, e[1].bytes),
        ("/v2/x/manifests/1?n=2", 200, None)
    );
}

#[test]
fn rgw_serves_anonymous_reads_once_allowed() {
    use crate::harness::rgw::{Rgw, object_path};
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    let rgw = Rgw::start();
    rgw.create_bucket("selftest");
    let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let (status, _, resp) = rgw.request(
        true,
        "PUT",
        &object_path("selftest", "a/b"),
        &[
            ("Content-Type", MANIFEST),
            ("x-amz-meta-digest", "sha256:abc"),
        ],
        Some(body),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));

    let header = |h: &[(String, String)], name: &str| {
        h.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in {h:?}"))
    };
    let anon = |method: &str, path: &str, headers: &[(&str, &str)]| {
        rgw.request(false, method, path, headers, None)
    };
    assert_eq!(
        anon("GET", "/selftest/a/b", &[]).0,
        403,
        "private until allowed"
    );

    rgw.allow_anonymous_read("selftest");
    let (status, h, got) = anon("GET", "/selftest/a/b", &[]);
    assert_eq!(status, 200, "{h:?}");
    assert_eq!(got, body);
    assert_eq!(header(&h, "content-type"), MANIFEST);
    assert_eq!(header(&h, "x-amz-meta-digest"), "sha256:abc");
    let (status, h, got) = anon("GET", "/selftest/a/b", &[("Range", "bytes=2-5")]);
    assert_eq!(status, 206, "{h:?}");
    assert_eq!(got, &body[2..6]);
    assert_eq!(
        header(&h, "content-range"),
        format!("bytes 2-5/{}", body.len())
    );
    // Reads only: listing and writes stay denied.
    assert_eq!(anon("GET", "/selftest", &[]).0, 403, "anonymous listing");
    assert_eq!(
        rgw.request(false, "PUT", "/selftest/c", &[], Some(b"x")).0,
        403,
        "anonymous write"
    );

    assert_eq!(
        rgw.objects("selftest"),
        [("a/b".to_string(), body.len() as u64)]
    );
    let (status, h, got) = rgw.get("selftest", "a/b");
    assert_eq!((status, got.as_slice()), (200, &body[..]));
    assert_eq!(header(&h, "x-amz-meta-digest"), "sha256:abc");

    assert!(rgw.endpoint().starts_with("http://127.0.0.1:"));
    assert_eq!(
        rgw.env(),
        [
            ("AWS_ACCESS_KEY_ID", rgw.access_key().to_string()),
            ("AWS_SECRET_ACCESS_KEY", rgw.secret_key().to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
    );
}
