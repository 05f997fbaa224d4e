//! The README's deployment on a distribution's stock nginx: its nginx.conf including
//! conf.d/ and sites-enabled/, Debian's default site (`default_server`, `server_name _`)
//! on the same address and port, workers as an unprivileged user; the generated file
//! installed into conf.d/ with `gen-conf --install`, as the README does.

use std::fs;
use std::path::Path;

use reqwest::{Method, StatusCode};

use crate::genconf::{fetched_store, request};
use crate::harness::clients::podman_pull;
use crate::harness::nginx::Nginx;
use crate::harness::skopeo::skopeo_inspect_raw;
use crate::harness::store::static_registry;
use crate::harness::{served_tempdir, sha256_digest};

/// Debian 12's `sites-enabled/default`, comments dropped, on the test's address.
fn debian_default_site(addr: &str, www: &Path) -> String {
    format!(
        "server {{\n\tlisten {addr} default_server;\n\troot {};\n\tindex index.html index.htm index.nginx-debian.html;\n\tserver_name _;\n\tlocation / {{\n\t\ttry_files $uri $uri/ =404;\n\t}}\n}}\n",
        www.display()
    )
}

fn gen_conf_into(root: &Path, etc: &Path, addr: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "gen-conf",
        "--root",
        root.to_str().unwrap(),
        "--listen",
        addr,
        "--nginx-conf",
    ];
    let conf = etc.join("nginx.conf");
    args.push(conf.to_str().unwrap());
    args.extend_from_slice(extra);
    static_registry(&args)
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_deployment_works_on_debian_stock_nginx_with_its_default_site_enabled() {
    let (fx, root) = fetched_store().await;
    let etc = served_tempdir("it-etc-nginx-");
    let e = etc.path();
    for dir in ["conf.d", "sites-enabled", "www"] {
        fs::create_dir_all(e.join(dir)).unwrap();
    }
    fs::write(
        e.join("www/index.nginx-debian.html"),
        "<h1>Welcome to nginx!</h1>",
    )
    .unwrap();
    let includes = "    include {{TMP}}/conf.d/*.conf;\n    include {{TMP}}/sites-enabled/*;\n";
    let nginx = Nginx::start_with(e, includes, |port| {
        let site = debian_default_site(&format!("127.0.0.1:{port}"), &e.join("www"));
        fs::write(e.join("sites-enabled/default"), site).unwrap();
    });
    let addr = nginx.addr();
    let port = addr.rsplit_once(':').unwrap().1.to_owned();
    let installed = e.join("conf.d/static-registry.conf");
    let install = ["--install", installed.to_str().unwrap()];

    // As the issue found it: no server name loses to the default site; gen-conf says so.
    let out = gen_conf_into(root.path(), e, &addr, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} also listens on port {port}",
            e.join("sites-enabled/default").display()
        )) && stderr.contains("--server-name"),
        "{stderr}"
    );

    // The README's way: a server name, installed into conf.d/, checked and reloaded.
    let old_workers = nginx.workers();
    let out = gen_conf_into(
        root.path(),
        e,
        &addr,
        &[&["--server-name", "localhost"][..], &install].concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(stderr.contains("nginx reloaded"), "{stderr}");
    assert!(out.stdout.is_empty(), "--install prints no configuration");
    let by_name = format!("localhost:{port}");
    nginx.wait_for_new_workers(&old_workers);
    let (status, _, _) = request(Method::GET, &format!("http://{by_name}/v2/")).await;
    assert_eq!(status, StatusCode::OK);
    // By address, the default site still answers, as on the real host.
    let (status, _, body) = request(Method::GET, &format!("http://{addr}/v2/")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        String::from_utf8_lossy(&body).contains("nginx"),
        "the default site's 404 page"
    );

    let fx2 = fx.clone();
    let name = by_name.clone();
    tokio::task::spawn_blocking(move || {
        for (repo, tag, digest) in fx2.all_refs() {
            let raw = skopeo_inspect_raw(
                &format!("docker://{name}/{repo}:{tag}"),
                &["--tls-verify=false"],
            );
            assert_eq!(sha256_digest(&raw), digest, "{repo}:{tag}");
        }
        let podman = tempfile::tempdir().unwrap();
        for image in ["oci/multi:1.0", "docker/multi:v1"] {
            podman_pull(podman.path(), &format!("{name}/{image}"));
        }
    })
    .await
    .unwrap();

    // A configuration nginx rejects: the working file stays, nginx keeps serving it.
    let before = fs::read(&installed).unwrap();
    let templates = tempfile::tempdir().unwrap();
    for t in ["maps.conf.tera", "locations.conf.tera"] {
        fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("templates")
                .join(t),
            templates.path().join(t),
        )
        .unwrap();
    }
    fs::write(
        templates.path().join("registry.conf.tera"),
        "this is not nginx;\n",
    )
    .unwrap();
    let out = gen_conf_into(
        root.path(),
        e,
        &addr,
        &[
            &[
                "--server-name",
                "localhost",
                "--templates",
                templates.path().to_str().unwrap(),
            ][..],
            &install,
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("nginx -t rejected")
            && stderr.contains("previous file is back")
            && stderr.contains("hint: "),
        "{stderr}"
    );
    assert_eq!(fs::read(&installed).unwrap(), before);
    let leftovers: Vec<_> = fs::read_dir(e.join("conf.d"))
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec!["static-registry.conf"],
        "no temporary file left in conf.d"
    );
    let m = fx.manifest("docker/multi", "v1");
    let (status, _, body) = request(
        Method::GET,
        &format!("http://{by_name}/v2/docker/multi/manifests/v1"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, m.bytes);
}
