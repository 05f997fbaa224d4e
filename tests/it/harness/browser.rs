//! Headless Chromium (Debian's `chromium`): a page's DOM after rendering, and a
//! screenshot of it.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use super::{require_bin, run_with_timeout};

/// Run headless Chromium on `url` with `args` (a fresh profile, no network of its own).
fn chromium(args: &[&str], url: &str) -> Output {
    let bin = require_bin("chromium", "chromium");
    let profile = tempfile::tempdir().unwrap();
    let out = run_with_timeout(
        Command::new(bin)
            .args([
                "--headless",
                // Tests run as root, where Chromium's sandbox refuses to start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .arg(url),
        Duration::from_secs(90),
    );
    assert!(
        out.status.success(),
        "chromium {args:?} {url} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The DOM of `url` once rendered, as HTML.
pub fn dump_dom(url: &str) -> String {
    String::from_utf8(chromium(&["--dump-dom"], url).stdout).unwrap()
}

/// A 1280×1000 PNG of `url` at `path`; its size in bytes.
pub fn screenshot(url: &str, path: &Path) -> u64 {
    chromium(
        &[
            &format!("--screenshot={}", path.display()),
            "--window-size=1280,1000",
        ],
        url,
    );
    let png = std::fs::read(path).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{url}: not a PNG");
    png.len() as u64
}
