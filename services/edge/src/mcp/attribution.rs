use super::{McpServer, ToolError, require_principal, tool_error};
use crate::request::{non_empty, parse_instant, parse_time, rfc3339};
use amba_core::ApiError;
use amba_proto::Method;
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
    /// ISO 4217. Another currency than the program's is converted at the reference rate of the
    /// sale's date (ECB); until that rate is known the sale waits, held with fx_rate_missing.
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
pub struct AssignArgs {
    /// The unattributed conversion, `cnv_` + 32 hex digits (from _conversions_list with status
    /// unattributed).
    pub conversion_id: String,
    /// The affiliate's enrollment in the same program, `enr_` + 32 hex digits (from
    /// _affiliates_list). Give this or `code`, not both.
    pub enrollment_id: Option<String>,
    /// The affiliate's current referral code in the same program (the conversion then shows
    /// it). Give this or `enrollment_id`, not both.
    pub code: Option<String>,
    /// Why you credit it (e.g. "customer named Ann's podcast at checkout"); kept with the
    /// conversion and shown to the affiliate.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AssignOutput {
    pub conversion: ConversionView,
    /// True when it was already assigned to that enrollment: nothing changed.
    pub duplicate: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct BulkDecideArgs {
    /// approve (commission accrues under the program's current rule) or reject (no commission).
    #[schemars(extend("enum" = ["approve", "reject"]))]
    pub decision: String,
    /// The pending conversions to decide, 1-200 ids (`cnv_…`, from _conversions_list with status
    /// pending).
    #[schemars(length(min = 1, max = 200))]
    pub conversion_ids: Vec<String>,
    /// Why, in a sentence; kept with each conversion and shown to the affiliate.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DecisionOutcomeView {
    pub conversion_id: String,
    /// approved | rejected | already approved | already rejected | not found | conflict: <why> |
    /// invalid: <why> | not applied, retry: <why>
    pub outcome: String,
    /// The conversion's status after the call (absent when not found or invalid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The commission decided (approved ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commission_minor: Option<i64>,
    /// The error code when it was not applied: NOT_FOUND, CONFLICT, INVALID_ARGUMENT, UNAVAILABLE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct BulkDecideOutput {
    /// One per id given, in the same order.
    pub outcomes: Vec<DecisionOutcomeView>,
    /// How many this call approved or rejected.
    pub applied: u32,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExportArgs {
    pub program_id: String,
    /// Start of the sale-time range (inclusive): RFC 3339 (2026-01-01T00:00:00Z) or a UTC date
    /// (2026-01-01).
    pub from: String,
    /// End of the sale-time range (exclusive), at most 366 days after `from`: RFC 3339 or a UTC
    /// date.
    pub to: String,
    /// The previous page's `next_cursor`; omit for the first page.
    pub cursor: Option<String>,
    /// Rows per page, 1-5000 (default 5000; a page of very long rows may hold fewer).
    #[schemars(range(min = 1, max = 5000))]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ExportOutput {
    /// RFC 4180 CSV: a header row, then one row per conversion by sale time, CRLF line ends.
    pub csv: String,
    /// Conversion rows in this page (the header not counted).
    pub rows: u32,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ConversionsListArgs {
    pub program_id: String,
    /// `held`: pending because a fraud check held it (see hold_reasons); release one with
    /// amba_affiliate_conversion_approve, or reject it, each with a reason.
    #[schemars(extend("enum" = ["pending", "held", "approved", "rejected", "unattributed", "clawed_back"]))]
    pub status: Option<String>,
    pub cursor: Option<String>,
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct MyConversionsListArgs {
    pub program_id: Option<String>,
    #[schemars(extend("enum" = ["pending", "held", "approved", "rejected", "clawed_back"]))]
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
    /// In the program's currency (for a sale in another one: converted, see fx).
    pub amount_minor: i64,
    pub currency: String,
    /// A sale reported in another currency: as reported, and the rate it was converted at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fx: Option<FxView>,
    /// pending | approved | rejected | unattributed | clawed_back
    pub status: String,
    /// code | touchpoint | customer | none | assigned (credited by the owner)
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
    /// Why it is unattributed, held, rejected or assigned, or why an approved renewal earned
    /// nothing (after the recurring window).
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
    /// Held for review by a fraud check (pending until the owner approves or rejects it).
    pub held_for_review: bool,
    /// Why, as reason codes: self_referral, disposable_email, velocity, click_to_sale,
    /// refund_rate (owners only; the details are in `reason`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hold_reasons: Vec<String>,
    /// The program's attribution policy it was decided under: last_touch | first_touch,
    /// code_wins | touch_wins, and its version (amba_affiliate_commission_explain tells the rest).
    pub attribution_model: String,
    pub attribution_precedence: String,
    pub attribution_version: u32,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FxView {
    pub sale_amount_minor: i64,
    pub sale_currency: String,
    /// Program currency per unit of the sale's currency; absent while the sale waits for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// The reference day whose rates were used (YYYY-MM-DD).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
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
                       reported with the same subject_ref and no code is attributed to the latest (first_touch: earliest) click inside the \
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
            client_ip: crate::request::client_ip(&self.state, &parts)
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
                       (or, under first_touch, the earliest) click of subject_ref in the attribution window; a program \
                       set to touch_wins credits that click even when a code is given. Otherwise recorded as unattributed. Idempotent on \
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
        name = "amba_affiliate_conversion_assign",
        description = "Credit an unattributed sale of your program to one of its active affiliates (by enrollment_id or \
                       referral code). It then goes the way an attributed report would: approved at once with the \
                       commission of the rule in force at the sale's time in auto-approving programs (the ledger books \
                       it once, about a second later), else pending for your decision. Assigning it again to the same \
                       affiliate returns it unchanged with duplicate=true; any other conversion that is not \
                       unattributed is refused (CONFLICT naming its status).",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn conversion_assign(
        &self,
        Parameters(a): Parameters<AssignArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<AssignOutput>, ToolError> {
        let request = pb::AssignConversionRequest {
            caller: Some(require_principal(&parts)?),
            conversion_id: a.conversion_id,
            enrollment_id: a.enrollment_id.unwrap_or_default(),
            code: a.code.unwrap_or_default(),
            reason: a.reason.unwrap_or_default(),
        };
        let reply: pb::AssignConversionReply = self.call_service(methods::ASSIGN, &request).await?;
        let conversion = reply.conversion.ok_or_else(|| tool_error(ApiError::internal()))?;
        Ok(Json(AssignOutput {
            conversion: conversion_view(conversion, false),
            duplicate: reply.duplicate,
        }))
    }

    #[tool(
        name = "amba_affiliate_conversions_decide",
        description = "Approve or reject up to 200 pending conversions of your programs in one call. Each id is decided \
                       on its own (all valid ones are applied; one conversion's commission is booked entirely or not at \
                       all) and gets its outcome, in order: approved / rejected, `already approved` / `already \
                       rejected` (nothing changed, safe to retry), `not found`, `forbidden: <why>` (the program's \
                       affiliates may not decide), `conflict: <why>` (e.g. not pending), \
                       `invalid: <why>`, or `not applied, retry: <why>`. Approvals accrue commission under the \
                       program's current rule and e-mail the affiliate, as amba_affiliate_conversion_approve does.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn conversions_decide(
        &self,
        Parameters(a): Parameters<BulkDecideArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<BulkDecideOutput>, ToolError> {
        let request = pb::DecideConversionsRequest {
            caller: Some(require_principal(&parts)?),
            decision: a.decision,
            conversion_ids: a.conversion_ids,
            reason: a.reason.unwrap_or_default(),
        };
        let reply: pb::DecideConversionsReply = self.call_service(methods::DECIDE_MANY, &request).await?;
        let outcomes: Vec<DecisionOutcomeView> = reply
            .outcomes
            .into_iter()
            .map(|o| {
                let applied = o.error_code.is_empty();
                DecisionOutcomeView {
                    commission_minor: (applied && o.status != "rejected").then_some(o.commission_minor),
                    status: non_empty(o.status),
                    error_code: non_empty(o.error_code),
                    conversion_id: o.conversion_id,
                    outcome: o.outcome,
                }
            })
            .collect();
        let applied = outcomes
            .iter()
            .filter(|o| matches!(o.outcome.as_str(), "approved" | "rejected"))
            .count();
        Ok(Json(BulkDecideOutput {
            outcomes,
            applied: u32::try_from(applied).unwrap_or(u32::MAX),
        }))
    }

    #[tool(
        name = "amba_affiliate_conversions_export",
        description = "Your program's conversions with a sale time in [from, to) (at most 366 days) as CSV for \
                       accounting, oldest sale first, in pages of `limit` rows (default and most 5,000; fewer when rows \
                       are long): pass next_cursor to continue. Columns: conversion_id, external_id, occurred_at, status, \
                       affiliate_org_id, enrollment_id, code, amount_minor, currency, commission_minor, \
                       clawed_back_minor, net_commission_minor, reason, decided_at, refunded_minor. Amounts are integer \
                       minor units; times RFC 3339 UTC. The commission figures are the attribution service's: the direct \
                       commission decided at approval (0 unless approved; upline overrides not included), the part of \
                       it refunds took back (prorated to refunded_minor, the refunded part of the sale, as the ledger \
                       reverses it), and what remains; the ledger's balances, holds and payouts are in \
                       amba_affiliate_analytics_get and _payouts_list. Text cells starting with = + - or @ get a \
                       leading ' so spreadsheets do not run them as formulas.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn conversions_export(
        &self,
        Parameters(a): Parameters<ExportArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<ExportOutput>, ToolError> {
        let request = pb::ExportConversionsRequest {
            caller: Some(require_principal(&parts)?),
            program_id: a.program_id,
            from_micros: parse_instant("from", &a.from).map_err(tool_error)?,
            to_micros: parse_instant("to", &a.to).map_err(tool_error)?,
            cursor: a.cursor.unwrap_or_default(),
            limit: a.limit.unwrap_or_default(),
        };
        let reply: pb::ExportConversionsReply = self.call_service(methods::EXPORT, &request).await?;
        Ok(Json(ExportOutput {
            csv: reply.csv,
            rows: reply.rows,
            next_cursor: non_empty(reply.next_cursor),
        }))
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
        method: Method<pb::DecideConversionRequest, pb::ConversionReply>,
        args: DecideArgs,
        parts: &http::request::Parts,
    ) -> Result<Json<ConversionOutput>, ToolError> {
        let request = pb::DecideConversionRequest {
            caller: Some(require_principal(parts)?),
            conversion_id: args.conversion_id,
            reason: args.reason.unwrap_or_default(),
        };
        let reply: pb::ConversionReply = self.state.rpc.call(method, &request).await.map_err(tool_error)?;
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
        let reply: pb::ListConversionsResponse =
            self.state.rpc.call(methods::LIST, request).await.map_err(tool_error)?;
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
        // An affiliate learns that a sale is held, not what the detector saw.
        reason: if affiliate_view && c.held_for_review && c.status == "pending" {
            Some("held for review".to_owned())
        } else {
            non_empty(c.reason)
        },
        hold_reasons: if affiliate_view { Vec::new() } else { c.hold_reasons },
        fx: (!c.sale_currency.is_empty()).then(|| FxView {
            sale_amount_minor: c.sale_amount_minor,
            sale_currency: c.sale_currency,
            rate: non_empty(c.fx_rate),
            rate_date: non_empty(c.fx_rate_date),
            source: non_empty(c.fx_source),
        }),
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
        attribution_model: c.attribution_model,
        attribution_precedence: c.attribution_precedence,
        attribution_version: c.attribution_version,
    }
}
