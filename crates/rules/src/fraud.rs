//! A program's fraud checks as its owner configures them: which run, with which thresholds.
//! Each hit holds the conversion for review with a reason code; none ever drops a sale.
//!
//! ```json
//! {"self_referral": true, "disposable_email": true,
//!  "velocity": {"max_per_minute": 30},
//!  "click_to_sale": {"min_seconds": 5},
//!  "refund_rate": {"max_bps": 3000, "last_sales": 20}}
//! ```
//! Self-referral and disposable e-mail run unless set to `false`; a check with a threshold runs
//! only when given one (`null` or absent turns it off). Unknown fields are refused.

use amba_core::ApiError;
use serde::{Deserialize, Serialize};

/// Conversions per affiliate per minute above which a sale is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Velocity {
    pub max_per_minute: u32,
}

/// A sale sooner than this after the click that attributed it is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickToSale {
    pub min_seconds: u32,
}

/// An affiliate whose last `last_sales` approved sales were refunded more than `max_bps` of the
/// time (counted once it has that many) has its new sales held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRate {
    pub max_bps: u32,
    pub last_sales: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudChecks {
    /// The customer's e-mail is one of the affiliate org's own.
    #[serde(default = "on")]
    pub self_referral: bool,
    /// The customer's e-mail is at a disposable (throwaway) domain.
    #[serde(default = "on")]
    pub disposable_email: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub velocity: Option<Velocity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_to_sale: Option<ClickToSale>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_rate: Option<RefundRate>,
}

fn on() -> bool {
    true
}

impl Default for FraudChecks {
    fn default() -> Self {
        FraudChecks {
            self_referral: true,
            disposable_email: true,
            velocity: None,
            click_to_sale: None,
            refund_rate: None,
        }
    }
}

const MAX_PER_MINUTE: u32 = 1_000_000;
const MAX_SECONDS: u32 = 86_400;
const MAX_SALES: u32 = 1_000;

impl FraudChecks {
    /// Parses and validates the owner's settings.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, ApiError> {
        let checks: FraudChecks = serde_json::from_value(value.clone()).map_err(|e| {
            ApiError::invalid(format!(
                "invalid fraud_checks ({e}); e.g. {{\"self_referral\":true,\"disposable_email\":true,\
                 \"velocity\":{{\"max_per_minute\":30}},\"click_to_sale\":{{\"min_seconds\":5}},\
                 \"refund_rate\":{{\"max_bps\":3000,\"last_sales\":20}}}}"
            ))
        })?;
        if let Some(v) = checks.velocity
            && !(1..=MAX_PER_MINUTE).contains(&v.max_per_minute)
        {
            return Err(ApiError::invalid(format!(
                "fraud_checks.velocity.max_per_minute must be between 1 and {MAX_PER_MINUTE}"
            )));
        }
        if let Some(c) = checks.click_to_sale
            && !(1..=MAX_SECONDS).contains(&c.min_seconds)
        {
            return Err(ApiError::invalid(format!(
                "fraud_checks.click_to_sale.min_seconds must be between 1 and {MAX_SECONDS}"
            )));
        }
        if let Some(r) = checks.refund_rate {
            if r.max_bps >= 10_000 {
                return Err(ApiError::invalid(
                    "fraud_checks.refund_rate.max_bps must be below 10000",
                ));
            }
            if !(1..=MAX_SALES).contains(&r.last_sales) {
                return Err(ApiError::invalid(format!(
                    "fraud_checks.refund_rate.last_sales must be between 1 and {MAX_SALES}"
                )));
            }
        }
        Ok(checks)
    }

    /// Reads stored settings; anything unreadable is the defaults (stored settings were validated).
    pub fn from_stored(text: &str) -> Self {
        serde_json::from_str(text).unwrap_or_default()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_thresholds_and_refusals() {
        assert_eq!(FraudChecks::from_json(&json!({})).ok(), Some(FraudChecks::default()));
        let all = FraudChecks::from_json(&json!({"self_referral": false, "velocity": {"max_per_minute": 3},
            "click_to_sale": {"min_seconds": 5}, "refund_rate": {"max_bps": 2500, "last_sales": 4}}));
        let all = all.unwrap_or_default();
        assert!(!all.self_referral && all.disposable_email);
        assert_eq!(all.velocity, Some(Velocity { max_per_minute: 3 }));
        assert_eq!(FraudChecks::from_stored(&all.to_json().to_string()), all);
        for bad in [
            json!({"velocity": {"max_per_minute": 0}}),
            json!({"refund_rate": {"max_bps": 10_000, "last_sales": 5}}),
            json!({"refund_rate": {"max_bps": 100}}),
            json!({"click_to_sale": {"min_seconds": 0}}),
            json!({"ip_check": true}),
            json!("on"),
        ] {
            assert!(FraudChecks::from_json(&bad).is_err(), "{bad} was accepted");
        }
        assert_eq!(FraudChecks::from_stored("garbage"), FraudChecks::default());
    }
}
