//! Referral codes: an affiliate rotates its own, an owner sets a vanity one; codes are issued,
//! retired and announced (`code.*`) here.

use super::enrollments::{MY_REFERRAL_TOOL, owned_enrollment, reply};
use super::{Enrollment, caller};
use crate::domain::enrollment::{generate_code, vanity_code};
use crate::store::enrollments::{self as store, EnrollmentRow};
use amba_bus::events::{OutboxEvent, new_meta};
use amba_core::ApiError;
use amba_core::id::EnrollmentId;
use amba_proto::wire as pb;
use sqlx::PgConnection;

impl Enrollment {
    /// Affiliate rotates its referral code: the old one is retired, and a fresh one (or the
    /// vanity `code` asked for) issued.
    #[tracing::instrument(skip_all, fields(enrollment_id = %request.enrollment_id), err(level = "info"))]
    pub async fn rotate_code(&self, request: pb::EnrollmentActionRequest) -> Result<pb::EnrollmentReply, ApiError> {
        self.change_code(request, false).await
    }

    /// Owner gives one of its program's affiliates a vanity code (or a fresh random one).
    #[tracing::instrument(skip_all, fields(enrollment_id = %request.enrollment_id), err(level = "info"))]
    pub async fn set_code(&self, request: pb::EnrollmentActionRequest) -> Result<pb::EnrollmentReply, ApiError> {
        self.change_code(request, true).await
    }

    /// Retires the enrollment's code and issues the one asked for (validated, never used before
    /// by anyone: codes are global, since `/r/<code>` names no program) or a random one. Asking
    /// for the code it already has changes nothing (`duplicate`).
    async fn change_code(
        &self,
        request: pb::EnrollmentActionRequest,
        owner_side: bool,
    ) -> Result<pb::EnrollmentReply, ApiError> {
        let who = caller(request.caller)?;
        let enrollment_id = EnrollmentId::parse(&request.enrollment_id)?;
        let wanted = Some(request.code.trim())
            .filter(|c| !c.is_empty())
            .map(vanity_code)
            .transpose()?;
        let mut tx = self.pool.begin().await?;
        let row = store::get(&mut tx, enrollment_id.as_str(), true).await?;
        let row = if owner_side {
            owned_enrollment(row, &who.org_id, &enrollment_id, |_| Some(MY_REFERRAL_TOOL))?
        } else {
            row.filter(|r| r.affiliate_org_id == who.org_id)
                .ok_or_else(|| ApiError::not_found(format!("enrollment {enrollment_id}")))?
        };
        if !matches!(row.status.as_str(), "pending" | "active") {
            return Err(ApiError::conflict(format!(
                "an enrollment that is {} has no referral code",
                row.status
            )));
        }
        if let Some(code) = &wanted {
            if row.code.as_deref() == Some(code.as_str()) {
                return Ok(reply(&row, true));
            }
            if store::code_holder(&mut tx, code).await?.is_some() {
                return Err(code_taken(code));
            }
        }
        self.retire_code(&mut tx, &row).await?;
        match &wanted {
            Some(code) => {
                if !store::insert_code(&mut tx, code, &row.enrollment_id, &row.program_id).await? {
                    return Err(code_taken(code));
                }
                self.announce_code(
                    &mut tx,
                    code,
                    &row.enrollment_id,
                    &row.program_id,
                    &row.affiliate_org_id,
                    "issued",
                    "active",
                )
                .await?;
            }
            None => {
                self.issue_code(&mut tx, &row.enrollment_id, &row.program_id, &row.affiliate_org_id)
                    .await?;
            }
        }
        let row = store::get(&mut tx, enrollment_id.as_str(), false)
            .await?
            .ok_or_else(ApiError::internal)?;
        tx.commit().await?;
        self.waker.wake();
        Ok(reply(&row, false))
    }

    pub(super) async fn issue_code(
        &self,
        conn: &mut PgConnection,
        enrollment_id: &str,
        program_id: &str,
        org_id: &str,
    ) -> Result<String, ApiError> {
        for _ in 0..5 {
            let code = generate_code();
            if store::insert_code(conn, &code, enrollment_id, program_id).await? {
                self.announce_code(conn, &code, enrollment_id, program_id, org_id, "issued", "active")
                    .await?;
                return Ok(code);
            }
        }
        tracing::error!("five referral code collisions in a row");
        Err(ApiError::internal())
    }

    pub(super) async fn retire_code(&self, conn: &mut PgConnection, row: &EnrollmentRow) -> Result<(), ApiError> {
        if let Some(code) = store::retire_active_code(conn, &row.enrollment_id).await? {
            self.announce_code(
                conn,
                &code,
                &row.enrollment_id,
                &row.program_id,
                &row.affiliate_org_id,
                "retired",
                "retired",
            )
            .await?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn announce_code(
        &self,
        conn: &mut PgConnection,
        code: &str,
        enrollment_id: &str,
        program_id: &str,
        org_id: &str,
        kind: &str,
        status: &str,
    ) -> Result<(), ApiError> {
        let meta = new_meta();
        let event = pb::CodeChanged {
            meta: Some(meta.clone()),
            code: code.to_owned(),
            enrollment_id: enrollment_id.to_owned(),
            program_id: program_id.to_owned(),
            affiliate_org_id: org_id.to_owned(),
            status: status.to_owned(),
        };
        Ok(amba_bus::outbox::enqueue(conn, &OutboxEvent::new(self.ns.event("code", kind), &meta, &event)).await?)
    }
}

fn code_taken(code: &str) -> ApiError {
    ApiError::conflict(format!(
        "code {code:?} is taken: a referral code (active or retired) belongs to one enrollment for good; choose another"
    ))
    .with_details(serde_json::json!({"argument": "code"}))
}
