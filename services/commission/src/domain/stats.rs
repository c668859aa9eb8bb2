//! Figures derived from the daily rollups: earnings per click and conversion rate. Integers and
//! decimal strings only; the one rounding function decides the last unit.

use amba_core::rounding::round_half_even;

/// Earnings per click: commission ÷ clicks, rounded half-even to a minor unit (0 with no clicks).
pub fn epc_minor(commission_minor: i64, clicks: i64) -> i64 {
    if clicks <= 0 {
        return 0;
    }
    round_half_even(i128::from(commission_minor), i128::from(clicks)).unwrap_or(0)
}

/// Conversions per click in basis points (2500 = 25 %), rounded half-even; 0 with no clicks.
pub fn conversion_rate_bps(conversions: i64, clicks: i64) -> i64 {
    if clicks <= 0 {
        return 0;
    }
    round_half_even(i128::from(conversions) * 10_000, i128::from(clicks)).unwrap_or(0)
}

/// The same rate as a decimal string with four places ("0.2500"), never a float.
pub fn conversion_rate(conversions: i64, clicks: i64) -> String {
    let bps = conversion_rate_bps(conversions, clicks);
    format!("{}.{:04}", bps / 10_000, bps % 10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epc_and_rate() {
        assert_eq!(epc_minor(1_000, 4), 250);
        assert_eq!(epc_minor(5, 2), 2); // 2.5 -> 2 (half-even)
        assert_eq!(epc_minor(7, 2), 4); // 3.5 -> 4
        assert_eq!(epc_minor(100, 0), 0);
        assert_eq!(conversion_rate(1, 4), "0.2500");
        assert_eq!(conversion_rate(2, 3), "0.6667");
        assert_eq!(conversion_rate(5, 4), "1.2500");
        assert_eq!(conversion_rate(3, 0), "0.0000");
    }
}
