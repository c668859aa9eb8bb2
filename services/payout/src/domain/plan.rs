//! The plan of a payout run: for each affiliate with a balance, what it would be paid and why
//! not. A dry run returns exactly this; a live run executes it.

use amba_core::round_half_even;
use chrono::{DateTime, SecondsFormat, Utc};

/// What the ledger says an affiliate has (from the commission service's `payable_quote`).
#[derive(Debug, Clone, PartialEq)]
pub struct Balance {
    pub enrollment_id: String,
    pub affiliate_org_id: String,
    pub held_minor: i64,
    /// Signed: negative is carry-forward debt.
    pub payable_minor: i64,
    pub debt_minor: i64,
}

/// The affiliate's payout account as far as a run cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    Missing,
    NotReady,
    Ready,
}

/// Why an affiliate is not paid in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    InDebt,
    NothingPayable,
    BelowThreshold,
    NoAccount,
    AccountNotReady,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::InDebt => "in debt: a clawback after payout is carried forward and netted against future commission",
            Skip::NothingPayable => "nothing payable yet",
            Skip::BelowThreshold => "payable is below the program's payout threshold",
            Skip::NoAccount => "no payout account: the affiliate has not called amba_affiliate_my_payout_create",
            Skip::AccountNotReady => "the payout account has not finished Stripe onboarding",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub enrollment_id: String,
    pub affiliate_org_id: String,
    /// Payable net of debt: what leaves the affiliate's payable balance.
    pub gross_minor: i64,
    pub fee_minor: i64,
    pub debt_minor: i64,
    /// What the affiliate receives: gross − fee.
    pub net_minor: i64,
    pub skip: Option<Skip>,
}

/// The platform fee of a payout: `gross × bps / 10 000`, rounded once, half-even.
pub fn fee(gross_minor: i64, fee_bps: u32) -> i64 {
    // Never fails: the denominator is not zero and the fee is at most the gross.
    round_half_even(i128::from(gross_minor) * i128::from(fee_bps.min(10_000)), 10_000).unwrap_or(0)
}

/// One line per balance; paid lines first in the order given.
pub fn plan(
    balances: &[Balance],
    account_of: impl Fn(&str) -> Account,
    threshold_minor: i64,
    fee_bps: u32,
) -> Vec<Line> {
    balances
        .iter()
        .map(|b| {
            let gross = b.payable_minor.max(0);
            let skip = if b.payable_minor < 0 {
                Some(Skip::InDebt)
            } else if gross == 0 {
                Some(Skip::NothingPayable)
            } else if gross < threshold_minor {
                Some(Skip::BelowThreshold)
            } else {
                match account_of(&b.affiliate_org_id) {
                    Account::Missing => Some(Skip::NoAccount),
                    Account::NotReady => Some(Skip::AccountNotReady),
                    Account::Ready => None,
                }
            };
            let fee = fee(gross, fee_bps);
            Line {
                enrollment_id: b.enrollment_id.clone(),
                affiliate_org_id: b.affiliate_org_id.clone(),
                gross_minor: gross,
                fee_minor: fee,
                debt_minor: b.debt_minor,
                net_minor: gross - fee,
                skip,
            }
        })
        .collect()
}

/// Held commission that becomes payable on one day: all of `amount_minor` by `at` (the ledger's
/// release days, earliest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    pub at: DateTime<Utc>,
    pub amount_minor: i64,
}

/// Why a line is (not) paid and when it could be, for people and agents: a stable `code`, a
/// sentence with the amounts and dates, and the figures behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlook {
    /// will_be_paid | held | below_threshold | in_debt | no_payout_account |
    /// payout_account_not_ready | nothing_payable
    pub code: &'static str,
    pub reason: String,
    /// When held commission, as it is released, first brings payable (net of debt) to the
    /// threshold. `None` when it is paid now, or when it depends on something the ledger does not
    /// know (the payout account, future sales, releases beyond the listed days).
    pub payable_at: Option<DateTime<Utc>>,
    /// The next release of held commission, if any.
    pub next_release: Option<Release>,
    /// Payable still missing to reach the threshold (0 when paid, or blocked by the account only).
    pub missing_minor: i64,
}

fn when(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The outlook of `line` (planned from `balance`), given the balance's held `releases` and the
/// program's threshold. It only explains the plan: what a run pays is the line, never this.
pub fn outlook(
    line: &Line,
    balance: &Balance,
    releases: &[Release],
    threshold_minor: i64,
    account: Account,
) -> Outlook {
    let next_release = releases.first().copied();
    let ledger_blocked = matches!(
        line.skip,
        Some(Skip::InDebt | Skip::NothingPayable | Skip::BelowThreshold)
    );
    let (payable_at, missing_minor) = if ledger_blocked {
        // A run pays a positive payable at or above the threshold; releases add to payable.
        let need = i128::from(threshold_minor.max(1)) - i128::from(balance.payable_minor);
        let mut released = 0i128;
        let at = releases.iter().find_map(|r| {
            released += i128::from(r.amount_minor);
            (released >= need).then_some(r.at)
        });
        let missing = (threshold_minor.saturating_sub(balance.payable_minor)).max(0);
        (at, missing)
    } else {
        (None, 0)
    };
    // "held until" already names the first release; other reasons name the date they end.
    let then = |text: String| match payable_at {
        Some(at) if line.skip != Some(Skip::NothingPayable) || Some(at) != next_release.map(|r| r.at) => {
            format!("{text}; payable from {} as held commission is released", when(at))
        }
        _ => text,
    };
    let account_too = match account {
        Account::Ready => "",
        Account::NotReady => "; the payout account has not finished Stripe onboarding either",
        Account::Missing => "; no payout account yet either (amba_affiliate_my_payout_create)",
    };
    let (code, reason) = match line.skip {
        None => ("will_be_paid", "will be paid".to_owned()),
        Some(Skip::InDebt) => (
            "in_debt",
            then(format!(
                "in debt {}: a clawback after payout is carried forward and netted against future commission",
                balance.debt_minor
            )),
        ),
        Some(Skip::NothingPayable) => match next_release {
            Some(first) => {
                let mut text = format!(
                    "commission is held (refund window) until {}: {} held, {} of it released then",
                    when(first.at),
                    balance.held_minor,
                    first.amount_minor
                );
                if payable_at.is_none() && threshold_minor > 0 {
                    text.push_str(&format!(
                        "; still below the program's payout threshold of {threshold_minor} once released"
                    ));
                }
                ("held", then(text))
            }
            None if balance.held_minor > 0 => ("held", format!("{} held (refund window)", balance.held_minor)),
            None => ("nothing_payable", Skip::NothingPayable.as_str().to_owned()),
        },
        Some(Skip::BelowThreshold) => (
            "below_threshold",
            then(format!(
                "payable {} is below the program's payout threshold of {threshold_minor}: {missing_minor} more needed",
                line.gross_minor
            )),
        ),
        Some(Skip::NoAccount) => ("no_payout_account", Skip::NoAccount.as_str().to_owned()),
        Some(Skip::AccountNotReady) => ("payout_account_not_ready", Skip::AccountNotReady.as_str().to_owned()),
    };
    let reason = if ledger_blocked {
        format!("{reason}{account_too}")
    } else {
        reason
    };
    Outlook {
        code,
        reason,
        payable_at,
        next_release,
        missing_minor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn balance(payable: i64, debt: i64) -> Balance {
        Balance {
            enrollment_id: "enr_1".into(),
            affiliate_org_id: "org_1".into(),
            held_minor: 0,
            payable_minor: payable,
            debt_minor: debt,
        }
    }

    #[test]
    fn reasons_in_order() {
        let ready = |_: &str| Account::Ready;
        let line = |b: Balance, threshold| plan(&[b], ready, threshold, 250).remove(0);
        assert_eq!(line(balance(-500, 500), 0).skip, Some(Skip::InDebt));
        assert_eq!(line(balance(0, 0), 0).skip, Some(Skip::NothingPayable));
        assert_eq!(line(balance(999, 0), 1_000).skip, Some(Skip::BelowThreshold));
        assert_eq!(line(balance(1_000, 0), 1_000).skip, None);
        assert_eq!(
            plan(&[balance(1_000, 0)], |_| Account::Missing, 0, 0)[0].skip,
            Some(Skip::NoAccount)
        );
        assert_eq!(
            plan(&[balance(1_000, 0)], |_| Account::NotReady, 0, 0)[0].skip,
            Some(Skip::AccountNotReady)
        );
    }

    #[test]
    fn fee_is_rounded_once_half_even() {
        // 2.5 % of 10,001 = 250.025 → 250; of 10,020 = 250.5 → 250 (even); of 10,060 = 251.5 → 252.
        assert_eq!(fee(10_001, 250), 250);
        assert_eq!(fee(10_020, 250), 250);
        assert_eq!(fee(10_060, 250), 252);
        let l = plan(&[balance(10_060, 0)], |_| Account::Ready, 0, 250).remove(0);
        assert_eq!((l.gross_minor, l.fee_minor, l.net_minor), (10_060, 252, 9_808));
    }

    fn day(d: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000 + i64::from(d) * 86_400, 0).unwrap_or_default()
    }

    fn explain(b: Balance, releases: &[Release], threshold: i64, account: Account) -> Outlook {
        let line = plan(std::slice::from_ref(&b), |_| account, threshold, 0).remove(0);
        outlook(&line, &b, releases, threshold, account)
    }

    #[test]
    fn outlook_says_why_and_when() {
        let held = |payable, held| Balance {
            held_minor: held,
            ..balance(payable, (-payable).max(0))
        };
        let releases = [
            Release {
                at: day(3),
                amount_minor: 400,
            },
            Release {
                at: day(9),
                amount_minor: 700,
            },
        ];
        let ready = Account::Ready;

        let o = explain(held(2_000, 0), &[], 1_000, ready);
        assert_eq!(
            (o.code, o.reason.as_str(), o.payable_at, o.missing_minor),
            ("will_be_paid", "will be paid", None, 0)
        );

        // Held only, no threshold: payable at the first release, which the reason names.
        let o = explain(held(0, 1_100), &releases, 0, ready);
        assert_eq!(
            (o.code, o.payable_at, o.next_release),
            ("held", Some(day(3)), Some(releases[0]))
        );
        assert!(
            o.reason.contains(&when(day(3))) && o.reason.contains("1100 held, 400 of it"),
            "{}",
            o.reason
        );
        assert!(!o.reason.contains("payable from"), "{}", o.reason);

        // Held, threshold 1,000: the second release reaches it.
        let o = explain(held(0, 1_100), &releases, 1_000, ready);
        assert_eq!((o.payable_at, o.missing_minor), (Some(day(9)), 1_000));
        assert!(
            o.reason.contains(&format!("payable from {}", when(day(9)))),
            "{}",
            o.reason
        );

        // Held, but even all of it stays under the threshold: no date.
        let o = explain(held(0, 1_100), &releases, 5_000, Account::Missing);
        assert_eq!(o.payable_at, None);
        assert!(
            o.reason.contains("still below the program's payout threshold of 5000"),
            "{}",
            o.reason
        );
        assert!(o.reason.contains("no payout account yet either"), "{}", o.reason);

        // Below the threshold: the threshold, what is missing, and when releases reach it.
        let o = explain(held(980, 1_100), &releases, 1_000, ready);
        assert_eq!(
            (o.code, o.payable_at, o.missing_minor),
            ("below_threshold", Some(day(3)), 20)
        );
        assert!(
            o.reason
                .contains("payable 980 is below the program's payout threshold of 1000: 20 more needed"),
            "{}",
            o.reason
        );
        assert!(
            o.reason.contains(&format!("payable from {}", when(day(3)))),
            "{}",
            o.reason
        );
        let o = explain(held(980, 0), &[], 1_000, ready);
        assert_eq!((o.payable_at, o.missing_minor), (None, 20));

        // In debt: releases first cover the debt.
        let o = explain(held(-500, 1_100), &releases, 0, ready);
        assert_eq!((o.code, o.payable_at, o.missing_minor), ("in_debt", Some(day(9)), 500));
        assert!(o.reason.contains("in debt 500"), "{}", o.reason);

        // Blocked by the account only: no date the ledger could know.
        let o = explain(held(2_000, 1_100), &releases, 1_000, Account::NotReady);
        assert_eq!(
            (o.code, o.payable_at, o.missing_minor),
            ("payout_account_not_ready", None, 0)
        );
        let o = explain(held(2_000, 0), &[], 0, Account::Missing);
        assert_eq!(o.code, "no_payout_account");
        let o = explain(held(0, 0), &[], 0, ready);
        assert_eq!(o.code, "nothing_payable");
    }

    proptest! {
        #[test]
        fn net_plus_fee_is_gross_and_nothing_negative(payable in -1_000_000i64..1_000_000_000_000, bps in 0u32..=10_000) {
            let l = plan(&[balance(payable, (-payable).max(0))], |_| Account::Ready, 0, bps).remove(0);
            prop_assert_eq!(l.net_minor + l.fee_minor, l.gross_minor);
            prop_assert!(l.gross_minor >= 0 && l.fee_minor >= 0 && l.net_minor >= 0);
            prop_assert!(l.fee_minor <= l.gross_minor);
        }
    }
}
