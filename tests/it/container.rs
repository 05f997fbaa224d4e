//! The image run as the old static-registry image ran:
//! `docker run --read-only --mount type=tmpfs,destination=/run
//! --mount type=tmpfs,destination=/var/cache/nginx` with the store bind-mounted read-only
//! at /var/lib/images. podman runs it here, on the host's network instead of `-p`.

use std::time::{Duration, Instant};

use crate::harness::image::{Container, TestImage};
use crate::harness::skopeo::{inspect_raw_insecure, skopeo};
use crate::harness::store::{fetch_ok, registry_with_fixtures};
use crate::harness::{raw_http_get, served_tempdir};

/// Before, the entrypoint wrote its nginx config under /etc/nginx/conf.d and a read-only
/// root stopped the container at once. Now everything written is on the two tmpfs
/// mounts: the store pulls under the old name prefix, and after a fetch on the host
/// `static-registry-nginx reload` in the container serves the new tag.
#[tokio::test(flavor = "multi_thread")]
async fn the_image_runs_with_a_read_only_root_as_the_old_one_did_and_reload_serves_a_new_fetch() {
    let (reg, fx, _) = registry_with_fixtures().await;
    let store = served_tempdir("it-image-store-");
    fetch_ok(
        store.path(),
        &[format!("{}/base/alpine:latest", reg.addr())],
    );
    let image = TestImage::build();
    let store_mount = format!(
        "type=bind,source={},destination=/var/lib/images,ro",
        store.path().display()
    );
    let c = Container::run(
        &image,
        &[
            // Only the tmpfs mounts below are writable: podman's own tmpfs on /run,
            // /tmp and /var/tmp would hide a write anywhere else.
            "--read-only",
            "--read-only-tmpfs=false",
            "--mount",
            &store_mount,
            "--mount",
            "type=tmpfs,destination=/run",
            "--mount",
            "type=tmpfs,destination=/var/cache/nginx",
            "--env",
            "STATIC_REGISTRY_NAME_PREFIX=mirror",
        ],
    );
    let addr = c.addr().to_owned();
    assert_eq!(
        inspect_raw_insecure(&addr, "mirror/base/alpine:latest"),
        fx.manifest("base/alpine", "latest").bytes,
        "{}",
        c.logs()
    );
    let pulled = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{addr}/mirror/base/alpine:latest"),
        &format!("dir:{}", pulled.path().display()),
    ]);

    fetch_ok(store.path(), &[format!("{}/apps/web:v1", reg.addr())]);
    let new_tag = "/v2/mirror/apps/web/manifests/v1";
    let status = || raw_http_get(&addr, new_tag, Duration::from_secs(5)).unwrap();
    assert_eq!(status(), 404);
    let out = c.exec(&["static-registry-nginx", "reload"]);
    assert!(
        out.status.success(),
        "reload failed:\n{}\n--- container log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    // nginx's workers swap after the reload signal, not before it returns.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status() != 200 {
        assert!(
            Instant::now() < deadline,
            "{new_tag} not served after reload:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        inspect_raw_insecure(&addr, "mirror/apps/web:v1"),
        fx.manifest("apps/web", "v1").bytes
    );
}
