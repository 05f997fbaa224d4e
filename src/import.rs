//! `import BUNDLE...`: air-gap bundles (see [`crate::bundle`]) into the store, on the copy
//! engine, each published only once all of it has arrived and verified.
//!
//! `import --from-dir-tree`: a tree of skopeo `dir:` images (`<name>/<tag>/`, as the old
//! static-registry scripts kept them) into the store, on the copy engine: the tree is one
//! more source, the store the usual destination, so every blob is verified, stored once,
//! linked, and each tag published only when all it reaches is there. A rerun on a grown
//! tree copies only what is new.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::bundle::{self, BundleError, Received};
use crate::copy::bundle::BundleSource;
use crate::copy::dirtree::{self, DirTreeSource};
use crate::copy::store::StoreDestination;
use crate::copy::{
    self, Annotations, Engine, ImageJob, JobReport, JobTarget, Overwrite, Source, SourceRef,
};
use crate::reference::Digest;
use crate::report::{CopyStatus, Reporter, TargetReport};
use crate::store::{Store, StoreError, TagIndex};

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
    let jobs: Vec<ImageJob> = scan
        .images
        .iter()
        .enumerate()
        .filter(|(n, _)| !refused.contains_key(n))
        .map(|(_, i)| ImageJob {
            label: label(i),
            source: 0,
            repo: i.name.clone(),
            reference: SourceRef::Tag(i.tag.clone()),
            platforms: Vec::new(),
            referrers: false,
            annotations: Annotations::new(),
            fallback: false,
            policy: None,
            targets: vec![JobTarget {
                dest: 0,
                repo: i.name.clone(),
                tag: Some(i.tag.clone()),
                overwrite: Overwrite::Replace,
            }],
        })
        .collect();
    let source = DirTreeSource::new(&scan.images);
    let mut reports = into_store(&store, source, indexes, vec![jobs], opts, &reporter).await;
    let images = scan
        .images
        .iter()
        .enumerate()
        .map(|(n, i)| {
            let (source, target) = (label(i), format!("{store_name}/{}:{}", i.name, i.tag));
            match refused.remove(&n) {
                Some(error) => not_copied(source, target, error),
                None => reports
                    .remove(&source)
                    .unwrap_or_else(|| stopped(source, target)),
            }
        })
        .collect();
    Ok(TreeImport {
        images,
        skipped: scan.skipped,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One bundle of an import.
#[derive(Debug, Serialize)]
pub struct ImportedBundle {
    /// The bundle, or its parts.
    pub files: Vec<PathBuf>,
    pub set: Digest,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<Digest>,
    pub blobs: Received,
    /// One report per image, in the bundle's order.
    pub images: Vec<TargetReport>,
}

/// What importing bundles did.
#[derive(Debug, Serialize)]
pub struct BundleImport {
    pub bundles: Vec<ImportedBundle>,
    /// The store's state file, for the next `export --since`.
    pub state: PathBuf,
    pub seconds: f64,
}

/// Import the bundles at `paths` into `store`, a base before the deltas made on it
/// whatever the order given. Each bundle's blobs are received into the pool and
/// verified first; its images are published (per repository, as a fetch publishes)
/// only once all of it is there. The first bundle that fails stops the import.
pub async fn bundles(
    store: Arc<Store>,
    paths: &[PathBuf],
    opts: copy::Options,
    reporter: Arc<dyn Reporter>,
) -> Result<BundleImport, BundleError> {
    let started = Instant::now();
    let given = paths.to_vec();
    let mut pending = tokio::task::spawn_blocking(move || bundle::gather(&given))
        .await
        .expect("reading bundle headers does not panic")?;
    // Bases first: a bundle waits while another still pending has its base's set.
    let mut ordered = Vec::new();
    while !pending.is_empty() {
        let waits = |b: &bundle::Bundle| {
            pending.iter().any(|other| {
                b.header.meta.base.as_ref() == Some(&other.header.meta.set)
                    && other.header.meta.set != b.header.meta.set
            })
        };
        let ready = pending.iter().position(|b| !waits(b)).unwrap_or(0);
        ordered.push(pending.remove(ready));
    }
    let mut done = Vec::new();
    for bundle in ordered {
        let bundle = Arc::new(bundle);
        let (s, b, r) = (store.clone(), bundle.clone(), reporter.clone());
        let received = tokio::task::spawn_blocking(move || bundle::receive(&s, &b, r.as_ref()))
            .await
            .expect("receiving a bundle does not panic")?;
        let images = publish(&store, &bundle.header.images, &opts, &reporter).await?;
        done.push(ImportedBundle {
            files: bundle.files.clone(),
            set: bundle.header.meta.set.clone(),
            base: bundle.header.meta.base.clone(),
            blobs: received,
            images,
        });
    }
    let s = store.clone();
    tokio::task::spawn_blocking(move || bundle::write_store_state(&s))
        .await
        .expect("a state write does not panic")?;
    Ok(BundleImport {
        bundles: done,
        state: store.root().join(bundle::STORE_STATE),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Publish a received bundle's images: its tags, then the images stored by digest (the
/// referrers among them after their subjects).
async fn publish(
    store: &Arc<Store>,
    images: &[bundle::Image],
    opts: &copy::Options,
    reporter: &Arc<dyn Reporter>,
) -> Result<Vec<TargetReport>, BundleError> {
    let mut indexes = HashMap::new();
    for image in images {
        if !indexes.contains_key(&image.repo) {
            let (s, name) = (store.clone(), image.repo.clone());
            let index = tokio::task::spawn_blocking(move || s.read_index(&name))
                .await
                .expect("an index read does not panic")?;
            indexes.insert(image.repo.clone(), Arc::new(index));
        }
    }
    let (mut tagged, mut by_digest) = (Vec::new(), Vec::new());
    for image in images {
        let job = ImageJob {
            label: image.label(),
            source: 0,
            repo: image.repo.clone(),
            reference: match &image.tag {
                Some(tag) => SourceRef::Tag(tag.clone()),
                None => SourceRef::Digest(image.descriptor.digest.clone()),
            },
            platforms: Vec::new(),
            referrers: false,
            annotations: image.descriptor.annotations.clone(),
            fallback: image
                .tag
                .as_deref()
                .and_then(copy::fallback_subject)
                .is_some(),
            policy: None,
            targets: vec![JobTarget {
                dest: 0,
                repo: image.repo.clone(),
                tag: image.tag.clone(),
                overwrite: Overwrite::Replace,
            }],
        };
        match image.tag {
            Some(_) => tagged.push(job),
            None => by_digest.push(job),
        }
    }
    let source = BundleSource::new(store.pool_dir(), images);
    let waves = vec![tagged, by_digest];
    let mut reports = into_store(store, source, indexes, waves, opts.clone(), reporter).await;
    let root = store.root().display();
    Ok(images
        .iter()
        .map(|i| {
            let (source, target) = (i.label(), format!("{root}/{}", i.label()));
            reports
                .remove(&source)
                .unwrap_or_else(|| stopped(source, target))
        })
        .collect())
}

/// Copy `waves` of jobs from `source` into the store; each image's report by its label
/// (which names one image).
async fn into_store<S: Source>(
    store: &Arc<Store>,
    source: S,
    indexes: HashMap<String, Arc<TagIndex>>,
    waves: Vec<Vec<ImageJob>>,
    opts: copy::Options,
    reporter: &Arc<dyn Reporter>,
) -> HashMap<String, TargetReport> {
    let dest = StoreDestination::new(store.clone(), indexes);
    let engine = Engine::new(vec![source], vec![dest], opts, reporter.clone());
    let reports = Mutex::new(HashMap::new());
    let finished = |job: &JobReport| {
        for (_, r) in &job.targets {
            reporter.copied(r);
            reports
                .lock()
                .expect("reports lock")
                .insert(r.source.clone(), r.clone());
        }
    };
    engine.run(waves, &finished).await;
    reports.into_inner().expect("reports lock")
}

/// The report of an image that was not copied, and why.
fn not_copied(source: String, target: String, error: Vec<String>) -> TargetReport {
    TargetReport {
        source,
        target,
        digest: None,
        upstream_digest: None,
        status: CopyStatus::Failed,
        existing: None,
        error,
        remedy: None,
    }
}

/// An image the run did not reach (it stopped at a failure first).
fn stopped(source: String, target: String) -> TargetReport {
    not_copied(
        source,
        target,
        vec!["not copied (the run stopped first)".to_owned()],
    )
}
