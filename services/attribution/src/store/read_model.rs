//! The read model of programs, rule versions, enrollments and codes, kept from enrollment's
//! events; and the bulk lookups the report path makes against it.

use crate::domain::policy::{Model, Policy, Precedence, Touch};
use crate::domain::report::{Binding, EnrollmentFacts, ProgramFacts};
use amba_proto::wire as pb;
use amba_rules::FraudChecks;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use sqlx::types::Json;
use std::collections::{HashMap, HashSet};

/// Upserts a program snapshot unless a newer one (by version, then time) is already stored;
/// records its rule version.
pub async fn apply_program(conn: &mut PgConnection, p: &pb::Program) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO programs_view (program_id, owner_org_id, currency, status, approval_mode, attribution_window_days, \
         landing_url, commission_version, version_micros, version, attribution_model, attribution_precedence, \
         attribution_version, fraud_checks) \
         VALUES ($1, $2, $3, $4, $5, $6, NULLIF($7, ''), $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (program_id) DO UPDATE SET owner_org_id = EXCLUDED.owner_org_id, currency = EXCLUDED.currency, \
         status = EXCLUDED.status, approval_mode = EXCLUDED.approval_mode, \
         attribution_window_days = EXCLUDED.attribution_window_days, landing_url = EXCLUDED.landing_url, \
         commission_version = EXCLUDED.commission_version, version_micros = EXCLUDED.version_micros, \
         version = EXCLUDED.version, attribution_model = EXCLUDED.attribution_model, \
         attribution_precedence = EXCLUDED.attribution_precedence, attribution_version = EXCLUDED.attribution_version, \
         fraud_checks = EXCLUDED.fraud_checks \
         WHERE (programs_view.version, programs_view.version_micros) <= (EXCLUDED.version, EXCLUDED.version_micros)",
    )
    .bind(&p.program_id)
    .bind(&p.owner_org_id)
    .bind(&p.currency)
    .bind(&p.status)
    .bind(&p.approval_mode)
    .bind(i32::try_from(p.attribution_window_days).unwrap_or(i32::MAX))
    .bind(&p.landing_url)
    .bind(i32::try_from(p.commission_version).unwrap_or(i32::MAX))
    .bind(p.updated_at_micros)
    .bind(i64::try_from(p.version).unwrap_or(i64::MAX))
    // Snapshots from before attribution policies existed carry none: the default policy.
    .bind(Model::parse(&p.attribution_model).as_str())
    .bind(Precedence::parse(&p.attribution_precedence).as_str())
    .bind(i32::try_from(p.attribution_version.max(1)).unwrap_or(i32::MAX))
    .bind(Json(FraudChecks::from_stored(&p.fraud_checks_json).to_json()))
    .execute(&mut *conn)
    .await?;
    let rule: serde_json::Value = serde_json::from_str(&p.commission_json).unwrap_or(serde_json::Value::Null);
    // A version takes effect with the earliest snapshot that carries it (events may arrive late).
    sqlx::query(
        "INSERT INTO rule_versions (program_id, version, rule, effective_at) VALUES ($1, $2, $3, \
         CASE WHEN $4 > 0 THEN TIMESTAMPTZ 'epoch' + $4 * INTERVAL '1 microsecond' END) \
         ON CONFLICT (program_id, version) DO UPDATE SET effective_at = LEAST(rule_versions.effective_at, EXCLUDED.effective_at) \
         WHERE rule_versions.effective_at IS NOT NULL",
    )
    .bind(&p.program_id)
    .bind(i32::try_from(p.commission_version).unwrap_or(i32::MAX))
    .bind(Json(rule))
    .bind(p.updated_at_micros)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn apply_enrollment(
    conn: &mut PgConnection,
    e: &pb::Enrollment,
    emails: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO enrollments_view (enrollment_id, program_id, affiliate_org_id, status, affiliate_emails, version_micros, \
         version) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (enrollment_id) DO UPDATE SET status = EXCLUDED.status, \
         affiliate_emails = EXCLUDED.affiliate_emails, version_micros = EXCLUDED.version_micros, version = EXCLUDED.version \
         WHERE (enrollments_view.version, enrollments_view.version_micros) <= (EXCLUDED.version, EXCLUDED.version_micros)",
    )
    .bind(&e.enrollment_id)
    .bind(&e.program_id)
    .bind(&e.affiliate_org_id)
    .bind(&e.status)
    .bind(emails)
    .bind(e.updated_at_micros)
    .bind(i64::try_from(e.version).unwrap_or(i64::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

/// Remembers that `org_id` called from `address` (the latest sighting wins), and forgets the
/// org's addresses not seen for longer than the self-referral check looks back: an org keeps
/// only the addresses of the last 30 days.
pub async fn apply_caller_seen(conn: &mut PgConnection, seen: &pb::CallerSeen) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM caller_addresses WHERE org_id = $1 AND last_seen_at < now() - INTERVAL '30 days'")
        .bind(&seen.org_id)
        .execute(&mut *conn)
        .await?;
    let at = DateTime::from_timestamp_micros(seen.seen_at_micros).unwrap_or_else(Utc::now);
    sqlx::query(
        "INSERT INTO caller_addresses (org_id, address, last_seen_at) VALUES ($1, $2, $3) \
         ON CONFLICT (org_id, address) DO UPDATE SET last_seen_at = GREATEST(caller_addresses.last_seen_at, EXCLUDED.last_seen_at)",
    )
    .bind(&seen.org_id)
    .bind(&seen.address)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Which `(org_id, address)` pairs were seen since `since`, and when last.
pub async fn callers_seen(
    conn: &mut PgConnection,
    pairs: &[(String, String)],
    since: DateTime<Utc>,
) -> Result<HashMap<(String, String), DateTime<Utc>>, sqlx::Error> {
    if pairs.is_empty() {
        return Ok(HashMap::new());
    }
    let (orgs, addresses): (Vec<&str>, Vec<&str>) = pairs.iter().map(|(o, a)| (o.as_str(), a.as_str())).unzip();
    let rows: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT c.org_id, c.address, c.last_seen_at FROM UNNEST($1::text[], $2::text[]) AS k(org_id, address) \
         JOIN caller_addresses c ON c.org_id = k.org_id AND c.address = k.address WHERE c.last_seen_at >= $3",
    )
    .bind(orgs)
    .bind(addresses)
    .bind(since)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(o, a, at)| ((o, a), at)).collect())
}

/// Codes only ever go active → retired, so a retirement always wins over a late issue.
pub async fn apply_code(conn: &mut PgConnection, c: &pb::CodeChanged) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO codes_view (code, enrollment_id, program_id, status) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (code) DO UPDATE SET status = 'retired' WHERE EXCLUDED.status = 'retired'",
    )
    .bind(&c.code)
    .bind(&c.enrollment_id)
    .bind(&c.program_id)
    .bind(&c.status)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct ProgramRow {
    program_id: String,
    owner_org_id: String,
    currency: String,
    status: String,
    approval_mode: String,
    attribution_window_days: i32,
    attribution_model: String,
    attribution_precedence: String,
    attribution_version: i32,
    fraud_checks: Json<serde_json::Value>,
    commission_version: i32,
    landing_url: Option<String>,
}

impl From<ProgramRow> for ProgramFacts {
    fn from(r: ProgramRow) -> Self {
        ProgramFacts {
            program_id: r.program_id,
            owner_org_id: r.owner_org_id,
            currency: r.currency,
            status: r.status,
            auto_approve: r.approval_mode == "auto",
            policy: Policy {
                model: Model::parse(&r.attribution_model),
                precedence: Precedence::parse(&r.attribution_precedence),
                window_days: r.attribution_window_days,
                version: r.attribution_version,
            },
            fraud: serde_json::from_value(r.fraud_checks.0).unwrap_or_default(),
            commission_version: r.commission_version,
            landing_url: r.landing_url,
        }
    }
}

pub async fn programs(conn: &mut PgConnection, ids: &[String]) -> Result<HashMap<String, ProgramFacts>, sqlx::Error> {
    let rows: Vec<ProgramRow> = sqlx::query_as(
        "SELECT program_id, owner_org_id, currency, status, approval_mode, attribution_window_days, attribution_model, \
         attribution_precedence, attribution_version, fraud_checks, commission_version, landing_url \
         FROM programs_view WHERE program_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.program_id.clone(), r.into())).collect())
}

/// The rule version in force at `at`: the latest one that took effect by then (versions from
/// before effective times were recorded count as in force); for a sale before the first
/// version, the first; `current` when none is known.
pub async fn version_at(
    conn: &mut PgConnection,
    program_id: &str,
    at: DateTime<Utc>,
    current: i32,
) -> Result<i32, sqlx::Error> {
    let version: Option<i32> = sqlx::query_scalar(
        "SELECT COALESCE( \
           (SELECT max(version) FROM rule_versions WHERE program_id = $1 AND version <= $3 \
              AND (effective_at IS NULL OR effective_at <= $2)), \
           (SELECT min(version) FROM rule_versions WHERE program_id = $1))",
    )
    .bind(program_id)
    .bind(at)
    .bind(current)
    .fetch_optional(conn)
    .await?;
    Ok(version.unwrap_or(current))
}

pub async fn rule(
    conn: &mut PgConnection,
    program_id: &str,
    version: i32,
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    let rule: Option<Json<serde_json::Value>> =
        sqlx::query_scalar("SELECT rule FROM rule_versions WHERE program_id = $1 AND version = $2")
            .bind(program_id)
            .bind(version)
            .fetch_optional(conn)
            .await?;
    Ok(rule.map(|r| r.0))
}

#[derive(sqlx::FromRow)]
struct EnrollmentRow {
    enrollment_id: String,
    program_id: String,
    affiliate_org_id: String,
    status: String,
    affiliate_emails: Vec<String>,
}

impl From<EnrollmentRow> for EnrollmentFacts {
    fn from(r: EnrollmentRow) -> Self {
        EnrollmentFacts {
            enrollment_id: r.enrollment_id,
            program_id: r.program_id,
            affiliate_org_id: r.affiliate_org_id,
            status: r.status,
            emails: r.affiliate_emails,
        }
    }
}

pub async fn enrollment(conn: &mut PgConnection, enrollment_id: &str) -> Result<Option<EnrollmentFacts>, sqlx::Error> {
    let row: Option<EnrollmentRow> = sqlx::query_as(
        "SELECT enrollment_id, program_id, affiliate_org_id, status, affiliate_emails FROM enrollments_view WHERE enrollment_id = $1",
    )
    .bind(enrollment_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Into::into))
}

/// Which of the `(program_id, org_id)` pairs have an enrollment (any status), in one query.
pub async fn enrolled(
    conn: &mut PgConnection,
    pairs: &[(String, String)],
) -> Result<HashSet<(String, String)>, sqlx::Error> {
    let (programs, orgs): (Vec<&str>, Vec<&str>) = pairs.iter().map(|(p, o)| (p.as_str(), o.as_str())).unzip();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT e.program_id, e.affiliate_org_id FROM UNNEST($1::text[], $2::text[]) AS k(program_id, org_id) \
         JOIN enrollments_view e ON e.program_id = k.program_id AND e.affiliate_org_id = k.org_id",
    )
    .bind(programs)
    .bind(orgs)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// A code and, when known, its enrollment.
pub struct CodeRow {
    pub program_id: String,
    pub status: String,
    pub enrollment: Option<EnrollmentFacts>,
}

pub async fn codes(conn: &mut PgConnection, codes: &[String]) -> Result<HashMap<String, CodeRow>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        code: String,
        program_id: String,
        code_status: String,
        enrollment_id: Option<String>,
        affiliate_org_id: Option<String>,
        status: Option<String>,
        affiliate_emails: Option<Vec<String>>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.code, c.program_id, c.status AS code_status, e.enrollment_id, e.affiliate_org_id, e.status, e.affiliate_emails \
         FROM codes_view c LEFT JOIN enrollments_view e ON e.enrollment_id = c.enrollment_id WHERE c.code = ANY($1)",
    )
    .bind(codes)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let enrollment = match (r.enrollment_id, r.affiliate_org_id, r.status) {
                (Some(enrollment_id), Some(affiliate_org_id), Some(status)) => Some(EnrollmentFacts {
                    enrollment_id,
                    program_id: r.program_id.clone(),
                    affiliate_org_id,
                    status,
                    emails: r.affiliate_emails.unwrap_or_default(),
                }),
                _ => None,
            };
            (
                r.code,
                CodeRow {
                    program_id: r.program_id,
                    status: r.code_status,
                    enrollment,
                },
            )
        })
        .collect())
}

/// Bindings of `(program_id, customer_ref)` pairs, with their enrollments.
pub async fn bindings(
    conn: &mut PgConnection,
    keys: &[(String, String)],
) -> Result<HashMap<(String, String), Binding>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let (programs, customers): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
    #[derive(sqlx::FromRow)]
    struct Row {
        customer_ref: String,
        first_conversion_at: DateTime<Utc>,
        #[sqlx(flatten)]
        enrollment: EnrollmentRow,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT b.customer_ref, b.first_conversion_at, e.enrollment_id, e.program_id, e.affiliate_org_id, e.status, e.affiliate_emails \
         FROM UNNEST($1::text[], $2::text[]) AS k(program_id, customer_ref) \
         JOIN customer_bindings b ON b.program_id = k.program_id AND b.customer_ref = k.customer_ref \
         JOIN enrollments_view e ON e.enrollment_id = b.enrollment_id",
    )
    .bind(&programs)
    .bind(&customers)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let key = (r.enrollment.program_id.clone(), r.customer_ref);
            (
                key,
                Binding {
                    enrollment: r.enrollment.into(),
                    first_conversion_at: r.first_conversion_at,
                },
            )
        })
        .collect())
}

/// How many touchpoints of one subject a decision weighs (and its trail shows).
pub const TOUCHPOINTS_WEIGHED: i64 = 20;

/// One touchpoint query: the report's index, program, subject, time and policy.
pub struct TouchpointQuery {
    pub index: i32,
    pub program_id: String,
    pub subject_ref: String,
    pub at: DateTime<Utc>,
    pub policy: Policy,
}

/// For each query, the touchpoints on its subject up to the sale that the policy weighs: those
/// of active enrollments inside the window first, earliest first for first touch and latest first
/// for last touch (so the winner is always among them), then the rest, latest first; at most
/// [`TOUCHPOINTS_WEIGHED`]. The domain picks the winner ([`crate::domain::policy::weigh`]).
pub async fn touchpoints(
    conn: &mut PgConnection,
    queries: &[TouchpointQuery],
) -> Result<HashMap<i32, Vec<Touch>>, sqlx::Error> {
    if queries.is_empty() {
        return Ok(HashMap::new());
    }
    #[derive(sqlx::FromRow)]
    struct Row {
        idx: i32,
        touchpoint_id: String,
        code: String,
        occurred_at: DateTime<Utc>,
        client_ip: Option<String>,
        #[sqlx(flatten)]
        enrollment: EnrollmentRow,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT q.idx, t.touchpoint_id, t.code, t.occurred_at, t.client_ip, t.enrollment_id, t.program_id, t.affiliate_org_id, t.status, \
         t.affiliate_emails \
         FROM UNNEST($1::int[], $2::text[], $3::text[], $4::timestamptz[], $5::int[], $6::bool[]) \
           AS q(idx, program_id, subject_ref, at, window_days, first_touch) \
         CROSS JOIN LATERAL ( \
           SELECT t.touchpoint_id, t.code, t.occurred_at, t.client_ip, e.enrollment_id, e.program_id, e.affiliate_org_id, e.status, \
             e.affiliate_emails \
           FROM touchpoints t JOIN enrollments_view e ON e.enrollment_id = t.enrollment_id \
           WHERE t.program_id = q.program_id AND t.subject_ref = q.subject_ref AND t.occurred_at <= q.at \
           ORDER BY (e.status = 'active' AND t.occurred_at >= q.at - make_interval(days => q.window_days)) DESC, \
             CASE WHEN q.first_touch THEN t.occurred_at END ASC, t.occurred_at DESC \
           LIMIT $7) t",
    )
    .bind(queries.iter().map(|q| q.index).collect::<Vec<_>>())
    .bind(queries.iter().map(|q| q.program_id.clone()).collect::<Vec<_>>())
    .bind(queries.iter().map(|q| q.subject_ref.clone()).collect::<Vec<_>>())
    .bind(queries.iter().map(|q| q.at).collect::<Vec<_>>())
    .bind(queries.iter().map(|q| q.policy.window_days).collect::<Vec<_>>())
    .bind(queries.iter().map(|q| q.policy.model == Model::FirstTouch).collect::<Vec<_>>())
    .bind(TOUCHPOINTS_WEIGHED)
    .fetch_all(conn)
    .await?;
    let mut found: HashMap<i32, Vec<Touch>> = HashMap::new();
    for r in rows {
        found.entry(r.idx).or_default().push(Touch {
            touchpoint_id: r.touchpoint_id,
            code: r.code,
            occurred_at: r.occurred_at,
            client_ip: r.client_ip,
            enrollment: r.enrollment.into(),
        });
    }
    Ok(found)
}
