//! The authorization matrix, through MCP: owners reach only their programs, affiliates only their
//! own enrollments, public tools need no token and every other tool refuses a missing one.

use crate::support::{active_program, enroll, org, text};
use amba_testkit::TestSystem;
use serde_json::{Value, json};

const PUBLIC: &[&str] = &["amba_affiliate_signup", "amba_affiliate_touchpoint_record"];

#[tokio::test]
async fn every_tool_refuses_what_is_not_the_callers() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let owner_a = org(&sys, "OwnerA").await?;
    let owner_b = org(&sys, "OwnerB").await?;
    let x = org(&sys, "AffiliateX").await?;
    let y = org(&sys, "AffiliateY").await?;
    let program_a = active_program(&owner_a, json!({})).await?;
    let program_b = active_program(&owner_b, json!({})).await?;
    let x_in_a = enroll(&owner_a, &x, &program_a, None).await?;
    let x_enrollment = text(&x_in_a["enrollment_id"]).to_owned();
    let x_pending = owner_a
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program_a, "affiliate_org_id": y.id}),
        )
        .await?;
    let y_invite = text(&x_pending["enrollment_id"]).to_owned();
    let before = snapshot(&owner_a.mcp, &program_a).await?;

    // Owner B against owner A's program and enrollments.
    let owner_cases: Vec<(&str, Value)> = vec![
        ("amba_affiliate_programs_get", json!({"program_id": program_a})),
        (
            "amba_affiliate_programs_update",
            json!({"program_id": program_a, "status": "paused"}),
        ),
        (
            "amba_affiliate_invite",
            json!({"program_id": program_a, "affiliate_org_id": y.id}),
        ),
        ("amba_affiliate_affiliates_list", json!({"program_id": program_a})),
        ("amba_affiliate_affiliate_approve", json!({"enrollment_id": y_invite})),
        ("amba_affiliate_affiliate_reject", json!({"enrollment_id": y_invite})),
        (
            "amba_affiliate_affiliate_remove",
            json!({"enrollment_id": x_enrollment}),
        ),
        (
            "amba_affiliate_affiliate_set_parent",
            json!({"enrollment_id": x_enrollment}),
        ),
    ];
    for (tool, args) in &owner_cases {
        let err = owner_b.mcp.err(tool, args.clone()).await?;
        assert_eq!(err["code"], "NOT_FOUND", "owner B: {tool}");
    }
    // An affiliate is not an owner either, even of a program it is enrolled in.
    for (tool, args) in &owner_cases {
        let err = x.mcp.err(tool, args.clone()).await?;
        assert_eq!(err["code"], "NOT_FOUND", "affiliate X as owner: {tool}");
    }

    // Affiliate X against Y's invitation; Y against X's enrollment; owners against affiliate tools.
    let affiliate_cases: Vec<(&str, Value, &amba_testkit::McpClient)> = vec![
        (
            "amba_affiliate_my_invite_accept",
            json!({"enrollment_id": y_invite}),
            &x.mcp,
        ),
        (
            "amba_affiliate_my_invite_decline",
            json!({"enrollment_id": y_invite}),
            &x.mcp,
        ),
        (
            "amba_affiliate_my_referral_generate",
            json!({"enrollment_id": y_invite}),
            &x.mcp,
        ),
        (
            "amba_affiliate_my_referral_generate",
            json!({"enrollment_id": x_enrollment}),
            &y.mcp,
        ),
        (
            "amba_affiliate_my_invite_accept",
            json!({"enrollment_id": y_invite}),
            &owner_a.mcp,
        ),
        (
            "amba_affiliate_my_referral_generate",
            json!({"enrollment_id": x_enrollment}),
            &owner_a.mcp,
        ),
    ];
    for (tool, args, client) in &affiliate_cases {
        let err = client.err(tool, args.clone()).await?;
        assert_eq!(err["code"], "NOT_FOUND", "{tool} {args}");
    }
    // Lists are scoped by the token: nobody sees a peer's invites, enrollments or codes.
    let x_invites = x.mcp.ok("amba_affiliate_my_invites_list", json!({})).await?;
    assert_eq!(x_invites["invites"], json!([]));
    let y_programs = y.mcp.ok("amba_affiliate_my_programs_list", json!({})).await?;
    assert!(!y_programs.to_string().contains(&x_enrollment) && !y_programs.to_string().contains(text(&x_in_a["code"])));
    let b_programs = owner_b.mcp.ok("amba_affiliate_programs_list", json!({})).await?;
    assert!(!b_programs.to_string().contains(&program_a));
    let x_programs = x
        .mcp
        .ok("amba_affiliate_my_programs_list", json!({"program_id": program_b}))
        .await?;
    assert_eq!(x_programs["enrollments"], json!([]));

    // Nothing changed.
    assert_eq!(snapshot(&owner_a.mcp, &program_a).await?, before);

    // Without a token: public tools only; every other tool answers HTTP 401.
    let anonymous = sys.mcp(None).await?;
    let all_tools = owner_a.mcp.tool_names().await?;
    let visible = anonymous.tool_names().await?;
    assert!(visible.iter().all(|t| PUBLIC.contains(&t.as_str())), "{visible:?}");
    assert!(visible.iter().any(|t| t == "amba_affiliate_signup"));
    let private: Vec<&String> = all_tools.iter().filter(|t| !PUBLIC.contains(&t.as_str())).collect();
    for expected in [
        "amba_affiliate_programs_create",
        "amba_affiliate_programs_update",
        "amba_affiliate_programs_get",
        "amba_affiliate_programs_list",
        "amba_affiliate_invite",
        "amba_affiliate_affiliate_approve",
        "amba_affiliate_affiliate_reject",
        "amba_affiliate_affiliate_remove",
        "amba_affiliate_affiliate_set_parent",
        "amba_affiliate_affiliates_list",
        "amba_affiliate_my_invites_list",
        "amba_affiliate_my_invite_accept",
        "amba_affiliate_my_invite_decline",
        "amba_affiliate_my_program_apply",
        "amba_affiliate_my_referral_generate",
        "amba_affiliate_my_programs_list",
        "amba_affiliate_tokens_list",
        "amba_affiliate_tokens_create",
        "amba_affiliate_tokens_revoke",
    ] {
        assert!(
            private.iter().any(|t| *t == expected),
            "{expected} missing from {private:?}"
        );
    }
    for tool in private {
        let err = anonymous
            .call_raw(tool, json!({"program_id": program_a, "enrollment_id": x_enrollment}))
            .await
            .err();
        assert!(
            err.is_some_and(|e| e.is_authorization_required()),
            "{tool} without a token must be HTTP 401"
        );
    }
    assert_eq!(snapshot(&owner_a.mcp, &program_a).await?, before);
    sys.stop().await
}

/// What the owner sees of its program and affiliates.
async fn snapshot(mcp: &amba_testkit::McpClient, program_id: &str) -> anyhow::Result<(Value, Value)> {
    let program = mcp
        .ok("amba_affiliate_programs_get", json!({"program_id": program_id}))
        .await?;
    let affiliates = mcp
        .ok("amba_affiliate_affiliates_list", json!({"program_id": program_id}))
        .await?;
    Ok((program["program"].clone(), affiliates))
}
