//! The authorization matrix, through MCP: owners reach only their programs, affiliates only their
//! own enrollments, public tools need no token and every other tool refuses a missing one.

use crate::attribution::{authed, grpc};
use crate::support::{Org, active_program, enroll, org, text};
use crate::system::TestSystem;
use amba_proto::wire as pb;
use amba_testkit::{McpClient, eventually};
use serde_json::{Value, json};
use std::time::Duration;

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
    // An affiliate is not an owner either, even of a program it is enrolled in: the program's
    // tools say so (it knows the program), and so do the tools on its own enrollment; another
    // affiliate's enrollment it finds nothing of.
    for (tool, args) in &owner_cases {
        let err = x.mcp.err(tool, args.clone()).await?;
        let expected = if args.get("program_id").is_some() || args["enrollment_id"] == json!(x_enrollment) {
            "FORBIDDEN"
        } else {
            "NOT_FOUND"
        };
        assert_eq!(err["code"], expected, "affiliate X as owner: {tool}");
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

/// Owner-only tools that take a program_id, with valid arguments for `program`, and the tool an
/// affiliate is pointed to instead (if any).
fn program_tools(program: &str, enrollment: &str, outsider: &str) -> Vec<(&'static str, Value, Option<&'static str>)> {
    let (from, to) = around_today();
    let range = json!({"program_id": program, "from": from, "to": to});
    vec![
        ("amba_affiliate_programs_get", json!({"program_id": program}), None),
        (
            "amba_affiliate_programs_update",
            json!({"program_id": program, "status": "paused"}),
            None,
        ),
        (
            "amba_affiliate_invite",
            json!({"program_id": program, "affiliate_org_id": outsider}),
            None,
        ),
        ("amba_affiliate_affiliates_list", json!({"program_id": program}), None),
        (
            "amba_affiliate_webhook_create",
            json!({"program_id": program, "url": "https://hooks.example/amba"}),
            None,
        ),
        ("amba_affiliate_webhook_list", json!({"program_id": program}), None),
        (
            "amba_affiliate_conversions_list",
            json!({"program_id": program}),
            Some("amba_affiliate_my_conversions_list"),
        ),
        (
            "amba_affiliate_conversions_export",
            range.clone(),
            Some("amba_affiliate_my_conversions_list"),
        ),
        (
            "amba_affiliate_commissions_export",
            range,
            Some("amba_affiliate_my_balance_get"),
        ),
        (
            "amba_affiliate_commission_release",
            json!({"program_id": program, "enrollment_id": enrollment, "reason": "early"}),
            None,
        ),
        (
            "amba_affiliate_analytics_get",
            json!({"program_id": program}),
            Some("amba_affiliate_my_stats_get"),
        ),
        (
            "amba_affiliate_leaderboard_get",
            json!({"program_id": program}),
            Some("amba_affiliate_my_stats_get"),
        ),
        (
            "amba_affiliate_program_funding_setup",
            json!({"program_id": program}),
            None,
        ),
        (
            "amba_affiliate_payout_run",
            json!({"program_id": program, "dry_run": true}),
            Some("amba_affiliate_my_payout_request"),
        ),
        (
            "amba_affiliate_payouts_list",
            json!({"program_id": program}),
            Some("amba_affiliate_my_payout_request"),
        ),
        (
            "amba_affiliate_conversion_report",
            json!({"program_id": program, "project_id": "web", "external_id": "o-refused",
                   "amount_minor": 10_000, "currency": "USD"}),
            None,
        ),
    ]
}

/// Tools with a required program_id that are not in [`program_tools`], and why.
const NOT_OWNER_ONLY: &[(&str, &str)] = &[
    ("amba_affiliate_touchpoint_record", "public"),
    ("amba_affiliate_my_program_apply", "the affiliate's own"),
];

/// The tools the caller sees whose input schema requires `program_id`.
async fn tools_requiring_program_id(mcp: &McpClient) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = mcp
        .tools()
        .await?
        .into_iter()
        .filter(|tool| {
            tool.input_schema
                .get("required")
                .and_then(Value::as_array)
                .is_some_and(|required| required.iter().any(|r| r == "program_id"))
        })
        .map(|tool| tool.name.to_string())
        .collect();
    names.sort();
    Ok(names)
}

/// An export range holding everything a test books today: half a year back to tomorrow.
fn around_today() -> (String, String) {
    let today = chrono::Utc::now().date_naive();
    let day = |d: chrono::NaiveDate| d.format("%Y-%m-%d").to_string();
    (day(today - chrono::Days::new(180)), day(today + chrono::Days::new(1)))
}

/// Everything the owner can see of its program, to prove refused calls changed nothing.
async fn owner_view(owner: &McpClient, program: &str) -> anyhow::Result<Vec<Value>> {
    let mut view = Vec::new();
    for (tool, args) in [
        ("amba_affiliate_programs_get", json!({"program_id": program})),
        ("amba_affiliate_affiliates_list", json!({"program_id": program})),
        ("amba_affiliate_conversions_list", json!({"program_id": program})),
        ("amba_affiliate_analytics_get", json!({"program_id": program})),
        ("amba_affiliate_payouts_list", json!({"program_id": program})),
        ("amba_affiliate_commissions_export", {
            let (from, to) = around_today();
            json!({"program_id": program, "from": from, "to": to})
        }),
    ] {
        view.push(owner.ok(tool, args).await?);
    }
    Ok(view)
}

const WAIT: Duration = Duration::from_secs(15);

/// Waits until `who`'s refusal by `tool` is no longer NOT_FOUND: the service's read model of
/// enrollments has caught up with its enrollment.
async fn refused_as_affiliate(who: &Org, tool: &str, args: &Value) -> anyhow::Result<()> {
    eventually(WAIT, "the enrollment in the service's read model", || async {
        let err = who.mcp.err(tool, args.clone()).await?;
        Ok((err["code"] != "NOT_FOUND").then_some(()))
    })
    .await
}

#[tokio::test]
async fn owner_only_tools_tell_an_affiliate_why_and_an_outsider_nothing() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let owner = org(&sys, "Owner").await?;
    let ann = org(&sys, "Ann").await?;
    let pia = org(&sys, "Pia").await?;
    let outsider = org(&sys, "Outsider").await?;
    let program = active_program(&owner, json!({"approval_mode": "manual"})).await?;
    let ann_in = enroll(&owner, &ann, &program, None).await?;
    let ann_enrollment = text(&ann_in["enrollment_id"]).to_owned();
    // Pia is invited and has not answered: a pending enrollment counts too.
    let pia_in = owner
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program, "affiliate_org_id": pia.id}),
        )
        .await?;
    assert_eq!(pia_in["status"], "pending");
    let pia_enrollment = text(&pia_in["enrollment_id"]).to_owned();
    // Reports resolve codes from attribution's read model, built from events: wait for it.
    let attribution = sys.service_pool("attribution").await?;
    eventually(WAIT, "Ann's active code and enrollment in attribution", || async {
        let known: Option<(i64,)> = sqlx::query_as(
            "SELECT 1::bigint FROM codes_view c JOIN enrollments_view e ON e.enrollment_id = c.enrollment_id \
             WHERE c.code = $1 AND c.status = 'active' AND e.status = 'active'",
        )
        .bind(text(&ann_in["code"]))
        .fetch_optional(&attribution)
        .await?;
        Ok(known.map(|_| ()))
    })
    .await?;
    let sale = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            json!({"program_id": program, "project_id": "web", "external_id": "o-1",
                   "amount_minor": 10_000, "currency": "USD", "code": ann_in["code"]}),
        )
        .await?;
    assert_eq!(sale["enrollment_id"], json!(ann_enrollment));
    assert_eq!(sale["status"], "pending");
    let conversion = text(&sale["conversion_id"]).to_owned();

    // The table covers every tool that requires a program_id, but for the listed exceptions.
    let tools = program_tools(&program, &ann_enrollment, &outsider.id);
    let mut covered: Vec<String> = tools
        .iter()
        .map(|(tool, _, _)| (*tool).to_owned())
        .chain(NOT_OWNER_ONLY.iter().map(|(tool, _)| (*tool).to_owned()))
        .collect();
    covered.sort();
    assert_eq!(tools_requiring_program_id(&owner.mcp).await?, covered);

    // The services' read models of enrollments catch up (attribution, commission, and payout
    // through the ledger's), then every call is made once.
    for who in [&ann, &pia] {
        refused_as_affiliate(who, "amba_affiliate_conversions_list", &json!({"program_id": program})).await?;
        eventually(WAIT, "the enrollment in the ledger's read model", || async {
            let balance = who
                .mcp
                .call("amba_affiliate_my_balance_get", json!({"program_id": program}))
                .await?;
            Ok((balance.is_error != Some(true)).then_some(()))
        })
        .await?;
    }
    // The sale is in the analytics too (the ledger books it in its own time).
    eventually(WAIT, "the sale in the analytics", || async {
        let analytics = owner
            .mcp
            .ok("amba_affiliate_analytics_get", json!({"program_id": program}))
            .await?;
        Ok((analytics["totals"]["conversions"] == json!(1)).then_some(()))
    })
    .await?;
    let before = owner_view(&owner.mcp, &program).await?;

    for (tool, args, instead) in &tools {
        let message = match instead {
            Some(instead) => format!("this tool is for the program's owner; as an affiliate, use {instead}"),
            None => "this tool is for the program's owner".to_owned(),
        };
        for who in [&ann, &pia] {
            let err = who.mcp.err(tool, args.clone()).await?;
            assert_eq!(
                (err["code"].as_str(), err["status"].as_u64(), err["message"].as_str()),
                (Some("FORBIDDEN"), Some(403), Some(message.as_str())),
                "{tool}"
            );
            assert_eq!(err["details"]["instead"].as_str(), *instead, "{tool}");
        }
        let err = outsider.mcp.err(tool, args.clone()).await?;
        assert_eq!(
            (err["code"].as_str(), err["status"].as_u64(), err["message"].as_str()),
            (
                Some("NOT_FOUND"),
                Some(404),
                Some(format!("program {program} not found").as_str())
            ),
            "outsider: {tool}"
        );
        assert!(err.get("details").is_none(), "outsider: {tool} {err}");
    }

    // Reports over gRPC, one at a time and streamed, are refused alike (attribution's writer).
    let mut client = grpc(&sys).await?;
    let grpc_report = |external_id: &str| pb::ReportConversionRequest {
        program_id: program.clone(),
        project_id: "web".into(),
        external_id: external_id.to_owned(),
        amount_minor: 10_000,
        currency: "USD".into(),
        ..Default::default()
    };
    let not_found = format!("program {program} not found");
    for (who, status, code, message) in [
        (
            &ann,
            tonic::Code::PermissionDenied,
            "FORBIDDEN",
            "this tool is for the program's owner",
        ),
        (
            &pia,
            tonic::Code::PermissionDenied,
            "FORBIDDEN",
            "this tool is for the program's owner",
        ),
        (&outsider, tonic::Code::NotFound, "NOT_FOUND", not_found.as_str()),
    ] {
        let refused = client
            .report_conversion(authed(&who.token, grpc_report("g-refused"))?)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a report by {} was recorded", who.id))?;
        let details: Value = serde_json::from_slice(refused.details())?;
        assert_eq!(
            (refused.code(), refused.message(), &details["error"]["code"]),
            (status, message, &json!(code)),
            "ReportConversion by {}",
            who.id
        );
        let streamed = client
            .report_conversions(authed(
                &who.token,
                futures::stream::iter(vec![grpc_report("g-s1"), grpc_report("g-s2")]),
            )?)
            .await?
            .into_inner();
        let outcomes: Vec<(String, String)> = streamed
            .outcomes
            .into_iter()
            .map(|o| match o.result {
                Some(pb::report_outcome::Result::Error(e)) => (e.code, e.message),
                other => (format!("{other:?}"), String::new()),
            })
            .collect();
        assert_eq!(
            outcomes,
            vec![(code.to_owned(), message.to_owned()); 2],
            "ReportConversions by {}",
            who.id
        );
    }

    // The owner's tools on an enrollment: its own affiliate (it knows the id) is told why and,
    // where it has its own tool for the need, which; anyone else finds nothing.
    let set_code = |enrollment: &str| json!({"enrollment_id": enrollment, "code": "taken-over"});
    let enrollment_tools = |enrollment: &str, pending_invite: bool| {
        vec![
            (
                "amba_affiliate_affiliate_approve",
                json!({"enrollment_id": enrollment}),
                pending_invite.then_some("amba_affiliate_my_invite_accept"),
            ),
            (
                "amba_affiliate_affiliate_reject",
                json!({"enrollment_id": enrollment}),
                pending_invite.then_some("amba_affiliate_my_invite_decline"),
            ),
            (
                "amba_affiliate_affiliate_remove",
                json!({"enrollment_id": enrollment}),
                None,
            ),
            (
                "amba_affiliate_affiliate_set_parent",
                json!({"enrollment_id": enrollment}),
                None,
            ),
            (
                "amba_affiliate_affiliate_code_set",
                set_code(enrollment),
                Some("amba_affiliate_my_referral_generate"),
            ),
        ]
    };
    for (mine, enrollment, others, pending_invite) in [
        (&ann, &ann_enrollment, [&pia, &outsider], false),
        (&pia, &pia_enrollment, [&ann, &outsider], true),
    ] {
        for (tool, args, instead) in enrollment_tools(enrollment, pending_invite) {
            let err = mine.mcp.err(tool, args.clone()).await?;
            let message = match instead {
                Some(instead) => format!("this tool is for the program's owner; as an affiliate, use {instead}"),
                None => "this tool is for the program's owner".to_owned(),
            };
            assert_eq!(
                (err["code"].as_str(), err["status"].as_u64(), err["message"].as_str()),
                (Some("FORBIDDEN"), Some(403), Some(message.as_str())),
                "{tool} on its own enrollment"
            );
            assert_eq!(err["details"]["instead"].as_str(), instead, "{tool}");
            for other in others {
                let err = other.mcp.err(tool, args.clone()).await?;
                assert_eq!(
                    (err["code"].as_str(), err["message"].as_str()),
                    (
                        Some("NOT_FOUND"),
                        Some(format!("enrollment {enrollment} not found").as_str())
                    ),
                    "{tool} on another's enrollment"
                );
                assert!(err.get("details").is_none(), "{tool} {err}");
            }
        }
    }

    // The tools on one of the program's conversions, likewise.
    let conversion_tools = [
        (
            "amba_affiliate_conversion_approve",
            json!({"conversion_id": conversion}),
        ),
        ("amba_affiliate_conversion_reject", json!({"conversion_id": conversion})),
        (
            "amba_affiliate_conversion_assign",
            json!({"conversion_id": conversion, "enrollment_id": ann_enrollment}),
        ),
        (
            "amba_affiliate_conversion_clawback",
            json!({"conversion_id": conversion, "reason": "refund"}),
        ),
    ];
    for (tool, args) in &conversion_tools {
        for who in [&ann, &pia] {
            let err = who.mcp.err(tool, args.clone()).await?;
            assert_eq!(
                (err["code"].as_str(), err["message"].as_str()),
                (Some("FORBIDDEN"), Some("this tool is for the program's owner")),
                "{tool}"
            );
        }
        let err = outsider.mcp.err(tool, args.clone()).await?;
        assert_eq!(
            (err["code"].as_str(), err["message"].as_str()),
            (
                Some("NOT_FOUND"),
                Some(format!("conversion {conversion} not found").as_str())
            ),
            "outsider: {tool}"
        );
    }
    let decide = json!({"decision": "approve", "conversion_ids": [conversion]});
    let refused = ann.mcp.ok("amba_affiliate_conversions_decide", decide.clone()).await?;
    assert_eq!(
        (
            &refused["applied"],
            &refused["outcomes"][0]["outcome"],
            &refused["outcomes"][0]["error_code"]
        ),
        (
            &json!(0),
            &json!("forbidden: this tool is for the program's owner"),
            &json!("FORBIDDEN")
        )
    );
    let hidden = outsider.mcp.ok("amba_affiliate_conversions_decide", decide).await?;
    assert_eq!(
        (&hidden["outcomes"][0]["outcome"], &hidden["outcomes"][0]["error_code"]),
        (&json!("not found"), &json!("NOT_FOUND"))
    );

    // Nothing changed: the program, its affiliates, conversions, figures, runs and ledger.
    assert_eq!(owner_view(&owner.mcp, &program).await?, before);
    sys.stop().await
}
