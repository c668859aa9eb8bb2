//! Steps many tests share, each done through MCP as a client would.

use crate::system::TestSystem;
use amba_testkit::McpClient;
use serde_json::{Value, json};

/// Signs an org up and returns (signup output, a client using its token).
pub async fn signup(sys: &TestSystem, email: &str, org: &str) -> anyhow::Result<(Value, McpClient)> {
    let anonymous = sys.mcp(None).await?;
    let out = anonymous
        .ok("amba_affiliate_signup", json!({"email": email, "org_name": org}))
        .await?;
    anonymous.close().await?;
    let client = sys.mcp(Some(text(&out["token"]))).await?;
    Ok((out, client))
}

/// An org with its id and client.
pub struct Org {
    pub id: String,
    pub token: String,
    pub mcp: McpClient,
}

pub async fn org(sys: &TestSystem, name: &str) -> anyhow::Result<Org> {
    let (out, mcp) = signup(sys, &format!("{}@example.com", name.to_lowercase()), name).await?;
    Ok(Org {
        id: text(&out["org_id"]).to_owned(),
        token: text(&out["token"]).to_owned(),
        mcp,
    })
}

/// An active 20% USD program with `extra` settings; returns its id.
pub async fn active_program(owner: &Org, extra: Value) -> anyhow::Result<String> {
    let mut args =
        json!({"name": "Partners", "currency": "USD", "commission": {"schema":1,"type":"percentage","bps":2000}});
    if let (Some(args), Some(extra)) = (args.as_object_mut(), extra.as_object()) {
        args.extend(extra.clone());
    }
    let created = owner.mcp.ok("amba_affiliate_programs_create", args).await?;
    let id = text(&created["program"]["program_id"]).to_owned();
    owner
        .mcp
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": id, "status": "active"}),
        )
        .await?;
    Ok(id)
}

/// Owner invites, affiliate accepts; returns the active enrollment output.
pub async fn enroll(owner: &Org, affiliate: &Org, program_id: &str, parent: Option<&str>) -> anyhow::Result<Value> {
    let mut args = json!({"program_id": program_id, "affiliate_org_id": affiliate.id});
    if let Some(parent) = parent {
        args["parent_enrollment_id"] = json!(parent);
    }
    let invited = owner.mcp.ok("amba_affiliate_invite", args).await?;
    affiliate
        .mcp
        .ok(
            "amba_affiliate_my_invite_accept",
            json!({"enrollment_id": invited["enrollment_id"]}),
        )
        .await
}

pub fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}
