//! The documented text limits, applied to every MCP tool's arguments before the tool runs: one
//! place, so no tool can forget one and no hostile string reaches a service.

use amba_core::ApiError;
use amba_core::limits::{self, MAX_EMAIL_CHARS, MAX_KEY_CHARS, MAX_REASON_CHARS, MAX_URL_CHARS};
use serde_json::{Map, Value};

/// A commission rule written as JSON text (tiered rules can be long).
const MAX_RULE_CHARS: usize = 10_000;

/// The limit of a text argument, by its name.
pub fn max_chars(argument: &str) -> usize {
    match argument {
        "reason" => MAX_REASON_CHARS,
        "commission" => MAX_RULE_CHARS,
        a if a.ends_with("email") => MAX_EMAIL_CHARS,
        a if a.ends_with("_url") => MAX_URL_CHARS,
        _ => MAX_KEY_CHARS,
    }
}

/// Refuses any text argument (nested ones included) over its limit or with control characters.
pub fn check(arguments: Option<&Map<String, Value>>) -> Result<(), ApiError> {
    for (name, value) in arguments.into_iter().flatten() {
        check_value(name, max_chars(name), value)?;
    }
    Ok(())
}

fn check_value(name: &str, max: usize, value: &Value) -> Result<(), ApiError> {
    match value {
        Value::String(text) => limits::text(name, text, max).map(drop),
        Value::Array(items) => items.iter().try_for_each(|item| check_value(name, max, item)),
        Value::Object(fields) => fields
            .iter()
            .try_for_each(|(field, item)| check_value(&format!("{name}.{field}"), max.min(MAX_RULE_CHARS), item)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn limits_by_argument_name_and_nesting() {
        let ok = json!({"program_id": "prg_1", "reason": "r".repeat(1_000), "landing_url": "u".repeat(2_048)});
        assert!(check(ok.as_object()).is_ok());
        let err = |v: Value| check(v.as_object()).err().map(|e| e.message).unwrap_or_default();
        assert!(err(json!({"reason": "r".repeat(1_001)})).starts_with("reason is 1001 characters"));
        assert!(err(json!({"program_id": "p".repeat(201)})).starts_with("program_id"));
        assert!(err(json!({"customer_email": "a\u{0}@b"})).contains("U+0000"));
        assert!(err(json!({"commission": {"tiers": [{"note": "\u{7}"}]}})).starts_with("commission.tiers"));
    }
}
