//! Progress on stderr: indicatif bars on a terminal, one plain line per image otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use static_registry::reference::Digest;
use static_registry::report::{CopyStatus, ImageReport, Reporter, Status, TargetReport};

pub fn reporter(quiet: bool) -> Box<dyn Reporter> {
    if quiet {
        Box::new(static_registry::report::Silent)
    } else if std::io::stderr().is_terminal() {
        Box::new(Bars::new())
    } else {
        Box::new(Lines)
    }
}

fn image_line(r: &ImageReport) -> String {
    let mut extra = String::new();
    if let Some(up) = &r.upstream_digest {
        extra.push_str(&format!(" (platforms cut from {up})"));
    }
    if r.referrers > 0 {
        extra.push_str(&format!(" + {} referrers", r.referrers));
    }
    match r.status {
        Status::Fetched => format!(
            "fetched   {} -> {} {}{extra}",
            r.source,
            r.name,
            r.digest.as_deref().unwrap_or("")
        ),
        Status::Unchanged => format!("unchanged {}", r.source),
        // The cause is printed once, in the error list at the end.
        Status::Failed => format!("failed    {}", r.source),
    }
}

fn copy_line(r: &TargetReport) -> String {
    let digest = r.digest.as_deref().unwrap_or("");
    match r.status {
        CopyStatus::Copied => format!("copied    {} -> {} {digest}", r.source, r.target),
        CopyStatus::Unchanged => format!("unchanged {} -> {}", r.source, r.target),
        CopyStatus::Skipped => format!(
            "skipped   {} -> {} (it points at {}; --overwrite=replace would move it)",
            r.source,
            r.target,
            r.existing.as_deref().unwrap_or("another digest")
        ),
        CopyStatus::Failed => format!("failed    {} -> {}", r.source, r.target),
    }
}

struct Lines;

impl Reporter for Lines {
    fn image_finished(&self, report: &ImageReport) {
        eprintln!("{}", image_line(report));
    }
    fn copied(&self, report: &TargetReport) {
        eprintln!("{}", copy_line(report));
    }
    fn warn(&self, message: &str) {
        eprintln!("warning: {message}");
    }
}

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    blobs: Mutex<HashMap<Digest, ProgressBar>>,
    /// Bytes sent, per push or copy target.
    targets: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    fn new() -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(0));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        total.set_prefix("total");
        Bars {
            multi,
            total,
            blobs: Mutex::new(HashMap::new()),
            targets: Mutex::new(HashMap::new()),
        }
    }
}

impl Reporter for Bars {
    fn image_finished(&self, report: &ImageReport) {
        let _ = self.multi.println(image_line(report));
    }
    fn copied(&self, report: &TargetReport) {
        let _ = self.multi.println(copy_line(report));
    }
    fn bytes_sent(&self, target: &str, bytes: u64) {
        let mut targets = self.targets.lock().unwrap();
        let bar = targets.entry(target.to_owned()).or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::no_length());
            bar.set_style(
                ProgressStyle::with_template("{msg} sent {bytes} {bytes_per_sec}")
                    .expect("valid template"),
            );
            bar.set_message(target.to_owned());
            bar
        });
        bar.inc(bytes);
    }
    fn blob_started(&self, digest: &Digest, size: u64, offset: u64) {
        self.total.inc_length(size - offset.min(size));
        let bar = self.multi.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>9} [{bar:30}] {bytes}/{total_bytes}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(digest.hex()[..8].to_owned());
        bar.set_position(offset);
        self.blobs.lock().unwrap().insert(digest.clone(), bar);
    }
    fn blob_progress(&self, digest: &Digest, bytes: u64) {
        self.total.inc(bytes);
        if let Some(bar) = self.blobs.lock().unwrap().get(digest) {
            bar.inc(bytes);
        }
    }
    fn blob_finished(&self, digest: &Digest) {
        if let Some(bar) = self.blobs.lock().unwrap().remove(digest) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }
    fn warn(&self, message: &str) {
        let _ = self.multi.println(format!("warning: {message}"));
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        for bar in self.targets.lock().unwrap().values() {
            bar.finish_and_clear();
        }
        self.total.finish_and_clear();
    }
}
