//! Bearer PAT authentication for `/mcp`.
//!
//! - A request with a token: the token is verified (by enrollment, cached briefly) and the
//!   principal is put into the request's extensions, where MCP tools find it. A malformed,
//!   unknown or revoked token gets HTTP 401 with `WWW-Authenticate`.
//! - A request without a token may discover the server, list tools (it sees the public ones)
//!   and call the public tools. Calling any other tool without a token gets HTTP 401, so a
//!   client learns to authenticate from the status code rather than from a tool result.

use crate::EdgeState;
use crate::http::error_response;
use crate::mcp::PUBLIC_TOOLS;
use crate::rate_limit::{Budget, RateLimits};
use amba_bus::rpc::RpcClient;
use amba_core::{ApiError, ErrorCode};
use amba_proto::methods::enrollment as methods;
use amba_proto::wire::{Principal, VerifyTokenRequest};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest MCP request body the edge reads (rmcp's own limit is the same).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// How long a verified token is trusted without asking enrollment again.
const CACHE_TTL: Duration = Duration::from_secs(30);
const CACHE_MAX: usize = 10_000;
/// How long a refused token is answered from memory (a guessing client costs no lookup).
const REFUSED_TTL: Duration = Duration::from_secs(10);

/// Verified tokens, keyed by their SHA-256 so no secret sits in memory longer than a request,
/// and recently refused ones.
pub struct TokenCache {
    rpc: RpcClient,
    limits: std::sync::Arc<RateLimits>,
    entries: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
    refused: Mutex<HashMap<[u8; 32], Instant>>,
}

impl TokenCache {
    pub fn new(rpc: RpcClient, limits: std::sync::Arc<RateLimits>) -> Self {
        TokenCache {
            rpc,
            limits,
            entries: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
        }
    }

    /// The principal behind `token`, presented by `client`. Lookups that miss the cache are
    /// charged to the client's address, so guessing tokens is slow and cheap for us.
    pub async fn verify(&self, token: &str, client: std::net::IpAddr) -> Result<Principal, ApiError> {
        let key = digest(token);
        if let Some(principal) = self.cached(&key) {
            return Ok(principal);
        }
        if self.refused_recently(&key) {
            return Err(ApiError::unauthenticated("the token is not valid (unknown or revoked)"));
        }
        self.limits.check_address(Budget::TokenLookups, client)?;
        let verified: Result<Principal, ApiError> = self
            .rpc
            .call(
                methods::SERVICE,
                methods::VERIFY_TOKEN,
                &VerifyTokenRequest {
                    token: token.to_owned(),
                },
            )
            .await;
        let principal = match verified {
            Ok(principal) => principal,
            Err(err) => {
                if err.code == ErrorCode::Unauthenticated {
                    self.remember_refused(key);
                }
                return Err(err);
            }
        };
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CACHE_MAX {
                entries.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            }
            if entries.len() < CACHE_MAX {
                entries.insert(key, (principal.clone(), Instant::now()));
            }
        }
        Ok(principal)
    }

    /// Forgets every cached token of `token_id` (on revocation).
    pub fn evict_token_id(&self, token_id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, (p, _)| p.token_id != token_id);
        }
    }

    fn refused_recently(&self, key: &[u8; 32]) -> bool {
        self.refused
            .lock()
            .ok()
            .and_then(|refused| refused.get(key).map(|at| at.elapsed() < REFUSED_TTL))
            .unwrap_or(false)
    }

    fn remember_refused(&self, key: [u8; 32]) {
        if let Ok(mut refused) = self.refused.lock() {
            if refused.len() >= CACHE_MAX {
                refused.retain(|_, at| at.elapsed() < REFUSED_TTL);
            }
            if refused.len() < CACHE_MAX {
                refused.insert(key, Instant::now());
            }
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Principal> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(p, _)| p.clone())
    }
}

/// Drops revoked tokens from this edge's cache as `identity.token_revoked` events arrive, so a
/// token revoked through any replica is refused by all of them within moments, not after the TTL.
pub async fn forget_revoked_tokens(
    mut revocations: async_nats::Subscriber,
    tokens: std::sync::Arc<TokenCache>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use futures::StreamExt;
    use prost::Message;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = revocations.next() => match message { Some(m) => m, None => break },
        };
        match amba_proto::wire::TokenRevoked::decode(message.payload) {
            Ok(event) => tokens.evict_token_id(&event.token_id),
            Err(err) => tracing::warn!(error = %err, "undecodable token_revoked event"),
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes()).into()
}

/// The middleware in front of `/mcp`.
pub async fn require_token(State(state): State<EdgeState>, mut request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().map(str::to_owned));
    match header {
        Some(Ok(value)) => {
            let Some(token) = value.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty()) else {
                return unauthorized(&state, Some("the Authorization header must be `Bearer <token>`"));
            };
            match state
                .tokens
                .verify(token, crate::mcp::request_client_ip(&state, &request))
                .await
            {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    next.run(request).await
                }
                Err(err) if err.code == ErrorCode::Unauthenticated => unauthorized(&state, Some(&err.message)),
                // A refusal before any tool runs (e.g. too many token lookups) is an HTTP status.
                Err(err) => error_response(&err),
            }
        }
        Some(Err(_)) => unauthorized(&state, Some("the Authorization header is not valid text")),
        None => {
            // Anonymous: allowed unless it calls a tool that is not public.
            let (parts, body) = request.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
                return error_response(&ApiError::invalid("request body is too large or unreadable"));
            };
            if calls_private_tool(&bytes) {
                return unauthorized(&state, None);
            }
            next.run(Request::from_parts(parts, Body::from(bytes))).await
        }
    }
}

/// Whether a JSON-RPC body (one message or a batch) calls a tool outside [`PUBLIC_TOOLS`].
fn calls_private_tool(body: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false; // not JSON: rmcp answers with a parse error
    };
    let messages = match value {
        serde_json::Value::Array(items) => items,
        single => vec![single],
    };
    messages.iter().any(|m| {
        m.get("method").and_then(|v| v.as_str()) == Some("tools/call")
            && !m
                .pointer("/params/name")
                .and_then(|v| v.as_str())
                .is_some_and(|name| PUBLIC_TOOLS.contains(&name))
    })
}

/// 401 with the RFC 6750 / RFC 9728 challenge that tells a client where to learn about auth.
fn unauthorized(state: &EdgeState, problem: Option<&str>) -> Response {
    let metadata = format!("{}/.well-known/oauth-protected-resource", state.public_url);
    let challenge = match problem {
        Some(_) => format!("Bearer error=\"invalid_token\", resource_metadata=\"{metadata}\""),
        None => format!("Bearer resource_metadata=\"{metadata}\""),
    };
    let err = ApiError::unauthenticated(
        problem.unwrap_or("this tool needs a personal access token: send `Authorization: Bearer <token>`"),
    );
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(err.to_body())).into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::calls_private_tool;

    #[test]
    fn detects_private_tool_calls() {
        let call =
            |name: &str| format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}"}}}}"#);
        assert!(calls_private_tool(call("amba_affiliate_programs_create").as_bytes()));
        assert!(!calls_private_tool(call("amba_affiliate_signup").as_bytes()));
        assert!(!calls_private_tool(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#
        ));
        assert!(calls_private_tool(format!("[{}]", call("x")).as_bytes()));
        assert!(calls_private_tool(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#
        ));
        assert!(!calls_private_tool(b"not json"));
    }
}
