//! Events in, e-mails queued. Each e-mail is a row keyed by (event id, template), written in the
//! consumer's transaction with its inbox row: a redelivered or replayed event queues nothing new.
//! Sending happens later (jobs::deliver), so nothing about e-mail can block, delay or roll back
//! the services that published the events.

use crate::domain::digest::{self, Frequency};
use crate::domain::templates::{self, Email, Payable};
use crate::store::{self, DigestEntry, NewEmail};
use amba_bus::consumer::{Delivery, Handler, HandlerError};
use amba_proto::wire as pb;
use chrono::{DateTime, Utc};
use prost::Message;
use sqlx::PgConnection;

fn retry(message: String) -> HandlerError {
    HandlerError::Retry(anyhow::anyhow!(message))
}

/// A template that does not render cannot render on redelivery either.
fn unrenderable(err: minijinja::Error) -> HandlerError {
    HandlerError::Permanent(format!("e-mail template: {err}"))
}

/// How many e-mails may go out, beyond which they are refused (kept as `refused`, counted and
/// logged): a flood from one org or to one org never reaches a mailbox, and never holds up
/// other orgs or the services that publish the events.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    /// Invitations one program owner's org may cause per hour (`AMBA_MAIL_INVITATIONS_PER_HOUR`).
    pub invitations_per_org_per_hour: u32,
    /// E-mails outside digests one org may get per day (`AMBA_MAIL_PER_RECIPIENT_PER_DAY`).
    pub per_recipient_per_day: u32,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            invitations_per_org_per_hour: 500,
            per_recipient_per_day: 100,
        }
    }
}

/// Every stream's events (one consumer per stream, the same handler).
#[derive(Clone)]
pub struct Events {
    /// What affiliate links in e-mails point to (`AMBA_PUBLIC_URL`).
    pub public_url: String,
    pub budgets: Budgets,
}

impl Handler for Events {
    async fn handle(&self, conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        let payload = delivery.payload.as_ref();
        match delivery.event() {
            ("program", _) => {
                let event = pb::ProgramChanged::decode(payload)?;
                if let Some(p) = event.program {
                    store::upsert_program(
                        conn,
                        &p.program_id,
                        &p.name,
                        &p.currency,
                        &p.owner_org_id,
                        i32::try_from(p.hold_days).unwrap_or(i32::MAX),
                        (i64::try_from(p.version).unwrap_or(i64::MAX), p.updated_at_micros),
                    )
                    .await?;
                }
                Ok(())
            }
            ("enrollment", _) => {
                self.enrollment(conn, delivery, pb::EnrollmentChanged::decode(payload)?)
                    .await
            }
            ("conversion", kind @ ("approved" | "rejected" | "recorded")) => {
                let event = pb::ConversionChanged::decode(payload)?;
                let Some(c) = event.conversion else { return Ok(()) };
                if event.previous_status == "pending" {
                    store::drop_waiting(conn, &c.conversion_id).await?;
                }
                match kind {
                    "approved" => self.approved(conn, delivery, c).await,
                    "rejected" => self.rejected(conn, delivery, c).await,
                    _ => self.reported(conn, delivery, c).await,
                }
            }
            ("commission", "clawed_back") => {
                let e = pb::CommissionClawedBack::decode(payload)?;
                if e.affiliate_org_id.is_empty() || (e.reversed_minor == 0 && e.carry_forward_minor == 0) {
                    return Ok(());
                }
                let (program, _) = self.program(conn, &e.program_id).await?;
                let email = templates::clawback(
                    &program,
                    e.reversed_minor,
                    e.carry_forward_minor,
                    &e.currency,
                    &e.reason,
                )
                .map_err(unrenderable)?;
                self.queue(conn, delivery, To::org(&e.affiliate_org_id, &e.program_id), email)
                    .await
            }
            ("payout", kind @ ("sent" | "failed")) => {
                let e = pb::PayoutItemChanged::decode(payload)?;
                let Some(item) = e.item else { return Ok(()) };
                let (program, _) = self.program(conn, &e.program_id).await?;
                let email = if kind == "sent" {
                    templates::payout_sent(
                        &program,
                        item.gross_minor,
                        item.debt_minor,
                        item.fee_minor,
                        item.net_minor,
                        &e.currency,
                    )
                } else {
                    templates::payout_failed(&program, item.net_minor, &e.currency, &item.reason)
                }
                .map_err(unrenderable)?;
                self.queue(conn, delivery, To::org(&e.affiliate_org_id, &e.program_id), email)
                    .await
            }
            ("payout", "funding_failed") => {
                let e = pb::PayoutRunChanged::decode(payload)?;
                let (Some(run), false) = (e.run, e.owner_org_id.is_empty()) else {
                    return Ok(());
                };
                let funding = run.funding.unwrap_or_default();
                let email = templates::funding_failed(
                    &e.program_name,
                    funding.amount_minor,
                    &run.currency,
                    &funding.decline_code,
                )
                .map_err(unrenderable)?;
                let to = To {
                    wait_for_org: false,
                    ..To::org(&e.owner_org_id, &e.program_id)
                };
                self.queue(conn, delivery, to, email).await
            }
            ("payout", "run_completed") => {
                let e = pb::PayoutRunChanged::decode(payload)?;
                let (Some(run), Some(summary), false) = (e.run, e.summary, e.owner_org_id.is_empty()) else {
                    return Ok(());
                };
                let entry = DigestEntry {
                    event_id: &delivery.event_id,
                    kind: "payout_run_summary",
                    org_id: &e.owner_org_id,
                    program_id: &e.program_id,
                    currency: &run.currency,
                    subject_ref: Some(&run.payout_run_id),
                    payload: Some(summary.encode_to_vec()),
                    ..DigestEntry::default()
                };
                record(conn, entry, Utc::now()).await
            }
            ("identity", "existing_account_signup") => {
                let e = pb::ExistingAccountSignup::decode(payload)?;
                if e.email.is_empty() {
                    return Ok(());
                }
                let email = templates::existing_account_signup().map_err(unrenderable)?;
                // Repeated signups with one address (anyone can make them) e-mail it once an hour.
                if store::sent_recently(conn, &e.org_id, email.kind, &e.email, SIGNUP_NOTICE_EVERY).await? {
                    return Ok(());
                }
                let to = To {
                    wait_for_org: false,
                    ..To::org(&e.org_id, "")
                };
                insert(conn, delivery, &to, &[e.email], email, Outcome::Queued).await
            }
            ("identity", "invitation_sent") => {
                self.invitation(conn, delivery, pb::InvitationSent::decode(payload)?)
                    .await
            }
            ("payout", "account_ready") => {
                let e = pb::PayoutAccountChanged::decode(payload)?;
                let Some(account) = e.account else { return Ok(()) };
                // An org in no program yet has no known address: nothing to wait for.
                let email = templates::account_ready().map_err(unrenderable)?;
                let to = To {
                    wait_for_org: false,
                    ..To::org(&account.org_id, "")
                };
                self.queue(conn, delivery, to, email).await
            }
            _ => Ok(()),
        }
    }

    /// Under load nearly every event is a later commission of an affiliate already told about
    /// its first: those are recorded for the digests with a handful of statements for the whole
    /// group ([`Events::later_commissions`]); every other event is handled on its own, in order.
    async fn handle_batch(&self, conn: &mut PgConnection, deliveries: &[&Delivery]) -> Result<(), HandlerError> {
        let mut approvals = Vec::new();
        for delivery in deliveries {
            match new_approval(delivery)? {
                Some(conversion) => approvals.push((*delivery, conversion)),
                None => self.handle(&mut *conn, delivery).await?,
            }
        }
        self.later_commissions(conn, approvals).await
    }

    /// An enrollment event also writes its program owner's addresses: every event of one owner
    /// goes to one worker, so workers never wait on each other for the owner's row. Likewise an
    /// affiliate's conversions: approvals claim its `first_commissions` rows, and a conversion's
    /// decision must follow its report (which it takes off the owner's waiting list).
    fn partition_key(&self, delivery: &Delivery) -> Option<String> {
        match delivery.event() {
            ("enrollment", _) => pb::EnrollmentChanged::decode(delivery.payload.as_ref())
                .ok()
                .map(|e| e.program_owner_org_id),
            ("conversion", _) => pb::ConversionChanged::decode(delivery.payload.as_ref())
                .ok()
                .and_then(|e| e.conversion)
                .map(|c| c.affiliate_org_id),
            // Their limits are counted before the e-mail is written (once an hour per address,
            // the owner's invitations per hour): one worker per address or owner, in order, so
            // two workers never both find room for the last one.
            ("identity", "existing_account_signup") => pb::ExistingAccountSignup::decode(delivery.payload.as_ref())
                .ok()
                .map(|e| e.email.to_lowercase()),
            ("identity", "invitation_sent") => pb::InvitationSent::decode(delivery.payload.as_ref())
                .ok()
                .map(|e| e.owner_org_id),
            _ => None,
        }
    }
}

impl Events {
    async fn enrollment(
        &self,
        conn: &mut PgConnection,
        delivery: &Delivery,
        event: pb::EnrollmentChanged,
    ) -> Result<(), HandlerError> {
        let Some(enrollment) = event.enrollment else {
            return Ok(());
        };
        store::upsert_org_emails(
            conn,
            &enrollment.affiliate_org_id,
            &event.affiliate_emails,
            Some(&event.affiliate_org_name),
        )
        .await?;
        store::upsert_org_emails(conn, &event.program_owner_org_id, &event.owner_emails, None).await?;
        let org = &enrollment.affiliate_org_id;
        let program = &enrollment.program_id;
        let email = match (event.previous_status.as_str(), enrollment.status.as_str()) {
            ("", "pending") if enrollment.origin == "invite" => {
                let email = templates::invited(&enrollment.program_name).map_err(unrenderable)?;
                let to = To {
                    sender_org_id: Some(&event.program_owner_org_id),
                    ..To::org(org, program)
                };
                return self.queue(conn, delivery, to, email).await;
            }
            // An application the owner decides by hand: news for the owner's digest.
            ("", "pending") if !event.program_owner_org_id.is_empty() => {
                let name = Some(event.affiliate_org_name.as_str()).filter(|n| !n.is_empty());
                let entry = DigestEntry {
                    event_id: &delivery.event_id,
                    kind: "application_received",
                    org_id: &event.program_owner_org_id,
                    program_id: program,
                    label: Some(name.unwrap_or(org)),
                    ..DigestEntry::default()
                };
                return record(conn, entry, Utc::now()).await;
            }
            (previous, "active") if previous != "active" => {
                templates::activated(&enrollment.program_name, &enrollment.code, &self.public_url)
                    .map_err(unrenderable)?
            }
            _ => return Ok(()),
        };
        self.queue(conn, delivery, To::org(org, program), email).await
    }

    /// An owner invited an address by e-mail: the claim link goes to that address alone (it may
    /// have no account, so no org and no settings), within the owner's invitation budget.
    async fn invitation(
        &self,
        conn: &mut PgConnection,
        delivery: &Delivery,
        e: pb::InvitationSent,
    ) -> Result<(), HandlerError> {
        if e.email.is_empty() || e.token.is_empty() {
            return Ok(());
        }
        let expires = DateTime::from_timestamp_micros(e.expires_at_micros)
            .unwrap_or_else(Utc::now)
            .date_naive();
        let claim_url = format!("{}/claim/{}", self.public_url.trim_end_matches('/'), e.token);
        let email = templates::invitation_sent(&e.program_name, &e.owner_org_name, &claim_url, expires)
            .map_err(unrenderable)?;
        let invitations = self.budgets.invitations_per_org_per_hour;
        let outcome = if store::invitations_last_hour(conn, &e.owner_org_id, invitations).await? >= invitations {
            Outcome::refused(
                "invitations_per_org",
                format!("over the budget of {invitations} invitations per organization per hour"),
            )
        } else {
            Outcome::Queued
        };
        let to = To {
            sender_org_id: Some(&e.owner_org_id),
            wait_for_org: false,
            ..To::org("", &e.program_id)
        };
        insert(conn, delivery, &to, &[e.email], email, outcome).await
    }

    /// An approved commission: the org's first in the program is e-mailed at once, later ones wait
    /// for the digest.
    async fn approved(
        &self,
        conn: &mut PgConnection,
        delivery: &Delivery,
        c: pb::Conversion,
    ) -> Result<(), HandlerError> {
        if c.affiliate_org_id.is_empty() || c.commission_minor <= 0 {
            return Ok(());
        }
        let (program, currency) = self.program(conn, &c.program_id).await?;
        let currency = if c.currency.is_empty() {
            currency
        } else {
            c.currency.clone()
        };
        let org = &c.affiliate_org_id;
        if store::claim_first_commission(conn, org, &c.program_id, &delivery.event_id).await? {
            let payable = match store::hold_days(conn, &c.program_id).await? {
                None => Payable::Unknown,
                Some(days) if days <= 0 => Payable::Now,
                Some(days) => DateTime::from_timestamp_micros(c.decided_at_micros)
                    .filter(|_| c.decided_at_micros > 0)
                    .map_or(Payable::Unknown, |decided| {
                        Payable::On((decided + chrono::Duration::days(i64::from(days))).date_naive())
                    }),
            };
            let email = templates::approved(&program, c.commission_minor, &currency, &c.conversion_id, payable)
                .map_err(unrenderable)?;
            return self.queue(conn, delivery, To::org(org, &c.program_id), email).await;
        }
        let entry = DigestEntry {
            event_id: &delivery.event_id,
            kind: "conversion_approved",
            org_id: org,
            program_id: &c.program_id,
            currency: &currency,
            commission_minor: c.commission_minor,
            sale_minor: c.amount_minor,
            ..DigestEntry::default()
        };
        record(conn, entry, Utc::now()).await
    }

    /// New approvals (see [`new_approval`]) of a group as one unit: the program, first-commission
    /// and preference lookups and the digest rows are one statement each for the group. An
    /// affiliate's first commission in a program still gets its own e-mail at once, as
    /// [`Events::approved`] sends it.
    async fn later_commissions(
        &self,
        conn: &mut PgConnection,
        approvals: Vec<(&Delivery, pb::Conversion)>,
    ) -> Result<(), HandlerError> {
        let approvals: Vec<_> = approvals
            .into_iter()
            .filter(|(_, c)| !c.affiliate_org_id.is_empty() && c.commission_minor > 0)
            .collect();
        if approvals.is_empty() {
            return Ok(());
        }
        let program_ids: Vec<&str> = unique(approvals.iter().map(|(_, c)| c.program_id.as_str()));
        let programs = store::programs(conn, &program_ids).await?;
        if let Some(missing) = program_ids.iter().find(|p| !programs.contains_key(**p)) {
            return Err(retry(format!("program {missing} not in the read model yet")));
        }
        // The first event of each (org, program) in the group claims it, if no earlier one did.
        let mut claims: Vec<(&str, &str, &str)> = Vec::new();
        for (delivery, c) in &approvals {
            let pair = (c.affiliate_org_id.as_str(), c.program_id.as_str());
            if !claims.iter().any(|(org, program, _)| (*org, *program) == pair) {
                claims.push((pair.0, pair.1, delivery.event_id.as_str()));
            }
        }
        let firsts = store::claim_first_commissions(conn, &claims).await?;
        let orgs: Vec<&str> = unique(claims.iter().map(|(org, _, _)| *org));
        let settings = store::settings_of_orgs(conn, APPROVED, &orgs).await?;
        let now = Utc::now();
        let mut entries = Vec::with_capacity(approvals.len());
        for (delivery, c) in &approvals {
            let (org, program_id) = (c.affiliate_org_id.as_str(), c.program_id.as_str());
            if firsts.get(&(org.to_owned(), program_id.to_owned())) == Some(&delivery.event_id) {
                self.approved(conn, delivery, c.clone()).await?;
                continue;
            }
            let setting = store::resolve_for(&settings, org, program_id);
            let Some((period, period_end)) = frequency(&setting, APPROVED).period(now) else {
                continue;
            };
            let program_currency = programs.get(program_id).map(|(_, currency)| currency.as_str());
            entries.push(store::OwnedDigestEntry {
                event_id: delivery.event_id.clone(),
                kind: APPROVED,
                org_id: org.to_owned(),
                program_id: program_id.to_owned(),
                currency: if c.currency.is_empty() {
                    program_currency.unwrap_or_default().to_owned()
                } else {
                    c.currency.clone()
                },
                commission_minor: c.commission_minor,
                sale_minor: c.amount_minor,
                recorded_at: now,
                period,
                period_end,
            });
        }
        store::insert_approved_entries(conn, &entries).await?;
        Ok(())
    }

    /// A sale the owner rejected: the affiliate's digest says so, with the owner's reason.
    async fn rejected(
        &self,
        conn: &mut PgConnection,
        delivery: &Delivery,
        c: pb::Conversion,
    ) -> Result<(), HandlerError> {
        if c.affiliate_org_id.is_empty() {
            return Ok(());
        }
        let (_, currency) = self.program(conn, &c.program_id).await?;
        let entry = DigestEntry {
            event_id: &delivery.event_id,
            kind: "conversion_rejected",
            org_id: &c.affiliate_org_id,
            program_id: &c.program_id,
            currency: if c.currency.is_empty() { &currency } else { &c.currency },
            sale_minor: c.amount_minor,
            reason: Some(c.reason.trim()).filter(|r| !r.is_empty()),
            ..DigestEntry::default()
        };
        record(conn, entry, Utc::now()).await
    }

    /// A reported conversion left pending for the owner: if still pending a day later, it is in
    /// the owner's digest of the period that day ends in (dropped when decided before).
    async fn reported(
        &self,
        conn: &mut PgConnection,
        delivery: &Delivery,
        c: pb::Conversion,
    ) -> Result<(), HandlerError> {
        if c.status != "pending" {
            return Ok(());
        }
        let owner = store::program_owner(conn, &c.program_id)
            .await?
            .ok_or_else(|| retry(format!("program {} not in the read model yet", c.program_id)))?;
        let reported = DateTime::from_timestamp_micros(c.recorded_at_micros)
            .filter(|_| c.recorded_at_micros > 0)
            .unwrap_or_else(Utc::now);
        let entry = DigestEntry {
            event_id: &delivery.event_id,
            kind: "approvals_waiting",
            org_id: &owner,
            program_id: &c.program_id,
            currency: &c.currency,
            sale_minor: c.amount_minor,
            subject_ref: Some(&c.conversion_id),
            recorded_at: reported,
            ..DigestEntry::default()
        };
        record(conn, entry, reported + chrono::Duration::days(1)).await
    }

    async fn program(&self, conn: &mut PgConnection, program_id: &str) -> Result<(String, String), HandlerError> {
        store::program(conn, program_id)
            .await?
            .ok_or_else(|| retry(format!("program {program_id} not in the read model yet")))
    }

    /// Queues `email` for `to` once for this event: suppressed if the org turned the kind off,
    /// refused over a send budget. An org whose address is not known yet is waited for
    /// (`to.wait_for_org`), else skipped.
    async fn queue(
        &self,
        conn: &mut PgConnection,
        delivery: &Delivery,
        to: To<'_>,
        email: Email,
    ) -> Result<(), HandlerError> {
        let recipients = match store::org_emails(conn, to.org_id).await? {
            Some(emails) if !emails.is_empty() => emails,
            _ if to.wait_for_org => return Err(retry(format!("no e-mail address of {} known yet", to.org_id))),
            _ => return Ok(()),
        };
        let outcome = if store::enabled(conn, to.org_id, email.kind, to.program_id).await? {
            self.within_budgets(conn, to.org_id, to.sender_org_id, email.kind)
                .await?
        } else {
            Outcome::Suppressed
        };
        let name = store::org_name(conn, to.org_id).await?;
        let email = Email {
            body: templates::greet(&email.body, name.as_deref()),
            ..email
        };
        insert(conn, delivery, &to, &recipients, email, outcome).await
    }

    /// Queued, or refused when a send budget is spent (the sender's invitations this hour, the
    /// recipient's e-mails outside digests today). Money the owner did not pay in is never
    /// refused: an owner must hear that a payout charge failed.
    async fn within_budgets(
        &self,
        conn: &mut PgConnection,
        org_id: &str,
        sender_org_id: Option<&str>,
        kind: &str,
    ) -> Result<Outcome, HandlerError> {
        if kind == "payout_funding_failed" {
            return Ok(Outcome::Queued);
        }
        let Budgets {
            invitations_per_org_per_hour: invitations,
            per_recipient_per_day: per_day,
        } = self.budgets;
        if let Some(sender) = sender_org_id.filter(|_| kind == "invited")
            && store::invitations_last_hour(conn, sender, invitations).await? >= invitations
        {
            return Ok(Outcome::refused(
                "invitations_per_org",
                format!("over the budget of {invitations} invitations per organization per hour"),
            ));
        }
        if store::immediate_last_day(conn, org_id, per_day).await? >= per_day {
            return Ok(Outcome::refused(
                "per_recipient",
                format!("over the budget of {per_day} e-mails per organization per day outside summaries"),
            ));
        }
        Ok(Outcome::Queued)
    }
}

/// Who an e-mail goes to.
struct To<'a> {
    org_id: &'a str,
    /// The program it is about ('' for none): its settings win over the org's.
    program_id: &'a str,
    /// Who caused it, when that is another org (an invitation's program owner).
    sender_org_id: Option<&'a str>,
    /// Retry the event until the org's address is known (else skip the e-mail).
    wait_for_org: bool,
}

impl<'a> To<'a> {
    fn org(org_id: &'a str, program_id: &'a str) -> To<'a> {
        To {
            org_id,
            program_id,
            sender_org_id: None,
            wait_for_org: true,
        }
    }
}

/// What becomes of an e-mail row.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Queued,
    /// The recipient turned the kind off.
    Suppressed,
    /// Over a send budget (why).
    Refused(String),
}

impl Outcome {
    fn refused(budget: &'static str, why: String) -> Outcome {
        amba_telemetry::metrics::counter!("amba_emails_refused_total", "budget" => budget).increment(1);
        tracing::warn!(budget, %why, "e-mail refused");
        Outcome::Refused(why)
    }

    fn status(self) -> (&'static str, Option<String>) {
        match self {
            Outcome::Queued => ("queued", None),
            Outcome::Suppressed => ("suppressed", None),
            Outcome::Refused(why) => ("refused", Some(why)),
        }
    }
}

/// How often an address is told that someone tried to sign up with it.
const SIGNUP_NOTICE_EVERY: std::time::Duration = std::time::Duration::from_secs(3_600);

/// The kind of an approved commission's digest line.
const APPROVED: &str = "conversion_approved";

/// How often `kind` is summed for an org with `setting`: off when turned off, else its chosen
/// frequency, else the kind's default.
fn frequency(setting: &store::Setting, kind: &str) -> Frequency {
    match setting.frequency.as_deref().and_then(Frequency::parse) {
        _ if !setting.enabled => Frequency::Off,
        Some(chosen) => chosen,
        None => digest::default_frequency(kind).unwrap_or(Frequency::Daily),
    }
}

/// A newly approved conversion (`conversion.approved` not decided from pending, which also
/// takes it off the owner's waiting list): what [`Events::later_commissions`] takes as a group.
fn new_approval(delivery: &Delivery) -> Result<Option<pb::Conversion>, HandlerError> {
    if delivery.event() != ("conversion", "approved") {
        return Ok(None);
    }
    let event = pb::ConversionChanged::decode(delivery.payload.as_ref())?;
    if event.previous_status == "pending" {
        return Ok(None);
    }
    Ok(event.conversion)
}

/// `items` without repeats, in first-seen order.
fn unique<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = std::collections::HashSet::new();
    items.filter(|item| seen.insert(*item)).collect()
}

/// Records `entry` for the digest of the period `at` falls in, by the org's frequency for the
/// kind in the program; nothing when the org turned the kind off.
async fn record(conn: &mut PgConnection, entry: DigestEntry<'_>, at: DateTime<Utc>) -> Result<(), HandlerError> {
    let setting = store::setting(conn, entry.org_id, entry.kind, entry.program_id).await?;
    let Some((period, period_end)) = frequency(&setting, entry.kind).period(at) else {
        return Ok(());
    };
    let recorded_at = if entry.recorded_at == DateTime::<Utc>::default() {
        Utc::now()
    } else {
        entry.recorded_at
    };
    store::insert_entry(
        conn,
        &DigestEntry {
            period: &period,
            period_end,
            recorded_at,
            ..entry
        },
    )
    .await?;
    Ok(())
}

/// Writes the e-mail row, once per (event, template).
async fn insert(
    conn: &mut PgConnection,
    delivery: &Delivery,
    to: &To<'_>,
    recipients: &[String],
    email: Email,
    outcome: Outcome,
) -> Result<(), HandlerError> {
    let (status, last_error) = outcome.status();
    store::insert_email(
        conn,
        &NewEmail {
            email_id: &format!("eml_{}", amba_core::id::time_ordered_suffix()),
            event_id: &delivery.event_id,
            template: email.kind,
            org_id: to.org_id,
            recipients,
            subject: &email.subject,
            body: &email.body,
            status,
            sender_org_id: to.sender_org_id,
            last_error: last_error.as_deref(),
        },
    )
    .await?;
    Ok(())
}
