//! `sync`: a round of one source (the images of one registry, those its `images-from`
//! command lists included) into every place its `to:` names, the store and registries at
//! once (each blob read from its registry once for all of them); and the `on-change`
//! command a caller runs after a round that changed the store.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{ImageSpec, MirrorConfig, OnChange, Source, SyncTarget};
use crate::copy::any::AnyDestination;
use crate::copy::registry::RegistryDestination;
use crate::copy::{DestinationSummary, Engine, JobReport, JobTarget, Overwrite};
use crate::fetch::{self, Clients, FetchOptions, StoreTarget};
use crate::plan::{self, Target};
use crate::reference::{Reference, validate_repository};
use crate::registry::{Client, ClientOptions, RegistryError};
use crate::report::{CopyStatus, ImageReport, Reporter, TargetReport};
use crate::select::TagSelector;
use crate::store::{Store, StoreError};

/// How long an `images-from` command may run.
const LIST_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// `what`: on-change or images-from.
    #[error("{what} command {command:?} could not be started")]
    Start {
        what: &'static str,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} command {command:?} failed ({status}): {stderr}")]
    Failed {
        what: &'static str,
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("images-from command {command:?} did not finish within {}s; it was killed", LIST_TIMEOUT.as_secs())]
    ListTimeout { command: String },
    #[error("images-from command {command:?} printed {} unusable line{}: {}", problems.len(), if problems.len() == 1 { "" } else { "s" }, problems.join("; "))]
    ListLines {
        command: String,
        problems: Vec<String>,
    },
    #[error("setting up the HTTP client for {registry}")]
    Client {
        registry: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("opening the store at {}", root.display())]
    Store {
        root: PathBuf,
        #[source]
        source: StoreError,
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
    /// The source's name.
    pub source: String,
    /// Per target (the store first, when it is one): what it got.
    pub targets: Vec<DestinationSummary>,
    /// Per image and target.
    pub images: Vec<TargetReport>,
    /// Repositories whose tags could not be listed, images the store refused, and what
    /// kept the round from starting (its image list, the store).
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

/// What every round of a service or `--once` run shares.
pub struct Context {
    pub clients: Clients,
    /// The store's directory, opened for each round that sends to it (and closed after,
    /// so that a prune between rounds need not wait for the service).
    pub root: PathBuf,
    /// Client options for registry targets, before a `to:` entry's own settings.
    pub dest_base: ClientOptions,
    pub opts: FetchOptions,
    /// Stored names' prefix, for the images an `images-from` command lists.
    pub prefix: Option<String>,
}

/// The clients a configuration's sources need: `base` (the command line's options),
/// overridden per registry by the file's TLS settings and credentials.
pub fn clients(config: &MirrorConfig, base: &ClientOptions) -> Result<Clients, SyncError> {
    let client = |registry: &str, opts| {
        Client::new(opts).map_err(|e| SyncError::Client {
            registry: registry.to_owned(),
            source: Box::new(e),
        })
    };
    let mut clients = Clients::new(client("the registries", base.clone())?);
    for (registry, settings) in &config.registries {
        clients.insert(registry, client(registry, settings.apply(base))?);
    }
    Ok(clients)
}

/// One round of `source` to its targets: its images (tags listed where a selector needs
/// them, `images-from` run) to the store when its `to` names it, and to each registry.
pub async fn run_source(ctx: &Context, source: &Source, reporter: Arc<dyn Reporter>) -> Round {
    let started = Instant::now();
    let mut images = source.images.clone();
    let mut unresolved = Vec::new();
    let fail = |what: String, e: &dyn std::error::Error| {
        ImageReport::failure(what, source.name.clone(), e)
    };
    if !source.images_from.is_empty() {
        match listed_images(&source.images_from, &source.registry, ctx.prefix.as_deref()).await {
            Ok((listed, bad)) => {
                // The registry's signature policy covers what its command lists.
                images.extend(listed.into_iter().map(|spec| ImageSpec {
                    verify: source.verify.clone(),
                    ..spec
                }));
                if let Some(e) = bad {
                    unresolved.push(fail(source.images_from.join(" "), &e));
                }
            }
            Err(e) => unresolved.push(fail(source.images_from.join(" "), &e)),
        }
    }
    let mut registries = Vec::new();
    for t in &source.to {
        if let SyncTarget::Registry {
            target,
            settings,
            overwrite,
        } = t
        {
            match Client::new(settings.apply(&ctx.dest_base)) {
                Ok(client) => registries.push(RegistryTarget {
                    dest: RegistryDestination::new(client, &target.host),
                    at: target.clone(),
                    overwrite: *overwrite,
                }),
                Err(e) => {
                    let e = SyncError::Client {
                        registry: target.host.clone(),
                        source: Box::new(e),
                    };
                    unresolved.push(fail(target.to_string(), &e));
                }
            }
        }
    }
    let mut store = None;
    if source.to.contains(&SyncTarget::Store) {
        let root = ctx.root.clone();
        let opened = tokio::task::spawn_blocking(move || Store::open(&root))
            .await
            .expect("store open does not panic");
        match opened {
            Ok(s) => store = Some(Arc::new(s)),
            Err(e) => {
                let e = SyncError::Store {
                    root: ctx.root.clone(),
                    source: e,
                };
                unresolved.push(fail(ctx.root.display().to_string(), &e));
            }
        }
    }
    let mut round = round(
        &ctx.clients,
        &images,
        store,
        registries,
        &ctx.opts,
        reporter,
    )
    .await;
    if round.store_changed {
        let root = ctx.root.clone();
        let pages = tokio::task::spawn_blocking(move || crate::catalog::refresh(&root)).await;
        if let Ok(Err(e)) = pages {
            tracing::warn!(error = %crate::report::error_chain(&e).join(": "), "catalog pages not rendered");
        }
    }
    round.source = source.name.clone();
    round.unresolved.splice(0..0, unresolved);
    round.seconds = started.elapsed().as_secs_f64();
    round
}

/// One round of `images`: to the store (`store`, when the source sends there) and to every
/// registry target.
pub async fn round(
    clients: &Clients,
    images: &[ImageSpec],
    store: Option<Arc<Store>>,
    registries: Vec<RegistryTarget>,
    opts: &FetchOptions,
    reporter: Arc<dyn Reporter>,
) -> Round {
    let started = Instant::now();
    let (planned, mut unresolved) = fetch::resolve(clients, images, reporter.as_ref()).await;
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
                    tag: p.source.tag.clone(),
                    ..ImageReport::failure(
                        p.source.to_string(),
                        format!("{}/{}", at.host, p.name),
                        &e,
                    )
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
        source: String::new(),
        targets: summary.targets,
        images: summary.images,
        unresolved,
        store_changed,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The images `command` lists now, one reference per line (blank lines and `#` comments
/// skipped): `repo:tag` or `repo@digest` copies that, a bare repository every tag. Every
/// reference must be in `registry`. Good lines are used even when others are not; those
/// come back as the error beside them.
pub async fn listed_images(
    command: &[String],
    registry: &str,
    prefix: Option<&str>,
) -> Result<(Vec<ImageSpec>, Option<SyncError>), SyncError> {
    let shown = command.join(" ");
    let (program, args) = command.split_first().expect("validated non-empty");
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(LIST_TIMEOUT, child).await {
        Err(_) => return Err(SyncError::ListTimeout { command: shown }),
        Ok(Err(source)) => {
            return Err(SyncError::Start {
                what: "images-from",
                command: shown,
                source,
            });
        }
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        return Err(SyncError::Failed {
            what: "images-from",
            command: shown,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let (images, problems) = parse_listing(&String::from_utf8_lossy(&out.stdout), registry, prefix);
    let bad = (!problems.is_empty()).then_some(SyncError::ListLines {
        command: shown,
        problems,
    });
    Ok((images, bad))
}

/// `images-from` output as image specs, one per repository; and the lines it cannot use.
fn parse_listing(
    text: &str,
    registry: &str,
    prefix: Option<&str>,
) -> (Vec<ImageSpec>, Vec<String>) {
    let mut problems = Vec::new();
    let mut by_repo: BTreeMap<String, ImageSpec> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut problem = |why: String| problems.push(format!("line {}: {line:?}: {why}", n + 1));
        let r: Reference = match line.parse() {
            Ok(r) => r,
            Err(e) => {
                problem(format!("{e}"));
                continue;
            }
        };
        if r.registry != registry {
            problem(format!("not in {registry}, this source's registry"));
            continue;
        }
        // The parser fills in "latest" when no tag is written, so look at the text.
        let tagged = line
            .split('@')
            .next()
            .and_then(|l| l.rsplit('/').next())
            .is_some_and(|last| last.contains(':'));
        let target = match prefix {
            Some(p) => format!("{p}/{}", r.repository),
            None => r.repository.clone(),
        };
        if let Err(e) = validate_repository(&target) {
            problem(format!("{e}"));
            continue;
        }
        let spec = by_repo
            .entry(r.repository.clone())
            .or_insert_with(|| ImageSpec {
                source: Reference {
                    tag: None,
                    digest: None,
                    ..r.clone()
                },
                target,
                tags: TagSelector {
                    tags: Some(Vec::new()),
                    ..Default::default()
                },
                digests: Vec::new(),
                platforms: Vec::new(),
                referrers: false,
                verify: None,
            });
        match (&r.digest, tagged) {
            (Some(d), _) => {
                if !spec.digests.contains(d) {
                    spec.digests.push(d.clone());
                }
            }
            (None, true) => {
                let tag = r.tag.clone().expect("a written tag");
                if let Some(tags) = spec.tags.tags.as_mut().filter(|t| !t.contains(&tag)) {
                    tags.push(tag);
                }
            }
            // Every tag, whatever else was listed.
            (None, false) => spec.tags.tags = None,
        }
    }
    (by_repo.into_values().collect(), problems)
}

/// Does `on_change` for the store at `root`: runs its command, or renders and installs
/// the nginx configuration through this binary's own `gen-conf --install` (so nginx is
/// reloaded only with a file `nginx -t` accepts). A failure names what ran, with what it
/// printed.
pub fn run_hook(on_change: &OnChange, root: &Path) -> Result<(), SyncError> {
    let (program, args): (PathBuf, Vec<OsString>) = match on_change {
        OnChange::Command(command) => {
            let (program, args) = command.split_first().expect("validated non-empty");
            (program.into(), args.iter().map(OsString::from).collect())
        }
        OnChange::ReloadNginx { conf, args } => {
            let exe = std::env::current_exe().map_err(|source| SyncError::Start {
                what: "on-change",
                command: "static-registry gen-conf".to_owned(),
                source,
            })?;
            let mut all: Vec<OsString> = vec!["gen-conf".into(), "--root".into()];
            all.push(root.into());
            all.push("--install".into());
            all.push(conf.into());
            all.extend(args.iter().map(OsString::from));
            (exe, all)
        }
    };
    let shown = std::iter::once(program.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = std::process::Command::new(&program)
        .args(&args)
        .output()
        .map_err(|source| SyncError::Start {
            what: "on-change",
            command: shown.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(SyncError::Failed {
        what: "on-change",
        command: shown,
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_lines_become_one_spec_per_repository() {
        let text = "# pinned\nreg.io/a/b:1\n\nreg.io/a/b:2\nreg.io/a/b@sha256:\
                    0000000000000000000000000000000000000000000000000000000000000000\n\
                    reg.io/c\nreg.io/c:9\nother.io/x:1\nreg.io/Bad:1\n";
        let (specs, problems) = parse_listing(text, "reg.io", Some("m"));
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].target, "m/a/b");
        assert_eq!(
            specs[0].tags.tags,
            Some(vec!["1".to_owned(), "2".to_owned()])
        );
        assert_eq!(specs[0].digests.len(), 1);
        // A bare repository means every tag, even beside a tag of it.
        assert_eq!(specs[1].target, "m/c");
        assert_eq!(specs[1].tags.tags, None);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("line 8: \"other.io/x:1\": not in reg.io"));
        assert!(problems[1].starts_with("line 9: "));
    }
}
