//! Commission: the double-entry ledger, balances and per-enrollment stats, built from
//! enrollment and attribution events (docs/ledger.md).
//!
//! - `consumers`: read models of programs and enrollments; accrual when a conversion is
//!   approved (the amount attribution decided, never re-rated), multi-level overrides,
//!   clawbacks, clicks — applied by keyed workers (one conversion's events by one worker), each
//!   worker booking what it has queued as one batch.
//! - `jobs::sweep`: releases held commission once its hold ends (exactly once).
//! - `rpc`: balances (with held money's release dates), stats, analytics, leaderboard (figures
//!   by sale day, gross and net of clawbacks), clawback outcomes, an owner's early release of held
//!   commission, and the payout-facing two-phase API (quote, reserve, post, void, transfer reversal).
//! - `jobs::verify`: `amba ledger verify`.

pub mod consumers;
pub mod domain;
pub mod jobs;
pub mod rpc;
pub mod store;

pub use jobs::sweep;

use amba_bus::consumer::{self, ConsumerSpec};
use amba_bus::outbox::RelayWaker;
use amba_bus::{Bus, Namespace, RunError};
use sqlx::migrate::Migrator;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = amba_proto::methods::commission::SERVICE;
pub const SCHEMA: &str = "commission";
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Most attribution events a worker books in one transaction (see `consumers::booking`).
pub const ATTRIBUTION_BATCH: usize = 512;

/// Workers booking attribution events side by side (docs/performance.md: of a backlog on the
/// 2-core machine, 4 booked 7,900/s and 8 booked 10,100/s).
pub const ATTRIBUTION_WORKERS: usize = 8;

/// How long a worker waits for its group to fill: under ingest load the ledger commits a few
/// large groups instead of hundreds of small ones a second, leaving the cores to ingest; a
/// backlog fills groups at once, so catching up is not slowed.
pub const ATTRIBUTION_LINGER: Duration = Duration::from_millis(100);

/// How often the hold-release sweep looks for commissions whose hold has ended.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

pub use jobs::verify::{VerifyReport, verify_database};

/// Applies this service's migrations (also done by [`run`]).
pub async fn migrate(database_url: &str) -> Result<(), RunError> {
    amba_bus::service::open_store(database_url, SCHEMA, &MIGRATIONS, 2)
        .await
        .map(|_| ())
}

/// The durable consumers this service reads: declared by `amba migrate`, bound by [`run`].
pub fn consumer_specs(ns: &Namespace) -> [ConsumerSpec; 2] {
    [
        ConsumerSpec::new(
            ns.events_stream("enrollment"),
            ns.consumer(SERVICE, "enrollment"),
            String::new(),
        ),
        ConsumerSpec::new(
            ns.events_stream("attribution"),
            ns.consumer(SERVICE, "attribution"),
            String::new(),
        )
        .with_max_batch(ATTRIBUTION_BATCH)
        .with_concurrency(ATTRIBUTION_WORKERS)
        .with_linger(ATTRIBUTION_LINGER),
    ]
}

/// Consumes events, answers requests and releases holds until `shutdown`, then drains.
/// `multi_level_enabled` is the platform flag `MULTI_LEVEL_ENABLED`.
pub async fn run(
    database_url: &str,
    bus: Bus,
    multi_level_enabled: bool,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let pool = amba_bus::service::open_store(database_url, SCHEMA, &MIGRATIONS, 24).await?;
    let ns = bus.ns.clone();
    let [enrollment_spec, attribution_spec] = consumer_specs(&ns);
    let enrollment_events = consumer::run(
        bus.js.clone(),
        pool.clone(),
        enrollment_spec,
        Arc::new(consumers::EnrollmentEvents),
        shutdown.clone(),
    );
    let attribution_events = consumer::run(
        bus.js.clone(),
        pool.clone(),
        attribution_spec,
        Arc::new(consumers::AttributionEvents {
            multi_level_enabled,
            ns: ns.clone(),
        }),
        shutdown.clone(),
    );
    let server = rpc::server(rpc::Commission::new(pool.clone())).serve(bus.nats.clone(), ns.clone(), shutdown.clone());
    let sweep = sweep::run(pool.clone(), SWEEP_INTERVAL, shutdown.clone());
    amba_bus::service::with_relay(pool, &bus, RelayWaker::default(), async move {
        // Any part failing stops the service (the process supervisor restarts it).
        tokio::try_join!(
            async { enrollment_events.await.map_err(RunError::from) },
            async { attribution_events.await.map_err(RunError::from) },
            async { server.await.map_err(RunError::from) },
            async {
                sweep.await;
                Ok(())
            },
        )
        .map(|_| ())
    })
    .await
}
