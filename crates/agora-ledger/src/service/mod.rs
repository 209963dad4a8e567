//! The ledger on a running node: follows the chain (gossiped and fetched finalized blocks,
//! verified by their certificates), stores it, serves it to peers, submits the node's own
//! payments, and, on validators, runs the simplex engine on its own Commonware runtime thread.
//!
//! One module per sub-protocol, each an `impl Ledger` block over the shared state here:
//! - `sync`: catching up from peers (`sync_once`, one bounded session per peer) and the
//!   certified blocks held above the tip;
//! - `gossip`: the finalized-block topic (announcing the own engine's blocks, validating and
//!   applying others');
//! - `serve`: answering [`PROTOCOL`] (status, blocks, submissions within per-peer budgets,
//!   signatures checked on a blocking thread);
//! - `pay`: payments and submissions from this node (signing, handing to a validator,
//!   waiting for finality);
//! - `committee`: committee changes and the validator engine (start, stop, its finalized
//!   blocks);
//! - `store` (the chain on disk) and [`wire`] (the messages).
//!
//! This module keeps the configuration, errors, the [`Ledger`] itself, its start, the queries,
//! applying finalized blocks (every path ends there) and the admission budgets.
//!
//! # State and locks
//!
//! Each part owns its state behind its own `std::sync::Mutex`, and each inbound queue is
//! bounded by a constant in the module that owns it (`serve::REQUEST_QUEUE`,
//! `gossip::GOSSIP_QUEUE`, [`MAX_CERTIFIED_PENDING`] in `sync`):
//! - `inner` (here, `Tip`): the chain tip (state, digest, timestamp, state root, epoch start,
//!   certificate verifier). Every module reads it; only `Ledger::apply` writes it.
//! - `sync` (`sync::SyncState`): the certified blocks held above the tip. Gossip hands its
//!   certified blocks to `receive_certified` and never touches the map; `apply` drops those
//!   the tip passed (`Ledger::drop_pending_through`).
//! - `pay` (`pay::PayState`): this node's own next sequence number; `apply` raises it to the
//!   tip's (`Ledger::own_seq_applied`).
//! - `rates` (here, `Rates`): applied blocks and transactions, for the rates in [`Status`].
//! - `validator` and `consensus_metrics` (committee): the engine's handle and its metrics.
//!
//! Lock order: a lock is only taken while holding locks that come before it.
//!
//! ```text
//! sync session's run (sync::SyncRun) -> sync -> inner -> rates
//!                                       pay  -> inner
//! ```
//!
//! `sync` and `pay` are never held together; `validator` and `consensus_metrics` are taken with
//! none of these held (only a sync session's run, around `apply`). `apply` holds `inner` (and
//! `rates` under it) while it moves the tip, releases it, then takes `sync`, `pay` and
//! `validator` one at a time. agora-net's own locks (budgets, refusal counters) are leaves. No
//! std `Mutex` guard is ever held across an `.await`: copy out what is needed and drop the guard
//! first.

mod committee;
mod gossip;
mod pay;
mod serve;
mod store;
mod sync;
pub mod wire;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_net::Handle;
use agora_net::admission::{Rate, SharedRateLimiter};
use commonware_codec::{Copying, Decode as _};
use commonware_cryptography::certificate::Verifier as _;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use committee::CommitteeChanged;
use pay::PayState;
pub use pay::{FINALITY_WAIT, Payment};
use store::ChainStore;
pub use store::{SNAPSHOT_EVERY, StoreError, StoredBlock};
pub use sync::MAX_CERTIFIED_PENDING;
use sync::SyncState;
use wire::{MAX_SUBMIT_BATCH, Request, Response};

use crate::account::{Account, identity_signing_key};
use crate::block::Block;
use crate::consensus::{self, AppConfig, Base, Finalization, Mailbox, Scheme};
use crate::state::{AccountState, Genesis, State, TxError};
use crate::tx::{Hash, Tx};

/// The account and signing key of the node identity in `data_dir` (created if missing), for
/// tools that write a genesis before the nodes start.
pub fn identity_in(
    data_dir: &std::path::Path,
) -> Result<(Account, ed25519_dalek::SigningKey), LedgerError> {
    let keypair = agora_store::DataDir::open(data_dir)?.load_or_create_identity()?;
    let key = identity_signing_key(&keypair).ok_or(LedgerError::Identity)?;
    Ok((Account::from_key(&key.verifying_key()), key))
}

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/ledger/1.0.0");
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Tip updates buffered per subscriber (a slow one skips to the newest).
const TIP_CAP: usize = 64;
/// How far back the rates in [`Status`] look.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Uncertified blocks one sync session holds while it looks for the certificate that proves
/// them (an honest peer serves blocks finalized implicitly, proven by a later certified block
/// they link to by hash). Local to the session with one peer, dropped when it ends: another
/// peer's blocks never wait behind them. A peer that goes past it without a certificate is
/// left for this round.
pub const MAX_SYNC_RUN_BLOCKS: usize = 1_024;
/// Bytes of the uncertified blocks one sync session holds (a few maximal blocks more than
/// one `Blocks` answer).
pub const MAX_SYNC_RUN_BYTES: usize = 32 << 20;
/// Transactions one peer may submit (`Submit`, `SubmitMany`) per second, with a burst of a few
/// full batches. Checked before any decoding of the transactions or signature work; a
/// follower forwarding its users' payments is one peer here.
pub const SUBMIT_TXS_PER_PEER: Rate = Rate::new(5_000.0, 4.0 * MAX_SUBMIT_BATCH as f64);
/// Request bytes of submissions one peer may send per second (the burst fits the largest
/// frame, so one maximal request always can pass).
pub const SUBMIT_BYTES_PER_PEER: Rate =
    Rate::new(8.0 * 1024.0 * 1024.0, agora_net::MAX_FRAME_LEN as f64 * 2.0);
/// Peers whose submission budgets are tracked at once (see `RateLimiter`: full buckets are
/// forgotten first; with all spending, a new peer is refused).
pub const MAX_SUBMIT_PEERS: usize = 4_096;
pub const BUDGET_SUBMIT_TXS: &str = "ledger.submit_peer_txs";
pub const BUDGET_SUBMIT_BYTES: &str = "ledger.submit_peer_bytes";
/// Refusal counters (`agora_refusals_total{budget}`).
pub const BUDGET_CERTIFIED_PENDING: &str = "ledger.certified_pending";
pub const BUDGET_SYNC_RUN: &str = "ledger.sync_uncertified_run";
/// A sync peer served a bad certificate, an unlinked or undecodable block: it is left.
pub const BUDGET_SYNC_JUNK: &str = "ledger.sync_junk";

#[derive(Clone, Debug)]
pub struct Config {
    pub genesis: Genesis,
    /// Run consensus as one of the committee's validators.
    pub validator: bool,
    /// Where the engine keeps its vote journal.
    pub consensus_dir: PathBuf,
    pub app: AppConfig,
    pub leader_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid genesis: {0}")]
    Genesis(String),
    #[error("{0}")]
    Validator(String),
    #[error("the node's identity is not an ed25519 key")]
    Identity,
    #[error(transparent)]
    DataDir(#[from] agora_store::Error),
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Tx(#[from] TxError),
    #[error("no validator could be reached to submit the transaction: {0}")]
    NoValidator(String),
    #[error("not final within {0:?}; it may still be included later (check with `agora tx`)")]
    NotFinal(Duration),
    #[error("the transaction was dropped: another transaction of this account used sequence {0}")]
    Replaced(u64),
    #[error("the ledger is shutting down")]
    Stopped,
}

/// A finalized transaction, as `agora tx` and the history show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TxRecord {
    pub hash: Hash,
    pub height: u64,
    pub index: u32,
    pub block_time_ms: u64,
    pub tx: Tx,
    /// A market transaction's effect: its fills, or why it failed.
    pub effect: Option<crate::state::Effect>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub chain: String,
    pub chain_id: Hash,
    pub height: u64,
    pub digest: Hash,
    pub state_root: Hash,
    pub last_block_time_ms: u64,
    /// The epoch of the next block, and the committee that orders it.
    pub epoch: u64,
    pub epoch_length: u64,
    pub committee: Vec<Account>,
    /// The committee from the next epoch on, with the changes finalized so far.
    pub next_committee: Vec<Account>,
    /// The nonce the next committee change must carry.
    pub committee_nonce: u64,
    /// In the current committee and running consensus.
    pub validator: bool,
    /// Started with `--validator` (in the committee or waiting to be added).
    pub runs_consensus: bool,
    /// Transactions per second over the last minute of finalized blocks.
    pub tx_per_sec: f64,
    pub blocks_per_sec: f64,
    /// Transactions applied since this node started.
    pub applied_txs: u64,
    pub supply: u128,
    pub burned: u64,
    pub min_fee: u64,
}

/// The chain tip: read by every module, written only by `Ledger::apply`.
struct Tip {
    state: State,
    digest: Hash,
    timestamp_ms: u64,
    /// The state root after the tip (computed once per applied run of blocks).
    root: Hash,
    /// Digest of the last block before the tip's next epoch (see `Base::epoch_start`).
    epoch_start: Hash,
    /// The certificate verifier for the committee of the next block's epoch: (epoch, scheme).
    verifier: (u64, Scheme),
}

/// Applied blocks, for the rates in [`Status`] (the status part's own lock, taken under the
/// tip's by `apply` and `status`).
#[derive(Default)]
struct Rates {
    /// (when applied, height, transactions) of the blocks applied within [`RATE_WINDOW`].
    recent: VecDeque<(Instant, u64, usize)>,
    /// Transactions applied since this node started.
    applied_txs: u64,
}

impl Rates {
    /// Records blocks (height, transactions) applied at `now` and forgets those older than
    /// [`RATE_WINDOW`].
    fn applied(&mut self, now: Instant, blocks: impl IntoIterator<Item = (u64, usize)>) {
        for (height, txs) in blocks {
            self.recent.push_back((now, height, txs));
            self.applied_txs += txs as u64;
        }
        while self
            .recent
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.recent.pop_front();
        }
    }

    /// (transactions, blocks) per second over the recent blocks.
    fn per_sec(&self) -> (f64, f64) {
        match (self.recent.front(), self.recent.back()) {
            (Some(first), Some(last)) if last.0 > first.0 => {
                let secs = last.0.duration_since(first.0).as_secs_f64();
                let txs: usize = self.recent.iter().skip(1).map(|r| r.2).sum();
                (txs as f64 / secs, (self.recent.len() - 1) as f64 / secs)
            }
            _ => (0.0, 0.0),
        }
    }
}

struct ValidatorHandle {
    mailbox: Mailbox,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    transport: agora_consensus_net::Transport,
}

pub struct Ledger {
    net: Handle,
    genesis: Genesis,
    chain: Hash,
    topic: String,
    account: Account,
    key: ed25519_dalek::SigningKey,
    store: ChainStore,
    /// The chain tip (see the lock order in the module docs).
    inner: Mutex<Tip>,
    /// Sync's certified blocks above the tip.
    sync: Mutex<SyncState>,
    /// The own next sequence number.
    pay: Mutex<PayState>,
    rates: Mutex<Rates>,
    tip: broadcast::Sender<u64>,
    sync_now: tokio::sync::Notify,
    validator: Mutex<Option<ValidatorHandle>>,
    /// The consensus engine's metrics (Prometheus text), refreshed by its runtime thread.
    consensus_metrics: Arc<Mutex<String>>,
    /// Per-peer submission budgets ([`SUBMIT_TXS_PER_PEER`], [`SUBMIT_BYTES_PER_PEER`]).
    submit_txs: SharedRateLimiter<PeerId>,
    submit_bytes: SharedRateLimiter<PeerId>,
    stop: CancellationToken,
}

impl Ledger {
    /// Opens the chain in the node's database and starts following it (and validating, if
    /// configured).
    pub async fn start(
        net: Handle,
        keypair: &libp2p_identity::Keypair,
        db: Arc<agora_store::Db>,
        config: Config,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, LedgerError> {
        config.genesis.validate().map_err(LedgerError::Genesis)?;
        let key = identity_signing_key(keypair).ok_or(LedgerError::Identity)?;
        let secret = key.to_bytes();
        let account = Account::from_key(&key.verifying_key());
        let genesis = config.genesis.clone();
        let chain = genesis.chain_id();
        let (store, loaded) = {
            let genesis = genesis.clone();
            tokio::task::spawn_blocking(move || ChainStore::open(db, &genesis))
                .await
                .map_err(|e| LedgerError::Validator(e.to_string()))??
        };
        let verifier = Self::verifier_for(&chain, &loaded.state)?;
        info!(chain = %genesis.chain, height = loaded.state.height, %account, "ledger loaded");
        let next_seq = loaded.state.account(&account).seq;
        let root = loaded.state.root();
        let ledger = Arc::new(Ledger {
            net: net.clone(),
            topic: format!("agora/ledger/{}/blocks", &chain.to_hex()[..16]),
            genesis,
            chain,
            account,
            key,
            store,
            inner: Mutex::new(Tip {
                state: loaded.state,
                digest: loaded.digest,
                timestamp_ms: loaded.timestamp_ms,
                root,
                epoch_start: loaded.epoch_start,
                verifier,
            }),
            sync: Mutex::new(SyncState::default()),
            pay: Mutex::new(PayState::new(next_seq)),
            rates: Mutex::new(Rates::default()),
            tip: broadcast::channel(TIP_CAP).0,
            sync_now: tokio::sync::Notify::new(),
            validator: Mutex::new(None),
            consensus_metrics: Arc::new(Mutex::new(String::new())),
            submit_txs: SharedRateLimiter::new(SUBMIT_TXS_PER_PEER, MAX_SUBMIT_PEERS),
            submit_bytes: SharedRateLimiter::new(SUBMIT_BYTES_PER_PEER, MAX_SUBMIT_PEERS),
            stop,
        });
        ledger.serve()?;
        ledger.follow_topic().await?;
        tokio::spawn(Self::sync_loop(Arc::downgrade(&ledger)));
        if config.validator {
            ledger.start_validator(&config, &secret).await?;
        }
        Ok(ledger)
    }

    // ---- queries ----

    pub fn account(&self) -> Account {
        self.account
    }

    /// The consensus engine's own metrics in Prometheus text (empty unless validating).
    pub fn consensus_metrics(&self) -> String {
        self.consensus_metrics.lock().unwrap().clone()
    }

    /// Whether this node validates now: it runs consensus and is in the current committee.
    pub fn is_validator(&self) -> bool {
        self.mailbox().is_some()
    }

    /// Whether this node runs consensus (in the committee, or waiting to be added).
    pub fn runs_consensus(&self) -> bool {
        self.validator.lock().unwrap().is_some()
    }

    pub fn height(&self) -> u64 {
        self.inner.lock().unwrap().state.height
    }

    /// The height of each new tip, as it is applied (a slow reader lags and skips heights).
    pub fn tips(&self) -> broadcast::Receiver<u64> {
        self.tip.subscribe()
    }

    pub fn balance(&self, account: &Account) -> AccountState {
        self.inner.lock().unwrap().state.account(account)
    }

    /// Runs `f` on the state at the tip (read-only, under the tip's lock: keep it short and do
    /// not call back into the ledger from it).
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.inner.lock().unwrap().state)
    }

    pub fn status(&self) -> Status {
        let (validator, runs_consensus) = (self.is_validator(), self.runs_consensus());
        let inner = self.inner.lock().unwrap();
        let ((tx_per_sec, blocks_per_sec), applied_txs) = {
            let rates = self.rates.lock().unwrap();
            (rates.per_sec(), rates.applied_txs)
        };
        Status {
            chain: self.genesis.chain.clone(),
            chain_id: self.chain,
            height: inner.state.height,
            digest: inner.digest,
            state_root: inner.root,
            last_block_time_ms: inner.timestamp_ms,
            epoch: inner.state.epoch_of(inner.state.height + 1),
            epoch_length: inner.state.epoch_length,
            committee: inner.state.committee.clone(),
            next_committee: inner.state.next_committee.clone(),
            committee_nonce: inner.state.committee_nonce,
            validator,
            runs_consensus,
            tx_per_sec,
            blocks_per_sec,
            applied_txs,
            supply: inner.state.supply(),
            burned: inner.state.burned,
            min_fee: inner.state.min_fee,
        }
    }

    /// A finalized transaction by hash, with what it did.
    pub fn tx(&self, hash: &Hash) -> Result<Option<TxRecord>, LedgerError> {
        let Some((height, index)) = self.store.tx_location(hash)? else {
            return Ok(None);
        };
        self.record(height, index).map(Some)
    }

    /// The newest `limit` transactions that sent from or paid to `account`.
    pub fn history(&self, account: &Account, limit: usize) -> Result<Vec<TxRecord>, LedgerError> {
        self.store
            .history(account, limit)?
            .into_iter()
            .map(|(height, index)| self.record(height, index))
            .collect()
    }

    /// A finalized block by height, with its digest and whether this node holds its own
    /// finalization certificate (otherwise a descendant's certificate covers it).
    pub fn block(&self, height: u64) -> Result<Option<(Block, Hash, bool)>, LedgerError> {
        let Some(stored) = self.store.block(height)? else {
            return Ok(None);
        };
        let block = Block::decode(&stored.block)
            .map_err(|e| StoreError::Corrupt(format!("block {height}: {e}")))?;
        let digest = block.digest();
        Ok(Some((block, digest, stored.certificate.is_some())))
    }

    /// Whether a transaction is final: its block height.
    pub fn finalized_at(&self, hash: &Hash) -> Result<Option<u64>, LedgerError> {
        Ok(self.store.tx_location(hash)?.map(|(height, _)| height))
    }

    fn record(&self, height: u64, index: u32) -> Result<TxRecord, LedgerError> {
        let stored = self
            .store
            .block(height)?
            .ok_or_else(|| StoreError::Corrupt(format!("indexed block {height} is missing")))?;
        let block = Block::decode(&stored.block)
            .map_err(|e| StoreError::Corrupt(format!("block {height}: {e}")))?;
        let tx = block
            .txs
            .get(index as usize)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("block {height} has no tx {index}")))?;
        Ok(TxRecord {
            hash: tx.hash(),
            height,
            index,
            block_time_ms: block.timestamp_ms,
            tx,
            effect: self.store.effect(height, index)?,
        })
    }

    // ---- shared by the sub-protocols ----

    /// The own consensus application, while this node is in the current committee.
    fn mailbox(&self) -> Option<Mailbox> {
        if !self.in_committee() {
            return None;
        }
        self.validator
            .lock()
            .unwrap()
            .as_ref()
            .map(|v| v.mailbox.clone())
    }

    fn in_committee(&self) -> bool {
        self.inner
            .lock()
            .unwrap()
            .state
            .committee
            .contains(&self.account)
    }

    /// The peers of the current committee.
    fn committee_peers(&self) -> Vec<PeerId> {
        self.inner
            .lock()
            .unwrap()
            .state
            .committee
            .iter()
            .filter_map(consensus::public_key)
            .map(|k| agora_consensus_net::peer_id(&k))
            .collect()
    }

    /// A certificate verifier for the committee that orders the block after `state`.
    fn verifier_for(chain: &Hash, state: &State) -> Result<(u64, Scheme), LedgerError> {
        let committee = consensus::committee_set(&state.committee).map_err(LedgerError::Genesis)?;
        Ok((
            state.epoch_of(state.height + 1),
            Scheme::verifier(&consensus::namespace(chain), committee),
        ))
    }

    async fn ask(&self, peer: PeerId, request: &Request) -> Result<Response, String> {
        let bytes = self
            .net
            .request(peer, PROTOCOL, wire::encode(request), REQUEST_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        wire::decode(&bytes).ok_or_else(|| format!("{peer} sent a malformed answer"))
    }

    // ---- applying finalized blocks ----

    /// Applies consecutive finalized blocks on top of the tip and stores them. Blocks at or
    /// below the tip are skipped (already applied by another path). Runs on a blocking thread.
    fn apply(
        &self,
        blocks: Vec<(Block, Hash, Option<Vec<u8>>)>,
        notify_engine: bool,
    ) -> Result<(), LedgerError> {
        self.apply_executed(blocks, None, notify_engine)
    }

    /// [`Ledger::apply`], where the own consensus engine may hand over the state after the
    /// (single) block and its effects, as it executed them when it verified the block: then the
    /// block is not executed a second time.
    fn apply_executed(
        &self,
        blocks: Vec<(Block, Hash, Option<Vec<u8>>)>,
        mut executed: Option<(State, Vec<crate::state::Effect>)>,
        notify_engine: bool,
    ) -> Result<(), LedgerError> {
        let mut inner = self.inner.lock().unwrap();
        // The state after the blocks applied so far in this call (execution copies it anyway).
        let mut next_state: Option<State> = None;
        let mut digest = inner.digest;
        let mut timestamp = inner.timestamp_ms;
        let mut epoch_start = inner.epoch_start;
        let mut applied = Vec::new();
        for (block, block_digest, certificate) in blocks {
            let state = next_state.as_ref().unwrap_or(&inner.state);
            if block.height <= state.height {
                continue;
            }
            if block.height != state.height + 1 || block.parent != digest {
                warn!(
                    height = block.height,
                    "finalized block does not link to the tip; ignored"
                );
                break;
            }
            // The engine's own execution of this very block (it checked the state root against
            // the block's when it verified or built it), on the same parent as the tip.
            let ours = executed.take().filter(|(s, _)| s.height == block.height);
            // Signatures were checked by the validators that certified it (and by ours).
            let result = match ours {
                Some(done) => Ok(done),
                None => block.execute(state, |_| true),
            };
            match result {
                Ok((next, effects)) => {
                    if next.ends_epoch(block.height) {
                        epoch_start = block_digest;
                    }
                    next_state = Some(next);
                    digest = block_digest;
                    timestamp = block.timestamp_ms;
                    applied.push((block, certificate, effects));
                }
                Err(e) => {
                    warn!(
                        height = block.height,
                        "finalized block does not execute: {e}"
                    );
                    break;
                }
            }
        }
        let Some(state) = next_state else {
            return Ok(());
        };
        let rates: Vec<(u64, usize)> = applied
            .iter()
            .map(|(block, _, _)| (block.height, block.txs.len()))
            .collect();
        // Execution compared the state's root with the block's, so it need not be recomputed
        // (a pass over every account).
        let root = applied
            .last()
            .map(|(block, _, _)| block.state_root)
            .expect("at least one block applied");
        let started = Instant::now();
        self.store.append(applied, &state, digest, timestamp)?;
        tracing::debug!(
            blocks = rates.len(),
            height = state.height,
            queue_us = started.elapsed().as_micros() as u64,
            "stored"
        );
        self.rates.lock().unwrap().applied(Instant::now(), rates);
        let own_seq = state.account(&self.account).seq;
        inner.root = root;
        if state.epoch_of(state.height + 1) != inner.verifier.0 {
            match Self::verifier_for(&self.chain, &state) {
                Ok(verifier) => inner.verifier = verifier,
                Err(e) => warn!("the new epoch's committee is unusable: {e}"),
            }
        }
        inner.state = state;
        inner.digest = digest;
        inner.timestamp_ms = timestamp;
        inner.epoch_start = epoch_start;
        let height = inner.state.height;
        let base = notify_engine.then(|| Base {
            state: inner.state.clone(),
            digest,
            timestamp_ms: timestamp,
            epoch_start,
        });
        drop(inner);
        // Sync's and pay's state follow the tip, each under its own lock (never under the tip's).
        self.drop_pending_through(height);
        self.own_seq_applied(own_seq);
        if let Some(base) = base
            && let Some(v) = self.validator.lock().unwrap().as_ref()
        {
            v.mailbox.advance(base);
        }
        let _ = self.tip.send(height);
        Ok(())
    }

    /// Whether `certificate` finalizes `digest`, a block at `height`, signed by the committee
    /// of the epoch after the tip. (Certificates of later epochs are checked once the tip
    /// reaches them: only then is their committee known.)
    fn verify_certificate(&self, certificate: &[u8], digest: &Hash, height: u64) -> bool {
        let verifier = {
            let inner = self.inner.lock().unwrap();
            if inner.state.epoch_of(height) != inner.verifier.0 {
                return false;
            }
            inner.verifier.clone()
        };
        verify_finalization(&verifier, certificate, digest)
    }
}

/// Whether `certificate` is a finalization of `digest` by the committee of `verifier`'s epoch.
fn verify_finalization(
    (epoch, verifier): &(u64, Scheme),
    certificate: &[u8],
    digest: &Hash,
) -> bool {
    let Ok(f) =
        Finalization::decode_cfg(Copying(certificate), &verifier.certificate_codec_config())
    else {
        return false;
    };
    f.proposal.payload == consensus::digest(*digest)
        && f.proposal.round.epoch().get() == *epoch
        && f.verify(
            &mut commonware_utils::sys_rng(),
            verifier,
            &commonware_parallel::Sequential,
        )
}
