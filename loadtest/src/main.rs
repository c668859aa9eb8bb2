//! `amba-loadtest`: drives a running Amba Affiliate through its public surfaces and prints
//! throughput, latency, end-to-end event lag and the database floor measured in the same run.
//!
//! ```text
//! cargo run --release -p amba-loadtest -- [--duration 60] [--streams 8] [--batch 5000]
//!     [--unary-callers 64] [--unary-seconds 20] [--mcp-callers 8] [--mcp-seconds 10] [--max-count 3000000]
//!     [--http http://127.0.0.1:8080] [--grpc http://127.0.0.1:50051]
//!     [--database-url postgres://postgres@127.0.0.1:5432/amba] [--nats nats://127.0.0.1:4222] [--namespace amba]
//!     [--pid <system pid>] [--service-pid NAME=PID ...] [--ledger-wait 600] [--affiliates 1]
//! ```
//! (`amba-loadtest --help` describes each flag; `--database-url`, `--nats` and `--namespace` also
//! read AMBA_DATABASE_URL, AMBA_NATS_URL and AMBA_NAMESPACE.)
//! `--affiliates N` enrolls N affiliates and skews the reports: half go to the hottest 1 %.
//! `--service-pid NAME=PID` (repeatable, e.g. `--service-pid notification=1234 --service-pid
//! edge=1240`) names the processes of services run apart (`amba serve <service>`): the summary
//! prints each one's CPU time over the run and per phase, with the `--pid` process's, the local
//! nats-server's (the first one found; name another with `--service-pid`) and the tool's own, its
//! share of the listed processes' CPU and of the machine's (cores × wall time), the machine's idle
//! share per phase, and each one's CPU per report in the load phases. The summary also prints
//! the e-mails the run made the notification service write (`notification.emails`): by status,
//! by template, per 100 approved conversions and still queued at the end.
//! `--metrics URL` (repeatable, one per process serving `AMBA_METRICS_ADDR`) prints, per phase,
//! where the time went: every `_seconds` histogram the system recorded during that phase
//! (edge batch wait, NATS request, server queue and handler, writer queue and commit, relay lag,
//! consumer groups, e-mail sends) with its count, mean, p50 and p99.
//! Loopback only: every target must be 127.0.0.0/8 or localhost. Every phase is bounded by its
//! time and by `--max-count`, so the tool always stops by itself.
//!
//! The tool pushes far more from one org than the edge's per-org budgets let a real shop send:
//! start the system with the budgets of docs/performance.md ([`BUDGETS_HINT`]). A call refused
//! with `RATE_LIMITED` is counted apart, and a run that saw any fails after printing its figures.

mod cpu;
mod database_cpu;
mod floor;
mod lag;
mod ledger;
mod mails;
mod memory;
mod phases;
mod setup;
mod stages;

use clap::Parser;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Options {
    pub http: String,
    pub grpc: String,
    pub database_url: String,
    pub nats: String,
    pub namespace: String,
    pub duration: Duration,
    pub streams: usize,
    pub batch: usize,
    pub unary_callers: usize,
    pub unary_seconds: Duration,
    pub mcp_callers: usize,
    pub mcp_seconds: Duration,
    pub max_count: u64,
    pub pid: Option<u32>,
    /// Processes of services run apart, whose CPU time to measure (`--service-pid NAME=PID`).
    pub service_pids: Vec<(String, u32)>,
    /// The system's Prometheus endpoints (`--metrics`), read at the bounds of each phase.
    pub metrics: Vec<String>,
    /// How long to wait for the commission ledger to book every approved conversion after the
    /// streaming phase (`--ledger-wait`, seconds).
    pub ledger_wait: Duration,
    /// Affiliates enrolled and reported for (`--affiliates`).
    pub affiliates: usize,
}

/// Load generator for a running Amba Affiliate on this machine: gRPC streaming and unary
/// reports, MCP reports, end-to-end event lag, the commission ledger's catch-up and the database
/// floor, measured in one run.
#[derive(Debug, Parser)]
#[command(
    name = "amba-loadtest",
    version,
    after_help = "Loopback only: every target must be 127.0.0.0/8 or localhost. Every phase is bounded by its \
                  time and by --max-count, so the tool always stops by itself."
)]
struct Cli {
    /// The edge's HTTP URL (MCP)
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    http: String,
    /// The edge's gRPC URL
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:50051")]
    grpc: String,
    /// The system's PostgreSQL database (the ledger and the floor are measured there)
    #[arg(
        long,
        value_name = "URL",
        env = "AMBA_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/amba"
    )]
    database_url: String,
    /// The system's NATS (event lag)
    #[arg(
        long,
        value_name = "URL",
        env = "AMBA_NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: String,
    /// The system's namespace
    #[arg(long, value_name = "NAME", env = "AMBA_NAMESPACE", default_value = "amba")]
    namespace: String,
    /// Seconds of the gRPC streaming phase
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    duration: u64,
    /// Concurrent gRPC client streams
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Reports per client stream
    #[arg(long, default_value_t = 5_000)]
    batch: usize,
    /// Concurrent gRPC unary callers
    #[arg(long, value_name = "CALLERS", default_value_t = 64)]
    unary_callers: usize,
    /// Seconds of the gRPC unary phase
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    unary_seconds: u64,
    /// Concurrent MCP clients
    #[arg(long, value_name = "CALLERS", default_value_t = 8)]
    mcp_callers: usize,
    /// Seconds of the MCP phase
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    mcp_seconds: u64,
    /// At most this many reports in any phase
    #[arg(long, value_name = "COUNT", default_value_t = 3_000_000)]
    max_count: u64,
    /// The system process whose memory and CPU time to watch [default: a running `amba dev` or
    /// `amba serve`]
    #[arg(long)]
    pid: Option<u32>,
    /// A service's process, whose CPU time to measure (services run apart: `amba serve
    /// <service>`); repeatable: --service-pid notification=1234 --service-pid edge=1240
    #[arg(long = "service-pid", value_name = "NAME=PID", value_parser = parse_service_pid)]
    service_pid: Vec<(String, u32)>,
    /// A process's Prometheus endpoint (its AMBA_METRICS_ADDR), read at the bounds of each phase
    /// to print where the phase's time went; repeatable, one per process
    #[arg(long, value_name = "URL")]
    metrics: Vec<String>,
    /// Seconds to wait for the commission ledger to book every approved conversion after the
    /// streaming phase
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    ledger_wait: u64,
    /// Affiliates enrolled and reported for; the reports are skewed: half go to the hottest 1 %
    #[arg(long, value_name = "COUNT", default_value_t = 1)]
    affiliates: usize,
}

impl Cli {
    fn into_options(self) -> anyhow::Result<Options> {
        let options = Options {
            http: self.http,
            grpc: self.grpc,
            database_url: self.database_url,
            nats: self.nats,
            namespace: self.namespace,
            duration: Duration::from_secs(self.duration),
            streams: self.streams,
            batch: self.batch,
            unary_callers: self.unary_callers,
            unary_seconds: Duration::from_secs(self.unary_seconds),
            mcp_callers: self.mcp_callers,
            mcp_seconds: Duration::from_secs(self.mcp_seconds),
            max_count: self.max_count,
            pid: self.pid,
            service_pids: self.service_pid,
            metrics: self.metrics,
            ledger_wait: Duration::from_secs(self.ledger_wait),
            affiliates: self.affiliates,
        };
        let targets = [&options.http, &options.grpc, &options.database_url, &options.nats];
        for url in targets.into_iter().chain(&options.metrics) {
            anyhow::ensure!(
                is_loopback(url),
                "{url} is not a loopback address: this tool only loads this machine"
            );
        }
        Ok(options)
    }
}

/// `NAME=PID` of `--service-pid`.
fn parse_service_pid(value: &str) -> Result<(String, u32), String> {
    let (name, pid) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not NAME=PID"))?;
    let pid = pid.trim().parse().map_err(|_| format!("{pid:?} is not a process id"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("{value:?} has no NAME"));
    }
    Ok((name.to_owned(), pid))
}

/// The processes whose CPU time to measure: the system process (`--pid` or the one found), every
/// `--service-pid`, the local nats-server and the load generator itself, each once. On one
/// machine they all share its cores: what the load generator and NATS take is not the system's.
fn cpu_processes(pid: Option<u32>, service_pids: &[(String, u32)]) -> anyhow::Result<Vec<(String, u32)>> {
    for (name, pid) in service_pids {
        anyhow::ensure!(
            cpu::ticks(*pid).is_some(),
            "--service-pid {name}={pid}: no such process"
        );
    }
    let mut processes = Vec::new();
    if let Some(pid) = pid.filter(|p| !service_pids.iter().any(|(_, s)| s == p)) {
        processes.push((cpu::describe(pid), pid));
    }
    processes.extend(service_pids.iter().cloned());
    let beside = [
        (
            "nats-server".to_owned(),
            find_process(|words| words.first().is_some_and(|w| w.ends_with(b"nats-server"))),
        ),
        ("amba-loadtest (this process)".to_owned(), Some(std::process::id())),
    ];
    for (name, pid) in beside {
        if let Some(pid) = pid.filter(|p| !processes.iter().any(|(_, listed)| listed == p)) {
            processes.push((name, pid));
        }
    }
    Ok(processes)
}

fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// The pid of a running `amba dev` / `amba serve` process, if one is found.
fn find_system_pid() -> Option<u32> {
    find_process(|words| {
        let is_amba = words.first().is_some_and(|w| w.ends_with(b"/amba") || *w == b"amba");
        let role = words.get(1).is_some_and(|w| *w == b"dev" || *w == b"serve");
        is_amba && role
    })
}

/// The first process whose command line (its words) `matches`.
fn find_process(matches: impl Fn(&[&[u8]]) -> bool) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let words: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            matches(&words).then_some(pid)
        })
}

/// What to do when the system's per-org budgets throttle the run.
pub const BUDGETS_HINT: &str = "the system's per-org budgets throttled the load test (RATE_LIMITED): start it with \
     AMBA_REPORTS_PER_ORG=100000000,10000000/s AMBA_CONFIGURATION_PER_ORG=100000,100000/s AMBA_IN_FLIGHT_PER_ORG=4096 \
     (docs/performance.md)";

/// A gRPC refusal, with the budgets hint when the system rate-limited the call.
pub fn refused(status: tonic::Status) -> anyhow::Error {
    if status.code() == tonic::Code::ResourceExhausted {
        anyhow::anyhow!("{status}: {BUDGETS_HINT}")
    } else {
        status.into()
    }
}

/// p-th percentile (0-100) of sorted microseconds, in milliseconds.
pub fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Cli::parse().into_options()?;
    let pid = options.pid.or_else(find_system_pid);
    let memory = pid.map(memory::Sampler::start);
    let rss_start = pid.and_then(memory::rss_mib);
    let mut cpu = cpu::Watch::start(cpu_processes(pid, &options.service_pids)?, "setup");
    let run_from = mails::database_now(&options.database_url).await?;
    println!(
        "amba-loadtest against {} / {} (system pid {pid:?})",
        options.http, options.grpc
    );

    let world = setup::prepare(&options).await?;
    let load_from = mails::database_now(&options.database_url).await?;
    let database_cpu = database_cpu::Sampler::start(&options.database_url).await;
    let database_totals = || {
        database_cpu
            .as_ref()
            .map(database_cpu::Sampler::totals)
            .unwrap_or_default()
    };
    let database_at_unary = database_totals();
    println!(
        "program {} with {} affiliates' codes ready ({} hot); owner token obtained by signup over MCP",
        world.program_id,
        world.codes.len(),
        world.hot
    );
    let lag = lag::Monitor::start(&options).await?;
    let scraper = stages::Scraper::new(options.metrics.clone());
    let at_unary = scraper.snapshot().await;

    // Unary and MCP first, on a quiet system; the streaming phase leaves a backlog for the
    // event consumers (commission) that would slow whatever ran after it.
    let unary_from = chrono::Utc::now();
    cpu.mark("unary");
    let unary = phases::unary(&options, &world).await?;
    let mcp_from = chrono::Utc::now();
    cpu.mark("MCP");
    // Sampled once a second: the unary phase's own figure is good to a second in twenty.
    let database_at_mcp = database_totals();
    let at_mcp = scraper.snapshot().await;
    let mcp = phases::mcp(&options, &world).await?;
    let mcp_to = chrono::Utc::now();
    let after_mcp = scraper.snapshot().await;
    let rss_warm = pid.and_then(memory::rss_mib);
    lag.wait_for(unary.ok + mcp.ok, Duration::from_secs(60)).await;
    let lag_calls = lag.take();
    let booked_before = ledger::booked_count(&options.database_url, &world.program_id).await?;
    let streaming_from = memory.as_ref().map(memory::Sampler::now);
    cpu.mark("streaming");
    let database_at_streaming = database_totals();
    let at_streaming = scraper.snapshot().await;
    let streaming = phases::streaming(&options, &world).await?;
    cpu.mark("catch-up");
    let database_after_streaming = database_totals();
    let after_streaming = scraper.snapshot().await;
    let streaming_to = memory.as_ref().map(memory::Sampler::now);
    let streaming_end = std::time::Instant::now();
    let booked_while_streaming = ledger::booked_count(&options.database_url, &world.program_id).await? - booked_before;
    let published = lag.wait_for(streaming.ok, Duration::from_secs(120)).await;
    let lag_streaming = lag.take();
    // The ledger with a backlog and ingest idle: how fast it books, and when it has caught up.
    let catch_up = ledger::catch_up(
        &options.database_url,
        &options.nats,
        &options.namespace,
        &world.program_id,
        streaming_end,
        options.ledger_wait,
    )
    .await?;
    let caught_up =
        ledger::every_consumer_caught_up(&options.nats, &options.namespace, streaming_end, options.ledger_wait).await?;
    cpu.mark("end");
    let database_at_end = database_totals();
    drop(database_cpu);
    let at_end = scraper.snapshot().await;
    let mails = mails::count(&options.database_url, run_from, load_from).await?;
    let booked_unary = ledger::booked_lag(&options.database_url, &world.program_id, unary_from, mcp_from).await?;
    let booked_mcp = ledger::booked_lag(&options.database_url, &world.program_id, mcp_from, mcp_to).await?;
    let floor = floor::measure(&options.database_url, streaming.ok.clamp(10_000, 1_000_000)).await?;
    let rss_end = pid.and_then(memory::rss_mib);

    println!();
    println!("== results ==");
    streaming.print("gRPC streaming");
    match published {
        Some(after) => println!(
            "  events published for every streamed conversion {:.1} s after the phase ended",
            after.as_secs_f64()
        ),
        None => println!("  NOT every streamed conversion's event was seen on NATS within 120 s"),
    }
    lag_streaming.print("  end-to-end lag, report accepted → its event published (streaming phase)");
    println!(
        "  ledger: booked {booked_while_streaming} conversions during the phase ({:.0}/s)",
        booked_while_streaming as f64 / streaming.elapsed.as_secs_f64().max(0.001)
    );
    match catch_up.after {
        Some(after) => println!(
            "  ledger: caught up {:.1} s after the phase ended; the {} approved conversions still unbooked when the events were out went at {:.0} conversions/s",
            after.as_secs_f64(),
            catch_up.backlog,
            catch_up.rate
        ),
        None => println!(
            "  ledger: NOT caught up within {} s; it booked {:.0} conversions/s of a {} backlog",
            options.ledger_wait.as_secs(),
            catch_up.rate,
            catch_up.backlog
        ),
    }
    match caught_up {
        Some((after, last)) => println!(
            "  every consumer (ledger, e-mail, feed, payouts) caught up {:.1} s after the phase ended (the last: {last})",
            after.as_secs_f64()
        ),
        None => println!(
            "  NOT every consumer caught up within {} s",
            options.ledger_wait.as_secs()
        ),
    }
    unary.print("gRPC unary");
    mcp.print("MCP (streamable HTTP)");
    lag_calls.print("  end-to-end lag (unary + MCP phases)");
    booked_unary.print("  report → commission booked (unary phase)");
    booked_mcp.print("  report → commission booked (MCP phase)");
    println!(
        "database floor: {:.0} rows/s ({} rows, 1,000-row INSERT ... SELECT unnest(...) batches, one connection, same unique index)",
        floor.rows_per_second, floor.rows
    );
    println!(
        "ratio streaming / floor: {:.2}",
        streaming.throughput() / floor.rows_per_second
    );
    println!(
        "ratio unary / floor:     {:.2}",
        unary.throughput() / floor.rows_per_second
    );
    match (rss_start, rss_warm, rss_end) {
        (Some(a), Some(w), Some(b)) => {
            println!(
                "system RSS: {a:.0} MiB idle at start, {w:.0} MiB after the unary and MCP phases, {b:.0} MiB at the end"
            )
        }
        _ => println!("system RSS: unknown (pass --pid)"),
    }
    for line in cpu.summary() {
        println!("{line}");
    }
    for (phase, name, items) in [
        ("unary", "gRPC unary", unary.ok),
        ("MCP", "MCP", mcp.ok),
        ("streaming", "gRPC streaming", streaming.ok),
    ] {
        if let Some(line) = cpu.per_item(phase, items) {
            println!("CPU per report, {name} (PostgreSQL's below): {line}");
        }
    }
    if database_at_end.is_empty() {
        println!("PostgreSQL CPU by client application: not measured (the tool could not list the backends)");
    } else {
        let phases = [
            database_cpu::Phase {
                name: "unary and MCP",
                from: &database_at_unary,
                to: &database_at_streaming,
                per: unary.ok + mcp.ok,
                per_what: "reports",
            },
            database_cpu::Phase {
                name: "unary",
                from: &database_at_unary,
                to: &database_at_mcp,
                per: unary.ok,
                per_what: "reports",
            },
            database_cpu::Phase {
                name: "streaming",
                from: &database_at_streaming,
                to: &database_after_streaming,
                per: streaming.ok,
                per_what: "reports",
            },
            database_cpu::Phase {
                name: "catch-up",
                from: &database_after_streaming,
                to: &database_at_end,
                per: u64::try_from(catch_up.backlog).unwrap_or(0),
                per_what: "conversions booked",
            },
            // Each service's whole cost per report, wherever its work fell (e-mail and the feed
            // do most of theirs after ingest stops).
            database_cpu::Phase {
                name: "the whole run",
                from: &database_at_unary,
                to: &database_at_end,
                per: unary.ok + mcp.ok + streaming.ok,
                per_what: "reports",
            },
        ];
        database_cpu::summary(&phases)
            .iter()
            .for_each(|line| println!("{line}"));
    }
    for line in mails::summary(mails.as_ref(), catch_up.approved) {
        println!("{line}");
    }
    if options.metrics.is_empty() {
        println!("where the time went: pass --metrics http://<AMBA_METRICS_ADDR>/metrics for each process");
    }
    for (phase, to, from) in [
        ("gRPC unary", &at_mcp, &at_unary),
        ("MCP", &after_mcp, &at_mcp),
        ("gRPC streaming", &after_streaming, &at_streaming),
        ("ledger catch-up after streaming", &at_end, &after_streaming),
    ] {
        let lines = to.since(from);
        if !lines.is_empty() {
            println!("where the time went, {phase} (count, mean, p50, p99 of each stage):");
            lines.iter().for_each(|line| println!("{line}"));
        }
    }
    let limited = streaming.limited + unary.limited + mcp.limited;
    if limited > 0 {
        println!("!! {limited} calls or reports were refused RATE_LIMITED: these figures measure the budgets");
    }
    if let (Some(memory), Some(from), Some(to)) = (&memory, streaming_from, streaming_to) {
        let series: Vec<String> = memory
            .series(from, to, 10.0)
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect();
        println!(
            "system RSS every 10 s of the streaming phase: {} MiB",
            series.join(", ")
        );
    }
    anyhow::ensure!(limited == 0, "{BUDGETS_HINT}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_documented_command_line_parses() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from([
            "amba-loadtest",
            "--database-url",
            "postgres://postgres@127.0.0.1:5432/amba_load",
            "--nats",
            "nats://127.0.0.1:4222",
            "--duration",
            "60",
            "--unary-seconds",
            "20",
            "--mcp-seconds",
            "10",
            "--ledger-wait",
            "600",
            "--affiliates",
            "1000",
            "--pid",
            "42",
            "--service-pid",
            "notification=1234",
            "--service-pid",
            "edge=1240",
            "--metrics",
            "http://127.0.0.1:9090/metrics",
        ])?;
        let options = cli.into_options()?;
        assert_eq!(options.database_url, "postgres://postgres@127.0.0.1:5432/amba_load");
        assert_eq!(options.unary_seconds, Duration::from_secs(20));
        assert_eq!((options.affiliates, options.pid, options.streams), (1000, Some(42), 8));
        assert_eq!(
            options.service_pids,
            [("notification".to_owned(), 1234), ("edge".to_owned(), 1240)]
        );
        assert!(Cli::try_parse_from(["amba-loadtest", "--service-pid", "notification"]).is_err());
        assert!(Cli::try_parse_from(["amba-loadtest", "--service-pid", "=12"]).is_err());
        assert!(Cli::try_parse_from(["amba-loadtest", "--service-pid", "edge=x"]).is_err());
        assert!(
            Cli::try_parse_from(["amba-loadtest", "--http", "http://10.0.0.1:8080"])?
                .into_options()
                .is_err()
        );
        assert_eq!(options.metrics, ["http://127.0.0.1:9090/metrics"]);
        assert!(
            Cli::try_parse_from(["amba-loadtest", "--metrics", "http://10.0.0.1:9090/metrics"])?
                .into_options()
                .is_err()
        );
        assert!(Cli::try_parse_from(["amba-loadtest", "--streams", "many"]).is_err());
        Ok(())
    }
}
