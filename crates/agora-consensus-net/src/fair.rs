//! One channel's inbound messages, queued per sender and handed out in turns.
//!
//! With one shared queue, a committee member that floods a channel (with messages that look
//! valid, so nothing gets it blocked) would fill the queue and push everybody else's messages
//! out or behind its backlog. Here each sender has its own queue and budget, and the receiver
//! takes one message from each sender with something queued in turn: a flooder fills only its
//! own share and delays the others by at most one message each round.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use commonware_runtime::IoBuf;
use tokio::sync::Notify;

use crate::PublicKey;

pub(crate) struct FairQueue {
    state: Mutex<State>,
    ready: Notify,
    /// Messages one sender may have queued.
    per_peer: usize,
    /// Payload bytes one sender may have queued.
    per_peer_bytes: usize,
    /// Payload bytes all senders together may have queued.
    total_bytes: usize,
}

#[derive(Default)]
struct State {
    queues: HashMap<PublicKey, (VecDeque<IoBuf>, usize)>,
    /// Senders with something queued, in the order they are served.
    turns: VecDeque<PublicKey>,
    bytes: usize,
}

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// The sender's own share is full.
    SenderFull,
    /// All senders together are at the byte budget.
    ChannelFull,
}

impl FairQueue {
    pub(crate) fn new(per_peer: usize, per_peer_bytes: usize, total_bytes: usize) -> Self {
        FairQueue {
            state: Mutex::default(),
            ready: Notify::new(),
            per_peer: per_peer.max(1),
            per_peer_bytes,
            total_bytes,
        }
    }

    /// Queues a message from `from`, or drops it (the newest is lost) when over a budget.
    pub(crate) fn push(&self, from: &PublicKey, payload: IoBuf) -> Result<(), Dropped> {
        let len = payload.len();
        let mut state = self.state.lock().unwrap();
        if state.bytes + len > self.total_bytes {
            return Err(Dropped::ChannelFull);
        }
        let (queue, bytes) = state.queues.entry(from.clone()).or_default();
        // One message is always allowed, however large (the sender's limit caps it anyway).
        if queue.len() >= self.per_peer || (!queue.is_empty() && *bytes + len > self.per_peer_bytes)
        {
            return Err(Dropped::SenderFull);
        }
        let first = queue.is_empty();
        queue.push_back(payload);
        *bytes += len;
        state.bytes += len;
        if first {
            state.turns.push_back(from.clone());
        }
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The next message in turn, if any is queued.
    pub(crate) fn pop(&self) -> Option<(PublicKey, IoBuf)> {
        let mut state = self.state.lock().unwrap();
        let from = state.turns.pop_front()?;
        let (queue, bytes) = state
            .queues
            .get_mut(&from)
            .expect("a sender in turn has a queue");
        let payload = queue.pop_front().expect("a sender in turn has a message");
        *bytes -= payload.len();
        let more = !queue.is_empty();
        if more {
            state.turns.push_back(from.clone());
        } else {
            state.queues.remove(&from);
        }
        state.bytes -= payload.len();
        Some((from, payload))
    }

    /// Waits for the next message in turn. Cancel-safe: a message is taken only when returned.
    pub(crate) async fn next(&self) -> (PublicKey, IoBuf) {
        loop {
            let ready = self.ready.notified();
            if let Some(message) = self.pop() {
                return message;
            }
            ready.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PublicKey {
        crate::public_key(
            &libp2p::identity::Keypair::generate_ed25519()
                .public()
                .into(),
        )
        .unwrap()
    }

    fn msg(bytes: &[u8]) -> IoBuf {
        IoBuf::copy_from_slice(bytes)
    }

    #[test]
    fn a_flooding_sender_fills_only_its_share_and_others_are_served_in_turn() {
        let queue = FairQueue::new(100, 1 << 20, 64 << 20);
        let (flooder, honest, other) = (key(), key(), key());
        let mut dropped = 0;
        for i in 0..1_000u32 {
            if queue.push(&flooder, msg(&i.to_be_bytes())).is_err() {
                dropped += 1;
            }
        }
        assert_eq!(dropped, 900, "the flooder keeps at most its 100 messages");
        queue.push(&honest, msg(b"vote")).unwrap();
        queue.push(&other, msg(b"cert")).unwrap();
        // The honest messages come right after the flooder's first, not after its backlog.
        let first: Vec<PublicKey> = (0..3).map(|_| queue.pop().unwrap().0).collect();
        assert_eq!(first, vec![flooder.clone(), honest, other]);
        // Then the flooder's messages, in order.
        assert_eq!(queue.pop().unwrap().1.as_ref(), &1u32.to_be_bytes());
        let rest = std::iter::from_fn(|| queue.pop()).count();
        assert_eq!(rest, 98);
        assert!(queue.pop().is_none());
    }

    #[test]
    fn byte_budgets_hold_per_sender_and_in_total() {
        let queue = FairQueue::new(100, 8, 12);
        let (a, b) = (key(), key());
        queue.push(&a, msg(b"12345")).unwrap();
        assert_eq!(queue.push(&a, msg(b"6789")), Err(Dropped::SenderFull));
        queue.push(&b, msg(b"1234567")).unwrap();
        assert_eq!(queue.push(&b, msg(b"x")), Err(Dropped::ChannelFull));
        // Taking messages out gives their bytes back.
        assert_eq!(queue.pop().unwrap().1.as_ref(), b"12345");
        queue.push(&a, msg(b"abc")).unwrap();
        assert_eq!(queue.pop().unwrap().1.as_ref(), b"1234567");
        assert_eq!(queue.pop().unwrap().1.as_ref(), b"abc");
    }

    #[tokio::test]
    async fn next_waits_for_a_message() {
        let queue = std::sync::Arc::new(FairQueue::new(4, 1 << 10, 1 << 20));
        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.next().await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let from = key();
        queue.push(&from, msg(b"late")).unwrap();
        let (who, payload) = waiter.await.unwrap();
        assert_eq!(who, from);
        assert_eq!(payload.as_ref(), b"late");
    }
}
