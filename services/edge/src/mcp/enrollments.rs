use super::programs::rfc3339;
use super::{McpServer, ToolError, require_principal, tool_error};
use amba_core::ApiError;
use amba_proto::methods::enrollment as methods;
use amba_proto::wire as pb;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct InviteArgs {
    pub program_id: String,
    /// The affiliate's org id (they get one from amba_affiliate_signup).
    pub affiliate_org_id: String,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EnrollmentOutput {
    pub enrollment_id: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
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
    pub enrollment_id: String,
}

#[tool_router(router = enrollment_tools, vis = "pub(super)")]
impl McpServer {
    #[tool(
        name = "amba_affiliate_invite",
        description = "Invite an org already on Amba into your program. Returns a pending enrollment and its referral \
                       code; it activates when the affiliate accepts (or you approve).",
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
    ) -> Result<Json<EnrollmentOutput>, ToolError> {
        let request = pb::InviteRequest {
            caller: Some(require_principal(&parts)?),
            program_id: a.program_id,
            affiliate_org_id: a.affiliate_org_id,
            parent_enrollment_id: a.parent_enrollment_id.unwrap_or_default(),
            idempotency_key: a.idempotency_key.unwrap_or_default(),
        };
        self.enrollment_call(methods::INVITE, &request).await
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
        description = "Your program's affiliates with status, code, sponsor (parent_enrollment_id) and depth: the \
                       multi-level tree. Filter by status; page with cursor.",
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
        self.enrollments_call(methods::LIST_PROGRAM_ENROLLMENTS, &request).await
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
            .call(methods::SERVICE, methods::LIST_MY_ENROLLMENTS, &request)
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
        description = "Accept an invitation: the enrollment becomes active and you get your referral code.",
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
        description = "Apply to join an active program. Pending until the owner approves, or active at once when the \
                       program approves applications automatically. Applying again returns the same enrollment.",
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
            program_id: a.program_id,
            parent_enrollment_id: a.parent_enrollment_id.unwrap_or_default(),
        };
        self.enrollment_call(methods::APPLY, &request).await
    }

    #[tool(
        name = "amba_affiliate_my_referral_generate",
        description = "Rotate your referral code for an enrollment: returns a fresh code; the old one stops attributing \
                       new conversions (clicks recorded before still count).",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn my_referral_generate(
        &self,
        Parameters(a): Parameters<EnrollmentArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<CodeOutput>, ToolError> {
        let request = pb::EnrollmentActionRequest {
            caller: Some(require_principal(&parts)?),
            enrollment_id: a.enrollment_id,
            reason: String::new(),
        };
        let reply: pb::EnrollmentReply = self
            .state
            .rpc
            .call(methods::SERVICE, methods::ROTATE_CODE, &request)
            .await
            .map_err(tool_error)?;
        let e = reply.enrollment.ok_or_else(|| tool_error(ApiError::internal()))?;
        Ok(Json(CodeOutput {
            code: e.code,
            enrollment_id: e.enrollment_id,
        }))
    }

    #[tool(
        name = "amba_affiliate_my_programs_list",
        description = "Programs your organization is enrolled in (any status), with your code and sponsor.",
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
        method: &str,
        parts: &http::request::Parts,
        enrollment_id: String,
        reason: String,
    ) -> Result<Json<EnrollmentOutput>, ToolError> {
        let request = pb::EnrollmentActionRequest {
            caller: Some(require_principal(parts)?),
            enrollment_id,
            reason,
        };
        self.enrollment_call(method, &request).await
    }

    async fn enrollment_call<Req: prost::Message>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Json<EnrollmentOutput>, ToolError> {
        let reply: pb::EnrollmentReply = self
            .state
            .rpc
            .call(methods::SERVICE, method, request)
            .await
            .map_err(tool_error)?;
        let enrollment = enrollment_view(reply.enrollment.ok_or_else(|| tool_error(ApiError::internal()))?);
        Ok(Json(EnrollmentOutput {
            enrollment_id: enrollment.enrollment_id.clone(),
            status: enrollment.status.clone(),
            code: enrollment.code.clone(),
            enrollment,
            duplicate: reply.duplicate,
        }))
    }

    async fn enrollments_call(
        &self,
        method: &str,
        request: &pb::ListEnrollmentsRequest,
    ) -> Result<Json<EnrollmentsOutput>, ToolError> {
        let reply: pb::ListEnrollmentsResponse = self
            .state
            .rpc
            .call(methods::SERVICE, method, request)
            .await
            .map_err(tool_error)?;
        Ok(Json(EnrollmentsOutput {
            enrollments: reply.enrollments.into_iter().map(enrollment_view).collect(),
            next_cursor: non_empty(reply.next_cursor),
        }))
    }
}

fn enrollment_view(e: pb::Enrollment) -> EnrollmentView {
    EnrollmentView {
        created_at: rfc3339(e.created_at_micros),
        updated_at: rfc3339(e.updated_at_micros),
        parent_enrollment_id: non_empty(e.parent_enrollment_id),
        code: non_empty(e.code),
        reason: non_empty(e.reason),
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

pub fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}
