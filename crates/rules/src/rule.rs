//! The commission rule as written by an owner: a versioned JSON tagged union (the README
//! shows each kind; docs/ledger.md, "Who decides the amount", how it is applied).
//!
//! ```json
//! {"schema":1,"type":"percentage","bps":2000}
//! {"schema":1,"type":"flat","amount_minor":1500}
//! {"schema":1,"type":"recurring","bps":2000,"months":12}
//! {"schema":1,"type":"tiered","basis":"conversions","period":"month",
//!  "tiers":[{"from":0,"bps":1000},{"from":10,"bps":1500}]}
//! ```
//! Unknown fields and schemas are refused, so a typo never silently becomes a default.

use amba_core::ApiError;
use serde::{Deserialize, Serialize};

/// The only schema this version understands.
pub const SCHEMA_VERSION: u32 = 1;
const MAX_BPS: u32 = 10_000;
const MAX_RECURRING_MONTHS: u32 = 120;
const MAX_TIERS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CommissionRule {
    /// A share of each conversion's amount.
    Percentage { bps: u32 },
    /// A fixed amount per conversion, in the program currency's minor units.
    Flat { amount_minor: i64 },
    /// A share of the first conversion and of the bound customer's renewals for `months`.
    Recurring { bps: u32, months: u32 },
    /// A share that grows with the affiliate's volume in the period.
    Tiered {
        basis: TierBasis,
        period: TierPeriod,
        tiers: Vec<Tier>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierBasis {
    Conversions,
    Revenue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierPeriod {
    Month,
    Lifetime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Lower bound (inclusive) of the basis: a conversion count or revenue in minor units.
    pub from: i64,
    pub bps: u32,
}

impl CommissionRule {
    /// Parses and validates a rule given as a JSON value.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, ApiError> {
        let object = value.as_object().ok_or_else(|| {
            ApiError::invalid(
                "commission must be a JSON object such as {{\"schema\":1,\"type\":\"percentage\",\"bps\":2000}}",
            )
        })?;
        match object.get("schema").and_then(serde_json::Value::as_u64) {
            Some(1) => {}
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "commission schema {other} is not supported; use 1"
                )));
            }
            None => return Err(ApiError::invalid("commission needs \"schema\": 1")),
        }
        let mut body = object.clone();
        body.remove("schema");
        let rule: CommissionRule = serde_json::from_value(serde_json::Value::Object(body))
            .map_err(|e| ApiError::invalid(format!("invalid commission ({e}); expected e.g. {{\"schema\":1,\"type\":\"percentage\",\"bps\":2000}} (20 %) or {{\"schema\":1,\"type\":\"flat\",\"amount_minor\":1500}}")))?;
        rule.validate()?;
        Ok(rule)
    }

    /// Parses a rule from its JSON text.
    pub fn from_json_str(text: &str) -> Result<Self, ApiError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ApiError::invalid(format!("commission {:?} is not valid JSON ({e}); send a JSON object, e.g. {{\"schema\":1,\"type\":\"percentage\",\"bps\":2000}} (20 %) or {{\"schema\":1,\"type\":\"flat\",\"amount_minor\":1500}}", shorten(text))))?;
        Self::from_json(&value)
    }

    /// The canonical stored form, `schema` included.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(object) = value.as_object_mut() {
            object.insert("schema".into(), SCHEMA_VERSION.into());
        }
        value
    }

    fn validate(&self) -> Result<(), ApiError> {
        let check_bps = |bps: u32| {
            if bps > MAX_BPS {
                Err(ApiError::invalid(format!(
                    "commission bps must be between 0 and {MAX_BPS} (100%), got {bps}"
                )))
            } else {
                Ok(())
            }
        };
        match self {
            CommissionRule::Percentage { bps } => check_bps(*bps),
            CommissionRule::Flat { amount_minor } if *amount_minor <= 0 => {
                Err(ApiError::invalid("flat commission amount_minor must be positive"))
            }
            CommissionRule::Flat { .. } => Ok(()),
            CommissionRule::Recurring { bps, months } => {
                check_bps(*bps)?;
                if (1..=MAX_RECURRING_MONTHS).contains(months) {
                    Ok(())
                } else {
                    Err(ApiError::invalid(format!(
                        "recurring months must be between 1 and {MAX_RECURRING_MONTHS}"
                    )))
                }
            }
            CommissionRule::Tiered { tiers, .. } => {
                if tiers.is_empty() || tiers.len() > MAX_TIERS {
                    return Err(ApiError::invalid(format!(
                        "tiered commission needs 1 to {MAX_TIERS} tiers"
                    )));
                }
                if tiers[0].from != 0 {
                    return Err(ApiError::invalid("the first tier must start at \"from\": 0"));
                }
                for pair in tiers.windows(2) {
                    if pair[1].from <= pair[0].from {
                        return Err(ApiError::invalid("tier \"from\" values must strictly increase"));
                    }
                }
                tiers.iter().try_for_each(|t| check_bps(t.bps))
            }
        }
    }
}

/// At most 60 characters of a value echoed in a message.
fn shorten(text: &str) -> String {
    let mut short: String = text.chars().take(60).collect();
    if text.chars().count() > 60 {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_type_parses_and_round_trips() {
        let rules = [
            json!({"schema":1,"type":"percentage","bps":2000}),
            json!({"schema":1,"type":"flat","amount_minor":1500}),
            json!({"schema":1,"type":"recurring","bps":2000,"months":12}),
            json!({"schema":1,"type":"tiered","basis":"conversions","period":"month","tiers":[{"from":0,"bps":1000},{"from":10,"bps":1500}]}),
            json!({"schema":1,"type":"tiered","basis":"revenue","period":"lifetime","tiers":[{"from":0,"bps":500}]}),
        ];
        for rule in rules {
            let parsed = CommissionRule::from_json(&rule);
            assert_eq!(
                parsed.as_ref().map(CommissionRule::to_json).ok(),
                Some(rule.clone()),
                "{rule}"
            );
        }
    }

    #[test]
    fn invalid_rules_are_refused_with_a_reason() {
        let bad = [
            json!("20%"),
            json!({"type":"percentage","bps":2000}),
            json!({"schema":2,"type":"percentage","bps":2000}),
            json!({"schema":1,"type":"percent","bps":2000}),
            json!({"schema":1,"type":"percentage","bps":10001}),
            json!({"schema":1,"type":"percentage","bps":-1}),
            json!({"schema":1,"type":"percentage","bps":2000,"extra":1}),
            json!({"schema":1,"type":"percentage"}),
            json!({"schema":1,"type":"flat","amount_minor":0}),
            json!({"schema":1,"type":"flat","amount_minor":"15"}),
            json!({"schema":1,"type":"recurring","bps":2000,"months":0}),
            json!({"schema":1,"type":"recurring","bps":2000}),
            json!({"schema":1,"type":"tiered","basis":"conversions","period":"month","tiers":[]}),
            json!({"schema":1,"type":"tiered","basis":"conversions","period":"month","tiers":[{"from":5,"bps":1000}]}),
            json!({"schema":1,"type":"tiered","basis":"conversions","period":"month","tiers":[{"from":0,"bps":1000},{"from":0,"bps":1500}]}),
            json!({"schema":1,"type":"tiered","basis":"clicks","period":"month","tiers":[{"from":0,"bps":1000}]}),
            json!({"schema":1,"type":"tiered","basis":"revenue","period":"week","tiers":[{"from":0,"bps":1000}]}),
        ];
        for rule in bad {
            let err = CommissionRule::from_json(&rule).err();
            assert_eq!(
                err.map(|e| e.code),
                Some(amba_core::ErrorCode::InvalidArgument),
                "{rule} should be refused"
            );
        }
    }

    #[test]
    fn text_that_is_not_json_is_refused() {
        assert!(CommissionRule::from_json_str("{nope").is_err());
        assert!(CommissionRule::from_json_str(r#"{"schema":1,"type":"flat","amount_minor":1}"#).is_ok());
    }
}
