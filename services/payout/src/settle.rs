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
    /// `ORG_PAYOUTS_LIVE`: the in-flight job moves nothing while it is off.
    pub payouts_live: bool,
}

impl Settler {
    /// Advances one item as far as it can go now; returns it as it ends up. An item another
    /// settler holds is returned as it is. Each step commits before the next one starts, so the
    /// reservation is stored before any money is asked of Stripe.
    pub async fn advance(&self, item_id: &str) -> Result<ItemRow, ApiError> {
        let stripe = self.stripe.as_ref().ok_or_else(stripe_missing)?;
        let mut last = None;
        // pending → reserved → paid/failed/unknown, one committed step at a time.
        for _ in 0..3 {
            let mut tx = self.pool.begin().await.map_err(db_error)?;
            let Some(mut item) = lock_free(&mut tx, item_id).await? else {
                drop(tx);
                let mut conn = self.pool.acquire().await.map_err(db_error)?;
                return store::item(&mut conn, item_id)
                    .await
                    .map_err(db_error)?
                    .ok_or_else(|| ApiError::not_found(format!("payout item {item_id}")));
            };
            let before = item.status.clone();
            match item.status.as_str() {
                "pending" => self.reserve_step(&mut tx, &mut item).await?,
                "reserved" => self.transfer_step(&mut tx, stripe, &mut item).await?,
                "unknown" => self.lookup_step(&mut tx, stripe, &mut item).await?,
                _ => {}
            }
            tx.commit().await.map_err(db_error)?;
            self.waker.wake();
            let moved = item.status != before;
            last = Some(item);
            if !moved {
                break;
            }
        }
        last.ok_or_else(ApiError::internal)
    }

    async fn reserve_step(&self, tx: &mut sqlx::PgConnection, item: &mut ItemRow) -> Result<(), ApiError> {
        let reserved = match self.reserve(item).await {
            // A reservation racing our own earlier call (e.g. after a timeout) loses on the
            // balance lock; asked again, the ledger answers with the item it already reserved.
            Err(err) if err.code == ErrorCode::Conflict => self.reserve(item).await,
            other => other,
        };
        match reserved {
            Ok(()) => self.set(tx, item, "reserved", None, None).await,
            Err(err) if err.code == ErrorCode::Conflict => {
                // The payable balance changed since the plan (e.g. a clawback): nothing reserved.
                let reason = format!("not paid: {}", err.message);
                self.set(tx, item, "failed", Some(&reason), None).await?;
                self.announce(tx, item, "failed").await
            }
            Err(err) => Err(err),
        }
    }

    /// Sends the transfer — unless Stripe already has one for this item (a retry after a crash,
    /// or after Stripe forgot the idempotency key): never a second transfer for one item.
    async fn transfer_step(
        &self,
        tx: &mut sqlx::PgConnection,
        stripe: &crate::stripe::Stripe,
        item: &mut ItemRow,
    ) -> Result<(), ApiError> {
        // The fault suite kills the process here: reserved in the ledger, nothing asked of Stripe.
        amba_bus::faults::pause_at("payout-before-transfer").await;
        match stripe.transfers_of(&item.payout_item_id).await {
            Ok(found) if !found.is_empty() => {
                let id = found[0].id.clone();
                return self.paid(tx, item, &id).await;
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(payout_item_id = %item.payout_item_id, error = %err, "transfer lookup failed; trying later");
                return self.touch(tx, item).await;
            }
        }
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
            Ok(transfer) => self.paid(tx, item, &transfer.id).await,
            Err(StripeError::Refused { message, .. }) => {
                // A definite refusal — but look once more before returning the money to payable.
                match stripe.transfers_of(&item.payout_item_id).await {
                    Ok(found) if found.is_empty() => {
                        self.void(tx, item, &format!("Stripe refused the transfer: {message}"))
                            .await
                    }
                    Ok(found) => {
                        let id = found[0].id.clone();
                        self.paid(tx, item, &id).await
                    }
                    Err(_) => self.unknown(tx, item).await,
                }
            }
            Err(StripeError::Unknown(why)) => {
                tracing::warn!(payout_item_id = %item.payout_item_id, %why, "transfer outcome unknown; looking it up");
                self.unknown(tx, item).await
            }
        }
    }

    async fn lookup_step(
        &self,
        tx: &mut sqlx::PgConnection,
        stripe: &crate::stripe::Stripe,
        item: &mut ItemRow,
    ) -> Result<(), ApiError> {
        match stripe.transfers_of(&item.payout_item_id).await {
            Ok(found) => match found.first() {
                Some(transfer) => {
                    let id = transfer.id.clone();
                    self.paid(tx, item, &id).await
                }
                None if self.unknown_for_long(tx, item).await? => {
                    self.void(tx, item, "Stripe has no transfer for this item").await
                }
                None => Ok(()),
            },
            Err(err) => {
                tracing::warn!(payout_item_id = %item.payout_item_id, error = %err, "transfer lookup failed");
                Ok(())
            }
        }
    }

    async fn unknown(&self, tx: &mut sqlx::PgConnection, item: &mut ItemRow) -> Result<(), ApiError> {
        self.set(
            tx,
            item,
            "unknown",
            Some("the transfer's outcome is not known yet"),
            None,
        )
        .await
    }

    /// Marks an attempt that changed nothing, so the in-flight job moves on to other items.
    pub async fn touch(&self, tx: &mut sqlx::PgConnection, item: &ItemRow) -> Result<(), ApiError> {
        sqlx::query("UPDATE payout_items SET updated_at = now() WHERE payout_item_id = $1")
            .bind(&item.payout_item_id)
            .execute(tx)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// A transfer Stripe reports (`transfer.created`) for an item still in flight: post it.
    pub async fn transfer_seen(
        &self,
        conn: &mut sqlx::PgConnection,
        item_id: &str,
        transfer_id: &str,
    ) -> Result<bool, ApiError> {
        let Some(mut item) = store::lock_item(conn, item_id).await.map_err(db_error)? else {
            return Ok(false); // not one of ours
        };
        if matches!(item.status.as_str(), "reserved" | "unknown") {
            self.paid(conn, &mut item, transfer_id).await?;
            return Ok(true);
        }
        Ok(false)
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

/// Locks an item unless another settler holds it.
async fn lock_free(tx: &mut sqlx::PgConnection, item_id: &str) -> Result<Option<ItemRow>, ApiError> {
    sqlx::query_as(
        "SELECT payout_item_id, payout_run_id, program_id, enrollment_id, affiliate_org_id, currency, gross_minor, \
         fee_minor, debt_minor, net_minor, status, reason, stripe_account_id, stripe_transfer_id FROM payout_items \
         WHERE payout_item_id = $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(item_id)
    .fetch_optional(tx)
    .await
    .map_err(db_error)
}
