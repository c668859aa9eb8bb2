//! Validation of the public request messages against the documented limits
//! ([`amba_core::limits`]). The edge runs it before a request is queued or batched with other
//! callers' requests; the owning service runs it again, since anything on NATS can call it.
//! Each function returns the request normalized (trimmed, e-mail lower-cased, `0` times made
//! explicit), so the service stores exactly what was checked.

use crate::wire as pb;
use amba_core::limits::{self, MAX_EMAIL_CHARS, MAX_KEY_CHARS, MAX_REASON_CHARS, MAX_URL_CHARS};
use amba_core::{ApiError, Currency};
use chrono::{DateTime, Utc};

fn key(field: &str, value: &str) -> Result<String, ApiError> {
    Ok(limits::key(field, value)?.unwrap_or_default())
}

fn required(field: &str, value: &str) -> Result<String, ApiError> {
    limits::required_text(field, value, MAX_KEY_CHARS)
}

/// A conversion report (gRPC `ReportConversion(s)`, MCP `conversion_report`).
pub fn report(r: &pb::ReportConversionRequest, now: DateTime<Utc>) -> Result<pb::ReportConversionRequest, ApiError> {
    let currency = Currency::parse(&required("currency", &r.currency)?)?;
    Ok(pb::ReportConversionRequest {
        program_id: required("program_id", &r.program_id)?,
        project_id: required("project_id", &r.project_id)?,
        external_id: required("external_id", &r.external_id)?,
        amount_minor: limits::amount("amount_minor", r.amount_minor)?,
        currency: currency.code().to_owned(),
        code: key("code", &r.code)?,
        subject_ref: key("subject_ref", &r.subject_ref)?,
        customer_ref: key("customer_ref", &r.customer_ref)?,
        customer_email: limits::text("customer_email", &r.customer_email, MAX_EMAIL_CHARS)?
            .unwrap_or_default()
            .to_lowercase(),
        occurred_at_micros: limits::time_micros("occurred_at", r.occurred_at_micros, now)?.timestamp_micros(),
    })
}

/// A click (gRPC `RecordTouchpoint`, MCP `touchpoint_record`, `POST /v1/touchpoints`, `/r/`).
pub fn touchpoint(
    r: &pb::RecordTouchpointRequest,
    now: DateTime<Utc>,
) -> Result<pb::RecordTouchpointRequest, ApiError> {
    Ok(pb::RecordTouchpointRequest {
        program_id: key("program_id", &r.program_id)?,
        code: required("code", &r.code)?,
        subject_ref: required("subject_ref", &r.subject_ref)?,
        occurred_at_micros: limits::time_micros("occurred_at", r.occurred_at_micros, now)?.timestamp_micros(),
        landing_url: limits::text("landing_url", &r.landing_url, MAX_URL_CHARS)?.unwrap_or_default(),
        client_ip: limits::text("client_ip", &r.client_ip, 64)?.unwrap_or_default(),
        user_agent: limits::text("user_agent", &r.user_agent, 512)?.unwrap_or_default(),
    })
}

/// A refund or chargeback (gRPC `ClawbackConversion`, MCP `conversion_clawback`).
pub fn clawback(r: &pb::ClawbackRequest) -> Result<pb::ClawbackRequest, ApiError> {
    Ok(pb::ClawbackRequest {
        conversion_id: required("conversion_id", &r.conversion_id)?,
        reason: limits::required_text("reason", &r.reason, MAX_REASON_CHARS)?,
        amount_minor: limits::amount("amount_minor", r.amount_minor)?,
        idempotency_key: key("idempotency_key", &r.idempotency_key)?,
    })
}

/// An optional free-text reason (approve, reject, remove).
pub fn reason(value: &str) -> Result<String, ApiError> {
    Ok(limits::text("reason", value, MAX_REASON_CHARS)?.unwrap_or_default())
}

/// The largest encoded size of a report that passes [`report`]: the edge sizes its batches
/// (NATS `max_payload`) with it.
pub const MAX_REPORT_BYTES: usize = 4 * (6 * MAX_KEY_CHARS + MAX_EMAIL_CHARS) + 64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    fn valid() -> pb::ReportConversionRequest {
        pb::ReportConversionRequest {
            program_id: "prg_1".into(),
            project_id: " web ".into(),
            external_id: "o-1".into(),
            amount_minor: 100,
            currency: "usd".into(),
            customer_email: "A@B.example".into(),
            ..Default::default()
        }
    }

    #[test]
    fn normalizes_and_names_the_field() {
        let now = Utc::now();
        let ok = report(&valid(), now);
        assert!(ok.as_ref().is_ok_and(|r| r.project_id == "web"
            && r.currency == "USD"
            && r.customer_email == "a@b.example"
            && r.occurred_at_micros == now.timestamp_micros()));
        let bad = |r: pb::ReportConversionRequest| report(&r, now).err().map(|e| e.message).unwrap_or_default();
        assert!(
            bad(pb::ReportConversionRequest {
                occurred_at_micros: -1_000_000_000_000_000_000,
                ..valid()
            })
            .starts_with("occurred_at")
        );
        assert!(
            bad(pb::ReportConversionRequest {
                amount_minor: 1 << 62,
                ..valid()
            })
            .starts_with("amount_minor")
        );
        assert!(
            bad(pb::ReportConversionRequest {
                code: "a\0".into(),
                ..valid()
            })
            .starts_with("code")
        );
        assert!(
            bad(pb::ReportConversionRequest {
                customer_ref: "x".repeat(201),
                ..valid()
            })
            .starts_with("customer_ref")
        );
        assert!(
            bad(pb::ReportConversionRequest {
                external_id: String::new(),
                ..valid()
            })
            .starts_with("external_id")
        );
    }

    #[test]
    fn the_largest_valid_report_fits_its_bound() {
        let long = |n: usize| "\u{10FFFF}".repeat(n); // 4 bytes a character
        let largest = pb::ReportConversionRequest {
            program_id: long(MAX_KEY_CHARS),
            project_id: long(MAX_KEY_CHARS),
            external_id: long(MAX_KEY_CHARS),
            amount_minor: limits::MAX_AMOUNT_MINOR,
            currency: "USD".into(),
            code: long(MAX_KEY_CHARS),
            subject_ref: long(MAX_KEY_CHARS),
            customer_ref: long(MAX_KEY_CHARS),
            customer_email: long(MAX_EMAIL_CHARS),
            occurred_at_micros: i64::MAX,
        };
        assert!(largest.encoded_len() <= MAX_REPORT_BYTES, "{}", largest.encoded_len());
    }
}
