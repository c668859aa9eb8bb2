//! The MCP server: one tool per product operation, each a thin translation to a request.
//!
//! Tool names and argument names are the contract listed in the README ("MCP tools"). Domain failures come back as
//! `isError: true` results whose structured content is `{"error": {code, message, status}}`;
//! only unknown tools and unparsable arguments are protocol errors.

mod arguments;
mod attribution;
mod commission;

mod enrollments;
mod events;
mod explain;
mod guide;
mod identity;
mod notifications;
mod payouts;
mod programs;
mod schema;
mod tokens;
mod webhooks;

use crate::EdgeState;
use crate::rate_limit::{self, Budget};
use amba_core::ApiError;
use amba_proto::Method;
use amba_proto::wire::Principal;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, GetPromptRequestParams, GetPromptResponse, Implementation,
    ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool_handler};
use tracing::Instrument;

/// Tools anyone may call without a token.
pub const PUBLIC_TOOLS: &[&str] = &["amba_affiliate_signup", "amba_affiliate_touchpoint_record"];

/// What a tool returns on a domain failure.
pub type ToolError = CallToolResult;

pub fn tool_error(err: ApiError) -> ToolError {
    CallToolResult::structured_error(err.to_body())
}

#[derive(Clone)]
pub struct McpServer {
    state: EdgeState,
    tool_router: ToolRouter<Self>,
}

impl McpServer {
    pub fn new(state: EdgeState) -> Self {
        let mut tool_router = Self::identity_tools()
            + Self::program_tools()
            + Self::enrollment_tools()
            + Self::token_tools()
            + Self::commission_tools()
            + Self::attribution_tools()
            + Self::explain_tools()
            + Self::event_tools()
            + Self::webhook_tools()
            + Self::payout_tools()
            + Self::notification_tools();
        for route in tool_router.map.values_mut() {
            route.attr = schema::finish(route.attr.clone());
        }
        McpServer { state, tool_router }
    }
}

impl McpServer {
    /// Takes one of the caller's org's in-flight slots and charges the tool's budget; a name
    /// that is no tool spends nothing (the router refuses it).
    fn admit(&self, caller: &Principal, tool: &str) -> Result<Option<rate_limit::Slots>, ApiError> {
        if self.tool_router.get(tool).is_none() {
            return Ok(None);
        }
        // A tool missing from the table gets the smallest budget (a unit test keeps it complete).
        let budget = rate_limit::tool_budget(tool).unwrap_or(Budget::Configuration);
        let slot = self.state.limits.enter(&caller.org_id, 1)?;
        self.state.limits.check_org(budget, &caller.org_id)?;
        Ok(Some(slot))
    }

    /// One request to a service; its typed error becomes the tool's error result.
    async fn call_service<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: Method<Req, Resp>,
        request: &Req,
    ) -> Result<Resp, ToolError> {
        self.state.rpc.call(method, request).await.map_err(tool_error)
    }
}

/// The principal the auth middleware attached to this HTTP request, if any.
fn principal_of(parts: &http::request::Parts) -> Option<Principal> {
    parts.extensions.get::<Principal>().cloned()
}

/// The caller's principal, or UNAUTHENTICATED for an anonymous call of an owner/affiliate tool.
pub fn require_principal(parts: &http::request::Parts) -> Result<Principal, ToolError> {
    principal_of(parts).ok_or_else(|| tool_error(ApiError::unauthenticated("this tool needs a personal access token")))
}

fn context_principal(context: &RequestContext<RoleServer>) -> Option<Principal> {
    context.extensions.get::<http::request::Parts>().and_then(principal_of)
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .build(),
        )
        .with_server_info(Implementation::new("amba-affiliate", env!("CARGO_PKG_VERSION")))
        .with_instructions(guide::INSTRUCTIONS)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(guide::resources()))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(events::templates()))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if let Some((program_id, cursor)) = events::parse_uri(&request.uri) {
            return self
                .read_events(&request.uri, program_id, cursor, context_principal(&context))
                .await
                .map(ReadResourceResponse::Complete);
        }
        guide::read(&request.uri).map(ReadResourceResponse::Complete)
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(ListPromptsResult::with_all_items(guide::prompts()))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        guide::prompt(&request.name, request.arguments.as_ref()).map(GetPromptResponse::Complete)
    }

    /// Anonymous callers see only the public tools.
    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let authenticated = context_principal(&context).is_some();
        let tools = self
            .tool_router
            .list_all()
            .into_iter()
            .filter(|tool| authenticated || PUBLIC_TOOLS.contains(&tool.name.as_ref()))
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    /// The HTTP middleware already answers 401 for anonymous private calls; this is the second
    /// lock on the same door.
    async fn call_tool(
        &self,
        mut request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = context_principal(&context);
        if caller.is_none() {
            if !PUBLIC_TOOLS.contains(&request.name.as_ref()) {
                return Ok(tool_error(ApiError::unauthenticated("this tool needs a personal access token")).into());
            }
            // Anonymous calls share the public click endpoints' per-address budget.
            let client = context
                .extensions
                .get::<http::request::Parts>()
                .and_then(|parts| crate::request::client_ip(&self.state, parts));
            if let Some(client) = client
                && let Err(refusal) = self.state.limits.check_address(Budget::Public, client)
            {
                return Ok(tool_error(refusal).into());
            }
        }
        // An integer argument sent as text holding exactly an integer ("2500") reads as one.
        if let Some(tool) = self.tool_router.get(&request.name) {
            schema::read_integer_text(tool, request.arguments.as_mut());
        }
        // The arguments against the schema the client was shown, then the text limits.
        if let Some(tool) = self.tool_router.get(&request.name)
            && let Err(err) = schema::check(tool, request.arguments.as_ref())
                .and_then(|()| arguments::check(request.arguments.as_ref()))
        {
            tracing::info!(tool = %request.name, error = %err.message, "tool arguments refused");
            return Ok(tool_error(err).into());
        }
        // Authenticated callers, once the arguments passed (a mistake costs no budget): one of
        // their org's in-flight slots, held until the tool has answered, and the tool's per-org
        // budget (rate_limit.rs).
        let _slot = match &caller {
            Some(caller) => match self.admit(caller, &request.name) {
                Ok(slot) => slot,
                Err(refusal) => return Ok(tool_error(refusal).into()),
            },
            None => None,
        };
        // The caller's trace: `_meta.traceparent` (MCP SEP-414), else the HTTP header.
        let traceparent = context.meta.get_traceparent().map(str::to_owned).or_else(|| {
            let parts = context.extensions.get::<http::request::Parts>()?;
            let header = parts.headers.get(amba_telemetry::TRACEPARENT)?;
            header.to_str().ok().map(str::to_owned)
        });
        let span = amba_telemetry::incoming_span("mcp", &request.name, traceparent.as_deref());
        let result = self
            .tool_router
            .call(ToolCallContext::new(self, request, context))
            .instrument(span)
            .await?;
        Ok(in_envelope(result))
    }
}

/// A failure some layer reported as plain text (e.g. an argument the schema check let through
/// that still would not deserialize) goes out in the same `{"error": …}` envelope as the rest.
fn in_envelope(result: CallToolResponse) -> CallToolResponse {
    let CallToolResponse::Complete(result) = result else {
        return result;
    };
    if result.is_error != Some(true) || result.structured_content.is_some() {
        return CallToolResponse::Complete(result);
    }
    let text: Vec<String> = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    let message = text.join(" ");
    let message = message
        .strip_prefix("failed to deserialize parameters: ")
        .unwrap_or(&message);
    CallToolResponse::Complete(tool_error(ApiError::invalid(format!(
        "invalid arguments: {}",
        message.trim()
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_spends_a_budget_of_its_own_kind() {
        let tools = McpServer::identity_tools()
            + McpServer::program_tools()
            + McpServer::enrollment_tools()
            + McpServer::token_tools()
            + McpServer::commission_tools()
            + McpServer::attribution_tools()
            + McpServer::explain_tools()
            + McpServer::event_tools()
            + McpServer::webhook_tools()
            + McpServer::payout_tools()
            + McpServer::notification_tools();
        let tools = tools.list_all();
        assert!(tools.len() > 30);
        for tool in tools {
            let budget = rate_limit::tool_budget(&tool.name);
            assert!(
                budget.is_some(),
                "{} has no budget in rate_limit::tool_budget",
                tool.name
            );
            // Read-only tools never spend a write budget, and writes never the read budgets.
            let read_only = tool.annotations.as_ref().and_then(|a| a.read_only_hint) == Some(true);
            let reads = matches!(budget, Some(Budget::Reads | Budget::Analytics));
            assert_eq!(read_only, reads, "{}: {budget:?}", tool.name);
        }
        assert_eq!(rate_limit::tool_budget("amba_affiliate_nope"), None);
    }
}
