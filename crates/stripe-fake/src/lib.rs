//! An in-project fake of the Stripe API for integration tests and `amba dev`.
//!
//! It keeps the parts of Stripe's behaviour a payout system depends on, with state: Connect
//! accounts and single-use onboarding links, transfers and reversals, idempotency keys that replay
//! the first answer (a 500 too), Stripe's error envelope, and signed webhooks delivered
//! at-least-once with retries. Faults ([`Fault`]) make the uncomfortable cases reproducible: an
//! error after the work was committed, a slow answer, a rate limit.
//!
//! It also keeps owner funding, "separate charges and transfers": the platform charges a program
//! owner, then transfers to affiliates out of that charge, and may refund the charge.
//!
//! - `POST /v1/customers`, `GET`/`POST /v1/customers/{id}`, `GET /v1/customers/{id}/payment_methods`.
//! - Checkout in setup mode: `POST /v1/checkout/sessions` (`mode=setup`, `customer`, `currency`
//!   or `payment_method_types[]`, `success_url`, ...), `GET /v1/checkout/sessions/{id}`. The
//!   session's `url` is a local page, `GET /checkout/setup/{id}[?card=<name>]` (no key, a browser
//!   visits it): it saves the test card on the customer (a PaymentMethod and a succeeded
//!   SetupIntent), completes the session, emits `payment_method.attached`,
//!   `setup_intent.succeeded`, `checkout.session.completed`, and redirects to `success_url`
//!   (`{CHECKOUT_SESSION_ID}` filled in). [`FakeStripe::complete_checkout`] does the same from Rust.
//! - Test cards by name (`visa`, `declined`, `insufficient_funds`, `authentication_required`) and
//!   Stripe's magic ids (`pm_card_visa`, `pm_card_chargeDeclined`,
//!   `pm_card_chargeDeclinedInsufficientFunds`, `pm_card_authenticationRequired`).
//! - `GET /v1/payment_methods[/{id}]`, `POST /v1/payment_methods/{id}/attach`,
//!   `GET /v1/setup_intents/{id}`.
//! - `POST /v1/payment_intents` (`confirm=true&off_session=true` charges at once),
//!   `POST /v1/payment_intents/{id}/confirm`, `GET /v1/payment_intents[/{id}]`,
//!   `GET /v1/charges[/{id}]`. A success makes a charge and emits `charge.succeeded`,
//!   `payment_intent.succeeded`; a decline makes a failed charge, emits `charge.failed`,
//!   `payment_intent.payment_failed` and answers 402 `card_error` (the intent inside), which,
//!   like a success and unlike a validation error, is saved under the idempotency key.
//! - `POST /v1/transfers` with `source_transaction=ch_...`: the charge must have succeeded, be in
//!   the transfer's currency and still cover the amount (less refunds and earlier transfers from
//!   it: `balance_insufficient` otherwise); the transfer takes the charge's `transfer_group`
//!   when it has none.
//! - `POST /v1/refunds` with `charge` or `payment_intent` (its `latest_charge`), `amount` (default:
//!   all not refunded yet), `reason`, `metadata`: refunds a succeeded charge, never more than is
//!   left of it (`amount_too_large`; `charge_already_refunded` once nothing is). The charge's
//!   `amount_refunded` and `refunded` follow, so a refund also lowers what transfers can still take
//!   from it; emits `refund.created`, then `charge.refunded`. `GET /v1/refunds[/{id}]`
//!   (`charge=`, `payment_intent=`), `GET /v1/charges/{id}/refunds`; a charge shows its `refunds`
//!   list only when expanded (`expand[]=refunds`), as in current API versions.
//! - Lists are newest first with `limit`, `starting_after`, `ending_before`, `created[gte]`...;
//!   `expand[]` replaces the ids it names with the objects.
//!
//! (stripe-mock is stateless and cannot be installed from the package registries this project uses.)
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

// `json!` of Stripe's larger objects (a Checkout session has ~50 fields) nests deeply.
#![recursion_limit = "256"]

mod api;
mod cards;
mod error;
mod form;
mod payments;
mod refunds;
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
/// mismatch) and one refused by validation (400/404) are answered as usual; `Timeout` still delays
/// them. A card error (402) ran, so `ErrorAfterCommit` turns it into the 500 too.
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
    /// Answer 400 `invalid_request_error` (`account_invalid`) and do nothing, as Stripe does when
    /// it refuses a request outright (e.g. a destination account that was closed meanwhile).
    Refused,
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

    /// Every customer created, oldest first, as it is now.
    pub fn customers(&self) -> Vec<Value> {
        self.shared().lock().customers.clone()
    }

    /// Every payment method (saved by Checkout, made from a magic test id), oldest first.
    pub fn payment_methods(&self) -> Vec<Value> {
        self.shared().lock().payment_methods.clone()
    }

    /// Every setup intent (one per completed Checkout session), oldest first.
    pub fn setup_intents(&self) -> Vec<Value> {
        self.shared().lock().setup_intents.clone()
    }

    /// Every Checkout session created, oldest first, as it is now.
    pub fn checkout_sessions(&self) -> Vec<Value> {
        self.shared().lock().checkout_sessions.clone()
    }

    /// Every payment intent created, oldest first, as it is now.
    pub fn payment_intents(&self) -> Vec<Value> {
        self.shared().lock().payment_intents.clone()
    }

    /// Every charge made (failed ones too), oldest first.
    pub fn charges(&self) -> Vec<Value> {
        self.shared().lock().charges.clone()
    }

    /// Every refund made, oldest first.
    pub fn refunds(&self) -> Vec<Value> {
        self.shared().lock().refunds.clone()
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

    /// What the customer finishing the hosted Checkout page (`session.url`) with test card `card`
    /// does (`visa`, `declined`, `insufficient_funds`, `authentication_required`): saves the card
    /// on the session's customer, completes the session, emits `payment_method.attached`,
    /// `setup_intent.succeeded` and `checkout.session.completed`. Returns the session (its
    /// `setup_intent` set). Unknown or already completed: `NotFound`; expired or an unknown card:
    /// `InvalidRequest`.
    pub async fn complete_checkout(&self, session_id: &str, card: &str) -> Result<Value, FakeError> {
        self.shared()
            .with_state(|state| state.complete_checkout(session_id, card, now()))
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
