//! Transfers, listing by transfer_group, reversals and idempotency keys.

use anyhow::{Context, Result, ensure};
use serde_json::json;

use crate::support::{Fake, ids};

#[tokio::test]
async fn transfers_are_created_listed_by_group_and_fetched() -> Result<()> {
    let fake = Fake::start().await?;
    let acct = fake.onboarded_account().await?;

    let mut created = Vec::new();
    for (amount, group) in [(1000, "po_run_1"), (2500, "po_run_2"), (700, "po_run_1")] {
        let reply = fake
            .post(
                "/v1/transfers",
                &format!(
                    "amount={amount}&currency=USD&destination={acct}&transfer_group={group}\
                     &description=Affiliate+payout&metadata[payout_item_id]=pit_{amount}"
                ),
                None,
            )
            .await?;
        ensure!(reply.status == 200, "{}", reply.body);
        created.push(reply.body);
    }
    let first = &created[0];
    let id = first["id"].as_str().context("id")?;
    assert!(id.starts_with("tr_"));
    assert_eq!(first["object"], "transfer");
    assert_eq!(first["amount"], 1000);
    assert_eq!(first["amount_reversed"], 0);
    assert_eq!(first["currency"], "usd", "currency comes back lowercase");
    assert_eq!(first["destination"], acct.as_str());
    assert_eq!(first["transfer_group"], "po_run_1");
    assert_eq!(first["description"], "Affiliate payout");
    assert_eq!(first["metadata"], json!({"payout_item_id": "pit_1000"}));
    assert_eq!(first["reversed"], false);
    assert_eq!(first["reversals"]["data"], json!([]));

    let group = fake.get("/v1/transfers?transfer_group=po_run_1&limit=10").await?;
    assert_eq!(group.status, 200);
    assert_eq!(group.body["object"], "list");
    assert_eq!(group.body["has_more"], false);
    assert_eq!(group.body["url"], "/v1/transfers");
    let newest_first = vec![created[2]["id"].as_str().context("id")?.to_owned(), id.to_owned()];
    assert_eq!(ids(&group.body), newest_first);

    let page = fake.get("/v1/transfers?limit=2").await?;
    assert_eq!(ids(&page.body).len(), 2);
    assert_eq!(page.body["has_more"], true);

    let fetched = fake.get(&format!("/v1/transfers/{id}")).await?;
    assert_eq!(&fetched.body, first);
    let missing = fake.get("/v1/transfers/tr_missing").await?;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["code"], "resource_missing");

    // transfer.created is a platform event: no `account`.
    let delivery = fake.hooks.next("transfer.created").await?;
    assert!(delivery.event.get("account").is_none(), "{}", delivery.body);
    assert_eq!(fake.stripe.transfers().len(), 3);
    Ok(())
}

#[tokio::test]
async fn transfer_parameters_are_validated() -> Result<()> {
    let fake = Fake::start().await?;
    let acct = fake.onboarded_account().await?;
    for (form, param) in [
        (format!("currency=usd&destination={acct}"), "amount"),
        (format!("amount=-5&currency=usd&destination={acct}"), "amount"),
        (format!("amount=12.5&currency=usd&destination={acct}"), "amount"),
        (format!("amount=5&destination={acct}"), "currency"),
        ("amount=5&currency=usd".to_owned(), "destination"),
        (format!("amount=5&currency=usd&destination={acct}&colour=red"), "colour"),
    ] {
        let reply = fake.post("/v1/transfers", &form, None).await?;
        assert_eq!(reply.status, 400, "{form}");
        assert_eq!(reply.body["error"]["type"], "invalid_request_error", "{form}");
        assert_eq!(reply.body["error"]["param"], param, "{form}");
    }
    assert!(fake.stripe.transfers().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_destination_that_has_not_finished_onboarding_is_refused() -> Result<()> {
    let fake = Fake::start().await?;
    let account = fake
        .post("/v1/accounts", "capabilities[transfers][requested]=true", None)
        .await?;
    let acct = account.body["id"].as_str().context("id")?;

    let refused = fake
        .post(
            "/v1/transfers",
            &format!("amount=500&currency=usd&destination={acct}"),
            None,
        )
        .await?;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.body["error"]["type"], "invalid_request_error");
    assert_eq!(refused.body["error"]["code"], "insufficient_capabilities_for_transfer");
    assert_eq!(refused.body["error"]["param"], "destination");

    let unknown = fake
        .post(
            "/v1/transfers",
            "amount=500&currency=usd&destination=acct_0000000000000000",
            None,
        )
        .await?;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.body["error"]["code"], "resource_missing");
    assert!(fake.stripe.transfers().is_empty());

    // Once onboarded, the same request goes through.
    fake.stripe.complete_onboarding(acct).await?;
    let ok = fake
        .post(
            "/v1/transfers",
            &format!("amount=500&currency=usd&destination={acct}"),
            None,
        )
        .await?;
    assert_eq!(ok.status, 200, "{}", ok.body);
    Ok(())
}

#[tokio::test]
async fn reversals_update_the_transfer_and_emit_transfer_reversed() -> Result<()> {
    let fake = Fake::start().await?;
    let acct = fake.onboarded_account().await?;
    let transfer = fake
        .post(
            "/v1/transfers",
            &format!("amount=1000&currency=eur&destination={acct}"),
            None,
        )
        .await?;
    let id = transfer.body["id"].as_str().context("id")?;
    let path = format!("/v1/transfers/{id}/reversals");

    let partial = fake.post(&path, "amount=300&metadata[reason]=refund", None).await?;
    ensure!(partial.status == 200, "{}", partial.body);
    assert!(partial.body["id"].as_str().is_some_and(|r| r.starts_with("trr_")));
    assert_eq!(partial.body["object"], "transfer_reversal");
    assert_eq!(partial.body["amount"], 300);
    assert_eq!(partial.body["currency"], "eur");
    assert_eq!(partial.body["transfer"], id);

    let event = fake.hooks.next("transfer.reversed").await?;
    assert_eq!(event.event["data"]["object"]["id"], id);
    assert_eq!(event.event["data"]["object"]["amount_reversed"], 300);
    assert_eq!(event.event["data"]["object"]["reversed"], false);
    assert!(event.event.get("account").is_none());

    let too_much = fake.post(&path, "amount=701", None).await?;
    assert_eq!(too_much.status, 400);
    assert_eq!(too_much.body["error"]["param"], "amount");

    // Without an amount, the rest is reversed.
    let rest = fake.post(&path, "", None).await?;
    assert_eq!(rest.body["amount"], 700);
    let event = fake.hooks.next("transfer.reversed").await?;
    assert_eq!(event.event["data"]["object"]["amount_reversed"], 1000);
    assert_eq!(event.event["data"]["object"]["reversed"], true);

    let fetched = fake.get(&format!("/v1/transfers/{id}")).await?;
    assert_eq!(fetched.body["amount_reversed"], 1000);
    assert_eq!(fetched.body["reversed"], true);
    assert_eq!(ids(&fetched.body["reversals"]).len(), 2);
    assert_eq!(fetched.body["reversals"]["data"][0]["amount"], 700, "newest first");

    let nothing_left = fake.post(&path, "", None).await?;
    assert_eq!(nothing_left.status, 400);

    // The helper goes through the same rules.
    let second = fake
        .post(
            "/v1/transfers",
            &format!("amount=400&currency=usd&destination={acct}"),
            None,
        )
        .await?;
    let second_id = second.body["id"].as_str().context("id")?;
    let reversal = fake.stripe.reverse_transfer(second_id, 150).await?;
    assert_eq!(reversal["amount"], 150);
    let event = fake.hooks.next("transfer.reversed").await?;
    assert_eq!(event.event["data"]["object"]["id"], second_id);
    assert!(fake.stripe.reverse_transfer(second_id, 251).await.is_err());
    Ok(())
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_refuses_other_parameters() -> Result<()> {
    let fake = Fake::start().await?;
    let acct = fake.onboarded_account().await?;
    let form = format!("amount=1200&currency=usd&destination={acct}&transfer_group=g1&metadata[payout_item_id]=pit_1");
    let reordered =
        format!("metadata[payout_item_id]=pit_1&transfer_group=g1&destination={acct}&currency=usd&amount=1200");

    let first = fake.post("/v1/transfers", &form, Some("pit_1")).await?;
    ensure!(first.status == 200, "{}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());

    let replay = fake.post("/v1/transfers", &reordered, Some("pit_1")).await?;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.body["id"], first.body["id"]);
    assert_eq!(replay.body, first.body);
    assert_eq!(
        replay.headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(fake.stripe.transfers().len(), 1);

    let changed = fake
        .post(
            "/v1/transfers",
            &form.replace("amount=1200", "amount=1300"),
            Some("pit_1"),
        )
        .await?;
    assert_eq!(changed.status, 400);
    assert_eq!(changed.body["error"]["type"], "idempotency_error");
    let message = changed.body["error"]["message"].as_str().context("message")?;
    assert!(message.starts_with("Keys for idempotent requests can only be used with the same parameters"));

    let other_path = fake.post("/v1/accounts", "country=US", Some("pit_1")).await?;
    assert_eq!(other_path.status, 400);
    assert_eq!(other_path.body["error"]["type"], "idempotency_error");

    assert_eq!(fake.stripe.transfers().len(), 1);
    assert!(fake.stripe.accounts().len() == 1, "only the onboarded account");

    // Another key is another transfer.
    let other = fake.post("/v1/transfers", &form, Some("pit_2")).await?;
    assert_ne!(other.body["id"], first.body["id"]);
    assert_eq!(fake.stripe.transfers().len(), 2);
    Ok(())
}

#[tokio::test]
async fn a_refused_request_saves_nothing_under_its_key() -> Result<()> {
    let fake = Fake::start().await?;
    let account = fake
        .post("/v1/accounts", "capabilities[transfers][requested]=true", None)
        .await?;
    let acct = account.body["id"].as_str().context("id")?;
    let form = format!("amount=500&currency=usd&destination={acct}");

    let refused = fake.post("/v1/transfers", &form, Some("k1")).await?;
    assert_eq!(refused.status, 400);
    fake.stripe.complete_onboarding(acct).await?;
    let retried = fake.post("/v1/transfers", &form, Some("k1")).await?;
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert!(retried.headers.get("idempotent-replayed").is_none());
    Ok(())
}
