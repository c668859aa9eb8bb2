//! Fraud checks: each reason held with its details for the owner, "held for review" for the
//! affiliate, listed, released or rejected with a reason, and never a sale dropped.

use super::*;

/// An affiliate enrolled in `program`, once attribution knows it; returns (org, enrollment).
async fn affiliate(sys: &TestSystem, owner: &Org, program: &str, name: &str) -> anyhow::Result<(Org, Value)> {
    let org = org(sys, name).await?;
    let enrollment = enroll(owner, &org, program, None).await?;
    attribution_knows(sys, &enrollment).await?;
    Ok((org, enrollment))
}

fn reasons(out: &Value) -> Value {
    out["conversion"]["hold_reasons"].clone()
}

#[tokio::test]
async fn each_fraud_check_holds_with_its_reason_and_the_owner_releases_or_rejects() -> anyhow::Result<()> {
    let extra = std::env::temp_dir().join(format!("amba-disposable-{}.txt", amba_core::id::EventId::new()));
    std::fs::write(&extra, "# the operator's own additions\nburner.test\n")?;
    let checks = json!({"velocity": {"max_per_minute": 3}, "click_to_sale": {"min_seconds": 60},
                        "refund_rate": {"max_bps": 4000, "last_sales": 2}});
    let extra_path = extra.display().to_string();
    let Setup {
        sys,
        owner,
        ann: _,
        program,
        ann_enrollment,
    } = setup_with(
        json!({"fraud_checks": checks}),
        &[("AMBA_DISPOSABLE_DOMAINS_FILE", extra_path.as_str())],
    )
    .await?;
    let report = |id: &str, extra: Value| {
        owner
            .mcp
            .ok("amba_affiliate_conversion_report", sale(&program, id, 10_000, extra))
    };
    let ann_code = text(&ann_enrollment["code"]).to_owned();

    // Settings are validated; a bad one changes nothing.
    let bad = owner
        .mcp
        .err(
            "amba_affiliate_programs_update",
            json!({"program_id": program, "fraud_checks": {"velocity": {"max_per_minute": 0}}}),
        )
        .await?;
    assert_eq!(bad["code"], "INVALID_ARGUMENT");
    let shown = owner
        .mcp
        .ok("amba_affiliate_programs_get", json!({"program_id": program}))
        .await?;
    assert_eq!(shown["program"]["fraud_checks"]["velocity"]["max_per_minute"], 3);
    assert_eq!(shown["program"]["fraud_checks"]["disposable_email"], true);

    // self_referral: Ann buys with her own e-mail.
    let own = report("f-1", json!({"code": ann_code, "customer_email": "Ann@example.com"})).await?;
    assert_eq!(
        (&own["status"], reasons(&own)),
        (&json!("pending"), json!(["self_referral"]))
    );
    assert_eq!(own["conversion"]["held_for_review"], true);

    // disposable_email: the bundled list and the operator's file.
    let (_bob, bob_enrollment) = affiliate(&sys, &owner, &program, "Bob").await?;
    let bob_code = text(&bob_enrollment["code"]).to_owned();
    let throwaway = report("f-2", json!({"code": bob_code, "customer_email": "x@mailinator.com"})).await?;
    assert_eq!(reasons(&throwaway), json!(["disposable_email"]));
    assert!(text(&throwaway["conversion"]["reason"]).contains("mailinator.com"));
    let burner = report("f-3", json!({"code": bob_code, "customer_email": "y@mail.burner.test"})).await?;
    assert_eq!(reasons(&burner), json!(["disposable_email"]));
    let fine = report("f-4", json!({"code": bob_code, "customer_email": "carol@shop.example"})).await?;
    assert_eq!(
        (&fine["status"], fine["conversion"].get("hold_reasons")),
        (&json!("approved"), None)
    );

    // velocity: the fourth sale within a minute.
    let (cy, cy_enrollment) = affiliate(&sys, &owner, &program, "Cy").await?;
    let cy_code = text(&cy_enrollment["code"]).to_owned();
    for id in ["v-1", "v-2", "v-3"] {
        assert_eq!(report(id, json!({"code": cy_code})).await?["status"], "approved");
    }
    let fast = report("v-4", json!({"code": cy_code})).await?;
    assert_eq!(reasons(&fast), json!(["velocity"]));

    // click_to_sale: a sale 10 s after the click that attributed it; one 5 minutes after is fine.
    let (_dan, dan_enrollment) = affiliate(&sys, &owner, &program, "Dan").await?;
    let anonymous = sys.mcp(None).await?;
    for (subject, ago_seconds) in [("quick", 10), ("calm", 300)] {
        anonymous
            .ok(
                "amba_affiliate_touchpoint_record",
                json!({"program_id": program, "code": dan_enrollment["code"], "subject_ref": subject,
                       "occurred_at": ago(Duration::seconds(ago_seconds))}),
            )
            .await?;
    }
    let quick = report("c-1", json!({"subject_ref": "quick"})).await?;
    assert_eq!(
        (&quick["enrollment_id"], reasons(&quick)),
        (&dan_enrollment["enrollment_id"], json!(["click_to_sale"]))
    );
    let calm = report("c-2", json!({"subject_ref": "calm"})).await?;
    assert_eq!(calm["status"], "approved");

    // refund_rate: one of Eve's last two sales refunded (50 % > 40 %) holds her next one.
    let (_eve, eve_enrollment) = affiliate(&sys, &owner, &program, "Eve").await?;
    let eve_code = text(&eve_enrollment["code"]).to_owned();
    let first = report("r-1", json!({"code": eve_code})).await?;
    report("r-2", json!({"code": eve_code})).await?;
    owner
        .mcp
        .ok(
            "amba_affiliate_conversion_clawback",
            json!({"conversion_id": first["conversion_id"], "reason": "refund"}),
        )
        .await?;
    let risky = report("r-3", json!({"code": eve_code})).await?;
    assert_eq!(reasons(&risky), json!(["refund_rate"]));
    assert!(text(&risky["conversion"]["reason"]).contains("1 of the affiliate's last 2 sales were refunded"));

    // The owner lists what is held: every held sale is there, none dropped.
    let held = owner
        .mcp
        .ok(
            "amba_affiliate_conversions_list",
            json!({"program_id": program, "status": "held"}),
        )
        .await?;
    let mut held_ids: Vec<&str> = held["conversions"]
        .as_array()
        .context("held conversions")?
        .iter()
        .map(|c| text(&c["external_id"]))
        .collect();
    held_ids.sort_unstable();
    assert_eq!(held_ids, vec!["c-1", "f-1", "f-2", "f-3", "r-3", "v-4"]);

    // Cy sees "held for review", not what the detector saw.
    let cy_list = cy
        .mcp
        .ok("amba_affiliate_my_conversions_list", json!({"status": "held"}))
        .await?;
    let cy_held = &cy_list["conversions"][0];
    assert_eq!(
        (&cy_held["reason"], cy_held.get("hold_reasons")),
        (&json!("held for review"), None)
    );
    let cy_explained = cy
        .mcp
        .ok(
            "amba_affiliate_commission_explain",
            json!({"conversion_id": fast["conversion_id"]}),
        )
        .await?;
    assert_eq!(cy_explained["decision"]["attribution"]["held"], "held for review");
    assert!(cy_explained["decision"]["attribution"].get("checks").is_none());

    // Release Cy's with a reason: approved, commission accrues; the trail shows the hit and the release.
    let released = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_approve",
            json!({"conversion_id": fast["conversion_id"], "reason": "launch-day spike, verified"}),
        )
        .await?;
    assert_eq!(
        (
            &released["conversion"]["status"],
            &released["conversion"]["commission_minor"],
            &released["conversion"]["held_for_review"]
        ),
        (&json!("approved"), &json!(2_000), &json!(false))
    );
    let explained = owner
        .mcp
        .ok(
            "amba_affiliate_commission_explain",
            json!({"conversion_id": fast["conversion_id"]}),
        )
        .await?;
    let review = &explained["decision"]["review"];
    assert_eq!(
        (&review["verdict"], &review["reason"], &review["released_holds"]),
        (
            &json!("approved"),
            &json!("launch-day spike, verified"),
            &json!(["velocity"])
        )
    );
    let velocity = explained["decision"]["attribution"]["checks"]
        .as_array()
        .context("checks")?
        .iter()
        .find(|c| c["check"] == "velocity")
        .cloned()
        .context("velocity ran")?;
    assert_eq!(velocity["outcome"], "hit");
    assert_eq!(explained["decision"]["commission"]["commission_minor"], 2_000);

    // Reject the self-referral with a reason.
    let rejected = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_reject",
            json!({"conversion_id": own["conversion_id"], "reason": "the affiliate's own purchase"}),
        )
        .await?;
    assert_eq!(
        (&rejected["conversion"]["status"], &rejected["conversion"]["reason"]),
        (&json!("rejected"), &json!("the affiliate's own purchase"))
    );
    let still_held = owner
        .mcp
        .ok(
            "amba_affiliate_conversions_list",
            json!({"program_id": program, "status": "held"}),
        )
        .await?;
    assert_eq!(still_held["conversions"].as_array().map(Vec::len), Some(4));
    let _ = std::fs::remove_file(&extra);
    sys.stop().await
}

/// An MCP client whose calls come, through a trusted proxy, from `address`.
async fn from_address(sys: &TestSystem, token: Option<&str>, address: &str) -> anyhow::Result<amba_testkit::McpClient> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-forwarded-for", reqwest::header::HeaderValue::from_str(address)?);
    let http = reqwest::Client::builder().default_headers(headers).build()?;
    amba_testkit::McpClient::connect_with(http, &sys.mcp_url(), token).await
}

#[tokio::test]
async fn a_click_from_where_the_affiliate_calls_from_is_held_as_self_referral() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    } = setup_with(json!({}), &[("AMBA_TRUSTED_PROXIES", "127.0.0.1")]).await?;
    // Ann works from 198.51.100.23; the edge notes it (addresses of no one in particular, like
    // this test's own 127.0.0.1, are never noted).
    let ann_at_home = from_address(&sys, Some(&ann.token), "198.51.100.23").await?;
    ann_at_home.ok("amba_affiliate_my_programs_list", json!({})).await?;
    let pool = sys.service_pool("attribution").await?;
    eventually(
        std::time::Duration::from_secs(15),
        "Ann's address in attribution",
        || {
            let pool = pool.clone();
            async move {
                let orgs: Vec<String> =
                    sqlx::query_scalar("SELECT org_id FROM caller_addresses WHERE address = '198.51.100.23'")
                        .fetch_all(&pool)
                        .await?;
                Ok((!orgs.is_empty()).then_some(orgs))
            }
        },
    )
    .await
    .map(|orgs| assert_eq!(orgs, vec![ann.id.clone()]))?;
    let loopback: i64 = sqlx::query_scalar("SELECT count(*) FROM caller_addresses WHERE address = '127.0.0.1'")
        .fetch_one(&pool)
        .await?;
    assert_eq!(loopback, 0);
    pool.close().await;

    // A click from her address, and one from a stranger's.
    let code = text(&ann_enrollment["code"]).to_owned();
    for (address, subject) in [("198.51.100.23", "home"), ("203.0.113.50", "away")] {
        from_address(&sys, None, address)
            .await?
            .ok(
                "amba_affiliate_touchpoint_record",
                json!({"program_id": program, "code": code, "subject_ref": subject}),
            )
            .await?;
    }
    let report = |id: &str, subject: &str| {
        owner.mcp.ok(
            "amba_affiliate_conversion_report",
            sale(&program, id, 5_000, json!({"subject_ref": subject})),
        )
    };
    let home = report("h-1", "home").await?;
    assert_eq!(
        (&home["status"], &home["conversion"]["hold_reasons"]),
        (&json!("pending"), &json!(["self_referral"]))
    );
    assert!(text(&home["conversion"]["reason"]).contains("198.51.100.23"));
    let away = report("a-1", "away").await?;
    assert_eq!(away["status"], "approved");
    sys.stop().await
}
