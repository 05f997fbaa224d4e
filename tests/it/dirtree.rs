//! `import --from-dir-tree`: the old static-registry scripts' image tree (`skopeo copy
//! --format v2s2 ... dir:<tree>/<name>/<tag>`, then `hardlink`) into a store, served with
//! the names and manifests the tree had.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::front::{Front, Kind};
use crate::harness::registry::Registry;
use crate::harness::skopeo::{skopeo, skopeo_inspect_raw};
use crate::harness::store::{assert_verify_clean, registry_with_fixtures, run, tag_names};
use crate::harness::{require_bin, run_with_timeout};

/// Images the old script would have kept: Docker and OCI sources (converted to v2s2),
/// a shared base layer, nested names.
const IMAGES: [(&str, &str); 6] = [
    ("base/alpine", "latest"),
    ("apps/web", "v1"),
    ("apps/api", "v1"),
    ("many/tags", "t001"),
    ("many/tags", "t002"),
    ("a/b/c", "1"),
];

fn skopeo_dir(reg: &Registry, tree: &Path, repo: &str, tag: &str) {
    let dir = tree.join(repo).join(tag);
    fs::create_dir_all(dir.parent().unwrap()).unwrap();
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--format",
        "v2s2",
        &format!("docker://{}/{repo}:{tag}", reg.addr()),
        &format!("dir:{}", dir.display()),
    ]);
}

fn import(root: &Path, tree: &Path) -> (i32, serde_json::Value, String) {
    run(&[
        "import",
        "--root",
        root.to_str().unwrap(),
        "--from-dir-tree",
        tree.to_str().unwrap(),
        "--json",
        "--quiet",
    ])
}

/// The tree imports tag for tag with its manifests byte for byte, every tag pulls
/// through nginx under the old script's name prefix, and a rerun on a grown tree imports
/// only the new tag.
#[tokio::test(flavor = "multi_thread")]
async fn a_skopeo_dir_tree_imports_byte_for_byte_and_serves_the_same_names() {
    let (reg, fx, _) = registry_with_fixtures().await;
    let tree = tempfile::tempdir().unwrap();
    let t = tree.path();
    for (repo, tag) in IMAGES {
        skopeo_dir(&reg, t, repo, tag);
    }
    let out = run_with_timeout(
        Command::new(require_bin("hardlink", "util-linux")).arg(t),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let root = crate::harness::served_tempdir("it-dirtree-");
    let r = root.path();
    let (code, json, stderr) = import(r, t);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["images"].as_array().unwrap().len(), IMAGES.len());
    assert_verify_clean(r, "after the import");
    let front = Front::start(Kind::Nginx, r, &["--name-prefix", "mirror"]);
    for (repo, tag) in IMAGES {
        let kept = fs::read(t.join(repo).join(tag).join("manifest.json")).unwrap();
        let target = format!("docker://{}/mirror/{repo}:{tag}", front.addr());
        let raw = tokio::task::spawn_blocking(move || {
            skopeo_inspect_raw(&target, &["--tls-verify=false"])
        })
        .await
        .unwrap();
        assert_eq!(raw, kept, "{repo}:{tag}");
        assert!(tag_names(r, repo).contains(&tag.to_owned()));
    }
    // Every blob of the tree is in the pool, once, however many images hold it (the
    // pool's other files are the images' manifests).
    let pool: std::collections::BTreeSet<String> =
        walk_files(&r.join(".blobs/sha256")).into_iter().collect();
    let blobs: std::collections::BTreeSet<String> = walk_files(t)
        .into_iter()
        .filter(|name| name.len() == 64)
        .collect();
    assert!(blobs.is_subset(&pool));
    assert!(pool.len() <= blobs.len() + IMAGES.len(), "{pool:?}");

    skopeo_dir(&reg, t, "many/tags", "t003");
    let (code, json, stderr) = import(r, t);
    assert_eq!(code, 0, "{stderr}");
    let statuses: Vec<&str> = json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == "copied").count(),
        1,
        "{json}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == "unchanged").count(),
        IMAGES.len()
    );

    // The migration's next step: fetch takes a repository over from its registry (one
    // whose manifest skopeo converted, so the fetch publishes upstream's)...
    let (repo, tag) = IMAGES
        .into_iter()
        .find(|(repo, tag)| {
            let kept = fs::read(t.join(repo).join(tag).join("manifest.json")).unwrap();
            crate::harness::sha256_digest(&kept) != fx.manifest(repo, tag).digest
        })
        .expect("v2s2 converted an OCI manifest");
    crate::harness::store::fetch_ok(r, &[format!("{}/{repo}:{tag}", reg.addr())]);
    let upstream = fx.manifest(repo, tag).digest.clone();
    let stored = crate::harness::store::tags(r, repo);
    assert!(stored.contains(&(tag.to_owned(), upstream)), "{stored:?}");
    // ... and the tree no longer overwrites it.
    let (code, json, _) = import(r, t);
    assert_eq!(code, 1);
    let refused = json["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| {
            i["target"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/{repo}:{tag}"))
        })
        .unwrap_or_else(|| panic!("{json}"))
        .clone();
    assert_eq!(refused["status"], "failed");
    assert!(
        refused["error"]
            .to_string()
            .contains("would mix two sources"),
        "{refused}"
    );
}

/// File names of every file below `dir`.
fn walk_files(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            names.extend(walk_files(&path));
        } else {
            names.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    names
}

/// A blob missing, a blob whose bytes are not its name's, a hostile name and a directory
/// without skopeo's `version` file: each is reported, nothing of it is published, and the
/// good images still import.
#[tokio::test(flavor = "multi_thread")]
async fn broken_images_in_a_tree_are_reported_and_nothing_of_them_is_published() {
    let (reg, _fx, _) = registry_with_fixtures().await;
    let tree = tempfile::tempdir().unwrap();
    let t = tree.path();
    for (repo, tag) in [
        ("base/alpine", "latest"),
        ("apps/web", "v1"),
        ("apps/api", "v1"),
    ] {
        skopeo_dir(&reg, t, repo, tag);
    }
    // The image's own (last) layer: the first is the base layer that base/alpine also
    // brings, and once that import has stored it nothing reads the tree's copy.
    let blob_of = |dir: &Path| {
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        let layers = manifest["layers"].as_array().unwrap();
        let digest = layers.last().unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        dir.join(&digest[7..])
    };
    fs::remove_file(blob_of(&t.join("apps/web/v1"))).unwrap();
    let flipped = blob_of(&t.join("apps/api/v1"));
    let mut bytes = fs::read(&flipped).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&flipped, bytes).unwrap();
    let hostile = t.join("Bad_Name/x");
    fs::create_dir_all(&hostile).unwrap();
    fs::copy(
        t.join("base/alpine/latest/manifest.json"),
        hostile.join("manifest.json"),
    )
    .unwrap();
    fs::copy(
        t.join("base/alpine/latest/version"),
        hostile.join("version"),
    )
    .unwrap();
    let unversioned = t.join("no/version/1");
    fs::create_dir_all(&unversioned).unwrap();
    fs::copy(
        t.join("base/alpine/latest/manifest.json"),
        unversioned.join("manifest.json"),
    )
    .unwrap();

    let root = crate::harness::served_tempdir("it-dirtree-broken-");
    let r = root.path();
    let (code, json, stderr) = import(r, t);
    assert_eq!(code, 1, "{stderr}");
    let report = |repo: &str| {
        json["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["target"].as_str().unwrap().contains(&format!("/{repo}:")))
            .unwrap_or_else(|| panic!("no report for {repo}: {json}"))
            .clone()
    };
    assert_eq!(report("base/alpine")["status"], "copied");
    let web = report("apps/web");
    assert_eq!(web["status"], "failed");
    assert!(
        web["error"]
            .to_string()
            .contains("missing from the skopeo dir"),
        "{web}"
    );
    let api = report("apps/api");
    assert_eq!(api["status"], "failed");
    assert!(api["error"].to_string().contains("digest"), "{api}");
    let skipped = json["skipped"].to_string();
    assert!(skipped.contains("Bad_Name"), "{skipped}");
    assert!(skipped.contains("version"), "{skipped}");
    assert!(stderr.contains("skipped"), "{stderr}");
    for repo in ["apps/web", "apps/api", "no/version", "Bad_Name"] {
        let published = r.join(repo).join("index.json").exists() && !tag_names(r, repo).is_empty();
        assert!(!published, "{repo} was published");
    }
    assert_verify_clean(r, "after a partly failed import");
}
