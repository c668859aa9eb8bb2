//! Deciding commissions for approvals, in a transaction that holds the affiliates' volume
//! counters (so tiers count every approval exactly once, in order).

use crate::domain::accrual::{self, context, period_key, renewal_outside_window};
use crate::domain::trail::CommissionTrail;
use crate::store;
use amba_rules::CommissionRule;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use std::collections::HashMap;
use std::sync::Mutex;

/// Parsed rules by (program, version). Versions never change once written, so entries never go stale.
#[derive(Default)]
pub struct RuleCache(Mutex<HashMap<(String, i32), CommissionRule>>);

impl RuleCache {
    pub async fn get(
        &self,
        conn: &mut PgConnection,
        program_id: &str,
        version: i32,
    ) -> Result<Option<CommissionRule>, AccrueError> {
        let key = (program_id.to_owned(), version);
        if let Some(rule) = self.0.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(Some(rule));
        }
        let Some(json) = store::read_model::rule(conn, program_id, version).await? else {
            return Ok(None);
        };
        let rule = CommissionRule::from_json(&json).map_err(|e| AccrueError::BadRule(e.message))?;
        if let Ok(mut map) = self.0.lock() {
            map.insert(key, rule.clone());
        }
        Ok(Some(rule))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccrueError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("stored commission rule does not parse: {0}")]
    BadRule(String),
    #[error("commission rule version {1} of program {0} is not known yet")]
    MissingRule(String, i32),
    #[error("commission out of range")]
    Overflow,
}

/// One approval to price.
pub struct Approval {
    pub program_id: String,
    pub version: i32,
    pub enrollment_id: String,
    pub amount_minor: i64,
    pub currency: String,
    /// (customer's first conversion, this conversion) for renewals.
    pub renewal_since: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub decided_at: DateTime<Utc>,
}

/// The commission decided for an approval.
#[derive(Debug, Clone, PartialEq)]
pub struct Priced {
    pub commission_minor: i64,
    pub version: i32,
    pub tier: i32,
    /// Why the rule gave nothing, when that needs saying (a renewal after the recurring window).
    pub reason: Option<String>,
    /// The computation step by step, for explain.
    pub trail: CommissionTrail,
}

/// Approvals with their rules resolved: what pricing them needs, known before any counter is
/// touched, so the writer opens a transaction only when volume counters are involved.
pub struct Plan<'a> {
    approvals: &'a [Approval],
    resolved: Vec<(CommissionRule, Option<String>)>,
}

/// Resolves each approval's rule (from the cache, or read once) and its volume period.
pub async fn plan<'a>(
    conn: &mut PgConnection,
    rules: &RuleCache,
    approvals: &'a [Approval],
) -> Result<Plan<'a>, AccrueError> {
    let mut resolved = Vec::with_capacity(approvals.len());
    for a in approvals {
        let rule = rules
            .get(conn, &a.program_id, a.version)
            .await?
            .ok_or_else(|| AccrueError::MissingRule(a.program_id.clone(), a.version))?;
        let period = period_key(&rule, a.decided_at);
        resolved.push((rule, period));
    }
    Ok(Plan { approvals, resolved })
}

impl Plan<'_> {
    /// The volume counters pricing reads and advances: `(enrollment_id, period)`.
    fn counter_keys(&self) -> Vec<(String, String)> {
        self.approvals
            .iter()
            .zip(&self.resolved)
            .filter_map(|(a, (_, period))| period.clone().map(|p| (a.enrollment_id.clone(), p)))
            .collect()
    }

    /// Whether pricing locks volume counters, and so must run in the transaction that writes.
    pub fn counts_volume(&self) -> bool {
        self.resolved.iter().any(|(_, period)| period.is_some())
    }

    /// Prices the approvals in order, counting each into its affiliate's tier volume (the
    /// counters are locked on `conn` until its transaction ends).
    pub async fn price(self, conn: &mut PgConnection) -> Result<Vec<Priced>, AccrueError> {
        let keys = self.counter_keys();
        let mut counters = store::conversions::lock_counters(conn, &keys).await?;
        let mut priced = Vec::with_capacity(self.approvals.len());
        for (a, (rule, period)) in self.approvals.iter().zip(&self.resolved) {
            let counter_key = period.clone().map(|p| (a.enrollment_id.clone(), p));
            let prior = counter_key
                .as_ref()
                .and_then(|k| counters.get(k).copied())
                .unwrap_or((0, 0));
            let ctx = context(a.amount_minor, a.renewal_since, prior);
            let accrual = rule.evaluate(&ctx).map_err(|_| AccrueError::Overflow)?;
            if let Some(key) = counter_key {
                let entry = counters.entry(key).or_insert((0, 0));
                entry.0 = entry.0.saturating_add(1);
                entry.1 = entry.1.saturating_add(a.amount_minor);
            }
            let tier = accrual.tier.and_then(|t| i32::try_from(t).ok()).unwrap_or(-1);
            let reason = renewal_outside_window(rule, a.renewal_since);
            let trail = accrual::trail(accrual::Priced {
                rule,
                version: a.version,
                context: &ctx,
                accrual: &accrual,
                period: period.as_deref(),
                currency: &a.currency,
                note: reason.clone(),
            });
            priced.push(Priced {
                commission_minor: accrual.amount_minor,
                version: a.version,
                tier,
                reason,
                trail,
            });
        }
        store::conversions::write_counters(conn, &counters).await?;
        Ok(priced)
    }
}

/// Prices approvals in order, counting each into its affiliate's tier volume, on `conn` (a
/// transaction when counters are involved).
pub async fn price(
    conn: &mut PgConnection,
    rules: &RuleCache,
    approvals: &[Approval],
) -> Result<Vec<Priced>, AccrueError> {
    plan(conn, rules, approvals).await?.price(conn).await
}
