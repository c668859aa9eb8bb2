//! Events in, e-mails queued. Each e-mail is a row keyed by (event id, template), written in the
//! consumer's transaction with its inbox row: a redelivered or replayed event queues nothing new.
//! Sending happens later (jobs::deliver), so nothing about e-mail can block, delay or roll back
//! the services that published the events.

use crate::domain::digest::Frequency;
use crate::domain::templates::{self, Email, Payable};
use crate::store::{self, NewEmail};
use amba_bus::consumer::{Delivery, Handler, HandlerError};
use amba_proto::wire as pb;
use prost::Message;
use sqlx::PgConnection;

fn retry(message: String) -> HandlerError {
    HandlerError::Retry(anyhow::anyhow!(message))
}

/// `<ns>.evt.<domain>.<kind>` → (domain, kind).
fn kind_of(subject: &str) -> (&str, &str) {
    let mut parts = subject.rsplitn(3, '.');
    let kind = parts.next().unwrap_or_default();
    let domain = parts.next().unwrap_or_default();
    (domain, kind)
}

/// Every stream's events (one consumer per stream, the same handler).
pub struct Events {
    /// What affiliate links in e-mails point to (`AMBA_PUBLIC_URL`).
    pub public_url: String,
}

impl Handler for Events {
    async fn handle(&self, conn: &mut PgConnection, delivery: &Delivery) -> Result<(), HandlerError> {
        let payload = delivery.payload.as_ref();
        match kind_of(&delivery.subject) {
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
            ("conversion", "approved") => {
                let event = pb::ConversionChanged::decode(payload)?;
                let Some(c) = event.conversion else { return Ok(()) };
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
                // The first commission in a program is news; later ones wait for the digest.
                if store::claim_first_commission(conn, org, &c.program_id, &delivery.event_id).await? {
                    let payable = match store::hold_days(conn, &c.program_id).await? {
                        None => Payable::Unknown,
                        Some(days) if days <= 0 => Payable::Now,
                        Some(days) => chrono::DateTime::from_timestamp_micros(c.decided_at_micros)
                            .filter(|_| c.decided_at_micros > 0)
                            .map_or(Payable::Unknown, |decided| {
                                Payable::On((decided + chrono::Duration::days(i64::from(days))).date_naive())
                            }),
                    };
                    let email = templates::approved(&program, c.commission_minor, &currency, &c.conversion_id, payable);
                    return queue(conn, delivery, org, email, true).await;
                }
                let (enabled, frequency) = store::approval_setting(conn, org).await?;
                let frequency = match frequency.as_deref().and_then(Frequency::parse) {
                    _ if !enabled => Frequency::Off,
                    Some(chosen) => chosen,
                    None => Frequency::Daily,
                };
                let Some((period, period_end)) = frequency.period(chrono::Utc::now()) else {
                    return Ok(());
                };
                store::insert_pending(
                    conn,
                    &store::PendingCommission {
                        event_id: &delivery.event_id,
                        org_id: org,
                        program_id: &c.program_id,
                        currency: &currency,
                        commission_minor: c.commission_minor,
                        sale_minor: c.amount_minor,
                        period: &period,
                        period_end,
                    },
                )
                .await?;
                Ok(())
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
                );
                queue(conn, delivery, &e.affiliate_org_id, email, true).await
            }
            ("payout", kind @ ("sent" | "failed")) => {
                let e = pb::PayoutItemChanged::decode(payload)?;
                let Some(item) = e.item else { return Ok(()) };
                let (program, _) = self.program(conn, &e.program_id).await?;
                let email = if kind == "sent" {
                    templates::payout_sent(&program, item.net_minor, item.fee_minor, &e.currency)
                } else {
                    templates::payout_failed(&program, item.net_minor, &e.currency, &item.reason)
                };
                queue(conn, delivery, &e.affiliate_org_id, email, true).await
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
                );
                queue(conn, delivery, &e.owner_org_id, email, false).await
            }
            ("identity", "existing_account_signup") => {
                let e = pb::ExistingAccountSignup::decode(payload)?;
                if e.email.is_empty() {
                    return Ok(());
                }
                let email = templates::existing_account_signup();
                // Repeated signups with one address (anyone can make them) e-mail it once an hour.
                if store::sent_recently(conn, &e.org_id, email.kind, &e.email, SIGNUP_NOTICE_EVERY).await? {
                    return Ok(());
                }
                insert(conn, delivery, &e.org_id, &[e.email], email, "queued").await
            }
            ("payout", "account_ready") => {
                let e = pb::PayoutAccountChanged::decode(payload)?;
                let Some(account) = e.account else { return Ok(()) };
                // An org in no program yet has no known address: nothing to wait for.
                queue(conn, delivery, &account.org_id, templates::account_ready(), false).await
            }
            _ => Ok(()),
        }
    }

    /// An enrollment event also writes its program owner's addresses: every event of one owner
    /// goes to one worker, so workers never wait on each other for the owner's row. Likewise an
    /// affiliate's approvals, which claim its `first_commissions` rows.
    fn partition_key(&self, delivery: &Delivery) -> Option<String> {
        match kind_of(&delivery.subject) {
            ("enrollment", _) => pb::EnrollmentChanged::decode(delivery.payload.as_ref())
                .ok()
                .map(|e| e.program_owner_org_id),
            ("conversion", "approved") => pb::ConversionChanged::decode(delivery.payload.as_ref())
                .ok()
                .and_then(|e| e.conversion)
                .map(|c| c.affiliate_org_id),
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
        let email = match (event.previous_status.as_str(), enrollment.status.as_str()) {
            ("", "pending") if enrollment.origin == "invite" => templates::invited(&enrollment.program_name),
            (previous, "active") if previous != "active" => {
                templates::activated(&enrollment.program_name, &enrollment.code, &self.public_url)
            }
            _ => return Ok(()),
        };
        queue(conn, delivery, org, email, true).await
    }

    async fn program(&self, conn: &mut PgConnection, program_id: &str) -> Result<(String, String), HandlerError> {
        store::program(conn, program_id)
            .await?
            .ok_or_else(|| retry(format!("program {program_id} not in the read model yet")))
    }
}

/// How often an address is told that someone tried to sign up with it.
const SIGNUP_NOTICE_EVERY: std::time::Duration = std::time::Duration::from_secs(3_600);

/// Queues `email` for `org` once for this event: suppressed if the org turned the kind off.
/// An org whose address is not known yet is waited for (`wait_for_org`), else skipped.
async fn queue(
    conn: &mut PgConnection,
    delivery: &Delivery,
    org_id: &str,
    email: Email,
    wait_for_org: bool,
) -> Result<(), HandlerError> {
    let recipients = match store::org_emails(conn, org_id).await? {
        Some(emails) if !emails.is_empty() => emails,
        _ if wait_for_org => return Err(retry(format!("no e-mail address of {org_id} known yet"))),
        _ => return Ok(()),
    };
    let status = if store::enabled(conn, org_id, email.kind).await? {
        "queued"
    } else {
        "suppressed"
    };
    let name = store::org_name(conn, org_id).await?;
    let email = Email {
        body: templates::greet(&email.body, name.as_deref()),
        ..email
    };
    insert(conn, delivery, org_id, &recipients, email, status).await
}

/// Writes the e-mail row, once per (event, template).
async fn insert(
    conn: &mut PgConnection,
    delivery: &Delivery,
    org_id: &str,
    recipients: &[String],
    email: Email,
    status: &str,
) -> Result<(), HandlerError> {
    store::insert_email(
        conn,
        &NewEmail {
            email_id: &format!("eml_{}", amba_core::id::time_ordered_suffix()),
            event_id: &delivery.event_id,
            template: email.kind,
            org_id,
            recipients,
            subject: &email.subject,
            body: &email.body,
            status,
        },
    )
    .await?;
    Ok(())
}
