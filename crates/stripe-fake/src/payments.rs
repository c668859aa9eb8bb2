//! Funding by the platform's customer ("separate charges and transfers"): customers, Checkout in
//! setup mode that saves a card, payment methods, setup intents, payment intents confirmed
//! off-session with their charges, and the checks a transfer with `source_transaction` meets.

use serde_json::{Map, Value, json};

use crate::cards::{self, Outcome, TestCard};
use crate::error::{ApiError, CheckoutRefusal};
use crate::form::Form;
use crate::state::{LIST_PARAMS, State, currency, matches, metadata, metadata_in, new_id, page, positive_amount};

/// Checkout sessions stay open this long (seconds), Stripe's default.
pub(crate) const CHECKOUT_TTL: i64 = 86_400;
/// The least a Checkout session may be given with `expires_at` (seconds from now).
const CHECKOUT_MIN_TTL: i64 = 1_800;
/// Stripe's largest charge amount (eight digits).
const MAX_AMOUNT: i64 = 99_999_999;

/// The payment method a payment intent is confirmed with, checked but not yet made.
enum Chosen {
    /// A magic test id (`pm_card_visa`): each use makes a fresh, unattached PaymentMethod.
    Magic(&'static TestCard),
    Saved(Value),
}

/// `confirm=true` / `off_session=true`, Stripe's boolean spelling.
fn boolean(form: &Form, key: &str) -> Result<Option<bool>, ApiError> {
    match form.get(key) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(ApiError::invalid(format!("Invalid boolean: {other}"), key)),
    }
}

/// An optional string parameter; an empty value means none.
fn text<'a>(form: &'a Form, key: &str) -> Option<&'a str> {
    form.get(key).filter(|v| !v.is_empty())
}

fn email(form: &Form) -> Result<Option<&str>, ApiError> {
    match text(form, "email") {
        Some(email) if !email.contains('@') => {
            Err(ApiError::invalid(format!("Invalid email address: {email}"), "email").code("email_invalid"))
        }
        other => Ok(other),
    }
}

fn url(form: &Form, key: &str) -> Result<Option<String>, ApiError> {
    match text(form, key) {
        None => Ok(None),
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => Ok(Some(u.to_owned())),
        Some(_) => Err(ApiError::invalid("Not a valid URL", key).code("url_invalid")),
    }
}

/// `payment_method_types[]`: the fake has cards only.
fn payment_method_types(form: &Form) -> Result<Vec<String>, ApiError> {
    let types = form.list("payment_method_types");
    for (i, kind) in types.iter().enumerate() {
        if *kind != "card" {
            return Err(ApiError::invalid(
                format!("The payment method type \"{kind}\" is invalid. This fake Stripe supports \"card\" only."),
                &format!("payment_method_types[{i}]"),
            ));
        }
    }
    Ok(types.iter().map(|t| (*t).to_owned()).collect())
}

/// The smallest amount Stripe charges in `currency` (minor units); none known → 1.
fn minimum_amount(currency: &str) -> i64 {
    match currency {
        "usd" | "eur" | "aud" | "cad" | "chf" | "nzd" | "sgd" | "brl" | "inr" | "jpy" => 50,
        "gbp" => 30,
        "aed" | "myr" | "pln" | "ron" => 200,
        "dkk" => 250,
        "nok" | "sek" => 300,
        "hkd" => 400,
        "mxn" | "thb" => 1_000,
        "czk" => 1_500,
        "huf" => 17_500,
        _ => 1,
    }
}

/// `{CHECKOUT_SESSION_ID}` in a success URL becomes the session's id, as Stripe does.
pub(crate) fn success_redirect(session: &Value) -> String {
    let id = session["id"].as_str().unwrap_or_default();
    session["success_url"]
        .as_str()
        .unwrap_or_default()
        .replace("{CHECKOUT_SESSION_ID}", id)
}

/// Top-level fields whose value changed, with their old values (`previous_attributes`).
pub(crate) fn previous_attributes(before: &Value, after: &Value) -> Value {
    let mut previous = Map::new();
    if let (Some(before), Some(after)) = (before.as_object(), after.as_object()) {
        for (key, old) in before {
            if after.get(key) != Some(old) {
                previous.insert(key.clone(), old.clone());
            }
        }
    }
    Value::Object(previous)
}

fn doc_url(code: &str) -> String {
    format!("https://stripe.com/docs/error-codes/{}", code.replace('_', "-"))
}

impl State {
    // ---- customers ----------------------------------------------------------------------

    pub(crate) fn create_customer(&mut self, form: &Form, now: i64) -> Result<Value, ApiError> {
        form.allow(&["email", "name", "description", "phone"], &["metadata", "expand"])?;
        let email = email(form)?;
        let prefix = new_id("x", 8)[2..].to_ascii_uppercase();
        let customer = json!({
            "id": new_id("cus", 14),
            "object": "customer",
            "address": null,
            "balance": 0,
            "created": now,
            "currency": null,
            "default_source": null,
            "delinquent": false,
            "description": text(form, "description"),
            "discount": null,
            "email": email,
            "invoice_prefix": prefix,
            "invoice_settings": {
                "custom_fields": null,
                "default_payment_method": null,
                "footer": null,
                "rendering_options": null,
            },
            "livemode": false,
            "metadata": metadata(form)?,
            "name": text(form, "name"),
            "next_invoice_sequence": 1,
            "phone": text(form, "phone"),
            "preferred_locales": [],
            "shipping": null,
            "tax_exempt": "none",
            "test_clock": null,
        });
        self.customers.push(customer.clone());
        self.emit("customer.created", customer.clone(), None, None, now);
        Ok(customer)
    }

    /// `POST /v1/customers/{id}`: email, name, description, phone, metadata (merged; an empty
    /// value removes a key) and `invoice_settings[default_payment_method]` (attached to the
    /// customer; empty unsets). Emits `customer.updated` when anything changed.
    pub(crate) fn update_customer(&mut self, id: &str, form: &Form, now: i64) -> Result<Value, ApiError> {
        form.allow(
            &[
                "email",
                "name",
                "description",
                "phone",
                "metadata",
                "invoice_settings[default_payment_method]",
            ],
            &["metadata", "expand"],
        )?;
        email(form)?;
        metadata(form)?;
        let index = self
            .customers
            .iter()
            .position(|c| c["id"] == id)
            .ok_or_else(|| ApiError::missing("customer", id, "id"))?;
        let default = form.get("invoice_settings[default_payment_method]");
        if let Some(pm) = default.filter(|p| !p.is_empty())
            && !self
                .payment_methods
                .iter()
                .any(|m| m["id"] == pm && m["customer"] == id)
        {
            return Err(ApiError::invalid(
                format!(
                    "The customer does not have a payment method with the ID {pm}. \
                     The payment method must be attached to the customer."
                ),
                "invoice_settings[default_payment_method]",
            ));
        }
        let customer = &mut self.customers[index];
        let before = customer.clone();
        for field in ["email", "name", "description", "phone"] {
            if let Some(value) = form.get(field) {
                customer[field] = if value.is_empty() { Value::Null } else { json!(value) };
            }
        }
        if form.get("metadata") == Some("") {
            customer["metadata"] = json!({});
        }
        for (key, value) in form.nested("metadata") {
            if let (Some(map), Value::String(value)) = (customer["metadata"].as_object_mut(), value) {
                if value.is_empty() {
                    map.remove(&key);
                } else {
                    map.insert(key, Value::String(value));
                }
            }
        }
        if let Some(pm) = default {
            customer["invoice_settings"]["default_payment_method"] =
                if pm.is_empty() { Value::Null } else { json!(pm) };
        }
        let customer = customer.clone();
        if customer != before {
            let previous = previous_attributes(&before, &customer);
            self.emit("customer.updated", customer.clone(), None, Some(previous), now);
        }
        Ok(customer)
    }

    pub(crate) fn customer(&self, id: &str) -> Result<&Value, ApiError> {
        self.customers
            .iter()
            .find(|c| c["id"] == id)
            .ok_or_else(|| ApiError::missing("customer", id, "id"))
    }

    /// A customer named by a parameter of a create request: unknown is a 400, as on Stripe.
    fn customer_param(&self, id: &str, param: &str) -> Result<&Value, ApiError> {
        self.customers
            .iter()
            .find(|c| c["id"] == id)
            .ok_or_else(|| ApiError::invalid(format!("No such customer: '{id}'"), param).code("resource_missing"))
    }

    // ---- Checkout (setup mode) ------------------------------------------------------------

    pub(crate) fn create_checkout_session(&mut self, form: &Form, base_url: &str, now: i64) -> Result<Value, ApiError> {
        form.allow(
            &[
                "mode",
                "customer",
                "currency",
                "success_url",
                "cancel_url",
                "client_reference_id",
                "expires_at",
            ],
            &["payment_method_types", "metadata", "setup_intent_data", "expand"],
        )?;
        match form.required("mode")? {
            "setup" => {}
            mode @ ("payment" | "subscription") => {
                return Err(ApiError::invalid(
                    format!(
                        "This fake Stripe supports Checkout in setup mode only (mode=setup); \
                         mode={mode} is not implemented."
                    ),
                    "mode",
                ));
            }
            other => {
                return Err(ApiError::invalid(
                    format!("Invalid mode: must be one of payment, setup, or subscription (got '{other}')"),
                    "mode",
                ));
            }
        }
        let customer = form.required("customer")?;
        self.customer_param(customer, "customer")?;
        let types = payment_method_types(form)?;
        let currency = match form.get("currency") {
            Some(raw) => Some(currency(raw)?),
            None if !types.is_empty() => None,
            None => {
                return Err(ApiError::invalid(
                    "Missing required param: currency. In setup mode, `currency` is required unless \
                     `payment_method_types` is given.",
                    "currency",
                )
                .code("parameter_missing"));
            }
        };
        let success_url = url(form, "success_url")?.ok_or_else(|| {
            ApiError::invalid("Missing required param: success_url.", "success_url").code("parameter_missing")
        })?;
        let cancel_url = url(form, "cancel_url")?;
        let client_reference_id = text(form, "client_reference_id");
        if client_reference_id.is_some_and(|c| c.chars().count() > 200) {
            return Err(ApiError::invalid(
                "client_reference_id must be at most 200 characters",
                "client_reference_id",
            ));
        }
        let expires_at = match form.get("expires_at") {
            None => now + CHECKOUT_TTL,
            Some(raw) => match raw.parse::<i64>() {
                Ok(t) if (now + CHECKOUT_MIN_TTL..=now + CHECKOUT_TTL).contains(&t) => t,
                _ => {
                    return Err(ApiError::invalid(
                        "The `expires_at` timestamp must be between 30 minutes and 24 hours after \
                         Checkout Session creation.",
                        "expires_at",
                    ));
                }
            },
        };
        let mut intent_data = form.nested("setup_intent_data");
        if let Some(key) = intent_data.keys().find(|k| *k != "metadata" && *k != "description") {
            let key = format!("setup_intent_data[{key}]");
            return Err(ApiError::invalid(format!("Received unknown parameter: {key}"), &key).code("parameter_unknown"));
        }
        let intent_metadata = match intent_data.remove("metadata") {
            Some(Value::Object(map)) => metadata_in(map, "setup_intent_data[metadata]")?,
            Some(_) => {
                return Err(ApiError::invalid("Invalid object", "setup_intent_data[metadata]"));
            }
            None => json!({}),
        };
        let intent_description = intent_data.remove("description").filter(|d| d.as_str() != Some(""));
        let id = new_id("cs_test", 58);
        let session = json!({
            "id": id,
            "object": "checkout.session",
            "after_expiration": null,
            "allow_promotion_codes": null,
            "amount_subtotal": null,
            "amount_total": null,
            "automatic_tax": {"enabled": false, "liability": null, "status": null},
            "billing_address_collection": null,
            "cancel_url": cancel_url,
            "client_reference_id": client_reference_id,
            "client_secret": null,
            "consent": null,
            "consent_collection": null,
            "created": now,
            "currency": currency,
            "custom_fields": [],
            "custom_text": {
                "after_submit": null,
                "shipping_address": null,
                "submit": null,
                "terms_of_service_acceptance": null,
            },
            "customer": customer,
            "customer_creation": null,
            "customer_details": null,
            "customer_email": null,
            "expires_at": expires_at,
            "invoice": null,
            "invoice_creation": null,
            "livemode": false,
            "locale": null,
            "metadata": metadata(form)?,
            "mode": "setup",
            "payment_intent": null,
            "payment_link": null,
            "payment_method_collection": "always",
            "payment_method_options": {},
            "payment_method_types": if types.is_empty() { vec!["card".to_owned()] } else { types },
            "payment_status": "no_payment_required",
            "phone_number_collection": {"enabled": false},
            "recovered_from": null,
            "setup_intent": null,
            "shipping_address_collection": null,
            "shipping_cost": null,
            "shipping_options": [],
            "status": "open",
            "submit_type": null,
            "subscription": null,
            "success_url": success_url,
            "total_details": null,
            "ui_mode": "hosted",
            "url": format!("{base_url}/checkout/setup/{id}"),
        });
        self.setup_intent_data.insert(
            id,
            json!({"metadata": intent_metadata, "description": intent_description}),
        );
        self.checkout_sessions.push(session.clone());
        Ok(session)
    }

    pub(crate) fn checkout_session(&self, id: &str) -> Result<&Value, ApiError> {
        self.checkout_sessions
            .iter()
            .find(|s| s["id"] == id)
            .ok_or_else(|| ApiError::missing("checkout.session", id, "session"))
    }

    /// What the customer finishing the hosted page with test card `card` does: a PaymentMethod
    /// attached to the session's customer, a succeeded SetupIntent, the session complete; emits
    /// `payment_method.attached`, `setup_intent.succeeded`, `checkout.session.completed`. Returns
    /// the session. A session past `expires_at` becomes `expired` (emitting
    /// `checkout.session.expired` once) and is refused.
    pub(crate) fn complete_checkout(&mut self, id: &str, card: &str, now: i64) -> Result<Value, CheckoutRefusal> {
        let index = self
            .checkout_sessions
            .iter()
            .position(|s| s["id"] == id)
            .ok_or(CheckoutRefusal::Unknown)?;
        let session = &mut self.checkout_sessions[index];
        let cancel_url = session["cancel_url"].as_str().map(str::to_owned);
        match session["status"].as_str() {
            Some("open") => {}
            Some("expired") => return Err(CheckoutRefusal::Expired { cancel_url }),
            _ => return Err(CheckoutRefusal::Unknown),
        }
        if now > session["expires_at"].as_i64().unwrap_or(i64::MAX) {
            session["status"] = json!("expired");
            session["url"] = Value::Null;
            let session = session.clone();
            self.emit("checkout.session.expired", session, None, None, now);
            return Err(CheckoutRefusal::Expired { cancel_url });
        }
        let card = cards::by_name(card).ok_or_else(|| CheckoutRefusal::UnknownCard(card.to_owned()))?;
        let customer = session["customer"].as_str().unwrap_or_default().to_owned();

        let payment_method = self.new_payment_method(card, Some(&customer), now);
        self.emit("payment_method.attached", payment_method.clone(), None, None, now);
        let data = self.setup_intent_data.get(id).cloned().unwrap_or_else(|| json!({}));
        let intent_id = new_id("seti", 24);
        let secret = new_id("secret", 24);
        let setup_intent = json!({
            "id": intent_id,
            "object": "setup_intent",
            "application": null,
            "automatic_payment_methods": null,
            "cancellation_reason": null,
            "client_secret": format!("{intent_id}_{secret}"),
            "created": now,
            "customer": customer,
            "description": data["description"],
            "flow_directions": null,
            "last_setup_error": null,
            "latest_attempt": new_id("setatt", 24),
            "livemode": false,
            "mandate": null,
            "metadata": data.get("metadata").cloned().unwrap_or_else(|| json!({})),
            "next_action": null,
            "on_behalf_of": null,
            "payment_method": payment_method["id"],
            "payment_method_configuration_details": null,
            "payment_method_options": {
                "card": {"mandate_options": null, "network": null, "request_three_d_secure": "automatic"},
            },
            "payment_method_types": ["card"],
            "single_use_mandate": null,
            "status": "succeeded",
            "usage": "off_session",
        });
        self.setup_intents.push(setup_intent.clone());
        self.emit("setup_intent.succeeded", setup_intent, None, None, now);

        let details = self.customers.iter().find(|c| c["id"] == customer.as_str()).map(|c| {
            json!({
                "address": null,
                "email": c["email"],
                "name": c["name"],
                "phone": null,
                "tax_exempt": "none",
                "tax_ids": [],
            })
        });
        let session = &mut self.checkout_sessions[index];
        session["status"] = json!("complete");
        session["setup_intent"] = json!(intent_id);
        session["customer_details"] = details.unwrap_or(Value::Null);
        // Stripe's hosted URL is gone once the session is over.
        session["url"] = Value::Null;
        let session = session.clone();
        self.emit("checkout.session.completed", session.clone(), None, None, now);
        Ok(session)
    }

    // ---- payment methods and setup intents ------------------------------------------------

    fn new_payment_method(&mut self, card: &TestCard, customer: Option<&str>, now: i64) -> Value {
        let payment_method = json!({
            "id": new_id("pm", 24),
            "object": "payment_method",
            "allow_redisplay": "unspecified",
            "billing_details": {
                "address": {
                    "city": null,
                    "country": null,
                    "line1": null,
                    "line2": null,
                    "postal_code": null,
                    "state": null,
                },
                "email": null,
                "name": null,
                "phone": null,
            },
            "card": card.details(now),
            "created": now,
            "customer": customer,
            "livemode": false,
            "metadata": {},
            "type": "card",
        });
        self.payment_methods.push(payment_method.clone());
        payment_method
    }

    pub(crate) fn payment_method(&self, id: &str) -> Result<&Value, ApiError> {
        self.payment_methods
            .iter()
            .find(|m| m["id"] == id)
            .ok_or_else(|| ApiError::missing("PaymentMethod", id, "payment_method"))
    }

    /// `GET /v1/payment_methods?customer=&type=` (and `/v1/customers/{id}/payment_methods` with
    /// `customer` given by the path): newest first, paged.
    pub(crate) fn list_payment_methods(&self, form: &Form, customer: Option<&str>) -> Result<Value, ApiError> {
        let url = match customer {
            Some(id) => {
                self.customer(id)?;
                format!("/v1/customers/{id}/payment_methods")
            }
            None => "/v1/payment_methods".to_owned(),
        };
        let filters: &[&str] = if customer.is_some() {
            &["type"]
        } else {
            &["customer", "type"]
        };
        form.allow(&[filters, LIST_PARAMS].concat(), &["expand", "created"])?;
        let matching = self
            .payment_methods
            .iter()
            .filter(|m| customer.is_none_or(|c| m["customer"] == c) && matches(form, filters, m));
        page(matching, form, &url, "payment_method")
    }

    /// `POST /v1/payment_methods/{id}/attach`: a magic test id makes a fresh PaymentMethod
    /// attached to the customer; a saved one is attached unless another customer has it.
    pub(crate) fn attach_payment_method(&mut self, id: &str, form: &Form, now: i64) -> Result<Value, ApiError> {
        form.allow(&["customer"], &["expand"])?;
        let customer = form.required("customer")?;
        self.customer_param(customer, "customer")?;
        if let Some(card) = cards::by_magic(id) {
            let payment_method = self.new_payment_method(card, Some(customer), now);
            self.emit("payment_method.attached", payment_method.clone(), None, None, now);
            return Ok(payment_method);
        }
        let payment_method = self
            .payment_methods
            .iter_mut()
            .find(|m| m["id"] == id)
            .ok_or_else(|| ApiError::missing("PaymentMethod", id, "payment_method"))?;
        if payment_method["customer"] == customer {
            return Ok(payment_method.clone());
        }
        if !payment_method["customer"].is_null() {
            return Err(ApiError::invalid(
                "The payment method you provided has already been attached to a customer.",
                "payment_method",
            ));
        }
        payment_method["customer"] = json!(customer);
        let payment_method = payment_method.clone();
        self.emit("payment_method.attached", payment_method.clone(), None, None, now);
        Ok(payment_method)
    }

    pub(crate) fn setup_intent(&self, id: &str) -> Result<&Value, ApiError> {
        self.setup_intents
            .iter()
            .find(|s| s["id"] == id)
            .ok_or_else(|| ApiError::missing("setupintent", id, "intent"))
    }

    // ---- payment intents and charges ------------------------------------------------------

    /// `POST /v1/payment_intents`. Unconfirmed: `requires_confirmation` (or
    /// `requires_payment_method`). Confirmed: charged at once (see [`State::attempt`]).
    /// Emits `payment_intent.created` first.
    pub(crate) fn create_payment_intent(&mut self, form: &Form, now: i64) -> Result<Value, ApiError> {
        form.allow(
            &[
                "amount",
                "currency",
                "customer",
                "payment_method",
                "confirm",
                "off_session",
                "transfer_group",
                "description",
                "statement_descriptor_suffix",
                "return_url",
            ],
            &[
                "metadata",
                "payment_method_types",
                "automatic_payment_methods",
                "expand",
            ],
        )?;
        let amount = positive_amount(form.required("amount")?)?;
        let currency = currency(form.required("currency")?)?;
        let minimum = minimum_amount(&currency);
        if amount < minimum {
            return Err(ApiError::invalid(
                format!("Amount must be at least {minimum} (minor units of {currency})"),
                "amount",
            )
            .code("amount_too_small"));
        }
        if amount > MAX_AMOUNT {
            return Err(
                ApiError::invalid(format!("Amount must be no more than {MAX_AMOUNT}"), "amount")
                    .code("amount_too_large"),
            );
        }
        let customer = text(form, "customer");
        if let Some(customer) = customer {
            self.customer_param(customer, "customer")?;
        }
        let metadata = metadata(form)?;
        let suffix = text(form, "statement_descriptor_suffix");
        if suffix.is_some_and(|s| s.chars().count() > 22) {
            return Err(ApiError::invalid(
                "The statement descriptor suffix must be at most 22 characters long.",
                "statement_descriptor_suffix",
            ));
        }
        let types = payment_method_types(form)?;
        let automatic = boolean(form, "automatic_payment_methods[enabled]")?;
        let redirects = form.get("automatic_payment_methods[allow_redirects]");
        if let Some(r) = redirects.filter(|r| *r != "always" && *r != "never") {
            return Err(ApiError::invalid(
                format!("Invalid allow_redirects: must be one of always or never (got '{r}')"),
                "automatic_payment_methods[allow_redirects]",
            ));
        }
        if !types.is_empty() && automatic == Some(true) {
            return Err(ApiError::invalid(
                "You may only specify one of these parameters: automatic_payment_methods, payment_method_types.",
                "automatic_payment_methods",
            ));
        }
        let confirm = boolean(form, "confirm")?.unwrap_or(false);
        let off_session = off_session(form)?;
        if off_session.is_some() && !confirm {
            return Err(ApiError::invalid(
                "You may only specify `off_session` when `confirm` is true.",
                "off_session",
            ));
        }
        let off_session = off_session.unwrap_or(false);
        let dynamic = types.is_empty();
        let chosen = match text(form, "payment_method") {
            Some(pm) => Some(self.choose_payment_method(pm, customer)?),
            None => None,
        };
        if confirm {
            if chosen.is_none() {
                return Err(missing_payment_method());
            }
            if dynamic && !off_session && redirects != Some("never") && text(form, "return_url").is_none() {
                return Err(return_url_required());
            }
        }

        let payment_method = chosen.map(|c| self.use_payment_method(c, now));
        let id = new_id("pi", 24);
        let secret = new_id("secret", 24);
        let intent = json!({
            "id": id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": 0,
            "application": null,
            "application_fee_amount": null,
            "automatic_payment_methods": if dynamic {
                json!({"allow_redirects": redirects.unwrap_or("always"), "enabled": true})
            } else {
                Value::Null
            },
            "canceled_at": null,
            "cancellation_reason": null,
            "capture_method": "automatic_async",
            "client_secret": format!("{id}_{secret}"),
            "confirmation_method": "automatic",
            "created": now,
            "currency": currency,
            "customer": customer,
            "description": text(form, "description"),
            "last_payment_error": null,
            "latest_charge": null,
            "livemode": false,
            "metadata": metadata,
            "next_action": null,
            "on_behalf_of": null,
            "payment_method": payment_method.as_ref().map(|m| m["id"].clone()),
            "payment_method_configuration_details": null,
            "payment_method_options": {
                "card": {
                    "installments": null,
                    "mandate_options": null,
                    "network": null,
                    "request_three_d_secure": "automatic",
                },
            },
            "payment_method_types": ["card"],
            "processing": null,
            "receipt_email": null,
            "review": null,
            "setup_future_usage": null,
            "shipping": null,
            "source": null,
            "statement_descriptor": null,
            "statement_descriptor_suffix": suffix,
            "status": if payment_method.is_some() { "requires_confirmation" } else { "requires_payment_method" },
            "transfer_data": null,
            "transfer_group": text(form, "transfer_group"),
        });
        self.payment_intents.push(intent.clone());
        self.emit("payment_intent.created", intent.clone(), None, None, now);
        match payment_method {
            Some(payment_method) if confirm => {
                let index = self.payment_intents.len() - 1;
                self.attempt(index, &payment_method, off_session, now)
            }
            _ => Ok(intent),
        }
    }

    /// `POST /v1/payment_intents/{id}/confirm` {payment_method?, off_session?, return_url?}.
    pub(crate) fn confirm_payment_intent(&mut self, id: &str, form: &Form, now: i64) -> Result<Value, ApiError> {
        form.allow(&["payment_method", "off_session", "return_url"], &["expand"])?;
        let index = self
            .payment_intents
            .iter()
            .position(|p| p["id"] == id)
            .ok_or_else(|| ApiError::missing("payment_intent", id, "intent"))?;
        let intent = &self.payment_intents[index];
        let status = intent["status"].as_str().unwrap_or_default();
        if status == "succeeded" || status == "canceled" {
            let done = if status == "succeeded" {
                "succeeded"
            } else {
                "been canceled"
            };
            return Err(ApiError::invalid(
                format!(
                    "You cannot confirm this PaymentIntent because it has already {done} after being previously confirmed."
                ),
                "intent",
            )
            .code("payment_intent_unexpected_state"));
        }
        let customer = intent["customer"].as_str().map(str::to_owned);
        let dynamic = !intent["automatic_payment_methods"].is_null();
        let redirects = intent["automatic_payment_methods"]["allow_redirects"] == "always";
        let saved = intent["payment_method"].as_str().map(str::to_owned);
        let off_session = off_session(form)?.unwrap_or(false);
        let chosen = match text(form, "payment_method").map(str::to_owned).or(saved) {
            Some(pm) => self.choose_payment_method(&pm, customer.as_deref())?,
            None => return Err(missing_payment_method()),
        };
        if dynamic && redirects && !off_session && text(form, "return_url").is_none() {
            return Err(return_url_required());
        }
        let payment_method = self.use_payment_method(chosen, now);
        self.attempt(index, &payment_method, off_session, now)
    }

    /// Checks the payment method a payment intent names, changing nothing.
    fn choose_payment_method(&self, id: &str, customer: Option<&str>) -> Result<Chosen, ApiError> {
        if let Some(card) = cards::by_magic(id) {
            return Ok(Chosen::Magic(card));
        }
        let payment_method = self.payment_methods.iter().find(|m| m["id"] == id).ok_or_else(|| {
            ApiError::invalid(format!("No such PaymentMethod: '{id}'"), "payment_method").code("resource_missing")
        })?;
        let owner = payment_method["customer"].as_str();
        match (owner, customer) {
            (Some(owner), Some(customer)) if owner == customer => {}
            (Some(owner), _) => {
                return Err(ApiError::invalid(
                    format!(
                        "The provided PaymentMethod {id} is attached to customer {owner}; pass customer={owner} \
                         to use it."
                    ),
                    "payment_method",
                ));
            }
            (None, Some(customer)) => {
                return Err(ApiError::invalid(
                    format!(
                        "The provided PaymentMethod {id} is not attached to customer {customer}. Attach it first \
                         (POST /v1/payment_methods/{id}/attach)."
                    ),
                    "payment_method",
                ));
            }
            (None, None) => {
                // An unattached PaymentMethod can be used once.
                if self.charges.iter().any(|c| c["payment_method"] == id) {
                    return Err(ApiError::invalid(
                        "The provided PaymentMethod was previously used without being attached to a Customer \
                         or was detached from a Customer, and may not be used again.",
                        "payment_method",
                    ));
                }
            }
        }
        Ok(Chosen::Saved(payment_method.clone()))
    }

    fn use_payment_method(&mut self, chosen: Chosen, now: i64) -> Value {
        match chosen {
            Chosen::Magic(card) => self.new_payment_method(card, None, now),
            Chosen::Saved(payment_method) => payment_method,
        }
    }

    /// Confirms payment intent `index` with `payment_method`: charges the card (its test
    /// behaviour decides) and moves the intent on. A decline (and a required authentication
    /// off-session) is a 402 `card_error` carrying the intent, after the state has changed.
    fn attempt(
        &mut self,
        index: usize,
        payment_method: &Value,
        off_session: bool,
        now: i64,
    ) -> Result<Value, ApiError> {
        let card = cards::of(payment_method);
        let pm_id = payment_method["id"].clone();
        match card.outcome {
            Outcome::Succeeds => {
                let charge = self.new_charge(index, payment_method, card, None, now);
                let intent = &mut self.payment_intents[index];
                intent["status"] = json!("succeeded");
                intent["amount_received"] = intent["amount"].clone();
                intent["latest_charge"] = charge["id"].clone();
                intent["payment_method"] = pm_id;
                intent["last_payment_error"] = Value::Null;
                intent["next_action"] = Value::Null;
                let intent = intent.clone();
                self.emit("charge.succeeded", charge, None, None, now);
                self.emit("payment_intent.succeeded", intent.clone(), None, None, now);
                Ok(intent)
            }
            Outcome::Declines {
                decline_code, message, ..
            } => {
                let charge = self.new_charge(index, payment_method, card, Some(card.outcome), now);
                let error = json!({
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": decline_code,
                    "message": message,
                    "charge": charge["id"],
                    "doc_url": doc_url("card_declined"),
                    "payment_method": payment_method,
                });
                let intent = self.fail(index, error, Some(&charge["id"]));
                self.emit("charge.failed", charge.clone(), None, None, now);
                self.emit("payment_intent.payment_failed", intent.clone(), None, None, now);
                Err(card_error(
                    "card_declined",
                    decline_code,
                    message,
                    Some(&charge["id"]),
                    intent,
                    payment_method,
                ))
            }
            Outcome::AuthenticationRequired if off_session => {
                let message = "Your card was declined. This transaction requires authentication.";
                let error = json!({
                    "type": "card_error",
                    "code": "authentication_required",
                    "decline_code": "authentication_required",
                    "message": message,
                    "doc_url": doc_url("authentication_required"),
                    "payment_method": payment_method,
                });
                let intent = self.fail(index, error, None);
                self.emit("payment_intent.payment_failed", intent.clone(), None, None, now);
                Err(card_error(
                    "authentication_required",
                    "authentication_required",
                    message,
                    None,
                    intent,
                    payment_method,
                ))
            }
            Outcome::AuthenticationRequired => {
                let intent = &mut self.payment_intents[index];
                let source = new_id("src", 24);
                intent["status"] = json!("requires_action");
                intent["payment_method"] = pm_id;
                intent["next_action"] = json!({
                    "type": "use_stripe_sdk",
                    "use_stripe_sdk": {
                        "type": "three_d_secure_redirect",
                        "source": source,
                        "stripe_js": format!("https://hooks.stripe.com/redirect/authenticate/{source}"),
                    },
                });
                let intent = intent.clone();
                self.emit("payment_intent.requires_action", intent.clone(), None, None, now);
                Ok(intent)
            }
        }
    }

    /// The intent after a failed attempt: back to `requires_payment_method`, the payment
    /// method dropped (it is in `last_payment_error`), `latest_charge` the failed charge if any.
    fn fail(&mut self, index: usize, error: Value, charge: Option<&Value>) -> Value {
        let intent = &mut self.payment_intents[index];
        intent["status"] = json!("requires_payment_method");
        intent["payment_method"] = Value::Null;
        intent["next_action"] = Value::Null;
        intent["last_payment_error"] = error;
        if let Some(charge) = charge {
            intent["latest_charge"] = charge.clone();
        }
        intent.clone()
    }

    /// A charge of payment intent `index`: succeeded, or failed with `declined`'s codes.
    fn new_charge(
        &mut self,
        index: usize,
        payment_method: &Value,
        card: &TestCard,
        declined: Option<Outcome>,
        now: i64,
    ) -> Value {
        let intent = &self.payment_intents[index];
        let amount = intent["amount"].clone();
        let (status, outcome, failure) = match declined {
            Some(Outcome::Declines {
                decline_code,
                message,
                seller_message,
            }) => (
                "failed",
                json!({
                    "advice_code": null,
                    "network_advice_code": null,
                    "network_decline_code": null,
                    "network_status": "declined_by_network",
                    "reason": decline_code,
                    "risk_level": "normal",
                    "risk_score": 20,
                    "seller_message": seller_message,
                    "type": "issuer_declined",
                }),
                Some(message),
            ),
            _ => (
                "succeeded",
                json!({
                    "advice_code": null,
                    "network_advice_code": null,
                    "network_decline_code": null,
                    "network_status": "approved_by_network",
                    "reason": null,
                    "risk_level": "normal",
                    "risk_score": 20,
                    "seller_message": "Payment complete.",
                    "type": "authorized",
                }),
                None,
            ),
        };
        let paid = failure.is_none();
        let charge = json!({
            "id": new_id("ch", 24),
            "object": "charge",
            "amount": amount,
            "amount_captured": if paid { amount } else { json!(0) },
            "amount_refunded": 0,
            "application": null,
            "application_fee": null,
            "application_fee_amount": null,
            "balance_transaction": if paid { json!(new_id("txn", 24)) } else { Value::Null },
            "billing_details": payment_method["billing_details"],
            "calculated_statement_descriptor": "AMBA AFFILIATE",
            "captured": paid,
            "created": now,
            "currency": intent["currency"],
            "customer": intent["customer"],
            "description": intent["description"],
            "destination": null,
            "dispute": null,
            "disputed": false,
            "failure_balance_transaction": null,
            "failure_code": if paid { Value::Null } else { json!("card_declined") },
            "failure_message": failure,
            "fraud_details": {},
            "livemode": false,
            "metadata": intent["metadata"],
            "on_behalf_of": null,
            "outcome": outcome,
            "paid": paid,
            "payment_intent": intent["id"],
            "payment_method": payment_method["id"],
            "payment_method_details": card.charge_details(payment_method),
            "receipt_email": null,
            "receipt_number": null,
            "receipt_url": null,
            "refunded": false,
            "review": null,
            "shipping": null,
            "source_transfer": null,
            "statement_descriptor": null,
            "statement_descriptor_suffix": intent["statement_descriptor_suffix"],
            "status": status,
            "transfer_data": null,
            "transfer_group": intent["transfer_group"],
        });
        self.charges.push(charge.clone());
        charge
    }

    pub(crate) fn payment_intent(&self, id: &str) -> Result<&Value, ApiError> {
        self.payment_intents
            .iter()
            .find(|p| p["id"] == id)
            .ok_or_else(|| ApiError::missing("payment_intent", id, "intent"))
    }

    /// `GET /v1/payment_intents?customer=`: newest first, paged, `created` filters.
    pub(crate) fn list_payment_intents(&self, form: &Form) -> Result<Value, ApiError> {
        const FILTERS: [&str; 1] = ["customer"];
        form.allow(&[&FILTERS[..], LIST_PARAMS].concat(), &["expand", "created"])?;
        let matching = self.payment_intents.iter().filter(|p| matches(form, &FILTERS, p));
        page(matching, form, "/v1/payment_intents", "payment_intent")
    }

    pub(crate) fn charge(&self, id: &str) -> Result<&Value, ApiError> {
        self.charges
            .iter()
            .find(|c| c["id"] == id)
            .ok_or_else(|| ApiError::missing("charge", id, "charge"))
    }

    /// `GET /v1/charges?customer=&payment_intent=&transfer_group=`: newest first, paged.
    pub(crate) fn list_charges(&self, form: &Form) -> Result<Value, ApiError> {
        const FILTERS: [&str; 3] = ["customer", "payment_intent", "transfer_group"];
        form.allow(&[&FILTERS[..], LIST_PARAMS].concat(), &["expand", "created"])?;
        let matching = self.charges.iter().filter(|c| matches(form, &FILTERS, c));
        page(matching, form, "/v1/charges", "charge")
    }

    /// A transfer of `amount` `currency` funded by charge `id` (`source_transaction`): the charge
    /// must have succeeded, be in the same currency and still have `amount` not yet refunded or
    /// transferred. Returns the charge's `transfer_group`.
    pub(crate) fn check_source_transaction(
        &self,
        id: &str,
        amount: i64,
        currency: &str,
    ) -> Result<Option<String>, ApiError> {
        let charge = self.charges.iter().find(|c| c["id"] == id).ok_or_else(|| {
            ApiError::invalid(format!("No such charge: '{id}'"), "source_transaction").code("resource_missing")
        })?;
        if charge["status"] != "succeeded" {
            return Err(ApiError::invalid(
                format!(
                    "The source_transaction {id} has status '{}'; only a succeeded charge can fund a transfer.",
                    charge["status"].as_str().unwrap_or_default()
                ),
                "source_transaction",
            ));
        }
        let charge_currency = charge["currency"].as_str().unwrap_or_default();
        if charge_currency != currency {
            return Err(ApiError::invalid(
                format!(
                    "The currency of the transfer ({currency}) must match the currency of its \
                     source_transaction {id} ({charge_currency})."
                ),
                "currency",
            ));
        }
        let transferred: i64 = self
            .transfers
            .iter()
            .filter(|t| t["source_transaction"] == id)
            .filter_map(|t| t["amount"].as_i64())
            .sum();
        let available =
            charge["amount"].as_i64().unwrap_or(0) - charge["amount_refunded"].as_i64().unwrap_or(0) - transferred;
        if amount > available {
            return Err(ApiError::invalid(
                format!(
                    "Insufficient funds on source_transaction {id}: {available} {currency} is available \
                     (the charge less refunds and earlier transfers from it), {amount} {currency} was requested."
                ),
                "amount",
            )
            .code("balance_insufficient"));
        }
        Ok(charge["transfer_group"].as_str().map(str::to_owned))
    }
}

/// `off_session`: a boolean, or `one_off` / `recurring` (both mean true).
fn off_session(form: &Form) -> Result<Option<bool>, ApiError> {
    match form.get("off_session") {
        Some("one_off" | "recurring") => Ok(Some(true)),
        _ => boolean(form, "off_session"),
    }
}

fn missing_payment_method() -> ApiError {
    ApiError::invalid(
        "You cannot confirm this PaymentIntent because it's missing a payment method. You can either update the \
         PaymentIntent with a payment method and then confirm it again, or confirm it again directly with a \
         payment method.",
        "payment_method",
    )
    .code("payment_intent_unexpected_state")
}

fn return_url_required() -> ApiError {
    ApiError::invalid(
        "This PaymentIntent is configured to accept payment methods enabled in your Dashboard. Because some of \
         these payment methods might redirect your customer off of your page, you must provide a `return_url`. \
         If you don't want to accept redirect-based payment methods, set `automatic_payment_methods[enabled]` \
         to `true` and `automatic_payment_methods[allow_redirects]` to `never` when creating Setup Intents and \
         Payment Intents.",
        "return_url",
    )
}

/// Stripe's 402 for a card that failed: the envelope names the charge (if one was made), and
/// carries the whole payment intent and payment method.
fn card_error(
    code: &'static str,
    decline_code: &str,
    message: &str,
    charge: Option<&Value>,
    intent: Value,
    payment_method: &Value,
) -> ApiError {
    let mut extra = Map::new();
    extra.insert("decline_code".to_owned(), json!(decline_code));
    if let Some(charge) = charge {
        extra.insert("charge".to_owned(), charge.clone());
    }
    extra.insert("doc_url".to_owned(), json!(doc_url(code)));
    extra.insert("payment_intent".to_owned(), intent);
    extra.insert("payment_method".to_owned(), payment_method.clone());
    ApiError::card(code, message, extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer_with_card(state: &mut State, card: &str, now: i64) -> Result<(String, String), ApiError> {
        let customer = state.create_customer(&Form::parse(b"email=owner@example.com"), now)?;
        let customer = customer["id"].as_str().unwrap_or_default().to_owned();
        let form = format!("mode=setup&customer={customer}&currency=usd&success_url=https://x/ok");
        let session = state.create_checkout_session(&Form::parse(form.as_bytes()), "http://fake", now)?;
        let session = state
            .complete_checkout(session["id"].as_str().unwrap_or_default(), card, now)
            .map_err(|e| ApiError::invalid(format!("{e:?}"), "session"))?;
        let intent = state.setup_intent(session["setup_intent"].as_str().unwrap_or_default())?;
        let pm = intent["payment_method"].as_str().unwrap_or_default().to_owned();
        Ok((customer, pm))
    }

    fn charge(state: &mut State, customer: &str, pm: &str, amount: i64) -> Result<Value, ApiError> {
        let form = format!(
            "amount={amount}&currency=usd&customer={customer}&payment_method={pm}&confirm=true&off_session=true\
             &transfer_group=run_1"
        );
        state.create_payment_intent(&Form::parse(form.as_bytes()), 1_000)
    }

    #[test]
    fn checkout_expires_once_then_stays_refused() -> Result<(), ApiError> {
        let mut state = State::default();
        let customer = state.create_customer(&Form::default(), 1_000)?;
        let form = format!(
            "mode=setup&customer={}&payment_method_types[0]=card&success_url=https://x/ok&cancel_url=https://x/no",
            customer["id"].as_str().unwrap_or_default()
        );
        let session = state.create_checkout_session(&Form::parse(form.as_bytes()), "http://fake", 1_000)?;
        let id = session["id"].as_str().unwrap_or_default();
        assert_eq!(session["currency"], Value::Null);
        let late = 1_000 + CHECKOUT_TTL + 1;
        let expired = CheckoutRefusal::Expired {
            cancel_url: Some("https://x/no".to_owned()),
        };
        assert_eq!(state.complete_checkout(id, "visa", late), Err(expired));
        assert_eq!(state.checkout_sessions[0]["status"], "expired");
        let kinds: Vec<&Value> = state.events.iter().map(|e| &e["type"]).collect();
        assert_eq!(kinds, ["customer.created", "checkout.session.expired"]);
        assert!(
            state.complete_checkout(id, "visa", 1_000).is_err(),
            "expired stays expired"
        );
        assert_eq!(state.events.len(), 2);
        assert!(state.payment_methods.is_empty());
        Ok(())
    }

    #[test]
    fn source_transaction_remainder_counts_earlier_transfers() -> Result<(), ApiError> {
        let mut state = State::default();
        let (customer, pm) = customer_with_card(&mut state, "visa", 1_000)?;
        let intent = charge(&mut state, &customer, &pm, 1_000)?;
        let charge_id = intent["latest_charge"].as_str().unwrap_or_default().to_owned();
        assert_eq!(
            state.check_source_transaction(&charge_id, 1_000, "usd")?,
            Some("run_1".to_owned())
        );
        state
            .transfers
            .push(json!({"amount": 600, "source_transaction": charge_id}));
        assert!(state.check_source_transaction(&charge_id, 400, "usd").is_ok());
        let refused = state.check_source_transaction(&charge_id, 401, "usd").err();
        assert_eq!(refused.and_then(|e| e.code), Some("balance_insufficient"));
        let refused = state.check_source_transaction(&charge_id, 1, "eur").err();
        assert_eq!(refused.and_then(|e| e.param), Some("currency".to_owned()));
        Ok(())
    }

    #[test]
    fn a_declined_saved_card_fails_the_intent_and_fails_its_charge() -> Result<(), ApiError> {
        let mut state = State::default();
        let (customer, pm) = customer_with_card(&mut state, "insufficient_funds", 1_000)?;
        let err = charge(&mut state, &customer, &pm, 5_000).err();
        let err = err.ok_or_else(|| ApiError::invalid("the card should decline", "x"))?;
        assert!(err.committed());
        assert_eq!(err.status.as_u16(), 402);
        let body = err.body();
        assert_eq!(body["error"]["decline_code"], "insufficient_funds");
        assert_eq!(body["error"]["payment_intent"]["status"], "requires_payment_method");
        assert_eq!(state.charges[0]["status"], "failed");
        assert_eq!(state.charges[0]["failure_code"], "card_declined");
        assert_eq!(state.payment_intents[0]["latest_charge"], state.charges[0]["id"]);
        // A failed charge funds nothing.
        let id = state.charges[0]["id"].as_str().unwrap_or_default().to_owned();
        assert!(state.check_source_transaction(&id, 1, "usd").is_err());
        Ok(())
    }
}
