//! Building events where a fact originates.

use amba_core::id::EventId;
use amba_proto::wire::EventMeta;
use prost::Message;

/// A fresh `EventMeta`: a new time-ordered id, now, and the current trace context.
pub fn new_meta() -> EventMeta {
    new_meta_in_trace(amba_telemetry::current_traceparent())
}

/// A fresh `EventMeta` in a given trace: for facts decided away from their request's span (a
/// group commit decides many requests' facts at once).
pub fn new_meta_in_trace(traceparent: String) -> EventMeta {
    EventMeta {
        event_id: EventId::new().to_string(),
        occurred_at_micros: chrono::Utc::now().timestamp_micros(),
        traceparent,
    }
}

/// An event ready for the outbox: where it goes and its encoded body.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub event_id: String,
    pub subject: String,
    pub payload: Vec<u8>,
    pub traceparent: String,
}

impl OutboxEvent {
    /// `meta` must be the same `EventMeta` embedded in `message`.
    pub fn new(subject: String, meta: &EventMeta, message: &impl Message) -> Self {
        OutboxEvent {
            event_id: meta.event_id.clone(),
            subject,
            payload: message.encode_to_vec(),
            traceparent: meta.traceparent.clone(),
        }
    }
}
