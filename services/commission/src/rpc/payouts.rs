//! The payout-facing two-phase API for trusted internal callers: quote, reserve, post, void and
//! transfer reversal, idempotent per payout item / reversal id. Each write takes its program's
//! ledger lock alone (`store::lock_programs`): it locks balances as it reads them, like a clawback.

use super::{Commission, ledger_error};
use crate::domain::ledger::{self, Account, Scope};
use crate::store::{self, LedgerLock, ledger::PostingRef};
use amba_core::{ApiError, ErrorCode};
use amba_proto::wire as pb;
use sqlx::PgConnection;

impl Commission {
    pub async fn payable_quote(&self, request: pb::PayableQuoteRequest) -> Result<pb::PayableQuoteReply, ApiError> {
        let mut conn = self.pool.acquire().await?;
        let program = store::program(&mut conn, &request.program_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("program {}", request.program_id)))?;
        let enrollments: Vec<(String, String)> = sqlx::query_as(
            "SELECT enrollment_id, affiliate_org_id FROM enrollments WHERE program_id = $1 \
             AND ($2 = '' OR enrollment_id = $2) ORDER BY enrollment_id",
        )
        .bind(&program.program_id)
        .bind(&request.enrollment_id)
        .fetch_all(&mut *conn)
        .await?;
        if enrollments.is_empty() && !request.enrollment_id.is_empty() {
            return Err(ApiError::not_found(format!("enrollment {}", request.enrollment_id)));
        }
        let mut quotes = Vec::new();
        for (enrollment_id, org) in enrollments {
            let balances = store::ledger::enrollment_balances(&mut conn, &program.program_id, &enrollment_id).await?;
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
                releases: Vec::new(),
            });
        }
        add_releases(&mut conn, &program, &mut quotes).await?;
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
        let mut tx = self.pool.begin().await?;
        lock_program(&mut tx, &request.program_id).await?;
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
            .await?
            .filter(|e| e.program_id == request.program_id)
            .ok_or_else(|| ApiError::not_found(format!("enrollment {}", request.enrollment_id)))?;
        let program = store::program(&mut tx, &enrollment.program_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("program {}", request.program_id)))?;
        let scope = Scope {
            program_id: program.program_id.clone(),
            enrollment_id: enrollment.enrollment_id.clone(),
            currency: program.currency.clone(),
        };
        let payable = store::ledger::balance_for_update(&mut tx, &scope, Account::Payable).await?;
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
        .await?;
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
        .await?;
        let item = payout_item(&mut tx, &request.payout_item_id)
            .await?
            .ok_or_else(ApiError::internal)?;
        tx.commit().await?;
        Ok(pb::PayoutItemReply {
            item: Some(item),
            duplicate: false,
        })
    }

    pub async fn post(&self, request: pb::PostPayoutRequest) -> Result<pb::PayoutItemReply, ApiError> {
        let mut tx = self.pool.begin().await?;
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
        .await?;
        settle_item(&mut tx, &item.payout_item_id, "posted", request.fee_minor).await?;
        let bump = store::StatsBump {
            paid_minor: item.gross_minor - request.fee_minor,
            ..Default::default()
        };
        store::bump_stats(&mut tx, &scope.program_id, &scope.enrollment_id, 0, &bump).await?;
        let item = locked_item(&mut tx, &item.payout_item_id).await?;
        tx.commit().await?;
        Ok(pb::PayoutItemReply {
            item: Some(item),
            duplicate: false,
        })
    }

    pub async fn void(&self, request: pb::VoidPayoutRequest) -> Result<pb::PayoutItemReply, ApiError> {
        let mut tx = self.pool.begin().await?;
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
        .await?;
        settle_item(&mut tx, &item.payout_item_id, "voided", 0).await?;
        let item = locked_item(&mut tx, &item.payout_item_id).await?;
        tx.commit().await?;
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
        let mut tx = self.pool.begin().await?;
        let item = locked_item(&mut tx, &request.payout_item_id).await?;
        let existing: Option<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT payout_item_id, amount_minor, settled_debt_minor, recovered_minor FROM transfer_reversals \
             WHERE reversal_id = $1",
        )
        .bind(&request.reversal_id)
        .fetch_optional(&mut *tx)
        .await?;
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
        let payable = store::ledger::balance_for_update(&mut tx, &scope, Account::Payable).await?;
        // The item row is locked (`locked_item`): the fee returned so far cannot move under us.
        let fee_returned: i64 =
            sqlx::query_scalar("SELECT fee_returned_minor FROM payout_items WHERE payout_item_id = $1")
                .bind(&item.payout_item_id)
                .fetch_one(&mut *tx)
                .await?;
        let posted = ledger::PostedItem {
            gross_minor: item.gross_minor,
            fee_minor: item.fee_minor,
            returned_minor: item.returned_minor,
            fee_returned_minor: fee_returned,
        };
        let reversal =
            ledger::transfer_reversal(&scope, payable, request.amount_minor, &posted).map_err(ledger_error)?;
        let rows = store::released_commissions(
            &mut tx,
            &scope.program_id,
            &scope.enrollment_id,
            &request.conversion_ids,
        )
        .await?;
        let mut states: Vec<_> = rows.iter().map(|r| r.state()).collect();
        ledger::allocate_recovery(&mut states, reversal.recovered_minor);
        for (row, state) in rows.iter().zip(&states) {
            if state.recovered_minor != row.recovered_minor {
                store::save_commission_state(&mut tx, &row.commission_id, state).await?;
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
        .await?;
        sqlx::query(
            "UPDATE payout_items SET returned_minor = returned_minor + $2, \
             fee_returned_minor = fee_returned_minor + $3 WHERE payout_item_id = $1",
        )
        .bind(&item.payout_item_id)
        .bind(request.amount_minor)
        .bind(reversal.fee_returned_minor)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO transfer_reversals (reversal_id, payout_item_id, amount_minor, fee_returned_minor, \
             settled_debt_minor, recovered_minor) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&request.reversal_id)
        .bind(&item.payout_item_id)
        .bind(request.amount_minor)
        .bind(reversal.fee_returned_minor)
        .bind(reversal.settled_debt_minor)
        .bind(reversal.recovered_minor)
        .execute(&mut *tx)
        .await?;
        let bump = store::StatsBump {
            paid_minor: -request.amount_minor,
            clawed_back_minor: reversal.recovered_minor,
            ..Default::default()
        };
        store::bump_stats(&mut tx, &scope.program_id, &scope.enrollment_id, 0, &bump).await?;
        tx.commit().await?;
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

/// Release days listed per quote, as in balances: a payout plan names when held money is paid.
const RELEASE_DAYS: usize = 50;

/// When the held commission of each quote becomes payable, by UTC day (all of a day's by its
/// latest release time), earliest first: a payout plan says when held money could be paid.
async fn add_releases(
    conn: &mut PgConnection,
    program: &store::ProgramRow,
    quotes: &mut [pb::PayableQuote],
) -> Result<(), ApiError> {
    let held: Vec<&str> = quotes
        .iter()
        .filter(|q| q.held_minor > 0)
        .map(|q| q.enrollment_id.as_str())
        .collect();
    if held.is_empty() {
        return Ok(());
    }
    let days: Vec<(String, chrono::DateTime<chrono::Utc>, i64)> = sqlx::query_as(
        "SELECT enrollment_id, max(release_at), sum(held_minor)::bigint FROM commissions \
         WHERE enrollment_id = ANY($1) AND program_id = $2 AND currency = $3 \
         AND released_at IS NULL AND held_minor > 0 \
         GROUP BY enrollment_id, (release_at AT TIME ZONE 'UTC')::date ORDER BY 1, 2",
    )
    .bind(&held)
    .bind(&program.program_id)
    .bind(&program.currency)
    .fetch_all(&mut *conn)
    .await?;
    for (enrollment_id, at, amount) in days {
        if let Some(quote) = quotes.iter_mut().find(|q| q.enrollment_id == enrollment_id)
            && quote.releases.len() < RELEASE_DAYS
        {
            quote.releases.push(pb::HeldRelease {
                at_micros: at.timestamp_micros(),
                amount_minor: amount,
            });
        }
    }
    Ok(())
}

/// The program's ledger lock, alone: taken before any balance row.
async fn lock_program(conn: &mut PgConnection, program_id: &str) -> Result<(), ApiError> {
    Ok(store::lock_programs(conn, &[(program_id, LedgerLock::Exclusive)]).await?)
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
    .await?;
    Ok(row.map(Into::into))
}

/// The payout item, with its program's ledger lock held (taking it again is harmless).
async fn locked_item(conn: &mut PgConnection, id: &str) -> Result<pb::PayoutItem, ApiError> {
    let item = payout_item(conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("payout item {id}")))?;
    lock_program(conn, &item.program_id).await?;
    Ok(item)
}

async fn settle_item(conn: &mut PgConnection, id: &str, status: &str, fee: i64) -> Result<(), ApiError> {
    sqlx::query("UPDATE payout_items SET status = $2, fee_minor = $3, settled_at = now() WHERE payout_item_id = $1")
        .bind(id)
        .bind(status)
        .bind(fee)
        .execute(conn)
        .await?;
    Ok(())
}
