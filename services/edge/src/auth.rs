//! Bearer PAT authentication for `/mcp`.
//!
//! - A request with a token: the token is verified (by enrollment, cached briefly) and the
//!   principal is put into the request's extensions, where MCP tools find it. A malformed,
//!   unknown or revoked token gets HTTP 401 with `WWW-Authenticate`.
//! - A request without a token may discover the server, list tools (it sees the public ones)
//!   and call the public tools. Calling any other tool without a token gets HTTP 401, so a
//!   client learns to authenticate from the status code rather than from a tool result.

use crate::EdgeState;
use crate::mcp::PUBLIC_TOOLS;
use crate::rate_limit::{Budget, RateLimits};
use crate::request::error_response;
use amba_bus::rpc::RpcClient;
use amba_core::{ApiError, ErrorCode};
use amba_proto::methods::enrollment as methods;
use amba_proto::wire::{Principal, VerifyTokenRequest};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest MCP request body the edge reads (rmcp's own limit is the same).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// How long a verified token is trusted without asking enrollment again.
const CACHE_TTL: Duration = Duration::from_secs(30);
const CACHE_MAX: usize = 10_000;
/// How long a refused token is answered from memory (a guessing client costs no lookup).
const REFUSED_TTL: Duration = Duration::from_secs(10);
/// How long a revocation is remembered: longer than any lookup can take (the request timeout is
/// 10 s), so a lookup that began before it always learns of it.
const REVOCATION_MEMORY: Duration = Duration::from_secs(60);

/// Verified tokens, keyed by their SHA-256 so no secret sits in memory longer than a request,
/// and recently refused ones.
pub struct TokenCache {
    rpc: RpcClient,
    limits: std::sync::Arc<RateLimits>,
    state: Mutex<CacheState>,
    refused: Mutex<HashMap<[u8; 32], Instant>>,
    /// Where each org calls from, for the self-referral check.
    callers: Option<crate::callers::CallerSightings>,
}

/// The cache and the recent revocations under one lock: writing an entry and evicting a revoked
/// token cannot interleave.
#[derive(Default)]
struct CacheState {
    entries: HashMap<[u8; 32], (Principal, Instant)>,
    /// Revocations seen lately, numbered in arrival order.
    revocations: VecDeque<(u64, String, Instant)>,
    /// The number of the latest revocation.
    latest: u64,
    /// Revocations up to this number were forgotten.
    forgotten_through: u64,
}

/// Whether a token was revoked after a lookup began.
#[derive(Debug, PartialEq)]
enum RevokedSince {
    No,
    Yes,
    /// The lookup is older than what is remembered.
    Unknown,
}

impl CacheState {
    fn revoked_since(&self, since: u64, token_id: &str) -> RevokedSince {
        if self.forgotten_through > since {
            return RevokedSince::Unknown;
        }
        if self
            .revocations
            .iter()
            .any(|(number, id, _)| *number > since && id == token_id)
        {
            RevokedSince::Yes
        } else {
            RevokedSince::No
        }
    }

    fn revoke(&mut self, token_id: &str) {
        self.latest += 1;
        self.revocations
            .push_back((self.latest, token_id.to_owned(), Instant::now()));
        while let Some((number, _, at)) = self.revocations.front() {
            if at.elapsed() < REVOCATION_MEMORY && self.revocations.len() <= CACHE_MAX {
                break;
            }
            self.forgotten_through = *number;
            self.revocations.pop_front();
        }
        self.entries.retain(|_, (p, _)| p.token_id != token_id);
    }

    fn insert(&mut self, key: [u8; 32], principal: Principal) {
        if self.entries.len() >= CACHE_MAX {
            self.entries.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        }
        if self.entries.len() < CACHE_MAX {
            self.entries.insert(key, (principal, Instant::now()));
        }
    }
}

impl TokenCache {
    pub fn new(
        rpc: RpcClient,
        limits: std::sync::Arc<RateLimits>,
        callers: Option<crate::callers::CallerSightings>,
    ) -> Self {
        TokenCache {
            rpc,
            limits,
            state: Mutex::new(CacheState::default()),
            refused: Mutex::new(HashMap::new()),
            callers,
        }
    }

    /// The cache's state. Nothing panics while holding the lock, and a poisoned one holds
    /// consistent data: recover it rather than give up the revocation check.
    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The principal behind `token`, presented by `client`. Lookups that miss the cache are
    /// charged to the client's address, so guessing tokens is slow and cheap for us.
    ///
    /// Revocation wins over a lookup in flight: if the token is revoked while enrollment is
    /// being asked (which may have read it just before), the answer is neither cached nor used.
    /// Every verified call also notes where its org called from (see [`crate::callers`]).
    pub async fn verify(&self, token: &str, client: std::net::IpAddr) -> Result<Principal, ApiError> {
        let principal = self.lookup(token, client).await?;
        if let Some(callers) = &self.callers {
            callers.record(&principal.org_id, client);
        }
        Ok(principal)
    }

    async fn lookup(&self, token: &str, client: std::net::IpAddr) -> Result<Principal, ApiError> {
        let key = digest(token);
        if let Some(principal) = self.cached(&key) {
            return Ok(principal);
        }
        if self.refused_recently(&key) {
            return Err(ApiError::unauthenticated("the token is not valid (unknown or revoked)"));
        }
        self.limits.check_address(Budget::TokenLookups, client)?;
        let since = self.state().latest;
        let verified: Result<Principal, ApiError> = self
            .rpc
            .call(
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
        // The window a revocation can race through; tests hold it open (AMBA_FAILPOINTS).
        amba_bus::faults::pause_at("edge-token-verified").await;
        let mut state = self.state();
        match state.revoked_since(since, &principal.token_id) {
            RevokedSince::No => state.insert(key, principal.clone()),
            RevokedSince::Yes => {
                drop(state);
                self.remember_refused(key);
                return Err(ApiError::unauthenticated("the token has been revoked"));
            }
            // Too old to tell: answered as enrollment said, but not cached.
            RevokedSince::Unknown => {}
        }
        Ok(principal)
    }

    /// Forgets every cached token of `token_id` (on revocation), and refuses it to lookups that
    /// were in flight.
    pub fn evict_token_id(&self, token_id: &str) {
        self.state().revoke(token_id);
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
        self.state()
            .entries
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
                .verify(token, crate::request::request_client_ip(&state, &request))
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
    use super::{CacheState, Principal, RevokedSince, calls_private_tool};

    fn principal(token_id: &str) -> Principal {
        Principal {
            org_id: "org_1".into(),
            account_id: "acc_1".into(),
            token_id: token_id.into(),
        }
    }

    #[test]
    fn a_revocation_during_a_lookup_wins() {
        let mut state = CacheState::default();
        state.insert([1; 32], principal("tok_a"));
        let since = state.latest;
        // Revoked while a lookup of tok_a (begun at `since`) is in flight: its cached copy is
        // gone, and the lookup learns of it; other tokens are not affected.
        state.revoke("tok_a");
        assert!(state.entries.is_empty());
        assert_eq!(state.revoked_since(since, "tok_a"), RevokedSince::Yes);
        assert_eq!(state.revoked_since(since, "tok_b"), RevokedSince::No);
        // A lookup begun after the revocation is enrollment's to answer.
        assert_eq!(state.revoked_since(state.latest, "tok_a"), RevokedSince::No);
    }

    #[test]
    fn forgotten_revocations_make_an_old_lookup_unknown() {
        let mut state = CacheState::default();
        let since = state.latest;
        for i in 0..=super::CACHE_MAX {
            state.revoke(&format!("tok_{i}"));
        }
        assert!(state.revocations.len() <= super::CACHE_MAX);
        assert_eq!(state.revoked_since(since, "tok_x"), RevokedSince::Unknown);
        assert_eq!(state.revoked_since(state.latest - 1, "tok_x"), RevokedSince::No);
    }

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
