//! Outbound webhooks through MCP, received by local HTTP servers: each delivery verified with the
//! Standard Webhooks algorithm written out here (HMAC-SHA256 of `id.timestamp.body` under the
//! base64 secret), retries after 500s with the same webhook-id, secret rotation, refused
//! targets, and a dead endpoint that does not delay another's deliveries.

use crate::support::{Org, active_program, enroll, org, text};
use crate::system::TestSystem;
use amba_testkit::eventually;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Bytes,
}

/// A local endpoint: answers `fail_first` requests with 500, then 200; or never answers (`hang`).
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(fail_first: usize, hang: bool) -> anyhow::Result<Receiver> {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let seen = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let seen = seen.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let count = {
                        let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        seen.push(Received {
                            id: header("webhook-id"),
                            timestamp: header("webhook-timestamp"),
                            signature: header("webhook-signature"),
                            body,
                        });
                        seen.len()
                    };
                    if hang {
                        tokio::time::sleep(Duration::from_secs(3_600)).await;
                    }
                    if count <= fail_first {
                        (StatusCode::INTERNAL_SERVER_ERROR, "not now")
                    } else {
                        (StatusCode::OK, "ok")
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Receiver { url, got })
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }

    async fn wait_for(&self, count: usize) -> anyhow::Result<Vec<Received>> {
        eventually(Duration::from_secs(30), "webhook deliveries", || async {
            let got = self.received();
            Ok((got.len() >= count).then_some(got))
        })
        .await
    }
}

/// The spec's check: some `v1,<sig>` of the header is base64(HMAC-SHA256(key, "id.ts.body")).
fn signed_with(secret: &str, r: &Received) -> bool {
    let Ok(key) = STANDARD.decode(secret.trim_start_matches("whsec_")) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&key) else {
        return false;
    };
    mac.update(format!("{}.{}.", r.id, r.timestamp).as_bytes());
    mac.update(&r.body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    r.signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

async fn create(owner: &Org, program: &str, url: &str, types: Value) -> anyhow::Result<Value> {
    owner
        .mcp
        .ok(
            "amba_affiliate_webhook_create",
            json!({"program_id": program, "url": url, "event_types": types}),
        )
        .await
}

/// Waits until the notification service, which keeps webhooks, has the program in its read
/// model (it follows enrollment's events): until then the program is unknown there.
async fn known_to_webhooks(owner: &Org, program: &str) -> anyhow::Result<()> {
    eventually(Duration::from_secs(30), "the program known to webhooks", || async {
        let out = owner
            .mcp
            .call("amba_affiliate_webhook_list", json!({"program_id": program}))
            .await?;
        Ok((out.is_error != Some(true)).then_some(()))
    })
    .await
}

async fn sale(owner: &Org, program: &str, id: &str, code: &Value) -> anyhow::Result<()> {
    eventually(Duration::from_secs(10), "the sale recorded", || async {
        let out = owner
            .mcp
            .call(
                "amba_affiliate_conversion_report",
                json!({"program_id": program, "project_id": "web", "external_id": id, "amount_minor": 10_000,
                       "currency": "USD", "code": code}),
            )
            .await?;
        Ok((out.is_error != Some(true)).then_some(()))
    })
    .await
}

#[tokio::test]
async fn signed_deliveries_retries_rotation_refused_targets_and_isolation() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(&[
        ("AMBA_WEBHOOKS_ALLOW_PRIVATE", "true"),
        ("AMBA_WEBHOOK_RETRY_SCALE", "0.001"),
    ])
    .await?;
    let owner = org(&sys, "Owner").await?;
    let ann = org(&sys, "Ann").await?;
    let program = active_program(&owner, json!({})).await?;
    let ann_in = enroll(&owner, &ann, &program, None).await?;
    known_to_webhooks(&owner, &program).await?;

    // Refused targets: link-local and the metadata address (even with private addresses
    // allowed), unknown types, another owner's program.
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/hook",
        "http://0.0.0.0:9/hook",
        "ftp://hooks.example/x",
    ] {
        let refused = owner
            .mcp
            .err(
                "amba_affiliate_webhook_create",
                json!({"program_id": program, "url": url}),
            )
            .await?;
        assert_eq!(refused["code"], "INVALID_ARGUMENT", "{url}: {refused}");
    }
    let good = Receiver::start(0, false).await?;
    let bad_type = owner
        .mcp
        .err(
            "amba_affiliate_webhook_create",
            json!({"program_id": program, "url": good.url, "event_types": ["sale.happened"]}),
        )
        .await?;
    assert_eq!(bad_type["code"], "INVALID_ARGUMENT");
    let stranger = org(&sys, "Stranger").await?;
    let hidden = stranger
        .mcp
        .err(
            "amba_affiliate_webhook_create",
            json!({"program_id": program, "url": good.url}),
        )
        .await?;
    assert_eq!(hidden["code"], "NOT_FOUND");

    // Three endpoints: a good one, one that fails twice then works, one that never answers.
    let flaky = Receiver::start(2, false).await?;
    let dead = Receiver::start(0, true).await?;
    let dead_hook = create(&owner, &program, &dead.url, json!([])).await?;
    let good_hook = create(&owner, &program, &good.url, json!(["conversion.approved"])).await?;
    let flaky_hook = create(&owner, &program, &flaky.url, json!(["conversion.approved"])).await?;
    let secret = text(&good_hook["secret"]).to_owned();
    assert!(secret.starts_with("whsec_") && STANDARD.decode(&secret[6..]).is_ok());

    // The dead endpoint gets a test event first and holds it for 10 s; the others are not held up.
    owner
        .mcp
        .ok(
            "amba_affiliate_webhook_test",
            json!({"webhook_id": dead_hook["webhook"]["webhook_id"]}),
        )
        .await?;
    dead.wait_for(1).await?;
    let started = std::time::Instant::now();
    sale(&owner, &program, "w-1", &ann_in["code"]).await?;
    let delivered = good.wait_for(1).await?;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a hanging endpoint delayed another's delivery: {:?}",
        started.elapsed()
    );
    let first = &delivered[0];
    assert!(signed_with(&secret, first), "the signature does not verify: {first:?}");
    let body: Value = serde_json::from_slice(&first.body)?;
    assert_eq!(body["type"], "conversion.approved");
    assert_eq!(body["data"]["commission_minor"], 2_000);
    assert!(first.id.starts_with("msg_") && first.timestamp.parse::<i64>().is_ok());

    // The flaky endpoint: 500, 500, then 200 — the same webhook-id each time, each signed.
    let attempts = flaky.wait_for(3).await?;
    let flaky_secret = text(&flaky_hook["secret"]).to_owned();
    assert!(
        attempts
            .iter()
            .all(|r| r.id == attempts[0].id && signed_with(&flaky_secret, r))
    );
    let listed = eventually(Duration::from_secs(10), "the flaky delivery recorded", || async {
        let list = owner
            .mcp
            .ok("amba_affiliate_webhook_list", json!({"program_id": program}))
            .await?;
        let flaky_view = list["webhooks"].as_array().and_then(|all| {
            all.iter()
                .find(|w| w["webhook_id"] == flaky_hook["webhook"]["webhook_id"])
                .cloned()
        });
        Ok(flaky_view.filter(|w| w["last_success_at"].is_string() && w.get("failing_since").is_none()))
    })
    .await?;
    assert_eq!(listed["pending_deliveries"], 0);
    assert_eq!(listed["last_error"], "HTTP 500 Internal Server Error");

    // Rotation: for a day both secrets sign.
    let rotated = owner
        .mcp
        .ok(
            "amba_affiliate_webhook_rotate",
            json!({"webhook_id": good_hook["webhook"]["webhook_id"]}),
        )
        .await?;
    let new_secret = text(&rotated["secret"]).to_owned();
    assert_ne!(new_secret, secret);
    assert!(rotated["webhook"]["previous_secret_until"].is_string());
    sale(&owner, &program, "w-2", &ann_in["code"]).await?;
    let after = good.wait_for(2).await?;
    let second = &after[1];
    assert!(signed_with(&new_secret, second) && signed_with(&secret, second));
    assert_eq!(second.signature.split(' ').count(), 2);
    assert_ne!(second.id, first.id);

    // Delete: nothing more goes there.
    owner
        .mcp
        .ok(
            "amba_affiliate_webhook_delete",
            json!({"webhook_id": good_hook["webhook"]["webhook_id"]}),
        )
        .await?;
    sale(&owner, &program, "w-3", &ann_in["code"]).await?;
    // w-1 took the flaky endpoint three requests, w-2 one, w-3 one.
    flaky.wait_for(5).await?;
    assert_eq!(good.received().len(), 2, "a deleted endpoint got a delivery");
    let remaining = owner
        .mcp
        .ok("amba_affiliate_webhook_list", json!({"program_id": program}))
        .await?;
    assert_eq!(remaining["webhooks"].as_array().map(Vec::len), Some(2));

    // The dead endpoint has failed for days (moved back in time here): its next failure disables
    // it and e-mails the owner.
    let pool = sys.service_pool("notification").await?;
    sqlx::query("UPDATE webhooks SET failing_since = now() - INTERVAL '6 days' WHERE webhook_id = $1")
        .bind(text(&dead_hook["webhook"]["webhook_id"]))
        .execute(&pool)
        .await?;
    pool.close().await;
    eventually(Duration::from_secs(40), "the dead endpoint disabled", || async {
        let list = owner
            .mcp
            .ok("amba_affiliate_webhook_list", json!({"program_id": program}))
            .await?;
        Ok(list["webhooks"]
            .as_array()
            .and_then(|all| {
                all.iter()
                    .find(|w| w["webhook_id"] == dead_hook["webhook"]["webhook_id"])
                    .cloned()
            })
            .filter(|w| w["status"] == "disabled"))
    })
    .await?;
    let mails = owner.mcp.ok("amba_affiliate_my_notifications_list", json!({})).await?;
    assert!(
        mails["notifications"].as_array().is_some_and(|all| all
            .iter()
            .any(|m| text(&m["subject"]).contains("was disabled after failing for days"))),
        "{mails}"
    );
    sys.stop().await
}
