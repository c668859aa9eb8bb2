//! JetStream consumers of this service.

pub mod read_model;
