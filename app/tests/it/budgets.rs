//! Per-org budgets (services/edge/src/rate_limit.rs): each surface group driven past its budget
//! by one org through MCP (and gRPC where it has a method) — refused with `RATE_LIMITED` and
//! `retry_after_seconds`, nothing recorded — while a second org at the same moment is served;
//! and the cap on an org's calls in flight, held by streams that stay open.
//!
//! The budgets are made small through their variables, refilling once an hour, so every count
//! below is exact whatever the machine's speed.

use crate::attribution::{authed, grpc, sample, scrape};
use crate::support::{Org, active_program, enroll, org, text};
use crate::system::TestSystem;
use amba_proto::wire as pb;
use amba_testkit::eventually;
use serde_json::{Value, json};
use std::time::Duration;

/// An owner with an active program and an affiliate whose code attribution knows.
struct Tenant {
    owner: Org,
    affiliate: Org,
    program: String,
    code: String,
}

/// Spends 3 of the owner's configuration budget (create, activate, invite) and 1 of the
/// affiliate's (accept); waits for attribution's read model through the database, so no report
/// is spent on waiting.
async fn tenant(sys: &TestSystem, name: &str) -> anyhow::Result<Tenant> {
    let owner = org(sys, &format!("{name}Owner")).await?;
    let affiliate = org(sys, &format!("{name}Aff")).await?;
    let program = active_program(&owner, json!({})).await?;
    let enrollment = enroll(&owner, &affiliate, &program, None).await?;
    let code = text(&enrollment["code"]).to_owned();
    let enrollment_id = text(&enrollment["enrollment_id"]).to_owned();
    // Every read model this file's calls go to, built from enrollment's events.
    let ready: [(&'static str, &'static str, &str); 5] = [
        ("attribution", "SELECT status FROM codes_view WHERE code = $1", &code),
        (
            "attribution",
            "SELECT status FROM enrollments_view WHERE enrollment_id = $1",
            &enrollment_id,
        ),
        (
            "attribution",
            "SELECT status FROM programs_view WHERE program_id = $1",
            &program,
        ),
        (
            "commission",
            "SELECT status FROM programs WHERE program_id = $1",
            &program,
        ),
        (
            "payout",
            "SELECT status FROM programs_view WHERE program_id = $1",
            &program,
        ),
    ];
    for (schema, sql, key) in ready {
        let pool = sys.service_pool(schema).await?;
        eventually(Duration::from_secs(10), sql, || {
            let (pool, key) = (pool.clone(), key.to_owned());
            async move {
                let status: Option<String> = sqlx::query_scalar(sql).bind(&key).fetch_optional(&pool).await?;
                Ok((status.as_deref() == Some("active")).then_some(()))
            }
        })
        .await?;
        pool.close().await;
    }
    Ok(Tenant {
        owner,
        affiliate,
        program,
        code,
    })
}

fn report(program: &str, external_id: &str, code: &str) -> pb::ReportConversionRequest {
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

fn report_args(t: &Tenant, external_id: &str) -> Value {
    json!({"program_id": t.program, "project_id": "web", "external_id": external_id,
           "amount_minor": 10_000, "currency": "USD", "code": t.code})
}

/// An MCP refusal by a budget: `RATE_LIMITED`, 429, a whole number of seconds to wait (here
/// about an hour: the test budgets refill once an hour).
fn assert_limited(err: &Value, what: &str) {
    assert_eq!(err["code"], "RATE_LIMITED", "{what}: {err}");
    assert_eq!(err["status"], 429, "{what}: {err}");
    let seconds = err["details"]["retry_after_seconds"].as_u64().unwrap_or(0);
    assert!(seconds >= 1, "{what}: {err}");
}

/// A gRPC refusal by a budget or the in-flight cap.
fn assert_exhausted(status: &tonic::Status, what: &str) {
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{what}: {status:?}");
    let code = status.metadata().get("amba-error-code").and_then(|v| v.to_str().ok());
    assert_eq!(code, Some("RATE_LIMITED"), "{what}");
    let retry = status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry.is_some_and(|s| s >= 1), "{what}: {status:?}");
}

async fn count(sys: &TestSystem, schema: &'static str, sql: &'static str, key: &str) -> anyhow::Result<i64> {
    let pool = sys.service_pool(schema).await?;
    let n: i64 = sqlx::query_scalar(sql).bind(key).fetch_one(&pool).await?;
    pool.close().await;
    Ok(n)
}

#[tokio::test]
async fn each_surface_has_a_per_org_budget_and_another_org_is_unaffected() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(&[
        ("AMBA_CONFIGURATION_PER_ORG", "5,1/h"),
        ("AMBA_REPORTS_PER_ORG", "6,1/h"),
        ("AMBA_DECISIONS_PER_ORG", "3,1/h"),
        ("AMBA_ANALYTICS_PER_ORG", "3,1/h"),
        ("AMBA_PAYOUTS_PER_ORG", "2,1/h"),
        ("AMBA_READS_PER_ORG", "3,1/h"),
    ])
    .await?;
    let a = tenant(&sys, "Alpha").await?;
    let b = tenant(&sys, "Beta").await?;
    let mut client = grpc(&sys).await?;

    // Configuration writes (5; the tenant's setup spent 3): two more programs, then programs
    // and invites alike are refused and create nothing; Beta creates at the same moment.
    let create = |name: &str| json!({"name": name, "currency": "USD", "commission": {"schema":1,"type":"percentage","bps":1000}});
    for n in 0..2 {
        a.owner
            .mcp
            .ok("amba_affiliate_programs_create", create(&format!("Extra {n}")))
            .await?;
    }
    let refused = a
        .owner
        .mcp
        .err("amba_affiliate_programs_create", create("One too many"))
        .await?;
    assert_limited(&refused, "programs_create");
    assert!(refused["details"]["retry_after_seconds"].as_u64() > Some(60));
    let refused = a
        .owner
        .mcp
        .err(
            "amba_affiliate_invite",
            json!({"program_id": a.program, "affiliate_org_id": b.affiliate.id}),
        )
        .await?;
    assert_limited(&refused, "invite");
    b.owner
        .mcp
        .ok("amba_affiliate_programs_create", create("Beta's second"))
        .await?;
    assert_limited(
        &a.owner
            .mcp
            .err("amba_affiliate_programs_create", create("Still too many"))
            .await?,
        "programs_create after Beta's",
    );
    let programs_sql = "SELECT count(*) FROM programs WHERE owner_org_id = $1";
    assert_eq!(count(&sys, "enrollment", programs_sql, &a.owner.id).await?, 3);
    let enrollments_sql = "SELECT count(*) FROM enrollments WHERE program_id = $1";
    assert_eq!(count(&sys, "enrollment", enrollments_sql, &a.program).await?, 1);

    // Conversion reports (6), every surface from one budget: 2 over MCP, 2 gRPC unary, then a
    // stream of 4 of which the first 2 are recorded and the other 2 get their own RATE_LIMITED
    // outcome; then each surface is refused.
    let mut conversions = Vec::new();
    for n in 0..2 {
        let reported = a
            .owner
            .mcp
            .ok("amba_affiliate_conversion_report", report_args(&a, &format!("mcp-{n}")))
            .await?;
        conversions.push(text(&reported["conversion_id"]).to_owned());
    }
    for n in 0..2 {
        let reply = client
            .report_conversion(authed(
                &a.owner.token,
                report(&a.program, &format!("unary-{n}"), &a.code),
            )?)
            .await?
            .into_inner();
        conversions.push(reply.conversion.unwrap_or_default().conversion_id);
    }
    let streamed: Vec<_> = (0..4)
        .map(|n| report(&a.program, &format!("stream-{n}"), &a.code))
        .collect();
    let reply = client
        .report_conversions(authed(&a.owner.token, futures::stream::iter(streamed))?)
        .await?;
    let retry_after = reply.metadata().get("retry-after").and_then(|v| v.to_str().ok());
    assert!(retry_after.and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| s > 60));
    let outcomes = reply.into_inner().outcomes;
    assert_eq!(outcomes.len(), 4);
    for (n, outcome) in outcomes.iter().enumerate() {
        match (&outcome.result, n < 2) {
            (Some(pb::report_outcome::Result::Ok(ok)), true) => assert!(!ok.duplicate),
            (Some(pb::report_outcome::Result::Error(err)), false) => {
                assert_eq!(err.code, "RATE_LIMITED", "report {n}");
                let details: Value = serde_json::from_str(&err.details_json)?;
                assert!(details["retry_after_seconds"].as_u64().is_some_and(|s| s >= 1));
            }
            other => anyhow::bail!("report {n} of the stream: {other:?}"),
        }
    }
    assert_limited(
        &a.owner
            .mcp
            .err("amba_affiliate_conversion_report", report_args(&a, "mcp-late"))
            .await?,
        "MCP report",
    );
    let refused = client
        .report_conversion(authed(&a.owner.token, report(&a.program, "unary-late", &a.code))?)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a report past the budget was accepted"))?;
    assert_exhausted(&refused, "gRPC report");
    // Beta, at the same moment, reports on both surfaces.
    let beta_conversion = client
        .report_conversion(authed(&b.owner.token, report(&b.program, "beta-1", &b.code))?)
        .await?
        .into_inner()
        .conversion
        .unwrap_or_default()
        .conversion_id;
    b.owner
        .mcp
        .ok("amba_affiliate_conversion_report", report_args(&b, "beta-2"))
        .await?;
    let recorded: Vec<String> = {
        let pool = sys.service_pool("attribution").await?;
        let ids = sqlx::query_scalar("SELECT external_id FROM conversions WHERE program_id = $1 ORDER BY external_id")
            .bind(&a.program)
            .fetch_all(&pool)
            .await?;
        pool.close().await;
        ids
    };
    assert_eq!(
        recorded,
        ["mcp-0", "mcp-1", "stream-0", "stream-1", "unary-0", "unary-1"],
        "only what the budget admitted"
    );

    // Decisions (3): clawbacks over MCP and gRPC, then clawbacks and approvals are refused and
    // reverse nothing; Beta claws back at the same moment.
    let clawback = |id: &str| json!({"conversion_id": id, "reason": "refund", "amount_minor": 1_000});
    a.owner
        .mcp
        .ok("amba_affiliate_conversion_clawback", clawback(&conversions[0]))
        .await?;
    let grpc_clawback = |id: &str| pb::ClawbackRequest {
        conversion_id: id.to_owned(),
        reason: "refund".into(),
        amount_minor: 1_000,
        ..Default::default()
    };
    client
        .clawback_conversion(authed(&a.owner.token, grpc_clawback(&conversions[1]))?)
        .await?;
    a.owner
        .mcp
        .ok("amba_affiliate_conversion_clawback", clawback(&conversions[2]))
        .await?;
    let refused = client
        .clawback_conversion(authed(&a.owner.token, grpc_clawback(&conversions[3]))?)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a clawback past the budget was accepted"))?;
    assert_exhausted(&refused, "gRPC clawback");
    assert_limited(
        &a.owner
            .mcp
            .err("amba_affiliate_conversion_clawback", clawback(&conversions[3]))
            .await?,
        "MCP clawback",
    );
    assert_limited(
        &a.owner
            .mcp
            .err(
                "amba_affiliate_conversion_reject",
                json!({"conversion_id": conversions[3]}),
            )
            .await?,
        "conversion_reject",
    );
    b.owner
        .mcp
        .ok("amba_affiliate_conversion_clawback", clawback(&beta_conversion))
        .await?;
    let clawbacks_sql = "SELECT count(*) FROM clawbacks JOIN conversions USING (conversion_id) WHERE program_id = $1";
    assert_eq!(count(&sys, "attribution", clawbacks_sql, &a.program).await?, 3);
    let clawed_sql = "SELECT clawed_back_minor FROM conversions WHERE conversion_id = $1";
    assert_eq!(count(&sys, "attribution", clawed_sql, &conversions[3]).await?, 0);

    // Analytics (3): the owner's aggregations; the affiliate's own stats are its org's budget.
    let program = json!({"program_id": a.program});
    a.owner.mcp.ok("amba_affiliate_analytics_get", program.clone()).await?;
    a.owner
        .mcp
        .ok("amba_affiliate_leaderboard_get", program.clone())
        .await?;
    a.owner.mcp.ok("amba_affiliate_analytics_get", program.clone()).await?;
    for tool in ["amba_affiliate_analytics_get", "amba_affiliate_leaderboard_get"] {
        assert_limited(&a.owner.mcp.err(tool, program.clone()).await?, tool);
    }
    a.affiliate.mcp.ok("amba_affiliate_my_stats_get", json!({})).await?;
    b.owner
        .mcp
        .ok("amba_affiliate_analytics_get", json!({"program_id": b.program}))
        .await?;

    // Payout runs (2), dry runs too.
    let dry = json!({"program_id": a.program, "dry_run": true});
    for _ in 0..2 {
        a.owner.mcp.ok("amba_affiliate_payout_run", dry.clone()).await?;
    }
    assert_limited(
        &a.owner.mcp.err("amba_affiliate_payout_run", dry.clone()).await?,
        "payout_run",
    );
    b.owner
        .mcp
        .ok(
            "amba_affiliate_payout_run",
            json!({"program_id": b.program, "dry_run": true}),
        )
        .await?;
    let runs_sql = "SELECT count(*) FROM payout_runs WHERE program_id = $1";
    assert_eq!(count(&sys, "payout", runs_sql, &a.program).await?, 0);

    // Reads (3): lists and gets.
    for _ in 0..3 {
        a.owner.mcp.ok("amba_affiliate_programs_list", json!({})).await?;
    }
    assert_limited(
        &a.owner.mcp.err("amba_affiliate_programs_get", program.clone()).await?,
        "programs_get",
    );
    b.owner.mcp.ok("amba_affiliate_programs_list", json!({})).await?;

    // Every refusal above was counted by budget.
    let metrics = scrape(&sys).await?;
    for (budget, refusals) in [
        ("configuration", 3.0),
        ("reports", 4.0),
        ("decisions", 3.0),
        ("analytics", 2.0),
        ("payouts", 1.0),
        ("reads", 1.0),
    ] {
        let series = format!("amba_rate_limited_total{{budget=\"{budget}\"}}");
        assert_eq!(sample(&metrics, &series), refusals, "{series}");
    }
    sys.stop().await
}

/// A `ReportConversions` stream that stays open: the slow call that holds its org's slots.
struct OpenStream {
    sender: tokio::sync::mpsc::Sender<pb::ReportConversionRequest>,
    reply: tokio::task::JoinHandle<Result<tonic::Response<pb::ReportConversionsReply>, tonic::Status>>,
}

async fn open_stream(sys: &TestSystem, token: &str) -> anyhow::Result<OpenStream> {
    let mut client = grpc(sys).await?;
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    let request = authed(token, tokio_stream::wrappers::ReceiverStream::new(receiver))?;
    let reply = tokio::spawn(async move { client.report_conversions(request).await });
    Ok(OpenStream { sender, reply })
}

impl OpenStream {
    /// Sends `reports`, ends the stream and waits for its reply.
    async fn finish(self, reports: Vec<pb::ReportConversionRequest>) -> anyhow::Result<pb::ReportConversionsReply> {
        for report in reports {
            self.sender.send(report).await?;
        }
        drop(self.sender);
        Ok(self.reply.await??.into_inner())
    }
}

async fn slots_in_use_reach(sys: &TestSystem, expected: f64) -> anyhow::Result<()> {
    eventually(Duration::from_secs(10), "the edge's slots in use", || async {
        let metrics = scrape(sys).await?;
        Ok((sample(&metrics, "amba_edge_org_slots_in_use") == expected).then_some(()))
    })
    .await
}

#[tokio::test]
async fn one_org_holding_its_slots_leaves_the_others_theirs() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(&[("AMBA_IN_FLIGHT_PER_ORG", "10")]).await?;
    let a = tenant(&sys, "Alpha").await?;
    let b = tenant(&sys, "Beta").await?;
    let mut client = grpc(&sys).await?;

    // Alpha's backend opens two report streams and keeps them open: the first takes 8 slots
    // (the batch requests a stream sends at once), the second the 2 left.
    let first = open_stream(&sys, &a.owner.token).await?;
    slots_in_use_reach(&sys, 8.0).await?;
    let second = open_stream(&sys, &a.owner.token).await?;
    slots_in_use_reach(&sys, 10.0).await?;

    // Every further call of Alpha is refused at once, and records nothing.
    assert_limited(
        &a.owner.mcp.err("amba_affiliate_programs_list", json!({})).await?,
        "MCP call",
    );
    assert_limited(
        &a.owner
            .mcp
            .err("amba_affiliate_conversion_report", report_args(&a, "while-full-mcp"))
            .await?,
        "MCP report",
    );
    let refused = client
        .report_conversion(authed(&a.owner.token, report(&a.program, "while-full", &a.code))?)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a call past the in-flight cap was served"))?;
    assert_exhausted(&refused, "gRPC report");
    let refused = client
        .report_conversions(authed(
            &a.owner.token,
            futures::stream::iter(vec![report(&a.program, "third-stream", &a.code)]),
        )?)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a third stream past the in-flight cap was served"))?;
    assert_exhausted(&refused, "third stream");

    // Beta, meanwhile, is served on every surface, streams included.
    b.owner.mcp.ok("amba_affiliate_programs_list", json!({})).await?;
    b.owner
        .mcp
        .ok("amba_affiliate_conversion_report", report_args(&b, "beta-mcp"))
        .await?;
    client
        .report_conversion(authed(&b.owner.token, report(&b.program, "beta-unary", &b.code))?)
        .await?;
    let streamed = client
        .report_conversions(authed(
            &b.owner.token,
            futures::stream::iter(vec![report(&b.program, "beta-stream", &b.code)]),
        )?)
        .await?
        .into_inner();
    assert!(matches!(
        streamed.outcomes.as_slice(),
        [pb::ReportOutcome {
            result: Some(pb::report_outcome::Result::Ok(_))
        }]
    ));

    // Alpha's streams end (their reports recorded); its slots are back as soon as they answered.
    let reply = second.finish(vec![report(&a.program, "held-2", &a.code)]).await?;
    assert!(matches!(
        reply.outcomes[0].result,
        Some(pb::report_outcome::Result::Ok(_))
    ));
    a.owner.mcp.ok("amba_affiliate_programs_list", json!({})).await?;
    let reply = first.finish(vec![report(&a.program, "held-1", &a.code)]).await?;
    assert!(matches!(
        reply.outcomes[0].result,
        Some(pb::report_outcome::Result::Ok(_))
    ));
    client
        .report_conversion(authed(&a.owner.token, report(&a.program, "after", &a.code))?)
        .await?;
    slots_in_use_reach(&sys, 0.0).await?;

    let pool = sys.service_pool("attribution").await?;
    let recorded: Vec<String> =
        sqlx::query_scalar("SELECT external_id FROM conversions WHERE program_id = $1 ORDER BY external_id")
            .bind(&a.program)
            .fetch_all(&pool)
            .await?;
    pool.close().await;
    assert_eq!(recorded, ["after", "held-1", "held-2"], "nothing refused was recorded");
    let metrics = scrape(&sys).await?;
    assert_eq!(sample(&metrics, "amba_rate_limited_total{budget=\"in_flight\"}"), 4.0);
    sys.stop().await
}
