//! Payouts through Stripe Connect, end to end through MCP against the in-project fake Stripe:
//! onboarding and readiness by webhook, owner funding (Checkout setup, the run's charge, declines),
//! per-org enablement and caps, dry runs, runs, the preview gate, unknown outcomes, clawback
//! netting, transfer reversals (checked against Stripe), schedules and ticks, and webhook
//! signatures. `amba ledger verify` after each scenario.

use crate::support::{Org, active_program, enroll, org, text};
use crate::system::TestSystem;
use amba_proto::wire as pb;
use amba_stripe_fake::{FakeStripe, Fault, FaultKind};
use amba_testkit::eventually;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn stripe(sys: &TestSystem) -> anyhow::Result<&FakeStripe> {
    sys.stripe.as_ref().ok_or_else(|| anyhow::anyhow!("no fake Stripe"))
}

/// `amba payouts reconcile <program> [--repair]` against this system: (success, output).
/// Async: the fake Stripe runs on this test's runtime and must keep answering meanwhile.
async fn reconcile(sys: &TestSystem, program: &str, repair: bool) -> anyhow::Result<(bool, String)> {
    let stripe = stripe(sys)?;
    let mut args = vec!["payouts", "reconcile", program];
    if repair {
        args.push("--repair");
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_amba"))
        .args(&args)
        .env("AMBA_DATABASE_URL", &sys.db.url)
        .env("AMBA_NATS_URL", amba_testkit::nats_url())
        .env("AMBA_NAMESPACE", sys.bus.ns.as_str())
        .env("AMBA_STRIPE_API_BASE", stripe.base_url())
        .env(
            "AMBA_STRIPE_SECRET_KEY",
            sys.settings
                .stripe_secret_key
                .as_ref()
                .map(|k| k.expose())
                .unwrap_or_default(),
        )
        .output()
        .await?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// `amba <args>` against this system's database: (success, stdout + stderr).
fn amba(sys: &TestSystem, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_amba"))
        .args(args)
        .env("AMBA_DATABASE_URL", &sys.db.url)
        .output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// The operator enables live payouts of `org` (`amba orgs payouts enable`), with `extra` flags.
pub fn enable_payouts(sys: &TestSystem, org: &Org, extra: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["orgs", "payouts", "enable", org.id.as_str(), "--by", "test-operator"];
    args.extend_from_slice(extra);
    let (ok, out) = amba(sys, &args)?;
    anyhow::ensure!(ok && out.contains("enabled by test-operator"), "{out}");
    Ok(out)
}

/// The owner saves a payment method through the Stripe Checkout link, as a person with a browser
/// would (`card` names one of the fake's test cards); readiness arrives by webhook, seen in the
/// dry run's funding.
pub async fn fund(sys: &TestSystem, owner: &Org, program: &str, card: &str, last4: &str) -> anyhow::Result<()> {
    let setup = owner
        .mcp
        .ok("amba_affiliate_program_funding_setup", json!({"program_id": program}))
        .await?;
    assert!(!text(&setup["expires_at"]).is_empty(), "{setup}");
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let page = browser
        .get(format!("{}?card={card}", text(&setup["url"])))
        .send()
        .await?;
    assert_eq!(page.status(), 302, "the setup completes and returns to the app");
    let back = page
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(back, format!("{}/funding/done", sys.settings.public_url));
    let page = reqwest::get(format!("{}/funding/done", sys.base_url())).await?;
    assert_eq!(page.status(), 200, "the return page exists");
    eventually(WAIT, "the payment method is saved", || async {
        let dry = owner
            .mcp
            .ok(
                "amba_affiliate_payout_run",
                json!({"program_id": program, "dry_run": true}),
            )
            .await?;
        Ok((dry["funding"]["status"] == "ready" && dry["funding"]["card_last4"] == last4).then_some(()))
    })
    .await?;
    Ok(())
}

fn verify_ledger(sys: &TestSystem) -> anyhow::Result<()> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_amba"))
        .args(["ledger", "verify"])
        .env("AMBA_DATABASE_URL", &sys.db.url)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ledger verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The affiliate creates its payout account and finishes onboarding through the link, as a
/// person with a browser would; readiness arrives by webhook.
pub async fn onboard(sys: &TestSystem, affiliate: &Org) -> anyhow::Result<()> {
    let created = affiliate
        .mcp
        .ok("amba_affiliate_my_payout_create", json!({"country": "US"}))
        .await?;
    assert_eq!(created["status"], "onboarding");
    assert_eq!(created["created"], true);
    let again = affiliate.mcp.ok("amba_affiliate_my_payout_create", json!({})).await?;
    assert_eq!(again["created"], false);
    assert_eq!(again["payout_account_id"], created["payout_account_id"]);
    assert_eq!(
        stripe(sys)?
            .accounts()
            .iter()
            .filter(|a| a["metadata"]["org_id"] == affiliate.id.as_str())
            .count(),
        1,
        "one Stripe account, however often it is asked for"
    );
    let link = affiliate
        .mcp
        .ok(
            "amba_affiliate_my_payout_onboarding",
            json!({"return_url": "https://aff.example/done", "refresh_url": "https://aff.example/retry"}),
        )
        .await?;
    assert!(!text(&link["expires_at"]).is_empty());
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let page = browser.get(text(&link["url"])).send().await?;
    assert_eq!(page.status(), 302, "onboarding completes and returns to the app");
    eventually(WAIT, "the payout account is ready", || async {
        let quote = affiliate.mcp.ok("amba_affiliate_my_payout_request", json!({})).await?;
        Ok((quote["account_ready"] == true).then_some(()))
    })
    .await?;
    Ok(())
}

async fn report(owner: &Org, program: &str, external_id: &str, amount_minor: i64, code: &str) -> anyhow::Result<Value> {
    owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            json!({"program_id": program, "project_id": "shop", "external_id": external_id,
                   "amount_minor": amount_minor, "currency": "USD", "code": code}),
        )
        .await
}

/// The affiliate's payout quote once `done` holds.
async fn quote_when(affiliate: &Org, program: &str, done: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let last = std::sync::Mutex::new(Value::Null);
    let found = eventually(WAIT, "the affiliate's payout quote", || async {
        let quote = affiliate
            .mcp
            .ok("amba_affiliate_my_payout_request", json!({"program_id": program}))
            .await?;
        if let Ok(mut last) = last.lock() {
            *last = quote.clone();
        }
        Ok(done(&quote).then_some(quote))
    })
    .await;
    found.map_err(|e| {
        anyhow::anyhow!(
            "{e}; last quote: {}",
            last.lock().map(|l| l.to_string()).unwrap_or_default()
        )
    })
}

/// Waits until the payout item shows as paid in the owner's payout list.
async fn paid_eventually(p: &Program, item_id: &str) -> anyhow::Result<()> {
    eventually(WAIT, "the payout item settles as paid", || async {
        let listed = p
            .owner
            .mcp
            .ok("amba_affiliate_payouts_list", json!({"program_id": p.program}))
            .await?;
        let status = listed["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["items"].as_array().cloned().unwrap_or_default())
            .find(|i| i["payout_item_id"] == item_id)
            .map(|i| text(&i["status"]).to_owned());
        Ok((status.as_deref() == Some("paid")).then_some(()))
    })
    .await
}

struct Program {
    owner: Org,
    ann: Org,
    bob: Org,
    program: String,
    ann_code: String,
    bob_code: String,
}

async fn program(sys: &TestSystem, settings: Value) -> anyhow::Result<Program> {
    program_of(sys, "Pay", settings).await
}

/// A program of new orgs `<tag>Owner`, `<tag>Ann` and `<tag>Bob`.
async fn program_of(sys: &TestSystem, tag: &str, settings: Value) -> anyhow::Result<Program> {
    let owner = org(sys, &format!("{tag}Owner")).await?;
    let ann = org(sys, &format!("{tag}Ann")).await?;
    let bob = org(sys, &format!("{tag}Bob")).await?;
    let program = active_program(&owner, settings).await?;
    let ann_code = text(&enroll(&owner, &ann, &program, None).await?["code"]).to_owned();
    let bob_code = text(&enroll(&owner, &bob, &program, None).await?["code"]).to_owned();
    // Reports need attribution's read model to know the codes: the first one retries until it does.
    Ok(Program {
        owner,
        ann,
        bob,
        program,
        ann_code,
        bob_code,
    })
}

async fn report_when_ready(
    owner: &Org,
    program: &str,
    external_id: &str,
    amount: i64,
    code: &str,
) -> anyhow::Result<Value> {
    eventually(WAIT, "the code is known to attribution", || async {
        Ok(report(owner, program, external_id, amount, code).await.ok())
    })
    .await
}

fn items(run: &Value) -> Vec<Value> {
    run["items"].as_array().cloned().unwrap_or_default()
}

fn item_of<'a>(items: &'a [Value], org: &Org) -> anyhow::Result<&'a Value> {
    items
        .iter()
        .find(|i| i["affiliate_org_id"] == org.id.as_str())
        .ok_or_else(|| anyhow::anyhow!("no item for {}", org.id))
}

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

/// A run with `kind` injected once on `path`, until Ann's item is paid; returns the item's id.
async fn run_through(p: &Program, fake: &FakeStripe, path: &str, kind: FaultKind) -> anyhow::Result<String> {
    fake.inject(Fault {
        path_prefix: path.into(),
        kind,
        times: 1,
    });
    let run = p
        .owner
        .mcp
        .ok("amba_affiliate_payout_run", json!({"program_id": p.program}))
        .await?;
    let item_id = text(&item_of(&items(&run), &p.ann)?["payout_item_id"]).to_owned();
    paid_eventually(p, &item_id).await?;
    Ok(item_id)
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

/// Ann's payable and reserved balance in the program.
async fn ann_balance(p: &Program) -> anyhow::Result<(i64, i64, i64)> {
    let b = p
        .ann
        .mcp
        .ok("amba_affiliate_my_balance_get", json!({"program_id": p.program}))
        .await?;
    Ok((
        b["payable_minor"].as_i64().unwrap_or(-1),
        b["reserved_minor"].as_i64().unwrap_or(-1),
        b["paid_minor"].as_i64().unwrap_or(-1),
    ))
}

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

async fn scrape_mismatches(sys: &TestSystem) -> anyhow::Result<f64> {
    let metrics = crate::attribution::scrape(sys).await?;
    Ok(crate::attribution::sample(
        &metrics,
        "amba_stripe_transfer_mismatches_total",
    ))
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

async fn tick(sys: &TestSystem, at: chrono::DateTime<chrono::Utc>) -> anyhow::Result<bool> {
    amba_payout::publish_tick(&sys.bus.js, &sys.bus.ns, at)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

async fn runs_of(p: &Program) -> anyhow::Result<Vec<Value>> {
    let listed = p
        .owner
        .mcp
        .ok("amba_affiliate_payouts_list", json!({"program_id": p.program}))
        .await?;
    Ok(listed["runs"].as_array().cloned().unwrap_or_default())
}

/// The `payout.run_completed` events of a run on JetStream.
async fn run_completed(sys: &TestSystem, run_id: &str) -> anyhow::Result<Vec<pb::PayoutRunChanged>> {
    use amba_proto::Message;
    use futures::StreamExt;
    let stream = sys.bus.js.get_stream(sys.bus.ns.events_stream("payout")).await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: sys.bus.ns.event("payout", "run_completed"),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .fetch()
        .max_messages(100)
        .expires(Duration::from_millis(500))
        .messages()
        .await?;
    let mut found = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        let event = pb::PayoutRunChanged::decode(message.payload.clone())?;
        if event.run.as_ref().is_some_and(|r| r.payout_run_id == run_id) {
            found.push(event);
        }
    }
    Ok(found)
}

/// The summary of a run's one `payout.run_completed` event (to `owner`), once it is published.
async fn run_summary(sys: &TestSystem, owner: &Org, run_id: &str) -> anyhow::Result<pb::PayoutRunSummary> {
    let events = eventually(WAIT, "payout.run_completed", || async {
        let events = run_completed(sys, run_id).await?;
        Ok((!events.is_empty()).then_some(events))
    })
    .await?;
    assert_eq!(events.len(), 1, "one payout.run_completed per run: {events:?}");
    let event = &events[0];
    let run = event.run.clone().unwrap_or_default();
    assert!(
        run.items.is_empty() && run.funding.is_some_and(|f| f.status == "succeeded"),
        "{event:?}"
    );
    assert!(
        event.owner_org_id == owner.id && !event.program_name.is_empty(),
        "{event:?}"
    );
    event
        .summary
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no summary: {event:?}"))
}

#[tokio::test]
async fn a_schedule_settles_once_per_period_however_many_ticks() -> anyhow::Result<()> {
    let sys = TestSystem::with_stripe(&[("ORG_PAYOUTS_LIVE", "true")]).await?;
    let p = program(&sys, json!({"hold_days": 0, "payout_schedule": "weekly"})).await?;
    onboard(&sys, &p.ann).await?;
    enable_payouts(&sys, &p.owner, &[])?;
    fund(&sys, &p.owner, &p.program, "visa", "4242").await?;
    report_when_ready(&p.owner, &p.program, "s-1", 10_000, &p.ann_code).await?;
    quote_when(&p.ann, &p.program, |q| {
        q["payable_minor"] == 2000 && q["next_scheduled_at"] != ""
    })
    .await?;
    let now = chrono::Utc::now();
    assert!(tick(&sys, now).await?);
    assert!(!tick(&sys, now).await?, "the same tick published twice is stored once");
    eventually(WAIT, "the scheduled run paid Ann", || async {
        Ok((stripe(&sys)?.transfers().len() == 1).then_some(()))
    })
    .await?;
    // A tick of the same period (the next day of the same week, or another replica's clock)
    // settles nothing twice.
    report(&p.owner, &p.program, "s-2", 10_000, &p.ann_code).await?;
    quote_when(&p.ann, &p.program, |q| q["payable_minor"] == 2000).await?;
    let same_week = if now.format("%u").to_string() == "7" {
        now - chrono::Duration::days(1)
    } else {
        now + chrono::Duration::days(1)
    };
    tick(&sys, same_week).await?;

    // A program created after the day's first tick, whose owner is enabled but funds it only
    // later that day: a tick before the funding creates nothing (and takes no period), the next
    // tick after it settles the program once, and later ticks nothing more.
    let late = program_of(&sys, "Late", json!({"hold_days": 0, "payout_schedule": "weekly"})).await?;
    onboard(&sys, &late.ann).await?;
    enable_payouts(&sys, &late.owner, &[])?;
    report_when_ready(&late.owner, &late.program, "l-1", 5_000, &late.ann_code).await?;
    quote_when(&late.ann, &late.program, |q| q["payable_minor"] == 1000).await?;
    assert!(
        tick(&sys, chrono::Utc::now()).await?,
        "a later tick the same day is a new tick"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(runs_of(&late).await?.is_empty(), "unfunded: nothing created");
    fund(&sys, &late.owner, &late.program, "visa", "4242").await?;
    assert!(tick(&sys, chrono::Utc::now()).await?);
    eventually(WAIT, "the late program's scheduled run paid its affiliate", || async {
        let runs = runs_of(&late).await?;
        Ok((runs.len() == 1 && runs[0]["items"][0]["status"] == "paid").then_some(()))
    })
    .await?;
    tick(&sys, chrono::Utc::now()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(runs_of(&late).await?.len(), 1, "once per program and period");
    assert_eq!(
        stripe(&sys)?.transfers().len(),
        2,
        "one settlement per program per period: the first program once, the late one once"
    );
    let runs = runs_of(&p).await?;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["trigger"], "schedule");
    assert!(text(&runs[0]["period"]).contains("-W"));
    assert_eq!(
        stripe(&sys)?.payment_intents().len(),
        2,
        "each scheduled run charged its owner"
    );
    verify_ledger(&sys)?;
    sys.stop().await
}

#[tokio::test]
async fn bad_stale_and_unsigned_webhooks_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let sys = TestSystem::with_stripe(&[]).await?;
    let fake = stripe(&sys)?;
    let body = json!({"id": "evt_forged_1", "object": "event", "type": "account.updated",
                      "data": {"object": {"id": "acct_forged", "capabilities": {"transfers": "active"}}}})
    .to_string();
    let now = chrono::Utc::now().timestamp();
    assert_eq!(fake.deliver_raw(&body, None).await?, 400, "unsigned");
    let wrong = format!("t={now},v1={}", "0".repeat(64));
    assert_eq!(fake.deliver_raw(&body, Some(&wrong)).await?, 400, "bad signature");
    let stale = fake.sign(&body, now - 301);
    assert_eq!(fake.deliver_raw(&body, Some(&stale)).await?, 400, "stale");
    let tampered = fake.sign(&body, now);
    assert_eq!(
        fake.deliver_raw(&body.replace("acct_forged", "acct_other"), Some(&tampered))
            .await?,
        400,
        "signed for another body"
    );
    let good = fake.sign(&body, now);
    assert_eq!(
        fake.deliver_raw(&body, Some(&good)).await?,
        200,
        "a valid one is accepted"
    );
    let pool = sys.service_pool("payout").await?;
    eventually(WAIT, "the valid event applied", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events")
            .fetch_one(&pool)
            .await?;
        Ok((n == 1).then_some(()))
    })
    .await?;
    pool.close().await;
    sys.stop().await
}

/// An RFC 3339 time about `days` from now (within a day: commission is held from its approval).
fn about_days_ahead(value: &Value, days: i64) -> bool {
    let Ok(at) = chrono::DateTime::parse_from_rfc3339(text(value)) else {
        return false;
    };
    let ahead = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    (ahead - chrono::Duration::days(days)).num_hours().abs() < 24
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
