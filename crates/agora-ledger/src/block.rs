//! Blocks: ordered transactions on top of a parent, with the state root after applying them.

use serde::{Deserialize, Serialize};

use crate::state::{Effect, State, TxError};
use crate::tx::{Hash, MAX_TX_BYTES, Tx};

/// Most transactions in one block.
pub const MAX_BLOCK_TXS: usize = 10_000;
/// Largest encoded block.
pub const MAX_BLOCK_BYTES: usize = MAX_BLOCK_TXS * 256 + MAX_TX_BYTES;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub parent: Hash,
    pub height: u64,
    /// Proposer's clock, milliseconds since the Unix epoch; never before the parent's.
    pub timestamp_ms: u64,
    pub txs: Vec<Tx>,
    /// State root after applying every transaction and closing the block.
    pub state_root: Hash,
}

/// Why a block does not follow from its parent state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("block height {got} does not follow {parent}")]
    Height { parent: u64, got: u64 },
    #[error("block has {0} transactions, over the {MAX_BLOCK_TXS} limit")]
    TooManyTxs(usize),
    #[error("transaction {index} ({hash}) is invalid: {error}")]
    InvalidTx {
        index: usize,
        hash: Hash,
        error: TxError,
    },
    #[error("state root mismatch: block says {claimed}, execution gives {computed}")]
    StateRoot { claimed: Hash, computed: Hash },
    #[error("malformed block encoding")]
    Malformed,
}

impl Block {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding to a Vec cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, BlockError> {
        if bytes.len() > MAX_BLOCK_BYTES {
            return Err(BlockError::Malformed);
        }
        match postcard::take_from_bytes::<Block>(bytes) {
            Ok((block, [])) => Ok(block),
            _ => Err(BlockError::Malformed),
        }
    }

    /// The block's id: BLAKE3 of its encoding.
    pub fn digest(&self) -> Hash {
        Hash::of(&self.encode())
    }

    /// Builds the next block on `parent`: takes candidates in order, skipping those that do not
    /// apply (wrong sequence, no funds, ...), up to `max_txs`. Returns the block, the new state
    /// and the hashes of the skipped candidates with the reason.
    pub fn build(
        parent: &State,
        parent_digest: Hash,
        timestamp_ms: u64,
        candidates: impl IntoIterator<Item = (Tx, bool)>,
        max_txs: usize,
    ) -> (Block, State, Vec<(Hash, TxError)>) {
        let (block, state, _, skipped) =
            Block::build_with_effects(parent, parent_digest, timestamp_ms, candidates, max_txs);
        (block, state, skipped)
    }

    /// [`Block::build`] that also returns the effects of the transactions included.
    pub fn build_with_effects(
        parent: &State,
        parent_digest: Hash,
        timestamp_ms: u64,
        candidates: impl IntoIterator<Item = (Tx, bool)>,
        max_txs: usize,
    ) -> (Block, State, Vec<Effect>, Vec<(Hash, TxError)>) {
        let mut effects = Vec::new();
        let mut state = parent.clone();
        state.market.prepare();
        state.block_time_ms = timestamp_ms;
        let mut txs = Vec::new();
        let mut skipped = Vec::new();
        // Room for the header fields; transactions fill the rest of the byte budget.
        let mut bytes = 256;
        for (tx, signature_checked) in candidates {
            if txs.len() >= max_txs.min(MAX_BLOCK_TXS) {
                break;
            }
            let size = postcard::serialize_with_flavor::<Tx, _, usize>(
                &tx,
                postcard::ser_flavors::Size::default(),
            )
            .unwrap_or(MAX_TX_BYTES);
            if bytes + size > MAX_BLOCK_BYTES {
                break;
            }
            match state.apply(&tx, signature_checked) {
                Ok(effect) => {
                    bytes += size;
                    txs.push(tx);
                    effects.push(effect);
                }
                Err(error) => skipped.push((tx.hash(), error)),
            }
        }
        let height = parent.height + 1;
        state.finish_block(height);
        let block = Block {
            parent: parent_digest,
            height,
            timestamp_ms,
            txs,
            state_root: state.root(),
        };
        (block, state, effects, skipped)
    }

    /// Executes this block on its parent's state: every transaction must apply and the state
    /// root must match. `signature_checked(index)` says which signatures the caller already
    /// verified (a mempool cache); the others are verified here.
    pub fn execute(
        &self,
        parent: &State,
        signature_checked: impl Fn(usize) -> bool,
    ) -> Result<(State, Vec<Effect>), BlockError> {
        if self.height != parent.height + 1 {
            return Err(BlockError::Height {
                parent: parent.height,
                got: self.height,
            });
        }
        if self.txs.len() > MAX_BLOCK_TXS {
            return Err(BlockError::TooManyTxs(self.txs.len()));
        }
        let mut state = parent.clone();
        state.market.prepare();
        state.block_time_ms = self.timestamp_ms;
        let mut effects = Vec::with_capacity(self.txs.len());
        for (index, tx) in self.txs.iter().enumerate() {
            match state.apply(tx, signature_checked(index)) {
                Ok(effect) => effects.push(effect),
                Err(error) => {
                    return Err(BlockError::InvalidTx {
                        index,
                        hash: tx.hash(),
                        error,
                    });
                }
            }
        }
        state.finish_block(self.height);
        let computed = state.root();
        if computed != self.state_root {
            return Err(BlockError::StateRoot {
                claimed: self.state_root,
                computed,
            });
        }
        Ok((state, effects))
    }
}
