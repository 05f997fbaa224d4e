//! `sync`: a round of mirroring from a configuration into every place its `to:` names,
//! the store and registries at once (each blob read from its registry once for all of
//! them), then the `on-change` command after a round that changed the store.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::config::MirrorConfig;
use crate::copy::any::AnyDestination;
use crate::copy::registry::RegistryDestination;
use crate::copy::{DestinationSummary, Engine, JobReport, JobTarget, Overwrite};
use crate::fetch::{self, Clients, FetchOptions, StoreTarget};
use crate::plan::{self, Target};
use crate::report::{CopyStatus, ImageReport, Reporter, Status, TargetReport, error_chain};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("on-change command {command:?} could not be started")]
    HookStart {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("on-change command {command:?} failed ({status}): {stderr}")]
    HookFailed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// A registry a round sends to.
pub struct RegistryTarget {
    pub dest: RegistryDestination,
    /// Its host and the prefix of every image's name there.
    pub at: Target,
    pub overwrite: Overwrite,
}

/// How a round went.
#[derive(Debug, Serialize)]
pub struct Round {
    /// Per target (the store first, when it is one): what it got.
    pub targets: Vec<DestinationSummary>,
    /// Per image and target.
    pub images: Vec<TargetReport>,
    /// Repositories whose tags could not be listed, and images the store refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unresolved: Vec<ImageReport>,
    /// Whether the store got anything new (what `on-change` waits for).
    pub store_changed: bool,
    pub seconds: f64,
}

impl Round {
    pub fn failed(&self) -> usize {
        self.unresolved.len() + self.targets.iter().map(|t| t.failed).sum::<usize>()
    }
}

/// One round of `config`: its images (tags listed where a selector needs them) to the
/// store (`store`, when the config sends there) and to every registry target.
pub async fn round(
    clients: &Clients,
    config: &MirrorConfig,
    store: Option<Arc<Store>>,
    registries: Vec<RegistryTarget>,
    opts: &FetchOptions,
    reporter: Arc<dyn Reporter>,
) -> Round {
    let started = Instant::now();
    let (planned, mut unresolved) =
        fetch::resolve(clients, &config.images, reporter.as_ref()).await;
    let mut dests = Vec::new();
    let mut refused = Default::default();
    if let Some(store) = store {
        let (dest, by_store) = StoreTarget::open(store, &planned).await;
        for (i, e) in &by_store {
            unresolved.push(ImageReport::failed_planned(&planned[*i], e));
        }
        refused = by_store;
        dests.push(AnyDestination::Store(dest));
    }
    let store_dest = (!dests.is_empty()).then_some(0);
    let first_registry = dests.len();
    let mut prefixes = Vec::new();
    for r in registries {
        prefixes.push((r.at, r.overwrite));
        dests.push(AnyDestination::Registry(r.dest));
    }
    let mut naming = Vec::new();
    let (sources, jobs, _) = fetch::engine_jobs(clients, &planned, opts, &reporter, |i, p| {
        let mut targets = Vec::new();
        if let Some(dest) = store_dest.filter(|_| !refused.contains_key(&i)) {
            targets.push(StoreTarget::job_target(dest, p));
        }
        for (n, (at, overwrite)) in prefixes.iter().enumerate() {
            match plan::joined(&p.name, at) {
                Ok(repo) => targets.push(JobTarget {
                    dest: first_registry + n,
                    repo,
                    tag: p.source.tag.clone(),
                    overwrite: *overwrite,
                }),
                Err(e) => naming.push(ImageReport {
                    source: p.source.to_string(),
                    name: format!("{}/{}", at.host, p.name),
                    tag: p.source.tag.clone(),
                    digest: None,
                    status: Status::Failed,
                    upstream_digest: None,
                    referrers: 0,
                    error: error_chain(&e),
                    remedy: None,
                }),
            }
        }
        Some(targets)
    });
    unresolved.extend(naming);
    let engine = Engine::new(
        sources,
        dests,
        fetch::engine_options(opts),
        reporter.clone(),
    );
    let store_changed = Mutex::new(false);
    let finished = |job: &JobReport| {
        for (dest, r) in job.all() {
            reporter.copied(r);
            if Some(*dest) == store_dest && r.status == CopyStatus::Copied {
                *store_changed.lock().expect("flag lock") = true;
            }
        }
    };
    let summary = engine.run(vec![jobs], &finished).await;
    let store_changed = *store_changed.lock().expect("flag lock");
    Round {
        targets: summary.targets,
        images: summary.images,
        unresolved,
        store_changed,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Run `command` (program and arguments); its failure names it, with what it printed.
pub fn run_hook(command: &[String]) -> Result<(), SyncError> {
    let shown = command.join(" ");
    let (program, args) = command.split_first().expect("validated non-empty");
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| SyncError::HookStart {
            command: shown.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(SyncError::HookFailed {
        command: shown,
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}
