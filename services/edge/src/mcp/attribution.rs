use super::enrollments::non_empty;
use super::programs::rfc3339;
use super::{McpServer, ToolError, require_principal, tool_error};
use amba_core::ApiError;
use amba_proto::methods::attribution as methods;
use amba_proto::wire as pb;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct TouchpointArgs {
    pub program_id: String,
    /// The affiliate's referral code from the link the visitor followed.
    pub code: String,
    /// Your own stable reference for the visitor (e.g. an anonymous id); report the conversion
    /// later with the same subject_ref and no code.
    pub subject_ref: String,
    /// When the click happened (RFC 3339); default now.
    pub occurred_at: Option<String>,
    /// Where the visitor landed.
    pub landing_url: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TouchpointOutput {
    pub touchpoint_id: String,
    /// True when the same code and subject clicked within the last 30 minutes (counted once).
    pub duplicate: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReportArgs {
    pub program_id: String,
    /// Your system's name for where the sale happened (e.g. "web", "ios"); with external_id
    /// it makes the report idempotent.
    pub project_id: String,
    /// Your id of the sale (order id, invoice id).
    pub external_id: String,
    /// Sale amount in integer minor units of `currency`: 2469 is $24.69 in USD, 500 is ¥500 in JPY.
    #[schemars(range(min = 0, max = 1_000_000_000_000_000i64))]
    pub amount_minor: i64,
    /// Must be the program's currency.
    pub currency: String,
    /// The affiliate's referral code, when the sale carries one.
    pub code: Option<String>,
    /// The visitor reference used in amba_affiliate_touchpoint_record (attribution by click).
    pub subject_ref: Option<String>,
    /// Your customer id: binds the customer to the affiliate so renewals are attributed too.
    pub customer_ref: Option<String>,
    /// The customer's e-mail, for self-referral checks (not stored).
    pub customer_email: Option<String>,
    /// When the sale happened (RFC 3339); default now.
    pub occurred_at: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DecideArgs {
    pub conversion_id: String,
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ConversionsListArgs {
    pub program_id: String,
    #[schemars(extend("enum" = ["pending", "approved", "rejected", "unattributed", "clawed_back"]))]
    pub status: Option<String>,
    pub cursor: Option<String>,
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct MyConversionsListArgs {
    pub program_id: Option<String>,
    #[schemars(extend("enum" = ["pending", "approved", "rejected", "clawed_back"]))]
    pub status: Option<String>,
    pub cursor: Option<String>,
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ConversionView {
    pub conversion_id: String,
    pub program_id: String,
    pub project_id: String,
    pub external_id: String,
    pub amount_minor: i64,
    pub currency: String,
    /// pending | approved | rejected | unattributed | clawed_back
    pub status: String,
    /// code | touchpoint | customer | none
    pub attribution: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub touchpoint_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_ref: Option<String>,
    /// Why it is unattributed, held or rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub occurred_at: String,
    pub recorded_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// Commission decided at approval (0 until then).
    pub commission_minor: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commission_version: Option<u32>,
    /// A renewal of a customer bound to the affiliate.
    pub renewal: bool,
    pub clawed_back_minor: i64,
    pub held_for_review: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ReportOutput {
    pub conversion_id: String,
    /// pending | approved | unattributed
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment_id: Option<String>,
    pub commission_minor: i64,
    /// True when this key was reported before: the original outcome is returned.
    pub duplicate: bool,
    pub conversion: ConversionView,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ConversionOutput {
    pub conversion: ConversionView,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ConversionsOutput {
    pub conversions: Vec<ConversionView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[tool_router(router = attribution_tools, vis = "pub(super)")]
impl McpServer {
    #[tool(
        name = "amba_affiliate_touchpoint_record",
        description = "Record a click on an affiliate link (public: no token, no session needed). A later conversion \
                       reported with the same subject_ref and no code is attributed to the latest click inside the \
                       program's attribution window.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn touchpoint_record(
        &self,
        Parameters(a): Parameters<TouchpointArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<TouchpointOutput>, ToolError> {
        let request = pb::RecordTouchpointRequest {
            program_id: a.program_id,
            code: a.code,
            subject_ref: a.subject_ref,
            occurred_at_micros: parse_time(a.occurred_at.as_deref()).map_err(tool_error)?,
            landing_url: a.landing_url.unwrap_or_default(),
            client_ip: super::client_ip(&self.state, &parts)
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
            user_agent: crate::public::user_agent(&parts.headers),
        };
        let reply = crate::clicks::record(&self.state, request).await.map_err(tool_error)?;
        Ok(Json(TouchpointOutput {
            touchpoint_id: reply.touchpoint_id,
            duplicate: reply.duplicate,
        }))
    }

    #[tool(
        name = "amba_affiliate_conversion_report",
        description = "Report a sale. Attributed by code, else by the customer's binding (renewals), else by the latest \
                       click of subject_ref in the attribution window; otherwise recorded as unattributed. Idempotent on \
                       (program_id, project_id, external_id): a repeat returns the original outcome with duplicate=true.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn conversion_report(
        &self,
        Parameters(a): Parameters<ReportArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<ReportOutput>, ToolError> {
        let caller = require_principal(&parts)?;
        let request = pb::ReportConversionRequest {
            program_id: a.program_id,
            project_id: a.project_id,
            external_id: a.external_id,
            amount_minor: a.amount_minor,
            currency: a.currency,
            code: a.code.unwrap_or_default(),
            subject_ref: a.subject_ref.unwrap_or_default(),
            customer_ref: a.customer_ref.unwrap_or_default(),
            customer_email: a.customer_email.unwrap_or_default(),
            occurred_at_micros: parse_time(a.occurred_at.as_deref()).map_err(tool_error)?,
        };
        let reply = self
            .state
            .reports
            .report("mcp", caller, request)
            .await
            .map_err(tool_error)?;
        let conversion = conversion_view(reply.conversion.ok_or_else(|| tool_error(ApiError::internal()))?, false);
        Ok(Json(ReportOutput {
            conversion_id: conversion.conversion_id.clone(),
            status: conversion.status.clone(),
            enrollment_id: conversion.enrollment_id.clone(),
            commission_minor: conversion.commission_minor,
            duplicate: reply.duplicate,
            conversion,
        }))
    }

    #[tool(
        name = "amba_affiliate_conversion_approve",
        description = "Approve a pending conversion: commission accrues now, under the program's current rule, and the \
                       affiliate is e-mailed.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn conversion_approve(
        &self,
        Parameters(a): Parameters<DecideArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<ConversionOutput>, ToolError> {
        self.decide(methods::APPROVE, a, &parts).await
    }

    #[tool(
        name = "amba_affiliate_conversion_reject",
        description = "Reject a pending conversion (e.g. fraud, a cancelled order): it earns no commission and the \
                       affiliate sees it as rejected with your reason. Only pending conversions can be decided.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn conversion_reject(
        &self,
        Parameters(a): Parameters<DecideArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<ConversionOutput>, ToolError> {
        self.decide(methods::REJECT, a, &parts).await
    }

    #[tool(
        name = "amba_affiliate_conversions_list",
        description = "Your program's conversions, oldest first; filter by status, page with cursor.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn conversions_list(
        &self,
        Parameters(a): Parameters<ConversionsListArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<ConversionsOutput>, ToolError> {
        let request = pb::ListConversionsRequest {
            caller: Some(require_principal(&parts)?),
            program_id: a.program_id,
            status: a.status.unwrap_or_default(),
            cursor: a.cursor.unwrap_or_default(),
            limit: a.limit.unwrap_or_default(),
            mine: false,
        };
        self.list(&request, false).await
    }

    #[tool(
        name = "amba_affiliate_my_conversions_list",
        description = "Conversions attributed to your organization (only yours), oldest first.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn my_conversions_list(
        &self,
        Parameters(a): Parameters<MyConversionsListArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<ConversionsOutput>, ToolError> {
        let request = pb::ListConversionsRequest {
            caller: Some(require_principal(&parts)?),
            program_id: a.program_id.unwrap_or_default(),
            status: a.status.unwrap_or_default(),
            cursor: a.cursor.unwrap_or_default(),
            limit: a.limit.unwrap_or_default(),
            mine: true,
        };
        self.list(&request, true).await
    }
}

impl McpServer {
    /// Approve or reject, as the caller.
    async fn decide(
        &self,
        method: &str,
        args: DecideArgs,
        parts: &http::request::Parts,
    ) -> Result<Json<ConversionOutput>, ToolError> {
        let request = pb::DecideConversionRequest {
            caller: Some(require_principal(parts)?),
            conversion_id: args.conversion_id,
            reason: args.reason.unwrap_or_default(),
        };
        let reply: pb::ConversionReply = self
            .state
            .rpc
            .call(methods::SERVICE, method, &request)
            .await
            .map_err(tool_error)?;
        let conversion = reply.conversion.ok_or_else(|| tool_error(ApiError::internal()))?;
        Ok(Json(ConversionOutput {
            conversion: conversion_view(conversion, false),
        }))
    }

    async fn list(
        &self,
        request: &pb::ListConversionsRequest,
        affiliate_view: bool,
    ) -> Result<Json<ConversionsOutput>, ToolError> {
        let reply: pb::ListConversionsResponse = self
            .state
            .rpc
            .call(methods::SERVICE, methods::LIST, request)
            .await
            .map_err(tool_error)?;
        Ok(Json(ConversionsOutput {
            conversions: reply
                .conversions
                .into_iter()
                .map(|c| conversion_view(c, affiliate_view))
                .collect(),
            next_cursor: non_empty(reply.next_cursor),
        }))
    }
}

/// RFC 3339 → unix microseconds (0 when absent: the service uses "now").
pub fn parse_time(text: Option<&str>) -> Result<i64, ApiError> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(0),
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| d.timestamp_micros())
            .map_err(|_| {
                ApiError::invalid(format!(
                    "occurred_at {t:?} is not an RFC 3339 time such as 2026-11-24T10:00:00Z"
                ))
            }),
    }
}

/// An affiliate sees its conversions without the owner's customer references.
pub fn conversion_view(c: pb::Conversion, affiliate_view: bool) -> ConversionView {
    ConversionView {
        occurred_at: rfc3339(c.occurred_at_micros),
        recorded_at: rfc3339(c.recorded_at_micros),
        decided_at: (c.decided_at_micros != 0).then(|| rfc3339(c.decided_at_micros)),
        enrollment_id: non_empty(c.enrollment_id),
        code: non_empty(c.code),
        touchpoint_id: non_empty(c.touchpoint_id),
        subject_ref: if affiliate_view { None } else { non_empty(c.subject_ref) },
        customer_ref: if affiliate_view {
            None
        } else {
            non_empty(c.customer_ref)
        },
        reason: non_empty(c.reason),
        commission_version: (c.commission_version != 0).then_some(c.commission_version),
        conversion_id: c.conversion_id,
        program_id: c.program_id,
        project_id: c.project_id,
        external_id: if affiliate_view { String::new() } else { c.external_id },
        amount_minor: c.amount_minor,
        currency: c.currency,
        status: c.status,
        attribution: c.attribution,
        commission_minor: c.commission_minor,
        renewal: c.renewal,
        clawed_back_minor: c.clawed_back_minor,
        held_for_review: c.held_for_review,
    }
}
