//! Fuzzing of agora-files' decoders of network input (hardening issue 20), as proptest runs
//! over mutated valid frames: blob `Request`/`Response` (postcard, then `Request::chunk_ranges` and
//! `pairs_to_ranges`), search `Request`/`Response` (postcard, then `Index::handle`, `keywords`,
//! `merge`), collection listings (`Collection::parse`) and tickets (`Ticket::decode`, mutated
//! both as text and inside their base64).
//!
//! Each decode must not panic, must hold at most [`alloc_bound`] bytes at once (measured by a
//! counting allocator), and what it accepts must re-encode to something that decodes to the
//! same value; valid frames always decode. The replicate request is a private struct of
//! `service.rs` decoded only inside a running node, so it is not covered here.
//!
//! 256 cases per property by default (a few seconds in debug); `PROPTEST_CASES` raises it
//! (`bench/fuzz.sh`). A failure found this way becomes a named regression test below.

use std::time::Instant;

use agora_files::{
    BLOCK_SIZE,
    collection::{self, Collection},
    protocol::{self, MAX_RANGES, MAX_REQUEST_LEN},
    search,
    ticket::Ticket,
};
use agora_fuzz::{mutate, mutations_with_numbers, peak_of};
use bao_tree::{ChunkNum, ChunkRanges};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use libp2p::{Multiaddr, PeerId, identity::Keypair};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Allocation accounting: `agora_fuzz::peak_of` measures the most bytes a closure holds at once
// on this thread, counted by this binary's global allocator. (Mutations of valid frames and the
// proptest config come from agora-fuzz too.)

#[global_allocator]
static ALLOC: agora_fuzz::Counting = agora_fuzz::Counting;

/// The most a decoder may hold for `len` input bytes. Postcard (blob and search frames)
/// believes a sequence's claimed length only up to the bytes that remain (at least one byte
/// per element), so it holds at most one element per input byte: the largest element here is
/// a search `Entry` (three `String`s and a `u64`, 80 bytes). JSON (collections, tickets) has no
/// lengths to believe: what it holds is a small multiple of the text.
fn alloc_bound(len: usize) -> usize {
    96 * len + 16 * 1024
}

/// Runs `decode` on `bytes` under the allocation bound.
fn bounded<R>(bytes: &[u8], decode: impl FnOnce(&[u8]) -> R) -> R {
    let (r, peak) = peak_of(|| decode(bytes));
    assert!(
        peak <= alloc_bound(bytes.len()),
        "{peak} bytes held decoding {} input bytes",
        bytes.len()
    );
    r
}

// ---------------------------------------------------------------------------------------------
// Valid frames.

fn hash() -> impl Strategy<Value = blake3::Hash> {
    any::<[u8; 32]>().prop_map(blake3::Hash::from_bytes)
}

fn peer() -> impl Strategy<Value = PeerId> {
    (0u8..4).prop_map(|i| {
        Keypair::ed25519_from_bytes([i + 1; 32])
            .unwrap()
            .public()
            .to_peer_id()
    })
}

/// Chunk numbers: small ones, and ones near the top (a size request starts at `u64::MAX >> 12`).
fn chunk() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..100_000,
        (u64::MAX >> 12) - 100..=(u64::MAX >> 12),
        any::<u64>()
    ]
}

/// Sorted, disjoint ranges as a requester builds them.
fn ranges() -> impl Strategy<Value = ChunkRanges> {
    (prop::collection::btree_set(chunk(), 0..12), any::<bool>()).prop_map(|(bounds, open)| {
        let mut bounds: Vec<u64> = bounds.into_iter().collect();
        if !open && bounds.len() % 2 == 1 {
            bounds.pop();
        }
        let mut out = ChunkRanges::empty();
        for pair in bounds.chunks(2) {
            out |= match pair {
                [start, end] => ChunkRanges::from(ChunkNum(*start)..ChunkNum(*end)),
                [start] => ChunkRanges::from(ChunkNum(*start)..),
                _ => unreachable!(),
            };
        }
        out
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\\p{Cc}]{0,40}",
        "[a-z0-9 ._-]{0,60}",
        "\\PC{0,20}",
        "[a-z]{60,70}( [a-z]{2,5}){0,20}",
    ]
}

fn blob_request() -> impl Strategy<Value = protocol::Request> {
    (hash(), ranges()).prop_map(|(h, r)| protocol::Request::new(&h, &r))
}

fn blob_response() -> impl Strategy<Value = protocol::Response> {
    use protocol::Response;
    prop_oneof![
        any::<u64>().prop_map(Response::Size),
        Just(Response::NotFound),
        text().prop_map(Response::Unavailable),
        (any::<u64>(), ranges()).prop_map(|(size, r)| Response::Partial {
            size,
            have: protocol::ranges_to_pairs(&r),
        }),
        text().prop_map(Response::Busy),
        ranges().prop_map(|r| Response::Hint {
            have: protocol::ranges_to_pairs(&r),
        }),
    ]
}

fn search_entry() -> impl Strategy<Value = search::Entry> {
    (text(), any::<u64>(), hash(), peer()).prop_map(|(name, size, hash, provider)| search::Entry {
        name,
        size,
        hash: hash.to_hex().to_string(),
        provider: provider.to_string(),
    })
}

fn search_request() -> impl Strategy<Value = search::Request> {
    prop_oneof![
        (text(), prop::collection::vec(search_entry(), 0..4)).prop_map(|(name, entries)| {
            // Publish under a keyword of the first name, as a publisher does.
            let keyword = entries
                .first()
                .and_then(|e| search::keywords(&e.name).into_iter().next())
                .unwrap_or(name);
            search::Request::Publish { keyword, entries }
        }),
        text().prop_map(|name| {
            let all = search::keywords(&name);
            let keyword = all.first().cloned().unwrap_or_default();
            search::Request::Query { keyword, all }
        }),
    ]
}

fn search_response() -> impl Strategy<Value = search::Response> {
    prop_oneof![
        any::<usize>().prop_map(search::Response::Stored),
        prop::collection::vec(search_entry(), 0..4).prop_map(search::Response::Results),
        text().prop_map(search::Response::Refused),
    ]
}

fn collection() -> impl Strategy<Value = Collection> {
    prop::collection::btree_map(
        "[a-zA-Z0-9 _.-]{0,6}[a-z](/[a-z0-9]{1,6}){0,3}",
        (hash(), any::<u64>()),
        0..8,
    )
    .prop_map(|m| {
        Collection::new(
            m.into_iter()
                .map(|(path, (hash, size))| collection::Entry {
                    path,
                    hash: hash.to_hex().to_string(),
                    size,
                })
                .collect(),
        )
    })
}

fn multiaddr() -> impl Strategy<Value = Multiaddr> {
    (0u8..5, any::<[u8; 4]>(), any::<u16>(), peer()).prop_map(|(kind, ip, port, p)| {
        let [a, b, c, d] = ip;
        match kind {
            0 => format!("/ip4/{a}.{b}.{c}.{d}/tcp/{port}"),
            1 => format!("/ip4/{a}.{b}.{c}.{d}/udp/{port}/quic-v1"),
            2 => format!("/ip6/::{a:x}{b:02x}/tcp/{port}/p2p/{p}"),
            3 => format!("/dns4/node{c}.example.org/tcp/{port}"),
            _ => format!("/ip4/{a}.{b}.{c}.{d}/tcp/{port}/p2p/{p}/p2p-circuit"),
        }
        .parse()
        .unwrap()
    })
}

fn ticket() -> impl Strategy<Value = Ticket> {
    (hash(), peer(), prop::collection::vec(multiaddr(), 0..4))
        .prop_map(|(hash, peer, addrs)| Ticket { hash, peer, addrs })
}

/// Any frame, as the type it is sent as.
#[derive(Debug)]
enum Msg {
    BlobRequest(protocol::Request),
    BlobResponse(protocol::Response),
    SearchRequest(search::Request),
    SearchResponse(search::Response),
    Collection(Collection),
    /// The JSON inside a ticket (what a mutation of the base64 payload reaches).
    Ticket(Ticket),
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        blob_request().prop_map(Msg::BlobRequest),
        blob_response().prop_map(Msg::BlobResponse),
        search_request().prop_map(Msg::SearchRequest),
        search_response().prop_map(Msg::SearchResponse),
        collection().prop_map(Msg::Collection),
        ticket().prop_map(Msg::Ticket),
    ]
}

/// The JSON inside a ticket.
fn ticket_json(t: &Ticket) -> Vec<u8> {
    let text = t.encode();
    URL_SAFE_NO_PAD
        .decode(text.strip_prefix("agora1").unwrap())
        .unwrap()
}

fn ticket_of_json(json: &[u8]) -> String {
    format!("agora1{}", URL_SAFE_NO_PAD.encode(json))
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        match self {
            Msg::BlobRequest(m) => agora_files::wire::encode(m),
            Msg::BlobResponse(m) => agora_files::wire::encode(m),
            Msg::SearchRequest(m) => agora_files::wire::encode(m),
            Msg::SearchResponse(m) => agora_files::wire::encode(m),
            Msg::Collection(c) => c.to_bytes(),
            Msg::Ticket(t) => ticket_json(t),
        }
    }

    /// A valid frame decodes to itself (and its ranges or entries are accepted).
    fn decodes_to_itself(&self, bytes: &[u8]) {
        match self {
            Msg::BlobRequest(m) => {
                assert!(bytes.len() <= MAX_REQUEST_LEN);
                let got: protocol::Request = agora_files::wire::decode(bytes).unwrap();
                assert_eq!(&got, m);
                let ranges = got.chunk_ranges().expect("a requester's ranges are valid");
                assert!(
                    protocol::pairs_to_ranges(&got.ranges).is_subset(&ranges),
                    "rounding to chunk groups only widens"
                );
            }
            Msg::BlobResponse(m) => {
                let got: protocol::Response = agora_files::wire::decode(bytes).unwrap();
                assert_eq!(&got, m);
            }
            Msg::SearchRequest(_) | Msg::SearchResponse(_) => {
                assert_eq!(reencode_search(bytes), Some(bytes.to_vec()));
            }
            Msg::Collection(c) => assert_eq!(&Collection::parse(bytes).unwrap(), c),
            Msg::Ticket(t) => assert_eq!(&Ticket::decode(&ticket_of_json(bytes)).unwrap(), t),
        }
    }
}

/// Decodes `bytes` as a search request or response and encodes it again (they are not `Eq`).
fn reencode_search(bytes: &[u8]) -> Option<Vec<u8>> {
    if let Ok(r) = agora_files::wire::decode::<search::Request>(bytes) {
        return Some(agora_files::wire::encode(&r));
    }
    agora_files::wire::decode::<search::Response>(bytes)
        .ok()
        .map(|r| agora_files::wire::encode(&r))
}

// ---------------------------------------------------------------------------------------------
// The decoders.

/// Decodes `bytes` as every agora-files frame and runs what a node runs on the result.
fn decode_all(bytes: &[u8]) {
    // Blob request, as `serve_persistent` reads it (frames over MAX_REQUEST_LEN are not read).
    if bytes.len() <= MAX_REQUEST_LEN
        && let Ok(req) = bounded(bytes, agora_files::wire::decode::<protocol::Request>)
    {
        let again = agora_files::wire::encode(&req);
        assert_eq!(
            agora_files::wire::decode::<protocol::Request>(&again).unwrap(),
            req
        );
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
    if bytes.len() <= 4096
        && let Ok(resp) = bounded(bytes, |b| {
            agora_files::wire::decode::<protocol::Response>(b)
        })
    {
        let again = agora_files::wire::encode(&resp);
        assert_eq!(
            agora_files::wire::decode::<protocol::Response>(&again).unwrap(),
            resp
        );
        if let protocol::Response::Partial { have, .. } | protocol::Response::Hint { have } = &resp
        {
            let ranges = protocol::pairs_to_ranges(have);
            let _ = protocol::ranges_to_pairs(&ranges);
        }
    }
    // Search request, as a holder handles it, and response, as a searcher filters it.
    let me: PeerId = Keypair::ed25519_from_bytes([1; 32])
        .unwrap()
        .public()
        .to_peer_id();
    if let Ok(req) = bounded(bytes, agora_files::wire::decode::<search::Request>) {
        let again = agora_files::wire::encode(&req);
        assert_eq!(reencode_search(&again), Some(again.clone()));
        let mut index = search::Index::default();
        let now = Instant::now();
        let _ = index.handle(me, req, now);
        let _ = index.handle(
            me,
            agora_files::wire::decode::<search::Request>(&again).unwrap(),
            now,
        );
        index.expire(now);
    }
    if let Ok(resp) = bounded(bytes, agora_files::wire::decode::<search::Response>) {
        let again = agora_files::wire::encode(&resp);
        assert_eq!(reencode_search(&again), Some(again.clone()));
        if let search::Response::Results(found) = resp {
            let kept = found
                .into_iter()
                .take(search::MAX_ENTRIES_PER_MESSAGE)
                .filter(|e| {
                    let kw = search::keywords(&e.name);
                    assert!(kw.len() <= search::MAX_KEYWORDS_PER_NAME);
                    blake3::Hash::from_hex(&e.hash).is_ok()
                });
            let _ = search::merge(kept);
        }
    }
    // Collection listing, as a downloader parses it.
    if let Ok(c) = bounded(bytes, Collection::parse) {
        assert_eq!(Collection::parse(&c.to_bytes()).unwrap(), c);
        for e in &c.entries {
            collection::safe_relative_path(&e.path).unwrap();
        }
    }
    // Ticket: the bytes as ticket text, and as the JSON inside one.
    for text in [
        String::from_utf8_lossy(bytes).into_owned(),
        ticket_of_json(bytes),
    ] {
        if let Ok(t) = bounded(text.as_bytes(), |b| {
            Ticket::decode(std::str::from_utf8(b).unwrap())
        }) {
            assert_eq!(Ticket::decode(&t.encode()).unwrap(), t);
        }
    }
    let _ = search::keywords(&String::from_utf8_lossy(bytes));
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
    fn mutated_frames_are_refused_or_round_trip(m in msg(), other in msg(), ms in mutations_with_numbers()) {
        decode_all(&mutate(&m.encode(), &other.encode(), &ms));
    }

    #[test]
    fn mutated_ticket_text_is_refused_or_round_trips(t in ticket(), other in ticket(), ms in mutations_with_numbers()) {
        let text = mutate(t.encode().as_bytes(), other.encode().as_bytes(), &ms);
        decode_all(&text);
    }

    #[test]
    fn random_bytes_are_refused_or_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&bytes);
    }

    #[test]
    fn any_ranges_are_checked_without_panicking(
        pairs in prop::collection::vec((chunk(), prop::option::of(chunk())), 0..300)
    ) {
        let req = protocol::Request { hash: String::new(), ranges: pairs.clone() };
        let _ = req.chunk_ranges();
        let _ = protocol::pairs_to_ranges(&pairs);
    }
}

#[test]
fn oversized_listing_and_ticket_are_refused_before_parsing() {
    let big = vec![b'['; collection::MAX_COLLECTION_LEN as usize + 1];
    let (r, peak) = peak_of(|| Collection::parse(&big));
    assert!(r.is_err());
    assert!(
        peak < 1024,
        "{peak} bytes held refusing an oversized listing"
    );
    let long = format!("agora1{}", "A".repeat(10_000));
    let (r, peak) = peak_of(|| Ticket::decode(&long));
    assert!(r.is_err());
    assert!(
        peak < 1024,
        "{peak} bytes held refusing an oversized ticket"
    );
}
