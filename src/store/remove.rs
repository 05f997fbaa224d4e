//! `rm`: take tags, manifests or whole repositories out of the store through the same
//! commit steps as a publish (index.json, tag list, catalog and referrers change
//! atomically, and a kill at any point is finished by the next open). Blobs stay in the
//! layouts and the pool until `prune` finds nothing reaches them.

use std::collections::HashSet;
use std::fs;

use serde::Serialize;

use super::inventory::reachable;
use super::{
    Result, Store, StoreError, read_index_file, remove_empty_dirs, remove_file_if_present,
    remove_tree_if_present,
};
use crate::crashpoint;
use crate::manifest::{Descriptor, REF_NAME};
use crate::reference::Digest;

/// What to take out of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// The whole repository.
    Repository,
    Tag(String),
    /// Every entry (tagged or not) naming this manifest.
    Manifest(Digest),
}

/// What was taken out of one repository.
#[derive(Debug, Default, Serialize)]
pub struct Removed {
    pub name: String,
    pub tags: Vec<String>,
    /// Untagged entries: manifests named by digest, and the referrers (signatures, SBOMs)
    /// of manifests that nothing in the repository reaches any more.
    pub untagged: Vec<Digest>,
    /// The whole repository went.
    pub repository: bool,
}

/// Whether index entry `d` is what `w` names.
fn names(w: &Removal, d: &Descriptor) -> bool {
    match w {
        Removal::Tag(t) => d.annotations.get(REF_NAME) == Some(t),
        Removal::Manifest(digest) => &d.digest == digest,
        Removal::Repository => false,
    }
}

impl Store {
    /// Take `what` out of repository `name`. Everything named must exist, else nothing
    /// changes. Removing a whole repository needs the store to itself (no fetch running:
    /// its links are deleted); tags and manifests can go while fetches run.
    pub fn remove(&self, name: &str, what: &[Removal]) -> Result<Removed> {
        if what.contains(&Removal::Repository) {
            return self.remove_repository(name);
        }
        let dir = self.repo_dir(name)?;
        let path = dir.join("index.json");
        let _lock = self.lock_index()?;
        if !path.is_file() {
            return Err(StoreError::UnknownRepository(name.to_owned()));
        }
        let mut index = self.written_indexes.take(&path)?;
        for w in what {
            let named = |d: &Descriptor| names(w, d);
            match w {
                _ if index.manifests.iter().any(named) => {}
                Removal::Manifest(digest) => {
                    return Err(StoreError::UnknownManifest {
                        name: name.to_owned(),
                        digest: digest.clone(),
                    });
                }
                Removal::Tag(tag) => {
                    return Err(StoreError::UnknownTag {
                        name: name.to_owned(),
                        tag: tag.clone(),
                    });
                }
                // Handled above: the whole repository goes.
                Removal::Repository => {}
            }
        }
        let mut removed = Removed {
            name: name.to_owned(),
            ..Removed::default()
        };
        let mut note = |d: &Descriptor| match d.annotations.get(REF_NAME) {
            Some(t) => removed.tags.push(t.clone()),
            None => removed.untagged.push(d.digest.clone()),
        };
        index.manifests.retain(|d| {
            let named = what.iter().any(|w| names(w, d));
            if named {
                note(d);
            }
            !named
        });
        // Referrers stored for manifests that nothing left reaches go with them.
        let docs = self.referrer_docs(name)?;
        let referrers: HashSet<&Digest> = docs
            .iter()
            .flat_map(|(_, i)| i.manifests.iter().map(|d| &d.digest))
            .collect();
        let roots: Vec<Descriptor> = index
            .manifests
            .iter()
            .filter(|d| d.annotations.contains_key(REF_NAME) || !referrers.contains(&d.digest))
            .cloned()
            .collect();
        let live: HashSet<Digest> = reachable(&dir, &roots)
            .into_iter()
            .map(|d| d.digest)
            .collect();
        // A subject nothing reaches loses its referrers index, unless one of its
        // referrers is still reached another way (the referrers tag schema's index):
        // then the index stays, as a rebuild after a kill would make it.
        let gone: Vec<&(Digest, _)> = docs
            .iter()
            .filter(|(subject, referrers)| {
                !live.contains(subject)
                    && !referrers.manifests.iter().any(|d| live.contains(&d.digest))
            })
            .collect();
        let orphans: HashSet<&Digest> = gone
            .iter()
            .flat_map(|(_, i)| i.manifests.iter().map(|d| &d.digest))
            .collect();
        let gone: Vec<Digest> = gone.iter().map(|(subject, _)| subject.clone()).collect();
        index.manifests.retain(|d| {
            let orphan = !d.annotations.contains_key(REF_NAME) && orphans.contains(&d.digest);
            if orphan {
                note(d);
            }
            !orphan
        });
        self.commit_index(name, path, index, &[], &gone)?;
        Ok(removed)
    }

    /// Take repository `name` out: its index.json first (from then on no tag resolves),
    /// then its served documents and catalog entry, then its layout. Repositories nested
    /// below it stay. Refused while another process holds the store: a fetch may be
    /// linking blobs into this layout.
    fn remove_repository(&self, name: &str) -> Result<Removed> {
        let dir = self.repo_dir(name)?;
        let path = dir.join("index.json");
        self.exclusive()?;
        let _lock = self.lock_index()?;
        // A layout without index.json is a removal a kill interrupted: finish it.
        if !path.is_file() && !dir.join("oci-layout").is_file() {
            return Err(StoreError::UnknownRepository(name.to_owned()));
        }
        let tags = read_index_file(&path)?
            .manifests
            .into_iter()
            .filter_map(|d| d.annotations.get(REF_NAME).cloned())
            .collect();
        let marker = self.publish_marker(name);
        super::write_atomic(&self.tmp_dir(), &marker, name.as_bytes())?;
        self.written_indexes.forget(&path);
        remove_file_if_present(&path)?;
        super::atomic::sync_dir(&dir)?;
        crashpoint::hit("index-removed");
        self.remove_served(name)?;
        remove_tree_if_present(&dir.join("blobs"))?;
        // Last: while it is there, `rm` of this name finishes an interrupted removal.
        remove_file_if_present(&dir.join("oci-layout"))?;
        remove_empty_dirs(&dir, self.root())?;
        fs::remove_file(&marker).map_err(StoreError::io("remove", &marker))?;
        Ok(Removed {
            name: name.to_owned(),
            tags,
            untagged: Vec::new(),
            repository: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::manifest::{OCI_MANIFEST, Verified};
    use crate::store::{CATALOG_FILE, SERVED_DIR, TagUpdate};

    fn publish(store: &Store, name: &str, tag: &str) -> Digest {
        // An empty index: a manifest that reaches nothing, distinct per name and tag.
        let body = format!(
            "{{\"schemaVersion\":2,\"manifests\":[],\"annotations\":{{\"n\":\"{name}:{tag}\"}}}}"
        );
        let manifest = Verified::new(bytes::Bytes::from(body.clone()), None).unwrap();
        let digest = manifest.digest.clone();
        store.put_manifest(&manifest).unwrap();
        store.link_blob(name, &digest).unwrap();
        let update = TagUpdate {
            tag: Some(tag.to_owned()),
            media_type: OCI_MANIFEST.into(),
            digest: digest.clone(),
            size: body.len() as u64,
            annotations: BTreeMap::new(),
        };
        store.publish(name, &[update], &[]).unwrap();
        digest
    }

    #[test]
    fn removing_a_repository_keeps_the_repositories_nested_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        publish(&store, "x/y", "1");
        let nested = publish(&store, "x/y/z", "1");
        let removed = store.remove("x/y", &[Removal::Repository]).unwrap();
        assert!(removed.repository);
        assert_eq!(removed.tags, ["1"]);
        assert!(!dir.path().join("x/y/index.json").exists());
        assert!(!dir.path().join("x/y/blobs").exists());
        assert_eq!(
            store.read_index("x/y/z").unwrap().tag("1").unwrap().digest,
            nested
        );
        assert!(
            dir.path()
                .join("x/y/z/blobs/sha256")
                .join(nested.hex())
                .is_file()
        );
        let catalog = fs::read_to_string(dir.path().join(SERVED_DIR).join(CATALOG_FILE)).unwrap();
        assert_eq!(catalog, r#"{"repositories":["x/y/z"]}"#);
        assert!(matches!(
            store.remove("x/y", &[Removal::Repository]),
            Err(StoreError::UnknownRepository(_))
        ));
    }

    #[test]
    fn a_missing_tag_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        publish(&store, "r", "1");
        let err = store
            .remove("r", &[Removal::Tag("1".into()), Removal::Tag("2".into())])
            .unwrap_err();
        assert!(
            matches!(err, StoreError::UnknownTag { ref tag, .. } if tag == "2"),
            "{err}"
        );
        assert!(store.read_index("r").unwrap().tag("1").is_some());
    }
}
