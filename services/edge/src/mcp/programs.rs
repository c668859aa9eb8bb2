use super::{McpServer, ToolError, require_principal, tool_error};
use crate::request::rfc3339;
use amba_core::ApiError;
use amba_proto::Method;
use amba_proto::methods::enrollment as methods;
use amba_proto::wire as pb;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Settings every program has; on update an absent field keeps its value.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct ProgramOptions {
    /// Whether conversions need the owner's approval before commission accrues. Default auto.
    #[schemars(extend("enum" = ["auto", "manual"]))]
    pub approval_mode: Option<String>,
    /// Whether affiliates who apply to join need your approval. Default manual.
    #[schemars(extend("enum" = ["auto", "manual"]))]
    pub affiliate_approval: Option<String>,
    /// Days after a click during which a conversion is attributed to it (1-365). Default 30.
    #[schemars(range(min = 1, max = 365))]
    pub attribution_window_days: Option<u32>,
    /// Which touchpoint inside the window gets a sale: last_touch (the latest click, default) or
    /// first_touch (the earliest). A renewal stays with the bound customer's affiliate either way.
    #[schemars(extend("enum" = ["last_touch", "first_touch"]))]
    pub attribution_model: Option<String>,
    /// When a report carries both a code and a tracked subject with a touchpoint: code_wins (the
    /// code's affiliate, default) or touch_wins (the touchpoint's). A change of model, precedence
    /// or window is a new attribution version; each conversion pins the one it was decided under.
    #[schemars(extend("enum" = ["code_wins", "touch_wins"]))]
    pub attribution_precedence: Option<String>,
    /// Fraud checks on conversions; a hit holds the sale for your review with a reason code.
    /// {"self_referral": true, "disposable_email": true, "velocity": {"max_per_minute": 30},
    /// "click_to_sale": {"min_seconds": 5}, "refund_rate": {"max_bps": 3000, "last_sales": 20}}.
    /// The first two are on unless set to false; the others run only with a threshold.
    pub fraud_checks: Option<serde_json::Value>,
    /// Days commission is held (refund window) before it becomes payable (0-365). Default 30.
    /// Applies to new commissions only (approved after the change): commission already held keeps
    /// its release date (amba_affiliate_commission_release releases it early).
    #[schemars(range(min = 0, max = 365))]
    pub hold_days: Option<u32>,
    /// Smallest payable balance paid out, in minor units. Default 0.
    #[schemars(range(min = 0, max = 1_000_000_000_000_000i64))]
    pub payout_threshold_minor: Option<i64>,
    /// When payouts run unattended. Default manual.
    #[schemars(extend("enum" = ["manual", "weekly", "monthly"]))]
    pub payout_schedule: Option<String>,
    /// Platform fee deducted from each payout, in basis points (0-10000). Default 0.
    #[schemars(range(min = 0, max = 10_000))]
    pub platform_fee_bps: Option<u32>,
    /// Upline overrides: {"enabled": true, "levels_bps": [500, 200]} (level 1 = direct sponsor).
    pub multi_level: Option<serde_json::Value>,
    /// Where affiliate links send visitors: an https page of your own site (never this platform's
    /// host), e.g. https://acme.example/pricing. On update, "" removes it.
    pub landing_url: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ProgramsCreateArgs {
    pub name: String,
    /// ISO 4217 code, e.g. USD, EUR, JPY. Fixed once the program leaves draft.
    pub currency: String,
    /// Versioned commission rule, e.g. {"schema":1,"type":"percentage","bps":2000},
    /// {"schema":1,"type":"flat","amount_minor":1500}, {"schema":1,"type":"recurring","bps":2000,"months":12},
    /// {"schema":1,"type":"tiered","basis":"conversions","period":"month","tiers":[{"from":0,"bps":1000},{"from":10,"bps":1500}]}.
    pub commission: serde_json::Value,
    #[serde(flatten)]
    pub options: ProgramOptions,
    /// Makes a retried create return the first program instead of a second one.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ProgramsUpdateArgs {
    pub program_id: String,
    /// draft → active ⇄ paused → archived.
    #[schemars(extend("enum" = ["draft", "active", "paused", "archived"]))]
    pub status: Option<String>,
    pub name: Option<String>,
    pub currency: Option<String>,
    /// A new commission rule; it becomes a new version, earlier commissions keep theirs.
    pub commission: Option<serde_json::Value>,
    #[serde(flatten)]
    pub options: ProgramOptions,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ProgramsGetArgs {
    pub program_id: String,
    /// Show the rule of this past version instead of the current one.
    #[schemars(range(min = 1))]
    pub commission_version: Option<u32>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct ProgramsListArgs {
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
    /// Page size, 1-200 (default 50).
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ProgramView {
    pub program_id: String,
    pub owner_org_id: String,
    pub name: String,
    pub currency: String,
    pub status: String,
    pub approval_mode: String,
    pub affiliate_approval: String,
    pub attribution_window_days: u32,
    pub attribution_model: String,
    pub attribution_precedence: String,
    /// Bumped when the model, precedence or window changes; conversions name the one they used.
    pub attribution_version: u32,
    pub fraud_checks: serde_json::Value,
    pub hold_days: u32,
    pub payout_threshold_minor: i64,
    pub payout_schedule: String,
    pub platform_fee_bps: u32,
    pub multi_level: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub landing_url: Option<String>,
    pub commission_version: u32,
    pub commission: serde_json::Value,
    /// The public join link to share, `<server>/join/<program_id>`: a page naming the program and
    /// how to apply (amba_affiliate_my_program_apply takes the link itself). It shows only while
    /// the program is active; otherwise it answers 404.
    pub join_url: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CommissionVersionView {
    pub version: u32,
    pub commission: serde_json::Value,
    pub created_at: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ProgramOutput {
    pub program: ProgramView,
    /// The latest 20 commission rule versions, oldest first (get only); an older one: pass
    /// commission_version.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub commission_history: Vec<CommissionVersionView>,
    /// True when an idempotency key replayed an earlier create.
    pub duplicate: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ProgramsListOutput {
    pub programs: Vec<ProgramView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[tool_router(router = program_tools, vis = "pub(super)")]
impl McpServer {
    #[tool(
        name = "amba_affiliate_programs_create",
        description = "Create an affiliate program (status draft) with a commission rule. Launch it with \
                       amba_affiliate_programs_update {program_id, status: \"active\"}. hold_days applies to each \
                       commission as it is approved; changing it later affects new commissions only.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn programs_create(
        &self,
        Parameters(args): Parameters<ProgramsCreateArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<ProgramOutput>, ToolError> {
        let caller = require_principal(&parts)?;
        self.landing_precheck(&args.options)?;
        let mut settings = options_to_proto(args.options);
        settings.name = Some(args.name);
        settings.currency = Some(args.currency);
        settings.commission_json = Some(commission_text(args.commission).map_err(tool_error)?);
        let request = pb::CreateProgramRequest {
            caller: Some(caller),
            settings: Some(settings),
            idempotency_key: args.idempotency_key.unwrap_or_default(),
        };
        self.program_call(methods::PROGRAM_CREATE, &request).await
    }

    #[tool(
        name = "amba_affiliate_programs_update",
        description = "Change a program's settings or status (draft → active ⇄ paused → archived). A new commission \
                       rule becomes a new version; commissions already computed keep their version. A new hold_days \
                       applies to new commissions only: held commission keeps its release date (release it early \
                       with amba_affiliate_commission_release).",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn programs_update(
        &self,
        Parameters(args): Parameters<ProgramsUpdateArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<ProgramOutput>, ToolError> {
        let caller = require_principal(&parts)?;
        self.landing_precheck(&args.options)?;
        let mut settings = options_to_proto(args.options);
        settings.status = args.status;
        settings.name = args.name;
        settings.currency = args.currency;
        settings.commission_json = args.commission.map(commission_text).transpose().map_err(tool_error)?;
        let request = pb::UpdateProgramRequest {
            caller: Some(caller),
            program_id: args.program_id,
            settings: Some(settings),
        };
        self.program_call(methods::PROGRAM_UPDATE, &request).await
    }

    #[tool(
        name = "amba_affiliate_programs_get",
        description = "A program you own: its settings, status and current commission rule, plus the history of its \
                       latest 20 rule versions (pass commission_version to see any older rule).",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn programs_get(
        &self,
        Parameters(args): Parameters<ProgramsGetArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<ProgramOutput>, ToolError> {
        let caller = require_principal(&parts)?;
        let request = pb::GetProgramRequest {
            caller: Some(caller),
            program_id: args.program_id,
            commission_version: args.commission_version,
        };
        self.program_call(methods::PROGRAM_GET, &request).await
    }

    #[tool(
        name = "amba_affiliate_programs_list",
        description = "The programs your organization owns, oldest first. Pass next_cursor as cursor for the next page.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn programs_list(
        &self,
        Parameters(args): Parameters<ProgramsListArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<ProgramsListOutput>, ToolError> {
        let caller = require_principal(&parts)?;
        let request = pb::ListProgramsRequest {
            caller: Some(caller),
            cursor: args.cursor.unwrap_or_default(),
            limit: args.limit.unwrap_or_default(),
        };
        let reply: pb::ListProgramsResponse = self
            .state
            .rpc
            .call(methods::PROGRAM_LIST, &request)
            .await
            .map_err(tool_error)?;
        Ok(Json(ProgramsListOutput {
            programs: reply
                .programs
                .into_iter()
                .map(|p| program_view(p, &self.state.public_url))
                .collect(),
            next_cursor: (!reply.next_cursor.is_empty()).then_some(reply.next_cursor),
        }))
    }
}

impl McpServer {
    /// Refuses a landing URL on this platform's own host here, where `AMBA_PUBLIC_URL` is always
    /// known; enrollment checks it again (and the URL's shape) when it knows the host too.
    fn landing_precheck(&self, options: &ProgramOptions) -> Result<(), ToolError> {
        match options.landing_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => {
                let host = amba_core::landing::host_of(&self.state.public_url);
                amba_core::landing::check(url, host.as_deref())
                    .map(drop)
                    .map_err(tool_error)
            }
            _ => Ok(()),
        }
    }

    async fn program_call<Req: prost::Message>(
        &self,
        method: Method<Req, pb::ProgramReply>,
        request: &Req,
    ) -> Result<Json<ProgramOutput>, ToolError> {
        let reply: pb::ProgramReply = self.state.rpc.call(method, request).await.map_err(tool_error)?;
        let program = reply.program.ok_or_else(|| tool_error(ApiError::internal()))?;
        Ok(Json(ProgramOutput {
            program: program_view(program, &self.state.public_url),
            commission_history: reply
                .commission_history
                .into_iter()
                .map(|v| CommissionVersionView {
                    version: v.version,
                    commission: json_or_null(&v.commission_json),
                    created_at: rfc3339(v.created_at_micros),
                })
                .collect(),
            duplicate: reply.duplicate,
        }))
    }
}

/// Accepts the rule as a JSON object or as a string holding one (some agents send either).
fn commission_text(value: serde_json::Value) -> Result<String, ApiError> {
    match value {
        serde_json::Value::String(text) => Ok(text),
        serde_json::Value::Object(_) => Ok(value.to_string()),
        _ => Err(ApiError::invalid(
            "commission must be a JSON object such as {\"schema\":1,\"type\":\"percentage\",\"bps\":2000}",
        )),
    }
}

fn options_to_proto(o: ProgramOptions) -> pb::ProgramSettings {
    pb::ProgramSettings {
        approval_mode: o.approval_mode,
        affiliate_approval: o.affiliate_approval,
        attribution_window_days: o.attribution_window_days,
        attribution_model: o.attribution_model,
        attribution_precedence: o.attribution_precedence,
        fraud_checks_json: o.fraud_checks.map(|v| v.to_string()),
        hold_days: o.hold_days,
        payout_threshold_minor: o.payout_threshold_minor,
        payout_schedule: o.payout_schedule,
        platform_fee_bps: o.platform_fee_bps,
        multi_level_json: o.multi_level.map(|v| v.to_string()),
        landing_url: o.landing_url,
        ..Default::default()
    }
}

fn program_view(p: pb::Program, public_url: &str) -> ProgramView {
    ProgramView {
        join_url: format!("{public_url}/join/{}", p.program_id),
        commission: json_or_null(&p.commission_json),
        multi_level: json_or_null(&p.multi_level_json),
        landing_url: (!p.landing_url.is_empty()).then_some(p.landing_url),
        created_at: rfc3339(p.created_at_micros),
        updated_at: rfc3339(p.updated_at_micros),
        program_id: p.program_id,
        owner_org_id: p.owner_org_id,
        name: p.name,
        currency: p.currency,
        status: p.status,
        approval_mode: p.approval_mode,
        affiliate_approval: p.affiliate_approval,
        attribution_window_days: p.attribution_window_days,
        attribution_model: p.attribution_model,
        attribution_precedence: p.attribution_precedence,
        attribution_version: p.attribution_version,
        fraud_checks: json_or_null(&p.fraud_checks_json),
        hold_days: p.hold_days,
        payout_threshold_minor: p.payout_threshold_minor,
        payout_schedule: p.payout_schedule,
        platform_fee_bps: p.platform_fee_bps,
        commission_version: p.commission_version,
    }
}

fn json_or_null(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}
