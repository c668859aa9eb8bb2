//! An owner releases held commission before its hold ends (the sale is final: delivered, past
//! its refund window by the owner's own rules). The same posting as the hold-release sweep
//! (`release:<commission>`, held → payable), so a commission is released once whichever comes
//! first; audited with who and why on the journal rows and in `early_releases`.

use super::Commission;
use crate::jobs::sweep;
use crate::store::{self, CommissionRow, LedgerLock};
use amba_bus::rpc::caller;
use amba_core::ApiError;
use amba_proto::wire as pb;
use sqlx::PgConnection;

/// Longest reason kept (characters).
const REASON_MAX: usize = 500;

#[derive(Debug, sqlx::FromRow)]
struct ReleaseRow {
    release_id: String,
    program_id: String,
    conversion_id: String,
    enrollment_id: String,
    currency: String,
    released_minor: i64,
    commissions: i32,
    reason: String,
    released_by_org_id: String,
    released_by_account_id: String,
    released_at: chrono::DateTime<chrono::Utc>,
}

impl ReleaseRow {
    fn reply(self, duplicate: bool) -> pb::ReleaseHeldReply {
        pb::ReleaseHeldReply {
            release_id: self.release_id,
            program_id: self.program_id,
            conversion_id: self.conversion_id,
            enrollment_id: self.enrollment_id,
            currency: self.currency,
            released_minor: self.released_minor,
            commissions: u32::try_from(self.commissions).unwrap_or(0),
            reason: self.reason,
            released_by_org_id: self.released_by_org_id,
            released_by_account_id: self.released_by_account_id,
            released_at_micros: self.released_at.timestamp_micros(),
            duplicate,
        }
    }
}

impl Commission {
    pub async fn release_held(&self, request: pb::ReleaseHeldRequest) -> Result<pb::ReleaseHeldReply, ApiError> {
        let caller = caller(request.caller.clone())?;
        let reason = request.reason.trim();
        if reason.is_empty() {
            return Err(ApiError::invalid(
                "reason is required: say why the hold ends early (it is kept with the release)",
            ));
        }
        if reason.chars().count() > REASON_MAX {
            return Err(ApiError::invalid(format!(
                "reason is longer than {REASON_MAX} characters"
            )));
        }
        let conversion_id = request.conversion_id.trim();
        let enrollment_id = request.enrollment_id.trim();
        if conversion_id.is_empty() == enrollment_id.is_empty() {
            return Err(ApiError::invalid(
                "give exactly one of conversion_id (that sale's commissions) and enrollment_id (all of an \
                 affiliate's held commission)",
            ));
        }
        let program = self.owned_program(&caller, &request.program_id, None).await?;
        // Without a key the request itself is the key: a retry never answers "nothing held".
        let key = match request.idempotency_key.trim() {
            "" => format!(
                "request:{}:{conversion_id}:{enrollment_id}:{reason}",
                program.program_id
            ),
            key => format!("key:{key}"),
        };

        let mut tx = self.pool.begin().await?;
        // One release per key at a time (1_937: this lock's class among advisory locks).
        sqlx::query("SELECT pg_advisory_xact_lock(1937, hashtext($1 || ' ' || $2))")
            .bind(&caller.org_id)
            .bind(&key)
            .execute(&mut *tx)
            .await?;
        if let Some(done) = release_by_key(&mut tx, &caller.org_id, &key).await? {
            let same = done.program_id == program.program_id
                && done.conversion_id == conversion_id
                && done.enrollment_id == enrollment_id
                && done.reason == reason;
            if !same {
                return Err(ApiError::new(
                    amba_core::ErrorCode::IdempotencyMismatch,
                    "idempotency_key was used for another release (program, target or reason differ)",
                ));
            }
            return Ok(done.reply(true));
        }
        // The ledger lock as every ledger writer takes it, before any row lock.
        store::lock_programs(&mut tx, &[(program.program_id.as_str(), LedgerLock::Shared)]).await?;
        let rows = if conversion_id.is_empty() {
            let known = store::enrollment(&mut tx, enrollment_id)
                .await?
                .filter(|e| e.program_id == program.program_id);
            if known.is_none() {
                return Err(ApiError::not_found(format!(
                    "enrollment {enrollment_id} in program {}",
                    program.program_id
                )));
            }
            held_of_enrollment(&mut tx, &program.program_id, enrollment_id).await?
        } else {
            let rows = commissions_of_conversion(&mut tx, &program.program_id, conversion_id).await?;
            if rows.is_empty() {
                return Err(ApiError::not_found(format!(
                    "no commission for conversion {conversion_id} in program {}: only an approved conversion \
                     has one (the ledger books an approval about a second after it)",
                    program.program_id
                )));
            }
            rows
        };
        let held: Vec<CommissionRow> = rows.into_iter().filter(|r| !r.released && r.held_minor > 0).collect();
        if held.is_empty() {
            return Err(ApiError::conflict(format!(
                "nothing is held for {}: its commission is already payable (released) or was clawed back",
                if conversion_id.is_empty() {
                    format!("enrollment {enrollment_id}")
                } else {
                    format!("conversion {conversion_id}")
                }
            )));
        }
        let release_id = format!("rel_{}", amba_core::id::time_ordered_suffix());
        let memo = serde_json::json!({
            "early_release": release_id,
            "reason": reason,
            "by_org_id": caller.org_id,
            "by_account_id": caller.account_id,
        })
        .to_string();
        let moved = sweep::release_all(&mut tx, &held, Some(&memo)).await?;
        let row: ReleaseRow = sqlx::query_as(
            "INSERT INTO early_releases (release_id, owner_org_id, idempotency_key, program_id, conversion_id, \
             enrollment_id, currency, released_minor, commissions, reason, released_by_org_id, \
             released_by_account_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             RETURNING release_id, program_id, conversion_id, enrollment_id, currency, released_minor, commissions, \
             reason, released_by_org_id, released_by_account_id, released_at",
        )
        .bind(&release_id)
        .bind(&caller.org_id)
        .bind(&key)
        .bind(&program.program_id)
        .bind(conversion_id)
        .bind(enrollment_id)
        .bind(&program.currency)
        .bind(moved)
        .bind(i32::try_from(held.len()).unwrap_or(i32::MAX))
        .bind(reason)
        .bind(&caller.org_id)
        .bind(&caller.account_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            release_id = %row.release_id,
            program_id = %row.program_id,
            released_minor = row.released_minor,
            "held commission released early by its program's owner"
        );
        Ok(row.reply(false))
    }
}

async fn release_by_key(
    conn: &mut PgConnection,
    owner_org_id: &str,
    key: &str,
) -> Result<Option<ReleaseRow>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT release_id, program_id, conversion_id, enrollment_id, currency, released_minor, commissions, reason, \
         released_by_org_id, released_by_account_id, released_at FROM early_releases \
         WHERE owner_org_id = $1 AND idempotency_key = $2",
    )
    .bind(owner_org_id)
    .bind(key)
    .fetch_optional(conn)
    .await?)
}

/// A conversion's commissions in the program (every level), locked.
async fn commissions_of_conversion(
    conn: &mut PgConnection,
    program_id: &str,
    conversion_id: &str,
) -> Result<Vec<CommissionRow>, ApiError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM commissions WHERE conversion_id = $1 AND program_id = $2 \
         ORDER BY commission_id FOR UPDATE",
        store::COMMISSION_COLUMNS
    )))
    .bind(conversion_id)
    .bind(program_id)
    .fetch_all(conn)
    .await?)
}

/// The commissions an enrollment still holds in the program, locked.
async fn held_of_enrollment(
    conn: &mut PgConnection,
    program_id: &str,
    enrollment_id: &str,
) -> Result<Vec<CommissionRow>, ApiError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM commissions WHERE enrollment_id = $1 AND program_id = $2 \
         AND released_at IS NULL AND held_minor > 0 ORDER BY commission_id FOR UPDATE",
        store::COMMISSION_COLUMNS
    )))
    .bind(enrollment_id)
    .bind(program_id)
    .fetch_all(conn)
    .await?)
}
