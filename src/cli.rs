//! Command-line types (clap derive) only; `main.rs` acts on them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch images (every platform, config and layer) into the store under --root.
    Fetch(FetchArgs),
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Image references: [host[:port]/]name[:tag][@digest]; Docker Hub shorthand like
    /// `alpine` means docker.io/library/alpine:latest.
    #[arg(required = true, value_name = "REFERENCE")]
    pub references: Vec<String>,
    /// Store directory (created if missing).
    #[arg(long, default_value = "images", value_name = "DIR")]
    pub root: PathBuf,
    /// Blob downloads in flight at once.
    #[arg(short, long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Store images as <host>/<name> (a port becomes -port) instead of <name>.
    #[arg(long)]
    pub keep_host: bool,
    /// Also fetch foreign (non-distributable) layers instead of skipping them.
    #[arg(long)]
    pub include_foreign: bool,
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
}
