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

use super::layout::ImageIndex;
use super::{Result, Store, StoreError, write_atomic};
use crate::crashpoint;
use crate::manifest::{Descriptor, REF_NAME};
use crate::reference::Digest;

pub const SERVED_DIR: &str = ".v2";
pub const CATALOG_FILE: &str = "_catalog.json";
pub const TAGS_FILE: &str = "_tags.json";
pub const REFERRERS_DIR: &str = "_referrers";

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

    /// Rewrite a repository's tag list from its index; rebuild the catalog when the
    /// repository is new. Call under the index lock.
    pub(super) fn write_tag_list(&self, name: &str, index: &ImageIndex) -> Result<()> {
        let dir = self.served_repo_dir(name);
        fs::create_dir_all(&dir).map_err(StoreError::io("create directory", &dir))?;
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
            let entry = entry.map_err(|e| StoreError::Io {
                action: "list",
                path: base.clone(),
                source: e.into(),
            })?;
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
        fs::create_dir_all(&dir).map_err(StoreError::io("create directory", &dir))?;
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

fn write_json(tmp_dir: &Path, path: &Path, value: &impl Serialize) -> Result<()> {
    let body = serde_json::to_vec(value).expect("served documents serialise");
    write_atomic(tmp_dir, path, &body)
}
