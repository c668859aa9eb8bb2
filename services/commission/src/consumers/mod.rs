//! Event handlers, run by the one consumer runner (`amba_bus::consumer`): inbox dedupe and the
//! handler's effects commit in one transaction.
//!
//! - Enrollment stream: program and enrollment read models (newest `updated_at` wins).
//! - Attribution stream: conversions (stats, accrual on approval, multi-level overrides),
//!   clawbacks, touchpoints (clicks). Partitioned by the attributed enrollment: one affiliate's
//!   ledger writes are applied by one worker in stream order (a keyed actor), never concurrently.
//!
//! Events of the two streams race: a conversion whose program or enrollment is not in the read
//! model yet is retried (Nak with backoff), never dropped.

use crate::domain::ledger::{self, Account, Scope};
use crate::store::ledger::{PostingRef, balance_for_update, record};
use crate::store::{self, ProgramRow};
use amba_bus::consumer::{Delivery, Handler, HandlerError};
use amba_proto::wire as pb;
use prost::Message;
use sqlx::PgConnection;

fn retry(message: String) -> HandlerError {
    HandlerError::Retry(anyhow::anyhow!(message))
}

fn kind_of(subject: &str) -> (&str, &str) {
    // <ns>.evt.<domain>.<type>
    let mut parts = subject.rsplitn(3, '.');
    let kind = parts.next().unwrap_or_default();
    let domain = parts.next().unwrap_or_default();
    (domain, kind)
}

/// Program and enrollment read models.
pub struct EnrollmentEvents;

impl Handler for EnrollmentEvents {
    async fn handle(&self, conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        match kind_of(&delivery.subject) {
            ("program", _) => {
                let event = pb::ProgramChanged::decode(delivery.payload.as_ref())?;
                let program = event
                    .program
                    .ok_or_else(|| HandlerError::Permanent("program event without a program".into()))?;
                store::upsert_program(conn, &program).await?;
            }
            ("enrollment", _) => {
                let event = pb::EnrollmentChanged::decode(delivery.payload.as_ref())?;
                let enrollment = event
                    .enrollment
                    .ok_or_else(|| HandlerError::Permanent("enrollment event without an enrollment".into()))?;
                store::upsert_enrollment(conn, &enrollment).await?;
            }
            _ => {} // codes, identity: not ours
        }
        Ok(())
    }

    fn partition_key(&self, delivery: &Delivery) -> Option<String> {
        match kind_of(&delivery.subject) {
            ("program", _) => pb::ProgramChanged::decode(delivery.payload.as_ref())
                .ok()
                .and_then(|e| e.program)
                .map(|p| p.program_id),
            ("enrollment", _) => pb::EnrollmentChanged::decode(delivery.payload.as_ref())
                .ok()
                .and_then(|e| e.enrollment)
                .map(|e| e.enrollment_id),
            _ => None,
        }
    }
}

/// Conversions, clawbacks and touchpoints.
pub struct AttributionEvents {
    /// The platform switch `MULTI_LEVEL_ENABLED`.
    pub multi_level_enabled: bool,
    /// For the `commission.*` events this consumer publishes.
    pub ns: amba_bus::Namespace,
}

impl Handler for AttributionEvents {
    async fn handle(&self, conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        match kind_of(&delivery.subject) {
            ("conversion", "clawed_back") => {
                let event = pb::ConversionClawedBack::decode(delivery.payload.as_ref())?;
                self.clawed_back(conn, &event).await
            }
            ("conversion", kind) => {
                let event = pb::ConversionChanged::decode(delivery.payload.as_ref())?;
                let conversion = event
                    .conversion
                    .ok_or_else(|| HandlerError::Permanent("conversion event without a conversion".into()))?;
                let occurred = event.meta.map(|m| m.occurred_at_micros).unwrap_or_default();
                self.conversion_changed(conn, &conversion, kind == "approved", occurred)
                    .await
            }
            ("touchpoint", "recorded") => {
                let event = pb::TouchpointRecorded::decode(delivery.payload.as_ref())?;
                if !event.enrollment_id.is_empty() {
                    let bump = store::StatsBump {
                        clicks: 1,
                        ..Default::default()
                    };
                    store::bump_stats(
                        conn,
                        &event.program_id,
                        &event.enrollment_id,
                        event.occurred_at_micros,
                        &bump,
                    )
                    .await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn partition_key(&self, delivery: &Delivery) -> Option<String> {
        let payload = delivery.payload.as_ref();
        match kind_of(&delivery.subject) {
            ("conversion", "clawed_back") => pb::ConversionClawedBack::decode(payload)
                .ok()
                .and_then(|e| e.conversion)
                .map(partition_of),
            ("conversion", _) => pb::ConversionChanged::decode(payload)
                .ok()
                .and_then(|e| e.conversion)
                .map(partition_of),
            ("touchpoint", _) => pb::TouchpointRecorded::decode(payload).ok().map(|t| t.enrollment_id),
            _ => None,
        }
    }
}

/// One affiliate's events go to one worker; unattributed ones spread by conversion.
fn partition_of(conversion: pb::Conversion) -> String {
    if conversion.enrollment_id.is_empty() {
        conversion.conversion_id
    } else {
        conversion.enrollment_id
    }
}

fn day_micros(primary: i64, fallback: i64) -> i64 {
    if primary > 0 { primary } else { fallback }
}

impl AttributionEvents {
    async fn conversion_changed(
        &self,
        conn: &mut PgConnection,
        conversion: &pb::Conversion,
        approved: bool,
        event_micros: i64,
    ) -> Result<(), HandlerError> {
        let sale_day = day_micros(conversion.occurred_at_micros, event_micros);
        let first_seen = store::remember_conversion(conn, conversion, sale_day).await?;
        if !approved || conversion.enrollment_id.is_empty() {
            if first_seen {
                count_sale(conn, conversion, sale_day).await?;
            }
            return Ok(());
        }
        let program = store::program(conn, &conversion.program_id)
            .await?
            .ok_or_else(|| retry(format!("program {} not in the read model yet", conversion.program_id)))?;
        let enrollment = store::enrollment(conn, &conversion.enrollment_id)
            .await?
            .ok_or_else(|| {
                retry(format!(
                    "enrollment {} not in the read model yet",
                    conversion.enrollment_id
                ))
            })?;
        if !store::mark_approved(conn, &conversion.conversion_id).await? {
            // Accrued before (a second approved event for the same conversion): only a first
            // sighting is still to be counted.
            if first_seen {
                count_sale(conn, conversion, sale_day).await?;
            }
            return Ok(());
        }
        let decided = day_micros(conversion.decided_at_micros, event_micros);
        // One daily_stats upsert for the whole approval where the days allow (the sale counted,
        // approved, its revenue and commission), instead of one per figure.
        let mut approval_stats = store::StatsBump {
            approved: 1,
            revenue_minor: conversion.amount_minor,
            ..Default::default()
        };
        if first_seen {
            if store::day_of(sale_day) == store::day_of(decided) {
                approval_stats.conversions = 1;
            } else {
                count_sale(conn, conversion, sale_day).await?;
            }
        }

        let direct = store::NewCommission {
            commission_id: commission_id(&conversion.conversion_id, 0),
            conversion_id: conversion.conversion_id.clone(),
            program_id: program.program_id.clone(),
            enrollment_id: enrollment.enrollment_id.clone(),
            source_enrollment_id: enrollment.enrollment_id.clone(),
            level: 0,
            source_commission_id: None,
            currency: conversion.currency.clone(),
            sale_minor: conversion.amount_minor,
            amount_minor: conversion.commission_minor,
            rate_bps: None,
            commission_version: i32::try_from(conversion.commission_version).unwrap_or(i32::MAX),
            commission_tier: conversion.commission_tier,
            decided_at_micros: decided,
        };
        accrue(conn, &program, &direct, approval_stats).await?;

        if self.multi_level_enabled && program.multi_level_enabled {
            let mut parent = enrollment.parent_enrollment_id.clone();
            for (index, bps) in program.levels_bps.iter().enumerate() {
                let Some(upline_id) = parent.filter(|p| !p.is_empty()) else {
                    break;
                };
                let upline = store::enrollment(conn, &upline_id)
                    .await?
                    .ok_or_else(|| retry(format!("sponsor enrollment {upline_id} not in the read model yet")))?;
                parent = upline.parent_enrollment_id.clone();
                // A removed (or never active) sponsor earns no new overrides.
                if upline.status != "active" {
                    continue;
                }
                let level = i32::try_from(index + 1).unwrap_or(i32::MAX);
                let bps = u32::try_from(*bps).unwrap_or(0);
                let amount = ledger::override_amount(direct.amount_minor, bps)
                    .map_err(|e| HandlerError::Permanent(e.to_string()))?;
                let row = store::NewCommission {
                    commission_id: commission_id(&conversion.conversion_id, level),
                    enrollment_id: upline.enrollment_id.clone(),
                    level,
                    source_commission_id: Some(direct.commission_id.clone()),
                    amount_minor: amount,
                    rate_bps: Some(i32::try_from(bps).unwrap_or(0)),
                    ..direct.clone()
                };
                accrue(conn, &program, &row, store::StatsBump::default()).await?;
            }
        }
        Ok(())
    }

    async fn clawed_back(&self, conn: &mut PgConnection, event: &pb::ConversionClawedBack) -> Result<(), HandlerError> {
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
        store::set_refunded(conn, &conversion.conversion_id, refunded_total).await?;
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
                store::bump_stats(conn, &row.program_id, &row.enrollment_id, event_micros, &bump).await?;
            }
            reversed_total += reversal.reversed_minor;
            carry_total += reversal.carry_forward_minor;
        }
        let bump = store::StatsBump {
            refunded_minor: event.refund_minor,
            ..Default::default()
        };
        store::bump_stats(
            conn,
            &conversion.program_id,
            &conversion.enrollment_id,
            event_micros,
            &bump,
        )
        .await?;
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
            &amba_bus::events::OutboxEvent::new(self.ns.event("commission", "clawed_back"), &meta, &outcome),
        )
        .await?;
        Ok(())
    }
}

/// Counts a conversion seen for the first time on its sale day.
async fn count_sale(conn: &mut PgConnection, conversion: &pb::Conversion, sale_day: i64) -> Result<(), HandlerError> {
    let counted = store::StatsBump {
        conversions: 1,
        ..Default::default()
    };
    store::bump_stats(
        conn,
        &conversion.program_id,
        &conversion.enrollment_id,
        sale_day,
        &counted,
    )
    .await?;
    Ok(())
}

/// The id of a conversion's commission at `level` (0 direct, n the n-th upline's override).
pub fn commission_id(conversion_id: &str, level: i32) -> String {
    format!("{conversion_id}:{level}")
}

/// Books a commission: the sub-ledger row, the accrual posting, the stats (with `also`, other
/// figures of the same enrollment and decision day, in the same upsert), and — with no hold —
/// the release in the same transaction.
async fn accrue(
    conn: &mut PgConnection,
    program: &ProgramRow,
    row: &store::NewCommission,
    also: store::StatsBump,
) -> Result<(), HandlerError> {
    let release_at = row.decided_at_micros + i64::from(program.hold_days) * 86_400_000_000;
    if !store::insert_commission(conn, row, release_at).await? {
        if also != store::StatsBump::default() {
            store::bump_stats(conn, &row.program_id, &row.enrollment_id, row.decided_at_micros, &also).await?;
        }
        return Ok(());
    }
    let scope = Scope {
        program_id: row.program_id.clone(),
        enrollment_id: row.enrollment_id.clone(),
        currency: row.currency.clone(),
    };
    let posting = ledger::accrue(&scope, row.amount_minor).map_err(|e| HandlerError::Permanent(e.to_string()))?;
    let idem = format!("accrue:{}", row.commission_id);
    record(
        conn,
        &scope,
        PostingRef {
            idem_key: &idem,
            reference: &row.commission_id,
        },
        &posting,
    )
    .await?;
    let bump = store::StatsBump {
        commission_minor: row.amount_minor,
        ..also
    };
    store::bump_stats(conn, &row.program_id, &row.enrollment_id, row.decided_at_micros, &bump).await?;
    if program.hold_days == 0 {
        crate::sweep::release_one(conn, &row.commission_id).await?;
    }
    Ok(())
}
