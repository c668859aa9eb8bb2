//! Keeps the read model of programs, enrollments and codes from enrollment's events, and the
//! addresses orgs call from from the edge's.

use crate::store::read_model;
use amba_bus::consumer::{Delivery, Handler, HandlerError};
use amba_proto::wire as pb;
use prost::Message;
use sqlx::PgConnection;

pub struct EnrollmentFacts;

impl Handler for EnrollmentFacts {
    async fn handle(&self, conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        match delivery.event().0 {
            "program" => {
                let event = pb::ProgramChanged::decode(delivery.payload.clone())?;
                let program = event
                    .program
                    .ok_or_else(|| HandlerError::Permanent("program event without a program".into()))?;
                read_model::apply_program(conn, &program).await?;
            }
            "enrollment" => {
                let event = pb::EnrollmentChanged::decode(delivery.payload.clone())?;
                let enrollment = event
                    .enrollment
                    .ok_or_else(|| HandlerError::Permanent("enrollment event without an enrollment".into()))?;
                read_model::apply_enrollment(conn, &enrollment, &event.affiliate_emails).await?;
            }
            "code" => read_model::apply_code(conn, &pb::CodeChanged::decode(delivery.payload.clone())?).await?,
            _ => {} // identity events are not ours to keep
        }
        Ok(())
    }
}

/// `caller.seen` from the edge's stream (its consumer takes nothing else).
pub struct CallerAddresses;

impl Handler for CallerAddresses {
    async fn handle(&self, conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        if delivery.event() == ("caller", "seen") {
            read_model::apply_caller_seen(conn, &pb::CallerSeen::decode(delivery.payload.clone())?).await?;
        }
        Ok(())
    }
}
