//! Owner funding ("separate charges and transfers") as a payout service drives it: a customer,
//! a card saved through Checkout in setup mode, an off-session payment intent, transfers out of
//! its charge with `source_transaction`.

use amba_stripe_fake::{Fault, FaultKind};
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::support::{Fake, ids, unix_now};

/// The event types emitted so far, oldest first.
fn kinds(fake: &Fake) -> Vec<String> {
    fake.stripe
        .events()
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect()
}

fn replayed(reply: &crate::support::Reply) -> bool {
    reply.headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()) == Some("true")
}

fn id(value: &Value) -> Result<String> {
    Ok(value["id"].as_str().context("no id")?.to_owned())
}

async fn customer(fake: &Fake) -> Result<String> {
    let reply = fake
        .post(
            "/v1/customers",
            "email=owner@example.com&name=Acme+Programs&metadata[program_owner_id]=own_1",
            None,
        )
        .await?;
    ensure!(reply.status == 200, "customer: {}", reply.body);
    id(&reply.body)
}

/// A customer with test card `card` saved through Checkout (the page visited like a browser).
async fn saved_card(fake: &Fake, card: &str) -> Result<(String, String)> {
    let customer = customer(fake).await?;
    let session = fake
        .post(
            "/v1/checkout/sessions",
            &format!("mode=setup&customer={customer}&currency=usd&success_url=https://owner.example/ok"),
            None,
        )
        .await?;
    ensure!(session.status == 200, "session: {}", session.body);
    let url = session.body["url"].as_str().context("url")?;
    let visit = fake.http.get(format!("{url}?card={card}")).send().await?;
    ensure!(visit.status() == 302, "checkout page: {}", visit.status());
    let session = fake
        .get(&format!("/v1/checkout/sessions/{}", id(&session.body)?))
        .await?;
    let intent = fake
        .get(&format!(
            "/v1/setup_intents/{}",
            session.body["setup_intent"].as_str().context("setup_intent")?
        ))
        .await?;
    let pm = intent.body["payment_method"]
        .as_str()
        .context("payment_method")?
        .to_owned();
    Ok((customer, pm))
}

fn charge_form(customer: &str, pm: &str, amount: i64) -> String {
    format!(
        "amount={amount}&currency=usd&customer={customer}&payment_method={pm}&confirm=true&off_session=true\
         &transfer_group=fund_run_1&description=Program+funding&metadata[funding_id]=fnd_1"
    )
}

#[tokio::test]
async fn checkout_in_setup_mode_saves_a_card_on_the_customer() -> Result<()> {
    let fake = Fake::start().await?;
    let created = fake
        .post(
            "/v1/customers",
            "email=owner@example.com&name=Acme+Programs&description=Program+owner&metadata[program_owner_id]=own_1",
            None,
        )
        .await?;
    assert_eq!(created.status, 200, "{}", created.body);
    let customer = id(&created.body)?;
    assert!(customer.starts_with("cus_"));
    assert_eq!(created.body["object"], "customer");
    assert_eq!(created.body["email"], "owner@example.com");
    assert_eq!(created.body["name"], "Acme Programs");
    assert_eq!(created.body["description"], "Program owner");
    assert_eq!(created.body["metadata"], json!({"program_owner_id": "own_1"}));
    assert_eq!(created.body["invoice_settings"]["default_payment_method"], Value::Null);
    assert_eq!(created.body["livemode"], false);
    let fetched = fake.get(&format!("/v1/customers/{customer}")).await?;
    assert_eq!(fetched.body, created.body);
    let missing = fake.get("/v1/customers/cus_missing").await?;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["code"], "resource_missing");

    let session = fake
        .post(
            "/v1/checkout/sessions",
            &format!(
                "mode=setup&customer={customer}&currency=USD&payment_method_types[0]=card\
                 &success_url=https://owner.example/funding/done?session={{CHECKOUT_SESSION_ID}}\
                 &cancel_url=https://owner.example/funding&client_reference_id=prog_1\
                 &metadata[program_id]=prog_1&setup_intent_data[metadata][program_id]=prog_1"
            ),
            Some("setup_prog_1"),
        )
        .await?;
    assert_eq!(session.status, 200, "{}", session.body);
    let session_id = id(&session.body)?;
    assert!(session_id.starts_with("cs_test_"));
    let body = &session.body;
    assert_eq!(body["object"], "checkout.session");
    assert_eq!(body["mode"], "setup");
    assert_eq!(body["status"], "open");
    assert_eq!(body["customer"], customer.as_str());
    assert_eq!(body["currency"], "usd");
    assert_eq!(body["payment_status"], "no_payment_required");
    assert_eq!(body["setup_intent"], Value::Null);
    assert_eq!(body["client_reference_id"], "prog_1");
    assert_eq!(body["metadata"], json!({"program_id": "prog_1"}));
    assert_eq!(
        body["success_url"],
        "https://owner.example/funding/done?session={CHECKOUT_SESSION_ID}"
    );
    let expires_at = body["expires_at"].as_i64().context("expires_at")?;
    assert!((expires_at - unix_now() - 86_400).abs() <= 5);
    let url = body["url"].as_str().context("url")?.to_owned();
    assert_eq!(url, fake.url(&format!("/checkout/setup/{session_id}")));
    assert_eq!(
        fake.get(&format!("/v1/checkout/sessions/{session_id}")).await?.body,
        session.body
    );

    // The owner's browser visits the page: the card is saved and it is sent back.
    let before = kinds(&fake).len();
    let visit = fake.http.get(&url).send().await?;
    assert_eq!(visit.status(), 302);
    let location = visit.headers().get("location").and_then(|v| v.to_str().ok());
    assert_eq!(
        location,
        Some(format!("https://owner.example/funding/done?session={session_id}").as_str())
    );
    assert_eq!(
        kinds(&fake)[before..],
        [
            "payment_method.attached",
            "setup_intent.succeeded",
            "checkout.session.completed"
        ]
    );
    let completed = fake.hooks.next("checkout.session.completed").await?;
    assert_eq!(completed.event["data"]["object"]["id"], session_id.as_str());
    assert_eq!(completed.event["data"]["object"]["status"], "complete");

    let session = fake.get(&format!("/v1/checkout/sessions/{session_id}")).await?;
    assert_eq!(session.body["status"], "complete");
    assert_eq!(session.body["url"], Value::Null);
    let setup_intent = session.body["setup_intent"].as_str().context("setup_intent")?;
    assert!(setup_intent.starts_with("seti_"));
    let intent = fake.get(&format!("/v1/setup_intents/{setup_intent}")).await?;
    assert_eq!(intent.body["object"], "setup_intent");
    assert_eq!(intent.body["status"], "succeeded");
    assert_eq!(intent.body["usage"], "off_session");
    assert_eq!(intent.body["customer"], customer.as_str());
    assert_eq!(intent.body["metadata"], json!({"program_id": "prog_1"}));
    let pm = intent.body["payment_method"].as_str().context("payment_method")?;
    let method = fake.get(&format!("/v1/payment_methods/{pm}")).await?;
    assert_eq!(method.body["object"], "payment_method");
    assert_eq!(method.body["type"], "card");
    assert_eq!(method.body["customer"], customer.as_str());
    assert_eq!(method.body["card"]["brand"], "visa");
    assert_eq!(method.body["card"]["last4"], "4242");
    let listed = fake.get(&format!("/v1/customers/{customer}/payment_methods")).await?;
    assert_eq!(ids(&listed.body), vec![pm.to_owned()]);
    let listed = fake
        .get(&format!("/v1/payment_methods?customer={customer}&type=card"))
        .await?;
    assert_eq!(ids(&listed.body), vec![pm.to_owned()]);

    // `expand[]` follows the ids.
    let expanded = fake
        .get(&format!(
            "/v1/checkout/sessions/{session_id}?expand[]=setup_intent.payment_method"
        ))
        .await?;
    assert_eq!(expanded.body["setup_intent"]["payment_method"]["id"], pm);

    // The session is spent.
    let again = fake.http.get(&url).send().await?;
    assert_eq!(again.status(), 404);
    assert!(again.text().await?.contains("already been completed"));
    assert_eq!(fake.stripe.setup_intents().len(), 1);
    assert_eq!(fake.stripe.checkout_sessions().len(), 1);
    assert_eq!(fake.stripe.customers().len(), 1);
    Ok(())
}

#[tokio::test]
async fn the_checkout_page_takes_a_test_card_and_rust_can_complete_a_session() -> Result<()> {
    let fake = Fake::start().await?;
    let customer = customer(&fake).await?;
    let form = format!("mode=setup&customer={customer}&currency=eur&success_url=https://owner.example/ok");
    let first = fake.post("/v1/checkout/sessions", &form, None).await?;
    let url = first.body["url"].as_str().context("url")?;
    let unknown = fake.http.get(format!("{url}?card=amex")).send().await?;
    assert_eq!(unknown.status(), 400);
    let page = unknown.text().await?;
    assert!(
        page.contains("visa, declined, insufficient_funds, authentication_required"),
        "{page}"
    );
    assert!(
        fake.stripe.payment_methods().is_empty(),
        "an unknown card saves nothing"
    );
    let saved = fake.http.get(format!("{url}?card=insufficient_funds")).send().await?;
    assert_eq!(saved.status(), 302);
    assert_eq!(fake.stripe.payment_methods()[0]["card"]["last4"], "9995");

    let second = fake.post("/v1/checkout/sessions", &form, None).await?;
    let second_id = id(&second.body)?;
    let session = fake.stripe.complete_checkout(&second_id, "declined").await?;
    assert_eq!(session["status"], "complete");
    assert!(session["setup_intent"].as_str().is_some_and(|s| s.starts_with("seti_")));
    assert_eq!(fake.stripe.payment_methods()[1]["card"]["last4"], "0002");
    assert!(fake.stripe.complete_checkout(&second_id, "visa").await.is_err());
    assert!(fake.stripe.complete_checkout("cs_test_missing", "visa").await.is_err());
    let missing = fake
        .http
        .get(fake.url("/checkout/setup/cs_test_missing"))
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    Ok(())
}

#[tokio::test]
async fn checkout_session_parameters_are_validated() -> Result<()> {
    let fake = Fake::start().await?;
    let customer = customer(&fake).await?;
    let ok = "success_url=https://owner.example/ok";
    for (form, param, needle) in [
        (
            format!("mode=payment&customer={customer}&currency=usd&{ok}"),
            "mode",
            "setup mode only",
        ),
        (
            format!("mode=subscription&customer={customer}&currency=usd&{ok}"),
            "mode",
            "setup mode only",
        ),
        (
            format!("mode=rent&customer={customer}&currency=usd&{ok}"),
            "mode",
            "Invalid mode",
        ),
        (format!("customer={customer}&currency=usd&{ok}"), "mode", "mode"),
        (format!("mode=setup&currency=usd&{ok}"), "customer", "customer"),
        (
            format!("mode=setup&customer=cus_x&currency=usd&{ok}"),
            "customer",
            "No such customer: 'cus_x'",
        ),
        (format!("mode=setup&customer={customer}&{ok}"), "currency", "currency"),
        (
            format!("mode=setup&customer={customer}&currency=usdollar&{ok}"),
            "currency",
            "currency",
        ),
        (
            format!("mode=setup&customer={customer}&currency=usd"),
            "success_url",
            "success_url",
        ),
        (
            format!("mode=setup&customer={customer}&currency=usd&payment_method_types[0]=sepa_debit&{ok}"),
            "payment_method_types[0]",
            "card",
        ),
    ] {
        let reply = fake.post("/v1/checkout/sessions", &form, None).await?;
        assert_eq!(reply.status, 400, "{form}: {}", reply.body);
        assert_eq!(reply.body["error"]["type"], "invalid_request_error", "{form}");
        assert_eq!(reply.body["error"]["param"], param, "{form}");
        let message = reply.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{form}: {message}");
    }
    let unknown = fake
        .post(
            "/v1/checkout/sessions",
            &format!("mode=setup&customer=cus_x&currency=usd&{ok}"),
            None,
        )
        .await?;
    assert_eq!(unknown.body["error"]["code"], "resource_missing");
    // payment_method_types stands in for currency.
    let typed = fake
        .post(
            "/v1/checkout/sessions",
            &format!("mode=setup&customer={customer}&payment_method_types[]=card&{ok}"),
            None,
        )
        .await?;
    assert_eq!(typed.status, 200, "{}", typed.body);
    assert_eq!(typed.body["currency"], Value::Null);
    assert_eq!(typed.body["payment_method_types"], json!(["card"]));
    assert_eq!(fake.stripe.checkout_sessions().len(), 1);
    Ok(())
}

#[tokio::test]
async fn an_off_session_charge_succeeds_once_per_idempotency_key() -> Result<()> {
    let fake = Fake::start().await?;
    let (customer, pm) = saved_card(&fake, "visa").await?;
    let before = kinds(&fake).len();
    let form = charge_form(&customer, &pm, 5_000);
    let paid = fake.post("/v1/payment_intents", &form, Some("fund_fnd_1")).await?;
    assert_eq!(paid.status, 200, "{}", paid.body);
    let intent = &paid.body;
    let intent_id = id(intent)?;
    assert!(intent_id.starts_with("pi_"));
    assert_eq!(intent["object"], "payment_intent");
    assert_eq!(intent["status"], "succeeded");
    assert_eq!(intent["amount"], 5_000);
    assert_eq!(intent["amount_received"], 5_000);
    assert_eq!(intent["customer"], customer.as_str());
    assert_eq!(intent["payment_method"], pm.as_str());
    assert_eq!(intent["transfer_group"], "fund_run_1");
    assert_eq!(intent["metadata"], json!({"funding_id": "fnd_1"}));
    let charge_id = intent["latest_charge"].as_str().context("latest_charge")?;
    assert!(charge_id.starts_with("ch_"));
    let charge = fake.get(&format!("/v1/charges/{charge_id}")).await?;
    let c = &charge.body;
    assert_eq!(c["object"], "charge");
    assert_eq!(c["status"], "succeeded");
    assert_eq!((c["paid"].clone(), c["captured"].clone()), (json!(true), json!(true)));
    assert_eq!(c["amount"], 5_000);
    assert_eq!(c["amount_captured"], 5_000);
    assert_eq!(c["amount_refunded"], 0);
    assert_eq!(c["currency"], "usd");
    assert_eq!(c["customer"], customer.as_str());
    assert_eq!(c["payment_intent"], intent_id.as_str());
    assert_eq!(c["payment_method"], pm.as_str());
    assert_eq!(c["transfer_group"], "fund_run_1");
    assert_eq!(c["metadata"], json!({"funding_id": "fnd_1"}));
    assert_eq!(c["failure_code"], Value::Null);
    assert_eq!(c["failure_message"], Value::Null);
    assert_eq!(c["outcome"]["type"], "authorized");
    assert_eq!(c["outcome"]["network_status"], "approved_by_network");
    assert!(c["balance_transaction"].as_str().is_some_and(|t| t.starts_with("txn_")));
    assert_eq!(
        kinds(&fake)[before..],
        ["payment_intent.created", "charge.succeeded", "payment_intent.succeeded"]
    );
    let delivered = fake.hooks.next("payment_intent.succeeded").await?;
    assert_eq!(delivered.event["data"]["object"]["id"], intent_id.as_str());
    assert_eq!(delivered.event["request"]["idempotency_key"], "fund_fnd_1");

    // A retry with the key gets the same answer and charges nothing more.
    let replay = fake.post("/v1/payment_intents", &form, Some("fund_fnd_1")).await?;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.body, paid.body);
    assert!(replayed(&replay));
    assert_eq!(fake.stripe.charges().len(), 1);
    assert_eq!(fake.stripe.payment_intents().len(), 1);
    let other = fake
        .post(
            "/v1/payment_intents",
            &charge_form(&customer, &pm, 6_000),
            Some("fund_fnd_1"),
        )
        .await?;
    assert_eq!(other.status, 400);
    assert_eq!(other.body["error"]["type"], "idempotency_error");
    assert_eq!(fake.stripe.charges().len(), 1);

    // `expand[]` on the create answer.
    let expanded = fake
        .post(
            "/v1/payment_intents",
            &format!("{}&expand[]=latest_charge", charge_form(&customer, &pm, 700)),
            None,
        )
        .await?;
    assert_eq!(expanded.body["latest_charge"]["object"], "charge");
    assert_eq!(expanded.body["latest_charge"]["amount"], 700);
    Ok(())
}

#[tokio::test]
async fn declined_cards_answer_402_and_the_key_replays_it() -> Result<()> {
    let fake = Fake::start().await?;
    let (customer, pm) = saved_card(&fake, "declined").await?;
    let before = kinds(&fake).len();
    let form = charge_form(&customer, &pm, 5_000);
    let declined = fake.post("/v1/payment_intents", &form, Some("fund_declined")).await?;
    assert_eq!(declined.status, 402, "{}", declined.body);
    let error = &declined.body["error"];
    assert_eq!(error["type"], "card_error");
    assert_eq!(error["code"], "card_declined");
    assert_eq!(error["decline_code"], "generic_decline");
    assert_eq!(error["message"], "Your card was declined.");
    assert_eq!(error["doc_url"], "https://stripe.com/docs/error-codes/card-declined");
    assert_eq!(error["payment_method"]["id"], pm.as_str());
    let intent = &error["payment_intent"];
    assert_eq!(intent["object"], "payment_intent");
    assert_eq!(intent["status"], "requires_payment_method");
    assert_eq!(intent["last_payment_error"]["decline_code"], "generic_decline");
    let charge_id = error["charge"].as_str().context("charge")?;
    assert_eq!(intent["latest_charge"], charge_id);
    let charge = fake.get(&format!("/v1/charges/{charge_id}")).await?;
    assert_eq!(charge.body["status"], "failed");
    assert_eq!(charge.body["paid"], false);
    assert_eq!(charge.body["failure_code"], "card_declined");
    assert_eq!(charge.body["failure_message"], "Your card was declined.");
    assert_eq!(
        kinds(&fake)[before..],
        [
            "payment_intent.created",
            "charge.failed",
            "payment_intent.payment_failed"
        ]
    );

    // Stripe saved the card error: the key replays it and nothing is charged again.
    let replay = fake.post("/v1/payment_intents", &form, Some("fund_declined")).await?;
    assert_eq!(replay.status, 402);
    assert_eq!(replay.body, declined.body);
    assert!(replayed(&replay));
    assert_eq!(fake.stripe.charges().len(), 1);
    assert_eq!(fake.stripe.payment_intents().len(), 1);

    let listed = fake.get(&format!("/v1/payment_intents?customer={customer}")).await?;
    assert_eq!(ids(&listed.body), vec![id(intent)?]);
    assert_eq!(listed.body["data"][0]["status"], "requires_payment_method");

    // Stripe's magic id works too, with its own decline code and message.
    let magic = fake
        .post(
            "/v1/payment_intents",
            "amount=900&currency=usd&payment_method=pm_card_chargeDeclinedInsufficientFunds&confirm=true\
             &off_session=true",
            None,
        )
        .await?;
    assert_eq!(magic.status, 402);
    assert_eq!(magic.body["error"]["decline_code"], "insufficient_funds");
    assert_eq!(magic.body["error"]["message"], "Your card has insufficient funds.");
    Ok(())
}

#[tokio::test]
async fn authentication_required_fails_off_session_and_asks_for_action_on_session() -> Result<()> {
    let fake = Fake::start().await?;
    let (customer, pm) = saved_card(&fake, "authentication_required").await?;
    let before = kinds(&fake).len();
    let failed = fake
        .post(
            "/v1/payment_intents",
            &charge_form(&customer, &pm, 2_500),
            Some("fund_3ds"),
        )
        .await?;
    assert_eq!(failed.status, 402, "{}", failed.body);
    let error = &failed.body["error"];
    assert_eq!(error["type"], "card_error");
    assert_eq!(error["code"], "authentication_required");
    assert_eq!(error["decline_code"], "authentication_required");
    assert_eq!(
        error["message"],
        "Your card was declined. This transaction requires authentication."
    );
    assert!(error.get("charge").is_none(), "no charge is attempted");
    assert_eq!(error["payment_intent"]["status"], "requires_payment_method");
    assert_eq!(error["payment_intent"]["latest_charge"], Value::Null);
    assert!(fake.stripe.charges().is_empty());
    assert_eq!(
        kinds(&fake)[before..],
        ["payment_intent.created", "payment_intent.payment_failed"]
    );
    let replay = fake
        .post(
            "/v1/payment_intents",
            &charge_form(&customer, &pm, 2_500),
            Some("fund_3ds"),
        )
        .await?;
    assert_eq!((replay.status, replayed(&replay)), (402, true));

    // On session the customer is asked to authenticate.
    let on_session = fake
        .post(
            "/v1/payment_intents",
            &format!(
                "amount=2500&currency=usd&customer={customer}&payment_method={pm}&confirm=true\
                 &return_url=https://owner.example/back"
            ),
            None,
        )
        .await?;
    assert_eq!(on_session.status, 200, "{}", on_session.body);
    assert_eq!(on_session.body["status"], "requires_action");
    assert_eq!(on_session.body["next_action"]["type"], "use_stripe_sdk");
    Ok(())
}

#[tokio::test]
async fn error_after_commit_charges_once_and_replays_the_500() -> Result<()> {
    let fake = Fake::start().await?;
    let (customer, pm) = saved_card(&fake, "visa").await?;
    fake.stripe.inject(Fault {
        path_prefix: "/v1/payment_intents".to_owned(),
        kind: FaultKind::ErrorAfterCommit,
        times: 1,
    });
    let form = charge_form(&customer, &pm, 3_000);
    let lost = fake.post("/v1/payment_intents", &form, Some("fund_lost")).await?;
    assert_eq!(lost.status, 500);
    assert_eq!(lost.body["error"]["type"], "api_error");
    let replay = fake.post("/v1/payment_intents", &form, Some("fund_lost")).await?;
    assert_eq!(replay.status, 500);
    assert_eq!(replay.body, lost.body);
    assert!(replayed(&replay));

    // The charge happened once; the caller learns it by listing.
    assert_eq!(fake.stripe.charges().len(), 1);
    let intents = fake.stripe.payment_intents();
    assert_eq!(intents.len(), 1);
    let listed = fake
        .get(&format!("/v1/payment_intents?customer={customer}&limit=5"))
        .await?;
    assert_eq!(ids(&listed.body), vec![id(&intents[0])?]);
    assert_eq!(listed.body["data"][0]["status"], "succeeded");
    assert_eq!(listed.body["data"][0]["metadata"]["funding_id"], "fnd_1");
    fake.hooks.next("payment_intent.succeeded").await?;
    Ok(())
}

#[tokio::test]
async fn payment_intents_are_validated_confirmed_later_and_listed() -> Result<()> {
    let fake = Fake::start().await?;
    let (customer, pm) = saved_card(&fake, "visa").await?;
    let (other, _) = saved_card(&fake, "visa").await?;
    for (form, param) in [
        (format!("currency=usd&customer={customer}"), "amount"),
        (format!("amount=0&currency=usd&customer={customer}"), "amount"),
        (format!("amount=40&currency=usd&customer={customer}"), "amount"),
        (format!("amount=500&customer={customer}"), "currency"),
        ("amount=500&currency=usd&customer=cus_x".to_owned(), "customer"),
        (
            format!("amount=500&currency=usd&customer={customer}&confirm=true&off_session=true"),
            "payment_method",
        ),
        (
            format!("amount=500&currency=usd&customer={other}&payment_method={pm}"),
            "payment_method",
        ),
        (format!("amount=500&currency=usd&payment_method={pm}"), "payment_method"),
        (
            format!("amount=500&currency=usd&customer={customer}&payment_method=pm_nope"),
            "payment_method",
        ),
        (
            format!("amount=500&currency=usd&customer={customer}&payment_method={pm}&off_session=true"),
            "off_session",
        ),
        (
            format!("amount=500&currency=usd&customer={customer}&payment_method={pm}&confirm=true"),
            "return_url",
        ),
    ] {
        let reply = fake
            .post("/v1/payment_intents", &form, Some(&format!("bad_{param}")))
            .await?;
        assert_eq!(reply.status, 400, "{form}: {}", reply.body);
        assert_eq!(reply.body["error"]["param"], param, "{form}: {}", reply.body);
    }
    assert!(fake.stripe.payment_intents().is_empty());
    assert!(fake.stripe.charges().is_empty());

    // Created first, confirmed second (the id can be stored before any money moves).
    let created = fake
        .post(
            "/v1/payment_intents",
            &format!("amount=1200&currency=usd&customer={customer}&payment_method={pm}"),
            None,
        )
        .await?;
    assert_eq!(created.body["status"], "requires_confirmation", "{}", created.body);
    assert!(fake.stripe.charges().is_empty());
    let intent = id(&created.body)?;
    let confirmed = fake
        .post(
            &format!("/v1/payment_intents/{intent}/confirm"),
            "off_session=true",
            Some("confirm_1"),
        )
        .await?;
    assert_eq!(confirmed.status, 200, "{}", confirmed.body);
    assert_eq!(confirmed.body["status"], "succeeded");
    let again = fake
        .post(
            &format!("/v1/payment_intents/{intent}/confirm"),
            "off_session=true",
            None,
        )
        .await?;
    assert_eq!(again.status, 400);
    assert_eq!(again.body["error"]["code"], "payment_intent_unexpected_state");

    // A magic test id can be used with a customer; pages and created filters work.
    let magic = fake
        .post(
            "/v1/payment_intents",
            &format!(
                "amount=800&currency=usd&customer={customer}&payment_method=pm_card_visa&confirm=true&off_session=true"
            ),
            None,
        )
        .await?;
    assert_eq!(magic.body["status"], "succeeded", "{}", magic.body);
    let all = fake.get(&format!("/v1/payment_intents?customer={customer}")).await?;
    assert_eq!(ids(&all.body), vec![id(&magic.body)?, intent.clone()]);
    let first = fake
        .get(&format!("/v1/payment_intents?customer={customer}&limit=1"))
        .await?;
    assert_eq!(first.body["has_more"], true);
    let next = fake
        .get(&format!(
            "/v1/payment_intents?customer={customer}&limit=1&starting_after={}",
            id(&magic.body)?
        ))
        .await?;
    assert_eq!(ids(&next.body), vec![intent.clone()]);
    let future = fake
        .get(&format!("/v1/payment_intents?created[gte]={}", unix_now() + 60))
        .await?;
    assert_eq!(ids(&future.body), Vec::<String>::new());
    let recent = fake
        .get(&format!(
            "/v1/payment_intents?created[gte]={}&created[lte]={}",
            unix_now() - 60,
            unix_now() + 60
        ))
        .await?;
    assert_eq!(ids(&recent.body).len(), 2);
    let other_list = fake.get(&format!("/v1/payment_intents?customer={other}")).await?;
    assert!(ids(&other_list.body).is_empty());
    let charges = fake.get(&format!("/v1/charges?payment_intent={intent}")).await?;
    assert_eq!(ids(&charges.body).len(), 1);
    Ok(())
}

#[tokio::test]
async fn payment_methods_attach_to_one_customer() -> Result<()> {
    let fake = Fake::start().await?;
    let first = customer(&fake).await?;
    let second = customer(&fake).await?;
    let attached = fake
        .post(
            "/v1/payment_methods/pm_card_visa/attach",
            &format!("customer={first}"),
            None,
        )
        .await?;
    assert_eq!(attached.status, 200, "{}", attached.body);
    let pm = id(&attached.body)?;
    assert!(pm.starts_with("pm_") && pm != "pm_card_visa");
    assert_eq!(attached.body["customer"], first.as_str());
    let same = fake
        .post(
            &format!("/v1/payment_methods/{pm}/attach"),
            &format!("customer={first}"),
            None,
        )
        .await?;
    assert_eq!(same.status, 200);
    let stolen = fake
        .post(
            &format!("/v1/payment_methods/{pm}/attach"),
            &format!("customer={second}"),
            None,
        )
        .await?;
    assert_eq!(stolen.status, 400, "{}", stolen.body);
    let missing = fake
        .post("/v1/payment_methods/pm_nope/attach", &format!("customer={first}"), None)
        .await?;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["code"], "resource_missing");

    // It can become the customer's default.
    let updated = fake
        .post(
            &format!("/v1/customers/{first}"),
            &format!("invoice_settings[default_payment_method]={pm}&metadata[tier]=gold"),
            None,
        )
        .await?;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.body["invoice_settings"]["default_payment_method"], pm.as_str());
    assert_eq!(
        updated.body["metadata"],
        json!({"program_owner_id": "own_1", "tier": "gold"})
    );
    let refused = fake
        .post(
            &format!("/v1/customers/{second}"),
            &format!("invoice_settings[default_payment_method]={pm}"),
            None,
        )
        .await?;
    assert_eq!(refused.status, 400);
    Ok(())
}

#[tokio::test]
async fn transfers_from_a_charge_stay_within_it() -> Result<()> {
    let fake = Fake::start().await?;
    let acct = fake.onboarded_account().await?;
    let (customer, pm) = saved_card(&fake, "visa").await?;
    let paid = fake
        .post("/v1/payment_intents", &charge_form(&customer, &pm, 1_000), None)
        .await?;
    ensure!(paid.status == 200, "{}", paid.body);
    let charge = paid.body["latest_charge"].as_str().context("latest_charge")?.to_owned();
    let transfer = |amount: i64, extra: &str| {
        format!("amount={amount}&currency=usd&destination={acct}&source_transaction={charge}{extra}")
    };

    let first = fake.post("/v1/transfers", &transfer(600, ""), Some("pit_1")).await?;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["source_transaction"], charge.as_str());
    assert_eq!(first.body["transfer_group"], "fund_run_1", "the charge's group");
    let second = fake
        .post(
            "/v1/transfers",
            &transfer(400, "&transfer_group=own_group"),
            Some("pit_2"),
        )
        .await?;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.body["transfer_group"], "own_group");

    // Nothing is left on the charge.
    let over = fake.post("/v1/transfers", &transfer(1, ""), Some("pit_3")).await?;
    assert_eq!(over.status, 400, "{}", over.body);
    assert_eq!(over.body["error"]["type"], "invalid_request_error");
    assert_eq!(over.body["error"]["code"], "balance_insufficient");
    let message = over.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("0 usd is available") && message.contains("1 usd was requested"),
        "{message}"
    );
    assert_eq!(fake.stripe.transfers().len(), 2);
    let listed = fake.get("/v1/transfers?transfer_group=fund_run_1").await?;
    assert_eq!(ids(&listed.body), vec![id(&first.body)?]);

    let (customer2, pm2) = saved_card(&fake, "visa").await?;
    let other = fake
        .post("/v1/payment_intents", &charge_form(&customer2, &pm2, 1_000), None)
        .await?;
    let other_charge = other.body["latest_charge"].as_str().context("latest_charge")?;
    let euros = fake
        .post(
            "/v1/transfers",
            &format!("amount=100&currency=eur&destination={acct}&source_transaction={other_charge}"),
            None,
        )
        .await?;
    assert_eq!(
        (euros.status, euros.body["error"]["param"].clone()),
        (400, json!("currency"))
    );
    let unknown = fake
        .post(
            "/v1/transfers",
            &format!("amount=100&currency=usd&destination={acct}&source_transaction=ch_x"),
            None,
        )
        .await?;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.body["error"]["code"], "resource_missing");
    assert_eq!(unknown.body["error"]["message"], "No such charge: 'ch_x'");
    assert_eq!(unknown.body["error"]["param"], "source_transaction");

    // A failed charge funds nothing.
    let (customer3, pm3) = saved_card(&fake, "declined").await?;
    let declined = fake
        .post("/v1/payment_intents", &charge_form(&customer3, &pm3, 1_000), None)
        .await?;
    let failed_charge = declined.body["error"]["charge"].as_str().context("charge")?;
    let unfunded = fake
        .post(
            "/v1/transfers",
            &format!("amount=100&currency=usd&destination={acct}&source_transaction={failed_charge}"),
            None,
        )
        .await?;
    assert_eq!(unfunded.status, 400);
    assert_eq!(unfunded.body["error"]["param"], "source_transaction");
    assert_eq!(fake.stripe.transfers().len(), 2);

    // The remaining 1000 of the second charge can be sent in full.
    let full = fake
        .post(
            "/v1/transfers",
            &format!("amount=1000&currency=usd&destination={acct}&source_transaction={other_charge}"),
            None,
        )
        .await?;
    assert_eq!(full.status, 200, "{}", full.body);
    let expanded = fake
        .get(&format!(
            "/v1/transfers/{}?expand[]=source_transaction",
            id(&full.body)?
        ))
        .await?;
    assert_eq!(expanded.body["source_transaction"]["object"], "charge");
    Ok(())
}

/// A succeeded charge of `amount` on a fresh customer's visa: (payment intent, charge).
async fn paid_charge(fake: &Fake, amount: i64) -> Result<(String, String)> {
    let (customer, pm) = saved_card(fake, "visa").await?;
    let paid = fake
        .post("/v1/payment_intents", &charge_form(&customer, &pm, amount), None)
        .await?;
    ensure!(paid.status == 200, "{}", paid.body);
    let charge = paid.body["latest_charge"].as_str().context("latest_charge")?.to_owned();
    Ok((id(&paid.body)?, charge))
}

#[tokio::test]
async fn a_charge_is_refunded_in_part_then_the_rest_by_payment_intent() -> Result<()> {
    let fake = Fake::start().await?;
    let (intent, charge) = paid_charge(&fake, 1_000).await?;
    let before = kinds(&fake).len();
    let form = format!("charge={charge}&amount=300&reason=requested_by_customer&metadata[refund_id]=rf_1");
    let first = fake.post("/v1/refunds", &form, Some("refund_1")).await?;
    assert_eq!(first.status, 200, "{}", first.body);
    let refund = id(&first.body)?;
    assert!(refund.starts_with("re_"));
    let body = &first.body;
    assert_eq!(body["object"], "refund");
    assert_eq!(body["amount"], 300);
    assert_eq!(body["currency"], "usd");
    assert_eq!(body["charge"], charge.as_str());
    assert_eq!(body["payment_intent"], intent.as_str());
    assert_eq!(body["reason"], "requested_by_customer");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["metadata"], json!({"refund_id": "rf_1"}));
    assert_eq!(body["destination_details"], Value::Null);
    assert!(
        body["balance_transaction"]
            .as_str()
            .is_some_and(|t| t.starts_with("txn_"))
    );
    assert!((body["created"].as_i64().unwrap_or_default() - unix_now()).abs() <= 5);

    // The key replays the same refund; nothing is refunded twice.
    let replay = fake.post("/v1/refunds", &form, Some("refund_1")).await?;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.body, first.body);
    assert!(replayed(&replay));
    assert_eq!(fake.stripe.refunds().len(), 1);

    let partly = fake.get(&format!("/v1/charges/{charge}")).await?;
    assert_eq!(partly.body["amount_refunded"], 300);
    assert_eq!(partly.body["refunded"], false);
    assert_eq!(kinds(&fake)[before..], ["refund.created", "charge.refunded"]);
    let created = fake.hooks.next("refund.created").await?;
    assert_eq!(created.event["data"]["object"], first.body);
    let refunded = fake.hooks.next("charge.refunded").await?;
    assert_eq!(refunded.event["data"]["object"]["id"], charge.as_str());
    assert_eq!(refunded.event["data"]["object"]["amount_refunded"], 300);
    assert_eq!(
        refunded.event["data"]["previous_attributes"],
        json!({"amount_refunded": 0})
    );
    assert_eq!(refunded.event["request"]["idempotency_key"], "refund_1");

    // The rest, by payment intent and without an amount.
    let rest = fake
        .post("/v1/refunds", &format!("payment_intent={intent}"), None)
        .await?;
    assert_eq!(rest.status, 200, "{}", rest.body);
    assert_eq!(rest.body["amount"], 700);
    assert_eq!(rest.body["charge"], charge.as_str());
    assert_eq!(rest.body["reason"], Value::Null);
    assert_eq!(rest.body["metadata"], json!({}));
    let full = fake.get(&format!("/v1/charges/{charge}")).await?;
    assert_eq!(full.body["amount_refunded"], 1_000);
    assert_eq!(full.body["refunded"], true);
    assert_eq!(full.body["status"], "succeeded");
    let refunded = fake.hooks.next("charge.refunded").await?;
    assert_eq!(
        refunded.event["data"]["previous_attributes"],
        json!({"amount_refunded": 300, "refunded": false})
    );

    // Nothing is left to refund.
    for form in [format!("charge={charge}"), format!("payment_intent={intent}&amount=1")] {
        let again = fake.post("/v1/refunds", &form, None).await?;
        assert_eq!(again.status, 400, "{form}: {}", again.body);
        assert_eq!(again.body["error"]["type"], "invalid_request_error");
        assert_eq!(again.body["error"]["code"], "charge_already_refunded");
    }
    assert_eq!(fake.stripe.refunds().len(), 2);

    // Listed newest first, by charge or by payment intent; fetched one by one.
    let second = id(&rest.body)?;
    let by_charge = fake.get(&format!("/v1/refunds?charge={charge}")).await?;
    assert_eq!(by_charge.status, 200, "{}", by_charge.body);
    assert_eq!(by_charge.body["url"], "/v1/refunds");
    assert_eq!(ids(&by_charge.body), vec![second.clone(), refund.clone()]);
    let by_intent = fake
        .get(&format!("/v1/refunds?payment_intent={intent}&limit=1"))
        .await?;
    assert_eq!(ids(&by_intent.body), vec![second.clone()]);
    assert_eq!(by_intent.body["has_more"], true);
    let older = fake
        .get(&format!("/v1/refunds?charge={charge}&starting_after={second}"))
        .await?;
    assert_eq!(ids(&older.body), vec![refund.clone()]);
    let (_, other_charge) = paid_charge(&fake, 500).await?;
    let none = fake.get(&format!("/v1/refunds?charge={other_charge}")).await?;
    assert!(ids(&none.body).is_empty());
    let all = fake.get("/v1/refunds").await?;
    assert_eq!(ids(&all.body).len(), 2);
    let fetched = fake.get(&format!("/v1/refunds/{refund}?expand[]=charge")).await?;
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    assert_eq!(fetched.body["charge"]["id"], charge.as_str());
    assert_eq!(fetched.body["charge"]["refunded"], true);
    let missing = fake.get("/v1/refunds/re_missing").await?;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["code"], "resource_missing");
    let of_charge = fake.get(&format!("/v1/charges/{charge}/refunds")).await?;
    assert_eq!(ids(&of_charge.body), vec![second.clone(), refund.clone()]);
    let expanded = fake.get(&format!("/v1/charges/{charge}?expand[]=refunds")).await?;
    assert_eq!(expanded.body["refunds"]["total_count"], 2);
    assert_eq!(ids(&expanded.body["refunds"]), vec![second, refund]);
    assert_eq!(fake.stripe.refunds().len(), 2);
    Ok(())
}

#[tokio::test]
async fn a_refund_beyond_the_charge_or_of_nothing_is_refused_and_changes_nothing() -> Result<()> {
    let fake = Fake::start().await?;
    let (intent, charge) = paid_charge(&fake, 1_000).await?;
    let (customer, pm) = saved_card(&fake, "declined").await?;
    let declined = fake
        .post("/v1/payment_intents", &charge_form(&customer, &pm, 1_000), None)
        .await?;
    let failed_charge = declined.body["error"]["charge"].as_str().context("charge")?;
    let failed_intent = declined.body["error"]["payment_intent"]["id"]
        .as_str()
        .context("payment_intent")?;
    let charges = fake.stripe.charges();
    let events = kinds(&fake).len();

    let over = fake
        .post("/v1/refunds", &format!("charge={charge}&amount=1001"), Some("rf_over"))
        .await?;
    assert_eq!(over.status, 400, "{}", over.body);
    assert_eq!(over.body["error"]["type"], "invalid_request_error");
    assert_eq!(over.body["error"]["code"], "amount_too_large");
    assert_eq!(over.body["error"]["param"], "amount");
    assert_eq!(
        over.body["error"]["message"],
        "Refund amount (1001 usd) is greater than unrefunded amount on charge (1000 usd)"
    );
    for (form, param, code) in [
        (
            format!("charge={charge}&amount=0"),
            "amount",
            "parameter_invalid_integer",
        ),
        (format!("charge={charge}&reason=changed_mind"), "reason", ""),
        ("charge=ch_missing".to_owned(), "charge", "resource_missing"),
        (
            "payment_intent=pi_missing".to_owned(),
            "payment_intent",
            "resource_missing",
        ),
        (format!("charge={charge}&payment_intent={intent}"), "payment_intent", ""),
        ("amount=100".to_owned(), "charge", "parameter_missing"),
        (format!("charge={charge}&bogus=1"), "bogus", "parameter_unknown"),
        (format!("charge={failed_charge}"), "charge", "charge_not_refundable"),
        (
            format!("payment_intent={failed_intent}"),
            "payment_intent",
            "charge_not_refundable",
        ),
    ] {
        let reply = fake.post("/v1/refunds", &form, None).await?;
        assert_eq!(reply.status, 400, "{form}: {}", reply.body);
        assert_eq!(reply.body["error"]["param"], param, "{form}: {}", reply.body);
        if !code.is_empty() {
            assert_eq!(reply.body["error"]["code"], code, "{form}: {}", reply.body);
        }
    }
    assert!(fake.stripe.refunds().is_empty());
    assert_eq!(fake.stripe.charges(), charges);
    assert_eq!(kinds(&fake).len(), events);
    let listed = fake.get("/v1/refunds").await?;
    assert!(ids(&listed.body).is_empty());

    // A refused request saved nothing under its key: fixed, the key works.
    let fixed = fake
        .post("/v1/refunds", &format!("charge={charge}&amount=1000"), Some("rf_over"))
        .await?;
    assert_eq!(fixed.status, 200, "{}", fixed.body);
    assert!(!replayed(&fixed));
    assert_eq!(fake.stripe.refunds().len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_refund_lowers_what_transfers_can_take_from_the_charge() -> Result<()> {
    let fake = Fake::start().await?;
    let acct = fake.onboarded_account().await?;
    let (_, charge) = paid_charge(&fake, 1_000).await?;
    let transfer = |amount: i64| format!("amount={amount}&currency=usd&destination={acct}&source_transaction={charge}");
    let paid_out = fake.post("/v1/transfers", &transfer(400), None).await?;
    assert_eq!(paid_out.status, 200, "{}", paid_out.body);
    let refund = fake
        .post("/v1/refunds", &format!("charge={charge}&amount=500"), None)
        .await?;
    assert_eq!(refund.status, 200, "{}", refund.body);

    // 1000 charged, 500 refunded, 400 transferred: 100 is left.
    let over = fake.post("/v1/transfers", &transfer(101), None).await?;
    assert_eq!(over.status, 400, "{}", over.body);
    assert_eq!(over.body["error"]["code"], "balance_insufficient");
    let message = over.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("100 usd is available"), "{message}");
    let rest = fake.post("/v1/transfers", &transfer(100), None).await?;
    assert_eq!(rest.status, 200, "{}", rest.body);
    assert_eq!(fake.stripe.transfers().len(), 2);

    // The transferred money is the platform's to recover; Stripe still refunds the rest.
    let refund_rest = fake.post("/v1/refunds", &format!("charge={charge}"), None).await?;
    assert_eq!(refund_rest.status, 200, "{}", refund_rest.body);
    assert_eq!(refund_rest.body["amount"], 500);
    let none_left = fake.post("/v1/transfers", &transfer(1), None).await?;
    assert_eq!(none_left.body["error"]["code"], "balance_insufficient");
    Ok(())
}

#[tokio::test]
async fn error_after_commit_refunds_once_and_replays_the_500() -> Result<()> {
    let fake = Fake::start().await?;
    let (_, charge) = paid_charge(&fake, 2_000).await?;
    fake.stripe.inject(Fault {
        path_prefix: "/v1/refunds".to_owned(),
        kind: FaultKind::ErrorAfterCommit,
        times: 1,
    });
    let form = format!("charge={charge}&amount=800");
    let lost = fake.post("/v1/refunds", &form, Some("rf_lost")).await?;
    assert_eq!(lost.status, 500);
    assert_eq!(lost.body["error"]["type"], "api_error");
    let replay = fake.post("/v1/refunds", &form, Some("rf_lost")).await?;
    assert_eq!((replay.status, replayed(&replay)), (500, true));
    assert_eq!(replay.body, lost.body);

    // The refund happened once; the caller finds it by listing.
    let refunds = fake.stripe.refunds();
    assert_eq!(refunds.len(), 1);
    let listed = fake.get(&format!("/v1/refunds?charge={charge}")).await?;
    assert_eq!(ids(&listed.body), vec![id(&refunds[0])?]);
    let charged = fake.get(&format!("/v1/charges/{charge}")).await?;
    assert_eq!(charged.body["amount_refunded"], 800);
    fake.hooks.next("charge.refunded").await?;
    Ok(())
}
