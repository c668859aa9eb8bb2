//! End-to-end tests of the running system through its public surfaces, one binary.

mod agents;
mod attribution;
mod auth;
mod authorization;
mod commission;
mod enrollments;
mod hostile;
mod ledger_batches;
mod notifications;
mod operations;
mod payouts;
mod programs;
mod support;
mod tokens;
