//! Payout runs: onboarding, dry runs, idempotency, netting, unknown outcomes, reversals.

use super::*;

#[tokio::test]
async fn onboarding_dry_run_run_idempotency_netting_and_reversal() -> anyhow::Result<()> {
    let sys = TestSystem::with_stripe(&[("ORG_PAYOUTS_LIVE", "true")]).await?;
    let p = program(
        &sys,
        json!({"hold_days": 0, "platform_fee_bps": 250, "payout_threshold_minor": 1000}),
    )
    .await?;
    onboard(&sys, &p.ann).await?;
    // Ann earns 20 % of 100.00 (2000); Bob 20 % of 40.00 (800, under the threshold, no account).
    report_when_ready(&p.owner, &p.program, "o-1", 10_000, &p.ann_code).await?;
    report_when_ready(&p.owner, &p.program, "o-2", 4_000, &p.bob_code).await?;
    let quote = quote_when(&p.ann, &p.program, |q| q["payable_minor"] == 2000).await?;
    assert_eq!(
        (quote["fee_minor"].as_i64(), quote["net_minor"].as_i64()),
        (Some(50), Some(1950))
    );
    quote_when(&p.bob, &p.program, |q| q["payable_minor"] == 800).await?;

    // The dry run is the exact plan, and moves nothing.
    let dry = p
        .owner
        .mcp
        .ok(
            "amba_affiliate_payout_run",
            json!({"program_id": p.program, "dry_run": true}),
        )
        .await?;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["payout_run_id"], "");
    let dry_items = items(&dry);
    let ann_plan = item_of(&dry_items, &p.ann)?;
    assert_eq!(
        (
            ann_plan["gross_minor"].as_i64(),
            ann_plan["fee_minor"].as_i64(),
            ann_plan["net_minor"].as_i64()
        ),
        (Some(2000), Some(50), Some(1950))
    );
    assert_eq!(ann_plan["status"], "planned");
    let bob_plan = item_of(&dry_items, &p.bob)?;
    assert_eq!(bob_plan["status"], "skipped");
    assert!(text(&bob_plan["reason"]).contains("threshold"), "{bob_plan}");
    assert_eq!(dry["funding_required_minor"], 2000, "the charge is Ann's gross: {dry}");
    assert!(stripe(&sys)?.transfers().is_empty());
    enable_payouts(&sys, &p.owner, &[])?;
    fund(&sys, &p.owner, &p.program, "visa", "4242").await?;

    // The live run executes that plan: the owner is charged the gross, then Ann is paid from it.
    let run = p
        .owner
        .mcp
        .ok(
            "amba_affiliate_payout_run",
            json!({"program_id": p.program, "idempotency_key": "first"}),
        )
        .await?;
    let run_items = items(&run);
    let ann_paid = item_of(&run_items, &p.ann)?;
    assert_eq!(ann_paid["status"], "paid", "{run}");
    for field in ["gross_minor", "fee_minor", "net_minor", "debt_minor"] {
        assert_eq!(
            ann_paid[field], ann_plan[field],
            "{field}: the dry run equals the live run"
        );
    }
    assert_eq!(item_of(&run_items, &p.bob)?["status"], "skipped");
    assert_eq!(run["funding"]["status"], "succeeded", "{run}");
    assert_eq!(run["funding_required_minor"], 2000);
    let intents = stripe(&sys)?.payment_intents();
    assert_eq!(intents.len(), 1);
    assert_eq!(
        (intents[0]["amount"].as_i64(), intents[0]["status"].as_str()),
        (Some(2000), Some("succeeded"))
    );
    assert_eq!(intents[0]["transfer_group"], run["payout_run_id"]);
    assert_eq!(intents[0]["latest_charge"], run["funding"]["charge_id"]);
    let transfers = stripe(&sys)?.transfers();
    assert_eq!(transfers.len(), 1);
    assert_eq!(transfers[0]["amount"], 1950);
    assert_eq!(transfers[0]["currency"], "usd");
    assert_eq!(transfers[0]["id"], ann_paid["stripe_transfer_id"]);
    assert_eq!(transfers[0]["transfer_group"], run["payout_run_id"]);
    assert_eq!(transfers[0]["metadata"]["payout_item_id"], ann_paid["payout_item_id"]);
    assert_eq!(
        transfers[0]["source_transaction"], run["funding"]["charge_id"],
        "paid from the owner's charge, not the platform's balance"
    );

    // The same key returns the same run; nothing moves twice.
    let again = p
        .owner
        .mcp
        .ok(
            "amba_affiliate_payout_run",
            json!({"program_id": p.program, "idempotency_key": "first"}),
        )
        .await?;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["payout_run_id"], run["payout_run_id"]);
    assert_eq!(stripe(&sys)?.transfers().len(), 1);
    let balance = p
        .ann
        .mcp
        .ok("amba_affiliate_my_balance_get", json!({"program_id": p.program}))
        .await?;
    assert_eq!(
        (balance["paid_minor"].as_i64(), balance["payable_minor"].as_i64()),
        (Some(1950), Some(0))
    );

    // A refund after payout becomes debt, netted against the next commissions.
    let conversions = p
        .owner
        .mcp
        .ok("amba_affiliate_conversions_list", json!({"program_id": p.program}))
        .await?;
    let first = conversions["conversions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["external_id"] == "o-1"))
        .map(|c| text(&c["conversion_id"]).to_owned())
        .unwrap_or_default();
    let clawed = p
        .owner
        .mcp
        .ok(
            "amba_affiliate_conversion_clawback",
            json!({"conversion_id": first, "reason": "refund", "idempotency_key": "refund-o-1"}),
        )
        .await?;
    assert_eq!(clawed["carry_forward_minor"], 2000, "{clawed}");
    quote_when(&p.ann, &p.program, |q| q["debt_minor"] == 2000).await?;

    // Stripe reverses that paid transfer (the affiliate returned the money), and delivers the
    // event twice: the returned 1,950 and the fee's 50 undo the commission the clawback already
    // recovered, so the debt is settled once; nothing is recovered twice.
    let first_transfer = text(&ann_paid["stripe_transfer_id"]).to_owned();
    let reversal = stripe(&sys)?.reverse_transfer(&first_transfer, 1950).await?;
    assert_eq!(reversal["amount"], 1950);
    let after = quote_when(&p.ann, &p.program, |q| q["debt_minor"] == 0).await?;
    let reversed_event = stripe(&sys)?
        .events()
        .into_iter()
        .find(|e| e["type"] == "transfer.reversed")
        .ok_or_else(|| anyhow::anyhow!("no transfer.reversed"))?;
    stripe(&sys)?.redeliver(text(&reversed_event["id"])).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = p
        .ann
        .mcp
        .ok("amba_affiliate_my_payout_request", json!({"program_id": p.program}))
        .await?;
    assert_eq!(
        later["debt_minor"], after["debt_minor"],
        "a redelivered reversal changes nothing"
    );
    let pool = sys.service_pool("payout").await?;
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE event_id = $1")
        .bind(text(&reversed_event["id"]))
        .fetch_one(&pool)
        .await?;
    assert_eq!(seen, 1);
    pool.close().await;
    let balance = p
        .ann
        .mcp
        .ok("amba_affiliate_my_balance_get", json!({"program_id": p.program}))
        .await?;
    assert_eq!(
        balance["paid_minor"], 0,
        "the reversed transfer is no longer paid: {balance}"
    );

    // New commission is paid whole by the next run.
    report(&p.owner, &p.program, "o-3", 15_000, &p.ann_code).await?; // +3000
    let quote = quote_when(&p.ann, &p.program, |q| q["payable_minor"] == 3000).await?;
    // 2.5 % of 3,000 = 75.
    assert_eq!(
        (
            quote["debt_minor"].as_i64(),
            quote["fee_minor"].as_i64(),
            quote["net_minor"].as_i64()
        ),
        (Some(0), Some(75), Some(2925))
    );
    let second = p
        .owner
        .mcp
        .ok(
            "amba_affiliate_payout_run",
            json!({"program_id": p.program, "idempotency_key": "second"}),
        )
        .await?;
    let ann_second = item_of(&items(&second), &p.ann)?.clone();
    assert_eq!(ann_second["status"], "paid");
    assert_eq!(
        (ann_second["gross_minor"].as_i64(), ann_second["net_minor"].as_i64()),
        (Some(3000), Some(2925))
    );
    assert_eq!(stripe(&sys)?.transfers().len(), 2);
    assert_eq!(stripe(&sys)?.payment_intents().len(), 2, "one charge per run");

    let listed = p
        .owner
        .mcp
        .ok("amba_affiliate_payouts_list", json!({"program_id": p.program}))
        .await?;
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        listed["runs"][0]["payout_run_id"], second["payout_run_id"],
        "newest first"
    );
    verify_ledger(&sys)?;
    sys.stop().await
}

#[tokio::test]
async fn unknown_outcomes_end_with_exactly_one_transfer() -> anyhow::Result<()> {
    let sys = TestSystem::with_stripe(&[("ORG_PAYOUTS_LIVE", "true"), ("AMBA_STRIPE_TIMEOUT_SECONDS", "1")]).await?;
    let p = program(&sys, json!({"hold_days": 0})).await?;
    onboard(&sys, &p.ann).await?;
    enable_payouts(&sys, &p.owner, &[])?;
    fund(&sys, &p.owner, &p.program, "visa", "4242").await?;
    let fake = stripe(&sys)?;

    // 0. Stripe commits the owner's charge, then answers 500 (replayed for its key): the charge
    //    is found among the owner's PaymentIntents, never made twice, and the run goes on.
    report_when_ready(&p.owner, &p.program, "u-0", 5_000, &p.ann_code).await?;
    quote_when(&p.ann, &p.program, |q| q["payable_minor"] == 1000).await?;
    run_through(&p, fake, "/v1/payment_intents", FaultKind::ErrorAfterCommit).await?;
    let intents = fake.payment_intents();
    assert_eq!(intents.len(), 1, "exactly one charge: {intents:?}");
    assert_eq!(fake.charges().len(), 1);
    let transfers = fake.transfers();
    assert_eq!(transfers.len(), 1, "exactly one transfer set");
    assert_eq!(transfers[0]["source_transaction"], intents[0]["latest_charge"]);

    // 1. Stripe commits the transfer, then answers 500 (and replays that 500 for the key).
    report(&p.owner, &p.program, "u-1", 10_000, &p.ann_code).await?;
    quote_when(&p.ann, &p.program, |q| q["payable_minor"] == 2000).await?;
    // Paid once the transfer is found by its group (by the run itself, or by the
    // transfer.created webhook if that got to the item first).
    run_through(&p, fake, "/v1/transfers", FaultKind::ErrorAfterCommit).await?;
    assert_eq!(fake.transfers().len(), 2);

    // 2. Stripe commits, then answers after the client gave up.
    report(&p.owner, &p.program, "u-2", 5_000, &p.ann_code).await?;
    quote_when(&p.ann, &p.program, |q| q["payable_minor"] == 1000).await?;
    let item_id = run_through(&p, fake, "/v1/transfers", FaultKind::Timeout(Duration::from_secs(3))).await?;
    let for_item: Vec<Value> = fake
        .transfers()
        .into_iter()
        .filter(|t| t["metadata"]["payout_item_id"] == item_id.as_str())
        .collect();
    assert_eq!(for_item.len(), 1, "never sent again under a new key");
    assert_eq!(fake.transfers().len(), 3);
    assert_eq!(fake.payment_intents().len(), 3, "one charge per run");
    let balance = p
        .ann
        .mcp
        .ok("amba_affiliate_my_balance_get", json!({"program_id": p.program}))
        .await?;
    assert_eq!(
        (balance["paid_minor"].as_i64(), balance["reserved_minor"].as_i64()),
        (Some(4000), Some(0))
    );

    // Reconciliation: Stripe and the records agree; a lost local update (the item still marked
    // unknown although its transfer exists) is reported, and --repair settles it.
    let (ok, out) = reconcile(&sys, &p.program, false).await?;
    assert!(
        ok && out.contains("3 item(s) compared") && out.contains("0 difference(s)"),
        "{out}"
    );
    let pool = sys.service_pool("payout").await?;
    sqlx::query("UPDATE payout_items SET status = 'unknown' WHERE payout_item_id = $1")
        .bind(&item_id)
        .execute(&pool)
        .await?;
    let (ok, out) = reconcile(&sys, &p.program, false).await?;
    assert!(!ok && out.contains(&item_id) && out.contains("--repair"), "{out}");
    let (ok, out) = reconcile(&sys, &p.program, true).await?;
    assert!(ok && out.contains("1 repaired"), "{out}");
    let status: String = sqlx::query_scalar("SELECT status FROM payout_items WHERE payout_item_id = $1")
        .bind(&item_id)
        .fetch_one(&pool)
        .await?;
    assert_eq!(status, "paid");
    pool.close().await;
    assert_eq!(fake.transfers().len(), 3, "reconciling moved no money");
    verify_ledger(&sys)?;
    sys.stop().await
}

#[tokio::test]
async fn a_refund_after_a_reversed_payout_leaves_no_debt_and_foreign_transfers_change_nothing() -> anyhow::Result<()> {
    let sys = TestSystem::with_stripe(&[("ORG_PAYOUTS_LIVE", "true")]).await?;
    let p = program(&sys, json!({"hold_days": 0, "platform_fee_bps": 500})).await?;
    onboard(&sys, &p.ann).await?;
    enable_payouts(&sys, &p.owner, &[])?;
    fund(&sys, &p.owner, &p.program, "visa", "4242").await?;
    report_when_ready(&p.owner, &p.program, "rv-1", 20_000, &p.ann_code).await?;
    quote_when(&p.ann, &p.program, |q| q["payable_minor"] == 4000).await?;
    let run = p
        .owner
        .mcp
        .ok("amba_affiliate_payout_run", json!({"program_id": p.program}))
        .await?;
    let item = item_of(&items(&run), &p.ann)?.clone();
    assert_eq!(
        (item["status"].as_str(), item["net_minor"].as_i64()),
        (Some("paid"), Some(3800)),
        "{run}"
    );
    let fake = stripe(&sys)?;

    // A transfer Stripe has that claims the item but does not match it (another amount): its
    // events are checked against Stripe's copy and change nothing.
    let before = scrape_mismatches(&sys).await?;
    let forged = reqwest::Client::new()
        .post(format!("{}/v1/transfers", fake.base_url()))
        .bearer_auth(
            sys.settings
                .stripe_secret_key
                .as_ref()
                .map(|k| k.expose())
                .unwrap_or_default(),
        )
        .form(&[
            ("amount", "1"),
            ("currency", "usd"),
            ("destination", text(&fake.accounts()[0]["id"])),
            ("transfer_group", text(&run["payout_run_id"])),
            ("metadata[payout_item_id]", text(&item["payout_item_id"])),
        ])
        .send()
        .await?
        .json::<Value>()
        .await?;
    fake.reverse_transfer(text(&forged["id"]), 1).await?;
    eventually(WAIT, "both events of the foreign transfer refused", || async {
        Ok((scrape_mismatches(&sys).await? >= before + 2.0).then_some(()))
    })
    .await?;
    assert_eq!(ann_balance(&p).await?, (0, 0, 3800), "nothing changed");

    // The real transfer is reversed in full (3,800 back), then the sale is refunded: the
    // reversal already undid the whole commission, fee included, so the clawback changes nothing.
    fake.reverse_transfer(text(&item["stripe_transfer_id"]), 3800).await?;
    eventually(WAIT, "the reversal booked", || async {
        Ok((ann_balance(&p).await? == (0, 0, 0)).then_some(()))
    })
    .await?;
    let conversions = p
        .owner
        .mcp
        .ok("amba_affiliate_conversions_list", json!({"program_id": p.program}))
        .await?;
    let conversion_id = text(&conversions["conversions"][0]["conversion_id"]).to_owned();
    let clawed = p
        .owner
        .mcp
        .ok(
            "amba_affiliate_conversion_clawback",
            json!({"conversion_id": conversion_id, "reason": "refund", "idempotency_key": "rv-refund"}),
        )
        .await?;
    assert_eq!(
        (
            clawed["reversed_minor"].as_i64(),
            clawed["carry_forward_minor"].as_i64()
        ),
        (Some(0), Some(0)),
        "{clawed}"
    );
    let quote = quote_when(&p.ann, &p.program, |q| q["debt_minor"] == 0).await?;
    assert_eq!(quote["payable_minor"], 0);
    assert_eq!(ann_balance(&p).await?, (0, 0, 0));
    verify_ledger(&sys)?;
    sys.stop().await
}

#[tokio::test]
async fn held_money_says_when_and_a_run_with_nothing_to_pay_records_nothing() -> anyhow::Result<()> {
    let sys = TestSystem::with_stripe(&[("ORG_PAYOUTS_LIVE", "true")]).await?;
    let p = program_of(
        &sys,
        "Held",
        json!({"hold_days": 30, "platform_fee_bps": 250, "payout_threshold_minor": 1000}),
    )
    .await?;
    onboard(&sys, &p.ann).await?;
    // Ann earns 980 and 2,000, Bob 1,000 (no payout account): all held for 30 days. The owner
    // releases Ann's 980 early: payable, but below the threshold of 1,000.
    let small = report_when_ready(&p.owner, &p.program, "h-1", 4_900, &p.ann_code).await?;
    let big = report(&p.owner, &p.program, "h-2", 10_000, &p.ann_code).await?;
    report_when_ready(&p.owner, &p.program, "h-3", 5_000, &p.bob_code).await?;
    quote_when(&p.ann, &p.program, |q| q["held_minor"] == 2980).await?;
    quote_when(&p.bob, &p.program, |q| q["held_minor"] == 1000).await?;
    let release = |conversion: &Value, key: &str| {
        p.owner.mcp.ok(
            "amba_affiliate_commission_release",
            json!({"program_id": p.program, "conversion_id": conversion["conversion_id"],
                   "reason": "delivered", "idempotency_key": key}),
        )
    };
    release(&small, "rel-small").await?;

    // The affiliate is told the threshold, what is missing, and when (and how much) held money
    // becomes payable; the next run would send nothing.
    let ann = quote_when(&p.ann, &p.program, |q| q["payable_minor"] == 980).await?;
    let ann_program = &ann["programs"][0];
    assert_eq!(
        (
            text(&ann_program["reason_code"]),
            ann_program["net_minor"].as_i64(),
            ann_program["fee_minor"].as_i64(),
            ann_program["missing_minor"].as_i64(),
            ann_program["next_release_minor"].as_i64(),
            ann["net_minor"].as_i64(),
        ),
        ("below_threshold", Some(0), Some(0), Some(20), Some(2000), Some(0)),
        "{ann}"
    );
    let blocked = text(&ann_program["blocked_reason"]);
    assert!(
        blocked.contains("below the program's payout threshold of 1000: 20 more needed"),
        "{ann}"
    );
    assert!(about_days_ahead(&ann_program["next_release_at"], 30), "{ann}");
    assert!(about_days_ahead(&ann_program["payable_at"], 30), "{ann}");
    assert!(
        blocked.contains(&text(&ann_program["payable_at"])[..10]),
        "the date is in the text: {ann}"
    );
    assert_eq!(ann["payable_at"], ann_program["payable_at"]);
    assert_eq!(ann["next_release_at"], ann_program["next_release_at"]);
    let bob = quote_when(&p.bob, &p.program, |q| q["held_minor"] == 1000).await?;
    let bob_program = &bob["programs"][0];
    assert_eq!(
        (
            text(&bob_program["reason_code"]),
            bob_program["net_minor"].as_i64(),
            bob_program["next_release_minor"].as_i64()
        ),
        ("held", Some(0), Some(1000)),
        "{bob}"
    );
    let blocked = text(&bob_program["blocked_reason"]);
    assert!(
        blocked.contains("held") && blocked.contains(&text(&bob_program["next_release_at"])[..10]),
        "held until a date: {bob}"
    );
    assert!(about_days_ahead(&bob_program["payable_at"], 30), "{bob}");

    // The dry run lists both, why neither is paid, from when, and that it would pay nothing.
    let plan = |dry_run: bool, key: &str| {
        p.owner.mcp.ok(
            "amba_affiliate_payout_run",
            json!({"program_id": p.program, "dry_run": dry_run, "idempotency_key": key}),
        )
    };
    let dry = plan(true, "dry").await?;
    assert_eq!(
        (
            text(&dry["outcome"]),
            dry["threshold_minor"].as_i64(),
            dry["funding_required_minor"].as_i64(),
            dry["items_total"].as_i64()
        ),
        ("nothing_to_pay", Some(1000), Some(0), Some(2)),
        "{dry}"
    );
    let dry_items = items(&dry);
    let ann_plan = item_of(&dry_items, &p.ann)?;
    assert_eq!(
        (
            text(&ann_plan["status"]),
            text(&ann_plan["reason_code"]),
            ann_plan["gross_minor"].as_i64(),
            ann_plan["net_minor"].as_i64(),
            ann_plan["payable_minor"].as_i64(),
            ann_plan["held_minor"].as_i64(),
        ),
        ("skipped", "below_threshold", Some(0), Some(0), Some(980), Some(2000)),
        "net_minor is what the run would pay: {dry}"
    );
    assert!(text(&ann_plan["reason"]).contains("threshold of 1000"), "{dry}");
    assert_eq!(ann_plan["payable_at"], ann_program["payable_at"]);
    let bob_plan = item_of(&dry_items, &p.bob)?;
    assert_eq!(
        (
            text(&bob_plan["reason_code"]),
            bob_plan["net_minor"].as_i64(),
            bob_plan["held_minor"].as_i64(),
            bob_plan["payable_minor"].as_i64()
        ),
        ("held", Some(0), Some(1000), Some(0)),
        "an affiliate whose money is all held is listed: {dry}"
    );
    assert!(text(&bob_plan["reason"]).contains("no payout account yet"), "{dry}");
    assert!(about_days_ahead(&bob_plan["payable_at"], 30), "{dry}");
    let earliest = [&ann_plan["payable_at"], &bob_plan["payable_at"]]
        .into_iter()
        .map(|v| text(v).to_owned())
        .min();
    assert_eq!(Some(text(&dry["next_payable_at"]).to_owned()), earliest, "{dry}");

    // A live run with nothing to pay: an answer, not an error; no run is stored, nothing charged.
    enable_payouts(&sys, &p.owner, &[])?;
    let live = plan(false, "nothing-yet").await?;
    assert_eq!(
        (
            text(&live["outcome"]),
            live["dry_run"].as_bool(),
            text(&live["payout_run_id"]),
            text(&live["funding"]["status"]),
            live["funding_required_minor"].as_i64()
        ),
        ("nothing_to_pay", Some(false), "", "not_needed", Some(0)),
        "{live}"
    );
    assert_eq!(
        item_of(&items(&live), &p.bob)?["reason_code"],
        "held",
        "the reasons come with it: {live}"
    );
    assert!(runs_of(&p).await?.is_empty(), "no empty run is recorded");
    assert!(stripe(&sys)?.payment_intents().is_empty());

    // Once Ann's 2,000 is released too she would be paid; Bob still waits.
    release(&big, "rel-big").await?;
    quote_when(&p.ann, &p.program, |q| q["payable_minor"] == 2980).await?;
    let dry = plan(true, "dry-2").await?;
    assert_eq!(text(&dry["outcome"]), "planned", "{dry}");
    let ann_plan = item_of(&items(&dry), &p.ann)?.clone();
    // 2.5 % of 2,980 = 74.5, half-even 74.
    assert_eq!(
        (
            text(&ann_plan["status"]),
            text(&ann_plan["reason_code"]),
            text(&ann_plan["reason"]),
            ann_plan["gross_minor"].as_i64(),
            ann_plan["fee_minor"].as_i64(),
            ann_plan["net_minor"].as_i64(),
        ),
        (
            "planned",
            "will_be_paid",
            "will be paid",
            Some(2980),
            Some(74),
            Some(2906)
        ),
        "{dry}"
    );
    assert_eq!(ann_plan["payable_at"], Value::Null, "payable now: {dry}");
    assert_eq!(item_of(&items(&dry), &p.bob)?["reason_code"], "held");
    assert_eq!(dry["funding_required_minor"], 2980);

    // The live run pays exactly that, and is recorded with Bob's skipped item and its reason.
    fund(&sys, &p.owner, &p.program, "visa", "4242").await?;
    let run = plan(false, "paid").await?;
    assert_eq!(text(&run["outcome"]), "recorded", "{run}");
    let run_items = items(&run);
    let ann_paid = item_of(&run_items, &p.ann)?;
    assert_eq!(ann_paid["status"], "paid", "{run}");
    for field in ["gross_minor", "fee_minor", "net_minor", "debt_minor"] {
        assert_eq!(
            ann_paid[field], ann_plan[field],
            "{field}: the dry run equals the live run"
        );
    }
    let bob_item = item_of(&run_items, &p.bob)?;
    assert_eq!(
        (
            text(&bob_item["status"]),
            bob_item["gross_minor"].as_i64(),
            bob_item["net_minor"].as_i64()
        ),
        ("skipped", Some(0), Some(0)),
        "{run}"
    );
    assert!(text(&bob_item["reason"]).contains("held"), "{run}");
    assert!(
        bob_item.get("reason_code").is_none() && run.get("threshold_minor").is_none(),
        "a recorded run shows what was stored, not a plan: {run}"
    );
    assert_eq!(stripe(&sys)?.transfers().len(), 1);
    assert_eq!(runs_of(&p).await?.len(), 1);
    verify_ledger(&sys)?;
    sys.stop().await
}

#[tokio::test]
async fn hold_days_is_described_as_applying_to_new_commissions_only() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let owner = org(&sys, "HoldDocs").await?;
    let tools = owner.mcp.tools().await?;
    for name in ["amba_affiliate_programs_create", "amba_affiliate_programs_update"] {
        let tool = tools
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| anyhow::anyhow!("no {name}"))?;
        let hold = tool.input_schema.get("properties").and_then(|p| p.get("hold_days"));
        let hold = hold
            .and_then(|h| h.get("description"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            hold.contains("new commissions only") && hold.contains("keeps its release date"),
            "{name}: {hold}"
        );
        assert!(
            tool.description
                .as_deref()
                .unwrap_or_default()
                .contains("new commissions only"),
            "{name}"
        );
    }
    let run = tools
        .iter()
        .find(|t| t.name == "amba_affiliate_payout_run")
        .and_then(|t| t.output_schema.clone())
        .ok_or_else(|| anyhow::anyhow!("no output schema"))?;
    let props = run.get("properties").cloned().unwrap_or_default();
    for field in ["outcome", "threshold_minor", "next_payable_at"] {
        assert!(props.get(field).is_some(), "{field} in {props}");
    }
    // A recorded run has no plan fields: they must not be required.
    let required = run.get("required").cloned().unwrap_or_default();
    assert!(
        required.as_array().is_some_and(|r| r.contains(&json!("outcome"))
            && !r.contains(&json!("threshold_minor"))
            && !r.contains(&json!("next_payable_at"))),
        "{required}"
    );
    sys.stop().await
}
