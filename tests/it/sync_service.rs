//! `sync` as a service: sources on their schedules, the control API (token, sources,
//! pause/resume/sync, metrics, errors), SIGHUP reloads, a failing source backing off while
//! the others go on, and SIGTERM in the middle of a round.

use std::fs;
use std::time::Duration;

use serde_json::Value;

use crate::harness::fault::FaultRegistry;
use crate::harness::registry::Registry;
use crate::harness::service::Service;
use crate::harness::store::{
    assert_consistent, assert_verify_clean, registry_with_fixtures, run, tags, write_file,
};

fn rounds(source: &Value) -> u64 {
    source["totals"]["rounds"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_runs_a_source_on_its_interval_and_the_api_pauses_resumes_and_syncs_it() {
    let (src, fx, root) = registry_with_fixtures().await;
    let work = tempfile::tempdir().unwrap();
    let config = write_file(
        work.path(),
        "mirror.yaml",
        &format!(
            "registries:\n  \"{s}\": {{tls-verify: false, name: fixtures, interval: 1s}}\nimages:\n  - source: {s}/apps/api\n    tags: [v1]\n",
            s = src.addr()
        ),
    );
    let root_arg = root.path().to_str().unwrap();
    let mut svc = Service::start(&config, &["--root", root_arg], Some("s3cret")).await;

    // Only /healthz answers without the token.
    assert_eq!(svc.get_as("/healthz", None).await.0, 200);
    for token in [None, Some("wrong")] {
        let (status, body) = svc.get_as("/v1/sources", token).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{body}");
        assert_eq!(svc.get_as("/metrics", token).await.0, 401);
    }

    // The first round stores the image; later ones only ask (one HEAD per tag).
    let path = "/v1/sources/fixtures";
    let first = svc.wait_for(path, "first round", |s| rounds(s) >= 1).await;
    assert_eq!(first["last_run"]["copied"], 1, "{first}");
    assert_eq!(first["last_run"]["failed"], 0, "{first}");
    // Its configuration as read: source, target, selection.
    assert_eq!(
        first["images"],
        serde_json::json!([{"source": format!("{}/apps/api", src.addr()), "target": "apps/api", "tags": ["v1"], "referrers": false}]),
        "{first}"
    );
    let digest = fx.manifest("apps/api", "v1").digest.clone();
    assert!(tags(root.path(), "apps/api").contains(&("v1".to_owned(), digest)));
    src.mark();
    let later = svc
        .wait_for(path, "two more rounds", |s| rounds(s) >= rounds(&first) + 2)
        .await;
    assert_eq!(later["last_run"]["copied"], 0, "{later}");
    assert_eq!(later["last_run"]["unchanged"], 1, "{later}");
    let not_head: Vec<_> = src
        .requests()
        .into_iter()
        .filter(|(m, p)| !(m == "HEAD" && p.contains("/manifests/")) && p != "/v2/")
        .collect();
    assert!(not_head.is_empty(), "{not_head:?}");

    // Paused: no round runs; a sync request still runs one; resumed: rounds go on.
    let (status, body) = svc.post(&format!("{path}/pause")).await;
    assert_eq!(status, 202, "{body}");
    let paused = svc
        .wait_for(path, "pause", |s| s["state"] == "paused")
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, still) = svc.get(path).await;
    assert_eq!(
        rounds(&still),
        rounds(&paused),
        "a paused source ran: {still}"
    );
    let (_, listed) = svc.get("/v1/sources?state=paused").await;
    assert_eq!(listed["sources"][0]["name"], "fixtures", "{listed}");
    let (_, listed) = svc.get("/v1/sources?state=active").await;
    assert_eq!(listed["sources"], serde_json::json!([]), "{listed}");
    assert_eq!(svc.post(&format!("{path}/sync")).await.0, 202);
    let synced = svc
        .wait_for(path, "requested round", |s| {
            rounds(s) == rounds(&paused) + 1
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, after) = svc.get(path).await;
    assert_eq!(
        rounds(&after),
        rounds(&synced),
        "one round per request: {after}"
    );
    assert_eq!(after["state"], "paused");
    assert_eq!(svc.post(&format!("{path}/resume")).await.0, 202);
    svc.wait_for(path, "resumed", |s| rounds(s) >= rounds(&synced) + 2)
        .await;

    let (status, metrics) = svc.get("/metrics").await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap();
    for series in [
        "static_registry_sync_rounds_total{source=\"fixtures\"}",
        "static_registry_sync_images_copied_total{source=\"fixtures\"} 1",
        "static_registry_sync_last_success_timestamp_seconds{source=\"fixtures\"}",
        "static_registry_sync_paused{source=\"fixtures\"} 0",
    ] {
        assert!(metrics.contains(series), "{series}:\n{metrics}");
    }

    // Errors are JSON naming the problem.
    let (status, body) = svc.get("/v1/sources/nope").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("SOURCE_UNKNOWN"))
    );
    let (status, body) = svc.post(&format!("{path}/explode")).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = svc.get("/v1/sources?state=weird").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("weird"));

    svc.signal("TERM");
    assert!(svc.exit().await.success(), "{}", svc.log());
    assert_consistent(root.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_new_config_keeps_the_old_when_broken_and_a_failing_source_backs_off() {
    let (src, _fx, root) = registry_with_fixtures().await;
    let work = tempfile::tempdir().unwrap();
    let port = src.addr().rsplit(':').next().unwrap().to_owned();
    let one = format!(
        "interval: 1h\nregistries:\n  \"{s}\": {{tls-verify: false}}\nimages:\n  - source: {s}/apps/api\n    tags: [v1]\n",
        s = src.addr()
    );
    let config = write_file(work.path(), "mirror.yaml", &one);
    let root_arg = root.path().to_str().unwrap();
    let mut svc = Service::start(&config, &["--root", root_arg, "--retries", "0"], None).await;
    let first = format!("/v1/sources/{}", src.addr());
    svc.wait_for(&first, "first round", |s| rounds(s) == 1)
        .await;

    // A broken file is refused with its problems, and the old sources go on.
    write_file(work.path(), "mirror.yaml", "images: 5\nbogus: 1\n");
    svc.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !svc.log().contains("configuration refused") {
        assert!(std::time::Instant::now() < deadline, "{}", svc.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(svc.log().contains("images: invalid type"), "{}", svc.log());
    assert_eq!(svc.get(&first).await.0, 200);

    // The same registry under its other name is a second source; a third cannot be
    // reached and backs off while the others go on. The first keeps its state.
    let s = src.addr();
    write_file(
        work.path(),
        "mirror.yaml",
        &format!(
            "interval: 1h
registries:
  \"{s}\": {{tls-verify: false}}
  \"localhost:{port}\": {{tls-verify: false, name: second, interval: 1s}}
  \"127.0.0.1:9\": {{tls-verify: false, name: gone, interval: 1s}}
images:
  - source: {s}/apps/api
    tags: [v1]
  - source: localhost:{port}/apps/api
    target: again/api
    tags: [v1]
  - source: 127.0.0.1:9/gone/repo
    tags: [\"1\"]
"
        ),
    );
    svc.signal("HUP");
    let second = svc
        .wait_for("/v1/sources/second", "second source", |s| rounds(s) >= 2)
        .await;
    assert_eq!(second["last_run"]["failed"], 0, "{second}");
    assert!(
        tags(root.path(), "again/api")
            .iter()
            .any(|(t, _)| t == "v1")
    );
    let gone = svc
        .wait_for("/v1/sources/gone", "failing source", |s| rounds(s) >= 1)
        .await;
    assert_eq!(gone["failures_in_a_row"], 1, "{gone}");
    assert!(
        !gone["last_run"]["errors"][0].as_str().unwrap().is_empty(),
        "{gone}"
    );
    // Due in ~30 s (backoff), not in 1 s (its interval).
    let next = gone["next_run"].as_str().unwrap();
    let next = chrono::DateTime::parse_from_rfc3339(next).unwrap();
    assert!(
        next - chrono::Local::now().fixed_offset() > chrono::Duration::seconds(20),
        "{gone}"
    );
    let (_, kept) = svc.get(&first).await;
    assert_eq!(rounds(&kept), 1, "the unchanged source ran again: {kept}");

    svc.signal("TERM");
    assert!(svc.exit().await.success(), "{}", svc.log());
    assert_consistent(root.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_in_the_middle_of_a_round_exits_0_and_a_restart_completes_the_store() {
    let reg = FaultRegistry::start().await;
    let root = crate::harness::served_tempdir("it-store-");
    let work = tempfile::tempdir().unwrap();
    let config = write_file(
        work.path(),
        "mirror.yaml",
        &format!(
            "interval: 1h\nregistries:\n  \"{r}\": {{tls-verify: false}}\nimages:\n  - source: {r}/fault/good\n    tags: [\"1\"]\n  - source: {r}/fault/slow-drip\n    tags: [\"1\"]\n",
            r = reg.addr()
        ),
    );
    let root_arg = root.path().to_str().unwrap();
    let mut svc = Service::start(&config, &["--root", root_arg], None).await;
    let path = format!("/v1/sources/{}", reg.addr());
    svc.wait_for(&path, "the round to be under way", |s| {
        s["state"] == "running"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    svc.signal("TERM");
    assert!(svc.exit().await.success(), "{}", svc.log());
    assert!(svc.log().contains("abandoned"), "{}", svc.log());
    assert_verify_clean(root.path(), "after SIGTERM mid-round");

    // Restarted without the stalling image: the round completes.
    write_file(
        work.path(),
        "mirror.yaml",
        &format!(
            "interval: 1h\nregistries:\n  \"{r}\": {{tls-verify: false}}\nimages:\n  - source: {r}/fault/good\n    tags: [\"1\"]\n",
            r = reg.addr()
        ),
    );
    let mut svc =
        Service::start(&config, &["--root", root_arg, "--log-format", "json"], None).await;
    let done = svc.wait_for(&path, "a round", |s| rounds(s) == 1).await;
    assert_eq!(done["last_run"]["failed"], 0, "{done}");
    // One JSON object per line, the round's figures as fields.
    let log = svc.log();
    let finished: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|l| l["message"] == "round finished")
        .collect();
    assert_eq!(finished.len(), 1, "{log}");
    // fault/good may have been stored before the SIGTERM.
    let counted = |k: &str| finished[0][k].as_u64().unwrap();
    assert_eq!(counted("copied") + counted("unchanged"), 1, "{log}");
    assert_eq!(counted("failed"), 0, "{log}");
    assert_eq!(finished[0]["source"], reg.addr(), "{log}");
    svc.signal("INT");
    assert!(svc.exit().await.success(), "{}", svc.log());
    assert_verify_clean(root.path(), "after the restart");
    assert!(
        tags(root.path(), "fault/good")
            .iter()
            .any(|(t, _)| t == "1")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_refuses_to_start_open_to_the_network_or_without_a_schedule() {
    let work = tempfile::tempdir().unwrap();
    let config = write_file(
        work.path(),
        "mirror.yaml",
        "registries:\n  \"127.0.0.1:9\": {name: lonely}\nimages:\n  - source: 127.0.0.1:9/a/b\n    tags: [\"1\"]\n",
    );
    let root = work.path().join("images");
    let root = root.to_str().unwrap();
    let (code, _, stderr) = tokio::task::block_in_place(|| {
        run(&[
            "sync",
            "--config",
            &config,
            "--root",
            root,
            "--listen",
            "0.0.0.0:0",
        ])
    });
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--token-file"), "{stderr}");
    let (code, _, stderr) =
        tokio::task::block_in_place(|| run(&["sync", "--config", &config, "--root", root]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("lonely without a schedule"), "{stderr}");
    assert!(stderr.contains("--interval"), "{stderr}");
    let empty = write_file(work.path(), "token", "\n");
    let (code, _, stderr) = tokio::task::block_in_place(|| {
        run(&[
            "sync",
            "--config",
            &config,
            "--root",
            root,
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            &empty,
            "--interval",
            "1h",
        ])
    });
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("empty"), "{stderr}");
    assert!(
        !fs::exists(root).unwrap(),
        "a refused start touched the store"
    );
}

/// A config the service can start with: one source that runs hourly.
fn idle_config(dir: &std::path::Path, registry: &str) -> String {
    write_file(
        dir,
        "mirror.yaml",
        &format!(
            "interval: 1h\nregistries:\n  \"{registry}\": {{tls-verify: false}}\nimages:\n  - source: {registry}/apps/api\n    tags: [v1]\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_jobs_in_the_old_format_and_ours_reach_their_targets_and_a_dead_target_fails_alone() {
    let (src, fx, root) = registry_with_fixtures().await;
    let (t1, t2) = tokio::task::spawn_blocking(|| (Registry::start(), Registry::start()))
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let config = idle_config(work.path(), &src.addr());
    let root_arg = root.path().to_str().unwrap();
    let svc = Service::start(
        &config,
        &["--root", root_arg, "--retries", "0"],
        Some("t0k"),
    )
    .await;
    let api = fx.manifest("apps/api", "v1").digest.clone();

    // t2 has apps/api:v1 pointing at another image: a job that may not overwrite skips it.
    let (code, _, stderr) = tokio::task::block_in_place(|| {
        run(&[
            "copy",
            &format!("{}/apps/web:v1", src.addr()),
            "--to",
            &format!("{}/apps/api:v1", t2.addr()),
            "--tls-verify=false",
            "--dest-tls-verify=false",
        ])
    });
    assert_eq!(code, 0, "{stderr}");

    // The old service's format, unchanged: `http://` endpoints, `ref`, `overwrite`.
    let request = serde_json::json!({
        "source": {"endpoint": format!("http://{}", src.addr()), "image": "apps/api", "ref": "v1", "auth": null},
        "targets": [
            {"endpoint": format!("http://{}/copied", t1.addr()), "overwrite": true, "verify_tls": false, "auth": null},
            {"endpoint": format!("http://{}", t2.addr()), "overwrite": false, "verify_tls": false},
        ]
    });
    let (status, queued) = svc.post_json("/api/distribute/image", &request).await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["status"], "QUEUED", "{queued}");
    let id = queued["id"].as_str().unwrap().to_owned();
    let path = format!("/api/distribute/image/{id}");
    let done = svc
        .wait_for(&path, "the job", |j| {
            j["value"] == "FINISHED" || j["value"] == "FAILED"
        })
        .await;
    assert_eq!(done["value"], "FINISHED", "{done}");
    assert_eq!(
        done["finished_endpoints"],
        serde_json::json!([format!("http://{}/copied", t1.addr())]),
        "{done}"
    );
    assert_eq!(
        done["skipped_clusters"],
        serde_json::json!([format!("http://{}", t2.addr())]),
        "{done}"
    );
    assert!(
        done["started_at"].is_string() && done["finished_at"].is_string(),
        "{done}"
    );
    assert_eq!(
        t1.manifest_digest("copied/apps/api", "v1").await,
        Some(api.clone())
    );
    assert_ne!(
        t2.manifest_digest("apps/api", "v1").await,
        Some(api.clone())
    );

    // A target that cannot be reached fails alone, with why; the job is FAILED.
    let request = serde_json::json!({
        "source": {"endpoint": format!("http://{}", src.addr()), "image": "apps/api", "ref": "v1"},
        "targets": [
            {"endpoint": "http://127.0.0.1:9", "verify_tls": false},
            {"endpoint": format!("http://{}/again", t1.addr()), "verify_tls": false},
        ]
    });
    let (_, queued) = svc.post_json("/api/distribute/image", &request).await;
    let path = format!("/api/distribute/image/{}", queued["id"].as_str().unwrap());
    let done = svc
        .wait_for(&path, "the job", |j| {
            j["value"] == "FINISHED" || j["value"] == "FAILED"
        })
        .await;
    assert_eq!(done["value"], "FAILED", "{done}");
    assert_eq!(
        done["failed_endpoints"][0]["endpoint"], "http://127.0.0.1:9",
        "{done}"
    );
    assert!(
        !done["failed_endpoints"][0]["error"]
            .as_str()
            .unwrap()
            .is_empty(),
        "{done}"
    );
    assert_eq!(
        done["finished_endpoints"],
        serde_json::json!([format!("http://{}/again", t1.addr())])
    );
    assert_eq!(
        t1.manifest_digest("again/apps/api", "v1").await,
        Some(api.clone())
    );

    // Ours: targets as in the file's `to:`, platforms.
    let request = serde_json::json!({
        "source": format!("{}/oci/multi:1.0", src.addr()),
        "tls-verify": false,
        "targets": [{"registry": format!("{}/own", t1.addr()), "tls-verify": false}],
        "platforms": ["linux/amd64"],
    });
    let (status, queued) = svc.post_json("/v1/jobs", &request).await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["state"], "queued", "{queued}");
    let path = format!("/v1/jobs/{}", queued["id"].as_str().unwrap());
    let done = svc
        .wait_for(&path, "our job", |j| {
            j["state"] == "finished" || j["state"] == "failed"
        })
        .await;
    assert_eq!(done["state"], "finished", "{done}");
    assert_eq!(done["targets"][0]["status"], "copied", "{done}");
    assert!(t1.manifest_digest("own/oci/multi", "1.0").await.is_some());
    let (_, all) = svc.get("/v1/jobs").await;
    assert_eq!(all["jobs"].as_array().unwrap().len(), 3, "{all}");

    // Bad requests: 400 naming each problem; nothing queued.
    let (status, body) = svc
        .post_json(
            "/v1/jobs",
            &serde_json::json!({"source": "Bad Ref", "targets": [{"registry": "bad host!/x"}, {"registry": "127.0.0.1:9/x", "credentials-env": "HOME"}], "platforms": ["plan9"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    for part in [
        "source:",
        "targets[0].registry",
        "targets[1].credentials-env",
        "platforms[0]",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
    let (status, body) = svc
        .post_json(
            "/v1/jobs",
            &serde_json::json!({"source": "a/b:1", "targets": [], "bogus": 1}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("bogus"),
        "{body}"
    );
    let (status, body) = svc.post_raw("/api/distribute/image", b"{".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = svc.post_raw("/v1/jobs", vec![b' '; 2 << 20]).await;
    assert_eq!(status, 413, "{body}");
    let (status, body) = svc.get("/v1/jobs/nope").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("JOB_UNKNOWN"))
    );
    let (_, all) = svc.get("/v1/jobs").await;
    assert_eq!(all["jobs"].as_array().unwrap().len(), 3, "{all}");
    let (status, _) = svc.get_as("/api/distribute/image/x", None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn sources_put_over_the_api_are_read_like_the_file_run_and_survive_a_restart() {
    let (src, fx, root) = registry_with_fixtures().await;
    let work = tempfile::tempdir().unwrap();
    let config = idle_config(work.path(), &src.addr());
    let root_arg = root.path().to_str().unwrap();
    let args = ["--root", root_arg];
    let mut svc = Service::start(&config, &args, Some("t")).await;
    let s = src.addr();
    let body = |tag: &str| {
        serde_json::json!({
            "prefix": "api",
            "registries": {s.clone(): {"tls-verify": false}},
            "images": [{"source": format!("{s}/apps/web"), "tags": [tag]}],
            "interval": "1h",
        })
    };
    let put = |b: serde_json::Value| {
        let svc = &svc;
        async move { svc.put_json("/v1/sources/proj", &b).await }
    };
    let (status, created) = put(body("v1")).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["origin"], "api", "{created}");
    let ran = svc
        .wait_for("/v1/sources/proj", "its first round", |s| rounds(s) >= 1)
        .await;
    assert_eq!(ran["last_run"]["copied"], 1, "{ran}");
    let web = fx.manifest("apps/web", "v1").digest.clone();
    assert!(tags(root.path(), "api/apps/web").contains(&("v1".to_owned(), web)));
    let (status, replaced) = put(body("v1")).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(
        rounds(&replaced),
        rounds(&ran),
        "a replaced source keeps its state"
    );

    // Read as the file is: every problem named; what only the file may say refused.
    let (status, bad) = put(serde_json::json!({
        "registries": {s.clone(): {"credentials-env": "HOME"}},
        "images": [{"source": format!("{s}/apps/web"), "tags": ["bad tag"]}],
    }))
    .await;
    assert_eq!(status, 400, "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("credentials-env: not accepted"),
        "{bad}"
    );
    let (status, bad) = put(serde_json::json!({"images": [{"source": format!("{s}/apps/web"), "tags": ["bad tag"]}], "interval": "soon"})).await;
    assert_eq!(status, 400, "{bad}");
    let message = bad["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("images[0].tags[0]") && message.contains("interval"),
        "{bad}"
    );
    // The file's source is the file's.
    let file_source = format!("/v1/sources/{s}");
    assert_eq!(svc.delete(&file_source).await.0, 409);
    let (_, configured) = svc.get("/v1/sources?state=configured").await;
    assert_eq!(
        configured["sources"].as_array().unwrap().len(),
        1,
        "{configured}"
    );
    assert_eq!(configured["sources"][0]["origin"], "config", "{configured}");

    // A restart keeps it; a delete ends it, also across a restart.
    svc.signal("TERM");
    assert!(svc.exit().await.success());
    let mut svc = Service::start(&config, &args, Some("t")).await;
    let (status, kept) = svc.get("/v1/sources/proj").await;
    assert_eq!(
        (status, kept["origin"].as_str()),
        (200, Some("api")),
        "{kept}"
    );
    assert_eq!(svc.delete("/v1/sources/proj").await.0, 204);
    assert_eq!(svc.get("/v1/sources/proj").await.0, 404);
    svc.signal("TERM");
    assert!(svc.exit().await.success());
    let svc = Service::start(&config, &args, Some("t")).await;
    assert_eq!(svc.get("/v1/sources/proj").await.0, 404);
    let state = fs::read_to_string(work.path().join("mirror.sources.json")).unwrap();
    assert!(!state.contains("proj"), "{state}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_browses_an_upstream_s_repositories_tags_and_platforms() {
    let (src, fx, root) = registry_with_fixtures().await;
    let work = tempfile::tempdir().unwrap();
    let config = idle_config(work.path(), &src.addr());
    let svc = Service::start(
        &config,
        &["--root", root.path().to_str().unwrap(), "--retries", "0"],
        None,
    )
    .await;
    let base = format!("/v1/registries/{}/repositories", src.addr());

    let (status, body) = svc.get(&base).await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for repo in ["apps/api", "oci/multi", "many/tags"] {
        assert!(names.contains(&repo), "{repo}: {body}");
    }
    // The `ls` filters as query parameters.
    let (status, body) = svc
        .get(&format!(
            "{base}/many/tags/tags?allow=t0[0-4].&deny=t00[0-2]"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let expected: Vec<String> = (3..50).map(|i| format!("t{i:03}")).collect();
    assert_eq!(body["tags"], serde_json::json!(expected), "{body}");
    let (_, body) = svc.get(&format!("{base}/apps/api/tags")).await;
    assert_eq!(
        body["tags"],
        serde_json::json!(fx.tags("apps/api")),
        "{body}"
    );

    // A tag: digest, media type, platforms with their sizes.
    let (status, multi) = svc.get(&format!("{base}/oci/multi/tags/1.0")).await;
    assert_eq!(status, 200, "{multi}");
    assert_eq!(
        multi["digest"],
        fx.manifest("oci/multi", "1.0").digest,
        "{multi}"
    );
    assert_eq!(
        multi["media_type"],
        "application/vnd.oci.image.index.v1+json"
    );
    let platforms: Vec<&str> = multi["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["platform"].as_str().unwrap())
        .collect();
    assert!(
        platforms.contains(&"linux/amd64") && platforms.len() >= 2,
        "{multi}"
    );
    assert!(multi["size"].as_u64().unwrap() > 0);
    let (_, single) = svc.get(&format!("{base}/apps/api/tags/v1")).await;
    assert_eq!(single["platforms"].as_array().unwrap().len(), 1, "{single}");
    assert!(single["platforms"][0]["platform"].is_null(), "{single}");

    // Bad parameters name themselves; an upstream that fails is a 502 saying why.
    for (query, word) in [
        ("latest=0", "latest"),
        ("allow=(", "allow"),
        ("semver=banana", "semver"),
    ] {
        let (status, body) = svc.get(&format!("{base}/many/tags/tags?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().starts_with(word),
            "{body}"
        );
    }
    let (status, body) = svc.get("/v1/registries/nohost/repositories").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = svc
        .get("/v1/registries/127.0.0.1:9/repositories/a/tags")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("UPSTREAM")),
        "{body}"
    );
    let (status, body) = svc.get(&format!("{base}/apps/api/tagz")).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_round_that_changed_the_store_reloads_nginx_and_one_that_did_not_leaves_it() {
    use crate::genconf::request;
    use crate::harness::nginx::Nginx;
    use reqwest::{Method, StatusCode};

    let (src, fx, root) = registry_with_fixtures().await;
    let etc = crate::harness::served_tempdir("it-etc-nginx-");
    let e = etc.path();
    fs::create_dir_all(e.join("conf.d")).unwrap();
    let nginx = Nginx::start_in(
        e,
        "    include {{TMP}}/conf.d/*.conf;\n    server { listen 127.0.0.1:{{PORT}} default_server; return 404; }\n",
    );
    let addr = nginx.addr();
    let port = addr.rsplit_once(':').unwrap().1.to_owned();
    let work = tempfile::tempdir().unwrap();
    let s = src.addr();
    let config = write_file(
        work.path(),
        "mirror.yaml",
        &format!(
            "interval: 1h
registries:
  \"{s}\": {{tls-verify: false}}
images:
  - source: {s}/apps/api
    tags: [v1]
on-change:
  reload-nginx: {conf}
  gen-conf-args: [--listen, \"{addr}\", --nginx-conf, {main}, --server-name, localhost]
",
            conf = e.join("conf.d/static-registry.conf").display(),
            main = e.join("nginx.conf").display(),
        ),
    );
    let started = nginx.workers();
    let svc = Service::start(&config, &["--root", root.path().to_str().unwrap()], None).await;
    let path = format!("/v1/sources/{s}");
    let first = svc
        .wait_for(&path, "the first round", |s| rounds(s) == 1)
        .await;
    assert_eq!(first["last_run"]["errors"], Value::Null, "{first}");
    assert!(svc.log().contains("on-change done"), "{}", svc.log());
    nginx.wait_for_new_workers(&started);
    let manifest =
        |repo: &str, tag: &str| format!("http://localhost:{port}/v2/{repo}/manifests/{tag}");
    let (status, headers, _) = request(Method::GET, &manifest("apps/api", "v1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["docker-content-digest"],
        fx.manifest("apps/api", "v1").digest.as_str()
    );

    // Nothing new: nginx is left alone.
    let workers = nginx.workers();
    assert_eq!(svc.post(&format!("{path}/sync")).await.0, 202);
    let second = svc
        .wait_for(&path, "the second round", |s| rounds(s) == 2)
        .await;
    assert_eq!(second["last_run"]["store_changed"], false, "{second}");
    assert_eq!(
        svc.log().matches("on-change done").count(),
        1,
        "{}",
        svc.log()
    );
    assert_eq!(nginx.workers(), workers);

    // A new image: nginx serves it after the round.
    let body = serde_json::json!({
        "registries": {s.clone(): {"tls-verify": false}},
        "images": [{"source": format!("{s}/apps/web"), "tags": ["v1"]}],
        "interval": "1h",
    });
    assert_eq!(svc.put_json("/v1/sources/web", &body).await.0, 201);
    svc.wait_for("/v1/sources/web", "its round", |s| rounds(s) == 1)
        .await;
    assert_eq!(
        svc.log().matches("on-change done").count(),
        2,
        "{}",
        svc.log()
    );
    nginx.wait_for_new_workers(&workers);
    let (status, _, _) = request(Method::GET, &manifest("apps/web", "v1")).await;
    assert_eq!(status, StatusCode::OK);
}

/// The service logs what to do about a failure, in the configuration's words, and the API
/// shows it with the round.
#[tokio::test(flavor = "multi_thread")]
async fn a_round_s_tls_failure_comes_with_a_hint_naming_the_source_s_registries_entry() {
    let (src, _fx, root) = registry_with_fixtures().await;
    let work = tempfile::tempdir().unwrap();
    let s = src.addr();
    // No `tls-verify: false`: the plain-http registry fails the TLS handshake.
    let config = write_file(
        work.path(),
        "mirror.yaml",
        &format!("interval: 1h\nimages:\n  - source: {s}/apps/api\n    tags: [v1]\n"),
    );
    let svc = Service::start(
        &config,
        &["--root", root.path().to_str().unwrap(), "--retries", "0"],
        None,
    )
    .await;
    let failed = svc
        .wait_for(&format!("/v1/sources/{s}"), "a failed round", |s| {
            rounds(s) == 1
        })
        .await;
    let hint = failed["last_run"]["hints"][0].as_str().unwrap_or_default();
    assert!(
        hint.contains(&format!("under `registries.\"{s}\"`")) && hint.contains("tls-verify: false"),
        "{failed}"
    );
    assert!(svc.log().contains("hint"), "{}", svc.log());
}
