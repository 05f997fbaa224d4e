//! `import --from-dir-tree`: a tree of skopeo `dir:` images (`<name>/<tag>/`, as the old
//! static-registry scripts kept them) into the store, on the copy engine: the tree is one
//! more source, the store the usual destination, so every blob is verified, stored once,
//! linked, and each tag published only when all it reaches is there. A rerun on a grown
//! tree copies only what is new.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::copy::dirtree::{self, DirTreeSource};
use crate::copy::store::StoreDestination;
use crate::copy::{
    self, Annotations, Engine, ImageJob, JobReport, JobTarget, Overwrite, SourceRef,
};
use crate::report::{CopyStatus, Reporter, TargetReport};
use crate::store::{Store, StoreError};

/// What an import did.
#[derive(Debug, Serialize)]
pub struct TreeImport {
    /// One report per image of the tree, in the tree's order.
    pub images: Vec<TargetReport>,
    /// Directories that are not usable images, each with the reason.
    pub skipped: Vec<String>,
    pub seconds: f64,
}

impl TreeImport {
    pub fn count(&self, status: CopyStatus) -> usize {
        self.images.iter().filter(|r| r.status == status).count()
    }
}

/// Import every image of the tree at `tree` into `store`.
pub async fn dir_tree(
    store: Arc<Store>,
    tree: &Path,
    opts: copy::Options,
    reporter: Arc<dyn Reporter>,
) -> Result<TreeImport, StoreError> {
    let started = Instant::now();
    let root = std::path::absolute(tree).map_err(StoreError::io("resolve", tree))?;
    let scan = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || dirtree::scan(&root))
            .await
            .expect("a directory walk does not panic")?
    };
    let label = |i: &dirtree::TreeImage| format!("dir:{}", i.dir.display());
    let store_name = store.root().display().to_string();
    // The store records which registry each repository came from; a name it has from a
    // registry is not overwritten from a tree. Imported images record none: a later
    // fetch of the same name from its registry takes over (the migration's next step).
    let mut indexes = HashMap::new();
    let mut refused = HashMap::new();
    for (n, image) in scan.images.iter().enumerate() {
        if !indexes.contains_key(&image.name) {
            let (s, name) = (store.clone(), image.name.clone());
            let index = tokio::task::spawn_blocking(move || s.read_index(&name))
                .await
                .expect("an index read does not panic");
            match index {
                Ok(index) => {
                    indexes.insert(image.name.clone(), Arc::new(index));
                }
                Err(e) => {
                    refused.insert(n, vec![e.to_string()]);
                    continue;
                }
            }
        }
        if let Some(registry) = indexes[&image.name].sources().iter().next() {
            refused.insert(
                n,
                vec![format!(
                    "the store's {} came from {registry}; importing it from {} would mix two sources under one name: import into another --root, or `static-registry rm` it first",
                    image.name,
                    root.display()
                )],
            );
        }
    }
    // The image (its place in the tree's list) of each job.
    let mut job_images = Vec::new();
    let jobs: Vec<ImageJob> = scan
        .images
        .iter()
        .enumerate()
        .filter(|(n, _)| !refused.contains_key(n))
        .inspect(|(n, _)| job_images.push(*n))
        .map(|(_, i)| ImageJob {
            label: label(i),
            source: 0,
            repo: i.name.clone(),
            reference: SourceRef::Tag(i.tag.clone()),
            platforms: Vec::new(),
            referrers: false,
            annotations: Annotations::new(),
            fallback: false,
            targets: vec![JobTarget {
                dest: 0,
                repo: i.name.clone(),
                tag: Some(i.tag.clone()),
                overwrite: Overwrite::Replace,
            }],
        })
        .collect();
    let source = DirTreeSource::new(&scan.images);
    let dest = StoreDestination::new(store, indexes);
    let engine = Engine::new(vec![source], vec![dest], opts, reporter.clone());
    let reports = Mutex::new(HashMap::new());
    let finished = |job: &JobReport| {
        for (_, r) in &job.targets {
            reporter.copied(r);
            reports
                .lock()
                .expect("reports lock")
                .insert(job_images[job.index], r.clone());
        }
    };
    engine.run(vec![jobs], &finished).await;
    let mut reports = reports.into_inner().expect("reports lock");
    let images = scan
        .images
        .iter()
        .enumerate()
        .map(|(n, i)| {
            let source = label(i);
            let target = format!("{store_name}/{}:{}", i.name, i.tag);
            let failed = |error| TargetReport {
                source: source.clone(),
                target: target.clone(),
                digest: None,
                upstream_digest: None,
                status: CopyStatus::Failed,
                existing: None,
                error,
                remedy: None,
            };
            match refused.remove(&n) {
                Some(error) => failed(error),
                None => reports.remove(&n).unwrap_or_else(|| {
                    failed(vec!["not copied (the run stopped first)".to_owned()])
                }),
            }
        })
        .collect();
    Ok(TreeImport {
        images,
        skipped: scan.skipped,
        seconds: started.elapsed().as_secs_f64(),
    })
}
