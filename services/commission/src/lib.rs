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

use amba_bus::consumer::ConsumerSpec;
use amba_bus::service::Service;
use amba_bus::{Bus, Namespace, RunError};
use sqlx::migrate::Migrator;
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

/// What the platform decides for the commission service.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommissionConfig {
    /// Overrides paid upline to sponsors (`MULTI_LEVEL_ENABLED`).
    pub multi_level_enabled: bool,
}

/// Consumes events, answers requests and releases holds until `shutdown`, then drains.
pub async fn run(
    database_url: &str,
    bus: Bus,
    config: CommissionConfig,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let service = Service::open(database_url, SCHEMA, &MIGRATIONS, 24, bus, shutdown).await?;
    let [enrollment_spec, attribution_spec] = consumer_specs(service.ns());
    let attribution_events = consumers::AttributionEvents {
        multi_level_enabled: config.multi_level_enabled,
        ns: service.ns().clone(),
    };
    let server = rpc::server(rpc::Commission::new(service.pool.clone()));
    let sweep = sweep::run(service.pool.clone(), SWEEP_INTERVAL, service.shutdown.clone());
    service
        .consume(enrollment_spec, consumers::EnrollmentEvents)
        .consume(attribution_spec, attribution_events)
        .serve(server)
        .part(async {
            sweep.await;
            Ok::<_, RunError>(())
        })
        .run()
        .await
}
