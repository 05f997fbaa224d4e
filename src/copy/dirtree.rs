//! A tree of skopeo `dir:` images as a source: `<tree>/<name>/<tag>/` holds one image as
//! `skopeo copy ... dir:` writes it (`manifest.json`, each blob and child manifest in a
//! file named by its digest's hex, `<hex>.manifest.json` for an index's children, and a
//! `version` file). The old static-registry scripts kept their images this way.
//!
//! Manifests are taken byte for byte: their digest is what the tree holds (after any
//! conversion skopeo made, e.g. `--format v2s2`). Every file is verified against its
//! digest by the engine and the store as it is copied, never trusted by name.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::store::read_file;
use super::{BlobRead, CopyError, Referrers, Source};
use crate::manifest::{Descriptor, Verified};
use crate::reference::{self, Digest};
use crate::store::StoreError;

/// What the first line of a skopeo `dir:` image's `version` file says.
const VERSION_PREFIX: &str = "Directory Transport Version:";

/// One image of the tree.
#[derive(Debug, Clone)]
pub struct TreeImage {
    pub name: String,
    pub tag: String,
    pub dir: PathBuf,
}

/// The images of a tree, and the directories that are none (each with the reason).
#[derive(Debug, Default)]
pub struct Scan {
    pub images: Vec<TreeImage>,
    pub skipped: Vec<String>,
}

/// Find the images of the tree at `root`: every directory holding `manifest.json` and a
/// skopeo `version` file, named `<name>/<tag>` below `root` with a valid repository name
/// and tag. Directories that look like images but are not usable are listed as skipped.
pub fn scan(root: &Path) -> Result<Scan, StoreError> {
    let mut scan = Scan::default();
    let walker = walkdir::WalkDir::new(root)
        .min_depth(2)
        .follow_links(false)
        .sort_by_file_name();
    for entry in walker {
        let entry = entry.map_err(StoreError::walk("list", root))?;
        if !entry.file_type().is_dir() {
            continue;
        }
        let dir = entry.path();
        let has = |f: &str| dir.join(f).is_file();
        if !has("manifest.json") {
            continue;
        }
        let rel = dir
            .strip_prefix(root)
            .unwrap_or(dir)
            .to_string_lossy()
            .into_owned();
        let Some((name, tag)) = rel.rsplit_once('/') else {
            continue;
        };
        let version = fs::read_to_string(dir.join("version")).unwrap_or_default();
        if !version.starts_with(VERSION_PREFIX) {
            scan.skipped.push(format!(
                "{}: no skopeo `version` file ({VERSION_PREFIX} ...): not a skopeo dir: image",
                dir.display()
            ));
            continue;
        }
        if let Err(e) = reference::validate_repository(name) {
            scan.skipped.push(format!("{}: {e}", dir.display()));
            continue;
        }
        if let Err(e) = reference::validate_tag(tag) {
            scan.skipped.push(format!("{}: {e}", dir.display()));
            continue;
        }
        scan.images.push(TreeImage {
            name: name.to_owned(),
            tag: tag.to_owned(),
            dir: dir.to_path_buf(),
        });
    }
    Ok(scan)
}

/// The images of a tree as a copy source: repository `name`, tag `tag`.
pub struct DirTreeSource {
    /// (name, tag) → the image's directory.
    images: HashMap<(String, String), PathBuf>,
    /// Every directory of each name (a digest is looked for in all of them).
    dirs: HashMap<String, Vec<PathBuf>>,
}

impl DirTreeSource {
    pub fn new(images: &[TreeImage]) -> DirTreeSource {
        let mut dirs: HashMap<String, Vec<PathBuf>> = HashMap::new();
        for i in images {
            dirs.entry(i.name.clone()).or_default().push(i.dir.clone());
        }
        DirTreeSource {
            images: images
                .iter()
                .map(|i| ((i.name.clone(), i.tag.clone()), i.dir.clone()))
                .collect(),
            dirs,
        }
    }

    fn image_dir(&self, repo: &str, tag: &str) -> Result<&Path, CopyError> {
        self.images
            .get(&(repo.to_owned(), tag.to_owned()))
            .map(PathBuf::as_path)
            .ok_or_else(|| {
                StoreError::UnknownTag {
                    name: repo.to_owned(),
                    tag: tag.to_owned(),
                }
                .into()
            })
    }

    /// The file of `repo` named `file` (in any of its images' directories).
    fn find(&self, repo: &str, file: &str) -> Option<PathBuf> {
        self.dirs
            .get(repo)?
            .iter()
            .map(|d| d.join(file))
            .find(|p| p.is_file())
    }

    fn missing(&self, repo: &str, what: String) -> CopyError {
        CopyError::NotInTree {
            what,
            name: repo.to_owned(),
        }
    }
}

fn verified(bytes: Vec<u8>, media_type: Option<&str>, what: String) -> Result<Verified, CopyError> {
    Verified::new(Bytes::from(bytes), media_type)
        .map_err(|source| CopyError::Manifest { what, source })
}

impl Source for DirTreeSource {
    fn registry(&self) -> Option<&str> {
        None
    }

    async fn digest(&self, repo: &str, tag: &str) -> Result<Option<Digest>, CopyError> {
        let path = self.image_dir(repo, tag)?.join("manifest.json");
        Ok(Some(Digest::sha256_of(&read_file(path).await?)))
    }

    async fn resolve(&self, repo: &str, tag: &str) -> Result<Verified, CopyError> {
        let path = self.image_dir(repo, tag)?.join("manifest.json");
        let what = path.display().to_string();
        verified(read_file(path).await?, None, what)
    }

    async fn manifest(
        &self,
        repo: &str,
        digest: &Digest,
        media_type: Option<&str>,
        why: &'static str,
    ) -> Result<Verified, CopyError> {
        let file = format!("{}.manifest.json", digest.hex());
        let path = self
            .find(repo, &file)
            .ok_or_else(|| self.missing(repo, format!("manifest {digest} (file {file})")))?;
        let what = path.display().to_string();
        super::verified_as(read_file(path).await?, media_type, what, digest, why)
    }

    async fn blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<BlobRead, CopyError> {
        let hex = desc.digest.hex();
        let path = self
            .find(repo, hex)
            .ok_or_else(|| self.missing(repo, format!("blob {} (file {hex})", desc.digest)))?;
        super::store::file_stream(path, offset).await
    }

    async fn referrers(&self, _repo: &str, _subject: &Digest) -> Result<Referrers, CopyError> {
        Ok(Referrers::default())
    }
}
