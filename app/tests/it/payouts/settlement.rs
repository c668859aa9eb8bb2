//! Scheduled settlement by ticks, and Stripe's webhooks as the edge takes them.

use super::*;

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
