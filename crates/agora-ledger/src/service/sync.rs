//! Catching up from peers: [`Ledger::sync_once`] asks peers for their height and fetches what
//! this node lacks, one bounded session per peer ([`MAX_SYNC_RUN_BLOCKS`],
//! [`MAX_SYNC_RUN_BYTES`]); certified blocks wait above the tip within
//! [`MAX_CERTIFIED_PENDING`] until the blocks below them arrive.
//!
//! Sync owns those blocks ([`SyncState`], the ledger's `sync` lock, taken before the tip's);
//! gossip hands its certified blocks to [`Ledger::receive_certified`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use tracing::{debug, warn};

use super::wire::{MAX_BLOCKS_PER_REQUEST, Request, Response};
use super::{
    BUDGET_CERTIFIED_PENDING, BUDGET_SYNC_JUNK, BUDGET_SYNC_RUN, Ledger, MAX_SYNC_RUN_BLOCKS,
    MAX_SYNC_RUN_BYTES, StoredBlock,
};
use crate::block::Block;
use crate::tx::Hash;

/// How often a node compares its height with a peer's when nothing new arrived.
const SYNC_INTERVAL: Duration = Duration::from_secs(2);

/// Certified blocks (gossip announcements, certificate verified) held above the tip while the
/// blocks below them are fetched. Nothing uncertified is ever held here. When full, a lower
/// block displaces the highest one (it is closer to applying); a higher one is refused.
pub const MAX_CERTIFIED_PENDING: usize = 256;

/// Sync's own state (the ledger's `sync` lock; lock order: a session's run, then this, then
/// the tip).
#[derive(Default)]
pub(super) struct SyncState {
    /// Certified blocks above the tip waiting for the blocks below them, by height (at most
    /// [`MAX_CERTIFIED_PENDING`]).
    pending: BTreeMap<u64, Pending>,
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

impl Ledger {
    /// Catches up from peers: asks one for its height and fetches what this node lacks.
    pub(super) async fn sync_loop(ledger: std::sync::Weak<Self>) {
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

    // ---- certified blocks above the tip ----

    /// Blocks held above the tip, waiting for the blocks below them.
    pub fn pending_blocks(&self) -> usize {
        self.sync.lock().unwrap().pending.len()
    }

    /// Drops the held blocks at or below `height`, once the tip reached it (called by `apply`
    /// after it released the tip).
    pub(super) fn drop_pending_through(&self, height: u64) {
        self.sync.lock().unwrap().pending.retain(|h, _| *h > height);
    }

    /// Holds a block whose certificate the caller verified ([`Self::verify_certificate`]) and
    /// applies every run from the tip that is now complete. Returns whether blocks remain
    /// above a gap.
    pub(super) fn receive_certified(
        &self,
        block: Block,
        digest: Hash,
        certificate: Vec<u8>,
    ) -> bool {
        {
            let mut sync = self.sync.lock().unwrap();
            let height = block.height;
            if height > self.height() && !sync.pending.contains_key(&height) {
                if sync.pending.len() >= MAX_CERTIFIED_PENDING {
                    let highest = *sync.pending.keys().next_back().expect("full");
                    if height > highest {
                        drop(sync);
                        self.net.admission().refuse(BUDGET_CERTIFIED_PENDING);
                        return true;
                    }
                    sync.pending.remove(&highest);
                    self.net.admission().refuse(BUDGET_CERTIFIED_PENDING);
                }
                sync.pending.insert(
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
            let mut sync = self.sync.lock().unwrap();
            let (tip, mut parent) = {
                let inner = self.inner.lock().unwrap();
                (inner.state.height, inner.digest)
            };
            // (Normally none: `apply` drops them once it released the tip.)
            sync.pending.retain(|h, _| *h > tip);
            let mut height = tip + 1;
            let mut ready = Vec::new();
            while let Some(p) = sync.pending.get(&height) {
                if p.block.parent != parent {
                    // A certified block that does not link: not our chain (or a fork of more
                    // than f faulty validators); drop it rather than wait on it.
                    warn!(height, "certified block does not link to the tip; dropped");
                    sync.pending.remove(&height);
                    break;
                }
                let p = sync.pending.remove(&height).expect("just seen");
                parent = p.digest;
                height += 1;
                ready.push((p.block, p.digest, Some(p.certificate)));
            }
            (ready, !sync.pending.is_empty())
        };
        if !ready.is_empty()
            && let Err(e) = self.apply(ready, true)
        {
            warn!("cannot apply certified blocks: {e}");
        }
        gap
    }
}
