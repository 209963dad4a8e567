//! `/agora/ledger/1.0.0` requests between any two nodes, and the gossip announcement of
//! finalized blocks.

use serde::{Deserialize, Serialize};

use super::store::StoredBlock;
use crate::tx::Hash;

/// Most blocks in one `Blocks` answer.
pub const MAX_BLOCKS_PER_REQUEST: u32 = 256;
/// Byte budget of one `Blocks` answer (the stream frame limit is 4 MiB).
pub const MAX_BLOCKS_BYTES: usize = 3 << 20;
/// Most transactions in one `SubmitMany`.
pub const MAX_SUBMIT_BATCH: usize = 1_000;
/// Largest gossip announcement that carries its block (gossipsub's limit is 1 MiB).
pub const MAX_ANNOUNCED_BLOCK: usize = 900 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Which chain the peer follows and how far it got.
    Status,
    /// Finalized blocks from height `from` on.
    Blocks { from: u64, max: u32 },
    /// A transaction for a validator's mempool.
    Submit(Vec<u8>),
    /// Up to [`MAX_SUBMIT_BATCH`] transactions at once (their signatures checked in one batch).
    SubmitMany(Vec<Vec<u8>>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    Status {
        chain: Hash,
        height: u64,
        digest: Hash,
        validator: bool,
    },
    Blocks(Vec<StoredBlock>),
    Submitted(Result<Hash, String>),
    /// One answer per transaction of `SubmitMany`, in order.
    SubmittedMany(Vec<Result<Hash, String>>),
    Error(String),
}

/// A finalized block announced on the chain's gossip topic by one validator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Announcement {
    pub height: u64,
    pub digest: Hash,
    /// The finalization certificate (Commonware codec).
    pub certificate: Vec<u8>,
    /// The block itself when it fits in a gossip message; otherwise peers fetch it by height.
    pub block: Option<Vec<u8>>,
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encoding to a Vec cannot fail")
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Some(value),
        _ => None,
    }
}
