//! The commission a conversion accrues when it is approved, under the program's current rule.
//!
//! Decided once, at approval, and carried in `conversion.approved`; the ledger books exactly
//! that. Tier volume is the affiliate's approved conversions (count or revenue) before this one
//! in the tier period: the calendar month (UTC) of the approval, or lifetime.

use super::trail::{CommissionTrail, TierHit};
use amba_rules::{Accrual, CommissionRule, Context, TierBasis, TierPeriod};
use chrono::{DateTime, Datelike, Months, Utc};

/// The counter key of a tier period for an approval at `at`.
pub fn period_key(rule: &CommissionRule, at: DateTime<Utc>) -> Option<String> {
    match rule.tier_period()? {
        TierPeriod::Lifetime => Some("lifetime".to_owned()),
        TierPeriod::Month => Some(format!("{:04}-{:02}", at.year(), at.month())),
    }
}

/// Whole calendar months from `first` to `at` (0 within the first month after `first`).
pub fn months_between(first: DateTime<Utc>, at: DateTime<Utc>) -> u32 {
    let months = (at.year() - first.year()) * 12 + i32::try_from(at.month()).unwrap_or(0)
        - i32::try_from(first.month()).unwrap_or(0);
    // Not yet a full month if the day/time of month has not come round again.
    let partial = (at.day(), at.time()) < (first.day(), first.time());
    u32::try_from(months - i32::from(partial)).unwrap_or(0)
}

/// Why a renewal earns nothing under a recurring rule: it came after the rule's window (measured
/// from the customer's first conversion, as [`months_between`] counts it). `None` when the rule
/// is not recurring, the conversion is no renewal, or it is inside the window.
pub fn renewal_outside_window(
    rule: &CommissionRule,
    renewal_since: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> Option<String> {
    let CommissionRule::Recurring { months, .. } = rule else {
        return None;
    };
    let (first, at) = renewal_since?;
    if months_between(first, at) < *months {
        return None;
    }
    let ended = first
        .checked_add_months(Months::new(*months))
        .map(|end| end.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "its end".to_owned());
    let unit = if *months == 1 { "month" } else { "months" };
    Some(format!(
        "renewal after the recurring window of {months} {unit} (from the customer's first conversion on {}) ended on {ended}: no commission",
        first.format("%Y-%m-%d")
    ))
}

/// What a rule needs for one approval.
pub fn context(amount_minor: i64, renewal_since: Option<(DateTime<Utc>, DateTime<Utc>)>, prior: (i64, i64)) -> Context {
    Context {
        amount_minor,
        renewal_months_since_first: renewal_since.map(|(first, at)| months_between(first, at)),
        prior_conversions: prior.0,
        prior_revenue_minor: prior.1,
    }
}

/// What one pricing was given and gave, for its trail.
pub struct Priced<'a> {
    pub rule: &'a CommissionRule,
    pub version: i32,
    pub context: &'a Context,
    pub accrual: &'a Accrual,
    pub period: Option<&'a str>,
    pub currency: &'a str,
    pub note: Option<String>,
}

/// The commission's computation step by step: base, rate or tier hit, the exact product, its
/// rounding and the result.
pub fn trail(p: Priced<'_>) -> CommissionTrail {
    let tier = match (p.rule, p.accrual.tier) {
        (CommissionRule::Tiered { basis, tiers, .. }, Some(index)) => tiers.get(index).map(|t| TierHit {
            period: p.period.unwrap_or("lifetime").to_owned(),
            basis: match basis {
                TierBasis::Conversions => "conversions",
                TierBasis::Revenue => "revenue",
            }
            .to_owned(),
            prior_conversions: p.context.prior_conversions,
            prior_revenue_minor: p.context.prior_revenue_minor,
            index,
            from: t.from,
            bps: t.bps,
        }),
        _ => None,
    };
    let outside_window = p.note.is_some() && p.accrual.amount_minor == 0;
    let exact_minor = match (p.rule, p.accrual.bps) {
        (CommissionRule::Flat { .. }, _) => None,
        (_, Some(_)) if outside_window => None,
        (_, Some(bps)) => Some(exact_share(p.context.amount_minor, bps)),
        (_, None) => None,
    };
    // The rule's text, the time and the rounding's words are filled in when read (Trail::render).
    CommissionTrail {
        priced_at: None,
        rule_version: p.version,
        rule: None,
        base_minor: p.context.amount_minor,
        currency: p.currency.to_owned(),
        renewal_months_since_first: p.context.renewal_months_since_first,
        tier,
        rate_bps: p.accrual.bps,
        exact_minor,
        rounding: None,
        commission_minor: p.accrual.amount_minor,
        note: p.note,
    }
}

/// `amount × bps / 10 000` as an exact decimal (four places at most, trailing zeros dropped).
fn exact_share(amount_minor: i64, bps: u32) -> String {
    let product = i128::from(amount_minor) * i128::from(bps);
    let (whole, part) = (product / 10_000, product % 10_000);
    if part == 0 {
        return whole.to_string();
    }
    let digits = format!("{part:04}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn months() {
        assert_eq!(
            months_between(at("2026-01-15T10:00:00Z"), at("2026-01-31T00:00:00Z")),
            0
        );
        assert_eq!(
            months_between(at("2026-01-15T10:00:00Z"), at("2026-02-15T09:59:59Z")),
            0
        );
        assert_eq!(
            months_between(at("2026-01-15T10:00:00Z"), at("2026-02-15T10:00:00Z")),
            1
        );
        assert_eq!(
            months_between(at("2026-01-15T10:00:00Z"), at("2027-01-15T10:00:00Z")),
            12
        );
        assert_eq!(
            months_between(at("2026-01-31T00:00:00Z"), at("2026-02-28T00:00:00Z")),
            0
        );
        assert_eq!(
            months_between(at("2026-03-01T00:00:00Z"), at("2026-02-01T00:00:00Z")),
            0
        );
    }

    #[test]
    fn renewals_after_the_window_say_why() {
        let rule = CommissionRule::Recurring { bps: 1000, months: 12 };
        let first = at("2025-01-01T08:00:00Z");
        assert_eq!(
            renewal_outside_window(&rule, Some((first, at("2026-01-01T08:00:00Z")))).as_deref(),
            Some(
                "renewal after the recurring window of 12 months (from the customer's first conversion on 2025-01-01) \
                 ended on 2026-01-01: no commission"
            )
        );
        assert_eq!(
            renewal_outside_window(&rule, Some((first, at("2025-12-31T23:00:00Z")))),
            None
        );
        assert_eq!(renewal_outside_window(&rule, None), None);
        let percentage = CommissionRule::Percentage { bps: 1000 };
        assert_eq!(
            renewal_outside_window(&percentage, Some((first, at("2030-01-01T00:00:00Z")))),
            None
        );
    }

    #[test]
    fn trails_show_each_step() {
        let tiered = CommissionRule::Tiered {
            basis: TierBasis::Conversions,
            period: TierPeriod::Month,
            tiers: vec![
                amba_rules::Tier { from: 0, bps: 1000 },
                amba_rules::Tier { from: 2, bps: 1550 },
            ],
        };
        let ctx = context(12_345, None, (2, 20_000));
        let accrual = tiered.evaluate(&ctx).unwrap_or_else(|_| unreachable!());
        let t = trail(Priced {
            rule: &tiered,
            version: 3,
            context: &ctx,
            accrual: &accrual,
            period: Some("2026-11"),
            currency: "USD",
            note: None,
        });
        assert_eq!(t.exact_minor.as_deref(), Some("1913.475"));
        assert_eq!(t.commission_minor, 1913);
        let hit = t.tier.unwrap_or_else(|| unreachable!());
        assert_eq!((hit.index, hit.from, hit.bps, hit.prior_conversions), (1, 2, 1550, 2));
        assert_eq!(exact_share(10_000, 2000), "2000");
        assert_eq!(exact_share(5, 2500), "1.25");
    }

    #[test]
    fn periods() {
        let monthly = CommissionRule::Tiered {
            basis: amba_rules::TierBasis::Conversions,
            period: TierPeriod::Month,
            tiers: vec![amba_rules::Tier { from: 0, bps: 100 }],
        };
        assert_eq!(
            period_key(&monthly, at("2026-11-24T03:00:00Z")).as_deref(),
            Some("2026-11")
        );
        assert_eq!(
            period_key(&CommissionRule::Flat { amount_minor: 1 }, at("2026-11-24T03:00:00Z")),
            None
        );
    }
}
