//! `amba ledger verify`: rebuilds every balance from the entries and checks conservation.
//!
//! Checks, each reported as a problem line:
//! - every posting balances per currency (also enforced by a constraint trigger at commit);
//! - the stored balances equal the sums of entries, account by account;
//! - all accounts of a currency sum to zero (money is neither created nor lost);
//! - the commission sub-ledger agrees with the ledger: `held` = what commissions still hold,
//!   `reserved` = the gross of payout items in flight, `paid` = the net of posted items less what
//!   transfer reversals returned, `fee` = their fee less the fee share the reversals returned, no
//!   commission recovered beyond its amount.

use sqlx::PgPool;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub journals: i64,
    pub entries: i64,
    pub accounts: i64,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies the ledger behind `database_url` (the commission schema).
pub async fn verify_database(database_url: &str) -> Result<VerifyReport, sqlx::Error> {
    let pool = amba_bus::store::connect(database_url, crate::SCHEMA, 2).await?;
    let report = verify(&pool).await;
    pool.close().await;
    report
}

pub async fn verify(pool: &PgPool) -> Result<VerifyReport, sqlx::Error> {
    let mut report = VerifyReport::default();
    let (journals, entries): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM journal), (SELECT count(*) FROM entries)")
            .fetch_one(pool)
            .await?;
    report.journals = journals;
    report.entries = entries;

    let unbalanced: Vec<(i64, String, String, i64)> = sqlx::query_as(
        "SELECT e.journal_id, j.idem_key, e.currency, sum(e.amount_minor)::bigint FROM entries e \
         JOIN journal j ON j.journal_id = e.journal_id GROUP BY e.journal_id, j.idem_key, e.currency \
         HAVING sum(e.amount_minor) <> 0",
    )
    .fetch_all(pool)
    .await?;
    for (id, key, currency, gap) in unbalanced {
        report.problems.push(format!(
            "posting {id} ({key}) does not balance in {currency}: off by {gap}"
        ));
    }
    let empty: Vec<(i64, String)> = sqlx::query_as(
        "SELECT j.journal_id, j.idem_key FROM journal j WHERE NOT EXISTS \
         (SELECT 1 FROM entries e WHERE e.journal_id = j.journal_id)",
    )
    .fetch_all(pool)
    .await?;
    for (id, key) in empty {
        report.problems.push(format!("posting {id} ({key}) has no entries"));
    }
    let orphans: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT e.journal_id, count(*) FROM entries e WHERE NOT EXISTS \
         (SELECT 1 FROM journal j WHERE j.journal_id = e.journal_id) GROUP BY e.journal_id",
    )
    .fetch_all(pool)
    .await?;
    for (id, count) in orphans {
        report.problems.push(format!(
            "{count} entries name posting {id}, which is not in the journal"
        ));
    }

    let differences: Vec<(String, String, String, String, i64, i64)> = sqlx::query_as(
        "WITH rebuilt AS (SELECT program_id, enrollment_id, account, currency, sum(amount_minor)::bigint AS amount \
           FROM entries GROUP BY 1, 2, 3, 4) \
         SELECT COALESCE(r.program_id, b.program_id), COALESCE(r.enrollment_id, b.enrollment_id), \
                COALESCE(r.account, b.account), COALESCE(r.currency, b.currency), \
                COALESCE(b.balance_minor, 0), COALESCE(r.amount, 0) \
         FROM rebuilt r FULL OUTER JOIN balances b ON b.program_id = r.program_id \
           AND b.enrollment_id = r.enrollment_id AND b.account = r.account AND b.currency = r.currency \
         WHERE COALESCE(b.balance_minor, 0) <> COALESCE(r.amount, 0)",
    )
    .fetch_all(pool)
    .await?;
    for (program, enrollment, account, currency, stored, rebuilt) in differences {
        report.problems.push(format!(
            "balance {program}/{enrollment}/{account}/{currency}: stored {stored}, entries say {rebuilt}"
        ));
    }
    let (accounts,): (i64,) = sqlx::query_as("SELECT count(*) FROM balances").fetch_one(pool).await?;
    report.accounts = accounts;

    let totals: Vec<(String, i64)> = sqlx::query_as(
        "SELECT currency, sum(amount_minor)::bigint FROM entries GROUP BY currency HAVING sum(amount_minor) <> 0",
    )
    .fetch_all(pool)
    .await?;
    for (currency, gap) in totals {
        report.problems.push(format!(
            "the ledger does not conserve {currency}: accounts sum to {gap}"
        ));
    }

    let held: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "WITH c AS (SELECT program_id, enrollment_id, currency, sum(held_minor)::bigint AS held FROM commissions \
           GROUP BY 1, 2, 3), \
         b AS (SELECT program_id, enrollment_id, currency, balance_minor FROM balances WHERE account = 'held') \
         SELECT COALESCE(c.program_id, b.program_id), COALESCE(c.enrollment_id, b.enrollment_id), \
                COALESCE(c.held, 0), COALESCE(b.balance_minor, 0) \
         FROM c FULL OUTER JOIN b ON b.program_id = c.program_id AND b.enrollment_id = c.enrollment_id \
           AND b.currency = c.currency WHERE COALESCE(c.held, 0) <> COALESCE(b.balance_minor, 0)",
    )
    .fetch_all(pool)
    .await?;
    for (program, enrollment, commissions, balance) in held {
        report.problems.push(format!(
            "held {program}/{enrollment}: commissions hold {commissions}, the ledger {balance}"
        ));
    }
    let reserved: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "WITH i AS (SELECT program_id, enrollment_id, currency, sum(gross_minor)::bigint AS gross FROM payout_items \
           WHERE status = 'reserved' GROUP BY 1, 2, 3), \
         b AS (SELECT program_id, enrollment_id, currency, balance_minor FROM balances WHERE account = 'reserved') \
         SELECT COALESCE(i.program_id, b.program_id), COALESCE(i.enrollment_id, b.enrollment_id), \
                COALESCE(i.gross, 0), COALESCE(b.balance_minor, 0) \
         FROM i FULL OUTER JOIN b ON b.program_id = i.program_id AND b.enrollment_id = i.enrollment_id \
           AND b.currency = i.currency WHERE COALESCE(i.gross, 0) <> COALESCE(b.balance_minor, 0)",
    )
    .fetch_all(pool)
    .await?;
    for (program, enrollment, items, balance) in reserved {
        report.problems.push(format!(
            "reserved {program}/{enrollment}: payout items in flight {items}, the ledger {balance}"
        ));
    }
    // Only `post` and `transfer_reversal` touch `paid` and `fee`.
    let settled: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
        "WITH i AS (SELECT program_id, enrollment_id, currency, \
             sum(gross_minor - fee_minor - returned_minor)::bigint AS paid, \
             sum(fee_minor - fee_returned_minor)::bigint AS fee FROM payout_items \
           WHERE status = 'posted' GROUP BY 1, 2, 3), \
         items AS (SELECT program_id, enrollment_id, currency, 'paid' AS account, paid AS amount FROM i \
           UNION ALL SELECT program_id, enrollment_id, currency, 'fee', fee FROM i), \
         b AS (SELECT program_id, enrollment_id, account, currency, balance_minor FROM balances \
           WHERE account IN ('paid', 'fee')) \
         SELECT COALESCE(items.program_id, b.program_id), COALESCE(items.enrollment_id, b.enrollment_id), \
                COALESCE(items.account, b.account), COALESCE(items.amount, 0), COALESCE(b.balance_minor, 0) \
         FROM items FULL OUTER JOIN b ON b.program_id = items.program_id \
           AND b.enrollment_id = items.enrollment_id AND b.account = items.account \
           AND b.currency = items.currency \
         WHERE COALESCE(items.amount, 0) <> COALESCE(b.balance_minor, 0)",
    )
    .fetch_all(pool)
    .await?;
    for (program, enrollment, account, items, balance) in settled {
        report.problems.push(format!(
            "{account} {program}/{enrollment}: posted payout items say {items}, the ledger {balance}"
        ));
    }
    let over: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT commission_id, amount_minor, recovered_minor FROM commissions WHERE recovered_minor > amount_minor \
         OR recovered_minor < 0",
    )
    .fetch_all(pool)
    .await?;
    for (id, amount, recovered) in over {
        report
            .problems
            .push(format!("commission {id}: recovered {recovered} of {amount}"));
    }
    Ok(report)
}
