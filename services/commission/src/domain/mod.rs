//! Pure rules of the commission service: the ledger and the derived analytics figures.

pub mod export;
pub mod ledger;
pub mod stats;
