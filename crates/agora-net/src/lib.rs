//! Agora's network core.
//!
//! # Roles
//! One task, the [`EventLoop`], owns the libp2p [`Swarm`](libp2p::Swarm). Everything else in the
//! node talks to it through a cloneable [`Handle`]: each call sends a [`Command`](handle) over a
//! bounded channel and awaits its reply on a oneshot. Network happenings are broadcast as
//! [`Event`]s to whoever subscribed with [`Handle::events`].
//!
//! # Protocols
//! TCP and QUIC transports, TLS 1.3 then Noise on TCP (see [`Security`]), Yamux (with data frames of up to 63 KiB: [`Yamux`]); identify (`/ipfs/id/1.0.0`), ping (`/ipfs/ping/1.0.0`),
//! Kademlia on [`KAD_PROTOCOL`], gossipsub (`/meshsub/1.1.0`, signed messages, every message goes
//! through the application's validation before it is forwarded), AutoNAT, circuit relay v2 (server
//! and client), DCUtR hole punching, connection and memory limits, and one request layer for
//! every application protocol ([`Handle::request`], [`Handle::serve`]: libp2p request-response
//! on [`RPC_PROTOCOL`], length-prefixed byte frames with a size limit checked before
//! allocation, per-peer admission, request ids; see the `rpc` module). Raw libp2p streams
//! ([`Handle::stream_control`]) carry only blob bodies and consensus. mDNS and UPnP exist but
//! are off unless enabled.
//!
//! # Kademlia mode
//! With [`KadMode::Auto`], a node that listens only on loopback, private or link-local addresses
//! serves the DHT (server mode): no external address is ever confirmed there, so libp2p's own
//! automatic mode would leave a local or test network without any DHT server. A node with a
//! public or unspecified listen address uses libp2p's automatic mode (server once AutoNAT or the
//! operator confirms an external address).
//!
//! # Example
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let key = libp2p::identity::Keypair::generate_ed25519();
//! let config = agora_net::Config::new(vec!["/ip4/127.0.0.1/tcp/0".parse()?]);
//! let mut registry = prometheus_client::registry::Registry::default();
//! let (handle, event_loop) = agora_net::new(key, config, &mut registry)?;
//! tokio::spawn(event_loop.run());
//! println!("{:?}", handle.local_info().await?.addrs);
//! # Ok(()) }
//! ```

pub mod admission;
mod bandwidth;
mod behaviour;
mod config;
mod event;
mod event_loop;
mod handle;
mod muxer;
pub mod pool;
mod read_ahead;
mod rpc;
mod security;
mod tls;

pub use admission::Refusals;
pub use bandwidth::Bandwidth;
pub use config::{Config, KadMode};
pub use event::{
    ConnectOutcome, Direction, Event, GossipMessage, InboundRequest, KnownPeerAddrs, NatState,
    NodeInfo, PeerInfo, Reply, Stats,
};
pub use event_loop::EventLoop;
pub use handle::{Error, Handle};
pub use libp2p::{
    Multiaddr, PeerId, StreamProtocol,
    gossipsub::{MessageAcceptance, MessageId},
};
pub use muxer::{Muxer, SPLIT_SEND_SIZE, Yamux};
pub use rpc::{
    MAX_FRAME_LEN, MAX_INBOUND_PER_PEER, MAX_INBOUND_PER_PROTOCOL, MAX_OUTBOUND_PER_PEER,
    MAX_QUEUED_PER_PEER, MAX_REFUSAL_LEN, RPC_PROTOCOL, budget, read_frame, read_frame_with_limit,
    write_frame,
};
pub use security::{Security, SecurityError};
pub use tls::TlsError;

/// The Kademlia protocol id of Agora's DHT.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/kad/1.0.0");
/// Agent version announced over identify.
pub const AGENT_VERSION: &str = concat!("agora/", env!("CARGO_PKG_VERSION"));
/// Protocol version announced over identify.
pub const PROTOCOL_VERSION: &str = "/agora/1.0.0";

/// Capacity of the command channel from handles to the event loop.
pub const COMMAND_CAP: usize = 256;
/// Capacity of the broadcast channel of [`Event`]s; slow subscribers skip events.
pub const EVENT_CAP: usize = 1024;

/// Errors of building the network.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot set up transports: {0}")]
    Transport(String),
    #[error("cannot set up network behaviours: {0}")]
    Behaviour(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
}

/// Builds the swarm, starts listening on the configured addresses and returns the handle and the
/// event loop. The caller spawns [`EventLoop::run`].
///
/// libp2p's protocol metrics (identify, kad, ping, gossipsub, relay, dcutr, swarm) are
/// registered in `registry`.
pub fn new(
    keypair: libp2p::identity::Keypair,
    config: Config,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<(Handle, EventLoop), BuildError> {
    event_loop::build(keypair, config, registry)
}

/// Starts a swarm on `127.0.0.1` (TCP, a port the OS picks) on the current tokio runtime,
/// bootstrapped from `bootstrap`, and waits until it listens. For tests and tools that run
/// several nodes in one process; the metrics go to a registry of its own.
pub async fn start_loopback(
    keypair: libp2p::identity::Keypair,
    bootstrap: Vec<Multiaddr>,
) -> Result<(Handle, Multiaddr), BuildError> {
    start_loopback_secured(keypair, bootstrap, Security::default()).await
}

/// [`start_loopback`] offering the given connection security.
pub async fn start_loopback_secured(
    keypair: libp2p::identity::Keypair,
    bootstrap: Vec<Multiaddr>,
    security: Security,
) -> Result<(Handle, Multiaddr), BuildError> {
    let mut config = Config::new(vec![
        "/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr"),
    ])
    .with_bootstrap(bootstrap)
    .with_kad_mode(KadMode::Auto);
    config.security = security;
    let (net, event_loop) = new(
        keypair,
        config,
        &mut prometheus_client::registry::Registry::default(),
    )?;
    tokio::spawn(event_loop.run());
    loop {
        if let Ok(info) = net.local_info().await
            && let Some(addr) = info.addrs.first().and_then(|a| a.parse().ok())
        {
            return Ok((net, addr));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
