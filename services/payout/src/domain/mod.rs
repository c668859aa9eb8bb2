//! Pure payout rules: who is paid what in a run, when schedules fall due, and how a run ended.

pub mod plan;
pub mod schedule;
pub mod status;
pub mod summary;
