//! An MCP client for tests: rmcp's own client over streamable HTTP, as an agent would connect.

use anyhow::Context;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;

pub struct McpClient {
    client: RunningService<RoleClient, ()>,
}

impl McpClient {
    /// Each HTTP request gives up after a minute: a call that never answers fails the caller with
    /// a timeout instead of hanging it.
    pub async fn connect(url: &str, token: Option<&str>) -> anyhow::Result<McpClient> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()?;
        McpClient::connect_with(http, url, token).await
    }

    /// Like [`McpClient::connect`] over a given HTTP client (default headers, say).
    pub async fn connect_with(http: reqwest::Client, url: &str, token: Option<&str>) -> anyhow::Result<McpClient> {
        let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
        if let Some(token) = token {
            config = config.auth_header(token.to_owned());
        }
        let transport = StreamableHttpClientTransport::with_client(http, config);
        let client = ().serve(transport).await?;
        Ok(McpClient { client })
    }

    /// The connection itself, for everything beyond tools (resources, prompts, server info).
    pub fn peer(&self) -> &RunningService<RoleClient, ()> {
        &self.client
    }

    /// Names of the tools this client may see.
    pub async fn tool_names(&self) -> anyhow::Result<Vec<String>> {
        let tools = self.client.list_all_tools().await?;
        Ok(tools.into_iter().map(|t| t.name.to_string()).collect())
    }

    pub async fn tools(&self) -> anyhow::Result<Vec<rmcp::model::Tool>> {
        Ok(self.client.list_all_tools().await?)
    }

    /// Calls a tool with a JSON object of arguments.
    pub async fn call(&self, name: &str, arguments: Value) -> anyhow::Result<CallToolResult> {
        Ok(self.call_raw(name, arguments).await?)
    }

    /// Like [`McpClient::call`], keeping rmcp's error (to inspect transport failures such as 401).
    pub async fn call_raw(&self, name: &str, arguments: Value) -> Result<CallToolResult, rmcp::ServiceError> {
        let arguments = match arguments {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let params = CallToolRequestParams::new(name.to_owned()).with_arguments(arguments);
        self.client.call_tool(params).await
    }

    /// Calls a tool as part of a caller's trace: W3C `traceparent` in the request's `_meta`.
    pub async fn call_in_trace(
        &self,
        name: &str,
        arguments: Value,
        traceparent: &str,
    ) -> anyhow::Result<CallToolResult> {
        let arguments = match arguments {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let mut meta = rmcp::model::RequestMetaObject::default();
        meta.set_traceparent(traceparent);
        let mut params = CallToolRequestParams::new(name.to_owned()).with_arguments(arguments);
        params.meta = Some(meta);
        Ok(self.client.call_tool(params).await?)
    }

    /// Calls a tool that must succeed; returns its structured content.
    pub async fn ok(&self, name: &str, arguments: Value) -> anyhow::Result<Value> {
        let result = self.call(name, arguments).await?;
        let content = result.structured_content.clone().context("no structured content")?;
        if result.is_error == Some(true) {
            anyhow::bail!("{name} failed: {content}");
        }
        Ok(content)
    }

    /// Calls a tool that must fail with a domain error; returns `{code, message, status}`.
    pub async fn err(&self, name: &str, arguments: Value) -> anyhow::Result<Value> {
        let result = self.call(name, arguments).await?;
        anyhow::ensure!(
            result.is_error == Some(true),
            "{name} should have failed: {:?}",
            result.structured_content
        );
        result
            .structured_content
            .and_then(|c| c.get("error").cloned())
            .context("isError result without an error object")
    }

    pub async fn close(self) -> anyhow::Result<()> {
        self.client.cancel().await?;
        Ok(())
    }
}
