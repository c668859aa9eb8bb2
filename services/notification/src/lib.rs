//! Notification: the e-mail outbox, delivery log and per-org preferences, fed by the events
//! of every other service. Filled in by the notification issue; for now it owns its schema (with
//! the messaging tables) and runs its relay.

use amba_bus::outbox::RelayWaker;
use amba_bus::{Bus, RunError};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "notification";
pub const SCHEMA: &str = "notification";
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
