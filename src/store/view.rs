//! A read-only view of a store for copying out of it (`push`): it takes no lock, so a
//! long-running reader never keeps `prune` waiting. What it reads stays consistent
//! without one: index.json is replaced by rename, and a layout's blobs are links whose
//! content never changes; a blob removed meanwhile is an error naming it, not bad bytes.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::inventory::repository_names;
use super::served::{REFERRERS_DIR, SERVED_DIR};
use super::{Result, StoreError, TagIndex, read_format, read_index_file, repo_path, sha256_only};
use crate::manifest::Descriptor;
use crate::reference::Digest;

#[derive(Debug, Clone)]
pub struct StoreView {
    root: PathBuf,
}

impl StoreView {
    /// Open the store at `root` for reading; it must exist (nothing is created).
    pub fn open(root: &Path) -> Result<StoreView> {
        match read_format(root)? {
            Some(_) => Ok(StoreView {
                root: root.to_path_buf(),
            }),
            None => Err(StoreError::NotAStore(root.to_path_buf())),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every repository, sorted.
    pub fn repositories(&self) -> Result<Vec<String>> {
        repository_names(&self.root)
    }

    /// A repository's index.json; a repository the store lacks is an error.
    pub fn read_index(&self, name: &str) -> Result<TagIndex> {
        let path = repo_path(&self.root, name)?.join("index.json");
        if !path.is_file() {
            return Err(StoreError::UnknownRepository(name.to_owned()));
        }
        read_index_file(&path).map(TagIndex::from)
    }

    /// Where repository `name` keeps blob `digest` (a link into the pool).
    pub fn blob_path(&self, name: &str, digest: &Digest) -> Result<PathBuf> {
        sha256_only(digest)?;
        Ok(repo_path(&self.root, name)?
            .join("blobs")
            .join("sha256")
            .join(digest.hex()))
    }

    /// A manifest's bytes as repository `name` holds them.
    pub fn read_manifest(&self, name: &str, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(name, digest)?;
        fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::UnknownManifest {
                name: name.to_owned(),
                digest: digest.clone(),
            },
            _ => StoreError::io("read", &path)(e),
        })
    }

    /// The referrers of `subject` in repository `name`, as the store serves them (its
    /// referrers index); none when it serves none.
    pub fn read_referrers(&self, name: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
        sha256_only(subject)?;
        repo_path(&self.root, name)?;
        let path = self
            .root
            .join(SERVED_DIR)
            .join(name)
            .join(REFERRERS_DIR)
            .join(format!("{}.json", subject.hex()));
        Ok(read_index_file(&path)?.manifests)
    }

    /// Every manifest of repository `name` that refers to another (has a `subject`), as
    /// its served referrers indexes list them.
    pub fn referrer_digests(&self, name: &str) -> Result<HashSet<Digest>> {
        repo_path(&self.root, name)?;
        let dir = self.root.join(SERVED_DIR).join(name).join(REFERRERS_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
            Err(e) => return Err(StoreError::io("list", &dir)(e)),
        };
        let mut found = HashSet::new();
        for entry in entries {
            let path = entry.map_err(StoreError::io("list", &dir))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                found.extend(
                    read_index_file(&path)?
                        .manifests
                        .into_iter()
                        .map(|d| d.digest),
                );
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::manifest::OCI_MANIFEST;
    use crate::store::{Store, TagUpdate};

    #[test]
    fn referrers_are_read_from_the_served_index_and_none_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (subject, signature) = (Digest::sha256_of(b"image"), Digest::sha256_of(b"sig"));
        let referrer = Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: signature.clone(),
            size: 3,
            urls: Vec::new(),
            platform: None,
            artifact_type: Some("application/vnd.example.sig".into()),
            annotations: BTreeMap::new(),
        };
        let update = TagUpdate {
            tag: None,
            media_type: OCI_MANIFEST.into(),
            digest: signature,
            size: 3,
            annotations: BTreeMap::new(),
        };
        store
            .publish("a/b", &[update], &[(subject.clone(), referrer.clone())])
            .unwrap();
        let view = StoreView::open(dir.path()).unwrap();
        assert_eq!(
            view.read_referrers("a/b", &subject).unwrap(),
            std::slice::from_ref(&referrer)
        );
        assert!(
            view.read_referrers("a/b", &Digest::sha256_of(b"other"))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            view.referrer_digests("a/b").unwrap(),
            HashSet::from([referrer.digest.clone()])
        );
        assert!(view.referrer_digests("c").unwrap().is_empty());
    }
}
