//! SQL of the commission service: read models, the commission sub-ledger, clawbacks, stats.
//! Ledger postings themselves are written by [`ledger`].

mod clawbacks;
mod commissions;
mod conversions;
pub mod export;
pub mod ledger;
mod read_model;
mod stats;

pub use clawbacks::*;
pub use commissions::*;
pub use conversions::*;
pub use read_model::*;
pub use stats::*;

/// The UTC day of a unix-microsecond timestamp (today when it is unset or out of range).
pub fn day_of(micros: i64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp_micros(micros)
        .filter(|_| micros > 0)
        .unwrap_or_else(chrono::Utc::now)
        .date_naive()
}

pub fn timestamp(micros: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(micros)
        .filter(|_| micros > 0)
        .unwrap_or_else(chrono::Utc::now)
}
