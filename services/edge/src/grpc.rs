//! gRPC for internal backends: `amba.affiliate.v1.Conversions` (PAT in `authorization`
//! metadata) and `grpc.health.v1`. Each call becomes the same request MCP makes; errors carry
//! the same `{code, message, status}` as the status details (JSON) and `amba-error-code`.
//!
//! A client stream is cut into chunks that go to attribution as batch requests, several in
//! flight at once, so a stream of thousands of reports costs a handful of round trips and its
//! reports share group commits. Each report is validated here first: a bad one gets its own
//! `INVALID_ARGUMENT` outcome and never travels with the others.
//!
//! Limits (documented in the README): a request message of at most [`MAX_REQUEST`] bytes, at
//! most [`MAX_STREAM_REPORTS`] reports per stream, [`MAX_CONCURRENT_STREAMS`] calls at once per
//! connection, [`REQUEST_TIMEOUT`] per call; the token of a stream is checked again for every
//! chunk (a revoked token stops the stream within the token cache's TTL).
//!
//! Per org (`rate_limit`): every call holds in-flight slots of its org while it runs (a stream as
//! many as it sends batch requests at once), and spends its budget — reports (each report of a
//! stream counts; those past the budget get their own `RATE_LIMITED` outcome and are not sent),
//! touchpoints, or decisions for clawbacks.

use crate::EdgeState;
use crate::rate_limit::{Budget, Slots};
use amba_core::{ApiError, ErrorCode};
use amba_proto::methods::attribution as methods;
use amba_proto::v1::conversions_server::{Conversions, ConversionsServer};
use amba_proto::wire as pb;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Reports per chunk of a stream (validated together, then sent in batch requests of at most
/// [`MAX_BATCH_BYTES`]).
const CHUNK: usize = 500;
/// Encoded bytes per batch request: well inside NATS's default 1 MiB `max_payload`.
const MAX_BATCH_BYTES: usize = 512 * 1024;
/// Batch requests in flight per stream (at most: a stream sends as many at once as it got
/// in-flight slots of its org).
const IN_FLIGHT: u32 = 8;
/// Largest request message: one report (valid ones are far smaller; larger values are
/// refused by field with INVALID_ARGUMENT up to this size, by size beyond it).
pub const MAX_REQUEST: usize = 256 * 1024;
/// Reports one `ReportConversions` stream may carry; its reply holds an outcome for each.
pub const MAX_STREAM_REPORTS: usize = 10_000;
/// Largest reply: a full stream's outcomes.
const MAX_REPLY: usize = 64 * 1024 * 1024;
/// Calls in flight at once on one connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// The longest a call may take, streams included.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: EdgeState,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<ConversionsServer<ConversionsApi>>().await;
    let api = ConversionsServer::new(ConversionsApi { state })
        .max_decoding_message_size(MAX_REQUEST)
        .max_encoding_message_size(MAX_REPLY);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .concurrency_limit_per_connection(MAX_CONCURRENT_STREAMS as usize)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .layer(crate::incoming_trace_layer())
        .add_service(health)
        .add_service(api)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.cancelled().await;
            health_reporter
                .set_not_serving::<ConversionsServer<ConversionsApi>>()
                .await;
        })
        .await
}

pub struct ConversionsApi {
    state: EdgeState,
}

impl ConversionsApi {
    async fn principal<T>(&self, request: &Request<T>) -> Result<pb::Principal, Status> {
        let (token, client) = credentials(request)?;
        self.state.tokens.verify(&token, client).await.map_err(|e| status(&e))
    }

    /// The caller, with one of its org's in-flight slots (held until the returned [`Slots`] is
    /// dropped) and one request charged to `budget`.
    async fn admit<T>(&self, request: &Request<T>, budget: Budget) -> Result<(pb::Principal, Slots), Status> {
        let caller = self.principal(request).await?;
        let slot = self.state.limits.enter(&caller.org_id, 1).map_err(|e| status(&e))?;
        self.state
            .limits
            .check_org(budget, &caller.org_id)
            .map_err(|e| status(&e))?;
        Ok((caller, slot))
    }

    async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: amba_proto::Method<Req, Resp>,
        request: &Req,
    ) -> Result<Resp, Status> {
        self.state.rpc.call(method, request).await.map_err(|e| status(&e))
    }
}

#[tonic::async_trait]
impl Conversions for ConversionsApi {
    async fn report_conversion(
        &self,
        request: Request<pb::ReportConversionRequest>,
    ) -> Result<Response<pb::ReportConversionReply>, Status> {
        let (caller, _slot) = self.admit(&request, Budget::Reports).await?;
        Ok(Response::new(
            self.state
                .reports
                .report("grpc", caller, request.into_inner())
                .await
                .map_err(|e| status(&e))?,
        ))
    }

    async fn report_conversions(
        &self,
        request: Request<Streaming<pb::ReportConversionRequest>>,
    ) -> Result<Response<pb::ReportConversionsReply>, Status> {
        let (token, client) = credentials(&request)?;
        let first_caller = self.state.tokens.verify(&token, client).await.map_err(|e| status(&e))?;
        // Held for the stream's life: as many slots as it sends batch requests at once.
        let slots = self
            .state
            .limits
            .enter(&first_caller.org_id, IN_FLIGHT)
            .map_err(|e| status(&e))?;
        let traceparent = amba_telemetry::current_traceparent();
        let mut seen = 0usize;
        let reports = request.into_inner().map(move |item| {
            seen += 1;
            if seen > MAX_STREAM_REPORTS {
                return Err(status(&ApiError::invalid(format!(
                    "a ReportConversions stream takes at most {MAX_STREAM_REPORTS} reports; send the rest on another \
                     stream (reports are idempotent, so resending is safe)"
                ))));
            }
            item
        });
        let batches = reports.try_chunks(CHUNK).map(|chunk| {
            let (token, traceparent) = (&token, &traceparent);
            let first_caller = &first_caller;
            async move {
                let reports = chunk.map_err(|e| e.1)?;
                // The token again (from cache): a revoked token stops the stream.
                let caller = self.state.tokens.verify(token, client).await.map_err(|e| status(&e))?;
                if caller.org_id != first_caller.org_id {
                    return Err(status(&ApiError::unauthenticated("the stream's token changed owner")));
                }
                self.report_chunk(caller, traceparent, reports).await
            }
        });
        let mut outcomes = Vec::new();
        let mut in_order = batches.buffered(usize::try_from(slots.count()).unwrap_or(1));
        while let Some(batch) = in_order.next().await {
            outcomes.extend(batch?);
        }
        drop(in_order);
        drop(slots);
        let retry_after = outcomes.iter().filter_map(rate_limited_for).max();
        let mut response = Response::new(pb::ReportConversionsReply { outcomes });
        if let Some(seconds) = retry_after
            && let Ok(value) = seconds.to_string().parse()
        {
            response.metadata_mut().insert("retry-after", value);
        }
        Ok(response)
    }

    async fn record_touchpoint(
        &self,
        request: Request<pb::RecordTouchpointRequest>,
    ) -> Result<Response<pb::RecordTouchpointReply>, Status> {
        let (_caller, _slot) = self.admit(&request, Budget::Touchpoints).await?;
        Ok(Response::new(
            crate::clicks::record(&self.state, request.into_inner())
                .await
                .map_err(|e| status(&e))?,
        ))
    }

    async fn clawback_conversion(
        &self,
        request: Request<pb::ClawbackRequest>,
    ) -> Result<Response<pb::ClawbackReply>, Status> {
        let (caller, _slot) = self.admit(&request, Budget::Decisions).await?;
        let clawback = pb::AuthenticatedClawback {
            caller: Some(caller),
            clawback: Some(amba_proto::validate::clawback(&request.into_inner()).map_err(|e| status(&e))?),
        };
        Ok(Response::new(self.call(methods::CLAWBACK, &clawback).await?))
    }
}

impl ConversionsApi {
    /// Validates one chunk of a stream, sends the valid reports as one batch request, and puts
    /// the refusals back in their places.
    async fn report_chunk(
        &self,
        caller: pb::Principal,
        traceparent: &str,
        reports: Vec<pb::ReportConversionRequest>,
    ) -> Result<Vec<pb::ReportOutcome>, Status> {
        let now = chrono::Utc::now();
        let mut outcomes: Vec<Option<pb::ReportOutcome>> = Vec::with_capacity(reports.len());
        let mut valid = Vec::with_capacity(reports.len());
        let checked: Vec<_> = reports
            .iter()
            .map(|report| amba_proto::validate::report(report, now))
            .collect();
        // Every valid report counts against the org's budget; one past it is refused on its own.
        let mut admitted = self
            .state
            .limits
            .check_org_each(
                Budget::Reports,
                &caller.org_id,
                checked.iter().filter(|c| c.is_ok()).count(),
            )
            .into_iter();
        for checked in checked {
            let admitted = checked.and_then(|report| admitted.next().unwrap_or(Ok(())).map(|()| report));
            match admitted {
                Ok(report) => {
                    outcomes.push(None);
                    valid.push(pb::AuthenticatedReport {
                        caller: Some(caller.clone()),
                        report: Some(report),
                        traceparent: traceparent.to_owned(),
                    });
                }
                Err(err) => outcomes.push(Some(pb::ReportOutcome {
                    result: Some(pb::report_outcome::Result::Error(amba_bus::rpc::error_to_proto(&err))),
                })),
            }
        }
        // Batch requests sized in bytes (NATS `max_payload`), sent together.
        let mut requests: Vec<Vec<pb::AuthenticatedReport>> = Vec::new();
        let mut bytes = usize::MAX;
        for report in valid {
            let size = report.encoded_len();
            if bytes.saturating_add(size) > MAX_BATCH_BYTES {
                requests.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            if let Some(last) = requests.last_mut() {
                last.push(report);
            }
        }
        let replies = futures::future::join_all(requests.into_iter().map(|reports| async move {
            let count = reports.len();
            let reply = self.state.reports.send_batch(reports).await;
            let reply = reply.map_err(|err| {
                // The whole request failed (e.g. UNAVAILABLE): exactly what an operator alerts on.
                crate::batcher::count_reports("grpc_stream", err.code.as_str(), count as u64);
                status(&err)
            })?;
            if reply.outcomes.len() != count {
                return Err(status(&ApiError::internal()));
            }
            Ok(reply.outcomes)
        }))
        .await;
        let mut answers = replies
            .into_iter()
            .collect::<Result<Vec<_>, Status>>()?
            .into_iter()
            .flatten();
        let outcomes: Vec<pb::ReportOutcome> = outcomes
            .into_iter()
            .map(|o| o.or_else(|| answers.next()).unwrap_or_default())
            .collect();
        count_outcomes(&outcomes);
        Ok(outcomes)
    }
}

/// The bearer token of a call and the address it came from.
fn credentials<T>(request: &Request<T>) -> Result<(String, std::net::IpAddr), Status> {
    let token = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            status(&ApiError::unauthenticated(
                "send `authorization: Bearer <personal access token>` metadata",
            ))
        })?;
    let client = request
        .remote_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    Ok((token.to_owned(), client))
}

/// The `retry_after_seconds` of an outcome refused by the org's budget.
fn rate_limited_for(outcome: &pb::ReportOutcome) -> Option<u64> {
    match &outcome.result {
        Some(pb::report_outcome::Result::Error(err)) if err.code == ErrorCode::RateLimited.as_str() => {
            let details: serde_json::Value = serde_json::from_str(&err.details_json).ok()?;
            details.get("retry_after_seconds")?.as_u64()
        }
        _ => None,
    }
}

/// Stream outcomes into `amba_conversion_reports_total`, one counter update per distinct outcome.
fn count_outcomes(outcomes: &[pb::ReportOutcome]) {
    let mut counts: std::collections::HashMap<&'static str, u64> = std::collections::HashMap::new();
    for outcome in outcomes {
        let outcome = match &outcome.result {
            Some(pb::report_outcome::Result::Ok(ok)) => Ok(ok.duplicate),
            Some(pb::report_outcome::Result::Error(err)) => {
                Err(ErrorCode::parse(&err.code).unwrap_or(ErrorCode::Internal))
            }
            None => Err(ErrorCode::Internal),
        };
        *counts.entry(crate::batcher::outcome_label(outcome)).or_default() += 1;
    }
    for (label, n) in counts {
        crate::batcher::count_reports("grpc_stream", label, n);
    }
}

/// The gRPC status for a typed error: the code maps to the nearest gRPC code, the details hold
/// the same JSON body MCP and HTTP clients get.
pub fn status(err: &ApiError) -> Status {
    let code = match err.code {
        ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorCode::Forbidden => tonic::Code::PermissionDenied,
        ErrorCode::NotFound => tonic::Code::NotFound,
        ErrorCode::Conflict => tonic::Code::FailedPrecondition,
        ErrorCode::IdempotencyMismatch => tonic::Code::AlreadyExists,
        ErrorCode::RateLimited => tonic::Code::ResourceExhausted,
        ErrorCode::FundingRequired | ErrorCode::PayoutCapExceeded => tonic::Code::FailedPrecondition,
        ErrorCode::PayoutsNotEnabled | ErrorCode::Unavailable => tonic::Code::Unavailable,
        ErrorCode::Internal => tonic::Code::Internal,
    };
    let mut status = Status::with_details(code, err.message.clone(), err.to_body().to_string().into_bytes().into());
    if let Ok(value) = err.code.as_str().parse() {
        status.metadata_mut().insert("amba-error-code", value);
    }
    if let Some(seconds) = crate::rate_limit::retry_after(err)
        && let Ok(value) = seconds.to_string().parse()
    {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}
