//! The plan of a payout run: for each affiliate with a balance, what it would be paid and why
//! not. A dry run returns exactly this; a live run executes it.

use amba_core::round_half_even;

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
            Skip::NothingPayable => "nothing payable yet (commission may still be held)",
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
