//! `verify`: check a store against its invariants without changing it. Every pool blob
//! hashes to its name; everything every index.json reaches is in that repository's
//! layout with the right size and content; nothing is left half-written; a web server
//! running as another user can read everything served. `repair` mends what it can.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::inventory::{reachable, repository_names};
use super::{
    POOL_DIR, PUBLISH_MARKER, Result, Store, StoreError, TMP_DIR, link, modes, read_index_file,
    repo_path,
};
use crate::manifest::{Descriptor, Manifest, REF_NAME, SOURCE};

/// What `verify` found. `problems` make the store unfit to serve; `notes` do not.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub blobs_checked: usize,
    pub bytes_checked: u64,
    pub repositories: usize,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
    /// Published files and directories others cannot read or traverse (one problem
    /// names how many and how to fix them; this lists each).
    pub unreadable: Vec<modes::Unreadable>,
    /// Damaged files `repair` can mend (each is also a problem).
    pub damage: Vec<Damage>,
}

/// A damaged file, and what `repair` does with it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Damage {
    /// A pool blob whose bytes do not hash to its name; the layout files linked to it
    /// share its bytes. Removed with them (the next fetch downloads it again).
    CorruptPool { path: PathBuf },
    /// A layout file of its own (a copy, not the pool's inode) with wrong bytes. Removed.
    CorruptLayout { path: PathBuf },
    /// A layout file with the right bytes whose pool entry is gone. Linked back.
    NotPooled { path: PathBuf, pool: PathBuf },
    /// A blob an index.json reaches that the layout lacks and the pool has. Linked.
    NotLinked { path: PathBuf, pool: PathBuf },
    /// A symbolic link among the published files. Removed (the link, not its target).
    Symlink { path: PathBuf },
}

/// What `repair` changed.
#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    /// Files and directories made readable (traversable) by others.
    pub modes_fixed: Vec<PathBuf>,
    /// Corrupt files removed (pool blobs with their layout links, layout copies).
    pub removed: Vec<PathBuf>,
    /// Layout files linked back into the pool, and pool blobs linked into layouts.
    pub relinked: Vec<PathBuf>,
    /// Images that no longer have all their blobs, as references to fetch again
    /// (`source:tag` or `source@digest`; the stored name where no source is recorded):
    /// a fetch of them re-downloads exactly what is missing.
    pub fetch_again: Vec<String>,
}

/// Mend what `verify` finds and can be mended in place, with the store to ourselves (no
/// fetch may run): file modes (see `modes`), then the damaged files (see [`Damage`]).
/// Nothing corrupt stays served; what is gone is listed to fetch again.
pub fn repair(store: &Store, threads: usize) -> Result<RepairReport> {
    store.exclusive()?;
    let root = store.root();
    let mut out = RepairReport {
        modes_fixed: modes::repair(root)?,
        ..RepairReport::default()
    };
    for damage in verify(root, threads)?.damage {
        match damage {
            Damage::CorruptPool { path } => {
                // Every layout link to these bytes is corrupt too.
                let inode = fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
                let hex = path.file_name().unwrap_or_default();
                for name in repository_names(root)? {
                    let Ok(dir) = repo_path(root, &name) else {
                        continue;
                    };
                    let link = dir.join("blobs/sha256").join(hex);
                    if fs::metadata(&link).is_ok_and(|m| Some((m.dev(), m.ino())) == inode) {
                        remove(&link, &mut out.removed)?;
                    }
                }
                remove(&path, &mut out.removed)?;
            }
            Damage::CorruptLayout { path } | Damage::Symlink { path } => {
                remove(&path, &mut out.removed)?
            }
            Damage::NotPooled { path, pool } => {
                link::link_or_copy(&store.tmp_dir(), &path, &pool)?;
                out.relinked.push(pool);
            }
            // Unless the pool's copy was corrupt and just went.
            Damage::NotLinked { path, pool } if pool.is_file() => {
                link::link_or_copy(&store.tmp_dir(), &pool, &path)?;
                out.relinked.push(path);
            }
            Damage::NotLinked { .. } => {}
        }
    }
    for name in repository_names(root)? {
        let Ok(dir) = repo_path(root, &name) else {
            continue;
        };
        for d in read_index_file(&dir.join("index.json"))?.manifests {
            if !store.is_complete(&name, &d)? {
                // As a reference to fetch, where the entry records its source.
                let repo = d.annotations.get(SOURCE).unwrap_or(&name);
                out.fetch_again.push(match d.annotations.get(REF_NAME) {
                    Some(tag) => format!("{repo}:{tag}"),
                    None => format!("{repo}@{}", d.digest),
                });
            }
        }
    }
    Ok(out)
}

fn remove(path: &Path, removed: &mut Vec<PathBuf>) -> Result<()> {
    super::remove_file_if_present(path)?;
    removed.push(path.to_owned());
    Ok(())
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Check the store at `root`, hashing every pool blob on `threads` threads.
pub fn verify(root: &Path, threads: usize) -> Result<Report> {
    let mut report = Report::default();
    let pool = root.join(POOL_DIR).join("sha256");
    let mut blobs: Vec<PathBuf> = match fs::read_dir(&pool) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(StoreError::io("list", &pool))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(StoreError::io("list", &pool)(e)),
    };
    blobs.sort();
    report.blobs_checked = blobs.len();
    let chunks: Vec<&[PathBuf]> = blobs
        .chunks(blobs.len().div_ceil(threads.max(1)).max(1))
        .collect();
    let results: Vec<(u64, Vec<PathBuf>)> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| s.spawn(move || check_pool_files(chunk)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("hashing thread panicked"))
            .collect()
    });
    for (bytes, corrupt) in results {
        report.bytes_checked += bytes;
        for path in corrupt {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            report.problems.push(format!(
                "pool blob sha256:{name} is corrupt (its content does not hash to its name), and so is every layout linked to it; repair removes them"
            ));
            report.damage.push(Damage::CorruptPool { path });
        }
    }

    // Links first: repair removes them before it links blobs back in their place.
    let found = modes::inspect(root)?;
    report.unreadable = found.unreadable;
    if let Some(first) = found.symlinks.first() {
        let target = fs::read_link(first)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|e| format!("unreadable link: {e}"));
        report.problems.push(format!(
            "{} symbolic links in the store, which a fetch never makes and the generated nginx never serves (a tampered store could point one at any file); the first is {} -> {target}; repair removes them, then fetch again what it lists",
            found.symlinks.len(),
            first.display(),
        ));
        report.damage.extend(
            found
                .symlinks
                .into_iter()
                .map(|path| Damage::Symlink { path }),
        );
    }
    for name in repository_names(root)? {
        let dir = match repo_path(root, &name) {
            Ok(dir) => dir,
            Err(e) => {
                report.problems.push(format!("repository {name:?}: {e}"));
                continue;
            }
        };
        report.repositories += 1;
        match read_index_file(&dir.join("index.json")) {
            Ok(index) => check_repository(root, &name, &dir, &index.manifests, &mut report),
            Err(e) => report.problems.push(format!("{name}: {e}")),
        }
    }

    if let Some(first) = report.unreadable.first() {
        report.problems.push(format!(
            "{} published files and directories cannot be read by other users, so a web server running as its own user (www-data, nginx, nobody) answers 403 for them; the first is {} (mode {:04o}); fix: static-registry verify --root {} --repair",
            report.unreadable.len(),
            first.path.display(),
            first.mode,
            root.display()
        ));
    }

    let tmp = root.join(TMP_DIR);
    if let Ok(rd) = fs::read_dir(&tmp) {
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".part") {
                report.notes.push(format!(
                    "partial download {name} (the next fetch resumes it)"
                ));
            } else if name.ends_with(&format!(".{PUBLISH_MARKER}")) {
                report.notes.push(format!(
                    "interrupted publish .tmp/{name}: served documents may lag index.json (the next fetch rewrites them)"
                ));
            } else {
                report.notes.push(format!(
                    "stale temporary file .tmp/{name} (removed by the next fetch or prune)"
                ));
            }
        }
    }
    Ok(report)
}

/// The pool files among `paths` whose bytes do not hash to their name (or cannot be
/// read), and the bytes hashed.
fn check_pool_files(paths: &[PathBuf]) -> (u64, Vec<PathBuf>) {
    let mut bytes = 0;
    let mut corrupt = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for path in paths {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        match hash_file(path, &mut buf) {
            Ok((hex, n)) => {
                bytes += n;
                if hex != name {
                    corrupt.push(path.clone());
                }
            }
            Err(_) => corrupt.push(path.clone()),
        }
    }
    (bytes, corrupt)
}

fn hash_file(path: &Path, buf: &mut [u8]) -> std::io::Result<(String, u64)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut total = 0;
    loop {
        let n = file.read(buf)?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), total));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// Everything index.json reaches: present in the layout (foreign layers excepted), sized
/// as described, the pool's inode or the same bytes (hashed: nginx serves the layout's
/// file, whatever the pool holds), and manifests parse.
fn check_repository(
    root: &Path,
    name: &str,
    dir: &Path,
    roots: &[Descriptor],
    report: &mut Report,
) {
    let mut buf = vec![0u8; 1 << 20];
    for d in reachable(dir, roots) {
        if d.digest.algorithm() != "sha256" {
            continue;
        }
        let key = &d.digest;
        let path = dir.join("blobs/sha256").join(d.digest.hex());
        let pool = root.join(POOL_DIR).join("sha256").join(d.digest.hex());
        let pooled = fs::metadata(&pool);
        // A symbolic link counts as missing (it is reported, and repair removes it).
        let file = fs::symlink_metadata(&path)
            .ok()
            .filter(|m| !m.file_type().is_symlink());
        let meta = match file {
            Some(m) => m,
            None if d.is_foreign() => continue,
            None if pooled.is_ok() => {
                report.problems.push(format!(
                    "{name}: {key} is referenced but missing from the layout (the pool has it; repair links it)"
                ));
                report.damage.push(Damage::NotLinked { path, pool });
                continue;
            }
            None => {
                report.problems.push(format!(
                    "{name}: {key} is referenced but missing from the layout and the pool (fetch the image again)"
                ));
                continue;
            }
        };
        let same_inode = pooled
            .as_ref()
            .is_ok_and(|p| p.ino() == meta.ino() && p.dev() == meta.dev());
        if same_inode {
            // The pool's hash check covers these bytes.
            if meta.len() != d.size {
                report.problems.push(format!(
                    "{name}: {key} is {} bytes, its descriptor says {}",
                    meta.len(),
                    d.size
                ));
            }
        } else {
            let intact = meta.len() == d.size
                && hash_file(&path, &mut buf).is_ok_and(|(hex, _)| hex == d.digest.hex());
            match (intact, pooled.is_ok()) {
                (false, _) => {
                    report.problems.push(format!(
                        "{name}: the layout's copy of {key} is corrupt; repair removes it"
                    ));
                    report
                        .damage
                        .push(Damage::CorruptLayout { path: path.clone() });
                }
                (true, false) => {
                    report.problems.push(format!(
                        "{name}: {key} is in the layout but not in the pool; repair links it back"
                    ));
                    report.damage.push(Damage::NotPooled {
                        path: path.clone(),
                        pool,
                    });
                }
                // A copy or reflink where hardlinks failed, with the right bytes.
                (true, true) => {}
            }
        }
        if (d.media_type.contains("manifest") || d.media_type.contains("index"))
            && let Ok(bytes) = fs::read(&path)
            && let Err(e) = Manifest::parse(&bytes, Some(&d.media_type))
        {
            report.problems.push(format!("{name}: manifest {key}: {e}"));
        }
    }
}
