//! The Stripe API calls this service makes, over `reqwest` with a configurable base URL (the
//! in-project fake in tests and `amba dev`, `https://api.stripe.com` in production).
//!
//! Written here rather than with async-stripe 1.x: the service needs a dozen endpoints, and the
//! async-stripe 1.0 release candidates (generated per API area) cost minutes of build on a
//! two-core machine while their webhook crate keeps only the last `v1=` signature (which breaks
//! during secret rotation); these few hundred lines are the whole surface, with Stripe's form
//! encoding and error envelope.
//!
//! Every POST carries an `Idempotency-Key` chosen by the caller and persisted before the call;
//! retries (429, 5xx, network) reuse it, so a retried transfer is the same transfer.

use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

#[derive(Clone)]
pub struct Stripe {
    http: reqwest::Client,
    base: String,
    secret_key: String,
}

/// How a call ended when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// Stripe answered 4xx: it definitely did not do it (e.g. the account cannot receive, the
    /// card was declined: `kind` "card_error", `code` "card_declined", `decline_code`).
    #[error("Stripe refused ({status}): {message}")]
    Refused {
        status: u16,
        kind: String,
        code: String,
        decline_code: String,
        message: String,
    },
    /// 5xx, timeout or a lost connection after retries: it may or may not have happened.
    #[error("Stripe's answer is unknown: {0}")]
    Unknown(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Account {
    pub id: String,
    #[serde(default)]
    pub capabilities: Value,
    #[serde(default)]
    pub payouts_enabled: bool,
}

impl Account {
    pub fn transfers_active(&self) -> bool {
        self.capabilities.get("transfers").and_then(Value::as_str) == Some("active")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AccountLink {
    pub url: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Transfer {
    pub id: String,
    pub amount: i64,
    #[serde(default)]
    pub currency: String,
    #[serde(default)]
    pub destination: Option<String>,
    #[serde(default)]
    pub transfer_group: Option<String>,
    #[serde(default)]
    pub source_transaction: Option<String>,
    #[serde(default)]
    pub metadata: Value,
    #[serde(default)]
    pub reversals: Value,
}

impl Transfer {
    /// The payout item a transfer pays (its metadata; older transfers: their group).
    pub fn payout_item_id(&self) -> Option<&str> {
        self.metadata
            .get("payout_item_id")
            .and_then(Value::as_str)
            .or(self.transfer_group.as_deref())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Customer {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub expires_at: i64,
    #[serde(default)]
    pub customer: Option<String>,
    #[serde(default)]
    pub setup_intent: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SetupIntent {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub customer: Option<String>,
    #[serde(default)]
    pub payment_method: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentMethod {
    pub id: String,
    #[serde(default)]
    pub card: Value,
}

impl PaymentMethod {
    pub fn brand(&self) -> &str {
        self.card.get("brand").and_then(Value::as_str).unwrap_or("card")
    }

    pub fn last4(&self) -> &str {
        self.card.get("last4").and_then(Value::as_str).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub amount: i64,
    pub status: String,
    #[serde(default)]
    pub latest_charge: Option<String>,
    #[serde(default)]
    pub metadata: Value,
    #[serde(default)]
    pub last_payment_error: Value,
}

impl PaymentIntent {
    pub fn payout_run_id(&self) -> Option<&str> {
        self.metadata.get("payout_run_id").and_then(Value::as_str)
    }

    /// Stripe's reason for the last failure: the decline code, else the error code.
    pub fn failure_code(&self) -> String {
        let error = &self.last_payment_error;
        error
            .get("decline_code")
            .or_else(|| error.get("code"))
            .and_then(Value::as_str)
            .unwrap_or("payment_failed")
            .to_owned()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: i64,
    #[serde(default)]
    pub metadata: Value,
}

#[derive(Debug, Deserialize)]
struct List<T> {
    data: Vec<T>,
    #[serde(default)]
    has_more: bool,
}

/// Pages listed before giving up (100 objects each).
const MAX_PAGES: usize = 100;

/// One charge of a payout run, as sent to Stripe.
pub struct RunCharge<'a> {
    pub amount_minor: i64,
    pub currency: &'a str,
    pub customer: &'a str,
    pub payment_method: &'a str,
    pub payout_run_id: &'a str,
    pub program_id: &'a str,
    /// Persisted with the run before the call.
    pub idempotency_key: &'a str,
}

/// One transfer of a payout item, as sent to Stripe.
pub struct ItemTransfer<'a> {
    pub amount_minor: i64,
    pub currency: &'a str,
    pub destination: &'a str,
    pub transfer_group: &'a str,
    /// The run's charge; `None` only for items of runs made before funding.
    pub source_transaction: Option<&'a str>,
    pub payout_item_id: &'a str,
    pub program_id: &'a str,
}

const ATTEMPTS: u32 = 3;

impl Stripe {
    pub fn new(base: &str, secret_key: &str, timeout: Duration) -> Result<Stripe, StripeError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| StripeError::Unknown(e.to_string()))?;
        Ok(Stripe {
            http,
            base: base.trim_end_matches('/').to_owned(),
            secret_key: secret_key.to_owned(),
        })
    }

    /// A connected account that can receive transfers (Express dashboard, Stripe collects the
    /// requirements).
    pub async fn create_account(&self, country: &str, org_id: &str, key: &str) -> Result<Account, StripeError> {
        self.post(
            "/v1/accounts",
            key,
            &[
                ("country", country),
                ("capabilities[transfers][requested]", "true"),
                ("controller[stripe_dashboard][type]", "express"),
                ("controller[requirement_collection]", "stripe"),
                ("controller[fees][payer]", "application"),
                ("controller[losses][payments]", "application"),
                ("metadata[org_id]", org_id),
            ],
        )
        .await
    }

    pub async fn account(&self, account_id: &str) -> Result<Account, StripeError> {
        self.get(&format!("/v1/accounts/{account_id}"), &[]).await
    }

    /// Stripe's hosted onboarding link: single use, a few minutes, a credential.
    pub async fn onboarding_link(
        &self,
        account_id: &str,
        return_url: &str,
        refresh_url: &str,
        key: &str,
    ) -> Result<AccountLink, StripeError> {
        self.post(
            "/v1/account_links",
            key,
            &[
                ("account", account_id),
                ("return_url", return_url),
                ("refresh_url", refresh_url),
                ("type", "account_onboarding"),
            ],
        )
        .await
    }

    /// A transfer to a connected account, tagged with its payout item and grouped with its run's
    /// charge; keyed by the item, so a retried transfer is the same transfer.
    pub async fn transfer(&self, t: &ItemTransfer<'_>) -> Result<Transfer, StripeError> {
        let amount = t.amount_minor.to_string();
        let currency = t.currency.to_lowercase();
        let mut form = vec![
            ("amount", amount.as_str()),
            ("currency", currency.as_str()),
            ("destination", t.destination),
            ("transfer_group", t.transfer_group),
            ("metadata[payout_item_id]", t.payout_item_id),
            ("metadata[program_id]", t.program_id),
        ];
        if let Some(charge) = t.source_transaction {
            form.push(("source_transaction", charge));
        }
        self.post("/v1/transfers", &format!("payout_item:{}", t.payout_item_id), &form)
            .await
    }

    pub async fn transfer_by_id(&self, transfer_id: &str) -> Result<Transfer, StripeError> {
        self.get(&format!("/v1/transfers/{transfer_id}"), &[]).await
    }

    /// The transfer of one payout item (at most one, by construction), found in its group: how an
    /// unknown outcome is learned.
    pub async fn transfers_of(&self, transfer_group: &str, payout_item_id: &str) -> Result<Vec<Transfer>, StripeError> {
        let all: Vec<Transfer> = self
            .list("/v1/transfers", &[("transfer_group", transfer_group)])
            .await?;
        Ok(all
            .into_iter()
            .filter(|t| t.payout_item_id() == Some(payout_item_id))
            .collect())
    }

    /// Every transfer of a group (a run's), all pages.
    pub async fn transfers_in_group(&self, transfer_group: &str) -> Result<Vec<Transfer>, StripeError> {
        self.list("/v1/transfers", &[("transfer_group", transfer_group)]).await
    }

    /// The Stripe Customer of a program owner org.
    pub async fn create_customer(&self, org_id: &str, key: &str) -> Result<Customer, StripeError> {
        self.post(
            "/v1/customers",
            key,
            &[
                ("description", "Amba Affiliate program owner"),
                ("metadata[org_id]", org_id),
            ],
        )
        .await
    }

    /// A hosted Checkout page (mode=setup) where the owner saves a payment method for payouts.
    pub async fn setup_session(
        &self,
        customer: &str,
        currency: &str,
        success_url: &str,
        cancel_url: &str,
        org_id: &str,
        key: &str,
    ) -> Result<CheckoutSession, StripeError> {
        let currency = currency.to_lowercase();
        self.post(
            "/v1/checkout/sessions",
            key,
            &[
                ("mode", "setup"),
                ("customer", customer),
                ("currency", &currency),
                ("payment_method_types[0]", "card"),
                ("success_url", success_url),
                ("cancel_url", cancel_url),
                ("client_reference_id", org_id),
                ("metadata[org_id]", org_id),
                ("setup_intent_data[metadata][org_id]", org_id),
            ],
        )
        .await
    }

    pub async fn checkout_session(&self, id: &str) -> Result<CheckoutSession, StripeError> {
        self.get(&format!("/v1/checkout/sessions/{id}"), &[]).await
    }

    pub async fn setup_intent(&self, id: &str) -> Result<SetupIntent, StripeError> {
        self.get(&format!("/v1/setup_intents/{id}"), &[]).await
    }

    pub async fn payment_method(&self, id: &str) -> Result<PaymentMethod, StripeError> {
        self.get(&format!("/v1/payment_methods/{id}"), &[]).await
    }

    /// Charges a run's total to the owner's saved payment method, off-session, confirmed at once.
    /// A decline is `Refused` with `kind` "card_error" (402); it never moved money.
    pub async fn charge(&self, c: &RunCharge<'_>) -> Result<PaymentIntent, StripeError> {
        let amount = c.amount_minor.to_string();
        let currency = c.currency.to_lowercase();
        self.post(
            "/v1/payment_intents",
            c.idempotency_key,
            &[
                ("amount", &amount),
                ("currency", &currency),
                ("customer", c.customer),
                ("payment_method", c.payment_method),
                ("payment_method_types[0]", "card"),
                ("confirm", "true"),
                ("off_session", "true"),
                ("transfer_group", c.payout_run_id),
                ("description", "Affiliate payouts"),
                ("metadata[payout_run_id]", c.payout_run_id),
                ("metadata[program_id]", c.program_id),
            ],
        )
        .await
    }

    /// The customer's PaymentIntents created since `since_unix` (all pages): how the outcome of a
    /// charge whose answer was lost is learned.
    pub async fn payment_intents_of(&self, customer: &str, since_unix: i64) -> Result<Vec<PaymentIntent>, StripeError> {
        let since = since_unix.to_string();
        self.list(
            "/v1/payment_intents",
            &[("customer", customer), ("created[gte]", &since)],
        )
        .await
    }

    /// Returns `amount_minor` of a run's charge to the owner (what the run could not pay out).
    pub async fn refund(&self, charge: &str, amount_minor: i64, payout_run_id: &str) -> Result<Refund, StripeError> {
        let amount = amount_minor.to_string();
        self.post(
            "/v1/refunds",
            &format!("payout_run:{payout_run_id}:refund"),
            &[
                ("charge", charge),
                ("amount", &amount),
                ("reason", "requested_by_customer"),
                ("metadata[payout_run_id]", payout_run_id),
            ],
        )
        .await
    }

    /// The refunds of a run's charge made for that run: how a refund whose answer was lost is found.
    pub async fn refunds_of(&self, charge: &str, payout_run_id: &str) -> Result<Vec<Refund>, StripeError> {
        let all: Vec<Refund> = self.list("/v1/refunds", &[("charge", charge)]).await?;
        Ok(all
            .into_iter()
            .filter(|r| r.metadata.get("payout_run_id").and_then(Value::as_str) == Some(payout_run_id))
            .collect())
    }

    /// Every object of a list endpoint (newest first), following `starting_after`.
    async fn list<T>(&self, path: &str, filter: &[(&str, &str)]) -> Result<Vec<T>, StripeError>
    where
        T: for<'de> Deserialize<'de> + HasId,
    {
        let mut all: Vec<T> = Vec::new();
        for _ in 0..MAX_PAGES {
            let mut query = filter.to_vec();
            query.push(("limit", "100"));
            let after = all.last().map(|t| t.id().to_owned());
            if let Some(after) = &after {
                query.push(("starting_after", after));
            }
            let page: List<T> = self.get(path, &query).await?;
            let more = page.has_more && !page.data.is_empty();
            all.extend(page.data);
            if !more {
                return Ok(all);
            }
        }
        Err(StripeError::Unknown(format!("{path}: more than {MAX_PAGES} pages")))
    }

    async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        key: &str,
        form: &[(&str, &str)],
    ) -> Result<T, StripeError> {
        self.send(|| {
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.secret_key)
                .header("Idempotency-Key", key)
                .form(form)
        })
        .await
    }

    async fn get<T: for<'de> Deserialize<'de>>(&self, path: &str, query: &[(&str, &str)]) -> Result<T, StripeError> {
        self.send(|| {
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(&self.secret_key)
                .query(query)
        })
        .await
    }

    /// Sends, retrying 429, 5xx and network failures with backoff (the same request, so the
    /// same idempotency key).
    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, StripeError> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
            }
            let response = match request().send().await {
                Ok(response) => response,
                Err(err) => {
                    last = err.to_string();
                    continue;
                }
            };
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            if (200..300).contains(&status) {
                return serde_json::from_str(&body)
                    .map_err(|e| StripeError::Unknown(format!("unreadable Stripe answer: {e}")));
            }
            let error: Value = serde_json::from_str(&body).unwrap_or_default();
            let kind = error["error"]["type"].as_str().unwrap_or_default().to_owned();
            let message = error["error"]["message"].as_str().unwrap_or(&body).to_owned();
            if status == 429 || status >= 500 {
                last = format!("{status} {message}");
                continue;
            }
            // 409 (the same key still in flight) and idempotency errors say nothing about
            // whether the first request happened: unknown, never a refusal.
            if status == 409 || kind == "idempotency_error" {
                return Err(StripeError::Unknown(format!("{status} {message}")));
            }
            let text = |field: &str| error["error"][field].as_str().unwrap_or_default().to_owned();
            return Err(StripeError::Refused {
                status,
                kind,
                code: text("code"),
                decline_code: text("decline_code"),
                message,
            });
        }
        Err(StripeError::Unknown(last))
    }
}

/// Objects a list is paged by.
pub trait HasId {
    fn id(&self) -> &str;
}

impl HasId for Transfer {
    fn id(&self) -> &str {
        &self.id
    }
}

impl HasId for Refund {
    fn id(&self) -> &str {
        &self.id
    }
}

impl HasId for PaymentIntent {
    fn id(&self) -> &str {
        &self.id
    }
}
