//! The pure cores of groupware: no I/O, no clock (callers pass `now_ms`), no randomness.

pub mod membership;
