//! Request/reply between services over core NATS, protobuf in and out.
//!
//! Every reply is a `Reply { ok | error }`: the encoded response or the typed error, so a caller
//! gets exactly the `{code, message, status}` the service produced. Replicas of a service share a
//! queue group, so each request is answered once.

use crate::Namespace;
use amba_core::{ApiError, ErrorCode};
use amba_proto::Method;
use amba_proto::wire::{self as pb, reply};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use prost::Message;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub fn error_to_proto(err: &ApiError) -> pb::Error {
    pb::Error {
        code: err.code.as_str().to_owned(),
        message: err.message.clone(),
        status: u32::from(err.status),
        details_json: if err.details.is_null() {
            String::new()
        } else {
            err.details.to_string()
        },
    }
}

pub fn error_from_proto(err: pb::Error) -> ApiError {
    let code = ErrorCode::parse(&err.code).unwrap_or(ErrorCode::Internal);
    let details = serde_json::from_str(&err.details_json).unwrap_or(serde_json::Value::Null);
    ApiError::new(code, err.message).with_details(details)
}

/// How long a call waits for its answer: over NATS, after this a service that took the request
/// and went silent (a replica killed mid-request) counts as gone, and the caller may retry.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Calls services. Cheap to clone.
#[derive(Clone)]
pub struct RpcClient {
    nats: async_nats::Client,
    ns: Namespace,
    local_timeout: Duration,
    local: bool,
}

impl RpcClient {
    pub fn new(nats: async_nats::Client, ns: Namespace) -> Self {
        RpcClient {
            nats,
            ns,
            local_timeout: ANSWER_WITHIN,
            local: false,
        }
    }

    /// How long a call served in this process may wait ([`ANSWER_WITHIN`] by default). Here a
    /// slow answer is a queue, never a lost service (no replica can vanish mid-request; a handler
    /// that panics fails its call at once), so work that queues behind a burst may wait as long
    /// as its own caller does.
    pub fn with_local_timeout(mut self, timeout: Duration) -> Self {
        self.local_timeout = timeout;
        self
    }

    /// Calls a service served by this very process directly, without NATS: the same encoded
    /// request, handler, concurrency bound and reply, minus two trips through the NATS server
    /// (`amba dev`, or `amba serve` of several services). Services elsewhere are called over NATS.
    pub fn preferring_local(mut self) -> Self {
        self.local = true;
        self
    }

    /// Whether calls to `service` stay in this process (see [`RpcClient::preferring_local`]).
    pub fn calls_locally(&self, service: &str) -> bool {
        self.local && local_server(&self.ns.rpc(service, "")).is_some()
    }

    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// Whether `service` answers at all (every [`RpcServer`] serves `ping`).
    pub async fn ping(&self, service: &str) -> Result<(), ApiError> {
        self.call_named::<pb::Ping, pb::Ping>(service, PING, &pb::Ping {})
            .await
            .map(|_| ())
    }

    /// Calls `method` (`amba_proto::methods::<service>::<NAME>`) with `request`; the reply is the
    /// method's own reply type.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        method: Method<Req, Resp>,
        request: &Req,
    ) -> Result<Resp, ApiError> {
        self.call_named(method.service, method.name, request).await
    }

    /// Sends `request` to `<ns>.rpc.<service>.<method>` and decodes the reply.
    async fn call_named<Req: Message, Resp: Message + Default>(
        &self,
        service: &str,
        method: &str,
        request: &Req,
    ) -> Result<Resp, ApiError> {
        if self.local
            && let Some(server) = local_server(&self.ns.rpc(service, ""))
        {
            return self.call_local(server, service, method, request).await;
        }
        let subject = self.ns.rpc(service, method);
        let mut headers = async_nats::HeaderMap::new();
        amba_telemetry::inject_nats_headers(&mut headers);
        // Bounded by ANSWER_WITHIN below alone, not also by the NATS client's own request timeout.
        let send = self.nats.send_request(
            subject,
            async_nats::Request::new()
                .headers(headers)
                .payload(request.encode_to_vec().into())
                .timeout(None),
        );
        let started = std::time::Instant::now();
        let answered = tokio::time::timeout(ANSWER_WITHIN, send).await;
        // The round trip as the caller sees it: NATS both ways, the server's queue and handler.
        amba_telemetry::metrics::histogram!("amba_rpc_client_seconds", "service" => service.to_owned(), "method" => method.to_owned())
            .record(started.elapsed().as_secs_f64());
        let message = match answered {
            Err(_) => {
                return Err(ApiError::unavailable(format!("{service} did not answer in time")));
            }
            Ok(Err(err)) if err.kind() == async_nats::RequestErrorKind::NoResponders => {
                return Err(ApiError::unavailable(format!("{service} is not running")));
            }
            Ok(Err(err)) => {
                return Err(ApiError::unavailable(format!("{service} request failed: {err}")));
            }
            Ok(Ok(message)) => message,
        };
        let reply = pb::Reply::decode(message.payload).map_err(|err| {
            tracing::error!(%service, %method, error = %err, "undecodable reply");
            ApiError::internal()
        })?;
        match reply.result {
            Some(reply::Result::Ok(bytes)) => Resp::decode(bytes.as_slice()).map_err(|err| {
                tracing::error!(%service, %method, error = %err, "undecodable response");
                ApiError::internal()
            }),
            Some(reply::Result::Error(err)) => Err(error_from_proto(err)),
            None => Err(ApiError::internal()),
        }
    }
}

impl RpcClient {
    async fn call_local<Req: Message, Resp: Message + Default>(
        &self,
        server: LocalServer,
        service: &str,
        method: &str,
        request: &Req,
    ) -> Result<Resp, ApiError> {
        let started = std::time::Instant::now();
        let payload = Bytes::from(request.encode_to_vec());
        let method_name = method.to_owned();
        // A task of its own, as over NATS: a handler that panicked fails this call, not the caller.
        let handled = tokio::spawn(
            async move {
                let Ok(_permit) = server.permits.acquire().await else {
                    return Err(ApiError::unavailable("the service is shutting down"));
                };
                server.handle(&method_name, payload).await
            }
            .in_current_span(),
        );
        let answered = tokio::time::timeout(self.local_timeout, handled).await;
        amba_telemetry::metrics::histogram!("amba_rpc_client_seconds", "service" => service.to_owned(), "method" => method.to_owned())
            .record(started.elapsed().as_secs_f64());
        let bytes = match answered {
            Err(_) => return Err(ApiError::unavailable(format!("{service} did not answer in time"))),
            Ok(Err(err)) => {
                tracing::error!(%service, %method, error = %err, "request handler failed");
                return Err(ApiError::internal());
            }
            Ok(Ok(result)) => result?,
        };
        Resp::decode(bytes.as_slice()).map_err(|err| {
            tracing::error!(%service, %method, error = %err, "undecodable response");
            ApiError::internal()
        })
    }
}

/// The servers running in this process, by subject prefix (`<ns>.rpc.<service>.`), for
/// [`RpcClient::preferring_local`]; several of one prefix (test systems sharing a namespace)
/// are kept apart by their registration id.
static LOCAL_SERVERS: std::sync::LazyLock<std::sync::RwLock<LocalServers>> = std::sync::LazyLock::new(Default::default);

/// Registration id and server, by subject prefix.
type LocalServers = HashMap<String, Vec<(u64, LocalServer)>>;

/// A server's routes and in-flight bound, shared by its NATS subscription and local callers.
#[derive(Clone)]
struct LocalServer {
    service: &'static str,
    routes: Arc<HashMap<&'static str, Route>>,
    permits: Arc<Semaphore>,
}

impl LocalServer {
    /// Runs `method`'s handler on `payload`, with the server's metrics and span.
    async fn handle(&self, method: &str, payload: Bytes) -> Result<Vec<u8>, ApiError> {
        let service = self.service;
        let Some(route) = self.routes.get(method).cloned() else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("unknown method {service}.{method}"),
            ));
        };
        let span = tracing::info_span!("rpc", %service, %method);
        let started = std::time::Instant::now();
        let result = route(payload).instrument(span).await;
        amba_telemetry::metrics::histogram!("amba_rpc_server_seconds", "service" => service, "method" => method.to_owned())
            .record(started.elapsed().as_secs_f64());
        if let Err(err) = &result
            && err.code == ErrorCode::Internal
        {
            tracing::error!(error = %err, "request failed");
        }
        result
    }
}

fn local_server(prefix: &str) -> Option<LocalServer> {
    let servers = LOCAL_SERVERS.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    servers
        .get(prefix)
        .and_then(|all| all.first())
        .map(|(_, server)| server.clone())
}

/// Registers `server` under `prefix` until the returned guard is dropped.
fn register_local(prefix: String, server: LocalServer) -> LocalRegistration {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut servers = LOCAL_SERVERS.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    servers.entry(prefix.clone()).or_default().push((id, server));
    LocalRegistration { prefix, id }
}

/// Takes a server out of [`LOCAL_SERVERS`] when its `serve` ends.
struct LocalRegistration {
    prefix: String,
    id: u64,
}

impl Drop for LocalRegistration {
    fn drop(&mut self) {
        let mut servers = LOCAL_SERVERS.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(all) = servers.get_mut(&self.prefix) {
            all.retain(|(id, _)| *id != self.id);
            if all.is_empty() {
                servers.remove(&self.prefix);
            }
        }
    }
}

/// The caller's principal, as the edge passed it; requests without one never reach a handler.
pub fn caller(principal: Option<pb::Principal>) -> Result<pb::Principal, ApiError> {
    principal
        .filter(|p| !p.org_id.is_empty())
        .ok_or_else(|| ApiError::unauthenticated("this operation needs a personal access token"))
}

/// Registers a service's methods: `routes!(RpcServer::new("x"), service, { "m" => handler, .. })`
/// makes each `method` call `service.handler(request)` on a clone of `service`.
#[macro_export]
macro_rules! routes {
    ($server:expr, $service:expr, { $($method:expr => $handler:ident),* $(,)? }) => {{
        let server = $server;
        $(
            let server = {
                let service = $service.clone();
                server.route($method, move |request| {
                    let service = service.clone();
                    async move { service.$handler(request).await }
                })
            };
        )*
        server
    }};
}

/// Answered by every server: a readiness probe for callers.
pub const PING: &str = "ping";

type Route = Arc<dyn Fn(Bytes) -> BoxFuture<'static, Result<Vec<u8>, ApiError>> + Send + Sync>;

/// A service's request handlers, keyed by method name.
pub struct RpcServer {
    service: &'static str,
    routes: HashMap<&'static str, Route>,
    concurrency: usize,
}

impl RpcServer {
    pub fn new(service: &'static str) -> Self {
        RpcServer {
            service,
            routes: HashMap::new(),
            concurrency: 256,
        }
        .route(Method::new(service, PING), |ping: pb::Ping| async move { Ok(ping) })
    }

    /// How many requests may be in flight at once (default 256).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Registers `method`: the request is decoded (a bad payload is INVALID_ARGUMENT) and the
    /// handler's response or error becomes the reply.
    pub fn route<Req, Resp, F, Fut>(mut self, method: Method<Req, Resp>, handler: F) -> Self
    where
        Req: Message + Default + 'static,
        Resp: Message + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ApiError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let route: Route = Arc::new(move |payload: Bytes| {
            let handler = handler.clone();
            Box::pin(async move {
                let request = Req::decode(payload).map_err(|e| ApiError::invalid(format!("malformed request: {e}")))?;
                handler(request).await.map(|resp| resp.encode_to_vec())
            })
        });
        self.routes.insert(method.name, route);
        self
    }

    /// Answers requests until `shutdown`, then finishes the ones in flight.
    pub async fn serve(
        self,
        nats: async_nats::Client,
        ns: Namespace,
        shutdown: CancellationToken,
    ) -> Result<(), async_nats::Error> {
        let prefix = ns.rpc(self.service, ""); // "<ns>.rpc.<service>."
        let mut subscription = nats
            .queue_subscribe(ns.rpc_wildcard(self.service), ns.rpc_queue(self.service))
            .await?;
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let local = LocalServer {
            service: self.service,
            routes: Arc::new(self.routes),
            permits: permits.clone(),
        };
        let registration = register_local(prefix.clone(), local.clone());
        let service = self.service;
        let queue_wait = amba_telemetry::metrics::histogram!("amba_rpc_server_queue_seconds", "service" => service);
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                message = subscription.next() => match message { Some(m) => m, None => break },
            };
            let Some(reply_to) = message.reply.clone() else {
                continue;
            };
            let received = std::time::Instant::now();
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            queue_wait.record(received.elapsed().as_secs_f64());
            let method = message
                .subject
                .as_str()
                .strip_prefix(&prefix)
                .unwrap_or_default()
                .to_owned();
            let (local, nats) = (local.clone(), nats.clone());
            let span = tracing::info_span!("request", %service);
            amba_telemetry::set_remote_parent(&span, &amba_telemetry::traceparent_from_nats(message.headers.as_ref()));
            tokio::spawn(
                async move {
                    let result = local.handle(&method, message.payload).await;
                    let reply = pb::Reply {
                        result: Some(match result {
                            Ok(bytes) => reply::Result::Ok(bytes),
                            Err(err) => reply::Result::Error(error_to_proto(&err)),
                        }),
                    };
                    if let Err(err) = nats.publish(reply_to, reply.encode_to_vec().into()).await {
                        tracing::warn!(error = %err, "could not send reply");
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
        let _ = subscription.unsubscribe().await;
        drop(registration);
        // Every permit back means every in-flight request has been answered.
        let all = u32::try_from(self.concurrency).unwrap_or(u32::MAX);
        let _ = permits.acquire_many(all).await;
        Ok(())
    }
}
