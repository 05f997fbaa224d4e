//! `push` (store → registries) and `copy` (registry → registries) end to end with real
//! docker-registry targets: every tag arrives with the source's digest, a second push
//! only asks, a source blob is read once for all targets, one target failing leaves the
//! others whole, and the overwrite policy does what it says.

use serde_json::Value;

use crate::harness::fault_push::FaultTarget;
use crate::harness::fixtures::{Fixtures, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST};
use crate::harness::registry::Registry;
use crate::harness::store::{all_tag_refs, fetch_ok, registry_with_fixtures, run};
use crate::harness::{free_port, sha256_digest};

async fn empty_registry() -> Registry {
    tokio::task::spawn_blocking(Registry::start).await.unwrap()
}

/// `big/image:1` at a registry: one layer of `mib` MiB plus one (incompressible), so that
/// an upload of it takes several PATCHes.
struct BigImage {
    manifest: Vec<u8>,
    layer: Vec<u8>,
    layer_digest: String,
}

impl BigImage {
    async fn push(src: &Registry, mib: u32) -> BigImage {
        let layer: Vec<u8> = (0..((mib + 1) << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let layer_digest = src.push_blob("big/image", &layer).await;
        let config_digest = src.push_blob("big/image", config).await;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": layer.len()}],
        }))
        .unwrap();
        src.push_manifest("big/image", "1", OCI_MANIFEST, &manifest)
            .await;
        BigImage {
            manifest,
            layer,
            layer_digest,
        }
    }
}

/// A store holding every fixture tag (names without the host), with its source.
async fn fetched_store() -> (Registry, Fixtures, tempfile::TempDir) {
    let (src, fx, root) = registry_with_fixtures().await;
    let refs = all_tag_refs(&src, &fx);
    tokio::task::block_in_place(|| fetch_ok(root.path(), &refs));
    (src, fx, root)
}

fn push(root: &std::path::Path, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec![
        "push",
        "--root",
        root.to_str().unwrap(),
        "--dest-tls-verify=false",
        "--json",
    ];
    args.extend_from_slice(extra);
    tokio::task::block_in_place(|| run(&args))
}

/// `copy SOURCE --to T...` over plain HTTP on both sides, with the JSON summary.
fn copy(source: &str, targets: &[&str]) -> (i32, Value, String) {
    let mut args = vec![
        "copy",
        source,
        "--tls-verify=false",
        "--dest-tls-verify=false",
        "--json",
    ];
    for t in targets {
        args.extend(["--to", t]);
    }
    tokio::task::block_in_place(|| run(&args))
}

/// Every fixture tag at `target` under `prefix`, with the source's digest.
async fn assert_every_tag_arrived(target: &Registry, fx: &Fixtures, prefix: &str) {
    for (repo, tag, digest) in fx.all_refs() {
        let name = format!("{prefix}{repo}");
        assert_eq!(
            target.manifest_digest(&name, &tag).await.as_deref(),
            Some(digest.as_str()),
            "{name}:{tag} at {}",
            target.addr()
        );
    }
}

fn writes(target: &Registry) -> Vec<(String, String)> {
    target
        .requests()
        .into_iter()
        .filter(|(m, _)| !matches!(m.as_str(), "GET" | "HEAD"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn push_sends_every_stored_tag_byte_exact_to_two_registries_and_a_second_push_only_asks() {
    let (_src, fx, root) = fetched_store().await;
    let (a, b) = tokio::join!(empty_registry(), empty_registry());
    let to_a = format!("{}/mirror", a.addr());
    let to_b = b.addr();
    let (code, json, stderr) = push(root.path(), &["--to", &to_a, "--to", &to_b]);
    assert_eq!(code, 0, "{stderr}");
    let tags = fx.all_refs().len();
    for (i, t) in json["targets"].as_array().unwrap().iter().enumerate() {
        assert_eq!(t["copied"], tags, "target {i}: {t}");
        assert_eq!(t["failed"], 0, "target {i}: {t}");
    }
    assert_every_tag_arrived(&a, &fx, "mirror/").await;
    assert_every_tag_arrived(&b, &fx, "").await;
    // Blobs shared by repositories were mounted, not sent again.
    assert!(
        json["targets"][0]["blobs_mounted"].as_u64().unwrap() > 0,
        "{json}"
    );

    a.mark();
    b.mark();
    let (code, json, stderr) = push(root.path(), &["--to", &to_a, "--to", &to_b]);
    assert_eq!(code, 0, "{stderr}");
    for t in json["targets"].as_array().unwrap() {
        assert_eq!(t["unchanged"], tags, "{t}");
    }
    for target in [&a, &b] {
        assert!(writes(target).is_empty(), "{:?}", writes(target));
        // One HEAD per tag, nothing else.
        assert_eq!(target.requests().len(), tags, "{:?}", target.requests());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn push_of_named_images_sends_only_those() {
    let (_src, fx, root) = fetched_store().await;
    let target = empty_registry().await;
    let (code, _, stderr) = push(
        root.path(),
        &["--to", &target.addr(), "oci/multi:1.0", "base/alpine"],
    );
    assert_eq!(code, 0, "{stderr}");
    let digest = |repo: &str, tag: &str| fx.manifest(repo, tag).digest.clone();
    assert_eq!(
        target.manifest_digest("oci/multi", "1.0").await,
        Some(digest("oci/multi", "1.0"))
    );
    assert_eq!(target.manifest_digest("oci/multi", "latest").await, None);
    for tag in fx.tags("base/alpine") {
        assert_eq!(
            target.manifest_digest("base/alpine", &tag).await,
            Some(digest("base/alpine", &tag))
        );
    }
    assert_eq!(target.manifest_digest("apps/web", "v1").await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_unreachable_target_fails_alone_and_is_named() {
    let (_src, fx, root) = fetched_store().await;
    let good = empty_registry().await;
    let dead = format!("127.0.0.1:{}", free_port());
    let (code, json, stderr) = push(
        root.path(),
        &["--to", &dead, "--to", &good.addr(), "--dest-retries=0"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert_every_tag_arrived(&good, &fx, "").await;
    assert_eq!(json["targets"][0]["failed"], fx.all_refs().len(), "{json}");
    assert_eq!(json["targets"][1]["failed"], 0, "{json}");
    assert!(stderr.contains(&format!("-> {dead}/")), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn overwrite_policy_skips_fails_or_replaces_a_tag_pointing_elsewhere() {
    let (src, fx, root) = fetched_store().await;
    let target = empty_registry().await;
    let to = target.addr();
    // base/alpine:3.19 at the target points at another image.
    let other = format!("{}/apps/web:v1", src.addr());
    let moved = format!("{to}/base/alpine:3.19");
    let (code, _, stderr) = copy(&other, &[&moved]);
    assert_eq!(code, 0, "{stderr}");
    let web = fx.manifest("apps/web", "v1").digest.clone();
    let alpine = fx.manifest("base/alpine", "3.19").digest.clone();

    let (code, json, stderr) = push(
        root.path(),
        &["--to", &to, "--overwrite=skip", "base/alpine:3.19"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["images"][0]["status"], "skipped", "{json}");
    assert_eq!(json["images"][0]["existing"], web.as_str(), "{json}");
    assert!(stderr.contains("skipped"), "{stderr}");
    assert_eq!(
        target.manifest_digest("base/alpine", "3.19").await,
        Some(web.clone())
    );

    let (code, json, stderr) = push(
        root.path(),
        &["--to", &to, "--overwrite=fail", "base/alpine:3.19"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(json["images"][0]["status"], "failed", "{json}");
    assert!(stderr.contains("--overwrite=fail"), "{stderr}");
    assert_eq!(
        target.manifest_digest("base/alpine", "3.19").await,
        Some(web)
    );

    let (code, _, stderr) = push(root.path(), &["--to", &to, "base/alpine:3.19"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        target.manifest_digest("base/alpine", "3.19").await,
        Some(alpine)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_reads_each_source_blob_once_for_two_targets() {
    let (src, fx, _root) = registry_with_fixtures().await;
    let (a, b) = tokio::join!(empty_registry(), empty_registry());
    let source = format!("{}/oci/multi:1.0", src.addr());
    let (to_a, to_b) = (
        format!("{}/x/multi", a.addr()),
        format!("{}/y/multi:stable", b.addr()),
    );
    src.mark();
    let (code, json, stderr) = copy(&source, &[&to_a, &to_b]);
    assert_eq!(code, 0, "{stderr}");
    let m = fx.manifest("oci/multi", "1.0");
    assert_eq!(
        a.manifest_digest("x/multi", "1.0").await,
        Some(m.digest.clone())
    );
    assert_eq!(
        b.manifest_digest("y/multi", "stable").await,
        Some(m.digest.clone())
    );
    for blob in &m.blobs {
        assert_eq!(
            src.count("GET", &format!("/blobs/{blob}")),
            1,
            "blob {blob} read other than once: {json}"
        );
    }
}

/// A copy again, with nothing changed: the source answers one HEAD (no manifest is
/// read: a rate-limited registry counts GETs), each target one HEAD, nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_again_sends_one_head_to_the_source_and_one_to_each_target() {
    let (src, _fx, _root) = registry_with_fixtures().await;
    let (a, b) = tokio::join!(empty_registry(), empty_registry());
    let source = format!("{}/oci/multi:1.0", src.addr());
    let (to_a, to_b) = (
        format!("{}/x/multi", a.addr()),
        format!("{}/y/multi:stable", b.addr()),
    );
    let (code, _, stderr) = copy(&source, &[&to_a, &to_b]);
    assert_eq!(code, 0, "{stderr}");
    src.mark();
    a.mark();
    b.mark();
    let (code, json, stderr) = copy(&source, &[&to_a, &to_b]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["targets"][0]["unchanged"], 1, "{json}");
    assert_eq!(json["targets"][1]["unchanged"], 1, "{json}");
    assert_eq!(
        src.requests(),
        [("HEAD".to_owned(), "/v2/oci/multi/manifests/1.0".to_owned())]
    );
    for (target, path) in [
        (&a, "/v2/x/multi/manifests/1.0"),
        (&b, "/v2/y/multi/manifests/stable"),
    ] {
        assert_eq!(target.requests(), [("HEAD".to_owned(), path.to_owned())]);
    }
}

/// `copy --platform` sends the index cut to that platform (a new digest, the source's
/// in the report) and only that platform's manifest and blobs; copied again, it is
/// unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn copy_with_a_platform_sends_the_cut_index_and_only_that_platform() {
    let (src, fx, _root) = registry_with_fixtures().await;
    let target = empty_registry().await;
    let source = format!("{}/oci/multi:1.0", src.addr());
    let to = format!("{}/mirror/multi", target.addr());
    let args = |extra: &[&str]| {
        let mut args = vec![
            "copy",
            source.as_str(),
            "--to",
            to.as_str(),
            "--platform",
            "linux/arm64",
            "--tls-verify=false",
            "--dest-tls-verify=false",
            "--json",
        ];
        args.extend_from_slice(extra);
        tokio::task::block_in_place(|| run(&args))
    };
    let (code, json, stderr) = args(&[]);
    assert_eq!(code, 0, "{stderr}");
    let report = &json["images"][0];
    let upstream = fx.manifest("oci/multi", "1.0").digest.clone();
    assert_eq!(report["upstream_digest"], upstream.as_str(), "{json}");
    let cut = report["digest"].as_str().unwrap().to_owned();
    assert_ne!(cut, upstream);
    assert_eq!(
        target.manifest_digest("mirror/multi", "1.0").await,
        Some(cut.clone())
    );
    let url = format!("{}/v2/mirror/multi/manifests/1.0", target.url());
    let index: Value = target
        .http()
        .get(&url)
        .header(
            reqwest::header::ACCEPT,
            crate::harness::fixtures::ACCEPT_ALL,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kept = index["manifests"].as_array().unwrap();
    assert_eq!(kept.len(), 1, "{index}");
    assert_eq!(kept[0]["platform"]["architecture"], "arm64");
    for other in fx
        .manifest("oci/multi", "1.0")
        .children
        .iter()
        .filter(|c| **c != kept[0]["digest"])
    {
        assert_eq!(target.manifest_digest("mirror/multi", other).await, None);
    }
    target.mark();
    let (code, json, stderr) = args(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["targets"][0]["unchanged"], 1, "{json}");
    assert!(writes(&target).is_empty(), "{:?}", writes(&target));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_larger_than_a_chunk_is_sent_in_chunks_to_every_target() {
    let src = empty_registry().await;
    let big = BigImage::push(&src, 16).await;
    let (manifest, layer_digest) = (big.manifest, big.layer_digest);
    let (a, b) = tokio::join!(empty_registry(), empty_registry());
    let source = format!("{}/big/image:1", src.addr());
    let (to_a, to_b) = (
        format!("{}/big/image", a.addr()),
        format!("{}/big/image", b.addr()),
    );
    let (code, _, stderr) = copy(&source, &[&to_a, &to_b]);
    assert_eq!(code, 0, "{stderr}");
    for target in [&a, &b] {
        assert_eq!(
            target.manifest_digest("big/image", "1").await,
            Some(sha256_digest(&manifest))
        );
        assert!(target.blob_exists("big/image", &layer_digest).await);
        assert!(
            target.count("PATCH", "/blobs/uploads/") >= 2,
            "{:?}",
            target.requests()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_rejecting_manifests_fails_its_images_by_name_and_the_other_target_gets_them() {
    let (_src, fx, root) = fetched_store().await;
    let (good, fault) = tokio::join!(empty_registry(), FaultTarget::start());
    let rejecting = format!("{}/fault/manifest-rejected", fault.addr());
    let (code, json, stderr) = push(
        root.path(),
        &[
            "--to",
            &rejecting,
            "--to",
            &good.addr(),
            "--dest-retries=0",
            "base/alpine:3.19",
            "oci/multi:1.0",
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(json["targets"][0]["failed"], 2, "{json}");
    assert_eq!(json["targets"][1]["copied"], 2, "{json}");
    assert!(
        stderr.contains(&format!("-> {rejecting}/base/alpine:3.19: "))
            && stderr.contains("MANIFEST_INVALID"),
        "{stderr}"
    );
    for (repo, tag) in [("base/alpine", "3.19"), ("oci/multi", "1.0")] {
        assert_eq!(
            good.manifest_digest(repo, tag).await,
            Some(fx.manifest(repo, tag).digest.clone())
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_through_a_chunk_failing_midway_resumes_the_upload_instead_of_restarting_it() {
    let src = empty_registry().await;
    let big = BigImage::push(&src, 16).await;
    let root = crate::harness::served_tempdir("it-store-");
    tokio::task::block_in_place(|| fetch_ok(root.path(), &[format!("{}/big/image:1", src.addr())]));
    let fault = FaultTarget::start().await;
    let to = format!("{}/fault/patch-500-midway", fault.addr());
    let (code, _, stderr) = push(root.path(), &["--to", &to]);
    assert_eq!(code, 0, "{stderr}");
    let stored = fault
        .blob("fault/patch-500-midway/big/image", &big.layer_digest)
        .expect("the layer arrived");
    assert_eq!(sha256_digest(&stored), big.layer_digest);
    let requests = fault.requests();
    let patched: usize = requests
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.body)
        .sum();
    // The failed chunk's kept half is not sent again, nor is anything before it.
    assert!(
        patched < big.layer.len() + static_registry::copy::CHUNK,
        "{patched} bytes PATCHed for a {}-byte layer: {requests:?}",
        big.layer.len()
    );
    assert!(
        requests
            .iter()
            .any(|r| r.method == "GET" && r.path.contains("/blobs/uploads/")),
        "the session's status was never asked: {requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_target_gets_its_chunks_from_a_spool_while_the_other_goes_on() {
    let src = empty_registry().await;
    // Four full chunks: two wait for the slow target in memory, the rest on disk.
    let big = BigImage::push(&src, 4 * (static_registry::copy::CHUNK as u32 >> 20)).await;
    let (fast, slow) = tokio::join!(empty_registry(), FaultTarget::start());
    let source = format!("{}/big/image:1", src.addr());
    let (to_fast, to_slow) = (
        format!("{}/big/image", fast.addr()),
        format!("{}/fault/slow/big/image", slow.addr()),
    );
    src.mark();
    let (code, json, stderr) = copy(&source, &[&to_fast, &to_slow]);
    assert_eq!(code, 0, "{stderr}");
    // The slow target fell more than the in-memory queue behind, so chunks waited for
    // it on disk while the source was read at the fast target's pace.
    assert!(
        json["targets"][1]["bytes_spooled"].as_u64().unwrap() > 0,
        "{json}"
    );
    assert_eq!(
        fast.manifest_digest("big/image", "1").await,
        Some(sha256_digest(&big.manifest))
    );
    let stored = slow
        .blob("fault/slow/big/image", &big.layer_digest)
        .expect("the layer reached the slow target");
    assert_eq!(sha256_digest(&stored), big.layer_digest);
    // Still read once.
    assert_eq!(src.count("GET", &format!("/blobs/{}", big.layer_digest)), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_between_repositories_of_one_registry_mounts_every_blob() {
    let (src, fx, _root) = registry_with_fixtures().await;
    let source = format!("{}/oci/multi:1.0", src.addr());
    let to = format!("{}/promoted/multi:stable", src.addr());
    src.mark();
    let (code, json, stderr) = copy(&source, &[&to]);
    assert_eq!(code, 0, "{stderr}");
    let m = fx.manifest("oci/multi", "1.0");
    assert_eq!(
        src.manifest_digest("promoted/multi", "stable").await,
        Some(m.digest.clone())
    );
    assert_eq!(json["targets"][0]["blobs_mounted"], m.blobs.len(), "{json}");
    let requests = src.requests();
    assert!(
        !requests.iter().any(|(method, path)| method == "PATCH"
            || (method == "PUT" && path.contains("/blobs/uploads/"))
            || (method == "GET" && path.contains("/blobs/"))),
        "blob bytes moved: {requests:?}"
    );
}
