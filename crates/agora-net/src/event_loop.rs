//! The task that owns the swarm.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, autonat,
    core::ConnectedPoint,
    dcutr,
    gossipsub::{self, IdentTopic, MessageAcceptance, TopicHash},
    identify,
    identity::Keypair,
    kad,
    metrics::{Metrics, Recorder, Registry},
    multiaddr::Protocol,
    ping,
    swarm::{
        ConnectionId, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
    tcp,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{
    AGENT_VERSION, Bandwidth, BuildError, COMMAND_CAP, Config, ConnectOutcome, Direction,
    EVENT_CAP, Error, Event, GossipMessage, Handle, KAD_PROTOCOL, KadMode, KnownPeerAddrs,
    NatState, NodeInfo, PROTOCOL_VERSION, PeerInfo, Stats,
    behaviour::{Behaviour, BehaviourEvent},
    handle::Command,
    rpc::Rpc,
    security::{self, Negotiated},
};

/// How long a clean shutdown waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Addresses remembered per peer (identify may announce many).
const MAX_ADDRS_PER_PEER: usize = 8;
/// Protocols remembered per peer.
const MAX_PROTOCOLS_PER_PEER: usize = 64;

#[derive(Debug)]
struct PeerState {
    /// Remote address, direction, security protocol and start of each open connection.
    connections: HashMap<ConnectionId, (Multiaddr, Direction, &'static str, Instant)>,
    agent_version: Option<String>,
    protocols: Vec<String>,
    listen_addrs: Vec<Multiaddr>,
    rtt: Option<Duration>,
}

/// How far a [`Handle::connect`] by peer id has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectStage {
    /// Dialing addresses the swarm already knew (routing table, identify).
    Dialing,
    /// Looking the peer up in the DHT.
    Lookup,
    /// Dialing addresses the DHT lookup returned.
    DhtDialing,
}

type ConnectReply = oneshot::Sender<Result<ConnectOutcome, Error>>;

/// A Kademlia query someone waits for.
enum PendingQuery {
    /// Looking up a peer for [`Handle::connect`].
    Connect(PeerId),
    ClosestPeers(oneshot::Sender<Result<Vec<PeerId>, Error>>),
    Providers {
        reply: oneshot::Sender<Result<Vec<PeerId>, Error>>,
        found: Vec<PeerId>,
        max: usize,
    },
}

/// The network task. Run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    metrics: Metrics,
    bandwidth: Bandwidth,
    peers: HashMap<PeerId, PeerState>,
    dials: HashMap<ConnectionId, oneshot::Sender<Result<PeerId, Error>>>,
    connects: HashMap<PeerId, (ConnectStage, Vec<ConnectReply>)>,
    queries: HashMap<kad::QueryId, PendingQuery>,
    topics: HashMap<TopicHash, mpsc::Sender<GossipMessage>>,
    /// Dials of `--bootstrap` addresses, to warn clearly when one fails.
    bootstrap_dials: HashMap<ConnectionId, Multiaddr>,
    nat: NatState,
    kad_mode: &'static str,
    shutdown: Option<(oneshot::Sender<Vec<KnownPeerAddrs>>, Vec<KnownPeerAddrs>)>,
    /// Peers whose connections were lost (not closed by us), redialed with backoff so that the
    /// network heals after an outage or a partition: when, and how many tries so far.
    redials: HashMap<PeerId, Redial>,
    /// Peers we are disconnecting on purpose (never redialed).
    closing: HashSet<PeerId>,
    /// Application requests, inbound and outbound.
    rpc: Rpc,
    /// The security protocol each new TCP or relayed connection negotiated.
    negotiated: Negotiated,
}

/// A lost peer to dial again: when, how many tries so far, and the addresses it listened on
/// (the routing table may have dropped them after failed dials).
#[derive(Debug, Clone)]
struct Redial {
    at: tokio::time::Instant,
    tries: usize,
    addrs: Vec<Multiaddr>,
}

/// Tries before a lost peer is left to the DHT: about 10 minutes of trying.
const REDIAL_TRIES: usize = 24;

/// Wait before redial number `tries` (0-based): quick at first, then every 30 s.
fn redial_wait(tries: usize) -> Duration {
    match tries {
        0 => Duration::from_secs(1),
        1 => Duration::from_secs(3),
        2 => Duration::from_secs(10),
        3 => Duration::from_secs(20),
        _ => Duration::from_secs(30),
    }
}
/// Most lost peers redialed at once.
const MAX_REDIALS: usize = 64;

pub(crate) fn build(
    keypair: Keypair,
    config: Config,
    registry: &mut Registry,
) -> Result<(Handle, EventLoop), BuildError> {
    let local_peer_id = keypair.public().to_peer_id();
    let refusals = crate::Refusals::default();
    refusals.register(registry);
    let mut bandwidth_registry = Registry::default();
    let negotiated = Negotiated::default();
    let secure = |key: &Keypair| security::Upgrade::new(key, config.security, negotiated.clone());
    let mut swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            secure,
            crate::muxer::Yamux::new,
        )
        .map_err(|e| BuildError::Transport(e.to_string()))?
        .with_quic()
        .with_relay_client(secure, crate::muxer::Yamux::new)
        .map_err(|e| BuildError::Transport(e.to_string()))?
        .with_bandwidth_metrics(&mut bandwidth_registry)
        .with_behaviour(|key, relay_client| {
            Behaviour::new(key, relay_client, &config, &refusals)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .map_err(|e| BuildError::Behaviour(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
        .build();

    let kad_mode = match config.kad_mode {
        KadMode::Server => Some(kad::Mode::Server),
        KadMode::Client => Some(kad::Mode::Client),
        KadMode::Auto if !config.listen.is_empty() && config.listen.iter().all(is_local) => {
            Some(kad::Mode::Server)
        }
        KadMode::Auto => None,
    };
    swarm.behaviour_mut().kad.set_mode(kad_mode);
    let kad_mode = match (config.kad_mode, kad_mode) {
        (KadMode::Auto, Some(_)) => "server (auto: local network)",
        (KadMode::Auto, None) => "auto",
        (_, Some(kad::Mode::Server)) => "server",
        _ => "client",
    };

    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| BuildError::Listen {
                addr: addr.clone(),
                reason: error_chain(&e),
            })?;
    }
    for addr in &config.external_addrs {
        swarm.add_external_address(addr.clone());
    }
    // One dial per peer with every address we have for it, bootstrap addresses first: two
    // dials to one peer would refuse each other (a peer is dialed only while not dialing), and
    // a remembered address may be stale while the bootstrap one is fresh.
    let mut bootstrap_dials = HashMap::new();
    let mut by_peer: Vec<(PeerId, Vec<Multiaddr>, bool)> = Vec::new();
    for addr in &config.bootstrap {
        match peer_id_of(addr) {
            Some(peer) => {
                swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, without_p2p(addr));
                match by_peer.iter_mut().find(|(p, ..)| *p == peer) {
                    Some((_, addrs, _)) => addrs.push(addr.clone()),
                    None => by_peer.push((peer, vec![addr.clone()], true)),
                }
            }
            None => {
                let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
                let id = opts.connection_id();
                match swarm.dial(opts) {
                    Ok(()) => {
                        bootstrap_dials.insert(id, addr.clone());
                    }
                    Err(e) => tracing::warn!(%addr, "cannot dial bootstrap address: {e}"),
                }
            }
        }
    }
    for (peer, addrs) in &config.known_peers {
        for addr in addrs {
            swarm.behaviour_mut().kad.add_address(peer, addr.clone());
        }
        match by_peer.iter_mut().find(|(p, ..)| p == peer) {
            Some((_, known, _)) => known.extend(addrs.iter().cloned()),
            None => by_peer.push((*peer, addrs.clone(), false)),
        }
    }
    // A relay we listen through is dialed by the relay client for its reservation; a second
    // dial from here would make that one fail (and the circuit listener with it).
    let relays: Vec<PeerId> = config
        .listen
        .iter()
        .filter(|a| a.iter().any(|p| matches!(p, Protocol::P2pCircuit)))
        .filter_map(|a| {
            a.iter()
                .take_while(|p| !matches!(p, Protocol::P2pCircuit))
                .filter_map(|p| match p {
                    Protocol::P2p(id) => Some(id),
                    _ => None,
                })
                .last()
        })
        .collect();
    for (peer, addrs, is_bootstrap) in by_peer {
        if relays.contains(&peer) {
            continue;
        }
        let first = addrs.first().cloned();
        let opts = DialOpts::peer_id(peer).addresses(addrs).build();
        let id = opts.connection_id();
        match swarm.dial(opts) {
            Ok(()) => {
                if let (true, Some(addr)) = (is_bootstrap, first) {
                    bootstrap_dials.insert(id, addr);
                }
            }
            Err(e) if is_bootstrap => tracing::warn!(%peer, "cannot dial bootstrap peer: {e}"),
            Err(e) => tracing::debug!(%peer, "cannot redial known peer: {e}"),
        }
    }

    let (command_tx, commands) = mpsc::channel(COMMAND_CAP);
    let (events, _) = broadcast::channel(EVENT_CAP);
    let streams = swarm.behaviour().stream.new_control();
    let services = crate::rpc::Services::default();
    let rpc = Rpc::new(services.clone(), refusals.clone());
    let handle = Handle {
        commands: command_tx,
        events: events.clone(),
        local_peer_id,
        streams,
        services,
        refusals,
    };
    let event_loop = EventLoop {
        swarm,
        commands,
        events,
        metrics: Metrics::new(registry),
        bandwidth: Bandwidth::new(bandwidth_registry),
        peers: HashMap::new(),
        dials: HashMap::new(),
        connects: HashMap::new(),
        queries: HashMap::new(),
        topics: HashMap::new(),
        bootstrap_dials,
        nat: NatState::Unknown,
        kad_mode,
        shutdown: None,
        redials: HashMap::new(),
        closing: HashSet::new(),
        rpc,
        negotiated,
    };
    Ok((handle, event_loop))
}

impl EventLoop {
    /// The bandwidth counters, to be served next to the node's metrics.
    pub fn bandwidth(&self) -> Bandwidth {
        self.bandwidth.clone()
    }

    /// Runs until [`Handle::shutdown`] is called or every handle is dropped.
    pub async fn run(mut self) {
        let mut grace_deadline: Option<tokio::time::Instant> = None;
        loop {
            if let Some(deadline) = grace_deadline
                && (self.peers.is_empty() || tokio::time::Instant::now() >= deadline)
            {
                if let Some((reply, known)) = self.shutdown.take() {
                    let _ = reply.send(known);
                }
                tracing::info!("network stopped");
                return;
            }
            let grace = async {
                match grace_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let next_redial = self.redials.values().map(|r| r.at).min();
            let redial = async {
                match next_redial {
                    Some(at) if grace_deadline.is_none() => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv(), if grace_deadline.is_none() => match command {
                    Some(Command::Shutdown(reply)) => {
                        let known = self.known_peers();
                        let connected: Vec<PeerId> = self.peers.keys().copied().collect();
                        for peer in connected {
                            let _ = self.swarm.disconnect_peer_id(peer);
                        }
                        self.shutdown = Some((reply, known));
                        grace_deadline = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                    }
                    Some(command) => self.on_command(command),
                    None => return,
                },
                (channel, response) = self.rpc.next_reply() => {
                    // No response (the handler dropped the request): dropping the channel
                    // closes the stream.
                    if let Some(response) = response {
                        let _ = self.swarm.behaviour_mut().rpc.send_response(channel, response);
                    }
                }
                () = grace => {}
                () = redial => self.redial_due(),
            }
        }
    }

    /// Redials the lost peers whose time has come.
    fn redial_due(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<PeerId> = self
            .redials
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            let Some(mut r) = self.redials.remove(&peer) else {
                continue;
            };
            if self.swarm.is_connected(&peer) {
                continue;
            }
            tracing::debug!(%peer, tries = r.tries, "redialing a lost peer");
            let opts = DialOpts::peer_id(peer)
                .addresses(r.addrs.clone())
                .extend_addresses_through_behaviour()
                .build();
            let _ = self.swarm.dial(opts);
            r.tries += 1;
            if r.tries < REDIAL_TRIES {
                r.at = now + redial_wait(r.tries);
                self.redials.insert(peer, r);
            }
        }
    }

    /// Schedules redials of a peer whose last connection was lost.
    fn lost(&mut self, peer: PeerId) {
        if self.shutdown.is_some()
            || self.closing.contains(&peer)
            || self.redials.len() >= MAX_REDIALS
            || self.redials.contains_key(&peer)
        {
            return;
        }
        let addrs = self
            .peers
            .get(&peer)
            .map(|s| s.listen_addrs.clone())
            .unwrap_or_default();
        self.redials.insert(
            peer,
            Redial {
                at: tokio::time::Instant::now() + redial_wait(0),
                tries: 0,
                addrs,
            },
        );
    }

    fn emit(&self, event: Event) {
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::LocalInfo(reply) => {
                let _ = reply.send(self.local_info());
            }
            Command::Peers(reply) => {
                let mut peers: Vec<PeerInfo> = self
                    .peers
                    .iter()
                    .map(|(id, state)| peer_info(id, state))
                    .collect();
                peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
                let _ = reply.send(peers);
            }
            Command::Stats(reply) => {
                let (bytes_in, bytes_out) = self.bandwidth.totals();
                let routing_table_size = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .kbuckets()
                    .map(|b| b.num_entries())
                    .sum();
                let _ = reply.send(Stats {
                    connected_peers: self.peers.len(),
                    connections: self.peers.values().map(|p| p.connections.len()).sum(),
                    routing_table_size,
                    bytes_in,
                    bytes_out,
                    gossip_topics: self.topics.len(),
                });
            }
            Command::KnownPeers(reply) => {
                let _ = reply.send(self.known_peers());
            }
            Command::Dial(addr, reply) => self.dial(addr, reply),
            Command::Connect(peer, reply) => self.connect(peer, reply),
            Command::Disconnect(peer, reply) => {
                self.redials.remove(&peer);
                let connected = self.swarm.disconnect_peer_id(peer).is_ok();
                if connected {
                    self.closing.insert(peer);
                }
                let _ = reply.send(connected);
            }
            Command::AddAddress(peer, addr) => {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
            }
            Command::Subscribe(topic, sender, reply) => {
                let topic = IdentTopic::new(topic);
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .subscribe(&topic)
                    .map(|_| {
                        self.topics.insert(topic.hash(), sender);
                    })
                    .map_err(|e| Error::Gossip(e.to_string()));
                let _ = reply.send(result);
            }
            Command::Unsubscribe(topic, reply) => {
                let topic = IdentTopic::new(topic);
                self.topics.remove(&topic.hash());
                let _ = reply.send(self.swarm.behaviour_mut().gossipsub.unsubscribe(&topic));
            }
            Command::TopicPeers(topic, reply) => {
                let hash = IdentTopic::new(topic).hash();
                let peers = self
                    .swarm
                    .behaviour()
                    .gossipsub
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&hash))
                    .map(|(peer, _)| *peer)
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Publish(topic, data, reply) => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(IdentTopic::new(topic), data)
                    .map_err(|e| Error::Gossip(e.to_string()));
                let _ = reply.send(result);
            }
            Command::Validate(id, source, acceptance) => {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            Command::Provide(key, reply) => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(kad::RecordKey::new(&key))
                    .map(|_| ())
                    .map_err(|e| Error::Dht(e.to_string()));
                let _ = reply.send(result);
            }
            Command::StopProviding(key) => {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .stop_providing(&kad::RecordKey::new(&key));
            }
            Command::FindProviders(key, max, reply) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(kad::RecordKey::new(&key));
                self.queries.insert(
                    id,
                    PendingQuery::Providers {
                        reply,
                        found: Vec::new(),
                        max: max.max(1),
                    },
                );
            }
            Command::ClosestPeers(key, reply) => {
                let id = self.swarm.behaviour_mut().kad.get_closest_peers(key);
                self.queries.insert(id, PendingQuery::ClosestPeers(reply));
            }
            Command::Request(outbound) => {
                self.rpc
                    .request(&mut self.swarm.behaviour_mut().rpc, outbound);
            }
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    fn local_info(&self) -> NodeInfo {
        let me = *self.swarm.local_peer_id();
        let with_id = |a: &Multiaddr| a.clone().with_p2p(me).unwrap_or_else(|a| a).to_string();
        NodeInfo {
            peer_id: me.to_string(),
            addrs: self.swarm.listeners().map(with_id).collect(),
            external_addrs: self.swarm.external_addresses().map(with_id).collect(),
            agent_version: AGENT_VERSION.to_owned(),
            protocol_version: PROTOCOL_VERSION.to_owned(),
            nat_status: self.nat,
            kad_mode: self.kad_mode.to_owned(),
        }
    }

    /// Connected peers and the addresses at which they can be dialed again.
    fn known_peers(&self) -> Vec<KnownPeerAddrs> {
        self.peers
            .iter()
            .filter_map(|(peer, state)| {
                let via_local = state.connections.values().any(|(a, ..)| is_local(a));
                let mut addrs: Vec<Multiaddr> = state
                    .listen_addrs
                    .iter()
                    .filter(|a| is_dialable(a, via_local))
                    .cloned()
                    .collect();
                for (addr, direction, ..) in state.connections.values() {
                    if *direction == Direction::Outbound && !addrs.contains(addr) {
                        addrs.push(without_p2p(addr));
                    }
                }
                addrs.truncate(MAX_ADDRS_PER_PEER);
                (!addrs.is_empty()).then_some((*peer, addrs))
            })
            .collect()
    }

    fn dial(&mut self, addr: Multiaddr, reply: oneshot::Sender<Result<PeerId, Error>>) {
        let opts = match peer_id_of(&addr) {
            Some(peer) if self.swarm.is_connected(&peer) => {
                let _ = reply.send(Ok(peer));
                return;
            }
            // An address the user asked for is dialed even while another dial to the peer is
            // under way (e.g. the DHT trying an unreachable private address of it).
            Some(peer) => DialOpts::peer_id(peer)
                .condition(PeerCondition::Always)
                .addresses(vec![addr])
                .build(),
            None => DialOpts::unknown_peer_id().address(addr).build(),
        };
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Dial(e.to_string())));
            }
        }
    }

    fn connect(&mut self, peer: PeerId, reply: ConnectReply) {
        if self.swarm.is_connected(&peer) {
            let _ = reply.send(Ok(ConnectOutcome {
                peer_id: peer.to_string(),
                via: "connected".into(),
                already_connected: true,
            }));
            return;
        }
        if peer == *self.swarm.local_peer_id() {
            let _ = reply.send(Err(Error::Dial("that is this node's own peer id".into())));
            return;
        }
        if let Some((_, waiters)) = self.connects.get_mut(&peer) {
            waiters.push(reply);
            return;
        }
        // First the addresses the swarm's behaviours already know (routing table, identify).
        let stage = match self.swarm.dial(DialOpts::peer_id(peer).build()) {
            Ok(()) => ConnectStage::Dialing,
            Err(_) => {
                self.start_lookup(peer);
                ConnectStage::Lookup
            }
        };
        self.connects.insert(peer, (stage, vec![reply]));
    }

    fn start_lookup(&mut self, peer: PeerId) {
        let query = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
        self.queries.insert(query, PendingQuery::Connect(peer));
    }

    fn finish_connect(&mut self, peer: PeerId, result: Result<ConnectOutcome, Error>) {
        if let Some((_, waiters)) = self.connects.remove(&peer) {
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.record(&event);
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::NewListenAddr { address, .. } => {
                let me = *self.swarm.local_peer_id();
                tracing::info!(
                    "listening on {}",
                    address.clone().with_p2p(me).unwrap_or_else(|a| a)
                );
                self.emit(Event::Listening {
                    addr: address.to_string(),
                });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.emit(Event::ListenerClosed {
                    addr: address.to_string(),
                });
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!("listener error: {}", error_chain(&error));
            }
            SwarmEvent::ListenerClosed {
                addresses,
                reason: Err(error),
                ..
            } => {
                tracing::warn!(?addresses, "stopped listening: {}", error_chain(&error));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let (addr, direction) = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => {
                        (address.clone(), Direction::Outbound)
                    }
                    ConnectedPoint::Listener { send_back_addr, .. } => {
                        (send_back_addr.clone(), Direction::Inbound)
                    }
                };
                tracing::debug!(peer = %peer_id, %addr, ?direction, "connection established");
                let state = self.peers.entry(peer_id).or_insert_with(|| PeerState {
                    connections: HashMap::new(),
                    agent_version: None,
                    protocols: Vec::new(),
                    listen_addrs: Vec::new(),
                    rtt: None,
                });
                let first = state.connections.is_empty();
                // QUIC carries TLS 1.3 inside; TCP and relayed connections ran our upgrade.
                let security = if addr.iter().any(|p| matches!(p, Protocol::QuicV1)) {
                    "quic"
                } else {
                    self.negotiated.take(&peer_id).unwrap_or("unknown")
                };
                tracing::debug!(peer = %peer_id, security, "secured");
                state.connections.insert(
                    connection_id,
                    (addr.clone(), direction, security, Instant::now()),
                );
                if first {
                    self.emit(Event::PeerConnected {
                        peer_id: peer_id.to_string(),
                        addr: addr.to_string(),
                        direction,
                    });
                }
                if let Some(reply) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
                self.bootstrap_dials.remove(&connection_id);
                if let Some((stage, _)) = self.connects.get(&peer_id) {
                    let via = match stage {
                        ConnectStage::Dialing => "dialed",
                        ConnectStage::Lookup | ConnectStage::DhtDialing => "dht",
                    };
                    self.finish_connect(
                        peer_id,
                        Ok(ConnectOutcome {
                            peer_id: peer_id.to_string(),
                            via: via.into(),
                            already_connected: false,
                        }),
                    );
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                if let Some(state) = self.peers.get_mut(&peer_id) {
                    state.connections.remove(&connection_id);
                }
                if num_established == 0 {
                    let identified = self
                        .peers
                        .get(&peer_id)
                        .is_some_and(|s| s.agent_version.is_some());
                    if cause.is_some() && identified && !self.closing.remove(&peer_id) {
                        self.lost(peer_id);
                    }
                    self.closing.remove(&peer_id);
                    self.peers.remove(&peer_id);
                    self.emit(Event::PeerDisconnected {
                        peer_id: peer_id.to_string(),
                    });
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                tracing::debug!(?peer_id, "dial failed: {error}");
                self.emit(Event::DialFailed {
                    peer_id: peer_id.map(|p| p.to_string()),
                    error: error.to_string(),
                });
                if let Some(reply) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Err(Error::Dial(error.to_string())));
                }
                if let Some(addr) = self.bootstrap_dials.remove(&connection_id) {
                    tracing::warn!(
                        "bootstrap peer {addr} is unreachable ({}); running on with the peers known from earlier runs, if any",
                        error_chain(&error)
                    );
                }
                let Some(peer) = peer_id else { return };
                if self.swarm.is_connected(&peer) {
                    return;
                }
                match self.connects.get_mut(&peer) {
                    // The known addresses were stale: ask the DHT.
                    Some((stage @ ConnectStage::Dialing, _)) => {
                        *stage = ConnectStage::Lookup;
                        self.start_lookup(peer);
                    }
                    Some((ConnectStage::DhtDialing, _)) => {
                        self.finish_connect(peer, Err(Error::Dial(error.to_string())));
                    }
                    _ => {}
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!("incoming connection failed: {error}");
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                self.emit(Event::ExternalAddrConfirmed {
                    addr: address.to_string(),
                });
            }
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(event) => {
                self.metrics.record(&event);
                if let identify::Event::Received { peer_id, info, .. } = event {
                    self.on_identify(peer_id, info);
                }
            }
            BehaviourEvent::Ping(event) => {
                self.metrics.record(&event);
                match (event.result, self.peers.get_mut(&event.peer)) {
                    (Ok(rtt), Some(state)) => state.rtt = Some(rtt),
                    // No pong in time: the path is dead (a crash or a partition that sent no
                    // reset). Close it, and try the peer again later.
                    // (libp2p-ping reports from the second failure in a row; the second is
                    // usually the timeout of opening a new ping stream.)
                    (Err(e @ (ping::Failure::Timeout | ping::Failure::Other { .. })), _) => {
                        tracing::debug!(peer = %event.peer, "ping failed ({e}); closing the connection");
                        self.swarm.close_connection(event.connection);
                        self.lost(event.peer);
                    }
                    _ => {}
                }
            }
            BehaviourEvent::Kad(event) => {
                self.metrics.record(&event);
                self.on_kad(event);
            }
            BehaviourEvent::Gossipsub(event) => {
                self.metrics.record(&event);
                if let gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                } = event
                {
                    self.on_gossip(propagation_source, message_id, message);
                }
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. }) => {
                self.nat = match new {
                    autonat::NatStatus::Public(_) => NatState::Public,
                    autonat::NatStatus::Private => NatState::Private,
                    autonat::NatStatus::Unknown => NatState::Unknown,
                };
                tracing::info!(status = ?self.nat, "NAT status changed");
                self.emit(Event::NatStatusChanged { status: self.nat });
            }
            BehaviourEvent::Relay(event) => self.metrics.record(&event),
            BehaviourEvent::Rpc(event) => {
                self.rpc
                    .on_event(&mut self.swarm.behaviour_mut().rpc, event);
            }
            BehaviourEvent::Dcutr(event) => {
                self.metrics.record(&event);
                let dcutr::Event {
                    remote_peer_id,
                    result,
                } = event;
                self.emit(Event::HolePunch {
                    peer_id: remote_peer_id.to_string(),
                    ok: result.is_ok(),
                });
            }
            _ => {}
        }
    }

    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let via_local = state.connections.values().any(|(a, ..)| is_local(a));
        state.agent_version = Some(info.agent_version.clone());
        state.protocols = info
            .protocols
            .iter()
            .take(MAX_PROTOCOLS_PER_PEER)
            .map(|p| p.to_string())
            .collect();
        let mut seen = HashSet::new();
        state.listen_addrs = info
            .listen_addrs
            .into_iter()
            .filter(|a| seen.insert(a.clone()))
            .take(MAX_ADDRS_PER_PEER)
            .collect();
        if info.protocols.contains(&KAD_PROTOCOL) {
            let addrs: Vec<Multiaddr> = state
                .listen_addrs
                .iter()
                .filter(|a| is_dialable(a, via_local))
                .cloned()
                .collect();
            for addr in addrs {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
            }
        }
        self.emit(Event::PeerIdentified {
            peer_id: peer.to_string(),
            agent_version: info.agent_version,
        });
    }

    fn on_kad(&mut self, event: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = event
        else {
            return;
        };
        let Some(pending) = self.queries.remove(&id) else {
            return;
        };
        let finished = match (pending, result) {
            (PendingQuery::Connect(target), kad::QueryResult::GetClosestPeers(result)) => {
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                let found = peers.into_iter().find(|p| p.peer_id == target);
                if found.is_none() && !step.last {
                    self.queries.insert(id, PendingQuery::Connect(target));
                    return;
                }
                self.on_lookup_done(target, found);
                true
            }
            (PendingQuery::ClosestPeers(reply), kad::QueryResult::GetClosestPeers(result)) => {
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                let _ = reply.send(Ok(peers.into_iter().map(|p| p.peer_id).collect()));
                true
            }
            (
                PendingQuery::Providers {
                    reply,
                    mut found,
                    max,
                },
                kad::QueryResult::GetProviders(result),
            ) => {
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
                    let me = *self.swarm.local_peer_id();
                    for peer in providers {
                        if peer == me || found.contains(&peer) {
                            continue;
                        }
                        // Dial now: the query still holds the provider's addresses.
                        if !self.swarm.is_connected(&peer) {
                            let _ = self.swarm.dial(DialOpts::peer_id(peer).build());
                        }
                        found.push(peer);
                    }
                }
                if step.last || found.len() >= max {
                    found.truncate(max);
                    let _ = reply.send(Ok(found));
                    true
                } else {
                    self.queries
                        .insert(id, PendingQuery::Providers { reply, found, max });
                    false
                }
            }
            (pending, _) => {
                // Not the result this query was for (cannot happen); keep waiting.
                self.queries.insert(id, pending);
                false
            }
        };
        if finished && let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            query.finish();
        }
    }

    fn on_lookup_done(&mut self, target: PeerId, found: Option<kad::PeerInfo>) {
        if self.swarm.is_connected(&target) {
            return; // the lookup itself connected; ConnectionEstablished answered
        }
        match found {
            Some(info) if !info.addrs.is_empty() => {
                if let Some((stage, _)) = self.connects.get_mut(&target) {
                    *stage = ConnectStage::DhtDialing;
                }
                let opts = DialOpts::peer_id(target).addresses(info.addrs).build();
                if let Err(e) = self.swarm.dial(opts) {
                    self.finish_connect(target, Err(Error::Dial(e.to_string())));
                }
            }
            _ => self.finish_connect(target, Err(Error::PeerNotFound(target))),
        }
    }

    fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let delivered = match self.topics.get(&message.topic) {
            Some(sender) => sender
                .try_send(GossipMessage {
                    id: id.clone(),
                    source,
                    author: message.source,
                    topic: message.topic,
                    data: message.data,
                })
                .is_ok(),
            None => false,
        };
        if !delivered {
            self.swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(&id, &source, MessageAcceptance::Ignore);
        }
    }
}

fn peer_info(id: &PeerId, state: &PeerState) -> PeerInfo {
    let mut connections: Vec<_> = state.connections.values().collect();
    connections.sort_by_key(|(.., since)| *since);
    let oldest = connections.first();
    PeerInfo {
        peer_id: id.to_string(),
        addrs: connections.iter().map(|(a, ..)| a.to_string()).collect(),
        security: connections
            .iter()
            .map(|(_, _, s, _)| s.to_string())
            .collect(),
        direction: oldest.map(|(_, d, ..)| *d).unwrap_or(Direction::Outbound),
        latency_ms: state.rtt.map(|d| d.as_secs_f64() * 1000.0),
        agent_version: state.agent_version.clone(),
        protocols: state.protocols.clone(),
        listen_addrs: state.listen_addrs.iter().map(|a| a.to_string()).collect(),
        connected_secs: oldest.map(|(.., s)| s.elapsed().as_secs()).unwrap_or(0),
    }
}

/// An error and its sources, `outer: inner: innermost`, skipping empty messages.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !text.is_empty() && !parts.contains(&text) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// The peer id in a trailing `/p2p/<id>`, if any.
pub(crate) fn peer_id_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

fn first_ip(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Loopback, private (RFC 1918, ULA) or link-local: an address no public peer can reach.
pub(crate) fn is_local(addr: &Multiaddr) -> bool {
    match first_ip(addr) {
        Some(IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        Some(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.is_unique_local() || ip.is_unicast_link_local()
        }
        None => false,
    }
}

/// Whether an address a peer announced is worth dialing: never an unspecified IP, and loopback
/// only if we reach the peer over a local network ourselves.
fn is_dialable(addr: &Multiaddr, via_local: bool) -> bool {
    match first_ip(addr) {
        Some(ip) if ip.is_unspecified() => false,
        Some(ip) if ip.is_loopback() => via_local,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn local_addresses() {
        assert!(is_local(&ma("/ip4/127.0.0.1/tcp/1")));
        assert!(is_local(&ma("/ip4/10.1.2.3/udp/1/quic-v1")));
        assert!(is_local(&ma("/ip6/::1/tcp/1")));
        assert!(!is_local(&ma("/ip4/0.0.0.0/tcp/1")));
        assert!(!is_local(&ma("/ip4/8.8.8.8/tcp/1")));
        assert!(!is_local(&ma("/dns4/example.org/tcp/1")));
    }

    #[test]
    fn dialable_addresses() {
        assert!(!is_dialable(&ma("/ip4/0.0.0.0/tcp/1"), true));
        assert!(!is_dialable(&ma("/ip4/127.0.0.1/tcp/1"), false));
        assert!(is_dialable(&ma("/ip4/127.0.0.1/tcp/1"), true));
        assert!(is_dialable(&ma("/ip4/1.2.3.4/tcp/1"), false));
    }

    #[test]
    fn p2p_suffix() {
        let peer = PeerId::random();
        let addr = ma("/ip4/127.0.0.1/tcp/1").with_p2p(peer).unwrap();
        assert_eq!(peer_id_of(&addr), Some(peer));
        assert_eq!(without_p2p(&addr), ma("/ip4/127.0.0.1/tcp/1"));
        assert_eq!(peer_id_of(&ma("/ip4/127.0.0.1/tcp/1")), None);
    }
}
