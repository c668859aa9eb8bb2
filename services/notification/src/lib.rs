//! Notification: affiliate e-mails from the other services' events (docs/architecture.md, "Notifications").
//! It only consumes events, so e-mail can never block, delay or roll back money.
//!
//! - `domain`: the templates and money formatting (pure);
//! - `consumers`: events → e-mail rows, once per (event, template), honouring preferences;
//! - `jobs`: the sender (retries with backoff, permanent failures recorded) and the digest clock;
//! - `mail`: SMTP (lettre) or `.eml` files; `rpc`: preferences, one-click unsubscribe and the
//!   org's e-mail log; `unsubscribe`: the signed tokens of unsubscribe links.

pub mod consumers;
pub mod domain;
pub mod feed;
pub mod jobs;
pub mod mail;
pub mod rpc;
pub mod store;
pub mod unsubscribe;
pub mod webhooks;

use amba_bus::consumer::ConsumerSpec;
use amba_bus::service::Service;
use amba_bus::{Bus, RunError};
use sqlx::migrate::Migrator;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = amba_proto::methods::notification::SERVICE;
pub const SCHEMA: &str = "notification";
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Where e-mails go and what they say about the sender.
#[derive(Clone)]
pub struct NotificationConfig {
    pub transport: mail::Transport,
    pub envelope: mail::Envelope,
    /// `AMBA_PUBLIC_URL`: affiliate links in e-mails.
    pub public_url: String,
    /// How often the sender looks for due e-mails.
    pub send_interval: Duration,
    /// How often the digest clock looks for ended periods.
    pub digest_interval: Duration,
    /// `AMBA_LINK_SECRET`: signs one-click unsubscribe links (without it, e-mails link to the
    /// preferences page only: a per-process key would break links on restart).
    pub link_secret: Option<amba_core::secret::Secret>,
    /// Send budgets per sending and per receiving org.
    pub budgets: consumers::Budgets,
    /// Outbound webhooks: which targets are allowed, how fast retries come.
    pub webhooks: domain::webhooks::WebhookConfig,
}

/// Applies this service's migrations (also done by [`run`]).
pub async fn migrate(database_url: &str) -> Result<(), RunError> {
    amba_bus::service::open_store(database_url, SCHEMA, &MIGRATIONS, 2)
        .await
        .map(|_| ())
}

/// The durable consumers this service reads: declared by `amba migrate`, bound by [`run`]: the
/// e-mails' and the event feed's.
pub fn consumer_specs(ns: &amba_bus::Namespace) -> Vec<ConsumerSpec> {
    let mut specs = mail_consumer_specs(ns).to_vec();
    specs.extend(feed::consumer_specs(ns, SERVICE));
    specs
}

fn mail_consumer_specs(ns: &amba_bus::Namespace) -> [ConsumerSpec; 4] {
    // Only what leads to an e-mail: clicks never reach this service.
    let sources = [
        ("enrollment", String::new()),
        ("attribution", ns.event("conversion", "*")),
        ("commission", ns.event("commission", "clawed_back")),
        ("payout", String::new()),
    ];
    sources.map(|(stream, filter)| {
        let spec = ConsumerSpec::new(ns.events_stream(stream), ns.consumer(SERVICE, stream), filter);
        if stream == "attribution" {
            // One event per sale: a few workers taking large groups record them for the digests
            // with a few commits a second instead of one per sale, beside ingest on the same cores.
            spec.with_concurrency(CONVERSION_WORKERS)
                .with_max_batch(CONVERSION_BATCH)
                .with_linger(CONVERSION_LINGER)
        } else {
            spec
        }
    })
}

/// Workers recording conversion events for e-mails and digests.
const CONVERSION_WORKERS: usize = 4;
/// Most conversion events a worker records in one transaction.
const CONVERSION_BATCH: usize = 256;
/// How long a worker waits for its group to fill (an affiliate's first commission is e-mailed
/// this much later at most).
const CONVERSION_LINGER: std::time::Duration = std::time::Duration::from_millis(200);

/// Consumes every stream that leads to an e-mail, sends, answers requests; until `shutdown`.
pub async fn run(
    database_url: &str,
    bus: Bus,
    config: NotificationConfig,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let mut service = Service::open(database_url, SCHEMA, &MIGRATIONS, 8, bus, shutdown).await?;
    let handler = consumers::Events {
        public_url: config.public_url.clone(),
        budgets: config.budgets,
    };
    for spec in mail_consumer_specs(service.ns()) {
        service = service.consume(spec, handler.clone());
    }
    for spec in feed::consumer_specs(service.ns(), SERVICE) {
        service = service.consume(spec, feed::FeedProjection);
    }
    let pool = service.pool.clone();
    let server = rpc::server(rpc::Notification {
        pool: pool.clone(),
        link_secret: config.link_secret.clone(),
        webhooks: config.webhooks.clone(),
    });
    let sender = jobs::deliver(
        pool.clone(),
        config.transport.clone(),
        config.envelope.clone(),
        config.link_secret.clone(),
        config.send_interval,
        service.shutdown.clone(),
    );
    let digests = jobs::digests(pool.clone(), config.digest_interval, service.shutdown.clone());
    let prune = feed::prune(pool.clone(), service.shutdown.clone());
    let hooks = webhooks::deliver(pool, config.webhooks.clone(), service.shutdown.clone());
    service
        .serve(server)
        .part(sender)
        .part(digests)
        .part(prune)
        .part(hooks)
        .run()
        .await
}
