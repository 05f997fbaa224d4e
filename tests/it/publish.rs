//! `publish` to a real S3 server (Ceph RGW) and `gen-conf --s3-origin`: a front with
//! no store serves every tag from the bucket to skopeo, containerd and plain HTTP.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::genconf::{LISTEN, fetched_store, header, request};
use crate::harness::clients::Containerd;
use crate::harness::nginx::Nginx;
use crate::harness::rgw::Rgw;
use crate::harness::run_with_timeout;
use crate::harness::skopeo::skopeo;
use crate::harness::store::{fetch_ok, registry_with_fixtures, static_registry};

const BUCKET: &str = "mirror";
const PREFIX: &str = "regions/eu";

/// `static-registry publish --root ROOT s3://mirror/regions/eu ...` with the server's
/// credentials in the environment: (exit code, JSON report, stderr).
fn publish(rgw: &Rgw, root: &Path, extra: &[&str]) -> (i32, Value, String) {
    publish_env(rgw, root, extra, &[])
}

fn publish_env(
    rgw: &Rgw,
    root: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (i32, Value, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_static-registry"));
    cmd.envs(env.iter().copied());
    cmd.args(["publish", "--root", root.to_str().unwrap()])
        .arg(format!("s3://{BUCKET}/{PREFIX}"))
        .args(["--endpoint-url", &rgw.endpoint(), "--json"])
        .args(extra);
    for (k, v) in rgw.env() {
        cmd.env(k, v);
    }
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, stderr)
}

fn publish_ok(rgw: &Rgw, root: &Path, extra: &[&str]) -> Value {
    let (code, json, stderr) = publish(rgw, root, extra);
    assert_eq!(code, 0, "publish failed:\n{stderr}");
    json
}

fn bucket_with_anonymous_reads() -> Rgw {
    let rgw = Rgw::start();
    rgw.create_bucket(BUCKET);
    rgw.allow_anonymous_read(BUCKET);
    rgw
}

/// nginx running `gen-conf --s3-origin` for the bucket, with its cache in `cache`.
fn front(rgw: &Rgw, cache: &Path) -> Nginx {
    let origin = format!("{}/{BUCKET}/{PREFIX}", rgw.endpoint());
    let out = static_registry(&[
        "gen-conf",
        "--s3-origin",
        &origin,
        "--listen",
        LISTEN,
        "--proxy-cache",
        cache.to_str().unwrap(),
        "--proxy-cache-size",
        "100m",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "gen-conf --s3-origin failed:\n{stderr}"
    );
    let config = String::from_utf8(out.stdout).unwrap();
    crate::genconf::serve(&config)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_published_store_is_pulled_through_a_front_with_no_store() {
    let (fx, root) = fetched_store().await;
    let rgw = bucket_with_anonymous_reads();
    let first = publish_ok(&rgw, root.path(), &[]);
    let objects = first["objects"].as_u64().unwrap();
    assert_eq!(first["uploaded"], objects, "{first}");
    assert_eq!(first["skipped"], 0, "{first}");
    let in_bucket = rgw.objects(BUCKET);
    assert_eq!(in_bucket.len() as u64, objects, "{in_bucket:?}");
    // One object per blob in the pool, however many repositories share it.
    let shared = fx.base_layer.trim_start_matches("sha256:");
    let copies = in_bucket
        .iter()
        .filter(|(k, _)| k.ends_with(shared))
        .count();
    let base_repos = crate::harness::fixtures::BASE_REPOS.len();
    assert_eq!(
        copies,
        1 + base_repos,
        "one pool object and a link per repository"
    );

    // Tags carry the digest and media type as object metadata.
    let m = fx.manifest("base/alpine", "latest");
    let (status, headers, body) =
        rgw.get(BUCKET, &format!("{PREFIX}/v2/base/alpine/manifests/latest"));
    assert_eq!((status, body.as_slice()), (200, m.bytes.as_slice()));
    let meta = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(meta("x-amz-meta-digest"), m.digest);
    assert_eq!(meta("content-type"), m.media_type);

    let cache = tempfile::tempdir().unwrap();
    let nginx = front(&rgw, cache.path());
    let url = nginx.url();
    for (repo, tag, digest) in fx.all_refs() {
        let m = fx.manifest(&repo, &tag);
        for reference in [tag.as_str(), digest.as_str()] {
            let at = format!("{url}/v2/{repo}/manifests/{reference}");
            for method in [Method::GET, Method::HEAD] {
                let (status, h, body) = request(method.clone(), &at).await;
                assert_eq!(status, StatusCode::OK, "{method} {at}");
                assert_eq!(header(&h, "docker-content-digest"), digest, "{method} {at}");
                assert_eq!(header(&h, "content-type"), m.media_type, "{method} {at}");
                assert_eq!(
                    header(&h, "content-length"),
                    m.bytes.len().to_string(),
                    "{method} {at}"
                );
                if method == Method::GET {
                    assert_eq!(body, m.bytes, "{at}");
                }
                assert!(h.get("x-amz-meta-digest").is_none(), "{at}");
            }
        }
        for blob in &m.blobs {
            let at = format!("{url}/v2/{repo}/blobs/{blob}");
            let (status, h, body) = request(Method::GET, &at).await;
            assert_eq!(status, StatusCode::OK, "{at}");
            assert_eq!(header(&h, "docker-content-digest"), blob, "{at}");
            assert_eq!(body, fx.blob(blob), "{at}");
            let (status, h, _) = request(Method::HEAD, &at).await;
            assert_eq!(status, StatusCode::OK, "HEAD {at}");
            assert_eq!(header(&h, "docker-content-digest"), blob, "HEAD {at}");
            let length = fx.blob(blob).len().to_string();
            assert_eq!(header(&h, "content-length"), length, "HEAD {at}");
        }
    }
    // A tag answered from nginx's cache still names its digest.
    let at = format!("{url}/v2/base/alpine/manifests/latest");
    let (_, h, _) = request(Method::GET, &at).await;
    assert_eq!(header(&h, "x-cache-status"), "HIT");
    assert_eq!(header(&h, "docker-content-digest"), m.digest);

    // Range on a blob: 206 with the asked bytes.
    let layer = &fx.base_layer;
    let resp = reqwest::Client::new()
        .get(format!("{url}/v2/base/alpine/blobs/{layer}"))
        .header("Range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(resp.headers(), "docker-content-digest"), *layer);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &fx.blob(layer)[..10]);

    // A repository serves only its own blobs, though the pool holds them all.
    let foreign = fx
        .repo_blobs("oci/multi")
        .into_iter()
        .find(|b| !fx.repo_blobs("base/alpine").contains(b))
        .unwrap();
    let (status, _, body) = request(
        Method::GET,
        &format!("{url}/v2/base/alpine/blobs/{foreign}"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("BLOB_UNKNOWN"));

    // The lists, the errors, and a client's credentials never reaching the bucket.
    let (status, _, body) = request(Method::GET, &format!("{url}/v2/base/alpine/tags/list")).await;
    assert_eq!(status, StatusCode::OK);
    let list: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list["tags"], serde_json::json!(fx.tags("base/alpine")));
    let (status, _, body) = request(Method::GET, &format!("{url}/v2/_catalog?n=1")).await;
    assert_eq!(status, StatusCode::OK);
    let catalog: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!(fx.repos()));
    for (at, code) in [
        ("/v2/base/alpine/manifests/nope", "MANIFEST_UNKNOWN"),
        ("/v2/no/such/tags/list", "NAME_UNKNOWN"),
        ("/v2/base/alpine/manifests/sha256:zz", "DIGEST_INVALID"),
    ] {
        let (status, h, body) = request(Method::GET, &format!("{url}{at}")).await;
        assert!(status.is_client_error(), "{at}: {status}");
        assert_eq!(header(&h, "content-type"), "application/json", "{at}");
        assert!(String::from_utf8_lossy(&body).contains(code), "{at}");
    }
    let (status, h, body) = request(
        Method::GET,
        &format!("{url}/v2/base/alpine/referrers/{}", m.digest),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        header(&h, "content-type"),
        "application/vnd.oci.image.index.v1+json"
    );
    assert!(serde_json::from_slice::<Value>(&body).unwrap()["manifests"].is_array());
    let (status, _, _) = request(Method::PUT, &format!("{url}/v2/base/alpine/manifests/x")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let resp = reqwest::Client::new()
        .get(format!("{url}/v2/apps/web/manifests/v1"))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the bucket refused a forwarded Authorization"
    );

    // The catalog page and a repository's page, with the address pulled from filled in.
    let (status, h, body) = request(Method::GET, &format!("{url}/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(header(&h, "content-type").starts_with("text/html"));
    // (tera escapes `/` in names as an entity.)
    let text = |body: Vec<u8>| String::from_utf8(body).unwrap().replace("&#x2F;", "/");
    let index = text(body);
    assert!(index.contains("base/alpine") && !index.contains("__STATIC_REGISTRY"));
    let (status, _, body) = request(Method::GET, &format!("{url}/r/base/alpine/")).await;
    assert_eq!(status, StatusCode::OK);
    let page = text(body);
    let pull = format!("docker pull {}/base/alpine:latest", nginx.addr());
    assert!(page.contains(&pull), "{page}");
    let (status, _, body) = request(Method::GET, &format!("{url}/r/base/alpine/page/9")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("NOT_FOUND"));

    // Real clients: skopeo copies and containerd (which needs Docker-Content-Digest)
    // pulls every tag.
    let addr = nginx.addr();
    // Every image tag: not the foreign layer's (fetched from its own URL), nor the
    // referrers' fallback tags (an index of artifacts, no image to unpack).
    let images: Vec<String> = fx
        .all_refs()
        .into_iter()
        .filter(|(repo, tag, _)| !repo.starts_with("foreign/") && !tag.starts_with("sha256-"))
        .map(|(repo, tag, _)| format!("{addr}/{repo}:{tag}"))
        .collect();
    tokio::task::spawn_blocking(move || {
        let containerd = Containerd::start();
        let dirs = tempfile::tempdir().unwrap();
        for (i, image) in images.iter().enumerate() {
            let dir = dirs.path().join(i.to_string());
            let out = skopeo(&[
                "copy",
                "--all",
                "--src-tls-verify=false",
                &format!("docker://{image}"),
                &format!("dir:{}", dir.display()),
            ]);
            assert!(
                out.status.success(),
                "skopeo copy {image}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            containerd.pull(image);
        }
    })
    .await
    .unwrap();

    // Nothing changed: nothing is uploaded.
    let again = publish_ok(&rgw, root.path(), &[]);
    assert_eq!(again["uploaded"], 0, "{again}");
    assert_eq!(again["skipped"], objects, "{again}");
}

#[tokio::test(flavor = "multi_thread")]
async fn republish_sends_only_what_changed_and_delete_removes_what_the_store_dropped() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let r = root.path();
    let alpine = format!("{}/base/alpine:latest", reg.addr());
    let web = format!("{}/apps/web:v1", reg.addr());
    fetch_ok(r, &[alpine.clone(), web.clone()]);
    let rgw = bucket_with_anonymous_reads();

    // Killed after the blobs, then after the manifests and links: each time the bucket
    // holds only content nothing names yet, and the next publish sends just the rest.
    let crash = "STATIC_REGISTRY_CRASH_AT";
    let (code, _, stderr) = publish_env(&rgw, r, &[], &[(crash, "bucket-phase:1")]);
    assert_ne!(code, 0, "{stderr}");
    let pool = format!("{PREFIX}/blobs/sha256/");
    let keys = rgw.objects(BUCKET);
    assert!(!keys.is_empty(), "the blobs went up first");
    assert!(keys.iter().all(|(k, _)| k.starts_with(&pool)), "{keys:?}");
    let (code, _, stderr) = publish_env(&rgw, r, &[], &[(crash, "bucket-phase:2")]);
    assert_ne!(code, 0, "{stderr}");
    let keys = rgw.objects(BUCKET);
    let named_by_digest = |k: &str| {
        k.starts_with(&pool) || k.contains("/manifests/sha256:") || k.contains("/blobs/sha256:")
    };
    assert!(keys.iter().any(|(k, _)| k.contains("/manifests/sha256:")));
    assert!(keys.iter().all(|(k, _)| named_by_digest(k)), "{keys:?}");
    let first = publish_ok(&rgw, r, &[]);
    assert_eq!(
        first["uploaded"].as_u64().unwrap() + keys.len() as u64,
        first["objects"].as_u64().unwrap(),
        "{first}"
    );

    // A new tag upstream on content the bucket has: the tag, its list and nothing else.
    let retagged = format!("{}/base/alpine:again", reg.addr());
    let out = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{alpine}"),
        &format!("docker://{retagged}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fetch_ok(r, &[retagged]);
    let m = fx.manifest("base/alpine", "latest");
    let second = publish_ok(&rgw, r, &[]);
    let list = std::fs::read(r.join(".v2/base/alpine/_tags.json")).unwrap();
    let page = std::fs::read(r.join(".v2/base/alpine/_page-1.html")).unwrap();
    assert_eq!(
        second["uploaded"], 3,
        "the tag, its list and its page: {second}"
    );
    assert_eq!(
        second["uploaded_bytes"],
        (m.bytes.len() + list.len() + page.len()) as u64,
        "{second}"
    );

    // A new repository: its blobs and manifests (only those the pool lacks), then the
    // catalog.
    let api = format!("{}/apps/api:v1", reg.addr());
    fetch_ok(r, &[api]);
    let third = publish_ok(&rgw, r, &[]);
    let api_blobs = fx.repo_blobs("apps/api");
    let new_blobs = api_blobs
        .iter()
        .filter(|b| {
            !fx.repo_blobs("base/alpine").contains(*b) && !fx.repo_blobs("apps/web").contains(*b)
        })
        .count();
    let api_manifest = fx.manifest("apps/api", "v1");
    // pool: new blobs + the manifest; links: every blob + the manifest; the manifest by
    // digest and by tag; the tags list; the catalog; the catalog page and the new
    // repository's page.
    let expected = new_blobs + 1 + api_blobs.len() + 1 + 2 + 1 + 1 + 2;
    assert_eq!(third["uploaded"], expected as u64, "{third}");
    assert!(api_manifest.tags.contains(&"v1".to_owned()));

    // Removed from the store: without --delete the objects stay (and are counted);
    // with it they go, tags before blobs, and the bucket is the layout exactly.
    let rm = static_registry(&["rm", "--root", r.to_str().unwrap(), "apps/web"]);
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    let prune = static_registry(&["prune", "--root", r.to_str().unwrap()]);
    assert!(
        prune.status.success(),
        "{}",
        String::from_utf8_lossy(&prune.stderr)
    );
    let kept = publish_ok(&rgw, r, &[]);
    assert!(kept["stale"].as_u64().unwrap() > 0, "{kept}");
    assert_eq!(kept["deleted"], 0, "{kept}");
    let web_key = format!("{PREFIX}/v2/apps/web/manifests/v1");
    assert!(rgw.objects(BUCKET).iter().any(|(k, _)| *k == web_key));
    // A store that serves nothing (say, a wrong --root) does not empty the bucket.
    let empty = crate::harness::served_tempdir("it-store-");
    let marker = ".static-registry";
    std::fs::copy(r.join(marker), empty.path().join(marker)).unwrap();
    let (code, _, stderr) = publish(&rgw, empty.path(), &["--delete"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("nothing was deleted"), "{stderr}");
    assert_eq!(
        rgw.objects(BUCKET).len() as u64,
        kept["objects"].as_u64().unwrap() + kept["stale"].as_u64().unwrap()
    );
    let deleted = publish_ok(&rgw, r, &["--delete"]);
    assert_eq!(deleted["deleted"], kept["stale"], "{deleted}");
    assert_eq!(deleted["stale"], 0, "{deleted}");
    let left = rgw.objects(BUCKET);
    assert_eq!(
        left.len() as u64,
        deleted["objects"].as_u64().unwrap(),
        "{left:?}"
    );
    assert!(
        !left.iter().any(|(k, _)| k.contains("/apps/web/")),
        "{left:?}"
    );
    // The shared base layer stays: base/alpine and apps/api still hold it.
    let shared = format!(
        "{PREFIX}/blobs/sha256/{}",
        fx.base_layer.trim_start_matches("sha256:")
    );
    assert!(left.iter().any(|(k, _)| *k == shared));
    assert!(first["objects"].as_u64().unwrap() < deleted["objects"].as_u64().unwrap() + 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_refuses_bad_urls_credentials_and_buckets_with_what_to_do_and_reads_aws_profiles() {
    let (reg, _fx, root) = registry_with_fixtures().await;
    let r = root.path().to_str().unwrap();
    // A URL that is no bucket: a usage error before the store or any request.
    let out = static_registry(&["publish", "--root", r, "https://bucket/x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("s3://<bucket>"));
    let out = static_registry(&["publish", "--root", r, "s3://bucket/../x"]);
    assert_eq!(out.status.code(), Some(2));

    fetch_ok(root.path(), &[format!("{}/base/alpine:latest", reg.addr())]);
    let rgw = Rgw::start();
    // The bucket does not exist.
    let (code, _, stderr) = publish(&rgw, root.path(), &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("hint: create the bucket first"), "{stderr}");
    // Wrong credentials.
    rgw.create_bucket(BUCKET);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_static-registry"));
    cmd.args(["publish", "--root", r])
        .arg(format!("s3://{BUCKET}/{PREFIX}"))
        .args(["--endpoint-url", &rgw.endpoint()])
        .env("AWS_ACCESS_KEY_ID", "nobody")
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .env("AWS_REGION", "us-east-1");
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("hint: check the credentials"), "{stderr}");

    // The AWS CLI's files: keys from the credentials file, endpoint and region from the
    // config file, for the profile AWS_PROFILE names.
    let home = tempfile::tempdir().unwrap();
    let aws = home.path().join(".aws");
    std::fs::create_dir(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        format!(
            "[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong\n\n[ceph]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            rgw.access_key(),
            rgw.secret_key()
        ),
    )
    .unwrap();
    std::fs::write(
        aws.join("config"),
        format!(
            "[profile ceph]\nregion = us-east-1\nendpoint_url = {}\n",
            rgw.endpoint()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_static-registry"));
    cmd.args(["publish", "--root", r, "--json"])
        .arg(format!("s3://{BUCKET}/{PREFIX}"))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_REGION")
        .env_remove("AWS_ENDPOINT_URL")
        .env("HOME", home.path())
        .env("AWS_PROFILE", "ceph");
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["uploaded"].as_u64().unwrap() > 0, "{json}");
}

/// A blob from 64 MiB on goes up as a multipart upload; it must arrive whole and in
/// order, and a republish must recognise it (its ETag is no MD5).
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_larger_than_a_part_arrives_whole_and_is_not_sent_again() {
    let reg = crate::harness::registry::Registry::start();
    // 70 MiB that differ in every 4 bytes, so a part out of order or twice would show.
    let layer: Vec<u8> = (0..(70u32 << 20) / 4).flat_map(u32::to_le_bytes).collect();
    let layer_digest = reg.push_blob("big/one", &layer).await;
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = reg.push_blob("big/one", config).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}],
    })
    .to_string();
    let oci = "application/vnd.oci.image.manifest.v1+json";
    reg.push_manifest("big/one", "1", oci, manifest.as_bytes())
        .await;
    let root = crate::harness::served_tempdir("it-store-");
    fetch_ok(root.path(), &[format!("{}/big/one:1", reg.addr())]);
    drop(layer);

    let rgw = bucket_with_anonymous_reads();
    publish_ok(&rgw, root.path(), &[]);
    let key = format!(
        "{PREFIX}/blobs/sha256/{}",
        layer_digest.trim_start_matches("sha256:")
    );
    let (status, headers, body) = rgw.get(BUCKET, &key);
    assert_eq!(status, 200);
    assert_eq!(crate::harness::sha256_digest(&body), layer_digest);
    let etag = headers
        .iter()
        .find(|(k, _)| k == "etag")
        .map(|(_, v)| v.as_str());
    assert!(
        etag.is_some_and(|e| e.contains('-')),
        "not a multipart upload: {etag:?}"
    );
    let again = publish_ok(&rgw, root.path(), &[]);
    assert_eq!(again["uploaded"], 0, "{again}");
}
