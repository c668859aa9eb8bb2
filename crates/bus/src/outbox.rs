//! The transactional outbox and its relay.
//!
//! A service writes its state change and the event announcing it in one transaction
//! ([`enqueue`]). The [`Relay`] later publishes the rows in batches with
//! `Nats-Msg-Id = event_id`, waits for every PubAck, and only then deletes them, in the same
//! transaction that locked them. A crash between publish and delete republishes the same ids,
//! which JetStream deduplicates (and consumer inboxes catch beyond the duplicate window), so every
//! committed event is delivered and no rolled-back one ever is. Rows in the outbox are exactly
//! the events not yet acknowledged.

use crate::events::OutboxEvent;
use async_nats::jetstream::{self, message::PublishMessage};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Adds `event` to the outbox inside the caller's transaction.
pub async fn enqueue(conn: &mut PgConnection, event: &OutboxEvent) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO outbox (event_id, subject, payload, traceparent) VALUES ($1, $2, $3, $4)")
        .bind(&event.event_id)
        .bind(&event.subject)
        .bind(&event.payload)
        .bind(&event.traceparent)
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds many events in one statement.
pub async fn enqueue_many(conn: &mut PgConnection, events: &[OutboxEvent]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    // The statement is the constant text of `enqueue_step`.
    bind_events(sqlx::query(sqlx::AssertSqlSafe(enqueue_step(1))), events)
        .execute(conn)
        .await?;
    Ok(())
}

/// The outbox insert as one step of a caller's own statement (`WITH …, queued AS (<this>) …`),
/// so that a hot path writes its rows and their events in one round trip. Its four parameters
/// start at `$first`; bind them with [`bind_events`].
pub fn enqueue_step(first: usize) -> String {
    let [a, b, c, d] = [first, first + 1, first + 2, first + 3];
    format!(
        "INSERT INTO outbox (event_id, subject, payload, traceparent) \
         SELECT * FROM UNNEST(${a}::text[], ${b}::text[], ${c}::bytea[], ${d}::text[])"
    )
}

/// Binds `events` as the next four parameters of `query`, for [`enqueue_step`].
pub fn bind_events<'q>(
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    events: &[OutboxEvent],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(events.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.subject.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.payload.as_slice()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.traceparent.as_str()).collect::<Vec<_>>())
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox query failed: {0}")]
    Database(#[from] sqlx::Error),
    #[error("publish failed: {0}")]
    Publish(String),
}

/// An unsent outbox row, locked by the relay's transaction while it is being published.
#[derive(Debug, sqlx::FromRow)]
pub struct PendingEvent {
    pub id: i64,
    pub event_id: String,
    pub subject: String,
    pub payload: Vec<u8>,
    pub traceparent: String,
}

/// Wakes the relay right after a commit instead of waiting for its next poll.
#[derive(Clone, Default)]
pub struct RelayWaker(Arc<Notify>);

impl RelayWaker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    js: jetstream::Context,
    waker: RelayWaker,
    batch_size: i64,
    poll_interval: Duration,
}

impl Relay {
    pub fn new(pool: PgPool, js: jetstream::Context, waker: RelayWaker) -> Self {
        Relay {
            pool,
            js,
            waker,
            batch_size: 1_000,
            poll_interval: Duration::from_millis(250),
        }
    }

    /// Publishes until `shutdown`, then flushes what is left once more.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        let mut resume = Resume::new(FULL_SCAN_INTERVAL, Instant::now());
        loop {
            match self.publish_batch(resume.next_after(Instant::now())).await {
                Ok(batch) => {
                    failures = 0;
                    resume.saw(batch.last_id);
                    if batch.count as i64 == self.batch_size {
                        continue; // more may be waiting
                    }
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    // What failed stays in the outbox, wherever it is numbered: look from the start.
                    resume.rescan();
                    tracing::warn!(error = %err, failures, "outbox relay failed; retrying");
                }
            }
            let backoff = self.poll_interval * 2u32.saturating_pow(failures.min(5));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.waker.0.notified() => {}
                _ = tokio::time::sleep(backoff) => {}
            }
        }
        if let Err(err) = self.publish_pending().await {
            tracing::warn!(error = %err, "final outbox flush failed; rows stay for the next start");
        }
    }

    /// One batch: lock rows, publish them all, await every PubAck, delete the acknowledged
    /// ones and set aside the ones that can never be published. Returns how many rows left
    /// the outbox; a transient failure of any row is an error (after the others were handled),
    /// so the relay backs off and retries that row.
    pub async fn publish_pending(&self) -> Result<usize, RelayError> {
        Ok(self.publish_batch(0).await?.count)
    }

    /// [`Relay::publish_pending`] for the rows numbered above `after_id`.
    async fn publish_batch(&self, after_id: i64) -> Result<Batch, RelayError> {
        let mut tx = self.pool.begin().await?;
        let batch = fetch_pending(&mut tx, after_id, self.batch_size).await?;
        let Some(last_id) = batch.last().map(|event| event.id) else {
            return Ok(Batch {
                count: 0,
                last_id: None,
            });
        };
        // The deletes need not wait for the disk: should a crash lose them, the rows are
        // published again with the same ids, which JetStream and the consumers' inboxes drop.
        // The writers' commits, which must wait, then share fewer flushes with the relay's.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let outcomes = publish(&self.js, &batch).await;
        let mut published = Vec::with_capacity(batch.len());
        let mut rejected = Vec::new();
        let mut retry = None;
        for (event, outcome) in batch.iter().zip(outcomes) {
            match outcome {
                Ok(()) => published.push(event),
                Err(PublishFailure::Permanent(reason)) => rejected.push((event, reason)),
                Err(PublishFailure::Transient(reason)) => retry = retry.or(Some(reason)),
            }
        }
        remove_published(&mut tx, &published).await?;
        set_aside(&mut tx, &rejected).await?;
        tx.commit().await?;
        record_published(&published);
        for (event, reason) in &rejected {
            tracing::error!(event_id = %event.event_id, subject = %event.subject, %reason,
                "event can never be published; moved to outbox_rejected");
        }
        amba_telemetry::metrics::counter!("amba_outbox_rejected_total").increment(rejected.len() as u64);
        match retry {
            Some(reason) => Err(RelayError::Publish(reason)),
            None => Ok(Batch {
                count: published.len() + rejected.len(),
                last_id: Some(last_id),
            }),
        }
    }
}

/// What one batch of the relay took out of the outbox.
struct Batch {
    count: usize,
    /// The highest id the batch saw; `None`: the outbox had nothing above where it looked.
    last_id: Option<i64>,
}

/// How often the relay looks through the whole outbox rather than above the last row it saw:
/// as often as it polls an idle outbox, so a row committed late waits no longer than it could
/// before; under load, a few scans a second instead of one per commit.
const FULL_SCAN_INTERVAL: Duration = Duration::from_millis(250);

/// Where the relay's next batch starts. Published rows are deleted, but their index entries
/// stay until the table is vacuumed, and a scan from the start walks every one of them (with
/// 103 k events sent, an empty outbox took 223 pages and 1.4 ms to read). So a batch starts
/// above the last row the relay saw. A row numbered lower that was not visible then (its
/// transaction took its number first and committed after a later one) is found by a scan from the
/// start, at least once every [`FULL_SCAN_INTERVAL`]: late by at most that, never lost.
#[derive(Debug)]
struct Resume {
    after_id: i64,
    full_scan_every: Duration,
    full_scan_due: Instant,
}

impl Resume {
    /// The first batch, at `now`, looks through everything.
    fn new(full_scan_every: Duration, now: Instant) -> Resume {
        Resume {
            after_id: 0,
            full_scan_every,
            full_scan_due: now,
        }
    }

    /// The id above which the next batch looks: 0 (everything) when a full scan is due.
    fn next_after(&mut self, now: Instant) -> i64 {
        if now >= self.full_scan_due {
            self.full_scan_due = now + self.full_scan_every;
            self.after_id = 0;
        }
        self.after_id
    }

    /// A batch saw rows up to `last_id` (`None`: none above where it looked).
    fn saw(&mut self, last_id: Option<i64>) {
        if let Some(id) = last_id {
            self.after_id = self.after_id.max(id);
        }
    }

    /// The next batch looks through the whole outbox.
    fn rescan(&mut self) {
        self.after_id = 0;
    }
}

/// How often a service reports its outbox's backlog (`amba_outbox_pending`,
/// `amba_outbox_oldest_age_seconds`): an outbox that stops draining is an alert.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// What waits in one service's outbox (`amba outbox status`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OutboxStatus {
    /// The schema (= service) whose outbox this is.
    pub schema: String,
    pub pending: i64,
    /// Age of the oldest unsent event; `None` when the outbox is empty.
    pub oldest_age_seconds: Option<f64>,
    /// Events set aside because they can never be published (`outbox_rejected`).
    pub rejected: i64,
}

/// Reads the backlog of the outbox in the pool's schema.
pub async fn status(pool: &PgPool) -> Result<OutboxStatus, sqlx::Error> {
    sqlx::query_as(
        "SELECT current_schema() AS schema, \
                (SELECT count(*) FROM outbox) AS pending, \
                (SELECT extract(epoch FROM now() - min(created_at))::float8 FROM outbox) AS oldest_age_seconds, \
                (SELECT count(*) FROM outbox_rejected) AS rejected",
    )
    .fetch_one(pool)
    .await
}

/// Reports the outbox's backlog as gauges every [`STATUS_INTERVAL`] until `shutdown` (one task
/// per service, beside its relays).
pub async fn report_status_until(pool: PgPool, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(STATUS_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => report_status(&pool).await,
        }
    }
}

async fn report_status(pool: &PgPool) {
    match status(pool).await {
        Ok(status) => {
            let service = status.schema.clone();
            amba_telemetry::metrics::gauge!("amba_outbox_pending", "service" => service.clone())
                .set(status.pending as f64);
            amba_telemetry::metrics::gauge!("amba_outbox_oldest_age_seconds", "service" => service.clone())
                .set(status.oldest_age_seconds.unwrap_or(0.0));
            amba_telemetry::metrics::gauge!("amba_outbox_rejected", "service" => service).set(status.rejected as f64);
        }
        Err(err) => tracing::debug!(error = %err, "outbox status unavailable"),
    }
}

/// Why one event was not published.
#[derive(Debug, Clone, PartialEq)]
pub enum PublishFailure {
    /// Retrying cannot help (the event is larger than the server accepts).
    Permanent(String),
    /// NATS or the stream is unavailable for now.
    Transient(String),
}

/// Throughput and lag (event made → stored by JetStream and gone from the outbox).
fn record_published(batch: &[&PendingEvent]) {
    amba_telemetry::metrics::counter!("amba_outbox_published_total").increment(batch.len() as u64);
    amba_telemetry::metrics::histogram!("amba_outbox_publish_batch_size").record(batch.len() as f64);
    let lag = amba_telemetry::metrics::histogram!("amba_outbox_publish_lag_seconds");
    for event in batch {
        if let Some(made) = amba_core::id::created_at_millis(&event.event_id) {
            lag.record(amba_telemetry::metrics::seconds_since_millis(made));
        }
    }
}

/// Locks up to `limit` rows numbered above `after_id`, in order; other relays (threads or
/// replicas) skip them.
pub async fn fetch_pending(
    tx: &mut Transaction<'_, Postgres>,
    after_id: i64,
    limit: i64,
) -> Result<Vec<PendingEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, event_id, subject, payload, traceparent FROM outbox \
         WHERE id > $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(after_id)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

/// Publishes a batch pipelined (all sends first, then all acks at once) with `Nats-Msg-Id = event_id`,
/// and tells for each event whether JetStream stored it.
pub async fn publish(js: &jetstream::Context, batch: &[PendingEvent]) -> Vec<Result<(), PublishFailure>> {
    use async_nats::jetstream::context::PublishErrorKind;
    let classify = |err: async_nats::jetstream::context::PublishError| match err.kind() {
        PublishErrorKind::MaxPayloadExceeded => PublishFailure::Permanent(err.to_string()),
        _ => PublishFailure::Transient(err.to_string()),
    };
    let mut acks = Vec::with_capacity(batch.len());
    for event in batch {
        let mut message = PublishMessage::build()
            .payload(event.payload.clone().into())
            .message_id(&event.event_id);
        if !event.traceparent.is_empty() {
            message = message.header(amba_telemetry::TRACEPARENT, event.traceparent.as_str());
        }
        acks.push(js.send_publish(event.subject.clone(), message).await.map_err(classify));
    }
    // All acks awaited together: each has its own timeout, and awaited one after another a batch
    // sent into a dropped connection would take the timeout times the batch size (minutes)
    // before the relay could retry it.
    futures::future::join_all(acks.into_iter().map(|ack| async move {
        match ack {
            Ok(ack) => ack.await.map(drop).map_err(classify),
            Err(failure) => Err(failure),
        }
    }))
    .await
}

/// Moves events that can never be published out of the outbox, with the reason.
pub async fn set_aside(
    tx: &mut Transaction<'_, Postgres>,
    rejected: &[(&PendingEvent, String)],
) -> Result<(), sqlx::Error> {
    if rejected.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rejected.iter().map(|(e, _)| e.id).collect();
    let reasons: Vec<&str> = rejected.iter().map(|(_, r)| r.as_str()).collect();
    sqlx::query(
        "WITH moved AS (DELETE FROM outbox WHERE id = ANY($1) RETURNING *) \
         INSERT INTO outbox_rejected (id, event_id, subject, payload, traceparent, reason) \
         SELECT m.id, m.event_id, m.subject, m.payload, m.traceparent, r.reason \
         FROM moved m JOIN UNNEST($1::bigint[], $2::text[]) AS r(id, reason) ON r.id = m.id",
    )
    .bind(&ids)
    .bind(&reasons)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Deletes rows JetStream has acknowledged.
pub async fn remove_published(tx: &mut Transaction<'_, Postgres>, batch: &[&PendingEvent]) -> Result<(), sqlx::Error> {
    if batch.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_resume_above_the_last_row_seen_and_look_through_everything_when_due() {
        let start = Instant::now();
        let mut resume = Resume::new(Duration::from_millis(250), start);
        assert_eq!(resume.next_after(start), 0, "the first batch looks through everything");
        resume.saw(Some(40));
        assert_eq!(resume.next_after(start + Duration::from_millis(10)), 40);
        resume.saw(None);
        assert_eq!(
            resume.next_after(start + Duration::from_millis(20)),
            40,
            "nothing new: stay"
        );
        resume.saw(Some(90));
        assert_eq!(resume.next_after(start + Duration::from_millis(30)), 90);
        // Due again: from the start, and the next due time counts from now.
        assert_eq!(resume.next_after(start + Duration::from_millis(260)), 0);
        resume.saw(Some(95));
        assert_eq!(resume.next_after(start + Duration::from_millis(400)), 95);
        assert_eq!(resume.next_after(start + Duration::from_millis(510)), 0);
        // A failed batch leaves rows behind: the next one looks from the start.
        resume.saw(Some(120));
        resume.rescan();
        assert_eq!(resume.next_after(start + Duration::from_millis(520)), 0);
    }
}
