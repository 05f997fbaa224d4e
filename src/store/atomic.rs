//! Atomic file replacement: a reader sees the old file or the new one, never a mix, and
//! after a crash the new one is either complete or absent. Temporary files live in the
//! store's `.tmp/` (same filesystem, so the final rename is atomic), never beside the
//! target, so a crash leaves nothing stray in the pool or in a repository.

use std::fs::{File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::NamedTempFile;

use super::modes::FILE_MODE;
use super::{Result, StoreError};

/// Write `bytes` to `path` through a temporary file in `tmp_dir`, fsync it, rename it over
/// `path`, then fsync the directory so the rename itself survives a power cut.
pub fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    replace(synced_temp(tmp_dir, bytes)?, path)
}

/// The second half of `write_atomic`, for a caller with a step between the two halves.
pub fn replace(tmp: NamedTempFile, path: &Path) -> Result<()> {
    tmp.persist(path)
        .map_err(|e| StoreError::io("rename into place", path)(e.error))?;
    sync_dir(parent(path))
}

/// Like `write_atomic`, but an existing `path` wins: for content-addressed files, where
/// replacing an equal file would break the hardlinks already made to it. Returns whether
/// this call created `path`. The bytes are durable on return, the directory entry is
/// not: the caller syncs the directory once for many files (a repository with
/// thousands of tags has thousands of manifests, and a directory fsync each doubled the
/// fsyncs of a cold fetch).
pub fn write_new(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<bool> {
    let tmp = synced_temp(tmp_dir, bytes)?;
    match tmp.persist_noclobber(path) {
        Ok(_) => Ok(true),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(StoreError::io("move into place", path)(e.error)),
    }
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// The first half of `write_atomic`: the bytes, durable under a temporary name, with the
/// mode of a published file (tempfile's default, 0600, would hide it from the web server).
pub fn synced_temp(dir: &Path, bytes: &[u8]) -> Result<NamedTempFile> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(Permissions::from_mode(FILE_MODE))
        .tempfile_in(dir)
        .map_err(StoreError::io("create temporary file in", dir))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(StoreError::io("write", tmp.path()))?;
    Ok(tmp)
}

/// fsync a directory, making renames and links inside it durable.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("sync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index.json");
        write_atomic(dir.path(), &p, b"one").unwrap();
        write_atomic(dir.path(), &p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn manifest_stored_twice_keeps_the_inode_repositories_link_to() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("blob");
        write_new(dir.path(), &p, b"same").unwrap();
        let ino = std::fs::metadata(&p).unwrap().ino();
        write_new(dir.path(), &p, b"same").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), ino);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
