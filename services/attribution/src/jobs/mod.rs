//! Work on a timer rather than on a request or an event.

pub mod fx_rates;
