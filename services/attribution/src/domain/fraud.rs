//! Fraud checks on an attributed conversion: each runs (or is skipped, saying why) and a hit
//! holds the sale for the owner's review with a reason code and details. Never drops a sale.

use amba_rules::FraudChecks;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Throwaway e-mail domains: the list maintained in the `mailchecker` crate, plus any the
/// operator adds from a file (one domain per line), so the list grows without a release.
#[derive(Debug, Default)]
pub struct DisposableDomains(HashSet<String>);

impl DisposableDomains {
    /// The bundled list and `extra` (blank lines and `#` comments ignored).
    pub fn new(extra: &str) -> Self {
        let mut domains: HashSet<String> = mailchecker::blacklist().into_iter().map(str::to_owned).collect();
        domains.extend(
            extra
                .lines()
                .map(|l| l.trim().trim_start_matches('@').to_ascii_lowercase())
                .filter(|l| !l.is_empty() && !l.starts_with('#')),
        );
        DisposableDomains(domains)
    }

    /// The domain of `email` (or one it is under) is a throwaway one: that domain.
    pub fn matches(&self, email: &str) -> Option<String> {
        let domain = email
            .rsplit_once('@')?
            .1
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let mut candidate = domain.as_str();
        loop {
            if self.0.contains(candidate) {
                return Some(candidate.to_owned());
            }
            candidate = candidate.split_once('.')?.1;
        }
    }
}

/// What a check needs to know about one conversion.
pub struct Facts<'a> {
    pub customer_email: Option<&'a str>,
    pub affiliate_emails: &'a [String],
    /// For a sale attributed by a click: the click's address, and when the affiliate's org last
    /// called the platform from it (within the last 30 days), if it did.
    pub click_address_seen: Option<(&'a str, Option<DateTime<Utc>>)>,
    /// The affiliate's conversions in the minute before this one (earlier ones of the same
    /// batch included); `None` when velocity is off.
    pub last_minute: Option<u32>,
    /// Seconds from the click that attributed the sale to the sale; `None` when no click did.
    pub click_to_sale_seconds: Option<i64>,
    /// The affiliate's last approved sales and how many of them were refunded.
    pub recent_sales: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Hit,
    Skipped,
}

/// One check as run, for the trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRun {
    /// self_referral | disposable_email | velocity | click_to_sale | refund_rate
    pub check: String,
    pub outcome: Outcome,
    /// What was seen; empty where it goes without saying ([`usual_detail`] words it when read).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The words of an outcome recorded without details.
pub fn usual_detail(check: &str, outcome: Outcome) -> &'static str {
    match (check, outcome) {
        ("self_referral", Outcome::Skipped) => "no customer e-mail reported and no click address known",
        ("self_referral", Outcome::Passed) => {
            "neither the customer e-mail nor the click's address is the affiliate org's"
        }
        ("disposable_email", Outcome::Skipped) => "no customer e-mail reported",
        ("disposable_email", Outcome::Passed) => "the customer e-mail's domain is not a known disposable one",
        ("click_to_sale", Outcome::Skipped) => "no click attributed the sale",
        _ => "",
    }
}

impl CheckRun {
    fn new(check: &str, outcome: Outcome, detail: String) -> Self {
        CheckRun {
            check: check.to_owned(),
            outcome,
            detail,
        }
    }
}

/// Runs the program's checks; the hits are the reasons to hold.
pub fn screen(checks: &FraudChecks, disposable: &DisposableDomains, f: &Facts<'_>) -> Vec<CheckRun> {
    let mut runs = Vec::new();
    if checks.self_referral {
        let own_email = f
            .customer_email
            .is_some_and(|email| f.affiliate_emails.iter().any(|e| e.eq_ignore_ascii_case(email)));
        let own_address = f.click_address_seen.and_then(|(address, seen)| Some((address, seen?)));
        runs.push(match (own_email, own_address) {
            (true, _) => CheckRun::new(
                "self_referral",
                Outcome::Hit,
                "the customer e-mail belongs to the affiliate's own org".into(),
            ),
            (false, Some((address, seen))) => CheckRun::new(
                "self_referral",
                Outcome::Hit,
                format!(
                    "the click came from {address}, an address the affiliate's org called the platform from (last {})",
                    seen.format("%Y-%m-%d")
                ),
            ),
            // The usual outcomes are stored without words (see `usual_detail`): every sale has them.
            (false, None) if f.customer_email.is_none() && f.click_address_seen.is_none() => {
                CheckRun::new("self_referral", Outcome::Skipped, String::new())
            }
            (false, None) => CheckRun::new("self_referral", Outcome::Passed, String::new()),
        });
    }
    if checks.disposable_email {
        runs.push(match f.customer_email.map(|e| (e, disposable.matches(e))) {
            None => CheckRun::new("disposable_email", Outcome::Skipped, String::new()),
            Some((_, Some(domain))) => CheckRun::new(
                "disposable_email",
                Outcome::Hit,
                format!("the customer e-mail is at {domain}, a disposable e-mail domain"),
            ),
            Some((_, None)) => CheckRun::new("disposable_email", Outcome::Passed, String::new()),
        });
    }
    if let (Some(v), Some(before)) = (checks.velocity, f.last_minute) {
        let count = before.saturating_add(1);
        let outcome = if count > v.max_per_minute {
            Outcome::Hit
        } else {
            Outcome::Passed
        };
        runs.push(CheckRun::new(
            "velocity",
            outcome,
            format!(
                "this is the affiliate's conversion number {count} within a minute (limit {})",
                v.max_per_minute
            ),
        ));
    }
    if let Some(c) = checks.click_to_sale {
        runs.push(match f.click_to_sale_seconds {
            None => CheckRun::new("click_to_sale", Outcome::Skipped, String::new()),
            Some(seconds) => CheckRun::new(
                "click_to_sale",
                if seconds < i64::from(c.min_seconds) {
                    Outcome::Hit
                } else {
                    Outcome::Passed
                },
                format!(
                    "the sale came {seconds} s after the click (at least {} s expected)",
                    c.min_seconds
                ),
            ),
        });
    }
    if let (Some(r), Some((sales, refunded))) = (checks.refund_rate, f.recent_sales) {
        runs.push(if sales < r.last_sales {
            CheckRun::new(
                "refund_rate",
                Outcome::Skipped,
                format!("{sales} approved sales so far; the rate counts from {}", r.last_sales),
            )
        } else {
            let rate_bps = u64::from(refunded) * 10_000 / u64::from(sales.max(1));
            CheckRun::new(
                "refund_rate",
                if rate_bps > u64::from(r.max_bps) {
                    Outcome::Hit
                } else {
                    Outcome::Passed
                },
                format!(
                    "{refunded} of the affiliate's last {sales} sales were refunded ({}.{:02} %; limit {}.{:02} %)",
                    rate_bps / 100,
                    rate_bps % 100,
                    r.max_bps / 100,
                    r.max_bps % 100
                ),
            )
        });
    }
    runs
}

/// The reason a conversion held by `hits` shows its owner.
pub fn hold_reason<'a>(hits: impl IntoIterator<Item = &'a CheckRun>) -> String {
    let details: Vec<String> = hits.into_iter().map(|h| format!("{}: {}", h.check, h.detail)).collect();
    format!("held for review ({})", details.join("; "))
}

/// The reason codes of the hits, in check order.
pub fn hits(runs: &[CheckRun]) -> Vec<&CheckRun> {
    runs.iter().filter(|r| r.outcome == Outcome::Hit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use amba_rules::fraud::{ClickToSale, RefundRate, Velocity};

    fn facts<'a>(emails: &'a [String]) -> Facts<'a> {
        Facts {
            customer_email: None,
            affiliate_emails: emails,
            click_address_seen: None,
            last_minute: None,
            click_to_sale_seconds: None,
            recent_sales: None,
        }
    }

    fn codes(runs: &[CheckRun]) -> Vec<(String, Outcome)> {
        runs.iter().map(|r| (r.check.clone(), r.outcome)).collect()
    }

    #[test]
    fn disposable_domains_bundled_extra_and_subdomains() {
        let list = DisposableDomains::new("# ours\nthrowaway.example\n\n@Burner.Test\n");
        assert_eq!(list.matches("a@mailinator.com").as_deref(), Some("mailinator.com"));
        assert_eq!(
            list.matches("a@x.throwaway.example").as_deref(),
            Some("throwaway.example")
        );
        assert_eq!(list.matches("a@BURNER.test").as_deref(), Some("burner.test"));
        assert_eq!(list.matches("ann@example.com"), None);
        assert_eq!(list.matches("no-at-sign"), None);
    }

    #[test]
    fn a_click_from_the_affiliate_s_own_address_is_a_self_referral() {
        let emails = vec!["ann@aff.example".to_owned()];
        let list = DisposableDomains::default();
        let seen = DateTime::from_timestamp(1_800_000_000, 0);
        let run = |address: Option<(&str, Option<DateTime<Utc>>)>, email: Option<&str>| {
            screen(
                &FraudChecks::default(),
                &list,
                &Facts {
                    customer_email: email,
                    click_address_seen: address,
                    ..facts(&emails)
                },
            )
            .remove(0)
        };
        let own = run(Some(("198.51.100.7", seen)), None);
        assert_eq!(own.outcome, Outcome::Hit);
        assert!(own.detail.contains("198.51.100.7"), "{}", own.detail);
        assert_eq!(run(Some(("198.51.100.8", None)), None).outcome, Outcome::Passed);
        assert_eq!(run(None, Some("carol@shop.example")).outcome, Outcome::Passed);
        assert_eq!(run(None, None).outcome, Outcome::Skipped);
    }

    #[test]
    fn each_check_hits_passes_or_says_why_it_was_skipped() {
        let emails = vec!["ann@aff.example".to_owned()];
        let list = DisposableDomains::new("");
        let all = FraudChecks {
            velocity: Some(Velocity { max_per_minute: 2 }),
            click_to_sale: Some(ClickToSale { min_seconds: 10 }),
            refund_rate: Some(RefundRate {
                max_bps: 2_500,
                last_sales: 4,
            }),
            ..FraudChecks::default()
        };
        let quiet = screen(&all, &list, &facts(&emails));
        assert_eq!(
            codes(&quiet),
            vec![
                ("self_referral".into(), Outcome::Skipped),
                ("disposable_email".into(), Outcome::Skipped),
                ("click_to_sale".into(), Outcome::Skipped),
            ]
        );
        let loud = screen(
            &all,
            &list,
            &Facts {
                customer_email: Some("ANN@aff.example"),
                last_minute: Some(2),
                click_to_sale_seconds: Some(3),
                recent_sales: Some((4, 2)),
                ..facts(&emails)
            },
        );
        let hit: Vec<&str> = hits(&loud).iter().map(|r| r.check.as_str()).collect();
        assert_eq!(hit, vec!["self_referral", "velocity", "click_to_sale", "refund_rate"]);
        assert!(
            loud[4]
                .detail
                .contains("2 of the affiliate's last 4 sales were refunded (50.00 %")
        );
        let fine = screen(
            &all,
            &list,
            &Facts {
                customer_email: Some("bob@mailinator.com"),
                last_minute: Some(1),
                click_to_sale_seconds: Some(10),
                recent_sales: Some((4, 1)),
                ..facts(&emails)
            },
        );
        let hit: Vec<&str> = hits(&fine).iter().map(|r| r.check.as_str()).collect();
        assert_eq!(hit, vec!["disposable_email"]);
        let off = FraudChecks {
            self_referral: false,
            disposable_email: false,
            ..FraudChecks::default()
        };
        assert!(
            screen(
                &off,
                &list,
                &Facts {
                    customer_email: Some("ann@aff.example"),
                    ..facts(&emails)
                }
            )
            .is_empty()
        );
    }
}
