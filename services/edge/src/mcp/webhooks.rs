//! Outbound webhooks (owners): `amba_affiliate_webhook_create|list|delete|test|rotate`.
//! Deliveries are signed per Standard Webhooks and sent by the notification service.

use super::{McpServer, ToolError, require_principal};
use crate::request::rfc3339;
use amba_proto::methods::notification as methods;
use amba_proto::wire as pb;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WebhookCreateArgs {
    pub program_id: String,
    /// An https URL of yours that answers 2xx within 10 s (redirects are not followed).
    pub url: String,
    /// The event types to send (as amba_affiliate_events_list names them); omitted or empty: all.
    pub event_types: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WebhookListArgs {
    pub program_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WebhookArgs {
    /// The endpoint, as amba_affiliate_webhook_create or _list returned it (whk_…).
    pub webhook_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WebhookView {
    pub webhook_id: String,
    pub program_id: String,
    pub url: String,
    /// Empty: every type.
    pub event_types: Vec<String>,
    /// active | disabled (failed for days; create it again once fixed) | deleted
    pub status: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Failing without a success since then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<String>,
    /// While a rotation overlaps: until then the previous secret signs too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_until: Option<String>,
    pub pending_deliveries: u32,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WebhookSecretOutput {
    pub webhook: WebhookView,
    /// The signing secret (`whsec_` + base64), shown this once: verify each delivery's
    /// `webhook-signature` with it (Standard Webhooks, HMAC-SHA256 of `id.timestamp.body`).
    pub secret: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WebhookOutput {
    pub webhook: WebhookView,
    /// For a test: the `webhook-id` of the delivery sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WebhookListOutput {
    pub webhooks: Vec<WebhookView>,
}

fn view(w: pb::Webhook) -> WebhookView {
    let time = |micros: i64| (micros != 0).then(|| rfc3339(micros));
    WebhookView {
        created_at: rfc3339(w.created_at_micros),
        last_success_at: time(w.last_success_at_micros),
        last_failure_at: time(w.last_failure_at_micros),
        failing_since: time(w.failing_since_micros),
        disabled_at: time(w.disabled_at_micros),
        previous_secret_until: time(w.previous_secret_until_micros),
        last_error: (!w.last_error.is_empty()).then_some(w.last_error),
        webhook_id: w.webhook_id,
        program_id: w.program_id,
        url: w.url,
        event_types: w.event_types,
        status: w.status,
        pending_deliveries: w.pending_deliveries,
    }
}

#[tool_router(router = webhook_tools, vis = "pub(super)")]
impl McpServer {
    #[tool(
        name = "amba_affiliate_webhook_create",
        description = "Send your program's events to a URL of yours as they happen, signed per Standard Webhooks \
                       (headers webhook-id, webhook-timestamp, webhook-signature). Returns the signing secret once. \
                       At-least-once: deduplicate on webhook-id; order is not promised. Failed deliveries are retried \
                       for more than a day; an endpoint failing for 5 days is disabled and you are e-mailed. https only; \
                       private, loopback, link-local and metadata addresses are refused.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn webhook_create(
        &self,
        Parameters(a): Parameters<WebhookCreateArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<WebhookSecretOutput>, ToolError> {
        let request = pb::WebhookCreateRequest {
            caller: Some(require_principal(&parts)?),
            program_id: a.program_id,
            url: a.url,
            event_types: a.event_types.unwrap_or_default(),
        };
        let reply = self.call_service(methods::WEBHOOK_CREATE, &request).await?;
        Ok(Json(WebhookSecretOutput {
            webhook: view(reply.webhook.unwrap_or_default()),
            secret: reply.secret,
        }))
    }

    #[tool(
        name = "amba_affiliate_webhook_list",
        description = "Your program's webhook endpoints, with their status, last success and failure, and pending deliveries.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn webhook_list(
        &self,
        Parameters(a): Parameters<WebhookListArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<WebhookListOutput>, ToolError> {
        let request = pb::WebhookListRequest {
            caller: Some(require_principal(&parts)?),
            program_id: a.program_id,
        };
        let reply = self.call_service(methods::WEBHOOK_LIST, &request).await?;
        Ok(Json(WebhookListOutput {
            webhooks: reply.webhooks.into_iter().map(view).collect(),
        }))
    }

    #[tool(
        name = "amba_affiliate_webhook_delete",
        description = "Stop sending to a webhook endpoint: no new deliveries are made or retried for it. Its past \
                       events stay readable with amba_affiliate_events_list.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn webhook_delete(
        &self,
        Parameters(a): Parameters<WebhookArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<WebhookOutput>, ToolError> {
        self.webhook_call(methods::WEBHOOK_DELETE, a, &parts).await
    }

    #[tool(
        name = "amba_affiliate_webhook_test",
        description = "Send a `webhook.test` event to the endpoint now; its delivery_id is the webhook-id it carries.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn webhook_test(
        &self,
        Parameters(a): Parameters<WebhookArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<WebhookOutput>, ToolError> {
        self.webhook_call(methods::WEBHOOK_TEST, a, &parts).await
    }

    #[tool(
        name = "amba_affiliate_webhook_rotate",
        description = "A new signing secret, shown once. For 24 hours the previous one signs too (two v1 signatures in \
                       webhook-signature), so your receiver can switch over without missing a delivery.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn webhook_rotate(
        &self,
        Parameters(a): Parameters<WebhookArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<WebhookSecretOutput>, ToolError> {
        let request = pb::WebhookRequest {
            caller: Some(require_principal(&parts)?),
            webhook_id: a.webhook_id,
        };
        let reply = self.call_service(methods::WEBHOOK_ROTATE, &request).await?;
        Ok(Json(WebhookSecretOutput {
            webhook: view(reply.webhook.unwrap_or_default()),
            secret: reply.secret,
        }))
    }
}

impl McpServer {
    async fn webhook_call(
        &self,
        method: amba_proto::Method<pb::WebhookRequest, pb::WebhookReply>,
        a: WebhookArgs,
        parts: &http::request::Parts,
    ) -> Result<Json<WebhookOutput>, ToolError> {
        let request = pb::WebhookRequest {
            caller: Some(require_principal(parts)?),
            webhook_id: a.webhook_id,
        };
        let reply = self.call_service(method, &request).await?;
        Ok(Json(WebhookOutput {
            webhook: view(reply.webhook.unwrap_or_default()),
            delivery_id: (!reply.delivery_id.is_empty()).then_some(reply.delivery_id),
        }))
    }
}
