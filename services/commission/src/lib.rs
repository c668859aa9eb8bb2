//! Commission: the double-entry ledger, balances and per-enrollment stats, built from
//! enrollment and attribution events. Filled in by the commission issue; for now it owns its
//! schema (with the messaging tables) and runs its relay.

use amba_bus::outbox::RelayWaker;
use amba_bus::{Bus, RunError};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "commission";
pub const SCHEMA: &str = "commission";
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Applies this service's migrations (also done by [`run`]).
pub async fn migrate(database_url: &str) -> Result<(), RunError> {
    amba_bus::service::open_store(database_url, SCHEMA, &MIGRATIONS, 2)
        .await
        .map(|_| ())
}

/// Runs until `shutdown`, then flushes the outbox.
pub async fn run(database_url: &str, bus: Bus, shutdown: CancellationToken) -> Result<(), RunError> {
    let pool = amba_bus::service::open_store(database_url, SCHEMA, &MIGRATIONS, 8).await?;
    amba_bus::service::with_relay(pool, &bus, RelayWaker::default(), async {
        shutdown.cancelled().await;
        Ok(())
    })
    .await
}
