//! The services under the NATS permissions shipped in `deploy/nats/` (the test copy with fixed
//! passwords): each logs in as its own user (`AMBA_NATS_CREDS`) and the whole money path works,
//! while a service publishing outside its subjects is refused by the server.

use super::{Cluster, ledger_complete, program};
use std::time::Duration;

const ACCOUNTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/nats/test-accounts.conf");

#[tokio::test]
async fn services_work_under_their_nats_permissions_and_nothing_more() -> anyhow::Result<()> {
    let mut cluster = Cluster::new()?;
    // The shipped permissions name the `amba` namespace; this NATS server is the suite's own.
    cluster.set_env("AMBA_NAMESPACE", "amba".to_owned());
    let port = cluster.spare_port()?;
    let store = cluster.dir.join("nats-secured");
    std::fs::create_dir_all(&store)?;
    cluster.start_nats_server(
        &[
            "-c",
            ACCOUNTS,
            "-js",
            "-sd",
            &store.to_string_lossy(),
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ],
        &store.join("server.log"),
    )?;
    let url = format!("nats://127.0.0.1:{port}");
    cluster.set_env("AMBA_NATS_URL", url.clone());
    super::eventually(Duration::from_secs(20), "the secured NATS server", || {
        let url = url.clone();
        async move {
            Ok(std::net::TcpStream::connect(url.trim_start_matches("nats://"))
                .ok()
                .map(drop))
        }
    })
    .await?;
    cluster.provision()?;

    for service in [
        "enrollment",
        "attribution",
        "commission",
        "payout",
        "notification",
        "edge",
    ] {
        let creds = cluster.dir.join(format!("{service}.creds"));
        std::fs::write(&creds, format!("{service}:{service}-test-password\n"))?;
        cluster.spawn_with(service, &[("AMBA_NATS_CREDS", &creds.to_string_lossy())])?;
    }
    cluster.all_ready().await?;

    // The money path end to end: signup, program, enrollment, reports, ledger.
    let program = program(&cluster, "secured").await?;
    assert_eq!(program.stream(cluster.grpc.clone(), "s", 2, 250).await?, 500);
    let pool = cluster.pool().await?;
    ledger_complete(&cluster, &pool, &program, 500).await?;
    pool.close().await;

    // Attribution may not call the ledger's payout methods (only payout may); the server refuses.
    let (events, mut refused) = tokio::sync::mpsc::unbounded_channel();
    let attribution =
        async_nats::ConnectOptions::with_user_and_password("attribution".into(), "attribution-test-password".into())
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    let _ = events.send(event.to_string());
                }
            })
            .connect(url.as_str())
            .await?;
    attribution
        .publish("amba.rpc.commission.payout_post", "{}".into())
        .await?;
    attribution.flush().await?;
    let violation = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = refused.recv().await {
            if event.to_lowercase().contains("permissions violation") {
                return Some(event);
            }
        }
        None
    })
    .await?;
    assert!(
        violation.is_some_and(|v| v.contains("amba.rpc.commission.payout_post")),
        "the server did not refuse attribution's publish to the ledger's payout method"
    );
    // And a wrong password does not get in at all.
    let intruder = async_nats::ConnectOptions::with_user_and_password("payout".into(), "guess".into())
        .connect(url.as_str())
        .await;
    assert!(intruder.is_err(), "a wrong password was let in");
    cluster.stop()
}
