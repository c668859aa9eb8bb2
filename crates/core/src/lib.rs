//! Small, pure building blocks shared by every service: money with a fixed scale per currency,
//! the one rounding rule, prefixed time-ordered ids and the typed error every surface shows.

pub mod address;
pub mod csv;
pub mod cursor;
pub mod error;
pub mod id;
pub mod landing;
pub mod limits;
pub mod money;
pub mod rounding;
pub mod secret;

pub use error::{ApiError, ErrorCode};
pub use money::{Currency, Money, MoneyError};
pub use rounding::round_half_even;
