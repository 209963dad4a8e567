//! The finalized-block gossip topic: validators announce the blocks their engine finalized
//! (taking turns by height), every node validates announcements by their certificate and
//! applies the blocks that follow its tip.

use std::sync::Arc;

use agora_net::GossipMessage;
use libp2p::gossipsub::MessageAcceptance;
use tokio::sync::mpsc;
use tracing::debug;

use super::Ledger;
use super::wire::{self, Announcement, MAX_ANNOUNCED_BLOCK};
use crate::block::Block;
use crate::tx::Hash;

impl Ledger {
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

    pub(super) async fn gossip_loop(
        ledger: std::sync::Weak<Self>,
        mut rx: mpsc::Receiver<GossipMessage>,
    ) {
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
