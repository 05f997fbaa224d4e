//! The `sync` service: each source of the configuration on its own schedule, rounds of a
//! source never overlapping, at most `rounds` of them at once; the control API beside it.
//! A source that fails backs off; SIGHUP reloads the configuration (a broken one is
//! refused and the old one kept); SIGTERM and SIGINT stop it, abandoning rounds in flight
//! (the store is crash-safe: nothing half-published is ever served).

pub mod api;
mod browse;
pub mod daemon;
pub mod jobs;
mod metrics;
mod stored;

pub use metrics::Totals;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Local};
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError, MirrorConfig, Source, SyncTarget};
use crate::fetch::FetchOptions;
use crate::reference::Reference;
use crate::registry::{ClientOptions, Remedy};
use crate::report::{CopyStatus, Reporter, TargetReport, error_chain};
use crate::schedule::Schedule;
use crate::signature::Policy;
use crate::sync::{self, Round};

/// The first wait after a failed round, doubled per failure in a row up to `MAX_BACKOFF`;
/// the schedule's own next time is kept when it is later.
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Errors kept from a round for the API (the log has them all).
const ERRORS_KEPT: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{file}: {} without a schedule: add `interval:` or `cron:` to the file (at the top for every source, or under `registries.<host>`), or pass --interval", sources.join(", "))]
    NoSchedule { file: String, sources: Vec<String> },
    #[error(transparent)]
    Sync(#[from] sync::SyncError),
    #[error("no source is named {0:?}")]
    UnknownSource(String),
    #[error("{} problem{}: {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("; "))]
    Invalid(Vec<String>),
    #[error(
        "the source {0:?} is defined in the configuration file; change it there (and send SIGHUP)"
    )]
    FromFile(String),
    #[error("the state file {}", path.display())]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How the service runs; the command line's options.
pub struct Options {
    pub config: PathBuf,
    pub root: PathBuf,
    /// For sources the file gives no schedule.
    pub default_schedule: Option<Schedule>,
    pub source_base: ClientOptions,
    pub dest_base: ClientOptions,
    pub fetch: FetchOptions,
    /// Rounds running at once, over all sources.
    pub rounds: usize,
    /// Where the sources created over the API are kept.
    pub state: PathBuf,
    /// What to do about a remedy, in the configuration's words (the binary's); the
    /// second argument is the source's `registries:` key when the remedy concerns it.
    pub hint: fn(&Remedy, Option<&str>) -> String,
}

impl Options {
    /// What every round of `config` shares: its clients and the targets' defaults.
    pub fn context(&self, config: &MirrorConfig) -> Result<sync::Context, sync::SyncError> {
        Ok(sync::Context {
            clients: sync::clients(config, &self.source_base)?,
            root: self.root.clone(),
            dest_base: self.dest_base.clone(),
            opts: self.fetch.clone(),
            prefix: config.prefix.clone(),
        })
    }
}

/// A running service; cheap to clone (the API holds one).
#[derive(Clone)]
pub struct Service {
    shared: Arc<Shared>,
}

struct Shared {
    opts: Options,
    state: Mutex<State>,
    slots: Semaphore,
    /// One `on-change` command at a time.
    hook: tokio::sync::Mutex<()>,
    stop: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
    jobs: Arc<jobs::Jobs>,
}

struct State {
    on_change: Option<config::OnChange>,
    /// The configuration file's clients, for registries no source names.
    file_ctx: Option<Arc<sync::Context>>,
    /// The file's signature policies by registry (`registries.<host>.verify`), which
    /// copy jobs from that registry hold to.
    policies: BTreeMap<String, Arc<Policy>>,
    sources: BTreeMap<String, Entry>,
    /// Each source task's number, so that a task whose source was removed (and perhaps
    /// added again, with a new task) ends instead of running beside its successor.
    next_task: u64,
}

/// Where a source was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The configuration file (`configured`).
    Config,
    /// `PUT /v1/sources/{name}`, kept in the state file.
    Api,
}

struct Entry {
    origin: Origin,
    /// For an API source, the body it was created with (what the state file keeps).
    body: Option<serde_json::Value>,
    source: Source,
    schedule: Schedule,
    ctx: Arc<sync::Context>,
    task: u64,
    wake: Arc<Notify>,
    paused: bool,
    /// A sync was asked for through the API.
    requested: bool,
    running: Option<DateTime<Local>>,
    next: DateTime<Local>,
    last: Option<LastRound>,
    last_success: Option<DateTime<Local>>,
    failures_in_a_row: u32,
    totals: Totals,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastRound {
    pub started: DateTime<Local>,
    pub seconds: f64,
    /// Images copied, unchanged and failed, over all targets.
    pub copied: usize,
    pub unchanged: usize,
    pub failed: usize,
    pub store_changed: bool,
    /// The first errors, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// What to do about them, where more than retrying.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hints: Vec<String>,
}

/// A source as the API shows it.
#[derive(Debug, Serialize)]
pub struct SourceView {
    pub name: String,
    pub origin: Origin,
    pub registry: String,
    /// `paused`, `running` or `active`.
    pub state: &'static str,
    pub schedule: String,
    pub next_run: Option<DateTime<Local>>,
    pub running_since: Option<DateTime<Local>>,
    pub last_run: Option<LastRound>,
    pub last_success: Option<DateTime<Local>>,
    pub failures_in_a_row: u32,
    /// The images configured, with their selections (those an `images-from` command
    /// lists come at each round).
    pub images: Vec<ImageView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images_from: Vec<String>,
    pub to: Vec<String>,
    pub totals: Totals,
}

/// One configured image: where from, where to, what is selected.
#[derive(Debug, Serialize)]
pub struct ImageView {
    pub source: String,
    pub target: String,
    /// The tags asked for; absent: every tag the registry lists, through the filters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Anchored patterns as they are matched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub digests: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    pub referrers: bool,
}

impl ImageView {
    fn of(spec: &crate::config::ImageSpec) -> ImageView {
        let texts = |list: &[regex::Regex]| list.iter().map(|r| r.as_str().to_owned()).collect();
        ImageView {
            source: spec.source.origin(),
            target: spec.target.clone(),
            tags: spec.tags.tags.clone(),
            allow: texts(&spec.tags.allow),
            deny: texts(&spec.tags.deny),
            semver: spec.tags.semver.as_ref().map(ToString::to_string),
            latest: spec.tags.latest,
            digests: spec.digests.iter().map(ToString::to_string).collect(),
            platforms: spec.platforms.iter().map(ToString::to_string).collect(),
            referrers: spec.referrers,
        }
    }
}

/// What the API asks of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A round now (after the running one, if any), paused or not.
    Sync,
    Pause,
    Resume,
}

impl Service {
    /// Reads the configuration (every problem reported at once) and the state file's
    /// sources, and starts each source's task (call it within the runtime).
    pub fn new(opts: Options) -> Result<Service, ServiceError> {
        let rounds = opts.rounds.max(1);
        let stop = CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        let jobs = jobs::Jobs::start(
            opts.source_base.clone(),
            opts.dest_base.clone(),
            stop.clone(),
            &tasks,
        );
        let service = Service {
            shared: Arc::new(Shared {
                opts,
                state: Mutex::new(State {
                    on_change: None,
                    file_ctx: None,
                    policies: BTreeMap::new(),
                    sources: BTreeMap::new(),
                    next_task: 0,
                }),
                slots: Semaphore::new(rounds),
                hook: tokio::sync::Mutex::new(()),
                stop,
                tasks,
                jobs,
            }),
        };
        service.reload()?;
        service.load_stored()?;
        Ok(service)
    }

    /// A token cancelled when the service stops.
    pub fn stopping(&self) -> CancellationToken {
        self.shared.stop.clone()
    }

    /// Stop taking work; rounds in flight are abandoned.
    pub fn stop(&self) {
        self.shared.stop.cancel();
    }

    /// Waits for every source task to end after `stop`.
    pub async fn stopped(&self) {
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("service state lock")
    }

    /// Reads the configuration file (again) and applies it: new sources start, removed
    /// ones end (a round in flight finishes first), changed ones take effect at their next
    /// round, unchanged ones keep their state and timing. On any problem nothing changes.
    /// What changed.
    pub fn reload(&self) -> Result<Vec<String>, ServiceError> {
        let opts = &self.shared.opts;
        let config = config::load(&opts.config)?;
        let sources = config.sources();
        let unscheduled: Vec<String> = sources
            .iter()
            .filter(|s| s.schedule.is_none() && opts.default_schedule.is_none())
            .map(|s| s.name.clone())
            .collect();
        if !unscheduled.is_empty() {
            return Err(ServiceError::NoSchedule {
                file: opts.config.display().to_string(),
                sources: unscheduled,
            });
        }
        let ctx = Arc::new(opts.context(&config)?);
        let mut changes = Vec::new();
        let mut state = self.state();
        state.on_change = config.on_change.clone();
        state.file_ctx = Some(ctx.clone());
        state.policies = config
            .registries
            .iter()
            .filter_map(|(host, r)| Some((host.clone(), r.verify.clone()?)))
            .collect();
        let names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
        state.sources.retain(|name, e| {
            let keep = e.origin == Origin::Api || names.contains(name);
            if !keep {
                changes.push(format!("removed {name}"));
                e.wake.notify_one();
            }
            keep
        });
        for source in sources {
            let schedule = self.schedule_of(&source);
            if let Some(e) = state
                .sources
                .get(&source.name)
                .filter(|e| e.origin == Origin::Api)
            {
                tracing::warn!(source = %source.name, "the configuration file's source replaces the one created over the API");
                e.wake.notify_one();
                state.sources.remove(&source.name);
            }
            changes.extend(self.install(&mut state, source, schedule, ctx.clone(), None));
        }
        Ok(changes)
    }

    fn schedule_of(&self, source: &Source) -> Schedule {
        source
            .schedule
            .clone()
            .or_else(|| self.shared.opts.default_schedule.clone())
            .expect("checked when read")
    }

    /// Puts `source` in force: a new one starts its task; a changed one takes effect at
    /// its next round (a new schedule counts from now); an unchanged one keeps its timing.
    /// `body`: the API body it came from (`None`: the file). What changed, if anything.
    fn install(
        &self,
        state: &mut State,
        source: Source,
        schedule: Schedule,
        ctx: Arc<sync::Context>,
        body: Option<serde_json::Value>,
    ) -> Option<String> {
        let now = Local::now();
        let origin = match body {
            Some(_) => Origin::Api,
            None => Origin::Config,
        };
        if let Some(e) = state.sources.get_mut(&source.name) {
            let changed = e.source != source || e.schedule != schedule;
            if e.schedule != schedule {
                e.next = schedule.first(now);
            }
            let name = source.name.clone();
            e.source = source;
            e.schedule = schedule;
            e.ctx = ctx;
            e.body = body;
            e.wake.notify_one();
            return changed.then(|| format!("changed {name}"));
        }
        state.next_task += 1;
        let task = state.next_task;
        let name = source.name.clone();
        state.sources.insert(
            name.clone(),
            Entry {
                origin,
                body,
                next: schedule.first(now),
                source,
                schedule,
                ctx,
                task,
                wake: Arc::new(Notify::new()),
                paused: false,
                requested: false,
                running: None,
                last: None,
                last_success: None,
                failures_in_a_row: 0,
                totals: Totals::default(),
            },
        );
        let service = self.clone();
        let spawned = name.clone();
        self.shared
            .tasks
            .spawn(async move { service.source_task(spawned, task).await });
        Some(format!("added {name}"))
    }

    /// Starts the sources the state file keeps. One that no longer reads (or whose name
    /// the file now uses) is logged and left out, and stays in the state file.
    fn load_stored(&self) -> Result<(), ServiceError> {
        let path = &self.shared.opts.state;
        let bodies = stored::read(path).map_err(|source| ServiceError::State {
            path: path.clone(),
            source,
        })?;
        for (name, body) in bodies {
            let mut state = self.state();
            if state.sources.contains_key(&name) {
                tracing::warn!(source = %name, "a source created over the API has the name of one in the configuration file, which wins");
                continue;
            }
            match self.prepare(&name, &body) {
                Ok((source, schedule, ctx)) => {
                    self.install(&mut state, source, schedule, ctx, Some(body));
                }
                Err(e) => {
                    tracing::error!(source = %name, error = %error_chain(&e).join(": "), "a source in the state file no longer reads; left out")
                }
            }
        }
        Ok(())
    }

    /// An API body as a source ready to install.
    fn prepare(
        &self,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<(Source, Schedule, Arc<sync::Context>), ServiceError> {
        let (source, config) = stored::parse(name, body).map_err(ServiceError::Invalid)?;
        if source.schedule.is_none() && self.shared.opts.default_schedule.is_none() {
            return Err(ServiceError::Invalid(vec![
                "interval: no schedule: give `interval` or `cron` (the service has no --interval)"
                    .to_owned(),
            ]));
        }
        let ctx = Arc::new(self.shared.opts.context(&config)?);
        Ok((source.clone(), self.schedule_of(&source), ctx))
    }

    /// Creates or replaces the API source `name` from `body` (a configuration in JSON with
    /// one source) and keeps it in the state file. Whether it is new, and its view.
    pub fn put_source(
        &self,
        name: &str,
        body: serde_json::Value,
    ) -> Result<(bool, SourceView), ServiceError> {
        let (source, schedule, ctx) = self.prepare(name, &body)?;
        let mut state = self.state();
        let created = match state.sources.get(name) {
            Some(e) if e.origin == Origin::Config => {
                return Err(ServiceError::FromFile(name.to_owned()));
            }
            Some(_) => false,
            None => true,
        };
        let mut kept = api_bodies(&state);
        kept.insert(name.to_owned(), body.clone());
        self.persist(&kept)?;
        self.install(&mut state, source, schedule, ctx, Some(body));
        tracing::info!(source = %name, created, "source put over the API");
        Ok((created, view(&state.sources[name])))
    }

    /// Removes the API source `name` (a round in flight finishes first, unrecorded).
    pub fn delete_source(&self, name: &str) -> Result<(), ServiceError> {
        let mut state = self.state();
        match state.sources.get(name) {
            None => return Err(ServiceError::UnknownSource(name.to_owned())),
            Some(e) if e.origin == Origin::Config => {
                return Err(ServiceError::FromFile(name.to_owned()));
            }
            Some(_) => {}
        }
        let mut kept = api_bodies(&state);
        kept.remove(name);
        self.persist(&kept)?;
        if let Some(e) = state.sources.remove(name) {
            e.wake.notify_one();
        }
        tracing::info!(source = %name, "source deleted over the API");
        Ok(())
    }

    fn persist(&self, bodies: &BTreeMap<String, serde_json::Value>) -> Result<(), ServiceError> {
        let path = &self.shared.opts.state;
        stored::write(path, bodies).map_err(|source| ServiceError::State {
            path: path.clone(),
            source,
        })
    }

    /// Every source, with `state` (`configured`, `active`, `paused`, `running`) as a filter.
    pub fn sources(&self, state: Option<&str>) -> Vec<SourceView> {
        let st = self.state();
        st.sources
            .values()
            .map(view)
            .filter(|v| match state {
                None => true,
                Some("configured") => v.origin == Origin::Config,
                Some(s) => v.state == s,
            })
            .collect()
    }

    pub fn source(&self, name: &str) -> Result<SourceView, ServiceError> {
        let st = self.state();
        st.sources
            .get(name)
            .map(view)
            .ok_or_else(|| ServiceError::UnknownSource(name.to_owned()))
    }

    pub fn act(&self, name: &str, action: Action) -> Result<SourceView, ServiceError> {
        let mut st = self.state();
        let e = st
            .sources
            .get_mut(name)
            .ok_or_else(|| ServiceError::UnknownSource(name.to_owned()))?;
        match action {
            Action::Sync => e.requested = true,
            Action::Pause => e.paused = true,
            // A schedule time passed while paused runs at once.
            Action::Resume => e.paused = false,
        }
        tracing::info!(source = %name, action = ?action, "source");
        e.wake.notify_one();
        Ok(view(e))
    }

    /// A client for `registry` (a host as in image names): a source's of that registry
    /// (its TLS settings and credentials), else the configuration file's.
    pub fn client_for(&self, registry: &str) -> crate::registry::Client {
        let st = self.state();
        let ctx = st
            .sources
            .values()
            .find(|e| e.source.registry == registry)
            .map(|e| &e.ctx)
            .or(st.file_ctx.as_ref())
            .expect("loaded at start");
        ctx.clients.get(registry).clone()
    }

    /// The copy jobs.
    pub fn jobs(&self) -> &jobs::Jobs {
        &self.shared.jobs
    }

    /// Queues a copy job, under the signature policy the file gives its source registry.
    pub fn submit(&self, mut request: jobs::CopyRequest) -> Result<jobs::JobView, jobs::JobError> {
        let policy = self.state().policies.get(&request.source.registry).cloned();
        request.source_settings.verify = policy;
        self.shared.jobs.submit(request)
    }

    /// Prometheus text.
    pub fn metrics(&self) -> String {
        let jobs = self.shared.jobs.counts();
        let st = self.state();
        metrics::render(
            jobs,
            st.sources.values().map(|e| metrics::SourceFigures {
                name: &e.source.name,
                running: e.running.is_some(),
                paused: e.paused,
                last_success: e.last_success,
                last_seconds: e.last.as_ref().map(|l| l.seconds),
                totals: &e.totals,
            }),
        )
    }

    /// One source's life: wait for its time (or a request), run a round, record it.
    async fn source_task(self, name: String, task: u64) {
        loop {
            let (wake, due) = {
                let st = self.state();
                let Some(e) = st.sources.get(&name).filter(|e| e.task == task) else {
                    return;
                };
                let due = match (e.requested, e.paused) {
                    (true, _) => Some(Local::now()),
                    (false, true) => None,
                    (false, false) => Some(e.next),
                };
                (e.wake.clone(), due)
            };
            let sleep = async {
                match due {
                    Some(t) => {
                        let wait = (t - Local::now()).to_std().unwrap_or_default();
                        tokio::time::sleep(wait).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.shared.stop.cancelled() => return,
                _ = wake.notified() => continue,
                _ = sleep => {}
            }
            let Some((source, ctx, started)) = self.claim(&name, task) else {
                continue;
            };
            let round = tokio::select! {
                r = self.run_round(&source, &ctx) => r,
                _ = self.shared.stop.cancelled() => {
                    tracing::warn!(source = %name, "round abandoned at shutdown; the next run goes on from what it stored");
                    return;
                }
            };
            self.record(&source, task, started, round).await;
            release_freed_memory();
        }
    }

    /// Marks the source running when it is due; its config as of now.
    fn claim(
        &self,
        name: &str,
        task: u64,
    ) -> Option<(Source, Arc<sync::Context>, DateTime<Local>)> {
        let mut st = self.state();
        let e = st.sources.get_mut(name).filter(|e| e.task == task)?;
        let now = Local::now();
        if !(e.requested || (!e.paused && e.next <= now)) {
            return None;
        }
        e.requested = false;
        e.running = Some(now);
        Some((e.source.clone(), e.ctx.clone(), now))
    }

    async fn run_round(&self, source: &Source, ctx: &sync::Context) -> Round {
        let _slot = self.shared.slots.acquire().await.expect("never closed");
        tracing::info!(source = %source.name, "round started");
        let reporter: Arc<dyn Reporter> = Arc::new(Logged {
            source: source.name.clone(),
        });
        sync::run_source(ctx, source, reporter).await
    }

    async fn record(&self, source: &Source, task: u64, started: DateTime<Local>, round: Round) {
        let name = source.name.as_str();
        let mut errors: Vec<String> = round
            .unresolved
            .iter()
            .map(|r| format!("{}: {}", r.source, r.error.join(": ")))
            .chain(
                round
                    .images
                    .iter()
                    .filter(|r| r.status == CopyStatus::Failed)
                    .map(|r| format!("{} -> {}: {}", r.source, r.target, r.error.join(": "))),
            )
            .collect();
        let count = |s: CopyStatus| round.images.iter().filter(|r| r.status == s).count();
        let failed = round.failed();
        tracing::info!(
            source = %name,
            seconds = round.seconds,
            copied = count(CopyStatus::Copied),
            unchanged = count(CopyStatus::Unchanged),
            skipped = count(CopyStatus::Skipped),
            failed,
            "round finished"
        );
        for e in &errors {
            tracing::warn!(source = %name, error = %e, "round error");
        }
        let hints = self.hints(source, &round);
        for h in &hints {
            tracing::warn!(source = %name, hint = %h, "hint");
        }
        let on_change = self.state().on_change.clone();
        if let Some(on_change) = on_change.filter(|_| round.store_changed) {
            let _one = self.shared.hook.lock().await;
            let root = self.shared.opts.root.clone();
            let hook = tokio::task::spawn_blocking(move || sync::run_hook(&on_change, &root))
                .await
                .expect("hook does not panic");
            match hook {
                Ok(()) => tracing::info!(source = %name, "on-change done"),
                Err(e) => {
                    let e = error_chain(&e).join(": ");
                    tracing::warn!(source = %name, error = %e, "on-change failed");
                    errors.push(e);
                }
            }
        }
        let ok = failed == 0 && errors.is_empty();
        let mut st = self.state();
        let Some(e) = st.sources.get_mut(name).filter(|e| e.task == task) else {
            return;
        };
        let now = Local::now();
        e.running = None;
        e.totals.rounds += 1;
        e.totals.images_copied += count(CopyStatus::Copied) as u64;
        for t in &round.targets {
            e.totals.blobs_copied += t.blobs_uploaded;
            e.totals.bytes_copied += t.bytes_sent;
        }
        e.next = e.schedule.after(started, now);
        if ok {
            e.failures_in_a_row = 0;
            e.last_success = Some(now);
        } else {
            e.totals.failed_rounds += 1;
            e.failures_in_a_row += 1;
            let backoff = FIRST_BACKOFF
                .saturating_mul(1 << (e.failures_in_a_row - 1).min(16))
                .min(MAX_BACKOFF);
            let retry = now + chrono::Duration::from_std(backoff).unwrap_or_default();
            e.next = e.next.max(retry);
        }
        errors.truncate(ERRORS_KEPT);
        e.last = Some(LastRound {
            started,
            seconds: round.seconds,
            copied: count(CopyStatus::Copied),
            unchanged: count(CopyStatus::Unchanged),
            failed,
            store_changed: round.store_changed,
            errors,
            hints,
        });
    }

    /// The distinct hints for the remedies among a round's failures.
    fn hints(&self, source: &Source, round: &Round) -> Vec<String> {
        let source_host = format!("{}/x", source.registry)
            .parse::<Reference>()
            .map(|r| r.api_host().to_owned())
            .unwrap_or_default();
        let mut hints: Vec<String> = round
            .images
            .iter()
            .filter_map(|r| r.remedy.as_ref())
            .chain(round.unresolved.iter().filter_map(|r| r.remedy.as_ref()))
            .map(|r| {
                let key = (r.registry() == source_host).then_some(source.registry.as_str());
                (self.shared.opts.hint)(r, key)
            })
            .collect();
        hints.sort();
        hints.dedup();
        hints
    }
}

/// Hands the heap a round freed back to the system: glibc keeps it in its per-thread
/// arenas otherwise, and an idle service would hold a big round's peak for good.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's own heap; it takes no
    // pointers and may be called at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What the state file keeps: each API source's body.
fn api_bodies(state: &State) -> BTreeMap<String, serde_json::Value> {
    state
        .sources
        .iter()
        .filter_map(|(n, e)| e.body.clone().map(|b| (n.clone(), b)))
        .collect()
}

fn view(e: &Entry) -> SourceView {
    let state = if e.running.is_some() {
        "running"
    } else if e.paused {
        "paused"
    } else {
        "active"
    };
    SourceView {
        name: e.source.name.clone(),
        origin: e.origin,
        registry: e.source.registry.clone(),
        state,
        schedule: e.schedule.to_string(),
        next_run: (!e.paused).then_some(e.next),
        running_since: e.running,
        last_run: e.last.clone(),
        last_success: e.last_success,
        failures_in_a_row: e.failures_in_a_row,
        images: e.source.images.iter().map(ImageView::of).collect(),
        images_from: e.source.images_from.clone(),
        to: e
            .source
            .to
            .iter()
            .map(|t| match t {
                SyncTarget::Store => "store".to_owned(),
                SyncTarget::Registry { target, .. } => target.to_string(),
            })
            .collect(),
        totals: e.totals.clone(),
    }
}

/// Round progress as log lines: one per image copied or failed (unchanged ones only at
/// debug level).
struct Logged {
    source: String,
}

impl Reporter for Logged {
    fn copied(&self, r: &TargetReport) {
        let digest = r.digest.as_deref().unwrap_or("");
        match r.status {
            CopyStatus::Unchanged => {
                tracing::debug!(source = %self.source, image = %r.source, target = %r.target, "unchanged")
            }
            CopyStatus::Failed => {
                tracing::warn!(source = %self.source, image = %r.source, target = %r.target, error = %r.error.join(": "), "failed")
            }
            s => {
                tracing::info!(source = %self.source, image = %r.source, target = %r.target, digest, status = ?s, "image")
            }
        }
    }
    fn warn(&self, message: &str) {
        tracing::warn!(source = %self.source, "{message}");
    }
}
