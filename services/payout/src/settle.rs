//! Moves a payout item through its life: pending → reserved (ledger, phase 1) → transfer at
//! Stripe → paid (ledger post) or failed (ledger void). Every step is idempotent on the item id
//! — the ledger's reservation key and, as `payout_item:<id>`, the transfer's `Idempotency-Key` —
//! so any step can be repeated after a crash, by the run that made the item or by the in-flight
//! job, without moving money twice.
//!
//! A transfer whose outcome is unknown (5xx, timeout) is never sent again under a new key: it
//! stays `unknown` and is looked up by its `transfer_group` (the item id) — found, it is posted;
//! still absent after the grace period, the reservation is voided.

use crate::store::{self, ItemRow};
use crate::stripe::{Stripe, StripeError};
use amba_bus::Namespace;
use amba_bus::events::{OutboxEvent, new_meta};
use amba_bus::outbox::RelayWaker;
use amba_bus::rpc::{RpcClient, db_error};
use amba_core::{ApiError, ErrorCode};
use amba_proto::methods::commission as ledger;
use amba_proto::wire as pb;
use sqlx::PgPool;
use std::time::Duration;

#[derive(Clone)]
pub struct Settler {
    pub pool: PgPool,
    pub rpc: RpcClient,
    pub stripe: Option<Stripe>,
    pub ns: Namespace,
    pub waker: RelayWaker,
    /// How long an unknown transfer may stay absent at Stripe before its reservation is voided.
    pub unknown_grace: Duration,
}

impl Settler {
    /// Advances one item as far as it can go now; returns it as it ends up. An item another
    /// settler holds is returned as it is.
    pub async fn advance(&self, item_id: &str) -> Result<ItemRow, ApiError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let locked: Option<ItemRow> = sqlx::query_as(
            "SELECT payout_item_id, payout_run_id, program_id, enrollment_id, affiliate_org_id, currency, gross_minor, \
             fee_minor, debt_minor, net_minor, status, reason, stripe_account_id, stripe_transfer_id FROM payout_items \
             WHERE payout_item_id = $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(item_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(mut item) = locked else {
            drop(tx);
            let mut conn = self.pool.acquire().await.map_err(db_error)?;
            return store::item(&mut conn, item_id)
                .await
                .map_err(db_error)?
                .ok_or_else(|| ApiError::not_found(format!("payout item {item_id}")));
        };
        let stripe = self.stripe.as_ref().ok_or_else(stripe_missing)?;
        if item.status == "pending" {
            match self.reserve(&item).await {
                Ok(()) => self.set(&mut tx, &mut item, "reserved", None, None).await?,
                Err(err) if err.code == ErrorCode::Conflict => {
                    // The payable balance changed since the plan (e.g. a clawback): nothing reserved.
                    let reason = format!("not paid: {}", err.message);
                    self.set(&mut tx, &mut item, "failed", Some(&reason), None).await?;
                    self.announce(&mut tx, &item, "failed").await?;
                }
                Err(err) => return Err(err),
            }
        }
        if item.status == "reserved" {
            let destination = item.stripe_account_id.clone().unwrap_or_default();
            match stripe
                .transfer(
                    item.net_minor,
                    &item.currency,
                    &destination,
                    &item.payout_item_id,
                    &item.program_id,
                )
                .await
            {
                Ok(transfer) => self.paid(&mut tx, &mut item, &transfer.id).await?,
                Err(StripeError::Refused { message, .. }) => {
                    self.void(&mut tx, &mut item, &format!("Stripe refused the transfer: {message}"))
                        .await?
                }
                Err(StripeError::Unknown(why)) => {
                    tracing::warn!(payout_item_id = %item.payout_item_id, %why, "transfer outcome unknown; looking it up");
                    self.set(
                        &mut tx,
                        &mut item,
                        "unknown",
                        Some("the transfer's outcome is not known yet"),
                        None,
                    )
                    .await?;
                }
            }
        }
        if item.status == "unknown" {
            match stripe.transfers_of(&item.payout_item_id).await {
                Ok(found) => match found.first() {
                    Some(transfer) => self.paid(&mut tx, &mut item, &transfer.id).await?,
                    None if self.unknown_for_long(&mut tx, &item).await? => {
                        self.void(&mut tx, &mut item, "Stripe has no transfer for this item")
                            .await?
                    }
                    None => {}
                },
                Err(err) => {
                    tracing::warn!(payout_item_id = %item.payout_item_id, error = %err, "transfer lookup failed")
                }
            }
        }
        tx.commit().await.map_err(db_error)?;
        self.waker.wake();
        Ok(item)
    }

    /// A transfer Stripe reports (`transfer.created`) for an item still in flight: post it.
    pub async fn transfer_seen(
        &self,
        conn: &mut sqlx::PgConnection,
        item_id: &str,
        transfer_id: &str,
    ) -> Result<(), ApiError> {
        let Some(mut item) = store::lock_item(conn, item_id).await.map_err(db_error)? else {
            return Ok(()); // not one of ours
        };
        if matches!(item.status.as_str(), "reserved" | "unknown") {
            self.paid(conn, &mut item, transfer_id).await?;
        }
        Ok(())
    }

    async fn reserve(&self, item: &ItemRow) -> Result<(), ApiError> {
        let _: pb::PayoutItemReply = self
            .rpc
            .call(
                ledger::SERVICE,
                ledger::PAYOUT_RESERVE,
                &pb::ReservePayoutRequest {
                    payout_item_id: item.payout_item_id.clone(),
                    program_id: item.program_id.clone(),
                    enrollment_id: item.enrollment_id.clone(),
                    amount_minor: item.gross_minor,
                },
            )
            .await?;
        Ok(())
    }

    async fn paid(&self, conn: &mut sqlx::PgConnection, item: &mut ItemRow, transfer_id: &str) -> Result<(), ApiError> {
        let _: pb::PayoutItemReply = self
            .rpc
            .call(
                ledger::SERVICE,
                ledger::PAYOUT_POST,
                &pb::PostPayoutRequest {
                    payout_item_id: item.payout_item_id.clone(),
                    fee_minor: item.fee_minor,
                },
            )
            .await?;
        self.set(conn, item, "paid", None, Some(transfer_id)).await?;
        item.reason = None;
        sqlx::query("UPDATE payout_items SET reason = NULL WHERE payout_item_id = $1")
            .bind(&item.payout_item_id)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        self.announce(conn, item, "sent").await
    }

    async fn void(&self, conn: &mut sqlx::PgConnection, item: &mut ItemRow, reason: &str) -> Result<(), ApiError> {
        let _: pb::PayoutItemReply = self
            .rpc
            .call(
                ledger::SERVICE,
                ledger::PAYOUT_VOID,
                &pb::VoidPayoutRequest {
                    payout_item_id: item.payout_item_id.clone(),
                },
            )
            .await?;
        self.set(conn, item, "failed", Some(reason), None).await?;
        self.announce(conn, item, "failed").await
    }

    async fn set(
        &self,
        conn: &mut sqlx::PgConnection,
        item: &mut ItemRow,
        status: &str,
        reason: Option<&str>,
        transfer_id: Option<&str>,
    ) -> Result<(), ApiError> {
        store::set_item(conn, &item.payout_item_id, status, reason, transfer_id)
            .await
            .map_err(db_error)?;
        item.status = status.to_owned();
        if let Some(reason) = reason {
            item.reason = Some(reason.to_owned());
        }
        if let Some(id) = transfer_id {
            item.stripe_transfer_id = Some(id.to_owned());
        }
        Ok(())
    }

    async fn unknown_for_long(&self, conn: &mut sqlx::PgConnection, item: &ItemRow) -> Result<bool, ApiError> {
        let since: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM now() - updated_at)::float8 FROM payout_items WHERE payout_item_id = $1",
        )
        .bind(&item.payout_item_id)
        .fetch_optional(conn)
        .await
        .map_err(db_error)?;
        Ok(since.is_some_and(|s| s >= self.unknown_grace.as_secs_f64()))
    }

    /// `payout.sent` / `payout.failed`, for notifications.
    async fn announce(&self, conn: &mut sqlx::PgConnection, item: &ItemRow, kind: &str) -> Result<(), ApiError> {
        let meta = new_meta();
        let body = pb::PayoutItemChanged {
            meta: Some(meta.clone()),
            program_id: item.program_id.clone(),
            affiliate_org_id: item.affiliate_org_id.clone(),
            currency: item.currency.clone(),
            item: Some(item.to_proto()),
        };
        amba_bus::outbox::enqueue(conn, &OutboxEvent::new(self.ns.event("payout", kind), &meta, &body))
            .await
            .map_err(db_error)
    }
}

pub fn stripe_missing() -> ApiError {
    ApiError::unavailable(
        "payouts need Stripe: AMBA_STRIPE_SECRET_KEY is not set on this deployment (amba dev uses a local fake Stripe)",
    )
}
