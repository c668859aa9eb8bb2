//! The system process's resident memory, sampled once a second through the whole run, so a
//! working set that levels off can be told from one that keeps growing with volume.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Resident memory of a process in MiB, from /proc.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// (seconds since the sampler started, MiB)
type Samples = Arc<Mutex<Vec<(f64, f64)>>>;

pub struct Sampler {
    samples: Samples,
    started: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let samples: Samples = Arc::default();
        let started = Instant::now();
        let task = tokio::spawn({
            let samples = samples.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let Some(mib) = rss_mib(pid) else { return };
                    if let Ok(mut samples) = samples.lock() {
                        samples.push((started.elapsed().as_secs_f64(), mib));
                    }
                }
            }
        });
        Sampler { samples, started, task }
    }

    /// Seconds since the sampler started: marks a phase's bounds.
    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The samples taken in `[from, to)`, one per `step` seconds.
    pub fn series(&self, from: f64, to: f64, step: f64) -> Vec<f64> {
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        let mut series = Vec::new();
        let mut next = from;
        for (at, mib) in samples {
            if at >= next && at < to {
                series.push(mib);
                next = at + step;
            }
        }
        series
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
