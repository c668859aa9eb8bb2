//! Invites, applications, approvals, codes and the sponsor tree, through MCP.

use crate::support::{active_program, enroll, org, text};
use amba_proto::Message;
use amba_proto::wire::{CodeChanged, EnrollmentChanged};
use amba_testkit::{TestSystem, eventually};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn invite_accept_apply_approve_and_rotate() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let owner = org(&sys, "Owner").await?;
    let ann = org(&sys, "Ann").await?;
    let bob = org(&sys, "Bob").await?;
    let program = active_program(&owner, json!({})).await?;

    // Invite: pending, with an unguessable URL-safe code.
    let invited = owner
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program, "affiliate_org_id": ann.id, "idempotency_key": "inv-ann"}),
        )
        .await?;
    assert_eq!(invited["status"], "pending");
    let first_code = text(&invited["code"]).to_owned();
    assert!(first_code.len() == 12 && first_code.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    assert_eq!(invited["enrollment"]["origin"], "invite");

    // A retried invite returns the same enrollment; a second invite without the key is refused.
    let retried = owner
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program, "affiliate_org_id": ann.id, "idempotency_key": "inv-ann"}),
        )
        .await?;
    assert_eq!(
        (retried["enrollment_id"].clone(), retried["duplicate"].as_bool()),
        (invited["enrollment_id"].clone(), Some(true))
    );
    let again = owner
        .mcp
        .err(
            "amba_affiliate_invite",
            json!({"program_id": program, "affiliate_org_id": ann.id}),
        )
        .await?;
    assert_eq!(again["code"], "CONFLICT");

    // The affiliate sees the invitation and accepts it.
    let invites = ann.mcp.ok("amba_affiliate_my_invites_list", json!({})).await?;
    assert_eq!(invites["invites"][0]["enrollment_id"], invited["enrollment_id"]);
    assert_eq!(invites["invites"][0]["program_id"], json!(program));
    assert_eq!(invites["invites"][0]["program_name"], "Partners");
    let accepted = ann
        .mcp
        .ok(
            "amba_affiliate_my_invite_accept",
            json!({"enrollment_id": invited["enrollment_id"]}),
        )
        .await?;
    assert_eq!(
        (accepted["status"].as_str(), accepted["code"].as_str()),
        (Some("active"), Some(first_code.as_str()))
    );
    assert_eq!(
        ann.mcp.ok("amba_affiliate_my_invites_list", json!({})).await?["invites"],
        json!([])
    );
    // Accepting twice, or the owner approving an active enrollment, is a conflict.
    let twice = ann
        .mcp
        .err(
            "amba_affiliate_my_invite_accept",
            json!({"enrollment_id": invited["enrollment_id"]}),
        )
        .await?;
    assert_eq!(twice["code"], "CONFLICT");
    let approve_active = owner
        .mcp
        .err(
            "amba_affiliate_affiliate_approve",
            json!({"enrollment_id": invited["enrollment_id"]}),
        )
        .await?;
    assert_eq!(approve_active["code"], "CONFLICT");

    // Rotation: a fresh code; the old one is retired.
    let rotated = ann
        .mcp
        .ok(
            "amba_affiliate_my_referral_generate",
            json!({"enrollment_id": invited["enrollment_id"]}),
        )
        .await?;
    let new_code = text(&rotated["code"]).to_owned();
    assert!(new_code.len() == 12 && new_code != first_code);
    let mine = ann.mcp.ok("amba_affiliate_my_programs_list", json!({})).await?;
    assert_eq!(mine["enrollments"][0]["code"], json!(new_code));

    // Applications: manual approval by default.
    let applied = bob
        .mcp
        .ok("amba_affiliate_my_program_apply", json!({"program_id": program}))
        .await?;
    assert_eq!(
        (applied["status"].as_str(), applied["enrollment"]["origin"].as_str()),
        (Some("pending"), Some("application"))
    );
    let reapplied = bob
        .mcp
        .ok("amba_affiliate_my_program_apply", json!({"program_id": program}))
        .await?;
    assert_eq!(
        (reapplied["enrollment_id"].clone(), reapplied["duplicate"].as_bool()),
        (applied["enrollment_id"].clone(), Some(true))
    );
    // The applicant cannot accept its own application.
    let self_accept = bob
        .mcp
        .err(
            "amba_affiliate_my_invite_accept",
            json!({"enrollment_id": applied["enrollment_id"]}),
        )
        .await?;
    assert_eq!(self_accept["code"], "CONFLICT");
    let pending = owner
        .mcp
        .ok(
            "amba_affiliate_affiliates_list",
            json!({"program_id": program, "status": "pending"}),
        )
        .await?;
    assert_eq!(pending["enrollments"].as_array().map(Vec::len), Some(1));
    let approved = owner
        .mcp
        .ok(
            "amba_affiliate_affiliate_approve",
            json!({"enrollment_id": applied["enrollment_id"]}),
        )
        .await?;
    assert_eq!(approved["status"], "active");

    let all = owner
        .mcp
        .ok("amba_affiliate_affiliates_list", json!({"program_id": program}))
        .await?;
    let statuses: Vec<(&str, &str)> = all["enrollments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (text(&e["affiliate_org_name"]), text(&e["status"])))
        .collect();
    assert_eq!(statuses, vec![("Ann", "active"), ("Bob", "active")]);

    // Remove: the code goes, the record stays.
    let removed = owner
        .mcp
        .ok(
            "amba_affiliate_affiliate_remove",
            json!({"enrollment_id": applied["enrollment_id"], "reason": "spam"}),
        )
        .await?;
    assert_eq!(
        (removed["status"].as_str(), removed.get("code")),
        (Some("removed"), None)
    );
    assert_eq!(removed["enrollment"]["reason"], "spam");
    let rotate_removed = bob
        .mcp
        .err(
            "amba_affiliate_my_referral_generate",
            json!({"enrollment_id": applied["enrollment_id"]}),
        )
        .await?;
    assert_eq!(rotate_removed["code"], "CONFLICT");

    // Events: once each, with what read models need.
    let events = program_events(&sys, 12).await?;
    let kinds: Vec<&str> = events
        .iter()
        .map(|(s, _)| s.rsplit('.').next().unwrap_or_default())
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| ["invited", "activated", "applied", "removed"].contains(k))
            .count(),
        5,
        "invited, activated (accept), applied, activated (approve), removed: {kinds:?}"
    );
    let code_events: Vec<CodeChanged> = events
        .iter()
        .filter(|(s, _)| s.contains(".evt.code."))
        .map(|(_, p)| CodeChanged::decode(p.as_slice()))
        .collect::<Result<_, _>>()?;
    let retired: Vec<&str> = code_events
        .iter()
        .filter(|c| c.status == "retired")
        .map(|c| c.code.as_str())
        .collect();
    assert!(
        retired.contains(&first_code.as_str()),
        "the rotated-out code is announced as retired"
    );
    let activated = events
        .iter()
        .find(|(s, _)| s.ends_with("enrollment.activated"))
        .map(|(_, p)| EnrollmentChanged::decode(p.as_slice()))
        .transpose()?
        .ok_or_else(|| anyhow::anyhow!("no activation event"))?;
    assert_eq!(activated.previous_status, "pending");
    assert_eq!(activated.program_owner_org_id, owner.id);
    assert_eq!(activated.affiliate_emails, vec!["ann@example.com"]);
    assert_eq!(activated.enrollment.map(|e| e.status), Some("active".to_owned()));
    sys.stop().await
}

#[tokio::test]
async fn decline_reject_and_auto_approved_applications() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let owner = org(&sys, "Owner").await?;
    let ann = org(&sys, "Ann").await?;
    let cy = org(&sys, "Cy").await?;
    let open = active_program(&owner, json!({"affiliate_approval": "auto"})).await?;
    let closed = active_program(&owner, json!({})).await?;

    let auto = ann
        .mcp
        .ok("amba_affiliate_my_program_apply", json!({"program_id": open}))
        .await?;
    assert_eq!(
        auto["status"], "active",
        "auto-approving programs activate applications at once"
    );
    assert!(auto["code"].is_string());

    let invited = owner
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": closed, "affiliate_org_id": ann.id}),
        )
        .await?;
    let declined = ann
        .mcp
        .ok(
            "amba_affiliate_my_invite_decline",
            json!({"enrollment_id": invited["enrollment_id"]}),
        )
        .await?;
    assert_eq!(declined["status"], "declined");
    // Accepting a declined invite changes nothing.
    let err = ann
        .mcp
        .err(
            "amba_affiliate_my_invite_accept",
            json!({"enrollment_id": invited["enrollment_id"]}),
        )
        .await?;
    assert_eq!(err["code"], "CONFLICT");

    let applied = cy
        .mcp
        .ok("amba_affiliate_my_program_apply", json!({"program_id": closed}))
        .await?;
    let rejected = owner
        .mcp
        .ok(
            "amba_affiliate_affiliate_reject",
            json!({"enrollment_id": applied["enrollment_id"], "reason": "not a fit"}),
        )
        .await?;
    assert_eq!(
        (rejected["status"].as_str(), rejected["enrollment"]["reason"].as_str()),
        (Some("rejected"), Some("not a fit"))
    );
    for tool in ["amba_affiliate_affiliate_approve", "amba_affiliate_affiliate_reject"] {
        let err = owner
            .mcp
            .err(tool, json!({"enrollment_id": applied["enrollment_id"]}))
            .await?;
        assert_eq!(err["code"], "CONFLICT", "{tool} on a rejected enrollment");
    }
    let applying_again = cy
        .mcp
        .err("amba_affiliate_my_program_apply", json!({"program_id": closed}))
        .await?;
    assert_eq!(
        applying_again["code"], "CONFLICT",
        "a rejected org cannot re-apply by itself"
    );

    // Programs that are not active take no applications; one's own program neither.
    owner
        .mcp
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": closed, "status": "paused"}),
        )
        .await?;
    let paused = org(&sys, "Dee").await?;
    assert_eq!(
        paused
            .mcp
            .err("amba_affiliate_my_program_apply", json!({"program_id": closed}))
            .await?["code"],
        "CONFLICT"
    );
    let draft = owner
        .mcp
        .ok(
            "amba_affiliate_programs_create",
            json!({"name": "Soon", "currency": "USD", "commission": {"schema":1,"type":"flat","amount_minor":100}}),
        )
        .await?;
    let err = paused
        .mcp
        .err(
            "amba_affiliate_my_program_apply",
            json!({"program_id": draft["program"]["program_id"]}),
        )
        .await?;
    assert_eq!(err["code"], "NOT_FOUND", "drafts are private");
    assert_eq!(
        owner
            .mcp
            .err("amba_affiliate_my_program_apply", json!({"program_id": open}))
            .await?["code"],
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        owner
            .mcp
            .err(
                "amba_affiliate_invite",
                json!({"program_id": open, "affiliate_org_id": owner.id})
            )
            .await?["code"],
        "INVALID_ARGUMENT"
    );
    let unknown_org = owner
        .mcp
        .err(
            "amba_affiliate_invite",
            json!({"program_id": open, "affiliate_org_id": "org_0000000000000000000000000000000a"}),
        )
        .await?;
    assert_eq!(unknown_org["code"], "NOT_FOUND");
    sys.stop().await
}

#[tokio::test]
async fn sponsor_tree_rules() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let owner = org(&sys, "Owner").await?;
    let program = active_program(
        &owner,
        json!({"multi_level": {"enabled": true, "levels_bps": [500, 200]}}),
    )
    .await?;
    let other_program = active_program(&owner, json!({})).await?;

    // A chain of six: the deepest place the tree allows.
    let mut chain: Vec<Value> = Vec::new();
    for i in 0..6 {
        let affiliate = org(&sys, &format!("Level{i}")).await?;
        let parent = chain.last().map(|e| text(&e["enrollment_id"]).to_owned());
        let enrolled = enroll(&owner, &affiliate, &program, parent.as_deref()).await?;
        assert_eq!(enrolled["enrollment"]["depth"], i + 1);
        assert_eq!(
            enrolled["enrollment"].get("parent_enrollment_id").cloned(),
            parent.map(Value::from)
        );
        chain.push(enrolled);
    }
    let id = |i: usize| text(&chain[i]["enrollment_id"]).to_owned();

    // Too deep.
    let seventh = org(&sys, "Level6").await?;
    let err = owner
        .mcp
        .err(
            "amba_affiliate_invite",
            json!({"program_id": program, "affiliate_org_id": seventh.id, "parent_enrollment_id": id(5)}),
        )
        .await?;
    assert_eq!(err["code"], "CONFLICT");
    // A sponsor from another program.
    let elsewhere = enroll(&owner, &seventh, &other_program, None).await?;
    let err = owner
        .mcp
        .err("amba_affiliate_invite", json!({"program_id": program, "affiliate_org_id": seventh.id, "parent_enrollment_id": elsewhere["enrollment_id"]}))
        .await?;
    assert_eq!(err["code"], "INVALID_ARGUMENT");
    // A sponsor that is not active yet.
    let pending_sponsor = owner
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program, "affiliate_org_id": seventh.id}),
        )
        .await?;
    let eighth = org(&sys, "Late").await?;
    let err = owner
        .mcp
        .err("amba_affiliate_invite", json!({"program_id": program, "affiliate_org_id": eighth.id, "parent_enrollment_id": pending_sponsor["enrollment_id"]}))
        .await?;
    assert_eq!(err["code"], "CONFLICT");

    // A cycle: the root under its own grandchild.
    let err = owner
        .mcp
        .err(
            "amba_affiliate_affiliate_set_parent",
            json!({"enrollment_id": id(0), "parent_enrollment_id": id(2)}),
        )
        .await?;
    assert_eq!(err["code"], "CONFLICT");
    let err = owner
        .mcp
        .err(
            "amba_affiliate_affiliate_set_parent",
            json!({"enrollment_id": id(1), "parent_enrollment_id": id(1)}),
        )
        .await?;
    assert_eq!(err["code"], "CONFLICT");

    // Moving a subtree up re-computes the depth of its whole downline.
    let moved = owner
        .mcp
        .ok("amba_affiliate_affiliate_set_parent", json!({"enrollment_id": id(3)}))
        .await?;
    assert_eq!(moved["enrollment"]["depth"], 1);
    let tree = owner
        .mcp
        .ok(
            "amba_affiliate_affiliates_list",
            json!({"program_id": program, "status": "active"}),
        )
        .await?;
    let depths: Vec<(String, u64)> = tree["enrollments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                text(&e["affiliate_org_name"]).to_owned(),
                e["depth"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = [
        ("Level0", 1),
        ("Level1", 2),
        ("Level2", 3),
        ("Level3", 1),
        ("Level4", 2),
        ("Level5", 3),
    ]
    .into_iter()
    .map(|(n, d)| (n.to_owned(), d))
    .collect();
    assert_eq!(depths, expected);
    // Now there is room below again.
    let ok = owner
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program, "affiliate_org_id": eighth.id, "parent_enrollment_id": id(5)}),
        )
        .await?;
    assert_eq!(ok["enrollment"]["depth"], 4);
    sys.stop().await
}

/// Every event of the enrollment stream, (subject, payload), once the stream holds `at_least`.
async fn program_events(sys: &TestSystem, at_least: u64) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    use futures::StreamExt;
    let name = sys.bus.ns.events_stream("enrollment");
    eventually(Duration::from_secs(10), "enrollment events", || {
        let (js, name) = (sys.bus.js.clone(), name.clone());
        async move { Ok((js.get_stream(&name).await?.info().await?.state.messages >= at_least).then_some(())) }
    })
    .await?;
    let stream = sys.bus.js.get_stream(&name).await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await?;
    let mut batch = consumer
        .fetch()
        .max_messages(1000)
        .expires(Duration::from_millis(500))
        .messages()
        .await?;
    let mut out = Vec::new();
    while let Some(message) = batch.next().await {
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        out.push((message.subject.to_string(), message.payload.to_vec()));
    }
    Ok(out)
}

/// Records each event it is handed.
struct Recorder;

impl amba_bus::consumer::Handler for Recorder {
    async fn handle(
        &self,
        conn: &mut sqlx::PgConnection,
        delivery: &amba_bus::consumer::Delivery,
    ) -> Result<(), amba_bus::consumer::HandlerError> {
        sqlx::query("INSERT INTO recorded (event_id, subject) VALUES ($1, $2)")
            .bind(&delivery.event_id)
            .bind(&delivery.subject)
            .execute(conn)
            .await?;
        Ok(())
    }
}

static NO_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;

#[tokio::test]
async fn every_change_reaches_a_real_consumer_exactly_once() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let pool = amba_bus::store::connect(&sys.db.url, "probe", 4).await?;
    amba_bus::store::migrate(&pool, "probe", &NO_MIGRATIONS).await?;
    sqlx::query("CREATE TABLE recorded (event_id TEXT NOT NULL, subject TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let spec = amba_bus::consumer::ConsumerSpec::new(
        sys.bus.ns.events_stream("enrollment"),
        sys.bus.ns.consumer("probe", "enrollment"),
        String::new(),
    );
    let runner = tokio::spawn(amba_bus::consumer::run(
        sys.bus.js.clone(),
        pool.clone(),
        spec,
        std::sync::Arc::new(Recorder),
        stop.clone(),
    ));

    let owner = org(&sys, "Owner").await?;
    let ann = org(&sys, "Ann").await?;
    let program = active_program(&owner, json!({})).await?; // program.created, program.updated
    let enrolled = enroll(&owner, &ann, &program, None).await?; // enrollment.invited + code.issued, enrollment.activated
    ann.mcp
        .ok(
            "amba_affiliate_my_referral_generate",
            json!({"enrollment_id": enrolled["enrollment_id"]}),
        )
        .await?; // code.retired, code.issued
    // Refused operations announce nothing.
    ann.mcp
        .err(
            "amba_affiliate_my_invite_accept",
            json!({"enrollment_id": enrolled["enrollment_id"]}),
        )
        .await?;
    owner
        .mcp
        .err(
            "amba_affiliate_invite",
            json!({"program_id": program, "affiliate_org_id": ann.id}),
        )
        .await?;
    let token = owner.mcp.ok("amba_affiliate_tokens_create", json!({})).await?;
    owner
        .mcp
        .ok("amba_affiliate_tokens_revoke", json!({"token_id": token["token_id"]}))
        .await?; // identity.token_revoked
    owner
        .mcp
        .ok("amba_affiliate_tokens_revoke", json!({"token_id": token["token_id"]}))
        .await?; // nothing new

    let ns = &sys.bus.ns;
    let mut expected = vec![
        ns.event("program", "created"),
        ns.event("program", "updated"),
        ns.event("enrollment", "invited"),
        ns.event("code", "issued"),
        ns.event("enrollment", "activated"),
        ns.event("code", "retired"),
        ns.event("code", "issued"),
        ns.event("identity", "token_revoked"),
    ];
    expected.sort();
    let wanted = expected.len();
    let recorded = eventually(Duration::from_secs(10), "eight events consumed", || {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, String)> = sqlx::query_as("SELECT event_id, subject FROM recorded")
                .fetch_all(&pool)
                .await?;
            Ok((rows.len() >= wanted).then_some(rows))
        }
    })
    .await?;
    // The stream holds exactly these events (refused operations published nothing), and the
    // consumer applied each once.
    let stream_messages = sys
        .bus
        .js
        .get_stream(ns.events_stream("enrollment"))
        .await?
        .info()
        .await?
        .state
        .messages;
    assert_eq!(stream_messages, wanted as u64);
    assert_eq!(recorded.len(), wanted);
    let recorded_after: Vec<(String, String)> = sqlx::query_as("SELECT event_id, subject FROM recorded")
        .fetch_all(&pool)
        .await?;
    let mut subjects: Vec<String> = recorded_after.iter().map(|(_, s)| s.clone()).collect();
    subjects.sort();
    assert_eq!(subjects, expected);
    let ids: std::collections::HashSet<&String> = recorded_after.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), recorded_after.len(), "every event id once");
    assert!(ids.iter().all(|id| id.starts_with("evt_")));

    stop.cancel();
    runner.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    pool.close().await;
    sys.stop().await
}
