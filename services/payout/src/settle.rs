//! Moves a payout run through its life. A run is paid for by its program's owner before any
//! affiliate is paid (Stripe's "separate charges and transfers"):
//!
//! 1. **reserve**: each item's gross moves payable → reserved in the ledger (phase 1);
//! 2. **charge**: one PaymentIntent for the sum of the reserved items' gross, on the owner's saved
//!    payment method, off-session, keyed `payout_run:<id>:charge` (stored with the run);
//! 3. **transfer**: each item's net goes to the affiliate with `source_transaction` = that charge
//!    (so no transfer can exceed what the owner paid), then the ledger posts it (paid); a declined
//!    charge voids every reservation instead (the commission is payable again).
//!
//! Every step is idempotent — the ledger's reservation key is the item id, the charge's and each
//! transfer's `Idempotency-Key` are persisted before the call — so any step can be repeated after
//! a crash, by the run that made it or by the in-flight job, without moving money twice. An
//! outcome that is unknown (5xx, timeout) is looked up at Stripe before anything is sent again:
//! a charge by the owner's PaymentIntents, a transfer by its run's `transfer_group`; a transfer
//! still absent after the grace period has its reservation voided.
//!
//! Once every item is final the unused part of the charge is refunded and `payout.run_completed`
//! tells the owner how the run ended (in the transaction that settles the funding: once per run).

use crate::domain::status::{FundingStatus, ItemStatus};
use crate::domain::summary;
use crate::store::{self, ItemRow, RunFunding, RunRow};
use crate::stripe::{ItemTransfer, RunCharge, Stripe, StripeError};
use amba_bus::Namespace;
use amba_bus::events::{OutboxEvent, new_meta};
use amba_bus::outbox::RelayWaker;
use amba_bus::rpc::RpcClient;
use amba_core::{ApiError, ErrorCode};
use amba_proto::methods::commission as ledger;
use amba_proto::wire as pb;
use sqlx::PgPool;
use std::time::Duration;

/// What an item may do now, given its run's charge.
#[derive(Debug, Clone)]
enum Stage {
    /// The charge is not made yet: reserve, nothing more.
    Reserve,
    /// The charge succeeded (or the run predates funding: `None`): transfer from it.
    Transfer(Option<String>),
    /// The charge failed: return every reservation to payable.
    Void(String),
}

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
    /// Advances a run as far as it can go now: its items' reservations, the owner's charge, and
    /// the transfers (or the voids when the charge failed). Each step commits before the next.
    pub async fn advance_run(&self, run_id: &str) -> Result<(), ApiError> {
        let stripe = self.stripe.as_ref().ok_or_else(stripe_missing)?;
        for _ in 0..4 {
            let mut conn = self.pool.acquire().await?;
            let run = store::run(&mut conn, run_id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("payout run {run_id}")))?;
            let items = store::items_of_run(&mut conn, run_id).await?;
            drop(conn);
            let before = run.funding.funding_status;
            let stage = match before {
                FundingStatus::Reserving | FundingStatus::Charging => Stage::Reserve,
                FundingStatus::Succeeded => Stage::Transfer(run.funding.charge_id.clone()),
                FundingStatus::Unfunded => Stage::Transfer(None),
                FundingStatus::Failed => Stage::Void(funding_failure_reason(&run.funding)),
                FundingStatus::NotNeeded => return Ok(()), // nothing was reserved
            };
            let mut first_error = None;
            for item in items.iter().filter(|i| i.status.in_flight()) {
                if let Err(err) = self.advance_item(&item.payout_item_id, &stage).await {
                    tracing::warn!(payout_item_id = %item.payout_item_id, error = %err, "payout item not settled yet; the in-flight job retries");
                    first_error.get_or_insert(err);
                }
            }
            match before {
                FundingStatus::Reserving | FundingStatus::Charging => self.fund(stripe, &run).await?,
                FundingStatus::Succeeded if first_error.is_none() => self.settle_funding(stripe, run_id).await?,
                _ => {}
            }
            let mut conn = self.pool.acquire().await?;
            let after = store::run(&mut conn, run_id)
                .await?
                .map(|r| r.funding.funding_status)
                .unwrap_or_default();
            if after == before {
                return first_error.map_or(Ok(()), Err);
            }
        }
        Ok(())
    }

    /// Advances one item as far as `stage` lets it go; returns it as it ends up. An item another
    /// settler holds is returned as it is.
    async fn advance_item(&self, item_id: &str, stage: &Stage) -> Result<ItemRow, ApiError> {
        let stripe = self.stripe.as_ref().ok_or_else(stripe_missing)?;
        let mut last = None;
        // pending → reserved → paid/failed/unknown, one committed step at a time.
        for _ in 0..4 {
            let mut tx = self.pool.begin().await?;
            let Some(mut item) = lock_free(&mut tx, item_id).await? else {
                drop(tx);
                let mut conn = self.pool.acquire().await?;
                return store::item(&mut conn, item_id)
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("payout item {item_id}")));
            };
            let before = (item.status, item.transfer_attempted);
            match (item.status, stage) {
                (ItemStatus::Pending, Stage::Void(reason)) => {
                    self.set(&mut tx, &mut item, ItemStatus::Failed, Some(reason), None)
                        .await?;
                }
                (ItemStatus::Pending, _) => self.reserve_step(&mut tx, &mut item).await?,
                (ItemStatus::Reserved, Stage::Transfer(charge)) => {
                    self.transfer_step(&mut tx, stripe, &mut item, charge.as_deref())
                        .await?;
                }
                (ItemStatus::Reserved, Stage::Void(reason)) => self.void(&mut tx, &mut item, reason, false).await?,
                (ItemStatus::Unknown, _) => self.lookup_step(&mut tx, stripe, &mut item).await?,
                _ => {}
            }
            tx.commit().await?;
            self.waker.wake();
            let moved = (item.status, item.transfer_attempted) != before;
            last = Some(item);
            if !moved {
                break;
            }
        }
        last.ok_or_else(ApiError::internal)
    }

    /// The run's charge: once no item waits for its reservation, the reserved total is charged
    /// to the owner (the key and amount committed first); an answer that was lost is looked up
    /// among the owner's PaymentIntents before the same request is sent again.
    async fn fund(&self, stripe: &Stripe, run: &RunRow) -> Result<(), ApiError> {
        let mut tx = self.pool.begin().await?;
        let Some(run) = store::lock_run_free(&mut tx, &run.payout_run_id).await? else {
            return Ok(()); // another settler is on it
        };
        let mut funding = run.funding.clone();
        if funding.funding_status == FundingStatus::Reserving {
            let items = store::items_of_run(&mut tx, &run.payout_run_id).await?;
            if items.iter().any(|i| i.status == ItemStatus::Pending) {
                return Ok(()); // a reservation is still to be made
            }
            let total: i64 = items
                .iter()
                .filter(|i| i.status == ItemStatus::Reserved)
                .map(|i| i.gross_minor)
                .sum();
            funding.funding_minor = total;
            let next = if total > 0 {
                FundingStatus::Charging
            } else {
                FundingStatus::NotNeeded
            };
            step(&run, &mut funding, next)?;
            store::set_funding(&mut tx, &run.payout_run_id, &funding).await?;
            tx.commit().await?;
            if total == 0 {
                return Ok(());
            }
            // The charge's key and amount are stored: now the call may be made.
            tx = self.pool.begin().await?;
            if store::lock_run_free(&mut tx, &run.payout_run_id).await?.is_none() {
                return Ok(());
            }
        }
        if funding.funding_status != FundingStatus::Charging {
            return Ok(());
        }
        amba_bus::faults::pause_at("payout-before-charge").await;
        let (Some(customer), Some(method), Some(key)) = (
            funding.stripe_customer_id.clone(),
            funding.payment_method_id.clone(),
            funding.funding_key.clone(),
        ) else {
            // Runs are created only for funded owners; a row without these was damaged by hand.
            step(&run, &mut funding, FundingStatus::Failed)?;
            funding.funding_code = Some("FUNDING_FAILED".into());
            funding.decline_code = Some("no_payment_method".into());
            funding.funding_message = Some("the run has no saved payment method to charge".into());
            return self.funding_failed(tx, &run, &funding).await;
        };
        let since = run.created_at.timestamp() - 300;
        let found = match stripe.payment_intents_of(&customer, since).await {
            Ok(intents) => intents
                .into_iter()
                .find(|pi| pi.payout_run_id() == Some(run.payout_run_id.as_str())),
            Err(err) => {
                tracing::warn!(payout_run_id = %run.payout_run_id, error = %err, "charge lookup failed; trying later");
                return self.touch_run(tx, &run, &funding).await;
            }
        };
        let answer = match found {
            Some(intent) => Ok(intent),
            None => {
                stripe
                    .charge(&RunCharge {
                        amount_minor: funding.funding_minor,
                        currency: &run.currency,
                        customer: &customer,
                        payment_method: &method,
                        payout_run_id: &run.payout_run_id,
                        program_id: &run.program_id,
                        idempotency_key: &key,
                    })
                    .await
            }
        };
        match answer {
            Ok(intent) if intent.status == "succeeded" => {
                if intent.amount != funding.funding_minor {
                    tracing::error!(payout_run_id = %run.payout_run_id, charged = intent.amount, expected = funding.funding_minor, "the run's charge has another amount");
                }
                step(&run, &mut funding, FundingStatus::Succeeded)?;
                funding.payment_intent_id = Some(intent.id.clone());
                funding.charge_id = intent.latest_charge.clone();
                store::set_funding(&mut tx, &run.payout_run_id, &funding).await?;
                tx.commit().await?;
                Ok(())
            }
            // Still being processed (e.g. a bank debit): asked again later.
            Ok(intent) if intent.status == "processing" => self.touch_run(tx, &run, &funding).await,
            Ok(intent) => {
                step(&run, &mut funding, FundingStatus::Failed)?;
                funding.payment_intent_id = Some(intent.id.clone());
                funding.funding_code = Some("FUNDING_FAILED".into());
                funding.decline_code = Some(intent.failure_code());
                funding.funding_message = Some(format!("the charge ended {}", intent.status));
                self.funding_failed(tx, &run, &funding).await
            }
            Err(StripeError::Refused {
                kind,
                code,
                decline_code,
                message,
                ..
            }) => {
                step(&run, &mut funding, FundingStatus::Failed)?;
                funding.funding_code = Some("FUNDING_FAILED".into());
                funding.decline_code = Some(
                    [decline_code, code, kind]
                        .into_iter()
                        .find(|c| !c.is_empty())
                        .unwrap_or_else(|| "refused".into()),
                );
                funding.funding_message = Some(message);
                self.funding_failed(tx, &run, &funding).await
            }
            Err(StripeError::Unknown(why)) => {
                tracing::warn!(payout_run_id = %run.payout_run_id, %why, "charge outcome unknown; looking it up");
                self.touch_run(tx, &run, &funding).await
            }
        }
    }

    /// Once every item of a charged run is final, what was charged but not paid out (items
    /// refused or voided after the charge) goes back to the owner's card, once: the refund is
    /// keyed by the run and looked up before it is sent again. Their commission is payable again,
    /// so a later run charges it again — and only once overall.
    async fn settle_funding(&self, stripe: &Stripe, run_id: &str) -> Result<(), ApiError> {
        let mut tx = self.pool.begin().await?;
        let Some(run) = store::lock_run_free(&mut tx, run_id).await? else {
            return Ok(());
        };
        let mut funding = run.funding.clone();
        if funding.funding_status != FundingStatus::Succeeded || funding.funding_settled {
            return Ok(());
        }
        let items = store::items_of_run(&mut tx, run_id).await?;
        if items.iter().any(|i| i.status.in_flight()) {
            return Ok(());
        }
        let paid: i64 = items
            .iter()
            .filter(|i| i.status == ItemStatus::Paid)
            .map(|i| i.gross_minor)
            .sum();
        let unused = funding.funding_minor - paid;
        if unused > 0 {
            let Some(charge) = funding.charge_id.clone() else {
                return Err(ApiError::internal());
            };
            let found = match stripe.refunds_of(&charge, run_id).await {
                Ok(found) => found.into_iter().next(),
                Err(err) => {
                    tracing::warn!(payout_run_id = %run_id, error = %err, "refund lookup failed; trying later");
                    return self.touch_run(tx, &run, &funding).await;
                }
            };
            let refunded = match found {
                Some(refund) => Ok(refund),
                None => stripe.refund(&charge, unused, run_id).await,
            };
            match refunded {
                Ok(refund) => {
                    funding.refunded_minor = refund.amount;
                    funding.refund_id = Some(refund.id);
                }
                Err(StripeError::Unknown(why)) => {
                    tracing::warn!(payout_run_id = %run_id, %why, "refund outcome unknown; looking it up");
                    return self.touch_run(tx, &run, &funding).await;
                }
                Err(StripeError::Refused { message, .. }) => {
                    // Nothing more the service can do by itself: visible on the run, and loud.
                    tracing::error!(payout_run_id = %run_id, unused, %message, "Stripe refused to refund what a run could not pay out");
                    funding.funding_message = Some(format!("{unused} could not be refunded: {message}"));
                }
            }
        }
        funding.funding_settled = true;
        store::set_funding(&mut tx, run_id, &funding).await?;
        self.run_completed(&mut tx, &run, &funding, &items).await?;
        tx.commit().await?;
        self.waker.wake();
        Ok(())
    }

    /// Tells the owner how the run ended (`payout.run_completed`), in the transaction that
    /// settles its funding: once per run.
    async fn run_completed(
        &self,
        tx: &mut sqlx::PgConnection,
        run: &RunRow,
        funding: &RunFunding,
        items: &[ItemRow],
    ) -> Result<(), ApiError> {
        let summary = summary::summarize(
            items.iter().map(|i| summary::Item {
                status: i.status,
                gross_minor: i.gross_minor,
                fee_minor: i.fee_minor,
                debt_minor: i.debt_minor,
                net_minor: i.net_minor,
                reason: i.reason.as_deref(),
                transfer_attempted: i.transfer_attempted,
            }),
            funding.funding_minor,
            funding.refunded_minor,
        );
        tracing::info!(payout_run_id = %run.payout_run_id, paid = summary.paid_count, failed = summary.failed_count, refunded_minor = summary.refunded_minor, "payout run completed");
        let program = store::program(tx, &run.program_id).await?;
        let meta = new_meta();
        let mut run_proto = run.to_proto(&[]);
        run_proto.funding = Some(funding.to_proto());
        run_proto.items_total = u32::try_from(items.len()).unwrap_or(u32::MAX);
        let body = pb::PayoutRunChanged {
            meta: Some(meta.clone()),
            program_id: run.program_id.clone(),
            owner_org_id: funding.owner_org_id.clone().unwrap_or_default(),
            program_name: program.map(|p| p.name).unwrap_or_default(),
            run: Some(run_proto),
            summary: Some(pb::PayoutRunSummary {
                paid_count: summary.paid_count,
                paid_net_minor: summary.paid_net_minor,
                fee_minor: summary.fee_minor,
                debt_minor: summary.debt_minor,
                failed_count: summary.failed_count,
                failed_gross_minor: summary.failed_gross_minor,
                failure_reasons: summary.failure_reasons,
                charged_minor: summary.charged_minor,
                refunded_minor: summary.refunded_minor,
            }),
        };
        Ok(amba_bus::outbox::enqueue(
            tx,
            &OutboxEvent::new(self.ns.event("payout", "run_completed"), &meta, &body),
        )
        .await?)
    }

    /// Records a failed charge and tells the owner (`payout.funding_failed`); the items are voided
    /// by the next step of the run.
    async fn funding_failed(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        run: &RunRow,
        funding: &RunFunding,
    ) -> Result<(), ApiError> {
        tracing::info!(payout_run_id = %run.payout_run_id, decline_code = ?funding.decline_code, "payout run not funded: nothing moves");
        store::set_funding(&mut tx, &run.payout_run_id, funding).await?;
        let program = store::program(&mut tx, &run.program_id).await?;
        let meta = new_meta();
        let mut run_proto = run.to_proto(&[]);
        run_proto.funding = Some(funding.to_proto());
        let body = pb::PayoutRunChanged {
            meta: Some(meta.clone()),
            program_id: run.program_id.clone(),
            owner_org_id: funding.owner_org_id.clone().unwrap_or_default(),
            program_name: program.map(|p| p.name).unwrap_or_default(),
            run: Some(run_proto),
            summary: None,
        };
        amba_bus::outbox::enqueue(
            &mut tx,
            &OutboxEvent::new(self.ns.event("payout", "funding_failed"), &meta, &body),
        )
        .await?;
        tx.commit().await?;
        self.waker.wake();
        Ok(())
    }

    /// A funding attempt that changed nothing: the in-flight job tries again later.
    async fn touch_run(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        run: &RunRow,
        funding: &RunFunding,
    ) -> Result<(), ApiError> {
        store::set_funding(&mut tx, &run.payout_run_id, funding).await?;
        Ok(tx.commit().await?)
    }

    async fn reserve_step(&self, tx: &mut sqlx::PgConnection, item: &mut ItemRow) -> Result<(), ApiError> {
        let reserved = match self.reserve(item).await {
            // A reservation racing our own earlier call (e.g. after a timeout) loses on the
            // balance lock; asked again, the ledger answers with the item it already reserved.
            Err(err) if err.code == ErrorCode::Conflict => self.reserve(item).await,
            other => other,
        };
        match reserved {
            Ok(()) => self.set(tx, item, ItemStatus::Reserved, None, None).await,
            Err(err) if err.code == ErrorCode::Conflict => {
                // The payable balance changed since the plan (e.g. a clawback): nothing reserved.
                let reason = format!("not paid: {}", err.message);
                self.set(tx, item, ItemStatus::Failed, Some(&reason), None).await?;
                self.announce(tx, item, "failed").await
            }
            Err(err) => Err(err),
        }
    }

    /// Sends the transfer — unless it was asked for before and Stripe already has it (a retry
    /// after a crash, or after Stripe forgot the idempotency key): never a second transfer for
    /// one item. That it is being asked for is committed first.
    async fn transfer_step(
        &self,
        tx: &mut sqlx::PgConnection,
        stripe: &Stripe,
        item: &mut ItemRow,
        charge: Option<&str>,
    ) -> Result<(), ApiError> {
        if !item.transfer_attempted {
            sqlx::query("UPDATE payout_items SET transfer_attempted = true WHERE payout_item_id = $1")
                .bind(&item.payout_item_id)
                .execute(&mut *tx)
                .await?;
            item.transfer_attempted = true;
            return Ok(()); // committed by the caller; the next step sends
        }
        // The fault suite kills the process here: reserved in the ledger, nothing asked of Stripe.
        amba_bus::faults::pause_at("payout-before-transfer").await;
        match stripe.transfers_of(item.group(), &item.payout_item_id).await {
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
        let transfer = ItemTransfer {
            amount_minor: item.net_minor,
            currency: &item.currency,
            destination: &destination,
            transfer_group: item.group(),
            source_transaction: charge,
            payout_item_id: &item.payout_item_id,
            program_id: &item.program_id,
        };
        match stripe.transfer(&transfer).await {
            Ok(transfer) => self.paid(tx, item, &transfer.id).await,
            Err(StripeError::Refused { message, .. }) => {
                // A definite refusal — but look once more before returning the money to payable.
                match stripe.transfers_of(item.group(), &item.payout_item_id).await {
                    Ok(found) if found.is_empty() => {
                        self.void(tx, item, &format!("Stripe refused the transfer: {message}"), true)
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
        stripe: &Stripe,
        item: &mut ItemRow,
    ) -> Result<(), ApiError> {
        match stripe.transfers_of(item.group(), &item.payout_item_id).await {
            Ok(found) => match found.first() {
                Some(transfer) => {
                    let id = transfer.id.clone();
                    self.paid(tx, item, &id).await
                }
                None if self.unknown_for_long(tx, item).await? => {
                    self.void(tx, item, "Stripe has no transfer for this item", true).await
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
            ItemStatus::Unknown,
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
            .await?;
        Ok(())
    }

    /// A transfer Stripe reports (`transfer.created`) for an item still in flight: post it.
    pub async fn transfer_seen(
        &self,
        conn: &mut sqlx::PgConnection,
        item_id: &str,
        transfer_id: &str,
    ) -> Result<bool, ApiError> {
        let Some(mut item) = store::lock_item(conn, item_id).await? else {
            return Ok(false); // not one of ours
        };
        if matches!(item.status, ItemStatus::Reserved | ItemStatus::Unknown) {
            self.paid(conn, &mut item, transfer_id).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn reserve(&self, item: &ItemRow) -> Result<(), ApiError> {
        let _ = self
            .rpc
            .call(
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
        let _ = self
            .rpc
            .call(
                ledger::PAYOUT_POST,
                &pb::PostPayoutRequest {
                    payout_item_id: item.payout_item_id.clone(),
                    fee_minor: item.fee_minor,
                },
            )
            .await?;
        self.set(conn, item, ItemStatus::Paid, None, Some(transfer_id)).await?;
        item.reason = None;
        sqlx::query("UPDATE payout_items SET reason = NULL WHERE payout_item_id = $1")
            .bind(&item.payout_item_id)
            .execute(&mut *conn)
            .await?;
        self.announce(conn, item, "sent").await
    }

    /// Returns the reservation to payable; `tell` e-mails the affiliate (not for the owner's
    /// declined card, which is the owner's business).
    async fn void(
        &self,
        conn: &mut sqlx::PgConnection,
        item: &mut ItemRow,
        reason: &str,
        tell: bool,
    ) -> Result<(), ApiError> {
        let _ = self
            .rpc
            .call(
                ledger::PAYOUT_VOID,
                &pb::VoidPayoutRequest {
                    payout_item_id: item.payout_item_id.clone(),
                },
            )
            .await?;
        self.set(conn, item, ItemStatus::Failed, Some(reason), None).await?;
        if tell {
            self.announce(conn, item, "failed").await?;
        }
        Ok(())
    }

    async fn set(
        &self,
        conn: &mut sqlx::PgConnection,
        item: &mut ItemRow,
        status: ItemStatus,
        reason: Option<&str>,
        transfer_id: Option<&str>,
    ) -> Result<(), ApiError> {
        if !item.status.can_become(status) {
            tracing::error!(payout_item_id = %item.payout_item_id, from = %item.status, to = %status, "payout item step refused");
            return Err(ApiError::internal());
        }
        store::set_item(conn, &item.payout_item_id, status, reason, transfer_id).await?;
        item.status = status;
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
        .await?;
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
        Ok(amba_bus::outbox::enqueue(conn, &OutboxEvent::new(self.ns.event("payout", kind), &meta, &body)).await?)
    }
}

/// Moves a run's charge to `next`, if that is a step of [`FundingStatus::can_become`].
fn step(run: &RunRow, funding: &mut RunFunding, next: FundingStatus) -> Result<(), ApiError> {
    if !funding.funding_status.can_become(next) {
        tracing::error!(payout_run_id = %run.payout_run_id, from = %funding.funding_status, to = %next, "payout run charge step refused");
        return Err(ApiError::internal());
    }
    funding.funding_status = next;
    Ok(())
}

pub fn stripe_missing() -> ApiError {
    ApiError::unavailable(
        "payouts need Stripe: AMBA_STRIPE_SECRET_KEY is not set on this deployment (amba dev uses a local fake Stripe)",
    )
}

/// Locks an item unless another settler holds it.
async fn lock_free(tx: &mut sqlx::PgConnection, item_id: &str) -> Result<Option<ItemRow>, ApiError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{} WHERE payout_item_id = $1 FOR UPDATE SKIP LOCKED",
        store::ITEM
    )))
    .bind(item_id)
    .fetch_optional(tx)
    .await?)
}

/// What a failed charge leaves on each of the run's items.
fn funding_failure_reason(funding: &RunFunding) -> String {
    format!(
        "FUNDING_FAILED: the program owner's payment was declined ({}); nothing was transferred and the commission \
         stays payable",
        funding.decline_code.as_deref().unwrap_or("declined")
    )
}
