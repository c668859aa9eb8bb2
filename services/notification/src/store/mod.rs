//! The notification schema: read models (org e-mails, programs), preferences, and e-mails.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

pub async fn upsert_org_emails(conn: &mut PgConnection, org_id: &str, emails: &[String]) -> Result<(), sqlx::Error> {
    if org_id.is_empty() || emails.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO orgs_view (org_id, emails) VALUES ($1, $2) \
         ON CONFLICT (org_id) DO UPDATE SET emails = EXCLUDED.emails, updated_at = now()",
    )
    .bind(org_id)
    .bind(emails)
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

pub async fn upsert_program(
    conn: &mut PgConnection,
    program_id: &str,
    name: &str,
    currency: &str,
    owner_org_id: &str,
    (version, version_micros): (i64, i64),
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO programs_view (program_id, name, currency, owner_org_id, version_micros, version) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (program_id) DO UPDATE SET name = EXCLUDED.name, currency = EXCLUDED.currency, \
         owner_org_id = EXCLUDED.owner_org_id, version_micros = EXCLUDED.version_micros, version = EXCLUDED.version \
         WHERE (programs_view.version, programs_view.version_micros) <= (EXCLUDED.version, EXCLUDED.version_micros)",
    )
    .bind(program_id)
    .bind(name)
    .bind(currency)
    .bind(owner_org_id)
    .bind(version_micros)
    .bind(version)
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

pub async fn enabled(conn: &mut PgConnection, org_id: &str, kind: &str) -> Result<bool, sqlx::Error> {
    let enabled: Option<bool> = sqlx::query_scalar("SELECT enabled FROM preferences WHERE org_id = $1 AND kind = $2")
        .bind(org_id)
        .bind(kind)
        .fetch_optional(conn)
        .await?;
    Ok(enabled.unwrap_or(true))
}

pub async fn preferences(conn: &mut PgConnection, org_id: &str) -> Result<Vec<(String, bool)>, sqlx::Error> {
    sqlx::query_as("SELECT kind, enabled FROM preferences WHERE org_id = $1")
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
