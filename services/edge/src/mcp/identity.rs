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

/// The same answer whether or not the address already had an account (so signup tells nobody
/// which addresses are registered): a new account's fields, or only the message when the address
/// had one and that account was e-mailed instead.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SignupOutput {
    /// What happened and what to do next.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// The personal access token. It is shown only this once; store it now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Ready to paste into an MCP client's configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_config: Option<serde_json::Value>,
}

const CREATED: &str = "Account created. Store the token now: it is shown only this once. Reconnect with it \
                       (mcp_config) to use the other tools.";
const CHECK_INBOX: &str = "Check your inbox: if this address already has an account, nothing was created and the \
                           address was e-mailed instead. Use that account's access tokens.";

#[tool_router(router = identity_tools, vis = "pub(super)")]
impl McpServer {
    #[tool(
        name = "amba_affiliate_signup",
        description = "Create an account, its organization and a personal access token in one call. Public: no token needed. \
                       Returns the token once, with an mcp_config to paste into an MCP client. One account per e-mail \
                       address: for an address that already has one, nothing is created, the reply carries only \
                       message (check your inbox) and the address is e-mailed.",
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
            .call(methods::SIGNUP, &request)
            .await
            .map_err(tool_error)?;
        if reply.token.is_empty() {
            return Ok(Json(SignupOutput {
                message: CHECK_INBOX.to_owned(),
                account_id: None,
                org_id: None,
                token: None,
                token_id: None,
                mcp_config: None,
            }));
        }
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
            message: CREATED.to_owned(),
            account_id: Some(reply.account_id),
            org_id: Some(reply.org_id),
            token: Some(reply.token),
            token_id: Some(reply.token_id),
            mcp_config: Some(mcp_config),
        }))
    }
}
