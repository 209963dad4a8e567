//! The holder's side: what a node keeps for spaces it is not a member of, as the index of a
//! store whose bytes live elsewhere (the node's database). Pure bookkeeping: quotas, expiry,
//! deduplication and paging; every limit is checked before anything is stored, and nothing a
//! peer sends can evict what another peer stored.

use std::collections::{BTreeMap, HashMap, HashSet};

use libp2p_identity::PeerId;

/// A holder's limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes held at most, all spaces together.
    pub total_bytes: u64,
    /// Bytes held at most for one space (tag).
    pub tag_bytes: u64,
    /// Bytes one sender may have held for one space.
    pub sender_tag_bytes: u64,
    /// Bytes one sender may have held, all spaces together.
    pub sender_bytes: u64,
    /// Envelopes held at most for one space.
    pub tag_envelopes: usize,
    /// Spaces held at most.
    pub tags: usize,
    /// How long an envelope is kept, in milliseconds.
    pub ttl_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            total_bytes: 512 * 1024 * 1024,
            tag_bytes: 64 * 1024 * 1024,
            sender_tag_bytes: 32 * 1024 * 1024,
            sender_bytes: 64 * 1024 * 1024,
            tag_envelopes: 65_536,
            tags: 4096,
            ttl_ms: 30 * 24 * 3600 * 1000,
        }
    }
}

/// Why an envelope was not stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    #[error("this holder is full ({0}); try other holders")]
    Full(&'static str),
}

/// One held envelope's bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: [u8; 32],
    pub size: u64,
    pub sender: PeerId,
    pub at_ms: u64,
}

#[derive(Debug, Default)]
struct Tag {
    bytes: u64,
    next_seq: u64,
    entries: BTreeMap<u64, Entry>,
    ids: HashSet<[u8; 32]>,
    by_sender: HashMap<PeerId, u64>,
}

/// What [`Holder::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Store it under this sequence number.
    New(u64),
    /// Already held (same id): nothing to store.
    Known,
}

/// The index of everything held.
#[derive(Debug, Default)]
pub struct Holder {
    limits: Limits,
    tags: HashMap<[u8; 32], Tag>,
    total: u64,
    by_sender: HashMap<PeerId, u64>,
}

impl Holder {
    pub fn new(limits: Limits) -> Self {
        Holder {
            limits,
            ..Holder::default()
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    pub fn envelopes(&self) -> usize {
        self.tags.values().map(|t| t.entries.len()).sum()
    }

    /// Checks every quota, then records the envelope. Nothing changes on a refusal.
    pub fn admit(&mut self, tag: [u8; 32], entry: Entry) -> Result<Admitted, HoldError> {
        if let Some(t) = self.tags.get(&tag)
            && t.ids.contains(&entry.id)
        {
            return Ok(Admitted::Known);
        }
        let l = &self.limits;
        if self.total + entry.size > l.total_bytes {
            return Err(HoldError::Full("all spaces"));
        }
        if self.by_sender.get(&entry.sender).copied().unwrap_or(0) + entry.size > l.sender_bytes {
            return Err(HoldError::Full("this sender"));
        }
        match self.tags.get(&tag) {
            None if self.tags.len() >= l.tags => return Err(HoldError::Full("number of spaces")),
            Some(t) if t.bytes + entry.size > l.tag_bytes => {
                return Err(HoldError::Full("this space"));
            }
            Some(t) if t.entries.len() >= l.tag_envelopes => {
                return Err(HoldError::Full("envelopes of this space"));
            }
            Some(t)
                if t.by_sender.get(&entry.sender).copied().unwrap_or(0) + entry.size
                    > l.sender_tag_bytes =>
            {
                return Err(HoldError::Full("this sender in this space"));
            }
            _ => {}
        }
        Ok(Admitted::New(self.insert(tag, None, entry)))
    }

    /// Records an envelope already stored (at load), under its stored sequence number.
    pub fn restore(&mut self, tag: [u8; 32], seq: u64, entry: Entry) {
        self.insert(tag, Some(seq), entry);
    }

    fn insert(&mut self, tag: [u8; 32], seq: Option<u64>, entry: Entry) -> u64 {
        let t = self.tags.entry(tag).or_default();
        let seq = seq.unwrap_or(t.next_seq);
        t.next_seq = t.next_seq.max(seq + 1);
        t.bytes += entry.size;
        *t.by_sender.entry(entry.sender).or_default() += entry.size;
        t.ids.insert(entry.id);
        *self.by_sender.entry(entry.sender).or_default() += entry.size;
        self.total += entry.size;
        t.entries.insert(seq, entry);
        seq
    }

    /// Drops what is older than the time to live; returns (tag, seq) of each, to delete.
    pub fn expire(&mut self, now_ms: u64) -> Vec<([u8; 32], u64)> {
        let ttl = self.limits.ttl_ms;
        let mut gone = Vec::new();
        for (tag, t) in self.tags.iter_mut() {
            let old: Vec<u64> = t
                .entries
                .iter()
                .filter(|(_, e)| e.at_ms + ttl <= now_ms)
                .map(|(s, _)| *s)
                .collect();
            for seq in old {
                let e = t.entries.remove(&seq).expect("listed above");
                t.bytes -= e.size;
                t.ids.remove(&e.id);
                if let Some(b) = t.by_sender.get_mut(&e.sender) {
                    *b -= e.size;
                }
                if let Some(b) = self.by_sender.get_mut(&e.sender) {
                    *b -= e.size;
                }
                self.total -= e.size;
                gone.push((*tag, seq));
            }
        }
        self.tags.retain(|_, t| !t.entries.is_empty());
        self.by_sender.retain(|_, b| *b > 0);
        gone
    }

    /// Sequence numbers after `since` for `tag`, oldest first, up to `max_bytes` (at least one
    /// when any), and whether more remain.
    pub fn page(&self, tag: &[u8; 32], since: Option<u64>, max_bytes: u64) -> (Vec<u64>, bool) {
        let Some(t) = self.tags.get(tag) else {
            return (Vec::new(), false);
        };
        let start = since.map(|s| s + 1).unwrap_or(0);
        let mut out = Vec::new();
        let mut bytes = 0;
        for (seq, e) in t.entries.range(start..) {
            if !out.is_empty() && bytes + e.size > max_bytes {
                return (out, true);
            }
            bytes += e.size;
            out.push(*seq);
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u8, size: u64, sender: PeerId, at_ms: u64) -> Entry {
        Entry {
            id: [id; 32],
            size,
            sender,
            at_ms,
        }
    }

    #[test]
    fn quotas_refuse_without_evicting_and_expiry_frees() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut h = Holder::new(Limits {
            total_bytes: 100,
            tag_bytes: 60,
            sender_tag_bytes: 40,
            sender_bytes: 50,
            tag_envelopes: 10,
            tags: 2,
            ttl_ms: 1000,
        });
        let t1 = [1; 32];
        assert_eq!(h.admit(t1, entry(1, 30, a, 0)), Ok(Admitted::New(0)));
        assert_eq!(h.admit(t1, entry(1, 30, a, 0)), Ok(Admitted::Known));
        assert_eq!(
            h.admit(t1, entry(2, 20, a, 0)),
            Err(HoldError::Full("this sender in this space"))
        );
        assert_eq!(h.admit(t1, entry(3, 30, b, 10)), Ok(Admitted::New(1)));
        assert_eq!(
            h.admit(t1, entry(4, 5, b, 10)),
            Err(HoldError::Full("this space"))
        );
        assert_eq!(
            h.admit([2; 32], entry(5, 30, a, 10)),
            Err(HoldError::Full("this sender"))
        );
        assert_eq!(h.admit([3; 32], entry(6, 10, b, 10)), Ok(Admitted::New(0)));
        assert_eq!(
            h.admit([4; 32], entry(7, 1, b, 10)),
            Err(HoldError::Full("number of spaces"))
        );
        assert_eq!(h.total_bytes(), 70);
        assert_eq!(h.page(&t1, None, 1000), (vec![0, 1], false));
        assert_eq!(h.page(&t1, Some(0), 1000), (vec![1], false));
        assert_eq!(h.page(&t1, None, 10), (vec![0], true));
        assert_eq!(h.expire(1005), vec![(t1, 0)]);
        assert_eq!(h.total_bytes(), 40);
        assert_eq!(h.admit(t1, entry(2, 20, a, 2000)), Ok(Admitted::New(2)));
    }
}
