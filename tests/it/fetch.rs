//! `static-registry fetch` against a real docker-registry holding the fixture set.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use crate::harness::fixtures::{BASE_REPOS, Fixtures, OCI_INDEX, OCI_MANIFEST, SBOM_ARTIFACT_TYPE};
use crate::harness::registry::Registry;
use crate::harness::skopeo::{skopeo, skopeo_inspect_raw};
use crate::harness::store::{
    all_tag_refs, assert_consistent, assert_no_partials, assert_pool_verified, assert_verify_clean,
    fetch, fetch_ok, pool_path, registry_with_fixtures, repo_blob, served_documents,
    static_registry, tags,
};
use crate::harness::{run_with_timeout, sha256_digest};

#[tokio::test(flavor = "multi_thread")]
async fn fetch_stores_every_fixture_exactly_and_once() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let refs = all_tag_refs(&reg, &fx);

    let summary = fetch_ok(root.path(), &refs);
    assert_eq!(summary["images_failed"], 0);
    assert_eq!(
        summary["images_fetched"].as_u64().unwrap() as usize,
        refs.len()
    );
    assert_consistent(root.path());
    assert_no_partials(root.path());

    // Each tag resolves to exactly the source digest.
    for (repo, tag, digest) in fx.all_refs() {
        let stored: Vec<_> = tags(root.path(), &repo);
        assert!(
            stored.contains(&(tag.clone(), digest.clone())),
            "{repo}:{tag} should be {digest}, index has {stored:?}"
        );
        let m = fx.by_digest(&repo, &digest);
        assert_eq!(
            fs::read(repo_blob(root.path(), &repo, &digest)).unwrap(),
            m.bytes
        );
        // skopeo 1.9 resolves oci: tags only for OCI media types (see the design).
        if m.media_type == OCI_MANIFEST || m.media_type == OCI_INDEX {
            let target = format!("oci:{}/{repo}:{tag}", root.path().display());
            let raw = tokio::task::spawn_blocking(move || skopeo_inspect_raw(&target, &[]))
                .await
                .unwrap();
            assert_eq!(sha256_digest(&raw), digest, "skopeo reads {repo}:{tag}");
        }
        for blob in &m.blobs {
            assert!(
                repo_blob(root.path(), &repo, blob).is_file(),
                "{repo} lacks {blob}"
            );
        }
        for child in &m.children {
            assert!(
                repo_blob(root.path(), &repo, child).is_file(),
                "{repo} lacks {child}"
            );
        }
    }

    // Every blob is stored once: the pool holds exactly the distinct pushed content, and
    // the shared base layer is one inode linked from the pool and each of its 3 repos.
    let pool = assert_pool_verified(root.path());
    let mut expected: BTreeSet<String> = fx.blobs.keys().cloned().collect();
    expected.remove(&fx.foreign_layer);
    expected.extend(fx.manifests.iter().map(|m| m.digest.clone()));
    assert_eq!(pool, expected);
    let base = fs::metadata(pool_path(root.path(), &fx.base_layer)).unwrap();
    assert_eq!(base.nlink(), 1 + BASE_REPOS.len() as u64);
    for repo in BASE_REPOS {
        let linked = fs::metadata(repo_blob(root.path(), repo, &fx.base_layer)).unwrap();
        assert_eq!(linked.ino(), base.ino(), "{repo}");
    }
    for m in &fx.manifests {
        for foreign in &m.foreign_blobs {
            assert!(
                !repo_blob(root.path(), &m.repo, foreign).exists(),
                "{foreign} fetched"
            );
        }
    }

    // `ls --json` lists exactly the fixture tags.
    let out = static_registry(&["ls", "--json", "--root", root.path().to_str().unwrap()]);
    assert!(out.status.success());
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut from_ls: Vec<(String, String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let name = r["name"].as_str().unwrap().to_owned();
            r["tags"].as_array().unwrap().iter().map(move |t| {
                (
                    name.clone(),
                    t["tag"].as_str().unwrap().to_owned(),
                    t["digest"].as_str().unwrap().to_owned(),
                )
            })
        })
        .collect();
    from_ls.sort();
    let mut expected_refs = fx.all_refs();
    expected_refs.sort();
    assert_eq!(from_ls, expected_refs);

    // The documents nginx serves as they are: catalog, tag lists, referrers.
    let served = |p: &str| -> Value {
        serde_json::from_slice(&fs::read(root.path().join(".v2").join(p)).unwrap()).unwrap()
    };
    let repos: Vec<String> = fx.repos();
    assert_eq!(
        served("_catalog.json"),
        serde_json::json!({ "repositories": repos })
    );
    for repo in &repos {
        let tags = served(&format!("{repo}/_tags.json"));
        assert_eq!(
            tags,
            serde_json::json!({ "name": repo, "tags": fx.tags(repo) })
        );
    }
    let referrers = served(&format!(
        "apps/web/_referrers/{}.json",
        &fx.artifact_subject[7..]
    ));
    assert_eq!(referrers["manifests"][0]["digest"], fx.artifact.as_str());
    assert_eq!(
        referrers["manifests"][0]["artifactType"],
        SBOM_ARTIFACT_TYPE
    );

    // A whole image copies out of the layout with a real client.
    let src = format!("oci:{}/oci/multi:1.0", root.path().display());
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = format!("oci:{}/copy:1.0", dst_dir.path().display());
    tokio::task::spawn_blocking(move || skopeo(&["copy", "--all", &src, &dst]))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_refetch_sends_one_head_per_tag_and_no_blob_request() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let refs = all_tag_refs(&reg, &fx);
    fetch_ok(root.path(), &refs);

    reg.mark();
    let summary = fetch_ok(root.path(), &refs);
    assert_eq!(
        summary["images_unchanged"].as_u64().unwrap() as usize,
        refs.len()
    );
    assert_eq!(reg.count("GET", "/blobs/"), 0, "{:?}", reg.requests());
    assert_eq!(reg.count("GET", "/manifests/"), 0, "{:?}", reg.requests());
    assert_eq!(reg.count("HEAD", "/manifests/"), refs.len());
    assert_eq!(reg.count("HEAD", "/blobs/"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_shared_by_three_repos_is_downloaded_once() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let refs: Vec<String> = BASE_REPOS
        .iter()
        .map(|r| format!("{}/{r}:{}", reg.addr(), fx.tags(r)[0]))
        .collect();
    reg.mark();
    fetch_ok(root.path(), &refs);
    assert_eq!(reg.count("GET", &fx.base_layer), 1, "{:?}", reg.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn by_digest_and_failures_are_reported_per_image() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let web = fx.manifest("apps/web", "v1");
    let good = format!("{}/apps/web@{}", reg.addr(), web.digest);
    let missing_tag = format!("{}/apps/web:nope", reg.addr());
    let missing_repo = format!("{}/no/such:1", reg.addr());
    let (code, summary, stderr) = fetch(
        root.path(),
        &[good.clone(), missing_tag.clone(), missing_repo.clone()],
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(summary["images_fetched"], 1, "{stderr}");
    assert_eq!(summary["images_failed"], 2, "{stderr}");
    for bad in [&missing_tag, &missing_repo] {
        let line = stderr
            .lines()
            .find(|l| l.starts_with("error:") && l.contains(bad.as_str()))
            .unwrap_or_else(|| panic!("no error line names {bad}:\n{stderr}"));
        assert!(
            line.contains("MANIFEST_UNKNOWN")
                || line.contains("NAME_UNKNOWN")
                || line.contains("not found"),
            "{line}"
        );
    }
    assert_consistent(root.path());
    // A digest reference stays untagged in the layout but is stored completely.
    assert!(tags(root.path(), "apps/web").is_empty());
    assert!(repo_blob(root.path(), "apps/web", &web.digest).is_file());
    assert!(
        !root.path().join("no/such").exists(),
        "nothing is published for a failed image"
    );

    // Asking again by digest needs no request at all.
    reg.mark();
    let (code, summary, stderr) = fetch(root.path(), &[good], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(summary["images_unchanged"], 1);
    assert!(reg.requests().is_empty(), "{:?}", reg.requests());
}

#[test]
fn bad_references_are_usage_errors_that_name_the_input() {
    let root = tempfile::tempdir().unwrap();
    for bad in ["Foo/bar", "a/../b:1", "x:tag\";}", "x@sha256:abc"] {
        let (code, _, stderr) = fetch(root.path(), &[bad.to_owned()], &[]);
        assert_eq!(code, 2, "{bad}: {stderr}");
        assert!(stderr.contains("invalid"), "{bad}: {stderr}");
    }
    let (code, _, stderr) = fetch(
        root.path(),
        &["ghcr.io/org/app:1".into(), "quay.io/org/app:1".into()],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("ghcr.io/org/app") && stderr.contains("quay.io/org/app"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_fetches_into_one_root_at_once_stay_consistent() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let refs = all_tag_refs(&reg, &fx);
    let run = |refs: &[String]| {
        run_with_timeout(
            Command::new(env!("CARGO_BIN_EXE_static-registry"))
                .args(["fetch", "--quiet", "--tls-verify=false", "--root"])
                .arg(root.path())
                .args(refs),
            Duration::from_secs(120),
        )
    };
    // Overlapping but different orders, so both race for the same blobs and index.json.
    let mut reversed = refs.clone();
    reversed.reverse();
    let outs = std::thread::scope(|s| {
        let a = s.spawn(|| run(&refs));
        let b = s.spawn(|| run(&reversed));
        [a.join().unwrap(), b.join().unwrap()]
    });
    for out in outs {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_consistent(root.path());
    assert_no_partials(root.path());
    for (repo, tag, digest) in fx.all_refs() {
        assert!(tags(root.path(), &repo).contains(&(tag, digest)), "{repo}");
    }
}

/// The test hook that makes `fetch` abort at a named point in the store (see
/// src/crashpoint.rs): `<point>:<n>` dies on the n-th pass, `blob-bytes:<n>` once a blob's
/// writer holds n bytes.
const CRASH_AT: &str = "STATIC_REGISTRY_CRASH_AT";

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_at_any_store_step_leaves_a_verified_store_that_a_rerun_completes() {
    let (reg, fx, complete) = registry_with_fixtures().await;
    let refs = all_tag_refs(&reg, &fx);
    fetch_ok(complete.path(), &refs);
    let complete_pool = assert_pool_verified(complete.path());
    let complete_served = served_documents(complete.path());

    // How often a complete cold run passes each point, from what it stored: every pool
    // file is written once (layers and configs through a .part), every layout file is
    // linked once, and each repository's index is published at least once (publishes
    // are coalesced, so more is timing).
    let manifests: BTreeSet<&String> = fx.manifests.iter().map(|m| &m.digest).collect();
    let links: usize = fx
        .repos()
        .iter()
        .map(|r| {
            fs::read_dir(complete.path().join(r).join("blobs/sha256"))
                .unwrap()
                .count()
        })
        .sum();
    let blobs = complete_pool.len() - manifests.len();
    let repos = fx.repos().len();
    let biggest = fx
        .blobs
        .iter()
        .filter(|(d, _)| **d != fx.foreign_layer)
        .map(|(_, b)| b.len())
        .max()
        .unwrap();
    let mut cases: Vec<Vec<String>> = vec![
        vec!["blob-bytes:1".into()],
        vec![format!("blob-bytes:{}", biggest / 2)],
    ];
    for (point, hits) in [
        ("blob-synced", blobs),
        ("blob-pooled", complete_pool.len()),
        ("repo-linked", links),
        ("index-written", repos),
        ("index-renamed", repos),
        ("tags-written", repos),
    ] {
        // The first, a middle and the last (or a late) pass: different images in flight.
        for n in BTreeSet::from([1, hits.div_ceil(2), hits]) {
            cases.push(vec![format!("{point}:{n}")]);
        }
    }
    // Killed again while the rerun recovers: mid-publish recovery, and a resumed .part.
    cases.push(vec!["index-renamed:1".into(), "tags-written:1".into()]);
    cases.push(vec![
        format!("blob-synced:{}", blobs.div_ceil(2)),
        "blob-synced:1".into(),
    ]);

    // Each case in its own root, a few at a time (each fetch mostly waits on fsync).
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while let Some(kills) = cases.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let root = tempfile::tempdir().unwrap();
                    for at in kills {
                        fetch_killed_at(root.path(), &refs, at);
                        assert_consistent(root.path());
                        assert_verify_clean(root.path(), &format!("after a kill at {at}"));
                    }
                    let summary = fetch_ok(root.path(), &refs);
                    assert_eq!(summary["images_failed"], 0, "after kills at {kills:?}");
                    assert_consistent(root.path());
                    assert_no_partials(root.path());
                    assert_verify_clean(root.path(), &format!("rerun after kills at {kills:?}"));
                    for (repo, tag, digest) in fx.all_refs() {
                        assert!(
                            tags(root.path(), &repo).contains(&(tag, digest)),
                            "{repo} after kills at {kills:?}"
                        );
                    }
                    // No blob stored twice: the pool holds exactly what the complete run holds.
                    assert_eq!(
                        assert_pool_verified(root.path()),
                        complete_pool,
                        "pool after kills at {kills:?}"
                    );
                    assert_eq!(
                        served_documents(root.path()),
                        complete_served,
                        "served documents after kills at {kills:?}"
                    );
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_after_the_index_rename_leaves_served_documents_the_rerun_writes() {
    let (reg, fx, root) = registry_with_fixtures().await;
    // One tag, so the one publish carries the tag list, the catalog entry and a referrer.
    let subject = &fx.artifact_subject[7..];
    let tag = format!("sha256-{subject}");
    let refs = [format!("{}/apps/web:{tag}", reg.addr())];
    fetch_killed_at(root.path(), &refs, "index-renamed:1");
    assert_verify_clean(root.path(), "after a kill at index-renamed:1");
    // The tag is in index.json already, so only the interrupted publish's marker can
    // tell the rerun that the served documents lag.
    let summary = fetch_ok(root.path(), &refs);
    assert_eq!(summary["images_unchanged"], 1);
    let served = served_documents(root.path());
    assert_eq!(served["_catalog.json"], r#"{"repositories":["apps/web"]}"#);
    assert_eq!(
        served["apps/web/_tags.json"],
        format!(r#"{{"name":"apps/web","tags":["{tag}"]}}"#)
    );
    let referrers = &served[&format!("apps/web/_referrers/{subject}.json")];
    assert!(referrers.contains(&fx.artifact), "{referrers}");
    assert_no_partials(root.path());
}

/// The matrix's `blob-bytes` kills land while every fixture blob (at most ~300 KiB) is
/// still in the writer's 1 MiB buffer, so they leave an empty part: a resume could not
/// be told from a restart there. A blob five times the buffer, killed half way, leaves
/// whole buffers on disk, and the rerun must ask for exactly the rest.
#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_killed_half_way_through_a_big_blob_resumes_with_range_for_the_rest() {
    let reg = tokio::task::spawn_blocking(Registry::start).await.unwrap();
    let layer: Vec<u8> = (0..5u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer_digest = reg.push_blob("big/blob", &layer).await;
    let config_digest = reg.push_blob("big/blob", config).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    })
    .to_string();
    reg.push_manifest("big/blob", "1", OCI_MANIFEST, manifest.as_bytes())
        .await;
    let refs = [format!("{}/big/blob:1", reg.addr())];
    let root = tempfile::tempdir().unwrap();
    fetch_killed_at(
        root.path(),
        &refs,
        &format!("blob-bytes:{}", layer.len() / 2),
    );
    let part = root
        .path()
        .join(".tmp")
        .join(format!("sha256-{}.part", &layer_digest[7..]));
    let kept = fs::metadata(&part).unwrap().len();
    assert!(
        kept > 0 && kept < layer.len() as u64,
        "the kill left {kept} bytes of {}",
        layer.len()
    );

    reg.mark();
    fetch_ok(root.path(), &refs);
    let gets: Vec<_> = reg
        .entries()
        .into_iter()
        .filter(|e| e.method == "GET" && e.path.contains(&layer_digest))
        .collect();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].range, Some(format!("bytes={kept}-")), "{gets:?}");
    assert_eq!(gets[0].status, 206);
    assert_eq!(gets[0].bytes, Some(layer.len() as u64 - kept));
    assert_consistent(root.path());
    assert_no_partials(root.path());
}

/// Run a cold-or-resumed fetch of `refs` that must die at crash point `at`.
fn fetch_killed_at(root: &Path, refs: &[String], at: &str) {
    let out = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_static-registry"))
            .args(["fetch", "--quiet", "--tls-verify=false", "--root"])
            .arg(root)
            .args(refs)
            .env(CRASH_AT, at),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // SIGABRT, from the hook: anything else means the point was never reached (a dead
    // point after a refactor) or the run failed on its own.
    assert!(
        out.status.signal() == Some(6) && stderr.contains(&format!("crash point {at} reached")),
        "fetch with {CRASH_AT}={at} did not die there ({}): is the point still hit?\n{stderr}",
        out.status
    );
}

/// Writes the first `len` bytes of `blob` as the partial download a killed run leaves.
fn plant_partial(root: &Path, digest: &str, bytes: &[u8]) {
    let tmp = root.join(".tmp");
    fs::create_dir_all(&tmp).unwrap();
    fs::write(tmp.join(format!("sha256-{}.part", &digest[7..])), bytes).unwrap();
}

/// The biggest blob of `repo:tag` (a single-platform image), and the bytes a cold fetch
/// of it downloads: its manifest and its blobs.
fn biggest_blob<'a>(fx: &'a Fixtures, repo: &str, tag: &str) -> (&'a str, &'a [u8], usize) {
    let m = fx.manifest(repo, tag);
    let big = m.blobs.iter().max_by_key(|d| fx.blob(d).len()).unwrap();
    let total = m.bytes.len() + m.blobs.iter().map(|d| fx.blob(d).len()).sum::<usize>();
    (big, fx.blob(big), total)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_blob_resumes_with_range_where_it_stopped() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let (big, bytes, total) = biggest_blob(&fx, "apps/api", "v1");
    let half = bytes.len() / 2;
    plant_partial(root.path(), big, &bytes[..half]);

    let summary = fetch_ok(root.path(), &[format!("{}/apps/api:v1", reg.addr())]);
    assert_eq!(
        summary["bytes_fetched"].as_u64().unwrap() as usize,
        total - half
    );
    assert_consistent(root.path());
    assert_no_partials(root.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_complete_partial_left_by_a_kill_is_committed_without_a_download() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let (big, bytes, total) = biggest_blob(&fx, "apps/api", "v1");
    plant_partial(root.path(), big, bytes);
    reg.mark();
    let summary = fetch_ok(root.path(), &[format!("{}/apps/api:v1", reg.addr())]);
    assert_eq!(reg.count("GET", big), 0, "{:?}", reg.requests());
    assert_eq!(
        summary["bytes_fetched"].as_u64().unwrap() as usize,
        total - bytes.len()
    );
    assert_consistent(root.path());
    assert_no_partials(root.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_partial_from_an_earlier_run_is_downloaded_again_not_published() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let (big, bytes, total) = biggest_blob(&fx, "apps/api", "v1");
    let mut wrong = bytes[..bytes.len() / 2].to_vec();
    wrong[10] ^= 0xff;
    plant_partial(root.path(), big, &wrong);

    let (code, summary, stderr) = fetch(root.path(), &[format!("{}/apps/api:v1", reg.addr())], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("did not verify"), "{stderr}");
    assert_eq!(
        summary["bytes_fetched"].as_u64().unwrap() as usize,
        total - wrong.len() + bytes.len()
    );
    assert_consistent(root.path());
    assert_no_partials(root.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_failure_names_the_registry_and_the_flag_to_use() {
    let reg = Registry::start();
    let root = tempfile::tempdir().unwrap();
    let image = format!("{}/apps/web:v1", reg.addr());
    let out = static_registry(&[
        "fetch",
        "--retries",
        "0",
        "--root",
        root.path().to_str().unwrap(),
        &image,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(line.contains(&image) && line.contains("TLS"), "{stderr}");
    // The library says what failed; the binary adds what to do, in its own options.
    assert!(
        stderr.lines().any(|l| l.starts_with("hint: ")
            && l.contains("--ca-cert/--cert-dir")
            && l.contains("--tls-verify=false")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_names_a_corrupt_blob_and_a_missing_link() {
    let (reg, fx, root) = registry_with_fixtures().await;
    fetch_ok(root.path(), &[format!("{}/apps/api:v1", reg.addr())]);
    let verify = || {
        let out = static_registry(&["verify", "--json", "--root", root.path().to_str().unwrap()]);
        (
            out.status.code(),
            serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        )
    };
    let (code, report) = verify();
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["problems"], serde_json::json!([]));

    let (big, _, _) = biggest_blob(&fx, "apps/api", "v1");
    let pool = pool_path(root.path(), big);
    let mut bytes = fs::read(&pool).unwrap();
    bytes[0] ^= 1;
    // Rewrite in place (same inode) as disk corruption would.
    fs::OpenOptions::new()
        .write(true)
        .open(&pool)
        .unwrap()
        .write_all_at(&bytes, 0)
        .unwrap();
    let config = &fx.manifest("apps/api", "v1").blobs[0];
    fs::remove_file(repo_blob(root.path(), "apps/api", config)).unwrap();

    let (code, report) = verify();
    assert_eq!(code, Some(1));
    let problems = report["problems"].to_string();
    assert!(
        problems.contains(&format!("{big} is corrupt")),
        "{problems}"
    );
    assert!(
        problems.contains(&format!("{config} is referenced but missing")),
        "{problems}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_removes_what_a_retag_left_unreachable_and_nothing_else() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let r = root.path().to_str().unwrap();
    let t000 = fx.manifest("many/tags", "t000");
    let other = fx
        .manifests
        .iter()
        .find(|m| m.repo == "many/tags" && m.digest != t000.digest)
        .unwrap();
    let refs = [
        format!("{}/many/tags:t000", reg.addr()),
        format!("{}/base/alpine:latest", reg.addr()),
    ];
    fetch_ok(root.path(), &refs);
    let before = assert_pool_verified(root.path());

    // Upstream moves the tag; the next fetch follows it.
    reg.push_manifest("many/tags", "t000", &other.media_type, &other.bytes)
        .await;
    fetch_ok(root.path(), &refs);

    let out = static_registry(&["prune", "--dry-run", "--json", "--root", r]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dry: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(assert_pool_verified(root.path()), {
        let mut b = before.clone();
        b.extend(other.blobs.iter().cloned());
        b.insert(other.digest.clone());
        b
    });
    let listed = dry["removed"].to_string();
    assert!(listed.contains(&t000.digest[7..]), "{listed}");

    let out = static_registry(&["prune", "--json", "--root", r]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = assert_pool_verified(root.path());
    assert!(!pool.contains(&t000.digest));
    assert!(pool.contains(&other.digest));
    for blob in t000.blobs.iter().filter(|b| !other.blobs.contains(b)) {
        assert!(!pool.contains(blob), "{blob} should be gone");
    }
    assert_consistent(root.path());
    let out = static_registry(&["verify", "--root", r]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Everything still pulls: a warm fetch is unchanged.
    let summary = fetch_ok(root.path(), &refs);
    assert_eq!(summary["images_unchanged"], 2);
}

/// A tmpfs too small for the image, mounted for the test and unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        let out = run_with_timeout(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "mounting a small tmpfs for the disk-full test needs root (CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_cleanly_removes_temps_and_publishes_nothing() {
    let (reg, fx, tmp) = registry_with_fixtures().await;
    let root = tmp.path().join("small");
    fs::create_dir(&root).unwrap();
    // apps/api has a ~300 KiB layer; a/b/c is a few KiB and still fits.
    let _disk = SmallDisk::mount(&root, "160k");
    let (code, summary, stderr) = fetch(
        &root,
        &[
            format!("{}/apps/api:v1", reg.addr()),
            format!("{}/a/b/c:1", reg.addr()),
        ],
        &["--jobs", "1"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no space left"), "{stderr}");
    assert_eq!(summary["images_fetched"], 1, "{stderr}");
    assert!(!root.join("apps/api/index.json").exists());
    assert_eq!(tags(&root, "a/b/c").len(), fx.tags("a/b/c").len());
    assert_consistent(&root);
    let left: Vec<_> = fs::read_dir(root.join(".tmp")).unwrap().collect();
    assert!(left.is_empty(), "temps left after a full disk: {left:?}");
}
