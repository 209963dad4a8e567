//! Syncing one document between two members: each side learns what the other lacks and sends
//! only that, with every change signed and checked on arrival.
//!
//! Automerge's own sync protocol cannot carry our signatures (its messages hold bare change
//! chunks, in its v2 format a whole compressed document), so this is the same idea on our
//! envelopes: a message carries the sender's heads, optionally a Bloom filter of the sender's
//! changes (automerge's [`BloomFilter`], ~10 bits per change, 1% false positives), the hashes
//! it needs, and changes. On receiving one, a side applies the changes, then sends
//! - the changes after the other's heads, when it knows them all (the common case: one side is
//!   ahead; the cost is the heads and the missing changes, nothing else);
//! - otherwise, when the other sent a Bloom filter, the changes the filter does not hold plus
//!   everything depending on them (a false positive is repaired by a `need` in the next round);
//! - otherwise, its own Bloom filter, so that the other can do the above.
//!
//! A side that remembers the heads the other had at the end of their last sync starts with the
//! changes after them ([`Session::start`]): a local edit then reaches a connected member in one
//! round trip of exactly that edit.

use std::collections::HashSet;

use automerge::ChangeHash;
use automerge::sync::BloomFilter;
use serde::{Deserialize, Serialize};

use super::doc::{Document, MAX_CHANGE_BYTES, Received, SignedChange};
use super::membership::Space;

/// Bytes of changes one message carries at most; the rest follows in later rounds.
pub const MAX_BATCH_BYTES: usize = 3 * 1024 * 1024;
/// Largest Bloom filter accepted (about 800,000 changes).
pub const MAX_BLOOM_BYTES: usize = 1024 * 1024;
/// Most heads or needs named in one message.
pub const MAX_HASHES: usize = 1024;
/// Rounds one session runs at most before it gives up until the next trigger.
pub const MAX_ROUNDS: usize = 16;

/// One sync message for one document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncMsg {
    pub heads: Vec<[u8; 32]>,
    pub bloom: Option<Vec<u8>>,
    pub need: Vec<[u8; 32]>,
    pub changes: Vec<SignedChange>,
}

impl SyncMsg {
    /// Nothing to say: no changes, no needs, no filter.
    pub fn is_quiet(&self) -> bool {
        self.changes.is_empty() && self.need.is_empty() && self.bloom.is_none()
    }

    /// Checks counts and sizes before anything is looked at.
    pub fn check_limits(&self) -> Result<(), String> {
        if self.heads.len() > MAX_HASHES || self.need.len() > MAX_HASHES {
            return Err(format!("more than {MAX_HASHES} heads or needs"));
        }
        if self
            .bloom
            .as_ref()
            .is_some_and(|b| b.len() > MAX_BLOOM_BYTES)
        {
            return Err(format!("Bloom filter over {MAX_BLOOM_BYTES} bytes"));
        }
        if let Some(c) = self
            .changes
            .iter()
            .find(|c| c.bytes.len() > MAX_CHANGE_BYTES || c.sig.len() != 64)
        {
            return Err(format!(
                "a change of {} bytes (at most {MAX_CHANGE_BYTES}) or a signature of {} bytes",
                c.bytes.len(),
                c.sig.len()
            ));
        }
        Ok(())
    }
}

fn hashes(v: &[[u8; 32]]) -> Vec<ChangeHash> {
    v.iter().map(|h| ChangeHash(*h)).collect()
}

fn raw(v: &[ChangeHash]) -> Vec<[u8; 32]> {
    v.iter().map(|h| h.0).collect()
}

/// One side of one document's sync with one peer.
#[derive(Debug, Default)]
pub struct Session {
    /// Changes sent in this session (not sent twice).
    sent: HashSet<ChangeHash>,
    /// The other side's heads, from its last message.
    pub their_heads: Vec<ChangeHash>,
    /// Messages received.
    pub rounds: usize,
}

impl Session {
    /// The opening message. `last_known`: the other's heads at the end of the last sync, if
    /// remembered (then the changes after them go in this first message).
    pub fn start(&mut self, doc: &mut Document, last_known: Option<&[ChangeHash]>) -> SyncMsg {
        let mut msg = SyncMsg {
            heads: raw(&doc.heads()),
            ..SyncMsg::default()
        };
        if let Some(known) = last_known
            && known.iter().all(|h| doc.contains(h))
        {
            msg.changes = self.batch(doc.changes_hashed(known));
        }
        msg
    }

    fn batch(&mut self, changes: Vec<(ChangeHash, SignedChange)>) -> Vec<SignedChange> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (h, c) in changes {
            if self.sent.contains(&h) {
                continue;
            }
            if bytes + c.bytes.len() > MAX_BATCH_BYTES && !out.is_empty() {
                break;
            }
            bytes += c.bytes.len();
            self.sent.insert(h);
            out.push(c);
        }
        out
    }

    /// Takes the other side's message and gives the reply. The received changes are checked
    /// against `space` ([`Document::receive`]).
    pub fn step(&mut self, doc: &mut Document, space: &Space, msg: SyncMsg) -> (Received, SyncMsg) {
        self.rounds += 1;
        let received = doc.receive(space, msg.changes);
        self.their_heads = hashes(&msg.heads);
        let mut reply = SyncMsg {
            heads: raw(&doc.heads()),
            ..SyncMsg::default()
        };
        let need: Vec<ChangeHash> = hashes(&msg.need).into_iter().take(MAX_HASHES).collect();
        let mut send = doc.changes_of(&need);
        let their = self.their_heads.clone();
        if their.iter().all(|h| doc.contains(h)) {
            send.extend(doc.changes_hashed(&their));
        } else if let Some(bytes) = &msg.bloom {
            if let Ok(bloom) = BloomFilter::try_from(bytes.as_slice()) {
                let lacking: Vec<ChangeHash> = doc
                    .hashes()
                    .filter(|h| !bloom.contains_hash(h))
                    .copied()
                    .collect();
                send.extend(doc.descendants(&lacking));
            }
        } else if !doc.is_empty() {
            reply.bloom = Some(BloomFilter::from_hashes(doc.hashes()).to_bytes());
        }
        reply.changes = self.batch(send);
        reply.need = raw(&doc
            .missing()
            .into_iter()
            .take(MAX_HASHES)
            .collect::<Vec<_>>());
        (received, reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::doc::Kind;
    use crate::{Action, Role};
    use libp2p_identity::ed25519::{Keypair, SecretKey};

    fn key(n: u8) -> Keypair {
        Keypair::from(SecretKey::try_from_bytes([n; 32]).unwrap())
    }

    fn peer(k: &Keypair) -> libp2p_identity::PeerId {
        libp2p_identity::PublicKey::from(k.public()).to_peer_id()
    }

    /// Runs a session between two documents until both are quiet; returns the rounds and
    /// the change bytes that crossed.
    fn sync(
        a: &mut Document,
        b: &mut Document,
        space: &Space,
        a_knows: Option<&[ChangeHash]>,
    ) -> (usize, usize) {
        let mut sa = Session::default();
        let mut sb = Session::default();
        let mut msg = sa.start(a, a_knows);
        let mut bytes: usize = msg.changes.iter().map(|c| c.bytes.len()).sum();
        for round in 0..MAX_ROUNDS {
            let (_, reply) = sb.step(b, space, msg);
            bytes += reply.changes.iter().map(|c| c.bytes.len()).sum::<usize>();
            let quiet = reply.is_quiet();
            let (_, next) = sa.step(a, space, reply);
            bytes += next.changes.iter().map(|c| c.bytes.len()).sum::<usize>();
            if quiet && next.is_quiet() && a.heads() == b.heads() {
                return (round + 1, bytes);
            }
            msg = next;
        }
        panic!("no convergence in {MAX_ROUNDS} rounds");
    }

    fn setup() -> (Space, Keypair, Keypair, Document, Document) {
        let owner = key(1);
        let editor = key(2);
        let (mut space, _) = Space::create("s", &owner, 1).unwrap();
        space
            .act(
                Action::Add {
                    member: peer(&editor),
                    role: Role::Editor,
                },
                &owner,
                2,
            )
            .unwrap();
        let (mut a, first) = Document::create(&space, Kind::Note, "n", &owner, 3).unwrap();
        let mut b = Document::empty(space.id(), a.id(), &peer(&editor));
        let r = b.receive(&space, vec![first]);
        assert_eq!(r.applied.len(), 1);
        assert_eq!(a.heads(), b.heads());
        (space, owner, editor, a, b)
    }

    #[test]
    fn divergent_edits_converge_with_both() {
        let (space, owner, editor, mut a, mut b) = setup();
        a.set_text(&space, &owner, 4, "hello world\n").unwrap();
        let (r, _) = sync(&mut a, &mut b, &space, None);
        assert!(r <= 2, "{r} rounds");
        for i in 0..50 {
            a.append_text(&space, &owner, 10 + i, &format!("a{i} "))
                .unwrap();
            b.splice(&space, &editor, 10 + i, &[(0, 0, "b")]).unwrap();
        }
        sync(&mut a, &mut b, &space, None);
        assert_eq!(a.text().unwrap(), b.text().unwrap());
        assert_eq!(a.heads(), b.heads());
        let t = a.text().unwrap();
        assert!(t.starts_with(&"b".repeat(50)) && t.contains("a49 "), "{t}");
    }

    #[test]
    fn one_edit_after_a_sync_costs_about_the_edit() {
        let (space, owner, _editor, mut a, mut b) = setup();
        for i in 0..200 {
            a.append_text(&space, &owner, i, "x").unwrap();
        }
        sync(&mut a, &mut b, &space, None);
        let known = b.heads();
        let change = a.append_text(&space, &owner, 999, "y").unwrap().unwrap();
        let (rounds, bytes) = sync(&mut a, &mut b, &space, Some(&known));
        assert_eq!(rounds, 1);
        assert_eq!(bytes, change.bytes.len());
        assert_eq!(a.text().unwrap(), b.text().unwrap());
    }

    #[test]
    fn empty_replica_gets_everything() {
        let (space, owner, editor, mut a, _) = setup();
        for i in 0..20 {
            a.append_text(&space, &owner, i, "z").unwrap();
        }
        let mut c = Document::empty(space.id(), a.id(), &peer(&editor));
        sync(&mut c, &mut a, &space, None);
        assert_eq!(c.text().unwrap(), "z".repeat(20));
    }

    #[test]
    fn garbage_bloom_and_needs_do_not_panic() {
        let (space, _owner, _editor, mut a, _) = setup();
        let mut s = Session::default();
        let (_, reply) = s.step(
            &mut a,
            &space,
            SyncMsg {
                heads: vec![[7; 32]],
                bloom: Some(vec![0xff; 64]),
                need: vec![[9; 32]],
                changes: vec![SignedChange {
                    bytes: vec![1, 2, 3],
                    sig: vec![],
                }],
            },
        );
        assert!(reply.changes.len() <= a.len());
    }
}
