//! The one rounding rule of the ledger: half-even ("banker's") to a whole minor unit.
//!
//! Every derived amount (a percentage of a sale, a prorated refund, a platform fee) is an exact
//! fraction `numerator / denominator` of integer minor units. Rounding it exactly once, here, keeps
//! postings reproducible and free of float error.

/// Rounds `numerator / denominator` to the nearest integer, ties to the even neighbour.
///
/// Returns `None` when `denominator` is zero or the result does not fit in an `i64`.
pub fn round_half_even(numerator: i128, denominator: i128) -> Option<i64> {
    if denominator == 0 {
        return None;
    }
    // Normalise so the denominator is positive; the sign lives in the numerator.
    let (n, d) = if denominator < 0 {
        (numerator.checked_neg()?, denominator.checked_neg()?)
    } else {
        (numerator, denominator)
    };
    let quotient = n.div_euclid(d); // floor
    let remainder = n.rem_euclid(d); // 0 <= remainder < d
    let twice = remainder.checked_mul(2)?;
    let rounded = match twice.cmp(&d) {
        std::cmp::Ordering::Less => quotient,
        std::cmp::Ordering::Greater => quotient.checked_add(1)?,
        std::cmp::Ordering::Equal if quotient % 2 == 0 => quotient,
        std::cmp::Ordering::Equal => quotient.checked_add(1)?,
    };
    i64::try_from(rounded).ok()
}

/// `amount_minor × bps / 10 000`, rounded half-even: a basis-point share of an amount.
pub fn apply_bps(amount_minor: i64, bps: u32) -> Option<i64> {
    round_half_even(i128::from(amount_minor) * i128::from(bps), 10_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ties_go_to_the_even_neighbour() {
        assert_eq!(round_half_even(5, 2), Some(2)); // 2.5 -> 2
        assert_eq!(round_half_even(7, 2), Some(4)); // 3.5 -> 4
        assert_eq!(round_half_even(-5, 2), Some(-2)); // -2.5 -> -2
        assert_eq!(round_half_even(-7, 2), Some(-4)); // -3.5 -> -4
        assert_eq!(round_half_even(1, 2), Some(0)); // 0.5 -> 0
        assert_eq!(round_half_even(3, 2), Some(2)); // 1.5 -> 2
    }

    #[test]
    fn non_ties_round_to_nearest() {
        assert_eq!(round_half_even(10, 3), Some(3)); // 3.33
        assert_eq!(round_half_even(11, 3), Some(4)); // 3.67
        assert_eq!(round_half_even(-10, 3), Some(-3));
        assert_eq!(round_half_even(-11, 3), Some(-4));
        assert_eq!(round_half_even(10, -3), Some(-3));
        assert_eq!(round_half_even(0, 7), Some(0));
    }

    #[test]
    fn zero_denominator_and_overflow_are_refused() {
        assert_eq!(round_half_even(1, 0), None);
        assert_eq!(round_half_even(i128::from(i64::MAX) * 4, 2), None);
        assert_eq!(round_half_even(i128::MIN, -1), None);
    }

    #[test]
    fn basis_points() {
        assert_eq!(apply_bps(10_000, 2_000), Some(2_000)); // 20% of 100.00
        assert_eq!(apply_bps(1, 5_000), Some(0)); // 0.5 -> 0
        assert_eq!(apply_bps(3, 5_000), Some(2)); // 1.5 -> 2
        assert_eq!(apply_bps(12_345, 1_250), Some(1_543)); // 1543.125 -> 1543
        assert_eq!(apply_bps(i64::MAX, 10_000), Some(i64::MAX));
    }

    proptest! {
        #[test]
        fn result_is_within_half_a_unit(n in -1_000_000_000_000i128..1_000_000_000_000, d in 1i128..1_000_000) {
            let r = round_half_even(n, d).unwrap_or_default();
            // |r - n/d| <= 1/2  <=>  |2(r*d - n)| <= d
            prop_assert!((2 * (i128::from(r) * d - n)).abs() <= d);
        }

        #[test]
        fn rounding_is_symmetric(n in -1_000_000_000i128..1_000_000_000, d in 1i128..10_000) {
            prop_assert_eq!(round_half_even(-n, d).map(|v| -v), round_half_even(n, d));
        }

        #[test]
        fn exact_quotients_are_unchanged(q in -1_000_000_000i64..1_000_000_000, d in 1i128..10_000) {
            prop_assert_eq!(round_half_even(i128::from(q) * d, d), Some(q));
        }
    }
}
