//! The fake's data and the operations on it, shared by the HTTP API and the Rust helpers so both
//! behave the same. Objects are kept as the JSON Stripe would return, with every field a typed
//! client (async-stripe) expects present, `null` where Stripe sends `null`.

use std::collections::HashMap;

use axum::http::StatusCode;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::form::Form;
use crate::{Fault, FaultKind};

/// The API version the fake renders events for.
pub(crate) const API_VERSION: &str = "2025-01-27.acacia";
/// Account links are valid this long (seconds), as on Stripe.
pub(crate) const LINK_TTL: i64 = 300;

#[derive(Default)]
pub(crate) struct State {
    pub(crate) accounts: Vec<Value>,
    pub(crate) transfers: Vec<Value>,
    pub(crate) customers: Vec<Value>,
    pub(crate) payment_methods: Vec<Value>,
    pub(crate) setup_intents: Vec<Value>,
    pub(crate) checkout_sessions: Vec<Value>,
    pub(crate) payment_intents: Vec<Value>,
    pub(crate) charges: Vec<Value>,
    pub(crate) refunds: Vec<Value>,
    /// `setup_intent_data` of each checkout session by id (not part of the session object).
    pub(crate) setup_intent_data: HashMap<String, Value>,
    pub(crate) events: Vec<Value>,
    links: HashMap<String, Link>,
    pub(crate) idempotency: HashMap<String, Saved>,
    faults: Vec<Fault>,
    pub(crate) webhook_url: Option<String>,
    /// The `request` of events emitted by the API call in progress (`{"id","idempotency_key"}`).
    pub(crate) request: Option<Value>,
    /// Events to deliver once the lock is released: (url, event).
    pub(crate) outbox: Vec<(String, Value)>,
}

/// A response saved under an idempotency key.
pub(crate) struct Saved {
    pub(crate) path: String,
    pub(crate) params: Vec<(String, String)>,
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

struct Link {
    account: String,
    refresh_url: String,
    return_url: String,
    expires_at: i64,
    used: bool,
}

/// What visiting an onboarding link does.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Visit {
    /// Onboarding completed: redirect to the link's return_url.
    Completed { return_url: String },
    /// Never issued, or already used (links are single use).
    Unknown,
    /// Past `expires_at`: the platform must create a new link (refresh_url says where).
    Expired { refresh_url: String },
}

pub(crate) fn new_id(prefix: &str, len: usize) -> String {
    let suffix: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    format!("{prefix}_{suffix}")
}

impl State {
    // ---- faults -------------------------------------------------------------------------

    pub(crate) fn add_fault(&mut self, fault: Fault) {
        if fault.times > 0 {
            self.faults.push(fault);
        }
    }

    /// Consumes one use of the first fault whose prefix matches `path`.
    pub(crate) fn take_fault(&mut self, path: &str) -> Option<FaultKind> {
        let index = self.faults.iter().position(|f| path.starts_with(&f.path_prefix))?;
        let fault = &mut self.faults[index];
        let kind = fault.kind.clone();
        fault.times -= 1;
        if fault.times == 0 {
            self.faults.remove(index);
        }
        Some(kind)
    }

    // ---- events -------------------------------------------------------------------------

    /// Records an event and queues it for delivery when a webhook URL is set. `account` marks a
    /// Connect event (one that happened on a connected account).
    pub(crate) fn emit(
        &mut self,
        kind: &str,
        object: Value,
        account: Option<&str>,
        previous: Option<Value>,
        now: i64,
    ) -> Value {
        let mut data = json!({ "object": object });
        if let Some(previous) = previous {
            data["previous_attributes"] = previous;
        }
        let mut event = json!({
            "id": new_id("evt", 24),
            "object": "event",
            "type": kind,
            "created": now,
            "livemode": false,
            "api_version": API_VERSION,
            "pending_webhooks": u8::from(self.webhook_url.is_some()),
            "request": self.request.clone().unwrap_or_else(|| json!({"id": null, "idempotency_key": null})),
            "data": data,
        });
        if let Some(account) = account {
            event["account"] = json!(account);
        }
        self.events.push(event.clone());
        if let Some(url) = &self.webhook_url {
            self.outbox.push((url.clone(), event.clone()));
        }
        event
    }

    // ---- accounts -----------------------------------------------------------------------

    pub(crate) fn create_account(&mut self, form: &Form, now: i64) -> Result<Value, ApiError> {
        form.allow(
            &["country", "email", "type", "business_type", "default_currency"],
            &[
                "capabilities",
                "controller",
                "metadata",
                "business_profile",
                "settings",
                "tos_acceptance",
                "individual",
                "company",
                "expand",
            ],
        )?;
        let country = match form.get("country") {
            None => "US".to_owned(),
            Some(c) if c.len() == 2 && c.chars().all(|ch| ch.is_ascii_alphabetic()) => c.to_ascii_uppercase(),
            Some(c) => return Err(ApiError::invalid(format!("Country '{c}' is unknown."), "country")),
        };
        let email = form.get("email").filter(|e| !e.is_empty());
        if let Some(email) = email
            && !email.contains('@')
        {
            return Err(ApiError::invalid("Invalid email address: ".to_owned() + email, "email").code("email_invalid"));
        }
        let account_type = match form.get("type") {
            None => "none",
            Some(t @ ("standard" | "express" | "custom")) => t,
            Some(t) => {
                return Err(ApiError::invalid(
                    format!("Invalid type: must be one of standard, express, or custom (got '{t}')"),
                    "type",
                ));
            }
        };
        // Each requested capability starts inactive until onboarding completes.
        let mut capabilities = Map::new();
        for (name, value) in form.nested("capabilities") {
            if value.get("requested").and_then(Value::as_str) == Some("true") {
                capabilities.insert(name, json!("inactive"));
            }
        }
        let mut controller = form.nested("controller");
        controller.insert("is_controller".to_owned(), json!(true));
        controller.insert("type".to_owned(), json!("application"));
        let account = json!({
            "id": new_id("acct", 16),
            "object": "account",
            "business_profile": Value::Object(form.nested("business_profile")),
            "business_type": form.get("business_type"),
            "capabilities": capabilities,
            "charges_enabled": false,
            "controller": controller,
            "country": country,
            "created": now,
            "default_currency": form.get("default_currency").map(str::to_ascii_lowercase)
                .or_else(|| (country == "US").then(|| "usd".to_owned())),
            "details_submitted": false,
            "email": email,
            "metadata": metadata(form)?,
            "payouts_enabled": false,
            "requirements": requirements(false),
            "type": account_type,
        });
        self.accounts.push(account.clone());
        Ok(account)
    }

    pub(crate) fn account(&self, id: &str) -> Result<&Value, ApiError> {
        self.accounts
            .iter()
            .find(|a| a["id"] == id)
            .ok_or_else(|| ApiError::missing("account", id, "account"))
    }

    /// What finishing Stripe-hosted onboarding does: requested capabilities become active and
    /// payouts are enabled. Emits `account.updated` (a Connect event) only when something changed.
    pub(crate) fn complete_onboarding(&mut self, id: &str, now: i64) -> Result<(), ApiError> {
        let account = self
            .accounts
            .iter_mut()
            .find(|a| a["id"] == id)
            .ok_or_else(|| ApiError::missing("account", id, "account"))?;
        let before = account.clone();
        if let Some(caps) = account["capabilities"].as_object_mut() {
            // An account always gets transfers once onboarded for payouts.
            caps.entry("transfers").or_insert(json!("inactive"));
            for status in caps.values_mut() {
                *status = json!("active");
            }
        }
        account["payouts_enabled"] = json!(true);
        account["details_submitted"] = json!(true);
        account["requirements"] = requirements(true);
        if *account == before {
            return Ok(());
        }
        let previous = json!({
            "capabilities": before["capabilities"],
            "payouts_enabled": before["payouts_enabled"],
            "details_submitted": before["details_submitted"],
            "requirements": before["requirements"],
        });
        let account = account.clone();
        self.emit("account.updated", account, Some(id), Some(previous), now);
        Ok(())
    }

    // ---- account links ------------------------------------------------------------------

    pub(crate) fn create_account_link(&mut self, form: &Form, base_url: &str, now: i64) -> Result<Value, ApiError> {
        form.allow(
            &["account", "refresh_url", "return_url", "type", "collect"],
            &["collection_options", "expand"],
        )?;
        let account = form.required("account")?;
        self.account(account)?;
        let kind = form.required("type")?;
        if kind != "account_onboarding" && kind != "account_update" {
            return Err(ApiError::invalid(
                format!("Invalid type: must be one of account_onboarding or account_update (got '{kind}')"),
                "type",
            ));
        }
        let refresh_url = form.required("refresh_url")?.to_owned();
        let return_url = form.required("return_url")?.to_owned();
        let id = new_id("al", 24);
        let expires_at = now + LINK_TTL;
        self.links.insert(
            id.clone(),
            Link {
                account: account.to_owned(),
                refresh_url,
                return_url,
                expires_at,
                used: false,
            },
        );
        Ok(json!({
            "object": "account_link",
            "created": now,
            "expires_at": expires_at,
            "url": format!("{base_url}/connect/onboarding/{id}"),
        }))
    }

    /// Visiting a link completes onboarding once; the link is then spent.
    pub(crate) fn visit_link(&mut self, id: &str, now: i64) -> Visit {
        let Some(link) = self.links.get_mut(id).filter(|l| !l.used) else {
            return Visit::Unknown;
        };
        if now > link.expires_at {
            return Visit::Expired {
                refresh_url: link.refresh_url.clone(),
            };
        }
        link.used = true;
        let account = link.account.clone();
        let return_url = link.return_url.clone();
        // The account existed when the link was made and accounts are never deleted.
        if self.complete_onboarding(&account, now).is_err() {
            return Visit::Unknown;
        }
        Visit::Completed { return_url }
    }

    // ---- transfers ----------------------------------------------------------------------

    pub(crate) fn create_transfer(&mut self, form: &Form, now: i64) -> Result<Value, ApiError> {
        form.allow(
            &[
                "amount",
                "currency",
                "destination",
                "transfer_group",
                "description",
                "source_transaction",
                "source_type",
            ],
            &["metadata", "expand"],
        )?;
        let amount = positive_amount(form.required("amount")?)?;
        let currency = currency(form.required("currency")?)?;
        let destination = form.required("destination")?;
        let metadata = metadata(form)?;
        let Some(account) = self.accounts.iter().find(|a| a["id"] == destination) else {
            return Err(
                ApiError::invalid(format!("No such destination: '{destination}'"), "destination")
                    .code("resource_missing"),
            );
        };
        if account["capabilities"]["transfers"] != "active" {
            return Err(ApiError::invalid(
                "Your destination account needs to have at least one of the following capabilities enabled: \
                 transfers, crypto_transfers, legacy_payments",
                "destination",
            )
            .code("insufficient_capabilities_for_transfer"));
        }
        let mut transfer_group = form.get("transfer_group").map(str::to_owned);
        let source_transaction = form.get("source_transaction").filter(|s| !s.is_empty());
        if let Some(charge) = source_transaction {
            // The charge funds the transfer; without a group of its own it joins the charge's.
            let charge_group = self.check_source_transaction(charge, amount, &currency)?;
            transfer_group = transfer_group.or(charge_group);
        }
        let id = new_id("tr", 24);
        let transfer = json!({
            "id": id,
            "object": "transfer",
            "amount": amount,
            "amount_reversed": 0,
            "balance_transaction": new_id("txn", 24),
            "created": now,
            "currency": currency,
            "description": form.get("description"),
            "destination": destination,
            "destination_payment": new_id("py", 24),
            "livemode": false,
            "metadata": metadata,
            "reversals": {
                "object": "list",
                "data": [],
                "has_more": false,
                "total_count": 0,
                "url": format!("/v1/transfers/{id}/reversals"),
            },
            "reversed": false,
            "source_transaction": source_transaction,
            "source_type": form.get("source_type").unwrap_or("card"),
            "transfer_group": transfer_group,
        });
        self.transfers.push(transfer.clone());
        self.emit("transfer.created", transfer.clone(), None, None, now);
        Ok(transfer)
    }

    pub(crate) fn transfer(&self, id: &str) -> Result<&Value, ApiError> {
        self.transfers
            .iter()
            .find(|t| t["id"] == id)
            .ok_or_else(|| ApiError::missing("transfer", id, "id"))
    }

    /// `GET /v1/transfers`: newest first, filtered by `transfer_group` / `destination` and
    /// `created`, paged (see [`page`]).
    pub(crate) fn list_transfers(&self, form: &Form) -> Result<Value, ApiError> {
        const FILTERS: [&str; 2] = ["transfer_group", "destination"];
        form.allow(&[&FILTERS[..], LIST_PARAMS].concat(), &["expand", "created"])?;
        let matching = self.transfers.iter().filter(|t| matches(form, &FILTERS, t));
        page(matching, form, "/v1/transfers", "transfer")
    }

    /// `POST /v1/transfers/{id}/reversals`: the amount defaults to what is left; the transfer's
    /// `amount_reversed`, `reversed` and `reversals` follow, and `transfer.reversed` is emitted.
    pub(crate) fn reverse_transfer(&mut self, id: &str, form: &Form, now: i64) -> Result<Value, ApiError> {
        form.allow(
            &["amount", "description", "refund_application_fee"],
            &["metadata", "expand"],
        )?;
        let requested = form.get("amount").map(positive_amount).transpose()?;
        let metadata = metadata(form)?;
        let transfer = self
            .transfers
            .iter_mut()
            .find(|t| t["id"] == id)
            .ok_or_else(|| ApiError::missing("transfer", id, "id"))?;
        let total = transfer["amount"].as_i64().unwrap_or(0);
        let reversed = transfer["amount_reversed"].as_i64().unwrap_or(0);
        let remaining = total - reversed;
        if remaining == 0 {
            return Err(ApiError::invalid(
                format!("Transfer {id} is already fully reversed."),
                "amount",
            ));
        }
        let amount = requested.unwrap_or(remaining);
        if amount > remaining {
            return Err(ApiError::invalid(
                format!(
                    "You cannot reverse more than the remaining amount on transfer {id}: \
                     requested {amount}, remaining {remaining}."
                ),
                "amount",
            ));
        }
        let reversal = json!({
            "id": new_id("trr", 24),
            "object": "transfer_reversal",
            "amount": amount,
            "balance_transaction": new_id("txn", 24),
            "created": now,
            "currency": transfer["currency"],
            "destination_payment_refund": new_id("pyr", 24),
            "metadata": metadata,
            "source_refund": null,
            "transfer": id,
        });
        transfer["amount_reversed"] = json!(reversed + amount);
        transfer["reversed"] = json!(reversed + amount == total);
        let list = &mut transfer["reversals"];
        if let Some(data) = list["data"].as_array_mut() {
            data.insert(0, reversal.clone());
            list["total_count"] = json!(data.len());
        }
        let transfer = transfer.clone();
        self.emit("transfer.reversed", transfer, None, None, now);
        Ok(reversal)
    }

    // ---- payouts (from a connected account's balance to its bank) -----------------------

    pub(crate) fn payout(
        &mut self,
        account: &str,
        amount: i64,
        currency: &str,
        paid: bool,
        now: i64,
    ) -> Result<Value, ApiError> {
        self.account(account)?;
        let payout = json!({
            "id": new_id("po", 24),
            "object": "payout",
            "amount": amount,
            "arrival_date": now,
            "automatic": true,
            "balance_transaction": new_id("txn", 24),
            "created": now,
            "currency": currency.to_ascii_lowercase(),
            "description": "STRIPE PAYOUT",
            "destination": new_id("ba", 24),
            "failure_balance_transaction": if paid { Value::Null } else { json!(new_id("txn", 24)) },
            "failure_code": if paid { Value::Null } else { json!("account_closed") },
            "failure_message": if paid { Value::Null } else { json!("The bank account has been closed.") },
            "livemode": false,
            "metadata": {},
            "method": "standard",
            "source_type": "card",
            "statement_descriptor": null,
            "status": if paid { "paid" } else { "failed" },
            "type": "bank_account",
        });
        let kind = if paid { "payout.paid" } else { "payout.failed" };
        self.emit(kind, payout.clone(), Some(account), None, now);
        Ok(payout)
    }
}

/// Stripe's `requirements` hash before and after hosted onboarding.
fn requirements(complete: bool) -> Value {
    let due: Vec<&str> = if complete {
        vec![]
    } else {
        vec![
            "business_type",
            "external_account",
            "tos_acceptance.date",
            "tos_acceptance.ip",
        ]
    };
    json!({
        "alternatives": [],
        "current_deadline": null,
        "currently_due": due,
        "disabled_reason": if complete { Value::Null } else { json!("requirements.past_due") },
        "errors": [],
        "eventually_due": due,
        "past_due": due,
        "pending_verification": [],
    })
}

/// `metadata[key]=value` pairs; an empty value means "no such key" on Stripe.
pub(crate) fn metadata(form: &Form) -> Result<Value, ApiError> {
    metadata_in(form.nested("metadata"), "metadata")
}

/// Metadata sent under `param` (`metadata`, `setup_intent_data[metadata]`), already nested.
pub(crate) fn metadata_in(nested: Map<String, Value>, param: &str) -> Result<Value, ApiError> {
    let mut out = Map::new();
    for (key, value) in nested {
        let Value::String(value) = value else {
            return Err(ApiError::invalid(
                "Invalid metadata: values must be strings",
                &format!("{param}[{key}]"),
            ));
        };
        if key.chars().count() > 40 || value.chars().count() > 500 {
            return Err(ApiError::invalid(
                "Metadata keys are at most 40 characters and values at most 500",
                &format!("{param}[{key}]"),
            ));
        }
        if !value.is_empty() {
            out.insert(key, Value::String(value));
        }
    }
    Ok(Value::Object(out))
}

pub(crate) fn positive_amount(raw: &str) -> Result<i64, ApiError> {
    match raw.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => {
            Err(ApiError::invalid(format!("Invalid positive integer: {raw}"), "amount")
                .code("parameter_invalid_integer"))
        }
    }
}

/// Three letters, any case; Stripe answers in lowercase.
pub(crate) fn currency(raw: &str) -> Result<String, ApiError> {
    if raw.len() == 3 && raw.chars().all(|c| c.is_ascii_alphabetic()) {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(ApiError::invalid(format!("Invalid currency: {raw}"), "currency"))
    }
}

/// The paging and `created` parameters every list endpoint takes.
pub(crate) const LIST_PARAMS: &[&str] = &["limit", "starting_after", "ending_before", "created"];

/// Whether `item` has the value the request gives for each of `fields` (an absent one matches).
pub(crate) fn matches(form: &Form, fields: &[&str], item: &Value) -> bool {
    fields.iter().all(|f| form.get(f).is_none_or(|want| item[*f] == want))
}

/// One page of a list endpoint: `items` (oldest first, already filtered) newest first, kept to
/// `created` / `created[gt|gte|lt|lte]`, cut by `starting_after` / `ending_before` (ids of `what`)
/// and `limit` (1..=100, default 10).
pub(crate) fn page<'a>(
    items: impl DoubleEndedIterator<Item = &'a Value>,
    form: &Form,
    url: &str,
    what: &str,
) -> Result<Value, ApiError> {
    let limit = match form.get("limit") {
        None => 10,
        Some(l) => match l.parse::<usize>() {
            Ok(n @ 1..=100) => n,
            _ => return Err(ApiError::invalid("This value must be between 1 and 100.", "limit")),
        },
    };
    let (from, to) = created_range(form)?;
    let newest_first: Vec<&Value> = items
        .rev()
        .filter(|item| item["created"].as_i64().is_some_and(|c| (from..=to).contains(&c)))
        .collect();
    let position = |param: &str, id: &str| {
        newest_first
            .iter()
            .position(|t| t["id"] == id)
            .ok_or_else(|| ApiError::missing(what, id, param))
    };
    let window: &[&Value] = if let Some(after) = form.get("starting_after") {
        &newest_first[position("starting_after", after)? + 1..]
    } else if let Some(before) = form.get("ending_before") {
        let end = position("ending_before", before)?;
        &newest_first[end.saturating_sub(limit)..end]
    } else {
        &newest_first
    };
    let data: Vec<Value> = window.iter().take(limit).map(|t| (*t).clone()).collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "has_more": window.len() > limit,
        "url": url,
    }))
}

/// The inclusive range of `created` a list request asks for.
fn created_range(form: &Form) -> Result<(i64, i64), ApiError> {
    let bound = |key: &str| {
        form.get(key)
            .map(|raw| {
                raw.parse::<i64>()
                    .map_err(|_| ApiError::invalid(format!("Invalid integer: {raw}"), key))
            })
            .transpose()
    };
    let (mut from, mut to) = (i64::MIN, i64::MAX);
    if let Some(t) = bound("created")? {
        (from, to) = (t, t);
    }
    if let Some(t) = bound("created[gte]")? {
        from = from.max(t);
    }
    if let Some(t) = bound("created[gt]")? {
        from = from.max(t.saturating_add(1));
    }
    if let Some(t) = bound("created[lte]")? {
        to = to.min(t);
    }
    if let Some(t) = bound("created[lt]")? {
        to = to.min(t.saturating_sub(1));
    }
    Ok((from, to))
}

impl State {
    /// Replaces the ids named by `expand[]` (`latest_charge`, `setup_intent.payment_method`,
    /// `data.customer` in a list) with the objects, as Stripe's `expand` does; a charge's
    /// `refunds` (left out unless expanded) becomes the list of its refunds. A path that names
    /// no id of the fake is left as it is.
    pub(crate) fn expand(&self, mut value: Value, form: &Form) -> Value {
        for path in form.list("expand") {
            let path: Vec<&str> = path.split('.').collect();
            self.expand_path(&mut value, &path);
        }
        value
    }

    fn expand_path(&self, value: &mut Value, path: &[&str]) {
        let [head, rest @ ..] = path else { return };
        if *head == "data"
            && value["object"] == "list"
            && let Some(items) = value["data"].as_array_mut()
        {
            for item in items {
                self.expand_path(item, rest);
            }
            return;
        }
        // A charge leaves its `refunds` out unless they are expanded.
        if *head == "refunds"
            && value["object"] == "charge"
            && value.get("refunds").is_none()
            && let Some(id) = value["id"].as_str()
        {
            let refunds = self.charge_refunds(id);
            value["refunds"] = refunds;
        }
        let Some(field) = value.get_mut(*head) else { return };
        if let Some(found) = field.as_str().and_then(|id| self.find(id)) {
            *field = found.clone();
        }
        if field.is_object() {
            self.expand_path(field, rest);
        }
    }

    /// Any object of the fake by id.
    fn find(&self, id: &str) -> Option<&Value> {
        let collection = match id.split_once('_')?.0 {
            "acct" => &self.accounts,
            "tr" => &self.transfers,
            "cus" => &self.customers,
            "pm" => &self.payment_methods,
            "seti" => &self.setup_intents,
            "cs" => &self.checkout_sessions,
            "pi" => &self.payment_intents,
            "ch" => &self.charges,
            "re" => &self.refunds,
            _ => return None,
        };
        collection.iter().find(|v| v["id"] == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(state: &mut State, now: i64) -> Result<String, ApiError> {
        let account = state.create_account(&Form::parse(b"capabilities[transfers][requested]=true"), now)?;
        let id = account["id"].as_str().unwrap_or_default();
        let form = Form::parse(
            format!("account={id}&type=account_onboarding&refresh_url=http://x/refresh&return_url=http://x/return")
                .as_bytes(),
        );
        let link = state.create_account_link(&form, "http://fake", now)?;
        let url = link["url"].as_str().unwrap_or_default();
        Ok(url.rsplit('/').next().unwrap_or_default().to_owned())
    }

    #[test]
    fn links_expire_after_five_minutes_and_are_single_use() -> Result<(), ApiError> {
        let mut state = State::default();
        let expired = link(&mut state, 1_000)?;
        assert_eq!(
            state.visit_link(&expired, 1_000 + LINK_TTL + 1),
            Visit::Expired {
                refresh_url: "http://x/refresh".to_owned()
            }
        );
        assert!(state.events.is_empty(), "an expired link changes nothing");

        let fresh = link(&mut state, 1_000)?;
        assert_eq!(
            state.visit_link(&fresh, 1_000 + LINK_TTL),
            Visit::Completed {
                return_url: "http://x/return".to_owned()
            }
        );
        assert_eq!(state.visit_link(&fresh, 1_000 + LINK_TTL), Visit::Unknown);
        assert_eq!(state.visit_link("al_nope", 1_000), Visit::Unknown);
        assert_eq!(state.accounts[1]["capabilities"]["transfers"], "active");
        assert_eq!(state.events.len(), 1);
        Ok(())
    }

    #[test]
    fn faults_are_used_up_in_order() {
        let mut state = State::default();
        state.add_fault(Fault {
            path_prefix: "/v1/transfers".to_owned(),
            kind: FaultKind::RateLimited,
            times: 2,
        });
        assert_eq!(state.take_fault("/v1/accounts"), None);
        assert_eq!(
            state.take_fault("/v1/transfers/tr_1/reversals"),
            Some(FaultKind::RateLimited)
        );
        assert_eq!(state.take_fault("/v1/transfers"), Some(FaultKind::RateLimited));
        assert_eq!(state.take_fault("/v1/transfers"), None);
    }
}
