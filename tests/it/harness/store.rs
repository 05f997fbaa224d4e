//! Independent checks of a store on disk: what any reader (nginx, skopeo) relies on.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use super::fixtures::Fixtures;
use super::registry::Registry;

use super::{run_with_timeout, served_tempdir, sha256_digest};

/// Run the static-registry binary with a timeout (it never needs long on loopback).
pub fn static_registry(args: &[&str]) -> Output {
    run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_static-registry")).args(args),
        Duration::from_secs(120),
    )
}

pub fn pool_path(root: &Path, digest: &str) -> PathBuf {
    root.join(".blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

pub fn repo_blob(root: &Path, repo: &str, digest: &str) -> PathBuf {
    root.join(repo)
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Every pool file hashes to its name; returns the pool's digests.
pub fn assert_pool_verified(root: &Path) -> BTreeSet<String> {
    let mut digests = BTreeSet::new();
    for entry in fs::read_dir(root.join(".blobs/sha256")).expect("pool exists") {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let bytes = fs::read(entry.path()).unwrap();
        assert_eq!(
            sha256_digest(&bytes),
            format!("sha256:{name}"),
            "pool file {name} is corrupt"
        );
        digests.insert(format!("sha256:{name}"));
    }
    digests
}

/// Repositories in the store (directories holding an index.json).
pub fn repos(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .into_iter()
        .filter_entry(|e| !e.file_name().to_string_lossy().starts_with('.') || e.depth() == 0)
    {
        let entry = entry.unwrap();
        if entry.file_name() == "index.json" {
            let dir = entry.path().parent().unwrap().strip_prefix(root).unwrap();
            out.push(dir.to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

/// Tags of a repository's index.json with their digests.
pub fn tags(root: &Path, repo: &str) -> Vec<(String, String)> {
    let index: Value =
        serde_json::from_slice(&fs::read(root.join(repo).join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| {
            let tag = d["annotations"]["org.opencontainers.image.ref.name"].as_str()?;
            Some((tag.to_owned(), d["digest"].as_str().unwrap().to_owned()))
        })
        .collect()
}

/// The invariant a crash must never break: everything every index.json reaches is
/// present in that repository's layout, byte-exact, and is the same inode as the pool
/// copy. Foreign layers (with `urls`) are allowed to be absent.
pub fn assert_consistent(root: &Path) {
    if !root.join(".blobs").exists() {
        // Killed before the store was even created.
        assert!(repos(root).is_empty());
        return;
    }
    assert_pool_verified(root);
    for repo in repos(root) {
        let index: Value =
            serde_json::from_slice(&fs::read(root.join(&repo).join("index.json")).unwrap())
                .unwrap();
        for d in index["manifests"].as_array().unwrap() {
            check_descriptor(root, &repo, d);
        }
    }
}

fn check_descriptor(root: &Path, repo: &str, d: &Value) {
    let digest = d["digest"].as_str().unwrap();
    let path = repo_blob(root, repo, digest);
    if d.get("urls").is_some() && !path.exists() {
        return;
    }
    let meta = fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{repo}: {digest} referenced but missing ({e})"));
    assert_eq!(
        meta.len(),
        d["size"].as_u64().unwrap(),
        "{repo}: {digest} size"
    );
    let pool = fs::metadata(pool_path(root, digest)).unwrap();
    assert_eq!(
        meta.ino(),
        pool.ino(),
        "{repo}: {digest} is not linked to the pool"
    );
    let media_type = d["mediaType"].as_str().unwrap_or_default();
    if media_type.contains("manifest") || media_type.contains("index") {
        let body: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let children = body["manifests"]
            .as_array()
            .into_iter()
            .chain(body["layers"].as_array())
            .flatten()
            .chain(body.get("config"));
        for child in children {
            check_descriptor(root, repo, child);
        }
    }
}

/// No partial downloads left behind.
pub fn assert_no_partials(root: &Path) {
    let left: Vec<_> = fs::read_dir(root.join(".tmp"))
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "partial files left in .tmp: {left:?}");
}

/// Every tag of the fixture set as `host/repo:tag`.
pub fn all_tag_refs(reg: &Registry, fx: &Fixtures) -> Vec<String> {
    fx.all_refs()
        .into_iter()
        .map(|(repo, tag, _)| format!("{}/{repo}:{tag}", reg.addr()))
        .collect()
}

/// Run the binary: (exit code, stdout as JSON or Null, stderr).
pub fn run(args: &[&str]) -> (i32, Value, String) {
    let out = static_registry(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, stderr)
}

pub fn fetch(root: &Path, refs: &[String], extra: &[&str]) -> (i32, Value, String) {
    let root = root.to_str().unwrap();
    let mut args = vec!["fetch", "--root", root, "--tls-verify=false", "--json"];
    args.extend_from_slice(extra);
    args.extend(refs.iter().map(String::as_str));
    run(&args)
}

/// Sorted tag names of a repository's index.json.
pub fn tag_names(root: &Path, repo: &str) -> Vec<String> {
    let mut t: Vec<String> = tags(root, repo).into_iter().map(|(t, _)| t).collect();
    t.sort();
    t
}

/// Write `body` to `dir/name` (a config file); returns the path as an argument.
pub fn write_file(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A registry holding the fixture set, and an empty store root.
pub async fn registry_with_fixtures() -> (Registry, Fixtures, tempfile::TempDir) {
    let reg = Registry::start();
    let fx = Fixtures::push(&reg).await;
    (reg, fx, served_tempdir("it-store-"))
}

pub fn fetch_ok(root: &Path, refs: &[String]) -> Value {
    let (code, json, stderr) = fetch(root, refs, &[]);
    assert_eq!(code, 0, "fetch failed:\n{stderr}");
    json
}

/// `verify` of the store at `root` exits 0 (`when` names the moment, for the message).
pub fn assert_verify_clean(root: &Path, when: &str) {
    let out = static_registry(&["verify", "--root", root.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "verify {when}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `.v2` (catalog, tag lists, referrers) with its bytes.
pub fn served_documents(root: &Path) -> BTreeMap<String, String> {
    let base = root.join(".v2");
    walkdir::WalkDir::new(&base)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(&base).unwrap();
            (
                rel.to_string_lossy().into_owned(),
                fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect()
}
