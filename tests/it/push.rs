//! The registry client's push side against a real docker-registry: the primitives the
//! copy engine (push, copy) is built on. Every fixture image arrives with its source
//! digest; what the target has is never sent again; a blob another repository holds is
//! mounted, not uploaded.

use bytes::Bytes;
use static_registry::reference::Digest;
use static_registry::registry::{Client, ClientOptions};

use crate::harness::client_push::{Pushed, push_blob};

use crate::harness::fixtures::Fixtures;
use crate::harness::registry::Registry;
use crate::harness::sha256_digest;

fn client() -> Client {
    Client::new(ClientOptions {
        tls_verify: false,
        retries: 0,
        ..ClientOptions::default()
    })
    .unwrap()
}

fn digest(d: &str) -> Digest {
    d.parse().unwrap()
}

/// Push every fixture manifest (children before their index, as pushed at the
/// source) with its blobs into `target`; returns how each blob went.
async fn push_fixtures(client: &Client, fx: &Fixtures, host: &str) -> Vec<Pushed> {
    let mut outcomes = Vec::new();
    for m in &fx.manifests {
        for blob in &m.blobs {
            let bytes = Bytes::copy_from_slice(fx.blob(blob));
            outcomes.push(
                push_blob(client, host, &m.repo, &digest(blob), bytes, None)
                    .await
                    .unwrap_or_else(|e| panic!("{}: blob {blob}: {e}", m.repo)),
            );
        }
        let references: Vec<&str> = if m.tags.is_empty() {
            vec![m.digest.as_str()]
        } else {
            m.tags.iter().map(String::as_str).collect()
        };
        for reference in references {
            let put = client
                .put_manifest(
                    host,
                    &m.repo,
                    reference,
                    &m.media_type,
                    &digest(&m.digest),
                    Bytes::copy_from_slice(&m.bytes),
                )
                .await
                .unwrap_or_else(|e| panic!("{}:{reference}: {e}", m.repo));
            // docker-registry 2.8 has no referrers API: it never answers `OCI-Subject`,
            // not even for the SBOM artifact, which has a subject.
            assert!(!put.subject_indexed, "{}:{reference}", m.repo);
        }
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread")]
async fn every_fixture_image_is_pushed_byte_exact_and_a_second_push_sends_no_blob() {
    let target = tokio::task::spawn_blocking(Registry::start).await.unwrap();
    let fx = Fixtures::get();
    let client = client();
    let host = target.addr();
    let first = push_fixtures(&client, fx, &host).await;
    assert!(first.contains(&Pushed::Uploaded));

    // Every tag and untagged manifest resolves at the target to the source's bytes.
    for m in &fx.manifests {
        let reference = m.tags.first().cloned().unwrap_or_else(|| m.digest.clone());
        let body = client
            .get_manifest(&host, &m.repo, &reference)
            .await
            .unwrap_or_else(|e| panic!("{}:{reference}: {e}", m.repo));
        assert_eq!(
            sha256_digest(&body.bytes),
            m.digest,
            "{}:{reference}",
            m.repo
        );
    }

    target.mark();
    let second = push_fixtures(&client, fx, &host).await;
    assert!(second.iter().all(|p| *p == Pushed::Present), "{second:?}");
    let uploads: Vec<_> = target
        .requests()
        .into_iter()
        .filter(|(method, path)| path.contains("/blobs/") && method != "HEAD")
        .collect();
    assert!(
        uploads.is_empty(),
        "a present blob was sent again: {uploads:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_another_repository_holds_is_mounted_not_uploaded() {
    let target = tokio::task::spawn_blocking(Registry::start).await.unwrap();
    let fx = Fixtures::get();
    let client = client();
    let host = target.addr();
    let base = digest(&fx.base_layer);
    let bytes = Bytes::copy_from_slice(fx.blob(&fx.base_layer));
    let first = push_blob(&client, &host, "team/a", &base, bytes.clone(), None)
        .await
        .unwrap();
    assert_eq!(first, Pushed::Uploaded);
    target.mark();
    let mounted = push_blob(&client, &host, "team/b", &base, bytes, Some("team/a"))
        .await
        .unwrap();
    assert_eq!(mounted, Pushed::Mounted);
    let requests = target.requests();
    assert!(
        requests
            .iter()
            .any(|(m, p)| m == "POST" && p.contains("mount=") && p.contains("from=team/a")),
        "{requests:?}"
    );
    assert!(
        !requests.iter().any(|(m, _)| m == "PUT" || m == "PATCH"),
        "{requests:?}"
    );
    assert!(client.blob_exists(&host, "team/b", &base).await.unwrap());

    // A mount the registry will not do (the source repository lacks the blob) starts
    // an upload session instead, which the push then completes.
    let other = fx.blob(&fx.zstd_layer);
    let refused = push_blob(
        &client,
        &host,
        "team/c",
        &digest(&fx.zstd_layer),
        Bytes::copy_from_slice(other),
        Some("team/a"),
    )
    .await
    .unwrap();
    assert_eq!(refused, Pushed::Uploaded);
    assert!(
        client
            .blob_exists(&host, "team/c", &digest(&fx.zstd_layer))
            .await
            .unwrap()
    );
}
