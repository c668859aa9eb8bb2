//! The request/reply endpoints of `<ns>.rpc.commission.<method>`.
//!
//! Affiliate reads (balance, my stats) are scoped by the caller's org: they take no org id.
//! Owner reads (analytics, leaderboard, clawback outcome) check the program's owner and answer
//! NOT_FOUND for anyone else. The payout-facing methods (quote, reserve, post, void, transfer
//! reversal) are for trusted internal callers and are idempotent per payout item / reversal id.

use crate::domain::ledger::{self, Account, LedgerError, Scope};
use crate::domain::stats;
use crate::store::{self, ledger::PostingRef};
use amba_bus::rpc::{RpcServer, caller, db_error};
use amba_core::{ApiError, ErrorCode};
use amba_proto::methods::commission as methods;
use amba_proto::wire as pb;
use sqlx::{PgConnection, PgPool};
use std::time::Duration;

#[derive(Clone)]
pub struct Commission {
    pool: PgPool,
}

impl Commission {
    pub fn new(pool: PgPool) -> Self {
        Commission { pool }
    }
}

pub fn server(service: Commission) -> RpcServer {
    amba_bus::routes!(RpcServer::new(crate::SERVICE), service, {
        methods::BALANCE => balance,
        methods::MY_STATS => my_stats,
        methods::ANALYTICS => analytics,
        methods::LEADERBOARD => leaderboard,
        methods::CLAWBACK_OUTCOME => clawback_outcome,
        methods::PAYABLE_QUOTE => payable_quote,
        methods::PAYOUT_RESERVE => reserve,
        methods::PAYOUT_POST => post,
        methods::PAYOUT_VOID => void,
        methods::TRANSFER_REVERSAL => transfer_reversal,
    })
}

fn ledger_error(err: LedgerError) -> ApiError {
    match err {
        LedgerError::InsufficientPayable { available, requested } => {
            ApiError::conflict(err.to_string()).with_details(serde_json::json!({
                "available_minor": available, "requested_minor": requested
            }))
        }
        LedgerError::ExceedsReturnable { .. } | LedgerError::ExceedsSale { .. } => ApiError::conflict(err.to_string()),
        LedgerError::NonPositive | LedgerError::BadFee { .. } | LedgerError::Overflow => {
            ApiError::invalid(err.to_string())
        }
    }
}

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

/// (program, enrollment, program name, currency, account, balance): one row per account.
type BalanceRow = (String, String, String, String, Option<String>, Option<i64>);

#[derive(Debug, Default, sqlx::FromRow)]
struct Sums {
    clicks: i64,
    conversions: i64,
    approved: i64,
    revenue_minor: i64,
    commission_minor: i64,
    paid_minor: i64,
    clawed_back_minor: i64,
    refunded_minor: i64,
}

const SUMS: &str = "COALESCE(sum(clicks),0)::bigint AS clicks, COALESCE(sum(conversions),0)::bigint AS conversions, \
     COALESCE(sum(approved),0)::bigint AS approved, COALESCE(sum(revenue_minor),0)::bigint AS revenue_minor, \
     COALESCE(sum(commission_minor),0)::bigint AS commission_minor, COALESCE(sum(paid_minor),0)::bigint AS paid_minor, \
     COALESCE(sum(clawed_back_minor),0)::bigint AS clawed_back_minor, \
     COALESCE(sum(refunded_minor),0)::bigint AS refunded_minor";

fn stats_of(s: &Sums, currency: &str) -> pb::Stats {
    pb::Stats {
        clicks: s.clicks,
        conversions: s.conversions,
        approved: s.approved,
        revenue_minor: s.revenue_minor,
        commission_minor: s.commission_minor,
        paid_minor: s.paid_minor,
        clawed_back_minor: s.clawed_back_minor,
        refunded_minor: s.refunded_minor,
        epc_minor: stats::epc_minor(s.commission_minor, s.clicks),
        conversion_rate: stats::conversion_rate(s.conversions, s.clicks),
        conversion_rate_bps: stats::conversion_rate_bps(s.conversions, s.clicks),
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
    /// The program, if `caller` owns it; NOT_FOUND otherwise (no hint that it exists).
    async fn owned_program(&self, caller: &pb::Principal, program_id: &str) -> Result<store::ProgramRow, ApiError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        store::program(&mut conn, program_id)
            .await
            .map_err(db_error)?
            .filter(|p| p.owner_org_id == caller.org_id)
            .ok_or_else(|| ApiError::not_found(format!("program {program_id}")))
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
        .await
        .map_err(db_error)?;
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
        Ok(pb::BalanceReply {
            balances,
            total: Some(total),
        })
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
        .await
        .map_err(db_error)?;
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
        .await
        .map_err(db_error)?;
        let currency = currencies.first().map(|c| c.0.as_str()).unwrap_or_default();
        Ok(pb::StatsReply {
            stats: Some(stats_of(&sums, currency)),
            leaderboard: Vec::new(),
        })
    }

    pub async fn analytics(&self, request: pb::StatsRequest) -> Result<pb::StatsReply, ApiError> {
        let caller = caller(request.caller.clone())?;
        let program = self.owned_program(&caller, &request.program_id).await?;
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
        .await
        .map_err(db_error)?;
        let leaderboard = self.board(&program, &request).await?;
        Ok(pb::StatsReply {
            stats: Some(stats_of(&sums, &program.currency)),
            leaderboard,
        })
    }

    pub async fn leaderboard(&self, request: pb::StatsRequest) -> Result<pb::StatsReply, ApiError> {
        let caller = caller(request.caller.clone())?;
        let program = self.owned_program(&caller, &request.program_id).await?;
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
            "" | "commission" => "commission_minor",
            "conversions" => "conversions",
            "revenue" => "revenue_minor",
            "clicks" => "clicks",
            "approved" => "approved",
            other => {
                return Err(ApiError::invalid(format!(
                    "by {other:?}: use commission, conversions, approved, revenue or clicks"
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
        .await
        .map_err(db_error)?;
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
            let mut conn = self.pool.acquire().await.map_err(db_error)?;
            if let Some(row) = store::clawback(&mut conn, &request.clawback_id)
                .await
                .map_err(db_error)?
            {
                let owner = store::program(&mut conn, &row.program_id).await.map_err(db_error)?;
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

    // ---- payout-facing ----

    pub async fn payable_quote(&self, request: pb::PayableQuoteRequest) -> Result<pb::PayableQuoteReply, ApiError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        let program = store::program(&mut conn, &request.program_id)
            .await
            .map_err(db_error)?
            .ok_or_else(|| ApiError::not_found(format!("program {}", request.program_id)))?;
        let enrollments: Vec<(String, String)> = sqlx::query_as(
            "SELECT enrollment_id, affiliate_org_id FROM enrollments WHERE program_id = $1 \
             AND ($2 = '' OR enrollment_id = $2) ORDER BY enrollment_id",
        )
        .bind(&program.program_id)
        .bind(&request.enrollment_id)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
        if enrollments.is_empty() && !request.enrollment_id.is_empty() {
            return Err(ApiError::not_found(format!("enrollment {}", request.enrollment_id)));
        }
        let mut quotes = Vec::new();
        for (enrollment_id, org) in enrollments {
            let balances = store::ledger::enrollment_balances(&mut conn, &program.program_id, &enrollment_id)
                .await
                .map_err(db_error)?;
            let b = balances
                .into_iter()
                .find(|b| b.currency == program.currency)
                .unwrap_or_default();
            quotes.push(pb::PayableQuote {
                program_id: program.program_id.clone(),
                enrollment_id,
                affiliate_org_id: org,
                currency: program.currency.clone(),
                held_minor: b.held,
                payable_minor: b.payable,
                reserved_minor: b.reserved,
                paid_minor: b.paid,
                debt_minor: ledger::debt(b.payable),
                available_minor: b.payable.max(0),
            });
        }
        Ok(pb::PayableQuoteReply {
            quotes,
            platform_fee_bps: u32::try_from(program.platform_fee_bps).unwrap_or(0),
            payout_threshold_minor: program.payout_threshold_minor,
            currency: program.currency,
        })
    }

    pub async fn reserve(&self, request: pb::ReservePayoutRequest) -> Result<pb::PayoutItemReply, ApiError> {
        if request.payout_item_id.is_empty() {
            return Err(ApiError::invalid("payout_item_id is required"));
        }
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        if let Some(item) = payout_item(&mut tx, &request.payout_item_id).await? {
            let same = item.program_id == request.program_id
                && item.enrollment_id == request.enrollment_id
                && item.gross_minor == request.amount_minor;
            if !same {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyMismatch,
                    format!("payout item {} was reserved with other values", request.payout_item_id),
                ));
            }
            return Ok(pb::PayoutItemReply {
                item: Some(item),
                duplicate: true,
            });
        }
        let enrollment = store::enrollment(&mut tx, &request.enrollment_id)
            .await
            .map_err(db_error)?
            .filter(|e| e.program_id == request.program_id)
            .ok_or_else(|| ApiError::not_found(format!("enrollment {}", request.enrollment_id)))?;
        let program = store::program(&mut tx, &enrollment.program_id)
            .await
            .map_err(db_error)?
            .ok_or_else(|| ApiError::not_found(format!("program {}", request.program_id)))?;
        let scope = Scope {
            program_id: program.program_id.clone(),
            enrollment_id: enrollment.enrollment_id.clone(),
            currency: program.currency.clone(),
        };
        let payable = store::ledger::balance_for_update(&mut tx, &scope, Account::Payable)
            .await
            .map_err(db_error)?;
        let posting = ledger::reserve(&scope, payable, request.amount_minor).map_err(ledger_error)?;
        let idem = format!("reserve:{}", request.payout_item_id);
        let inserted = sqlx::query(
            "INSERT INTO payout_items (payout_item_id, program_id, enrollment_id, currency, gross_minor, status) \
             VALUES ($1, $2, $3, $4, $5, 'reserved') ON CONFLICT DO NOTHING",
        )
        .bind(&request.payout_item_id)
        .bind(&scope.program_id)
        .bind(&scope.enrollment_id)
        .bind(&scope.currency)
        .bind(request.amount_minor)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        if inserted.rows_affected() == 0 {
            return Err(ApiError::conflict(
                "a concurrent request reserved this payout item; retry",
            ));
        }
        store::ledger::record(
            &mut tx,
            &scope,
            PostingRef {
                idem_key: &idem,
                reference: &request.payout_item_id,
            },
            &posting,
        )
        .await
        .map_err(db_error)?;
        let item = payout_item(&mut tx, &request.payout_item_id)
            .await?
            .ok_or_else(ApiError::internal)?;
        tx.commit().await.map_err(db_error)?;
        Ok(pb::PayoutItemReply {
            item: Some(item),
            duplicate: false,
        })
    }

    pub async fn post(&self, request: pb::PostPayoutRequest) -> Result<pb::PayoutItemReply, ApiError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let item = locked_item(&mut tx, &request.payout_item_id).await?;
        match item.status.as_str() {
            "posted" if item.fee_minor == request.fee_minor => {
                return Ok(pb::PayoutItemReply {
                    item: Some(item),
                    duplicate: true,
                });
            }
            "posted" => {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyMismatch,
                    "payout item was posted with another fee",
                ));
            }
            "voided" => return Err(ApiError::conflict("payout item was voided; it cannot be posted")),
            _ => {}
        }
        let scope = item_scope(&item);
        let posting = ledger::post(&scope, item.gross_minor, request.fee_minor).map_err(ledger_error)?;
        let idem = format!("post:{}", item.payout_item_id);
        store::ledger::record(
            &mut tx,
            &scope,
            PostingRef {
                idem_key: &idem,
                reference: &item.payout_item_id,
            },
            &posting,
        )
        .await
        .map_err(db_error)?;
        settle_item(&mut tx, &item.payout_item_id, "posted", request.fee_minor).await?;
        let bump = store::StatsBump {
            paid_minor: item.gross_minor - request.fee_minor,
            ..Default::default()
        };
        store::bump_stats(&mut tx, &scope.program_id, &scope.enrollment_id, 0, &bump)
            .await
            .map_err(db_error)?;
        let item = locked_item(&mut tx, &item.payout_item_id).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(pb::PayoutItemReply {
            item: Some(item),
            duplicate: false,
        })
    }

    pub async fn void(&self, request: pb::VoidPayoutRequest) -> Result<pb::PayoutItemReply, ApiError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let item = locked_item(&mut tx, &request.payout_item_id).await?;
        match item.status.as_str() {
            "voided" => {
                return Ok(pb::PayoutItemReply {
                    item: Some(item),
                    duplicate: true,
                });
            }
            "posted" => {
                return Err(ApiError::conflict(
                    "payout item was posted; record a transfer reversal instead",
                ));
            }
            _ => {}
        }
        let scope = item_scope(&item);
        let posting = ledger::void(&scope, item.gross_minor);
        let idem = format!("void:{}", item.payout_item_id);
        store::ledger::record(
            &mut tx,
            &scope,
            PostingRef {
                idem_key: &idem,
                reference: &item.payout_item_id,
            },
            &posting,
        )
        .await
        .map_err(db_error)?;
        settle_item(&mut tx, &item.payout_item_id, "voided", 0).await?;
        let item = locked_item(&mut tx, &item.payout_item_id).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(pb::PayoutItemReply {
            item: Some(item),
            duplicate: false,
        })
    }

    pub async fn transfer_reversal(
        &self,
        request: pb::TransferReversalRequest,
    ) -> Result<pb::TransferReversalReply, ApiError> {
        if request.reversal_id.is_empty() {
            return Err(ApiError::invalid("reversal_id is required"));
        }
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let item = locked_item(&mut tx, &request.payout_item_id).await?;
        let existing: Option<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT payout_item_id, amount_minor, settled_debt_minor, recovered_minor FROM transfer_reversals \
             WHERE reversal_id = $1",
        )
        .bind(&request.reversal_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        if let Some((item_id, amount, settled, recovered)) = existing {
            if item_id != request.payout_item_id || amount != request.amount_minor {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyMismatch,
                    format!("reversal {} was recorded with other values", request.reversal_id),
                ));
            }
            return Ok(pb::TransferReversalReply {
                reversal_id: request.reversal_id,
                payout_item_id: item_id,
                amount_minor: amount,
                settled_debt_minor: settled,
                recovered_minor: recovered,
                duplicate: true,
            });
        }
        if item.status != "posted" {
            return Err(ApiError::conflict(format!(
                "payout item {} is {}: only a posted transfer can be reversed",
                item.payout_item_id, item.status
            )));
        }
        let scope = item_scope(&item);
        let payable = store::ledger::balance_for_update(&mut tx, &scope, Account::Payable)
            .await
            .map_err(db_error)?;
        let returnable = item.gross_minor - item.fee_minor - item.returned_minor;
        let reversal =
            ledger::transfer_reversal(&scope, payable, request.amount_minor, returnable).map_err(ledger_error)?;
        let rows = store::released_commissions(
            &mut tx,
            &scope.program_id,
            &scope.enrollment_id,
            &request.conversion_ids,
        )
        .await
        .map_err(db_error)?;
        let mut states: Vec<_> = rows.iter().map(|r| r.state()).collect();
        ledger::allocate_recovery(&mut states, reversal.recovered_minor);
        for (row, state) in rows.iter().zip(&states) {
            if state.recovered_minor != row.recovered_minor {
                store::save_commission_state(&mut tx, &row.commission_id, state)
                    .await
                    .map_err(db_error)?;
            }
        }
        let idem = format!("transfer_reversal:{}", request.reversal_id);
        store::ledger::record(
            &mut tx,
            &scope,
            PostingRef {
                idem_key: &idem,
                reference: &request.reversal_id,
            },
            &reversal.posting,
        )
        .await
        .map_err(db_error)?;
        sqlx::query("UPDATE payout_items SET returned_minor = returned_minor + $2 WHERE payout_item_id = $1")
            .bind(&item.payout_item_id)
            .bind(request.amount_minor)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query(
            "INSERT INTO transfer_reversals (reversal_id, payout_item_id, amount_minor, settled_debt_minor, \
             recovered_minor) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&request.reversal_id)
        .bind(&item.payout_item_id)
        .bind(request.amount_minor)
        .bind(reversal.settled_debt_minor)
        .bind(reversal.recovered_minor)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        let bump = store::StatsBump {
            paid_minor: -request.amount_minor,
            clawed_back_minor: reversal.recovered_minor,
            ..Default::default()
        };
        store::bump_stats(&mut tx, &scope.program_id, &scope.enrollment_id, 0, &bump)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(pb::TransferReversalReply {
            reversal_id: request.reversal_id,
            payout_item_id: item.payout_item_id,
            amount_minor: request.amount_minor,
            settled_debt_minor: reversal.settled_debt_minor,
            recovered_minor: reversal.recovered_minor,
            duplicate: false,
        })
    }
}

fn item_scope(item: &pb::PayoutItem) -> Scope {
    Scope {
        program_id: item.program_id.clone(),
        enrollment_id: item.enrollment_id.clone(),
        currency: item.currency.clone(),
    }
}

#[derive(sqlx::FromRow)]
struct ItemRow {
    payout_item_id: String,
    program_id: String,
    enrollment_id: String,
    currency: String,
    gross_minor: i64,
    fee_minor: i64,
    status: String,
    returned_minor: i64,
}

impl From<ItemRow> for pb::PayoutItem {
    fn from(r: ItemRow) -> Self {
        pb::PayoutItem {
            payout_item_id: r.payout_item_id,
            program_id: r.program_id,
            enrollment_id: r.enrollment_id,
            currency: r.currency,
            gross_minor: r.gross_minor,
            fee_minor: r.fee_minor,
            status: r.status,
            returned_minor: r.returned_minor,
        }
    }
}

async fn payout_item(conn: &mut PgConnection, id: &str) -> Result<Option<pb::PayoutItem>, ApiError> {
    let row: Option<ItemRow> = sqlx::query_as(
        "SELECT payout_item_id, program_id, enrollment_id, currency, gross_minor, fee_minor, status, returned_minor \
         FROM payout_items WHERE payout_item_id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
    .map_err(db_error)?;
    Ok(row.map(Into::into))
}

async fn locked_item(conn: &mut PgConnection, id: &str) -> Result<pb::PayoutItem, ApiError> {
    payout_item(conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("payout item {id}")))
}

async fn settle_item(conn: &mut PgConnection, id: &str, status: &str, fee: i64) -> Result<(), ApiError> {
    sqlx::query("UPDATE payout_items SET status = $2, fee_minor = $3, settled_at = now() WHERE payout_item_id = $1")
        .bind(id)
        .bind(status)
        .bind(fee)
        .execute(conn)
        .await
        .map_err(db_error)?;
    Ok(())
}
