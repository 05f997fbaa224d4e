//! The signature policy: only images signed by a trusted key are published, each refusal
//! says why, the signatures are kept with the images, and the store can be re-checked.
//! Keys and signatures come from openssl (see `harness::cosign`).

use serde_json::Value;

use crate::harness::cosign::{Key, KeyType, Layer, Placement, push_signature};
use crate::harness::fixtures::Fixtures;
use crate::harness::front::Serve;
use crate::harness::registry::Registry;
use crate::harness::served_tempdir;
use crate::harness::service::Service;
use crate::harness::store::{fetch, registry_with_fixtures, run, tag_names, write_file};

/// Sign `repo:tag` of the fixtures with `layers` placed as `placement`.
async fn sign(
    reg: &Registry,
    fx: &Fixtures,
    repo: &str,
    tag: &str,
    layers: &[Layer],
    placement: Placement,
) {
    let m = fx.manifest(repo, tag);
    let subject = (m.digest.as_str(), m.media_type.as_str(), m.bytes.len());
    push_signature(reg, repo, subject, layers, placement).await;
}

/// The fetch report's entry for `repo:tag`.
fn image<'a>(json: &'a Value, repo: &str, tag: &str) -> &'a Value {
    json["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == repo && i["tag"] == tag)
        .unwrap_or_else(|| panic!("{repo}:{tag} not in {json:#}"))
}

fn assert_fetched(json: &Value, repo: &str, tag: &str) {
    assert_eq!(image(json, repo, tag)["status"], "fetched", "{json:#}");
}

fn error(json: &Value, repo: &str, tag: &str) -> String {
    let i = image(json, repo, tag);
    assert_eq!(i["status"], "failed", "{i:#}");
    i["error"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Whether the store has any tag of `repo`.
fn stored(root: &std::path::Path, repo: &str) -> bool {
    root.join(repo).join("index.json").exists() && !tag_names(root, repo).is_empty()
}

fn sig_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// Signed by the trusted key (as a `.sig` tag, and as a referrer) → stored with the
/// signature; unsigned, signed by another key, a payload naming another digest and a
/// malformed signature → each refused with its own reason and nothing of it stored. The
/// store then re-checks clean, a fetch through `serve` verifies against the mirror,
/// and a push with the policy sends only the signed.
#[tokio::test(flavor = "multi_thread")]
async fn only_images_signed_by_a_trusted_key_are_published_and_each_refusal_says_why() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let keys = tempfile::tempdir().unwrap();
    let trusted = Key::generate(keys.path(), "cosign", KeyType::EcdsaP256);
    let other = Key::generate(keys.path(), "other", KeyType::EcdsaP256);
    let web = fx.manifest("apps/web", "v1").digest.clone();
    let alpine = fx.manifest("base/alpine", "3.19").digest.clone();
    let multi = fx.manifest("docker/multi", "v1").digest.clone();
    sign(
        &reg,
        &fx,
        "apps/web",
        "v1",
        &[Layer::signed(&trusted, "apps/web", &web)],
        Placement::Tag,
    )
    .await;
    let by_other = Layer::signed(&other, "base/alpine", &alpine);
    sign(
        &reg,
        &fx,
        "base/alpine",
        "3.19",
        &[by_other],
        Placement::Tag,
    )
    .await;
    // A genuine signature of another image, put beside this one.
    let elsewhere = Layer::signed(&trusted, "a/b/c", &alpine);
    sign(&reg, &fx, "a/b/c", "1", &[elsewhere], Placement::Tag).await;
    let mut broken = Layer::signed(&trusted, "oci/zstd", &fx.manifest("oci/zstd", "1").digest);
    broken.signature = "not base64!".to_owned();
    sign(&reg, &fx, "oci/zstd", "1", &[broken], Placement::Tag).await;
    let as_referrer = Layer::signed(&trusted, "docker/multi", &multi);
    sign(
        &reg,
        &fx,
        "docker/multi",
        "v1",
        &[as_referrer],
        Placement::Referrer,
    )
    .await;

    let r = root.path();
    let refs: Vec<String> = [
        "apps/web:v1",
        "apps/api:v1",
        "base/alpine:3.19",
        "a/b/c:1",
        "oci/zstd:1",
        "docker/multi:v1",
    ]
    .iter()
    .map(|i| format!("{}/{i}", reg.addr()))
    .collect();
    let (code, json, stderr) = fetch(r, &refs, &["--verify-key", trusted.public_arg()]);
    assert_eq!(code, 1, "{stderr}");

    assert_fetched(&json, "apps/web", "v1");
    assert_fetched(&json, "docker/multi", "v1");
    let api = error(&json, "apps/api", "v1");
    assert!(
        api.contains("refused by the signature policy")
            && api.contains("no cosign signature: no tag"),
        "{api}"
    );
    let alpine_err = error(&json, "base/alpine", "3.19");
    assert!(alpine_err.contains("signed by another key"), "{alpine_err}");
    let abc = error(&json, "a/b/c", "1");
    let abc_digest = &fx.manifest("a/b/c", "1").digest;
    assert!(
        abc.contains(&format!(
            "the signed payload names {alpine}, not {abc_digest}"
        )),
        "{abc}"
    );
    let zstd = error(&json, "oci/zstd", "1");
    assert!(
        zstd.contains("malformed signature") && zstd.contains("not base64"),
        "{zstd}"
    );
    assert!(
        stderr.contains("refused by the signature policy"),
        "{stderr}"
    );

    // The signed images with their signatures; nothing of the refused ones.
    let web_tags = tag_names(r, "apps/web");
    assert!(
        web_tags.contains(&sig_tag(&web)) && web_tags.contains(&"v1".to_owned()),
        "{web_tags:?}"
    );
    for refused in ["apps/api", "base/alpine", "a/b/c", "oci/zstd"] {
        assert!(!stored(r, refused), "{refused} was stored");
    }
    let multi_tags = tag_names(r, "docker/multi");
    assert!(
        multi_tags.contains(&multi.replacen(':', "-", 1)),
        "{multi_tags:?}"
    );

    // Re-checked from the store alone.
    let root_arg = r.to_str().unwrap();
    let (code, _, stderr) = run(&[
        "verify",
        "--root",
        root_arg,
        "--verify-key",
        trusted.public_arg(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("signatures: 2 of 2 tagged images signed"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&[
        "verify",
        "--root",
        root_arg,
        "--verify-key",
        other.public_arg(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("apps/web:v1: ") && stderr.contains("signed by another key"),
        "{stderr}"
    );

    // The mirror serves the signatures: a client verifying against it passes.
    let serve = Serve::start(r, &[]);
    let again = served_tempdir("it-signed-");
    let through = [
        format!("{}/apps/web:v1", serve.addr),
        format!("{}/docker/multi:v1", serve.addr),
    ];
    let (code, _, stderr) = fetch(
        again.path(),
        &through,
        &["--verify-key", trusted.public_arg()],
    );
    assert_eq!(code, 0, "{stderr}");

    // push with the policy: an unsigned image the store holds stays behind.
    let (code, _, stderr) = fetch(r, &[refs[1].clone()], &[]);
    assert_eq!(code, 0, "{stderr}");
    let target = tokio::task::spawn_blocking(Registry::start).await.unwrap();
    let (code, json, stderr) = run(&[
        "push",
        "--root",
        root_arg,
        "--to",
        &target.addr(),
        "--dest-tls-verify=false",
        "--json",
        "--verify-key",
        trusted.public_arg(),
        "apps/web",
        "apps/api",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("apps/api:v1") && stderr.contains("no cosign signature: no tag"),
        "{stderr}\n{json:#}"
    );
    assert_eq!(
        target.manifest_digest("apps/web", "v1").await.as_deref(),
        Some(web.as_str())
    );
    assert!(
        target
            .manifest_digest("apps/web", &sig_tag(&web))
            .await
            .is_some(),
        "{json:#}"
    );
    assert_eq!(target.manifest_digest("apps/api", "v1").await, None);
}

/// `require: all` in a config entry asks every key (an RSA and an ECDSA signature in
/// one `.sig` manifest pass, the ECDSA one alone does not); a registry's `verify:`
/// covers its other images (an Ed25519 referrer signature).
#[tokio::test(flavor = "multi_thread")]
async fn require_all_asks_every_key_and_a_registry_policy_covers_its_images() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let keys = tempfile::tempdir().unwrap();
    let ecdsa = Key::generate(keys.path(), "ecdsa", KeyType::EcdsaP256);
    let rsa = Key::generate(keys.path(), "rsa", KeyType::Rsa);
    let ed = Key::generate(keys.path(), "ed", KeyType::Ed25519);
    let web = fx.manifest("apps/web", "v1").digest.clone();
    let api = fx.manifest("apps/api", "v1").digest.clone();
    let latest = fx.manifest("many/tags", "latest").digest.clone();
    let both = [
        Layer::signed(&ecdsa, "apps/web", &web),
        Layer::signed(&rsa, "apps/web", &web),
    ];
    sign(&reg, &fx, "apps/web", "v1", &both, Placement::Tag).await;
    sign(
        &reg,
        &fx,
        "apps/api",
        "v1",
        &[Layer::signed(&ecdsa, "apps/api", &api)],
        Placement::Tag,
    )
    .await;
    let by_ed = Layer::signed(&ed, "many/tags", &latest);
    sign(
        &reg,
        &fx,
        "many/tags",
        "latest",
        &[by_ed],
        Placement::Referrer,
    )
    .await;

    let a = reg.addr();
    let all = format!(
        "{{keys: [{}, {}], require: all}}",
        ecdsa.public_arg(),
        rsa.public_arg()
    );
    let config = write_file(
        keys.path(),
        "mirror.yaml",
        &format!(
            "registries:\n  \"{a}\": {{tls-verify: false, verify: {{keys: [{}]}}}}\nimages:\n  \
             - {{source: {a}/apps/web, tags: [v1], verify: {all}}}\n  \
             - {{source: {a}/apps/api, tags: [v1], verify: {all}}}\n  \
             - {{source: {a}/many/tags, tags: [latest]}}\n",
            ed.public_arg()
        ),
    );
    let r = root.path();
    let (code, json, stderr) = run(&[
        "fetch",
        "--root",
        r.to_str().unwrap(),
        "--config",
        &config,
        "--json",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert_fetched(&json, "apps/web", "v1");
    assert_fetched(&json, "many/tags", "latest");
    let refused = error(&json, "apps/api", "v1");
    assert!(
        refused.contains(&format!("not signed by {}", rsa.public_arg())),
        "{refused}"
    );
    assert!(!stored(r, "apps/api"));

    // sync holds to the same policy.
    let synced = served_tempdir("it-signed-sync-");
    let s = synced.path().to_str().unwrap();
    let (code, _, stderr) = run(&["sync", "--config", &config, "--once", "--root", s, "--json"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not signed by"), "{stderr}");
    assert!(stored(synced.path(), "apps/web") && !stored(synced.path(), "apps/api"));

    // A key file that is no public key is named before anything is fetched.
    let bad = write_file(
        keys.path(),
        "bad.yaml",
        &format!(
            "images:\n  - {{source: {a}/apps/web, tags: [v1], verify: {{keys: [{}], require: most}}}}\n",
            keys.path().join("ecdsa.key").display()
        ),
    );
    let (code, _, stderr) = run(&["fetch", "--root", r.to_str().unwrap(), "--config", &bad]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("images[0].verify.keys[0]") && stderr.contains("private key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("images[0].verify.require") && stderr.contains("\"most\""),
        "{stderr}"
    );
}

/// A platform-filtered fetch of a signed index checks the signature against the
/// upstream index's digest (what was signed), stores the cut index with that signature,
/// and `verify` re-checks it through the recorded upstream digest. `copy` holds to the
/// policy too.
#[tokio::test(flavor = "multi_thread")]
async fn a_platform_cut_of_a_signed_index_is_checked_against_the_signed_digest() {
    let (reg, fx, root) = registry_with_fixtures().await;
    let keys = tempfile::tempdir().unwrap();
    let key = Key::generate(keys.path(), "cosign", KeyType::EcdsaP256);
    let index = fx.manifest("oci/multi", "1.0").digest.clone();
    sign(
        &reg,
        &fx,
        "oci/multi",
        "1.0",
        &[Layer::signed(&key, "oci/multi", &index)],
        Placement::Tag,
    )
    .await;

    let r = root.path();
    let source = format!("{}/oci/multi:1.0", reg.addr());
    let (code, json, stderr) = fetch(
        r,
        std::slice::from_ref(&source),
        &[
            "--platform",
            "linux/amd64",
            "--verify-key",
            key.public_arg(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let stored = image(&json, "oci/multi", "1.0");
    assert_eq!(stored["upstream_digest"], index.as_str(), "{stored:#}");
    assert_ne!(stored["digest"], index.as_str());
    assert_eq!(
        tag_names(r, "oci/multi"),
        vec!["1.0".to_owned(), sig_tag(&index)]
    );
    let (code, json, stderr) = run(&[
        "verify",
        "--root",
        r.to_str().unwrap(),
        "--verify-key",
        key.public_arg(),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        json["signatures"][0]["signed_digest"],
        index.as_str(),
        "{json:#}"
    );

    // copy: the signed image goes with its signature; an unsigned one goes nowhere.
    let target = tokio::task::spawn_blocking(Registry::start).await.unwrap();
    // push: the cut index passes by the upstream digest its entry records.
    let (code, json, stderr) = run(&[
        "push",
        "--root",
        r.to_str().unwrap(),
        "--to",
        &format!("{}/pushed", target.addr()),
        "--dest-tls-verify=false",
        "--json",
        "--verify-key",
        key.public_arg(),
    ]);
    assert_eq!(code, 0, "{stderr}\n{json:#}");
    let cut = target.manifest_digest("pushed/oci/multi", "1.0").await;
    assert_eq!(
        cut.as_ref(),
        stored["digest"].as_str().map(str::to_owned).as_ref()
    );
    let copy = |from: &str, to: &str| {
        run(&[
            "copy",
            from,
            "--to",
            to,
            "--tls-verify=false",
            "--dest-tls-verify=false",
            "--verify-key",
            key.public_arg(),
        ])
    };
    let (code, _, stderr) =
        tokio::task::block_in_place(|| copy(&source, &format!("{}/mirror/multi", target.addr())));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        target
            .manifest_digest("mirror/multi", "1.0")
            .await
            .as_deref(),
        Some(index.as_str())
    );
    assert!(
        target
            .manifest_digest("mirror/multi", &sig_tag(&index))
            .await
            .is_some()
    );
    let unsigned = format!("{}/apps/api:v1", reg.addr());
    let (code, _, stderr) =
        tokio::task::block_in_place(|| copy(&unsigned, &format!("{}/mirror/api", target.addr())));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no cosign signature: no tag"), "{stderr}");
    assert_eq!(target.manifest_digest("mirror/api", "v1").await, None);
}

/// The sync service's copy jobs hold to the signature policy the file gives their
/// source registry: the signed image reaches the target with its signature, the
/// unsigned one fails there with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn the_service_copy_jobs_hold_to_their_source_registry_s_policy() {
    let (src, fx, root) = registry_with_fixtures().await;
    let target = tokio::task::spawn_blocking(Registry::start).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let key = Key::generate(work.path(), "cosign", KeyType::Ed25519);
    let web = fx.manifest("apps/web", "v1").digest.clone();
    let signature = [Layer::signed(&key, "apps/web", &web)];
    sign(&src, &fx, "apps/web", "v1", &signature, Placement::Tag).await;
    let a = src.addr();
    let config = write_file(
        work.path(),
        "mirror.yaml",
        &format!(
            "interval: 1h\nregistries:\n  \"{a}\": {{tls-verify: false, verify: {{keys: [{}]}}}}\n\
             images:\n  - source: {a}/apps/web\n    tags: [v1]\n",
            key.public_arg()
        ),
    );
    let root_arg = root.path().to_str().unwrap();
    let svc = Service::start(&config, &["--root", root_arg, "--retries", "0"], None).await;
    let job = |image: &str| {
        serde_json::json!({
            "source": format!("{a}/{image}:v1"),
            "tls-verify": false,
            "targets": [{"registry": format!("{}/jobs", target.addr()), "tls-verify": false}],
        })
    };
    let mut outcomes = Vec::new();
    for image in ["apps/web", "apps/api"] {
        let (status, queued) = svc.post_json("/v1/jobs", &job(image)).await;
        assert_eq!(status, 202, "{queued}");
        let path = format!("/v1/jobs/{}", queued["id"].as_str().unwrap());
        let done = svc
            .wait_for(&path, image, |j| {
                j["state"] == "finished" || j["state"] == "failed"
            })
            .await;
        outcomes.push(done);
    }
    assert_eq!(outcomes[0]["state"], "finished", "{}", outcomes[0]);
    assert!(
        target
            .manifest_digest("jobs/apps/web", &sig_tag(&web))
            .await
            .is_some()
    );
    assert_eq!(outcomes[1]["state"], "failed", "{}", outcomes[1]);
    let why = outcomes[1]["targets"][0]["error"].to_string();
    assert!(why.contains("no cosign signature"), "{why}");
    assert_eq!(target.manifest_digest("jobs/apps/api", "v1").await, None);
}
