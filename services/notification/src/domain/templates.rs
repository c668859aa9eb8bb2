//! The e-mails: one plain-text template per kind (`templates/text/<kind>.txt`, minijinja), each
//! with a subject that says what happened. Nothing secret ever goes into one (no tokens, no
//! onboarding links). Other people's text (program names, reasons, applicant names) goes in
//! verbatim, on one line (`oneline`): the HTML part escapes it.

use super::digest::Digest;
use super::money;
use minijinja::value::Value;
use minijinja::{Environment, Error, UndefinedBehavior, context};
use std::sync::LazyLock;

/// Kinds an org can turn off (`amba_affiliate_notifications_update`).
pub const KINDS: &[&str] = &[
    "invited",
    "enrollment_activated",
    "conversion_approved",
    "clawback",
    "payout_sent",
    "payout_failed",
    "payout_account_ready",
    "conversion_rejected",
    "application_received",
    "approvals_waiting",
    "payout_run_summary",
];

/// The kind (and template name) of digest e-mails; a digest's one-click unsubscribe turns every
/// digest kind off.
pub const DIGEST: &str = "digest";

#[derive(Debug, Clone, PartialEq)]
pub struct Email {
    /// One of [`KINDS`], [`DIGEST`], or a kind that cannot be turned off; also the template name
    /// in the (event, template) idempotency key.
    pub kind: &'static str,
    pub subject: String,
    pub body: String,
}

const SIGNATURE: &str =
    "\n--\nAmba Affiliate. Turn these e-mails off with the MCP tool amba_affiliate_notifications_update.\n";

/// For e-mails that cannot be turned off.
const SHORT_SIGNATURE: &str = "\n--\nAmba Affiliate.\n";

/// Each e-mail's plain text, named `<kind>.txt` (no HTML auto-escaping for `.txt`).
const TEXT: &[(&str, &str)] = &[
    ("invited", include_str!("../../templates/text/invited.txt")),
    (
        "enrollment_activated",
        include_str!("../../templates/text/enrollment_activated.txt"),
    ),
    (
        "conversion_approved",
        include_str!("../../templates/text/conversion_approved.txt"),
    ),
    ("clawback", include_str!("../../templates/text/clawback.txt")),
    ("payout_sent", include_str!("../../templates/text/payout_sent.txt")),
    ("payout_failed", include_str!("../../templates/text/payout_failed.txt")),
    (
        "payout_funding_failed",
        include_str!("../../templates/text/payout_funding_failed.txt"),
    ),
    (
        "existing_account_signup",
        include_str!("../../templates/text/existing_account_signup.txt"),
    ),
    (
        "payout_account_ready",
        include_str!("../../templates/text/payout_account_ready.txt"),
    ),
    (
        "invitation_sent",
        include_str!("../../templates/text/invitation_sent.txt"),
    ),
    (DIGEST, include_str!("../../templates/text/digest.txt")),
    (
        "webhook_disabled",
        include_str!("../../templates/text/webhook_disabled.txt"),
    ),
];

/// Built once. Filters: `money(currency)` on minor units, `plural(one, many)` on a count,
/// `oneline` on other people's text. Globals: `signature`, `short_signature`. Undefined
/// variables are errors (a typo in a template fails its test, not silently).
static ENV: LazyLock<Result<Environment<'static>, Error>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_filter("money", |minor: i64, currency: &str| money::format(minor, currency));
    env.add_filter(
        "plural",
        |count: i64, one: &str, many: &str| {
            if count == 1 { one.to_owned() } else { many.to_owned() }
        },
    );
    env.add_filter("oneline", |text: &str| oneline(text));
    env.add_global("signature", SIGNATURE);
    env.add_global("short_signature", SHORT_SIGNATURE);
    for (kind, source) in TEXT {
        env.add_template_owned(format!("{kind}.txt"), *source)?;
    }
    Ok(env)
});

/// The e-mail of `kind`, its body rendered from `<kind>.txt`.
fn render(kind: &'static str, subject: String, ctx: Value) -> Result<Email, Error> {
    let env = ENV.as_ref().map_err(|e| Error::new(e.kind(), e.to_string()))?;
    let body = env.get_template(&format!("{kind}.txt"))?.render(ctx)?;
    Ok(Email { kind, subject, body })
}

/// Line breaks (and other control characters) in other people's text become one space each run,
/// so a name cannot break an e-mail's layout or a subject line.
fn oneline(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut gap = false;
    for c in text.chars() {
        if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
            gap = true;
        } else {
            if gap && !out.is_empty() {
                out.push(' ');
            }
            gap = false;
            out.push(c);
        }
    }
    out
}

/// `2` `sale` → `2 sales`.
fn counted(count: i64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

pub fn invited(program: &str) -> Result<Email, Error> {
    render(
        "invited",
        format!("You are invited to the {} affiliate program", oneline(program)),
        context! { program },
    )
}

/// To an address an owner invited by e-mail (it may have no account, hence no settings): the
/// single-use claim link. Not in [`KINDS`]: there is no org yet that could turn it off; it counts
/// toward the owner's invitation budget like [`invited`].
pub fn invitation_sent(
    program: &str,
    owner: &str,
    claim_url: &str,
    expires: chrono::NaiveDate,
) -> Result<Email, Error> {
    let owner = if owner.trim().is_empty() {
        "A program owner"
    } else {
        owner
    };
    render(
        "invitation_sent",
        format!("You are invited to the {} affiliate program", oneline(program)),
        context! { program, owner, claim_url, expires => expires.format("%Y-%m-%d").to_string() },
    )
}

pub fn activated(program: &str, code: &str, public_url: &str) -> Result<Email, Error> {
    render(
        "enrollment_activated",
        format!("You are now an affiliate of {}", oneline(program)),
        context! { program, code, public_url },
    )
}

/// `Hello,` → `Hello <org name>,` when the org's name is known (templates stay pure of the
/// read model; the name is looked up when the e-mail is queued).
pub fn greet(body: &str, org_name: Option<&str>) -> String {
    match (body.strip_prefix("Hello,"), org_name.map(str::trim)) {
        (Some(rest), Some(name)) if !name.is_empty() => format!("Hello {name},{rest}"),
        _ => body.to_owned(),
    }
}

/// When a first commission becomes payable (the approval plus the program's hold).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Payable {
    /// The program has no hold.
    Now,
    /// The UTC day the hold ends.
    On(chrono::NaiveDate),
    /// The program's hold is not known here yet.
    Unknown,
}

/// The owner's own order reference (`external_id`) is not the affiliate's business: the e-mail
/// names the conversion by its platform id, which `amba_affiliate_my_conversions_list` shows.
pub fn approved(
    program: &str,
    commission_minor: i64,
    currency: &str,
    conversion_id: &str,
    payable: Payable,
) -> Result<Email, Error> {
    let payable_on = match payable {
        Payable::On(day) => Some(day.format("%Y-%m-%d").to_string()),
        Payable::Now | Payable::Unknown => None,
    };
    render(
        "conversion_approved",
        format!(
            "You earned {} commission in {}",
            money::format(commission_minor, currency),
            oneline(program)
        ),
        context! {
            program,
            commission_minor,
            currency,
            conversion_id,
            payable_now => payable == Payable::Now,
            payable_on,
        },
    )
}

/// One org's digest for one period (`period` is the key of [`super::digest::Frequency::period`]:
/// `instant:2026-01-01T23:50`, `daily:2026-01-01` or `weekly:2026-W01`): a section per non-empty
/// part. Never an `external_id`: the owner's order references are not the affiliate's business.
pub fn digest(digest: &Digest, period: &str) -> Result<Email, Error> {
    let approved: Vec<Value> = digest
        .approved
        .iter()
        .map(|l| {
            context! {
                program => l.program,
                currency => l.currency,
                count => l.count,
                commission_minor => l.commission_minor,
                largest_sales_minor => l.largest_sales_minor,
            }
        })
        .collect();
    let rejected: Vec<Value> = digest
        .rejected
        .iter()
        .map(|l| {
            context! {
                program => l.program,
                currency => l.currency,
                count => l.count,
                sales_minor => l.sales_minor,
                reasons => l.reasons,
            }
        })
        .collect();
    let applications: Vec<Value> = digest
        .applications
        .iter()
        .map(|l| {
            let listed = i64::try_from(l.applicants.len()).unwrap_or(i64::MAX);
            context! {
                program => l.program,
                count => l.count,
                applicants => l.applicants,
                more => l.count.saturating_sub(listed).max(0),
            }
        })
        .collect();
    let waiting: Vec<Value> = digest
        .waiting
        .iter()
        .map(|l| {
            context! {
                program => l.program,
                count => l.count,
                oldest_reported_at => l.oldest_reported_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            }
        })
        .collect();
    let payout_runs: Vec<Value> = digest
        .payout_runs
        .iter()
        .map(|l| {
            context! {
                program => l.program,
                currency => l.currency,
                payout_run_id => l.payout_run_id,
                paid_count => l.paid_count,
                paid_net_minor => l.paid_net_minor,
                fee_minor => l.fee_minor,
                debt_minor => l.debt_minor,
                failed_count => l.failed_count,
                failed_gross_minor => l.failed_gross_minor,
                failure_reasons => l.failure_reasons,
                charged_minor => l.charged_minor,
                refunded_minor => l.refunded_minor,
            }
        })
        .collect();
    render(
        DIGEST,
        digest_subject(digest, period),
        context! { approved, rejected, applications, waiting, payout_runs },
    )
}

/// "Your summary for 2026-01-01: 40 approved sales, 2 rejected".
fn digest_subject(digest: &Digest, period: &str) -> String {
    let when = match period.split_once(':') {
        Some(("instant", start)) => format!("{} UTC", start.replacen('T', " ", 1)),
        Some(("daily", day)) => day.to_owned(),
        Some(("weekly", week)) => format!("the week {week}"),
        _ => period.to_owned(),
    };
    let mut parts = Vec::new();
    if !digest.approved.is_empty() {
        let count = digest.approved.iter().map(|l| l.count).sum::<i64>();
        parts.push(counted(count, "approved sale", "approved sales"));
    }
    if !digest.rejected.is_empty() {
        let count = digest.rejected.iter().map(|l| l.count).sum::<i64>();
        parts.push(if parts.is_empty() {
            counted(count, "rejected sale", "rejected sales")
        } else {
            format!("{count} rejected")
        });
    }
    if !digest.applications.is_empty() {
        let count = digest.applications.iter().map(|l| l.count).sum::<i64>();
        parts.push(counted(count, "new application", "new applications"));
    }
    if !digest.waiting.is_empty() {
        let count = digest.waiting.iter().map(|l| l.count).sum::<i64>();
        parts.push(counted(
            count,
            "conversion waiting for approval",
            "conversions waiting for approval",
        ));
    }
    if !digest.payout_runs.is_empty() {
        let count = i64::try_from(digest.payout_runs.len()).unwrap_or(i64::MAX);
        parts.push(counted(count, "payout run", "payout runs"));
    }
    if parts.is_empty() {
        format!("Your summary for {when}")
    } else {
        format!("Your summary for {when}: {}", parts.join(", "))
    }
}

pub fn clawback(
    program: &str,
    reversed_minor: i64,
    carry_forward_minor: i64,
    currency: &str,
    reason: &str,
) -> Result<Email, Error> {
    render(
        "clawback",
        format!(
            "A refund reversed {} of your commission in {}",
            money::format(reversed_minor, currency),
            oneline(program)
        ),
        context! { program, reversed_minor, carry_forward_minor, currency, reason },
    )
}

/// How the amount sent was reached: the commission, less debt netted and the platform's fee.
pub fn payout_sent(
    program: &str,
    gross_minor: i64,
    debt_minor: i64,
    fee_minor: i64,
    net_minor: i64,
    currency: &str,
) -> Result<Email, Error> {
    render(
        "payout_sent",
        format!(
            "Payout of {} sent for {}",
            money::format(net_minor, currency),
            oneline(program)
        ),
        context! { program, gross_minor, debt_minor, fee_minor, net_minor, currency },
    )
}

pub fn payout_failed(program: &str, net_minor: i64, currency: &str, reason: &str) -> Result<Email, Error> {
    render(
        "payout_failed",
        format!(
            "Your payout of {} for {} failed",
            money::format(net_minor, currency),
            oneline(program)
        ),
        context! { program, net_minor, currency, reason },
    )
}

/// To a program owner whose payout run could not be charged. Not in [`KINDS`]: money that did
/// not move is not an e-mail an owner may turn off.
pub fn funding_failed(program: &str, amount_minor: i64, currency: &str, decline_code: &str) -> Result<Email, Error> {
    render(
        "payout_funding_failed",
        format!(
            "Payouts of {} were not sent: your payment of {} was declined",
            oneline(program),
            money::format(amount_minor, currency)
        ),
        context! { program, amount_minor, currency, decline_code },
    )
}

/// To an address someone tried to sign up with although it has an account. Not in [`KINDS`]: it
/// is about the account's security. Says nothing more than the signup's own answer did.
pub fn existing_account_signup() -> Result<Email, Error> {
    render(
        "existing_account_signup",
        "Someone tried to sign up with your e-mail address".to_owned(),
        context! {},
    )
}

/// To a program owner whose webhook endpoint failed for days and was disabled. Not in
/// [`KINDS`]: an owner must learn that its integration stopped.
pub fn webhook_disabled(program: &str, url: &str, since: &str, last_error: &str) -> Result<Email, Error> {
    render(
        "webhook_disabled",
        format!(
            "A webhook endpoint of {} was disabled after failing for days",
            oneline(program)
        ),
        context! { program, url, since, last_error },
    )
}

pub fn account_ready() -> Result<Email, Error> {
    render(
        "payout_account_ready",
        "Your payout account is ready".to_owned(),
        context! {},
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::digest::{ApplicationsLine, ApprovedLine, PayoutRunLine, RejectedLine, WaitingLine};
    use chrono::{TimeZone, Utc};

    type TestResult = Result<(), Error>;

    #[test]
    fn subjects_say_what_happened_with_people_amounts() -> TestResult {
        assert_eq!(
            approved("Acme", 2469, "USD", "cnv_1", Payable::Unknown)?.subject,
            "You earned $24.69 commission in Acme"
        );
        assert_eq!(
            approved("Acme", 500, "JPY", "cnv_1", Payable::Now)?.subject,
            "You earned ¥500 commission in Acme"
        );
        let c = clawback("Acme", 2000, 2000, "USD", "refund")?;
        assert!(c.subject.contains("$20.00") && c.body.contains("carried forward"));
        assert!(
            clawback("Acme", 1000, 0, "USD", "refund")?
                .body
                .contains("Nothing is carried forward")
        );
        assert!(
            activated("Acme", "CODE1", "https://amba.example")?
                .body
                .contains("https://amba.example/r/CODE1")
        );
        assert!(
            payout_sent("Acme", 2000, 0, 50, 1950, "USD")?
                .subject
                .contains("$19.50")
        );
        let approval = approved("Acme", 2469, "USD", "cnv_1", Payable::Unknown)?;
        assert!(approval.body.contains("conversion cnv_1") && !approval.body.contains("order"));
        assert!(
            approval
                .body
                .contains("It becomes payable once the program's hold period ends; see amba_affiliate_my_balance_get.")
        );
        assert!(approved("A", 1, "USD", "c", Payable::Now)?.body.contains("payable now"));
        let day = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap_or_default();
        assert!(
            approved("A", 1, "USD", "c", Payable::On(day))?
                .body
                .contains("payable on 2026-03-01 (UTC)")
        );
        assert!(greet(&invited("A")?.body, Some("Ann Co")).starts_with("Hello Ann Co,\n\n"));
        assert!(greet(&invited("A")?.body, None).starts_with("Hello,\n\n"));
        let attempt = existing_account_signup()?;
        assert!(!KINDS.contains(&attempt.kind) && !attempt.body.contains("amba_pat_"));
        assert!(attempt.body.ends_with("unchanged.\n\n--\nAmba Affiliate.\n"));
        let funding = funding_failed("Acme", 5000, "USD", "card_declined")?;
        assert!(!KINDS.contains(&funding.kind) && !funding.body.contains("notifications_update"));
        assert!(funding.body.contains("payment of $50.00") && funding.body.contains("(card_declined)"));
        for email in [invited("A")?, account_ready()?, payout_failed("A", 1, "USD", "x")?] {
            assert!(
                KINDS.contains(&email.kind) && email.body.ends_with(SIGNATURE),
                "{email:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn an_emailed_invitation_carries_its_claim_link() -> TestResult {
        let expires = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap_or_default();
        let email = invitation_sent(
            "Acme\nPartners",
            "Acme",
            "https://amba.example/claim/amba_inv_x",
            expires,
        )?;
        assert_eq!(email.subject, "You are invited to the Acme Partners affiliate program");
        assert!(
            email.body.contains("\nhttps://amba.example/claim/amba_inv_x\n"),
            "{}",
            email.body
        );
        assert!(email.body.contains("until 2026-12-01") && email.body.contains("amba_affiliate_invite_claim"));
        assert!(!KINDS.contains(&email.kind) && email.body.ends_with(SHORT_SIGNATURE));
        Ok(())
    }

    #[test]
    fn payouts_say_how_the_amount_was_reached() -> TestResult {
        let plain = payout_sent("Acme", 2000, 0, 0, 2000, "USD")?;
        assert_eq!(plain.subject, "Payout of $20.00 sent for Acme");
        assert!(
            plain.body.contains("Commission earned: $20.00\nSent to you: $20.00\n"),
            "{}",
            plain.body
        );
        assert!(!plain.body.contains("Debt netted") && !plain.body.contains("Platform fee"));
        let full = payout_sent("Acme", 10_000, 2_500, 150, 7_350, "USD")?;
        assert_eq!(full.subject, "Payout of $73.50 sent for Acme");
        assert!(
            full.body.contains(
                "Commission earned: $100.00\n\
                 Debt netted (earlier refunds of paid-out commission): −$25.00\n\
                 Platform fee: −$1.50\n\
                 Sent to you: $73.50\n"
            ),
            "{}",
            full.body
        );
        let fee_only = payout_sent("Acme", 500, 0, 20, 480, "JPY")?;
        assert!(fee_only.body.contains("Platform fee: −¥20\n") && !fee_only.body.contains("Debt"));
        Ok(())
    }

    fn at(h: u32, m: u32) -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, h, m, 0).single().unwrap_or_default()
    }

    fn full_digest() -> Digest {
        Digest {
            approved: vec![
                ApprovedLine {
                    program: "Acme".into(),
                    currency: "USD".into(),
                    count: 2,
                    commission_minor: 401,
                    largest_sales_minor: vec![1005, 1000],
                },
                ApprovedLine {
                    program: "Tokyo\r\nShop".into(),
                    currency: "JPY".into(),
                    count: 1,
                    commission_minor: 500,
                    largest_sales_minor: vec![5000],
                },
            ],
            rejected: vec![RejectedLine {
                program: "Acme".into(),
                currency: "USD".into(),
                count: 3,
                sales_minor: 3000,
                reasons: vec![("duplicate order".into(), 2), (String::new(), 1)],
            }],
            applications: vec![
                ApplicationsLine {
                    program: "Acme".into(),
                    count: 4,
                    applicants: vec!["Ann Co".into(), "<b>Bob</b>".into()],
                },
                ApplicationsLine {
                    program: "Beta".into(),
                    count: 1,
                    applicants: vec!["Cy".into()],
                },
            ],
            waiting: vec![WaitingLine {
                program: "Acme".into(),
                count: 1,
                oldest_reported_at: at(10, 0),
            }],
            payout_runs: vec![
                PayoutRunLine {
                    program: "Acme".into(),
                    currency: "USD".into(),
                    payout_run_id: "prun_1".into(),
                    paid_count: 2,
                    paid_net_minor: 9_700,
                    fee_minor: 300,
                    debt_minor: 1_000,
                    failed_count: 1,
                    failed_gross_minor: 2_000,
                    failure_reasons: vec!["account closed".into(), "bank\nrejected".into()],
                    charged_minor: 13_000,
                    refunded_minor: 2_000,
                },
                PayoutRunLine {
                    program: "Beta".into(),
                    currency: "JPY".into(),
                    payout_run_id: "prun_2".into(),
                    paid_count: 1,
                    paid_net_minor: 980,
                    fee_minor: 20,
                    debt_minor: 0,
                    failed_count: 0,
                    failed_gross_minor: 0,
                    failure_reasons: vec![],
                    charged_minor: 1_000,
                    refunded_minor: 0,
                },
            ],
        }
    }

    #[test]
    fn digests_hold_every_section() -> TestResult {
        let email = digest(&full_digest(), "daily:2026-01-01")?;
        let body = &email.body;
        assert_eq!(email.kind, DIGEST);
        assert_eq!(
            email.subject,
            "Your summary for 2026-01-01: 3 approved sales, 3 rejected, 5 new applications, \
             1 conversion waiting for approval, 2 payout runs"
        );
        assert!(body.starts_with("Hello,\n\n"), "{body}");
        for expected in [
            "\"Acme\": 2 approved sales, commission $4.01\n  Largest sales: $10.05, $10.00\n",
            "\"Tokyo Shop\": 1 approved sale, commission ¥500\n  Largest sales: ¥5,000\n",
            "hold period ends; see amba_affiliate_my_balance_get",
            "\"Acme\": 3 rejected sales worth $30.00\n  - \"duplicate order\" (2)\n  - no reason given (1)\n",
            "amba_affiliate_my_conversions_list",
            "\"Acme\": 4 new applications: Ann Co, <b>Bob</b> and 2 more\n",
            "\"Beta\": 1 new application: Cy\n",
            "amba_affiliate_affiliates_list (status \"pending\")",
            "amba_affiliate_affiliate_approve or amba_affiliate_affiliate_reject",
            "\"Acme\": 1 conversion waiting for your approval for more than a day \
             (the oldest reported 2026-01-01 10:00 UTC)\n",
            "amba_affiliate_conversions_list (status \"pending\")",
            "amba_affiliate_conversion_approve or amba_affiliate_conversion_reject",
            "\"Acme\" payout run prun_1: 2 affiliates paid $97.00 (fees $3.00, debt netted $10.00)\n  \
             1 item worth $20.00 could not be paid and stays payable for the next run: account closed; bank rejected\n  \
             Charged to your payment method: $130.00\n  Refunded to it (not paid out): $20.00\n",
            "\"Beta\" payout run prun_2: 1 affiliate paid ¥980 (fees ¥20, debt netted ¥0)\n  \
             Charged to your payment method: ¥1,000\n",
        ] {
            assert!(body.contains(expected), "{expected:?} in\n{body}");
        }
        assert!(!body.contains("\"Beta\": 1 new application: Cy and"), "{body}");
        assert!(!body.contains("Refunded to it (not paid out): ¥"), "{body}");
        assert!(!body.contains("\n\n\n"), "{body}");
        assert!(
            body.ends_with(&format!("amba_affiliate_notifications_update.\n{SIGNATURE}")),
            "{body}"
        );
        let sections = [
            "were approved",
            "were rejected",
            "New applications",
            "waiting for your approval:",
            "payout runs finished",
        ];
        let positions: Vec<_> = sections.iter().filter_map(|s| body.find(s)).collect();
        assert_eq!(positions.len(), sections.len(), "{body}");
        assert!(positions.is_sorted(), "{body}");
        Ok(())
    }

    #[test]
    fn digests_leave_empty_sections_out() -> TestResult {
        let full = full_digest();
        let approved_only = Digest {
            approved: full.approved[..1].to_vec(),
            ..Digest::default()
        };
        let email = digest(&approved_only, "daily:2026-01-01")?;
        assert_eq!(email.subject, "Your summary for 2026-01-01: 2 approved sales");
        assert!(
            email.body.starts_with(
                "Hello,\n\nSales you referred were approved:\n\n\
                 \"Acme\": 2 approved sales, commission $4.01\n  Largest sales: $10.05, $10.00\n\n\
                 Commission becomes payable"
            ),
            "{}",
            email.body
        );
        for absent in ["rejected", "applications", "waiting", "payout run"] {
            assert!(!email.body.contains(absent), "{absent} in {}", email.body);
        }
        let owner = Digest {
            applications: full.applications[1..].to_vec(),
            payout_runs: full.payout_runs[..1].to_vec(),
            ..Digest::default()
        };
        let email = digest(&owner, "weekly:2026-W01")?;
        assert_eq!(
            email.subject,
            "Your summary for the week 2026-W01: 1 new application, 1 payout run"
        );
        let rejected = Digest {
            rejected: full.rejected.clone(),
            ..Digest::default()
        };
        let email = digest(&rejected, "instant:2026-01-01T23:50")?;
        assert_eq!(email.subject, "Your summary for 2026-01-01 23:50 UTC: 3 rejected sales");
        let one = Digest {
            approved: full.approved[1..].to_vec(),
            waiting: vec![WaitingLine {
                program: "Acme".into(),
                count: 2,
                oldest_reported_at: at(9, 5),
            }],
            ..Digest::default()
        };
        let email = digest(&one, "daily:2026-01-01")?;
        assert_eq!(
            email.subject,
            "Your summary for 2026-01-01: 1 approved sale, 2 conversions waiting for approval"
        );
        assert!(email.body.contains("2 conversions waiting for your approval"));
        Ok(())
    }

    #[test]
    fn no_template_syntax_or_broken_lines_reach_an_email() -> TestResult {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap_or_default();
        let program = "Evil\nCo\r\nLtd";
        let emails = [
            invited(program)?,
            activated(program, "CODE1", "https://amba.example")?,
            approved(program, 1, "USD", "c", Payable::Now)?,
            approved(program, 1, "USD", "c", Payable::On(day))?,
            approved(program, 1, "USD", "c", Payable::Unknown)?,
            clawback(program, 1, 1, "USD", "refund")?,
            clawback(program, 1, 0, "USD", "refund")?,
            payout_sent(program, 3, 1, 1, 1, "USD")?,
            payout_failed(program, 1, "USD", "x")?,
            funding_failed(program, 1, "USD", "declined")?,
            existing_account_signup()?,
            account_ready()?,
            digest(&full_digest(), "daily:2026-01-01")?,
            digest(&Digest::default(), "weekly:2026-W01")?,
        ];
        for email in &emails {
            for text in [&email.subject, &email.body] {
                assert!(
                    !text.contains("{{") && !text.contains("{%") && !text.contains("}}"),
                    "{email:?}"
                );
            }
            assert!(email.body.starts_with("Hello,\n\n"), "{email:?}");
            assert!(!email.subject.contains(['\r', '\n']), "{email:?}");
            assert!(
                !email.body.contains('\r') && !email.body.contains("Evil\n"),
                "{email:?}"
            );
            assert!(!email.body.contains("\n\n\n"), "{email:?}");
        }
        assert!(emails[0].subject.contains("Evil Co Ltd") && emails[0].body.contains("\"Evil Co Ltd\""));
        assert_eq!(oneline("\na\r\n\tb\u{2028}c\n"), "a b c");
        Ok(())
    }
}
