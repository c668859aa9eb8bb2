//! The report path's group commit.
//!
//! Reports are routed by their natural key `(program_id, project_id, external_id)` to one of a
//! few writer actors. Each actor takes everything queued (up to `MAX_BATCH`), decides it with a
//! handful of bulk lookups run side by side, and writes the conversions, customer bindings and
//! outbox events in ONE statement and ONE commit (with the tier counters, in one transaction,
//! when the batch counts volume), then answers every caller. Under load a
//! batch forms while the previous one commits; when idle a report is written alone at once.
//! One key always meets the same actor, so concurrent repeats of a key are serialized and the
//! second one sees the first's outcome (`duplicate: true`). Across replicas the key's unique
//! index decides: a writer whose write fails on a key another replica committed after its
//! lookup has written nothing; it decides the batch again, and then answers that key as a
//! duplicate of the winner (docs/scaling.md).

use super::accrue::{self, Approval, RuleCache};
use crate::domain::fraud::{self, DisposableDomains};
use crate::domain::fx::{self, FxTrail};
use crate::domain::report::ProgramFacts;
use crate::domain::report::{self, Binding, CodeState, Decision, Facts, Report, Status};
use crate::domain::trail::Trail;
use crate::store::conversions::FraudQuery;
use crate::store::conversions::{ConversionRow, Key};
use crate::store::fx::RateQuery;
use crate::store::{self, read_model::TouchpointQuery};
use amba_bus::Namespace;
use amba_bus::events::{OutboxEvent, new_meta, new_meta_in_trace};
use amba_bus::outbox::RelayWaker;
use amba_core::ApiError;
use amba_core::Currency;
use amba_core::id::ConversionId;
use amba_proto::wire as pb;
use amba_telemetry::metrics::Stages;
use chrono::Utc;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// How long an address an org called from counts as the org's own, for self-referral.
const CALLER_MEMORY_DAYS: i64 = 30;

/// Largest batch one commit takes.
const MAX_BATCH: usize = 1_000;

/// How often a batch that lost a key to another replica's writer is decided again.
const RACE_RETRIES: usize = 8;

type Reply = Result<pb::ReportConversionReply, ApiError>;

/// A report as the writers take it: who reports it, and the trace its event continues.
pub struct Submission {
    pub report: Report,
    pub caller_org_id: String,
    pub traceparent: String,
}

struct Job {
    submission: Submission,
    reply: oneshot::Sender<Reply>,
    queued: std::time::Instant,
}

/// Handle to the writer actors. Cheap to clone.
#[derive(Clone)]
pub struct Writers {
    shards: Arc<Vec<mpsc::Sender<Job>>>,
}

/// What the writers share.
pub struct WriterDeps {
    pub pool: PgPool,
    pub ns: Namespace,
    pub waker: RelayWaker,
    /// Told of every batch, when work that can wait shares the process (`amba dev`): it then
    /// holds back until ingest is quiet.
    pub ingest: Option<amba_bus::budget::Ingest>,
    pub rules: Arc<RuleCache>,
    pub disposable: Arc<DisposableDomains>,
}

impl Writers {
    /// Starts `shards` actors. They stop when every `Writers` handle is dropped, after
    /// finishing what was queued.
    pub fn start(deps: WriterDeps, shards: usize) -> (Writers, tokio::task::JoinSet<()>) {
        let deps = Arc::new(deps);
        let mut tasks = tokio::task::JoinSet::new();
        let mut senders = Vec::with_capacity(shards);
        for _ in 0..shards.max(1) {
            let (sender, receiver) = mpsc::channel(4 * MAX_BATCH);
            senders.push(sender);
            tasks.spawn(run(receiver, deps.clone()));
        }
        (
            Writers {
                shards: Arc::new(senders),
            },
            tasks,
        )
    }

    /// Records one report (or finds its earlier outcome).
    pub async fn submit(&self, submission: Submission) -> Reply {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key_of(&submission.report).hash(&mut hasher);
        let shard = usize::try_from(hasher.finish() % self.shards.len() as u64).unwrap_or(0);
        let (reply, answer) = oneshot::channel();
        self.shards[shard]
            .send(Job {
                submission,
                reply,
                queued: std::time::Instant::now(),
            })
            .await
            .map_err(|_| ApiError::unavailable("attribution is shutting down"))?;
        answer
            .await
            .map_err(|_| ApiError::unavailable("attribution is shutting down"))?
    }
}

/// A writer's own connections, kept from one cycle to the next: one that writes, and three on
/// which the batch's lookups run at the same time (they read committed rows, all a transaction
/// would show them too). A cycle then waits on two round trips — the lookups, then the one
/// statement that writes and commits — not on eight one after another, and never on a trip to
/// the pool and its health check. After any error they go back to the pool (which checks them
/// before lending them again) and the next cycle takes fresh ones.
struct Held {
    pool: PgPool,
    writing: Option<PoolConnection<Postgres>>,
    reading: [Option<PoolConnection<Postgres>>; 3],
}

impl Held {
    fn new(pool: PgPool) -> Held {
        Held {
            pool,
            writing: None,
            reading: [None, None, None],
        }
    }

    async fn connections(&mut self) -> Result<(&mut PgConnection, [&mut PgConnection; 3]), sqlx::Error> {
        let Held { pool, writing, reading } = self;
        let writing = take_or_acquire(pool, writing).await?;
        let [a, b, c] = reading;
        let reading = [
            take_or_acquire(pool, a).await?,
            take_or_acquire(pool, b).await?,
            take_or_acquire(pool, c).await?,
        ];
        Ok((writing, reading))
    }

    fn release(&mut self) {
        self.writing = None;
        self.reading = [None, None, None];
    }
}

async fn take_or_acquire<'a>(
    pool: &PgPool,
    held: &'a mut Option<PoolConnection<Postgres>>,
) -> Result<&'a mut PgConnection, sqlx::Error> {
    if held.is_none() {
        *held = Some(pool.acquire().await?);
    }
    match held {
        Some(conn) => Ok(&mut **conn),
        None => Err(sqlx::Error::PoolClosed),
    }
}

async fn run(mut receiver: mpsc::Receiver<Job>, deps: Arc<WriterDeps>) {
    // From a report handed to its writer to its batch starting: time spent behind earlier commits.
    let queue_wait = amba_telemetry::metrics::histogram!("amba_writer_queue_seconds");
    let mut held = Held::new(deps.pool.clone());
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        for job in &batch {
            queue_wait.record(job.queued.elapsed().as_secs_f64());
        }
        let writing = deps.ingest.as_ref().map(amba_bus::budget::Ingest::writing);
        write_batch(&deps, &mut held, batch).await;
        drop(writing);
    }
}

async fn write_batch(deps: &WriterDeps, held: &mut Held, jobs: Vec<Job>) {
    let (reports, replies): (Vec<Submission>, Vec<oneshot::Sender<Reply>>) =
        jobs.into_iter().map(|j| (j.submission, j.reply)).unzip();
    let started = std::time::Instant::now();
    amba_telemetry::metrics::histogram!("amba_writer_batch_size").record(reports.len() as f64);
    let outcomes = write_isolating_failures(deps, held, &reports).await;
    amba_telemetry::metrics::histogram!("amba_writer_batch_seconds").record(started.elapsed().as_secs_f64());
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        // A caller that gave up is fine: its report is committed and a retry finds it.
        let _ = reply.send(outcome);
    }
}

/// Writes `reports` in one transaction; if that fails, writes each half on its own, down to
/// single reports, so a report the database refuses fails alone and every other caller's report
/// in the batch is still recorded (a handful of extra transactions per bad report, not a
/// failed group commit).
fn write_isolating_failures<'a>(
    deps: &'a WriterDeps,
    held: &'a mut Held,
    reports: &'a [Submission],
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Reply>> + Send + 'a>> {
    Box::pin(async move {
        let mut attempt = decide_and_write(deps, held, reports).await;
        // Replicas race on a key only when its callers repeat it at the same moment; each
        // retry sees every winner so far, so a few attempts settle any such batch.
        for _ in 0..RACE_RETRIES {
            if !matches!(attempt, Err(BatchError::Raced)) {
                break;
            }
            amba_telemetry::metrics::counter!("amba_writer_races_total").increment(1);
            attempt = decide_and_write(deps, held, reports).await;
        }
        if matches!(attempt, Err(BatchError::Database(_) | BatchError::Accrue(_))) {
            held.release();
        }
        match attempt {
            Ok(outcomes) => outcomes,
            // Only a report can be at fault for a data (22) or integrity (23) error; an
            // unavailable database fails the whole batch, which its callers retry.
            Err(err) if reports.len() > 1 && is_data_error(&err) => {
                tracing::warn!(error = %err, batch = reports.len(), "report batch failed; retrying its halves apart");
                let (left, right) = reports.split_at(reports.len() / 2);
                let mut outcomes = write_isolating_failures(deps, held, left).await;
                outcomes.extend(write_isolating_failures(deps, held, right).await);
                outcomes
            }
            Err(err) => {
                let refused = refusal(&err);
                reports.iter().map(|_| Err(refused.clone())).collect()
            }
        }
    })
}

/// Where a batch is written: in a transaction when pricing locked tier counters, else by its one
/// statement alone (which commits it).
enum Write<'c> {
    InTransaction(sqlx::Transaction<'c, Postgres>),
    Alone(&'c mut PgConnection),
}

impl Write<'_> {
    fn conn(&mut self) -> &mut PgConnection {
        match self {
            Write::InTransaction(tx) => tx,
            Write::Alone(conn) => conn,
        }
    }

    async fn finish(self) -> Result<(), sqlx::Error> {
        match self {
            Write::InTransaction(tx) => tx.commit().await,
            Write::Alone(_) => Ok(()),
        }
    }
}

/// A lost race on a report's key is `Raced`; any other error stays what it is.
fn raced(err: sqlx::Error) -> BatchError {
    match &err {
        sqlx::Error::Database(db) if db.constraint() == Some(store::conversions::NATURAL_KEY) => BatchError::Raced,
        _ => BatchError::Database(err),
    }
}

fn is_data_error(err: &BatchError) -> bool {
    matches!(err, BatchError::Database(sqlx::Error::Database(db))
        if db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")))
}

/// What the caller of a single report the database would not write is told.
fn refusal(err: &BatchError) -> ApiError {
    let sqlstate = match err {
        BatchError::Database(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
        _ => None,
    };
    match sqlstate.as_deref() {
        // Data exceptions (class 22): a value the edge's limits should have refused.
        Some(code) if code.starts_with("22") => {
            tracing::warn!(error = %err, "a report was refused by the database");
            ApiError::invalid("the report holds a value that cannot be stored (out of range or malformed)")
        }
        _ => {
            tracing::error!(error = %err, "a report could not be recorded");
            ApiError::unavailable("the conversion could not be recorded; retry (reports are idempotent)")
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("a key of the batch was recorded by another writer meanwhile")]
    Raced,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Accrue(#[from] accrue::AccrueError),
}

fn key_of(report: &Report) -> Key {
    (
        report.program_id.to_string(),
        report.project_id.clone(),
        report.external_id.clone(),
    )
}

async fn decide_and_write(
    deps: &WriterDeps,
    held: &mut Held,
    reports: &[Submission],
) -> Result<Vec<Reply>, BatchError> {
    let now = Utc::now();
    let mut stages = Stages::start("amba_writer_stage_seconds");
    let (writing, [first, second, third]) = held.connections().await?;
    stages.lap("connections");
    let keys: Vec<Key> = reports.iter().map(|s| key_of(&s.report)).collect();
    let program_ids: Vec<String> = reports
        .iter()
        .map(|s| s.report.program_id.to_string())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let codes: Vec<String> = reports
        .iter()
        .filter_map(|s| s.report.code.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let lookup_codes = async {
        if codes.is_empty() {
            Ok(HashMap::new())
        } else {
            store::read_model::codes(&mut *third, &codes).await
        }
    };
    let (existing, programs, code_rows) = tokio::try_join!(
        store::conversions::existing(&mut *first, &keys),
        store::read_model::programs(&mut *second, &program_ids),
        lookup_codes,
    )?;
    stages.lap("lookups");

    let binding_keys: Vec<(String, String)> = reports
        .iter()
        .filter_map(|s| {
            let r = &s.report;
            r.customer_ref.clone().map(|c| (r.program_id.to_string(), c))
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let lookup_bindings = store::read_model::bindings(&mut *first, &binding_keys);
    // Every report with a tracked subject weighs its touchpoints: they may win (no code, or
    // touch_wins), and the trail shows them either way.
    let touch_queries: Vec<TouchpointQuery> = reports
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let r = &s.report;
            let program = programs.get(r.program_id.as_str())?;
            Some(TouchpointQuery {
                index: i32::try_from(i).ok()?,
                program_id: r.program_id.to_string(),
                subject_ref: r.subject_ref.clone()?,
                at: r.occurred_at,
                policy: program.policy,
            })
        })
        .collect();
    let (bindings, touches): (HashMap<(String, String), Binding>, _) = tokio::try_join!(
        lookup_bindings,
        store::read_model::touchpoints(&mut *second, &touch_queries)
    )?;
    stages.lap("bindings_touchpoints");

    // Decide each report in order; a key repeated inside the batch answers like a stored one.
    let mut outcomes: Vec<Option<Reply>> = vec![None; reports.len()];
    let mut fresh: Vec<(usize, Decision)> = Vec::new();
    let mut seen: HashMap<Key, usize> = HashMap::new();
    // Reports on a known program by an org that does not own it: told why below if enrolled.
    let mut not_owned: Vec<usize> = Vec::new();
    for (i, submission) in reports.iter().enumerate() {
        let (report, caller) = (&submission.report, &submission.caller_org_id);
        let key = &keys[i];
        // Ownership first: another owner learns nothing about this program's conversions.
        match programs.get(report.program_id.as_str()) {
            Some(program) if &program.owner_org_id == caller => {}
            Some(_) => {
                not_owned.push(i);
                continue;
            }
            None => {
                outcomes[i] = Some(Err(ApiError::not_found(format!("program {}", report.program_id))));
                continue;
            }
        }
        if let Some(row) = existing.get(key) {
            outcomes[i] = Some(replay(row, report));
            continue;
        }
        if seen.contains_key(key) {
            continue; // answered after the write, from the first occurrence
        }
        let code = match &report.code {
            None => CodeState::NotGiven,
            Some(code) => match code_rows.get(code) {
                None => CodeState::Unknown,
                Some(row) if row.status == "retired" => CodeState::Retired,
                Some(row) => CodeState::Active {
                    program_id: row.program_id.clone(),
                    enrollment: row.enrollment.clone(),
                },
            },
        };
        let facts = Facts {
            caller_org_id: caller,
            program: programs.get(report.program_id.as_str()),
            code,
            binding: report
                .customer_ref
                .as_ref()
                .and_then(|c| bindings.get(&(report.program_id.to_string(), c.clone()))),
            touchpoints: i32::try_from(i)
                .ok()
                .and_then(|i| touches.get(&i))
                .map(Vec::as_slice)
                .unwrap_or_default(),
        };
        match report::decide(report, facts) {
            Ok(decision) => {
                seen.insert(key.clone(), i);
                fresh.push((i, decision));
            }
            Err(err) => outcomes[i] = Some(Err(err)),
        }
    }
    // Only refused batches pay for this: one bulk lookup, never one per report.
    if !not_owned.is_empty() {
        let pairs: Vec<(String, String)> = not_owned
            .iter()
            .map(|&i| {
                let s = &reports[i];
                (s.report.program_id.to_string(), s.caller_org_id.clone())
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let enrolled = store::read_model::enrolled(&mut *first, &pairs).await?;
        for i in not_owned {
            let s = &reports[i];
            let pair = (s.report.program_id.to_string(), s.caller_org_id.clone());
            outcomes[i] = Some(Err(ApiError::not_owner(
                format!("program {}", s.report.program_id),
                enrolled.contains(&pair),
                None,
            )));
        }
    }

    stages.lap("decide");
    screen(&mut *first, deps, reports, &programs, &mut fresh, now).await?;
    let fx = convert_currencies(&mut *first, reports, &programs, &mut fresh).await?;
    stages.lap("screen");
    // The sale in the program's currency: converted, or 0 while it waits for its rate.
    let program_amount = |i: usize| match fx.get(&i) {
        Some(Some(converted)) => converted.amount_minor,
        Some(None) => 0,
        None => reports[i].report.amount.amount_minor,
    };

    // Price the approvals, holding the affiliates' tier counters.
    let approvals: Vec<Approval> = fresh
        .iter()
        .filter(|(_, d)| d.status == Status::Approved)
        .filter_map(|(i, d)| {
            let report = &reports[*i].report;
            let program = programs.get(report.program_id.as_str())?;
            Some(Approval {
                program_id: report.program_id.to_string(),
                version: program.commission_version,
                enrollment_id: d.enrollment.as_ref()?.enrollment_id.clone(),
                amount_minor: program_amount(*i),
                currency: program.currency.clone(),
                renewal_since: d
                    .renewal
                    .then_some(())
                    .and(d.customer_first_conversion_at)
                    .map(|first| (first, report.occurred_at)),
                decided_at: now,
            })
        })
        .collect();
    // Tier counters stay locked until the write commits: only a batch that counts volume needs a
    // transaction. Every other batch is written by one statement, atomic on its own.
    let plan = accrue::plan(&mut *first, &deps.rules, &approvals).await?;
    let mut write = match plan.counts_volume() {
        true => Write::InTransaction(sqlx::Connection::begin(writing).await?),
        false => Write::Alone(writing),
    };
    let prices = match &mut write {
        Write::InTransaction(tx) => plan.price(tx).await?,
        Write::Alone(_) => plan.price(&mut *first).await?,
    };
    let mut prices = prices.into_iter();
    stages.lap("price");

    let mut rows = Vec::with_capacity(fresh.len());
    let mut trails = Vec::with_capacity(fresh.len());
    let mut new_bindings = Vec::new();
    let mut events = Vec::with_capacity(fresh.len() * 2);
    for (i, decision) in &fresh {
        let report = &reports[*i].report;
        let approved = decision.status == Status::Approved;
        let priced = if approved { prices.next() } else { None };
        let priced = priced.as_ref();
        let enrollment = decision.enrollment.as_ref();
        let converted = fx.get(i);
        let rate = converted.and_then(Option::as_ref);
        let row = ConversionRow {
            conversion_id: ConversionId::new().to_string(),
            program_id: report.program_id.to_string(),
            project_id: report.project_id.clone(),
            external_id: report.external_id.clone(),
            amount_minor: program_amount(*i),
            currency: programs
                .get(report.program_id.as_str())
                .map_or_else(|| report.amount.currency.code().to_owned(), |p| p.currency.clone()),
            status: decision.status.as_str().to_owned(),
            attribution: decision.attribution.as_str().to_owned(),
            enrollment_id: enrollment.map(|e| e.enrollment_id.clone()),
            affiliate_org_id: enrollment.map(|e| e.affiliate_org_id.clone()),
            code: decision.code.clone(),
            touchpoint_id: decision.touchpoint_id.clone(),
            subject_ref: report.subject_ref.clone(),
            customer_ref: report.customer_ref.clone(),
            reason: decision
                .reason
                .clone()
                .or_else(|| priced.and_then(|p| p.reason.clone())),
            occurred_at: report.occurred_at,
            recorded_at: now,
            decided_at: approved.then_some(now),
            commission_minor: priced.map(|p| p.commission_minor).unwrap_or(0),
            commission_version: priced.map(|p| p.version).unwrap_or(0),
            commission_tier: priced.map(|p| p.tier).unwrap_or(-1),
            renewal: decision.renewal,
            customer_first_conversion_at: decision.customer_first_conversion_at,
            clawed_back_minor: 0,
            held_for_review: decision.held_for_review,
            fingerprint: report.fingerprint(),
            attribution_model: decision.policy.model.as_str().to_owned(),
            attribution_precedence: decision.policy.precedence.as_str().to_owned(),
            attribution_version: decision.policy.version,
            hold_reasons: decision.hold_reasons.join(","),
            sale_amount_minor: converted.map(|_| report.amount.amount_minor),
            sale_currency: converted.map(|_| report.amount.currency.code().to_owned()),
            fx_rate: rate.map(|t| t.cross_rate.clone()),
            fx_rate_date: rate.map(|t| t.rate_date),
            fx_source: rate.map(|t| t.source.clone()),
        };
        trails.push(Trail {
            attribution: Some(decision.trail.clone()),
            assignment: None,
            fx: rate.cloned(),
            review: None,
            commission: priced.map(|p| p.trail.clone()),
        });
        if let (Some(customer), Some(e), false) = (&report.customer_ref, enrollment, decision.renewal) {
            new_bindings.push((
                row.program_id.clone(),
                customer.clone(),
                e.enrollment_id.clone(),
                report.occurred_at,
            ));
        }
        // One event per new conversion: approved on arrival, or recorded (pending, unattributed);
        // a sale waiting for its exchange rate gets it once converted (the rate job), so the
        // ledger and the e-mails never see a sale outside its program's currency.
        if !matches!(converted, Some(None)) {
            let kind = if approved { "approved" } else { "recorded" };
            let meta = new_meta_in_trace(reports[*i].traceparent.clone());
            events.push(event_with_meta(&deps.ns, meta, kind, &row.to_proto(), ""));
        }
        rows.push(row);
    }
    stages.lap("build");
    // Another replica's writer may have committed one of these keys after our lookup: then the
    // statement fails on the key's unique index and writes nothing, and the batch starts over;
    // the next lookup sees that row and answers `duplicate` from it.
    store::conversions::insert_many(write.conn(), &rows, &trails, &new_bindings, &events)
        .await
        .map_err(raced)?;
    write.finish().await?;
    stages.lap("write");
    deps.waker.wake();

    let by_index: HashMap<usize, &ConversionRow> = fresh.iter().map(|(i, _)| *i).zip(rows.iter()).collect();
    for (i, Submission { report, .. }) in reports.iter().enumerate() {
        if outcomes[i].is_some() {
            continue;
        }
        if let Some(row) = by_index.get(&i) {
            outcomes[i] = Some(Ok(pb::ReportConversionReply {
                conversion: Some(row.to_proto()),
                duplicate: false,
            }));
        } else if let Some(first) = seen.get(&keys[i]).and_then(|first| by_index.get(first)) {
            outcomes[i] = Some(replay(first, report));
        }
    }
    stages.lap("reply");
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(ApiError::internal())))
        .collect())
}

/// Runs each program's fraud checks on the batch's attributed decisions, in order: a hit holds
/// the conversion for review. Velocity counts the batch's earlier conversions of the same
/// affiliate too; the statistics take one statement, and only for programs that use them.
async fn screen(
    tx: &mut sqlx::PgConnection,
    deps: &WriterDeps,
    reports: &[Submission],
    programs: &HashMap<String, ProgramFacts>,
    fresh: &mut [(usize, Decision)],
    now: chrono::DateTime<Utc>,
) -> Result<(), BatchError> {
    let program_of = |i: usize| programs.get(reports[i].report.program_id.as_str());
    let mut queries: HashMap<String, FraudQuery> = HashMap::new();
    for (i, decision) in fresh.iter() {
        let (Some(program), Some(e)) = (program_of(*i), decision.enrollment.as_ref()) else {
            continue;
        };
        let window = program.fraud.velocity.map_or(0, |v| v.max_per_minute);
        let last_sales = program.fraud.refund_rate.map_or(0, |r| r.last_sales);
        if window > 0 || last_sales > 0 {
            queries.entry(e.enrollment_id.clone()).or_insert_with(|| FraudQuery {
                enrollment_id: e.enrollment_id.clone(),
                program_id: e.program_id.clone(),
                affiliate_org_id: e.affiliate_org_id.clone(),
                velocity_window: i32::try_from(window).unwrap_or(i32::MAX),
                last_sales: i32::try_from(last_sales).unwrap_or(i32::MAX),
            });
        }
    }
    let queries: Vec<FraudQuery> = queries.into_values().collect();
    let stats = store::conversions::fraud_stats(tx, &queries, now).await?;
    // Self-referral by address: clicks made from where the affiliate's org calls the platform.
    let click_pairs: Vec<(String, String)> = fresh
        .iter()
        .filter(|(i, _)| program_of(*i).is_some_and(|p| p.fraud.self_referral))
        .filter_map(|(_, d)| Some((d.enrollment.as_ref()?.affiliate_org_id.clone(), d.clicked_from.clone()?)))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let seen =
        store::read_model::callers_seen(tx, &click_pairs, now - chrono::Duration::days(CALLER_MEMORY_DAYS)).await?;
    let mut earlier_in_batch: HashMap<String, u32> = HashMap::new();
    for (i, decision) in fresh.iter_mut() {
        let (Some(program), Some(e)) = (program_of(*i), decision.enrollment.clone()) else {
            continue;
        };
        let report = &reports[*i].report;
        let (last_minute, sales, refunded) = stats.get(&e.enrollment_id).copied().unwrap_or_default();
        let earlier = earlier_in_batch.entry(e.enrollment_id.clone()).or_default();
        let facts = fraud::Facts {
            customer_email: report.customer_email.as_deref(),
            affiliate_emails: &e.emails,
            click_address_seen: decision.clicked_from.as_deref().map(|address| {
                (
                    address,
                    seen.get(&(e.affiliate_org_id.clone(), address.to_owned())).copied(),
                )
            }),
            last_minute: program.fraud.velocity.map(|_| last_minute.saturating_add(*earlier)),
            click_to_sale_seconds: decision.clicked_at.map(|at| (report.occurred_at - at).num_seconds()),
            recent_sales: program.fraud.refund_rate.map(|_| (sales, refunded)),
        };
        *earlier = earlier.saturating_add(1);
        decision.screened(fraud::screen(&program.fraud, &deps.disposable, &facts));
    }
    Ok(())
}

/// Converts the batch's sales in another currency than their program's at the reference rate of
/// the sale's date (one lookup for the batch): `Some(trail)` per converted sale, `None` for one
/// whose rate is not known yet, which then waits (see [`Decision::wait_for_rate`]).
async fn convert_currencies(
    tx: &mut sqlx::PgConnection,
    reports: &[Submission],
    programs: &HashMap<String, ProgramFacts>,
    fresh: &mut [(usize, Decision)],
) -> Result<HashMap<usize, Option<FxTrail>>, BatchError> {
    let foreign = |i: usize| {
        let report = &reports[i].report;
        let program = programs.get(report.program_id.as_str())?;
        let currency = Currency::parse(&program.currency).ok()?;
        (currency != report.amount.currency).then_some((report, currency))
    };
    let queries: Vec<RateQuery> = fresh
        .iter()
        .filter_map(|(i, _)| {
            let (report, program_currency) = foreign(*i)?;
            Some(RateQuery {
                index: i32::try_from(*i).ok()?,
                sale_currency: report.amount.currency.code().to_owned(),
                program_currency: program_currency.code().to_owned(),
                day: report.occurred_at.date_naive(),
            })
        })
        .collect();
    if queries.is_empty() {
        return Ok(HashMap::new());
    }
    let rates = store::fx::rates(tx, &queries).await?;
    let mut converted = HashMap::new();
    for (i, decision) in fresh.iter_mut() {
        let Some((report, program_currency)) = foreign(*i) else {
            continue;
        };
        let trail = i32::try_from(*i)
            .ok()
            .and_then(|index| rates.get(&index))
            .and_then(|rates| {
                fx::convert(
                    report.amount.amount_minor,
                    report.amount.currency,
                    program_currency,
                    rates,
                )
            });
        if trail.is_none() {
            decision.wait_for_rate(format!(
                "no {} and {} reference rates for {} yet; converted once they arrive",
                report.amount.currency,
                program_currency,
                report.occurred_at.date_naive()
            ));
        }
        converted.insert(*i, trail);
    }
    Ok(converted)
}

/// The answer to a report whose key is already recorded.
fn replay(row: &ConversionRow, report: &Report) -> Reply {
    if let Some(err) = report::mismatch(&row.fingerprint, report) {
        return Err(err);
    }
    Ok(pb::ReportConversionReply {
        conversion: Some(row.to_proto()),
        duplicate: true,
    })
}

/// A `conversion.<kind>` event in the current trace.
pub fn event(ns: &Namespace, kind: &str, conversion: &pb::Conversion, previous_status: &str) -> OutboxEvent {
    event_with_meta(ns, new_meta(), kind, conversion, previous_status)
}

fn event_with_meta(
    ns: &Namespace,
    meta: pb::EventMeta,
    kind: &str,
    conversion: &pb::Conversion,
    previous_status: &str,
) -> OutboxEvent {
    let body = pb::ConversionChanged {
        meta: Some(meta.clone()),
        conversion: Some(conversion.clone()),
        previous_status: previous_status.to_owned(),
    };
    OutboxEvent::new(ns.event("conversion", kind), &meta, &body)
}
