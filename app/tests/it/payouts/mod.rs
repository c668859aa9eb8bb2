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

mod funding;
mod runs;
mod settlement;

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

async fn scrape_mismatches(sys: &TestSystem) -> anyhow::Result<f64> {
    let metrics = crate::attribution::scrape(sys).await?;
    Ok(crate::attribution::sample(
        &metrics,
        "amba_stripe_transfer_mismatches_total",
    ))
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

/// An RFC 3339 time about `days` from now (within a day: commission is held from its approval).
fn about_days_ahead(value: &Value, days: i64) -> bool {
    let Ok(at) = chrono::DateTime::parse_from_rfc3339(text(value)) else {
        return false;
    };
    let ahead = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    (ahead - chrono::Duration::days(days)).num_hours().abs() < 24
}
