//! The typed error every surface shows: `{code, message, status, details}`.
//!
//! Services reply with it over NATS, the edge maps it to an MCP `isError` result, a gRPC status
//! or an HTTP body. Codes are stable SCREAMING_SNAKE strings; `status` is the HTTP equivalent.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidArgument,
    Unauthenticated,
    Forbidden,
    NotFound,
    Conflict,
    IdempotencyMismatch,
    RateLimited,
    PayoutsNotEnabled,
    /// A live payout run of a program whose owner has no saved payment method.
    FundingRequired,
    /// A live payout run above the owner org's per-run or per-day cap.
    PayoutCapExceeded,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::InvalidArgument,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::IdempotencyMismatch,
        ErrorCode::RateLimited,
        ErrorCode::PayoutsNotEnabled,
        ErrorCode::FundingRequired,
        ErrorCode::PayoutCapExceeded,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::IdempotencyMismatch => "IDEMPOTENCY_MISMATCH",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::PayoutsNotEnabled => "PAYOUTS_NOT_ENABLED",
            ErrorCode::FundingRequired => "FUNDING_REQUIRED",
            ErrorCode::PayoutCapExceeded => "PAYOUT_CAP_EXCEEDED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    pub fn parse(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// The HTTP-equivalent status.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict | ErrorCode::IdempotencyMismatch => 409,
            ErrorCode::RateLimited => 429,
            // 402 Payment Required: the owner must save a payment method first.
            ErrorCode::FundingRequired => 402,
            ErrorCode::PayoutCapExceeded => 422,
            ErrorCode::Internal => 500,
            ErrorCode::PayoutsNotEnabled | ErrorCode::Unavailable => 503,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The message of [`ApiError::owner_only`].
pub const OWNER_ONLY: &str = "this tool is for the program's owner";

/// A domain or transport failure as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            status: code.status(),
            details: serde_json::Value::Null,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(what: impl fmt::Display) -> Self {
        ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Forbidden, message)
    }

    /// An owner-only tool called by an org that has an enrollment in the program (any status:
    /// it learned of the program through that enrollment, so saying why leaks nothing).
    /// `instead`: the affiliate's tool for the same need, when there is one.
    pub fn owner_only(instead: Option<&str>) -> Self {
        let error = ApiError::forbidden(match instead {
            Some(tool) => format!("{OWNER_ONLY}; as an affiliate, use {tool}"),
            None => OWNER_ONLY.to_owned(),
        });
        match instead {
            Some(tool) => error.with_details(serde_json::json!({ "instead": tool })),
            None => error,
        }
    }

    /// What an org that does not own a program is told about `what` (the program, or something
    /// in it): FORBIDDEN ([`ApiError::owner_only`]) when it is enrolled in the program, else
    /// NOT_FOUND "`what` not found", exactly as for something that does not exist.
    pub fn not_owner(what: impl fmt::Display, enrolled: bool, instead: Option<&str>) -> Self {
        if enrolled {
            ApiError::owner_only(instead)
        } else {
            ApiError::not_found(what)
        }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Conflict, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Unauthenticated, message)
    }

    /// An unexpected failure: the cause is logged by the caller, clients see a generic message.
    pub fn internal() -> Self {
        ApiError::new(ErrorCode::Internal, "internal error; it has been logged")
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Unavailable, message)
    }

    /// `{"error": {code, message, status, details?}}`: the body MCP and HTTP clients receive.
    pub fn to_body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self })
    }
}

/// A database failure as clients see it, so `?` on a query answers with the typed error. The
/// cause is logged with where the `?` stands (`at`), never shown: clients get INTERNAL. Data
/// exceptions (class 22: a NUL byte, a value out of range) are the caller's input that slipped
/// past validation: a client error, never a 500.
impl From<sqlx::Error> for ApiError {
    #[track_caller]
    fn from(err: sqlx::Error) -> Self {
        let at = std::panic::Location::caller();
        if let sqlx::Error::Database(db) = &err
            && db.code().is_some_and(|code| code.starts_with("22"))
        {
            tracing::warn!(error = %err, %at, "input refused by the database");
            return ApiError::invalid("a value is malformed or out of range");
        }
        tracing::error!(error = %err, %at, "database error");
        ApiError::internal()
    }
}

impl From<crate::money::MoneyError> for ApiError {
    fn from(err: crate::money::MoneyError) -> Self {
        ApiError::invalid(err.to_string())
    }
}

impl From<crate::id::IdError> for ApiError {
    fn from(err: crate::id::IdError) -> Self {
        ApiError::invalid(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_map_to_status() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let json = serde_json::to_value(code).unwrap_or_default();
            assert_eq!(json, serde_json::Value::String(code.as_str().to_owned()));
        }
        assert_eq!(ErrorCode::PayoutsNotEnabled.status(), 503);
        assert_eq!(ErrorCode::IdempotencyMismatch.status(), 409);
        assert_eq!(ErrorCode::FundingRequired.status(), 402);
    }

    #[test]
    fn database_errors_are_internal_unless_the_input_was_refused() {
        let lost = ApiError::from(sqlx::Error::PoolTimedOut);
        assert_eq!((lost.code, lost.status), (ErrorCode::Internal, 500));
        assert_eq!(lost.message, "internal error; it has been logged");
        let missing = ApiError::from(sqlx::Error::RowNotFound);
        assert_eq!(missing.code, ErrorCode::Internal);
    }

    #[test]
    fn body_has_the_documented_shape() {
        let body = ApiError::invalid("bad currency").to_body();
        assert_eq!(body["error"]["code"], "INVALID_ARGUMENT");
        assert_eq!(body["error"]["status"], 400);
        assert_eq!(body["error"]["message"], "bad currency");
        assert!(body["error"].get("details").is_none());
    }

    #[test]
    fn owner_only_tools_tell_affiliates_and_hide_from_outsiders() {
        let affiliate = ApiError::not_owner("program prg_1", true, Some("amba_affiliate_my_stats_get"));
        assert_eq!((affiliate.code, affiliate.status), (ErrorCode::Forbidden, 403));
        assert_eq!(
            affiliate.message,
            "this tool is for the program's owner; as an affiliate, use amba_affiliate_my_stats_get"
        );
        assert_eq!(affiliate.details["instead"], "amba_affiliate_my_stats_get");
        let plain = ApiError::owner_only(None);
        assert_eq!(
            (plain.message.as_str(), &plain.details),
            (OWNER_ONLY, &serde_json::Value::Null)
        );
        let outsider = ApiError::not_owner("program prg_1", false, Some("amba_affiliate_my_stats_get"));
        assert_eq!(
            (outsider.code, outsider.message.as_str()),
            (ErrorCode::NotFound, "program prg_1 not found")
        );
        assert!(outsider.details.is_null());
    }
}
