//! Identity and programs over MCP, driven by rmcp's client over streamable HTTP.

use crate::support::signup;
use crate::system::TestSystem;
use amba_proto::Message;
use amba_proto::wire::ProgramChanged;
use amba_testkit::eventually;
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;

fn rules() -> Vec<Value> {
    vec![
        json!({"schema":1,"type":"percentage","bps":2000}),
        json!({"schema":1,"type":"flat","amount_minor":1500}),
        json!({"schema":1,"type":"recurring","bps":2000,"months":12}),
        json!({"schema":1,"type":"tiered","basis":"conversions","period":"month","tiers":[{"from":0,"bps":1000},{"from":10,"bps":1500}]}),
    ]
}

#[tokio::test]
async fn signup_create_activate_list_and_version_programs() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (account, owner) = signup(&sys, "Owner@Example.com", "Acme").await?;

    // The token is shown once, with a config pointing at this server.
    let token = account["token"].as_str().unwrap_or_default();
    assert!(token.starts_with("amba_pat_"));
    assert_eq!(
        account["mcp_config"]["mcpServers"]["amba-affiliate"]["url"],
        sys.mcp_url()
    );
    assert_eq!(
        account["mcp_config"]["mcpServers"]["amba-affiliate"]["headers"]["Authorization"],
        format!("Bearer {token}")
    );
    // Only the hash is stored.
    let enrollment = sys.service_pool("enrollment").await?;
    let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM tokens")
        .fetch_all(&enrollment)
        .await?;
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].contains(token) && stored[0].len() == 64);

    // One program per commission type, each a draft at version 1.
    let mut ids = Vec::new();
    for (i, rule) in rules().into_iter().enumerate() {
        let out = owner
            .ok(
                "amba_affiliate_programs_create",
                json!({"name": format!("Program {i}"), "currency": "usd", "commission": rule}),
            )
            .await?;
        let program = &out["program"];
        assert_eq!(program["status"], "draft");
        assert_eq!(program["currency"], "USD");
        assert_eq!(program["commission_version"], 1);
        assert_eq!(program["commission"], rule);
        assert_eq!(program["owner_org_id"], account["org_id"]);
        ids.push(program["program_id"].as_str().unwrap_or_default().to_owned());
    }

    // Launch, pause, resume.
    for status in ["active", "paused", "active"] {
        let out = owner
            .ok(
                "amba_affiliate_programs_update",
                json!({"program_id": ids[0], "status": status}),
            )
            .await?;
        assert_eq!(out["program"]["status"], status);
    }

    // Settings with defaults and explicit values round-trip.
    let out = owner
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": ids[1], "approval_mode": "manual", "hold_days": 0, "payout_schedule": "weekly",
                   "platform_fee_bps": 250, "payout_threshold_minor": 5000, "landing_url": "https://acme.example/pricing",
                   "multi_level": {"enabled": true, "levels_bps": [500, 200]}}),
        )
        .await?;
    let p = &out["program"];
    assert_eq!(
        (
            p["approval_mode"].as_str(),
            p["hold_days"].as_u64(),
            p["payout_schedule"].as_str()
        ),
        (Some("manual"), Some(0), Some("weekly"))
    );
    assert_eq!(
        (p["platform_fee_bps"].as_u64(), p["payout_threshold_minor"].as_i64()),
        (Some(250), Some(5000))
    );
    assert_eq!(p["landing_url"], "https://acme.example/pricing");
    assert_eq!(p["multi_level"], json!({"enabled": true, "levels_bps": [500, 200]}));
    assert_eq!(
        p["commission_version"], 1,
        "changing other settings keeps the rule version"
    );

    // Get and list (keyset pages of two).
    let got = owner
        .ok("amba_affiliate_programs_get", json!({"program_id": ids[0]}))
        .await?;
    assert_eq!(got["program"]["status"], "active");
    let page1 = owner.ok("amba_affiliate_programs_list", json!({"limit": 2})).await?;
    let cursor = page1["next_cursor"].as_str().unwrap_or_default().to_owned();
    assert!(!cursor.is_empty());
    let page2 = owner
        .ok("amba_affiliate_programs_list", json!({"limit": 2, "cursor": cursor}))
        .await?;
    assert!(page2.get("next_cursor").is_none(), "the last page has no cursor");
    let listed: Vec<&str> = [&page1, &page2]
        .iter()
        .flat_map(|p| p["programs"].as_array().into_iter().flatten())
        .filter_map(|p| p["program_id"].as_str())
        .collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());

    // A new rule is version 2; version 1 stays readable.
    let v2 = json!({"schema":1,"type":"percentage","bps":2500});
    let out = owner
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": ids[0], "commission": v2}),
        )
        .await?;
    assert_eq!(out["program"]["commission_version"], 2);
    assert_eq!(out["program"]["commission"], v2);
    let v1 = owner
        .ok(
            "amba_affiliate_programs_get",
            json!({"program_id": ids[0], "commission_version": 1}),
        )
        .await?;
    assert_eq!(v1["program"]["commission"], rules()[0]);
    assert_eq!(v1["program"]["commission_version"], 1);
    let current = owner
        .ok("amba_affiliate_programs_get", json!({"program_id": ids[0]}))
        .await?;
    let history: Vec<&Value> = current["commission_history"].as_array().into_iter().flatten().collect();
    assert_eq!(history.len(), 2);
    assert_eq!(
        (&history[0]["commission"], &history[1]["commission"]),
        (&rules()[0], &v2)
    );
    // Restating the same rule is not a new version.
    let same = owner
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": ids[0], "commission": v2}),
        )
        .await?;
    assert_eq!(same["program"]["commission_version"], 2);

    owner.close().await?;
    sys.stop().await
}

#[tokio::test]
async fn create_is_idempotent_on_its_key() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (_, owner) = signup(&sys, "idem@example.com", "Idem").await?;
    let args = json!({"name": "Once", "currency": "EUR", "commission": rules()[1], "idempotency_key": "create-1"});
    let first = owner.ok("amba_affiliate_programs_create", args.clone()).await?;
    let again = owner.ok("amba_affiliate_programs_create", args).await?;
    assert_eq!(first["program"]["program_id"], again["program"]["program_id"]);
    assert_eq!(
        (first["duplicate"].as_bool(), again["duplicate"].as_bool()),
        (Some(false), Some(true))
    );

    let err = owner
        .err(
            "amba_affiliate_programs_create",
            json!({"name": "Other", "currency": "EUR", "commission": rules()[1], "idempotency_key": "create-1"}),
        )
        .await?;
    assert_eq!(
        (err["code"].as_str(), err["status"].as_u64()),
        (Some("IDEMPOTENCY_MISMATCH"), Some(409))
    );
    let listed = owner.ok("amba_affiliate_programs_list", json!({})).await?;
    assert_eq!(listed["programs"].as_array().map(Vec::len), Some(1));

    owner.close().await?;
    sys.stop().await
}

#[tokio::test]
async fn bad_input_gets_typed_errors_and_changes_nothing() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (_, owner) = signup(&sys, "owner@example.com", "Owner").await?;
    let (_, other) = signup(&sys, "other@example.com", "Other").await?;
    let created = owner
        .ok(
            "amba_affiliate_programs_create",
            json!({"name": "Mine", "currency": "USD", "commission": rules()[0]}),
        )
        .await?;
    let id = created["program"]["program_id"].as_str().unwrap_or_default().to_owned();
    let snapshot = || async { owner.ok("amba_affiliate_programs_get", json!({"program_id": id})).await };
    let before = snapshot().await?;

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "amba_affiliate_programs_create",
            json!({"name": "X", "currency": "USD", "commission": {"schema":1,"type":"percentage","bps":"lots"}}),
            "INVALID_ARGUMENT",
        ),
        (
            "amba_affiliate_programs_create",
            json!({"name": "X", "currency": "USD", "commission": "{not json"}),
            "INVALID_ARGUMENT",
        ),
        (
            "amba_affiliate_programs_create",
            json!({"name": "X", "currency": "USD", "commission": {"schema":7,"type":"flat","amount_minor":1}}),
            "INVALID_ARGUMENT",
        ),
        (
            "amba_affiliate_programs_create",
            json!({"name": "X", "currency": "ZZZ", "commission": rules()[0]}),
            "INVALID_ARGUMENT",
        ),
        (
            "amba_affiliate_programs_create",
            json!({"name": " ", "currency": "USD", "commission": rules()[0]}),
            "INVALID_ARGUMENT",
        ),
        (
            "amba_affiliate_programs_update",
            json!({"program_id": id, "status": "paused"}),
            "CONFLICT",
        ),
        (
            "amba_affiliate_programs_update",
            json!({"program_id": id, "status": "gone"}),
            "INVALID_ARGUMENT",
        ),
        (
            "amba_affiliate_programs_update",
            json!({"program_id": id, "hold_days": 9999}),
            "INVALID_ARGUMENT",
        ),
        (
            "amba_affiliate_programs_update",
            json!({"program_id": id, "landing_url": "ftp://x"}),
            "INVALID_ARGUMENT",
        ),
        (
            "amba_affiliate_programs_update",
            json!({"program_id": "prg_nope"}),
            "INVALID_ARGUMENT",
        ),
        (
            "amba_affiliate_programs_get",
            json!({"program_id": id, "commission_version": 9}),
            "NOT_FOUND",
        ),
        (
            "amba_affiliate_programs_list",
            json!({"cursor": "%%%"}),
            "INVALID_ARGUMENT",
        ),
    ];
    for (tool, args, code) in cases {
        let err = owner.err(tool, args.clone()).await?;
        assert_eq!(err["code"], code, "{tool} {args}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(err["status"].as_u64().is_some());
    }

    // Another org can neither read nor change the program, and learns nothing about it.
    for (tool, args) in [
        ("amba_affiliate_programs_get", json!({"program_id": id})),
        (
            "amba_affiliate_programs_update",
            json!({"program_id": id, "status": "active"}),
        ),
        (
            "amba_affiliate_programs_update",
            json!({"program_id": id, "name": "Hijacked"}),
        ),
    ] {
        let err = other.err(tool, args).await?;
        assert_eq!(
            (err["code"].as_str(), err["status"].as_u64()),
            (Some("NOT_FOUND"), Some(404))
        );
    }
    let others = other.ok("amba_affiliate_programs_list", json!({})).await?;
    assert_eq!(others["programs"], json!([]));

    // Archived is final; the currency is fixed once active.
    owner
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": id, "status": "active"}),
        )
        .await?;
    let err = owner
        .err(
            "amba_affiliate_programs_update",
            json!({"program_id": id, "currency": "EUR"}),
        )
        .await?;
    assert_eq!(err["code"], "CONFLICT");
    owner
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": id, "status": "archived"}),
        )
        .await?;
    let err = owner
        .err(
            "amba_affiliate_programs_update",
            json!({"program_id": id, "status": "active"}),
        )
        .await?;
    assert_eq!(err["code"], "CONFLICT");

    let after = snapshot().await?;
    assert_eq!(after["program"]["name"], before["program"]["name"]);
    assert_eq!(after["program"]["currency"], "USD");
    assert_eq!(after["program"]["commission_version"], 1);
    assert_eq!(after["program"]["status"], "archived");
    let listed = owner.ok("amba_affiliate_programs_list", json!({})).await?;
    assert_eq!(
        listed["programs"].as_array().map(Vec::len),
        Some(1),
        "no failed create left a program behind"
    );

    owner.close().await?;
    other.close().await?;
    sys.stop().await
}

#[tokio::test]
async fn program_changes_are_published_once_each() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (_, owner) = signup(&sys, "events@example.com", "Events").await?;
    let created = owner
        .ok(
            "amba_affiliate_programs_create",
            json!({"name": "E", "currency": "JPY", "commission": rules()[1]}),
        )
        .await?;
    let id = created["program"]["program_id"].as_str().unwrap_or_default().to_owned();
    owner
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": id, "status": "active"}),
        )
        .await?;
    owner
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": id, "commission": rules()[0]}),
        )
        .await?;
    // A no-op update announces nothing.
    owner
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": id, "status": "active"}),
        )
        .await?;

    let stream_name = sys.bus.ns.events_stream("enrollment");
    eventually(Duration::from_secs(10), "three program events", || {
        let (js, name) = (sys.bus.js.clone(), stream_name.clone());
        async move { Ok((js.get_stream(&name).await?.info().await?.state.messages >= 3).then_some(())) }
    })
    .await?;
    let stream = sys.bus.js.get_stream(&stream_name).await?;

    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: sys.bus.ns.event_domain("program"),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(1))
        .messages()
        .await?;
    let mut seen = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        let event = ProgramChanged::decode(message.payload.clone())?;
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        let meta = event.meta.clone().unwrap_or_default();
        assert_eq!(msg_id, meta.event_id, "Nats-Msg-Id is the event id");
        assert!(meta.occurred_at_micros > 0);
        let program = event.program.clone().unwrap_or_default();
        seen.push((
            message.subject.to_string(),
            program.status,
            program.commission_version,
            event.commission_changed,
        ));
    }
    let ns = &sys.bus.ns;
    assert_eq!(
        seen,
        vec![
            (ns.event("program", "created"), "draft".to_owned(), 1, true),
            (ns.event("program", "updated"), "active".to_owned(), 1, false),
            (ns.event("program", "updated"), "active".to_owned(), 2, true),
        ]
    );
    owner.close().await?;
    sys.stop().await
}
