//! Hold release: a periodic sweep moves commissions whose hold has ended from held to payable.
//!
//! Exactly once: the sweep locks due rows with `FOR UPDATE SKIP LOCKED` (replicas never take the
//! same row), [`release_one`] only acts on a row not yet released, and the posting's idempotency
//! key `release:<commission>` is unique in the journal. A clawback of the same commission locks
//! the same row, so it sees the commission either fully held or fully released.

use crate::domain::ledger::{self, Scope};
use crate::store::{self, ledger::PostingRef};
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Releases one commission (if still held). Returns the amount moved to payable.
pub async fn release_one(conn: &mut PgConnection, commission_id: &str) -> Result<i64, sqlx::Error> {
    let Some(row) = store::commission_for_update(conn, commission_id).await? else {
        return Ok(0);
    };
    if row.released {
        return Ok(0);
    }
    let scope = Scope {
        program_id: row.program_id.clone(),
        enrollment_id: row.enrollment_id.clone(),
        currency: row.currency.clone(),
    };
    let mut state = row.state();
    let moved = state.held_minor;
    let posting = ledger::release(&scope, &mut state);
    let idem = format!("release:{commission_id}");
    store::ledger::record(
        conn,
        &scope,
        PostingRef {
            idem_key: &idem,
            reference: commission_id,
        },
        &posting,
    )
    .await?;
    store::save_commission_state(conn, commission_id, &state).await?;
    Ok(moved)
}

/// Releases every commission whose hold ended at or before `now`, in batches. Returns how many.
pub async fn release_due(pool: &PgPool, now: chrono::DateTime<chrono::Utc>) -> Result<usize, sqlx::Error> {
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        let due: Vec<(String,)> = sqlx::query_as(
            "SELECT commission_id FROM commissions WHERE released_at IS NULL AND release_at <= $1 \
             ORDER BY release_at LIMIT 200 FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for (id,) in &due {
            release_one(&mut tx, id).await?;
        }
        tx.commit().await?;
        total += due.len();
        if due.len() < 200 {
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
