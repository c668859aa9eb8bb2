//! E-mailed invitations (only the claim token's hash is stored).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InvitationRow {
    pub invitation_id: String,
    pub program_id: String,
    pub email: String,
    pub parent_enrollment_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub claimed_by_org_id: Option<String>,
    pub enrollment_id: Option<String>,
}

const COLUMNS: &str = "invitation_id, program_id, email, parent_enrollment_id, idempotency_key, expires_at, \
    claimed_at, claimed_by_org_id, enrollment_id";

pub struct NewInvitation<'a> {
    pub invitation_id: &'a str,
    pub program_id: &'a str,
    pub email: &'a str,
    pub token_hash: &'a str,
    pub parent_enrollment_id: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    pub expires_at: DateTime<Utc>,
}

/// Inserts the invitation; false when the program already has one with this idempotency key.
pub async fn insert(conn: &mut PgConnection, i: &NewInvitation<'_>) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO invitations (invitation_id, program_id, email, token_hash, parent_enrollment_id, idempotency_key, \
         expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(i.invitation_id)
    .bind(i.program_id)
    .bind(i.email)
    .bind(i.token_hash)
    .bind(i.parent_enrollment_id)
    .bind(i.idempotency_key)
    .bind(i.expires_at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn by_idempotency_key(
    conn: &mut PgConnection,
    program_id: &str,
    key: &str,
) -> Result<Option<InvitationRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invitations WHERE program_id = $1 AND idempotency_key = $2"
    )))
    .bind(program_id)
    .bind(key)
    .fetch_optional(conn)
    .await
}

pub async fn by_token_hash(
    conn: &mut PgConnection,
    token_hash: &str,
    lock: bool,
) -> Result<Option<InvitationRow>, sqlx::Error> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invitations WHERE token_hash = $1{lock}"
    )))
    .bind(token_hash)
    .fetch_optional(conn)
    .await
}

pub async fn mark_claimed(
    conn: &mut PgConnection,
    invitation_id: &str,
    org_id: &str,
    enrollment_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE invitations SET claimed_at = now(), claimed_by_org_id = $2, enrollment_id = $3 WHERE invitation_id = $1",
    )
    .bind(invitation_id)
    .bind(org_id)
    .bind(enrollment_id)
    .execute(conn)
    .await?;
    Ok(())
}
