//! One PostgreSQL role per service: `amba migrate` creates `amba_<service>` and grants it its own
//! schema only; a service on its role never migrates (it waits for `amba migrate`), and the whole
//! system runs with each service on its own role.
//!
//! Roles belong to the server, not to one database, so every test database shares them: each
//! test runs `amba migrate` itself (idempotent, safe concurrently), which also makes the roles
//! login roles with [`PASSWORD`] (the test server may not ask for it). `amba migrate` declares
//! the JetStream streams too: each test gives it a namespace of its own and deletes them after.

use crate::support::{Org, active_program, enroll, text};
use amba::{ServiceName, Settings};
use amba_bus::Namespace;
use amba_testkit::{McpClient, TestDatabase, eventually, nats_url, unique_namespace};
use serde_json::json;
use sqlx::{Connection as _, PgConnection};
use std::collections::HashMap;
use std::time::Duration;

const PASSWORD: &str = "amba-test-role-password";
const SERVICES: [&str; 5] = ["enrollment", "attribution", "commission", "payout", "notification"];
const WAIT: Duration = Duration::from_secs(20);

/// `amba migrate` on `database_url` (and the namespace `ns` of the test's NATS), giving every
/// service role a login.
fn amba_migrate(database_url: &str, ns: &Namespace) -> anyhow::Result<()> {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_amba"));
    command
        .arg("migrate")
        .env("AMBA_DATABASE_URL", database_url)
        .env("AMBA_NATS_URL", nats_url())
        .env("AMBA_NAMESPACE", ns.as_str());
    for service in SERVICES {
        command.env(format!("AMBA_DB_PASSWORD_{}", service.to_uppercase()), PASSWORD);
    }
    let out = command.output()?;
    anyhow::ensure!(
        out.status.success(),
        "amba migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Removes what `amba migrate` declared on NATS for `ns`.
async fn delete_streams(ns: &Namespace) -> anyhow::Result<()> {
    let nats = async_nats::connect(nats_url()).await?;
    amba_bus::streams::delete_event_streams(&async_nats::jetstream::new(nats), ns)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// `database_url` with `amba_<service>` and [`PASSWORD`] as its user.
fn role_url(database_url: &str, service: &str) -> String {
    let (scheme, rest) = database_url.split_once("://").unwrap_or(("postgres", database_url));
    let host_and_path = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    format!("{scheme}://amba_{service}:{PASSWORD}@{host_and_path}")
}

/// Runs `sql` and expects PostgreSQL's "permission denied" (42501).
async fn refused(conn: &mut PgConnection, sql: &'static str) -> anyhow::Result<()> {
    match sqlx::raw_sql(sql).execute(&mut *conn).await {
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => Ok(()),
        other => anyhow::bail!("{sql}: expected permission denied, got {other:?}"),
    }
}

#[tokio::test]
async fn a_service_role_uses_its_own_schema_and_nothing_else() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let ns = unique_namespace();
    amba_migrate(&db.url, &ns)?;

    let mut payout = PgConnection::connect(&role_url(&db.url, "payout")).await?;
    // Its own schema: reads and writes its tables (the outbox's id comes from its sequence) and
    // reads the migrations it was migrated to, but never changes them or the schema itself.
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO payout.outbox (event_id, subject, payload) VALUES ('evt_roles', 'roles', '\\x00') RETURNING id",
    )
    .fetch_one(&mut payout)
    .await?;
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM payout.outbox WHERE id = $1")
        .bind(id)
        .fetch_one(&mut payout)
        .await?;
    assert_eq!(found, 1);
    sqlx::query("DELETE FROM payout.outbox WHERE id = $1")
        .bind(id)
        .execute(&mut payout)
        .await?;
    sqlx::raw_sql("SELECT count(*) FROM payout.payout_runs")
        .execute(&mut payout)
        .await?;
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM payout._migrations")
        .fetch_one(&mut payout)
        .await?;
    assert!(migrations > 0);
    refused(&mut payout, "DELETE FROM payout._migrations").await?;
    refused(&mut payout, "CREATE TABLE payout.mine (id int)").await?;
    // Another service's schema: neither read nor written, nor created in.
    refused(&mut payout, "SELECT * FROM commission.journal").await?;
    refused(&mut payout, "INSERT INTO commission.journal DEFAULT VALUES").await?;
    refused(&mut payout, "SELECT * FROM notification.emails").await?;
    refused(&mut payout, "INSERT INTO notification.outbox DEFAULT VALUES").await?;
    refused(&mut payout, "SELECT * FROM enrollment.tokens").await?;
    refused(&mut payout, "UPDATE enrollment.tokens SET name = name").await?;
    refused(&mut payout, "CREATE TABLE commission.mine (id int)").await?;
    refused(&mut payout, "CREATE TABLE public.mine (id int)").await?;
    payout.close().await?;

    let mut notification = PgConnection::connect(&role_url(&db.url, "notification")).await?;
    sqlx::raw_sql("SELECT count(*) FROM notification.emails")
        .execute(&mut notification)
        .await?;
    refused(&mut notification, "SELECT * FROM commission.journal").await?;
    refused(&mut notification, "INSERT INTO commission.entries DEFAULT VALUES").await?;
    refused(&mut notification, "SELECT * FROM payout.payout_items").await?;
    refused(&mut notification, "INSERT INTO payout.outbox DEFAULT VALUES").await?;
    refused(&mut notification, "SELECT * FROM enrollment.tokens").await?;
    refused(&mut notification, "CREATE TABLE enrollment.mine (id int)").await?;
    notification.close().await?;

    // A second run changes nothing and fails nothing.
    amba_migrate(&db.url, &ns)?;
    delete_streams(&ns).await?;
    db.drop_now().await
}

#[tokio::test]
async fn a_service_role_never_migrates_it_waits_for_amba_migrate() -> anyhow::Result<()> {
    // The roles exist (and log in) once any database on the server was migrated.
    let ns = unique_namespace();
    let scratch = TestDatabase::create().await?;
    amba_migrate(&scratch.url, &ns)?;
    scratch.drop_now().await?;

    let db = TestDatabase::create().await?;
    let url = role_url(&db.url, "payout");
    let opening = tokio::spawn(async move {
        let pool = amba_bus::service::open_store(&url, amba_payout::SCHEMA, &amba_payout::MIGRATIONS, 1).await?;
        pool.close().await;
        Ok::<(), amba_bus::RunError>(())
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!opening.is_finished(), "on its own role, payout waits for its schema");
    let mut owner = PgConnection::connect(&db.url).await?;
    let schemas: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'payout'")
        .fetch_one(&mut owner)
        .await?;
    assert_eq!(schemas, 0, "nothing was created by the service's role");

    amba_migrate(&db.url, &ns)?;
    tokio::time::timeout(Duration::from_secs(10), opening).await???;

    // A schema ahead of the binary (a migration it does not know) stops it at once, as it stops
    // a service that migrates.
    sqlx::raw_sql(
        "INSERT INTO payout._migrations (version, description, success, checksum, execution_time) \
         VALUES (999999, 'from a later release', true, '\\x00', 0)",
    )
    .execute(&mut owner)
    .await?;
    let ahead = amba_bus::service::open_store(
        &role_url(&db.url, "payout"),
        amba_payout::SCHEMA,
        &amba_payout::MIGRATIONS,
        1,
    )
    .await;
    assert!(
        matches!(
            ahead,
            Err(amba_bus::RunError::Migrate(
                sqlx::migrate::MigrateError::VersionMissing(999999)
            ))
        ),
        "{ahead:?}"
    );
    owner.close().await?;
    delete_streams(&ns).await?;
    db.drop_now().await
}

/// Every service in this process, each on its own role as in production (the edge has no
/// database), driven through MCP: each service's writes (its tables, sequences, the ledger's
/// triggers, its outbox and inbox) work with its role's grants.
#[tokio::test]
async fn every_service_runs_on_its_own_role() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let ns = unique_namespace();
    amba_migrate(&db.url, &ns)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let data_dir = std::env::temp_dir().join(format!("amba-test-{ns}"));
    let settings = |database_url: Option<String>| {
        let mut vars: HashMap<String, String> = [
            ("AMBA_NATS_URL", nats_url()),
            ("AMBA_NAMESPACE", ns.to_string()),
            ("AMBA_HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("AMBA_GRPC_ADDR", "127.0.0.1:0".to_owned()),
            ("AMBA_DATA_DIR", data_dir.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some(url) = database_url {
            vars.insert("AMBA_DATABASE_URL".to_owned(), url);
        }
        Settings::from_map(&vars)
    };
    let mut processes = Vec::new();
    for service in SERVICES {
        let service: ServiceName = service.parse().map_err(anyhow::Error::msg)?;
        let own = settings(Some(role_url(&db.url, service.as_str())))?;
        processes.push(Box::pin(amba::system::start(&own, &[service])).await?);
    }
    processes.push(Box::pin(amba::system::start(&settings(None)?, &[ServiceName::Edge])).await?);

    let mcp_url = format!("http://127.0.0.1:{port}/mcp");
    let anonymous = McpClient::connect(&mcp_url, None).await?;
    let mut orgs = Vec::new();
    for name in ["Owner", "Ann"] {
        let out = anonymous
            .ok(
                "amba_affiliate_signup",
                json!({"email": format!("{}@example.com", name.to_lowercase()), "org_name": name}),
            )
            .await?;
        orgs.push(Org {
            id: text(&out["org_id"]).to_owned(),
            token: text(&out["token"]).to_owned(),
            mcp: McpClient::connect(&mcp_url, Some(text(&out["token"]))).await?,
        });
    }
    anonymous.close().await?;
    let (owner, ann) = (&orgs[0], &orgs[1]);
    let program = active_program(owner, json!({})).await?;
    let enrollment = enroll(owner, ann, &program, None).await?;
    // Attribution learns the code from enrollment's events: report until it does.
    let report = json!({"program_id": program, "project_id": "web", "external_id": "o-1",
                        "amount_minor": 10_000, "currency": "USD", "code": text(&enrollment["code"])});
    let reported = eventually(WAIT, "attribution to take the report", || {
        let report = report.clone();
        async move { Ok(owner.mcp.ok("amba_affiliate_conversion_report", report).await.ok()) }
    })
    .await?;
    let conversion = text(&reported["conversion_id"]).to_owned();

    // What each consumer wrote, read with the owner's credentials.
    let owner_db = sqlx::PgPool::connect(&db.url).await?;
    let checks: [(&str, &'static str, &str); 3] = [
        (
            "commission",
            "SELECT count(*) FROM commission.commissions WHERE conversion_id = $1",
            &conversion,
        ),
        (
            "payout",
            "SELECT count(*) FROM payout.programs_view WHERE program_id = $1",
            &program,
        ),
        (
            "notification",
            "SELECT count(*) FROM notification.emails WHERE org_id = $1 AND status = 'sent'",
            &ann.id,
        ),
    ];
    for (service, sql, key) in checks {
        eventually(WAIT, service, || {
            let (pool, key) = (owner_db.clone(), key.to_owned());
            async move {
                let count: i64 = sqlx::query_scalar(sql).bind(key).fetch_one(&pool).await?;
                Ok((count > 0).then_some(()))
            }
        })
        .await?;
    }
    owner_db.close().await;

    for org in orgs {
        org.mcp.close().await?;
    }
    let mut failures = Vec::new();
    for running in processes {
        if let Err(failure) = running.stop().await {
            failures.push(failure);
        }
    }
    delete_streams(&ns).await?;
    let _ = std::fs::remove_dir_all(&data_dir);
    db.drop_now().await?;
    anyhow::ensure!(failures.is_empty(), "a service failed on its own role: {failures:?}");
    Ok(())
}
