//! The route model: what a store serves where, for every front (gen-conf's nginx and the
//! embedded `serve`), so the two cannot drift. It reads only the store: each repository's
//! tags (validated) and manifests with the kind that fixes their Content-Type, and the
//! pull API's error answers with their status, OCI code and message.

use std::collections::BTreeMap;
use std::path::Path;

use crate::manifest::{self, REF_NAME};
use crate::reference::{self, Digest};
use crate::store::{self, StoreError};

/// The repository-name grammar as a regex (PCRE for nginx, and the `regex` crate).
pub const NAME_RE: &str =
    "[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*";

/// Manifest kinds and the Content-Type each is served with; `blob` is what everything
/// else is served as. A kind names an nginx location, so only these fixed words are ever
/// rendered, never a media type read from the store.
pub const KINDS: [(&str, &str); 5] = [
    ("oci-index", manifest::OCI_INDEX),
    ("oci-manifest", manifest::OCI_MANIFEST),
    ("docker-list", manifest::DOCKER_LIST),
    ("docker-manifest", manifest::DOCKER_MANIFEST),
    ("blob", BLOB_TYPE),
];

pub const BLOB_TYPE: &str = "application/octet-stream";

/// The kind of a manifest media type this registry serves; `None` for anything else.
pub fn kind_of(media_type: &str) -> Option<&'static str> {
    KINDS
        .iter()
        .find(|(kind, mt)| *kind != "blob" && *mt == media_type)
        .map(|(kind, _)| *kind)
}

/// The Content-Type of a kind.
pub fn media_type_of(kind: &str) -> &'static str {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(BLOB_TYPE, |(_, mt)| mt)
}

/// What one repository serves.
#[derive(Debug, Default, Clone)]
pub struct RepoRoutes {
    /// tag → manifest digest hex (only tags whose manifest is served).
    pub tags: BTreeMap<String, String>,
    /// manifest digest hex → kind.
    pub manifests: BTreeMap<String, &'static str>,
    /// Every stored blob its tags and untagged entries reach (manifests too), digest hex.
    pub blobs: Vec<String>,
}

/// What the store holds, restricted to what may be served.
#[derive(Debug, Default)]
pub struct RouteModel {
    pub repos: Vec<(String, RepoRoutes)>,
    /// Entries of the store left out, each with the reason.
    pub skipped: Vec<String>,
}

/// Walk the store's repositories (read-only) and collect every servable tag and manifest.
pub fn scan(root: &Path) -> Result<RouteModel, StoreError> {
    if !store::inventory::is_store(root) {
        return Err(StoreError::NotAStore(root.to_path_buf()));
    }
    let mut model = RouteModel::default();
    for name in store::inventory::repository_names(root)? {
        match scan_repo(root, &name, &mut model.skipped) {
            Some(routes) => model.repos.push((name, routes)),
            None => continue,
        }
    }
    Ok(model)
}

/// One repository's routes, or `None` when it serves nothing (an invalid name, an
/// unreadable index); what is left out is added to `skipped` with the reason.
pub fn scan_repo(root: &Path, name: &str, skipped: &mut Vec<String>) -> Option<RepoRoutes> {
    let dir = match store::repo_path(root, name) {
        Ok(dir) => dir,
        Err(e) => {
            skipped.push(format!("repository {name:?}: {e}"));
            return None;
        }
    };
    let index = match store::read_index_file(&dir.join("index.json")) {
        Ok(index) => index,
        Err(e) => {
            skipped.push(format!("repository {name}: {e}"));
            return None;
        }
    };
    let mut tags = BTreeMap::new();
    for d in &index.manifests {
        if let Some(tag) = d.annotations.get(REF_NAME) {
            if let Err(e) = reference::validate_tag(tag) {
                skipped.push(format!("{name}: {e}"));
                continue;
            }
            tags.insert(tag.clone(), d.digest.clone());
        }
        if kind_of(&d.media_type).is_none() {
            skipped.push(format!(
                "{name}@{}: media type {:?} is not a manifest type this registry serves",
                d.digest, d.media_type
            ));
        }
    }
    // Children of indexes are manifests too (platform images, referrer artifacts);
    // configs and layers have no kind and are served as blobs.
    let reachable: Vec<_> = store::inventory::reachable(&dir, &index.manifests)
        .into_iter()
        .filter(|d| d.digest.algorithm() == "sha256")
        .collect();
    let manifests: BTreeMap<String, &'static str> = reachable
        .iter()
        .filter_map(|d| Some((d.digest.hex().to_owned(), kind_of(&d.media_type)?)))
        .collect();
    // Foreign layers are never stored: clients fetch them from their URLs.
    let blobs = reachable
        .into_iter()
        .filter(|d| !d.is_foreign())
        .map(|d| d.digest.hex().to_owned())
        .collect();
    let tags = tags
        .into_iter()
        .filter(|(_, digest): &(String, Digest)| manifests.contains_key(digest.hex()))
        .map(|(tag, digest)| (tag, digest.hex().to_owned()))
        .collect();
    Some(RepoRoutes {
        tags,
        manifests,
        blobs,
    })
}

/// The answers of the pull API that are errors (OCI JSON bodies), one per case, so every
/// front says the same thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiError {
    NameUnknown,
    TagUnknown,
    ManifestUnknown,
    BlobUnknown,
    OnlySha256,
    DigestInvalid,
    NameInvalid,
    NoEndpoint,
    Unsupported,
    BadRequest,
    NotFound,
    NoPage,
    Unauthorized,
    NotAllowed,
    Denied,
    Failed,
    Unavailable,
}

impl ApiError {
    pub const ALL: [ApiError; 17] = [
        ApiError::NameUnknown,
        ApiError::TagUnknown,
        ApiError::ManifestUnknown,
        ApiError::BlobUnknown,
        ApiError::OnlySha256,
        ApiError::DigestInvalid,
        ApiError::NameInvalid,
        ApiError::NoEndpoint,
        ApiError::Unsupported,
        ApiError::BadRequest,
        ApiError::NotFound,
        ApiError::NoPage,
        ApiError::Unauthorized,
        ApiError::NotAllowed,
        ApiError::Denied,
        ApiError::Failed,
        ApiError::Unavailable,
    ];

    /// The name templates know it by (`errors.<key>`).
    pub fn key(self) -> &'static str {
        match self {
            ApiError::NameUnknown => "name_unknown",
            ApiError::TagUnknown => "tag_unknown",
            ApiError::ManifestUnknown => "manifest_unknown",
            ApiError::BlobUnknown => "blob_unknown",
            ApiError::OnlySha256 => "only_sha256",
            ApiError::DigestInvalid => "digest_invalid",
            ApiError::NameInvalid => "name_invalid",
            ApiError::NoEndpoint => "no_endpoint",
            ApiError::Unsupported => "unsupported",
            ApiError::BadRequest => "bad_request",
            ApiError::NotFound => "not_found",
            ApiError::NoPage => "no_page",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotAllowed => "not_allowed",
            ApiError::Denied => "denied",
            ApiError::Failed => "failed",
            ApiError::Unavailable => "unavailable",
        }
    }

    /// HTTP status, OCI error code, message (no `'` or `\`: nginx renders it quoted).
    pub fn parts(self) -> (u16, &'static str, &'static str) {
        match self {
            ApiError::NameUnknown => (
                404,
                "NAME_UNKNOWN",
                "repository name not known to this registry",
            ),
            ApiError::TagUnknown => (
                404,
                "MANIFEST_UNKNOWN",
                "manifest tag not known to this registry",
            ),
            ApiError::ManifestUnknown => (
                404,
                "MANIFEST_UNKNOWN",
                "manifest not known to this registry",
            ),
            ApiError::BlobUnknown => (404, "BLOB_UNKNOWN", "blob not known to this repository"),
            ApiError::OnlySha256 => (
                404,
                "MANIFEST_UNKNOWN",
                "only sha256 content is stored here",
            ),
            ApiError::DigestInvalid => (
                400,
                "DIGEST_INVALID",
                "invalid digest: expected sha256:<64 lowercase hex>",
            ),
            ApiError::NameInvalid => (400, "NAME_INVALID", "invalid repository name"),
            ApiError::NoEndpoint => (
                404,
                "NAME_UNKNOWN",
                "no such endpoint in this read-only registry",
            ),
            ApiError::Unsupported => (
                405,
                "UNSUPPORTED",
                "this registry is read-only: only GET and HEAD are allowed",
            ),
            ApiError::BadRequest => (400, "UNSUPPORTED", "malformed request"),
            ApiError::NotFound => (
                404,
                "NOT_FOUND",
                "this server serves the registry API under /v2/ and its catalog page at /",
            ),
            ApiError::NoPage => (
                404,
                "NOT_FOUND",
                "no catalog page here: pages are rendered into the store by fetch, sync and rm (run one), for repositories it holds",
            ),
            ApiError::Unauthorized => (
                401,
                "UNAUTHORIZED",
                "authentication required: log in with a user of this registry",
            ),
            ApiError::NotAllowed => (403, "DENIED", "this user may not pull this repository"),
            ApiError::Denied => (
                403,
                "DENIED",
                "the server may not read this file of the store: it is not readable by the worker user, or it is a symbolic link, which is never served (static-registry verify --root <store> finds both, --repair mends them; every directory up to the store needs o+x)",
            ),
            ApiError::Failed => (
                500,
                "UNKNOWN",
                "the server failed to read the store: see its error log",
            ),
            ApiError::Unavailable => (
                503,
                "UNAVAILABLE",
                "the object store behind this server did not answer: try again later",
            ),
        }
    }

    pub fn status(self) -> u16 {
        self.parts().0
    }

    /// The OCI JSON body.
    pub fn body(self) -> String {
        let (_, code, message) = self.parts();
        serde_json::json!({ "errors": [{ "code": code, "message": message }] }).to_string()
    }
}

/// The empty referrers index (a manifest nothing refers to).
pub const NO_REFERRERS: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_can_be_quoted_for_nginx() {
        for e in ApiError::ALL {
            let body = e.body();
            assert!(!body.contains('\'') && !body.contains('\\'), "{e:?}");
        }
    }
}
