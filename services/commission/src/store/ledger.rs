//! Writing postings: a journal row (unique idempotency key), its entries, and the balance
//! projection, all in the caller's transaction. Entries are never updated or deleted (a
//! trigger refuses it) and the database checks at commit that each posting balances.

use crate::domain::ledger::{Account, AccountKey, Posting, Scope};
use sqlx::PgConnection;
use std::collections::BTreeMap;

/// What a posting is about: its idempotency key and the id it references.
pub struct PostingRef<'a> {
    pub idem_key: &'a str,
    pub reference: &'a str,
}

/// Records `posting` unless a posting with the same key exists. Returns whether it was recorded.
/// An empty posting records nothing.
pub async fn record(
    conn: &mut PgConnection,
    scope: &Scope,
    at: PostingRef<'_>,
    posting: &Posting,
) -> Result<bool, sqlx::Error> {
    if posting.is_empty() {
        return Ok(false);
    }
    if !posting.is_balanced() {
        return Err(sqlx::Error::Protocol(format!(
            "refusing unbalanced posting {}",
            at.idem_key
        )));
    }
    let journal: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO journal (idem_key, kind, program_id, enrollment_id, reference) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (idem_key) DO NOTHING RETURNING journal_id",
    )
    .bind(at.idem_key)
    .bind(posting.kind)
    .bind(&scope.program_id)
    .bind(&scope.enrollment_id)
    .bind(at.reference)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((journal_id,)) = journal else {
        return Ok(false);
    };
    // Sum per account first (one balance row touched once), in key order (a stable lock order).
    let mut per_account: BTreeMap<&AccountKey, i64> = BTreeMap::new();
    for entry in &posting.entries {
        *per_account.entry(&entry.key).or_default() += entry.amount_minor;
    }
    let mut programs = Vec::new();
    let mut enrollments = Vec::new();
    let mut accounts = Vec::new();
    let mut currencies = Vec::new();
    let mut amounts = Vec::new();
    for entry in &posting.entries {
        programs.push(entry.key.program_id.as_str());
        enrollments.push(entry.key.enrollment_id.as_str());
        accounts.push(entry.key.account.as_str());
        currencies.push(entry.key.currency.as_str());
        amounts.push(entry.amount_minor);
    }
    sqlx::query(
        "INSERT INTO entries (journal_id, program_id, enrollment_id, account, currency, amount_minor) \
         SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[])",
    )
    .bind(journal_id)
    .bind(&programs)
    .bind(&enrollments)
    .bind(&accounts)
    .bind(&currencies)
    .bind(&amounts)
    .execute(&mut *conn)
    .await?;
    let (mut programs, mut enrollments, mut accounts, mut currencies, mut amounts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (key, amount) in per_account {
        programs.push(key.program_id.as_str());
        enrollments.push(key.enrollment_id.as_str());
        accounts.push(key.account.as_str());
        currencies.push(key.currency.as_str());
        amounts.push(amount);
    }
    sqlx::query(
        "INSERT INTO balances (program_id, enrollment_id, account, currency, balance_minor) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
         ON CONFLICT (program_id, enrollment_id, account, currency) \
         DO UPDATE SET balance_minor = balances.balance_minor + EXCLUDED.balance_minor",
    )
    .bind(&programs)
    .bind(&enrollments)
    .bind(&accounts)
    .bind(&currencies)
    .bind(&amounts)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// One account's balance, locked for the rest of the transaction.
pub async fn balance_for_update(conn: &mut PgConnection, scope: &Scope, account: Account) -> Result<i64, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT balance_minor FROM balances WHERE program_id = $1 AND enrollment_id = $2 AND account = $3 \
         AND currency = $4 FOR UPDATE",
    )
    .bind(&scope.program_id)
    .bind(&scope.enrollment_id)
    .bind(account.as_str())
    .bind(&scope.currency)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| r.0).unwrap_or(0))
}

/// Every account balance of one enrollment (all currencies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnrollmentBalances {
    pub currency: String,
    pub held: i64,
    pub payable: i64,
    pub reserved: i64,
    pub paid: i64,
    pub expense: i64,
    pub fee: i64,
}

pub async fn enrollment_balances(
    conn: &mut PgConnection,
    program_id: &str,
    enrollment_id: &str,
) -> Result<Vec<EnrollmentBalances>, sqlx::Error> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT currency, account, balance_minor FROM balances WHERE program_id = $1 AND enrollment_id = $2 \
         ORDER BY currency",
    )
    .bind(program_id)
    .bind(enrollment_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut out: Vec<EnrollmentBalances> = Vec::new();
    for (currency, account, amount) in rows {
        if out.last().is_none_or(|b| b.currency != currency) {
            out.push(EnrollmentBalances {
                currency: currency.clone(),
                ..Default::default()
            });
        }
        if let Some(b) = out.last_mut() {
            match Account::parse(&account) {
                Some(Account::Held) => b.held = amount,
                Some(Account::Payable) => b.payable = amount,
                Some(Account::Reserved) => b.reserved = amount,
                Some(Account::Paid) => b.paid = amount,
                Some(Account::Expense) => b.expense = amount,
                Some(Account::Fee) => b.fee = amount,
                None => {}
            }
        }
    }
    Ok(out)
}
