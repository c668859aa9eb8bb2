//! The HTTP surface: Stripe's `/v1` API (auth, faults, idempotency, routing) and the local pages
//! that account links (onboarding) and Checkout sessions (saving a card) point to.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::cards;
use crate::error::ApiError;
use crate::error::CheckoutRefusal;
use crate::form::Form;
use crate::payments::success_redirect;
use crate::state::{Saved, State as Data, Visit, new_id};
use crate::{FaultKind, Shared, now};

/// One handler for everything, so auth, faults and idempotency wrap every route the same way.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    if let Some(link) = path.strip_prefix("/connect/onboarding/")
        && method == Method::GET
    {
        return onboarding_page(&shared, link);
    }
    if let Some(session) = path.strip_prefix("/checkout/setup/")
        && method == Method::GET
    {
        let query = Form::parse(uri.query().unwrap_or_default().as_bytes());
        return checkout_page(&shared, session, query.get("card").unwrap_or("visa"));
    }
    if !path.starts_with("/v1/") {
        return error(&ApiError::unrecognized(method.as_str(), path));
    }
    if let Err(err) = authorize(&shared.config.secret_key, &headers) {
        return error(&err);
    }
    let segments: Vec<&str> = path["/v1/".len()..].split('/').collect();
    match method {
        Method::POST => post(&shared, path, &segments, &headers, &body).await,
        Method::GET => {
            let query = Form::parse(uri.query().unwrap_or_default().as_bytes());
            let result = {
                let state = shared.lock();
                get(&state, &segments, &query).map(|r| r.map(|value| state.expand(value, &query)))
            };
            match result {
                Some(Ok(value)) => respond(StatusCode::OK, &value, &[]),
                Some(Err(err)) => error(&err),
                None => error(&ApiError::unrecognized("GET", path)),
            }
        }
        _ => error(&ApiError::unrecognized(method.as_str(), path)),
    }
}

fn authorize(secret_key: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(key) if key == secret_key => Ok(()),
        Some(key) => Err(ApiError::unauthorized(format!(
            "Invalid API Key provided: {}",
            redact(key)
        ))),
        None => Err(ApiError::unauthorized(
            "You did not provide an API key. You need to provide your API key in the Authorization header, \
             using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
                .to_owned(),
        )),
    }
}

/// Stripe echoes a wrong key with all but its prefix and last four characters masked.
fn redact(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 12 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..8].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 12))
}

/// A POST: faults, then the idempotency layer, then the operation.
async fn post(shared: &Shared, path: &str, segments: &[&str], headers: &HeaderMap, body: &[u8]) -> Response {
    let form = Form::parse(body);
    let fault = shared.lock().take_fault(path);
    // Stripe's rate limiter sits in front of everything: nothing runs and nothing is saved.
    if fault == Some(FaultKind::Refused) {
        return error(
            &ApiError::invalid(
                "The account this request is for cannot take it (injected fault: refused).",
                "destination",
            )
            .code("account_invalid"),
        );
    }
    if fault == Some(FaultKind::RateLimited) {
        return error(&ApiError::rate_limited());
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_owned);
    let request_id = new_id("req", 14);
    let now = now();

    let (status, body, replayed) = shared.with_state(|state| {
        if let Some(key) = &key
            && let Some(saved) = state.idempotency.get(key)
        {
            return match check_reuse(key, saved, path, &form) {
                Ok(()) => (saved.status, saved.body.clone(), true),
                Err(err) => (err.status, err.body(), false),
            };
        }
        state.request = Some(json!({"id": request_id, "idempotency_key": key}));
        let result =
            route_post(state, path, segments, &form, &shared.base_url, now).map(|value| state.expand(value, &form));
        state.request = None;
        // A card error ran: a charge may exist and events are out, like a success.
        let committed = result.as_ref().map_or_else(ApiError::committed, |_| true);
        let (status, body) = match result {
            _ if committed && fault == Some(FaultKind::ErrorAfterCommit) => {
                // The work is done and its events are out; only the answer is lost.
                let err = ApiError::after_commit();
                (err.status, err.body())
            }
            Ok(value) => (StatusCode::OK, value),
            Err(err) => (err.status, err.body()),
        };
        // Stripe saves the result once the endpoint has started executing, 500s and card errors
        // (402) included; a request refused by validation saves nothing, so the key can be retried
        // once fixed.
        if let Some(key) = &key
            && (committed || !status.is_client_error())
        {
            state.idempotency.insert(
                key.clone(),
                Saved {
                    path: path.to_owned(),
                    params: form.canonical(),
                    status,
                    body: body.clone(),
                },
            );
        }
        (status, body, false)
    });

    // Saved first, slow answer second: a retry during the delay already gets the replay.
    if let Some(FaultKind::Timeout(delay)) = fault {
        tokio::time::sleep(delay).await;
    }
    let mut extra = vec![("request-id", request_id)];
    if let Some(key) = key {
        extra.push(("idempotency-key", key));
    }
    if replayed {
        extra.push(("idempotent-replayed", "true".to_owned()));
    }
    respond(status, &body, &extra)
}

fn check_reuse(key: &str, saved: &Saved, path: &str, form: &Form) -> Result<(), ApiError> {
    if saved.path != path {
        return Err(ApiError::idempotency(format!(
            "Keys for idempotent requests can only be used for the same endpoint they were first used for \
             ('{path}' vs '{}'). Try using a key other than '{key}' if you meant to execute a different request.",
            saved.path
        )));
    }
    if saved.params != form.canonical() {
        return Err(ApiError::idempotency(format!(
            "Keys for idempotent requests can only be used with the same parameters they were first used with. \
             Try using a key other than '{key}' if you meant to execute a different request."
        )));
    }
    Ok(())
}

fn route_post(
    state: &mut Data,
    path: &str,
    segments: &[&str],
    form: &Form,
    base_url: &str,
    now: i64,
) -> Result<Value, ApiError> {
    match segments {
        ["accounts"] => state.create_account(form, now),
        ["account_links"] => state.create_account_link(form, base_url, now),
        ["transfers"] => state.create_transfer(form, now),
        ["transfers", id, "reversals"] => state.reverse_transfer(id, form, now),
        ["customers"] => state.create_customer(form, now),
        ["customers", id] => state.update_customer(id, form, now),
        ["checkout", "sessions"] => state.create_checkout_session(form, base_url, now),
        ["payment_methods", id, "attach"] => state.attach_payment_method(id, form, now),
        ["payment_intents"] => state.create_payment_intent(form, now),
        ["payment_intents", id, "confirm"] => state.confirm_payment_intent(id, form, now),
        ["refunds"] => state.create_refund(form, now),
        _ => Err(ApiError::unrecognized("POST", path)),
    }
}

/// GET routes; `None` when there is no such route.
fn get(state: &Data, segments: &[&str], query: &Form) -> Option<Result<Value, ApiError>> {
    let one = |found: Result<&Value, ApiError>| query.allow(&[], &["expand"]).and(found.cloned());
    let result = match segments {
        ["customers", id] => one(state.customer(id)),
        ["customers", id, "payment_methods"] => state.list_payment_methods(query, Some(id)),
        ["checkout", "sessions", id] => one(state.checkout_session(id)),
        ["payment_methods"] => state.list_payment_methods(query, None),
        ["payment_methods", id] => one(state.payment_method(id)),
        ["setup_intents", id] => one(state.setup_intent(id)),
        ["payment_intents"] => state.list_payment_intents(query),
        ["payment_intents", id] => one(state.payment_intent(id)),
        ["charges"] => state.list_charges(query),
        ["charges", id] => one(state.charge(id)),
        ["charges", id, "refunds"] => state.list_charge_refunds(id, query),
        ["refunds"] => state.list_refunds(query),
        ["refunds", id] => one(state.refund(id)),
        ["accounts", id] => query.allow(&[], &["expand"]).and_then(|()| state.account(id).cloned()),
        ["transfers"] => state.list_transfers(query),
        ["transfers", id] => query.allow(&[], &["expand"]).and_then(|()| state.transfer(id).cloned()),
        ["transfers", id, "reversals"] => query
            .allow(&["limit"], &["expand"])
            .and_then(|()| state.transfer(id).map(|t| t["reversals"].clone())),
        _ => return None,
    };
    Some(result)
}

fn onboarding_page(shared: &Shared, link: &str) -> Response {
    let visit = shared.with_state(|state| state.visit_link(link, now()));
    match visit {
        Visit::Completed { return_url } => {
            let mut response = StatusCode::FOUND.into_response();
            if let Ok(location) = HeaderValue::from_str(&return_url) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Visit::Unknown => (
            StatusCode::NOT_FOUND,
            Html(page(
                "Link not found",
                "This onboarding link does not exist or has already been used. Account links are single use.",
            )),
        )
            .into_response(),
        Visit::Expired { refresh_url } => (
            StatusCode::GONE,
            Html(page(
                "Link expired",
                &format!(
                    "This onboarding link has expired. Request a new account link from the platform \
                     (<a href=\"{}\">refresh</a>).",
                    escape(&refresh_url)
                ),
            )),
        )
            .into_response(),
    }
}

/// The hosted Checkout page in setup mode: visiting it is the customer entering test card `card`
/// and pressing "Save".
fn checkout_page(shared: &Shared, session: &str, card: &str) -> Response {
    let result = shared.with_state(|state| state.complete_checkout(session, card, now()));
    match result {
        Ok(session) => {
            let mut response = StatusCode::FOUND.into_response();
            if let Ok(location) = HeaderValue::from_str(&success_redirect(&session)) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Err(CheckoutRefusal::Unknown) => (
            StatusCode::NOT_FOUND,
            Html(page(
                "Session not found",
                "This Checkout session does not exist or has already been completed.",
            )),
        )
            .into_response(),
        Err(CheckoutRefusal::Expired { cancel_url }) => {
            let back = cancel_url
                .map(|url| format!(" (<a href=\"{}\">back</a>)", escape(&url)))
                .unwrap_or_default();
            (
                StatusCode::GONE,
                Html(page(
                    "Session expired",
                    &format!("This Checkout session has expired; ask the platform for a new one{back}."),
                )),
            )
                .into_response()
        }
        Err(CheckoutRefusal::UnknownCard(card)) => (
            StatusCode::BAD_REQUEST,
            Html(page(
                "Unknown test card",
                &format!(
                    "There is no test card named '{}'. Use ?card= with one of: {}.",
                    escape(&card),
                    cards::names().join(", ")
                ),
            )),
        )
            .into_response(),
    }
}

fn page(title: &str, message: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title} · Stripe (fake)</title></head>\
         <body><h1>{title}</h1><p>{message}</p></body></html>"
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn error(err: &ApiError) -> Response {
    let mut response = respond(err.status, &err.body(), &[("request-id", new_id("req", 14))]);
    if err.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"Stripe\""),
        );
    }
    response
}

fn respond(status: StatusCode, body: &Value, extra: &[(&'static str, String)]) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    for (name, value) in extra {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(*name, value);
        }
    }
    response
}
