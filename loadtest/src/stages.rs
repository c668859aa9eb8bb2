//! Where a phase's time went: every `_seconds` histogram the system's `/metrics` endpoints
//! expose, diffed between the start and the end of the phase, printed as count, mean, p50 and p99.
//!
//! The system records each stage of a report's path (edge batch wait, the NATS request, the
//! server's queue and handler, the writer's queue and commit, the relay's lag, consumer groups,
//! e-mail sends); a phase's figures are the samples recorded during that phase only.

use std::collections::BTreeMap;

/// One histogram series: its cumulative bucket counts by upper bound, sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
struct Series {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

/// Every `_seconds` histogram of every endpoint at one moment, keyed by `name{labels}`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot(BTreeMap<String, Series>);

/// Reads the system's metrics endpoints.
pub struct Scraper {
    urls: Vec<String>,
    http: reqwest::Client,
}

impl Scraper {
    pub fn new(urls: Vec<String>) -> Scraper {
        Scraper {
            urls,
            http: reqwest::Client::new(),
        }
    }

    /// Every endpoint's histograms now; an endpoint that does not answer is left out (and said).
    pub async fn snapshot(&self) -> Snapshot {
        let mut all = Snapshot::default();
        for url in &self.urls {
            let text = match self.http.get(url).send().await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(err) => {
                    println!("  (metrics {url} did not answer: {err})");
                    continue;
                }
            };
            // Several processes record the same series (services run apart): add them up.
            for (key, series) in parse(&text).0 {
                let entry = all.0.entry(key).or_default();
                entry.sum += series.sum;
                entry.count += series.count;
                if entry.buckets.is_empty() {
                    entry.buckets = series.buckets;
                } else {
                    for (mine, theirs) in entry.buckets.iter_mut().zip(series.buckets) {
                        mine.1 += theirs.1;
                    }
                }
            }
        }
        all
    }
}

/// The text exposition format's `_seconds` histograms.
fn parse(text: &str) -> Snapshot {
    let mut all: BTreeMap<String, Series> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match name_labels.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (name_labels, ""),
        };
        let mut labels: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
        if let Some(base) = name.strip_suffix("_seconds_bucket") {
            let Some(le) = labels
                .iter()
                .position(|l| l.starts_with("le="))
                .map(|i| labels.remove(i))
            else {
                continue;
            };
            let bound = le.trim_start_matches("le=").trim_matches('"');
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().unwrap_or(f64::INFINITY)
            };
            series(&mut all, base, &labels).buckets.push((bound, value));
        } else if let Some(base) = name.strip_suffix("_seconds_sum") {
            series(&mut all, base, &labels).sum = value;
        } else if let Some(base) = name.strip_suffix("_seconds_count") {
            series(&mut all, base, &labels).count = value;
        }
    }
    Snapshot(all)
}

fn series<'a>(all: &'a mut BTreeMap<String, Series>, base: &str, labels: &[&str]) -> &'a mut Series {
    let key = if labels.is_empty() {
        base.to_owned()
    } else {
        format!("{base}{{{}}}", labels.join(","))
    };
    all.entry(key).or_default()
}

impl Snapshot {
    /// What was recorded between `earlier` and `self`, as printable lines (series with samples).
    pub fn since(&self, earlier: &Snapshot) -> Vec<String> {
        let mut lines = Vec::new();
        for (key, now) in &self.0 {
            let before = earlier.0.get(key).cloned().unwrap_or_default();
            let count = now.count - before.count;
            if count < 1.0 {
                continue;
            }
            let buckets: Vec<(f64, f64)> = now
                .buckets
                .iter()
                .enumerate()
                .map(|(i, (bound, n))| (*bound, n - before.buckets.get(i).map_or(0.0, |b| b.1)))
                .collect();
            let mean = (now.sum - before.sum) / count;
            lines.push(format!(
                "    {key:<64} {count:>9.0}  mean {:>9}  p50 {:>9}  p99 {:>9}",
                millis(mean),
                millis(quantile(&buckets, count, 0.50)),
                millis(quantile(&buckets, count, 0.99)),
            ));
        }
        lines
    }
}

/// The `q` quantile, interpolated linearly inside its bucket (as Prometheus's
/// `histogram_quantile` does); past the last finite bound it is that bound.
fn quantile(buckets: &[(f64, f64)], count: f64, q: f64) -> f64 {
    let rank = q * count;
    let mut lower = (0.0, 0.0);
    for &(bound, cumulative) in buckets {
        if cumulative >= rank {
            if bound.is_infinite() {
                return lower.0;
            }
            let inside = cumulative - lower.1;
            let fraction = if inside > 0.0 { (rank - lower.1) / inside } else { 1.0 };
            return lower.0 + (bound - lower.0) * fraction;
        }
        lower = (bound, cumulative);
    }
    lower.0
}

fn millis(seconds: f64) -> String {
    if seconds < 0.001 {
        format!("{:.0} µs", seconds * 1e6)
    } else {
        format!("{:.1} ms", seconds * 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# TYPE amba_rpc_client_seconds histogram
amba_rpc_client_seconds_bucket{service=\"attribution\",method=\"report_batch\",le=\"0.001\"} 0
amba_rpc_client_seconds_bucket{service=\"attribution\",method=\"report_batch\",le=\"0.01\"} 10
amba_rpc_client_seconds_bucket{service=\"attribution\",method=\"report_batch\",le=\"+Inf\"} 10
amba_rpc_client_seconds_sum{service=\"attribution\",method=\"report_batch\"} 0.05
amba_rpc_client_seconds_count{service=\"attribution\",method=\"report_batch\"} 10
amba_outbox_published_total 7
";
    const AFTER: &str = "\
amba_rpc_client_seconds_bucket{service=\"attribution\",method=\"report_batch\",le=\"0.001\"} 50
amba_rpc_client_seconds_bucket{service=\"attribution\",method=\"report_batch\",le=\"0.01\"} 110
amba_rpc_client_seconds_bucket{service=\"attribution\",method=\"report_batch\",le=\"+Inf\"} 110
amba_rpc_client_seconds_sum{service=\"attribution\",method=\"report_batch\"} 0.35
amba_rpc_client_seconds_count{service=\"attribution\",method=\"report_batch\"} 110
amba_writer_queue_seconds_bucket{le=\"0.001\"} 0
amba_writer_queue_seconds_bucket{le=\"+Inf\"} 0
amba_writer_queue_seconds_sum 0
amba_writer_queue_seconds_count 0
";

    #[test]
    fn a_phase_shows_only_its_own_samples() {
        let lines = parse(AFTER).since(&parse(BEFORE));
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(
            line.contains("amba_rpc_client{service=\"attribution\",method=\"report_batch\"}"),
            "{line}"
        );
        // 100 new samples, 0.30 s between them: a 3 ms mean; half of them at most 1 ms.
        assert!(line.contains("100  mean    3.0 ms"), "{line}");
        assert!(line.contains("p50    1.0 ms"), "{line}");
        // p99: rank 99 of 100, the 49th of the 50 samples in (1 ms, 10 ms].
        assert!(line.contains("p99    9.8 ms"), "{line}");
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let buckets = [(0.001, 0.0), (0.01, 100.0), (f64::INFINITY, 100.0)];
        assert!((quantile(&buckets, 100.0, 0.5) - 0.0055).abs() < 1e-12);
        let beyond = [(0.001, 0.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(&beyond, 10.0, 0.5), 0.001);
    }
}
