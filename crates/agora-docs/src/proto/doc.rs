//! A document: an automerge document whose every change is signed by its author and admitted
//! only when the space's membership lets the author write.
//!
//! # Changes and signatures
//! Each automerge change is made by an actor whose id is the author's [`PeerId`] bytes, and
//! travels as a [`SignedChange`]: the uncompressed change chunk and the author's ed25519
//! signature over `"agora-docs/change/1\0" ‖ space id ‖ doc id ‖ change hash`. The change hash
//! is automerge's SHA-256 of the chunk, so the signature covers the content, the dependencies
//! and the actor; binding the space and document stops a change from being replayed into
//! another document. Compressed chunks are refused (a small deflate stream can expand to
//! gigabytes before anything could be checked), as are chunks over [`MAX_CHANGE_BYTES`].
//!
//! A document's id is `BLAKE3("agora-docs/doc/1\0" ‖ space id ‖ hash of its first change)`;
//! the first change (the only one without dependencies) writes the kind and the title.
//!
//! # Who may write, and what happens on removal
//! A change is applied when its author may write now (owner, admin or editor in the resolved
//! membership). A change by anyone who never could (readers, outsiders) is refused. A change
//! by a member who could write once but no longer may (removed or demoted) is *parked*: it is
//! applied only when a change by a current writer depends on it, i.e. when someone entitled to
//! write had already built on it. That is the deterministic answer to "written before or after
//! the removal?" that a signature cannot give (a removed member can name old dependencies):
//! what a current writer built on is kept, the rest is not. When an admin removes someone, its
//! node writes an empty change to every document of the space ([`Document::anchor`]), so
//! everything the admin had seen from the removed member stays.
//!
//! A node that applied such changes before it heard of the removal rebuilds the document from
//! the changes that remain admissible ([`Document::recheck`]), so every member converges on
//! the same content whatever order it learnt things in.
//!
//! # Kinds
//! The root map holds `kind`, `title` and `created`, and one of: `text` (a text object, merged
//! per character: [`Kind::Note`]), `items` (a list of task maps: [`Kind::Tasks`]), `posts` (a
//! list of post maps: [`Kind::Thread`]) or `fields` (a map of JSON values: [`Kind::Form`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, AutoCommit, Change, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value,
};
use libp2p_identity::{PeerId, ed25519};
use serde::{Deserialize, Serialize};

use super::membership::{Space, SpaceId, public_key};

/// Largest change chunk accepted (uncompressed). A `doc write` of a long note is one change.
pub const MAX_CHANGE_BYTES: usize = 1024 * 1024;
/// Operations a document may hold, summed over its changes: the memory budget of one
/// document (automerge keeps every operation; ~100 bytes each in memory).
pub const MAX_DOC_OPS: u64 = 4_000_000;
/// Changes kept aside at once: waiting for dependencies, or parked (see the module docs).
pub const MAX_PENDING: usize = 4096;
/// Longest title, in bytes.
pub const MAX_TITLE_BYTES: usize = 256;
/// Time a text diff may take before it settles for a coarser one.
pub const DIFF_DEADLINE: std::time::Duration = std::time::Duration::from_millis(200);

const ID_TAG: &[u8] = b"agora-docs/doc/1\0";
const SIGN_TAG: &[u8] = b"agora-docs/change/1\0";
const SNAPSHOT_TAG: &[u8] = b"agora-docs/snapshot/1\0";
/// Automerge chunk types (byte 8 of a chunk: after the 4-byte magic and 4-byte checksum).
const CHUNK_CHANGE: u8 = 1;

/// A document's id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DocId(pub [u8; 32]);

impl DocId {
    fn of(space: &SpaceId, genesis: &ChangeHash) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(ID_TAG);
        h.update(&space.0);
        h.update(&genesis.0);
        DocId(*h.finalize().as_bytes())
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({})", &hex::encode(self.0)[..12])
    }
}

impl FromStr for DocId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bytes =
            hex::decode(s).map_err(|_| format!("{s:?} is not a document id (64 hex digits)"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("{s:?} is not a document id (64 hex digits)"))?;
        Ok(DocId(arr))
    }
}

/// What a document holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Note,
    Tasks,
    Thread,
    Form,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Note => "note",
            Kind::Tasks => "tasks",
            Kind::Thread => "thread",
            Kind::Form => "form",
        }
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "note" => Ok(Kind::Note),
            "tasks" => Ok(Kind::Tasks),
            "thread" => Ok(Kind::Thread),
            "form" => Ok(Kind::Form),
            _ => Err(format!("unknown kind {s:?}: note, tasks, thread or form")),
        }
    }
}

/// A task's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Todo,
    Doing,
    Done,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Todo => "todo",
            TaskState::Doing => "doing",
            TaskState::Done => "done",
        }
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "todo" => Ok(TaskState::Todo),
            "doing" => Ok(TaskState::Doing),
            "done" => Ok(TaskState::Done),
            _ => Err(format!("unknown task state {s:?}: todo, doing or done")),
        }
    }
}

/// A task of a [`Kind::Tasks`] document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub task: String,
    pub title: String,
    pub assignee: Option<String>,
    pub state: TaskState,
    pub due: Option<String>,
    pub created_by: String,
}

/// What to change in a task; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct TaskUpdate {
    pub title: Option<String>,
    /// `Some(None)` unassigns.
    pub assignee: Option<Option<PeerId>>,
    pub state: Option<TaskState>,
    /// `Some(None)` clears the due date.
    pub due: Option<Option<String>>,
}

/// A post of a [`Kind::Thread`] document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    pub post: String,
    pub author: String,
    pub text: String,
    pub reply_to: Option<String>,
    pub at: i64,
}

/// A file attached to a document: an agora-files blob, fetched by its hash from whoever has it
/// (the member who attached it provides it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub name: String,
    /// BLAKE3 of the file (hex): `agora get HASH -o PATH` fetches it, verified.
    pub hash: String,
    pub size: u64,
    pub by: String,
    pub at: i64,
}

/// One change in a document's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    pub hash: String,
    pub author: String,
    /// The author's clock, unix milliseconds (informational: a peer's clock is its own).
    pub time: i64,
    pub message: Option<String>,
    pub ops: usize,
}

/// A change as it travels: the uncompressed automerge chunk and its author's signature.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedChange {
    pub bytes: Vec<u8>,
    pub sig: Vec<u8>,
}

impl fmt::Debug for SignedChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignedChange({} bytes)", self.bytes.len())
    }
}

/// Why a change or an edit was refused. Nothing was applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    #[error("change is {size} bytes, more than the {max} allowed")]
    TooLarge { size: usize, max: usize },
    #[error("not an uncompressed automerge change chunk: {0}")]
    Malformed(String),
    #[error("the change's actor is not an Agora peer id (ed25519)")]
    BadActor,
    #[error("signature does not match the change's author {author}: forged or corrupted")]
    BadSignature { author: PeerId },
    #[error("{author} may not write in this space (reader, outsider or removed member)")]
    NotWriter { author: PeerId },
    #[error("the first change of a document does not match its id")]
    WrongDoc,
    #[error("only a document's first change has no dependencies")]
    ExtraRoot,
    #[error("the document would hold more than {max} operations (its memory budget)")]
    DocTooBig { max: u64 },
    #[error("more than {max} changes wait for their dependencies; try again after a sync")]
    TooManyPending { max: usize },
    #[error("this is a {actual} document; the operation needs a {wanted} document")]
    WrongKind {
        actual: &'static str,
        wanted: &'static str,
    },
    #[error("no task {0} in this document")]
    NoTask(String),
    #[error("no post {0} in this thread")]
    NoPost(String),
    #[error("title is {len} bytes, more than {max}")]
    TitleTooLong { len: usize, max: usize },
    #[error("form fields must be a JSON object")]
    NotAnObject,
    #[error("the document is corrupt: {0}")]
    Corrupt(String),
}

/// A change that was just applied: what the node stores and reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub hash: ChangeHash,
    pub author: PeerId,
    pub change: SignedChange,
}

/// What [`Document::receive`] did with a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Changes applied (new to this node), in the order applied.
    pub applied: Vec<Applied>,
    /// Changes refused, with the reason (never applied).
    pub refused: Vec<(Option<PeerId>, DocError)>,
    /// Changes kept aside: waiting for dependencies, or parked.
    pub pending: usize,
}

/// A verified change that is not applied yet.
struct Held {
    change: Change,
    sig: Vec<u8>,
    author: PeerId,
}

impl Held {
    fn applied(self) -> Applied {
        Applied {
            hash: self.change.hash(),
            author: self.author,
            change: SignedChange {
                bytes: self.change.raw_bytes().to_vec(),
                sig: self.sig,
            },
        }
    }
}

/// A document as this node stores it between changes: automerge's compact encoding of the
/// applied changes, their signatures and a BLAKE3 digest of both. Only this node writes it,
/// after it verified every change it holds, so loading checks the digest (a corrupt record is
/// an error) instead of verifying every signature again, and loads in automerge's time.
#[derive(Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub save: Vec<u8>,
    pub sigs: Vec<([u8; 32], Vec<u8>)>,
    pub ops: u64,
    pub digest: [u8; 32],
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Snapshot({} bytes, {} changes)",
            self.save.len(),
            self.sigs.len()
        )
    }
}

impl Snapshot {
    /// The stored form (postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a snapshot serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Snapshot, DocError> {
        postcard::from_bytes(bytes).map_err(|e| DocError::Corrupt(format!("snapshot: {e}")))
    }

    fn digest_of(id: &DocId, save: &[u8], sigs: &[([u8; 32], Vec<u8>)], ops: u64) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(SNAPSHOT_TAG);
        h.update(&id.0);
        h.update(&(save.len() as u64).to_le_bytes());
        h.update(save);
        h.update(&(sigs.len() as u64).to_le_bytes());
        for (hash, sig) in sigs {
            h.update(hash);
            h.update(&(sig.len() as u64).to_le_bytes());
            h.update(sig);
        }
        h.update(&ops.to_le_bytes());
        *h.finalize().as_bytes()
    }
}

/// One document of a space.
pub struct Document {
    id: DocId,
    space: SpaceId,
    am: AutoCommit,
    /// Signatures of the applied changes.
    sigs: HashMap<ChangeHash, Vec<u8>>,
    /// Verified changes by current writers whose dependencies are missing.
    waiting: HashMap<ChangeHash, Held>,
    /// Verified changes by former writers (see the module docs).
    parked: HashMap<ChangeHash, Held>,
    ops: u64,
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Document")
            .field("id", &self.id)
            .field("changes", &self.sigs.len())
            .finish()
    }
}

fn actor_of(peer: &PeerId) -> ActorId {
    ActorId::from(peer.to_bytes())
}

fn signing_message(space: &SpaceId, doc: &DocId, hash: &ChangeHash) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGN_TAG.len() + 96);
    m.extend_from_slice(SIGN_TAG);
    m.extend_from_slice(&space.0);
    m.extend_from_slice(&doc.0);
    m.extend_from_slice(&hash.0);
    m
}

fn short_id(seed: &[&[u8]]) -> String {
    let mut h = blake3::Hasher::new();
    for s in seed {
        h.update(s);
    }
    hex::encode(&h.finalize().as_bytes()[..6])
}

impl Document {
    /// Creates a document: its first change, signed by `key`.
    pub fn create(
        space: &Space,
        kind: Kind,
        title: &str,
        key: &ed25519::Keypair,
        now_ms: i64,
    ) -> Result<(Document, SignedChange), DocError> {
        check_title(title)?;
        let me = libp2p_identity::PublicKey::from(key.public()).to_peer_id();
        if !space.can_write(&me) {
            return Err(DocError::NotWriter { author: me });
        }
        let mut am = AutoCommit::new().with_actor(actor_of(&me));
        let put = |am: &mut AutoCommit| -> Result<(), automerge::AutomergeError> {
            am.put(ROOT, "kind", kind.as_str())?;
            am.put(ROOT, "title", title)?;
            am.put(ROOT, "created", now_ms)?;
            am.put_object(ROOT, "attachments", ObjType::List)?;
            match kind {
                Kind::Note => am.put_object(ROOT, "text", ObjType::Text).map(drop),
                Kind::Tasks => am.put_object(ROOT, "items", ObjType::List).map(drop),
                Kind::Thread => am.put_object(ROOT, "posts", ObjType::List).map(drop),
                Kind::Form => am.put_object(ROOT, "fields", ObjType::Map).map(drop),
            }
        };
        put(&mut am).map_err(|e| DocError::Corrupt(e.to_string()))?;
        let hash = am
            .commit_with(
                CommitOptions::default()
                    .with_message("create")
                    .with_time(now_ms),
            )
            .expect("a create writes operations");
        let id = DocId::of(&space.id(), &hash);
        let mut doc = Document {
            id,
            space: space.id(),
            am,
            sigs: HashMap::new(),
            waiting: HashMap::new(),
            parked: HashMap::new(),
            ops: 0,
        };
        let change = doc.committed(&hash);
        let signed = doc.sign_last(key, &change);
        Ok((doc, signed))
    }

    /// An empty replica of document `id`, to be filled by [`Document::receive`].
    pub fn empty(space: SpaceId, id: DocId, me: &PeerId) -> Document {
        Document {
            id,
            space,
            am: AutoCommit::new().with_actor(actor_of(me)),
            sigs: HashMap::new(),
            waiting: HashMap::new(),
            parked: HashMap::new(),
            ops: 0,
        }
    }

    /// Rebuilds a document from its stored changes (as [`Document::changes`] gave them), checking
    /// every signature again: a corrupted store is an error, not a different document.
    pub fn load(
        space: SpaceId,
        id: DocId,
        me: &PeerId,
        changes: Vec<SignedChange>,
    ) -> Result<Document, DocError> {
        let mut doc = Document::empty(space, id, me);
        doc.load_tail(changes)?;
        Ok(doc)
    }

    /// Verifies and applies stored changes (those after a snapshot, or all of them).
    fn load_tail(&mut self, changes: Vec<SignedChange>) -> Result<(), DocError> {
        let mut held = Vec::with_capacity(changes.len());
        for c in changes {
            let (change, author) = self.parse(&c)?;
            if self.sigs.contains_key(&change.hash()) {
                continue;
            }
            self.check_sig(&change, author, &c.sig)?;
            held.push(Held {
                change,
                sig: c.sig,
                author,
            });
        }
        let doc = self;
        doc.apply_verified(held)?;
        if !doc.waiting.is_empty() {
            return Err(DocError::Corrupt(format!(
                "{} stored changes miss their dependencies",
                doc.waiting.len()
            )));
        }
        Ok(())
    }

    /// What this node stores of the document: see [`Snapshot`].
    pub fn snapshot(&mut self) -> Snapshot {
        let save = self.am.save();
        let mut sigs: Vec<([u8; 32], Vec<u8>)> =
            self.sigs.iter().map(|(h, s)| (h.0, s.clone())).collect();
        sigs.sort_unstable_by_key(|s| s.0);
        let digest = Snapshot::digest_of(&self.id, &save, &sigs, self.ops);
        Snapshot {
            save,
            sigs,
            ops: self.ops,
            digest,
        }
    }

    /// Rebuilds a document from its stored [`Snapshot`] and the changes stored after it. A
    /// snapshot whose digest does not match, which automerge cannot load, or which holds a
    /// change without its signature is an error: a corrupted store is reported, never a
    /// different document.
    pub fn restore(
        space: SpaceId,
        id: DocId,
        me: &PeerId,
        snapshot: Snapshot,
        tail: Vec<SignedChange>,
    ) -> Result<Document, DocError> {
        let Snapshot {
            save,
            sigs,
            ops,
            digest,
        } = snapshot;
        if Snapshot::digest_of(&id, &save, &sigs, ops) != digest {
            return Err(DocError::Corrupt(
                "the stored snapshot does not match its digest".into(),
            ));
        }
        let mut am = AutoCommit::load(&save).map_err(corrupt)?;
        am.set_actor(actor_of(me));
        let sigs: HashMap<ChangeHash, Vec<u8>> =
            sigs.into_iter().map(|(h, s)| (ChangeHash(h), s)).collect();
        let metas = am.get_changes_meta(&[]);
        if metas.len() != sigs.len() || metas.iter().any(|m| !sigs.contains_key(&m.hash)) {
            return Err(DocError::Corrupt(
                "the stored snapshot's changes and signatures differ".into(),
            ));
        }
        drop(metas);
        let mut doc = Document {
            id,
            space,
            am,
            sigs,
            waiting: HashMap::new(),
            parked: HashMap::new(),
            ops,
        };
        doc.load_tail(tail)?;
        Ok(doc)
    }

    pub fn id(&self) -> DocId {
        self.id
    }

    pub fn space(&self) -> SpaceId {
        self.space
    }

    /// Whether the first change has arrived (an empty replica has nothing to show).
    pub fn is_empty(&self) -> bool {
        self.sigs.is_empty()
    }

    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.am.get_heads()
    }

    /// Number of applied changes.
    pub fn len(&self) -> usize {
        self.sigs.len()
    }

    pub fn contains(&self, hash: &ChangeHash) -> bool {
        self.sigs.contains_key(hash)
    }

    /// Changes waiting for dependencies or parked.
    pub fn pending(&self) -> usize {
        self.waiting.len() + self.parked.len()
    }

    /// The dependencies that waiting changes lack, to ask a peer for.
    pub fn missing(&self) -> Vec<ChangeHash> {
        let mut out = BTreeSet::new();
        for h in self.waiting.values() {
            for d in h.change.deps() {
                if !self.sigs.contains_key(d) && !self.waiting.contains_key(d) {
                    out.insert(*d);
                }
            }
        }
        out.into_iter().collect()
    }

    /// The signed changes applied after `have` (all of them for an empty `have`), in causal order.
    pub fn changes(&mut self, have: &[ChangeHash]) -> Vec<SignedChange> {
        self.changes_hashed(have)
            .into_iter()
            .map(|(_, c)| c)
            .collect()
    }

    /// [`Document::changes`] with each change's hash.
    pub fn changes_hashed(&mut self, have: &[ChangeHash]) -> Vec<(ChangeHash, SignedChange)> {
        let changes = self.am.get_changes(have);
        self.signed(changes)
    }

    fn signed(&self, changes: Vec<Change>) -> Vec<(ChangeHash, SignedChange)> {
        changes
            .into_iter()
            .filter_map(|c| {
                let hash = c.hash();
                let sig = self.sigs.get(&hash)?.clone();
                Some((
                    hash,
                    SignedChange {
                        bytes: c.raw_bytes().to_vec(),
                        sig,
                    },
                ))
            })
            .collect()
    }

    /// The applied changes among `hashes`, in causal order. Automerge rebuilds a change from
    /// the document each time one is asked for, so many are gathered in one pass.
    pub fn changes_of(&mut self, hashes: &[ChangeHash]) -> Vec<(ChangeHash, SignedChange)> {
        let wanted: HashSet<ChangeHash> = hashes
            .iter()
            .copied()
            .filter(|h| self.sigs.contains_key(h))
            .collect();
        if wanted.len() <= 8 {
            let mut out: Vec<(ChangeHash, SignedChange)> = Vec::new();
            for h in hashes {
                if wanted.contains(h)
                    && !out.iter().any(|(k, _)| k == h)
                    && let Some(c) = self.change(h)
                {
                    out.push((*h, c));
                }
            }
            return out;
        }
        let all = self.am.get_changes(&[]);
        let picked = all
            .into_iter()
            .filter(|c| wanted.contains(&c.hash()))
            .collect();
        self.signed(picked)
    }

    /// One applied change by hash.
    pub fn change(&mut self, hash: &ChangeHash) -> Option<SignedChange> {
        let sig = self.sigs.get(hash)?.clone();
        let c = self.am.get_change_by_hash(hash)?;
        Some(SignedChange {
            bytes: c.raw_bytes().to_vec(),
            sig,
        })
    }

    /// Hashes of all applied changes.
    pub fn hashes(&self) -> impl ExactSizeIterator<Item = &ChangeHash> {
        self.sigs.keys()
    }

    /// The applied changes that depend, directly or not, on any of `roots` (the roots included
    /// when applied), in causal order, in one pass over the document.
    pub fn descendants(&mut self, roots: &[ChangeHash]) -> Vec<(ChangeHash, SignedChange)> {
        let roots: HashSet<ChangeHash> = roots
            .iter()
            .copied()
            .filter(|h| self.sigs.contains_key(h))
            .collect();
        if roots.is_empty() {
            return Vec::new();
        }
        let mut set = HashSet::new();
        let mut out = Vec::new();
        for c in self.am.get_changes(&[]) {
            let h = c.hash();
            if roots.contains(&h) || c.deps().iter().any(|d| set.contains(d)) {
                set.insert(h);
                out.push(c);
            }
        }
        self.signed(out)
    }

    /// Parses a change without applying it: size, chunk type, actor. Returns the parsed change
    /// and its author; [`Document::check_sig`] checks the signature.
    fn parse(&self, c: &SignedChange) -> Result<(Change, PeerId), DocError> {
        if c.bytes.len() > MAX_CHANGE_BYTES {
            return Err(DocError::TooLarge {
                size: c.bytes.len(),
                max: MAX_CHANGE_BYTES,
            });
        }
        if c.bytes.get(8) != Some(&CHUNK_CHANGE) {
            return Err(DocError::Malformed(
                "not an uncompressed change chunk".into(),
            ));
        }
        let change =
            Change::from_bytes(c.bytes.clone()).map_err(|e| DocError::Malformed(e.to_string()))?;
        let author =
            PeerId::from_bytes(change.actor_id().to_bytes()).map_err(|_| DocError::BadActor)?;
        Ok((change, author))
    }

    fn check_sig(&self, change: &Change, author: PeerId, sig: &[u8]) -> Result<(), DocError> {
        let key = public_key(&author).map_err(|_| DocError::BadActor)?;
        if !key.verify(&signing_message(&self.space, &self.id, &change.hash()), sig) {
            return Err(DocError::BadSignature { author });
        }
        Ok(())
    }

    /// Receives changes from a peer: verifies each, refuses what its author may not write,
    /// applies what it may (in dependency order), keeps the rest aside within
    /// [`MAX_PENDING`].
    pub fn receive(&mut self, space: &Space, changes: Vec<SignedChange>) -> Received {
        let mut out = Received::default();
        let mut held = Vec::new();
        for c in changes {
            let (change, author) = match self.parse(&c) {
                Ok(parsed) => parsed,
                Err(e) => {
                    let author = Change::from_bytes(c.bytes.clone())
                        .ok()
                        .and_then(|ch| PeerId::from_bytes(ch.actor_id().to_bytes()).ok());
                    out.refused.push((author, e));
                    continue;
                }
            };
            let hash = change.hash();
            // A change already here costs no signature check: sync sends overlap.
            if self.sigs.contains_key(&hash)
                || self.waiting.contains_key(&hash)
                || self.parked.contains_key(&hash)
            {
                continue;
            }
            if let Err(e) = self.check_sig(&change, author, &c.sig) {
                out.refused.push((Some(author), e));
                continue;
            }
            let h = Held {
                change,
                sig: c.sig,
                author,
            };
            if space.can_write(&author) {
                held.push(h);
            } else if space.ever_wrote(&author) {
                if self.pending() >= MAX_PENDING {
                    out.refused
                        .push((Some(author), DocError::TooManyPending { max: MAX_PENDING }));
                } else {
                    self.parked.insert(hash, h);
                }
            } else {
                out.refused
                    .push((Some(author), DocError::NotWriter { author }));
            }
        }
        match self.apply_verified(held) {
            Ok(applied) => out.applied = applied,
            Err(e) => out.refused.push((None, e)),
        }
        out.pending = self.pending();
        out
    }

    /// Applies verified, authorised changes in dependency order, pulling parked changes that a
    /// waiting change needs. Returns the hashes applied. Changes whose dependencies are present
    /// go to automerge as one batch (applying them one by one walks the document each time:
    /// quadratic over a long history); a change whose dependencies are missing waits.
    fn apply_verified(&mut self, held: Vec<Held>) -> Result<Vec<Applied>, DocError> {
        // The usual case first: changes in causal order whose dependencies are applied or
        // earlier in the list form one batch; only the rest wait (within MAX_PENDING).
        let mut ready = Vec::new();
        let mut in_batch: HashSet<ChangeHash> = HashSet::new();
        for h in held {
            let hash = h.change.hash();
            if h.change
                .deps()
                .iter()
                .all(|d| self.sigs.contains_key(d) || in_batch.contains(d))
            {
                in_batch.insert(hash);
                ready.push(h);
            } else {
                if self.waiting.len() >= MAX_PENDING {
                    return Err(DocError::TooManyPending { max: MAX_PENDING });
                }
                self.waiting.insert(hash, h);
            }
        }
        let mut applied = if ready.is_empty() {
            Vec::new()
        } else {
            self.apply_batch(ready)?
        };
        if self.waiting.is_empty() && self.parked.is_empty() {
            return Ok(applied);
        }
        loop {
            // Parked changes that a waiting change depends on become admissible.
            let wanted: Vec<ChangeHash> = self
                .waiting
                .values()
                .flat_map(|h| h.change.deps().iter().copied())
                .filter(|d| self.parked.contains_key(d))
                .collect();
            let pulled = !wanted.is_empty();
            for d in wanted {
                if let Some(h) = self.parked.remove(&d) {
                    self.waiting.insert(d, h);
                }
            }
            // Kahn's order over the waiting changes: each joins the batch once all its
            // dependencies are applied or earlier in the batch.
            let mut blocked: HashMap<ChangeHash, Vec<ChangeHash>> = HashMap::new();
            let mut missing: HashMap<ChangeHash, usize> = HashMap::new();
            let mut queue = Vec::new();
            for (hash, h) in &self.waiting {
                let mut n = 0;
                for d in h.change.deps() {
                    if !self.sigs.contains_key(d) {
                        n += 1;
                        blocked.entry(*d).or_default().push(*hash);
                    }
                }
                if n == 0 {
                    queue.push(*hash);
                } else {
                    missing.insert(*hash, n);
                }
            }
            let mut order = Vec::new();
            while let Some(hash) = queue.pop() {
                order.push(hash);
                for w in blocked.remove(&hash).unwrap_or_default() {
                    if let Some(n) = missing.get_mut(&w) {
                        *n -= 1;
                        if *n == 0 {
                            missing.remove(&w);
                            queue.push(w);
                        }
                    }
                }
            }
            if order.is_empty() {
                if pulled {
                    continue;
                }
                break;
            }
            let batch: Vec<Held> = order
                .iter()
                .filter_map(|h| self.waiting.remove(h))
                .collect();
            applied.extend(self.apply_batch(batch)?);
            if self.waiting.is_empty() {
                break;
            }
        }
        Ok(applied)
    }

    /// Applies changes in causal order as one automerge batch, after the checks every change
    /// passes (one root, the document's own; the operation budget). Should automerge refuse
    /// the batch, they are applied one by one so that only the bad change is lost.
    fn apply_batch(&mut self, batch: Vec<Held>) -> Result<Vec<Applied>, DocError> {
        let mut ops = self.ops;
        let mut has_root = !self.sigs.is_empty();
        for h in &batch {
            let hash = h.change.hash();
            if h.change.deps().is_empty() {
                if has_root {
                    return Err(DocError::ExtraRoot);
                }
                if DocId::of(&self.space, &hash) != self.id {
                    return Err(DocError::WrongDoc);
                }
                has_root = true;
            } else if !has_root {
                return Err(DocError::WrongDoc);
            }
            ops += h.change.len() as u64;
            if ops > MAX_DOC_OPS {
                return Err(DocError::DocTooBig { max: MAX_DOC_OPS });
            }
        }
        let changes: Vec<Change> = batch.iter().map(|h| h.change.clone()).collect();
        if self.am.apply_changes(changes).is_ok() {
            self.ops = ops;
            let mut out = Vec::with_capacity(batch.len());
            for h in batch {
                self.sigs.insert(h.change.hash(), h.sig.clone());
                out.push(h.applied());
            }
            return Ok(out);
        }
        let mut out = Vec::new();
        let mut first_error = None;
        for h in batch {
            match self.apply_one(h) {
                Ok(applied) => out.push(applied),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    fn apply_one(&mut self, h: Held) -> Result<Applied, DocError> {
        let hash = h.change.hash();
        if h.change.deps().is_empty() {
            if !self.sigs.is_empty() {
                return Err(DocError::ExtraRoot);
            }
            if DocId::of(&self.space, &hash) != self.id {
                return Err(DocError::WrongDoc);
            }
        } else if self.sigs.is_empty() {
            return Err(DocError::WrongDoc);
        }
        let ops = h.change.len() as u64;
        if self.ops + ops > MAX_DOC_OPS {
            return Err(DocError::DocTooBig { max: MAX_DOC_OPS });
        }
        let applied = Applied {
            hash,
            author: h.author,
            change: SignedChange {
                bytes: h.change.raw_bytes().to_vec(),
                sig: h.sig.clone(),
            },
        };
        self.am
            .apply_changes([h.change])
            .map_err(|e| DocError::Malformed(e.to_string()))?;
        self.ops += ops;
        self.sigs.insert(hash, h.sig);
        Ok(applied)
    }

    /// Re-checks every applied change against `space` after a membership change. Changes by
    /// authors who may no longer write and on which no current writer's change depends are
    /// taken out (the document is rebuilt without them) and parked. Returns how many.
    pub fn recheck(&mut self, space: &Space) -> usize {
        // The metadata first: building every change is only worth it when some must go.
        let mut authors: HashMap<ChangeHash, PeerId> = HashMap::new();
        let mut deps: HashMap<ChangeHash, Vec<ChangeHash>> = HashMap::new();
        for m in self.am.get_changes_meta(&[]) {
            if let Ok(p) = PeerId::from_bytes(m.actor.to_bytes()) {
                authors.insert(m.hash, p);
            }
            deps.insert(m.hash, m.deps);
        }
        if authors.values().all(|a| space.can_write(a)) {
            return 0;
        }
        // Keep: changes by current writers and everything they depend on.
        let mut keep: HashSet<ChangeHash> = HashSet::new();
        let mut stack: Vec<ChangeHash> = authors
            .iter()
            .filter(|(_, a)| space.can_write(a))
            .map(|(h, _)| *h)
            .collect();
        while let Some(h) = stack.pop() {
            if keep.insert(h)
                && let Some(d) = deps.get(&h)
            {
                stack.extend(d.iter().copied());
            }
        }
        if keep.len() == deps.len() {
            return 0;
        }
        let all = self.am.get_changes(&[]);
        let actor = self.am.get_actor().clone();
        let mut am = AutoCommit::new().with_actor(actor);
        let mut dropped = 0;
        let mut ops = 0;
        let mut kept = Vec::new();
        for c in all {
            let h = c.hash();
            if keep.contains(&h) {
                ops += c.len() as u64;
                kept.push(c);
            } else {
                dropped += 1;
                let sig = self.sigs.remove(&h).unwrap_or_default();
                if self.parked.len() < MAX_PENDING
                    && let Some(author) = authors.get(&h)
                    && space.ever_wrote(author)
                {
                    self.parked.insert(
                        h,
                        Held {
                            change: c,
                            sig,
                            author: *author,
                        },
                    );
                }
            }
        }
        am.apply_changes(kept)
            .expect("a causally closed subset of a valid document applies");
        self.am = am;
        self.ops = ops;
        dropped
    }

    /// Signs `change`, just committed locally (automerge rebuilds a change from the document
    /// each time it is asked for one: callers fetch it once).
    fn sign_last(&mut self, key: &ed25519::Keypair, change: &Change) -> SignedChange {
        let hash = change.hash();
        let sig = key.sign(&signing_message(&self.space, &self.id, &hash));
        self.ops += change.len() as u64;
        self.sigs.insert(hash, sig.clone());
        SignedChange {
            bytes: change.raw_bytes().to_vec(),
            sig,
        }
    }

    fn committed(&mut self, hash: &ChangeHash) -> Change {
        self.am.get_change_by_hash(hash).expect("just committed")
    }

    /// Runs a local edit as one change. `Ok(None)` when it changed nothing.
    fn edit<F>(
        &mut self,
        space: &Space,
        key: &ed25519::Keypair,
        now_ms: i64,
        message: &str,
        f: F,
    ) -> Result<Option<SignedChange>, DocError>
    where
        F: FnOnce(&mut AutoCommit) -> Result<(), DocError>,
    {
        let me = libp2p_identity::PublicKey::from(key.public()).to_peer_id();
        if !space.can_write(&me) {
            return Err(DocError::NotWriter { author: me });
        }
        if self.is_empty() {
            return Err(DocError::Corrupt("the document has not arrived yet".into()));
        }
        if let Err(e) = f(&mut self.am) {
            self.am.rollback();
            return Err(e);
        }
        if self.am.pending_ops() as u64 + self.ops > MAX_DOC_OPS {
            self.am.rollback();
            return Err(DocError::DocTooBig { max: MAX_DOC_OPS });
        }
        let Some(hash) = self.am.commit_with(
            CommitOptions::default()
                .with_message(message)
                .with_time(now_ms),
        ) else {
            return Ok(None);
        };
        // Peers refuse a change over MAX_CHANGE_BYTES; one that big is undone here (the
        // document is rebuilt without it, which only such an edit pays for).
        let change = self.committed(&hash);
        let size = change.raw_bytes().len();
        if size > MAX_CHANGE_BYTES {
            let keep: Vec<Change> = self
                .am
                .get_changes(&[])
                .into_iter()
                .filter(|c| c.hash() != hash)
                .collect();
            let mut am = AutoCommit::new().with_actor(self.am.get_actor().clone());
            am.apply_changes(keep)
                .map_err(|e| DocError::Corrupt(e.to_string()))?;
            self.am = am;
            return Err(DocError::TooLarge {
                size,
                max: MAX_CHANGE_BYTES,
            });
        }
        Ok(Some(self.sign_last(key, &change)))
    }

    /// An empty change over the current heads: see the module docs (removal).
    pub fn anchor(
        &mut self,
        space: &Space,
        key: &ed25519::Keypair,
        now_ms: i64,
    ) -> Result<SignedChange, DocError> {
        let me = libp2p_identity::PublicKey::from(key.public()).to_peer_id();
        if !space.can_write(&me) {
            return Err(DocError::NotWriter { author: me });
        }
        let hash = self.am.empty_change(
            CommitOptions::default()
                .with_message("membership changed")
                .with_time(now_ms),
        );
        let change = self.committed(&hash);
        Ok(self.sign_last(key, &change))
    }

    // ---- reading ----

    fn get_str(&self, obj: &ObjId, key: &str) -> Option<String> {
        match self.am.get(obj, key).ok()?? {
            (Value::Scalar(s), _) => match s.as_ref() {
                ScalarValue::Str(s) => Some(s.to_string()),
                _ => None,
            },
            (Value::Object(ObjType::Text), id) => self.am.text(&id).ok(),
            _ => None,
        }
    }

    fn get_i64(&self, obj: &ObjId, key: &str) -> Option<i64> {
        match self.am.get(obj, key).ok()?? {
            (Value::Scalar(s), _) => match s.as_ref() {
                ScalarValue::Int(i) => Some(*i),
                ScalarValue::Uint(u) => i64::try_from(*u).ok(),
                ScalarValue::Timestamp(t) => Some(*t),
                _ => None,
            },
            _ => None,
        }
    }

    fn obj(&self, key: &str) -> Option<ObjId> {
        match self.am.get(ROOT, key).ok()?? {
            (Value::Object(_), id) => Some(id),
            _ => None,
        }
    }

    pub fn kind(&self) -> Option<Kind> {
        self.get_str(&ROOT, "kind")?.parse().ok()
    }

    pub fn title(&self) -> String {
        self.get_str(&ROOT, "title").unwrap_or_default()
    }

    pub fn created(&self) -> i64 {
        self.get_i64(&ROOT, "created").unwrap_or(0)
    }

    fn want(&self, wanted: Kind) -> Result<ObjId, DocError> {
        let actual = self.kind();
        if actual != Some(wanted) {
            return Err(DocError::WrongKind {
                actual: actual.map(Kind::as_str).unwrap_or("unknown"),
                wanted: wanted.as_str(),
            });
        }
        let key = match wanted {
            Kind::Note => "text",
            Kind::Tasks => "items",
            Kind::Thread => "posts",
            Kind::Form => "fields",
        };
        self.obj(key).ok_or_else(|| {
            DocError::Corrupt(format!("a {} document without {key}", wanted.as_str()))
        })
    }

    /// A note's text.
    pub fn text(&self) -> Result<String, DocError> {
        let obj = self.want(Kind::Note)?;
        self.am
            .text(&obj)
            .map_err(|e| DocError::Corrupt(e.to_string()))
    }

    fn task_objs(&self) -> Result<Vec<(ObjId, Task)>, DocError> {
        let list = self.want(Kind::Tasks)?;
        let mut out = Vec::new();
        for i in 0..self.am.length(&list) {
            let Ok(Some((Value::Object(ObjType::Map), id))) = self.am.get(&list, i) else {
                continue;
            };
            let Some(task) = self.get_str(&id, "id") else {
                continue;
            };
            out.push((
                id.clone(),
                Task {
                    task,
                    title: self.get_str(&id, "title").unwrap_or_default(),
                    assignee: self.get_str(&id, "assignee"),
                    state: self
                        .get_str(&id, "state")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(TaskState::Todo),
                    due: self.get_str(&id, "due"),
                    created_by: self.get_str(&id, "created_by").unwrap_or_default(),
                },
            ));
        }
        Ok(out)
    }

    /// A task list's items, in list order.
    pub fn tasks(&self) -> Result<Vec<Task>, DocError> {
        Ok(self.task_objs()?.into_iter().map(|(_, t)| t).collect())
    }

    /// A thread's posts, in list order.
    pub fn posts(&self) -> Result<Vec<Post>, DocError> {
        let list = self.want(Kind::Thread)?;
        let mut out = Vec::new();
        for i in 0..self.am.length(&list) {
            let Ok(Some((Value::Object(ObjType::Map), id))) = self.am.get(&list, i) else {
                continue;
            };
            out.push(Post {
                post: self.get_str(&id, "id").unwrap_or_default(),
                author: self.get_str(&id, "author").unwrap_or_default(),
                text: self.get_str(&id, "text").unwrap_or_default(),
                reply_to: self.get_str(&id, "reply_to"),
                at: self.get_i64(&id, "at").unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// The files attached to the document, in the order attached.
    pub fn attachments(&self) -> Vec<Attachment> {
        let Some(list) = self.obj("attachments") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for i in 0..self.am.length(&list) {
            let Ok(Some((Value::Object(ObjType::Map), id))) = self.am.get(&list, i) else {
                continue;
            };
            let (Some(name), Some(hash)) = (self.get_str(&id, "name"), self.get_str(&id, "hash"))
            else {
                continue;
            };
            out.push(Attachment {
                name,
                hash,
                size: self.get_i64(&id, "size").unwrap_or(0).max(0) as u64,
                by: self.get_str(&id, "by").unwrap_or_default(),
                at: self.get_i64(&id, "at").unwrap_or(0),
            });
        }
        out
    }

    /// A form's fields as a JSON object.
    pub fn fields(&self) -> Result<serde_json::Value, DocError> {
        let obj = self.want(Kind::Form)?;
        Ok(self.json_of(&obj, ObjType::Map))
    }

    fn json_of(&self, obj: &ObjId, ty: ObjType) -> serde_json::Value {
        let convert = |v: Value<'_>, id: ObjId| match v {
            Value::Object(t) => self.json_of(&id, t),
            Value::Scalar(s) => scalar_json(s.as_ref()),
        };
        match ty {
            ObjType::Map | ObjType::Table => {
                let mut m = serde_json::Map::new();
                for k in self.am.keys(obj) {
                    if let Ok(Some((v, id))) = self.am.get(obj, k.as_str()) {
                        m.insert(k.clone(), convert(v, id));
                    }
                }
                serde_json::Value::Object(m)
            }
            ObjType::List => {
                let mut a = Vec::new();
                for i in 0..self.am.length(obj) {
                    if let Ok(Some((v, id))) = self.am.get(obj, i) {
                        a.push(convert(v, id));
                    }
                }
                serde_json::Value::Array(a)
            }
            ObjType::Text => serde_json::Value::String(self.am.text(obj).unwrap_or_default()),
        }
    }

    /// Every applied change, oldest first (causal order).
    pub fn history(&mut self) -> Vec<HistoryEntry> {
        self.am
            .get_changes(&[])
            .into_iter()
            .map(|c| HistoryEntry {
                hash: hex::encode(c.hash().0),
                author: PeerId::from_bytes(c.actor_id().to_bytes())
                    .map(|p| p.to_string())
                    .unwrap_or_else(|_| "?".into()),
                time: c.timestamp(),
                message: c.message().map(str::to_string),
                ops: c.len(),
            })
            .collect()
    }

    /// The authors of the applied changes.
    pub fn authors(&mut self) -> BTreeSet<String> {
        self.am
            .get_changes(&[])
            .into_iter()
            .filter_map(|c| PeerId::from_bytes(c.actor_id().to_bytes()).ok())
            .map(|p| p.to_string())
            .collect()
    }

    // ---- editing ----

    /// Replaces a note's text, applied as a character diff so that concurrent edits elsewhere in
    /// the text still merge. The diff (Myers, over code points, as automerge's positions are)
    /// has a deadline of [`DIFF_DEADLINE`]: automerge's own `update_text` has none and takes
    /// quadratic time on a large insertion; past the deadline the diff is coarser (larger
    /// replaced spans), never wrong.
    pub fn set_text(
        &mut self,
        space: &Space,
        key: &ed25519::Keypair,
        now_ms: i64,
        text: &str,
    ) -> Result<Option<SignedChange>, DocError> {
        let obj = self.want(Kind::Note)?;
        let old: Vec<char> = self.text()?.chars().collect();
        let new: Vec<char> = text.chars().collect();
        let ops = similar::capture_diff_slices_deadline(
            similar::Algorithm::Myers,
            &old,
            &new,
            Some(std::time::Instant::now() + DIFF_DEADLINE),
        );
        self.edit(space, key, now_ms, "write", |am| {
            let mut at = 0usize;
            for op in ops {
                let (del, ins) = match op {
                    similar::DiffOp::Equal { len, .. } => {
                        at += len;
                        continue;
                    }
                    similar::DiffOp::Delete { old_len, .. } => (old_len, 0..0),
                    similar::DiffOp::Insert {
                        new_index, new_len, ..
                    } => (0, new_index..new_index + new_len),
                    similar::DiffOp::Replace {
                        old_len,
                        new_index,
                        new_len,
                        ..
                    } => (old_len, new_index..new_index + new_len),
                };
                let inserted: String = new[ins.clone()].iter().collect();
                am.splice_text(&obj, at, del as isize, &inserted)
                    .map_err(corrupt)?;
                at += ins.len();
            }
            Ok(())
        })
    }

    /// Appends to a note's text.
    pub fn append_text(
        &mut self,
        space: &Space,
        key: &ed25519::Keypair,
        now_ms: i64,
        text: &str,
    ) -> Result<Option<SignedChange>, DocError> {
        let obj = self.want(Kind::Note)?;
        self.edit(space, key, now_ms, "append", |am| {
            let len = am.length(&obj);
            am.splice_text(&obj, len, 0, text)
                .map_err(|e| DocError::Corrupt(e.to_string()))
        })
    }

    /// Applies a sequence of splices `(position, characters deleted, text inserted)` to a note
    /// as one change, the way an editor reports keystrokes. Runs of typing (each insert right
    /// after the previous one) and of deleting (forward or backspace) go to automerge as one
    /// splice each: the same operations, one index lookup instead of one per character.
    pub fn splice(
        &mut self,
        space: &Space,
        key: &ed25519::Keypair,
        now_ms: i64,
        edits: &[(usize, isize, &str)],
    ) -> Result<Option<SignedChange>, DocError> {
        let obj = self.want(Kind::Note)?;
        self.edit(space, key, now_ms, "edit", |am| {
            let mut apply = |(pos, del, ins): (usize, isize, &str)| {
                am.splice_text(&obj, pos, del, ins)
                    .map(drop)
                    .map_err(|e| DocError::Corrupt(e.to_string()))
            };
            let mut run: Option<(usize, isize, String)> = None;
            for &(pos, del, ins) in edits {
                if let Some((p, d, text)) = &mut run {
                    let typing = *d == 0 && del == 0 && pos == *p + text.chars().count();
                    let deleting = text.is_empty() && ins.is_empty() && *d > 0 && del > 0;
                    if typing {
                        text.push_str(ins);
                        continue;
                    }
                    if deleting && pos == *p {
                        *d += del;
                        continue;
                    }
                    if deleting && del == 1 && pos + 1 == *p {
                        *p = pos;
                        *d += 1;
                        continue;
                    }
                    let (p, d, text) = run.take().expect("a run");
                    apply((p, d, &text))?;
                }
                run = Some((pos, del, ins.to_owned()));
            }
            if let Some((p, d, text)) = run {
                apply((p, d, &text))?;
            }
            Ok(())
        })
    }

    /// Renames the document.
    pub fn set_title(
        &mut self,
        space: &Space,
        key: &ed25519::Keypair,
        now_ms: i64,
        title: &str,
    ) -> Result<Option<SignedChange>, DocError> {
        check_title(title)?;
        self.edit(space, key, now_ms, "rename", |am| {
            am.put(ROOT, "title", title)
                .map_err(|e| DocError::Corrupt(e.to_string()))
        })
    }

    /// Adds a task; returns its id and the change.
    pub fn add_task(
        &mut self,
        space: &Space,
        key: &ed25519::Keypair,
        now_ms: i64,
        title: &str,
        assignee: Option<PeerId>,
        due: Option<&str>,
    ) -> Result<(String, SignedChange), DocError> {
        check_title(title)?;
        let list = self.want(Kind::Tasks)?;
        let me = libp2p_identity::PublicKey::from(key.public()).to_peer_id();
        let heads = self.am.get_heads();
        let id = short_id(&[
            &me.to_bytes(),
            &now_ms.to_le_bytes(),
            title.as_bytes(),
            &heads.first().map(|h| h.0).unwrap_or_default(),
            &(self.sigs.len() as u64).to_le_bytes(),
        ]);
        let task = id.clone();
        let change = self.edit(space, key, now_ms, &format!("add task {title}"), |am| {
            let n = am.length(&list);
            let m = am.insert_object(&list, n, ObjType::Map).map_err(corrupt)?;
            am.put(&m, "id", task.as_str()).map_err(corrupt)?;
            am.put(&m, "title", title).map_err(corrupt)?;
            am.put(&m, "state", TaskState::Todo.as_str())
                .map_err(corrupt)?;
            am.put(&m, "created_by", me.to_string()).map_err(corrupt)?;
            if let Some(a) = assignee {
                am.put(&m, "assignee", a.to_string()).map_err(corrupt)?;
            }
            if let Some(d) = due {
                am.put(&m, "due", d).map_err(corrupt)?;
            }
            Ok(())
        })?;
        Ok((id, change.expect("adding a task writes operations")))
    }

    /// Changes a task's fields.
    pub fn update_task(
        &mut self,
        space: &Space,
        key: &ed25519::Keypair,
        now_ms: i64,
        task: &str,
        update: &TaskUpdate,
    ) -> Result<Option<SignedChange>, DocError> {
        if let Some(t) = &update.title {
            check_title(t)?;
        }
        let (obj, current) = self
            .task_objs()?
            .into_iter()
            .find(|(_, t)| t.task == task)
            .ok_or_else(|| DocError::NoTask(task.to_string()))?;
        let message = match update.state {
            Some(s) => format!("task {} {}", current.title, s.as_str()),
            None => format!("update task {}", current.title),
        };
        self.edit(space, key, now_ms, &message, |am| {
            if let Some(t) = &update.title
                && *t != current.title
            {
                am.put(&obj, "title", t.as_str()).map_err(corrupt)?;
            }
            if let Some(s) = update.state
                && s != current.state
            {
                am.put(&obj, "state", s.as_str()).map_err(corrupt)?;
            }
            if let Some(a) = &update.assignee {
                let new = a.map(|p| p.to_string());
                if new != current.assignee {
                    match new {
                        Some(p) => am.put(&obj, "assignee", p).map_err(corrupt)?,
                        None => am.delete(&obj, "assignee").map_err(corrupt)?,
                    }
                }
            }
            if let Some(d) = &update.due
                && *d != current.due
            {
                match d {
                    Some(d) => am.put(&obj, "due", d.as_str()).map_err(corrupt)?,
                    None => am.delete(&obj, "due").map_err(corrupt)?,
                }
            }
            Ok(())
        })
    }

    /// Adds a post to a thread; returns its id and the change.
    pub fn add_post(
        &mut self,
        space: &Space,
        key: &ed25519::Keypair,
        now_ms: i64,
        text: &str,
        reply_to: Option<&str>,
    ) -> Result<(String, SignedChange), DocError> {
        let list = self.want(Kind::Thread)?;
        if let Some(r) = reply_to
            && !self.posts()?.iter().any(|p| p.post == r)
        {
            return Err(DocError::NoPost(r.to_string()));
        }
        let me = libp2p_identity::PublicKey::from(key.public()).to_peer_id();
        let id = short_id(&[
            &me.to_bytes(),
            &now_ms.to_le_bytes(),
            text.as_bytes(),
            &(self.sigs.len() as u64).to_le_bytes(),
        ]);
        let post = id.clone();
        let change = self.edit(space, key, now_ms, "post", |am| {
            let n = am.length(&list);
            let m = am.insert_object(&list, n, ObjType::Map).map_err(corrupt)?;
            am.put(&m, "id", post.as_str()).map_err(corrupt)?;
            am.put(&m, "author", me.to_string()).map_err(corrupt)?;
            let t = am.put_object(&m, "text", ObjType::Text).map_err(corrupt)?;
            am.splice_text(&t, 0, 0, text).map_err(corrupt)?;
            am.put(&m, "at", now_ms).map_err(corrupt)?;
            if let Some(r) = reply_to {
                am.put(&m, "reply_to", r).map_err(corrupt)?;
            }
            Ok(())
        })?;
        Ok((id, change.expect("a post writes operations")))
    }

    /// Attaches a file (already shared as an agora-files blob) by name, hash and size.
    pub fn attach(
        &mut self,
        space: &Space,
        key: &ed25519::Keypair,
        now_ms: i64,
        name: &str,
        hash: &str,
        size: u64,
    ) -> Result<Option<SignedChange>, DocError> {
        check_title(name)?;
        let me = libp2p_identity::PublicKey::from(key.public()).to_peer_id();
        let list = self.obj("attachments");
        self.edit(space, key, now_ms, &format!("attach {name}"), |am| {
            let list = match list {
                Some(l) => l,
                None => am
                    .put_object(ROOT, "attachments", ObjType::List)
                    .map_err(corrupt)?,
            };
            let n = am.length(&list);
            let m = am.insert_object(&list, n, ObjType::Map).map_err(corrupt)?;
            am.put(&m, "name", name).map_err(corrupt)?;
            am.put(&m, "hash", hash).map_err(corrupt)?;
            am.put(&m, "size", size as i64).map_err(corrupt)?;
            am.put(&m, "by", me.to_string()).map_err(corrupt)?;
            am.put(&m, "at", now_ms).map_err(corrupt)?;
            Ok(())
        })
    }

    /// Sets a form's fields to `value` (a JSON object): keys not in it are deleted, changed keys
    /// are rewritten, equal keys are left alone (so concurrent edits of other keys merge).
    pub fn set_fields(
        &mut self,
        space: &Space,
        key: &ed25519::Keypair,
        now_ms: i64,
        value: &serde_json::Value,
    ) -> Result<Option<SignedChange>, DocError> {
        let obj = self.want(Kind::Form)?;
        let serde_json::Value::Object(new) = value else {
            return Err(DocError::NotAnObject);
        };
        let current = match self.fields()? {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        self.edit(space, key, now_ms, "set fields", |am| {
            for k in current.keys() {
                if !new.contains_key(k) {
                    am.delete(&obj, k.as_str()).map_err(corrupt)?;
                }
            }
            for (k, v) in new {
                if current.get(k) != Some(v) {
                    put_json(am, &obj, k.as_str().into(), v)?;
                }
            }
            Ok(())
        })
    }

    /// The automerge document's compact encoding.
    pub fn save(&mut self) -> Vec<u8> {
        self.am.save()
    }

    /// The underlying automerge document (read-only).
    pub fn automerge(&self) -> &AutoCommit {
        &self.am
    }
}

fn corrupt(e: automerge::AutomergeError) -> DocError {
    DocError::Corrupt(e.to_string())
}

fn check_title(title: &str) -> Result<(), DocError> {
    if title.len() > MAX_TITLE_BYTES {
        return Err(DocError::TitleTooLong {
            len: title.len(),
            max: MAX_TITLE_BYTES,
        });
    }
    Ok(())
}

fn scalar_json(s: &ScalarValue) -> serde_json::Value {
    use serde_json::Value as J;
    match s {
        ScalarValue::Str(s) => J::String(s.to_string()),
        ScalarValue::Int(i) => J::from(*i),
        ScalarValue::Uint(u) => J::from(*u),
        ScalarValue::F64(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .unwrap_or(J::Null),
        ScalarValue::Boolean(b) => J::Bool(*b),
        ScalarValue::Timestamp(t) => J::from(*t),
        ScalarValue::Counter(c) => J::from(i64::from(c)),
        ScalarValue::Null => J::Null,
        _ => J::Null,
    }
}

fn put_json(
    am: &mut AutoCommit,
    obj: &ObjId,
    prop: automerge::Prop,
    v: &serde_json::Value,
) -> Result<(), DocError> {
    use serde_json::Value as J;
    let scalar: Option<ScalarValue> = match v {
        J::Null => Some(ScalarValue::Null),
        J::Bool(b) => Some(ScalarValue::Boolean(*b)),
        J::Number(n) => Some(if let Some(i) = n.as_i64() {
            ScalarValue::Int(i)
        } else if let Some(u) = n.as_u64() {
            ScalarValue::Uint(u)
        } else {
            ScalarValue::F64(n.as_f64().unwrap_or(0.0))
        }),
        J::String(s) => Some(ScalarValue::Str(s.as_str().into())),
        _ => None,
    };
    if let Some(s) = scalar {
        return am.put(obj, prop, s).map_err(corrupt);
    }
    match v {
        J::Object(m) => {
            let child = am.put_object(obj, prop, ObjType::Map).map_err(corrupt)?;
            for (k, v) in m {
                put_json(am, &child, k.as_str().into(), v)?;
            }
        }
        J::Array(a) => {
            let child = am.put_object(obj, prop, ObjType::List).map_err(corrupt)?;
            for (i, v) in a.iter().enumerate() {
                insert_json(am, &child, i, v)?;
            }
        }
        _ => unreachable!("scalars handled above"),
    }
    Ok(())
}

fn insert_json(
    am: &mut AutoCommit,
    list: &ObjId,
    i: usize,
    v: &serde_json::Value,
) -> Result<(), DocError> {
    use serde_json::Value as J;
    match v {
        J::Object(m) => {
            let child = am.insert_object(list, i, ObjType::Map).map_err(corrupt)?;
            for (k, v) in m {
                put_json(am, &child, k.as_str().into(), v)?;
            }
        }
        J::Array(a) => {
            let child = am.insert_object(list, i, ObjType::List).map_err(corrupt)?;
            for (j, v) in a.iter().enumerate() {
                insert_json(am, &child, j, v)?;
            }
        }
        J::Null => am.insert(list, i, ScalarValue::Null).map_err(corrupt)?,
        J::Bool(b) => am.insert(list, i, *b).map_err(corrupt)?,
        J::Number(n) => {
            if let Some(x) = n.as_i64() {
                am.insert(list, i, x).map_err(corrupt)?
            } else if let Some(u) = n.as_u64() {
                am.insert(list, i, u).map_err(corrupt)?
            } else {
                am.insert(list, i, n.as_f64().unwrap_or(0.0))
                    .map_err(corrupt)?
            }
        }
        J::String(s) => am.insert(list, i, s.as_str()).map_err(corrupt)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests;
