//! Attribution through its public surfaces: MCP for owners and apps, gRPC for backends,
//! HTTP for clicks and affiliate links.

use crate::support::{Org, active_program, enroll, org, text};
use crate::system::TestSystem;
use amba_proto::v1::conversions_client::ConversionsClient;
use amba_proto::wire as pb;
use amba_testkit::eventually;
use anyhow::Context;
use chrono::{Duration, Utc};
use serde_json::{Value, json};
use std::collections::HashMap;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

pub async fn grpc(sys: &TestSystem) -> anyhow::Result<ConversionsClient<Channel>> {
    let channel = Channel::from_shared(sys.grpc_url())?.connect().await?;
    Ok(ConversionsClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

pub fn authed<T>(token: &str, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", MetadataValue::try_from(format!("Bearer {token}"))?);
    Ok(request)
}

fn report(program_id: &str, external_id: &str, amount_minor: i64, code: &str) -> pb::ReportConversionRequest {
    pb::ReportConversionRequest {
        program_id: program_id.to_owned(),
        project_id: "web".into(),
        external_id: external_id.to_owned(),
        amount_minor,
        currency: "USD".into(),
        code: code.to_owned(),
        ..Default::default()
    }
}

fn ago(d: Duration) -> String {
    (Utc::now() - d).to_rfc3339()
}

/// Waits until attribution's read model (built from enrollment's events) holds `expected`.
async fn read_model_shows(sys: &TestSystem, sql: &'static str, key: &str, expected: &str) -> anyhow::Result<()> {
    let pool = sys.service_pool("attribution").await?;
    eventually(std::time::Duration::from_secs(10), sql, || {
        let (pool, key) = (pool.clone(), key.to_owned());
        async move {
            let status: Option<String> = sqlx::query_scalar(sql).bind(&key).fetch_optional(&pool).await?;
            Ok(status.filter(|s| s == expected).map(|_| ()))
        }
    })
    .await?;
    pool.close().await;
    Ok(())
}

struct Setup {
    sys: TestSystem,
    owner: Org,
    ann: Org,
    program: String,
    ann_enrollment: Value,
}

async fn setup(program_settings: Value) -> anyhow::Result<Setup> {
    setup_with(program_settings, &[]).await
}

async fn setup_with(program_settings: Value, vars: &[(&str, &str)]) -> anyhow::Result<Setup> {
    let sys = TestSystem::start_with(vars).await?;
    let owner = org(&sys, "Owner").await?;
    let ann = org(&sys, "Ann").await?;
    let program = active_program(&owner, program_settings).await?;
    let ann_enrollment = enroll(&owner, &ann, &program, None).await?;
    // Reports resolve codes from attribution's read model, built from events: wait for it (the
    // code is active from the invite on; the enrollment only once the accept's event arrived).
    read_model_shows(
        &sys,
        "SELECT status FROM codes_view WHERE code = $1",
        text(&ann_enrollment["code"]),
        "active",
    )
    .await?;
    read_model_shows(
        &sys,
        "SELECT status FROM enrollments_view WHERE enrollment_id = $1",
        text(&ann_enrollment["enrollment_id"]),
        "active",
    )
    .await?;
    Ok(Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    })
}

#[tokio::test]
async fn reports_by_code_are_idempotent_and_refusals_record_nothing() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    } = setup(json!({})).await?;
    let code = text(&ann_enrollment["code"]);

    let first = owner
        .mcp
        .ok("amba_affiliate_conversion_report", json!({"program_id": program, "project_id": "web", "external_id": "o-1", "amount_minor": 12_345, "currency": "USD", "code": code}))
        .await?;
    assert_eq!(
        (first["status"].as_str(), first["duplicate"].as_bool()),
        (Some("approved"), Some(false))
    );
    assert_eq!(first["commission_minor"], 2_469, "20% of 123.45, half-even: 24.69");
    assert_eq!(first["enrollment_id"], ann_enrollment["enrollment_id"]);
    assert_eq!(first["conversion"]["attribution"], "code");
    assert_eq!(first["conversion"]["commission_version"], 1);

    let again = owner
        .mcp
        .ok("amba_affiliate_conversion_report", json!({"program_id": program, "project_id": "web", "external_id": "o-1", "amount_minor": 12_345, "currency": "usd", "code": code}))
        .await?;
    assert_eq!(
        (again["conversion_id"].clone(), again["duplicate"].as_bool()),
        (first["conversion_id"].clone(), Some(true))
    );

    let base = json!({"program_id": program, "project_id": "web", "amount_minor": 1_000, "currency": "USD"});
    let with = |extra: Value| {
        let mut args = base.clone();
        if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
            a.extend(e.clone());
        }
        args
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            with(json!({"external_id": "o-1", "amount_minor": 12_346, "code": code})),
            "IDEMPOTENCY_MISMATCH",
        ),
        (
            with(json!({"external_id": "o-1", "amount_minor": 12_345, "code": ""})),
            "IDEMPOTENCY_MISMATCH",
        ),
        (
            with(json!({"external_id": "o-2", "currency": "EUR", "code": code})),
            "INVALID_ARGUMENT",
        ),
        (
            with(json!({"external_id": "o-2", "code": "nosuchcode23"})),
            "INVALID_ARGUMENT",
        ),
        (
            with(json!({"external_id": "o-2", "amount_minor": -5, "code": code})),
            "INVALID_ARGUMENT",
        ),
        (with(json!({"external_id": "", "code": code})), "INVALID_ARGUMENT"),
        (
            with(json!({"external_id": "o-2", "occurred_at": "yesterday"})),
            "INVALID_ARGUMENT",
        ),
        (
            with(json!({"external_id": "o-2", "program_id": "prg_00000000000000000000000000000000"})),
            "NOT_FOUND",
        ),
    ];
    for (args, code) in cases {
        let err = owner.mcp.err("amba_affiliate_conversion_report", args.clone()).await?;
        assert_eq!(err["code"], code, "{args}");
    }
    // Another owner cannot report into (or learn about) this program.
    let other = org(&sys, "Other").await?;
    let err = other
        .mcp
        .err(
            "amba_affiliate_conversion_report",
            with(json!({"external_id": "o-1", "amount_minor": 12_345, "code": code})),
        )
        .await?;
    assert_eq!(err["code"], "NOT_FOUND");

    // A retired code and a paused program refuse new reports.
    let rotated = ann
        .mcp
        .ok(
            "amba_affiliate_my_referral_generate",
            json!({"enrollment_id": ann_enrollment["enrollment_id"]}),
        )
        .await?;
    // Attribution learns of the rotation from events; wait for its read model, then report.
    read_model_shows(&sys, "SELECT status FROM codes_view WHERE code = $1", code, "retired").await?;
    let retired = owner
        .mcp
        .err(
            "amba_affiliate_conversion_report",
            with(json!({"external_id": "o-3", "code": code})),
        )
        .await?;
    assert_eq!(retired["code"], "CONFLICT");
    assert!(retired["message"].as_str().is_some_and(|m| m.contains("retired")));
    let new_code = text(&rotated["code"]).to_owned();
    read_model_shows(
        &sys,
        "SELECT status FROM codes_view WHERE code = $1",
        &new_code,
        "active",
    )
    .await?;
    owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            with(json!({"external_id": "o-4", "code": new_code})),
        )
        .await?;
    owner
        .mcp
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": program, "status": "paused"}),
        )
        .await?;
    read_model_shows(
        &sys,
        "SELECT status FROM programs_view WHERE program_id = $1",
        &program,
        "paused",
    )
    .await?;
    let paused = owner
        .mcp
        .err(
            "amba_affiliate_conversion_report",
            with(json!({"external_id": "o-5", "code": new_code})),
        )
        .await?;
    assert_eq!(paused["code"], "CONFLICT");
    assert!(paused["message"].as_str().is_some_and(|m| m.contains("paused")));

    let listed = owner
        .mcp
        .ok("amba_affiliate_conversions_list", json!({"program_id": program}))
        .await?;
    let ids: Vec<&str> = listed["conversions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| text(&c["external_id"]))
        .collect();
    assert_eq!(ids, vec!["o-1", "o-4"], "refused reports recorded nothing");
    let mine = ann.mcp.ok("amba_affiliate_my_conversions_list", json!({})).await?;
    assert_eq!(mine["conversions"].as_array().map(Vec::len), Some(2));
    assert!(mine["conversions"][0].get("customer_ref").is_none());
    sys.stop().await
}

#[tokio::test]
async fn touchpoints_window_latest_touch_rotation_and_unattributed() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    } = setup(json!({"attribution_window_days": 7})).await?;
    let bob = org(&sys, "Bob").await?;
    let bob_enrollment = enroll(&owner, &bob, &program, None).await?;
    let anonymous = sys.mcp(None).await?;
    let ann_code = text(&ann_enrollment["code"]).to_owned();
    let bob_code = text(&bob_enrollment["code"]).to_owned();
    eventually(
        std::time::Duration::from_secs(10),
        "bob's code in the read model",
        || {
            let anonymous = &anonymous;
            let args = json!({"program_id": program, "code": bob_code, "subject_ref": "warmup"});
            async move {
                Ok(anonymous
                    .call("amba_affiliate_touchpoint_record", args)
                    .await?
                    .is_error
                    .filter(|e| !e)
                    .map(|_| ()))
            }
        },
    )
    .await?;

    // Public clicks, no token. The same code and subject within 30 minutes count once.
    let click = |subject: &str, code: &str, at: String| json!({"program_id": program, "code": code, "subject_ref": subject, "occurred_at": at});
    let t = anonymous
        .ok(
            "amba_affiliate_touchpoint_record",
            click("visitor-1", &ann_code, ago(Duration::days(8))),
        )
        .await?;
    assert_eq!(t["duplicate"], false);
    let again = anonymous
        .ok(
            "amba_affiliate_touchpoint_record",
            click("visitor-1", &ann_code, ago(Duration::days(8) - Duration::minutes(1))),
        )
        .await?;
    assert_eq!(
        (again["touchpoint_id"].clone(), again["duplicate"].as_bool()),
        (t["touchpoint_id"].clone(), Some(true))
    );

    let sale = |id: &str, subject: &str, at: String| json!({"program_id": program, "project_id": "web", "external_id": id, "amount_minor": 5_000, "currency": "USD", "subject_ref": subject, "occurred_at": at});
    let clicked_at = Utc::now() - Duration::days(8);
    // Just inside the 7-day window, and just outside it.
    let inside = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(
                "s-1",
                "visitor-1",
                (clicked_at + Duration::days(7) - Duration::minutes(2)).to_rfc3339(),
            ),
        )
        .await?;
    assert_eq!(
        (inside["status"].as_str(), inside["conversion"]["attribution"].as_str()),
        (Some("approved"), Some("touchpoint"))
    );
    assert_eq!(inside["enrollment_id"], ann_enrollment["enrollment_id"]);
    assert_eq!(inside["conversion"]["touchpoint_id"], t["touchpoint_id"]);
    let outside = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(
                "s-2",
                "visitor-1",
                (clicked_at + Duration::days(7) + Duration::minutes(2)).to_rfc3339(),
            ),
        )
        .await?;
    assert_eq!(outside["status"], "unattributed");
    assert_eq!(outside["commission_minor"], 0);
    assert!(outside["conversion"]["reason"].is_string(), "the reply says why");
    assert!(outside.get("enrollment_id").is_none());

    // Latest touch wins: Ann then Bob clicked; Bob gets it.
    anonymous
        .ok(
            "amba_affiliate_touchpoint_record",
            click("visitor-2", &ann_code, ago(Duration::hours(5))),
        )
        .await?;
    anonymous
        .ok(
            "amba_affiliate_touchpoint_record",
            click("visitor-2", &bob_code, ago(Duration::hours(2))),
        )
        .await?;
    let latest = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale("s-3", "visitor-2", ago(Duration::hours(1))),
        )
        .await?;
    assert_eq!(latest["enrollment_id"], bob_enrollment["enrollment_id"]);

    // A click recorded before Ann rotates her code still counts afterwards.
    anonymous
        .ok(
            "amba_affiliate_touchpoint_record",
            click("visitor-3", &ann_code, ago(Duration::hours(3))),
        )
        .await?;
    ann.mcp
        .ok(
            "amba_affiliate_my_referral_generate",
            json!({"enrollment_id": ann_enrollment["enrollment_id"]}),
        )
        .await?;
    let after_rotation = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale("s-4", "visitor-3", ago(Duration::hours(1))),
        )
        .await?;
    assert_eq!(after_rotation["enrollment_id"], ann_enrollment["enrollment_id"]);
    // But the retired code records no new clicks.
    let refused = eventually(
        std::time::Duration::from_secs(10),
        "the retired code to refuse clicks",
        || {
            let anonymous = &anonymous;
            let args = click("visitor-4", &ann_code, ago(Duration::minutes(1)));
            async move {
                Ok(anonymous
                    .call("amba_affiliate_touchpoint_record", args)
                    .await?
                    .structured_content
                    .and_then(|c| c.get("error").cloned()))
            }
        },
    )
    .await?;
    assert_eq!(refused["code"], "CONFLICT");

    // Nothing at all: unattributed.
    let nobody = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale("s-5", "stranger", ago(Duration::minutes(1))),
        )
        .await?;
    assert_eq!(
        (nobody["status"].as_str(), nobody["conversion"]["attribution"].as_str()),
        (Some("unattributed"), Some("none"))
    );
    sys.stop().await
}

#[tokio::test]
async fn manual_approval_renewals_and_self_referral() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    } = setup(json!({"approval_mode": "manual", "commission": {"schema":1,"type":"recurring","bps":1000,"months":12}}))
        .await?;
    let code = text(&ann_enrollment["code"]);
    let report = |id: &str, extra: Value| {
        let mut args = json!({"program_id": program, "project_id": "billing", "external_id": id, "amount_minor": 9_900, "currency": "USD"});
        if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
            a.extend(e.clone());
        }
        args
    };
    let first = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            report(
                "inv-1",
                json!({"code": code, "customer_ref": "cus_42", "occurred_at": ago(Duration::days(40))}),
            ),
        )
        .await?;
    assert_eq!(
        (first["status"].as_str(), first["commission_minor"].as_i64()),
        (Some("pending"), Some(0))
    );
    let approved = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_approve",
            json!({"conversion_id": first["conversion_id"]}),
        )
        .await?;
    assert_eq!(
        (
            approved["conversion"]["status"].as_str(),
            approved["conversion"]["commission_minor"].as_i64()
        ),
        (Some("approved"), Some(990))
    );
    let twice = owner
        .mcp
        .err(
            "amba_affiliate_conversion_approve",
            json!({"conversion_id": first["conversion_id"]}),
        )
        .await?;
    assert_eq!(twice["code"], "CONFLICT");

    // A renewal of the bound customer, without a code, goes to the same affiliate.
    let renewal = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            report("inv-2", json!({"customer_ref": "cus_42"})),
        )
        .await?;
    assert_eq!(
        (
            renewal["conversion"]["attribution"].as_str(),
            renewal["conversion"]["renewal"].as_bool()
        ),
        (Some("customer"), Some(true))
    );
    assert_eq!(renewal["enrollment_id"], ann_enrollment["enrollment_id"]);
    let rejected = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_reject",
            json!({"conversion_id": renewal["conversion_id"], "reason": "refunded trial"}),
        )
        .await?;
    assert_eq!(
        (
            rejected["conversion"]["status"].as_str(),
            rejected["conversion"]["reason"].as_str()
        ),
        (Some("rejected"), Some("refunded trial"))
    );
    assert_eq!(
        owner
            .mcp
            .err(
                "amba_affiliate_conversion_approve",
                json!({"conversion_id": renewal["conversion_id"]})
            )
            .await?["code"],
        "CONFLICT"
    );

    // The affiliate buying through its own link is held, with the reason.
    let own = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            report("inv-3", json!({"code": code, "customer_email": "ANN@example.com"})),
        )
        .await?;
    assert_eq!(
        (own["status"].as_str(), own["conversion"]["held_for_review"].as_bool()),
        (Some("pending"), Some(true))
    );
    assert!(
        own["conversion"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("self-referral"))
    );

    // Affiliates cannot decide (they are told it is the owner's tool); other owners cannot see.
    assert_eq!(
        ann.mcp
            .err(
                "amba_affiliate_conversion_approve",
                json!({"conversion_id": own["conversion_id"]})
            )
            .await?["code"],
        "FORBIDDEN"
    );
    let pending = owner
        .mcp
        .ok(
            "amba_affiliate_conversions_list",
            json!({"program_id": program, "status": "pending"}),
        )
        .await?;
    assert_eq!(pending["conversions"].as_array().map(Vec::len), Some(1));
    sys.stop().await
}

#[tokio::test]
async fn every_grpc_method_with_a_tonic_client() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        program,
        ann_enrollment,
        ..
    } = setup(json!({"landing_url": "https://acme.example/pricing"})).await?;
    let code = text(&ann_enrollment["code"]).to_owned();
    let mut client = grpc(&sys).await?;

    // Without a token: UNAUTHENTICATED, with the typed error in the details.
    let denied = client
        .report_conversion(report(&program, "g-0", 100, &code))
        .await
        .err();
    let denied = denied.ok_or_else(|| anyhow::anyhow!("expected a refusal"))?;
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    let details: Value = serde_json::from_slice(denied.details())?;
    assert_eq!(details["error"]["code"], "UNAUTHENTICATED");

    let one = client
        .report_conversion(authed(&owner.token, report(&program, "g-1", 10_000, &code))?)
        .await?
        .into_inner();
    let conversion = one.conversion.unwrap_or_default();
    assert_eq!(
        (conversion.status.as_str(), conversion.commission_minor, one.duplicate),
        ("approved", 2_000, false)
    );

    let mismatch = client
        .report_conversion(authed(&owner.token, report(&program, "g-1", 10_001, &code))?)
        .await
        .err();
    assert_eq!(mismatch.map(|s| s.code()), Some(tonic::Code::AlreadyExists));

    // A stream with invalid items mixed in: per-item errors, the valid ones recorded.
    let items = vec![
        report(&program, "g-2", 1_000, &code),
        report(&program, "g-3", -1, &code),
        report(&program, "g-4", 2_000, "nosuchcode23"),
        report(&program, "g-1", 10_000, &code),
        pb::ReportConversionRequest {
            currency: "EUR".into(),
            ..report(&program, "g-5", 3_000, &code)
        },
        report(&program, "g-6", 4_000, &code),
    ];
    let reply = client
        .report_conversions(authed(&owner.token, futures::stream::iter(items))?)
        .await?
        .into_inner();
    let summary: Vec<String> = reply
        .outcomes
        .iter()
        .map(|o| match &o.result {
            Some(pb::report_outcome::Result::Ok(r)) => format!(
                "ok {} dup={}",
                r.conversion.as_ref().map(|c| c.external_id.as_str()).unwrap_or(""),
                r.duplicate
            ),
            Some(pb::report_outcome::Result::Error(e)) => e.code.clone(),
            None => "none".into(),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            "ok g-2 dup=false",
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "ok g-1 dup=true",
            "INVALID_ARGUMENT",
            "ok g-6 dup=false"
        ]
    );

    let touch = pb::RecordTouchpointRequest {
        program_id: program.clone(),
        code: code.clone(),
        subject_ref: "grpc-visitor".into(),
        ..Default::default()
    };
    let touched = client
        .record_touchpoint(authed(&owner.token, touch)?)
        .await?
        .into_inner();
    assert!(touched.touchpoint_id.starts_with("tch_") && !touched.duplicate);
    assert_eq!(touched.landing_url, "https://acme.example/pricing");

    let clawback = pb::ClawbackRequest {
        conversion_id: conversion.conversion_id.clone(),
        reason: "refund".into(),
        amount_minor: 2_500,
        ..Default::default()
    };
    let clawed = client
        .clawback_conversion(authed(&owner.token, clawback.clone())?)
        .await?
        .into_inner();
    assert_eq!(
        (clawed.refund_minor, clawed.conversion.map(|c| c.clawed_back_minor)),
        (2_500, Some(2_500))
    );
    let too_much = pb::ClawbackRequest {
        amount_minor: 7_501,
        ..clawback
    };
    let refused = client.clawback_conversion(authed(&owner.token, too_much)?).await.err();
    assert_eq!(
        refused.map(|s| s.code()),
        Some(tonic::Code::FailedPrecondition),
        "beyond what remains"
    );

    let mut health =
        tonic_health::pb::health_client::HealthClient::new(Channel::from_shared(sys.grpc_url())?.connect().await?);
    let served = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "amba.affiliate.v1.Conversions".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        served.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let listed = owner
        .mcp
        .ok("amba_affiliate_conversions_list", json!({"program_id": program}))
        .await?;
    let mut ids: Vec<&str> = listed["conversions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| text(&c["external_id"]))
        .collect();
    ids.sort_unstable(); // reports of one stream commit on different writers, so ids interleave
    assert_eq!(ids, vec!["g-1", "g-2", "g-6"]);
    sys.stop().await
}

#[tokio::test]
async fn sixty_four_callers_racing_on_the_same_keys_record_each_once() -> anyhow::Result<()> {
    // One org racing itself: 49,600 reports at once from 64 callers, far past a shop's budgets.
    let budgets = [
        ("AMBA_REPORTS_PER_ORG", "100000,10000/s"),
        ("AMBA_IN_FLIGHT_PER_ORG", "1024"),
    ];
    let Setup {
        sys,
        owner,
        program,
        ann_enrollment,
        ..
    } = setup_with(json!({}), &budgets).await?;
    let code = text(&ann_enrollment["code"]).to_owned();
    let keys: Vec<String> = (0..1_000).map(|i| format!("race-{i}")).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..64usize {
        let (url, token, program, code, keys) = (
            sys.grpc_url(),
            owner.token.clone(),
            program.clone(),
            code.clone(),
            keys.clone(),
        );
        tasks.spawn(async move {
            let mut client = ConversionsClient::new(Channel::from_shared(url)?.connect().await?)
                .max_decoding_message_size(64 * 1024 * 1024);
            // Each task walks the keys from its own starting point, so every key is hit concurrently.
            let order: Vec<&String> = keys.iter().cycle().skip(task * 15).take(keys.len()).collect();
            let amount = |k: &str| 1_000 + k.len() as i64;
            let mut seen = HashMap::new();
            if task % 4 == 0 {
                for key in order.iter().take(100) {
                    let reply = client
                        .report_conversion(authed(&token, report(&program, key, amount(key), &code))?)
                        .await?
                        .into_inner();
                    let c = reply.conversion.unwrap_or_default();
                    seen.insert((*key).clone(), (c.conversion_id, c.status, c.commission_minor));
                }
            } else {
                let items: Vec<pb::ReportConversionRequest> =
                    order.iter().map(|k| report(&program, k, amount(k), &code)).collect();
                let reply = client
                    .report_conversions(authed(&token, futures::stream::iter(items))?)
                    .await?
                    .into_inner();
                for (key, outcome) in order.iter().zip(reply.outcomes) {
                    match outcome.result {
                        Some(pb::report_outcome::Result::Ok(r)) => {
                            let c = r.conversion.unwrap_or_default();
                            seen.insert((*key).clone(), (c.conversion_id, c.status, c.commission_minor));
                        }
                        other => anyhow::bail!("{key}: {other:?}"),
                    }
                }
            }
            anyhow::Ok(seen)
        });
    }
    let mut outcomes: HashMap<String, (String, String, i64)> = HashMap::new();
    while let Some(result) = tasks.join_next().await {
        for (key, outcome) in result?? {
            let first = outcomes.entry(key.clone()).or_insert_with(|| outcome.clone());
            assert_eq!(*first, outcome, "every caller of {key} sees the same outcome");
        }
    }
    assert_eq!(outcomes.len(), 1_000);
    let pool = sys.service_pool("attribution").await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM conversions")
        .fetch_one(&pool)
        .await?;
    assert_eq!(stored, 1_000);
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT conversion_id) FROM conversions")
        .fetch_one(&pool)
        .await?;
    assert_eq!(distinct, 1_000);

    // Every conversion's event reaches JetStream once, also when a relay dies between publishing
    // and deleting its rows: put half of the published events back into the outbox, as such a
    // crash leaves them; they go out again and the stream deduplicates them.
    let stream = sys.bus.ns.events_stream("attribution");
    let outbox_empty = || {
        let pool = pool.clone();
        async move {
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&pool)
                .await?;
            Ok((left == 0).then_some(()))
        }
    };
    eventually(std::time::Duration::from_secs(30), "the outbox to drain", outbox_empty).await?;
    let published = sys.bus.js.get_stream(&stream).await?;
    let consumer = published
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await?;
    let mut batch = consumer
        .fetch()
        .max_messages(500)
        .expires(std::time::Duration::from_secs(1))
        .messages()
        .await?;
    let mut replayed = 0;
    while let Some(message) = futures::StreamExt::next(&mut batch).await {
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        let event_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        sqlx::query("INSERT INTO outbox (event_id, subject, payload) VALUES ($1, $2, $3)")
            .bind(event_id)
            .bind(message.subject.to_string())
            .bind(message.payload.to_vec())
            .execute(&pool)
            .await?;
        replayed += 1;
    }
    assert_eq!(replayed, 500);
    eventually(
        std::time::Duration::from_secs(30),
        "the replayed half to drain",
        outbox_empty,
    )
    .await?;
    let messages = sys.bus.js.get_stream(&stream).await?.info().await?.state.messages;
    assert_eq!(messages, 1_000, "one event per conversion, no copies");
    pool.close().await;
    sys.stop().await
}

#[tokio::test]
async fn public_click_endpoints_cors_links_and_rate_limits() -> anyhow::Result<()> {
    let Setup {
        sys,
        program,
        ann_enrollment,
        ..
    } = setup(json!({"landing_url": "https://acme.example/pricing?plan=pro"})).await?;
    let code = text(&ann_enrollment["code"]).to_owned();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let url = format!("{}/v1/touchpoints", sys.base_url());

    // A browser preflight from the owner's site.
    let preflight = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://acme.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await?;
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("*")
    );

    let body = json!({"program_id": program, "code": code, "subject_ref": "app-visitor-1"});
    let created = http
        .post(&url)
        .header("origin", "https://acme.example")
        .json(&body)
        .send()
        .await?;
    assert_eq!(created.status(), 201);
    assert_eq!(
        created
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("*")
    );
    let created: Value = created.json().await?;
    assert!(text(&created["touchpoint_id"]).starts_with("tch_"));
    let again: Value = http.post(&url).json(&body).send().await?.json().await?;
    assert_eq!(
        (again["touchpoint_id"].clone(), again["duplicate"].as_bool()),
        (created["touchpoint_id"].clone(), Some(true))
    );

    let bad = http
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"code\": 1")
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.json().await?;
    assert_eq!(bad["error"]["code"], "INVALID_ARGUMENT");
    let unknown = http
        .post(&url)
        .json(&json!({"program_id": program, "code": "nosuchcode23", "subject_ref": "x"}))
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);

    // An affiliate link: recorded, then redirected with the subject for the owner's app.
    let link = http.get(format!("{}/r/{code}", sys.base_url())).send().await?;
    assert_eq!(link.status(), 302);
    let location = link
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        location.starts_with(&format!(
            "https://acme.example/pricing?plan=pro&amba_ref={code}&amba_sub=s1."
        )),
        "{location}"
    );
    let cookie = link
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let subject = location.rsplit("amba_sub=").next().unwrap_or_default().to_owned();
    assert!(cookie.starts_with(&format!("amba_sub={subject};")), "{cookie}");
    // The same visitor clicking again keeps its subject (and counts once).
    let back = http
        .get(format!("{}/r/{code}", sys.base_url()))
        .header("cookie", format!("amba_sub={subject}"))
        .send()
        .await?;
    assert!(
        back.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|l| l.ends_with(&subject))
    );
    let pool = sys.service_pool("attribution").await?;
    let clicks: i64 = sqlx::query_scalar("SELECT count(*) FROM touchpoints WHERE subject_ref = $1")
        .bind(&subject)
        .fetch_one(&pool)
        .await?;
    assert_eq!(clicks, 1);
    assert_eq!(
        http.get(format!("{}/r/nosuchcode23", sys.base_url()))
            .send()
            .await?
            .status(),
        404
    );

    // A burst from one address is slowed down with 429 and Retry-After; with no trusted proxy
    // configured, a forged X-Forwarded-For does not buy a fresh bucket.
    let mut limited = None;
    for i in 0..200 {
        let response = http
            .post(&url)
            .header("x-forwarded-for", format!("203.0.113.{}", i % 250))
            .json(&json!({"program_id": program, "code": code, "subject_ref": format!("burst-{i}")}))
            .send()
            .await?;
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.ok_or_else(|| anyhow::anyhow!("no 429 after 200 rapid requests"))?;
    assert!(limited.headers().get("retry-after").is_some());
    let limited: Value = limited.json().await?;
    assert_eq!(limited["error"]["code"], "RATE_LIMITED");
    pool.close().await;
    sys.stop().await
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_rate_limit() -> anyhow::Result<()> {
    // The test client connects from 127.0.0.1, standing in for the ingress.
    let Setup {
        sys,
        program,
        ann_enrollment,
        ..
    } = setup_with(json!({}), &[("AMBA_TRUSTED_PROXIES", "127.0.0.0/8")]).await?;
    let code = text(&ann_enrollment["code"]).to_owned();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/touchpoints", sys.base_url());
    let click = |client: &'static str, i: usize| {
        http.post(&url)
            .header("x-forwarded-for", format!("6.6.6.6, {client}"))
            .json(&json!({"program_id": program, "code": code, "subject_ref": format!("{client}-{i}")}))
            .send()
    };

    // One visitor bursts until slowed down; the address recorded is theirs, not the proxy's
    // and not the forged left-most hop.
    let mut limited = false;
    for i in 0..200 {
        if click("198.51.100.4", i).await?.status() == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "no 429 after 200 rapid requests from one forwarded client");
    // Another visitor behind the same proxy is not affected.
    assert_eq!(click("198.51.100.5", 0).await?.status(), 201);

    let pool = sys.service_pool("attribution").await?;
    let recorded: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT client_ip FROM touchpoints WHERE program_id = $1 ORDER BY 1")
            .bind(&program)
            .fetch_all(&pool)
            .await?;
    assert_eq!(recorded, vec!["198.51.100.4", "198.51.100.5"]);
    pool.close().await;
    sys.stop().await
}

/// An authenticated gRPC request in the caller's trace (`traceparent` metadata).
fn in_trace<T>(token: &str, trace_id: &str, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = authed(token, message)?;
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    request
        .metadata_mut()
        .insert("traceparent", MetadataValue::try_from(traceparent)?);
    Ok(request)
}

/// The `traceparent` header of each conversion event on JetStream, by external id.
async fn event_traces(sys: &TestSystem, expected: usize) -> anyhow::Result<HashMap<String, String>> {
    let stream = sys.bus.js.get_stream(sys.bus.ns.events_stream("attribution")).await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await?;
    let mut batch = consumer
        .fetch()
        .max_messages(expected)
        .expires(std::time::Duration::from_secs(2))
        .messages()
        .await?;
    let mut traces = HashMap::new();
    while let Some(message) = futures::StreamExt::next(&mut batch).await {
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        let changed = <pb::ConversionChanged as prost::Message>::decode(message.payload.as_ref())?;
        let header = message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        let meta = changed.meta.unwrap_or_default();
        assert_eq!(
            meta.traceparent, header,
            "the event body and its header name the same trace"
        );
        traces.insert(changed.conversion.unwrap_or_default().external_id, header);
    }
    Ok(traces)
}

#[tokio::test]
async fn reports_continue_the_callers_trace_into_their_conversion_events() -> anyhow::Result<()> {
    // The process's telemetry, as `amba` installs it (no exporter: context still propagates).
    let _telemetry = amba_telemetry::init("amba-it", None, false)?;
    let Setup {
        sys,
        owner,
        program,
        ann_enrollment,
        ..
    } = setup(json!({})).await?;
    let code = text(&ann_enrollment["code"]).to_owned();
    let mut client = grpc(&sys).await?;
    let (unary_trace, stream_trace, mcp_trace) = (
        "0af7651916cd43dd8448eb211c80319c",
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "5c1e2f3a4b5c6d7e8f90a1b2c3d4e5f6",
    );

    client
        .report_conversion(in_trace(
            &owner.token,
            unary_trace,
            report(&program, "t-unary", 1_000, &code),
        )?)
        .await?;
    let items = vec![
        report(&program, "t-stream-1", 1_000, &code),
        report(&program, "t-stream-2", 1_000, &code),
    ];
    client
        .report_conversions(in_trace(&owner.token, stream_trace, futures::stream::iter(items))?)
        .await?;
    let args = json!({"program_id": program, "project_id": "web", "external_id": "t-mcp",
                      "amount_minor": 1_000, "currency": "USD", "code": code});
    let traceparent = format!("00-{mcp_trace}-00f067aa0ba902b7-01");
    let reported = owner
        .mcp
        .call_in_trace("amba_affiliate_conversion_report", args, &traceparent)
        .await?;
    assert_ne!(reported.is_error, Some(true));
    // Without a trace from the caller, the edge starts one.
    client
        .report_conversion(authed(&owner.token, report(&program, "t-none", 1_000, &code))?)
        .await?;

    let traces = eventually(std::time::Duration::from_secs(10), "five conversion events", || {
        let sys = &sys;
        async move {
            let traces = event_traces(sys, 5).await?;
            Ok((traces.len() == 5).then_some(traces))
        }
    })
    .await?;
    let trace_of = |external_id: &str| {
        traces
            .get(external_id)
            .and_then(|tp| tp.split('-').nth(1))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(trace_of("t-unary"), unary_trace);
    assert_eq!(trace_of("t-stream-1"), stream_trace);
    assert_eq!(trace_of("t-stream-2"), stream_trace);
    assert_eq!(trace_of("t-mcp"), mcp_trace);
    let fresh = trace_of("t-none");
    assert_eq!(fresh.len(), 32, "a trace the edge started: {fresh:?}");
    assert!(![unary_trace, stream_trace, mcp_trace].contains(&fresh.as_str()));
    sys.stop().await
}

/// One sample of `/metrics` (0 when the series is absent), e.g.
/// `amba_conversion_reports_total{surface="grpc",outcome="recorded"}`.
pub(crate) fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub(crate) async fn scrape(sys: &TestSystem) -> anyhow::Result<String> {
    let url = sys.metrics_url().context("the test system serves metrics")?;
    let response = reqwest::get(url).await?;
    anyhow::ensure!(response.status() == 200, "GET /metrics: {}", response.status());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(content_type.starts_with("text/plain"), "content-type {content_type}");
    Ok(response.text().await?)
}

#[tokio::test]
async fn metrics_count_reports_by_surface_and_outcome_and_time_the_pipeline() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        program,
        ann_enrollment,
        ..
    } = setup(json!({})).await?;
    let code = text(&ann_enrollment["code"]).to_owned();
    let public = reqwest::get(format!("{}/metrics", sys.base_url())).await?;
    assert_eq!(public.status(), 404, "metrics stay off the public port");
    let before = scrape(&sys).await?;
    let mut client = grpc(&sys).await?;

    client
        .report_conversion(authed(&owner.token, report(&program, "m-1", 1_000, &code))?)
        .await?;
    client
        .report_conversion(authed(&owner.token, report(&program, "m-1", 1_000, &code))?)
        .await?;
    let refused = client
        .report_conversion(authed(&owner.token, report(&program, "m-2", -5, &code))?)
        .await;
    assert!(refused.is_err());
    let items = vec![
        report(&program, "m-3", 1_000, &code),
        report(&program, "m-4", 1_000, &code),
        report(&program, "m-1", 1_000, &code),
        report(&program, "m-5", 1_000, "nosuchcode23"),
    ];
    client
        .report_conversions(authed(&owner.token, futures::stream::iter(items))?)
        .await?;
    owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            json!({"program_id": program, "project_id": "web", "external_id": "m-6",
                   "amount_minor": 1_000, "currency": "USD", "code": code}),
        )
        .await?;

    let reports = |surface: &str, outcome: &str| {
        format!("amba_conversion_reports_total{{surface=\"{surface}\",outcome=\"{outcome}\"}}")
    };
    let published_before = sample(&before, "amba_outbox_published_total");
    let after = eventually(
        std::time::Duration::from_secs(10),
        "the four events to be published",
        || {
            let sys = &sys;
            async move {
                let after = scrape(sys).await?;
                let published = sample(&after, "amba_outbox_published_total");
                Ok((published >= published_before + 4.0).then_some(after))
            }
        },
    )
    .await?;
    let delta = |series: String| sample(&after, &series) - sample(&before, &series);
    assert_eq!(delta(reports("grpc", "recorded")), 1.0);
    assert_eq!(delta(reports("grpc", "duplicate")), 1.0);
    assert_eq!(delta(reports("grpc", "INVALID_ARGUMENT")), 1.0);
    assert_eq!(delta(reports("grpc_stream", "recorded")), 2.0);
    assert_eq!(delta(reports("grpc_stream", "duplicate")), 1.0);
    assert_eq!(delta(reports("grpc_stream", "INVALID_ARGUMENT")), 1.0);
    assert_eq!(delta(reports("mcp", "recorded")), 1.0);
    // Latency of single reports, the writer's batches, and the relay's lag are histograms.
    assert_eq!(
        delta("amba_conversion_report_seconds_count{surface=\"grpc\"}".into()),
        3.0
    );
    assert!(delta("amba_writer_batch_size_count".into()) >= 1.0);
    assert!(after.contains("amba_outbox_publish_lag_seconds_bucket{le=\"0.1\"}"));
    assert!(after.contains("amba_events_consumed_total{consumer="));
    sys.stop().await
}

#[tokio::test]
async fn anonymous_mcp_touchpoints_are_rate_limited_per_address_like_the_http_endpoint() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        program,
        ann_enrollment,
        ..
    } = setup(json!({})).await?;
    let code = text(&ann_enrollment["code"]).to_owned();
    let anonymous = sys.mcp(None).await?;
    let mut limited = None;
    for i in 0..200 {
        let result = anonymous
            .call(
                "amba_affiliate_touchpoint_record",
                json!({"program_id": program, "code": code, "subject_ref": format!("anon-{i}")}),
            )
            .await?;
        if result.is_error == Some(true) {
            limited = result.structured_content;
            break;
        }
    }
    let limited = limited.ok_or_else(|| anyhow::anyhow!("no refusal after 200 rapid anonymous calls"))?;
    assert_eq!(limited["error"]["code"], "RATE_LIMITED");

    // An authenticated caller is not held to the anonymous budget.
    let args = json!({"program_id": program, "code": code, "subject_ref": "owner-side"});
    owner.mcp.ok("amba_affiliate_touchpoint_record", args).await?;

    // The clicks carry the caller's address, as the HTTP endpoint records it.
    let pool = sys.service_pool("attribution").await?;
    let addresses: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT client_ip FROM touchpoints WHERE subject_ref LIKE 'anon-%'")
            .fetch_all(&pool)
            .await?;
    assert_eq!(addresses, vec!["127.0.0.1"]);
    pool.close().await;
    sys.stop().await
}

/// A conversion report's arguments: `extra` over a web sale of `amount_minor` USD.
fn sale(program: &str, external_id: &str, amount_minor: i64, extra: Value) -> Value {
    let mut args = json!({"program_id": program, "project_id": "web", "external_id": external_id, "amount_minor": amount_minor, "currency": "USD"});
    if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
        a.extend(e.clone());
    }
    args
}

/// The affiliate's held commission over all its programs, once it is `expected` (the ledger
/// books from events; under a loaded test machine that can take a while).
async fn held_becomes(affiliate: &Org, expected: i64) -> anyhow::Result<()> {
    let last = std::sync::Mutex::new(Value::Null);
    let waited = eventually(
        std::time::Duration::from_secs(30),
        "the ledger's held balance",
        || async {
            let balance = affiliate.mcp.ok("amba_affiliate_my_balance_get", json!({})).await?;
            let reached = balance["held_minor"] == expected;
            if let Ok(mut last) = last.lock() {
                *last = balance;
            }
            Ok(reached.then_some(()))
        },
    )
    .await;
    waited.with_context(|| {
        format!(
            "held_minor never became {expected}; last balance {:?}",
            last.lock().map(|l| l.to_string())
        )
    })
}

#[tokio::test]
async fn owners_assign_unattributed_sales_once_under_the_rule_of_the_sale_time() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    } = setup(json!({})).await?;
    let ann_enrollment_id = text(&ann_enrollment["enrollment_id"]);
    let code = text(&ann_enrollment["code"]);
    let lost = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(&program, "lost-1", 10_000, json!({})),
        )
        .await?;
    assert_eq!(lost["status"], "unattributed");
    let lost_id = text(&lost["conversion_id"]);
    let by_code = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(&program, "coded-1", 5_000, json!({"code": code})),
        )
        .await?;
    // The rule changes after the sale: the sale is still priced under the rule of its time (20%).
    owner
        .mcp
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": program, "commission": {"schema":1,"type":"percentage","bps":3000}}),
        )
        .await?;
    eventually(
        std::time::Duration::from_secs(10),
        "rule version 2 in attribution",
        || {
            let (sys, program) = (&sys, program.clone());
            async move {
                let pool = sys.service_pool("attribution").await?;
                let version: Option<i32> =
                    sqlx::query_scalar("SELECT commission_version FROM programs_view WHERE program_id = $1")
                        .bind(&program)
                        .fetch_optional(&pool)
                        .await?;
                pool.close().await;
                Ok((version == Some(2)).then_some(()))
            }
        },
    )
    .await?;

    // Refusals change nothing.
    let other = org(&sys, "Other").await?;
    let bob = org(&sys, "Bob").await?;
    let elsewhere = active_program(&owner, json!({"name": "Elsewhere"})).await?;
    let bob_elsewhere = enroll(&owner, &bob, &elsewhere, None).await?;
    let bob_invited = owner
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program, "affiliate_org_id": bob.id}),
        )
        .await?;
    read_model_shows(
        &sys,
        "SELECT status FROM enrollments_view WHERE enrollment_id = $1",
        text(&bob_invited["enrollment_id"]),
        "pending",
    )
    .await?;
    let assign = |conversion: &str, extra: Value| {
        let mut args = json!({"conversion_id": conversion});
        if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
            a.extend(e.clone());
        }
        args
    };
    let to_ann = json!({"enrollment_id": ann_enrollment_id});
    for (who, args, code, message) in [
        (
            &other,
            assign(lost_id, to_ann.clone()),
            "NOT_FOUND",
            format!("conversion {lost_id} not found"),
        ),
        (
            &ann,
            assign(lost_id, to_ann.clone()),
            "FORBIDDEN",
            "this tool is for the program's owner".to_owned(),
        ),
        (
            &owner,
            assign(lost_id, json!({"enrollment_id": ann_enrollment_id, "code": code})),
            "INVALID_ARGUMENT",
            "name the affiliate by exactly one of enrollment_id or code".to_owned(),
        ),
        (
            &owner,
            assign(lost_id, json!({})),
            "INVALID_ARGUMENT",
            "name the affiliate by exactly one of enrollment_id or code".to_owned(),
        ),
        (
            &owner,
            assign(lost_id, json!({"enrollment_id": bob_elsewhere["enrollment_id"]})),
            "INVALID_ARGUMENT",
            format!(
                "enrollment {} is not an enrollment of program {program} (see amba_affiliate_affiliates_list)",
                text(&bob_elsewhere["enrollment_id"])
            ),
        ),
        (
            &owner,
            assign(lost_id, json!({"code": bob_elsewhere["code"]})),
            "INVALID_ARGUMENT",
            format!(
                "referral code {:?} is not a code of program {program}",
                text(&bob_elsewhere["code"])
            ),
        ),
        (
            &owner,
            assign(lost_id, json!({"enrollment_id": bob_invited["enrollment_id"]})),
            "CONFLICT",
            format!(
                "enrollment {} is pending; only an active affiliate can be credited",
                text(&bob_invited["enrollment_id"])
            ),
        ),
        (
            &owner,
            assign(text(&by_code["conversion_id"]), to_ann.clone()),
            "CONFLICT",
            "only unattributed conversions can be assigned; this one is approved (attributed by code)".to_owned(),
        ),
    ] {
        let err = who.mcp.err("amba_affiliate_conversion_assign", args.clone()).await?;
        assert_eq!(
            (err["code"].as_str(), err["message"].as_str()),
            (Some(code), Some(message.as_str())),
            "{args}"
        );
    }

    let assigned = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_assign",
            assign(
                lost_id,
                json!({"enrollment_id": ann_enrollment_id, "reason": "named Ann at checkout"}),
            ),
        )
        .await?;
    let conversion = &assigned["conversion"];
    assert_eq!(assigned["duplicate"], false);
    assert_eq!(
        (
            conversion["status"].as_str(),
            conversion["attribution"].as_str(),
            conversion["enrollment_id"].as_str(),
            conversion["commission_minor"].as_i64(),
            conversion["commission_version"].as_i64(),
            conversion["reason"].as_str(),
        ),
        (
            Some("approved"),
            Some("assigned"),
            Some(ann_enrollment_id),
            Some(2_000),
            Some(1),
            Some("named Ann at checkout")
        )
    );
    // Again, by id or by the same affiliate's code: nothing changes.
    for again in [to_ann.clone(), json!({"code": code})] {
        let repeat = owner
            .mcp
            .ok("amba_affiliate_conversion_assign", assign(lost_id, again))
            .await?;
        assert_eq!(repeat["duplicate"], true);
        assert_eq!(repeat["conversion"], assigned["conversion"]);
    }
    // To someone else now: refused, naming the status.
    let err = owner
        .mcp
        .err(
            "amba_affiliate_conversion_assign",
            assign(lost_id, json!({"enrollment_id": bob_invited["enrollment_id"]})),
        )
        .await?;
    assert_eq!(
        err["message"],
        format!(
            "only unattributed conversions can be assigned; this one is approved, assigned to enrollment {ann_enrollment_id}"
        )
    );

    // The ledger books it once, next to the sale attributed by code: 2,000 + 1,000 held.
    held_becomes(&ann, 3_000).await?;
    let mine = ann
        .mcp
        .ok("amba_affiliate_my_conversions_list", json!({"program_id": program}))
        .await?;
    let ids: Vec<&str> = mine["conversions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| text(&c["conversion_id"]))
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&lost_id));
    sys.stop().await
}

#[tokio::test]
async fn bulk_decisions_apply_every_valid_id_and_say_what_happened_to_each() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    } = setup(json!({"approval_mode": "manual"})).await?;
    let code = text(&ann_enrollment["code"]);
    let mut pending = Vec::new();
    for (external_id, amount) in [("b-1", 10_000), ("b-2", 20_000), ("b-3", 30_000)] {
        let reported = owner
            .mcp
            .ok(
                "amba_affiliate_conversion_report",
                sale(&program, external_id, amount, json!({"code": code})),
            )
            .await?;
        assert_eq!(reported["status"], "pending");
        pending.push(text(&reported["conversion_id"]).to_owned());
    }
    // An unattributed sale assigned in a manual program waits for a decision like any other.
    let lost = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(&program, "b-lost", 40_000, json!({})),
        )
        .await?;
    let lost_id = text(&lost["conversion_id"]).to_owned();
    let unattributed = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(&program, "b-none", 1_000, json!({})),
        )
        .await?;
    let unattributed_id = text(&unattributed["conversion_id"]);
    let assigned = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_assign",
            json!({"conversion_id": lost_id, "code": code}),
        )
        .await?;
    assert_eq!(
        (
            assigned["conversion"]["status"].as_str(),
            assigned["conversion"]["code"].as_str(),
            assigned["conversion"]["commission_minor"].as_i64()
        ),
        (Some("pending"), Some(code), Some(0))
    );

    let unknown = "cnv_00000000000000000000000000000000";
    let decided = owner
        .mcp
        .ok(
            "amba_affiliate_conversions_decide",
            json!({"decision": "approve", "conversion_ids": [pending[0], pending[1], pending[0], unknown, "nope", unattributed_id, lost_id]}),
        )
        .await?;
    let outcomes: Vec<(&str, &str, Option<i64>, Option<&str>)> = decided["outcomes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                text(&o["conversion_id"]),
                text(&o["outcome"]),
                o["commission_minor"].as_i64(),
                o["error_code"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (pending[0].as_str(), "approved", Some(2_000), None),
            (pending[1].as_str(), "approved", Some(4_000), None),
            (pending[0].as_str(), "already approved", Some(2_000), None),
            (unknown, "not found", None, Some("NOT_FOUND")),
            (
                "nope",
                "invalid: \"nope\" is not a conversion id: expected `cnv_` followed by 32 hex digits, as returned by \
                 the tool that made it",
                None,
                Some("INVALID_ARGUMENT")
            ),
            (
                unattributed_id,
                "conflict: only pending conversions can be decided; this one is unattributed",
                None,
                Some("CONFLICT")
            ),
            (lost_id.as_str(), "approved", Some(8_000), None),
        ]
    );
    assert_eq!(decided["applied"], 3);

    // Rejections, with the reason; an approved one is not pending any more.
    let rejected = owner
        .mcp
        .ok(
            "amba_affiliate_conversions_decide",
            json!({"decision": "reject", "conversion_ids": [pending[2], pending[0]], "reason": "test orders"}),
        )
        .await?;
    assert_eq!(
        rejected["outcomes"],
        json!([
            {"conversion_id": pending[2], "outcome": "rejected", "status": "rejected"},
            {"conversion_id": pending[0], "outcome": "conflict: only pending conversions can be decided; this one is approved", "error_code": "CONFLICT"},
        ])
    );
    let listed = owner
        .mcp
        .ok(
            "amba_affiliate_conversions_list",
            json!({"program_id": program, "status": "rejected"}),
        )
        .await?;
    assert_eq!(listed["conversions"][0]["reason"], "test orders");

    // Another owner learns nothing; bad calls are refused whole.
    let other = org(&sys, "Other").await?;
    let theirs = other
        .mcp
        .ok(
            "amba_affiliate_conversions_decide",
            json!({"decision": "reject", "conversion_ids": [pending[1]]}),
        )
        .await?;
    assert_eq!(theirs["outcomes"][0]["outcome"], "not found");
    let too_many: Vec<String> = (0..201).map(|_| unknown.to_owned()).collect();
    for (args, message) in [
        (
            json!({"decision": "approve", "conversion_ids": too_many}),
            "conversion_ids holds 201 ids; give 1 to 200",
        ),
        (
            json!({"decision": "approve", "conversion_ids": []}),
            "conversion_ids holds 0 ids; give 1 to 200",
        ),
        (
            json!({"decision": "maybe", "conversion_ids": [unknown]}),
            "`decision` is the text \"maybe\"; expected one of: approve, reject",
        ),
    ] {
        let err = owner.mcp.err("amba_affiliate_conversions_decide", args).await?;
        assert_eq!(
            (err["code"].as_str(), err["message"].as_str()),
            (Some("INVALID_ARGUMENT"), Some(message))
        );
    }

    // The ledger books each approval once: 2,000 + 4,000 + 8,000 held.
    held_becomes(&ann, 14_000).await?;
    sys.stop().await
}

#[tokio::test]
async fn a_renewal_after_the_recurring_window_says_why_it_earns_nothing() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    } = setup(json!({"commission": {"schema":1,"type":"recurring","bps":1000,"months":12}})).await?;
    let code = text(&ann_enrollment["code"]);
    let first = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(
                &program,
                "inv-1",
                9_900,
                json!({"code": code, "customer_ref": "cus_7", "occurred_at": "2025-03-15T10:00:00Z"}),
            ),
        )
        .await?;
    assert_eq!(first["commission_minor"], 990);
    let inside = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(
                &program,
                "inv-2",
                9_900,
                json!({"customer_ref": "cus_7", "occurred_at": "2026-03-15T09:59:59Z"}),
            ),
        )
        .await?;
    assert_eq!(
        (
            inside["commission_minor"].as_i64(),
            inside["conversion"]["renewal"].as_bool()
        ),
        (Some(990), Some(true))
    );
    assert!(inside["conversion"].get("reason").is_none());
    let after = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(
                &program,
                "inv-3",
                9_900,
                json!({"customer_ref": "cus_7", "occurred_at": "2026-03-15T10:00:00Z"}),
            ),
        )
        .await?;
    let reason = "renewal after the recurring window of 12 months (from the customer's first conversion on \
                  2025-03-15) ended on 2026-03-15: no commission";
    assert_eq!(
        (
            after["status"].as_str(),
            after["commission_minor"].as_i64(),
            after["conversion"]["reason"].as_str()
        ),
        (Some("approved"), Some(0), Some(reason))
    );
    // Both the owner's and the affiliate's lists say so.
    let owners = owner
        .mcp
        .ok("amba_affiliate_conversions_list", json!({"program_id": program}))
        .await?;
    let affiliates = ann.mcp.ok("amba_affiliate_my_conversions_list", json!({})).await?;
    for list in [owners, affiliates] {
        let reasons: Vec<Option<&str>> = list["conversions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["reason"].as_str())
            .collect();
        assert_eq!(reasons, vec![None, None, Some(reason)]);
    }
    sys.stop().await
}

#[tokio::test]
async fn conversions_export_as_csv_quoted_guarded_and_paged() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    } = setup(json!({})).await?;
    let code = text(&ann_enrollment["code"]);
    let enrollment_id = text(&ann_enrollment["enrollment_id"]);
    let report = |external_id: &str, amount: i64, extra: Value| {
        owner.mcp.ok(
            "amba_affiliate_conversion_report",
            sale(&program, external_id, amount, extra),
        )
    };
    let formula = report(
        "=HYPERLINK(\"http://x.example\")",
        10_000,
        json!({"code": code, "occurred_at": "2026-01-05T10:00:00Z"}),
    )
    .await?;
    let quoted = report(
        "order,2 \"rush\"",
        5_000,
        json!({"occurred_at": "2026-01-06T11:30:00.250Z"}),
    )
    .await?;
    let refunded = report(
        "-3",
        3_333,
        json!({"code": code, "occurred_at": "2026-01-07T00:00:00Z"}),
    )
    .await?;
    report(
        "later",
        1_000,
        json!({"code": code, "occurred_at": "2026-02-01T00:00:00Z"}),
    )
    .await?;
    let clawback = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_clawback",
            json!({"conversion_id": refunded["conversion_id"], "reason": "refund", "amount_minor": 1_111}),
        )
        .await?;
    assert_eq!(clawback["conversion"]["clawed_back_minor"], 1_111);

    let decided = |c: &Value| text(&c["conversion"]["decided_at"]).to_owned();
    let header = "conversion_id,external_id,occurred_at,status,affiliate_org_id,enrollment_id,code,amount_minor,currency,\
                  commission_minor,clawed_back_minor,net_commission_minor,reason,decided_at,refunded_minor\r\n";
    let rows = [
        format!(
            "{},\"'=HYPERLINK(\"\"http://x.example\"\")\",2026-01-05T10:00:00.000Z,approved,{},{enrollment_id},{code},10000,USD,2000,0,2000,,{},0\r\n",
            text(&formula["conversion_id"]),
            ann.id,
            decided(&formula)
        ),
        format!(
            "{},\"order,2 \"\"rush\"\"\",2026-01-06T11:30:00.250Z,unattributed,,,,5000,USD,0,0,0,\
             \"no referral code, bound customer or touchpoint inside the attribution window\",,0\r\n",
            text(&quoted["conversion_id"])
        ),
        // 20% of 33.33 is 6.67; a third of the sale refunded takes back 2.22 of it.
        format!(
            "{},'-3,2026-01-07T00:00:00.000Z,approved,{},{enrollment_id},{code},3333,USD,667,222,445,,{},1111\r\n",
            text(&refunded["conversion_id"]),
            ann.id,
            decided(&refunded)
        ),
    ];
    let whole = owner
        .mcp
        .ok(
            "amba_affiliate_conversions_export",
            json!({"program_id": program, "from": "2026-01-01", "to": "2026-02-01T00:00:00Z"}),
        )
        .await?;
    assert_eq!(whole["csv"], format!("{header}{}", rows.concat()));
    assert_eq!(whole["rows"], 3);
    assert!(whole.get("next_cursor").is_none());

    // Page by page (limit sent as numeric text), nothing lost or repeated.
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = json!({"program_id": program, "from": "2026-01-01", "to": "2026-02-01", "limit": "2"});
        if let Some(cursor) = &cursor {
            args["cursor"] = json!(cursor);
        }
        let page = owner.mcp.ok("amba_affiliate_conversions_export", args).await?;
        pages.push((page["rows"].as_i64(), text(&page["csv"]).to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        pages,
        vec![
            (Some(2), format!("{header}{}{}", rows[0], rows[1])),
            (Some(1), format!("{header}{}", rows[2])),
        ]
    );

    // Refusals: other owners, affiliates, too long a range, bad times and cursors.
    let other = org(&sys, "Other").await?;
    let range = json!({"program_id": program, "from": "2026-01-01", "to": "2026-02-01"});
    for (who, code) in [(&other, "NOT_FOUND"), (&ann, "FORBIDDEN")] {
        let err = who.mcp.err("amba_affiliate_conversions_export", range.clone()).await?;
        assert_eq!(err["code"], code);
    }
    for (args, message) in [
        (
            json!({"program_id": program, "from": "2025-01-01", "to": "2026-01-03"}),
            "from and to are 367 days apart; export at most 366 days per call",
        ),
        (
            json!({"program_id": program, "from": "2026-02-01", "to": "2026-01-01"}),
            "from must be before to",
        ),
        (
            json!({"program_id": program, "from": "January", "to": "2026-01-01"}),
            "from \"January\" is not an RFC 3339 time such as 2026-11-01T00:00:00Z or a date such as 2026-11-01",
        ),
        (
            json!({"program_id": program, "from": "2026-01-01", "to": "2026-02-01", "cursor": "bm9wZQ"}),
            "cursor is not one this server issued",
        ),
    ] {
        let err = owner.mcp.err("amba_affiliate_conversions_export", args).await?;
        assert_eq!(
            (err["code"].as_str(), err["message"].as_str()),
            (Some("INVALID_ARGUMENT"), Some(message))
        );
    }
    sys.stop().await
}

#[tokio::test]
async fn integer_arguments_accept_exact_numeric_text_only() -> anyhow::Result<()> {
    let Setup {
        sys, owner, program, ..
    } = setup(json!({})).await?;
    let reported = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(&program, "text-1", 0, json!({"amount_minor": "2500"})),
        )
        .await?;
    assert_eq!(reported["conversion"]["amount_minor"], 2_500);
    for given in ["25.00", "2.5e3", " 25", "", "+25"] {
        let err = owner
            .mcp
            .err(
                "amba_affiliate_conversion_report",
                sale(&program, "text-2", 0, json!({"amount_minor": given})),
            )
            .await?;
        assert_eq!(
            (
                err["code"].as_str(),
                err["message"].as_str(),
                err["details"]["argument"].as_str()
            ),
            (
                Some("INVALID_ARGUMENT"),
                Some(format!("`amount_minor` must be a whole number (e.g. 2500); got the text {given:?}").as_str()),
                Some("amount_minor")
            ),
            "{given:?}"
        );
    }
    // Every tool's integers alike: a list's limit, a program's hold days; bounds still hold.
    let listed = owner
        .mcp
        .ok(
            "amba_affiliate_conversions_list",
            json!({"program_id": program, "limit": "1"}),
        )
        .await?;
    assert_eq!(listed["conversions"].as_array().map(Vec::len), Some(1));
    let updated = owner
        .mcp
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": program, "hold_days": "7"}),
        )
        .await?;
    assert_eq!(updated["program"]["hold_days"], 7);
    let err = owner
        .mcp
        .err(
            "amba_affiliate_conversions_list",
            json!({"program_id": program, "limit": "500"}),
        )
        .await?;
    assert_eq!(err["message"], "`limit` is 500; it must be between 1 and 200");
    sys.stop().await
}
