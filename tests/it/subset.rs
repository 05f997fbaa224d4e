//! Mirroring part of an image (some of its platforms) or more of it (what refers to it:
//! signatures, SBOMs), and serving the result through nginx.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::genconf::{gen_conf, serve};
use crate::harness::fault::{FaultRegistry, SIGNATURE_TYPE};
use crate::harness::skopeo::skopeo;
use crate::harness::store::{
    assert_consistent, assert_pool_verified, fetch, pool_path, registry_with_fixtures,
    static_registry, tags,
};
use crate::harness::{require_bin, run_with_timeout};

const UPSTREAM_DIGEST: &str = "io.static-registry.upstream.digest";

fn json_file(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

fn fetch_ok(root: &Path, image: &str, extra: &[&str]) -> (Value, String) {
    let (code, summary, stderr) = fetch(root, &[image.to_owned()], extra);
    assert_eq!(code, 0, "{stderr}");
    (summary["images"][0].clone(), stderr)
}

fn verify_clean(root: &Path) {
    let out = static_registry(&["verify", "--root", root.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `skopeo inspect` (not --raw: it resolves the index for the platform) through nginx.
fn skopeo_inspect_as(arch: &str, image: &str) -> std::process::Output {
    let bin = require_bin("skopeo", "skopeo");
    run_with_timeout(
        Command::new(bin).args([
            "--override-os",
            "linux",
            "--override-arch",
            arch,
            "inspect",
            "--no-creds",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ]),
        std::time::Duration::from_secs(60),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_platform_subset_is_a_cut_index_that_clients_pull_through_nginx() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let root = root.path();
    let image = format!("{}/oci/multi:1.0", reg.addr());
    let upstream = fx.manifest("oci/multi", "1.0").digest.clone();

    let (report, stderr) = fetch_ok(root, &image, &["--platform", "linux/arm64"]);
    let cut = report["digest"].as_str().unwrap().to_owned();
    assert_ne!(cut, upstream);
    assert_eq!(report["upstream_digest"], upstream.as_str());
    assert!(
        stderr.contains(&format!(
            "kept linux/arm64, left out linux/amd64, linux/ppc64le; the stored index is {cut}, \
             not the registry's {upstream}"
        )),
        "{stderr}"
    );
    let index = json_file(&pool_path(root, &cut));
    let children = index["manifests"].as_array().unwrap();
    assert_eq!(children.len(), 1, "{index}");
    assert_eq!(children[0]["platform"]["architecture"], "arm64");
    assert_eq!(index["annotations"][UPSTREAM_DIGEST], upstream.as_str());
    // Only the arm64 image was downloaded.
    let arm = fx.by_digest("oci/multi", children[0]["digest"].as_str().unwrap());
    let expected: BTreeSet<String> = [cut.clone(), arm.digest.clone()]
        .into_iter()
        .chain(arm.blobs.iter().cloned())
        .collect();
    assert_eq!(assert_pool_verified(root), expected);
    assert_eq!(tags(root, "oci/multi"), [("1.0".to_owned(), cut.clone())]);
    verify_clean(root);
    let out = static_registry(&["ls", "--root", root.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["tags"][0]["platforms"], "linux/arm64");
    assert_eq!(listed[0]["tags"][0]["upstream_digest"], upstream.as_str());

    // Warm: the HEAD answers with the upstream digest, which the tag remembers.
    reg.mark();
    let (report, _) = fetch_ok(root, &image, &["--platform", "linux/arm64"]);
    assert_eq!(report["status"], "unchanged");
    assert_eq!(report["digest"], cut.as_str());
    assert_eq!(reg.count("GET", "/v2/"), 0, "{:?}", reg.requests());

    // Served: skopeo resolves arm64 through nginx, and finds no amd64.
    let nginx = serve(&gen_conf(root, &[]).0);
    let served = format!("{}/oci/multi:1.0", nginx.addr());
    let out = tokio::task::spawn_blocking({
        let served = served.clone();
        move || {
            (
                skopeo_inspect_as("arm64", &served),
                skopeo_inspect_as("amd64", &served),
            )
        }
    })
    .await
    .unwrap();
    let (arm_out, amd_out) = out;
    assert!(
        arm_out.status.success(),
        "{}",
        String::from_utf8_lossy(&arm_out.stderr)
    );
    let inspected: Value = serde_json::from_slice(&arm_out.stdout).unwrap();
    assert_eq!(inspected["Architecture"], "arm64");
    for layer in inspected["Layers"].as_array().unwrap() {
        assert!(
            arm.blobs.contains(&layer.as_str().unwrap().to_owned()),
            "{inspected}"
        );
    }
    assert!(!amd_out.status.success(), "amd64 was left out of the cut");
    let dest = tempfile::tempdir().unwrap();
    let dest_arg = format!("oci:{}:x", dest.path().display());
    tokio::task::spawn_blocking(move || {
        skopeo(&[
            "--override-arch",
            "arm64",
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{served}"),
            &dest_arg,
        ])
    })
    .await
    .unwrap();

    // A different platform list is a different cut; no list restores the upstream bytes.
    let (report, _) = fetch_ok(
        root,
        &image,
        &["--platform", "linux/amd64", "--platform", "linux/arm64/v8"],
    );
    assert_eq!(report["status"], "fetched");
    let two = report["digest"].as_str().unwrap();
    assert!(two != cut && two != upstream);
    assert_eq!(
        json_file(&pool_path(root, two))["manifests"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (report, _) = fetch_ok(root, &image, &[]);
    assert_eq!(report["status"], "fetched");
    assert_eq!(report["digest"], upstream.as_str());
    assert!(report.get("upstream_digest").is_none(), "{report}");
    assert_consistent(root);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_without_the_platform_asked_for_fails_naming_what_it_offers() {
    let (reg, _fx, root) = registry_with_fixtures().await;
    let (code, summary, stderr) = fetch(
        root.path(),
        &[format!("{}/oci/multi:1.0", reg.addr())],
        &["--platform", "linux/s390x"],
    );
    assert_eq!(code, 1, "{stderr}");
    let error = summary["images"][0]["error"][0].as_str().unwrap();
    assert!(
        error.ends_with(
            "has none of the platforms asked for (linux/s390x); it offers linux/amd64, \
             linux/arm64/v8, linux/ppc64le"
        ),
        "{error}"
    );
    assert!(!root.path().join("oci/multi/index.json").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_platform_list_cuts_a_docker_manifest_list() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mirror.yaml");
    fs::write(
        &config,
        format!(
            "registries:\n  \"{0}\":\n    tls-verify: false\nimages:\n  - source: {0}/docker/multi\n    tags: [v1]\n    platforms: [linux/amd64]\n",
            reg.addr()
        ),
    )
    .unwrap();
    let out = static_registry(&[
        "fetch",
        "--json",
        "--config",
        config.to_str().unwrap(),
        "--root",
        root.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cut = summary["images"][0]["digest"].as_str().unwrap();
    let list = json_file(&pool_path(root.path(), cut));
    // Still a Docker manifest list, so Docker clients read it as before.
    assert_eq!(
        list["mediaType"],
        fx.manifest("docker/multi", "v1").media_type.as_str()
    );
    assert_eq!(list["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(list["manifests"][0]["platform"]["architecture"], "amd64");
    verify_clean(root.path());
}

/// distribution 2.8 has no referrers API: the SBOM is found through the
/// `sha256-<hex>` tag schema the fixtures push.
#[tokio::test(flavor = "multi_thread")]
async fn referrers_come_through_the_tag_schema_where_the_registry_lacks_the_api() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let root = root.path();
    let image = format!("{}/apps/web:v1", reg.addr());
    let subject = &fx.artifact_subject;
    let schema_tag = subject.replacen(':', "-", 1);

    let (report, _) = fetch_ok(root, &image, &[]);
    assert!(report.get("referrers").is_none());
    assert!(!pool_path(root, &fx.artifact).exists());

    let (report, stderr) = fetch_ok(root, &image, &["--referrers"]);
    assert_eq!(report["referrers"], 1, "{report}\n{stderr}");
    assert!(pool_path(root, &fx.artifact).exists());
    let tagged: Vec<String> = tags(root, "apps/web").into_iter().map(|t| t.0).collect();
    assert_eq!(tagged, [schema_tag.clone(), "v1".to_owned()]);
    let hex = subject.trim_start_matches("sha256:");
    let listed = json_file(&root.join(format!(".v2/apps/web/_referrers/{hex}.json")));
    assert_eq!(listed["manifests"][0]["digest"], fx.artifact.as_str());
    verify_clean(root);

    // Warm: the referrers API is asked again (new signatures appear on old images), the
    // tag schema costs a HEAD; nothing is downloaded.
    reg.mark();
    let (report, _) = fetch_ok(root, &image, &["--referrers"]);
    assert_eq!(report["status"], "unchanged");
    assert!(report.get("referrers").is_none(), "{report}");
    assert_eq!(reg.count("GET", "/manifests/"), 0, "{:?}", reg.requests());
    assert_eq!(reg.count("GET", "/blobs/"), 0, "{:?}", reg.requests());
    assert_eq!(reg.count("HEAD", "/manifests/"), 2, "{:?}", reg.requests());
}

/// The referrers API itself, from the in-process registry (distribution 2.8 lacks it),
/// then served by nginx.
#[tokio::test(flavor = "multi_thread")]
async fn referrers_listed_by_the_api_are_stored_and_served() {
    let reg = FaultRegistry::start().await;
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let (report, stderr) = fetch_ok(
        root,
        &format!("{}/fault/referrers:1", reg.addr()),
        &["--referrers"],
    );
    assert_eq!(report["referrers"], 1, "{report}\n{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let subject = report["digest"].as_str().unwrap();
    let hex = subject.trim_start_matches("sha256:");
    let listed = json_file(&root.join(format!(".v2/fault/referrers/_referrers/{hex}.json")));
    let signature = listed["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(listed["manifests"][0]["artifactType"], SIGNATURE_TYPE);
    // In index.json untagged, so prune keeps it and gen-conf serves it.
    let index = json_file(&root.join("fault/referrers/index.json"));
    assert!(
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["digest"] == signature.as_str()
                && m["annotations"]
                    .get("org.opencontainers.image.ref.name")
                    .is_none()),
        "{index}"
    );
    verify_clean(root);
    let out = static_registry(&["prune", "--root", root.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        pool_path(root, &signature).exists(),
        "prune removed a referrer"
    );

    let nginx = serve(&gen_conf(root, &[]).0);
    let body = reqwest::get(format!(
        "{}/v2/fault/referrers/referrers/{subject}",
        nginx.url()
    ))
    .await
    .unwrap()
    .json::<Value>()
    .await
    .unwrap();
    assert_eq!(body["manifests"][0]["digest"], signature.as_str());
    let raw = tokio::task::spawn_blocking({
        let target = format!("docker://{}/fault/referrers@{signature}", nginx.addr());
        move || {
            skopeo(&[
                "inspect",
                "--raw",
                "--tls-verify=false",
                "--no-creds",
                &target,
            ])
            .stdout
        }
    })
    .await
    .unwrap();
    assert_eq!(crate::harness::sha256_digest(&raw), signature);
}

/// A referrer is checked like any manifest: one whose bytes do not match the digest the
/// referrers list gives fails its image (signatures asked for are never silently
/// dropped), and the other images of the run complete.
#[tokio::test(flavor = "multi_thread")]
async fn a_referrer_with_the_wrong_bytes_fails_its_image_and_only_it() {
    let reg = FaultRegistry::start().await;
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let image = |tag: &str| format!("{}/fault/referrers:{tag}", reg.addr());
    let (code, summary, stderr) = fetch(root, &[image("1"), image("2")], &["--referrers"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(summary["images"][0]["status"], "fetched", "{summary}");
    assert_eq!(summary["images"][1]["status"], "failed", "{summary}");
    let error = summary["images"][1]["error"][0].as_str().unwrap();
    assert!(
        error.contains("hash to") && error.contains("the registry's referrers list"),
        "{error}"
    );
    let tagged: Vec<String> = tags(root, "fault/referrers")
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(tagged, ["1"]);
    verify_clean(root);
}
