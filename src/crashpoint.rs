//! Deterministic crash points for the crash-consistency tests: the store calls [`hit`] or
//! [`reached`] between the steps whose order keeps it consistent, and a test makes the
//! process die exactly there. Not a user feature.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Test hook: `STATIC_REGISTRY_CRASH_AT=<point>:<n>` aborts the process (no destructors,
/// no flushing, like SIGKILL) on the `n`th [`hit`] of `point`, or for [`reached`] points
/// the first time the value reaches `n`.
const ENV: &str = "STATIC_REGISTRY_CRASH_AT";

struct Armed {
    point: String,
    n: u64,
    hits: AtomicU64,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

/// The armed point if it is `point`. Unset, this is one load of an initialised cell.
#[inline]
fn armed(point: &str) -> Option<&'static Armed> {
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            let parsed = spec
                .rsplit_once(':')
                .and_then(|(point, n)| Some((point.to_owned(), n.parse().ok()?)));
            let Some((point, n)) = parsed else {
                // A typo must not make a crash test pass by never crashing.
                eprintln!("{ENV}={spec:?}: expected <point>:<n>");
                std::process::abort();
            };
            Some(Armed {
                point,
                n,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
        .filter(|a| a.point == point)
}

/// Count a pass through `point`; die on the armed pass.
#[inline]
pub fn hit(point: &'static str) {
    if let Some(a) = armed(point)
        && a.hits.fetch_add(1, Ordering::Relaxed) + 1 == a.n
    {
        die(point, a.n);
    }
}

/// Die once `value` (a byte count, say) reaches the armed threshold at `point`.
#[inline]
pub fn reached(point: &'static str, value: u64) {
    if let Some(a) = armed(point)
        && value >= a.n
    {
        die(point, a.n);
    }
}

#[cold]
fn die(point: &str, n: u64) -> ! {
    // The test checks this line to tell the hook from any other abort.
    eprintln!("crash point {point}:{n} reached; aborting");
    std::process::abort()
}
