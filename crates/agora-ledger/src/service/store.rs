//! What the ledger keeps on disk, in the node's redb database: every finalized block with the
//! certificate that finalized it, an index of transactions and of each account's history, and
//! a snapshot of the state every [`SNAPSHOT_EVERY`] blocks. On start the state is the newest
//! snapshot plus the blocks after it, executed again.

use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::account::Account;
use crate::block::Block;
use crate::state::{Genesis, State};
use crate::tx::{Hash, Tx};

/// Height → [`StoredBlock`] (postcard).
const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger_blocks");
/// Transaction hash → (height, index in the block), 12 bytes.
const TXS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ledger_txs");
/// (account, height, index) → (): the transactions an account sent or received.
const HISTORY: TableDefinition<(&[u8], u64, u32), ()> = TableDefinition::new("ledger_history");
/// `genesis` → the genesis (JSON); `snapshot` → [`Snapshot`] (postcard).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_meta");
/// A finalized block to store: the block, its certificate if this node holds one, and the
/// effects of its transactions.
pub type AppliedBlock = (Block, Option<Vec<u8>>, Vec<crate::state::Effect>);

/// (height, index) → postcard [`crate::state::Effect`] of a market transaction: its fills, or
/// why it changed nothing but the fee (a transfer's effect follows from the transaction).
const EFFECTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("ledger_effects");

/// A snapshot is written after every this many blocks.
pub const SNAPSHOT_EVERY: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ledger database: {0}")]
    Db(String),
    #[error(
        "this data directory follows another ledger (chain {stored}); start with that genesis or use another --data-dir"
    )]
    OtherChain { stored: String },
    #[error("ledger database is corrupt: {0}")]
    Corrupt(String),
}

fn e(err: impl std::fmt::Display) -> StoreError {
    StoreError::Db(err.to_string())
}

/// A finalized block as stored and as served to peers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredBlock {
    pub block: Vec<u8>,
    /// The encoded finalization certificate, if this block was certified directly.
    pub certificate: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    state: State,
    digest: Hash,
    timestamp_ms: u64,
}

/// The chain tip as loaded: state after the newest stored block.
pub struct Loaded {
    pub state: State,
    pub digest: Hash,
    pub timestamp_ms: u64,
    /// Digest of the last block before the current epoch (the chain id in epoch 0).
    pub epoch_start: Hash,
}

#[derive(Clone)]
pub struct ChainStore {
    db: Arc<agora_store::Db>,
}

impl ChainStore {
    /// Opens the ledger tables, refusing a database that follows another chain, and loads the
    /// tip (newest snapshot plus the blocks after it).
    pub fn open(db: Arc<agora_store::Db>, genesis: &Genesis) -> Result<(Self, Loaded), StoreError> {
        let store = ChainStore { db };
        let chain = genesis.chain_id();
        let txn = store.db.redb().begin_write().map_err(e)?;
        let snapshot = {
            let mut meta = txn.open_table(META).map_err(e)?;
            txn.open_table(BLOCKS).map_err(e)?;
            txn.open_table(TXS).map_err(e)?;
            txn.open_table(HISTORY).map_err(e)?;
            txn.open_table(EFFECTS).map_err(e)?;
            let stored = meta.get("genesis").map_err(e)?.map(|v| v.value().to_vec());
            match stored {
                Some(bytes) => {
                    let stored: Genesis = serde_json::from_slice(&bytes)
                        .map_err(|err| StoreError::Corrupt(format!("stored genesis: {err}")))?;
                    if stored.chain_id() != chain {
                        return Err(StoreError::OtherChain {
                            stored: stored.chain_id().to_hex(),
                        });
                    }
                }
                None => {
                    let json = serde_json::to_vec(genesis).map_err(e)?;
                    meta.insert("genesis", json.as_slice()).map_err(e)?;
                }
            }
            meta.get("snapshot").map_err(e)?.map(|v| v.value().to_vec())
        };
        txn.commit().map_err(e)?;
        let mut loaded = match snapshot {
            Some(bytes) => {
                let s: Snapshot = postcard::from_bytes(&bytes)
                    .map_err(|err| StoreError::Corrupt(format!("snapshot: {err}")))?;
                Loaded {
                    state: s.state,
                    digest: s.digest,
                    timestamp_ms: s.timestamp_ms,
                    epoch_start: chain,
                }
            }
            None => Loaded {
                state: State::genesis(genesis),
                digest: chain,
                timestamp_ms: 0,
                epoch_start: chain,
            },
        };
        // Replay what was finalized after the snapshot.
        let mut height = loaded.state.height + 1;
        while let Some(stored) = store.block(height)? {
            let block = Block::decode(&stored.block)
                .map_err(|err| StoreError::Corrupt(format!("block {height}: {err}")))?;
            if block.parent != loaded.digest {
                return Err(StoreError::Corrupt(format!(
                    "block {height} does not link to block {}",
                    height - 1
                )));
            }
            let (state, _) = block
                .execute(&loaded.state, |_| true)
                .map_err(|err| StoreError::Corrupt(format!("block {height}: {err}")))?;
            loaded = Loaded {
                state,
                digest: block.digest(),
                timestamp_ms: block.timestamp_ms,
                epoch_start: chain,
            };
            height += 1;
        }
        loaded.epoch_start = store.epoch_start(&loaded.state, loaded.digest, chain)?;
        Ok((store, loaded))
    }

    /// The digest of the last block before the epoch of the block after `state` (`tip` is the
    /// digest of the block `state` follows).
    pub fn epoch_start(&self, state: &State, tip: Hash, chain: Hash) -> Result<Hash, StoreError> {
        let boundary = state.epoch_of(state.height + 1) * state.epoch_length;
        if boundary == 0 {
            return Ok(chain);
        }
        if boundary == state.height {
            return Ok(tip);
        }
        let stored = self
            .block(boundary)?
            .ok_or_else(|| StoreError::Corrupt(format!("block {boundary} is missing")))?;
        Block::decode(&stored.block)
            .map(|b| b.digest())
            .map_err(|err| StoreError::Corrupt(format!("block {boundary}: {err}")))
    }

    pub fn block(&self, height: u64) -> Result<Option<StoredBlock>, StoreError> {
        let txn = self.db.redb().begin_read().map_err(e)?;
        let table = txn.open_table(BLOCKS).map_err(e)?;
        let Some(value) = table.get(height).map_err(e)? else {
            return Ok(None);
        };
        postcard::from_bytes(value.value())
            .map(Some)
            .map_err(|err| StoreError::Corrupt(format!("block {height}: {err}")))
    }

    /// Blocks from `from` on, at most `max` of them and about `max_bytes` in all.
    pub fn blocks_from(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredBlock>, StoreError> {
        let txn = self.db.redb().begin_read().map_err(e)?;
        let table = txn.open_table(BLOCKS).map_err(e)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in table.range(from..).map_err(e)? {
            let (_, value) = entry.map_err(e)?;
            let raw = value.value();
            if !out.is_empty() && bytes + raw.len() > max_bytes {
                break;
            }
            bytes += raw.len();
            out.push(
                postcard::from_bytes(raw)
                    .map_err(|err| StoreError::Corrupt(format!("stored block: {err}")))?,
            );
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Stores finalized blocks (in height order, already executed) with their indexes, and a
    /// snapshot of `state` if one is due; one transaction, so a crash keeps all or nothing.
    pub fn append(
        &self,
        blocks: &[AppliedBlock],
        state: &State,
        digest: Hash,
        timestamp_ms: u64,
    ) -> Result<(), StoreError> {
        let txn = self.db.redb().begin_write().map_err(e)?;
        {
            let mut table = txn.open_table(BLOCKS).map_err(e)?;
            let mut txs = txn.open_table(TXS).map_err(e)?;
            let mut history = txn.open_table(HISTORY).map_err(e)?;
            let mut effects_table = txn.open_table(EFFECTS).map_err(e)?;
            let mut snapshot_due = false;
            for (block, certificate, effects) in blocks {
                let stored = StoredBlock {
                    block: block.encode(),
                    certificate: certificate.clone(),
                };
                let bytes = postcard::to_allocvec(&stored).map_err(e)?;
                table.insert(block.height, bytes.as_slice()).map_err(e)?;
                for (index, tx) in block.txs.iter().enumerate() {
                    let mut at = [0u8; 12];
                    at[..8].copy_from_slice(&block.height.to_be_bytes());
                    at[8..].copy_from_slice(&(index as u32).to_be_bytes());
                    txs.insert(tx.hash().0.as_slice(), at.as_slice())
                        .map_err(e)?;
                    let effect = effects.get(index);
                    if let Some(
                        effect @ (crate::state::Effect::Market { .. }
                        | crate::state::Effect::Contract { .. }),
                    ) = effect
                    {
                        let bytes = postcard::to_allocvec(effect).map_err(e)?;
                        effects_table
                            .insert((block.height, index as u32), bytes.as_slice())
                            .map_err(e)?;
                    }
                    for account in involved(tx, effect) {
                        history
                            .insert((account.0.as_slice(), block.height, index as u32), ())
                            .map_err(e)?;
                    }
                }
                snapshot_due |= block.height.is_multiple_of(SNAPSHOT_EVERY);
            }
            if snapshot_due {
                let snapshot = Snapshot {
                    state: state.clone(),
                    digest,
                    timestamp_ms,
                };
                let bytes = postcard::to_allocvec(&snapshot).map_err(e)?;
                txn.open_table(META)
                    .map_err(e)?
                    .insert("snapshot", bytes.as_slice())
                    .map_err(e)?;
            }
        }
        txn.commit().map_err(e)
    }

    /// The stored effect of the transaction at (height, index), if it was a market one.
    pub fn effect(
        &self,
        height: u64,
        index: u32,
    ) -> Result<Option<crate::state::Effect>, StoreError> {
        let txn = self.db.redb().begin_read().map_err(e)?;
        let table = txn.open_table(EFFECTS).map_err(e)?;
        match table.get((height, index)).map_err(e)? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(v.value())
                .map(Some)
                .map_err(|err| StoreError::Corrupt(format!("effect {height}/{index}: {err}"))),
        }
    }

    /// Where a transaction was finalized: (height, index).
    pub fn tx_location(&self, hash: &Hash) -> Result<Option<(u64, u32)>, StoreError> {
        let txn = self.db.redb().begin_read().map_err(e)?;
        let table = txn.open_table(TXS).map_err(e)?;
        Ok(table.get(hash.0.as_slice()).map_err(e)?.map(|v| {
            let raw = v.value();
            let mut h = [0u8; 8];
            h.copy_from_slice(&raw[..8]);
            let mut i = [0u8; 4];
            i.copy_from_slice(&raw[8..12]);
            (u64::from_be_bytes(h), u32::from_be_bytes(i))
        }))
    }

    /// The newest `limit` (height, index) entries of an account's history, newest first.
    pub fn history(&self, account: &Account, limit: usize) -> Result<Vec<(u64, u32)>, StoreError> {
        let txn = self.db.redb().begin_read().map_err(e)?;
        let table = txn.open_table(HISTORY).map_err(e)?;
        let key = account.0.as_slice();
        let range = table
            .range((key, 0u64, 0u32)..=(key, u64::MAX, u32::MAX))
            .map_err(e)?;
        let mut out = Vec::new();
        for entry in range.rev() {
            let (k, _) = entry.map_err(e)?;
            let (_, height, index) = k.value();
            out.push((height, index));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

/// The accounts a transaction touches: its sender, the accounts it names and the owners of
/// the offers it took.
fn involved(tx: &Tx, effect: Option<&crate::state::Effect>) -> Vec<Account> {
    match tx {
        Tx::Account(signed) => {
            let mut v = vec![signed.body.from];
            v.extend(signed.body.action.counterparties());
            // A contract call is in the contract's history (its events are found there).
            if let crate::tx::Action::Contract(crate::contract::ContractAction::Call {
                contract,
                ..
            }) = &signed.body.action
            {
                v.push(*contract);
            }
            if let Some(crate::state::Effect::Contract { outcome, .. }) = effect {
                v.push(outcome.contract);
                v.extend(outcome.events.iter().map(|e| e.contract));
            }
            if let Some(crate::state::Effect::Market { outcome, .. }) = effect {
                let fills = match outcome {
                    crate::market::Outcome::Paid { fills, .. }
                    | crate::market::Outcome::OfferPlaced { fills, .. } => fills.as_slice(),
                    _ => &[],
                };
                v.extend(fills.iter().map(|f| f.offer.owner));
            }
            v.sort();
            v.dedup();
            v
        }
        Tx::Committee(_) => Vec::new(),
    }
}
