//! Direct messages over `/agora/chat/1.0.0`: sending (directly, else sealed into the
//! recipient's mailbox, else queued), receiving and ordering them per conversation, receipts,
//! retries of the outbox and the inbox listing.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use libp2p::StreamProtocol;
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use super::{
    Chat, ChatError, Event, MAX_LIST, REQUEST_TIMEOUT, Request, budget,
    db::{Direction, MessageRecord, MessageState},
    now,
};
use crate::{
    proto::direct::{self, Received, Receiver, Sender},
    wire::{DirectMessage, DirectReply, Envelope, Frame, Letter, MessageId, Receipt, Rejection},
};

pub const CHAT_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/chat/1.0.0");

/// How long finding and dialing a peer may take before a message goes to its mailbox.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);

/// What direct messaging keeps in memory (`Chat::direct`): the sending side of every
/// conversation (counters and the outbox of unacknowledged messages) and the receiving side of
/// the active ones.
pub(super) struct DirectState {
    pub(super) sender: Sender,
    pub(super) receivers: HashMap<PeerId, Receiver>,
}

/// What `send` did with a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendOutcome {
    pub id: String,
    pub to: String,
    pub seq: u64,
    /// `delivered` (receipt received), `stored` (in the recipient's mailbox) or `queued`
    /// (neither yet: kept and retried).
    pub state: MessageState,
    /// Mailbox holders that accepted it.
    pub holders: usize,
    /// Why direct delivery or mailbox holders failed, for the user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Which messages a listing shows.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    /// Received (`In`), sent (`Out`) or both (`None`).
    pub direction: Option<Direction>,
    pub peer: Option<PeerId>,
    pub unread_only: bool,
}

impl MessageFilter {
    fn keep(&self, r: &MessageRecord) -> bool {
        self.direction.is_none_or(|d| d == r.direction)
            && self.peer.is_none_or(|p| p.to_string() == r.peer_id)
            && (!self.unread_only || r.state == MessageState::Unread)
    }
}

fn hex(id: &MessageId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

impl Chat {
    /// Sends a direct message: delivered at once if the peer answers, else stored in its
    /// offline mailbox, else queued and retried.
    pub async fn send(&self, to: PeerId, text: String) -> Result<SendOutcome, ChatError> {
        let t = now();
        let msg = {
            let mut st = self.direct.lock().unwrap();
            let id = MessageId::random(&mut rand::rng());
            let msg = st.sender.send(to, id, text, t).map_err(|e| match e {
                direct::SendError::UnknownPeer(e) => ChatError::BadInput(format!(
                    "cannot message {to}: {e} (Agora peer ids start with 12D3KooW)"
                )),
                e => ChatError::BadInput(e.to_string()),
            })?;
            let rec = MessageRecord {
                n: 0,
                id: hex(&msg.id),
                direction: Direction::Out,
                peer_id: to.to_string(),
                seq: msg.seq,
                sent_at: t.as_millis(),
                received_at: t.as_millis(),
                text: msg.body.clone(),
                state: MessageState::Queued,
                via: None,
                delivered_at: None,
            };
            self.db.sent(&msg, rec)?;
            msg
        };
        self.changed.notify_waiters();
        self.emit(Event::MessageSent {
            peer_id: to.to_string(),
            id: hex(&msg.id),
        });
        let mut outcome = SendOutcome {
            id: hex(&msg.id),
            to: to.to_string(),
            seq: msg.seq,
            state: MessageState::Queued,
            holders: 0,
            notes: Vec::new(),
        };
        match self.deliver_direct(&msg).await {
            Ok(receipt) => {
                self.on_receipt(&receipt);
                outcome.state = MessageState::Delivered;
                return Ok(outcome);
            }
            Err(e) => outcome.notes.push(format!("not delivered directly: {e}")),
        }
        let letter = Letter::Message(msg.clone());
        let sealed = Envelope::seal(&self.identity, &letter, now(), &mut rand::rng());
        let envelope = sealed.map_err(|e| ChatError::BadInput(e.to_string()))?;
        let (stored, notes) = self.store_in_mailbox(envelope).await;
        outcome.notes.extend(notes);
        outcome.holders = stored;
        if stored > 0 {
            outcome.state = MessageState::Stored;
            self.db.set_state(&msg.id, MessageState::Stored, None)?;
            self.changed.notify_waiters();
            self.emit(Event::MessageState {
                peer_id: to.to_string(),
                id: hex(&msg.id),
                state: MessageState::Stored,
            });
        }
        Ok(outcome)
    }

    async fn deliver_direct(&self, msg: &DirectMessage) -> Result<Receipt, String> {
        let peer = msg.to;
        match tokio::time::timeout(CONNECT_TIMEOUT, self.net.connect(peer)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("{peer} is not reachable ({e})")),
            Err(_) => return Err(format!("{peer} was not found within {CONNECT_TIMEOUT:?}")),
        }
        let bytes = msg.encode().map_err(|e| e.to_string())?;
        let response = self
            .net
            .request(peer, CHAT_PROTOCOL, bytes, REQUEST_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        match DirectReply::decode(&response).map_err(|e| format!("bad reply: {e}"))? {
            DirectReply::Delivered(r) if r.message_id == msg.id && r.recipient == peer => Ok(r),
            DirectReply::Delivered(_) => Err("the reply acknowledges another message".into()),
            DirectReply::Rejected(Rejection::TryLater) => {
                Err("the recipient is busy; it will be retried".into())
            }
            DirectReply::Rejected(r) => Err(format!("the recipient refused it ({r:?})")),
        }
    }

    pub(super) fn on_receipt(&self, receipt: &Receipt) {
        let resolved = self.direct.lock().unwrap().sender.handle_receipt(receipt);
        match resolved {
            Ok(msg) => {
                let at = receipt.received_at.as_millis();
                if let Err(e) = self
                    .db
                    .set_state(&msg.id, MessageState::Delivered, Some(at))
                {
                    tracing::warn!("{e}");
                }
                self.changed.notify_waiters();
                self.emit(Event::MessageState {
                    peer_id: msg.to.to_string(),
                    id: hex(&msg.id),
                    state: MessageState::Delivered,
                });
            }
            Err(direct::ReceiptError::Unknown { .. }) => {}
            Err(e) => tracing::debug!("ignoring a receipt: {e}"),
        }
    }

    /// Re-sends, in the background, what `peer` is owed (messages without a receipt), if any.
    pub(super) fn retry_if_owed(self: &Arc<Self>, peer: PeerId) {
        let owed = self
            .direct
            .lock()
            .unwrap()
            .sender
            .pending(&peer)
            .next()
            .is_some();
        if owed {
            let chat = self.clone();
            tokio::spawn(async move { chat.retry_pending(Some(peer)).await });
        }
    }

    /// Re-sends unacknowledged messages to `only` or to every peer we are connected to.
    pub(super) async fn retry_pending(&self, only: Option<PeerId>) {
        let connected: HashSet<PeerId> = match self.net.peers().await {
            Ok(p) => p.iter().filter_map(|p| p.peer_id.parse().ok()).collect(),
            Err(_) => return,
        };
        let work: Vec<(PeerId, Vec<DirectMessage>)> = {
            let st = self.direct.lock().unwrap();
            let peers: Vec<PeerId> = st.sender.peers_with_pending().copied().collect();
            peers
                .into_iter()
                .filter(|p| only.is_none_or(|o| o == *p) && connected.contains(p))
                .map(|p| (p, st.sender.pending(&p).cloned().collect()))
                .collect()
        };
        for (_, msgs) in work {
            for msg in msgs {
                match self.deliver_direct(&msg).await {
                    Ok(r) => self.on_receipt(&r),
                    Err(e) => {
                        tracing::debug!("retry of {} failed: {e}", hex(&msg.id));
                        break;
                    }
                }
            }
        }
    }

    pub(super) fn on_direct(self: &Arc<Self>, req: &Request) -> Result<Vec<u8>, String> {
        self.admit(
            &self.limits.direct,
            req.peer,
            1.0,
            budget::REFUSED_DIRECT_RATE,
        )?;
        self.admit(
            &self.limits.direct_bytes,
            req.peer,
            req.data.len() as f64,
            budget::REFUSED_DIRECT_RATE,
        )?;
        let reply = match DirectMessage::decode(&req.data) {
            // The direct protocol carries only the sender's own messages (relayed ones come
            // through mailboxes): a message from any other author would let one connection
            // open conversations for any number of throwaway keys.
            Ok(msg) if msg.from != req.peer => {
                self.net.admission().refuse(budget::REFUSED_AUTHOR);
                return Err(format!(
                    "{}: a direct message must be written by the peer that sends it",
                    budget::REFUSED_AUTHOR
                ));
            }
            Ok(msg) => match self.accept_message(msg, "direct") {
                Ok(receipt) => {
                    self.learn_profile(receipt.sender);
                    DirectReply::Delivered(receipt)
                }
                Err(r) => DirectReply::Rejected(r),
            },
            Err(e) => {
                tracing::debug!(peer = %req.peer, "malformed direct message: {e}");
                DirectReply::Rejected(Rejection::Invalid)
            }
        };
        Ok(reply.encode().unwrap_or_default())
    }

    /// Runs a received message through its conversation; stores what becomes deliverable
    /// before the receipt is handed out.
    pub(super) fn accept_message(
        &self,
        msg: DirectMessage,
        via: &str,
    ) -> Result<Receipt, Rejection> {
        let t = now();
        if msg.to != self.me {
            return Err(Rejection::NotForUs);
        }
        let _delivering = self.delivering.lock().unwrap();
        let from = msg.from;
        // The conversation leaves `direct` while its message is applied and stored, so the
        // lock is not held across the fsync (async tasks take it).
        let mut rx = {
            let mut st = self.direct.lock().unwrap();
            if !st.receivers.contains_key(&from) {
                let max = self.config.max_conversations;
                if st.receivers.len() >= max {
                    // Idle conversations resume from their persisted counter when they write
                    // again.
                    st.receivers.retain(|_, rx| rx.buffered() > 0);
                }
                if st.receivers.len() >= max {
                    self.net.admission().refuse(budget::REFUSED_CONVERSATIONS);
                    return Err(Rejection::TryLater);
                }
                let next = self.db.in_counter(&from).map_err(|e| {
                    tracing::warn!("{e}");
                    Rejection::TryLater
                })?;
                let config =
                    direct::Config::default().with_max_buffered(budget::MAX_BUFFERED_PER_AUTHOR);
                let rx = Receiver::resume(self.identity.clone(), from, next, config);
                st.receivers.insert(from, rx);
            }
            let would_buffer = st.receivers[&from].next_seq() < msg.seq;
            if would_buffer {
                let held: usize = st.receivers.values().map(Receiver::buffered).sum();
                if held >= budget::MAX_BUFFERED_TOTAL {
                    self.net.admission().refuse(budget::REFUSED_BUFFERED);
                    return Err(Rejection::TryLater);
                }
            }
            st.receivers.remove(&from).expect("inserted above")
        };
        let outcome = self.apply_received(&mut rx, msg, via, t);
        self.direct.lock().unwrap().receivers.insert(from, rx);
        outcome
    }

    /// Runs a received message through its conversation `rx` and stores what becomes
    /// deliverable (or buffered) before the receipt is handed out.
    fn apply_received(
        &self,
        rx: &mut Receiver,
        msg: DirectMessage,
        via: &str,
        t: crate::wire::Timestamp,
    ) -> Result<Receipt, Rejection> {
        let from = msg.from;
        let result = rx.handle_message(msg.clone(), t).map_err(|e| {
            tracing::debug!(%from, "dropped a direct message: {e}");
            e.rejection()
        })?;
        let next = rx.next_seq();
        match &result {
            Received::Delivered { messages, .. } => {
                if !self.store_received(from, next, messages.clone(), via) {
                    return Err(Rejection::TryLater);
                }
            }
            Received::Buffered { .. } => {
                if let Err(e) = self.db.buffer(&msg) {
                    tracing::warn!("{e}");
                    return Err(Rejection::TryLater);
                }
            }
            Received::Duplicate { .. } => {}
        }
        Ok(result.receipt().clone())
    }

    pub(super) fn store_received(
        &self,
        from: PeerId,
        next: u64,
        msgs: Vec<DirectMessage>,
        via: &str,
    ) -> bool {
        let t = now().as_millis();
        let count = msgs.len();
        let records = msgs
            .into_iter()
            .map(|m| {
                let rec = MessageRecord {
                    n: 0,
                    id: hex(&m.id),
                    direction: Direction::In,
                    peer_id: from.to_string(),
                    seq: m.seq,
                    sent_at: m.sent_at.as_millis(),
                    received_at: t,
                    text: m.body,
                    state: MessageState::Unread,
                    via: Some(via.to_owned()),
                    delivered_at: None,
                };
                (m.id, rec)
            })
            .collect();
        match self.db.received(&from, next, records) {
            Ok(_) => {
                self.changed.notify_waiters();
                if count > 0 {
                    self.emit(Event::MessageReceived {
                        peer_id: from.to_string(),
                        count,
                    });
                }
                true
            }
            Err(e) => {
                tracing::error!("cannot store a received message: {e}");
                false
            }
        }
    }

    /// Messages in both directions with local number above `after`, filtered; waits up to
    /// `wait` for one to appear. Received ones listed are marked read if `mark_read`.
    pub async fn messages(
        &self,
        filter: MessageFilter,
        after: u64,
        limit: usize,
        wait: Duration,
        mark_read: bool,
    ) -> Result<Vec<MessageRecord>, ChatError> {
        let limit = limit.clamp(1, MAX_LIST);
        let keep = |r: &MessageRecord| filter.keep(r);
        let found = self
            .long_poll(wait, || {
                Ok(if after == 0 && wait.is_zero() {
                    self.db.last_messages(limit, keep)?
                } else {
                    self.db.messages(after, limit, keep)?
                })
            })
            .await?;
        if mark_read {
            let ns: Vec<u64> = found
                .iter()
                .filter(|r| r.state == MessageState::Unread)
                .map(|r| r.n)
                .collect();
            self.db.mark_read(&ns)?;
            if !ns.is_empty() {
                self.emit(Event::MessagesRead { count: ns.len() });
            }
        }
        Ok(found)
    }
}
