//! SQL of the enrollment schema. Functions take a connection so callers choose the transaction.

pub mod enrollments;
pub mod identity;
pub mod programs;
