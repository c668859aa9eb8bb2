//! A three-server JetStream cluster under the services, streams replicated three times: one
//! server killed under load loses nothing, and publishing and consuming resume within seconds.

use super::{Cluster, Count, at_least, counts, ledger_complete, program, stream_in_background};
use std::time::{Duration, Instant};

impl Cluster {
    /// Starts three clustered nats-servers on loopback and points the services at all of them
    /// with `AMBA_STREAM_REPLICAS=3`. Returns once the cluster takes a replicated stream.
    async fn start_nats_cluster(&mut self) -> anyhow::Result<()> {
        let clients: Vec<u16> = (0..3).map(|_| self.spare_port()).collect::<anyhow::Result<_>>()?;
        let routes: Vec<u16> = (0..3).map(|_| self.spare_port()).collect::<anyhow::Result<_>>()?;
        let route_urls = routes
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let sync = if std::env::var_os("AMBA_NATS_SERVER").is_some() {
            ", sync_interval: always"
        } else {
            ""
        };
        for n in 0..3 {
            let dir = self.dir.join(format!("nats-{n}"));
            std::fs::create_dir_all(&dir)?;
            let config = dir.join("server.conf");
            std::fs::write(
                &config,
                format!(
                    "server_name: n{n}\nlisten: \"127.0.0.1:{}\"\njetstream {{ store_dir: \"{}\"{sync} }}\n\
                     cluster {{ name: amba, listen: \"127.0.0.1:{}\", routes: [{route_urls}] }}\n",
                    clients[n],
                    dir.display(),
                    routes[n]
                ),
            )?;
            self.start_nats_server(&["-c", &config.to_string_lossy()], &dir.join("server.log"))?;
        }
        let urls = clients
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        self.set_env("AMBA_NATS_URL", urls.clone());
        self.set_env("AMBA_STREAM_REPLICAS", "3".to_owned());

        // The cluster is up once it has a meta leader and places a stream on all three servers.
        super::eventually(Duration::from_secs(60), "the NATS cluster to take an R3 stream", || {
            let urls = urls.clone();
            async move {
                let servers: Vec<async_nats::ServerAddr> = urls.split(',').map(str::parse).collect::<Result<_, _>>()?;
                let nats = match async_nats::connect(servers).await {
                    Ok(nats) => nats,
                    Err(err) => {
                        eprintln!("NATS cluster not answering yet: {err}");
                        return Ok(None);
                    }
                };
                let js = async_nats::jetstream::new(nats);
                let probe = async_nats::jetstream::stream::Config {
                    name: "PROBE".into(),
                    subjects: vec!["probe.>".into()],
                    num_replicas: 3,
                    ..Default::default()
                };
                Ok(match js.get_or_create_stream(probe).await {
                    Ok(_) => {
                        let _ = js.delete_stream("PROBE").await;
                        Some(())
                    }
                    Err(err) => {
                        eprintln!("NATS cluster not placing streams yet: {err}");
                        None
                    }
                })
            }
        })
        .await
    }
}

/// Scenario: one of three NATS servers killed (-9) while 10,000 reports stream and every outbox
/// relays; the services fail over to the others by themselves, 2,000 conversions reported after
/// the kill are approved and booked within seconds, and in the end every key is recorded once
/// and booked once.
#[tokio::test]
async fn a_nats_server_killed_in_a_three_server_cluster_loses_nothing() -> anyhow::Result<()> {
    let mut cluster = Cluster::new()?;
    cluster.start_nats_cluster().await?;
    cluster.provision()?;
    cluster
        .launch(&["enrollment", "attribution", "commission", "edge"])
        .await?;
    let program = program(&cluster, "r3").await?;
    let pool = cluster.pool().await?;
    let streaming = stream_in_background(&cluster, &program, "c", 20, 500);
    at_least(&pool, &program, Count::Booked, 1_000).await?;

    let mut victim = cluster.nats_servers.remove(0);
    let killed = victim.kill();
    victim.wait()?;
    killed?;
    let killed = Instant::now();
    let (approved_at_kill, booked_at_kill, _) = counts(&pool, &program.program_id).await?;
    eprintln!("at the kill: {approved_at_kill} approved, {booked_at_kill} booked");
    // The first stream may be nearly done by now (approval runs ahead of booking), so a second
    // one, begun after the kill, is what proves publishing resumed.
    let after_kill = stream_in_background(&cluster, &program, "d", 4, 500);
    super::eventually(
        Duration::from_secs(30),
        "reports to be approved and booked again",
        || {
            let (pool, program_id) = (pool.clone(), program.program_id.clone());
            async move {
                let (approved, booked, _) = counts(&pool, &program_id).await?;
                let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM attribution.outbox")
                    .fetch_one(&pool)
                    .await?;
                eprintln!(
                    "{:?} after the kill: {approved} approved, {booked} booked, {unsent} unsent",
                    killed.elapsed()
                );
                Ok((approved > approved_at_kill + 500 && booked > booked_at_kill + 500).then_some(()))
            }
        },
    )
    .await?;
    let resumed = killed.elapsed();
    eprintln!("publishing and consuming resumed {resumed:.1?} after the kill");

    let accepted = tokio::time::timeout(Duration::from_secs(180), streaming).await???;
    assert_eq!(accepted, 10_000);
    let accepted_after_kill = tokio::time::timeout(Duration::from_secs(180), after_kill).await???;
    assert_eq!(accepted_after_kill, 2_000);
    ledger_complete(&cluster, &pool, &program, 12_000).await?;
    let (conversions, keys): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT external_id) FROM attribution.conversions WHERE program_id = $1",
    )
    .bind(&program.program_id)
    .fetch_one(&pool)
    .await?;
    assert_eq!((conversions, keys), (12_000, 12_000));
    pool.close().await;
    cluster.stop()
}
