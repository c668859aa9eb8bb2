//! The event feed: a projection of the events owners and affiliates may read (see
//! [`crate::domain::feed`]), written by consumers of their own and read by `events_list`.
//!
//! No event is skipped or repeated across pages: every writer takes the same transaction-wide
//! advisory lock before it inserts, so rows commit in `seq` order, and the cursor is the last
//! `seq` returned. A redelivered event is inserted once (`event_id` is unique). Rows older than
//! [`KEEP_DAYS`] are pruned.

use crate::domain::feed::{self, Entry, TYPES};
use amba_bus::Namespace;
use amba_bus::consumer::{ConsumerSpec, Delivery, Handler, HandlerError};
use amba_core::{ApiError, cursor};
use amba_proto::wire as pb;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the feed keeps an event (the contract is at least 30 days).
pub const KEEP_DAYS: i64 = 35;
/// The advisory lock every feed writer holds until it commits.
const WRITE_LOCK: i64 = 0x0066_6565_645f_7365; // "feed_se"

/// The feed's consumers: one per stream it reads, each only the subjects it keeps.
pub fn consumer_specs(ns: &Namespace, service: &str) -> [ConsumerSpec; 4] {
    [
        ("enrollment", ns.event_domain("enrollment")),
        ("attribution", ns.event("conversion", "*")),
        ("commission", ns.event("commission", "clawed_back")),
        ("payout", ns.event("payout", "*")),
    ]
    .map(|(stream, filter)| {
        // One worker per stream: the feed keeps each stream's order. Its groups are large (a
        // few statements each, whatever their size): beside ingest it takes turns at the
        // database with the ledger's eight workers, and it catches up by the group, not the turn.
        ConsumerSpec::new(
            ns.events_stream(stream),
            ns.consumer(service, &format!("feed_{stream}")),
            filter,
        )
        .with_concurrency(1)
        .with_max_batch(2_000)
        .with_linger(Duration::from_millis(200))
    })
}

/// Writes the feed's rows, in the consumer's transaction.
#[derive(Clone)]
pub struct FeedProjection;

impl Handler for FeedProjection {
    async fn handle(&self, conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        self.handle_batch(conn, &[delivery]).await
    }

    async fn handle_batch(&self, conn: &mut PgConnection, deliveries: &[&Delivery]) -> Result<(), HandlerError> {
        let mut entries = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let (domain, kind) = delivery.event();
            if let Some(entry) = feed::entry(domain, kind, delivery.payload.as_ref())? {
                entries.push(entry);
            }
        }
        if entries.is_empty() {
            return Ok(());
        }
        insert(conn, &entries).await?;
        crate::store::remember_members(conn, &entries).await?;
        crate::webhooks::fan_out(conn, &entries).await?;
        Ok(())
    }
}

async fn insert(conn: &mut PgConnection, entries: &[Entry]) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(WRITE_LOCK)
        .execute(&mut *conn)
        .await?;
    let at = |micros: i64| DateTime::from_timestamp_micros(micros).unwrap_or_else(Utc::now);
    sqlx::query(
        "INSERT INTO feed_events (event_id, type, program_id, affiliate_org_id, occurred_at, payload) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[]::json[]) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(entries.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.program_id.as_str()).collect::<Vec<_>>())
    .bind(
        entries
            .iter()
            .map(|e| e.affiliate_org_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(entries.iter().map(|e| at(e.occurred_at_micros)).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.payload.to_string()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Row {
    seq: i64,
    event_id: String,
    #[sqlx(rename = "type")]
    kind: String,
    program_id: String,
    occurred_at: DateTime<Utc>,
    payload: Json<serde_json::Value>,
    owner: bool,
}

/// The caller's events after the request's cursor.
pub async fn list(
    pool: &PgPool,
    caller: &pb::Principal,
    request: &pb::EventsListRequest,
) -> Result<pb::EventsListReply, ApiError> {
    let after: i64 = match cursor::decode(&request.cursor)? {
        None => 0,
        Some(seq) => seq
            .parse()
            .map_err(|_| ApiError::invalid("cursor is not one this server issued"))?,
    };
    if let Some(unknown) = request.types.iter().find(|t| !TYPES.contains(&t.as_str())) {
        return Err(ApiError::invalid(format!(
            "{unknown:?} is not an event type; expected any of: {}",
            TYPES.join(", ")
        )));
    }
    let program_id = request.program_id.trim();
    let mut conn = pool.acquire().await?;
    // A program is named to its owner and to its affiliates; to anyone else it does not exist.
    if !program_id.is_empty() {
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM programs_view WHERE program_id = $1 AND owner_org_id = $2) \
             OR EXISTS (SELECT 1 FROM program_members WHERE program_id = $1 AND org_id = $2)",
        )
        .bind(program_id)
        .bind(&caller.org_id)
        .fetch_one(&mut *conn)
        .await?;
        if !known {
            return Err(ApiError::not_found(format!("program {program_id}")));
        }
    }
    let limit = cursor::page_size(request.limit);
    let types: Option<&[String]> = (!request.types.is_empty()).then_some(request.types.as_slice());
    // A program's owner reads all of its events; an affiliate its own (with the affiliate's view).
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT f.seq, f.event_id, f.type, f.program_id, f.occurred_at, f.payload, \
           COALESCE(p.owner_org_id = $1, false) AS owner \
         FROM feed_events f LEFT JOIN programs_view p ON p.program_id = f.program_id \
         WHERE f.seq > $2 AND ($3 = '' OR f.program_id = $3) AND ($4::text[] IS NULL OR f.type = ANY($4)) \
           AND (f.program_id IN (SELECT program_id FROM programs_view WHERE owner_org_id = $1) \
                OR f.affiliate_org_id = $1) \
         ORDER BY f.seq LIMIT $5",
    )
    .bind(&caller.org_id)
    .bind(after)
    .bind(program_id)
    .bind(types)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let last = rows.last().map_or(after, |r| r.seq);
    let events = rows
        .into_iter()
        .map(|r| {
            let payload = if r.owner {
                r.payload.0
            } else {
                feed::affiliate_view(&r.kind, r.payload.0)
            };
            pb::FeedEvent {
                event_id: r.event_id,
                r#type: r.kind,
                occurred_at_micros: r.occurred_at.timestamp_micros(),
                program_id: r.program_id,
                payload_json: payload.to_string(),
            }
        })
        .collect();
    Ok(pb::EventsListReply {
        events,
        next_cursor: cursor::encode(&last.to_string()),
    })
}

/// Prunes events older than [`KEEP_DAYS`], and webhook deliveries that ended that long ago,
/// hourly, until `shutdown`: both grow with every sale.
pub async fn prune(pool: PgPool, shutdown: CancellationToken) -> Result<(), amba_bus::RunError> {
    let days = i32::try_from(KEEP_DAYS).unwrap_or(35);
    loop {
        let pruned = async {
            sqlx::query("DELETE FROM feed_events WHERE recorded_at < now() - make_interval(days => $1)")
                .bind(days)
                .execute(&pool)
                .await?;
            sqlx::query(
                "DELETE FROM webhook_deliveries WHERE status <> 'pending' AND created_at < now() - make_interval(days => $1)",
            )
            .bind(days)
            .execute(&pool)
            .await
        }
        .await;
        if let Err(error) = pruned {
            tracing::warn!(%error, "pruning the event feed failed; trying again later");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(3_600)) => {}
        }
    }
}
