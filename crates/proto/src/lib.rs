//! Protobuf types of `proto/` (package `amba.affiliate.v1`), compiled once for every crate.

#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod v1 {
    tonic::include_proto!("amba.affiliate.v1");
}

pub use prost::Message;
