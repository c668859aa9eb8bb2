use crate::domain::program::{MultiLevel, ProgramSettings, ProgramStatus};
use amba_core::{ApiError, Currency};
use amba_proto::wire as pb;
use amba_rules::{CommissionRule, FraudChecks};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use sqlx::types::Json;

/// A program as stored, with the rule of its current (or a requested) commission version.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProgramRow {
    pub program_id: String,
    pub owner_org_id: String,
    pub name: String,
    pub currency: String,
    pub status: String,
    pub approval_mode: String,
    pub affiliate_approval: String,
    pub attribution_window_days: i32,
    pub attribution_model: String,
    pub attribution_precedence: String,
    pub attribution_version: i32,
    pub fraud_checks: Json<serde_json::Value>,
    pub hold_days: i32,
    pub payout_threshold_minor: i64,
    pub payout_schedule: String,
    pub platform_fee_bps: i32,
    pub multi_level: Json<serde_json::Value>,
    pub landing_url: Option<String>,
    pub commission_version: i32,
    pub commission: Json<serde_json::Value>,
    pub request_fingerprint: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

fn corrupt(field: &str, err: impl std::fmt::Display) -> ApiError {
    tracing::error!(%field, error = %err, "stored program does not parse");
    ApiError::internal()
}

impl ProgramRow {
    pub fn status(&self) -> Result<ProgramStatus, ApiError> {
        self.status.parse().map_err(|e| corrupt("status", e))
    }

    /// The settings this row holds, for applying a change to them.
    pub fn settings(&self) -> Result<ProgramSettings, ApiError> {
        Ok(ProgramSettings {
            name: self.name.clone(),
            currency: Currency::parse(&self.currency).map_err(|e| corrupt("currency", e))?,
            commission: CommissionRule::from_json(&self.commission.0).map_err(|e| corrupt("commission", e))?,
            approval_mode: self.approval_mode.parse().map_err(|e| corrupt("approval_mode", e))?,
            affiliate_approval: self
                .affiliate_approval
                .parse()
                .map_err(|e| corrupt("affiliate_approval", e))?,
            attribution_window_days: u32::try_from(self.attribution_window_days)
                .map_err(|e| corrupt("attribution_window_days", e))?,
            attribution_model: self
                .attribution_model
                .parse()
                .map_err(|e| corrupt("attribution_model", e))?,
            attribution_precedence: self
                .attribution_precedence
                .parse()
                .map_err(|e| corrupt("attribution_precedence", e))?,
            fraud_checks: FraudChecks::from_json(&self.fraud_checks.0).map_err(|e| corrupt("fraud_checks", e))?,
            hold_days: u32::try_from(self.hold_days).map_err(|e| corrupt("hold_days", e))?,
            payout_threshold_minor: self.payout_threshold_minor,
            payout_schedule: self
                .payout_schedule
                .parse()
                .map_err(|e| corrupt("payout_schedule", e))?,
            platform_fee_bps: u32::try_from(self.platform_fee_bps).map_err(|e| corrupt("platform_fee_bps", e))?,
            multi_level: MultiLevel::from_json(&self.multi_level.0).map_err(|e| corrupt("multi_level", e))?,
            landing_url: self.landing_url.clone(),
        })
    }

    pub fn to_proto(&self) -> pb::Program {
        pb::Program {
            program_id: self.program_id.clone(),
            owner_org_id: self.owner_org_id.clone(),
            name: self.name.clone(),
            currency: self.currency.clone(),
            status: self.status.clone(),
            approval_mode: self.approval_mode.clone(),
            affiliate_approval: self.affiliate_approval.clone(),
            attribution_window_days: u32::try_from(self.attribution_window_days).unwrap_or_default(),
            hold_days: u32::try_from(self.hold_days).unwrap_or_default(),
            payout_threshold_minor: self.payout_threshold_minor,
            payout_schedule: self.payout_schedule.clone(),
            platform_fee_bps: u32::try_from(self.platform_fee_bps).unwrap_or_default(),
            multi_level_json: self.multi_level.0.to_string(),
            landing_url: self.landing_url.clone().unwrap_or_default(),
            commission_version: u32::try_from(self.commission_version).unwrap_or_default(),
            commission_json: self.commission.0.to_string(),
            created_at_micros: self.created_at.timestamp_micros(),
            updated_at_micros: self.updated_at.timestamp_micros(),
            version: u64::try_from(self.version).unwrap_or_default(),
            attribution_model: self.attribution_model.clone(),
            attribution_precedence: self.attribution_precedence.clone(),
            attribution_version: u32::try_from(self.attribution_version).unwrap_or_default(),
            fraud_checks_json: self.fraud_checks.0.to_string(),
        }
    }
}

/// The program joined with one of its rule versions; `$tail` adds the join condition and filter.
/// A macro so every statement stays a `'static` literal (sqlx only takes audited SQL text).
macro_rules! select_program {
    ($tail:literal) => {
        concat!(
            "SELECT p.program_id, p.owner_org_id, p.name, p.currency, p.status, p.approval_mode, p.affiliate_approval, \
    p.attribution_window_days, p.attribution_model, p.attribution_precedence, p.attribution_version, p.fraud_checks, p.hold_days, p.payout_threshold_minor, p.payout_schedule, p.platform_fee_bps, \
    p.multi_level, p.landing_url, r.version AS commission_version, r.rule AS commission, p.request_fingerprint, \
    p.created_at, p.updated_at, p.version \
    FROM programs p JOIN commission_rules r ON r.program_id = p.program_id ",
            $tail
        )
    };
}

pub struct NewProgram<'a> {
    pub program_id: &'a str,
    pub owner_org_id: &'a str,
    pub settings: &'a ProgramSettings,
    pub idempotency_key: Option<&'a str>,
    pub request_fingerprint: &'a str,
}

/// Inserts a draft program with commission version 1. Returns false when the idempotency key
/// is already used by this owner (a concurrent retry won the race).
pub async fn insert(conn: &mut PgConnection, p: &NewProgram<'_>) -> Result<bool, sqlx::Error> {
    let s = p.settings;
    let inserted = sqlx::query(
        "INSERT INTO programs (program_id, owner_org_id, name, currency, status, approval_mode, attribution_window_days, \
         hold_days, payout_threshold_minor, payout_schedule, platform_fee_bps, multi_level, landing_url, commission_version, \
         idempotency_key, request_fingerprint, affiliate_approval, attribution_model, attribution_precedence, fraud_checks) \
         VALUES ($1, $2, $3, $4, 'draft', $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $14, $15, $16, $17, $18) \
         ON CONFLICT (owner_org_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
    )
    .bind(p.program_id)
    .bind(p.owner_org_id)
    .bind(&s.name)
    .bind(s.currency.code())
    .bind(s.approval_mode.as_str())
    .bind(to_i32(s.attribution_window_days))
    .bind(to_i32(s.hold_days))
    .bind(s.payout_threshold_minor)
    .bind(s.payout_schedule.as_str())
    .bind(to_i32(s.platform_fee_bps))
    .bind(Json(s.multi_level.to_json()))
    .bind(&s.landing_url)
    .bind(p.idempotency_key)
    .bind(p.request_fingerprint)
    .bind(s.affiliate_approval.as_str())
    .bind(s.attribution_model.as_str())
    .bind(s.attribution_precedence.as_str())
    .bind(Json(s.fraud_checks.to_json()))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    insert_rule(conn, p.program_id, 1, &s.commission).await?;
    Ok(true)
}

pub async fn insert_rule(
    conn: &mut PgConnection,
    program_id: &str,
    version: i32,
    rule: &CommissionRule,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO commission_rules (program_id, version, rule) VALUES ($1, $2, $3)")
        .bind(program_id)
        .bind(version)
        .bind(Json(rule.to_json()))
        .execute(conn)
        .await?;
    Ok(())
}

/// Writes changed settings and status; the commission version moves only via [`insert_rule`].
pub async fn update(
    conn: &mut PgConnection,
    program_id: &str,
    s: &ProgramSettings,
    status: ProgramStatus,
    versions: Versions,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE programs SET name = $2, currency = $3, status = $4, approval_mode = $5, attribution_window_days = $6, \
         hold_days = $7, payout_threshold_minor = $8, payout_schedule = $9, platform_fee_bps = $10, multi_level = $11, \
         landing_url = $12, commission_version = $13, affiliate_approval = $14, attribution_model = $15, \
         attribution_precedence = $16, attribution_version = $17, fraud_checks = $18, updated_at = now(), \
         version = version + 1 \
         WHERE program_id = $1",
    )
    .bind(program_id)
    .bind(&s.name)
    .bind(s.currency.code())
    .bind(status.as_str())
    .bind(s.approval_mode.as_str())
    .bind(to_i32(s.attribution_window_days))
    .bind(to_i32(s.hold_days))
    .bind(s.payout_threshold_minor)
    .bind(s.payout_schedule.as_str())
    .bind(to_i32(s.platform_fee_bps))
    .bind(Json(s.multi_level.to_json()))
    .bind(&s.landing_url)
    .bind(versions.commission)
    .bind(s.affiliate_approval.as_str())
    .bind(s.attribution_model.as_str())
    .bind(s.attribution_precedence.as_str())
    .bind(versions.attribution)
    .bind(Json(s.fraud_checks.to_json()))
    .execute(conn)
    .await?;
    Ok(())
}

/// The versions an update leaves a program at.
#[derive(Debug, Clone, Copy)]
pub struct Versions {
    pub commission: i32,
    pub attribution: i32,
}

/// The program with its current rule; `lock` holds the row until the transaction ends.
pub async fn get(conn: &mut PgConnection, program_id: &str, lock: bool) -> Result<Option<ProgramRow>, sqlx::Error> {
    if lock {
        super::fault_pause_before_row_lock().await;
    }
    let query = if lock {
        sqlx::query_as(select_program!(
            "AND r.version = p.commission_version WHERE p.program_id = $1 FOR UPDATE OF p"
        ))
    } else {
        sqlx::query_as(select_program!(
            "AND r.version = p.commission_version WHERE p.program_id = $1"
        ))
    };
    query.bind(program_id).fetch_optional(conn).await
}

/// The program as it is now, but with the rule of `version` (None if that version never existed).
pub async fn get_with_version(
    conn: &mut PgConnection,
    program_id: &str,
    version: i32,
) -> Result<Option<ProgramRow>, sqlx::Error> {
    sqlx::query_as(select_program!("AND r.version = $2 WHERE p.program_id = $1"))
        .bind(program_id)
        .bind(version)
        .fetch_optional(conn)
        .await
}

pub async fn get_by_idempotency_key(
    conn: &mut PgConnection,
    owner_org_id: &str,
    key: &str,
) -> Result<Option<ProgramRow>, sqlx::Error> {
    sqlx::query_as(select_program!(
        "AND r.version = p.commission_version WHERE p.owner_org_id = $1 AND p.idempotency_key = $2"
    ))
    .bind(owner_org_id)
    .bind(key)
    .fetch_optional(conn)
    .await
}

/// How many commission rule versions a program's history shows (the latest ones).
pub const RULE_HISTORY_MAX: i64 = 20;

/// A program's latest rule versions ([`RULE_HISTORY_MAX`]), oldest first.
pub async fn rule_history(
    conn: &mut PgConnection,
    program_id: &str,
) -> Result<Vec<pb::CommissionVersion>, sqlx::Error> {
    // The latest versions only: a rule may be 10,000 characters, and a reply must stay far below
    // NATS's 1 MiB however often the rule changed. Older ones are read one at a time.
    let rows: Vec<(i32, Json<serde_json::Value>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT version, rule, created_at FROM commission_rules WHERE program_id = $1 ORDER BY version DESC LIMIT $2",
    )
    .bind(program_id)
    .bind(RULE_HISTORY_MAX)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .rev()
        .map(|(version, rule, created_at)| pb::CommissionVersion {
            version: u32::try_from(version).unwrap_or_default(),
            commission_json: rule.0.to_string(),
            created_at_micros: created_at.timestamp_micros(),
        })
        .collect())
}

/// One page of an owner's programs, oldest first, after the keyset cursor `after`.
pub async fn list(
    conn: &mut PgConnection,
    owner_org_id: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<ProgramRow>, sqlx::Error> {
    sqlx::query_as(select_program!(
        "AND r.version = p.commission_version WHERE p.owner_org_id = $1 AND ($2::text IS NULL OR p.program_id > $2) \
         ORDER BY p.program_id LIMIT $3"
    ))
    .bind(owner_org_id)
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await
}

/// Settings are validated to small ranges (days ≤ 365, bps ≤ 10 000), so this never saturates.
fn to_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}
