//! Builds the driver's `protocol.rs` unchanged as a host library so that `cargo test` can
//! exercise its layouts, chain rules and parsers.
#![no_std]

#[path = "../../../protocol.rs"]
pub mod protocol;
