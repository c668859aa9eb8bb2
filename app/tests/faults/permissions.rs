//! The services under the NATS permissions shipped in `deploy/nats/` (the test copy with fixed
//! passwords): `amba migrate` declares the streams and consumers as its own user, each service
//! logs in as its own (`AMBA_NATS_CREDS`, its own inbox prefix) and the whole money path works
//! without a single refusal, while what a user must not do is refused by the server.

use super::{Cluster, ledger_complete, program};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

const ACCOUNTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nats/test-accounts.conf");

/// A client logged in as `user` with its own inbox prefix (as `amba` connects), and the events
/// it sees (the server's refusals among them).
async fn client(url: &str, user: &str) -> anyhow::Result<(async_nats::Client, UnboundedReceiver<String>)> {
    let (events, seen) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), format!("{user}-test-password"))
        .custom_inbox_prefix(amba::system::inbox_prefix(user))
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let _ = events.send(event.to_string());
            }
        })
        .connect(url)
        .await?;
    Ok((client, seen))
}

/// Waits for the server's refusal of `subject` (a publish or a subscription).
async fn refused(events: &mut UnboundedReceiver<String>, subject: &str) -> anyhow::Result<()> {
    let refusal = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.recv().await {
            if event.to_lowercase().contains("permissions violation") && event.contains(subject) {
                return true;
            }
        }
        false
    })
    .await;
    anyhow::ensure!(refusal == Ok(true), "the server did not refuse {subject}");
    Ok(())
}

#[tokio::test]
async fn services_work_under_their_nats_permissions_and_nothing_more() -> anyhow::Result<()> {
    let mut cluster = Cluster::new()?;
    // The shipped permissions name the `amba` namespace; this NATS server is the suite's own.
    cluster.set_env("AMBA_NAMESPACE", "amba".to_owned());
    let port = cluster.spare_port()?;
    let store = cluster.dir.join("nats-secured");
    std::fs::create_dir_all(&store)?;
    let server_log = store.join("server.log");
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
        &server_log,
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
    let dir = cluster.dir.clone();
    let creds = |user: &str| -> anyhow::Result<String> {
        let path = dir.join(format!("{user}.creds"));
        std::fs::write(&path, format!("{user}:{user}-test-password\n"))?;
        Ok(path.to_string_lossy().into_owned())
    };
    // `amba migrate` declares every stream and consumer as `migrate`: no service user may.
    let migrate = creds("migrate")?;
    cluster.set_env("AMBA_NATS_CREDS", migrate);
    cluster.provision()?;
    cluster.env.retain(|(name, _)| name != "AMBA_NATS_CREDS");

    for service in [
        "enrollment",
        "attribution",
        "commission",
        "payout",
        "notification",
        "edge",
    ] {
        let own = creds(service)?;
        cluster.spawn_with(service, &[("AMBA_NATS_CREDS", &own)])?;
    }
    cluster.all_ready().await?;

    // The money path end to end: signup, program, enrollment, reports, ledger.
    let program = program(&cluster, "secured").await?;
    assert_eq!(program.stream(cluster.grpc.clone(), "s", 2, 250).await?, 500);
    let pool = cluster.pool().await?;
    ledger_complete(&cluster, &pool, &program, 500).await?;
    // The settlement clock as `tick`, applied by payout's filtered consumer.
    let tick = cluster
        .command(&["tick"])
        .env("AMBA_NATS_CREDS", creds("tick")?)
        .output()?;
    anyhow::ensure!(
        tick.status.success(),
        "amba tick: {}",
        String::from_utf8_lossy(&tick.stderr)
    );
    super::eventually(Duration::from_secs(20), "payout to apply the tick", || {
        let pool = pool.clone();
        async move {
            let ticks: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM payout.inbox WHERE consumer = 'AMBA_PAYOUT_OUTSIDE' \
                 AND subject = 'amba.evt.settlement.tick'",
            )
            .fetch_one(&pool)
            .await?;
            Ok((ticks > 0).then_some(()))
        }
    })
    .await?;
    // An operator's dead-letter replay as `ops`.
    sqlx::query(
        "INSERT INTO notification.dead_letters (consumer, event_id, subject, payload, error, deliveries) \
         VALUES ('AMBA_NOTIFICATION_PAYOUT', 'evt_permissions', 'amba.evt.notification.replayed', '\\x00', 'test', 1)",
    )
    .execute(&pool)
    .await?;
    let replay = cluster
        .command(&["dead-letters", "replay", "AMBA_NOTIFICATION_PAYOUT", "evt_permissions"])
        .env("AMBA_NATS_CREDS", creds("ops")?)
        .output()?;
    anyhow::ensure!(
        replay.status.success(),
        "amba dead-letters replay: {}",
        String::from_utf8_lossy(&replay.stderr)
    );
    pool.close().await;
    // Not one refusal so far: the grants let through everything the processes do.
    let log = std::fs::read_to_string(&server_log)?;
    let violations: Vec<&str> = log.lines().filter(|line| line.contains("Violation")).collect();
    assert!(
        violations.is_empty(),
        "refused under the shipped permissions: {violations:#?}"
    );

    // Attribution may not call the ledger's payout methods (only payout may).
    let (attribution, mut attribution_events) = client(&url, "attribution").await?;
    attribution
        .publish("amba.rpc.commission.payout_post", "{}".into())
        .await?;
    attribution.flush().await?;
    refused(&mut attribution_events, "amba.rpc.commission.payout_post").await?;

    // Notification may not read a reply meant for the edge: its subscription to the edge's
    // inboxes (or to every inbox) is refused, and an rpc reply to the edge never reaches it.
    let (notification, mut notification_events) = client(&url, "notification").await?;
    let mut edge_replies = notification.subscribe("_INBOX_edge.>").await?;
    refused(&mut notification_events, "_INBOX_edge.>").await?;
    let _every_inbox = notification.subscribe("_INBOX.>").await?;
    refused(&mut notification_events, "_INBOX.>").await?;
    let (edge, _) = client(&url, "edge").await?;
    let reply = edge.request("amba.rpc.notification.ping", "".into()).await?;
    assert!(reply.subject.starts_with("_INBOX_edge."), "{}", reply.subject);
    let leaked = tokio::time::timeout(Duration::from_secs(1), futures::StreamExt::next(&mut edge_replies)).await;
    assert!(!matches!(leaked, Ok(Some(_))), "notification read the edge's reply");

    // Nor purge or delete a stream, nor read payout's Stripe events, nor publish one.
    for subject in [
        "$JS.API.STREAM.PURGE.AMBA_EVT_ENROLLMENT",
        "$JS.API.STREAM.DELETE.AMBA_EVT_ENROLLMENT",
        "$JS.API.CONSUMER.MSG.NEXT.AMBA_EVT_EDGE.AMBA_PAYOUT_OUTSIDE",
        "amba.evt.stripe.account_updated",
    ] {
        notification.publish(subject, "{}".into()).await?;
        notification.flush().await?;
        refused(&mut notification_events, subject).await?;
    }
    // The enrollment stream still holds its events (notification may look it up: it reads it).
    let js = async_nats::jetstream::new(notification.clone());
    let mut enrollment = js.get_stream("AMBA_EVT_ENROLLMENT").await?;
    assert!(
        enrollment.info().await?.state.messages > 0,
        "the enrollment stream lost its events"
    );

    // And a wrong password does not get in at all.
    let intruder = async_nats::ConnectOptions::with_user_and_password("payout".into(), "guess".into())
        .connect(url.as_str())
        .await;
    assert!(intruder.is_err(), "a wrong password was let in");
    cluster.stop()
}
