//! Shared infrastructure of Agora's decoder fuzzing (hardening issue 20), used by each crate's
//! `tests/fuzz_decoders.rs` (proptest) and by the AFL++ targets in `fuzz/afl`:
//!
//! - allocation accounting: [`Counting`], a global allocator that counts live bytes per
//!   thread, and [`peak_of`], the most bytes a closure holds at once. The allocator must be
//!   declared by the final binary (each test file, the AFL crate):
//!   `#[global_allocator] static ALLOC: agora_fuzz::Counting = agora_fuzz::Counting;`
//! - mutations of valid frames (feature `proptest`, on by default): [`Mutation`], the
//!   strategies [`mutations`] and [`mutations_with_numbers`], [`mutate`] to apply them, the
//!   hostile numbers of [`interesting`] and [`put_varint`];
//! - [`config`], the proptest config of every fuzz property (feature `proptest`).
//!
//! What is crate-specific stays in each test file: the strategies of its messages, its memory
//! bound and why it holds, and the properties.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

// ---------------------------------------------------------------------------------------------
// Allocation accounting: the most bytes a closure holds at once on this thread.

/// A global allocator that forwards to the system allocator and counts the bytes live on each
/// thread, for [`peak_of`]. Declare it in the final binary:
/// `#[global_allocator] static ALLOC: agora_fuzz::Counting = agora_fuzz::Counting;`
pub struct Counting;

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

/// Runs `f`; returns its result and the most bytes it held at once (the result included).
/// Meaningful only when [`Counting`] is the binary's global allocator (otherwise always 0).
pub fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    (r, (PEAK.with(Cell::get) - base) as usize)
}

#[cfg(feature = "proptest")]
mod mutation;
#[cfg(feature = "proptest")]
pub use mutation::*;
