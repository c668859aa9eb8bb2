//! The JetStream streams, declared in one place. `amba migrate` creates or updates them all (a
//! deployment's services may only look streams up); a process declares at start only what it
//! uses and finds missing or different (`amba dev`, tests, a NATS without users).

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
    // id; where orgs call from, Nats-Msg-Id = caller:<org, address, hour>) and by `amba tick`
    // (settlement ticks, Nats-Msg-Id = tick:<day>).
    ("edge", &["stripe", "settlement", "caller"]),
];

/// How long a stream remembers `Nats-Msg-Id`s. Consumers dedupe beyond it with their inbox.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// `owner`'s event stream with `replicas` copies (1, or 3 on a three-server cluster). File
/// storage: these are money facts.
fn stream_config(ns: &Namespace, owner: &str, domains: &[&str], replicas: usize) -> stream::Config {
    stream::Config {
        name: ns.events_stream(owner),
        subjects: domains.iter().map(|d| ns.event_domain(d)).collect(),
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: Duration::from_secs(30 * 24 * 3600),
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// Creates (or updates) every event stream of the namespace (`amba migrate`, tests).
pub async fn ensure_event_streams(
    js: &jetstream::Context,
    ns: &Namespace,
    replicas: usize,
) -> Result<(), async_nats::Error> {
    for (owner, domains) in EVENT_STREAMS {
        js.create_or_update_stream(stream_config(ns, owner, domains, replicas))
            .await?;
    }
    Ok(())
}

/// Makes sure the event streams of `owners` are as declared, asking to create or update one only
/// when it is missing or different: each is looked up first (`$JS.API.STREAM.INFO.<stream>`), so
/// a service whose NATS user may only look its streams up starts cleanly where `amba migrate`
/// declared them. Owners without a stream are ignored.
pub async fn ensure_streams(
    js: &jetstream::Context,
    ns: &Namespace,
    owners: &[&str],
    replicas: usize,
) -> Result<(), async_nats::Error> {
    for (owner, domains) in EVENT_STREAMS.iter().filter(|(owner, _)| owners.contains(owner)) {
        let wanted = stream_config(ns, owner, domains, replicas);
        if let Ok(existing) = js.get_stream(&wanted.name).await
            && same_stream(&existing.cached_info().config, &wanted)
        {
            continue;
        }
        js.create_or_update_stream(wanted).await?;
    }
    Ok(())
}

/// The owner of the stream named `stream` in `ns`, if it is one of [`EVENT_STREAMS`].
pub fn owner_of(ns: &Namespace, stream: &str) -> Option<&'static str> {
    EVENT_STREAMS
        .iter()
        .map(|(owner, _)| *owner)
        .find(|owner| ns.events_stream(owner) == stream)
}

/// Whether a stream as the server has it is the one declared (what [`stream_config`] sets; the
/// server fills in the rest).
fn same_stream(have: &stream::Config, want: &stream::Config) -> bool {
    have.subjects == want.subjects
        && have.storage == want.storage
        && have.retention == want.retention
        && have.duplicate_window == want.duplicate_window
        && have.max_age == want.max_age
        && have.num_replicas == want.num_replicas
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
