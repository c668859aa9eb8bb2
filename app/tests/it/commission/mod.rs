//! Commission: the ledger driven by conversion events (crafted and published to JetStream with
//! `Nats-Msg-Id`, as attribution would) and read back through MCP; the payout-facing ledger API
//! over NATS; `amba ledger verify` logic after every test. Figures are worked out by hand.

use crate::support::{Org, active_program, enroll, org, text};
use crate::system::TestSystem;
use amba_bus::rpc::RpcClient;
use amba_proto::Message;
use amba_proto::methods::commission as methods;
use amba_proto::wire as pb;
use amba_testkit::eventually;
use async_nats::jetstream::message::PublishMessage;
use serde_json::{Value, json};
use std::time::Duration;

mod concurrency;
mod figures;
mod ledger;
mod multi_level;

const WAIT: Duration = Duration::from_secs(15);

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(0))
        .unwrap_or(0)
}

fn new_event_id() -> String {
    amba_core::id::EventId::new().to_string()
}

/// Publishes `message` on `<ns>.evt.<domain>.<kind>` with `Nats-Msg-Id = event_id`; returns
/// whether JetStream took it as a duplicate.
async fn publish(
    sys: &TestSystem,
    domain: &str,
    kind: &str,
    event_id: &str,
    message: &impl Message,
) -> anyhow::Result<bool> {
    let ack = sys
        .bus
        .js
        .send_publish(
            sys.bus.ns.event(domain, kind),
            PublishMessage::build()
                .payload(message.encode_to_vec().into())
                .message_id(event_id),
        )
        .await?
        .await?;
    Ok(ack.duplicate)
}

fn meta(event_id: &str) -> Option<pb::EventMeta> {
    Some(pb::EventMeta {
        event_id: event_id.to_owned(),
        occurred_at_micros: now_micros(),
        traceparent: String::new(),
    })
}

/// An approved conversion as attribution announces it.
fn conversion(program: &str, enrollment: &str, id: &str, amount: i64, commission: i64) -> pb::Conversion {
    pb::Conversion {
        conversion_id: id.to_owned(),
        program_id: program.to_owned(),
        project_id: "web".into(),
        external_id: id.to_owned(),
        amount_minor: amount,
        currency: "USD".into(),
        status: "approved".into(),
        attribution: "code".into(),
        enrollment_id: enrollment.to_owned(),
        occurred_at_micros: now_micros(),
        recorded_at_micros: now_micros(),
        decided_at_micros: now_micros(),
        commission_minor: commission,
        commission_version: 1,
        commission_tier: -1,
        ..Default::default()
    }
}

async fn approve(sys: &TestSystem, c: &pb::Conversion) -> anyhow::Result<String> {
    let id = new_event_id();
    let event = pb::ConversionChanged {
        meta: meta(&id),
        conversion: Some(c.clone()),
        previous_status: "pending".into(),
    };
    publish(sys, "conversion", "approved", &id, &event).await?;
    Ok(id)
}

/// A clawback of `refund` bringing the refunded total to `total`.
async fn claw(sys: &TestSystem, c: &pb::Conversion, clawback_id: &str, refund: i64, total: i64) -> anyhow::Result<()> {
    let id = new_event_id();
    let mut after = c.clone();
    after.clawed_back_minor = total;
    if total == c.amount_minor {
        after.status = "clawed_back".into();
    }
    let event = pb::ConversionClawedBack {
        meta: meta(&id),
        clawback_id: clawback_id.to_owned(),
        conversion: Some(after),
        refund_minor: refund,
        reason: "refund".into(),
    };
    publish(sys, "conversion", "clawed_back", &id, &event).await?;
    Ok(())
}

async fn click(sys: &TestSystem, program: &str, enrollment: &str) -> anyhow::Result<()> {
    let id = new_event_id();
    let event = pb::TouchpointRecorded {
        meta: meta(&id),
        touchpoint_id: format!("tch_{}", &id[4..]),
        program_id: program.to_owned(),
        enrollment_id: enrollment.to_owned(),
        code: "code".into(),
        subject_ref: id.clone(),
        occurred_at_micros: now_micros(),
    };
    publish(sys, "touchpoint", "recorded", &id, &event).await?;
    Ok(())
}

/// Waits until the commission read model knows the enrollment as active and its program.
async fn known(sys: &TestSystem, enrollment: &str) -> anyhow::Result<()> {
    let pool = sys.service_pool("commission").await?;
    eventually(WAIT, "enrollment in the commission read model", || {
        let pool = pool.clone();
        let enrollment = enrollment.to_owned();
        async move {
            let row: Option<(i64,)> = sqlx::query_as(
                "SELECT 1::bigint FROM enrollments e JOIN programs p ON p.program_id = e.program_id \
                 WHERE e.enrollment_id = $1 AND e.status = 'active' AND p.status = 'active'",
            )
            .bind(&enrollment)
            .fetch_optional(&pool)
            .await?;
            Ok(row.map(|_| ()))
        }
    })
    .await?;
    pool.close().await;
    // Reports are decided by attribution's read model: the enrollment must be active there too.
    let pool = sys.service_pool("attribution").await?;
    eventually(WAIT, "enrollment in the attribution read model", || {
        let pool = pool.clone();
        let enrollment = enrollment.to_owned();
        async move {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM enrollments_view WHERE enrollment_id = $1")
                    .bind(&enrollment)
                    .fetch_optional(&pool)
                    .await?;
            Ok(status.filter(|s| s == "active").map(|_| ()))
        }
    })
    .await?;
    pool.close().await;
    Ok(())
}

/// The affiliate's balance once `done` holds for it.
async fn balance_when(affiliate: &Org, program: &str, done: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        last = affiliate
            .mcp
            .ok("amba_affiliate_my_balance_get", json!({"program_id": program}))
            .await?;
        if done(&last) {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    anyhow::bail!("balance never reached the expected state; last {last}")
}

fn figures(b: &Value) -> [i64; 5] {
    [
        "held_minor",
        "payable_minor",
        "reserved_minor",
        "paid_minor",
        "debt_minor",
    ]
    .map(|k| b[k].as_i64().unwrap_or(-1))
}

async fn assert_verifies(sys: &TestSystem) -> anyhow::Result<()> {
    let report = amba_commission::verify_database(&sys.db.url).await?;
    anyhow::ensure!(report.is_ok(), "ledger verify failed: {:?}", report.problems);
    anyhow::ensure!(report.journals > 0, "nothing was posted");
    Ok(())
}

fn rpc(sys: &TestSystem) -> RpcClient {
    RpcClient::new(sys.bus.nats.clone(), sys.bus.ns.clone())
}

async fn setup(sys: &TestSystem, settings: Value) -> anyhow::Result<(Org, Org, String, String)> {
    setup_with_code(sys, settings)
        .await
        .map(|(owner, ann, program, enrollment, _)| (owner, ann, program, enrollment))
}

/// Owner, affiliate Ann, an active program with `settings`, Ann's active enrollment and code.
async fn setup_with_code(sys: &TestSystem, settings: Value) -> anyhow::Result<(Org, Org, String, String, String)> {
    let owner = org(sys, "Owner").await?;
    let ann = org(sys, "Ann").await?;
    let program = active_program(&owner, settings).await?;
    let enrolled = enroll(&owner, &ann, &program, None).await?;
    let enrollment = text(&enrolled["enrollment_id"]).to_owned();
    known(sys, &enrollment).await?;
    Ok((owner, ann, program, enrollment, text(&enrolled["code"]).to_owned()))
}

fn chrono_like_now_plus_days(days: i64) -> sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc> {
    let at = now_micros() / 1_000_000 + days * 86_400;
    sqlx::types::chrono::DateTime::from_timestamp(at, 0).unwrap_or_default()
}

/// A → B → C (C's sponsor is B, B's is A); C converts.
async fn three_levels(sys: &TestSystem, multi_level: Value) -> anyhow::Result<(Vec<Org>, String, Vec<String>)> {
    let owner = org(sys, "Owner").await?;
    let program = active_program(&owner, json!({"hold_days": 0, "multi_level": multi_level})).await?;
    let mut orgs = Vec::new();
    let mut enrollments: Vec<String> = Vec::new();
    for name in ["Ann", "Bob", "Cy"] {
        let affiliate = org(sys, name).await?;
        let enrolled = enroll(&owner, &affiliate, &program, enrollments.last().map(String::as_str)).await?;
        enrollments.push(text(&enrolled["enrollment_id"]).to_owned());
        orgs.push(affiliate);
    }
    for e in &enrollments {
        known(sys, e).await?;
    }
    Ok((orgs, program, enrollments))
}

// ---- end to end through MCP: attribution reports and approves, the ledger books ----

async fn report(owner: &Org, program: &str, external_id: &str, amount: i64, extra: Value) -> anyhow::Result<Value> {
    let mut args = json!({"program_id": program, "project_id": "web", "external_id": external_id,
        "amount_minor": amount, "currency": "USD"});
    if let (Some(args), Some(extra)) = (args.as_object_mut(), extra.as_object()) {
        args.extend(extra.clone());
    }
    owner.mcp.ok("amba_affiliate_conversion_report", args).await
}

/// The deadlocks PostgreSQL has broken in this test's database: none means no two writers ever
/// waited on each other in a circle. (Its statistics are flushed within a second.)
async fn deadlocks(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    Ok(
        sqlx::query_scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(pool)
            .await?,
    )
}

// ---- numbers an owner can trust: sale-day figures, net of clawbacks, equal to the ledger ----

/// One program-wide or per-affiliate set of figures, as the stats tools show them.
fn counts_and_money(v: &Value) -> [i64; 12] {
    [
        "clicks",
        "conversions",
        "click_conversions",
        "approved",
        "clawed_back",
        "revenue_minor",
        "refunded_minor",
        "net_revenue_minor",
        "commission_minor",
        "clawed_back_minor",
        "net_commission_minor",
        "paid_minor",
    ]
    .map(|k| v[k].as_i64().unwrap_or(-1))
}

/// (conversion_rate, conversion_rate_bps, epc_minor), each present (null without clicks).
fn per_click(v: &Value) -> (Option<&Value>, Option<&Value>, Option<&Value>) {
    (
        v.get("conversion_rate"),
        v.get("conversion_rate_bps"),
        v.get("epc_minor"),
    )
}

fn micros_of(rfc3339: &Value) -> i64 {
    sqlx::types::chrono::DateTime::parse_from_rfc3339(text(rfc3339))
        .map(|t| t.timestamp_micros())
        .unwrap_or(0)
}

fn as_refs(ids: &[String]) -> Vec<&str> {
    ids.iter().map(String::as_str).collect()
}

/// Sums of the commission ledger for a program's conversions `ids`: (commission accrued,
/// commission reversed by clawbacks, approved sales, their refunds).
async fn ledger_sums(pool: &sqlx::PgPool, program: &str, ids: &[&str]) -> anyhow::Result<[i64; 4]> {
    let accrued: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(e.amount_minor), 0)::bigint FROM journal j JOIN entries e USING (journal_id) \
         JOIN commissions c ON c.commission_id = j.reference \
         WHERE j.program_id = $1 AND j.kind = 'accrue' AND e.account = 'held' AND c.conversion_id = ANY($2)",
    )
    .bind(program)
    .bind(ids)
    .fetch_one(pool)
    .await?;
    let reversed: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(e.amount_minor), 0)::bigint FROM journal j JOIN entries e USING (journal_id) \
         JOIN clawbacks c ON c.clawback_id = j.reference \
         WHERE j.program_id = $1 AND j.kind = 'clawback' AND e.account = 'expense' AND c.conversion_id = ANY($2)",
    )
    .bind(program)
    .bind(ids)
    .fetch_one(pool)
    .await?;
    let (revenue, refunded): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(amount_minor), 0)::bigint, COALESCE(sum(refunded_minor), 0)::bigint FROM conversions \
         WHERE program_id = $1 AND approved AND conversion_id = ANY($2)",
    )
    .bind(program)
    .bind(ids)
    .fetch_one(pool)
    .await?;
    Ok([accrued, reversed, revenue, refunded])
}

/// A CSV text (RFC 4180, CRLF) as rows of cells, quotes undone.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut cell) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') if chars.peek() == Some(&'\n') => {
                chars.next();
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    rows
}

/// The export's data rows as column → cell, after checking the header.
fn movements(csv: &str) -> Vec<std::collections::HashMap<String, String>> {
    let mut rows = parse_csv(csv).into_iter();
    let header = rows.next().unwrap_or_default();
    assert_eq!(
        header.join(","),
        "posted_at,movement_id,kind,level,conversion_id,commission_id,affiliate_org_id,enrollment_id,amount_minor,\
         currency,commission_minor,held_minor,payable_minor,reserved_minor,paid_minor,fee_minor,status,payable_at,\
         payout_item_id,reason"
    );
    rows.map(|row| header.iter().cloned().zip(row).collect()).collect()
}

fn minor(row: &std::collections::HashMap<String, String>, column: &str) -> i64 {
    row.get(column).and_then(|v| v.parse().ok()).unwrap_or(i64::MIN)
}
