//! Referrers (signatures, SBOMs) in `push` and `copy --referrers`, to docker-registry
//! 2.8, which has no referrers API: each referrer arrives by digest with the source's
//! digest, and the target's `sha256-<subject hex>` fallback tag is an OCI index listing
//! it, as the distribution spec (1.1) asks of clients pushing to such registries.

use serde_json::{Value, json};

use crate::harness::fault::{FaultRegistry, SIGNATURE_TYPE};
use crate::harness::fixtures::{
    ACCEPT_ALL, OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, SBOM_ARTIFACT_TYPE,
};
use crate::harness::registry::Registry;
use crate::harness::store::{fetch, registry_with_fixtures, run};

async fn empty_registry() -> Registry {
    tokio::task::spawn_blocking(Registry::start).await.unwrap()
}

/// The manifest `repo:reference` at `reg`, parsed, with its Content-Type.
async fn manifest(reg: &Registry, repo: &str, reference: &str) -> (Value, String) {
    let url = format!("{}/v2/{repo}/manifests/{reference}", reg.url());
    let resp = reg
        .http()
        .get(&url)
        .header(reqwest::header::ACCEPT, ACCEPT_ALL)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let media_type = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    (resp.json().await.unwrap(), media_type)
}

/// The digests the fallback tag of `subject` lists at `reg`, checked to be an OCI index.
async fn fallback_listing(reg: &Registry, repo: &str, subject: &str) -> Vec<Value> {
    let tag = subject.replacen(':', "-", 1);
    let (index, media_type) = manifest(reg, repo, &tag).await;
    assert_eq!(media_type, OCI_INDEX, "{index}");
    assert_eq!(index["mediaType"], OCI_INDEX, "{index}");
    index["manifests"].as_array().unwrap().clone()
}

fn writes(reg: &Registry) -> Vec<(String, String)> {
    reg.requests()
        .into_iter()
        .filter(|(m, _)| !matches!(m.as_str(), "GET" | "HEAD"))
        .collect()
}

fn copy_referrers(source: &str, to: &str) -> (i32, Value, String) {
    tokio::task::block_in_place(|| {
        run(&[
            "copy",
            source,
            "--to",
            to,
            "--referrers",
            "--tls-verify=false",
            "--dest-tls-verify=false",
            "--json",
        ])
    })
}

/// A signature the store got from the referrers API (so it holds no fallback tag) is
/// pushed by digest, and the push writes the fallback tag at the target; pushing again
/// writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn push_of_an_api_listed_referrer_writes_the_fallback_tag_at_a_target_without_the_api() {
    let reg = FaultRegistry::start().await;
    let root = tempfile::tempdir().unwrap();
    let image = format!("{}/fault/referrers:1", reg.addr());
    let (code, summary, stderr) = fetch(root.path(), &[image], &["--referrers"]);
    assert_eq!(code, 0, "{stderr}");
    let subject = summary["images"][0]["digest"].as_str().unwrap().to_owned();
    let hex = subject.trim_start_matches("sha256:");
    let served = root
        .path()
        .join(format!(".v2/fault/referrers/_referrers/{hex}.json"));
    let listed: Value = serde_json::from_slice(&std::fs::read(served).unwrap()).unwrap();
    let signature = listed["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();

    let target = empty_registry().await;
    let push = || {
        tokio::task::block_in_place(|| {
            run(&[
                "push",
                "--root",
                root.path().to_str().unwrap(),
                "--to",
                &target.addr(),
                "--dest-tls-verify=false",
                "--json",
            ])
        })
    };
    let (code, json, stderr) = push();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["targets"][0]["copied"], 2, "{json}");
    assert_eq!(
        target
            .manifest_digest("fault/referrers", &signature)
            .await
            .as_deref(),
        Some(signature.as_str())
    );
    let fallback = fallback_listing(&target, "fault/referrers", &subject).await;
    assert_eq!(fallback.len(), 1, "{fallback:?}");
    assert_eq!(fallback[0]["digest"], signature.as_str());
    assert_eq!(fallback[0]["artifactType"], SIGNATURE_TYPE);
    assert_eq!(fallback[0]["mediaType"], OCI_MANIFEST);

    target.mark();
    let (code, json, stderr) = push();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["targets"][0]["unchanged"], 2, "{json}");
    assert!(writes(&target).is_empty(), "{:?}", writes(&target));
}

/// The fixtures registry lists apps/web:v1's SBOM only through its fallback tag; copy
/// finds it there and keeps the target's own fallback tag.
#[tokio::test(flavor = "multi_thread")]
async fn copy_with_referrers_brings_the_sbom_found_through_the_fallback_tag() {
    let (src, fx, _root) = registry_with_fixtures().await;
    let target = empty_registry().await;
    let source = format!("{}/apps/web:v1", src.addr());
    let (code, json, stderr) = copy_referrers(&source, &format!("{}/mirror/web", target.addr()));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["targets"][0]["copied"], 2, "{json}");
    let web = fx.manifest("apps/web", "v1").digest.clone();
    assert_eq!(web, fx.artifact_subject);
    assert_eq!(
        target.manifest_digest("mirror/web", "v1").await,
        Some(web.clone())
    );
    assert_eq!(
        target.manifest_digest("mirror/web", &fx.artifact).await,
        Some(fx.artifact.clone())
    );
    let fallback = fallback_listing(&target, "mirror/web", &web).await;
    assert_eq!(fallback.len(), 1, "{fallback:?}");
    assert_eq!(fallback[0]["digest"], fx.artifact.as_str());
    assert_eq!(fallback[0]["artifactType"], SBOM_ARTIFACT_TYPE);

    // Without the flag the referrers stay behind.
    let other = empty_registry().await;
    let (code, _, stderr) = tokio::task::block_in_place(|| {
        run(&[
            "copy",
            &source,
            "--to",
            &format!("{}/mirror/web", other.addr()),
            "--tls-verify=false",
            "--dest-tls-verify=false",
        ])
    });
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        other.manifest_digest("mirror/web", &fx.artifact).await,
        None
    );

    // Again: the image and its SBOM are there, nothing is written.
    target.mark();
    let (code, json, stderr) = copy_referrers(&source, &format!("{}/mirror/web", target.addr()));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["targets"][0]["unchanged"], 2, "{json}");
    assert!(writes(&target).is_empty(), "{:?}", writes(&target));
}

/// Two referrers of one subject, listed by the source's fallback tag, are copied with
/// it; the target's fallback tag is merged with the source's: it lists both, and keeps
/// the entry the target listed before as it was.
#[tokio::test(flavor = "multi_thread")]
async fn referrers_of_one_subject_copied_together_are_all_listed_in_the_fallback_tag() {
    let src = empty_registry().await;
    let repo = "lab/signed";
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = b"not really a tarball";
    let image = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": src.push_blob(repo, config).await, "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": src.push_blob(repo, layer).await, "size": layer.len()}],
    }))
    .unwrap();
    let subject = src.push_manifest(repo, "1", OCI_MANIFEST, &image).await;
    let empty = src.push_blob(repo, b"{}").await;
    let mut listed = Vec::new();
    for kind in ["signature", "attestation"] {
        let body = format!("{kind} of {subject}");
        let artifact = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "artifactType": format!("application/vnd.example.{kind}"),
            "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": src.push_blob(repo, body.as_bytes()).await, "size": body.len()}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": image.len()},
        }))
        .unwrap();
        let digest = crate::harness::sha256_digest(&artifact);
        src.push_manifest(repo, &digest, OCI_MANIFEST, &artifact)
            .await;
        listed.push(
            json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": artifact.len(),
            "artifactType": format!("application/vnd.example.{kind}")}),
        );
    }
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed}),
    )
    .unwrap();
    let tag = subject.replacen(':', "-", 1);
    src.push_manifest(repo, &tag, OCI_INDEX, &index).await;

    // The target lists a note on the image already, in an entry of its own writing.
    let target = empty_registry().await;
    let note = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.note",
        "config": {"mediaType": OCI_EMPTY, "digest": target.push_blob(repo, b"{}").await, "size": 2},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": image.len()},
    }))
    .unwrap();
    let note_digest = crate::harness::sha256_digest(&note);
    target
        .push_manifest(repo, &note_digest, OCI_MANIFEST, &note)
        .await;
    let entry = format!(
        r#"{{"size":{},"digest":"{note_digest}","mediaType":"{OCI_MANIFEST}","annotations":{{"z":"1","a":"2"}}}}"#,
        note.len()
    );
    let before =
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{entry}]}}"#);
    target
        .push_manifest(repo, &tag, OCI_INDEX, before.as_bytes())
        .await;

    let (code, json, stderr) = copy_referrers(
        &format!("{}/{repo}:1", src.addr()),
        &format!("{}/{repo}", target.addr()),
    );
    assert_eq!(code, 0, "{stderr}");
    // The image, and the fallback tag with what it lists.
    assert_eq!(json["targets"][0]["copied"], 2, "{json}");
    let mut got: Vec<String> = fallback_listing(&target, repo, &subject)
        .await
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut want: Vec<String> = listed
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .chain([note_digest])
        .collect();
    want.sort();
    assert_eq!(got, want);
    // The entry the target had is kept as it was written.
    let url = format!("{}/v2/{repo}/manifests/{tag}", target.url());
    let raw = target
        .http()
        .get(&url)
        .header(reqwest::header::ACCEPT, OCI_INDEX)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(raw.contains(&entry), "{raw}");
}
