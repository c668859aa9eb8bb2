//! End-to-end lag: from a report being accepted (its `recorded_at`) to the event announcing the
//! new conversion arriving on NATS, i.e. committed, relayed from the outbox and stored by JetStream.

use crate::{Options, percentile_ms};
use amba_proto::wire as pb;
use futures::StreamExt;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Monitor {
    seen: Arc<Mutex<(u64, Vec<u64>)>>,
}

pub struct Lags {
    count: u64,
    sorted_us: Vec<u64>,
}

impl Monitor {
    pub async fn start(options: &Options) -> anyhow::Result<Monitor> {
        let nats = async_nats::connect(&options.nats).await?;
        // A new conversion is announced once: `recorded`, or `approved` when approved on arrival.
        let mut events = nats
            .subscribe(format!("{}.evt.conversion.*", options.namespace))
            .await?;
        nats.flush().await?;
        let seen = Arc::new(Mutex::new((0u64, Vec::new())));
        let sink = seen.clone();
        tokio::spawn(async move {
            let _keep = nats;
            while let Some(message) = events.next().await {
                let Ok(event) = pb::ConversionChanged::decode(message.payload) else {
                    continue;
                };
                if !event.previous_status.is_empty() {
                    continue; // a later decision, not a new conversion
                }
                let recorded = event.conversion.map(|c| c.recorded_at_micros).unwrap_or_default();
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_micros() as i64)
                    .unwrap_or_default();
                if let Ok(mut seen) = sink.lock() {
                    seen.0 += 1;
                    seen.1.push(u64::try_from(now - recorded).unwrap_or(0));
                }
            }
        });
        Ok(Monitor { seen })
    }

    /// Waits until `count` events arrived since the last `take`; returns how long that took.
    pub async fn wait_for(&self, count: u64, limit: Duration) -> Option<Duration> {
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            if self.seen.lock().map(|s| s.0 >= count).unwrap_or(false) {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The lags seen so far, resetting the counters.
    pub fn take(&self) -> Lags {
        let (count, mut sorted_us) = self
            .seen
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        sorted_us.sort_unstable();
        Lags { count, sorted_us }
    }
}

impl Lags {
    pub fn print(&self, title: &str) {
        println!(
            "{title}: {} events, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.count,
            percentile_ms(&self.sorted_us, 50.0),
            percentile_ms(&self.sorted_us, 99.0),
            percentile_ms(&self.sorted_us, 100.0)
        );
    }
}
