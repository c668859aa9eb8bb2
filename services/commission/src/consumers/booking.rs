//! Booking a run of conversion and click events at once. What booking each event in turn would
//! do is planned in memory, then written with one statement per table: the conversions seen,
//! the approvals, the commission rows, the journal, its entries and the balances (each account
//! once), and `daily_stats` (each row once). A property test holds it to booking the same events
//! one at a time.

use super::retry;
use crate::domain::ledger::{self, CommissionState, Scope};
use crate::store::ledger::PendingPosting;
use crate::store::{
    self, CommissionInsert, EnrollmentRow, NewCommission, ProgramRow, SeenConversion, StatsBump, StatsBumps,
};
use amba_bus::consumer::HandlerError;
use amba_proto::wire as pb;
use sqlx::PgConnection;
use std::collections::{HashMap, HashSet};

/// An event a batch books.
#[derive(Debug, Clone)]
pub enum Bookable {
    /// A conversion recorded or decided (`approved`: the `conversion.approved` event).
    Conversion {
        conversion: Box<pb::Conversion>,
        approved: bool,
        /// When the event happened: the day of a conversion or decision without its own time.
        event_micros: i64,
    },
    Click(pb::TouchpointRecorded),
}

/// Books `events` (in stream order) inside the caller's transaction.
pub async fn book(conn: &mut PgConnection, events: &[Bookable], multi_level_enabled: bool) -> Result<(), HandlerError> {
    let mut stats = StatsBumps::default();
    let remembered = remember_conversions(conn, events, &mut stats).await?;
    let postings = accrue_approvals(conn, events, remembered, multi_level_enabled, &mut stats).await?;
    for event in events {
        if let Bookable::Click(click) = event
            && !click.enrollment_id.is_empty()
        {
            let bump = StatsBump {
                clicks: 1,
                ..Default::default()
            };
            stats.add(
                &click.program_id,
                &click.enrollment_id,
                store::day_of(click.occurred_at_micros),
                &bump,
            );
        }
    }
    // The rows other workers write too (the affiliate's stats, the program's and affiliate's
    // balances) last, after everything that locks nothing shared: they are held until commit.
    let appended = store::ledger::append(conn, &postings).await?;
    store::bump_all_stats(conn, &stats).await?;
    store::ledger::apply_balances(conn, &appended.balance_deltas).await?;
    Ok(())
}

fn conversions(events: &[Bookable]) -> impl Iterator<Item = (&pb::Conversion, bool, i64)> {
    events.iter().filter_map(|event| match event {
        Bookable::Conversion {
            conversion,
            approved,
            event_micros,
        } => Some((conversion.as_ref(), *approved, *event_micros)),
        Bookable::Click(_) => None,
    })
}

fn day_micros(primary: i64, fallback: i64) -> i64 {
    if primary > 0 { primary } else { fallback }
}

/// Remembers every conversion named (one seen for the first time is counted on its sale day, as
/// is a change of whether it counts as a sale by a click) and flags the approved ones.
async fn remember_conversions(
    conn: &mut PgConnection,
    events: &[Bookable],
    stats: &mut StatsBumps,
) -> Result<store::Remembered, HandlerError> {
    let mut seen: Vec<SeenConversion> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (conversion, approved, event_micros) in conversions(events) {
        let approved = approved && !conversion.enrollment_id.is_empty();
        if let Some(&at) = index.get(conversion.conversion_id.as_str()) {
            // Later events only update the status (and whether that makes it a click sale).
            let latest = &mut seen[at];
            latest.status.clone_from(&conversion.status);
            latest.approved |= approved;
            if !conversion.attribution.is_empty() {
                latest.attribution.clone_from(&conversion.attribution);
            }
            latest.click_counted =
                store::counts_as_click_sale(&latest.attribution, &latest.status, &latest.enrollment_id);
            continue;
        }
        index.insert(&conversion.conversion_id, seen.len());
        seen.push(SeenConversion {
            conversion_id: conversion.conversion_id.clone(),
            program_id: conversion.program_id.clone(),
            enrollment_id: conversion.enrollment_id.clone(),
            amount_minor: conversion.amount_minor,
            currency: conversion.currency.clone(),
            status: conversion.status.clone(),
            counted_day: store::day_of(day_micros(conversion.occurred_at_micros, event_micros)),
            approved,
            attribution: conversion.attribution.clone(),
            click_counted: store::counts_as_click_sale(
                &conversion.attribution,
                &conversion.status,
                &conversion.enrollment_id,
            ),
        });
    }
    let remembered = store::remember_conversions(conn, &seen).await?;
    let counted = StatsBump {
        conversions: 1,
        ..Default::default()
    };
    for id in &remembered.first_seen {
        if let Some(sale) = remembered.sale_rows.get(id) {
            stats.add(&sale.program_id, &sale.enrollment_id, sale.day, &counted);
        }
    }
    for (id, change) in &remembered.click_changes {
        if let Some(sale) = remembered.sale_rows.get(id) {
            let bump = StatsBump {
                click_conversions: *change,
                ..Default::default()
            };
            stats.add(&sale.program_id, &sale.enrollment_id, sale.day, &bump);
        }
    }
    Ok(remembered)
}

/// Accrues each attributed conversion approved for the first time (`first_approved`): its
/// commission and, in a multi-level program, an override for each active sponsor up the chain.
/// Inserts the commission rows and returns their postings (accrual, and release where the
/// program has no hold).
async fn accrue_approvals(
    conn: &mut PgConnection,
    events: &[Bookable],
    remembered: store::Remembered,
    multi_level_enabled: bool,
    stats: &mut StatsBumps,
) -> Result<Vec<PendingPosting>, HandlerError> {
    let store::Remembered {
        first_approved: mut first_approvals,
        sale_rows,
        ..
    } = remembered;
    let approvals: Vec<(&pb::Conversion, i64)> = conversions(events)
        .filter(|(conversion, approved, _)| *approved && !conversion.enrollment_id.is_empty())
        .map(|(conversion, _, event_micros)| (conversion, event_micros))
        .collect();
    if approvals.is_empty() {
        return Ok(Vec::new());
    }
    let programs = programs_of(conn, &approvals).await?;
    let mut enrollments = HashMap::new();
    let earners = distinct(approvals.iter().map(|(c, _)| c.enrollment_id.as_str()));
    load_enrollments(conn, &earners, &mut enrollments).await?;
    // Accrued before, or earlier in this batch: accrual happens once.
    let accruing: Vec<(&pb::Conversion, i64)> = approvals
        .into_iter()
        .filter(|(conversion, _)| first_approvals.remove(&conversion.conversion_id))
        .collect();
    if multi_level_enabled {
        load_sponsors(conn, &accruing, &programs, &mut enrollments).await?;
    }

    let mut commissions: Vec<CommissionInsert> = Vec::new();
    for (conversion, event_micros) in accruing {
        let (Some(program), Some(enrollment)) = (
            programs.get(&conversion.program_id),
            enrollments.get(&conversion.enrollment_id),
        ) else {
            continue; // loaded above, or the batch failed already
        };
        let decided = day_micros(conversion.decided_at_micros, event_micros);
        // Everything of a sale on the sale's day (the day it was counted on).
        let sale_day = sale_rows.get(&conversion.conversion_id).map_or_else(
            || store::day_of(day_micros(conversion.occurred_at_micros, event_micros)),
            |sale| sale.day,
        );
        let approved = StatsBump {
            approved: 1,
            revenue_minor: conversion.amount_minor,
            ..Default::default()
        };
        stats.add(&conversion.program_id, &conversion.enrollment_id, sale_day, &approved);
        let direct = NewCommission {
            commission_id: commission_id(&conversion.conversion_id, 0),
            conversion_id: conversion.conversion_id.clone(),
            program_id: program.program_id.clone(),
            enrollment_id: enrollment.enrollment_id.clone(),
            source_enrollment_id: enrollment.enrollment_id.clone(),
            level: 0,
            source_commission_id: None,
            currency: conversion.currency.clone(),
            sale_minor: conversion.amount_minor,
            amount_minor: conversion.commission_minor,
            rate_bps: None,
            commission_version: i32::try_from(conversion.commission_version).unwrap_or(i32::MAX),
            commission_tier: conversion.commission_tier,
            decided_at_micros: decided,
        };
        let overrides = if multi_level_enabled && program.multi_level_enabled {
            overrides_of(&direct, program, enrollment, &enrollments)?
        } else {
            Vec::new()
        };
        let release_at = decided.saturating_add(i64::from(program.hold_days).saturating_mul(86_400_000_000));
        for row in std::iter::once(direct).chain(overrides) {
            commissions.push(CommissionInsert {
                row,
                release_at_micros: release_at,
                released: program.hold_days == 0,
            });
        }
    }

    let mut postings = Vec::with_capacity(commissions.len() * 2);
    for commission in &commissions {
        let row = &commission.row;
        let scope = Scope {
            program_id: row.program_id.clone(),
            enrollment_id: row.enrollment_id.clone(),
            currency: row.currency.clone(),
        };
        // Checked before anything is written: a bad amount fails its event, not the database.
        let accrual = ledger::accrue(&scope, row.amount_minor)
            .map_err(|e| HandlerError::Permanent(format!("commission {}: {e}", row.commission_id)))?;
        postings.push(PendingPosting {
            scope: scope.clone(),
            idem_key: format!("accrue:{}", row.commission_id),
            reference: row.commission_id.clone(),
            posting: accrual,
            memo: None,
        });
        if commission.released {
            let mut state = CommissionState::accrued(row.amount_minor, row.sale_minor);
            postings.push(PendingPosting {
                posting: ledger::release(&scope, &mut state),
                scope,
                idem_key: format!("release:{}", row.commission_id),
                reference: row.commission_id.clone(),
                memo: None,
            });
        }
    }
    let inserted = store::insert_commissions(conn, &commissions).await?;
    // A commission row that existed was booked before: none of its postings are new.
    postings.retain(|p| inserted.contains(&p.reference));
    for commission in commissions.iter().filter(|c| inserted.contains(&c.row.commission_id)) {
        let row = &commission.row;
        let earned = StatsBump {
            commission_minor: row.amount_minor,
            ..Default::default()
        };
        // To its earner, on the day of the sale it came from.
        let day = sale_rows
            .get(&row.conversion_id)
            .map_or_else(|| store::day_of(row.decided_at_micros), |sale| sale.day);
        stats.add(&row.program_id, &row.enrollment_id, day, &earned);
    }
    Ok(postings)
}

/// The id of a conversion's commission at `level` (0 direct, n the n-th upline's override).
pub fn commission_id(conversion_id: &str, level: i32) -> String {
    format!("{conversion_id}:{level}")
}

fn distinct<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    ids.filter(|id| seen.insert(*id)).collect()
}

async fn programs_of(
    conn: &mut PgConnection,
    approvals: &[(&pb::Conversion, i64)],
) -> Result<HashMap<String, ProgramRow>, HandlerError> {
    let ids = distinct(approvals.iter().map(|(c, _)| c.program_id.as_str()));
    let programs = store::programs(conn, &ids).await?;
    match ids.iter().find(|id| !programs.contains_key(**id)) {
        Some(missing) => Err(retry(format!("program {missing} not in the read model yet"))),
        None => Ok(programs),
    }
}

/// Adds the enrollments of `ids` to `known`. A gap in the read model is retried (the event is
/// on its way).
async fn load_enrollments(
    conn: &mut PgConnection,
    ids: &[&str],
    known: &mut HashMap<String, EnrollmentRow>,
) -> Result<(), HandlerError> {
    let found = store::enrollments(conn, ids).await?;
    if let Some(missing) = ids.iter().find(|id| !found.contains_key(**id)) {
        return Err(retry(format!("enrollment {missing} not in the read model yet")));
    }
    known.extend(found);
    Ok(())
}

/// Adds the sponsors of the accruing conversions' earners, up to each multi-level program's
/// depth: one query per level of the chains.
async fn load_sponsors(
    conn: &mut PgConnection,
    accruing: &[(&pb::Conversion, i64)],
    programs: &HashMap<String, ProgramRow>,
    known: &mut HashMap<String, EnrollmentRow>,
) -> Result<(), HandlerError> {
    loop {
        // Sponsors the chains reach that are not loaded yet: the next level.
        let mut next: HashSet<String> = HashSet::new();
        for (conversion, _) in accruing {
            let Some(program) = programs.get(&conversion.program_id).filter(|p| p.multi_level_enabled) else {
                continue;
            };
            let mut parent = known
                .get(&conversion.enrollment_id)
                .and_then(|e| e.parent_enrollment_id.clone());
            for _ in &program.levels_bps {
                let Some(upline_id) = parent.filter(|p| !p.is_empty()) else {
                    break;
                };
                match known.get(&upline_id) {
                    Some(upline) => parent = upline.parent_enrollment_id.clone(),
                    None => {
                        next.insert(upline_id);
                        break;
                    }
                }
            }
        }
        if next.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = next.iter().map(String::as_str).collect();
        load_enrollments(conn, &ids, known).await?;
    }
}

/// Overrides of a direct commission: level n pays the n-th sponsor up the chain its `bps` of the
/// direct amount. A removed (or never active) sponsor earns no new overrides; the chain goes on
/// past it.
fn overrides_of(
    direct: &NewCommission,
    program: &ProgramRow,
    enrollment: &EnrollmentRow,
    enrollments: &HashMap<String, EnrollmentRow>,
) -> Result<Vec<NewCommission>, HandlerError> {
    let mut overrides = Vec::new();
    let mut parent = enrollment.parent_enrollment_id.clone();
    for (index, bps) in program.levels_bps.iter().enumerate() {
        let Some(upline_id) = parent.filter(|p| !p.is_empty()) else {
            break;
        };
        let upline = enrollments
            .get(&upline_id)
            .ok_or_else(|| retry(format!("sponsor enrollment {upline_id} not in the read model yet")))?;
        parent = upline.parent_enrollment_id.clone();
        if upline.status != "active" {
            continue;
        }
        let level = i32::try_from(index + 1).unwrap_or(i32::MAX);
        let bps = u32::try_from(*bps).unwrap_or(0);
        let amount =
            ledger::override_amount(direct.amount_minor, bps).map_err(|e| HandlerError::Permanent(e.to_string()))?;
        overrides.push(NewCommission {
            commission_id: commission_id(&direct.conversion_id, level),
            enrollment_id: upline.enrollment_id.clone(),
            level,
            source_commission_id: Some(direct.commission_id.clone()),
            amount_minor: amount,
            rate_bps: Some(i32::try_from(bps).unwrap_or(0)),
            ..direct.clone()
        });
    }
    Ok(overrides)
}
