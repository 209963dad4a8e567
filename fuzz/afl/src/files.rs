//! agora-files frames: `agora_files::wire::decode` of blob `protocol::Request`/`Response`,
//! `search::Request`/`Response`, `service::ReplicateRequest`/`Response`, then
//! `Collection::parse` and `Ticket::decode` (as text, and as the JSON inside one); the first
//! byte picks the decoder, modulo 9. Then what a node does next: chunk ranges of a request,
//! `Index::handle` of a search request, `merge` of results, path checks of a listing. Checks
//! as in `crates/agora-files/tests/fuzz_decoders.rs`: no panic, allocation bounded, what
//! decodes re-encodes to something that decodes to the same value.

use std::time::Instant;

use agora_files::{
    BLOCK_SIZE,
    collection::{self, Collection},
    protocol::{self, MAX_RANGES, MAX_REQUEST_LEN},
    search,
    service::{ReplicateRequest, ReplicateResponse},
    ticket::Ticket,
    wire,
};
use bao_tree::{ChunkNum, ChunkRanges};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use libp2p::{Multiaddr, PeerId, identity::Keypair};
use serde::{Serialize, de::DeserializeOwned};

use crate::tagged;

/// The proptest file's bound: postcard holds at most one element (a search `Entry`, the
/// largest) per input byte; JSON a small multiple of the text.
fn alloc_bound(len: usize) -> usize {
    96 * len + 16 * 1024
}

fn bounded<R>(bytes: &[u8], decode: impl FnOnce(&[u8]) -> R) -> R {
    crate::bounded(bytes, alloc_bound(bytes.len()), decode)
}

/// Decodes `bytes` as `T`; if it decodes, its encoding decodes to something that encodes the
/// same (for types without `Eq`).
fn postcard_round_trip<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let value: T = bounded(bytes, wire::decode::<T>).ok()?;
    let again = wire::encode(&value);
    let back: T = wire::decode(&again).expect("a re-encoded frame decodes");
    assert_eq!(wire::encode(&back), again, "{}", std::any::type_name::<T>());
    Some(value)
}

fn me() -> PeerId {
    Keypair::ed25519_from_bytes([1; 32])
        .unwrap()
        .public()
        .to_peer_id()
}

fn ticket_of_json(json: &[u8]) -> String {
    format!("agora1{}", URL_SAFE_NO_PAD.encode(json))
}

fn ticket(text: &str) {
    if let Ok(t) = bounded(text.as_bytes(), |b| {
        Ticket::decode(std::str::from_utf8(b).unwrap())
    }) {
        assert_eq!(
            Ticket::decode(&t.encode()).expect("a re-encoded ticket decodes"),
            t
        );
    }
}

/// The decoders, in selector order.
pub const KINDS: [&str; 9] = [
    "blob_request",
    "blob_response",
    "search_request",
    "search_response",
    "replicate_request",
    "replicate_response",
    "collection",
    "ticket_text",
    "ticket_json",
];

pub fn run(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind as usize % KINDS.len() {
        // Blob request, as `serve_persistent` reads it (frames over MAX_REQUEST_LEN are not read).
        0 => {
            if bytes.len() > MAX_REQUEST_LEN {
                return;
            }
            let Ok(req) = bounded(bytes, wire::decode::<protocol::Request>) else {
                return;
            };
            let again = wire::encode(&req);
            assert_eq!(wire::decode::<protocol::Request>(&again).unwrap(), req);
            if let Ok(ranges) = req.chunk_ranges() {
                assert!(req.ranges.len() <= MAX_RANGES);
                assert_eq!(
                    bao_tree::io::round_up_to_chunks_groups(ranges.clone(), BLOCK_SIZE),
                    ranges,
                    "ranges come out whole chunk groups"
                );
            }
            let _ = blake3::Hash::from_hex(&req.hash);
            let _ = protocol::pairs_to_ranges(&req.ranges);
        }
        // Blob response, as a downloader reads it (4096-byte frames).
        1 => {
            if bytes.len() > 4096 {
                return;
            }
            let Ok(resp) = bounded(bytes, wire::decode::<protocol::Response>) else {
                return;
            };
            let again = wire::encode(&resp);
            assert_eq!(wire::decode::<protocol::Response>(&again).unwrap(), resp);
            if let protocol::Response::Partial { have, .. } = &resp {
                let ranges = protocol::pairs_to_ranges(have);
                let _ = protocol::ranges_to_pairs(&ranges);
            }
        }
        // Search request, as a holder handles it.
        2 => {
            let Some(req) = postcard_round_trip::<search::Request>(bytes) else {
                return;
            };
            let mut index = search::Index::default();
            let now = Instant::now();
            let _ = index.handle(me(), req, now);
            index.expire(now);
        }
        // Search response, as a searcher filters and merges it.
        3 => {
            let Some(resp) = postcard_round_trip::<search::Response>(bytes) else {
                return;
            };
            if let search::Response::Results(found) = resp {
                let kept = found
                    .into_iter()
                    .take(search::MAX_ENTRIES_PER_MESSAGE)
                    .filter(|e| {
                        assert!(search::keywords(&e.name).len() <= search::MAX_KEYWORDS_PER_NAME);
                        blake3::Hash::from_hex(&e.hash).is_ok()
                    });
                let _ = search::merge(kept);
            }
        }
        4 => {
            if let Some(r) = postcard_round_trip::<ReplicateRequest>(bytes) {
                assert_eq!(
                    wire::decode::<ReplicateRequest>(&wire::encode(&r)).unwrap(),
                    r
                );
                let _ = blake3::Hash::from_hex(&r.hash);
            }
        }
        5 => {
            if let Some(r) = postcard_round_trip::<ReplicateResponse>(bytes) {
                assert_eq!(
                    wire::decode::<ReplicateResponse>(&wire::encode(&r)).unwrap(),
                    r
                );
            }
        }
        // Collection listing, as a downloader parses it.
        6 => {
            let Ok(c) = bounded(bytes, Collection::parse) else {
                return;
            };
            assert_eq!(
                Collection::parse(&c.to_bytes()).expect("a listing re-parses"),
                c
            );
            for e in &c.entries {
                collection::safe_relative_path(&e.path).expect("parsed paths are safe");
            }
        }
        7 => ticket(&String::from_utf8_lossy(bytes)),
        _ => ticket(&ticket_of_json(bytes)),
    }
    let _ = search::keywords(&String::from_utf8_lossy(bytes));
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let hash = blake3::hash(b"agora");
    let peer = me();
    let ranges = ChunkRanges::from(ChunkNum(0)..ChunkNum(16)) | ChunkRanges::from(ChunkNum(64)..);
    let entry = |name: &str, size| search::Entry {
        name: name.into(),
        size,
        hash: hash.to_hex().to_string(),
        provider: peer.to_string(),
    };
    let addrs: Vec<Multiaddr> = vec![
        "/ip4/127.0.0.1/tcp/4001".parse().unwrap(),
        format!("/ip4/10.0.0.2/udp/4001/quic-v1/p2p/{peer}")
            .parse()
            .unwrap(),
    ];
    let ticket = Ticket { hash, peer, addrs };
    let collection = Collection::new(vec![
        collection::Entry {
            path: "a/readme.txt".into(),
            hash: hash.to_hex().to_string(),
            size: 5,
        },
        collection::Entry {
            path: "b.bin".into(),
            hash: hash.to_hex().to_string(),
            size: 1 << 20,
        },
    ]);
    let text = ticket.encode();
    let json = URL_SAFE_NO_PAD
        .decode(text.strip_prefix("agora1").unwrap())
        .unwrap();

    let mut out = Vec::new();
    let mut add = |kind: usize, name: &str, bytes: Vec<u8>| {
        out.push((
            format!("{}-{name}", KINDS[kind]),
            tagged(kind as u8, &bytes),
        ));
    };
    add(
        0,
        "two-ranges",
        wire::encode(&protocol::Request::new(&hash, &ranges)),
    );
    add(1, "size", wire::encode(&protocol::Response::Size(123_456)));
    add(
        1,
        "busy",
        wire::encode(&protocol::Response::Busy("serves".into())),
    );
    let partial = protocol::Response::Partial {
        size: 1 << 30,
        have: protocol::ranges_to_pairs(&ranges),
    };
    add(1, "partial", wire::encode(&partial));
    let publish = search::Request::Publish {
        keyword: "holiday".into(),
        entries: vec![
            entry("holiday photos 2024.zip", 7_000_000),
            entry("holiday.txt", 12),
        ],
    };
    add(2, "publish", wire::encode(&publish));
    let query = search::Request::Query {
        keyword: "holiday".into(),
        all: search::keywords("holiday photos"),
    };
    add(2, "query", wire::encode(&query));
    add(
        3,
        "results",
        wire::encode(&search::Response::Results(vec![entry("holiday.txt", 12)])),
    );
    add(3, "stored", wire::encode(&search::Response::Stored(2)));
    let replicate = ReplicateRequest {
        hash: hash.to_hex().to_string(),
        size: 4096,
        name: "x.bin".into(),
    };
    add(4, "x", wire::encode(&replicate));
    let answer = ReplicateResponse {
        accepted: false,
        reason: "quota".into(),
    };
    add(5, "refused", wire::encode(&answer));
    add(6, "two-files", collection.to_bytes());
    add(7, "two-addrs", text.into_bytes());
    add(8, "two-addrs", json);
    out
}
