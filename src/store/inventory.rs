//! Read-only views of a store, for gen-conf and `ls`: which repositories it holds and
//! what their tags point at. Nothing here takes a lock or writes.

use std::fs;
use std::path::Path;

use serde::Serialize;

use super::{FORMAT_FILE, Result, StoreError, read_index_file, repo_path};
use std::collections::HashSet;

use crate::manifest::{Descriptor, KEPT_PLATFORMS, Kind, Manifest, REF_NAME, UPSTREAM_DIGEST};
use crate::reference::Digest;

/// Whether `root` holds a store (its format marker).
pub fn is_store(root: &Path) -> bool {
    root.join(FORMAT_FILE).is_file()
}

/// Whether the store at `root` already holds a blob (read-only: no lock, nothing
/// created).
pub fn has_blob(root: &Path, digest: &Digest) -> bool {
    digest.algorithm() == "sha256"
        && root
            .join(super::POOL_DIR)
            .join("sha256")
            .join(digest.hex())
            .is_file()
}

/// Repository names under `root`, sorted, as found on disk: directories holding an
/// index.json. Names are *not* validated here; callers check them with [`repo_path`].
pub fn repository_names(root: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        // Dot entries are the store's own (.blobs, .tmp, .v2); a layout's blobs/ holds
        // content, not repositories.
        .filter_entry(|e| {
            let n = e.file_name().to_string_lossy();
            let layout_blobs = n == "blobs"
                && e.path()
                    .parent()
                    .is_some_and(|p| p.join("oci-layout").is_file());
            !(n.starts_with('.') || layout_blobs)
        });
    for entry in walker {
        let entry = entry.map_err(StoreError::walk("list", root))?;
        if entry.file_name() == "index.json"
            && let Some(dir) = entry.path().parent()
            && let Ok(rel) = dir.strip_prefix(root)
        {
            names.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

/// One tag of a repository, for listings.
#[derive(Debug, Serialize)]
pub struct TagInfo {
    pub tag: String,
    pub digest: Digest,
    pub media_type: String,
    /// Bytes of everything the tag reaches (manifests, configs, layers), each blob once.
    pub size: u64,
    /// The platforms kept, when fetched with a platform list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platforms: Option<String>,
    /// The registry's digest, when a platform cut made the stored index differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_digest: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RepoInfo {
    pub name: String,
    pub tags: Vec<TagInfo>,
}

/// Every valid repository and its tags, with sizes. Invalid names are left out (the
/// returned strings say why).
pub fn list(root: &Path) -> Result<(Vec<RepoInfo>, Vec<String>)> {
    let mut repos = Vec::new();
    let mut skipped = Vec::new();
    for name in repository_names(root)? {
        match repo_path(root, &name) {
            Ok(dir) => repos.push(repo_info(&dir, name)?),
            Err(e) => skipped.push(format!("repository {name:?}: {e}")),
        }
    }
    Ok((repos, skipped))
}

/// One repository's tags (sorted), with sizes; `dir` is its layout.
pub fn repo_info(dir: &Path, name: String) -> Result<RepoInfo> {
    let index = read_index_file(&dir.join("index.json"))?;
    let mut tags = Vec::new();
    for d in &index.manifests {
        let Some(tag) = d.annotations.get(REF_NAME) else {
            continue;
        };
        let size = reachable(dir, std::slice::from_ref(d))
            .iter()
            .map(|r| r.size)
            .sum();
        tags.push(TagInfo {
            tag: tag.clone(),
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
            size,
            platforms: d.annotations.get(KEPT_PLATFORMS).cloned(),
            upstream_digest: d
                .annotations
                .get(UPSTREAM_DIGEST)
                .filter(|u| **u != d.digest.to_string())
                .cloned(),
        });
    }
    tags.sort_by(|a, b| a.tag.cmp(&b.tag));
    Ok(RepoInfo { name, tags })
}

/// Everything reachable from `roots` in the layout at `dir`, each digest once, roots
/// first: manifests are read from the layout to find their children, configs and layers.
/// A manifest that is missing or unreadable ends its branch (callers that care check
/// each descriptor's file).
pub fn reachable(dir: &Path, roots: &[Descriptor]) -> Vec<Descriptor> {
    reachable_in(&dir.join("blobs/sha256"), roots)
}

/// [`reachable`] with manifests read from `blobs`, a directory of files named by hex
/// digest (a layout's `blobs/sha256`, or the pool's).
pub fn reachable_in(blobs: &Path, roots: &[Descriptor]) -> Vec<Descriptor> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut stack: Vec<Descriptor> = roots.iter().rev().cloned().collect();
    while let Some(d) = stack.pop() {
        if !seen.insert(d.digest.clone()) {
            continue;
        }
        let children = if d.media_type.contains("manifest") || d.media_type.contains("index") {
            fs::read(blobs.join(d.digest.hex()))
                .ok()
                .and_then(|bytes| Manifest::parse(&bytes, Some(&d.media_type)).ok())
                .map(|m| match m.kind {
                    Kind::Index(children) => children,
                    Kind::Image { config, layers } => {
                        std::iter::once(*config).chain(layers).collect()
                    }
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        stack.extend(children.into_iter().rev());
        out.push(d);
    }
    out
}
