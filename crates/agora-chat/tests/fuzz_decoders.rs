//! Fuzzing of every chat frame decoder (hardening issue 20), as proptest runs over mutated
//! valid frames: real messages are built and encoded, then bit-flipped, cut, spliced, given
//! hostile length prefixes and fed to every `Frame::decode`.
//!
//! Each decode must not panic, must hold at most [`alloc_bound`] bytes at once (measured by a
//! counting allocator), must refuse input over `MAX_LEN` without allocating, and what it accepts
//! must re-encode to bytes that decode to the same value; signature checks and envelope opening
//! on decoded values must not panic, and a mutated signed frame that decodes to a different
//! value never verifies. Valid frames always decode and verify.
//!
//! 256 cases per property by default (a few seconds in debug); `PROPTEST_CASES` raises it
//! (`bench/fuzz.sh`). A failure found this way becomes a named regression test below.

use std::fmt::Debug;

use agora_chat::{
    crypto::{Identity, Signature},
    wire::*,
};
use agora_fuzz::{mutate, mutations, peak_of, put_varint};
use libp2p_identity::PeerId;
use proptest::prelude::*;
use rand::{SeedableRng, rngs::StdRng};

// ---------------------------------------------------------------------------------------------
// Allocation accounting: `agora_fuzz::peak_of` measures the most bytes a closure holds at once
// on this thread, counted by this binary's global allocator. (Mutations of valid frames and the
// proptest config come from agora-fuzz too.)

#[global_allocator]
static ALLOC: agora_fuzz::Counting = agora_fuzz::Counting;

/// The most a decoder may hold for `len` input bytes. Postcard believes a count prefix only as
/// far as one element per remaining input byte, serde reserves at most 1 MiB from one, and
/// strings and byte vectors are copied from the input: so a few hostile bytes can reserve at
/// most a (largest) element struct each, plus small constants.
fn alloc_bound(len: usize) -> usize {
    let element = size_of::<RoomMessage>()
        .max(size_of::<Envelope>())
        .max(size_of::<MessageId>());
    element * len + 16 * 1024
}

// ---------------------------------------------------------------------------------------------
// Valid chat frames.

const SEEDS: [[u8; 32]; 4] = [[1; 32], [2; 32], [3; 32], [4; 32]];

fn identities() -> Vec<Identity> {
    SEEDS.iter().map(|s| Identity::from_seed(*s)).collect()
}

fn identity() -> impl Strategy<Value = Identity> {
    (0..SEEDS.len()).prop_map(|i| Identity::from_seed(SEEDS[i]))
}

fn peer() -> impl Strategy<Value = PeerId> {
    identity().prop_map(|i| i.peer_id())
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[^\\p{Cc}]{0,200}",
        2 => "[\\n\\ta-z]{0,50}",
        1 => "[a-z ]{1000,3000}",
    ]
}

fn room() -> impl Strategy<Value = RoomId> {
    "[a-z0-9._-]{1,64}".prop_map(|n| RoomId::new(n).unwrap())
}

fn status() -> impl Strategy<Value = Status> {
    prop::sample::select(vec![
        Status::Online,
        Status::Away,
        Status::Busy,
        Status::Offline,
    ])
}

prop_compose! {
    fn direct_message()(from in identity(), to in peer(), id in any::<[u8; 16]>(), seq in any::<u64>(),
        t in any::<u64>(), body in text()) -> DirectMessage {
        DirectMessage::new(&from, MessageId(id), to, seq, Timestamp(t), body).unwrap()
    }
}

prop_compose! {
    // Receipt::new is the crate's own; any signature bytes will do for decoding.
    fn receipt()(id in any::<[u8; 16]>(), sender in peer(), recipient in peer(), seq in any::<u64>(),
        t in any::<u64>(), sig in prop::collection::vec(any::<u8>(), 64)) -> Receipt {
        Receipt { message_id: MessageId(id), sender, recipient, seq, received_at: Timestamp(t),
            signature: Signature(sig.try_into().unwrap()) }
    }
}

fn letter() -> impl Strategy<Value = Letter> {
    prop_oneof![
        direct_message().prop_map(Letter::Message),
        receipt().prop_map(Letter::Receipt)
    ]
}

prop_compose! {
    fn envelope()(m in direct_message(), t in any::<u64>(), seed in any::<u64>()) -> Envelope {
        let from = identities().into_iter().find(|i| i.peer_id() == m.from).unwrap();
        Envelope::seal(&from, &Letter::Message(m), Timestamp(t), &mut StdRng::seed_from_u64(seed))
            .unwrap()
    }
}

fn mailbox_request() -> impl Strategy<Value = MailboxRequest> {
    prop_oneof![
        envelope().prop_map(MailboxRequest::Store),
        (identity(), peer(), any::<u64>())
            .prop_map(|(i, h, t)| MailboxRequest::Fetch(FetchRequest::new(&i, h, Timestamp(t)))),
        (
            identity(),
            peer(),
            any::<u64>(),
            prop::collection::vec(any::<[u8; 16]>(), 0..20)
        )
            .prop_map(|(i, h, t, ids)| MailboxRequest::Ack(
                AckRequest::new(
                    &i,
                    h,
                    Timestamp(t),
                    ids.into_iter().map(MessageId).collect()
                )
                .unwrap()
            )),
    ]
}

fn mailbox_response() -> impl Strategy<Value = MailboxResponse> {
    prop_oneof![
        Just(MailboxResponse::Stored),
        (prop::collection::vec(envelope(), 0..3), any::<u32>()).prop_map(
            |(envelopes, remaining)| MailboxResponse::Envelopes {
                envelopes,
                remaining
            }
        ),
        any::<u32>().prop_map(|deleted| MailboxResponse::Acked { deleted }),
        prop::sample::select(vec![
            Refusal::RecipientFull,
            Refusal::SenderFull,
            Refusal::HolderFull,
            Refusal::BadTime,
            Refusal::Invalid,
        ])
        .prop_map(MailboxResponse::Refused),
    ]
}

prop_compose! {
    fn room_message()(from in identity(), room in room(), seq in any::<u64>(), t in any::<u64>(),
        body in text()) -> RoomMessage {
        RoomMessage::new(&from, room, seq, Timestamp(t), body).unwrap()
    }
}

prop_compose! {
    fn presence()(from in identity(), s in status(), seq in any::<u64>(), t in any::<u64>()) -> Presence {
        Presence::new(&from, s, seq, Timestamp(t))
    }
}

prop_compose! {
    fn profile()(from in identity(), nick in "[a-zA-Z0-9 ]{0,20}[a-z]", about in "[^\\p{Cc}]{0,200}",
        s in status(), version in any::<u64>()) -> Profile {
        Profile::new(&from, nick, about, s, version).unwrap()
    }
}

/// Any frame, as the type it is sent as.
#[derive(Debug, Clone)]
enum Msg {
    Direct(DirectMessage),
    Receipt(Receipt),
    Reply(DirectReply),
    Letter(Letter),
    Envelope(Envelope),
    MailboxRequest(MailboxRequest),
    MailboxResponse(MailboxResponse),
    Room(RoomMessage),
    HistoryRequest(HistoryRequest),
    HistoryResponse(HistoryResponse),
    Presence(Presence),
    Profile(Profile),
    Exchange(PresenceExchange),
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        direct_message().prop_map(Msg::Direct),
        receipt().prop_map(Msg::Receipt),
        prop_oneof![
            receipt().prop_map(DirectReply::Delivered),
            prop::sample::select(vec![
                Rejection::NotForUs,
                Rejection::Invalid,
                Rejection::TryLater
            ])
            .prop_map(DirectReply::Rejected),
        ]
        .prop_map(Msg::Reply),
        letter().prop_map(Msg::Letter),
        envelope().prop_map(Msg::Envelope),
        mailbox_request().prop_map(Msg::MailboxRequest),
        mailbox_response().prop_map(Msg::MailboxResponse),
        room_message().prop_map(Msg::Room),
        (room(), any::<u64>(), any::<u16>()).prop_map(|(room, t, limit)| Msg::HistoryRequest(
            HistoryRequest {
                room,
                since: Timestamp(t),
                limit
            }
        )),
        (room(), prop::collection::vec(room_message(), 0..4))
            .prop_map(|(room, messages)| Msg::HistoryResponse(HistoryResponse { room, messages })),
        presence().prop_map(Msg::Presence),
        profile().prop_map(Msg::Profile),
        // Both signed by one peer, as `PresenceExchange::verify` requires.
        (presence(), prop::option::of(profile())).prop_map(|(presence, profile)| {
            let profile = profile.and_then(|p| {
                let me = identities()
                    .into_iter()
                    .find(|i| i.peer_id() == presence.peer)?;
                Profile::new(&me, p.nick, p.about, p.status, p.version).ok()
            });
            Msg::Exchange(PresenceExchange { presence, profile })
        }),
    ]
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Direct(m) => m.encode(),
            Msg::Receipt(m) => m.encode(),
            Msg::Reply(m) => m.encode(),
            Msg::Letter(m) => m.encode(),
            Msg::Envelope(m) => m.encode(),
            Msg::MailboxRequest(m) => m.encode(),
            Msg::MailboxResponse(m) => m.encode(),
            Msg::Room(m) => m.encode(),
            Msg::HistoryRequest(m) => m.encode(),
            Msg::HistoryResponse(m) => m.encode(),
            Msg::Presence(m) => m.encode(),
            Msg::Profile(m) => m.encode(),
            Msg::Exchange(m) => m.encode(),
        }
        .expect("a valid frame encodes")
    }

    /// Decodes `bytes` as this frame's type: equal to `self` when `bytes` is its encoding. If
    /// the type is signed as a whole, a different value must not verify.
    fn decode_as_own_type(&self, bytes: &[u8], original: bool) {
        fn check<T: Frame + PartialEq + Debug>(
            bytes: &[u8],
            want: &T,
            original: bool,
            verifies: Option<fn(&T) -> bool>,
        ) {
            match T::decode(bytes) {
                Ok(got) if original => assert_eq!(&got, want),
                Ok(got) => {
                    if let Some(verifies) = verifies {
                        assert!(got == *want || !verifies(&got), "forged: {got:?}");
                    }
                }
                Err(e) => assert!(!original, "a valid frame fails to decode: {e}"),
            }
        }
        let envelope_ok = |e: &Envelope| e.verify().is_ok();
        match self {
            Msg::Direct(m) => check(bytes, m, original, Some(|m| m.verify().is_ok())),
            Msg::Receipt(m) => check(bytes, m, original, None),
            Msg::Reply(m) => check(bytes, m, original, None),
            Msg::Letter(m) => check(bytes, m, original, None),
            Msg::Envelope(m) => check(bytes, m, original, Some(envelope_ok)),
            Msg::MailboxRequest(m) => check(
                bytes,
                m,
                original,
                Some(|m| match m {
                    MailboxRequest::Store(e) => e.verify().is_ok(),
                    MailboxRequest::Fetch(f) => f.verify().is_ok(),
                    MailboxRequest::Ack(a) => a.verify().is_ok(),
                }),
            ),
            Msg::MailboxResponse(m) => check(bytes, m, original, None),
            Msg::Room(m) => check(bytes, m, original, Some(|m| m.verify().is_ok())),
            Msg::HistoryRequest(m) => check(bytes, m, original, None),
            Msg::HistoryResponse(m) => check(bytes, m, original, None),
            Msg::Presence(m) => check(bytes, m, original, Some(|m| m.verify().is_ok())),
            Msg::Profile(m) => check(bytes, m, original, Some(|m| m.verify().is_ok())),
            Msg::Exchange(m) => check(bytes, m, original, None),
        }
    }

    /// Whether a freshly built frame verifies (receipts carry made-up signatures).
    fn verifies(&self) -> bool {
        let ids = identities();
        match self {
            Msg::Direct(m) => m.verify().is_ok(),
            Msg::Envelope(e) => {
                let to = ids.iter().find(|i| i.peer_id() == e.to).unwrap();
                e.verify().is_ok() && e.open(to).is_ok()
            }
            Msg::MailboxRequest(MailboxRequest::Store(e)) => e.verify().is_ok(),
            Msg::MailboxRequest(MailboxRequest::Fetch(f)) => f.verify().is_ok(),
            Msg::MailboxRequest(MailboxRequest::Ack(a)) => a.verify().is_ok(),
            Msg::Room(m) => m.verify().is_ok(),
            Msg::HistoryResponse(h) => h.messages.iter().all(|m| m.verify().is_ok()),
            Msg::Presence(p) => p.verify().is_ok(),
            Msg::Profile(p) => p.verify().is_ok(),
            Msg::Exchange(x) => x.verify().is_ok(),
            _ => true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The decoders.

/// Decodes `bytes` as `T` under the allocation bound; what decodes must round-trip and may be
/// verified (or opened) without panicking.
fn probe<T: Frame + PartialEq + Debug>(bytes: &[u8], verify: impl Fn(&T)) {
    let (decoded, peak) = peak_of(|| T::decode(bytes));
    if bytes.len() > T::MAX_LEN {
        assert!(matches!(decoded, Err(DecodeError::TooLarge { .. })));
        assert_eq!(peak, 0, "an oversized frame is refused before allocating");
    }
    assert!(
        peak <= alloc_bound(bytes.len()),
        "{}: {peak} bytes held decoding {} input bytes",
        std::any::type_name::<T>(),
        bytes.len()
    );
    let Ok(value) = decoded else { return };
    let again = value.encode().expect("a decoded frame re-encodes");
    assert!(
        again.len() <= bytes.len(),
        "canonical encodings are minimal"
    );
    assert_eq!(
        T::decode(&again).expect("a re-encoded frame decodes"),
        value
    );
    verify(&value);
}

fn open_all(e: &Envelope) {
    let _ = e.verify();
    for id in identities() {
        let _ = e.open(&id);
    }
}

/// Decodes `bytes` as every chat frame type.
fn decode_all(bytes: &[u8]) {
    probe::<DirectMessage>(bytes, |m| {
        let _ = m.verify();
    });
    probe::<Receipt>(bytes, |r| {
        let _ = r.verify();
    });
    probe::<DirectReply>(bytes, |r| {
        if let DirectReply::Delivered(r) = r {
            let _ = r.verify();
        }
    });
    probe::<Letter>(bytes, |l| {
        let _ = l.verify();
    });
    probe::<Envelope>(bytes, open_all);
    probe::<MailboxRequest>(bytes, |r| match r {
        MailboxRequest::Store(e) => open_all(e),
        MailboxRequest::Fetch(f) => {
            let _ = f.verify();
        }
        MailboxRequest::Ack(a) => {
            let _ = a.verify();
        }
    });
    probe::<MailboxResponse>(bytes, |r| {
        if let MailboxResponse::Envelopes { envelopes, .. } = r {
            envelopes.iter().for_each(open_all);
        }
    });
    probe::<RoomMessage>(bytes, |m| {
        let _ = m.verify();
    });
    probe::<HistoryRequest>(bytes, |_| {});
    probe::<HistoryResponse>(bytes, |h| {
        h.messages.iter().for_each(|m| {
            let _ = m.verify();
        })
    });
    probe::<Presence>(bytes, |p| {
        let _ = p.verify();
    });
    probe::<Profile>(bytes, |p| {
        let _ = p.verify();
    });
    probe::<PresenceExchange>(bytes, |x| {
        let _ = x.verify();
    });
}

proptest! {
    #![proptest_config(agora_fuzz::config())]

    #[test]
    fn valid_frames_decode_and_verify(m in msg()) {
        let bytes = m.encode();
        m.decode_as_own_type(&bytes, true);
        prop_assert!(m.verifies(), "{m:?}");
        decode_all(&bytes);
    }

    #[test]
    fn mutated_frames_are_refused_or_round_trip(m in msg(), other in msg(), ms in mutations()) {
        let bytes = mutate(&m.encode(), &other.encode(), &ms);
        decode_all(&bytes);
        m.decode_as_own_type(&bytes, false);
    }

    #[test]
    fn random_bytes_are_refused_or_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        decode_all(&bytes);
    }
}

#[test]
fn oversized_input_is_refused_before_allocating() {
    // `probe` asserts the refusal and that nothing was allocated.
    for len in [
        129,
        257,
        MAX_DIRECT_MESSAGE_LEN + 1,
        MAX_ENVELOPE_LEN + 9,
        MAX_BATCH_BYTES + MAX_ENVELOPE_LEN + 1,
        MAX_FRAME_LEN + 1,
    ] {
        decode_all(&vec![0x85; len]);
    }
}

#[test]
fn hostile_counts_do_not_reserve_memory() {
    // Envelopes { count: 2^32-1, … } and History { messages: 2^32-1, … } in a few bytes.
    let mut bytes = vec![1];
    put_varint(u32::MAX as u64, &mut bytes);
    decode_all(&bytes);
    let mut bytes = vec![5, b'l', b'o', b'b', b'b', b'y'];
    put_varint(u64::MAX >> 1, &mut bytes);
    bytes.extend_from_slice(&[0; 64]);
    decode_all(&bytes);
}
