//! The Flotilla wire protocol, package `flotilla.v1`, generated from `proto/flotilla.proto`.
//!
//! The generated code is committed so that building needs no `protoc`; the test
//! `generated_code_is_fresh` regenerates it with a pure-Rust compiler and fails when it is stale
//! (run it with `FLOTILLA_REGEN=1` to rewrite the file).

/// The protocol version carried in every RPC's `flotilla-protocol` metadata entry and in hellos.
/// Version 2: values are encoded with postcard (version 1 used bincode), and workers serve objects
/// over HTTP only.
pub const PROTOCOL_VERSION: u32 = 2;
/// The metadata key carrying the protocol version.
pub const PROTOCOL_HEADER: &str = "flotilla-protocol";
/// Values up to this size travel inline through the head; larger ones stay in a worker's store,
/// and the head refuses larger inline values.
pub const INLINE_MAX_BYTES: usize = 64 << 10;
/// Inline values the head holds for one session: beyond it, its inline puts are refused and its
/// tasks' results stay in the workers' stores.
pub const SESSION_INLINE_BUDGET: u64 = 256 << 20;

pub mod auth;
pub mod contract;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!("gen/flotilla.v1.rs");
}
