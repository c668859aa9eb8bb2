use super::{McpServer, ToolError, require_principal, tool_error};
use crate::request::{non_empty, rfc3339};
use amba_core::ApiError;
use amba_proto::Method;
use amba_proto::methods::enrollment as methods;
use amba_proto::methods::payout;
use amba_proto::wire as pb;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct InviteArgs {
    pub program_id: String,
    /// The affiliate's org id, `org_` + 32 hex digits (they get one from amba_affiliate_signup).
    /// Give this or `email`, not both.
    pub affiliate_org_id: Option<String>,
    /// Invite a person by e-mail address instead (with or without an account): they get a
    /// single-use claim link, valid 14 days. Give this or `affiliate_org_id`, not both.
    pub email: Option<String>,
    /// Place the affiliate under an active sponsor of the same program (multi-level).
    pub parent_enrollment_id: Option<String>,
    /// Makes a retried invite return the same enrollment.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct EnrollmentArgs {
    pub enrollment_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReferralGenerateArgs {
    pub enrollment_id: String,
    /// A vanity code instead of a random one: 3-32 letters, digits, `_` or `-`, starting with a
    /// letter or digit, e.g. "ann-blog"; stored in lower case. Every code (active or retired) is
    /// unique across the platform and never reused. Omit for a fresh random code.
    pub code: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CodeSetArgs {
    pub enrollment_id: String,
    /// The vanity code: 3-32 letters, digits, `_` or `-`, starting with a letter or digit, e.g.
    /// "ann-blog"; stored in lower case; unique across the platform and never reused.
    pub code: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ClaimArgs {
    /// The claim token from the invitation e-mail's link `<server>/claim/<token>`: `amba_inv_`
    /// followed by 43 characters (the whole link is accepted too).
    pub token: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct EnrollmentReasonArgs {
    pub enrollment_id: String,
    /// Why (kept with the enrollment and shown to the affiliate).
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SetParentArgs {
    pub enrollment_id: String,
    /// The new sponsor (an active enrollment of the same program); omit to detach.
    pub parent_enrollment_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct AffiliatesListArgs {
    pub program_id: String,
    #[schemars(extend("enum" = ["pending", "active", "rejected", "declined", "removed"]))]
    pub status: Option<String>,
    pub cursor: Option<String>,
    /// Page size, 1-200 (default 50).
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct MyListArgs {
    /// Only this program.
    pub program_id: Option<String>,
    #[schemars(extend("enum" = ["pending", "active", "rejected", "declined", "removed"]))]
    pub status: Option<String>,
    pub cursor: Option<String>,
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct PageArgs {
    pub cursor: Option<String>,
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ApplyArgs {
    /// The program's id (`prg_` + 32 hex digits), or its join link `<server>/join/<program_id>`
    /// as the owner shared it.
    pub program_id: String,
    /// Join under a sponsor (an active enrollment of the same program).
    pub parent_enrollment_id: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EnrollmentView {
    pub enrollment_id: String,
    pub program_id: String,
    pub program_name: String,
    pub affiliate_org_id: String,
    pub affiliate_org_name: String,
    /// pending | active | rejected | declined | removed
    pub status: String,
    /// invite | application
    pub origin: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_enrollment_id: Option<String>,
    /// 1 = no sponsor; 2 = directly under a sponsor; ...
    pub depth: u32,
    /// The active referral code (absent once rejected, declined or removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The affiliate link to share, `<server>/r/<code>` (with the code).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Owner's affiliates list only: the affiliate's payout account, `ready` (can be paid),
    /// `pending` (Stripe onboarding not finished) or `none` (not created yet). Absent when the
    /// payout service did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payout_account: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EnrollmentOutput {
    pub enrollment_id: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The affiliate link to share, `<server>/r/<code>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub enrollment: EnrollmentView,
    /// True when this call found the enrollment it asked for already in place.
    pub duplicate: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EnrollmentsOutput {
    pub enrollments: Vec<EnrollmentView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct InviteView {
    pub enrollment_id: String,
    pub program_id: String,
    pub program_name: String,
    pub invited_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_enrollment_id: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct InvitesOutput {
    pub invites: Vec<InviteView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CodeOutput {
    pub code: String,
    /// The affiliate link to share, `<server>/r/<code>`.
    pub link: String,
    pub enrollment_id: String,
    /// True when the enrollment already had the code asked for (nothing changed).
    pub duplicate: bool,
}

/// An invitation: of an org (a pending enrollment, as before) or of an e-mail address.
#[derive(Debug, Serialize, JsonSchema)]
pub struct InviteOutput {
    /// `pending` (an org was invited: the enrollment waits for its answer) or `invited` (an
    /// e-mail address was invited: the same whether or not it has an account).
    pub status: String,
    /// Org invitations: the pending enrollment, its code and link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<EnrollmentView>,
    /// E-mail invitations: the invitation, the address (normalised) and until when its claim
    /// link works.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invitation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// True when an idempotency key replayed an earlier invitation (nothing new, no second e-mail).
    pub duplicate: bool,
}

#[tool_router(router = enrollment_tools, vis = "pub(super)")]
impl McpServer {
    #[tool(
        name = "amba_affiliate_invite",
        description = "Invite an affiliate into your program: an org already on Amba by `affiliate_org_id` (returns a \
                       pending enrollment with its code and link; it activates when they accept or you approve), or \
                       a person by `email` (returns status \"invited\" and an invitation_id, whether or not the \
                       address has an account; they get a single-use claim link valid 14 days and join, active at \
                       once, when their agent calls amba_affiliate_invite_claim). Give exactly one of the two.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn invite(
        &self,
        Parameters(a): Parameters<InviteArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<InviteOutput>, ToolError> {
        let caller = require_principal(&parts)?;
        let org = a.affiliate_org_id.filter(|o| !o.trim().is_empty());
        let email = a.email.filter(|e| !e.trim().is_empty());
        let (org, email) = match (org, email) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(tool_error(
                    ApiError::invalid(
                        "give exactly one of `affiliate_org_id` (an org on Amba, `org_…`) and `email` (a person \
                         to invite by e-mail)",
                    )
                    .with_details(serde_json::json!({"argument": "affiliate_org_id"})),
                ));
            }
            (org, email) => (org, email),
        };
        if let Some(email) = email {
            let request = pb::InviteByEmailRequest {
                caller: Some(caller),
                program_id: a.program_id,
                email,
                parent_enrollment_id: a.parent_enrollment_id.unwrap_or_default(),
                idempotency_key: a.idempotency_key.unwrap_or_default(),
            };
            let reply: pb::InvitationReply = self
                .state
                .rpc
                .call(methods::INVITE_BY_EMAIL, &request)
                .await
                .map_err(tool_error)?;
            return Ok(Json(InviteOutput {
                status: "invited".to_owned(),
                enrollment_id: None,
                code: None,
                link: None,
                enrollment: None,
                invitation_id: Some(reply.invitation_id),
                email: Some(reply.email),
                expires_at: Some(rfc3339(reply.expires_at_micros)),
                duplicate: reply.duplicate,
            }));
        }
        let request = pb::InviteRequest {
            caller: Some(caller),
            program_id: a.program_id,
            affiliate_org_id: org.unwrap_or_default(),
            parent_enrollment_id: a.parent_enrollment_id.unwrap_or_default(),
            idempotency_key: a.idempotency_key.unwrap_or_default(),
        };
        let Json(out) = self.enrollment_call(methods::INVITE, &request).await?;
        Ok(Json(InviteOutput {
            status: out.status,
            enrollment_id: Some(out.enrollment_id),
            code: out.code,
            link: out.link,
            enrollment: Some(out.enrollment),
            invitation_id: None,
            email: None,
            expires_at: None,
            duplicate: out.duplicate,
        }))
    }

    #[tool(
        name = "amba_affiliate_invite_claim",
        description = "Claim an invitation that was e-mailed to you: pass the token from the e-mail's link \
                       (<server>/claim/<token>). Your organization (the one of your access token) joins the program, \
                       active at once, and gets its referral code and link. A link works once and for 14 days; no \
                       organization yet? Sign up first with amba_affiliate_signup.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn invite_claim(
        &self,
        Parameters(a): Parameters<ClaimArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<EnrollmentOutput>, ToolError> {
        // The whole link is accepted: agents are often handed the URL.
        let token = a.token.trim();
        let token = token.rsplit('/').next().unwrap_or(token).to_owned();
        let request = pb::ClaimInvitationRequest {
            caller: Some(require_principal(&parts)?),
            token,
        };
        self.enrollment_call(methods::CLAIM_INVITATION, &request).await
    }

    #[tool(
        name = "amba_affiliate_affiliate_code_set",
        description = "Give one of your program's affiliates (pending or active) a vanity referral code, e.g. \
                       \"ann-blog\": 3-32 letters, digits, `_` or `-`, stored in lower case. Its previous code stops \
                       attributing new conversions (clicks recorded before still count). A code anyone has ever had \
                       is CONFLICT; asking for the code it already has changes nothing.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn affiliate_code_set(
        &self,
        Parameters(a): Parameters<CodeSetArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<EnrollmentOutput>, ToolError> {
        let request = pb::EnrollmentActionRequest {
            caller: Some(require_principal(&parts)?),
            enrollment_id: a.enrollment_id,
            reason: String::new(),
            code: a.code,
        };
        self.enrollment_call(methods::SET_CODE, &request).await
    }

    #[tool(
        name = "amba_affiliate_affiliate_approve",
        description = "Approve a pending enrollment (an application or an invite) in your program: it becomes active.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn affiliate_approve(
        &self,
        Parameters(a): Parameters<EnrollmentArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<EnrollmentOutput>, ToolError> {
        self.enrollment_action(methods::APPROVE, &parts, a.enrollment_id, String::new())
            .await
    }

    #[tool(
        name = "amba_affiliate_affiliate_reject",
        description = "Reject a pending enrollment in your program; its referral code is retired.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn affiliate_reject(
        &self,
        Parameters(a): Parameters<EnrollmentReasonArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<EnrollmentOutput>, ToolError> {
        self.enrollment_action(methods::REJECT, &parts, a.enrollment_id, a.reason.unwrap_or_default())
            .await
    }

    #[tool(
        name = "amba_affiliate_affiliate_remove",
        description = "Remove an affiliate from your program: its code stops attributing new conversions; commission \
                       already earned stays theirs unless clawed back.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn affiliate_remove(
        &self,
        Parameters(a): Parameters<EnrollmentReasonArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<EnrollmentOutput>, ToolError> {
        self.enrollment_action(methods::REMOVE, &parts, a.enrollment_id, a.reason.unwrap_or_default())
            .await
    }

    #[tool(
        name = "amba_affiliate_affiliate_set_parent",
        description = "Move an affiliate (with its downline) under another sponsor in the same program, or detach it. \
                       Cycles and trees deeper than 6 levels are refused.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn affiliate_set_parent(
        &self,
        Parameters(a): Parameters<SetParentArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<EnrollmentOutput>, ToolError> {
        let request = pb::SetParentRequest {
            caller: Some(require_principal(&parts)?),
            enrollment_id: a.enrollment_id,
            parent_enrollment_id: a.parent_enrollment_id.unwrap_or_default(),
        };
        self.enrollment_call(methods::SET_PARENT, &request).await
    }

    #[tool(
        name = "amba_affiliate_affiliates_list",
        description = "Your program's affiliates with status, code and link, sponsor (parent_enrollment_id) and \
                       depth (the multi-level tree), and payout_account: ready (can be paid), pending (Stripe \
                       onboarding unfinished) or none. Filter by status; page with cursor.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn affiliates_list(
        &self,
        Parameters(a): Parameters<AffiliatesListArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<EnrollmentsOutput>, ToolError> {
        let request = pb::ListEnrollmentsRequest {
            caller: Some(require_principal(&parts)?),
            program_id: a.program_id,
            status: a.status.unwrap_or_default(),
            cursor: a.cursor.unwrap_or_default(),
            limit: a.limit.unwrap_or_default(),
            invites_only: false,
        };
        let Json(mut out) = self
            .enrollments_call(methods::LIST_PROGRAM_ENROLLMENTS, &request)
            .await?;
        self.add_payout_readiness(&parts, &mut out.enrollments).await?;
        Ok(Json(out))
    }

    #[tool(
        name = "amba_affiliate_my_invites_list",
        description = "Invitations to programs waiting for your organization's answer.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn my_invites_list(
        &self,
        Parameters(a): Parameters<PageArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<InvitesOutput>, ToolError> {
        let request = pb::ListEnrollmentsRequest {
            caller: Some(require_principal(&parts)?),
            cursor: a.cursor.unwrap_or_default(),
            limit: a.limit.unwrap_or_default(),
            invites_only: true,
            ..Default::default()
        };
        let reply: pb::ListEnrollmentsResponse = self
            .state
            .rpc
            .call(methods::LIST_MY_ENROLLMENTS, &request)
            .await
            .map_err(tool_error)?;
        Ok(Json(InvitesOutput {
            invites: reply
                .enrollments
                .into_iter()
                .map(|e| InviteView {
                    invited_at: rfc3339(e.created_at_micros),
                    parent_enrollment_id: non_empty(e.parent_enrollment_id),
                    enrollment_id: e.enrollment_id,
                    program_id: e.program_id,
                    program_name: e.program_name,
                })
                .collect(),
            next_cursor: non_empty(reply.next_cursor),
        }))
    }

    #[tool(
        name = "amba_affiliate_my_invite_accept",
        description = "Accept an invitation: the enrollment becomes active and you get your referral code and link \
                       (<server>/r/<code>).",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn my_invite_accept(
        &self,
        Parameters(a): Parameters<EnrollmentArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<EnrollmentOutput>, ToolError> {
        self.enrollment_action(methods::ACCEPT, &parts, a.enrollment_id, String::new())
            .await
    }

    #[tool(
        name = "amba_affiliate_my_invite_decline",
        description = "Decline a program's invitation (enrollment_id from amba_affiliate_my_invites_list). The \
                       enrollment becomes declined and its referral code never attributes anything; the owner can invite \
                       you again later.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn my_invite_decline(
        &self,
        Parameters(a): Parameters<EnrollmentArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<EnrollmentOutput>, ToolError> {
        self.enrollment_action(methods::DECLINE, &parts, a.enrollment_id, String::new())
            .await
    }

    #[tool(
        name = "amba_affiliate_my_program_apply",
        description = "Apply to join an active program, by its id or its join link (<server>/join/<program_id>). \
                       Pending until the owner approves, or active at once (with your code and link) when the program \
                       approves applications automatically. Applying again returns the same enrollment.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn my_program_apply(
        &self,
        Parameters(a): Parameters<ApplyArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<EnrollmentOutput>, ToolError> {
        let request = pb::ApplyRequest {
            caller: Some(require_principal(&parts)?),
            program_id: program_of_join_link(&a.program_id),
            parent_enrollment_id: a.parent_enrollment_id.unwrap_or_default(),
        };
        self.enrollment_call(methods::APPLY, &request).await
    }

    #[tool(
        name = "amba_affiliate_my_referral_generate",
        description = "Change your referral code for an enrollment: a fresh random code, or the vanity `code` you \
                       ask for (3-32 letters, digits, `_` or `-`, stored in lower case; CONFLICT if anyone ever had \
                       it). Returns the code and its link <server>/r/<code>; the old code stops attributing new \
                       conversions (clicks recorded before still count).",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn my_referral_generate(
        &self,
        Parameters(a): Parameters<ReferralGenerateArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<CodeOutput>, ToolError> {
        let request = pb::EnrollmentActionRequest {
            caller: Some(require_principal(&parts)?),
            enrollment_id: a.enrollment_id,
            reason: String::new(),
            code: a.code.unwrap_or_default(),
        };
        let reply: pb::EnrollmentReply = self
            .state
            .rpc
            .call(methods::ROTATE_CODE, &request)
            .await
            .map_err(tool_error)?;
        let e = reply.enrollment.ok_or_else(|| tool_error(ApiError::internal()))?;
        Ok(Json(CodeOutput {
            link: self.link(&e.code),
            code: e.code,
            enrollment_id: e.enrollment_id,
            duplicate: reply.duplicate,
        }))
    }

    #[tool(
        name = "amba_affiliate_my_programs_list",
        description = "Programs your organization is enrolled in (any status), with your code, link and sponsor.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn my_programs_list(
        &self,
        Parameters(a): Parameters<MyListArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<EnrollmentsOutput>, ToolError> {
        let request = pb::ListEnrollmentsRequest {
            caller: Some(require_principal(&parts)?),
            program_id: a.program_id.unwrap_or_default(),
            status: a.status.unwrap_or_default(),
            cursor: a.cursor.unwrap_or_default(),
            limit: a.limit.unwrap_or_default(),
            invites_only: false,
        };
        self.enrollments_call(methods::LIST_MY_ENROLLMENTS, &request).await
    }
}

impl McpServer {
    /// An approve/reject/remove/accept/decline on one enrollment, for the token's org.
    async fn enrollment_action(
        &self,
        method: Method<pb::EnrollmentActionRequest, pb::EnrollmentReply>,
        parts: &http::request::Parts,
        enrollment_id: String,
        reason: String,
    ) -> Result<Json<EnrollmentOutput>, ToolError> {
        let request = pb::EnrollmentActionRequest {
            caller: Some(require_principal(parts)?),
            enrollment_id,
            reason,
            code: String::new(),
        };
        self.enrollment_call(method, &request).await
    }

    /// The affiliate link of a code: `<AMBA_PUBLIC_URL>/r/<code>`.
    fn link(&self, code: &str) -> String {
        format!("{}/r/{code}", self.state.public_url)
    }

    /// Each row's payout-account readiness, asked of the payout service for the whole page at
    /// once. Listing affiliates must not fail because payouts are away: the field is left out.
    async fn add_payout_readiness(
        &self,
        parts: &http::request::Parts,
        enrollments: &mut [EnrollmentView],
    ) -> Result<(), ToolError> {
        if enrollments.is_empty() {
            return Ok(());
        }
        let mut org_ids: Vec<String> = enrollments.iter().map(|e| e.affiliate_org_id.clone()).collect();
        org_ids.sort();
        org_ids.dedup();
        let request = pb::AccountStatusesRequest {
            caller: Some(require_principal(parts)?),
            org_ids,
        };
        let reply: pb::AccountStatusesReply = match self.state.rpc.call(payout::ACCOUNT_STATUSES, &request).await {
            Ok(reply) => reply,
            Err(err) => {
                tracing::warn!(error = %err.message, "payout readiness unavailable for the affiliates list");
                return Ok(());
            }
        };
        for e in enrollments {
            let readiness = match reply.statuses.get(&e.affiliate_org_id).map(String::as_str) {
                Some("ready") => "ready",
                Some(_) => "pending",
                None => "none",
            };
            e.payout_account = Some(readiness.to_owned());
        }
        Ok(())
    }

    async fn enrollment_call<Req: prost::Message>(
        &self,
        method: Method<Req, pb::EnrollmentReply>,
        request: &Req,
    ) -> Result<Json<EnrollmentOutput>, ToolError> {
        let reply: pb::EnrollmentReply = self.state.rpc.call(method, request).await.map_err(tool_error)?;
        let enrollment = self.enrollment_view(reply.enrollment.ok_or_else(|| tool_error(ApiError::internal()))?);
        Ok(Json(EnrollmentOutput {
            enrollment_id: enrollment.enrollment_id.clone(),
            status: enrollment.status.clone(),
            code: enrollment.code.clone(),
            link: enrollment.link.clone(),
            enrollment,
            duplicate: reply.duplicate,
        }))
    }

    async fn enrollments_call(
        &self,
        method: Method<pb::ListEnrollmentsRequest, pb::ListEnrollmentsResponse>,
        request: &pb::ListEnrollmentsRequest,
    ) -> Result<Json<EnrollmentsOutput>, ToolError> {
        let reply: pb::ListEnrollmentsResponse = self.state.rpc.call(method, request).await.map_err(tool_error)?;
        Ok(Json(EnrollmentsOutput {
            enrollments: reply.enrollments.into_iter().map(|e| self.enrollment_view(e)).collect(),
            next_cursor: non_empty(reply.next_cursor),
        }))
    }
}

impl McpServer {
    fn enrollment_view(&self, e: pb::Enrollment) -> EnrollmentView {
        let code = non_empty(e.code);
        EnrollmentView {
            created_at: rfc3339(e.created_at_micros),
            updated_at: rfc3339(e.updated_at_micros),
            parent_enrollment_id: non_empty(e.parent_enrollment_id),
            link: code.as_deref().map(|c| self.link(c)),
            code,
            reason: non_empty(e.reason),
            payout_account: None,
            enrollment_id: e.enrollment_id,
            program_id: e.program_id,
            program_name: e.program_name,
            affiliate_org_id: e.affiliate_org_id,
            affiliate_org_name: e.affiliate_org_name,
            status: e.status,
            origin: e.origin,
            depth: e.depth,
        }
    }
}

/// A program id from what an affiliate was given: the id itself, or a join link
/// `<server>/join/<program_id>` (any host: the id is what counts; a query or fragment is ignored).
fn program_of_join_link(given: &str) -> String {
    let given = given.trim();
    match given.split_once("/join/") {
        Some((_, rest)) => rest.split(['/', '?', '#']).next().unwrap_or_default().to_owned(),
        None => given.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::program_of_join_link;

    #[test]
    fn join_links_name_their_program() {
        let id = "prg_0196f3c2aaaabbbbccccddddeeeeffff";
        assert_eq!(program_of_join_link(id), id);
        assert_eq!(program_of_join_link(&format!(" https://amba.example/join/{id} ")), id);
        assert_eq!(
            program_of_join_link(&format!("http://127.0.0.1:8080/join/{id}?ref=x")),
            id
        );
        assert_eq!(program_of_join_link(&format!("/join/{id}/")), id);
    }
}
