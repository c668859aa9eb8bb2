//! What the payout service learns from events:
//! - enrollment's `program.*`: who owns a program, its currency and payout schedule;
//! - Stripe webhooks (published by the edge, one message per Stripe event id): account
//!   readiness, owners' saved payment methods (Checkout setup), transfers created and reversed —
//!   each checked against Stripe's own copy before anything changes — and connected accounts'
//!   bank payouts;
//! - settlement ticks: scheduled programs due this period get their run (once per period).

use crate::domain::schedule;
use crate::rpc::Payout;
use crate::store::{self, RunRow};
use amba_bus::consumer::{Delivery, Handler, HandlerError};
use amba_bus::events::{OutboxEvent, new_meta};
use amba_core::id::PayoutRunId;
use amba_proto::methods::commission as ledger;
use amba_proto::wire as pb;
use chrono::{DateTime, Utc};
use prost::Message;
use serde_json::Value;
use sqlx::PgConnection;

fn retry(err: impl std::fmt::Display) -> HandlerError {
    HandlerError::Retry(anyhow::anyhow!("{err}"))
}

/// `program.*` from the enrollment stream.
pub struct ProgramEvents;

impl Handler for ProgramEvents {
    async fn handle(&self, conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        let event = pb::ProgramChanged::decode(delivery.payload.as_ref())?;
        let program = event
            .program
            .ok_or_else(|| HandlerError::Permanent("program event without a program".into()))?;
        store::upsert_program(conn, &program).await?;
        Ok(())
    }
}

/// Stripe webhooks and settlement ticks (the edge stream).
pub struct OutsideEvents {
    pub payout: Payout,
}

impl Handler for OutsideEvents {
    async fn handle(&self, conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        match delivery.event() {
            ("settlement", "tick") => {
                let tick = pb::SettlementTick::decode(delivery.payload.as_ref())?;
                let at = DateTime::from_timestamp_micros(tick.at_micros).unwrap_or_else(Utc::now);
                return self.settle_due(conn, at).await;
            }
            // The edge's verified webhooks.
            ("stripe", _) => {}
            // Where orgs call from: attribution's (NATS 2.9 ignores this consumer's filters).
            ("caller", _) => return Ok(()),
            // No one's to apply here (the consumer's filters keep it out; NATS 2.9 ignores them).
            _ => {
                return Err(HandlerError::Permanent(format!(
                    "{} is neither a Stripe event nor a settlement tick",
                    delivery.subject
                )));
            }
        }
        let event: Value = serde_json::from_slice(&delivery.payload)
            .map_err(|e| HandlerError::Permanent(format!("Stripe event is not JSON: {e}")))?;
        let kind = event["type"].as_str().unwrap_or_default();
        let account = event["account"].as_str();
        let object = &event["data"]["object"];
        if !store::record_stripe_event(conn, &delivery.event_id, kind, account, &event).await? {
            return Ok(()); // applied before
        }
        match kind {
            "account.updated" => self.account_updated(conn, object).await,
            "checkout.session.completed" => match object["setup_intent"].as_str() {
                Some(setup_intent) if object["mode"] == "setup" => self.setup_succeeded(conn, setup_intent).await,
                _ => Ok(()),
            },
            "setup_intent.succeeded" => match object["id"].as_str() {
                Some(setup_intent) => self.setup_succeeded(conn, setup_intent).await,
                None => Ok(()),
            },
            "transfer.created" => {
                let Some((item, transfer)) = self.checked_transfer(conn, &delivery.event_id, object).await? else {
                    return Ok(());
                };
                self.payout
                    .settler
                    .transfer_seen(conn, &item.payout_item_id, &transfer.id)
                    .await
                    .map(drop)
                    .map_err(retry)
            }
            "transfer.reversed" => self.transfer_reversed(conn, &delivery.event_id, object).await,
            "payout.paid" | "payout.failed" => self.bank_payout(conn, kind, account, object).await,
            _ => Ok(()), // recorded; nothing to do
        }
    }
}

impl OutsideEvents {
    async fn account_updated(&self, conn: &mut PgConnection, account: &Value) -> Result<(), HandlerError> {
        let Some(id) = account["id"].as_str() else {
            return Ok(());
        };
        if store::account_of_stripe(conn, id).await?.is_none() {
            return Ok(()); // an account this deployment did not create
        }
        // Events arrive unordered: the account as Stripe has it now decides, not this snapshot.
        let (transfers_active, payouts_enabled) = match &self.payout.settler.stripe {
            Some(stripe) => {
                let now = stripe.account(id).await.map_err(retry)?;
                (now.transfers_active(), now.payouts_enabled)
            }
            None => (
                account["capabilities"]["transfers"].as_str() == Some("active"),
                account["payouts_enabled"].as_bool().unwrap_or(false),
            ),
        };
        let Some((before, after)) = store::update_readiness(conn, id, transfers_active, payouts_enabled).await? else {
            return Ok(()); // an account this deployment did not create
        };
        if after.ready() && !before.ready() {
            self.announce_account(conn, "account_ready", &after, 0, "", "").await?;
        }
        Ok(())
    }

    /// An owner saved a payment method (Checkout in setup mode): the SetupIntent as Stripe has it
    /// now decides, not the event's copy; it becomes what the owner's runs are charged to.
    async fn setup_succeeded(&self, conn: &mut PgConnection, setup_intent: &str) -> Result<(), HandlerError> {
        let Some(stripe) = &self.payout.settler.stripe else {
            return Ok(());
        };
        let intent = stripe.setup_intent(setup_intent).await.map_err(retry)?;
        let (Some(customer), Some(method)) = (intent.customer.as_deref(), intent.payment_method.as_deref()) else {
            return Ok(());
        };
        if intent.status != "succeeded" {
            return Ok(());
        }
        let Some(funding) = store::funding_of_customer(conn, customer).await? else {
            return Ok(()); // a customer this deployment did not create
        };
        let card = stripe.payment_method(method).await.map_err(retry)?;
        if store::set_payment_method(conn, &funding.org_id, method, card.brand(), card.last4()).await? {
            tracing::info!(org_id = %funding.org_id, "payout funding ready: payment method saved");
        }
        Ok(())
    }

    /// The item a `transfer.*` event is about, with the transfer as Stripe has it now — only when
    /// they match (amount, currency, destination, group). A mismatch is logged at ERROR, counted
    /// (`amba_stripe_transfer_mismatches_total`) and changes nothing.
    async fn checked_transfer(
        &self,
        conn: &mut PgConnection,
        event_id: &str,
        object: &Value,
    ) -> Result<Option<(store::ItemRow, crate::stripe::Transfer)>, HandlerError> {
        let Some(stripe) = &self.payout.settler.stripe else {
            return Ok(None);
        };
        let Some(transfer_id) = object["id"].as_str() else {
            return Ok(None);
        };
        let item_id = object["metadata"]["payout_item_id"]
            .as_str()
            .or_else(|| object["transfer_group"].as_str())
            .unwrap_or_default();
        let Some(item) = store::item(conn, item_id).await? else {
            return Ok(None); // not a payout of ours
        };
        let transfer = stripe.transfer_by_id(transfer_id).await.map_err(retry)?;
        let mismatch = transfer_mismatch(&item, &transfer);
        if let Some(what) = mismatch {
            tracing::error!(%event_id, %transfer_id, payout_item_id = %item.payout_item_id, %what, "Stripe transfer does not match its payout item; nothing changed");
            amba_telemetry::metrics::counter!("amba_stripe_transfer_mismatches_total").increment(1);
            return Ok(None);
        }
        Ok(Some((item, transfer)))
    }

    /// Each reversal of a transfer goes to the ledger once (keyed by the reversal id): the money
    /// returned settles debt first, then recovers the commissions the transfer paid.
    async fn transfer_reversed(
        &self,
        conn: &mut PgConnection,
        event_id: &str,
        object: &Value,
    ) -> Result<(), HandlerError> {
        let Some((item, transfer)) = self.checked_transfer(conn, event_id, object).await? else {
            return Ok(());
        };
        let item_id = item.payout_item_id.as_str();
        // A reversal proves the transfer exists: an item still in flight is posted first, so the
        // ledger takes the reversal instead of refusing it until the event is dead-lettered.
        self.payout
            .settler
            .transfer_seen(conn, item_id, &transfer.id)
            .await
            .map_err(retry)?;
        // Reversals as Stripe has them now (the event's copy may be older).
        let reversals = transfer.reversals["data"].as_array().cloned().unwrap_or_default();
        for reversal in reversals {
            let (Some(id), Some(amount)) = (reversal["id"].as_str(), reversal["amount"].as_i64()) else {
                continue;
            };
            let _ = self
                .payout
                .settler
                .rpc
                .call(
                    ledger::TRANSFER_REVERSAL,
                    &pb::TransferReversalRequest {
                        reversal_id: id.to_owned(),
                        payout_item_id: item_id.to_owned(),
                        amount_minor: amount,
                        conversion_ids: Vec::new(),
                    },
                )
                .await
                .map_err(retry)?;
        }
        Ok(())
    }

    async fn bank_payout(
        &self,
        conn: &mut PgConnection,
        kind: &str,
        account: Option<&str>,
        payout: &Value,
    ) -> Result<(), HandlerError> {
        let Some(account) = account else { return Ok(()) };
        let Some(row) = store::account_of_stripe(conn, account).await? else {
            return Ok(());
        };
        let event = if kind == "payout.paid" {
            "paid"
        } else {
            "failed_to_bank"
        };
        self.announce_account(
            conn,
            event,
            &row,
            payout["amount"].as_i64().unwrap_or(0),
            &payout["currency"].as_str().unwrap_or_default().to_uppercase(),
            payout["failure_message"].as_str().unwrap_or_default(),
        )
        .await
    }

    async fn announce_account(
        &self,
        conn: &mut PgConnection,
        kind: &str,
        account: &store::AccountRow,
        amount_minor: i64,
        currency: &str,
        failure_reason: &str,
    ) -> Result<(), HandlerError> {
        let meta = new_meta();
        let body = pb::PayoutAccountChanged {
            meta: Some(meta.clone()),
            account: Some(account.to_proto()),
            amount_minor,
            currency: currency.to_owned(),
            failure_reason: failure_reason.to_owned(),
        };
        let ns = &self.payout.settler.ns;
        amba_bus::outbox::enqueue(conn, &OutboxEvent::new(ns.event("payout", kind), &meta, &body)).await?;
        Ok(())
    }

    /// Creates the run of every scheduled program due in the tick's period (the unique
    /// (program, period) index makes it once however many ticks arrive); the in-flight job pays
    /// its items. With payouts off, nothing is created: a later tick in the period pays once
    /// they are on.
    async fn settle_due(&self, conn: &mut PgConnection, at: DateTime<Utc>) -> Result<(), HandlerError> {
        if !self.payout.payouts_live || self.payout.settler.stripe.is_none() {
            tracing::info!("settlement tick: payouts are not enabled; nothing scheduled is paid");
            return Ok(());
        }
        for program in store::scheduled_programs(conn).await? {
            let Some(period) = schedule::period(&program.payout_schedule, at) else {
                continue;
            };
            let mut run = RunRow {
                funding: store::RunFunding::default(),
                payout_run_id: PayoutRunId::new().to_string(),
                program_id: program.program_id.clone(),
                trigger: "schedule".into(),
                period: Some(period.clone()),
                currency: program.currency.clone(),
                idempotency_key: format!("schedule:{period}"),
                created_at: at,
            };
            if store::run_by_key(conn, &program.program_id, &run.idempotency_key)
                .await?
                .is_some()
            {
                continue;
            }
            // One program's trouble (not enabled, not funded, over a cap, the ledger busy) must not
            // hold up the others; a later tick of the same period settles it once resolved.
            let mut items = match self.scheduled_items(conn, &program, &mut run).await {
                Ok(items) => items,
                Err(err) => {
                    tracing::warn!(program_id = %program.program_id, error = %err, "scheduled run not created; a later tick retries");
                    continue;
                }
            };
            if store::insert_run(conn, &run).await? {
                for item in &mut items {
                    item.payout_run_id = run.payout_run_id.clone();
                }
                store::insert_items(conn, &items).await?;
                tracing::info!(program_id = %program.program_id, %period, items = items.len(), "scheduled payout run created");
            }
        }
        Ok(())
    }

    /// The items of a scheduled run, once its owner passes the same checks as a live run on
    /// demand: enabled, funded when it charges anything, within caps. Sets the run's funding.
    async fn scheduled_items(
        &self,
        conn: &mut PgConnection,
        program: &store::ProgramRow,
        run: &mut RunRow,
    ) -> Result<Vec<store::ItemRow>, amba_core::ApiError> {
        let owner = program.owner_org_id.as_str();
        crate::rpc::org_enabled(conn, owner).await?;
        let items = self.payout.plan_items(conn, program, &run.payout_run_id).await?.items;
        let funding = store::funding_of_org(conn, owner).await?.unwrap_or_default();
        let total = crate::rpc::charge_total(&items);
        crate::rpc::check_fundable(conn, owner, &program.currency, &funding, total).await?;
        run.funding = store::RunFunding::new(owner, &funding, &run.payout_run_id);
        Ok(items)
    }
}

/// What differs between a transfer at Stripe and the payout item it claims to pay.
fn transfer_mismatch(item: &store::ItemRow, transfer: &crate::stripe::Transfer) -> Option<String> {
    let destination = transfer.destination.as_deref().unwrap_or_default();
    let group = transfer.transfer_group.as_deref().unwrap_or_default();
    if transfer.payout_item_id() != Some(item.payout_item_id.as_str()) {
        Some(format!("payout item {:?}", transfer.payout_item_id()))
    } else if transfer.amount != item.net_minor {
        Some(format!("amount {} (expected {})", transfer.amount, item.net_minor))
    } else if !transfer.currency.eq_ignore_ascii_case(&item.currency) {
        Some(format!("currency {} (expected {})", transfer.currency, item.currency))
    } else if item.stripe_account_id.as_deref() != Some(destination) {
        Some(format!(
            "destination {destination} (expected {:?})",
            item.stripe_account_id
        ))
    } else if group != item.group() {
        Some(format!("transfer_group {group} (expected {})", item.group()))
    } else {
        None
    }
}
