//! Conversions, customer bindings, volume counters and clawbacks.

use crate::domain::trail::Trail;
use amba_proto::wire as pb;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use sqlx::types::Json;
use std::collections::HashMap;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConversionRow {
    pub conversion_id: String,
    pub program_id: String,
    pub project_id: String,
    pub external_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    pub attribution: String,
    pub enrollment_id: Option<String>,
    pub affiliate_org_id: Option<String>,
    pub code: Option<String>,
    pub touchpoint_id: Option<String>,
    pub subject_ref: Option<String>,
    pub customer_ref: Option<String>,
    pub reason: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub commission_minor: i64,
    pub commission_version: i32,
    pub commission_tier: i32,
    pub renewal: bool,
    pub customer_first_conversion_at: Option<DateTime<Utc>>,
    pub clawed_back_minor: i64,
    pub held_for_review: bool,
    pub fingerprint: String,
    pub attribution_model: String,
    pub attribution_precedence: String,
    pub attribution_version: i32,
    /// Comma-separated reason codes of a fraud hold; empty when not held.
    pub hold_reasons: String,
    pub sale_amount_minor: Option<i64>,
    pub sale_currency: Option<String>,
    pub fx_rate: Option<String>,
    pub fx_rate_date: Option<chrono::NaiveDate>,
    pub fx_source: Option<String>,
}

impl ConversionRow {
    pub fn to_proto(&self) -> pb::Conversion {
        pb::Conversion {
            conversion_id: self.conversion_id.clone(),
            program_id: self.program_id.clone(),
            project_id: self.project_id.clone(),
            external_id: self.external_id.clone(),
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
            status: self.status.clone(),
            attribution: self.attribution.clone(),
            enrollment_id: self.enrollment_id.clone().unwrap_or_default(),
            affiliate_org_id: self.affiliate_org_id.clone().unwrap_or_default(),
            code: self.code.clone().unwrap_or_default(),
            touchpoint_id: self.touchpoint_id.clone().unwrap_or_default(),
            subject_ref: self.subject_ref.clone().unwrap_or_default(),
            customer_ref: self.customer_ref.clone().unwrap_or_default(),
            reason: self.reason.clone().unwrap_or_default(),
            occurred_at_micros: self.occurred_at.timestamp_micros(),
            recorded_at_micros: self.recorded_at.timestamp_micros(),
            decided_at_micros: self.decided_at.map(|t| t.timestamp_micros()).unwrap_or_default(),
            commission_minor: self.commission_minor,
            commission_version: u32::try_from(self.commission_version).unwrap_or_default(),
            commission_tier: self.commission_tier,
            renewal: self.renewal,
            customer_first_conversion_at_micros: self
                .customer_first_conversion_at
                .map(|t| t.timestamp_micros())
                .unwrap_or_default(),
            clawed_back_minor: self.clawed_back_minor,
            held_for_review: self.held_for_review,
            attribution_model: self.attribution_model.clone(),
            attribution_precedence: self.attribution_precedence.clone(),
            attribution_version: u32::try_from(self.attribution_version).unwrap_or_default(),
            hold_reasons: self
                .hold_reasons
                .split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect(),
            sale_amount_minor: self.sale_amount_minor.unwrap_or_default(),
            sale_currency: self.sale_currency.clone().unwrap_or_default(),
            fx_rate: self.fx_rate.clone().unwrap_or_default(),
            fx_rate_date: self.fx_rate_date.map(|d| d.to_string()).unwrap_or_default(),
            fx_source: self.fx_source.clone().unwrap_or_default(),
        }
    }
}

const COLUMNS: &str = "conversion_id, program_id, project_id, external_id, amount_minor, currency, status, attribution, \
    enrollment_id, affiliate_org_id, code, touchpoint_id, subject_ref, customer_ref, reason, occurred_at, recorded_at, \
    decided_at, commission_minor, commission_version, commission_tier, renewal, customer_first_conversion_at, \
    clawed_back_minor, held_for_review, fingerprint, attribution_model, attribution_precedence, attribution_version, \
    hold_reasons, sale_amount_minor, sale_currency, fx_rate, fx_rate_date, fx_source";

macro_rules! select_conversions {
    ($tail:literal) => {
        concat!(
            "SELECT conversion_id, program_id, project_id, external_id, amount_minor, currency, status, attribution, \
             enrollment_id, affiliate_org_id, code, touchpoint_id, subject_ref, customer_ref, reason, occurred_at, recorded_at, \
             decided_at, commission_minor, commission_version, commission_tier, renewal, customer_first_conversion_at, \
             clawed_back_minor, held_for_review, fingerprint, attribution_model, attribution_precedence, attribution_version, \
             hold_reasons, sale_amount_minor, sale_currency, fx_rate, fx_rate_date, fx_source FROM conversions ",
            $tail
        )
    };
}

/// Natural key of a report.
pub type Key = (String, String, String);

/// Conversions already recorded under any of `keys`.
pub async fn existing(conn: &mut PgConnection, keys: &[Key]) -> Result<HashMap<Key, ConversionRow>, sqlx::Error> {
    let programs: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let projects: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let externals: Vec<&str> = keys.iter().map(|k| k.2.as_str()).collect();
    // One unique-index probe per key (a plain IN (...) may hash-join against the whole table).
    // The statement is assembled from the constant column list only (the trail stays behind).
    let rows: Vec<ConversionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT c.* FROM UNNEST($1::text[], $2::text[], $3::text[]) AS k(program_id, project_id, external_id) \
         CROSS JOIN LATERAL (SELECT {COLUMNS} FROM conversions x WHERE x.program_id = k.program_id \
           AND x.project_id = k.project_id AND x.external_id = k.external_id) c"
    )))
    .bind(&programs)
    .bind(&projects)
    .bind(&externals)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ((r.program_id.clone(), r.project_id.clone(), r.external_id.clone()), r))
        .collect())
}

/// A customer's first binding to an enrollment: `(program_id, customer_ref, enrollment_id, at)`.
pub type NewBinding = (String, String, String, DateTime<Utc>);

/// The unique index of a report's natural key `(program_id, project_id, external_id)`.
pub const NATURAL_KEY: &str = "conversions_program_id_project_id_external_id_key";

/// Writes a batch of new conversions, each with its decision trail (`trails[i]` is `rows[i]`'s),
/// the customer bindings they make and their outbox events, in ONE statement: one round trip,
/// and atomic on its own. A key another writer (a replica) committed meanwhile fails the whole
/// statement on [`NATURAL_KEY`] (unique violation), and nothing of it is written.
pub async fn insert_many(
    conn: &mut PgConnection,
    rows: &[ConversionRow],
    trails: &[Trail],
    bindings: &[NewBinding],
    events: &[amba_bus::events::OutboxEvent],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    // Columns are bound as borrowed slices: a report's strings are not copied to be sent.
    macro_rules! col {
        ($field:ident) => {
            rows.iter().map(|r| r.$field).collect::<Vec<_>>()
        };
    }
    macro_rules! text {
        ($field:ident) => {
            rows.iter().map(|r| r.$field.as_str()).collect::<Vec<_>>()
        };
    }
    macro_rules! optional_text {
        ($field:ident) => {
            rows.iter().map(|r| r.$field.as_deref()).collect::<Vec<_>>()
        };
    }
    let trails: Vec<String> = trails
        .iter()
        .map(|t| serde_json::to_string(t).unwrap_or_else(|_| "{}".to_owned()))
        .collect();
    let sql = format!(
        "WITH inserted AS (INSERT INTO conversions ({COLUMNS}, trail) SELECT * FROM UNNEST($1::text[], $2::text[], \
         $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], \
         $12::text[], $13::text[], $14::text[], $15::text[], $16::timestamptz[], $17::timestamptz[], $18::timestamptz[], \
         $19::bigint[], $20::int[], $21::int[], $22::bool[], $23::timestamptz[], $24::bigint[], $25::bool[], $26::text[], \
         $27::text[], $28::text[], $29::int[], $30::text[], $31::bigint[], $32::text[], $33::text[], $34::date[], \
         $35::text[], $36::text[]::json[])), \
         bound AS (INSERT INTO customer_bindings (program_id, customer_ref, enrollment_id, first_conversion_at) \
         SELECT * FROM UNNEST($37::text[], $38::text[], $39::text[], $40::timestamptz[]) ON CONFLICT DO NOTHING), \
         queued AS ({}) \
         SELECT 1",
        amba_bus::outbox::enqueue_step(41)
    );
    // The statement is assembled from constant text only.
    let query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(text!(conversion_id))
        .bind(text!(program_id))
        .bind(text!(project_id))
        .bind(text!(external_id))
        .bind(col!(amount_minor))
        .bind(text!(currency))
        .bind(text!(status))
        .bind(text!(attribution))
        .bind(optional_text!(enrollment_id))
        .bind(optional_text!(affiliate_org_id))
        .bind(optional_text!(code))
        .bind(optional_text!(touchpoint_id))
        .bind(optional_text!(subject_ref))
        .bind(optional_text!(customer_ref))
        .bind(optional_text!(reason))
        .bind(col!(occurred_at))
        .bind(col!(recorded_at))
        .bind(col!(decided_at))
        .bind(col!(commission_minor))
        .bind(col!(commission_version))
        .bind(col!(commission_tier))
        .bind(col!(renewal))
        .bind(col!(customer_first_conversion_at))
        .bind(col!(clawed_back_minor))
        .bind(col!(held_for_review))
        .bind(text!(fingerprint))
        .bind(text!(attribution_model))
        .bind(text!(attribution_precedence))
        .bind(col!(attribution_version))
        .bind(text!(hold_reasons))
        .bind(col!(sale_amount_minor))
        .bind(optional_text!(sale_currency))
        .bind(optional_text!(fx_rate))
        .bind(col!(fx_rate_date))
        .bind(optional_text!(fx_source))
        .bind(&trails)
        .bind(bindings.iter().map(|b| b.0.as_str()).collect::<Vec<_>>())
        .bind(bindings.iter().map(|b| b.1.as_str()).collect::<Vec<_>>())
        .bind(bindings.iter().map(|b| b.2.as_str()).collect::<Vec<_>>())
        .bind(bindings.iter().map(|b| b.3).collect::<Vec<_>>());
    amba_bus::outbox::bind_events(query, events).execute(conn).await?;
    Ok(())
}

/// Binds customers to enrollments; a customer already bound keeps its first binding.
pub async fn bind_customers(conn: &mut PgConnection, bindings: &[NewBinding]) -> Result<(), sqlx::Error> {
    if bindings.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO customer_bindings (program_id, customer_ref, enrollment_id, first_conversion_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[]) ON CONFLICT DO NOTHING",
    )
    .bind(bindings.iter().map(|b| b.0.clone()).collect::<Vec<_>>())
    .bind(bindings.iter().map(|b| b.1.clone()).collect::<Vec<_>>())
    .bind(bindings.iter().map(|b| b.2.clone()).collect::<Vec<_>>())
    .bind(bindings.iter().map(|b| b.3).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks and reads volume counters (creating missing ones), in key order to avoid deadlocks.
pub async fn lock_counters(conn: &mut PgConnection, keys: &[(String, String)]) -> Result<Counters, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let mut sorted = keys.to_vec();
    sorted.sort();
    sorted.dedup();
    let enrollments: Vec<String> = sorted.iter().map(|k| k.0.clone()).collect();
    let periods: Vec<String> = sorted.iter().map(|k| k.1.clone()).collect();
    sqlx::query(
        "INSERT INTO volume_counters (enrollment_id, period) SELECT * FROM UNNEST($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(&enrollments)
    .bind(&periods)
    .execute(&mut *conn)
    .await?;
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT enrollment_id, period, conversions, revenue_minor FROM volume_counters \
         WHERE (enrollment_id, period) IN (SELECT * FROM UNNEST($1::text[], $2::text[])) \
         ORDER BY enrollment_id, period FOR UPDATE",
    )
    .bind(&enrollments)
    .bind(&periods)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(e, p, c, r)| ((e, p), (c, r))).collect())
}

/// Volume per (enrollment, period): (approved conversions, their revenue in minor units).
pub type Counters = HashMap<(String, String), (i64, i64)>;

pub async fn write_counters(conn: &mut PgConnection, counters: &Counters) -> Result<(), sqlx::Error> {
    if counters.is_empty() {
        return Ok(());
    }
    let keys: Vec<&(String, String)> = counters.keys().collect();
    let values: Vec<&(i64, i64)> = keys.iter().map(|k| &counters[*k]).collect();
    sqlx::query(
        "UPDATE volume_counters v SET conversions = u.conversions, revenue_minor = u.revenue_minor \
         FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS u(enrollment_id, period, conversions, revenue_minor) \
         WHERE v.enrollment_id = u.enrollment_id AND v.period = u.period",
    )
    .bind(keys.iter().map(|k| k.0.clone()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1.clone()).collect::<Vec<_>>())
    .bind(values.iter().map(|v| v.0).collect::<Vec<_>>())
    .bind(values.iter().map(|v| v.1).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(
    conn: &mut PgConnection,
    conversion_id: &str,
    lock: bool,
) -> Result<Option<ConversionRow>, sqlx::Error> {
    let query = if lock {
        sqlx::query_as(select_conversions!("WHERE conversion_id = $1 FOR UPDATE"))
    } else {
        sqlx::query_as(select_conversions!("WHERE conversion_id = $1"))
    };
    query.bind(conversion_id).fetch_optional(conn).await
}

/// Sales waiting for their exchange rate after `after`, oldest first, locked (rows another
/// replica holds are skipped). One the owner rejected meanwhile stays as it is: unconverted,
/// without commission.
pub async fn waiting_for_rate(
    conn: &mut PgConnection,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ConversionRow>, sqlx::Error> {
    sqlx::query_as(select_conversions!(
        "WHERE hold_reasons LIKE '%fx_rate_missing%' AND status IN ('pending', 'unattributed') \
         AND ($1::text IS NULL OR conversion_id > $1) \
         ORDER BY conversion_id LIMIT $2 FOR UPDATE SKIP LOCKED"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Records a waiting sale's conversion into the program's currency and what followed from it.
pub async fn settle_rate(conn: &mut PgConnection, row: &ConversionRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE conversions SET amount_minor = $2, fx_rate = $3, fx_rate_date = $4, fx_source = $5, status = $6, \
         reason = $7, decided_at = $8, commission_minor = $9, commission_version = $10, commission_tier = $11, \
         held_for_review = $12, hold_reasons = $13 WHERE conversion_id = $1",
    )
    .bind(&row.conversion_id)
    .bind(row.amount_minor)
    .bind(&row.fx_rate)
    .bind(row.fx_rate_date)
    .bind(&row.fx_source)
    .bind(&row.status)
    .bind(&row.reason)
    .bind(row.decided_at)
    .bind(row.commission_minor)
    .bind(row.commission_version)
    .bind(row.commission_tier)
    .bind(row.held_for_review)
    .bind(&row.hold_reasons)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds the parts `trail` holds to a conversion's stored trail (a later decision's part, such
/// as the commission priced at an owner's approval, next to the attribution recorded on arrival).
pub async fn extend_trail(conn: &mut PgConnection, conversion_id: &str, trail: &Trail) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE conversions SET trail = (COALESCE(trail::jsonb, '{}'::jsonb) || $2::jsonb)::json WHERE conversion_id = $1",
    )
    .bind(conversion_id)
    .bind(Json(trail))
        .execute(conn)
        .await?;
    Ok(())
}

/// What the velocity and refund-rate checks ask about one affiliate in a program.
pub struct FraudQuery {
    pub enrollment_id: String,
    pub program_id: String,
    pub affiliate_org_id: String,
    /// How many of its latest conversions to look at for velocity (the limit per minute).
    pub velocity_window: i32,
    /// How many of its latest approved sales the refund rate counts.
    pub last_sales: i32,
}

/// Per enrollment: its conversions recorded in the minute before `now` (at most
/// `velocity_window`), and of its last `last_sales` approved sales, how many and how many refunded.
/// Two bounded index walks each (conversion ids are time-ordered), one statement.
pub async fn fraud_stats(
    conn: &mut PgConnection,
    queries: &[FraudQuery],
    now: DateTime<Utc>,
) -> Result<HashMap<String, (u32, u32, u32)>, sqlx::Error> {
    if queries.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT k.enrollment_id, \
           (SELECT count(*) FROM (SELECT c.recorded_at FROM conversions c WHERE c.affiliate_org_id = k.org \
              AND c.program_id = k.program_id ORDER BY c.conversion_id DESC LIMIT k.velocity_window) v \
            WHERE v.recorded_at >= $6 - INTERVAL '1 minute'), \
           r.sales, r.refunded \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int[], $5::int[]) \
           AS k(enrollment_id, program_id, org, velocity_window, last_sales) \
         CROSS JOIN LATERAL (SELECT count(*) AS sales, count(*) FILTER (WHERE x.clawed_back_minor > 0) AS refunded \
           FROM (SELECT c.clawed_back_minor FROM conversions c WHERE c.affiliate_org_id = k.org \
             AND c.program_id = k.program_id AND c.enrollment_id = k.enrollment_id \
             AND c.status IN ('approved', 'clawed_back') ORDER BY c.conversion_id DESC LIMIT k.last_sales) x) r",
    )
    .bind(queries.iter().map(|q| q.enrollment_id.as_str()).collect::<Vec<_>>())
    .bind(queries.iter().map(|q| q.program_id.as_str()).collect::<Vec<_>>())
    .bind(queries.iter().map(|q| q.affiliate_org_id.as_str()).collect::<Vec<_>>())
    .bind(queries.iter().map(|q| q.velocity_window).collect::<Vec<_>>())
    .bind(queries.iter().map(|q| q.last_sales).collect::<Vec<_>>())
    .bind(now)
    .fetch_all(conn)
    .await?;
    let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
    Ok(rows
        .into_iter()
        .map(|(id, minute, sales, refunded)| (id, (count(minute), count(sales), count(refunded))))
        .collect())
}

/// A conversion's stored trail; `None` for conversions recorded before trails were kept.
pub async fn trail(conn: &mut PgConnection, conversion_id: &str) -> Result<Option<Trail>, sqlx::Error> {
    let trail: Option<Option<Json<Trail>>> =
        sqlx::query_scalar("SELECT trail FROM conversions WHERE conversion_id = $1")
            .bind(conversion_id)
            .fetch_optional(conn)
            .await?;
    Ok(trail.flatten().map(|t| t.0))
}

/// Records an owner's decision (and, for an approval, the commission decided).
pub async fn decide(conn: &mut PgConnection, row: &ConversionRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE conversions SET status = $2, reason = $3, decided_at = $4, commission_minor = $5, commission_version = $6, \
         commission_tier = $7, held_for_review = $8 WHERE conversion_id = $1",
    )
    .bind(&row.conversion_id)
    .bind(&row.status)
    .bind(&row.reason)
    .bind(row.decided_at)
    .bind(row.commission_minor)
    .bind(row.commission_version)
    .bind(row.commission_tier)
    .bind(row.held_for_review)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records an owner's assignment of an unattributed conversion (and the decision it led to).
pub async fn assign(conn: &mut PgConnection, row: &ConversionRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE conversions SET status = $2, attribution = $3, enrollment_id = $4, affiliate_org_id = $5, code = $6, \
         reason = $7, decided_at = $8, commission_minor = $9, commission_version = $10, commission_tier = $11, \
         renewal = $12, customer_first_conversion_at = $13 WHERE conversion_id = $1 AND status = 'unattributed'",
    )
    .bind(&row.conversion_id)
    .bind(&row.status)
    .bind(&row.attribution)
    .bind(&row.enrollment_id)
    .bind(&row.affiliate_org_id)
    .bind(&row.code)
    .bind(&row.reason)
    .bind(row.decided_at)
    .bind(row.commission_minor)
    .bind(row.commission_version)
    .bind(row.commission_tier)
    .bind(row.renewal)
    .bind(row.customer_first_conversion_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A page of a program's conversions by sale time in `[from, to)`, after `after`
/// (a previous page's last `(occurred_at, conversion_id)`).
pub async fn export_page(
    conn: &mut PgConnection,
    program_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    after: Option<(DateTime<Utc>, &str)>,
    limit: i64,
) -> Result<Vec<ConversionRow>, sqlx::Error> {
    sqlx::query_as(select_conversions!(
        "WHERE program_id = $1 AND occurred_at >= $2 AND occurred_at < $3 \
         AND ($4::timestamptz IS NULL OR (occurred_at, conversion_id) > ($4, $5)) \
         ORDER BY occurred_at, conversion_id LIMIT $6"
    ))
    .bind(program_id)
    .bind(from)
    .bind(to)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1).unwrap_or_default())
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub struct ListFilter<'a> {
    pub program_id: Option<&'a str>,
    pub affiliate_org_id: Option<&'a str>,
    pub status: Option<&'a str>,
}

pub async fn list(
    conn: &mut PgConnection,
    f: &ListFilter<'_>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<ConversionRow>, sqlx::Error> {
    sqlx::query_as(select_conversions!(
        "WHERE ($1::text IS NULL OR program_id = $1) AND ($2::text IS NULL OR affiliate_org_id = $2) \
         AND ($3::text IS NULL OR status = $3 OR ($3 = 'held' AND status = 'pending' AND held_for_review)) AND ($4::text IS NULL OR conversion_id > $4) ORDER BY conversion_id LIMIT $5"
    ))
    .bind(f.program_id)
    .bind(f.affiliate_org_id)
    .bind(f.status)
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await
}

/// A clawback already recorded under this idempotency key: (clawback_id, refund, reason).
pub async fn clawback_by_key(
    conn: &mut PgConnection,
    conversion_id: &str,
    key: &str,
) -> Result<Option<(String, i64, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT clawback_id, refund_minor, reason FROM clawbacks WHERE conversion_id = $1 AND idempotency_key = $2",
    )
    .bind(conversion_id)
    .bind(key)
    .fetch_optional(conn)
    .await
}

pub async fn insert_clawback(
    conn: &mut PgConnection,
    clawback_id: &str,
    conversion_id: &str,
    refund_minor: i64,
    reason: &str,
    key: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO clawbacks (clawback_id, conversion_id, refund_minor, reason, idempotency_key) VALUES ($1, $2, $3, $4, $5)")
        .bind(clawback_id)
        .bind(conversion_id)
        .bind(refund_minor)
        .bind(reason)
        .bind(key)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE conversions SET clawed_back_minor = clawed_back_minor + $2, \
         status = CASE WHEN clawed_back_minor + $2 >= amount_minor THEN 'clawed_back' ELSE status END WHERE conversion_id = $1",
    )
    .bind(conversion_id)
    .bind(refund_minor)
    .execute(conn)
    .await?;
    Ok(())
}
