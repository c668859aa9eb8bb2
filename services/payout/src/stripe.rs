//! The Stripe API calls this service makes, over `reqwest` with a configurable base URL (the
//! in-project fake in tests and `amba dev`, `https://api.stripe.com` in production).
//!
//! Written here rather than with async-stripe 1.x: the service needs five endpoints, and the
//! async-stripe 1.0 release candidates (generated per API area) cost minutes of build on a
//! two-core machine while their webhook crate keeps only the last `v1=` signature (API-NOTES);
//! these ~150 lines are the whole surface, with Stripe's form encoding and error envelope.
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
    /// Stripe answered 4xx: it definitely did not do it (e.g. the account cannot receive).
    #[error("Stripe refused ({status}): {message}")]
    Refused { status: u16, kind: String, message: String },
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
    pub transfer_group: Option<String>,
}

#[derive(Debug, Deserialize)]
struct List<T> {
    data: Vec<T>,
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

    /// A transfer to a connected account, grouped and tagged by the payout item.
    pub async fn transfer(
        &self,
        amount_minor: i64,
        currency: &str,
        destination: &str,
        payout_item_id: &str,
        program_id: &str,
    ) -> Result<Transfer, StripeError> {
        let amount = amount_minor.to_string();
        let currency = currency.to_lowercase();
        self.post(
            "/v1/transfers",
            &format!("payout_item:{payout_item_id}"),
            &[
                ("amount", &amount),
                ("currency", &currency),
                ("destination", destination),
                ("transfer_group", payout_item_id),
                ("metadata[payout_item_id]", payout_item_id),
                ("metadata[program_id]", program_id),
            ],
        )
        .await
    }

    /// The transfers of a payout item (at most one, by construction): how an unknown outcome is
    /// learned.
    pub async fn transfers_of(&self, payout_item_id: &str) -> Result<Vec<Transfer>, StripeError> {
        let list: List<Transfer> = self
            .get("/v1/transfers", &[("transfer_group", payout_item_id), ("limit", "10")])
            .await?;
        Ok(list.data)
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
            return Err(StripeError::Refused { status, kind, message });
        }
        Err(StripeError::Unknown(last))
    }
}
