//! Options the README documents, each end to end: cosign's referrer tags, foreign
//! layers, --keep-host, --templates, Ctrl-C, and a Retry-After of more than zero.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::genconf::{gen_conf, request, serve};
use crate::harness::fault::FaultRegistry;
use crate::harness::fixtures::{OCI_EMPTY, OCI_MANIFEST};
use crate::harness::sha256_digest;
use crate::harness::skopeo::skopeo_inspect_raw;
use crate::harness::store::{
    assert_consistent, assert_verify_clean, fetch, fetch_ok, registry_with_fixtures, tags,
};

/// cosign keeps signatures, attestations and SBOMs under tags named after the image's
/// digest; `--referrers` brings them along, a plain fetch does not.
#[tokio::test(flavor = "multi_thread")]
async fn cosign_sig_att_and_sbom_tags_come_with_referrers_only() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let api = fx.manifest("apps/api", "v1").digest.clone();
    let empty = reg.push_blob("apps/api", b"{}").await;
    let mut pushed = Vec::new();
    for suffix in ["sig", "att", "sbom"] {
        let payload = format!("{{\"cosign\":\"{suffix}\"}}");
        let layer = reg.push_blob("apps/api", payload.as_bytes()).await;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                        "digest": layer, "size": payload.len()}],
        })
        .to_string();
        let tag = format!("sha256-{}.{suffix}", &api[7..]);
        reg.push_manifest("apps/api", &tag, OCI_MANIFEST, manifest.as_bytes())
            .await;
        pushed.push((tag, sha256_digest(manifest.as_bytes())));
    }
    let image = [format!("{}/apps/api:v1", reg.addr())];
    fetch_ok(root.path(), &image);
    assert_eq!(
        tags(root.path(), "apps/api").len(),
        1,
        "no --referrers, no cosign tags"
    );
    let (code, _, stderr) = fetch(root.path(), &image, &["--referrers"]);
    assert_eq!(code, 0, "{stderr}");
    let stored = tags(root.path(), "apps/api");
    for (tag, digest) in &pushed {
        assert!(
            stored.contains(&(tag.clone(), digest.clone())),
            "{tag} missing: {stored:?}"
        );
    }
    assert_consistent(root.path());
}

/// A foreign (non-distributable) layer is skipped with a warning by default, and stored
/// with --include-foreign when the registry holds it.
#[tokio::test(flavor = "multi_thread")]
async fn include_foreign_stores_the_foreign_layer_and_by_default_it_is_skipped() {
    let (reg, fx, root) = registry_with_fixtures().await;
    reg.push_blob("foreign/win", &fx.foreign_layer_bytes).await;
    let image = [format!("{}/foreign/win:1", reg.addr())];
    let layer = |r: &Path| {
        r.join("foreign/win/blobs/sha256")
            .join(&fx.foreign_layer[7..])
    };
    let (code, _, stderr) = fetch(root.path(), &image, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("foreign"),
        "no warning about the skipped layer: {stderr}"
    );
    assert!(!layer(root.path()).exists());

    let other = crate::harness::served_tempdir("it-foreign-");
    let (code, _, stderr) = fetch(other.path(), &image, &["--include-foreign"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        fs::read(layer(other.path())).unwrap(),
        fx.foreign_layer_bytes
    );
    assert_consistent(other.path());
}

/// --keep-host stores under `<host>-<port>/<name>` and gen-conf serves it there.
#[tokio::test(flavor = "multi_thread")]
async fn keep_host_stores_and_serves_under_the_registry_host() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let m = fx.manifest("oci/multi", "1.0").clone();
    fetch_ok(root.path(), &[format!("{}/oci/multi:1.0", reg.addr())]);
    let (code, _, stderr) = fetch(
        root.path(),
        &[format!("{}/oci/multi:1.0", reg.addr())],
        &["--keep-host"],
    );
    assert_eq!(code, 0, "{stderr}");
    let name = format!("{}/oci/multi", reg.addr().replace(':', "-"));
    assert_eq!(
        tags(root.path(), &name),
        [("1.0".to_owned(), m.digest.clone())]
    );
    let nginx = serve(&gen_conf(root.path(), &[]).0);
    let target = format!("docker://{}/{name}:1.0", nginx.addr());
    let raw =
        tokio::task::spawn_blocking(move || skopeo_inspect_raw(&target, &["--tls-verify=false"]))
            .await
            .unwrap();
    assert_eq!(sha256_digest(&raw), m.digest);
}

/// --templates replaces the built-in templates (all three, by file name).
#[tokio::test(flavor = "multi_thread")]
async fn templates_from_a_directory_replace_the_built_in_ones() {
    let (reg, fx, root) = registry_with_fixtures().await;
    fetch_ok(root.path(), &[format!("{}/a/b/c:1", reg.addr())]);
    let dir = tempfile::tempdir().unwrap();
    for t in [
        "registry.conf.tera",
        "maps.conf.tera",
        "locations.conf.tera",
    ] {
        let built_in = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("templates")
                .join(t),
        )
        .unwrap();
        let mine = if t == "locations.conf.tera" {
            // A site's own addition: a health check inside the registry's server.
            format!("    location = /healthz {{ return 200 'ok'; }}\n{built_in}")
        } else {
            built_in
        };
        fs::write(dir.path().join(t), mine).unwrap();
    }
    let (config, _) = gen_conf(root.path(), &["--templates", dir.path().to_str().unwrap()]);
    assert!(config.contains("location = /healthz"));
    let nginx = serve(&config);
    assert_eq!(
        request(Method::GET, &format!("{}/healthz", nginx.url()))
            .await
            .0,
        StatusCode::OK
    );
    let (status, _, body) = request(
        Method::GET,
        &format!("{}/v2/a/b/c/manifests/1", nginx.url()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, fx.manifest("a/b/c", "1").bytes);
}

/// Ctrl-C in the middle of a download: exit 130, nothing of the image published, the
/// store consistent, the partial download kept for the next run.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_mid_download_publishes_nothing_and_keeps_the_partial_file() {
    let reg = FaultRegistry::start().await;
    let root = tempfile::tempdir().unwrap();
    // One byte, then silence: the fetch is mid-blob until interrupted.
    let mut child = Command::new(env!("CARGO_BIN_EXE_static-registry"))
        .args(["fetch", "--quiet", "--tls-verify=false", "--root"])
        .arg(root.path())
        .arg(format!("{}/fault/slow-drip:1", reg.addr()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tmp = root.path().join(".tmp");
    let deadline = Instant::now() + Duration::from_secs(20);
    let has_part = || {
        fs::read_dir(&tmp).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".part"))
        })
    };
    while !has_part() {
        assert!(Instant::now() < deadline, "the download never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fetch did not stop on SIGINT");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!root.path().join("fault/slow-drip/index.json").exists());
    assert!(has_part(), "the partial download is kept for the next run");
    assert_consistent(root.path());
    assert_verify_clean(root.path(), "after SIGINT");
}

/// A 429 with Retry-After: 1 is retried no sooner than a second later.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_of_one_second_is_waited_for() {
    let reg = FaultRegistry::start().await;
    let root = tempfile::tempdir().unwrap();
    fetch_ok(
        root.path(),
        &[format!("{}/fault/throttled-1s:1", reg.addr())],
    );
    let times = reg.retry_after_times();
    assert!(times.len() >= 2, "{times:?}");
    let waited = times[1] - times[0];
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
}

/// Issue: `static-registry ls --json | head` panicked ("failed printing to stdout:
/// Broken pipe") with a backtrace, where other Unix tools end quietly.
#[test]
fn output_into_a_closed_pipe_ends_quietly_without_a_panic() {
    let root = crate::harness::served_tempdir("it-closed-pipe-");
    // An empty store: an import from an empty tree makes one.
    let tree = tempfile::tempdir().unwrap();
    let (code, _, stderr) = crate::harness::store::run(&[
        "import",
        "--quiet",
        "--root",
        root.path().to_str().unwrap(),
        "--from-dir-tree",
        tree.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    // Not run_with_timeout: it pipes stdout itself. `ls` of an empty store is instant.
    let out = Command::new(env!("CARGO_BIN_EXE_static-registry"))
        .args(["ls", "--json", "--root"])
        .arg(root.path())
        .stdin(Stdio::null())
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.status.success(), "nothing was written, so no success");
}
