//! Commission tools: balances, stats, analytics, leaderboard, clawbacks, early releases and the
//! ledger export.
//! Figures come from the commission service's ledger and daily rollups; nothing is recomputed
//! here.

use super::{McpServer, ToolError, require_principal, tool_error};
use crate::request::{non_empty, parse_instant, rfc3339, rfc3339_or_null};
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
    /// Leaderboard order. Default net_commission (commission less clawbacks).
    #[schemars(extend("enum" = ["net_commission", "commission", "conversions", "approved", "revenue", "clicks"]))]
    pub by: Option<String>,
    /// Leaderboard size, 1-100 (default 10).
    #[schemars(range(min = 1, max = 100))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct LeaderboardArgs {
    pub program_id: String,
    /// Order. Default net_commission (commission less clawbacks).
    #[schemars(extend("enum" = ["net_commission", "commission", "conversions", "approved", "revenue", "clicks"]))]
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

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CommissionsExportArgs {
    /// The program (yours), e.g. prg_0190c8e2a1b27f3c9d4e5f6a7b8c9d0e.
    pub program_id: String,
    /// Start of the booking-time range (inclusive): RFC 3339 (2026-01-01T00:00:00Z) or a UTC
    /// date (2026-01-01).
    pub from: String,
    /// End of the booking-time range (exclusive), at most 366 days after `from`: RFC 3339 or a
    /// UTC date.
    pub to: String,
    /// The previous page's `next_cursor`; omit for the first page.
    pub cursor: Option<String>,
    /// Rows per page, 1-5000 (default 5000; a page of very long rows may hold fewer).
    #[schemars(range(min = 1, max = 5000))]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CommissionsExportOutput {
    /// RFC 4180 CSV: a header row, then one row per ledger movement by booking time, CRLF line
    /// ends.
    pub csv: String,
    /// Movement rows in this page (the header not counted).
    pub rows: u32,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The figures of a range (program totals, one affiliate, or a leaderboard row).
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReleaseArgs {
    /// The program (yours), e.g. prg_0190c8e2a1b27f3c9d4e5f6a7b8c9d0e.
    pub program_id: String,
    /// Release this sale's commissions (every level). Give this or enrollment_id, not both.
    pub conversion_id: Option<String>,
    /// Release all the commission this affiliate's enrollment holds in the program.
    pub enrollment_id: Option<String>,
    /// Why the hold ends early (e.g. "delivered and accepted; no refunds possible"): kept with the
    /// release, its ledger postings, and who asked.
    #[schemars(length(min = 1, max = 500))]
    pub reason: String,
    /// Makes a retry return the first release (duplicate true). Without one the request itself
    /// (target and reason) is the key: give a later release of the same target its own key.
    #[schemars(length(min = 1, max = 200))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ReleasedBy {
    pub org_id: String,
    pub account_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ReleaseOutput {
    pub release_id: String,
    pub program_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversion_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment_id: Option<String>,
    /// Moved from held to payable (every earner of the sale together, for a conversion).
    pub released_minor: i64,
    /// Commissions released.
    pub commissions: u32,
    pub currency: String,
    pub reason: String,
    /// Who released it (the audit record).
    pub released_by: ReleasedBy,
    /// RFC 3339.
    pub released_at: String,
    /// True when this replayed an earlier release (same idempotency_key, or the same request):
    /// nothing moved now.
    pub duplicate: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Totals {
    /// Clicks (on the click's day).
    pub clicks: i64,
    /// Sales reported, however attributed or decided (rejected and unattributed ones included).
    pub conversions: i64,
    /// Sales attributed by a click (attribution touchpoint), neither rejected nor unattributed:
    /// the conversion rate's numerator. Sales by code or customer are not among them.
    pub click_conversions: i64,
    /// Approved sales.
    pub approved: i64,
    /// Approved sales with any clawback (counted in approved too).
    pub clawed_back: i64,
    /// Approved sales' amount, gross.
    pub revenue_minor: i64,
    /// Of that, refunded by clawbacks.
    pub refunded_minor: i64,
    /// revenue_minor − refunded_minor.
    pub net_revenue_minor: i64,
    /// Commission accrued, gross (overrides to their earner).
    pub commission_minor: i64,
    /// Commission reversed by clawbacks (and by transfer reversals, on the reversal's day).
    pub clawed_back_minor: i64,
    /// commission_minor − clawed_back_minor: what the affiliates keep.
    pub net_commission_minor: i64,
    /// Handed over to affiliates at payout, net of the platform fee (on the payout's day).
    pub paid_minor: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct LeaderboardRow {
    pub rank: u32,
    pub enrollment_id: String,
    pub affiliate_org_id: String,
    pub affiliate_org_name: String,
    pub clicks: i64,
    pub conversions: i64,
    pub click_conversions: i64,
    pub approved: i64,
    pub clawed_back: i64,
    pub revenue_minor: i64,
    pub refunded_minor: i64,
    pub net_revenue_minor: i64,
    pub commission_minor: i64,
    pub clawed_back_minor: i64,
    pub net_commission_minor: i64,
    pub paid_minor: i64,
    /// Net commission per click; null without clicks.
    pub epc_minor: Option<i64>,
    /// click_conversions ÷ clicks, 4 places; null without clicks.
    pub conversion_rate: Option<String>,
    pub conversion_rate_bps: Option<i64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AnalyticsOutput {
    pub program_id: String,
    pub currency: String,
    pub totals: Totals,
    /// Net commission per click, minor units (rounded half-even); null without clicks.
    pub epc_minor: Option<i64>,
    /// click_conversions ÷ clicks, decimal string with 4 places ("0.2500"); null without clicks.
    pub conversion_rate: Option<String>,
    /// The same rate in basis points; null without clicks.
    pub conversion_rate_bps: Option<i64>,
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
    /// Your sales, however attributed or decided.
    pub conversions: i64,
    /// Your sales by a click (not rejected): the conversion rate's numerator.
    pub click_conversions: i64,
    pub approved: i64,
    /// Approved sales with any clawback.
    pub clawed_back: i64,
    /// click_conversions ÷ clicks, decimal string with 4 places; null without clicks.
    pub conversion_rate: Option<String>,
    pub conversion_rate_bps: Option<i64>,
    /// Net commission per click, minor units; null without clicks.
    pub epc_minor: Option<i64>,
    /// Commission accrued, gross.
    pub commission_minor: i64,
    /// Commission reversed by clawbacks.
    pub clawed_back_minor: i64,
    /// commission_minor − clawed_back_minor: what you keep.
    pub net_commission_minor: i64,
    pub revenue_minor: i64,
    pub refunded_minor: i64,
    pub net_revenue_minor: i64,
    pub paid_minor: i64,
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
    /// When held commission next becomes payable (RFC 3339); null when nothing is held.
    pub next_release_at: Option<String>,
    /// held_minor by the UTC day it becomes payable, earliest first (the first 50 days).
    pub releases: Vec<ReleaseView>,
}

/// Held commission that becomes payable on one day: all of it by `at`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReleaseView {
    /// RFC 3339: the latest release time of that day's commissions.
    pub at: String,
    pub amount_minor: i64,
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
    /// When any of your held commission next becomes payable (RFC 3339); null when none is held.
    pub next_release_at: Option<String>,
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
        description = "A program's totals, EPC, conversion rate and leaderboard, optionally for a day range. \
                       Money both gross and net of clawbacks: commission_minor, clawed_back_minor, \
                       net_commission_minor (what affiliates keep); revenue_minor, refunded_minor, net_revenue_minor. \
                       Counts apart: conversions (every sale reported), approved, clawed_back (approved sales with \
                       any clawback), click_conversions. conversion_rate = click_conversions ÷ clicks (sales \
                       attributed by a click, neither rejected nor unattributed; sales by code do not count); \
                       epc_minor = net commission ÷ clicks; both null without clicks. Date basis (from/to, UTC \
                       days): every figure of a sale counts on the day the sale happened (its occurred_at), \
                       whenever it was approved or refunded; clicks on the click's day, paid on the payout's day. \
                       Eventually consistent: the ledger books an approved conversion within about a second of the \
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
        let reply: pb::StatsReply = self.call_service(methods::ANALYTICS, &request).await?;
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
        description = "A program's affiliates ranked by net commission (commission less clawbacks; or by \
                       gross commission, conversions, approved, revenue, clicks), each row with the figures of \
                       amba_affiliate_analytics_get: gross and net commission and revenue, clawed_back, \
                       click_conversions, and conversion_rate/epc_minor (null without clicks). Date basis (from/to, \
                       UTC days): a sale's figures count on the day the sale happened (its occurred_at). \
                       Eventually consistent: the ledger books an approved conversion within about a second of the \
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
        let reply: pb::StatsReply = self.call_service(methods::LEADERBOARD, &request).await?;
        Ok(Json(LeaderboardOutput {
            program_id: args.program_id,
            leaderboard: reply.leaderboard.into_iter().map(leaderboard_row).collect(),
        }))
    }

    #[tool(
        name = "amba_affiliate_my_stats_get",
        description = "Your own figures (all your programs, or one): clicks, conversions, click_conversions, \
                       approved, clawed_back; commission gross, clawed back and net (what you keep); revenue \
                       gross, refunded and net; paid. conversion_rate = click_conversions ÷ clicks and epc_minor = \
                       net commission ÷ clicks, both null without clicks. Date basis (from/to, UTC days): a sale's \
                       figures count on the day the sale happened (its occurred_at); clicks on the click's day, paid \
                       on the payout's day. Eventually consistent: the ledger books an approved conversion within about a second of the \
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
        let reply: pb::StatsReply = self.call_service(methods::MY_STATS, &request).await?;
        let s = reply.stats.unwrap_or_default();
        Ok(Json(MyStatsOutput {
            clicks: s.clicks,
            conversions: s.conversions,
            click_conversions: s.click_conversions,
            approved: s.approved,
            clawed_back: s.clawed_back,
            conversion_rate: s.conversion_rate,
            conversion_rate_bps: s.conversion_rate_bps,
            epc_minor: s.epc_minor,
            commission_minor: s.commission_minor,
            clawed_back_minor: s.clawed_back_minor,
            net_commission_minor: s.net_commission_minor,
            revenue_minor: s.revenue_minor,
            refunded_minor: s.refunded_minor,
            net_revenue_minor: s.net_revenue_minor,
            paid_minor: s.paid_minor,
            currency: s.currency,
        }))
    }

    #[tool(
        name = "amba_affiliate_my_balance_get",
        description = "Your commission balance: held (refund window), payable, reserved (payout in flight), paid, \
                       and carry-forward debt, summed over all your programs, with the balance of each program \
                       (balances: limit per page, default 50, max 200; pass next_cursor as cursor for more). \
                       Held money says when it becomes payable: next_release_at, and per program releases \
                       [{at, amount_minor}] (held_minor by the UTC day its hold ends, earliest first, the first 50 \
                       days); a commission's hold ends at its approval plus the program's hold_days as they were \
                       then, or earlier if the owner releases it. \
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
        let reply: pb::BalanceReply = self.call_service(methods::BALANCE, &request).await?;
        let total = reply.total.unwrap_or_default();
        Ok(Json(MyBalanceOutput {
            held_minor: total.held_minor,
            payable_minor: total.payable_minor,
            reserved_minor: total.reserved_minor,
            paid_minor: total.paid_minor,
            debt_minor: total.debt_minor,
            currency: total.currency,
            next_release_at: rfc3339_or_null(total.next_release_at_micros),
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
                    next_release_at: rfc3339_or_null(b.next_release_at_micros),
                    releases: b
                        .releases
                        .into_iter()
                        .map(|r| ReleaseView {
                            at: rfc3339(r.at_micros),
                            amount_minor: r.amount_minor,
                        })
                        .collect(),
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
            .call(attribution::CLAWBACK, &request)
            .await
            .map_err(tool_error)?;
        // The clawback is committed: from here on the reply never claims failure. The ledger's
        // figures are added when it has applied the clawback in time.
        let outcome: Option<pb::ClawbackOutcome> = self
            .call_service(
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

    #[tool(
        name = "amba_affiliate_commission_release",
        description = "Release held commission before its hold ends, making it payable now: one sale's \
                       commissions (conversion_id, every level) or all an affiliate holds in the program \
                       (enrollment_id). reason is required; who released it and why are kept with the release \
                       and its ledger postings. A released commission is never released again (the hold's own \
                       release skips it), and a clawback afterwards reverses it out of payable (debt if already \
                       paid). Errors: CONFLICT when nothing is held (already payable or clawed back), FORBIDDEN \
                       for an affiliate of the program, NOT_FOUND for another program or a conversion without a \
                       commission in it. Safe to \
                       retry: the same idempotency_key (or, without one, the same request) returns the first \
                       release with duplicate true.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn commission_release(
        &self,
        Parameters(args): Parameters<ReleaseArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<ReleaseOutput>, ToolError> {
        let caller = require_principal(&parts)?;
        let request = pb::ReleaseHeldRequest {
            caller: Some(caller),
            program_id: args.program_id,
            conversion_id: args.conversion_id.unwrap_or_default(),
            enrollment_id: args.enrollment_id.unwrap_or_default(),
            reason: args.reason,
            idempotency_key: args.idempotency_key.unwrap_or_default(),
        };
        let r: pb::ReleaseHeldReply = self.call_service(methods::RELEASE_HELD, &request).await?;
        Ok(Json(ReleaseOutput {
            release_id: r.release_id,
            program_id: r.program_id,
            conversion_id: non_empty(r.conversion_id),
            enrollment_id: non_empty(r.enrollment_id),
            released_minor: r.released_minor,
            commissions: r.commissions,
            currency: r.currency,
            reason: r.reason,
            released_by: ReleasedBy {
                org_id: r.released_by_org_id,
                account_id: r.released_by_account_id,
            },
            released_at: rfc3339(r.released_at_micros),
            duplicate: r.duplicate,
        }))
    }

    #[tool(
        name = "amba_affiliate_commissions_export",
        description = "Your program's commission ledger as CSV for accounting: one row per ledger movement booked in \
                       [from, to) (booking time, at most 366 days), oldest first, in pages of `limit` rows (default \
                       and most 5,000; fewer when rows are long): pass next_cursor to continue. kind: accrual (a \
                       sale's commission), override (an upline's share of it), release (its hold ended), \
                       early_release (you released it; reason says why), clawback (a refund reversed it; reason is \
                       yours), payout_reserved, payout_paid (sent, net of the platform fee), payout_voided (the \
                       transfer failed; back to payable), transfer_reversal (a sent transfer came back). Columns: \
                       posted_at, movement_id, kind, level (0 direct, 1+ override level), conversion_id, \
                       commission_id, affiliate_org_id, enrollment_id, amount_minor (the movement's size, never \
                       negative), currency, commission_minor (its signed change to the commission the program owes: \
                       + accrual or override, − clawback or recovery; the column sums to the net commission), \
                       held_minor, payable_minor, reserved_minor, paid_minor, fee_minor (signed changes of the \
                       affiliate's accounts and of the platform fee: each column sums to that balance, a negative \
                       payable being debt; on every row the five add up to commission_minor), status (a \
                       commission's now: held, released or recovered; a payout item's: reserved, posted or voided), \
                       payable_at (when the commission's hold ends or ended), payout_item_id, reason. Amounts are \
                       exact integer minor units; times RFC 3339 UTC. Text cells starting with = + - or @ get a \
                       leading ' so spreadsheets do not run them as formulas. The ledger books an approval about a \
                       second after it: export a period once it has ended. Sales themselves (external ids, amounts) \
                       are in amba_affiliate_conversions_export.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn commissions_export(
        &self,
        Parameters(a): Parameters<CommissionsExportArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<CommissionsExportOutput>, ToolError> {
        let request = pb::ExportCommissionsRequest {
            caller: Some(require_principal(&parts)?),
            program_id: a.program_id,
            from_micros: parse_instant("from", &a.from).map_err(tool_error)?,
            to_micros: parse_instant("to", &a.to).map_err(tool_error)?,
            cursor: a.cursor.unwrap_or_default(),
            limit: a.limit.unwrap_or_default(),
        };
        let reply: pb::ExportCommissionsReply = self.call_service(methods::COMMISSIONS_EXPORT, &request).await?;
        Ok(Json(CommissionsExportOutput {
            csv: reply.csv,
            rows: reply.rows,
            next_cursor: non_empty(reply.next_cursor),
        }))
    }
}

fn totals(s: &pb::Stats) -> Totals {
    Totals {
        clicks: s.clicks,
        conversions: s.conversions,
        click_conversions: s.click_conversions,
        approved: s.approved,
        clawed_back: s.clawed_back,
        revenue_minor: s.revenue_minor,
        refunded_minor: s.refunded_minor,
        net_revenue_minor: s.net_revenue_minor,
        commission_minor: s.commission_minor,
        clawed_back_minor: s.clawed_back_minor,
        net_commission_minor: s.net_commission_minor,
        paid_minor: s.paid_minor,
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
        click_conversions: s.click_conversions,
        approved: s.approved,
        clawed_back: s.clawed_back,
        revenue_minor: s.revenue_minor,
        refunded_minor: s.refunded_minor,
        net_revenue_minor: s.net_revenue_minor,
        commission_minor: s.commission_minor,
        clawed_back_minor: s.clawed_back_minor,
        net_commission_minor: s.net_commission_minor,
        paid_minor: s.paid_minor,
        epc_minor: s.epc_minor,
        conversion_rate: s.conversion_rate,
        conversion_rate_bps: s.conversion_rate_bps,
    }
}
