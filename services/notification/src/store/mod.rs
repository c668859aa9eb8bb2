//! The notification schema: read models (org e-mails, programs), preferences, and e-mails.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// The org's addresses, and its name when the event carries one (else the known one stays).
pub async fn upsert_org_emails(
    conn: &mut PgConnection,
    org_id: &str,
    emails: &[String],
    name: Option<&str>,
) -> Result<(), sqlx::Error> {
    if org_id.is_empty() || emails.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO orgs_view (org_id, emails, name) VALUES ($1, $2, $3) \
         ON CONFLICT (org_id) DO UPDATE SET emails = EXCLUDED.emails, \
         name = COALESCE(EXCLUDED.name, orgs_view.name), updated_at = now()",
    )
    .bind(org_id)
    .bind(emails)
    .bind(name.filter(|n| !n.is_empty()))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn org_emails(conn: &mut PgConnection, org_id: &str) -> Result<Option<Vec<String>>, sqlx::Error> {
    sqlx::query_scalar("SELECT emails FROM orgs_view WHERE org_id = $1")
        .bind(org_id)
        .fetch_optional(conn)
        .await
}

/// The org's name, if known.
pub async fn org_name(conn: &mut PgConnection, org_id: &str) -> Result<Option<String>, sqlx::Error> {
    let name: Option<Option<String>> = sqlx::query_scalar("SELECT name FROM orgs_view WHERE org_id = $1")
        .bind(org_id)
        .fetch_optional(conn)
        .await?;
    Ok(name.flatten())
}

pub async fn upsert_program(
    conn: &mut PgConnection,
    program_id: &str,
    name: &str,
    currency: &str,
    owner_org_id: &str,
    hold_days: i32,
    (version, version_micros): (i64, i64),
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO programs_view (program_id, name, currency, owner_org_id, version_micros, version, hold_days) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (program_id) DO UPDATE SET name = EXCLUDED.name, currency = EXCLUDED.currency, \
         owner_org_id = EXCLUDED.owner_org_id, version_micros = EXCLUDED.version_micros, version = EXCLUDED.version, \
         hold_days = EXCLUDED.hold_days \
         WHERE (programs_view.version, programs_view.version_micros) <= (EXCLUDED.version, EXCLUDED.version_micros)",
    )
    .bind(program_id)
    .bind(name)
    .bind(currency)
    .bind(owner_org_id)
    .bind(version_micros)
    .bind(version)
    .bind(hold_days)
    .execute(conn)
    .await?;
    Ok(())
}

/// (name, currency) of a program.
pub async fn program(conn: &mut PgConnection, program_id: &str) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT name, currency FROM programs_view WHERE program_id = $1")
        .bind(program_id)
        .fetch_optional(conn)
        .await
}

/// A program's hold in days, if known.
pub async fn hold_days(conn: &mut PgConnection, program_id: &str) -> Result<Option<i32>, sqlx::Error> {
    let hold: Option<Option<i32>> = sqlx::query_scalar("SELECT hold_days FROM programs_view WHERE program_id = $1")
        .bind(program_id)
        .fetch_optional(conn)
        .await?;
    Ok(hold.flatten())
}

pub async fn enabled(conn: &mut PgConnection, org_id: &str, kind: &str) -> Result<bool, sqlx::Error> {
    let enabled: Option<bool> = sqlx::query_scalar("SELECT enabled FROM preferences WHERE org_id = $1 AND kind = $2")
        .bind(org_id)
        .bind(kind)
        .fetch_optional(conn)
        .await?;
    Ok(enabled.unwrap_or(true))
}

/// (kind, enabled, frequency) of every kind the org set.
pub async fn preferences(
    conn: &mut PgConnection,
    org_id: &str,
) -> Result<Vec<(String, bool, Option<String>)>, sqlx::Error> {
    sqlx::query_as("SELECT kind, enabled, frequency FROM preferences WHERE org_id = $1")
        .bind(org_id)
        .fetch_all(conn)
        .await
}

pub async fn set_preference(
    conn: &mut PgConnection,
    org_id: &str,
    kind: &str,
    enabled: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO preferences (org_id, kind, enabled) VALUES ($1, $2, $3) \
         ON CONFLICT (org_id, kind) DO UPDATE SET enabled = EXCLUDED.enabled",
    )
    .bind(org_id)
    .bind(kind)
    .bind(enabled)
    .execute(conn)
    .await?;
    Ok(())
}

pub struct NewEmail<'a> {
    pub email_id: &'a str,
    pub event_id: &'a str,
    pub template: &'a str,
    pub org_id: &'a str,
    pub recipients: &'a [String],
    pub subject: &'a str,
    pub body: &'a str,
    pub status: &'a str,
}

/// Queues an e-mail once per (event, template); a second time is a no-op.
pub async fn insert_email(conn: &mut PgConnection, e: &NewEmail<'_>) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO emails (email_id, event_id, template, org_id, recipients, subject, body, status) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_id, template) DO NOTHING",
    )
    .bind(e.email_id)
    .bind(e.event_id)
    .bind(e.template)
    .bind(e.org_id)
    .bind(e.recipients)
    .bind(e.subject)
    .bind(e.body)
    .bind(e.status)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Whether `recipient` got an e-mail of `template` (for `org_id`) less than `within` ago.
pub async fn sent_recently(
    conn: &mut PgConnection,
    org_id: &str,
    template: &str,
    recipient: &str,
    within: std::time::Duration,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM emails WHERE org_id = $1 AND template = $2 AND $3 = ANY(recipients) \
         AND created_at > now() - make_interval(secs => $4))",
    )
    .bind(org_id)
    .bind(template)
    .bind(recipient)
    .bind(within.as_secs_f64())
    .fetch_one(conn)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EmailRow {
    pub email_id: String,
    pub template: String,
    pub org_id: String,
    pub recipients: Vec<String>,
    pub subject: String,
    pub body: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

const EMAIL: &str = "SELECT email_id, template, org_id, recipients, subject, body, status, attempts, last_error, created_at, \
    sent_at FROM emails";

/// Locks up to `limit` queued e-mails that are due; other senders skip them.
pub async fn lock_due(conn: &mut PgConnection, limit: i64) -> Result<Vec<EmailRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{EMAIL} WHERE status = 'queued' AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED"
    )))
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn mark_sent(conn: &mut PgConnection, email_id: &str, message_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE emails SET status = 'sent', sent_at = now(), attempts = attempts + 1, message_id = $2, last_error = NULL \
         WHERE email_id = $1",
    )
    .bind(email_id)
    .bind(message_id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn mark_failed(conn: &mut PgConnection, email_id: &str, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE emails SET status = 'failed', attempts = attempts + 1, last_error = $2 WHERE email_id = $1")
        .bind(email_id)
        .bind(error)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn retry_later(
    conn: &mut PgConnection,
    email_id: &str,
    error: &str,
    delay: std::time::Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE emails SET attempts = attempts + 1, last_error = $2, \
         next_attempt_at = now() + make_interval(secs => $3) WHERE email_id = $1",
    )
    .bind(email_id)
    .bind(error)
    .bind(delay.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn page(
    conn: &mut PgConnection,
    org_id: &str,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<EmailRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{EMAIL} WHERE org_id = $1 AND ($2::text IS NULL OR email_id < $2) ORDER BY email_id DESC LIMIT $3"
    )))
    .bind(org_id)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The org's `conversion_approved` setting: (enabled, frequency name if chosen).
pub async fn approval_setting(conn: &mut PgConnection, org_id: &str) -> Result<(bool, Option<String>), sqlx::Error> {
    let row: Option<(bool, Option<String>)> =
        sqlx::query_as("SELECT enabled, frequency FROM preferences WHERE org_id = $1 AND kind = 'conversion_approved'")
            .bind(org_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.unwrap_or((true, None)))
}

/// Sets the digest frequency (`None`: off) of `conversion_approved`.
pub async fn set_frequency(conn: &mut PgConnection, org_id: &str, frequency: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO preferences (org_id, kind, enabled, frequency) VALUES ($1, 'conversion_approved', $2, $3) \
         ON CONFLICT (org_id, kind) DO UPDATE SET enabled = EXCLUDED.enabled, \
         frequency = COALESCE(EXCLUDED.frequency, preferences.frequency)",
    )
    .bind(org_id)
    .bind(frequency.is_some())
    .bind(frequency)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether `event_id` is (or now becomes) the org's first approved commission in the program.
pub async fn claim_first_commission(
    conn: &mut PgConnection,
    org_id: &str,
    program_id: &str,
    event_id: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "INSERT INTO first_commissions (org_id, program_id, event_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(org_id)
    .bind(program_id)
    .bind(event_id)
    .execute(&mut *conn)
    .await?;
    let first: String =
        sqlx::query_scalar("SELECT event_id FROM first_commissions WHERE org_id = $1 AND program_id = $2")
            .bind(org_id)
            .bind(program_id)
            .fetch_one(conn)
            .await?;
    Ok(first == event_id)
}

pub struct PendingCommission<'a> {
    pub event_id: &'a str,
    pub org_id: &'a str,
    pub program_id: &'a str,
    pub currency: &'a str,
    pub commission_minor: i64,
    pub sale_minor: i64,
    pub period: &'a str,
    pub period_end: DateTime<Utc>,
}

/// Records a commission for its digest, once per event.
pub async fn insert_pending(conn: &mut PgConnection, p: &PendingCommission<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pending_commissions (event_id, org_id, program_id, currency, commission_minor, sale_minor, \
         period, period_end) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(p.event_id)
    .bind(p.org_id)
    .bind(p.program_id)
    .bind(p.currency)
    .bind(p.commission_minor)
    .bind(p.sale_minor)
    .bind(p.period)
    .bind(p.period_end)
    .execute(conn)
    .await?;
    Ok(())
}

/// (org, period) pairs that ended by `before` and have no digest yet.
pub async fn due_digests(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT p.org_id, p.period FROM pending_commissions p WHERE p.period_end <= $1 \
         AND NOT EXISTS (SELECT 1 FROM digests d WHERE d.org_id = p.org_id AND d.period = p.period) LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Claims the digest of (org, period); false when another job already did (it waits for that
/// job's commit first, so two jobs never both build one).
pub async fn claim_digest(conn: &mut PgConnection, org_id: &str, period: &str) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO digests (org_id, period, commissions) \
         SELECT $1, $2, count(*)::INTEGER FROM pending_commissions WHERE org_id = $1 AND period = $2 \
         ON CONFLICT (org_id, period) DO NOTHING",
    )
    .bind(org_id)
    .bind(period)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Drops the commissions of digests built more than a week ago: one row per approved sale must
/// not outlive its digest for ever (100 k sales a day would be 100 k rows a day). The digest's
/// own row stays and keeps the period from being built again.
pub async fn forget_old_pending(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM pending_commissions p USING digests d \
         WHERE d.org_id = p.org_id AND d.period = p.period AND d.created_at < now() - interval '7 days'",
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// One program's share of a digest.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DigestLine {
    pub program: String,
    pub currency: String,
    pub count: i64,
    pub commission_minor: i64,
    /// The largest sale amounts, largest first.
    pub largest_sales_minor: Vec<i64>,
}

/// The commissions of (org, period), per program and currency; sums exact (NUMERIC in SQL).
pub async fn digest_lines(conn: &mut PgConnection, org_id: &str, period: &str) -> Result<Vec<DigestLine>, sqlx::Error> {
    sqlx::query_as(
        "SELECT COALESCE(v.name, p.program_id) AS program, p.currency, count(*) AS count, \
         sum(p.commission_minor)::BIGINT AS commission_minor, \
         (array_agg(p.sale_minor ORDER BY p.sale_minor DESC))[1:3] AS largest_sales_minor \
         FROM pending_commissions p LEFT JOIN programs_view v ON v.program_id = p.program_id \
         WHERE p.org_id = $1 AND p.period = $2 GROUP BY p.program_id, v.name, p.currency ORDER BY 1, 2",
    )
    .bind(org_id)
    .bind(period)
    .fetch_all(conn)
    .await
}
