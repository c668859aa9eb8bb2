//! The `amba` binary's operator commands, run as an operator would run them.

use amba_testkit::{TestDatabase, eventually, nats_url, test_bus, unique_namespace};
use std::process::Command;

fn amba(namespace: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new(env!("CARGO_BIN_EXE_amba"))
        .args(args)
        .env("AMBA_NAMESPACE", namespace)
        .env("AMBA_NATS_URL", nats_url())
        .output()
}

async fn stream_exists(bus: &amba_bus::Bus, owner: &str) -> bool {
    bus.js.get_stream(bus.ns.events_stream(owner)).await.is_ok()
}

#[tokio::test]
async fn streams_delete_needs_the_namespace_confirmed_and_removes_only_its_streams() -> anyhow::Result<()> {
    let doomed = test_bus().await?;
    let bystander = test_bus().await?;
    let namespace = doomed.ns.as_str().to_owned();

    let refused = amba(&namespace, &["streams", "delete", "--confirm", "someone-else"])?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("nothing was deleted"));
    assert!(
        stream_exists(&doomed, "attribution").await,
        "a refused delete deletes nothing"
    );

    let deleted = amba(&namespace, &["streams", "delete", "--confirm", &namespace])?;
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    for (owner, _) in amba_bus::streams::EVENT_STREAMS {
        assert!(!stream_exists(&doomed, owner).await, "{owner} stream deleted");
        assert!(
            stream_exists(&bystander, owner).await,
            "another namespace's {owner} stream kept"
        );
    }
    let again = amba(&namespace, &["streams", "delete", "--confirm", &namespace])?;
    assert!(again.status.success(), "streams already gone are not an error");

    amba_bus::streams::delete_event_streams(&bystander.js, &bystander.ns)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

#[tokio::test]
async fn a_service_serves_metrics_on_amba_metrics_addr() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let ns = unique_namespace();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut service = tokio::process::Command::new(env!("CARGO_BIN_EXE_amba"))
        .args(["serve", "notification"])
        .env("AMBA_DATABASE_URL", &db.url)
        .env("AMBA_NATS_URL", nats_url())
        .env("AMBA_NAMESPACE", ns.as_str())
        .env("AMBA_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .kill_on_drop(true)
        .spawn()?;

    let url = format!("http://127.0.0.1:{port}/metrics");
    let response = eventually(std::time::Duration::from_secs(30), "the metrics listener", || {
        let url = url.clone();
        async move { Ok(reqwest::get(&url).await.ok()) }
    })
    .await?;
    assert_eq!(response.status(), 200);
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok());
    assert!(
        content_type.is_some_and(|t| t.starts_with("text/plain")),
        "{content_type:?}"
    );
    let elsewhere = reqwest::get(format!("http://127.0.0.1:{port}/mcp")).await?;
    assert_eq!(elsewhere.status(), 404, "only the ops endpoints are served there");
    // A service that is not the edge answers the probes on the same port, and reports its
    // outbox's backlog.
    let ready = format!("http://127.0.0.1:{port}/readyz");
    eventually(std::time::Duration::from_secs(30), "the service to be ready", || {
        let ready = ready.clone();
        async move { Ok(reqwest::get(&ready).await?.status().is_success().then_some(())) }
    })
    .await?;
    assert_eq!(
        reqwest::get(format!("http://127.0.0.1:{port}/livez")).await?.status(),
        200
    );
    // The backlog reporter samples on its own clock: its first sample may follow readiness.
    eventually(std::time::Duration::from_secs(30), "the outbox backlog gauge", || {
        let url = url.clone();
        async move {
            let metrics = reqwest::get(&url).await?.text().await?;
            Ok(metrics
                .contains("amba_outbox_pending{service=\"notification\"} 0")
                .then_some(()))
        }
    })
    .await?;

    service.kill().await?;
    let nats = async_nats::connect(nats_url()).await?;
    amba_bus::streams::delete_event_streams(&async_nats::jetstream::new(nats), &ns)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    db.drop_now().await
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[tokio::test]
async fn infra_down_stops_exactly_what_infra_up_started() -> anyhow::Result<()> {
    let data = std::env::temp_dir().join(format!("amba-infra-{}", amba_core::id::time_ordered_suffix()));
    let (pg_port, nats_port) = (free_port()?, free_port()?);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_amba"))
            .args(args)
            .env("AMBA_DATA_DIR", &data)
            .env(
                "AMBA_DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:{pg_port}/amba"),
            )
            .env("AMBA_NATS_URL", format!("nats://127.0.0.1:{nats_port}"))
            .output()
    };
    let up = run(&["infra", "up"])?;
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    assert!(answers(pg_port) && answers(nats_port));
    // The machine's own servers are not amba's to stop.
    let shared_nats = nats_url();
    let down = run(&["infra", "down"])?;
    let said = String::from_utf8_lossy(&down.stdout).into_owned();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(said.contains("nats-server") && said.contains("PostgreSQL"), "{said}");
    eventually(std::time::Duration::from_secs(10), "both stopped", || async {
        Ok((!answers(pg_port) && !answers(nats_port)).then_some(()))
    })
    .await?;
    assert!(
        async_nats::connect(&shared_nats).await.is_ok(),
        "the shared NATS still runs"
    );
    let again = run(&["infra", "down"])?;
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing that amba started"));
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// `amba dead-letters list|replay` against a running system: an event the ledger cannot apply
/// is listed with its consumer and error; replayed, it is tried again (and, still invalid,
/// listed again); a replay of nothing says so and fails.
#[tokio::test]
async fn dead_letters_are_listed_and_replayed_by_the_operator() -> anyhow::Result<()> {
    use amba_proto::Message;
    let sys = crate::system::TestSystem::start().await?;
    let namespace = sys.bus.ns.as_str().to_owned();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_amba"))
            .args(args)
            .env("AMBA_NAMESPACE", &namespace)
            .env("AMBA_NATS_URL", nats_url())
            .env("AMBA_DATABASE_URL", &sys.db.url)
            .output()
    };
    // An approval without its conversion: the ledger refuses it for good.
    let event_id = amba_core::id::EventId::new().to_string();
    let broken = amba_proto::wire::ConversionChanged::default();
    sys.bus
        .js
        .send_publish(
            sys.bus.ns.event("conversion", "approved"),
            async_nats::jetstream::message::PublishMessage::build()
                .payload(broken.encode_to_vec().into())
                .message_id(event_id.as_str()),
        )
        .await?
        .await?;
    let commission = sys.service_pool("commission").await?;
    let consumer: String = eventually(
        std::time::Duration::from_secs(15),
        "the ledger to dead-letter the event",
        || {
            let (pool, event_id) = (commission.clone(), event_id.clone());
            async move {
                Ok(
                    sqlx::query_scalar("SELECT consumer FROM dead_letters WHERE event_id = $1")
                        .bind(&event_id)
                        .fetch_optional(&pool)
                        .await?,
                )
            }
        },
    )
    .await?;

    let listed = run(&["dead-letters", "list", "--consumer", &consumer])?;
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listing.contains(&event_id) && listing.contains("without a conversion") && listing.starts_with("commission\t"),
        "{listing}"
    );

    let replayed = run(&["dead-letters", "replay", &consumer, &event_id])?;
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    assert!(String::from_utf8_lossy(&replayed.stdout).contains(&format!("replayed {event_id}")));
    // Still invalid: applied again, refused again, waiting again (with a second delivery count).
    eventually(std::time::Duration::from_secs(15), "the replay to fail again", || {
        let (pool, event_id) = (commission.clone(), event_id.clone());
        async move {
            let waiting: Option<bool> =
                sqlx::query_scalar("SELECT replayed_at IS NULL FROM dead_letters WHERE event_id = $1")
                    .bind(&event_id)
                    .fetch_optional(&pool)
                    .await?;
            Ok(waiting.filter(|w| *w).map(|_| ()))
        }
    })
    .await?;
    let none = run(&["dead-letters", "replay", "NO_SUCH_CONSUMER"])?;
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no dead letter"));
    commission.close().await;
    sys.stop().await
}
