//! A started fake, an HTTP client speaking Stripe's form encoding, and a webhook receiver that
//! checks signatures on its own (not with the fake's code) and can be told to fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use amba_stripe_fake::{FakeConfig, FakeStripe};
use anyhow::{Context, Result, bail, ensure};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::{Mutex, mpsc};

pub const SECRET_KEY: &str = "sk_test_amba_fake_0123456789";
pub const WEBHOOK_SECRET: &str = "whsec_amba_fake_test";

pub struct Fake {
    pub stripe: FakeStripe,
    pub http: reqwest::Client,
    pub hooks: Receiver,
}

/// One accepted webhook delivery.
pub struct Delivery {
    pub body: String,
    pub event: Value,
}

pub struct Receiver {
    pub url: String,
    deliveries: Mutex<mpsc::UnboundedReceiver<Delivery>>,
    /// The next this-many validly signed deliveries are answered 500.
    pub fail_next: Arc<AtomicU32>,
}

#[derive(Clone)]
struct Hook {
    sender: mpsc::UnboundedSender<Delivery>,
    fail_next: Arc<AtomicU32>,
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Verifies `Stripe-Signature` the way a receiver must: HMAC-SHA256(secret, "<t>.<body>") against
/// every `v1`, and `t` within 300 s.
pub fn signature_valid(header: &str, body: &str, secret: &str) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (unix_now() - t).abs() > 300 {
        return false;
    }
    v1.iter().any(|sig| {
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).is_ok_and(|mut mac| {
            mac.update(format!("{t}.{body}").as_bytes());
            mac.verify_slice(sig).is_ok()
        })
    })
}

async fn receive(State(hook): State<Hook>, headers: HeaderMap, body: String) -> StatusCode {
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !signature_valid(signature, &body, WEBHOOK_SECRET) {
        return StatusCode::BAD_REQUEST;
    }
    if hook
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let Ok(event) = serde_json::from_str(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let _ = hook.sender.send(Delivery { body, event });
    StatusCode::OK
}

async fn start_receiver() -> Result<Receiver> {
    let (sender, deliveries) = mpsc::unbounded_channel();
    let fail_next = Arc::new(AtomicU32::new(0));
    let hook = Hook {
        sender,
        fail_next: fail_next.clone(),
    };
    let app = axum::Router::new()
        .route("/webhook", axum::routing::post(receive))
        .with_state(hook);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/webhook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Receiver {
        url,
        deliveries: Mutex::new(deliveries),
        fail_next,
    })
}

impl Receiver {
    /// The next delivered event of `kind`, skipping others; fails after 5 s.
    pub async fn next(&self, kind: &str) -> Result<Delivery> {
        let mut deliveries = self.deliveries.lock().await;
        let wait = async {
            while let Some(delivery) = deliveries.recv().await {
                if delivery.event["type"] == kind {
                    return Some(delivery);
                }
            }
            None
        };
        match tokio::time::timeout(Duration::from_secs(5), wait).await {
            Ok(Some(delivery)) => Ok(delivery),
            _ => bail!("no {kind} event delivered within 5 s"),
        }
    }

    /// Nothing more arrives for a short while.
    pub async fn quiet(&self) -> Result<()> {
        let mut deliveries = self.deliveries.lock().await;
        if let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_millis(400), deliveries.recv()).await {
            bail!("unexpected delivery: {}", delivery.body);
        }
        Ok(())
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Fake {
    /// A fake whose webhooks go to a fresh receiver.
    pub async fn start() -> Result<Fake> {
        let hooks = start_receiver().await?;
        let stripe = FakeStripe::start(FakeConfig {
            secret_key: SECRET_KEY.to_owned(),
            webhook_secret: WEBHOOK_SECRET.to_owned(),
            webhook_url: Some(hooks.url.clone()),
        })
        .await?;
        let http = client(None)?;
        Ok(Fake { stripe, http, hooks })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.stripe.base_url())
    }

    /// POST a form body (Stripe's bracket syntax, written out by the test) with the secret key.
    pub async fn post(&self, path: &str, form: &str, idempotency_key: Option<&str>) -> Result<Reply> {
        let mut request = self
            .http
            .post(self.url(path))
            .bearer_auth(SECRET_KEY)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        reply(request.send().await?).await
    }

    pub async fn get(&self, path_and_query: &str) -> Result<Reply> {
        reply(
            self.http
                .get(self.url(path_and_query))
                .bearer_auth(SECRET_KEY)
                .send()
                .await?,
        )
        .await
    }

    /// An account that has finished onboarding (transfers active).
    pub async fn onboarded_account(&self) -> Result<String> {
        let reply = self
            .post(
                "/v1/accounts",
                "country=US&capabilities[transfers][requested]=true",
                None,
            )
            .await?;
        ensure!(reply.status == 200, "account create: {}", reply.body);
        let id = reply.body["id"].as_str().context("account id")?.to_owned();
        self.stripe.complete_onboarding(&id).await?;
        Ok(id)
    }
}

/// A client without proxies or redirects (the onboarding page answers with one).
pub fn client(timeout: Option<Duration>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none());
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    Ok(builder.build()?)
}

pub async fn reply(response: reqwest::Response) -> Result<Reply> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).with_context(|| format!("not JSON ({status}): {text}"))?;
    Ok(Reply { status, headers, body })
}

/// `ids` of a list response's `data`.
pub fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
