//! A space's membership as a pure state machine: a DAG of signed operations and the members
//! and roles it resolves to.
//!
//! # Operations
//! An [`Op`] is `Create { name, owner }`, `Add { member, role }`, `Remove { member }` or
//! `ChangeRole { member, role }`, with its author, the author's clock (informational only) and
//! the ids of its parent operations (the heads its author knew, sorted, at most
//! [`MAX_PARENTS`]). Its id ([`OpId`]) is `BLAKE3("agora-docs/op/1\0" ‖ postcard(op))`; the
//! author signs `"agora-docs/membership/1\0" ‖ postcard(op)` with its ed25519 identity key (the
//! [`PeerId`] embeds the key, so no key directory is needed). The signature is not part of the
//! id: ed25519 signatures can be re-encoded, and a second encoding of one operation must not be a
//! second operation. The space id is the id of its create operation, and every other operation
//! has at least one parent, so every operation is bound to its space through its ancestry.
//!
//! # Validity (checked by [`Space::apply`], by every member, before anything is stored)
//! - The encoding is at most [`MAX_OP_BYTES`], the space holds fewer than [`MAX_OPS`]
//!   operations, the name is at most [`MAX_NAME_BYTES`], parents are strictly sorted.
//! - The signature verifies against the author's key; every peer id named is an ed25519 one.
//! - All parents are known; otherwise the operation is refused with
//!   [`OpError::MissingParents`] so that a sync layer can fetch them and retry.
//! - At the operation's causal point — the membership resolved (below) from its ancestors
//!   alone — the author is the owner or an admin, the target is not the owner, no one is given
//!   [`Role::Owner`], `Add` names a non-member, `Remove` and `ChangeRole` name a member.
//!
//! Operations by editors, readers and outsiders are therefore never stored: nothing they sign
//! changes membership.
//!
//! # Resolving concurrent changes
//! The state of a set of operations is computed from the set alone, never from arrival order,
//! so members holding the same operations agree. Two operations are *concurrent* when neither
//! is an ancestor of the other. An operation *takes effect* when it is not void (below) and, at
//! its causal point (from its non-void ancestors only), its author is the owner or an admin,
//! its target is not the owner, and a `Remove`/`ChangeRole` target is a member. Concurrent
//! operations never grant or take authority from each other except through rule 2.
//!
//! 1. **A member's role is the lowest among the latest operations setting it; removal is the
//!    lowest.** `Add` and `ChangeRole` set a member's role, `Remove` sets "not a member". Of the
//!    effective operations that set a member's role, the latest ones (those no other such
//!    operation follows) decide, and the lowest of them wins: concurrent add and remove of a
//!    member ends removed, concurrent editor and reader ends reader. Least privilege is the
//!    safe direction, and it does not depend on who signed first. An operation that has both
//!    as ancestors settles it.
//! 2. **A removal wins over the removed admin's concurrent changes.** A *revocation* is an
//!    effective operation that removes a member or sets its role below admin. Every operation
//!    by the revoked member that is concurrent with the revocation is void: the member cannot
//!    prove it wrote it before being removed — a removed admin could otherwise backdate changes
//!    by naming old parents. Operations after the revocation (that have it as an ancestor) count
//!    only if the member was made admin again. Voiding cascades: a member added by a void
//!    operation is not a member, so its own operations do not take effect either.
//! 3. **Mutual revocations: the senior admin wins.** Revocations that void each other (admins
//!    removing each other concurrently) are settled as a grounded argument: a revocation stands
//!    when every revocation voiding it has fallen and falls when one that stands voids it; what
//!    remains is a cycle, and there the revocation whose author holds the oldest grant — the
//!    lowest (depth, id) of the operation that gave it its role at the revocation's causal
//!    point; the owner's grant is the create operation — stands first. A grant's depth and id
//!    are fixed once it exists, so a removed admin cannot grind a backdated counter-removal to
//!    win. The cost: a junior admin cannot remove a senior one who objects — the owner can.
//! 4. **The owner is fixed.** Nobody (not even the owner) removes the owner or changes its role,
//!    and no operation grants [`Role::Owner`]. Ownership transfer is left to a later operation
//!    kind; the owner cannot leave its space meanwhile. The owner's revocations therefore
//!    always stand.
//!
//! Rules 2 and 3 are applied to a fixpoint. Voiding more operations leaves fewer revocations,
//! which void less, so the resolution alternates (the alternating fixpoint of well-founded
//! semantics): what is void for sure only grows, what may be void only shrinks, until they
//! meet. A revocation that takes effect only through operations that turn out void (a removed
//! admin's backdated grant to a confederate, say) therefore voids nothing. Should a cycle stay
//! open, its operations are void — the conservative side. Void operations stay in the log
//! (members must still forward them: later operations may name them as parents);
//! [`Applied::Added`] says whether an operation took effect.
//!
//! # Cost
//! Each operation keeps a bit set of its ancestors (at most [`MAX_OPS`] bits), so concurrency
//! tests are O(1). Applying an operation resolves its ancestors and then the whole log, usually
//! in one round; a round looks, per operation, through the operations that set its author's
//! role, so a log that churns one member costs O(n²) per round with n ≤ [`MAX_OPS`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use libp2p_identity::{PeerId, PublicKey, ed25519};
use serde::{Deserialize, Serialize};

/// Operations a space's log holds at most. Membership changes only, not document edits; a
/// longer-lived space will need a signed snapshot (a later increment).
pub const MAX_OPS: usize = 2048;
/// Largest encoded [`SignedOp`] (postcard), checked before anything else.
pub const MAX_OP_BYTES: usize = 1024;
/// Parents an operation may name.
pub const MAX_PARENTS: usize = 16;
/// Longest space name, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 256;

/// Domain tag of operation ids. NUL-terminated so that no tag is a prefix of another.
const ID_TAG: &[u8] = b"agora-docs/op/1\0";
/// Domain tag of signatures.
const SIGN_TAG: &[u8] = b"agora-docs/membership/1\0";

/// The id of an operation: BLAKE3 of its domain-tagged encoding.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpId(pub [u8; 32]);

/// A space's id: the [`OpId`] of its create operation.
pub type SpaceId = OpId;

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpId({})", &hex::encode(self.0)[..12])
    }
}

/// A member's role, ordered by privilege (`Reader < Editor < Admin < Owner`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads documents.
    Reader,
    /// Reads and changes documents.
    Editor,
    /// Also changes membership.
    Admin,
    /// The creator: an admin nobody can remove or demote.
    Owner,
}

impl Role {
    /// May sign membership operations.
    pub fn is_admin(self) -> bool {
        self >= Role::Admin
    }

    /// May change documents.
    pub fn can_write(self) -> bool {
        self >= Role::Editor
    }
}

/// What an operation does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// The root of a space; `owner` must be the author.
    Create {
        name: String,
        owner: PeerId,
    },
    Add {
        member: PeerId,
        role: Role,
    },
    Remove {
        member: PeerId,
    },
    ChangeRole {
        member: PeerId,
        role: Role,
    },
}

impl Action {
    /// The member whose role this sets, and the role it sets (`None`: not a member).
    fn sets(&self) -> Option<(PeerId, Option<Role>)> {
        match self {
            Action::Create { .. } => None,
            Action::Add { member, role } | Action::ChangeRole { member, role } => {
                Some((*member, Some(*role)))
            }
            Action::Remove { member } => Some((*member, None)),
        }
    }
}

/// An unsigned operation: what is hashed and signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Ids of the operations this one follows, strictly sorted; empty only for `Create`.
    pub parents: Vec<OpId>,
    pub author: PeerId,
    /// The author's clock when signing. Informational (history); never used for ordering.
    pub time_ms: u64,
    pub action: Action,
}

impl Op {
    /// The operation's id.
    pub fn id(&self) -> OpId {
        let mut h = blake3::Hasher::new();
        h.update(ID_TAG);
        h.update(&encode(self));
        OpId(*h.finalize().as_bytes())
    }

    fn signing_message(&self) -> Vec<u8> {
        let mut m = SIGN_TAG.to_vec();
        m.extend_from_slice(&encode(self));
        m
    }

    /// Signs as `key`, which must be the key of `self.author` for the result to be valid.
    pub fn sign(self, key: &ed25519::Keypair) -> SignedOp {
        let signature = key.sign(&self.signing_message());
        SignedOp {
            op: self,
            signature,
        }
    }
}

/// An operation and its author's ed25519 signature (64 bytes; any other length fails to verify).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedOp {
    pub op: Op,
    pub signature: Vec<u8>,
}

impl SignedOp {
    pub fn id(&self) -> OpId {
        self.op.id()
    }

    /// The postcard encoding (what a sync layer sends).
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes untrusted bytes, refusing more than [`MAX_OP_BYTES`] before decoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, OpError> {
        if bytes.len() > MAX_OP_BYTES {
            return Err(OpError::TooLarge {
                size: bytes.len(),
                max: MAX_OP_BYTES,
            });
        }
        postcard::from_bytes(bytes).map_err(|_| OpError::Malformed)
    }

    fn verify(&self) -> Result<(), OpError> {
        let key = public_key(&self.op.author)?;
        if key.verify(&self.op.signing_message(), &self.signature) {
            Ok(())
        } else {
            Err(OpError::BadSignature {
                author: self.op.author,
            })
        }
    }
}

/// What [`Space::apply`] did with a valid operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Already in the log; nothing changed.
    Known,
    /// Stored. `effective` is false when the operation is void or its author lost authority
    /// through a void operation (now — an operation that arrives later can still void an
    /// effective one). An effective operation can still lose to a concurrent one that gives its
    /// target less (rule 1).
    Added { id: OpId, effective: bool },
}

/// Why an operation was refused. Nothing was stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("operation is {size} bytes, more than the {max} allowed; dropped")]
    TooLarge { size: usize, max: usize },
    #[error(
        "operation does not decode, or a space was started from something other than a create operation without parents; dropped"
    )]
    Malformed,
    #[error("the space already holds {max} operations, the most allowed")]
    TooManyOps { max: usize },
    #[error(
        "operation names {count} parents, more than {max}; sign a new operation over fewer heads"
    )]
    TooManyParents { count: usize, max: usize },
    #[error("operation parents are not strictly sorted; dropped")]
    UnsortedParents,
    #[error("only a create operation has no parents; dropped")]
    NoParents,
    #[error("a create operation starts another space: {0}")]
    OtherSpace(SpaceId),
    #[error("space name is {len} bytes, more than {max}; choose a shorter name")]
    NameTooLong { len: usize, max: usize },
    #[error(
        "peer id {0} does not embed an ed25519 key; Agora peer ids start with 12D3KooW, check for a typo"
    )]
    NotEd25519(PeerId),
    #[error("signature does not match the claimed author {author}: forged or corrupted, dropped")]
    BadSignature { author: PeerId },
    #[error("parents not known yet: fetch them from the sender and apply this operation again")]
    MissingParents(Vec<OpId>),
    #[error(
        "{author} was {role:?} at this operation's causal point; only admins change membership"
    )]
    NotAdmin { author: PeerId, role: Option<Role> },
    #[error("the owner cannot be removed or demoted, and nobody can be made owner")]
    Owner,
    #[error("{0} is not a member at this operation's causal point")]
    NotMember(PeerId),
    #[error("{0} is already a member; change its role instead")]
    AlreadyMember(PeerId),
    #[error("the create operation's owner must be its author")]
    OwnerNotAuthor,
}

/// A member's role and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub role: Role,
    /// The (depth, id) of the operation that gave the member this role: its seniority, lower
    /// is older (the owner's is the create operation).
    pub since: (u32, OpId),
}

/// One space's membership log and the state it resolves to.
#[derive(Clone, Debug)]
pub struct Space {
    id: SpaceId,
    name: String,
    owner: PeerId,
    /// In arrival order, which is a topological order (parents are stored first).
    ops: Vec<Stored>,
    index: HashMap<OpId, usize>,
    heads: BTreeSet<OpId>,
    state: Resolved,
}

#[derive(Clone, Debug)]
struct Stored {
    signed: SignedOp,
    id: OpId,
    /// Longest path from the create operation.
    depth: u32,
    /// Strict ancestors, by index into `Space::ops`.
    ancestors: BitSet,
}

#[derive(Clone, Debug, Default)]
struct Resolved {
    members: BTreeMap<PeerId, Member>,
    effective: BitSet,
}

impl Space {
    /// Creates a space owned by `key`'s peer id, returning it and the create operation (which
    /// every other member needs first: [`Space::from_create`]). The same owner, name and
    /// millisecond give the same space id.
    pub fn create(
        name: &str,
        key: &ed25519::Keypair,
        now_ms: u64,
    ) -> Result<(Self, SignedOp), OpError> {
        let owner = PublicKey::from(key.public()).to_peer_id();
        let signed = Op {
            parents: Vec::new(),
            author: owner,
            time_ms: now_ms,
            action: Action::Create {
                name: name.to_owned(),
                owner,
            },
        }
        .sign(key);
        Ok((Self::from_create(signed.clone())?, signed))
    }

    /// Starts a replica of a space from its create operation (checked like any other).
    pub fn from_create(signed: SignedOp) -> Result<Self, OpError> {
        check_size(&signed)?;
        // A space starts with a create operation and nothing else.
        let Action::Create { name, owner } = &signed.op.action else {
            return Err(OpError::Malformed);
        };
        if !signed.op.parents.is_empty() {
            return Err(OpError::Malformed);
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(OpError::NameTooLong {
                len: name.len(),
                max: MAX_NAME_BYTES,
            });
        }
        if *owner != signed.op.author {
            return Err(OpError::OwnerNotAuthor);
        }
        signed.verify()?;
        let id = signed.id();
        let mut space = Space {
            id,
            name: name.clone(),
            owner: *owner,
            ops: vec![Stored {
                signed,
                id,
                depth: 0,
                ancestors: BitSet::default(),
            }],
            index: HashMap::from([(id, 0)]),
            heads: BTreeSet::from([id]),
            state: Resolved::default(),
        };
        space.state = space.resolve(&BitSet::with_len(1));
        Ok(space)
    }

    pub fn id(&self) -> SpaceId {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn owner(&self) -> PeerId {
        self.owner
    }

    /// Operations in the log (effective or not).
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Never true: a space holds at least its create operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Current members and their roles.
    pub fn members(&self) -> BTreeMap<PeerId, Role> {
        self.state
            .members
            .iter()
            .map(|(peer, m)| (*peer, m.role))
            .collect()
    }

    /// Whether `peer` ever held a role that may write documents (editor or above) through an
    /// effective operation, or owns the space. Document changes by a member who wrote once and
    /// no longer may are kept only when a current writer's change depends on them
    /// (`proto::doc`).
    pub fn ever_wrote(&self, peer: &PeerId) -> bool {
        if *peer == self.owner {
            return true;
        }
        self.ops.iter().enumerate().any(|(i, stored)| {
            self.state.effective.contains(i)
                && matches!(stored.signed.op.action.sets(), Some((m, Some(role))) if m == *peer && role.can_write())
        })
    }

    /// A member's role, `None` for non-members.
    pub fn role(&self, peer: &PeerId) -> Option<Role> {
        self.state.members.get(peer).map(|m| m.role)
    }

    /// Whether `peer` may change documents now.
    pub fn can_write(&self, peer: &PeerId) -> bool {
        self.role(peer).is_some_and(Role::can_write)
    }

    /// Whether `peer` may change membership now.
    pub fn is_admin(&self, peer: &PeerId) -> bool {
        self.role(peer).is_some_and(Role::is_admin)
    }

    /// The operations no other operation names as a parent.
    pub fn heads(&self) -> Vec<OpId> {
        self.heads.iter().copied().collect()
    }

    /// Whether the operation is in the log.
    pub fn contains(&self, id: &OpId) -> bool {
        self.index.contains_key(id)
    }

    /// Whether a stored operation takes effect in the current state.
    pub fn is_effective(&self, id: &OpId) -> bool {
        self.index
            .get(id)
            .is_some_and(|&i| self.state.effective.contains(i))
    }

    /// The operations at or before `heads` (all known heads' ancestors and themselves), as
    /// indices; `None` when a head is unknown.
    fn past(&self, heads: &[OpId]) -> Option<BitSet> {
        let mut past = BitSet::default();
        for h in heads {
            let &i = self.index.get(h)?;
            past.union_with(&self.ops[i].ancestors);
            past.insert(i);
        }
        Some(past)
    }

    /// How many operations lie at or before `heads`; `None` when a head is unknown. A later
    /// causal point has a larger past.
    pub fn past_len(&self, heads: &[OpId]) -> Option<usize> {
        self.past(heads).map(|p| p.iter().count())
    }

    /// Whether `op` lies at or before `heads` (false when either is unknown).
    pub fn covers(&self, heads: &[OpId], op: &OpId) -> bool {
        match (self.past(heads), self.index.get(op)) {
            (Some(past), Some(&i)) => past.contains(i),
            _ => false,
        }
    }

    /// The effective removals, the operations after which a space key must be rotated.
    pub fn removals(&self) -> Vec<OpId> {
        self.ops
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                self.state.effective.contains(*i)
                    && matches!(s.signed.op.action, Action::Remove { .. })
            })
            .map(|(_, s)| s.id)
            .collect()
    }

    /// Every operation, parents before children.
    pub fn ops(&self) -> impl Iterator<Item = &SignedOp> {
        self.ops.iter().map(|s| &s.signed)
    }

    /// The operations a peer whose heads are `heads` lacks, parents before children. Heads we
    /// do not know are ignored (the peer has operations we lack; it sends them to us).
    pub fn ops_since(&self, heads: &[OpId]) -> Vec<SignedOp> {
        let mut known = BitSet::default();
        for h in heads {
            if let Some(&i) = self.index.get(h) {
                known.union_with(&self.ops[i].ancestors);
                known.insert(i);
            }
        }
        self.ops
            .iter()
            .enumerate()
            .filter(|(i, _)| !known.contains(*i))
            .map(|(_, s)| s.signed.clone())
            .collect()
    }

    /// Signs `action` by `key` on top of the current heads (the first [`MAX_PARENTS`] of them;
    /// the rest are merged by a later operation). Does not apply it.
    pub fn sign(&self, action: Action, key: &ed25519::Keypair, now_ms: u64) -> SignedOp {
        Op {
            parents: self.heads.iter().take(MAX_PARENTS).copied().collect(),
            author: PublicKey::from(key.public()).to_peer_id(),
            time_ms: now_ms,
            action,
        }
        .sign(key)
    }

    /// Signs `action` by `key` on top of the current heads and applies it.
    pub fn act(
        &mut self,
        action: Action,
        key: &ed25519::Keypair,
        now_ms: u64,
    ) -> Result<SignedOp, OpError> {
        let signed = self.sign(action, key, now_ms);
        self.apply(signed.clone())?;
        Ok(signed)
    }

    /// Checks an operation (see the module docs) and stores it. Idempotent: a known operation
    /// returns [`Applied::Known`] without any further check.
    pub fn apply(&mut self, signed: SignedOp) -> Result<Applied, OpError> {
        check_size(&signed)?;
        let id = signed.id();
        if self.index.contains_key(&id) {
            return Ok(Applied::Known);
        }
        if self.ops.len() >= MAX_OPS {
            return Err(OpError::TooManyOps { max: MAX_OPS });
        }
        let op = &signed.op;
        if matches!(op.action, Action::Create { .. }) {
            return Err(OpError::OtherSpace(id));
        }
        if op.parents.is_empty() {
            return Err(OpError::NoParents);
        }
        if op.parents.len() > MAX_PARENTS {
            return Err(OpError::TooManyParents {
                count: op.parents.len(),
                max: MAX_PARENTS,
            });
        }
        if !op.parents.windows(2).all(|w| w[0] < w[1]) {
            return Err(OpError::UnsortedParents);
        }
        let (target, level) = op.action.sets().expect("not a create");
        public_key(&target)?;
        if level == Some(Role::Owner) {
            return Err(OpError::Owner);
        }
        // The signature before the parents: a sync layer fetches missing parents only for
        // operations someone really signed.
        signed.verify()?;
        let missing: Vec<OpId> = op
            .parents
            .iter()
            .filter(|p| !self.index.contains_key(p))
            .copied()
            .collect();
        if !missing.is_empty() {
            return Err(OpError::MissingParents(missing));
        }

        let mut ancestors = BitSet::with_capacity(self.ops.len());
        let mut depth = 0;
        for p in &op.parents {
            let i = self.index[p];
            ancestors.union_with(&self.ops[i].ancestors);
            ancestors.insert(i);
            depth = depth.max(self.ops[i].depth + 1);
        }

        // Validity at the causal point.
        let at = self.resolve(&ancestors);
        let role = at.members.get(&op.author).map(|m| m.role);
        if !role.is_some_and(Role::is_admin) {
            return Err(OpError::NotAdmin {
                author: op.author,
                role,
            });
        }
        let target_role = at.members.get(&target).map(|m| m.role);
        if target_role == Some(Role::Owner) {
            return Err(OpError::Owner);
        }
        match (&op.action, target_role) {
            (Action::Add { .. }, Some(_)) => return Err(OpError::AlreadyMember(target)),
            (Action::Remove { .. } | Action::ChangeRole { .. }, None) => {
                return Err(OpError::NotMember(target));
            }
            _ => {}
        }

        for p in &op.parents {
            self.heads.remove(p);
        }
        self.heads.insert(id);
        let index = self.ops.len();
        self.index.insert(id, index);
        self.ops.push(Stored {
            signed,
            id,
            depth,
            ancestors,
        });
        self.state = self.resolve(&BitSet::with_len(self.ops.len()));
        Ok(Applied::Added {
            id,
            effective: self.state.effective.contains(index),
        })
    }

    fn concurrent(&self, a: usize, b: usize) -> bool {
        a != b && !self.ops[a].ancestors.contains(b) && !self.ops[b].ancestors.contains(a)
    }

    /// The state of a causally closed set of operations (see "Resolving concurrent changes").
    fn resolve(&self, within: &BitSet) -> Resolved {
        // Ascending index is a topological order; every decision below depends only on an
        // operation's ancestors and on `void`, never on this order.
        let order: Vec<usize> = within.iter().filter(|&i| i < self.ops.len()).collect();
        let voids = |void: &BitSet| -> (BitSet, Pass) {
            let pass = self.pass(&order, void);
            let mut out = BitSet::default();
            for i in self.voided_by_revocations(&pass) {
                out.insert(i);
            }
            (out, pass)
        };
        // Voiding more operations leaves fewer revocations, which void less: `voids` is
        // antitone, so iterate it in pairs (the alternating fixpoint of well-founded
        // semantics): `lower` only grows (what is void for sure), `upper = voids(lower)` only
        // shrinks (what may be void). A revocation that takes effect only through operations
        // that turn out void therefore voids nothing in the end.
        let mut lower = BitSet::default();
        let (mut upper, first) = voids(&lower);
        // The cap only guards against a pathological cycle; each round adds to `lower`.
        for _ in 0..=order.len() {
            if upper.is_empty() {
                break;
            }
            let (next, _) = voids(&upper);
            if next == lower {
                break;
            }
            lower = next;
            upper = voids(&lower).0;
        }
        // Void is `upper`: an operation whose status stays open (a cycle the seniority rule
        // did not settle) is void — the conservative side.
        let pass = if upper.is_empty() && lower.is_empty() {
            first
        } else {
            self.pass(&order, &upper)
        };
        let mut members = BTreeMap::new();
        members.insert(
            self.owner,
            Member {
                role: Role::Owner,
                since: (0, self.id),
            },
        );
        for (peer, list) in &pass.setters {
            if let Some(m) = self.role_in(list, None) {
                members.insert(*peer, m);
            }
        }
        Resolved {
            members,
            effective: pass.effective,
        }
    }

    /// A member's role from the effective operations that set it (topological order): the
    /// lowest role among the latest ones (the frontier), restricted to the ancestors of
    /// operation `at` if given. `None`: not a member.
    fn role_in(&self, setters: &[usize], at: Option<usize>) -> Option<Member> {
        let mut frontier: Vec<usize> = Vec::new();
        for &y in setters.iter().rev() {
            if at.is_some_and(|x| !self.ops[x].ancestors.contains(y)) {
                continue;
            }
            if !frontier.iter().any(|&f| self.ops[f].ancestors.contains(y)) {
                frontier.push(y);
            }
        }
        let lowest = frontier.into_iter().min_by_key(|&y| {
            let s = &self.ops[y];
            let level = s.signed.op.action.sets().and_then(|(_, l)| l);
            // `None` (removed) sorts first: removal wins.
            (level, s.depth, s.id)
        })?;
        let s = &self.ops[lowest];
        let (_, level) = s.signed.op.action.sets()?;
        level.map(|role| Member {
            role,
            since: (s.depth, s.id),
        })
    }

    /// A member's role at the causal point of operation `at`, in a pass so far.
    fn role_at(&self, pass: &Pass, peer: &PeerId, at: usize) -> Option<Member> {
        if *peer == self.owner {
            return Some(Member {
                role: Role::Owner,
                since: (0, self.id),
            });
        }
        self.role_in(pass.setters.get(peer)?, Some(at))
    }

    /// Which operations take effect, each judged at its causal point, skipping `void` ones.
    fn pass(&self, order: &[usize], void: &BitSet) -> Pass {
        let mut pass = Pass::default();
        for &i in order {
            let op = &self.ops[i].signed.op;
            pass.by_author.entry(op.author).or_default().push(i);
            if void.contains(i) {
                continue;
            }
            let Some((target, level)) = op.action.sets() else {
                pass.effective.insert(i);
                continue;
            };
            let Some(author) = self.role_at(&pass, &op.author, i) else {
                continue;
            };
            if !author.role.is_admin() || target == self.owner || level == Some(Role::Owner) {
                continue;
            }
            if matches!(op.action, Action::Remove { .. } | Action::ChangeRole { .. })
                && self.role_at(&pass, &target, i).is_none()
            {
                continue;
            }
            pass.setters.entry(target).or_default().push(i);
            pass.effective.insert(i);
            if !level.is_some_and(Role::is_admin) {
                pass.revocations.push(Revocation {
                    op: i,
                    target,
                    author: op.author,
                    seniority: (author.since, self.ops[i].id),
                });
            }
        }
        pass
    }

    /// Rules 2 and 3: which revocations stand, and the operations they void (plus the
    /// revocations that fall).
    fn voided_by_revocations(&self, pass: &Pass) -> Vec<usize> {
        let revs = &pass.revocations;
        // Revocation a attacks revocation b when b's author is a's target and they are
        // concurrent; only revocations by revoked members can be attacked.
        let mut by_target: HashMap<PeerId, Vec<usize>> = HashMap::new();
        for (a, ra) in revs.iter().enumerate() {
            by_target.entry(ra.target).or_default().push(a);
        }
        let attackers: Vec<Vec<usize>> = revs
            .iter()
            .map(|rb| {
                by_target.get(&rb.author).map_or_else(Vec::new, |list| {
                    list.iter()
                        .copied()
                        .filter(|&a| self.concurrent(revs[a].op, rb.op))
                        .collect()
                })
            })
            .collect();
        // Grounded resolution: revocations whose attackers all fell stand, revocations
        // attacked by a standing one fall; a cycle goes to its most senior author.
        let mut stands: Vec<Option<bool>> = vec![None; revs.len()];
        loop {
            let mut progress = false;
            for b in 0..revs.len() {
                if stands[b].is_some() {
                    continue;
                }
                if attackers[b].iter().any(|&a| stands[a] == Some(true)) {
                    stands[b] = Some(false);
                    progress = true;
                } else if attackers[b].iter().all(|&a| stands[a] == Some(false)) {
                    stands[b] = Some(true);
                    progress = true;
                }
            }
            if !progress {
                let senior = (0..revs.len())
                    .filter(|&b| stands[b].is_none())
                    .min_by_key(|&b| revs[b].seniority);
                match senior {
                    Some(b) => stands[b] = Some(true),
                    None => break,
                }
            }
        }
        let mut void = Vec::new();
        for (a, rev) in revs.iter().enumerate() {
            if stands[a] == Some(false) {
                void.push(rev.op);
                continue;
            }
            if let Some(ops) = pass.by_author.get(&rev.target) {
                void.extend(ops.iter().copied().filter(|&x| self.concurrent(x, rev.op)));
            }
        }
        void
    }
}

#[derive(Default)]
struct Pass {
    effective: BitSet,
    /// The effective operations setting each member's role, in topological order.
    setters: HashMap<PeerId, Vec<usize>>,
    /// Every operation of each author, effective or not: a revocation voids them all, so that
    /// voiding does not depend on what else is void.
    by_author: HashMap<PeerId, Vec<usize>>,
    revocations: Vec<Revocation>,
}

struct Revocation {
    op: usize,
    target: PeerId,
    author: PeerId,
    /// The author's grant at the revocation's causal point, then the revocation's own id (two
    /// revocations by one author are ordered too).
    seniority: ((u32, OpId), OpId),
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard encodes into a Vec")
}

fn check_size(signed: &SignedOp) -> Result<(), OpError> {
    let size = encode(signed).len();
    if size > MAX_OP_BYTES {
        return Err(OpError::TooLarge {
            size,
            max: MAX_OP_BYTES,
        });
    }
    Ok(())
}

/// The ed25519 public key embedded in an identity-multihash `PeerId`.
pub(crate) fn public_key(peer: &PeerId) -> Result<ed25519::PublicKey, OpError> {
    let mh = peer.as_ref();
    // Code 0 is the identity multihash; hashed (sha2-256) peer ids belong to large RSA keys.
    if mh.code() != 0 {
        return Err(OpError::NotEd25519(*peer));
    }
    PublicKey::try_decode_protobuf(mh.digest())
        .ok()
        .and_then(|pk| pk.try_into_ed25519().ok())
        .ok_or(OpError::NotEd25519(*peer))
}

/// A growable bit set of operation indices.
#[derive(Clone, Debug, Default)]
struct BitSet(Vec<u64>);

impl PartialEq for BitSet {
    /// Equal sets, whatever the number of trailing zero words.
    fn eq(&self, other: &Self) -> bool {
        let n = self.0.len().max(other.0.len());
        (0..n).all(|w| self.0.get(w).unwrap_or(&0) == other.0.get(w).unwrap_or(&0))
    }
}

impl BitSet {
    fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    fn with_capacity(bits: usize) -> Self {
        BitSet(Vec::with_capacity(bits.div_ceil(64)))
    }

    /// The set `0..len`.
    fn with_len(len: usize) -> Self {
        let mut s = BitSet(vec![u64::MAX; len / 64]);
        if !len.is_multiple_of(64) {
            s.0.push((1u64 << (len % 64)) - 1);
        }
        s
    }

    fn insert(&mut self, i: usize) {
        let w = i / 64;
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (i % 64);
    }

    fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn union_with(&mut self, other: &BitSet) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &bits)| {
            (0..64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
}

#[cfg(test)]
mod tests;
