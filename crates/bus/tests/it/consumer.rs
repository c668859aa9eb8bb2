use crate::store;
use amba_bus::consumer::{self, ConsumerSpec, Delivery, Handler, HandlerError};
use amba_testkit::{eventually, test_bus};
use async_nats::jetstream::{self, message::PublishMessage, stream};
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Records each application; fails transiently for the first `fail_attempts` deliveries of
/// payload "flaky", permanently for payload "poison".
struct Recorder {
    fail_attempts: i64,
}

impl Handler for Recorder {
    async fn handle(&self, conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        match delivery.payload.as_ref() {
            b"poison" => return Err(HandlerError::Permanent("payload is poison".into())),
            b"flaky" if delivery.attempt <= self.fail_attempts => {
                return Err(HandlerError::Retry(anyhow::anyhow!("database briefly away")));
            }
            _ => {}
        }
        sqlx::query("INSERT INTO applied (event_id, attempt) VALUES ($1, $2)")
            .bind(&delivery.event_id)
            .bind(delivery.attempt)
            .execute(conn)
            .await?;
        Ok(())
    }
}

struct Setup {
    pool: PgPool,
    db: amba_testkit::TestDatabase,
    bus: amba_bus::Bus,
    stream: String,
    subject: String,
}

/// A stream with a short duplicate window, so a test can deliver the same event id twice the way
/// a republish after the window would.
async fn setup() -> anyhow::Result<Setup> {
    let (db, pool) = store().await?;
    sqlx::query("CREATE TABLE applied (event_id TEXT NOT NULL, attempt BIGINT NOT NULL)")
        .execute(&pool)
        .await?;
    let bus = test_bus().await?;
    let stream = format!("{}_PROBE", bus.ns.as_str().to_uppercase());
    bus.js
        .create_stream(stream::Config {
            name: stream.clone(),
            subjects: vec![bus.ns.event_domain("probe")],
            duplicate_window: Duration::from_millis(200),
            ..Default::default()
        })
        .await?;
    let subject = bus.ns.event("probe", "happened");
    Ok(Setup {
        pool,
        db,
        bus,
        stream,
        subject,
    })
}

async fn publish(
    js: &jetstream::Context,
    subject: &str,
    id: Option<&str>,
    payload: &'static [u8],
) -> anyhow::Result<bool> {
    let mut message = PublishMessage::build().payload(payload.into());
    if let Some(id) = id {
        message = message.message_id(id);
    }
    let ack = js.send_publish(subject.to_owned(), message).await?.await?;
    Ok(ack.duplicate)
}

fn spec(s: &Setup) -> ConsumerSpec {
    ConsumerSpec::new(s.stream.clone(), format!("{}_T", s.stream), s.subject.clone())
}

/// Waits until the consumer has settled (acked or terminated) `count` stream messages.
async fn settled(s: &Setup, durable: &str, count: u64) -> anyhow::Result<()> {
    eventually(Duration::from_secs(15), "consumer to settle", || {
        let js = s.bus.js.clone();
        let (stream, durable) = (s.stream.clone(), durable.to_owned());
        async move {
            // The runner creates the consumer; until then there is nothing to wait on.
            let found: Result<jetstream::consumer::PullConsumer, _> =
                js.get_stream(&stream).await?.get_consumer(&durable).await;
            let Ok(mut consumer) = found else {
                return Ok(None);
            };
            let info = consumer.info().await?;
            Ok(
                (info.ack_floor.stream_sequence >= count && info.num_ack_pending == 0 && info.num_pending == 0)
                    .then_some(()),
            )
        }
    })
    .await
}

async fn teardown(s: Setup) -> anyhow::Result<()> {
    s.bus.js.delete_stream(&s.stream).await?;
    amba_bus::streams::delete_event_streams(&s.bus.js, &s.bus.ns)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    s.db.drop_now().await
}

#[tokio::test]
async fn a_redelivered_event_is_applied_once() -> anyhow::Result<()> {
    let s = setup().await?;
    assert!(!publish(&s.bus.js, &s.subject, Some("evt_same"), b"hello").await?);
    // Inside the window JetStream drops the copy; past it, the copy is stored again, as a
    // republish after a crash would be. The inbox must catch it.
    assert!(publish(&s.bus.js, &s.subject, Some("evt_same"), b"hello").await?);
    eventually(Duration::from_secs(5), "duplicate window to pass", || {
        let js = s.bus.js.clone();
        let subject = s.subject.clone();
        async move { Ok((!publish(&js, &subject, Some("evt_same"), b"hello").await?).then_some(())) }
    })
    .await?;
    assert!(!publish(&s.bus.js, &s.subject, Some("evt_other"), b"hello").await?);

    let spec = spec(&s);
    let durable = spec.durable_name.clone();
    let stop = CancellationToken::new();
    let runner = tokio::spawn(consumer::run(
        s.bus.js.clone(),
        s.pool.clone(),
        spec,
        Arc::new(Recorder { fail_attempts: 0 }),
        stop.clone(),
    ));
    settled(&s, &durable, 3).await?;
    stop.cancel();
    runner.await?.map_err(|e| anyhow::anyhow!("{e}"))?;

    let applied: Vec<(String, i64)> =
        sqlx::query_as("SELECT event_id, count(*) FROM applied GROUP BY event_id ORDER BY event_id")
            .fetch_all(&s.pool)
            .await?;
    assert_eq!(applied, vec![("evt_other".to_owned(), 1), ("evt_same".to_owned(), 1)]);
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&s.pool)
        .await?;
    assert_eq!(inbox, 2);
    teardown(s).await
}

#[tokio::test]
async fn transient_failures_retry_and_poison_goes_to_dead_letters() -> anyhow::Result<()> {
    let s = setup().await?;
    publish(&s.bus.js, &s.subject, Some("evt_flaky"), b"flaky").await?;
    publish(&s.bus.js, &s.subject, Some("evt_poison"), b"poison").await?;
    publish(&s.bus.js, &s.subject, None, b"no id").await?;
    publish(&s.bus.js, &s.subject, Some("evt_fine"), b"fine").await?;

    let spec = spec(&s);
    let durable = spec.durable_name.clone();
    let stop = CancellationToken::new();
    let runner = tokio::spawn(consumer::run(
        s.bus.js.clone(),
        s.pool.clone(),
        spec,
        Arc::new(Recorder { fail_attempts: 2 }),
        stop.clone(),
    ));
    settled(&s, &durable, 4).await?;
    stop.cancel();
    runner.await?.map_err(|e| anyhow::anyhow!("{e}"))?;

    let applied: Vec<(String, i64)> = sqlx::query_as("SELECT event_id, attempt FROM applied ORDER BY event_id")
        .fetch_all(&s.pool)
        .await?;
    assert_eq!(
        applied,
        vec![("evt_fine".to_owned(), 1), ("evt_flaky".to_owned(), 3)],
        "the flaky one applied once, on its third delivery"
    );
    let dead: Vec<(String, String)> = sqlx::query_as("SELECT event_id, error FROM dead_letters ORDER BY event_id")
        .fetch_all(&s.pool)
        .await?;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].0, "evt_poison");
    assert!(dead[0].1.contains("poison"));
    assert!(dead[1].0.starts_with("missing-id:") && dead[1].1.contains("Nats-Msg-Id"));
    let inbox: Vec<String> = sqlx::query_scalar("SELECT event_id FROM inbox ORDER BY event_id")
        .fetch_all(&s.pool)
        .await?;
    assert_eq!(
        inbox,
        vec!["evt_fine", "evt_flaky"],
        "failed attempts left no inbox row behind"
    );
    teardown(s).await
}

/// Records (key, n) for payloads `key:n`, taking a little longer for small n to tempt reordering.
struct Ordered;

impl Handler for Ordered {
    async fn handle(&self, conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        let text = String::from_utf8_lossy(&delivery.payload).into_owned();
        let (key, n) = text
            .split_once(':')
            .ok_or_else(|| HandlerError::Permanent("bad payload".into()))?;
        let n: i64 = n.parse().map_err(|_| HandlerError::Permanent("bad n".into()))?;
        tokio::time::sleep(Duration::from_millis(u64::try_from(5 - n % 5).unwrap_or(0))).await;
        sqlx::query("INSERT INTO applied (event_id, attempt) VALUES ($1, $2)")
            .bind(key)
            .bind(n)
            .execute(conn)
            .await?;
        Ok(())
    }

    fn partition_key(&self, delivery: &Delivery) -> Option<String> {
        String::from_utf8_lossy(&delivery.payload)
            .split(':')
            .next()
            .map(str::to_owned)
    }
}

#[tokio::test]
async fn messages_with_one_partition_key_apply_in_stream_order() -> anyhow::Result<()> {
    let s = setup().await?;
    sqlx::query("ALTER TABLE applied ADD COLUMN seq BIGSERIAL")
        .execute(&s.pool)
        .await?;
    let payloads: Vec<String> = (0..20)
        .flat_map(|n| ["a", "b", "c"].map(|k| format!("{k}:{n}")))
        .collect();
    for (i, payload) in payloads.iter().enumerate() {
        let message = PublishMessage::build()
            .payload(payload.clone().into_bytes().into())
            .message_id(format!("evt_{i}"));
        s.bus.js.send_publish(s.subject.clone(), message).await?.await?;
    }
    let mut spec = spec(&s);
    spec.concurrency = 4;
    let durable = spec.durable_name.clone();
    let stop = CancellationToken::new();
    let runner = tokio::spawn(consumer::run(
        s.bus.js.clone(),
        s.pool.clone(),
        spec,
        Arc::new(Ordered),
        stop.clone(),
    ));
    settled(&s, &durable, 60).await?;
    stop.cancel();
    runner.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    for key in ["a", "b", "c"] {
        let order: Vec<i64> = sqlx::query_scalar("SELECT attempt FROM applied WHERE event_id = $1 ORDER BY seq")
            .bind(key)
            .fetch_all(&s.pool)
            .await?;
        assert_eq!(order, (0..20).collect::<Vec<i64>>(), "key {key} applied out of order");
    }
    teardown(s).await
}

/// Fails permanently on "poison", counting its deliveries; panics on "panic" (a bug).
#[derive(Default)]
struct Poisoned {
    poison_deliveries: std::sync::atomic::AtomicUsize,
}

impl Handler for Poisoned {
    #[expect(
        clippy::panic,
        reason = "a panicking handler stands for a bug the runner must survive"
    )]
    async fn handle(&self, _conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        match delivery.payload.as_ref() {
            b"poison" => {
                self.poison_deliveries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(HandlerError::Permanent("payload is poison".into()))
            }
            b"panic" => panic!("a handler bug"),
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn a_dead_letter_that_cannot_be_recorded_is_retried_never_dropped() -> anyhow::Result<()> {
    let s = setup().await?;
    // Recording dead letters fails (as it would with the database away) until the table is back.
    sqlx::query("ALTER TABLE dead_letters RENAME TO dead_letters_away")
        .execute(&s.pool)
        .await?;
    publish(&s.bus.js, &s.subject, Some("evt_poison"), b"poison").await?;
    let handler = Arc::new(Poisoned::default());
    let spec = spec(&s);
    let durable = spec.durable_name.clone();
    let stop = CancellationToken::new();
    let runner = tokio::spawn(consumer::run(
        s.bus.js.clone(),
        s.pool.clone(),
        spec,
        handler.clone(),
        stop.clone(),
    ));
    let seen = handler.clone();
    eventually(
        Duration::from_secs(15),
        "the poison to be delivered again and again",
        || {
            let seen = seen.clone();
            async move { Ok((seen.poison_deliveries.load(std::sync::atomic::Ordering::SeqCst) >= 4).then_some(())) }
        },
    )
    .await?;
    sqlx::query("ALTER TABLE dead_letters_away RENAME TO dead_letters")
        .execute(&s.pool)
        .await?;
    settled(&s, &durable, 1).await?;
    stop.cancel();
    runner.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    let dead: Vec<String> = sqlx::query_scalar("SELECT event_id FROM dead_letters")
        .fetch_all(&s.pool)
        .await?;
    assert_eq!(dead, vec!["evt_poison".to_owned()]);
    teardown(s).await
}

#[tokio::test]
async fn a_worker_that_dies_stops_the_consumer_with_an_error() -> anyhow::Result<()> {
    let s = setup().await?;
    publish(&s.bus.js, &s.subject, Some("evt_panic"), b"panic").await?;
    let stop = CancellationToken::new();
    let runner = tokio::spawn(consumer::run(
        s.bus.js.clone(),
        s.pool.clone(),
        spec(&s),
        Arc::new(Poisoned::default()),
        stop.clone(),
    ));
    // Without shutdown being asked for: the runner must end by itself, with an error.
    let ended = tokio::time::timeout(Duration::from_secs(15), runner).await??;
    let err = ended.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("worker failed"), "{err}");
    assert!(!stop.is_cancelled());
    teardown(s).await
}

#[tokio::test]
async fn an_existing_consumer_with_bounded_redeliveries_is_made_unbounded() -> anyhow::Result<()> {
    let s = setup().await?;
    let spec = spec(&s);
    let durable = spec.durable_name.clone();
    // As an earlier version created it.
    s.bus
        .js
        .get_stream(&s.stream)
        .await?
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: s.subject.clone(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_deliver: 10,
            ..Default::default()
        })
        .await?;
    publish(&s.bus.js, &s.subject, Some("evt_fine"), b"fine").await?;
    let stop = CancellationToken::new();
    let runner = tokio::spawn(consumer::run(
        s.bus.js.clone(),
        s.pool.clone(),
        spec,
        Arc::new(Poisoned::default()),
        stop.clone(),
    ));
    settled(&s, &durable, 1).await?;
    let mut consumer: jetstream::consumer::PullConsumer = s
        .bus
        .js
        .get_stream(&s.stream)
        .await?
        .get_consumer(&durable)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(consumer.info().await?.config.max_deliver, -1);
    stop.cancel();
    runner.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    teardown(s).await
}

/// Refuses payload "bug" as permanently invalid until `fixed`; records `<name>:<event id>`.
struct Fixable {
    name: &'static str,
    fixed: std::sync::atomic::AtomicBool,
}

impl Handler for Fixable {
    async fn handle(&self, conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        if delivery.payload.as_ref() == b"bug" && !self.fixed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(HandlerError::Permanent("cannot handle this yet".into()));
        }
        sqlx::query("INSERT INTO applied (event_id, attempt) VALUES ($1, $2)")
            .bind(format!("{}:{}", self.name, delivery.event_id))
            .bind(delivery.attempt)
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_replayed_dead_letter_is_applied_once_where_it_failed_and_nowhere_else() -> anyhow::Result<()> {
    let s = setup().await?;
    publish(&s.bus.js, &s.subject, Some("evt_bug"), b"bug").await?;
    publish(&s.bus.js, &s.subject, Some("evt_fine"), b"fine").await?;
    // Two consumers of the stream: one could not handle the event, the other applied it.
    let failing = Arc::new(Fixable {
        name: "a",
        fixed: false.into(),
    });
    let healthy = Arc::new(Fixable {
        name: "b",
        fixed: true.into(),
    });
    let (spec_a, mut spec_b) = (spec(&s), spec(&s));
    spec_b.durable_name = format!("{}_B", s.stream);
    let (durable_a, durable_b) = (spec_a.durable_name.clone(), spec_b.durable_name.clone());
    let stop = CancellationToken::new();
    let runners = [
        tokio::spawn(consumer::run(
            s.bus.js.clone(),
            s.pool.clone(),
            spec_a,
            failing.clone(),
            stop.clone(),
        )),
        tokio::spawn(consumer::run(
            s.bus.js.clone(),
            s.pool.clone(),
            spec_b,
            healthy,
            stop.clone(),
        )),
    ];
    settled(&s, &durable_a, 2).await?;
    settled(&s, &durable_b, 2).await?;
    let waiting = amba_bus::dead_letters::list(&s.pool, None).await?;
    assert_eq!(
        waiting
            .iter()
            .map(|d| (d.consumer.as_str(), d.event_id.as_str()))
            .collect::<Vec<_>>(),
        vec![(durable_a.as_str(), "evt_bug")]
    );

    // The bug is fixed; the operator replays what consumer A gave up on.
    failing.fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    let replayed = amba_bus::dead_letters::replay(&s.pool, &s.bus.js, &durable_a, None).await?;
    assert_eq!(replayed, vec!["evt_bug".to_owned()]);
    settled(&s, &durable_a, 3).await?;
    settled(&s, &durable_b, 3).await?;
    let again = amba_bus::dead_letters::replay(&s.pool, &s.bus.js, &durable_a, None).await?;
    assert!(again.is_empty(), "a replayed letter is not replayed twice");
    assert!(amba_bus::dead_letters::list(&s.pool, None).await?.is_empty());
    stop.cancel();
    for runner in runners {
        runner.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let applied: Vec<String> = sqlx::query_scalar("SELECT event_id FROM applied ORDER BY event_id")
        .fetch_all(&s.pool)
        .await?;
    assert_eq!(applied, vec!["a:evt_bug", "a:evt_fine", "b:evt_bug", "b:evt_fine"]);
    teardown(s).await
}

/// Counts how many of its transactions are open at once, across every consumer it serves.
#[derive(Default)]
struct Overlap {
    open: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

impl Handler for Overlap {
    async fn handle(&self, conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        self.handle_batch(conn, &[delivery]).await
    }

    async fn handle_batch(&self, conn: &mut PgConnection, deliveries: &[&Delivery]) -> Result<(), HandlerError> {
        use std::sync::atomic::Ordering::SeqCst;
        let open = self.open.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(open, SeqCst);
        // Long enough that unbounded workers would overlap.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let ids: Vec<&str> = deliveries.iter().map(|d| d.event_id.as_str()).collect();
        let written = sqlx::query("INSERT INTO applied (event_id, attempt) SELECT UNNEST($1::text[]), 1")
            .bind(&ids)
            .execute(conn)
            .await;
        self.open.fetch_sub(1, SeqCst);
        written?;
        Ok(())
    }
}

#[tokio::test]
async fn consumers_sharing_a_budget_of_one_never_overlap_and_apply_everything() -> anyhow::Result<()> {
    let s = setup().await?;
    for i in 0..120 {
        publish(&s.bus.js, &s.subject, Some(&format!("evt_{i:03}")), b"x").await?;
    }
    let budget = consumer::Budget::new(1, 1);
    let overlap = Arc::new(Overlap::default());
    let stop = CancellationToken::new();
    let mut durables = Vec::new();
    let mut runners = Vec::new();
    for name in ["A", "B"] {
        let mut spec = spec(&s)
            .with_concurrency(4)
            .with_max_batch(8)
            .with_budget(budget.clone());
        spec.durable_name = format!("{}_{name}", s.stream);
        durables.push(spec.durable_name.clone());
        runners.push(tokio::spawn(consumer::run(
            s.bus.js.clone(),
            s.pool.clone(),
            spec,
            overlap.clone(),
            stop.clone(),
        )));
    }
    for durable in &durables {
        settled(&s, durable, 120).await?;
    }
    stop.cancel();
    for runner in runners {
        runner.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    // Eight workers, one transaction at a time: each event applied once per consumer.
    assert_eq!(overlap.most.load(std::sync::atomic::Ordering::SeqCst), 1);
    let applied: i64 = sqlx::query_scalar("SELECT count(DISTINCT event_id) FROM applied")
        .fetch_one(&s.pool)
        .await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM applied")
        .fetch_one(&s.pool)
        .await?;
    assert_eq!((applied, rows), (120, 240));
    teardown(s).await
}

#[tokio::test]
async fn without_a_budget_the_same_workers_overlap() -> anyhow::Result<()> {
    let s = setup().await?;
    for i in 0..120 {
        publish(&s.bus.js, &s.subject, Some(&format!("evt_{i:03}")), b"x").await?;
    }
    let overlap = Arc::new(Overlap::default());
    let stop = CancellationToken::new();
    let spec = spec(&s).with_concurrency(4).with_max_batch(8);
    let durable = spec.durable_name.clone();
    let runner = tokio::spawn(consumer::run(
        s.bus.js.clone(),
        s.pool.clone(),
        spec,
        overlap.clone(),
        stop.clone(),
    ));
    settled(&s, &durable, 120).await?;
    stop.cancel();
    runner.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    // The control: the budget test's bound is the budget's doing, not the setup's.
    assert!(overlap.most.load(std::sync::atomic::Ordering::SeqCst) > 1);
    teardown(s).await
}

/// Records each event it applies with the size of the group it came in.
struct Grouped;

impl Handler for Grouped {
    async fn handle(&self, conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        self.handle_batch(conn, &[delivery]).await
    }

    async fn handle_batch(&self, conn: &mut PgConnection, deliveries: &[&Delivery]) -> Result<(), HandlerError> {
        let ids: Vec<&str> = deliveries.iter().map(|d| d.event_id.as_str()).collect();
        sqlx::query("INSERT INTO applied (event_id, attempt) SELECT UNNEST($1::text[]), $2")
            .bind(&ids)
            .bind(deliveries.len() as i64)
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn an_event_applied_before_is_skipped_in_a_group_of_new_ones() -> anyhow::Result<()> {
    let s = setup().await?;
    // One worker that waits for more, so what is in the stream arrives as one group.
    let spec = || spec(&s).with_concurrency(1).with_linger(Duration::from_millis(300));
    let durable = spec().durable_name;
    let run_until_settled = |count: u64| {
        let (js, pool, spec) = (s.bus.js.clone(), s.pool.clone(), spec());
        let durable = durable.clone();
        let s = &s;
        async move {
            let stop = CancellationToken::new();
            let runner = tokio::spawn(consumer::run(js, pool, spec, Arc::new(Grouped), stop.clone()));
            settled(s, &durable, count).await?;
            stop.cancel();
            runner.await?.map_err(|e| anyhow::anyhow!("{e}"))
        }
    };
    publish(&s.bus.js, &s.subject, Some("evt_old"), b"x").await?;
    run_until_settled(1).await?;

    // Past the duplicate window the same id is stored again, as a republish after a crash is,
    // and lands in one group with two new events.
    eventually(Duration::from_secs(5), "duplicate window to pass", || {
        let js = s.bus.js.clone();
        let subject = s.subject.clone();
        async move { Ok((!publish(&js, &subject, Some("evt_old"), b"x").await?).then_some(())) }
    })
    .await?;
    publish(&s.bus.js, &s.subject, Some("evt_new_1"), b"x").await?;
    publish(&s.bus.js, &s.subject, Some("evt_new_2"), b"x").await?;
    run_until_settled(4).await?;

    let applied: Vec<(String, i64)> = sqlx::query_as("SELECT event_id, attempt FROM applied ORDER BY event_id")
        .fetch_all(&s.pool)
        .await?;
    assert_eq!(
        applied,
        vec![
            ("evt_new_1".to_owned(), 2),
            ("evt_new_2".to_owned(), 2),
            ("evt_old".to_owned(), 1)
        ],
        "the new events applied together, the known one not again"
    );
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&s.pool)
        .await?;
    assert_eq!(inbox, 3);
    teardown(s).await
}
