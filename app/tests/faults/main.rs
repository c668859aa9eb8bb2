//! Fault injection: the services run as separate `amba serve` processes on a PostgreSQL and a
//! NATS server of their own, started by the suite in a temporary folder (never the machine's
//! shared ones), so any of them can be killed. Each scenario is bounded in time and ends with
//! `amba ledger verify` and exact counts. docs/reliability.md lists the scenarios.

mod nats_cluster;
mod nats_tls;
mod permissions;
mod replicas;

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
    amba_testkit::free_ports(20_000..32_000, n)
}

/// Ports a cluster keeps for ops ports and replicas' listeners.
const SPARE_PORTS: usize = 24;

/// PostgreSQL, NATS and the services, each its own process.
struct Cluster {
    dir: PathBuf,
    env: Vec<(String, String)>,
    http: String,
    grpc: String,
    /// Running processes by instance: a service's name, or `<service>-<n>` for its n-th replica.
    services: HashMap<String, Child>,
    /// Each instance's ops port (`/livez`, `/readyz`, `/metrics`), the same across restarts.
    ops: HashMap<String, u16>,
    /// Free ports not handed out yet (ops ports, a second edge's listeners).
    spare_ports: Vec<u16>,
    /// The servers of a NATS cluster the suite started itself (instead of `amba infra up`'s one).
    nats_servers: Vec<Child>,
}

impl Cluster {
    /// Starts PostgreSQL, NATS and the given services; returns once every one is ready.
    async fn start(services: &[&'static str]) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::prepare()?;
        cluster.launch(services).await?;
        Ok(cluster)
    }

    /// PostgreSQL and NATS up and migrated; no service started yet.
    fn prepare() -> anyhow::Result<Cluster> {
        let cluster = Cluster::new()?;
        cluster.provision()?;
        Ok(cluster)
    }

    /// A cluster's folder, ports and environment; nothing started.
    fn new() -> anyhow::Result<Cluster> {
        let suffix = amba_testkit::unique_namespace().as_str().to_owned();
        let dir = std::env::temp_dir().join(format!("amba-faults-{suffix}"));
        std::fs::create_dir_all(&dir)?;
        // Four for the servers and the edge, the rest spare for ops ports and replicas (all
        // chosen at once, so none is handed out twice).
        let ports = free_ports(4 + SPARE_PORTS)?;
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
            // The scenarios push one org's load far past a shop's budgets on purpose: faults,
            // not budgets, are under test here (budgets have their own tests).
            ("AMBA_REPORTS_PER_ORG".to_owned(), "100000000,10000000/s".to_owned()),
            ("AMBA_CONFIGURATION_PER_ORG".to_owned(), "100000,100000/s".to_owned()),
            ("AMBA_IN_FLIGHT_PER_ORG".to_owned(), "4096".to_owned()),
        ];
        let mut env = env;
        // A current nats-server (the scripts install one and name it) fsyncs every write, as
        // production should; Debian's 2.9 knows no `sync_interval`.
        if std::env::var_os("AMBA_NATS_SERVER").is_some() {
            env.push(("AMBA_NATS_SYNC".to_owned(), "always".to_owned()));
        }
        let cluster = Cluster {
            dir,
            env,
            http: format!("http://127.0.0.1:{http}"),
            grpc: format!("http://127.0.0.1:{grpc}"),
            services: HashMap::new(),
            ops: HashMap::new(),
            spare_ports: ports[4..].to_vec(),
            nats_servers: Vec::new(),
        };
        Ok(cluster)
    }

    /// Starts PostgreSQL (and NATS, unless one answers at AMBA_NATS_URL) and migrates.
    fn provision(&self) -> anyhow::Result<()> {
        for step in [&["infra", "up"][..], &["migrate"][..]] {
            let done = self.amba(step)?;
            anyhow::ensure!(
                done.status.success(),
                "amba {}: {}",
                step.join(" "),
                String::from_utf8_lossy(&done.stderr)
            );
        }
        Ok(())
    }

    /// Starts services and waits until every running one is ready.
    async fn launch(&mut self, services: &[&'static str]) -> anyhow::Result<()> {
        for service in services {
            self.spawn(service)?;
        }
        self.all_ready().await
    }

    /// Whether a service's `/readyz` answers 200 (false while it does not answer at all).
    async fn ready(&self, service: &str) -> bool {
        let Some(port) = self.ops.get(service) else {
            return false;
        };
        reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// A counter's or gauge's value (summed over its labels) from an instance's `/metrics`; 0 when
    /// it was never recorded.
    async fn metric(&self, instance: &str, name: &str) -> anyhow::Result<f64> {
        let port = self
            .ops
            .get(instance)
            .ok_or_else(|| anyhow::anyhow!("{instance} has no ops port"))?;
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|line| line.split(['{', ' ']).next() == Some(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Waits until every running service's `/readyz` answers 200.
    async fn all_ready(&self) -> anyhow::Result<()> {
        let services: Vec<&str> = self.services.keys().map(String::as_str).collect();
        for service in services {
            eventually(
                Duration::from_secs(60),
                &format!("{service} to be ready"),
                || async move { Ok(self.ready(service).await.then_some(())) },
            )
            .await?;
        }
        Ok(())
    }

    /// Waits until a service's `/readyz` refuses (it sees what it depends on gone).
    async fn not_ready(&self, service: &str) -> anyhow::Result<()> {
        eventually(
            Duration::from_secs(15),
            &format!("{service} to report not ready"),
            || async move { Ok((!self.ready(service).await).then_some(())) },
        )
        .await
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

    fn spawn(&mut self, instance: &str) -> anyhow::Result<()> {
        self.spawn_with(instance, &[])
    }

    /// Sets (or replaces) a variable of every process started from now on.
    fn set_env(&mut self, name: &str, value: String) {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_owned(), value));
    }

    /// Starts a nats-server of the suite's own (`AMBA_NATS_SERVER`, else the one on PATH) with
    /// `args`, its output in `log`; it is killed with the cluster.
    fn start_nats_server(&mut self, args: &[&str], log: &std::path::Path) -> anyhow::Result<()> {
        let binary = std::env::var_os("AMBA_NATS_SERVER").unwrap_or_else(|| "nats-server".into());
        let log = std::fs::File::create(log)?;
        let child = Command::new(binary)
            .args(args)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        self.nats_servers.push(child);
        Ok(())
    }

    /// A port no one uses yet.
    fn spare_port(&mut self) -> anyhow::Result<u16> {
        self.spare_ports
            .pop()
            .ok_or_else(|| anyhow::anyhow!("out of spare ports; raise SPARE_PORTS"))
    }

    /// Starts `amba serve <service>` for `instance` (`commission`, or `commission-2` for a
    /// replica) with extra environment, its output appended to the instance's log.
    fn spawn_with(&mut self, instance: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let service = instance.split('-').next().unwrap_or(instance).to_owned();
        let port = match self.ops.get(instance) {
            Some(port) => *port,
            None => self.spare_port()?,
        };
        self.ops.insert(instance.to_owned(), port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{instance}.log")))?;
        let child = self
            .command(&["serve", &service])
            .env("AMBA_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        self.services.insert(instance.to_owned(), child);
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
        for mut child in self.services.drain().map(|(_, c)| c).chain(self.nats_servers.drain(..)) {
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
    owner_org_id: String,
    owner_token: String,
    affiliate_token: String,
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
        owner_org_id: owner["org_id"].as_str().unwrap_or_default().to_owned(),
        owner_token,
        affiliate_token: affiliate["token"].as_str().unwrap_or_default().to_owned(),
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
    // Every process sees NATS gone and says so on its ops port.
    for service in ["enrollment", "attribution", "commission", "edge"] {
        cluster.not_ready(service).await?;
    }
    let restarted = cluster.amba(&["infra", "up"])?;
    anyhow::ensure!(
        restarted.status.success(),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    let accepted = tokio::time::timeout(Duration::from_secs(120), streaming).await???;
    assert_eq!(accepted, 10_000);
    ledger_complete(&cluster, &pool, &program, 10_000).await?;
    // Readiness recovered everywhere, without a restart.
    cluster.all_ready().await?;
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

/// Scenario 4: PostgreSQL stopped under load for 2 minutes, then started again: the client's retried
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
    let stopped = std::time::Instant::now();
    // The services with a store report it; the edge (no store) stays ready and answers
    // UNAVAILABLE, which the client retries.
    for service in ["enrollment", "attribution", "commission"] {
        cluster.not_ready(service).await?;
    }
    assert!(cluster.ready("edge").await, "the edge needs no database");
    tokio::time::sleep(Duration::from_secs(120).saturating_sub(stopped.elapsed())).await;
    cluster.postgres("start")?;
    let accepted = tokio::time::timeout(Duration::from_secs(180), streaming).await???;
    assert_eq!(accepted, 10_000);
    cluster.all_ready().await?;
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

/// Scenario 8: concurrent program and enrollment changes, with half of enrollment's transactions
/// held up between their start (their `now()`) and their row lock (`AMBA_FAILPOINTS`), so some
/// commit in another order than they began. Every read model converges to the source rows.
#[tokio::test]
async fn racing_enrollment_changes_converge_in_every_read_model() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&["attribution", "commission", "edge"]).await?;
    cluster.spawn_with(
        "enrollment",
        &[("AMBA_FAILPOINTS", "enrollment-before-row-lock=50%return(300)")],
    )?;
    cluster.all_ready().await?;
    let program = program(&cluster, "race").await?;
    let pool = cluster.pool().await?;
    let url = format!("{}/mcp", cluster.http);
    let affiliate: String =
        sqlx::query_scalar("SELECT enrollment_id FROM enrollment.enrollments WHERE program_id = $1")
            .bind(&program.program_id)
            .fetch_one(&pool)
            .await?;

    let mut changes = tokio::task::JoinSet::new();
    for i in 0..24u32 {
        let (url, program) = (url.clone(), program.clone());
        let affiliate = affiliate.clone();
        changes.spawn(async move {
            let owner = McpClient::connect(&url, Some(&program.owner_token)).await?;
            if i == 12 {
                owner
                    .ok(
                        "amba_affiliate_affiliate_remove",
                        json!({"enrollment_id": affiliate, "reason": "racing"}),
                    )
                    .await?;
            }
            let mut update = json!({
                "program_id": program.program_id,
                "attribution_window_days": 10 + i,
                "commission": {"schema": 1, "type": "percentage", "bps": 1000 + 10 * i},
            });
            if i % 3 != 0 {
                update["status"] = json!(if i % 3 == 1 { "paused" } else { "active" });
            }
            // A pause of a paused program is refused as a no-op transition or applied; either
            // way the source row is the truth the read models must reach.
            let _ = owner.call_raw("amba_affiliate_programs_update", update).await?;
            owner.close().await
        });
    }
    while let Some(done) = changes.join_next().await {
        done??;
    }

    // The race happened: some rule version began (its `now()`) before an earlier version did.
    let reordered: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM enrollment.commission_rules a JOIN enrollment.commission_rules b \
         ON a.program_id = b.program_id AND a.version < b.version AND a.created_at > b.created_at \
         WHERE a.program_id = $1)",
    )
    .bind(&program.program_id)
    .fetch_one(&pool)
    .await?;
    assert!(
        reordered,
        "no change committed out of its start order; the scenario proved nothing"
    );

    eventually(
        Duration::from_secs(60),
        "the read models to match the source rows",
        || {
            let (pool, program_id, enrollment_id) = (pool.clone(), program.program_id.clone(), affiliate.clone());
            async move {
                let source: (String, i32, i32, i64, String, i64) = sqlx::query_as(
                    "SELECT p.status, p.commission_version, p.attribution_window_days, p.version, e.status, e.version \
                 FROM enrollment.programs p, enrollment.enrollments e WHERE p.program_id = $1 AND e.enrollment_id = $2",
                )
                .bind(&program_id)
                .bind(&enrollment_id)
                .fetch_one(&pool)
                .await?;
                let attribution: Option<(String, i32, i32, i64, String, i64)> = sqlx::query_as(
                    "SELECT p.status, p.commission_version, p.attribution_window_days, p.version, e.status, e.version \
                 FROM attribution.programs_view p, attribution.enrollments_view e \
                 WHERE p.program_id = $1 AND e.enrollment_id = $2",
                )
                .bind(&program_id)
                .bind(&enrollment_id)
                .fetch_optional(&pool)
                .await?;
                let commission: Option<(String, i32, i64, String, i64)> = sqlx::query_as(
                    "SELECT p.status, p.commission_version, p.version, e.status, e.version \
                 FROM commission.programs p, commission.enrollments e \
                 WHERE p.program_id = $1 AND e.enrollment_id = $2",
                )
                .bind(&program_id)
                .bind(&enrollment_id)
                .fetch_optional(&pool)
                .await?;
                let (status, rule, _window, version, enrollment_status, enrollment_version) = source.clone();
                let expected_commission = (status, rule, version, enrollment_status, enrollment_version);
                Ok((attribution == Some(source) && commission == Some(expected_commission)).then_some(()))
            }
        },
    )
    .await?;
    let (_, _, dead) = counts(&pool, &program.program_id).await?;
    assert_eq!(dead, 0, "dead letters");
    pool.close().await;
    cluster.stop()
}

/// The affiliate opens its payout account and completes onboarding through the link (the fake
/// Stripe's page), as a person with a browser would; readiness arrives by webhook.
async fn onboard(cluster: &Cluster, program: &Program) -> anyhow::Result<()> {
    let affiliate = McpClient::connect(&format!("{}/mcp", cluster.http), Some(&program.affiliate_token)).await?;
    affiliate
        .ok("amba_affiliate_my_payout_create", json!({"country": "US"}))
        .await?;
    let link = affiliate
        .ok(
            "amba_affiliate_my_payout_onboarding",
            json!({"return_url": "https://aff.example/done", "refresh_url": "https://aff.example/retry"}),
        )
        .await?;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let page = browser.get(link["url"].as_str().unwrap_or_default()).send().await?;
    anyhow::ensure!(page.status() == 302, "onboarding did not complete: {}", page.status());
    eventually(Duration::from_secs(30), "the payout account to be ready", || async {
        let quote = affiliate.ok("amba_affiliate_my_payout_request", json!({})).await?;
        Ok((quote["account_ready"] == true).then_some(()))
    })
    .await?;
    affiliate.close().await
}

/// The operator enables the owner's live payouts, and the owner saves a card through the Stripe
/// Checkout link (the fake's page); readiness arrives by webhook.
async fn fund(cluster: &Cluster, program: &Program) -> anyhow::Result<()> {
    let enabled = cluster.amba(&["orgs", "payouts", "enable", &program.owner_org_id, "--by", "faults"])?;
    anyhow::ensure!(enabled.status.success(), "{}", String::from_utf8_lossy(&enabled.stderr));
    let owner = McpClient::connect(&format!("{}/mcp", cluster.http), Some(&program.owner_token)).await?;
    let setup = owner
        .ok(
            "amba_affiliate_program_funding_setup",
            json!({"program_id": program.program_id}),
        )
        .await?;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let page = browser.get(setup["url"].as_str().unwrap_or_default()).send().await?;
    anyhow::ensure!(
        page.status() == 302,
        "funding setup did not complete: {}",
        page.status()
    );
    eventually(
        Duration::from_secs(30),
        "the owner's payment method to be saved",
        || async {
            let dry = owner
                .ok(
                    "amba_affiliate_payout_run",
                    json!({"program_id": program.program_id, "dry_run": true}),
                )
                .await?;
            Ok((dry["funding"]["status"] == "ready").then_some(()))
        },
    )
    .await?;
    owner.close().await
}

/// The program's payout items by status, and the affiliate's ledger balances.
async fn payout_state(
    pool: &PgPool,
    program_id: &str,
) -> anyhow::Result<(Vec<(String, String)>, HashMap<String, i64>)> {
    let items: Vec<(String, String)> = sqlx::query_as(
        "SELECT payout_item_id, status FROM payout.payout_items WHERE program_id = $1 ORDER BY payout_item_id",
    )
    .bind(program_id)
    .fetch_all(pool)
    .await?;
    let balances: Vec<(String, i64)> = sqlx::query_as(
        "SELECT account, sum(balance_minor)::bigint FROM commission.balances WHERE program_id = $1 GROUP BY account",
    )
    .bind(program_id)
    .fetch_all(pool)
    .await?;
    Ok((items, balances.into_iter().collect()))
}

/// Payout faults: the payout process is killed (1) after the ledger reserved an item (and the
/// owner was charged) but before the transfer was asked (a fault point holds it there), and (2) while Stripe, having made the
/// transfer, holds its answer (its 500-after-commit twin is in the main suite:
/// `payouts::unknown_outcomes_end_with_exactly_one_transfer`). Each time the restarted service
/// finishes the item with exactly one transfer and the ledger shows it paid and verifies. Then
/// every webhook is delivered again, newest first, and changes nothing.
#[tokio::test]
async fn payout_killed_between_reserve_and_transfer_pays_exactly_once() -> anyhow::Result<()> {
    use amba_stripe_fake::{FakeConfig, FakeStripe, Fault, FaultKind};
    let mut cluster = Cluster::prepare()?;
    let stripe = FakeStripe::start(FakeConfig {
        secret_key: "sk_test_faults".into(),
        webhook_secret: "whsec_faults".into(),
        webhook_url: Some(format!("{}/webhooks/stripe", cluster.http)),
    })
    .await?;
    for (name, value) in [
        ("AMBA_STRIPE_API_BASE", stripe.base_url()),
        ("AMBA_STRIPE_SECRET_KEY", "sk_test_faults".into()),
        ("AMBA_STRIPE_WEBHOOK_SECRET", "whsec_faults".into()),
        ("AMBA_STRIPE_TIMEOUT_SECONDS", "2".into()),
        ("ORG_PAYOUTS_LIVE", "true".into()),
    ] {
        cluster.env.push((name.to_owned(), value));
    }
    cluster
        .launch(&["enrollment", "attribution", "commission", "edge"])
        .await?;
    cluster.spawn_with("payout", &[("AMBA_FAILPOINTS", "payout-before-transfer=return(60000)")])?;
    cluster.all_ready().await?;
    let program = program(&cluster, "pay").await?;
    onboard(&cluster, &program).await?;
    fund(&cluster, &program).await?;
    let pool = cluster.pool().await?;
    let owner = McpClient::connect(&format!("{}/mcp", cluster.http), Some(&program.owner_token)).await?;

    for (round, prefix) in [(1usize, "r1"), (2, "r2")] {
        assert_eq!(program.stream(cluster.grpc.clone(), prefix, 1, 10).await?, 10);
        eventually(Duration::from_secs(60), "the round's commission to be payable", || {
            let (pool, program_id) = (pool.clone(), program.program_id.clone());
            async move {
                let (_, balances) = payout_state(&pool, &program_id).await?;
                Ok((balances.get("payable") == Some(&2_000)).then_some(()))
            }
        })
        .await?;
        if round == 2 {
            // Stripe makes the transfer, then holds its answer past the client's timeout.
            stripe.inject(Fault {
                path_prefix: "/v1/transfers".into(),
                kind: FaultKind::Timeout(Duration::from_secs(30)),
                times: 1,
            });
        }
        // The run is started and left: its process is about to die under it.
        let run = {
            let owner_url = format!("{}/mcp", cluster.http);
            let (token, program_id) = (program.owner_token.clone(), program.program_id.clone());
            tokio::spawn(async move {
                let owner = McpClient::connect(&owner_url, Some(&token)).await?;
                let _ = owner
                    .call_raw("amba_affiliate_payout_run", json!({"program_id": program_id}))
                    .await;
                owner.close().await
            })
        };
        eventually(Duration::from_secs(30), "the moment to kill payout", || {
            let (pool, program_id, stripe) = (pool.clone(), program.program_id.clone(), stripe.clone());
            async move {
                let (items, _) = payout_state(&pool, &program_id).await?;
                Ok(match round {
                    1 => items.iter().any(|(_, status)| status == "reserved"),
                    _ => stripe.transfers().len() == 2,
                }
                .then_some(()))
            }
        })
        .await?;
        cluster.kill("payout")?;
        assert_eq!(
            stripe.transfers().len(),
            round - 1 + usize::from(round == 2),
            "transfers at the kill"
        );
        run.abort();
        cluster.spawn("payout")?;
        eventually(Duration::from_secs(60), "every payout item to be paid", || {
            let (pool, program_id) = (pool.clone(), program.program_id.clone());
            async move {
                let (items, _) = payout_state(&pool, &program_id).await?;
                Ok((items.len() == round && items.iter().all(|(_, status)| status == "paid")).then_some(()))
            }
        })
        .await?;
        let (items, balances) = payout_state(&pool, &program.program_id).await?;
        let transfers = stripe.transfers();
        assert_eq!(transfers.len(), round, "one transfer per item");
        for (item_id, _) in &items {
            let of_item = transfers
                .iter()
                .filter(|t| t["metadata"]["payout_item_id"] == item_id.as_str())
                .count();
            assert_eq!(of_item, 1, "item {item_id}");
        }
        let charged: Vec<_> = stripe
            .payment_intents()
            .into_iter()
            .filter(|pi| pi["status"] == "succeeded")
            .collect();
        assert_eq!(charged.len(), round, "one charge per run");
        assert!(
            transfers
                .iter()
                .all(|t| charged.iter().any(|pi| pi["latest_charge"] == t["source_transaction"])),
            "every transfer is paid from its run's charge"
        );
        assert_eq!(balances.get("paid").copied(), Some(2_000 * round as i64));
        assert_eq!(balances.get("payable").copied().unwrap_or(0), 0);
        assert_eq!(balances.get("reserved").copied().unwrap_or(0), 0);
        let verify = cluster.amba(&["ledger", "verify"])?;
        assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    }

    // Every webhook Stripe sent, delivered again newest first: duplicates out of order change
    // nothing (accounts stay ready, items paid, balances and transfers as they were).
    let before = payout_state(&pool, &program.program_id).await?;
    let mut events = stripe.events();
    events.reverse();
    for event in &events {
        stripe.redeliver(event["id"].as_str().unwrap_or_default()).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(payout_state(&pool, &program.program_id).await?, before);
    assert_eq!(stripe.transfers().len(), 2);
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM payout.stripe_events")
        .fetch_one(&pool)
        .await?;
    assert!(recorded as usize <= events.len(), "each Stripe event recorded once");
    let (_, _, dead) = counts(&pool, &program.program_id).await?;
    assert_eq!(dead, 0, "dead letters");
    owner.close().await?;
    pool.close().await;
    cluster.stop()
}
