//! Refunds of succeeded charges: `POST /v1/refunds` (by `charge` or `payment_intent`), the
//! refund's effect on its charge (`amount_refunded`, `refunded`, hence what a transfer with
//! `source_transaction` can still take from it), and the lists.

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::form::Form;
use crate::payments::previous_attributes;
use crate::state::{LIST_PARAMS, State, matches, metadata, new_id, page, positive_amount};

/// The reasons a caller may give (`expired_uncaptured_charge` is Stripe's own).
const REASONS: [&str; 3] = ["duplicate", "fraudulent", "requested_by_customer"];

impl State {
    /// `POST /v1/refunds` {charge | payment_intent, amount?, reason?, metadata?}: refunds `amount`
    /// (default: all not yet refunded) of a succeeded charge (a payment intent's `latest_charge`).
    /// The charge's `amount_refunded` and `refunded` follow; emits `refund.created`, then
    /// `charge.refunded`. Everything is checked before anything changes.
    pub(crate) fn create_refund(&mut self, form: &Form, now: i64) -> Result<Value, ApiError> {
        form.allow(
            &["charge", "payment_intent", "amount", "reason"],
            &["metadata", "expand"],
        )?;
        let charge_param = form.get("charge").filter(|c| !c.is_empty());
        let intent_param = form.get("payment_intent").filter(|p| !p.is_empty());
        let requested = form.get("amount").map(positive_amount).transpose()?;
        let reason = match form.get("reason").filter(|r| !r.is_empty()) {
            None => None,
            Some(r) if REASONS.contains(&r) => Some(r),
            Some(r) => {
                return Err(ApiError::invalid(
                    format!(
                        "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer (got '{r}')"
                    ),
                    "reason",
                ));
            }
        };
        let metadata = metadata(form)?;
        let (param, charge_id) = match (charge_param, intent_param) {
            (Some(charge), None) => ("charge", charge.to_owned()),
            (None, Some(intent)) => ("payment_intent", self.refundable_charge_of(intent)?),
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "You may only specify one of these parameters: charge, payment_intent.",
                    "payment_intent",
                ));
            }
            (None, None) => {
                return Err(
                    ApiError::invalid("Missing required param: one of charge or payment_intent.", "charge")
                        .code("parameter_missing"),
                );
            }
        };
        let index = self
            .charges
            .iter()
            .position(|c| c["id"] == charge_id.as_str())
            .ok_or_else(|| {
                ApiError::invalid(format!("No such charge: '{charge_id}'"), "charge").code("resource_missing")
            })?;
        let charge = &self.charges[index];
        if charge["status"] != "succeeded" {
            return Err(ApiError::invalid(
                format!(
                    "Charge {charge_id} has {}; only a succeeded charge can be refunded.",
                    match charge["status"].as_str() {
                        Some("failed") => "failed",
                        _ => "not succeeded",
                    }
                ),
                param,
            )
            .code("charge_not_refundable"));
        }
        let total = charge["amount"].as_i64().unwrap_or(0);
        let refunded = charge["amount_refunded"].as_i64().unwrap_or(0);
        let remaining = total - refunded;
        if remaining <= 0 {
            return Err(
                ApiError::invalid(format!("Charge {charge_id} has already been refunded."), param)
                    .code("charge_already_refunded"),
            );
        }
        let currency = charge["currency"].as_str().unwrap_or_default().to_owned();
        let amount = requested.unwrap_or(remaining);
        if amount > remaining {
            return Err(ApiError::invalid(
                format!(
                    "Refund amount ({amount} {currency}) is greater than unrefunded amount on charge \
                     ({remaining} {currency})"
                ),
                "amount",
            )
            .code("amount_too_large"));
        }

        let refund = json!({
            "id": new_id("re", 24),
            "object": "refund",
            "amount": amount,
            "balance_transaction": new_id("txn", 24),
            "charge": charge_id,
            "created": now,
            "currency": currency,
            "destination_details": null,
            "metadata": metadata,
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "receipt_number": null,
            "source_transfer_reversal": null,
            "status": "succeeded",
            "transfer_reversal": null,
        });
        self.refunds.push(refund.clone());
        let charge = &mut self.charges[index];
        let before = charge.clone();
        charge["amount_refunded"] = json!(refunded + amount);
        charge["refunded"] = json!(refunded + amount == total);
        let charge = charge.clone();
        let previous = previous_attributes(&before, &charge);
        self.emit("refund.created", refund.clone(), None, None, now);
        self.emit("charge.refunded", charge, None, Some(previous), now);
        Ok(refund)
    }

    /// The charge a refund by `payment_intent` refunds: its `latest_charge`, once it succeeded.
    fn refundable_charge_of(&self, intent: &str) -> Result<String, ApiError> {
        let found = self.payment_intents.iter().find(|p| p["id"] == intent).ok_or_else(|| {
            ApiError::invalid(format!("No such payment_intent: '{intent}'"), "payment_intent").code("resource_missing")
        })?;
        match found["latest_charge"].as_str() {
            Some(charge) if found["status"] == "succeeded" => Ok(charge.to_owned()),
            _ => Err(ApiError::invalid(
                format!("This PaymentIntent ({intent}) does not have a successful charge to refund."),
                "payment_intent",
            )
            .code("charge_not_refundable")),
        }
    }

    pub(crate) fn refund(&self, id: &str) -> Result<&Value, ApiError> {
        self.refunds
            .iter()
            .find(|r| r["id"] == id)
            .ok_or_else(|| ApiError::missing("refund", id, "refund"))
    }

    /// `GET /v1/refunds?charge=&payment_intent=`: newest first, paged, `created` filters.
    pub(crate) fn list_refunds(&self, form: &Form) -> Result<Value, ApiError> {
        const FILTERS: [&str; 2] = ["charge", "payment_intent"];
        form.allow(&[&FILTERS[..], LIST_PARAMS].concat(), &["expand", "created"])?;
        let matching = self.refunds.iter().filter(|r| matches(form, &FILTERS, r));
        page(matching, form, "/v1/refunds", "refund")
    }

    /// `GET /v1/charges/{id}/refunds`: the charge's refunds, newest first, paged.
    pub(crate) fn list_charge_refunds(&self, id: &str, form: &Form) -> Result<Value, ApiError> {
        self.charge(id)?;
        form.allow(LIST_PARAMS, &["expand", "created"])?;
        let matching = self.refunds.iter().filter(|r| r["charge"] == id);
        page(matching, form, &format!("/v1/charges/{id}/refunds"), "refund")
    }

    /// A charge's `refunds` as Stripe renders it when asked with `expand[]=refunds` (API versions
    /// since 2022-11-15 leave it out otherwise): every refund, newest first.
    pub(crate) fn charge_refunds(&self, id: &str) -> Value {
        let data: Vec<Value> = self
            .refunds
            .iter()
            .rev()
            .filter(|r| r["charge"] == id)
            .cloned()
            .collect();
        json!({
            "object": "list",
            "total_count": data.len(),
            "data": data,
            "has_more": false,
            "url": format!("/v1/charges/{id}/refunds"),
        })
    }
}
