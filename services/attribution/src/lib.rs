//! Attribution: touchpoints (clicks), conversions and who gets the credit for them, customer
//! bindings for renewals, owner approvals and clawbacks. It keeps its own read model of
//! programs, enrollments and codes from enrollment's events, and announces
//! `touchpoint.recorded` and `conversion.*` for commission and notification.
//!
//! The report path is the product's hot path: reports go through group-commit writer actors
//! (see [`actors::writer`]) so thousands of reports share one transaction and one commit.

pub mod actors;
pub mod consumers;
pub mod domain;
pub mod jobs;
pub mod rpc;
pub mod store;

use amba_bus::consumer::ConsumerSpec;
use amba_bus::service::Service;
use amba_bus::{Bus, Namespace, RunError};
use sqlx::migrate::Migrator;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = amba_proto::methods::attribution::SERVICE;
pub const SCHEMA: &str = "attribution";
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");
/// Writer actors on the report path (each commits its own batches). One gives the largest
/// batches and so the fewest WAL flushes per report; measured best on a 2-core machine (see
/// docs/performance.md). The sharding by key stays so more cores can use more writers.
const WRITER_SHARDS: usize = 1;
/// Outbox relays: every new conversion is an event, so publishing needs more than one (they share
/// the outbox with `SKIP LOCKED`; measured with the writer settings above, docs/performance.md).
const RELAYS: usize = 2;

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
            ns.consumer(SERVICE, "enrollment_facts"),
            String::new(),
        ),
        ConsumerSpec::new(
            ns.events_stream("edge"),
            ns.consumer(SERVICE, "callers"),
            ns.event("caller", "seen"),
        ),
    ]
}

/// What the operator configures.
#[derive(Debug, Clone, Default)]
pub struct AttributionConfig {
    /// Throwaway e-mail domains beyond the bundled list, one per line (the contents of
    /// `AMBA_DISPOSABLE_DOMAINS_FILE`): the list grows without a release.
    pub extra_disposable_domains: String,
    /// Where reference exchange rates come from (`AMBA_FX_RATES_URL`), and how often they are
    /// fetched; `None` turns fetching off (sales in another currency then wait).
    pub rates: Option<jobs::fx_rates::RateFeed>,
}

/// Serves until `shutdown`; then drains requests and writers, and flushes the outbox.
pub async fn run(
    database_url: &str,
    bus: Bus,
    config: AttributionConfig,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let service = Service::open(database_url, SCHEMA, &MIGRATIONS, 24, bus, shutdown)
        .await?
        .relays(RELAYS);
    let rules = Arc::new(actors::accrue::RuleCache::default());
    let deps = actors::writer::WriterDeps {
        pool: service.pool.clone(),
        ns: service.ns().clone(),
        waker: service.waker.clone(),
        ingest: service.bus.ingest.clone(),
        rules: rules.clone(),
        disposable: Arc::new(domain::fraud::DisposableDomains::new(&config.extra_disposable_domains)),
    };
    let (writers, mut writer_tasks) = actors::writer::Writers::start(deps, WRITER_SHARDS);
    let [facts, callers] = consumer_specs(service.ns());
    let rates = config.rates.map(|feed| jobs::fx_rates::FxRates {
        pool: service.pool.clone(),
        ns: service.ns().clone(),
        waker: service.waker.clone(),
        rules: rules.clone(),
        feed,
    });
    let attribution = rpc::Attribution::new(
        service.pool.clone(),
        service.ns().clone(),
        service.waker.clone(),
        writers,
        rules,
    );
    let server =
        rpc::server(attribution).serve(service.bus.nats.clone(), service.ns().clone(), service.shutdown.clone());
    let serving = async move {
        let served = server.await;
        // The last `Writers` handle went with the server: writers finish their queues and stop.
        while writer_tasks.join_next().await.is_some() {}
        served
    };
    // A read model that stopped following fails the service (and so the process) at once.
    let mut service = service
        .consume(facts, consumers::read_model::EnrollmentFacts)
        .consume(callers, consumers::read_model::CallerAddresses)
        .part(serving);
    if let Some(rates) = rates {
        let stop = service.shutdown.clone();
        service = service.part(rates.run(stop));
    }
    service.run().await
}
