//! What every service's `run` needs: the NATS handles, its store, and one error type for start-up.

use crate::Namespace;
use crate::outbox::{Relay, RelayWaker};
use async_nats::jetstream;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use std::time::Duration;
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

/// How long a service on its own database role waits for `amba migrate` before giving up.
const MIGRATED_WAIT: Duration = Duration::from_secs(600);

/// Opens the service's schema-pinned pool and applies its migrations, when its role may (the
/// schema's owner: `amba dev`, compose, tests). On its own role (`amba_<service>`, production) it
/// migrates nothing: it waits until `amba migrate` has applied every migration it knows.
pub async fn open_store(
    database_url: &str,
    schema: &'static str,
    migrations: &Migrator,
    max_connections: u32,
) -> Result<PgPool, RunError> {
    let pool = crate::store::connect(database_url, schema, max_connections).await?;
    if crate::store::may_migrate(&pool, schema).await? {
        crate::store::migrate(&pool, schema, migrations).await?;
    } else {
        // Boxed: this future is part of every service's start-up, which is large already.
        Box::pin(wait_until_migrated(&pool, schema, migrations, MIGRATED_WAIT)).await?;
    }
    Ok(pool)
}

/// Polls [`crate::store::schema_state`] until the schema is current: a release's pods may
/// start before its migration Job has finished.
async fn wait_until_migrated(
    pool: &PgPool,
    schema: &'static str,
    migrations: &Migrator,
    patience: Duration,
) -> Result<(), RunError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut next_warning = tokio::time::Instant::now();
    loop {
        let why = match crate::store::schema_state(pool, schema, migrations).await? {
            crate::store::SchemaState::Current => return Ok(()),
            crate::store::SchemaState::Behind(why) => why,
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(RunError::Setup(format!(
                "schema {schema} is not migrated for this release ({why}); run `amba migrate` with the \
                 owner's database URL, and check this service uses its own role (amba_{schema})"
            )));
        }
        if now >= next_warning {
            tracing::warn!(%schema, %why, "waiting for `amba migrate`: this role does not migrate its schema");
            next_warning = now + Duration::from_secs(30);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
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
