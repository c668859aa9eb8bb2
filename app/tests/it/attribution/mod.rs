//! Attribution through its public surfaces: MCP for owners and apps, gRPC for backends,
//! HTTP for clicks and affiliate links.

use crate::support::{Org, active_program, enroll, org, text};
use crate::system::TestSystem;
use amba_proto::v1::conversions_client::ConversionsClient;
use amba_proto::wire as pb;
use amba_testkit::eventually;
use anyhow::Context;
use chrono::{Duration, Utc};
use serde_json::{Value, json};
use std::collections::HashMap;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

mod explain;
mod fraud;
mod fx;
mod observability;
mod owner_tools;
mod policy;
mod reports;
mod touchpoints;

pub async fn grpc(sys: &TestSystem) -> anyhow::Result<ConversionsClient<Channel>> {
    let channel = Channel::from_shared(sys.grpc_url())?.connect().await?;
    Ok(ConversionsClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

pub fn authed<T>(token: &str, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", MetadataValue::try_from(format!("Bearer {token}"))?);
    Ok(request)
}

fn report(program_id: &str, external_id: &str, amount_minor: i64, code: &str) -> pb::ReportConversionRequest {
    pb::ReportConversionRequest {
        program_id: program_id.to_owned(),
        project_id: "web".into(),
        external_id: external_id.to_owned(),
        amount_minor,
        currency: "USD".into(),
        code: code.to_owned(),
        ..Default::default()
    }
}

fn ago(d: Duration) -> String {
    (Utc::now() - d).to_rfc3339()
}

/// Waits until attribution's read model (built from enrollment's events) holds `expected`.
async fn read_model_shows(sys: &TestSystem, sql: &'static str, key: &str, expected: &str) -> anyhow::Result<()> {
    let pool = sys.service_pool("attribution").await?;
    eventually(std::time::Duration::from_secs(10), sql, || {
        let (pool, key) = (pool.clone(), key.to_owned());
        async move {
            let status: Option<String> = sqlx::query_scalar(sql).bind(&key).fetch_optional(&pool).await?;
            Ok(status.filter(|s| s == expected).map(|_| ()))
        }
    })
    .await?;
    pool.close().await;
    Ok(())
}

/// Waits until attribution's read model has an active enrollment and its code. Reports resolve
/// codes from that read model, built from events that arrive apart (the code is active from the
/// invite on; the enrollment once the accept's event arrived), so a test waits for both.
async fn attribution_knows(sys: &TestSystem, enrollment: &Value) -> anyhow::Result<()> {
    read_model_shows(
        sys,
        "SELECT status FROM codes_view WHERE code = $1",
        text(&enrollment["code"]),
        "active",
    )
    .await?;
    read_model_shows(
        sys,
        "SELECT status FROM enrollments_view WHERE enrollment_id = $1",
        text(&enrollment["enrollment_id"]),
        "active",
    )
    .await
}

struct Setup {
    sys: TestSystem,
    owner: Org,
    ann: Org,
    program: String,
    ann_enrollment: Value,
}

async fn setup(program_settings: Value) -> anyhow::Result<Setup> {
    setup_with(program_settings, &[]).await
}

async fn setup_with(program_settings: Value, vars: &[(&str, &str)]) -> anyhow::Result<Setup> {
    let sys = TestSystem::start_with(vars).await?;
    let owner = org(&sys, "Owner").await?;
    let ann = org(&sys, "Ann").await?;
    let program = active_program(&owner, program_settings).await?;
    let ann_enrollment = enroll(&owner, &ann, &program, None).await?;
    attribution_knows(&sys, &ann_enrollment).await?;
    Ok(Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    })
}

/// An authenticated gRPC request in the caller's trace (`traceparent` metadata).
fn in_trace<T>(token: &str, trace_id: &str, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = authed(token, message)?;
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    request
        .metadata_mut()
        .insert("traceparent", MetadataValue::try_from(traceparent)?);
    Ok(request)
}

/// The `traceparent` header of each conversion event on JetStream, by external id.
async fn event_traces(sys: &TestSystem, expected: usize) -> anyhow::Result<HashMap<String, String>> {
    let stream = sys.bus.js.get_stream(sys.bus.ns.events_stream("attribution")).await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await?;
    let mut batch = consumer
        .fetch()
        .max_messages(expected)
        .expires(std::time::Duration::from_secs(2))
        .messages()
        .await?;
    let mut traces = HashMap::new();
    while let Some(message) = futures::StreamExt::next(&mut batch).await {
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        let changed = <pb::ConversionChanged as prost::Message>::decode(message.payload.as_ref())?;
        let header = message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        let meta = changed.meta.unwrap_or_default();
        assert_eq!(
            meta.traceparent, header,
            "the event body and its header name the same trace"
        );
        traces.insert(changed.conversion.unwrap_or_default().external_id, header);
    }
    Ok(traces)
}

/// One sample of `/metrics` (0 when the series is absent), e.g.
/// `amba_conversion_reports_total{surface="grpc",outcome="recorded"}`.
pub(crate) fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub(crate) async fn scrape(sys: &TestSystem) -> anyhow::Result<String> {
    let url = sys.metrics_url().context("the test system serves metrics")?;
    let response = reqwest::get(url).await?;
    anyhow::ensure!(response.status() == 200, "GET /metrics: {}", response.status());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(content_type.starts_with("text/plain"), "content-type {content_type}");
    Ok(response.text().await?)
}

/// A conversion report's arguments: `extra` over a web sale of `amount_minor` USD.
fn sale(program: &str, external_id: &str, amount_minor: i64, extra: Value) -> Value {
    let mut args = json!({"program_id": program, "project_id": "web", "external_id": external_id, "amount_minor": amount_minor, "currency": "USD"});
    if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
        a.extend(e.clone());
    }
    args
}

/// The affiliate's held commission over all its programs, once it is `expected` (the ledger
/// books from events; under a loaded test machine that can take a while).
async fn held_becomes(affiliate: &Org, expected: i64) -> anyhow::Result<()> {
    let last = std::sync::Mutex::new(Value::Null);
    let waited = eventually(
        std::time::Duration::from_secs(30),
        "the ledger's held balance",
        || async {
            let balance = affiliate.mcp.ok("amba_affiliate_my_balance_get", json!({})).await?;
            let reached = balance["held_minor"] == expected;
            if let Ok(mut last) = last.lock() {
                *last = balance;
            }
            Ok(reached.then_some(()))
        },
    )
    .await;
    waited.with_context(|| {
        format!(
            "held_minor never became {expected}; last balance {:?}",
            last.lock().map(|l| l.to_string())
        )
    })
}
