//! Authentication, Connect accounts and the onboarding link flow.

use anyhow::{Context, Result, ensure};
use serde_json::json;

use crate::support::{Fake, SECRET_KEY, WEBHOOK_SECRET, signature_valid};

#[tokio::test]
async fn every_v1_request_needs_the_secret_key() -> Result<()> {
    let fake = Fake::start().await?;
    let url = fake.url("/v1/transfers");

    let missing = fake.http.get(&url).send().await?;
    assert_eq!(missing.status().as_u16(), 401);
    let body: serde_json::Value = missing.json().await?;
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let wrong = fake
        .http
        .get(&url)
        .bearer_auth("sk_test_not_the_key_9999")
        .send()
        .await?;
    assert_eq!(wrong.status().as_u16(), 401);
    let body: serde_json::Value = wrong.json().await?;
    let message = body["error"]["message"].as_str().context("message")?;
    assert!(message.starts_with("Invalid API Key provided: "), "{message}");
    assert!(
        message.ends_with("9999") && !message.contains("not_the_key"),
        "key is redacted: {message}"
    );

    // Nothing was created by the refused POST.
    let refused = fake
        .http
        .post(fake.url("/v1/accounts"))
        .body("country=US")
        .send()
        .await?;
    assert_eq!(refused.status().as_u16(), 401);
    assert!(fake.stripe.accounts().is_empty());

    let ok = fake.get("/v1/transfers").await?;
    assert_eq!(ok.status, 200, "{}", ok.body);
    Ok(())
}

#[tokio::test]
async fn unknown_routes_and_objects_answer_stripes_envelope() -> Result<()> {
    let fake = Fake::start().await?;
    let route = fake.get("/v1/charges_nope").await?;
    assert_eq!(route.status, 404);
    let message = route.body["error"]["message"].as_str().context("message")?;
    assert!(
        message.starts_with("Unrecognized request URL (GET: /v1/charges_nope)"),
        "{message}"
    );

    let account = fake.get("/v1/accounts/acct_0000000000000000").await?;
    assert_eq!(account.status, 404);
    assert_eq!(account.body["error"]["code"], "resource_missing");
    Ok(())
}

#[tokio::test]
async fn account_create_validates_its_parameters() -> Result<()> {
    let fake = Fake::start().await?;
    let unknown = fake.post("/v1/accounts", "country=US&colour=blue", None).await?;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.body["error"]["type"], "invalid_request_error");
    assert_eq!(unknown.body["error"]["param"], "colour");

    let link = fake.post("/v1/account_links", "type=account_onboarding", None).await?;
    assert_eq!(link.status, 400);
    assert_eq!(link.body["error"]["param"], "account");
    assert!(fake.stripe.accounts().is_empty());
    Ok(())
}

#[tokio::test]
async fn onboarding_link_completes_the_account_once_and_signals_account_updated() -> Result<()> {
    let fake = Fake::start().await?;
    let created = fake
        .post(
            "/v1/accounts",
            "country=us&email=ada%40example.com&capabilities[transfers][requested]=true\
             &controller[stripe_dashboard][type]=express&controller[fees][payer]=application\
             &controller[losses][payments]=application&controller[requirement_collection]=stripe\
             &metadata[affiliate_org_id]=org_1",
            None,
        )
        .await?;
    ensure!(created.status == 200, "{}", created.body);
    let account = &created.body;
    let id = account["id"].as_str().context("id")?;
    let suffix = id.strip_prefix("acct_").context("acct_ prefix")?;
    assert!(
        suffix.len() == 16 && suffix.chars().all(|c| c.is_ascii_alphanumeric()),
        "{id}"
    );
    assert_eq!(account["object"], "account");
    assert_eq!(account["country"], "US");
    assert_eq!(account["capabilities"], json!({"transfers": "inactive"}));
    assert_eq!(account["payouts_enabled"], false);
    assert_eq!(account["charges_enabled"], false);
    assert_eq!(account["details_submitted"], false);
    assert_eq!(account["metadata"], json!({"affiliate_org_id": "org_1"}));
    assert_eq!(account["controller"]["stripe_dashboard"]["type"], "express");
    assert!(account["created"].as_i64().is_some());

    let link = fake
        .post(
            "/v1/account_links",
            &format!(
                "account={id}&type=account_onboarding&refresh_url=https%3A%2F%2Fapp.test%2Frefresh\
                 &return_url=https%3A%2F%2Fapp.test%2Freturn"
            ),
            None,
        )
        .await?;
    ensure!(link.status == 200, "{}", link.body);
    assert_eq!(link.body["object"], "account_link");
    let created_at = link.body["created"].as_i64().context("created")?;
    assert_eq!(link.body["expires_at"].as_i64(), Some(created_at + 300));
    let url = link.body["url"].as_str().context("url")?;
    assert!(
        url.starts_with(&format!("{}/connect/onboarding/", fake.stripe.base_url())),
        "{url}"
    );

    // No event before the affiliate visits the page.
    assert!(fake.stripe.events().is_empty());

    let visit = fake.http.get(url).send().await?;
    assert_eq!(visit.status().as_u16(), 302);
    assert_eq!(
        visit.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("https://app.test/return")
    );

    // Single use.
    let again = fake.http.get(url).send().await?;
    assert_eq!(again.status().as_u16(), 404);
    assert!(again.text().await?.contains("already been used"));

    let fetched = fake.get(&format!("/v1/accounts/{id}")).await?;
    assert_eq!(fetched.body["capabilities"]["transfers"], "active");
    assert_eq!(fetched.body["payouts_enabled"], true);
    assert_eq!(fetched.body["details_submitted"], true);
    assert_eq!(fake.stripe.accounts()[0]["capabilities"]["transfers"], "active");

    // account.updated is a Connect event, signed with the endpoint secret.
    let delivery = fake.hooks.next("account.updated").await?;
    assert_eq!(delivery.event["account"], id);
    assert_eq!(delivery.event["object"], "event");
    assert_eq!(delivery.event["livemode"], false);
    assert_eq!(delivery.event["api_version"], "2025-01-27.acacia");
    assert!(delivery.event["id"].as_str().is_some_and(|e| e.starts_with("evt_")));
    assert_eq!(delivery.event["data"]["object"]["capabilities"]["transfers"], "active");
    assert_eq!(
        delivery.event["data"]["previous_attributes"]["capabilities"]["transfers"],
        "inactive"
    );
    // The receiver only accepts validly signed bodies; check the scheme once more here, and
    // that another secret would not verify.
    let signature = fake.stripe.sign(&delivery.body, crate::support::unix_now());
    assert!(signature_valid(&signature, &delivery.body, WEBHOOK_SECRET));
    assert!(!signature_valid(&signature, &delivery.body, SECRET_KEY));

    // Completing again changes nothing, so no second event.
    fake.stripe.complete_onboarding(id).await?;
    assert_eq!(fake.stripe.events().len(), 1);
    Ok(())
}

#[tokio::test]
async fn helpers_refuse_unknown_objects() -> Result<()> {
    let fake = Fake::start().await?;
    assert!(matches!(
        fake.stripe.complete_onboarding("acct_missing").await,
        Err(amba_stripe_fake::FakeError::NotFound(_))
    ));
    assert!(matches!(
        fake.stripe.reverse_transfer("tr_missing", 10).await,
        Err(amba_stripe_fake::FakeError::NotFound(_))
    ));
    assert!(matches!(
        fake.stripe.redeliver("evt_missing").await,
        Err(amba_stripe_fake::FakeError::NotFound(_))
    ));
    Ok(())
}
