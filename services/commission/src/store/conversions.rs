//! Conversions as the ledger has seen them: first seen, approved, refunded, and their sale day.

use sqlx::PgConnection;
use std::collections::{HashMap, HashSet};

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
