//! Coverage-guided fuzz targets (AFL++, through cargo-afl) for Agora's decoders of network
//! input (hardening issue 20). Each target module has `run(data)`, what one fuzz input does,
//! and `seeds()`, valid encodings to start from (written to `seeds/<target>/` by the `seeds`
//! binary). The first input byte picks the decoder; the rest is the frame.
//!
//! `run` panics (a crash to AFL) when a decoder panics, holds more memory than the bound its
//! proptest file allows (`crates/*/tests/fuzz_decoders.rs`, checked by a counting allocator
//! here too), or accepts something that does not re-encode to an equal value. Outside AFL a
//! target binary reads one input from stdin: `target/release/chat < crash-file` reproduces.

pub mod chat;
pub mod files;
pub mod ledger;
pub mod net;

/// The targets, as named in `src/bin` and `seeds/`.
pub const TARGETS: [&str; 4] = ["chat", "files", "ledger", "net"];

/// Runs target `name` on one input.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "chat" => chat::run(data),
        "files" => files::run(data),
        "ledger" => ledger::run(data),
        "net" => net::run(data),
        _ => panic!("no target {name}"),
    }
}

/// Seed inputs of target `name`: (file name, bytes).
pub fn seeds(name: &str) -> Vec<(String, Vec<u8>)> {
    match name {
        "chat" => chat::seeds(),
        "files" => files::seeds(),
        "ledger" => ledger::seeds(),
        "net" => net::seeds(),
        _ => panic!("no target {name}"),
    }
}

/// `kind` (the selector byte) followed by `frame`.
pub(crate) fn tagged(kind: u8, frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 1);
    out.push(kind);
    out.extend_from_slice(frame);
    out
}

// ---------------------------------------------------------------------------------------------
// Allocation accounting (agora-fuzz, shared with the proptest files): the most bytes a closure
// holds at once on this thread, counted by the global allocator of every target binary.

#[global_allocator]
static ALLOC: agora_fuzz::Counting = agora_fuzz::Counting;

pub(crate) use agora_fuzz::peak_of;

/// Runs `decode` on `bytes`, panicking if it held more than `bound` bytes at once.
pub(crate) fn bounded<R>(bytes: &[u8], bound: usize, decode: impl FnOnce(&[u8]) -> R) -> R {
    let (r, peak) = peak_of(|| decode(bytes));
    assert!(
        peak <= bound,
        "{peak} bytes held decoding {} input bytes (bound {bound})",
        bytes.len()
    );
    r
}
