//! The README's runnable examples (its first set-up command, the push and sync
//! examples), run as a user would (with the binary under test instead of a fresh
//! release build).

use std::process::Command;
use std::time::Duration;

use crate::harness::{require_bin, run_with_timeout, served_tempdir};

#[test]
fn the_quickstart_pushes_fetches_serves_and_pulls_back_the_bundled_image() {
    for (bin, package) in [
        ("docker-registry", "docker-registry"),
        ("skopeo", "skopeo"),
        ("nginx", "nginx"),
        ("curl", "curl"),
    ] {
        require_bin(bin, package);
    }
    let root = served_tempdir("it-quickstart-");
    let out = run_with_timeout(
        Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/quickstart.sh"
            ))
            .env("SR_BIN", env!("CARGO_BIN_EXE_static-registry"))
            .env("ROOT", root.path()),
        Duration::from_secs(180),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok: nginx serves"),
        "quickstart failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Processes whose command line mentions `dir` (what a script started under it).
fn processes_under(dir: &std::path::Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&dir))
        .collect()
}

/// Runs `examples/<script>` with the binary under test and `TMPDIR` of its own, after
/// checking the tools it needs (`(binary, package)`); its stdout must say `ok`, and no
/// process it started may be left running.
fn run_example(script: &str, tools: &[(&str, &str)], ok: &str) {
    for (bin, package) in tools {
        require_bin(bin, package);
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = run_with_timeout(
        Command::new("bash")
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("examples")
                    .join(script),
            )
            .env("SR_BIN", env!("CARGO_BIN_EXE_static-registry"))
            .env("TMPDIR", tmp.path()),
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(ok),
        "{script} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let left = processes_under(tmp.path());
    assert!(left.is_empty(), "left running: {left:?}");
}

/// Issue: the example started its registries in `$(...)` subshells, so their pids never
/// reached its cleanup and every run left two docker-registry processes behind.
#[test]
fn the_push_example_pushes_a_store_and_copies_an_image_byte_exact_and_stops_its_registries() {
    run_example(
        "push-copy.sh",
        &[
            ("docker-registry", "docker-registry"),
            ("skopeo", "skopeo"),
            ("curl", "curl"),
        ],
        "ok: pushed and copied byte for byte",
    );
}

#[test]
fn the_sync_example_mirrors_runs_a_copy_job_and_stops_on_sigterm_leaving_nothing_running() {
    run_example(
        "sync-service.sh",
        &[
            ("docker-registry", "docker-registry"),
            ("skopeo", "skopeo"),
            ("curl", "curl"),
            ("jq", "jq"),
        ],
        "ok: the service mirrored, ran a copy job",
    );
}

#[test]
fn the_mappings_example_serves_stored_redirected_proxied_and_vhost_names_and_survives_the_upstream_stopping()
 {
    run_example(
        "mappings.sh",
        &[
            ("docker-registry", "docker-registry"),
            ("skopeo", "skopeo"),
            ("curl", "curl"),
            ("nginx", "nginx"),
        ],
        "ok: stored, redirected, proxied and virtual-host names all served",
    );
}

#[test]
fn the_serve_example_answers_its_user_over_https_and_a_new_tag_without_restart() {
    run_example(
        "serve.sh",
        &[
            ("docker-registry", "docker-registry"),
            ("skopeo", "skopeo"),
            ("curl", "curl"),
            ("openssl", "openssl"),
            ("htpasswd", "apache2-utils"),
        ],
        "ok: serve answered only its user",
    );
}

#[test]
fn the_bundle_example_carries_a_full_bundle_and_a_delta_across_and_refuses_the_delta_alone() {
    run_example(
        "bundle.sh",
        &[
            ("docker-registry", "docker-registry"),
            ("skopeo", "skopeo"),
            ("curl", "curl"),
        ],
        "ok: a full bundle and a delta made the air-gapped store equal",
    );
}

#[test]
fn the_signatures_example_mirrors_only_the_signed_image_and_verifies_it_through_serve() {
    run_example(
        "signatures.sh",
        &[
            ("docker-registry", "docker-registry"),
            ("skopeo", "skopeo"),
            ("curl", "curl"),
            ("openssl", "openssl"),
            ("jq", "jq"),
        ],
        "ok: only the signed image was mirrored, and its signature came with it",
    );
}

#[test]
fn the_s3_example_publishes_to_ceph_and_pulls_back_through_the_stateless_front() {
    run_example(
        "s3.sh",
        &[
            ("radosgw", "radosgw"),
            ("ceph-mon", "ceph-mon"),
            ("ceph-osd", "ceph-osd"),
            ("nginx", "nginx"),
            ("docker-registry", "docker-registry"),
            ("skopeo", "skopeo"),
            ("curl", "curl"),
            ("jq", "jq"),
        ],
        "ok: the store was published to the bucket and pulled back through a front with no store",
    );
}
