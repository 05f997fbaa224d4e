//! File modes of the served tree. A web server reads the store as its own user (stock
//! nginx's workers run as `www-data`, `nginx` or `nobody`), so everything the store
//! publishes is created readable by others: files 0644 and directories 0755, less the
//! process umask (as `cp` and skopeo do). A file gets its mode when it is created under
//! its temporary name, so no reader ever meets a published file it cannot open. The
//! store's private entries (`.lock`, `.index.lock`, `.tmp/`) are not served.

use std::fs::{self, DirBuilder, Permissions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use super::{INDEX_LOCK_FILE, LOCK_FILE, Result, StoreError, TMP_DIR};

/// Mode of every published file, before the umask.
pub const FILE_MODE: u32 = 0o644;
/// Mode of every published directory, before the umask.
pub const DIR_MODE: u32 = 0o755;
/// What others need: read a file, traverse a directory.
const OTHERS_READ: u32 = 0o004;
const OTHERS_TRAVERSE: u32 = 0o001;
const SETGID: u32 = 0o2000;

/// Create `dir` and its missing parents with `DIR_MODE` (less the umask).
pub fn create_dirs(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(StoreError::io("create directory", dir))
}

/// A published entry that users other than its owner cannot read (a file) or traverse
/// (a directory): a web server running as its own user gets 403 for it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Unreadable {
    pub path: PathBuf,
    pub mode: u32,
    pub dir: bool,
}

/// Who must be able to read the store: "others", or, when the root directory has the
/// setgid bit (a store readable by the web server's group only, see the README), the
/// root's group.
#[derive(Debug, Clone, Copy)]
pub struct WebReader {
    group: Option<u32>,
}

impl WebReader {
    pub fn of(root: &Path) -> Result<WebReader> {
        let meta = fs::metadata(root).map_err(StoreError::io("stat", root))?;
        Ok(WebReader {
            group: (meta.mode() & SETGID != 0).then_some(meta.gid()),
        })
    }

    /// Whether it can read this file or traverse this directory.
    pub fn can_read(&self, meta: &fs::Metadata) -> bool {
        let mode = meta.mode();
        let need = if meta.is_dir() {
            OTHERS_TRAVERSE
        } else {
            OTHERS_READ
        };
        mode & need != 0 || (self.group == Some(meta.gid()) && mode & (need << 3) != 0)
    }
}

/// What the web server would meet among the published entries.
#[derive(Debug, Default)]
pub struct Findings {
    /// Entries (the root included) it cannot read or traverse.
    pub unreadable: Vec<Unreadable>,
    /// Symbolic links (not followed).
    pub symlinks: Vec<PathBuf>,
}

/// Walk the published entries of the store at `root`.
pub fn inspect(root: &Path) -> Result<Findings> {
    let reader = WebReader::of(root)?;
    let mut found = Vec::new();
    let mut symlinks = Vec::new();
    walk_published(
        root,
        |path, meta| {
            if !reader.can_read(meta) {
                found.push(Unreadable {
                    path: path.to_owned(),
                    mode: meta.mode() & 0o7777,
                    dir: meta.is_dir(),
                });
            }
            Ok(())
        },
        |path| symlinks.push(path.to_owned()),
    )?;
    Ok(Findings {
        unreadable: found,
        symlinks,
    })
}

/// Give every published entry the bits of `FILE_MODE` / `DIR_MODE` it lacks, as far as
/// the process umask allows. Never removes a bit. Returns the paths it changed.
pub fn repair(root: &Path) -> Result<Vec<PathBuf>> {
    let umask = process_umask();
    let mut changed = Vec::new();
    walk_published(
        root,
        |path, meta| {
            let mode = meta.permissions().mode() & 0o7777;
            let want = if meta.is_dir() { DIR_MODE } else { FILE_MODE } & !umask;
            if mode & want != want {
                fs::set_permissions(path, Permissions::from_mode(mode | want))
                    .map_err(StoreError::io("change the mode of", path))?;
                changed.push(path.to_owned());
            }
            Ok(())
        },
        |_| {},
    )?;
    Ok(changed)
}

/// The store's root and the directories above it (after resolving links) that the web
/// server cannot traverse: it can then open nothing in the store.
pub fn closed_path(root: &Path) -> Vec<PathBuf> {
    let (Ok(root), Ok(reader)) = (fs::canonicalize(root), WebReader::of(root)) else {
        return Vec::new();
    };
    root.ancestors()
        .filter(|dir| {
            fs::metadata(dir).is_ok_and(|m| {
                let open = if *dir == root {
                    reader.can_read(&m)
                } else {
                    m.mode() & OTHERS_TRAVERSE != 0
                };
                !open
            })
        })
        .map(Path::to_path_buf)
        .collect()
}

/// Visit the root and everything under it except the store's private entries; regular
/// files and directories only.
/// Every published entry, and separately every symbolic link among them (never followed:
/// the store makes none, and a web server must not serve what one points at).
fn walk_published(
    root: &Path,
    mut visit: impl FnMut(&Path, &fs::Metadata) -> Result<()>,
    mut symlink: impl FnMut(&Path),
) -> Result<()> {
    let private = [LOCK_FILE, INDEX_LOCK_FILE, TMP_DIR];
    let walk = WalkDir::new(root)
        .into_iter()
        .filter_entry(|e| e.depth() != 1 || !private.iter().any(|p| e.file_name() == *p));
    for entry in walk {
        let entry = entry.map_err(StoreError::walk("walk", root))?;
        if entry.path_is_symlink() {
            symlink(entry.path());
            continue;
        }
        let meta = entry
            .metadata()
            .map_err(StoreError::walk("stat", entry.path()))?;
        visit(entry.path(), &meta)?;
    }
    Ok(())
}

/// The umask, read from procfs (setting it to read it back would race with other
/// threads creating files); 022 where procfs does not say.
fn process_umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_opens_what_others_cannot_read_and_skips_private_entries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        create_dirs(&root.join("repo/blobs/sha256")).unwrap();
        create_dirs(&root.join(TMP_DIR)).unwrap();
        let file = root.join("repo/index.json");
        let part = root.join(TMP_DIR).join("x.part");
        for f in [&file, &part] {
            fs::write(f, b"{}").unwrap();
            fs::set_permissions(f, Permissions::from_mode(0o600)).unwrap();
        }
        fs::set_permissions(root.join("repo"), Permissions::from_mode(0o700)).unwrap();

        let found = inspect(root).unwrap().unreadable;
        let paths: Vec<&Path> = found.iter().map(|u| u.path.as_path()).collect();
        assert!(paths.contains(&file.as_path()), "{found:?}");
        assert!(paths.contains(&root.join("repo").as_path()), "{found:?}");
        assert!(!paths.contains(&part.as_path()), "{found:?}");

        repair(root).unwrap();
        assert!(inspect(root).unwrap().unreadable.is_empty());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file) & 0o644, 0o644 & !process_umask());
        assert_eq!(mode(&part), 0o600, "private files keep their mode");
        assert!(
            repair(root).unwrap().is_empty(),
            "a second repair changes nothing"
        );
    }
}
