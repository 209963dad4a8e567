//! The cloneable handle through which the rest of the node uses the network.

use libp2p::{
    Multiaddr, PeerId, StreamProtocol,
    gossipsub::{MessageAcceptance, MessageId},
};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{
    ConnectOutcome, Event, GossipMessage, InboundRequest, KnownPeerAddrs, NodeInfo, PeerInfo, Stats,
};

/// Errors of network operations.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the network task has stopped")]
    Stopped,
    #[error("peer {0} was not found in the network")]
    PeerNotFound(PeerId),
    #[error("dial failed: {0}")]
    Dial(String),
    #[error("invalid address {addr}: {reason}")]
    InvalidAddr { addr: String, reason: String },
    #[error("request failed: {0}")]
    Request(String),
    #[error("refused by the peer: {0}")]
    Refused(String),
    #[error("protocol {0} is not configured on this node")]
    UnknownProtocol(String),
    #[error("gossip: {0}")]
    Gossip(String),
    #[error("DHT: {0}")]
    Dht(String),
}

/// A request to the event loop. Each carries the oneshot on which the reply comes back.
#[derive(Debug)]
pub(crate) enum Command {
    LocalInfo(oneshot::Sender<NodeInfo>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Stats(oneshot::Sender<Stats>),
    KnownPeers(oneshot::Sender<Vec<KnownPeerAddrs>>),
    Dial(Multiaddr, oneshot::Sender<Result<PeerId, Error>>),
    Connect(PeerId, oneshot::Sender<Result<ConnectOutcome, Error>>),
    Disconnect(PeerId, oneshot::Sender<bool>),
    AddAddress(PeerId, Multiaddr),
    Subscribe(
        String,
        mpsc::Sender<GossipMessage>,
        oneshot::Sender<Result<(), Error>>,
    ),
    Unsubscribe(String, oneshot::Sender<bool>),
    TopicPeers(String, oneshot::Sender<Vec<PeerId>>),
    Publish(String, Vec<u8>, oneshot::Sender<Result<MessageId, Error>>),
    Validate(MessageId, PeerId, MessageAcceptance),
    Provide(Vec<u8>, oneshot::Sender<Result<(), Error>>),
    StopProviding(Vec<u8>),
    FindProviders(Vec<u8>, usize, oneshot::Sender<Result<Vec<PeerId>, Error>>),
    ClosestPeers(Vec<u8>, oneshot::Sender<Result<Vec<PeerId>, Error>>),
    /// A request on an application protocol; the reply comes on its `reply`.
    Request(crate::rpc::Outbound),
    /// Close all connections and stop; replies with the peers to remember.
    Shutdown(oneshot::Sender<Vec<KnownPeerAddrs>>),
}

/// Cloneable handle to the network task. All methods are cancel-safe: dropping the future
/// drops the reply, and the event loop ignores a reply nobody waits for.
#[derive(Clone)]
pub struct Handle {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) local_peer_id: PeerId,
    pub(crate) streams: libp2p_stream::Control,
    pub(crate) services: crate::rpc::Services,
    pub(crate) refusals: crate::Refusals,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("local_peer_id", &self.local_peer_id)
            .finish_non_exhaustive()
    }
}

impl Handle {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Subscribes to network events. A subscriber that falls more than
    /// [`EVENT_CAP`](crate::EVENT_CAP) events behind skips the oldest.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub async fn local_info(&self) -> Result<NodeInfo, Error> {
        self.call(Command::LocalInfo).await
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        self.call(Command::Peers).await
    }

    pub async fn stats(&self) -> Result<Stats, Error> {
        self.call(Command::Stats).await
    }

    /// Waits until this node has at least one connection, for at most `timeout`; false if it
    /// has none by then (a node that has just started is still bootstrapping).
    pub async fn wait_for_peers(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.peers().await.is_ok_and(|p| !p.is_empty()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Peers worth remembering across restarts: connected ones with dialable addresses.
    pub async fn known_peers(&self) -> Result<Vec<KnownPeerAddrs>, Error> {
        self.call(Command::KnownPeers).await
    }

    /// Dials an address and waits until the connection is up (or failed).
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, Error> {
        self.call(|tx| Command::Dial(addr, tx)).await?
    }

    /// Connects to a peer by id: at once if already connected, else through the addresses in
    /// the routing table, else after a Kademlia lookup.
    pub async fn connect(&self, peer: PeerId) -> Result<ConnectOutcome, Error> {
        self.call(|tx| Command::Connect(peer, tx)).await?
    }

    /// Closes all connections to `peer`; false if there were none.
    pub async fn disconnect(&self, peer: PeerId) -> Result<bool, Error> {
        self.call(|tx| Command::Disconnect(peer, tx)).await
    }

    /// Tells Kademlia about an address of a peer.
    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), Error> {
        self.commands
            .send(Command::AddAddress(peer, addr))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Subscribes to a gossipsub topic. Every message arrives on `messages` and must be judged
    /// with [`Handle::validate`]; if `messages` is full the message is ignored (not forwarded).
    pub async fn subscribe(
        &self,
        topic: &str,
        messages: mpsc::Sender<GossipMessage>,
    ) -> Result<(), Error> {
        self.call(|tx| Command::Subscribe(topic.to_owned(), messages, tx))
            .await?
    }

    pub async fn unsubscribe(&self, topic: &str) -> Result<bool, Error> {
        self.call(|tx| Command::Unsubscribe(topic.to_owned(), tx))
            .await
    }

    /// Connected peers that told us they are subscribed to `topic`.
    pub async fn topic_peers(&self, topic: &str) -> Result<Vec<PeerId>, Error> {
        self.call(|tx| Command::TopicPeers(topic.to_owned(), tx))
            .await
    }

    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<MessageId, Error> {
        self.call(|tx| Command::Publish(topic.to_owned(), data, tx))
            .await?
    }

    /// The application's verdict on a gossip message: accepted ones are forwarded, rejected
    /// ones lower the forwarding peer's score.
    pub async fn validate(
        &self,
        id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    ) -> Result<(), Error> {
        self.commands
            .send(Command::Validate(id, source, acceptance))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Announces in the DHT that this node provides `key`. The record is stored locally at once
    /// and published to the closest peers in the background; Kademlia republishes it
    /// periodically while the node runs.
    pub async fn provide(&self, key: Vec<u8>) -> Result<(), Error> {
        self.call(|tx| Command::Provide(key, tx)).await?
    }

    pub async fn stop_providing(&self, key: Vec<u8>) -> Result<(), Error> {
        self.commands
            .send(Command::StopProviding(key))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Looks up providers of `key` in the DHT (at most `max`), dialing each one found.
    pub async fn find_providers(&self, key: Vec<u8>, max: usize) -> Result<Vec<PeerId>, Error> {
        self.call(|tx| Command::FindProviders(key, max, tx)).await?
    }

    /// The peers closest to `key` in the DHT's XOR metric (up to the replication factor, 20).
    pub async fn closest_peers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, Error> {
        self.call(|tx| Command::ClosestPeers(key, tx)).await?
    }

    /// Handles inbound requests of an application protocol: each arrives on `requests` as an
    /// [`InboundRequest`] whose `reply` carries the response back. At most
    /// [`MAX_INBOUND_PER_PROTOCOL`](crate::MAX_INBOUND_PER_PROTOCOL) are in flight, and at most
    /// [`MAX_INBOUND_PER_PEER`](crate::MAX_INBOUND_PER_PEER) of one peer; more are refused with
    /// a reason, as are requests arriving while `requests` is full. Fails if the protocol is
    /// served already (and its receiver still open).
    pub fn serve(
        &self,
        protocol: StreamProtocol,
        requests: mpsc::Sender<InboundRequest>,
    ) -> Result<(), Error> {
        self.services.serve(protocol, requests)
    }

    /// Sends a request on an application protocol and waits up to `timeout` for the response.
    /// Dials the peer if needed. A refusal by the peer is [`Error::Refused`] with its reason.
    ///
    /// At most [`MAX_OUTBOUND_PER_PEER`](crate::MAX_OUTBOUND_PER_PEER) requests per peer and
    /// protocol are on the wire at once; more wait their turn, within their own `timeout`.
    /// Cancel-safe: a request whose caller is gone is not sent, or its answer is dropped.
    pub async fn request(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
        data: Vec<u8>,
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>, Error> {
        if data.len() > crate::MAX_FRAME_LEN {
            return Err(Error::Request(format!(
                "request of {} bytes exceeds the limit of {}",
                data.len(),
                crate::MAX_FRAME_LEN
            )));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let call = self.call(|reply| {
            Command::Request(crate::rpc::Outbound {
                peer,
                protocol,
                data,
                deadline,
                reply,
            })
        });
        match tokio::time::timeout_at(deadline, call).await {
            Ok(result) => result?,
            Err(_) => Err(Error::Request(format!("no response within {timeout:?}"))),
        }
    }

    /// The node's refusal counters (`agora_refusals_total{budget}`): every admission budget of
    /// every service counts its refusals here.
    pub fn admission(&self) -> &crate::Refusals {
        &self.refusals
    }

    /// The raw stream control, for protocols that stream (e.g. blob transfer).
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// Closes every connection, stops the event loop and returns the peers to remember.
    pub async fn shutdown(&self) -> Result<Vec<KnownPeerAddrs>, Error> {
        self.call(Command::Shutdown).await
    }
}
