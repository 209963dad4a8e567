//! Offline mailboxes over `/agora/mailbox/1.0.0`: storing sealed envelopes at the holders
//! closest to a recipient's mailbox key, answering other peers' store, fetch and ack requests
//! for the envelopes this node holds, and collecting this node's own mailbox.

use std::sync::Arc;

use libp2p::StreamProtocol;
use libp2p_identity::PeerId;

use super::{Chat, LOOKUP_TIMEOUT, REQUEST_TIMEOUT, Request, budget, by_distance, now};
use crate::{
    crypto,
    proto::{mailbox, presence::short_peer_id},
    wire::{
        Envelope, FetchRequest, Frame, Letter, MailboxRequest, MailboxResponse, MessageId, Receipt,
        Refusal, Rejection,
    },
};

pub const MAILBOX_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/mailbox/1.0.0");

/// Mailbox holders asked when collecting (more than are written to, to survive churn).
const FETCH_HOLDERS: usize = 8;
/// Fetch rounds per holder and collection (each up to 256 envelopes).
const MAX_FETCH_ROUNDS: usize = 64;

impl Chat {
    /// Stores an envelope at the mailbox holders of its recipient; returns how many took it
    /// and what went wrong with the others.
    pub(super) async fn store_in_mailbox(&self, envelope: Envelope) -> (usize, Vec<String>) {
        let key = crypto::mailbox_key(&envelope.to);
        let mut notes = Vec::new();
        let peers = self.closest_reachable(&key).await;
        let to = envelope.to;
        let candidates: Vec<PeerId> = peers
            .into_iter()
            .filter(|p| *p != to && *p != self.me)
            .collect();
        let holders: Vec<PeerId> = by_distance(candidates, &key)
            .into_iter()
            .take(self.config.mailbox_replicas)
            .collect();
        if holders.is_empty() {
            notes.push("no peers to hold the message: connect to the network first".into());
            return (0, notes);
        }
        let request = match MailboxRequest::Store(envelope).encode() {
            Ok(r) => r,
            Err(e) => {
                notes.push(e.to_string());
                return (0, notes);
            }
        };
        let answers = futures::future::join_all(holders.iter().map(|p| {
            self.net
                .request(*p, MAILBOX_PROTOCOL, request.clone(), REQUEST_TIMEOUT)
        }))
        .await;
        let mut stored = 0;
        for (peer, answer) in holders.iter().zip(answers) {
            match answer.map(|a| MailboxResponse::decode(&a)) {
                Ok(Ok(MailboxResponse::Stored)) => stored += 1,
                Ok(Ok(MailboxResponse::Refused(r))) => notes.push(format!(
                    "mailbox holder {} refused: {}",
                    short_peer_id(peer),
                    refusal_text(r)
                )),
                Ok(Ok(_)) | Ok(Err(_)) => notes.push(format!(
                    "mailbox holder {} answered nonsense",
                    short_peer_id(peer)
                )),
                Err(e) => notes.push(format!("mailbox holder {}: {e}", short_peer_id(peer))),
            }
        }
        (stored, notes)
    }

    /// The peers closest to a DHT key: from a lookup, or, if the lookup fails or takes too
    /// long (part of the network unreachable), the connected peers closest to it.
    async fn closest_reachable(&self, key: &[u8]) -> Vec<PeerId> {
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.net.closest_peers(key.to_vec())).await {
            Ok(Ok(p)) if !p.is_empty() => p,
            _ => {
                let connected = self
                    .net
                    .peers()
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| p.peer_id.parse().ok())
                    .collect();
                by_distance(connected, key)
            }
        }
    }

    pub(super) fn on_mailbox(self: &Arc<Self>, req: &Request) -> Result<Vec<u8>, String> {
        self.admit(
            &self.limits.mailbox,
            req.peer,
            1.0,
            budget::REFUSED_MAILBOX_RATE,
        )?;
        let t = now();
        let response = match MailboxRequest::decode(&req.data) {
            Err(e) => {
                tracing::debug!(peer = %req.peer, "malformed mailbox request: {e}");
                MailboxResponse::Refused(Refusal::Invalid)
            }
            Ok(MailboxRequest::Store(env)) => {
                let copy = env.clone();
                // The lock is released before the fsync of the write below.
                let stored = self.mailbox.lock().unwrap().store(env, t);
                match stored {
                    Ok(mailbox::Stored::New) => match self.db.hold(&copy) {
                        Ok(()) => MailboxResponse::Stored,
                        Err(e) => {
                            tracing::warn!("{e}");
                            MailboxResponse::Refused(Refusal::HolderFull)
                        }
                    },
                    Ok(mailbox::Stored::Duplicate) => MailboxResponse::Stored,
                    Err(e) => {
                        tracing::debug!(peer = %req.peer, "refused to hold an envelope: {e}");
                        MailboxResponse::Refused(e.refusal())
                    }
                }
            }
            Ok(MailboxRequest::Fetch(f)) => {
                let mut held = self.mailbox.lock().unwrap();
                match held.fetch(&f, t) {
                    Ok(page) => MailboxResponse::Envelopes {
                        envelopes: page.envelopes,
                        remaining: page.remaining,
                    },
                    Err(e) => MailboxResponse::Refused(e.refusal()),
                }
            }
            Ok(MailboxRequest::Ack(a)) => {
                let acked = self.mailbox.lock().unwrap().ack(&a, t);
                match acked {
                    Ok(deleted) => {
                        if let Err(e) = self.db.release(&a.recipient, &a.ids) {
                            tracing::warn!("{e}");
                        }
                        MailboxResponse::Acked {
                            deleted: deleted as u32,
                        }
                    }
                    Err(e) => MailboxResponse::Refused(e.refusal()),
                }
            }
        };
        Ok(response.encode().unwrap_or_default())
    }

    /// Collects this node's offline mailbox from its holders; returns the number of new
    /// messages and receipts.
    pub async fn collect_mailbox(self: &Arc<Self>) -> usize {
        let key = crypto::mailbox_key(&self.me);
        let peers = self.closest_reachable(&key).await;
        let candidates = peers.into_iter().filter(|p| *p != self.me).collect();
        let holders: Vec<PeerId> = by_distance(candidates, &key)
            .into_iter()
            .take(FETCH_HOLDERS)
            .collect();
        // Tracked, so that a node stopping right after collecting still sends the receipts.
        let collect = futures::future::join_all(holders.into_iter().map(|h| self.collect_from(h)));
        let results = self.inflight.track_future(collect).await;
        results.into_iter().sum()
    }

    /// Sends receipts for messages collected from mailboxes back the way the messages came:
    /// to the senders' mailboxes (a sender that is online also gets them when it re-sends
    /// directly). Several holders hold copies of the same message: one receipt is enough.
    fn send_receipts(self: &Arc<Self>, receipts: Vec<Receipt>) {
        for r in receipts {
            {
                let mut sent = self.receipted.lock().unwrap();
                if sent.len() > 10_000 {
                    sent.clear();
                }
                if !sent.insert(r.message_id.0) {
                    continue;
                }
            }
            let chat = self.clone();
            self.inflight.spawn(async move {
                let sender = r.sender;
                let letter = Letter::Receipt(r);
                let sealed = Envelope::seal(&chat.identity, &letter, now(), &mut rand::rng());
                if let Ok(env) = sealed {
                    let (stored, notes) = chat.store_in_mailbox(env).await;
                    if stored == 0 {
                        tracing::debug!(%sender, ?notes, "could not store a receipt for the sender");
                    }
                }
            });
        }
    }

    /// Fetches, opens and acknowledges what one holder keeps for us; returns the number of
    /// new letters.
    async fn collect_from(self: &Arc<Self>, holder: PeerId) -> usize {
        let mut count = 0;
        let mut receipts = Vec::new();
        for _ in 0..MAX_FETCH_ROUNDS {
            let fetch = MailboxRequest::Fetch(FetchRequest::new(&self.identity, holder, now()));
            let Ok(bytes) = fetch.encode() else { break };
            let answer = self
                .net
                .request(holder, MAILBOX_PROTOCOL, bytes, REQUEST_TIMEOUT)
                .await;
            let Ok(Ok(MailboxResponse::Envelopes {
                envelopes,
                remaining,
            })) = answer.map(|a| MailboxResponse::decode(&a))
            else {
                break;
            };
            if envelopes.is_empty() {
                break;
            }
            // Opening (HPKE) and storing (redb, fsync) a page runs on a blocking thread.
            let chat = self.clone();
            let opened = tokio::task::spawn_blocking(move || chat.open_page(holder, envelopes));
            let Ok((ack, new, page_receipts)) = opened.await else {
                break;
            };
            count += new;
            receipts.extend(page_receipts);
            if !ack.is_empty() {
                for chunk in ack.chunks(crate::wire::MAX_ACK_IDS) {
                    let Ok(req) =
                        crate::wire::AckRequest::new(&self.identity, holder, now(), chunk.to_vec())
                    else {
                        continue;
                    };
                    if let Ok(bytes) = MailboxRequest::Ack(req).encode() {
                        let _ = self
                            .net
                            .request(holder, MAILBOX_PROTOCOL, bytes, REQUEST_TIMEOUT)
                            .await;
                    }
                }
            }
            self.send_receipts(std::mem::take(&mut receipts));
            if remaining == 0 || ack.is_empty() {
                break;
            }
        }
        count
    }

    /// Opens one page of envelopes collected from `holder`: delivers messages, applies
    /// receipts. Returns the ids to acknowledge, the number of new letters and the receipts
    /// to send back. Blocking (decryption and database writes).
    fn open_page(
        self: &Arc<Self>,
        holder: PeerId,
        envelopes: Vec<Envelope>,
    ) -> (Vec<MessageId>, usize, Vec<Receipt>) {
        let mut count = 0;
        let mut receipts = Vec::new();
        let mut ack = Vec::new();
        for env in envelopes {
            let id = env.id;
            match env.open(&self.identity) {
                Ok(Letter::Message(m)) => {
                    let from = m.from;
                    match self.accept_message(m, "mailbox") {
                        Ok(receipt) => {
                            count += 1;
                            ack.push(id);
                            self.learn_profile(from);
                            receipts.push(receipt);
                        }
                        // Buffer full: leave it with the holder for next time.
                        Err(Rejection::TryLater) => {}
                        Err(_) => ack.push(id),
                    }
                }
                Ok(Letter::Receipt(r)) => {
                    count += 1;
                    self.on_receipt(&r);
                    ack.push(id);
                }
                Err(e) => {
                    tracing::warn!(holder = %holder, "rejected an envelope from the mailbox: {e}");
                    ack.push(id);
                }
            }
        }
        (ack, count, receipts)
    }
}

fn refusal_text(r: Refusal) -> &'static str {
    match r {
        Refusal::RecipientFull => "the recipient's mailbox is full",
        Refusal::SenderFull => "you have stored too many messages there (sender quota)",
        Refusal::HolderFull => "the holder has no room",
        Refusal::BadTime => "the message's time is off (check your clock)",
        Refusal::Invalid => "the request was invalid",
    }
}
