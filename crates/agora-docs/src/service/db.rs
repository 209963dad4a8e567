//! What groupware keeps in the node's redb database. Every write commits durably before the
//! change it stores is acknowledged (to the API caller or to the syncing peer).
//!
//! - `docs_spaces`: space id → [`SpaceMeta`].
//! - `docs_ops`: space id ‖ seq (u32 BE) → an encoded membership operation, in the order they
//!   were applied (a topological order, which loading needs).
//! - `docs_docs`: doc id → [`DocMeta`].
//! - `docs_changes`: doc id ‖ seq (u64 BE) → a postcard [`SignedChange`], in the order applied.
//! - `docs_snapshots`: doc id → the seq it covers (u64 BE) ‖ a postcard [`Snapshot`]: the
//!   document as of that seq. Writing one removes the changes before that seq; a snapshot never
//!   replaces one that covers more. Loading skips a change the snapshot already holds.
//! - `docs_invites`: space id → [`InviteRecord`].
//! - `docs_keys`: space id ‖ key id → a [`SpaceKey`] this node holds (secret: the data
//!   directory is private to the node's user).
//! - `docs_grants`: space id ‖ key id ‖ member peer id → the [`Grant`] of that key to that
//!   member (what members forward, so every member's key reaches it).
//! - `docs_held`: holder tag ‖ seq (u64 BE) → [`HeldRecord`]: envelopes held for others.

use std::sync::Arc;

use libp2p_identity::PeerId;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::proto::doc::{DocId, Kind, SignedChange, Snapshot};
use crate::proto::keys::{Grant, KeyId, SpaceKey};
use crate::proto::membership::SpaceId;

const SPACES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs_spaces");
const OPS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs_ops");
const DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs_docs");
const CHANGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs_changes");
const SNAPSHOTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs_snapshots");
const INVITES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs_invites");
const KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs_keys");
const GRANTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs_grants");
const HELD: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs_held");

/// An envelope held for others.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeldRecord {
    pub sender: PeerId,
    pub at_ms: u64,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("groupware database: {0}")]
pub struct DbError(String);

fn e(err: impl std::fmt::Display) -> DbError {
    DbError(err.to_string())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpaceMeta {
    /// Joined (created here, or an accepted invite): synced with members.
    pub joined: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DocMeta {
    pub space: SpaceId,
    pub kind: Option<Kind>,
}

/// An invite this node received and has not accepted yet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InviteRecord {
    pub ops: Vec<Vec<u8>>,
    pub from: PeerId,
    pub at_ms: u64,
}

/// One write: what a change of state stores.
#[derive(Debug, Default)]
pub struct Batch {
    pub spaces: Vec<(SpaceId, SpaceMeta)>,
    pub ops: Vec<(SpaceId, u32, Vec<u8>)>,
    pub docs: Vec<(DocId, DocMeta)>,
    pub changes: Vec<(DocId, u64, SignedChange)>,
    /// Snapshots: the document, the seq it covers (the changes before it), the snapshot.
    pub snapshots: Vec<(DocId, u64, Snapshot)>,
    pub invites: Vec<(SpaceId, InviteRecord)>,
    pub drop_invites: Vec<SpaceId>,
    pub drop_spaces: Vec<SpaceId>,
    pub drop_docs: Vec<DocId>,
    pub keys: Vec<(SpaceId, SpaceKey)>,
    pub grants: Vec<(SpaceId, Grant)>,
    pub held: Vec<([u8; 32], u64, HeldRecord)>,
    pub drop_held: Vec<([u8; 32], u64)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.spaces.is_empty()
            && self.ops.is_empty()
            && self.docs.is_empty()
            && self.changes.is_empty()
            && self.snapshots.is_empty()
            && self.invites.is_empty()
            && self.drop_invites.is_empty()
            && self.drop_spaces.is_empty()
            && self.drop_docs.is_empty()
            && self.keys.is_empty()
            && self.grants.is_empty()
            && self.held.is_empty()
            && self.drop_held.is_empty()
    }
}

/// A stored document: its latest snapshot (with the seq it covers) and the changes stored
/// after it, with their seqs.
#[derive(Debug)]
pub struct LoadedDoc {
    pub id: DocId,
    pub meta: DocMeta,
    pub snapshot: Option<(u64, Snapshot)>,
    pub changes: Vec<(u64, SignedChange)>,
}

/// Everything stored, as loaded at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub spaces: Vec<(SpaceId, SpaceMeta, Vec<Vec<u8>>)>,
    pub docs: Vec<LoadedDoc>,
    pub invites: Vec<(SpaceId, InviteRecord)>,
    pub keys: Vec<(SpaceId, SpaceKey)>,
    pub grants: Vec<(SpaceId, Grant)>,
    /// Held envelopes without their bytes.
    pub held: Vec<([u8; 32], u64, crate::proto::holder::Entry)>,
}

fn grant_key(space: &SpaceId, key: &KeyId, member: &PeerId) -> Vec<u8> {
    let mut k = key2(&space.0, &key.0);
    k.extend_from_slice(&member.to_bytes());
    k
}

pub struct DocsDb {
    db: Arc<agora_store::Db>,
}

fn key2(a: &[u8; 32], seq: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(32 + seq.len());
    k.extend_from_slice(a);
    k.extend_from_slice(seq);
    k
}

fn id32(bytes: &[u8]) -> Result<[u8; 32], DbError> {
    bytes
        .get(..32)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| DbError("a key shorter than 32 bytes".into()))
}

impl DocsDb {
    pub fn open(db: Arc<agora_store::Db>) -> Result<Self, DbError> {
        let tx = db.redb().begin_write().map_err(e)?;
        for t in [
            SPACES, OPS, DOCS, CHANGES, SNAPSHOTS, INVITES, KEYS, GRANTS, HELD,
        ] {
            tx.open_table(t).map_err(e)?;
        }
        tx.commit().map_err(e)?;
        Ok(DocsDb { db })
    }

    /// Writes a batch in one durable transaction.
    pub fn write(&self, b: &Batch) -> Result<(), DbError> {
        if b.is_empty() {
            return Ok(());
        }
        let tx = self.db.redb().begin_write().map_err(e)?;
        {
            let mut spaces = tx.open_table(SPACES).map_err(e)?;
            for (id, meta) in &b.spaces {
                spaces
                    .insert(&id.0[..], &postcard::to_allocvec(meta).map_err(e)?[..])
                    .map_err(e)?;
            }
            let mut ops = tx.open_table(OPS).map_err(e)?;
            for (space, seq, op) in &b.ops {
                ops.insert(&key2(&space.0, &seq.to_be_bytes())[..], &op[..])
                    .map_err(e)?;
            }
            let mut docs = tx.open_table(DOCS).map_err(e)?;
            for (id, meta) in &b.docs {
                docs.insert(&id.0[..], &postcard::to_allocvec(meta).map_err(e)?[..])
                    .map_err(e)?;
            }
            let mut changes = tx.open_table(CHANGES).map_err(e)?;
            for (doc, seq, c) in &b.changes {
                changes
                    .insert(
                        &key2(&doc.0, &seq.to_be_bytes())[..],
                        &postcard::to_allocvec(c).map_err(e)?[..],
                    )
                    .map_err(e)?;
            }
            let mut snapshots = tx.open_table(SNAPSHOTS).map_err(e)?;
            for (doc, upto, snap) in &b.snapshots {
                let stored = snapshots.get(&doc.0[..]).map_err(e)?.and_then(|v| {
                    v.value()
                        .get(..8)
                        .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
                });
                if stored.is_some_and(|s| s >= *upto) {
                    continue;
                }
                let mut v = upto.to_be_bytes().to_vec();
                v.extend_from_slice(&snap.to_bytes());
                snapshots.insert(&doc.0[..], &v[..]).map_err(e)?;
                if *upto > 0 {
                    let lo = key2(&doc.0, &[0; 8]);
                    let hi = key2(&doc.0, &(upto - 1).to_be_bytes());
                    changes
                        .retain_in(&lo[..]..=&hi[..], |_, _| false)
                        .map_err(e)?;
                }
            }
            let mut invites = tx.open_table(INVITES).map_err(e)?;
            for (space, inv) in &b.invites {
                invites
                    .insert(&space.0[..], &postcard::to_allocvec(inv).map_err(e)?[..])
                    .map_err(e)?;
            }
            let mut keys = tx.open_table(KEYS).map_err(e)?;
            for (space, k) in &b.keys {
                keys.insert(
                    &key2(&space.0, &k.id.0)[..],
                    &postcard::to_allocvec(k).map_err(e)?[..],
                )
                .map_err(e)?;
            }
            let mut grants = tx.open_table(GRANTS).map_err(e)?;
            for (space, g) in &b.grants {
                grants
                    .insert(
                        &grant_key(space, &g.key, &g.member)[..],
                        &postcard::to_allocvec(g).map_err(e)?[..],
                    )
                    .map_err(e)?;
            }
            let mut held = tx.open_table(HELD).map_err(e)?;
            for (tag, seq, r) in &b.held {
                held.insert(
                    &key2(tag, &seq.to_be_bytes())[..],
                    &postcard::to_allocvec(r).map_err(e)?[..],
                )
                .map_err(e)?;
            }
            for (tag, seq) in &b.drop_held {
                held.remove(&key2(tag, &seq.to_be_bytes())[..]).map_err(e)?;
            }
            for space in &b.drop_invites {
                invites.remove(&space.0[..]).map_err(e)?;
            }
            for space in &b.drop_spaces {
                spaces.remove(&space.0[..]).map_err(e)?;
                let lo = key2(&space.0, &[0; 4]);
                let hi = key2(&space.0, &[0xff; 4]);
                ops.retain_in(&lo[..]..=&hi[..], |_, _| false).map_err(e)?;
            }
            for space in &b.drop_spaces {
                for t in [&mut keys, &mut grants] {
                    let lo = key2(&space.0, &[0; 16]);
                    let mut hi = key2(&space.0, &[0xff; 16]);
                    hi.extend_from_slice(&[0xff; 64]);
                    t.retain_in(&lo[..]..=&hi[..], |_, _| false).map_err(e)?;
                }
            }
            for doc in &b.drop_docs {
                docs.remove(&doc.0[..]).map_err(e)?;
                let lo = key2(&doc.0, &[0; 8]);
                let hi = key2(&doc.0, &[0xff; 8]);
                changes
                    .retain_in(&lo[..]..=&hi[..], |_, _| false)
                    .map_err(e)?;
                snapshots.remove(&doc.0[..]).map_err(e)?;
            }
        }
        tx.commit().map_err(e)?;
        Ok(())
    }

    /// Reads everything. A record that does not decode is an error naming it: a corrupt store
    /// is reported, never silently shortened.
    pub fn load(&self) -> Result<Loaded, DbError> {
        let tx = self.db.redb().begin_read().map_err(e)?;
        let mut out = Loaded::default();
        let spaces = tx.open_table(SPACES).map_err(e)?;
        let ops = tx.open_table(OPS).map_err(e)?;
        for row in spaces.iter().map_err(e)? {
            let (k, v) = row.map_err(e)?;
            let id = crate::OpId(id32(k.value())?);
            let meta: SpaceMeta = postcard::from_bytes(v.value())
                .map_err(|err| DbError(format!("space {id}: {err}")))?;
            let lo = key2(&id.0, &[0; 4]);
            let hi = key2(&id.0, &[0xff; 4]);
            let mut log = Vec::new();
            for row in ops.range(&lo[..]..=&hi[..]).map_err(e)? {
                let (_, v) = row.map_err(e)?;
                log.push(v.value().to_vec());
            }
            out.spaces.push((id, meta, log));
        }
        let docs = tx.open_table(DOCS).map_err(e)?;
        let changes = tx.open_table(CHANGES).map_err(e)?;
        let snapshots = tx.open_table(SNAPSHOTS).map_err(e)?;
        for row in docs.iter().map_err(e)? {
            let (k, v) = row.map_err(e)?;
            let id = DocId(id32(k.value())?);
            let meta: DocMeta = postcard::from_bytes(v.value())
                .map_err(|err| DbError(format!("document {id}: {err}")))?;
            let lo = key2(&id.0, &[0; 8]);
            let hi = key2(&id.0, &[0xff; 8]);
            let mut list = Vec::new();
            for row in changes.range(&lo[..]..=&hi[..]).map_err(e)? {
                let (k, v) = row.map_err(e)?;
                let seq = k
                    .value()
                    .get(32..40)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| DbError(format!("a change key of document {id}")))?;
                let c = postcard::from_bytes(v.value())
                    .map_err(|err| DbError(format!("a change of document {id}: {err}")))?;
                list.push((seq, c));
            }
            let snapshot = match snapshots.get(&id.0[..]).map_err(e)? {
                None => None,
                Some(v) => {
                    let v = v.value();
                    let upto = v
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes)
                        .ok_or_else(|| DbError(format!("the snapshot of document {id}")))?;
                    let snap = Snapshot::from_bytes(&v[8..])
                        .map_err(|err| DbError(format!("the snapshot of document {id}: {err}")))?;
                    Some((upto, snap))
                }
            };
            out.docs.push(LoadedDoc {
                id,
                meta,
                snapshot,
                changes: list,
            });
        }
        let invites = tx.open_table(INVITES).map_err(e)?;
        for row in invites.iter().map_err(e)? {
            let (k, v) = row.map_err(e)?;
            let id = crate::OpId(id32(k.value())?);
            let inv: InviteRecord = postcard::from_bytes(v.value())
                .map_err(|err| DbError(format!("invite to {id}: {err}")))?;
            out.invites.push((id, inv));
        }
        let keys = tx.open_table(KEYS).map_err(e)?;
        for row in keys.iter().map_err(e)? {
            let (k, v) = row.map_err(e)?;
            let space = crate::OpId(id32(k.value())?);
            let key: SpaceKey = postcard::from_bytes(v.value())
                .map_err(|err| DbError(format!("a key of space {space}: {err}")))?;
            out.keys.push((space, key));
        }
        let grants = tx.open_table(GRANTS).map_err(e)?;
        for row in grants.iter().map_err(e)? {
            let (k, v) = row.map_err(e)?;
            let space = crate::OpId(id32(k.value())?);
            let g: Grant = postcard::from_bytes(v.value())
                .map_err(|err| DbError(format!("a key grant of space {space}: {err}")))?;
            out.grants.push((space, g));
        }
        let held = tx.open_table(HELD).map_err(e)?;
        for row in held.iter().map_err(e)? {
            let (k, v) = row.map_err(e)?;
            let tag = id32(k.value())?;
            let seq = k
                .value()
                .get(32..40)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| DbError("a held envelope's key is not tag ‖ seq".into()))?;
            let r: HeldRecord = postcard::from_bytes(v.value())
                .map_err(|err| DbError(format!("a held envelope: {err}")))?;
            out.held.push((
                tag,
                seq,
                crate::proto::holder::Entry {
                    id: *blake3::hash(&r.bytes).as_bytes(),
                    size: r.bytes.len() as u64,
                    sender: r.sender,
                    at_ms: r.at_ms,
                },
            ));
        }
        Ok(out)
    }

    /// The bytes of held envelopes `seqs` of `tag` (missing ones skipped).
    pub fn held(&self, tag: &[u8; 32], seqs: &[u64]) -> Result<Vec<(u64, Vec<u8>)>, DbError> {
        let tx = self.db.redb().begin_read().map_err(e)?;
        let held = tx.open_table(HELD).map_err(e)?;
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(v) = held.get(&key2(tag, &seq.to_be_bytes())[..]).map_err(e)? {
                let r: HeldRecord = postcard::from_bytes(v.value())
                    .map_err(|err| DbError(format!("a held envelope: {err}")))?;
                out.push((*seq, r.bytes));
            }
        }
        Ok(out)
    }
}
