//! What an agent learns from the server alone: `tools/list` is complete and true, and every
//! mistake comes back as a tool error it can correct itself from.

use crate::support::{active_program, org, text};
use amba_testkit::TestSystem;
use serde_json::{Value, json};

/// A value that passes the schema for an argument not under test.
fn plausible(property: &Value) -> Value {
    let kind = property["type"].as_str().or_else(|| {
        property["type"]
            .as_array()
            .and_then(|t| t.iter().find_map(|t| t.as_str().filter(|t| *t != "null")))
    });
    if let Some(first) = property["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    match kind {
        Some("integer") | Some("number") => json!(property["minimum"].as_i64().unwrap_or(1).max(1)),
        Some("boolean") => json!(false),
        Some("array") => json!([]),
        Some("object") => json!({}),
        _ => json!("x"),
    }
}

#[tokio::test]
async fn tools_list_describes_every_tool_and_argument_and_the_server_enforces_the_schema() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let owner = org(&sys, "Describe").await?;
    let program = active_program(&owner, json!({})).await?;
    let tools = owner.mcp.tools().await?;
    let mut problems = Vec::new();
    let mut probes = 0;
    for tool in &tools {
        let name = tool.name.to_string();
        let description = tool.description.as_deref().unwrap_or_default();
        if description.len() < 60 {
            problems.push(format!("{name}: description too thin: {description:?}"));
        }
        let schema = serde_json::to_value(&*tool.input_schema)?;
        if schema["additionalProperties"] != json!(false) {
            problems.push(format!("{name}: open input schema"));
        }
        let properties = schema["properties"].as_object().cloned().unwrap_or_default();
        for (arg, property) in &properties {
            let about = property["description"].as_str().unwrap_or_default();
            if about.len() < 15 || about == "See the tool's description." {
                problems.push(format!("{name}.{arg}: no description of its own ({about:?})"));
            }
        }
        // Probe every bound the schema states: just past it is refused, naming the argument.
        let base: serde_json::Map<String, Value> = properties
            .iter()
            .map(|(arg, p)| {
                (
                    arg.clone(),
                    if arg == "program_id" {
                        json!(program)
                    } else {
                        plausible(p)
                    },
                )
            })
            .collect();
        for (arg, property) in &properties {
            let mut past = Vec::new();
            if let Some(max) = property["maximum"].as_i64() {
                past.push(json!(max + 1));
            }
            if let Some(min) = property["minimum"].as_i64() {
                past.push(json!(min - 1));
            }
            if let Some(max) = property["maxLength"].as_u64() {
                past.push(json!("x".repeat(usize::try_from(max)? + 1)));
            }
            if property["enum"].is_array() {
                past.push(json!("no-such-choice"));
            }
            for value in past {
                let mut args = base.clone();
                args.insert(arg.clone(), value.clone());
                let result = owner.mcp.call(&name, Value::Object(args)).await?;
                let error = result
                    .structured_content
                    .as_ref()
                    .map(|c| c["error"].clone())
                    .unwrap_or_default();
                let refused = result.is_error == Some(true)
                    && error["code"] == "INVALID_ARGUMENT"
                    && text(&error["message"]).contains(arg.as_str());
                if !refused {
                    problems.push(format!("{name}.{arg} = {value:.40}: not refused by name: {error}"));
                }
                probes += 1;
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(probes > 50, "{probes} bounds probed");
    sys.stop().await
}
