//! Putting a pool blob into a repository's layout without a second copy on disk.

use std::fs;
use std::io;
use std::path::Path;

use super::{Result, StoreError};

/// How a blob reached a repository's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// It was already there.
    Present,
    Hardlink,
    Reflink,
    Copy,
}

/// Link `src` (a complete pool file) to `dst`.
///
/// Hardlink first: it shares the inode on every filesystem, so a layer used by many
/// repositories costs its bytes once and `stat` shows it. Reflink (shared extents on
/// btrfs/XFS) and then a plain copy are the fallbacks for where hardlinks fail (link
/// count limit, filesystems without them). Fallbacks go through a temporary name and a
/// rename (from `tmp_dir`, on the same filesystem) so `dst` never exists half-written.
pub fn link_or_copy(tmp_dir: &Path, src: &Path, dst: &Path) -> Result<LinkKind> {
    if dst.is_file() {
        return Ok(LinkKind::Present);
    }
    match fs::hard_link(src, dst) {
        Ok(()) => return Ok(LinkKind::Hardlink),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(LinkKind::Present),
        Err(e) => tracing::debug!(
            "hardlink {} failed ({e}); trying reflink/copy",
            dst.display()
        ),
    }
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(tmp_dir)
        .map_err(StoreError::io("create temporary file in", tmp_dir))?
        .into_temp_path();
    // reflink needs the destination not to exist.
    fs::remove_file(&tmp).map_err(StoreError::io("remove", &tmp))?;
    let kind = match reflink_copy::reflink_or_copy(src, &tmp) {
        Ok(None) => LinkKind::Reflink,
        Ok(Some(_)) => LinkKind::Copy,
        Err(e) => return Err(StoreError::io("copy into", &tmp)(e)),
    };
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::io("sync", &tmp))?;
    tmp.persist(dst)
        .map_err(|e| StoreError::io("rename into place", dst)(e.error))?;
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn hardlinks_share_the_inode_and_repeat_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("pool");
        fs::write(&src, b"layer").unwrap();
        let dst = dir.path().join("repo");
        assert_eq!(
            link_or_copy(dir.path(), &src, &dst).unwrap(),
            LinkKind::Hardlink
        );
        assert_eq!(
            link_or_copy(dir.path(), &src, &dst).unwrap(),
            LinkKind::Present
        );
        assert_eq!(
            fs::metadata(&dst).unwrap().ino(),
            fs::metadata(&src).unwrap().ino()
        );
    }
}
