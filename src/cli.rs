//! Command-line types (clap derive) only; `main.rs` acts on them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use static_registry::copy::Overwrite;
use static_registry::plan::Target;
use static_registry::schedule::Schedule;
use static_registry::select::PlatformSpec;
use static_registry::signature::Require;

#[derive(Debug, Parser)]
#[command(
    name = "static-registry",
    version,
    about = "Mirror container images into a content-addressed tree that stock nginx serves as a read-only registry"
)]
pub struct Cli {
    /// More logging on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Usage lines are fixed: clap's own list the options an erroneous command line used,
/// which reads as if `--root <DIR>` were required.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch images (every platform, config and layer) into the store under --root.
    #[command(
        override_usage = "static-registry fetch [OPTIONS] <REFERENCE>...\n       static-registry fetch [OPTIONS] --config <FILE>"
    )]
    Fetch(FetchArgs),
    /// Show what `fetch --config` would fetch, with sizes; nothing is written.
    #[command(override_usage = "static-registry plan [OPTIONS] --config <FILE>")]
    Plan(PlanArgs),
    /// Push stored images (all, or those named) to one or more registries, each as
    /// <prefix>/<stored name> with its own tags and digests.
    #[command(
        override_usage = "static-registry push [OPTIONS] --to <HOST[:PORT][/PREFIX]>... [NAME[:TAG|@DIGEST]]..."
    )]
    Push(PushArgs),
    /// Copy one image from a registry to one or more registries, without a store: each
    /// blob is read from the source once.
    #[command(
        override_usage = "static-registry copy [OPTIONS] --to <HOST[:PORT]/REPOSITORY[:TAG]>... <REFERENCE>"
    )]
    Copy(CopyArgs),
    /// One round of a mirror configuration into every place its `to:` names (the store,
    /// registries), then its `on-change` command if the store changed.
    #[command(override_usage = "static-registry sync [OPTIONS] --config <FILE> --once")]
    Sync(SyncArgs),
    /// Print nginx configuration that serves the store as a read-only registry.
    #[command(override_usage = "static-registry gen-conf [OPTIONS]")]
    GenConf(GenConfArgs),
    /// Serve the store as a read-only registry, without nginx (HTTP, or HTTPS with
    /// HTTP/2); picks up every new publish without a restart.
    #[command(override_usage = "static-registry serve [OPTIONS]")]
    Serve(ServeArgs),
    /// Write images of the store into a bundle (a tar that is an OCI image layout) to
    /// carry across an air gap; with --since, only what a base lacks.
    #[command(
        override_usage = "static-registry export [OPTIONS] -o <BUNDLE> [NAME[:TAG|@DIGEST]]..."
    )]
    Export(ExportArgs),
    /// Publish the store to an S3 bucket at the pull API's own paths, for a front with
    /// no disk (gen-conf --s3-origin) or a CDN; uploads only what the bucket lacks.
    #[command(override_usage = "static-registry publish [OPTIONS] s3://<BUCKET>[/<PREFIX>]")]
    Publish(PublishArgs),
    /// Import images into the store: bundles `export` wrote, or a tree of skopeo `dir:`
    /// images (`<name>/<tag>/`, as the old static-registry scripts kept them).
    #[command(
        override_usage = "static-registry import [OPTIONS] <BUNDLE>...\n       static-registry import [OPTIONS] --from-dir-tree <DIR>"
    )]
    Import(ImportArgs),
    /// List the repositories, tags, digests and sizes in a store.
    #[command(override_usage = "static-registry ls [OPTIONS] [REPOSITORY]")]
    Ls(LsArgs),
    /// Check a store: every blob hashes to its name, every tag reaches only stored blobs.
    #[command(override_usage = "static-registry verify [OPTIONS]")]
    Verify(VerifyArgs),
    /// Remove tags, manifests or whole repositories from the store (then prune frees
    /// the blobs nothing reaches).
    #[command(override_usage = "static-registry rm [OPTIONS] <NAME[:TAG|@DIGEST]>...")]
    Rm(RmArgs),
    /// Remove blobs no tag reaches any more and stale temporary files.
    #[command(override_usage = "static-registry prune [OPTIONS]")]
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// What to push: NAME (every tag and untagged manifest of it), NAME:TAG or
    /// NAME@DIGEST; nothing means the whole store.
    #[arg(value_name = "NAME[:TAG|@DIGEST]")]
    pub images: Vec<String>,
    /// Store directory.
    #[arg(long, default_value = "images", value_name = "DIR")]
    pub root: PathBuf,
    /// A registry to push to, and the prefix of every name there; may be repeated.
    #[arg(long, required = true, value_name = "HOST[:PORT][/PREFIX]")]
    pub to: Vec<Target>,
    #[command(flatten)]
    pub copy: CopyOptionArgs,
    #[command(flatten)]
    pub dest: DestArgs,
    /// Push a tagged image only when its stored signatures satisfy these keys.
    #[command(flatten)]
    pub signatures: SignatureArgs,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The image to copy: [host[:port]/]name[:tag][@digest].
    #[arg(value_name = "REFERENCE")]
    pub reference: String,
    /// Where to: a registry, the repository there and optionally a tag (default: the
    /// source's); may be repeated.
    #[arg(long, required = true, value_name = "HOST[:PORT]/REPOSITORY[:TAG]")]
    pub to: Vec<Target>,
    /// Also copy what refers to the image (signatures, SBOMs, attestations: the
    /// referrers API, else the sha256-<hex> tag schema; cosign's .sig/.att/.sbom tags),
    /// and what refers to those; targets without the referrers API get the
    /// sha256-<hex> tag. The image is tagged at a target after them.
    #[arg(long)]
    pub referrers: bool,
    /// Keep only this platform of a multi-platform image (os/arch[/variant], e.g.
    /// linux/arm64); may be repeated. A cut index gets a new digest (the run says so).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Vec<PlatformSpec>,
    #[command(flatten)]
    pub signatures: SignatureArgs,
    #[command(flatten)]
    pub copy: CopyOptionArgs,
    /// The source registry's TLS, credentials and retries.
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub dest: DestArgs,
}

/// Which signatures an image must carry to be published (cosign's key-based ones).
#[derive(Debug, Args)]
pub struct SignatureArgs {
    /// Publish only images signed with this public key (PEM, as cosign.pub: ECDSA P-256,
    /// Ed25519 or RSA); may be repeated. Their signatures are copied with them. With
    /// --config, for the images whose entry and registry give no `verify:`.
    #[arg(long = "verify-key", value_name = "FILE")]
    pub verify_key: Vec<PathBuf>,
    /// With several --verify-key: `any` key's signature is enough, or `all` must have
    /// signed.
    #[arg(
        long,
        default_value = "any",
        value_name = "any|all",
        requires = "verify_key"
    )]
    pub verify_require: Require,
}

#[derive(Debug, Args)]
pub struct CopyOptionArgs {
    /// A tag that already points at another digest at a target: skip it (and say so),
    /// replace it, or fail that image there.
    #[arg(long, default_value = "replace", value_name = "skip|replace|fail")]
    pub overwrite: Overwrite,
    /// Blob transfers in flight at once.
    #[arg(short, long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Also send foreign (non-distributable) layers, which registries usually do not hold.
    #[arg(long)]
    pub include_foreign: bool,
    /// No progress output; errors are still printed.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print a JSON summary on stdout (per target, and per image and target).
    #[arg(long)]
    pub json: bool,
}

/// The target registries' TLS and credentials (as skopeo's --dest-* options).
#[derive(Debug, Args)]
pub struct DestArgs {
    /// Require HTTPS with verified certificates at the targets; `--dest-tls-verify=false`
    /// also allows plain HTTP and unverified TLS.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          require_equals = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub dest_tls_verify: bool,
    /// Directory of extra CA certificates (*.crt) for the targets.
    #[arg(long, value_name = "DIR")]
    pub dest_cert_dir: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust at the targets; may be repeated.
    #[arg(long, value_name = "FILE")]
    pub dest_ca_cert: Vec<PathBuf>,
    /// Credentials for the targets (else the auth files, as for pulls).
    #[arg(
        long,
        value_name = "USER:PASS",
        env = "STATIC_REGISTRY_DEST_CREDS",
        hide_env_values = true
    )]
    pub dest_creds: Option<String>,
    /// Auth file (docker config.json or containers auth.json format) for the targets.
    #[arg(long, value_name = "FILE")]
    pub dest_authfile: Option<PathBuf>,
    /// Retries for 429, 5xx and connection failures at the targets.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub dest_retries: u32,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// What to remove: NAME (the whole repository, nested repositories below it stay),
    /// NAME:TAG, or NAME@sha256:HEX (every entry naming that manifest).
    #[arg(required = true, value_name = "NAME[:TAG|@DIGEST]")]
    pub targets: Vec<String>,
    /// Store directory.
    #[arg(long, default_value = "images", value_name = "DIR")]
    pub root: PathBuf,
    /// Print what was removed as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Store directory.
    #[arg(long, default_value = "images", value_name = "DIR")]
    pub root: PathBuf,
    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Store directory.
    #[arg(long, default_value = "images", value_name = "DIR")]
    pub root: PathBuf,
    /// Mend what can be mended in place first, with the store to ourselves: modes the
    /// web server cannot read (0644/0755 less the umask), corrupt blobs removed (pool
    /// and layouts), lost links restored; then verify. Names the images to fetch again.
    #[arg(long)]
    pub repair: bool,
    /// Also check that every tagged image is signed with these keys, by the signatures
    /// stored with it (no network).
    #[command(flatten)]
    pub signatures: SignatureArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// A remote repository ([host[:port]/]name) whose tags to list instead of a store.
    #[arg(value_name = "REPOSITORY")]
    pub repository: Option<String>,
    /// Store directory (when no REPOSITORY is given).
    #[arg(long, default_value = "images", value_name = "DIR")]
    pub root: PathBuf,
    /// Remote tags: keep those matching this regex (whole tag); may be repeated.
    #[arg(long, value_name = "REGEX", requires = "repository")]
    pub allow: Vec<String>,
    /// Remote tags: drop those matching this regex (whole tag); may be repeated.
    #[arg(long, value_name = "REGEX", requires = "repository")]
    pub deny: Vec<String>,
    /// Remote tags: keep versions inside this range, e.g. ">=1.2, <2".
    #[arg(long, value_name = "RANGE", requires = "repository")]
    pub semver: Option<String>,
    /// Remote tags: keep the N highest versions.
    #[arg(long, value_name = "N", requires = "repository")]
    pub latest: Option<usize>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Mirror configuration (our YAML format or skopeo sync's).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// A store to compare with: sizes still to download exclude blobs it holds.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Where in which bucket: s3://<bucket>[/<prefix>].
    #[arg(value_name = "S3_URL")]
    pub url: String,
    /// Store directory.
    #[arg(long, default_value = "images", value_name = "DIR")]
    pub root: PathBuf,
    /// The S3 API of a store other than AWS (Ceph RGW, MinIO, Garage...), e.g.
    /// https://s3.example. Credentials come from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY, the AWS CLI's files (AWS_PROFILE), or AWS's web identity,
    /// container or instance credentials.
    #[arg(long, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// The bucket's region [default: us-east-1].
    #[arg(long, env = "AWS_REGION", value_name = "REGION")]
    pub region: Option<String>,
    /// Address the bucket as <bucket>.<endpoint host> rather than <endpoint>/<bucket>.
    #[arg(long)]
    pub virtual_hosted: bool,
    /// Then remove the objects the store no longer serves (after the new ones are in,
    /// tags before the blobs they name); nothing outside the layout's paths is touched.
    #[arg(long)]
    pub delete: bool,
    /// Print what was done as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Uploads in flight at once.
    #[arg(short, long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// What to bundle: NAME (every tag and untagged manifest of it), NAME:TAG or
    /// NAME@DIGEST, each with what refers to it; nothing means the whole store.
    #[arg(value_name = "NAME[:TAG|@DIGEST]")]
    pub images: Vec<String>,
    /// Store directory.
    #[arg(long, default_value = "images", value_name = "DIR")]
    pub root: PathBuf,
    /// The bundle to write; zstd-compressed when the name ends in .zst (bundle.tar.zst).
    /// Its state, for a later --since, is written beside it as <BUNDLE>.state.json.
    #[arg(
        short,
        long,
        value_name = "BUNDLE",
        required_unless_present = "dry_run"
    )]
    pub output: Option<PathBuf>,
    /// Make a delta: only the blobs BASE lacks. BASE is an earlier bundle, its
    /// .state.json, or the .bundle-state.json an import left in the receiving store.
    #[arg(long, value_name = "BASE")]
    pub since: Option<PathBuf>,
    /// Write the bundle in parts of at most SIZE bytes each (before compression), named
    /// <BUNDLE>.001, .002, ...: for media of that size. `import` takes them in any order.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub split: Option<u64>,
    /// Say what would go in and its size; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// A size as `4G`, `700M`, `512K` or bytes (K, M, G and T are powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let trimmed = s.trim_end_matches(['B', 'b']).trim_end_matches('i');
    let (number, unit) = match trimmed.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => trimmed.split_at(i),
        None => (trimmed, ""),
    };
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => {
            return Err(format!(
                "{s:?} is not a size: give bytes, or a number with K, M, G or T (4G)"
            ));
        }
    };
    let n: u64 = number.parse().map_err(|_| {
        format!("{s:?} is not a size: give bytes, or a number with K, M, G or T (4G)")
    })?;
    n.checked_mul(1 << shift)
        .filter(|n| *n >= 64 << 10)
        .ok_or_else(|| format!("{s:?}: a part holds 64K at least"))
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Bundles written by `export` (a base and its deltas, in any order).
    #[arg(
        value_name = "BUNDLE",
        required_unless_present = "from_dir_tree",
        conflicts_with = "from_dir_tree"
    )]
    pub bundles: Vec<PathBuf>,
    /// Store directory.
    #[arg(long, default_value = "images", value_name = "DIR")]
    pub root: PathBuf,
    /// A tree of images as `skopeo copy ... dir:<DIR>/<name>/<tag>` wrote them; each
    /// becomes tag <tag> of repository <name>.
    #[arg(long, value_name = "DIR")]
    pub from_dir_tree: Option<PathBuf>,
    /// Blob copies at once.
    #[arg(short = 'j', long, default_value_t = 8, value_name = "N")]
    pub jobs: usize,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Store directory to serve.
    #[arg(long, default_value = "images", value_name = "DIR")]
    pub root: PathBuf,
    /// Address and port to listen on (0.0.0.0:5000 for every interface).
    #[arg(long, default_value = "127.0.0.1:5000", value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    /// Serve every repository under this prefix: <prefix>/<name>.
    #[arg(long, value_name = "PREFIX")]
    pub name_prefix: Option<String>,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1) with this certificate chain (PEM); needs
    /// --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Only users of this htpasswd file (bcrypt entries: `htpasswd -B`) may pull;
    /// anonymous requests get 401. The file is re-read when it changes.
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,
    /// Which repositories each user may pull (YAML: `user: [pattern, ...]`, `*` within a
    /// path component, `**` anything); unlisted users may pull nothing.
    #[arg(long, value_name = "FILE", requires = "htpasswd")]
    pub access: Option<PathBuf>,
    /// Log lines (one per request, at -v's default info level) as text or JSON.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct GenConfArgs {
    /// Store directory to serve.
    #[arg(long, default_value = "images", value_name = "DIR")]
    pub root: PathBuf,
    /// Where nginx sees the store, if not at --root's absolute path: a path, or an nginx
    /// variable such as '$registry_root' set elsewhere in the nginx configuration.
    #[arg(long, value_name = "PATH|$VAR")]
    pub server_root: Option<String>,
    /// Serve every repository under this prefix: <prefix>/<name>.
    #[arg(long, value_name = "PREFIX")]
    pub name_prefix: Option<String>,
    /// nginx `listen` value: a port or address:port [default: 80, with --tls-cert 443].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Serve HTTPS (and HTTP/2) with this certificate chain (PEM); needs --tls-key.
    /// (With --locations-only, TLS is your server block's.)
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with_all = ["locations_only", "maps_only"]
    )]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM; read by nginx's master process only).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With TLS, also listen here for plain HTTP and redirect every request to HTTPS
    /// (a port or address:port, e.g. 80).
    #[arg(long, value_name = "ADDR", requires = "tls_cert")]
    pub tls_redirect_from: Option<String>,
    /// nginx `server_name` value.
    #[arg(long, default_value = "_", value_name = "NAMES")]
    pub server_name: String,
    /// Only users of this htpasswd file (bcrypt entries: `htpasswd -B`) may pull;
    /// anonymous requests get 401. nginx's workers read it at each request.
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,
    /// Which repositories each user may pull (YAML: `user: [pattern, ...]`, `*` within a
    /// path component, `**` anything); unlisted users may pull nothing.
    #[arg(long, value_name = "FILE", requires = "htpasswd")]
    pub access: Option<PathBuf>,
    /// Print only the location blocks, to include inside an existing server block; the
    /// http-level maps they need come from --maps-only.
    #[arg(long, conflicts_with = "maps_only")]
    pub locations_only: bool,
    /// Print only the http-level maps that --locations-only needs.
    #[arg(long)]
    pub maps_only: bool,
    /// Directory of templates replacing the built-in ones (registry.conf.tera,
    /// maps.conf.tera, locations.conf.tera; s3-front.conf.tera with --s3-origin).
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// Install the configuration into the host's nginx instead of printing it: write FILE
    /// atomically (e.g. /etc/nginx/conf.d/static-registry.conf), check with `nginx -t`,
    /// reload gracefully; a configuration nginx rejects leaves the previous FILE in place.
    #[arg(long, value_name = "FILE")]
    pub install: Option<PathBuf>,
    /// The host nginx's main configuration file (passed to nginx as -c); its directory's
    /// nginx.conf, conf.d/ and sites-enabled/ are checked for servers on our port.
    #[arg(long, value_name = "FILE", default_value = "/etc/nginx/nginx.conf")]
    pub nginx_conf: PathBuf,
    /// The nginx binary --install runs [default: nginx on PATH, else /usr/sbin/nginx].
    #[arg(long, value_name = "PATH")]
    pub nginx_bin: Option<PathBuf>,
    /// Serve names from other stored names and from live upstream registries, per
    /// virtual host: collage's config.json, or our YAML config's `serve:` section.
    #[arg(long, value_name = "FILE")]
    pub mappings: Option<PathBuf>,
    /// How mappings to upstream registries answer, where a mapping does not say:
    /// `redirect` (307 to the upstream) or `proxy` (nginx fetches and caches).
    #[arg(long, value_name = "MODE", value_parser = ["redirect", "proxy"])]
    pub upstream_mode: Option<String>,
    /// Cache directory for proxied upstreams (nginx creates it; its workers write it).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/cache/nginx/static-registry"
    )]
    pub proxy_cache: PathBuf,
    /// Size limit of the proxy cache (nginx notation: 500m, 10g).
    #[arg(long, value_name = "SIZE", default_value = "10g")]
    pub proxy_cache_size: String,
    /// How long a proxied tag, tags list or referrers answer is fresh before nginx asks
    /// the upstream again (content by digest is kept until evicted).
    #[arg(long, value_name = "TIME", default_value = "1m")]
    pub proxy_tag_validity: String,
    /// CA bundle that proxied upstreams' certificates are verified against.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/ssl/certs/ca-certificates.crt"
    )]
    pub upstream_ca: PathBuf,
    /// DNS server nginx asks for the storage hosts proxied upstreams redirect blobs to;
    /// may be repeated [default: the nameservers of /etc/resolv.conf].
    #[arg(long, value_name = "ADDR")]
    pub resolver: Vec<String>,
    /// Serve the bucket `publish` wrote, with no local store: the URL its objects are
    /// read from anonymously, e.g. https://s3.example/bucket/mirror (path-style) or
    /// https://bucket.s3.example/mirror. nginx caches what it read in --proxy-cache.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with_all = ["server_root", "name_prefix", "htpasswd", "locations_only", "maps_only", "mappings", "upstream_mode", "tls_redirect_from"]
    )]
    pub s3_origin: Option<String>,
    /// With --s3-origin: no proxy cache, every request goes to the bucket.
    #[arg(long, requires = "s3_origin")]
    pub no_proxy_cache: bool,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Mirror configuration (our YAML format, with `to:` and `on-change:`, or skopeo
    /// sync's).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// One round of every source, then exit (for cron or a systemd timer). Without it,
    /// the service runs each source on its schedule until SIGTERM; SIGHUP reloads FILE.
    #[arg(long, conflicts_with_all = ["listen", "token_file", "interval", "log_format", "state"])]
    pub once: bool,
    /// Serve the control API (JSON; /healthz, /metrics, /v1/sources...) on this address.
    /// Beyond loopback only with --token-file.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// File holding the API's bearer token (every route but /healthz then needs
    /// `Authorization: Bearer <token>`).
    #[arg(long, value_name = "FILE", requires = "listen")]
    pub token_file: Option<PathBuf>,
    /// Schedule of the sources the file gives none (`interval:`/`cron:`), e.g. 15m.
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    pub interval: Option<Schedule>,
    /// Rounds running at once, over all sources (a source's rounds never overlap).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub rounds: u16,
    /// Where the sources created over the API are kept, to survive a restart [default:
    /// beside --config, its name with .sources.json].
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Log lines as text or as JSON objects (one per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Store directory (created if missing), when the configuration sends to `store`.
    #[arg(long, default_value = "images", value_name = "DIR")]
    pub root: PathBuf,
    /// Blob transfers in flight at once.
    #[arg(short, long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Blob reads in flight at once from one registry host.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs_per_host: u16,
    /// Also copy foreign (non-distributable) layers.
    #[arg(long)]
    pub include_foreign: bool,
    /// The source registries' TLS, credentials and retries (a config's `registries:`
    /// entries override them per registry).
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Defaults for the registry targets (a `to:` entry's own TLS settings and
    /// credentials override them).
    #[command(flatten)]
    pub dest: DestArgs,
    /// No progress output; errors are still printed.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_interval(text: &str) -> Result<Schedule, String> {
    Schedule::interval(text)
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Image references: [host[:port]/]name[:tag][@digest]; Docker Hub shorthand like
    /// `alpine` means docker.io/library/alpine:latest.
    #[arg(
        required_unless_present = "config",
        conflicts_with = "config",
        value_name = "REFERENCE"
    )]
    pub references: Vec<String>,
    /// Mirror configuration (our YAML format or skopeo sync's) naming what to fetch.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Mirror: also remove the tags of the configured repositories that the selection no
    /// longer picks (repositories the config does not name are never touched).
    #[arg(long, requires = "config")]
    pub delete: bool,
    /// Store directory (created if missing).
    #[arg(long, default_value = "images", value_name = "DIR")]
    pub root: PathBuf,
    /// Blob downloads in flight at once.
    #[arg(short, long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Blob downloads in flight at once from one registry host.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs_per_host: u16,
    /// Stop at the first image that fails (by default the others still complete).
    #[arg(long)]
    pub fail_fast: bool,
    /// Give up after this many seconds in all (0: no limit); nothing partial is published.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub timeout: u64,
    /// Store images as <host>/<name> (a port becomes -port) instead of <name>. Not with
    /// --config, whose entries name their targets (`target`, `prefix`).
    #[arg(long, conflicts_with = "config")]
    pub keep_host: bool,
    /// Also fetch foreign (non-distributable) layers instead of skipping them.
    #[arg(long)]
    pub include_foreign: bool,
    /// Keep only this platform of multi-platform images (os/arch[/variant], e.g.
    /// linux/arm64); may be repeated. A cut index gets a new digest (the run says so).
    #[arg(long, value_name = "PLATFORM", conflicts_with = "config")]
    pub platform: Vec<PlatformSpec>,
    /// Also fetch the signatures, SBOMs and attestations that refer to each image
    /// (referrers API, else the sha256-<hex> tag schema; cosign's .sig/.att/.sbom tags).
    #[arg(long, conflicts_with = "config")]
    pub referrers: bool,
    #[command(flatten)]
    pub signatures: SignatureArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// No progress output; errors are still printed.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Require HTTPS with verified certificates; `--tls-verify=false` also allows plain
    /// HTTP and unverified TLS (as in skopeo).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          require_equals = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tls_verify: bool,
    /// Directory of extra CA certificates (*.crt), as in /etc/containers/certs.d/<host>.
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust; may be repeated.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Vec<PathBuf>,
    /// Credentials for every registry of this run.
    #[arg(
        long,
        value_name = "USER:PASS",
        env = "STATIC_REGISTRY_CREDS",
        hide_env_values = true
    )]
    pub creds: Option<String>,
    /// Auth file (docker config.json or containers auth.json format) to read credentials from.
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Retries for 429, 5xx and connection failures.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub retries: u32,
    /// Fail a response (and resume a blob) after this many seconds without a byte.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub stall_timeout: u64,
    /// Largest manifest accepted, in bytes (real ones are a few KiB).
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    pub max_manifest_size: u64,
}
