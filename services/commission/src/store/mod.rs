//! SQL of the commission service: read models, the commission sub-ledger, clawbacks, stats.
//! Ledger postings themselves are written by [`ledger`].

pub mod ledger;

use crate::domain::ledger::CommissionState;
use amba_proto::wire as pb;
use sqlx::PgConnection;

/// The UTC day of a unix-microsecond timestamp (today when it is unset or out of range).
pub fn day_of(micros: i64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp_micros(micros)
        .filter(|_| micros > 0)
        .unwrap_or_else(chrono::Utc::now)
        .date_naive()
}

pub fn timestamp(micros: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(micros)
        .filter(|_| micros > 0)
        .unwrap_or_else(chrono::Utc::now)
}

// ---- read models ----

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProgramRow {
    pub program_id: String,
    pub owner_org_id: String,
    pub name: String,
    pub currency: String,
    pub hold_days: i32,
    pub multi_level_enabled: bool,
    pub levels_bps: Vec<i32>,
    pub platform_fee_bps: i32,
    pub payout_threshold_minor: i64,
}

#[derive(Debug, Default, serde::Deserialize)]
struct MultiLevel {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    levels_bps: Vec<u32>,
}

pub async fn upsert_program(conn: &mut PgConnection, p: &pb::Program) -> Result<(), sqlx::Error> {
    let multi: MultiLevel = serde_json::from_str(&p.multi_level_json).unwrap_or_default();
    let levels: Vec<i32> = multi
        .levels_bps
        .iter()
        .map(|b| i32::try_from(*b).unwrap_or(0))
        .collect();
    sqlx::query(
        "INSERT INTO programs (program_id, owner_org_id, name, currency, status, hold_days, multi_level_enabled, \
         levels_bps, platform_fee_bps, payout_threshold_minor, commission_version, updated_at_micros) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (program_id) DO UPDATE SET owner_org_id = EXCLUDED.owner_org_id, name = EXCLUDED.name, \
         currency = EXCLUDED.currency, status = EXCLUDED.status, hold_days = EXCLUDED.hold_days, \
         multi_level_enabled = EXCLUDED.multi_level_enabled, levels_bps = EXCLUDED.levels_bps, \
         platform_fee_bps = EXCLUDED.platform_fee_bps, payout_threshold_minor = EXCLUDED.payout_threshold_minor, \
         commission_version = EXCLUDED.commission_version, updated_at_micros = EXCLUDED.updated_at_micros \
         WHERE programs.updated_at_micros <= EXCLUDED.updated_at_micros",
    )
    .bind(&p.program_id)
    .bind(&p.owner_org_id)
    .bind(&p.name)
    .bind(&p.currency)
    .bind(&p.status)
    .bind(i32::try_from(p.hold_days).unwrap_or(i32::MAX))
    .bind(multi.enabled)
    .bind(&levels)
    .bind(i32::try_from(p.platform_fee_bps).unwrap_or(0))
    .bind(p.payout_threshold_minor)
    .bind(i32::try_from(p.commission_version).unwrap_or(0))
    .bind(p.updated_at_micros)
    .execute(&mut *conn)
    .await?;
    let rule: serde_json::Value = serde_json::from_str(&p.commission_json).unwrap_or(serde_json::Value::Null);
    sqlx::query(
        "INSERT INTO program_rules (program_id, version, commission_json) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(&p.program_id)
    .bind(i32::try_from(p.commission_version).unwrap_or(0))
    .bind(sqlx::types::Json(rule))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn program(conn: &mut PgConnection, program_id: &str) -> Result<Option<ProgramRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT program_id, owner_org_id, name, currency, hold_days, multi_level_enabled, levels_bps, \
         platform_fee_bps, payout_threshold_minor FROM programs WHERE program_id = $1",
    )
    .bind(program_id)
    .fetch_optional(conn)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EnrollmentRow {
    pub enrollment_id: String,
    pub program_id: String,
    pub affiliate_org_id: String,
    pub affiliate_org_name: String,
    pub status: String,
    pub parent_enrollment_id: Option<String>,
}

pub async fn upsert_enrollment(conn: &mut PgConnection, e: &pb::Enrollment) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO enrollments (enrollment_id, program_id, affiliate_org_id, affiliate_org_name, status, \
         parent_enrollment_id, depth, updated_at_micros) VALUES ($1, $2, $3, $4, $5, NULLIF($6, ''), $7, $8) \
         ON CONFLICT (enrollment_id) DO UPDATE SET status = EXCLUDED.status, \
         affiliate_org_name = EXCLUDED.affiliate_org_name, parent_enrollment_id = EXCLUDED.parent_enrollment_id, \
         depth = EXCLUDED.depth, updated_at_micros = EXCLUDED.updated_at_micros \
         WHERE enrollments.updated_at_micros <= EXCLUDED.updated_at_micros",
    )
    .bind(&e.enrollment_id)
    .bind(&e.program_id)
    .bind(&e.affiliate_org_id)
    .bind(&e.affiliate_org_name)
    .bind(&e.status)
    .bind(&e.parent_enrollment_id)
    .bind(i32::try_from(e.depth).unwrap_or(1))
    .bind(e.updated_at_micros)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn enrollment(conn: &mut PgConnection, enrollment_id: &str) -> Result<Option<EnrollmentRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT enrollment_id, program_id, affiliate_org_id, affiliate_org_name, status, parent_enrollment_id \
         FROM enrollments WHERE enrollment_id = $1",
    )
    .bind(enrollment_id)
    .fetch_optional(conn)
    .await
}

// ---- conversions seen ----

/// Records a conversion the first time any event names it. Returns whether it is new.
pub async fn remember_conversion(
    conn: &mut PgConnection,
    c: &pb::Conversion,
    sale_micros: i64,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO conversions (conversion_id, program_id, enrollment_id, amount_minor, currency, status, counted_day) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (conversion_id) DO UPDATE SET status = EXCLUDED.status \
         RETURNING (xmax = 0)",
    )
    .bind(&c.conversion_id)
    .bind(&c.program_id)
    .bind(&c.enrollment_id)
    .bind(c.amount_minor)
    .bind(&c.currency)
    .bind(&c.status)
    .bind(day_of(sale_micros))
    .fetch_one(conn)
    .await?;
    use sqlx::Row;
    inserted.try_get::<bool, _>(0)
}

/// Flags the conversion approved; false when it already was (accrual happens once).
pub async fn mark_approved(conn: &mut PgConnection, conversion_id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE conversions SET approved = true WHERE conversion_id = $1 AND NOT approved")
        .bind(conversion_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn conversion_approved(conn: &mut PgConnection, conversion_id: &str) -> Result<Option<bool>, sqlx::Error> {
    let row: Option<(bool,)> = sqlx::query_as("SELECT approved FROM conversions WHERE conversion_id = $1")
        .bind(conversion_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|r| r.0))
}

pub async fn set_refunded(conn: &mut PgConnection, conversion_id: &str, total: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE conversions SET refunded_minor = GREATEST(refunded_minor, $2) WHERE conversion_id = $1")
        .bind(conversion_id)
        .bind(total)
        .execute(conn)
        .await?;
    Ok(())
}

// ---- commissions ----

#[derive(Debug, Clone)]
pub struct NewCommission {
    pub commission_id: String,
    pub conversion_id: String,
    pub program_id: String,
    pub enrollment_id: String,
    pub source_enrollment_id: String,
    pub level: i32,
    pub source_commission_id: Option<String>,
    pub currency: String,
    pub sale_minor: i64,
    pub amount_minor: i64,
    pub rate_bps: Option<i32>,
    pub commission_version: i32,
    pub commission_tier: i32,
    pub decided_at_micros: i64,
}

/// Inserts the commission row; false when it exists (the accrual was booked before).
pub async fn insert_commission(
    conn: &mut PgConnection,
    c: &NewCommission,
    release_at_micros: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO commissions (commission_id, conversion_id, program_id, enrollment_id, source_enrollment_id, level, \
         source_commission_id, currency, sale_minor, amount_minor, rate_bps, commission_version, commission_tier, \
         decided_at, release_at, held_minor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $10) ON CONFLICT DO NOTHING",
    )
    .bind(&c.commission_id)
    .bind(&c.conversion_id)
    .bind(&c.program_id)
    .bind(&c.enrollment_id)
    .bind(&c.source_enrollment_id)
    .bind(c.level)
    .bind(&c.source_commission_id)
    .bind(&c.currency)
    .bind(c.sale_minor)
    .bind(c.amount_minor)
    .bind(c.rate_bps)
    .bind(c.commission_version)
    .bind(c.commission_tier)
    .bind(timestamp(c.decided_at_micros))
    .bind(timestamp(release_at_micros))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommissionRow {
    pub commission_id: String,
    pub program_id: String,
    pub enrollment_id: String,
    pub level: i32,
    pub currency: String,
    pub sale_minor: i64,
    pub amount_minor: i64,
    pub held_minor: i64,
    pub released: bool,
    pub recovered_minor: i64,
}

impl CommissionRow {
    pub fn state(&self) -> CommissionState {
        CommissionState {
            amount_minor: self.amount_minor,
            sale_minor: self.sale_minor,
            held_minor: self.held_minor,
            released: self.released,
            recovered_minor: self.recovered_minor,
        }
    }
}

const COMMISSION_COLUMNS: &str = "commission_id, program_id, enrollment_id, level, currency, sale_minor, amount_minor, \
     held_minor, released_at IS NOT NULL AS released, recovered_minor";

/// A conversion's commissions (direct first, then overrides by level), locked.
pub async fn commissions_of(conn: &mut PgConnection, conversion_id: &str) -> Result<Vec<CommissionRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COMMISSION_COLUMNS} FROM commissions WHERE conversion_id = $1 ORDER BY level FOR UPDATE"
    )))
    .bind(conversion_id)
    .fetch_all(conn)
    .await
}

pub async fn commission_for_update(
    conn: &mut PgConnection,
    commission_id: &str,
) -> Result<Option<CommissionRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COMMISSION_COLUMNS} FROM commissions WHERE commission_id = $1 FOR UPDATE"
    )))
    .bind(commission_id)
    .fetch_optional(conn)
    .await
}

/// Released commissions of an enrollment, oldest first, locked (transfer reversal allocation).
pub async fn released_commissions(
    conn: &mut PgConnection,
    program_id: &str,
    enrollment_id: &str,
    conversion_ids: &[String],
) -> Result<Vec<CommissionRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COMMISSION_COLUMNS} FROM commissions WHERE program_id = $1 AND enrollment_id = $2 \
         AND released_at IS NOT NULL AND recovered_minor < amount_minor \
         AND (cardinality($3::text[]) = 0 OR conversion_id = ANY($3)) \
         ORDER BY decided_at, commission_id FOR UPDATE"
    )))
    .bind(program_id)
    .bind(enrollment_id)
    .bind(conversion_ids)
    .fetch_all(conn)
    .await
}

pub async fn save_commission_state(
    conn: &mut PgConnection,
    commission_id: &str,
    state: &CommissionState,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE commissions SET held_minor = $2, recovered_minor = $3, \
         released_at = CASE WHEN $4 THEN COALESCE(released_at, now()) ELSE released_at END \
         WHERE commission_id = $1",
    )
    .bind(commission_id)
    .bind(state.held_minor)
    .bind(state.recovered_minor)
    .bind(state.released)
    .execute(conn)
    .await?;
    Ok(())
}

// ---- clawbacks ----

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClawbackRow {
    pub clawback_id: String,
    pub conversion_id: String,
    pub program_id: String,
    pub enrollment_id: String,
    pub refund_minor: i64,
    pub refunded_total_minor: i64,
    pub reversed_minor: i64,
    pub carry_forward_minor: i64,
    pub reason: String,
    pub currency: String,
}

pub async fn clawback(conn: &mut PgConnection, clawback_id: &str) -> Result<Option<ClawbackRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT clawback_id, conversion_id, program_id, enrollment_id, refund_minor, refunded_total_minor, \
         reversed_minor, carry_forward_minor, reason, currency FROM clawbacks WHERE clawback_id = $1",
    )
    .bind(clawback_id)
    .fetch_optional(conn)
    .await
}

pub async fn insert_clawback(conn: &mut PgConnection, c: &ClawbackRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO clawbacks (clawback_id, conversion_id, program_id, enrollment_id, refund_minor, \
         refunded_total_minor, reversed_minor, carry_forward_minor, reason, currency) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&c.clawback_id)
    .bind(&c.conversion_id)
    .bind(&c.program_id)
    .bind(&c.enrollment_id)
    .bind(c.refund_minor)
    .bind(c.refunded_total_minor)
    .bind(c.reversed_minor)
    .bind(c.carry_forward_minor)
    .bind(&c.reason)
    .bind(&c.currency)
    .execute(conn)
    .await?;
    Ok(())
}

// ---- daily stats ----

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsBump {
    pub clicks: i64,
    pub conversions: i64,
    pub approved: i64,
    pub revenue_minor: i64,
    pub commission_minor: i64,
    pub paid_minor: i64,
    pub clawed_back_minor: i64,
    pub refunded_minor: i64,
}

/// Adds to one enrollment's row of the day (the rollup analytics read, never recomputed).
pub async fn bump_stats(
    conn: &mut PgConnection,
    program_id: &str,
    enrollment_id: &str,
    at_micros: i64,
    b: &StatsBump,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO daily_stats AS s (program_id, enrollment_id, day, clicks, conversions, approved, revenue_minor, \
         commission_minor, paid_minor, clawed_back_minor, refunded_minor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (program_id, enrollment_id, day) DO UPDATE SET clicks = s.clicks + EXCLUDED.clicks, \
         conversions = s.conversions + EXCLUDED.conversions, approved = s.approved + EXCLUDED.approved, \
         revenue_minor = s.revenue_minor + EXCLUDED.revenue_minor, \
         commission_minor = s.commission_minor + EXCLUDED.commission_minor, \
         paid_minor = s.paid_minor + EXCLUDED.paid_minor, \
         clawed_back_minor = s.clawed_back_minor + EXCLUDED.clawed_back_minor, \
         refunded_minor = s.refunded_minor + EXCLUDED.refunded_minor",
    )
    .bind(program_id)
    .bind(enrollment_id)
    .bind(day_of(at_micros))
    .bind(b.clicks)
    .bind(b.conversions)
    .bind(b.approved)
    .bind(b.revenue_minor)
    .bind(b.commission_minor)
    .bind(b.paid_minor)
    .bind(b.clawed_back_minor)
    .bind(b.refunded_minor)
    .execute(conn)
    .await?;
    Ok(())
}
