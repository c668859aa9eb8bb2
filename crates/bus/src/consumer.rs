//! The one JetStream consumer runner every service uses.
//!
//! For each message: read the event id (`Nats-Msg-Id`), record the id in the inbox — if it was
//! already there the event was applied before and is only acked — and run the handler, in the
//! same transaction; commit, then ack. A transient failure (the database away, a read-model gap
//! that the next events will fill) rolls the message back and naks it with backoff, for as long
//! as it takes: JetStream's `max_deliver` is unlimited, so nothing is ever dropped by retries.
//! An undecodable or permanently invalid message is recorded in `dead_letters` and terminated;
//! if even that record cannot be written, it is nak'd and tried again.
//!
//! A worker applies what it has queued in one transaction, so one commit (one fsync) serves
//! many: all at once (one inbox insert, one [`Handler::handle_batch`]), and if that fails, again
//! one message per transaction so only the bad message fails. The group's inbox insert is a plain
//! one, which a redelivered event fails; the group is then applied again skipping known ids.
//!
//! Work is spread over `concurrency` worker tasks. A handler may name a partition key (a
//! conversion, say): messages with the same key always go to the same worker and are
//! applied one after another, in stream order — a keyed actor, so writes for one key never
//! contend. On shutdown no new message is pulled; workers finish and ack what they hold.

pub use crate::budget::Budget;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use sqlx::{PgConnection, PgPool};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// What a handler sees of a message.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event_id: String,
    pub subject: String,
    pub payload: bytes::Bytes,
    pub traceparent: String,
    /// 1 on first delivery.
    pub attempt: i64,
}

impl Delivery {
    /// The event's domain and type from its subject (`("conversion", "approved")`); empty
    /// strings for a subject that is not an event's.
    pub fn event(&self) -> (&str, &str) {
        crate::Namespace::parse_event(&self.subject).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying later (database or downstream briefly unavailable).
    #[error("transient: {0}")]
    Retry(#[source] anyhow::Error),
    /// Retrying cannot help (undecodable, violates an invariant): dead-letter it.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl From<sqlx::Error> for HandlerError {
    fn from(err: sqlx::Error) -> Self {
        HandlerError::Retry(err.into())
    }
}

impl From<prost::DecodeError> for HandlerError {
    fn from(err: prost::DecodeError) -> Self {
        HandlerError::Permanent(format!("undecodable payload: {err}"))
    }
}

/// Applies one event inside the runner's transaction. Must not commit or ack itself.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        conn: &mut PgConnection,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Applies several new messages, in stream order, as one unit: a handler that can book them
    /// together (one statement per table instead of one per message) overrides this. Any error
    /// fails them all; the runner then applies each message on its own, so a bad message still
    /// fails alone. Default: [`Handler::handle`] for each.
    fn handle_batch(
        &self,
        conn: &mut PgConnection,
        deliveries: &[&Delivery],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async move {
            for delivery in deliveries {
                let span = tracing::info_span!("consume", subject = %delivery.subject, event_id = %delivery.event_id, attempt = delivery.attempt);
                amba_telemetry::set_remote_parent(&span, &delivery.traceparent);
                self.handle(&mut *conn, delivery).instrument(span).await?;
            }
            Ok(())
        }
    }

    /// Messages with the same key are applied sequentially by one worker. `None` (the default):
    /// any worker.
    fn partition_key(&self, _delivery: &Delivery) -> Option<String> {
        None
    }
}

/// Where a consumer reads from and how hard it tries.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: String,
    pub durable_name: String,
    /// The subjects it reads (`<ns>.evt.program.>`); none for the whole stream. One filter is
    /// declared as `filter_subject`, which NATS 2.9 knows; several as `filter_subjects` (NATS ≥
    /// 2.10; 2.9 ignores it and delivers the whole stream, so such a handler checks subjects).
    pub filters: Vec<String>,
    pub ack_wait: Duration,
    pub concurrency: usize,
    /// Most messages one worker applies in one transaction (and queues ahead).
    pub max_batch: usize,
    /// How long a worker holding fewer than `max_batch` messages waits for more before applying
    /// them (zero: at once). Background consumers linger so that, under load, they commit a
    /// few large groups instead of many small ones and leave the cores to ingest.
    pub linger: Duration,
    /// Shared with the other work that can wait, in a process that also takes reports: a group's
    /// transaction starts only when the budget gives it a turn (see [`Budget`]).
    pub budget: Option<Budget>,
}

impl ConsumerSpec {
    /// Reads `filter_subject` of `stream` (an empty one: the whole stream).
    pub fn new(stream: String, durable_name: String, filter_subject: String) -> Self {
        ConsumerSpec {
            stream,
            durable_name,
            filters: if filter_subject.is_empty() {
                Vec::new()
            } else {
                vec![filter_subject]
            },
            ack_wait: Duration::from_secs(30),
            concurrency: 16,
            max_batch: 64,
            linger: Duration::ZERO,
            budget: None,
        }
    }

    /// Lets each worker wait up to `linger` for its group to fill before applying it.
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Lets each worker apply up to `max_batch` messages per transaction (for handlers that book
    /// a batch at once).
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// Applies each group only when `budget` has room.
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Runs `concurrency` workers.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Reads only `subjects` of the stream (more than one needs NATS ≥ 2.10).
    pub fn with_filters(mut self, subjects: Vec<String>) -> Self {
        self.filters = subjects;
        self
    }

    /// The durable pull consumer this spec declares.
    pub fn config(&self) -> pull::Config {
        let (filter_subject, filter_subjects) = match self.filters.as_slice() {
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        pull::Config {
            durable_name: Some(self.durable_name.clone()),
            filter_subject,
            filter_subjects,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            // Unlimited: a message is settled by us (applied, or dead-lettered once its
            // failure is known to be permanent), never dropped by a redelivery count.
            max_deliver: -1,
            ack_wait: self.ack_wait,
            // Room for every worker's queue and the group it is applying.
            max_ack_pending: i64::try_from(self.concurrency.max(1) * self.max_batch * 2).unwrap_or(i64::MAX),
            ..Default::default()
        }
    }
}

/// Creates the durable consumer, or updates it to `spec` (`amba migrate`, whose NATS user may).
pub async fn declare(js: &jetstream::Context, spec: &ConsumerSpec) -> Result<(), async_nats::Error> {
    js.create_consumer_on_stream(spec.config(), &spec.stream).await?;
    Ok(())
}

/// How long [`run`] waits for a durable consumer it may not create itself to be declared.
const DECLARED_WAIT: Duration = Duration::from_secs(60);

/// The durable consumer of `spec`. It is looked up first (`$JS.API.CONSUMER.INFO`) and created or
/// updated only when missing or different, so a service whose NATS user may not declare
/// consumers binds to the one `amba migrate` declared. One that differs and cannot be updated is
/// used as it is, with a warning (the release's `amba migrate` updates it); one that is missing
/// and cannot be created is waited for, up to a minute.
async fn bind(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<jetstream::consumer::PullConsumer, async_nats::Error> {
    let wanted = spec.config();
    let deadline = tokio::time::Instant::now() + DECLARED_WAIT;
    let mut pause = Duration::from_millis(200);
    loop {
        let existing = match js
            .get_consumer_from_stream::<pull::Config, _, _>(&spec.durable_name, &spec.stream)
            .await
        {
            Ok(consumer) if same_consumer(&consumer.cached_info().config, &wanted) => return Ok(consumer),
            Ok(consumer) => Some(consumer),
            Err(_) => None,
        };
        let err = match js.create_consumer_on_stream(wanted.clone(), &spec.stream).await {
            Ok(consumer) => return Ok(consumer),
            Err(err) => err,
        };
        if let Some(consumer) = existing {
            tracing::warn!(consumer = %spec.durable_name, error = %err,
                "the durable consumer differs from this version's and could not be updated (`amba migrate` updates it); using it as it is");
            return Ok(consumer);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "durable consumer {} on stream {} does not exist and could not be created: {err} \
                 (`amba migrate` declares it)",
                spec.durable_name, spec.stream
            )
            .into());
        }
        tracing::warn!(consumer = %spec.durable_name, error = %err,
            "durable consumer not declared yet (`amba migrate` declares it); retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// How long a pull request waits on the server, and how often the server says it still waits
/// while it has nothing to send. Two heartbeats missed mean the request is gone (its consumer's
/// leader moved to another server, say), so a new one is sent: within two seconds, not when the
/// lost one would have expired.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);

/// A stream of the consumer's messages: one pull request out at a time, renewed as it fills.
async fn open_stream(
    consumer: &jetstream::consumer::PullConsumer,
    spec: &ConsumerSpec,
) -> Result<pull::Stream, async_nats::Error> {
    Ok(consumer
        .stream()
        .max_messages_per_batch(spec.max_batch.clamp(200, 1_000))
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await?)
}

/// Whether the message stream lives on after `err`. Otherwise it ended (its consumer deleted,
/// say), and the service stops rather than run without it.
fn stream_goes_on(err: &pull::MessagesError) -> bool {
    !matches!(
        err.kind(),
        pull::MessagesErrorKind::ConsumerDeleted
            | pull::MessagesErrorKind::PushBasedConsumer
            | pull::MessagesErrorKind::RequestLimitExceeded
    )
}

/// Whether a durable consumer as the server has it is the one declared (what
/// [`ConsumerSpec::config`] sets; the server fills in the rest).
fn same_consumer(have: &jetstream::consumer::Config, want: &pull::Config) -> bool {
    have.deliver_subject.is_none()
        && have.filter_subject == want.filter_subject
        && have.filter_subjects == want.filter_subjects
        && have.ack_policy == want.ack_policy
        && have.max_deliver == want.max_deliver
        && have.ack_wait == want.ack_wait
        && have.max_ack_pending == want.max_ack_pending
}

/// Backoff for the n-th failed attempt: 100 ms doubling, capped at 30 s.
pub fn retry_delay(attempt: i64) -> Duration {
    let exponent = u32::try_from(attempt.clamp(1, 16) - 1).unwrap_or(0);
    Duration::from_millis(100u64.saturating_mul(1 << exponent)).min(Duration::from_secs(30))
}

/// Binds the durable consumer (declaring it when missing or different, where allowed: see
/// [`bind`]) and processes messages until `shutdown`.
pub async fn run<H: Handler>(
    js: jetstream::Context,
    pool: PgPool,
    spec: ConsumerSpec,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), async_nats::Error> {
    // An older version's durable (a bounded `max_deliver`, say) is updated to this one here.
    // Boxed: the lookups' state would otherwise sit inside every service's consumer futures.
    let consumer = Box::pin(bind(&js, &spec)).await?;
    let mut messages = open_stream(&consumer, &spec).await?;
    let spec = Arc::new(spec);
    let meters = Arc::new(Meters::new(&spec.durable_name));

    let workers_count = spec.concurrency.max(1);
    let mut workers = JoinSet::new();
    let mut queues = Vec::with_capacity(workers_count);
    for _ in 0..workers_count {
        let (queue, mut inbox) = mpsc::channel::<(jetstream::Message, Delivery)>(spec.max_batch);
        queues.push(queue);
        let (pool, spec, handler, meters) = (pool.clone(), spec.clone(), handler.clone(), meters.clone());
        workers.spawn(async move {
            while let Some(first) = inbox.recv().await {
                let mut group = vec![first];
                fill(&mut group, &mut inbox, spec.max_batch, spec.linger).await;
                let turn = match &spec.budget {
                    Some(budget) => {
                        let waited = std::time::Instant::now();
                        let turn = Some(budget.turn(oldest_age(&group)).await);
                        meters.budget_wait.record(waited.elapsed().as_secs_f64());
                        // What arrived while it waited joins the group: a longer wait, a bigger group.
                        fill(&mut group, &mut inbox, spec.max_batch, Duration::ZERO).await;
                        turn
                    }
                    None => None,
                };
                settle_group(&pool, &spec, &meters, handler.as_ref(), group, turn).await;
            }
        });
    }

    let mut round_robin = 0usize;
    let mut stopped = None;
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            next = messages.next() => match next {
                Some(Ok(message)) => message,
                Some(Err(err)) => {
                    let goes_on = stream_goes_on(&err);
                    if goes_on {
                        tracing::warn!(consumer = %spec.durable_name, error = %err, "pull failed; pulling afresh");
                    } else {
                        tracing::warn!(consumer = %spec.durable_name, error = %err, "pull failed; the message stream ends");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    // The stream's own state can no longer be trusted to ask for more (a pull
                    // request it counts on may be gone), so a new one asks now. What the old
                    // one was sent and never acked is redelivered after `ack_wait`.
                    if goes_on {
                        match open_stream(&consumer, &spec).await {
                            Ok(fresh) => messages = fresh,
                            Err(err) => tracing::warn!(consumer = %spec.durable_name, error = %err, "pulling afresh failed; retrying"),
                        }
                    }
                    continue;
                }
                None => break,
            },
            // Workers only end when their queue closes: one ending now died (a panic). Stop
            // pulling (what it held is redelivered after ack_wait) and fail, so the service
            // stops instead of running half-alive.
            Some(joined) = workers.join_next() => {
                stopped = Some(match joined {
                    Err(err) => format!("a worker failed: {err}"),
                    Ok(()) => "a worker stopped".to_owned(),
                });
                break;
            }
        };
        let delivery = delivery_of(&message);
        let index = match handler.partition_key(&delivery) {
            Some(key) => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut hasher);
                usize::try_from(hasher.finish() % workers_count as u64).unwrap_or(0)
            }
            None => {
                round_robin = (round_robin + 1) % workers_count;
                round_robin
            }
        };
        if queues[index].send((message, delivery)).await.is_err() {
            stopped = Some("a worker stopped".to_owned());
            break;
        }
    }
    drop(queues);
    while let Some(joined) = workers.join_next().await {
        if let Err(err) = joined {
            stopped = Some(format!("a worker failed: {err}"));
        }
    }
    if stopped.is_none() && !shutdown.is_cancelled() {
        stopped = Some("the message stream ended".to_owned());
    }
    match stopped {
        Some(reason) => Err(format!("consumer {} stopped: {reason}", spec.durable_name).into()),
        None => Ok(()),
    }
}

/// How long ago the group's oldest event was made (its id tells).
fn oldest_age(group: &[(jetstream::Message, Delivery)]) -> Duration {
    group
        .iter()
        .filter_map(|(_, delivery)| amba_core::id::created_at_millis(&delivery.event_id))
        .min()
        .and_then(|made| Duration::try_from_secs_f64(amba_telemetry::metrics::seconds_since_millis(made)).ok())
        .unwrap_or(Duration::MAX)
}

/// Adds to `group` what follows in `inbox`, up to `max_batch`: what is queued now, then what
/// arrives within `linger` from now.
async fn fill<T>(group: &mut Vec<T>, inbox: &mut mpsc::Receiver<T>, max_batch: usize, linger: Duration) {
    let deadline = tokio::time::Instant::now() + linger;
    while group.len() < max_batch {
        match inbox.try_recv() {
            Ok(next) => group.push(next),
            Err(mpsc::error::TryRecvError::Empty) if !linger.is_zero() => {
                match tokio::time::timeout_at(deadline, inbox.recv()).await {
                    Ok(Some(next)) => group.push(next),
                    Ok(None) | Err(_) => break,
                }
            }
            Err(_) => break,
        }
    }
}

/// The header a replayed dead letter carries its original event id in (its `Nats-Msg-Id` is new,
/// so that JetStream stores it again): see [`crate::dead_letters`].
pub const EVENT_ID_HEADER: &str = "Amba-Event-Id";

fn delivery_of(message: &jetstream::Message) -> Delivery {
    let headers = message.headers.as_ref();
    let event_id = headers
        .and_then(|h| h.get(EVENT_ID_HEADER))
        .or_else(|| headers.and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID)))
        .map(|v| v.as_str().to_owned());
    Delivery {
        event_id: event_id.unwrap_or_else(|| {
            // Still dead-lettered under a unique key so an operator can find it.
            format!(
                "missing-id:{}",
                message.info().map(|i| i.stream_sequence).unwrap_or_default()
            )
        }),
        subject: message.subject.to_string(),
        payload: message.payload.clone(),
        traceparent: amba_telemetry::traceparent_from_nats(message.headers.as_ref()),
        attempt: message.info().map(|i| i.delivered).unwrap_or(1),
    }
}

/// A consumer's metric handles, made once: `amba_events_consumed_total{consumer, result}`,
/// `amba_event_consume_lag_seconds{consumer}` and `amba_consumer_group_seconds{consumer}`.
struct Meters {
    applied: amba_telemetry::metrics::Counter,
    retried: amba_telemetry::metrics::Counter,
    dead_lettered: amba_telemetry::metrics::Counter,
    lag: amba_telemetry::metrics::Histogram,
    group: amba_telemetry::metrics::Histogram,
    budget_wait: amba_telemetry::metrics::Histogram,
}

impl Meters {
    fn new(consumer: &str) -> Meters {
        let consumed = |result: &'static str| amba_telemetry::metrics::counter!("amba_events_consumed_total", "consumer" => consumer.to_owned(), "result" => result);
        Meters {
            applied: consumed("applied"),
            retried: consumed("retried"),
            dead_lettered: consumed("dead_lettered"),
            lag: amba_telemetry::metrics::histogram!("amba_event_consume_lag_seconds", "consumer" => consumer.to_owned()),
            group: amba_telemetry::metrics::histogram!("amba_consumer_group_seconds", "consumer" => consumer.to_owned()),
            budget_wait: amba_telemetry::metrics::histogram!("amba_consumer_budget_wait_seconds", "consumer" => consumer.to_owned()),
        }
    }
}

/// Applies what a worker has queued (in order) in ONE transaction when it can (one commit for
/// all), else one message per transaction; then each is acked, nak'd or dead-lettered on its own.
/// One fsync per group instead of per message is what lets consumers keep up with the hot path.
async fn settle_group<H: Handler>(
    pool: &PgPool,
    spec: &ConsumerSpec,
    meters: &Meters,
    handler: &H,
    group: Vec<(jetstream::Message, Delivery)>,
    turn: Option<crate::budget::Turn>,
) {
    let started = std::time::Instant::now();
    let applied = apply_group(pool, &spec.durable_name, handler, &group).await;
    drop(turn);
    // One group's transaction: its handlers and its commit.
    meters.group.record(started.elapsed().as_secs_f64());
    let outcomes = match applied {
        Ok(outcomes) => outcomes,
        Err(err) => {
            // Nothing of the group was committed; every message is tried again.
            tracing::warn!(consumer = %spec.durable_name, error = %err, "consumer transaction failed");
            group
                .iter()
                .map(|_| Err(HandlerError::Retry(anyhow::anyhow!("transaction failed: {err}"))))
                .collect()
        }
    };
    let settles = group
        .into_iter()
        .zip(outcomes)
        .map(|((message, delivery), outcome)| settle(pool, spec, meters, message, delivery, outcome));
    futures::future::join_all(settles).await;
}

async fn apply_group<H: Handler>(
    pool: &PgPool,
    consumer: &str,
    handler: &H,
    group: &[(jetstream::Message, Delivery)],
) -> Result<Vec<Result<(), HandlerError>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut all_at_once = apply_all_at_once(&mut tx, consumer, handler, group, Inbox::AllNew).await?;
    if all_at_once == AllAtOnce::SeenBefore {
        // Some event of the group was applied before (a redelivery): again, skipping those.
        tx.rollback().await?;
        tx = pool.begin().await?;
        all_at_once = apply_all_at_once(&mut tx, consumer, handler, group, Inbox::SkipKnown).await?;
    }
    if all_at_once == AllAtOnce::Applied {
        tx.commit().await?;
        return Ok(group.iter().map(|_| Ok(())).collect());
    }
    // One message per transaction, so a transaction never holds one message's row locks while
    // it takes the next one's: rows shared with other workers are locked in each batch's key
    // order, and holding several messages' locks in stream order could wait in a circle.
    tx.rollback().await?;
    let mut outcomes = Vec::with_capacity(group.len());
    for (_, delivery) in group {
        if delivery.event_id.starts_with("missing-id:") {
            outcomes.push(Err(HandlerError::Permanent("message has no Nats-Msg-Id".into())));
            continue;
        }
        let span = tracing::info_span!("consume", %consumer, subject = %delivery.subject, event_id = %delivery.event_id, attempt = delivery.attempt);
        amba_telemetry::set_remote_parent(&span, &delivery.traceparent);
        let mut tx = pool.begin().await?;
        let outcome = apply(&mut tx, consumer, handler, delivery).instrument(span).await;
        if outcome.is_ok() {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// How a group's events are recorded in the inbox.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Inbox {
    /// A plain insert, which a known event id fails: about half the cost per row of one that
    /// skips known ids, and redeliveries are rare.
    AllNew,
    /// `ON CONFLICT DO NOTHING`: known ids are skipped and their events not applied again.
    SkipKnown,
}

/// What became of applying a group all at once.
#[derive(Debug, PartialEq)]
enum AllAtOnce {
    Applied,
    /// An event id was in the inbox already (only with [`Inbox::AllNew`]); nothing was applied.
    SeenBefore,
    /// A handler failed: the group is applied one message at a time, so a bad one fails alone.
    OneAtATime,
}

/// The common case first: every message of the group applies, with one inbox insert and one
/// [`Handler::handle_batch`] for the whole group. Anything but `Applied`: the caller rolls the
/// transaction back.
async fn apply_all_at_once<H: Handler>(
    tx: &mut PgConnection,
    consumer: &str,
    handler: &H,
    group: &[(jetstream::Message, Delivery)],
    inbox: Inbox,
) -> Result<AllAtOnce, sqlx::Error> {
    if group.len() < 2 || group.iter().any(|(_, d)| d.event_id.starts_with("missing-id:")) {
        return Ok(AllAtOnce::OneAtATime);
    }
    // One inbox row per event id: a repeat inside the group is applied once, like a redelivery.
    let mut repeated = std::collections::HashSet::new();
    let once: Vec<&Delivery> = group
        .iter()
        .map(|(_, delivery)| delivery)
        .filter(|d| repeated.insert(d.event_id.as_str()))
        .collect();
    let ids: Vec<&str> = once.iter().map(|d| d.event_id.as_str()).collect();
    let subjects: Vec<&str> = once.iter().map(|d| d.subject.as_str()).collect();
    let insert = match inbox {
        Inbox::AllNew => {
            "INSERT INTO inbox (consumer, event_id, subject) SELECT $1, * FROM UNNEST($2::text[], $3::text[])"
        }
        Inbox::SkipKnown => {
            "INSERT INTO inbox (consumer, event_id, subject) SELECT $1, * FROM UNNEST($2::text[], $3::text[]) \
             ON CONFLICT DO NOTHING RETURNING event_id"
        }
    };
    let returned: Result<Vec<String>, sqlx::Error> = sqlx::query_scalar(insert)
        .bind(consumer)
        .bind(&ids)
        .bind(&subjects)
        .fetch_all(&mut *tx)
        .await;
    let new: Vec<&Delivery> = match (inbox, returned) {
        (Inbox::AllNew, Ok(_)) => once,
        (Inbox::SkipKnown, Ok(fresh)) => {
            let fresh: std::collections::HashSet<String> = fresh.into_iter().collect();
            once.into_iter().filter(|d| fresh.contains(&d.event_id)).collect()
        }
        (Inbox::AllNew, Err(sqlx::Error::Database(db))) if db.kind() == sqlx::error::ErrorKind::UniqueViolation => {
            return Ok(AllAtOnce::SeenBefore);
        }
        (_, Err(err)) => return Err(err),
    };
    let span = tracing::info_span!("consume_batch", %consumer, messages = new.len());
    if let Err(err) = handler.handle_batch(&mut *tx, &new).instrument(span).await {
        tracing::debug!(%consumer, error = %err, "batch failed; applying its messages one at a time");
        return Ok(AllAtOnce::OneAtATime);
    }
    Ok(AllAtOnce::Applied)
}

/// Acks a committed message, naks a transient failure, dead-letters and terminates the rest.
async fn settle(
    pool: &PgPool,
    spec: &ConsumerSpec,
    meters: &Meters,
    message: jetstream::Message,
    delivery: Delivery,
    outcome: Result<(), HandlerError>,
) {
    let attempt = delivery.attempt;
    let ack = match outcome {
        Ok(()) => {
            meters.applied.increment(1);
            // Lag once per event: from its creation to the commit that applied it.
            if let Some(made) = amba_core::id::created_at_millis(&delivery.event_id) {
                meters.lag.record(amba_telemetry::metrics::seconds_since_millis(made));
            }
            // A plain ack: should it be lost, the redelivery finds the inbox row and is only acked.
            message.ack().await
        }
        Err(HandlerError::Retry(err)) => {
            meters.retried.increment(1);
            tracing::warn!(consumer = %spec.durable_name, event_id = %delivery.event_id, attempt, error = %err, "handler failed; will retry");
            message.ack_with(AckKind::Nak(Some(retry_delay(attempt)))).await
        }
        Err(err) => {
            tracing::error!(consumer = %spec.durable_name, event_id = %delivery.event_id, error = %err, "giving up on message; dead-lettered");
            if let Err(db) = dead_letter(pool, &spec.durable_name, &delivery, &err.to_string()).await {
                // Not recorded, so not terminated: redelivered later, and recorded then.
                tracing::error!(error = %db, "could not record dead letter; will retry");
                meters.retried.increment(1);
                message.ack_with(AckKind::Nak(Some(retry_delay(attempt)))).await
            } else {
                meters.dead_lettered.increment(1);
                message.ack_with(AckKind::Term).await
            }
        }
    };
    if let Err(err) = ack {
        // The effects are committed; a redelivery will find the inbox row and only ack.
        tracing::warn!(error = %err, "ack failed");
    }
}

/// Inbox row and handler effects, inside the group's transaction. A known event id changes nothing.
async fn apply<H: Handler>(
    conn: &mut PgConnection,
    consumer: &str,
    handler: &H,
    delivery: &Delivery,
) -> Result<(), HandlerError> {
    let inserted =
        sqlx::query("INSERT INTO inbox (consumer, event_id, subject) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(consumer)
            .bind(&delivery.event_id)
            .bind(&delivery.subject)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    if inserted == 0 {
        tracing::debug!("duplicate delivery; already applied");
        return Ok(());
    }
    handler.handle(conn, delivery).await
}

async fn dead_letter(pool: &PgPool, consumer: &str, delivery: &Delivery, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dead_letters (consumer, event_id, subject, payload, error, deliveries) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (consumer, event_id) DO UPDATE SET error = EXCLUDED.error, \
         deliveries = EXCLUDED.deliveries, recorded_at = now(), replayed_at = NULL",
    )
    .bind(consumer)
    .bind(&delivery.event_id)
    .bind(&delivery.subject)
    .bind(delivery.payload.as_ref())
    .bind(error)
    .bind(delivery.attempt)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_and_caps() {
        assert_eq!(retry_delay(1), Duration::from_millis(100));
        assert_eq!(retry_delay(2), Duration::from_millis(200));
        assert_eq!(retry_delay(4), Duration::from_millis(800));
        assert_eq!(retry_delay(50), Duration::from_secs(30));
        assert_eq!(retry_delay(0), Duration::from_millis(100));
    }

    /// `first` and what [`fill`] adds to it.
    async fn gather<T>(first: T, inbox: &mut mpsc::Receiver<T>, max_batch: usize, linger: Duration) -> Vec<T> {
        let mut group = vec![first];
        fill(&mut group, inbox, max_batch, linger).await;
        group
    }

    #[tokio::test]
    async fn a_group_takes_what_is_queued_and_lingers_only_when_asked() -> anyhow::Result<()> {
        let (queue, mut inbox) = mpsc::channel(16);
        for i in 1..=3 {
            queue.send(i).await?;
        }
        assert_eq!(gather(0, &mut inbox, 10, Duration::ZERO).await, vec![0, 1, 2, 3]);

        // Within the linger, late arrivals join the group; the group stops at max_batch.
        let late = queue.clone();
        tokio::spawn(async move {
            for i in 1..=5 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let _ = late.send(i).await;
            }
        });
        assert_eq!(gather(0, &mut inbox, 4, Duration::from_secs(5)).await, vec![0, 1, 2, 3]);
        // The linger ends the wait for a group that does not fill.
        let started = std::time::Instant::now();
        let rest = gather(0, &mut inbox, 100, Duration::from_millis(200)).await;
        assert_eq!(rest, vec![0, 4, 5]);
        assert!(started.elapsed() >= Duration::from_millis(200));
        Ok(())
    }
}
