//! Public HTTP endpoints for apps and browsers: `POST /v1/touchpoints` (CORS) and the affiliate
//! link `GET /r/{code}`. Both are unauthenticated, so both are rate-limited per client address.

use crate::EdgeState;
use crate::rate_limit::Budget;
use crate::request::error_response;
use amba_core::{ApiError, ErrorCode};
use amba_proto::wire as pb;
use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::net::SocketAddr;

/// The cookie that keeps a visitor's subject across clicks (on the edge's own domain).
const SUBJECT_COOKIE: &str = "amba_sub";

#[derive(Debug, Deserialize)]
pub struct TouchpointBody {
    pub program_id: String,
    pub code: String,
    pub subject_ref: String,
    pub occurred_at: Option<String>,
    pub landing_url: Option<String>,
}

/// `POST /v1/touchpoints`: a click reported by an app before any sign-in.
pub async fn record_touchpoint(
    State(state): State<EdgeState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<TouchpointBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let client_ip = state.trusted_proxies.client_ip(peer.ip(), &headers);
    if let Err(refusal) = state.limits.check_address(Budget::Public, client_ip) {
        return error_response(&refusal);
    }
    let Json(body) = match body {
        Ok(body) => body,
        Err(err) => return error_response(&ApiError::invalid(format!("invalid JSON body: {}", err.body_text()))),
    };
    let occurred_at_micros = match crate::request::parse_time(body.occurred_at.as_deref()) {
        Ok(micros) => micros,
        Err(err) => return error_response(&err),
    };
    let request = pb::RecordTouchpointRequest {
        program_id: body.program_id,
        code: body.code,
        subject_ref: body.subject_ref,
        occurred_at_micros,
        landing_url: body.landing_url.unwrap_or_default(),
        client_ip: client_ip.to_string(),
        user_agent: user_agent(&headers),
    };
    match crate::clicks::record(&state, request).await {
        Ok(reply) => {
            let status = if reply.duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (
                status,
                Json(serde_json::json!({"touchpoint_id": reply.touchpoint_id, "duplicate": reply.duplicate})),
            )
                .into_response()
        }
        Err(err) => error_response(&err),
    }
}

/// `GET /r/{code}`: an affiliate link. Records the click and redirects to the program's landing
/// URL with `amba_ref=<code>&amba_sub=<subject>` added, so the owner's app can report the
/// conversion later by `subject_ref`.
pub async fn follow_link(
    State(state): State<EdgeState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(code): Path<String>,
    headers: HeaderMap,
) -> Response {
    let client_ip = state.trusted_proxies.client_ip(peer.ip(), &headers);
    if let Err(refusal) = state.limits.check_address(Budget::Public, client_ip) {
        return error_response(&refusal);
    }
    // The visitor's signed subject for this link, else a new one (a click on another
    // affiliate's link gets its own subject: last touch wins by the subject the app reports).
    let subject = subject_from_cookie(&headers)
        .filter(|s| state.subjects.issued_for(&code, s))
        .unwrap_or_else(|| state.subjects.mint(&code));
    let request = pb::RecordTouchpointRequest {
        code: code.clone(),
        subject_ref: subject.clone(),
        client_ip: client_ip.to_string(),
        user_agent: user_agent(&headers),
        ..Default::default()
    };
    let reply = match crate::clicks::record(&state, request).await {
        Ok(reply) => reply,
        Err(err) if matches!(err.code, ErrorCode::InvalidArgument | ErrorCode::Conflict) => {
            return error_response(&ApiError::not_found("affiliate link"));
        }
        Err(err) => return error_response(&err),
    };
    if reply.landing_url.is_empty() {
        return error_response(&ApiError::not_found("landing page: the program has no landing_url"));
    }
    // Defence in depth: a URL stored before the https / other-host rule, or one that got past
    // it, is never redirected to (no plain-HTTP hop, no redirect back onto the platform).
    let platform_host = amba_core::landing::host_of(&state.public_url);
    if let Err(refused) = amba_core::landing::check(&reply.landing_url, platform_host.as_deref()) {
        tracing::warn!(code = %code, reason = %refused.message, "not redirecting to a landing URL the rules refuse");
        return error_response(&ApiError::not_found(
            "landing page: the program's landing_url is not an https page of another site",
        ));
    }
    let separator = if reply.landing_url.contains('?') { '&' } else { '?' };
    let location = format!("{}{separator}amba_ref={code}&amba_sub={subject}", reply.landing_url);
    let cookie = format!("{SUBJECT_COOKIE}={subject}; Max-Age=2592000; Path=/; SameSite=Lax; HttpOnly");
    let mut response = StatusCode::FOUND.into_response();
    for (name, value) in [(header::LOCATION, location), (header::SET_COOKIE, cookie)] {
        match HeaderValue::from_str(&value) {
            Ok(value) => {
                response.headers_mut().insert(name, value);
            }
            Err(_) => return error_response(&ApiError::invalid("the landing URL cannot be used in a redirect")),
        }
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn subject_from_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SUBJECT_COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| {
            (1..=100).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        })
}

/// The `User-Agent` of a click, bounded.
pub fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .chars()
        .take(512)
        .collect()
}

/// Longest unsubscribe token accepted (an org id, a kind and a 64-digit MAC fit easily).
const MAX_UNSUBSCRIBE_TOKEN: usize = 400;

/// A token that can be one: only the characters the notification service puts in one, so it
/// can go into the page's form as it is.
fn plausible_token(token: &str) -> bool {
    token.len() <= MAX_UNSUBSCRIBE_TOKEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// `GET /unsubscribe/<token>`: a page with one button that POSTs (link scanners follow GETs;
/// only the POST turns anything off, RFC 8058).
pub async fn unsubscribe_page(Path(token): Path<String>) -> Response {
    if !plausible_token(&token) {
        return error_response(&ApiError::not_found("unsubscribe link"));
    }
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Unsubscribe</title></head><body>\n\
         <h1>Amba Affiliate e-mails</h1>\n<p>Stop this kind of e-mail for your organization?</p>\n\
         <form method=\"post\" action=\"/unsubscribe/{token}\">\
         <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
         <button type=\"submit\">Unsubscribe</button></form>\n</body></html>\n"
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

/// `POST /unsubscribe/<token>` (RFC 8058 one-click, no login): the notification service checks
/// the token's signature and turns that kind of e-mail off for its org; again is a no-op.
pub async fn unsubscribe(
    State(state): State<EdgeState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let client_ip = state.trusted_proxies.client_ip(peer.ip(), &headers);
    if let Err(refusal) = state.limits.check_address(Budget::Public, client_ip) {
        return error_response(&refusal);
    }
    if !plausible_token(&token) {
        return error_response(&ApiError::not_found("unsubscribe link"));
    }
    let request = pb::UnsubscribeRequest { token };
    let reply: pb::UnsubscribeReply = match state
        .rpc
        .call(amba_proto::methods::notification::UNSUBSCRIBE, &request)
        .await
    {
        Ok(reply) => reply,
        Err(err) => return error_response(&err),
    };
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!(
            "Unsubscribed: your organization gets no more {} e-mails. Turn them on again with the MCP tool \
             amba_affiliate_notifications_update.\n",
            reply.kind
        ),
    )
        .into_response()
}

/// Text for an HTML page: `&`, `<`, `>`, `"` and `'` as entities, so a program's name shows
/// as written and never as markup.
fn html_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html_page(status: StatusCode, title: &str, body: &str) -> Response {
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width\"><title>{title}</title></head><body>\n{body}\n</body></html>\n",
        title = html_text(title)
    );
    let mut response = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Claim links carry a secret in the path: never hand it to another site.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// `GET /join/<program_id>`: an active program's public join page, naming the program and how to
/// apply. Drafts, paused, archived and unknown programs are 404 alike.
pub async fn join_page(
    State(state): State<EdgeState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(program_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let client_ip = state.trusted_proxies.client_ip(peer.ip(), &headers);
    if let Err(refusal) = state.limits.check_address(Budget::Public, client_ip) {
        return error_response(&refusal);
    }
    let request = pb::ProgramPublicRequest { program_id };
    let program: pb::ProgramPublic = match state
        .rpc
        .call(amba_proto::methods::enrollment::PROGRAM_PUBLIC, &request)
        .await
    {
        Ok(program) => program,
        Err(err) => return error_response(&err),
    };
    let decision = if program.affiliate_approval == "auto" {
        "You are in at once, with your referral code and link."
    } else {
        "The program owner reviews applications; you are told when yours is approved."
    };
    let name = html_text(&program.name);
    let id = html_text(&program.program_id);
    let mcp = html_text(&format!("{}/mcp", state.public_url));
    let body = format!(
        "<h1>Join the {name} affiliate program</h1>\n\
         <p>Earn a commission ({currency}) on the sales you refer. {decision}</p>\n\
         <h2>How to apply</h2>\n<ol>\n\
         <li>Connect your AI agent to Amba Affiliate's MCP server at <code>{mcp}</code>. No organization yet? \
         Sign up with the tool <code>amba_affiliate_signup</code> (no token needed) and reconnect with the token \
         it returns.</li>\n\
         <li>Apply with the tool <code>amba_affiliate_my_program_apply</code> and \
         <code>{{\"program_id\": \"{id}\"}}</code>.</li>\n</ol>\n",
        currency = html_text(&program.currency),
    );
    html_page(StatusCode::OK, &format!("Join {}", program.name), &body)
}

/// `GET /claim/<token>`: the page an e-mailed invitation links to. Claiming needs the person's
/// own organization, so it is done by their agent with their access token
/// (amba_affiliate_invite_claim); this page names the program and explains the steps. An
/// unknown token is 404; a claimed or expired one 410.
pub async fn claim_page(
    State(state): State<EdgeState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let client_ip = state.trusted_proxies.client_ip(peer.ip(), &headers);
    if let Err(refusal) = state.limits.check_address(Budget::Public, client_ip) {
        return error_response(&refusal);
    }
    if !plausible_token(&token) {
        return error_response(&ApiError::not_found("invitation"));
    }
    let request = pb::InvitationPreviewRequest { token: token.clone() };
    let preview: pb::InvitationPreview = match state
        .rpc
        .call(amba_proto::methods::enrollment::INVITATION_PREVIEW, &request)
        .await
    {
        Ok(preview) => preview,
        Err(err) => return error_response(&err),
    };
    let name = html_text(&preview.program_name);
    let (status, body) = match preview.status.as_str() {
        "open" => (
            StatusCode::OK,
            format!(
                "<h1>You are invited to the {name} affiliate program</h1>\n\
                 <ol>\n<li>Connect your AI agent to Amba Affiliate's MCP server at <code>{mcp}</code>. No \
                 organization yet? Sign up with the tool <code>amba_affiliate_signup</code> (no token needed) and \
                 reconnect with the token it returns.</li>\n\
                 <li>Claim the invitation with the tool <code>amba_affiliate_invite_claim</code> and \
                 <code>{{\"token\": \"{token}\"}}</code>. Your organization joins the program at once and gets \
                 its referral link.</li>\n</ol>\n<p>This link works once, until {expires}. Keep it to yourself: \
                 whoever claims it first joins.</p>",
                mcp = html_text(&format!("{}/mcp", state.public_url)),
                token = html_text(&token),
                expires = chrono::DateTime::from_timestamp_micros(preview.expires_at_micros)
                    .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                    .unwrap_or_default(),
            ),
        ),
        "claimed" => (
            StatusCode::GONE,
            format!(
                "<h1>{name}: this invitation was already claimed</h1>\n<p>An invitation link works once. Ask \
                 the program owner for a new one if it was not you.</p>"
            ),
        ),
        _ => (
            StatusCode::GONE,
            format!("<h1>{name}: this invitation expired</h1>\n<p>Ask the program owner to invite you again.</p>"),
        ),
    };
    html_page(status, "Amba Affiliate invitation", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_text_is_never_markup() {
        assert_eq!(
            html_text("<b>\"A&B's\"</b>"),
            "&lt;b&gt;&quot;A&amp;B&#39;s&quot;&lt;/b&gt;"
        );
    }

    #[test]
    fn subject_cookie_is_read_and_validated() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("x=1; amba_sub=sub_abc123"));
        assert_eq!(subject_from_cookie(&headers).as_deref(), Some("sub_abc123"));
        headers.insert(header::COOKIE, HeaderValue::from_static("amba_sub=<script>"));
        assert_eq!(subject_from_cookie(&headers), None);
    }
}
