//! The messaging kit against a real PostgreSQL and a real NATS JetStream server.

mod consumer;
mod outbox;
mod rpc;

use amba_testkit::TestDatabase;
use sqlx::PgPool;
use sqlx::migrate::Migrator;

/// No service tables: only the messaging tables every schema gets.
static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

/// A fresh database with the bus tables in schema `bus_test`.
pub async fn store() -> anyhow::Result<(TestDatabase, PgPool)> {
    let db = TestDatabase::create().await?;
    let pool = amba_bus::store::connect(&db.url, "bus_test", 8).await?;
    amba_bus::store::migrate(&pool, "bus_test", &NO_MIGRATIONS).await?;
    Ok((db, pool))
}
