//! Commission: the ledger driven by conversion events (crafted and published to JetStream with
//! `Nats-Msg-Id`, as attribution would) and read back through MCP; the payout-facing ledger API
//! over NATS; `amba ledger verify` logic after every test. Figures are worked out by hand.

use crate::support::{Org, active_program, enroll, org, text};
use crate::system::TestSystem;
use amba_bus::rpc::RpcClient;
use amba_proto::Message;
use amba_proto::methods::commission as methods;
use amba_proto::wire as pb;
use amba_testkit::eventually;
use async_nats::jetstream::message::PublishMessage;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(0))
        .unwrap_or(0)
}

fn new_event_id() -> String {
    amba_core::id::EventId::new().to_string()
}

/// Publishes `message` on `<ns>.evt.<domain>.<kind>` with `Nats-Msg-Id = event_id`; returns
/// whether JetStream took it as a duplicate.
async fn publish(
    sys: &TestSystem,
    domain: &str,
    kind: &str,
    event_id: &str,
    message: &impl Message,
) -> anyhow::Result<bool> {
    let ack = sys
        .bus
        .js
        .send_publish(
            sys.bus.ns.event(domain, kind),
            PublishMessage::build()
                .payload(message.encode_to_vec().into())
                .message_id(event_id),
        )
        .await?
        .await?;
    Ok(ack.duplicate)
}

fn meta(event_id: &str) -> Option<pb::EventMeta> {
    Some(pb::EventMeta {
        event_id: event_id.to_owned(),
        occurred_at_micros: now_micros(),
        traceparent: String::new(),
    })
}

/// An approved conversion as attribution announces it.
fn conversion(program: &str, enrollment: &str, id: &str, amount: i64, commission: i64) -> pb::Conversion {
    pb::Conversion {
        conversion_id: id.to_owned(),
        program_id: program.to_owned(),
        project_id: "web".into(),
        external_id: id.to_owned(),
        amount_minor: amount,
        currency: "USD".into(),
        status: "approved".into(),
        attribution: "code".into(),
        enrollment_id: enrollment.to_owned(),
        occurred_at_micros: now_micros(),
        recorded_at_micros: now_micros(),
        decided_at_micros: now_micros(),
        commission_minor: commission,
        commission_version: 1,
        commission_tier: -1,
        ..Default::default()
    }
}

async fn approve(sys: &TestSystem, c: &pb::Conversion) -> anyhow::Result<String> {
    let id = new_event_id();
    let event = pb::ConversionChanged {
        meta: meta(&id),
        conversion: Some(c.clone()),
        previous_status: "pending".into(),
    };
    publish(sys, "conversion", "approved", &id, &event).await?;
    Ok(id)
}

/// A clawback of `refund` bringing the refunded total to `total`.
async fn claw(sys: &TestSystem, c: &pb::Conversion, clawback_id: &str, refund: i64, total: i64) -> anyhow::Result<()> {
    let id = new_event_id();
    let mut after = c.clone();
    after.clawed_back_minor = total;
    if total == c.amount_minor {
        after.status = "clawed_back".into();
    }
    let event = pb::ConversionClawedBack {
        meta: meta(&id),
        clawback_id: clawback_id.to_owned(),
        conversion: Some(after),
        refund_minor: refund,
        reason: "refund".into(),
    };
    publish(sys, "conversion", "clawed_back", &id, &event).await?;
    Ok(())
}

async fn click(sys: &TestSystem, program: &str, enrollment: &str) -> anyhow::Result<()> {
    let id = new_event_id();
    let event = pb::TouchpointRecorded {
        meta: meta(&id),
        touchpoint_id: format!("tch_{}", &id[4..]),
        program_id: program.to_owned(),
        enrollment_id: enrollment.to_owned(),
        code: "code".into(),
        subject_ref: id.clone(),
        occurred_at_micros: now_micros(),
    };
    publish(sys, "touchpoint", "recorded", &id, &event).await?;
    Ok(())
}

/// Waits until the commission read model knows the enrollment as active and its program.
async fn known(sys: &TestSystem, enrollment: &str) -> anyhow::Result<()> {
    let pool = sys.service_pool("commission").await?;
    eventually(WAIT, "enrollment in the commission read model", || {
        let pool = pool.clone();
        let enrollment = enrollment.to_owned();
        async move {
            let row: Option<(i64,)> = sqlx::query_as(
                "SELECT 1::bigint FROM enrollments e JOIN programs p ON p.program_id = e.program_id \
                 WHERE e.enrollment_id = $1 AND e.status = 'active' AND p.status = 'active'",
            )
            .bind(&enrollment)
            .fetch_optional(&pool)
            .await?;
            Ok(row.map(|_| ()))
        }
    })
    .await?;
    pool.close().await;
    // Reports are decided by attribution's read model: the enrollment must be active there too.
    let pool = sys.service_pool("attribution").await?;
    eventually(WAIT, "enrollment in the attribution read model", || {
        let pool = pool.clone();
        let enrollment = enrollment.to_owned();
        async move {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM enrollments_view WHERE enrollment_id = $1")
                    .bind(&enrollment)
                    .fetch_optional(&pool)
                    .await?;
            Ok(status.filter(|s| s == "active").map(|_| ()))
        }
    })
    .await?;
    pool.close().await;
    Ok(())
}

/// The affiliate's balance once `done` holds for it.
async fn balance_when(affiliate: &Org, program: &str, done: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        last = affiliate
            .mcp
            .ok("amba_affiliate_my_balance_get", json!({"program_id": program}))
            .await?;
        if done(&last) {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    anyhow::bail!("balance never reached the expected state; last {last}")
}

fn figures(b: &Value) -> [i64; 5] {
    [
        "held_minor",
        "payable_minor",
        "reserved_minor",
        "paid_minor",
        "debt_minor",
    ]
    .map(|k| b[k].as_i64().unwrap_or(-1))
}

async fn assert_verifies(sys: &TestSystem) -> anyhow::Result<()> {
    let report = amba_commission::verify_database(&sys.db.url).await?;
    anyhow::ensure!(report.is_ok(), "ledger verify failed: {:?}", report.problems);
    anyhow::ensure!(report.journals > 0, "nothing was posted");
    Ok(())
}

fn rpc(sys: &TestSystem) -> RpcClient {
    RpcClient::new(sys.bus.nats.clone(), sys.bus.ns.clone())
}

async fn setup(sys: &TestSystem, settings: Value) -> anyhow::Result<(Org, Org, String, String)> {
    setup_with_code(sys, settings)
        .await
        .map(|(owner, ann, program, enrollment, _)| (owner, ann, program, enrollment))
}

/// Owner, affiliate Ann, an active program with `settings`, Ann's active enrollment and code.
async fn setup_with_code(sys: &TestSystem, settings: Value) -> anyhow::Result<(Org, Org, String, String, String)> {
    let owner = org(sys, "Owner").await?;
    let ann = org(sys, "Ann").await?;
    let program = active_program(&owner, settings).await?;
    let enrolled = enroll(&owner, &ann, &program, None).await?;
    let enrollment = text(&enrolled["enrollment_id"]).to_owned();
    known(sys, &enrollment).await?;
    Ok((owner, ann, program, enrollment, text(&enrolled["code"]).to_owned()))
}

#[tokio::test]
async fn accrual_clawbacks_payout_and_debt_are_exact() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (owner, ann, program, enrollment) = setup(&sys, json!({"hold_days": 0})).await?;

    // 20% of 100.00 = 20.00, no hold: payable at once.
    let a = conversion(&program, &enrollment, "cnv_a", 10_000, 2_000);
    let event_id = approve(&sys, &a).await?;
    let b = balance_when(&ann, &program, |b| b["payable_minor"] == 2_000).await?;
    assert_eq!(figures(&b), [0, 2_000, 0, 0, 0]);
    assert_eq!(b["currency"], "USD");

    // Redelivery: the same event id is a duplicate, and a second announcement of the same
    // approval (new id) accrues nothing either.
    let again = pb::ConversionChanged {
        meta: meta(&event_id),
        conversion: Some(a.clone()),
        previous_status: "pending".into(),
    };
    assert!(publish(&sys, "conversion", "approved", &event_id, &again).await?);
    approve(&sys, &a).await?;

    // Partial refund of 25.00: round(2000 × 2500 / 10000) = 500 reversed from payable.
    claw(&sys, &a, "clb_1", 2_500, 2_500).await?;
    let b = balance_when(&ann, &program, |b| b["payable_minor"] == 1_500).await?;
    assert_eq!(figures(&b), [0, 1_500, 0, 0, 0]);
    let caller = pb::Principal {
        org_id: owner.id.clone(),
        ..Default::default()
    };
    let outcome: pb::ClawbackOutcome = rpc(&sys)
        .call(
            methods::CLAWBACK_OUTCOME,
            &pb::ClawbackOutcomeRequest {
                caller: Some(caller.clone()),
                clawback_id: "clb_1".into(),
                wait_ms: 5_000,
            },
        )
        .await?;
    assert_eq!((outcome.reversed_minor, outcome.carry_forward_minor), (500, 0));
    // Somebody else's clawback is not found.
    let stranger = pb::Principal {
        org_id: ann.id.clone(),
        ..Default::default()
    };
    let err = rpc(&sys)
        .call(
            methods::CLAWBACK_OUTCOME,
            &pb::ClawbackOutcomeRequest {
                caller: Some(stranger),
                clawback_id: "clb_1".into(),
                wait_ms: 100,
            },
        )
        .await
        .err()
        .map(|e| e.code.as_str());
    assert_eq!(err, Some("NOT_FOUND"));

    // Ledger-level payout: reserve all 15.00, post with a 1.50 fee.
    let quote: pb::PayableQuoteReply = rpc(&sys)
        .call(
            methods::PAYABLE_QUOTE,
            &pb::PayableQuoteRequest {
                program_id: program.clone(),
                enrollment_id: enrollment.clone(),
            },
        )
        .await?;
    assert_eq!(quote.quotes.first().map(|q| q.available_minor), Some(1_500));
    let reserve = pb::ReservePayoutRequest {
        payout_item_id: "poi_1".into(),
        program_id: program.clone(),
        enrollment_id: enrollment.clone(),
        amount_minor: 1_500,
    };
    let reserved: pb::PayoutItemReply = rpc(&sys).call(methods::PAYOUT_RESERVE, &reserve).await?;
    assert!(!reserved.duplicate);
    let replay: pb::PayoutItemReply = rpc(&sys).call(methods::PAYOUT_RESERVE, &reserve).await?;
    assert!(replay.duplicate);
    let mismatch = pb::ReservePayoutRequest {
        amount_minor: 1_000,
        ..reserve.clone()
    };
    let code = |r: Result<pb::PayoutItemReply, amba_core::ApiError>| r.err().map(|e| e.code.as_str());
    assert_eq!(
        code(rpc(&sys).call(methods::PAYOUT_RESERVE, &mismatch).await),
        Some("IDEMPOTENCY_MISMATCH")
    );
    // Nothing left to reserve: a second item is refused, payable never goes below zero.
    let more = pb::ReservePayoutRequest {
        payout_item_id: "poi_2".into(),
        amount_minor: 1,
        ..reserve.clone()
    };
    assert_eq!(
        code(rpc(&sys).call(methods::PAYOUT_RESERVE, &more).await),
        Some("CONFLICT")
    );
    let b = balance_when(&ann, &program, |b| b["reserved_minor"] == 1_500).await?;
    assert_eq!(figures(&b), [0, 0, 1_500, 0, 0]);
    let post = pb::PostPayoutRequest {
        payout_item_id: "poi_1".into(),
        fee_minor: 150,
    };
    let posted: pb::PayoutItemReply = rpc(&sys).call(methods::PAYOUT_POST, &post).await?;
    assert_eq!(posted.item.map(|i| i.status), Some("posted".to_owned()));
    let replay: pb::PayoutItemReply = rpc(&sys).call(methods::PAYOUT_POST, &post).await?;
    assert!(replay.duplicate);
    let void = pb::VoidPayoutRequest {
        payout_item_id: "poi_1".into(),
    };
    assert_eq!(
        code(rpc(&sys).call(methods::PAYOUT_VOID, &void).await),
        Some("CONFLICT")
    );
    let b = balance_when(&ann, &program, |b| b["paid_minor"] == 1_350).await?;
    assert_eq!(figures(&b), [0, 0, 0, 1_350, 0]);

    // The rest of the sale is refunded after payout: the remaining 15.00 becomes debt.
    claw(&sys, &a, "clb_2", 7_500, 10_000).await?;
    let b = balance_when(&ann, &program, |b| b["debt_minor"] == 1_500).await?;
    assert_eq!(figures(&b), [0, 0, 0, 1_350, 1_500]);
    let outcome: pb::ClawbackOutcome = rpc(&sys)
        .call(
            methods::CLAWBACK_OUTCOME,
            &pb::ClawbackOutcomeRequest {
                caller: Some(caller),
                clawback_id: "clb_2".into(),
                wait_ms: 5_000,
            },
        )
        .await?;
    assert_eq!((outcome.reversed_minor, outcome.carry_forward_minor), (1_500, 1_500));

    // The next commission (10.00 on 50.00) nets against the debt: 5.00 of debt left.
    let c = conversion(&program, &enrollment, "cnv_b", 5_000, 1_000);
    approve(&sys, &c).await?;
    let b = balance_when(&ann, &program, |b| b["debt_minor"] == 500).await?;
    assert_eq!(figures(&b), [0, 0, 0, 1_350, 500]);

    // Owner analytics from the rollups: 2 conversions, 150.00 revenue, 30.00 accrued,
    // 20.00 clawed back, 13.50 paid.
    let analytics = owner
        .mcp
        .ok("amba_affiliate_analytics_get", json!({"program_id": program}))
        .await?;
    let t = &analytics["totals"];
    assert_eq!(
        (
            &t["conversions"],
            &t["approved"],
            &t["revenue_minor"],
            &t["commission_minor"]
        ),
        (&json!(2), &json!(2), &json!(15_000), &json!(3_000))
    );
    assert_eq!(
        (&t["clawed_back_minor"], &t["paid_minor"], &t["refunded_minor"]),
        (&json!(2_000), &json!(1_350), &json!(10_000))
    );
    // Affiliates cannot read the owner's analytics (and are told where their own figures are).
    let err = ann
        .mcp
        .err("amba_affiliate_analytics_get", json!({"program_id": program}))
        .await?;
    assert_eq!(
        (err["code"].as_str(), err["details"]["instead"].as_str()),
        (Some("FORBIDDEN"), Some("amba_affiliate_my_stats_get"))
    );

    // The ledger is append-only: the database refuses edits and deletions of entries.
    let pool = sys.service_pool("commission").await?;
    for sql in [
        "UPDATE entries SET amount_minor = amount_minor + 1",
        "DELETE FROM entries",
        "DELETE FROM journal",
    ] {
        let refused = sqlx::query(sql).execute(&pool).await.err().map(|e| e.to_string());
        assert!(
            refused.as_deref().is_some_and(|e| e.contains("append-only")),
            "{sql}: {refused:?}"
        );
    }
    // A posting that does not balance is refused (by the statement that writes it).
    let mut tx = pool.begin().await?;
    let (journal,): (i64,) = sqlx::query_as(
        "INSERT INTO journal (idem_key, kind, program_id, enrollment_id, reference)          VALUES ('bad', 'accrue', 'p', 'e', 'r') RETURNING journal_id",
    )
    .fetch_one(&mut *tx)
    .await?;
    let refused = sqlx::query(
        "INSERT INTO entries (journal_id, program_id, enrollment_id, account, currency, amount_minor)          VALUES ($1, 'p', 'e', 'held', 'USD', 5)",
    )
    .bind(journal)
    .execute(&mut *tx)
    .await
    .err()
    .map(|e| e.to_string());
    assert!(
        refused.as_deref().is_some_and(|e| e.contains("does not balance")),
        "an unbalanced posting was written: {refused:?}"
    );
    drop(tx);
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM journal WHERE idem_key = 'bad'")
        .fetch_one(&pool)
        .await?;
    assert_eq!(kept, 0, "the unbalanced posting's journal row was kept");
    pool.close().await;

    assert_verifies(&sys).await?;
    sys.stop().await
}

#[tokio::test]
async fn holds_release_exactly_once_and_clawbacks_before_release_reverse_held() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (_owner, ann, program, enrollment) = setup(&sys, json!({"hold_days": 30})).await?;
    let a = conversion(&program, &enrollment, "cnv_a", 10_000, 2_000);
    let b = conversion(&program, &enrollment, "cnv_b", 3_333, 667);
    approve(&sys, &a).await?;
    approve(&sys, &b).await?;
    let bal = balance_when(&ann, &program, |b| b["held_minor"] == 2_667).await?;
    assert_eq!(figures(&bal), [2_667, 0, 0, 0, 0]);

    // A partial refund inside the hold: round(667 × 1111 / 3333) = 222.33 -> 222 out of held.
    claw(&sys, &b, "clb_b", 1_111, 1_111).await?;
    let bal = balance_when(&ann, &program, |b| b["held_minor"] == 2_445).await?;
    assert_eq!(figures(&bal), [2_445, 0, 0, 0, 0]);

    // The hold ends (31 days later): two sweeps race, the commissions move once.
    let pool = sys.service_pool("commission").await?;
    let later = chrono_like_now_plus_days(31);
    let (x, y) = tokio::join!(
        amba_commission::sweep::release_due(&pool, later),
        amba_commission::sweep::release_due(&pool, later)
    );
    assert_eq!(x? + y?, 2);
    assert_eq!(amba_commission::sweep::release_due(&pool, later).await?, 0);
    let bal = balance_when(&ann, &program, |b| b["payable_minor"] == 2_445).await?;
    assert_eq!(figures(&bal), [0, 2_445, 0, 0, 0]);

    // The rest of that sale refunded after release: 667 − 222 = 445 out of payable, no debt.
    claw(&sys, &b, "clb_b2", 2_222, 3_333).await?;
    let bal = balance_when(&ann, &program, |b| b["payable_minor"] == 2_000).await?;
    assert_eq!(figures(&bal), [0, 2_000, 0, 0, 0]);
    pool.close().await;
    assert_verifies(&sys).await?;
    sys.stop().await
}

fn chrono_like_now_plus_days(days: i64) -> sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc> {
    let at = now_micros() / 1_000_000 + days * 86_400;
    sqlx::types::chrono::DateTime::from_timestamp(at, 0).unwrap_or_default()
}

#[tokio::test]
async fn transfer_reversal_recovers_once_whichever_comes_first() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (_owner, ann, program, enrollment) = setup(&sys, json!({"hold_days": 0})).await?;
    let a = conversion(&program, &enrollment, "cnv_a", 10_000, 2_000);
    let b = conversion(&program, &enrollment, "cnv_b", 5_000, 1_000);
    approve(&sys, &a).await?;
    approve(&sys, &b).await?;
    balance_when(&ann, &program, |b| b["payable_minor"] == 3_000).await?;
    let r = rpc(&sys);
    let reserve = |id: &str, amount| pb::ReservePayoutRequest {
        payout_item_id: id.into(),
        program_id: program.clone(),
        enrollment_id: enrollment.clone(),
        amount_minor: amount,
    };
    let _ = r.call(methods::PAYOUT_RESERVE, &reserve("poi_1", 3_000)).await?;
    let _ = r
        .call(
            methods::PAYOUT_POST,
            &pb::PostPayoutRequest {
                payout_item_id: "poi_1".into(),
                fee_minor: 0,
            },
        )
        .await?;
    // Stripe reverses 20.00 of the transfer for conversion a: it recovers a's commission.
    let reversal = pb::TransferReversalRequest {
        reversal_id: "trr_1".into(),
        payout_item_id: "poi_1".into(),
        amount_minor: 2_000,
        conversion_ids: vec!["cnv_a".into()],
    };
    let out: pb::TransferReversalReply = r.call(methods::TRANSFER_REVERSAL, &reversal).await?;
    assert_eq!((out.settled_debt_minor, out.recovered_minor), (0, 2_000));
    let again: pb::TransferReversalReply = r.call(methods::TRANSFER_REVERSAL, &reversal).await?;
    assert!(again.duplicate);
    let bal = balance_when(&ann, &program, |b| b["paid_minor"] == 1_000).await?;
    assert_eq!(figures(&bal), [0, 0, 0, 1_000, 0]);
    // The conversion's clawback then arrives: nothing is recovered a second time, no debt.
    claw(&sys, &a, "clb_a", 10_000, 10_000).await?;
    let pool = sys.service_pool("commission").await?;
    eventually(WAIT, "clawback applied", || {
        let pool = pool.clone();
        async move {
            let row: Option<(i64, i64)> =
                sqlx::query_as("SELECT reversed_minor, carry_forward_minor FROM clawbacks WHERE clawback_id = 'clb_a'")
                    .fetch_optional(&pool)
                    .await?;
            Ok(row)
        }
    })
    .await
    .and_then(|row| {
        anyhow::ensure!(row == (0, 0), "recovered twice: {row:?}");
        Ok(())
    })?;
    let bal = balance_when(&ann, &program, |_| true).await?;
    assert_eq!(figures(&bal), [0, 0, 0, 1_000, 0]);

    // The other order: b is clawed back first (10.00 of debt), then its money comes back:
    // the returned 10.00 pays the debt instead of recovering the commission again.
    claw(&sys, &b, "clb_b", 5_000, 5_000).await?;
    balance_when(&ann, &program, |b| b["debt_minor"] == 1_000).await?;
    let reversal = pb::TransferReversalRequest {
        reversal_id: "trr_2".into(),
        payout_item_id: "poi_1".into(),
        amount_minor: 1_000,
        conversion_ids: vec!["cnv_b".into()],
    };
    let out: pb::TransferReversalReply = r.call(methods::TRANSFER_REVERSAL, &reversal).await?;
    assert_eq!((out.settled_debt_minor, out.recovered_minor), (1_000, 0));
    let bal = balance_when(&ann, &program, |b| b["paid_minor"] == 0).await?;
    assert_eq!(figures(&bal), [0, 0, 0, 0, 0]);
    // Nothing more of that transfer can come back.
    let too_much = pb::TransferReversalRequest {
        reversal_id: "trr_3".into(),
        amount_minor: 1,
        ..reversal
    };
    let err = r
        .call(methods::TRANSFER_REVERSAL, &too_much)
        .await
        .err()
        .map(|e| e.code.as_str());
    assert_eq!(err, Some("CONFLICT"));
    pool.close().await;
    assert_verifies(&sys).await?;
    sys.stop().await
}

/// A → B → C (C's sponsor is B, B's is A); C converts.
async fn three_levels(sys: &TestSystem, multi_level: Value) -> anyhow::Result<(Vec<Org>, String, Vec<String>)> {
    let owner = org(sys, "Owner").await?;
    let program = active_program(&owner, json!({"hold_days": 0, "multi_level": multi_level})).await?;
    let mut orgs = Vec::new();
    let mut enrollments: Vec<String> = Vec::new();
    for name in ["Ann", "Bob", "Cy"] {
        let affiliate = org(sys, name).await?;
        let enrolled = enroll(&owner, &affiliate, &program, enrollments.last().map(String::as_str)).await?;
        enrollments.push(text(&enrolled["enrollment_id"]).to_owned());
        orgs.push(affiliate);
    }
    for e in &enrollments {
        known(sys, e).await?;
    }
    Ok((orgs, program, enrollments))
}

#[tokio::test]
async fn multi_level_overrides_accrue_and_follow_their_source() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(&[("MULTI_LEVEL_ENABLED", "true")]).await?;
    let (orgs, program, enrollments) = three_levels(&sys, json!({"enabled": true, "levels_bps": [1000, 500]})).await?;
    // Cy earns 20.00; Bob (level 1) 10% of it = 2.00; Ann (level 2) 5% = 1.00.
    let c = conversion(&program, &enrollments[2], "cnv_c", 10_000, 2_000);
    approve(&sys, &c).await?;
    let expect = [(0, 100), (1, 200), (2, 2_000)];
    for (i, amount) in expect {
        let b = balance_when(&orgs[i], &program, |b| b["payable_minor"] == amount).await?;
        assert_eq!(figures(&b), [0, amount, 0, 0, 0]);
    }
    // Half the sale refunded: every level loses exactly half.
    claw(&sys, &c, "clb_1", 5_000, 5_000).await?;
    for (i, amount) in [(0, 50), (1, 100), (2, 1_000)] {
        balance_when(&orgs[i], &program, |b| b["payable_minor"] == amount).await?;
    }
    // The rest: nothing left anywhere, not a unit more or less.
    claw(&sys, &c, "clb_2", 5_000, 10_000).await?;
    for affiliate in &orgs {
        let b = balance_when(affiliate, &program, |b| b["payable_minor"] == 0).await?;
        assert_eq!(figures(&b), [0, 0, 0, 0, 0]);
    }
    // A program that does not enable multi-level pays no overrides even with the platform on.
    let owner2 = org(&sys, "Owner2").await?;
    let flat = active_program(&owner2, json!({"hold_days": 0})).await?;
    let top = enroll(&owner2, &orgs[0], &flat, None).await?;
    let top = text(&top["enrollment_id"]).to_owned();
    let sub = enroll(&owner2, &orgs[1], &flat, Some(&top)).await?;
    let sub = text(&sub["enrollment_id"]).to_owned();
    known(&sys, &sub).await?;
    approve(&sys, &conversion(&flat, &sub, "cnv_f", 10_000, 2_000)).await?;
    balance_when(&orgs[1], &flat, |b| b["payable_minor"] == 2_000).await?;
    let b = orgs[0]
        .mcp
        .ok("amba_affiliate_my_balance_get", json!({"program_id": flat}))
        .await?;
    assert_eq!(figures(&b), [0, 0, 0, 0, 0]);
    assert_verifies(&sys).await?;
    sys.stop().await
}

#[tokio::test]
async fn multi_level_off_on_the_platform_pays_no_overrides() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (orgs, program, enrollments) = three_levels(&sys, json!({"enabled": true, "levels_bps": [1000, 500]})).await?;
    approve(&sys, &conversion(&program, &enrollments[2], "cnv_c", 10_000, 2_000)).await?;
    balance_when(&orgs[2], &program, |b| b["payable_minor"] == 2_000).await?;
    for upline in orgs.iter().take(2) {
        let b = upline
            .mcp
            .ok("amba_affiliate_my_balance_get", json!({"program_id": program}))
            .await?;
        assert_eq!(figures(&b), [0, 0, 0, 0, 0]);
    }
    assert_verifies(&sys).await?;
    sys.stop().await
}

#[tokio::test]
async fn stats_epc_leaderboard_and_out_of_order_events() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (owner, ann, program, enrollment) = setup(&sys, json!({"hold_days": 0})).await?;
    let bob = org(&sys, "Bob").await?;
    let bob_enr = enroll(&owner, &bob, &program, None).await?;
    let bob_enr = text(&bob_enr["enrollment_id"]).to_owned();
    known(&sys, &bob_enr).await?;

    // Ann: 4 clicks, 1 conversion of 100.00 (20.00 commission). Bob: 2 clicks, 2 × 10.00 (2.00 each).
    // All of them attributed by those clicks (the conversion rate counts only such sales).
    for _ in 0..4 {
        click(&sys, &program, &enrollment).await?;
    }
    for _ in 0..2 {
        click(&sys, &program, &bob_enr).await?;
    }
    let by_click = |mut c: pb::Conversion| {
        c.attribution = "touchpoint".into();
        c
    };
    approve(
        &sys,
        &by_click(conversion(&program, &enrollment, "cnv_a", 10_000, 2_000)),
    )
    .await?;
    approve(&sys, &by_click(conversion(&program, &bob_enr, "cnv_b1", 1_000, 200))).await?;
    approve(&sys, &by_click(conversion(&program, &bob_enr, "cnv_b2", 1_000, 200))).await?;

    let stats = eventually(WAIT, "ann's stats", || async {
        let s = ann.mcp.ok("amba_affiliate_my_stats_get", json!({})).await?;
        Ok((s["clicks"] == 4 && s["commission_minor"] == 2_000).then_some(s))
    })
    .await?;
    assert_eq!(
        (
            &stats["conversions"],
            &stats["conversion_rate"],
            &stats["epc_minor"],
            &stats["currency"]
        ),
        (&json!(1), &json!("0.2500"), &json!(500), &json!("USD"))
    );
    let bob_stats = eventually(WAIT, "bob's stats", || async {
        let s = bob
            .mcp
            .ok("amba_affiliate_my_stats_get", json!({"program_id": program}))
            .await?;
        Ok((s["commission_minor"] == 400 && s["clicks"] == 2).then_some(s))
    })
    .await?;
    assert_eq!(
        (&bob_stats["conversion_rate"], &bob_stats["epc_minor"]),
        (&json!("1.0000"), &json!(200))
    );

    // Owner: 6 clicks, 3 conversions, 120.00 revenue, 24.00 commission; EPC 24.00/6 = 4.00.
    let a = owner
        .mcp
        .ok("amba_affiliate_analytics_get", json!({"program_id": program}))
        .await?;
    assert_eq!(
        (
            &a["totals"]["clicks"],
            &a["totals"]["conversions"],
            &a["totals"]["revenue_minor"]
        ),
        (&json!(6), &json!(3), &json!(12_000))
    );
    assert_eq!(
        (&a["epc_minor"], &a["conversion_rate"]),
        (&json!(400), &json!("0.5000"))
    );
    assert_eq!(a["leaderboard"][0]["enrollment_id"], json!(enrollment));
    let by_conversions = owner
        .mcp
        .ok(
            "amba_affiliate_leaderboard_get",
            json!({"program_id": program, "by": "conversions", "limit": 1}),
        )
        .await?;
    let board = by_conversions["leaderboard"].as_array().cloned().unwrap_or_default();
    assert_eq!(board.len(), 1);
    assert_eq!(board[0]["enrollment_id"], json!(bob_enr));
    // A range before any activity is empty; a bad date is a typed error.
    let past = owner
        .mcp
        .ok(
            "amba_affiliate_analytics_get",
            json!({"program_id": program, "from": "2020-01-01", "to": "2020-01-31"}),
        )
        .await?;
    assert_eq!(past["totals"]["clicks"], 0);
    let bad = owner
        .mcp
        .err(
            "amba_affiliate_analytics_get",
            json!({"program_id": program, "from": "soon"}),
        )
        .await?;
    assert_eq!(bad["code"], "INVALID_ARGUMENT");

    // Out of order: a conversion of an enrollment the read model has not seen yet is retried
    // until the enrollment event arrives, then accrues.
    let late_enr = "enr_0000000000000000000000000000late";
    approve(&sys, &conversion(&program, late_enr, "cnv_late", 1_000, 100)).await?;
    let id = new_event_id();
    let enrollment_event = pb::EnrollmentChanged {
        meta: meta(&id),
        enrollment: Some(pb::Enrollment {
            enrollment_id: late_enr.into(),
            program_id: program.clone(),
            affiliate_org_id: "org_late".into(),
            status: "active".into(),
            depth: 1,
            updated_at_micros: now_micros(),
            ..Default::default()
        }),
        previous_status: "pending".into(),
        program_owner_org_id: owner.id.clone(),
        ..Default::default()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&sys, "enrollment", "activated", &id, &enrollment_event).await?;
    let pool = sys.service_pool("commission").await?;
    eventually(WAIT, "the late conversion accrues", || {
        let pool = pool.clone();
        async move {
            let row: Option<(i64,)> = sqlx::query_as(
                "SELECT balance_minor FROM balances WHERE enrollment_id = $1 AND account = 'payable' AND balance_minor = 100",
            )
            .bind(late_enr)
            .fetch_optional(&pool)
            .await?;
            Ok(row)
        }
    })
    .await?;
    pool.close().await;
    assert_verifies(&sys).await?;
    sys.stop().await
}

// ---- end to end through MCP: attribution reports and approves, the ledger books ----

async fn report(owner: &Org, program: &str, external_id: &str, amount: i64, extra: Value) -> anyhow::Result<Value> {
    let mut args = json!({"program_id": program, "project_id": "web", "external_id": external_id,
        "amount_minor": amount, "currency": "USD"});
    if let (Some(args), Some(extra)) = (args.as_object_mut(), extra.as_object()) {
        args.extend(extra.clone());
    }
    owner.mcp.ok("amba_affiliate_conversion_report", args).await
}

#[tokio::test]
async fn every_rule_type_through_mcp_books_the_exact_commission() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let owner = org(&sys, "Owner").await?;
    let rules = [
        ("percentage", json!({"schema":1,"type":"percentage","bps":2000}), "auto"),
        ("flat", json!({"schema":1,"type":"flat","amount_minor":1500}), "manual"),
        (
            "recurring",
            json!({"schema":1,"type":"recurring","bps":1000,"months":12}),
            "auto",
        ),
        (
            "tiered",
            json!({"schema":1,"type":"tiered","basis":"conversions","period":"lifetime",
                "tiers":[{"from":0,"bps":1000},{"from":2,"bps":2000}]}),
            "auto",
        ),
    ];
    for (i, (kind, rule, approval)) in rules.into_iter().enumerate() {
        let affiliate = org(&sys, &format!("Aff{i}")).await?;
        let program = active_program(
            &owner,
            json!({"name": kind, "commission": rule, "hold_days": 0, "approval_mode": approval}),
        )
        .await?;
        let enrolled = enroll(&owner, &affiliate, &program, None).await?;
        let code = text(&enrolled["code"]).to_owned();
        known(&sys, text(&enrolled["enrollment_id"])).await?;
        // Three sales of 100.00, 33.33 and 50.00 by the affiliate's code (the same customer).
        let mut ids = Vec::new();
        for (n, amount) in [10_000, 3_333, 5_000].into_iter().enumerate() {
            let out = report(
                &owner,
                &program,
                &format!("{kind}-{n}"),
                amount,
                json!({"code": code, "customer_ref": "cus_1"}),
            )
            .await?;
            ids.push(text(&out["conversion_id"]).to_owned());
        }
        if approval == "manual" {
            for id in &ids {
                owner
                    .mcp
                    .ok("amba_affiliate_conversion_approve", json!({"conversion_id": id}))
                    .await?;
            }
        }
        // By hand: percentage 20% = 2000 + 666.6→667 + 1000; flat 3 × 1500; recurring 10% =
        // 1000 + 333.3→333 + 500; tiered: 1st and 2nd at 10% (1000 + 333), 3rd at 20% (1000).
        let expected = match kind {
            "percentage" => 3_667,
            "flat" => 4_500,
            "recurring" => 1_833,
            _ => 2_333,
        };
        let b = balance_when(&affiliate, &program, |b| b["payable_minor"] == expected).await?;
        assert_eq!(figures(&b), [0, expected, 0, 0, 0], "{kind}");
        let stats = affiliate
            .mcp
            .ok("amba_affiliate_my_stats_get", json!({"program_id": program}))
            .await?;
        assert_eq!(
            (&stats["conversions"], &stats["commission_minor"]),
            (&json!(3), &json!(expected)),
            "{kind}"
        );
        let analytics = owner
            .mcp
            .ok("amba_affiliate_analytics_get", json!({"program_id": program}))
            .await?;
        assert_eq!(analytics["totals"]["revenue_minor"], json!(18_333), "{kind}");
        assert_eq!(analytics["totals"]["commission_minor"], json!(expected), "{kind}");
    }
    assert_verifies(&sys).await?;
    sys.stop().await
}

#[tokio::test]
async fn clawback_through_mcp_before_and_after_a_payout() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (owner, ann, program, enrollment, code) = setup_with_code(&sys, json!({"hold_days": 0})).await?;
    let a = report(&owner, &program, "order-1", 10_000, json!({"code": code})).await?;
    assert_eq!(
        (&a["status"], &a["commission_minor"]),
        (&json!("approved"), &json!(2_000))
    );
    let conversion_id = text(&a["conversion_id"]).to_owned();
    balance_when(&ann, &program, |b| b["payable_minor"] == 2_000).await?;

    // Before payout: a 25.00 refund reverses 5.00 of payable, no debt.
    let out = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_clawback",
            json!({"conversion_id": conversion_id, "reason": "partial refund", "amount_minor": 2_500}),
        )
        .await?;
    assert_eq!(
        (
            &out["reversed_minor"],
            &out["carry_forward_minor"],
            &out["ledger_applied"]
        ),
        (&json!(500), &json!(0), &json!(true))
    );
    let b = balance_when(&ann, &program, |b| b["payable_minor"] == 1_500).await?;
    assert_eq!(figures(&b), [0, 1_500, 0, 0, 0]);
    // The agent never saw that reply and sends the same request again, without a key: the
    // recorded clawback comes back, nothing is refunded twice.
    let again = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_clawback",
            json!({"conversion_id": conversion_id, "reason": "partial refund", "amount_minor": 2_500}),
        )
        .await?;
    assert_eq!(
        (&again["clawback_id"], &again["duplicate"], &again["reversed_minor"]),
        (&out["clawback_id"], &json!(true), &json!(500))
    );
    assert_eq!(again["conversion"]["clawed_back_minor"], 2_500);

    // A ledger-level payout of the 15.00.
    let _ = rpc(&sys)
        .call(
            methods::PAYOUT_RESERVE,
            &pb::ReservePayoutRequest {
                payout_item_id: "poi_1".into(),
                program_id: program.clone(),
                enrollment_id: enrollment.clone(),
                amount_minor: 1_500,
            },
        )
        .await?;
    let _ = rpc(&sys)
        .call(
            methods::PAYOUT_POST,
            &pb::PostPayoutRequest {
                payout_item_id: "poi_1".into(),
                fee_minor: 0,
            },
        )
        .await?;

    // After payout: the rest of the sale refunded — 15.00 reversed, all of it carry-forward debt.
    let out = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_clawback",
            json!({"conversion_id": conversion_id, "reason": "refund"}),
        )
        .await?;
    assert_eq!(
        (&out["reversed_minor"], &out["carry_forward_minor"]),
        (&json!(1_500), &json!(1_500))
    );
    let b = balance_when(&ann, &program, |b| b["debt_minor"] == 1_500).await?;
    assert_eq!(figures(&b), [0, 0, 0, 1_500, 1_500]);
    // Nothing remains to claw back; the affiliate cannot claw back at all.
    let err = owner
        .mcp
        .err(
            "amba_affiliate_conversion_clawback",
            json!({"conversion_id": conversion_id, "reason": "again"}),
        )
        .await?;
    assert_eq!(err["code"], "CONFLICT");
    let err = ann
        .mcp
        .err(
            "amba_affiliate_conversion_clawback",
            json!({"conversion_id": conversion_id, "reason": "mine"}),
        )
        .await?;
    assert_eq!(err["code"], "FORBIDDEN");

    // The next sale (50.00 → 10.00) nets against the debt.
    report(&owner, &program, "order-2", 5_000, json!({"code": code})).await?;
    let b = balance_when(&ann, &program, |b| b["debt_minor"] == 500).await?;
    assert_eq!(figures(&b), [0, 0, 0, 1_500, 500]);
    assert_verifies(&sys).await?;
    sys.stop().await
}

/// The deadlocks PostgreSQL has broken in this test's database: none means no two writers ever
/// waited on each other in a circle. (Its statistics are flushed within a second.)
async fn deadlocks(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    Ok(
        sqlx::query_scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(pool)
            .await?,
    )
}

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

// ---- numbers an owner can trust: sale-day figures, net of clawbacks, equal to the ledger ----

/// One program-wide or per-affiliate set of figures, as the stats tools show them.
fn counts_and_money(v: &Value) -> [i64; 12] {
    [
        "clicks",
        "conversions",
        "click_conversions",
        "approved",
        "clawed_back",
        "revenue_minor",
        "refunded_minor",
        "net_revenue_minor",
        "commission_minor",
        "clawed_back_minor",
        "net_commission_minor",
        "paid_minor",
    ]
    .map(|k| v[k].as_i64().unwrap_or(-1))
}

/// (conversion_rate, conversion_rate_bps, epc_minor), each present (null without clicks).
fn per_click(v: &Value) -> (Option<&Value>, Option<&Value>, Option<&Value>) {
    (
        v.get("conversion_rate"),
        v.get("conversion_rate_bps"),
        v.get("epc_minor"),
    )
}

fn micros_of(rfc3339: &Value) -> i64 {
    sqlx::types::chrono::DateTime::parse_from_rfc3339(text(rfc3339))
        .map(|t| t.timestamp_micros())
        .unwrap_or(0)
}

fn as_refs(ids: &[String]) -> Vec<&str> {
    ids.iter().map(String::as_str).collect()
}

/// Sums of the commission ledger for a program's conversions `ids`: (commission accrued,
/// commission reversed by clawbacks, approved sales, their refunds).
async fn ledger_sums(pool: &sqlx::PgPool, program: &str, ids: &[&str]) -> anyhow::Result<[i64; 4]> {
    let accrued: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(e.amount_minor), 0)::bigint FROM journal j JOIN entries e USING (journal_id) \
         JOIN commissions c ON c.commission_id = j.reference \
         WHERE j.program_id = $1 AND j.kind = 'accrue' AND e.account = 'held' AND c.conversion_id = ANY($2)",
    )
    .bind(program)
    .bind(ids)
    .fetch_one(pool)
    .await?;
    let reversed: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(e.amount_minor), 0)::bigint FROM journal j JOIN entries e USING (journal_id) \
         JOIN clawbacks c ON c.clawback_id = j.reference \
         WHERE j.program_id = $1 AND j.kind = 'clawback' AND e.account = 'expense' AND c.conversion_id = ANY($2)",
    )
    .bind(program)
    .bind(ids)
    .fetch_one(pool)
    .await?;
    let (revenue, refunded): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(amount_minor), 0)::bigint, COALESCE(sum(refunded_minor), 0)::bigint FROM conversions \
         WHERE program_id = $1 AND approved AND conversion_id = ANY($2)",
    )
    .bind(program)
    .bind(ids)
    .fetch_one(pool)
    .await?;
    Ok([accrued, reversed, revenue, refunded])
}

#[tokio::test]
async fn analytics_by_sale_day_net_of_clawbacks_equal_the_ledger_and_held_money_has_dates() -> anyhow::Result<()> {
    use chrono::{Datelike, Duration as Days, NaiveDate, TimeZone, Utc};
    let sys = TestSystem::start().await?;
    let (owner, ann, program, ann_enr, ann_code) =
        setup_with_code(&sys, json!({"hold_days": 30, "approval_mode": "manual"})).await?;
    let bob = org(&sys, "Bob").await?;
    let bob_enrolled = enroll(&owner, &bob, &program, None).await?;
    let bob_enr = text(&bob_enrolled["enrollment_id"]).to_owned();
    let bob_code = text(&bob_enrolled["code"]).to_owned();
    known(&sys, &bob_enr).await?;

    // A month boundary in the past: the first day of last month (sales may not be in the future).
    let today = Utc::now().date_naive();
    let this_month = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap_or(today);
    let boundary_day = (this_month - Days::days(1)).with_day(1).unwrap_or(this_month);
    let boundary = Utc.from_utc_datetime(&boundary_day.and_hms_opt(0, 0, 0).unwrap_or_default());
    let at = |minutes: i64| (boundary + Days::minutes(minutes)).to_rfc3339();
    let before_month = (boundary_day - Days::days(1)).with_day(1).unwrap_or(boundary_day);
    let range = |from: NaiveDate, to: NaiveDate| (from.to_string(), to.to_string());
    let (old_from, old_to) = range(before_month, boundary_day - Days::days(1));
    let (new_from, new_to) = range(boundary_day, this_month - Days::days(1));

    // Clicks: Ann 4 (four visitors, the evening before the boundary), Bob 2 (just after it).
    for n in 1..=4 {
        let args = json!({"program_id": program, "code": ann_code, "subject_ref": format!("ann-visitor-{n}"),
            "occurred_at": at(-240)});
        owner.mcp.ok("amba_affiliate_touchpoint_record", args).await?;
    }
    for n in 1..=2 {
        let args = json!({"program_id": program, "code": bob_code, "subject_ref": format!("bob-visitor-{n}"),
            "occurred_at": at(10)});
        owner.mcp.ok("amba_affiliate_touchpoint_record", args).await?;
    }

    // Sales (20%): before the boundary, Ann's 100.00 by a click and 50.00 by her code; after it,
    // Ann's 200.00 by a click (half refunded later), 30.00 by a click (rejected), and 10.00 nobody's.
    let sale = |visitor: Option<&str>, code: Option<&str>, minutes: i64| {
        let mut extra = json!({"occurred_at": at(minutes)});
        if let Some(visitor) = visitor {
            extra["subject_ref"] = json!(visitor);
        }
        if let Some(code) = code {
            extra["code"] = json!(code);
        }
        extra
    };
    let click_old = report(&owner, &program, "o-1", 10_000, sale(Some("ann-visitor-1"), None, -120)).await?;
    let code_old = report(&owner, &program, "o-2", 5_000, sale(None, Some(&ann_code), -60)).await?;
    let click_new = report(&owner, &program, "o-3", 20_000, sale(Some("ann-visitor-2"), None, 60)).await?;
    let rejected = report(&owner, &program, "o-4", 3_000, sale(Some("ann-visitor-3"), None, 120)).await?;
    let nobody = report(&owner, &program, "o-6", 1_000, sale(None, None, 240)).await?;
    assert_eq!(click_old["conversion"]["attribution"], "touchpoint");
    assert_eq!(code_old["conversion"]["attribution"], "code");
    assert_eq!(nobody["status"], "unattributed");
    let id = |v: &Value| text(&v["conversion_id"]).to_owned();
    for approved in [&click_old, &code_old, &click_new] {
        owner
            .mcp
            .ok(
                "amba_affiliate_conversion_approve",
                json!({"conversion_id": id(approved)}),
            )
            .await?;
    }
    owner
        .mcp
        .ok(
            "amba_affiliate_conversion_reject",
            json!({"conversion_id": id(&rejected), "reason": "test order"}),
        )
        .await?;
    // Half of the 200.00 refunded while held: 20.00 of its 40.00 commission reversed.
    let clawed = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_clawback",
            json!({"conversion_id": id(&click_new), "reason": "half refunded", "amount_minor": 10_000}),
        )
        .await?;
    assert_eq!(clawed["reversed_minor"], 2_000);

    // Held money says when it becomes payable: 20.00 + 10.00 + 20.00, 30 days after approval.
    let held = balance_when(&ann, &program, |b| b["held_minor"] == 5_000).await?;
    let ann_balance = &held["balances"][0];
    let releases = ann_balance["releases"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        releases
            .iter()
            .map(|r| r["amount_minor"].as_i64().unwrap_or(0))
            .sum::<i64>(),
        5_000
    );
    let in_30_days = now_micros() + 30 * 86_400_000_000;
    let next = micros_of(&ann_balance["next_release_at"]);
    assert!((next - in_30_days).abs() < 600_000_000, "{held}");
    assert_eq!(held["next_release_at"], ann_balance["next_release_at"]);
    assert!(releases.iter().all(|r| micros_of(&r["at"]) >= next));

    // A shorter hold applies to new commissions only: Ann's keep their dates, Bob's next sale
    // (80.00 by code, after the boundary) is payable in a day.
    owner
        .mcp
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": program, "hold_days": 1}),
        )
        .await?;
    let pool = sys.service_pool("commission").await?;
    eventually(WAIT, "the shorter hold in the ledger's read model", || {
        let pool = pool.clone();
        let program = program.clone();
        async move {
            let hold: Option<i32> = sqlx::query_scalar("SELECT hold_days FROM programs WHERE program_id = $1")
                .bind(&program)
                .fetch_optional(&pool)
                .await?;
            Ok(hold.filter(|h| *h == 1))
        }
    })
    .await?;
    let bob_sale = report(&owner, &program, "o-5", 8_000, sale(None, Some(&bob_code), 180)).await?;
    owner
        .mcp
        .ok(
            "amba_affiliate_conversion_approve",
            json!({"conversion_id": id(&bob_sale)}),
        )
        .await?;
    let bob_held = balance_when(&bob, &program, |b| b["held_minor"] == 1_600).await?;
    let in_a_day = now_micros() + 86_400_000_000;
    assert!(
        (micros_of(&bob_held["next_release_at"]) - in_a_day).abs() < 600_000_000,
        "{bob_held}"
    );
    let unchanged = ann
        .mcp
        .ok("amba_affiliate_my_balance_get", json!({"program_id": program}))
        .await?;
    assert_eq!(unchanged["balances"][0]["releases"], ann_balance["releases"]);

    // Program totals. All time: 6 clicks; 6 sales, 2 by a click (the rejected one is not), 4
    // approved, 1 clawed back; revenue 430.00 − 100.00 refunded; commission 86.00 − 20.00.
    let everything = eventually(WAIT, "every figure in the analytics", || async {
        let a = owner
            .mcp
            .ok("amba_affiliate_analytics_get", json!({"program_id": program}))
            .await?;
        Ok(
            (a["totals"]["approved"] == 4 && a["totals"]["clicks"] == 6 && a["totals"]["clawed_back"] == 1)
                .then_some(a),
        )
    })
    .await?;
    assert_eq!(
        counts_and_money(&everything["totals"]),
        [6, 6, 2, 4, 1, 43_000, 10_000, 33_000, 8_600, 2_000, 6_600, 0]
    );
    // 2 ÷ 6 click sales per click; net commission 66.00 ÷ 6 clicks = 11.00.
    assert_eq!(
        per_click(&everything),
        (Some(&json!("0.3333")), Some(&json!(3_333)), Some(&json!(1_100)))
    );
    // The month before the boundary: Ann's 4 clicks, 2 sales (1 by a click), 150.00, 30.00.
    let old = owner
        .mcp
        .ok(
            "amba_affiliate_analytics_get",
            json!({"program_id": program, "from": old_from, "to": old_to}),
        )
        .await?;
    assert_eq!(
        counts_and_money(&old["totals"]),
        [4, 2, 1, 2, 0, 15_000, 0, 15_000, 3_000, 0, 3_000, 0]
    );
    assert_eq!(
        per_click(&old),
        (Some(&json!("0.2500")), Some(&json!(2_500)), Some(&json!(750)))
    );
    // The month from the boundary: the approvals and the refund happened today, yet they count
    // on the sales' day. Bob's 2 clicks; 4 sales (1 by a click), 2 approved, 1 clawed back.
    let new = owner
        .mcp
        .ok(
            "amba_affiliate_analytics_get",
            json!({"program_id": program, "from": new_from, "to": new_to}),
        )
        .await?;
    assert_eq!(
        counts_and_money(&new["totals"]),
        [2, 4, 1, 2, 1, 28_000, 10_000, 18_000, 5_600, 2_000, 3_600, 0]
    );
    assert_eq!(
        per_click(&new),
        (Some(&json!("0.5000")), Some(&json!(5_000)), Some(&json!(1_800)))
    );

    // Figures equal the ledger's to the minor unit, per month and in all.
    let (old_ids, new_ids) = (
        [id(&click_old), id(&code_old)],
        [id(&click_new), id(&rejected), id(&nobody), id(&bob_sale)],
    );
    let all_ids: Vec<String> = old_ids.iter().chain(new_ids.iter()).cloned().collect();
    for (ids, shown) in [(&old_ids[..], &old), (&new_ids[..], &new), (&all_ids[..], &everything)] {
        let [accrued, reversed, revenue, refunded] = ledger_sums(&pool, &program, &as_refs(ids)).await?;
        let t = &shown["totals"];
        assert_eq!(
            [
                accrued,
                reversed,
                accrued - reversed,
                revenue,
                refunded,
                revenue - refunded
            ],
            [
                "commission_minor",
                "clawed_back_minor",
                "net_commission_minor",
                "revenue_minor",
                "refunded_minor",
                "net_revenue_minor"
            ]
            .map(|k| t[k].as_i64().unwrap_or(-1)),
            "{t}"
        );
    }

    // Leaderboard by what affiliates keep: Ann 50.00 net (70.00 − 20.00), Bob 16.00.
    let board = everything["leaderboard"].as_array().cloned().unwrap_or_default();
    assert_eq!(board.len(), 2);
    assert_eq!(board[0]["enrollment_id"], json!(ann_enr));
    assert_eq!(
        counts_and_money(&board[0]),
        [4, 4, 2, 3, 1, 35_000, 10_000, 25_000, 7_000, 2_000, 5_000, 0]
    );
    assert_eq!(
        per_click(&board[0]),
        (Some(&json!("0.5000")), Some(&json!(5_000)), Some(&json!(1_250)))
    );
    assert_eq!(
        counts_and_money(&board[1]),
        [2, 1, 0, 1, 0, 8_000, 0, 8_000, 1_600, 0, 1_600, 0]
    );
    assert_eq!(
        per_click(&board[1]),
        (Some(&json!("0.0000")), Some(&json!(0)), Some(&json!(800)))
    );
    // From the boundary Ann had no clicks: her rate and EPC are null, not 0.
    let new_board = owner
        .mcp
        .ok(
            "amba_affiliate_leaderboard_get",
            json!({"program_id": program, "from": new_from, "to": new_to}),
        )
        .await?;
    let new_board = new_board["leaderboard"].as_array().cloned().unwrap_or_default();
    assert_eq!(new_board[0]["enrollment_id"], json!(ann_enr));
    assert_eq!(
        counts_and_money(&new_board[0]),
        [0, 2, 1, 1, 1, 20_000, 10_000, 10_000, 4_000, 2_000, 2_000, 0]
    );
    assert_eq!(
        per_click(&new_board[0]),
        (Some(&Value::Null), Some(&Value::Null), Some(&Value::Null))
    );
    // Ann's own stats agree with her leaderboard rows.
    let mine = ann
        .mcp
        .ok("amba_affiliate_my_stats_get", json!({"program_id": program}))
        .await?;
    assert_eq!(counts_and_money(&mine), counts_and_money(&board[0]));
    assert_eq!(per_click(&mine), per_click(&board[0]));
    let mine_new = ann
        .mcp
        .ok(
            "amba_affiliate_my_stats_get",
            json!({"program_id": program, "from": new_from, "to": new_to}),
        )
        .await?;
    assert_eq!(counts_and_money(&mine_new), counts_and_money(&new_board[0]));
    assert_eq!(
        per_click(&mine_new),
        (Some(&Value::Null), Some(&Value::Null), Some(&Value::Null))
    );

    // Early release of one sale's commission: audited, once.
    let release = json!({"program_id": program, "conversion_id": id(&click_old),
        "reason": "delivered and accepted", "idempotency_key": "rel-1"});
    let released = owner
        .mcp
        .ok("amba_affiliate_commission_release", release.clone())
        .await?;
    assert_eq!(
        (
            &released["released_minor"],
            &released["commissions"],
            &released["duplicate"],
            &released["released_by"]["org_id"]
        ),
        (&json!(2_000), &json!(1), &json!(false), &json!(owner.id))
    );
    let b = balance_when(&ann, &program, |b| b["payable_minor"] == 2_000).await?;
    assert_eq!(figures(&b), [3_000, 2_000, 0, 0, 0]);
    let again = owner
        .mcp
        .ok("amba_affiliate_commission_release", release.clone())
        .await?;
    assert_eq!(
        (&again["release_id"], &again["duplicate"], &again["released_minor"]),
        (&released["release_id"], &json!(true), &json!(2_000))
    );
    let mut other_reason = release.clone();
    other_reason["reason"] = json!("changed my mind");
    let err = owner.mcp.err("amba_affiliate_commission_release", other_reason).await?;
    assert_eq!(err["code"], "IDEMPOTENCY_MISMATCH");
    let mut new_key = release.clone();
    new_key["idempotency_key"] = json!("rel-2");
    let err = owner.mcp.err("amba_affiliate_commission_release", new_key).await?;
    assert_eq!(err["code"], "CONFLICT", "{err}");
    // Bad calls change nothing: no reason, both targets, a rejected sale (no commission), the
    // affiliate herself, another owner.
    for (caller, args, code) in [
        (
            &owner,
            json!({"program_id": program, "conversion_id": id(&click_new), "reason": "  "}),
            "INVALID_ARGUMENT",
        ),
        (
            &owner,
            json!({"program_id": program, "conversion_id": id(&click_new)}),
            "INVALID_ARGUMENT",
        ),
        (
            &owner,
            json!({"program_id": program, "conversion_id": id(&click_new), "enrollment_id": ann_enr, "reason": "x"}),
            "INVALID_ARGUMENT",
        ),
        (
            &owner,
            json!({"program_id": program, "conversion_id": id(&rejected), "reason": "x"}),
            "NOT_FOUND",
        ),
        (
            &ann,
            json!({"program_id": program, "enrollment_id": ann_enr, "reason": "mine"}),
            "FORBIDDEN",
        ),
        (
            &bob,
            json!({"program_id": program, "conversion_id": id(&click_new), "reason": "x"}),
            "FORBIDDEN",
        ),
    ] {
        let err = caller
            .mcp
            .err("amba_affiliate_commission_release", args.clone())
            .await?;
        assert_eq!(err["code"], code, "{args}: {err}");
    }
    let b = balance_when(&ann, &program, |_| true).await?;
    assert_eq!(figures(&b), [3_000, 2_000, 0, 0, 0]);

    // All Ann still holds, by enrollment and without a key: the request is the key.
    let all = json!({"program_id": program, "enrollment_id": ann_enr, "reason": "trusted partner"});
    let released_all = owner.mcp.ok("amba_affiliate_commission_release", all.clone()).await?;
    assert_eq!(
        (&released_all["released_minor"], &released_all["commissions"]),
        (&json!(3_000), &json!(2))
    );
    let replay = owner.mcp.ok("amba_affiliate_commission_release", all).await?;
    assert_eq!(
        (&replay["duplicate"], &replay["release_id"]),
        (&json!(true), &released_all["release_id"])
    );
    let b = balance_when(&ann, &program, |b| b["payable_minor"] == 5_000).await?;
    assert_eq!(figures(&b), [0, 5_000, 0, 0, 0]);
    assert_eq!(b["balances"][0]["next_release_at"], Value::Null);
    assert_eq!(b["balances"][0]["releases"], json!([]));

    // The audit: each early release posting carries who and why.
    let memos: Vec<(String, sqlx::types::Json<Value>)> = sqlx::query_as(
        "SELECT reference, memo FROM journal WHERE kind = 'release' AND enrollment_id = $1 ORDER BY reference",
    )
    .bind(&ann_enr)
    .fetch_all(&pool)
    .await?;
    assert_eq!(memos.len(), 3);
    for (_, memo) in &memos {
        assert_eq!(memo.0["by_org_id"], json!(owner.id));
        assert!(memo.0["by_account_id"].as_str().is_some_and(|a| a.starts_with("acc_")));
    }
    assert!(memos.iter().any(|(_, m)| m.0["reason"] == "delivered and accepted"));
    assert_eq!(
        memos.iter().filter(|(_, m)| m.0["reason"] == "trusted partner").count(),
        2
    );

    // The hold's own release later moves only what is still held (Bob's), never Ann's again.
    assert_eq!(
        amba_commission::sweep::release_due(&pool, chrono_like_now_plus_days(40)).await?,
        1
    );
    let releases_of_ann: i64 =
        sqlx::query_scalar("SELECT count(*) FROM journal WHERE kind = 'release' AND enrollment_id = $1")
            .bind(&ann_enr)
            .fetch_one(&pool)
            .await?;
    assert_eq!(releases_of_ann, 3);
    let b = balance_when(&bob, &program, |b| b["payable_minor"] == 1_600).await?;
    assert_eq!(figures(&b), [0, 1_600, 0, 0, 0]);
    let b = balance_when(&ann, &program, |_| true).await?;
    assert_eq!(figures(&b), [0, 5_000, 0, 0, 0]);
    pool.close().await;
    assert_verifies(&sys).await?;
    sys.stop().await
}

/// A CSV text (RFC 4180, CRLF) as rows of cells, quotes undone.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut cell) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') if chars.peek() == Some(&'\n') => {
                chars.next();
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    rows
}

/// The export's data rows as column → cell, after checking the header.
fn movements(csv: &str) -> Vec<std::collections::HashMap<String, String>> {
    let mut rows = parse_csv(csv).into_iter();
    let header = rows.next().unwrap_or_default();
    assert_eq!(
        header.join(","),
        "posted_at,movement_id,kind,level,conversion_id,commission_id,affiliate_org_id,enrollment_id,amount_minor,\
         currency,commission_minor,held_minor,payable_minor,reserved_minor,paid_minor,fee_minor,status,payable_at,\
         payout_item_id,reason"
    );
    rows.map(|row| header.iter().cloned().zip(row).collect()).collect()
}

fn minor(row: &std::collections::HashMap<String, String>, column: &str) -> i64 {
    row.get(column).and_then(|v| v.parse().ok()).unwrap_or(i64::MIN)
}

#[tokio::test]
async fn commissions_export_is_the_ledger_movement_by_movement_exact_to_the_minor_unit() -> anyhow::Result<()> {
    use std::collections::HashMap;
    let sys = TestSystem::start().await?;
    let (owner, ann, program, ann_enr, ann_code) = setup_with_code(&sys, json!({"hold_days": 30})).await?;
    let bob = org(&sys, "Bob").await?;
    let bob_in = enroll(&owner, &bob, &program, None).await?;
    let bob_enr = text(&bob_in["enrollment_id"]).to_owned();
    known(&sys, &bob_enr).await?;

    // Two sales by code, approved at once and held for 30 days: 20.00 for Ann, 6.67 for Bob.
    let a = report(&owner, &program, "o-1", 10_000, json!({"code": ann_code})).await?;
    let b = report(&owner, &program, "o-2", 3_333, json!({"code": bob_in["code"]})).await?;
    let (a_id, b_id) = (
        text(&a["conversion_id"]).to_owned(),
        text(&b["conversion_id"]).to_owned(),
    );
    let b_commission = b["commission_minor"].as_i64().unwrap_or_default();
    assert_eq!((&a["commission_minor"], b_commission), (&json!(2_000), 667));
    balance_when(&ann, &program, |b| b["held_minor"] == 2_000).await?;
    balance_when(&bob, &program, |b| b["held_minor"] == 667).await?;
    // The owner ends Ann's hold early, with a reason a spreadsheet must not run.
    let reason = "=cleared, \"ok\"";
    owner
        .mcp
        .ok(
            "amba_affiliate_commission_release",
            json!({"program_id": program, "conversion_id": a_id, "reason": reason}),
        )
        .await?;
    // Refunds: a third of Bob's sale (held), a quarter of Ann's (released).
    let claw = |conversion: &str, amount: i64| {
        owner.mcp.ok(
            "amba_affiliate_conversion_clawback",
            json!({"conversion_id": conversion, "reason": "refund, partial", "amount_minor": amount}),
        )
    };
    let b_claw = claw(&b_id, 1_111).await?;
    let a_claw = claw(&a_id, 2_500).await?;
    assert_eq!(
        (&b_claw["reversed_minor"], &a_claw["reversed_minor"]),
        (&json!(222), &json!(500))
    );
    // A payout of 10.00 (1.00 fee), one of 5.00 that fails, and 3.00 of the paid transfer
    // coming back (with its share of the fee, 0.33).
    let r = rpc(&sys);
    for (item, amount) in [("pit_x1", 1_000), ("pit_x2", 500)] {
        let _ = r
            .call(
                methods::PAYOUT_RESERVE,
                &pb::ReservePayoutRequest {
                    payout_item_id: item.into(),
                    program_id: program.clone(),
                    enrollment_id: ann_enr.clone(),
                    amount_minor: amount,
                },
            )
            .await?;
    }
    let _ = r
        .call(
            methods::PAYOUT_POST,
            &pb::PostPayoutRequest {
                payout_item_id: "pit_x1".into(),
                fee_minor: 100,
            },
        )
        .await?;
    let _ = r
        .call(
            methods::PAYOUT_VOID,
            &pb::VoidPayoutRequest {
                payout_item_id: "pit_x2".into(),
            },
        )
        .await?;
    let reversed: pb::TransferReversalReply = r
        .call(
            methods::TRANSFER_REVERSAL,
            &pb::TransferReversalRequest {
                reversal_id: "trr_x1".into(),
                payout_item_id: "pit_x1".into(),
                amount_minor: 300,
                conversion_ids: vec![a_id.clone()],
            },
        )
        .await?;
    assert_eq!((reversed.settled_debt_minor, reversed.recovered_minor), (0, 333));
    let ann_balance = balance_when(&ann, &program, |b| b["paid_minor"] == 600).await?;
    assert_eq!(figures(&ann_balance), [0, 500, 0, 600, 0]);
    let bob_balance = balance_when(&bob, &program, |b| b["held_minor"] == 445).await?;
    assert_eq!(figures(&bob_balance), [445, 0, 0, 0, 0]);

    let today = chrono::Utc::now().date_naive();
    let range = json!({"program_id": program, "from": (today - chrono::Days::new(1)).to_string(),
        "to": (today + chrono::Days::new(2)).to_string()});
    let whole = owner.mcp.ok("amba_affiliate_commissions_export", range.clone()).await?;
    assert!(whole.get("next_cursor").is_none());
    let csv = text(&whole["csv"]);
    assert!(csv.ends_with("\r\n") && !csv.contains("\n\n"));
    // Text is guarded and quoted; the owner's reason reads back as written after the guard.
    assert!(csv.contains(",\"'=cleared, \"\"ok\"\"\"\r\n"), "{csv}");
    let rows = movements(csv);
    assert_eq!(whole["rows"], json!(rows.len()));
    let what: Vec<(&str, &str, i64, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["kind"].as_str(),
                r["enrollment_id"].as_str(),
                minor(r, "amount_minor"),
                r["status"].as_str(),
                r["payout_item_id"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        what,
        vec![
            ("accrual", ann_enr.as_str(), 2_000, "released", ""),
            ("accrual", bob_enr.as_str(), 667, "held", ""),
            ("early_release", ann_enr.as_str(), 2_000, "released", ""),
            ("clawback", bob_enr.as_str(), 222, "held", ""),
            ("clawback", ann_enr.as_str(), 500, "released", ""),
            ("payout_reserved", ann_enr.as_str(), 1_000, "posted", "pit_x1"),
            ("payout_reserved", ann_enr.as_str(), 500, "voided", "pit_x2"),
            ("payout_paid", ann_enr.as_str(), 1_000, "posted", "pit_x1"),
            ("payout_voided", ann_enr.as_str(), 500, "voided", "pit_x2"),
            ("transfer_reversal", ann_enr.as_str(), 300, "posted", "pit_x1"),
        ]
    );
    let signed = |r: &HashMap<String, String>| {
        [
            "commission_minor",
            "held_minor",
            "payable_minor",
            "reserved_minor",
            "paid_minor",
            "fee_minor",
        ]
        .map(|c| minor(r, c))
    };
    assert_eq!(signed(&rows[7]), [0, 0, 0, -1_000, 900, 100], "the payment");
    assert_eq!(signed(&rows[9]), [-333, 0, 0, 0, -300, -33], "the transfer reversal");
    for row in &rows {
        let [commission, held, payable, reserved, paid, fee] = signed(row);
        assert_eq!(
            held + payable + reserved + paid + fee,
            commission,
            "postings balance: {row:?}"
        );
        assert_eq!(row["currency"], "USD");
        let org = if row["enrollment_id"] == ann_enr {
            &ann.id
        } else {
            &bob.id
        };
        assert_eq!(&row["affiliate_org_id"], org);
    }
    // Ann's sale: its accrual, early release and clawback are one direct commission's.
    let a_rows: Vec<&HashMap<String, String>> = rows.iter().filter(|r| r["conversion_id"] == a_id).collect();
    assert_eq!(a_rows.len(), 3);
    assert!(!a_rows[0]["commission_id"].is_empty());
    assert!(
        a_rows
            .iter()
            .all(|r| r["level"] == "0" && r["commission_id"] == a_rows[0]["commission_id"])
    );
    assert_eq!(
        (rows[2]["reason"].clone(), rows[3]["reason"].as_str()),
        (format!("'{reason}"), "refund, partial")
    );
    assert!(!rows[1]["payable_at"].is_empty() && rows[1]["payable_at"] > rows[1]["posted_at"]);

    // The columns sum to what the ledger reports: each affiliate's balances, and the program's
    // commission, clawbacks and payments in analytics.
    let sum = |column: &str, enrollment: Option<&str>| -> i64 {
        rows.iter()
            .filter(|r| enrollment.is_none_or(|e| r["enrollment_id"] == e))
            .map(|r| minor(r, column))
            .sum()
    };
    for (enrollment, balance) in [(&ann_enr, &ann_balance), (&bob_enr, &bob_balance)] {
        let b = &balance["balances"][0];
        assert_eq!(
            [
                sum("held_minor", Some(enrollment)),
                sum("payable_minor", Some(enrollment)),
                sum("reserved_minor", Some(enrollment)),
                sum("paid_minor", Some(enrollment)),
            ],
            [
                b["held_minor"].as_i64().unwrap_or(-1),
                b["payable_minor"].as_i64().unwrap_or(-1) - b["debt_minor"].as_i64().unwrap_or(-1),
                b["reserved_minor"].as_i64().unwrap_or(-1),
                b["paid_minor"].as_i64().unwrap_or(-1),
            ]
        );
    }
    let analytics = owner
        .mcp
        .ok("amba_affiliate_analytics_get", json!({"program_id": program}))
        .await?;
    let t = &analytics["totals"];
    let of_kind = |kinds: &[&str], column: &str| -> i64 {
        rows.iter()
            .filter(|r| kinds.contains(&r["kind"].as_str()))
            .map(|r| minor(r, column))
            .sum()
    };
    assert_eq!(
        (
            of_kind(&["accrual", "override"], "amount_minor"),
            -of_kind(&["clawback", "transfer_reversal"], "commission_minor"),
            sum("commission_minor", None),
            sum("paid_minor", None),
        ),
        (
            t["commission_minor"].as_i64().unwrap_or(-1),
            t["clawed_back_minor"].as_i64().unwrap_or(-1),
            t["net_commission_minor"].as_i64().unwrap_or(-1),
            t["paid_minor"].as_i64().unwrap_or(-1),
        )
    );
    assert_eq!((sum("commission_minor", None), sum("fee_minor", None)), (1_612, 67));

    // Page by page (limit as numeric text), nothing lost or repeated.
    let mut paged = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut args = range.clone();
        args["limit"] = json!("4");
        if let Some(cursor) = &cursor {
            args["cursor"] = json!(cursor);
        }
        let page = owner.mcp.ok("amba_affiliate_commissions_export", args).await?;
        let page_rows = movements(text(&page["csv"]));
        assert_eq!(page["rows"], json!(page_rows.len()));
        paged.extend(page_rows);
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!((pages, &paged), (3, &rows));
    // A range without movements is the header alone.
    let empty = owner
        .mcp
        .ok(
            "amba_affiliate_commissions_export",
            json!({"program_id": program, "from": (today - chrono::Days::new(30)).to_string(),
                "to": (today - chrono::Days::new(29)).to_string()}),
        )
        .await?;
    assert_eq!((&empty["rows"], movements(text(&empty["csv"])).len()), (&json!(0), 0));

    // Refusals change nothing: the affiliates are pointed to their own balance, another org
    // learns nothing, bad ranges, cursors and limits are named.
    for who in [&ann, &bob] {
        let err = who.mcp.err("amba_affiliate_commissions_export", range.clone()).await?;
        assert_eq!(
            (err["code"].as_str(), err["status"].as_u64(), err["message"].as_str()),
            (
                Some("FORBIDDEN"),
                Some(403),
                Some("this tool is for the program's owner; as an affiliate, use amba_affiliate_my_balance_get")
            )
        );
    }
    let other = org(&sys, "Other").await?;
    let err = other
        .mcp
        .err("amba_affiliate_commissions_export", range.clone())
        .await?;
    assert_eq!(
        (err["code"].as_str(), err["message"].as_str()),
        (Some("NOT_FOUND"), Some(format!("program {program} not found").as_str()))
    );
    let with = |extra: Value| {
        let mut args = range.clone();
        if let (Some(args), Some(extra)) = (args.as_object_mut(), extra.as_object()) {
            args.extend(extra.clone());
        }
        args
    };
    for (args, message) in [
        (
            with(json!({"cursor": "bm9wZQ"})),
            "cursor is not one this server issued".to_owned(),
        ),
        (
            with(json!({"cursor": "%%%"})),
            "cursor is not one this server issued".to_owned(),
        ),
        (
            with(json!({"from": "2025-01-01", "to": "2026-01-03"})),
            "from and to are 367 days apart; export at most 366 days per call".to_owned(),
        ),
        (
            with(json!({"from": "2026-02-01", "to": "2026-01-01"})),
            "from must be before to".to_owned(),
        ),
        (
            with(json!({"from": "January"})),
            "from \"January\" is not an RFC 3339 time such as 2026-11-01T00:00:00Z or a date such as 2026-11-01"
                .to_owned(),
        ),
    ] {
        let err = owner.mcp.err("amba_affiliate_commissions_export", args.clone()).await?;
        assert_eq!(
            (err["code"].as_str(), err["message"].as_str()),
            (Some("INVALID_ARGUMENT"), Some(message.as_str())),
            "{args}"
        );
    }
    for limit in [json!(0), json!(5_001), json!("ten")] {
        let err = owner
            .mcp
            .err("amba_affiliate_commissions_export", with(json!({"limit": limit})))
            .await?;
        assert_eq!(
            (err["code"].as_str(), err["details"]["argument"].as_str()),
            (Some("INVALID_ARGUMENT"), Some("limit")),
            "{err}"
        );
    }
    let again = owner.mcp.ok("amba_affiliate_commissions_export", range).await?;
    assert_eq!(again, whole);
    assert_verifies(&sys).await?;
    sys.stop().await
}
