//! Coalesces single conversion reports (gRPC unary, MCP) into batch requests to attribution.
//!
//! Under load, many callers wait at once: instead of one NATS round trip each, whatever is queued
//! when a batch leaves (up to [`MAX_BATCH`]) travels as one `report_batch` request, and the
//! outcomes are handed back to each caller. Nothing waits to fill a batch: an idle edge sends a
//! lone report at once. A stream's chunks leave from here too ([`ReportBatcher::send_batch`]), so
//! every report batch to attribution waits for it as long as [`REPORT_WAIT`].

use amba_bus::rpc::{RpcClient, error_from_proto};
use amba_core::{ApiError, ErrorCode};
use amba_proto::methods::attribution as methods;
use amba_proto::wire as pb;
use prost::Message;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

const MAX_BATCH: usize = 256;
/// Encoded bytes per batch request: well inside NATS's default 1 MiB `max_payload`, whatever
/// mix of callers' reports is queued.
const MAX_BATCH_BYTES: usize = 512 * 1024;
/// Batch requests in flight at once over NATS (in one process with attribution, a batch costs
/// no round trip and is sent at once: the writer coalesces what waits for it).
const IN_FLIGHT: usize = 4;

type Reply = Result<pb::ReportConversionReply, ApiError>;

/// A caller's report waiting for a batch, with when it was queued.
type Queued = (pb::AuthenticatedReport, oneshot::Sender<Reply>, std::time::Instant);

/// How long a batch request waits for attribution in the same process: as long as the caller's
/// gRPC call may ([`crate::grpc::REQUEST_TIMEOUT`]). A burst queues reports in attribution's
/// writers, and that queue is the backpressure; a report given up on there is still recorded, so
/// failing it early would only invite a retry that adds to the queue. Over NATS the usual
/// [`amba_bus::rpc::ANSWER_WITHIN`] stays: there silence can mean a replica died.
pub const REPORT_WAIT: std::time::Duration = crate::grpc::REQUEST_TIMEOUT;

#[derive(Clone)]
pub struct ReportBatcher {
    queue: mpsc::Sender<Queued>,
    rpc: RpcClient,
}

impl ReportBatcher {
    /// Starts the batching task; it ends when the last handle is dropped.
    pub fn start(rpc: RpcClient) -> ReportBatcher {
        let rpc = rpc.with_local_timeout(REPORT_WAIT);
        let (queue, receiver) = mpsc::channel(8 * MAX_BATCH);
        tokio::spawn(run(receiver, rpc.clone()));
        ReportBatcher { queue, rpc }
    }

    /// Sends already validated and admitted reports as one batch request (a chunk of a stream).
    pub async fn send_batch(
        &self,
        reports: Vec<pb::AuthenticatedReport>,
    ) -> Result<pb::ReportConversionsReply, ApiError> {
        send(&self.rpc, reports).await
    }

    /// Reports for `caller` (the principal the edge authenticated), arriving over `surface`.
    pub async fn report(
        &self,
        surface: &'static str,
        caller: pb::Principal,
        report: pb::ReportConversionRequest,
    ) -> Reply {
        let started = std::time::Instant::now();
        let reply = self.submit(caller, report).await;
        let outcome = reply.as_ref().map(|r| r.duplicate).map_err(|e| e.code);
        count_reports(surface, outcome_label(outcome), 1);
        amba_telemetry::metrics::histogram!("amba_conversion_report_seconds", "surface" => surface)
            .record(started.elapsed().as_secs_f64());
        reply
    }

    /// Validates before queueing, so a bad report is refused alone and never joins a batch.
    async fn submit(&self, caller: pb::Principal, report: pb::ReportConversionRequest) -> Reply {
        let report = amba_proto::validate::report(&report, chrono::Utc::now())?;
        let (reply, answer) = oneshot::channel();
        let closed = || ApiError::unavailable("the edge is shutting down");
        let item = pb::AuthenticatedReport {
            caller: Some(caller),
            report: Some(report),
            traceparent: amba_telemetry::current_traceparent(),
        };
        self.queue
            .send((item, reply, std::time::Instant::now()))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

/// `recorded`, `duplicate`, or the error code: bounded label values. Takes whether the report
/// was a duplicate, or the code it failed with.
pub fn outcome_label(outcome: Result<bool, ErrorCode>) -> &'static str {
    match outcome {
        Ok(true) => "duplicate",
        Ok(false) => "recorded",
        Err(code) => code.as_str(),
    }
}

pub fn count_reports(surface: &'static str, outcome: &'static str, n: u64) {
    amba_telemetry::metrics::counter!("amba_conversion_reports_total", "surface" => surface, "outcome" => outcome)
        .increment(n);
}

/// One `report_batch` request to attribution.
async fn send(rpc: &RpcClient, reports: Vec<pb::AuthenticatedReport>) -> Result<pb::ReportConversionsReply, ApiError> {
    rpc.call(methods::REPORT_BATCH, &pb::ReportBatchRequest { reports })
        .await
}

async fn run(mut receiver: mpsc::Receiver<Queued>, rpc: RpcClient) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    // From a caller's report queued to its batch leaving: the price of coalescing.
    let batch_wait = amba_telemetry::metrics::histogram!("amba_edge_batch_wait_seconds");
    while let Some(first) = receiver.recv().await {
        let permit = if rpc.calls_locally(methods::SERVICE) {
            None
        } else {
            match permits.clone().acquire_owned().await {
                Ok(permit) => Some(permit),
                Err(_) => break,
            }
        };
        // Taken after the permit: while all batches are in flight, reports keep queueing.
        let mut bytes = first.0.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES - amba_proto::validate::MAX_REPORT_BYTES - 1024 {
            match receiver.try_recv() {
                Ok(item) => {
                    bytes += item.0.encoded_len();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        let rpc = rpc.clone();
        let (reports, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|(report, reply, queued)| {
                batch_wait.record(queued.elapsed().as_secs_f64());
                (report, reply)
            })
            .unzip();
        tokio::spawn(async move {
            let count = reports.len();
            let result = send(&rpc, reports).await;
            match result {
                Ok(reply) if reply.outcomes.len() == count => {
                    for (reply, outcome) in replies.into_iter().zip(reply.outcomes) {
                        let answer = match outcome.result {
                            Some(pb::report_outcome::Result::Ok(ok)) => Ok(ok),
                            Some(pb::report_outcome::Result::Error(err)) => Err(error_from_proto(err)),
                            None => Err(ApiError::internal()),
                        };
                        let _ = reply.send(answer);
                    }
                }
                Ok(_) => replies
                    .into_iter()
                    .for_each(|r| drop(r.send(Err(ApiError::internal())))),
                Err(err) => replies.into_iter().for_each(|r| drop(r.send(Err(err.clone())))),
            }
            drop(permit);
        });
    }
}
