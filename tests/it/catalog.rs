//! The catalog page at `/`: rendered into the store by fetch, served by nginx and by
//! `serve`, looked at in headless Chromium.

use reqwest::{Method, StatusCode};

use crate::both_fronts;
use crate::genconf::{fetched_store, header, one_manifest_per_tag, request};
use crate::harness::browser::{dump_dom, screenshot};
use crate::harness::front::{Front, Kind};
use crate::harness::store::{fetch_ok, registry_with_fixtures, static_registry};

/// The page's DOM as Chromium renders it (off the async workers).
async fn dom(url: String) -> String {
    tokio::task::spawn_blocking(move || dump_dom(&url))
        .await
        .unwrap()
}

both_fronts!(the_catalog_page_lists_every_repository_and_pages_thousands_of_tags);
/// Chromium renders the index (every repository, linked) and a repository's page (tags,
/// digests, platforms, sizes, the SBOM that refers to an image, pull lines naming the
/// address the browser used); a repository with 450 tags is split into pages that link
/// each other; a screenshot shows a page, not a blank.
async fn the_catalog_page_lists_every_repository_and_pages_thousands_of_tags(kind: Kind) {
    let (fx, root) = fetched_store().await;
    let r = root.path();
    let tags: Vec<String> = (0..450).map(|i| format!("v{i:04}")).collect();
    one_manifest_per_tag(r, "big/list", &tags);
    // Any run of a writer renders the pages that are older than their repository.
    let out = static_registry(&["rm", "--root", r.to_str().unwrap(), "many/tags:t000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let front = Front::start(kind, r, &[]);
    let addr = front.addr();
    let url = |p: &str| format!("{}{p}", front.url());

    let (status, h, _) = request(Method::GET, &url("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "content-type"), "text/html; charset=utf-8");
    let home = dom(url("/")).await;
    for repo in fx.repos() {
        assert!(
            home.contains(&format!("href=\"/r/{repo}/\"")),
            "{repo} not linked:\n{home}"
        );
    }

    let (web_tag, web_digest) = fx
        .all_refs()
        .into_iter()
        .find(|(repo, _, digest)| repo == "apps/web" && *digest == fx.artifact_subject)
        .map(|(_, tag, digest)| (tag, digest))
        .expect("the SBOM's subject is tagged");
    let web = dom(url("/r/apps/web/")).await;
    assert!(
        web.contains(&format!("docker pull {addr}/apps/web:{web_tag}")),
        "{web}"
    );
    assert!(
        web.contains(&format!("podman pull {addr}/apps/web@{web_digest}")),
        "{web}"
    );
    assert!(
        web.contains("SBOM (application/vnd.example.sbom.v1)"),
        "{web}"
    );
    assert!(
        !web.contains("__STATIC_REGISTRY"),
        "a placeholder is left:\n{web}"
    );
    let multi = dom(url("/r/oci/multi/")).await;
    assert!(
        multi.contains("linux/amd64") && multi.contains("linux/arm64"),
        "{multi}"
    );
    // t000 was removed by rm: its row is gone.
    let many = dom(url("/r/many/tags/")).await;
    assert!(!many.contains("many/tags:t000") && many.contains("many/tags:t001"));

    let last = dom(url("/r/big/list/page/3")).await;
    assert!(last.contains("page 3 of 3"), "{last}");
    assert!(last.contains("big/list:v0449") && !last.contains("big/list:v0399"));
    assert!(last.contains("href=\"/r/big/list/page/2\""), "{last}");
    let (status, _, body) = request(Method::GET, &url("/r/big/list/page/4")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(crate::genconf::error_code(&body), "NOT_FOUND");

    let dir = tempfile::tempdir().unwrap();
    let (page, blank) = tokio::task::spawn_blocking({
        let (u, dir) = (url("/r/apps/web/"), dir.path().to_owned());
        move || {
            (
                screenshot(&u, &dir.join("web.png")),
                screenshot("about:blank", &dir.join("blank.png")),
            )
        }
    })
    .await
    .unwrap();
    assert!(
        page > 3 * blank,
        "the page's screenshot ({page} B) looks blank ({blank} B)"
    );
}

/// A fetch renders the pages of what it published, and pull auth covers the page.
#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_renders_the_pages_and_pull_auth_covers_them() {
    let (reg, _fx, root) = registry_with_fixtures().await;
    let r = root.path();
    fetch_ok(r, &[format!("{}/base/alpine:latest", reg.addr())]);
    assert!(r.join(".v2/_index.html").is_file());
    assert!(r.join(".v2/base/alpine/_page-1.html").is_file());
    let dir = crate::harness::served_tempdir("it-page-auth-");
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("u:{}\n", bcrypt::hash("p", 4).unwrap())).unwrap();
    for kind in [Kind::Nginx, Kind::Serve] {
        let front = Front::start(kind, r, &["--htpasswd", htpasswd.to_str().unwrap()]);
        for path in ["/", "/r/base/alpine/"] {
            let (status, h, _) = request(Method::GET, &format!("{}{path}", front.url())).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{kind:?} {path}");
            assert!(header(&h, "www-authenticate").starts_with("Basic"));
            let resp = reqwest::Client::new()
                .get(format!("{}{path}", front.url()))
                .basic_auth("u", Some("p"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{kind:?} {path}");
            assert!(resp.text().await.unwrap().contains("alpine"));
        }
    }
}
