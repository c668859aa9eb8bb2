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
    /// Approved conversions the ledger still had to book when ingest stopped.
    pub backlog: i64,
    /// How long until every approved conversion was booked; `None`: not within the timeout.
    pub after: Option<Duration>,
    /// Conversions booked per second while catching up.
    pub rate: f64,
}

/// Waits (up to `timeout`) until the ledger has booked every approved conversion of the program.
pub async fn catch_up(database_url: &str, program_id: &str, timeout: Duration) -> anyhow::Result<CatchUp> {
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    let approved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM attribution.conversions WHERE program_id = $1 AND status = 'approved'",
    )
    .bind(program_id)
    .fetch_one(&mut conn)
    .await?;
    let started = Instant::now();
    let at_start = booked(&mut conn, program_id).await?;
    let mut last = at_start;
    while last < approved && started.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = booked(&mut conn, program_id).await?;
    }
    let elapsed = started.elapsed();
    Ok(CatchUp {
        backlog: approved - at_start,
        after: (last >= approved).then_some(elapsed),
        rate: (last - at_start) as f64 / elapsed.as_secs_f64().max(0.001),
    })
}

async fn booked(conn: &mut sqlx::PgConnection, program_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM commission.journal WHERE kind = 'accrue' AND program_id = $1")
        .bind(program_id)
        .fetch_one(conn)
        .await
}
