//! The piece picker of a download: which pieces (ranges of chunk groups) to ask which
//! provider for. Pure: no I/O, no clock; the download drives it under a lock.
//!
//! Rules, as in BitTorrent: a complete provider is first asked for the pieces no partial
//! provider has (rarest first); a partial provider only for pieces inside what it has; once
//! every piece is in flight (the end game), an idle provider duplicates the piece in flight
//! longest at one other provider only, never one it is already fetching itself; before the
//! end game, an idle provider may take over a *straggler*, a piece in flight elsewhere for
//! longer than the caller's threshold (a slow provider's piece, which would otherwise hold
//! up the end); a piece that failed everywhere is pending again; a piece done is never
//! handed out again.

use std::time::{Duration, Instant};

use bao_tree::ChunkRanges;
use libp2p::PeerId;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PieceState {
    Pending,
    InFlight,
    Done,
}

/// The pieces of one download and who is fetching each.
pub struct Picker {
    pieces: Vec<(ChunkRanges, PieceState)>,
    /// For each piece, the providers it is being fetched from, and since when.
    asked: Vec<Vec<(PeerId, Instant)>>,
    /// No piece before this one is pending.
    cursor: usize,
    /// Everything the partial providers said they have: what complete providers should
    /// not be asked for first (rarest first, as in BitTorrent).
    pub others_have: ChunkRanges,
}

impl Picker {
    pub fn new(ranges: Vec<ChunkRanges>) -> Self {
        Picker {
            asked: vec![Vec::new(); ranges.len()],
            pieces: ranges
                .into_iter()
                .map(|r| (r, PieceState::Pending))
                .collect(),
            cursor: 0,
            others_have: ChunkRanges::empty(),
        }
    }

    /// Up to `n` pending pieces for `peer`; with none, one piece in flight at another provider
    /// instead: in the end game the one in flight longest, before it one in flight for at
    /// least `stragglers_after` (none when `None`). A second request to the same provider
    /// would only race the first, so a piece is never duplicated there. Only pieces inside
    /// `within` (what a partial provider has), when given.
    pub fn take(
        &mut self,
        n: usize,
        within: Option<&ChunkRanges>,
        peer: PeerId,
        now: Instant,
        stragglers_after: Option<Duration>,
    ) -> Option<(Vec<usize>, ChunkRanges)> {
        while self
            .pieces
            .get(self.cursor)
            .is_some_and(|(_, s)| *s != PieceState::Pending)
        {
            self.cursor += 1;
        }
        let fits = |r: &ChunkRanges| within.is_none_or(|w| (r.clone() - w.clone()).is_empty());
        let pending = |i: &usize| {
            let (r, s) = &self.pieces[*i];
            *s == PieceState::Pending && fits(r)
        };
        // A complete provider first gets pieces no partial provider has.
        let rare = |i: &usize| {
            within.is_some() || !(self.pieces[*i].0.clone() - self.others_have.clone()).is_empty()
        };
        let mut idx: Vec<usize> = (self.cursor..self.pieces.len())
            .filter(|i| pending(i) && rare(i))
            .take(n)
            .collect();
        if idx.is_empty() {
            idx = (self.cursor..self.pieces.len())
                .filter(pending)
                .take(n)
                .collect();
        }
        // Duplicates: in the end game (nothing pending anywhere; a partial provider that has
        // none of the pending pieces waits instead of duplicating: that was a quarter of a
        // swarm's bytes) any piece in flight, else only stragglers; the one in flight longest
        // first, and a piece is duplicated once at most.
        let end_game = self.cursor == self.pieces.len();
        let threshold = if end_game {
            Some(Duration::ZERO)
        } else {
            stragglers_after
        };
        if let (true, Some(threshold)) = (idx.is_empty(), threshold) {
            idx = (0..self.pieces.len())
                .filter_map(|i| {
                    let (r, s) = &self.pieces[i];
                    let asked = &self.asked[i];
                    let since = asked.iter().map(|(_, t)| *t).min()?;
                    (*s == PieceState::InFlight
                        && fits(r)
                        && asked.len() < 2
                        && !asked.iter().any(|(p, _)| *p == peer)
                        && now.saturating_duration_since(since) >= threshold)
                        .then_some((since, i))
                })
                .min()
                .map(|(_, i)| i)
                .into_iter()
                .collect();
        }
        if idx.is_empty() {
            return None;
        }
        let mut ranges = ChunkRanges::empty();
        for &i in &idx {
            self.pieces[i].1 = PieceState::InFlight;
            self.asked[i].push((peer, now));
            ranges |= self.pieces[i].0.clone();
        }
        Some((idx, ranges))
    }

    pub fn finish(&mut self, idx: &[usize], ok: bool, peer: PeerId) {
        for &i in idx {
            self.asked[i].retain(|(p, _)| *p != peer);
            let state = &mut self.pieces[i].1;
            if ok {
                *state = PieceState::Done;
            } else if *state == PieceState::InFlight && self.asked[i].is_empty() {
                *state = PieceState::Pending;
                self.cursor = self.cursor.min(i);
            }
        }
    }

    /// Whether every one of these pieces is done (a request still fetching them, a
    /// duplicate that lost the race, can stop).
    pub fn all_done(&self, idx: &[usize]) -> bool {
        idx.iter().all(|&i| self.pieces[i].1 == PieceState::Done)
    }

    pub fn complete(&self) -> bool {
        self.pieces.iter().all(|(_, s)| *s == PieceState::Done)
    }
}

#[cfg(test)]
mod tests {
    use bao_tree::ChunkNum;
    use proptest::prelude::*;

    use super::*;

    fn now() -> Instant {
        Instant::now()
    }

    fn pieces(bounds: &[(u64, u64)]) -> Vec<ChunkRanges> {
        bounds
            .iter()
            .map(|&(a, b)| ChunkRanges::from(ChunkNum(a)..ChunkNum(b)))
            .collect()
    }

    #[test]
    fn work_queue_hands_out_pending_then_end_game() {
        let (p, q) = (PeerId::random(), PeerId::random());
        let mut w = Picker::new(pieces(&[(0, 16), (16, 32), (32, 48)]));
        let (a, _) = w.take(2, None, p, now(), None).unwrap();
        assert_eq!(a, vec![0, 1]);
        let (b, _) = w.take(2, None, p, now(), None).unwrap();
        assert_eq!(b, vec![2]);
        // End game: everything is in flight, so an idle worker of another provider duplicates
        // a piece; one of the same provider has nothing to do.
        assert!(w.take(2, None, p, now(), None).is_none());
        let (c, _) = w.take(2, None, q, now(), None).unwrap();
        assert_eq!(c, vec![0]);
        w.finish(&a, true, p);
        w.finish(&b, false, p);
        assert!(!w.complete());
        let (d, _) = w.take(2, None, q, now(), None).unwrap();
        assert_eq!(d, vec![2], "a failed piece is pending again");
        w.finish(&d, true, q);
        w.finish(&c, false, q); // a duplicate failing does not undo the piece done elsewhere
        assert!(w.complete());
        assert!(w.take(1, None, p, now(), None).is_none());
    }

    #[test]
    fn a_piece_failing_at_one_provider_stays_in_flight_at_another() {
        let (p, q) = (PeerId::random(), PeerId::random());
        let mut w = Picker::new(pieces(&[(0, 16)]));
        let (a, _) = w.take(1, None, p, now(), None).unwrap();
        let (b, _) = w.take(1, None, q, now(), None).unwrap();
        w.finish(&a, false, p);
        assert!(
            w.take(1, None, q, now(), None).is_none(),
            "still in flight from q: not handed out again"
        );
        let (c, _) = w.take(1, None, p, now(), None).unwrap();
        assert_eq!(c, vec![0], "p may duplicate q's request again");
        w.finish(&b, true, q);
        w.finish(&c, false, p);
        assert!(w.complete());
    }

    #[test]
    fn a_partial_provider_duplicates_nothing_while_pieces_are_pending() {
        let (p, q, r) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut w = Picker::new(pieces(&[(0, 16), (16, 32)]));
        let (a, _) = w.take(1, None, p, now(), None).unwrap();
        assert_eq!(a, vec![0]);
        // q has only piece 0, which is in flight at p; piece 1 is still pending.
        let has = ChunkRanges::from(ChunkNum(0)..ChunkNum(16));
        assert!(
            w.take(1, Some(&has), q, now(), None).is_none(),
            "no duplicate before the end game"
        );
        let (b, _) = w.take(1, None, r, now(), None).unwrap();
        assert_eq!(b, vec![1]);
        // Now everything is in flight: q may duplicate piece 0, and then nobody else may.
        let (c, _) = w.take(1, Some(&has), q, now(), None).unwrap();
        assert_eq!(c, vec![0]);
        // Piece 0 is now at two providers and r fetches piece 1 itself: nothing for r; p
        // may still duplicate piece 1.
        assert!(w.take(1, None, r, now(), None).is_none());
        assert_eq!(w.take(1, None, p, now(), None).unwrap().0, vec![1]);
    }

    #[test]
    fn complete_providers_get_the_rarest_pieces_first() {
        let p = PeerId::random();
        let mut w = Picker::new(pieces(&[(0, 16), (16, 32), (32, 48)]));
        w.others_have = ChunkRanges::from(ChunkNum(0)..ChunkNum(32));
        let (a, _) = w.take(1, None, p, now(), None).unwrap();
        assert_eq!(a, vec![2], "the piece nobody else has");
        let within = ChunkRanges::from(ChunkNum(0)..ChunkNum(16));
        let (b, _) = w.take(2, Some(&within), p, now(), None).unwrap();
        assert_eq!(b, vec![0], "a partial provider only for what it has");
        let (c, _) = w.take(1, None, p, now(), None).unwrap();
        assert_eq!(c, vec![1], "then common pieces");
    }

    #[test]
    fn an_idle_provider_takes_over_a_straggler_once_it_is_late() {
        let (p, q, r) = (PeerId::random(), PeerId::random(), PeerId::random());
        let t = now();
        let mut w = Picker::new(pieces(&[(0, 16), (16, 32)]));
        let (a, _) = w.take(1, None, p, t, None).unwrap();
        assert_eq!(a, vec![0]);
        // q has only piece 0; piece 1 is still pending, so this is no end game.
        let has = ChunkRanges::from(ChunkNum(0)..ChunkNum(16));
        let late = Some(Duration::from_secs(5));
        let soon = t + Duration::from_secs(1);
        assert!(
            w.take(1, Some(&has), q, soon, late).is_none(),
            "not late yet"
        );
        let later = t + Duration::from_secs(6);
        let (b, _) = w.take(1, Some(&has), q, later, late).unwrap();
        assert_eq!(b, vec![0], "in flight at p for 6 s: q takes it over");
        assert!(
            w.take(1, Some(&has), r, later, late).is_none(),
            "a piece is duplicated once at most"
        );
        assert!(!w.all_done(&a));
        w.finish(&b, true, q);
        assert!(w.all_done(&a), "p's request can stop: its piece is done");
        w.finish(&a, false, p);
        assert!(w.all_done(&[0]), "p giving up does not undo q's piece");
    }

    proptest! {
        /// Any interleaving of takes and finishes by a few providers keeps the picker's
        /// promises: a piece is never handed twice to the same provider at once, a piece done
        /// is never handed out again, and once every piece has succeeded the download is
        /// complete and nothing more is handed out.
        #[test]
        fn any_schedule_keeps_the_picker_consistent(
            n in 1usize..12,
            ops in prop::collection::vec(
                (0usize..3, 1usize..4, any::<bool>(), any::<bool>(), any::<bool>()),
                1..200,
            ),
        ) {
            let peers = [PeerId::random(), PeerId::random(), PeerId::random()];
            let bounds: Vec<(u64, u64)> = (0..n as u64).map(|i| (i * 16, i * 16 + 16)).collect();
            let mut w = Picker::new(pieces(&bounds));
            // What each provider holds in flight, as handed out.
            let mut inflight: Vec<Vec<Vec<usize>>> = vec![Vec::new(); 3];
            let mut done = vec![false; n];
            for (p, k, finish, ok, steal) in ops {
                let stragglers = steal.then_some(Duration::ZERO);
                if finish && !inflight[p].is_empty() {
                    let idx = inflight[p].remove(0);
                    w.finish(&idx, ok, peers[p]);
                    if ok {
                        for i in idx { done[i] = true; }
                    }
                } else if let Some((idx, _)) = w.take(k, None, peers[p], now(), stragglers) {
                    prop_assert!(idx.len() <= k);
                    for i in &idx {
                        prop_assert!(!done[*i], "piece {} was done and handed out again", i);
                        prop_assert!(
                            !inflight[p].iter().flatten().any(|j| j == i),
                            "piece {} handed twice to the same provider", i
                        );
                    }
                    inflight[p].push(idx);
                }
            }
            // Finish everything in flight successfully, then the rest piece by piece.
            for (p, batches) in inflight.iter_mut().enumerate() {
                for idx in batches.drain(..) {
                    w.finish(&idx, true, peers[p]);
                    for i in idx { done[i] = true; }
                }
            }
            while let Some((idx, _)) = w.take(1, None, peers[0], now(), None) {
                w.finish(&idx, true, peers[0]);
                for i in idx { done[i] = true; }
            }
            prop_assert!(done.iter().all(|d| *d));
            prop_assert!(w.complete());
            prop_assert!(w.take(1, None, peers[1], now(), None).is_none());
        }
    }
}
