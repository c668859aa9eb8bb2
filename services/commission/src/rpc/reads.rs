//! Reads: an affiliate's balance and stats (scoped by the caller's org), an owner's analytics,
//! leaderboard and clawback outcomes (FORBIDDEN for an org enrolled in the program, NOT_FOUND for
//! anyone else).

use super::Commission;
use crate::domain::ledger::{self, Account};
use crate::domain::stats;
use crate::store;
use amba_bus::rpc::caller;
use amba_core::{ApiError, cursor};
use amba_proto::wire as pb;
use std::time::Duration;

/// `YYYY-MM-DD` or an RFC 3339 timestamp (its UTC day); empty = unbounded.
fn parse_day(text: &str, field: &str) -> Result<Option<chrono::NaiveDate>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(Some(day));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| Some(t.with_timezone(&chrono::Utc).date_naive()))
        .map_err(|_| ApiError::invalid(format!("{field} must be a date (2026-01-31) or an RFC 3339 timestamp")))
}

/// Where a balance sits in the pages: program id, then enrollment id (fixed-length ids, so the
/// joined text orders as the pair does).
fn balance_key(b: &pb::Balance) -> String {
    format!("{} {}", b.program_id, b.enrollment_id)
}

/// What an affiliate reads instead of an owner's analytics or leaderboard.
const MY_STATS_TOOL: &str = "amba_affiliate_my_stats_get";

/// Release days listed per balance: the held total is exact whatever their number.
const RELEASE_DAYS: usize = 50;

/// (program, enrollment, program name, currency, account, balance): one row per account.
type BalanceRow = (String, String, String, String, Option<String>, Option<i64>);

#[derive(Debug, Default, sqlx::FromRow)]
struct Sums {
    clicks: i64,
    conversions: i64,
    click_conversions: i64,
    approved: i64,
    clawed_back: i64,
    net_commission_minor: i64,
    revenue_minor: i64,
    commission_minor: i64,
    paid_minor: i64,
    clawed_back_minor: i64,
    refunded_minor: i64,
}

const SUMS: &str = "COALESCE(sum(clicks),0)::bigint AS clicks, COALESCE(sum(conversions),0)::bigint AS conversions, \
     COALESCE(sum(click_conversions),0)::bigint AS click_conversions, \
     COALESCE(sum(clawed_back),0)::bigint AS clawed_back, \
     COALESCE(sum(commission_minor - clawed_back_minor),0)::bigint AS net_commission_minor, \
     COALESCE(sum(approved),0)::bigint AS approved, COALESCE(sum(revenue_minor),0)::bigint AS revenue_minor, \
     COALESCE(sum(commission_minor),0)::bigint AS commission_minor, COALESCE(sum(paid_minor),0)::bigint AS paid_minor, \
     COALESCE(sum(clawed_back_minor),0)::bigint AS clawed_back_minor, \
     COALESCE(sum(refunded_minor),0)::bigint AS refunded_minor";

fn stats_of(s: &Sums, currency: &str) -> pb::Stats {
    pb::Stats {
        clicks: s.clicks,
        conversions: s.conversions,
        click_conversions: s.click_conversions,
        approved: s.approved,
        clawed_back: s.clawed_back,
        revenue_minor: s.revenue_minor,
        net_revenue_minor: s.revenue_minor - s.refunded_minor,
        commission_minor: s.commission_minor,
        net_commission_minor: s.net_commission_minor,
        paid_minor: s.paid_minor,
        clawed_back_minor: s.clawed_back_minor,
        refunded_minor: s.refunded_minor,
        epc_minor: stats::epc_minor(s.net_commission_minor, s.clicks),
        conversion_rate: stats::conversion_rate(s.click_conversions, s.clicks),
        conversion_rate_bps: stats::conversion_rate_bps(s.click_conversions, s.clicks),
        currency: currency.to_owned(),
    }
}

#[derive(Debug, sqlx::FromRow)]
struct BoardRow {
    enrollment_id: String,
    affiliate_org_id: String,
    affiliate_org_name: String,
    #[sqlx(flatten)]
    sums: Sums,
}

impl Commission {
    /// The program, if `caller` owns it. An org enrolled in it gets FORBIDDEN (naming
    /// `instead`, the affiliate's tool), anyone else NOT_FOUND: no hint that it exists.
    pub(super) async fn owned_program(
        &self,
        caller: &pb::Principal,
        program_id: &str,
        instead: Option<&str>,
    ) -> Result<store::ProgramRow, ApiError> {
        let mut conn = self.pool.acquire().await?;
        match store::program(&mut conn, program_id).await? {
            Some(program) if program.owner_org_id == caller.org_id => Ok(program),
            Some(_) => {
                let enrolled = store::enrolled(&mut conn, program_id, &caller.org_id).await?;
                Err(ApiError::not_owner(format!("program {program_id}"), enrolled, instead))
            }
            None => Err(ApiError::not_found(format!("program {program_id}"))),
        }
    }

    pub async fn balance(&self, request: pb::BalanceRequest) -> Result<pb::BalanceReply, ApiError> {
        let caller = caller(request.caller)?;
        let rows: Vec<BalanceRow> = sqlx::query_as(
            "SELECT e.program_id, e.enrollment_id, p.name, COALESCE(b.currency, p.currency), b.account, b.balance_minor \
             FROM enrollments e JOIN programs p ON p.program_id = e.program_id \
             LEFT JOIN balances b ON b.program_id = e.program_id AND b.enrollment_id = e.enrollment_id \
             WHERE e.affiliate_org_id = $1 AND ($2 = '' OR e.program_id = $2) \
             ORDER BY e.program_id, e.enrollment_id",
        )
        .bind(&caller.org_id)
        .bind(&request.program_id)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() && !request.program_id.is_empty() {
            return Err(ApiError::not_found(format!("program {}", request.program_id)));
        }
        let mut balances: Vec<pb::Balance> = Vec::new();
        for (program_id, enrollment_id, name, currency, account, amount) in rows {
            if balances.last().is_none_or(|b| b.enrollment_id != enrollment_id) {
                balances.push(pb::Balance {
                    program_id,
                    enrollment_id: enrollment_id.clone(),
                    currency,
                    program_name: name,
                    ..Default::default()
                });
            }
            if let (Some(b), Some(account), Some(amount)) = (balances.last_mut(), account, amount) {
                match Account::parse(&account) {
                    Some(Account::Held) => b.held_minor = amount,
                    Some(Account::Payable) => {
                        b.payable_minor = amount.max(0);
                        b.debt_minor = ledger::debt(amount);
                    }
                    Some(Account::Reserved) => b.reserved_minor = amount,
                    Some(Account::Paid) => b.paid_minor = amount,
                    _ => {}
                }
            }
        }
        // Totals cover every program; the reply carries one page of the per-program balances, so
        // an org in thousands of programs never outgrows a NATS message. Keyset on (program,
        // enrollment), compared bytewise in Rust rather than by the database's collation.
        balances.sort_by_key(balance_key);
        let after = cursor::decode(&request.cursor)?;
        let limit = cursor::page_size(request.limit) as usize;
        let mut total = pb::Balance::default();
        let single_currency = balances.windows(2).all(|w| w[0].currency == w[1].currency);
        if single_currency {
            total.currency = balances.first().map(|b| b.currency.clone()).unwrap_or_default();
            for b in &balances {
                total.held_minor += b.held_minor;
                total.payable_minor += b.payable_minor;
                total.reserved_minor += b.reserved_minor;
                total.paid_minor += b.paid_minor;
                total.debt_minor += b.debt_minor;
            }
            if let [only] = balances.as_slice() {
                total.program_id = only.program_id.clone();
                total.program_name = only.program_name.clone();
                total.enrollment_id = only.enrollment_id.clone();
            }
        }
        let mut page: Vec<pb::Balance> = balances
            .into_iter()
            .filter(|b| after.as_deref().is_none_or(|after| balance_key(b).as_str() > after))
            .take(limit + 1)
            .collect();
        let next_cursor = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|b| cursor::encode(&balance_key(b))).unwrap_or_default()
        } else {
            String::new()
        };
        self.add_releases(&caller.org_id, &request.program_id, &mut page, &mut total)
            .await?;
        Ok(pb::BalanceReply {
            balances: page,
            total: Some(total),
            next_cursor,
        })
    }

    /// When the held commission of each balance of `page` becomes payable, by UTC day (the
    /// first [`RELEASE_DAYS`] days), and the earliest release of all the org's held commission.
    async fn add_releases(
        &self,
        org_id: &str,
        program_id: &str,
        page: &mut [pb::Balance],
        total: &mut pb::Balance,
    ) -> Result<(), ApiError> {
        let enrollments: Vec<&str> = page.iter().map(|b| b.enrollment_id.as_str()).collect();
        let days: Vec<(
            String,
            chrono::DateTime<chrono::Utc>,
            chrono::DateTime<chrono::Utc>,
            i64,
        )> = sqlx::query_as(
            "SELECT enrollment_id, min(release_at), max(release_at), sum(held_minor)::bigint FROM commissions \
             WHERE enrollment_id = ANY($1) AND released_at IS NULL AND held_minor > 0 \
             GROUP BY enrollment_id, (release_at AT TIME ZONE 'UTC')::date ORDER BY 1, 2",
        )
        .bind(&enrollments)
        .fetch_all(&self.pool)
        .await?;
        for (enrollment_id, first, last, amount) in days {
            let Some(balance) = page.iter_mut().find(|b| b.enrollment_id == enrollment_id) else {
                continue;
            };
            if balance.next_release_at_micros == 0 {
                balance.next_release_at_micros = first.timestamp_micros();
            }
            if balance.releases.len() < RELEASE_DAYS {
                balance.releases.push(pb::HeldRelease {
                    at_micros: last.timestamp_micros(),
                    amount_minor: amount,
                });
            }
        }
        let next: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "SELECT min(c.release_at) FROM commissions c JOIN enrollments e ON e.enrollment_id = c.enrollment_id \
             WHERE e.affiliate_org_id = $1 AND ($2 = '' OR e.program_id = $2) \
             AND c.released_at IS NULL AND c.held_minor > 0",
        )
        .bind(org_id)
        .bind(program_id)
        .fetch_one(&self.pool)
        .await?;
        total.next_release_at_micros = next.map(|t| t.timestamp_micros()).unwrap_or(0);
        Ok(())
    }

    pub async fn my_stats(&self, request: pb::StatsRequest) -> Result<pb::StatsReply, ApiError> {
        let caller = caller(request.caller)?;
        let from = parse_day(&request.from_day, "from")?;
        let to = parse_day(&request.to_day, "to")?;
        let currencies: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT p.currency FROM enrollments e JOIN programs p ON p.program_id = e.program_id \
             WHERE e.affiliate_org_id = $1 AND ($2 = '' OR e.program_id = $2)",
        )
        .bind(&caller.org_id)
        .bind(&request.program_id)
        .fetch_all(&self.pool)
        .await?;
        if currencies.is_empty() && !request.program_id.is_empty() {
            return Err(ApiError::not_found(format!("program {}", request.program_id)));
        }
        if currencies.len() > 1 {
            return Err(ApiError::invalid(
                "your programs use several currencies: pass program_id to see one program's stats",
            ));
        }
        let sums: Sums = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SUMS} FROM daily_stats s WHERE s.enrollment_id IN \
             (SELECT enrollment_id FROM enrollments WHERE affiliate_org_id = $1 AND ($2 = '' OR program_id = $2)) \
             AND ($3::date IS NULL OR s.day >= $3) AND ($4::date IS NULL OR s.day <= $4)"
        )))
        .bind(&caller.org_id)
        .bind(&request.program_id)
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await?;
        let currency = currencies.first().map(|c| c.0.as_str()).unwrap_or_default();
        Ok(pb::StatsReply {
            stats: Some(stats_of(&sums, currency)),
            leaderboard: Vec::new(),
        })
    }

    pub async fn analytics(&self, request: pb::StatsRequest) -> Result<pb::StatsReply, ApiError> {
        let caller = caller(request.caller.clone())?;
        let program = self
            .owned_program(&caller, &request.program_id, Some(MY_STATS_TOOL))
            .await?;
        let from = parse_day(&request.from_day, "from")?;
        let to = parse_day(&request.to_day, "to")?;
        let sums: Sums = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SUMS} FROM daily_stats s WHERE s.program_id = $1 \
             AND ($2::date IS NULL OR s.day >= $2) AND ($3::date IS NULL OR s.day <= $3)"
        )))
        .bind(&program.program_id)
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await?;
        let leaderboard = self.board(&program, &request).await?;
        Ok(pb::StatsReply {
            stats: Some(stats_of(&sums, &program.currency)),
            leaderboard,
        })
    }

    pub async fn leaderboard(&self, request: pb::StatsRequest) -> Result<pb::StatsReply, ApiError> {
        let caller = caller(request.caller.clone())?;
        let program = self
            .owned_program(&caller, &request.program_id, Some(MY_STATS_TOOL))
            .await?;
        let leaderboard = self.board(&program, &request).await?;
        Ok(pb::StatsReply {
            stats: None,
            leaderboard,
        })
    }

    async fn board(
        &self,
        program: &store::ProgramRow,
        request: &pb::StatsRequest,
    ) -> Result<Vec<pb::LeaderboardEntry>, ApiError> {
        let order = match request.by.as_str() {
            "" | "net_commission" => "net_commission_minor",
            "commission" => "commission_minor",
            "conversions" => "conversions",
            "revenue" => "revenue_minor",
            "clicks" => "clicks",
            "approved" => "approved",
            other => {
                return Err(ApiError::invalid(format!(
                    "by {other:?}: use net_commission, commission, conversions, approved, revenue or clicks"
                )));
            }
        };
        let limit = match request.limit {
            0 => 10,
            n => n.min(100),
        };
        let from = parse_day(&request.from_day, "from")?;
        let to = parse_day(&request.to_day, "to")?;
        let rows: Vec<BoardRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT s.enrollment_id, e.affiliate_org_id, e.affiliate_org_name, {SUMS} \
             FROM daily_stats s JOIN enrollments e ON e.enrollment_id = s.enrollment_id \
             WHERE s.program_id = $1 AND ($2::date IS NULL OR s.day >= $2) AND ($3::date IS NULL OR s.day <= $3) \
             GROUP BY s.enrollment_id, e.affiliate_org_id, e.affiliate_org_name \
             ORDER BY {order} DESC, s.enrollment_id LIMIT $4"
        )))
        .bind(&program.program_id)
        .bind(from)
        .bind(to)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| pb::LeaderboardEntry {
                rank: u32::try_from(i + 1).unwrap_or(u32::MAX),
                stats: Some(stats_of(&r.sums, &program.currency)),
                enrollment_id: r.enrollment_id,
                affiliate_org_id: r.affiliate_org_id,
                affiliate_org_name: r.affiliate_org_name,
            })
            .collect())
    }

    /// Waits (briefly) until the clawback event has been applied, then reports what it reversed.
    pub async fn clawback_outcome(&self, request: pb::ClawbackOutcomeRequest) -> Result<pb::ClawbackOutcome, ApiError> {
        let caller = caller(request.caller)?;
        let wait = Duration::from_millis(u64::from(match request.wait_ms {
            0 => 5_000,
            n => n.min(10_000),
        }));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut conn = self.pool.acquire().await?;
            if let Some(row) = store::clawback(&mut conn, &request.clawback_id).await? {
                let owner = store::program(&mut conn, &row.program_id).await?;
                if owner.is_none_or(|p| p.owner_org_id != caller.org_id) {
                    return Err(ApiError::not_found(format!("clawback {}", request.clawback_id)));
                }
                return Ok(pb::ClawbackOutcome {
                    clawback_id: row.clawback_id,
                    conversion_id: row.conversion_id,
                    refund_minor: row.refund_minor,
                    refunded_total_minor: row.refunded_total_minor,
                    reversed_minor: row.reversed_minor,
                    carry_forward_minor: row.carry_forward_minor,
                    currency: row.currency,
                });
            }
            drop(conn);
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::unavailable(format!(
                    "clawback {} is recorded but the ledger has not applied it yet; ask again shortly",
                    request.clawback_id
                )));
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
}
