//! Races, redeliveries and out-of-order events: each booked once, exactly.

use super::*;

/// One hot affiliate's approvals and partial clawbacks spread over every worker of the ledger
/// (partitioned by conversion): batches lock its balance and stats rows side by side, each
/// clawback takes the program's ledger lock alone. Nothing deadlocks or dead-letters, and the
/// balance is exact.
#[tokio::test]
async fn a_hot_affiliates_approvals_and_clawbacks_race_over_every_worker_exactly() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (_owner, ann, program, enrollment) = setup(&sys, json!({"hold_days": 0})).await?;
    let (sales, clawed) = (600i64, 120i64);
    for n in 0..sales {
        // 20% of 10.00 = 2.00 each; every fifth is half refunded right after: 1.00 reversed.
        let c = conversion(&program, &enrollment, &format!("cnv_hot_{n}"), 1_000, 200);
        approve(&sys, &c).await?;
        if n % 5 == 0 {
            claw(&sys, &c, &format!("clb_hot_{n}"), 500, 500).await?;
        }
    }
    let expected = sales * 200 - clawed * 100;
    let b = balance_when(&ann, &program, |b| b["payable_minor"] == expected).await?;
    assert_eq!(figures(&b), [0, expected, 0, 0, 0]);
    let pool = sys.service_pool("commission").await?;
    let (commissions, clawbacks, dead): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM commissions), (SELECT count(*) FROM clawbacks), \
         (SELECT count(*) FROM dead_letters)",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!((commissions, clawbacks, dead), (sales, clawed, 0));
    assert_eq!(deadlocks(&pool).await?, 0, "deadlocks among ledger writers");
    pool.close().await;
    assert_verifies(&sys).await?;
    sys.stop().await
}

/// Many affiliates at once, and the ledger's read model a step behind: conversions of 40
/// affiliates arrive before their enrollments (so batches fail and are retried one message at a
/// time while other workers book), interleaved with partial clawbacks. Everything books exactly
/// once, without a deadlock or a dead letter.
#[tokio::test]
async fn many_affiliates_booked_side_by_side_while_the_read_model_catches_up() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (_owner, _ann, program, _enrollment) = setup(&sys, json!({"hold_days": 0})).await?;
    let affiliates: Vec<String> = (0..40).map(|n| format!("enr_late_{n:02}")).collect();
    for n in 0..400usize {
        let enrollment = &affiliates[n % affiliates.len()];
        let c = conversion(&program, enrollment, &format!("cnv_many_{n}"), 1_000, 200);
        approve(&sys, &c).await?;
        if n % 7 == 0 {
            claw(&sys, &c, &format!("clb_many_{n}"), 500, 500).await?;
        }
    }
    for (n, enrollment) in affiliates.iter().enumerate() {
        let id = new_event_id();
        let event = pb::EnrollmentChanged {
            meta: meta(&id),
            enrollment: Some(pb::Enrollment {
                enrollment_id: enrollment.clone(),
                program_id: program.clone(),
                affiliate_org_id: format!("org_late_{n}"),
                status: "active".into(),
                depth: 1,
                updated_at_micros: now_micros(),
                ..Default::default()
            }),
            ..Default::default()
        };
        publish(&sys, "enrollment", "updated", &id, &event).await?;
    }
    let pool = sys.service_pool("commission").await?;
    let clawed = (0..400).filter(|n| n % 7 == 0).count() as i64;
    let expected = 400 * 200 - clawed * 100;
    let booked = eventually(Duration::from_secs(60), "every commission and clawback booked", || {
        let (pool, program) = (pool.clone(), program.clone());
        async move {
            let (commissions, clawbacks, payable): (i64, i64, Option<i64>) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM commissions), (SELECT count(*) FROM clawbacks), \
                 (SELECT sum(balance_minor)::bigint FROM balances WHERE program_id = $1 AND account = 'payable')",
            )
            .bind(&program)
            .fetch_one(&pool)
            .await?;
            Ok((commissions == 400 && clawbacks == clawed).then_some(payable))
        }
    })
    .await?;
    assert_eq!(booked, Some(expected));
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&pool)
        .await?;
    assert_eq!((dead, deadlocks(&pool).await?), (0, 0));
    pool.close().await;
    assert_verifies(&sys).await?;
    sys.stop().await
}

/// A snapshot's version decides, not its clock: a change that began first but committed last
/// carries the higher version and an earlier time; the read model keeps it whatever the order of
/// arrival. The real enrollment service stamps increasing versions.
#[tokio::test]
async fn read_models_order_snapshots_by_version_not_by_clock() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (_owner, _ann, program, enrollment) = setup(&sys, json!({})).await?;
    let pool = sys.service_pool("commission").await?;
    let real_version: i64 = sqlx::query_scalar("SELECT version FROM enrollments WHERE enrollment_id = $1")
        .bind(&enrollment)
        .fetch_one(&pool)
        .await?;
    assert!(real_version >= 2, "invited then accepted: version {real_version}");

    let snapshot = |status: &str, version: u64, at: i64| {
        let id = new_event_id();
        let event = pb::EnrollmentChanged {
            meta: meta(&id),
            enrollment: Some(pb::Enrollment {
                enrollment_id: "enr_versioned".into(),
                program_id: program.clone(),
                affiliate_org_id: "org_versioned".into(),
                status: status.into(),
                depth: 1,
                updated_at_micros: at,
                version,
                ..Default::default()
            }),
            ..Default::default()
        };
        (id, event)
    };
    let now = now_micros();
    // Version 3 (removed) stamped earlier than version 2 (active): arrival order either way.
    for (first, second) in [((3, now), (2, now + 10_000_000)), ((2, now + 10_000_000), (3, now))] {
        let status_of = |v: u64| if v == 3 { "removed" } else { "active" };
        let (first_id, event) = snapshot(status_of(first.0), first.0, first.1);
        publish(&sys, "enrollment", "updated", &first_id, &event).await?;
        let (second_id, event) = snapshot(status_of(second.0), second.0, second.1);
        publish(&sys, "enrollment", "updated", &second_id, &event).await?;
        // Both applied (their ids are in the consumer's inbox); then the row is what it is.
        eventually(WAIT, "both snapshots consumed", || {
            let (pool, ids) = (pool.clone(), vec![first_id.clone(), second_id.clone()]);
            async move {
                let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE event_id = ANY($1)")
                    .bind(&ids)
                    .fetch_one(&pool)
                    .await?;
                Ok((seen == 2).then_some(()))
            }
        })
        .await?;
        let (status, version): (String, i64) =
            sqlx::query_as("SELECT status, version FROM enrollments WHERE enrollment_id = 'enr_versioned'")
                .fetch_one(&pool)
                .await?;
        assert_eq!((status.as_str(), version), ("removed", 3));
        sqlx::query("DELETE FROM enrollments WHERE enrollment_id = 'enr_versioned'")
            .execute(&pool)
            .await?;
    }
    pool.close().await;
    sys.stop().await
}

/// Money races (issue 14, scenario 7), all at once through MCP: 50 partial clawbacks of one sale
/// (20 sharing one key, 15 with keys of their own, 15 without keys) refund exactly the sale and
/// no more; 10 approvals racing 10 rejections of a pending sale leave exactly one decision.
#[tokio::test]
async fn money_races_refund_at_most_the_sale_and_one_decision_wins() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (owner, ann, program, _enrollment, code) =
        setup_with_code(&sys, json!({"hold_days": 0, "approval_mode": "manual"})).await?;
    let sale = report(&owner, &program, "race-1", 10_000, json!({"code": code})).await?;
    let sale_id = sale["conversion_id"].clone();
    owner
        .mcp
        .ok("amba_affiliate_conversion_approve", json!({"conversion_id": sale_id}))
        .await?;
    balance_when(&ann, &program, |b| b["payable_minor"] == 2_000).await?;

    let clawbacks = (0..50).map(|n| {
        let mut args = json!({"conversion_id": sale_id, "reason": format!("refund {n}"), "amount_minor": 500});
        match n {
            0..20 => args["idempotency_key"] = json!("shared"),
            20..35 => args["idempotency_key"] = json!(format!("own-{n}")),
            _ => {}
        }
        let mcp = &owner.mcp;
        async move { mcp.call_raw("amba_affiliate_conversion_clawback", args).await }
    });
    let mut recorded = std::collections::HashSet::new();
    let mut refused = 0;
    for reply in futures::future::join_all(clawbacks).await {
        let result = reply.map_err(|e| anyhow::anyhow!("{e}"))?;
        let body = result.structured_content.clone().unwrap_or_default();
        if result.is_error == Some(true) {
            assert_eq!(body["error"]["code"], "CONFLICT", "{body}");
            refused += 1;
        } else {
            recorded.insert(body["clawback_id"].as_str().unwrap_or_default().to_owned());
        }
    }
    // 31 distinct clawbacks asked for (one shared key, 15 own keys, 15 natural keys), 500 each:
    // 20 fit in the sale.
    assert_eq!(recorded.len(), 20, "{recorded:?}");
    let b = balance_when(&ann, &program, |b| b["payable_minor"] == 0).await?;
    assert_eq!(figures(&b), [0, 0, 0, 0, 0]);
    let pool = sys.service_pool("attribution").await?;
    let (refunded, status): (i64, String) =
        sqlx::query_as("SELECT clawed_back_minor, status FROM conversions WHERE conversion_id = $1")
            .bind(sale_id.as_str().unwrap_or_default())
            .fetch_one(&pool)
            .await?;
    assert_eq!((refunded, status.as_str()), (10_000, "clawed_back"));
    assert!(refused >= 11, "{refused} refused");
    pool.close().await;

    let pending = report(&owner, &program, "race-2", 5_000, json!({"code": code})).await?;
    let pending_id = pending["conversion_id"].clone();
    let decisions = (0..20).map(|n| {
        let tool = if n % 2 == 0 {
            "amba_affiliate_conversion_approve"
        } else {
            "amba_affiliate_conversion_reject"
        };
        let (mcp, args) = (&owner.mcp, json!({"conversion_id": pending_id}));
        async move { (tool, mcp.call_raw(tool, args).await) }
    });
    let mut winners = Vec::new();
    for (tool, reply) in futures::future::join_all(decisions).await {
        let result = reply.map_err(|e| anyhow::anyhow!("{e}"))?;
        if result.is_error == Some(true) {
            let body = result.structured_content.clone().unwrap_or_default();
            assert_eq!(body["error"]["code"], "CONFLICT", "{body}");
        } else {
            winners.push(tool);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one decision: {winners:?}");
    let expected_payable = if winners[0].ends_with("approve") { 1_000 } else { 0 };
    let b = balance_when(&ann, &program, |b| b["payable_minor"] == expected_payable).await?;
    assert_eq!(figures(&b), [0, expected_payable, 0, 0, 0]);
    assert_verifies(&sys).await?;
    sys.stop().await
}

/// Republished events (issue 14, scenario 6): 10 % of the ledger's events are published again
/// with their original event ids, out of order, as a relay retrying after JetStream's duplicate
/// window would (`Amba-Event-Id` carries the id, the `Nats-Msg-Id` is new, so JetStream stores
/// them again). The balances are those of the events applied once.
#[tokio::test]
async fn republished_events_out_of_order_change_nothing() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (_owner, ann, program, enrollment) = setup(&sys, json!({"hold_days": 0})).await?;
    let mut sent: Vec<(String, String, Vec<u8>)> = Vec::new();
    for n in 0..100 {
        let c = conversion(&program, &enrollment, &format!("cnv_rep_{n}"), 1_000, 200);
        let id = new_event_id();
        let event = pb::ConversionChanged {
            meta: meta(&id),
            conversion: Some(c.clone()),
            previous_status: "pending".into(),
        };
        publish(&sys, "conversion", "approved", &id, &event).await?;
        sent.push((id, "approved".into(), event.encode_to_vec()));
        if n % 4 == 0 {
            let id = new_event_id();
            let mut after = c.clone();
            after.clawed_back_minor = 500;
            let event = pb::ConversionClawedBack {
                meta: meta(&id),
                clawback_id: format!("clb_rep_{n}"),
                conversion: Some(after),
                refund_minor: 500,
                reason: "refund".into(),
            };
            publish(&sys, "conversion", "clawed_back", &id, &event).await?;
            sent.push((id, "clawed_back".into(), event.encode_to_vec()));
        }
    }
    // Clicks count per event, not by a natural key: only the inbox keeps their repeats out.
    for n in 0..10 {
        let id = new_event_id();
        let event = pb::TouchpointRecorded {
            meta: meta(&id),
            touchpoint_id: format!("tch_rep_{n}"),
            program_id: program.clone(),
            enrollment_id: enrollment.clone(),
            code: "code".into(),
            subject_ref: id.clone(),
            occurred_at_micros: now_micros(),
        };
        let message = PublishMessage::build()
            .payload(event.encode_to_vec().into())
            .message_id(id.as_str());
        sys.bus
            .js
            .send_publish(sys.bus.ns.event("touchpoint", "recorded"), message)
            .await?
            .await?;
        sent.push((id, "touchpoint".into(), event.encode_to_vec()));
    }
    // 100 × 2.00 accrued, 25 × 1.00 reversed.
    let expected = 100 * 200 - 25 * 100;
    balance_when(&ann, &program, |b| b["payable_minor"] == expected).await?;

    // Every tenth event again (and every click), newest first.
    let again: Vec<&(String, String, Vec<u8>)> = sent
        .iter()
        .enumerate()
        .filter(|(i, (_, kind, _))| i % 10 == 0 || kind == "touchpoint")
        .map(|(_, e)| e)
        .rev()
        .collect();
    for (id, kind, payload) in &again {
        let subject = match kind.as_str() {
            "touchpoint" => sys.bus.ns.event("touchpoint", "recorded"),
            kind => sys.bus.ns.event("conversion", kind),
        };
        let message = PublishMessage::build()
            .payload(payload.clone().into())
            .message_id(format!("republish:{id}"))
            .header(amba_bus::consumer::EVENT_ID_HEADER, id.as_str());
        sys.bus.js.send_publish(subject, message).await?.await?;
    }
    let pool = sys.service_pool("commission").await?;
    let durable = sys.bus.ns.consumer("commission", "attribution");
    eventually(WAIT, "the ledger's consumer to settle every message", || {
        let (js, stream, durable) = (
            sys.bus.js.clone(),
            sys.bus.ns.events_stream("attribution"),
            durable.clone(),
        );
        async move {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
                .get_stream(&stream)
                .await?
                .get_consumer(&durable)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let info = consumer.info().await?;
            Ok(
                (info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence > 0)
                    .then_some(()),
            )
        }
    })
    .await?;
    let b = balance_when(&ann, &program, |b| b["payable_minor"] == expected).await?;
    assert_eq!(figures(&b), [0, expected, 0, 0, 0]);
    let (commissions, clawbacks): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM commissions), (SELECT count(*) FROM clawbacks)")
            .fetch_one(&pool)
            .await?;
    assert_eq!((commissions, clawbacks), (100, 25));
    let clicks: Option<i64> = sqlx::query_scalar("SELECT sum(clicks)::bigint FROM daily_stats WHERE program_id = $1")
        .bind(&program)
        .fetch_one(&pool)
        .await?;
    assert_eq!(clicks, Some(10));
    pool.close().await;
    assert_verifies(&sys).await?;
    sys.stop().await
}
