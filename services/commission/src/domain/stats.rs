//! Figures derived from the daily rollups: earnings per click and conversion rate. Integers and
//! decimal strings only; the one rounding function decides the last unit. Per-click figures are
//! undefined without clicks: `None`, never a made-up 0.

use amba_core::rounding::round_half_even;

/// Earnings per click: commission ÷ clicks, rounded half-even to a minor unit.
pub fn epc_minor(commission_minor: i64, clicks: i64) -> Option<i64> {
    if clicks <= 0 {
        return None;
    }
    round_half_even(i128::from(commission_minor), i128::from(clicks))
}

/// Sales by a click per click in basis points (2500 = 25 %), rounded half-even.
pub fn conversion_rate_bps(click_conversions: i64, clicks: i64) -> Option<i64> {
    if clicks <= 0 {
        return None;
    }
    round_half_even(i128::from(click_conversions) * 10_000, i128::from(clicks))
}

/// The same rate as a decimal string with four places ("0.2500"), never a float.
pub fn conversion_rate(click_conversions: i64, clicks: i64) -> Option<String> {
    conversion_rate_bps(click_conversions, clicks).map(|bps| format!("{}.{:04}", bps / 10_000, bps % 10_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epc_and_rate() {
        assert_eq!(epc_minor(1_000, 4), Some(250));
        assert_eq!(epc_minor(5, 2), Some(2)); // 2.5 -> 2 (half-even)
        assert_eq!(epc_minor(7, 2), Some(4)); // 3.5 -> 4
        assert_eq!(epc_minor(-7, 2), Some(-4)); // clawed back more than earned in the range
        assert_eq!(epc_minor(100, 0), None);
        assert_eq!(conversion_rate(1, 4).as_deref(), Some("0.2500"));
        assert_eq!(conversion_rate(2, 3).as_deref(), Some("0.6667"));
        assert_eq!(conversion_rate(5, 4).as_deref(), Some("1.2500"));
        assert_eq!(conversion_rate(3, 0), None);
        assert_eq!(conversion_rate_bps(0, 0), None);
    }
}
