//! Fuzzing of the consensus stream framing (hardening issue 20), as proptest runs over mutated
//! valid frames: `u32` length prefix (read by `agora_net::read_frame_with_limit` under
//! `frame_limit`), channel varint, payload (split by `wire::decode`).
//!
//! `wire` is private to the crate, so this file compiles `src/wire.rs` into itself. Each read
//! and decode must not panic, must refuse a prefix over the limit before allocating, must
//! never hand out a payload over `max_message`, and what it accepts must re-encode (with
//! `wire::header`) to a frame that decodes to the same channel and payload; valid frames
//! always decode.
//!
//! 256 cases per property by default (a few seconds in debug); `PROPTEST_CASES` raises it
//! (`bench/fuzz.sh`). A failure found this way becomes a named regression test below.

#[allow(dead_code)]
#[path = "../src/wire.rs"]
mod wire;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use proptest::{prelude::*, sample::Index};

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
fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    (r, (PEAK.with(Cell::get) - base) as usize)
}

// ---------------------------------------------------------------------------------------------
// Mutations of valid frames.

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
    /// Replaces the varint (LEB128, as postcard writes lengths and integers) at a position.
    Varint(Index, u64),
    /// Replaces four bytes at a position with a big-endian u32 (agora-net's length prefix).
    U32(Index, u32),
    /// This frame up to a point, then another frame from a point.
    Splice(Index, Index),
    /// Repeats a slice of the frame in place.
    Repeat(Index, usize),
}

/// Numbers a hostile length prefix likes: limits and their neighbours, and anything.
fn interesting() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            2,
            63,
            64,
            65,
            127,
            128,
            255,
            256,
            257,
            1023,
            1024,
            1025,
            16_384,
            65_535,
            65_536,
            65_537,
            1 << 20,
            3 << 20,
            4 << 20,
            (4 << 20) + 1,
            (1 << 31) - 1,
            1 << 31,
            u32::MAX as u64,
            1 << 32,
            u64::MAX - 1,
            u64::MAX,
        ]),
        0u64..300,
        any::<u64>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), interesting()).prop_map(|(i, v)| Mutation::Varint(i, v)),
        (any::<Index>(), interesting()).prop_map(|(i, v)| Mutation::U32(i, v as u32)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Mutation::Splice(i, j)),
        (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Repeat(i, n)),
    ]
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Applies `mutations` to `frame` in order; `other` is the second frame of a splice.
fn mutate(frame: &[u8], other: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut b = frame.to_vec();
    for m in mutations {
        // Positions index existing bytes; insertion points may also be the end.
        let len = b.len();
        let at = |i: &Index| i.index(len + 1);
        let pos = |i: &Index| (len > 0).then(|| i.index(len));
        match m {
            Mutation::FlipBit(i, bit) => {
                if let Some(p) = pos(i) {
                    b[p] ^= 1 << bit;
                }
            }
            Mutation::SetByte(i, v) => {
                if let Some(p) = pos(i) {
                    b[p] = *v;
                }
            }
            Mutation::Insert(i, bytes) => {
                let p = at(i);
                b.splice(p..p, bytes.iter().copied());
            }
            Mutation::Delete(i, n) => {
                if let Some(p) = pos(i) {
                    b.drain(p..(p + n).min(len));
                }
            }
            Mutation::Truncate(i) => b.truncate(at(i)),
            Mutation::Varint(i, v) => {
                let p = at(i);
                let old = b[p..]
                    .iter()
                    .take(10)
                    .position(|x| x & 0x80 == 0)
                    .map_or(len - p, |n| n + 1);
                let mut new = Vec::new();
                put_varint(*v, &mut new);
                b.splice(p..p + old, new);
            }
            Mutation::U32(i, v) => {
                let p = at(i);
                let end = (p + 4).min(len);
                b.splice(p..end, v.to_be_bytes());
            }
            Mutation::Splice(i, j) => {
                b.truncate(at(i));
                b.extend_from_slice(&other[j.index(other.len() + 1)..]);
            }
            Mutation::Repeat(i, n) => {
                if let Some(p) = pos(i) {
                    let piece = b[p..(p + n).min(len)].to_vec();
                    b.splice(p..p, piece);
                }
            }
        }
    }
    b
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    // Mostly one mutation, so that many mutated frames still parse and reach the checks.
    prop_oneof![
        3 => prop::collection::vec(mutation(), 1..2),
        1 => prop::collection::vec(mutation(), 2..5),
    ]
}

// ---------------------------------------------------------------------------------------------
// Frames.

/// A whole frame as a writer sends it: length prefix, channel varint, payload.
fn frame(channel: u64, payload: &[u8]) -> Vec<u8> {
    let (head, used) = wire::header(channel, payload.len());
    let mut bytes = head[..used].to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

fn channel() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..8, interesting()]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..600)
}

fn max_message() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..64, Just(512), Just(600), Just(1024 * 1024)]
}

/// Reads every frame of `stream` as a consensus reader does (prefix under `frame_limit`, then
/// `wire::decode`) until the first error; returns the accepted (channel, payload) pairs.
fn read_all(stream: &[u8], max_message: usize) -> Vec<(u64, Vec<u8>)> {
    let limit = wire::frame_limit(max_message);
    let mut reader = futures::io::Cursor::new(stream);
    let mut out = Vec::new();
    loop {
        let before = reader.position() as usize;
        let (read, peak) = peak_of(|| {
            futures::executor::block_on(agora_net::read_frame_with_limit(&mut reader, limit))
        });
        let claimed = stream
            .get(before..before + 4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()) as usize);
        if claimed.is_some_and(|c| c > limit) {
            assert!(read.is_err(), "a prefix over the limit is refused");
            assert!(
                peak < 1024,
                "{peak} bytes held refusing an oversized prefix"
            );
        }
        let Ok(body) = read else { return out };
        assert_eq!(Some(body.len()), claimed);
        assert_eq!(&stream[before + 4..before + 4 + body.len()], &body[..]);
        let Ok((channel, payload)) = wire::decode(body, max_message) else {
            return out;
        };
        assert!(payload.len() <= max_message);
        out.push((channel, payload.as_ref().to_vec()));
    }
}

/// `PROPTEST_CASES` cases (256 unless set); failures are reported, not written to files: a
/// failure found becomes a named test in this file.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn valid_streams_decode(frames in prop::collection::vec((channel(), payload()), 0..6)) {
        let max = frames.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
        let stream: Vec<u8> = frames.iter().flat_map(|(c, p)| frame(*c, p)).collect();
        prop_assert_eq!(read_all(&stream, max), frames);
    }

    #[test]
    fn mutated_streams_are_refused_or_round_trip(
        frames in prop::collection::vec((channel(), payload()), 1..4),
        other in (channel(), payload()),
        max in max_message(),
        ms in mutations(),
    ) {
        let stream: Vec<u8> = frames.iter().flat_map(|(c, p)| frame(*c, p)).collect();
        let stream = mutate(&stream, &frame(other.0, &other.1), &ms);
        for (channel, payload) in read_all(&stream, max) {
            let again = frame(channel, &payload);
            prop_assert_eq!(read_all(&again, max), vec![(channel, payload)]);
        }
    }

    #[test]
    fn any_frame_body_is_refused_or_round_trips(
        body in prop::collection::vec(any::<u8>(), 0..64),
        max in max_message(),
    ) {
        if let Ok((channel, payload)) = wire::decode(body.clone(), max) {
            let payload = payload.as_ref().to_vec();
            prop_assert!(payload.len() <= max);
            prop_assert_eq!(read_all(&frame(channel, &payload), max), vec![(channel, payload)]);
        }
    }
}
