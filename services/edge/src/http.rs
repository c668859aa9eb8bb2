//! The HTTP surface: `/mcp`, OAuth protected-resource metadata, and the probes.

use crate::EdgeState;
use crate::mcp::McpServer;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::sync::Arc;

pub fn router(state: EdgeState, allowed_hosts: Vec<String>) -> Router {
    // Stateless: no MCP session lives in this process, so any replica can take any request.
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts(allowed_hosts);
    let server = McpServer::new(state.clone());
    let mcp = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let mcp = Router::new()
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_token,
        ));

    // Apps call this from browsers on their own origins, before any sign-in.
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([axum::http::Method::POST])
        .allow_headers([axum::http::header::CONTENT_TYPE]);
    let touchpoints = Router::new()
        .route("/v1/touchpoints", post(crate::public::record_touchpoint))
        .layer(cors);

    Router::new()
        .route("/.well-known/oauth-protected-resource", get(protected_resource))
        .route("/r/{code}", get(crate::public::follow_link))
        .route("/join/{program_id}", get(crate::public::join_page))
        .route("/claim/{token}", get(crate::public::claim_page))
        .route(
            "/webhooks/stripe",
            post(crate::webhooks::stripe).layer(axum::extract::DefaultBodyLimit::max(crate::webhooks::MAX_BODY)),
        )
        .merge(touchpoints)
        .route("/.well-known/oauth-protected-resource/mcp", get(protected_resource))
        .route("/notifications", get(notifications_page))
        .route(
            "/unsubscribe/{token}",
            get(crate::public::unsubscribe_page).post(crate::public::unsubscribe),
        )
        .route("/funding/done", get(funding_done))
        .route("/funding/cancelled", get(funding_cancelled))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(mcp)
        .layer(crate::incoming_trace_layer())
        .with_state(state)
}

/// Prometheus text exposition of this process's metrics. Served on `AMBA_METRICS_ADDR`, never on
/// the public port: volumes and error rates are nobody else's business.
pub async fn metrics() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        amba_telemetry::metrics::render(),
    )
}

/// RFC 9728 metadata: where the resource is and that it takes bearer tokens in the header.
async fn protected_resource(State(state): State<EdgeState>) -> impl IntoResponse {
    Json(serde_json::json!({
        "resource": format!("{}/mcp", state.public_url),
        "bearer_methods_supported": ["header"],
        "resource_name": "Amba Affiliate",
    }))
}

/// Where e-mails' `List-Unsubscribe` points: how to turn them off.
async fn notifications_page() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Amba Affiliate e-mails\n\nYour organization chooses which e-mails it gets with the MCP tools \
         amba_affiliate_notifications_get and amba_affiliate_notifications_update, e.g. \
         {\"conversion_approved\": false} or {\"conversion_approved_frequency\": \"weekly\"} (instant, daily, weekly \
         or off). amba_affiliate_my_notifications_list shows what was sent.\n",
    )
}

/// Where Stripe Checkout returns an owner after saving a payment method (the default
/// `success_url` of amba_affiliate_program_funding_setup). Readiness follows Stripe's webhook,
/// never this redirect.
async fn funding_done() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Amba Affiliate: payment method submitted\n\nStripe confirms it to the platform within seconds; \
         amba_affiliate_program_funding_setup then reports status \"ready\" and payout runs of your programs are \
         charged to it. You can close this page.\n",
    )
}

async fn funding_cancelled() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Amba Affiliate: nothing was saved\n\nCall amba_affiliate_program_funding_setup again for a new link when \
         you are ready. Live payout runs need a saved payment method.\n",
    )
}

async fn readyz(State(state): State<EdgeState>) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
