//! The payout schema: the programs read model, payout accounts, runs, items and Stripe events.

use crate::domain::status::{FundingStatus, ItemStatus};
use amba_proto::wire as pb;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use std::collections::HashMap;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProgramRow {
    pub program_id: String,
    pub owner_org_id: String,
    pub name: String,
    pub currency: String,
    pub status: String,
    pub payout_schedule: String,
}

/// Applies a program event; an older snapshot never overwrites a newer one.
pub async fn upsert_program(conn: &mut PgConnection, p: &pb::Program) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO programs_view (program_id, owner_org_id, name, currency, status, payout_schedule, version_micros, \
         version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (program_id) DO UPDATE SET \
         owner_org_id = EXCLUDED.owner_org_id, name = EXCLUDED.name, currency = EXCLUDED.currency, \
         status = EXCLUDED.status, payout_schedule = EXCLUDED.payout_schedule, \
         version_micros = EXCLUDED.version_micros, version = EXCLUDED.version \
         WHERE (programs_view.version, programs_view.version_micros) <= (EXCLUDED.version, EXCLUDED.version_micros)",
    )
    .bind(&p.program_id)
    .bind(&p.owner_org_id)
    .bind(&p.name)
    .bind(&p.currency)
    .bind(&p.status)
    .bind(&p.payout_schedule)
    .bind(p.updated_at_micros)
    .bind(i64::try_from(p.version).unwrap_or(i64::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

const PROGRAM: &str = "SELECT program_id, owner_org_id, name, currency, status, payout_schedule FROM programs_view";

pub async fn program(conn: &mut PgConnection, program_id: &str) -> Result<Option<ProgramRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{PROGRAM} WHERE program_id = $1")))
        .bind(program_id)
        .fetch_optional(conn)
        .await
}

/// Active programs with a weekly or monthly schedule.
pub async fn scheduled_programs(conn: &mut PgConnection) -> Result<Vec<ProgramRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{PROGRAM} WHERE payout_schedule <> 'manual' AND status = 'active' ORDER BY program_id"
    )))
    .fetch_all(conn)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRow {
    pub payout_account_id: String,
    pub org_id: String,
    pub stripe_account_id: Option<String>,
    pub country: String,
    pub transfers_active: bool,
    pub payouts_enabled: bool,
    pub created_at: DateTime<Utc>,
}

impl AccountRow {
    pub fn ready(&self) -> bool {
        self.stripe_account_id.is_some() && self.transfers_active
    }

    pub fn to_proto(&self) -> pb::PayoutAccount {
        pb::PayoutAccount {
            payout_account_id: self.payout_account_id.clone(),
            org_id: self.org_id.clone(),
            stripe_account_id: self.stripe_account_id.clone().unwrap_or_default(),
            country: self.country.clone(),
            status: if self.ready() { "ready" } else { "onboarding" }.to_owned(),
            transfers_active: self.transfers_active,
            payouts_enabled: self.payouts_enabled,
            created_at_micros: self.created_at.timestamp_micros(),
        }
    }
}

const ACCOUNT_COLUMNS: &str =
    "payout_account_id, org_id, stripe_account_id, country, transfers_active, payouts_enabled, created_at";
const ACCOUNT: &str = "SELECT payout_account_id, org_id, stripe_account_id, country, transfers_active, payouts_enabled, \
    created_at FROM payout_accounts";

pub async fn account_of_org(conn: &mut PgConnection, org_id: &str) -> Result<Option<AccountRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{ACCOUNT} WHERE org_id = $1")))
        .bind(org_id)
        .fetch_optional(conn)
        .await
}

/// Locks the org's account row (creating it first if missing) so one Stripe account is made per org.
pub async fn lock_account(
    conn: &mut PgConnection,
    new_id: &str,
    org_id: &str,
    country: &str,
) -> Result<AccountRow, sqlx::Error> {
    sqlx::query("INSERT INTO payout_accounts (payout_account_id, org_id, country) VALUES ($1, $2, $3) ON CONFLICT (org_id) DO NOTHING")
        .bind(new_id)
        .bind(org_id)
        .bind(country)
        .execute(&mut *conn)
        .await?;
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{ACCOUNT} WHERE org_id = $1 FOR UPDATE")))
        .bind(org_id)
        .fetch_one(conn)
        .await
}

pub async fn set_stripe_account(
    conn: &mut PgConnection,
    payout_account_id: &str,
    stripe_account_id: &str,
    transfers_active: bool,
    payouts_enabled: bool,
) -> Result<AccountRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE payout_accounts SET stripe_account_id = $2, transfers_active = $3, payouts_enabled = $4 \
         WHERE payout_account_id = $1 RETURNING {ACCOUNT_COLUMNS}"
    )))
    .bind(payout_account_id)
    .bind(stripe_account_id)
    .bind(transfers_active)
    .bind(payouts_enabled)
    .fetch_one(conn)
    .await
}

/// Applies `account.updated`; returns the account before and after (None: not ours).
pub async fn update_readiness(
    conn: &mut PgConnection,
    stripe_account_id: &str,
    transfers_active: bool,
    payouts_enabled: bool,
) -> Result<Option<(AccountRow, AccountRow)>, sqlx::Error> {
    let before: Option<AccountRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{ACCOUNT} WHERE stripe_account_id = $1 FOR UPDATE"
    )))
    .bind(stripe_account_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(before) = before else { return Ok(None) };
    let after = set_stripe_account(
        conn,
        &before.payout_account_id,
        stripe_account_id,
        transfers_active,
        payouts_enabled,
    )
    .await?;
    Ok(Some((before, after)))
}

pub async fn account_of_stripe(
    conn: &mut PgConnection,
    stripe_account_id: &str,
) -> Result<Option<AccountRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{ACCOUNT} WHERE stripe_account_id = $1")))
        .bind(stripe_account_id)
        .fetch_optional(conn)
        .await
}

pub async fn accounts_of_orgs(
    conn: &mut PgConnection,
    orgs: &[String],
) -> Result<HashMap<String, AccountRow>, sqlx::Error> {
    let rows: Vec<AccountRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{ACCOUNT} WHERE org_id = ANY($1)")))
        .bind(orgs)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(|a| (a.org_id.clone(), a)).collect())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRow {
    pub payout_run_id: String,
    pub program_id: String,
    pub trigger: String,
    pub period: Option<String>,
    pub currency: String,
    pub idempotency_key: String,
    pub created_at: DateTime<Utc>,
    #[sqlx(flatten)]
    pub funding: RunFunding,
}

impl RunRow {
    /// The run as recorded, with `items` (all of them, or none when the caller pages them).
    pub fn to_proto(&self, items: &[ItemRow]) -> pb::PayoutRun {
        pb::PayoutRun {
            payout_run_id: self.payout_run_id.clone(),
            program_id: self.program_id.clone(),
            dry_run: false,
            trigger: self.trigger.clone(),
            period: self.period.clone().unwrap_or_default(),
            currency: self.currency.clone(),
            idempotency_key: self.idempotency_key.clone(),
            items: items.iter().map(ItemRow::to_proto).collect(),
            created_at_micros: self.created_at.timestamp_micros(),
            funding: Some(self.funding.to_proto()),
            funding_required_minor: self.funding.funding_minor,
            items_total: u32::try_from(items.len()).unwrap_or(u32::MAX),
            items_next_cursor: String::new(),
            outcome: "recorded".into(),
            ..Default::default()
        }
    }
}

/// A run's charge (see migrations/0003_funding.sql for the states).
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct RunFunding {
    pub owner_org_id: Option<String>,
    #[sqlx(try_from = "String")]
    pub funding_status: FundingStatus,
    pub funding_minor: i64,
    pub funding_key: Option<String>,
    pub stripe_customer_id: Option<String>,
    pub payment_method_id: Option<String>,
    pub payment_intent_id: Option<String>,
    pub charge_id: Option<String>,
    pub funding_code: Option<String>,
    pub decline_code: Option<String>,
    pub funding_message: Option<String>,
    /// Charged but not paid out (items refused after the charge), returned to the owner.
    pub refunded_minor: i64,
    pub refund_id: Option<String>,
    /// Every item is final and the unused part (if any) refunded.
    pub funding_settled: bool,
}

impl RunFunding {
    /// A new run's funding, before anything is reserved: what it will charge, and with which key.
    pub fn new(owner_org_id: &str, funding: &FundingRow, run_id: &str) -> RunFunding {
        RunFunding {
            owner_org_id: Some(owner_org_id.to_owned()),
            funding_status: FundingStatus::Reserving,
            funding_key: Some(format!("payout_run:{run_id}:charge")),
            stripe_customer_id: funding.stripe_customer_id.clone(),
            payment_method_id: funding.payment_method_id.clone(),
            ..RunFunding::default()
        }
    }

    pub fn to_proto(&self) -> pb::PayoutFunding {
        pb::PayoutFunding {
            status: self.funding_status.as_str().to_owned(),
            amount_minor: self.funding_minor,
            payment_intent_id: self.payment_intent_id.clone().unwrap_or_default(),
            charge_id: self.charge_id.clone().unwrap_or_default(),
            code: self.funding_code.clone().unwrap_or_default(),
            decline_code: self.decline_code.clone().unwrap_or_default(),
            message: self.funding_message.clone().unwrap_or_default(),
            refunded_minor: self.refunded_minor,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ItemRow {
    pub payout_item_id: String,
    pub payout_run_id: String,
    pub program_id: String,
    pub enrollment_id: String,
    pub affiliate_org_id: String,
    pub currency: String,
    pub gross_minor: i64,
    pub fee_minor: i64,
    pub debt_minor: i64,
    pub net_minor: i64,
    #[sqlx(try_from = "String")]
    pub status: ItemStatus,
    pub reason: Option<String>,
    pub stripe_account_id: Option<String>,
    pub stripe_transfer_id: Option<String>,
    /// Whether a transfer was ever asked for (then Stripe is searched before sending again).
    pub transfer_attempted: bool,
    /// The run's id (the charge's group); `None` for items of runs made before funding, whose
    /// transfers were grouped by the item id.
    pub transfer_group: Option<String>,
}

impl ItemRow {
    pub fn group(&self) -> &str {
        self.transfer_group.as_deref().unwrap_or(&self.payout_item_id)
    }

    pub fn to_proto(&self) -> pb::PayoutRunItem {
        pb::PayoutRunItem {
            payout_item_id: self.payout_item_id.clone(),
            enrollment_id: self.enrollment_id.clone(),
            affiliate_org_id: self.affiliate_org_id.clone(),
            gross_minor: self.gross_minor,
            fee_minor: self.fee_minor,
            debt_minor: self.debt_minor,
            net_minor: self.net_minor,
            status: self.status.as_str().to_owned(),
            reason: self.reason.clone().unwrap_or_default(),
            stripe_transfer_id: self.stripe_transfer_id.clone().unwrap_or_default(),
            ..Default::default()
        }
    }
}

const RUN: &str = "SELECT payout_run_id, program_id, trigger, period, currency, idempotency_key, created_at, \
    owner_org_id, funding_status, funding_minor, funding_key, stripe_customer_id, payment_method_id, payment_intent_id, \
    charge_id, funding_code, decline_code, funding_message, refunded_minor, refund_id, funding_settled FROM payout_runs";
pub const ITEM: &str = "SELECT payout_item_id, payout_run_id, program_id, enrollment_id, affiliate_org_id, currency, \
    gross_minor, fee_minor, debt_minor, net_minor, status, reason, stripe_account_id, stripe_transfer_id, \
    transfer_attempted, transfer_group FROM payout_items";

pub async fn run_by_key(conn: &mut PgConnection, program_id: &str, key: &str) -> Result<Option<RunRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{RUN} WHERE program_id = $1 AND idempotency_key = $2"
    )))
    .bind(program_id)
    .bind(key)
    .fetch_optional(conn)
    .await
}

/// Inserts a run; `false` when its key (or scheduled period) was taken by a concurrent one.
pub async fn insert_run(conn: &mut PgConnection, run: &RunRow) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO payout_runs (payout_run_id, program_id, trigger, period, currency, idempotency_key, created_at, \
         owner_org_id, funding_status, funding_key, stripe_customer_id, payment_method_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING",
    )
    .bind(&run.payout_run_id)
    .bind(&run.program_id)
    .bind(&run.trigger)
    .bind(&run.period)
    .bind(&run.currency)
    .bind(&run.idempotency_key)
    .bind(run.created_at)
    .bind(&run.funding.owner_org_id)
    .bind(run.funding.funding_status.as_str())
    .bind(&run.funding.funding_key)
    .bind(&run.funding.stripe_customer_id)
    .bind(&run.funding.payment_method_id)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

pub async fn insert_items(conn: &mut PgConnection, items: &[ItemRow]) -> Result<(), sqlx::Error> {
    for item in items {
        sqlx::query(
            "INSERT INTO payout_items (payout_item_id, payout_run_id, program_id, enrollment_id, affiliate_org_id, currency, \
             gross_minor, fee_minor, debt_minor, net_minor, status, reason, stripe_account_id, transfer_group) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&item.payout_item_id)
        .bind(&item.payout_run_id)
        .bind(&item.program_id)
        .bind(&item.enrollment_id)
        .bind(&item.affiliate_org_id)
        .bind(&item.currency)
        .bind(item.gross_minor)
        .bind(item.fee_minor)
        .bind(item.debt_minor)
        .bind(item.net_minor)
        .bind(item.status.as_str())
        .bind(&item.reason)
        .bind(&item.stripe_account_id)
        .bind(&item.transfer_group)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub async fn items_of_run(conn: &mut PgConnection, run_id: &str) -> Result<Vec<ItemRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{ITEM} WHERE payout_run_id = $1 ORDER BY payout_item_id"
    )))
    .bind(run_id)
    .fetch_all(conn)
    .await
}

/// One page of a run's items after the keyset cursor `after`, in item id order.
pub async fn items_page(
    conn: &mut PgConnection,
    run_id: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ItemRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{ITEM} WHERE payout_run_id = $1 AND ($2::text IS NULL OR payout_item_id > $2) ORDER BY payout_item_id LIMIT $3"
    )))
    .bind(run_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// How many items a run has.
pub async fn item_count(conn: &mut PgConnection, run_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM payout_items WHERE payout_run_id = $1")
        .bind(run_id)
        .fetch_one(conn)
        .await
}

pub async fn item(conn: &mut PgConnection, item_id: &str) -> Result<Option<ItemRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{ITEM} WHERE payout_item_id = $1")))
        .bind(item_id)
        .fetch_optional(conn)
        .await
}

/// Locks an item for a state change.
pub async fn lock_item(conn: &mut PgConnection, item_id: &str) -> Result<Option<ItemRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{ITEM} WHERE payout_item_id = $1 FOR UPDATE"
    )))
    .bind(item_id)
    .fetch_optional(conn)
    .await
}

pub async fn set_item(
    conn: &mut PgConnection,
    item_id: &str,
    status: ItemStatus,
    reason: Option<&str>,
    transfer_id: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payout_items SET status = $2, reason = COALESCE($3, reason), \
         stripe_transfer_id = COALESCE($4, stripe_transfer_id), updated_at = now() WHERE payout_item_id = $1",
    )
    .bind(item_id)
    .bind(status.as_str())
    .bind(reason)
    .bind(transfer_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Runs with an item whose transfer has not settled, or whose charge has not, that nobody
/// touched for `idle`, oldest first.
pub async fn runs_in_flight(conn: &mut PgConnection, idle: chrono::Duration) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT payout_run_id FROM ( \
           SELECT payout_run_id, min(updated_at) AS since FROM payout_items \
           WHERE status IN ('pending', 'reserved', 'unknown') AND updated_at < now() - $1::interval \
           GROUP BY payout_run_id \
           UNION ALL \
           SELECT payout_run_id, funding_updated_at FROM payout_runs \
           WHERE (funding_status IN ('reserving', 'charging') OR (funding_status = 'succeeded' AND NOT funding_settled)) \
           AND funding_updated_at < now() - $1::interval \
         ) due GROUP BY payout_run_id ORDER BY min(since) LIMIT 100",
    )
    .bind(format!("{} milliseconds", idle.num_milliseconds()))
    .fetch_all(conn)
    .await
}

/// Marks an attempt on a run that changed nothing, so the in-flight job moves on to other runs.
pub async fn touch_run(conn: &mut PgConnection, run_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE payout_runs SET funding_updated_at = now() WHERE payout_run_id = $1")
        .bind(run_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE payout_items SET updated_at = now() WHERE payout_run_id = $1 \
         AND status IN ('pending', 'reserved', 'unknown')",
    )
    .bind(run_id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn run(conn: &mut PgConnection, run_id: &str) -> Result<Option<RunRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{RUN} WHERE payout_run_id = $1")))
        .bind(run_id)
        .fetch_optional(conn)
        .await
}

/// Locks a run for a funding step unless another settler holds it.
pub async fn lock_run_free(conn: &mut PgConnection, run_id: &str) -> Result<Option<RunRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{RUN} WHERE payout_run_id = $1 FOR UPDATE SKIP LOCKED"
    )))
    .bind(run_id)
    .fetch_optional(conn)
    .await
}

/// Records a funding step's outcome.
pub async fn set_funding(conn: &mut PgConnection, run_id: &str, f: &RunFunding) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payout_runs SET funding_status = $2, funding_minor = $3, payment_intent_id = $4, charge_id = $5, \
         funding_code = $6, decline_code = $7, funding_message = $8, refunded_minor = $9, refund_id = $10, \
         funding_settled = $11, funding_updated_at = now() WHERE payout_run_id = $1",
    )
    .bind(run_id)
    .bind(f.funding_status.as_str())
    .bind(f.funding_minor)
    .bind(&f.payment_intent_id)
    .bind(&f.charge_id)
    .bind(&f.funding_code)
    .bind(&f.decline_code)
    .bind(&f.funding_message)
    .bind(f.refunded_minor)
    .bind(&f.refund_id)
    .bind(f.funding_settled)
    .execute(conn)
    .await?;
    Ok(())
}

/// What the owner org was charged (or is being charged) today in `currency`, failed charges
/// excluded: the per-day cap's base.
pub async fn charged_today(conn: &mut PgConnection, owner_org_id: &str, currency: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(CASE WHEN funding_status IN ('charging', 'succeeded') THEN funding_minor \
           WHEN funding_status = 'reserving' THEN (SELECT COALESCE(sum(gross_minor), 0) FROM payout_items i \
             WHERE i.payout_run_id = r.payout_run_id AND i.status <> 'skipped') ELSE 0 END), 0)::bigint \
         FROM payout_runs r WHERE owner_org_id = $1 AND currency = $2 \
         AND created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    )
    .bind(owner_org_id)
    .bind(currency)
    .fetch_one(conn)
    .await
}

// ---- owner funding ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct FundingRow {
    pub org_id: String,
    pub stripe_customer_id: Option<String>,
    pub payment_method_id: Option<String>,
    pub card_brand: Option<String>,
    pub card_last4: Option<String>,
}

impl FundingRow {
    pub fn ready(&self) -> bool {
        self.stripe_customer_id.is_some() && self.payment_method_id.is_some()
    }
}

const FUNDING: &str =
    "SELECT org_id, stripe_customer_id, payment_method_id, card_brand, card_last4 FROM funding_accounts";

pub async fn funding_of_org(conn: &mut PgConnection, org_id: &str) -> Result<Option<FundingRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{FUNDING} WHERE org_id = $1")))
        .bind(org_id)
        .fetch_optional(conn)
        .await
}

pub async fn funding_of_customer(conn: &mut PgConnection, customer: &str) -> Result<Option<FundingRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{FUNDING} WHERE stripe_customer_id = $1 FOR UPDATE"
    )))
    .bind(customer)
    .fetch_optional(conn)
    .await
}

/// Locks the org's funding row (creating it first) so one Stripe Customer is made per org.
pub async fn lock_funding(conn: &mut PgConnection, org_id: &str) -> Result<FundingRow, sqlx::Error> {
    sqlx::query("INSERT INTO funding_accounts (org_id) VALUES ($1) ON CONFLICT (org_id) DO NOTHING")
        .bind(org_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{FUNDING} WHERE org_id = $1 FOR UPDATE")))
        .bind(org_id)
        .fetch_one(conn)
        .await
}

pub async fn set_customer(conn: &mut PgConnection, org_id: &str, customer: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE funding_accounts SET stripe_customer_id = $2, updated_at = now() WHERE org_id = $1")
        .bind(org_id)
        .bind(customer)
        .execute(conn)
        .await?;
    Ok(())
}

/// The payment method runs charge from now on; returns whether it changed.
pub async fn set_payment_method(
    conn: &mut PgConnection,
    org_id: &str,
    payment_method: &str,
    brand: &str,
    last4: &str,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE funding_accounts SET payment_method_id = $2, card_brand = $3, card_last4 = $4, ready_at = now(), \
         updated_at = now() WHERE org_id = $1 AND payment_method_id IS DISTINCT FROM $2",
    )
    .bind(org_id)
    .bind(payment_method)
    .bind(brand)
    .bind(last4)
    .execute(conn)
    .await?;
    Ok(changed.rows_affected() == 1)
}

// ---- per-org enablement (operators) ----------------------------------------------------------

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrgPayouts {
    pub org_id: String,
    pub enabled: bool,
    pub cap_per_run_minor: Option<i64>,
    pub cap_per_day_minor: Option<i64>,
    pub changed_by: String,
    pub changed_at: DateTime<Utc>,
}

const ORG_PAYOUTS: &str =
    "SELECT org_id, enabled, cap_per_run_minor, cap_per_day_minor, changed_by, changed_at FROM org_payout_settings";

pub async fn org_payouts(conn: &mut PgConnection, org_id: &str) -> Result<Option<OrgPayouts>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{ORG_PAYOUTS} WHERE org_id = $1")))
        .bind(org_id)
        .fetch_optional(conn)
        .await
}

pub async fn all_org_payouts(conn: &mut PgConnection) -> Result<Vec<OrgPayouts>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{ORG_PAYOUTS} ORDER BY org_id")))
        .fetch_all(conn)
        .await
}

/// Enables or disables live payouts of an org (caps: `None` keeps none).
pub async fn set_org_payouts(conn: &mut PgConnection, settings: &OrgPayouts) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO org_payout_settings (org_id, enabled, cap_per_run_minor, cap_per_day_minor, changed_by, changed_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (org_id) DO UPDATE SET enabled = EXCLUDED.enabled, \
         cap_per_run_minor = EXCLUDED.cap_per_run_minor, cap_per_day_minor = EXCLUDED.cap_per_day_minor, \
         changed_by = EXCLUDED.changed_by, changed_at = EXCLUDED.changed_at",
    )
    .bind(&settings.org_id)
    .bind(settings.enabled)
    .bind(settings.cap_per_run_minor)
    .bind(settings.cap_per_day_minor)
    .bind(&settings.changed_by)
    .bind(settings.changed_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A page of a program's runs, newest first (keyset on the time-ordered run id).
pub async fn runs_page(
    conn: &mut PgConnection,
    program_id: &str,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<RunRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{RUN} WHERE program_id = $1 AND ($2::text IS NULL OR payout_run_id < $2) ORDER BY payout_run_id DESC LIMIT $3"
    )))
    .bind(program_id)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Records a Stripe event; `false` when it was recorded before.
pub async fn record_stripe_event(
    conn: &mut PgConnection,
    event_id: &str,
    kind: &str,
    account: Option<&str>,
    payload: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO stripe_events (event_id, type, account, payload) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(event_id)
    .bind(kind)
    .bind(account)
    .bind(payload)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}
