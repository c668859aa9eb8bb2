//! Personal access tokens: an org lists, creates and revokes its own; a revoked token is refused.

use crate::support::{org, text};
use crate::system::TestSystem;
use amba_proto::methods::enrollment as methods;
use amba_proto::wire::{Principal, RevokeTokenRequest, TokenReply};
use amba_testkit::{McpClient, eventually};
use serde_json::json;
use std::time::Duration;

async fn refused(sys: &TestSystem, token: &str) -> bool {
    match McpClient::connect(&sys.mcp_url(), Some(token)).await {
        Ok(client) => {
            let _ = client.close().await;
            false
        }
        Err(err) => err
            .downcast_ref::<rmcp::service::ClientInitializeError>()
            .is_some_and(|e| e.is_authorization_required()),
    }
}

#[tokio::test]
async fn create_list_and_revoke_tokens() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let acme = org(&sys, "Acme").await?;
    let other = org(&sys, "Other").await?;

    let created = acme
        .mcp
        .ok("amba_affiliate_tokens_create", json!({"name": "billing backend"}))
        .await?;
    let second = text(&created["token"]).to_owned();
    assert!(second.starts_with("amba_pat_") && second != acme.token);
    assert!(second.starts_with(text(&created["details"]["hint"])));

    // The new token works for the same org.
    let backend = sys.mcp(Some(&second)).await?;
    let listed = backend.ok("amba_affiliate_tokens_list", json!({})).await?;
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| text(&t["name"]))
        .collect();
    assert_eq!(names, vec!["signup", "billing backend"]);
    assert!(!listed.to_string().contains(&second), "secrets are never listed");

    // Another org cannot revoke it, nor see it.
    let err = other
        .mcp
        .err("amba_affiliate_tokens_revoke", json!({"token_id": created["token_id"]}))
        .await?;
    assert_eq!(err["code"], "NOT_FOUND");
    assert_eq!(
        other.mcp.ok("amba_affiliate_tokens_list", json!({})).await?["tokens"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert!(!refused(&sys, &second).await);

    // Revoked: refused from the next request on, through the edge that cached it too.
    let revoked = acme
        .mcp
        .ok("amba_affiliate_tokens_revoke", json!({"token_id": created["token_id"]}))
        .await?;
    assert!(revoked["token"]["revoked_at"].is_string());
    assert!(refused(&sys, &second).await, "a revoked token is refused at once");
    let err = backend.call_raw("amba_affiliate_tokens_list", json!({})).await.err();
    assert!(
        err.is_some_and(|e| e.is_authorization_required()),
        "an open session with the revoked token is refused too"
    );
    // Revoking again is a no-op; the first token still works.
    acme.mcp
        .ok("amba_affiliate_tokens_revoke", json!({"token_id": created["token_id"]}))
        .await?;
    assert!(!refused(&sys, &acme.token).await);
    sys.stop().await
}

#[tokio::test]
async fn revocation_reaches_edges_that_did_not_revoke() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let acme = org(&sys, "Acme").await?;
    let created = acme
        .mcp
        .ok("amba_affiliate_tokens_create", json!({"name": "ci"}))
        .await?;
    let token = text(&created["token"]).to_owned();
    // The edge verifies and caches the token.
    let client = sys.mcp(Some(&token)).await?;
    client.ok("amba_affiliate_tokens_list", json!({})).await?;

    // Revoked behind this edge's back, as another replica would: straight at the service.
    let rpc = amba_bus::rpc::RpcClient::new(sys.bus.nats.clone(), sys.bus.ns.clone());
    let principal = Principal {
        org_id: acme.id.clone(),
        account_id: String::new(),
        token_id: String::new(),
    };
    let request = RevokeTokenRequest {
        caller: Some(principal),
        token_id: text(&created["token_id"]).to_owned(),
    };
    let _: TokenReply = rpc.call(methods::TOKEN_REVOKE, &request).await?;

    eventually(Duration::from_secs(5), "the cached token to be refused", || {
        let client = &client;
        async move {
            Ok(client
                .call_raw("amba_affiliate_tokens_list", json!({}))
                .await
                .err()
                .filter(|e| e.is_authorization_required())
                .map(|_| ()))
        }
    })
    .await?;
    sys.stop().await
}
