//! Running services: one (`amba serve <service>`, one per Kubernetes Deployment) or all of them
//! in one process (`amba dev`, the tests).

use crate::Settings;
use amba_bus::{Bus, RunError};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceName {
    Enrollment,
    Attribution,
    Commission,
    Payout,
    Notification,
    Edge,
}

impl ServiceName {
    pub const ALL: [ServiceName; 6] = [
        ServiceName::Enrollment,
        ServiceName::Attribution,
        ServiceName::Commission,
        ServiceName::Payout,
        ServiceName::Notification,
        ServiceName::Edge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Enrollment => "enrollment",
            ServiceName::Attribution => "attribution",
            ServiceName::Commission => "commission",
            ServiceName::Payout => "payout",
            ServiceName::Notification => "notification",
            ServiceName::Edge => "edge",
        }
    }

    /// On the report path: callers wait for it.
    fn takes_reports(self) -> bool {
        matches!(self, ServiceName::Edge | ServiceName::Attribution)
    }

    /// Works off events in its own time (the ledger, e-mail, payouts): nobody's report waits for it.
    fn works_off_events(self) -> bool {
        matches!(
            self,
            ServiceName::Commission | ServiceName::Notification | ServiceName::Payout
        )
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServiceName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ServiceName::ALL.into_iter().find(|n| n.as_str() == s).ok_or_else(|| {
            format!(
                "unknown service {s:?}; expected one of enrollment, attribution, commission, payout, notification, edge"
            )
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Nats {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot read the NATS credentials {path:?} (AMBA_NATS_CREDS): {source}")]
    NatsCredentials {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("AMBA_FAILPOINTS {name}: {problem}")]
    Failpoint { name: String, problem: String },
    #[error(
        "cannot declare the JetStream streams (is JetStream enabled on the server? where `amba migrate` \
         declares them, has it run?): {0}"
    )]
    Streams(async_nats::Error),
    #[error("cannot declare the JetStream consumer {name}: {source}")]
    Consumer { name: String, source: async_nats::Error },
    #[error("{service}: {source}")]
    Service { service: ServiceName, source: RunError },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0} did not become ready in time")]
    NotReady(ServiceName),
    #[error(transparent)]
    Roles(#[from] crate::roles::RolesError),
}

/// Services started in this process.
pub struct Running {
    http_addr: Option<SocketAddr>,
    grpc_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    /// Why services stopped on their own (errors, panics): any makes the whole process stop.
    failures: Failures,
    /// The process's NATS connections (one per service), flushed at the end.
    connections: Vec<async_nats::Client>,
    /// Where the services that work off events run, beside ingest in the same process.
    background: Option<Background>,
}

/// A runtime of its own, with one worker thread, for the services that work off events (the
/// ledger, e-mail, payouts) when the process also takes reports (`amba dev`): they catch up
/// from JetStream whenever there is room, but can never take the cores' worth of threads that
/// the edge and the report writer need to answer callers (docs/performance.md, issue 27).
struct Background(Option<tokio::runtime::Runtime>);

/// How long a stopping process waits for NATS to confirm what it published last.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

impl Background {
    /// One, if `services` mixes ingest (edge, attribution) with event-driven services.
    fn for_services(services: &[ServiceName]) -> std::io::Result<Option<Background>> {
        let ingest = services.iter().any(|s| s.takes_reports());
        if !ingest || !services.iter().any(|s| s.works_off_events()) {
            return Ok(None);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("amba-background")
            .enable_all()
            .build()?;
        Ok(Some(Background(Some(runtime))))
    }

    fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(tokio::runtime::Runtime::handle)
    }
}

impl Drop for Background {
    /// Its tasks have ended by now (or are abandoned on a failed start): dropping a runtime
    /// where the process may be inside another one must not block.
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// What went wrong in the services of a process, shared with their tasks.
#[derive(Clone, Default)]
struct Failures(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Failures {
    /// Records a failure and stops every service: nothing runs half-alive.
    fn stop_all(&self, shutdown: &CancellationToken, what: String) {
        tracing::error!(failure = %what, "shutting down");
        if let Ok(mut failures) = self.0.lock() {
            failures.push(what);
        }
        shutdown.cancel();
    }

    fn take(&self) -> Vec<String> {
        self.0.lock().map(|mut f| std::mem::take(&mut *f)).unwrap_or_default()
    }
}

impl Running {
    /// Where the edge listens (if this process runs it).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Where the edge's gRPC listens (if this process runs it).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// Where `/metrics` listens (`AMBA_METRICS_ADDR`), if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Asks every service to stop taking work and finish what it has.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every service has stopped, then flushes NATS. An error names every service
    /// that stopped on its own (an error or a panic), which stopped the others.
    pub async fn wait(mut self) -> Result<(), String> {
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(err) = joined {
                self.failures.stop_all(&self.shutdown, format!("a task failed: {err}"));
            }
        }
        // Flushed while the background runtime still runs: the connections of the services on it
        // are driven by tasks of that runtime, and a flush with no one to answer it never ends.
        for nats in &self.connections {
            match tokio::time::timeout(FINAL_FLUSH, nats.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "final NATS flush failed"),
                Err(_) => tracing::warn!("final NATS flush timed out"),
            }
        }
        drop(self.background.take());
        let failures = self.failures.take();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    /// Stops and waits.
    pub async fn stop(self) -> Result<(), String> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Connects to NATS with the configured credentials and TLS, connection events logged (a slow
/// consumer is the only sign of drops). Reconnects forever by itself.
pub async fn connect_nats(settings: &Settings, name: &str) -> Result<async_nats::Client, StartError> {
    let url = settings.nats_url.as_str();
    let failed = |source| StartError::Nats {
        url: url.to_owned(),
        source,
    };
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connected"),
                async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                other => tracing::warn!(event = %other, "nats event"),
            }
        });
    if let Some(creds) = &settings.nats_creds {
        let unreadable = |source| StartError::NatsCredentials {
            path: creds.clone(),
            source,
        };
        let text = tokio::fs::read_to_string(creds).await.map_err(unreadable)?;
        // A decentralized-auth `.creds` file (user JWT and nkey seed), or one `user:password`
        // line for servers with users in their config (deploy/nats/accounts.conf).
        options = if text.contains("BEGIN NATS USER JWT") {
            options.credentials_file(creds).await.map_err(unreadable)?
        } else {
            let (user, password) = text.trim().split_once(':').ok_or_else(|| {
                unreadable(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "neither a NATS .creds file nor a user:password line",
                ))
            })?;
            options.user_and_password(user.to_owned(), password.to_owned())
        };
        // Replies and JetStream deliveries come to this user's own inboxes, the only ones its
        // permissions let it read (deploy/nats/accounts.conf): never another user's.
        if let Some(user) = creds_user(&text) {
            options = options.custom_inbox_prefix(inbox_prefix(&user));
        }
    }
    if let Some(ca) = &settings.nats_tls_ca {
        options = options.require_tls(true).add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &settings.nats_tls_client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    // Several servers (a cluster) are given comma-separated; the client fails over between them.
    let servers = url
        .split(',')
        .map(|server| server.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(e.into()))?;
    options.connect(servers).await.map_err(failed)
}

/// The user a credentials file logs in as: the `user` of a `user:password` line, or the `name`
/// claim of a `.creds` file's user JWT.
fn creds_user(text: &str) -> Option<String> {
    use base64::Engine as _;
    if !text.contains("BEGIN NATS USER JWT") {
        return text
            .trim()
            .split_once(':')
            .map(|(user, _)| user.to_owned())
            .filter(|user| !user.is_empty());
    }
    let jwt = text
        .lines()
        .skip_while(|line| !line.contains("BEGIN NATS USER JWT"))
        .nth(1)?;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwt.trim().split('.').nth(1)?.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&claims).ok()?;
    claims["name"]
        .as_str()
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
}

/// `_INBOX_<user>`: a user's own inbox prefix (a character that cannot be in a subject token
/// becomes `_`). Without credentials the client keeps NATS's `_INBOX`.
pub fn inbox_prefix(user: &str) -> String {
    let token: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("_INBOX_{token}")
}

/// The durable consumers `service` reads (what `amba migrate` declares for it).
pub fn consumer_specs(service: ServiceName, ns: &amba_bus::Namespace) -> Vec<amba_bus::consumer::ConsumerSpec> {
    match service {
        ServiceName::Enrollment | ServiceName::Edge => Vec::new(),
        ServiceName::Attribution => amba_attribution::consumer_specs(ns).into(),
        ServiceName::Commission => amba_commission::consumer_specs(ns).into(),
        ServiceName::Payout => amba_payout::consumer_specs(ns).into(),
        ServiceName::Notification => amba_notification::consumer_specs(ns),
    }
}

/// The event streams `services` use: the ones they publish to (each its own; the edge's holds
/// Stripe webhooks) and the ones their consumers read.
fn streams_used(services: &[ServiceName], ns: &amba_bus::Namespace) -> Vec<&'static str> {
    let mut owners: Vec<&'static str> = Vec::new();
    for &service in services {
        owners.push(service.as_str());
        for spec in consumer_specs(service, ns) {
            owners.extend(amba_bus::streams::owner_of(ns, &spec.stream));
        }
    }
    owners.sort_unstable();
    owners.dedup();
    owners
}

/// What `amba migrate` declares on NATS, as a user that may (its own in a deployment): every
/// event stream, created or updated to `AMBA_STREAM_REPLICAS`, and every service's durable
/// consumers. A service's user may only look them up and read (deploy/nats/accounts.conf).
pub async fn declare_jetstream(settings: &Settings) -> Result<(), StartError> {
    let nats = connect_nats(settings, "amba-migrate").await?;
    let js = async_nats::jetstream::new(nats.clone());
    let ns = &settings.namespace;
    retrying("event streams", || {
        amba_bus::streams::ensure_event_streams(&js, ns, settings.stream_replicas)
    })
    .await
    .map_err(StartError::Streams)?;
    for service in ServiceName::ALL {
        for spec in consumer_specs(service, ns) {
            retrying(&spec.durable_name, || amba_bus::consumer::declare(&js, &spec))
                .await
                .map_err(|source| StartError::Consumer {
                    name: spec.durable_name.clone(),
                    source,
                })?;
        }
    }
    if let Err(err) = nats.flush().await {
        tracing::warn!(error = %err, "final NATS flush failed");
    }
    Ok(())
}

/// Applies every service's migrations, then sets up each service's own database role and
/// grants (`amba migrate`, the Kubernetes migration Job; run with the schemas' owner's URL).
/// Always migrates, whatever role a service would use at start.
pub async fn migrate_all(settings: &Settings) -> Result<(), StartError> {
    let url = settings.database_url.expose();
    let schemas: [(ServiceName, &'static str, &sqlx::migrate::Migrator); 5] = [
        (
            ServiceName::Enrollment,
            amba_enrollment::SCHEMA,
            &amba_enrollment::MIGRATIONS,
        ),
        (
            ServiceName::Attribution,
            amba_attribution::SCHEMA,
            &amba_attribution::MIGRATIONS,
        ),
        (
            ServiceName::Commission,
            amba_commission::SCHEMA,
            &amba_commission::MIGRATIONS,
        ),
        (ServiceName::Payout, amba_payout::SCHEMA, &amba_payout::MIGRATIONS),
        (
            ServiceName::Notification,
            amba_notification::SCHEMA,
            &amba_notification::MIGRATIONS,
        ),
    ];
    for (service, schema, migrations) in schemas {
        let migrated: Result<(), RunError> = async {
            let pool = amba_bus::store::connect(url, schema, 2).await?;
            let migrated = amba_bus::store::migrate(&pool, schema, migrations).await;
            pool.close().await;
            Ok(migrated?)
        }
        .await;
        migrated.map_err(|source| StartError::Service { service, source })?;
    }
    crate::roles::ensure(url, &settings.db_passwords).await?;
    Ok(())
}

/// Starts `services` in this process. Migrations are applied first, the streams they use
/// declared where missing or different (see `amba_bus::streams::ensure_streams`), and
/// the call returns once the request/reply services answer and the edge is listening.
pub async fn start(settings: &Settings, services: &[ServiceName]) -> Result<Running, StartError> {
    amba_telemetry::metrics::prometheus();
    for (name, actions) in &settings.failpoints {
        fail::cfg(name, actions).map_err(|problem| StartError::Failpoint {
            name: name.clone(),
            problem,
        })?;
        tracing::warn!(%name, %actions, "fault injection point configured");
    }
    let nats = connect_nats(settings, &format!("amba-{}", settings.namespace)).await?;
    let bus = Bus::new(nats.clone(), settings.namespace.clone());
    let streams = streams_used(services, &bus.ns);
    retrying("event streams", || {
        amba_bus::streams::ensure_streams(&bus.js, &bus.ns, &streams, settings.stream_replicas)
    })
    .await
    .map_err(StartError::Streams)?;

    let shutdown = CancellationToken::new();
    let failures = Failures::default();
    let mut tasks = JoinSet::new();
    tasks.spawn(amba_telemetry::metrics::upkeep_until(
        shutdown.clone().cancelled_owned(),
    ));
    let has_store = services.iter().any(|&s| s != ServiceName::Edge);
    let health = crate::ops::Health::new(
        nats.clone(),
        has_store.then(|| health_pool(settings.database_url.expose())).flatten(),
        shutdown.clone(),
    );
    tasks.spawn(health.clone().watch_nats());
    // The ops port answers from the start, so probes see "starting" rather than nothing.
    let metrics_addr = match settings.metrics_addr {
        Some(addr) => Some(serve_ops(addr, health.clone(), &shutdown, &mut tasks).await?),
        None => None,
    };
    let mut connections = vec![nats.clone()];
    let background = Background::for_services(services).map_err(|source| StartError::Service {
        service: ServiceName::Commission,
        source: RunError::Setup(format!("cannot start the background runtime: {source}")),
    })?;
    // Beside ingest, the services that work off events share a few database transactions, fewer
    // while reports are being written. One budget for all of them, not one each, with the
    // ledger's turns first: measured, a budget per service let e-mail take turns from the ledger
    // (docs/performance.md).
    let budget = background.as_ref().map(|_| {
        amba_bus::budget::Budget::new(
            settings.background_transactions_while_ingesting,
            settings.background_transactions,
        )
    });
    let url = settings.database_url.expose().to_owned();
    let attribution_config = attribution_config(settings).map_err(|source| StartError::Service {
        service: ServiceName::Attribution,
        source: RunError::Setup(source),
    })?;
    let commission_config = amba_commission::CommissionConfig {
        multi_level_enabled: settings.multi_level_enabled,
    };
    let enrollment_config = amba_enrollment::EnrollmentConfig {
        platform_host: amba_core::landing::host_of(&settings.public_url),
    };
    let payout_config = payout_config(settings);
    let notification_config = if services.contains(&ServiceName::Notification) {
        Some(notification_config(settings).map_err(|source| StartError::Service {
            service: ServiceName::Notification,
            source: RunError::Setup(source),
        })?)
    } else {
        None
    };
    for &service in services {
        if service == ServiceName::Edge {
            continue;
        }
        // Migrate before spawning so a schema problem fails start-up, not a request.
        migrate_one(service, &url)
            .await
            .map_err(|source| StartError::Service { service, source })?;
        let runtime = background
            .as_ref()
            .and_then(Background::handle)
            .filter(|_| service.works_off_events())
            .cloned()
            .unwrap_or_else(tokio::runtime::Handle::current);
        let bus = service_bus(settings, service, &runtime, &mut connections)
            .await?
            .with_budget(budget.clone().filter(|_| service.works_off_events()).map(|budget| {
                budget.with_precedence(match service {
                    ServiceName::Notification => amba_bus::budget::Precedence::Later,
                    _ => amba_bus::budget::Precedence::First,
                })
            }))
            .with_ingest(
                budget
                    .as_ref()
                    .filter(|_| service == ServiceName::Attribution)
                    .map(amba_bus::budget::Budget::ingest),
            );
        let (url, stop, payout_config) = (url.clone(), shutdown.clone(), payout_config.clone());
        let notification_config = notification_config.clone();
        let enrollment_config = enrollment_config.clone();
        let attribution_config = attribution_config.clone();
        let (service_shutdown, failures) = (shutdown.clone(), failures.clone());
        tasks.spawn_on(
            async move {
                // Each service's future is boxed: their state machines are large, and a task holding
                // all five inline would be built on the stack before being moved to the heap.
                let run: Pin<Box<dyn Future<Output = Result<(), RunError>> + Send>> = match service {
                    ServiceName::Enrollment => Box::pin(amba_enrollment::run(&url, bus, enrollment_config, stop)),
                    ServiceName::Attribution => Box::pin(amba_attribution::run(&url, bus, attribution_config, stop)),
                    ServiceName::Commission => Box::pin(amba_commission::run(&url, bus, commission_config, stop)),
                    ServiceName::Payout => Box::pin(amba_payout::run(&url, bus, payout_config.clone(), stop)),
                    ServiceName::Notification => match notification_config.clone() {
                        Some(config) => Box::pin(amba_notification::run(&url, bus, config, stop)),
                        None => Box::pin(async {
                            Err(RunError::Setup("the notification transport is not configured".into()))
                        }),
                    },
                    ServiceName::Edge => Box::pin(async { Ok(()) }),
                };
                match run.await {
                    Err(err) => failures.stop_all(&service_shutdown, format!("{service}: {err}")),
                    Ok(()) if !service_shutdown.is_cancelled() => {
                        failures.stop_all(&service_shutdown, format!("{service} stopped by itself"))
                    }
                    Ok(()) => {}
                }
            },
            &runtime,
        );
    }
    for service in [ServiceName::Enrollment, ServiceName::Attribution] {
        if services.contains(&service) {
            wait_until_answering(&bus, service).await?;
        }
    }

    let mut http_addr = None;
    let mut grpc_addr = None;
    if services.contains(&ServiceName::Edge) {
        let config = amba_edge::EdgeConfig {
            http_addr: settings.http_addr,
            grpc_addr: settings.grpc_addr,
            public_url: settings.public_url.clone(),
            allowed_hosts: settings.allowed_hosts.clone(),
            trusted_proxies: settings.trusted_proxies.clone(),
            link_secret: settings.link_secret.clone(),
            stripe_webhook_secrets: settings.stripe_webhook_secrets.clone(),
            budgets: settings.org_budgets.clone(),
        };
        let edge_bus = service_bus(
            settings,
            ServiceName::Edge,
            &tokio::runtime::Handle::current(),
            &mut connections,
        )
        .await?;
        let edge = amba_edge::Edge::bind(config, &edge_bus)
            .await
            .map_err(|source| StartError::Bind {
                addr: settings.http_addr,
                source,
            })?;
        http_addr = edge.local_addr().ok();
        grpc_addr = edge.grpc_addr().ok();
        let (stop, failures) = (shutdown.clone(), failures.clone());
        tasks.spawn(async move {
            if let Err(err) = Box::pin(edge.serve(stop.clone())).await {
                failures.stop_all(&stop, format!("edge: {err}"));
            }
        });
    }
    health.mark_started();
    Ok(Running {
        http_addr,
        grpc_addr,
        metrics_addr,
        shutdown,
        tasks,
        failures,
        connections,
        background,
    })
}

/// A connection of `service`'s own, as it has when it runs alone: in one process, one service's
/// traffic (a consumer pulling hundreds of events, a relay publishing a thousand) never queues
/// ahead of another's request or reply on a shared socket (docs/performance.md, issue 27).
/// The connection is made on `runtime`, the one the service runs on, so that its reading and
/// writing tasks run there too.
async fn service_bus(
    settings: &Settings,
    service: ServiceName,
    runtime: &tokio::runtime::Handle,
    connections: &mut Vec<async_nats::Client>,
) -> Result<Bus, StartError> {
    let (settings_copy, name) = (settings.clone(), format!("amba-{}-{service}", settings.namespace));
    let nats = runtime
        .spawn(async move { connect_nats(&settings_copy, &name).await })
        .await
        .map_err(|err| StartError::Service {
            service,
            source: RunError::Setup(format!("connecting to NATS failed: {err}")),
        })??;
    connections.push(nats.clone());
    Ok(Bus::new(nats, settings.namespace.clone()))
}

/// Runs a JetStream declaration until it succeeds, for up to a minute: a NATS cluster that is
/// electing leaders, or placing replicated streams for several starting processes at once,
/// answers late (and a service may start before `amba migrate` declared what it uses).
async fn retrying<F, Fut>(what: &str, mut declare: F) -> Result<(), async_nats::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), async_nats::Error>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut pause = Duration::from_millis(200);
    loop {
        match declare().await {
            Ok(()) => return Ok(()),
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %err, %what, "not declared yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(err),
        }
    }
}

/// One lazy connection for `/readyz`'s PostgreSQL check (none if the URL does not parse; the
/// services would already have refused it).
fn health_pool(url: &str) -> Option<sqlx::PgPool> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(url)
        .ok()
}

/// Binds the ops port and serves `/livez`, `/readyz`, `/metrics` until shutdown.
async fn serve_ops(
    addr: SocketAddr,
    health: crate::ops::Health,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<SocketAddr, StartError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let serve = axum::serve(listener, crate::ops::router(health)).with_graceful_shutdown(stop.cancelled_owned());
        if let Err(err) = serve.await {
            tracing::error!(error = %err, "ops listener stopped");
        }
    });
    Ok(bound)
}

async fn migrate_one(service: ServiceName, url: &str) -> Result<(), RunError> {
    match service {
        ServiceName::Enrollment => amba_enrollment::migrate(url).await,
        ServiceName::Attribution => amba_attribution::migrate(url).await,
        ServiceName::Commission => amba_commission::migrate(url).await,
        ServiceName::Payout => amba_payout::migrate(url).await,
        ServiceName::Notification => amba_notification::migrate(url).await,
        ServiceName::Edge => Ok(()),
    }
}

async fn wait_until_answering(bus: &Bus, service: ServiceName) -> Result<(), StartError> {
    let rpc = amba_bus::rpc::RpcClient::new(bus.nats.clone(), bus.ns.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline {
        if rpc.ping(service.as_str()).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(StartError::NotReady(service))
}

/// Starts the in-project fake Stripe for `amba dev` and points `settings` at it: its API, a
/// fresh key and webhook secret, and webhooks to this edge's `/webhooks/stripe`. Never used by
/// `amba serve`, where a missing key makes payout calls refuse with a clear error.
pub async fn local_stripe(settings: &mut Settings) -> Result<amba_stripe_fake::FakeStripe, std::io::Error> {
    let secret_key = format!("sk_test_local_{}", amba_core::id::time_ordered_suffix());
    let webhook_secret = format!("whsec_local_{}", amba_core::id::time_ordered_suffix());
    let fake = amba_stripe_fake::FakeStripe::start(amba_stripe_fake::FakeConfig {
        secret_key: secret_key.clone(),
        webhook_secret: webhook_secret.clone(),
        webhook_url: Some(format!("{}/webhooks/stripe", settings.public_url)),
    })
    .await?;
    settings.stripe_api_base = fake.base_url();
    settings.stripe_secret_key = Some(amba_core::secret::Secret::new(secret_key));
    settings.stripe_webhook_secrets = vec![amba_core::secret::Secret::new(webhook_secret)];
    tracing::info!(api = %fake.base_url(), "using the local fake Stripe");
    Ok(fake)
}

/// The payout service's configuration from the settings.
/// Attribution's configuration: the operator's extra disposable e-mail domains, if any.
pub fn attribution_config(settings: &Settings) -> Result<amba_attribution::AttributionConfig, String> {
    let extra_disposable_domains = match &settings.disposable_domains_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("AMBA_DISPOSABLE_DOMAINS_FILE {}: {e}", path.display()))?,
        None => String::new(),
    };
    Ok(amba_attribution::AttributionConfig {
        extra_disposable_domains,
        rates: settings.fx_rates.clone(),
    })
}

pub fn payout_config(settings: &Settings) -> amba_payout::PayoutConfig {
    amba_payout::PayoutConfig {
        stripe: settings
            .stripe_secret_key
            .clone()
            .map(|key| (settings.stripe_api_base.clone(), key)),
        payouts_live: settings.payouts_live,
        unknown_grace: settings.payout_unknown_grace,
        stripe_timeout: settings.stripe_timeout,
        ..Default::default()
    }
}

/// Where the notification service sends e-mail: `AMBA_SMTP_URL`, else `.eml` files in
/// `AMBA_DATA_DIR/mail/` (what `amba dev` prints at start).
pub fn notification_config(settings: &Settings) -> Result<amba_notification::NotificationConfig, String> {
    use amba_notification::mail::{Envelope, Transport};
    let transport = match &settings.smtp_url {
        Some(url) => Transport::smtp(url.expose()).map_err(|e| format!("AMBA_SMTP_URL: {e}"))?,
        None => {
            let dir = mail_dir(settings);
            Transport::files(dir.clone()).map_err(|e| format!("{}: {e}", dir.display()))?
        }
    };
    let from = settings
        .mail_from
        .parse()
        .map_err(|e| format!("AMBA_MAIL_FROM {:?}: {e}", settings.mail_from))?;
    Ok(amba_notification::NotificationConfig {
        transport,
        envelope: Envelope {
            from,
            host: amba_edge::host_of(&settings.public_url).unwrap_or_else(|| "localhost".into()),
            preferences_url: format!("{}/notifications", settings.public_url),
            public_url: settings.public_url.clone(),
        },
        public_url: settings.public_url.clone(),
        send_interval: std::time::Duration::from_millis(250),
        digest_interval: std::time::Duration::from_secs(30),
        link_secret: settings.link_secret.clone(),
        budgets: settings.mail_budgets,
        webhooks: amba_notification::domain::webhooks::WebhookConfig {
            allow_private: settings.webhooks_allow_private,
            retry_scale: settings.webhook_retry_scale,
            own_host: amba_edge::host_of(&settings.public_url),
        },
    })
}

/// Where e-mails are written without an SMTP server.
pub fn mail_dir(settings: &Settings) -> std::path::PathBuf {
    settings.data_dir.join("mail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn each_nats_user_gets_its_own_inbox_prefix() {
        assert_eq!(creds_user("edge:secret\n").as_deref(), Some("edge"));
        assert_eq!(creds_user("no password line"), None);
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"name":"payout","nats":{}}"#);
        let creds = format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.{claims}.c2ln\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\nSUAXXX\n------END USER NKEY SEED------\n"
        );
        assert_eq!(creds_user(&creds).as_deref(), Some("payout"));
        assert_eq!(inbox_prefix("notification"), "_INBOX_notification");
        assert_eq!(inbox_prefix("a.b *>"), "_INBOX_a_b___");
    }
}
