//! PostgreSQL's CPU time per client application over the run. Once a second the tool lists the
//! database's backends (`pg_stat_activity`: pid and `application_name`) and reads each one's CPU
//! time from `/proc/<pid>/stat`; the server is on this machine, as the tool only talks to loopback
//! addresses. Every service names its connections `amba-<schema>`, so the database's work splits
//! by service: what each one costs the database per report is what bounds ingest on a small
//! machine, and no histogram of the system shows it.

use crate::cpu;
use sqlx::Connection;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// CPU seconds per application name.
pub type Totals = BTreeMap<String, f64>;

/// The backends as last seen: pid → (application name, CPU ticks).
#[derive(Debug, Default)]
struct Backends {
    seen: HashMap<i32, (String, u64)>,
    /// Whether a sample was taken yet: the first one only sets where each backend started.
    started: bool,
}

impl Backends {
    /// Adds to `totals` what each backend used since the last sample. A backend that appeared
    /// since was born during the run: all its time counts. One that left takes with it what it
    /// used since the last sample (at most a second's worth).
    fn advance(&mut self, sample: Vec<(i32, String, u64)>, ticks_per_second: f64, totals: &mut Totals) {
        let mut now = HashMap::with_capacity(sample.len());
        for (pid, name, ticks) in sample {
            let before = match self.seen.get(&pid) {
                Some((_, before)) => *before,
                None if self.started => 0,
                None => ticks,
            };
            let used = ticks.saturating_sub(before);
            if used > 0 {
                *totals.entry(name.clone()).or_default() += used as f64 / ticks_per_second;
            }
            now.insert(pid, (name, ticks));
        }
        self.seen = now;
        self.started = true;
    }
}

pub struct Sampler {
    totals: Arc<Mutex<Totals>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling the backends of `database_url`'s database; `None` when it cannot connect.
    pub async fn start(database_url: &str) -> Option<Sampler> {
        let mut conn = sqlx::PgConnection::connect(database_url).await.ok()?;
        let totals: Arc<Mutex<Totals>> = Arc::default();
        let ticks_per_second = cpu::ticks_per_second();
        let task = tokio::spawn({
            let totals = totals.clone();
            async move {
                let mut backends = Backends::default();
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let Ok(rows) = sqlx::query_as::<_, (i32, String)>(
                        "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() \
                         AND pid <> pg_backend_pid()",
                    )
                    .fetch_all(&mut conn)
                    .await
                    else {
                        return;
                    };
                    let sample = rows
                        .into_iter()
                        .filter_map(|(pid, name)| {
                            let ticks = cpu::ticks(u32::try_from(pid).ok()?)?;
                            let name = if name.is_empty() { "(unnamed)".to_owned() } else { name };
                            Some((pid, name, ticks))
                        })
                        .collect();
                    if let Ok(mut totals) = totals.lock() {
                        backends.advance(sample, ticks_per_second, &mut totals);
                    }
                }
            }
        });
        Some(Sampler { totals, task })
    }

    /// CPU seconds per application so far (read at the bounds of the phases).
    pub fn totals(&self) -> Totals {
        self.totals.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One phase as the summary shows it: its name, the totals at its bounds, and the reports (or
/// conversions booked) to divide by.
pub struct Phase<'a> {
    pub name: &'a str,
    pub from: &'a Totals,
    pub to: &'a Totals,
    pub per: u64,
    pub per_what: &'a str,
}

/// The summary lines: per phase, each application's CPU seconds and microseconds per report, the
/// busiest first.
pub fn summary(phases: &[Phase<'_>]) -> Vec<String> {
    let mut lines =
        vec!["PostgreSQL CPU by client application, per phase (its backends, sampled once a second):".to_owned()];
    for phase in phases {
        let mut used: Vec<(&str, f64)> = phase
            .to
            .iter()
            .map(|(name, to)| (name.as_str(), to - phase.from.get(name).copied().unwrap_or(0.0)))
            .filter(|(_, seconds)| *seconds >= 0.05)
            .collect();
        used.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = used.iter().map(|(_, s)| s).sum();
        let per = |seconds: f64| {
            if phase.per == 0 {
                String::new()
            } else {
                format!(", {:.0} µs", seconds * 1e6 / phase.per as f64)
            }
        };
        let parts: Vec<String> = used
            .iter()
            .map(|(name, s)| format!("{name} {s:.1} s{}", per(*s)))
            .collect();
        lines.push(format!(
            "  {} ({} {}): all {total:.1} s{}; {}",
            phase.name,
            phase.per,
            phase.per_what,
            per(total),
            parts.join("; ")
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_count_from_the_first_sample_and_newcomers_count_whole() {
        let mut backends = Backends::default();
        let mut totals = Totals::new();
        let a = || "amba-attribution".to_owned();
        let c = || "amba-commission".to_owned();
        // The first sample only sets the start: backends were busy before the run.
        backends.advance(vec![(1, a(), 500), (2, c(), 900)], 100.0, &mut totals);
        assert!(totals.is_empty(), "{totals:?}");
        // 1 used 0.3 s, 2 left, 3 was born and used 0.2 s, 4 (same name as 1) 0.1 s.
        backends.advance(vec![(1, a(), 530), (3, c(), 20), (4, a(), 10)], 100.0, &mut totals);
        assert_eq!(totals.get("amba-attribution").copied(), Some(0.4));
        assert_eq!(totals.get("amba-commission").copied(), Some(0.2));
        // A pid reused by a newer backend with fewer ticks adds nothing rather than underflowing.
        backends.advance(vec![(1, a(), 5)], 100.0, &mut totals);
        assert_eq!(totals.get("amba-attribution").copied(), Some(0.4));
    }

    #[test]
    fn the_summary_divides_each_phase_by_its_reports() {
        let totals = |pairs: &[(&str, f64)]| -> Totals { pairs.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect() };
        let start = totals(&[("amba-attribution", 1.0)]);
        let mid = totals(&[("amba-attribution", 3.0), ("amba-commission", 4.0), ("idle", 0.01)]);
        let end = totals(&[("amba-attribution", 3.0), ("amba-commission", 10.0), ("idle", 0.01)]);
        let lines = summary(&[
            Phase {
                name: "streaming",
                from: &start,
                to: &mid,
                per: 20_000,
                per_what: "reports",
            },
            Phase {
                name: "catch-up",
                from: &mid,
                to: &end,
                per: 0,
                per_what: "conversions booked",
            },
        ]);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            lines[1],
            "  streaming (20000 reports): all 6.0 s, 300 µs; amba-commission 4.0 s, 200 µs; amba-attribution 2.0 s, 100 µs"
        );
        assert_eq!(
            lines[2],
            "  catch-up (0 conversions booked): all 6.0 s; amba-commission 6.0 s"
        );
    }
}
