//! `amba_affiliate_commission_explain`: why a conversion went to whom and why its commission is
//! what it is — the decision trail attribution recorded when it decided, the commissions the
//! ledger booked from it (direct and overrides upline, with their holds) and every posting.

use super::attribution::{ConversionView, conversion_view};
use super::{McpServer, ToolError, require_principal, tool_error};
use crate::request::rfc3339;
use amba_core::{ApiError, ErrorCode};
use amba_proto::methods::{attribution, commission};
use amba_proto::wire as pb;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExplainArgs {
    pub conversion_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CommissionLineView {
    /// 0: the affiliate credited with the sale; 1: its direct sponsor's override; 2: theirs ...
    pub level: i32,
    /// Who earns it (absent in an affiliate's view of an override paid to someone else).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affiliate_org_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commission_id: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    /// For an override: its share of the direct commission, in basis points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_bps: Option<i32>,
    pub commission_version: u32,
    /// Still held (refund window), and when the hold ends.
    pub held_minor: i64,
    pub release_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_at: Option<String>,
    /// Taken back by refunds.
    pub recovered_minor: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct LedgerEntryView {
    /// held | payable | reserved | paid | expense | fee
    pub account: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment_id: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PostingView {
    /// accrue | release | clawback | ...
    pub kind: String,
    pub reference: String,
    pub posted_at: String,
    pub entries: Vec<LedgerEntryView>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ExplainOutput {
    /// The explanation in a few sentences.
    pub summary: String,
    /// owner (everything) | affiliate (no other affiliate's identity, no customer references)
    pub view: String,
    pub conversion: ConversionView,
    /// The decision trail recorded when each decision was made, never recomputed: `attribution`
    /// (policy and version, code check, customer binding, every touchpoint weighed with its
    /// verdict, the winner and why, checks run, status and hold), `assignment` (an owner's hand
    /// credit) and `commission` (rule version and rule, base, tier hit with the volume before
    /// it, rate, the exact product, rounding, result). Absent for conversions recorded before
    /// trails were kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Value>,
    /// The commissions the ledger booked from this conversion: the direct one, then overrides.
    pub commissions: Vec<CommissionLineView>,
    /// Every ledger posting of those commissions and of the conversion's clawbacks, in order.
    pub ledger_postings: Vec<PostingView>,
}

#[tool_router(router = explain_tools, vis = "pub(super)")]
impl McpServer {
    #[tool(
        name = "amba_affiliate_commission_explain",
        description = "Why did this conversion go to this affiliate, and why is the commission this amount? Returns the \
                       decision trail recorded when it was decided (attribution policy and version, every touchpoint \
                       weighed, code vs touch precedence, customer binding, self-referral check, the rule version and its \
                       computation: base, rate or tier hit, exact amount, rounding), the commissions booked (direct and \
                       overrides upline, with their holds) and the ledger postings. Owners see everything; the affiliate \
                       credited with the conversion sees the same without other affiliates' identities.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn commission_explain(
        &self,
        Parameters(a): Parameters<ExplainArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<ExplainOutput>, ToolError> {
        let caller = require_principal(&parts)?;
        let explained: pb::ConversionExplanation = self
            .call_service(
                attribution::EXPLAIN,
                &pb::ExplainConversionRequest {
                    caller: Some(caller.clone()),
                    conversion_id: a.conversion_id.clone(),
                },
            )
            .await?;
        let conversion = explained.conversion.ok_or_else(|| tool_error(ApiError::internal()))?;
        // Only an approved conversion has commissions; the ledger may not have booked it yet.
        let ledger = if conversion.decided_at_micros != 0 && conversion.status != "rejected" {
            let request = pb::ConversionLedgerRequest {
                caller: Some(caller),
                conversion_id: conversion.conversion_id.clone(),
            };
            match self.state.rpc.call(commission::CONVERSION_LEDGER, &request).await {
                Ok(reply) => reply,
                Err(err) if err.code == ErrorCode::NotFound => pb::ConversionLedgerReply::default(),
                Err(err) => return Err(tool_error(err)),
            }
        } else {
            pb::ConversionLedgerReply::default()
        };
        let decision: Option<Value> = (!explained.trail_json.is_empty())
            .then(|| serde_json::from_str(&explained.trail_json).ok())
            .flatten();
        let affiliate_view = !explained.owner_view;
        let commissions: Vec<CommissionLineView> = ledger.commissions.into_iter().map(line_view).collect();
        let summary = summary(&conversion, decision.as_ref(), &commissions);
        Ok(Json(ExplainOutput {
            summary,
            view: if affiliate_view { "affiliate" } else { "owner" }.to_owned(),
            conversion: conversion_view(conversion, affiliate_view),
            decision,
            commissions,
            ledger_postings: ledger.postings.into_iter().map(posting_view).collect(),
        }))
    }
}

fn line_view(l: pb::CommissionLine) -> CommissionLineView {
    let some = |s: String| (!s.is_empty()).then_some(s);
    CommissionLineView {
        level: l.level,
        enrollment_id: some(l.enrollment_id),
        affiliate_org_id: some(l.affiliate_org_id),
        commission_id: some(l.commission_id),
        amount_minor: l.amount_minor,
        currency: l.currency,
        rate_bps: l.rate_bps,
        commission_version: l.commission_version,
        held_minor: l.held_minor,
        release_at: rfc3339(l.release_at_micros),
        released_at: (l.released_at_micros != 0).then(|| rfc3339(l.released_at_micros)),
        recovered_minor: l.recovered_minor,
    }
}

fn posting_view(p: pb::LedgerPosting) -> PostingView {
    PostingView {
        kind: p.kind,
        reference: p.reference,
        posted_at: rfc3339(p.posted_at_micros),
        entries: p
            .entries
            .into_iter()
            .map(|e| LedgerEntryView {
                account: e.account,
                enrollment_id: (!e.enrollment_id.is_empty()).then_some(e.enrollment_id),
                amount_minor: e.amount_minor,
                currency: e.currency,
            })
            .collect(),
    }
}

/// The trail in words: who got it and why, how the amount was computed, holds and overrides.
fn summary(c: &pb::Conversion, decision: Option<&Value>, commissions: &[CommissionLineView]) -> String {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut parts = Vec::new();
    match decision.and_then(|d| d.get("attribution")) {
        Some(a) => {
            let policy = a.get("policy").cloned().unwrap_or_default();
            parts.push(format!(
                "Attributed by {} under attribution policy v{} ({}, {}, {}-day window): {}.",
                text(a, "winner"),
                policy.get("version").and_then(Value::as_i64).unwrap_or(1),
                text(&policy, "model"),
                text(&policy, "precedence"),
                policy.get("window_days").and_then(Value::as_i64).unwrap_or_default(),
                text(a, "why"),
            ));
            let weighed = a.get("touchpoints").and_then(Value::as_array).map_or(0, Vec::len);
            if weighed > 0 {
                parts.push(format!(
                    "{weighed} touchpoint(s) weighed (see decision.attribution.touchpoints)."
                ));
            }
            if let Some(held) = a.get("held").and_then(Value::as_str) {
                parts.push(format!("Held: {held}."));
            }
        }
        None => parts.push(format!(
            "Attributed by {} (recorded before decision trails were kept).",
            c.attribution
        )),
    }
    if let Some(assigned) = decision.and_then(|d| d.get("assignment")) {
        parts.push(format!(
            "Assigned by the owner to {} on {}.",
            text(assigned, "enrollment_id"),
            text(assigned, "assigned_at")
        ));
    }
    if let Some(fx) = decision.and_then(|d| d.get("fx")) {
        parts.push(format!(
            "The sale of {} {} minor units was converted at the reference rates of {} ({}: {} {} and {} {} per EUR), \
             {} per unit = {} minor units, rounded {} to {}.",
            fx.get("sale_amount_minor").and_then(Value::as_i64).unwrap_or_default(),
            text(fx, "sale_currency"),
            text(fx, "rate_date"),
            text(fx, "source"),
            text(fx, "sale_per_eur"),
            text(fx, "sale_currency"),
            text(fx, "program_per_eur"),
            text(fx, "program_currency"),
            text(fx, "cross_rate"),
            text(fx, "exact_minor"),
            text(fx, "rounding"),
            fx.get("amount_minor").and_then(Value::as_i64).unwrap_or_default(),
        ));
    }
    if let Some(k) = decision.and_then(|d| d.get("commission")) {
        let base = k.get("base_minor").and_then(Value::as_i64).unwrap_or_default();
        let amount = k.get("commission_minor").and_then(Value::as_i64).unwrap_or_default();
        let currency = text(k, "currency");
        let version = k.get("rule_version").and_then(Value::as_i64).unwrap_or_default();
        let how = match (
            k.get("rate_bps").and_then(Value::as_i64),
            k.get("exact_minor").and_then(Value::as_str),
        ) {
            (Some(bps), Some(exact)) => format!("{base} × {bps} bps = {exact}, rounded {}", text(k, "rounding")),
            _ => text(k, "rounding"),
        };
        let tier = k
            .get("tier")
            .map(|t| {
                format!(
                    " (tier {} from {} {}, with {} before it in {})",
                    t.get("index").and_then(Value::as_i64).unwrap_or_default() + 1,
                    t.get("from").and_then(Value::as_i64).unwrap_or_default(),
                    text(t, "basis"),
                    match text(t, "basis").as_str() {
                        "revenue" => t.get("prior_revenue_minor").and_then(Value::as_i64).unwrap_or_default(),
                        _ => t.get("prior_conversions").and_then(Value::as_i64).unwrap_or_default(),
                    },
                    text(t, "period")
                )
            })
            .unwrap_or_default();
        parts.push(format!(
            "Commission {amount} {currency} minor units under rule v{version}{tier}: {how}."
        ));
        if let Some(note) = k.get("note").and_then(Value::as_str) {
            parts.push(format!("{note}."));
        }
    }
    for line in commissions {
        let status = match (&line.released_at, line.held_minor) {
            (Some(at), _) => format!("released {at}"),
            (None, held) if held > 0 => format!("held until {}", line.release_at),
            _ => "not held".to_owned(),
        };
        if line.level == 0 {
            parts.push(format!("Booked {} ({status}).", line.amount_minor));
        } else {
            parts.push(format!(
                "Override level {} paid upline: {} ({} bps of the direct commission; {status}).",
                line.level,
                line.amount_minor,
                line.rate_bps.unwrap_or_default()
            ));
        }
        if line.recovered_minor > 0 {
            parts.push(format!("{} of it taken back by refunds.", line.recovered_minor));
        }
    }
    parts.join(" ")
}
