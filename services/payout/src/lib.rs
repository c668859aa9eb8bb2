//! Payout: Stripe Connect payout accounts, payout runs and their items, the Stripe event log and
//! schedules (docs/architecture.md, "Payouts"). Money moves through the commission ledger's two-phase API:
//! reserve → transfer → post, or void on a definite refusal (docs/ledger.md).
//!
//! - `domain`: the plan of a run (threshold, fee, debt, who is skipped and why) and schedules;
//! - `store`: accounts, runs, items, the programs read model, Stripe events;
//! - `stripe`: the Stripe API client; `settle`: one item's way to paid or failed;
//! - `rpc`: accounts, onboarding, quote, runs; `consumers`: programs, Stripe webhooks, ticks;
//! - `jobs`: the in-flight job that finishes what was interrupted or unknown.

pub mod consumers;
pub mod domain;
pub mod jobs;
pub mod rpc;
pub mod settle;
pub mod store;
pub mod stripe;

use amba_bus::consumer::ConsumerSpec;
use amba_bus::rpc::RpcClient;
use amba_bus::service::Service;
use amba_bus::{Bus, RunError};
use sqlx::migrate::Migrator;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = amba_proto::methods::payout::SERVICE;
pub const SCHEMA: &str = "payout";
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// How the service reaches Stripe and whether money may move.
#[derive(Debug, Clone)]
pub struct PayoutConfig {
    /// Stripe API base URL and secret key; `None`: payout calls are refused with a clear error.
    pub stripe: Option<(String, amba_core::secret::Secret)>,
    /// `ORG_PAYOUTS_LIVE`.
    pub payouts_live: bool,
    /// How long an unknown transfer may stay absent at Stripe before its reservation is voided.
    pub unknown_grace: Duration,
    /// How often the in-flight job looks for unfinished items.
    pub job_interval: Duration,
    /// How long one Stripe call may take before its outcome counts as unknown.
    pub stripe_timeout: Duration,
}

impl Default for PayoutConfig {
    fn default() -> Self {
        PayoutConfig {
            stripe: None,
            payouts_live: false,
            unknown_grace: Duration::from_secs(60),
            job_interval: Duration::from_secs(1),
            stripe_timeout: Duration::from_secs(20),
        }
    }
}

/// Applies this service's migrations (also done by [`run`]).
pub async fn migrate(database_url: &str) -> Result<(), RunError> {
    amba_bus::service::open_store(database_url, SCHEMA, &MIGRATIONS, 2)
        .await
        .map(|_| ())
}

/// The durable consumers this service reads: declared by `amba migrate`, bound by [`run`]. The
/// edge stream's consumer reads only what it handles: Stripe webhooks and settlement ticks.
pub fn consumer_specs(ns: &amba_bus::Namespace) -> [ConsumerSpec; 2] {
    [
        ConsumerSpec::new(
            ns.events_stream("enrollment"),
            ns.consumer(SERVICE, "programs"),
            ns.event_domain("program"),
        ),
        ConsumerSpec::new(ns.events_stream("edge"), ns.consumer(SERVICE, "outside"), String::new())
            .with_filters(vec![ns.event_domain("stripe"), ns.event("settlement", "tick")]),
    ]
}

/// Runs until `shutdown`, then flushes the outbox.
pub async fn run(
    database_url: &str,
    bus: Bus,
    config: PayoutConfig,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let service = Service::open(database_url, SCHEMA, &MIGRATIONS, 8, bus, shutdown).await?;
    let ns = service.ns().clone();
    let stripe = match &config.stripe {
        Some((base, key)) => Some(
            stripe::Stripe::new(base, key.expose(), config.stripe_timeout)
                .map_err(|e| RunError::Setup(format!("Stripe client: {e}")))?,
        ),
        None => None,
    };
    let settler = settle::Settler {
        pool: service.pool.clone(),
        rpc: RpcClient::new(service.bus.nats.clone(), ns.clone()),
        stripe,
        ns: ns.clone(),
        waker: service.waker.clone(),
        unknown_grace: config.unknown_grace,
        payouts_live: config.payouts_live,
    };
    let payout = rpc::Payout {
        settler: settler.clone(),
        payouts_live: config.payouts_live,
    };
    let [programs_spec, outside_spec] = consumer_specs(&ns);
    let job = jobs::run(settler, config.job_interval, service.shutdown.clone());
    service
        .consume(programs_spec, consumers::ProgramEvents)
        .consume(outside_spec, consumers::OutsideEvents { payout: payout.clone() })
        .serve(rpc::server(payout))
        .part(job)
        .run()
        .await
}

/// Publishes a settlement tick for `at` (`amba tick`, a CronJob, or `amba dev`'s clock). Every
/// tick is applied: it creates the run of each scheduled program due in its period that has none
/// yet (unique per program and period), so a program that became due — or got funded — after an
/// earlier tick that day is settled by the next one. Its `Nats-Msg-Id` is the tick's instant, so
/// a publish retried for the same tick is stored once. Returns whether this one was new.
pub async fn publish_tick(
    js: &async_nats::jetstream::Context,
    ns: &amba_bus::Namespace,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<bool, async_nats::Error> {
    use prost::Message;
    let id = domain::schedule::tick_id(at);
    let tick = amba_proto::wire::SettlementTick {
        meta: Some(amba_proto::wire::EventMeta {
            event_id: id.clone(),
            occurred_at_micros: at.timestamp_micros(),
            traceparent: String::new(),
        }),
        at_micros: at.timestamp_micros(),
    };
    let message = async_nats::jetstream::message::PublishMessage::build()
        .payload(tick.encode_to_vec().into())
        .message_id(&id);
    let ack = js.send_publish(ns.event("settlement", "tick"), message).await?.await?;
    Ok(!ack.duplicate)
}

/// `amba payouts reconcile`: compares Stripe's transfers with the recorded payout items of a
/// program (and with `repair`, posts in-flight items whose transfer exists).
pub async fn reconcile(
    database_url: &str,
    bus: &Bus,
    config: &PayoutConfig,
    program_id: &str,
    repair: bool,
) -> Result<jobs::reconcile::Reconciliation, anyhow::Error> {
    let pool = amba_bus::service::open_store(database_url, SCHEMA, &MIGRATIONS, 2).await?;
    let stripe = match &config.stripe {
        Some((base, key)) => Some(stripe::Stripe::new(base, key.expose(), config.stripe_timeout)?),
        None => None,
    };
    let settler = settle::Settler {
        pool,
        rpc: RpcClient::new(bus.nats.clone(), bus.ns.clone()),
        stripe,
        ns: bus.ns.clone(),
        waker: amba_bus::outbox::RelayWaker::default(),
        unknown_grace: config.unknown_grace,
        payouts_live: config.payouts_live,
    };
    Ok(jobs::reconcile::reconcile(&settler, program_id, repair).await?)
}

/// One org's live-payout switch as an operator sees it (`amba orgs list`).
#[derive(Debug, Clone)]
pub struct OrgPayoutsView {
    pub org_id: String,
    pub settings: Option<store::OrgPayouts>,
    /// A payment method is saved for its payout runs.
    pub funded: bool,
}

/// `amba orgs payouts enable|disable <org_id>`: the operator's per-org switch on top of
/// `ORG_PAYOUTS_LIVE`, recorded with who and when; caps in minor units (`None`: no cap).
pub async fn set_org_payouts(
    database_url: &str,
    org_id: &str,
    enabled: bool,
    caps: (Option<i64>, Option<i64>),
    changed_by: &str,
) -> Result<store::OrgPayouts, anyhow::Error> {
    let (per_run, per_day) = caps;
    anyhow::ensure!(
        per_run.is_none_or(|c| c > 0) && per_day.is_none_or(|c| c > 0),
        "caps are positive amounts in minor units (e.g. 500000 for 5,000.00 USD)"
    );
    let pool = amba_bus::service::open_store(database_url, SCHEMA, &MIGRATIONS, 2).await?;
    let settings = store::OrgPayouts {
        org_id: org_id.to_owned(),
        enabled,
        cap_per_run_minor: per_run,
        cap_per_day_minor: per_day,
        changed_by: changed_by.to_owned(),
        changed_at: chrono::Utc::now(),
    };
    let mut conn = pool.acquire().await?;
    store::set_org_payouts(&mut conn, &settings).await?;
    Ok(settings)
}

/// The live-payout switch and funding of each of `org_ids`.
pub async fn org_payouts(database_url: &str, org_ids: &[String]) -> Result<Vec<OrgPayoutsView>, anyhow::Error> {
    let pool = amba_bus::service::open_store(database_url, SCHEMA, &MIGRATIONS, 2).await?;
    let mut conn = pool.acquire().await?;
    let mut views = Vec::with_capacity(org_ids.len());
    for org_id in org_ids {
        views.push(OrgPayoutsView {
            org_id: org_id.clone(),
            settings: store::org_payouts(&mut conn, org_id).await?,
            funded: store::funding_of_org(&mut conn, org_id)
                .await?
                .is_some_and(|f| f.ready()),
        });
    }
    Ok(views)
}
