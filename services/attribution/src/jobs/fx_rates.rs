//! Reference exchange rates: fetched from `AMBA_FX_RATES_URL` (the ECB's daily feed unless the
//! operator names another, `file://` included) when the service starts and then at every
//! refresh, kept in PostgreSQL with their history. After each fetch, the sales that were waiting
//! for a rate (`fx_rate_missing`) are converted and go on as if reported now: their first event,
//! and the commission of an auto-approving program.
//!
//! Replicas may all fetch (storing a day is idempotent) and all convert (each takes the waiting
//! rows it locks, `FOR UPDATE SKIP LOCKED`).

use crate::actors::accrue::{self, Approval, RuleCache};
use crate::actors::writer::event;
use crate::domain::fx;
use crate::store::{self, fx::RateQuery};
use amba_bus::Namespace;
use amba_bus::outbox::RelayWaker;
use amba_core::Currency;
use chrono::Utc;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Waiting sales converted per transaction.
const BATCH: i64 = 500;
/// How soon a failed fetch is tried again (unless the refresh is sooner).
const RETRY: Duration = Duration::from_secs(600);
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where rates come from and how often.
#[derive(Debug, Clone)]
pub struct RateFeed {
    /// `http(s)://…` or `file:///…`, in the ECB's eurofxref XML format.
    pub url: String,
    pub refresh: Duration,
}

pub struct FxRates {
    pub pool: PgPool,
    pub ns: Namespace,
    pub waker: RelayWaker,
    pub rules: Arc<RuleCache>,
    pub feed: RateFeed,
}

impl FxRates {
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), amba_bus::RunError> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| amba_bus::RunError::Setup(format!("the rates client: {e}")))?;
        loop {
            let wait = match self.fetch(&http).await {
                Ok(new) => {
                    tracing::info!(url = %self.feed.url, new, "reference rates fetched");
                    self.feed.refresh
                }
                Err(problem) => {
                    tracing::warn!(url = %self.feed.url, %problem, "reference rates could not be fetched; retrying");
                    self.feed.refresh.min(RETRY)
                }
            };
            let mut after = None;
            loop {
                match self.convert_waiting(after.as_deref()).await {
                    Ok(Some(last)) => after = Some(last),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "converting sales that waited for a rate failed; retrying later");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Reads the feed and stores its days; returns how many rates were new.
    async fn fetch(&self, http: &reqwest::Client) -> Result<u64, String> {
        let body = match self.feed.url.strip_prefix("file://") {
            Some(path) => tokio::fs::read_to_string(path).await.map_err(|e| e.to_string())?,
            None => {
                let response = http.get(&self.feed.url).send().await.map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("HTTP {}", response.status()));
                }
                response.text().await.map_err(|e| e.to_string())?
            }
        };
        let days = fx::parse_ecb(&body).map_err(|e| e.to_string())?;
        let mut conn = self.pool.acquire().await.map_err(|e| e.to_string())?;
        store::fx::store_rates(&mut conn, &days, &self.feed.url)
            .await
            .map_err(|e| e.to_string())
    }

    /// Converts the waiting sales after `after` (by id) whose rate is now known, one page; returns
    /// the page's last id when there may be more.
    pub async fn convert_waiting(&self, after: Option<&str>) -> Result<Option<String>, accrue::AccrueError> {
        let mut tx = self.pool.begin().await?;
        let waiting = store::conversions::waiting_for_rate(&mut tx, after, BATCH).await?;
        let more = (waiting.len() as i64 == BATCH)
            .then(|| waiting.last().map(|r| r.conversion_id.clone()))
            .flatten();
        if waiting.is_empty() {
            return Ok(None);
        }
        let program_ids: Vec<String> = waiting.iter().map(|r| r.program_id.clone()).collect();
        let programs = store::read_model::programs(&mut tx, &program_ids).await?;
        let queries: Vec<RateQuery> = waiting
            .iter()
            .enumerate()
            .filter_map(|(i, row)| {
                Some(RateQuery {
                    index: i32::try_from(i).ok()?,
                    sale_currency: row.sale_currency.clone()?,
                    program_currency: row.currency.clone(),
                    day: row.occurred_at.date_naive(),
                })
            })
            .collect();
        let rates = store::fx::rates(&mut tx, &queries).await?;
        let now = Utc::now();
        let mut events = Vec::new();
        for (i, mut row) in waiting.iter().cloned().enumerate() {
            let converted = i32::try_from(i).ok().and_then(|i| rates.get(&i)).and_then(|rates| {
                let sale = Currency::parse(row.sale_currency.as_deref()?).ok()?;
                let program = Currency::parse(&row.currency).ok()?;
                fx::convert(row.sale_amount_minor?, sale, program, rates)
            });
            let Some(converted) = converted else { continue };
            let mut trail = store::conversions::trail(&mut tx, &row.conversion_id)
                .await?
                .unwrap_or_default();
            let remaining: Vec<String> = row
                .hold_reasons
                .split(',')
                .filter(|r| !r.is_empty() && *r != "fx_rate_missing")
                .map(str::to_owned)
                .collect();
            row.amount_minor = converted.amount_minor;
            row.fx_rate = Some(converted.cross_rate.clone());
            row.fx_rate_date = Some(converted.rate_date);
            row.fx_source = Some(converted.source.clone());
            row.hold_reasons = remaining.join(",");
            row.held_for_review = !remaining.is_empty();
            // The reason now names only the holds that remain (from the checks recorded then).
            row.reason = if remaining.is_empty() {
                None
            } else {
                let still = trail
                    .attribution
                    .iter()
                    .flat_map(|a| &a.checks)
                    .filter(|c| remaining.contains(&c.check));
                Some(crate::domain::fraud::hold_reason(still))
            };
            let program = programs.get(&row.program_id);
            let approve = row.status == "pending"
                && remaining.is_empty()
                && row.enrollment_id.is_some()
                && program.is_some_and(|p| p.auto_approve);
            if approve && let (Some(program), Some(enrollment_id)) = (program, row.enrollment_id.clone()) {
                let version = store::read_model::version_at(
                    &mut tx,
                    &row.program_id,
                    row.occurred_at,
                    program.commission_version,
                )
                .await?;
                let approval = Approval {
                    program_id: row.program_id.clone(),
                    version,
                    enrollment_id,
                    amount_minor: row.amount_minor,
                    currency: row.currency.clone(),
                    renewal_since: row
                        .renewal
                        .then_some(())
                        .and(row.customer_first_conversion_at)
                        .map(|first| (first, row.occurred_at)),
                    decided_at: now,
                };
                if let Some(priced) = accrue::price(&mut tx, &self.rules, &[approval]).await?.pop() {
                    row.status = "approved".into();
                    row.decided_at = Some(now);
                    row.commission_minor = priced.commission_minor;
                    row.commission_version = priced.version;
                    row.commission_tier = priced.tier;
                    row.reason = priced.reason.clone();
                    trail.commission = Some(priced.trail);
                }
            }
            if let Some(a) = trail.attribution.as_mut() {
                a.status = row.status.clone();
                a.held = row.reason.clone();
            }
            trail.fx = Some(converted);
            store::conversions::settle_rate(&mut tx, &row).await?;
            store::conversions::extend_trail(&mut tx, &row.conversion_id, &trail).await?;
            // Its first event: downstream never saw it while it had no amount in the program's currency.
            let kind = if row.status == "approved" {
                "approved"
            } else {
                "recorded"
            };
            events.push(event(&self.ns, kind, &row.to_proto(), ""));
        }
        amba_bus::outbox::enqueue_many(&mut tx, &events).await?;
        tx.commit().await?;
        if !events.is_empty() {
            self.waker.wake();
            tracing::info!(converted = events.len(), "sales that waited for a rate converted");
        }
        Ok(more)
    }
}
