//! Touchpoints and clicks: the window, the latest touch, the public endpoints and their limits.

use super::*;

#[tokio::test]
async fn touchpoints_window_latest_touch_rotation_and_unattributed() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        ann,
        program,
        ann_enrollment,
    } = setup(json!({"attribution_window_days": 7})).await?;
    let bob = org(&sys, "Bob").await?;
    let bob_enrollment = enroll(&owner, &bob, &program, None).await?;
    let anonymous = sys.mcp(None).await?;
    let ann_code = text(&ann_enrollment["code"]).to_owned();
    let bob_code = text(&bob_enrollment["code"]).to_owned();
    eventually(
        std::time::Duration::from_secs(10),
        "bob's code in the read model",
        || {
            let anonymous = &anonymous;
            let args = json!({"program_id": program, "code": bob_code, "subject_ref": "warmup"});
            async move {
                Ok(anonymous
                    .call("amba_affiliate_touchpoint_record", args)
                    .await?
                    .is_error
                    .filter(|e| !e)
                    .map(|_| ()))
            }
        },
    )
    .await?;

    // Public clicks, no token. The same code and subject within 30 minutes count once.
    let click = |subject: &str, code: &str, at: String| json!({"program_id": program, "code": code, "subject_ref": subject, "occurred_at": at});
    let t = anonymous
        .ok(
            "amba_affiliate_touchpoint_record",
            click("visitor-1", &ann_code, ago(Duration::days(8))),
        )
        .await?;
    assert_eq!(t["duplicate"], false);
    let again = anonymous
        .ok(
            "amba_affiliate_touchpoint_record",
            click("visitor-1", &ann_code, ago(Duration::days(8) - Duration::minutes(1))),
        )
        .await?;
    assert_eq!(
        (again["touchpoint_id"].clone(), again["duplicate"].as_bool()),
        (t["touchpoint_id"].clone(), Some(true))
    );

    let sale = |id: &str, subject: &str, at: String| json!({"program_id": program, "project_id": "web", "external_id": id, "amount_minor": 5_000, "currency": "USD", "subject_ref": subject, "occurred_at": at});
    let clicked_at = Utc::now() - Duration::days(8);
    // Just inside the 7-day window, and just outside it.
    let inside = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(
                "s-1",
                "visitor-1",
                (clicked_at + Duration::days(7) - Duration::minutes(2)).to_rfc3339(),
            ),
        )
        .await?;
    assert_eq!(
        (inside["status"].as_str(), inside["conversion"]["attribution"].as_str()),
        (Some("approved"), Some("touchpoint"))
    );
    assert_eq!(inside["enrollment_id"], ann_enrollment["enrollment_id"]);
    assert_eq!(inside["conversion"]["touchpoint_id"], t["touchpoint_id"]);
    let outside = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale(
                "s-2",
                "visitor-1",
                (clicked_at + Duration::days(7) + Duration::minutes(2)).to_rfc3339(),
            ),
        )
        .await?;
    assert_eq!(outside["status"], "unattributed");
    assert_eq!(outside["commission_minor"], 0);
    assert!(outside["conversion"]["reason"].is_string(), "the reply says why");
    assert!(outside.get("enrollment_id").is_none());

    // Latest touch wins: Ann then Bob clicked; Bob gets it.
    anonymous
        .ok(
            "amba_affiliate_touchpoint_record",
            click("visitor-2", &ann_code, ago(Duration::hours(5))),
        )
        .await?;
    anonymous
        .ok(
            "amba_affiliate_touchpoint_record",
            click("visitor-2", &bob_code, ago(Duration::hours(2))),
        )
        .await?;
    let latest = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale("s-3", "visitor-2", ago(Duration::hours(1))),
        )
        .await?;
    assert_eq!(latest["enrollment_id"], bob_enrollment["enrollment_id"]);

    // A click recorded before Ann rotates her code still counts afterwards.
    anonymous
        .ok(
            "amba_affiliate_touchpoint_record",
            click("visitor-3", &ann_code, ago(Duration::hours(3))),
        )
        .await?;
    ann.mcp
        .ok(
            "amba_affiliate_my_referral_generate",
            json!({"enrollment_id": ann_enrollment["enrollment_id"]}),
        )
        .await?;
    let after_rotation = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale("s-4", "visitor-3", ago(Duration::hours(1))),
        )
        .await?;
    assert_eq!(after_rotation["enrollment_id"], ann_enrollment["enrollment_id"]);
    // But the retired code records no new clicks.
    let refused = eventually(
        std::time::Duration::from_secs(10),
        "the retired code to refuse clicks",
        || {
            let anonymous = &anonymous;
            let args = click("visitor-4", &ann_code, ago(Duration::minutes(1)));
            async move {
                Ok(anonymous
                    .call("amba_affiliate_touchpoint_record", args)
                    .await?
                    .structured_content
                    .and_then(|c| c.get("error").cloned()))
            }
        },
    )
    .await?;
    assert_eq!(refused["code"], "CONFLICT");

    // Nothing at all: unattributed.
    let nobody = owner
        .mcp
        .ok(
            "amba_affiliate_conversion_report",
            sale("s-5", "stranger", ago(Duration::minutes(1))),
        )
        .await?;
    assert_eq!(
        (nobody["status"].as_str(), nobody["conversion"]["attribution"].as_str()),
        (Some("unattributed"), Some("none"))
    );
    sys.stop().await
}

#[tokio::test]
async fn public_click_endpoints_cors_links_and_rate_limits() -> anyhow::Result<()> {
    let Setup {
        sys,
        program,
        ann_enrollment,
        ..
    } = setup(json!({"landing_url": "https://acme.example/pricing?plan=pro"})).await?;
    let code = text(&ann_enrollment["code"]).to_owned();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let url = format!("{}/v1/touchpoints", sys.base_url());

    // A browser preflight from the owner's site.
    let preflight = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://acme.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await?;
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("*")
    );

    let body = json!({"program_id": program, "code": code, "subject_ref": "app-visitor-1"});
    let created = http
        .post(&url)
        .header("origin", "https://acme.example")
        .json(&body)
        .send()
        .await?;
    assert_eq!(created.status(), 201);
    assert_eq!(
        created
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("*")
    );
    let created: Value = created.json().await?;
    assert!(text(&created["touchpoint_id"]).starts_with("tch_"));
    let again: Value = http.post(&url).json(&body).send().await?.json().await?;
    assert_eq!(
        (again["touchpoint_id"].clone(), again["duplicate"].as_bool()),
        (created["touchpoint_id"].clone(), Some(true))
    );

    let bad = http
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"code\": 1")
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.json().await?;
    assert_eq!(bad["error"]["code"], "INVALID_ARGUMENT");
    let unknown = http
        .post(&url)
        .json(&json!({"program_id": program, "code": "nosuchcode23", "subject_ref": "x"}))
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);

    // An affiliate link: recorded, then redirected with the subject for the owner's app.
    let link = http.get(format!("{}/r/{code}", sys.base_url())).send().await?;
    assert_eq!(link.status(), 302);
    let location = link
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        location.starts_with(&format!(
            "https://acme.example/pricing?plan=pro&amba_ref={code}&amba_sub=s1."
        )),
        "{location}"
    );
    let cookie = link
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let subject = location.rsplit("amba_sub=").next().unwrap_or_default().to_owned();
    assert!(cookie.starts_with(&format!("amba_sub={subject};")), "{cookie}");
    // The same visitor clicking again keeps its subject (and counts once).
    let back = http
        .get(format!("{}/r/{code}", sys.base_url()))
        .header("cookie", format!("amba_sub={subject}"))
        .send()
        .await?;
    assert!(
        back.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|l| l.ends_with(&subject))
    );
    let pool = sys.service_pool("attribution").await?;
    let clicks: i64 = sqlx::query_scalar("SELECT count(*) FROM touchpoints WHERE subject_ref = $1")
        .bind(&subject)
        .fetch_one(&pool)
        .await?;
    assert_eq!(clicks, 1);
    assert_eq!(
        http.get(format!("{}/r/nosuchcode23", sys.base_url()))
            .send()
            .await?
            .status(),
        404
    );

    // A burst from one address is slowed down with 429 and Retry-After; with no trusted proxy
    // configured, a forged X-Forwarded-For does not buy a fresh bucket.
    let mut limited = None;
    for i in 0..200 {
        let response = http
            .post(&url)
            .header("x-forwarded-for", format!("203.0.113.{}", i % 250))
            .json(&json!({"program_id": program, "code": code, "subject_ref": format!("burst-{i}")}))
            .send()
            .await?;
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.ok_or_else(|| anyhow::anyhow!("no 429 after 200 rapid requests"))?;
    assert!(limited.headers().get("retry-after").is_some());
    let limited: Value = limited.json().await?;
    assert_eq!(limited["error"]["code"], "RATE_LIMITED");
    pool.close().await;
    sys.stop().await
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_rate_limit() -> anyhow::Result<()> {
    // The test client connects from 127.0.0.1, standing in for the ingress.
    let Setup {
        sys,
        program,
        ann_enrollment,
        ..
    } = setup_with(json!({}), &[("AMBA_TRUSTED_PROXIES", "127.0.0.0/8")]).await?;
    let code = text(&ann_enrollment["code"]).to_owned();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/touchpoints", sys.base_url());
    let click = |client: &'static str, i: usize| {
        http.post(&url)
            .header("x-forwarded-for", format!("6.6.6.6, {client}"))
            .json(&json!({"program_id": program, "code": code, "subject_ref": format!("{client}-{i}")}))
            .send()
    };

    // One visitor bursts until slowed down; the address recorded is theirs, not the proxy's
    // and not the forged left-most hop.
    let mut limited = false;
    for i in 0..200 {
        if click("198.51.100.4", i).await?.status() == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "no 429 after 200 rapid requests from one forwarded client");
    // Another visitor behind the same proxy is not affected.
    assert_eq!(click("198.51.100.5", 0).await?.status(), 201);

    let pool = sys.service_pool("attribution").await?;
    let recorded: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT client_ip FROM touchpoints WHERE program_id = $1 ORDER BY 1")
            .bind(&program)
            .fetch_all(&pool)
            .await?;
    assert_eq!(recorded, vec!["198.51.100.4", "198.51.100.5"]);
    pool.close().await;
    sys.stop().await
}

#[tokio::test]
async fn anonymous_mcp_touchpoints_are_rate_limited_per_address_like_the_http_endpoint() -> anyhow::Result<()> {
    let Setup {
        sys,
        owner,
        program,
        ann_enrollment,
        ..
    } = setup(json!({})).await?;
    let code = text(&ann_enrollment["code"]).to_owned();
    let anonymous = sys.mcp(None).await?;
    let mut limited = None;
    for i in 0..200 {
        let result = anonymous
            .call(
                "amba_affiliate_touchpoint_record",
                json!({"program_id": program, "code": code, "subject_ref": format!("anon-{i}")}),
            )
            .await?;
        if result.is_error == Some(true) {
            limited = result.structured_content;
            break;
        }
    }
    let limited = limited.ok_or_else(|| anyhow::anyhow!("no refusal after 200 rapid anonymous calls"))?;
    assert_eq!(limited["error"]["code"], "RATE_LIMITED");

    // An authenticated caller is not held to the anonymous budget.
    let args = json!({"program_id": program, "code": code, "subject_ref": "owner-side"});
    owner.mcp.ok("amba_affiliate_touchpoint_record", args).await?;

    // The clicks carry the caller's address, as the HTTP endpoint records it.
    let pool = sys.service_pool("attribution").await?;
    let addresses: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT client_ip FROM touchpoints WHERE subject_ref LIKE 'anon-%'")
            .fetch_all(&pool)
            .await?;
    assert_eq!(addresses, vec!["127.0.0.1"]);
    pool.close().await;
    sys.stop().await
}
