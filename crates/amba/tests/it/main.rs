//! End-to-end tests of the running system through its public surfaces, one binary.

mod auth;
mod authorization;
mod enrollments;
mod programs;
mod support;
mod tokens;
