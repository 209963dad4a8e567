//! The finalized-block gossip topic: validators announce the blocks their engine finalized
//! (taking turns by height), every node validates announcements by their certificate and
//! applies the blocks that follow its tip. Gossip keeps no state of its own: the certified
//! blocks it receives go to sync ([`Ledger::receive_certified`]), which holds those above the
//! tip.

use std::sync::Arc;

use agora_net::GossipMessage;
use libp2p::gossipsub::MessageAcceptance;
use tokio::sync::mpsc;
use tracing::debug;

use super::wire::{self, Announcement, MAX_ANNOUNCED_BLOCK};
use super::{Ledger, LedgerError};
use crate::block::Block;
use crate::tx::Hash;

/// Finalized-block announcements from gossip waiting to be checked; gossipsub waits for the
/// verdict, so a full queue slows the topic instead of growing.
const GOSSIP_QUEUE: usize = 256;

impl Ledger {
    /// Subscribes to the finalized-block topic and checks its announcements on a task of
    /// their own (at most [`GOSSIP_QUEUE`] waiting).
    pub(super) async fn follow_topic(self: &Arc<Self>) -> Result<(), LedgerError> {
        let (gossip_tx, gossip_rx) = mpsc::channel(GOSSIP_QUEUE);
        self.net
            .subscribe(&self.topic, gossip_tx)
            .await
            .map_err(|e| LedgerError::Validator(format!("cannot subscribe to blocks: {e}")))?;
        tokio::spawn(Self::gossip_loop(Arc::downgrade(self), gossip_rx));
        Ok(())
    }

    /// Whether this validator announces the block at `height`: one validator announces each
    /// block (they take turns by height).
    pub(super) fn announces(&self, height: u64) -> bool {
        let committee = self.committee_peers();
        let index = committee
            .iter()
            .position(|p| *p == self.net.local_peer_id());
        index.is_some_and(|i| height % committee.len() as u64 == i as u64)
    }

    /// Announces a block the own engine finalized, with the block itself when it fits in a
    /// gossip message.
    pub(super) async fn announce(
        &self,
        height: u64,
        digest: Hash,
        certificate: Vec<u8>,
        block_bytes: Vec<u8>,
    ) {
        let announcement = Announcement {
            height,
            digest,
            certificate,
            block: (block_bytes.len() <= MAX_ANNOUNCED_BLOCK).then_some(block_bytes),
        };
        if let Err(e) = self
            .net
            .publish(&self.topic, wire::encode(&announcement))
            .await
        {
            debug!("cannot announce block {height}: {e}");
        }
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
}
