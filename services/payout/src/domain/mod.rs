//! Pure payout rules: who is paid what in a run, and when schedules fall due.

pub mod plan;
pub mod schedule;
