use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

use crate::Security;

/// Kademlia server/client mode selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KadMode {
    /// Server on loopback/private networks; libp2p's automatic mode otherwise.
    #[default]
    Auto,
    Server,
    Client,
}

impl std::str::FromStr for KadMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "server" => Ok(Self::Server),
            "client" => Ok(Self::Client),
            other => Err(format!(
                "unknown kad mode {other:?}: expected auto, server or client"
            )),
        }
    }
}

/// Network configuration. Defaults are safe for a node on a private machine.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<Multiaddr>,
    /// Addresses dialed at start (and added to Kademlia when they carry `/p2p/<id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Peers remembered from earlier runs: added to Kademlia and dialed at start.
    pub known_peers: Vec<(PeerId, Vec<Multiaddr>)>,
    /// Addresses announced as reachable without confirmation (like kubo's `Announce`).
    pub external_addrs: Vec<Multiaddr>,
    pub kad_mode: KadMode,
    pub mdns: bool,
    pub upnp: bool,
    /// Run a circuit relay v2 server for other peers.
    pub relay_server: bool,
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    pub max_pending_incoming: u32,
    /// The swarm refuses new connections above this share of the system's memory.
    pub max_memory_fraction: f64,
    pub idle_connection_timeout: Duration,
    /// Security protocols offered on TCP and relayed connections.
    pub security: Security,
}

impl Config {
    pub fn new(listen: Vec<Multiaddr>) -> Self {
        Self {
            listen,
            bootstrap: Vec::new(),
            known_peers: Vec::new(),
            external_addrs: Vec::new(),
            kad_mode: KadMode::Auto,
            mdns: false,
            upnp: false,
            relay_server: true,
            max_connections: 256,
            max_connections_per_peer: 4,
            max_pending_incoming: 64,
            max_memory_fraction: 0.9,
            idle_connection_timeout: Duration::from_secs(600),
            security: Security::default(),
        }
    }

    pub fn with_bootstrap(mut self, addrs: Vec<Multiaddr>) -> Self {
        self.bootstrap = addrs;
        self
    }

    pub fn with_known_peers(mut self, peers: Vec<(PeerId, Vec<Multiaddr>)>) -> Self {
        self.known_peers = peers;
        self
    }

    pub fn with_kad_mode(mut self, mode: KadMode) -> Self {
        self.kad_mode = mode;
        self
    }
}
