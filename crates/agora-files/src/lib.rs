//! Agora file sharing.
//!
//! # Model
//! A blob is identified by its BLAKE3 hash (the same hex `b3sum` prints). Each held blob has a
//! pre-order BLAKE3 outboard with 16 KiB chunk groups ([`BLOCK_SIZE`], via `bao-tree`), so any
//! range can be served and verified on its own. A directory is shared as a collection blob
//! listing `(path, hash, size)` ([`collection`]).
//!
//! # Roles
//! Every node serves the blobs it holds over [`protocol::PROTOCOL`] and announces them as
//! Kademlia provider records (again at start and every 30 minutes). A downloader finds
//! providers in the DHT (and in a [`ticket`], if given), fetches 1 MiB pieces from all of them at
//! once, verifies every chunk group before writing it, bans a provider at its first bad group,
//! and becomes a provider itself when done ([`download`]).
//!
//! Names are findable by keyword ([`search`]): index entries are stored at the peers closest
//! to each keyword's hash, eMule-Kad style, and a query intersects keywords.
//!
//! # Limits
//! Request frames ≤ 16 KiB with ≤ 256 ranges; ≤ 32 blob streams served at once; collection
//! listings ≤ 16 MiB and ≤ 100,000 entries, with every path checked so that it cannot escape the
//! destination directory.

pub mod aligned;
pub mod collection;
pub mod download;
pub mod proto;
pub mod protocol;
pub mod search;
pub mod service;
pub mod store;
pub mod ticket;
pub mod wire;

pub use bao_tree::BlockSize;
pub use blake3::Hash;
pub use service::{Files, FilesError, JobState, JobView};

/// 16 KiB chunk groups: the unit of verification and of the outboard.
pub const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);
