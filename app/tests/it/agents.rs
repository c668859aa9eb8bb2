//! What an agent learns from the server alone: `tools/list` is complete and true, and every
//! mistake comes back as a tool error it can correct itself from.

use crate::support::{active_program, org, text};
use crate::system::TestSystem;
use serde_json::{Value, json};
use std::time::Duration;

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

async fn refusal(mcp: &amba_testkit::McpClient, tool: &str, args: Value) -> anyhow::Result<Value> {
    let result = mcp.call(tool, args).await?;
    anyhow::ensure!(result.is_error == Some(true), "{tool} accepted it");
    let error = result
        .structured_content
        .map(|c| c["error"].clone())
        .ok_or_else(|| anyhow::anyhow!("{tool}: an error outside the envelope: {:?}", result.content))?;
    let message = text(&error["message"]);
    anyhow::ensure!(message == message.trim_end(), "stray whitespace: {message:?}");
    for internal in [
        "ProgramId",
        "ProgramStatus",
        "ApprovalMode",
        "failed to deserialize",
        "u32",
        "i64",
    ] {
        anyhow::ensure!(!message.contains(internal), "internal name {internal} in {message:?}");
    }
    Ok(error)
}

#[tokio::test]
async fn every_kind_of_mistake_is_a_tool_error_an_agent_can_correct_from() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let owner = org(&sys, "Mistakes").await?;
    let program = active_program(&owner, json!({})).await?;
    let mcp = &owner.mcp;

    // Misspelled arguments: refused, with the nearest valid name; nothing created.
    let err = refusal(
        mcp,
        "amba_affiliate_programs_create",
        json!({"name": "Typos", "currency": "USD", "commission": {"schema":1,"type":"flat","amount_minor":100},
               "hold_day": 0, "landingurl": "https://acme.example"}),
    )
    .await?;
    assert_eq!(err["code"], "INVALID_ARGUMENT");
    assert!(
        text(&err["message"]).starts_with("unknown argument `hold_day`; did you mean `hold_days`?"),
        "{err}"
    );
    assert_eq!(err["details"]["did_you_mean"], "hold_days");
    let err = refusal(
        mcp,
        "amba_affiliate_programs_create",
        json!({"name": "Typos", "currency": "USD", "commission": {"schema":1,"type":"flat","amount_minor":100},
               "landingurl": "https://acme.example"}),
    )
    .await?;
    assert!(text(&err["message"]).contains("did you mean `landing_url`?"), "{err}");
    let programs = mcp.ok("amba_affiliate_programs_list", json!({})).await?;
    assert_eq!(
        programs["programs"].as_array().map(Vec::len),
        Some(1),
        "nothing was created"
    );

    // Missing, mistyped and out-of-range arguments name the argument and what is expected.
    let report = json!({"program_id": program, "project_id": "web", "external_id": "o-1", "currency": "USD"});
    let err = refusal(mcp, "amba_affiliate_conversion_report", report.clone()).await?;
    assert!(
        text(&err["message"]).starts_with("`amount_minor` is required: Sale amount in integer minor units"),
        "{err}"
    );
    let mut mistyped = report.clone();
    mistyped["amount_minor"] = json!("25.00");
    let err = refusal(mcp, "amba_affiliate_conversion_report", mistyped).await?;
    assert!(
        text(&err["message"]).contains("`amount_minor` must be a whole number"),
        "{err}"
    );
    assert!(
        text(&err["message"]).contains("\"25.00\""),
        "echoes what was given: {err}"
    );
    let err = refusal(
        mcp,
        "amba_affiliate_programs_update",
        json!({"program_id": program, "attribution_window_days": 0}),
    )
    .await?;
    assert_eq!(
        text(&err["message"]),
        "`attribution_window_days` is 0; it must be between 1 and 365"
    );

    // Domain messages speak the tools' language and echo the value.
    let err = refusal(
        mcp,
        "amba_affiliate_programs_get",
        json!({"program_id": "acme-partners"}),
    )
    .await?;
    assert!(
        text(&err["message"]).starts_with("\"acme-partners\" is not a program id"),
        "{err}"
    );
    let err = refusal(
        mcp,
        "amba_affiliate_programs_update",
        json!({"program_id": program, "status": "live"}),
    )
    .await?;
    assert!(
        text(&err["message"]).contains("expected one of: draft, active, paused, archived"),
        "{err}"
    );
    let mut unknown_code = report.clone();
    unknown_code["amount_minor"] = json!(100);
    unknown_code["code"] = json!("NOSUCHCODE1");
    // Attribution learns of the activation from enrollment's event: until then the program is a draft there.
    let err = amba_testkit::eventually(
        Duration::from_secs(10),
        "attribution to see the program active",
        || async {
            let err = refusal(mcp, "amba_affiliate_conversion_report", unknown_code.clone()).await?;
            Ok((err["code"] != "CONFLICT").then_some(err))
        },
    )
    .await?;
    assert!(text(&err["message"]).contains("\"NOSUCHCODE1\""), "{err}");
    let err = refusal(
        mcp,
        "amba_affiliate_programs_create",
        json!({"name": "Pct", "currency": "USD", "commission": "20%"}),
    )
    .await?;
    assert!(
        text(&err["message"]).contains("{\"schema\":1,\"type\":\"percentage\",\"bps\":2000}"),
        "{err}"
    );
    sys.stop().await
}

#[tokio::test]
async fn the_server_teaches_the_product_instructions_guide_and_prompts() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    // Anonymous: an agent with no token yet can read all of it.
    let anonymous = sys.mcp(None).await?;
    let peer = anonymous.peer();
    let info = peer.peer_info().ok_or_else(|| anyhow::anyhow!("no server info"))?;
    let instructions = info.instructions.clone().unwrap_or_default();
    for step in [
        "amba_affiliate_signup",
        "Bearer",
        "amba_affiliate_programs_create",
        "amba://guide",
        "minor units",
    ] {
        assert!(instructions.contains(step), "instructions lack {step}");
    }
    let resources = peer.list_all_resources().await?;
    assert!(resources.iter().any(|r| r.uri == "amba://guide"));
    let guide = peer
        .read_resource(rmcp::model::ReadResourceRequestParams::new("amba://guide"))
        .await?;
    let body = serde_json::to_value(&guide)?;
    let guide_text = body["contents"][0]["text"].as_str().unwrap_or_default();
    assert!(guide_text.contains("amba_affiliate_conversion_report") && guide_text.contains("eventually consistent"));
    let prompts = peer.list_all_prompts().await?;
    let names: Vec<&str> = prompts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["launch_program", "onboard_affiliate"]);
    let launch = peer
        .get_prompt(
            rmcp::model::GetPromptRequestParams::new("launch_program").with_arguments(
                json!({"product": "Acme CRM", "currency": "EUR", "commission_percent": "15"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
        )
        .await?;
    let launch = serde_json::to_string(&launch)?;
    assert!(
        launch.contains("Acme CRM Partners") && launch.contains("\\\"bps\\\":1500") && launch.contains("EUR"),
        "{launch}"
    );
    anonymous.close().await?;
    sys.stop().await
}
