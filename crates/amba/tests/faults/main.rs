//! Fault injection: the services run as separate `amba serve` processes on a PostgreSQL and a
//! NATS server of their own, started by the suite in a temporary folder (never the machine's
//! shared ones), so any of them can be killed. Each scenario is bounded in time and ends with
//! `amba ledger verify` and exact counts. docs/reliability.md lists the scenarios.

use amba_proto::v1::conversions_client::ConversionsClient;
use amba_proto::wire as pb;
use amba_testkit::{McpClient, eventually};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// `n` free ports below the kernel's ephemeral range (32768 and up): while a server is down,
/// clients retrying it must not be handed its port as their own source port (a TCP self-connect
/// would then keep the server from binding it again).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let start = 20_000 + u16::try_from(std::process::id() % 5_000).unwrap_or(0) * 2;
    // Held until all are chosen, so the same port is not handed out twice.
    let held: Vec<std::net::TcpListener> = (start..32_000)
        .chain(20_000..start)
        .filter_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
        .take(n)
        .collect();
    anyhow::ensure!(held.len() == n, "not {n} free ports below 32,000");
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// PostgreSQL, NATS and the services, each its own process.
struct Cluster {
    dir: PathBuf,
    env: Vec<(String, String)>,
    http: String,
    grpc: String,
    services: HashMap<&'static str, Child>,
}

impl Cluster {
    async fn start(services: &[&'static str]) -> anyhow::Result<Cluster> {
        let suffix = amba_testkit::unique_namespace().as_str().to_owned();
        let dir = std::env::temp_dir().join(format!("amba-faults-{suffix}"));
        std::fs::create_dir_all(&dir)?;
        let ports = free_ports(4)?;
        let (pg, nats, http, grpc) = (ports[0], ports[1], ports[2], ports[3]);
        let env = vec![
            ("AMBA_DATA_DIR".to_owned(), dir.to_string_lossy().into_owned()),
            (
                "AMBA_DATABASE_URL".to_owned(),
                format!("postgres://postgres@127.0.0.1:{pg}/faults"),
            ),
            ("AMBA_NATS_URL".to_owned(), format!("nats://127.0.0.1:{nats}")),
            ("AMBA_NAMESPACE".to_owned(), suffix.clone()),
            ("AMBA_HTTP_ADDR".to_owned(), format!("127.0.0.1:{http}")),
            ("AMBA_GRPC_ADDR".to_owned(), format!("127.0.0.1:{grpc}")),
            ("RUST_LOG".to_owned(), "warn".to_owned()),
        ];
        let mut cluster = Cluster {
            dir,
            env,
            http: format!("http://127.0.0.1:{http}"),
            grpc: format!("http://127.0.0.1:{grpc}"),
            services: HashMap::new(),
        };
        for step in [&["infra", "up"][..], &["migrate"][..]] {
            let done = cluster.amba(step)?;
            anyhow::ensure!(
                done.status.success(),
                "amba {}: {}",
                step.join(" "),
                String::from_utf8_lossy(&done.stderr)
            );
        }
        for service in services {
            cluster.spawn(service)?;
        }
        let ready = format!("{}/readyz", cluster.http);
        eventually(Duration::from_secs(30), "the edge to be ready", || {
            let ready = ready.clone();
            async move {
                Ok(reqwest::get(&ready)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            }
        })
        .await?;
        Ok(cluster)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_amba"));
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    fn amba(&self, args: &[&str]) -> std::io::Result<Output> {
        self.command(args).output()
    }

    fn spawn(&mut self, service: &'static str) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{service}.log")))?;
        let child = self
            .command(&["serve", service])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        self.services.insert(service, child);
        Ok(())
    }

    /// SIGKILL: no drain, no flush, nothing finished.
    fn kill(&mut self, service: &str) -> anyhow::Result<()> {
        if let Some(mut child) = self.services.remove(service) {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    async fn pool(&self) -> anyhow::Result<PgPool> {
        let url = &self.env[1].1;
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await?)
    }

    fn stop(mut self) -> anyhow::Result<()> {
        self.shut_down();
        Ok(())
    }

    fn shut_down(&mut self) {
        for (_, mut child) in self.services.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // AMBA_FAULTS_KEEP=1 keeps PostgreSQL, NATS and the logs for a post-mortem.
        if std::env::var_os("AMBA_FAULTS_KEEP").is_none() {
            let _ = self.amba(&["infra", "down"]);
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("kept: {} ({:?})", self.dir.display(), self.env);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// An owner with an active 20 % program without hold, and an enrolled affiliate's code.
#[derive(Clone)]
struct Program {
    owner_token: String,
    program_id: String,
    code: String,
}

/// Signs an org up; while the enrollment process is still starting (the edge is ready before
/// it), UNAVAILABLE is retried.
async fn signup(mcp: &McpClient, name: &str) -> anyhow::Result<Value> {
    let args = json!({"email": format!("{name}@faults.example"), "org_name": name});
    for _ in 0..150 {
        match mcp.ok("amba_affiliate_signup", args.clone()).await {
            Err(e) if e.to_string().contains("UNAVAILABLE") => tokio::time::sleep(Duration::from_millis(200)).await,
            done => return done,
        }
    }
    anyhow::bail!("enrollment never became available")
}

async fn program(cluster: &Cluster, tag: &str) -> anyhow::Result<Program> {
    let url = format!("{}/mcp", cluster.http);
    let anonymous = McpClient::connect(&url, None).await?;
    let owner = signup(&anonymous, &format!("owner-{tag}")).await?;
    let affiliate = signup(&anonymous, &format!("affiliate-{tag}")).await?;
    anonymous.close().await?;
    let owner_token = owner["token"].as_str().unwrap_or_default().to_owned();
    let owner_mcp = McpClient::connect(&url, Some(&owner_token)).await?;
    let affiliate_mcp = McpClient::connect(&url, affiliate["token"].as_str()).await?;
    let created = owner_mcp
        .ok(
            "amba_affiliate_programs_create",
            json!({"name": format!("Faults {tag}"), "currency": "USD", "hold_days": 0,
                   "commission": {"schema": 1, "type": "percentage", "bps": 2000}}),
        )
        .await?;
    let program_id = created["program"]["program_id"].as_str().unwrap_or_default().to_owned();
    owner_mcp
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": program_id, "status": "active"}),
        )
        .await?;
    let invite = owner_mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program_id, "affiliate_org_id": affiliate["org_id"]}),
        )
        .await?;
    let accepted = affiliate_mcp
        .ok(
            "amba_affiliate_my_invite_accept",
            json!({"enrollment_id": invite["enrollment_id"]}),
        )
        .await?;
    owner_mcp.close().await?;
    affiliate_mcp.close().await?;
    Ok(Program {
        owner_token,
        program_id,
        code: accepted["code"].as_str().unwrap_or_default().to_owned(),
    })
}

impl Program {
    fn report(&self, external_id: String) -> pb::ReportConversionRequest {
        pb::ReportConversionRequest {
            program_id: self.program_id.clone(),
            project_id: "web".into(),
            external_id,
            amount_minor: 1_000,
            currency: "USD".into(),
            code: self.code.clone(),
            ..Default::default()
        }
    }

    fn authed<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {}", self.owner_token).parse()?);
        Ok(request)
    }

    /// Streams `batches` × `size` reports (keys `<prefix>-<batch>-<n>`), retrying a batch with
    /// the same keys until every report of it is accepted. Returns how many were accepted.
    async fn stream(&self, grpc: String, prefix: &str, batches: usize, size: usize) -> anyhow::Result<usize> {
        let mut client = ConversionsClient::connect(grpc).await?;
        let mut accepted = 0;
        for batch in 0..batches {
            let reports: Vec<_> = (0..size)
                .map(|n| self.report(format!("{prefix}-{batch}-{n}")))
                .collect();
            // Until every report of the batch has been accepted (a repeat answers `duplicate`
            // with the first outcome), as a client that must not lose a sale would.
            for attempt in 0.. {
                anyhow::ensure!(attempt < 600, "batch {batch} never fully accepted");
                let call = client.report_conversions(self.authed(futures::stream::iter(reports.clone()))?);
                let ok = match call.await {
                    Ok(reply) => reply
                        .into_inner()
                        .outcomes
                        .iter()
                        .filter(|o| matches!(o.result, Some(pb::report_outcome::Result::Ok(_))))
                        .count(),
                    Err(_) => 0,
                };
                if ok == size {
                    accepted += ok;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(accepted)
    }
}

/// Approved conversions in attribution, direct commissions booked in the ledger, dead letters.
async fn counts(pool: &PgPool, program_id: &str) -> anyhow::Result<(i64, i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT (SELECT count(*) FROM attribution.conversions WHERE program_id = $1 AND status = 'approved'), \
         (SELECT count(*) FROM commission.commissions WHERE program_id = $1 AND level = 0), \
         (SELECT (SELECT count(*) FROM commission.dead_letters) + (SELECT count(*) FROM attribution.dead_letters))",
    )
    .bind(program_id)
    .fetch_one(pool)
    .await?)
}

/// Waits until the ledger has booked every approved conversion, then checks it end to end.
async fn ledger_complete(cluster: &Cluster, pool: &PgPool, program: &Program, expected: i64) -> anyhow::Result<()> {
    eventually(
        Duration::from_secs(120),
        "the ledger to book every approved conversion",
        || {
            let (pool, program_id) = (pool.clone(), program.program_id.clone());
            async move {
                let (approved, booked, _) = counts(&pool, &program_id).await?;
                Ok((approved == expected && booked == expected).then_some(()))
            }
        },
    )
    .await?;
    let (_, _, dead) = counts(pool, &program.program_id).await?;
    assert_eq!(dead, 0, "dead letters");
    // 20 % of 10.00 each, no hold: all payable.
    let payable: Option<i64> = sqlx::query_scalar(
        "SELECT sum(balance_minor)::bigint FROM commission.balances WHERE program_id = $1 AND account = 'payable'",
    )
    .bind(&program.program_id)
    .fetch_one(pool)
    .await?;
    assert_eq!(payable, Some(expected * 200));
    let verify = cluster.amba(&["ledger", "verify"])?;
    assert!(
        verify.status.success(),
        "ledger verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    Ok(())
}

/// Scenario 2: SIGKILL the commission service while it books a stream of reports, restart it:
/// the ledger is complete (each approved conversion booked once) and verifies.
#[tokio::test]
async fn commission_killed_mid_batch_books_everything_once_after_restart() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&["enrollment", "attribution", "commission", "edge"]).await?;
    let program = program(&cluster, "one").await?;
    let pool = cluster.pool().await?;
    let streaming = stream_in_background(&cluster, &program, "k", 20, 1_000);
    at_least(&pool, &program, Count::Booked, 1_000).await?;
    cluster.kill("commission")?;
    let (_, booked_at_kill, _) = counts(&pool, &program.program_id).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.spawn("commission")?;
    let accepted = streaming.await??;
    assert_eq!(accepted, 20_000);
    ledger_complete(&cluster, &pool, &program, 20_000).await?;
    assert!(
        booked_at_kill < 20_000,
        "the kill came while the ledger was still booking"
    );
    pool.close().await;
    cluster.stop()
}

impl Cluster {
    /// `kill -<signal>` a service's process.
    fn signal(&self, service: &str, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .services
            .get(service)
            .map(Child::id)
            .ok_or_else(|| anyhow::anyhow!("{service} is not running"))?;
        let sent = Command::new("kill").args([signal, &pid.to_string()]).status()?;
        anyhow::ensure!(sent.success(), "kill {signal} {service}");
        Ok(())
    }

    /// SIGKILL the suite's nats-server (its pid file is in the data folder).
    fn kill_nats(&self) -> anyhow::Result<()> {
        let pid = std::fs::read_to_string(self.dir.join("nats").join("nats-server.pid"))?;
        let sent = Command::new("kill").args(["-9", pid.trim()]).status()?;
        anyhow::ensure!(sent.success(), "kill -9 nats-server");
        Ok(())
    }
}

/// Scenario 5: the ledger's process is paused (SIGSTOP) while new affiliates enroll and their
/// conversions are reported; resumed, it finds conversions whose enrollments it has not read
/// yet, waits for them instead of dead-lettering, and books everything.
#[tokio::test]
async fn a_paused_ledger_catches_up_on_new_affiliates_without_dead_letters() -> anyhow::Result<()> {
    let cluster = Cluster::start(&["enrollment", "attribution", "commission", "edge"]).await?;
    let first = program(&cluster, "first").await?;
    let pool = cluster.pool().await?;
    cluster.signal("commission", "-STOP")?;
    // While it is paused: a second program with its own affiliate, and reports for both.
    let second = program(&cluster, "second").await?;
    let accepted = first.stream(cluster.grpc.clone(), "p1", 2, 500).await?
        + second.stream(cluster.grpc.clone(), "p2", 2, 500).await?;
    assert_eq!(accepted, 2_000);
    // Longer than an ack wait (30 s): what the paused process held is redelivered meanwhile.
    tokio::time::sleep(Duration::from_secs(35)).await;
    cluster.signal("commission", "-CONT")?;
    ledger_complete(&cluster, &pool, &first, 1_000).await?;
    ledger_complete(&cluster, &pool, &second, 1_000).await?;
    pool.close().await;
    cluster.stop()
}

/// Scenario 3: nats-server is killed (-9) while reports stream and outboxes relay; restarted,
/// every service reconnects by itself, the outboxes drain, the client's retried batches (same
/// keys) change nothing, and the ledger is complete.
#[tokio::test]
async fn nats_killed_and_restarted_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start(&["enrollment", "attribution", "commission", "edge"]).await?;
    let program = program(&cluster, "one").await?;
    let pool = cluster.pool().await?;
    let streaming = stream_in_background(&cluster, &program, "n", 20, 500);
    at_least(&pool, &program, Count::Approved, 1_000).await?;
    cluster.kill_nats()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = cluster.amba(&["infra", "up"])?;
    anyhow::ensure!(
        restarted.status.success(),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    let accepted = tokio::time::timeout(Duration::from_secs(120), streaming).await???;
    assert_eq!(accepted, 10_000);
    ledger_complete(&cluster, &pool, &program, 10_000).await?;
    // Readiness recovered: the edge answers ready again.
    let ready = reqwest::get(format!("{}/readyz", cluster.http)).await?;
    assert!(ready.status().is_success());
    pool.close().await;
    cluster.stop()
}

impl Cluster {
    /// `pg_ctl stop|start` on the suite's PostgreSQL (as the `postgres` user when root).
    fn postgres(&self, action: &str) -> anyhow::Result<()> {
        let opts = std::fs::read_to_string(self.dir.join("postgres").join("postmaster.opts")).unwrap_or_default();
        let port = self.env[1]
            .1
            .rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .unwrap_or_default()
            .to_owned();
        // postmaster.opts starts with the server binary's path; pg_ctl sits beside it.
        let bin = opts
            .split_whitespace()
            .next()
            .map(|postgres| postgres.trim_end_matches("postgres").to_owned())
            .unwrap_or_default();
        let data = self.dir.join("postgres").to_string_lossy().into_owned();
        let options = format!("-p {port} -c listen_addresses=127.0.0.1 -k /tmp");
        let log = format!("{data}/server.log");
        let mut args = vec!["-D", data.as_str(), "-w", "-m", "fast", action];
        if action == "start" {
            args = vec![
                "-D",
                data.as_str(),
                "-l",
                log.as_str(),
                "-o",
                options.as_str(),
                "-w",
                "start",
            ];
        }
        let status = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{bin}pg_ctl"))
            .args(&args)
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "pg_ctl {action}");
        Ok(())
    }
}

/// Scenario 4: PostgreSQL stopped under load for 30 s, then started again: the client's retried
/// batches are accepted once, consumers and relays reconnect and catch up, nothing is lost or
/// dead-lettered.
#[tokio::test]
async fn postgres_stopped_under_load_loses_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start(&["enrollment", "attribution", "commission", "edge"]).await?;
    let program = program(&cluster, "one").await?;
    let pool = cluster.pool().await?;
    let streaming = stream_in_background(&cluster, &program, "d", 20, 500);
    at_least(&pool, &program, Count::Booked, 1_000).await?;
    pool.close().await;
    cluster.postgres("stop")?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    cluster.postgres("start")?;
    let accepted = tokio::time::timeout(Duration::from_secs(180), streaming).await???;
    assert_eq!(accepted, 10_000);
    let pool = cluster.pool().await?;
    ledger_complete(&cluster, &pool, &program, 10_000).await?;
    pool.close().await;
    cluster.stop()
}

/// Scenario 1: SIGKILL attribution while 10,000 reports stream through the edge; restarted, the
/// client's retries (same keys) record every key exactly once, and the ledger books each
/// approved conversion once.
#[tokio::test]
async fn attribution_killed_mid_stream_records_every_key_once() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&["enrollment", "attribution", "commission", "edge"]).await?;
    let program = program(&cluster, "one").await?;
    let pool = cluster.pool().await?;
    let streaming = stream_in_background(&cluster, &program, "a", 20, 500);
    at_least(&pool, &program, Count::Approved, 1_000).await?;
    cluster.kill("attribution")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.spawn("attribution")?;
    let accepted = tokio::time::timeout(Duration::from_secs(180), streaming).await???;
    assert_eq!(accepted, 10_000);
    let (conversions, keys): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT external_id) FROM attribution.conversions WHERE program_id = $1",
    )
    .bind(&program.program_id)
    .fetch_one(&pool)
    .await?;
    assert_eq!((conversions, keys), (10_000, 10_000), "every key recorded once");
    ledger_complete(&cluster, &pool, &program, 10_000).await?;
    pool.close().await;
    cluster.stop()
}

/// Streams reports (see [`Program::stream`]) on a task of its own.
fn stream_in_background(
    cluster: &Cluster,
    program: &Program,
    prefix: &'static str,
    batches: usize,
    size: usize,
) -> tokio::task::JoinHandle<anyhow::Result<usize>> {
    let (program, grpc) = (program.clone(), cluster.grpc.clone());
    tokio::spawn(async move { program.stream(grpc, prefix, batches, size).await })
}

enum Count {
    Approved,
    Booked,
}

/// Waits until at least `n` of the program's conversions are approved (or booked): the moment
/// to strike mid-stream.
async fn at_least(pool: &PgPool, program: &Program, which: Count, n: i64) -> anyhow::Result<()> {
    let booked = matches!(which, Count::Booked);
    eventually(Duration::from_secs(60), "reports to be flowing", || {
        let (pool, program_id) = (pool.clone(), program.program_id.clone());
        async move {
            let (approved, booked_now, _) = counts(&pool, &program_id).await?;
            Ok((if booked { booked_now } else { approved } >= n).then_some(()))
        }
    })
    .await
}
