//! What the ledger keeps on disk, in the node's redb database: every finalized block with the
//! certificate that finalized it, an index of transactions and of each account's history, and
//! a snapshot of the state every [`SNAPSHOT_EVERY`] blocks. On start the state is the newest
//! snapshot plus the blocks after it, executed again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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

/// The chain on disk, written behind the tip: [`ChainStore::append`] queues finalized blocks
/// and returns at once, and a writer thread stores whatever has queued in one redb
/// transaction (so under load one commit carries several blocks). Until a block is written,
/// every read here answers from the queue, so callers see the tip as applied.
///
/// A block is final once its certificate exists, not once this node wrote it: after a crash
/// the node restarts from what was written and fetches the rest from the committee, as after
/// any absence. A clean shutdown calls [`ChainStore::flush`].
#[derive(Clone)]
pub struct ChainStore {
    db: Arc<agora_store::Db>,
    behind: Arc<Behind>,
}

/// Blocks allowed to wait for the writer; `append` waits beyond this (the disk is the limit).
const MAX_BEHIND: usize = 256;
/// The writer commits at most this often (unless [`MAX_BEHIND`] / 4 blocks wait or a flush
/// is asked for): under load one commit carries the blocks of this interval, so the index
/// pages they share and the file sync are written once, not once per block.
const COMMIT_EVERY: Duration = Duration::from_millis(250);

/// The write-behind queue and its writer thread, stopped when the last store handle goes.
struct Behind {
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when blocks are queued, written or the store stops.
    changed: Condvar,
}

#[derive(Default)]
struct Queue {
    /// Applied blocks not written yet (including the batch being written), by height.
    blocks: BTreeMap<u64, Arc<Queued>>,
    /// Their transactions: hash → (height, index).
    txs: HashMap<Hash, (u64, u32)>,
    /// The newest snapshot due, written with the blocks up to its height.
    snapshot: Option<(u64, Arc<Snapshot>)>,
    /// Why the last write failed (the writer keeps retrying; `append` refuses meanwhile).
    failed: Option<String>,
    /// Someone waits in [`ChainStore::flush`]: write now.
    flushing: bool,
    stop: bool,
}

/// A block waiting to be written, with its transactions' hashes.
struct Queued {
    applied: AppliedBlock,
    hashes: Vec<Hash>,
}

impl Drop for Behind {
    fn drop(&mut self) {
        self.shared.queue.lock().unwrap().stop = true;
        self.shared.changed.notify_all();
        if let Some(writer) = self.writer.lock().unwrap().take() {
            let _ = writer.join();
        }
    }
}

impl ChainStore {
    /// Opens the ledger tables, refusing a database that follows another chain, and loads the
    /// tip (newest snapshot plus the blocks after it).
    pub fn open(db: Arc<agora_store::Db>, genesis: &Genesis) -> Result<(Self, Loaded), StoreError> {
        let shared = Arc::new(Shared::default());
        let writer = {
            let (db, shared) = (db.clone(), shared.clone());
            std::thread::Builder::new()
                .name("ledger-store".into())
                .spawn(move || write_behind(&db, &shared))
                .map_err(e)?
        };
        let store = ChainStore {
            db,
            behind: Arc::new(Behind {
                shared,
                writer: Mutex::new(Some(writer)),
            }),
        };
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

    /// A finalized block by height: from the queue if it is not written yet.
    pub fn block(&self, height: u64) -> Result<Option<StoredBlock>, StoreError> {
        if let Some(queued) = self.queued(height) {
            return Ok(Some(queued.stored()));
        }
        let txn = self.db.redb().begin_read().map_err(e)?;
        let table = txn.open_table(BLOCKS).map_err(e)?;
        let Some(value) = table.get(height).map_err(e)? else {
            return Ok(None);
        };
        postcard::from_bytes(value.value())
            .map(Some)
            .map_err(|err| StoreError::Corrupt(format!("block {height}: {err}")))
    }

    fn queued(&self, height: u64) -> Option<Arc<Queued>> {
        let queue = self.behind.shared.queue.lock().unwrap();
        queue.blocks.get(&height).cloned()
    }

    /// Blocks from `from` on, at most `max` of them and about `max_bytes` in all.
    pub fn blocks_from(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredBlock>, StoreError> {
        // The queue first: a block leaves it only once written, so whatever is not found
        // there is on disk by the time the disk is read.
        let queued: Vec<Arc<Queued>> = {
            let queue = self.behind.shared.queue.lock().unwrap();
            queue
                .blocks
                .range(from..)
                .take(max)
                .map(|(_, q)| q.clone())
                .collect()
        };
        let written_below = queued.first().map_or(u64::MAX, |q| q.applied.0.height);
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut next = from;
        if from < written_below {
            let txn = self.db.redb().begin_read().map_err(e)?;
            let table = txn.open_table(BLOCKS).map_err(e)?;
            for entry in table.range(from..written_below).map_err(e)? {
                let (height, value) = entry.map_err(e)?;
                let raw = value.value();
                if !out.is_empty() && bytes + raw.len() > max_bytes {
                    return Ok(out);
                }
                bytes += raw.len();
                out.push(
                    postcard::from_bytes(raw)
                        .map_err(|err| StoreError::Corrupt(format!("stored block: {err}")))?,
                );
                next = height.value() + 1;
                if out.len() >= max {
                    return Ok(out);
                }
            }
        }
        for q in queued {
            let height = q.applied.0.height;
            if height < next {
                continue;
            }
            let stored = q.stored();
            let len = stored.block.len() + stored.certificate.as_ref().map_or(0, Vec::len);
            if !out.is_empty() && bytes + len > max_bytes {
                break;
            }
            bytes += len;
            out.push(stored);
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Queues finalized blocks (in height order, already executed) to be stored with their
    /// indexes, and a snapshot of `state` if one is due. Returns once they are queued (and
    /// readable here); waits only while [`MAX_BEHIND`] blocks are already waiting. Refuses
    /// while the writer cannot write (the error it met), so the tip does not run ahead of a
    /// failing disk.
    pub fn append(
        &self,
        blocks: Vec<AppliedBlock>,
        state: &State,
        digest: Hash,
        timestamp_ms: u64,
    ) -> Result<(), StoreError> {
        let snapshot_due = blocks
            .iter()
            .any(|(block, _, _)| block.height.is_multiple_of(SNAPSHOT_EVERY));
        let snapshot = snapshot_due.then(|| {
            Arc::new(Snapshot {
                state: state.clone(),
                digest,
                timestamp_ms,
            })
        });
        let queued: Vec<Queued> = blocks
            .into_iter()
            .map(|applied| Queued {
                hashes: applied.0.txs.iter().map(Tx::hash).collect(),
                applied,
            })
            .collect();
        let shared = &self.behind.shared;
        let mut queue = shared.queue.lock().unwrap();
        while queue.blocks.len() >= MAX_BEHIND && queue.failed.is_none() && !queue.stop {
            queue = shared.changed.wait(queue).unwrap();
        }
        if let Some(failed) = &queue.failed {
            return Err(StoreError::Db(failed.clone()));
        }
        for q in queued {
            let height = q.applied.0.height;
            for (index, hash) in q.hashes.iter().enumerate() {
                queue.txs.insert(*hash, (height, index as u32));
            }
            queue.blocks.insert(height, Arc::new(q));
        }
        if let Some(snapshot) = snapshot {
            queue.snapshot = Some((state.height, snapshot));
        }
        drop(queue);
        shared.changed.notify_all();
        Ok(())
    }

    /// Waits until every queued block is written (or writing fails: its error).
    pub fn flush(&self) -> Result<(), StoreError> {
        let shared = &self.behind.shared;
        let mut queue = shared.queue.lock().unwrap();
        loop {
            if queue.blocks.is_empty() {
                queue.flushing = false;
                return Ok(());
            }
            if let Some(failed) = queue.failed.clone() {
                queue.flushing = false;
                return Err(StoreError::Db(failed));
            }
            queue.flushing = true;
            shared.changed.notify_all();
            queue = shared.changed.wait(queue).unwrap();
        }
    }

    /// The stored effect of the transaction at (height, index), if it was a market one.
    pub fn effect(
        &self,
        height: u64,
        index: u32,
    ) -> Result<Option<crate::state::Effect>, StoreError> {
        if let Some(queued) = self.queued(height) {
            return Ok(queued
                .applied
                .2
                .get(index as usize)
                .filter(|effect| kept(effect))
                .cloned());
        }
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
        if let Some(at) = self.behind.shared.queue.lock().unwrap().txs.get(hash) {
            return Ok(Some(*at));
        }
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
        // Queued blocks are newer than any written one; those being written are found here
        // and skipped below.
        let mut out = Vec::new();
        let queued: Vec<Arc<Queued>> = {
            let queue = self.behind.shared.queue.lock().unwrap();
            queue.blocks.values().rev().cloned().collect()
        };
        let written_below = queued.last().map_or(u64::MAX, |q| q.applied.0.height);
        for q in &queued {
            let (block, _, effects) = &q.applied;
            for (index, tx) in block.txs.iter().enumerate().rev() {
                if out.len() >= limit {
                    return Ok(out);
                }
                if involved(tx, effects.get(index)).contains(account) {
                    out.push((block.height, index as u32));
                }
            }
        }
        let txn = self.db.redb().begin_read().map_err(e)?;
        let table = txn.open_table(HISTORY).map_err(e)?;
        let key = account.0.as_slice();
        let range = table
            .range((key, 0u64, 0u32)..=(key, written_below.saturating_sub(1), u32::MAX))
            .map_err(e)?;
        for entry in range.rev() {
            if out.len() >= limit {
                break;
            }
            let (k, _) = entry.map_err(e)?;
            let (_, height, index) = k.value();
            out.push((height, index));
        }
        Ok(out)
    }
}

impl Queued {
    fn stored(&self) -> StoredBlock {
        StoredBlock {
            block: self.applied.0.encode(),
            certificate: self.applied.1.clone(),
        }
    }
}

/// Whether an effect is stored (a transfer's follows from its transaction).
fn kept(effect: &crate::state::Effect) -> bool {
    matches!(
        effect,
        crate::state::Effect::Market { .. } | crate::state::Effect::Contract { .. }
    )
}

/// The writer thread: writes whatever is queued, one transaction per pass, until the store
/// stops and its queue is written. A failed write is retried after a pause.
fn write_behind(db: &agora_store::Db, shared: &Shared) {
    crate::background_priority();
    let mut last_commit = std::time::Instant::now() - COMMIT_EVERY;
    loop {
        let (batch, snapshot) = {
            let mut queue = shared.queue.lock().unwrap();
            loop {
                let urgent = queue.stop || queue.flushing || queue.blocks.len() >= MAX_BEHIND / 4;
                if queue.blocks.is_empty() && queue.stop {
                    return;
                }
                if !queue.blocks.is_empty() {
                    let due = last_commit + COMMIT_EVERY;
                    let now = std::time::Instant::now();
                    if urgent || now >= due {
                        break;
                    }
                    queue = shared.changed.wait_timeout(queue, due - now).unwrap().0;
                } else {
                    queue = shared.changed.wait(queue).unwrap();
                }
            }
            let batch: Vec<Arc<Queued>> = queue.blocks.values().cloned().collect();
            (batch, queue.snapshot.clone())
        };
        let top = batch.last().map_or(0, |q| q.applied.0.height);
        let snapshot = snapshot.filter(|(height, _)| *height <= top);
        let started = std::time::Instant::now();
        let result = write(db, &batch, snapshot.as_ref().map(|(_, s)| &**s));
        last_commit = std::time::Instant::now();
        let mut queue = shared.queue.lock().unwrap();
        match result {
            Ok(()) => {
                tracing::debug!(
                    blocks = batch.len(),
                    height = top,
                    write_us = started.elapsed().as_micros() as u64,
                    "written"
                );
                for q in &batch {
                    queue.blocks.remove(&q.applied.0.height);
                    for hash in &q.hashes {
                        queue.txs.remove(hash);
                    }
                }
                if queue.snapshot.as_ref().is_some_and(|(h, _)| *h <= top) {
                    queue.snapshot = None;
                }
                queue.failed = None;
                drop(queue);
                shared.changed.notify_all();
            }
            Err(err) => {
                tracing::warn!(height = top, "ledger blocks not written, retrying: {err}");
                queue.failed = Some(err.to_string());
                let stop = queue.stop;
                drop(queue);
                shared.changed.notify_all();
                if stop {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Writes blocks (consecutive, in height order) with their indexes, and a snapshot, in one
/// transaction: a crash keeps all or nothing.
fn write(
    db: &agora_store::Db,
    blocks: &[Arc<Queued>],
    snapshot: Option<&Snapshot>,
) -> Result<(), StoreError> {
    let txn = db.redb().begin_write().map_err(e)?;
    {
        let mut table = txn.open_table(BLOCKS).map_err(e)?;
        let mut txs = txn.open_table(TXS).map_err(e)?;
        let mut history = txn.open_table(HISTORY).map_err(e)?;
        let mut effects_table = txn.open_table(EFFECTS).map_err(e)?;
        for q in blocks {
            let (block, _, effects) = &q.applied;
            let bytes = postcard::to_allocvec(&q.stored()).map_err(e)?;
            table.insert(block.height, bytes.as_slice()).map_err(e)?;
            for (index, (tx, hash)) in block.txs.iter().zip(&q.hashes).enumerate() {
                let mut at = [0u8; 12];
                at[..8].copy_from_slice(&block.height.to_be_bytes());
                at[8..].copy_from_slice(&(index as u32).to_be_bytes());
                txs.insert(hash.0.as_slice(), at.as_slice()).map_err(e)?;
                let effect = effects.get(index);
                if let Some(effect) = effect.filter(|effect| kept(effect)) {
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
        }
        if let Some(snapshot) = snapshot {
            let bytes = postcard::to_allocvec(snapshot).map_err(e)?;
            txn.open_table(META)
                .map_err(e)?
                .insert("snapshot", bytes.as_slice())
                .map_err(e)?;
        }
    }
    txn.commit().map_err(e)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{account, key};
    use crate::tx::{AccountTx, Action};

    fn genesis() -> Genesis {
        Genesis {
            chain: "store-test".into(),
            validators: vec![account(9)],
            balances: (0..4).map(|i| (account(i), 1_000_000)).collect(),
            min_fee: 1,
            epoch_length: 1_000,
        }
    }

    /// `count` blocks on `state`, each with a transfer from account (height % 4) to 3.
    fn blocks(state: &mut State, digest: &mut Hash, count: u64) -> Vec<AppliedBlock> {
        let mut out = Vec::new();
        for _ in 0..count {
            let from = (state.height % 3) as u8;
            let seq = state.account(&account(from)).seq;
            let tx = Tx::Account(
                AccountTx {
                    from: account(from),
                    seq,
                    fee: 1,
                    action: Action::Transfer {
                        to: account(3),
                        amount: 7,
                        memo: None,
                    },
                }
                .sign(&key(from), &state.chain),
            );
            let (block, next, effects, skipped) =
                Block::build_with_effects(state, *digest, 1_000 + state.height, [(tx, true)], 10);
            assert!(skipped.is_empty());
            *digest = block.digest();
            *state = next;
            out.push((block, Some(vec![1, 2, 3]), effects));
        }
        out
    }

    /// What the store answers about the chain `heights`, for comparing before and after
    /// the blocks are written.
    fn answers(store: &ChainStore, heights: u64) -> Vec<String> {
        let mut out = Vec::new();
        for h in 1..=heights {
            let stored = store.block(h).unwrap().expect("every block is readable");
            let block = Block::decode(&stored.block).unwrap();
            assert_eq!(block.height, h);
            let hash = block.txs[0].hash();
            out.push(format!(
                "{h} {:?} {:?} {:?}",
                store.tx_location(&hash).unwrap(),
                stored.certificate,
                store.effect(h, 0).unwrap().is_some()
            ));
        }
        for i in 0..4 {
            out.push(format!("{:?}", store.history(&account(i), 50).unwrap()));
        }
        let from = store.blocks_from(2, 1_000, usize::MAX).unwrap();
        out.push(format!("blocks_from {}", from.len()));
        out
    }

    #[test]
    fn blocks_read_the_same_queued_and_written_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(agora_store::Db::open(&dir.path().join("node.redb")).unwrap());
        let g = genesis();
        let (store, loaded) = ChainStore::open(db.clone(), &g).unwrap();
        let mut state = loaded.state;
        let mut digest = loaded.digest;
        // More than a snapshot's worth, appended in several calls.
        let total = SNAPSHOT_EVERY + 10;
        for chunk in [30, 1, SNAPSHOT_EVERY + 10 - 31] {
            let applied = blocks(&mut state, &mut digest, chunk);
            let top = applied.last().unwrap().0.timestamp_ms;
            store.append(applied, &state, digest, top).unwrap();
        }
        // Read at once (queued, being written or written: the same answers).
        let early = answers(&store, total);
        assert_eq!(
            store.history(&account(3), 1_000).unwrap().len() as u64,
            total
        );
        store.flush().unwrap();
        assert!(store.behind.shared.queue.lock().unwrap().blocks.is_empty());
        assert_eq!(answers(&store, total), early);
        // Reopened: the snapshot and the blocks after it give the same tip.
        drop(store);
        let (store, reloaded) = ChainStore::open(db, &g).unwrap();
        assert_eq!(reloaded.state.height, total);
        assert_eq!(reloaded.digest, digest);
        assert_eq!(reloaded.state.root(), state.root());
        assert_eq!(answers(&store, total), early);
    }

    #[test]
    fn dropping_the_store_writes_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let g = genesis();
        let digest = {
            let db = Arc::new(agora_store::Db::open(&path).unwrap());
            let (store, loaded) = ChainStore::open(db, &g).unwrap();
            let (mut state, mut digest) = (loaded.state, loaded.digest);
            let applied = blocks(&mut state, &mut digest, 5);
            store.append(applied, &state, digest, 0).unwrap();
            digest
        };
        let db = Arc::new(agora_store::Db::open(&path).unwrap());
        let (_, loaded) = ChainStore::open(db, &g).unwrap();
        assert_eq!(loaded.state.height, 5);
        assert_eq!(loaded.digest, digest);
    }
}
