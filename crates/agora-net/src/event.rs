//! Values the network reports: events, peer and node descriptions.
//!
//! They carry ids and addresses as strings so they serialise the same way everywhere (the HTTP
//! API, server-sent events, the CLI's `--json`).

use libp2p::{
    Multiaddr, PeerId,
    gossipsub::{MessageId, TopicHash},
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Something that happened in the network, broadcast to subscribers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Listening {
        addr: String,
    },
    ListenerClosed {
        addr: String,
    },
    PeerConnected {
        peer_id: String,
        addr: String,
        direction: Direction,
    },
    PeerDisconnected {
        peer_id: String,
    },
    PeerIdentified {
        peer_id: String,
        agent_version: String,
    },
    DialFailed {
        peer_id: Option<String>,
        error: String,
    },
    NatStatusChanged {
        status: NatState,
    },
    ExternalAddrConfirmed {
        addr: String,
    },
    HolePunch {
        peer_id: String,
        ok: bool,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// What AutoNAT concluded about our reachability.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum NatState {
    #[default]
    Unknown,
    Public,
    Private,
}

/// This node as the network sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub peer_id: String,
    /// Listen addresses with `/p2p/<peer id>` appended, ready to give to another node.
    pub addrs: Vec<String>,
    pub external_addrs: Vec<String>,
    pub agent_version: String,
    pub protocol_version: String,
    pub nat_status: NatState,
    pub kad_mode: String,
}

/// A connected peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerInfo {
    pub peer_id: String,
    /// The remote address of each open connection, oldest first.
    pub addrs: Vec<String>,
    /// The security protocol of each open connection, in the order of `addrs`: `tls` or
    /// `noise` (TCP and relayed connections), `quic` (TLS 1.3 inside QUIC).
    #[serde(default)]
    pub security: Vec<String>,
    /// Direction of the first (oldest) open connection.
    pub direction: Direction,
    pub latency_ms: Option<f64>,
    pub agent_version: Option<String>,
    pub protocols: Vec<String>,
    /// Addresses the peer says it listens on (from identify).
    pub listen_addrs: Vec<String>,
    pub connected_secs: u64,
}

/// Counters of the network, for `agora status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub connected_peers: usize,
    pub connections: usize,
    pub routing_table_size: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub gossip_topics: usize,
}

/// Outcome of connecting to a peer by id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectOutcome {
    pub peer_id: String,
    /// `connected` if it already was, `dialed` if the routing table had its address,
    /// `dht` if a Kademlia lookup found it.
    pub via: String,
    pub already_connected: bool,
}

/// A peer and the addresses to reach it, to remember across restarts.
pub type KnownPeerAddrs = (PeerId, Vec<Multiaddr>);

/// A gossipsub message waiting for the application's verdict.
///
/// Call [`Handle::validate`](crate::Handle::validate) with its `id` and `source`; until then it
/// is not forwarded. Unvalidated messages are dropped by gossipsub after a while.
#[derive(Debug, Clone)]
pub struct GossipMessage {
    pub id: MessageId,
    /// The peer that forwarded it to us.
    pub source: PeerId,
    /// The signing author (gossipsub strict mode guarantees the signature).
    pub author: Option<PeerId>,
    pub topic: TopicHash,
    pub data: Vec<u8>,
}

/// A request on an application protocol. Send the response on `reply`, or refuse it with a
/// reason; dropping it sends none (the requester sees a failure).
#[derive(Debug)]
pub struct InboundRequest {
    pub peer: PeerId,
    pub data: Vec<u8>,
    pub reply: Reply,
}

/// Where the response to an [`InboundRequest`] goes.
#[derive(Debug)]
pub struct Reply(pub(crate) oneshot::Sender<Result<Vec<u8>, String>>);

impl Reply {
    /// A reply and the receiver its response arrives on (for tests and in-process callers).
    pub fn channel() -> (Reply, oneshot::Receiver<Result<Vec<u8>, String>>) {
        let (tx, rx) = oneshot::channel();
        (Reply(tx), rx)
    }

    /// Sends the response. Fails (handing it back) when the requester is gone.
    pub fn send(self, response: Vec<u8>) -> Result<(), Vec<u8>> {
        self.0.send(Ok(response)).map_err(|r| r.unwrap_or_default())
    }

    /// Refuses the request: the requester gets [`Error::Refused`](crate::Error::Refused) with
    /// `reason` (cut to [`MAX_REFUSAL_LEN`](crate::MAX_REFUSAL_LEN) bytes).
    pub fn refuse(self, reason: impl Into<String>) {
        let _ = self.0.send(Err(reason.into()));
    }
}
