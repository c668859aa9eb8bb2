//! The whole system for a test: every service and the edge in this process, on a fresh database
//! and NATS namespace, reached through its public surfaces.

use amba::{Running, ServiceName, Settings};
use amba_bus::Bus;
use amba_testkit::{McpClient, TestDatabase, nats_url, unique_namespace};
use anyhow::Context;
use std::collections::HashMap;
use std::net::SocketAddr;

/// Every service and the edge, in this process, on a fresh database and namespace.
pub struct TestSystem {
    pub db: TestDatabase,
    pub bus: Bus,
    pub settings: Settings,
    running: Running,
    /// The in-project fake Stripe this system talks to (started by [`TestSystem::with_stripe`]).
    pub stripe: Option<amba_stripe_fake::FakeStripe>,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
}

impl TestSystem {
    pub async fn start() -> anyhow::Result<TestSystem> {
        Self::start_with(&[]).await
    }

    /// Starts with extra configuration variables (e.g. `("MULTI_LEVEL_ENABLED", "true")`).
    pub async fn start_with(vars: &[(&str, &str)]) -> anyhow::Result<TestSystem> {
        // Boxed: the whole system's start-up future is too large for a test thread's stack.
        Box::pin(Self::start_on(free_port()?, vars, None)).await
    }

    /// Starts against a fresh fake Stripe whose webhooks reach this system's edge.
    pub async fn with_stripe(vars: &[(&str, &str)]) -> anyhow::Result<TestSystem> {
        let port = free_port()?;
        let secret_key = format!("sk_test_{}", uuid::Uuid::now_v7().simple());
        let webhook_secret = format!("whsec_{}", uuid::Uuid::now_v7().simple());
        let stripe = amba_stripe_fake::FakeStripe::start(amba_stripe_fake::FakeConfig {
            secret_key: secret_key.clone(),
            webhook_secret: webhook_secret.clone(),
            webhook_url: Some(format!("http://127.0.0.1:{port}/webhooks/stripe")),
        })
        .await?;
        let base = stripe.base_url();
        let mut all: Vec<(&str, &str)> = vec![
            ("AMBA_STRIPE_API_BASE", &base),
            ("AMBA_STRIPE_SECRET_KEY", &secret_key),
            ("AMBA_STRIPE_WEBHOOK_SECRET", &webhook_secret),
        ];
        all.extend_from_slice(vars);
        Box::pin(Self::start_on(port, &all, Some(stripe))).await
    }

    async fn start_on(
        port: u16,
        vars: &[(&str, &str)],
        stripe: Option<amba_stripe_fake::FakeStripe>,
    ) -> anyhow::Result<TestSystem> {
        let db = TestDatabase::create().await?;
        let ns = unique_namespace();
        let mut map: HashMap<String, String> = [
            ("AMBA_DATABASE_URL", db.url.clone()),
            ("AMBA_NATS_URL", nats_url()),
            ("AMBA_NAMESPACE", ns.to_string()),
            ("AMBA_HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("AMBA_GRPC_ADDR", "127.0.0.1:0".to_owned()),
            ("AMBA_METRICS_ADDR", "127.0.0.1:0".to_owned()),
            // No internet here: tests that need rates serve their own (file://).
            ("AMBA_FX_RATES_URL", "off".to_owned()),
            // E-mails (no SMTP server unless a test gives one) go to this test's own folder.
            (
                "AMBA_DATA_DIR",
                std::env::temp_dir()
                    .join(format!("amba-test-{ns}"))
                    .display()
                    .to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        map.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let settings = Settings::from_map(&map)?;
        let running = amba::system::start(&settings, &ServiceName::ALL).await?;
        let http_addr = running.http_addr().context("the edge did not start")?;
        let grpc_addr = running.grpc_addr().context("the edge's gRPC did not start")?;
        let nats = async_nats::connect(nats_url()).await?;
        Ok(TestSystem {
            db,
            bus: Bus::new(nats, ns),
            settings,
            running,
            stripe,
            http_addr,
            grpc_addr,
        })
    }

    /// `http://127.0.0.1:<port>` of the edge's gRPC server.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Prometheus `/metrics` of this system (its `AMBA_METRICS_ADDR` listener).
    pub fn metrics_url(&self) -> Option<String> {
        Some(format!("http://{}/metrics", self.running.metrics_addr()?))
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.base_url())
    }

    /// An MCP client over streamable HTTP, with `token` as its bearer token.
    pub async fn mcp(&self, token: Option<&str>) -> anyhow::Result<McpClient> {
        McpClient::connect(&self.mcp_url(), token).await
    }

    /// A direct connection to one service's schema, for assertions on stored state.
    pub async fn service_pool(&self, schema: &'static str) -> anyhow::Result<sqlx::PgPool> {
        Ok(amba_bus::store::connect(&self.db.url, schema, 2).await?)
    }

    /// Stops every service and starts them again on the same database, streams and addresses, as
    /// a deployment does on a new release.
    pub async fn restarted(self) -> anyhow::Result<TestSystem> {
        self.running
            .stop()
            .await
            .map_err(|failures| anyhow::anyhow!("a service had failed: {failures}"))?;
        let running = Box::pin(amba::system::start(&self.settings, &ServiceName::ALL)).await?;
        let http_addr = running.http_addr().context("the edge did not start")?;
        let grpc_addr = running.grpc_addr().context("the edge's gRPC did not start")?;
        Ok(TestSystem {
            running,
            http_addr,
            grpc_addr,
            ..self
        })
    }

    /// Stops the services, removes the namespace's streams and drops the database. Fails if a
    /// service had stopped on its own (an error or a panic) before.
    pub async fn stop(self) -> anyhow::Result<()> {
        let stopped = self.running.stop().await;
        amba_bus::streams::delete_event_streams(&self.bus.js, &self.bus.ns)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // The test's own data folder (e-mails written as files when no SMTP server was given).
        let _ = std::fs::remove_dir_all(&self.settings.data_dir);
        self.db.drop_now().await?;
        stopped.map_err(|failures| anyhow::anyhow!("a service had failed: {failures}"))
    }
}

/// A free port for the edge, below the fault suite's ports (20000 and up).
fn free_port() -> anyhow::Result<u16> {
    amba_testkit::free_ports(10_000..20_000, 1)?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no free port"))
}
