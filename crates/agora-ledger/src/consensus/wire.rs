//! Messages on the blocks channel between validators.

use serde::{Deserialize, Serialize};

use crate::block::{Block, MAX_BLOCK_BYTES};
use crate::tx::{Hash, Tx};

/// Most transactions in one relayed batch.
pub const MAX_TX_BATCH: usize = 1_024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockMsg {
    /// A leader's proposal, sent to every validator before its vote needs it.
    Proposal(Block),
    /// Asks for a block by digest (a proposal that did not arrive, a missing ancestor).
    Want(Hash),
    /// The answer to `Want`.
    Have(Block),
    /// Transactions a validator admitted to its mempool, for the others to include.
    Txs(Vec<Tx>),
}

impl BlockMsg {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding to a Vec cannot fail")
    }

    /// Decodes a message, refusing oversized input, trailing bytes and oversized batches.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_BLOCK_BYTES + 64 {
            return None;
        }
        match postcard::take_from_bytes::<BlockMsg>(bytes) {
            Ok((BlockMsg::Txs(txs), [])) if txs.len() > MAX_TX_BATCH => None,
            Ok((msg, [])) => Some(msg),
            _ => None,
        }
    }
}
