//! Accrual, holds, clawbacks, transfer reversals and every rule type: the ledger to the minor unit.

use super::*;

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
    // Balanced entries of a posting the journal does not hold are refused too (checked per
    // statement, like the balance).
    let refused = sqlx::query(
        "INSERT INTO entries (journal_id, program_id, enrollment_id, account, currency, amount_minor) \
         VALUES (-1, 'p', 'e', 'held', 'USD', 5), (-1, 'p', 'e', 'expense', 'USD', -5)",
    )
    .execute(&pool)
    .await
    .err()
    .map(|e| e.to_string());
    assert!(
        refused.as_deref().is_some_and(|e| e.contains("has no journal row")),
        "entries of a missing posting were written: {refused:?}"
    );
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
