//! The content-addressed store: a pool of verified blobs under `.blobs/`, and one OCI
//! image layout per repository whose blobs are links into the pool.
//!
//! The store never touches the network: it takes bytes, verifies them and publishes
//! them in an order that keeps every state a reader (nginx, skopeo) can see consistent:
//! blob → pool → repository link → index.json.

mod atomic;
mod blob;
pub mod inventory;
mod layout;
mod link;
pub mod modes;
pub mod prune;
pub mod remove;
mod served;
pub mod verify;
mod view;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use atomic::write_atomic;
use atomic::write_new;
pub use blob::{BlobClaim, PartialBlob};
pub use layout::{ImageIndex, TagIndex, TagUpdate, read_index_file};
pub use link::LinkKind;
pub use remove::{Removal, Removed};
pub use served::{
    CATALOG_FILE, INDEX_PAGE, PAGE_PREFIX, REFERRERS_DIR, SERVED_DIR, TAGS_FILE, pages,
};
pub use view::StoreView;

use crate::crashpoint;
use crate::manifest::Verified;
use crate::reference::{self, Digest, ReferenceError};

/// Major version of the on-disk format; a store with a newer major is refused.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_FILE: &str = ".static-registry";
const LOCK_FILE: &str = ".lock";
const INDEX_LOCK_FILE: &str = ".index.lock";
pub const TMP_DIR: &str = ".tmp";
/// Extension of the marker (in `.tmp/`) of a publish whose served documents may be
/// unwritten; see `Store::finish_interrupted_publishes`.
const PUBLISH_MARKER: &str = "publish";
const POOL_DIR: &str = ".blobs";
/// Entries of an OCI image layout; a repository name component equal to one of these
/// would land inside a parent repository's layout.
const LAYOUT_ENTRIES: [&str; 3] = ["blobs", "index.json", "oci-layout"];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} was written by a newer static-registry (store format {found}, this build reads {FORMAT_VERSION}); upgrade static-registry"
    )]
    NewerFormat { path: PathBuf, found: u32 },
    #[error("{path} is not a static-registry store marker: {reason}")]
    BadFormatFile { path: PathBuf, reason: String },
    #[error(transparent)]
    InvalidName(#[from] ReferenceError),
    #[error(
        "repository name {name:?} has a component {component:?}, which would collide with the OCI layout of a parent repository; choose another name"
    )]
    ReservedComponent { name: String, component: String },
    #[error("digest mismatch for {expected}: the bytes hash to {actual}; nothing was stored")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error(
        "size mismatch for {digest}: expected {expected} bytes, got {actual}; nothing was stored"
    )]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("unsupported digest algorithm {0:?}: the store keeps sha256 blobs only")]
    UnsupportedAlgorithm(String),
    #[error(
        "no space left on the device holding {path}: free space there, or fetch into a --root on a larger filesystem (`static-registry prune` removes unreferenced blobs); nothing was published"
    )]
    DiskFull { path: PathBuf },
    #[error(
        "another static-registry process is writing to {0} (a fetch holds its .lock); try again when it has finished"
    )]
    Busy(PathBuf),
    #[error("{0} is not a static-registry store (it has no .static-registry marker)")]
    NotAStore(PathBuf),
    #[error("repository {0} is not in the store")]
    UnknownRepository(String),
    #[error("repository {name} has no tag {tag:?}")]
    UnknownTag { name: String, tag: String },
    #[error("repository {name} has no manifest {digest}")]
    UnknownManifest { name: String, digest: Digest },
    #[error("{path} is not a valid OCI index: {source}")]
    BadIndex {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    pub(crate) fn io<'a>(
        action: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> StoreError + 'a {
        move |source| {
            if source.kind() == io::ErrorKind::StorageFull {
                StoreError::DiskFull {
                    path: path.to_owned(),
                }
            } else {
                StoreError::Io {
                    action,
                    path: path.to_owned(),
                    source,
                }
            }
        }
    }

    /// A walkdir error as the I/O error it wraps, on the path it names (else `root`):
    /// its own message repeats the cause, which then printed twice.
    pub fn walk(action: &'static str, root: &Path) -> impl FnOnce(walkdir::Error) -> StoreError {
        move |e| {
            let path = e.path().unwrap_or(root).to_owned();
            let source = match e.into_io_error() {
                Some(io) => io,
                None => io::Error::other("a symbolic link loop"),
            };
            StoreError::io(action, &path)(source)
        }
    }

    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Serialize, Deserialize)]
struct FormatMarker {
    format: u32,
    /// Every published file was written readable by the web server. Stores written
    /// before this (files 0600 through temp files) lack it and are repaired once at
    /// the next open for writing.
    #[serde(default, rename = "served-modes")]
    served_modes: bool,
}

/// The store's format marker, `None` when there is none; a marker of a newer major
/// format is refused.
fn read_format(root: &Path) -> Result<Option<FormatMarker>> {
    let marker = root.join(FORMAT_FILE);
    let bytes = match fs::read(&marker) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read", &marker)(e)),
    };
    let found: FormatMarker =
        serde_json::from_slice(&bytes).map_err(|e| StoreError::BadFormatFile {
            path: marker.clone(),
            reason: e.to_string(),
        })?;
    if found.format > FORMAT_VERSION {
        return Err(StoreError::NewerFormat {
            path: marker,
            found: found.format,
        });
    }
    Ok(Some(found))
}

impl FormatMarker {
    fn current() -> Vec<u8> {
        serde_json::to_vec(&FormatMarker {
            format: FORMAT_VERSION,
            served_modes: true,
        })
        .expect("marker serialises")
    }
}

/// An open store. Writers hold a shared lock on `<root>/.lock` for the store's lifetime
/// so that a future exclusive user (prune) can wait for them; concurrent fetches are
/// safe by construction (content-addressed renames, idempotent links, index.json
/// rewritten under a short exclusive lock).
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    _lock: File,
    written_indexes: layout::WrittenIndexes,
}

impl Store {
    /// Open (creating if needed) the store at `root` for writing.
    pub fn open(root: &Path) -> Result<Store> {
        for dir in [
            root.to_path_buf(),
            root.join(TMP_DIR),
            root.join(POOL_DIR).join("sha256"),
        ] {
            modes::create_dirs(&dir)?;
        }
        let lock_path = root.join(LOCK_FILE);
        let lock = open_lock_file(&lock_path)?;
        if lock.try_lock().is_ok() {
            // No other writer is running: temp files a killed run left are garbage (the
            // .part files are kept: they are resumable downloads; so are publish markers,
            // finished below).
            remove_stale_temps(&root.join(TMP_DIR))?;
        }
        // Converts an exclusive lock taken above, or waits for a prune to finish. Held
        // shared, it also keeps other openers from removing our temp files.
        lock.lock_shared()
            .map_err(StoreError::io("lock", &lock_path))?;
        let marker = root.join(FORMAT_FILE);
        match read_format(root)? {
            Some(found) if !found.served_modes => {
                let changed = modes::repair(root)?;
                tracing::info!(
                    "made {} files and directories of {} readable by the web server",
                    changed.len(),
                    root.display()
                );
                write_atomic(&root.join(TMP_DIR), &marker, &FormatMarker::current())?;
            }
            Some(_) => {}
            None => write_atomic(&root.join(TMP_DIR), &marker, &FormatMarker::current())?,
        }
        let store = Store {
            root: root.to_path_buf(),
            _lock: lock,
            written_indexes: layout::WrittenIndexes::default(),
        };
        store.finish_interrupted_publishes()?;
        Ok(store)
    }

    /// Have the store to ourselves from now on (for deleting files a concurrent fetch
    /// could be linking): fails at once, rather than waits, while another process holds it.
    pub(crate) fn exclusive(&self) -> Result<()> {
        self._lock
            .try_lock()
            .map_err(|_| StoreError::Busy(self.root.clone()))
    }

    /// The short exclusive lock under which index.json and the served documents change.
    fn lock_index(&self) -> Result<File> {
        let path = self.root.join(INDEX_LOCK_FILE);
        let lock = open_lock_file(&path)?;
        lock.lock().map_err(StoreError::io("lock", &path))?;
        Ok(lock)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    /// The pool's directory of sha256 blobs.
    pub fn pool_dir(&self) -> PathBuf {
        pool_dir(&self.root)
    }

    /// Where the pool keeps a blob. Only sha256 is stored (the digest type guarantees the
    /// hex part is safe to use as a file name).
    pub fn pool_path(&self, digest: &Digest) -> Result<PathBuf> {
        sha256_only(digest)?;
        Ok(self.root.join(POOL_DIR).join("sha256").join(digest.hex()))
    }

    pub fn has_blob(&self, digest: &Digest) -> Result<bool> {
        Ok(self.pool_path(digest)?.is_file())
    }

    /// Read a blob from the pool (manifests, which are small).
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.pool_path(digest)?;
        fs::read(&path).map_err(StoreError::io("read", &path))
    }

    /// Store a manifest in the pool under its digest (a [`Verified`] value's digest was
    /// computed from its bytes, so they are not hashed again). Its pool entry becomes
    /// durable at the next `publish`, which every use of it precedes.
    pub fn put_manifest(&self, manifest: &Verified) -> Result<()> {
        let path = self.pool_path(&manifest.digest)?;
        if path.is_file() {
            return Ok(());
        }
        // Concurrent fetches may store the same manifest; the first file stays, so links
        // made to it remain the pool's inode.
        if write_new(&self.tmp_dir(), &path, &manifest.bytes)? {
            crashpoint::hit("blob-pooled");
        }
        Ok(())
    }

    /// The directory of a repository's OCI layout (see [`repo_path`]).
    pub fn repo_dir(&self, name: &str) -> Result<PathBuf> {
        repo_path(&self.root, name)
    }

    /// Make `blob` available in repository `name` (link into its layout).
    pub fn link_blob(&self, name: &str, digest: &Digest) -> Result<LinkKind> {
        let src = self.pool_path(digest)?;
        let dir = self.repo_dir(name)?.join("blobs").join("sha256");
        modes::create_dirs(&dir)?;
        let kind = link::link_or_copy(&self.tmp_dir(), &src, &dir.join(digest.hex()))?;
        if kind != LinkKind::Present {
            crashpoint::hit("repo-linked");
        }
        Ok(kind)
    }
}

/// The pool's directory of sha256 blobs (files named by hex digest) of the store at
/// `root`.
pub fn pool_dir(root: &Path) -> PathBuf {
    root.join(POOL_DIR).join("sha256")
}

/// The directory of repository `name`'s OCI layout under `root`, after validating the
/// name so that it can never point outside the root or into another layout.
pub fn repo_path(root: &Path, name: &str) -> Result<PathBuf> {
    reference::validate_repository(name)?;
    if let Some(component) = name.split('/').skip(1).find(|c| LAYOUT_ENTRIES.contains(c)) {
        return Err(StoreError::ReservedComponent {
            name: name.to_owned(),
            component: component.to_owned(),
        });
    }
    Ok(root.join(name))
}

fn sha256_only(digest: &Digest) -> Result<()> {
    if digest.algorithm() == "sha256" {
        Ok(())
    } else {
        Err(StoreError::UnsupportedAlgorithm(digest.algorithm().into()))
    }
}

fn remove_file_if_present(path: &Path) -> Result<()> {
    absent_is_fine(fs::remove_file(path), path)
}

/// Remove the directory tree `path`, if there is one.
fn remove_tree_if_present(path: &Path) -> Result<()> {
    absent_is_fine(fs::remove_dir_all(path), path)
}

fn absent_is_fine(removed: io::Result<()>, path: &Path) -> Result<()> {
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Remove `dir` and then its parents while they are empty, up to (not including) `stop`.
fn remove_empty_dirs(dir: &Path, stop: &Path) -> Result<()> {
    for d in dir
        .ancestors()
        .take_while(|d| *d != stop && d.starts_with(stop))
    {
        match fs::remove_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Not empty (a nested repository, another repository's sibling): stop here.
            Err(_) => break,
        }
    }
    Ok(())
}

fn remove_stale_temps(tmp: &Path) -> Result<()> {
    for entry in fs::read_dir(tmp).map_err(StoreError::io("read", tmp))? {
        let path = entry.map_err(StoreError::io("read", tmp))?.path();
        if path
            .extension()
            .is_none_or(|e| e != "part" && e != PUBLISH_MARKER)
        {
            fs::remove_file(&path).map_err(StoreError::io("remove stale temporary file", &path))?;
        }
    }
    Ok(())
}

fn open_lock_file(path: &Path) -> Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(StoreError::io("open lock file", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_nest_into_a_layout_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.repo_dir("a/b/c").is_ok());
        assert!(store.repo_dir("blobs/x").is_ok());
        for bad in [
            "a/blobs",
            "a/index.json",
            "x/oci-layout/y",
            "../a",
            "a/../b",
            "A",
        ] {
            assert!(store.repo_dir(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn stale_temps_are_removed_only_when_no_other_writer_runs() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(TMP_DIR);
        fs::create_dir_all(&tmp).unwrap();
        fs::write(tmp.join(".tmp-killed"), b"x").unwrap();
        fs::write(tmp.join("sha256-ab.part"), b"resumable").unwrap();
        let first = Store::open(dir.path()).unwrap();
        assert!(!tmp.join(".tmp-killed").exists());
        assert!(tmp.join("sha256-ab.part").exists());
        // A temp of a running writer survives a second opener.
        fs::write(tmp.join(".tmp-live"), b"x").unwrap();
        let _second = Store::open(dir.path()).unwrap();
        assert!(tmp.join(".tmp-live").exists());
        drop(first);
    }

    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FORMAT_FILE), br#"{"format":2}"#).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::NewerFormat { found: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_manifest_put_twice_keeps_its_first_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let body = br#"{"schemaVersion":2,"manifests":[]}"#;
        let m = Verified::new(bytes::Bytes::from_static(body), None).unwrap();
        store.put_manifest(&m).unwrap();
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let first = inode(&store.pool_path(&m.digest).unwrap());
        store.put_manifest(&m).unwrap();
        assert_eq!(inode(&store.pool_path(&m.digest).unwrap()), first);
        assert_eq!(store.read_blob(&m.digest).unwrap(), body);
    }
}

#[cfg(test)]
mod properties {
    use std::path::Component;

    use proptest::prelude::*;

    use super::*;

    /// Characters that would change the meaning of an nginx config line (or a shell
    /// word) if a name or tag carried them into one.
    const CONFIG_METACHARACTERS: &[char] = &[
        ' ', '\t', '\n', '\r', '\0', ';', '{', '}', '"', '\'', '$', '\\', '#', '`', '(', ')', '*',
        '?', '^', '|', '[', ']', '<', '>', '&', ',', ':', '@', '=', '+', '%', '~',
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Whatever a registry sends as a repository name, an accepted one is a relative
        /// path of plain components inside the root.
        #[test]
        fn accepted_names_stay_inside_the_root(name in "[a-z0-9._/ -]{0,12}|\\PC{0,40}|(\\.\\./|/|[a-z]{1,3}/){1,4}[a-z.]{0,4}") {
            let root = Path::new("/store");
            if let Ok(path) = repo_path(root, &name) {
                prop_assert!(path.starts_with(root));
                let rel = path.strip_prefix(root).unwrap();
                prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
                prop_assert!(!name.contains(CONFIG_METACHARACTERS));
                prop_assert!(!name.split('/').any(|c| c.starts_with('.') || c.starts_with('_')));
            }
        }

        /// An accepted tag is a single safe path component and config token.
        #[test]
        fn accepted_tags_are_inert(tag in "[A-Za-z0-9._-]{0,10}|\\PC{0,140}|[a-z]{1,3}[\";{} $/]{1,3}") {
            if reference::validate_tag(&tag).is_ok() {
                prop_assert!(!tag.contains(CONFIG_METACHARACTERS));
                prop_assert!(!tag.contains('/') && !tag.starts_with('.') && !tag.starts_with('-'));
                prop_assert!(tag.len() <= 128);
            }
        }

        /// Digests accepted anywhere are exactly algorithm:lowercase-hex.
        #[test]
        fn accepted_digests_are_hex(s in "sha256:[0-9a-fA-F./]{60,68}|\\PC{0,80}") {
            if let Ok(d) = s.parse::<Digest>() {
                prop_assert!(d.hex().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
                prop_assert_eq!(d.to_string(), s);
            }
        }

        // The checks above only look inside `if let Ok`: a validator refusing everything
        // would pass them. These generate what the grammar allows and require it accepted.

        /// Every name the OCI grammar allows is accepted and lands inside the root, as
        /// the directories its components name.
        #[test]
        fn valid_names_are_accepted_inside_the_root(
            name in "[a-z0-9]{1,4}((\\.|_|__|-{1,2})[a-z0-9]{1,4}){0,2}(/[a-z0-9]{1,4}((\\.|_|__|-{1,2})[a-z0-9]{1,4}){0,2}){0,3}"
        ) {
            prop_assume!(!name.split('/').skip(1).any(|c| LAYOUT_ENTRIES.contains(&c)));
            let root = Path::new("/store");
            let path = repo_path(root, &name);
            prop_assert!(path.is_ok(), "{:?} refused: {:?}", name, path.err());
            prop_assert_eq!(path.unwrap(), root.join(&name));
        }

        /// Every tag the grammar allows is accepted.
        #[test]
        fn valid_tags_are_accepted(tag in "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}") {
            prop_assert!(reference::validate_tag(&tag).is_ok(), "{:?} refused", tag);
        }

        /// Every sha256 and sha512 digest of lowercase hex is accepted, and names the pool
        /// file of its hex.
        #[test]
        fn valid_digests_are_accepted(hex in "[0-9a-f]{64}", long in "[0-9a-f]{128}") {
            let d: Result<Digest, _> = format!("sha256:{hex}").parse();
            prop_assert!(d.is_ok(), "sha256:{} refused", hex);
            let d = d.unwrap();
            prop_assert_eq!(d.hex(), hex.as_str());
            let sha512 = format!("sha512:{long}");
            prop_assert!(sha512.parse::<Digest>().is_ok(), "{} refused", sha512);
        }
    }
}
