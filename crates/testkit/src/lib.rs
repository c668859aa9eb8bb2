//! Test kit: a fresh database per test, a unique NATS namespace per test, an MCP client that
//! talks over real HTTP, an SMTP sink. It starts no service: the system's own tests (in `app/`)
//! start the services, so a kit crate's tests build only that crate and this kit.
//!
//! Tests run against a real PostgreSQL and a real NATS JetStream server (`scripts/test` starts
//! them when needed). `AMBA_TEST_DATABASE_URL` names a database on the server used to create
//! the per-test ones (default `postgres://postgres@127.0.0.1:5432/postgres`); `AMBA_NATS_URL`
//! the NATS server (default `nats://127.0.0.1:4222`).

mod mcp;
pub mod smtp;

pub use mcp::McpClient;
pub use smtp::SmtpSink;

use amba_bus::{Bus, Namespace};
use anyhow::Context;
use sqlx::Connection;
use std::future::Future;
use std::time::Duration;

pub fn admin_database_url() -> String {
    std::env::var("AMBA_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn nats_url() -> String {
    std::env::var("AMBA_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn unique_suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()[20..].to_owned()
}

/// A namespace no other test uses: `t<12 hex>`.
pub fn unique_namespace() -> Namespace {
    Namespace::new(&format!("t{}", unique_suffix()))
        .unwrap_or_else(|e| unreachable!("generated namespace is valid: {e}"))
}

/// A database created for one test and dropped by [`TestDatabase::drop_now`].
pub struct TestDatabase {
    pub url: String,
    name: String,
}

impl TestDatabase {
    pub async fn create() -> anyhow::Result<TestDatabase> {
        let admin = admin_database_url();
        let name = format!("amba_test_{}", unique_suffix());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .with_context(|| format!("connecting to {admin}"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let base = admin.rsplit_once('/').map(|(server, _)| server).unwrap_or(&admin);
        Ok(TestDatabase {
            url: format!("{base}/{name}"),
            name,
        })
    }

    pub async fn drop_now(self) -> anyhow::Result<()> {
        let mut conn = sqlx::PgConnection::connect(&admin_database_url()).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

/// A NATS connection with a fresh namespace and its event streams declared.
pub async fn test_bus() -> anyhow::Result<Bus> {
    let nats = async_nats::connect(nats_url()).await.context("connecting to NATS")?;
    let bus = Bus::new(nats, unique_namespace());
    amba_bus::streams::ensure_event_streams(&bus.js, &bus.ns, 1)
        .await
        .map_err(|e| anyhow::anyhow!("creating streams: {e}"))?;
    Ok(bus)
}

/// `n` distinct free ports of `range`, which should lie below the kernel's ephemeral range (32768
/// and up): a port picked there may be taken as the source port of an outgoing connection before
/// its server binds it. Each process starts at its own place in the range, and each call of a
/// process further on, so tests running side by side rarely pick the same port.
pub fn free_ports(range: std::ops::Range<u16>, n: usize) -> anyhow::Result<Vec<u16>> {
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let len = u32::from(range.end.saturating_sub(range.start)).max(1);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let offset = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(call.wrapping_mul(64))
        % len;
    let start = range.start.saturating_add(u16::try_from(offset)?);
    // Held until all are chosen, so the same port is not handed out twice.
    let held: Vec<std::net::TcpListener> = (start..range.end)
        .chain(range.start..start)
        .filter_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
        .take(n)
        .collect();
    anyhow::ensure!(held.len() == n, "not {n} free ports in {range:?}");
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Polls `check` until it returns `Some`, or fails after `timeout`. Never sleep-and-hope.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
