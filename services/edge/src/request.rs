//! What every edge surface shares about a request: the typed error as an HTTP response, the
//! client's address, and times read from and written for clients. It imports nothing else of
//! the edge's surfaces, so HTTP, MCP, auth and the public endpoints all stand on it.

use crate::EdgeState;
use amba_core::ApiError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use std::net::IpAddr;

/// The typed error as an HTTP response; a rate-limit refusal also carries `Retry-After`.
pub fn error_response(err: &ApiError) -> axum::response::Response {
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(err.to_body())).into_response();
    if let Some(seconds) = crate::rate_limit::retry_after(err)
        && let Ok(value) = axum::http::HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
    }
    response
}

/// The client address of an MCP request (behind trusted proxies, the forwarded one).
pub fn client_ip(state: &EdgeState, parts: &http::request::Parts) -> Option<IpAddr> {
    client_ip_of(state, &parts.extensions, &parts.headers)
}

/// The client address of an HTTP request (unspecified when the server gave no peer address).
pub fn request_client_ip<B>(state: &EdgeState, request: &http::Request<B>) -> IpAddr {
    client_ip_of(state, request.extensions(), request.headers()).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

fn client_ip_of(state: &EdgeState, extensions: &http::Extensions, headers: &http::HeaderMap) -> Option<IpAddr> {
    let peer = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()?
        .0
        .ip();
    Some(state.trusted_proxies.client_ip(peer, headers))
}

/// RFC 3339 → unix microseconds (0 when absent: the service uses "now").
pub fn parse_time(text: Option<&str>) -> Result<i64, ApiError> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(0),
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| d.timestamp_micros())
            .map_err(|_| {
                ApiError::invalid(format!(
                    "occurred_at {t:?} is not an RFC 3339 time such as 2026-11-24T10:00:00Z"
                ))
            }),
    }
}

/// An RFC 3339 time or a UTC date (`2026-01-01`: its midnight) → unix microseconds (the
/// accounting exports' ranges).
pub fn parse_instant(name: &str, text: &str) -> Result<i64, ApiError> {
    let text = text.trim();
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc().timestamp_micros())
        })
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "{name} {text:?} is not an RFC 3339 time such as 2026-11-01T00:00:00Z or a date such as 2026-11-01"
            ))
            .with_details(serde_json::json!({ "argument": name }))
        })
}

/// Unix microseconds → RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// [`rfc3339`], or null for 0 (not known, or not yet).
pub fn rfc3339_or_null(micros: i64) -> Option<String> {
    (micros > 0).then(|| rfc3339(micros))
}

/// Proto's empty string, which means "none", as a client reads it: absent.
pub fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}
