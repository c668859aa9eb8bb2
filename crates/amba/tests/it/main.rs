//! End-to-end tests of the running system through its public surfaces, one binary.

mod auth;
mod commission;
mod attribution;
mod authorization;
mod enrollments;
mod programs;
mod support;
mod tokens;
