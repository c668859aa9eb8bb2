//! Hold release: a periodic sweep moves commissions whose hold has ended from held to payable.
//!
//! Exactly once: the sweep locks due rows with `FOR UPDATE SKIP LOCKED` (replicas never take the
//! same row), [`release_all`] only acts on rows not yet released, and the posting's idempotency
//! key `release:<commission>` is unique in the journal. A clawback of the same commission locks
//! the same row, so it sees the commission either fully held or fully released.

use crate::domain::ledger::{self, Scope};
use crate::store::{self, CommissionRow, LedgerLock, ledger::PendingPosting};
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Commissions released per transaction.
const BATCH: i64 = 1_000;

/// Releases the commissions of `rows` (locked by the caller) that are still held: their
/// postings recorded together (with `memo` on their journal rows: who released them early and
/// why), their rows marked in one statement. Returns the amount moved.
pub async fn release_all(
    conn: &mut PgConnection,
    rows: &[CommissionRow],
    memo: Option<&str>,
) -> Result<i64, sqlx::Error> {
    let mut postings = Vec::with_capacity(rows.len());
    let mut released = Vec::with_capacity(rows.len());
    let mut moved = 0i64;
    for row in rows.iter().filter(|r| !r.released) {
        let scope = Scope {
            program_id: row.program_id.clone(),
            enrollment_id: row.enrollment_id.clone(),
            currency: row.currency.clone(),
        };
        let mut state = row.state();
        moved += state.held_minor;
        postings.push(PendingPosting {
            posting: ledger::release(&scope, &mut state),
            scope,
            idem_key: format!("release:{}", row.commission_id),
            reference: row.commission_id.clone(),
            memo: memo.map(str::to_owned),
        });
        released.push(row.commission_id.as_str());
    }
    store::ledger::record_all(conn, &postings).await?;
    store::mark_released(conn, &released).await?;
    Ok(moved)
}

/// Releases every commission whose hold ended at or before `now`, in batches. Returns how many.
pub async fn release_due(pool: &PgPool, now: chrono::DateTime<chrono::Utc>) -> Result<usize, sqlx::Error> {
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        // The programs' ledger locks before any row lock, as every ledger writer takes them.
        let programs = store::programs_with_due_commissions(&mut tx, now).await?;
        let locks: Vec<(&str, LedgerLock)> = programs.iter().map(|p| (p.as_str(), LedgerLock::Shared)).collect();
        store::lock_programs(&mut tx, &locks).await?;
        let due = store::due_commissions(&mut tx, &programs, now, BATCH).await?;
        release_all(&mut tx, &due, None).await?;
        tx.commit().await?;
        total += due.len();
        if i64::try_from(due.len()).unwrap_or(i64::MAX) < BATCH {
            return Ok(total);
        }
    }
}

/// Runs [`release_due`] every `interval` until `shutdown`.
pub async fn run(pool: PgPool, interval: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        match release_due(&pool, chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "hold ended; commissions released"),
            Err(err) => tracing::warn!(error = %err, "hold release sweep failed; retrying next tick"),
        }
    }
}
