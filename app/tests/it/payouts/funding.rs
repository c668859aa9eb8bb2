//! The owner's charge: who may be paid, what is charged, what is refunded, the preview gate.

use super::*;

#[tokio::test]
async fn nothing_moves_unless_the_owner_is_enabled_funded_and_charged() -> anyhow::Result<()> {
    let sink = amba_testkit::SmtpSink::start().await?;
    let sys = TestSystem::with_stripe(&[("ORG_PAYOUTS_LIVE", "true"), ("AMBA_SMTP_URL", &sink.url())]).await?;
    let p = program(&sys, json!({"hold_days": 0, "platform_fee_bps": 500})).await?;
    onboard(&sys, &p.ann).await?;
    report_when_ready(&p.owner, &p.program, "f-1", 20_000, &p.ann_code).await?;
    quote_when(&p.ann, &p.program, |q| q["payable_minor"] == 4000).await?;
    let fake = stripe(&sys)?;
    let run = |key: &'static str| {
        p.owner.mcp.ok(
            "amba_affiliate_payout_run",
            json!({"program_id": p.program, "idempotency_key": key}),
        )
    };

    // The platform switch is on, the org's is not: refused exactly like the platform gate.
    let err = p
        .owner
        .mcp
        .err("amba_affiliate_payout_run", json!({"program_id": p.program}))
        .await?;
    assert_eq!(
        (err["code"].as_str(), err["status"].as_i64()),
        (Some("PAYOUTS_NOT_ENABLED"), Some(503))
    );
    enable_payouts(&sys, &p.owner, &[])?;

    // Enabled, but no payment method saved: FUNDING_REQUIRED naming the tool; the dry run says
    // what would be charged (the gross, fee included) and per item fee and net.
    let err = p
        .owner
        .mcp
        .err("amba_affiliate_payout_run", json!({"program_id": p.program}))
        .await?;
    assert_eq!(
        (err["code"].as_str(), err["status"].as_i64()),
        (Some("FUNDING_REQUIRED"), Some(402))
    );
    assert!(
        text(&err["message"]).contains("amba_affiliate_program_funding_setup"),
        "{err}"
    );
    assert_eq!(err["details"]["funding_required_minor"], 4000);
    let dry = p
        .owner
        .mcp
        .ok(
            "amba_affiliate_payout_run",
            json!({"program_id": p.program, "dry_run": true}),
        )
        .await?;
    assert_eq!(
        (
            dry["funding_required_minor"].as_i64(),
            dry["funding"]["status"].as_str()
        ),
        (Some(4000), Some("required"))
    );
    let plan = item_of(&items(&dry), &p.ann)?.clone();
    assert_eq!(
        (plan["fee_minor"].as_i64(), plan["net_minor"].as_i64()),
        (Some(200), Some(3800))
    );
    assert!(fake.payment_intents().is_empty() && fake.transfers().is_empty());
    assert_eq!(ann_balance(&p).await?, (4000, 0, 0), "nothing reserved");
    // Only the program's owner sets up its funding.
    let err = p
        .ann
        .mcp
        .err("amba_affiliate_program_funding_setup", json!({"program_id": p.program}))
        .await?;
    assert_eq!(err["code"], "FORBIDDEN");
    let err = p
        .owner
        .mcp
        .err(
            "amba_affiliate_program_funding_setup",
            json!({"program_id": p.program, "success_url": "javascript:alert(1)"}),
        )
        .await?;
    assert_eq!(err["code"], "INVALID_ARGUMENT");
    assert!(fake.customers().is_empty(), "refused calls create nothing at Stripe");

    // A declined card: the charge fails, nothing is transferred, every reservation is returned,
    // the run says why, and the owner is e-mailed.
    fund(&sys, &p.owner, &p.program, "declined", "0002").await?;
    let declined = run("declined").await?;
    assert_eq!(declined["funding"]["status"], "failed", "{declined}");
    assert_eq!(declined["funding"]["code"], "FUNDING_FAILED");
    assert_eq!(declined["funding"]["decline_code"], "generic_decline");
    let item = item_of(&items(&declined), &p.ann)?.clone();
    assert_eq!(item["status"], "failed");
    assert!(text(&item["reason"]).contains("FUNDING_FAILED"), "{item}");
    assert!(fake.transfers().is_empty(), "a failed charge moves nothing");
    assert_eq!(ann_balance(&p).await?, (4000, 0, 0), "the commission stays payable");
    let owner_mail = eventually(WAIT, "the owner's e-mail about the declined payment", || async {
        Ok(sink
            .received()
            .into_iter()
            .find(|m| m.header("Subject").is_some_and(|s| s.contains("was declined"))))
    })
    .await?;
    assert_eq!(owner_mail.to, ["payowner@example.com".to_owned()]);
    assert!(
        owner_mail.body().contains("amba_affiliate_program_funding_setup"),
        "{}",
        owner_mail.data
    );
    assert!(
        !sink
            .received()
            .iter()
            .any(|m| m.to.contains(&"payann@example.com".to_owned())
                && m.header("Subject").is_some_and(|s| s.contains("failed"))),
        "the owner's card is not the affiliate's business"
    );
    verify_ledger(&sys)?;

    // A card that needs the owner present cannot be charged off-session: nothing moves either.
    fund(&sys, &p.owner, &p.program, "authentication_required", "3184").await?;
    let auth = run("auth").await?;
    assert_eq!(auth["funding"]["decline_code"], "authentication_required", "{auth}");
    assert!(fake.transfers().is_empty());
    assert_eq!(ann_balance(&p).await?, (4000, 0, 0));

    // A per-run cap below the charge refuses the run before anything is reserved.
    fund(&sys, &p.owner, &p.program, "visa", "4242").await?;
    enable_payouts(&sys, &p.owner, &["--cap-per-run", "3999"])?;
    let err = p
        .owner
        .mcp
        .err("amba_affiliate_payout_run", json!({"program_id": p.program}))
        .await?;
    assert_eq!(
        (err["code"].as_str(), err["details"]["cap_per_run_minor"].as_i64()),
        (Some("PAYOUT_CAP_EXCEEDED"), Some(3999))
    );

    // Funded and within the caps: one charge of the gross, then the transfer from it.
    enable_payouts(&sys, &p.owner, &["--cap-per-run", "4000", "--cap-per-day", "4000"])?;
    let paid = run("paid").await?;
    assert_eq!(paid["funding"]["status"], "succeeded", "{paid}");
    assert_eq!(item_of(&items(&paid), &p.ann)?["status"], "paid");
    let succeeded: Vec<Value> = fake
        .payment_intents()
        .into_iter()
        .filter(|pi| pi["status"] == "succeeded")
        .collect();
    assert_eq!(succeeded.len(), 1);
    assert_eq!(succeeded[0]["amount"], 4000);
    let transfers = fake.transfers();
    assert_eq!(transfers.len(), 1);
    assert_eq!(
        (transfers[0]["amount"].as_i64(), &transfers[0]["source_transaction"]),
        (Some(3800), &paid["funding"]["charge_id"])
    );
    assert_eq!(ann_balance(&p).await?, (0, 0, 3800));

    // The day's cap is used up; then the operator disables the org.
    report(&p.owner, &p.program, "f-2", 5_000, &p.ann_code).await?;
    quote_when(&p.ann, &p.program, |q| q["payable_minor"] == 1000).await?;
    let err = p
        .owner
        .mcp
        .err("amba_affiliate_payout_run", json!({"program_id": p.program}))
        .await?;
    assert_eq!(
        (err["code"].as_str(), err["details"]["charged_today_minor"].as_i64()),
        (Some("PAYOUT_CAP_EXCEEDED"), Some(4000))
    );
    let (ok, out) = amba(
        &sys,
        &["orgs", "payouts", "disable", &p.owner.id, "--by", "test-operator"],
    )?;
    assert!(ok && out.contains("disabled by test-operator"), "{out}");
    let err = p
        .owner
        .mcp
        .err("amba_affiliate_payout_run", json!({"program_id": p.program}))
        .await?;
    assert_eq!(err["code"], "PAYOUTS_NOT_ENABLED");
    let (ok, listed) = amba(&sys, &["orgs", "list"])?;
    let line = listed.lines().find(|l| l.starts_with(&p.owner.id)).unwrap_or_default();
    assert!(
        ok && line.contains("disabled") && line.contains("test-operator") && line.contains("yes"),
        "{listed}"
    );
    assert_eq!(fake.transfers().len(), 1);
    verify_ledger(&sys)?;
    sys.stop().await
}

#[tokio::test]
async fn what_a_run_charged_but_could_not_pay_is_refunded_once() -> anyhow::Result<()> {
    let sys = TestSystem::with_stripe(&[("ORG_PAYOUTS_LIVE", "true")]).await?;
    let p = program(&sys, json!({"hold_days": 0, "payout_threshold_minor": 100})).await?;
    onboard(&sys, &p.ann).await?;
    onboard(&sys, &p.bob).await?;
    enable_payouts(&sys, &p.owner, &[])?;
    fund(&sys, &p.owner, &p.program, "visa", "4242").await?;
    report_when_ready(&p.owner, &p.program, "rf-1", 10_000, &p.ann_code).await?; // Ann 2,000
    report_when_ready(&p.owner, &p.program, "rf-2", 4_000, &p.bob_code).await?; // Bob 800
    quote_when(&p.ann, &p.program, |q| q["payable_minor"] == 2000).await?;
    quote_when(&p.bob, &p.program, |q| q["payable_minor"] == 800).await?;
    let fake = stripe(&sys)?;

    // The owner is charged 2,800; then Stripe refuses the first transfer outright.
    fake.inject(Fault {
        path_prefix: "/v1/transfers".into(),
        kind: FaultKind::Refused,
        times: 1,
    });
    let run = p
        .owner
        .mcp
        .ok(
            "amba_affiliate_payout_run",
            json!({"program_id": p.program, "idempotency_key": "rf"}),
        )
        .await?;
    assert_eq!(
        (
            run["funding"]["status"].as_str(),
            run["funding"]["amount_minor"].as_i64()
        ),
        (Some("succeeded"), Some(2800)),
        "{run}"
    );
    let refused: Vec<Value> = items(&run).into_iter().filter(|i| i["status"] == "failed").collect();
    assert_eq!(refused.len(), 1, "{run}");
    let refused_gross = refused[0]["gross_minor"].as_i64().unwrap_or_default();
    assert!(text(&refused[0]["reason"]).contains("Stripe refused"), "{run}");

    // Its gross goes back to the owner's card, once; the commission is payable again.
    let settled = eventually(WAIT, "the unused part refunded", || async {
        let runs = runs_of(&p).await?;
        let run = runs.iter().find(|r| r["idempotency_key"] == "rf").cloned();
        Ok(run.filter(|r| r["funding"]["refunded_minor"].as_i64() == Some(refused_gross)))
    })
    .await?;
    let refunds = fake.refunds();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0]["amount"].as_i64(), Some(refused_gross));
    assert_eq!(refunds[0]["charge"], settled["funding"]["charge_id"]);
    assert_eq!(refunds[0]["metadata"]["payout_run_id"], settled["payout_run_id"]);
    // The owner is told how the run ended, once: one paid, one refused and refunded.
    let paid = items(&run)
        .into_iter()
        .find(|i| i["status"] != "failed")
        .ok_or_else(|| anyhow::anyhow!("no paid item: {run}"))?;
    let summary = run_summary(&sys, &p.owner, text(&settled["payout_run_id"])).await?;
    assert_eq!(
        (
            (summary.paid_count, summary.paid_net_minor, summary.fee_minor),
            (summary.failed_count, summary.failed_gross_minor),
            (summary.charged_minor, summary.refunded_minor),
        ),
        (
            (
                1,
                paid["net_minor"].as_i64().unwrap_or(-1),
                paid["fee_minor"].as_i64().unwrap_or(-1)
            ),
            (1, refused_gross),
            (2800, refused_gross),
        ),
        "{summary:?}"
    );
    assert_eq!(summary.failure_reasons, [text(&refused[0]["reason"])], "{summary:?}");
    let unpaid = if refused[0]["affiliate_org_id"] == p.ann.id.as_str() {
        &p.ann
    } else {
        &p.bob
    };
    quote_when(unpaid, &p.program, |q| q["payable_minor"] == refused_gross).await?;

    // The next run charges exactly that commission again and pays it: each cent charged once net.
    let again = p
        .owner
        .mcp
        .ok(
            "amba_affiliate_payout_run",
            json!({"program_id": p.program, "idempotency_key": "rf-again"}),
        )
        .await?;
    assert_eq!(
        again["funding"]["amount_minor"].as_i64(),
        Some(refused_gross),
        "{again}"
    );
    assert!(items(&again).iter().all(|i| i["status"] != "failed"), "{again}");
    let summary = run_summary(&sys, &p.owner, text(&again["payout_run_id"])).await?;
    assert_eq!(
        (
            summary.paid_count,
            summary.failed_count,
            summary.charged_minor,
            summary.refunded_minor
        ),
        (1, 0, refused_gross, 0),
        "{summary:?}"
    );
    assert!(summary.failure_reasons.is_empty(), "{summary:?}");
    let charged: i64 = fake
        .payment_intents()
        .iter()
        .filter(|pi| pi["status"] == "succeeded")
        .map(|pi| pi["amount"].as_i64().unwrap_or_default())
        .sum();
    let refunded: i64 = fake
        .refunds()
        .iter()
        .map(|r| r["amount"].as_i64().unwrap_or_default())
        .sum();
    let transferred_gross = 2800;
    assert_eq!(
        charged - refunded,
        transferred_gross,
        "the owner paid each commission once"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fake.refunds().len(), 1, "a settled run is refunded once");
    assert_eq!(run_completed(&sys, text(&settled["payout_run_id"])).await?.len(), 1);
    verify_ledger(&sys)?;
    sys.stop().await
}

#[tokio::test]
async fn the_preview_gate_moves_nothing_and_dry_runs_still_work() -> anyhow::Result<()> {
    let sys = TestSystem::with_stripe(&[]).await?;
    let p = program(&sys, json!({"hold_days": 0})).await?;
    onboard(&sys, &p.ann).await?;
    report_when_ready(&p.owner, &p.program, "g-1", 10_000, &p.ann_code).await?;
    let quote = quote_when(&p.ann, &p.program, |q| q["payable_minor"] == 2000).await?;
    assert_eq!(quote["payouts_enabled"], false);
    let err = p
        .owner
        .mcp
        .err("amba_affiliate_payout_run", json!({"program_id": p.program}))
        .await?;
    assert_eq!(
        (err["code"].as_str(), err["status"].as_i64()),
        (Some("PAYOUTS_NOT_ENABLED"), Some(503))
    );
    let dry = p
        .owner
        .mcp
        .ok(
            "amba_affiliate_payout_run",
            json!({"program_id": p.program, "dry_run": true}),
        )
        .await?;
    assert_eq!(item_of(&items(&dry), &p.ann)?["net_minor"], 2000);
    assert!(stripe(&sys)?.transfers().is_empty());
    // Scheduled settlement is gated too.
    amba_payout::publish_tick(&sys.bus.js, &sys.bus.ns, chrono::Utc::now())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(stripe(&sys)?.transfers().is_empty());
    let listed = p
        .owner
        .mcp
        .ok("amba_affiliate_payouts_list", json!({"program_id": p.program}))
        .await?;
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(0));
    // Another org's program is not yours to pay.
    let err = p
        .ann
        .mcp
        .err(
            "amba_affiliate_payout_run",
            json!({"program_id": p.program, "dry_run": true}),
        )
        .await?;
    assert_eq!(err["code"], "FORBIDDEN");
    verify_ledger(&sys)?;
    sys.stop().await
}
