//! Sales in another currency: converted at the reference rate of the sale's date from a feed
//! in the ECB's format (a local file here), the rate stored and explained; a sale whose rate is
//! missing waits, held with fx_rate_missing, and goes on once the rate arrives. Never at 1.

use super::*;

/// An ECB `eurofxref` document with one `<Cube time=…>` per day: `(date, [(currency, rate)])`.
fn feed(days: &[(chrono::NaiveDate, &[(&str, &str)])]) -> String {
    let mut cubes = String::new();
    for (date, rates) in days {
        cubes.push_str(&format!("    <Cube time='{date}'>\n"));
        for (currency, rate) in *rates {
            cubes.push_str(&format!("      <Cube currency='{currency}' rate='{rate}'/>\n"));
        }
        cubes.push_str("    </Cube>\n");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<gesmes:Envelope xmlns:gesmes=\"http://www.gesmes.org/xml/2002-08-01\" \
         xmlns=\"http://www.ecb.int/vocabulary/2002-08-01/eurofxref\">\n  <gesmes:subject>Reference rates</gesmes:subject>\n  \
         <gesmes:Sender><gesmes:name>European Central Bank</gesmes:name></gesmes:Sender>\n  <Cube>\n{cubes}  </Cube>\n</gesmes:Envelope>\n"
    )
}

async fn rates_stored(sys: &TestSystem, date: chrono::NaiveDate) -> anyhow::Result<()> {
    let pool = sys.service_pool("attribution").await?;
    eventually(
        std::time::Duration::from_secs(20),
        "the feed's rates in PostgreSQL",
        || {
            let pool = pool.clone();
            async move {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM fx_rates WHERE rate_date = $1")
                    .bind(date)
                    .fetch_one(&pool)
                    .await?;
                Ok((n > 0).then_some(()))
            }
        },
    )
    .await?;
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn a_euro_sale_on_a_dollar_program_at_the_rate_of_its_date_and_a_missing_rate_waits() -> anyhow::Result<()> {
    let today = Utc::now().date_naive();
    let yesterday = today - Duration::days(1);
    let file = std::env::temp_dir().join(format!("amba-eurofxref-{}.xml", amba_core::id::EventId::new()));
    std::fs::write(&file, feed(&[(yesterday, &[("USD", "1.0512"), ("JPY", "158.12")])]))?;
    let url = format!("file://{}", file.display());
    let Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    } = setup_with(
        json!({}),
        &[("AMBA_FX_RATES_URL", url.as_str()), ("AMBA_FX_REFRESH_SECONDS", "1")],
    )
    .await?;
    rates_stored(&sys, yesterday).await?;
    let code = text(&ann_enrollment["code"]).to_owned();

    // 100.00 EUR today (no rate of today yet: yesterday's is the latest) = 105.12 USD; 20 % = 21.02.
    let euro = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            json!({"program_id": program, "project_id": "web", "external_id": "eu-1", "amount_minor": 10_000,
                   "currency": "EUR", "code": code}),
        )
        .await?;
    let c = &euro["conversion"];
    assert_eq!(
        (&c["status"], &c["amount_minor"], &c["currency"], &c["commission_minor"]),
        (&json!("approved"), &json!(10_512), &json!("USD"), &json!(2_102))
    );
    assert_eq!(
        (
            &c["fx"]["sale_amount_minor"],
            &c["fx"]["sale_currency"],
            &c["fx"]["rate"],
            &c["fx"]["rate_date"]
        ),
        (
            &json!(10_000),
            &json!("EUR"),
            &json!("1.0512"),
            &json!(yesterday.to_string())
        )
    );
    assert_eq!(c["fx"]["source"], json!(url));
    // A repeat is the same report (its fingerprint is the sale as reported, in EUR).
    let again = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            json!({"program_id": program, "project_id": "web", "external_id": "eu-1", "amount_minor": 10_000,
                   "currency": "EUR", "code": code}),
        )
        .await?;
    assert_eq!(
        (&again["duplicate"], &again["conversion_id"]),
        (&json!(true), &euro["conversion_id"])
    );

    // Explain shows the rate, its source and date, and the commission on the converted amount.
    let explained = owner
        .mcp
        .ok(
            "amba_affiliate_commission_explain",
            json!({"conversion_id": euro["conversion_id"]}),
        )
        .await?;
    let fx = &explained["decision"]["fx"];
    assert_eq!(
        (
            &fx["sale_per_eur"],
            &fx["program_per_eur"],
            &fx["exact_minor"],
            &fx["amount_minor"],
            &fx["rate_date"]
        ),
        (
            &json!("1"),
            &json!("1.0512"),
            &json!("10512"),
            &json!(10_512),
            &json!(yesterday.to_string())
        )
    );
    assert_eq!(explained["decision"]["commission"]["base_minor"], 10_512);
    assert!(text(&explained["summary"]).contains("converted at the reference rates of"));
    // The ledger books dollars.
    held_becomes(&ann, 2_102).await?;

    // A pound sale of 20 days ago: no rate within days of it. It waits, held, with no commission
    // and no event; approving it is refused until the rate arrives.
    let old_day = today - Duration::days(20);
    let pounds = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            json!({"program_id": program, "project_id": "web", "external_id": "gb-1", "amount_minor": 1_234,
                   "currency": "GBP", "code": code, "occurred_at": ago(Duration::days(20))}),
        )
        .await?;
    let p = &pounds["conversion"];
    assert_eq!(
        (
            &p["status"],
            &p["amount_minor"],
            &p["commission_minor"],
            &p["hold_reasons"]
        ),
        (&json!("pending"), &json!(0), &json!(0), &json!(["fx_rate_missing"]))
    );
    assert_eq!(
        (&p["fx"]["sale_amount_minor"], p["fx"].get("rate")),
        (&json!(1_234), None)
    );
    let refused = owner
        .mcp
        .err(
            "amba_affiliate_conversion_approve",
            json!({"conversion_id": pounds["conversion_id"]}),
        )
        .await?;
    assert_eq!(refused["code"], "CONFLICT");
    let held = owner
        .mcp
        .ok(
            "amba_affiliate_conversions_list",
            json!({"program_id": program, "status": "held"}),
        )
        .await?;
    assert_eq!(held["conversions"][0]["external_id"], "gb-1");
    // Nobody's waiting sale cannot be credited by hand either; a rejected one is never converted.
    let nobody = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            json!({"program_id": program, "project_id": "web", "external_id": "gb-2", "amount_minor": 500,
                   "currency": "GBP", "occurred_at": ago(Duration::days(20))}),
        )
        .await?;
    assert_eq!(
        (&nobody["status"], &nobody["conversion"]["hold_reasons"]),
        (&json!("unattributed"), &json!(["fx_rate_missing"]))
    );
    let assign = owner
        .mcp
        .err(
            "amba_affiliate_conversion_assign",
            json!({"conversion_id": nobody["conversion_id"], "code": code}),
        )
        .await?;
    assert_eq!(assign["code"], "CONFLICT");
    let rejected = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            json!({"program_id": program, "project_id": "web", "external_id": "gb-3", "amount_minor": 700,
                   "currency": "GBP", "code": code, "occurred_at": ago(Duration::days(20))}),
        )
        .await?;
    owner
        .mcp
        .ok(
            "amba_affiliate_conversion_reject",
            json!({"conversion_id": rejected["conversion_id"], "reason": "a test order"}),
        )
        .await?;

    // The feed gains that day (history kept): the sale is converted, approved and booked.
    // 12.34 GBP / 0.8302 × 1.0498 = 15.6041…  USD → 1,560 cents; 20 % = 312.
    std::fs::write(
        &file,
        feed(&[
            (yesterday, &[("USD", "1.0512"), ("JPY", "158.12")]),
            (old_day - Duration::days(1), &[("USD", "1.0498"), ("GBP", "0.8302")]),
        ]),
    )?;
    let converted = eventually(
        std::time::Duration::from_secs(30),
        "the waiting sale converted",
        || async {
            let list = owner
                .mcp
                .ok(
                    "amba_affiliate_conversions_list",
                    json!({"program_id": program, "status": "approved"}),
                )
                .await?;
            Ok(list["conversions"]
                .as_array()
                .and_then(|all| all.iter().find(|c| c["external_id"] == "gb-1").cloned()))
        },
    )
    .await?;
    assert_eq!(
        (
            &converted["amount_minor"],
            &converted["commission_minor"],
            &converted["fx"]["rate_date"]
        ),
        (
            &json!(1_560),
            &json!(312),
            &json!((old_day - Duration::days(1)).to_string())
        )
    );
    assert!(converted.get("hold_reasons").is_none() && converted["held_for_review"] == false);
    held_becomes(&ann, 2_102 + 312).await?;
    // The unattributed one is converted too (and may now be assigned); the rejected one is not.
    let all = owner
        .mcp
        .ok("amba_affiliate_conversions_list", json!({"program_id": program}))
        .await?;
    let find = |id: &str| {
        all["conversions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["external_id"] == id).cloned())
            .unwrap_or_default()
    };
    // 5.00 GBP / 0.8302 × 1.0498 = 6.3226… USD → 632 cents.
    assert_eq!(
        (&find("gb-2")["status"], &find("gb-2")["amount_minor"]),
        (&json!("unattributed"), &json!(632))
    );
    assert_eq!(
        (&find("gb-3")["status"], &find("gb-3")["amount_minor"]),
        (&json!("rejected"), &json!(0))
    );
    let explained = owner
        .mcp
        .ok(
            "amba_affiliate_commission_explain",
            json!({"conversion_id": pounds["conversion_id"]}),
        )
        .await?;
    assert_eq!(
        (
            &explained["decision"]["fx"]["sale_per_eur"],
            &explained["decision"]["fx"]["program_per_eur"]
        ),
        (&json!("0.8302"), &json!("1.0498"))
    );
    // Rates are kept with their history.
    rates_stored(&sys, old_day - Duration::days(1)).await?;
    rates_stored(&sys, yesterday).await?;
    let _ = std::fs::remove_file(&file);
    sys.stop().await
}
