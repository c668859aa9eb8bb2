//! The edge: the only process clients talk to, and stateless. It serves MCP at `/mcp`
//! (streamable HTTP, bearer PAT auth), the public HTTP endpoints and probes, and turns every call
//! into a request to the owning service over NATS.

pub mod auth;
pub mod batcher;
pub mod callers;
pub mod clicks;
pub mod client_addr;
pub mod grpc;
pub mod http;
pub mod mcp;
pub mod public;
pub mod rate_limit;
pub mod request;
pub mod webhooks;

use amba_bus::Bus;
use amba_bus::rpc::RpcClient;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Where HTTP and MCP listen (`AMBA_HTTP_ADDR`); port 0 picks a free port.
    pub http_addr: SocketAddr,
    /// Where gRPC listens (`AMBA_GRPC_ADDR`); port 0 picks a free port.
    pub grpc_addr: SocketAddr,
    /// The externally visible base URL (`AMBA_PUBLIC_URL`), without a trailing slash.
    pub public_url: String,
    /// `Host` header values MCP accepts besides loopback (the public URL's host is added).
    pub allowed_hosts: Vec<String>,
    /// Proxies whose `X-Forwarded-For` names the client (`AMBA_TRUSTED_PROXIES`).
    pub trusted_proxies: client_addr::TrustedProxies,
    /// Key that signs the subjects of affiliate links (`AMBA_LINK_SECRET`); every edge replica
    /// needs the same one. `None`: a random key for this process only.
    pub link_secret: Option<amba_core::secret::Secret>,
    /// Stripe webhook signing secrets (`AMBA_STRIPE_WEBHOOK_SECRET`, comma-separated while a
    /// secret is rotated); empty: `POST /webhooks/stripe` answers 503.
    pub stripe_webhook_secrets: Vec<amba_core::secret::Secret>,
    /// The per-org budgets and the per-org cap of calls in flight (`AMBA_<BUDGET>_PER_ORG`,
    /// `AMBA_IN_FLIGHT_PER_ORG`; see [`rate_limit`]).
    pub budgets: rate_limit::OrgBudgets,
}

/// Shared by every request handler.
#[derive(Clone)]
pub struct EdgeState {
    pub rpc: RpcClient,
    pub nats: async_nats::Client,
    pub public_url: Arc<str>,
    pub tokens: Arc<auth::TokenCache>,
    pub limits: Arc<rate_limit::RateLimits>,
    pub trusted_proxies: Arc<client_addr::TrustedProxies>,
    /// Signs and checks the subjects of affiliate links.
    pub subjects: Arc<clicks::SubjectSigner>,
    pub webhook_secrets: Arc<[amba_core::secret::Secret]>,
    /// Single conversion reports, coalesced into batch requests.
    pub reports: batcher::ReportBatcher,
    ready: Arc<AtomicBool>,
}

impl EdgeState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.nats.connection_state() == async_nats::connection::State::Connected
    }
}

/// A bound but not yet serving edge, so callers (tests, `amba dev`) learn the real address.
pub struct Edge {
    listener: tokio::net::TcpListener,
    grpc_listener: tokio::net::TcpListener,
    router: axum::Router,
    state: EdgeState,
}

impl Edge {
    pub async fn bind(config: EdgeConfig, bus: &Bus) -> std::io::Result<Edge> {
        let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
        let grpc_listener = tokio::net::TcpListener::bind(config.grpc_addr).await?;
        let public_url: Arc<str> = config.public_url.trim_end_matches('/').into();
        let rpc = RpcClient::new(bus.nats.clone(), bus.ns.clone()).preferring_local();
        let limits = Arc::new(rate_limit::RateLimits::new(&config.budgets));
        let state = EdgeState {
            tokens: Arc::new(auth::TokenCache::new(
                rpc.clone(),
                limits.clone(),
                Some(callers::CallerSightings::new(bus.nats.clone(), bus.ns.clone())),
            )),
            limits,
            subjects: Arc::new(clicks::SubjectSigner::new(link_key(config.link_secret.as_ref()))),
            webhook_secrets: config.stripe_webhook_secrets.clone().into(),
            trusted_proxies: Arc::new(config.trusted_proxies.clone()),
            reports: batcher::ReportBatcher::start(rpc.clone()),
            rpc,
            nats: bus.nats.clone(),
            public_url,
            ready: Arc::new(AtomicBool::new(false)),
        };
        let mut allowed_hosts = config.allowed_hosts.clone();
        allowed_hosts.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
        if let Some(host) = host_of(&state.public_url) {
            allowed_hosts.push(host);
        }
        let router = http::router(state.clone(), allowed_hosts);
        Ok(Edge {
            listener,
            grpc_listener,
            router,
            state,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc_listener.local_addr()
    }

    /// Serves until `shutdown`: readiness flips to false first, then in-flight requests finish.
    pub async fn serve(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let revocations = self
            .state
            .nats
            .subscribe(self.state.rpc.namespace().event("identity", "token_revoked"))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(auth::forget_revoked_tokens(
            revocations,
            self.state.tokens.clone(),
            shutdown.clone(),
        ));
        self.state.ready.store(true, Ordering::Relaxed);
        let state = self.state.clone();
        let stop = shutdown.clone();
        tracing::info!(http = %self.listener.local_addr()?, grpc = %self.grpc_listener.local_addr()?, "edge listening");
        let grpc = tokio::spawn(grpc::serve(self.grpc_listener, self.state.clone(), shutdown.clone()));
        let http = axum::serve(
            self.listener,
            self.router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            stop.cancelled().await;
            state.ready.store(false, Ordering::Relaxed);
        })
        .await;
        match grpc.await {
            Ok(Err(err)) => tracing::error!(error = %err, "gRPC server failed"),
            Err(err) => tracing::error!(error = %err, "gRPC task failed"),
            Ok(Ok(())) => {}
        }
        http
    }
}

fn link_key(secret: Option<&amba_core::secret::Secret>) -> Vec<u8> {
    match secret {
        Some(secret) => secret.expose().as_bytes().to_vec(),
        None => {
            tracing::warn!(
                "AMBA_LINK_SECRET is not set: affiliate-link subjects are signed with a key of this process only (set it when running several edges or across restarts)"
            );
            rand::random::<[u8; 32]>().to_vec()
        }
    }
}

/// A span per HTTP or gRPC request (gRPC metadata are HTTP/2 headers) that continues the
/// caller's trace when it sent a W3C `traceparent`.
pub fn incoming_trace_layer() -> tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    IncomingSpan,
> {
    tower_http::trace::TraceLayer::new_for_http().make_span_with(IncomingSpan)
}

#[derive(Debug, Clone, Copy)]
pub struct IncomingSpan;

impl<B> tower_http::trace::MakeSpan<B> for IncomingSpan {
    fn make_span(&mut self, request: &::http::Request<B>) -> tracing::Span {
        let traceparent = request
            .headers()
            .get(amba_telemetry::TRACEPARENT)
            .and_then(|v| v.to_str().ok());
        let surface = if request
            .headers()
            .get(::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
        {
            "grpc"
        } else {
            "http"
        };
        amba_telemetry::incoming_span(surface, request.uri().path(), traceparent)
    }
}

/// `https://mcp.example.com:8443/x` → `mcp.example.com`.
pub fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then(|| host.to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_urls() {
        assert_eq!(
            super::host_of("https://mcp.example.com:8443/x").as_deref(),
            Some("mcp.example.com")
        );
        assert_eq!(super::host_of("http://127.0.0.1:8080").as_deref(), Some("127.0.0.1"));
        assert_eq!(super::host_of("http://[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(super::host_of("nonsense"), None);
    }
}
