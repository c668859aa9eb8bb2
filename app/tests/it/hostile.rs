//! The attacker with a valid account: hostile values on every surface, poison from one tenant
//! while another reports, floods, forged clicks. Each refusal must be a typed client error that
//! changes nothing, and nobody else may notice.

use crate::attribution::{authed, grpc};
use crate::support::{Org, active_program, enroll, org, text};
use crate::system::TestSystem;
use amba_proto::wire as pb;
use amba_testkit::eventually;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use std::time::Duration;

/// Hostile text: over-long, control characters (NUL first among them), or both.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{201,400}",
        "[a-z]{0,10}\u{0}[a-z]{0,10}",
        "[a-z]{1,5}[\u{1}-\u{1f}\u{7f}][a-z]{1,5}",
        Just("x".repeat(100_000)),
    ]
}

/// Hostile amounts and times for the report's numeric fields.
fn hostile_amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(-1i64),
        Just(1i64 << 62),
        Just(i64::MAX),
        1_000_000_000_000_001i64..
    ]
}

fn hostile_time() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(-1_000_000_000_000_000_000i64),
        Just(i64::MIN),
        Just(i64::MAX),
        1i64..946_684_800_000_000, // before 2000
    ]
}

fn sample<S: Strategy>(runner: &mut TestRunner, strategy: &S) -> anyhow::Result<S::Value> {
    Ok(strategy.new_tree(runner).map_err(|e| anyhow::anyhow!("{e}"))?.current())
}

fn valid_report(program: &str, external_id: &str, code: &str) -> pb::ReportConversionRequest {
    pb::ReportConversionRequest {
        program_id: program.to_owned(),
        project_id: "web".into(),
        external_id: external_id.to_owned(),
        amount_minor: 10_000,
        currency: "USD".into(),
        code: code.to_owned(),
        ..Default::default()
    }
}

/// The report with one field replaced by a generated hostile value; returns the field's name.
fn poisoned(
    runner: &mut TestRunner,
    base: pb::ReportConversionRequest,
    field: usize,
) -> anyhow::Result<(&'static str, pb::ReportConversionRequest)> {
    let mut r = base;
    let name = match field % 9 {
        0 => {
            r.project_id = sample(runner, &hostile_text())?;
            "project_id"
        }
        1 => {
            r.external_id = sample(runner, &hostile_text())?;
            "external_id"
        }
        2 => {
            r.code = sample(runner, &hostile_text())?;
            "code"
        }
        3 => {
            r.subject_ref = sample(runner, &hostile_text())?;
            "subject_ref"
        }
        4 => {
            r.customer_ref = sample(runner, &hostile_text())?;
            "customer_ref"
        }
        5 => {
            r.customer_email = sample(runner, &hostile_text())?;
            "customer_email"
        }
        6 => {
            r.amount_minor = sample(runner, &hostile_amount())?;
            "amount_minor"
        }
        7 => {
            r.occurred_at_micros = sample(runner, &hostile_time())?;
            "occurred_at"
        }
        _ => {
            r.program_id = sample(runner, &hostile_text())?;
            "program_id"
        }
    };
    Ok((name, r))
}

struct Tenant {
    owner: Org,
    affiliate: Org,
    program: String,
    code: String,
}

async fn tenant(sys: &TestSystem, name: &str) -> anyhow::Result<Tenant> {
    let owner = org(sys, &format!("{name}Owner")).await?;
    let affiliate = org(sys, &format!("{name}Aff")).await?;
    let program = active_program(&owner, json!({})).await?;
    let enrollment = enroll(&owner, &affiliate, &program, None).await?;
    let code = text(&enrollment["code"]).to_owned();
    let tenant = Tenant {
        owner,
        affiliate,
        program,
        code,
    };
    // Reports resolve codes from attribution's read model: wait until it knows this one.
    let mut client = grpc(sys).await?;
    eventually(Duration::from_secs(10), "the code is known to attribution", || {
        let request = authed(
            &tenant.owner.token,
            valid_report(&tenant.program, "warm-up", &tenant.code),
        );
        let mut client = client.clone();
        async move { Ok(client.report_conversion(request?).await.ok().map(drop)) }
    })
    .await?;
    client = grpc(sys).await?;
    drop(client);
    Ok(tenant)
}

fn error_code(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("amba-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn generated_bad_reports_are_refused_by_field_and_record_nothing() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let t = tenant(&sys, "Prop").await?;
    let mut client = grpc(&sys).await?;
    let mut runner = TestRunner::deterministic();
    let before = t
        .owner
        .mcp
        .ok("amba_affiliate_conversions_list", json!({"program_id": t.program}))
        .await?;
    for case in 0..72 {
        let base = valid_report(&t.program, &format!("bad-{case}"), &t.code);
        let (field, report) = poisoned(&mut runner, base, case)?;
        // gRPC unary.
        let refused = client
            .report_conversion(authed(&t.owner.token, report.clone())?)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("{field}: a hostile report was accepted"))?;
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{field}: {refused:?}");
        assert!(refused.message().contains(field), "{field}: {}", refused.message());
        // The same report inside a stream: its own outcome, the valid one beside it recorded.
        let good = valid_report(&t.program, &format!("good-{case}"), &t.code);
        let reply = client
            .report_conversions(authed(
                &t.owner.token,
                futures::stream::iter(vec![report.clone(), good]),
            )?)
            .await?
            .into_inner();
        match (&reply.outcomes[0].result, &reply.outcomes[1].result) {
            (Some(pb::report_outcome::Result::Error(err)), Some(pb::report_outcome::Result::Ok(ok))) => {
                assert_eq!(err.code, "INVALID_ARGUMENT", "{field}");
                assert!(err.message.contains(field), "{field}: {}", err.message);
                assert!(!ok.duplicate);
            }
            other => anyhow::bail!("{field}: unexpected outcomes {other:?}"),
        }
        // MCP (only where JSON can carry the value: a string field, or a number).
        if case % 9 == 6 || case % 9 == 7 {
            continue;
        }
        let args = json!({
            "program_id": report.program_id, "project_id": report.project_id,
            "external_id": report.external_id, "amount_minor": report.amount_minor,
            "currency": report.currency, "code": report.code, "subject_ref": report.subject_ref,
            "customer_ref": report.customer_ref, "customer_email": report.customer_email,
        });
        let err = t.owner.mcp.err("amba_affiliate_conversion_report", args).await?;
        assert_eq!(err["code"], "INVALID_ARGUMENT", "{field}: {err}");
    }
    // Nothing hostile was recorded: only the warm-up and the 72 good ones.
    let pool = sys.service_pool("attribution").await?;
    let stored: Vec<String> = sqlx::query_scalar("SELECT external_id FROM conversions WHERE program_id = $1")
        .bind(&t.program)
        .fetch_all(&pool)
        .await?;
    assert_eq!(stored.len(), 73, "{stored:?}");
    assert!(stored.iter().all(|id| id == "warm-up" || id.starts_with("good-")));
    assert!(before["conversions"].as_array().is_some_and(|c| c.len() == 1));
    pool.close().await;
    sys.stop().await
}

#[tokio::test]
async fn one_tenants_poison_from_many_callers_costs_another_tenant_nothing() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let victim = tenant(&sys, "Victim").await?;
    let attacker = tenant(&sys, "Attacker").await?;
    let client = grpc(&sys).await?;

    // The attacker: 8 callers sending reports PostgreSQL would refuse, unary and streamed.
    let mut poison = Vec::new();
    for caller in 0..8 {
        let (mut client, token, program, code) = (
            client.clone(),
            attacker.owner.token.clone(),
            attacker.program.clone(),
            attacker.code.clone(),
        );
        poison.push(tokio::spawn(async move {
            let mut refused = 0;
            for i in 0..40 {
                let mut report = valid_report(&program, &format!("p{caller}-{i}"), &code);
                report.occurred_at_micros = -1_000_000_000_000_000_000;
                if i % 2 == 0 {
                    report.amount_minor = 1 << 62;
                }
                match client.report_conversion(authed(&token, report.clone())?).await {
                    Err(status) if status.code() == tonic::Code::InvalidArgument => refused += 1,
                    other => anyhow::bail!("poison answered {other:?}"),
                }
                let streamed = client
                    .report_conversions(authed(&token, futures::stream::iter(vec![report; 20]))?)
                    .await?
                    .into_inner();
                anyhow::ensure!(streamed.outcomes.iter().all(
                    |o| matches!(&o.result, Some(pb::report_outcome::Result::Error(e)) if e.code == "INVALID_ARGUMENT")
                ));
            }
            Ok(refused)
        }));
    }
    // The victim: 300 ordinary reports from 16 concurrent callers, at the same time.
    let mut ordinary = Vec::new();
    for caller in 0..16 {
        let (mut client, token, program, code) = (
            client.clone(),
            victim.owner.token.clone(),
            victim.program.clone(),
            victim.code.clone(),
        );
        ordinary.push(tokio::spawn(async move {
            let mut recorded = 0;
            for i in (caller..300).step_by(16) {
                let report = valid_report(&program, &format!("v-{i}"), &code);
                let reply = client.report_conversion(authed(&token, report)?).await?.into_inner();
                anyhow::ensure!(!reply.duplicate);
                recorded += 1;
            }
            Ok(recorded)
        }));
    }
    let mut refused = 0;
    for task in poison {
        refused += task.await??;
    }
    let mut recorded = 0;
    for task in ordinary {
        recorded += task.await??;
    }
    assert_eq!(refused, 8 * 40);
    assert_eq!(recorded, 300, "every ordinary report was recorded");

    // Its events reached the ledger: 301 approved 20% commissions of 100.00 (with the warm-up).
    eventually(Duration::from_secs(30), "the victim's commissions booked", || {
        let mcp = &victim.affiliate.mcp;
        let program = victim.program.clone();
        async move {
            let balance = mcp
                .ok("amba_affiliate_my_balance_get", json!({"program_id": program}))
                .await?;
            let total = balance["held_minor"].as_i64().unwrap_or(0) + balance["payable_minor"].as_i64().unwrap_or(0);
            Ok((total == 301 * 2_000).then_some(()))
        }
    })
    .await?;
    let pool = sys.service_pool("attribution").await?;
    let attacker_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM conversions WHERE program_id = $1")
        .bind(&attacker.program)
        .fetch_one(&pool)
        .await?;
    assert_eq!(attacker_rows, 1, "only the attacker's warm-up report was recorded");
    pool.close().await;
    sys.stop().await
}

#[tokio::test]
async fn a_report_the_database_refuses_fails_alone_in_its_group_commit() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let t = tenant(&sys, "Batch").await?;
    // Something the edge cannot know about: a database rule that refuses one external id.
    let pool = sys.service_pool("attribution").await?;
    sqlx::query(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.external_id = 'poison' THEN RAISE EXCEPTION 'refused' USING ERRCODE = '22023'; END IF; \
           RETURN NEW; END $$",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON conversions FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
    )
    .execute(&pool)
    .await?;
    let mut reports: Vec<pb::ReportConversionRequest> = (0..200)
        .map(|i| valid_report(&t.program, &format!("ok-{i}"), &t.code))
        .collect();
    reports.insert(77, valid_report(&t.program, "poison", &t.code));
    let mut client = grpc(&sys).await?;
    let reply = client
        .report_conversions(authed(&t.owner.token, futures::stream::iter(reports))?)
        .await?
        .into_inner();
    assert_eq!(reply.outcomes.len(), 201);
    for (i, outcome) in reply.outcomes.iter().enumerate() {
        match (&outcome.result, i == 77) {
            (Some(pb::report_outcome::Result::Error(err)), true) => assert_eq!(err.code, "INVALID_ARGUMENT"),
            (Some(pb::report_outcome::Result::Ok(ok)), false) => assert!(!ok.duplicate),
            other => anyhow::bail!("report {i}: {other:?}"),
        }
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM conversions WHERE program_id = $1")
        .bind(&t.program)
        .fetch_one(&pool)
        .await?;
    assert_eq!(stored, 201, "200 reports and the warm-up");
    pool.close().await;
    sys.stop().await
}

#[tokio::test]
async fn floods_are_refused_with_a_retry_hint_with_and_without_a_token() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(&[("AMBA_TOUCHPOINTS_PER_ORG", "100,1")]).await?;
    let t = tenant(&sys, "Flood").await?;

    // Signups by an authenticated org: 20, then RATE_LIMITED with retry_after_seconds.
    let mut refusal = None;
    for i in 0..40 {
        let result = t
            .owner
            .mcp
            .call(
                "amba_affiliate_signup",
                json!({"email": format!("bulk{i}@example.com"), "org_name": format!("Bulk {i}")}),
            )
            .await?;
        if result.is_error == Some(true) {
            refusal = result.structured_content.map(|c| c["error"].clone());
            assert_eq!(i, 20, "the org's creation budget is 20");
            break;
        }
    }
    let refusal = refusal.ok_or_else(|| anyhow::anyhow!("120 signups were never limited"))?;
    assert_eq!(refusal["code"], "RATE_LIMITED");
    assert_eq!(refusal["status"], 429);
    assert!(
        refusal["details"]["retry_after_seconds"]
            .as_u64()
            .is_some_and(|s| s >= 1)
    );
    // Token creation shares the budget.
    let err = t
        .owner
        .mcp
        .err("amba_affiliate_tokens_create", json!({"name": "more"}))
        .await?;
    assert_eq!(err["code"], "RATE_LIMITED");

    // Touchpoints over gRPC per org, from 16 callers: RESOURCE_EXHAUSTED with retry-after once
    // the burst is spent (100 here, refilled at 1/s, so the test does not depend on its speed).
    let client = grpc(&sys).await?;
    let mut callers = Vec::new();
    for caller in 0..16 {
        let (mut client, token, program, code) =
            (client.clone(), t.owner.token.clone(), t.program.clone(), t.code.clone());
        callers.push(tokio::spawn(async move {
            for i in 0..40 {
                let click = pb::RecordTouchpointRequest {
                    program_id: program.clone(),
                    code: code.clone(),
                    subject_ref: format!("visitor-{caller}-{i}"),
                    ..Default::default()
                };
                if let Err(status) = client.record_touchpoint(authed(&token, click)?).await {
                    return Ok::<_, anyhow::Error>(Some((i, status)));
                }
            }
            Ok(None)
        }));
    }
    let mut limited = Vec::new();
    for caller in callers {
        limited.extend(caller.await??);
    }
    let (_, status) = limited
        .first()
        .ok_or_else(|| anyhow::anyhow!("touchpoints were never limited"))?;
    let attribution = sys.service_pool("attribution").await?;
    let allowed: i64 = sqlx::query_scalar("SELECT count(*) FROM touchpoints")
        .fetch_one(&attribution)
        .await?;
    attribution.close().await;
    assert!(
        (100..=140).contains(&allowed),
        "{allowed} touchpoints recorded before the limit"
    );
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(error_code(status), "RATE_LIMITED");
    assert!(status.metadata().get("retry-after").is_some());

    // Unknown tokens: each costs a lookup until the address's budget (100, then 10/s) is spent,
    // then 429. Sent all at once, so the refill during the burst stays small.
    let http = reqwest::Client::new();
    let guesses = (0..200).map(|i| {
        let http = http.clone();
        let url = sys.mcp_url();
        async move {
            let response = http
                .post(url)
                .bearer_auth(format!("amba_pat_guess{i:040}"))
                .header("accept", "application/json, text/event-stream")
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
                .send()
                .await?;
            Ok::<_, anyhow::Error>((
                response.status().as_u16(),
                response.headers().contains_key("retry-after"),
            ))
        }
    });
    let statuses: Vec<(u16, bool)> = futures::future::join_all(guesses)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    assert!(statuses.iter().all(|s| s.0 == 401 || *s == (429, true)), "{statuses:?}");
    let refused = statuses.iter().filter(|s| s.0 == 429).count();
    let looked_up = statuses.len() - refused;
    assert!(
        (90..=150).contains(&looked_up) && refused >= 50,
        "{looked_up} looked up, {refused} refused"
    );
    // A refused token is remembered: asking again is a 401 from memory, not a lookup.
    let again = http
        .post(sys.mcp_url())
        .bearer_auth(format!("amba_pat_guess{:040}", 0))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await?;
    assert_eq!(again.status(), 401);
    sys.stop().await
}

#[tokio::test]
async fn streams_are_capped_and_a_revoked_token_stops_an_open_stream() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let t = tenant(&sys, "Stream").await?;
    let mut client = grpc(&sys).await?;

    let too_many: Vec<_> = (0..10_001)
        .map(|i| valid_report(&t.program, &format!("cap-{i}"), &t.code))
        .collect();
    let refused = client
        .report_conversions(authed(&t.owner.token, futures::stream::iter(too_many))?)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a stream of 10,001 reports was accepted"))?;
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("10000"), "{}", refused.message());

    // One message larger than any valid report is refused by size.
    let mut huge = valid_report(&t.program, "huge", &t.code);
    huge.subject_ref = "x".repeat(1 << 20);
    let refused = client
        .report_conversion(authed(&t.owner.token, huge)?)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a 1 MiB report was accepted"))?;
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");

    // A stream whose token is revoked while it is open stops.
    let created = t
        .owner
        .mcp
        .ok("amba_affiliate_tokens_create", json!({"name": "streamer"}))
        .await?;
    let token = text(&created["token"]).to_owned();
    let token_id = text(&created["token_id"]).to_owned();
    let (sender, receiver) = tokio::sync::mpsc::channel::<pb::ReportConversionRequest>(1_000);
    let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
    let call = tokio::spawn({
        let mut client = client.clone();
        let request = authed(&token, stream)?;
        async move { client.report_conversions(request).await }
    });
    for i in 0..200 {
        sender
            .send(valid_report(&t.program, &format!("open-{i}"), &t.code))
            .await?;
    }
    t.owner
        .mcp
        .ok("amba_affiliate_tokens_revoke", json!({"token_id": token_id}))
        .await?;
    let mut i = 200;
    let outcome = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            if call.is_finished() {
                break;
            }
            // Keep the stream busy until the edge notices the revocation.
            if sender
                .send(valid_report(&t.program, &format!("open-{i}"), &t.code))
                .await
                .is_err()
            {
                break;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(outcome.is_ok(), "the stream went on after its token was revoked");
    let status = call
        .await?
        .err()
        .ok_or_else(|| anyhow::anyhow!("the stream succeeded"))?;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    sys.stop().await
}

#[tokio::test]
async fn a_forged_click_cannot_take_a_signed_subjects_credit() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let owner = org(&sys, "SigOwner").await?;
    let ann = org(&sys, "SigAnn").await?;
    let mallory = org(&sys, "SigMallory").await?;
    let program = active_program(&owner, json!({"landing_url": "https://acme.example/"})).await?;
    let ann_code = text(&enroll(&owner, &ann, &program, None).await?["code"]).to_owned();
    let mallory_code = text(&enroll(&owner, &mallory, &program, None).await?["code"]).to_owned();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?;
    // A visitor follows Ann's link: the edge mints a subject signed for Ann's code.
    let link = format!("{}/r/{ann_code}", sys.base_url());
    let followed = eventually(Duration::from_secs(10), "the link resolves", || {
        let (http, link) = (http.clone(), link.clone());
        async move {
            let response = http.get(&link).send().await?;
            Ok((response.status() == 302).then_some(response))
        }
    })
    .await?;
    let location = followed
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let subject = location.split("amba_sub=").nth(1).unwrap_or_default().to_owned();
    assert!(subject.starts_with("s1."), "{location}");

    // Mallory learns the subject and records a click on it with her own code: refused
    // everywhere, and nothing recorded.
    let forged = json!({"program_id": program, "code": mallory_code, "subject_ref": subject});
    let response = http
        .post(format!("{}/v1/touchpoints", sys.base_url()))
        .json(&forged)
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await?;
    assert_eq!(body["error"]["code"], "INVALID_ARGUMENT");
    let err = mallory
        .mcp
        .err("amba_affiliate_touchpoint_record", forged.clone())
        .await?;
    assert_eq!(err["code"], "INVALID_ARGUMENT");
    // A tampered signature is refused too.
    let mut tampered = subject.clone();
    tampered.push('0');
    let err = mallory
        .mcp
        .err(
            "amba_affiliate_touchpoint_record",
            json!({"program_id": program, "code": ann_code, "subject_ref": tampered}),
        )
        .await?;
    assert_eq!(err["code"], "INVALID_ARGUMENT");

    // The sale reported with the link's subject is Ann's.
    let sale = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            json!({"program_id": program, "project_id": "web", "external_id": "sig-1", "amount_minor": 5000,
                   "currency": "USD", "subject_ref": subject}),
        )
        .await?;
    assert_eq!(sale["conversion"]["code"], ann_code.as_str(), "{sale}");
    sys.stop().await
}

#[tokio::test]
async fn public_clicks_with_nul_bytes_or_huge_fields_are_400_not_500() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let t = tenant(&sys, "Nul").await?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/touchpoints", sys.base_url());
    for (field, value) in [
        ("code", format!("{}\u{0}", t.code)),
        ("subject_ref", "visitor\u{0}".to_owned()),
        ("landing_url", format!("https://acme.example/{}", "a".repeat(3_000))),
        ("subject_ref", "s".repeat(201)),
    ] {
        let mut body = json!({"program_id": t.program, "code": t.code, "subject_ref": "visitor"});
        body[field] = json!(value);
        let response = http.post(&url).json(&body).send().await?;
        assert_eq!(response.status(), 400, "{field}");
        let body: Value = response.json().await?;
        assert!(text(&body["error"]["message"]).contains(field), "{body}");
    }
    let pool = sys.service_pool("attribution").await?;
    let clicks: i64 = sqlx::query_scalar("SELECT count(*) FROM touchpoints")
        .fetch_one(&pool)
        .await?;
    assert_eq!(clicks, 0);
    pool.close().await;
    sys.stop().await
}

/// The JSON type a property's schema asks for (`["integer", "null"]` → integer).
fn json_type(schema: &Value) -> &str {
    schema["type"]
        .as_str()
        .or_else(|| {
            schema["type"]
                .as_array()
                .and_then(|t| t.iter().find_map(|t| t.as_str().filter(|t| *t != "null")))
        })
        .unwrap_or("string")
}

/// A value of the type `schema` asks for (type errors are another matter), hostile where it can
/// be: strings with a NUL byte and over every limit, integers at the top of their range.
fn hostile_value(schema: &Value, name: &str) -> Value {
    match json_type(schema) {
        "integer" | "number" => match schema["format"].as_str() {
            Some("uint32") => json!(u32::MAX),
            Some("int32") => json!(i32::MAX),
            Some("uint16") => json!(u16::MAX),
            Some("uint64") => json!(u64::MAX),
            _ => json!(i64::MAX),
        },
        "object" => json!({"schema": 1, "type": "flat", "amount_minor": 100, "note": format!("{name}\u{0}")}),
        _ => json!(format!("{}\u{0}{}", name, "x".repeat(5_000))),
    }
}

/// A plausible value of the type `schema` asks for.
fn plain_value(schema: &Value) -> Value {
    match json_type(schema) {
        "integer" | "number" => json!(1),
        "boolean" => json!(false),
        "array" => json!([]),
        "object" => json!({"schema": 1, "type": "flat", "amount_minor": 100}),
        _ => json!("x"),
    }
}

#[tokio::test]
async fn every_mcp_tool_answers_hostile_arguments_with_a_client_error() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let t = tenant(&sys, "Tools").await?;
    let tools = t.owner.mcp.tools().await?;
    assert!(tools.len() >= 25, "{} tools", tools.len());
    let mut checked = 0;
    let mut failures = Vec::new();
    for tool in &tools {
        let schema = serde_json::to_value(&tool.input_schema)?;
        let properties = schema["properties"].as_object().cloned().unwrap_or_default();
        for (hostile, property) in &properties {
            // Every property set (so required ones are present), the one under test hostile and
            // the others plausible.
            if matches!(json_type(property), "boolean" | "array") {
                continue; // nothing hostile fits these types
            }
            let args: serde_json::Map<String, Value> = properties
                .iter()
                .map(|(name, prop)| {
                    let value = if name == hostile {
                        hostile_value(prop, name)
                    } else {
                        plain_value(prop)
                    };
                    (name.clone(), value)
                })
                .collect();
            let result = t.owner.mcp.call(tool.name.as_ref(), Value::Object(args)).await?;
            let error = result
                .structured_content
                .as_ref()
                .map(|c| c["error"].clone())
                .unwrap_or(Value::Null);
            let code = text(&error["code"]);
            if result.is_error != Some(true) || code.is_empty() || matches!(code, "INTERNAL" | "UNAVAILABLE") {
                failures.push(format!(
                    "{} {hostile}: {:?} {error} {:?}",
                    tool.name, result.is_error, result.content
                ));
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 60, "{checked} arguments checked");
    // Nothing the owner can see was created by any of it.
    let programs = t.owner.mcp.ok("amba_affiliate_programs_list", json!({})).await?;
    assert_eq!(programs["programs"].as_array().map(Vec::len), Some(1));
    sys.stop().await
}
