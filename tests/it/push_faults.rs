//! The client's push primitives against a target that fails on purpose (the in-process
//! [`FaultTarget`]): uploads resume from what the session kept after a failed PATCH,
//! a token is asked for with a push scope, a refused mount becomes an upload, the
//! session's Location is followed when relative or absolute on the same host and
//! refused elsewhere, and a refused manifest says who refused it and why.

use bytes::Bytes;
use static_registry::reference::Digest;
use static_registry::registry::{Client, ClientOptions, RegistryError, Started, Upload};

use crate::harness::client_push::{Pushed, push_blob};

use crate::harness::fault_push::{FaultTarget, Seen};
use crate::harness::sha256_digest;

const CHUNK: usize = 256 << 10;
/// Four chunks and a short one.
const BLOB_SIZE: usize = 4 * CHUNK + 1000;

fn client() -> Client {
    Client::new(ClientOptions {
        tls_verify: false,
        retries: 2,
        ..ClientOptions::default()
    })
    .unwrap()
}

/// `BLOB_SIZE` bytes that differ with `seed`.
fn blob(seed: u8) -> Bytes {
    (0..BLOB_SIZE as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ seed)
        .collect()
}

fn digest(bytes: &[u8]) -> Digest {
    sha256_digest(bytes).parse().unwrap()
}

async fn session(client: &Client, host: &str, repo: &str, bytes: &[u8]) -> Upload {
    match client
        .start_upload(host, repo, &digest(bytes), None)
        .await
        .unwrap_or_else(|e| panic!("{repo}: start: {e}"))
    {
        Started::Session(upload) => upload,
        Started::Mounted => panic!("{repo}: mounted without asking for a mount"),
    }
}

/// Upload `bytes` to `repo` in `CHUNK`-sized PATCHes, then close the session.
async fn push_in_chunks(
    client: &Client,
    host: &str,
    repo: &str,
    bytes: &Bytes,
) -> Result<(), RegistryError> {
    let mut upload = session(client, host, repo, bytes).await;
    for start in (0..bytes.len()).step_by(CHUNK) {
        let chunk = bytes.slice(start..(start + CHUNK).min(bytes.len()));
        client.upload_chunk(&mut upload, chunk).await?;
        assert_eq!(upload.offset(), (start + CHUNK).min(bytes.len()) as u64);
    }
    client
        .finish_upload(upload, &digest(bytes), Bytes::new())
        .await
}

/// The Content-Ranges of the PATCHes the target got, with their body sizes and answers.
fn patches(requests: &[Seen]) -> Vec<(String, usize, Option<u16>)> {
    requests
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| {
            (
                r.content_range.clone().unwrap_or_default(),
                r.body,
                r.status,
            )
        })
        .collect()
}

/// The PATCHes of a clean chunked upload of `BLOB_SIZE` bytes, all accepted.
fn clean_patches() -> Vec<(String, usize, Option<u16>)> {
    (0..BLOB_SIZE)
        .step_by(CHUNK)
        .map(|start| {
            let end = (start + CHUNK).min(BLOB_SIZE);
            (format!("{start}-{}", end - 1), end - start, Some(202))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_upload_sends_each_byte_once_and_the_target_holds_the_blob() {
    let target = FaultTarget::start().await;
    let bytes = blob(1);
    push_in_chunks(&client(), target.addr(), "fault/good", &bytes)
        .await
        .unwrap();
    let held = target.blob("fault/good", &sha256_digest(&bytes)).unwrap();
    assert_eq!(sha256_digest(&held), sha256_digest(&bytes));
    let requests = target.requests();
    assert_eq!(patches(&requests), clean_patches(), "{requests:#?}");
    // The session's query is kept, and the digest added to it.
    let put = requests.iter().find(|r| r.method == "PUT").unwrap();
    assert!(
        put.path.contains("?_state=") && put.path.contains("&digest=sha256:"),
        "{put:?}"
    );
    assert_eq!(put.body, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patch_failing_midway_resumes_from_what_the_session_kept() {
    let target = FaultTarget::start().await;
    let bytes = blob(2);
    push_in_chunks(&client(), target.addr(), "fault/patch-500-midway", &bytes)
        .await
        .unwrap();
    let held = target
        .blob("fault/patch-500-midway", &sha256_digest(&bytes))
        .unwrap();
    assert_eq!(sha256_digest(&held), sha256_digest(&bytes));

    // The first chunk whole (half kept, 500), the session's status asked, then only the
    // half the target lacked: not the same Content-Range again, which it would refuse.
    let requests = target.requests();
    let half = CHUNK / 2;
    let mut expected = vec![
        (format!("0-{}", CHUNK - 1), CHUNK, Some(500)),
        (format!("{half}-{}", CHUNK - 1), CHUNK - half, Some(202)),
    ];
    expected.extend(clean_patches().into_iter().skip(1));
    assert_eq!(patches(&requests), expected, "{requests:#?}");
    let failed = requests.iter().position(|r| r.status == Some(500)).unwrap();
    assert_eq!(requests[failed + 1].method, "GET", "{requests:#?}");
    assert!(
        requests.iter().all(|r| r.status != Some(416)),
        "{requests:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_dropped_during_a_patch_resumes_from_what_the_session_kept() {
    let target = FaultTarget::start().await;
    let bytes = blob(3);
    push_in_chunks(&client(), target.addr(), "fault/patch-reset", &bytes)
        .await
        .unwrap();
    let held = target
        .blob("fault/patch-reset", &sha256_digest(&bytes))
        .unwrap();
    assert_eq!(sha256_digest(&held), sha256_digest(&bytes));

    // Nothing answered the first PATCH, so the client cannot know what arrived: it asks
    // the session instead of sending the chunk again blind.
    let requests = target.requests();
    let half = CHUNK / 2;
    let mut expected = vec![
        (format!("0-{}", CHUNK - 1), CHUNK, None),
        (format!("{half}-{}", CHUNK - 1), CHUNK - half, Some(202)),
    ];
    expected.extend(clean_patches().into_iter().skip(1));
    assert_eq!(patches(&requests), expected, "{requests:#?}");
    let dropped = requests.iter().position(|r| r.status.is_none()).unwrap();
    assert_eq!(requests[dropped + 1].method, "GET", "{requests:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_target_s_retry_after_is_waited_out_before_the_chunk_is_sent_again() {
    let target = FaultTarget::start().await;
    let bytes = blob(9);
    let started = std::time::Instant::now();
    push_in_chunks(&client(), target.addr(), "fault/patch-busy", &bytes)
        .await
        .unwrap();
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After: 1 not waited for ({:?})",
        started.elapsed()
    );
    let requests = target.requests();
    let mut expected = vec![(format!("0-{}", CHUNK - 1), CHUNK, Some(503))];
    expected.extend(clean_patches());
    assert_eq!(patches(&requests), expected, "{requests:#?}");
    assert!(
        target
            .blob("fault/patch-busy", &sha256_digest(&bytes))
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_registry_gets_asked_for_a_push_scope_and_takes_blob_and_manifest() {
    let target = FaultTarget::start().await;
    let client = client();
    let host = target.addr();
    let bytes = blob(4);
    let pushed = push_blob(
        &client,
        host,
        "fault/token",
        &digest(&bytes),
        bytes.clone(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(pushed, Pushed::Uploaded);
    let manifest = Bytes::from_static(br#"{"schemaVersion":2,"note":"token"}"#);
    client
        .put_manifest(
            host,
            "fault/token",
            "1",
            "application/vnd.oci.image.manifest.v1+json",
            &digest(&manifest),
            manifest.clone(),
        )
        .await
        .unwrap();
    assert!(target.blob("fault/token", &sha256_digest(&bytes)).is_some());

    // The target refuses every request without the token, and its token service hands
    // one out only for a push scope: so the push asked for one.
    let scopes = target.token_scopes();
    assert!(
        scopes
            .first()
            .is_some_and(|s| s.contains(&"repository:fault/token:pull,push".to_owned())),
        "{scopes:?}"
    );
    let requests = target.requests();
    assert!(
        requests.iter().any(|r| r.method == "PUT"
            && r.path.contains("/blobs/uploads/")
            && r.status == Some(201)),
        "{requests:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_mount_falls_back_to_an_upload() {
    let target = FaultTarget::start().await;
    let client = client();
    let host = target.addr();
    let bytes = blob(5);
    let digest = digest(&bytes);
    target.seed_blob("fault/good", bytes.clone());

    // The same request to a repository that mounts: the source really holds the blob.
    let mounted = push_blob(
        &client,
        host,
        "fault/good/copy",
        &digest,
        bytes.clone(),
        Some("fault/good"),
    )
    .await
    .unwrap();
    assert_eq!(mounted, Pushed::Mounted);

    let refused = push_blob(
        &client,
        host,
        "fault/mount-refused",
        &digest,
        bytes.clone(),
        Some("fault/good"),
    )
    .await
    .unwrap();
    assert_eq!(refused, Pushed::Uploaded);
    let held = target
        .blob("fault/mount-refused", &sha256_digest(&bytes))
        .unwrap();
    assert_eq!(held, bytes);
    let requests: Vec<_> = target
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v2/fault/mount-refused/"))
        .map(|r| (r.method, r.status))
        .collect();
    assert_eq!(
        requests,
        [
            ("HEAD".to_owned(), Some(404)),
            ("POST".to_owned(), Some(202)),
            ("PUT".to_owned(), Some(201)),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn relative_and_absolute_upload_locations_are_both_followed() {
    let target = FaultTarget::start().await;
    let client = client();
    for (repo, seed) in [("fault/good", 6), ("fault/absolute-location", 7)] {
        let bytes = blob(seed);
        push_in_chunks(&client, target.addr(), repo, &bytes)
            .await
            .unwrap_or_else(|e| panic!("{repo}: {e}"));
        assert_eq!(
            target.blob(repo, &sha256_digest(&bytes)),
            Some(bytes),
            "{repo}"
        );
        let sessions: Vec<_> = target
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with(&format!("/v2/{repo}/blobs/uploads/s")))
            .collect();
        assert_eq!(
            sessions.len(),
            clean_patches().len() + 1,
            "{repo}: {sessions:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_location_on_another_host_is_refused_and_nothing_is_sent_there() {
    let target = FaultTarget::start().await;
    let client = client();
    let host = target.addr();
    let bytes = blob(8);
    let repo = "fault/location-elsewhere";
    let err = client
        .start_upload(host, repo, &digest(&bytes), None)
        .await
        .unwrap_err();
    match &err {
        RegistryError::UploadLocation { location, .. } => {
            assert!(location.contains(target.elsewhere()), "{err}")
        }
        other => panic!("expected UploadLocation, got {other:?}"),
    }
    let err = push_blob(&client, host, repo, &digest(&bytes), bytes, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::UploadLocation { .. }),
        "{err:?}"
    );
    assert_eq!(target.elsewhere_connections(), 0);
    let sent: Vec<_> = target
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" || r.method == "PUT")
        .collect();
    assert!(sent.is_empty(), "{sent:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_manifest_names_the_registry_the_repository_and_its_error_code() {
    let target = FaultTarget::start().await;
    let host = target.addr();
    let repo = "fault/manifest-rejected";
    let manifest = Bytes::from_static(br#"{"schemaVersion":2}"#);
    let err = client()
        .put_manifest(
            host,
            repo,
            "1",
            "application/vnd.oci.image.manifest.v1+json",
            &digest(&manifest),
            manifest,
        )
        .await
        .unwrap_err();
    let shown = err.to_string();
    for part in [host, repo, "MANIFEST_INVALID"] {
        assert!(shown.contains(part), "{part} missing from: {shown}");
    }
    // A 400 is the registry's verdict on these bytes: sending them again cannot help.
    let puts = target
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert_eq!(puts, 1);
}
