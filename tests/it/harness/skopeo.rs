//! `skopeo` as an independent reference client: what it reads back from a
//! registry (ours or nginx) is what real tooling would see.

use std::process::{Command, Output};
use std::time::Duration;

use super::{require_bin, run_with_timeout};

const SKOPEO_TIMEOUT: Duration = Duration::from_secs(60);

/// Run `skopeo <args>` with a timeout; panics on failure with stderr.
pub fn skopeo(args: &[&str]) -> Output {
    let bin = require_bin("skopeo", "skopeo");
    let out = run_with_timeout(Command::new(bin).args(args), SKOPEO_TIMEOUT);
    if !out.status.success() {
        panic!(
            "skopeo {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Exact manifest bytes of `target` (e.g. `docker://127.0.0.1:PORT/repo:tag`)
/// via `skopeo inspect --raw <extra_args> <target>`. Plain-HTTP registries need
/// `--tls-verify=false` in `extra_args`.
pub fn skopeo_inspect_raw(target: &str, extra_args: &[&str]) -> Vec<u8> {
    // --no-creds: the test registries have no auth, and the user's auth files
    // must not influence (or break) the result.
    let mut args = vec!["inspect", "--raw", "--no-creds"];
    args.extend_from_slice(extra_args);
    args.push(target);
    skopeo(&args).stdout
}

/// `skopeo_inspect_raw` against a plain-HTTP loopback registry at `addr`.
pub fn inspect_raw_insecure(addr: &str, image: &str) -> Vec<u8> {
    skopeo_inspect_raw(&format!("docker://{addr}/{image}"), &["--tls-verify=false"])
}
