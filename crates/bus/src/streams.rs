//! The JetStream streams, declared in one place and created idempotently at start-up.

use crate::Namespace;
use async_nats::jetstream::{self, stream};
use std::time::Duration;

/// Event domains and the service that publishes them; one stream per publishing service.
pub const EVENT_STREAMS: &[(&str, &[&str])] = &[
    ("enrollment", &["program", "enrollment", "code", "identity"]),
    ("attribution", &["touchpoint", "conversion"]),
    ("commission", &["commission", "balance"]),
    ("payout", &["payout"]),
    ("notification", &["notification"]),
    // Facts from outside, published by the edge (Stripe webhooks, Nats-Msg-Id = the Stripe event
    // id) and by `amba tick` (settlement ticks, Nats-Msg-Id = tick:<day>).
    ("edge", &["stripe", "settlement"]),
];

/// How long a stream remembers `Nats-Msg-Id`s. Consumers dedupe beyond it with their inbox.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Creates (or updates) every event stream of the namespace with `replicas` copies (1, or 3 on a
/// three-server cluster). File storage: these are money facts.
pub async fn ensure_event_streams(
    js: &jetstream::Context,
    ns: &Namespace,
    replicas: usize,
) -> Result<(), async_nats::Error> {
    for (owner, domains) in EVENT_STREAMS {
        let config = stream::Config {
            name: ns.events_stream(owner),
            subjects: domains.iter().map(|d| ns.event_domain(d)).collect(),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: DUPLICATE_WINDOW,
            max_age: Duration::from_secs(30 * 24 * 3600),
            num_replicas: replicas.max(1),
            ..Default::default()
        };
        js.create_or_update_stream(config).await?;
    }
    Ok(())
}

/// Removes every stream of the namespace (tests clean up after themselves with this). A stream
/// that does not exist is fine; any other failure is reported.
pub async fn delete_event_streams(js: &jetstream::Context, ns: &Namespace) -> Result<(), async_nats::Error> {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::DeleteStreamErrorKind;
    for (owner, _) in EVENT_STREAMS {
        match js.delete_stream(ns.events_stream(owner)).await {
            Ok(_) => {}
            Err(err) if matches!(err.kind(), DeleteStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
                {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}
