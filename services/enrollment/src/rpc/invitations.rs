//! Invitations by e-mail, and the public faces of programs and invitations.
//!
//! An owner can invite an address whether or not it has an account, and learns nothing about
//! which: every invitation is stored the same way (a random single-use claim token, hashed),
//! announced as `identity.invitation_sent` (the notification service mails the claim link) and
//! answered alike. The token is claimed by an org's agent with that org's own access token, so
//! the enrollment goes to the org that proves it holds both; signing up with the invited address
//! alone claims nothing (signup does not prove the address is the caller's).

use super::enrollments::{already_enrolled, optional_id, reply};
use super::programs::owned_program;
use super::{Enrollment, caller};
use crate::domain::enrollment::{EnrollmentStatus, Origin};
use crate::domain::identity::{
    INVITATION_TTL_DAYS, hash_token, looks_like_invitation_token, mint_invitation_token, normalize_email,
};
use crate::domain::program::ProgramStatus;
use crate::store::enrollments::{self as enrollments, NewEnrollment};
use crate::store::invitations::{self as store, InvitationRow, NewInvitation};
use amba_bus::events::{OutboxEvent, new_meta};
use amba_core::ApiError;
use amba_core::id::{EnrollmentId, InvitationId, ProgramId};
use amba_proto::wire as pb;
use chrono::Utc;

impl Enrollment {
    /// Owner invites an e-mail address into a program. The same reply whether or not the address
    /// has an account; with the same `idempotency_key` a retry returns the first invitation and
    /// sends no second e-mail.
    #[tracing::instrument(skip_all, fields(program_id = %request.program_id), err(level = "info"))]
    pub async fn invite_by_email(&self, request: pb::InviteByEmailRequest) -> Result<pb::InvitationReply, ApiError> {
        let owner = caller(request.caller)?;
        let program_id = ProgramId::parse(&request.program_id)?;
        let email = normalize_email(&request.email)?;
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
        if let Some(key) = key
            && let Some(existing) = store::by_idempotency_key(&mut tx, program_id.as_str(), key).await?
        {
            return replay_invitation(&existing, &email, parent.as_deref());
        }
        if let Some(parent) = &parent {
            // The sponsor is checked now (so the owner hears of a mistake) and again at the claim.
            let placeholder = EnrollmentId::new();
            self.sponsor_depth(&mut tx, program_id.as_str(), parent, placeholder.as_str(), 1)
                .await?;
        }
        let (token, token_hash) = mint_invitation_token();
        let invitation_id = InvitationId::new();
        let expires_at = Utc::now() + chrono::Duration::days(INVITATION_TTL_DAYS);
        let new = NewInvitation {
            invitation_id: invitation_id.as_str(),
            program_id: program_id.as_str(),
            email: &email,
            token_hash: &token_hash,
            parent_enrollment_id: parent.as_deref(),
            idempotency_key: key,
            expires_at,
        };
        if !store::insert(&mut tx, &new).await? {
            // A concurrent invitation with the same key won; answer as if we had come second.
            let existing = match key {
                Some(key) => store::by_idempotency_key(&mut tx, program_id.as_str(), key).await?,
                None => None,
            };
            return replay_invitation(&existing.ok_or_else(ApiError::internal)?, &email, parent.as_deref());
        }
        let meta = new_meta();
        let event = pb::InvitationSent {
            meta: Some(meta.clone()),
            invitation_id: invitation_id.to_string(),
            email: email.clone(),
            token,
            program_id: program_id.to_string(),
            program_name: program.name.clone(),
            owner_org_id: owner.org_id.clone(),
            owner_org_name: enrollments::org_name(&mut tx, &owner.org_id).await?.unwrap_or_default(),
            expires_at_micros: expires_at.timestamp_micros(),
        };
        amba_bus::outbox::enqueue(
            &mut tx,
            &OutboxEvent::new(self.ns.event("identity", "invitation_sent"), &meta, &event),
        )
        .await?;
        tx.commit().await?;
        self.waker.wake();
        tracing::info!(%invitation_id, "invitation e-mailed");
        Ok(pb::InvitationReply {
            invitation_id: invitation_id.into(),
            email,
            expires_at_micros: expires_at.timestamp_micros(),
            duplicate: false,
        })
    }

    /// The caller's org claims an e-mailed invitation: it joins the program, active at once
    /// (claiming is accepting). Claiming again with the same org returns the enrollment; a token
    /// claimed by another org, expired or unknown is refused and changes nothing.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn claim_invitation(&self, request: pb::ClaimInvitationRequest) -> Result<pb::EnrollmentReply, ApiError> {
        let who = caller(request.caller)?;
        let token = request.token.trim();
        if !looks_like_invitation_token(token) {
            return Err(unknown_invitation());
        }
        let mut tx = self.pool.begin().await?;
        let invitation = store::by_token_hash(&mut tx, &hash_token(token), true)
            .await?
            .ok_or_else(unknown_invitation)?;
        if invitation.claimed_at.is_some() {
            let mine = invitation.claimed_by_org_id.as_deref() == Some(who.org_id.as_str());
            if let (true, Some(enrollment_id)) = (mine, &invitation.enrollment_id) {
                let row = enrollments::get(&mut tx, enrollment_id, false)
                    .await?
                    .ok_or_else(ApiError::internal)?;
                return Ok(reply(&row, true));
            }
            return Err(ApiError::conflict(
                "this invitation was already claimed: an invitation link can be used once; ask the program owner \
                 to invite you again",
            ));
        }
        if invitation.expires_at <= Utc::now() {
            return Err(ApiError::conflict(format!(
                "this invitation expired on {}; ask the program owner to invite you again",
                invitation.expires_at.format("%Y-%m-%d")
            )));
        }
        let program = crate::store::programs::get(&mut tx, &invitation.program_id, false)
            .await?
            .ok_or_else(ApiError::internal)?;
        if program.owner_org_id == who.org_id {
            return Err(ApiError::invalid("an org cannot be an affiliate of its own program"));
        }
        if program.status()? == ProgramStatus::Archived {
            return Err(ApiError::conflict(
                "the program was archived and takes no new affiliates",
            ));
        }
        if let Some(existing) = enrollments::get_by_program_and_org(&mut tx, &program.program_id, &who.org_id).await? {
            return Err(already_enrolled(&existing));
        }
        let enrollment_id = EnrollmentId::new();
        let depth = match &invitation.parent_enrollment_id {
            Some(parent) => {
                self.sponsor_depth(&mut tx, &program.program_id, parent, enrollment_id.as_str(), 1)
                    .await?
            }
            None => 1,
        };
        let new = NewEnrollment {
            enrollment_id: enrollment_id.as_str(),
            program_id: &program.program_id,
            affiliate_org_id: &who.org_id,
            status: EnrollmentStatus::Active.as_str(),
            origin: Origin::Invite.as_str(),
            parent_enrollment_id: invitation.parent_enrollment_id.as_deref(),
            depth,
            idempotency_key: None,
        };
        if !enrollments::insert(&mut tx, &new).await? {
            return Err(ApiError::conflict(
                "an enrollment for this org was created at the same moment; list your programs",
            ));
        }
        self.issue_code(&mut tx, enrollment_id.as_str(), &program.program_id, &who.org_id)
            .await?;
        store::mark_claimed(&mut tx, &invitation.invitation_id, &who.org_id, enrollment_id.as_str()).await?;
        let row = self
            .announce_enrollment(&mut tx, enrollment_id.as_str(), "activated", "")
            .await?;
        tx.commit().await?;
        self.waker.wake();
        tracing::info!(%enrollment_id, invitation_id = %invitation.invitation_id, "invitation claimed");
        Ok(reply(&row, false))
    }

    /// Public: what an invitation token is for (the claim page). Unknown tokens are NOT_FOUND.
    pub async fn invitation_preview(
        &self,
        request: pb::InvitationPreviewRequest,
    ) -> Result<pb::InvitationPreview, ApiError> {
        let token = request.token.trim();
        if !looks_like_invitation_token(token) {
            return Err(unknown_invitation());
        }
        let mut conn = self.pool.acquire().await?;
        let invitation = store::by_token_hash(&mut conn, &hash_token(token), false)
            .await?
            .ok_or_else(unknown_invitation)?;
        let program = crate::store::programs::get(&mut conn, &invitation.program_id, false)
            .await?
            .ok_or_else(ApiError::internal)?;
        let status = if invitation.claimed_at.is_some() {
            "claimed"
        } else if invitation.expires_at <= Utc::now() {
            "expired"
        } else {
            "open"
        };
        Ok(pb::InvitationPreview {
            program_id: program.program_id,
            program_name: program.name,
            status: status.to_owned(),
            expires_at_micros: invitation.expires_at.timestamp_micros(),
        })
    }

    /// Public: an active program's name and terms for its join page. Drafts, paused and
    /// archived programs are NOT_FOUND like unknown ids, so nothing unpublished shows.
    pub async fn program_public(&self, request: pb::ProgramPublicRequest) -> Result<pb::ProgramPublic, ApiError> {
        let not_found = || ApiError::not_found("program (or it takes no applications)");
        let program_id = ProgramId::parse(request.program_id.trim()).map_err(|_| not_found())?;
        let mut conn = self.pool.acquire().await?;
        let program = crate::store::programs::get(&mut conn, program_id.as_str(), false)
            .await?
            .filter(|p| p.status == ProgramStatus::Active.as_str())
            .ok_or_else(not_found)?;
        Ok(pb::ProgramPublic {
            program_id: program.program_id,
            name: program.name,
            currency: program.currency,
            affiliate_approval: program.affiliate_approval,
        })
    }
}

fn unknown_invitation() -> ApiError {
    ApiError::not_found("invitation: the token is unknown; copy it whole from the invitation e-mail's link")
}

fn replay_invitation(
    existing: &InvitationRow,
    email: &str,
    parent: Option<&str>,
) -> Result<pb::InvitationReply, ApiError> {
    if existing.email != email || existing.parent_enrollment_id.as_deref() != parent {
        return Err(ApiError::new(
            amba_core::ErrorCode::IdempotencyMismatch,
            "idempotency_key was used for an invitation of another address or sponsor",
        ));
    }
    Ok(pb::InvitationReply {
        invitation_id: existing.invitation_id.clone(),
        email: existing.email.clone(),
        expires_at_micros: existing.expires_at.timestamp_micros(),
        duplicate: true,
    })
}
