//! Copy jobs: one source image to several registries, asked for over the API in the old
//! distribution service's request format (`/api/distribute/image`) or ours (`/v1/jobs`),
//! queued (bounded), run on the copy engine at most `RUNNING` at once, and kept for
//! `KEPT_FOR` after they end. Jobs live in memory only: a restart forgets them, queued ones
//! included (the caller sees 404 for the id and submits again); the images they copied
//! stay where they were copied.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::{RegistrySettings, SyncTarget};
use crate::copy::registry::{RegistryDestination, RegistrySource};
use crate::copy::{self, Engine, ImageJob, JobTarget, Overwrite, SourceRef};
use crate::plan::{self, Target};
use crate::reference::Reference;
use crate::registry::{Client, ClientOptions};
use crate::report::{CopyStatus, Silent, TargetReport, error_chain};
use crate::select::PlatformSpec;

/// Jobs waiting to run; a request beyond them is refused (429).
pub const QUEUE: usize = 64;
/// Jobs running at once.
const RUNNING: usize = 2;
/// How long an ended job stays readable.
const KEPT_FOR: Duration = Duration::from_secs(3600);
/// Ended jobs kept at most (the oldest go first).
const KEPT_MAX: usize = 1000;

/// A job's state; the old service's words, upper case on its routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    /// Every target has the image (copied, unchanged, or skipped by its overwrite policy).
    Finished,
    /// Some target does not: see its error.
    Failed,
}

/// A validated copy request.
pub struct CopyRequest {
    /// With a tag or a digest.
    pub source: Reference,
    pub source_settings: RegistrySettings,
    pub targets: Vec<RequestTarget>,
    pub referrers: bool,
    pub platforms: Vec<PlatformSpec>,
}

pub struct RequestTarget {
    /// As the caller wrote it (the old format's reports name targets so).
    pub endpoint: String,
    pub at: Target,
    pub settings: RegistrySettings,
    pub overwrite: Overwrite,
}

/// One target's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct TargetOutcome {
    pub endpoint: String,
    /// `<host>/<repository>:<tag>`.
    pub image: String,
    /// `None` until the job has run.
    pub status: Option<CopyStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error: Vec<String>,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: String,
    pub state: JobState,
    pub source: String,
    pub created_at: DateTime<Local>,
    pub started_at: Option<DateTime<Local>>,
    pub finished_at: Option<DateTime<Local>>,
    pub targets: Vec<TargetOutcome>,
    /// Why the job failed as a whole (the service stopped), beside the targets' errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{} problem{}: {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("; "))]
    Invalid(Vec<String>),
    #[error("{QUEUE} jobs are waiting already; try again when some have run")]
    QueueFull,
    #[error("no job has the id {0:?} (ended jobs are kept for an hour, and none across a restart)")]
    Unknown(String),
}

struct Record {
    view: JobView,
    request: Option<CopyRequest>,
}

/// The job table and its queue.
pub struct Jobs {
    table: Mutex<BTreeMap<String, Record>>,
    queue: mpsc::Sender<String>,
}

impl Jobs {
    /// The table, and the task that runs what is queued until `stop`.
    pub fn start(
        source_base: ClientOptions,
        dest_base: ClientOptions,
        stop: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Arc<Jobs> {
        let (queue, mut queued) = mpsc::channel::<String>(QUEUE);
        let jobs = Arc::new(Jobs {
            table: Mutex::new(BTreeMap::new()),
            queue,
        });
        let running = Arc::new(Semaphore::new(RUNNING));
        let runner = jobs.clone();
        let tracker = tasks.clone();
        tasks.spawn(async move {
            loop {
                let id = tokio::select! {
                    _ = stop.cancelled() => return,
                    id = queued.recv() => match id { Some(id) => id, None => return },
                };
                let permit = tokio::select! {
                    _ = stop.cancelled() => return,
                    p = running.clone().acquire_owned() => p.expect("never closed"),
                };
                let (jobs, stop) = (runner.clone(), stop.clone());
                let (source_base, dest_base) = (source_base.clone(), dest_base.clone());
                tracker.spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        _ = jobs.run(&id, &source_base, &dest_base) => {}
                        _ = stop.cancelled() => jobs.abandon(&id),
                    }
                });
            }
        });
        jobs
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Record>> {
        self.table.lock().expect("job table lock")
    }

    /// Queues `request`; its id and view.
    pub fn submit(&self, request: CopyRequest) -> Result<JobView, JobError> {
        let id = new_id();
        let view = JobView {
            id: id.clone(),
            state: JobState::Queued,
            source: request.source.to_string(),
            created_at: Local::now(),
            started_at: None,
            finished_at: None,
            targets: request
                .targets
                .iter()
                .map(|t| TargetOutcome {
                    endpoint: t.endpoint.clone(),
                    image: match plan::joined(&request.source.repository, &t.at) {
                        Ok(repo) => format!("{}/{repo}", t.at.host),
                        Err(_) => t.at.to_string(),
                    },
                    status: None,
                    digest: None,
                    error: Vec::new(),
                })
                .collect(),
            error: None,
        };
        let mut table = self.table();
        expire(&mut table);
        self.queue
            .try_send(id.clone())
            .map_err(|_| JobError::QueueFull)?;
        table.insert(
            id,
            Record {
                view: view.clone(),
                request: Some(request),
            },
        );
        Ok(view)
    }

    pub fn get(&self, id: &str) -> Result<JobView, JobError> {
        self.table()
            .get(id)
            .map(|r| r.view.clone())
            .ok_or_else(|| JobError::Unknown(id.to_owned()))
    }

    /// Every job kept, oldest first.
    pub fn list(&self) -> Vec<JobView> {
        let mut all: Vec<JobView> = self.table().values().map(|r| r.view.clone()).collect();
        all.sort_by_key(|v| v.created_at);
        all
    }

    /// (queued, running) now.
    pub fn counts(&self) -> (usize, usize) {
        let table = self.table();
        let count = |s| table.values().filter(|r| r.view.state == s).count();
        (count(JobState::Queued), count(JobState::Running))
    }

    async fn run(&self, id: &str, source_base: &ClientOptions, dest_base: &ClientOptions) {
        let request = {
            let mut table = self.table();
            let Some(r) = table.get_mut(id) else { return };
            r.view.state = JobState::Running;
            r.view.started_at = Some(Local::now());
            r.request.take()
        };
        let Some(request) = request else { return };
        tracing::info!(job = %id, source = %request.source, targets = request.targets.len(), "job started");
        let reports = copy_image(&request, source_base, dest_base).await;
        let mut table = self.table();
        let Some(r) = table.get_mut(id) else { return };
        for (outcome, report) in r.view.targets.iter_mut().zip(reports) {
            match report {
                Ok(report) => {
                    outcome.status = Some(report.status);
                    outcome.digest = report.digest;
                    outcome.error = report.error;
                }
                Err(error) => {
                    outcome.status = Some(CopyStatus::Failed);
                    outcome.error = error;
                }
            }
        }
        let failed = r
            .view
            .targets
            .iter()
            .any(|t| t.status == Some(CopyStatus::Failed));
        r.view.state = if failed {
            JobState::Failed
        } else {
            JobState::Finished
        };
        r.view.finished_at = Some(Local::now());
        tracing::info!(job = %id, state = ?r.view.state, "job ended");
    }

    fn abandon(&self, id: &str) {
        if let Some(r) = self.table().get_mut(id) {
            r.view.state = JobState::Failed;
            r.view.error = Some("the service stopped while the job ran".to_owned());
            r.view.finished_at = Some(Local::now());
        }
    }
}

/// Drops ended jobs older than `KEPT_FOR`, then the oldest ended ones beyond `KEPT_MAX`.
fn expire(table: &mut BTreeMap<String, Record>) {
    let now = Local::now();
    let ended = |r: &Record| r.view.finished_at;
    table.retain(|_, r| ended(r).is_none_or(|t| (now - t).to_std().unwrap_or_default() < KEPT_FOR));
    let mut old: Vec<(DateTime<Local>, String)> = table
        .iter()
        .filter_map(|(id, r)| ended(r).map(|t| (t, id.clone())))
        .collect();
    if old.len() >= KEPT_MAX {
        old.sort();
        for (_, id) in &old[..=old.len() - KEPT_MAX] {
            table.remove(id);
        }
    }
}

fn new_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

/// Copies the request's image to each of its targets; per target its report, or the
/// error that kept the copy from starting there.
async fn copy_image(
    request: &CopyRequest,
    source_base: &ClientOptions,
    dest_base: &ClientOptions,
) -> Vec<Result<TargetReport, Vec<String>>> {
    let source = &request.source;
    let source_client = match Client::new(request.source_settings.apply(source_base)) {
        Ok(c) => c,
        Err(e) => {
            return request
                .targets
                .iter()
                .map(|_| Err(error_chain(&e)))
                .collect();
        }
    };
    let reporter = Arc::new(Silent);
    let registry_source = RegistrySource::new(
        source_client,
        &source.registry,
        source.api_host(),
        reporter.clone(),
    );
    let mut dests = Vec::new();
    let mut targets = Vec::new();
    let mut out: Vec<Option<Result<TargetReport, Vec<String>>>> = Vec::new();
    for t in &request.targets {
        let made = Client::new(t.settings.apply(dest_base))
            .map_err(|e| error_chain(&e))
            .and_then(|client| {
                let repo = plan::joined(&source.repository, &t.at).map_err(|e| error_chain(&e))?;
                Ok((client, repo))
            });
        match made {
            Ok((client, repo)) => {
                targets.push(JobTarget {
                    dest: dests.len(),
                    repo,
                    tag: source.tag.clone(),
                    overwrite: t.overwrite,
                });
                dests.push(RegistryDestination::new(client, &t.at.host));
                out.push(None);
            }
            Err(e) => out.push(Some(Err(e))),
        }
    }
    let job = ImageJob {
        label: source.to_string(),
        source: 0,
        repo: source.repository.clone(),
        reference: match (&source.digest, &source.tag) {
            (Some(d), _) => SourceRef::Digest(d.clone()),
            (None, t) => SourceRef::Tag(t.clone().unwrap_or_else(|| "latest".to_owned())),
        },
        platforms: request.platforms.clone(),
        referrers: request.referrers,
        annotations: Default::default(),
        fallback: false,
        policy: request.source_settings.verify.clone(),
        targets,
    };
    let engine = Engine::new(
        vec![registry_source],
        dests,
        copy::Options::default(),
        reporter,
    );
    // The image's own report per destination (its referrers' come separately).
    let got = Mutex::new(vec![None; out.iter().filter(|o| o.is_none()).count()]);
    let finished = |job: &copy::JobReport| {
        let mut got = got.lock().expect("report lock");
        for (dest, r) in &job.targets {
            got[*dest] = Some(r.clone());
        }
    };
    engine.run(vec![vec![job]], &finished).await;
    let mut got = got.into_inner().expect("report lock").into_iter();
    out.into_iter()
        .map(|slot| match slot {
            Some(err) => err,
            None => got
                .next()
                .flatten()
                .ok_or_else(|| vec!["the copy ended without a report".to_owned()]),
        })
        .collect()
}

/// The old distribution service's request: `{"source": {"endpoint", "image", "ref",
/// "auth"}, "targets": [{"endpoint", "overwrite", "verify_tls", "auth"}]}`. Fields it
/// may send that we do not use are ignored, as it ignored them.
#[derive(Deserialize)]
pub struct DistributeRequest {
    source: DistributeSource,
    targets: Vec<DistributeTarget>,
}

#[derive(Deserialize)]
struct DistributeSource {
    endpoint: String,
    image: String,
    #[serde(rename = "ref")]
    reference: Option<String>,
    auth: Option<Auth>,
    verify_tls: Option<bool>,
}

#[derive(Deserialize)]
struct DistributeTarget {
    endpoint: String,
    /// true: replace a tag pointing elsewhere (the default); false: leave it (skipped).
    overwrite: Option<bool>,
    verify_tls: Option<bool>,
    auth: Option<Auth>,
}

/// Registry credentials: `{"username", "password"}` or `"user:password"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Auth {
    Pair { username: String, password: String },
    Text(String),
}

impl DistributeRequest {
    /// Validated, every problem named by its field.
    pub fn validate(self) -> Result<CopyRequest, JobError> {
        let mut problems = Vec::new();
        let (source_host, source_tls) =
            endpoint("source.endpoint", &self.source.endpoint, &mut problems);
        let source_settings = settings(
            "source.auth",
            self.source.verify_tls.unwrap_or(true) && source_tls,
            self.source.auth,
            &mut problems,
        );
        let source = source_host.and_then(|host| {
            let repo = match host.path.as_str() {
                "" => format!("{}/{}", host.host, self.source.image),
                path => format!("{}/{path}/{}", host.host, self.source.image),
            };
            let text = match self.source.reference.as_deref() {
                Some(r) if r.starts_with("sha256:") => format!("{repo}@{r}"),
                Some(r) => format!("{repo}:{r}"),
                None => repo,
            };
            text.parse::<Reference>()
                .map_err(|e| problems.push(format!("source.image/ref: {e}")))
                .ok()
        });
        if self.targets.is_empty() {
            problems.push("targets: empty; name at least one registry".to_owned());
        }
        let mut targets = Vec::new();
        for (i, t) in self.targets.into_iter().enumerate() {
            let (at, tls) = endpoint(
                &format!("targets[{i}].endpoint"),
                &t.endpoint,
                &mut problems,
            );
            let settings = settings(
                &format!("targets[{i}].auth"),
                t.verify_tls.unwrap_or(true) && tls,
                t.auth,
                &mut problems,
            );
            if let Some(at) = at {
                targets.push(RequestTarget {
                    endpoint: t.endpoint,
                    at,
                    settings,
                    overwrite: match t.overwrite {
                        Some(false) => Overwrite::Skip,
                        _ => Overwrite::Replace,
                    },
                });
            }
        }
        match source {
            Some(source) if problems.is_empty() => Ok(CopyRequest {
                source,
                source_settings,
                targets,
                referrers: false,
                platforms: Vec::new(),
            }),
            _ => Err(JobError::Invalid(problems)),
        }
    }
}

/// `[http[s]://]HOST[:PORT][/PREFIX]`: the target, and whether TLS is wanted (`http://`
/// asks for plain HTTP, which our clients allow only with verification off).
fn endpoint(path: &str, text: &str, problems: &mut Vec<String>) -> (Option<Target>, bool) {
    let (rest, tls) = match text.split_once("://") {
        Some(("https", rest)) => (rest, true),
        Some(("http", rest)) => (rest, false),
        Some((scheme, _)) => {
            problems.push(format!(
                "{path}: {text:?}: scheme {scheme:?}; give http:// or https://, or none"
            ));
            return (None, true);
        }
        None => (text, true),
    };
    match rest.trim_end_matches('/').parse::<Target>() {
        Ok(t) if t.tag.is_none() => (Some(t), tls),
        Ok(_) => {
            problems.push(format!(
                "{path}: {text:?} names a tag; give HOST[:PORT][/PREFIX]"
            ));
            (None, tls)
        }
        Err(e) => {
            problems.push(format!("{path}: {}", error_chain(&e).join(": ")));
            (None, tls)
        }
    }
}

fn settings(
    path: &str,
    tls_verify: bool,
    auth: Option<Auth>,
    problems: &mut Vec<String>,
) -> RegistrySettings {
    let credentials = match auth {
        None => None,
        Some(Auth::Pair { username, password }) => Some((username, password)),
        Some(Auth::Text(t)) if t.is_empty() => None,
        Some(Auth::Text(t)) => match t.split_once(':') {
            Some((u, p)) => Some((u.to_owned(), p.to_owned())),
            None => {
                problems.push(format!(
                    "{path}: give {{\"username\", \"password\"}} or \"user:password\""
                ));
                None
            }
        },
    };
    RegistrySettings {
        tls_verify,
        cert_dir: None,
        credentials,
        verify: None,
    }
}

/// Our request: `{"source": "HOST/REPO:TAG", "tls-verify", "credentials", "targets":
/// [entries as in the file's `to:`], "referrers", "platforms"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JobRequest {
    source: String,
    tls_verify: Option<bool>,
    credentials: Option<Auth>,
    targets: Vec<serde_json::Value>,
    #[serde(default)]
    referrers: bool,
    #[serde(default)]
    platforms: Vec<String>,
}

impl JobRequest {
    pub fn validate(self) -> Result<CopyRequest, JobError> {
        let mut problems = Vec::new();
        let source = self
            .source
            .parse::<Reference>()
            .map_err(|e| problems.push(format!("source: {e}")))
            .ok();
        let source_settings = settings(
            "credentials",
            self.tls_verify.unwrap_or(true),
            self.credentials,
            &mut problems,
        );
        if self.targets.is_empty() {
            problems.push("targets: empty; name at least one registry".to_owned());
        }
        let mut targets = Vec::new();
        for (i, node) in self.targets.iter().enumerate() {
            match crate::config::api_target(&format!("targets[{i}]"), node) {
                Ok(SyncTarget::Registry {
                    target,
                    settings,
                    overwrite,
                }) => targets.push(RequestTarget {
                    endpoint: target.to_string(),
                    at: target,
                    settings,
                    overwrite,
                }),
                Ok(SyncTarget::Store) => unreachable!("api_target gives registries"),
                Err(p) => problems.extend(p),
            }
        }
        let mut platforms = Vec::new();
        for (i, p) in self.platforms.iter().enumerate() {
            match p.parse::<PlatformSpec>() {
                Ok(p) => platforms.push(p),
                Err(e) => problems.push(format!("platforms[{i}]: {e}")),
            }
        }
        match source {
            Some(source) if problems.is_empty() => Ok(CopyRequest {
                source,
                source_settings,
                targets,
                referrers: self.referrers,
                platforms,
            }),
            _ => Err(JobError::Invalid(problems)),
        }
    }
}
