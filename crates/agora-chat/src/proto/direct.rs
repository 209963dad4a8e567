//! Direct messages: a [`Sender`] per node numbers, signs and keeps messages until a receipt
//! arrives; a [`Receiver`] per conversation verifies, deduplicates, restores order and signs
//! receipts.
//!
//! A receipt means "the recipient's node holds this message", including one held in the
//! out-of-order buffer, so the service must persist accepted messages before it returns the
//! receipt. The sender keeps every message until its receipt arrives (directly, or sealed in a
//! mailbox envelope) and re-sends, directly or to the mailbox, oldest first.

use crate::crypto::{self, Identity, KeyError, VerifyError};
use crate::wire::{DirectMessage, LimitError, MessageId, Receipt, Rejection, Timestamp};
use libp2p_identity::PeerId;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

/// Limits of the direct-message state machines.
#[derive(Debug, Clone)]
pub struct Config {
    max_buffered: usize,
    max_ahead: u64,
    gap_timeout: Duration,
    recent_ids: usize,
    max_outbox: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_buffered: 256,
            max_ahead: 1024,
            // Longer than the mailbox TTL (7 days): a gap is skipped only once the missing
            // message can no longer arrive from any mailbox.
            gap_timeout: Duration::from_secs(8 * 24 * 3600),
            recent_ids: 1024,
            max_outbox: 4096,
        }
    }
}

impl Config {
    /// Most out-of-order messages held per conversation while waiting for a gap to fill.
    pub fn with_max_buffered(mut self, n: usize) -> Self {
        self.max_buffered = n;
        self
    }

    /// Furthest a message may be ahead of the next expected seq and still be buffered.
    pub fn with_max_ahead(mut self, n: u64) -> Self {
        self.max_ahead = n;
        self
    }

    /// How long buffered messages wait for a missing one before it is given up on.
    pub fn with_gap_timeout(mut self, d: Duration) -> Self {
        self.gap_timeout = d;
        self
    }

    /// How many delivered message ids a conversation remembers for duplicate detection.
    pub fn with_recent_ids(mut self, n: usize) -> Self {
        self.recent_ids = n;
        self
    }

    /// Most unacknowledged messages a sender keeps, over all peers.
    pub fn with_max_outbox(mut self, n: usize) -> Self {
        self.max_outbox = n;
        self
    }
}

/// What became of an accepted message. Every case carries a receipt for the sender: for a
/// duplicate too, because the first receipt may have been lost and the sender is re-sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Delivered in order: this message, then the buffered ones it unblocked.
    Delivered {
        messages: Vec<DirectMessage>,
        receipt: Receipt,
    },
    /// Ahead of a gap: held until the gap fills or the gap timeout passes.
    Buffered { receipt: Receipt },
    /// Already delivered or buffered: not shown again.
    Duplicate { receipt: Receipt },
}

impl Received {
    pub fn receipt(&self) -> &Receipt {
        match self {
            Received::Delivered { receipt, .. }
            | Received::Buffered { receipt }
            | Received::Duplicate { receipt } => receipt,
        }
    }
}

/// Why a receiver dropped a message (no receipt is sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiveError {
    #[error("message is addressed to {to}, not to us")]
    NotForUs { to: PeerId },
    #[error("message from {from} handed to another conversation")]
    WrongConversation { from: PeerId },
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    #[error(
        "replayed or conflicting message: seq {seq} was already used (next expected is {next})"
    )]
    Replay { seq: u64, next: u64 },
    #[error(
        "seq {seq} is too far ahead of the next expected seq {next}; send earlier messages first"
    )]
    TooFarAhead { seq: u64, next: u64 },
    #[error(
        "out-of-order buffer is full ({max} messages); retry once earlier messages are delivered"
    )]
    BufferFull { max: usize },
}

impl ReceiveError {
    /// What to tell the sender.
    pub fn rejection(&self) -> Rejection {
        match self {
            ReceiveError::NotForUs { .. } | ReceiveError::WrongConversation { .. } => {
                Rejection::NotForUs
            }
            ReceiveError::Invalid(_) | ReceiveError::Replay { .. } => Rejection::Invalid,
            ReceiveError::TooFarAhead { .. } | ReceiveError::BufferFull { .. } => {
                Rejection::TryLater
            }
        }
    }
}

/// The receiving side of one conversation: messages from `peer` to us.
#[derive(Debug)]
pub struct Receiver {
    identity: Identity,
    peer: PeerId,
    config: Config,
    next_seq: u64,
    /// seq -> (message, when it was buffered).
    buffer: BTreeMap<u64, (DirectMessage, Timestamp)>,
    recent: VecDeque<MessageId>,
    recent_set: HashSet<MessageId>,
}

impl Receiver {
    pub fn new(identity: Identity, peer: PeerId, config: Config) -> Self {
        Self::resume(identity, peer, 0, config)
    }

    /// Restores a conversation whose next expected seq was persisted.
    pub fn resume(identity: Identity, peer: PeerId, next_seq: u64, config: Config) -> Self {
        Self {
            identity,
            peer,
            config,
            next_seq,
            buffer: BTreeMap::new(),
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
        }
    }

    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The seq of the next message to deliver (persist this).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    pub fn handle_message(
        &mut self,
        msg: DirectMessage,
        now: Timestamp,
    ) -> Result<Received, ReceiveError> {
        let me = self.identity.peer_id();
        if msg.to != me {
            return Err(ReceiveError::NotForUs { to: msg.to });
        }
        if msg.from != self.peer {
            return Err(ReceiveError::WrongConversation { from: msg.from });
        }
        msg.verify()?;
        let next = self.next_seq;
        let buffered_same = self.buffer.get(&msg.seq).map(|(m, _)| m.id == msg.id);
        if self.recent_set.contains(&msg.id) || buffered_same == Some(true) {
            return Ok(Received::Duplicate {
                receipt: Receipt::new(&self.identity, &msg, now),
            });
        }
        // An old seq under an unknown id is a replay whose id we have forgotten, or a sender
        // reusing a seq: either way not shown, and not acknowledged.
        if msg.seq < next || buffered_same == Some(false) {
            return Err(ReceiveError::Replay { seq: msg.seq, next });
        }
        if msg.seq - next > self.config.max_ahead {
            return Err(ReceiveError::TooFarAhead { seq: msg.seq, next });
        }
        let receipt = Receipt::new(&self.identity, &msg, now);
        if msg.seq == next {
            let mut messages = vec![msg];
            self.advance(&mut messages);
            return Ok(Received::Delivered { messages, receipt });
        }
        if self.buffer.len() >= self.config.max_buffered {
            return Err(ReceiveError::BufferFull {
                max: self.config.max_buffered,
            });
        }
        self.buffer.insert(msg.seq, (msg, now));
        Ok(Received::Buffered { receipt })
    }

    /// When [`Self::handle_timeout`] should next be called, if anything is buffered.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.buffer
            .values()
            .map(|(_, since)| *since)
            .min()
            .map(|t| t.saturating_add(self.config.gap_timeout))
    }

    /// Gives up on gaps that buffered messages have waited on for the gap timeout, and returns
    /// the messages that this releases, in order.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Vec<DirectMessage> {
        let mut out = Vec::new();
        while self.poll_timeout().is_some_and(|t| t <= now) {
            let first = *self
                .buffer
                .keys()
                .next()
                .expect("poll_timeout implies a buffered message");
            self.next_seq = first;
            let (msg, _) = self.buffer.remove(&first).expect("key just read");
            out.push(msg);
            self.advance(&mut out);
        }
        out
    }

    /// `out` ends with the message at `next_seq`: record it, then move buffered successors.
    fn advance(&mut self, out: &mut Vec<DirectMessage>) {
        let mut last = out.len() - 1;
        loop {
            self.remember(out[last].id);
            self.next_seq += 1;
            match self.buffer.remove(&self.next_seq) {
                Some((m, _)) => {
                    out.push(m);
                    last += 1;
                }
                None => break,
            }
        }
    }

    fn remember(&mut self, id: MessageId) {
        if self.recent_set.insert(id) {
            self.recent.push_back(id);
        }
        while self.recent.len() > self.config.recent_ids {
            let old = self.recent.pop_front().expect("len > 0");
            self.recent_set.remove(&old);
        }
    }
}

/// Why a message could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("cannot send a message to yourself")]
    ToSelf,
    #[error(transparent)]
    UnknownPeer(#[from] KeyError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("{max} messages are waiting for delivery receipts; wait for peers to come online")]
    OutboxFull { max: usize },
    #[error("message was written by {from}, not by us")]
    NotOurs { from: PeerId },
}

/// Why a receipt did not resolve a pending message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("receipt is for a message from {sender}, not from us")]
    NotOurs { sender: PeerId },
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    #[error("no pending message {message_id} to {recipient} (already acknowledged?)")]
    Unknown {
        message_id: MessageId,
        recipient: PeerId,
    },
}

/// The sending side for all conversations: the next seq per peer and the outbox.
#[derive(Debug)]
pub struct Sender {
    identity: Identity,
    config: Config,
    next_seq: HashMap<PeerId, u64>,
    outbox: HashMap<PeerId, BTreeMap<u64, DirectMessage>>,
    outbox_len: usize,
}

impl Sender {
    pub fn new(identity: Identity, config: Config) -> Self {
        Self {
            identity,
            config,
            next_seq: HashMap::new(),
            outbox: HashMap::new(),
            outbox_len: 0,
        }
    }

    /// The seq the next message to `peer` gets (persist this: a sender that restarts from 0
    /// would have its messages dropped as replays).
    pub fn next_seq(&self, peer: &PeerId) -> u64 {
        self.next_seq.get(peer).copied().unwrap_or(0)
    }

    /// Restores a persisted counter. Never moves it backwards.
    pub fn resume(&mut self, peer: PeerId, next_seq: u64) {
        let s = self.next_seq.entry(peer).or_insert(0);
        *s = (*s).max(next_seq);
    }

    /// Numbers, signs and queues a message; the caller sends the returned message.
    pub fn send(
        &mut self,
        to: PeerId,
        id: MessageId,
        body: String,
        now: Timestamp,
    ) -> Result<DirectMessage, SendError> {
        if to == self.identity.peer_id() {
            return Err(SendError::ToSelf);
        }
        // Fail early and clearly on an id we could neither reach by key nor seal to.
        crypto::public_key(&to)?;
        if self.outbox_len >= self.config.max_outbox {
            return Err(SendError::OutboxFull {
                max: self.config.max_outbox,
            });
        }
        let seq = self.next_seq(&to);
        let msg = DirectMessage::new(&self.identity, id, to, seq, now, body)?;
        self.next_seq.insert(to, seq + 1);
        self.outbox.entry(to).or_default().insert(seq, msg.clone());
        self.outbox_len += 1;
        Ok(msg)
    }

    /// Puts back a persisted, unacknowledged message after a restart.
    pub fn requeue(&mut self, msg: DirectMessage) -> Result<(), SendError> {
        if msg.from != self.identity.peer_id() {
            return Err(SendError::NotOurs { from: msg.from });
        }
        if self.outbox_len >= self.config.max_outbox {
            return Err(SendError::OutboxFull {
                max: self.config.max_outbox,
            });
        }
        self.resume(msg.to, msg.seq + 1);
        if self
            .outbox
            .entry(msg.to)
            .or_default()
            .insert(msg.seq, msg)
            .is_none()
        {
            self.outbox_len += 1;
        }
        Ok(())
    }

    /// Resolves the pending message a valid receipt acknowledges and returns it.
    pub fn handle_receipt(&mut self, receipt: &Receipt) -> Result<DirectMessage, ReceiptError> {
        if receipt.sender != self.identity.peer_id() {
            return Err(ReceiptError::NotOurs {
                sender: receipt.sender,
            });
        }
        let unknown = || ReceiptError::Unknown {
            message_id: receipt.message_id,
            recipient: receipt.recipient,
        };
        let queue = self
            .outbox
            .get_mut(&receipt.recipient)
            .ok_or_else(unknown)?;
        match queue.get(&receipt.seq) {
            Some(m) if m.id == receipt.message_id => {}
            _ => return Err(unknown()),
        }
        // Only the addressee can sign a receipt for it: check before changing state.
        receipt.verify()?;
        let msg = queue.remove(&receipt.seq).expect("checked above");
        if queue.is_empty() {
            self.outbox.remove(&receipt.recipient);
        }
        self.outbox_len -= 1;
        Ok(msg)
    }

    /// Unacknowledged messages to `peer`, oldest first: what to (re)send when it is reachable.
    pub fn pending(&self, peer: &PeerId) -> impl Iterator<Item = &DirectMessage> {
        self.outbox.get(peer).into_iter().flat_map(|q| q.values())
    }

    /// Peers with unacknowledged messages.
    pub fn peers_with_pending(&self) -> impl Iterator<Item = &PeerId> {
        self.outbox.keys()
    }

    pub fn pending_len(&self) -> usize {
        self.outbox_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn alice() -> Identity {
        Identity::from_seed([1; 32])
    }
    fn bob() -> Identity {
        Identity::from_seed([2; 32])
    }
    fn pair(config: Config) -> (Sender, Receiver) {
        (
            Sender::new(alice(), config.clone()),
            Receiver::new(bob(), alice().peer_id(), config),
        )
    }
    fn send_n(s: &mut Sender, n: u8) -> Vec<DirectMessage> {
        (0..n)
            .map(|i| {
                s.send(
                    bob().peer_id(),
                    MessageId([i; 16]),
                    format!("m{i}"),
                    Timestamp(i.into()),
                )
                .unwrap()
            })
            .collect()
    }
    fn bodies(ms: &[DirectMessage]) -> Vec<&str> {
        ms.iter().map(|m| m.body.as_str()).collect()
    }

    #[test]
    fn in_order_delivery_and_receipts_clear_the_outbox() {
        let (mut s, mut r) = pair(Config::default());
        for m in send_n(&mut s, 3) {
            assert_eq!(
                s.pending(&bob().peer_id()).next().unwrap().seq,
                m.seq,
                "oldest pending first"
            );
            let Received::Delivered { messages, receipt } =
                r.handle_message(m.clone(), Timestamp(10)).unwrap()
            else {
                panic!()
            };
            assert_eq!(messages, vec![m.clone()]);
            assert_eq!(s.handle_receipt(&receipt).unwrap(), m);
        }
        assert_eq!(s.pending_len(), 0);
        assert_eq!(r.next_seq(), 3);
    }

    #[test]
    fn out_of_order_is_buffered_then_released_in_order() {
        let (mut s, mut r) = pair(Config::default());
        let ms = send_n(&mut s, 4);
        assert!(matches!(
            r.handle_message(ms[2].clone(), Timestamp(0)),
            Ok(Received::Buffered { .. })
        ));
        assert!(matches!(
            r.handle_message(ms[1].clone(), Timestamp(0)),
            Ok(Received::Buffered { .. })
        ));
        let Ok(Received::Delivered { messages, .. }) =
            r.handle_message(ms[0].clone(), Timestamp(0))
        else {
            panic!()
        };
        assert_eq!(bodies(&messages), ["m0", "m1", "m2"]);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn duplicates_and_replays_are_dropped() {
        let (mut s, mut r) = pair(Config::default());
        let ms = send_n(&mut s, 2);
        r.handle_message(ms[0].clone(), Timestamp(0)).unwrap();
        // The same message again (the sender retried after losing our receipt): re-acknowledged.
        let dup = r.handle_message(ms[0].clone(), Timestamp(1)).unwrap();
        assert!(matches!(dup, Received::Duplicate { .. }));
        s.handle_receipt(dup.receipt()).unwrap();
        // A buffered duplicate.
        r.handle_message(ms[1].clone(), Timestamp(0)).unwrap();
        assert!(matches!(
            r.handle_message(ms[1].clone(), Timestamp(0)),
            Ok(Received::Duplicate { .. })
        ));
        // An old seq whose id was forgotten is a replay: not shown, not acknowledged.
        let mut r2 = Receiver::resume(bob(), alice().peer_id(), 2, Config::default());
        assert_eq!(
            r2.handle_message(ms[0].clone(), Timestamp(0)),
            Err(ReceiveError::Replay { seq: 0, next: 2 })
        );
    }

    #[test]
    fn forged_and_misaddressed_messages_are_rejected() {
        let (_, mut r) = pair(Config::default());
        let mallory = Identity::from_seed([66; 32]);
        let mut forged = DirectMessage::new(
            &mallory,
            MessageId([0; 16]),
            bob().peer_id(),
            0,
            Timestamp(0),
            "x".into(),
        )
        .unwrap();
        forged.from = alice().peer_id();
        let err = r.handle_message(forged, Timestamp(0)).unwrap_err();
        assert!(matches!(
            err,
            ReceiveError::Invalid(VerifyError::BadSignature { .. })
        ));
        assert_eq!(err.rejection(), Rejection::Invalid);
        let carol = Identity::from_seed([3; 32]).peer_id();
        let to_carol = DirectMessage::new(
            &alice(),
            MessageId([0; 16]),
            carol,
            0,
            Timestamp(0),
            "x".into(),
        )
        .unwrap();
        assert_eq!(
            r.handle_message(to_carol, Timestamp(0)),
            Err(ReceiveError::NotForUs { to: carol })
        );
        assert_eq!(r.next_seq(), 0, "nothing changed state");
    }

    #[test]
    fn buffer_is_bounded() {
        let (mut s, mut r) = pair(Config::default().with_max_buffered(2).with_max_ahead(5));
        let ms = send_n(&mut s, 8);
        r.handle_message(ms[1].clone(), Timestamp(0)).unwrap();
        r.handle_message(ms[2].clone(), Timestamp(0)).unwrap();
        let full = r.handle_message(ms[3].clone(), Timestamp(0)).unwrap_err();
        assert_eq!(full, ReceiveError::BufferFull { max: 2 });
        assert_eq!(full.rejection(), Rejection::TryLater);
        assert_eq!(
            r.handle_message(ms[7].clone(), Timestamp(0)),
            Err(ReceiveError::TooFarAhead { seq: 7, next: 0 })
        );
    }

    #[test]
    fn gap_timeout_releases_buffered_messages() {
        let (mut s, mut r) = pair(Config::default().with_gap_timeout(Duration::from_secs(10)));
        let ms = send_n(&mut s, 4);
        r.handle_message(ms[2].clone(), Timestamp(1_000)).unwrap();
        r.handle_message(ms[3].clone(), Timestamp(5_000)).unwrap();
        assert_eq!(r.poll_timeout(), Some(Timestamp(11_000)));
        assert!(r.handle_timeout(Timestamp(10_999)).is_empty());
        assert_eq!(bodies(&r.handle_timeout(Timestamp(11_000))), ["m2", "m3"]);
        assert_eq!(r.poll_timeout(), None);
        // The skipped message arriving late is a replay now.
        assert!(matches!(
            r.handle_message(ms[0].clone(), Timestamp(12_000)),
            Err(ReceiveError::Replay { .. })
        ));
    }

    #[test]
    fn receipts_are_checked() {
        let (mut s, mut r) = pair(Config::default());
        let m = send_n(&mut s, 1).remove(0);
        let receipt = r.handle_message(m, Timestamp(0)).unwrap().receipt().clone();
        // Forged by someone other than the recipient.
        let mut forged = receipt.clone();
        forged.signature.0[0] ^= 1;
        assert!(matches!(
            s.handle_receipt(&forged),
            Err(ReceiptError::Invalid(_))
        ));
        assert_eq!(s.pending_len(), 1);
        // For a message we never sent.
        let mut other = receipt.clone();
        other.message_id = MessageId([77; 16]);
        assert!(matches!(
            s.handle_receipt(&other),
            Err(ReceiptError::Unknown { .. })
        ));
        s.handle_receipt(&receipt).unwrap();
        assert!(matches!(
            s.handle_receipt(&receipt),
            Err(ReceiptError::Unknown { .. })
        ));
    }

    #[test]
    fn sender_checks_recipient_and_limits() {
        let mut s = Sender::new(alice(), Config::default().with_max_outbox(1));
        assert_eq!(
            s.send(
                alice().peer_id(),
                MessageId([0; 16]),
                "x".into(),
                Timestamp(0)
            ),
            Err(SendError::ToSelf)
        );
        let rsa_like = PeerId::from_bytes(&[&[0x12, 0x20][..], &[9; 32]].concat()).unwrap();
        let err = s
            .send(rsa_like, MessageId([0; 16]), "x".into(), Timestamp(0))
            .unwrap_err();
        assert!(
            err.to_string().contains("12D3KooW"),
            "unknown peer id gives a clear error: {err}"
        );
        let big = "a".repeat(crate::wire::MAX_BODY_BYTES + 1);
        assert!(matches!(
            s.send(bob().peer_id(), MessageId([0; 16]), big, Timestamp(0)),
            Err(SendError::Limit(_))
        ));
        assert_eq!(
            s.next_seq(&bob().peer_id()),
            0,
            "a refused message uses no seq"
        );
        s.send(
            bob().peer_id(),
            MessageId([0; 16]),
            "x".into(),
            Timestamp(0),
        )
        .unwrap();
        assert_eq!(
            s.send(
                bob().peer_id(),
                MessageId([1; 16]),
                "y".into(),
                Timestamp(0)
            ),
            Err(SendError::OutboxFull { max: 1 })
        );
    }

    #[test]
    fn sender_state_survives_restart() {
        let mut s = Sender::new(alice(), Config::default());
        let ms = send_n(&mut s, 3);
        let mut s2 = Sender::new(alice(), Config::default());
        s2.requeue(ms[1].clone()).unwrap();
        s2.resume(bob().peer_id(), 3);
        assert_eq!(s2.next_seq(&bob().peer_id()), 3);
        assert_eq!(s2.pending(&bob().peer_id()).count(), 1);
        assert!(
            s2.requeue(
                DirectMessage::new(
                    &bob(),
                    MessageId([0; 16]),
                    alice().peer_id(),
                    0,
                    Timestamp(0),
                    "x".into()
                )
                .unwrap()
            )
            .is_err()
        );
    }

    proptest! {
        /// Whatever order, duplication and loss the network applies, with retries of what is
        /// unacknowledged the receiver delivers every message exactly once, in seq order, and the
        /// sender's outbox empties.
        #[test]
        fn any_network_order_delivers_each_message_once_in_order(
            n in 1u8..20,
            schedule in proptest::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 0..80),
        ) {
            let (mut s, mut r) = pair(Config::default().with_max_buffered(32));
            let sent = send_n(&mut s, n);
            let mut delivered = Vec::new();
            let mut deliver = |m: DirectMessage, s: &mut Sender, r: &mut Receiver, lose_receipt: bool| {
                if let Ok(got) = r.handle_message(m, Timestamp(0)) {
                    if let Received::Delivered { messages, .. } = &got {
                        delivered.extend(messages.iter().map(|m| m.seq));
                    }
                    if !lose_receipt {
                        let _ = s.handle_receipt(got.receipt());
                    }
                }
            };
            // Chaotic phase: random messages (possibly repeated), random receipt loss.
            for (i, lose) in schedule {
                let m = sent[i.index(sent.len())].clone();
                deliver(m, &mut s, &mut r, lose);
            }
            // Retry phase: the sender re-sends whatever is still pending, oldest first.
            while s.pending_len() > 0 {
                let pending: Vec<_> = s.pending(&bob().peer_id()).cloned().collect();
                for m in pending {
                    deliver(m, &mut s, &mut r, false);
                }
            }
            prop_assert_eq!(delivered, (0..u64::from(n)).collect::<Vec<_>>());
            prop_assert_eq!(r.buffered(), 0);
        }
    }
}
