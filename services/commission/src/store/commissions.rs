//! The commission sub-ledger: commissions, their holds and release, and the per-program ledger lock.

use super::*;
use crate::domain::ledger::CommissionState;
use sqlx::PgConnection;
use std::collections::HashSet;

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
