//! Space keys and holders on the node: making and granting keys, sealing what this node
//! writes for the holders of its spaces, taking what holders keep, and being a holder.

use std::{collections::HashMap, sync::Arc, time::Duration};

use libp2p_identity::PeerId;

use super::db::{Batch, HeldRecord};
use super::{Docs, DocsEvent, Inner, SpaceState, apply_ops, budget, now_ms};
use crate::proto::doc::{DocId, Document, SignedChange};
use crate::proto::holder::{Admitted, Entry};
use crate::proto::keys::{
    self, Bundle, Envelope, Grant, MAX_ENVELOPE_BYTES, SpaceKey, holder_tag, open_bundle,
    open_grant, seal_bundle,
};
use crate::proto::membership::SpaceId;
use crate::wire::{self, Request, Response};

/// Holders each envelope is left with.
pub const HOLDERS: usize = 3;
/// Sealed envelopes kept per space until their key arrives.
const MAX_UNREADABLE: usize = 1024;
/// Bundles waiting for a current key or a reachable holder, per space.
const MAX_OUTBOX: usize = 4096;

/// What the node keeps per space for end-to-end encryption.
#[derive(Default)]
pub(super) struct Crypt {
    pub keys: HashMap<keys::KeyId, SpaceKey>,
    /// (key, member) → grant.
    pub grants: HashMap<(keys::KeyId, PeerId), Grant>,
    /// Sealed envelopes whose key has not arrived.
    pub unreadable: Vec<Envelope>,
    /// Envelope ids already taken.
    pub seen: std::collections::HashSet<[u8; 32]>,
    /// Per holder: the last sequence number taken.
    pub cursors: HashMap<PeerId, u64>,
    /// Bundles not yet sealed (no current key) or not yet left with a holder.
    pub outbox: Vec<Bundle>,
    /// Grants not yet left with a holder.
    pub grant_outbox: Vec<Grant>,
}

impl Docs {
    /// Makes a new key for `s` (creation, rotation after a removal) and grants it to every
    /// member, this node included.
    pub(super) fn rotate(&self, s: &mut SpaceState, batch: &mut Batch) {
        let key = SpaceKey::new(&s.space, &self.key);
        let id = s.space.id();
        batch.keys.push((id, key.clone()));
        s.crypt.keys.insert(key.id, key.clone());
        for member in s.space.members().into_keys() {
            self.grant_key(s, &key, member, batch);
        }
    }

    /// Grants every key this node holds to `member` (a newcomer reads the history).
    pub(super) fn grant_all(&self, s: &mut SpaceState, member: PeerId, batch: &mut Batch) {
        let keys: Vec<SpaceKey> = s.crypt.keys.values().cloned().collect();
        for k in keys {
            self.grant_key(s, &k, member, batch);
        }
    }

    fn grant_key(&self, s: &mut SpaceState, key: &SpaceKey, member: PeerId, batch: &mut Batch) {
        if s.crypt.grants.contains_key(&(key.id, member)) {
            return;
        }
        if let Some(g) = keys::grant(&s.space.id(), key, member, &self.key) {
            batch.grants.push((s.space.id(), g.clone()));
            s.crypt.grants.insert((key.id, member), g.clone());
            s.crypt.grant_outbox.push(g);
        }
    }

    /// An admin's duty on every tick: members without the current key get a grant of it
    /// (someone added concurrently with a rotation), and a removal not yet followed by a key
    /// gets one.
    pub(super) fn mend_keys(&self, s: &mut SpaceState, batch: &mut Batch) {
        if !s.space.is_admin(&self.me) {
            return;
        }
        let current = keys::current(&s.space, s.crypt.keys.values()).cloned();
        match current {
            None => {
                // Rotate only when this node saw the removal first-hand or nobody else has made
                // a key for it yet (two admins may both rotate; members pick one).
                if !s.crypt.keys.is_empty() || s.space.owner() == self.me {
                    self.rotate(s, batch);
                }
            }
            Some(k) => {
                for member in s.space.members().into_keys() {
                    self.grant_key(s, &k, member, batch);
                }
            }
        }
    }

    /// Takes grants a peer forwarded: stores them, opens those for this node.
    pub(super) fn take_grants(
        &self,
        s: &mut SpaceState,
        grants: &[Grant],
        batch: &mut Batch,
    ) -> bool {
        let mut new_key = false;
        let space = s.space.id();
        for g in grants {
            // Only an admin's signed grant to a member is kept or forwarded.
            if s.crypt.grants.contains_key(&(g.key, g.member))
                || s.space.role(&g.member).is_none()
                || !s.space.is_admin(&g.by)
                || !g.verify(&space)
            {
                continue;
            }
            if g.member == self.me {
                match open_grant(&self.identity, &space, &g.enc, &g.ct) {
                    Some(k) if k.id == g.key => {
                        if let std::collections::hash_map::Entry::Vacant(e) =
                            s.crypt.keys.entry(k.id)
                        {
                            batch.keys.push((space, k.clone()));
                            e.insert(k);
                            new_key = true;
                        }
                    }
                    _ => continue,
                }
            }
            s.crypt.grants.insert((g.key, g.member), g.clone());
            batch.grants.push((space, g.clone()));
        }
        new_key
    }

    /// Queues what this node wrote for the holders of `s`.
    pub(super) fn for_holders(&self, s: &mut SpaceState, bundle: Bundle) {
        if s.crypt.outbox.len() < MAX_OUTBOX {
            s.crypt.outbox.push(bundle);
        }
    }

    /// Seals and leaves with holders everything queued for `space`. What cannot be sealed (no
    /// current key) or left (no holder reachable) stays queued for the next tick.
    pub(super) async fn flush(self: &Arc<Self>, space: SpaceId) {
        let (envelopes, grants) = {
            let mut inner = self.lock();
            let Some(s) = inner.spaces.get_mut(&space).filter(|s| s.joined) else {
                return;
            };
            let Some(key) = keys::current(&s.space, s.crypt.keys.values()).cloned() else {
                return;
            };
            let bundles = std::mem::take(&mut s.crypt.outbox);
            let grants = std::mem::take(&mut s.crypt.grant_outbox);
            let envs: Vec<(Bundle, Envelope)> = split(bundles)
                .into_iter()
                .map(|b| {
                    let e = seal_bundle(&space, &key, &b);
                    (b, e)
                })
                .collect();
            (envs, grants)
        };
        if envelopes.is_empty() && grants.is_empty() {
            return;
        }
        let tag = holder_tag(&space);
        let holders: Vec<PeerId> = match self.net.closest_peers(tag.to_vec()).await {
            Ok(p) => p
                .into_iter()
                .filter(|p| *p != self.me)
                .take(HOLDERS)
                .collect(),
            Err(e) => {
                tracing::debug!(%space, "no holders found: {e}");
                Vec::new()
            }
        };
        let mut failed_bundles = Vec::new();
        let mut failed_grants = Vec::new();
        for (bundle, env) in envelopes {
            if !self.leave_with(&holders, tag, &env).await {
                failed_bundles.push(bundle);
            }
        }
        for g in grants {
            if !self
                .leave_with(&holders, tag, &Envelope::of_grant(&g))
                .await
            {
                failed_grants.push(g);
            }
        }
        if !failed_bundles.is_empty() || !failed_grants.is_empty() {
            let mut inner = self.lock();
            if let Some(s) = inner.spaces.get_mut(&space) {
                s.crypt.outbox.extend(failed_bundles);
                s.crypt.outbox.truncate(MAX_OUTBOX);
                s.crypt.grant_outbox.extend(failed_grants);
            }
        }
    }

    /// Leaves an envelope with the holders; true when at least one took it.
    async fn leave_with(&self, holders: &[PeerId], tag: [u8; 32], env: &Envelope) -> bool {
        let req = wire::encode(&Request::Hold {
            tag,
            envelope: env.to_bytes(),
        });
        let mut ok = false;
        for h in holders {
            match self
                .net
                .request(*h, wire::PROTOCOL, req.clone(), Duration::from_secs(10))
                .await
            {
                Ok(b) if matches!(Response::decode(&b), Ok(Response::Held)) => ok = true,
                Ok(_) => {}
                Err(e) => tracing::debug!(holder = %h, "hold: {e}"),
            }
        }
        ok
    }

    /// Takes from the holders of `space` what they keep after the last cursor.
    pub(super) async fn pull(self: &Arc<Self>, space: SpaceId) {
        let tag = holder_tag(&space);
        let holders: Vec<PeerId> = match self.net.closest_peers(tag.to_vec()).await {
            Ok(p) => p
                .into_iter()
                .filter(|p| *p != self.me)
                .take(HOLDERS)
                .collect(),
            Err(_) => return,
        };
        for h in holders {
            // Bounded: each page is at most MAX_FETCH_BYTES, and a holder keeps at most its
            // per-space quota.
            for _ in 0..64 {
                let since = {
                    let inner = self.lock();
                    match inner.spaces.get(&space) {
                        Some(s) => s.crypt.cursors.get(&h).copied(),
                        None => return,
                    }
                };
                let req = wire::encode(&Request::Fetch { tag, since });
                let Ok(bytes) = self
                    .net
                    .request(h, wire::PROTOCOL, req, Duration::from_secs(20))
                    .await
                else {
                    break;
                };
                let Ok(Response::Fetched { envelopes, more }) = Response::decode(&bytes) else {
                    break;
                };
                let mut batch = Batch::default();
                let mut events = Vec::new();
                {
                    let mut guard = self.lock();
                    let inner = &mut *guard;
                    let Some(mut s) = inner.spaces.remove(&space) else {
                        return;
                    };
                    for (seq, raw) in envelopes {
                        let cursor = s.crypt.cursors.entry(h).or_insert(seq);
                        *cursor = (*cursor).max(seq);
                        let id = *blake3::hash(&raw).as_bytes();
                        if !s.crypt.seen.insert(id) {
                            continue;
                        }
                        if let Some(env) = Envelope::from_bytes(&raw) {
                            self.take_envelope(inner, &mut s, env, &h, &mut batch, &mut events);
                        }
                    }
                    inner.spaces.insert(space, s);
                    // Stored before the lock is released, as in a sync.
                    if self.store_now(&batch).is_err() {
                        return;
                    }
                }
                self.after_receive(events);
                if !more {
                    break;
                }
            }
        }
    }

    /// Opens an envelope from a holder and applies what it carries (every change and
    /// operation checked as if a member had sent it).
    fn take_envelope(
        &self,
        inner: &mut Inner,
        s: &mut SpaceState,
        env: Envelope,
        from: &PeerId,
        batch: &mut Batch,
        events: &mut Vec<DocsEvent>,
    ) {
        match env {
            Envelope::Grant { enc, ct } => {
                let space = s.space.id();
                if let Some(k) = open_grant(&self.identity, &space, &enc, &ct)
                    && !s.crypt.keys.contains_key(&k.id)
                {
                    // Re-granted to ourselves, signed by us, so it can be forwarded like any.
                    if let Some(g) = keys::grant(&space, &k, self.me, &self.key) {
                        s.crypt.grants.insert((k.id, self.me), g.clone());
                        batch.grants.push((space, g));
                    }
                    batch.keys.push((space, k.clone()));
                    s.crypt.keys.insert(k.id, k);
                    // Retry what was waiting for a key.
                    let waiting = std::mem::take(&mut s.crypt.unreadable);
                    for e in waiting {
                        self.take_envelope(inner, s, e, from, batch, events);
                    }
                }
            }
            Envelope::Sealed { key, nonce, ct } => {
                let Some(k) = s.crypt.keys.get(&key).cloned() else {
                    if s.crypt.unreadable.len() < MAX_UNREADABLE {
                        s.crypt.unreadable.push(Envelope::Sealed { key, nonce, ct });
                    }
                    return;
                };
                let Some(bundle) = open_bundle(&s.space.id(), &k, &nonce, &ct) else {
                    return;
                };
                if apply_ops(s, &bundle.ops, batch) {
                    events.push(DocsEvent::MembersChanged {
                        space: s.space.id().to_string(),
                        members: s.space.members().len(),
                    });
                }
                for (doc, changes) in bundle.docs {
                    self.take_changes(inner, s, doc, changes, from, batch, events);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn take_changes(
        &self,
        inner: &mut Inner,
        s: &mut SpaceState,
        doc: DocId,
        changes: Vec<SignedChange>,
        from: &PeerId,
        batch: &mut Batch,
        events: &mut Vec<DocsEvent>,
    ) {
        let space = s.space.id();
        if !s.docs.contains_key(&doc) && s.docs.len() >= budget::MAX_DOCS_PER_SPACE {
            return;
        }
        let d = s
            .docs
            .entry(doc)
            .or_insert_with(|| super::DocState::new(Document::empty(space, doc, &self.me), 0, 0));
        let was_empty = d.doc.is_empty();
        let before = super::assigned_pairs(&d.doc);
        let received = d.doc.receive(&s.space, changes);
        inner.stats.changes_received += received.applied.len() as u64;
        inner.stats.changes_refused += received.refused.len() as u64;
        super::record(
            batch, events, doc, d, &s.space, &received, was_empty, from, &before,
        );
        if d.doc.is_empty() && d.doc.pending() == 0 {
            s.docs.remove(&doc);
        } else {
            inner.doc_space.insert(doc, space);
        }
    }

    // ---- the holder's side ----

    pub(super) async fn hold(
        &self,
        peer: PeerId,
        tag: [u8; 32],
        bytes: Vec<u8>,
    ) -> Result<(), String> {
        let refusals = self.net.admission();
        self.hold_rate
            .admit(&peer, 1.0, refusals, budget::REFUSED_HOLD_RATE)?;
        self.hold_bytes.admit(
            &peer,
            bytes.len() as f64,
            refusals,
            budget::REFUSED_HOLD_BYTES,
        )?;
        if bytes.len() > MAX_ENVELOPE_BYTES || Envelope::from_bytes(&bytes).is_none() {
            refusals.refuse(budget::REFUSED_MALFORMED);
            return Err("not an envelope".into());
        }
        let at_ms = now_ms();
        let entry = Entry {
            id: *blake3::hash(&bytes).as_bytes(),
            size: bytes.len() as u64,
            sender: peer,
            at_ms,
        };
        let seq = {
            let mut inner = self.lock();
            match inner.holder.admit(tag, entry) {
                Ok(Admitted::Known) => return Ok(()),
                Ok(Admitted::New(seq)) => seq,
                Err(e) => {
                    refusals.refuse(budget::REFUSED_HOLD_FULL);
                    return Err(format!("{}: {e}", budget::REFUSED_HOLD_FULL));
                }
            }
        };
        let mut batch = Batch::default();
        batch.held.push((
            tag,
            seq,
            HeldRecord {
                sender: peer,
                at_ms,
                bytes,
            },
        ));
        self.persist(batch).await.map_err(|e| e.to_string())
    }

    pub(super) async fn fetch(
        &self,
        peer: PeerId,
        tag: [u8; 32],
        since: Option<u64>,
    ) -> Result<Response, String> {
        self.fetch_rate
            .admit(&peer, 1.0, self.net.admission(), budget::REFUSED_FETCH_RATE)?;
        let (seqs, more) = self
            .lock()
            .holder
            .page(&tag, since, wire::MAX_FETCH_BYTES as u64);
        let db = self.db.clone();
        let envelopes = tokio::task::spawn_blocking(move || db.held(&tag, &seqs))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(Response::Fetched { envelopes, more })
    }

    /// Drops held envelopes past their time to live.
    pub(super) async fn expire_held(&self) {
        let gone = self.lock().holder.expire(now_ms());
        if !gone.is_empty() {
            let batch = Batch {
                drop_held: gone,
                ..Batch::default()
            };
            let _ = self.persist(batch).await;
        }
    }
}

/// Splits bundles so that each seals under the envelope limit (a document's changes may be
/// split across bundles; each change stays whole).
fn split(bundles: Vec<Bundle>) -> Vec<Bundle> {
    let limit = MAX_ENVELOPE_BYTES - 64 * 1024;
    let mut out: Vec<Bundle> = Vec::new();
    let mut size = 0;
    let mut cur = Bundle::default();
    let push = |cur: &mut Bundle, size: &mut usize, out: &mut Vec<Bundle>| {
        if !cur.ops.is_empty() || !cur.docs.is_empty() {
            out.push(std::mem::take(cur));
        }
        *size = 0;
    };
    for b in bundles {
        let ops_size: usize = b.ops.iter().map(|o| o.len() + 4).sum();
        if size + ops_size > limit {
            push(&mut cur, &mut size, &mut out);
        }
        size += ops_size;
        cur.ops.extend(b.ops);
        for (doc, changes) in b.docs {
            for c in changes {
                let n = c.bytes.len() + c.sig.len() + 8;
                if size + n > limit {
                    push(&mut cur, &mut size, &mut out);
                }
                size += n;
                match cur.docs.last_mut() {
                    Some((d, list)) if *d == doc => list.push(c),
                    _ => cur.docs.push((doc, vec![c])),
                }
            }
        }
    }
    push(&mut cur, &mut size, &mut out);
    out
}
