//! Writing postings: a journal row (unique idempotency key), its entries, and the balance
//! projection, all in the caller's transaction. Entries are never updated or deleted (a
//! trigger refuses it) and the database checks at commit that each posting balances.

use crate::domain::ledger::{Account, AccountKey, Posting, Scope};
use sqlx::PgConnection;
use std::collections::{BTreeMap, HashMap, HashSet};

/// What a posting is about: its idempotency key and the id it references.
pub struct PostingRef<'a> {
    pub idem_key: &'a str,
    pub reference: &'a str,
}

/// A posting to record, with its idempotency key and the id it references.
#[derive(Debug, Clone)]
pub struct PendingPosting {
    pub scope: Scope,
    pub idem_key: String,
    pub reference: String,
    pub posting: Posting,
    /// Who and why, as JSON, for a posting a person asked for (an owner's early release); kept
    /// on its journal row.
    pub memo: Option<String>,
}

/// Records `posting` unless a posting with the same key exists. Returns whether it was recorded.
/// An empty posting records nothing.
pub async fn record(
    conn: &mut PgConnection,
    scope: &Scope,
    at: PostingRef<'_>,
    posting: &Posting,
) -> Result<bool, sqlx::Error> {
    let pending = PendingPosting {
        scope: scope.clone(),
        idem_key: at.idem_key.to_owned(),
        reference: at.reference.to_owned(),
        posting: posting.clone(),
        memo: None,
    };
    Ok(!record_all(conn, std::slice::from_ref(&pending)).await?.is_empty())
}

/// Records every posting whose key is new, with one statement per table: the journal rows, their
/// entries, and the balance projection (see [`append`] and [`apply_balances`]). Returns the keys
/// recorded.
pub async fn record_all(conn: &mut PgConnection, postings: &[PendingPosting]) -> Result<HashSet<String>, sqlx::Error> {
    let appended = append(conn, postings).await?;
    apply_balances(conn, &appended.balance_deltas).await?;
    Ok(appended.keys)
}

/// What [`append`] recorded: the keys, and what they add to each account's balance.
#[derive(Debug, Default)]
pub struct Appended {
    pub keys: HashSet<String>,
    pub balance_deltas: BTreeMap<AccountKey, i64>,
}

/// Appends the journal rows and entries of every posting whose key is new (one statement each),
/// leaving the balance projection to [`apply_balances`]: appending locks no shared row, so a
/// caller can append first and hold the balance rows only briefly. Empty postings and keys
/// already in the journal (or repeated in `postings`) record nothing.
pub async fn append(conn: &mut PgConnection, postings: &[PendingPosting]) -> Result<Appended, sqlx::Error> {
    if let Some(unbalanced) = postings.iter().find(|p| !p.posting.is_balanced()) {
        return Err(sqlx::Error::Protocol(format!(
            "refusing unbalanced posting {}",
            unbalanced.idem_key
        )));
    }
    let postings: Vec<&PendingPosting> = postings.iter().filter(|p| !p.posting.is_empty()).collect();
    if postings.is_empty() {
        return Ok(Appended::default());
    }
    let mut journal = Columns::default();
    for p in &postings {
        journal.push(&p.idem_key, p.posting.kind, &p.scope, &p.reference);
    }
    let memos: Vec<Option<&str>> = postings.iter().map(|p| p.memo.as_deref()).collect();
    let recorded: HashMap<String, i64> = sqlx::query_as(
        "INSERT INTO journal (idem_key, kind, program_id, enrollment_id, reference, memo) \
         SELECT key, kind, program, enrollment, reference, memo::jsonb \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
           AS t(key, kind, program, enrollment, reference, memo) \
         ON CONFLICT (idem_key) DO NOTHING RETURNING idem_key, journal_id",
    )
    .bind(&journal.keys)
    .bind(&journal.kinds)
    .bind(&journal.programs)
    .bind(&journal.enrollments)
    .bind(&journal.references)
    .bind(&memos)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    if recorded.is_empty() {
        return Ok(Appended::default());
    }

    let mut entries = EntryColumns::default();
    let mut per_account: BTreeMap<AccountKey, i64> = BTreeMap::new();
    let mut done = HashSet::new();
    for p in &postings {
        let Some(journal_id) = recorded.get(&p.idem_key) else {
            continue;
        };
        if !done.insert(p.idem_key.clone()) {
            continue; // the same key twice in `postings`: the first one was recorded
        }
        for entry in &p.posting.entries {
            entries.journal_ids.push(*journal_id);
            entries.push(&entry.key, entry.amount_minor);
            *per_account.entry(entry.key.clone()).or_default() += entry.amount_minor;
        }
    }
    sqlx::query(
        "INSERT INTO entries (journal_id, program_id, enrollment_id, account, currency, amount_minor) \
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[])",
    )
    .bind(&entries.journal_ids)
    .bind(&entries.programs)
    .bind(&entries.enrollments)
    .bind(&entries.accounts)
    .bind(&entries.currencies)
    .bind(&entries.amounts)
    .execute(&mut *conn)
    .await?;
    Ok(Appended {
        keys: done,
        balance_deltas: per_account,
    })
}

/// Adds `deltas` to the balance rows, each row written once, in key order (a stable lock order
/// across concurrent writers). Zero deltas too: an account a posting touched has a row, however
/// the batch nets out.
pub async fn apply_balances(conn: &mut PgConnection, deltas: &BTreeMap<AccountKey, i64>) -> Result<(), sqlx::Error> {
    if deltas.is_empty() {
        return Ok(());
    }
    let mut balances = EntryColumns::default();
    for (key, amount) in deltas {
        balances.push(key, *amount);
    }
    sqlx::query(
        "INSERT INTO balances (program_id, enrollment_id, account, currency, balance_minor) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
         ON CONFLICT (program_id, enrollment_id, account, currency) \
         DO UPDATE SET balance_minor = balances.balance_minor + EXCLUDED.balance_minor",
    )
    .bind(&balances.programs)
    .bind(&balances.enrollments)
    .bind(&balances.accounts)
    .bind(&balances.currencies)
    .bind(&balances.amounts)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Journal rows as the columns `UNNEST` takes.
#[derive(Default)]
struct Columns<'a> {
    keys: Vec<&'a str>,
    kinds: Vec<&'a str>,
    programs: Vec<&'a str>,
    enrollments: Vec<&'a str>,
    references: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, key: &'a str, kind: &'a str, scope: &'a Scope, reference: &'a str) {
        self.keys.push(key);
        self.kinds.push(kind);
        self.programs.push(&scope.program_id);
        self.enrollments.push(&scope.enrollment_id);
        self.references.push(reference);
    }
}

/// Entries (or balance deltas) as the columns `UNNEST` takes.
#[derive(Default)]
struct EntryColumns<'a> {
    journal_ids: Vec<i64>,
    programs: Vec<&'a str>,
    enrollments: Vec<&'a str>,
    accounts: Vec<&'a str>,
    currencies: Vec<&'a str>,
    amounts: Vec<i64>,
}

impl<'a> EntryColumns<'a> {
    fn push(&mut self, key: &'a AccountKey, amount_minor: i64) {
        self.programs.push(&key.program_id);
        self.enrollments.push(&key.enrollment_id);
        self.accounts.push(key.account.as_str());
        self.currencies.push(&key.currency);
        self.amounts.push(amount_minor);
    }
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
