//! Groupware: shared spaces of documents that members edit offline and merge without
//! conflicts, with membership, roles and end-to-end encryption (DESIGN.md, "Groupware").
//!
//! # What exists
//! Only the first layer: [`proto::membership`], the pure state machine of a space's
//! membership. A space has an id (the BLAKE3 hash of its signed create operation), a name, a
//! fixed owner and members with [`Role`]s. Membership is a log of signed operations that form a
//! DAG (each names the hashes of its parent operations, like a causal history); every member can
//! check every operation itself — signature, known parents, and that the author was an admin at
//! the operation's causal point — and two members holding the same operations compute the same
//! members whatever order they received them in. The rules for concurrent changes are in the
//! [`proto::membership`] docs.
//!
//! ```
//! use agora_docs::{Action, Role, Space};
//! use libp2p_identity::ed25519::{Keypair, SecretKey};
//!
//! // The node's identity key (here from a fixed seed).
//! let owner = Keypair::from(SecretKey::try_from_bytes([1; 32]).unwrap());
//! let editor = libp2p_identity::Keypair::ed25519_from_bytes([2; 32]).unwrap().public().to_peer_id();
//! let (mut space, create_op) = Space::create("team", &owner, 1_000).unwrap();
//! let add = space
//!     .act(Action::Add { member: editor, role: Role::Editor }, &owner, 1_001)
//!     .unwrap();
//! assert!(space.can_write(&editor));
//!
//! // Another member replays the log and gets the same state.
//! let mut replica = Space::from_create(create_op).unwrap();
//! replica.apply(add).unwrap();
//! assert_eq!(replica.members(), space.members());
//! ```
//!
//! Documents ([`proto::doc`]) are automerge documents whose every change is signed by its
//! author and admitted only when the membership lets the author write; [`proto::sync`] brings
//! two members' copies of a document together, sending only what the other lacks.
//!
//! # What does not exist yet
//! - The space key: encryption of every change, sealed to each member, rotated on removal.
//! - Holders for members who are never online together.
//! - Ownership transfer, snapshots of long logs.

pub mod proto;
pub mod service;
pub mod wire;

pub use proto::doc::{
    Attachment, DocError, DocId, Document, HistoryEntry, Kind, Post, Received, SignedChange,
    Snapshot, Task, TaskState, TaskUpdate,
};
pub use proto::membership::{
    Action, Applied, MAX_NAME_BYTES, MAX_OP_BYTES, MAX_OPS, MAX_PARENTS, Member, Op, OpError, OpId,
    Role, SignedOp, Space, SpaceId,
};
