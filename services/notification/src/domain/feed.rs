//! The event feed: which events of the system an owner's or an affiliate's agent may read, under
//! which type, with which public fields. Pure: an event in, a feed entry (or nothing) out.
//!
//! | type                                   | from                         |
//! |----------------------------------------|------------------------------|
//! | `enrollment.<kind>`                    | enrollment.* (invited, applied, activated, rejected, declined, removed, moved: a new sponsor) |
//! | `conversion.recorded` / `conversion.held` | conversion.recorded (held: a fraud check or a missing rate holds it) |
//! | `conversion.approved` / `.rejected`    | conversion.approved / .rejected (approved: the commission decided, booked by the ledger) |
//! | `conversion.clawed_back`               | conversion.clawed_back       |
//! | `commission.clawed_back`               | commission.clawed_back (what the ledger reversed) |
//! | `payout.sent` / `payout.failed`        | payout.sent / payout.failed  |
//!
//! Payloads carry no customer or visitor references; the affiliate's view of a held conversion
//! says it is held, not why.

use amba_proto::wire as pb;
use serde_json::{Value, json};

/// Every type the feed carries (what `types` filters accept).
pub const TYPES: &[&str] = &[
    "enrollment.invited",
    "enrollment.applied",
    "enrollment.activated",
    "enrollment.rejected",
    "enrollment.declined",
    "enrollment.removed",
    "enrollment.moved",
    "conversion.recorded",
    "conversion.held",
    "conversion.approved",
    "conversion.rejected",
    "conversion.clawed_back",
    "commission.clawed_back",
    "payout.sent",
    "payout.failed",
];

/// One event as the feed keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub event_id: String,
    pub kind: String,
    pub program_id: String,
    /// Whose it is on the affiliate side (its org sees it too); `None`: the owner's alone.
    pub affiliate_org_id: Option<String>,
    pub occurred_at_micros: i64,
    pub payload: Value,
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn conversion_payload(c: &pb::Conversion) -> Value {
    let mut payload = json!({
        "conversion_id": c.conversion_id,
        "program_id": c.program_id,
        "enrollment_id": non_empty(&c.enrollment_id),
        "affiliate_org_id": non_empty(&c.affiliate_org_id),
        "status": c.status,
        "attribution": c.attribution,
        "amount_minor": c.amount_minor,
        "currency": c.currency,
        "commission_minor": c.commission_minor,
        "commission_version": c.commission_version,
        "clawed_back_minor": c.clawed_back_minor,
        "held_for_review": c.held_for_review,
        "hold_reasons": c.hold_reasons,
        "reason": non_empty(&c.reason),
    });
    if !c.sale_currency.is_empty()
        && let Some(p) = payload.as_object_mut()
    {
        p.insert(
            "fx".into(),
            json!({"sale_amount_minor": c.sale_amount_minor, "sale_currency": c.sale_currency,
                   "rate": non_empty(&c.fx_rate), "rate_date": non_empty(&c.fx_rate_date)}),
        );
    }
    payload
}

/// The feed entry of an event, or `None` for one the feed does not carry.
pub fn entry(domain: &str, kind: &str, payload: &[u8]) -> Result<Option<Entry>, prost::DecodeError> {
    use prost::Message;
    let meta = |m: Option<pb::EventMeta>| m.unwrap_or_default();
    Ok(match (domain, kind) {
        ("enrollment", kind) => {
            let event = pb::EnrollmentChanged::decode(payload)?;
            let m = meta(event.meta);
            let Some(e) = event.enrollment else { return Ok(None) };
            Some(Entry {
                event_id: m.event_id,
                kind: format!("enrollment.{kind}"),
                program_id: e.program_id.clone(),
                affiliate_org_id: non_empty(&e.affiliate_org_id),
                occurred_at_micros: m.occurred_at_micros,
                payload: json!({
                    "enrollment_id": e.enrollment_id,
                    "program_id": e.program_id,
                    "affiliate_org_id": e.affiliate_org_id,
                    "affiliate_org_name": e.affiliate_org_name,
                    "status": e.status,
                    "previous_status": non_empty(&event.previous_status),
                    "code": non_empty(&e.code),
                    "parent_enrollment_id": non_empty(&e.parent_enrollment_id),
                    "reason": non_empty(&e.reason),
                }),
            })
        }
        ("conversion", kind @ ("recorded" | "approved" | "rejected")) => {
            let event = pb::ConversionChanged::decode(payload)?;
            let m = meta(event.meta);
            let Some(c) = event.conversion else { return Ok(None) };
            let kind = if kind == "recorded" && c.held_for_review {
                "held"
            } else {
                kind
            };
            Some(Entry {
                event_id: m.event_id,
                kind: format!("conversion.{kind}"),
                program_id: c.program_id.clone(),
                affiliate_org_id: non_empty(&c.affiliate_org_id),
                occurred_at_micros: m.occurred_at_micros,
                payload: conversion_payload(&c),
            })
        }
        ("conversion", "clawed_back") => {
            let event = pb::ConversionClawedBack::decode(payload)?;
            let m = meta(event.meta);
            let Some(c) = event.conversion else { return Ok(None) };
            let mut payload = conversion_payload(&c);
            if let Some(p) = payload.as_object_mut() {
                p.insert("clawback_id".into(), json!(event.clawback_id));
                p.insert("refund_minor".into(), json!(event.refund_minor));
            }
            Some(Entry {
                event_id: m.event_id,
                kind: "conversion.clawed_back".into(),
                program_id: c.program_id.clone(),
                affiliate_org_id: non_empty(&c.affiliate_org_id),
                occurred_at_micros: m.occurred_at_micros,
                payload,
            })
        }
        ("commission", "clawed_back") => {
            let event = pb::CommissionClawedBack::decode(payload)?;
            let m = meta(event.meta);
            Some(Entry {
                event_id: m.event_id,
                kind: "commission.clawed_back".into(),
                program_id: event.program_id.clone(),
                affiliate_org_id: non_empty(&event.affiliate_org_id),
                occurred_at_micros: m.occurred_at_micros,
                payload: json!({
                    "clawback_id": event.clawback_id,
                    "conversion_id": event.conversion_id,
                    "program_id": event.program_id,
                    "enrollment_id": event.enrollment_id,
                    "affiliate_org_id": event.affiliate_org_id,
                    "currency": event.currency,
                    "refund_minor": event.refund_minor,
                    "reversed_minor": event.reversed_minor,
                    "carry_forward_minor": event.carry_forward_minor,
                }),
            })
        }
        ("payout", kind @ ("sent" | "failed")) => {
            let event = pb::PayoutItemChanged::decode(payload)?;
            let m = meta(event.meta);
            let item = event.item.unwrap_or_default();
            Some(Entry {
                event_id: m.event_id,
                kind: format!("payout.{kind}"),
                program_id: event.program_id.clone(),
                affiliate_org_id: non_empty(&event.affiliate_org_id),
                occurred_at_micros: m.occurred_at_micros,
                payload: json!({
                    "payout_item_id": item.payout_item_id,
                    "program_id": event.program_id,
                    "enrollment_id": item.enrollment_id,
                    "affiliate_org_id": event.affiliate_org_id,
                    "currency": event.currency,
                    "gross_minor": item.gross_minor,
                    "fee_minor": item.fee_minor,
                    "net_minor": item.net_minor,
                    "status": item.status,
                    "reason": non_empty(&item.reason),
                    "stripe_transfer_id": non_empty(&item.stripe_transfer_id),
                }),
            })
        }
        _ => None,
    })
}

/// An entry as its affiliate may read it: a hold says it is held, not what the detector saw.
pub fn affiliate_view(kind: &str, mut payload: Value) -> Value {
    if let Some(p) = payload.as_object_mut() {
        p.remove("hold_reasons");
        if kind == "conversion.held" || p.get("held_for_review") == Some(&Value::Bool(true)) {
            p.insert("reason".into(), json!("held for review"));
        }
    }
    payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn conversion(held: bool) -> pb::Conversion {
        pb::Conversion {
            conversion_id: "cnv_1".into(),
            program_id: "prg_1".into(),
            enrollment_id: "enr_1".into(),
            affiliate_org_id: "org_aff".into(),
            status: if held { "pending" } else { "approved" }.into(),
            amount_minor: 10_000,
            currency: "USD".into(),
            customer_ref: "cus_secret".into(),
            subject_ref: "visitor_secret".into(),
            held_for_review: held,
            hold_reasons: if held { vec!["velocity".into()] } else { vec![] },
            reason: if held {
                "held for review (velocity: 4 in a minute)".into()
            } else {
                String::new()
            },
            ..Default::default()
        }
    }

    fn changed(c: pb::Conversion) -> Vec<u8> {
        pb::ConversionChanged {
            meta: Some(pb::EventMeta {
                event_id: "evt_1".into(),
                occurred_at_micros: 7,
                ..Default::default()
            }),
            conversion: Some(c),
            previous_status: String::new(),
        }
        .encode_to_vec()
    }

    #[test]
    fn conversions_become_entries_without_customer_references() {
        let held = entry("conversion", "recorded", &changed(conversion(true)))
            .ok()
            .flatten();
        let held = held.unwrap_or_else(|| unreachable!());
        assert_eq!(
            (
                held.kind.as_str(),
                held.affiliate_org_id.as_deref(),
                held.occurred_at_micros
            ),
            ("conversion.held", Some("org_aff"), 7)
        );
        let text = held.payload.to_string();
        assert!(
            !text.contains("cus_secret") && !text.contains("visitor_secret"),
            "{text}"
        );
        assert_eq!(held.payload["hold_reasons"], json!(["velocity"]));
        let seen = affiliate_view(&held.kind, held.payload.clone());
        assert_eq!(
            (seen.get("hold_reasons"), &seen["reason"]),
            (None, &json!("held for review"))
        );
        let approved = entry("conversion", "approved", &changed(conversion(false)))
            .ok()
            .flatten();
        assert_eq!(approved.map(|e| e.kind), Some("conversion.approved".to_owned()));
        assert_eq!(entry("touchpoint", "recorded", &[]).ok().flatten(), None);
        assert!(entry("conversion", "approved", &[0xff, 0xff]).is_err());
    }
}
