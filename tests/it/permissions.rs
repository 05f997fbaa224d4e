//! The store as a web server running as its own user sees it: stock nginx's workers
//! run as `www-data`, `nginx` or `nobody`, never as the user who fetched.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use reqwest::{Method, StatusCode};

use crate::genconf::{error_code, fetched_store, gen_conf, header, request, serve};
use crate::harness::fixtures::Fixtures;
use crate::harness::running_as_root;
use crate::harness::sha256_digest;
use crate::harness::skopeo::{skopeo, skopeo_inspect_raw};
use crate::harness::store::static_registry;

/// The uid of `nobody`, whom the harness's nginx workers run as.
const NOBODY_UID: u32 = 65534;

/// Published entries (all but `.lock`, `.index.lock`, `.tmp/`) others cannot read
/// (files) or traverse (directories).
fn closed_entries(root: &Path) -> Vec<String> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_entry(|e| {
            e.depth() != 1
                || ![".lock", ".index.lock", ".tmp"].contains(&&*e.file_name().to_string_lossy())
        })
        .map(|e| e.unwrap())
        .filter(|e| {
            let mode = e.metadata().unwrap().permissions().mode();
            let need = if e.file_type().is_dir() { 0o001 } else { 0o004 };
            mode & need == 0
        })
        .map(|e| {
            format!(
                "{} {:o}",
                e.path().display(),
                e.metadata().unwrap().permissions().mode()
            )
        })
        .collect()
}

/// Every file a store published 0600 (as every store written before the fix was):
/// manifests, links, index.json and the served documents.
fn close_files(root: &Path) {
    for e in walkdir::WalkDir::new(root).into_iter().map(|e| e.unwrap()) {
        if e.file_type().is_file() {
            fs::set_permissions(e.path(), fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
}

fn pull_every_tag(fx: &Fixtures, addr: &str) {
    for (repo, tag, digest) in fx.all_refs() {
        let raw = skopeo_inspect_raw(
            &format!("docker://{addr}/{repo}:{tag}"),
            &["--tls-verify=false"],
        );
        assert_eq!(sha256_digest(&raw), digest, "{repo}:{tag}");
    }
}

/// Issue: stock nginx answered 403 for every manifest, because the store published
/// manifests, index.json and the served documents 0600 and the tests ran nginx's
/// workers as root. A store fetched by root is served by workers running as nobody.
#[tokio::test(flavor = "multi_thread")]
async fn store_fetched_as_root_is_pulled_through_nginx_workers_running_as_nobody() {
    assert!(
        running_as_root(),
        "this test needs root (as CI runs it): nginx must switch its workers to nobody"
    );
    let (fx, root) = fetched_store().await;
    let closed = closed_entries(root.path());
    assert!(
        closed.is_empty(),
        "published entries others cannot read: {closed:#?}"
    );

    let (config, warnings) = gen_conf(root.path(), &[]);
    assert!(warnings.is_empty(), "{warnings}");
    let nginx = serve(&config);
    let uids: Vec<u32> = nginx.workers().iter().map(|w| w.1).collect();
    assert!(
        !uids.is_empty() && uids.iter().all(|&u| u == NOBODY_UID),
        "workers run as {uids:?}"
    );
    let addr = nginx.addr();
    let fx2 = fx.clone();
    tokio::task::spawn_blocking(move || pull_every_tag(&fx2, &addr))
        .await
        .unwrap();
    let dest = crate::harness::served_tempdir("it-copy-");
    let src = format!("docker://{}/oci/multi:1.0", nginx.addr());
    let dst = format!("oci:{}/copy:1.0", dest.path().display());
    tokio::task::spawn_blocking(move || {
        skopeo(&["copy", "--all", "--src-tls-verify=false", &src, &dst]);
    })
    .await
    .unwrap();
}

/// A store written before the fix (files 0600): nginx's 403 reaches clients as an OCI
/// JSON error naming the fix; verify reports it; `verify --repair` and the next fetch
/// each repair it; gen-conf warns about it and about a directory nginx cannot enter.
#[tokio::test(flavor = "multi_thread")]
async fn store_written_0600_is_reported_and_repaired_by_verify_and_by_the_next_fetch() {
    assert!(
        running_as_root(),
        "this test needs root (as CI runs it): nginx must switch its workers to nobody"
    );
    let (reg, fx, root) = crate::harness::store::registry_with_fixtures().await;
    let refs = crate::harness::store::all_tag_refs(&reg, &fx);
    crate::harness::store::fetch_ok(root.path(), &refs);
    let r = root.path();
    let root_arg = r.to_str().unwrap();
    // As an old version left it: no "served-modes" in the marker, files 0600.
    fs::write(r.join(".static-registry"), r#"{"format":1}"#).unwrap();
    close_files(r);

    let (config, warnings) = gen_conf(r, &[]);
    assert!(
        warnings.contains("_catalog.json is not readable by others")
            && warnings.contains("--repair"),
        "{warnings}"
    );
    let nginx = serve(&config);
    let m = fx.manifest("docker/multi", "v1");
    let url = format!("{}/v2/docker/multi/manifests/v1", nginx.url());
    for method in [Method::GET, Method::HEAD] {
        let (status, h, body) = request(method.clone(), &url).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method}");
        assert_eq!(header(&h, "content-type"), "application/json");
        if method == Method::GET {
            assert_eq!(error_code(&body), "DENIED");
            assert!(String::from_utf8_lossy(&body).contains("--repair"));
        }
    }
    let (status, _, body) = request(
        Method::GET,
        &format!("{}/v2/docker/multi/tags/list", nginx.url()),
    )
    .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::FORBIDDEN, "DENIED")
    );

    let out = static_registry(&["verify", "--root", root_arg]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot be read by other users") && stderr.contains("--repair"),
        "{stderr}"
    );

    // The next fetch repairs the store it opens, though every tag is unchanged.
    crate::harness::store::fetch_ok(r, &refs[..1]);
    assert_eq!(closed_entries(r), Vec::<String>::new());
    let (status, _, body) = request(Method::GET, &url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, m.bytes);

    // And `verify --repair`, for a store nobody fetches into.
    close_files(r);
    let out = static_registry(&["verify", "--root", root_arg, "--repair"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("repaired: ") && stderr.contains("clean"),
        "{stderr}"
    );
    let addr = nginx.addr();
    let fx2 = fx.clone();
    tokio::task::spawn_blocking(move || pull_every_tag(&fx2, &addr))
        .await
        .unwrap();

    // A store in a directory nginx's workers cannot enter, like /root.
    let closed = tempfile::Builder::new()
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir()
        .unwrap();
    let inner = closed.path().join("images");
    crate::harness::store::fetch_ok(&inner, &refs[..1]);
    let (_, warnings) = gen_conf(&inner, &[]);
    assert!(
        warnings.contains(&format!("cannot traverse {}", closed.path().display())),
        "{warnings}"
    );
}
