//! Super-seeding: how a node holding a whole blob hands it to a swarm so that every piece
//! leaves it once before any leaves it twice.
//!
//! BitTorrent's super-seeding has the seeder offer each downloader only pieces nobody has had
//! from it yet, so downloaders must trade among themselves for the rest. Here a request for
//! pieces the seeder has already sent more often than others is answered with a *hint*
//! ([`crate::protocol::Response::Hint`]): the pieces it will serve now. The downloader asks for
//! those (or gets the others from its peers) and comes back later. Its upload then tends to
//! one copy of the file, and a swarm whose seeder leaves early still holds every piece.
//!
//! Rules, per blob, with no clock of its own (the caller passes `now`):
//! - A piece is *due* when its sends, counting those still under way, are at most `floor`,
//!   where `floor` is the fewest *completed* sends of any piece, raised by one for every
//!   [`ESCALATE`] with no send under way in which no due piece was asked for (so a downloader
//!   that needs a piece nobody else can give, because the peer that had it left, is served
//!   within a few seconds), and for every [`ESCALATE_BUSY`] in which no due piece was asked
//!   for even with sends under way (the end of a swarm on slow links: every piece has gone
//!   out, some are still crawling to slow peers, and the downloaders that want them would
//!   otherwise wait on those peers while the seeder's uplink idles); `floor` falls back to
//!   the fewest completed sends when those rise. So no piece starts a second time before
//!   every piece has started once, and, unless nobody asked for a piece due for
//!   [`ESCALATE_BUSY`], arrived once: a seeder that leaves after that leaves nothing
//!   missing. A send that fails is not counted.
//! - A request is served when all its pieces are due, when it asks for the last chunk group
//!   only (the size probe that starts every download), or when only one peer has asked for
//!   the blob within [`SWARM_WINDOW`] (super-seeding one downloader would only slow it).
//! - State is bounded: at most [`MAX_BLOBS`] blobs (least recently asked for dropped) and
//!   [`MAX_PEERS`] requesters per blob.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bao_tree::{ChunkNum, ChunkRanges};
use libp2p::PeerId;

use crate::Hash;

/// Chunks (1 KiB) per piece: the downloader's piece size (256 KiB, as BitTorrent's common
/// piece size: small enough that a slow provider holds little of a download at a time).
pub const PIECE_CHUNKS: u64 = 256;
/// Time without a request for a due piece after which one more send is allowed everywhere.
pub const ESCALATE: Duration = Duration::from_secs(1);
/// Time without a request for a due piece after which one more send is allowed everywhere,
/// even while sends are under way.
pub const ESCALATE_BUSY: Duration = Duration::from_secs(3);
/// Requesters seen within this window make a swarm.
pub const SWARM_WINDOW: Duration = Duration::from_secs(10);
/// Blobs tracked at once.
pub const MAX_BLOBS: usize = 64;
/// Requesters remembered per blob.
pub const MAX_PEERS: usize = 256;

/// What to answer a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Serve it; once the response is written (or has failed), report these pieces with
    /// [`Seeding::settle`].
    Serve(Vec<usize>),
    /// Ask for these instead (the pieces due now).
    Hint(ChunkRanges),
}

struct Blob {
    /// Sends begun per piece (completed or under way).
    started: Vec<u32>,
    /// Sends completed per piece.
    sends: Vec<u32>,
    extra: u32,
    last_due_request: Instant,
    last_request: Instant,
    peers: HashMap<PeerId, Instant>,
}

impl Blob {
    fn new(pieces: usize, now: Instant) -> Self {
        Blob {
            started: vec![0; pieces],
            sends: vec![0; pieces],
            extra: 0,
            last_due_request: now,
            last_request: now,
            peers: HashMap::new(),
        }
    }

    fn fewest(&self) -> u32 {
        self.sends.iter().copied().min().unwrap_or(0)
    }

    /// Pieces begun at most this many times are due.
    fn floor(&self) -> u32 {
        self.fewest().saturating_add(self.extra)
    }
}

/// Super-seeding state of the blobs this node serves whole.
#[derive(Default)]
pub struct Seeding {
    blobs: HashMap<Hash, Blob>,
}

/// The pieces (indices) that `ranges` touch in a blob of `chunks` chunks.
fn pieces_of(ranges: &ChunkRanges, chunks: u64) -> Vec<usize> {
    let pieces = chunks.div_ceil(PIECE_CHUNKS);
    let mut out = Vec::new();
    for (start, end) in crate::protocol::ranges_to_pairs(ranges) {
        let end = end.unwrap_or(chunks).min(chunks);
        if start >= end {
            continue;
        }
        let (first, last) = (start / PIECE_CHUNKS, (end - 1) / PIECE_CHUNKS);
        for p in first..=last.min(pieces.saturating_sub(1)) {
            if out.last() != Some(&(p as usize)) {
                out.push(p as usize);
            }
        }
    }
    out
}

impl Seeding {
    /// Decides a request of `peer` for `ranges` (rounded to chunk groups) of the blob `hash`
    /// of `size` bytes, which this node holds whole, and counts the pieces it serves.
    pub fn decide(
        &mut self,
        hash: Hash,
        size: u64,
        peer: PeerId,
        ranges: &ChunkRanges,
        group_chunks: u64,
        now: Instant,
    ) -> Decision {
        let chunks = size.div_ceil(1024).max(1);
        // The size probe: only the last chunk group.
        let last_group = ChunkRanges::from(ChunkNum((chunks - 1) / group_chunks * group_chunks)..);
        let within_blob = ranges.clone() & ChunkRanges::from(ChunkNum(0)..ChunkNum(chunks));
        if (within_blob.clone() - last_group).is_empty() {
            return Decision::Serve(Vec::new());
        }
        if !self.blobs.contains_key(&hash) && self.blobs.len() >= MAX_BLOBS {
            let oldest = self
                .blobs
                .iter()
                .min_by_key(|(_, b)| b.last_request)
                .map(|(h, _)| *h);
            if let Some(h) = oldest {
                self.blobs.remove(&h);
            }
        }
        let pieces = chunks.div_ceil(PIECE_CHUNKS) as usize;
        let blob = self
            .blobs
            .entry(hash)
            .or_insert_with(|| Blob::new(pieces, now));
        blob.last_request = now;
        blob.peers
            .retain(|_, seen| now.saturating_duration_since(*seen) < SWARM_WINDOW);
        if blob.peers.len() >= MAX_PEERS && !blob.peers.contains_key(&peer) {
            let oldest = blob.peers.iter().min_by_key(|(_, t)| **t).map(|(p, _)| *p);
            if let Some(p) = oldest {
                blob.peers.remove(&p);
            }
        }
        blob.peers.insert(peer, now);
        let asked = pieces_of(&within_blob, chunks);
        // Escalate only with nothing on its way: on a slow link one send takes seconds, and
        // a round would otherwise be cut short before its pieces have arrived.
        let in_flight = blob.started.iter().zip(&blob.sends).any(|(s, d)| s > d);
        let waited = now.saturating_duration_since(blob.last_due_request);
        if (!in_flight && waited >= ESCALATE) || waited >= ESCALATE_BUSY {
            blob.extra = blob.extra.saturating_add(1);
            blob.last_due_request = now;
        }
        let floor = blob.floor();
        let all_due = asked.iter().all(|&i| blob.started[i] <= floor);
        if all_due || blob.peers.len() < 2 {
            if all_due {
                blob.last_due_request = now;
            }
            for &i in &asked {
                blob.started[i] = blob.started[i].saturating_add(1);
            }
            return Decision::Serve(asked);
        }
        let mut hint = ChunkRanges::empty();
        for i in (0..pieces).filter(|&i| blob.started[i] <= floor) {
            let start = i as u64 * PIECE_CHUNKS;
            hint |=
                ChunkRanges::from(ChunkNum(start)..ChunkNum((start + PIECE_CHUNKS).min(chunks)));
        }
        Decision::Hint(hint)
    }

    /// Records how a served request ended: `delivered` counts its pieces as sent; a failed
    /// send is forgotten (its pieces are due again).
    pub fn settle(&mut self, hash: Hash, pieces: &[usize], delivered: bool) {
        let Some(blob) = self.blobs.get_mut(&hash) else {
            return;
        };
        let fewest = blob.fewest();
        for &i in pieces {
            if i >= blob.started.len() {
                continue;
            }
            if delivered {
                blob.sends[i] = blob.sends[i].saturating_add(1);
            } else {
                blob.started[i] = blob.started[i].saturating_sub(1).max(blob.sends[i]);
            }
        }
        if blob.fewest() > fewest {
            blob.extra = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes in a piece: the blobs below are 2 or 4 pieces long.
    const PIECE: u64 = PIECE_CHUNKS * 1024;

    fn piece(i: u64) -> ChunkRanges {
        ChunkRanges::from(ChunkNum(i * PIECE_CHUNKS)..ChunkNum((i + 1) * PIECE_CHUNKS))
    }

    /// Asks, and if served, completes the send at once.
    fn ask(
        s: &mut Seeding,
        h: Hash,
        size: u64,
        p: PeerId,
        r: &ChunkRanges,
        t: Instant,
    ) -> Decision {
        let d = s.decide(h, size, p, r, 16, t);
        if let Decision::Serve(pieces) = &d {
            s.settle(h, pieces, true);
        }
        d
    }

    fn served(d: &Decision) -> bool {
        matches!(d, Decision::Serve(_))
    }

    #[test]
    fn one_downloader_is_served_everything_at_once() {
        let mut s = Seeding::default();
        let (h, p, t) = (blake3::hash(b"a"), PeerId::random(), Instant::now());
        for _ in 0..3 {
            assert!(served(&ask(&mut s, h, 4 * PIECE, p, &piece(0), t)));
        }
    }

    #[test]
    fn a_swarm_gets_each_piece_once_before_any_twice() {
        let mut s = Seeding::default();
        let (h, t) = (blake3::hash(b"a"), Instant::now());
        let (p, q) = (PeerId::random(), PeerId::random());
        assert_eq!(
            ask(&mut s, h, 4 * PIECE, p, &piece(0), t),
            Decision::Serve(vec![0])
        );
        // q asks for the same piece: it is told to ask for the three not yet sent.
        let hint = ask(&mut s, h, 4 * PIECE, q, &piece(0), t);
        assert_eq!(hint, Decision::Hint(piece(1) | piece(2) | piece(3)));
        for i in 1..4 {
            assert!(served(&ask(&mut s, h, 4 * PIECE, q, &piece(i), t)));
        }
        // Every piece has gone once: each may go a second time.
        assert!(served(&ask(&mut s, h, 4 * PIECE, q, &piece(0), t)));
        assert_eq!(
            ask(&mut s, h, 4 * PIECE, p, &piece(0), t),
            Decision::Hint(piece(1) | piece(2) | piece(3))
        );
    }

    #[test]
    fn no_second_send_starts_before_every_first_one_has_arrived() {
        let mut s = Seeding::default();
        let (h, t) = (blake3::hash(b"a"), Instant::now());
        let (p, q) = (PeerId::random(), PeerId::random());
        let Decision::Serve(first) = s.decide(h, 2 * PIECE, p, &piece(0), 16, t) else {
            panic!("the first request is served");
        };
        assert!(served(&ask(&mut s, h, 2 * PIECE, q, &piece(1), t)));
        // Piece 0 is still on its way to p: nothing may go twice yet.
        assert_eq!(
            s.decide(h, 2 * PIECE, q, &piece(1), 16, t),
            Decision::Hint(ChunkRanges::empty())
        );
        // The send of piece 0 fails: it is due again, and nothing else is.
        s.settle(h, &first, false);
        assert_eq!(
            s.decide(h, 2 * PIECE, q, &piece(1), 16, t),
            Decision::Hint(piece(0))
        );
        assert!(served(&ask(&mut s, h, 2 * PIECE, q, &piece(0), t)));
        // Both arrived once: a second round may begin.
        assert!(served(&ask(&mut s, h, 2 * PIECE, p, &piece(1), t)));
    }

    #[test]
    fn the_size_probe_is_always_served() {
        let mut s = Seeding::default();
        let (h, t) = (blake3::hash(b"a"), Instant::now());
        let (p, q) = (PeerId::random(), PeerId::random());
        ask(&mut s, h, 4 * PIECE, p, &piece(0), t);
        ask(&mut s, h, 4 * PIECE, q, &piece(1), t);
        let probe = ChunkRanges::from(ChunkNum(u64::MAX >> 12)..);
        assert_eq!(
            ask(&mut s, h, 4 * PIECE, q, &probe, t),
            Decision::Serve(vec![])
        );
        let tail = ChunkRanges::from(ChunkNum(4 * PIECE_CHUNKS - 16)..);
        assert_eq!(
            ask(&mut s, h, 4 * PIECE, p, &tail, t),
            Decision::Serve(vec![])
        );
    }

    #[test]
    fn a_piece_nobody_else_can_give_is_served_after_a_pause() {
        let mut s = Seeding::default();
        let (h, t) = (blake3::hash(b"a"), Instant::now());
        let (p, q) = (PeerId::random(), PeerId::random());
        ask(&mut s, h, 2 * PIECE, p, &piece(0), t);
        assert_eq!(
            ask(&mut s, h, 2 * PIECE, q, &piece(0), t),
            Decision::Hint(piece(1))
        );
        assert!(served(&ask(&mut s, h, 2 * PIECE, q, &piece(1), t)));
        // Both pieces sent once: piece 0 is due again at once.
        assert!(served(&ask(&mut s, h, 2 * PIECE, q, &piece(0), t)));
        // Now piece 0 went twice, piece 1 once: a third request for 0 is hinted...
        assert!(!served(&ask(&mut s, h, 2 * PIECE, q, &piece(0), t)));
        // ...until nobody asked for a due piece for ESCALATE with nothing on its way.
        let Decision::Serve(sent) = s.decide(h, 2 * PIECE, p, &piece(1), 16, t) else {
            panic!("piece 1 is due");
        };
        assert!(!served(&ask(
            &mut s,
            h,
            2 * PIECE,
            q,
            &piece(0),
            t + ESCALATE
        )));
        // p's send fails: nothing is on its way now, and after ESCALATE without a due
        // request piece 0 may go a third time.
        s.settle(h, &sent, false);
        assert!(served(&ask(
            &mut s,
            h,
            2 * PIECE,
            q,
            &piece(0),
            t + ESCALATE
        )));
    }

    #[test]
    fn a_seeder_with_sends_under_way_helps_once_nobody_wants_a_due_piece_for_a_while() {
        let mut s = Seeding::default();
        let (h, t) = (blake3::hash(b"a"), Instant::now());
        let (p, q) = (PeerId::random(), PeerId::random());
        // Piece 0 reached p; piece 1 went out too and is still crawling to p on a slow link.
        assert!(served(&ask(&mut s, h, 2 * PIECE, p, &piece(0), t)));
        let Decision::Serve(crawling) = s.decide(h, 2 * PIECE, p, &piece(1), 16, t) else {
            panic!("piece 1 is due");
        };
        // q wants piece 0 and nobody asks for a due piece: hinted while the send is young...
        let soon = t + ESCALATE;
        assert!(!served(&ask(&mut s, h, 2 * PIECE, q, &piece(0), soon)));
        // ...served once nobody asked for one for ESCALATE_BUSY, though p's send goes on.
        let later = t + ESCALATE_BUSY;
        assert!(served(&ask(&mut s, h, 2 * PIECE, q, &piece(0), later)));
        s.settle(h, &crawling, true);
    }

    #[test]
    fn state_is_bounded() {
        let mut s = Seeding::default();
        let t = Instant::now();
        for i in 0..(MAX_BLOBS as u32 + 10) {
            let h = blake3::hash(&i.to_le_bytes());
            ask(&mut s, h, 2 * PIECE, PeerId::random(), &piece(0), t);
        }
        assert_eq!(s.blobs.len(), MAX_BLOBS);
        let h = blake3::hash(b"many");
        for _ in 0..(MAX_PEERS + 10) {
            ask(&mut s, h, 2 * PIECE, PeerId::random(), &piece(0), t);
        }
        assert!(s.blobs[&h].peers.len() <= MAX_PEERS);
    }
}
