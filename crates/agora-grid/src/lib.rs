//! Grid computing: sandboxed WebAssembly jobs on peers' spare CPU.
//!
//! Any node submits a job (a WASI command module and its work units, all blobs); the submitting
//! node coordinates it itself — there is no project server. Workers with free capacity ask it
//! for units on `/agora/grid/1.0.0`, run them in the deterministic sandbox of [`agora_wasm`],
//! commit to their outcome, then reveal it; a unit is accepted when a quorum of independent
//! workers agree ([`proto`]). Accepted work can be paid in ledger credits.
//!
//! Layers, as in every application crate: [`proto`] (the pure state machine of a job),
//! [`wire`] (messages and limits), [`service`] (the async part: network, sandbox, redb).

pub mod proto;
pub mod service;
pub mod wire;

pub use service::{Config, Grid, GridError};
