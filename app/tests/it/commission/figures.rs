//! Stats, analytics and the ledger export, equal to the ledger.

use super::*;

#[tokio::test]
async fn stats_epc_leaderboard_and_out_of_order_events() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let (owner, ann, program, enrollment) = setup(&sys, json!({"hold_days": 0})).await?;
    let bob = org(&sys, "Bob").await?;
    let bob_enr = enroll(&owner, &bob, &program, None).await?;
    let bob_enr = text(&bob_enr["enrollment_id"]).to_owned();
    known(&sys, &bob_enr).await?;

    // Ann: 4 clicks, 1 conversion of 100.00 (20.00 commission). Bob: 2 clicks, 2 × 10.00 (2.00 each).
    // All of them attributed by those clicks (the conversion rate counts only such sales).
    for _ in 0..4 {
        click(&sys, &program, &enrollment).await?;
    }
    for _ in 0..2 {
        click(&sys, &program, &bob_enr).await?;
    }
    let by_click = |mut c: pb::Conversion| {
        c.attribution = "touchpoint".into();
        c
    };
    approve(
        &sys,
        &by_click(conversion(&program, &enrollment, "cnv_a", 10_000, 2_000)),
    )
    .await?;
    approve(&sys, &by_click(conversion(&program, &bob_enr, "cnv_b1", 1_000, 200))).await?;
    approve(&sys, &by_click(conversion(&program, &bob_enr, "cnv_b2", 1_000, 200))).await?;

    let stats = eventually(WAIT, "ann's stats", || async {
        let s = ann.mcp.ok("amba_affiliate_my_stats_get", json!({})).await?;
        Ok((s["clicks"] == 4 && s["commission_minor"] == 2_000).then_some(s))
    })
    .await?;
    assert_eq!(
        (
            &stats["conversions"],
            &stats["conversion_rate"],
            &stats["epc_minor"],
            &stats["currency"]
        ),
        (&json!(1), &json!("0.2500"), &json!(500), &json!("USD"))
    );
    let bob_stats = eventually(WAIT, "bob's stats", || async {
        let s = bob
            .mcp
            .ok("amba_affiliate_my_stats_get", json!({"program_id": program}))
            .await?;
        Ok((s["commission_minor"] == 400 && s["clicks"] == 2).then_some(s))
    })
    .await?;
    assert_eq!(
        (&bob_stats["conversion_rate"], &bob_stats["epc_minor"]),
        (&json!("1.0000"), &json!(200))
    );

    // Owner: 6 clicks, 3 conversions, 120.00 revenue, 24.00 commission; EPC 24.00/6 = 4.00.
    let a = owner
        .mcp
        .ok("amba_affiliate_analytics_get", json!({"program_id": program}))
        .await?;
    assert_eq!(
        (
            &a["totals"]["clicks"],
            &a["totals"]["conversions"],
            &a["totals"]["revenue_minor"]
        ),
        (&json!(6), &json!(3), &json!(12_000))
    );
    assert_eq!(
        (&a["epc_minor"], &a["conversion_rate"]),
        (&json!(400), &json!("0.5000"))
    );
    assert_eq!(a["leaderboard"][0]["enrollment_id"], json!(enrollment));
    let by_conversions = owner
        .mcp
        .ok(
            "amba_affiliate_leaderboard_get",
            json!({"program_id": program, "by": "conversions", "limit": 1}),
        )
        .await?;
    let board = by_conversions["leaderboard"].as_array().cloned().unwrap_or_default();
    assert_eq!(board.len(), 1);
    assert_eq!(board[0]["enrollment_id"], json!(bob_enr));
    // A range before any activity is empty; a bad date is a typed error.
    let past = owner
        .mcp
        .ok(
            "amba_affiliate_analytics_get",
            json!({"program_id": program, "from": "2020-01-01", "to": "2020-01-31"}),
        )
        .await?;
    assert_eq!(past["totals"]["clicks"], 0);
    let bad = owner
        .mcp
        .err(
            "amba_affiliate_analytics_get",
            json!({"program_id": program, "from": "soon"}),
        )
        .await?;
    assert_eq!(bad["code"], "INVALID_ARGUMENT");

    // Out of order: a conversion of an enrollment the read model has not seen yet is retried
    // until the enrollment event arrives, then accrues.
    let late_enr = "enr_0000000000000000000000000000late";
    approve(&sys, &conversion(&program, late_enr, "cnv_late", 1_000, 100)).await?;
    let id = new_event_id();
    let enrollment_event = pb::EnrollmentChanged {
        meta: meta(&id),
        enrollment: Some(pb::Enrollment {
            enrollment_id: late_enr.into(),
            program_id: program.clone(),
            affiliate_org_id: "org_late".into(),
            status: "active".into(),
            depth: 1,
            updated_at_micros: now_micros(),
            ..Default::default()
        }),
        previous_status: "pending".into(),
        program_owner_org_id: owner.id.clone(),
        ..Default::default()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&sys, "enrollment", "activated", &id, &enrollment_event).await?;
    let pool = sys.service_pool("commission").await?;
    eventually(WAIT, "the late conversion accrues", || {
        let pool = pool.clone();
        async move {
            let row: Option<(i64,)> = sqlx::query_as(
                "SELECT balance_minor FROM balances WHERE enrollment_id = $1 AND account = 'payable' AND balance_minor = 100",
            )
            .bind(late_enr)
            .fetch_optional(&pool)
            .await?;
            Ok(row)
        }
    })
    .await?;
    pool.close().await;
    assert_verifies(&sys).await?;
    sys.stop().await
}

#[tokio::test]
async fn analytics_by_sale_day_net_of_clawbacks_equal_the_ledger_and_held_money_has_dates() -> anyhow::Result<()> {
    use chrono::{Datelike, Duration as Days, NaiveDate, TimeZone, Utc};
    let sys = TestSystem::start().await?;
    let (owner, ann, program, ann_enr, ann_code) =
        setup_with_code(&sys, json!({"hold_days": 30, "approval_mode": "manual"})).await?;
    let bob = org(&sys, "Bob").await?;
    let bob_enrolled = enroll(&owner, &bob, &program, None).await?;
    let bob_enr = text(&bob_enrolled["enrollment_id"]).to_owned();
    let bob_code = text(&bob_enrolled["code"]).to_owned();
    known(&sys, &bob_enr).await?;

    // A month boundary in the past: the first day of last month (sales may not be in the future).
    let today = Utc::now().date_naive();
    let this_month = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap_or(today);
    let boundary_day = (this_month - Days::days(1)).with_day(1).unwrap_or(this_month);
    let boundary = Utc.from_utc_datetime(&boundary_day.and_hms_opt(0, 0, 0).unwrap_or_default());
    let at = |minutes: i64| (boundary + Days::minutes(minutes)).to_rfc3339();
    let before_month = (boundary_day - Days::days(1)).with_day(1).unwrap_or(boundary_day);
    let range = |from: NaiveDate, to: NaiveDate| (from.to_string(), to.to_string());
    let (old_from, old_to) = range(before_month, boundary_day - Days::days(1));
    let (new_from, new_to) = range(boundary_day, this_month - Days::days(1));

    // Clicks: Ann 4 (four visitors, the evening before the boundary), Bob 2 (just after it).
    for n in 1..=4 {
        let args = json!({"program_id": program, "code": ann_code, "subject_ref": format!("ann-visitor-{n}"),
            "occurred_at": at(-240)});
        owner.mcp.ok("amba_affiliate_touchpoint_record", args).await?;
    }
    for n in 1..=2 {
        let args = json!({"program_id": program, "code": bob_code, "subject_ref": format!("bob-visitor-{n}"),
            "occurred_at": at(10)});
        owner.mcp.ok("amba_affiliate_touchpoint_record", args).await?;
    }

    // Sales (20%): before the boundary, Ann's 100.00 by a click and 50.00 by her code; after it,
    // Ann's 200.00 by a click (half refunded later), 30.00 by a click (rejected), and 10.00 nobody's.
    let sale = |visitor: Option<&str>, code: Option<&str>, minutes: i64| {
        let mut extra = json!({"occurred_at": at(minutes)});
        if let Some(visitor) = visitor {
            extra["subject_ref"] = json!(visitor);
        }
        if let Some(code) = code {
            extra["code"] = json!(code);
        }
        extra
    };
    let click_old = report(&owner, &program, "o-1", 10_000, sale(Some("ann-visitor-1"), None, -120)).await?;
    let code_old = report(&owner, &program, "o-2", 5_000, sale(None, Some(&ann_code), -60)).await?;
    let click_new = report(&owner, &program, "o-3", 20_000, sale(Some("ann-visitor-2"), None, 60)).await?;
    let rejected = report(&owner, &program, "o-4", 3_000, sale(Some("ann-visitor-3"), None, 120)).await?;
    let nobody = report(&owner, &program, "o-6", 1_000, sale(None, None, 240)).await?;
    assert_eq!(click_old["conversion"]["attribution"], "touchpoint");
    assert_eq!(code_old["conversion"]["attribution"], "code");
    assert_eq!(nobody["status"], "unattributed");
    let id = |v: &Value| text(&v["conversion_id"]).to_owned();
    for approved in [&click_old, &code_old, &click_new] {
        owner
            .mcp
            .ok(
                "amba_affiliate_conversion_approve",
                json!({"conversion_id": id(approved)}),
            )
            .await?;
    }
    owner
        .mcp
        .ok(
            "amba_affiliate_conversion_reject",
            json!({"conversion_id": id(&rejected), "reason": "test order"}),
        )
        .await?;
    // Half of the 200.00 refunded while held: 20.00 of its 40.00 commission reversed.
    let clawed = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_clawback",
            json!({"conversion_id": id(&click_new), "reason": "half refunded", "amount_minor": 10_000}),
        )
        .await?;
    assert_eq!(clawed["reversed_minor"], 2_000);

    // Held money says when it becomes payable: 20.00 + 10.00 + 20.00, 30 days after approval.
    let held = balance_when(&ann, &program, |b| b["held_minor"] == 5_000).await?;
    let ann_balance = &held["balances"][0];
    let releases = ann_balance["releases"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        releases
            .iter()
            .map(|r| r["amount_minor"].as_i64().unwrap_or(0))
            .sum::<i64>(),
        5_000
    );
    let in_30_days = now_micros() + 30 * 86_400_000_000;
    let next = micros_of(&ann_balance["next_release_at"]);
    assert!((next - in_30_days).abs() < 600_000_000, "{held}");
    assert_eq!(held["next_release_at"], ann_balance["next_release_at"]);
    assert!(releases.iter().all(|r| micros_of(&r["at"]) >= next));

    // A shorter hold applies to new commissions only: Ann's keep their dates, Bob's next sale
    // (80.00 by code, after the boundary) is payable in a day.
    owner
        .mcp
        .ok(
            "amba_affiliate_programs_update",
            json!({"program_id": program, "hold_days": 1}),
        )
        .await?;
    let pool = sys.service_pool("commission").await?;
    eventually(WAIT, "the shorter hold in the ledger's read model", || {
        let pool = pool.clone();
        let program = program.clone();
        async move {
            let hold: Option<i32> = sqlx::query_scalar("SELECT hold_days FROM programs WHERE program_id = $1")
                .bind(&program)
                .fetch_optional(&pool)
                .await?;
            Ok(hold.filter(|h| *h == 1))
        }
    })
    .await?;
    let bob_sale = report(&owner, &program, "o-5", 8_000, sale(None, Some(&bob_code), 180)).await?;
    owner
        .mcp
        .ok(
            "amba_affiliate_conversion_approve",
            json!({"conversion_id": id(&bob_sale)}),
        )
        .await?;
    let bob_held = balance_when(&bob, &program, |b| b["held_minor"] == 1_600).await?;
    let in_a_day = now_micros() + 86_400_000_000;
    assert!(
        (micros_of(&bob_held["next_release_at"]) - in_a_day).abs() < 600_000_000,
        "{bob_held}"
    );
    let unchanged = ann
        .mcp
        .ok("amba_affiliate_my_balance_get", json!({"program_id": program}))
        .await?;
    assert_eq!(unchanged["balances"][0]["releases"], ann_balance["releases"]);

    // Program totals. All time: 6 clicks; 6 sales, 2 by a click (the rejected one is not), 4
    // approved, 1 clawed back; revenue 430.00 − 100.00 refunded; commission 86.00 − 20.00.
    let everything = eventually(WAIT, "every figure in the analytics", || async {
        let a = owner
            .mcp
            .ok("amba_affiliate_analytics_get", json!({"program_id": program}))
            .await?;
        Ok(
            (a["totals"]["approved"] == 4 && a["totals"]["clicks"] == 6 && a["totals"]["clawed_back"] == 1)
                .then_some(a),
        )
    })
    .await?;
    assert_eq!(
        counts_and_money(&everything["totals"]),
        [6, 6, 2, 4, 1, 43_000, 10_000, 33_000, 8_600, 2_000, 6_600, 0]
    );
    // 2 ÷ 6 click sales per click; net commission 66.00 ÷ 6 clicks = 11.00.
    assert_eq!(
        per_click(&everything),
        (Some(&json!("0.3333")), Some(&json!(3_333)), Some(&json!(1_100)))
    );
    // The month before the boundary: Ann's 4 clicks, 2 sales (1 by a click), 150.00, 30.00.
    let old = owner
        .mcp
        .ok(
            "amba_affiliate_analytics_get",
            json!({"program_id": program, "from": old_from, "to": old_to}),
        )
        .await?;
    assert_eq!(
        counts_and_money(&old["totals"]),
        [4, 2, 1, 2, 0, 15_000, 0, 15_000, 3_000, 0, 3_000, 0]
    );
    assert_eq!(
        per_click(&old),
        (Some(&json!("0.2500")), Some(&json!(2_500)), Some(&json!(750)))
    );
    // The month from the boundary: the approvals and the refund happened today, yet they count
    // on the sales' day. Bob's 2 clicks; 4 sales (1 by a click), 2 approved, 1 clawed back.
    let new = owner
        .mcp
        .ok(
            "amba_affiliate_analytics_get",
            json!({"program_id": program, "from": new_from, "to": new_to}),
        )
        .await?;
    assert_eq!(
        counts_and_money(&new["totals"]),
        [2, 4, 1, 2, 1, 28_000, 10_000, 18_000, 5_600, 2_000, 3_600, 0]
    );
    assert_eq!(
        per_click(&new),
        (Some(&json!("0.5000")), Some(&json!(5_000)), Some(&json!(1_800)))
    );

    // Figures equal the ledger's to the minor unit, per month and in all.
    let (old_ids, new_ids) = (
        [id(&click_old), id(&code_old)],
        [id(&click_new), id(&rejected), id(&nobody), id(&bob_sale)],
    );
    let all_ids: Vec<String> = old_ids.iter().chain(new_ids.iter()).cloned().collect();
    for (ids, shown) in [(&old_ids[..], &old), (&new_ids[..], &new), (&all_ids[..], &everything)] {
        let [accrued, reversed, revenue, refunded] = ledger_sums(&pool, &program, &as_refs(ids)).await?;
        let t = &shown["totals"];
        assert_eq!(
            [
                accrued,
                reversed,
                accrued - reversed,
                revenue,
                refunded,
                revenue - refunded
            ],
            [
                "commission_minor",
                "clawed_back_minor",
                "net_commission_minor",
                "revenue_minor",
                "refunded_minor",
                "net_revenue_minor"
            ]
            .map(|k| t[k].as_i64().unwrap_or(-1)),
            "{t}"
        );
    }

    // Leaderboard by what affiliates keep: Ann 50.00 net (70.00 − 20.00), Bob 16.00.
    let board = everything["leaderboard"].as_array().cloned().unwrap_or_default();
    assert_eq!(board.len(), 2);
    assert_eq!(board[0]["enrollment_id"], json!(ann_enr));
    assert_eq!(
        counts_and_money(&board[0]),
        [4, 4, 2, 3, 1, 35_000, 10_000, 25_000, 7_000, 2_000, 5_000, 0]
    );
    assert_eq!(
        per_click(&board[0]),
        (Some(&json!("0.5000")), Some(&json!(5_000)), Some(&json!(1_250)))
    );
    assert_eq!(
        counts_and_money(&board[1]),
        [2, 1, 0, 1, 0, 8_000, 0, 8_000, 1_600, 0, 1_600, 0]
    );
    assert_eq!(
        per_click(&board[1]),
        (Some(&json!("0.0000")), Some(&json!(0)), Some(&json!(800)))
    );
    // From the boundary Ann had no clicks: her rate and EPC are null, not 0.
    let new_board = owner
        .mcp
        .ok(
            "amba_affiliate_leaderboard_get",
            json!({"program_id": program, "from": new_from, "to": new_to}),
        )
        .await?;
    let new_board = new_board["leaderboard"].as_array().cloned().unwrap_or_default();
    assert_eq!(new_board[0]["enrollment_id"], json!(ann_enr));
    assert_eq!(
        counts_and_money(&new_board[0]),
        [0, 2, 1, 1, 1, 20_000, 10_000, 10_000, 4_000, 2_000, 2_000, 0]
    );
    assert_eq!(
        per_click(&new_board[0]),
        (Some(&Value::Null), Some(&Value::Null), Some(&Value::Null))
    );
    // Ann's own stats agree with her leaderboard rows.
    let mine = ann
        .mcp
        .ok("amba_affiliate_my_stats_get", json!({"program_id": program}))
        .await?;
    assert_eq!(counts_and_money(&mine), counts_and_money(&board[0]));
    assert_eq!(per_click(&mine), per_click(&board[0]));
    let mine_new = ann
        .mcp
        .ok(
            "amba_affiliate_my_stats_get",
            json!({"program_id": program, "from": new_from, "to": new_to}),
        )
        .await?;
    assert_eq!(counts_and_money(&mine_new), counts_and_money(&new_board[0]));
    assert_eq!(
        per_click(&mine_new),
        (Some(&Value::Null), Some(&Value::Null), Some(&Value::Null))
    );

    // Early release of one sale's commission: audited, once.
    let release = json!({"program_id": program, "conversion_id": id(&click_old),
        "reason": "delivered and accepted", "idempotency_key": "rel-1"});
    let released = owner
        .mcp
        .ok("amba_affiliate_commission_release", release.clone())
        .await?;
    assert_eq!(
        (
            &released["released_minor"],
            &released["commissions"],
            &released["duplicate"],
            &released["released_by"]["org_id"]
        ),
        (&json!(2_000), &json!(1), &json!(false), &json!(owner.id))
    );
    let b = balance_when(&ann, &program, |b| b["payable_minor"] == 2_000).await?;
    assert_eq!(figures(&b), [3_000, 2_000, 0, 0, 0]);
    let again = owner
        .mcp
        .ok("amba_affiliate_commission_release", release.clone())
        .await?;
    assert_eq!(
        (&again["release_id"], &again["duplicate"], &again["released_minor"]),
        (&released["release_id"], &json!(true), &json!(2_000))
    );
    let mut other_reason = release.clone();
    other_reason["reason"] = json!("changed my mind");
    let err = owner.mcp.err("amba_affiliate_commission_release", other_reason).await?;
    assert_eq!(err["code"], "IDEMPOTENCY_MISMATCH");
    let mut new_key = release.clone();
    new_key["idempotency_key"] = json!("rel-2");
    let err = owner.mcp.err("amba_affiliate_commission_release", new_key).await?;
    assert_eq!(err["code"], "CONFLICT", "{err}");
    // Bad calls change nothing: no reason, both targets, a rejected sale (no commission), the
    // affiliate herself, another owner.
    for (caller, args, code) in [
        (
            &owner,
            json!({"program_id": program, "conversion_id": id(&click_new), "reason": "  "}),
            "INVALID_ARGUMENT",
        ),
        (
            &owner,
            json!({"program_id": program, "conversion_id": id(&click_new)}),
            "INVALID_ARGUMENT",
        ),
        (
            &owner,
            json!({"program_id": program, "conversion_id": id(&click_new), "enrollment_id": ann_enr, "reason": "x"}),
            "INVALID_ARGUMENT",
        ),
        (
            &owner,
            json!({"program_id": program, "conversion_id": id(&rejected), "reason": "x"}),
            "NOT_FOUND",
        ),
        (
            &ann,
            json!({"program_id": program, "enrollment_id": ann_enr, "reason": "mine"}),
            "FORBIDDEN",
        ),
        (
            &bob,
            json!({"program_id": program, "conversion_id": id(&click_new), "reason": "x"}),
            "FORBIDDEN",
        ),
    ] {
        let err = caller
            .mcp
            .err("amba_affiliate_commission_release", args.clone())
            .await?;
        assert_eq!(err["code"], code, "{args}: {err}");
    }
    let b = balance_when(&ann, &program, |_| true).await?;
    assert_eq!(figures(&b), [3_000, 2_000, 0, 0, 0]);

    // All Ann still holds, by enrollment and without a key: the request is the key.
    let all = json!({"program_id": program, "enrollment_id": ann_enr, "reason": "trusted partner"});
    let released_all = owner.mcp.ok("amba_affiliate_commission_release", all.clone()).await?;
    assert_eq!(
        (&released_all["released_minor"], &released_all["commissions"]),
        (&json!(3_000), &json!(2))
    );
    let replay = owner.mcp.ok("amba_affiliate_commission_release", all).await?;
    assert_eq!(
        (&replay["duplicate"], &replay["release_id"]),
        (&json!(true), &released_all["release_id"])
    );
    let b = balance_when(&ann, &program, |b| b["payable_minor"] == 5_000).await?;
    assert_eq!(figures(&b), [0, 5_000, 0, 0, 0]);
    assert_eq!(b["balances"][0]["next_release_at"], Value::Null);
    assert_eq!(b["balances"][0]["releases"], json!([]));

    // The audit: each early release posting carries who and why.
    let memos: Vec<(String, sqlx::types::Json<Value>)> = sqlx::query_as(
        "SELECT reference, memo FROM journal WHERE kind = 'release' AND enrollment_id = $1 ORDER BY reference",
    )
    .bind(&ann_enr)
    .fetch_all(&pool)
    .await?;
    assert_eq!(memos.len(), 3);
    for (_, memo) in &memos {
        assert_eq!(memo.0["by_org_id"], json!(owner.id));
        assert!(memo.0["by_account_id"].as_str().is_some_and(|a| a.starts_with("acc_")));
    }
    assert!(memos.iter().any(|(_, m)| m.0["reason"] == "delivered and accepted"));
    assert_eq!(
        memos.iter().filter(|(_, m)| m.0["reason"] == "trusted partner").count(),
        2
    );

    // The hold's own release later moves only what is still held (Bob's), never Ann's again.
    assert_eq!(
        amba_commission::sweep::release_due(&pool, chrono_like_now_plus_days(40)).await?,
        1
    );
    let releases_of_ann: i64 =
        sqlx::query_scalar("SELECT count(*) FROM journal WHERE kind = 'release' AND enrollment_id = $1")
            .bind(&ann_enr)
            .fetch_one(&pool)
            .await?;
    assert_eq!(releases_of_ann, 3);
    let b = balance_when(&bob, &program, |b| b["payable_minor"] == 1_600).await?;
    assert_eq!(figures(&b), [0, 1_600, 0, 0, 0]);
    let b = balance_when(&ann, &program, |_| true).await?;
    assert_eq!(figures(&b), [0, 5_000, 0, 0, 0]);
    pool.close().await;
    assert_verifies(&sys).await?;
    sys.stop().await
}

#[tokio::test]
async fn commissions_export_is_the_ledger_movement_by_movement_exact_to_the_minor_unit() -> anyhow::Result<()> {
    use std::collections::HashMap;
    let sys = TestSystem::start().await?;
    let (owner, ann, program, ann_enr, ann_code) = setup_with_code(&sys, json!({"hold_days": 30})).await?;
    let bob = org(&sys, "Bob").await?;
    let bob_in = enroll(&owner, &bob, &program, None).await?;
    let bob_enr = text(&bob_in["enrollment_id"]).to_owned();
    known(&sys, &bob_enr).await?;

    // Two sales by code, approved at once and held for 30 days: 20.00 for Ann, 6.67 for Bob.
    // Ann's is booked before Bob's is reported, so the export's order (booking time) is known.
    let a = report(&owner, &program, "o-1", 10_000, json!({"code": ann_code})).await?;
    balance_when(&ann, &program, |b| b["held_minor"] == 2_000).await?;
    let b = report(&owner, &program, "o-2", 3_333, json!({"code": bob_in["code"]})).await?;
    let (a_id, b_id) = (
        text(&a["conversion_id"]).to_owned(),
        text(&b["conversion_id"]).to_owned(),
    );
    let b_commission = b["commission_minor"].as_i64().unwrap_or_default();
    assert_eq!((&a["commission_minor"], b_commission), (&json!(2_000), 667));
    balance_when(&ann, &program, |b| b["held_minor"] == 2_000).await?;
    balance_when(&bob, &program, |b| b["held_minor"] == 667).await?;
    // The owner ends Ann's hold early, with a reason a spreadsheet must not run.
    let reason = "=cleared, \"ok\"";
    owner
        .mcp
        .ok(
            "amba_affiliate_commission_release",
            json!({"program_id": program, "conversion_id": a_id, "reason": reason}),
        )
        .await?;
    // Refunds: a third of Bob's sale (held), a quarter of Ann's (released).
    let claw = |conversion: &str, amount: i64| {
        owner.mcp.ok(
            "amba_affiliate_conversion_clawback",
            json!({"conversion_id": conversion, "reason": "refund, partial", "amount_minor": amount}),
        )
    };
    let b_claw = claw(&b_id, 1_111).await?;
    let a_claw = claw(&a_id, 2_500).await?;
    assert_eq!(
        (&b_claw["reversed_minor"], &a_claw["reversed_minor"]),
        (&json!(222), &json!(500))
    );
    // A payout of 10.00 (1.00 fee), one of 5.00 that fails, and 3.00 of the paid transfer
    // coming back (with its share of the fee, 0.33).
    let r = rpc(&sys);
    for (item, amount) in [("pit_x1", 1_000), ("pit_x2", 500)] {
        let _ = r
            .call(
                methods::PAYOUT_RESERVE,
                &pb::ReservePayoutRequest {
                    payout_item_id: item.into(),
                    program_id: program.clone(),
                    enrollment_id: ann_enr.clone(),
                    amount_minor: amount,
                },
            )
            .await?;
    }
    let _ = r
        .call(
            methods::PAYOUT_POST,
            &pb::PostPayoutRequest {
                payout_item_id: "pit_x1".into(),
                fee_minor: 100,
            },
        )
        .await?;
    let _ = r
        .call(
            methods::PAYOUT_VOID,
            &pb::VoidPayoutRequest {
                payout_item_id: "pit_x2".into(),
            },
        )
        .await?;
    let reversed: pb::TransferReversalReply = r
        .call(
            methods::TRANSFER_REVERSAL,
            &pb::TransferReversalRequest {
                reversal_id: "trr_x1".into(),
                payout_item_id: "pit_x1".into(),
                amount_minor: 300,
                conversion_ids: vec![a_id.clone()],
            },
        )
        .await?;
    assert_eq!((reversed.settled_debt_minor, reversed.recovered_minor), (0, 333));
    let ann_balance = balance_when(&ann, &program, |b| b["paid_minor"] == 600).await?;
    assert_eq!(figures(&ann_balance), [0, 500, 0, 600, 0]);
    let bob_balance = balance_when(&bob, &program, |b| b["held_minor"] == 445).await?;
    assert_eq!(figures(&bob_balance), [445, 0, 0, 0, 0]);

    let today = chrono::Utc::now().date_naive();
    let range = json!({"program_id": program, "from": (today - chrono::Days::new(1)).to_string(),
        "to": (today + chrono::Days::new(2)).to_string()});
    let whole = owner.mcp.ok("amba_affiliate_commissions_export", range.clone()).await?;
    assert!(whole.get("next_cursor").is_none());
    let csv = text(&whole["csv"]);
    assert!(csv.ends_with("\r\n") && !csv.contains("\n\n"));
    // Text is guarded and quoted; the owner's reason reads back as written after the guard.
    assert!(csv.contains(",\"'=cleared, \"\"ok\"\"\"\r\n"), "{csv}");
    let rows = movements(csv);
    assert_eq!(whole["rows"], json!(rows.len()));
    let what: Vec<(&str, &str, i64, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["kind"].as_str(),
                r["enrollment_id"].as_str(),
                minor(r, "amount_minor"),
                r["status"].as_str(),
                r["payout_item_id"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        what,
        vec![
            ("accrual", ann_enr.as_str(), 2_000, "released", ""),
            ("accrual", bob_enr.as_str(), 667, "held", ""),
            ("early_release", ann_enr.as_str(), 2_000, "released", ""),
            ("clawback", bob_enr.as_str(), 222, "held", ""),
            ("clawback", ann_enr.as_str(), 500, "released", ""),
            ("payout_reserved", ann_enr.as_str(), 1_000, "posted", "pit_x1"),
            ("payout_reserved", ann_enr.as_str(), 500, "voided", "pit_x2"),
            ("payout_paid", ann_enr.as_str(), 1_000, "posted", "pit_x1"),
            ("payout_voided", ann_enr.as_str(), 500, "voided", "pit_x2"),
            ("transfer_reversal", ann_enr.as_str(), 300, "posted", "pit_x1"),
        ]
    );
    let signed = |r: &HashMap<String, String>| {
        [
            "commission_minor",
            "held_minor",
            "payable_minor",
            "reserved_minor",
            "paid_minor",
            "fee_minor",
        ]
        .map(|c| minor(r, c))
    };
    assert_eq!(signed(&rows[7]), [0, 0, 0, -1_000, 900, 100], "the payment");
    assert_eq!(signed(&rows[9]), [-333, 0, 0, 0, -300, -33], "the transfer reversal");
    for row in &rows {
        let [commission, held, payable, reserved, paid, fee] = signed(row);
        assert_eq!(
            held + payable + reserved + paid + fee,
            commission,
            "postings balance: {row:?}"
        );
        assert_eq!(row["currency"], "USD");
        let org = if row["enrollment_id"] == ann_enr {
            &ann.id
        } else {
            &bob.id
        };
        assert_eq!(&row["affiliate_org_id"], org);
    }
    // Ann's sale: its accrual, early release and clawback are one direct commission's.
    let a_rows: Vec<&HashMap<String, String>> = rows.iter().filter(|r| r["conversion_id"] == a_id).collect();
    assert_eq!(a_rows.len(), 3);
    assert!(!a_rows[0]["commission_id"].is_empty());
    assert!(
        a_rows
            .iter()
            .all(|r| r["level"] == "0" && r["commission_id"] == a_rows[0]["commission_id"])
    );
    assert_eq!(
        (rows[2]["reason"].clone(), rows[3]["reason"].as_str()),
        (format!("'{reason}"), "refund, partial")
    );
    assert!(!rows[1]["payable_at"].is_empty() && rows[1]["payable_at"] > rows[1]["posted_at"]);

    // The columns sum to what the ledger reports: each affiliate's balances, and the program's
    // commission, clawbacks and payments in analytics.
    let sum = |column: &str, enrollment: Option<&str>| -> i64 {
        rows.iter()
            .filter(|r| enrollment.is_none_or(|e| r["enrollment_id"] == e))
            .map(|r| minor(r, column))
            .sum()
    };
    for (enrollment, balance) in [(&ann_enr, &ann_balance), (&bob_enr, &bob_balance)] {
        let b = &balance["balances"][0];
        assert_eq!(
            [
                sum("held_minor", Some(enrollment)),
                sum("payable_minor", Some(enrollment)),
                sum("reserved_minor", Some(enrollment)),
                sum("paid_minor", Some(enrollment)),
            ],
            [
                b["held_minor"].as_i64().unwrap_or(-1),
                b["payable_minor"].as_i64().unwrap_or(-1) - b["debt_minor"].as_i64().unwrap_or(-1),
                b["reserved_minor"].as_i64().unwrap_or(-1),
                b["paid_minor"].as_i64().unwrap_or(-1),
            ]
        );
    }
    let analytics = owner
        .mcp
        .ok("amba_affiliate_analytics_get", json!({"program_id": program}))
        .await?;
    let t = &analytics["totals"];
    let of_kind = |kinds: &[&str], column: &str| -> i64 {
        rows.iter()
            .filter(|r| kinds.contains(&r["kind"].as_str()))
            .map(|r| minor(r, column))
            .sum()
    };
    assert_eq!(
        (
            of_kind(&["accrual", "override"], "amount_minor"),
            -of_kind(&["clawback", "transfer_reversal"], "commission_minor"),
            sum("commission_minor", None),
            sum("paid_minor", None),
        ),
        (
            t["commission_minor"].as_i64().unwrap_or(-1),
            t["clawed_back_minor"].as_i64().unwrap_or(-1),
            t["net_commission_minor"].as_i64().unwrap_or(-1),
            t["paid_minor"].as_i64().unwrap_or(-1),
        )
    );
    assert_eq!((sum("commission_minor", None), sum("fee_minor", None)), (1_612, 67));

    // Page by page (limit as numeric text), nothing lost or repeated.
    let mut paged = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut args = range.clone();
        args["limit"] = json!("4");
        if let Some(cursor) = &cursor {
            args["cursor"] = json!(cursor);
        }
        let page = owner.mcp.ok("amba_affiliate_commissions_export", args).await?;
        let page_rows = movements(text(&page["csv"]));
        assert_eq!(page["rows"], json!(page_rows.len()));
        paged.extend(page_rows);
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!((pages, &paged), (3, &rows));
    // A range without movements is the header alone.
    let empty = owner
        .mcp
        .ok(
            "amba_affiliate_commissions_export",
            json!({"program_id": program, "from": (today - chrono::Days::new(30)).to_string(),
                "to": (today - chrono::Days::new(29)).to_string()}),
        )
        .await?;
    assert_eq!((&empty["rows"], movements(text(&empty["csv"])).len()), (&json!(0), 0));

    // Refusals change nothing: the affiliates are pointed to their own balance, another org
    // learns nothing, bad ranges, cursors and limits are named.
    for who in [&ann, &bob] {
        let err = who.mcp.err("amba_affiliate_commissions_export", range.clone()).await?;
        assert_eq!(
            (err["code"].as_str(), err["status"].as_u64(), err["message"].as_str()),
            (
                Some("FORBIDDEN"),
                Some(403),
                Some("this tool is for the program's owner; as an affiliate, use amba_affiliate_my_balance_get")
            )
        );
    }
    let other = org(&sys, "Other").await?;
    let err = other
        .mcp
        .err("amba_affiliate_commissions_export", range.clone())
        .await?;
    assert_eq!(
        (err["code"].as_str(), err["message"].as_str()),
        (Some("NOT_FOUND"), Some(format!("program {program} not found").as_str()))
    );
    let with = |extra: Value| {
        let mut args = range.clone();
        if let (Some(args), Some(extra)) = (args.as_object_mut(), extra.as_object()) {
            args.extend(extra.clone());
        }
        args
    };
    for (args, message) in [
        (
            with(json!({"cursor": "bm9wZQ"})),
            "cursor is not one this server issued".to_owned(),
        ),
        (
            with(json!({"cursor": "%%%"})),
            "cursor is not one this server issued".to_owned(),
        ),
        (
            with(json!({"from": "2025-01-01", "to": "2026-01-03"})),
            "from and to are 367 days apart; export at most 366 days per call".to_owned(),
        ),
        (
            with(json!({"from": "2026-02-01", "to": "2026-01-01"})),
            "from must be before to".to_owned(),
        ),
        (
            with(json!({"from": "January"})),
            "from \"January\" is not an RFC 3339 time such as 2026-11-01T00:00:00Z or a date such as 2026-11-01"
                .to_owned(),
        ),
    ] {
        let err = owner.mcp.err("amba_affiliate_commissions_export", args.clone()).await?;
        assert_eq!(
            (err["code"].as_str(), err["message"].as_str()),
            (Some("INVALID_ARGUMENT"), Some(message.as_str())),
            "{args}"
        );
    }
    for limit in [json!(0), json!(5_001), json!("ten")] {
        let err = owner
            .mcp
            .err("amba_affiliate_commissions_export", with(json!({"limit": limit})))
            .await?;
        assert_eq!(
            (err["code"].as_str(), err["details"]["argument"].as_str()),
            (Some("INVALID_ARGUMENT"), Some("limit")),
            "{err}"
        );
    }
    let again = owner.mcp.ok("amba_affiliate_commissions_export", range).await?;
    assert_eq!(again, whole);
    assert_verifies(&sys).await?;
    sys.stop().await
}
