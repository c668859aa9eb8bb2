//! The messages consumers gave up on, for operators (`amba dead-letters list|replay`).
//!
//! A replay publishes the stored message again on its subject, carrying its original event id in
//! the `Amba-Event-Id` header (and a fresh `Nats-Msg-Id`, so JetStream's duplicate window does
//! not drop it). Consumers take that header as the event id: every consumer that applied the
//! event finds it in its inbox and only acks; the one that dead-lettered it applies it, once. A
//! replay that fails again is recorded again and listed again.

use crate::consumer::EVENT_ID_HEADER;
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub consumer: String,
    pub event_id: String,
    pub subject: String,
    pub error: String,
    pub deliveries: i64,
    pub recorded_at: DateTime<Utc>,
}

/// Dead letters not replayed yet, oldest first; of one consumer when `consumer` is given.
pub async fn list(pool: &PgPool, consumer: Option<&str>) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, consumer, event_id, subject, error, deliveries, recorded_at FROM dead_letters \
         WHERE replayed_at IS NULL AND ($1::text IS NULL OR consumer = $1) ORDER BY id",
    )
    .bind(consumer)
    .fetch_all(pool)
    .await
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("publishing {event_id}: {source}")]
    Publish {
        event_id: String,
        source: async_nats::Error,
    },
}

/// Replays the not-yet-replayed dead letters of `consumer` (only `event_id`, when given): each
/// is published again and marked replayed in one transaction, so a replay that fails to publish
/// leaves it listed. Returns the event ids replayed.
pub async fn replay(
    pool: &PgPool,
    js: &jetstream::Context,
    consumer: &str,
    event_id: Option<&str>,
) -> Result<Vec<String>, ReplayError> {
    let mut tx = pool.begin().await?;
    let letters: Vec<(i64, String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT id, event_id, subject, payload FROM dead_letters \
         WHERE consumer = $1 AND replayed_at IS NULL AND ($2::text IS NULL OR event_id = $2) \
         ORDER BY id FOR UPDATE",
    )
    .bind(consumer)
    .bind(event_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut replayed = Vec::with_capacity(letters.len());
    for (id, event_id, subject, payload) in letters {
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(format!("replay:{}", amba_core::id::EventId::new()))
            .header(EVENT_ID_HEADER, event_id.as_str());
        let published = async {
            js.send_publish(subject, message)
                .await?
                .await
                .map_err(async_nats::Error::from)
        };
        published.await.map_err(|source| ReplayError::Publish {
            event_id: event_id.clone(),
            source,
        })?;
        sqlx::query("UPDATE dead_letters SET replayed_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        replayed.push(event_id);
    }
    tx.commit().await?;
    Ok(replayed)
}
