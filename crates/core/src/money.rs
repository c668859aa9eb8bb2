//! Money in integer minor units with the scale fixed by the currency (ISO 4217).

use serde::{Deserialize, Serialize};
use std::fmt;

/// ISO 4217 codes this platform accepts, with their number of minor-unit digits.
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EGP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("MYR", 2),
    ("NGN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("RON", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("VND", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("ZAR", 2),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency {0:?}: use an ISO 4217 code such as USD, EUR or JPY")]
    UnknownCurrency(String),
    #[error("currency mismatch: {0} and {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount out of range")]
    Overflow,
}

/// A validated ISO 4217 currency code (upper case).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: &'static str,
    minor_units: u8,
}

impl Currency {
    /// Parses a code case-insensitively ("usd" and "USD" are the same currency).
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        let upper = code.trim().to_ascii_uppercase();
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == upper)
            .map(|&(code, minor_units)| Currency { code, minor_units })
            .ok_or_else(|| MoneyError::UnknownCurrency(code.to_owned()))
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point: JPY 0, USD 2, KWD 3.
    pub fn minor_units(&self) -> u8 {
        self.minor_units
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Currency::parse(&code).map_err(serde::de::Error::custom)
    }
}

/// An amount of one currency in integer minor units; arithmetic is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Self {
        Money { amount_minor, currency }
    }

    pub fn zero(currency: Currency) -> Self {
        Money::new(0, currency)
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount = self
            .amount_minor
            .checked_add(other.amount_minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount = self
            .amount_minor
            .checked_sub(other.amount_minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }

    pub fn checked_neg(self) -> Result<Money, MoneyError> {
        let amount = self.amount_minor.checked_neg().ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }

    /// A basis-point share of this amount, rounded half-even once.
    pub fn share_bps(self, bps: u32) -> Result<Money, MoneyError> {
        let amount = crate::rounding::apply_bps(self.amount_minor, bps).ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }
}

impl fmt::Display for Money {
    /// `12.34 USD`, `1234 JPY`, `1.234 KWD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scale = u32::from(self.currency.minor_units());
        if scale == 0 {
            return write!(f, "{} {}", self.amount_minor, self.currency);
        }
        let divisor = 10_u64.pow(scale);
        let abs = self.amount_minor.unsigned_abs();
        let sign = if self.amount_minor < 0 { "-" } else { "" };
        write!(
            f,
            "{sign}{}.{:0width$} {}",
            abs / divisor,
            abs % divisor,
            self.currency,
            width = scale as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn currency_scale_follows_iso_4217() {
        let scale = |c: &str| Currency::parse(c).map(|c| c.minor_units());
        assert_eq!(scale("JPY"), Ok(0));
        assert_eq!(scale("usd"), Ok(2));
        assert_eq!(scale("KWD"), Ok(3));
        assert!(matches!(Currency::parse("XXX"), Err(MoneyError::UnknownCurrency(_))));
        assert!(Currency::parse("").is_err());
        assert!(Currency::parse("US").is_err());
    }

    #[test]
    fn currency_serde_round_trip_and_rejects_unknown() {
        let c: Currency = serde_json::from_str("\"eur\"").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(serde_json::to_string(&c).ok(), Some("\"EUR\"".to_owned()));
        assert!(serde_json::from_str::<Currency>("\"ABC\"").is_err());
    }

    #[test]
    fn arithmetic_is_checked() {
        let a = Money::new(150, usd());
        assert_eq!(a.checked_add(Money::new(50, usd())), Ok(Money::new(200, usd())));
        assert_eq!(a.checked_sub(Money::new(200, usd())), Ok(Money::new(-50, usd())));
        assert_eq!(
            Money::new(i64::MAX, usd()).checked_add(Money::new(1, usd())),
            Err(MoneyError::Overflow)
        );
        assert_eq!(Money::new(i64::MIN, usd()).checked_neg(), Err(MoneyError::Overflow));
        let eur = Currency::parse("EUR").unwrap_or_else(|e| unreachable!("{e}"));
        assert!(matches!(
            a.checked_add(Money::new(1, eur)),
            Err(MoneyError::CurrencyMismatch(..))
        ));
    }

    #[test]
    fn display_uses_the_currency_scale() {
        let show = |amount, code| Currency::parse(code).map(|c| Money::new(amount, c).to_string());
        assert_eq!(show(1234, "USD"), Ok("12.34 USD".to_owned()));
        assert_eq!(show(-5, "USD"), Ok("-0.05 USD".to_owned()));
        assert_eq!(show(1234, "JPY"), Ok("1234 JPY".to_owned()));
        assert_eq!(show(1234, "KWD"), Ok("1.234 KWD".to_owned()));
    }

    proptest! {
        #[test]
        fn add_then_sub_is_identity(a in -1_000_000_000_000i64..1_000_000_000_000, b in -1_000_000_000_000i64..1_000_000_000_000) {
            let (a, b) = (Money::new(a, usd()), Money::new(b, usd()));
            prop_assert_eq!(a.checked_add(b).and_then(|s| s.checked_sub(b)), Ok(a));
        }

        #[test]
        fn shares_never_exceed_the_whole(amount in 0i64..1_000_000_000_000, bps in 0u32..=10_000) {
            let share = Money::new(amount, usd()).share_bps(bps);
            prop_assert!(matches!(share, Ok(s) if s.amount_minor >= 0 && s.amount_minor <= amount));
        }
    }
}
