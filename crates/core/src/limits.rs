//! The documented limits of every input, and the checks that enforce them.
//!
//! Every surface validates with these before anything is queued or batched, so a value the
//! database would refuse (a NUL byte, a year-0 timestamp, a sum past `bigint`) never reaches a
//! group commit shared with other callers. The same numbers are listed in the README.

use crate::ApiError;
use chrono::{DateTime, Duration, TimeZone, Utc};

/// Keys and references: ids, `project_id`, `external_id`, codes, `subject_ref`,
/// `customer_ref`, idempotency keys, names.
pub const MAX_KEY_CHARS: usize = 200;
/// E-mail addresses (RFC 5321's path limit).
pub const MAX_EMAIL_CHARS: usize = 254;
/// Free-text reasons (approve, reject, remove, clawback).
pub const MAX_REASON_CHARS: usize = 1_000;
/// URLs (landing pages, return/refresh URLs).
pub const MAX_URL_CHARS: usize = 2_048;
/// Largest amount of one conversion or refund, in minor units (10^15: $10 trillion, ¥1 quadrillion).
/// With it, 9,000 maximal conversions still sum inside a signed 64-bit integer.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;
/// How far ahead of the server's clock a reported time may be (clock skew).
pub const MAX_FUTURE_SKEW: Duration = Duration::minutes(5);

/// The earliest time a conversion or click may carry: 2000-01-01T00:00:00Z.
pub fn earliest_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A trimmed text field of at most `max` characters without control characters; `None` when
/// empty.
pub fn text(field: &str, value: &str, max: usize) -> Result<Option<String>, ApiError> {
    let value = value.trim();
    let chars = value.chars().count();
    if chars > max {
        return Err(ApiError::invalid(format!(
            "{field} is {chars} characters long; the limit is {max}"
        )));
    }
    if let Some(bad) = value.chars().find(|c| c.is_control()) {
        return Err(ApiError::invalid(format!(
            "{field} contains the control character U+{:04X}; only printable text is accepted",
            u32::from(bad)
        )));
    }
    Ok((!value.is_empty()).then(|| value.to_owned()))
}

/// Like [`text`], but the field must be present.
pub fn required_text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    text(field, value, max)?.ok_or_else(|| ApiError::invalid(format!("{field} is required")))
}

/// A key-like field ([`MAX_KEY_CHARS`]).
pub fn key(field: &str, value: &str) -> Result<Option<String>, ApiError> {
    text(field, value, MAX_KEY_CHARS)
}

/// An amount in minor units: `0 ..= MAX_AMOUNT_MINOR` (0 is a free sign-up that may still earn a
/// flat commission).
pub fn amount(field: &str, value: i64) -> Result<i64, ApiError> {
    if !(0..=MAX_AMOUNT_MINOR).contains(&value) {
        return Err(ApiError::invalid(format!(
            "{field} is {value}; it must be between 0 and {MAX_AMOUNT_MINOR} minor units"
        )));
    }
    Ok(value)
}

/// A reported time in unix microseconds (0 = `now`), between [`earliest_time`] and `now` plus
/// [`MAX_FUTURE_SKEW`].
pub fn time_micros(field: &str, micros: i64, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    if micros == 0 {
        return Ok(now);
    }
    let latest = now + MAX_FUTURE_SKEW;
    let out_of_range = || {
        ApiError::invalid(format!(
            "{field} must be between {} and {} (5 minutes of clock skew)",
            earliest_time().to_rfc3339(),
            latest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))
    };
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(out_of_range)?;
    if at < earliest_time() || at > latest {
        return Err(out_of_range());
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_limits_and_control_characters() {
        assert_eq!(text("x", "  a b ", 10).ok().flatten().as_deref(), Some("a b"));
        assert_eq!(text("x", "   ", 10).ok().flatten(), None);
        let err = text("reason", &"é".repeat(11), 10).err().map(|e| e.message);
        assert_eq!(err.as_deref(), Some("reason is 11 characters long; the limit is 10"));
        assert!(text("x", &"é".repeat(10), 10).is_ok(), "characters, not bytes");
        let err = text("code", "a\0b", 10).err().map(|e| e.message);
        assert!(err.is_some_and(|m| m.contains("U+0000")));
        assert!(required_text("project_id", " ", 10).is_err());
    }

    #[test]
    fn amounts_and_times() {
        assert!(amount("amount_minor", -1).is_err());
        assert!(amount("amount_minor", MAX_AMOUNT_MINOR + 1).is_err());
        assert!(amount("amount_minor", 1 << 62).is_err());
        assert_eq!(amount("amount_minor", MAX_AMOUNT_MINOR).ok(), Some(MAX_AMOUNT_MINOR));
        let now = Utc::now();
        assert_eq!(time_micros("occurred_at", 0, now).ok(), Some(now));
        assert!(time_micros("occurred_at", -1_000_000_000_000_000_000, now).is_err());
        assert!(time_micros("occurred_at", i64::MAX, now).is_err());
        assert!(time_micros("occurred_at", i64::MIN, now).is_err());
        assert!(
            time_micros("occurred_at", 1, now).is_err(),
            "1970 is before the earliest time"
        );
        let later = (now + Duration::minutes(6)).timestamp_micros();
        assert!(time_micros("occurred_at", later, now).is_err());
    }

    proptest! {
        #[test]
        fn accepted_values_are_storable(micros in any::<i64>(), amount_minor in any::<i64>(), s in any::<String>()) {
            let now = Utc::now();
            if let Ok(at) = time_micros("t", micros, now) {
                prop_assert!(at >= earliest_time() && at <= now + MAX_FUTURE_SKEW);
            }
            if let Ok(a) = amount("a", amount_minor) {
                // 9,000 of the largest amounts still fit a bigint sum.
                prop_assert!(a.checked_mul(9_000).is_some());
            }
            if let Ok(Some(t)) = text("s", &s, MAX_KEY_CHARS) {
                prop_assert!(!t.contains('\0') && t.chars().count() <= MAX_KEY_CHARS);
            }
        }
    }
}
