//! The `amba` binary's library: configuration, local infrastructure for development, and the
//! composition that runs one service or all of them in one process (also used by the tests).

pub mod config;
pub mod local;
pub mod ops;
pub mod roles;
pub mod system;

pub use config::Settings;
pub use system::{Running, ServiceName};
