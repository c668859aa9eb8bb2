//! The e-mails: one plain-text template per kind, each with a subject that says what happened.
//! Nothing secret ever goes into one (no tokens, no onboarding links).

use super::money;

/// Kinds an org can turn off (`amba_affiliate_notifications_update`).
pub const KINDS: &[&str] = &[
    "invited",
    "enrollment_activated",
    "conversion_approved",
    "clawback",
    "payout_sent",
    "payout_failed",
    "payout_account_ready",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Email {
    /// One of [`KINDS`]; also the template name in the (event, template) idempotency key.
    pub kind: &'static str,
    pub subject: String,
    pub body: String,
}

const SIGNATURE: &str =
    "\n--\nAmba Affiliate. Turn these e-mails off with the MCP tool amba_affiliate_notifications_update.\n";

pub fn invited(program: &str) -> Email {
    Email {
        kind: "invited",
        subject: format!("You are invited to the {program} affiliate program"),
        body: format!(
            "Hello,\n\nYou have been invited to join the affiliate program \"{program}\".\n\n\
             To accept, call the MCP tool amba_affiliate_my_invites_list to see the invitation, then \
             amba_affiliate_my_invite_accept with its enrollment_id (or amba_affiliate_my_invite_decline).\n{SIGNATURE}"
        ),
    }
}

pub fn activated(program: &str, code: &str, public_url: &str) -> Email {
    Email {
        kind: "enrollment_activated",
        subject: format!("You are now an affiliate of {program}"),
        body: format!(
            "Hello,\n\nYour enrollment in \"{program}\" is active.\n\n\
             Your referral code: {code}\nYour affiliate link: {public_url}/r/{code}\n\n\
             Sales reported with your code, or by visitors who came through your link, earn you commission.\n{SIGNATURE}"
        ),
    }
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
pub fn approved(program: &str, commission_minor: i64, currency: &str, conversion_id: &str, payable: Payable) -> Email {
    let amount = money::format(commission_minor, currency);
    let when = match payable {
        Payable::Now => "It is payable now (the program has no hold period)".to_owned(),
        Payable::On(day) => format!(
            "It becomes payable on {} (UTC), when the program's hold period ends",
            day.format("%Y-%m-%d")
        ),
        Payable::Unknown => "It becomes payable once the program's hold period ends".to_owned(),
    };
    Email {
        kind: "conversion_approved",
        subject: format!("You earned {amount} commission in {program}"),
        body: format!(
            "Hello,\n\nA sale you referred in \"{program}\" was approved (conversion {conversion_id}).\n\n\
             Commission: {amount}\n\n{when}; see amba_affiliate_my_balance_get.\n\n\
             Later commissions in this program come as one summary a day (choose instant, daily, weekly or off \
             with amba_affiliate_notifications_update).\n{SIGNATURE}"
        ),
    }
}

/// Later commissions, summed per program: count, commission and the largest sale amounts
/// (never an `external_id`: the owner's order references are not the affiliate's business).
pub fn digest(lines: &[crate::store::DigestLine]) -> Email {
    let count: i64 = lines.iter().map(|l| l.count).sum();
    let mut body = String::from("Hello,\n\nSales you referred were approved:\n");
    for line in lines {
        let largest = line
            .largest_sales_minor
            .iter()
            .map(|sale| money::format(*sale, &line.currency))
            .collect::<Vec<_>>()
            .join(", ");
        body.push_str(&format!(
            "\n\"{}\": {} approved {}, commission {}\n  Largest sales: {largest}\n",
            line.program,
            line.count,
            if line.count == 1 { "sale" } else { "sales" },
            money::format(line.commission_minor, &line.currency),
        ));
    }
    body.push_str(&format!(
        "\nCommission becomes payable once each program's hold period ends; see amba_affiliate_my_balance_get.\n\
         Choose how often these summaries come (instant, daily, weekly or off) with \
         amba_affiliate_notifications_update.\n{SIGNATURE}"
    ));
    Email {
        kind: "conversion_approved",
        subject: format!(
            "Your commission summary: {count} approved {}",
            if count == 1 { "sale" } else { "sales" }
        ),
        body,
    }
}

pub fn clawback(program: &str, reversed_minor: i64, carry_forward_minor: i64, currency: &str, reason: &str) -> Email {
    let reversed = money::format(reversed_minor, currency);
    let debt = if carry_forward_minor > 0 {
        format!(
            "{} of it had already been paid out; it is carried forward and netted against your next payouts.",
            money::format(carry_forward_minor, currency)
        )
    } else {
        "Nothing is carried forward as debt.".to_owned()
    };
    Email {
        kind: "clawback",
        subject: format!("A refund reversed {reversed} of your commission in {program}"),
        body: format!(
            "Hello,\n\nA sale you referred in \"{program}\" was refunded or charged back ({reason}).\n\n\
             Commission reversed: {reversed}\n{debt}\n{SIGNATURE}"
        ),
    }
}

pub fn payout_sent(program: &str, net_minor: i64, fee_minor: i64, currency: &str) -> Email {
    let net = money::format(net_minor, currency);
    Email {
        kind: "payout_sent",
        subject: format!("Payout of {net} sent for {program}"),
        body: format!(
            "Hello,\n\nWe sent you a payout of {net} for \"{program}\" (after a platform fee of {}). It reaches \
             your bank on your payout account's schedule.\n{SIGNATURE}",
            money::format(fee_minor, currency)
        ),
    }
}

pub fn payout_failed(program: &str, net_minor: i64, currency: &str, reason: &str) -> Email {
    let net = money::format(net_minor, currency);
    Email {
        kind: "payout_failed",
        subject: format!("Your payout of {net} for {program} failed"),
        body: format!(
            "Hello,\n\nA payout of {net} for \"{program}\" could not be made: {reason}\n\nThe amount stays in your \
             payable balance for the next run. Check your payout account (amba_affiliate_my_payout_request).\n{SIGNATURE}"
        ),
    }
}

/// To a program owner whose payout run could not be charged. Not in [`KINDS`]: money that did
/// not move is not an e-mail an owner may turn off.
pub fn funding_failed(program: &str, amount_minor: i64, currency: &str, decline_code: &str) -> Email {
    let amount = money::format(amount_minor, currency);
    Email {
        kind: "payout_funding_failed",
        subject: format!("Payouts of {program} were not sent: your payment of {amount} was declined"),
        body: format!(
            "Hello,\n\nA payout run of \"{program}\" needed a payment of {amount} from your saved payment method, and \
             the payment was declined ({decline_code}).\n\nNothing was transferred; your affiliates' commission stays \
             payable. Save another payment method with the MCP tool amba_affiliate_program_funding_setup, then run \
             the payout again (amba_affiliate_payout_run with a new idempotency_key).\n\n--\nAmba Affiliate.\n"
        ),
    }
}

/// To an address someone tried to sign up with although it has an account. Not in [`KINDS`]: it
/// is about the account's security. Says nothing more than the signup's own answer did.
pub fn existing_account_signup() -> Email {
    Email {
        kind: "existing_account_signup",
        subject: "Someone tried to sign up with your e-mail address".to_owned(),
        body: "Hello,\n\nSomeone asked to sign up for Amba Affiliate with this e-mail address, which already has an \
               account. Nothing was created and no access token was issued.\n\nIf it was you: keep using your \
               organization's access tokens, or create another one with the MCP tool amba_affiliate_tokens_create \
               from a client that has one (ask the platform's operator if none is left). If it was not you, \
               nothing needs doing: your account is unchanged.\n\n--\nAmba Affiliate.\n"
            .to_owned(),
    }
}

pub fn account_ready() -> Email {
    Email {
        kind: "payout_account_ready",
        subject: "Your payout account is ready".to_owned(),
        body: format!("Hello,\n\nStripe confirmed your payout account: payouts can now be sent to you.\n{SIGNATURE}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_say_what_happened_with_people_amounts() {
        assert_eq!(
            approved("Acme", 2469, "USD", "cnv_1", Payable::Unknown).subject,
            "You earned $24.69 commission in Acme"
        );
        assert_eq!(
            approved("Acme", 500, "JPY", "cnv_1", Payable::Now).subject,
            "You earned ¥500 commission in Acme"
        );
        let c = clawback("Acme", 2000, 2000, "USD", "refund");
        assert!(c.subject.contains("$20.00") && c.body.contains("carried forward"));
        assert!(
            clawback("Acme", 1000, 0, "USD", "refund")
                .body
                .contains("Nothing is carried forward")
        );
        assert!(
            activated("Acme", "CODE1", "https://amba.example")
                .body
                .contains("https://amba.example/r/CODE1")
        );
        assert!(payout_sent("Acme", 1950, 50, "USD").subject.contains("$19.50"));
        let approval = approved("Acme", 2469, "USD", "cnv_1", Payable::Unknown);
        assert!(approval.body.contains("conversion cnv_1") && !approval.body.contains("order"));
        assert!(approved("A", 1, "USD", "c", Payable::Now).body.contains("payable now"));
        let day = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap_or_default();
        assert!(
            approved("A", 1, "USD", "c", Payable::On(day))
                .body
                .contains("payable on 2026-03-01 (UTC)")
        );
        let summary = digest(&[crate::store::DigestLine {
            program: "Acme".into(),
            currency: "USD".into(),
            count: 2,
            commission_minor: 401,
            largest_sales_minor: vec![1005, 1000],
        }]);
        assert_eq!(summary.subject, "Your commission summary: 2 approved sales");
        assert!(summary.body.contains("\"Acme\": 2 approved sales, commission $4.01"));
        assert!(summary.body.contains("Largest sales: $10.05, $10.00"));
        assert!(greet(&invited("A").body, Some("Ann Co")).starts_with("Hello Ann Co,\n\n"));
        assert!(greet(&invited("A").body, None).starts_with("Hello,\n\n"));
        let attempt = existing_account_signup();
        assert!(!KINDS.contains(&attempt.kind) && !attempt.body.contains("amba_pat_"));
        for email in [invited("A"), account_ready(), payout_failed("A", 1, "USD", "x")] {
            assert!(KINDS.contains(&email.kind) && email.body.contains("notifications_update"));
        }
    }
}
