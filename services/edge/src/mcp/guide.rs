//! What an agent can learn from the server alone: the product guide as the resource
//! `amba://guide`, and prompts for the common jobs.

use rmcp::ErrorData;
use rmcp::model::{
    GetPromptResult, JsonObject, Prompt, PromptArgument, PromptMessage, ReadResourceResult, Resource, ResourceContents,
    Role,
};

pub const GUIDE_URI: &str = "amba://guide";
const GUIDE: &str = include_str!("../../../../docs/guide.md");

/// The flow in a few lines, sent with `initialize` / `server/discover`.
pub const INSTRUCTIONS: &str = "Amba Affiliate runs partner (affiliate) programs. Flow: 1) amba_affiliate_signup (no token) \
    returns a personal access token; reconnect with `Authorization: Bearer <token>`. 2) Owners: \
    amba_affiliate_programs_create, then _programs_update status=active; _invite affiliates by \
    affiliate_org_id (an org on Amba) or by email (they get a claim link), or share the program's join_url. \
    3) Report sales with amba_affiliate_conversion_report (idempotent on program_id+project_id+external_id); \
    approve pending ones. 4) Read amba_affiliate_analytics_get; affiliates read their own my_* tools. \
    Amounts are integer minor units of the program currency (USD 24.69 = 2469). Balances and analytics are \
    eventually consistent (about a second). Every failure is {error: {code, message, status}}; fix the named \
    argument and retry. The whole guide is the resource amba://guide; prompts launch_program and \
    onboard_affiliate walk the common jobs.";

pub fn resources() -> Vec<Resource> {
    vec![
        Resource::new(GUIDE_URI, "guide")
            .with_title("Run an affiliate program with Amba")
            .with_description("The product guide: every step from signup to refunds, with the tools for each.")
            .with_mime_type("text/markdown")
            .with_size(GUIDE.len() as u64),
    ]
}

pub fn read(uri: &str) -> Result<ReadResourceResult, ErrorData> {
    if uri != GUIDE_URI {
        return Err(ErrorData::resource_not_found(
            format!("no resource {uri:?}; the server has {GUIDE_URI}"),
            None,
        ));
    }
    Ok(ReadResourceResult::new(vec![
        ResourceContents::text(GUIDE, GUIDE_URI).with_mime_type("text/markdown"),
    ]))
}

pub fn prompts() -> Vec<Prompt> {
    vec![
        Prompt::new(
            "launch_program",
            Some("Create and launch an affiliate program for a product, step by step."),
            Some(vec![
                PromptArgument::new("product")
                    .with_description("What the program promotes, e.g. \"Acme CRM\"")
                    .with_required(true),
                PromptArgument::new("currency")
                    .with_description("ISO 4217 code, e.g. USD")
                    .with_required(true),
                PromptArgument::new("commission_percent").with_description("Commission per sale in percent, e.g. 20"),
            ]),
        ),
        Prompt::new(
            "onboard_affiliate",
            Some("Enroll an organization as an affiliate of one of your programs and hand it its link."),
            Some(vec![
                PromptArgument::new("program_id")
                    .with_description("Your program, prg_…")
                    .with_required(true),
                PromptArgument::new("affiliate_org_id")
                    .with_description("The affiliate's org, org_… (from its signup)")
                    .with_required(true),
            ]),
        ),
    ]
}

pub fn prompt(name: &str, arguments: Option<&JsonObject>) -> Result<GetPromptResult, ErrorData> {
    let arg = |key: &str, default: &str| {
        arguments
            .and_then(|a| a.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| default.to_owned())
    };
    let text = match name {
        "launch_program" => {
            let percent = arg("commission_percent", "20");
            let bps = percent
                .trim()
                .parse::<f64>()
                .map(|p| (p * 100.0).round() as i64)
                .unwrap_or(2000);
            format!(
                "Launch an affiliate program for {product} in {currency}.\n\
                 1. Call amba_affiliate_programs_create with name \"{product} Partners\", currency \"{currency}\", \
                 commission {{\"schema\":1,\"type\":\"percentage\",\"bps\":{bps}}} and an idempotency_key, plus \
                 landing_url (an https page of the product's site) if it has one for visitors.\n\
                 2. Check the returned program, then call amba_affiliate_programs_update with its program_id and \
                 status \"active\".\n\
                 3. Report what was created: program_id, its join_url, the rule, and how affiliates join \
                 (amba_affiliate_invite with their affiliate_org_id or email, or they apply with \
                 amba_affiliate_my_program_apply and the join_url).",
                product = arg("product", "the product"),
                currency = arg("currency", "USD"),
            )
        }
        "onboard_affiliate" => format!(
            "Enroll organization {org} in program {program}.\n\
             1. Call amba_affiliate_invite with program_id {program} and affiliate_org_id {org}.\n\
             2. The affiliate accepts with amba_affiliate_my_invite_accept (or approve it yourself with \
             amba_affiliate_affiliate_approve once it is pending).\n\
             3. Give the affiliate its referral code and link (the reply's `link`, <server>/r/<code>); conversions reported with that code, \
             or with the subject the link adds, are credited to it.",
            org = arg("affiliate_org_id", "<org_id>"),
            program = arg("program_id", "<program_id>"),
        ),
        other => {
            return Err(ErrorData::invalid_params(
                format!("no prompt {other:?}; the server has launch_program and onboard_affiliate"),
                None,
            ));
        }
    };
    let mut result = GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)]);
    result.description = prompts()
        .into_iter()
        .find(|p| p.name == name)
        .and_then(|p| p.description);
    Ok(result)
}
