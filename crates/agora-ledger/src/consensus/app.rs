//! The application the simplex engine drives: proposes, verifies and certifies blocks, relays
//! them between validators and delivers finalized blocks in height order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use commonware_actor::Feedback;
use commonware_consensus::simplex::Plan;
use commonware_consensus::types::Round;
use commonware_consensus::{Automaton, CertifiableAutomaton, Relay, Reporter};
use commonware_p2p::{Receiver, Recipients, Sender};
use commonware_runtime::{Clock, Handle, IoBuf, Spawner};
use commonware_utils::channel::{mpsc, oneshot, watch};
use tokio::sync::Notify;
use tracing::{debug, error, warn};

use super::mempool::{Mempool, MempoolLimits, Rejected};
use super::wire::{BlockMsg, MAX_TX_BATCH};
use super::{Activity, Context, Digest, Finalization, PublicKey, digest, hash};
use crate::block::{Block, MAX_BLOCK_BYTES, MAX_BLOCK_TXS};
use crate::state::State;
use crate::tx::{Hash, Tx};

/// How many finalized blocks are kept in memory to answer other validators' `Want`s.
const RECENT_FINALIZED: u64 = 256;
/// Unsolicited blocks (proposals and `Have`s the engine has not asked about yet) held at once
/// per sending validator. A leader proposes one block per view and the engine asks to verify it
/// within a round trip, so an honest sender rarely has more than one or two outstanding; past
/// this a sender's own oldest unsolicited block makes room, so one validator flooding blocks
/// only ever displaces its own.
pub const MAX_UNSOLICITED_BLOCKS_PER_SENDER: usize = 8;
/// Bytes of unsolicited blocks held per sending validator (four maximal blocks).
pub const MAX_UNSOLICITED_BYTES_PER_SENDER: usize = 4 * MAX_BLOCK_BYTES;
/// Backstop on blocks the local engine asked about (to verify, certify or finalize, or their
/// missing ancestors) and own proposals. The engine asks about one proposal per view, so this
/// is reached only if finality stalls for about this many views; past it a wanted block is
/// refused (and asked for again later), never an older one evicted.
pub const MAX_CLAIMED_BLOCKS: usize = 1_024;
/// Messages from the local engine (propose, verify, certify, broadcast, finalization) waiting
/// for the application. The engine's asynchronous calls wait for room; its two synchronous
/// ones (`broadcast`, `report`) are dropped when full, see [`Mailbox`].
pub const ENGINE_MAILBOX: usize = 1_024;
/// Submissions (and queries) from the node waiting for the application; `submit_many` waits
/// for room, so a burst of submissions slows its submitters, not consensus.
pub const NODE_MAILBOX: usize = 64;
/// Finalized blocks delivered but not yet taken by the node. When it is full the application
/// finalizes nothing more until the node catches up (the certificates wait, so nothing is lost).
pub const FINALIZED_OUTPUT: usize = 256;
/// Refusal counter names (`agora_refusals_total{budget}`): a sender's oldest unsolicited block
/// dropped for a newer one, and a wanted block refused at [`MAX_CLAIMED_BLOCKS`].
pub const BUDGET_UNSOLICITED_BLOCKS: &str = "ledger.unsolicited_blocks";
pub const BUDGET_CLAIMED_BLOCKS: &str = "ledger.claimed_blocks";
/// Batches of relayed transactions waiting for the relay verifier; a batch arriving when it is
/// full is dropped (its transactions are in their relayer's mempool, which proposes them).
pub const RELAY_VERIFY_QUEUE: usize = 16;
pub const BUDGET_RELAY_VERIFY: &str = "ledger.relay_verify_queue";
/// Unfinalized blocks further than this above the finalized height are not taken.
const MAX_BLOCKS_AHEAD: u64 = 1_024;
/// A proposal's timestamp may run this far ahead of a verifier's clock.
const MAX_CLOCK_SKEW_MS: u64 = 5_000;
/// How often missing blocks are asked for again and queued transactions relayed.
const TICK: Duration = Duration::from_millis(50);
const WANT_RETRY: Duration = Duration::from_millis(500);

/// What the engine and the node ask of the application.
pub enum Message {
    Propose {
        context: Context,
        response: oneshot::Sender<Digest>,
    },
    Verify {
        context: Context,
        payload: Digest,
        response: oneshot::Sender<bool>,
    },
    Certify {
        payload: Digest,
        response: oneshot::Sender<bool>,
    },
    Broadcast {
        payload: Digest,
        plan: Plan<PublicKey>,
    },
    Finalized(Finalization),
    Submit {
        txs: Vec<Tx>,
        /// The transfers' signatures were verified by the caller, off this thread.
        verified: bool,
        response: oneshot::Sender<Vec<Submitted>>,
    },
    /// Transactions another validator relayed, their signatures verified by the relay
    /// verifier task (off this thread); admitted but not relayed again.
    Relayed(Vec<Tx>),
    /// What the application holds now (for tests and metrics).
    Held {
        response: oneshot::Sender<HeldBlocks>,
    },
}

/// The unfinalized blocks an application holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldBlocks {
    pub blocks: usize,
    pub bytes: usize,
    /// Of those, blocks no one asked for yet (counted against their sender's budget).
    pub unsolicited: usize,
    /// The most unsolicited blocks held from any one sender.
    pub max_unsolicited_per_sender: usize,
}

/// The answer to a submitted transaction.
pub type Submitted = Result<Hash, Rejected>;

/// A block that consensus finalized, delivered in height order exactly once per run.
#[derive(Clone, Debug)]
pub struct Finalized {
    pub block: Block,
    pub digest: Hash,
    /// The certificate that finalized this block, or `None` when a later block's certificate
    /// finalized it implicitly (its child links to it by hash).
    pub finalization: Option<Finalization>,
    /// The state after the block and its transactions' effects, as this application executed
    /// them: the node applies them without executing the block again.
    pub executed: Option<(State, Vec<crate::state::Effect>)>,
}

/// The application's handle: the engine's automaton, relay and reporter, and the node's way
/// to submit transactions.
///
/// Every channel into the application is bounded. The engine's asynchronous calls (`propose`,
/// `verify`, `certify`) wait for room in [`ENGINE_MAILBOX`]; its synchronous ones cannot wait,
/// so when the mailbox is full a `broadcast` is dropped (the other validators ask for the block
/// with `Want`) and a finalization `report` is dropped (a later finalization finalizes the
/// blocks below it through their hash links); both answer `Feedback::Backoff`. The application
/// never waits on the engine, so waiting for room cannot deadlock.
#[derive(Clone)]
pub struct Mailbox {
    engine: mpsc::Sender<Message>,
    node: mpsc::Sender<Message>,
    /// The latest base the node advanced to: one slot, only the newest matters.
    advanced: Arc<Mutex<Option<Base>>>,
    wake: Arc<Notify>,
}

impl Mailbox {
    async fn send(&self, message: Message) -> bool {
        self.engine.send(message).await.is_ok()
    }

    fn try_send(&self, message: Message) -> Feedback {
        match self.engine.try_send(message) {
            Ok(()) => Feedback::Ok,
            Err(mpsc::error::TrySendError::Full(_)) => Feedback::Backoff,
            Err(mpsc::error::TrySendError::Closed(_)) => Feedback::Closed,
        }
    }

    /// Submits a transaction to this validator's mempool (and, through it, to the others').
    pub async fn submit(&self, tx: Tx) -> Option<Submitted> {
        self.submit_many(vec![tx]).await?.pop()
    }

    /// Submits transactions at once (their signatures are checked in one batch): one answer
    /// each, in order.
    pub async fn submit_many(&self, txs: Vec<Tx>) -> Option<Vec<Submitted>> {
        self.submit_inner(txs, false).await
    }

    /// [`Self::submit_many`] for transactions whose transfer signatures the caller verified
    /// (`crate::tx::signatures_valid`), so the consensus thread does not: only the node's
    /// service calls it, after verifying on a blocking thread.
    pub(crate) async fn submit_verified(&self, txs: Vec<Tx>) -> Option<Vec<Submitted>> {
        self.submit_inner(txs, true).await
    }

    async fn submit_inner(&self, txs: Vec<Tx>, verified: bool) -> Option<Vec<Submitted>> {
        let (response, receiver) = oneshot::channel();
        self.node
            .send(Message::Submit {
                txs,
                verified,
                response,
            })
            .await
            .ok()?;
        receiver.await.ok()
    }

    /// What the application holds now: unfinalized blocks and their bytes.
    pub async fn held(&self) -> Option<HeldBlocks> {
        let (response, receiver) = oneshot::channel();
        self.node.send(Message::Held { response }).await.ok()?;
        receiver.await.ok()
    }

    /// Tells the application that the node applied finalized blocks up to `base` by other
    /// means (fetched from peers after downtime); it continues from there. Only the newest
    /// base is kept, so this never queues.
    pub fn advance(&self, base: Base) {
        let mut slot = self.advanced.lock().unwrap_or_else(|e| e.into_inner());
        if slot
            .as_ref()
            .is_none_or(|b| b.state.height < base.state.height)
        {
            *slot = Some(base);
        }
        drop(slot);
        self.wake.notify_one();
    }
}

impl Automaton for Mailbox {
    type Context = Context;
    type Digest = Digest;

    async fn propose(&mut self, context: Context) -> oneshot::Receiver<Digest> {
        let (response, receiver) = oneshot::channel();
        self.send(Message::Propose { context, response }).await;
        receiver
    }

    async fn verify(&mut self, context: Context, payload: Digest) -> oneshot::Receiver<bool> {
        let (response, receiver) = oneshot::channel();
        self.send(Message::Verify {
            context,
            payload,
            response,
        })
        .await;
        receiver
    }
}

impl CertifiableAutomaton for Mailbox {
    async fn certify(&mut self, _round: Round, payload: Digest) -> oneshot::Receiver<bool> {
        let (response, receiver) = oneshot::channel();
        self.send(Message::Certify { payload, response }).await;
        receiver
    }
}

impl Relay for Mailbox {
    type Digest = Digest;
    type PublicKey = PublicKey;
    type Plan = Plan<PublicKey>;

    fn broadcast(&mut self, payload: Digest, plan: Plan<PublicKey>) -> Feedback {
        self.try_send(Message::Broadcast { payload, plan })
    }
}

impl Reporter for Mailbox {
    type Activity = Activity;

    fn report(&mut self, activity: Activity) -> Feedback {
        // Only finalizations matter to the ledger; votes and other certificates are the
        // engine's business.
        let Activity::Finalization(finalization) = activity else {
            return Feedback::Ok;
        };
        self.try_send(Message::Finalized(finalization))
    }
}

/// Where the application starts: the last finalized block this node has applied.
#[derive(Clone, Debug)]
pub struct Base {
    pub state: State,
    pub digest: Hash,
    pub timestamp_ms: u64,
    /// The digest of the last block before the epoch of the next block (the epoch's floor;
    /// the chain id in epoch 0). Consensus for an epoch starts from it.
    pub epoch_start: Hash,
}

/// The application's finalized height entered a new epoch: consensus for it starts from
/// `floor` with `committee`.
#[derive(Clone, Debug)]
pub(crate) struct EpochStart {
    pub epoch: u64,
    pub committee: Vec<crate::Account>,
    pub floor: Hash,
}

/// Block production settings.
#[derive(Clone, Copy, Debug)]
pub struct AppConfig {
    pub mempool: MempoolLimits,
    pub max_block_txs: usize,
    /// With nothing to include, a leader waits this long after its parent's timestamp before
    /// proposing an empty block, so an idle ledger does not fill the disk with empty blocks.
    /// Must stay well below the engine's leader timeout.
    pub empty_block_interval: Duration,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            mempool: MempoolLimits::default(),
            max_block_txs: 5_000,
            empty_block_interval: Duration::from_millis(400),
        }
    }
}

struct PendingPropose {
    context: Context,
    response: oneshot::Sender<Digest>,
    /// When an empty block is proposed anyway (ms since the Unix epoch).
    deadline_ms: u64,
}

struct PendingVerify {
    context: Context,
    payload: Hash,
    response: oneshot::Sender<bool>,
}

/// Who a held block is held for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Origin {
    /// Built by this validator.
    Own,
    /// The local engine asked about it (or about a block it is an ancestor of).
    Claimed,
    /// Sent by this validator before anyone asked: counts against its budget.
    Unsolicited(PublicKey),
}

struct HeldBlock {
    block: Block,
    /// Encoded size.
    bytes: usize,
    origin: Origin,
    /// Arrival order, to find a sender's oldest unsolicited block.
    arrival: u64,
}

/// A sender's unsolicited blocks held: (count, bytes).
type Spent = (usize, usize);

pub(crate) struct App<S, R> {
    mailbox: mpsc::Receiver<Message>,
    node_mailbox: mpsc::Receiver<Message>,
    advanced: Arc<Mutex<Option<Base>>>,
    wake: Arc<Notify>,
    refusals: Option<agora_net::Refusals>,
    sender: S,
    receiver: R,
    finalized: State,
    finalized_digest: Hash,
    finalized_timestamp: u64,
    /// Digest of the last block before the current epoch (see [`Base::epoch_start`]).
    epoch_start: Hash,
    /// The epoch last reported to the orchestrator.
    epoch_reported: Option<u64>,
    /// The newest epoch start, for the orchestrator (which only ever needs the newest).
    epochs: watch::Sender<Option<EpochStart>>,
    /// Recently finalized blocks by height, to serve validators that missed them.
    recent: BTreeMap<u64, (Hash, Block)>,
    /// Blocks above the finalized height, by digest.
    blocks: HashMap<Hash, HeldBlock>,
    /// Unsolicited blocks held per sender (only senders with some; at most the committee,
    /// since the transport delivers only committee members' messages).
    unsolicited: HashMap<PublicKey, Spent>,
    /// Held blocks that are `Own` or `Claimed`.
    claimed: usize,
    arrivals: u64,
    /// State after each valid block above the finalized height.
    states: HashMap<Hash, (State, Vec<crate::state::Effect>)>,
    invalid: HashSet<Hash>,
    pending_verify: Vec<PendingVerify>,
    pending_certify: Vec<(Hash, oneshot::Sender<bool>)>,
    pending_finalizations: Vec<Finalization>,
    mempool: Mempool,
    /// Admitted transactions not yet relayed to the other validators.
    relay_queue: Vec<Tx>,
    /// Relayed batches to the verifier task, which checks their signatures off this thread.
    relay_verify: mpsc::Sender<Vec<Tx>>,
    /// The verifier's end, until [`Self::start`] spawns it.
    relay_verifier: Option<(mpsc::Receiver<Vec<Tx>>, mpsc::Sender<Message>)>,
    wants: HashMap<Hash, SystemTime>,
    output: mpsc::Sender<Finalized>,
    config: AppConfig,
    pending_propose: Option<PendingPropose>,
}

impl<S, R> App<S, R>
where
    S: Sender<PublicKey = PublicKey>,
    R: Receiver<PublicKey = PublicKey>,
{
    pub fn new(
        base: Base,
        (sender, receiver): (S, R),
        config: AppConfig,
        refusals: Option<agora_net::Refusals>,
    ) -> (
        Self,
        Mailbox,
        mpsc::Receiver<Finalized>,
        watch::Receiver<Option<EpochStart>>,
    ) {
        let (engine_tx, mailbox) = mpsc::channel(ENGINE_MAILBOX);
        let (node_tx, node_mailbox) = mpsc::channel(NODE_MAILBOX);
        let (relay_verify, relay_rx) = mpsc::channel(RELAY_VERIFY_QUEUE);
        let (output, finalized) = mpsc::channel(FINALIZED_OUTPUT);
        let (epochs, epoch_starts) = watch::channel(None);
        let advanced = Arc::new(Mutex::new(None));
        let wake = Arc::new(Notify::new());
        let mut app = App {
            mailbox,
            node_mailbox,
            advanced: advanced.clone(),
            wake: wake.clone(),
            refusals,
            sender,
            receiver,
            finalized: base.state,
            finalized_digest: base.digest,
            finalized_timestamp: base.timestamp_ms,
            epoch_start: base.epoch_start,
            epoch_reported: None,
            epochs,
            recent: BTreeMap::new(),
            blocks: HashMap::new(),
            unsolicited: HashMap::new(),
            claimed: 0,
            arrivals: 0,
            states: HashMap::new(),
            invalid: HashSet::new(),
            pending_verify: Vec::new(),
            pending_certify: Vec::new(),
            pending_finalizations: Vec::new(),
            mempool: Mempool::new(config.mempool),
            relay_queue: Vec::new(),
            relay_verify,
            relay_verifier: Some((relay_rx, node_tx.clone())),
            wants: HashMap::new(),
            output,
            config: AppConfig {
                max_block_txs: config.max_block_txs.clamp(1, MAX_BLOCK_TXS),
                ..config
            },
            pending_propose: None,
        };
        app.report_epoch();
        let mailbox = Mailbox {
            engine: engine_tx,
            node: node_tx,
            advanced,
            wake,
        };
        (app, mailbox, finalized, epoch_starts)
    }

    /// Tells the orchestrator when the finalized height entered a new epoch.
    fn report_epoch(&mut self) {
        let state = &self.finalized;
        let epoch = state.epoch_of(state.height + 1);
        if self.epoch_reported.is_some_and(|e| e >= epoch) {
            return;
        }
        self.epoch_reported = Some(epoch);
        self.epochs.send_replace(Some(EpochStart {
            epoch,
            committee: state.committee.clone(),
            floor: self.epoch_start,
        }));
    }

    fn height_of(&self, digest: &Hash) -> Option<u64> {
        if *digest == self.finalized_digest {
            return Some(self.finalized.height);
        }
        self.block(digest).map(|b| b.height)
    }

    pub fn start<E: Clock + Spawner>(mut self, context: E) -> Handle<()> {
        if let Some((mut batches, node)) = self.relay_verifier.take() {
            let chain = self.finalized.chain;
            // Signature checks of relayed batches run on the runtime's blocking-friendly pool;
            // the task ends when the application (holding the sending side) does. (Not at a
            // lower priority: a block whose transactions were not checked yet has them checked
            // on the path to finality instead, which costs more.)
            context
                .child("relay_verify")
                .shared(true)
                .spawn(move |_| async move {
                    while let Some(txs) = batches.recv().await {
                        let verified = verify_relayed(txs, &chain);
                        if node.send(Message::Relayed(verified)).await.is_err() {
                            return;
                        }
                    }
                });
        }
        context.spawn(move |context| self.run(context))
    }

    async fn run<E: Clock>(mut self, context: E) {
        let mut next_tick = context.current() + TICK;
        loop {
            tokio::select! {
                biased;
                message = self.mailbox.recv() => match message {
                    Some(message) => self.handle(&context, message),
                    None => break,
                },
                _ = self.wake.notified() => self.take_advance(&context),
                Some(message) = self.node_mailbox.recv() => self.handle(&context, message),
                received = self.receiver.recv() => match received {
                    Ok((peer, bytes)) => self.on_network(&context, peer, bytes),
                    Err(error) => {
                        debug!(%error, "ledger block channel closed");
                        break;
                    }
                },
                _ = context.sleep_until(next_tick) => {
                    next_tick = context.current() + TICK;
                    // (Also catches an advance whose wake-up raced with another branch.)
                    self.take_advance(&context);
                    self.tick(&context);
                },
            }
        }
    }

    fn handle<E: Clock>(&mut self, context: &E, message: Message) {
        match message {
            Message::Propose {
                context: ctx,
                response,
            } => self.propose(context, ctx, response),
            Message::Verify {
                context: ctx,
                payload,
                response,
            } => {
                self.pending_verify.push(PendingVerify {
                    context: ctx,
                    payload: hash(&payload),
                    response,
                });
                self.progress(context);
            }
            Message::Certify { payload, response } => {
                self.pending_certify.push((hash(&payload), response));
                self.progress(context);
            }
            Message::Broadcast { payload, plan } => {
                let recipients = match plan {
                    Plan::Prepare { .. } | Plan::Propose { .. } => Recipients::All,
                    Plan::Forward { recipients, .. } => recipients,
                };
                if let Some(block) = self.block(&hash(&payload)) {
                    let message = BlockMsg::Proposal(block.clone()).encode();
                    self.sender.send(recipients, IoBuf::from(message), true);
                }
            }
            Message::Finalized(finalization) => {
                self.pending_finalizations.push(finalization);
                self.progress(context);
            }
            Message::Relayed(txs) => {
                // Errors are expected (duplicates, races with finality); nothing to answer.
                let _ = self.mempool.admit_verified(txs, &self.finalized);
                self.propose_if_due(context);
            }
            Message::Submit {
                txs,
                verified,
                response,
            } => {
                let results = if verified {
                    self.mempool.admit_verified(txs.clone(), &self.finalized)
                } else {
                    self.mempool.admit_batch(txs.clone(), &self.finalized)
                };
                let mut admitted = false;
                for (tx, result) in txs.into_iter().zip(&results) {
                    if let Ok((_, true)) = result {
                        admitted = true;
                        self.relay_queue.push(tx);
                    }
                }
                if admitted {
                    // Relayed at once (one message per submission, not per transaction): a
                    // transaction waiting for the tick could miss the next leader's block.
                    self.relay_txs();
                    self.propose_if_due(context);
                }
                let _ = response.send(
                    results
                        .into_iter()
                        .map(|r| r.map(|(hash, _)| hash))
                        .collect(),
                );
            }
            Message::Held { response } => {
                let _ = response.send(self.held());
            }
        }
    }

    fn held(&self) -> HeldBlocks {
        HeldBlocks {
            blocks: self.blocks.len(),
            bytes: self.blocks.values().map(|h| h.bytes).sum(),
            unsolicited: self.unsolicited.values().map(|(n, _)| n).sum(),
            max_unsolicited_per_sender: self
                .unsolicited
                .values()
                .map(|(n, _)| *n)
                .max()
                .unwrap_or(0),
        }
    }

    /// Continues from the base the node advanced to, if it is ahead.
    fn take_advance<E: Clock>(&mut self, context: &E) {
        let base = self
            .advanced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(base) = base else { return };
        if base.state.height > self.finalized.height {
            debug!(
                height = base.state.height,
                "advancing to blocks applied by the node"
            );
            self.finalized = base.state;
            self.finalized_digest = base.digest;
            self.finalized_timestamp = base.timestamp_ms;
            self.epoch_start = base.epoch_start;
            self.recent.clear();
            self.after_finalization();
            self.progress(context);
        }
    }

    fn refuse(&self, budget: &'static str) {
        if let Some(refusals) = &self.refusals {
            refusals.refuse(budget);
        }
    }

    /// Holds a block (replacing nothing: a digest names one block).
    fn hold(&mut self, digest: Hash, block: Block, bytes: usize, origin: Origin) {
        if self.blocks.contains_key(&digest) {
            return;
        }
        match &origin {
            Origin::Unsolicited(peer) => {
                let spent = self.unsolicited.entry(peer.clone()).or_default();
                spent.0 += 1;
                spent.1 += bytes;
            }
            Origin::Own | Origin::Claimed => self.claimed += 1,
        }
        self.arrivals += 1;
        let arrival = self.arrivals;
        self.blocks.insert(
            digest,
            HeldBlock {
                block,
                bytes,
                origin,
                arrival,
            },
        );
    }

    /// Stops holding a block (and the state after it).
    fn release(&mut self, digest: &Hash) -> Option<Block> {
        let held = self.blocks.remove(digest)?;
        self.states.remove(digest);
        self.uncount(&held);
        Some(held.block)
    }

    fn uncount(&mut self, held: &HeldBlock) {
        match &held.origin {
            Origin::Unsolicited(peer) => {
                if let Some(spent) = self.unsolicited.get_mut(peer) {
                    spent.0 -= 1;
                    spent.1 -= held.bytes;
                    if spent.0 == 0 {
                        self.unsolicited.remove(peer);
                    }
                }
            }
            Origin::Own | Origin::Claimed => self.claimed -= 1,
        }
    }

    /// The engine asked about `digest` (or a block above it): it no longer counts against its
    /// sender's budget.
    fn claim(&mut self, digest: &Hash) {
        let Some(held) = self.blocks.get_mut(digest) else {
            return;
        };
        let Origin::Unsolicited(peer) = std::mem::replace(&mut held.origin, Origin::Claimed) else {
            return;
        };
        let bytes = held.bytes;
        if let Some(spent) = self.unsolicited.get_mut(&peer) {
            spent.0 -= 1;
            spent.1 -= bytes;
            if spent.0 == 0 {
                self.unsolicited.remove(&peer);
            }
        }
        self.claimed += 1;
    }

    /// Makes room in `peer`'s unsolicited budget for a block of `bytes` by dropping its own
    /// oldest unsolicited blocks (never anyone else's).
    fn make_room(&mut self, peer: &PublicKey, bytes: usize) {
        loop {
            let (count, used) = self.unsolicited.get(peer).copied().unwrap_or_default();
            if count < MAX_UNSOLICITED_BLOCKS_PER_SENDER
                && used + bytes <= MAX_UNSOLICITED_BYTES_PER_SENDER
            {
                return;
            }
            let oldest = self
                .blocks
                .iter()
                .filter(|(_, h)| h.origin == Origin::Unsolicited(peer.clone()))
                .min_by_key(|(_, h)| h.arrival)
                .map(|(d, _)| *d);
            let Some(oldest) = oldest else { return };
            self.refuse(BUDGET_UNSOLICITED_BLOCKS);
            self.release(&oldest);
        }
    }

    fn block(&self, digest: &Hash) -> Option<&Block> {
        self.blocks.get(digest).map(|h| &h.block).or_else(|| {
            self.recent
                .values()
                .find(|(d, _)| d == digest)
                .map(|(_, block)| block)
        })
    }

    fn now_ms<E: Clock>(context: &E) -> u64 {
        context
            .current()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn timestamp_of(&self, digest: &Hash) -> Option<u64> {
        if *digest == self.finalized_digest {
            return Some(self.finalized_timestamp);
        }
        self.block(digest).map(|b| b.timestamp_ms)
    }

    fn propose<E: Clock>(&mut self, context: &E, ctx: Context, response: oneshot::Sender<Digest>) {
        let parent = hash(&ctx.parent.1);
        let parent_time = self.timestamp_of(&parent).unwrap_or(0);
        let interval = self.config.empty_block_interval.as_millis() as u64;
        self.pending_propose = Some(PendingPropose {
            context: ctx,
            response,
            deadline_ms: parent_time.saturating_add(interval),
        });
        self.propose_if_due(context);
    }

    /// Proposes the pending block if there is something to include or the empty-block interval
    /// has passed.
    fn propose_if_due<E: Clock>(&mut self, context: &E) {
        let Some(pending) = self.pending_propose.take() else {
            return;
        };
        if pending.response.is_closed() {
            return;
        }
        let parent = hash(&pending.context.parent.1);
        let epoch = pending.context.round.epoch().get();
        let end = self.finalized.epoch_end(epoch);
        match self.height_of(&parent) {
            // The epoch's last block: no block follows it in this epoch. Proposing it again
            // lets this epoch's consensus finalize it (the marshal's re-proposal); the next
            // epoch's consensus builds on it.
            Some(height) if height == end && self.state_after(&parent).is_some() => {
                debug!(epoch, height, "re-proposing the epoch's last block");
                let _ = pending.response.send(digest(parent));
                return;
            }
            Some(height) if height > end => {
                debug!(
                    epoch,
                    height, "declining to propose: parent beyond the epoch"
                );
                return;
            }
            _ => {}
        }
        // Build only on a parent whose state we know; otherwise decline (the view is skipped)
        // and fetch what is missing for next time.
        let Some(parent_state) = self.state_after(&parent) else {
            debug!(%parent, "declining to propose: parent state unknown");
            self.want(parent);
            return;
        };
        let now = Self::now_ms(context);
        if now < pending.deadline_ms && !self.mempool.has_candidates(parent_state) {
            self.pending_propose = Some(pending);
            return;
        }
        let response = pending.response;
        let parent_state = parent_state.clone();
        let parent_time = self.timestamp_of(&parent).unwrap_or(0);
        let timestamp = now.max(parent_time);
        let started = std::time::Instant::now();
        let (block, state, effects, _skipped) = Block::build_with_effects(
            &parent_state,
            parent,
            timestamp,
            self.mempool.candidates(&parent_state),
            self.config.max_block_txs,
        );
        let encoded = block.encode();
        let block_digest = Hash::of(&encoded);
        debug!(height = block.height, txs = block.txs.len(), digest = %block_digest, build_us = started.elapsed().as_micros() as u64, "proposing");
        self.hold(block_digest, block, encoded.len(), Origin::Own);
        self.states.insert(block_digest, (state, effects));
        let _ = response.send(digest(block_digest));
    }

    /// The state after `digest`, if that block is finalized or was executed.
    fn state_after(&self, digest: &Hash) -> Option<&State> {
        if *digest == self.finalized_digest {
            Some(&self.finalized)
        } else {
            self.states.get(digest).map(|(s, _)| s)
        }
    }

    /// Executes `digest` and whatever of its ancestors is not executed yet. `Err(true)` when the
    /// block (or an ancestor) is invalid or on a dead fork; `Err(false)` while blocks are missing
    /// (they are asked for).
    fn ensure_state(&mut self, digest: Hash) -> Result<(), bool> {
        let mut chain = Vec::new();
        let mut cursor = digest;
        while self.state_after(&cursor).is_none() {
            if self.invalid.contains(&cursor) {
                return Err(true);
            }
            let Some(held) = self.blocks.get(&cursor) else {
                self.want(cursor);
                return Err(false);
            };
            if held.block.height <= self.finalized.height {
                // Its parent chain does not lead to what was finalized.
                self.invalid.insert(cursor);
                return Err(true);
            }
            let parent = held.block.parent;
            // An ancestor of what the engine asked about is needed too.
            self.claim(&cursor);
            chain.push(cursor);
            cursor = parent;
        }
        for digest in chain.into_iter().rev() {
            let block = &self.blocks[&digest].block;
            let chain = self.finalized.chain;
            let checked = self.mempool.signatures_checked(&block.txs, &chain);
            let parent = self.state_after(&block.parent).expect("executed in order");
            let started = std::time::Instant::now();
            let result = block.execute(parent, |i| checked[i]);
            debug!(
                height = block.height,
                txs = block.txs.len(),
                exec_us = started.elapsed().as_micros() as u64,
                "executed"
            );
            match result {
                Ok((state, effects)) => {
                    self.states.insert(digest, (state, effects));
                }
                Err(error) => {
                    warn!(%digest, %error, "invalid block");
                    self.invalid.insert(digest);
                    // Its digest is enough to refuse it again; the bytes can go.
                    self.release(&digest);
                    return Err(true);
                }
            }
        }
        Ok(())
    }

    fn want(&mut self, digest: Hash) {
        self.wants.entry(digest).or_insert(UNIX_EPOCH);
    }

    /// Re-examines everything waiting for blocks: verifications, certifications, finalizations.
    fn progress<E: Clock>(&mut self, context: &E) {
        let now = Self::now_ms(context);
        for pending in std::mem::take(&mut self.pending_verify) {
            if pending.response.is_closed() {
                continue;
            }
            match self.check_proposal(&pending, now) {
                Some(valid) => {
                    let _ = pending.response.send(valid);
                }
                None => self.pending_verify.push(pending),
            }
        }
        for (payload, response) in std::mem::take(&mut self.pending_certify) {
            if response.is_closed() {
                continue;
            }
            match self.ensure_state(payload) {
                Ok(()) => {
                    let _ = response.send(true);
                }
                Err(true) => {
                    let _ = response.send(false);
                }
                Err(false) => self.pending_certify.push((payload, response)),
            }
        }
        self.finalize();
        if !self.wants.is_empty() {
            self.send_wants(context);
        }
    }

    /// `Some(valid)` once the proposal can be judged, `None` while blocks are missing.
    fn check_proposal(&mut self, pending: &PendingVerify, now_ms: u64) -> Option<bool> {
        let digest = pending.payload;
        let epoch = pending.context.round.epoch().get();
        let parent_digest = hash(&pending.context.parent.1);
        if digest == parent_digest {
            // Only the epoch's last block may be proposed again.
            let Some(height) = self.height_of(&digest) else {
                self.want(digest);
                return None;
            };
            if height != self.finalized.epoch_end(epoch) {
                return Some(false);
            }
            return match self.ensure_state(digest) {
                Ok(()) => Some(true),
                Err(invalid) => invalid.then_some(false),
            };
        }
        if self.invalid.contains(&digest) {
            return Some(false);
        }
        self.claim(&digest);
        let Some(block) = self.blocks.get(&digest).map(|h| &h.block) else {
            self.want(digest);
            return None;
        };
        if block.parent != parent_digest {
            return Some(false);
        }
        // A block belongs to the epoch that orders it.
        if self.finalized.epoch_of(block.height) != epoch {
            return Some(false);
        }
        if block.timestamp_ms > now_ms + MAX_CLOCK_SKEW_MS {
            return Some(false);
        }
        let parent = block.parent;
        let timestamp = block.timestamp_ms;
        match self.ensure_state(parent) {
            Ok(()) => {}
            Err(invalid) => return invalid.then_some(false),
        }
        if self.timestamp_of(&parent).is_some_and(|t| timestamp < t) {
            return Some(false);
        }
        match self.ensure_state(digest) {
            Ok(()) => Some(true),
            Err(invalid) => invalid.then_some(false),
        }
    }

    /// Applies the highest finalization whose chain down to the finalized block is complete;
    /// it finalizes every block on that chain, so lower finalizations are then done too. (After
    /// a restart the engine replays finalizations this node applied long ago: working from the
    /// highest keeps those from holding anything up.)
    fn finalize(&mut self) {
        while let Some(finalization) = self
            .pending_finalizations
            .iter()
            .max_by_key(|f| f.proposal.round)
            .cloned()
        {
            let round = finalization.proposal.round;
            let top = hash(&finalization.proposal.payload);
            let done = top == self.finalized_digest || self.recent.values().any(|(d, _)| *d == top);
            if !done {
                // Collect the chain from the certified block down to our finalized tip.
                let mut chain = Vec::new();
                let mut cursor = top;
                while cursor != self.finalized_digest {
                    let Some(held) = self.blocks.get(&cursor) else {
                        self.want(cursor);
                        return;
                    };
                    if held.block.height <= self.finalized.height {
                        // Below what this node already applied (it advanced by fetching
                        // blocks from peers): nothing left to do for this certificate.
                        chain.clear();
                        break;
                    }
                    let parent = held.block.parent;
                    self.claim(&cursor);
                    chain.push(cursor);
                    cursor = parent;
                }
                let mut applied = false;
                for digest in chain.into_iter().rev() {
                    // The node takes finalized blocks at its own pace: with its queue full,
                    // the rest waits for a later pass (the certificate stays pending).
                    if self.output.capacity() == 0 && !self.output.is_closed() {
                        if applied {
                            self.after_finalization();
                        }
                        return;
                    }
                    if self.ensure_state(digest).is_err() {
                        error!(%digest, "a finalized block does not execute; stopping here");
                        if applied {
                            self.after_finalization();
                        }
                        return;
                    }
                    applied = true;
                    let (state, effects) = self.states.remove(&digest).expect("executed above");
                    let block = self.release(&digest).expect("collected above");
                    let executed = Some((state.clone(), effects));
                    self.finalized = state;
                    self.finalized_digest = digest;
                    self.finalized_timestamp = block.timestamp_ms;
                    if self.finalized.ends_epoch(block.height) {
                        self.epoch_start = digest;
                    }
                    self.recent.insert(block.height, (digest, block.clone()));
                    let certificate = (digest == top).then(|| finalization.clone());
                    debug!(
                        height = block.height,
                        txs = block.txs.len(),
                        age_ms = (SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_millis() as u64)
                            .unwrap_or(0))
                        .saturating_sub(block.timestamp_ms),
                        queued = FINALIZED_OUTPUT - self.output.capacity(),
                        "finalized"
                    );
                    let _ = self.output.try_send(Finalized {
                        block,
                        digest,
                        finalization: certificate,
                        executed,
                    });
                }
                self.after_finalization();
            }
            self.pending_finalizations
                .retain(|f| f.proposal.round > round);
        }
    }

    fn after_finalization(&mut self) {
        let height = self.finalized.height;
        while self
            .recent
            .first_key_value()
            .is_some_and(|(h, _)| *h + RECENT_FINALIZED <= height)
        {
            self.recent.pop_first();
        }
        let stale: Vec<Hash> = self
            .blocks
            .iter()
            .filter(|(_, h)| h.block.height <= height)
            .map(|(d, _)| *d)
            .collect();
        for digest in stale {
            self.release(&digest);
        }
        let blocks = &self.blocks;
        self.states.retain(|digest, _| blocks.contains_key(digest));
        self.invalid.clear();
        self.wants.clear();
        // Whatever is still missing is asked for again by the next pass over pending work.
        self.mempool.prune(&self.finalized);
        self.report_epoch();
    }

    fn send_wants<E: Clock>(&mut self, context: &E) {
        let now = context.current();
        let mut asks = Vec::new();
        for (digest, last) in self.wants.iter_mut() {
            if now.duration_since(*last).unwrap_or_default() >= WANT_RETRY {
                *last = now;
                asks.push(*digest);
            }
        }
        for digest in asks {
            if self.blocks.contains_key(&digest) {
                continue;
            }
            let message = BlockMsg::Want(digest).encode();
            self.sender
                .send(Recipients::All, IoBuf::from(message), false);
        }
        let blocks = &self.blocks;
        self.wants.retain(|digest, _| !blocks.contains_key(digest));
    }

    fn relay_txs(&mut self) {
        if self.relay_queue.is_empty() {
            return;
        }
        let txs = std::mem::take(&mut self.relay_queue);
        for batch in txs.chunks(MAX_TX_BATCH) {
            let message = BlockMsg::Txs(batch.to_vec()).encode();
            self.sender
                .send(Recipients::All, IoBuf::from(message), false);
        }
    }

    fn tick<E: Clock>(&mut self, context: &E) {
        self.relay_txs();
        self.progress(context);
        self.propose_if_due(context);
    }

    fn on_network<E: Clock>(&mut self, context: &E, peer: PublicKey, bytes: IoBuf) {
        let Some(message) = BlockMsg::decode(bytes.as_ref()) else {
            debug!(?peer, "undecodable message on the blocks channel");
            return;
        };
        match message {
            BlockMsg::Proposal(block) | BlockMsg::Have(block) => {
                let height = self.finalized.height;
                debug!(
                    block = block.height,
                    finalized = height,
                    held = self.blocks.len(),
                    "block received"
                );
                if block.height <= height || block.height > height + MAX_BLOCKS_AHEAD {
                    return;
                }
                let encoded = block.encode();
                let digest = Hash::of(&encoded);
                if self.blocks.contains_key(&digest) || self.invalid.contains(&digest) {
                    return;
                }
                // Everything the engine waits for and is missing is in `wants` (verify,
                // certify, finalize and their ancestors all ask there), so a block is wanted
                // exactly when its digest is.
                if self.wants.remove(&digest).is_some() {
                    if self.claimed >= MAX_CLAIMED_BLOCKS {
                        self.refuse(BUDGET_CLAIMED_BLOCKS);
                        // Asked for again after the usual retry delay, not at once.
                        self.wants.insert(digest, context.current());
                        return;
                    }
                    self.hold(digest, block, encoded.len(), Origin::Claimed);
                    self.progress(context);
                } else {
                    // Unasked for (a proposal ahead of the engine's verify, usually): held
                    // within its sender's budget, so a flood displaces only the flooder's.
                    self.make_room(&peer, encoded.len());
                    self.hold(digest, block, encoded.len(), Origin::Unsolicited(peer));
                    if !self.pending_verify.is_empty() || !self.pending_certify.is_empty() {
                        self.progress(context);
                    }
                }
            }
            BlockMsg::Want(digest) => {
                debug!(%digest, found = self.block(&digest).is_some(), "asked for a block");
                if let Some(block) = self.block(&digest) {
                    let message = BlockMsg::Have(block.clone()).encode();
                    self.sender
                        .send(Recipients::One(peer), IoBuf::from(message), false);
                }
            }
            BlockMsg::Txs(mut txs) => {
                // Transactions already verified here (a block carried them first) or already
                // final are not verified again.
                txs.retain(|tx| !self.mempool.known(tx, &self.finalized));
                if txs.is_empty() {
                    return;
                }
                // Verified off this thread; back as `Message::Relayed`.
                if let Err(mpsc::error::TrySendError::Full(_)) = self.relay_verify.try_send(txs) {
                    debug!(?peer, "relay verifier busy; dropping a relayed batch");
                    self.refuse(BUDGET_RELAY_VERIFY);
                }
            }
        }
    }
}

/// The transactions of a relayed batch whose signatures hold (committee transactions pass:
/// the mempool checks their approvals in full).
fn verify_relayed(txs: Vec<Tx>, chain: &Hash) -> Vec<Tx> {
    let signed: Vec<&crate::tx::SignedAccountTx> = txs
        .iter()
        .filter_map(|tx| match tx {
            Tx::Account(signed) => Some(signed),
            Tx::Committee(_) => None,
        })
        .collect();
    let mut valid = crate::tx::signatures_valid(&signed, chain).into_iter();
    drop(signed);
    txs.into_iter()
        .filter(|tx| match tx {
            Tx::Account(_) => valid.next().unwrap_or(false),
            Tx::Committee(_) => true,
        })
        .collect()
}
