//! Commonware p2p channels over Agora's libp2p swarm.
//!
//! Commonware's simplex consensus engine talks to the network through three traits of
//! `commonware-p2p`: a sender per channel ([`commonware_p2p::LimitedSender`]), a receiver per
//! channel ([`commonware_p2p::Receiver`]) and a [`commonware_p2p::Blocker`]. Commonware ships
//! its own authenticated network for them; Agora validators already share an authenticated
//! libp2p swarm (Noise, the PeerId is the node's ed25519 key), so this crate implements the
//! traits on top of it instead. The validator's consensus key and its libp2p identity are the
//! same ed25519 key: [`peer_id`] and [`public_key`] convert between the two.
//!
//! # Roles
//! [`Transport::start`] runs inside the node's tokio runtime and returns, per configured
//! channel, a ([`ChannelSender`], [`ChannelReceiver`]) pair plus a [`Blocker`]. Those three are
//! handed to the consensus engine, which runs on its own runtime on another thread: their
//! methods never spawn, never block and use only runtime-agnostic primitives (std mutexes,
//! tokio `mpsc` and `Notify`, which need no runtime).
//!
//! * **Outbound.** For every committee member but ourselves there is one outbox (a bounded
//!   queue) and one writer task. A send puts `(channel, payload)` on each recipient's outbox and
//!   returns at once. The writer keeps one stream of [`PROTOCOL`] open to its peer
//!   (`Handle::connect` finds the peer through the routing table or the DHT), writes the queued
//!   messages on it in order, and when the stream breaks opens a new one after a backoff
//!   growing from 100 ms to 2 s. Messages queued meanwhile wait, within the outbox budget.
//! * **Inbound.** One task accepts streams of [`PROTOCOL`]. A stream from a peer outside the
//!   committee, from a blocked peer or from ourselves is dropped at once. Each accepted stream
//!   gets a reader task that hands every frame to its channel's bounded receiver queue, with
//!   the sender's key taken from the authenticated remote PeerId (never from the bytes).
//!
//! # Framing
//! Streams are one-way (the opener writes, the acceptor reads). A frame is agora-net's u32
//! big-endian length prefix followed by the channel as an unsigned LEB128 varint (at most ten
//! bytes) and the payload (the `wire` module). Unlike `agora_net::write_frame`, which closes the
//! stream after one frame, frames follow each other on the same stream.
//!
//! # Limits
//! * A payload is at most [`Config::max_message`] bytes (default 8 MiB). Larger sends are
//!   refused locally (`Unreliable::Rejected`, logged) instead of panicking as the trait allows.
//!   The reader refuses a length prefix above `max_message + 10` before allocating, and closes
//!   the stream on an oversized or malformed frame.
//! * Each peer's outbox holds at most [`Config::queue_per_peer`] messages (default 4096) and
//!   [`MAX_QUEUED_BYTES_PER_PEER`] payload bytes (or one `max_message`, if larger). Over budget
//!   the **oldest** messages are dropped, non-priority ones first; the send then reports
//!   `Feedback::Backoff`. Priority messages jump ahead of non-priority ones.
//! * Each channel's receiver keeps one queue per sender: at most [`Config::queue_per_peer`]
//!   messages and a quarter of [`MAX_QUEUED_BYTES_PER_CHANNEL`] payload bytes each (one
//!   message of any allowed size always fits), [`MAX_QUEUED_BYTES_PER_CHANNEL`] (or one
//!   `max_message`, if larger) for all together; arrivals beyond a budget are dropped (newest
//!   lost). The receiver takes one message from each sender in turn, so a member flooding a
//!   channel with valid-looking messages fills only its own share and delays the others by one
//!   message a round ([`commonware_p2p::Receiver::capacity`] reports the per-sender count).
//! * At most [`MAX_STREAMS_PER_PEER`] inbound streams per peer are read at once; a newer
//!   stream closes the oldest.
//! * Delivery is best effort, as Commonware's traits allow: a message whose write fails goes
//!   back to the front of the outbox for the next stream, but one already handed to the muxer
//!   when the connection dies is lost. Messages from one peer on one priority level arrive in
//!   order, except across a reconnection.
//!
//! # Blocking
//! A block through [`Blocker`] lasts as long as the [`Transport`]: the peer's streams are
//! closed, its new streams refused, nothing more is sent to it. Its libp2p connection is left
//! alone (other Agora protocols may still use it).
//!
//! # Lifetime
//! Dropping the [`Transport`] (or all handles) does not stop it: call
//! [`Transport::shutdown`], after which receivers return [`RecvError::Closed`]. Only one
//! transport per node can accept [`PROTOCOL`] at a time; a transport started right after
//! another one's shutdown waits (retrying) until the old one has let go of it.
//!
//! # Example
//! ```no_run
//! # fn f(net: agora_net::Handle, committee: Vec<agora_consensus_net::PublicKey>) {
//! use agora_consensus_net::{Config, Transport};
//! // Inside the node's tokio runtime:
//! let (transport, mut channels, blocker) =
//!     Transport::start(net, committee, Config::new(vec![0, 1, 2]));
//! let (votes_tx, votes_rx) = channels.remove(&0).unwrap();
//! // ... give the pairs and the blocker to the consensus engine; at the end:
//! transport.shutdown();
//! # }
//! ```

mod channel;
mod fair;
mod outbox;
mod transport;
mod wire;

use commonware_codec::ReadExt as _;
use libp2p::{PeerId, StreamProtocol, multihash::Multihash};

pub use channel::{Blocker, ChannelReceiver, ChannelSender, Checked, RecvError};
pub use transport::Transport;

/// The libp2p protocol of consensus streams.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/consensus/1.0.0");

/// A validator's consensus key, which is also its libp2p identity.
pub type PublicKey = commonware_cryptography::ed25519::PublicKey;

/// Default [`Config::max_message`]: 8 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 8 * 1024 * 1024;
/// Default [`Config::queue_per_peer`].
pub const DEFAULT_QUEUE_PER_PEER: usize = 4096;
/// Payload bytes one peer's outbox holds at most (raised to `max_message` if that is larger),
/// so `queue_per_peer` large messages cannot pile up gigabytes for an unreachable peer.
pub const MAX_QUEUED_BYTES_PER_PEER: usize = 64 * 1024 * 1024;
/// Payload bytes one channel's receiver queue holds at most (raised to `max_message` if that
/// is larger); arrivals beyond it are dropped.
pub const MAX_QUEUED_BYTES_PER_CHANNEL: usize = 64 * 1024 * 1024;
/// Inbound streams read at once from one peer; a newer one closes the oldest. More than one,
/// so a peer's reconnecting writer is not refused while its broken stream is still open here.
pub const MAX_STREAMS_PER_PEER: usize = 4;

/// Transport settings. Safe defaults through [`Config::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The channels to open; each gets a sender and a receiver. Duplicates count once.
    pub channels: Vec<u64>,
    /// Largest payload, in bytes (clamped to what a u32 frame length can carry).
    pub max_message: usize,
    /// Messages each peer's outbox holds, and each channel's receiver queue holds.
    pub queue_per_peer: usize,
}

impl Config {
    pub fn new(channels: Vec<u64>) -> Self {
        Self {
            channels,
            max_message: DEFAULT_MAX_MESSAGE,
            queue_per_peer: DEFAULT_QUEUE_PER_PEER,
        }
    }

    pub fn with_max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    pub fn with_queue_per_peer(mut self, messages: usize) -> Self {
        self.queue_per_peer = messages;
        self
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

/// The libp2p PeerId of a consensus key.
///
/// An ed25519 PeerId is the identity multihash of the protobuf-encoded key (libp2p's
/// peer-ids spec), built here directly so that no curve check can fail.
pub fn peer_id(key: &PublicKey) -> PeerId {
    // protobuf PublicKey { Type = Ed25519 (1), Data = 32 bytes }
    let mut encoded = [0u8; 36];
    encoded[..4].copy_from_slice(&[0x08, 0x01, 0x12, 0x20]);
    encoded[4..].copy_from_slice(key.as_ref());
    const IDENTITY: u64 = 0x00;
    let multihash = Multihash::wrap(IDENTITY, &encoded).expect("36 bytes fit a multihash");
    PeerId::from_multihash(multihash).expect("an inline key of 36 bytes is a valid PeerId")
}

/// The consensus key of a PeerId, if it embeds an ed25519 key.
pub fn public_key(peer: &PeerId) -> Option<PublicKey> {
    let multihash = peer.as_ref();
    if multihash.code() != 0x00 {
        return None; // a hashed (non-inline) key: RSA or similar, never a validator
    }
    let key = libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    let bytes = key.try_into_ed25519().ok()?.to_bytes();
    PublicKey::read(&mut commonware_codec::Copying(&bytes[..])).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_peer_ids_convert_both_ways() {
        for _ in 0..32 {
            let keypair = libp2p::identity::Keypair::generate_ed25519();
            let peer = keypair.public().to_peer_id();
            let key = public_key(&peer).expect("an ed25519 PeerId");
            assert_eq!(
                key.as_ref(),
                keypair.public().try_into_ed25519().unwrap().to_bytes()
            );
            assert_eq!(peer_id(&key), peer);
        }
    }

    #[test]
    fn hashed_peer_ids_have_no_consensus_key() {
        assert_eq!(public_key(&PeerId::random()), None);
    }
}
