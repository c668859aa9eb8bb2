//! The ops port (`AMBA_METRICS_ADDR`) every process serves, whatever services it runs:
//! `/livez`, `/readyz` and `/metrics` — what Kubernetes probes and Prometheus scrapes.
//!
//! - ready: start-up finished, not draining, NATS connected and (for a process with a store)
//!   PostgreSQL answering. A process that is not ready keeps running and reconnects by itself.
//! - live: not lost NATS for longer than [`NATS_LOST_LIMIT`]; past that, a restart is the better
//!   bet. A dead worker, consumer or relay needs no probe: it stops the whole process.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long NATS may stay unreachable before `/livez` fails.
pub const NATS_LOST_LIMIT: Duration = Duration::from_secs(60);
/// How long `/readyz` waits for PostgreSQL's answer.
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the probes look at; shared by the ops router and the process.
#[derive(Clone)]
pub struct Health(Arc<Inner>);

struct Inner {
    started: AtomicBool,
    shutdown: CancellationToken,
    nats: async_nats::Client,
    /// One lazy connection, only in processes that run a service with a store.
    database: Option<PgPool>,
    nats_lost_since: std::sync::Mutex<Option<Instant>>,
}

impl Health {
    pub fn new(nats: async_nats::Client, database: Option<PgPool>, shutdown: CancellationToken) -> Health {
        Health(Arc::new(Inner {
            started: AtomicBool::new(false),
            shutdown,
            nats,
            database,
            nats_lost_since: std::sync::Mutex::new(None),
        }))
    }

    /// Start-up is over: every service answers.
    pub fn mark_started(&self) {
        self.0.started.store(true, Ordering::Relaxed);
    }

    fn nats_connected(&self) -> bool {
        self.0.nats.connection_state() == async_nats::connection::State::Connected
    }

    /// Notes when NATS was lost, once a second, until shutdown.
    pub async fn watch_nats(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while !self.0.shutdown.is_cancelled() {
            tokio::select! {
                _ = self.0.shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let connected = self.nats_connected();
            if let Ok(mut lost) = self.0.nats_lost_since.lock() {
                match (connected, *lost) {
                    (true, _) => *lost = None,
                    (false, None) => *lost = Some(Instant::now()),
                    (false, Some(_)) => {}
                }
            }
        }
    }

    /// `None` when live, else why not.
    pub fn liveness_problem(&self) -> Option<String> {
        let lost = self.0.nats_lost_since.lock().ok().and_then(|lost| *lost)?;
        (lost.elapsed() > NATS_LOST_LIMIT).then(|| format!("NATS unreachable for {}s", lost.elapsed().as_secs()))
    }

    /// Every unmet readiness condition (empty: ready).
    pub async fn readiness_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.0.started.load(Ordering::Relaxed) {
            problems.push("starting".to_owned());
        }
        if self.0.shutdown.is_cancelled() {
            problems.push("shutting down".to_owned());
        }
        if !self.nats_connected() {
            problems.push("NATS not connected".to_owned());
        }
        if let Some(pool) = &self.0.database {
            let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool);
            match tokio::time::timeout(DATABASE_CHECK_TIMEOUT, ping).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => problems.push(format!("PostgreSQL: {err}")),
                Err(_) => problems.push("PostgreSQL did not answer in time".to_owned()),
            }
        }
        problems
    }
}

/// The ops router: `/livez`, `/readyz`, `/metrics`.
pub fn router(health: Health) -> axum::Router {
    axum::Router::new()
        .route("/livez", axum::routing::get(livez))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(amba_edge::http::metrics))
        .with_state(health)
}

async fn livez(State(health): State<Health>) -> impl IntoResponse {
    match health.liveness_problem() {
        None => (StatusCode::OK, "ok".to_owned()),
        Some(problem) => (StatusCode::SERVICE_UNAVAILABLE, problem),
    }
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let problems = health.readiness_problems().await;
    amba_telemetry::metrics::gauge!("amba_ready").set(if problems.is_empty() { 1.0 } else { 0.0 });
    if problems.is_empty() {
        (StatusCode::OK, "ready".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("; "))
    }
}
