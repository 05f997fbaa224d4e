//! Pushing content into a [`Registry`] over the plain distribution HTTP API, so
//! fixtures do not depend on the crate under test (or on skopeo).

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION};

use super::registry::Registry;
use super::sha256_digest;

const DIGEST_HEADER: &str = "Docker-Content-Digest";

impl Registry {
    /// Monolithic blob upload (`POST` then `PUT ?digest=`). Returns the digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let start = format!("{}/v2/{repo}/blobs/uploads/", self.url());
        let resp = self
            .http()
            .post(&start)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {start}: {e}"));
        let resp = expect_status(resp, StatusCode::ACCEPTED, "start upload").await;
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("upload start for {repo}: no Location header"))
            .to_string();
        // Location may be absolute or relative (the spec allows both).
        let mut put = url::Url::parse(&start)
            .and_then(|base| base.join(&location))
            .unwrap_or_else(|e| panic!("bad upload Location {location:?}: {e}"));
        put.query_pairs_mut().append_pair("digest", &digest);
        let resp = self
            .http()
            .put(put.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {put}: {e}"));
        let resp = expect_status(resp, StatusCode::CREATED, "finish upload").await;
        check_digest(&resp, &digest, &format!("blob {repo}@{digest}"));
        digest
    }

    /// `PUT /v2/<repo>/manifests/<reference>`; `reference` is a tag or digest.
    /// Returns the digest the registry computed (asserted equal to ours).
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let digest = sha256_digest(bytes);
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.url());
        let resp = self
            .http()
            .put(&url)
            .header(CONTENT_TYPE, media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        let what = format!("manifest {repo}:{reference} ({media_type})");
        let resp = expect_status(resp, StatusCode::CREATED, &what).await;
        check_digest(&resp, &digest, &what);
        digest
    }

    /// `HEAD /v2/<repo>/blobs/<digest>` is 200.
    pub async fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.url());
        let resp = self
            .http()
            .head(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("HEAD {url}: {e}"));
        resp.status() == StatusCode::OK
    }

    /// The digest `repo:reference` resolves to (its `Docker-Content-Digest`, with every
    /// manifest type accepted), or `None` when the registry has no such manifest.
    pub async fn manifest_digest(&self, repo: &str, reference: &str) -> Option<String> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.url());
        let resp = self
            .http()
            .head(&url)
            .header(reqwest::header::ACCEPT, super::fixtures::ACCEPT_ALL)
            .send()
            .await
            .unwrap_or_else(|e| panic!("HEAD {url}: {e}"));
        if resp.status() == StatusCode::NOT_FOUND {
            return None;
        }
        let resp = expect_status(
            resp,
            StatusCode::OK,
            &format!("manifest {repo}:{reference}"),
        )
        .await;
        resp.headers()
            .get(DIGEST_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Full tag list of `repo` (asks for a page size larger than any fixture).
    pub async fn tags(&self, repo: &str) -> Vec<String> {
        let url = format!("{}/v2/{repo}/tags/list?n=10000", self.url());
        let resp = self
            .http()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let resp = expect_status(resp, StatusCode::OK, "tags list").await;
        let v: serde_json::Value = resp.json().await.expect("tags list JSON");
        v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn expect_status(resp: reqwest::Response, want: StatusCode, what: &str) -> reqwest::Response {
    if resp.status() == want {
        return resp;
    }
    let status = resp.status();
    let url = resp.url().clone();
    let body = resp.text().await.unwrap_or_default();
    panic!("{what}: {url} answered {status}, expected {want}; body: {body}");
}

fn check_digest(resp: &reqwest::Response, want: &str, what: &str) {
    let got = resp
        .headers()
        .get(DIGEST_HEADER)
        .and_then(|v| v.to_str().ok());
    assert_eq!(got, Some(want), "{what}: registry digest differs from ours");
}
