//! What a run tells its caller while it works and when it ends: progress events through
//! [`Reporter`] (the binary renders them; the library never prints), and one report per
//! image (fetch) or per image and target (push, copy).

use serde::Serialize;

use crate::reference::Digest;
use crate::registry::Remedy;

/// Progress events. Implementations render them (bars on a TTY, lines otherwise); the
/// library never prints.
pub trait Reporter: Send + Sync {
    fn image_started(&self, _source: &str) {}
    fn image_finished(&self, _report: &ImageReport) {}
    /// One image at one target of a push or copy (the caller tells it).
    fn copied(&self, _report: &TargetReport) {}
    /// Blob bytes a push or copy target took.
    fn bytes_sent(&self, _target: &str, _bytes: u64) {}
    fn blob_started(&self, _digest: &Digest, _size: u64, _offset: u64) {}
    fn blob_progress(&self, _digest: &Digest, _bytes: u64) {}
    fn blob_finished(&self, _digest: &Digest) {}
    fn warn(&self, _message: &str) {}
}

/// A reporter that shows nothing (`--quiet`, tests).
pub struct Silent;
impl Reporter for Silent {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Downloaded (some or all of it) and published.
    Fetched,
    /// The store already had exactly this; only the manifest was checked.
    Unchanged,
    Failed,
}

#[derive(Debug, Serialize)]
pub struct ImageReport {
    /// The normalised reference as asked for.
    pub source: String,
    /// Repository name in the store.
    pub name: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub status: Status,
    /// The registry's digest, where a platform cut made the stored index differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_digest: Option<String>,
    /// Signatures, SBOMs and attestations newly stored for it.
    #[serde(skip_serializing_if = "is_zero")]
    pub referrers: usize,
    /// The error chain, one cause per element.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error: Vec<String>,
    /// What the operator can do about the error, where more than retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<Remedy>,
}

impl ImageReport {
    /// `source` could not be copied to `name` at all, for `error`.
    pub fn failure(source: String, name: String, error: &dyn std::error::Error) -> ImageReport {
        ImageReport {
            source,
            name,
            tag: None,
            digest: None,
            status: Status::Failed,
            upstream_digest: None,
            referrers: 0,
            error: error_chain(error),
            remedy: None,
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// An error and its causes, outermost first.
pub fn error_chain(e: &dyn std::error::Error) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        // Some errors (io ones wrapped with their path, say) already end with their
        // cause's text: printing it again said everything twice.
        if !out.last().is_some_and(|prev| prev.ends_with(&text)) {
            out.push(text);
        }
        cur = s.source();
    }
    out
}

/// How one image went at one target of a push or copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyStatus {
    /// Sent (what the target lacked of it) and tagged.
    Copied,
    /// The target's tag already pointed at this digest: one HEAD, nothing sent.
    Unchanged,
    /// The target's tag points at another digest and `--overwrite=skip` left it.
    Skipped,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// What was copied: `<repository>:<tag>` or `<repository>@<digest>` at the source.
    pub source: String,
    /// Where: `<host>/<repository>:<tag>` (or `@<digest>`).
    pub target: String,
    /// The manifest's digest, the same at the source and the target unless a platform
    /// cut made a new index.
    pub digest: Option<String>,
    /// The source's digest, where a platform cut made the copy's differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_digest: Option<String>,
    pub status: CopyStatus,
    /// What the target's tag pointed at instead (skipped, or refused by
    /// `--overwrite=fail`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existing: Option<String>,
    /// The error chain, one cause per element.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error: Vec<String>,
    /// What the operator can do about the error, where more than retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<Remedy>,
}
