//! gRPC for internal backends: `amba.affiliate.v1.Conversions` (PAT in `authorization`
//! metadata) and `grpc.health.v1`. Each call becomes the same request MCP makes; errors carry
//! the same `{code, message, status}` as the status details (JSON) and `amba-error-code`.
//!
//! A client stream is cut into chunks that go to attribution as batch requests, several in
//! flight at once, so a stream of thousands of reports costs a handful of round trips and its
//! reports share group commits.

use crate::EdgeState;
use amba_core::{ApiError, ErrorCode};
use amba_proto::methods::attribution as methods;
use amba_proto::v1 as pb;
use amba_proto::v1::conversions_server::{Conversions, ConversionsServer};
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Reports per batch request to attribution.
const CHUNK: usize = 500;
/// Batch requests in flight per stream.
const IN_FLIGHT: usize = 8;
/// Largest request or reply (a long stream's reply lists every outcome).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: EdgeState,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<ConversionsServer<ConversionsApi>>().await;
    let api = ConversionsServer::new(ConversionsApi { state })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
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
        self.state.tokens.verify(token).await.map_err(|e| status(&e))
    }

    async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Resp, Status> {
        self.state
            .rpc
            .call(methods::SERVICE, method, request)
            .await
            .map_err(|e| status(&e))
    }
}

#[tonic::async_trait]
impl Conversions for ConversionsApi {
    async fn report_conversion(
        &self,
        request: Request<pb::ReportConversionRequest>,
    ) -> Result<Response<pb::ReportConversionReply>, Status> {
        let caller = self.principal(&request).await?;
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
        let caller = self.principal(&request).await?;
        let traceparent = amba_telemetry::current_traceparent();
        let chunks = request.into_inner().map_ok(move |report| pb::AuthenticatedReport {
            caller: Some(caller.clone()),
            report: Some(report),
            traceparent: traceparent.clone(),
        });
        let batches = chunks.try_chunks(CHUNK).map(|chunk| async move {
            let reports = chunk.map_err(|e| e.1)?;
            let count = reports.len();
            let reply: Result<pb::ReportConversionsReply, ApiError> = self
                .state
                .rpc
                .call(
                    methods::SERVICE,
                    methods::REPORT_BATCH,
                    &pb::ReportBatchRequest { reports },
                )
                .await;
            let reply = reply.map_err(|err| {
                // The whole chunk failed (e.g. UNAVAILABLE): exactly what an operator alerts on.
                crate::batcher::count_reports("grpc_stream", err.code.as_str(), count as u64);
                status(&err)
            })?;
            if reply.outcomes.len() != count {
                return Err(status(&ApiError::internal()));
            }
            count_outcomes(&reply.outcomes);
            Ok::<_, Status>(reply.outcomes)
        });
        let mut outcomes = Vec::new();
        let mut in_order = batches.buffered(IN_FLIGHT);
        while let Some(batch) = in_order.next().await {
            outcomes.extend(batch?);
        }
        Ok(Response::new(pb::ReportConversionsReply { outcomes }))
    }

    async fn record_touchpoint(
        &self,
        request: Request<pb::RecordTouchpointRequest>,
    ) -> Result<Response<pb::RecordTouchpointReply>, Status> {
        self.principal(&request).await?;
        Ok(Response::new(
            self.call(methods::RECORD_TOUCHPOINT, &request.into_inner()).await?,
        ))
    }

    async fn clawback_conversion(
        &self,
        request: Request<pb::ClawbackRequest>,
    ) -> Result<Response<pb::ClawbackReply>, Status> {
        let caller = self.principal(&request).await?;
        let clawback = pb::AuthenticatedClawback {
            caller: Some(caller),
            clawback: Some(request.into_inner()),
        };
        Ok(Response::new(self.call(methods::CLAWBACK, &clawback).await?))
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
        ErrorCode::PayoutsNotEnabled | ErrorCode::Unavailable => tonic::Code::Unavailable,
        ErrorCode::Internal => tonic::Code::Internal,
    };
    let mut status = Status::with_details(code, err.message.clone(), err.to_body().to_string().into_bytes().into());
    if let Ok(value) = err.code.as_str().parse() {
        status.metadata_mut().insert("amba-error-code", value);
    }
    status
}
