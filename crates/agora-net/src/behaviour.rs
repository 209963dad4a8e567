//! The composed network behaviour.

use libp2p::{
    autonat, connection_limits, dcutr, gossipsub, identify,
    identity::Keypair,
    kad, mdns, memory_connection_limits, ping, relay, request_response,
    swarm::{NetworkBehaviour, behaviour::toggle::Toggle},
    upnp,
};

use crate::{AGENT_VERSION, BuildError, Config, KAD_PROTOCOL, PROTOCOL_VERSION};

/// Largest gossipsub message, in bytes.
pub const MAX_GOSSIP_LEN: usize = 1024 * 1024;
/// Interval of Kademlia's own periodic bootstrap (it also bootstraps when a peer is added).
const KAD_BOOTSTRAP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub memory: memory_connection_limits::Behaviour,
    pub relay_client: relay::client::Behaviour,
    pub relay: Toggle<relay::Behaviour>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
    pub autonat: autonat::Behaviour,
    pub dcutr: dcutr::Behaviour,
    /// Every application protocol's requests ([`crate::rpc`]).
    pub rpc: request_response::Behaviour<crate::rpc::Codec>,
    /// Raw streams: blob bodies and consensus.
    pub stream: libp2p_stream::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub upnp: Toggle<upnp::tokio::Behaviour>,
}

impl Behaviour {
    pub fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        config: &Config,
        refusals: &crate::Refusals,
    ) -> Result<Self, BuildError> {
        let peer_id = key.public().to_peer_id();

        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_established_per_peer(Some(config.max_connections_per_peer))
            .with_max_pending_incoming(Some(config.max_pending_incoming))
            .with_max_pending_outgoing(Some(config.max_pending_incoming));

        let identify = identify::Behaviour::new(
            identify::Config::new(PROTOCOL_VERSION.to_owned(), key.public())
                .with_agent_version(AGENT_VERSION.to_owned())
                .with_push_listen_addr_updates(true),
        );

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_query_timeout(std::time::Duration::from_secs(30));
        kad_config.set_periodic_bootstrap_interval(Some(KAD_BOOTSTRAP_INTERVAL));
        let kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);

        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(MAX_GOSSIP_LEN)
            .build()
            .map_err(|e| BuildError::Behaviour(format!("gossipsub: {e}")))?;
        let gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
        )
        .map_err(|e| BuildError::Behaviour(format!("gossipsub: {e}")))?;

        let mdns = if config.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                    .map_err(|e| BuildError::Behaviour(format!("mdns: {e}")))?,
            )
        } else {
            None
        };

        Ok(Self {
            limits: connection_limits::Behaviour::new(limits),
            memory: memory_connection_limits::Behaviour::with_max_percentage(
                config.max_memory_fraction,
            ),
            relay_client,
            relay: config
                .relay_server
                .then(|| relay::Behaviour::new(peer_id, relay::Config::default()))
                .into(),
            identify,
            // A connection that misses a pong for 10 s is closed (see the event loop), so a
            // peer that vanished without a word is noticed within about 20 s.
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(std::time::Duration::from_secs(10))
                    .with_timeout(std::time::Duration::from_secs(10)),
            ),
            kad,
            gossipsub,
            autonat: autonat::Behaviour::new(peer_id, autonat::Config::default()),
            dcutr: dcutr::Behaviour::new(peer_id),
            rpc: crate::rpc::behaviour(refusals.clone()),
            stream: libp2p_stream::Behaviour::new(),
            mdns: mdns.into(),
            upnp: config.upnp.then(upnp::tokio::Behaviour::default).into(),
        })
    }
}
