//! Small leaks closed: a revocation wins over a token check in flight; signup answers alike for
//! a new and a registered address; the approval e-mail does not show the owner's order id;
//! affiliate links redirect only to https pages of other sites.

use crate::support::{active_program, enroll, org, text};
use crate::system::TestSystem;
use amba_proto::methods::enrollment as methods;
use amba_proto::wire as pb;
use amba_testkit::eventually;
use amba_testkit::smtp::SmtpSink;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// The point where a token check holds enrollment's answer before caching it.
const CHECKED: &str = "edge-token-verified";

/// A tool call as raw HTTP with `token`: the status, and whether the tool succeeded.
async fn call_with(http: &reqwest::Client, sys: &TestSystem, token: &str) -> anyhow::Result<(u16, bool)> {
    let response = http
        .post(sys.mcp_url())
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"amba_affiliate_tokens_list","arguments":{}}}"#)
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let succeeded = status == 200 && body["result"]["isError"] != true && body["result"].is_object();
    Ok((status, succeeded))
}

#[tokio::test]
async fn a_revocation_wins_over_checks_in_flight() -> anyhow::Result<()> {
    let sys = TestSystem::start().await?;
    let acme = org(&sys, "Acme").await?;
    let created = acme
        .mcp
        .ok("amba_affiliate_tokens_create", json!({"name": "raced"}))
        .await?;
    let token = text(&created["token"]).to_owned();

    // Each check of the new (uncached) token holds enrollment's "valid" for 5 s before it may
    // be cached: long enough for a revocation to land in between, every time.
    let _hold = fail::FailGuard::new(CHECKED, "return(5000)").map_err(anyhow::Error::msg)?;
    let held_before = amba_bus::faults::pauses(CHECKED);
    const CHECKS: u64 = 16;
    let http = reqwest::Client::new();
    let in_flight: Vec<_> = (0..CHECKS)
        .map(|_| {
            let (http, sys_url, token) = (http.clone(), sys.mcp_url(), token.clone());
            tokio::spawn(async move {
                let response = http
                    .post(sys_url)
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"amba_affiliate_tokens_list","arguments":{}}}"#)
                    .send()
                    .await?;
                anyhow::Ok(response.status().as_u16())
            })
        })
        .collect();
    // Every check has its answer from enrollment (the token was valid then) and waits.
    eventually(Duration::from_secs(10), "every check answered and held", || async {
        Ok((amba_bus::faults::pauses(CHECKED) - held_before >= CHECKS).then_some(()))
    })
    .await?;

    acme.mcp
        .ok("amba_affiliate_tokens_revoke", json!({"token_id": created["token_id"]}))
        .await?;
    assert!(
        in_flight.iter().all(|check| !check.is_finished()),
        "the checks were still holding a valid answer when the revocation returned"
    );
    // Refused from now on: a new call at once,
    assert_eq!(call_with(&http, &sys, &token).await?, (401, false));
    // every check that raced the revocation,
    for check in in_flight {
        assert_eq!(check.await??, 401, "a check that raced the revocation let the token in");
    }
    // and later calls: nothing those checks learned was cached.
    assert_eq!(call_with(&http, &sys, &token).await?, (401, false));
    // The org's other token is untouched.
    assert_eq!(call_with(&http, &sys, &acme.token).await?, (200, true));
    sys.stop().await
}

/// Signup over raw HTTP, anonymously: the status and the tool's result.
async fn raw_signup(
    http: &reqwest::Client,
    sys: &TestSystem,
    email: &str,
    org_name: &str,
) -> anyhow::Result<(u16, Value)> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "amba_affiliate_signup", "arguments": {"email": email, "org_name": org_name}}});
    let response = http
        .post(sys.mcp_url())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .json(&body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let reply: Value = response.json().await?;
    Ok((status, reply["result"].clone()))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test]
async fn signup_answers_alike_for_new_and_registered_addresses() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let sys = TestSystem::start_with(&[("AMBA_SMTP_URL", &sink.url())]).await?;
    let http = reqwest::Client::new();

    let (status, new) = raw_signup(&http, &sys, "taken@example.com", "First").await?;
    assert_eq!(status, 200);
    let created = &new["structuredContent"];
    assert!(text(&created["token"]).starts_with("amba_pat_"), "{new}");

    // The same address again (any case): the same status, no error, no other code; only the new
    // account's fields are absent, and the message says to check the inbox.
    let (again_status, again) = raw_signup(&http, &sys, "Taken@Example.com", "Second").await?;
    assert_eq!(again_status, status);
    assert_eq!(
        (new["isError"].as_bool(), again["isError"].as_bool()),
        (Some(false), Some(false)),
        "{again}"
    );
    let answer = &again["structuredContent"];
    for field in ["account_id", "org_id", "token", "token_id", "mcp_config"] {
        assert!(answer.get(field).is_none(), "{field} in {answer}");
    }
    assert!(text(&answer["message"]).contains("Check your inbox"), "{answer}");
    assert!(
        !again.to_string().contains("exist"),
        "nothing says the account exists: {again}"
    );

    // Nothing was created for it.
    let enrollment = sys.service_pool("enrollment").await?;
    let counts: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM accounts), (SELECT count(*) FROM orgs), (SELECT count(*) FROM tokens)",
    )
    .fetch_one(&enrollment)
    .await?;
    assert_eq!(counts, (1, 1, 1));

    // No timing tell either: both answers cost one transaction (medians of interleaved calls).
    let (mut fresh, mut taken) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let started = Instant::now();
        let (_, reply) = raw_signup(&http, &sys, &format!("fresh{i}@example.com"), "Fresh").await?;
        fresh.push(started.elapsed());
        assert!(reply["structuredContent"]["token"].is_string());
        let started = Instant::now();
        let (_, reply) = raw_signup(&http, &sys, "taken@example.com", "Again").await?;
        taken.push(started.elapsed());
        assert!(reply["structuredContent"]["token"].is_null());
    }
    let (fresh, taken) = (median(fresh), median(taken));
    let slack = Duration::from_millis(50);
    assert!(
        taken < fresh * 4 + slack && fresh < taken * 4 + slack,
        "signup times differ: new {fresh:?}, registered {taken:?}"
    );

    // The registered address is told, once however many attempts (at most one such e-mail an
    // hour), with nothing secret in it; new addresses get no e-mail.
    let mail = eventually(WAIT, "the registered address to be e-mailed", || async {
        Ok(sink.received().into_iter().find(|m| {
            m.to == ["taken@example.com".to_owned()]
                && m.header("Subject").is_some_and(|s| s.contains("tried to sign up"))
        }))
    })
    .await?;
    assert!(!mail.body().contains("amba_pat_"), "{}", mail.body());
    let notification = sys.service_pool("notification").await?;
    eventually(WAIT, "every attempt to reach notification", || async {
        let seen: i64 =
            sqlx::query_scalar("SELECT count(*) FROM inbox WHERE subject LIKE '%.identity.existing_account_signup'")
                .fetch_one(&notification)
                .await?;
        Ok((seen == 6).then_some(()))
    })
    .await?;
    let notices: i64 = sqlx::query_scalar("SELECT count(*) FROM emails WHERE template = 'existing_account_signup'")
        .fetch_one(&notification)
        .await?;
    assert_eq!(notices, 1);
    assert!(
        sink.received().iter().all(|m| m.to == ["taken@example.com".to_owned()]),
        "new accounts are not e-mailed"
    );
    sys.stop().await
}

#[tokio::test]
async fn the_approval_email_does_not_show_the_owners_order_id() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let sys = TestSystem::start_with(&[("AMBA_SMTP_URL", &sink.url())]).await?;
    let owner = org(&sys, "OrderOwner").await?;
    let ann = org(&sys, "OrderAnn").await?;
    let program = active_program(&owner, json!({"name": "Acme Partners"})).await?;
    let code = text(&enroll(&owner, &ann, &program, None).await?["code"]).to_owned();
    let reported = eventually(WAIT, "the code is known to attribution", || async {
        Ok(owner
            .mcp
            .ok(
                "amba_affiliate_conversion_report",
                json!({"program_id": program, "project_id": "shop", "external_id": "order-7731-secret",
                       "amount_minor": 12_345, "currency": "USD", "code": code}),
            )
            .await
            .ok())
    })
    .await?;
    let mail = eventually(WAIT, "the approval e-mail", || async {
        Ok(sink.received().into_iter().find(|m| {
            m.to == ["orderann@example.com".to_owned()] && m.header("Subject").is_some_and(|s| s.contains("You earned"))
        }))
    })
    .await?;
    assert!(!mail.data.contains("order-7731-secret"), "{}", mail.data);
    // The program's default hold: the day it becomes payable, not "now".
    assert!(mail.body().contains("becomes payable on "), "{}", mail.body());
    assert!(
        mail.body().contains(text(&reported["conversion_id"])),
        "{}",
        mail.body()
    );
    sys.stop().await
}

#[tokio::test]
async fn affiliate_links_lead_only_to_https_pages_of_other_sites() -> anyhow::Result<()> {
    let sys = TestSystem::start_with(&[("AMBA_PUBLIC_URL", "https://amba.example")]).await?;
    let owner = org(&sys, "Landing").await?;
    let create = |landing: &str| {
        json!({"name": "Partners", "currency": "USD", "commission": {"schema":1,"type":"percentage","bps":2000},
               "landing_url": landing})
    };

    // Refused at create and update: plain http, and this platform's own host in any spelling.
    for landing in [
        "http://acme.example/pricing",
        "https://amba.example/r/ABC",
        "https://AMBA.example.:443/mcp",
        "https://user@acme.example/",
    ] {
        let err = owner.mcp.err("amba_affiliate_programs_create", create(landing)).await?;
        assert_eq!(err["code"], "INVALID_ARGUMENT", "{landing}: {err}");
        assert!(text(&err["message"]).starts_with("landing_url"), "{landing}: {err}");
        assert_eq!(err["details"]["argument"], "landing_url", "{landing}: {err}");
    }
    let program = active_program(&owner, json!({"landing_url": "https://acme.example/pricing"})).await?;
    for landing in ["http://acme.example/", "https://amba.example/"] {
        let err = owner
            .mcp
            .err(
                "amba_affiliate_programs_update",
                json!({"program_id": program, "landing_url": landing}),
            )
            .await?;
        assert_eq!(err["code"], "INVALID_ARGUMENT", "{landing}: {err}");
    }

    // The owning service refuses them too, to a caller that skipped the edge.
    let rpc = amba_bus::rpc::RpcClient::new(sys.bus.nats.clone(), sys.bus.ns.clone());
    for landing in ["http://acme.example/", "https://amba.example/"] {
        let request = pb::CreateProgramRequest {
            caller: Some(pb::Principal {
                org_id: owner.id.clone(),
                account_id: String::new(),
                token_id: String::new(),
            }),
            settings: Some(pb::ProgramSettings {
                name: Some("Direct".into()),
                currency: Some("USD".into()),
                commission_json: Some(r#"{"schema":1,"type":"percentage","bps":2000}"#.into()),
                landing_url: Some(landing.into()),
                ..Default::default()
            }),
            idempotency_key: String::new(),
        };
        let refused = rpc.call(methods::PROGRAM_CREATE, &request).await.err();
        assert!(
            refused.is_some_and(|e| e.message.starts_with("landing_url")),
            "{landing} accepted by enrollment"
        );
    }

    // The link redirects to the https page...
    let affiliate = org(&sys, "LandingAff").await?;
    let code = text(&enroll(&owner, &affiliate, &program, None).await?["code"]).to_owned();
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let link = format!("{}/r/{code}", sys.base_url());
    let location = eventually(WAIT, "the link to redirect", || async {
        let response = browser.get(&link).send().await?;
        Ok((response.status() == 302)
            .then(|| {
                response
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .map(str::to_owned)
            })
            .flatten())
    })
    .await?;
    assert!(
        location.starts_with("https://acme.example/pricing?amba_ref="),
        "{location}"
    );

    // ...and never to one stored before the rule (or slipped past it): not found, no Location.
    let attribution = sys.service_pool("attribution").await?;
    for stored in ["http://acme.example/pricing", "https://amba.example/mcp"] {
        sqlx::query("UPDATE programs_view SET landing_url = $2 WHERE program_id = $1")
            .bind(&program)
            .bind(stored)
            .execute(&attribution)
            .await?;
        let response = browser.get(&link).send().await?;
        assert_eq!(response.status(), 404, "{stored}");
        assert!(response.headers().get("location").is_none(), "{stored}");
    }
    sys.stop().await
}
