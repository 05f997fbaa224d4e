//! When a `sync` source runs: every fixed interval (`interval: 15m`) or at the times of a
//! cron pattern (`cron: "*/30 * * * *"`, local time, as cron reads it).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Local};

/// The shortest interval accepted: a round of a large mirror takes seconds even when
/// nothing changed, and a tighter loop only hammers the upstream.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// A round this long after the previous one started (the first at start-up).
    Every(Duration),
    /// A round at each time the pattern matches.
    Cron(Box<croner::Cron>),
}

impl Schedule {
    /// `interval:` text: a number with a unit (`90s`, `15m`, `1h 30m`, `1d`).
    pub fn interval(text: &str) -> Result<Schedule, String> {
        let d = humantime::parse_duration(text).map_err(|e| {
            format!(
                "{text:?} is not a duration ({e}); write a number and a unit, e.g. 90s, 15m, 6h, 1d"
            )
        })?;
        if d < MIN_INTERVAL {
            return Err(format!("{text:?} is shorter than 1s"));
        }
        Ok(Schedule::Every(d))
    }

    /// `cron:` text: five fields (minute hour day month weekday), six with seconds first,
    /// or an alias such as `@hourly`.
    pub fn cron(text: &str) -> Result<Schedule, String> {
        croner::Cron::from_str(text)
            .map(|c| Schedule::Cron(Box::new(c)))
            .map_err(|e| {
                format!("{text:?} is not a cron pattern ({e}); e.g. \"*/30 * * * *\" or @hourly")
            })
    }

    /// The first run: at once for an interval, the pattern's next time for cron.
    pub fn first(&self, now: DateTime<Local>) -> DateTime<Local> {
        match self {
            Schedule::Every(_) => now,
            Schedule::Cron(_) => self.after(now, now),
        }
    }

    /// The run after one that started at `started`, no earlier than `now` (a round longer
    /// than the interval is followed at once, never by a burst of missed ones).
    pub fn after(&self, started: DateTime<Local>, now: DateTime<Local>) -> DateTime<Local> {
        match self {
            Schedule::Every(d) => {
                let next =
                    started + chrono::Duration::from_std(*d).unwrap_or(chrono::TimeDelta::MAX);
                next.max(now)
            }
            // A pattern that never matches again (a past year) leaves the source idle
            // until a manual sync; a year on is as good as never.
            Schedule::Cron(c) => c
                .find_next_occurrence(&now, false)
                .unwrap_or(now + chrono::Duration::days(365)),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
            Schedule::Cron(c) => write!(f, "cron {}", c.pattern),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn interval_and_cron_text() {
        assert_eq!(
            Schedule::interval("15m").unwrap(),
            Schedule::Every(Duration::from_secs(900))
        );
        assert!(
            Schedule::interval("0s")
                .unwrap_err()
                .contains("shorter than 1s")
        );
        assert!(Schedule::interval("15").unwrap_err().contains("15m"));
        assert!(Schedule::cron("*/30 * * * *").is_ok());
        assert!(Schedule::cron("@hourly").is_ok());
        assert!(
            Schedule::cron("61 * * * *")
                .unwrap_err()
                .contains("cron pattern")
        );
    }

    #[test]
    fn a_long_round_is_followed_at_once_not_by_a_burst() {
        let t0 = Local.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap();
        let every = Schedule::interval("1m").unwrap();
        assert_eq!(every.first(t0), t0);
        assert_eq!(
            every.after(t0, t0 + chrono::Duration::seconds(5)),
            t0 + chrono::Duration::minutes(1)
        );
        let late = t0 + chrono::Duration::minutes(5);
        assert_eq!(every.after(t0, late), late);
        let half_hourly = Schedule::cron("*/30 * * * *").unwrap();
        assert_eq!(
            half_hourly.first(t0 + chrono::Duration::minutes(1)),
            t0 + chrono::Duration::minutes(30)
        );
    }
}
