//! The sender: queued e-mails that are due go out in groups of up to [`GROUP`], each group in
//! one transaction holding its rows (several replicas never send one twice) and one commit for
//! the group — a commit per e-mail put an fsync per approved conversion on the database the
//! ledger shares. A crash mid-group may send that group's first messages again (at-least-once at
//! the SMTP boundary). A 4xx answer, a refused connection or a timeout is
//! retried with backoff (1 s, 2 s, 4 s … up to 5 min, 10 attempts); a 5xx answer or an
//! unbuildable message is a permanent failure recorded with its reason.
//!
//! The digest clock ([`digests`]): after a period ends, each org with commissions recorded in it
//! gets one `conversion_approved` summary, claimed by its `digests (org_id, period)` row in the
//! transaction that queues the e-mail, so a restart or a second replica sends none twice and,
//! since every ended period without a row is picked up, skips none.

use crate::domain::digest::{DIGEST_KINDS, Digest};
use crate::domain::templates;
use crate::mail::{self, Envelope, SendError, Transport};
use crate::store;
use chrono::{DateTime, Utc};
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
    link_secret: Option<amba_core::secret::Secret>,
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
                let unsubscribe = link_secret
                    .as_ref()
                    .filter(|_| {
                        email.template == templates::DIGEST || templates::KINDS.contains(&email.template.as_str())
                    })
                    .and_then(|key| crate::unsubscribe::sign(key.expose().as_bytes(), &email.org_id, &email.template));
                let outcome = match mail::build(
                    &envelope,
                    &email.email_id,
                    &email.recipients,
                    &email.subject,
                    &email.body,
                    unsubscribe.as_deref(),
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

/// A period's digest is built this long after it ends: a consumer transaction that recorded a
/// commission just before the end has committed by then.
pub const DIGEST_GRACE: Duration = Duration::from_secs(60);
/// Digests claimed per look for due ones.
const DIGEST_BATCH: i64 = 100;

/// Builds due digests every `every`, until `shutdown`.
pub async fn digests(pool: PgPool, every: Duration, shutdown: CancellationToken) -> Result<(), sqlx::Error> {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let grace = chrono::Duration::from_std(DIGEST_GRACE).unwrap_or_default();
        let built = build_digests(&pool, Utc::now() - grace).await?;
        if built > 0 {
            tracing::info!(built, "commission digests queued");
        }
    }
}

/// Queues the digest of every (org, period) that ended by `ended_by` and has none yet; returns
/// how many this call built (another job racing it builds the rest, never the same ones).
pub async fn build_digests(pool: &PgPool, ended_by: DateTime<Utc>) -> Result<usize, sqlx::Error> {
    let mut built = 0;
    {
        let mut conn = pool.acquire().await?;
        store::forget_old_entries(&mut conn).await?;
    }
    loop {
        let due = {
            let mut conn = pool.acquire().await?;
            store::due_digests(&mut conn, ended_by, DIGEST_BATCH).await?
        };
        if due.is_empty() {
            return Ok(built);
        }
        for (org_id, period) in due {
            let mut tx = pool.begin().await?;
            // Another job's claim: it waits for that commit, then finds the row and skips.
            if !store::claim_digest(&mut tx, &org_id, &period).await? {
                continue;
            }
            let digest = store::digest(&mut tx, &org_id, &period).await?;
            let recipients = store::org_emails(&mut tx, &org_id).await?.unwrap_or_default();
            if !digest.is_empty() && !recipients.is_empty() {
                // Kinds turned off after their entries were recorded: left out; all off, logged
                // as suppressed rather than sent.
                let digest = without_turned_off(&mut tx, &org_id, digest).await?;
                let (digest, status) = match digest {
                    Ok(kept) => (kept, "queued"),
                    Err(all) => (all, "suppressed"),
                };
                let email = match templates::digest(&digest, &period) {
                    Ok(email) => email,
                    Err(err) => {
                        // Claimed, so not retried for ever: loud, and the period is skipped.
                        tracing::error!(%org_id, %period, error = %err, "digest template failed");
                        tx.commit().await?;
                        continue;
                    }
                };
                let name = store::org_name(&mut tx, &org_id).await?;
                store::insert_email(
                    &mut tx,
                    &store::NewEmail {
                        email_id: &format!("eml_{}", amba_core::id::time_ordered_suffix()),
                        event_id: &format!("digest:{org_id}:{period}"),
                        template: email.kind,
                        org_id: &org_id,
                        recipients: &recipients,
                        subject: &email.subject,
                        body: &templates::greet(&email.body, name.as_deref()),
                        status,
                        sender_org_id: None,
                        last_error: None,
                    },
                )
                .await?;
            }
            tx.commit().await?;
            built += 1;
        }
    }
}

/// `digest` without the sections whose kind the org has turned off since (its own setting; a
/// program's was applied when the entry was recorded); `Err` with the whole digest when nothing
/// is left.
async fn without_turned_off(
    conn: &mut sqlx::PgConnection,
    org_id: &str,
    mut digest: Digest,
) -> Result<Result<Digest, Digest>, sqlx::Error> {
    let kinds: Vec<&str> = DIGEST_KINDS.iter().map(|(kind, _)| *kind).collect();
    let settings = store::settings(conn, org_id, &kinds, "").await?;
    let off = |kind: &str| {
        kinds
            .iter()
            .zip(&settings)
            .any(|(k, setting)| *k == kind && !setting.enabled)
    };
    let all = digest.clone();
    if off("conversion_approved") {
        digest.approved.clear();
    }
    if off("conversion_rejected") {
        digest.rejected.clear();
    }
    if off("application_received") {
        digest.applications.clear();
    }
    if off("approvals_waiting") {
        digest.waiting.clear();
    }
    if off("payout_run_summary") {
        digest.payout_runs.clear();
    }
    Ok(if digest.is_empty() { Err(all) } else { Ok(digest) })
}
