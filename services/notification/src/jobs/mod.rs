//! The sender: queued e-mails that are due go out in groups of up to [`GROUP`], each group in
//! one transaction holding its rows (several replicas never send one twice) and one commit for
//! the group — a commit per e-mail put an fsync per approved conversion on the database the
//! ledger shares. A crash mid-group may send that group's first messages again (at-least-once at
//! the SMTP boundary). A 4xx answer, a refused connection or a timeout is
//! retried with backoff (1 s, 2 s, 4 s … up to 5 min, 10 attempts); a 5xx answer or an
//! unbuildable message is a permanent failure recorded with its reason.

use crate::mail::{self, Envelope, SendError, Transport};
use crate::store;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const MAX_ATTEMPTS: i32 = 10;
/// E-mails sent per transaction.
const GROUP: i64 = 100;

pub fn backoff(attempt: i32) -> Duration {
    Duration::from_secs(1u64 << attempt.clamp(0, 8) as u32).min(Duration::from_secs(300))
}

pub async fn deliver(
    pool: PgPool,
    transport: Transport,
    envelope: Envelope,
    every: Duration,
    shutdown: CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        // Group by group, until none is due or shutdown is asked for (a backlog must not hold
        // up a restart: what is left is sent by the next process).
        while !shutdown.is_cancelled() {
            let mut tx = pool.begin().await?;
            let due = store::lock_due(&mut tx, GROUP).await?;
            if due.is_empty() {
                break;
            }
            for email in due {
                let outcome = match mail::build(
                    &envelope,
                    &email.email_id,
                    &email.recipients,
                    &email.subject,
                    &email.body,
                ) {
                    Ok((message, message_id)) => transport.send(message).await.map(|()| message_id),
                    Err(err) => Err(err),
                };
                match outcome {
                    Ok(message_id) => store::mark_sent(&mut tx, &email.email_id, &message_id).await?,
                    Err(SendError::Permanent(reason)) => {
                        tracing::warn!(email_id = %email.email_id, %reason, "e-mail refused for good");
                        store::mark_failed(&mut tx, &email.email_id, &reason).await?
                    }
                    Err(SendError::Transient(reason)) if email.attempts + 1 >= MAX_ATTEMPTS => {
                        tracing::warn!(email_id = %email.email_id, %reason, "e-mail failed after every attempt");
                        store::mark_failed(
                            &mut tx,
                            &email.email_id,
                            &format!("gave up after {MAX_ATTEMPTS} attempts: {reason}"),
                        )
                        .await?
                    }
                    Err(SendError::Transient(reason)) => {
                        tracing::info!(email_id = %email.email_id, %reason, "e-mail not sent yet; retrying");
                        store::retry_later(&mut tx, &email.email_id, &reason, backoff(email.attempts)).await?
                    }
                }
            }
            tx.commit().await?;
        }
    }
}
