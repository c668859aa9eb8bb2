//! `POST /webhooks/stripe`: Stripe's events enter here. The signature is checked on the raw
//! bytes (HMAC-SHA256 over `<t>.<body>`, any of the header's `v1=` values, 300 s tolerance, any
//! of the configured secrets so a secret can be rotated), then the event is published to
//! JetStream with `Nats-Msg-Id = event.id` and answered 2xx only after the PubAck: an event
//! Stripe saw acknowledged is stored; a redelivered one is deduplicated.

use crate::EdgeState;
use crate::request::error_response;
use amba_core::ApiError;
use amba_core::secret::Secret;
use async_nats::jetstream::message::PublishMessage;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How old a signature may be (Stripe's default tolerance).
pub const TOLERANCE_SECONDS: i64 = 300;
/// Largest event body read (Stripe events are a few KB).
pub const MAX_BODY: usize = 256 * 1024;

/// Whether `header` (`t=<unix>,v1=<hex>[,v1=…]`) signs `body` with any of `secrets` within the
/// tolerance of `now`.
pub fn verify(header: &str, body: &[u8], secrets: &[Secret], now: i64) -> Result<(), &'static str> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", sig)) => signatures.extend(hex::decode(sig).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("no timestamp in Stripe-Signature")?;
    if now.abs_diff(timestamp) > TOLERANCE_SECONDS.unsigned_abs() {
        return Err("the signature is too old (or from the future)");
    }
    for secret in secrets {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else {
            continue;
        };
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        // verify_slice compares in constant time.
        if signatures.iter().any(|sig| mac.clone().verify_slice(sig).is_ok()) {
            return Ok(());
        }
    }
    Err("no v1 signature matches")
}

pub async fn stripe(State(state): State<EdgeState>, headers: HeaderMap, body: Bytes) -> Response {
    if state.webhook_secrets.is_empty() {
        return error_response(&ApiError::unavailable(
            "Stripe webhooks are not configured (AMBA_STRIPE_WEBHOOK_SECRET)",
        ));
    }
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Err(problem) = verify(signature, &body, &state.webhook_secrets, chrono::Utc::now().timestamp()) {
        tracing::info!(%problem, "Stripe webhook refused");
        return error_response(&ApiError::invalid(format!("invalid Stripe-Signature: {problem}")));
    }
    let event: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(_) => return error_response(&ApiError::invalid("the event is not JSON")),
    };
    let (Some(id), Some(kind)) = (event["id"].as_str(), event["type"].as_str()) else {
        return error_response(&ApiError::invalid("the event has no id or type"));
    };
    let valid_token = |s: &str| !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic());
    if !valid_token(id) || !valid_token(kind) {
        return error_response(&ApiError::invalid("the event's id or type is malformed"));
    }
    // One subject token per type: `account.updated` → `account_updated`.
    let subject = state
        .rpc
        .namespace()
        .event("stripe", &kind.replace(['.', '*', '>'], "_"));
    let js = async_nats::jetstream::new(state.nats.clone());
    let message = PublishMessage::build().payload(body).message_id(id);
    let stored = match js.send_publish(subject, message).await {
        Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
        Err(err) => Err(err.to_string()),
    };
    match stored {
        Ok(()) => StatusCode::OK.into_response(),
        Err(err) => {
            tracing::error!(error = %err, event_id = id, "Stripe event not stored; Stripe will retry");
            error_response(&ApiError::unavailable("the event could not be stored; retry"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, t: i64, body: &[u8]) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            return String::new();
        };
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn signatures_rotation_and_tolerance() {
        let body = br#"{"id":"evt_1"}"#;
        let now = 1_800_000_000;
        let old = Secret::new("whsec_old");
        let new = Secret::new("whsec_new");
        let header = format!(
            "t={now},v1={},v1={}",
            sign("whsec_other", now, body),
            sign("whsec_new", now, body)
        );
        assert!(
            verify(&header, body, &[old.clone(), new.clone()], now).is_ok(),
            "any v1, any secret"
        );
        assert!(verify(&header, body, std::slice::from_ref(&old), now).is_err());
        assert!(
            verify(&header, b"{\"id\":\"evt_2\"}", std::slice::from_ref(&new), now).is_err(),
            "body changed"
        );
        assert!(
            verify(&header, body, std::slice::from_ref(&new), now + 301).is_err(),
            "stale"
        );
        assert!(
            verify(&header, body, std::slice::from_ref(&new), now - 301).is_err(),
            "future"
        );
        assert!(
            verify(
                &format!("v1={}", sign("whsec_new", now, body)),
                body,
                std::slice::from_ref(&new),
                now
            )
            .is_err()
        );
        assert!(verify("", body, &[new], now).is_err());
    }
}
