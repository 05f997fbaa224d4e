//! Read-only views of a store, for gen-conf and `ls`: which repositories it holds and
//! what their tags point at. Nothing here takes a lock or writes.

use std::fs;
use std::path::Path;

use serde::Serialize;

use super::{FORMAT_FILE, Result, StoreError, read_index_file, repo_path};
use crate::manifest::{Kind, Manifest, REF_NAME};
use crate::reference::Digest;

/// Whether `root` holds a store (its format marker).
pub fn is_store(root: &Path) -> bool {
    root.join(FORMAT_FILE).is_file()
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
        let entry = entry.map_err(|e| StoreError::Io {
            action: "list",
            path: root.to_owned(),
            source: e.into(),
        })?;
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
        let dir = match repo_path(root, &name) {
            Ok(dir) => dir,
            Err(e) => {
                skipped.push(format!("repository {name:?}: {e}"));
                continue;
            }
        };
        let index = read_index_file(&dir.join("index.json"))?;
        let mut tags = Vec::new();
        for d in &index.manifests {
            let Some(tag) = d.annotations.get(REF_NAME) else {
                continue;
            };
            let mut seen = std::collections::HashSet::new();
            let size = reach_size(&dir, &d.digest, d.size, &d.media_type, &mut seen);
            tags.push(TagInfo {
                tag: tag.clone(),
                digest: d.digest.clone(),
                media_type: d.media_type.clone(),
                size,
            });
        }
        tags.sort_by(|a, b| a.tag.cmp(&b.tag));
        repos.push(RepoInfo { name, tags });
    }
    Ok((repos, skipped))
}

/// Size of a manifest and all it reaches, reading manifests from the repository's layout.
fn reach_size(
    dir: &Path,
    digest: &Digest,
    size: u64,
    media_type: &str,
    seen: &mut std::collections::HashSet<Digest>,
) -> u64 {
    if !seen.insert(digest.clone()) {
        return 0;
    }
    let Ok(bytes) = fs::read(dir.join("blobs/sha256").join(digest.hex())) else {
        return size;
    };
    let Ok(m) = Manifest::parse(&bytes, Some(media_type)) else {
        return size;
    };
    size + match m.kind {
        Kind::Index(children) => children
            .iter()
            .map(|c| reach_size(dir, &c.digest, c.size, &c.media_type, seen))
            .sum(),
        Kind::Image { config, layers } => std::iter::once(config.as_ref())
            .chain(layers.iter())
            .filter(|d| seen.insert(d.digest.clone()))
            .map(|d| d.size)
            .sum::<u64>(),
    }
}
