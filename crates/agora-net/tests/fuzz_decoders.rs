//! Fuzzing of agora-net's public frame reader (hardening issue 20), as proptest runs over
//! mutated streams of valid frames: `read_frame` and `read_frame_with_limit` (u32 big-endian
//! length, then the bytes), fed whole or a few bytes per read.
//!
//! Each read must not panic, must refuse a length over its limit before allocating (so a
//! response-side refusal prefix, bit 31 set, is refused by `read_frame`), must hold no more
//! than what arrived plus one read chunk however large the claimed length, and the frames it
//! accepts, written again with `write_frame`, are the bytes it consumed. Valid streams always
//! read back. (The request-response codec that parses refusal frames, `rpc::Codec`, is private
//! to the crate and not covered here.)
//!
//! 256 cases per property by default (a few seconds in debug); `PROPTEST_CASES` raises it
//! (`bench/fuzz.sh`). A failure found this way becomes a named regression test below.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use agora_fuzz::{mutate, mutations, peak_of};
use agora_net::{MAX_FRAME_LEN, MAX_REFUSAL_LEN, read_frame, read_frame_with_limit, write_frame};
use futures::{AsyncRead, executor::block_on, io::Cursor};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Allocation accounting: `agora_fuzz::peak_of` measures the most bytes a closure holds at once
// on this thread, counted by this binary's global allocator. (Mutations of valid frames and the
// proptest config come from agora-fuzz too.)

#[global_allocator]
static ALLOC: agora_fuzz::Counting = agora_fuzz::Counting;

// ---------------------------------------------------------------------------------------------
// Streams.

/// Bytes a reader may hold beyond what arrived: its first read chunk (64 KiB in `rpc.rs`),
/// `read_to_end`'s growth and the error message.
const SLACK: usize = 64 * 1024 + 4 * 1024;

/// A reader that hands out at most `step` bytes per read, as a network stream does.
struct Trickle<'a> {
    bytes: &'a [u8],
    step: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.step).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Poll::Ready(Ok(n))
    }
}

/// One frame as `write_frame` writes it.
fn framed(data: &[u8]) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    block_on(write_frame(&mut out, data)).unwrap();
    out.into_inner()
}

/// Reads frames from `stream` (`step` bytes per read) under `limit` until the first error;
/// returns them. Checks the limit, the allocation bound and that the frames are exactly the
/// bytes consumed.
fn read_all(stream: &[u8], limit: usize, step: usize) -> Vec<Vec<u8>> {
    let mut reader = Trickle {
        bytes: stream,
        step,
    };
    let mut out: Vec<Vec<u8>> = Vec::new();
    loop {
        let rest = reader.bytes;
        let claimed = rest
            .get(..4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()) as usize);
        let (read, peak) = peak_of(|| block_on(read_frame_with_limit(&mut reader, limit)));
        if claimed.is_some_and(|c| c > limit) {
            let e = read
                .as_ref()
                .expect_err("a length over the limit is refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(
                peak < 1024,
                "{peak} bytes held refusing an oversized length"
            );
        }
        assert!(
            peak <= 2 * rest.len() + SLACK,
            "{peak} bytes held reading {claimed:?} claimed, {} present",
            rest.len()
        );
        let Ok(frame) = read else {
            // Everything complete and under the limit was read.
            assert!(claimed.is_none_or(|c| c > limit || rest.len() < 4 + c));
            return out;
        };
        assert!(frame.len() <= limit);
        assert_eq!(Some(frame.len()), claimed);
        // Written again, the frame is the bytes it was read from.
        let again = framed(&frame);
        assert_eq!(&rest[..again.len()], &again[..]);
        out.push(frame);
    }
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..300),
        1 => prop::collection::vec(any::<u8>(), 60_000..70_000),
    ]
}

fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..400,
        Just(MAX_REFUSAL_LEN),
        Just(65_536),
        Just(MAX_FRAME_LEN)
    ]
}

fn step() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..8, Just(usize::MAX)]
}

proptest! {
    #![proptest_config(agora_fuzz::config())]

    #[test]
    fn valid_streams_read_back(frames in prop::collection::vec(data(), 0..5), step in step()) {
        let stream: Vec<u8> = frames.iter().flat_map(|f| framed(f)).collect();
        prop_assert_eq!(read_all(&stream, MAX_FRAME_LEN, step), frames.clone());
        // `read_frame` is the same reader under MAX_FRAME_LEN.
        let mut reader = Cursor::new(&stream);
        for f in &frames {
            prop_assert_eq!(&block_on(read_frame(&mut reader)).unwrap(), f);
        }
        prop_assert!(block_on(read_frame(&mut reader)).is_err());
    }

    #[test]
    fn mutated_streams_are_refused_or_read_exactly(
        frames in prop::collection::vec(data(), 1..4),
        other in data(),
        limit in limit(),
        step in step(),
        ms in mutations(),
    ) {
        let stream: Vec<u8> = frames.iter().flat_map(|f| framed(f)).collect();
        let stream = mutate(&stream, &framed(&other), &ms);
        read_all(&stream, limit, step);
    }

    #[test]
    fn refusal_frames_are_not_read_as_frames(reason in "\\PC{0,300}", step in step()) {
        // What a refusing responder writes: the length with bit 31 set, then the reason.
        let reason = &reason.as_bytes()[..reason.len().min(MAX_REFUSAL_LEN)];
        let mut stream = (reason.len() as u32 | 1 << 31).to_be_bytes().to_vec();
        stream.extend_from_slice(reason);
        prop_assert!(read_all(&stream, MAX_FRAME_LEN, step).is_empty());
    }

    #[test]
    fn random_streams_are_refused_or_read_exactly(
        stream in prop::collection::vec(any::<u8>(), 0..600),
        limit in limit(),
        step in step(),
    ) {
        read_all(&stream, limit, step);
    }
}

#[test]
fn huge_claims_hold_only_what_arrived() {
    // `read_all` asserts the bound: a claim of the whole limit with ten bytes behind it.
    for claim in [MAX_FRAME_LEN, MAX_FRAME_LEN + 1, u32::MAX as usize] {
        let mut stream = (claim as u32).to_be_bytes().to_vec();
        stream.extend_from_slice(&[7; 10]);
        assert!(read_all(&stream, MAX_FRAME_LEN, usize::MAX).is_empty());
    }
}

#[test]
fn oversized_frames_are_not_written() {
    let mut out = Cursor::new(Vec::new());
    let e = block_on(write_frame(&mut out, &vec![0; MAX_FRAME_LEN + 1])).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(out.into_inner().is_empty());
}
