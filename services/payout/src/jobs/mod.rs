//! The in-flight job: every payout run with an item still pending, reserved or unknown, or whose
//! charge is not settled, is advanced again (a run interrupted by a crash, a scheduled run, a
//! charge or transfer whose outcome was unknown).

pub mod reconcile;

use crate::settle::Settler;
use crate::store;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Items untouched this long are picked up (a live run is still working on newer ones).
const IDLE: Duration = Duration::from_secs(2);

pub async fn run(settler: Settler, every: Duration, shutdown: CancellationToken) -> Result<(), sqlx::Error> {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        // Nothing moves while payouts are off (items already reserved wait for the switch).
        if settler.stripe.is_none() || !settler.payouts_live {
            continue;
        }
        let runs = {
            let mut conn = settler.pool.acquire().await?;
            store::runs_in_flight(&mut conn, chrono::Duration::from_std(IDLE).unwrap_or_default()).await?
        };
        for run_id in runs {
            if let Err(err) = settler.advance_run(&run_id).await {
                tracing::warn!(payout_run_id = %run_id, error = %err, "payout run still in flight");
                // To the back of the queue, so runs that keep failing cannot starve the rest.
                if let Ok(mut conn) = settler.pool.acquire().await {
                    let _ = store::touch_run(&mut conn, &run_id).await;
                }
            }
        }
    }
}
