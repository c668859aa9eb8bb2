//! The fake over real HTTP: a reqwest client against a started fake, webhooks captured by a small
//! axum receiver that verifies their signatures itself.

mod accounts;
mod faults;
mod funding;
mod support;
mod transfers;
mod webhooks;
