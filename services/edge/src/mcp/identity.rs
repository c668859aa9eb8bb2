use super::{McpServer, ToolError, tool_error};
use amba_proto::methods::enrollment as methods;
use amba_proto::wire::{SignupRequest, SignupResponse};
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SignupArgs {
    /// The e-mail address of the person signing up; one account per address.
    pub email: String,
    /// The organization's display name (a program owner or an affiliate).
    pub org_name: String,
    /// The person's name (optional).
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SignupOutput {
    pub account_id: String,
    pub org_id: String,
    /// The personal access token. It is shown only this once; store it now.
    pub token: String,
    pub token_id: String,
    /// Ready to paste into an MCP client's configuration.
    pub mcp_config: serde_json::Value,
}

#[tool_router(router = identity_tools, vis = "pub(super)")]
impl McpServer {
    #[tool(
        name = "amba_affiliate_signup",
        description = "Create an account, its organization and a personal access token in one call. Public: no token needed. \
                       Returns the token once, with an mcp_config to paste into an MCP client.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn signup(&self, Parameters(args): Parameters<SignupArgs>) -> Result<Json<SignupOutput>, ToolError> {
        let request = SignupRequest {
            email: args.email,
            org_name: args.org_name,
            name: args.name.unwrap_or_default(),
        };
        let reply: SignupResponse = self
            .state
            .rpc
            .call(methods::SERVICE, methods::SIGNUP, &request)
            .await
            .map_err(tool_error)?;
        let mcp_config = serde_json::json!({
            "mcpServers": {
                "amba-affiliate": {
                    "type": "http",
                    "url": format!("{}/mcp", self.state.public_url),
                    "headers": { "Authorization": format!("Bearer {}", reply.token) }
                }
            }
        });
        Ok(Json(SignupOutput {
            account_id: reply.account_id,
            org_id: reply.org_id,
            token: reply.token,
            token_id: reply.token_id,
            mcp_config,
        }))
    }
}
