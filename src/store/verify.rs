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
use super::modes;
use super::{POOL_DIR, PUBLISH_MARKER, Result, StoreError, TMP_DIR, read_index_file, repo_path};
use crate::manifest::{Descriptor, Manifest};

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
}

/// What `repair` changed.
#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    /// Files and directories made readable (traversable) by others.
    pub modes_fixed: Vec<PathBuf>,
}

/// Mend what verify reports and can be mended in place: published entries others cannot
/// read get the modes a served tree needs (see `modes`).
pub fn repair(root: &Path) -> Result<RepairReport> {
    Ok(RepairReport {
        modes_fixed: modes::repair(root)?,
    })
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
    let results: Vec<(u64, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| s.spawn(move || check_pool_files(chunk)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("hashing thread panicked"))
            .collect()
    });
    for (bytes, problems) in results {
        report.bytes_checked += bytes;
        report.problems.extend(problems);
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

    report.unreadable = modes::unreadable(root)?;
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

fn check_pool_files(paths: &[PathBuf]) -> (u64, Vec<String>) {
    let mut bytes = 0;
    let mut problems = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for path in paths {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        match hash_file(path, &mut buf) {
            Ok((hex, n)) => {
                bytes += n;
                if hex != name {
                    problems.push(format!(
                        "pool blob sha256:{name} is corrupt: its content hashes to sha256:{hex}"
                    ));
                }
            }
            Err(e) => problems.push(format!("pool blob {}: {e}", path.display())),
        }
    }
    (bytes, problems)
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
/// as described, the pool's inode or the same bytes, and manifests parse.
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
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(_) if d.is_foreign() => continue,
            Err(_) => {
                report.problems.push(format!(
                    "{name}: {key} is referenced but missing from the layout"
                ));
                continue;
            }
        };
        if meta.len() != d.size {
            report.problems.push(format!(
                "{name}: {key} is {} bytes, its descriptor says {}",
                meta.len(),
                d.size
            ));
        }
        let pool = root.join(POOL_DIR).join("sha256").join(d.digest.hex());
        match fs::metadata(&pool) {
            Ok(p) if p.ino() == meta.ino() && p.dev() == meta.dev() => {}
            // A copy or reflink (where hardlinks failed): its bytes must still match.
            Ok(_) => match hash_file(&path, &mut buf) {
                Ok((hex, _)) if hex == d.digest.hex() => {}
                _ => report
                    .problems
                    .push(format!("{name}: the layout's copy of {key} is corrupt")),
            },
            Err(_) => report.notes.push(format!(
                "{name}: {key} is in the layout but not in the pool"
            )),
        }
        if (d.media_type.contains("manifest") || d.media_type.contains("index"))
            && let Ok(bytes) = fs::read(&path)
            && let Err(e) = Manifest::parse(&bytes, Some(&d.media_type))
        {
            report.problems.push(format!("{name}: manifest {key}: {e}"));
        }
    }
}
