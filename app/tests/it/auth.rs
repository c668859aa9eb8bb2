//! Who may do what at the door: bearer PATs, public tools, 401 challenges, discovery, probes.

use crate::support::signup;
use crate::system::TestSystem;
use amba_testkit::McpClient;
use serde_json::json;

const OWNER_TOOLS: &[&str] = &[
    "amba_affiliate_programs_create",
    "amba_affiliate_programs_update",
    "amba_affiliate_programs_get",
    "amba_affiliate_programs_list",
];

#[tokio::test]
async fn anonymous_callers_see_and_call_only_public_tools() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let anonymous = sys.mcp(None).await?;
    let mut public = anonymous.tool_names().await?;
    public.sort();
    assert_eq!(
        public,
        vec!["amba_affiliate_signup", "amba_affiliate_touchpoint_record"]
    );

    // A private tool without a token is refused at the HTTP layer with a challenge.
    let err = anonymous
        .call_raw("amba_affiliate_programs_list", json!({}))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("an anonymous private call must fail"))?;
    assert!(
        err.is_authorization_required(),
        "expected HTTP 401 with WWW-Authenticate, got {err}"
    );
    assert!(err.auth_challenge().is_some_and(|c| c.contains("resource_metadata=")));
    anonymous.close().await?;

    let (_, owner) = signup(&sys, "tools@example.com", "Tools").await?;
    let names = owner.tool_names().await?;
    for tool in OWNER_TOOLS.iter().chain(["amba_affiliate_signup"].iter()) {
        assert!(names.iter().any(|n| n == tool), "{tool} missing from {names:?}");
    }
    owner.close().await?;
    sys.stop().await
}

#[tokio::test]
async fn unknown_and_malformed_tokens_get_401() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    for token in ["amba_pat_not-a-real-token", "x"] {
        let err = McpClient::connect(&sys.mcp_url(), Some(token)).await.err();
        let err = err.ok_or_else(|| anyhow::anyhow!("token {token:?} must be refused"))?;
        let auth_required = err
            .downcast_ref::<rmcp::service::ClientInitializeError>()
            .is_some_and(|e| e.is_authorization_required());
        assert!(auth_required, "expected 401 for {token:?}, got {err}");
    }

    // The same, seen as raw HTTP: status, challenge and body.
    let http = reqwest::Client::new();
    let response = http
        .post(sys.mcp_url())
        .header("authorization", "Bearer amba_pat_nope")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await?;
    assert_eq!(response.status(), 401);
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("invalid_token"),
        "{challenge}"
    );
    assert!(challenge.contains(&format!("{}/.well-known/oauth-protected-resource", sys.base_url())));
    let body: serde_json::Value = response.json().await?;
    assert_eq!(
        (body["error"]["code"].as_str(), body["error"]["status"].as_u64()),
        (Some("UNAUTHENTICATED"), Some(401))
    );

    let response = http
        .post(sys.mcp_url())
        .header("authorization", "Basic abc")
        .body("{}")
        .send()
        .await?;
    assert_eq!(response.status(), 401);
    sys.stop().await
}

#[tokio::test]
async fn discovery_probes_and_host_checks() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(&[("AMBA_ALLOWED_HOSTS", "mcp.example.com")]).await?;
    let http = reqwest::Client::new();
    let metadata: serde_json::Value = http
        .get(format!("{}/.well-known/oauth-protected-resource", sys.base_url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(metadata["resource"], sys.mcp_url());
    assert_eq!(metadata["bearer_methods_supported"], json!(["header"]));
    assert_eq!(
        http.get(format!("{}/livez", sys.base_url())).send().await?.status(),
        200
    );
    assert_eq!(
        http.get(format!("{}/readyz", sys.base_url())).send().await?.status(),
        200
    );

    let list = |host: &'static str| {
        http.post(sys.mcp_url())
            .header("host", host)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
            .send()
    };
    assert_eq!(
        list("mcp.example.com").await?.status(),
        200,
        "configured hosts are accepted behind an ingress"
    );
    assert_eq!(
        list("evil.example.net").await?.status(),
        403,
        "other hosts are refused (DNS rebinding)"
    );
    sys.stop().await
}

#[tokio::test]
async fn annotations_are_honest() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (_, owner) = signup(&sys, "notes@example.com", "Notes").await?;
    for tool in owner.tools().await? {
        let a = tool.annotations.clone().unwrap_or_default();
        let read_only = tool.name.ends_with("_get")
            || tool.name.ends_with("_list")
            || tool.name.ends_with("_export")
            || tool.name == "amba_affiliate_my_payout_request"
            || tool.name == "amba_affiliate_commission_explain";
        assert_eq!(a.read_only_hint, Some(read_only), "{}", tool.name);
        // Open world: the tools that act outside this system (at Stripe, or at a webhook endpoint).
        let open_world = [
            "amba_affiliate_my_payout_create",
            "amba_affiliate_my_payout_onboarding",
            "amba_affiliate_program_funding_setup",
            "amba_affiliate_payout_run",
            "amba_affiliate_webhook_create",
            "amba_affiliate_webhook_test",
        ]
        .contains(&tool.name.as_ref());
        assert_eq!(a.open_world_hint, Some(open_world), "{}", tool.name);
        assert!(
            a.destructive_hint.is_some() && a.idempotent_hint.is_some(),
            "{}",
            tool.name
        );
        if read_only {
            assert_eq!(
                (a.destructive_hint, a.idempotent_hint),
                (Some(false), Some(true)),
                "{}",
                tool.name
            );
        }
        assert!(tool.output_schema.is_some(), "{} declares its output", tool.name);
    }
    owner.close().await?;
    sys.stop().await
}
