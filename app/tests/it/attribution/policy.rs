//! The attribution policy (first or last touch, code or touch first), versioned and pinned on
//! each conversion, and explain's trail of the decision, as owners and affiliates see it.

use super::*;

/// Records a public click and returns its output.
async fn click(
    anonymous: &amba_testkit::McpClient,
    program: &str,
    code: &str,
    subject: &str,
    at: Duration,
) -> anyhow::Result<Value> {
    anonymous
        .ok(
            "amba_affiliate_touchpoint_record",
            json!({"program_id": program, "code": code, "subject_ref": subject, "occurred_at": ago(at)}),
        )
        .await
}

async fn explain(org: &Org, conversion: &Value) -> anyhow::Result<Value> {
    org.mcp
        .ok(
            "amba_affiliate_commission_explain",
            json!({"conversion_id": conversion["conversion_id"]}),
        )
        .await
}

#[tokio::test]
async fn first_or_last_touch_code_or_touch_first_pinned_and_explained() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    } = setup(json!({"attribution_window_days": 30})).await?;
    let bob = org(&sys, "Bob").await?;
    let bob_enrollment = enroll(&owner, &bob, &program, None).await?;
    let (ann_code, bob_code) = (
        text(&ann_enrollment["code"]).to_owned(),
        text(&bob_enrollment["code"]).to_owned(),
    );
    let (ann_id, bob_id) = (&ann_enrollment["enrollment_id"], &bob_enrollment["enrollment_id"]);
    attribution_knows(&sys, &bob_enrollment).await?;
    let anonymous = sys.mcp(None).await?;

    // One visitor: Ann's click 40 days ago (outside the window), Ann's 5 days ago, Bob's 2 days ago.
    click(&anonymous, &program, &ann_code, "visitor-1", Duration::days(40)).await?;
    let ann_click = click(&anonymous, &program, &ann_code, "visitor-1", Duration::days(5)).await?;
    let bob_click = click(&anonymous, &program, &bob_code, "visitor-1", Duration::days(2)).await?;
    let report = |id: &str, extra: Value| {
        owner
            .mcp
            .ok("amba_affiliate_conversion_report", sale(&program, id, 5_000, extra))
    };

    // Last touch (the default, version 1): Bob.
    let last = report("s-1", json!({"subject_ref": "visitor-1"})).await?;
    assert_eq!(&last["enrollment_id"], bob_id);
    assert_eq!(
        (
            &last["conversion"]["attribution_model"],
            &last["conversion"]["attribution_precedence"],
            &last["conversion"]["attribution_version"]
        ),
        (&json!("last_touch"), &json!("code_wins"), &json!(1))
    );

    // First touch is a new policy version; the same visitor's next sale goes to Ann.
    let updated = owner
        .mcp
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": program, "attribution_model": "first_touch"}),
        )
        .await?;
    assert_eq!(
        (
            &updated["program"]["attribution_model"],
            &updated["program"]["attribution_version"]
        ),
        (&json!("first_touch"), &json!(2))
    );
    let bad = owner
        .mcp
        .err(
            "amba_affiliate_programs_update",
            json!({"program_id": program, "attribution_model": "linear"}),
        )
        .await?;
    assert_eq!(bad["code"], "INVALID_ARGUMENT");
    read_model_shows(
        &sys,
        "SELECT attribution_model FROM programs_view WHERE program_id = $1",
        &program,
        "first_touch",
    )
    .await?;
    let first = report("s-2", json!({"subject_ref": "visitor-1"})).await?;
    assert_eq!(&first["enrollment_id"], ann_id);
    assert_eq!(&first["conversion"]["touchpoint_id"], &ann_click["touchpoint_id"]);
    assert_eq!(
        (
            &first["conversion"]["attribution_model"],
            &first["conversion"]["attribution_version"]
        ),
        (&json!("first_touch"), &json!(2))
    );

    // The owner's explanation: every touchpoint weighed, which won and why, the computation.
    let owner_view = explain(&owner, &first).await?;
    assert_eq!(owner_view["view"], "owner");
    let trail = &owner_view["decision"]["attribution"];
    assert_eq!(
        (
            &trail["winner"],
            &trail["policy"]["model"],
            &trail["policy"]["version"],
            &trail["policy"]["window_days"]
        ),
        (&json!("touchpoint"), &json!("first_touch"), &json!(2), &json!(30))
    );
    let weighed: Vec<(Value, Value, Value)> = trail["touchpoints"]
        .as_array()
        .context("touchpoints weighed")?
        .iter()
        .map(|t| {
            (
                t["enrollment_id"].clone(),
                t["inside_window"].clone(),
                t["verdict"].clone(),
            )
        })
        .collect();
    assert_eq!(
        weighed,
        vec![
            (ann_id.clone(), json!(false), json!("outside_window")),
            (ann_id.clone(), json!(true), json!("won")),
            (bob_id.clone(), json!(true), json!("not_first")),
        ]
    );
    let commission = &owner_view["decision"]["commission"];
    assert_eq!(
        (
            &commission["base_minor"],
            &commission["rate_bps"],
            &commission["exact_minor"],
            &commission["commission_minor"],
            &commission["rule_version"]
        ),
        (&json!(5_000), &json!(2_000), &json!("1000"), &json!(1_000), &json!(1))
    );
    assert!(
        text(&owner_view["summary"]).contains("first_touch"),
        "{}",
        owner_view["summary"]
    );
    // The ledger's side: the direct commission, held, and its accrual posting.
    let booked = eventually(std::time::Duration::from_secs(20), "the accrual in explain", || async {
        let view = explain(&owner, &first).await?;
        Ok((view["ledger_postings"].as_array().is_some_and(|p| !p.is_empty())).then_some(view))
    })
    .await?;
    assert_eq!(booked["commissions"][0]["amount_minor"], 1_000);
    assert_eq!(booked["commissions"][0]["level"], 0);
    let accrue = &booked["ledger_postings"][0];
    assert_eq!(accrue["kind"], "accrue");
    let held: i64 = accrue["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter(|e| e["account"] == "held")
        .filter_map(|e| e["amount_minor"].as_i64())
        .sum();
    assert_eq!(
        held,
        commission["commission_minor"].as_i64().unwrap_or(-1),
        "the ledger matches explain to the minor unit"
    );

    // Ann sees her conversion's trail without Bob: no ids, no org, no subject.
    let ann_view = explain(&ann, &first).await?;
    assert_eq!(ann_view["view"], "affiliate");
    let shown = ann_view["decision"].to_string();
    for hidden in [text(bob_id), &bob.id, text(&bob_click["touchpoint_id"]), "visitor-1"] {
        assert!(
            !shown.contains(hidden),
            "an affiliate's explanation names {hidden}: {shown}"
        );
    }
    assert_eq!(
        ann_view["decision"]["attribution"]["touchpoints"][2]["verdict"],
        "not_first"
    );
    // Nobody else's conversions: Bob cannot explain Ann's, Ann cannot explain Bob's.
    assert_eq!(explain_err(&bob, &first).await?, "NOT_FOUND");
    assert_eq!(explain_err(&ann, &last).await?, "NOT_FOUND");
    let stranger = org(&sys, "Stranger").await?;
    assert_eq!(explain_err(&stranger, &first).await?, "NOT_FOUND");

    // Code and touch on one report: the code wins by default; under touch_wins the click does.
    click(&anonymous, &program, &bob_code, "visitor-2", Duration::days(1)).await?;
    let code_first = report("s-3", json!({"subject_ref": "visitor-2", "code": ann_code})).await?;
    assert_eq!(
        (&code_first["enrollment_id"], &code_first["conversion"]["attribution"]),
        (ann_id, &json!("code"))
    );
    let code_trail = explain(&owner, &code_first).await?;
    assert!(text(&code_trail["decision"]["attribution"]["why"]).starts_with("code_wins"));
    owner
        .mcp
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": program, "attribution_precedence": "touch_wins"}),
        )
        .await?;
    read_model_shows(
        &sys,
        "SELECT attribution_precedence FROM programs_view WHERE program_id = $1",
        &program,
        "touch_wins",
    )
    .await?;
    let touch_first = report("s-4", json!({"subject_ref": "visitor-2", "code": ann_code})).await?;
    assert_eq!(
        (
            &touch_first["enrollment_id"],
            &touch_first["conversion"]["attribution"],
            &touch_first["conversion"]["attribution_version"]
        ),
        (bob_id, &json!("touchpoint"), &json!(3))
    );

    // A bound customer stays with its affiliate whatever the policy: Ann's customer renews
    // through Bob's tracked visitor, with or without her code.
    let bound = report(
        "s-5",
        json!({"customer_ref": "cust-1", "code": ann_code, "occurred_at": ago(Duration::days(3))}),
    )
    .await?;
    assert_eq!(&bound["enrollment_id"], ann_id);
    let renewal = report("s-6", json!({"customer_ref": "cust-1", "subject_ref": "visitor-2"})).await?;
    assert_eq!(
        (
            &renewal["enrollment_id"],
            &renewal["conversion"]["attribution"],
            &renewal["conversion"]["renewal"]
        ),
        (ann_id, &json!("customer"), &json!(true))
    );
    let coded_renewal = report(
        "s-7",
        json!({"customer_ref": "cust-1", "subject_ref": "visitor-2", "code": ann_code}),
    )
    .await?;
    assert_eq!(
        (&coded_renewal["enrollment_id"], &coded_renewal["conversion"]["renewal"]),
        (ann_id, &json!(true))
    );

    // Later changes of the program leave recorded explanations as they were.
    owner
        .mcp
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": program, "attribution_model": "last_touch", "attribution_window_days": 3,
                   "commission": {"schema": 1, "type": "percentage", "bps": 500}}),
        )
        .await?;
    let again = explain(&owner, &first).await?;
    assert_eq!(again["decision"], booked["decision"]);
    assert_eq!(again["conversion"]["attribution_version"], 2);
    let program_now = owner
        .mcp
        .ok("amba_affiliate_programs_get", json!({"program_id": program}))
        .await?;
    assert_eq!(program_now["program"]["attribution_version"], 4);
    sys.stop().await
}

async fn explain_err(org: &Org, conversion: &Value) -> anyhow::Result<String> {
    let err = org
        .mcp
        .err(
            "amba_affiliate_commission_explain",
            json!({"conversion_id": conversion["conversion_id"]}),
        )
        .await?;
    Ok(text(&err["code"]).to_owned())
}
