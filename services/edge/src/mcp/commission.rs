//! Commission tools: balances, stats, analytics, leaderboard, and clawbacks. Figures come from
//! the commission service's ledger and daily rollups; nothing is recomputed here.

use super::{McpServer, ToolError, require_principal, tool_error};
use amba_core::ApiError;
use amba_proto::methods::{attribution, commission as methods};
use amba_proto::wire as pb;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct AnalyticsArgs {
    pub program_id: String,
    /// First day included: a date (2026-01-31) or an RFC 3339 timestamp (UTC day). Default: all time.
    pub from: Option<String>,
    /// Last day included, same format. Default: today.
    pub to: Option<String>,
    /// Leaderboard order. Default commission.
    #[schemars(extend("enum" = ["commission", "conversions", "approved", "revenue", "clicks"]))]
    pub by: Option<String>,
    /// Leaderboard size, 1-100 (default 10).
    #[schemars(range(min = 1, max = 100))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct LeaderboardArgs {
    pub program_id: String,
    /// Order. Default commission.
    #[schemars(extend("enum" = ["commission", "conversions", "approved", "revenue", "clicks"]))]
    pub by: Option<String>,
    /// Size, 1-100 (default 10).
    #[schemars(range(min = 1, max = 100))]
    pub limit: Option<u32>,
    /// First day included (date or RFC 3339). Default: all time.
    pub from: Option<String>,
    /// Last day included. Default: today.
    pub to: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct MyStatsArgs {
    /// One program; default every program you are enrolled in (they must share a currency).
    pub program_id: Option<String>,
    /// First day included (date or RFC 3339). Default: all time.
    pub from: Option<String>,
    /// Last day included. Default: today.
    pub to: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct MyBalanceArgs {
    /// One program; default every program you are enrolled in.
    pub program_id: Option<String>,
    pub cursor: Option<String>,
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ClawbackArgs {
    pub conversion_id: String,
    /// Why (refund, chargeback, ...); kept with the clawback.
    pub reason: String,
    /// Refunded part of the sale in minor units, for a partial refund. Default: all that remains.
    #[schemars(range(min = 1, max = 1_000_000_000_000_000i64))]
    pub amount_minor: Option<i64>,
    /// Makes a retried clawback return the first outcome instead of a second clawback. Without
    /// one the request itself is the key (amount, or all that remains, and reason): give two
    /// equal partial refunds of one conversion their own keys.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Totals {
    pub clicks: i64,
    pub conversions: i64,
    pub approved: i64,
    /// Approved sales.
    pub revenue_minor: i64,
    /// Commission accrued (overrides included).
    pub commission_minor: i64,
    /// Handed over to affiliates at payout, net of the platform fee.
    pub paid_minor: i64,
    /// Commission reversed by clawbacks and transfer reversals.
    pub clawed_back_minor: i64,
    /// Sales refunded.
    pub refunded_minor: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct LeaderboardRow {
    pub rank: u32,
    pub enrollment_id: String,
    pub affiliate_org_id: String,
    pub affiliate_org_name: String,
    pub clicks: i64,
    pub conversions: i64,
    pub approved: i64,
    pub revenue_minor: i64,
    pub commission_minor: i64,
    pub epc_minor: i64,
    pub conversion_rate: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AnalyticsOutput {
    pub program_id: String,
    pub currency: String,
    pub totals: Totals,
    /// Commission per click, minor units (rounded half-even).
    pub epc_minor: i64,
    /// Conversions per click, decimal string with 4 places ("0.2500").
    pub conversion_rate: String,
    pub conversion_rate_bps: i64,
    pub leaderboard: Vec<LeaderboardRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct LeaderboardOutput {
    pub program_id: String,
    pub leaderboard: Vec<LeaderboardRow>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct MyStatsOutput {
    pub clicks: i64,
    pub conversions: i64,
    pub approved: i64,
    /// Conversions per click, decimal string with 4 places.
    pub conversion_rate: String,
    pub conversion_rate_bps: i64,
    /// Commission per click, minor units.
    pub epc_minor: i64,
    pub commission_minor: i64,
    pub revenue_minor: i64,
    pub paid_minor: i64,
    pub clawed_back_minor: i64,
    pub currency: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct BalanceView {
    pub program_id: String,
    pub program_name: String,
    pub enrollment_id: String,
    pub currency: String,
    pub held_minor: i64,
    pub payable_minor: i64,
    pub reserved_minor: i64,
    pub paid_minor: i64,
    pub debt_minor: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct MyBalanceOutput {
    /// Inside the hold period (refund window).
    pub held_minor: i64,
    /// Ready for the next payout.
    pub payable_minor: i64,
    /// In a payout in flight.
    pub reserved_minor: i64,
    /// Received so far (net of the platform fee).
    pub paid_minor: i64,
    /// Carry-forward debt from clawbacks after payout, netted against the next payout.
    pub debt_minor: i64,
    /// Empty when your programs use several currencies (see balances).
    pub currency: String,
    /// One per program you are enrolled in, one page at a time (the sums above cover them all).
    pub balances: Vec<BalanceView>,
    /// Pass as `cursor` for the next page of balances; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ClawedConversion {
    pub conversion_id: String,
    pub program_id: String,
    pub enrollment_id: String,
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    pub commission_minor: i64,
    /// Refunded part of the sale so far.
    pub clawed_back_minor: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ClawbackOutput {
    pub clawback_id: String,
    pub conversion: ClawedConversion,
    /// The refunded part of the sale this clawback recorded.
    pub refund_minor: i64,
    /// Commission reversed by this clawback (upline overrides included); null while the ledger
    /// has not applied it (`ledger_applied` false).
    pub reversed_minor: Option<i64>,
    /// Of that, what had already been paid out: carry-forward debt netted against the next
    /// payout; null while the ledger has not applied it.
    pub carry_forward_minor: Option<i64>,
    /// False when the ledger had not applied the clawback within 5 s: it is recorded and will be
    /// applied; the same call again returns it with the ledger's figures once they are there.
    pub ledger_applied: bool,
    pub currency: String,
    /// True when this replayed an earlier clawback (same idempotency key, or the same request).
    pub duplicate: bool,
}

#[tool_router(router = commission_tools, vis = "pub(super)")]
impl McpServer {
    #[tool(
        name = "amba_affiliate_analytics_get",
        description = "A program's totals (clicks, conversions, approved, revenue, commission, paid, clawed back), \
                       EPC, conversion rate and leaderboard, optionally for a day range. Eventually consistent: the ledger books an approved conversion within about a second of the \
                       report (longer under heavy load); if one you just approved is missing, wait a second and ask again.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn analytics_get(
        &self,
        Parameters(args): Parameters<AnalyticsArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<AnalyticsOutput>, ToolError> {
        let caller = require_principal(&parts)?;
        let request = pb::StatsRequest {
            caller: Some(caller),
            program_id: args.program_id.clone(),
            from_day: args.from.clone().unwrap_or_default(),
            to_day: args.to.clone().unwrap_or_default(),
            by: args.by.unwrap_or_default(),
            limit: args.limit.unwrap_or_default(),
        };
        let reply: pb::StatsReply = self
            .call_service(methods::SERVICE, methods::ANALYTICS, &request)
            .await?;
        let stats = reply.stats.unwrap_or_default();
        Ok(Json(AnalyticsOutput {
            program_id: args.program_id,
            currency: stats.currency.clone(),
            epc_minor: stats.epc_minor,
            conversion_rate: stats.conversion_rate.clone(),
            conversion_rate_bps: stats.conversion_rate_bps,
            totals: totals(&stats),
            leaderboard: reply.leaderboard.into_iter().map(leaderboard_row).collect(),
            from: args.from,
            to: args.to,
        }))
    }

    #[tool(
        name = "amba_affiliate_leaderboard_get",
        description = "A program's affiliates ranked by commission (or conversions, approved, revenue, clicks). Eventually consistent: the ledger books an approved conversion within about a second of the \
                       report (longer under heavy load); if one you just approved is missing, wait a second and ask again.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn leaderboard_get(
        &self,
        Parameters(args): Parameters<LeaderboardArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<LeaderboardOutput>, ToolError> {
        let caller = require_principal(&parts)?;
        let request = pb::StatsRequest {
            caller: Some(caller),
            program_id: args.program_id.clone(),
            from_day: args.from.unwrap_or_default(),
            to_day: args.to.unwrap_or_default(),
            by: args.by.unwrap_or_default(),
            limit: args.limit.unwrap_or_default(),
        };
        let reply: pb::StatsReply = self
            .call_service(methods::SERVICE, methods::LEADERBOARD, &request)
            .await?;
        Ok(Json(LeaderboardOutput {
            program_id: args.program_id,
            leaderboard: reply.leaderboard.into_iter().map(leaderboard_row).collect(),
        }))
    }

    #[tool(
        name = "amba_affiliate_my_stats_get",
        description = "Your own clicks, conversions, conversion rate, EPC and commission (all your programs, or one). Eventually consistent: the ledger books an approved conversion within about a second of the \
                       report (longer under heavy load); if one you just approved is missing, wait a second and ask again.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn my_stats_get(
        &self,
        Parameters(args): Parameters<MyStatsArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<MyStatsOutput>, ToolError> {
        let caller = require_principal(&parts)?;
        let request = pb::StatsRequest {
            caller: Some(caller),
            program_id: args.program_id.unwrap_or_default(),
            from_day: args.from.unwrap_or_default(),
            to_day: args.to.unwrap_or_default(),
            ..Default::default()
        };
        let reply: pb::StatsReply = self.call_service(methods::SERVICE, methods::MY_STATS, &request).await?;
        let s = reply.stats.unwrap_or_default();
        Ok(Json(MyStatsOutput {
            clicks: s.clicks,
            conversions: s.conversions,
            approved: s.approved,
            conversion_rate: s.conversion_rate,
            conversion_rate_bps: s.conversion_rate_bps,
            epc_minor: s.epc_minor,
            commission_minor: s.commission_minor,
            revenue_minor: s.revenue_minor,
            paid_minor: s.paid_minor,
            clawed_back_minor: s.clawed_back_minor,
            currency: s.currency,
        }))
    }

    #[tool(
        name = "amba_affiliate_my_balance_get",
        description = "Your commission balance: held (refund window), payable, reserved (payout in flight), paid, \
                       and carry-forward debt, summed over all your programs, with the balance of each program \
                       (balances: limit per page, default 50, max 200; pass next_cursor as cursor for more). \
                       Eventually consistent: the ledger books an approved conversion within about a second of the \
                       report (longer under heavy load); if one you just approved is missing, wait a second and ask again.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn my_balance_get(
        &self,
        Parameters(args): Parameters<MyBalanceArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<MyBalanceOutput>, ToolError> {
        let caller = require_principal(&parts)?;
        let request = pb::BalanceRequest {
            caller: Some(caller),
            program_id: args.program_id.unwrap_or_default(),
            cursor: args.cursor.unwrap_or_default(),
            limit: args.limit.unwrap_or_default(),
        };
        let reply: pb::BalanceReply = self.call_service(methods::SERVICE, methods::BALANCE, &request).await?;
        let total = reply.total.unwrap_or_default();
        Ok(Json(MyBalanceOutput {
            held_minor: total.held_minor,
            payable_minor: total.payable_minor,
            reserved_minor: total.reserved_minor,
            paid_minor: total.paid_minor,
            debt_minor: total.debt_minor,
            currency: total.currency,
            balances: reply
                .balances
                .into_iter()
                .map(|b| BalanceView {
                    program_id: b.program_id,
                    program_name: b.program_name,
                    enrollment_id: b.enrollment_id,
                    currency: b.currency,
                    held_minor: b.held_minor,
                    payable_minor: b.payable_minor,
                    reserved_minor: b.reserved_minor,
                    paid_minor: b.paid_minor,
                    debt_minor: b.debt_minor,
                })
                .collect(),
            next_cursor: (!reply.next_cursor.is_empty()).then_some(reply.next_cursor),
        }))
    }

    #[tool(
        name = "amba_affiliate_conversion_clawback",
        description = "Claw back a refunded or charged-back conversion, fully or partially (amount_minor of the \
                       sale). Before payout the commission is reversed (prorated); what was already paid becomes \
                       carry-forward debt netted against the affiliate's next payout. Upline overrides follow. \
                       Safe to retry: the same request (or idempotency_key) returns the recorded clawback with \
                       duplicate true, never a second refund.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn conversion_clawback(
        &self,
        Parameters(args): Parameters<ClawbackArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<ClawbackOutput>, ToolError> {
        let caller = require_principal(&parts)?;
        if let Some(amount) = args.amount_minor
            && amount <= 0
        {
            return Err(tool_error(ApiError::invalid("amount_minor must be positive")));
        }
        let request = pb::AuthenticatedClawback {
            caller: Some(caller.clone()),
            clawback: Some(pb::ClawbackRequest {
                conversion_id: args.conversion_id,
                reason: args.reason,
                amount_minor: args.amount_minor.unwrap_or(0),
                idempotency_key: args.idempotency_key.unwrap_or_default(),
            }),
        };
        let clawed: pb::ClawbackReply = self
            .state
            .rpc
            .call(attribution::SERVICE, attribution::CLAWBACK, &request)
            .await
            .map_err(tool_error)?;
        // The clawback is committed: from here on the reply never claims failure. The ledger's
        // figures are added when it has applied the clawback in time.
        let outcome: Option<pb::ClawbackOutcome> = self
            .call_service(
                methods::SERVICE,
                methods::CLAWBACK_OUTCOME,
                &pb::ClawbackOutcomeRequest {
                    caller: Some(caller),
                    clawback_id: clawed.clawback_id.clone(),
                    wait_ms: 5_000,
                },
            )
            .await
            .inspect_err(|_| tracing::info!(clawback_id = %clawed.clawback_id, "ledger outcome not there yet"))
            .ok();
        let c = clawed.conversion.unwrap_or_default();
        Ok(Json(ClawbackOutput {
            clawback_id: clawed.clawback_id,
            refund_minor: clawed.refund_minor,
            reversed_minor: outcome.as_ref().map(|o| o.reversed_minor),
            carry_forward_minor: outcome.as_ref().map(|o| o.carry_forward_minor),
            ledger_applied: outcome.is_some(),
            currency: c.currency.clone(),
            duplicate: clawed.duplicate,
            conversion: ClawedConversion {
                conversion_id: c.conversion_id,
                program_id: c.program_id,
                enrollment_id: c.enrollment_id,
                status: c.status,
                amount_minor: c.amount_minor,
                currency: c.currency,
                commission_minor: c.commission_minor,
                clawed_back_minor: c.clawed_back_minor,
            },
        }))
    }
}

fn totals(s: &pb::Stats) -> Totals {
    Totals {
        clicks: s.clicks,
        conversions: s.conversions,
        approved: s.approved,
        revenue_minor: s.revenue_minor,
        commission_minor: s.commission_minor,
        paid_minor: s.paid_minor,
        clawed_back_minor: s.clawed_back_minor,
        refunded_minor: s.refunded_minor,
    }
}

fn leaderboard_row(entry: pb::LeaderboardEntry) -> LeaderboardRow {
    let s = entry.stats.unwrap_or_default();
    LeaderboardRow {
        rank: entry.rank,
        enrollment_id: entry.enrollment_id,
        affiliate_org_id: entry.affiliate_org_id,
        affiliate_org_name: entry.affiliate_org_name,
        clicks: s.clicks,
        conversions: s.conversions,
        approved: s.approved,
        revenue_minor: s.revenue_minor,
        commission_minor: s.commission_minor,
        epc_minor: s.epc_minor,
        conversion_rate: s.conversion_rate,
    }
}
