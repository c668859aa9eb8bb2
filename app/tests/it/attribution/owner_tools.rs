//! An owner's tools over conversions: assignment, bulk decisions, the CSV export.

use super::*;

#[tokio::test]
async fn owners_assign_unattributed_sales_once_under_the_rule_of_the_sale_time() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    } = setup(json!({})).await?;
    let ann_enrollment_id = text(&ann_enrollment["enrollment_id"]);
    let code = text(&ann_enrollment["code"]);
    let lost = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(&program, "lost-1", 10_000, json!({})),
        )
        .await?;
    assert_eq!(lost["status"], "unattributed");
    let lost_id = text(&lost["conversion_id"]);
    let by_code = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(&program, "coded-1", 5_000, json!({"code": code})),
        )
        .await?;
    // The rule changes after the sale: the sale is still priced under the rule of its time (20%).
    owner
        .mcp
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": program, "commission": {"schema":1,"type":"percentage","bps":3000}}),
        )
        .await?;
    eventually(
        std::time::Duration::from_secs(10),
        "rule version 2 in attribution",
        || {
            let (sys, program) = (&sys, program.clone());
            async move {
                let pool = sys.service_pool("attribution").await?;
                let version: Option<i32> =
                    sqlx::query_scalar("SELECT commission_version FROM programs_view WHERE program_id = $1")
                        .bind(&program)
                        .fetch_optional(&pool)
                        .await?;
                pool.close().await;
                Ok((version == Some(2)).then_some(()))
            }
        },
    )
    .await?;

    // Refusals change nothing.
    let other = org(&sys, "Other").await?;
    let bob = org(&sys, "Bob").await?;
    let elsewhere = active_program(&owner, json!({"name": "Elsewhere"})).await?;
    let bob_elsewhere = enroll(&owner, &bob, &elsewhere, None).await?;
    let bob_invited = owner
        .mcp
        .ok(
            "amba_affiliate_invite",
            json!({"program_id": program, "affiliate_org_id": bob.id}),
        )
        .await?;
    read_model_shows(
        &sys,
        "SELECT status FROM enrollments_view WHERE enrollment_id = $1",
        text(&bob_invited["enrollment_id"]),
        "pending",
    )
    .await?;
    let assign = |conversion: &str, extra: Value| {
        let mut args = json!({"conversion_id": conversion});
        if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
            a.extend(e.clone());
        }
        args
    };
    let to_ann = json!({"enrollment_id": ann_enrollment_id});
    for (who, args, code, message) in [
        (
            &other,
            assign(lost_id, to_ann.clone()),
            "NOT_FOUND",
            format!("conversion {lost_id} not found"),
        ),
        (
            &ann,
            assign(lost_id, to_ann.clone()),
            "FORBIDDEN",
            "this tool is for the program's owner".to_owned(),
        ),
        (
            &owner,
            assign(lost_id, json!({"enrollment_id": ann_enrollment_id, "code": code})),
            "INVALID_ARGUMENT",
            "name the affiliate by exactly one of enrollment_id or code".to_owned(),
        ),
        (
            &owner,
            assign(lost_id, json!({})),
            "INVALID_ARGUMENT",
            "name the affiliate by exactly one of enrollment_id or code".to_owned(),
        ),
        (
            &owner,
            assign(lost_id, json!({"enrollment_id": bob_elsewhere["enrollment_id"]})),
            "INVALID_ARGUMENT",
            format!(
                "enrollment {} is not an enrollment of program {program} (see amba_affiliate_affiliates_list)",
                text(&bob_elsewhere["enrollment_id"])
            ),
        ),
        (
            &owner,
            assign(lost_id, json!({"code": bob_elsewhere["code"]})),
            "INVALID_ARGUMENT",
            format!(
                "referral code {:?} is not a code of program {program}",
                text(&bob_elsewhere["code"])
            ),
        ),
        (
            &owner,
            assign(lost_id, json!({"enrollment_id": bob_invited["enrollment_id"]})),
            "CONFLICT",
            format!(
                "enrollment {} is pending; only an active affiliate can be credited",
                text(&bob_invited["enrollment_id"])
            ),
        ),
        (
            &owner,
            assign(text(&by_code["conversion_id"]), to_ann.clone()),
            "CONFLICT",
            "only unattributed conversions can be assigned; this one is approved (attributed by code)".to_owned(),
        ),
    ] {
        let err = who.mcp.err("amba_affiliate_conversion_assign", args.clone()).await?;
        assert_eq!(
            (err["code"].as_str(), err["message"].as_str()),
            (Some(code), Some(message.as_str())),
            "{args}"
        );
    }

    let assigned = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_assign",
            assign(
                lost_id,
                json!({"enrollment_id": ann_enrollment_id, "reason": "named Ann at checkout"}),
            ),
        )
        .await?;
    let conversion = &assigned["conversion"];
    assert_eq!(assigned["duplicate"], false);
    assert_eq!(
        (
            conversion["status"].as_str(),
            conversion["attribution"].as_str(),
            conversion["enrollment_id"].as_str(),
            conversion["commission_minor"].as_i64(),
            conversion["commission_version"].as_i64(),
            conversion["reason"].as_str(),
        ),
        (
            Some("approved"),
            Some("assigned"),
            Some(ann_enrollment_id),
            Some(2_000),
            Some(1),
            Some("named Ann at checkout")
        )
    );
    // Again, by id or by the same affiliate's code: nothing changes.
    for again in [to_ann.clone(), json!({"code": code})] {
        let repeat = owner
            .mcp
            .ok("amba_affiliate_conversion_assign", assign(lost_id, again))
            .await?;
        assert_eq!(repeat["duplicate"], true);
        assert_eq!(repeat["conversion"], assigned["conversion"]);
    }
    // To someone else now: refused, naming the status.
    let err = owner
        .mcp
        .err(
            "amba_affiliate_conversion_assign",
            assign(lost_id, json!({"enrollment_id": bob_invited["enrollment_id"]})),
        )
        .await?;
    assert_eq!(
        err["message"],
        format!(
            "only unattributed conversions can be assigned; this one is approved, assigned to enrollment {ann_enrollment_id}"
        )
    );

    // The ledger books it once, next to the sale attributed by code: 2,000 + 1,000 held.
    held_becomes(&ann, 3_000).await?;
    let mine = ann
        .mcp
        .ok("amba_affiliate_my_conversions_list", json!({"program_id": program}))
        .await?;
    let ids: Vec<&str> = mine["conversions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| text(&c["conversion_id"]))
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&lost_id));
    sys.stop().await
}

#[tokio::test]
async fn bulk_decisions_apply_every_valid_id_and_say_what_happened_to_each() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    } = setup(json!({"approval_mode": "manual"})).await?;
    let code = text(&ann_enrollment["code"]);
    let mut pending = Vec::new();
    for (external_id, amount) in [("b-1", 10_000), ("b-2", 20_000), ("b-3", 30_000)] {
        let reported = owner
            .mcp
            .ok(
                "amba_affiliate_conversion_report",
                sale(&program, external_id, amount, json!({"code": code})),
            )
            .await?;
        assert_eq!(reported["status"], "pending");
        pending.push(text(&reported["conversion_id"]).to_owned());
    }
    // An unattributed sale assigned in a manual program waits for a decision like any other.
    let lost = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(&program, "b-lost", 40_000, json!({})),
        )
        .await?;
    let lost_id = text(&lost["conversion_id"]).to_owned();
    let unattributed = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(&program, "b-none", 1_000, json!({})),
        )
        .await?;
    let unattributed_id = text(&unattributed["conversion_id"]);
    let assigned = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_assign",
            json!({"conversion_id": lost_id, "code": code}),
        )
        .await?;
    assert_eq!(
        (
            assigned["conversion"]["status"].as_str(),
            assigned["conversion"]["code"].as_str(),
            assigned["conversion"]["commission_minor"].as_i64()
        ),
        (Some("pending"), Some(code), Some(0))
    );

    let unknown = "cnv_00000000000000000000000000000000";
    let decided = owner
        .mcp
        .ok(
            "amba_affiliate_conversions_decide",
            json!({"decision": "approve", "conversion_ids": [pending[0], pending[1], pending[0], unknown, "nope", unattributed_id, lost_id]}),
        )
        .await?;
    let outcomes: Vec<(&str, &str, Option<i64>, Option<&str>)> = decided["outcomes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                text(&o["conversion_id"]),
                text(&o["outcome"]),
                o["commission_minor"].as_i64(),
                o["error_code"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (pending[0].as_str(), "approved", Some(2_000), None),
            (pending[1].as_str(), "approved", Some(4_000), None),
            (pending[0].as_str(), "already approved", Some(2_000), None),
            (unknown, "not found", None, Some("NOT_FOUND")),
            (
                "nope",
                "invalid: \"nope\" is not a conversion id: expected `cnv_` followed by 32 hex digits, as returned by \
                 the tool that made it",
                None,
                Some("INVALID_ARGUMENT")
            ),
            (
                unattributed_id,
                "conflict: only pending conversions can be decided; this one is unattributed",
                None,
                Some("CONFLICT")
            ),
            (lost_id.as_str(), "approved", Some(8_000), None),
        ]
    );
    assert_eq!(decided["applied"], 3);

    // Rejections, with the reason; an approved one is not pending any more.
    let rejected = owner
        .mcp
        .ok(
            "amba_affiliate_conversions_decide",
            json!({"decision": "reject", "conversion_ids": [pending[2], pending[0]], "reason": "test orders"}),
        )
        .await?;
    assert_eq!(
        rejected["outcomes"],
        json!([
            {"conversion_id": pending[2], "outcome": "rejected", "status": "rejected"},
            {"conversion_id": pending[0], "outcome": "conflict: only pending conversions can be decided; this one is approved", "error_code": "CONFLICT"},
        ])
    );
    let listed = owner
        .mcp
        .ok(
            "amba_affiliate_conversions_list",
            json!({"program_id": program, "status": "rejected"}),
        )
        .await?;
    assert_eq!(listed["conversions"][0]["reason"], "test orders");

    // Another owner learns nothing; bad calls are refused whole.
    let other = org(&sys, "Other").await?;
    let theirs = other
        .mcp
        .ok(
            "amba_affiliate_conversions_decide",
            json!({"decision": "reject", "conversion_ids": [pending[1]]}),
        )
        .await?;
    assert_eq!(theirs["outcomes"][0]["outcome"], "not found");
    let too_many: Vec<String> = (0..201).map(|_| unknown.to_owned()).collect();
    for (args, message) in [
        (
            json!({"decision": "approve", "conversion_ids": too_many}),
            "conversion_ids holds 201 ids; give 1 to 200",
        ),
        (
            json!({"decision": "approve", "conversion_ids": []}),
            "conversion_ids holds 0 ids; give 1 to 200",
        ),
        (
            json!({"decision": "maybe", "conversion_ids": [unknown]}),
            "`decision` is the text \"maybe\"; expected one of: approve, reject",
        ),
    ] {
        let err = owner.mcp.err("amba_affiliate_conversions_decide", args).await?;
        assert_eq!(
            (err["code"].as_str(), err["message"].as_str()),
            (Some("INVALID_ARGUMENT"), Some(message))
        );
    }

    // The ledger books each approval once: 2,000 + 4,000 + 8,000 held.
    held_becomes(&ann, 14_000).await?;
    sys.stop().await
}

#[tokio::test]
async fn conversions_export_as_csv_quoted_guarded_and_paged() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    } = setup(json!({})).await?;
    let code = text(&ann_enrollment["code"]);
    let enrollment_id = text(&ann_enrollment["enrollment_id"]);
    let report = |external_id: &str, amount: i64, extra: Value| {
        owner.mcp.ok(
            "amba_affiliate_conversion_report",
            sale(&program, external_id, amount, extra),
        )
    };
    let formula = report(
        "=HYPERLINK(\"http://x.example\")",
        10_000,
        json!({"code": code, "occurred_at": "2026-01-05T10:00:00Z"}),
    )
    .await?;
    let quoted = report(
        "order,2 \"rush\"",
        5_000,
        json!({"occurred_at": "2026-01-06T11:30:00.250Z"}),
    )
    .await?;
    let refunded = report(
        "-3",
        3_333,
        json!({"code": code, "occurred_at": "2026-01-07T00:00:00Z"}),
    )
    .await?;
    report(
        "later",
        1_000,
        json!({"code": code, "occurred_at": "2026-02-01T00:00:00Z"}),
    )
    .await?;
    let clawback = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_clawback",
            json!({"conversion_id": refunded["conversion_id"], "reason": "refund", "amount_minor": 1_111}),
        )
        .await?;
    assert_eq!(clawback["conversion"]["clawed_back_minor"], 1_111);

    let decided = |c: &Value| text(&c["conversion"]["decided_at"]).to_owned();
    let header = "conversion_id,external_id,occurred_at,status,affiliate_org_id,enrollment_id,code,amount_minor,currency,\
                  commission_minor,clawed_back_minor,net_commission_minor,reason,decided_at,refunded_minor\r\n";
    let rows = [
        format!(
            "{},\"'=HYPERLINK(\"\"http://x.example\"\")\",2026-01-05T10:00:00.000Z,approved,{},{enrollment_id},{code},10000,USD,2000,0,2000,,{},0\r\n",
            text(&formula["conversion_id"]),
            ann.id,
            decided(&formula)
        ),
        format!(
            "{},\"order,2 \"\"rush\"\"\",2026-01-06T11:30:00.250Z,unattributed,,,,5000,USD,0,0,0,\
             \"no referral code, bound customer or touchpoint inside the attribution window\",,0\r\n",
            text(&quoted["conversion_id"])
        ),
        // 20% of 33.33 is 6.67; a third of the sale refunded takes back 2.22 of it.
        format!(
            "{},'-3,2026-01-07T00:00:00.000Z,approved,{},{enrollment_id},{code},3333,USD,667,222,445,,{},1111\r\n",
            text(&refunded["conversion_id"]),
            ann.id,
            decided(&refunded)
        ),
    ];
    let whole = owner
        .mcp
        .ok(
            "amba_affiliate_conversions_export",
            json!({"program_id": program, "from": "2026-01-01", "to": "2026-02-01T00:00:00Z"}),
        )
        .await?;
    assert_eq!(whole["csv"], format!("{header}{}", rows.concat()));
    assert_eq!(whole["rows"], 3);
    assert!(whole.get("next_cursor").is_none());

    // Page by page (limit sent as numeric text), nothing lost or repeated.
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = json!({"program_id": program, "from": "2026-01-01", "to": "2026-02-01", "limit": "2"});
        if let Some(cursor) = &cursor {
            args["cursor"] = json!(cursor);
        }
        let page = owner.mcp.ok("amba_affiliate_conversions_export", args).await?;
        pages.push((page["rows"].as_i64(), text(&page["csv"]).to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        pages,
        vec![
            (Some(2), format!("{header}{}{}", rows[0], rows[1])),
            (Some(1), format!("{header}{}", rows[2])),
        ]
    );

    // Refusals: other owners, affiliates, too long a range, bad times and cursors.
    let other = org(&sys, "Other").await?;
    let range = json!({"program_id": program, "from": "2026-01-01", "to": "2026-02-01"});
    for (who, code) in [(&other, "NOT_FOUND"), (&ann, "FORBIDDEN")] {
        let err = who.mcp.err("amba_affiliate_conversions_export", range.clone()).await?;
        assert_eq!(err["code"], code);
    }
    for (args, message) in [
        (
            json!({"program_id": program, "from": "2025-01-01", "to": "2026-01-03"}),
            "from and to are 367 days apart; export at most 366 days per call",
        ),
        (
            json!({"program_id": program, "from": "2026-02-01", "to": "2026-01-01"}),
            "from must be before to",
        ),
        (
            json!({"program_id": program, "from": "January", "to": "2026-01-01"}),
            "from \"January\" is not an RFC 3339 time such as 2026-11-01T00:00:00Z or a date such as 2026-11-01",
        ),
        (
            json!({"program_id": program, "from": "2026-01-01", "to": "2026-02-01", "cursor": "bm9wZQ"}),
            "cursor is not one this server issued",
        ),
    ] {
        let err = owner.mcp.err("amba_affiliate_conversions_export", args).await?;
        assert_eq!(
            (err["code"].as_str(), err["message"].as_str()),
            (Some("INVALID_ARGUMENT"), Some(message))
        );
    }
    sys.stop().await
}
