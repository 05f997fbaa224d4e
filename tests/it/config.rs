//! `fetch --config` and `plan --config` against the real registry fixtures: both YAML
//! formats, every selector kind, and config errors reported before any request.

use std::path::Path;

use serde_json::Value;

use crate::harness::fault::{FaultRegistry, PAGED_TAGS};
use crate::harness::store::{
    assert_consistent, registry_with_fixtures, run, static_registry, tag_names, write_file,
};

fn fetch_config(config: &str, root: &Path) -> (i32, Value, String) {
    run(&[
        "fetch",
        "--config",
        config,
        "--root",
        root.to_str().unwrap(),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn own_format_selects_by_list_regex_semver_latest_and_digest() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let work = tempfile::tempdir().unwrap();
    let a = reg.addr();
    let web = &fx.manifest("apps/web", "v1").digest;
    let config = write_file(
        work.path(),
        "mirror.yaml",
        &format!(
            r#"
prefix: mirror
registries:
  "{a}": {{tls-verify: false}}
images:
  - source: {a}/many/tags
    target: renamed/many
    allow: ['t00[0-4]']
    deny: ['t003']
  - source: {a}/base/alpine
    semver: ">=3"
  - source: {a}/oci/multi
    tags: ["1.0"]
  - source: {a}/docker/multi
    all-tags: true
    latest: 1
  - source: {a}/apps/web
    digests: ["{web}"]
"#
        ),
    );
    let r = root.path().to_str().unwrap();
    // plan writes nothing and sizes everything.
    let (code, rows, stderr) = run(&["plan", "--config", &config, "--json", "--root", r]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !root.path().join(".static-registry").exists(),
        "plan wrote to the store"
    );
    let rows = rows.as_array().unwrap();
    // many/tags 4, base/alpine 1, oci/multi 1, docker/multi 1, apps/web by digest 1.
    assert_eq!(rows.len(), 8, "{rows:?}");
    assert!(rows.iter().all(|r| r["to_download"].as_u64().unwrap() > 0));

    let (code, summary, stderr) = run(&["fetch", "--config", &config, "--root", r, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(summary["images_failed"], 0);
    assert_eq!(
        tag_names(root.path(), "mirror/renamed/many"),
        ["t000", "t001", "t002", "t004"]
    );
    assert_eq!(tag_names(root.path(), "mirror/base/alpine"), ["3.19"]);
    assert_eq!(tag_names(root.path(), "mirror/oci/multi"), ["1.0"]);
    // docker/multi has one tag, v1: `latest` counts versions, and v1 is 1.0.0.
    assert_eq!(tag_names(root.path(), "mirror/docker/multi"), ["v1"]);
    assert!(
        root.path()
            .join("mirror/apps/web/blobs/sha256")
            .join(&web[7..])
            .is_file()
    );
    assert_consistent(root.path());

    // Once fetched, plan says nothing is left to download.
    let (code, rows, _) = run(&["plan", "--config", &config, "--json", "--root", r]);
    assert_eq!(code, 0);
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["to_download"] == 0),
        "{rows}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_sync_yaml_is_accepted_unchanged() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let work = tempfile::tempdir().unwrap();
    let a = reg.addr();
    let config = write_file(
        work.path(),
        "sync.yml",
        &format!(
            r#"{a}:
  tls-verify: false
  images:
    a/b/c: []
    apps/web:
      - v1
  images-by-tag-regex:
    many/tags: ^t05
  images-by-semver:
    base/alpine: ">= 3.0.0"
"#
        ),
    );
    let (code, _, stderr) = fetch_config(&config, root.path());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(tag_names(root.path(), "a/b/c"), fx.tags("a/b/c"));
    assert_eq!(tag_names(root.path(), "apps/web"), ["v1"]);
    assert_eq!(
        tag_names(root.path(), "many/tags"),
        ["t050", "t051", "t052", "t053", "t054"]
    );
    assert_eq!(tag_names(root.path(), "base/alpine"), ["3.19"]);
    assert_consistent(root.path());
}

#[test]
fn config_errors_name_file_field_and_fix_before_any_request() {
    let work = tempfile::tempdir().unwrap();
    let config = write_file(
        work.path(),
        "bad.yaml",
        r#"
images:
  - source: 127.0.0.1:1/x
    allow: ['(']
  - source: 127.0.0.1:1/y
    semver: "not a range"
    colour: blue
  - source: 127.0.0.1:1/z
    target: ../escape
    tags: ["ok", "bad tag"]
"#,
    );
    let root = work.path().join("root");
    let (code, _, stderr) = fetch_config(&config, &root);
    assert_eq!(code, 2, "{stderr}");
    for needle in [
        "bad.yaml",
        "images[0].allow",
        "images[1]",
        "colour",
        "images[2].target",
        "bad tag",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
    }
    assert!(
        !root.exists(),
        "nothing may be written for an invalid config"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_tag_names_from_upstream_are_dropped_with_a_warning() {
    let reg = FaultRegistry::start().await;
    let work = tempfile::tempdir().unwrap();
    let a = reg.addr();
    let config = write_file(
        work.path(),
        "m.yaml",
        &format!(
            "registries:\n  \"{a}\": {{tls-verify: false}}\nimages:\n  - source: {a}/fault/good\n    all-tags: true\n"
        ),
    );
    let root = work.path().join("root");
    let (code, _, stderr) = fetch_config(&config, &root);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(tag_names(&root, "fault/good"), ["1"]);
    assert!(stderr.contains("ignoring a tag"), "{stderr}");
    assert!(stderr.contains("../../etc"), "{stderr}");
    assert_consistent(&root);
    let config_text =
        String::from_utf8(static_registry(&["gen-conf", "--root", root.to_str().unwrap()]).stdout)
            .unwrap();
    assert!(config_text.contains("\"fault/good:1\""));
    for hostile in [
        "../../etc",
        "location / { root /",
        "line\nbreak",
        ".hidden",
        "{{x}}",
    ] {
        assert!(
            !config_text.contains(hostile),
            "{hostile:?} reached the nginx config"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ls_lists_remote_tags_with_the_same_filters() {
    let (reg, fx, _root) = registry_with_fixtures().await;
    let repo = format!("{}/many/tags", reg.addr());
    let ls = |extra: &[&str]| {
        let mut args = vec!["ls", repo.as_str(), "--tls-verify=false", "--json"];
        args.extend_from_slice(extra);
        let (code, json, stderr) = run(&args);
        assert_eq!(code, 0, "{stderr}");
        json
    };
    let mut all: Vec<String> = serde_json::from_value(ls(&[])).unwrap();
    all.sort();
    assert_eq!(all, fx.tags("many/tags"));
    assert_eq!(
        ls(&["--allow", "t00[0-2]", "--deny", "t001"]),
        serde_json::json!(["t000", "t002"])
    );
    let (code, _, stderr) = run(&["ls", &format!("{repo}:t000"), "--tls-verify=false"]);
    assert_eq!(code, 2, "{stderr}");
}

/// Registries with thousands of tags send them in pages linked by `Link: <…>; rel="next"`.
#[tokio::test(flavor = "multi_thread")]
async fn tag_lists_are_followed_across_pages() {
    let reg = FaultRegistry::start().await;
    let a = reg.addr();
    let (code, listed, stderr) = run(&[
        "ls",
        &format!("{a}/fault/paged"),
        "--tls-verify=false",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(listed.as_array().unwrap().len(), PAGED_TAGS + 1, "{listed}");

    let work = tempfile::tempdir().unwrap();
    let config = write_file(
        work.path(),
        "m.yaml",
        &format!(
            "registries:\n  \"{a}\": {{tls-verify: false}}\nimages:\n  - source: {a}/fault/paged\n    allow: ['t24[5-9]']\n"
        ),
    );
    let root = work.path().join("root");
    let (code, _, stderr) = fetch_config(&config, &root);
    assert_eq!(code, 0, "{stderr}");
    // Only the last page holds these.
    assert_eq!(
        tag_names(&root, "fault/paged"),
        ["t245", "t246", "t247", "t248", "t249"]
    );
}
