//! The Commonware trait implementations handed to the consensus engine.
//!
//! They run on the engine's runtime, not the node's: every method here is synchronous or
//! awaits only runtime-agnostic futures (a tokio `mpsc` receive, a cancellation token).

use std::{num::NonZeroUsize, sync::Arc, time::SystemTime};

use commonware_actor::{Feedback, Unreliable};
use commonware_p2p::{BlockedSubscription, Message, Recipients};
use commonware_runtime::IoBufs;
use tokio_util::sync::CancellationToken;

use crate::fair::FairQueue;
use crate::{
    PublicKey,
    outbox::{Item, Outbox},
    transport::Shared,
};

/// Sends on one channel. Cheap to clone.
#[derive(Clone)]
pub struct ChannelSender {
    shared: Arc<Shared>,
    channel: u64,
}

impl std::fmt::Debug for ChannelSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSender")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl ChannelSender {
    pub(crate) fn new(shared: Arc<Shared>, channel: u64) -> Self {
        Self { shared, channel }
    }
}

impl commonware_p2p::LimitedSender for ChannelSender {
    type PublicKey = PublicKey;
    type Checked<'a> = Checked;

    /// Never rate-limits, so never fails. `All` means the committee but us; `Some` and `One`
    /// keep only committee members (not us, not blocked peers).
    fn check(&mut self, recipients: Recipients<PublicKey>) -> Result<Checked, SystemTime> {
        Ok(Checked {
            targets: self.shared.targets(recipients),
            shared: self.shared.clone(),
            channel: self.channel,
        })
    }
}

/// A send whose recipients are resolved ([`commonware_p2p::CheckedSender`]).
pub struct Checked {
    shared: Arc<Shared>,
    channel: u64,
    targets: Vec<(PublicKey, Arc<Outbox>)>,
}

impl commonware_p2p::CheckedSender for Checked {
    type PublicKey = PublicKey;

    fn recipients(&self) -> Vec<PublicKey> {
        self.targets.iter().map(|(key, _)| key.clone()).collect()
    }

    /// Queues the message for every recipient and returns at once.
    ///
    /// `Outcome(Ok)`: queued everywhere. `Outcome(Backoff)`: queued, but some outbox was full
    /// and dropped its oldest messages. `Outcome(Closed)`: the transport is shut down.
    /// `Rejected`: the message exceeds `max_message` (the trait allows a panic here; we refuse
    /// and log instead). A recipient that left the committee since the check is skipped, like
    /// an offline one.
    fn send(self, message: impl Into<IoBufs> + Send, priority: bool) -> Unreliable<Feedback> {
        if self.shared.stop.is_cancelled() {
            return Unreliable::new(Feedback::Closed);
        }
        let payload = message.into().coalesce();
        if payload.len() > self.shared.max_message {
            tracing::warn!(
                channel = self.channel,
                len = payload.len(),
                limit = self.shared.max_message,
                "refusing to send a consensus message over the size limit"
            );
            return Unreliable::Rejected;
        }
        let mut feedback = Feedback::Ok;
        for (_, outbox) in &self.targets {
            let item = Item {
                channel: self.channel,
                payload: payload.clone(),
                priority,
            };
            if outbox.push(item) == Feedback::Backoff {
                feedback = Feedback::Backoff;
            }
        }
        Unreliable::new(feedback)
    }
}

/// Why `recv` on a [`ChannelReceiver`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    #[error("the consensus transport was shut down")]
    Closed,
}

/// Receives one channel's messages, each with its authenticated sender.
pub struct ChannelReceiver {
    channel: u64,
    /// Per-sender queues served in turn (see [`FairQueue`]).
    queue: Arc<FairQueue>,
    stop: CancellationToken,
    capacity: NonZeroUsize,
}

impl std::fmt::Debug for ChannelReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelReceiver")
            .field("channel", &self.channel)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl ChannelReceiver {
    pub(crate) fn new(
        channel: u64,
        queue: Arc<FairQueue>,
        stop: CancellationToken,
        capacity: NonZeroUsize,
    ) -> Self {
        Self {
            channel,
            queue,
            stop,
            capacity,
        }
    }
}

impl commonware_p2p::Receiver for ChannelReceiver {
    type Error = RecvError;
    type PublicKey = PublicKey;

    /// The next message, taking senders in turn; [`RecvError::Closed`] once the transport is
    /// shut down (queued messages are then discarded). Cancel-safe.
    async fn recv(&mut self) -> Result<Message<PublicKey>, RecvError> {
        tokio::select! {
            biased;
            () = self.stop.cancelled() => Err(RecvError::Closed),
            message = self.queue.next() => Ok(message),
        }
    }

    /// Messages each sender may have queued; its arrivals beyond that are dropped.
    fn capacity(&self) -> NonZeroUsize {
        self.capacity
    }
}

/// Blocks peers for the life of the transport. Cheap to clone.
#[derive(Clone)]
pub struct Blocker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocker").finish_non_exhaustive()
    }
}

impl Blocker {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl commonware_p2p::Blocker for Blocker {
    type PublicKey = PublicKey;

    /// Closes the peer's consensus streams both ways and refuses its new ones. Its messages
    /// are dropped from then on; its libp2p connection stays (other protocols may use it).
    /// `Closed` after shutdown.
    fn block(&mut self, peer: PublicKey) -> Feedback {
        self.shared.block(peer)
    }

    /// Yields the current blocked set at once, then the whole set after each new block. Ends
    /// when the transport shuts down.
    fn blocked(&mut self) -> BlockedSubscription<PublicKey> {
        self.shared.blocked()
    }
}
