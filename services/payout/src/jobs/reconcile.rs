//! `amba payouts reconcile <program_id> [--repair]`: compares what Stripe shows for each of a
//! program's payout items (listed by each run's `transfer_group`, matched by the transfer's
//! `metadata.payout_item_id`; older runs grouped by the item id) with what the payout service
//! and the ledger recorded, and reports every difference. `--repair` settles what can be settled
//! safely: an item still in flight whose transfer exists is posted (paid); nothing else is
//! changed automatically.

use crate::domain::status::ItemStatus;
use crate::settle::Settler;
use crate::stripe::Transfer;
use amba_core::ApiError;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Reconciliation {
    pub items: usize,
    pub problems: Vec<String>,
    pub repaired: Vec<String>,
}

pub async fn reconcile(settler: &Settler, program_id: &str, repair: bool) -> Result<Reconciliation, ApiError> {
    let stripe = settler.stripe.as_ref().ok_or_else(crate::settle::stripe_missing)?;
    let items: Vec<crate::store::ItemRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{} WHERE program_id = $1 AND status <> 'skipped' ORDER BY payout_item_id",
        crate::store::ITEM
    )))
    .bind(program_id)
    .fetch_all(&settler.pool)
    .await?;
    let mut report = Reconciliation {
        items: items.len(),
        ..Default::default()
    };
    // One listing per group (a run's), not one per item.
    let mut groups: HashMap<String, Vec<Transfer>> = HashMap::new();
    for item in items {
        let id = &item.payout_item_id;
        if !groups.contains_key(item.group()) {
            let listed = stripe
                .transfers_in_group(item.group())
                .await
                .map_err(|e| ApiError::unavailable(format!("Stripe: {e}")))?;
            groups.insert(item.group().to_owned(), listed);
        }
        let transfers: Vec<Transfer> = groups
            .get(item.group())
            .into_iter()
            .flatten()
            .filter(|t| t.payout_item_id() == Some(id.as_str()))
            .cloned()
            .collect();
        match (item.status, transfers.as_slice()) {
            (ItemStatus::Paid, [t])
                if t.amount == item.net_minor && item.stripe_transfer_id.as_deref() == Some(t.id.as_str()) => {}
            (ItemStatus::Paid, [t]) => report.problems.push(format!(
                "{id}: paid {} by {:?}, but Stripe's transfer {} is {}",
                item.net_minor, item.stripe_transfer_id, t.id, t.amount
            )),
            (ItemStatus::Paid, []) => report
                .problems
                .push(format!("{id}: paid in the ledger, but Stripe has no transfer for it")),
            (ItemStatus::Failed | ItemStatus::Voided, []) => {}
            (ItemStatus::Failed | ItemStatus::Voided, found) => report.problems.push(format!(
                "{id}: {} (reservation returned), but Stripe shows {} transfer(s): money moved without a ledger post",
                item.status,
                found.len()
            )),
            (ItemStatus::Pending, []) => {}
            (ItemStatus::Reserved | ItemStatus::Unknown, [t]) if repair => {
                let mut conn = settler.pool.begin().await?;
                let posted = settler.transfer_seen(&mut conn, id, &t.id).await?;
                conn.commit().await?;
                if posted {
                    report
                        .repaired
                        .push(format!("{id}: transfer {} exists; posted as paid", t.id));
                } else {
                    report
                        .problems
                        .push(format!("{id}: transfer {} exists but the item changed meanwhile", t.id));
                }
            }
            (status, found) => report.problems.push(format!(
                "{id}: {status} with {} transfer(s) at Stripe{}",
                found.len(),
                if found.is_empty() {
                    ""
                } else {
                    " (run with --repair to post it)"
                }
            )),
        }
        if transfers.len() > 1 {
            report
                .problems
                .push(format!("{id}: Stripe has {} transfers for it", transfers.len()));
        }
    }
    Ok(report)
}
