use crate::store;
use amba_bus::events::{OutboxEvent, new_meta};
use amba_bus::outbox::{self, Relay, RelayWaker};
use amba_proto::wire::{Program, ProgramChanged};
use amba_testkit::{eventually, test_bus};
use async_nats::jetstream;
use futures::StreamExt;
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn event(bus: &amba_bus::Bus, name: &str) -> OutboxEvent {
    let meta = new_meta();
    let body = ProgramChanged {
        meta: Some(meta.clone()),
        program: Some(Program {
            name: name.to_owned(),
            ..Default::default()
        }),
        commission_changed: false,
    };
    OutboxEvent::new(bus.ns.event("program", "updated"), &meta, &body)
}

/// Every message in the namespace's enrollment stream: (Nats-Msg-Id, payload).
async fn stream_messages(bus: &amba_bus::Bus) -> anyhow::Result<Vec<String>> {
    let stream = bus.js.get_stream(bus.ns.events_stream("enrollment")).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await?;
    let mut batch = consumer
        .fetch()
        .max_messages(10_000)
        .expires(Duration::from_millis(500))
        .messages()
        .await?;
    let mut ids = Vec::new();
    while let Some(message) = batch.next().await {
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        ids.push(
            message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string())
                .unwrap_or_default(),
        );
    }
    Ok(ids)
}

async fn unsent(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?)
}

#[tokio::test]
async fn committed_rows_are_published_once_and_rolled_back_rows_never() -> anyhow::Result<()> {
    let (db, pool) = store().await?;
    let bus = test_bus().await?;
    let committed: Vec<OutboxEvent> = (0..5).map(|i| event(&bus, &format!("kept {i}"))).collect();
    let mut tx = pool.begin().await?;
    for e in &committed {
        outbox::enqueue(&mut tx, e).await?;
    }
    tx.commit().await?;
    let mut tx = pool.begin().await?;
    for i in 0..3 {
        outbox::enqueue(&mut tx, &event(&bus, &format!("rolled back {i}"))).await?;
    }
    tx.rollback().await?;

    let relay = Relay::new(pool.clone(), bus.js.clone(), RelayWaker::default());
    assert_eq!(relay.publish_pending().await?, 5);
    assert_eq!(relay.publish_pending().await?, 0, "nothing is published twice");

    let published = stream_messages(&bus).await?;
    let expected: Vec<String> = committed.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(
        published, expected,
        "exactly the committed events, in order, ids as Nats-Msg-Id"
    );
    assert_eq!(unsent(&pool).await?, 0);

    amba_bus::streams::delete_event_streams(&bus.js, &bus.ns)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    db.drop_now().await
}

#[tokio::test]
async fn a_row_committed_after_a_later_numbered_one_was_published_is_published_too() -> anyhow::Result<()> {
    let (db, pool) = store().await?;
    let bus = test_bus().await?;
    let waker = RelayWaker::default();
    let stop = CancellationToken::new();
    let relay = tokio::spawn(Relay::new(pool.clone(), bus.js.clone(), waker.clone()).run(stop.clone()));

    // `early` takes its number first but commits last; `later` is published meanwhile, so the
    // relay has seen rows numbered above `early` before `early` is visible.
    let early = event(&bus, "early");
    let later = event(&bus, "later");
    let mut slow = pool.begin().await?;
    outbox::enqueue(&mut slow, &early).await?;
    let mut tx = pool.begin().await?;
    outbox::enqueue(&mut tx, &later).await?;
    tx.commit().await?;
    waker.wake();
    eventually(Duration::from_secs(10), "the later row sent", || {
        let (pool, later_id) = (pool.clone(), later.event_id.clone());
        async move {
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_id = $1")
                .bind(&later_id)
                .fetch_one(&pool)
                .await?;
            Ok((left == 0).then_some(()))
        }
    })
    .await?;
    slow.commit().await?;
    waker.wake();
    eventually(Duration::from_secs(10), "the early row sent", || {
        let pool = pool.clone();
        async move { Ok((unsent(&pool).await? == 0).then_some(())) }
    })
    .await?;
    stop.cancel();
    relay.await?;

    let published: HashSet<String> = stream_messages(&bus).await?.into_iter().collect();
    let expected: HashSet<String> = [early.event_id.clone(), later.event_id.clone()].into();
    assert_eq!(published, expected);

    amba_bus::streams::delete_event_streams(&bus.js, &bus.ns)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    db.drop_now().await
}

#[tokio::test]
async fn a_relay_that_dies_mid_batch_publishes_nothing_twice() -> anyhow::Result<()> {
    let (db, pool) = store().await?;
    let bus = test_bus().await?;
    let events: Vec<OutboxEvent> = (0..10).map(|i| event(&bus, &format!("e{i}"))).collect();
    let mut tx = pool.begin().await?;
    for e in &events {
        outbox::enqueue(&mut tx, e).await?;
    }
    tx.commit().await?;

    // A relay locks the batch, publishes half of it and dies before marking anything sent.
    let mut dying = pool.begin().await?;
    let batch = outbox::fetch_pending(&mut dying, 0, 10).await?;
    assert_eq!(batch.len(), 10);
    let outcomes = outbox::publish(&bus.js, &batch[..5]).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    drop(dying); // rollback: the rows are unsent again, their locks released

    // A new relay starts and runs until every row is sent.
    let stop = CancellationToken::new();
    let relay = tokio::spawn(Relay::new(pool.clone(), bus.js.clone(), RelayWaker::default()).run(stop.clone()));
    eventually(Duration::from_secs(10), "all rows sent", || {
        let pool = pool.clone();
        async move { Ok((unsent(&pool).await? == 0).then_some(())) }
    })
    .await?;
    stop.cancel();
    relay.await?;

    let published = stream_messages(&bus).await?;
    assert_eq!(published.len(), 10, "JetStream deduplicated the republished half");
    let unique: HashSet<&String> = published.iter().collect();
    assert_eq!(unique.len(), 10);
    let expected: HashSet<&String> = events.iter().map(|e| &e.event_id).collect();
    assert_eq!(unique, expected);

    amba_bus::streams::delete_event_streams(&bus.js, &bus.ns)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    db.drop_now().await
}

#[tokio::test]
async fn the_relay_drains_large_backlogs_in_batches_when_woken() -> anyhow::Result<()> {
    let (db, pool) = store().await?;
    let bus = test_bus().await?;
    let waker = RelayWaker::default();
    let stop = CancellationToken::new();
    let relay = tokio::spawn(Relay::new(pool.clone(), bus.js.clone(), waker.clone()).run(stop.clone()));

    let mut tx = pool.begin().await?;
    for i in 0..1_200 {
        outbox::enqueue(&mut tx, &event(&bus, &format!("bulk {i}"))).await?;
    }
    tx.commit().await?;
    waker.wake();
    eventually(Duration::from_secs(20), "1200 events in the stream", || {
        let js = bus.js.clone();
        let name = bus.ns.events_stream("enrollment");
        async move { Ok((js.get_stream(&name).await?.info().await?.state.messages == 1_200).then_some(())) }
    })
    .await?;
    stop.cancel();
    relay.await?;
    assert_eq!(unsent(&pool).await?, 0);

    amba_bus::streams::delete_event_streams(&bus.js, &bus.ns)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    db.drop_now().await
}

#[tokio::test]
async fn an_event_too_large_to_publish_is_set_aside_and_the_rest_go_out() -> anyhow::Result<()> {
    let (db, pool) = store().await?;
    let bus = test_bus().await?;
    let max_payload = bus.nats.server_info().max_payload;
    let mut tx = pool.begin().await?;
    outbox::enqueue(&mut tx, &event(&bus, "before")).await?;
    let huge = event(&bus, &"x".repeat(max_payload + 1));
    outbox::enqueue(&mut tx, &huge).await?;
    for i in 0..5 {
        outbox::enqueue(&mut tx, &event(&bus, &format!("after {i}"))).await?;
    }
    tx.commit().await?;

    let stop = CancellationToken::new();
    let relay = tokio::spawn(Relay::new(pool.clone(), bus.js.clone(), RelayWaker::default()).run(stop.clone()));
    eventually(Duration::from_secs(10), "the outbox drained", || {
        let pool = pool.clone();
        async move { Ok((unsent(&pool).await? == 0).then_some(())) }
    })
    .await?;
    stop.cancel();
    relay.await?;

    let published = stream_messages(&bus).await?;
    assert_eq!(published.len(), 6, "every event but the oversized one was published");
    assert!(!published.contains(&huge.event_id));
    let (event_id, reason): (String, String) = sqlx::query_as("SELECT event_id, reason FROM outbox_rejected")
        .fetch_one(&pool)
        .await?;
    assert_eq!(event_id, huge.event_id);
    assert!(reason.contains("exceeded"), "{reason}");

    amba_bus::streams::delete_event_streams(&bus.js, &bus.ns)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    db.drop_now().await
}
