//! Clawbacks: what the ledger took back for a refund, once per clawback id.

use sqlx::PgConnection;

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
