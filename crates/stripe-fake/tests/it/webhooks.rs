//! Delivery: retries, redelivery, Connect payout events, raw deliveries for signature tests.

use std::time::Duration;

use amba_stripe_fake::{FakeConfig, FakeError, FakeStripe};
use anyhow::{Context, Result};

use crate::support::{Fake, WEBHOOK_SECRET, unix_now};

#[tokio::test]
async fn deliveries_are_retried_until_the_receiver_accepts() -> Result<()> {
    let fake = Fake::start().await?;
    fake.hooks.fail_next.store(3, std::sync::atomic::Ordering::SeqCst);
    let acct = fake.onboarded_account().await?;
    // Refused three times (100 + 200 + 400 ms of backoff), accepted on the fourth attempt.
    let delivery = fake.hooks.next("account.updated").await?;
    assert_eq!(delivery.event["account"], acct.as_str());
    assert_eq!(fake.hooks.fail_next.load(std::sync::atomic::Ordering::SeqCst), 0);
    Ok(())
}

#[tokio::test]
async fn payouts_are_connect_events_and_redelivery_repeats_the_same_event() -> Result<()> {
    let fake = Fake::start().await?;
    let acct = fake.onboarded_account().await?;
    fake.hooks.next("account.updated").await?;

    let payout = fake.stripe.emit_payout(&acct, 4200, "USD", true).await?;
    assert_eq!(payout["status"], "paid");
    let paid = fake.hooks.next("payout.paid").await?;
    assert_eq!(paid.event["account"], acct.as_str());
    assert_eq!(paid.event["data"]["object"]["amount"], 4200);
    assert_eq!(paid.event["data"]["object"]["currency"], "usd");

    fake.stripe.emit_payout(&acct, 99, "usd", false).await?;
    let failed = fake.hooks.next("payout.failed").await?;
    assert_eq!(failed.event["account"], acct.as_str());
    assert_eq!(failed.event["data"]["object"]["status"], "failed");
    assert!(failed.event["data"]["object"]["failure_code"].is_string());

    let event_id = paid.event["id"].as_str().context("id")?;
    fake.stripe.redeliver(event_id).await?;
    let again = fake.hooks.next("payout.paid").await?;
    assert_eq!(again.event["id"], event_id);
    assert_eq!(again.body, paid.body, "byte-identical body");
    fake.hooks.quiet().await?;

    assert!(matches!(
        fake.stripe.emit_payout("acct_missing", 1, "usd", true).await,
        Err(FakeError::NotFound(_))
    ));
    let events = fake.stripe.events();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["account.updated", "payout.paid", "payout.failed"]);
    Ok(())
}

#[tokio::test]
async fn raw_deliveries_reach_the_receiver_as_given() -> Result<()> {
    let fake = Fake::start().await?;
    let body = r#"{"id":"evt_raw","object":"event","type":"account.updated","data":{"object":{}}}"#;

    // The receiver checks signatures: forged, stale and missing ones are refused.
    let forged = format!("t={},v1={}", unix_now(), "00".repeat(32));
    assert_eq!(fake.stripe.deliver_raw(body, Some(&forged)).await?, 400);
    let stale = fake.stripe.sign(body, unix_now() - 3600);
    assert_eq!(fake.stripe.deliver_raw(body, Some(&stale)).await?, 400);
    assert_eq!(fake.stripe.deliver_raw(body, None).await?, 400);

    let good = fake.stripe.sign(body, unix_now());
    assert_eq!(fake.stripe.deliver_raw(body, Some(&good)).await?, 200);
    let delivery = fake.hooks.next("account.updated").await?;
    assert_eq!(delivery.body, body);
    Ok(())
}

#[tokio::test]
async fn without_a_webhook_url_events_are_only_recorded() -> Result<()> {
    let stripe = FakeStripe::start(FakeConfig {
        secret_key: "sk_test_x".to_owned(),
        webhook_secret: WEBHOOK_SECRET.to_owned(),
        webhook_url: None,
    })
    .await?;
    let http = crate::support::client(Some(Duration::from_secs(5)))?;
    let account = http
        .post(format!("{}/v1/accounts", stripe.base_url()))
        .bearer_auth("sk_test_x")
        .body("capabilities[transfers][requested]=true")
        .send()
        .await?;
    let account: serde_json::Value = account.json().await?;
    let acct = account["id"].as_str().context("id")?;
    stripe.complete_onboarding(acct).await?;

    let events = stripe.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["pending_webhooks"], 0);
    assert!(matches!(
        stripe.deliver_raw("{}", None).await,
        Err(FakeError::NoWebhookUrl)
    ));
    let event_id = events[0]["id"].as_str().context("id")?;
    assert!(matches!(stripe.redeliver(event_id).await, Err(FakeError::NoWebhookUrl)));

    // Setting the URL later sends later events (and allows redelivering earlier ones).
    let fake = Fake::start().await?;
    stripe.set_webhook_url(&fake.hooks.url);
    stripe.redeliver(event_id).await?;
    let delivery = fake.hooks.next("account.updated").await?;
    assert_eq!(delivery.event["id"], event_id);
    stripe.emit_payout(acct, 5, "usd", true).await?;
    fake.hooks.next("payout.paid").await?;

    // Shut down: the port stops answering.
    stripe.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = http.get(format!("{}/v1/transfers", stripe.base_url())).send().await;
    assert!(after.is_err(), "the server should be gone");
    Ok(())
}
