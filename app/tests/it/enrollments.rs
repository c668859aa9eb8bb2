//! Invites, applications, approvals, codes and the sponsor tree, through MCP.

use crate::support::{active_program, enroll, org, text};
use crate::system::TestSystem;
use amba_proto::Message;
use amba_proto::wire::{CodeChanged, EnrollmentChanged};
use amba_testkit::eventually;
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

const MAIL_WAIT: Duration = Duration::from_secs(20);

/// The claim token in the invitation e-mail the sink accepted for `to`.
async fn claim_token_mailed_to(sink: &amba_testkit::smtp::SmtpSink, to: &str) -> anyhow::Result<String> {
    eventually(MAIL_WAIT, "the invitation e-mail", || async {
        Ok(sink
            .received()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t == to))
            .find(|m| {
                m.header("Subject")
                    .is_some_and(|s| s.contains("invited to the Partners"))
            })
            .and_then(|m| {
                let body = m.body();
                let (_, after) = body.split_once("/claim/")?;
                let token: String = after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                    .collect();
                Some(token)
            }))
    })
    .await
}

#[tokio::test]
async fn invite_by_email_claim_binds_to_the_claiming_org() -> anyhow::Result<()> {
    let sink = amba_testkit::smtp::SmtpSink::start().await?;
    let sys = TestSystem::start_with(&[("AMBA_SMTP_URL", &sink.url())]).await?;
    let base = sys.base_url();
    let owner = org(&sys, "Owner").await?;
    let ann = org(&sys, "Ann").await?; // ann@example.com has an account
    let program = active_program(&owner, json!({})).await?;

    // The same reply for an address with an account and one without: nothing tells them apart.
    let known = owner
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program, "email": "Ann@Example.com", "idempotency_key": "ann-mail"}),
        )
        .await?;
    let unknown = owner
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program, "email": "newbie@example.org"}),
        )
        .await?;
    let keys = |v: &Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(keys(&known), keys(&unknown));
    assert_eq!(
        (
            known["status"].as_str(),
            known["email"].as_str(),
            known["duplicate"].as_bool()
        ),
        (Some("invited"), Some("ann@example.com"), Some(false))
    );
    assert_eq!(
        (unknown["status"].as_str(), unknown["email"].as_str()),
        (Some("invited"), Some("newbie@example.org"))
    );
    assert!(text(&known["invitation_id"]).starts_with("inv_") && known.get("enrollment_id").is_none());

    // A retry with the key returns the first invitation; the key with another address is refused.
    let retried = owner
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program, "email": "ann@example.com", "idempotency_key": "ann-mail"}),
        )
        .await?;
    assert_eq!(
        (retried["invitation_id"].clone(), retried["duplicate"].as_bool()),
        (known["invitation_id"].clone(), Some(true))
    );
    let mismatch = owner
        .mcp
        .err(
            "amba_affiliate_invite",
            json!({"program_id": program, "email": "other@example.org", "idempotency_key": "ann-mail"}),
        )
        .await?;
    assert_eq!(mismatch["code"], "IDEMPOTENCY_MISMATCH");
    // Exactly one of affiliate_org_id and email; `org_id` gets a did-you-mean.
    for args in [
        json!({"program_id": program}),
        json!({"program_id": program, "email": "x@example.org", "affiliate_org_id": ann.id}),
    ] {
        let err = owner.mcp.err("amba_affiliate_invite", args).await?;
        assert_eq!(err["code"], "INVALID_ARGUMENT");
        assert!(
            text(&err["message"]).contains("exactly one of `affiliate_org_id`"),
            "{err}"
        );
    }
    let err = owner
        .mcp
        .err(
            "amba_affiliate_invite",
            json!({"program_id": program, "org_id": ann.id}),
        )
        .await?;
    assert_eq!(err["code"], "INVALID_ARGUMENT");
    assert!(
        text(&err["message"]).starts_with("unknown argument `org_id`; did you mean `affiliate_org_id`?"),
        "{err}"
    );
    let bad_email = owner
        .mcp
        .err(
            "amba_affiliate_invite",
            json!({"program_id": program, "email": "not-an-address"}),
        )
        .await?;
    assert_eq!(bad_email["code"], "INVALID_ARGUMENT");

    // The new address's mail carries a claim link; its page names the program and the steps.
    let newbie_token = claim_token_mailed_to(&sink, "newbie@example.org").await?;
    assert!(
        newbie_token.starts_with("amba_inv_") && newbie_token.len() == 52,
        "{newbie_token}"
    );
    let http = reqwest::Client::new();
    let page = http.get(format!("{base}/claim/{newbie_token}")).send().await?;
    assert_eq!(page.status(), 200);
    let page = page.text().await?;
    assert!(page.contains("Partners") && page.contains("amba_affiliate_invite_claim") && page.contains(&newbie_token));

    // The person signs up (any org name) and claims: the enrollment goes to the claiming org.
    let newbie = org(&sys, "Newbie").await?;
    let claimed = newbie
        .mcp
        .ok("amba_affiliate_invite_claim", json!({"token": newbie_token}))
        .await?;
    assert_eq!(
        (
            claimed["status"].as_str(),
            claimed["enrollment"]["affiliate_org_id"].as_str()
        ),
        (Some("active"), Some(newbie.id.as_str()))
    );
    assert_eq!(claimed["enrollment"]["program_id"], json!(program));
    assert_eq!(claimed["enrollment"]["origin"], "invite");
    assert_eq!(claimed["link"], json!(format!("{base}/r/{}", text(&claimed["code"]))));
    // Claiming again with the same org returns it; anyone else is refused; the page says used.
    let again = newbie
        .mcp
        .ok(
            "amba_affiliate_invite_claim",
            json!({"token": format!("{base}/claim/{newbie_token}")}),
        )
        .await?;
    assert_eq!(
        (again["enrollment_id"].clone(), again["duplicate"].as_bool()),
        (claimed["enrollment_id"].clone(), Some(true))
    );
    let used = ann
        .mcp
        .err("amba_affiliate_invite_claim", json!({"token": newbie_token}))
        .await?;
    assert_eq!(used["code"], "CONFLICT");
    assert_eq!(
        http.get(format!("{base}/claim/{newbie_token}")).send().await?.status(),
        410
    );

    // A forged token is unknown, on the tool and the page.
    let forged = format!("amba_inv_{}", "A".repeat(43));
    let err = ann
        .mcp
        .err("amba_affiliate_invite_claim", json!({"token": forged}))
        .await?;
    assert_eq!(err["code"], "NOT_FOUND");
    let err = ann
        .mcp
        .err("amba_affiliate_invite_claim", json!({"token": "nonsense"}))
        .await?;
    assert_eq!(err["code"], "NOT_FOUND");
    assert_eq!(http.get(format!("{base}/claim/{forged}")).send().await?.status(), 404);

    // The existing account got its own link; an expired one is refused and changes nothing.
    let ann_token = claim_token_mailed_to(&sink, "ann@example.com").await?;
    let pool = sys.service_pool("enrollment").await?;
    sqlx::query("UPDATE invitations SET expires_at = now() - interval '1 minute' WHERE email = 'ann@example.com'")
        .execute(&pool)
        .await?;
    let expired = ann
        .mcp
        .err("amba_affiliate_invite_claim", json!({"token": ann_token}))
        .await?;
    assert_eq!(expired["code"], "CONFLICT");
    assert!(text(&expired["message"]).contains("expired"), "{expired}");
    assert_eq!(
        ann.mcp.ok("amba_affiliate_my_programs_list", json!({})).await?["enrollments"],
        json!([])
    );
    sqlx::query("UPDATE invitations SET expires_at = now() + interval '1 day' WHERE email = 'ann@example.com'")
        .execute(&pool)
        .await?;
    let ann_claimed = ann
        .mcp
        .ok("amba_affiliate_invite_claim", json!({"token": ann_token}))
        .await?;
    assert_eq!(ann_claimed["enrollment"]["affiliate_org_id"], json!(ann.id));
    let listed = owner
        .mcp
        .ok(
            "amba_affiliate_affiliates_list",
            json!({"program_id": program, "status": "active"}),
        )
        .await?;
    assert_eq!(listed["enrollments"].as_array().map(Vec::len), Some(2));
    pool.close().await;
    sys.stop().await
}

#[tokio::test]
async fn join_links_vanity_codes_full_links_and_payout_readiness() -> anyhow::Result<()> {
    let sys = TestSystem::with_stripe(&[]).await?;
    let base = sys.base_url();
    let owner = org(&sys, "Owner").await?;
    let outsider = org(&sys, "Outsider").await?;
    let ann = org(&sys, "Ann").await?;
    let bob = org(&sys, "Bob").await?;
    let program = active_program(&owner, json!({"affiliate_approval": "auto"})).await?;

    // The join link: shown to the owner, a public page while active, 404 for a draft.
    let got = owner
        .mcp
        .ok("amba_affiliate_programs_get", json!({"program_id": program}))
        .await?;
    let join_url = text(&got["program"]["join_url"]).to_owned();
    assert_eq!(join_url, format!("{base}/join/{program}"));
    let http = reqwest::Client::new();
    let page = http.get(&join_url).send().await?;
    assert_eq!(page.status(), 200);
    let page = page.text().await?;
    assert!(page.contains("Join the Partners affiliate program"), "{page}");
    assert!(
        page.contains(&format!(
            "amba_affiliate_my_program_apply</code> and <code>{{\"program_id\": \"{program}\"}}"
        )),
        "{page}"
    );
    let draft = owner
        .mcp
        .ok(
            "amba_affiliate_programs_create",
            json!({"name": "Secret", "currency": "USD", "commission": {"schema":1,"type":"percentage","bps":1000}}),
        )
        .await?;
    let draft_join = text(&draft["program"]["join_url"]).to_owned();
    assert_eq!(http.get(&draft_join).send().await?.status(), 404);
    assert_eq!(http.get(format!("{base}/join/nonsense")).send().await?.status(), 404);

    // Applying with the join link itself; the reply carries the full link.
    let applied = bob
        .mcp
        .ok("amba_affiliate_my_program_apply", json!({"program_id": join_url}))
        .await?;
    assert_eq!(applied["status"], "active");
    let bob_code = text(&applied["code"]).to_owned();
    assert_eq!(applied["link"], json!(format!("{base}/r/{bob_code}")));
    let err = bob
        .mcp
        .err("amba_affiliate_my_program_apply", json!({"program_id": draft_join}))
        .await?;
    assert_eq!(err["code"], "NOT_FOUND");

    // Invite and accept replies carry the link too, and so does my_programs_list.
    let invited = owner
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program, "affiliate_org_id": ann.id}),
        )
        .await?;
    assert_eq!(invited["link"], json!(format!("{base}/r/{}", text(&invited["code"]))));
    let accepted = ann
        .mcp
        .ok(
            "amba_affiliate_my_invite_accept",
            json!({"enrollment_id": invited["enrollment_id"]}),
        )
        .await?;
    assert_eq!(accepted["link"], invited["link"]);
    let mine = ann.mcp.ok("amba_affiliate_my_programs_list", json!({})).await?;
    assert_eq!(mine["enrollments"][0]["link"], invited["link"]);
    let ann_enrollment = text(&invited["enrollment_id"]).to_owned();

    // A vanity code: normalised, unique, validated.
    let vanity = ann
        .mcp
        .ok(
            "amba_affiliate_my_referral_generate",
            json!({"enrollment_id": ann_enrollment, "code": "Ann-Blog"}),
        )
        .await?;
    assert_eq!(
        (
            vanity["code"].as_str(),
            vanity["link"].as_str(),
            vanity["duplicate"].as_bool()
        ),
        (
            Some("ann-blog"),
            Some(format!("{base}/r/ann-blog").as_str()),
            Some(false)
        )
    );
    let same = ann
        .mcp
        .ok(
            "amba_affiliate_my_referral_generate",
            json!({"enrollment_id": ann_enrollment, "code": "ann-blog"}),
        )
        .await?;
    assert_eq!(
        (same["code"].as_str(), same["duplicate"].as_bool()),
        (Some("ann-blog"), Some(true))
    );
    let taken = bob
        .mcp
        .err(
            "amba_affiliate_my_referral_generate",
            json!({"enrollment_id": applied["enrollment_id"], "code": "ANN-BLOG"}),
        )
        .await?;
    assert_eq!(taken["code"], "CONFLICT");
    for bad in ["a b", "x", "admin", "-lead"] {
        let err = bob
            .mcp
            .err(
                "amba_affiliate_my_referral_generate",
                json!({"enrollment_id": applied["enrollment_id"], "code": bad}),
            )
            .await?;
        assert_eq!(err["code"], "INVALID_ARGUMENT", "{bad}: {err}");
    }
    // The owner sets one for Bob; another org cannot.
    let set = owner
        .mcp
        .ok(
            "amba_affiliate_affiliate_code_set",
            json!({"enrollment_id": applied["enrollment_id"], "code": "bob_tube"}),
        )
        .await?;
    assert_eq!(
        (set["code"].as_str(), set["link"].as_str()),
        (Some("bob_tube"), Some(format!("{base}/r/bob_tube").as_str()))
    );
    let err = outsider
        .mcp
        .err(
            "amba_affiliate_affiliate_code_set",
            json!({"enrollment_id": applied["enrollment_id"], "code": "mine-now"}),
        )
        .await?;
    assert_eq!(err["code"], "NOT_FOUND");
    // Bob's old random code was retired and is refused as a vanity code (codes are never reused).
    let reuse = ann
        .mcp
        .err(
            "amba_affiliate_my_referral_generate",
            json!({"enrollment_id": ann_enrollment, "code": bob_code}),
        )
        .await?;
    assert_eq!(reuse["code"], "CONFLICT");

    // A report with the vanity code is credited to Ann (attribution learned it from code.issued).
    let reported = eventually(Duration::from_secs(15), "attribution knows ann-blog", || async {
        Ok(owner
            .mcp
            .ok(
                "amba_affiliate_conversion_report",
                json!({"program_id": program, "project_id": "shop", "external_id": "o-1",
                       "amount_minor": 10_000, "currency": "USD", "code": "ann-blog"}),
            )
            .await
            .ok())
    })
    .await?;
    assert_eq!(
        (
            reported["enrollment_id"].as_str(),
            reported["commission_minor"].as_i64()
        ),
        (Some(ann_enrollment.as_str()), Some(2_000))
    );

    // Payout-account readiness in the owner's list: none, pending (created), ready (onboarded).
    let readiness = || async {
        let listed = owner
            .mcp
            .ok("amba_affiliate_affiliates_list", json!({"program_id": program}))
            .await?;
        let rows = listed["enrollments"].as_array().cloned().unwrap_or_default();
        let of = |org: &str| {
            rows.iter()
                .find(|e| e["affiliate_org_id"] == org)
                .map(|e| text(&e["payout_account"]).to_owned())
                .unwrap_or_default()
        };
        anyhow::Ok((of(&ann.id), of(&bob.id)))
    };
    assert_eq!(readiness().await?, ("none".to_owned(), "none".to_owned()));
    bob.mcp.ok("amba_affiliate_my_payout_create", json!({})).await?;
    crate::payouts::onboard(&sys, &ann).await?;
    let after = eventually(Duration::from_secs(15), "ann's account is ready", || async {
        let now = readiness().await?;
        Ok((now.0 == "ready").then_some(now))
    })
    .await?;
    assert_eq!(after, ("ready".to_owned(), "pending".to_owned()));
    sys.stop().await
}
