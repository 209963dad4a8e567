//! Fuzzing of agora-grid's decoders of network input, as proptest runs over mutated valid
//! frames: the protocol's `Request` and `Response` and the gossip `Announce` (postcard), and
//! what the submitter does with a decoded request's claims (`JobSpec::check` of a spec,
//! `Outcome::digest`). Each decode must not panic, must hold at most [`alloc_bound`] bytes at
//! once (counting allocator), and what it accepts must re-encode to something that decodes to
//! the same value. 256 cases per property (`PROPTEST_CASES` raises it, `bench/fuzz.sh`).

use agora_fuzz::{mutate, mutations, peak_of};
use agora_grid::wire::{
    Announce, Assignment, JobSpec, Outcome, Request, Response, RunFailure, UnitSpec, decode, encode,
};
use libp2p_identity::{Keypair, PeerId};
use proptest::prelude::*;

#[global_allocator]
static ALLOC: agora_fuzz::Counting = agora_fuzz::Counting;

/// Postcard believes a sequence's claimed length only up to the bytes that remain, so a decoder
/// holds at most about one element per input byte; the largest element here is an
/// `Assignment` (~170 bytes).
fn alloc_bound(len: usize) -> usize {
    200 * len + 16 * 1024
}

fn digest() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn peer() -> impl Strategy<Value = PeerId> {
    (0u8..4).prop_map(|i| {
        Keypair::ed25519_from_bytes([i + 1; 32])
            .unwrap()
            .public()
            .to_peer_id()
    })
}

fn failure() -> impl Strategy<Value = RunFailure> {
    prop_oneof![
        Just(RunFailure::OutOfFuel),
        any::<u64>().prop_map(|limit| RunFailure::OutOfMemory { limit }),
        "\\PC{0,40}".prop_map(|message| RunFailure::Trap { message }),
        any::<i32>().prop_map(|code| RunFailure::Exit { code }),
        any::<u64>().prop_map(|limit| RunFailure::OutputCap { limit }),
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        (digest(), any::<u64>(), any::<u64>()).prop_map(|(result, size, fuel)| Outcome::Ok {
            result,
            size,
            fuel
        }),
        (failure(), any::<u64>()).prop_map(|(error, fuel)| Outcome::Err { error, fuel }),
    ]
}

fn assignment() -> impl Strategy<Value = Assignment> {
    (
        digest(),
        any::<u32>(),
        digest(),
        digest(),
        any::<[u64; 6]>(),
        digest(),
        prop::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(
            |(job, unit, program, input, n, seed, input_inline)| Assignment {
                job,
                unit,
                program,
                program_size: n[0],
                input,
                input_size: n[1],
                fuel: n[2],
                memory: n[3],
                lease_ms: n[4],
                expected_fuel: n[5],
                seed,
                input_inline,
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u8>(), any::<u64>(), any::<u64>()).prop_map(|(slots, fuel_per_sec, memory)| {
            Request::Fetch {
                slots,
                fuel_per_sec,
                memory,
            }
        }),
        (digest(), any::<u32>(), digest()).prop_map(|(job, unit, commitment)| Request::Commit {
            job,
            unit,
            commitment
        }),
        (
            digest(),
            any::<u32>(),
            outcome(),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(job, unit, outcome, result)| Request::Reveal {
                job,
                unit,
                outcome,
                result
            }),
        (digest(), any::<u32>()).prop_map(|(job, unit)| Request::Pull { job, unit }),
        (digest(), any::<u32>()).prop_map(|(job, unit)| Request::Settled { job, unit }),
        (digest(), any::<u32>()).prop_map(|(job, unit)| Request::Progress { job, unit }),
        (any::<u32>(), any::<u64>()).prop_map(|(open_units, max_fuel)| Request::Offer(Announce {
            open_units,
            max_fuel
        })),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        prop::collection::vec(assignment(), 0..4).prop_map(Response::Assign),
        any::<u64>().prop_map(|retry_ms| Response::NoWork { retry_ms }),
        any::<bool>().prop_map(|reveal| Response::Committed { reveal }),
        (any::<bool>(), any::<bool>())
            .prop_map(|(decided, accepted)| Response::Revealed { decided, accepted }),
        (outcome(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(outcome, result)| Response::Reveal { outcome, result }),
        Just(Response::Gone),
        Just(Response::Pending),
    ]
}

fn spec() -> impl Strategy<Value = JobSpec> {
    (
        peer(),
        digest(),
        prop::collection::vec(("\\PC{0,20}", digest(), any::<u64>()), 0..4),
        any::<[u8; 3]>(),
        any::<[u64; 6]>(),
    )
        .prop_map(|(submitter, program, units, r, n)| JobSpec {
            submitter,
            program,
            program_size: n[0],
            units: units
                .into_iter()
                .map(|(name, input, size)| UnitSpec { name, input, size })
                .collect(),
            replicas: r[0],
            quorum: r[1],
            max_replicas: r[2],
            fuel: n[1],
            memory: n[2],
            lease_ms: n[3],
            pay: n[4],
            created_ms: n[5],
        })
}

/// Decodes `bytes` as every grid message under the allocation bound; whatever decodes must
/// round-trip and survive what the node does next with it.
fn decode_all(bytes: &[u8]) {
    let (r, peak) = peak_of(|| decode::<Request>(bytes));
    assert!(
        peak <= alloc_bound(bytes.len()),
        "{peak} bytes for {}",
        bytes.len()
    );
    if let Ok(r) = r {
        assert_eq!(decode::<Request>(&encode(&r)).unwrap(), r);
        if let Request::Reveal { outcome, .. } = &r {
            let _ = outcome.digest();
        }
    }
    let (r, peak) = peak_of(|| decode::<Response>(bytes));
    assert!(
        peak <= alloc_bound(bytes.len()),
        "{peak} bytes for {}",
        bytes.len()
    );
    if let Ok(r) = r {
        assert_eq!(decode::<Response>(&encode(&r)).unwrap(), r);
    }
    let (r, peak) = peak_of(|| decode::<Announce>(bytes));
    assert!(peak <= alloc_bound(bytes.len()));
    if let Ok(r) = r {
        assert_eq!(decode::<Announce>(&encode(&r)).unwrap(), r);
    }
    // A job spec is never decoded from the network, but its checks must hold for any value a
    // future protocol might carry.
    if let Ok(s) = decode::<JobSpec>(bytes) {
        let _ = s.check();
        let _ = s.id();
    }
}

#[derive(Debug, Clone)]
enum Msg {
    Request(Request),
    Response(Response),
    Announce(Announce),
    Spec(JobSpec),
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        request().prop_map(Msg::Request),
        response().prop_map(Msg::Response),
        (any::<u32>(), any::<u64>()).prop_map(|(open_units, max_fuel)| Msg::Announce(Announce {
            open_units,
            max_fuel
        })),
        spec().prop_map(Msg::Spec),
    ]
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Request(r) => encode(r),
            Msg::Response(r) => encode(r),
            Msg::Announce(a) => encode(a),
            Msg::Spec(s) => encode(s),
        }
    }

    fn decodes_to_itself(&self, bytes: &[u8]) {
        match self {
            Msg::Request(r) => assert_eq!(&decode::<Request>(bytes).unwrap(), r),
            Msg::Response(r) => assert_eq!(&decode::<Response>(bytes).unwrap(), r),
            Msg::Announce(a) => assert_eq!(&decode::<Announce>(bytes).unwrap(), a),
            Msg::Spec(s) => assert_eq!(&decode::<JobSpec>(bytes).unwrap(), s),
        }
    }
}

proptest! {
    #![proptest_config(agora_fuzz::config())]

    #[test]
    fn valid_frames_decode(m in msg()) {
        let bytes = m.encode();
        m.decodes_to_itself(&bytes);
        decode_all(&bytes);
    }

    #[test]
    fn mutated_frames_are_refused_or_round_trip(m in msg(), other in msg(), ms in mutations()) {
        decode_all(&mutate(&m.encode(), &other.encode(), &ms));
    }
}
