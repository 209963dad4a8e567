//! Room history: the recent posts of one room, deduplicated and verified, served to joiners.
//!
//! Posts arrive from gossipsub and from history responses, in any order and any number of
//! times. The history keeps the newest `max_messages` posts of the last `max_age`, ordered by
//! (sent_at, author, seq). Authors' clocks are trusted only within `max_clock_skew` of ours:
//! a post dated further in the future would otherwise sort last and never age out.

use crate::crypto::VerifyError;
use crate::wire::{
    HistoryRequest, HistoryResponse, MAX_BATCH_BYTES, MAX_HISTORY_MESSAGES, RoomId, RoomMessage,
    Timestamp,
};
use libp2p_identity::PeerId;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// Limits of a [`RoomHistory`].
#[derive(Debug, Clone)]
pub struct Config {
    max_messages: usize,
    max_age: Duration,
    max_clock_skew: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_messages: 500,
            max_age: Duration::from_secs(24 * 3600),
            max_clock_skew: Duration::from_secs(300),
        }
    }
}

impl Config {
    /// Keep at most the newest `n` posts (N).
    pub fn with_max_messages(mut self, n: usize) -> Self {
        self.max_messages = n;
        self
    }

    /// Keep posts for `d` after they were sent (T).
    pub fn with_max_age(mut self, d: Duration) -> Self {
        self.max_age = d;
        self
    }

    pub fn with_max_clock_skew(mut self, d: Duration) -> Self {
        self.max_clock_skew = d;
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A post we did not have: show it.
    New,
    /// Already held: do not show it again.
    Duplicate,
}

/// Why a post was not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("post is for room {got}, not {expected}")]
    WrongRoom { expected: RoomId, got: RoomId },
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    #[error("post sent at {sent_at:?} is older than the history kept")]
    Stale { sent_at: Timestamp },
    #[error("post is dated {sent_at:?}, in the future; the author's clock is wrong")]
    FromFuture { sent_at: Timestamp },
}

/// The outcome of merging a history response, post by post.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Posts we did not have, oldest first.
    pub added: Vec<RoomMessage>,
    pub duplicates: usize,
    /// Forged, wrong-room, stale or future posts. A responder that sends forged posts is
    /// misbehaving; the service may stop asking it.
    pub rejected: usize,
    pub forged: usize,
}

type Key = (Timestamp, PeerId, u64);

/// Recent posts of one room.
#[derive(Debug)]
pub struct RoomHistory {
    room: RoomId,
    config: Config,
    messages: BTreeMap<Key, RoomMessage>,
    ids: HashSet<(PeerId, u64)>,
    /// The newest key ever evicted to make room: anything at or below it is stale, so a post
    /// evicted for space is not re-added (and re-shown) when a peer sends it again.
    floor: Option<Key>,
}

impl RoomHistory {
    pub fn new(room: RoomId, config: Config) -> Self {
        Self {
            room,
            config,
            messages: BTreeMap::new(),
            ids: HashSet::new(),
            floor: None,
        }
    }

    pub fn room(&self) -> &RoomId {
        &self.room
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Posts oldest first.
    pub fn messages(&self) -> impl DoubleEndedIterator<Item = &RoomMessage> {
        self.messages.values()
    }

    /// The highest seq held from `author`: where a restarted node resumes its own numbering.
    pub fn last_seq(&self, author: &PeerId) -> Option<u64> {
        self.ids
            .iter()
            .filter(|(p, _)| p == author)
            .map(|(_, s)| *s)
            .max()
    }

    pub fn insert(&mut self, msg: RoomMessage, now: Timestamp) -> Result<Inserted, RoomError> {
        if msg.room != self.room {
            return Err(RoomError::WrongRoom {
                expected: self.room.clone(),
                got: msg.room,
            });
        }
        msg.verify()?;
        if self.ids.contains(&(msg.from, msg.seq)) {
            // The first copy wins: a second post under the same (author, seq) is either a copy
            // or the author equivocating, and is dropped either way.
            return Ok(Inserted::Duplicate);
        }
        if msg.sent_at > now.saturating_add(self.config.max_clock_skew) {
            return Err(RoomError::FromFuture {
                sent_at: msg.sent_at,
            });
        }
        let key = (msg.sent_at, msg.from, msg.seq);
        let full_and_older = self.messages.len() >= self.config.max_messages
            && self.messages.keys().next().is_none_or(|k| key < *k);
        if msg.sent_at < self.cutoff(now) || self.floor.is_some_and(|f| key <= f) || full_and_older
        {
            return Err(RoomError::Stale {
                sent_at: msg.sent_at,
            });
        }
        self.ids.insert((msg.from, msg.seq));
        self.messages.insert(key, msg);
        while self.messages.len() > self.config.max_messages {
            let (k, _) = self.messages.pop_first().expect("len > max >= 0");
            self.ids.remove(&(k.1, k.2));
            self.floor = Some(self.floor.map_or(k, |f| f.max(k)));
        }
        Ok(Inserted::New)
    }

    /// Drops posts older than `max_age`; returns how many.
    pub fn expire(&mut self, now: Timestamp) -> usize {
        let cutoff = self.cutoff(now);
        let before = self.messages.len();
        while let Some(entry) = self.messages.first_entry() {
            if entry.key().0 >= cutoff {
                break;
            }
            let (_, from, seq) = *entry.key();
            entry.remove();
            self.ids.remove(&(from, seq));
        }
        before - self.messages.len()
    }

    /// When the oldest post ages out.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.messages
            .keys()
            .next()
            .map(|k| k.0.saturating_add(self.config.max_age))
    }

    /// What a joiner sends to members: everything we would keep.
    pub fn request(&self, now: Timestamp) -> HistoryRequest {
        let limit = self.config.max_messages.min(MAX_HISTORY_MESSAGES);
        HistoryRequest {
            room: self.room.clone(),
            since: self.cutoff(now),
            limit: u16::try_from(limit).unwrap_or(u16::MAX),
        }
    }

    /// Answers a joiner: the newest posts since `req.since`, at most `req.limit` and
    /// [`MAX_HISTORY_MESSAGES`], within [`MAX_BATCH_BYTES`], oldest first.
    pub fn answer(&self, req: &HistoryRequest, now: Timestamp) -> HistoryResponse {
        let mut messages = Vec::new();
        if req.room == self.room {
            let since = req.since.max(self.cutoff(now));
            let limit = usize::from(req.limit).min(MAX_HISTORY_MESSAGES);
            let mut bytes = 0;
            for m in self
                .messages
                .values()
                .rev()
                .take_while(|m| m.sent_at >= since)
                .take(limit)
            {
                // An upper bound of the encoded size: body plus at most ~200 bytes of header.
                bytes += m.body.len() + 256;
                if bytes > MAX_BATCH_BYTES {
                    break;
                }
                messages.push(m.clone());
            }
            messages.reverse();
        }
        HistoryResponse {
            room: req.room.clone(),
            messages,
        }
    }

    /// Merges a member's answer, verifying each post on its own: one forged post costs only
    /// itself, and a responder can withhold posts but not alter them.
    pub fn merge(&mut self, resp: HistoryResponse, now: Timestamp) -> MergeReport {
        let mut report = MergeReport::default();
        for m in resp.messages {
            match self.insert(m.clone(), now) {
                Ok(Inserted::New) => report.added.push(m),
                Ok(Inserted::Duplicate) => report.duplicates += 1,
                Err(RoomError::Invalid(_)) => {
                    report.forged += 1;
                    report.rejected += 1;
                }
                Err(_) => report.rejected += 1,
            }
        }
        report.added.sort_by_key(|m| (m.sent_at, m.from, m.seq));
        report
    }

    fn cutoff(&self, now: Timestamp) -> Timestamp {
        now.saturating_sub(self.config.max_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Identity;
    use proptest::prelude::*;

    const T0: Timestamp = Timestamp(1_700_000_000_000);
    const MIN: Duration = Duration::from_secs(60);

    fn lobby() -> RoomId {
        RoomId::new("lobby").unwrap()
    }
    fn post(who: u8, seq: u64, at: Timestamp) -> RoomMessage {
        RoomMessage::new(
            &Identity::from_seed([who; 32]),
            lobby(),
            seq,
            at,
            format!("{who}/{seq}"),
        )
        .unwrap()
    }
    fn bodies(h: &RoomHistory) -> Vec<&str> {
        h.messages().map(|m| m.body.as_str()).collect()
    }

    #[test]
    fn dedupes_and_orders_by_time() {
        let mut h = RoomHistory::new(lobby(), Config::default());
        assert_eq!(
            h.insert(post(1, 0, T0.saturating_add(MIN)), T0),
            Ok(Inserted::New)
        );
        assert_eq!(h.insert(post(2, 0, T0), T0), Ok(Inserted::New));
        assert_eq!(
            h.insert(post(1, 0, T0.saturating_add(MIN)), T0),
            Ok(Inserted::Duplicate)
        );
        assert_eq!(bodies(&h), ["2/0", "1/0"]);
        assert_eq!(h.last_seq(&Identity::from_seed([1; 32]).peer_id()), Some(0));
    }

    #[test]
    fn forged_wrong_room_and_future_posts_are_rejected() {
        let mut h = RoomHistory::new(lobby(), Config::default());
        let mut forged = post(1, 0, T0);
        forged.from = Identity::from_seed([2; 32]).peer_id();
        assert!(matches!(h.insert(forged, T0), Err(RoomError::Invalid(_))));
        let other = RoomMessage::new(
            &Identity::from_seed([1; 32]),
            RoomId::new("other").unwrap(),
            0,
            T0,
            "x".into(),
        )
        .unwrap();
        assert!(matches!(
            h.insert(other, T0),
            Err(RoomError::WrongRoom { .. })
        ));
        let future = post(1, 1, T0.saturating_add(Duration::from_secs(3600)));
        assert!(matches!(
            h.insert(future, T0),
            Err(RoomError::FromFuture { .. })
        ));
        assert!(h.is_empty());
    }

    #[test]
    fn keeps_the_last_n_messages() {
        let mut h = RoomHistory::new(lobby(), Config::default().with_max_messages(3));
        for s in 0..5 {
            h.insert(
                post(1, s, T0.saturating_add(MIN * s as u32)),
                T0.saturating_add(MIN * 5),
            )
            .unwrap();
        }
        assert_eq!(bodies(&h), ["1/2", "1/3", "1/4"]);
        // An evicted post sent again is not re-added.
        assert!(matches!(
            h.insert(post(1, 1, T0.saturating_add(MIN)), T0),
            Err(RoomError::Stale { .. })
        ));
    }

    #[test]
    fn keeps_the_last_t_hours() {
        let mut h = RoomHistory::new(
            lobby(),
            Config::default().with_max_age(Duration::from_secs(3600)),
        );
        h.insert(post(1, 0, T0), T0).unwrap();
        h.insert(
            post(1, 1, T0.saturating_add(MIN * 30)),
            T0.saturating_add(MIN * 30),
        )
        .unwrap();
        assert_eq!(h.poll_timeout(), Some(T0.saturating_add(MIN * 60)));
        assert_eq!(h.expire(T0.saturating_add(MIN * 61)), 1);
        assert_eq!(bodies(&h), ["1/1"]);
        assert!(matches!(
            h.insert(post(2, 0, T0), T0.saturating_add(MIN * 61)),
            Err(RoomError::Stale { .. })
        ));
    }

    #[test]
    fn joiner_fetches_and_verifies_history() {
        let now = T0.saturating_add(MIN * 100);
        let mut member = RoomHistory::new(lobby(), Config::default());
        for s in 0..10 {
            member
                .insert(
                    post((s % 3) as u8, s, T0.saturating_add(MIN * s as u32)),
                    now,
                )
                .unwrap();
        }
        let mut joiner = RoomHistory::new(lobby(), Config::default());
        joiner
            .insert(post(1, 1, T0.saturating_add(MIN)), now)
            .unwrap();
        let mut req = joiner.request(now);
        req.limit = 6;
        let mut resp = through_wire(member.answer(&req, now));
        assert_eq!(resp.messages.len(), 6);
        assert_eq!(resp.messages[0].body, "1/4", "the newest six, oldest first");
        // A malicious member slips in a forged post and an altered one.
        let mut forged = post(5, 0, now);
        forged.from = Identity::from_seed([0; 32]).peer_id();
        resp.messages.push(forged);
        resp.messages[1].body.push('!');
        let report = joiner.merge(resp, now);
        assert_eq!(
            (report.added.len(), report.forged, report.rejected),
            (5, 2, 2)
        );
        assert_eq!(joiner.len(), 6);
        assert!(joiner.messages().all(|m| m.verify().is_ok()));
    }

    #[test]
    fn answer_for_another_room_is_empty() {
        let h = RoomHistory::new(lobby(), Config::default());
        let req = HistoryRequest {
            room: RoomId::new("x").unwrap(),
            since: T0,
            limit: 10,
        };
        assert!(h.answer(&req, T0).messages.is_empty());
    }

    /// Through the wire and back, as a joiner would receive it.
    fn through_wire(resp: HistoryResponse) -> HistoryResponse {
        use crate::wire::Frame;
        HistoryResponse::decode(&resp.encode().unwrap()).unwrap()
    }

    proptest! {
        /// Whatever arrives, the history stays within N, sorted, without duplicates, and every
        /// post in it verifies.
        #[test]
        fn history_invariants(posts in proptest::collection::vec((0u8..4, 0u64..8, 0u32..300), 0..60), max in 1usize..10) {
            let mut h = RoomHistory::new(lobby(), Config::default().with_max_messages(max).with_max_age(MIN * 120));
            let mut now = T0;
            for (who, seq, at) in posts {
                now = now.max(T0.saturating_add(MIN * at / 2));
                let _ = h.insert(post(who, seq, T0.saturating_add(MIN * at)), now);
                h.expire(now);
                prop_assert!(h.len() <= max);
                let keys: Vec<_> = h.messages().map(|m| (m.sent_at, m.from, m.seq)).collect();
                prop_assert!(keys.windows(2).all(|w| w[0] < w[1]));
                let ids: HashSet<_> = h.messages().map(|m| (m.from, m.seq)).collect();
                prop_assert_eq!(ids.len(), h.len());
                prop_assert_eq!(&ids, &h.ids);
            }
        }
    }
}
