//! Coverage-guided fuzz targets (AFL++, through cargo-afl) for Agora's decoders of network
//! input (hardening issue 20). Each target module has `run(data)`, what one fuzz input does,
//! and `seeds()`, valid encodings to start from (written to `seeds/<target>/` by the `seeds`
//! binary). The first input byte picks the decoder; the rest is the frame.
//!
//! `run` panics (a crash to AFL) when a decoder panics, holds more memory than the bound its
//! proptest file allows (`crates/*/tests/fuzz_decoders.rs`, checked by a counting allocator
//! here too), or accepts something that does not re-encode to an equal value. Outside AFL a
//! target binary reads one input from stdin: `target/release/chat < crash-file` reproduces.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

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
// Allocation accounting: the most bytes a closure holds at once on this thread.

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn grew(n: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + n as isize;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrank(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get() - n as isize));
}

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        shrank(layout.size());
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f`; returns its result and the most bytes it held at once (the result included).
pub(crate) fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    (r, (PEAK.with(Cell::get) - base) as usize)
}

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
