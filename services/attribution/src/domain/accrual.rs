//! The commission a conversion accrues when it is approved, under the program's current rule.
//!
//! Decided once, at approval, and carried in `conversion.approved`; the ledger books exactly
//! that. Tier volume is the affiliate's approved conversions (count or revenue) before this one
//! in the tier period: the calendar month (UTC) of the approval, or lifetime.

use amba_rules::{CommissionRule, Context, TierPeriod};
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
