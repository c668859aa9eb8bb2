//! Injected faults: the outcomes a payout engine must survive.

use std::time::{Duration, Instant};

use amba_stripe_fake::{Fault, FaultKind};
use anyhow::{Context, Result, ensure};

use crate::support::{Fake, SECRET_KEY, client, ids, reply};

fn fault(kind: FaultKind, times: u32) -> Fault {
    Fault {
        path_prefix: "/v1/transfers".to_owned(),
        kind,
        times,
    }
}

#[tokio::test]
async fn error_after_commit_answers_500_replays_it_and_keeps_one_transfer() -> Result<()> {
    let fake = Fake::start().await?;
    let acct = fake.onboarded_account().await?;
    let form = format!("amount=900&currency=usd&destination={acct}&transfer_group=run_7");
    fake.stripe.inject(fault(FaultKind::ErrorAfterCommit, 1));

    let failed = fake.post("/v1/transfers", &form, Some("pit_7")).await?;
    assert_eq!(failed.status, 500);
    assert_eq!(failed.body["error"]["type"], "api_error");
    // The work happened: stored, listable, announced.
    let stored = fake.stripe.transfers();
    assert_eq!(stored.len(), 1);
    let listed = fake.get("/v1/transfers?transfer_group=run_7").await?;
    assert_eq!(
        ids(&listed.body),
        vec![stored[0]["id"].as_str().context("id")?.to_owned()]
    );
    fake.hooks.next("transfer.created").await?;

    // The same key replays the 500 (the fault is used up; this is the saved answer).
    let replay = fake.post("/v1/transfers", &form, Some("pit_7")).await?;
    assert_eq!(replay.status, 500);
    assert_eq!(replay.body, failed.body);
    assert_eq!(
        replay.headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(fake.stripe.transfers().len(), 1);

    // A new key works normally again.
    let fresh = fake.post("/v1/transfers", &form, Some("pit_8")).await?;
    assert_eq!(fresh.status, 200);
    assert_eq!(fake.stripe.transfers().len(), 2);
    Ok(())
}

#[tokio::test]
async fn timeout_does_the_work_and_holds_the_answer() -> Result<()> {
    let fake = Fake::start().await?;
    let acct = fake.onboarded_account().await?;
    fake.stripe.inject(fault(FaultKind::Timeout(Duration::from_secs(2)), 1));

    let impatient = client(Some(Duration::from_millis(300)))?;
    let started = Instant::now();
    let result = impatient
        .post(fake.url("/v1/transfers"))
        .bearer_auth(SECRET_KEY)
        .header("idempotency-key", "pit_slow")
        .body(format!(
            "amount=640&currency=usd&destination={acct}&transfer_group=run_slow"
        ))
        .send()
        .await;
    let err = result.err().context("the client should have timed out")?;
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // The transfer exists even though the caller never heard back.
    assert_eq!(fake.stripe.transfers().len(), 1);
    let listed = fake.get("/v1/transfers?transfer_group=run_slow").await?;
    assert_eq!(ids(&listed.body).len(), 1);
    assert_eq!(listed.body["data"][0]["amount"], 640);

    // A patient client retrying with the same key gets the saved transfer at once.
    let retry = fake
        .post(
            "/v1/transfers",
            &format!("amount=640&currency=usd&destination={acct}&transfer_group=run_slow"),
            Some("pit_slow"),
        )
        .await?;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.body["id"], listed.body["data"][0]["id"]);
    assert_eq!(fake.stripe.transfers().len(), 1);

    // And an unhurried client does receive the delayed answer.
    fake.stripe
        .inject(fault(FaultKind::Timeout(Duration::from_millis(300)), 1));
    let started = Instant::now();
    let slow = fake
        .post(
            "/v1/transfers",
            &format!("amount=10&currency=usd&destination={acct}"),
            None,
        )
        .await?;
    assert_eq!(slow.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    Ok(())
}

#[tokio::test]
async fn rate_limited_requests_do_nothing_and_save_nothing() -> Result<()> {
    let fake = Fake::start().await?;
    let acct = fake.onboarded_account().await?;
    let form = format!("amount=100&currency=usd&destination={acct}");
    fake.stripe.inject(fault(FaultKind::RateLimited, 2));

    // GETs are not affected and do not use the fault up.
    let list = fake.get("/v1/transfers").await?;
    assert_eq!(list.status, 200);

    for _ in 0..2 {
        let limited = fake.post("/v1/transfers", &form, Some("pit_rl")).await?;
        assert_eq!(limited.status, 429);
        assert_eq!(limited.body["error"]["type"], "rate_limit_error");
    }
    assert!(fake.stripe.transfers().is_empty());
    assert!(
        fake.stripe.events().iter().all(|e| e["type"] != "transfer.created"),
        "no event for a refused request"
    );

    // The key was not spent by the 429s.
    let ok = fake.post("/v1/transfers", &form, Some("pit_rl")).await?;
    ensure!(ok.status == 200, "{}", ok.body);
    assert!(ok.headers.get("idempotent-replayed").is_none());
    assert_eq!(fake.stripe.transfers().len(), 1);
    Ok(())
}

#[tokio::test]
async fn faults_only_hit_their_path_prefix() -> Result<()> {
    let fake = Fake::start().await?;
    fake.stripe.inject(fault(FaultKind::RateLimited, 1));
    let account = fake.post("/v1/accounts", "country=US", None).await?;
    assert_eq!(account.status, 200);
    let response = fake
        .http
        .post(fake.url("/v1/transfers"))
        .bearer_auth(SECRET_KEY)
        .body("amount=1")
        .send()
        .await?;
    assert_eq!(reply(response).await?.status, 429);
    Ok(())
}
