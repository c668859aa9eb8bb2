//! Commission rules: the versioned rule a program owner writes, and the one function that turns
//! a conversion into a commission under it. Pure: no I/O, no clock.
//!
//! The rule is evaluated once, when commission accrues (a conversion is approved), by the
//! service that approves it; the amount and the rule version travel with the event, so the
//! ledger books exactly that and nothing is ever re-rated.

pub mod fraud;
mod rule;

pub use fraud::FraudChecks;
pub use rule::{CommissionRule, SCHEMA_VERSION, Tier, TierBasis, TierPeriod};

use amba_core::rounding::apply_bps;

/// What a rule needs to know about a conversion and the affiliate's volume before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Context {
    /// The conversion's amount in minor units of the program currency (≥ 0).
    pub amount_minor: i64,
    /// For a renewal of a customer bound to the affiliate: whole months since that customer's
    /// first conversion. `None` for a first purchase.
    pub renewal_months_since_first: Option<u32>,
    /// Approved conversions of this affiliate in the rule's tier period, before this one.
    pub prior_conversions: i64,
    /// Their amounts, in minor units.
    pub prior_revenue_minor: i64,
}

/// The commission one conversion earns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accrual {
    pub amount_minor: i64,
    /// The rate applied, for percentage-based rules.
    pub bps: Option<u32>,
    /// Index of the tier that applied, for tiered rules.
    pub tier: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleError {
    NegativeAmount,
    Overflow,
}

impl CommissionRule {
    /// The commission for a conversion (rounded half-even once, to the minor unit).
    ///
    /// - percentage: `amount × bps`, first purchases and renewals alike;
    /// - flat: the fixed amount per conversion;
    /// - recurring: `amount × bps` for the first purchase and for renewals less than `months`
    ///   months after the customer's first conversion; nothing after that;
    /// - tiered: the tier is the last one whose `from` is ≤ the affiliate's volume *before* this
    ///   conversion in the period (count of approved conversions, or their revenue): with tiers
    ///   from 0 and from 10 by conversions, conversions 1–10 earn the first rate, the 11th on
    ///   the second.
    pub fn evaluate(&self, ctx: &Context) -> Result<Accrual, RuleError> {
        if ctx.amount_minor < 0 {
            return Err(RuleError::NegativeAmount);
        }
        let share = |bps: u32| apply_bps(ctx.amount_minor, bps).ok_or(RuleError::Overflow);
        Ok(match self {
            CommissionRule::Percentage { bps } => Accrual {
                amount_minor: share(*bps)?,
                bps: Some(*bps),
                tier: None,
            },
            CommissionRule::Flat { amount_minor } => Accrual {
                amount_minor: *amount_minor,
                bps: None,
                tier: None,
            },
            CommissionRule::Recurring { bps, months } => {
                let within = ctx.renewal_months_since_first.is_none_or(|elapsed| elapsed < *months);
                let amount = if within { share(*bps)? } else { 0 };
                Accrual {
                    amount_minor: amount,
                    bps: Some(*bps),
                    tier: None,
                }
            }
            CommissionRule::Tiered { basis, tiers, .. } => {
                let volume = match basis {
                    TierBasis::Conversions => ctx.prior_conversions,
                    TierBasis::Revenue => ctx.prior_revenue_minor,
                };
                let index = tiers.iter().rposition(|t| t.from <= volume).unwrap_or(0);
                let bps = tiers.get(index).map(|t| t.bps).unwrap_or(0);
                Accrual {
                    amount_minor: share(bps)?,
                    bps: Some(bps),
                    tier: Some(index),
                }
            }
        })
    }

    /// The period a tiered rule counts volume in: `None` for lifetime, or the month.
    pub fn tier_period(&self) -> Option<TierPeriod> {
        match self {
            CommissionRule::Tiered { period, .. } => Some(*period),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn rule(value: serde_json::Value) -> CommissionRule {
        CommissionRule::from_json(&value).unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn ctx(amount_minor: i64) -> Context {
        Context {
            amount_minor,
            ..Default::default()
        }
    }

    #[test]
    fn percentage_and_flat() {
        let pct = rule(json!({"schema":1,"type":"percentage","bps":2000}));
        assert_eq!(pct.evaluate(&ctx(10_000)).map(|a| a.amount_minor), Ok(2_000));
        assert_eq!(pct.evaluate(&ctx(3)).map(|a| a.amount_minor), Ok(1)); // 0.6 -> 1
        assert_eq!(pct.evaluate(&ctx(-1)), Err(RuleError::NegativeAmount));
        let flat = rule(json!({"schema":1,"type":"flat","amount_minor":1500}));
        assert_eq!(flat.evaluate(&ctx(1)).map(|a| a.amount_minor), Ok(1_500));
    }

    #[test]
    fn recurring_earns_for_n_months() {
        let r = rule(json!({"schema":1,"type":"recurring","bps":2000,"months":12}));
        let renewal = |months| Context {
            amount_minor: 5_000,
            renewal_months_since_first: Some(months),
            ..Default::default()
        };
        assert_eq!(r.evaluate(&ctx(5_000)).map(|a| a.amount_minor), Ok(1_000));
        assert_eq!(r.evaluate(&renewal(0)).map(|a| a.amount_minor), Ok(1_000));
        assert_eq!(r.evaluate(&renewal(11)).map(|a| a.amount_minor), Ok(1_000));
        assert_eq!(r.evaluate(&renewal(12)).map(|a| a.amount_minor), Ok(0));
    }

    #[test]
    fn tier_boundaries() {
        let t = rule(
            json!({"schema":1,"type":"tiered","basis":"conversions","period":"month",
            "tiers":[{"from":0,"bps":1000},{"from":10,"bps":1500},{"from":20,"bps":2000}]}),
        );
        let at = |prior| {
            t.evaluate(&Context {
                amount_minor: 10_000,
                prior_conversions: prior,
                ..Default::default()
            })
        };
        assert_eq!(at(0).map(|a| (a.amount_minor, a.tier)), Ok((1_000, Some(0))));
        assert_eq!(at(9).map(|a| (a.amount_minor, a.tier)), Ok((1_000, Some(0))));
        assert_eq!(at(10).map(|a| (a.amount_minor, a.tier)), Ok((1_500, Some(1))));
        assert_eq!(at(19).map(|a| (a.amount_minor, a.tier)), Ok((1_500, Some(1))));
        assert_eq!(at(20).map(|a| (a.amount_minor, a.tier)), Ok((2_000, Some(2))));
        let by_revenue = rule(json!({"schema":1,"type":"tiered","basis":"revenue","period":"lifetime",
            "tiers":[{"from":0,"bps":500},{"from":100000,"bps":1000}]}));
        let rev = |prior| {
            by_revenue.evaluate(&Context {
                amount_minor: 1_000,
                prior_revenue_minor: prior,
                ..Default::default()
            })
        };
        assert_eq!(rev(99_999).map(|a| a.amount_minor), Ok(50));
        assert_eq!(rev(100_000).map(|a| a.amount_minor), Ok(100));
        assert_eq!(by_revenue.tier_period(), Some(TierPeriod::Lifetime));
    }

    proptest! {
        #[test]
        fn percentage_commission_never_exceeds_the_sale(amount in 0i64..1_000_000_000_000, bps in 0u32..=10_000) {
            let r = CommissionRule::Percentage { bps };
            let a = r.evaluate(&ctx(amount)).map(|a| a.amount_minor).unwrap_or(-1);
            prop_assert!((0..=amount).contains(&a));
        }

        #[test]
        fn tiers_never_go_down_with_volume(prior in 0i64..100, more in 0i64..100) {
            let t = CommissionRule::Tiered { basis: TierBasis::Conversions, period: TierPeriod::Month,
                tiers: vec![Tier { from: 0, bps: 1000 }, Tier { from: 10, bps: 1500 }, Tier { from: 50, bps: 1800 }] };
            let at = |p| t.evaluate(&Context { amount_minor: 10_000, prior_conversions: p, ..Default::default() }).map(|a| a.amount_minor).unwrap_or(0);
            prop_assert!(at(prior + more) >= at(prior));
        }
    }
}
