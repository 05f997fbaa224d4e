//! `prune`: remove what no tag reaches any more (blobs of retagged images, links left in a
//! layout, stale temporary files), under the exclusive store lock so no fetch is writing.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::inventory::{reachable, repository_names};
use super::{
    LOCK_FILE, POOL_DIR, PUBLISH_MARKER, Result, StoreError, TMP_DIR, open_lock_file,
    read_index_file, repo_path,
};

#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    /// Files removed (or, with dry_run, that would be).
    pub removed: Vec<PathBuf>,
    /// Bytes of the pool blobs and temporary files among them.
    pub bytes: u64,
    pub dry_run: bool,
}

/// Remove everything in `root` that no index.json reaches. Refuses (rather than waits)
/// while another process holds the store.
pub fn prune(root: &Path, dry_run: bool) -> Result<PruneReport> {
    let lock_path = root.join(LOCK_FILE);
    let lock = open_lock_file(&lock_path)?;
    if lock.try_lock().is_err() {
        return Err(StoreError::Busy(root.to_owned()));
    }
    let mut report = PruneReport {
        dry_run,
        ..PruneReport::default()
    };
    let mut live = HashSet::new();
    for name in repository_names(root)? {
        // An invalid name was never written by fetch; leave such directories alone.
        let Ok(dir) = repo_path(root, &name) else {
            continue;
        };
        let index = read_index_file(&dir.join("index.json"))?;
        let reached: HashSet<String> = reachable(&dir, &index.manifests)
            .into_iter()
            .map(|d| d.digest.hex().to_owned())
            .collect();
        for path in files(&dir.join("blobs/sha256"))? {
            if !file_name_in(&path, &reached) {
                report.remove(path, false)?;
            }
        }
        live.extend(reached);
    }
    for path in files(&root.join(POOL_DIR).join("sha256"))? {
        if !file_name_in(&path, &live) {
            report.remove(path, true)?;
        }
    }
    // Under the exclusive lock no download is in flight: partial files are garbage too.
    // Publish markers are not: the next fetch finishes those publishes.
    for path in files(&root.join(TMP_DIR))? {
        if path.extension().is_none_or(|e| e != PUBLISH_MARKER) {
            report.remove(path, true)?;
        }
    }
    Ok(report)
}

impl PruneReport {
    fn remove(&mut self, path: PathBuf, count_bytes: bool) -> Result<()> {
        if count_bytes {
            self.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        }
        if !self.dry_run {
            fs::remove_file(&path).map_err(StoreError::io("remove", &path))?;
        }
        self.removed.push(path);
        Ok(())
    }
}

fn file_name_in(path: &Path, set: &HashSet<String>) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| set.contains(n))
}

fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<PathBuf> = rd
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()
                .map_err(StoreError::io("list", dir))?;
            v.sort();
            Ok(v)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StoreError::io("list", dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn refuses_while_a_writer_holds_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Store::open(dir.path()).unwrap();
        fs::write(dir.path().join(TMP_DIR).join("sha256-ab.part"), b"x").unwrap();
        assert!(matches!(prune(dir.path(), false), Err(StoreError::Busy(_))));
        assert!(dir.path().join(TMP_DIR).join("sha256-ab.part").exists());
        drop(writer);
        let marker = dir
            .path()
            .join(TMP_DIR)
            .join(format!("ab.{PUBLISH_MARKER}"));
        fs::write(&marker, b"a").unwrap();
        let report = prune(dir.path(), false).unwrap();
        assert_eq!(report.removed.len(), 1);
        assert!(marker.exists(), "the next fetch finishes that publish");
    }
}
