//! Bounded replies: every list tool takes `limit` (1-200, default 50) and `cursor` and returns
//! `next_cursor`; paging through more items than a page holds yields each exactly once. A payout
//! run's items are bounded too: a page of runs shows each run's first 10 items, and one run's
//! items page on their own.

use crate::payouts::{enable_payouts, fund, onboard};
use crate::support::{Org, active_program, enroll, org, text};
use crate::system::TestSystem;
use amba_testkit::{McpClient, eventually};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const LIMIT: usize = 2;

/// Every list tool, with the arguments it needs besides `cursor` and `limit` set aside.
const LIST_TOOLS: &[&str] = &[
    "amba_affiliate_programs_list",
    "amba_affiliate_affiliates_list",
    "amba_affiliate_my_invites_list",
    "amba_affiliate_my_programs_list",
    "amba_affiliate_tokens_list",
    "amba_affiliate_conversions_list",
    "amba_affiliate_my_conversions_list",
    "amba_affiliate_my_balance_get",
    "amba_affiliate_my_notifications_list",
    "amba_affiliate_payouts_list",
    "amba_affiliate_events_list",
];

/// Pages through `tool` `LIMIT` at a time; the ids (`id` of each element of `field`) in order.
/// Every page but the last is full, and the last one says so by having no `next_cursor`.
async fn all_pages(client: &McpClient, tool: &str, args: Value, field: &str, id: &str) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut call = args.clone();
        call["limit"] = json!(LIMIT);
        if let Some(cursor) = &cursor {
            call["cursor"] = json!(cursor);
        }
        let page = client.ok(tool, call).await?;
        let items = page[field].as_array().cloned().unwrap_or_default();
        anyhow::ensure!(items.len() <= LIMIT, "{tool}: a page larger than limit: {page}");
        ids.extend(items.iter().map(|i| text(&i[id]).to_owned()));
        match page["next_cursor"].as_str().filter(|c| !c.is_empty()) {
            Some(next) => {
                anyhow::ensure!(
                    items.len() == LIMIT,
                    "{tool}: a page short of limit before the end: {page}"
                );
                cursor = Some(next.to_owned());
            }
            None => return Ok(ids),
        }
    }
    anyhow::bail!("{tool}: more than 100 pages")
}

/// Pages through `tool` and checks the ids are exactly `expected`, each once.
async fn pages_hold_exactly(
    client: &McpClient,
    tool: &str,
    args: Value,
    (field, id): (&str, &str),
    expected: &[String],
) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(expected.len() > LIMIT, "{tool}: the test needs more items than a page");
    let ids = all_pages(client, tool, args, field, id).await?;
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{tool}: an item was repeated: {ids:?}");
    let wanted: HashSet<&String> = expected.iter().collect();
    assert_eq!(unique, wanted, "{tool}: items lost or foreign");
    Ok(ids)
}

fn ids(value: &Value, field: &str, id: &str) -> Vec<String> {
    value[field]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| text(&i[id]).to_owned())
        .collect()
}

/// Reports a sale with `code` once attribution knows the code; its conversion id.
async fn sale(owner: &Org, program: &str, external_id: &str, code: &str) -> anyhow::Result<String> {
    let reported = eventually(WAIT, "the code is known to attribution", || async {
        Ok(owner
            .mcp
            .ok(
                "amba_affiliate_conversion_report",
                json!({"program_id": program, "project_id": "shop", "external_id": external_id,
                       "amount_minor": 10_000, "currency": "USD", "code": code}),
            )
            .await
            .ok())
    })
    .await?;
    Ok(text(&reported["conversion_id"]).to_owned())
}

#[tokio::test]
async fn every_list_tool_states_its_bounds_and_refuses_larger_pages() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let acme = org(&sys, "Bounds").await?;
    let tools = acme.mcp.tools().await?;
    let listing: Vec<&str> = tools
        .iter()
        .map(|t| t.name.as_ref())
        // A program has at most 10 webhook endpoints: that list is always one page.
        .filter(|n| n.ends_with("_list") && *n != "amba_affiliate_webhook_list")
        .collect();
    for name in &listing {
        assert!(
            LIST_TOOLS.contains(name),
            "{name} is a list tool this test does not know"
        );
    }
    for name in LIST_TOOLS {
        let tool = tools
            .iter()
            .find(|t| t.name == *name)
            .ok_or_else(|| anyhow::anyhow!("no tool {name}"))?;
        let limit = &tool.input_schema["properties"]["limit"];
        assert_eq!(
            (limit["minimum"].as_f64(), limit["maximum"].as_f64()),
            (Some(1.0), Some(200.0)),
            "{name}: {limit}"
        );
        assert!(text(&limit["description"]).contains("default 50"), "{name}: {limit}");
        assert!(
            tool.input_schema["properties"]["cursor"].is_object(),
            "{name} takes no cursor"
        );
        let output = tool
            .output_schema
            .as_ref()
            .and_then(|s| s.get("properties"))
            .map(|p| p["next_cursor"].is_object());
        assert_eq!(output, Some(true), "{name} returns no next_cursor");

        let mut args = json!({"limit": 201});
        let required = tool.input_schema.get("required").and_then(Value::as_array);
        for required in required.into_iter().flatten() {
            args[text(required)] = json!("prg_00000000000000000000000000000000");
        }
        let err = acme.mcp.err(name, args).await?;
        assert_eq!(
            (err["code"].as_str(), err["details"]["argument"].as_str()),
            (Some("INVALID_ARGUMENT"), Some("limit")),
            "{name}: {err}"
        );
    }
    sys.stop().await
}

#[tokio::test]
async fn paging_through_every_list_loses_and_repeats_nothing() -> anyhow::Result<()> {
    // The payout runs below wait on dry runs, which spend the payouts budget (20, then 6/min).
    let sys = TestSystem::with_stripe(&[("ORG_PAYOUTS_LIVE", "true"), ("AMBA_PAYOUTS_PER_ORG", "10000,100/s")]).await?;
    let owner = org(&sys, "PageOwner").await?;
    let aff = org(&sys, "PageAff").await?;

    // Programs: five of them.
    let mut programs = Vec::new();
    for i in 0..5 {
        programs.push(active_program(&owner, json!({"name": format!("Program {i}"), "hold_days": 0})).await?);
    }
    pages_hold_exactly(
        &owner.mcp,
        "amba_affiliate_programs_list",
        json!({}),
        ("programs", "program_id"),
        &programs,
    )
    .await?;

    // Invitations to all five, then the enrollments once accepted.
    let mut invited = Vec::new();
    for program in &programs {
        let invite = owner
            .mcp
            .ok(
                "amba_affiliate_invite",
                json!({"program_id": program, "affiliate_org_id": aff.id}),
            )
            .await?;
        invited.push(text(&invite["enrollment_id"]).to_owned());
    }
    pages_hold_exactly(
        &aff.mcp,
        "amba_affiliate_my_invites_list",
        json!({}),
        ("invites", "enrollment_id"),
        &invited,
    )
    .await?;
    let mut codes = Vec::new();
    for enrollment in &invited {
        let accepted = aff
            .mcp
            .ok("amba_affiliate_my_invite_accept", json!({"enrollment_id": enrollment}))
            .await?;
        codes.push(text(&accepted["code"]).to_owned());
    }
    pages_hold_exactly(
        &aff.mcp,
        "amba_affiliate_my_programs_list",
        json!({"status": "active"}),
        ("enrollments", "enrollment_id"),
        &invited,
    )
    .await?;

    // Eleven affiliates in the first program: more than a page of runs shows of a run's items.
    let mut members = vec![invited[0].clone()];
    let mut member_codes = vec![codes[0].clone()];
    for i in 0..10 {
        let other = org(&sys, &format!("PageX{i}")).await?;
        let enrolled = enroll(&owner, &other, &programs[0], None).await?;
        members.push(text(&enrolled["enrollment_id"]).to_owned());
        member_codes.push(text(&enrolled["code"]).to_owned());
    }
    pages_hold_exactly(
        &owner.mcp,
        "amba_affiliate_affiliates_list",
        json!({"program_id": programs[0]}),
        ("enrollments", "enrollment_id"),
        &members,
    )
    .await?;

    // Tokens: the signup's and four more.
    let mut tokens: Vec<String> = ids(
        &owner.mcp.ok("amba_affiliate_tokens_list", json!({})).await?,
        "tokens",
        "token_id",
    );
    for i in 0..4 {
        let created = owner
            .mcp
            .ok("amba_affiliate_tokens_create", json!({"name": format!("backend {i}")}))
            .await?;
        tokens.push(text(&created["token_id"]).to_owned());
    }
    let listed = pages_hold_exactly(
        &owner.mcp,
        "amba_affiliate_tokens_list",
        json!({}),
        ("tokens", "token_id"),
        &tokens,
    )
    .await?;
    assert_eq!(listed, tokens, "tokens are listed oldest first");

    // Conversions: five of the affiliate's in the first program, one of every other member's.
    let mut mine = Vec::new();
    for (i, code) in codes.iter().enumerate() {
        mine.push(sale(&owner, &programs[i], &format!("aff-{i}"), code).await?);
    }
    let mut all_in_first = vec![mine[0].clone()];
    for (i, code) in member_codes.iter().enumerate().skip(1) {
        all_in_first.push(sale(&owner, &programs[0], &format!("member-{i}"), code).await?);
    }
    pages_hold_exactly(
        &owner.mcp,
        "amba_affiliate_conversions_list",
        json!({"program_id": programs[0]}),
        ("conversions", "conversion_id"),
        &all_in_first,
    )
    .await?;
    pages_hold_exactly(
        &aff.mcp,
        "amba_affiliate_my_conversions_list",
        json!({}),
        ("conversions", "conversion_id"),
        &mine,
    )
    .await?;

    // Balances: one per program; every page carries the totals over all five.
    let everything = eventually(WAIT, "a booked balance in each of the five programs", || async {
        let all = aff
            .mcp
            .ok("amba_affiliate_my_balance_get", json!({"limit": 200}))
            .await?;
        let booked = all["balances"]
            .as_array()
            .is_some_and(|b| b.len() == 5 && b.iter().all(|b| b["payable_minor"].as_i64() == Some(2_000)));
        Ok(booked.then_some(all))
    })
    .await?;
    assert_eq!(everything["payable_minor"], 10_000);
    pages_hold_exactly(
        &aff.mcp,
        "amba_affiliate_my_balance_get",
        json!({}),
        ("balances", "enrollment_id"),
        &invited,
    )
    .await?;
    let page = aff.mcp.ok("amba_affiliate_my_balance_get", json!({"limit": 2})).await?;
    assert_eq!(page["balances"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["payable_minor"], 10_000, "the sums cover every page: {page}");

    // E-mails: per program an invitation, an activation and an approval.
    let log = eventually(WAIT, "fifteen e-mails in the affiliate's log", || async {
        let log = aff
            .mcp
            .ok("amba_affiliate_my_notifications_list", json!({"limit": 200}))
            .await?;
        Ok((log["notifications"].as_array().map(Vec::len) == Some(15)).then_some(log))
    })
    .await?;
    let notifications = ids(&log, "notifications", "notification_id");
    pages_hold_exactly(
        &aff.mcp,
        "amba_affiliate_my_notifications_list",
        json!({}),
        ("notifications", "notification_id"),
        &notifications,
    )
    .await?;

    // Payout runs: three live runs of the first program, each of eleven items. A run that would pay
    // nobody stores no run, so each run pays the affiliate (the only one with a payout account) a
    // new sale's commission; the ten others are skipped (no payout account).
    enable_payouts(&sys, &owner, &[])?;
    onboard(&sys, &aff).await?;
    fund(&sys, &owner, &programs[0], "visa", "4242").await?;
    let dry_run = |paying: bool| {
        let owner = &owner;
        let program = &programs[0];
        let aff_id = aff.id.clone();
        async move {
            let dry = owner
                .mcp
                .ok(
                    "amba_affiliate_payout_run",
                    json!({"program_id": program, "dry_run": true}),
                )
                .await?;
            let items = dry["items"].as_array().cloned().unwrap_or_default();
            let planned: Vec<&Value> = items.iter().filter(|i| i["status"] == "planned").collect();
            // Paying: all eleven listed, only the affiliate planned. Paid: nothing payable of the
            // affiliate's (then not listed), nobody to pay.
            let done = if paying {
                dry["outcome"] == "planned"
                    && items.len() == 11
                    && planned.len() == 1
                    && planned[0]["affiliate_org_id"] == aff_id.as_str()
                    && planned[0]["gross_minor"] == 2_000
            } else {
                dry["outcome"] == "nothing_to_pay"
                    && planned.is_empty()
                    && items
                        .iter()
                        .all(|i| i["affiliate_org_id"] != aff_id.as_str() || i["payable_minor"] == 0)
            };
            Ok::<_, anyhow::Error>(done.then_some(()))
        }
    };
    let mut runs = Vec::new();
    for (n, key) in ["run-1", "run-2", "run-3"].into_iter().enumerate() {
        if n > 0 {
            eventually(WAIT, "the affiliate was paid: nothing to pay", || dry_run(false)).await?;
            sale(&owner, &programs[0], &format!("aff-0-{key}"), &codes[0]).await?;
        }
        eventually(WAIT, "eleven affiliates, the affiliate's new sale to pay", || {
            dry_run(true)
        })
        .await?;
        let run = owner
            .mcp
            .ok(
                "amba_affiliate_payout_run",
                json!({"program_id": programs[0], "idempotency_key": key}),
            )
            .await?;
        assert_eq!(
            (
                text(&run["outcome"]),
                run["items"].as_array().map(Vec::len),
                &run["items_total"]
            ),
            ("recorded", Some(11), &json!(11)),
            "{run}"
        );
        let items = run["items"].as_array().cloned().unwrap_or_default();
        for item in &items {
            let expected = if item["affiliate_org_id"] == aff.id.as_str() {
                "paid"
            } else {
                "skipped"
            };
            assert_eq!(item["status"], expected, "{run}");
        }
        assert_eq!(items.iter().filter(|i| i["status"] == "paid").count(), 1, "{run}");
        assert!(!text(&run["payout_run_id"]).is_empty(), "a stored run: {run}");
        runs.push(text(&run["payout_run_id"]).to_owned());
    }
    let listed = pages_hold_exactly(
        &owner.mcp,
        "amba_affiliate_payouts_list",
        json!({"program_id": programs[0]}),
        ("runs", "payout_run_id"),
        &runs,
    )
    .await?;
    assert_eq!(
        listed,
        runs.iter().rev().cloned().collect::<Vec<_>>(),
        "runs are listed newest first"
    );

    // In a page of runs each shows its first ten items and where the rest start.
    let page = owner
        .mcp
        .ok(
            "amba_affiliate_payouts_list",
            json!({"program_id": programs[0], "limit": 1}),
        )
        .await?;
    let run = &page["runs"][0];
    assert_eq!(
        (run["items"].as_array().map(Vec::len), &run["items_total"]),
        (Some(10), &json!(11)),
        "{run}"
    );
    let first_ten = ids(run, "items", "payout_item_id");
    let rest = owner
        .mcp
        .ok(
            "amba_affiliate_payouts_list",
            json!({"program_id": programs[0], "payout_run_id": run["payout_run_id"], "cursor": run["items_next_cursor"]}),
        )
        .await?;
    let last = ids(&rest["runs"][0], "items", "payout_item_id");
    assert_eq!(last.len(), 1, "{rest}");
    assert!(
        rest["runs"][0]["items_next_cursor"].is_null() && rest["next_cursor"] == "",
        "{rest}"
    );

    // One run's items page on their own, and match what the run showed.
    let mut paged = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let page = owner
            .mcp
            .ok(
                "amba_affiliate_payouts_list",
                json!({"program_id": programs[0], "payout_run_id": run["payout_run_id"], "limit": LIMIT, "cursor": cursor}),
            )
            .await?;
        paged.extend(ids(&page["runs"][0], "items", "payout_item_id"));
        assert_eq!(page["runs"][0]["items_total"], 11);
        match page["next_cursor"].as_str().filter(|c| !c.is_empty()) {
            Some(next) => cursor = json!(next),
            None => break,
        }
    }
    assert_eq!(paged, [first_ten, last].concat(), "items in order, each once");

    // A run of another program is not found through this one.
    let err = owner
        .mcp
        .err(
            "amba_affiliate_payouts_list",
            json!({"program_id": programs[1], "payout_run_id": run["payout_run_id"]}),
        )
        .await?;
    assert_eq!(err["code"], "NOT_FOUND");
    sys.stop().await
}
