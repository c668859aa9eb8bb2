//! SQL of the attribution schema.

pub mod conversions;
pub mod fx;
pub mod read_model;
pub mod touchpoints;
