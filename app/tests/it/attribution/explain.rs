//! Explain for tiered, override and recurring commissions, matched to the ledger to the minor
//! unit, and unchanged by later rule changes.

use super::*;

async fn explain(org: &Org, conversion_id: &Value) -> anyhow::Result<Value> {
    org.mcp
        .ok(
            "amba_affiliate_commission_explain",
            json!({"conversion_id": conversion_id}),
        )
        .await
}

/// Explain once the ledger has booked `commissions` lines for the conversion.
async fn explained_when_booked(org: &Org, conversion_id: &Value, commissions: usize) -> anyhow::Result<Value> {
    eventually(
        std::time::Duration::from_secs(30),
        "the ledger's commissions in explain",
        || async {
            let view = explain(org, conversion_id).await?;
            let booked = view["commissions"].as_array().map_or(0, Vec::len) == commissions
                && view["ledger_postings"]
                    .as_array()
                    .is_some_and(|p| p.len() >= commissions);
            Ok(booked.then_some(view))
        },
    )
    .await
}

/// What the postings moved into `account`, per enrollment id ("" when not shown).
fn moved(view: &Value, account: &str) -> HashMap<String, i64> {
    let mut sums = HashMap::new();
    for posting in view["ledger_postings"].as_array().into_iter().flatten() {
        for entry in posting["entries"].as_array().into_iter().flatten() {
            if entry["account"] == account {
                *sums.entry(text(&entry["enrollment_id"]).to_owned()).or_insert(0) +=
                    entry["amount_minor"].as_i64().unwrap_or_default();
            }
        }
    }
    sums
}

#[tokio::test]
async fn tiered_override_and_recurring_commissions_explained_to_the_minor_unit() -> anyhow::Result<()> {
    let tiered = json!({"schema": 1, "type": "tiered", "basis": "conversions", "period": "month",
                        "tiers": [{"from": 0, "bps": 1000}, {"from": 2, "bps": 1550}]});
    let Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    } = setup_with(
        json!({"commission": tiered, "multi_level": {"enabled": true, "levels_bps": [1000]}}),
        &[("MULTI_LEVEL_ENABLED", "true")],
    )
    .await?;
    // Bob is sponsored by Ann: Ann earns 10 % of Bob's commission.
    let bob = org(&sys, "Bob").await?;
    let ann_id = text(&ann_enrollment["enrollment_id"]).to_owned();
    let bob_enrollment = enroll(&owner, &bob, &program, Some(&ann_id)).await?;
    let bob_id = text(&bob_enrollment["enrollment_id"]).to_owned();
    attribution_knows(&sys, &bob_enrollment).await?;
    let bob_code = text(&bob_enrollment["code"]).to_owned();
    let mut sales = Vec::new();
    for (id, amount) in [("t-1", 10_000), ("t-2", 10_000), ("t-3", 12_345)] {
        let out = owner
            .mcp
            .ok(
                "amba_affiliate_conversion_report",
                sale(&program, id, amount, json!({"code": bob_code})),
            )
            .await?;
        sales.push(out["conversion_id"].clone());
    }
    // The third sale: two conversions before it this month put Bob in the second tier:
    // 12,345 × 15.50 % = 1,913.475 → 1,913; Ann's override 10 % of that = 191.3 → 191.
    let owner_view = explained_when_booked(&owner, &sales[2], 2).await?;
    let k = &owner_view["decision"]["commission"];
    assert_eq!(
        (
            &k["base_minor"],
            &k["rate_bps"],
            &k["exact_minor"],
            &k["commission_minor"]
        ),
        (&json!(12_345), &json!(1_550), &json!("1913.475"), &json!(1_913))
    );
    assert_eq!(
        (
            &k["tier"]["index"],
            &k["tier"]["from"],
            &k["tier"]["prior_conversions"],
            &k["tier"]["basis"]
        ),
        (&json!(1), &json!(2), &json!(2), &json!("conversions"))
    );
    assert!(text(&k["rounding"]).starts_with("half-even"));
    let lines = owner_view["commissions"].as_array().context("commissions")?;
    let line = |level: i64| lines.iter().find(|l| l["level"] == level);
    let (direct, upline) = (line(0).context("direct")?, line(1).context("override")?);
    assert_eq!(
        (&direct["enrollment_id"], &direct["amount_minor"]),
        (&json!(bob_id), &json!(1_913))
    );
    assert_eq!(
        (&upline["enrollment_id"], &upline["amount_minor"], &upline["rate_bps"]),
        (&json!(ann_id), &json!(191), &json!(1_000))
    );
    assert!(direct["held_minor"] == 1_913 && direct["release_at"].is_string());
    // The ledger to the minor unit: held +1,913 for Bob and +191 for Ann, from these postings.
    let held = moved(&owner_view, "held");
    assert_eq!((held.get(&bob_id), held.get(&ann_id)), (Some(&1_913), Some(&191)));
    assert_eq!(moved(&owner_view, "expense").values().sum::<i64>(), -(1_913 + 191));
    let summary = text(&owner_view["summary"]);
    assert!(
        summary.contains("12345 × 1550 bps = 1913.475") && summary.contains("Override level 1"),
        "{summary}"
    );
    // The first sale was in the first tier.
    let first = explain(&owner, &sales[0]).await?;
    assert_eq!(
        (
            &first["decision"]["commission"]["tier"]["index"],
            &first["decision"]["commission"]["commission_minor"]
        ),
        (&json!(0), &json!(1_000))
    );

    // Bob's view: his own lines; the override shown without whom it paid.
    let bob_view = explain(&bob, &sales[2]).await?;
    assert_eq!(bob_view["view"], "affiliate");
    assert_eq!(bob_view["decision"]["commission"], owner_view["decision"]["commission"]);
    let shown = serde_json::to_string(&bob_view)?;
    assert!(
        !shown.contains(&ann_id) && !shown.contains(&ann.id),
        "Bob's view names Ann: {shown}"
    );
    let bob_lines = bob_view["commissions"].as_array().context("commissions")?;
    assert_eq!(bob_lines.len(), 2);
    assert!(
        bob_lines
            .iter()
            .any(|l| l["level"] == 1 && l["amount_minor"] == 191 && l.get("enrollment_id").is_none())
    );
    assert_eq!(moved(&bob_view, "held").get(&bob_id), Some(&1_913));
    // Ann earned an override on it, but the sale is not hers to explain.
    let refused = ann
        .mcp
        .err("amba_affiliate_commission_explain", json!({"conversion_id": sales[2]}))
        .await?;
    assert_eq!(refused["code"], "NOT_FOUND");

    // A later rule change changes nothing already explained.
    owner
        .mcp
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": program, "commission": {"schema": 1, "type": "flat", "amount_minor": 1}}),
        )
        .await?;
    let later = explain(&owner, &sales[2]).await?;
    assert_eq!(later["decision"], owner_view["decision"]);
    assert_eq!(later["commissions"][0]["amount_minor"], 1_913);

    // Recurring for one month: a renewal two months after the customer's first purchase earns
    // nothing, and explain says why.
    let recurring = active_program(
        &owner,
        json!({"name": "Subscriptions", "commission": {"schema": 1, "type": "recurring", "bps": 1000, "months": 1}}),
    )
    .await?;
    let ann_sub = enroll(&owner, &ann, &recurring, None).await?;
    attribution_knows(&sys, &ann_sub).await?;
    let first_purchase = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(
                &recurring,
                "r-1",
                4_000,
                json!({"code": ann_sub["code"], "customer_ref": "cust-9", "occurred_at": ago(Duration::days(70))}),
            ),
        )
        .await?;
    assert_eq!(first_purchase["commission_minor"], 400);
    let renewal = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(&recurring, "r-2", 4_000, json!({"customer_ref": "cust-9"})),
        )
        .await?;
    let renewal_view = explain(&owner, &renewal["conversion_id"]).await?;
    let k = &renewal_view["decision"]["commission"];
    assert_eq!((&k["commission_minor"], &k["rate_bps"]), (&json!(0), &json!(1_000)));
    assert!(k["renewal_months_since_first"].as_i64().is_some_and(|m| m >= 2), "{k}");
    assert!(text(&k["note"]).contains("recurring window"), "{k}");
    let a = &renewal_view["decision"]["attribution"];
    assert_eq!(
        (&a["winner"], &a["customer"]["renewal"]),
        (&json!("customer"), &json!(true))
    );
    assert!(text(&renewal_view["summary"]).contains("recurring window"));
    sys.stop().await
}
