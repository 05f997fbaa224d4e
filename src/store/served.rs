//! JSON documents the web server hands out as they are: the tag list per repository, the
//! catalog, and the referrers index per subject manifest. They are derived from the
//! layouts and rewritten atomically whenever a publish changes them, so serving them is a
//! plain file read (O(1) routing, whatever the number of tags).
//!
//! ```text
//! .v2/_catalog.json                     {"repositories":[...]}
//! .v2/<name>/_tags.json                 {"name":"<name>","tags":[...]}
//! .v2/<name>/_referrers/<hex>.json      OCI index of the manifests whose subject is <hex>
//! ```
//! The leading `_` keeps these apart from nested repository names, whose components
//! never start with `_`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::inventory::reachable;
use super::layout::ImageIndex;
use super::{
    PUBLISH_MARKER, Result, Store, StoreError, modes, read_index_file, remove_file_if_present,
    write_atomic,
};
use crate::crashpoint;
use crate::manifest::{Descriptor, Manifest, REF_NAME};
use crate::reference::Digest;

pub const SERVED_DIR: &str = ".v2";
pub const CATALOG_FILE: &str = "_catalog.json";
pub const TAGS_FILE: &str = "_tags.json";
pub const REFERRERS_DIR: &str = "_referrers";
/// The catalog's HTML pages (see `crate::catalog`): `.v2/_index.html`, and
/// `.v2/<name>/_page-<n>.html` per repository.
pub const INDEX_PAGE: &str = "_index.html";
pub const PAGE_PREFIX: &str = "_page-";

#[derive(Serialize, Deserialize)]
struct TagList<'a> {
    name: &'a str,
    tags: Vec<&'a str>,
}

#[derive(Serialize)]
struct Catalog<'a> {
    repositories: &'a BTreeSet<String>,
}

impl Store {
    fn served_repo_dir(&self, name: &str) -> PathBuf {
        self.root.join(SERVED_DIR).join(name)
    }

    /// Where `publish` marks repository `name` while its served documents may lag its
    /// index.json (the name is hashed: a nested name is no file name).
    pub(super) fn publish_marker(&self, name: &str) -> PathBuf {
        let hex = Digest::sha256_of(name.as_bytes()).hex().to_owned();
        self.tmp_dir().join(format!("{hex}.{PUBLISH_MARKER}"))
    }

    /// Rewrite the served documents of every publish a killed process left unfinished:
    /// otherwise a rerun that finds its tags already in index.json never writes them.
    /// Markers are made and removed under the index lock, so one seen under it is a dead
    /// process's; the rewrites are idempotent.
    pub(super) fn finish_interrupted_publishes(&self) -> Result<()> {
        if publish_markers(&self.tmp_dir())?.is_empty() {
            return Ok(());
        }
        let _lock = self.lock_index()?;
        for marker in publish_markers(&self.tmp_dir())? {
            let name = fs::read_to_string(&marker).map_err(StoreError::io("read", &marker))?;
            let dir = self.repo_dir(&name)?;
            let index_path = dir.join("index.json");
            // Without an index the repository was being removed (or its first publish
            // never got as far as the rename): it serves nothing.
            if !index_path.is_file() {
                self.remove_served(&name)?;
            } else {
                let index = read_index_file(&index_path)?;
                for d in reachable(&dir, &index.manifests) {
                    let path = dir.join("blobs/sha256").join(d.digest.hex());
                    if (d.media_type.contains("manifest") || d.media_type.contains("index"))
                        && let Ok(bytes) = fs::read(&path)
                        && let Ok(m) = Manifest::parse(&bytes, Some(&d.media_type))
                        && let Some(subject) = &m.subject
                    {
                        let referrer = m.referrer_descriptor(&d.digest, bytes.len() as u64);
                        self.add_referrer(&name, &subject.digest, &referrer)?;
                    }
                }
                self.write_tag_list(&name, &index)?;
                // The tag list may have been written, and the catalog not.
                self.write_catalog()?;
            }
            tracing::debug!("finished the publish of {name} that an earlier run left");
            fs::remove_file(&marker).map_err(StoreError::io("remove", &marker))?;
        }
        Ok(())
    }

    /// Rewrite a repository's tag list from its index; rebuild the catalog when the
    /// repository is new. Call under the index lock.
    pub(super) fn write_tag_list(&self, name: &str, index: &ImageIndex) -> Result<()> {
        let dir = self.served_repo_dir(name);
        modes::create_dirs(&dir)?;
        let path = dir.join(TAGS_FILE);
        let new_repo = !path.exists();
        let tags: BTreeSet<&str> = index
            .manifests
            .iter()
            .filter_map(|d| d.annotations.get(REF_NAME).map(String::as_str))
            .collect();
        let list = TagList {
            name,
            tags: tags.into_iter().collect(),
        };
        write_json(&self.tmp_dir(), &path, &list)?;
        crashpoint::hit("tags-written");
        if new_repo {
            self.write_catalog()?;
        }
        Ok(())
    }

    /// Every repository with a tag list, sorted.
    fn write_catalog(&self) -> Result<()> {
        let base = self.root.join(SERVED_DIR);
        let mut repositories = BTreeSet::new();
        for entry in walkdir::WalkDir::new(&base)
            .into_iter()
            .filter_entry(|e| e.file_name() != REFERRERS_DIR)
        {
            let entry = entry.map_err(StoreError::walk("list", &base))?;
            if entry.file_name() == TAGS_FILE
                && let Some(dir) = entry.path().parent()
                && let Ok(name) = dir.strip_prefix(&base)
            {
                repositories.insert(name.to_string_lossy().into_owned());
            }
        }
        write_json(
            &self.tmp_dir(),
            &base.join(CATALOG_FILE),
            &Catalog {
                repositories: &repositories,
            },
        )
    }

    /// Add `referrer` to the referrers index of `subject` in repository `name`. Call under
    /// the index lock.
    pub(super) fn add_referrer(
        &self,
        name: &str,
        subject: &Digest,
        referrer: &Descriptor,
    ) -> Result<()> {
        let dir = self.served_repo_dir(name).join(REFERRERS_DIR);
        modes::create_dirs(&dir)?;
        let path = dir.join(format!("{}.json", subject.hex()));
        let mut index = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::BadIndex {
                path: path.clone(),
                source,
            })?,
            Err(_) => ImageIndex::default(),
        };
        if index.contains(&referrer.digest) {
            return Ok(());
        }
        index.manifests.push(referrer.clone());
        index.manifests.sort_by(|a, b| a.digest.cmp(&b.digest));
        write_json(&self.tmp_dir(), &path, &index)
    }
}

impl Store {
    /// The referrers indexes of repository `name`: (subject, index of its referrers).
    pub(super) fn referrer_docs(&self, name: &str) -> Result<Vec<(Digest, ImageIndex)>> {
        let dir = self.served_repo_dir(name).join(REFERRERS_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("list", &dir)(e)),
        };
        let mut docs = Vec::new();
        for entry in entries {
            let path = entry.map_err(StoreError::io("list", &dir))?.path();
            let Some(subject) = path
                .file_stem()
                .and_then(|hex| Digest::sha256_from_hex(&hex.to_string_lossy()).ok())
            else {
                continue;
            };
            docs.push((subject, read_index_file(&path)?));
        }
        Ok(docs)
    }

    /// Remove the referrers index of `subject` in repository `name`. Call under the index
    /// lock.
    pub(super) fn remove_referrers(&self, name: &str, subject: &Digest) -> Result<()> {
        let path = self
            .served_repo_dir(name)
            .join(REFERRERS_DIR)
            .join(format!("{}.json", subject.hex()));
        remove_file_if_present(&path)
    }

    /// Remove repository `name`'s served documents (its nested repositories' stay) and
    /// rebuild the catalog. Call under the index lock.
    pub(super) fn remove_served(&self, name: &str) -> Result<()> {
        if !self.root.join(SERVED_DIR).is_dir() {
            // Nothing was ever served (a first publish killed before its rename).
            return Ok(());
        }
        let dir = self.served_repo_dir(name);
        remove_file_if_present(&dir.join(TAGS_FILE))?;
        super::remove_tree_if_present(&dir.join(REFERRERS_DIR))?;
        for page in pages(&dir)? {
            remove_file_if_present(&page)?;
        }
        super::remove_empty_dirs(&dir, &self.root.join(SERVED_DIR))?;
        self.write_catalog()
    }
}

/// The catalog pages of the repository whose served documents are in `dir`.
pub fn pages(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("read", dir)(e)),
    };
    let mut pages = Vec::new();
    for entry in entries {
        let path = entry.map_err(StoreError::io("read", dir))?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(PAGE_PREFIX))
        {
            pages.push(path);
        }
    }
    Ok(pages)
}

/// The publish markers in `tmp`.
fn publish_markers(tmp: &Path) -> Result<Vec<PathBuf>> {
    let mut markers = Vec::new();
    for entry in fs::read_dir(tmp).map_err(StoreError::io("read", tmp))? {
        let path = entry.map_err(StoreError::io("read", tmp))?.path();
        if path.extension().is_some_and(|e| e == PUBLISH_MARKER) {
            markers.push(path);
        }
    }
    Ok(markers)
}

fn write_json(tmp_dir: &Path, path: &Path, value: &impl Serialize) -> Result<()> {
    let body = serde_json::to_vec(value).expect("served documents serialise");
    write_atomic(tmp_dir, path, &body)
}
