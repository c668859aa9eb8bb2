//! End-to-end tests of the running system through its public surfaces, one binary.

mod agents;
mod attribution;
mod auth;
mod authorization;
mod budgets;
mod commission;
mod enrollments;
mod events;
mod hostile;
mod notifications;
mod operations;
mod pagination;
mod payouts;
mod privacy;
mod programs;
mod roles;
mod support;
mod system;
mod tokens;
mod webhooks;
