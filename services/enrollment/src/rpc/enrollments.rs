use super::programs::owned_program;
use super::{Enrollment, caller};
use crate::domain::enrollment::{Action, EnrollmentStatus, Origin};
use crate::domain::program::{ApprovalMode, ProgramStatus};
use crate::store::enrollments::{self as store, EnrollmentRow, NewEnrollment, OrgFilter};
use amba_bus::events::{OutboxEvent, new_meta};
use amba_core::id::{EnrollmentId, OrgId, ProgramId};
use amba_core::{ApiError, cursor};
use amba_proto::wire as pb;
use sqlx::PgConnection;

impl Enrollment {
    /// Owner invites an org already on Amba: a pending enrollment with a referral code. With the
    /// same `idempotency_key` a retry returns the same enrollment; any other second invite of the
    /// org is CONFLICT (the error's details name the existing enrollment).
    #[tracing::instrument(skip_all, fields(program_id = %request.program_id), err(level = "info"))]
    pub async fn invite(&self, request: pb::InviteRequest) -> Result<pb::EnrollmentReply, ApiError> {
        let owner = caller(request.caller)?;
        let program_id = ProgramId::parse(&request.program_id)?;
        let affiliate = OrgId::parse(&request.affiliate_org_id)?;
        let parent = optional_id(&request.parent_enrollment_id)?;
        let key = Some(request.idempotency_key.trim()).filter(|k| !k.is_empty());
        if key.is_some_and(|k| k.len() > 200) {
            return Err(ApiError::invalid("idempotency_key must be at most 200 characters"));
        }

        let mut tx = self.pool.begin().await?;
        let program = owned_program(&mut tx, program_id.as_str(), &owner.org_id, false).await?;
        if program.status()? == ProgramStatus::Archived {
            return Err(ApiError::conflict("an archived program takes no new affiliates"));
        }
        if affiliate.as_str() == owner.org_id {
            return Err(ApiError::invalid("an org cannot be an affiliate of its own program"));
        }
        if store::org_name(&mut tx, affiliate.as_str()).await?.is_none() {
            return Err(ApiError::not_found(format!("org {affiliate}")));
        }
        if let Some(existing) = store::get_by_program_and_org(&mut tx, program_id.as_str(), affiliate.as_str()).await? {
            return replay_invite(existing, key, parent.as_deref());
        }
        let enrollment_id = EnrollmentId::new();
        let depth = match &parent {
            Some(parent) => {
                self.sponsor_depth(&mut tx, program_id.as_str(), parent, enrollment_id.as_str(), 1)
                    .await?
            }
            None => 1,
        };
        let new = NewEnrollment {
            enrollment_id: enrollment_id.as_str(),
            program_id: program_id.as_str(),
            affiliate_org_id: affiliate.as_str(),
            status: EnrollmentStatus::Pending.as_str(),
            origin: Origin::Invite.as_str(),
            parent_enrollment_id: parent.as_deref(),
            depth,
            idempotency_key: key,
        };
        if !store::insert(&mut tx, &new).await? {
            // A concurrent invite of the same org won; answer as if we had come second.
            let existing = store::get_by_program_and_org(&mut tx, program_id.as_str(), affiliate.as_str()).await?;
            return replay_invite(existing.ok_or_else(ApiError::internal)?, key, parent.as_deref());
        }
        self.issue_code(&mut tx, enrollment_id.as_str(), program_id.as_str(), affiliate.as_str())
            .await?;
        let row = self
            .announce_enrollment(&mut tx, enrollment_id.as_str(), "invited", "")
            .await?;
        tx.commit().await?;
        self.waker.wake();
        tracing::info!(%enrollment_id, affiliate = %affiliate, "affiliate invited");
        Ok(reply(&row, false))
    }

    /// Affiliate applies to an active program: pending, or active at once when the program
    /// approves applications automatically. Applying again returns the same enrollment.
    #[tracing::instrument(skip_all, fields(program_id = %request.program_id), err(level = "info"))]
    pub async fn apply(&self, request: pb::ApplyRequest) -> Result<pb::EnrollmentReply, ApiError> {
        let applicant = caller(request.caller)?;
        let program_id = ProgramId::parse(&request.program_id)?;
        let parent = optional_id(&request.parent_enrollment_id)?;
        let mut tx = self.pool.begin().await?;
        let program = crate::store::programs::get(&mut tx, program_id.as_str(), false).await?;
        let program = program
            .filter(|p| p.status != ProgramStatus::Draft.as_str() || p.owner_org_id == applicant.org_id)
            .ok_or_else(|| ApiError::not_found(format!("program {program_id}")))?;
        if program.owner_org_id == applicant.org_id {
            return Err(ApiError::invalid("an org cannot be an affiliate of its own program"));
        }
        if program.status()? != ProgramStatus::Active {
            return Err(ApiError::conflict(format!(
                "program {program_id} is {} and takes no applications",
                program.status
            )));
        }
        if let Some(existing) = store::get_by_program_and_org(&mut tx, program_id.as_str(), &applicant.org_id).await? {
            let same = existing.origin == Origin::Application.as_str()
                && matches!(existing.status.as_str(), "pending" | "active");
            return if same {
                Ok(reply(&existing, true))
            } else {
                Err(already_enrolled(&existing))
            };
        }
        let auto = program.settings()?.affiliate_approval == ApprovalMode::Auto;
        let status = if auto {
            EnrollmentStatus::Active
        } else {
            EnrollmentStatus::Pending
        };
        let enrollment_id = EnrollmentId::new();
        let depth = match &parent {
            Some(parent) => {
                self.sponsor_depth(&mut tx, program_id.as_str(), parent, enrollment_id.as_str(), 1)
                    .await?
            }
            None => 1,
        };
        let new = NewEnrollment {
            enrollment_id: enrollment_id.as_str(),
            program_id: program_id.as_str(),
            affiliate_org_id: &applicant.org_id,
            status: status.as_str(),
            origin: Origin::Application.as_str(),
            parent_enrollment_id: parent.as_deref(),
            depth,
            idempotency_key: None,
        };
        if !store::insert(&mut tx, &new).await? {
            return Err(ApiError::conflict(
                "an enrollment for this org was created at the same moment; list your programs",
            ));
        }
        self.issue_code(&mut tx, enrollment_id.as_str(), program_id.as_str(), &applicant.org_id)
            .await?;
        let row = self
            .announce_enrollment(
                &mut tx,
                enrollment_id.as_str(),
                if auto { "activated" } else { "applied" },
                "",
            )
            .await?;
        tx.commit().await?;
        self.waker.wake();
        Ok(reply(&row, false))
    }

    pub async fn approve(&self, request: pb::EnrollmentActionRequest) -> Result<pb::EnrollmentReply, ApiError> {
        self.act(request, Action::Approve).await
    }

    pub async fn reject(&self, request: pb::EnrollmentActionRequest) -> Result<pb::EnrollmentReply, ApiError> {
        self.act(request, Action::Reject).await
    }

    pub async fn remove(&self, request: pb::EnrollmentActionRequest) -> Result<pb::EnrollmentReply, ApiError> {
        self.act(request, Action::Remove).await
    }

    pub async fn accept(&self, request: pb::EnrollmentActionRequest) -> Result<pb::EnrollmentReply, ApiError> {
        self.act(request, Action::Accept).await
    }

    pub async fn decline(&self, request: pb::EnrollmentActionRequest) -> Result<pb::EnrollmentReply, ApiError> {
        self.act(request, Action::Decline).await
    }

    /// One state change, authorized for the side that may take it. An enrollment outside the
    /// caller's reach is NOT_FOUND, so ids cannot be probed; but its own affiliate trying an
    /// owner's action is told why (FORBIDDEN).
    #[tracing::instrument(skip_all, fields(enrollment_id = %request.enrollment_id, ?action), err(level = "info"))]
    async fn act(&self, request: pb::EnrollmentActionRequest, action: Action) -> Result<pb::EnrollmentReply, ApiError> {
        let who = caller(request.caller)?;
        let enrollment_id = EnrollmentId::parse(&request.enrollment_id)?;
        let reason = Some(request.reason.trim()).filter(|r| !r.is_empty());
        if reason.is_some_and(|r| r.chars().count() > 500) {
            return Err(ApiError::invalid("reason must be at most 500 characters"));
        }
        let mut tx = self.pool.begin().await?;
        let row = store::get(&mut tx, enrollment_id.as_str(), true).await?;
        let owner_side = matches!(action, Action::Approve | Action::Reject | Action::Remove);
        let row = if owner_side {
            owned_enrollment(row, &who.org_id, &enrollment_id, |r| affiliate_instead(action, r))?
        } else {
            row.filter(|r| r.affiliate_org_id == who.org_id)
                .ok_or_else(|| ApiError::not_found(format!("enrollment {enrollment_id}")))?
        };
        let status: EnrollmentStatus = row.status.parse()?;
        let next = action.apply(status, row.origin.parse()?)?;
        store::set_status(&mut tx, enrollment_id.as_str(), next.as_str(), reason).await?;
        if matches!(
            next,
            EnrollmentStatus::Rejected | EnrollmentStatus::Declined | EnrollmentStatus::Removed
        ) {
            // The code stops attributing new conversions; what was earned stays.
            self.retire_code(&mut tx, &row).await?;
        }
        let row = self
            .announce_enrollment(&mut tx, enrollment_id.as_str(), action.event_type(), status.as_str())
            .await?;
        tx.commit().await?;
        self.waker.wake();
        tracing::info!(status = %next, "enrollment changed");
        Ok(reply(&row, false))
    }

    /// Owner: one program's enrollments (with sponsors and depth: the tree), keyset-paginated.
    pub async fn list_program_enrollments(
        &self,
        request: pb::ListEnrollmentsRequest,
    ) -> Result<pb::ListEnrollmentsResponse, ApiError> {
        let owner = caller(request.caller)?;
        let program_id = ProgramId::parse(&request.program_id)?;
        let status = status_filter(&request.status)?;
        let after = cursor::decode(&request.cursor)?;
        let limit = cursor::page_size(request.limit);
        let mut conn = self.pool.acquire().await?;
        owned_program(&mut conn, program_id.as_str(), &owner.org_id, false).await?;
        let rows = store::list_by_program(&mut conn, program_id.as_str(), status, after.as_deref(), limit + 1).await?;
        Ok(page(rows, limit))
    }

    /// Affiliate: the caller org's own enrollments (or only its pending invitations).
    pub async fn list_my_enrollments(
        &self,
        request: pb::ListEnrollmentsRequest,
    ) -> Result<pb::ListEnrollmentsResponse, ApiError> {
        let me = caller(request.caller)?;
        let program_id = optional_program(&request.program_id)?;
        let status = status_filter(&request.status)?;
        let after = cursor::decode(&request.cursor)?;
        let limit = cursor::page_size(request.limit);
        let filter = OrgFilter {
            org_id: &me.org_id,
            program_id: program_id.as_deref(),
            status,
            invites_only: request.invites_only,
        };
        let mut conn = self.pool.acquire().await?;
        let rows = store::list_by_org(&mut conn, &filter, after.as_deref(), limit + 1).await?;
        Ok(page(rows, limit))
    }

    /// Writes `enrollment.<kind>` with the enrollment as it now is; returns that row.
    pub(super) async fn announce_enrollment(
        &self,
        conn: &mut PgConnection,
        enrollment_id: &str,
        kind: &str,
        previous_status: &str,
    ) -> Result<EnrollmentRow, ApiError> {
        let row = store::get(conn, enrollment_id, false)
            .await?
            .ok_or_else(ApiError::internal)?;
        let meta = new_meta();
        let event = pb::EnrollmentChanged {
            meta: Some(meta.clone()),
            enrollment: Some(row.to_proto()),
            previous_status: previous_status.to_owned(),
            program_owner_org_id: row.program_owner_org_id.clone(),
            affiliate_emails: store::org_emails(conn, &row.affiliate_org_id).await?,
            owner_emails: store::org_emails(conn, &row.program_owner_org_id).await?,
            affiliate_org_name: store::org_name(conn, &row.affiliate_org_id).await?.unwrap_or_default(),
        };
        amba_bus::outbox::enqueue(
            conn,
            &OutboxEvent::new(self.ns.event("enrollment", kind), &meta, &event),
        )
        .await?;
        Ok(row)
    }
}

/// The affiliate's own tool for a new referral code.
pub(super) const MY_REFERRAL_TOOL: &str = "amba_affiliate_my_referral_generate";

/// The enrollment, for an owner-side tool, if the caller's org owns its program. The
/// enrollment's own affiliate (it knows the id) is told the tool is the owner's, pointed to
/// `instead(row)` when it has its own tool for the need; anyone else gets NOT_FOUND, exactly as
/// for an unknown id, so ids cannot be probed.
pub(super) fn owned_enrollment(
    row: Option<EnrollmentRow>,
    org_id: &str,
    enrollment_id: &EnrollmentId,
    instead: impl FnOnce(&EnrollmentRow) -> Option<&'static str>,
) -> Result<EnrollmentRow, ApiError> {
    match row {
        Some(row) if row.program_owner_org_id == org_id => Ok(row),
        Some(row) if row.affiliate_org_id == org_id => Err(ApiError::owner_only(instead(&row))),
        _ => Err(ApiError::not_found(format!("enrollment {enrollment_id}"))),
    }
}

/// What the affiliate of `row` answers its own pending invitation with, in place of the owner's
/// approve or reject; nothing for an application (the owner decides it) or any other action.
fn affiliate_instead(action: Action, row: &EnrollmentRow) -> Option<&'static str> {
    let pending_invite = row.status == EnrollmentStatus::Pending.as_str() && row.origin == Origin::Invite.as_str();
    match action {
        Action::Approve if pending_invite => Some("amba_affiliate_my_invite_accept"),
        Action::Reject if pending_invite => Some("amba_affiliate_my_invite_decline"),
        _ => None,
    }
}

pub(super) fn reply(row: &EnrollmentRow, duplicate: bool) -> pb::EnrollmentReply {
    pb::EnrollmentReply {
        enrollment: Some(row.to_proto()),
        duplicate,
    }
}

fn replay_invite(
    existing: EnrollmentRow,
    key: Option<&str>,
    parent: Option<&str>,
) -> Result<pb::EnrollmentReply, ApiError> {
    let same_request = key.is_some()
        && existing.idempotency_key.as_deref() == key
        && existing.parent_enrollment_id.as_deref() == parent;
    if same_request {
        Ok(reply(&existing, true))
    } else if key.is_some() && existing.idempotency_key.as_deref() == key {
        Err(ApiError::new(
            amba_core::ErrorCode::IdempotencyMismatch,
            "idempotency_key was used for an invite with a different sponsor",
        ))
    } else {
        Err(already_enrolled(&existing))
    }
}

pub(super) fn already_enrolled(existing: &EnrollmentRow) -> ApiError {
    ApiError::conflict(format!(
        "this org already has an enrollment in the program ({})",
        existing.status
    ))
    .with_details(serde_json::json!({"enrollment_id": existing.enrollment_id, "status": existing.status}))
}

pub(super) fn optional_id(text: &str) -> Result<Option<String>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        Ok(None)
    } else {
        Ok(Some(EnrollmentId::parse(text)?.into()))
    }
}

fn optional_program(text: &str) -> Result<Option<String>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        Ok(None)
    } else {
        Ok(Some(ProgramId::parse(text)?.into()))
    }
}

fn status_filter(text: &str) -> Result<Option<&'static str>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        Ok(None)
    } else {
        Ok(Some(text.parse::<EnrollmentStatus>()?.as_str()))
    }
}

fn page(rows: Vec<EnrollmentRow>, limit: u32) -> pb::ListEnrollmentsResponse {
    let more = rows.len() > limit as usize;
    let enrollments: Vec<pb::Enrollment> = rows.iter().take(limit as usize).map(EnrollmentRow::to_proto).collect();
    let next_cursor = match enrollments.last() {
        Some(last) if more => cursor::encode(&last.enrollment_id),
        _ => String::new(),
    };
    pb::ListEnrollmentsResponse {
        enrollments,
        next_cursor,
    }
}
