//! The ledger export's read: a page of a program's postings by booking time, each with its
//! per-account changes and what it is about (commission, clawback, payout item).

use crate::domain::export::Movement;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// Up to `limit` postings of the program booked in `[from, to)` after `after` (booking time,
/// journal id), in that order.
pub async fn movements(
    conn: &mut PgConnection,
    program_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> Result<Vec<Movement>, sqlx::Error> {
    // A clawback's posting is keyed `clawback:<clawback>:<level>`: one per commission level.
    sqlx::query_as(
        "SELECT j.journal_id, j.posted_at, j.kind, j.enrollment_id, \
         COALESCE(en.affiliate_org_id, '') AS affiliate_org_id, x.currency, \
         x.held_minor, x.payable_minor, x.reserved_minor, x.paid_minor, x.fee_minor, x.expense_minor, \
         c.commission_id, c.conversion_id, c.level, c.amount_minor AS commission_amount_minor, c.recovered_minor, \
         c.release_at, c.released_at, \
         (j.memo ->> 'early_release') IS NOT NULL AS early_release, \
         COALESCE(cb.reason, j.memo ->> 'reason') AS reason, \
         pi.payout_item_id, pi.status AS payout_status \
         FROM journal j \
         CROSS JOIN LATERAL ( \
             SELECT COALESCE(min(e.currency), '') AS currency, \
             COALESCE(sum(e.amount_minor) FILTER (WHERE e.account = 'held'), 0)::bigint AS held_minor, \
             COALESCE(sum(e.amount_minor) FILTER (WHERE e.account = 'payable'), 0)::bigint AS payable_minor, \
             COALESCE(sum(e.amount_minor) FILTER (WHERE e.account = 'reserved'), 0)::bigint AS reserved_minor, \
             COALESCE(sum(e.amount_minor) FILTER (WHERE e.account = 'paid'), 0)::bigint AS paid_minor, \
             COALESCE(sum(e.amount_minor) FILTER (WHERE e.account = 'fee'), 0)::bigint AS fee_minor, \
             COALESCE(sum(e.amount_minor) FILTER (WHERE e.account = 'expense'), 0)::bigint AS expense_minor \
             FROM entries e WHERE e.journal_id = j.journal_id) x \
         LEFT JOIN enrollments en ON en.enrollment_id = j.enrollment_id \
         LEFT JOIN clawbacks cb ON j.kind = 'clawback' AND cb.clawback_id = j.reference \
         LEFT JOIN transfer_reversals tr ON j.kind = 'transfer_reversal' AND tr.reversal_id = j.reference \
         LEFT JOIN commissions c ON c.commission_id = CASE \
             WHEN j.kind IN ('accrue', 'release') THEN j.reference \
             WHEN j.kind = 'clawback' THEN (SELECT k.commission_id FROM commissions k \
                 WHERE k.conversion_id = cb.conversion_id AND k.level::text = split_part(j.idem_key, ':', 3)) \
             END \
         LEFT JOIN payout_items pi ON pi.payout_item_id = CASE \
             WHEN j.kind IN ('reserve', 'post', 'void') THEN j.reference \
             WHEN j.kind = 'transfer_reversal' THEN tr.payout_item_id \
             END \
         WHERE j.program_id = $1 AND j.posted_at >= $2 AND j.posted_at < $3 \
         AND ($4::timestamptz IS NULL OR (j.posted_at, j.journal_id) > ($4, $5)) \
         ORDER BY j.posted_at, j.journal_id \
         LIMIT $6",
    )
    .bind(program_id)
    .bind(from)
    .bind(to)
    .bind(after.map(|(at, _)| at))
    .bind(after.map(|(_, id)| id).unwrap_or(0))
    .bind(limit)
    .fetch_all(conn)
    .await
}
