//! Tracing for every process: one subscriber (env filter, text or JSON), OTLP span export when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and W3C trace context taken from incoming requests and
//! carried across NATS headers.

pub mod metrics;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The W3C header name; the same key is used in NATS headers, gRPC metadata and MCP `_meta`.
pub const TRACEPARENT: &str = "traceparent";

/// The log filter when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info,sqlx=warn,async_nats=warn,rmcp=warn,tower_http=warn,h2=warn,hyper=warn,tonic=warn";

/// Flushes exported spans when dropped (at the end of `main`).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("telemetry: flushing spans failed: {err}");
        }
    }
}

/// Installs the global subscriber. `otlp_endpoint` (from `OTEL_EXPORTER_OTLP_ENDPOINT`) turns on
/// span export; `json` switches log lines to JSON for log shippers.
pub fn init(service: &str, otlp_endpoint: Option<&str>, json: bool) -> anyhow::Result<TelemetryGuard> {
    metrics::prometheus();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // `RUST_LOG` wins; otherwise INFO, with the libraries' per-request and per-connection lines
    // (rmcp's session and request INFO lines among them) at WARN.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));

    // Spans carry OpenTelemetry context even when nothing is exported, so trace context still
    // travels from callers through NATS to every service and event.
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            builder = builder.with_batch_exporter(exporter);
        }
        // Nothing exports: keep the ids flowing but record nothing (recording is most of a
        // span's cost, and the hot path has one per request).
        None => builder = builder.with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOff),
    }
    let provider = builder.build();
    let otel_layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service.to_owned()));

    // `RUST_LOG` filters log lines only: spans (and so trace context) stay at INFO whatever the
    // log level, or a quiet log setting would cut every trace at the edge.
    let registry = tracing_subscriber::registry().with(otel_layer.with_filter(LevelFilter::INFO));
    let result = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_ansi(false)
                    .with_filter(filter),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_ansi(colors()).with_filter(filter))
            .try_init()
    };
    if let Err(err) = result {
        // Tests and the all-in-one process may call init more than once; the first one wins.
        tracing::debug!("tracing subscriber already installed: {err}");
    }
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// ANSI colors in text log lines only on a terminal (log lines go to stdout), and never with a
/// non-empty `NO_COLOR` (<https://no-color.org/>): files, pipes and log collectors get plain text.
fn colors() -> bool {
    use std::io::IsTerminal as _;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The current span's W3C `traceparent`, or an empty string when there is no sampled trace.
pub fn current_traceparent() -> String {
    let mut carrier = MapCarrier::default();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier.traceparent.unwrap_or_default()
}

/// A span for work arriving from outside (an HTTP or gRPC request, an MCP tool call) that
/// continues the caller's trace when it sent a W3C `traceparent`.
pub fn incoming_span(surface: &'static str, target: &str, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!("incoming", surface, target = %target);
    if let Some(traceparent) = traceparent {
        set_remote_parent(&span, traceparent);
    }
    span
}

/// Makes `span` a child of the trace named by `traceparent` (ignored when empty or malformed).
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = MapCarrier {
        traceparent: Some(traceparent.to_owned()),
    };
    let cx = TraceContextPropagator::new().extract(&carrier);
    // Only fails when the span is disabled; then there is nothing to link.
    let _ = span.set_parent(cx);
}

/// Adds the current `traceparent` to NATS headers.
pub fn inject_nats_headers(headers: &mut async_nats::HeaderMap) {
    let traceparent = current_traceparent();
    if !traceparent.is_empty() {
        headers.insert(TRACEPARENT, traceparent.as_str());
    }
}

/// The `traceparent` carried by NATS headers, if any.
pub fn traceparent_from_nats(headers: Option<&async_nats::HeaderMap>) -> String {
    headers
        .and_then(|h| h.get(TRACEPARENT))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

#[derive(Default)]
struct MapCarrier {
    traceparent: Option<String>,
}

impl Injector for MapCarrier {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.traceparent = Some(value);
        }
    }
}

impl Extractor for MapCarrier {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.traceparent.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}
