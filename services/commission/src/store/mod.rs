//! SQL of the commission service: read models, the commission sub-ledger, clawbacks, stats.
//! Ledger postings themselves are written by [`ledger`].

pub mod export;
pub mod ledger;

use crate::domain::ledger::CommissionState;
use amba_proto::wire as pb;
use sqlx::PgConnection;
use std::collections::{BTreeMap, HashMap, HashSet};

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

// ---- conversions seen ----

/// A conversion as the events of one batch show it: as first seen, with its latest status.
#[derive(Debug, Clone)]
pub struct SeenConversion {
    pub conversion_id: String,
    pub program_id: String,
    pub enrollment_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    pub counted_day: chrono::NaiveDate,
    /// An attributed approval of it is being booked.
    pub approved: bool,
    /// How it was attributed: code | touchpoint | customer | none.
    pub attribution: String,
    /// A sale by a click as its latest status says (see [`counts_as_click_sale`]).
    pub click_counted: bool,
}

/// Whether a conversion counts in the conversion rate's numerator: attributed by a click, and
/// neither rejected nor unattributed.
pub fn counts_as_click_sale(attribution: &str, status: &str, enrollment_id: &str) -> bool {
    attribution == "touchpoint" && !enrollment_id.is_empty() && !matches!(status, "rejected" | "unattributed")
}

/// Where a conversion's figures go in `daily_stats`: its row of the sale's day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleRow {
    pub program_id: String,
    pub enrollment_id: String,
    pub day: chrono::NaiveDate,
}

/// What [`remember_conversions`] found new.
#[derive(Debug, Default)]
pub struct Remembered {
    /// Conversions no event named before: counted on their sale day.
    pub first_seen: HashSet<String>,
    /// Conversions approved now and never before: accrued (once).
    pub first_approved: HashSet<String>,
    /// Every conversion of the batch: its stored row of the sale's day.
    pub sale_rows: HashMap<String, SaleRow>,
    /// Conversions whose click-sale count changed: +1 newly counted, −1 no longer (rejected).
    pub click_changes: Vec<(String, i64)>,
}

/// Records each conversion the first time any event names it (later events only update its
/// status) and flags the approved ones, in one statement. `seen` holds each id once.
pub async fn remember_conversions(conn: &mut PgConnection, seen: &[SeenConversion]) -> Result<Remembered, sqlx::Error> {
    if seen.is_empty() {
        return Ok(Remembered::default());
    }
    let column = |f: fn(&SeenConversion) -> &str| seen.iter().map(f).collect::<Vec<&str>>();
    let amounts: Vec<i64> = seen.iter().map(|c| c.amount_minor).collect();
    let days: Vec<chrono::NaiveDate> = seen.iter().map(|c| c.counted_day).collect();
    let approved: Vec<bool> = seen.iter().map(|c| c.approved).collect();
    let click_counted: Vec<bool> = seen.iter().map(|c| c.click_counted).collect();
    // Every part of one statement reads the same snapshot: `before` is the rows as they were.
    // A rejection is final: a rejected conversion never counts as a click sale again.
    let rows: Vec<RememberedRow> = sqlx::query_as(
        "WITH input AS ( \
           SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], \
                                $7::date[], $8::bool[], $9::text[], $10::bool[]) \
             AS t(conversion_id, program_id, enrollment_id, amount_minor, currency, status, counted_day, approved, \
                  attribution, click_counted)), \
         before AS (SELECT c.conversion_id, c.approved, c.click_counted \
                    FROM conversions c JOIN input USING (conversion_id)), \
         upsert AS ( \
           INSERT INTO conversions (conversion_id, program_id, enrollment_id, amount_minor, currency, status, \
                                    counted_day, approved, attribution, click_counted) \
           SELECT * FROM input \
           ON CONFLICT (conversion_id) DO UPDATE \
             SET status = EXCLUDED.status, approved = conversions.approved OR EXCLUDED.approved, \
                 attribution = COALESCE(NULLIF(EXCLUDED.attribution, ''), conversions.attribution), \
                 click_counted = EXCLUDED.click_counted AND conversions.status <> 'rejected' \
           RETURNING conversion_id, (xmax = 0) AS inserted, approved, click_counted, program_id, enrollment_id, \
                     counted_day) \
         SELECT u.conversion_id, u.inserted, u.approved AND NOT coalesce(b.approved, false) AS first_approval, \
                (u.click_counted::int - coalesce(b.click_counted, false)::int)::int8 AS click_change, \
                u.program_id, u.enrollment_id, u.counted_day \
         FROM upsert u LEFT JOIN before b USING (conversion_id)",
    )
    .bind(column(|c| &c.conversion_id))
    .bind(column(|c| &c.program_id))
    .bind(column(|c| &c.enrollment_id))
    .bind(&amounts)
    .bind(column(|c| &c.currency))
    .bind(column(|c| &c.status))
    .bind(&days)
    .bind(&approved)
    .bind(column(|c| &c.attribution))
    .bind(&click_counted)
    .fetch_all(conn)
    .await?;
    let mut remembered = Remembered::default();
    for row in rows {
        if row.first_approval {
            remembered.first_approved.insert(row.conversion_id.clone());
        }
        if row.inserted {
            remembered.first_seen.insert(row.conversion_id.clone());
        }
        if row.click_change != 0 {
            remembered
                .click_changes
                .push((row.conversion_id.clone(), row.click_change));
        }
        remembered.sale_rows.insert(
            row.conversion_id,
            SaleRow {
                program_id: row.program_id,
                enrollment_id: row.enrollment_id,
                day: row.counted_day,
            },
        );
    }
    Ok(remembered)
}

#[derive(sqlx::FromRow)]
struct RememberedRow {
    conversion_id: String,
    inserted: bool,
    first_approval: bool,
    click_change: i64,
    program_id: String,
    enrollment_id: String,
    counted_day: chrono::NaiveDate,
}

pub async fn conversion_approved(conn: &mut PgConnection, conversion_id: &str) -> Result<Option<bool>, sqlx::Error> {
    let row: Option<(bool,)> = sqlx::query_as("SELECT approved FROM conversions WHERE conversion_id = $1")
        .bind(conversion_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|r| r.0))
}

/// A refunded conversion as [`set_refunded`] found it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Refunded {
    pub program_id: String,
    pub enrollment_id: String,
    pub counted_day: chrono::NaiveDate,
    pub approved: bool,
    /// The refunded total before this refund.
    pub before_minor: i64,
    /// The refunded total now (never lowered by a refund applied out of order).
    pub after_minor: i64,
}

/// Raises the conversion's refunded total to `total`; `None` when the conversion was never seen.
pub async fn set_refunded(
    conn: &mut PgConnection,
    conversion_id: &str,
    total: i64,
) -> Result<Option<Refunded>, sqlx::Error> {
    sqlx::query_as(
        "WITH before AS (SELECT conversion_id, refunded_minor FROM conversions WHERE conversion_id = $1 FOR UPDATE) \
         UPDATE conversions c SET refunded_minor = GREATEST(c.refunded_minor, $2) FROM before b \
         WHERE c.conversion_id = b.conversion_id \
         RETURNING c.program_id, c.enrollment_id, c.counted_day, c.approved, b.refunded_minor AS before_minor, \
                   c.refunded_minor AS after_minor",
    )
    .bind(conversion_id)
    .bind(total)
    .fetch_optional(conn)
    .await
}

/// The row of the sale's day of each conversion of `ids` that was seen.
pub async fn sale_rows(conn: &mut PgConnection, ids: &[&str]) -> Result<HashMap<String, SaleRow>, sqlx::Error> {
    let rows: Vec<(String, String, String, chrono::NaiveDate)> = sqlx::query_as(
        "SELECT conversion_id, program_id, enrollment_id, counted_day FROM conversions WHERE conversion_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, program_id, enrollment_id, day)| {
            (
                id,
                SaleRow {
                    program_id,
                    enrollment_id,
                    day,
                },
            )
        })
        .collect())
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

/// A commission to insert: its hold ends at `release_at_micros`; `released` when it has no hold
/// (then nothing of it is held).
#[derive(Debug, Clone)]
pub struct CommissionInsert {
    pub row: NewCommission,
    pub release_at_micros: i64,
    pub released: bool,
}

/// Inserts the commission rows; returns the ids inserted (an existing row was booked before).
pub async fn insert_commissions(
    conn: &mut PgConnection,
    rows: &[CommissionInsert],
) -> Result<HashSet<String>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let text = |f: fn(&NewCommission) -> &str| rows.iter().map(|c| f(&c.row)).collect::<Vec<&str>>();
    let number = |f: fn(&NewCommission) -> i64| rows.iter().map(|c| f(&c.row)).collect::<Vec<i64>>();
    let int = |f: fn(&NewCommission) -> i32| rows.iter().map(|c| f(&c.row)).collect::<Vec<i32>>();
    let sources: Vec<Option<&str>> = rows.iter().map(|c| c.row.source_commission_id.as_deref()).collect();
    let rates: Vec<Option<i32>> = rows.iter().map(|c| c.row.rate_bps).collect();
    let decided: Vec<chrono::DateTime<chrono::Utc>> = rows.iter().map(|c| timestamp(c.row.decided_at_micros)).collect();
    let release_at: Vec<chrono::DateTime<chrono::Utc>> = rows.iter().map(|c| timestamp(c.release_at_micros)).collect();
    let released: Vec<bool> = rows.iter().map(|c| c.released).collect();
    let inserted: Vec<(String,)> = sqlx::query_as(
        "INSERT INTO commissions (commission_id, conversion_id, program_id, enrollment_id, source_enrollment_id, level, \
         source_commission_id, currency, sale_minor, amount_minor, rate_bps, commission_version, commission_tier, \
         decided_at, release_at, released_at, held_minor) \
         SELECT id, conversion, program, enrollment, source_enrollment, level, source, currency, sale, amount, rate, \
         version, tier, decided, release_at, CASE WHEN released THEN now() END, CASE WHEN released THEN 0 ELSE amount END \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[], $8::text[], \
         $9::bigint[], $10::bigint[], $11::int[], $12::int[], $13::int[], $14::timestamptz[], $15::timestamptz[], \
         $16::bool[]) AS c(id, conversion, program, enrollment, source_enrollment, level, source, currency, sale, \
         amount, rate, version, tier, decided, release_at, released) \
         ON CONFLICT DO NOTHING RETURNING commission_id",
    )
    .bind(text(|c| &c.commission_id))
    .bind(text(|c| &c.conversion_id))
    .bind(text(|c| &c.program_id))
    .bind(text(|c| &c.enrollment_id))
    .bind(text(|c| &c.source_enrollment_id))
    .bind(int(|c| c.level))
    .bind(&sources)
    .bind(text(|c| &c.currency))
    .bind(number(|c| c.sale_minor))
    .bind(number(|c| c.amount_minor))
    .bind(&rates)
    .bind(int(|c| c.commission_version))
    .bind(int(|c| c.commission_tier))
    .bind(&decided)
    .bind(&release_at)
    .bind(&released)
    .fetch_all(conn)
    .await?;
    Ok(inserted.into_iter().map(|(id,)| id).collect())
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

/// The columns of [`CommissionRow`].
pub const COMMISSION_COLUMNS: &str = "commission_id, program_id, enrollment_id, level, currency, sale_minor, amount_minor, \
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

/// Up to `limit` commissions whose hold ended by `now`, locked; rows another transaction holds
/// are skipped (replicas of the sweep never take the same row).
/// The programs with commissions whose hold ended at or before `now`.
pub async fn programs_with_due_commissions(
    conn: &mut PgConnection,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT DISTINCT program_id FROM commissions WHERE released_at IS NULL AND release_at <= $1")
        .bind(now)
        .fetch_all(conn)
        .await
}

/// Up to `limit` commissions of `programs` whose hold ended, locked (skipping rows another
/// transaction holds).
pub async fn due_commissions(
    conn: &mut PgConnection,
    programs: &[String],
    now: chrono::DateTime<chrono::Utc>,
    limit: i64,
) -> Result<Vec<CommissionRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COMMISSION_COLUMNS} FROM commissions WHERE released_at IS NULL AND release_at <= $1 \
         AND program_id = ANY($3) ORDER BY release_at LIMIT $2 FOR UPDATE SKIP LOCKED"
    )))
    .bind(now)
    .bind(limit)
    .bind(programs)
    .fetch_all(conn)
    .await
}

/// How a transaction takes a program's ledger lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LedgerLock {
    /// Bookings and hold releases: they lock stats and balance rows in key order, so any number
    /// of them run side by side.
    Shared,
    /// Clawbacks: they lock balance rows as they go (a balance must be read before the reversal
    /// is known), so they run alone in their program.
    Exclusive,
}

/// Takes the ledger lock (a transaction-scoped advisory lock) of each program, all in key order
/// so that no two transactions wait on each other in a circle. A program named twice gets the
/// stronger mode.
pub async fn lock_programs(conn: &mut PgConnection, locks: &[(&str, LedgerLock)]) -> Result<(), sqlx::Error> {
    if locks.is_empty() {
        return Ok(());
    }
    let programs: Vec<&str> = locks.iter().map(|(program, _)| *program).collect();
    let exclusive: Vec<bool> = locks.iter().map(|(_, mode)| *mode == LedgerLock::Exclusive).collect();
    // 1_936 ("ledger"): this lock's class among the database's advisory locks.
    sqlx::query(
        "SELECT CASE WHEN exclusive THEN pg_advisory_xact_lock(1936, key) \
                ELSE pg_advisory_xact_lock_shared(1936, key) END \
         FROM (SELECT hashtext(program) AS key, bool_or(exclusive) AS exclusive \
               FROM UNNEST($1::text[], $2::bool[]) AS t(program, exclusive) GROUP BY 1 ORDER BY 1) locks",
    )
    .bind(&programs)
    .bind(&exclusive)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks the commissions released: nothing of them is held any more.
pub async fn mark_released(conn: &mut PgConnection, ids: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE commissions SET held_minor = 0, released_at = now() WHERE commission_id = ANY($1)")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
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
    pub click_conversions: i64,
    pub approved: i64,
    pub clawed_back: i64,
    pub revenue_minor: i64,
    pub commission_minor: i64,
    pub paid_minor: i64,
    pub clawed_back_minor: i64,
    pub refunded_minor: i64,
}

impl std::ops::AddAssign<&StatsBump> for StatsBump {
    fn add_assign(&mut self, other: &StatsBump) {
        self.clicks += other.clicks;
        self.conversions += other.conversions;
        self.click_conversions += other.click_conversions;
        self.approved += other.approved;
        self.clawed_back += other.clawed_back;
        self.revenue_minor += other.revenue_minor;
        self.commission_minor += other.commission_minor;
        self.paid_minor += other.paid_minor;
        self.clawed_back_minor += other.clawed_back_minor;
        self.refunded_minor += other.refunded_minor;
    }
}

/// One row of `daily_stats`: (program, enrollment, day).
pub type StatsKey = (String, String, chrono::NaiveDate);

/// Figures to add to `daily_stats`, summed per row first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsBumps(pub BTreeMap<StatsKey, StatsBump>);

impl StatsBumps {
    pub fn add(&mut self, program_id: &str, enrollment_id: &str, day: chrono::NaiveDate, bump: &StatsBump) {
        let key = (program_id.to_owned(), enrollment_id.to_owned(), day);
        *self.0.entry(key).or_default() += bump;
    }
}

/// Adds to one enrollment's row of the day (the rollup analytics read, never recomputed).
pub async fn bump_stats(
    conn: &mut PgConnection,
    program_id: &str,
    enrollment_id: &str,
    at_micros: i64,
    b: &StatsBump,
) -> Result<(), sqlx::Error> {
    let mut bumps = StatsBumps::default();
    bumps.add(program_id, enrollment_id, day_of(at_micros), b);
    bump_all_stats(conn, &bumps).await
}

/// Adds every row's figures with one statement (rows in key order: a stable lock order).
pub async fn bump_all_stats(conn: &mut PgConnection, bumps: &StatsBumps) -> Result<(), sqlx::Error> {
    if bumps.0.is_empty() {
        return Ok(());
    }
    let rows = &bumps.0;
    let key = |f: fn(&StatsKey) -> &str| rows.keys().map(f).collect::<Vec<&str>>();
    let days: Vec<chrono::NaiveDate> = rows.keys().map(|k| k.2).collect();
    let figure = |f: fn(&StatsBump) -> i64| rows.values().map(f).collect::<Vec<i64>>();
    sqlx::query(
        "INSERT INTO daily_stats AS s (program_id, enrollment_id, day, clicks, conversions, approved, revenue_minor, \
         commission_minor, paid_minor, clawed_back_minor, refunded_minor, click_conversions, clawed_back) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::date[], $4::bigint[], $5::bigint[], $6::bigint[], \
         $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[]) \
         ON CONFLICT (program_id, enrollment_id, day) DO UPDATE SET clicks = s.clicks + EXCLUDED.clicks, \
         conversions = s.conversions + EXCLUDED.conversions, approved = s.approved + EXCLUDED.approved, \
         click_conversions = s.click_conversions + EXCLUDED.click_conversions, \
         clawed_back = s.clawed_back + EXCLUDED.clawed_back, \
         revenue_minor = s.revenue_minor + EXCLUDED.revenue_minor, \
         commission_minor = s.commission_minor + EXCLUDED.commission_minor, \
         paid_minor = s.paid_minor + EXCLUDED.paid_minor, \
         clawed_back_minor = s.clawed_back_minor + EXCLUDED.clawed_back_minor, \
         refunded_minor = s.refunded_minor + EXCLUDED.refunded_minor",
    )
    .bind(key(|k| &k.0))
    .bind(key(|k| &k.1))
    .bind(&days)
    .bind(figure(|b| b.clicks))
    .bind(figure(|b| b.conversions))
    .bind(figure(|b| b.approved))
    .bind(figure(|b| b.revenue_minor))
    .bind(figure(|b| b.commission_minor))
    .bind(figure(|b| b.paid_minor))
    .bind(figure(|b| b.clawed_back_minor))
    .bind(figure(|b| b.refunded_minor))
    .bind(figure(|b| b.click_conversions))
    .bind(figure(|b| b.clawed_back))
    .execute(conn)
    .await?;
    Ok(())
}
