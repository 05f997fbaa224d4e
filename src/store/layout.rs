//! A repository's OCI image layout: `oci-layout` and `index.json`, one descriptor per tag
//! (named by `org.opencontainers.image.ref.name`, as skopeo, oras and zot read it).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::atomic::{replace, sync_dir, synced_temp, write_atomic};
use super::inventory::reachable;
use super::{POOL_DIR, Result, Store, StoreError, modes};
use crate::crashpoint;
use crate::manifest::{Descriptor, OCI_INDEX, REF_NAME, SOURCE};
use crate::reference::{Digest, validate_tag};

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// The index.json of an image layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ImageIndex {
    fn default() -> Self {
        ImageIndex {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_owned()),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }
}

impl ImageIndex {
    pub fn contains(&self, digest: &Digest) -> bool {
        self.manifests.iter().any(|d| &d.digest == digest)
    }
}

/// A repository's index.json read for lookups. A fetch asks it about every tag it
/// checks, so a scan of `manifests` per question would be quadratic in the tag count
/// (a measurable share of a warm fetch of thousands of tags).
#[derive(Debug, Default)]
pub struct TagIndex {
    manifests: Vec<Descriptor>,
    by_tag: HashMap<String, usize>,
    digests: HashSet<Digest>,
    /// The sources recorded on its entries (`SOURCE`), sorted.
    sources: BTreeSet<String>,
}

impl From<ImageIndex> for TagIndex {
    fn from(index: ImageIndex) -> Self {
        let mut by_tag = HashMap::with_capacity(index.manifests.len());
        for (i, d) in index.manifests.iter().enumerate() {
            if let Some(tag) = d.annotations.get(REF_NAME) {
                // A tag listed twice (a hand-edited file) resolves to its first entry.
                by_tag.entry(tag.clone()).or_insert(i);
            }
        }
        let digests = index.manifests.iter().map(|d| d.digest.clone()).collect();
        let sources = index
            .manifests
            .iter()
            .filter_map(|d| d.annotations.get(SOURCE).cloned())
            .collect();
        TagIndex {
            manifests: index.manifests,
            by_tag,
            digests,
            sources,
        }
    }
}

impl TagIndex {
    /// The descriptor a tag points at.
    pub fn tag(&self, tag: &str) -> Option<&Descriptor> {
        self.by_tag.get(tag).map(|&i| &self.manifests[i])
    }

    /// Whether any entry, tagged or not, is this manifest.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.digests.contains(digest)
    }

    /// Every entry, in index.json order.
    pub fn entries(&self) -> &[Descriptor] {
        &self.manifests
    }

    /// Where its entries were fetched from (`registry/repository`), as recorded by
    /// fetch; entries of older stores record none.
    pub fn sources(&self) -> &BTreeSet<String> {
        &self.sources
    }
}

/// One entry to publish: a manifest, under a tag or (for digest references) untagged.
#[derive(Debug, Clone)]
pub struct TagUpdate {
    pub tag: Option<String>,
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// Extra annotations for its index.json entry (where a platform-cut index came from).
    pub annotations: BTreeMap<String, String>,
}

impl Store {
    /// Read a repository's index.json for lookups; an absent layout reads as empty.
    pub fn read_index(&self, name: &str) -> Result<TagIndex> {
        let path = self.repo_dir(name)?.join("index.json");
        read_index_file(&path).map(TagIndex::from)
    }

    /// Whether everything an index.json entry reaches is in the repository's layout (at
    /// its size) and in the pool: a stat a file, no hashing. Foreign layers are not
    /// stored. (A manifest that is missing ends its branch, and makes this false.)
    pub fn is_complete(&self, name: &str, entry: &Descriptor) -> Result<bool> {
        let dir = self.repo_dir(name)?;
        let pool = self.root.join(POOL_DIR).join("sha256");
        let blobs = dir.join("blobs/sha256");
        Ok(reachable(&dir, std::slice::from_ref(entry))
            .iter()
            .filter(|d| !d.is_foreign() && d.digest.algorithm() == "sha256")
            .all(|d| {
                let hex = d.digest.hex();
                fs::metadata(blobs.join(hex)).is_ok_and(|m| m.len() == d.size)
                    && pool.join(hex).is_file()
            }))
    }

    /// Publish manifests in a repository, and `referrers` (subject digest, referrer
    /// descriptor) found among them. Every blob they reach must already be linked into
    /// the layout: from the index.json rename on, readers can resolve the tag.
    pub fn publish(
        &self,
        name: &str,
        updates: &[TagUpdate],
        referrers: &[(Digest, Descriptor)],
    ) -> Result<()> {
        let dir = self.repo_dir(name)?;
        for u in updates {
            if let Some(tag) = &u.tag {
                validate_tag(tag)?;
            }
        }
        modes::create_dirs(&dir)?;
        let layout = dir.join("oci-layout");
        if !layout.is_file() {
            write_atomic(&self.tmp_dir(), &layout, OCI_LAYOUT)?;
        }
        // index.json is read-modify-write: concurrent fetches into one store serialise
        // here (briefly) so neither loses the other's tags.
        let _lock = self.lock_index()?;
        // Links made since the last publish, and manifests put into the pool (see
        // `put_manifest`), must be durable before a tag points at them.
        for blobs in [
            dir.join("blobs/sha256"),
            self.root.join(POOL_DIR).join("sha256"),
        ] {
            if blobs.is_dir() {
                sync_dir(&blobs)?;
            }
        }
        let path = dir.join("index.json");
        let mut index = self.written_indexes.take(&path)?;
        // Linear in the index once per publish, not once per update: a repository with
        // thousands of tags gets batches of updates. The last update of a tag wins.
        let mut retagged = HashSet::new();
        let fresh: Vec<&TagUpdate> = updates
            .iter()
            .rev()
            .filter(|u| u.tag.as_deref().is_none_or(|t| retagged.insert(t)))
            .collect();
        index.manifests.retain(|d| {
            d.annotations
                .get(REF_NAME)
                .is_none_or(|t| !retagged.contains(t.as_str()))
        });
        let mut present: HashSet<Digest> =
            index.manifests.iter().map(|d| d.digest.clone()).collect();
        for u in fresh.into_iter().rev() {
            let mut annotations = u.annotations.clone();
            match &u.tag {
                Some(tag) => {
                    annotations.insert(REF_NAME.to_owned(), tag.clone());
                }
                None if present.contains(&u.digest) => continue,
                None => {}
            }
            present.insert(u.digest.clone());
            index.manifests.push(Descriptor {
                media_type: u.media_type.clone(),
                digest: u.digest.clone(),
                size: u.size,
                urls: Vec::new(),
                platform: None,
                artifact_type: None,
                annotations,
            });
        }
        index.manifests.sort_by(|a, b| {
            a.annotations
                .get(REF_NAME)
                .cmp(&b.annotations.get(REF_NAME))
        });
        self.commit_index(name, path, index, referrers, &[])
    }

    /// The last steps of every index.json change, in an order a crash at any point
    /// recovers from: the new index durable under a temporary name, a publish marker,
    /// the referrers indexes of `gone_subjects` removed, the rename, the referrers
    /// added, the tag list (and catalog), the marker removed. Call under the index lock.
    pub(super) fn commit_index(
        &self,
        name: &str,
        path: PathBuf,
        index: ImageIndex,
        referrers: &[(Digest, Descriptor)],
        gone_subjects: &[Digest],
    ) -> Result<()> {
        // Compact: for 10k tags the pretty form is twice the bytes to write and fsync.
        let mut body = serde_json::to_vec(&index).expect("index serialises");
        body.push(b'\n');
        let tmp = synced_temp(&self.tmp_dir(), &body)?;
        // From here on, the served documents lag the index until rewritten below;
        // should this process die in between, the marker has the next opener rebuild them.
        let marker = self.publish_marker(name);
        write_atomic(&self.tmp_dir(), &marker, name.as_bytes())?;
        crashpoint::hit("index-written");
        for subject in gone_subjects {
            self.remove_referrers(name, subject)?;
        }
        replace(tmp, &path)?;
        crashpoint::hit("index-renamed");
        for (subject, referrer) in referrers {
            self.add_referrer(name, subject, referrer)?;
        }
        self.write_tag_list(name, &index)?;
        fs::remove_file(&marker).map_err(StoreError::io("remove", &marker))?;
        self.written_indexes.keep(path, index)
    }
}

/// Each index.json as this process last wrote it, with the identity of the file written.
/// While the file on disk is still that one (another writer's publish renames a new file
/// into place), the next publish uses it instead of reading and parsing it again: for
/// thousands of tags that parse was a fifth of a cold fetch's CPU. Used under the index
/// lock, so nothing can replace the file between the check and the write.
#[derive(Debug, Default)]
pub(super) struct WrittenIndexes(Mutex<HashMap<PathBuf, (FileStamp, ImageIndex)>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn stamp(path: &Path) -> Result<Option<FileStamp>> {
    use std::os::unix::fs::MetadataExt;
    match fs::metadata(path) {
        Ok(m) => Ok(Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("stat", path)(e)),
    }
}

impl WrittenIndexes {
    /// The index at `path`: the one kept from this process's last write if the file is
    /// still that write, else read from disk. (Taken out: a failed publish leaves none.)
    pub(super) fn take(&self, path: &Path) -> Result<ImageIndex> {
        let kept = self.0.lock().expect("index cache lock").remove(path);
        match kept {
            Some((written, index)) if stamp(path)? == Some(written) => Ok(index),
            _ => read_index_file(path),
        }
    }

    /// Drop what is kept for `path` (its file is being removed).
    pub(super) fn forget(&self, path: &Path) {
        self.0.lock().expect("index cache lock").remove(path);
    }

    fn keep(&self, path: PathBuf, index: ImageIndex) -> Result<()> {
        if let Some(s) = stamp(&path)? {
            self.0
                .lock()
                .expect("index cache lock")
                .insert(path, (s, index));
        }
        Ok(())
    }
}

/// Read an index.json; an absent file reads as an empty index.
pub fn read_index_file(path: &Path) -> Result<ImageIndex> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::BadIndex {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ImageIndex::default()),
        Err(e) => Err(StoreError::io("read", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::OCI_MANIFEST;

    fn update(tag: Option<&str>, body: &[u8]) -> TagUpdate {
        TagUpdate {
            tag: tag.map(str::to_owned),
            media_type: OCI_MANIFEST.into(),
            digest: Digest::sha256_of(body),
            size: body.len() as u64,
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn retagging_replaces_and_untagged_is_added_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .publish("a/b", &[update(Some("v1"), b"one")], &[])
            .unwrap();
        store
            .publish(
                "a/b",
                &[update(Some("v1"), b"two"), update(Some("v0"), b"one")],
                &[],
            )
            .unwrap();
        store.publish("a/b", &[update(None, b"two")], &[]).unwrap();
        let index = store.read_index("a/b").unwrap();
        assert_eq!(index.manifests.len(), 2);
        assert!(
            index.contains(&Digest::sha256_of(b"one")) && !index.contains(&Digest::sha256_of(b"1"))
        );
        assert_eq!(index.tag("v1").unwrap().digest, Digest::sha256_of(b"two"));
        assert_eq!(index.tag("v0").unwrap().digest, Digest::sha256_of(b"one"));
        assert!(dir.path().join("a/b/oci-layout").is_file());
        let served = |p: &str| fs::read_to_string(dir.path().join(".v2").join(p)).unwrap();
        assert_eq!(
            served("a/b/_tags.json"),
            r#"{"name":"a/b","tags":["v0","v1"]}"#
        );
        assert_eq!(served("_catalog.json"), r#"{"repositories":["a/b"]}"#);
    }

    #[test]
    fn served_documents_a_killed_publish_left_behind_are_written_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .publish("a/b", &[update(Some("v1"), b"one")], &[])
            .unwrap();
        // What a kill right after the index.json rename leaves.
        let marker = store.publish_marker("a/b");
        fs::write(&marker, "a/b").unwrap();
        fs::remove_dir_all(dir.path().join(".v2")).unwrap();
        drop(store);
        Store::open(dir.path()).unwrap();
        let served = |p: &str| fs::read_to_string(dir.path().join(".v2").join(p)).unwrap();
        assert_eq!(served("a/b/_tags.json"), r#"{"name":"a/b","tags":["v1"]}"#);
        assert_eq!(served("_catalog.json"), r#"{"repositories":["a/b"]}"#);
        assert!(!marker.exists());
    }

    #[test]
    fn a_tag_listed_twice_resolves_to_its_first_entry() {
        let entry = |tag: &str, body: &[u8]| Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::sha256_of(body),
            size: body.len() as u64,
            urls: Vec::new(),
            platform: None,
            artifact_type: None,
            annotations: BTreeMap::from([(REF_NAME.to_owned(), tag.to_owned())]),
        };
        let index = TagIndex::from(ImageIndex {
            manifests: vec![entry("v1", b"one"), entry("v1", b"two")],
            ..ImageIndex::default()
        });
        assert_eq!(index.tag("v1").unwrap().digest, Digest::sha256_of(b"one"));
        assert!(index.tag("v2").is_none());
        assert!(index.contains(&Digest::sha256_of(b"two")));
    }

    #[test]
    fn another_writers_publish_is_read_not_overwritten_by_a_kept_index() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            Store::open(dir.path()).unwrap(),
            Store::open(dir.path()).unwrap(),
        );
        a.publish("r", &[update(Some("v1"), b"one")], &[]).unwrap();
        b.publish("r", &[update(Some("v2"), b"two")], &[]).unwrap();
        // `a` kept the index it wrote; the file is now b's, so a must read it.
        a.publish("r", &[update(Some("v3"), b"three")], &[])
            .unwrap();
        let index = a.read_index("r").unwrap();
        for tag in ["v1", "v2", "v3"] {
            assert!(index.tag(tag).is_some(), "{tag} lost");
        }
    }

    #[test]
    fn the_last_update_of_a_tag_in_a_batch_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .publish(
                "r",
                &[
                    update(Some("v1"), b"one"),
                    update(None, b"one"),
                    update(Some("v1"), b"two"),
                ],
                &[],
            )
            .unwrap();
        let index = store.read_index("r").unwrap();
        assert_eq!(index.tag("v1").unwrap().digest, Digest::sha256_of(b"two"));
        assert_eq!(index.entries().len(), 2, "{:?}", index.entries());
    }

    #[test]
    fn hostile_tags_never_reach_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let err = store
            .publish(
                "x",
                &[update(Some("a\";} location / { root /;"), b"1")],
                &[],
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidName(_)), "{err}");
        assert!(!dir.path().join("x/index.json").exists());
    }
}
