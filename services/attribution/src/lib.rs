//! Attribution: touchpoints, conversions and customer bindings, with its own read model of
//! programs, enrollments and referral codes built from enrollment events. Filled in by the
//! attribution issue; for now it owns its schema (with the messaging tables) and runs its relay.

use amba_bus::outbox::RelayWaker;
use amba_bus::{Bus, RunError};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "attribution";
pub const SCHEMA: &str = "attribution";
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
