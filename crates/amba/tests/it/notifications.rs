//! Affiliate e-mails over real SMTP (a server on a loopback port speaking the protocol to the
//! system's lettre client): the whole sequence, retries, permanent failures, preferences, and a
//! replay of the event streams that sends nothing twice.

use crate::payouts::{enable_payouts, fund, onboard};
use crate::support::{Org, active_program, enroll, org, text};
use amba_testkit::smtp::{ReceivedMail, SmtpSink};
use amba_testkit::{TestSystem, eventually};
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// The mail the sink accepted for `to` whose subject contains `needle`.
async fn mail_for(sink: &SmtpSink, to: &str, needle: &str) -> anyhow::Result<ReceivedMail> {
    eventually(WAIT, needle, || async {
        Ok(sink
            .received()
            .into_iter()
            .find(|m| m.to.iter().any(|t| t == to) && m.header("Subject").is_some_and(|s| s.contains(needle))))
    })
    .await
}

async fn report(owner: &Org, program: &str, external_id: &str, amount: i64, code: &str) -> anyhow::Result<Value> {
    eventually(WAIT, "the code is known to attribution", || async {
        Ok(owner
            .mcp
            .ok(
                "amba_affiliate_conversion_report",
                json!({"program_id": program, "project_id": "shop", "external_id": external_id,
                       "amount_minor": amount, "currency": "USD", "code": code}),
            )
            .await
            .ok())
    })
    .await
}

async fn notifications(org: &Org) -> anyhow::Result<Vec<Value>> {
    let listed = org.mcp.ok("amba_affiliate_my_notifications_list", json!({})).await?;
    Ok(listed["notifications"].as_array().cloned().unwrap_or_default())
}

#[tokio::test]
async fn invite_activation_approval_payout_and_clawback_each_send_one_email() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let sys = TestSystem::with_stripe(&[
        ("AMBA_SMTP_URL", &sink.url()),
        ("ORG_PAYOUTS_LIVE", "true"),
        ("AMBA_PUBLIC_URL", "https://amba.example"),
    ])
    .await?;
    let owner = org(&sys, "MailOwner").await?;
    let ann = org(&sys, "MailAnn").await?;
    let to = "mailann@example.com";
    let program = active_program(&owner, json!({"name": "Acme Partners", "hold_days": 0})).await?;

    let invited = owner
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program, "affiliate_org_id": ann.id}),
        )
        .await?;
    let mail = mail_for(&sink, to, "invited to the Acme Partners").await?;
    assert!(mail.body().contains("amba_affiliate_my_invite_accept"), "{}", mail.data);
    assert!(
        mail.header("From").is_some_and(|f| f.contains("no-reply@amba.example")),
        "{}",
        mail.data
    );
    assert!(
        mail.header("Message-ID")
            .is_some_and(|id| id.ends_with("@amba.example>"))
    );
    assert_eq!(
        mail.header("List-Unsubscribe").as_deref(),
        Some("<https://amba.example/notifications>")
    );
    assert!(mail.header("Date").is_some());

    ann.mcp
        .ok(
            "amba_affiliate_my_invite_accept",
            json!({"enrollment_id": invited["enrollment_id"]}),
        )
        .await?;
    let code = text(&invited["code"]).to_owned();
    let mail = mail_for(&sink, to, "You are now an affiliate of Acme Partners").await?;
    assert!(
        mail.body().contains(&format!("https://amba.example/r/{code}")),
        "{}",
        mail.body()
    );

    // 20 % of 123.45 is 24.69.
    report(&owner, &program, "o-1", 12_345, &code).await?;
    mail_for(&sink, to, "You earned $24.69 commission in Acme Partners").await?;

    onboard(&sys, &ann).await?;
    mail_for(&sink, to, "Your payout account is ready").await?;
    enable_payouts(&sys, &owner, &[])?;
    fund(&sys, &owner, &program, "visa", "4242").await?;
    let run = owner
        .mcp
        .ok("amba_affiliate_payout_run", json!({"program_id": program}))
        .await?;
    assert_eq!(run["items"][0]["status"], "paid", "{run}");
    mail_for(&sink, to, "Payout of $24.69 sent for Acme Partners").await?;

    // A refund after the payout: reversed, and carried forward as debt.
    let conversions = owner
        .mcp
        .ok("amba_affiliate_conversions_list", json!({"program_id": program}))
        .await?;
    let conversion_id = text(&conversions["conversions"][0]["conversion_id"]).to_owned();
    owner
        .mcp
        .ok(
            "amba_affiliate_conversion_clawback",
            json!({"conversion_id": conversion_id, "reason": "refund", "idempotency_key": "r-1"}),
        )
        .await?;
    let mail = mail_for(&sink, to, "A refund reversed $24.69 of your commission").await?;
    assert!(mail.body().contains("carried forward"), "{}", mail.body());

    // Exactly one of each, to the affiliate only; the log shows them as sent.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let received = sink.received();
    assert_eq!(
        received.len(),
        6,
        "{:?}",
        received.iter().map(|m| m.header("Subject")).collect::<Vec<_>>()
    );
    assert!(received.iter().all(|m| m.to == [to.to_owned()]));
    let log = notifications(&ann).await?;
    assert_eq!(log.len(), 6);
    assert!(log.iter().all(|n| n["status"] == "sent"), "{log:?}");
    assert!(notifications(&owner).await?.is_empty(), "owners get none of these");

    // Replaying the event streams through the consumer queues and sends nothing new.
    let replayed = replay_streams(&sys).await?;
    assert!(replayed >= 6, "{replayed} events replayed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sink.received().len(), 6);
    assert_eq!(notifications(&ann).await?.len(), 6);
    sys.stop().await
}

/// Feeds every event of the streams the notification service reads to its handler again, each
/// in its own transaction, bypassing the inbox: only the (event, template) row can stop a
/// second e-mail.
async fn replay_streams(sys: &TestSystem) -> anyhow::Result<usize> {
    use amba_bus::consumer::{Delivery, Handler};
    use async_nats::jetstream::consumer::pull;
    use futures::StreamExt;
    let pool = sys.service_pool("notification").await?;
    let handler = amba_notification::consumers::Events {
        public_url: sys.settings.public_url.clone(),
    };
    let mut replayed = 0;
    for stream in ["enrollment", "attribution", "commission", "payout"] {
        let stream = sys.bus.js.get_stream(sys.bus.ns.events_stream(stream)).await?;
        let consumer = stream.create_consumer(pull::Config::default()).await?;
        let mut batch = consumer
            .fetch()
            .max_messages(1_000)
            .expires(Duration::from_millis(500))
            .messages()
            .await?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
            let event_id = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string())
                .unwrap_or_default();
            let delivery = Delivery {
                event_id,
                subject: message.subject.to_string(),
                payload: message.payload.clone(),
                traceparent: String::new(),
                attempt: 1,
            };
            let mut tx = pool.begin().await?;
            handler
                .handle(&mut tx, &delivery)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            tx.commit().await?;
            replayed += 1;
        }
    }
    pool.close().await;
    Ok(replayed)
}

#[tokio::test]
async fn a_temporary_refusal_is_retried_and_a_permanent_one_recorded_without_touching_money() -> anyhow::Result<()> {
    // The first message is refused for now (451), the next accepted, every later one refused for good (550).
    let sink = SmtpSink::scripted(vec![451, 250], 550).await?;
    let sys = TestSystem::start_with(&[("AMBA_SMTP_URL", &sink.url())]).await?;
    let owner = org(&sys, "RetryOwner").await?;
    let ann = org(&sys, "RetryAnn").await?;
    let program = active_program(&owner, json!({"hold_days": 0})).await?;
    let invited = owner
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program, "affiliate_org_id": ann.id}),
        )
        .await?;
    // The invitation: 451, then delivered once on retry.
    let mail = mail_for(&sink, "retryann@example.com", "invited").await?;
    assert!(mail.body().contains("amba_affiliate_my_invite_accept"));
    let log = eventually(WAIT, "the invitation logged as sent", || async {
        let log = notifications(&ann).await?;
        Ok(log.first().filter(|n| n["status"] == "sent").cloned())
    })
    .await?;
    assert_eq!(log["attempts"], 2);
    // Activation: refused for good, recorded with the reason; the money path is untouched.
    ann.mcp
        .ok(
            "amba_affiliate_my_invite_accept",
            json!({"enrollment_id": invited["enrollment_id"]}),
        )
        .await?;
    let failed = eventually(WAIT, "the activation e-mail failed", || async {
        let log = notifications(&ann).await?;
        Ok(log
            .into_iter()
            .find(|n| n["kind"] == "enrollment_activated" && n["status"] == "failed"))
    })
    .await?;
    assert!(text(&failed["last_error"]).contains("550"), "{failed}");
    report(&owner, &program, "o-1", 10_000, text(&invited["code"])).await?;
    eventually(WAIT, "the commission booked", || async {
        let balance = ann.mcp.ok("amba_affiliate_my_balance_get", json!({})).await?;
        Ok((balance["payable_minor"] == 2000).then_some(()))
    })
    .await?;
    assert_eq!(sink.received().len(), 1, "only the retried invitation was accepted");
    sys.stop().await
}

#[tokio::test]
async fn an_org_that_turned_approvals_off_gets_none() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let sys = TestSystem::start_with(&[("AMBA_SMTP_URL", &sink.url())]).await?;
    let owner = org(&sys, "PrefOwner").await?;
    let ann = org(&sys, "PrefAnn").await?;
    let prefs = ann
        .mcp
        .ok(
            "amba_affiliate_notifications_update",
            json!({"conversion_approved": false}),
        )
        .await?;
    let approved = prefs["preferences"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["kind"] == "conversion_approved"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(approved["enabled"], false);
    let got = ann.mcp.ok("amba_affiliate_notifications_get", json!({})).await?;
    assert_eq!(got, prefs);
    let program = active_program(&owner, json!({"hold_days": 0})).await?;
    let enrolled = enroll(&owner, &ann, &program, None).await?;
    report(&owner, &program, "o-1", 10_000, text(&enrolled["code"])).await?;
    let log = eventually(WAIT, "the approval handled", || async {
        let log = notifications(&ann).await?;
        Ok(log.iter().any(|n| n["kind"] == "conversion_approved").then_some(log))
    })
    .await?;
    let approval = log
        .iter()
        .find(|n| n["kind"] == "conversion_approved")
        .cloned()
        .unwrap_or_default();
    assert_eq!(approval["status"], "suppressed");
    mail_for(&sink, "prefann@example.com", "You are now an affiliate").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        sink.received()
            .iter()
            .all(|m| !m.header("Subject").unwrap_or_default().contains("earned")),
        "no approval e-mail"
    );
    sys.stop().await
}
