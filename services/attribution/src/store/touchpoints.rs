//! Touchpoints (clicks).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

pub struct NewTouchpoint<'a> {
    pub touchpoint_id: &'a str,
    pub program_id: &'a str,
    pub enrollment_id: &'a str,
    pub code: &'a str,
    pub subject_ref: &'a str,
    pub occurred_at: DateTime<Utc>,
    pub landing_url: Option<&'a str>,
    pub client_ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// The touchpoint of the same code and subject recorded at or after `since`, if any.
pub async fn recent(
    conn: &mut PgConnection,
    code: &str,
    subject_ref: &str,
    since: DateTime<Utc>,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT touchpoint_id FROM touchpoints WHERE code = $1 AND subject_ref = $2 AND occurred_at >= $3 \
         ORDER BY occurred_at DESC LIMIT 1",
    )
    .bind(code)
    .bind(subject_ref)
    .bind(since)
    .fetch_optional(conn)
    .await
}

pub async fn insert(conn: &mut PgConnection, t: &NewTouchpoint<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO touchpoints (touchpoint_id, program_id, enrollment_id, code, subject_ref, occurred_at, landing_url, client_ip, user_agent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(t.touchpoint_id)
    .bind(t.program_id)
    .bind(t.enrollment_id)
    .bind(t.code)
    .bind(t.subject_ref)
    .bind(t.occurred_at)
    .bind(t.landing_url)
    .bind(t.client_ip)
    .bind(t.user_agent)
    .execute(conn)
    .await?;
    Ok(())
}
