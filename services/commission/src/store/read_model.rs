//! The read models of programs and enrollments, kept from enrollment's events.

use amba_proto::wire as pb;
use sqlx::PgConnection;
use std::collections::HashMap;

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
         levels_bps, platform_fee_bps, payout_threshold_minor, commission_version, updated_at_micros, version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (program_id) DO UPDATE SET owner_org_id = EXCLUDED.owner_org_id, name = EXCLUDED.name, \
         currency = EXCLUDED.currency, status = EXCLUDED.status, hold_days = EXCLUDED.hold_days, \
         multi_level_enabled = EXCLUDED.multi_level_enabled, levels_bps = EXCLUDED.levels_bps, \
         platform_fee_bps = EXCLUDED.platform_fee_bps, payout_threshold_minor = EXCLUDED.payout_threshold_minor, \
         commission_version = EXCLUDED.commission_version, updated_at_micros = EXCLUDED.updated_at_micros, \
         version = EXCLUDED.version \
         WHERE (programs.version, programs.updated_at_micros) <= (EXCLUDED.version, EXCLUDED.updated_at_micros)",
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
    .bind(i64::try_from(p.version).unwrap_or(i64::MAX))
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

/// The programs of `ids` that the read model has, by id.
pub async fn programs(conn: &mut PgConnection, ids: &[&str]) -> Result<HashMap<String, ProgramRow>, sqlx::Error> {
    let rows: Vec<ProgramRow> = sqlx::query_as(
        "SELECT program_id, owner_org_id, name, currency, hold_days, multi_level_enabled, levels_bps, \
         platform_fee_bps, payout_threshold_minor FROM programs WHERE program_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|p| (p.program_id.clone(), p)).collect())
}

/// Whether `org_id` has an enrollment in the program, whatever its status (an owner-only read
/// then answers FORBIDDEN rather than NOT_FOUND).
pub async fn enrolled(conn: &mut PgConnection, program_id: &str, org_id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM enrollments WHERE program_id = $1 AND affiliate_org_id = $2)")
        .bind(program_id)
        .bind(org_id)
        .fetch_one(conn)
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
         parent_enrollment_id, depth, updated_at_micros, version) \
         VALUES ($1, $2, $3, $4, $5, NULLIF($6, ''), $7, $8, $9) \
         ON CONFLICT (enrollment_id) DO UPDATE SET status = EXCLUDED.status, \
         affiliate_org_name = EXCLUDED.affiliate_org_name, parent_enrollment_id = EXCLUDED.parent_enrollment_id, \
         depth = EXCLUDED.depth, updated_at_micros = EXCLUDED.updated_at_micros, version = EXCLUDED.version \
         WHERE (enrollments.version, enrollments.updated_at_micros) <= (EXCLUDED.version, EXCLUDED.updated_at_micros)",
    )
    .bind(&e.enrollment_id)
    .bind(&e.program_id)
    .bind(&e.affiliate_org_id)
    .bind(&e.affiliate_org_name)
    .bind(&e.status)
    .bind(&e.parent_enrollment_id)
    .bind(i32::try_from(e.depth).unwrap_or(1))
    .bind(e.updated_at_micros)
    .bind(i64::try_from(e.version).unwrap_or(i64::MAX))
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

/// The enrollments of `ids` that the read model has, by id.
pub async fn enrollments(conn: &mut PgConnection, ids: &[&str]) -> Result<HashMap<String, EnrollmentRow>, sqlx::Error> {
    let rows: Vec<EnrollmentRow> = sqlx::query_as(
        "SELECT enrollment_id, program_id, affiliate_org_id, affiliate_org_name, status, parent_enrollment_id \
         FROM enrollments WHERE enrollment_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|e| (e.enrollment_id.clone(), e)).collect())
}
