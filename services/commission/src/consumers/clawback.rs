//! Clawbacks: a refund reverses part of each commission of the conversion. One at a time (they
//! are rare next to approvals): each reads and locks the balances it may turn into debt.

use super::retry;
use crate::domain::ledger::{self, Account, Scope};
use crate::store;
use crate::store::ledger::{PostingRef, balance_for_update, record};
use amba_bus::consumer::HandlerError;
use amba_proto::wire as pb;
use sqlx::PgConnection;

/// Reverses the commissions of a refunded conversion (prorated, overrides with their source),
/// records the clawback and tells notification what the ledger did.
pub async fn apply(
    conn: &mut PgConnection,
    ns: &amba_bus::Namespace,
    event: &pb::ConversionClawedBack,
) -> Result<(), HandlerError> {
    if event.clawback_id.is_empty() {
        return Err(HandlerError::Permanent("clawback event without a clawback id".into()));
    }
    if store::clawback(conn, &event.clawback_id).await?.is_some() {
        return Ok(());
    }
    let conversion = event
        .conversion
        .as_ref()
        .ok_or_else(|| HandlerError::Permanent("clawback event without a conversion".into()))?;
    let event_micros = event.meta.as_ref().map(|m| m.occurred_at_micros).unwrap_or_default();
    let was_approved = !conversion.enrollment_id.is_empty() && conversion.commission_version > 0;
    let known = store::conversion_approved(conn, &conversion.conversion_id).await?;
    if was_approved && known != Some(true) {
        // The approval is on its way (or being retried): apply the clawback after it.
        return Err(retry(format!(
            "clawback {} before the approval of {}",
            event.clawback_id, conversion.conversion_id
        )));
    }
    let refunded_total = conversion.clawed_back_minor;
    let refunded = store::set_refunded(conn, &conversion.conversion_id, refunded_total).await?;
    // Every figure of the sale on the sale's day, as its approval and commission were.
    let sale_day = refunded.as_ref().map_or_else(
        || {
            store::day_of(if conversion.occurred_at_micros > 0 {
                conversion.occurred_at_micros
            } else {
                event_micros
            })
        },
        |r| r.counted_day,
    );
    let mut stats = store::StatsBumps::default();
    let mut reversed_total = 0i64;
    let mut carry_total = 0i64;
    for row in store::commissions_of(conn, &conversion.conversion_id).await? {
        let scope = Scope {
            program_id: row.program_id.clone(),
            enrollment_id: row.enrollment_id.clone(),
            currency: row.currency.clone(),
        };
        let mut state = row.state();
        let payable = balance_for_update(conn, &scope, Account::Payable).await?;
        let reversal = ledger::clawback(&scope, &mut state, refunded_total, payable)
            .map_err(|e| HandlerError::Permanent(format!("clawback {}: {e}", event.clawback_id)))?;
        let idem = format!("clawback:{}:{}", event.clawback_id, row.level);
        record(
            conn,
            &scope,
            PostingRef {
                idem_key: &idem,
                reference: &event.clawback_id,
            },
            &reversal.posting,
        )
        .await?;
        store::save_commission_state(conn, &row.commission_id, &state).await?;
        if reversal.reversed_minor != 0 {
            let bump = store::StatsBump {
                clawed_back_minor: reversal.reversed_minor,
                ..Default::default()
            };
            stats.add(&row.program_id, &row.enrollment_id, sale_day, &bump);
        }
        reversed_total += reversal.reversed_minor;
        carry_total += reversal.carry_forward_minor;
    }
    // Refunds count against revenue, which holds approved sales only: so do they. The refunded
    // total only ever rises (a refund applied out of order adds nothing more).
    if let Some(r) = refunded
        .as_ref()
        .filter(|r| r.approved && r.after_minor > r.before_minor)
    {
        let bump = store::StatsBump {
            refunded_minor: r.after_minor - r.before_minor,
            clawed_back: i64::from(r.before_minor == 0),
            ..Default::default()
        };
        // The affiliate the conversion is credited to now (a sale assigned after it was
        // recorded unattributed was first seen under nobody).
        stats.add(&conversion.program_id, &conversion.enrollment_id, sale_day, &bump);
    }
    store::bump_all_stats(conn, &stats).await?;
    store::insert_clawback(
        conn,
        &store::ClawbackRow {
            clawback_id: event.clawback_id.clone(),
            conversion_id: conversion.conversion_id.clone(),
            program_id: conversion.program_id.clone(),
            enrollment_id: conversion.enrollment_id.clone(),
            refund_minor: event.refund_minor,
            refunded_total_minor: refunded_total,
            reversed_minor: reversed_total,
            carry_forward_minor: carry_total,
            reason: event.reason.clone(),
            currency: conversion.currency.clone(),
        },
    )
    .await?;
    // What the ledger did, for the affiliate's e-mail (notification consumes it).
    let meta = amba_bus::events::new_meta();
    let outcome = pb::CommissionClawedBack {
        meta: Some(meta.clone()),
        clawback_id: event.clawback_id.clone(),
        conversion_id: conversion.conversion_id.clone(),
        program_id: conversion.program_id.clone(),
        enrollment_id: conversion.enrollment_id.clone(),
        affiliate_org_id: conversion.affiliate_org_id.clone(),
        currency: conversion.currency.clone(),
        refund_minor: event.refund_minor,
        reversed_minor: reversed_total,
        carry_forward_minor: carry_total,
        reason: event.reason.clone(),
    };
    amba_bus::outbox::enqueue(
        conn,
        &amba_bus::events::OutboxEvent::new(ns.event("commission", "clawed_back"), &meta, &outcome),
    )
    .await?;
    Ok(())
}
