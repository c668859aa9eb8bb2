//! Creates an owner, a program and an affiliate through MCP, as an agent would.

use crate::Options;
use amba_proto::v1::conversions_client::ConversionsClient;
use amba_proto::wire as pb;
use amba_testkit::McpClient;
use serde_json::json;
use std::time::Duration;

#[derive(Clone)]
pub struct World {
    pub owner_token: String,
    pub program_id: String,
    pub code: String,
    /// Prefix of this run's external ids, so runs never collide.
    pub run: String,
}

pub async fn prepare(options: &Options) -> anyhow::Result<World> {
    let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let mcp_url = format!("{}/mcp", options.http);
    let anonymous = McpClient::connect(&mcp_url, None).await?;
    let owner = anonymous
        .ok(
            "amba_affiliate_signup",
            json!({"email": format!("owner-{run}@load.example"), "org_name": "Load Owner"}),
        )
        .await?;
    let affiliate = anonymous
        .ok(
            "amba_affiliate_signup",
            json!({"email": format!("aff-{run}@load.example"), "org_name": "Load Affiliate"}),
        )
        .await?;
    anonymous.close().await?;
    let owner_token = owner["token"].as_str().unwrap_or_default().to_owned();
    let owner_mcp = McpClient::connect(&mcp_url, Some(&owner_token)).await?;
    let affiliate_mcp = McpClient::connect(&mcp_url, affiliate["token"].as_str()).await?;
    let program = owner_mcp
        .ok(
            "amba_affiliate_programs_create",
            json!({"name": format!("Load {run}"), "currency": "USD", "commission": {"schema":1,"type":"percentage","bps":2000}}),
        )
        .await?;
    let program_id = program["program"]["program_id"].as_str().unwrap_or_default().to_owned();
    owner_mcp
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": program_id, "status": "active"}),
        )
        .await?;
    let invite = owner_mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program_id, "affiliate_org_id": affiliate["org_id"]}),
        )
        .await?;
    let accepted = affiliate_mcp
        .ok(
            "amba_affiliate_my_invite_accept",
            json!({"enrollment_id": invite["enrollment_id"]}),
        )
        .await?;
    let code = accepted["code"].as_str().unwrap_or_default().to_owned();
    owner_mcp.close().await?;
    affiliate_mcp.close().await?;

    // Wait until attribution's read model knows the code (it follows enrollment's events).
    let mut client = ConversionsClient::connect(options.grpc.clone()).await?;
    let world = World {
        owner_token,
        program_id,
        code,
        run,
    };
    for attempt in 0..200 {
        let report = world.report(&format!("warmup-{attempt}"), 100);
        if client.report_conversion(world.authed(report)?).await.is_ok() {
            return Ok(world);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the program's code never became usable")
}

impl World {
    pub fn report(&self, external_id: &str, amount_minor: i64) -> pb::ReportConversionRequest {
        pb::ReportConversionRequest {
            program_id: self.program_id.clone(),
            project_id: format!("load-{}", self.run),
            external_id: external_id.to_owned(),
            amount_minor,
            currency: "USD".into(),
            code: self.code.clone(),
            ..Default::default()
        }
    }

    pub fn authed<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {}", self.owner_token).parse()?);
        Ok(request)
    }
}
