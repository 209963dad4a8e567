//! The holder side of offline mailboxes.
//!
//! A peer among the k closest to [`crate::crypto::mailbox_key`] of a recipient keeps sealed
//! envelopes for it until the recipient fetches and acknowledges them, or the TTL passes.
//! Holders are strangers, so everything is bounded: per recipient (one flooded recipient does
//! not crowd out others), per sender (one sender cannot fill a holder by writing to many
//! recipients) and in total. Only signed, verified envelopes are stored, and only the recipient,
//! by signature, can list or delete its mail.
//!
//! Quotas do not stop a Sybil attacker with many identities from filling one recipient's
//! mailbox at a holder; that recipient's other senders are then refused there (and should try
//! the other k-1 holders). Proof of work or contact-only mailboxes would be the next step.

use crate::crypto::VerifyError;
use crate::wire::{
    AckRequest, Envelope, FetchRequest, MAX_BATCH_BYTES, MAX_FETCH_BATCH, MessageId, Refusal,
    Timestamp,
};
use libp2p_identity::PeerId;
use std::collections::HashMap;
use std::time::Duration;

/// How long a holder keeps an envelope, from its creation.
pub const MAILBOX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Limits of a [`MailboxStore`].
#[derive(Debug, Clone)]
pub struct Config {
    ttl: Duration,
    recipient_quota: Quota,
    sender_quota: Quota,
    max_total_bytes: usize,
    max_clock_skew: Duration,
}

/// A count and a byte limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub messages: usize,
    pub bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ttl: MAILBOX_TTL,
            recipient_quota: Quota {
                messages: 1000,
                bytes: 16 << 20,
            },
            sender_quota: Quota {
                messages: 500,
                bytes: 8 << 20,
            },
            max_total_bytes: 256 << 20,
            // Requests and envelopes may be dated this far from our clock.
            max_clock_skew: Duration::from_secs(300),
        }
    }
}

impl Config {
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// What one recipient's mailbox may hold here.
    pub fn with_recipient_quota(mut self, q: Quota) -> Self {
        self.recipient_quota = q;
        self
    }

    /// What one sender may have stored here, over all recipients.
    pub fn with_sender_quota(mut self, q: Quota) -> Self {
        self.sender_quota = q;
        self
    }

    pub fn with_max_total_bytes(mut self, n: usize) -> Self {
        self.max_total_bytes = n;
        self
    }

    pub fn with_max_clock_skew(mut self, d: Duration) -> Self {
        self.max_clock_skew = d;
        self
    }
}

/// What a holder did with an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New,
    /// Already held (a retry or a second replica): storing is idempotent.
    Duplicate,
}

/// Why a holder refused an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    #[error("envelope created at {created_at:?} is past the mailbox TTL or in the future")]
    BadTime { created_at: Timestamp },
    #[error(
        "mailbox of {recipient} is full here ({used:?}); it frees up as the recipient collects its mail"
    )]
    RecipientFull { recipient: PeerId, used: Quota },
    #[error("sender {sender} has {used:?} stored here, its quota; wait for deliveries or expiry")]
    SenderFull { sender: PeerId, used: Quota },
    #[error("this holder is out of mailbox space")]
    HolderFull,
}

impl StoreError {
    pub fn refusal(&self) -> Refusal {
        match self {
            StoreError::Invalid(_) => Refusal::Invalid,
            StoreError::BadTime { .. } => Refusal::BadTime,
            StoreError::RecipientFull { .. } => Refusal::RecipientFull,
            StoreError::SenderFull { .. } => Refusal::SenderFull,
            StoreError::HolderFull => Refusal::HolderFull,
        }
    }
}

/// Why a fetch or ack was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    #[error("request is addressed to holder {holder}, not to us")]
    WrongHolder { holder: PeerId },
    #[error("request issued at {issued_at:?} is too far from our clock; check the system time")]
    BadTime { issued_at: Timestamp },
}

impl AccessError {
    pub fn refusal(&self) -> Refusal {
        match self {
            AccessError::BadTime { .. } => Refusal::BadTime,
            _ => Refusal::Invalid,
        }
    }
}

/// A page of a recipient's mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub envelopes: Vec<Envelope>,
    /// Envelopes held beyond this page.
    pub remaining: u32,
}

#[derive(Debug)]
struct Held {
    envelope: Envelope,
    size: usize,
    expires_at: Timestamp,
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    messages: usize,
    bytes: usize,
}

impl Usage {
    fn add(&mut self, size: usize) {
        self.messages += 1;
        self.bytes += size;
    }

    fn sub(&mut self, size: usize) {
        self.messages -= 1;
        self.bytes -= size;
    }

    fn would_exceed(&self, size: usize, q: Quota) -> bool {
        self.messages + 1 > q.messages || self.bytes + size > q.bytes
    }

    fn as_quota(self) -> Quota {
        Quota {
            messages: self.messages,
            bytes: self.bytes,
        }
    }
}

/// The envelopes this node holds for others.
#[derive(Debug)]
pub struct MailboxStore {
    me: PeerId,
    config: Config,
    /// Per recipient, in arrival order (fetches return the oldest first).
    boxes: HashMap<PeerId, Vec<Held>>,
    senders: HashMap<PeerId, Usage>,
    total_bytes: usize,
}

impl MailboxStore {
    /// `me` is this holder's peer id: fetch and ack requests must name it.
    pub fn new(me: PeerId, config: Config) -> Self {
        Self {
            me,
            config,
            boxes: HashMap::new(),
            senders: HashMap::new(),
            total_bytes: 0,
        }
    }

    pub fn store(&mut self, envelope: Envelope, now: Timestamp) -> Result<Stored, StoreError> {
        envelope.verify()?;
        // The sender's clock dates the envelope; capping at `now` means a holder (or a replica
        // handing it on) can never extend its life past TTL from when it first existed.
        let expires_at = envelope.created_at.min(now).saturating_add(self.config.ttl);
        if expires_at <= now || envelope.created_at > now.saturating_add(self.config.max_clock_skew)
        {
            return Err(StoreError::BadTime {
                created_at: envelope.created_at,
            });
        }
        let held = self
            .boxes
            .get(&envelope.to)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if held.iter().any(|h| h.envelope.id == envelope.id) {
            return Ok(Stored::Duplicate);
        }
        let size = envelope.stored_size();
        let recipient = held.iter().fold(Usage::default(), |mut u, h| {
            u.add(h.size);
            u
        });
        if recipient.would_exceed(size, self.config.recipient_quota) {
            return Err(StoreError::RecipientFull {
                recipient: envelope.to,
                used: recipient.as_quota(),
            });
        }
        let sender = self
            .senders
            .get(&envelope.from)
            .copied()
            .unwrap_or_default();
        if sender.would_exceed(size, self.config.sender_quota) {
            return Err(StoreError::SenderFull {
                sender: envelope.from,
                used: sender.as_quota(),
            });
        }
        if self.total_bytes + size > self.config.max_total_bytes {
            return Err(StoreError::HolderFull);
        }
        self.senders.entry(envelope.from).or_default().add(size);
        self.total_bytes += size;
        self.boxes.entry(envelope.to).or_default().push(Held {
            envelope,
            size,
            expires_at,
        });
        Ok(Stored::New)
    }

    /// The oldest unexpired envelopes for the signer of `req`, up to one response's worth.
    pub fn fetch(&mut self, req: &FetchRequest, now: Timestamp) -> Result<Fetched, AccessError> {
        self.check_access(&req.holder, req.issued_at, now)?;
        req.verify()?;
        self.expire(now);
        let held = self
            .boxes
            .get(&req.recipient)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut bytes = 0;
        let page: Vec<Envelope> = held
            .iter()
            .take(MAX_FETCH_BATCH)
            .take_while(|h| {
                bytes += h.size;
                bytes <= MAX_BATCH_BYTES
            })
            .map(|h| h.envelope.clone())
            .collect();
        let remaining = u32::try_from(held.len() - page.len()).unwrap_or(u32::MAX);
        Ok(Fetched {
            envelopes: page,
            remaining,
        })
    }

    /// Deletes the acknowledged envelopes of the signer of `req`; returns how many.
    pub fn ack(&mut self, req: &AckRequest, now: Timestamp) -> Result<usize, AccessError> {
        self.check_access(&req.holder, req.issued_at, now)?;
        req.verify()?;
        let Some(held) = self.boxes.get_mut(&req.recipient) else {
            return Ok(0);
        };
        let before = held.len();
        let (senders, total) = (&mut self.senders, &mut self.total_bytes);
        held.retain(|h| {
            let keep = !req.ids.contains(&h.envelope.id);
            if !keep {
                release(senders, total, h);
            }
            keep
        });
        let deleted = before - held.len();
        if held.is_empty() {
            self.boxes.remove(&req.recipient);
        }
        Ok(deleted)
    }

    /// Drops envelopes past their TTL; returns how many.
    pub fn expire(&mut self, now: Timestamp) -> usize {
        let mut dropped = 0;
        let (senders, total) = (&mut self.senders, &mut self.total_bytes);
        self.boxes.retain(|_, held| {
            held.retain(|h| {
                let keep = h.expires_at > now;
                if !keep {
                    release(senders, total, h);
                    dropped += 1;
                }
                keep
            });
            !held.is_empty()
        });
        dropped
    }

    /// When the next envelope expires: call [`Self::expire`] then.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.boxes.values().flatten().map(|h| h.expires_at).min()
    }

    /// How many envelopes this holder keeps for `recipient`, and their size.
    pub fn recipient_usage(&self, recipient: &PeerId) -> Quota {
        let held = self
            .boxes
            .get(recipient)
            .map(Vec::as_slice)
            .unwrap_or_default();
        Quota {
            messages: held.len(),
            bytes: held.iter().map(|h| h.size).sum(),
        }
    }

    /// What `sender` has stored here over all recipients.
    pub fn sender_usage(&self, sender: &PeerId) -> Quota {
        self.senders
            .get(sender)
            .copied()
            .unwrap_or_default()
            .as_quota()
    }

    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// Ids held for a recipient, oldest first.
    pub fn held_ids(&self, recipient: &PeerId) -> Vec<MessageId> {
        self.boxes
            .get(recipient)
            .into_iter()
            .flatten()
            .map(|h| h.envelope.id)
            .collect()
    }

    /// Cheap checks first, so that unauthenticated requests cost no signature verification.
    fn check_access(
        &self,
        holder: &PeerId,
        issued_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), AccessError> {
        if *holder != self.me {
            return Err(AccessError::WrongHolder { holder: *holder });
        }
        let skew = self.config.max_clock_skew;
        if issued_at < now.saturating_sub(skew) || issued_at > now.saturating_add(skew) {
            return Err(AccessError::BadTime { issued_at });
        }
        Ok(())
    }
}

fn release(senders: &mut HashMap<PeerId, Usage>, total: &mut usize, h: &Held) {
    *total -= h.size;
    if let Some(u) = senders.get_mut(&h.envelope.from) {
        u.sub(h.size);
        if u.messages == 0 {
            senders.remove(&h.envelope.from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Identity;
    use crate::wire::{DirectMessage, Letter};
    use proptest::prelude::*;
    use rand::{SeedableRng, rngs::StdRng};

    const T0: Timestamp = Timestamp(1_700_000_000_000);

    fn id(n: u8) -> Identity {
        Identity::from_seed([n; 32])
    }
    fn holder() -> Identity {
        id(100)
    }
    fn mid(n: u16) -> MessageId {
        let mut id = [0; 16];
        id[..2].copy_from_slice(&n.to_be_bytes());
        MessageId(id)
    }
    fn envelope(
        from: &Identity,
        to: &Identity,
        n: u16,
        body_len: usize,
        at: Timestamp,
    ) -> Envelope {
        let m = DirectMessage::new(
            from,
            mid(n),
            to.peer_id(),
            n.into(),
            at,
            "x".repeat(body_len),
        )
        .unwrap();
        Envelope::seal(
            from,
            &Letter::Message(m),
            at,
            &mut StdRng::seed_from_u64(n.into()),
        )
        .unwrap()
    }
    fn store(config: Config) -> MailboxStore {
        MailboxStore::new(holder().peer_id(), config)
    }
    fn fetch(s: &mut MailboxStore, who: &Identity, now: Timestamp) -> Result<Fetched, AccessError> {
        s.fetch(&FetchRequest::new(who, holder().peer_id(), now), now)
    }

    #[test]
    fn store_fetch_ack_and_open() {
        let (alice, bob) = (id(1), id(2));
        let mut s = store(Config::default());
        let env = envelope(&alice, &bob, 1, 10, T0);
        assert_eq!(s.store(env.clone(), T0), Ok(Stored::New));
        assert_eq!(s.store(env.clone(), T0), Ok(Stored::Duplicate));
        let page = fetch(&mut s, &bob, T0).unwrap();
        assert_eq!(
            page,
            Fetched {
                envelopes: vec![env.clone()],
                remaining: 0
            }
        );
        assert!(
            matches!(page.envelopes[0].open(&bob).unwrap(), Letter::Message(m) if m.body == "x".repeat(10))
        );
        let ack = AckRequest::new(&bob, holder().peer_id(), T0, vec![env.id]).unwrap();
        assert_eq!(s.ack(&ack, T0), Ok(1));
        assert!(fetch(&mut s, &bob, T0).unwrap().envelopes.is_empty());
        assert_eq!(s.total_bytes(), 0);
        assert_eq!(
            s.sender_usage(&alice.peer_id()),
            Quota {
                messages: 0,
                bytes: 0
            }
        );
    }

    #[test]
    fn only_the_recipient_can_fetch_or_delete() {
        let (alice, bob, eve) = (id(1), id(2), id(3));
        let mut s = store(Config::default());
        let env = envelope(&alice, &bob, 1, 10, T0);
        s.store(env.clone(), T0).unwrap();
        // Eve signs a request naming Bob as the recipient.
        let mut req = FetchRequest::new(&eve, holder().peer_id(), T0);
        req.recipient = bob.peer_id();
        assert!(matches!(s.fetch(&req, T0), Err(AccessError::Invalid(_))));
        let mut ack = AckRequest::new(&eve, holder().peer_id(), T0, vec![env.id]).unwrap();
        ack.recipient = bob.peer_id();
        assert!(s.ack(&ack, T0).is_err());
        // Eve's own (valid) ack cannot touch Bob's mailbox.
        let own = AckRequest::new(&eve, holder().peer_id(), T0, vec![env.id]).unwrap();
        assert_eq!(s.ack(&own, T0), Ok(0));
        // A request for another holder, or a stale one, is refused.
        let other = FetchRequest::new(&bob, id(101).peer_id(), T0);
        assert!(matches!(
            s.fetch(&other, T0),
            Err(AccessError::WrongHolder { .. })
        ));
        let stale = FetchRequest::new(&bob, holder().peer_id(), T0);
        let later = T0.saturating_add(Duration::from_secs(3600));
        assert_eq!(
            s.fetch(&stale, later).unwrap_err().refusal(),
            Refusal::BadTime
        );
        assert_eq!(s.held_ids(&bob.peer_id()), vec![env.id]);
    }

    #[test]
    fn forged_envelopes_are_not_stored() {
        let (alice, bob, mallory) = (id(1), id(2), id(66));
        let mut s = store(Config::default());
        let mut env = envelope(&mallory, &bob, 1, 10, T0);
        env.from = alice.peer_id();
        assert_eq!(s.store(env, T0).unwrap_err().refusal(), Refusal::Invalid);
        assert_eq!(s.total_bytes(), 0);
    }

    #[test]
    fn flooding_one_recipient_hits_quotas_and_spares_others() {
        let (flooder, victim, other_sender, bystander) = (id(1), id(2), id(3), id(4));
        let q = Quota {
            messages: 5,
            bytes: 1 << 20,
        };
        let mut s = store(
            Config::default()
                .with_recipient_quota(q)
                .with_sender_quota(Quota {
                    messages: 3,
                    bytes: 1 << 20,
                }),
        );
        for n in 0..3 {
            s.store(envelope(&flooder, &victim, n, 10, T0), T0).unwrap();
        }
        // Per-sender quota: the flooder is refused, to anyone.
        let err = s
            .store(envelope(&flooder, &victim, 3, 10, T0), T0)
            .unwrap_err();
        assert_eq!(err.refusal(), Refusal::SenderFull);
        assert!(matches!(
            s.store(envelope(&flooder, &bystander, 4, 10, T0), T0),
            Err(StoreError::SenderFull { .. })
        ));
        // Per-recipient quota: the victim's mailbox fills up...
        s.store(envelope(&other_sender, &victim, 10, 10, T0), T0)
            .unwrap();
        s.store(envelope(&id(5), &victim, 11, 10, T0), T0).unwrap();
        let err = s
            .store(envelope(&id(6), &victim, 12, 10, T0), T0)
            .unwrap_err();
        assert_eq!(err.refusal(), Refusal::RecipientFull);
        assert!(err.to_string().contains("full"));
        // ...while other recipients are unaffected.
        assert_eq!(
            s.store(envelope(&other_sender, &bystander, 13, 10, T0), T0),
            Ok(Stored::New)
        );
        assert_eq!(s.recipient_usage(&victim.peer_id()).messages, 5);
    }

    #[test]
    fn byte_quotas_and_holder_total() {
        let (a, b) = (id(1), id(2));
        let big = 20_000;
        let one = envelope(&a, &b, 0, big, T0).stored_size();
        let mut s = store(Config::default().with_recipient_quota(Quota {
            messages: 100,
            bytes: 2 * one,
        }));
        s.store(envelope(&a, &b, 0, big, T0), T0).unwrap();
        s.store(envelope(&a, &b, 1, big, T0), T0).unwrap();
        assert!(matches!(
            s.store(envelope(&a, &b, 2, big, T0), T0),
            Err(StoreError::RecipientFull { .. })
        ));
        let mut s = store(Config::default().with_max_total_bytes(one));
        s.store(envelope(&a, &b, 0, big, T0), T0).unwrap();
        assert_eq!(
            s.store(envelope(&a, &id(3), 1, 1, T0), T0),
            Err(StoreError::HolderFull)
        );
    }

    #[test]
    fn envelopes_expire_after_the_ttl() {
        let (a, b) = (id(1), id(2));
        let mut s = store(Config::default());
        s.store(envelope(&a, &b, 0, 1, T0), T0).unwrap();
        let expiry = T0.saturating_add(MAILBOX_TTL);
        assert_eq!(s.poll_timeout(), Some(expiry));
        assert_eq!(s.expire(expiry.saturating_sub(Duration::from_millis(1))), 0);
        assert_eq!(s.expire(expiry), 1);
        assert_eq!((s.total_bytes(), s.poll_timeout()), (0, None));
        // Already too old, or dated in the future: refused.
        let old = envelope(&a, &b, 1, 1, T0);
        assert!(matches!(
            s.store(old, expiry),
            Err(StoreError::BadTime { .. })
        ));
        let future = envelope(&a, &b, 2, 1, T0.saturating_add(Duration::from_secs(3600)));
        assert!(matches!(
            s.store(future, T0),
            Err(StoreError::BadTime { .. })
        ));
        // Fetch never returns expired mail even before expire() runs.
        s.store(envelope(&a, &b, 3, 1, T0), T0).unwrap();
        assert!(fetch(&mut s, &b, expiry).unwrap().envelopes.is_empty());
    }

    #[test]
    fn fetch_pages_oldest_first() {
        let (a, b) = (id(1), id(2));
        let mut s = store(Config::default());
        let n = MAX_FETCH_BATCH as u16 + 10;
        for i in 0..n {
            s.store(envelope(&a, &b, i, 1, T0), T0).unwrap();
        }
        let page = fetch(&mut s, &b, T0).unwrap();
        assert_eq!(page.envelopes.len(), MAX_FETCH_BATCH);
        assert_eq!(page.remaining, 10);
        assert_eq!(page.envelopes[0].id, mid(0));
        let ids = page.envelopes.iter().map(|e| e.id).collect::<Vec<_>>();
        for chunk in ids.chunks(crate::wire::MAX_ACK_IDS) {
            s.ack(
                &AckRequest::new(&b, holder().peer_id(), T0, chunk.to_vec()).unwrap(),
                T0,
            )
            .unwrap();
        }
        let page = fetch(&mut s, &b, T0).unwrap();
        assert_eq!(
            (page.envelopes.len(), page.remaining, page.envelopes[0].id),
            (10, 0, mid(MAX_FETCH_BATCH as u16))
        );
    }

    proptest! {
        /// Under any mix of senders, recipients, sizes, acks and expiry, usage never passes a
        /// quota and the accounting matches what is held.
        #[test]
        fn quotas_always_hold(ops in proptest::collection::vec((0u8..4, 0u8..4, 0usize..3000, 0u8..10), 1..60)) {
            let q = Quota { messages: 4, bytes: 8000 };
            let mut s = store(Config::default().with_recipient_quota(q).with_sender_quota(q).with_max_total_bytes(20_000));
            let ids: Vec<Identity> = (10..14).map(id).collect();
            let mut now = T0;
            for (i, (from, to, len, op)) in ops.into_iter().enumerate() {
                let (from, to) = (&ids[from as usize], &ids[to as usize]);
                match op {
                    0 => {
                        let held = s.held_ids(&to.peer_id());
                        let ack = AckRequest::new(to, holder().peer_id(), now, held.into_iter().take(2).collect()).unwrap();
                        s.ack(&ack, now).unwrap();
                    }
                    1 => now = now.saturating_add(MAILBOX_TTL / 3),
                    _ => { let _ = s.store(envelope(from, to, i as u16, len, now), now); }
                }
                s.expire(now);
                let mut total = 0;
                for p in &ids {
                    let r = s.recipient_usage(&p.peer_id());
                    let snd = s.sender_usage(&p.peer_id());
                    prop_assert!(r.messages <= q.messages && r.bytes <= q.bytes);
                    prop_assert!(snd.messages <= q.messages && snd.bytes <= q.bytes);
                    total += r.bytes;
                }
                prop_assert_eq!(total, s.total_bytes());
                prop_assert!(total <= 20_000);
            }
        }
    }
}
