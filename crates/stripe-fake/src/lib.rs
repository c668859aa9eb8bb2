//! An in-project fake of the Stripe API for integration tests and `amba dev`.
//!
//! It keeps the parts of Stripe's behaviour a payout system depends on, with state: Connect
//! accounts and single-use onboarding links, transfers and reversals, idempotency keys that replay
//! the first answer (a 500 too), Stripe's error envelope, and signed webhooks delivered
//! at-least-once with retries. Faults ([`Fault`]) make the uncomfortable cases reproducible: an
//! error after the work was committed, a slow answer, a rate limit.
//!
//! (stripe-mock is stateless and not installable here; see `/work/shared/API-NOTES.md`.)
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use amba_stripe_fake::{FakeConfig, FakeStripe};
//! let fake = FakeStripe::start(FakeConfig {
//!     secret_key: "sk_test_fake".into(),
//!     webhook_secret: "whsec_fake".into(),
//!     webhook_url: Some("http://127.0.0.1:8080/stripe/webhook".into()),
//! })
//! .await?;
//! println!("AMBA_STRIPE_API_BASE={}", fake.base_url());
//! # Ok(()) }
//! ```

mod api;
mod error;
mod form;
mod state;
mod webhook;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::oneshot;

pub use error::{FakeError, FaultError};
use form::Form;
use state::State;

/// How the fake authenticates callers and signs webhooks.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The only key `/v1` accepts (`Authorization: Bearer <secret_key>`).
    pub secret_key: String,
    /// The signing secret of the webhook endpoint (`whsec_...`).
    pub webhook_secret: String,
    /// Where events are POSTed; `None` records them without delivering.
    pub webhook_url: Option<String>,
}

/// A fault for the next `times` POST requests whose path starts with `path_prefix`.
///
/// Every matching POST uses one up. A request answered from its idempotency key (a replay or a
/// mismatch) and one refused by validation (4xx) are answered as usual; `Timeout` still delays them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// e.g. `"/v1/transfers"` (also matches `/v1/transfers/{id}/reversals`).
    pub path_prefix: String,
    pub kind: FaultKind,
    pub times: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// Do the work (store it, emit its events), then answer 500 `api_error`; the 500 is what the
    /// idempotency key replays.
    ErrorAfterCommit,
    /// Do the work, then hold the answer this long (a client with a shorter timeout gives up).
    Timeout(Duration),
    /// Answer 429 `rate_limit_error` and do nothing; nothing is saved under the idempotency key.
    RateLimited,
}

/// A running fake. Clones share it; it serves until the last clone is dropped or
/// [`FakeStripe::shutdown`] is called.
#[derive(Clone)]
pub struct FakeStripe {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    /// Dropping the sender stops the server.
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
}

/// What the server, the delivery tasks and the handle all use.
pub(crate) struct Shared {
    pub(crate) config: FakeConfig,
    pub(crate) base_url: String,
    http: reqwest::Client,
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state, then sends the events it emitted, outside the lock.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (result, outbox) = {
            let mut state = self.lock();
            let result = f(&mut state);
            (result, std::mem::take(&mut state.outbox))
        };
        for (url, event) in outbox {
            self.spawn_delivery(url, &event);
        }
        result
    }

    fn spawn_delivery(&self, url: String, event: &Value) {
        let id = event["id"].as_str().unwrap_or_default().to_owned();
        tokio::spawn(webhook::deliver(
            self.http.clone(),
            self.config.webhook_secret.clone(),
            url,
            id,
            event.to_string(),
        ));
    }
}

/// Unix seconds now.
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl FakeStripe {
    /// Serves on a free port of 127.0.0.1.
    pub async fn start(config: FakeConfig) -> std::io::Result<FakeStripe> {
        FakeStripe::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
    }

    /// Serves on `addr` (port 0: a free one).
    pub async fn start_on(addr: SocketAddr, config: FakeConfig) -> std::io::Result<FakeStripe> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        // Receivers are local; a proxy from the environment must not get in between.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(std::io::Error::other)?;
        let mut state = State::default();
        state.webhook_url = config.webhook_url.clone();
        let shared = Arc::new(Shared {
            config,
            base_url,
            http,
            state: Mutex::new(state),
        });
        let app = axum::Router::new().fallback(api::handle).with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                // Resolves on send or when the handle (the sender) is dropped.
                let _ = stopped.await;
            });
            if let Err(err) = serve.await {
                tracing::warn!(error = %err, "stripe fake stopped serving");
            }
        });
        Ok(FakeStripe {
            handle: Arc::new(Handle {
                shared,
                shutdown: Mutex::new(Some(stop)),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Stops accepting requests (every clone); requests in flight finish.
    pub fn shutdown(&self) {
        let sender = self
            .handle
            .shutdown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }

    /// `http://127.0.0.1:<port>`, no trailing slash: the value for `AMBA_STRIPE_API_BASE`.
    pub fn base_url(&self) -> String {
        self.shared().base_url.clone()
    }

    /// Where events emitted from now on are POSTed (earlier events are not sent).
    pub fn set_webhook_url(&self, url: &str) {
        self.shared().lock().webhook_url = Some(url.to_owned());
    }

    /// Queues a fault; faults are used in the order injected.
    pub fn inject(&self, fault: Fault) {
        self.shared().lock().add_fault(fault);
    }

    /// Every transfer created, oldest first, as it is now (reversals included).
    pub fn transfers(&self) -> Vec<Value> {
        self.shared().lock().transfers.clone()
    }

    /// Every account created, oldest first, as it is now.
    pub fn accounts(&self) -> Vec<Value> {
        self.shared().lock().accounts.clone()
    }

    /// Every event emitted, oldest first (delivered or not).
    pub fn events(&self) -> Vec<Value> {
        self.shared().lock().events.clone()
    }

    /// What finishing Stripe-hosted onboarding does: `capabilities.transfers = "active"`,
    /// `payouts_enabled`, `details_submitted`; emits `account.updated` (a Connect event) when
    /// anything changed.
    pub async fn complete_onboarding(&self, account_id: &str) -> Result<(), FakeError> {
        self.shared()
            .with_state(|state| state.complete_onboarding(account_id, now()))
            .map_err(FakeError::from)
    }

    /// Reverses `amount` of a transfer as `POST /v1/transfers/{id}/reversals` would (a refund on
    /// the platform's side); emits `transfer.reversed`. Returns the reversal.
    pub async fn reverse_transfer(&self, transfer_id: &str, amount: i64) -> Result<Value, FakeError> {
        let form = Form::parse(format!("amount={amount}").as_bytes());
        self.shared()
            .with_state(|state| state.reverse_transfer(transfer_id, &form, now()))
            .map_err(FakeError::from)
    }

    /// A payout from the connected account's balance to its bank: emits `payout.paid` or
    /// `payout.failed` as a Connect event (`event.account = account_id`). Returns the payout.
    pub async fn emit_payout(
        &self,
        account_id: &str,
        amount: i64,
        currency: &str,
        paid: bool,
    ) -> Result<Value, FakeError> {
        self.shared()
            .with_state(|state| state.payout(account_id, amount, currency, paid, now()))
            .map_err(FakeError::from)
    }

    /// Sends an event again, byte for byte the same body (same `id`), freshly signed; delivered in
    /// the background with the usual retries, like Stripe's "resend".
    pub async fn redeliver(&self, event_id: &str) -> Result<(), FakeError> {
        let (event, url) = {
            let state = self.shared().lock();
            let event = state.events.iter().find(|e| e["id"] == event_id).cloned();
            (event, state.webhook_url.clone())
        };
        let event = event.ok_or_else(|| FakeError::NotFound(format!("No such event: '{event_id}'")))?;
        let url = url.ok_or(FakeError::NoWebhookUrl)?;
        self.shared().spawn_delivery(url, &event);
        Ok(())
    }

    /// POSTs `body` as-is to the webhook URL, once, with the given `Stripe-Signature` (or none);
    /// returns the receiver's status code. For testing how a receiver treats forged or stale
    /// deliveries.
    pub async fn deliver_raw(&self, body: &str, signature_header: Option<&str>) -> Result<u16, FakeError> {
        let url = self
            .shared()
            .lock()
            .webhook_url
            .clone()
            .ok_or(FakeError::NoWebhookUrl)?;
        webhook::post(&self.shared().http, &url, body, signature_header)
            .await
            .map_err(|err| FakeError::Delivery(err.to_string()))
    }

    /// The `Stripe-Signature` value for `body` signed at `at_unix`: `t=<t>,v1=<hex>`.
    pub fn sign(&self, body: &str, at_unix: i64) -> String {
        webhook::signature(&self.shared().config.webhook_secret, body, at_unix)
    }
}
