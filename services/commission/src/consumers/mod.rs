//! Event handlers, run by the one consumer runner (`amba_bus::consumer`): inbox dedupe and the
//! handler's effects commit in one transaction.
//!
//! - Enrollment stream: program and enrollment read models (the highest version wins: enrollment
//!   bumps it with each change under the row lock; then the newest `updated_at`).
//! - Attribution stream: conversions (stats, accrual on approval, multi-level overrides),
//!   clawbacks, touchpoints (clicks). Partitioned by conversion: one conversion's events are
//!   applied by one worker in stream order, while one affiliate's conversions spread over every
//!   worker. A worker books what it has queued as one batch (`booking`): a few statements per
//!   batch, not a dozen per conversion. Concurrent batches lock the rows they share (an
//!   affiliate's stats and balances) in key order; a clawback, which cannot, takes its program's
//!   ledger lock alone (`store::lock_programs`).
//!
//! Events of the two streams race: a conversion whose program or enrollment is not in the read
//! model yet is retried (Nak with backoff), never dropped.

mod booking;
mod clawback;

pub use booking::{Bookable, commission_id};

use crate::store::{self, LedgerLock};
use amba_bus::consumer::{Delivery, Handler, HandlerError};
use amba_proto::wire as pb;
use prost::Message;
use sqlx::PgConnection;

fn retry(message: String) -> HandlerError {
    HandlerError::Retry(anyhow::anyhow!(message))
}

/// Program and enrollment read models.
pub struct EnrollmentEvents;

impl Handler for EnrollmentEvents {
    async fn handle(&self, conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        match delivery.event() {
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
        match delivery.event() {
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

/// An attribution event, decoded.
enum AttributionEvent {
    Bookable(Bookable),
    ClawedBack(Box<pb::ConversionClawedBack>),
    NotOurs,
}

fn decode(delivery: &Delivery) -> Result<AttributionEvent, HandlerError> {
    let payload = delivery.payload.as_ref();
    Ok(match delivery.event() {
        ("conversion", "clawed_back") => {
            AttributionEvent::ClawedBack(Box::new(pb::ConversionClawedBack::decode(payload)?))
        }
        ("conversion", kind) => {
            let event = pb::ConversionChanged::decode(payload)?;
            let conversion = event
                .conversion
                .ok_or_else(|| HandlerError::Permanent("conversion event without a conversion".into()))?;
            AttributionEvent::Bookable(Bookable::Conversion {
                conversion: Box::new(conversion),
                approved: kind == "approved",
                event_micros: event.meta.map(|m| m.occurred_at_micros).unwrap_or_default(),
            })
        }
        ("touchpoint", "recorded") => {
            AttributionEvent::Bookable(Bookable::Click(pb::TouchpointRecorded::decode(payload)?))
        }
        _ => AttributionEvent::NotOurs,
    })
}

impl Handler for AttributionEvents {
    async fn handle(&self, conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        self.handle_batch(conn, &[delivery]).await
    }

    /// Books runs of conversions and clicks at once; a clawback is applied on its own, after
    /// what came before it (it may reverse an approval of the same batch). The programs' ledger
    /// locks are taken first, all at once: shared for bookings, exclusive with a clawback.
    async fn handle_batch(&self, conn: &mut PgConnection, deliveries: &[&Delivery]) -> Result<(), HandlerError> {
        let events = deliveries.iter().map(|d| decode(d)).collect::<Result<Vec<_>, _>>()?;
        // With a clawback, the batch locks rows run by run, not in one key order: it then runs
        // alone in every program it touches.
        let alone = events.iter().any(|e| matches!(e, AttributionEvent::ClawedBack(_)));
        let locks: Vec<(&str, LedgerLock)> = events
            .iter()
            .filter_map(AttributionEvent::ledger_lock)
            .map(|(program, lock)| (program, if alone { LedgerLock::Exclusive } else { lock }))
            .collect();
        store::lock_programs(conn, &locks).await?;
        let mut run = Vec::with_capacity(events.len());
        for event in events {
            match event {
                AttributionEvent::Bookable(event) => run.push(event),
                AttributionEvent::ClawedBack(event) => {
                    booking::book(conn, &run, self.multi_level_enabled).await?;
                    run.clear();
                    clawback::apply(conn, &self.ns, &event).await?;
                }
                AttributionEvent::NotOurs => {}
            }
        }
        booking::book(conn, &run, self.multi_level_enabled).await
    }

    /// A conversion's events go to one worker, in stream order (an approval before its
    /// clawbacks); conversions of one affiliate spread over every worker, so a hot affiliate does
    /// not hold up the others. Clicks go anywhere.
    fn partition_key(&self, delivery: &Delivery) -> Option<String> {
        let payload = delivery.payload.as_ref();
        match delivery.event() {
            ("conversion", "clawed_back") => pb::ConversionClawedBack::decode(payload)
                .ok()
                .and_then(|e| e.conversion)
                .map(|c| c.conversion_id),
            ("conversion", _) => pb::ConversionChanged::decode(payload)
                .ok()
                .and_then(|e| e.conversion)
                .map(|c| c.conversion_id),
            _ => None,
        }
    }
}

impl AttributionEvent {
    fn ledger_lock(&self) -> Option<(&str, LedgerLock)> {
        match self {
            AttributionEvent::Bookable(Bookable::Conversion { conversion, .. }) => {
                Some((&conversion.program_id, LedgerLock::Shared))
            }
            AttributionEvent::Bookable(Bookable::Click(click)) => Some((&click.program_id, LedgerLock::Shared)),
            AttributionEvent::ClawedBack(event) => event
                .conversion
                .as_ref()
                .map(|c| (c.program_id.as_str(), LedgerLock::Exclusive)),
            AttributionEvent::NotOurs => None,
        }
    }
}
