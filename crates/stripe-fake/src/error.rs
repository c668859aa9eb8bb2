//! Stripe's error envelope (`{"error":{"type","message","param"?,"code"?}}`, card errors with
//! `decline_code`, `charge`, `payment_intent`, `payment_method`, `doc_url`) and the error of the
//! fake's own Rust API.

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use crate::cards;

/// Why a hosted checkout page could not complete its session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CheckoutRefusal {
    /// Never created, or already completed.
    Unknown,
    /// Past `expires_at`; the customer goes back to the session's `cancel_url`, if any.
    Expired { cancel_url: Option<String> },
    /// `?card=` names no test card.
    UnknownCard(String),
}

/// An error of the fake's Rust API (`complete_onboarding`, `reverse_transfer`, ...).
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// The account, transfer or event does not exist (Stripe's `resource_missing`).
    #[error("{0}")]
    NotFound(String),
    /// The operation is refused as the Stripe API would refuse it (e.g. reversing more than remains).
    #[error("{0}")]
    InvalidRequest(String),
    /// Delivering needs a webhook URL; set one with `set_webhook_url`.
    #[error("no webhook URL is set")]
    NoWebhookUrl,
    /// The webhook receiver could not be reached.
    #[error("webhook delivery failed: {0}")]
    Delivery(String),
}

/// The brief names the error both ways; one type serves both names.
pub type FaultError = FakeError;

/// An API error as Stripe renders it.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    pub(crate) param: Option<String>,
    pub(crate) code: Option<&'static str>,
    /// More fields of the envelope (a card error's `decline_code`, `charge`, `payment_intent`, ...).
    pub(crate) extra: Map<String, Value>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
            extra: Map::new(),
        }
    }

    /// 402 `card_error`: the request ran (a charge may have been made and events sent), so it is
    /// saved under its idempotency key like a success. `extra` carries `decline_code`, `charge`,
    /// `payment_intent`, `payment_method` and `doc_url`.
    pub(crate) fn card(code: &'static str, message: impl Into<String>, extra: Map<String, Value>) -> ApiError {
        let mut err = ApiError::new(StatusCode::PAYMENT_REQUIRED, "card_error", message).code(code);
        err.extra = extra;
        err
    }

    /// The endpoint started executing and changed state before failing (a card error), so the
    /// answer is kept under the idempotency key; a validation error changes nothing and is not.
    pub(crate) fn committed(&self) -> bool {
        self.kind == "card_error"
    }

    /// 400 `invalid_request_error` about one parameter.
    pub(crate) fn invalid(message: impl Into<String>, param: &str) -> ApiError {
        let mut err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        err.param = Some(param.to_owned());
        err
    }

    /// 404 `resource_missing` (`No such transfer: 'tr_x'`).
    pub(crate) fn missing(what: &str, id: &str, param: &str) -> ApiError {
        let mut err = ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("No such {what}: '{id}'"),
        );
        err.param = Some(param.to_owned());
        err.code("resource_missing")
    }

    pub(crate) fn unauthorized(message: String) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
    }

    pub(crate) fn unrecognized(method: &str, path: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/."
            ),
        )
    }

    pub(crate) fn idempotency(message: String) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "idempotency_error", message)
    }

    pub(crate) fn after_commit() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "An unknown error occurred while processing your request (injected fault: the operation was committed).",
        )
    }

    pub(crate) fn rate_limited() -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
        )
        .code("rate_limit")
    }

    pub(crate) fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub(crate) fn body(&self) -> Value {
        let mut error = json!({"type": self.kind, "message": self.message});
        if let Some(param) = &self.param {
            error["param"] = json!(param);
        }
        if let Some(code) = self.code {
            error["code"] = json!(code);
        }
        if let Value::Object(fields) = &mut error {
            for (key, value) in &self.extra {
                fields.insert(key.clone(), value.clone());
            }
        }
        json!({ "error": error })
    }
}

impl From<CheckoutRefusal> for FakeError {
    fn from(refusal: CheckoutRefusal) -> FakeError {
        match refusal {
            CheckoutRefusal::Unknown => {
                FakeError::NotFound("No such open checkout session (unknown, or already completed)".to_owned())
            }
            CheckoutRefusal::Expired { .. } => FakeError::InvalidRequest("The checkout session has expired".to_owned()),
            CheckoutRefusal::UnknownCard(card) => FakeError::InvalidRequest(format!(
                "Unknown test card '{card}'; use one of: {}",
                cards::names().join(", ")
            )),
        }
    }
}

impl From<ApiError> for FakeError {
    fn from(err: ApiError) -> FakeError {
        if err.status == StatusCode::NOT_FOUND {
            FakeError::NotFound(err.message)
        } else {
            FakeError::InvalidRequest(err.message)
        }
    }
}
