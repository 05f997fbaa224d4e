//! /metrics: Prometheus text of each source's figures, rendered from the service's state
//! at each scrape (a removed source leaves no stale series).

use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Local};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use serde::Serialize;

/// Counts since the service started, for /metrics.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Totals {
    pub rounds: u64,
    pub failed_rounds: u64,
    pub images_copied: u64,
    pub blobs_copied: u64,
    pub bytes_copied: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

pub(super) struct SourceFigures<'a> {
    pub name: &'a str,
    pub running: bool,
    pub paused: bool,
    pub last_success: Option<DateTime<Local>>,
    pub last_seconds: Option<f64>,
    pub totals: &'a Totals,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// `jobs`: copy jobs (queued, running).
pub(super) fn render<'a>(
    jobs: (usize, usize),
    sources: impl Iterator<Item = SourceFigures<'a>>,
) -> String {
    let counter = Family::<SourceLabel, Counter>::default;
    let gauge = Family::<SourceLabel, Gauge>::default;
    let float = Family::<SourceLabel, Gauge<f64, AtomicU64>>::default;
    let (rounds, failed, images, blobs, bytes) =
        (counter(), counter(), counter(), counter(), counter());
    let (running, paused) = (gauge(), gauge());
    let (success, duration) = (float(), float());
    for s in sources {
        let l = SourceLabel {
            source: s.name.to_owned(),
        };
        rounds.get_or_create(&l).inc_by(s.totals.rounds);
        failed.get_or_create(&l).inc_by(s.totals.failed_rounds);
        images.get_or_create(&l).inc_by(s.totals.images_copied);
        blobs.get_or_create(&l).inc_by(s.totals.blobs_copied);
        bytes.get_or_create(&l).inc_by(s.totals.bytes_copied);
        running.get_or_create(&l).set(s.running.into());
        paused.get_or_create(&l).set(s.paused.into());
        if let Some(t) = s.last_success {
            success
                .get_or_create(&l)
                .set(t.timestamp_millis() as f64 / 1000.0);
        }
        if let Some(d) = s.last_seconds {
            duration.get_or_create(&l).set(d);
        }
    }
    let job_gauge = Family::<StateLabel, Gauge>::default();
    for (state, n) in [("queued", jobs.0), ("running", jobs.1)] {
        job_gauge.get_or_create(&StateLabel { state }).set(n as i64);
    }
    let mut registry = Registry::with_prefix("static_registry_sync");
    registry.register("jobs", "Copy jobs queued or running", job_gauge);
    registry.register("rounds", "Rounds finished", rounds);
    registry.register("failed_rounds", "Rounds with an error", failed);
    registry.register("images_copied", "Images copied to a target", images);
    registry.register("blobs_copied", "Blobs uploaded to a registry target", blobs);
    registry.register_with_unit("copied", "Blob bytes sent", Unit::Bytes, bytes);
    registry.register("running", "1 while a round of the source runs", running);
    registry.register("paused", "1 while the source is paused", paused);
    registry.register_with_unit(
        "last_success_timestamp",
        "End of the last round without error (Unix time)",
        Unit::Seconds,
        success,
    );
    registry.register_with_unit(
        "last_duration",
        "Length of the last round",
        Unit::Seconds,
        duration,
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String does not fail");
    text
}
