//! Hostile upstreams (the fault-injection registry): every case gets a clear error and
//! exit 1, nothing of the broken image is published, and the other images of the run
//! still complete.

use serde_json::Value;

use crate::harness::fault::{CASES, FaultRegistry};
use crate::harness::store::{assert_consistent, assert_verify_clean, fetch, tags};

/// The error each failing case must name (part of the message).
fn expected_error(case: &str) -> &'static str {
    match case {
        "blob-digest" => "digest mismatch",
        "manifest-digest" => "hash to",
        "huge-manifest" => "larger than the limit",
        "size-short" => "broke off at byte",
        "size-long" => "size mismatch",
        "slow-drip" => "broke off at byte",
        "redirect-loop" => "redirect",
        "token-fails" => "token service",
        "self-index" => "hash to",
        "deep-index" => "nesting deeper",
        other => panic!("{other} is not a failing case"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_upstreams_fail_cleanly_and_the_rest_of_the_run_completes() {
    let reg = FaultRegistry::start().await;
    let root = tempfile::tempdir().unwrap();
    // token-fails breaks every repository of its host (tokens are per host), so it
    // gets a run of its own below.
    let refs: Vec<String> = CASES
        .iter()
        .filter(|(case, _)| *case != "token-fails")
        .map(|(case, _)| format!("{}/fault/{case}:1", reg.addr()))
        .collect();
    let (code, summary, stderr) = fetch(
        root.path(),
        &refs,
        &["--creds", "u:p", "--stall-timeout", "1", "--retries", "1"],
    );
    assert_eq!(code, 1, "{stderr}");
    let (code2, summary2, stderr2) = fetch(
        root.path(),
        &[format!("{}/fault/token-fails:1", reg.addr())],
        &["--retries", "0"],
    );
    assert_eq!(code2, 1, "{stderr2}");

    let images: Vec<&Value> = summary["images"]
        .as_array()
        .unwrap()
        .iter()
        .chain(summary2["images"].as_array().unwrap())
        .collect();
    for (case, succeeds) in CASES {
        let image = images
            .iter()
            .find(|i| i["name"] == format!("fault/{case}"))
            .unwrap_or_else(|| panic!("{case} missing from {summary}"));
        let name = format!("fault/{case}");
        if succeeds {
            assert_eq!(image["status"], "fetched", "{case}: {image}");
            assert_eq!(tags(root.path(), &name).len(), 1, "{case}");
        } else {
            assert_eq!(image["status"], "failed", "{case}: {image}");
            let error = image["error"].to_string();
            assert!(error.contains(expected_error(case)), "{case}: {error}");
            assert!(
                !root.path().join(&name).join("index.json").exists(),
                "{case} was published"
            );
            let line = format!("{}/fault/{case}:1", reg.addr());
            assert!(
                stderr.contains(&line) || stderr2.contains(&line),
                "no error line names {line}"
            );
        }
    }
    // A body that broke off half way was resumed from where it stopped: a Range request
    // for exactly the missing half, not the whole blob again.
    let gets = reg.layer_gets("truncated");
    let half = gets[0].1;
    assert_eq!(
        gets,
        [(None, half), (Some(format!("bytes={half}-")), 65536 - half)],
        "truncated layer: the rerun must resume with Range"
    );
    // Credentials went to the registry that asked, never to its blob storage.
    let elsewhere = reg.authorization_seen_elsewhere();
    assert!(!elsewhere.is_empty(), "the redirect was not followed");
    assert!(elsewhere.iter().all(Option::is_none), "{elsewhere:?}");

    assert_consistent(root.path());
    assert_verify_clean(root.path(), "after the hostile runs");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_deadline_and_fail_fast_stop_without_publishing_half_an_image() {
    let reg = FaultRegistry::start().await;
    let root = tempfile::tempdir().unwrap();
    let drip = format!("{}/fault/slow-drip:1", reg.addr());
    let started = std::time::Instant::now();
    let (code, _, stderr) = fetch(root.path(), &[drip], &["--timeout", "1"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("timed out (--timeout)"), "{stderr}");
    assert!(
        started.elapsed().as_secs() < 30,
        "the deadline did not stop the drip"
    );
    assert!(!root.path().join("fault/slow-drip/index.json").exists());
    assert_consistent(root.path());

    let refs = [
        format!("{}/fault/blob-digest:1", reg.addr()),
        format!("{}/fault/slow-drip:1", reg.addr()),
    ];
    let (code, summary, stderr) = fetch(
        root.path(),
        &refs,
        &["--fail-fast", "--stall-timeout", "60"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--fail-fast"), "{stderr}");
    assert_eq!(summary["images"].as_array().unwrap().len(), 1, "{summary}");
    assert_consistent(root.path());
}
