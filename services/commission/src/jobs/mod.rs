//! Work the service does on its own clock or on an operator's command: the hold-release sweep
//! and `amba ledger verify`.

pub mod sweep;
pub mod verify;
