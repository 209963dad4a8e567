//! The groupware service: spaces and documents of this node, their storage, and sync with
//! other members over [`PROTOCOL`](crate::wire::PROTOCOL) on the node's request layer.
//!
//! # When members sync
//! - When a member connects (identify), for every joined space both belong to.
//! - Right after a local change, with every connected member (one round trip carrying the
//!   change when the member's heads are remembered from the last sync).
//! - Every [`RESYNC`] with connected members, which repairs anything a push missed.
//!
//! # State and locks
//! `Docs::inner` holds every space and document in memory; it is a std mutex, never held
//! across an `.await`. Writes to the database happen after the lock is released and before the
//! change is acknowledged (the API reply, the sync response).

mod crypt;
mod db;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agora_net::{Handle, InboundRequest, admission::SharedRateLimiter};
use automerge::ChangeHash;
use libp2p_identity::{PeerId, ed25519};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::SignedChange;
use crate::proto::doc::{DocError, DocId, Document, Kind, TaskState, TaskUpdate};
use crate::proto::membership::{Action, Applied, OpError, Role, SignedOp, Space, SpaceId};
use crate::proto::sync::{Session, SyncMsg};
use crate::wire::{self, Members, Request, Response};
use crypt::Crypt;
use db::{Batch, DocMeta, InviteRecord, SpaceMeta};
pub use db::{DbError, DocsDb};

/// How often connected members are synced even when nothing was pushed.
pub const RESYNC: Duration = Duration::from_secs(15);
/// How long one sync request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Admission budgets of groupware: what one peer may make this node do or hold. Refusals are
/// counted on `agora_refusals_total` under the `REFUSED_*` names.
pub mod budget {
    use agora_net::admission::Rate;

    /// Sync requests one peer may send: 20 a second, bursts of 200.
    pub const SYNC_REQUESTS: Rate = Rate::new(20.0, 200.0);
    /// Change bytes one peer may send: 8 MiB a second, bursts of 64 MiB.
    pub const CHANGE_BYTES: Rate = Rate::new(8.0 * 1024.0 * 1024.0, 64.0 * 1024.0 * 1024.0);
    /// Invites one peer may deliver: one a second, bursts of 5.
    pub const INVITES: Rate = Rate::new(1.0, 5.0);
    /// Invites held (not yet accepted) at most, all inviters together, and per inviter.
    pub const MAX_INVITES: usize = 256;
    pub const MAX_INVITES_PER_PEER: usize = 16;
    /// Documents a space may hold.
    pub const MAX_DOCS_PER_SPACE: usize = 4096;
    /// Peers each rate budget tracks at once.
    pub const MAX_RATE_PEERS: usize = 4096;

    pub const REFUSED_SYNC_RATE: &str = "docs.sync.peer_rate";
    pub const REFUSED_CHANGE_BYTES: &str = "docs.sync.bytes";
    pub const REFUSED_NOT_MEMBER: &str = "docs.sync.not_member";
    pub const REFUSED_MALFORMED: &str = "docs.malformed";
    pub const REFUSED_INVITE_RATE: &str = "docs.invite.peer_rate";
    pub const REFUSED_INVITES_FULL: &str = "docs.invite.full";
    pub const REFUSED_CHANGE: &str = "docs.change.refused";

    /// Envelopes one peer may leave with this node as a holder: 10 a second, bursts of 100…
    pub const HOLDS: Rate = Rate::new(10.0, 100.0);
    /// …and their bytes: 2 MiB a second, bursts of 16 MiB. Stored bytes are bounded by
    /// [`crate::proto::holder::Limits`] (per sender, per space, in all).
    pub const HOLD_BYTES: Rate = Rate::new(2.0 * 1024.0 * 1024.0, 16.0 * 1024.0 * 1024.0);
    /// Fetches one peer may make of a holder: 10 a second, bursts of 50.
    pub const FETCHES: Rate = Rate::new(10.0, 50.0);

    pub const REFUSED_HOLD_RATE: &str = "docs.hold.peer_rate";
    pub const REFUSED_HOLD_BYTES: &str = "docs.hold.bytes";
    pub const REFUSED_HOLD_FULL: &str = "docs.hold.full";
    pub const REFUSED_FETCH_RATE: &str = "docs.fetch.peer_rate";
}

#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    #[error("no space {0} here; `agora space list` shows the spaces and invites of this node")]
    NoSpace(String),
    #[error("no document {0} here; `agora doc list SPACE` shows a space's documents")]
    NoDoc(String),
    #[error("no invite to space {0}; ask an admin of the space to invite this node's peer id")]
    NoInvite(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Bad(String),
    #[error(transparent)]
    Doc(#[from] DocError),
    #[error("membership: {0}")]
    Op(#[from] OpError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Something that happened, for `/v1/events`.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DocsEvent {
    DocChanged {
        space: String,
        doc: String,
        title: String,
        heads: Vec<String>,
        /// Authors of the new changes.
        by: Vec<String>,
        local: bool,
    },
    Invited {
        space: String,
        name: String,
        from: String,
        role: Role,
    },
    MembersChanged {
        space: String,
        members: usize,
    },
    TaskAssigned {
        space: String,
        doc: String,
        task: String,
        title: String,
        assignee: String,
        by: String,
        /// Assigned by an edit on this node (the node then tells the assignee by chat when it
        /// is a contact).
        local: bool,
    },
    ChangeRefused {
        space: String,
        doc: String,
        from: String,
        reason: String,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    pub peer: String,
    pub role: Role,
}

#[derive(Clone, Debug, Serialize)]
pub struct DocSummary {
    pub doc: String,
    pub title: String,
    pub kind: Option<Kind>,
    pub changes: usize,
    pub heads: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SpaceView {
    pub space: String,
    pub name: String,
    pub owner: String,
    /// This node's role; `None` once removed.
    pub role: Option<Role>,
    pub members: Vec<MemberView>,
    pub docs: Vec<DocSummary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SpaceSummary {
    pub space: String,
    pub name: String,
    pub owner: String,
    pub role: Option<Role>,
    pub members: usize,
    pub docs: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct InviteView {
    pub space: String,
    pub name: String,
    pub from: String,
    pub role: Option<Role>,
    pub at: u64,
}

/// A document's content, whatever its kind.
#[derive(Clone, Debug, Serialize)]
pub struct DocView {
    pub doc: String,
    pub space: String,
    pub title: String,
    pub kind: Option<Kind>,
    pub heads: Vec<String>,
    pub changes: usize,
    pub authors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<crate::proto::doc::Task>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub posts: Option<Vec<crate::proto::doc::Post>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Value>,
    pub attachments: Vec<crate::proto::doc::Attachment>,
}

/// A task with where it lives (`agora task list`).
#[derive(Clone, Debug, Serialize)]
pub struct TaskView {
    pub space: String,
    pub doc: String,
    #[serde(flatten)]
    pub task: crate::proto::doc::Task,
}

/// A local edit.
#[derive(Clone, Debug)]
pub enum Edit {
    SetText(String),
    Append(String),
    Rename(String),
    AddTask {
        title: String,
        assignee: Option<PeerId>,
        due: Option<String>,
    },
    UpdateTask {
        task: String,
        update: TaskUpdate,
    },
    Post {
        text: String,
        reply_to: Option<String>,
    },
    SetFields(serde_json::Value),
    /// A file already shared as a blob.
    Attach {
        name: String,
        hash: String,
        size: u64,
    },
}

/// What an edit did.
#[derive(Clone, Debug, Serialize)]
pub struct Edited {
    pub doc: String,
    pub heads: Vec<String>,
    pub changed: bool,
    /// The new task's or post's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Counters for `/metrics`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DocsStats {
    pub spaces: usize,
    pub docs: usize,
    pub changes: usize,
    pub invites: usize,
    pub changes_received: u64,
    pub changes_refused: u64,
    pub sync_rounds: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Envelopes and bytes this node holds for others.
    pub held_envelopes: usize,
    pub held_bytes: u64,
    /// Sealed envelopes taken from holders that no key of this node opens (yet).
    pub unreadable: usize,
    /// Document snapshots written (each replaces the changes stored one by one before it).
    pub snapshots_written: u64,
}

struct SpaceState {
    space: Space,
    joined: bool,
    docs: HashMap<DocId, DocState>,
    crypt: Crypt,
}

struct DocState {
    doc: Document,
    /// Next storage sequence number.
    seq: u64,
    /// The storage sequence number the stored snapshot covers (changes before it).
    snapped: u64,
    /// Each peer's heads at the end of the last sync with it.
    synced: HashMap<PeerId, Vec<ChangeHash>>,
}

/// Changes stored one by one before the next snapshot of the document replaces them.
const SNAPSHOT_EVERY: u64 = 256;

impl DocState {
    fn new(doc: Document, seq: u64, snapped: u64) -> DocState {
        DocState {
            doc,
            seq,
            snapped,
            synced: HashMap::new(),
        }
    }

    /// Records an applied change `c` for storage.
    fn store(&mut self, id: DocId, c: SignedChange, batch: &mut Batch) {
        batch.changes.push((id, self.seq, c));
        self.seq += 1;
    }

    /// Adds a snapshot of the document to `batch` once enough changes were stored since the
    /// last one (the snapshot replaces them: loading takes automerge's load time).
    fn snapshot_due(&mut self, id: DocId, batch: &mut Batch) {
        if self.seq - self.snapped >= SNAPSHOT_EVERY {
            batch.snapshots.push((id, self.seq, self.doc.snapshot()));
            self.snapped = self.seq;
        }
    }
}

#[derive(Default)]
struct Inner {
    spaces: HashMap<SpaceId, SpaceState>,
    doc_space: HashMap<DocId, SpaceId>,
    invites: HashMap<SpaceId, InviteRecord>,
    /// Invites signed here and not delivered yet: invitee → spaces.
    outbox: HashMap<PeerId, BTreeSet<SpaceId>>,
    /// Envelopes this node holds for others.
    holder: crate::proto::holder::Holder,
    stats: DocsStats,
}

/// The groupware service of a node.
pub struct Docs {
    net: Handle,
    key: ed25519::Keypair,
    identity: agora_chat::crypto::Identity,
    me: PeerId,
    db: Arc<DocsDb>,
    inner: Mutex<Inner>,
    events: broadcast::Sender<DocsEvent>,
    sync_rate: SharedRateLimiter<PeerId>,
    byte_rate: SharedRateLimiter<PeerId>,
    invite_rate: SharedRateLimiter<PeerId>,
    hold_rate: SharedRateLimiter<PeerId>,
    hold_bytes: SharedRateLimiter<PeerId>,
    fetch_rate: SharedRateLimiter<PeerId>,
    /// Sessions running (initiator side): (peer, space) → another run is wanted after it.
    running: Mutex<HashMap<(PeerId, SpaceId), bool>>,
    /// Snapshots written (counted outside `inner`: stores happen under its lock).
    snapshots_written: std::sync::atomic::AtomicU64,
    stop: CancellationToken,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hex_heads(h: &[ChangeHash]) -> Vec<String> {
    h.iter().map(|h| hex::encode(h.0)).collect()
}

fn parse_space(s: &str) -> Result<SpaceId, DocsError> {
    let bytes = hex::decode(s)
        .map_err(|_| DocsError::Bad(format!("{s:?} is not a space id (64 hex digits)")))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| DocsError::Bad(format!("{s:?} is not a space id (64 hex digits)")))?;
    Ok(crate::OpId(arr))
}

/// Parses a space id given on the command line or in a URL.
pub fn space_id(s: &str) -> Result<SpaceId, DocsError> {
    parse_space(s)
}

/// Parses a document id.
pub fn doc_id(s: &str) -> Result<DocId, DocsError> {
    s.parse().map_err(DocsError::Bad)
}

impl SpaceState {
    fn summary(&self) -> SpaceSummary {
        SpaceSummary {
            space: self.space.id().to_string(),
            name: self.space.name().to_string(),
            owner: self.space.owner().to_string(),
            role: None,
            members: self.space.members().len(),
            docs: self.docs.len(),
        }
    }
}

impl SpaceState {
    /// One sync step of document `id` with `peer`: makes an empty replica of a document this
    /// node lacks when `msg` carries changes and `create` allows it, applies what arrived,
    /// records it for storage and events, and remembers `peer`'s heads once the document is
    /// quiet. Returns the reply, `None` when the document is skipped.
    #[allow(clippy::too_many_arguments)]
    fn step_doc(
        &mut self,
        me: &PeerId,
        id: DocId,
        msg: SyncMsg,
        session: &mut Session,
        peer: &PeerId,
        create: bool,
        stats: &mut DocsStats,
        batch: &mut Batch,
        events: &mut Vec<DocsEvent>,
    ) -> Option<SyncMsg> {
        let space_id = self.space.id();
        let d = match self.docs.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                if msg.changes.is_empty() || !create {
                    return None;
                }
                e.insert(DocState::new(Document::empty(space_id, id, me), 0, 0))
            }
        };
        let was_empty = d.doc.is_empty();
        let before = assigned_pairs(&d.doc);
        let (received, reply) = session.step(&mut d.doc, &self.space, msg);
        stats.changes_received += received.applied.len() as u64;
        stats.changes_refused += received.refused.len() as u64;
        record(
            batch,
            events,
            id,
            d,
            &self.space,
            &received,
            was_empty,
            peer,
            &before,
        );
        if reply.is_quiet() {
            d.synced.insert(*peer, session.their_heads.clone());
        }
        Some(reply)
    }
}

impl Docs {
    /// Loads what is stored, serves the protocol and starts the sync tasks.
    pub async fn start(
        net: Handle,
        keypair: &libp2p_identity::Keypair,
        db: Arc<agora_store::Db>,
        stop: CancellationToken,
    ) -> Result<Arc<Docs>, DocsError> {
        let key = keypair
            .clone()
            .try_into_ed25519()
            .map_err(|_| DocsError::Bad("groupware needs an ed25519 node key".into()))?;
        let me = keypair.public().to_peer_id();
        let ddb = {
            let db = db.clone();
            tokio::task::spawn_blocking(move || DocsDb::open(db))
                .await
                .map_err(|e| DocsError::Bad(e.to_string()))??
        };
        let ddb = Arc::new(ddb);
        let loaded = {
            let ddb = ddb.clone();
            tokio::task::spawn_blocking(move || ddb.load())
                .await
                .map_err(|e| DocsError::Bad(e.to_string()))??
        };
        let mut inner = Inner::default();
        for (id, meta, log) in loaded.spaces {
            let mut ops = log.into_iter();
            let Some(first) = ops.next() else { continue };
            let mut space = Space::from_create(SignedOp::from_bytes(&first)?)?;
            for op in ops {
                space.apply(SignedOp::from_bytes(&op)?)?;
            }
            if space.id() != id {
                return Err(DocsError::Bad(format!(
                    "stored space {id} has another create operation"
                )));
            }
            inner.spaces.insert(
                id,
                SpaceState {
                    space,
                    joined: meta.joined,
                    docs: HashMap::new(),
                    crypt: Crypt::default(),
                },
            );
        }
        // Documents stored as changes only (or with many after their snapshot) get a snapshot
        // now, so that the next start loads them in automerge's time.
        let mut snapshots = Batch::default();
        for ld in loaded.docs {
            let (id, meta) = (ld.id, ld.meta);
            let Some(s) = inner.spaces.get_mut(&meta.space) else {
                tracing::warn!(doc = %id, "stored document of an unknown space; ignored");
                continue;
            };
            let snapped = ld.snapshot.as_ref().map_or(0, |(upto, _)| *upto);
            let seq = ld
                .changes
                .last()
                .map_or(snapped, |(seq, _)| seq + 1)
                .max(snapped);
            let tail: Vec<SignedChange> = ld.changes.into_iter().map(|(_, c)| c).collect();
            let doc = match ld.snapshot {
                Some((_, snap)) => Document::restore(meta.space, id, &me, snap, tail),
                None => Document::load(meta.space, id, &me, tail),
            };
            let mut doc = doc.map_err(|e| DocsError::Bad(format!("stored document {id}: {e}")))?;
            doc.recheck(&s.space);
            let mut d = DocState::new(doc, seq, snapped);
            d.snapshot_due(id, &mut snapshots);
            s.docs.insert(id, d);
            inner.doc_space.insert(id, meta.space);
        }
        let snapshots_written = snapshots.snapshots.len() as u64;
        if !snapshots.is_empty() {
            let ddb = ddb.clone();
            tokio::task::spawn_blocking(move || ddb.write(&snapshots))
                .await
                .map_err(|e| DocsError::Bad(e.to_string()))??;
        }
        inner.invites = loaded.invites.into_iter().collect();
        for (space, key) in loaded.keys {
            if let Some(s) = inner.spaces.get_mut(&space) {
                s.crypt.keys.insert(key.id, key);
            }
        }
        for (space, g) in loaded.grants {
            if let Some(s) = inner.spaces.get_mut(&space) {
                s.crypt.grants.insert((g.key, g.member), g);
            }
        }
        inner.holder = crate::proto::holder::Holder::new(Default::default());
        for (tag, seq, entry) in loaded.held {
            inner.holder.restore(tag, seq, entry);
        }
        let (events, _) = broadcast::channel(1024);
        let docs = Arc::new(Docs {
            net: net.clone(),
            identity: agora_chat::crypto::Identity::from_ed25519(key.clone()),
            key,
            me,
            db: ddb,
            inner: Mutex::new(inner),
            events,
            sync_rate: SharedRateLimiter::new(budget::SYNC_REQUESTS, budget::MAX_RATE_PEERS),
            byte_rate: SharedRateLimiter::new(budget::CHANGE_BYTES, budget::MAX_RATE_PEERS),
            invite_rate: SharedRateLimiter::new(budget::INVITES, budget::MAX_RATE_PEERS),
            hold_rate: SharedRateLimiter::new(budget::HOLDS, budget::MAX_RATE_PEERS),
            hold_bytes: SharedRateLimiter::new(budget::HOLD_BYTES, budget::MAX_RATE_PEERS),
            fetch_rate: SharedRateLimiter::new(budget::FETCHES, budget::MAX_RATE_PEERS),
            running: Mutex::new(HashMap::new()),
            snapshots_written: snapshots_written.into(),
            stop,
        });
        let (tx, rx) = mpsc::channel(64);
        net.serve(wire::PROTOCOL, tx)
            .map_err(|e| DocsError::Bad(format!("cannot serve {}: {e}", wire::PROTOCOL)))?;
        tokio::spawn(docs.clone().serve(rx));
        tokio::spawn(docs.clone().watch());
        Ok(docs)
    }

    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    pub fn events(&self) -> broadcast::Receiver<DocsEvent> {
        self.events.subscribe()
    }

    fn emit(&self, e: DocsEvent) {
        let _ = self.events.send(e);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a batch now, on this thread: for paths that must store before they release the
    /// lock (a few milliseconds of fsync, paid only when something arrived).
    fn store_now(&self, batch: &Batch) -> Result<(), DocsError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.db.write(batch)?;
        self.count_snapshots(batch);
        Ok(())
    }

    fn count_snapshots(&self, batch: &Batch) {
        self.snapshots_written.fetch_add(
            batch.snapshots.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    async fn persist(&self, batch: Batch) -> Result<(), DocsError> {
        if batch.is_empty() {
            return Ok(());
        }
        let db = self.db.clone();
        let batch = tokio::task::spawn_blocking(move || db.write(&batch).map(|()| batch))
            .await
            .map_err(|e| DocsError::Bad(e.to_string()))??;
        self.count_snapshots(&batch);
        Ok(())
    }

    pub fn stats(&self) -> DocsStats {
        let inner = self.lock();
        let mut s = inner.stats.clone();
        s.spaces = inner.spaces.values().filter(|s| s.joined).count();
        s.docs = inner.spaces.values().map(|s| s.docs.len()).sum();
        s.changes = inner
            .spaces
            .values()
            .flat_map(|s| s.docs.values())
            .map(|d| d.doc.len())
            .sum();
        s.invites = inner.invites.len();
        s.held_envelopes = inner.holder.envelopes();
        s.held_bytes = inner.holder.total_bytes();
        s.unreadable = inner
            .spaces
            .values()
            .map(|s| s.crypt.unreadable.len())
            .sum();
        s.snapshots_written = self
            .snapshots_written
            .load(std::sync::atomic::Ordering::Relaxed);
        s
    }

    // ---- spaces ----

    pub async fn create_space(self: &Arc<Self>, name: &str) -> Result<SpaceView, DocsError> {
        let (space, create) = Space::create(name, &self.key, now_ms())?;
        let id = space.id();
        let mut batch = Batch::default();
        batch.spaces.push((id, SpaceMeta { joined: true }));
        batch.ops.push((id, 0, create.to_bytes()));
        let mut state = SpaceState {
            space,
            joined: true,
            docs: HashMap::new(),
            crypt: Crypt::default(),
        };
        self.rotate(&mut state, &mut batch);
        self.for_holders(
            &mut state,
            crate::proto::keys::Bundle {
                ops: vec![create.to_bytes()],
                docs: Vec::new(),
            },
        );
        self.persist(batch).await?;
        let view = {
            let mut inner = self.lock();
            inner.spaces.insert(id, state);
            self.view(&inner, &id)
        };
        self.flush_soon(id);
        Ok(view)
    }

    fn flush_soon(self: &Arc<Self>, id: SpaceId) {
        let this = self.clone();
        tokio::spawn(async move { this.flush(id).await });
    }

    fn view(&self, inner: &Inner, id: &SpaceId) -> SpaceView {
        let s = &inner.spaces[id];
        let mut docs: Vec<DocSummary> = s.docs.iter().map(|(id, d)| summary(id, &d.doc)).collect();
        docs.sort_by(|a, b| a.title.cmp(&b.title).then(a.doc.cmp(&b.doc)));
        SpaceView {
            space: id.to_string(),
            name: s.space.name().to_string(),
            owner: s.space.owner().to_string(),
            role: s.space.role(&self.me),
            members: s
                .space
                .members()
                .into_iter()
                .map(|(peer, role)| MemberView {
                    peer: peer.to_string(),
                    role,
                })
                .collect(),
            docs,
        }
    }

    /// Joined spaces and pending invites.
    pub fn spaces(&self) -> (Vec<SpaceSummary>, Vec<InviteView>) {
        let inner = self.lock();
        let mut spaces: Vec<SpaceSummary> = inner
            .spaces
            .values()
            .filter(|s| s.joined)
            .map(|s| SpaceSummary {
                role: s.space.role(&self.me),
                ..s.summary()
            })
            .collect();
        spaces.sort_by(|a, b| a.name.cmp(&b.name).then(a.space.cmp(&b.space)));
        let mut invites: Vec<InviteView> = inner
            .invites
            .iter()
            .filter_map(|(id, inv)| {
                let space = space_from_ops(&inv.ops).ok()?;
                Some(InviteView {
                    space: id.to_string(),
                    name: space.name().to_string(),
                    from: inv.from.to_string(),
                    role: space.role(&self.me),
                    at: inv.at_ms,
                })
            })
            .collect();
        invites.sort_by_key(|i| i.at);
        (spaces, invites)
    }

    pub fn space(&self, id: &SpaceId) -> Result<SpaceView, DocsError> {
        let inner = self.lock();
        match inner.spaces.get(id) {
            Some(s) if s.joined => Ok(self.view(&inner, id)),
            _ => Err(DocsError::NoSpace(id.to_string())),
        }
    }

    /// Signs a membership action as this node, applies and stores it, and pushes it to the
    /// connected members.
    async fn act(self: &Arc<Self>, id: &SpaceId, action: Action) -> Result<SignedOp, DocsError> {
        let (op, seq, removed) = {
            let mut inner = self.lock();
            let s = match inner.spaces.get_mut(id) {
                Some(s) if s.joined => s,
                _ => return Err(DocsError::NoSpace(id.to_string())),
            };
            if !s.space.is_admin(&self.me) {
                return Err(DocsError::Denied(format!(
                    "only admins change membership; this node is {} in {}",
                    role_name(s.space.role(&self.me)),
                    s.space.name()
                )));
            }
            let removed = matches!(action, Action::Remove { .. } | Action::ChangeRole { .. });
            let added = match &action {
                Action::Add { member, .. } => Some(*member),
                _ => None,
            };
            let seq = s.space.len() as u32;
            let op = s.space.act(action, &self.key, now_ms())?;
            (op, seq, (removed, added))
        };
        let (removed, added) = removed;
        let mut batch = Batch::default();
        batch.ops.push((*id, seq, op.to_bytes()));
        if removed {
            // Recheck and anchor every document: what this admin has seen stays.
            let mut inner = self.lock();
            let inner = &mut *inner;
            let s = inner.spaces.get_mut(id).expect("checked above");
            let mut anchors = Vec::new();
            for (doc_id, d) in s.docs.iter_mut() {
                d.doc.recheck(&s.space);
                if d.doc.is_empty() {
                    continue;
                }
                if let Ok(c) = d.doc.anchor(&s.space, &self.key, now_ms() as i64) {
                    d.store(*doc_id, c.clone(), &mut batch);
                    d.snapshot_due(*doc_id, &mut batch);
                    anchors.push((*doc_id, vec![c]));
                }
            }
            // A removal rotates the key: what is written from now on is sealed with a key the
            // removed member never gets.
            if s.space.removals().contains(&op.id()) {
                self.rotate(s, &mut batch);
            }
            let ops = s.space.ops().map(|o| o.to_bytes()).collect();
            self.for_holders(s, crate::proto::keys::Bundle { ops, docs: anchors });
        } else {
            let mut inner = self.lock();
            let s = inner.spaces.get_mut(id).expect("checked above");
            if let Some(member) = added {
                self.grant_all(s, member, &mut batch);
            }
            let ops = s.space.ops().map(|o| o.to_bytes()).collect();
            self.for_holders(
                s,
                crate::proto::keys::Bundle {
                    ops,
                    docs: Vec::new(),
                },
            );
        }
        self.persist(batch).await?;
        {
            let inner = self.lock();
            if let Some(s) = inner.spaces.get(id) {
                self.emit(DocsEvent::MembersChanged {
                    space: id.to_string(),
                    members: s.space.members().len(),
                });
            }
        }
        self.flush_soon(*id);
        Ok(op)
    }

    /// Invites `peer` with `role`: signs the add, and hands the invitee the membership log
    /// (now if it is reachable, else when it next connects). Returns whether it was delivered.
    pub async fn invite(
        self: &Arc<Self>,
        id: &SpaceId,
        peer: PeerId,
        role: Role,
    ) -> Result<bool, DocsError> {
        if role == Role::Owner {
            return Err(DocsError::Bad(
                "a space has one owner; invite as admin, editor or reader".into(),
            ));
        }
        if peer == self.me {
            return Err(DocsError::Bad("this node is already in the space".into()));
        }
        let existing = {
            let inner = self.lock();
            match inner.spaces.get(id) {
                Some(s) if s.joined => s.space.role(&peer),
                _ => return Err(DocsError::NoSpace(id.to_string())),
            }
        };
        match existing {
            Some(r) if r == role => {}
            Some(_) => {
                self.act(id, Action::ChangeRole { member: peer, role })
                    .await?;
            }
            None => {
                self.act(id, Action::Add { member: peer, role }).await?;
            }
        }
        self.lock().outbox.entry(peer).or_default().insert(*id);
        self.push_members(id);
        Ok(self.deliver_invites(peer).await)
    }

    /// Sends the invites waiting for `peer`. True when all went through.
    async fn deliver_invites(&self, peer: PeerId) -> bool {
        let pending: Vec<(SpaceId, Vec<Vec<u8>>)> = {
            let inner = self.lock();
            inner
                .outbox
                .get(&peer)
                .into_iter()
                .flatten()
                .filter_map(|id| {
                    let s = inner.spaces.get(id)?;
                    Some((*id, s.space.ops().map(|o| o.to_bytes()).collect()))
                })
                .collect()
        };
        let mut all = true;
        for (id, ops) in pending {
            let req = wire::encode(&Request::Invite { ops });
            match self
                .net
                .request(peer, wire::PROTOCOL, req, Duration::from_secs(10))
                .await
            {
                Ok(bytes) if matches!(Response::decode(&bytes), Ok(Response::Invited)) => {
                    let mut inner = self.lock();
                    if let Some(set) = inner.outbox.get_mut(&peer) {
                        set.remove(&id);
                        if set.is_empty() {
                            inner.outbox.remove(&peer);
                        }
                    }
                }
                Ok(_) => all = false,
                Err(e) => {
                    tracing::debug!(%peer, "invite not delivered yet: {e}");
                    all = false;
                }
            }
        }
        all
    }

    /// Accepts an invite: the space becomes joined and syncs with its members.
    pub async fn join(self: &Arc<Self>, id: &SpaceId) -> Result<SpaceView, DocsError> {
        let (ops, from) = {
            let inner = self.lock();
            if inner.spaces.get(id).is_some_and(|s| s.joined) {
                return Ok(self.view(&inner, id));
            }
            let inv = inner
                .invites
                .get(id)
                .ok_or_else(|| DocsError::NoInvite(id.to_string()))?;
            (inv.ops.clone(), inv.from)
        };
        let space = space_from_ops(&ops)?;
        if space.role(&self.me).is_none() {
            return Err(DocsError::Denied(
                "the invite was withdrawn: this node is not a member of the space any more".into(),
            ));
        }
        let mut batch = Batch::default();
        batch.spaces.push((*id, SpaceMeta { joined: true }));
        for (i, op) in space.ops().enumerate() {
            batch.ops.push((*id, i as u32, op.to_bytes()));
        }
        batch.drop_invites.push(*id);
        self.persist(batch).await?;
        let view = {
            let mut inner = self.lock();
            inner.invites.remove(id);
            inner.spaces.insert(
                *id,
                SpaceState {
                    space,
                    joined: true,
                    docs: HashMap::new(),
                    crypt: Crypt::default(),
                },
            );
            self.view(&inner, id)
        };
        // Fetch the space from the inviter and whoever else is connected, and from holders.
        self.schedule(from, *id);
        self.sync_connected(*id).await;
        let this = self.clone();
        let space = *id;
        tokio::spawn(async move { this.pull(space).await });
        Ok(view)
    }

    pub async fn remove(self: &Arc<Self>, id: &SpaceId, peer: PeerId) -> Result<(), DocsError> {
        {
            let inner = self.lock();
            let s = inner
                .spaces
                .get(id)
                .ok_or_else(|| DocsError::NoSpace(id.to_string()))?;
            if s.space.role(&peer).is_none() {
                return Err(DocsError::Bad(format!(
                    "{peer} is not a member of {}",
                    s.space.name()
                )));
            }
        }
        self.act(id, Action::Remove { member: peer }).await?;
        self.lock().outbox.remove(&peer);
        self.push_members(id);
        Ok(())
    }

    pub async fn set_role(
        self: &Arc<Self>,
        id: &SpaceId,
        peer: PeerId,
        role: Role,
    ) -> Result<(), DocsError> {
        if role == Role::Owner {
            return Err(DocsError::Bad("nobody can be made owner".into()));
        }
        self.act(id, Action::ChangeRole { member: peer, role })
            .await?;
        self.push_members(id);
        Ok(())
    }

    /// Leaves a space: an admin removes itself first (so the others stop sending to it); every
    /// member then forgets the space's data here. The owner cannot leave.
    pub async fn leave(self: &Arc<Self>, id: &SpaceId) -> Result<(), DocsError> {
        let (role, docs) = {
            let inner = self.lock();
            let s = inner
                .spaces
                .get(id)
                .ok_or_else(|| DocsError::NoSpace(id.to_string()))?;
            (
                s.space.role(&self.me),
                s.docs.keys().copied().collect::<Vec<_>>(),
            )
        };
        if role == Some(Role::Owner) {
            return Err(DocsError::Denied("the owner cannot leave its space".into()));
        }
        if role == Some(Role::Admin) {
            self.act(id, Action::Remove { member: self.me }).await?;
            self.push_members(id);
            // Give the push a moment; the removal also reaches others through any member.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut batch = Batch::default();
        batch.drop_spaces.push(*id);
        batch.drop_docs.extend(docs.iter().copied());
        self.persist(batch).await?;
        let mut inner = self.lock();
        inner.spaces.remove(id);
        for d in docs {
            inner.doc_space.remove(&d);
        }
        Ok(())
    }

    // ---- documents ----

    pub async fn new_doc(
        self: &Arc<Self>,
        id: &SpaceId,
        title: &str,
        kind: Kind,
    ) -> Result<DocSummary, DocsError> {
        let (doc_id, change, summary) = {
            let mut inner = self.lock();
            let s = match inner.spaces.get_mut(id) {
                Some(s) if s.joined => s,
                _ => return Err(DocsError::NoSpace(id.to_string())),
            };
            if s.docs.len() >= budget::MAX_DOCS_PER_SPACE {
                return Err(DocsError::Denied(format!(
                    "a space holds at most {} documents",
                    budget::MAX_DOCS_PER_SPACE
                )));
            }
            let (doc, change) =
                Document::create(&s.space, kind, title, &self.key, now_ms() as i64)?;
            let doc_id = doc.id();
            let summary = summary(&doc_id, &doc);
            s.docs.insert(doc_id, DocState::new(doc, 1, 0));
            inner.doc_space.insert(doc_id, *id);
            (doc_id, change, summary)
        };
        let mut batch = Batch::default();
        batch.docs.push((
            doc_id,
            DocMeta {
                space: *id,
                kind: Some(kind),
            },
        ));
        batch.changes.push((doc_id, 0, change.clone()));
        self.persist(batch).await?;
        if let Some(s) = self.lock().spaces.get_mut(id) {
            self.for_holders(
                s,
                crate::proto::keys::Bundle {
                    ops: Vec::new(),
                    docs: vec![(doc_id, vec![change])],
                },
            );
        }
        self.flush_soon(*id);
        self.emit(DocsEvent::DocChanged {
            space: id.to_string(),
            doc: doc_id.to_string(),
            title: title.to_string(),
            heads: summary.heads.clone(),
            by: vec![self.me.to_string()],
            local: true,
        });
        self.sync_connected_soon(*id);
        Ok(summary)
    }

    pub fn docs(&self, id: &SpaceId) -> Result<Vec<DocSummary>, DocsError> {
        self.space(id).map(|v| v.docs)
    }

    fn with_doc<T>(
        &self,
        doc: &DocId,
        f: impl FnOnce(&mut SpaceState, &mut Inner) -> Result<T, DocsError>,
    ) -> Result<T, DocsError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let space = *inner
            .doc_space
            .get(doc)
            .ok_or_else(|| DocsError::NoDoc(doc.to_string()))?;
        let mut s = inner
            .spaces
            .remove(&space)
            .ok_or_else(|| DocsError::NoDoc(doc.to_string()))?;
        let r = f(&mut s, inner);
        inner.spaces.insert(space, s);
        r
    }

    pub fn doc(&self, id: &DocId) -> Result<DocView, DocsError> {
        self.with_doc(id, |s, _| {
            let d = &mut s
                .docs
                .get_mut(id)
                .ok_or_else(|| DocsError::NoDoc(id.to_string()))?
                .doc;
            let kind = d.kind();
            Ok(DocView {
                doc: id.to_string(),
                space: s.space.id().to_string(),
                title: d.title(),
                kind,
                heads: hex_heads(&d.heads()),
                changes: d.len(),
                authors: d.authors().into_iter().collect(),
                text: (kind == Some(Kind::Note)).then(|| d.text().ok()).flatten(),
                items: (kind == Some(Kind::Tasks))
                    .then(|| d.tasks().ok())
                    .flatten(),
                posts: (kind == Some(Kind::Thread))
                    .then(|| d.posts().ok())
                    .flatten(),
                fields: (kind == Some(Kind::Form))
                    .then(|| d.fields().ok())
                    .flatten(),
                attachments: d.attachments(),
            })
        })
    }

    pub fn history(&self, id: &DocId) -> Result<Vec<crate::proto::doc::HistoryEntry>, DocsError> {
        self.with_doc(id, |s, _| {
            let d = &mut s
                .docs
                .get_mut(id)
                .ok_or_else(|| DocsError::NoDoc(id.to_string()))?
                .doc;
            Ok(d.history())
        })
    }

    /// The document as Markdown (notes: the text; tasks: a checklist; threads: the posts;
    /// forms: a table of fields).
    pub fn markdown(&self, id: &DocId) -> Result<String, DocsError> {
        let v = self.doc(id)?;
        let mut out = format!("# {}\n\n", v.title);
        if let Some(t) = &v.text {
            out.push_str(t);
            if !t.ends_with('\n') {
                out.push('\n');
            }
        }
        for t in v.items.iter().flatten() {
            let mark = match t.state {
                TaskState::Done => "x",
                TaskState::Doing => "~",
                TaskState::Todo => " ",
            };
            out.push_str(&format!("- [{mark}] {}", t.title));
            if let Some(a) = &t.assignee {
                out.push_str(&format!(" (@{a})"));
            }
            if let Some(d) = &t.due {
                out.push_str(&format!(" due {d}"));
            }
            out.push('\n');
        }
        for p in v.posts.iter().flatten() {
            let indent = if p.reply_to.is_some() { "  " } else { "" };
            out.push_str(&format!(
                "{indent}- **{}**: {}\n",
                p.author,
                p.text.replace('\n', " ")
            ));
        }
        if !v.attachments.is_empty() {
            out.push_str("\nAttachments:\n");
            for a in &v.attachments {
                out.push_str(&format!(
                    "- {} ({} bytes, blake3 {})\n",
                    a.name, a.size, a.hash
                ));
            }
        }
        if let Some(serde_json::Value::Object(m)) = &v.fields {
            out.push_str("| field | value |\n|---|---|\n");
            for (k, val) in m {
                out.push_str(&format!("| {k} | {val} |\n"));
            }
        }
        Ok(out)
    }

    /// Tasks of every joined space; `mine`: only those assigned to this node.
    pub fn tasks(&self, mine: bool) -> Vec<TaskView> {
        let me = self.me.to_string();
        let inner = self.lock();
        let mut out = Vec::new();
        for s in inner.spaces.values().filter(|s| s.joined) {
            for (id, d) in &s.docs {
                if d.doc.kind() != Some(Kind::Tasks) {
                    continue;
                }
                for t in d.doc.tasks().unwrap_or_default() {
                    if !mine || t.assignee.as_deref() == Some(me.as_str()) {
                        out.push(TaskView {
                            space: s.space.id().to_string(),
                            doc: id.to_string(),
                            task: t,
                        });
                    }
                }
            }
        }
        out
    }

    /// Applies a local edit as one signed change, stores it, and pushes it to connected members.
    pub async fn edit(self: &Arc<Self>, id: &DocId, edit: Edit) -> Result<Edited, DocsError> {
        let now = now_ms() as i64;
        let assigned_before = self.assigned(id);
        let (space, change, batch, new_id, heads, title) = self.with_doc(id, |s, _| {
            let d = s
                .docs
                .get_mut(id)
                .ok_or_else(|| DocsError::NoDoc(id.to_string()))?;
            let space = &s.space;
            let key = &self.key;
            let (change, new_id) = match &edit {
                Edit::SetText(t) => (d.doc.set_text(space, key, now, t)?, None),
                Edit::Append(t) => (d.doc.append_text(space, key, now, t)?, None),
                Edit::Rename(t) => (d.doc.set_title(space, key, now, t)?, None),
                Edit::AddTask {
                    title,
                    assignee,
                    due,
                } => {
                    let (tid, c) =
                        d.doc
                            .add_task(space, key, now, title, *assignee, due.as_deref())?;
                    (Some(c), Some(tid))
                }
                Edit::UpdateTask { task, update } => {
                    (d.doc.update_task(space, key, now, task, update)?, None)
                }
                Edit::Post { text, reply_to } => {
                    let (pid, c) = d.doc.add_post(space, key, now, text, reply_to.as_deref())?;
                    (Some(c), Some(pid))
                }
                Edit::SetFields(v) => (d.doc.set_fields(space, key, now, v)?, None),
                Edit::Attach { name, hash, size } => {
                    (d.doc.attach(space, key, now, name, hash, *size)?, None)
                }
            };
            let mut batch = Batch::default();
            if let Some(c) = &change {
                d.store(*id, c.clone(), &mut batch);
                d.snapshot_due(*id, &mut batch);
            }
            Ok((
                space.id(),
                change,
                batch,
                new_id,
                hex_heads(&d.doc.heads()),
                d.doc.title(),
            ))
        })?;
        let changed = change.is_some();
        if let Some(c) = change {
            self.persist(batch).await?;
            if let Some(s) = self.lock().spaces.get_mut(&space) {
                self.for_holders(
                    s,
                    crate::proto::keys::Bundle {
                        ops: Vec::new(),
                        docs: vec![(*id, vec![c])],
                    },
                );
            }
            self.flush_soon(space);
            self.emit(DocsEvent::DocChanged {
                space: space.to_string(),
                doc: id.to_string(),
                title,
                heads: heads.clone(),
                by: vec![self.me.to_string()],
                local: true,
            });
            self.announce_assignments(&space, id, assigned_before);
            self.sync_connected_soon(space);
        }
        Ok(Edited {
            doc: id.to_string(),
            heads,
            changed,
            id: new_id,
        })
    }

    fn assigned(&self, id: &DocId) -> HashSet<(String, String)> {
        self.with_doc(id, |s, _| {
            Ok(s.docs
                .get(id)
                .map(|d| assigned_pairs(&d.doc))
                .unwrap_or_default())
        })
        .unwrap_or_default()
    }

    /// Emits `task_assigned` for assignments that were not there before.
    fn announce_assignments(&self, space: &SpaceId, id: &DocId, before: HashSet<(String, String)>) {
        let Ok(tasks) = self.with_doc(id, |s, _| {
            Ok(s.docs
                .get(id)
                .and_then(|d| d.doc.tasks().ok())
                .unwrap_or_default())
        }) else {
            return;
        };
        for t in tasks {
            let Some(a) = &t.assignee else { continue };
            if before.contains(&(t.task.clone(), a.clone())) {
                continue;
            }
            self.emit(DocsEvent::TaskAssigned {
                space: space.to_string(),
                doc: id.to_string(),
                task: t.task.clone(),
                title: t.title.clone(),
                assignee: a.clone(),
                by: self.me.to_string(),
                local: true,
            });
        }
    }

    // ---- sync: initiator ----

    fn push_members(self: &Arc<Self>, id: &SpaceId) {
        self.sync_connected_soon(*id);
    }

    fn sync_connected_soon(self: &Arc<Self>, id: SpaceId) {
        let this = self.clone();
        tokio::spawn(async move { this.sync_connected(id).await });
    }

    /// Syncs `space` with every connected member.
    async fn sync_connected(self: &Arc<Self>, id: SpaceId) {
        let Ok(peers) = self.net.peers().await else {
            return;
        };
        let members: Vec<PeerId> = {
            let inner = self.lock();
            let Some(s) = inner.spaces.get(&id).filter(|s| s.joined) else {
                return;
            };
            peers
                .iter()
                .filter_map(|p| p.peer_id.parse::<PeerId>().ok())
                .filter(|p| s.space.role(p).is_some() && *p != self.me)
                .collect()
        };
        for p in members {
            self.schedule(p, id);
        }
    }

    /// Runs a sync of `space` with `peer`, or marks one to run again after the current one.
    fn schedule(self: &Arc<Self>, peer: PeerId, space: SpaceId) {
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(again) = running.get_mut(&(peer, space)) {
                *again = true;
                return;
            }
            running.insert((peer, space), false);
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.sync_once(peer, space).await {
                    tracing::debug!(%peer, %space, "sync: {e}");
                }
                let mut running = this.running.lock().unwrap_or_else(|e| e.into_inner());
                match running.get_mut(&(peer, space)) {
                    Some(again) if *again => *again = false,
                    _ => {
                        running.remove(&(peer, space));
                        return;
                    }
                }
            }
        });
    }

    /// One sync session of a space with a peer: rounds until both sides are quiet.
    async fn sync_once(self: &Arc<Self>, peer: PeerId, space: SpaceId) -> Result<(), String> {
        let mut sessions: HashMap<DocId, Session> = HashMap::new();
        let mut next: HashMap<DocId, SyncMsg> = HashMap::new();
        let mut their_member_heads: Option<Vec<crate::OpId>> = None;
        for round in 0..crate::proto::sync::MAX_ROUNDS {
            // Build the request.
            let request = {
                let mut guard = self.lock();
                let inner = &mut *guard;
                let Some(s) = inner.spaces.get_mut(&space).filter(|s| s.joined) else {
                    return Ok(());
                };
                if s.space.role(&self.me).is_none() {
                    return Ok(());
                }
                let members = members_msg(
                    &s.space,
                    &s.crypt,
                    their_member_heads.as_deref(),
                    round == 0,
                );
                let mut docs = Vec::new();
                if round == 0 {
                    for (id, d) in s.docs.iter_mut() {
                        let session = sessions.entry(*id).or_default();
                        let known = d.synced.get(&peer).cloned();
                        docs.push((*id, session.start(&mut d.doc, known.as_deref())));
                    }
                } else {
                    for (id, msg) in next.drain() {
                        docs.push((id, msg));
                    }
                }
                docs.truncate(wire::MAX_DOCS_PER_ROUND);
                Request::Sync {
                    space,
                    members,
                    docs,
                    all_docs: round == 0,
                }
            };
            let bytes = wire::encode(&request);
            let sent_len = bytes.len() as u64;
            let reply = self
                .net
                .request(peer, wire::PROTOCOL, bytes, REQUEST_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            let recv_len = reply.len() as u64;
            let Response::Sync { members, docs } =
                Response::decode(&reply).map_err(|e| e.to_string())?
            else {
                return Err("unexpected response".into());
            };
            their_member_heads = Some(members.heads.clone());
            let batch = {
                let mut guard = self.lock();
                let inner = &mut *guard;
                inner.stats.sync_rounds += 1;
                inner.stats.bytes_sent += sent_len;
                inner.stats.bytes_received += recv_len;
                let Some(s) = inner.spaces.get_mut(&space) else {
                    return Ok(());
                };
                let mut batch = Batch::default();
                let mut events = Vec::new();
                let changed_members = apply_ops(s, &members.ops, &mut batch);
                self.take_grants(s, &members.grants, &mut batch);
                let mut quiet = !changed_members || members.ops.is_empty();
                for (id, msg) in docs {
                    let session = sessions.entry(id).or_default();
                    let create = s.docs.len() < budget::MAX_DOCS_PER_SPACE;
                    let Some(reply) = s.step_doc(
                        &self.me,
                        id,
                        msg,
                        session,
                        &peer,
                        create,
                        &mut inner.stats,
                        &mut batch,
                        &mut events,
                    ) else {
                        continue;
                    };
                    if !reply.is_quiet() {
                        quiet = false;
                        next.insert(id, reply);
                    }
                }
                // Documents that arrived empty and stayed so are not kept.
                s.docs
                    .retain(|_, d| !d.doc.is_empty() || d.doc.pending() > 0);
                for id in s.docs.keys() {
                    inner.doc_space.insert(*id, space);
                }
                // Stored before the lock is released: what this node shows, it has stored
                // (a kill -9 right after `doc show` loses nothing).
                self.store_now(&batch).map_err(|e| e.to_string())?;
                (quiet, events)
            };
            let (quiet, events) = batch;
            for r in &events {
                if let DocsEvent::ChangeRefused { .. } = r {
                    self.net.admission().refuse(budget::REFUSED_CHANGE);
                }
            }
            self.after_receive(events);
            if quiet && next.is_empty() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Emits events after the changes they report were stored.
    fn after_receive(&self, events: Vec<DocsEvent>) {
        for e in events {
            self.emit(e);
        }
    }

    /// Keys an admin owes, then what waits for holders, then what holders keep.
    async fn holders_tick(self: &Arc<Self>, id: SpaceId) {
        let mut batch = Batch::default();
        if let Some(s) = self.lock().spaces.get_mut(&id) {
            self.mend_keys(s, &mut batch);
        }
        if self.persist(batch).await.is_err() {
            return;
        }
        self.flush(id).await;
        self.pull(id).await;
    }

    // ---- sync: responder ----

    async fn serve(self: Arc<Self>, mut rx: mpsc::Receiver<InboundRequest>) {
        loop {
            let req = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => return },
                () = self.stop.cancelled() => return,
            };
            let this = self.clone();
            tokio::spawn(async move {
                let InboundRequest { peer, data, reply } = req;
                match this.handle(peer, data).await {
                    Ok(bytes) => {
                        let _ = reply.send(bytes);
                    }
                    Err(reason) => reply.refuse(reason),
                }
            });
        }
    }

    async fn handle(self: &Arc<Self>, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, String> {
        let refusals = self.net.admission();
        let request = Request::decode(&data).map_err(|e| {
            refusals.refuse(budget::REFUSED_MALFORMED);
            e.to_string()
        })?;
        match request {
            Request::Invite { ops } => {
                self.invite_rate
                    .admit(&peer, 1.0, refusals, budget::REFUSED_INVITE_RATE)?;
                self.take_invite(peer, ops).await?;
                Ok(wire::encode(&Response::Invited))
            }
            Request::Hold { tag, envelope } => {
                self.hold(peer, tag, envelope).await?;
                Ok(wire::encode(&Response::Held))
            }
            Request::Fetch { tag, since } => Ok(wire::encode(&self.fetch(peer, tag, since).await?)),
            Request::Sync {
                space,
                members,
                docs,
                all_docs,
            } => {
                self.sync_rate
                    .admit(&peer, 1.0, refusals, budget::REFUSED_SYNC_RATE)?;
                let change_bytes: usize = docs
                    .iter()
                    .flat_map(|(_, m)| m.changes.iter())
                    .map(|c| c.bytes.len())
                    .sum();
                if change_bytes > 0 {
                    self.byte_rate.admit(
                        &peer,
                        change_bytes as f64,
                        refusals,
                        budget::REFUSED_CHANGE_BYTES,
                    )?;
                }
                let (response, batch, events) =
                    self.answer(peer, space, members, docs, all_docs)?;
                self.persist(batch).await.map_err(|e| e.to_string())?;
                self.after_receive(events);
                Ok(wire::encode(&response))
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn answer(
        self: &Arc<Self>,
        peer: PeerId,
        space: SpaceId,
        members: Members,
        docs: Vec<(DocId, SyncMsg)>,
        all_docs: bool,
    ) -> Result<(Response, Batch, Vec<DocsEvent>), String> {
        let refusals = self.net.admission();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(s) = inner.spaces.get_mut(&space).filter(|s| s.joined) else {
            refusals.refuse(budget::REFUSED_NOT_MEMBER);
            return Err(format!(
                "{}: no space {space} here",
                budget::REFUSED_NOT_MEMBER
            ));
        };
        let mut batch = Batch::default();
        let mut events = Vec::new();
        // Operations are self-authenticating (signed by admins of the space); they may be what
        // makes the requester a member. They are tried on a copy first: a refused request
        // changes nothing (what is applied is also stored before the answer).
        if s.space.role(&peer).is_none() {
            let mut trial = s.space.clone();
            for bytes in &members.ops {
                if let Ok(op) = SignedOp::from_bytes(bytes) {
                    let _ = trial.apply(op);
                }
            }
            if trial.role(&peer).is_none() {
                refusals.refuse(budget::REFUSED_NOT_MEMBER);
                return Err(format!(
                    "{}: {peer} is not a member of this space",
                    budget::REFUSED_NOT_MEMBER
                ));
            }
        }
        if apply_ops(s, &members.ops, &mut batch) {
            events.push(DocsEvent::MembersChanged {
                space: space.to_string(),
                members: s.space.members().len(),
            });
        }
        self.take_grants(s, &members.grants, &mut batch);
        let mut out = Vec::new();
        let mut budget_left = wire::MAX_RESPONSE_CHANGE_BYTES;
        let mut named = HashSet::new();
        for (id, msg) in docs {
            named.insert(id);
            if budget_left == 0 {
                break;
            }
            let mut session = Session::default();
            let create = s.space.can_write(&peer) && s.docs.len() < budget::MAX_DOCS_PER_SPACE;
            let refused_before = inner.stats.changes_refused;
            let Some(reply) = s.step_doc(
                &self.me,
                id,
                msg,
                &mut session,
                &peer,
                create,
                &mut inner.stats,
                &mut batch,
                &mut events,
            ) else {
                continue;
            };
            for _ in refused_before..inner.stats.changes_refused {
                refusals.refuse(budget::REFUSED_CHANGE);
            }
            let size: usize = reply.changes.iter().map(|c| c.bytes.len()).sum();
            budget_left = budget_left.saturating_sub(size);
            out.push((id, reply));
        }
        if all_docs {
            for (id, d) in s.docs.iter_mut() {
                if named.contains(id) || budget_left == 0 || out.len() >= wire::MAX_DOCS_PER_ROUND {
                    continue;
                }
                let mut session = Session::default();
                let (_, reply) = session.step(&mut d.doc, &s.space, SyncMsg::default());
                let size: usize = reply.changes.iter().map(|c| c.bytes.len()).sum();
                budget_left = budget_left.saturating_sub(size);
                out.push((*id, reply));
            }
        }
        s.docs
            .retain(|_, d| !d.doc.is_empty() || d.doc.pending() > 0);
        let ids: Vec<DocId> = s.docs.keys().copied().collect();
        let response = Response::Sync {
            members: members_msg(&s.space, &s.crypt, Some(&members.heads), all_docs),
            docs: out,
        };
        for id in ids {
            inner.doc_space.insert(id, space);
        }
        Ok((response, batch, events))
    }

    async fn take_invite(self: &Arc<Self>, from: PeerId, ops: Vec<Vec<u8>>) -> Result<(), String> {
        let space = space_from_ops(&ops).map_err(|e| format!("invite: {e}"))?;
        let id = space.id();
        if space.role(&self.me).is_none() {
            return Err("invite: this node is not a member of that space".into());
        }
        if !space.is_admin(&from) {
            return Err("invite: only an admin of the space may deliver its invite".into());
        }
        let mut batch = Batch::default();
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            if let Some(s) = inner.spaces.get_mut(&id).filter(|s| s.joined) {
                // Already joined: the log may carry news.
                apply_ops(s, &ops, &mut batch);
            } else {
                let per_peer = inner.invites.values().filter(|i| i.from == from).count();
                if !inner.invites.contains_key(&id)
                    && (inner.invites.len() >= budget::MAX_INVITES
                        || per_peer >= budget::MAX_INVITES_PER_PEER)
                {
                    self.net.admission().refuse(budget::REFUSED_INVITES_FULL);
                    return Err(format!(
                        "{}: too many pending invites",
                        budget::REFUSED_INVITES_FULL
                    ));
                }
                let rec = InviteRecord {
                    ops,
                    from,
                    at_ms: now_ms(),
                };
                inner.invites.insert(id, rec.clone());
                batch.invites.push((id, rec));
            }
        }
        self.persist(batch).await.map_err(|e| e.to_string())?;
        self.emit(DocsEvent::Invited {
            space: id.to_string(),
            name: space.name().to_string(),
            from: from.to_string(),
            role: space.role(&self.me).unwrap_or(Role::Reader),
        });
        Ok(())
    }

    /// Watches connections (sync with members who connect; deliver invites) and resyncs
    /// connected members every [`RESYNC`].
    async fn watch(self: Arc<Self>) {
        let mut events = self.net.events();
        let mut tick = tokio::time::interval(RESYNC);
        tick.tick().await;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = tick.tick() => {
                    let ids: Vec<SpaceId> = self.lock().spaces.iter().filter(|(_, s)| s.joined).map(|(id, _)| *id).collect();
                    for id in ids {
                        self.sync_connected(id).await;
                        self.holders_tick(id).await;
                    }
                    self.expire_held().await;
                    let waiting: Vec<PeerId> = self.lock().outbox.keys().copied().collect();
                    for p in waiting {
                        let this = self.clone();
                        tokio::spawn(async move { this.deliver_invites(p).await });
                    }
                }
                e = events.recv() => match e {
                    Ok(agora_net::Event::PeerIdentified { peer_id, .. }) => {
                        let Ok(peer) = peer_id.parse::<PeerId>() else { continue };
                        let spaces: Vec<SpaceId> = {
                            let inner = self.lock();
                            inner.spaces.iter()
                                .filter(|(_, s)| s.joined && s.space.role(&peer).is_some())
                                .map(|(id, _)| *id)
                                .collect()
                        };
                        for id in spaces {
                            self.schedule(peer, id);
                        }
                        if self.lock().outbox.contains_key(&peer) {
                            let this = self.clone();
                            tokio::spawn(async move { this.deliver_invites(peer).await });
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }
}

/// Stores and reports what a sync step applied or refused.
#[allow(clippy::too_many_arguments)]
fn record(
    batch: &mut Batch,
    events: &mut Vec<DocsEvent>,
    id: DocId,
    d: &mut DocState,
    space: &Space,
    received: &crate::proto::doc::Received,
    was_empty: bool,
    from: &PeerId,
    assigned_before: &HashSet<(String, String)>,
) {
    if was_empty && !d.doc.is_empty() {
        batch.docs.push((
            id,
            DocMeta {
                space: space.id(),
                kind: d.doc.kind(),
            },
        ));
    }
    let mut authors = BTreeSet::new();
    for a in &received.applied {
        authors.insert(a.author.to_string());
        d.store(id, a.change.clone(), batch);
    }
    d.snapshot_due(id, batch);
    if !received.applied.is_empty() {
        events.push(DocsEvent::DocChanged {
            space: space.id().to_string(),
            doc: id.to_string(),
            title: d.doc.title(),
            heads: hex_heads(&d.doc.heads()),
            by: authors.into_iter().collect(),
            local: false,
        });
    }
    if !received.applied.is_empty() && d.doc.kind() == Some(Kind::Tasks) {
        for t in d.doc.tasks().unwrap_or_default() {
            let Some(a) = &t.assignee else { continue };
            if assigned_before.contains(&(t.task.clone(), a.clone())) {
                continue;
            }
            events.push(DocsEvent::TaskAssigned {
                space: space.id().to_string(),
                doc: id.to_string(),
                task: t.task.clone(),
                title: t.title.clone(),
                assignee: a.clone(),
                by: t.created_by.clone(),
                local: false,
            });
        }
    }
    for (author, reason) in &received.refused {
        events.push(DocsEvent::ChangeRefused {
            space: space.id().to_string(),
            doc: id.to_string(),
            from: author
                .map(|a| a.to_string())
                .unwrap_or_else(|| from.to_string()),
            reason: reason.to_string(),
        });
    }
}

/// Applies membership operations from a peer (in order; unknown parents are skipped and come
/// in a later round). Records the new ones; rechecks documents when membership changed.
/// Returns whether anything was added.
fn apply_ops(s: &mut SpaceState, ops: &[Vec<u8>], batch: &mut Batch) -> bool {
    let mut added = false;
    for bytes in ops {
        let Ok(op) = SignedOp::from_bytes(bytes) else {
            continue;
        };
        let seq = s.space.len() as u32;
        if let Ok(Applied::Added { .. }) = s.space.apply(op) {
            batch.ops.push((s.space.id(), seq, bytes.clone()));
            added = true;
        }
    }
    if added {
        for d in s.docs.values_mut() {
            d.doc.recheck(&s.space);
        }
    }
    added
}

/// This side's membership for a sync message: its heads, the operations a peer whose heads are
/// `their_heads` may lack (none while they are unknown), and, on a session's first round, the
/// key grants.
fn members_msg(
    space: &Space,
    crypt: &Crypt,
    their_heads: Option<&[crate::OpId]>,
    grants: bool,
) -> Members {
    Members {
        heads: space.heads(),
        ops: their_heads
            .map(|h| space.ops_since(h).iter().map(|o| o.to_bytes()).collect())
            .unwrap_or_default(),
        grants: if grants {
            crypt
                .grants
                .values()
                .take(wire::MAX_GRANTS)
                .cloned()
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// (task id, assignee) pairs of a task document; empty for other kinds.
fn assigned_pairs(doc: &Document) -> HashSet<(String, String)> {
    if doc.kind() != Some(Kind::Tasks) {
        return HashSet::new();
    }
    doc.tasks()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| Some((t.task, t.assignee?)))
        .collect()
}

fn space_from_ops(ops: &[Vec<u8>]) -> Result<Space, OpError> {
    let mut it = ops.iter();
    let first = it.next().ok_or(OpError::Malformed)?;
    let mut space = Space::from_create(SignedOp::from_bytes(first)?)?;
    for op in it {
        space.apply(SignedOp::from_bytes(op)?)?;
    }
    Ok(space)
}

fn summary(id: &DocId, doc: &Document) -> DocSummary {
    let mut heads: Vec<ChangeHash> = doc.automerge().clone().get_heads();
    heads.sort();
    DocSummary {
        doc: id.to_string(),
        title: doc.title(),
        kind: doc.kind(),
        changes: doc.len(),
        heads: hex_heads(&heads),
    }
}

fn role_name(r: Option<Role>) -> &'static str {
    match r {
        Some(Role::Owner) => "owner",
        Some(Role::Admin) => "admin",
        Some(Role::Editor) => "an editor",
        Some(Role::Reader) => "a reader",
        None => "not a member",
    }
}
