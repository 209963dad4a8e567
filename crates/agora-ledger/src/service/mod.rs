//! The ledger on a running node: follows the chain (gossiped and fetched finalized blocks,
//! verified by their certificates), stores it, serves it to peers, submits the node's own
//! payments, and, on validators, runs the simplex engine on its own Commonware runtime thread.

mod store;
pub mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_net::admission::{Rate, SharedRateLimiter};
use agora_net::{GossipMessage, Handle, InboundRequest};
use commonware_codec::{Copying, Decode as _, Encode as _};
use commonware_cryptography::certificate::Verifier as _;
use libp2p::gossipsub::MessageAcceptance;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use store::ChainStore;
pub use store::{SNAPSHOT_EVERY, StoreError, StoredBlock};
use wire::{
    Announcement, MAX_ANNOUNCED_BLOCK, MAX_BLOCKS_BYTES, MAX_BLOCKS_PER_REQUEST, MAX_SUBMIT_BATCH,
    Request, Response,
};

use crate::account::{Account, identity_signing_key};
use crate::block::Block;
use crate::consensus::{
    self, AppConfig, Base, CHANNEL_BLOCKS, CHANNEL_CERTIFICATES, CHANNEL_RESOLVER, CHANNEL_VOTES,
    Channels, Finalization, Mailbox, Scheme, ValidatorConfig,
};
use crate::state::{AccountState, Genesis, State, TxError};
use crate::tx::{AccountTx, Action, Approval, CommitteeChange, CommitteeTx, Hash, Tx};

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
/// How long `pay` waits for finality before giving up.
pub const FINALITY_WAIT: Duration = Duration::from_secs(30);
/// How often a node compares its height with a peer's when nothing new arrived.
const SYNC_INTERVAL: Duration = Duration::from_secs(2);
/// Certified blocks (gossip announcements, certificate verified) held above the tip while the
/// blocks below them are fetched. Nothing uncertified is ever held here. When full, a lower
/// block displaces the highest one (it is closer to applying); a higher one is refused.
pub const MAX_CERTIFIED_PENDING: usize = 256;
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
/// How often a validator's copy of the engine's metrics is refreshed.
const METRICS_REFRESH: Duration = Duration::from_secs(1);

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

/// A finalized committee change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommitteeChanged {
    pub hash: Hash,
    pub height: u64,
    /// The first epoch (and its first block) ordered by the changed committee.
    pub effective_epoch: u64,
    pub effective_height: u64,
    pub next_committee: Vec<Account>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Payment {
    pub hash: Hash,
    pub height: u64,
    pub finality_ms: u64,
    pub seq: u64,
    pub fee: u64,
}

/// A block above the tip whose finalization certificate was verified.
struct Pending {
    block: Block,
    digest: Hash,
    certificate: Vec<u8>,
}

/// One sync session's blocks not yet proven: linked by hash from the tip, in height order.
#[derive(Default)]
struct SyncRun {
    /// (block, digest, certificate as served, encoded size)
    blocks: Vec<(Block, Hash, Option<Vec<u8>>, usize)>,
    bytes: usize,
}

impl SyncRun {
    /// Takes the first `n` blocks out of the run.
    fn take(&mut self, n: usize) -> Vec<(Block, Hash, Option<Vec<u8>>)> {
        self.blocks
            .drain(..n)
            .map(|(block, digest, certificate, size)| {
                self.bytes -= size;
                (block, digest, certificate)
            })
            .collect()
    }

    fn clear(&mut self) {
        self.blocks.clear();
        self.bytes = 0;
    }
}

struct Inner {
    state: State,
    digest: Hash,
    timestamp_ms: u64,
    /// Certified blocks above the tip waiting for the blocks below them, by height (at most
    /// [`MAX_CERTIFIED_PENDING`]).
    pending: BTreeMap<u64, Pending>,
    /// Own next sequence number, counting submitted transactions not final yet.
    next_seq: u64,
    /// (when applied, height, transactions) of recent blocks, for rates.
    recent: VecDeque<(Instant, u64, usize)>,
    /// Transactions applied since this node started.
    applied_txs: u64,
    /// The state root after the tip (computed once per applied run of blocks).
    root: Hash,
    /// Digest of the last block before the tip's next epoch (see `Base::epoch_start`).
    epoch_start: Hash,
    /// The certificate verifier for the committee of the next block's epoch: (epoch, scheme).
    verifier: (u64, Scheme),
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
    inner: Mutex<Inner>,
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
            inner: Mutex::new(Inner {
                state: loaded.state,
                digest: loaded.digest,
                timestamp_ms: loaded.timestamp_ms,
                pending: BTreeMap::new(),
                next_seq,
                recent: VecDeque::new(),
                applied_txs: 0,
                root,
                epoch_start: loaded.epoch_start,
                verifier,
            }),
            tip: broadcast::channel(64).0,
            sync_now: tokio::sync::Notify::new(),
            validator: Mutex::new(None),
            consensus_metrics: Arc::new(Mutex::new(String::new())),
            submit_txs: SharedRateLimiter::new(SUBMIT_TXS_PER_PEER, MAX_SUBMIT_PEERS),
            submit_bytes: SharedRateLimiter::new(SUBMIT_BYTES_PER_PEER, MAX_SUBMIT_PEERS),
            stop,
        });
        ledger.serve()?;
        let (gossip_tx, gossip_rx) = mpsc::channel(256);
        net.subscribe(&ledger.topic, gossip_tx)
            .await
            .map_err(|e| LedgerError::Validator(format!("cannot subscribe to blocks: {e}")))?;
        tokio::spawn(Self::gossip_loop(Arc::downgrade(&ledger), gossip_rx));
        tokio::spawn(Self::sync_loop(Arc::downgrade(&ledger)));
        if config.validator {
            ledger.start_validator(&config, &secret).await?;
        }
        Ok(ledger)
    }

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

    async fn start_validator(
        self: &Arc<Self>,
        config: &Config,
        secret: &[u8; 32],
    ) -> Result<(), LedgerError> {
        let base = {
            let inner = self.inner.lock().unwrap();
            if !inner.state.committee.contains(&self.account) {
                info!(
                    account = %self.account,
                    "--validator: this account is not in the current committee; following the \
                     ledger until a committee change adds it"
                );
            }
            Base {
                state: inner.state.clone(),
                digest: inner.digest,
                timestamp_ms: inner.timestamp_ms,
                epoch_start: inner.epoch_start,
            }
        };
        let committee_keys: Vec<_> = base
            .state
            .committee
            .iter()
            .filter_map(consensus::public_key)
            .collect();
        let (transport, mut channels, blocker) = agora_consensus_net::Transport::start(
            self.net.clone(),
            committee_keys,
            agora_consensus_net::Config {
                channels: vec![
                    CHANNEL_VOTES,
                    CHANNEL_CERTIFICATES,
                    CHANNEL_RESOLVER,
                    CHANNEL_BLOCKS,
                ],
                ..Default::default()
            },
        );
        let mut take = |c| channels.remove(&c).expect("channel configured above");
        let channels = Channels {
            votes: take(CHANNEL_VOTES),
            certificates: take(CHANNEL_CERTIFICATES),
            resolver: take(CHANNEL_RESOLVER),
            blocks: take(CHANNEL_BLOCKS),
        };
        let mut validator_config =
            ValidatorConfig::new(self.genesis.clone(), consensus::private_key(secret), base);
        validator_config.app = config.app;
        validator_config.leader_timeout = config.leader_timeout;
        validator_config.refusals = Some(self.net.admission().clone());
        {
            // Each epoch's engine talks to that epoch's committee.
            let transport = transport.clone();
            validator_config.on_committee = Some(Arc::new(move |committee: &[_]| {
                transport.set_committee(committee.to_vec());
            }));
        }
        std::fs::create_dir_all(&config.consensus_dir).map_err(|e| {
            LedgerError::Validator(format!(
                "cannot create {}: {e}",
                config.consensus_dir.display()
            ))
        })?;
        let runtime_config = commonware_runtime::tokio::Config::new()
            .with_storage_directory(config.consensus_dir.clone())
            .with_worker_threads(2);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let metrics = self.consensus_metrics.clone();
        let thread = std::thread::Builder::new()
            .name("agora-consensus".into())
            .spawn(move || {
                use commonware_runtime::{
                    Clock as _, Metrics as _, Runner as _, Spawner as _, Supervisor as _,
                };
                commonware_runtime::tokio::Runner::new(runtime_config).start(|context| async move {
                    match consensus::start_validator(
                        context.child("ledger"),
                        validator_config,
                        channels,
                        blocker,
                    ) {
                        Ok(running) => {
                            let _ = ready_tx.send(Ok((running.mailbox, running.finalized)));
                            // The engine's own metrics (votes, views, timeouts, journal) live
                            // in this runtime's registry: refresh the node's copy every second.
                            let mut stop_rx = stop_rx;
                            loop {
                                *metrics.lock().unwrap() = context.encode();
                                tokio::select! {
                                    _ = &mut stop_rx => break,
                                    _ = context.sleep(METRICS_REFRESH) => {}
                                }
                            }
                            let _ = context.stop(0, Some(Duration::from_secs(5))).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })
            })
            .map_err(|e| LedgerError::Validator(format!("cannot start consensus thread: {e}")))?;
        let (mailbox, finalized) = match ready_rx.await {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => return Err(LedgerError::Validator(e)),
            Err(_) => {
                return Err(LedgerError::Validator(
                    "consensus thread died at start".into(),
                ));
            }
        };
        *self.validator.lock().unwrap() = Some(ValidatorHandle {
            mailbox,
            stop: Some(stop_tx),
            thread: Some(thread),
            transport,
        });
        tokio::spawn(Self::finalized_loop(Arc::downgrade(self), finalized));
        info!("validating: consensus engine started");
        Ok(())
    }

    /// Stops consensus (if running) and waits for its thread.
    pub async fn shutdown(&self) {
        let handle = self.validator.lock().unwrap().take();
        if let Some(mut handle) = handle {
            if let Some(stop) = handle.stop.take() {
                let _ = stop.send(());
            }
            if let Some(thread) = handle.thread.take() {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            handle.transport.shutdown();
        }
    }

    // ---- applying finalized blocks ----

    /// Blocks the own consensus engine finalized: already executed and checked by it.
    async fn finalized_loop(
        ledger: std::sync::Weak<Self>,
        mut finalized: commonware_utils::channel::mpsc::Receiver<consensus::Finalized>,
    ) {
        while let Some(f) = finalized.recv().await {
            let Some(ledger) = ledger.upgrade() else {
                return;
            };
            let certificate = f.finalization.as_ref().map(|c| c.encode().to_vec());
            let height = f.block.height;
            let announce = certificate.clone().filter(|_| {
                // One validator announces each block (they take turns by height).
                let committee = ledger.committee_peers();
                let index = committee
                    .iter()
                    .position(|p| *p == ledger.net.local_peer_id());
                index.is_some_and(|i| height % committee.len() as u64 == i as u64)
            });
            let block_bytes = f.block.encode();
            let result = {
                let ledger = ledger.clone();
                let block = f.block;
                let digest = f.digest;
                tokio::task::spawn_blocking(move || {
                    ledger.apply(vec![(block, digest, certificate)], false)
                })
                .await
            };
            if let Ok(Err(e)) = result {
                warn!("cannot store finalized block {height}: {e}");
            }
            if let Some(certificate) = announce {
                let announcement = Announcement {
                    height,
                    digest: f.digest,
                    certificate,
                    block: (block_bytes.len() <= MAX_ANNOUNCED_BLOCK).then_some(block_bytes),
                };
                if let Err(e) = ledger
                    .net
                    .publish(&ledger.topic, wire::encode(&announcement))
                    .await
                {
                    debug!("cannot announce block {height}: {e}");
                }
            }
        }
    }

    /// Applies consecutive finalized blocks on top of the tip and stores them. Blocks at or
    /// below the tip are skipped (already applied by another path). Runs on a blocking thread.
    fn apply(
        &self,
        blocks: Vec<(Block, Hash, Option<Vec<u8>>)>,
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
            // Signatures were checked by the validators that certified it (and by ours).
            match block.execute(state, |_| true) {
                Ok((next, _)) => {
                    if next.ends_epoch(block.height) {
                        epoch_start = block_digest;
                    }
                    next_state = Some(next);
                    digest = block_digest;
                    timestamp = block.timestamp_ms;
                    applied.push((block, certificate));
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
        self.store.append(&applied, &state, digest, timestamp)?;
        let now = Instant::now();
        for (block, _) in &applied {
            inner.recent.push_back((now, block.height, block.txs.len()));
            inner.applied_txs += block.txs.len() as u64;
        }
        while inner
            .recent
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > Duration::from_secs(60))
        {
            inner.recent.pop_front();
        }
        let own_seq = state.account(&self.account).seq;
        inner.next_seq = inner.next_seq.max(own_seq);
        // Execution compared the state's root with the block's, so it need not be recomputed
        // (a pass over every account).
        inner.root = applied
            .last()
            .map(|(block, _)| block.state_root)
            .expect("at least one block applied");
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
        inner.pending.retain(|h, _| *h > height);
        let base = notify_engine.then(|| Base {
            state: inner.state.clone(),
            digest,
            timestamp_ms: timestamp,
            epoch_start,
        });
        drop(inner);
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

    /// Holds a block whose certificate the caller verified ([`Self::verify_certificate`]) and
    /// applies every run from the tip that is now complete. Returns whether blocks remain
    /// above a gap.
    fn receive_certified(&self, block: Block, digest: Hash, certificate: Vec<u8>) -> bool {
        {
            let mut inner = self.inner.lock().unwrap();
            let height = block.height;
            if height > inner.state.height && !inner.pending.contains_key(&height) {
                if inner.pending.len() >= MAX_CERTIFIED_PENDING {
                    let highest = *inner.pending.keys().next_back().expect("full");
                    if height > highest {
                        drop(inner);
                        self.net.admission().refuse(BUDGET_CERTIFIED_PENDING);
                        return true;
                    }
                    inner.pending.remove(&highest);
                    self.net.admission().refuse(BUDGET_CERTIFIED_PENDING);
                }
                inner.pending.insert(
                    height,
                    Pending {
                        block,
                        digest,
                        certificate,
                    },
                );
            }
        }
        self.apply_pending()
    }

    /// Applies the certified pending blocks that follow the tip. Returns whether blocks remain
    /// above a gap.
    fn apply_pending(&self) -> bool {
        let (ready, gap) = {
            let mut inner = self.inner.lock().unwrap();
            let mut parent = inner.digest;
            let mut height = inner.state.height + 1;
            let mut ready = Vec::new();
            while let Some(p) = inner.pending.get(&height) {
                if p.block.parent != parent {
                    // A certified block that does not link: not our chain (or a fork of more
                    // than f faulty validators); drop it rather than wait on it.
                    warn!(height, "certified block does not link to the tip; dropped");
                    inner.pending.remove(&height);
                    break;
                }
                let p = inner.pending.remove(&height).expect("just seen");
                parent = p.digest;
                height += 1;
                ready.push((p.block, p.digest, Some(p.certificate)));
            }
            (ready, !inner.pending.is_empty())
        };
        if !ready.is_empty()
            && let Err(e) = self.apply(ready, true)
        {
            warn!("cannot apply certified blocks: {e}");
        }
        gap
    }

    /// Adds a peer's `Blocks` answer to its session's run and applies the run up to its highest
    /// block with a valid certificate (the blocks below are proven by their hash links to it).
    /// `Err(budget)` when the peer must be left: junk (undecodable, unlinked, a certificate
    /// that does not verify) or a run past its budget without a certificate. `Ok(false)` when
    /// the run reached the end of the tip's epoch (the next epoch's certificates can be checked
    /// once it is applied). Runs on a blocking thread.
    fn extend_run(&self, run: &mut SyncRun, batch: Vec<StoredBlock>) -> Result<bool, &'static str> {
        let (tip, tip_digest, epoch_end) = {
            let inner = self.inner.lock().unwrap();
            let tip = inner.state.height;
            let epoch = inner.state.epoch_of(tip + 1);
            (tip, inner.digest, inner.state.epoch_end(epoch))
        };
        // Blocks applied meanwhile by another path (gossip): the run continues from the tip.
        let applied = run
            .blocks
            .iter()
            .take_while(|(b, ..)| b.height <= tip)
            .count();
        run.take(applied);
        if run
            .blocks
            .first()
            .is_some_and(|(b, ..)| b.parent != tip_digest || b.height != tip + 1)
        {
            run.clear();
        }
        let mut more = true;
        for stored in batch {
            let Ok(block) = Block::decode(&stored.block) else {
                return Err(BUDGET_SYNC_JUNK);
            };
            let (height, parent) = match run.blocks.last() {
                Some((b, d, ..)) => (b.height, *d),
                None => (tip, tip_digest),
            };
            if block.height <= height {
                continue;
            }
            if block.height != height + 1 || block.parent != parent {
                return Err(BUDGET_SYNC_JUNK);
            }
            if block.height > epoch_end {
                more = false;
                break;
            }
            // The digest certificates sign: of the canonical encoding.
            let encoded = block.encode();
            run.bytes += encoded.len();
            run.blocks
                .push((block, Hash::of(&encoded), stored.certificate, encoded.len()));
            if run.blocks.len() > MAX_SYNC_RUN_BLOCKS || run.bytes > MAX_SYNC_RUN_BYTES {
                return Err(BUDGET_SYNC_RUN);
            }
        }
        // The highest certificate proves everything below it; checked from the top, so each
        // is checked once and the first bad one ends the session.
        let proven = {
            let mut proven = None;
            for (i, (block, digest, certificate, _)) in run.blocks.iter().enumerate().rev() {
                let Some(certificate) = certificate else {
                    continue;
                };
                if !self.verify_certificate(certificate, digest, block.height) {
                    return Err(BUDGET_SYNC_JUNK);
                }
                proven = Some(i);
                break;
            }
            proven
        };
        if let Some(last) = proven {
            let ready = run.take(last + 1);
            if let Err(e) = self.apply(ready, true) {
                warn!("cannot apply fetched blocks: {e}");
                return Err(BUDGET_SYNC_JUNK);
            }
            self.apply_pending();
        }
        Ok(more)
    }

    async fn gossip_loop(ledger: std::sync::Weak<Self>, mut rx: mpsc::Receiver<GossipMessage>) {
        while let Some(message) = rx.recv().await {
            let Some(ledger) = ledger.upgrade() else {
                return;
            };
            let verdict = ledger.clone().on_announcement(message.data.clone()).await;
            let _ = ledger
                .net
                .validate(message.id, message.source, verdict)
                .await;
        }
    }

    async fn on_announcement(self: Arc<Self>, data: Vec<u8>) -> MessageAcceptance {
        let Some(a) = wire::decode::<Announcement>(&data) else {
            return MessageAcceptance::Reject;
        };
        let block = match &a.block {
            Some(bytes) => match Block::decode(bytes) {
                Ok(b) if b.digest() == a.digest && b.height == a.height => Some(b),
                _ => return MessageAcceptance::Reject,
            },
            None => None,
        };
        let ledger = self.clone();
        let verdict = tokio::task::spawn_blocking(move || {
            if !ledger.verify_certificate(&a.certificate, &a.digest, a.height) {
                return MessageAcceptance::Reject;
            }
            // An announcement without its block (too large to gossip): the block comes with
            // the next fetch.
            if let Some(block) = block
                && ledger.receive_certified(block, a.digest, a.certificate)
            {
                ledger.sync_now.notify_one();
            }
            MessageAcceptance::Accept
        })
        .await
        .unwrap_or(MessageAcceptance::Ignore);
        if self.height() + 1 < a.height {
            self.sync_now.notify_one();
        }
        verdict
    }

    /// Catches up from peers: asks one for its height and fetches what this node lacks.
    async fn sync_loop(ledger: std::sync::Weak<Self>) {
        loop {
            let Some(this) = ledger.upgrade() else { return };
            let stop = this.stop.clone();
            let wait = async {
                tokio::select! {
                    _ = this.sync_now.notified() => {}
                    _ = tokio::time::sleep(SYNC_INTERVAL) => {}
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wait => {}
            }
            if let Err(e) = this.sync_once().await {
                debug!("ledger sync: {e}");
            }
        }
    }

    /// Asks peers for their height and fetches what this node lacks. A claimed height only
    /// says whom to ask: nothing is reserved for it, and a peer's blocks are kept (in its own
    /// session, within [`MAX_SYNC_RUN_BLOCKS`]) only until a verified certificate proves them
    /// or the session ends.
    async fn sync_once(self: &Arc<Self>) -> Result<(), String> {
        let peers = self.net.peers().await.map_err(|e| e.to_string())?;
        // Validators first: they have every block.
        let mut candidates: Vec<PeerId> = peers
            .iter()
            .filter_map(|p| p.peer_id.parse().ok())
            .collect();
        let committee = self.committee_peers();
        candidates.sort_by_key(|p| !committee.contains(p));
        for peer in candidates.into_iter().take(4) {
            let Ok(Response::Status { chain, height, .. }) = self.ask(peer, &Request::Status).await
            else {
                continue;
            };
            if chain != self.chain || height <= self.height() {
                continue;
            }
            if let Err(e) = self.sync_from(peer, height).await {
                debug!("ledger sync with {peer}: {e}");
            }
            if self.height() >= height {
                return Ok(());
            }
            // Not caught up with what it claimed: try the next peer.
        }
        Ok(())
    }

    /// Fetches from one peer until caught up with the height it claimed, it has nothing more,
    /// or it is left (junk, or too long a run without a certificate).
    async fn sync_from(self: &Arc<Self>, peer: PeerId, claimed: u64) -> Result<(), String> {
        // Dropped when this returns: nothing of the session outlives it.
        let run = Arc::new(Mutex::new(SyncRun::default()));
        let mut rounds = 0;
        while self.height() < claimed && rounds < 1_000 {
            rounds += 1;
            let from = {
                let run = run.lock().unwrap();
                match run.blocks.last() {
                    Some((b, ..)) => b.height + 1,
                    None => self.height() + 1,
                }
            };
            let Ok(Response::Blocks(blocks)) = self
                .ask(
                    peer,
                    &Request::Blocks {
                        from,
                        max: MAX_BLOCKS_PER_REQUEST,
                    },
                )
                .await
            else {
                break;
            };
            if blocks.is_empty() {
                break;
            }
            let ledger = self.clone();
            let session = run.clone();
            let step = tokio::task::spawn_blocking(move || {
                ledger.extend_run(&mut session.lock().unwrap(), blocks)
            })
            .await
            .map_err(|e| e.to_string())?;
            match step {
                Ok(true) => {}
                Ok(false) => break,
                Err(budget) => {
                    self.net.admission().refuse(budget);
                    return Err(format!("left: {budget}"));
                }
            }
        }
        Ok(())
    }

    async fn ask(&self, peer: PeerId, request: &Request) -> Result<Response, String> {
        let bytes = self
            .net
            .request(peer, PROTOCOL, wire::encode(request), REQUEST_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        wire::decode(&bytes).ok_or_else(|| format!("{peer} sent a malformed answer"))
    }

    fn serve(self: &Arc<Self>) -> Result<(), LedgerError> {
        let (tx, mut rx) = mpsc::channel::<InboundRequest>(64);
        self.net
            .serve(PROTOCOL, tx)
            .map_err(|e| LedgerError::Validator(format!("cannot serve {PROTOCOL}: {e}")))?;
        let ledger = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let Some(ledger) = ledger.upgrade() else {
                    return;
                };
                tokio::spawn(async move {
                    match ledger.on_request(req.peer, &req.data).await {
                        Ok(response) => {
                            let _ = req.reply.send(wire::encode(&response));
                        }
                        Err(budget) => {
                            ledger.net.admission().refuse(budget);
                            req.reply.refuse(budget);
                        }
                    }
                });
            }
        });
        Ok(())
    }

    /// Checks a peer's submission of `txs` transactions in `bytes` request bytes against its
    /// budgets, spending them if it fits.
    fn admit_submission(&self, peer: PeerId, bytes: usize, txs: usize) -> Result<(), &'static str> {
        self.submit_bytes
            .check(&peer, bytes as f64)
            .map_err(|_| BUDGET_SUBMIT_BYTES)?;
        self.submit_txs
            .check(&peer, txs as f64)
            .map_err(|_| BUDGET_SUBMIT_TXS)
    }

    /// Answers a request, or `Err(budget)` when an admission budget refuses it (the requester
    /// gets the budget's name as the refusal reason).
    async fn on_request(
        self: &Arc<Self>,
        peer: PeerId,
        data: &[u8],
    ) -> Result<Response, &'static str> {
        let Some(request) = wire::decode::<Request>(data) else {
            return Ok(Response::Error("malformed request".into()));
        };
        Ok(match request {
            Request::Status => {
                let validator = self.is_validator();
                let inner = self.inner.lock().unwrap();
                Response::Status {
                    chain: self.chain,
                    height: inner.state.height,
                    digest: inner.digest,
                    validator,
                }
            }
            Request::Blocks { from, max } => {
                let store = self.store.clone();
                let max = max.clamp(1, MAX_BLOCKS_PER_REQUEST) as usize;
                match tokio::task::spawn_blocking(move || {
                    store.blocks_from(from.max(1), max, MAX_BLOCKS_BYTES)
                })
                .await
                {
                    Ok(Ok(blocks)) => Response::Blocks(blocks),
                    Ok(Err(e)) => Response::Error(e.to_string()),
                    Err(e) => Response::Error(e.to_string()),
                }
            }
            Request::SubmitMany(txs) => {
                if txs.len() > MAX_SUBMIT_BATCH {
                    return Ok(Response::Error(format!(
                        "at most {MAX_SUBMIT_BATCH} transactions per request"
                    )));
                }
                // Before any decoding or signature work.
                self.admit_submission(peer, data.len(), txs.len())?;
                if self.mailbox().is_none() {
                    return Ok(Response::Error("this node is not a validator".into()));
                }
                Response::SubmittedMany(
                    self.submit_signed_many(&txs)
                        .await
                        .into_iter()
                        .map(|r| r.map_err(|e| e.to_string()))
                        .collect(),
                )
            }
            Request::Submit(bytes) => {
                // Before any decoding or signature work.
                self.admit_submission(peer, data.len(), 1)?;
                if let Err(e) = Tx::decode(&bytes) {
                    return Ok(Response::Submitted(Err(e.to_string())));
                }
                if self.mailbox().is_none() {
                    return Ok(Response::Submitted(Err(
                        "this node is not a validator".into()
                    )));
                }
                let result = self
                    .submit_signed_many(&[bytes])
                    .await
                    .pop()
                    .expect("one answer per transaction");
                Response::Submitted(result.map_err(|e| e.to_string()))
            }
        })
    }

    // ---- queries ----

    pub fn height(&self) -> u64 {
        self.inner.lock().unwrap().state.height
    }

    /// Blocks held above the tip, waiting for the blocks below them.
    pub fn pending_blocks(&self) -> usize {
        self.inner.lock().unwrap().pending.len()
    }

    pub fn balance(&self, account: &Account) -> AccountState {
        self.inner.lock().unwrap().state.account(account)
    }

    pub fn status(&self) -> Status {
        let (validator, runs_consensus) = (self.is_validator(), self.runs_consensus());
        let inner = self.inner.lock().unwrap();
        let (tx_per_sec, blocks_per_sec) = match (inner.recent.front(), inner.recent.back()) {
            (Some(first), Some(last)) if last.0 > first.0 => {
                let secs = last.0.duration_since(first.0).as_secs_f64();
                let txs: usize = inner.recent.iter().skip(1).map(|r| r.2).sum();
                (txs as f64 / secs, (inner.recent.len() - 1) as f64 / secs)
            }
            _ => (0.0, 0.0),
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
            applied_txs: inner.applied_txs,
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
        })
    }

    /// The newest `limit` transactions that sent from or paid to `account`.
    pub fn history(&self, account: &Account, limit: usize) -> Result<Vec<TxRecord>, LedgerError> {
        self.store
            .history(account, limit)?
            .into_iter()
            .map(|(height, index)| self.record(height, index))
            .collect()
    }

    // ---- paying ----

    /// Signs a transfer from this node's account, submits it to a validator and waits until a
    /// finalized block holds it.
    pub async fn pay(
        self: &Arc<Self>,
        to: Account,
        amount: u64,
        memo: Option<String>,
        fee: Option<u64>,
    ) -> Result<Payment, LedgerError> {
        if !to.is_usable() {
            return Err(TxError::BadRecipient.into());
        }
        let mut tips = self.tip.subscribe();
        let (tx, seq, fee) = {
            let mut inner = self.inner.lock().unwrap();
            let fee = fee.unwrap_or(inner.state.min_fee);
            let state_seq = inner.state.account(&self.account).seq;
            let seq = inner.next_seq.max(state_seq);
            let signed = AccountTx {
                from: self.account,
                seq,
                fee,
                action: Action::Transfer { to, amount, memo },
            }
            .sign(&self.key, &self.chain);
            inner.state.check_queued(&signed)?;
            inner.next_seq = seq + 1;
            (Tx::Account(signed), seq, fee)
        };
        let hash = tx.hash();
        let started = Instant::now();
        if let Err(e) = self.submit(tx).await {
            // Not taken anywhere: the sequence number is free again.
            let mut inner = self.inner.lock().unwrap();
            let state_seq = inner.state.account(&self.account).seq;
            if inner.next_seq == seq + 1 {
                inner.next_seq = state_seq.max(seq);
            }
            return Err(e);
        }
        let waited = self
            .wait_final(&hash, &mut tips, || {
                // The sequence number was used, but not by this transaction.
                (self.balance(&self.account).seq > seq).then_some(LedgerError::Replaced(seq))
            })
            .await;
        match waited {
            Ok(height) => Ok(Payment {
                hash,
                height,
                finality_ms: started.elapsed().as_millis() as u64,
                seq,
                fee,
            }),
            Err(e) => {
                if matches!(e, LedgerError::NotFinal(_)) {
                    let mut inner = self.inner.lock().unwrap();
                    inner.next_seq = inner.state.account(&self.account).seq;
                }
                Err(e)
            }
        }
    }

    /// Waits until a finalized block holds `hash` and returns its height. `lost` says when the
    /// transaction can no longer be included (checked after each new block).
    async fn wait_final(
        &self,
        hash: &Hash,
        tips: &mut broadcast::Receiver<u64>,
        lost: impl Fn() -> Option<LedgerError>,
    ) -> Result<u64, LedgerError> {
        let deadline = tokio::time::Instant::now() + FINALITY_WAIT;
        loop {
            if let Some((height, _)) = self.store.tx_location(hash)? {
                return Ok(height);
            }
            if let Some(error) = lost() {
                // (Final after all, between the two checks?)
                if let Some((height, _)) = self.store.tx_location(hash)? {
                    return Ok(height);
                }
                return Err(error);
            }
            tokio::select! {
                _ = tips.recv() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(LedgerError::NotFinal(FINALITY_WAIT));
                }
                _ = self.stop.cancelled() => return Err(LedgerError::Stopped),
            }
        }
    }

    // ---- committee changes ----

    /// This validator's approval of `change` at the current committee nonce. Only approvals
    /// of the current committee's members count, so other nodes are refused.
    pub fn approve_committee_change(
        &self,
        change: &CommitteeChange,
    ) -> Result<(Approval, u64), LedgerError> {
        let inner = self.inner.lock().unwrap();
        if !inner.state.committee.contains(&self.account) {
            return Err(LedgerError::Rejected(format!(
                "this node's account {} is not in the current committee: only its members' \
                 approvals count",
                self.account
            )));
        }
        check_change_useful(&inner.state, change)?;
        let nonce = inner.state.committee_nonce;
        Ok((
            CommitteeTx::approve(change, nonce, &self.key, &self.chain),
            nonce,
        ))
    }

    /// Submits a committee change with the current members' approvals and waits until it is
    /// final. It takes effect at the start of the next epoch.
    pub async fn change_committee(
        &self,
        change: CommitteeChange,
        approvals: Vec<Approval>,
    ) -> Result<CommitteeChanged, LedgerError> {
        let mut tips = self.tip.subscribe();
        let (tx, nonce) = {
            let inner = self.inner.lock().unwrap();
            check_change_useful(&inner.state, &change)?;
            let nonce = inner.state.committee_nonce;
            let tx = Tx::Committee(CommitteeTx {
                change,
                nonce,
                approvals,
            });
            inner.state.check(&tx, false)?;
            (tx, nonce)
        };
        let hash = tx.hash();
        self.submit(tx).await?;
        let height = self
            .wait_final(&hash, &mut tips, || {
                let inner = self.inner.lock().unwrap();
                (inner.state.committee_nonce > nonce).then(|| {
                    LedgerError::Rejected(format!(
                        "another committee change used nonce {nonce} first; approve again"
                    ))
                })
            })
            .await?;
        let inner = self.inner.lock().unwrap();
        let epoch_length = inner.state.epoch_length;
        let effective_epoch = inner.state.epoch_of(height) + 1;
        Ok(CommitteeChanged {
            hash,
            height,
            effective_epoch,
            effective_height: effective_epoch * epoch_length + 1,
            next_committee: inner.state.next_committee.clone(),
        })
    }

    /// Submits a transaction signed elsewhere (a wallet): checked against the finalized state,
    /// then handed to a validator. Does not wait for finality.
    pub async fn submit_signed(&self, bytes: &[u8]) -> Result<Hash, LedgerError> {
        self.submit_signed_many(&[bytes.to_vec()])
            .await
            .pop()
            .expect("one answer per transaction")
    }

    /// Submits many transactions signed elsewhere: one answer each, in order. A validator
    /// hands them to its mempool at once (one batch signature check); another node checks
    /// them the same way and forwards those that pass to a validator in one request.
    pub async fn submit_signed_many(&self, txs: &[Vec<u8>]) -> Vec<Result<Hash, LedgerError>> {
        let Some(mailbox) = self.mailbox() else {
            return self.forward_many(txs).await;
        };
        // Decoding and the batch signature check run on a blocking thread, never on the
        // consensus application's: it is handed only transactions that passed.
        let checked = {
            let chain = self.chain;
            let owned = txs.to_vec();
            match tokio::task::spawn_blocking(move || decode_and_verify(&owned, &chain)).await {
                Ok(checked) => checked,
                Err(_) => return txs_stopped(txs.len()),
            }
        };
        let mut answers: Vec<Option<Result<Hash, LedgerError>>> = Vec::with_capacity(txs.len());
        let mut decoded = Vec::new();
        for result in checked {
            match result {
                Ok(tx) => {
                    decoded.push(tx);
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        let mut results = match mailbox.submit_verified(decoded).await {
            Some(results) => results.into_iter(),
            None => Vec::new().into_iter(),
        };
        answers
            .into_iter()
            .map(|answer| match answer {
                Some(answer) => answer,
                None => match results.next() {
                    Some(Ok(hash)) => Ok(hash),
                    Some(Err(e)) => Err(LedgerError::Rejected(e.to_string())),
                    None => Err(LedgerError::Stopped),
                },
            })
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

    /// A follower's `submit_signed_many`: checks against the finalized state here (signatures
    /// in one batch), then forwards what passed to the first validator that answers.
    async fn forward_many(&self, txs: &[Vec<u8>]) -> Vec<Result<Hash, LedgerError>> {
        let mut answers: Vec<Option<Result<Hash, LedgerError>>> = Vec::with_capacity(txs.len());
        let mut decoded: Vec<(usize, Tx)> = Vec::new();
        for (i, bytes) in txs.iter().enumerate() {
            match Tx::decode(bytes) {
                Ok(tx) => {
                    decoded.push((i, tx));
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(LedgerError::Rejected(e.to_string())))),
            }
        }
        {
            let signed: Vec<&crate::tx::SignedAccountTx> = decoded
                .iter()
                .filter_map(|(_, tx)| match tx {
                    Tx::Account(signed) => Some(signed),
                    Tx::Committee(_) => None,
                })
                .collect();
            let mut valid = crate::tx::signatures_valid(&signed, &self.chain).into_iter();
            let inner = self.inner.lock().unwrap();
            for (i, tx) in &decoded {
                let verdict = match tx {
                    Tx::Account(signed) => {
                        let Action::Transfer { to, .. } = &signed.body.action;
                        if !valid.next().unwrap_or(false) {
                            Err(TxError::BadSignature)
                        } else if !to.is_usable() {
                            Err(TxError::BadRecipient)
                        } else {
                            inner.state.check_queued(signed)
                        }
                    }
                    Tx::Committee(_) => inner.state.check(tx, false),
                };
                if let Err(e) = verdict {
                    answers[*i] = Some(Err(e.into()));
                }
            }
        }
        let pending: Vec<usize> = (0..answers.len())
            .filter(|i| answers[*i].is_none())
            .collect();
        let forward: Vec<Vec<u8>> = pending.iter().map(|i| txs[*i].clone()).collect();
        let mut outcome = Err(String::from("no validator is known"));
        if !forward.is_empty() {
            for peer in self.committee_peers() {
                match self.ask(peer, &Request::SubmitMany(forward.clone())).await {
                    Ok(Response::SubmittedMany(results)) if results.len() == forward.len() => {
                        outcome = Ok(results);
                        break;
                    }
                    Ok(_) => outcome = Err(format!("{peer}: unexpected answer")),
                    Err(e) => outcome = Err(format!("{peer}: {e}")),
                }
            }
        }
        match outcome {
            Ok(results) => {
                for (i, result) in pending.into_iter().zip(results) {
                    answers[i] = Some(result.map_err(LedgerError::Rejected));
                }
            }
            Err(why) => {
                for i in pending {
                    answers[i] = Some(Err(LedgerError::NoValidator(why.clone())));
                }
            }
        }
        answers
            .into_iter()
            .map(|a| a.expect("every transaction answered"))
            .collect()
    }

    /// Hands a transaction to the own engine, or to the first validator that takes it.
    async fn submit(&self, tx: Tx) -> Result<Hash, LedgerError> {
        let mailbox = self.mailbox();
        if let Some(mailbox) = mailbox {
            return match mailbox.submit(tx).await {
                Some(Ok(hash)) => Ok(hash),
                Some(Err(e)) => Err(LedgerError::Rejected(e.to_string())),
                None => Err(LedgerError::Stopped),
            };
        }
        let bytes = tx.encode();
        let mut last_error = String::from("no validator is known");
        for peer in self.committee_peers() {
            match self.ask(peer, &Request::Submit(bytes.clone())).await {
                Ok(Response::Submitted(Ok(hash))) => return Ok(hash),
                Ok(Response::Submitted(Err(e))) => return Err(LedgerError::Rejected(e)),
                Ok(_) => last_error = format!("{peer}: unexpected answer"),
                Err(e) => last_error = format!("{peer}: {e}"),
            }
        }
        Err(LedgerError::NoValidator(last_error))
    }
}

/// Decodes submitted transactions and checks the transfers' signatures in one batch (ZIP-215,
/// the same rule as the mempool's): one answer each, in order. CPU-heavy: call it on a
/// blocking thread. Committee changes are passed through (the mempool checks their approvals
/// against the committee; at most `MAX_COMMITTEE_TXS` are held).
fn decode_and_verify(txs: &[Vec<u8>], chain: &Hash) -> Vec<Result<Tx, LedgerError>> {
    let decoded: Vec<Result<Tx, LedgerError>> = txs
        .iter()
        .map(|bytes| Tx::decode(bytes).map_err(|e| LedgerError::Rejected(e.to_string())))
        .collect();
    let signed: Vec<&crate::tx::SignedAccountTx> = decoded
        .iter()
        .filter_map(|tx| match tx {
            Ok(Tx::Account(signed)) => Some(signed),
            _ => None,
        })
        .collect();
    let valid = crate::tx::signatures_valid(&signed, chain);
    drop(signed);
    let mut valid = valid.into_iter();
    decoded
        .into_iter()
        .map(|tx| match tx {
            Ok(Tx::Account(signed)) => {
                if valid.next().unwrap_or(false) {
                    Ok(Tx::Account(signed))
                } else {
                    Err(LedgerError::Rejected(
                        crate::consensus::Rejected::Invalid(TxError::BadSignature).to_string(),
                    ))
                }
            }
            other => other,
        })
        .collect()
}

/// One `Stopped` answer per transaction.
fn txs_stopped(n: usize) -> Vec<Result<Hash, LedgerError>> {
    (0..n).map(|_| Err(LedgerError::Stopped)).collect()
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

/// Refuses a change that would do nothing, with a reason a user understands.
fn check_change_useful(state: &State, change: &CommitteeChange) -> Result<(), LedgerError> {
    let problem = match change {
        CommitteeChange::Add(v) if !v.is_usable() => {
            Some(format!("{v} is not a usable ed25519 key"))
        }
        CommitteeChange::Add(v) if state.next_committee.contains(v) => {
            Some(format!("{v} is already in the committee"))
        }
        CommitteeChange::Remove(v) if !state.next_committee.contains(v) => {
            Some(format!("{v} is not in the committee"))
        }
        CommitteeChange::Remove(_) if state.next_committee.len() == 1 => {
            Some("the last validator cannot be removed".into())
        }
        _ => None,
    };
    match problem {
        Some(problem) => Err(LedgerError::Rejected(problem)),
        None => Ok(()),
    }
}
