//! The event feed through MCP: a cursor resumes exactly after what was read, across a restart;
//! an affiliate reads only its own events; the resource template serves the same.

use crate::support::{Org, active_program, enroll, org, text};
use crate::system::TestSystem;
use amba_testkit::eventually;
use serde_json::{Value, json};
use std::time::Duration;

/// Reads `org`'s feed from `cursor` until it holds `at_least` events; returns (events, next_cursor).
async fn feed_until(org: &Org, args: Value, at_least: usize) -> anyhow::Result<(Vec<Value>, String)> {
    eventually(Duration::from_secs(20), "events in the feed", || {
        let args = args.clone();
        async move {
            let out = org.mcp.ok("amba_affiliate_events_list", args).await?;
            let events = out["events"].as_array().cloned().unwrap_or_default();
            Ok((events.len() >= at_least).then(|| (events, text(&out["next_cursor"]).to_owned())))
        }
    })
    .await
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| text(&e["type"])).collect()
}

fn sale(program: &str, id: &str, code: &Value) -> Value {
    json!({"program_id": program, "project_id": "web", "external_id": id, "amount_minor": 10_000,
           "currency": "USD", "code": code})
}

#[tokio::test]
async fn the_feed_resumes_after_its_cursor_across_a_restart_and_shows_affiliates_only_their_own() -> anyhow::Result<()>
{
    let sys = TestSystem::start().await?;
    let owner = org(&sys, "Owner").await?;
    let ann = org(&sys, "Ann").await?;
    let bob = org(&sys, "Bob").await?;
    let program = active_program(&owner, json!({})).await?;
    let ann_in = enroll(&owner, &ann, &program, None).await?;
    let bob_in = enroll(&owner, &bob, &program, None).await?;

    // Enrollments: invited then activated, for each.
    let (enrollments, _) = feed_until(&owner, json!({"program_id": program}), 4).await?;
    assert_eq!(
        types(&enrollments),
        [
            "enrollment.invited",
            "enrollment.activated",
            "enrollment.invited",
            "enrollment.activated"
        ]
    );
    // Two sales (the read model may need a moment for the codes).
    for (id, code) in [("s-1", &ann_in["code"]), ("s-2", &bob_in["code"])] {
        eventually(Duration::from_secs(10), "the sale recorded", || async {
            let out = owner
                .mcp
                .call("amba_affiliate_conversion_report", sale(&program, id, code))
                .await?;
            Ok((out.is_error != Some(true)).then_some(()))
        })
        .await?;
    }
    let (all, cursor) = feed_until(&owner, json!({"program_id": program}), 6).await?;
    assert_eq!(&types(&all)[4..], ["conversion.approved", "conversion.approved"]);
    assert_eq!(all[4]["payload"]["commission_minor"], 2_000);
    let ids: Vec<&str> = all.iter().map(|e| text(&e["event_id"])).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no event twice");

    // Pages: two at a time walk the same events, none skipped, none repeated.
    let mut walked = Vec::new();
    let mut page_cursor = String::new();
    loop {
        let page = owner
            .mcp
            .ok(
                "amba_affiliate_events_list",
                json!({"program_id": program, "cursor": page_cursor, "limit": 2}),
            )
            .await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            break;
        }
        walked.extend(events.iter().map(|e| text(&e["event_id"]).to_owned()));
        page_cursor = text(&page["next_cursor"]).to_owned();
    }
    assert_eq!(walked, ids);

    // Ann's feed: her enrollment and her sale, nothing of Bob's.
    let (ann_events, _) = feed_until(&ann, json!({}), 3).await?;
    assert_eq!(
        types(&ann_events),
        ["enrollment.invited", "enrollment.activated", "conversion.approved"]
    );
    let seen = serde_json::to_string(&ann_events)?;
    for hidden in [text(&bob_in["enrollment_id"]), bob.id.as_str(), text(&bob_in["code"])] {
        assert!(!seen.contains(hidden), "Ann's feed names Bob ({hidden}): {seen}");
    }
    // Filters and refusals.
    let approvals = owner
        .mcp
        .ok("amba_affiliate_events_list", json!({"types": ["conversion.approved"]}))
        .await?;
    assert_eq!(approvals["events"].as_array().map(Vec::len), Some(2));
    let bad = owner
        .mcp
        .err("amba_affiliate_events_list", json!({"types": ["conversion.exploded"]}))
        .await?;
    assert_eq!(bad["code"], "INVALID_ARGUMENT");
    let stranger = org(&sys, "Stranger").await?;
    let hidden = stranger
        .mcp
        .err("amba_affiliate_events_list", json!({"program_id": program}))
        .await?;
    assert_eq!(hidden["code"], "NOT_FOUND");
    let nothing = stranger.mcp.ok("amba_affiliate_events_list", json!({})).await?;
    assert_eq!(nothing["events"], json!([]));
    let forged = owner
        .mcp
        .err("amba_affiliate_events_list", json!({"cursor": "not-a-cursor!"}))
        .await?;
    assert_eq!(forged["code"], "INVALID_ARGUMENT");

    // After the cursor: nothing yet; then only what is new, across a restart.
    let idle = owner
        .mcp
        .ok(
            "amba_affiliate_events_list",
            json!({"program_id": program, "cursor": cursor}),
        )
        .await?;
    assert_eq!(
        (idle["events"].as_array().map(Vec::len), &idle["next_cursor"]),
        (Some(0), &json!(cursor))
    );
    let sys = sys.restarted().await?;
    let owner = Org {
        mcp: sys.mcp(Some(&owner.token)).await?,
        ..owner
    };
    eventually(Duration::from_secs(10), "a sale after the restart", || async {
        let out = owner
            .mcp
            .call(
                "amba_affiliate_conversion_report",
                sale(&program, "s-3", &ann_in["code"]),
            )
            .await?;
        Ok((out.is_error != Some(true)).then_some(()))
    })
    .await?;
    let (fresh, _) = feed_until(&owner, json!({"program_id": program, "cursor": cursor}), 1).await?;
    assert_eq!(types(&fresh), ["conversion.approved"]);
    assert!(fresh[0]["payload"]["conversion_id"].is_string());
    assert!(!ids.contains(&text(&fresh[0]["event_id"])));

    // The resource template serves the same.
    let peer = owner.mcp.peer();
    let templates = peer.list_all_resource_templates().await?;
    assert!(
        templates
            .iter()
            .any(|t| t.uri_template == "amba://programs/{program_id}/events")
    );
    let uri = format!("amba://programs/{program}/events?cursor={cursor}");
    let read = peer
        .read_resource(rmcp::model::ReadResourceRequestParams::new(uri.as_str()))
        .await?;
    let body = serde_json::to_value(&read)?;
    let served: Value = serde_json::from_str(text(&body["contents"][0]["text"]))?;
    assert_eq!(served["events"][0]["event_id"], fresh[0]["event_id"]);
    sys.stop().await
}
