//! How far the commission ledger trails ingest, read from the database: the report → booked lag
//! (a conversion's `recorded_at` in attribution to its `accrue` posting in the ledger's journal)
//! for the conversions recorded in a time window, and how long the ledger takes to book every
//! approved conversion of the program once ingest stops (with the booking rate meanwhile: the
//! ledger's throughput with a backlog and ingest idle).

use chrono::{DateTime, Utc};
use sqlx::Connection;
use std::time::{Duration, Instant};

pub struct Lag {
    pub count: i64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Lag {
    pub fn print(&self, what: &str) {
        println!(
            "{what}: {} conversions booked, p50 {:.0} ms, p99 {:.0} ms",
            self.count, self.p50_ms, self.p99_ms
        );
    }
}

/// Report → booked lag of the program's approved conversions recorded in `[from, to)`.
pub async fn booked_lag(
    database_url: &str,
    program_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<Lag> {
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    let (count, p50, p99): (i64, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT count(*), \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM j.posted_at - c.recorded_at)), \
           percentile_cont(0.99) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM j.posted_at - c.recorded_at)) \
         FROM attribution.conversions c \
         JOIN commission.journal j ON j.idem_key = 'accrue:' || c.conversion_id || ':0' \
         WHERE c.program_id = $1 AND c.status = 'approved' AND c.recorded_at >= $2 AND c.recorded_at < $3",
    )
    .bind(program_id)
    .bind(from)
    .bind(to)
    .fetch_one(&mut conn)
    .await?;
    Ok(Lag {
        count,
        p50_ms: p50.unwrap_or_default() * 1_000.0,
        p99_ms: p99.unwrap_or_default() * 1_000.0,
    })
}

pub struct CatchUp {
    /// The program's approved conversions (attribution's count when ingest stopped).
    pub approved: i64,
    /// Approved conversions the ledger still had to book when ingest stopped.
    pub backlog: i64,
    /// How long until every approved conversion was booked; `None`: not within the timeout.
    pub after: Option<Duration>,
    /// Attribution events (one per approved conversion here) the ledger settled per second while
    /// catching up.
    pub rate: f64,
}

/// Waits (up to `timeout`) until the ledger has booked every approved conversion of the program;
/// `after` counts from `phase_end` (when ingest stopped). Progress is polled cheaply from the
/// commission consumer's position on NATS (a count over the journal every 250 ms would itself
/// load the database); the database confirms the end.
pub async fn catch_up(
    database_url: &str,
    nats_url: &str,
    namespace: &str,
    program_id: &str,
    phase_end: Instant,
    timeout: Duration,
) -> anyhow::Result<CatchUp> {
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    let approved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM attribution.conversions WHERE program_id = $1 AND status = 'approved'",
    )
    .bind(program_id)
    .fetch_one(&mut conn)
    .await?;
    let at_start = booked(&mut conn, program_id).await?;
    println!(
        "ledger: waiting for it to book {} approved conversions",
        approved - at_start
    );
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    let (stream, durable) = (
        nats_name(&format!("{namespace}_evt_attribution")),
        nats_name(&format!("{namespace}_commission_attribution")),
    );
    let started = Instant::now();
    // The rate counts from the first progress seen: a ledger started only now (a commission
    // service brought up after the phase, to measure a full backlog) is timed from its start.
    let mut first_progress: Option<(Instant, u64)> = None;
    let (mut settled, mut last) = (0u64, at_start);
    while started.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(mut consumer) = js
            .get_stream(&stream)
            .await?
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&durable)
            .await
        else {
            continue; // not created yet: the commission service has not started
        };
        let info = consumer.info().await?;
        if first_progress.is_none() && settled > 0 && info.ack_floor.stream_sequence > settled {
            first_progress = Some((Instant::now(), info.ack_floor.stream_sequence));
        }
        settled = info.ack_floor.stream_sequence;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            last = booked(&mut conn, program_id).await?;
            if last >= approved {
                break;
            }
        }
    }
    let rate = first_progress.map_or(0.0, |(from, from_seq)| {
        settled.saturating_sub(from_seq) as f64 / from.elapsed().as_secs_f64().max(0.001)
    });
    Ok(CatchUp {
        approved,
        backlog: approved - at_start,
        after: (last >= approved).then(|| phase_end.elapsed()),
        rate,
    })
}

/// Approved conversions of the program the ledger has booked so far.
pub async fn booked_count(database_url: &str, program_id: &str) -> anyhow::Result<i64> {
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    Ok(booked(&mut conn, program_id).await?)
}

async fn booked(conn: &mut sqlx::PgConnection, program_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM commission.journal WHERE kind = 'accrue' AND program_id = $1 AND idem_key LIKE '%:0'",
    )
    .bind(program_id)
    .fetch_one(conn)
    .await
}

/// Every durable consumer of the run's namespace has taken and settled every event: the ledger,
/// e-mail, the feed, payouts — not only the ledger. Some consumers may wait while ingest runs
/// (in one process they share a database budget); this says when the last one had caught up,
/// counted from the end of the streaming phase, and which it was. `None`: not within `timeout`.
pub async fn every_consumer_caught_up(
    nats_url: &str,
    namespace: &str,
    phase_end: Instant,
    timeout: Duration,
) -> anyhow::Result<Option<(Duration, String)>> {
    use futures::TryStreamExt;
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    let prefix = nats_name(&format!("{namespace}_"));
    let started = Instant::now();
    let mut last_behind = "none (all had caught up with the ledger)".to_owned();
    while started.elapsed() < timeout {
        let names: Vec<String> = js.stream_names().try_collect().await?;
        let mut behind = None;
        for name in names.iter().filter(|n| n.starts_with(&prefix)) {
            let stream = js.get_stream(name).await?;
            let infos: Vec<async_nats::jetstream::consumer::Info> = stream.consumers().try_collect().await?;
            if let Some(info) = infos.iter().find(|i| i.num_pending > 0 || i.num_ack_pending > 0) {
                behind = Some(info.name.clone());
                break;
            }
        }
        match behind {
            None => return Ok(Some((phase_end.elapsed(), last_behind))),
            Some(name) => last_behind = name,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(None)
}

/// A stream or durable consumer name as the system spells it: upper case, `_` for `-` and `.`.
fn nats_name(name: &str) -> String {
    name.replace(['-', '.'], "_").to_ascii_uppercase()
}
