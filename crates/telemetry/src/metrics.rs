//! Prometheus metrics: one recorder per process, rendered at `/metrics` on `AMBA_METRICS_ADDR`
//! (never the public port). Code records through the `metrics` macros; names start with
//! `amba_`, durations are `_seconds` histograms.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// Seconds: 100 µs … 60 s (the short end splits a report's few milliseconds into its stages).
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Batch sizes: 1 … 5,000.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 5_000.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus handle, installing the recorder on first use. `None` only when some
/// other recorder was installed first.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), BATCH_BUCKETS))
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Folds recorded histogram samples into their buckets every few seconds until `stop`. Without
/// it samples would pile up in memory until the next scrape (or forever, when nobody scrapes).
pub async fn upkeep_until(stop: impl std::future::Future<Output = ()>) {
    let Some(handle) = prometheus() else { return };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// The text exposition format of every metric recorded so far.
pub fn render() -> String {
    prometheus().map(PrometheusHandle::render).unwrap_or_default()
}

/// Seconds since a Unix-millisecond timestamp (0 when it lies in the future).
pub fn seconds_since_millis(millis: u64) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    now.saturating_sub(u128::from(millis)) as f64 / 1_000.0
}

/// Splits one piece of work into named stages: each [`Stages::lap`] records the time since the
/// previous one into `<name>{stage="…"}`, so `/metrics` shows where a cycle's time goes.
pub struct Stages {
    name: &'static str,
    last: std::time::Instant,
}

impl Stages {
    pub fn start(name: &'static str) -> Stages {
        Stages {
            name,
            last: std::time::Instant::now(),
        }
    }

    /// Records the time since the last lap (or the start) as `stage`.
    pub fn lap(&mut self, stage: &'static str) {
        let now = std::time::Instant::now();
        metrics::histogram!(self.name, "stage" => stage).record(now.duration_since(self.last).as_secs_f64());
        self.last = now;
    }
}
