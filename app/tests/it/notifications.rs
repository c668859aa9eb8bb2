//! Affiliate e-mails over real SMTP (a server on a loopback port speaking the protocol to the
//! system's lettre client): the whole sequence, retries, permanent failures, preferences, and a
//! replay of the event streams that sends nothing twice.

use crate::payouts::{enable_payouts, fund, onboard};
use crate::support::{Org, active_program, enroll, org, text};
use crate::system::TestSystem;
use amba_testkit::eventually;
use amba_testkit::smtp::{ReceivedMail, SmtpSink};
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
        mail.body().contains("Hello MailAnn,"),
        "greeted by the org's name: {}",
        mail.body()
    );
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
    let mail = mail_for(&sink, to, "You earned $24.69 commission in Acme Partners").await?;
    assert!(mail.body().contains("It is payable now"), "{}", mail.body());

    onboard(&sys, &ann).await?;
    mail_for(&sink, to, "Your payout account is ready").await?;
    enable_payouts(&sys, &owner, &[])?;
    fund(&sys, &owner, &program, "visa", "4242").await?;
    let run = owner
        .mcp
        .ok("amba_affiliate_payout_run", json!({"program_id": program}))
        .await?;
    assert_eq!(run["items"][0]["status"], "paid", "{run}");
    let mail = mail_for(&sink, to, "Payout of $24.69 sent for Acme Partners").await?;
    assert!(
        mail.body().contains("Commission earned: $24.69") && mail.body().contains("Sent to you: $24.69"),
        "the payout mail says how its amount was reached: {}",
        mail.body()
    );

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
    assert!(
        notifications(&owner).await?.is_empty(),
        "owners get none of these at once"
    );

    // Replaying the event streams through the consumer queues and sends nothing new.
    let replayed = replay_streams(&sys).await?;
    assert!(replayed >= 6, "{replayed} events replayed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sink.received().len(), 6);
    assert_eq!(notifications(&ann).await?.len(), 6);

    // The owner's summary of the run (instant by default: within 10 minutes).
    let pool = sys.service_pool("notification").await?;
    entries(&pool, &owner, "payout_run_summary", 1).await?;
    amba_notification::jobs::build_digests(&pool, after_every_period()).await?;
    pool.close().await;
    let mail = mail_for(&sink, "mailowner@example.com", "payout run").await?;
    let body = mail.body();
    assert!(body.contains("1 affiliate paid $24.69"), "{body}");
    assert!(body.contains("Charged to your payment method: $24.69"), "{body}");
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
        budgets: sys.settings.mail_budgets,
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

/// A time after every period that holds commissions recorded now (a week and a day on).
fn after_every_period() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::days(8)
}

/// Commissions of `org` waiting for a digest, once `count` of them are recorded.
async fn pending(sys: &TestSystem, org: &Org, count: i64) -> anyhow::Result<()> {
    let pool = sys.service_pool("notification").await?;
    entries(&pool, org, "conversion_approved", count).await?;
    pool.close().await;
    Ok(())
}

/// Waits until `org` has `count` digest entries of `kind`.
async fn entries(pool: &sqlx::PgPool, org: &Org, kind: &str, count: i64) -> anyhow::Result<()> {
    eventually(WAIT, &format!("{count} {kind} entries for the digest"), || async {
        let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM digest_entries WHERE org_id = $1 AND kind = $2")
            .bind(&org.id)
            .bind(kind)
            .fetch_one(pool)
            .await?;
        Ok((recorded == count).then_some(()))
    })
    .await
}

/// Digests built for `org`.
async fn digests(pool: &sqlx::PgPool, org: &Org) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM digests WHERE org_id = $1")
        .bind(&org.id)
        .fetch_one(pool)
        .await?)
}

/// Mails to `to` whose subject contains `needle`.
fn count(sink: &SmtpSink, to: &str, needle: &str) -> usize {
    sink.received()
        .iter()
        .filter(|m| m.to.iter().any(|t| t == to) && m.header("Subject").is_some_and(|s| s.contains(needle)))
        .count()
}

#[tokio::test]
async fn the_first_commission_is_mailed_at_once_and_later_ones_in_one_exact_digest() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let sys = TestSystem::start_with(&[("AMBA_SMTP_URL", &sink.url())]).await?;
    let owner = org(&sys, "DigestOwner").await?;
    let ann = org(&sys, "DigestAnn").await?;
    let to = "digestann@example.com";
    let program = active_program(&owner, json!({"name": "Digest Partners", "hold_days": 0})).await?;
    let code = text(&enroll(&owner, &ann, &program, None).await?["code"]).to_owned();
    let got = ann.mcp.ok("amba_affiliate_notifications_get", json!({})).await?;
    let approved = got["preferences"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["kind"] == "conversion_approved"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(approved["frequency"], "daily", "{got}");

    report(&owner, &program, "d-0", 10_000, &code).await?;
    mail_for(&sink, to, "You earned $20.00 commission in Digest Partners").await?;
    // 40 more: 20 % of 10.05 … 12.00 is 2.01 … 2.40, 88.20 in all.
    for i in 1..=40_i64 {
        report(&owner, &program, &format!("d-{i}"), 1_000 + 5 * i, &code).await?;
    }
    pending(&sys, &ann, 40).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&sink, to, "earned"), 1, "later commissions wait for the digest");
    assert_eq!(count(&sink, to, "Your summary"), 0);

    // Two digest jobs racing for the ended periods build one digest; a third run finds none.
    let pool = sys.service_pool("notification").await?;
    let at = after_every_period();
    let (a, b) = tokio::join!(
        amba_notification::jobs::build_digests(&pool, at),
        amba_notification::jobs::build_digests(&pool, at)
    );
    // (The service's own clock may have built it first, across a midnight.)
    assert!(a? + b? <= 1);
    assert_eq!(amba_notification::jobs::build_digests(&pool, at).await?, 0);
    assert_eq!(digests(&pool, &ann).await?, 1);
    pool.close().await;
    let mail = mail_for(&sink, to, ": 40 approved sales").await?;
    let body = mail.body();
    assert!(
        body.contains("\"Digest Partners\": 40 approved sales, commission $88.20"),
        "{body}"
    );
    assert!(body.contains("Largest sales: $12.00, $11.95, $11.90"), "{body}");
    assert!(!mail.data.contains("d-4"), "no external_id: {}", mail.data);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&sink, to, "Your summary"), 1);
    sys.stop().await
}

/// Sales reported all at once reach the notification service as groups applied together: an
/// affiliate's first commission inside such a group is still mailed once, at once, and every
/// later one is in the digest exactly once.
#[tokio::test]
async fn a_burst_of_sales_mails_each_affiliate_s_first_commission_once_and_digests_the_rest() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let sys = TestSystem::start_with(&[("AMBA_SMTP_URL", &sink.url())]).await?;
    let owner = org(&sys, "BurstOwner").await?;
    let program = active_program(&owner, json!({"name": "Burst Partners", "hold_days": 0})).await?;
    let mut affiliates = Vec::new();
    for name in ["BurstAnn", "BurstBob"] {
        let affiliate = org(&sys, name).await?;
        let code = text(&enroll(&owner, &affiliate, &program, None).await?["code"]).to_owned();
        affiliates.push((affiliate, code, format!("{}@example.com", name.to_lowercase())));
    }
    // 25 sales of $50.00 (20 %: $10.00 commission) per affiliate, reported concurrently.
    let (owner, program) = (&owner, program.as_str());
    let reports = affiliates.iter().flat_map(|(_, code, _)| {
        (0..25).map(move |i| async move { report(owner, program, &format!("{code}-{i}"), 5_000, code).await })
    });
    for reported in futures::future::join_all(reports).await {
        reported?;
    }
    let pool = sys.service_pool("notification").await?;
    for (affiliate, _, to) in &affiliates {
        mail_for(&sink, to, "You earned $10.00 commission in Burst Partners").await?;
        entries(&pool, affiliate, "conversion_approved", 24).await?;
        let sum: i64 = sqlx::query_scalar(
            "SELECT sum(commission_minor)::int8 FROM digest_entries WHERE org_id = $1 AND kind = 'conversion_approved'",
        )
        .bind(&affiliate.id)
        .fetch_one(&pool)
        .await?;
        assert_eq!(sum, 24 * 1_000, "every later commission once, exactly");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (_, _, to) in &affiliates {
        assert_eq!(
            count(&sink, to, "earned"),
            1,
            "one e-mail for the first commission of {to}"
        );
    }
    pool.close().await;
    sys.stop().await
}

#[tokio::test]
async fn instant_coalesces_off_records_nothing_and_bad_frequencies_are_refused() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let sys = TestSystem::start_with(&[("AMBA_SMTP_URL", &sink.url())]).await?;
    let owner = org(&sys, "FreqOwner").await?;
    let ann = org(&sys, "FreqAnn").await?;
    let to = "freqann@example.com";
    let refused = ann
        .mcp
        .err(
            "amba_affiliate_notifications_update",
            json!({"conversion_approved_frequency": "hourly"}),
        )
        .await?;
    assert!(
        refused.to_string().contains("conversion_approved_frequency"),
        "{refused}"
    );
    let set = ann
        .mcp
        .ok(
            "amba_affiliate_notifications_update",
            json!({"conversion_approved_frequency": "instant"}),
        )
        .await?;
    assert!(
        set["preferences"].as_array().is_some_and(|p| p
            .iter()
            .any(|p| p["kind"] == "conversion_approved" && p["frequency"] == "instant")),
        "{set}"
    );
    let program = active_program(&owner, json!({"name": "Freq Partners", "hold_days": 0})).await?;
    let code = text(&enroll(&owner, &ann, &program, None).await?["code"]).to_owned();
    report(&owner, &program, "f-0", 10_000, &code).await?;
    mail_for(&sink, to, "You earned $20.00").await?;
    for i in 1..=3 {
        report(&owner, &program, &format!("f-{i}"), 10_000, &code).await?;
    }
    pending(&sys, &ann, 3).await?;
    // Instant: one 10-minute window (or two, when the reports straddle its end) for all three.
    let pool = sys.service_pool("notification").await?;
    amba_notification::jobs::build_digests(&pool, after_every_period()).await?;
    let built = usize::try_from(digests(&pool, &ann).await?)?;
    assert!((1..=2).contains(&built), "{built}");
    eventually(WAIT, "the instant summaries", || async {
        Ok((count(&sink, to, "Your summary") == built).then_some(()))
    })
    .await?;

    // Off: later commissions are not even recorded, so no digest can come.
    ann.mcp
        .ok(
            "amba_affiliate_notifications_update",
            json!({"conversion_approved_frequency": "off"}),
        )
        .await?;
    let got = ann.mcp.ok("amba_affiliate_notifications_get", json!({})).await?;
    assert!(
        got["preferences"].as_array().is_some_and(|p| p
            .iter()
            .any(|p| p["kind"] == "conversion_approved" && p["frequency"] == "off" && p["enabled"] == false)),
        "{got}"
    );
    report(&owner, &program, "f-9", 10_000, &code).await?;
    eventually(WAIT, "the commission booked", || async {
        let balance = ann.mcp.ok("amba_affiliate_my_balance_get", json!({})).await?;
        Ok((balance["payable_minor"] == 10_000).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    pending(&sys, &ann, 3).await?;
    assert_eq!(
        amba_notification::jobs::build_digests(&pool, after_every_period()).await?,
        0
    );
    pool.close().await;
    assert_eq!(count(&sink, to, "Your summary"), built);
    sys.stop().await
}

#[tokio::test]
async fn one_click_unsubscribe_turns_that_kind_off_without_a_login() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let sys = TestSystem::start_with(&[
        ("AMBA_SMTP_URL", &sink.url()),
        ("AMBA_LINK_SECRET", "an-unsubscribe-test-secret-of-32-chars"),
    ])
    .await?;
    let owner = org(&sys, "UnsubOwner").await?;
    let ann = org(&sys, "UnsubAnn").await?;
    let program = active_program(&owner, json!({"name": "Unsub Partners"})).await?;
    owner
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program, "affiliate_org_id": ann.id}),
        )
        .await?;
    let mail = mail_for(&sink, "unsubann@example.com", "invited").await?;
    let link = mail.header("List-Unsubscribe").unwrap_or_default();
    let url = link.trim_matches(['<', '>']).to_owned();
    assert!(
        url.starts_with(&format!("{}/unsubscribe/{}.invited.", sys.settings.public_url, ann.id)),
        "{link}"
    );
    assert_eq!(
        mail.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );

    let http = reqwest::Client::new();
    // The page only offers a button that POSTs: a GET (a link scanner) turns nothing off.
    let page = http.get(&url).send().await?;
    assert_eq!(page.status(), 200);
    assert!(page.text().await?.contains("method=\"post\""));
    let invited_enabled = || async {
        let got = ann.mcp.ok("amba_affiliate_notifications_get", json!({})).await?;
        anyhow::Ok(
            got["preferences"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["kind"] == "invited"))
                .map(|p| p["enabled"].clone())
                .unwrap_or_default(),
        )
    };
    assert_eq!(invited_enabled().await?, true);
    // One click, no login, as a mail client sends it; the second is a no-op.
    for _ in 0..2 {
        let posted = http
            .post(&url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await?;
        assert_eq!(posted.status(), 200);
        assert!(posted.text().await?.contains("invited"));
    }
    assert_eq!(invited_enabled().await?, false);
    // Another kind or another org in an altered token: refused.
    let forged = url.replace(".invited.", ".payout_sent.");
    assert_eq!(http.post(&forged).send().await?.status(), 404);
    let forged = url.replace(&ann.id, &owner.id);
    assert_eq!(http.post(&forged).send().await?.status(), 404);
    sys.stop().await
}

#[tokio::test]
async fn the_html_part_escapes_what_others_wrote() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let sys = TestSystem::start_with(&[("AMBA_SMTP_URL", &sink.url())]).await?;
    let owner = org(&sys, "HtmlOwner").await?;
    let ann = org(&sys, "HtmlAnn").await?;
    let program = active_program(&owner, json!({"name": "<script>alert(1)</script>"})).await?;
    owner
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program, "affiliate_org_id": ann.id}),
        )
        .await?;
    let mail = mail_for(&sink, "htmlann@example.com", "invited").await?;
    let body = mail.body();
    assert!(
        mail.header("Content-Type")
            .is_some_and(|t| t.starts_with("multipart/alternative")),
        "{}",
        mail.data
    );
    let (plain, html) = body
        .split_once("Content-Type: text/html")
        .ok_or_else(|| anyhow::anyhow!("no HTML part: {body}"))?;
    assert!(plain.contains("Content-Type: text/plain") && plain.contains("\"<script>alert(1)</script>\""));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"), "{html}");
    assert!(!html.contains("<script>"), "{html}");
    sys.stop().await
}

/// (program_id, period) of `org`'s digest entries of `kind`.
async fn periods(pool: &sqlx::PgPool, org: &Org, kind: &str) -> anyhow::Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT program_id, period FROM digest_entries WHERE org_id = $1 AND kind = $2 ORDER BY program_id, period",
    )
    .bind(&org.id)
    .bind(kind)
    .fetch_all(pool)
    .await?)
}

/// The setting of `kind` in a preferences reply.
fn setting(reply: &Value, kind: &str) -> Value {
    reply["preferences"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["kind"] == kind))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_program_s_own_settings_win_over_the_org_s() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let sys = TestSystem::start_with(&[("AMBA_SMTP_URL", &sink.url())]).await?;
    let owner = org(&sys, "ScopeOwner").await?;
    let ann = org(&sys, "ScopeAnn").await?;
    let quiet = active_program(&owner, json!({"name": "Quiet", "hold_days": 0})).await?;
    let busy = active_program(&owner, json!({"name": "Busy", "hold_days": 0})).await?;
    let quiet_code = text(&enroll(&owner, &ann, &quiet, None).await?["code"]).to_owned();
    let busy_code = text(&enroll(&owner, &ann, &busy, None).await?["code"]).to_owned();

    let set = ann
        .mcp
        .ok(
            "amba_affiliate_notifications_update",
            json!({"program_id": busy, "conversion_approved_frequency": "instant"}),
        )
        .await?;
    assert_eq!(set["program_id"], json!(busy));
    let approved = setting(&set, "conversion_approved");
    assert_eq!(
        (approved["frequency"].clone(), approved["scope"].clone()),
        (json!("instant"), json!("program"))
    );
    assert_eq!(setting(&set, "clawback")["scope"], "default", "{set}");
    let own = ann.mcp.ok("amba_affiliate_notifications_get", json!({})).await?;
    let approved = setting(&own, "conversion_approved");
    assert_eq!(
        (approved["frequency"].clone(), approved["scope"].clone()),
        (json!("daily"), json!("default"))
    );
    ann.mcp
        .ok(
            "amba_affiliate_notifications_update",
            json!({"program_id": quiet, "conversion_approved": false}),
        )
        .await?;
    let unknown = ann
        .mcp
        .err(
            "amba_affiliate_notifications_update",
            json!({"program_id": "prg_nope", "conversion_approved": false}),
        )
        .await?;
    assert!(unknown.to_string().contains("NOT_FOUND"), "{unknown}");

    // Quiet is off: its later commissions are not recorded; Busy's are, in 10-minute windows.
    for (program, code, key) in [(&quiet, &quiet_code, "q"), (&busy, &busy_code, "b")] {
        for i in 0..3 {
            report(&owner, program, &format!("{key}-{i}"), 10_000, code).await?;
        }
    }
    let pool = sys.service_pool("notification").await?;
    entries(&pool, &ann, "conversion_approved", 2).await?;
    eventually(WAIT, "every commission booked", || async {
        let balance = ann.mcp.ok("amba_affiliate_my_balance_get", json!({})).await?;
        Ok((balance["payable_minor"] == 12_000).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let recorded = periods(&pool, &ann, "conversion_approved").await?;
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert!(
        recorded
            .iter()
            .all(|(program, period)| *program == busy && period.starts_with("instant:")),
        "{recorded:?}"
    );
    pool.close().await;
    sys.stop().await
}

#[tokio::test]
async fn owners_hear_of_applications_and_waiting_approvals_affiliates_of_rejections() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let sys = TestSystem::start_with(&[("AMBA_SMTP_URL", &sink.url())]).await?;
    let owner = org(&sys, "DeskOwner").await?;
    let cara = org(&sys, "DeskCara").await?;
    let program = active_program(
        &owner,
        json!({"name": "Desk Partners", "approval_mode": "manual", "hold_days": 0}),
    )
    .await?;
    for name in ["DeskAnn", "DeskBob"] {
        let applicant = org(&sys, name).await?;
        let applied = applicant
            .mcp
            .ok("amba_affiliate_my_program_apply", json!({"program_id": program}))
            .await?;
        assert_eq!(applied["status"], "pending", "{applied}");
    }
    let code = text(&enroll(&owner, &cara, &program, None).await?["code"]).to_owned();
    let kept = report(&owner, &program, "w-1", 10_000, &code).await?;
    let decided = report(&owner, &program, "w-2", 5_000, &code).await?;
    let pool = sys.service_pool("notification").await?;
    entries(&pool, &owner, "approvals_waiting", 2).await?;
    owner
        .mcp
        .ok(
            "amba_affiliate_conversion_reject",
            json!({"conversion_id": decided["conversion_id"], "reason": "duplicate order"}),
        )
        .await?;
    // Decided before its day was up: no longer waiting.
    entries(&pool, &owner, "approvals_waiting", 1).await?;
    entries(&pool, &cara, "conversion_rejected", 1).await?;
    entries(&pool, &owner, "application_received", 2).await?;
    let waiting = periods(&pool, &owner, "approvals_waiting").await?;
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).date_naive();
    assert!(
        waiting
            .iter()
            .all(|(_, period)| *period == format!("daily:{tomorrow}") || *period > format!("daily:{tomorrow}")),
        "a conversion waits a day before it is news: {waiting:?}"
    );

    amba_notification::jobs::build_digests(&pool, after_every_period()).await?;
    pool.close().await;
    let owner_mails: Vec<String> = eventually(WAIT, "the owner's summaries", || async {
        let mails: Vec<String> = sink
            .received()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t == "deskowner@example.com"))
            .map(|m| m.body())
            .collect();
        let all = mails.join("\n");
        Ok((all.contains("new application") && all.contains("waiting")).then_some(mails))
    })
    .await?;
    let all = owner_mails.join("\n");
    assert!(
        all.contains("\"Desk Partners\": 2 new applications: DeskAnn, DeskBob"),
        "{all}"
    );
    assert!(all.contains("\"Desk Partners\": 1 conversion waiting"), "{all}");
    assert!(all.contains("amba_affiliate_affiliate_approve"), "{all}");
    let mail = mail_for(&sink, "deskcara@example.com", "rejected").await?;
    let body = mail.body();
    assert!(body.contains("1 rejected sale worth $50.00"), "{body}");
    assert!(body.contains("\"duplicate order\" (1)"), "{body}");
    assert!(!mail.data.contains("w-2"), "no external_id: {}", mail.data);
    // The kept one is still pending for the owner to decide.
    let listed = owner
        .mcp
        .ok(
            "amba_affiliate_conversions_list",
            json!({"program_id": program, "status": "pending"}),
        )
        .await?;
    assert_eq!(listed["conversions"][0]["conversion_id"], kept["conversion_id"]);
    sys.stop().await
}

#[tokio::test]
async fn send_budgets_refuse_floods_and_say_so() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let sys = TestSystem::start_with(&[
        ("AMBA_SMTP_URL", &sink.url()),
        ("AMBA_MAIL_INVITATIONS_PER_HOUR", "2"),
        ("AMBA_MAIL_PER_RECIPIENT_PER_DAY", "2"),
    ])
    .await?;
    let owner = org(&sys, "BudgetOwner").await?;
    let program = active_program(&owner, json!({"name": "Budget Partners", "hold_days": 0})).await?;
    let mut invited = Vec::new();
    for name in ["BudgetAnn", "BudgetBob", "BudgetCid"] {
        let affiliate = org(&sys, name).await?;
        let invitation = owner
            .mcp
            .ok(
                "amba_affiliate_invite",
                json!({"program_id": program, "affiliate_org_id": affiliate.id}),
            )
            .await?;
        invited.push((affiliate, invitation));
    }
    // The third invitation this hour is over the owner's budget: kept as refused, not sent.
    let (cid, _) = &invited[2];
    let refused = eventually(WAIT, "the third invitation refused", || async {
        Ok(notifications(cid).await?.into_iter().find(|n| n["status"] == "refused"))
    })
    .await?;
    assert_eq!(refused["kind"], "invited");
    assert!(
        text(&refused["last_error"]).contains("2 invitations per organization per hour"),
        "{refused}"
    );
    mail_for(&sink, "budgetann@example.com", "invited").await?;
    mail_for(&sink, "budgetbob@example.com", "invited").await?;

    // Ann: the invitation and the activation fill her day; the first commission is refused.
    let (ann, invitation) = &invited[0];
    ann.mcp
        .ok(
            "amba_affiliate_my_invite_accept",
            json!({"enrollment_id": invitation["enrollment_id"]}),
        )
        .await?;
    mail_for(&sink, "budgetann@example.com", "You are now an affiliate").await?;
    report(&owner, &program, "b-1", 10_000, text(&invitation["code"])).await?;
    let refused = eventually(WAIT, "the commission e-mail refused", || async {
        Ok(notifications(ann)
            .await?
            .into_iter()
            .find(|n| n["kind"] == "conversion_approved" && n["status"] == "refused"))
    })
    .await?;
    assert!(
        text(&refused["last_error"]).contains("2 e-mails per organization per day"),
        "{refused}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&sink, "budgetcid@example.com", "invited"), 0);
    assert_eq!(count(&sink, "budgetann@example.com", "earned"), 0);
    sys.stop().await
}
