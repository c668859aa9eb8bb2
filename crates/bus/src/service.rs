//! One shape for every service: [`Service`] opens the service's store (migrating it when its
//! role may), then runs its parts — consumers, the request/reply server, jobs — beside the outbox
//! relays until shutdown. Also the NATS handles and the one error type for start-up.

use crate::Namespace;
use crate::budget::{Budget, Ingest};
use crate::consumer::{self, ConsumerSpec, Handler};
use crate::outbox::{Relay, RelayWaker};
use crate::rpc::RpcServer;
use async_nats::jetstream;
use futures::future::BoxFuture;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A service being assembled: its store is open; [`Service::run`] starts every part added and
/// the outbox relays, and any part failing stops the whole service (the process supervisor
/// restarts it). Parts are boxed: built inline, their large state machines would sit on the
/// stack of whoever polls the service first.
pub struct Service {
    pub bus: Bus,
    pub pool: PgPool,
    pub shutdown: CancellationToken,
    /// Wakes the relays when a request commits events, so they go out without waiting for a poll.
    pub waker: RelayWaker,
    relays: usize,
    parts: Vec<BoxFuture<'static, Result<(), RunError>>>,
}

impl Service {
    /// Opens the service's schema-pinned pool of `max_connections` (see [`open_store`]).
    pub async fn open(
        database_url: &str,
        schema: &'static str,
        migrations: &Migrator,
        max_connections: u32,
        bus: Bus,
        shutdown: CancellationToken,
    ) -> Result<Service, RunError> {
        let pool = open_store(database_url, schema, migrations, max_connections).await?;
        Ok(Service {
            bus,
            pool,
            shutdown,
            waker: RelayWaker::default(),
            relays: 1,
            parts: Vec::new(),
        })
    }

    pub fn ns(&self) -> &Namespace {
        &self.bus.ns
    }

    /// Relays sharing the outbox, for services that publish a lot (default 1).
    pub fn relays(mut self, relays: usize) -> Self {
        self.relays = relays.max(1);
        self
    }

    /// Applies the durable consumer `spec`'s messages with `handler` until shutdown.
    pub fn consume<H: Handler>(self, mut spec: ConsumerSpec, handler: H) -> Self {
        if spec.budget.is_none() {
            spec.budget = self.bus.budget.clone();
        }
        let run = consumer::run(
            self.bus.js.clone(),
            self.pool.clone(),
            spec,
            Arc::new(handler),
            self.shutdown.clone(),
        );
        self.part(async move { run.await.map_err(RunError::from) })
    }

    /// Answers the server's methods until shutdown.
    pub fn serve(self, server: RpcServer) -> Self {
        let serve = server.serve(self.bus.nats.clone(), self.bus.ns.clone(), self.shutdown.clone());
        self.part(async move { serve.await.map_err(RunError::from) })
    }

    /// Any other part (a job, a loop): it should end when [`Service::shutdown`] is cancelled.
    pub fn part<E>(mut self, part: impl Future<Output = Result<(), E>> + Send + 'static) -> Self
    where
        RunError: From<E>,
    {
        self.parts
            .push(Box::pin(async move { part.await.map_err(RunError::from) }));
        self
    }

    /// Runs every part beside the relays until all have ended (after shutdown) or one fails.
    pub async fn run(self) -> Result<(), RunError> {
        let Service {
            bus,
            pool,
            waker,
            relays,
            parts,
            ..
        } = self;
        with_relays(pool, &bus, waker, relays, async move {
            futures::future::try_join_all(parts).await.map(drop)
        })
        .await
    }
}

/// Connections to NATS, shared by the services of one process. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub ns: Namespace,
    /// The database budget of this service's consumers, when it shares a process with ingest.
    pub budget: Option<Budget>,
    /// Where a report writer says it is writing, when work that can wait shares its process.
    pub ingest: Option<Ingest>,
}

impl Bus {
    pub fn new(nats: async_nats::Client, ns: Namespace) -> Self {
        let js = jetstream::new(nats.clone());
        Bus {
            nats,
            js,
            ns,
            budget: None,
            ingest: None,
        }
    }

    /// Every consumer of the service applies its groups within `budget`.
    pub fn with_budget(mut self, budget: Option<Budget>) -> Self {
        self.budget = budget;
        self
    }

    /// The service's report writer tells `ingest` when it writes.
    pub fn with_ingest(mut self, ingest: Option<Ingest>) -> Self {
        self.ingest = ingest;
        self
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
