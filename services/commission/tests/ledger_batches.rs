//! Batched booking books exactly what booking one event at a time books. Random mixes of sales
//! (approved at once or after review, rejected, pending, unattributed), partial and full
//! clawbacks, clicks, multi-level overrides (with a removed sponsor), holds of 0 and 14 days, and
//! republished duplicates go to two fresh ledgers: one event per transaction through
//! `Handler::handle` in one, random batches through `Handler::handle_batch` in the other. Every
//! table the ledger writes must come out the same, before and after the hold-release sweep.

use amba_bus::consumer::{Delivery, Handler};
use amba_commission::consumers::{AttributionEvents, EnrollmentEvents};
use amba_proto::Message;
use amba_proto::wire as pb;
use amba_testkit::TestDatabase;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use sqlx::PgPool;

const DAY: i64 = 86_400_000_000;
/// 2026-09-21, a fixed day so stats days are the same in both ledgers.
const T0: i64 = 1_790_000_000_000_000;
const CASES: usize = 40;

/// What finally happens to a sale.
#[derive(Debug, Clone)]
enum Fate {
    Pending,
    Rejected,
    /// Approved (after review, or at once), then refunded in parts: each a percentage of the sale.
    Approved {
        reviewed: bool,
        refunds: Vec<u8>,
    },
}

#[derive(Debug, Clone)]
struct Sale {
    /// Index into the case's four enrollments; `None`: unattributed.
    earner: Option<usize>,
    amount_minor: i64,
    rate_pct: i64,
    day: i64,
    fate: Fate,
}

#[derive(Debug, Clone)]
struct Case {
    hold_days: u32,
    multi_level: bool,
    sponsor_removed: bool,
    sales: Vec<Sale>,
    clicks: Vec<(usize, i64)>,
    /// Picks the stream whose next event comes next: a random interleaving that keeps each
    /// conversion's own order.
    picks: Vec<usize>,
    /// Which events are also republished (a new event id, same content) right after.
    republish: Vec<bool>,
    batch_sizes: Vec<usize>,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        1 => Just(Fate::Pending),
        1 => Just(Fate::Rejected),
        4 => (any::<bool>(), prop::collection::vec(1u8..=60, 0..3))
            .prop_map(|(reviewed, refunds)| Fate::Approved { reviewed, refunds }),
    ]
}

fn sale() -> impl Strategy<Value = Sale> {
    (
        prop_oneof![1 => Just(None), 6 => (0usize..4).prop_map(Some)],
        1i64..2_000_000,
        0i64..=100,
        0i64..3,
        fate(),
    )
        .prop_map(|(earner, amount_minor, rate_pct, day, fate)| Sale {
            earner,
            amount_minor,
            rate_pct,
            day,
            fate,
        })
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(0u32), Just(14u32)],
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(sale(), 1..14),
        prop::collection::vec((0usize..4, 0i64..3), 0..6),
        prop::collection::vec(any::<usize>(), 120),
        prop::collection::vec(prop::bool::weighted(0.2), 120),
        prop::collection::vec(1usize..9, 120),
    )
        .prop_map(
            |(hold_days, multi_level, sponsor_removed, sales, clicks, picks, republish, batch_sizes)| Case {
                hold_days,
                multi_level,
                sponsor_removed,
                sales,
                clicks,
                picks,
                republish,
                batch_sizes,
            },
        )
}

fn delivery(subject: &str, payload: Vec<u8>) -> Delivery {
    Delivery {
        event_id: amba_core::id::EventId::new().to_string(),
        subject: format!("t.evt.{subject}"),
        payload: payload.into(),
        traceparent: String::new(),
        attempt: 1,
    }
}

fn meta(at: i64) -> Option<pb::EventMeta> {
    Some(pb::EventMeta {
        event_id: amba_core::id::EventId::new().to_string(),
        occurred_at_micros: at,
        traceparent: String::new(),
    })
}

/// The program and enrollment events of case `n`: a chain e0 ← e1 ← e2 and a lone e3.
fn read_model_events(n: usize, case: &Case) -> Vec<Delivery> {
    let program_id = format!("p{n}");
    let multi_level = serde_json::json!({"enabled": case.multi_level, "levels_bps": [1000, 500]});
    let program = pb::ProgramChanged {
        meta: meta(T0),
        program: Some(pb::Program {
            program_id: program_id.clone(),
            owner_org_id: "owner".into(),
            name: format!("Program {n}"),
            currency: "USD".into(),
            status: "active".into(),
            hold_days: case.hold_days,
            multi_level_json: multi_level.to_string(),
            commission_version: 1,
            commission_json: r#"{"type":"percentage","rate_bps":2000}"#.into(),
            updated_at_micros: T0,
            ..Default::default()
        }),
        commission_changed: true,
    };
    let mut events = vec![delivery("program.updated", program.encode_to_vec())];
    for (index, parent) in [(0, None), (1, Some(0)), (2, Some(1)), (3, None)] {
        let status = if index == 1 && case.sponsor_removed {
            "removed"
        } else {
            "active"
        };
        let enrollment = pb::EnrollmentChanged {
            meta: meta(T0),
            enrollment: Some(pb::Enrollment {
                enrollment_id: format!("p{n}e{index}"),
                program_id: program_id.clone(),
                affiliate_org_id: format!("org{index}"),
                status: status.into(),
                parent_enrollment_id: parent.map(|p| format!("p{n}e{p}")).unwrap_or_default(),
                depth: if parent.is_some() { index + 1 } else { 1 },
                updated_at_micros: T0,
                ..Default::default()
            }),
            ..Default::default()
        };
        events.push(delivery("enrollment.updated", enrollment.encode_to_vec()));
    }
    events
}

/// Each sale's events in their own order (and each click as a stream of one).
fn streams(n: usize, case: &Case) -> Vec<Vec<Delivery>> {
    let mut streams = Vec::new();
    for (index, sale) in case.sales.iter().enumerate() {
        let at = T0 + sale.day * DAY + i64::try_from(index).unwrap_or(0);
        let mut conversion = pb::Conversion {
            conversion_id: format!("p{n}c{index}"),
            program_id: format!("p{n}"),
            project_id: "web".into(),
            external_id: format!("order-{index}"),
            amount_minor: sale.amount_minor,
            currency: "USD".into(),
            status: "pending".into(),
            enrollment_id: sale.earner.map(|e| format!("p{n}e{e}")).unwrap_or_default(),
            affiliate_org_id: sale.earner.map(|e| format!("org{e}")).unwrap_or_default(),
            occurred_at_micros: at,
            recorded_at_micros: at,
            commission_tier: -1,
            ..Default::default()
        };
        let changed = |kind: &str, conversion: &pb::Conversion, at: i64| {
            let event = pb::ConversionChanged {
                meta: meta(at),
                conversion: Some(conversion.clone()),
                previous_status: String::new(),
            };
            delivery(&format!("conversion.{kind}"), event.encode_to_vec())
        };
        let mut stream = Vec::new();
        if sale.earner.is_none() {
            conversion.status = "unattributed".into();
            stream.push(changed("recorded", &conversion, at));
            streams.push(stream);
            continue;
        }
        let decided = at + DAY / 2;
        match &sale.fate {
            Fate::Pending => stream.push(changed("recorded", &conversion, at)),
            Fate::Rejected => {
                stream.push(changed("recorded", &conversion, at));
                conversion.status = "rejected".into();
                conversion.decided_at_micros = decided;
                stream.push(changed("rejected", &conversion, decided));
            }
            Fate::Approved { reviewed, refunds } => {
                if *reviewed {
                    stream.push(changed("recorded", &conversion, at));
                }
                conversion.status = "approved".into();
                conversion.decided_at_micros = if *reviewed { decided } else { at };
                conversion.commission_minor = sale.amount_minor * sale.rate_pct / 100;
                conversion.commission_version = 1;
                stream.push(changed("approved", &conversion, conversion.decided_at_micros));
                let mut refunded = 0;
                for (part, pct) in refunds.iter().enumerate() {
                    let refund = (sale.amount_minor * i64::from(*pct) / 100).clamp(1, sale.amount_minor - refunded);
                    if refund <= 0 {
                        break;
                    }
                    refunded += refund;
                    conversion.clawed_back_minor = refunded;
                    if refunded == sale.amount_minor {
                        conversion.status = "clawed_back".into();
                    }
                    let when = decided + DAY * i64::try_from(part + 1).unwrap_or(1);
                    let event = pb::ConversionClawedBack {
                        meta: meta(when),
                        clawback_id: format!("p{n}c{index}r{part}"),
                        conversion: Some(conversion.clone()),
                        refund_minor: refund,
                        reason: "refund".into(),
                    };
                    stream.push(delivery("conversion.clawed_back", event.encode_to_vec()));
                }
            }
        }
        streams.push(stream);
    }
    for (index, (earner, day)) in case.clicks.iter().enumerate() {
        let click = pb::TouchpointRecorded {
            meta: meta(T0),
            touchpoint_id: format!("p{n}t{index}"),
            program_id: format!("p{n}"),
            enrollment_id: format!("p{n}e{earner}"),
            code: "code".into(),
            subject_ref: String::new(),
            occurred_at_micros: T0 + day * DAY,
        };
        streams.push(vec![delivery("touchpoint.recorded", click.encode_to_vec())]);
    }
    streams
}

/// One interleaving of the streams, with republished copies (new event ids) after their
/// originals.
fn interleave(case: &Case, mut streams: Vec<Vec<Delivery>>) -> Vec<Delivery> {
    for stream in &mut streams {
        stream.reverse(); // pop from the front
    }
    let mut events = Vec::new();
    let mut step = 0;
    while !streams.is_empty() {
        let pick = case.picks.get(step % case.picks.len()).copied().unwrap_or(0) % streams.len();
        let Some(event) = streams[pick].pop() else {
            streams.remove(pick);
            continue;
        };
        if case
            .republish
            .get(step % case.republish.len())
            .copied()
            .unwrap_or(false)
        {
            let mut copy = delivery("", Vec::new());
            copy.subject.clone_from(&event.subject);
            copy.payload = event.payload.clone();
            streams[pick].push(copy);
        }
        events.push(event);
        step += 1;
    }
    events
}

async fn one_at_a_time(pool: &PgPool, handler: &impl Handler, events: &[Delivery]) -> anyhow::Result<()> {
    for event in events {
        let mut tx = pool.begin().await?;
        handler
            .handle(&mut tx, event)
            .await
            .map_err(|e| anyhow::anyhow!("{} alone: {e}", event.subject))?;
        tx.commit().await?;
    }
    Ok(())
}

async fn in_batches(pool: &PgPool, handler: &impl Handler, events: &[Delivery], sizes: &[usize]) -> anyhow::Result<()> {
    let mut rest = events;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let size = sizes.next().copied().unwrap_or(1).min(rest.len());
        let (batch, after) = rest.split_at(size);
        let batch: Vec<&Delivery> = batch.iter().collect();
        let mut tx = pool.begin().await?;
        handler
            .handle_batch(&mut tx, &batch)
            .await
            .map_err(|e| anyhow::anyhow!("a batch of {size}: {e}"))?;
        tx.commit().await?;
        rest = after;
    }
    Ok(())
}

/// Everything the ledger wrote for program `program_id`, as sorted lines per table (generated
/// ids and wall-clock stamps left out).
async fn snapshot(pool: &PgPool, program_id: &str) -> anyhow::Result<Vec<(String, String)>> {
    let tables = [
        (
            "entries",
            "SELECT j.idem_key, j.kind, j.enrollment_id, j.reference, e.enrollment_id, e.account, e.currency, \
             e.amount_minor FROM journal j JOIN entries e USING (journal_id) WHERE j.program_id = $1",
        ),
        ("balances", "SELECT * FROM balances WHERE program_id = $1"),
        (
            "commissions",
            "SELECT commission_id, conversion_id, enrollment_id, source_enrollment_id, level, source_commission_id, \
             currency, sale_minor, amount_minor, rate_bps, commission_version, commission_tier, decided_at, \
             release_at, released_at IS NOT NULL, held_minor, recovered_minor FROM commissions WHERE program_id = $1",
        ),
        ("conversions", "SELECT * FROM conversions WHERE program_id = $1"),
        ("daily_stats", "SELECT * FROM daily_stats WHERE program_id = $1"),
        (
            "clawbacks",
            "SELECT clawback_id, conversion_id, enrollment_id, refund_minor, refunded_total_minor, reversed_minor, \
             carry_forward_minor, reason, currency FROM clawbacks WHERE program_id = $1",
        ),
    ];
    let mut snapshot = Vec::new();
    for (table, query) in tables {
        let rows: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT string_agg(t::text, E'\\n' ORDER BY t::text) FROM ({query}) t"
        )))
        .bind(program_id)
        .fetch_one(pool)
        .await?;
        snapshot.push((table.to_owned(), rows.unwrap_or_default()));
    }
    Ok(snapshot)
}

fn assert_same(case: &Case, when: &str, alone: &[(String, String)], batched: &[(String, String)]) {
    for ((table, a), (_, b)) in alone.iter().zip(batched) {
        assert!(
            a == b,
            "{table} differ {when}\n-- one at a time:\n{a}\n-- batched:\n{b}\n-- case: {case:#?}"
        );
    }
}

async fn ledger(db: &TestDatabase) -> anyhow::Result<PgPool> {
    Ok(amba_bus::service::open_store(&db.url, amba_commission::SCHEMA, &amba_commission::MIGRATIONS, 4).await?)
}

#[tokio::test]
async fn batched_booking_equals_booking_one_event_at_a_time() -> anyhow::Result<()> {
    let (db_alone, db_batched) = (TestDatabase::create().await?, TestDatabase::create().await?);
    let (alone, batched) = (ledger(&db_alone).await?, ledger(&db_batched).await?);
    let handler = AttributionEvents {
        multi_level_enabled: true,
        ns: amba_bus::Namespace::new("t")?,
    };
    let mut runner = TestRunner::deterministic();
    for n in 0..CASES {
        let case = case()
            .new_tree(&mut runner)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .current();
        let read_model = read_model_events(n, &case);
        one_at_a_time(&alone, &EnrollmentEvents, &read_model).await?;
        one_at_a_time(&batched, &EnrollmentEvents, &read_model).await?;

        let events = interleave(&case, streams(n, &case));
        one_at_a_time(&alone, &handler, &events).await?;
        in_batches(&batched, &handler, &events, &case.batch_sizes).await?;
        let program_id = format!("p{n}");
        let booked = snapshot(&alone, &program_id).await?;
        assert_same(&case, "after booking", &booked, &snapshot(&batched, &program_id).await?);

        let after_holds =
            chrono::DateTime::from_timestamp_micros(T0 + 60 * DAY).ok_or_else(|| anyhow::anyhow!("a valid time"))?;
        amba_commission::sweep::release_due(&alone, after_holds).await?;
        amba_commission::sweep::release_due(&batched, after_holds).await?;
        let released = snapshot(&alone, &program_id).await?;
        assert_same(
            &case,
            "after the sweep",
            &released,
            &snapshot(&batched, &program_id).await?,
        );
    }
    // The mixes did exercise what they claim to: overrides, released holds, clawbacks, debt-free.
    let (overrides, released, clawbacks, entries): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM commissions WHERE level > 0), \
         (SELECT count(*) FROM journal WHERE kind = 'release'), \
         (SELECT count(*) FROM clawbacks WHERE reversed_minor > 0), (SELECT count(*) FROM entries)",
    )
    .fetch_one(&batched)
    .await?;
    assert!(overrides > 10, "only {overrides} overrides booked");
    assert!(released > 20, "only {released} releases booked");
    assert!(clawbacks > 10, "only {clawbacks} clawbacks reversed commission");
    assert!(entries > 500, "only {entries} entries booked");
    let verify = amba_commission::verify_database(&db_batched.url).await?;
    assert!(verify.is_ok(), "ledger verify: {verify:?}");
    alone.close().await;
    batched.close().await;
    db_alone.drop_now().await?;
    db_batched.drop_now().await?;
    Ok(())
}
