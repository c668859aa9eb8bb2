//! Messaging for the services: subject names, the transactional outbox and its relay, the
//! generic idempotent JetStream consumer, and protobuf request/reply with the typed error.
//!
//! The rules it implements (docs/architecture.md, "Messaging"): Postgres is the system of
//! record; an event row is written in the same transaction as the change it announces; the relay
//! publishes with `Nats-Msg-Id = event_id` and deletes the rows only after every PubAck; consumers
//! apply an event and record it in their inbox in one transaction, then ack.

pub mod budget;
pub mod consumer;
pub mod dead_letters;
pub mod events;
pub mod faults;
pub mod outbox;
pub mod rpc;
pub mod service;
pub mod store;
pub mod streams;
pub mod subjects;

pub use service::{Bus, RunError};
pub use subjects::Namespace;
