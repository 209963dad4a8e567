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

use agora_fuzz::{interesting, mutate, mutations, peak_of};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Allocation accounting: `agora_fuzz::peak_of` measures the most bytes a closure holds at once
// on this thread, counted by this binary's global allocator. (Mutations of valid frames and the
// proptest config come from agora-fuzz too.)

#[global_allocator]
static ALLOC: agora_fuzz::Counting = agora_fuzz::Counting;

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

proptest! {
    #![proptest_config(agora_fuzz::config())]

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
