//! The binary: parse the command line, call the library, print results and the error
//! chain, and exit 0 (ok), 1 (failure) or 2 (usage).

mod cli;
mod progress;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use futures::StreamExt;
use static_registry::bucket::{self, BucketError, BucketUrl};
use static_registry::bundle;
use static_registry::catalog;
use static_registry::config::{self, MirrorConfig};
use static_registry::copy::registry::{RegistryDestination, RegistrySource};
use static_registry::copy::store::StoreSource;
use static_registry::copy::{self, Engine};
use static_registry::fetch::{self, FetchError, FetchOptions, Summary};
use static_registry::import;
use static_registry::mapping;
use static_registry::nginx;
use static_registry::plan;
use static_registry::reference::{self, Reference};
use static_registry::registry::{Client, ClientOptions, RegistryError, Remedy};
use static_registry::report;
use static_registry::select;
use static_registry::serve;
use static_registry::service;
use static_registry::signature::{Policy, TrustedKey};
use static_registry::store::{Removal, Store, StoreView, inventory, verify};
use static_registry::sync;

use cli::{
    Cli, Command, CopyArgs, CopyOptionArgs, DestArgs, ExportArgs, FetchArgs, GenConfArgs,
    ImportArgs, LsArgs, PlanArgs, PruneArgs, PublishArgs, PushArgs, RegistryArgs, RmArgs,
    ServeArgs, SignatureArgs, SyncArgs, VerifyArgs,
};

/// `println!` for the data on stdout, through [`write_out`].
macro_rules! out {
    ($($arg:tt)*) => {
        write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Data to stdout. When its reader has gone (`ls | head`), the command ends quietly with
/// status 1, as other Unix tools end, instead of a panic. (SIGPIPE stays ignored: the
/// HTTP clients write to sockets with `writev`, which would raise it.)
fn write_out(text: std::fmt::Arguments) {
    use std::io::Write as _;
    if let Err(e) = std::io::stdout().lock().write_fmt(text) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(1);
        }
        panic!("cannot write to stdout: {e}");
    }
}

/// Bad input the user can fix on the command line: exit 2 like clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Usage(anyhow::Error);

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The service logs each round (info); one-shot commands only warnings unless -v.
    let (service, json) = match &cli.command {
        Command::Sync(a) if !a.once => (true, a.log_format == cli::LogFormat::Json),
        Command::Serve(a) => (true, a.log_format == cli::LogFormat::Json),
        _ => (false, false),
    };
    init_logging(cli.verbose + u8::from(service), service, json);
    let sides = Sides::of(&cli.command);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report::error_chain(e.as_ref()).join(": "));
            if let Some(hint) = hint(&e, &sides) {
                eprintln!("hint: {hint}");
            }
            if e.downcast_ref::<Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// What the user can do about an error, where the error alone does not say.
fn hint(e: &anyhow::Error, sides: &Sides) -> Option<String> {
    e.chain().find_map(|cause| {
        if let Some(r) = cause
            .downcast_ref::<RegistryError>()
            .and_then(RegistryError::remedy)
            .or_else(|| cause.downcast_ref::<FetchError>().and_then(FetchError::remedy))
            .or_else(|| cause.downcast_ref::<copy::CopyError>().and_then(copy::CopyError::remedy))
        {
            return Some(sides.advise(&r));
        }
        if let Some(refusal) = cause
            .downcast_ref::<BucketError>()
            .and_then(BucketError::refusal)
        {
            let text = match refusal {
                bucket::Refusal::NoBucket => {
                    "create the bucket first, or check its name and --endpoint-url"
                }
                bucket::Refusal::Credentials => {
                    "check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the role's): publish needs s3:ListBucket and s3:PutObject on the bucket, and s3:DeleteObject for --delete"
                }
                bucket::Refusal::Unreachable => {
                    "check --endpoint-url and --region, and that the S3 service answers there"
                }
            };
            return Some(text.to_owned());
        }
        if let Some(b) = cause.downcast_ref::<bundle::BundleError>() {
            let text = match b {
                bundle::BundleError::BaseMissing { .. } => {
                    "import the bundle it was exported --since first (both in one command does: `import base.tar delta.tar`), or ask the sender for a full bundle"
                }
                bundle::BundleError::Truncated { .. } | bundle::BundleError::Blob { .. } => {
                    "copy the bundle again and check it against the sender's checksum; what arrived intact is kept, so the next import reads only the rest"
                }
                bundle::BundleError::StoreIncomplete { .. } => {
                    "`static-registry verify --repair` then a fetch restore what the store lacks"
                }
                _ => return None,
            };
            return Some(text.to_owned());
        }
        let text = match cause.downcast_ref::<nginx::NginxError>()? {
            nginx::NginxError::NotReloaded { .. } => {
                "is nginx running? Start it (systemctl start nginx): it reads the new file"
            }
            nginx::NginxError::Rejected { .. } => {
                "run `nginx -t` to see the whole configuration's problem, fix it (or the templates), and install again"
            }
            nginx::NginxError::Run { .. } => {
                "install nginx (apt-get install nginx), or pass --nginx-bin"
            }
            _ => return None,
        };
        Some(text.to_owned())
    })
}

/// Whose options a hint names: the pulling side's (`--creds`, `--tls-verify`; fetch,
/// ls, plan, copy's source) or the pushing side's (`--dest-creds`, ...; push, copy's
/// targets). For copy, the registry the remedy concerns decides.
enum Sides {
    Pull,
    Push,
    Copy {
        source: Option<String>,
    },
    /// A configuration's sources: (API host, its key under `registries:`).
    Sync {
        sources: Vec<(String, String)>,
    },
}

impl Sides {
    fn of(command: &Command) -> Sides {
        match command {
            Command::Push(_) => Sides::Push,
            Command::Copy(args) => Sides::Copy {
                source: args
                    .reference
                    .parse::<Reference>()
                    .ok()
                    .map(|r| r.api_host().to_owned()),
            },
            _ => Sides::Pull,
        }
    }

    fn advise(&self, remedy: &Remedy) -> String {
        let pushing = match self {
            Sides::Pull => false,
            Sides::Push => true,
            Sides::Copy { source } => source.as_deref() != Some(remedy.registry()),
            Sides::Sync { sources } => {
                let key = sources.iter().find(|(host, _)| host == remedy.registry());
                return config_hint(remedy, key.map(|(_, key)| key.as_str()));
            }
        };
        let (creds, authfile, ca, tls, may) = if pushing {
            (
                "--dest-creds",
                "--dest-authfile",
                "--dest-ca-cert/--dest-cert-dir",
                "--dest-tls-verify=false",
                "push to",
            )
        } else {
            (
                "--creds",
                "--authfile",
                "--ca-cert/--cert-dir",
                "--tls-verify=false",
                "pull",
            )
        };
        match remedy {
            Remedy::Credentials { login, .. } => format!(
                "pass {creds} USER:PASSWORD, or log in with `docker login {login}`/`podman login {login}`"
            ),
            Remedy::CredentialsRefused { login, .. } => format!(
                "check {creds}, or the auth file's entry for it ({authfile}); log in again with `docker login {login}`/`podman login {login}`"
            ),
            Remedy::Permission { login, .. } => format!(
                "check that the credentials ({creds}, `docker login {login}`) may {may} this repository"
            ),
            Remedy::Tls { .. } => {
                format!("for a private CA pass {ca}; for plain http, {tls}")
            }
        }
    }

    /// One line per distinct remedy among `remedies`.
    fn print<'a>(&self, remedies: impl Iterator<Item = &'a Remedy>) {
        let mut seen = std::collections::BTreeSet::new();
        for r in remedies {
            let advice = self.advise(r);
            if seen.insert(advice.clone()) {
                eprintln!("hint: {}: {advice}", r.registry());
            }
        }
    }
}

/// What to do about `remedy` in the configuration file's words: under the source's
/// `registries:` entry (`source_key`, when the remedy concerns the source's registry), or
/// in the target's `to:` entry. `sync --once` prints it; the service logs it.
fn config_hint(remedy: &Remedy, source_key: Option<&str>) -> String {
    let (place, may) = match source_key {
        Some(key) => (format!("under `registries.\"{key}\"`"), "pull"),
        None => ("in its `to:` entry".to_owned(), "push to"),
    };
    match remedy {
        Remedy::Credentials { login, .. } => format!(
            "give `credentials: {{username, password}}` or `credentials-env: PREFIX` {place}, or log in with `docker login {login}`"
        ),
        Remedy::CredentialsRefused { login, .. } => format!(
            "check `credentials`/`credentials-env` {place} (or the auth file's entry); log in again with `docker login {login}`"
        ),
        Remedy::Permission { .. } => {
            format!("check that the credentials {place} may {may} this repository")
        }
        Remedy::Tls { .. } => format!(
            "for a private CA give `cert-dir:` {place}; for plain http, `tls-verify: false`"
        ),
    }
}

fn init_logging(verbose: u8, service: bool, json: bool) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    match (service, json) {
        (_, true) => fmt.json().flatten_event(true).init(),
        // A service's log lines carry their time; a command's do not.
        (true, false) => fmt.init(),
        (false, false) => fmt.without_time().init(),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Fetch(args) => fetch_command(args),
        Command::Plan(args) => plan_command(args),
        Command::Push(args) => push_command(args),
        Command::Copy(args) => copy_command(args),
        Command::Sync(args) => sync_command(args),
        Command::GenConf(args) => gen_conf_command(args),
        Command::Serve(args) => serve_command(args),
        Command::Export(args) => export_command(args),
        Command::Publish(args) => publish_command(args),
        Command::Import(args) => import_command(args),
        Command::Ls(args) => ls_command(args),
        Command::Verify(args) => verify_command(args),
        Command::Rm(args) => rm_command(args),
        Command::Prune(args) => prune_command(args),
    }
}

/// `USER:PASS` from `flag`.
fn credentials(flag: &str, value: Option<&String>) -> Result<Option<(String, String)>> {
    let Some(c) = value else { return Ok(None) };
    let (user, pass) = c
        .split_once(':')
        .ok_or_else(|| Usage(anyhow::anyhow!("{flag} must be USER:PASSWORD (got no ':')")))?;
    Ok(Some((user.to_owned(), pass.to_owned())))
}

fn existing_authfile(flag: &str, file: Option<&PathBuf>) -> Result<Option<PathBuf>> {
    if let Some(file) = file.filter(|f| !f.is_file()) {
        return Err(Usage(anyhow::anyhow!(
            "{flag} {}: no such file (podman and skopeo keep theirs in $XDG_RUNTIME_DIR/containers/auth.json, docker in ~/.docker/config.json)",
            file.display()
        ))
        .into());
    }
    Ok(file.cloned())
}

fn client_options(args: &RegistryArgs) -> Result<ClientOptions> {
    Ok(ClientOptions {
        tls_verify: args.tls_verify,
        ca_certs: args.ca_cert.clone(),
        cert_dir: args.cert_dir.clone(),
        creds: credentials("--creds", args.creds.as_ref())?,
        authfile: existing_authfile("--authfile", args.authfile.as_ref())?,
        retries: args.retries,
        stall_timeout: std::time::Duration::from_secs(args.stall_timeout),
        max_manifest_bytes: args.max_manifest_size,
        ..ClientOptions::default()
    })
}

/// The client options for the targets of a push, copy or sync.
fn dest_options(args: &DestArgs) -> Result<ClientOptions> {
    Ok(ClientOptions {
        tls_verify: args.dest_tls_verify,
        ca_certs: args.dest_ca_cert.clone(),
        cert_dir: args.dest_cert_dir.clone(),
        creds: credentials("--dest-creds", args.dest_creds.as_ref())?,
        authfile: existing_authfile("--dest-authfile", args.dest_authfile.as_ref())?,
        retries: args.dest_retries,
        ..ClientOptions::default()
    })
}

/// The client for the targets of a push or copy.
fn dest_client(args: &DestArgs) -> Result<Client> {
    Client::new(dest_options(args)?).context("setting up the HTTP client for the targets")
}

fn sync_command(args: SyncArgs) -> Result<ExitCode> {
    let opts = service::Options {
        config: args.config.clone(),
        root: args.root.clone(),
        default_schedule: args.interval.clone(),
        source_base: client_options(&args.registry)?,
        dest_base: dest_options(&args.dest)?,
        fetch: FetchOptions {
            jobs: args.jobs.into(),
            include_foreign: args.include_foreign,
            jobs_per_host: args.jobs_per_host.into(),
            fail_fast: false,
        },
        rounds: args.rounds.into(),
        state: args
            .state
            .clone()
            .unwrap_or_else(|| args.config.with_extension("sources.json")),
        hint: config_hint,
    };
    if args.once {
        return sync_once(&args, opts);
    }
    let token = match &args.token_file {
        Some(file) => Some(read_token(file)?),
        None => None,
    };
    if let Some(addr) = args
        .listen
        .filter(|a| !a.ip().is_loopback() && token.is_none())
    {
        return Err(Usage(anyhow::anyhow!(
            "--listen {addr}: the API would take unauthenticated requests from the network; give --token-file, or listen on 127.0.0.1"
        ))
        .into());
    }
    let runtime = runtime()?;
    runtime.block_on(async {
        let service = service::Service::new(opts).map_err(|e| match e {
            service::ServiceError::Config(_) | service::ServiceError::NoSchedule { .. } => {
                anyhow::Error::from(Usage(e.into()))
            }
            e => e.into(),
        })?;
        let api = match args.listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening on {addr}"))?;
                tracing::info!(address = %listener.local_addr()?, "control API listening");
                Some((listener, token))
            }
            None => None,
        };
        service::daemon::run(service, api).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The API token in `file`: its first line, which must not be empty.
fn read_token(file: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the token file {}", file.display()))?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(Usage(anyhow::anyhow!(
            "--token-file {}: empty; put a long random token on its first line (e.g. openssl rand -hex 32)",
            file.display()
        ))
        .into());
    }
    Ok(token.to_owned())
}

/// `sync --once`: a round of every source, at most `--rounds` at once, then the
/// on-change command if the store changed.
fn sync_once(args: &SyncArgs, opts: service::Options) -> Result<ExitCode> {
    let config = load_config(&args.config)?;
    let ctx = opts.context(&config)?;
    let reporter: Arc<dyn report::Reporter> = Arc::from(progress::reporter(args.quiet));
    let sources = config.sources();
    let rounds = runtime()?.block_on(async {
        let all = futures::stream::iter(&sources)
            .map(|s| sync::run_source(&ctx, s, reporter.clone()))
            .buffer_unordered(opts.rounds)
            .collect::<Vec<_>>();
        tokio::select! {
            r = all => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let Some(mut rounds) = rounds else {
        eprintln!("interrupted: nothing half-published; the next round goes on from here");
        return Ok(ExitCode::from(130));
    };
    rounds.sort_by(|a, b| a.source.cmp(&b.source));
    let store_changed = rounds.iter().any(|r| r.store_changed);
    if args.json {
        let out = serde_json::json!({"rounds": rounds, "store_changed": store_changed});
        out!("{}", serde_json::to_string_pretty(&out)?);
    }
    let mut failed = false;
    for round in &rounds {
        if !args.quiet {
            print_targets(&round.targets);
        }
        for r in &round.unresolved {
            eprintln!("error: {}: {}", r.source, r.error.join(": "));
        }
        print_failures(&round.images);
        failed |= round.failed() > 0;
    }
    let sides = Sides::Sync {
        sources: config
            .registries
            .keys()
            .filter_map(|k| {
                let r: Reference = format!("{k}/x").parse().ok()?;
                Some((r.api_host().to_owned(), k.clone()))
            })
            .collect(),
    };
    sides.print(rounds.iter().flat_map(|r| {
        r.images
            .iter()
            .filter_map(|i| i.remedy.as_ref())
            .chain(r.unresolved.iter().filter_map(|i| i.remedy.as_ref()))
    }));
    if let Some(on_change) = config.on_change.as_ref().filter(|_| store_changed) {
        match sync::run_hook(on_change, &args.root) {
            Ok(()) => eprintln!("on-change: done"),
            Err(e) => {
                eprintln!("error: {}", report::error_chain(&e).join(": "));
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Re-render the catalog pages a run made stale. A failure is reported, not fatal: the
/// registry API does not depend on the pages.
fn refresh_pages(root: &std::path::Path) {
    if let Err(e) = catalog::refresh(root) {
        eprintln!("warning: {}", report::error_chain(&e).join(": "));
    }
}

/// The store under `root`, for writing.
fn open_store(root: &std::path::Path) -> Result<Store> {
    Store::open(root).with_context(|| format!("opening the store at {}", root.display()))
}

fn load_config(path: &std::path::Path) -> Result<MirrorConfig> {
    Ok(config::load(path).map_err(|e| Usage(e.into()))?)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The signature policy the options ask for, its keys read; `None` without keys. A key
/// that cannot be used is a usage error.
fn policy(args: &SignatureArgs) -> Result<Option<Arc<Policy>>> {
    if args.verify_key.is_empty() {
        return Ok(None);
    }
    let keys = args
        .verify_key
        .iter()
        .map(|path| TrustedKey::load(path).map(Arc::new))
        .collect::<Result<_, _>>()
        .map_err(|e| Usage(anyhow::Error::from(e).context("--verify-key")))?;
    Ok(Some(Arc::new(Policy {
        keys,
        require: args.verify_require,
    })))
}

fn fetch_command(args: FetchArgs) -> Result<ExitCode> {
    let policy = policy(&args.signatures)?;
    let opts = FetchOptions {
        jobs: args.jobs.into(),
        include_foreign: args.include_foreign,
        jobs_per_host: args.jobs_per_host.into(),
        fail_fast: args.fail_fast,
    };
    let base = client_options(&args.registry)?;
    let reporter: Arc<dyn report::Reporter> = Arc::from(progress::reporter(args.quiet));
    let runtime = runtime()?;
    let mut selection = None;
    let (clients, planned, unresolved) = match &args.config {
        Some(path) => {
            let mut config = load_config(path)?;
            if let Some(policy) = &policy {
                for spec in config.images.iter_mut().filter(|s| s.verify.is_none()) {
                    spec.verify = Some(policy.clone());
                }
            }
            let sync_only = config.sync_only();
            if !sync_only.is_empty() {
                return Err(Usage(anyhow::anyhow!(
                    "{}: {} {} for `static-registry sync --config {0} --once`; fetch writes the store only, from the listed images",
                    path.display(),
                    sync_only.join(" and "),
                    if sync_only.len() == 1 { "is" } else { "are" }
                ))
                .into());
            }
            let clients = sync::clients(&config, &base)?;
            let (planned, unresolved) =
                runtime.block_on(fetch::resolve(&clients, &config.images, reporter.as_ref()));
            if args.delete {
                selection = Some(fetch::Selection::of(&config.images, &planned, &unresolved));
            }
            (clients, planned, unresolved)
        }
        None => {
            // `--tls-verify false` (a space) would make "false" an image reference.
            if let Some(v) = args
                .references
                .iter()
                .find(|r| matches!(r.as_str(), "true" | "false"))
            {
                return Err(Usage(anyhow::anyhow!(
                    "{v:?} is not an image reference: --tls-verify takes its value after '=' (--tls-verify={v})"
                ))
                .into());
            }
            let refs = args
                .references
                .iter()
                .map(|s| s.parse::<Reference>().map_err(|e| Usage(e.into())))
                .collect::<Result<Vec<_>, _>>()?;
            let request = plan::FetchRequest {
                keep_host: args.keep_host,
                platforms: args.platform.clone(),
                referrers: args.referrers,
                policy,
            };
            let planned = plan::fetch(&refs, &request).map_err(|e| Usage(e.into()))?;
            let client = Client::new(base).context("setting up the HTTP client")?;
            (fetch::Clients::new(client), planned, Vec::new())
        }
    };
    let store = Arc::new(open_store(&args.root)?);
    let deadline = async {
        match args.timeout {
            0 => std::future::pending().await,
            secs => tokio::time::sleep(std::time::Duration::from_secs(secs)).await,
        }
    };
    let summary = runtime.block_on(async {
        tokio::select! {
            s = fetch::execute(clients, store.clone(), planned, opts, reporter) => Ok(s),
            _ = tokio::signal::ctrl_c() => Err("interrupted"),
            () = deadline => Err("timed out (--timeout)"),
        }
    });
    let mut summary = match summary {
        Ok(s) => s,
        Err(why) => {
            eprintln!(
                "{why}: images not finished were not published; partial downloads resume on the next fetch"
            );
            return Ok(ExitCode::from(if why == "interrupted" { 130 } else { 1 }));
        }
    };
    summary.add_failed(unresolved);
    if let Some(selection) = &selection {
        summary.removed = fetch::remove_unselected(&store, selection)
            .context("removing the tags the configuration no longer selects")?;
        for r in &summary.removed {
            for tag in &r.tags {
                eprintln!("removed {}:{tag} (no longer selected)", r.name);
            }
        }
    }
    refresh_pages(&args.root);
    if args.json {
        out!("{}", serde_json::to_string_pretty(&summary)?);
    }
    if !args.quiet {
        print_summary(&summary);
    }
    for failed in summary.images.iter().filter(|i| !i.error.is_empty()) {
        eprintln!("error: {}: {}", failed.source, failed.error.join(": "));
    }
    Sides::Pull.print(summary.images.iter().filter_map(|i| i.remedy.as_ref()));
    Ok(if summary.images_failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn push_command(args: PushArgs) -> Result<ExitCode> {
    let view = StoreView::open(&args.root)
        .with_context(|| format!("opening the store at {}", args.root.display()))?;
    let policy = policy(&args.signatures)?;
    let plan = plan::push(
        &view,
        &args.images,
        &args.to,
        args.copy.overwrite,
        policy.as_ref(),
    )
    .map_err(|e| Usage(e.into()))?;
    let client = dest_client(&args.dest)?;
    let dests = destinations(&client, &args.to);
    let source = StoreSource::new(view, plan.indexes);
    // Untagged entries (referrers among them) are jobs of the plan's second wave.
    let reporter: Arc<dyn report::Reporter> = Arc::from(progress::reporter(args.copy.quiet));
    run_copy(source, dests, plan.waves, &args.copy, reporter, Sides::Push)
}

fn copy_command(args: CopyArgs) -> Result<ExitCode> {
    let reference: Reference = args
        .reference
        .parse()
        .map_err(|e| Usage(anyhow::Error::from(e)))?;
    let job = plan::copy(
        &reference,
        &args.to,
        args.referrers,
        &args.platform,
        args.copy.overwrite,
        policy(&args.signatures)?,
    )
    .map_err(|e| Usage(e.into()))?;
    let source_client =
        Client::new(client_options(&args.registry)?).context("setting up the HTTP client")?;
    let reporter: Arc<dyn report::Reporter> = Arc::from(progress::reporter(args.copy.quiet));
    let source = RegistrySource::new(
        source_client,
        &reference.registry,
        reference.api_host(),
        reporter.clone(),
    );
    let dests = destinations(&dest_client(&args.dest)?, &args.to);
    let sides = Sides::Copy {
        source: Some(reference.api_host().to_owned()),
    };
    run_copy(source, dests, vec![vec![job]], &args.copy, reporter, sides)
}

fn destinations(client: &Client, targets: &[plan::Target]) -> Vec<RegistryDestination> {
    targets
        .iter()
        .map(|t| RegistryDestination::new(client.clone(), &t.host))
        .collect()
}

/// One line per target of a push, copy or sync round.
fn print_targets(targets: &[copy::DestinationSummary]) {
    for t in targets {
        eprintln!(
            "{}: {} copied, {} unchanged, {} skipped, {} failed; blobs: {} sent ({}), {} mounted, {} present",
            t.target,
            t.copied,
            t.unchanged,
            t.skipped,
            t.failed,
            t.blobs_uploaded,
            human_bytes(t.bytes_sent),
            t.blobs_mounted,
            t.blobs_present
        );
    }
}

/// Each image that failed at a target, with its error chain.
fn print_failures(images: &[report::TargetReport]) {
    for r in images.iter().filter(|r| !r.error.is_empty()) {
        eprintln!(
            "error: {} -> {}: {}",
            r.source,
            r.target,
            r.error.join(": ")
        );
    }
}

/// Run the engine; print the summary and each failure; exit 1 when any image failed at
/// any target.
fn run_copy<S: copy::Source, D: copy::Destination>(
    source: S,
    dests: Vec<D>,
    waves: Vec<Vec<copy::ImageJob>>,
    args: &CopyOptionArgs,
    reporter: Arc<dyn report::Reporter>,
    sides: Sides,
) -> Result<ExitCode> {
    let opts = copy::Options {
        jobs: args.jobs.into(),
        include_foreign: args.include_foreign,
        ..copy::Options::default()
    };
    let engine = Engine::new(vec![source], dests, opts, reporter.clone());
    let finished = |job: &copy::JobReport| {
        for (_, r) in job.all() {
            reporter.copied(r);
        }
    };
    let summary = runtime()?.block_on(async {
        tokio::select! {
            s = engine.run(waves, &finished) => Some(s),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let Some(summary) = summary else {
        eprintln!(
            "interrupted: tags not yet set at a target were not set; blobs already sent stay"
        );
        return Ok(ExitCode::from(130));
    };
    if args.json {
        out!("{}", serde_json::to_string_pretty(&summary)?);
    }
    if !args.quiet {
        print_targets(&summary.targets);
    }
    print_failures(&summary.images);
    sides.print(summary.images.iter().filter_map(|r| r.remedy.as_ref()));
    Ok(if summary.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn plan_command(args: PlanArgs) -> Result<ExitCode> {
    let config = load_config(&args.config)?;
    let clients = sync::clients(&config, &client_options(&args.registry)?)?;
    let reporter = progress::reporter(false);
    let rows = runtime()?.block_on(async {
        let (planned, unresolved) =
            fetch::resolve(&clients, &config.images, reporter.as_ref()).await;
        for failed in &unresolved {
            eprintln!("error: {}: {}", failed.source, failed.error.join(": "));
        }
        let rows = fetch::survey(&clients, &planned, args.root.as_deref()).await;
        (rows, unresolved.is_empty())
    });
    let (rows, all_resolved) = rows;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let table: Vec<[String; 5]> = rows
            .iter()
            .map(|r| {
                [
                    r.source.clone(),
                    r.name.clone(),
                    r.digest.clone().unwrap_or_else(|| "-".into()),
                    human_bytes(r.size),
                    human_bytes(r.to_download),
                ]
            })
            .collect();
        print_table(
            ["SOURCE", "STORED AS", "DIGEST", "SIZE", "TO DOWNLOAD"],
            &table,
        );
        let total: u64 = rows.iter().map(|r| r.to_download).sum();
        let unknown = rows.iter().filter(|r| !r.error.is_empty()).count();
        if unknown == 0 && all_resolved {
            eprintln!("{} images, {} to download", rows.len(), human_bytes(total));
        } else {
            eprintln!(
                "{} images, {} to download for the {} that could be read; incomplete: the registry could not be read for {} (errors below), so this total says nothing about them",
                rows.len(),
                human_bytes(total),
                rows.len() - unknown,
                if all_resolved {
                    format!("{unknown} images")
                } else {
                    format!("{unknown} images and some repositories' tag lists")
                }
            );
        }
    }
    for r in rows.iter().filter(|r| !r.error.is_empty()) {
        eprintln!("error: {}: {}", r.source, r.error.join(": "));
    }
    Sides::Pull.print(rows.iter().filter_map(|r| r.remedy.as_ref()));
    let ok = all_resolved && rows.iter().all(|r| r.error.is_empty());
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Left-aligned columns, the last right-aligned (sizes).
fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let header = header.map(String::from);
    let mut widths = [0; N];
    for row in std::iter::once(&header).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i + 1 == N {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out!("{}", cells.join("  "));
    }
}

fn publish_command(args: PublishArgs) -> Result<ExitCode> {
    let url: BucketUrl = args.url.parse().map_err(|e: BucketError| Usage(e.into()))?;
    let view = StoreView::open(&args.root)?;
    let started = std::time::Instant::now();
    let objects = bucket::layout(&view, &url)?;
    let client = bucket::open(
        &url,
        &bucket::Connection {
            endpoint: args.endpoint_url,
            region: args.region,
            virtual_hosted: args.virtual_hosted,
        },
    )?;
    let opts = bucket::PublishOptions {
        jobs: args.jobs.into(),
        delete: args.delete,
    };
    let reporter = progress::reporter(args.quiet);
    let published = runtime()?.block_on(bucket::publish(
        client,
        &url,
        objects,
        opts,
        reporter.as_ref(),
    ))?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&published)?);
    }
    eprintln!(
        "published {} to {}: {} objects uploaded ({}), {} already there{}; {:.2}s",
        args.root.display(),
        published.url,
        published.uploaded,
        human_bytes(published.uploaded_bytes),
        published.skipped,
        match (published.deleted, published.stale) {
            (0, 0) => String::new(),
            (0, n) => format!(", {n} no longer served left (--delete removes them)"),
            (n, _) => format!(", {n} deleted"),
        },
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn export_command(args: ExportArgs) -> Result<ExitCode> {
    let view = StoreView::open(&args.root)?;
    let base = args.since.as_deref().map(bundle::read_base).transpose()?;
    let contents = bundle::contents(&view, &args.images)?;
    let Some(out) = args.output.filter(|_| !args.dry_run) else {
        let (carried, _) = contents.divide(base.as_ref());
        let plan = serde_json::json!({
            "images": contents.images.iter().map(bundle::Image::label).collect::<Vec<_>>(),
            "blobs": contents.blobs.len(),
            "bytes": contents.blobs.iter().map(|(_, s)| s).sum::<u64>(),
            "carried": carried.len(),
            "carried_bytes": carried.values().sum::<u64>(),
        });
        if args.json {
            out!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            for image in &contents.images {
                out!("{}", image.label());
            }
        }
        eprintln!(
            "would bundle {} images: {} of their {} blobs, {}",
            contents.images.len(),
            plan["carried"],
            plan["blobs"],
            human_bytes(plan["carried_bytes"].as_u64().unwrap_or(0))
        );
        return Ok(ExitCode::SUCCESS);
    };
    let started = std::time::Instant::now();
    let reporter = progress::reporter(args.quiet);
    let exported = bundle::write(
        &args.root,
        &contents,
        base.as_ref(),
        &out,
        args.split,
        reporter.as_ref(),
    )?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&exported)?);
    }
    eprintln!(
        "wrote {}{}: {} images, {} blobs ({}){}; {:.2}s",
        out.display(),
        match exported.files.len() {
            1 => String::new(),
            n => format!(" in {n} parts (.001 to .{n:03})"),
        },
        exported.images,
        exported.carried,
        human_bytes(exported.carried_bytes),
        match &exported.base {
            Some(b) => format!(", {} more from base {b}", exported.needed),
            None => String::new(),
        },
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn import_command(args: ImportArgs) -> Result<ExitCode> {
    let store = Arc::new(open_store(&args.root)?);
    let reporter: Arc<dyn report::Reporter> = Arc::from(progress::reporter(args.quiet));
    let opts = copy::Options {
        jobs: args.jobs.max(1),
        ..copy::Options::default()
    };
    let Some(tree) = args.from_dir_tree else {
        let result = runtime()?.block_on(import::bundles(store, &args.bundles, opts, reporter));
        // Also after a failure: bundles before it may have published.
        refresh_pages(&args.root);
        let summary = result?;
        if args.json {
            out!("{}", serde_json::to_string_pretty(&summary)?);
        }
        let images: Vec<_> = summary
            .bundles
            .iter()
            .flat_map(|b| &b.images)
            .cloned()
            .collect();
        print_failures(&images);
        let failed = images
            .iter()
            .filter(|r| r.status == report::CopyStatus::Failed)
            .count();
        for b in &summary.bundles {
            eprintln!(
                "{}: {} images; {} blobs received ({}), {} already in the store",
                b.files[0].display(),
                b.images.len(),
                b.blobs.written,
                human_bytes(b.blobs.written_bytes),
                b.blobs.present
            );
        }
        eprintln!("{failed} failed; {:.2}s", summary.seconds);
        return Ok(if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    };
    if !tree.is_dir() {
        return Err(Usage(anyhow::anyhow!(
            "--from-dir-tree {}: no such directory",
            tree.display()
        ))
        .into());
    }
    let summary = runtime()?.block_on(import::dir_tree(store, &tree, opts, reporter))?;
    refresh_pages(&args.root);
    if args.json {
        out!("{}", serde_json::to_string_pretty(&summary)?);
    }
    for s in &summary.skipped {
        eprintln!("skipped {s}");
    }
    print_failures(&summary.images);
    let failed = summary.count(report::CopyStatus::Failed);
    eprintln!(
        "{} images: {} imported, {} unchanged, {} failed; {} directories skipped; {:.2}s",
        summary.images.len(),
        summary.count(report::CopyStatus::Copied),
        summary.count(report::CopyStatus::Unchanged),
        failed,
        summary.skipped.len(),
        summary.seconds
    );
    Ok(if failed == 0 && summary.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn serve_command(args: ServeArgs) -> Result<ExitCode> {
    let opts = serve::ServeOptions {
        root: args.root,
        listen: args.listen,
        name_prefix: args.name_prefix,
        tls: args.tls_cert.zip(args.tls_key),
        htpasswd: args.htpasswd,
        access: args.access,
    };
    runtime()?.block_on(serve::serve(opts, stop_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or SIGINT (Ctrl-C).
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn gen_conf_command(args: GenConfArgs) -> Result<ExitCode> {
    let part = if args.locations_only {
        nginx::Part::Locations
    } else if args.maps_only {
        nginx::Part::Maps
    } else {
        nginx::Part::Server
    };
    let mode = args
        .upstream_mode
        .as_deref()
        .map(|m| {
            m.parse::<mapping::Mode>()
                .map_err(|e| Usage(anyhow::anyhow!(e)))
        })
        .transpose()?;
    let mappings = match &args.mappings {
        Some(path) => mapping::load(path, mode)?,
        None => mapping::Mappings::default(),
    };
    let opts = nginx::GenConfOptions {
        root: args.root,
        server_root: args.server_root,
        name_prefix: args.name_prefix,
        listen: args
            .listen
            .unwrap_or_else(|| if args.tls_cert.is_some() { "443" } else { "80" }.to_owned()),
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert, key)| nginx::Tls {
                cert,
                key,
                redirect_from: args.tls_redirect_from,
            }),
        server_name: args.server_name,
        part,
        templates: args.templates,
        host: nginx::host::HostNginx {
            bin: args.nginx_bin,
            conf: Some(args.nginx_conf),
        },
        install: args.install,
        mappings,
        htpasswd: args.htpasswd,
        access: args.access,
        s3_front: args.s3_origin.map(|origin| nginx::s3::S3Front {
            origin,
            cache: !args.no_proxy_cache,
        }),
        proxy_cache: nginx::ProxyCache {
            dir: args.proxy_cache,
            max_size: args.proxy_cache_size,
            tag_validity: args.proxy_tag_validity,
            upstream_ca: args.upstream_ca,
            resolvers: args.resolver,
        },
    };
    let rendered = nginx::gen_conf(&opts).map_err(|e| match e {
        nginx::NginxError::InvalidOption { .. } => anyhow::Error::new(Usage(e.into())),
        e => anyhow::Error::new(e),
    })?;
    for skipped in &rendered.skipped {
        eprintln!("warning: not served: {skipped}");
    }
    for warning in &rendered.warnings {
        eprintln!("warning: {warning}");
    }
    let Some(path) = &opts.install else {
        write_out(format_args!("{}", rendered.config));
        return Ok(ExitCode::SUCCESS);
    };
    let installed = nginx::host::install(&opts.host, path, &rendered.config)
        .with_context(|| format!("installing into {}", path.display()))?;
    eprintln!(
        "{} {}; nginx -t passed; nginx reloaded",
        if installed.replaced {
            "replaced"
        } else {
            "installed"
        },
        installed.path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Tags of a remote repository, filtered like a config's selectors.
fn ls_remote(args: &LsArgs, repository: &str) -> Result<ExitCode> {
    let r: Reference = repository
        .parse()
        .map_err(|e| Usage(anyhow::Error::from(e)))?;
    if r.digest.is_some()
        || repository
            .rsplit('/')
            .next()
            .is_some_and(|l| l.contains(':'))
    {
        return Err(Usage(anyhow::anyhow!(
            "ls takes a repository without tag or digest, e.g. {}/{}",
            r.registry,
            r.repository
        ))
        .into());
    }
    let usage = |e: select::SelectError| Usage(e.into());
    let regexes = |list: &[String]| {
        list.iter()
            .map(|r| select::compile_regex(r, true))
            .collect::<Result<Vec<_>, _>>()
            .map_err(usage)
    };
    let selector = select::TagSelector {
        tags: None,
        allow: regexes(&args.allow)?,
        deny: regexes(&args.deny)?,
        semver: args
            .semver
            .as_deref()
            .map(select::parse_semver_range)
            .transpose()
            .map_err(usage)?,
        latest: args.latest,
    };
    let client =
        Client::new(client_options(&args.registry)?).context("setting up the HTTP client")?;
    let listed = runtime()?
        .block_on(client.list_tags(r.api_host(), &r.repository))
        .with_context(|| format!("listing the tags of {}/{}", r.registry, r.repository))?;
    let source = r.origin();
    let valid = static_registry::copy::registry::valid_tags(
        listed,
        &source,
        progress::reporter(false).as_ref(),
    );
    let tags = selector.select(&valid);
    if args.json {
        out!("{}", serde_json::to_string_pretty(&tags)?);
    } else {
        for tag in &tags {
            out!("{tag}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ls_command(args: LsArgs) -> Result<ExitCode> {
    if let Some(repository) = &args.repository {
        return ls_remote(&args, repository);
    }
    if !inventory::is_store(&args.root) {
        anyhow::bail!(
            "{} is not a static-registry store; fetch into it first",
            args.root.display()
        );
    }
    let (repos, skipped) = inventory::list(&args.root)
        .with_context(|| format!("reading the store at {}", args.root.display()))?;
    for s in &skipped {
        eprintln!("warning: {s}");
    }
    if args.json {
        out!("{}", serde_json::to_string_pretty(&repos)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 5]> = repos
        .iter()
        .flat_map(|r| {
            r.tags.iter().map(|t| {
                [
                    r.name.clone(),
                    t.tag.clone(),
                    t.digest.to_string(),
                    human_bytes(t.size),
                    t.platforms.clone().unwrap_or_else(|| "all".into()),
                ]
            })
        })
        .collect();
    print_table(["REPOSITORY", "TAG", "DIGEST", "SIZE", "PLATFORMS"], &rows);
    Ok(ExitCode::SUCCESS)
}

fn verify_command(args: VerifyArgs) -> Result<ExitCode> {
    if !inventory::is_store(&args.root) {
        anyhow::bail!("{} is not a static-registry store", args.root.display());
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if args.repair {
        let store = open_store(&args.root)?;
        let repaired = verify::repair(&store, threads)
            .with_context(|| format!("repairing the store at {}", args.root.display()))?;
        for path in &repaired.removed {
            eprintln!("repair: removed corrupt {}", path.display());
        }
        for path in &repaired.relinked {
            eprintln!("repair: linked {}", path.display());
        }
        eprintln!(
            "repaired: {} files and directories made readable by the web server, {} corrupt files removed, {} relinked",
            repaired.modes_fixed.len(),
            repaired.removed.len(),
            repaired.relinked.len()
        );
        if !repaired.fetch_again.is_empty() {
            eprintln!(
                "fetch again (the same fetch downloads just what is missing): {}",
                repaired.fetch_again.join(" ")
            );
        }
    }
    let policy = policy(&args.signatures)?;
    let mut report = verify::verify(&args.root, threads)
        .with_context(|| format!("verifying the store at {}", args.root.display()))?;
    let signatures = match &policy {
        Some(policy) => {
            let view = StoreView::open(&args.root)?;
            let checks = runtime()?
                .block_on(copy::signed::check_store(view, policy))
                .context("checking the stored signatures")?;
            for c in &checks {
                if let Some(why) = &c.refused {
                    report.problems.push(format!("{}: {why}", c.image));
                }
            }
            Some(checks)
        }
        None => None,
    };
    if args.json {
        let mut json = serde_json::to_value(&report)?;
        if let Some(checks) = &signatures {
            json["signatures"] = serde_json::to_value(checks)?;
        }
        out!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        for note in &report.notes {
            eprintln!("note: {note}");
        }
        for problem in &report.problems {
            eprintln!("PROBLEM: {problem}");
        }
        eprintln!(
            "{}: {} blobs ({}) hashed, {} repositories checked, {} problems",
            if report.is_clean() {
                "clean"
            } else {
                "NOT CLEAN"
            },
            report.blobs_checked,
            human_bytes(report.bytes_checked),
            report.repositories,
            report.problems.len()
        );
        if let Some(checks) = &signatures {
            let signed = checks.iter().filter(|c| c.refused.is_none()).count();
            eprintln!(
                "signatures: {signed} of {} tagged images signed as the policy asks",
                checks.len()
            );
        }
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `NAME`, `NAME:TAG` or `NAME@DIGEST`, grouped by repository in the order given.
fn rm_targets(targets: &[String]) -> Result<Vec<(String, Vec<Removal>)>> {
    let mut grouped: Vec<(String, Vec<Removal>)> = Vec::new();
    for target in targets {
        let usage = |e: anyhow::Error| Usage(e.context(format!("rm {target:?}")));
        let (name, removal) = if let Some((name, digest)) = target.split_once('@') {
            let digest = digest.parse().map_err(|e| usage(anyhow::Error::new(e)))?;
            (name, Removal::Manifest(digest))
        } else if let Some((name, tag)) = target
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
        {
            reference::validate_tag(tag).map_err(|e| usage(e.into()))?;
            (name, Removal::Tag(tag.to_owned()))
        } else {
            (target.as_str(), Removal::Repository)
        };
        reference::validate_repository(name).map_err(|e| usage(e.into()))?;
        match grouped.iter_mut().find(|(n, _)| n == name) {
            Some((_, list)) => list.push(removal),
            None => grouped.push((name.to_owned(), vec![removal])),
        }
    }
    Ok(grouped)
}

fn rm_command(args: RmArgs) -> Result<ExitCode> {
    if !inventory::is_store(&args.root) {
        anyhow::bail!("{} is not a static-registry store", args.root.display());
    }
    let targets = rm_targets(&args.targets)?;
    let store = open_store(&args.root)?;
    let mut all = Vec::new();
    for (name, what) in targets {
        let removed = store
            .remove(&name, &what)
            .with_context(|| format!("removing from {name}"))
            // Also when it fails: an earlier, killed rm may have left pages behind.
            .inspect_err(|_| refresh_pages(&args.root))?;
        if removed.repository {
            eprintln!("removed repository {name} ({} tags)", removed.tags.len());
        } else {
            for tag in &removed.tags {
                eprintln!("removed {name}:{tag}");
            }
            for digest in &removed.untagged {
                eprintln!("removed {name}@{digest} (untagged)");
            }
        }
        all.push(removed);
    }
    refresh_pages(&args.root);
    if args.json {
        out!("{}", serde_json::to_string_pretty(&all)?);
    }
    eprintln!(
        "next: `static-registry prune --root {0}` frees the blobs nothing reaches; re-run gen-conf (--install) so nginx stops routing to them",
        args.root.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn prune_command(args: PruneArgs) -> Result<ExitCode> {
    if !inventory::is_store(&args.root) {
        anyhow::bail!("{} is not a static-registry store", args.root.display());
    }
    let report = static_registry::store::prune::prune(&args.root, args.dry_run)
        .with_context(|| format!("pruning the store at {}", args.root.display()))?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let verb = if report.dry_run {
            "would remove"
        } else {
            "removed"
        };
        for path in &report.removed {
            eprintln!("{verb} {}", path.display());
        }
        eprintln!(
            "{verb} {} files, {} of blobs and temporary files",
            report.removed.len(),
            human_bytes(report.bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn human_bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        n if n < 1e3 => format!("{n} B"),
        n if n < 1e6 => format!("{:.1} kB", n / 1e3),
        n if n < 1e9 => format!("{:.1} MB", n / 1e6),
        n => format!("{:.2} GB", n / 1e9),
    }
}

fn print_summary(s: &Summary) {
    eprintln!(
        "{} images: {} fetched, {} unchanged, {} failed; blobs: {} fetched, {} reused; {} manifests; {:.1} MB in {:.2}s",
        s.images.len(),
        s.images_fetched,
        s.images_unchanged,
        s.images_failed,
        s.blobs_fetched,
        s.blobs_reused,
        s.manifests_fetched,
        s.bytes_fetched as f64 / 1e6,
        s.seconds
    );
}
