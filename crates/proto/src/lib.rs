//! Protobuf types of `proto/` (package `amba.affiliate.v1`), compiled once for every crate.

#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod v1 {
    tonic::include_proto!("amba.affiliate.v1");
}

pub use prost::Message;

/// Request/reply method names: the last token of `<ns>.rpc.<service>.<method>`. Part of the
/// wire contract, so callers and services share one spelling.
pub mod methods {
    pub mod enrollment {
        pub const SERVICE: &str = "enrollment";
        pub const SIGNUP: &str = "signup";
        pub const VERIFY_TOKEN: &str = "verify_token";
        pub const PROGRAM_CREATE: &str = "program_create";
        pub const PROGRAM_UPDATE: &str = "program_update";
        pub const PROGRAM_GET: &str = "program_get";
        pub const PROGRAM_LIST: &str = "program_list";
    }
}
