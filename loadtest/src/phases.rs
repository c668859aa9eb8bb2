//! The load phases. Each runs its callers until its deadline or the shared count bound.

use crate::setup::World;
use crate::{Options, percentile_ms};
use amba_proto::v1::conversions_client::ConversionsClient;
use amba_proto::wire as pb;
use amba_testkit::McpClient;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a phase measured.
pub struct Outcome {
    pub ok: u64,
    pub failed: u64,
    /// Of the failed, those the system refused with `RATE_LIMITED` (a per-org budget or the
    /// per-org cap of calls in flight): the run measured the budgets, not the system.
    pub limited: u64,
    pub elapsed: Duration,
    /// Per call (unary, MCP) or per stream batch, in microseconds.
    pub latencies_us: Vec<u64>,
    pub unit: &'static str,
}

impl Outcome {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn print(&self, name: &str) {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let limited = if self.limited > 0 {
            format!(" ({} of them RATE_LIMITED)", self.limited)
        } else {
            String::new()
        };
        println!(
            "{name}: {} ok, {} failed{limited} in {:.1} s = {:.0} conversions/s; latency per {} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.ok,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.unit,
            percentile_ms(&sorted, 50.0),
            percentile_ms(&sorted, 99.0),
            percentile_ms(&sorted, 100.0),
        );
    }
}

/// What one load task counted: (ok, failed, of them rate limited, latencies in microseconds).
type Counts = anyhow::Result<(u64, u64, u64, Vec<u64>)>;

/// Waits for a phase's tasks and adds up what they counted.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Counts>>,
    started: Instant,
    unit: &'static str,
) -> anyhow::Result<Outcome> {
    let parts: Vec<Counts> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.map_err(anyhow::Error::from).and_then(|r| r))
        .collect();
    let elapsed = started.elapsed();
    let mut outcome = Outcome {
        ok: 0,
        failed: 0,
        limited: 0,
        elapsed,
        latencies_us: Vec::new(),
        unit,
    };
    for part in parts {
        let (ok, failed, limited, latencies) = part?;
        outcome.ok += ok;
        outcome.failed += failed;
        outcome.limited += limited;
        outcome.latencies_us.extend(latencies);
    }
    Ok(outcome)
}

/// `streams` concurrent client streams of `batch` reports each, again and again.
pub async fn streaming(options: &Options, world: &World) -> anyhow::Result<Outcome> {
    println!(
        "streaming: {} streams × {} reports per stream, {} s",
        options.streams,
        options.batch,
        options.duration.as_secs()
    );
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + options.duration;
    let mut tasks = Vec::new();
    for stream_index in 0..options.streams {
        let (grpc, issued, batch, max) = (
            options.grpc.clone(),
            issued.clone(),
            options.batch as u64,
            options.max_count,
        );
        let world = world.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = ConversionsClient::connect(grpc)
                .await?
                .max_decoding_message_size(256 * 1024 * 1024);
            let (mut ok, mut failed, mut limited, mut latencies) = (0u64, 0u64, 0u64, Vec::new());
            let mut round = 0u64;
            while Instant::now() < deadline {
                let first = issued.fetch_add(batch, Ordering::Relaxed);
                if first >= max {
                    break;
                }
                let items: Vec<pb::ReportConversionRequest> = (0..batch)
                    .map(|i| world.report(&format!("s{stream_index}-{round}-{i}"), 1_000 + (i % 9_000) as i64))
                    .collect();
                round += 1;
                let sent = Instant::now();
                let reply = client
                    .report_conversions(world.authed(futures::stream::iter(items))?)
                    .await
                    .map_err(crate::refused)?
                    .into_inner();
                latencies.push(sent.elapsed().as_micros() as u64);
                for outcome in reply.outcomes {
                    match outcome.result {
                        Some(pb::report_outcome::Result::Ok(_)) => ok += 1,
                        Some(pb::report_outcome::Result::Error(e)) if e.code == "RATE_LIMITED" => {
                            failed += 1;
                            limited += 1;
                        }
                        _ => failed += 1,
                    }
                }
            }
            anyhow::Ok((ok, failed, limited, latencies))
        }));
    }
    gather(tasks, started, "stream of a batch").await
}

/// `unary_callers` concurrent callers, one report per call.
pub async fn unary(options: &Options, world: &World) -> anyhow::Result<Outcome> {
    println!(
        "unary: {} concurrent callers, {} s",
        options.unary_callers,
        options.unary_seconds.as_secs()
    );
    let channel = tonic::transport::Channel::from_shared(options.grpc.clone())?
        .connect()
        .await?;
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + options.unary_seconds;
    let mut tasks = Vec::new();
    for caller in 0..options.unary_callers {
        let (channel, issued, max) = (channel.clone(), issued.clone(), options.max_count);
        let world = world.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = ConversionsClient::new(channel);
            let (mut ok, mut failed, mut limited, mut latencies) = (0u64, 0u64, 0u64, Vec::new());
            let mut n = 0u64;
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max {
                let report = world.report(&format!("u{caller}-{n}"), 2_500);
                n += 1;
                let sent = Instant::now();
                let result = client.report_conversion(world.authed(report)?).await;
                latencies.push(sent.elapsed().as_micros() as u64);
                match result {
                    Ok(_) => ok += 1,
                    Err(status) => {
                        failed += 1;
                        limited += u64::from(status.code() == tonic::Code::ResourceExhausted);
                    }
                }
            }
            anyhow::Ok((ok, failed, limited, latencies))
        }));
    }
    gather(tasks, started, "call").await
}

/// `mcp_callers` MCP clients (streamable HTTP), one `amba_affiliate_conversion_report` per call.
pub async fn mcp(options: &Options, world: &World) -> anyhow::Result<Outcome> {
    println!(
        "mcp: {} concurrent clients, {} s",
        options.mcp_callers,
        options.mcp_seconds.as_secs()
    );
    let started = Instant::now();
    let deadline = started + options.mcp_seconds;
    let mut tasks = Vec::new();
    for caller in 0..options.mcp_callers {
        let url = format!("{}/mcp", options.http);
        let world = world.clone();
        tasks.push(tokio::spawn(async move {
            let client = McpClient::connect(&url, Some(&world.owner_token)).await?;
            let (mut ok, mut failed, mut limited, mut latencies) = (0u64, 0u64, 0u64, Vec::new());
            let mut n = 0u64;
            while Instant::now() < deadline {
                let external_id = format!("m{caller}-{n}");
                let args = json!({"program_id": world.program_id, "project_id": format!("load-{}", world.run),
                                  "amount_minor": 4_200, "currency": "USD", "code": world.code_for(&external_id),
                                  "external_id": external_id});
                n += 1;
                let sent = Instant::now();
                let result = client.call("amba_affiliate_conversion_report", args).await;
                latencies.push(sent.elapsed().as_micros() as u64);
                match result {
                    Ok(r) if r.is_error != Some(true) => ok += 1,
                    Ok(r) => {
                        failed += 1;
                        let code = r.structured_content.as_ref().map(|c| &c["error"]["code"]);
                        limited += u64::from(code.is_some_and(|c| c == "RATE_LIMITED"));
                    }
                    Err(_) => failed += 1,
                }
            }
            client.close().await?;
            anyhow::Ok((ok, failed, limited, latencies))
        }));
    }
    gather(tasks, started, "call").await
}
