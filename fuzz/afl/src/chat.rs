//! Chat frames: `agora_chat::wire::*::decode`, every `Frame` type (the first byte picks it,
//! modulo 13), then what a node does with a decoded frame: signature checks and opening
//! envelopes. Checks as in `crates/agora-chat/tests/fuzz_decoders.rs`: no panic, oversized
//! input refused before allocating, allocation bounded, and what decodes re-encodes minimally
//! to bytes that decode to the same value.

use std::fmt::Debug;

use agora_chat::{
    crypto::{Identity, Signature},
    wire::*,
};
use rand::{SeedableRng, rngs::StdRng};

use crate::{peak_of, tagged};

const IDENTITY_SEEDS: [[u8; 32]; 2] = [[1; 32], [2; 32]];

fn identities() -> Vec<Identity> {
    IDENTITY_SEEDS
        .iter()
        .map(|s| Identity::from_seed(*s))
        .collect()
}

/// The proptest file's bound: one (largest) element per input byte, plus constants.
fn alloc_bound(len: usize) -> usize {
    let element = size_of::<RoomMessage>()
        .max(size_of::<Envelope>())
        .max(size_of::<MessageId>());
    element * len + 16 * 1024
}

fn probe<T: Frame + PartialEq + Debug>(bytes: &[u8], then: impl Fn(&T)) {
    let (decoded, peak) = peak_of(|| T::decode(bytes));
    let name = std::any::type_name::<T>();
    if bytes.len() > T::MAX_LEN {
        assert!(
            matches!(decoded, Err(DecodeError::TooLarge { .. })),
            "{name}"
        );
        assert_eq!(
            peak, 0,
            "{name}: an oversized frame is refused before allocating"
        );
    }
    assert!(
        peak <= alloc_bound(bytes.len()),
        "{name}: {peak} bytes held decoding {} input bytes",
        bytes.len()
    );
    let Ok(value) = decoded else { return };
    let again = value.encode().expect("a decoded frame re-encodes");
    assert!(
        again.len() <= bytes.len(),
        "{name}: canonical encodings are minimal"
    );
    assert_eq!(
        T::decode(&again).expect("a re-encoded frame decodes"),
        value
    );
    then(&value);
}

fn open_all(e: &Envelope) {
    let _ = e.verify();
    for id in identities() {
        if let Ok(letter) = e.open(&id) {
            let _ = letter.verify();
        }
    }
}

/// The frame types, in selector order.
pub const KINDS: [&str; 13] = [
    "direct",
    "receipt",
    "reply",
    "letter",
    "envelope",
    "mailbox_request",
    "mailbox_response",
    "room",
    "history_request",
    "history_response",
    "presence",
    "profile",
    "exchange",
];

pub fn run(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind as usize % KINDS.len() {
        0 => probe::<DirectMessage>(bytes, |m| drop(m.verify())),
        1 => probe::<Receipt>(bytes, |r| drop(r.verify())),
        2 => probe::<DirectReply>(bytes, |r| {
            if let DirectReply::Delivered(r) = r {
                let _ = r.verify();
            }
        }),
        3 => probe::<Letter>(bytes, |l| drop(l.verify())),
        4 => probe::<Envelope>(bytes, open_all),
        5 => probe::<MailboxRequest>(bytes, |r| match r {
            MailboxRequest::Store(e) => open_all(e),
            MailboxRequest::Fetch(f) => drop(f.verify()),
            MailboxRequest::Ack(a) => drop(a.verify()),
        }),
        6 => probe::<MailboxResponse>(bytes, |r| {
            if let MailboxResponse::Envelopes { envelopes, .. } = r {
                envelopes.iter().for_each(open_all);
            }
        }),
        7 => probe::<RoomMessage>(bytes, |m| drop(m.verify())),
        8 => probe::<HistoryRequest>(bytes, |_| {}),
        9 => probe::<HistoryResponse>(bytes, |h| h.messages.iter().for_each(|m| drop(m.verify()))),
        10 => probe::<Presence>(bytes, |p| drop(p.verify())),
        11 => probe::<Profile>(bytes, |p| drop(p.verify())),
        _ => probe::<PresenceExchange>(bytes, |x| drop(x.verify())),
    }
}

fn seed<T: Frame>(kind: usize, name: &str, frame: &T, out: &mut Vec<(String, Vec<u8>)>) {
    let bytes = frame.encode().expect("a valid frame encodes");
    assert!(T::decode(&bytes).is_ok(), "{name}: a valid frame decodes");
    out.push((
        format!("{}-{name}", KINDS[kind]),
        tagged(kind as u8, &bytes),
    ));
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let ids = identities();
    let (a, b) = (&ids[0], &ids[1]);
    let t = Timestamp(1_700_000_000_000);
    let dm = DirectMessage::new(
        a,
        MessageId([7; 16]),
        b.peer_id(),
        3,
        t,
        "hello, bob".into(),
    )
    .unwrap();
    // `Receipt::new` is the crate's own; any signature bytes will do for decoding.
    let receipt = Receipt {
        message_id: dm.id,
        sender: a.peer_id(),
        recipient: b.peer_id(),
        seq: dm.seq,
        received_at: t,
        signature: Signature([9; 64]),
    };
    let letter = Letter::Message(dm.clone());
    let mut rng = StdRng::seed_from_u64(1);
    let envelope = Envelope::seal(a, &letter, t, &mut rng).unwrap();
    let room = RoomId::new("lobby").unwrap();
    let rm = RoomMessage::new(a, room.clone(), 1, t, "hi all".into()).unwrap();
    let presence = Presence::new(a, Status::Online, 2, t);
    let profile = Profile::new(a, "alice".into(), "about me".into(), Status::Away, 1).unwrap();

    let mut out = Vec::new();
    seed(0, "hello", &dm, &mut out);
    seed(1, "of-hello", &receipt, &mut out);
    seed(
        2,
        "delivered",
        &DirectReply::Delivered(receipt.clone()),
        &mut out,
    );
    seed(
        2,
        "rejected",
        &DirectReply::Rejected(Rejection::TryLater),
        &mut out,
    );
    seed(3, "message", &letter, &mut out);
    seed(3, "receipt", &Letter::Receipt(receipt.clone()), &mut out);
    seed(4, "sealed", &envelope, &mut out);
    seed(
        5,
        "store",
        &MailboxRequest::Store(envelope.clone()),
        &mut out,
    );
    seed(
        5,
        "fetch",
        &MailboxRequest::Fetch(FetchRequest::new(b, a.peer_id(), t)),
        &mut out,
    );
    let ack = AckRequest::new(
        b,
        a.peer_id(),
        t,
        vec![MessageId([7; 16]), MessageId([8; 16])],
    );
    seed(5, "ack", &MailboxRequest::Ack(ack.unwrap()), &mut out);
    let envelopes = MailboxResponse::Envelopes {
        envelopes: vec![envelope],
        remaining: 2,
    };
    seed(6, "envelopes", &envelopes, &mut out);
    seed(
        6,
        "refused",
        &MailboxResponse::Refused(Refusal::SenderFull),
        &mut out,
    );
    seed(7, "hi", &rm, &mut out);
    let req = HistoryRequest {
        room: room.clone(),
        since: t,
        limit: 50,
    };
    seed(8, "lobby", &req, &mut out);
    let history = HistoryResponse {
        room,
        messages: vec![rm.clone(), rm],
    };
    seed(9, "two", &history, &mut out);
    seed(10, "online", &presence, &mut out);
    seed(11, "alice", &profile, &mut out);
    let exchange = PresenceExchange {
        presence,
        profile: Some(profile),
    };
    seed(12, "with-profile", &exchange, &mut out);
    out
}
