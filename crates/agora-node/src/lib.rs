//! The Agora daemon.
//!
//! [`run`] opens and locks the data directory, loads the identity, starts the network task
//! ([`agora_net`]), serves the HTTP API ([`api`]) on loopback, writes `api.json` once both are
//! up, and on shutdown closes connections, remembers the peers it was connected to and removes
//! `api.json`. Every long-lived part stops through one [`CancellationToken`].
//!
//! # HTTP API
//! JSON under `/v1`, every request authenticated with `Authorization: Bearer <token>` where the
//! token is in `<data-dir>/api.token`, or with the web dashboard's session cookie plus its CSRF
//! token (see [`dashboard`]). Errors are `{"error": {"code", "message", "hint"?}}`.
//!
//! The same address serves the web dashboard: `/` (the page, or a login page without a
//! session), `/ui/…` (embedded assets), `/login?code=…` (a one-time code from
//! `POST /v1/dashboard/login`, i.e. `agora dashboard`, for a session cookie) and `POST /logout`.
//!
//! | route                  | what                                            |
//! |------------------------|-------------------------------------------------|
//! | `GET /v1/id`           | peer id, listen addresses, agent, NAT status     |
//! | `GET /v1/peers`        | connected peers                                  |
//! | `GET /v1/peers/{id}`   | one connected peer (404 if not connected)        |
//! | `POST /v1/connect`     | `{"target": MULTIADDR or PEER_ID}`               |
//! | `POST /v1/disconnect`  | `{"peer": PEER_ID}`                              |
//! | `GET /v1/status`       | uptime, peers, routing table, bandwidth, storage |
//! | `GET /v1/events`       | server-sent events: network, `chat.*`, `files.*`, `ledger.*`, `grid.*`, `docs.*`, `stats` (see [`live`]) |
//! | `GET /metrics`         | Prometheus text                                  |
//! | `POST /v1/files/share` | `{"path", "pin"?, "copy"?}` → `{"job"}`          |
//! | `POST /v1/files/get`   | `{"target": HASH or TICKET, "out"}` → `{"job"}`  |
//! | `GET /v1/jobs/{id}`    | progress and result of a share or download       |
//! | `GET /v1/jobs`         | jobs started through the API, newest first       |
//! | `GET /v1/files`        | blobs this node holds (`?offset&limit&q&kind` → `{"total", "items"}`, as `/v1/files/page`) |
//! | `POST /v1/files/upload?name=F` | raw body stored under the data dir and shared → `{"job"}` |
//! | `POST /v1/dashboard/login` | a one-time dashboard login code and its URL  |
//! | `GET /v1/search?q=…`   | keyword search across the network                |
//! | `POST /v1/files/unshare`, `POST /v1/files/pin` | `{"hash"}`              |
//! | `GET/POST /v1/chat/profile`, `/v1/chat/contacts`, `/v1/chat/who` | profiles, contacts, presence |
//! | `POST /v1/chat/send`, `GET /v1/chat/messages` | direct messages (long-poll with `wait`) |
//! | `/v1/chat/rooms…`      | join, leave, post, read (long-poll), members     |
//! | `/v1/ledger/…`         | account, balance, pay, history (`?limit&offset`), blocks (`/blocks?limit` recent, with finality), committee |
//! | `/v1/ledger/contracts…` | deploy, call, query, show, events (see `contract_api`) |
//! | `POST /v1/grid/run`    | submit a job → its view                          |
//! | `GET /v1/grid/jobs[/{id}]` | jobs, one job with its units (`?wait=S`)     |
//! | `POST /v1/grid/jobs/{id}/results`, `/cancel` | export results, cancel     |
//! | `GET /v1/grid/workers`, `/v1/grid/worker` | known workers; this worker    |

pub mod api;
mod chat_api;
mod contract_api;
pub mod dashboard;
mod docs_api;
mod grid_api;
mod ledger_api;
pub mod live;
mod metrics;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use agora_net::{KadMode, Multiaddr};
use agora_store::{ApiInfo, DataDir, KnownPeer};
pub use contract_api::{DEFAULT_GAS as DEFAULT_CONTRACT_GAS, parse_contract_account};
pub use tokio_util::sync::CancellationToken;

/// How often the peers we are connected to are written to the database.
const SAVE_PEERS_INTERVAL: Duration = Duration::from_secs(30);
/// How long after a newly identified peer the known peers are saved (batching bursts).
const SAVE_PEERS_DEBOUNCE: Duration = Duration::from_millis(500);
/// How long start-up waits for the network to report its listen addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(10);

/// Everything `agora up` can be told.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub api: SocketAddr,
    /// Bootstrap addresses as given; malformed ones are reported and skipped.
    pub bootstrap: Vec<String>,
    pub external_addrs: Vec<Multiaddr>,
    pub kad_mode: KadMode,
    pub mdns: bool,
    pub upnp: bool,
    pub relay_server: bool,
    /// Security protocols offered on TCP and relayed connections.
    pub security: agora_net::Security,
    pub max_connections: u32,
    /// Replication and storage quota of file sharing.
    pub files: agora_files::service::Config,
    /// Presence, mailbox and retry settings of messaging.
    pub chat: agora_chat::service::Config,
    /// The ledger to follow (and validate), if any.
    pub ledger: Option<LedgerConfig>,
    /// What this node gives to grid computing.
    pub grid: agora_grid::Config,
}

/// Which ledger a node follows: its genesis, and whether this node is one of its validators.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    pub genesis: agora_ledger::Genesis,
    pub validator: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] agora_store::Error),
    #[error("{0}")]
    Network(String),
    #[error("cannot serve the API on {addr}: {source}{hint}", hint = if source.kind() == std::io::ErrorKind::AddrInUse { "; pass another --api (127.0.0.1:0 picks a free port) or stop the other `agora up`" } else { "" })]
    Api {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("file sharing: {0}")]
    Files(#[from] agora_files::FilesError),
    #[error("messaging: {0}")]
    Chat(#[from] agora_chat::service::ChatError),
    #[error("ledger: {0}")]
    Ledger(#[from] agora_ledger::service::LedgerError),
    #[error("grid: {0}")]
    Grid(#[from] agora_grid::GridError),
    #[error("groupware: {0}")]
    Docs(#[from] agora_docs::service::DocsError),
    #[error(
        "the network did not report any listen address within {0:?}; check the --listen addresses"
    )]
    NoListenAddr(Duration),
}

/// State shared by the API handlers.
pub struct Node {
    pub net: agora_net::Handle,
    pub files: Arc<agora_files::Files>,
    pub chat: Arc<agora_chat::service::Chat>,
    pub ledger: Option<Arc<agora_ledger::service::Ledger>>,
    pub grid: Arc<agora_grid::Grid>,
    /// Groupware: spaces and documents.
    pub docs: Arc<agora_docs::service::Docs>,
    pub data_dir: Arc<DataDir>,
    pub token: String,
    pub started: Instant,
    pub metrics: metrics::Metrics,
    pub shutdown: CancellationToken,
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Login codes, sessions and assets of the web dashboard.
    pub dashboard: dashboard::Dashboard,
}

/// Runs a node until `shutdown` is cancelled. Returns once the node has stopped cleanly.
pub async fn run(config: NodeConfig, shutdown: CancellationToken) -> Result<(), Error> {
    let data_dir = Arc::new(DataDir::open(&config.data_dir)?);
    let keypair = data_dir.load_or_create_identity()?;
    let token = data_dir.load_or_create_token()?;
    let db = Arc::new(data_dir.open_db()?);
    let known: Vec<_> = db
        .known_peers()
        .map_err(agora_store::Error::from)?
        .into_iter()
        .map(|p| (p.peer_id, p.addrs))
        .collect();
    if !known.is_empty() {
        tracing::info!(
            count = known.len(),
            "redialing peers known from earlier runs"
        );
    }

    let mut bootstrap = Vec::new();
    for raw in &config.bootstrap {
        match raw.parse::<Multiaddr>() {
            Ok(addr) => bootstrap.push(addr),
            Err(e) => tracing::warn!(
                "ignoring malformed bootstrap address {raw:?}: {e} (expected e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...)"
            ),
        }
    }

    let mut net_config = agora_net::Config::new(config.listen.clone())
        .with_bootstrap(bootstrap)
        .with_known_peers(known)
        .with_kad_mode(config.kad_mode);
    net_config.external_addrs = config.external_addrs.clone();
    net_config.mdns = config.mdns;
    net_config.upnp = config.upnp;
    net_config.relay_server = config.relay_server;
    net_config.security = config.security;
    net_config.max_connections = config.max_connections;

    let mut registry = prometheus_client::registry::Registry::default();
    let (net, event_loop) =
        agora_net::new(keypair.clone(), net_config, &mut registry).map_err(|e| {
            let mut msg = e.to_string();
            if matches!(e, agora_net::BuildError::Listen { .. }) {
                msg.push_str(
                "; pass another --listen (port 0 picks a free one) or stop the other `agora up`",
            );
            }
            Error::Network(msg)
        })?;
    let metrics = metrics::Metrics::new(registry, event_loop.bandwidth());
    // Subscribed before the loop runs, so the first connections (bootstrap) are not missed.
    let mut saver_events = net.events();
    let net_task = tokio::spawn(event_loop.run());

    let listener = tokio::net::TcpListener::bind(config.api)
        .await
        .map_err(|source| Error::Api {
            addr: config.api,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| Error::Api {
        addr: config.api,
        source,
    })?;
    if !api_addr.ip().is_loopback() {
        tracing::warn!(%api_addr, "the API listens on a non-loopback address; anyone who can reach it and has the token controls this node");
    }

    // Ready means: the network listens, so the addresses in `agora id` are real.
    let deadline = Instant::now() + LISTEN_WAIT;
    let info = loop {
        let info = net
            .local_info()
            .await
            .map_err(|e| Error::Network(e.to_string()))?;
        if !info.addrs.is_empty() || config.listen.is_empty() {
            break info;
        }
        if Instant::now() > deadline {
            return Err(Error::NoListenAddr(LISTEN_WAIT));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let files = agora_files::Files::start(
        net.clone(),
        data_dir.path(),
        db.clone(),
        config.files.clone(),
    )?;
    let chat_stop = CancellationToken::new();
    let chat = agora_chat::service::Chat::start(
        net.clone(),
        &keypair,
        db.clone(),
        config.chat.clone(),
        chat_stop.clone(),
    )
    .await?;
    let ledger_stop = CancellationToken::new();
    // Compiled contract modules are cached in the data directory (one engine per process).
    agora_ledger::contract::set_cache_dir(config.data_dir.join("contract-cache"));
    let ledger = match &config.ledger {
        Some(ledger) => Some(
            agora_ledger::service::Ledger::start(
                net.clone(),
                &keypair,
                db.clone(),
                agora_ledger::service::Config {
                    genesis: ledger.genesis.clone(),
                    validator: ledger.validator,
                    consensus_dir: data_dir.path().join("consensus"),
                    app: Default::default(),
                    leader_timeout: Duration::from_secs(1),
                },
                ledger_stop.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let grid_stop = CancellationToken::new();
    let grid = agora_grid::Grid::start(
        net.clone(),
        files.clone(),
        ledger.clone(),
        db.clone(),
        data_dir.path(),
        config.grid.clone(),
        grid_stop.clone(),
    )
    .await?;
    let docs_stop = CancellationToken::new();
    let docs =
        agora_docs::service::Docs::start(net.clone(), &keypair, db.clone(), docs_stop.clone())
            .await?;
    let node = Arc::new(Node {
        net: net.clone(),
        files,
        chat: chat.clone(),
        ledger: ledger.clone(),
        grid,
        docs,
        data_dir: data_dir.clone(),
        token,
        started: Instant::now(),
        metrics,
        shutdown: shutdown.clone(),
        api_addr,
        dashboard: dashboard::Dashboard::new(config.files.storage_quota),
    });
    let notifier = tokio::spawn(tell_assignees(
        node.docs.clone(),
        chat.clone(),
        shutdown.clone(),
    ));
    let live_tasks = live::spawn(&node);
    let app = api::router(node.clone());
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        }
    });

    data_dir.write_api_info(&ApiInfo {
        api: api_addr.to_string(),
        peer_id: info.peer_id.clone(),
        pid: std::process::id(),
        token_file: data_dir.file(agora_store::TOKEN_FILE),
    })?;
    tracing::info!(peer_id = %info.peer_id, api = %api_addr, "agora node ready");
    for addr in &info.addrs {
        tracing::info!("reachable at {addr}");
    }

    // Remember connected peers soon after each new connection (debounced) and every
    // SAVE_PEERS_INTERVAL, so that a kill -9 loses little.
    let saver = tokio::spawn({
        let (net, db, shutdown) = (net.clone(), db.clone(), shutdown.clone());
        async move {
            let mut tick = tokio::time::interval(SAVE_PEERS_INTERVAL);
            tick.tick().await;
            let mut due: Option<tokio::time::Instant> = None;
            loop {
                let debounce = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tick.tick() => {}
                    () = debounce => {}
                    event = saver_events.recv() => {
                        match event {
                            Ok(agora_net::Event::PeerIdentified { .. })
                            | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                due.get_or_insert(tokio::time::Instant::now() + SAVE_PEERS_DEBOUNCE);
                            }
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        }
                        continue;
                    }
                    () = shutdown.cancelled() => return,
                }
                due = None;
                if let Ok(peers) = net.known_peers().await {
                    save_peers(&db, peers).await;
                }
            }
        }
    });

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    data_dir.remove_api_info();
    // Say goodbye while the network still runs, so peers show us offline at once.
    chat.goodbye().await;
    chat_stop.cancel();
    grid_stop.cancel();
    docs_stop.cancel();
    ledger_stop.cancel();
    if let Some(ledger) = &ledger {
        ledger.shutdown().await;
    }
    let _ = saver.await;
    let _ = notifier.await;
    for task in live_tasks {
        let _ = task.await;
    }
    match net.shutdown().await {
        Ok(peers) => save_peers(&db, peers).await,
        Err(e) => tracing::warn!("network did not stop cleanly: {e}"),
    }
    let _ = net_task.await;
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => tracing::warn!("API server error: {e}"),
        Err(_) => tracing::warn!("API connections did not close within 5 s"),
        _ => {}
    }
    tracing::info!("stopped");
    Ok(())
}

/// Tells the assignee of a task assigned on this node, by a direct message, when it is one of
/// this node's contacts (Groove's and Notes' workflow: assigning notifies).
async fn tell_assignees(
    docs: Arc<agora_docs::service::Docs>,
    chat: Arc<agora_chat::service::Chat>,
    shutdown: CancellationToken,
) {
    use agora_docs::service::DocsEvent;
    let mut events = docs.events();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            e = events.recv() => e,
        };
        match event {
            Ok(DocsEvent::TaskAssigned {
                doc,
                title,
                assignee,
                local: true,
                ..
            }) => {
                let Ok(peer) = assignee.parse::<libp2p::PeerId>() else {
                    continue;
                };
                if peer == docs.peer_id() || !chat.contacts().iter().any(|c| c.peer_id == assignee)
                {
                    continue;
                }
                let text = format!("assigned you a task: {title} (agora doc show {doc})");
                if let Err(e) = chat.send(peer, text).await {
                    tracing::debug!(%peer, "could not tell the assignee: {e}");
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            _ => {}
        }
    }
}

async fn save_peers(db: &Arc<agora_store::Db>, peers: Vec<agora_net::KnownPeerAddrs>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let peers: Vec<KnownPeer> = peers
        .into_iter()
        .map(|(peer_id, addrs)| KnownPeer {
            peer_id,
            addrs,
            last_seen: now,
        })
        .collect();
    if peers.is_empty() {
        return;
    }
    let db = db.clone();
    match tokio::task::spawn_blocking(move || db.save_peers(&peers)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("cannot save known peers: {e}"),
        Err(e) => tracing::warn!("cannot save known peers: {e}"),
    }
}
