use super::{McpServer, ToolError, require_principal, tool_error};
use crate::request::{non_empty, rfc3339};
use amba_core::ApiError;
use amba_proto::methods::enrollment as methods;
use amba_proto::wire as pb;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct TokensCreateArgs {
    /// What the token is for, e.g. "billing backend".
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct TokensRevokeArgs {
    pub token_id: String,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct TokensListArgs {
    pub cursor: Option<String>,
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TokenView {
    pub token_id: String,
    pub name: String,
    /// The first characters of the secret, to tell tokens apart.
    pub hint: String,
    pub account_id: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TokenCreated {
    pub token_id: String,
    /// The secret, shown only this once.
    pub token: String,
    pub details: TokenView,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TokensOutput {
    pub tokens: Vec<TokenView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TokenOutput {
    pub token: TokenView,
}

#[tool_router(router = token_tools, vis = "pub(super)")]
impl McpServer {
    #[tool(
        name = "amba_affiliate_tokens_list",
        description = "Your organization's personal access tokens (never their secrets), revoked ones included, oldest \
                       first: limit per page (default 50, max 200); pass next_cursor as cursor for the next page.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn tokens_list(
        &self,
        Parameters(args): Parameters<TokensListArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<TokensOutput>, ToolError> {
        let request = pb::ListTokensRequest {
            caller: Some(require_principal(&parts)?),
            cursor: args.cursor.unwrap_or_default(),
            limit: args.limit.unwrap_or_default(),
        };
        let reply: pb::ListTokensResponse = self
            .state
            .rpc
            .call(methods::TOKEN_LIST, &request)
            .await
            .map_err(tool_error)?;
        Ok(Json(TokensOutput {
            tokens: reply.tokens.into_iter().map(token_view).collect(),
            next_cursor: non_empty(reply.next_cursor),
        }))
    }

    #[tool(
        name = "amba_affiliate_tokens_create",
        description = "Create another personal access token for your organization (e.g. one per backend). The secret \
                       is returned once.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn tokens_create(
        &self,
        Parameters(a): Parameters<TokensCreateArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<TokenCreated>, ToolError> {
        let request = pb::CreateTokenRequest {
            caller: Some(require_principal(&parts)?),
            name: a.name.unwrap_or_default(),
        };
        let reply: pb::CreateTokenResponse = self
            .state
            .rpc
            .call(methods::TOKEN_CREATE, &request)
            .await
            .map_err(tool_error)?;
        let details = token_view(reply.token.ok_or_else(|| tool_error(ApiError::internal()))?);
        Ok(Json(TokenCreated {
            token_id: details.token_id.clone(),
            token: reply.secret,
            details,
        }))
    }

    #[tool(
        name = "amba_affiliate_tokens_revoke",
        description = "Revoke one of your organization's tokens. It is refused from the next request on.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn tokens_revoke(
        &self,
        Parameters(a): Parameters<TokensRevokeArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<Json<TokenOutput>, ToolError> {
        let request = pb::RevokeTokenRequest {
            caller: Some(require_principal(&parts)?),
            token_id: a.token_id,
        };
        let reply: pb::TokenReply = self
            .state
            .rpc
            .call(methods::TOKEN_REVOKE, &request)
            .await
            .map_err(tool_error)?;
        let token = token_view(reply.token.ok_or_else(|| tool_error(ApiError::internal()))?);
        // This edge forgets it now; others on the token_revoked event.
        self.state.tokens.evict_token_id(&token.token_id);
        Ok(Json(TokenOutput { token }))
    }
}

fn token_view(t: pb::Token) -> TokenView {
    TokenView {
        created_at: rfc3339(t.created_at_micros),
        revoked_at: (t.revoked_at_micros != 0).then(|| rfc3339(t.revoked_at_micros)),
        hint: t.hint,
        name: t.name,
        account_id: t.account_id,
        token_id: non_empty(t.token_id).unwrap_or_default(),
    }
}
