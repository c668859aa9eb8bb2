//! What every service's `run` needs: the NATS handles, its store, and one error type for start-up.

use crate::Namespace;
use crate::outbox::{Relay, RelayWaker};
use async_nats::jetstream;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

/// Connections to NATS, shared by the services of one process. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub ns: Namespace,
}

impl Bus {
    pub fn new(nats: async_nats::Client, ns: Namespace) -> Self {
        let js = jetstream::new(nats.clone());
        Bus { nats, js, ns }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("nats: {0}")]
    Nats(#[from] async_nats::Error),
    #[error("{0}")]
    Setup(String),
}

/// Opens the service's schema-pinned pool and applies its migrations.
pub async fn open_store(
    database_url: &str,
    schema: &'static str,
    migrations: &Migrator,
    max_connections: u32,
) -> Result<PgPool, RunError> {
    let pool = crate::store::connect(database_url, schema, max_connections).await?;
    crate::store::migrate(&pool, schema, migrations).await?;
    Ok(pool)
}

/// Runs the outbox relay until `work` finishes, then flushes once more: events committed by the
/// last in-flight requests still go out before the process exits.
pub async fn with_relay<F>(pool: PgPool, bus: &Bus, waker: RelayWaker, work: F) -> Result<(), RunError>
where
    F: Future<Output = Result<(), RunError>>,
{
    with_relays(pool, bus, waker, 1, work).await
}

/// Like [`with_relay`] with `relays` relays sharing the outbox, for services that publish a lot.
/// A relay that ends before `work` (a panic) fails the service: events would stop flowing while
/// the service kept taking requests.
pub async fn with_relays<F>(pool: PgPool, bus: &Bus, waker: RelayWaker, relays: usize, work: F) -> Result<(), RunError>
where
    F: Future<Output = Result<(), RunError>>,
{
    let relay_stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..relays.max(1) {
        tasks.spawn(Relay::new(pool.clone(), bus.js.clone(), waker.clone()).run(relay_stop.clone()));
    }
    tasks.spawn(crate::outbox::report_status_until(pool.clone(), relay_stop.clone()));
    let result = tokio::select! {
        result = work => result,
        Some(ended) = tasks.join_next() => {
            let why = match ended {
                Ok(()) => "ended".to_owned(),
                Err(err) => err.to_string(),
            };
            Err(RunError::Setup(format!("an outbox relay stopped: {why}")))
        }
    };
    relay_stop.cancel();
    while let Some(joined) = tasks.join_next().await {
        if let Err(err) = joined {
            tracing::error!(error = %err, "outbox relay task failed");
        }
    }
    result
}
