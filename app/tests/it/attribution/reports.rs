//! Conversion reports over MCP and gRPC: idempotent, decided once, refused with reasons.

use super::*;

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
            with(json!({"external_id": "o-2", "currency": "EURO", "code": code})),
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
            .is_some_and(|r| r.contains("self_referral: the customer e-mail belongs to the affiliate's own org"))
    );
    assert_eq!(own["conversion"]["hold_reasons"], json!(["self_referral"]));

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
            currency: "XYZ".into(),
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
