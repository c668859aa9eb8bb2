//! Input schemas that tell the truth, and the check that enforces them.
//!
//! At start-up every tool's input schema is *finished*: closed (`additionalProperties: false`),
//! every argument described (from [`describe`] when the tool's own docs say nothing), every text
//! argument bounded by the same `maxLength` the edge enforces. Before a tool runs, its arguments
//! are checked against that schema, so an unknown, missing, mistyped or out-of-range argument is
//! an `INVALID_ARGUMENT` tool error naming the argument, what was given and what is expected —
//! the schema an agent reads is exactly the rule it is held to.

use super::arguments::max_chars;
use amba_core::ApiError;
use rmcp::model::{JsonObject, Tool};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Closes, describes and bounds one tool's input schema.
pub fn finish(mut tool: Tool) -> Tool {
    let mut schema: JsonObject = (*tool.input_schema).clone();
    schema.insert("additionalProperties".into(), Value::Bool(false));
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        for (name, property) in properties.iter_mut() {
            let Value::Object(property) = property else { continue };
            if !property.contains_key("description") {
                property.insert("description".into(), json!(describe(name)));
            }
            if types(property).contains(&"string") && !property.contains_key("maxLength") {
                property.insert("maxLength".into(), json!(max_chars(name)));
            }
        }
    }
    tool.input_schema = Arc::new(schema);
    tool
}

/// What the common arguments are, for tools whose own docs do not say.
pub fn describe(argument: &str) -> &'static str {
    match argument {
        "program_id" => {
            "The program's id, `prg_` + 32 hex digits (from amba_affiliate_programs_create or _programs_list)."
        }
        "enrollment_id" => {
            "An enrollment's id (one affiliate in one program), `enr_` + 32 hex digits (from _invite, _affiliates_list or _my_programs_list)."
        }
        "conversion_id" => "A conversion's id, `cnv_` + 32 hex digits (from _conversion_report or _conversions_list).",
        "affiliate_org_id" => {
            "The affiliate organization's id, `org_` + 32 hex digits (the affiliate gets it from amba_affiliate_signup)."
        }
        "parent_enrollment_id" => {
            "The sponsor's enrollment id in the same program (`enr_…`), placing this affiliate under it for multi-level overrides."
        }
        "token_id" => "A personal access token's id, `tok_` + 32 hex digits (from amba_affiliate_tokens_list).",
        "cursor" => "Where the next page starts: the `next_cursor` of the previous page. Omit for the first page.",
        "limit" => "Page size, 1-200 (default 50).",
        "status" => "Only items in this status.",
        "name" => "A display name, e.g. \"Acme Partners\".",
        "email" => "An e-mail address, e.g. founder@acme.example.",
        "org_name" => "The organization's name, e.g. \"Acme\".",
        "reason" => "Why, in a sentence; kept with the record and shown to the affiliate.",
        "idempotency_key" => {
            "Any string unique to this operation: a retry with the same key returns the first result instead of doing it twice."
        }
        "code" => "An affiliate's referral code (from _invite or _my_referral_generate).",
        "subject_ref" => {
            "Your id for the visitor or device (a cookie or device id), or the `amba_sub` value an affiliate link added to your landing URL."
        }
        "from" => "Start of the period, RFC 3339, e.g. 2026-11-01T00:00:00Z (inclusive).",
        "to" => "End of the period, RFC 3339, e.g. 2026-12-01T00:00:00Z (exclusive).",
        "occurred_at" => "When it happened, RFC 3339, e.g. 2026-11-24T10:00:00Z; default now.",
        "currency" => "ISO 4217 currency code, e.g. USD, EUR, JPY.",
        "amount_minor" => "An amount in integer minor units of the currency: USD 24.69 is 2469, JPY 500 is 500.",
        _ => "See the tool's description.",
    }
}

/// The JSON types a property allows (`["integer", "null"]` for an optional integer).
fn types(property: &Map<String, Value>) -> Vec<&str> {
    match property.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Reads an integer argument sent as JSON text holding exactly an integer (`"2500"`, `"-3"`) as
/// that integer, for every tool alike: agents often quote numbers. Only plain decimal digits
/// with an optional leading minus are read; anything else (`"25.00"`, `"2.5e3"`, `" 25"`, `""`,
/// `"+25"`) stays text, so [`check`] refuses it as before. Arrays of integers are read item by
/// item. The schema still says `integer`: this is leniency, not a second type.
pub fn read_integer_text(tool: &Tool, arguments: Option<&mut Map<String, Value>>) {
    let Some(Value::Object(properties)) = tool.input_schema.get("properties") else {
        return;
    };
    for (name, value) in arguments.into_iter().flatten() {
        if let Some(Value::Object(property)) = properties.get(name) {
            read_integer_value(property, value);
        }
    }
}

fn read_integer_value(property: &Map<String, Value>, value: &mut Value) {
    let allowed = types(property);
    match value {
        Value::String(text) if allowed.contains(&"integer") && !allowed.contains(&"string") => {
            if let Some(number) = integer_text(text) {
                *value = number;
            }
        }
        Value::Array(items) if allowed.contains(&"array") => {
            if let Some(Value::Object(item)) = property.get("items") {
                items.iter_mut().for_each(|v| read_integer_value(item, v));
            }
        }
        _ => {}
    }
}

/// `Some(number)` when `text` is exactly a decimal integer that fits 64 bits.
fn integer_text(text: &str) -> Option<Value> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>()
        .map(Value::from)
        .or_else(|_| text.parse::<u64>().map(Value::from))
        .ok()
}

/// Checks a call's arguments against the tool's finished schema.
pub fn check(tool: &Tool, arguments: Option<&Map<String, Value>>) -> Result<(), ApiError> {
    let empty = Map::new();
    let arguments = arguments.unwrap_or(&empty);
    let properties = match tool.input_schema.get("properties") {
        Some(Value::Object(p)) => p,
        _ => &empty,
    };
    let names: Vec<&str> = properties.keys().map(String::as_str).collect();
    for given in arguments.keys() {
        if !properties.contains_key(given) {
            return Err(unknown_argument(tool, given, &names));
        }
    }
    let required = tool.input_schema.get("required").and_then(Value::as_array);
    for name in required.into_iter().flatten().filter_map(Value::as_str) {
        if arguments.get(name).is_none_or(Value::is_null) {
            let about = properties
                .get(name)
                .and_then(|p| p.get("description"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(invalid(name, None, &format!("`{name}` is required: {about}")));
        }
    }
    for (name, value) in arguments {
        if let Some(Value::Object(property)) = properties.get(name) {
            check_value(name, property, value)?;
        }
    }
    Ok(())
}

fn check_value(name: &str, property: &Map<String, Value>, value: &Value) -> Result<(), ApiError> {
    let allowed = types(property);
    if allowed.is_empty() {
        return Ok(()); // any JSON (e.g. a commission rule as an object or as text)
    }
    let fits = match value {
        Value::Null => allowed.contains(&"null"),
        Value::Bool(_) => allowed.contains(&"boolean"),
        Value::Number(n) => allowed.contains(&"number") || (allowed.contains(&"integer") && (n.is_i64() || n.is_u64())),
        Value::String(_) => allowed.contains(&"string"),
        Value::Array(_) => allowed.contains(&"array"),
        Value::Object(_) => allowed.contains(&"object"),
    };
    if !fits {
        let expected = allowed.iter().find(|t| **t != "null").copied().unwrap_or("null");
        return Err(invalid(
            name,
            Some(value),
            &format!("`{name}` must be {}; got {}", a_type(expected, property), shown(value)),
        ));
    }
    if let Value::Number(n) = value {
        let given = n.as_f64().unwrap_or_default();
        let min = property.get("minimum").and_then(Value::as_f64);
        let max = property.get("maximum").and_then(Value::as_f64);
        if min.is_some_and(|m| given < m) || max.is_some_and(|m| given > m) {
            return Err(invalid(
                name,
                Some(value),
                &format!("`{name}` is {n}; {}", range(min, max)),
            ));
        }
    }
    if let Value::String(text) = value {
        let choices: Vec<&str> = property
            .get("enum")
            .and_then(Value::as_array)
            .map(|e| e.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !choices.is_empty() && !choices.contains(&text.trim()) {
            return Err(invalid(
                name,
                Some(value),
                &format!("`{name}` is {}; expected one of: {}", shown(value), choices.join(", ")),
            ));
        }
    }
    Ok(())
}

fn a_type(kind: &str, property: &Map<String, Value>) -> String {
    let integer = match property.get("format").and_then(Value::as_str) {
        Some(f) if f.starts_with('u') => "a whole number, 0 or more (e.g. 30)",
        _ => "a whole number (e.g. 2500)",
    };
    match kind {
        "integer" => integer.to_owned(),
        "number" => "a number (e.g. 12.5)".to_owned(),
        "boolean" => "true or false".to_owned(),
        "array" => "a JSON array (e.g. [500, 200])".to_owned(),
        "object" => "a JSON object".to_owned(),
        _ => "text (a JSON string, e.g. \"abc\")".to_owned(),
    }
}

fn range(min: Option<f64>, max: Option<f64>) -> String {
    match (min, max) {
        (Some(min), Some(max)) => format!("it must be between {min} and {max}"),
        (Some(min), None) => format!("it must be at least {min}"),
        (None, Some(max)) => format!("it must be at most {max}"),
        (None, None) => String::new(),
    }
}

/// A value as a message shows it: JSON, truncated.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    let kind = match value {
        Value::String(_) => "the text ",
        Value::Number(_) => "the number ",
        Value::Bool(_) => "",
        Value::Null => "",
        Value::Array(_) => "the array ",
        Value::Object(_) => "the object ",
    };
    if text.chars().count() > 60 {
        format!("{kind}{}…", text.chars().take(60).collect::<String>())
    } else {
        format!("{kind}{text}")
    }
}

fn invalid(argument: &str, given: Option<&Value>, message: &str) -> ApiError {
    let mut details = json!({ "argument": argument });
    if let Some(given) = given {
        details["given"] = json!(shown(given));
    }
    ApiError::invalid(message.trim_end()).with_details(details)
}

fn unknown_argument(tool: &Tool, given: &str, names: &[&str]) -> ApiError {
    let nearest = names
        .iter()
        .map(|n| (strsim::damerau_levenshtein(&given.to_lowercase(), n), *n))
        .min()
        .filter(|(distance, n)| *distance <= 3.max(n.len() / 3))
        .map(|(_, n)| n)
        // A shortened name (`org_id` for `affiliate_org_id`) is far by edit distance but plain
        // to a reader: the one argument that ends with it.
        .or_else(|| {
            let suffix = format!("_{}", given.to_lowercase());
            let mut ends: Vec<&str> = names.iter().copied().filter(|n| n.ends_with(&suffix)).collect();
            (ends.len() == 1).then(|| ends.remove(0))
        });
    let hint = match nearest {
        Some(n) => format!("; did you mean `{n}`?"),
        None => ".".to_owned(),
    };
    ApiError::invalid(format!(
        "unknown argument `{given}`{hint} {} takes: {}",
        tool.name,
        names.join(", ")
    ))
    .with_details(json!({ "argument": given, "did_you_mean": nearest, "valid": names }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool() -> Tool {
        let schema = json!({
            "type": "object",
            "properties": {
                "program_id": {"type": "string"},
                "hold_days": {"type": ["integer", "null"], "format": "uint32", "minimum": 0, "maximum": 365},
                "status": {"type": ["string", "null"], "enum": ["draft", "active"]},
                "commission": {}
            },
            "required": ["program_id"]
        });
        let schema = schema.as_object().cloned().unwrap_or_default();
        finish(Tool::new("amba_affiliate_programs_update", "update", Arc::new(schema)))
    }

    fn message(args: Value) -> String {
        check(&tool(), args.as_object())
            .err()
            .map(|e| e.message)
            .unwrap_or_default()
    }

    #[test]
    fn finished_schemas_are_closed_described_and_bounded() {
        let tool = tool();
        assert_eq!(tool.input_schema["additionalProperties"], json!(false));
        let id = &tool.input_schema["properties"]["program_id"];
        assert_eq!(id["maxLength"], json!(200));
        assert!(id["description"].as_str().is_some_and(|d| d.contains("prg_")));
    }

    #[test]
    fn every_kind_of_mistake_names_the_argument() {
        assert_eq!(
            message(json!({"program_id": "prg_1", "bogus": 1})),
            "unknown argument `bogus`. amba_affiliate_programs_update takes: commission, hold_days, program_id, status"
        );
        assert_eq!(
            message(json!({"program_id": "prg_1", "hold_day": 0})),
            "unknown argument `hold_day`; did you mean `hold_days`? amba_affiliate_programs_update takes: \
             commission, hold_days, program_id, status"
        );
        assert!(message(json!({})).starts_with("`program_id` is required: The program's id"));
        // A shortened name: the one argument ending with it.
        assert!(
            message(json!({"program_id": "p", "id": 1}))
                .starts_with("unknown argument `id`; did you mean `program_id`?")
        );
        assert_eq!(
            message(json!({"program_id": "p", "hold_days": "30"})),
            "`hold_days` must be a whole number, 0 or more (e.g. 30); got the text \"30\""
        );
        assert_eq!(
            message(json!({"program_id": "p", "hold_days": 400})),
            "`hold_days` is 400; it must be between 0 and 365"
        );
        assert_eq!(
            message(json!({"program_id": "p", "status": "live"})),
            "`status` is the text \"live\"; expected one of: draft, active"
        );
        assert!(message(json!({"program_id": "p", "hold_days": null, "commission": "20%"})).is_empty());
        assert!(message(json!({"program_id": "p", "hold_days": 2.5})).contains("whole number"));
    }

    fn read(args: Value) -> Value {
        let mut args = args.as_object().cloned().unwrap_or_default();
        read_integer_text(&tool(), Some(&mut args));
        Value::Object(args)
    }

    #[test]
    fn integers_sent_as_exact_numeric_text_read_as_integers() {
        assert_eq!(read(json!({"hold_days": "30"}))["hold_days"], json!(30));
        assert_eq!(read(json!({"hold_days": "-3"}))["hold_days"], json!(-3));
        assert_eq!(
            read(json!({"hold_days": "18446744073709551615"}))["hold_days"],
            json!(u64::MAX)
        );
        for kept in [
            "25.00",
            "2.5e3",
            " 25",
            "25 ",
            "",
            "+25",
            "-",
            "0x1F",
            "١٢",
            "99999999999999999999",
        ] {
            assert_eq!(read(json!({"hold_days": kept}))["hold_days"], json!(kept), "{kept:?}");
        }
        // Text arguments stay text, whatever they hold.
        assert_eq!(read(json!({"program_id": "30"}))["program_id"], json!("30"));
        assert!(message(read(json!({"program_id": "p", "hold_days": "30"}))).is_empty());
        assert_eq!(
            message(read(json!({"program_id": "p", "hold_days": "400"}))),
            "`hold_days` is 400; it must be between 0 and 365"
        );
        assert_eq!(
            message(read(json!({"program_id": "p", "hold_days": "25.00"}))),
            "`hold_days` must be a whole number, 0 or more (e.g. 30); got the text \"25.00\""
        );
    }
}
