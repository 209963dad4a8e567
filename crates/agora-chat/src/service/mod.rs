//! The messaging service: drives the sans-I/O core ([`crate::proto`]) over the node's libp2p
//! swarm ([`agora_net::Handle`]) and keeps everything that must survive a restart in redb
//! ([`db`]).
//!
//! - Direct messages go over `/agora/chat/1.0.0` when the recipient answers (the network finds
//!   it by peer id through the DHT, through a relay if needed); otherwise they are sealed to
//!   the recipient and stored at the peers closest to its mailbox key
//!   ([`crate::crypto::mailbox_key`]) over `/agora/mailbox/1.0.0`. Unacknowledged messages stay
//!   in the outbox and are re-sent directly when the recipient is seen again.
//! - The mailbox is collected at start and every [`Config::mailbox_check`]; receipts for
//!   messages collected from it travel back the same way (sealed into the sender's mailbox).
//! - Rooms are gossipsub topics; members find each other through DHT provider records on the
//!   room's key and a joiner asks members for history over `/agora/room-history/1.0.0`.
//! - Presence and profiles are exchanged over `/agora/presence/1.0.0` with contacts and room
//!   members only, every [`Config::heartbeat_interval`]; a peer whose connection drops and
//!   that cannot be reached again is shown offline at once, one that stops sending heartbeats
//!   after their expiry (60 s).

pub mod db;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agora_net::{
    Handle, InboundRequest,
    admission::{Rate, RateRefusal, SharedRateLimiter},
};
use libp2p::{StreamProtocol, gossipsub::MessageAcceptance, kad::KBucketKey};
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    crypto::{self, Identity},
    proto::{
        direct::{self, Received, Receiver, Sender},
        mailbox::{self, MailboxStore},
        presence::{Heartbeat, PresenceTable, ProfileBook, short_peer_id},
        room::{self, Inserted, RoomError, RoomHistory},
    },
    wire::{
        DirectMessage, DirectReply, Envelope, FetchRequest, Frame, HistoryRequest, HistoryResponse,
        Letter, MailboxRequest, MailboxResponse, MessageId, PresenceExchange, Profile, Receipt,
        Refusal, Rejection, RoomId, RoomMessage, Status, Timestamp,
    },
};
pub use db::{ChatDb, Contact, DbError, Direction, MessageRecord, MessageState};

pub const CHAT_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/chat/1.0.0");
pub const MAILBOX_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/mailbox/1.0.0");
pub const HISTORY_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/room-history/1.0.0");
pub const PRESENCE_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/presence/1.0.0");

/// How long finding and dialing a peer may take before a message goes to its mailbox.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests of one protocol waiting for its handler.
const REQUEST_QUEUE: usize = 64;
/// How long a DHT lookup for mailbox holders or room members may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Mailbox holders asked when collecting (more than are written to, to survive churn).
const FETCH_HOLDERS: usize = 8;
/// Fetch rounds per holder and collection (each up to 256 envelopes).
const MAX_FETCH_ROUNDS: usize = 64;
/// Room members asked for history on join.
const HISTORY_PEERS: usize = 3;
/// Posts kept on disk per room.
const MAX_STORED_POSTS: usize = 10_000;
/// Presence exchanges in flight at once.
const PRESENCE_FANOUT: usize = 16;
/// How often each room's history is compared with one member's.
const ROOM_SYNC_INTERVAL: Duration = Duration::from_secs(30);
/// How long before a peer without a known profile is asked for it again.
const PROFILE_RETRY: Duration = Duration::from_secs(600);
/// Most messages one inbox or room listing returns.
pub const MAX_LIST: usize = 1000;
/// Longest a long-poll listing waits for something new.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Admission budgets of the messaging service: what one peer (or one author key) may make
/// this node hold or do. Every refusal is counted on `agora_refusals_total` under the name in
/// the matching `REFUSED_*` constant and answered with a reason.
pub mod budget {
    use agora_net::admission::Rate;

    /// Direct messages one peer may send us: 20 a second, in bursts of up to 200.
    pub const DIRECT_MESSAGES: Rate = Rate::new(20.0, 200.0);
    /// Bytes of direct messages one peer may send us: 1 MiB a second, bursts of 8 MiB.
    pub const DIRECT_BYTES: Rate = Rate::new(1024.0 * 1024.0, 8.0 * 1024.0 * 1024.0);
    /// Mailbox requests (store, fetch, ack) one peer may make: 50 a second, bursts of 500.
    pub const MAILBOX_REQUESTS: Rate = Rate::new(50.0, 500.0);
    /// Presence exchanges one peer may start: one every 2 s, bursts of 10.
    pub const PRESENCE_EXCHANGES: Rate = Rate::new(0.5, 10.0);
    /// History requests one peer may make: 2 a second, bursts of 20.
    pub const HISTORY_REQUESTS: Rate = Rate::new(2.0, 20.0);
    /// Peers each of the rate budgets above tracks at once (idle peers are forgotten first).
    pub const MAX_RATE_PEERS: usize = 4096;
    /// Conversations (one per author key) held in memory. An idle one (nothing buffered)
    /// is dropped to make room and resumed from its persisted counter when it writes again.
    pub const MAX_CONVERSATIONS: usize = 4096;
    /// Out-of-order messages held per author until the gap before them fills.
    pub const MAX_BUFFERED_PER_AUTHOR: usize = 32;
    /// Out-of-order messages held for all authors together (each at most 64 KiB).
    pub const MAX_BUFFERED_TOTAL: usize = 1024;
    /// Peers whose last-seen time is remembered; the oldest non-contact is forgotten first.
    pub const MAX_LAST_SEEN: usize = 4096;

    pub const REFUSED_AUTHOR: &str = "chat.direct.author";
    pub const REFUSED_DIRECT_RATE: &str = "chat.direct.peer_rate";
    pub const REFUSED_CONVERSATIONS: &str = "chat.direct.conversations";
    pub const REFUSED_BUFFERED: &str = "chat.direct.buffered";
    pub const REFUSED_MAILBOX_RATE: &str = "chat.mailbox.peer_rate";
    pub const REFUSED_PRESENCE_PEER: &str = "chat.presence.peer";
    pub const REFUSED_PRESENCE_RATE: &str = "chat.presence.peer_rate";
    pub const REFUSED_HISTORY_RATE: &str = "chat.history.peer_rate";
}

/// A request as the chat handlers see it (the reply is sent by [`Chat::serve`]).
struct Request {
    peer: PeerId,
    data: Vec<u8>,
}

/// The per-peer rate budgets of [`budget`].
struct Limits {
    direct: SharedRateLimiter<PeerId>,
    direct_bytes: SharedRateLimiter<PeerId>,
    mailbox: SharedRateLimiter<PeerId>,
    presence: SharedRateLimiter<PeerId>,
    history: SharedRateLimiter<PeerId>,
}

impl Limits {
    fn new(config: &Config) -> Self {
        let limiter = |rate: Rate| SharedRateLimiter::new(rate, budget::MAX_RATE_PEERS);
        Limits {
            direct: limiter(config.direct_rate),
            direct_bytes: limiter(budget::DIRECT_BYTES),
            mailbox: limiter(budget::MAILBOX_REQUESTS),
            presence: limiter(budget::PRESENCE_EXCHANGES),
            history: limiter(budget::HISTORY_REQUESTS),
        }
    }
}

/// Settings of the messaging service.
#[derive(Debug, Clone)]
pub struct Config {
    /// How often presence is exchanged with contacts and room members.
    pub heartbeat_interval: Duration,
    /// How often the offline mailbox is collected (it is also collected at start).
    pub mailbox_check: Duration,
    /// How often unacknowledged messages to reachable peers are re-sent.
    pub retry_interval: Duration,
    /// Holders each offline message is stored at.
    pub mailbox_replicas: usize,
    /// Limits of the envelopes this node holds for others.
    pub mailbox: mailbox::Config,
    /// Direct messages one peer may send us ([`budget::DIRECT_MESSAGES`]).
    pub direct_rate: Rate,
    /// Conversations held in memory ([`budget::MAX_CONVERSATIONS`]).
    pub max_conversations: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            heartbeat_interval: crate::proto::presence::HEARTBEAT_INTERVAL,
            mailbox_check: Duration::from_secs(60),
            retry_interval: Duration::from_secs(15),
            mailbox_replicas: 3,
            mailbox: mailbox::Config::default(),
            direct_rate: budget::DIRECT_MESSAGES,
            max_conversations: budget::MAX_CONVERSATIONS,
        }
    }
}

/// Errors of messaging operations, each with what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Net(#[from] agora_net::Error),
    #[error(transparent)]
    Db(#[from] DbError),
}

fn now() -> Timestamp {
    Timestamp::from_millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

fn hex(id: &MessageId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn room_dht_key(room: &RoomId) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(b"agora-room/1/");
    h.update(room.as_str().as_bytes());
    h.finalize().as_bytes().to_vec()
}

/// Peers sorted by XOR distance to a DHT key, nearest first.
fn by_distance(mut peers: Vec<PeerId>, key: &[u8]) -> Vec<PeerId> {
    let target = KBucketKey::new(key.to_vec());
    peers.sort_by_key(|p| KBucketKey::from(*p).distance(&target));
    peers.dedup();
    peers
}

/// What `send` did with a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendOutcome {
    pub id: String,
    pub to: String,
    pub seq: u64,
    /// `delivered` (receipt received), `stored` (in the recipient's mailbox) or `queued`
    /// (neither yet: kept and retried).
    pub state: MessageState,
    /// Mailbox holders that accepted it.
    pub holders: usize,
    /// Why direct delivery or mailbox holders failed, for the user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A peer as `agora who`, `contacts` and `room members` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    pub peer_id: String,
    pub short_id: String,
    pub nick: Option<String>,
    pub status: Status,
    /// When we last heard from it, ms since the Unix epoch.
    pub last_seen: Option<u64>,
    /// Its name in our contacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    #[serde(default)]
    pub is_contact: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileView {
    pub peer_id: String,
    pub short_id: String,
    pub nick: String,
    pub about: String,
    pub status: Status,
    pub version: u64,
}

impl From<&Profile> for ProfileView {
    fn from(p: &Profile) -> Self {
        Self {
            peer_id: p.peer.to_string(),
            short_id: short_peer_id(&p.peer),
            nick: p.nick.clone(),
            about: p.about.clone(),
            status: p.status,
            version: p.version,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomPost {
    pub n: u64,
    pub room: String,
    pub peer_id: String,
    pub short_id: String,
    pub nick: Option<String>,
    pub seq: u64,
    pub sent_at: u64,
    pub text: String,
    pub mine: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomView {
    pub room: String,
    /// Members we are connected to in the room's gossip topic.
    pub members: usize,
    pub messages: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinOutcome {
    pub room: String,
    pub members: usize,
    /// Posts learnt from members' history.
    pub history: usize,
    /// Posts of the history that did not verify (forged or corrupted), dropped.
    pub rejected: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PostOutcome {
    pub room: String,
    pub seq: u64,
    /// Members the post was sent to directly (gossip then spreads it).
    pub peers: usize,
}

/// One room this node has joined.
struct RoomState {
    history: RoomHistory,
    next_seq: u64,
}

struct State {
    sender: Sender,
    receivers: HashMap<PeerId, Receiver>,
    mailbox: MailboxStore,
    rooms: BTreeMap<RoomId, RoomState>,
    presence: PresenceTable,
    profiles: ProfileBook,
    heartbeat: Heartbeat,
    status: Status,
    contacts: BTreeMap<PeerId, Contact>,
    /// Peers whose connection dropped and that could not be reached since, with when.
    down: HashMap<PeerId, Timestamp>,
    /// When we last heard from each peer (persisted every minute and at shutdown).
    last_seen: HashMap<PeerId, u64>,
    last_seen_dirty: HashSet<PeerId>,
}

impl State {
    fn status_of(&self, peer: &PeerId, now: Timestamp) -> Status {
        let seen = self.presence.last_seen(peer);
        match self.down.get(peer) {
            Some(down) if seen.is_none_or(|s| s <= *down) => Status::Offline,
            _ => self.presence.status(peer, now),
        }
    }

    fn view(&self, peer: &PeerId, now: Timestamp) -> PeerView {
        let contact = self.contacts.get(peer);
        PeerView {
            peer_id: peer.to_string(),
            short_id: short_peer_id(peer),
            nick: self.profiles.get(peer).map(|p| p.nick.clone()),
            status: self.status_of(peer, now),
            last_seen: self.last_seen.get(peer).copied(),
            contact: contact.and_then(|c| c.name.clone()),
            is_contact: contact.is_some(),
        }
    }
}

/// The messaging service of a node.
pub struct Chat {
    net: Handle,
    identity: Identity,
    me: PeerId,
    db: ChatDb,
    config: Config,
    state: Mutex<State>,
    /// Woken whenever a message or post is stored (long-polling listings wait on it).
    changed: Notify,
    stop: CancellationToken,
    /// Deliveries that should finish before the node stops (receipts to mailboxes).
    inflight: tokio_util::task::TaskTracker,
    /// Messages whose receipt was already sent to a mailbox (bounded).
    receipted: Mutex<HashSet<[u8; 16]>>,
    /// When we last asked a peer that wrote to us for its profile.
    profile_asked: Mutex<HashMap<PeerId, std::time::Instant>>,
    limits: Limits,
}

impl Chat {
    /// Loads the persisted state, serves the chat protocols and starts the background tasks
    /// (presence, mailbox collection, retries). They stop when `shutdown` is cancelled; call
    /// [`Chat::goodbye`] first to tell peers this node goes offline.
    pub async fn start(
        net: Handle,
        keypair: &libp2p_identity::Keypair,
        db: Arc<agora_store::Db>,
        config: Config,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, ChatError> {
        let identity = Identity::from_keypair(keypair)
            .map_err(|e| ChatError::BadInput(format!("messaging needs an ed25519 key: {e}")))?;
        let me = identity.peer_id();
        let db = ChatDb::open(db)?;
        let t = now();

        let mut sender = Sender::new(identity.clone(), direct::Config::default());
        for (peer, seq) in db.counters("out/")? {
            if let Ok(peer) = peer.parse() {
                sender.resume(peer, seq);
            }
        }
        for msg in db.outbox()? {
            if let Err(e) = sender.requeue(msg) {
                tracing::warn!("cannot requeue a stored outgoing message: {e}");
            }
        }
        // Conversations are resumed from their persisted counters when their author writes
        // (see `accept_message`), so memory holds only the active ones.
        let receivers = HashMap::new();
        let mut mailbox = MailboxStore::new(me, config.mailbox.clone());
        for env in db.held()? {
            if let Err(e) = mailbox.store(env, t) {
                tracing::debug!("dropping a held envelope at start: {e}");
            }
        }
        db.retain_held_by(&mailbox)?;

        let mut profiles = ProfileBook::default();
        for p in db.profiles()? {
            let _ = profiles.handle(p);
        }
        let status = db
            .setting("status")?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(Status::Online);
        let contacts = db
            .contacts()?
            .into_iter()
            .filter_map(|c| Some((c.peer_id.parse().ok()?, c)))
            .collect();
        let last_seen = db.last_seen()?.into_iter().collect();
        let mut rooms = BTreeMap::new();
        for room in db.rooms()? {
            db.prune_posts(&room, MAX_STORED_POSTS)?;
            let mut history = RoomHistory::new(room.clone(), room::Config::default());
            for (_, m) in db.posts(&room, 0, usize::MAX)? {
                let _ = history.insert(m, t);
            }
            let next_seq = db.own_room_seq(&room)?;
            rooms.insert(room, RoomState { history, next_seq });
        }

        let limits = Limits::new(&config);
        let chat = Arc::new(Self {
            net: net.clone(),
            identity: identity.clone(),
            me,
            db,
            config,
            state: Mutex::new(State {
                sender,
                receivers,
                mailbox,
                rooms,
                presence: PresenceTable::default(),
                profiles,
                heartbeat: Heartbeat::new(identity),
                status,
                contacts,
                down: HashMap::new(),
                last_seen,
                last_seen_dirty: HashSet::new(),
            }),
            changed: Notify::new(),
            stop: shutdown,
            inflight: tokio_util::task::TaskTracker::new(),
            receipted: Mutex::new(HashSet::new()),
            profile_asked: Mutex::new(HashMap::new()),
            limits,
        });
        // Held messages from before the restart still need delivering, and their buffered
        // successors re-checking.
        let buffered = chat.db.buffered()?;
        for msg in buffered {
            let via = "direct";
            let _ = chat.accept_message(msg, via);
        }

        chat.serve(CHAT_PROTOCOL, |chat, req| chat.on_direct(req))?;
        chat.serve(MAILBOX_PROTOCOL, |chat, req| chat.on_mailbox(req))?;
        chat.serve(HISTORY_PROTOCOL, |chat, req| chat.on_history(req))?;
        chat.serve(PRESENCE_PROTOCOL, |chat, req| chat.on_presence(req))?;

        let rooms: Vec<RoomId> = chat.state.lock().unwrap().rooms.keys().cloned().collect();
        for room in rooms {
            chat.subscribe_room(&room).await?;
            let chat = chat.clone();
            tokio::spawn(async move {
                chat.wait_for_peers().await;
                chat.discover_room(&room).await;
            });
        }
        chat.spawn_tasks();
        Ok(chat)
    }

    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    /// A peer's nickname (if we know its profile) and short id, for listings.
    pub fn names(&self, peer: &str) -> (Option<String>, String) {
        let Ok(peer) = peer.parse::<PeerId>() else {
            return (None, peer.to_owned());
        };
        let nick = self
            .state
            .lock()
            .unwrap()
            .profiles
            .get(&peer)
            .map(|p| p.nick.clone());
        (nick, short_peer_id(&peer))
    }

    /// Serves `protocol`: requests are handled one at a time per protocol, each on a
    /// blocking thread (handlers take the state lock and commit to redb with fsync, which must
    /// not stall the async workers). A handler's `Err` is a refusal, sent with its reason.
    fn serve(
        self: &Arc<Self>,
        protocol: StreamProtocol,
        handle: fn(&Arc<Self>, &Request) -> Result<Vec<u8>, String>,
    ) -> Result<(), ChatError> {
        let (tx, mut rx) = mpsc::channel::<InboundRequest>(REQUEST_QUEUE);
        self.net.serve(protocol, tx)?;
        let chat = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(InboundRequest { peer, data, reply }) = rx.recv().await {
                let Some(chat) = chat.upgrade() else { return };
                let request = Request { peer, data };
                match tokio::task::spawn_blocking(move || handle(&chat, &request)).await {
                    Ok(Ok(response)) => {
                        let _ = reply.send(response);
                    }
                    Ok(Err(reason)) => reply.refuse(reason),
                    Err(e) => tracing::error!("a chat request handler failed: {e}"),
                }
            }
        });
        Ok(())
    }

    /// Takes `cost` from `peer`'s budget in `limiter`, counting a refusal as `name`.
    fn admit(
        &self,
        limiter: &SharedRateLimiter<PeerId>,
        peer: PeerId,
        cost: f64,
        name: &'static str,
    ) -> Result<(), String> {
        limiter.check(&peer, cost).map_err(|refusal| {
            self.net.admission().refuse(name);
            match refusal {
                RateRefusal::Exhausted => format!("{name}: too many requests; retry later"),
                RateRefusal::TooManyKeys => format!("{name}: too many peers at once; retry later"),
            }
        })
    }

    fn spawn_tasks(self: &Arc<Self>) {
        // Presence heartbeats.
        let chat = self.clone();
        tokio::spawn(async move {
            chat.wait_for_peers().await;
            let mut tick = tokio::time::interval(chat.config.heartbeat_interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => chat.beat_all().await,
                    () = chat.stop.cancelled() => return,
                }
            }
        });
        // Mailbox collection: at start, then periodically.
        let chat = self.clone();
        tokio::spawn(async move {
            chat.wait_for_peers().await;
            let mut tick = tokio::time::interval(chat.config.mailbox_check);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let n = chat.collect_mailbox().await;
                        if n > 0 {
                            tracing::info!(count = n, "collected messages from the offline mailbox");
                        }
                    }
                    () = chat.stop.cancelled() => return,
                }
            }
        });
        // Retries of unacknowledged messages and housekeeping.
        let chat = self.clone();
        tokio::spawn(async move {
            let mut retry = tokio::time::interval(chat.config.retry_interval);
            let mut house = tokio::time::interval(Duration::from_secs(5));
            let mut flush = tokio::time::interval(Duration::from_secs(60));
            let mut sync = tokio::time::interval(ROOM_SYNC_INTERVAL);
            let mut turn = 0usize;
            loop {
                tokio::select! {
                    _ = retry.tick() => chat.retry_pending(None).await,
                    _ = sync.tick() => {
                        turn = turn.wrapping_add(2);
                        chat.sync_rooms_round(turn).await;
                    }
                    _ = house.tick() => chat.housekeeping(),
                    _ = flush.tick() => chat.flush_last_seen(),
                    () = chat.stop.cancelled() => { chat.flush_last_seen(); return }
                }
            }
        });
        // Connection events: a peer that disconnects and cannot be reached again is offline;
        // a peer that connects may have messages waiting for it.
        let chat = self.clone();
        let mut events = self.net.events();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    e = events.recv() => e,
                    () = chat.stop.cancelled() => return,
                };
                match event {
                    Ok(agora_net::Event::PeerDisconnected { peer_id }) => {
                        let Ok(peer) = peer_id.parse::<PeerId>() else {
                            continue;
                        };
                        let online = {
                            let st = chat.state.lock().unwrap();
                            st.status_of(&peer, now()) != Status::Offline
                        };
                        if online {
                            let chat = chat.clone();
                            tokio::spawn(async move { chat.probe(peer).await });
                        }
                    }
                    Ok(agora_net::Event::PeerIdentified { peer_id, .. }) => {
                        let Ok(peer) = peer_id.parse::<PeerId>() else {
                            continue;
                        };
                        // A (re)connected room member may hold posts we missed.
                        let syncer = chat.clone();
                        tokio::spawn(async move { syncer.sync_with(peer).await });
                        let pending = chat
                            .state
                            .lock()
                            .unwrap()
                            .sender
                            .pending(&peer)
                            .next()
                            .is_some();
                        if pending {
                            let chat = chat.clone();
                            tokio::spawn(async move { chat.retry_pending(Some(peer)).await });
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Waits (bounded) until the node has at least one connection, so that start-up work
    /// (mailbox collection, presence) has a network to talk to.
    async fn wait_for_peers(&self) {
        tokio::select! {
            _ = self.net.wait_for_peers(Duration::from_secs(10)) => {}
            () = self.stop.cancelled() => {}
        }
    }

    fn housekeeping(&self) {
        let t = now();
        let mut st = self.state.lock().unwrap();
        st.presence.expire(t);
        let mut late = Vec::new();
        for rx in st.receivers.values_mut() {
            if rx.poll_timeout().is_some_and(|at| at <= t) {
                late.extend(rx.handle_timeout(t));
            }
        }
        if st.mailbox.expire(t) > 0
            && let Err(e) = self.db.retain_held_by(&st.mailbox)
        {
            tracing::warn!("{e}");
        }
        for room in st.rooms.values_mut() {
            room.history.expire(t);
        }
        // Messages whose gap timed out are shown now, in order.
        let mut by_peer: BTreeMap<PeerId, Vec<DirectMessage>> = BTreeMap::new();
        for m in late {
            by_peer.entry(m.from).or_default().push(m);
        }
        for (peer, msgs) in by_peer {
            let next = st.receivers.get(&peer).map_or(0, |r| r.next_seq());
            self.store_received(peer, next, msgs, "direct");
        }
    }

    fn flush_last_seen(&self) {
        let seen: Vec<(PeerId, u64)> = {
            let mut st = self.state.lock().unwrap();
            let dirty: Vec<PeerId> = st.last_seen_dirty.drain().collect();
            dirty
                .into_iter()
                .filter_map(|p| st.last_seen.get(&p).map(|t| (p, *t)))
                .collect()
        };
        if let Err(e) = self.db.put_last_seen(&seen) {
            tracing::warn!("{e}");
        }
    }

    // ---------------------------------------------------------------- direct messages

    /// Resolves a peer id or a contact name.
    pub fn resolve_peer(&self, target: &str) -> Result<PeerId, ChatError> {
        if let Ok(peer) = target.parse::<PeerId>() {
            return Ok(peer);
        }
        let st = self.state.lock().unwrap();
        let matches: Vec<PeerId> = st
            .contacts
            .iter()
            .filter(|(_, c)| c.name.as_deref() == Some(target))
            .map(|(p, _)| *p)
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(ChatError::BadInput(format!(
                "{target:?} is neither a peer id nor the name of a contact (see `agora contacts`)"
            ))),
            _ => Err(ChatError::BadInput(format!(
                "several contacts are named {target:?}; use the peer id"
            ))),
        }
    }

    /// Sends a direct message: delivered at once if the peer answers, else stored in its
    /// offline mailbox, else queued and retried.
    pub async fn send(&self, to: PeerId, text: String) -> Result<SendOutcome, ChatError> {
        let t = now();
        let msg = {
            let mut st = self.state.lock().unwrap();
            let id = MessageId::random(&mut rand::rng());
            let msg = st.sender.send(to, id, text, t).map_err(|e| match e {
                direct::SendError::UnknownPeer(e) => ChatError::BadInput(format!(
                    "cannot message {to}: {e} (Agora peer ids start with 12D3KooW)"
                )),
                e => ChatError::BadInput(e.to_string()),
            })?;
            let rec = MessageRecord {
                n: 0,
                id: hex(&msg.id),
                direction: Direction::Out,
                peer_id: to.to_string(),
                seq: msg.seq,
                sent_at: t.as_millis(),
                received_at: t.as_millis(),
                text: msg.body.clone(),
                state: MessageState::Queued,
                via: None,
                delivered_at: None,
            };
            self.db.sent(&msg, rec)?;
            msg
        };
        self.changed.notify_waiters();
        let mut outcome = SendOutcome {
            id: hex(&msg.id),
            to: to.to_string(),
            seq: msg.seq,
            state: MessageState::Queued,
            holders: 0,
            notes: Vec::new(),
        };
        match self.deliver_direct(&msg).await {
            Ok(receipt) => {
                self.on_receipt(&receipt);
                outcome.state = MessageState::Delivered;
                return Ok(outcome);
            }
            Err(e) => outcome.notes.push(format!("not delivered directly: {e}")),
        }
        let letter = Letter::Message(msg.clone());
        let sealed = Envelope::seal(&self.identity, &letter, now(), &mut rand::rng());
        let envelope = sealed.map_err(|e| ChatError::BadInput(e.to_string()))?;
        let (stored, notes) = self.store_in_mailbox(envelope).await;
        outcome.notes.extend(notes);
        outcome.holders = stored;
        if stored > 0 {
            outcome.state = MessageState::Stored;
            self.db.set_state(&msg.id, MessageState::Stored, None)?;
            self.changed.notify_waiters();
        }
        Ok(outcome)
    }

    async fn deliver_direct(&self, msg: &DirectMessage) -> Result<Receipt, String> {
        let peer = msg.to;
        match tokio::time::timeout(CONNECT_TIMEOUT, self.net.connect(peer)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("{peer} is not reachable ({e})")),
            Err(_) => return Err(format!("{peer} was not found within {CONNECT_TIMEOUT:?}")),
        }
        let bytes = msg.encode().map_err(|e| e.to_string())?;
        let response = self
            .net
            .request(peer, CHAT_PROTOCOL, bytes, REQUEST_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        match DirectReply::decode(&response).map_err(|e| format!("bad reply: {e}"))? {
            DirectReply::Delivered(r) if r.message_id == msg.id && r.recipient == peer => Ok(r),
            DirectReply::Delivered(_) => Err("the reply acknowledges another message".into()),
            DirectReply::Rejected(Rejection::TryLater) => {
                Err("the recipient is busy; it will be retried".into())
            }
            DirectReply::Rejected(r) => Err(format!("the recipient refused it ({r:?})")),
        }
    }

    fn on_receipt(&self, receipt: &Receipt) {
        let resolved = self.state.lock().unwrap().sender.handle_receipt(receipt);
        match resolved {
            Ok(msg) => {
                let at = receipt.received_at.as_millis();
                if let Err(e) = self
                    .db
                    .set_state(&msg.id, MessageState::Delivered, Some(at))
                {
                    tracing::warn!("{e}");
                }
                self.changed.notify_waiters();
            }
            Err(direct::ReceiptError::Unknown { .. }) => {}
            Err(e) => tracing::debug!("ignoring a receipt: {e}"),
        }
    }

    /// Re-sends unacknowledged messages to `only` or to every peer we are connected to.
    async fn retry_pending(&self, only: Option<PeerId>) {
        let connected: HashSet<PeerId> = match self.net.peers().await {
            Ok(p) => p.iter().filter_map(|p| p.peer_id.parse().ok()).collect(),
            Err(_) => return,
        };
        let work: Vec<(PeerId, Vec<DirectMessage>)> = {
            let st = self.state.lock().unwrap();
            let peers: Vec<PeerId> = st.sender.peers_with_pending().copied().collect();
            peers
                .into_iter()
                .filter(|p| only.is_none_or(|o| o == *p) && connected.contains(p))
                .map(|p| (p, st.sender.pending(&p).cloned().collect()))
                .collect()
        };
        for (_, msgs) in work {
            for msg in msgs {
                match self.deliver_direct(&msg).await {
                    Ok(r) => self.on_receipt(&r),
                    Err(e) => {
                        tracing::debug!("retry of {} failed: {e}", hex(&msg.id));
                        break;
                    }
                }
            }
        }
    }

    fn on_direct(self: &Arc<Self>, req: &Request) -> Result<Vec<u8>, String> {
        self.admit(
            &self.limits.direct,
            req.peer,
            1.0,
            budget::REFUSED_DIRECT_RATE,
        )?;
        self.admit(
            &self.limits.direct_bytes,
            req.peer,
            req.data.len() as f64,
            budget::REFUSED_DIRECT_RATE,
        )?;
        let reply = match DirectMessage::decode(&req.data) {
            // The direct protocol carries only the sender's own messages (relayed ones come
            // through mailboxes): a message from any other author would let one connection
            // open conversations for any number of throwaway keys.
            Ok(msg) if msg.from != req.peer => {
                self.net.admission().refuse(budget::REFUSED_AUTHOR);
                return Err(format!(
                    "{}: a direct message must be written by the peer that sends it",
                    budget::REFUSED_AUTHOR
                ));
            }
            Ok(msg) => match self.accept_message(msg, "direct") {
                Ok(receipt) => {
                    self.learn_profile(receipt.sender);
                    DirectReply::Delivered(receipt)
                }
                Err(r) => DirectReply::Rejected(r),
            },
            Err(e) => {
                tracing::debug!(peer = %req.peer, "malformed direct message: {e}");
                DirectReply::Rejected(Rejection::Invalid)
            }
        };
        Ok(reply.encode().unwrap_or_default())
    }

    /// Runs a received message through its conversation; stores what becomes deliverable
    /// before the receipt is handed out.
    fn accept_message(&self, msg: DirectMessage, via: &str) -> Result<Receipt, Rejection> {
        let t = now();
        let mut st = self.state.lock().unwrap();
        if msg.to != self.me {
            return Err(Rejection::NotForUs);
        }
        let from = msg.from;
        if !st.receivers.contains_key(&from) {
            let max = self.config.max_conversations;
            if st.receivers.len() >= max {
                // Idle conversations resume from their persisted counter when they write again.
                st.receivers.retain(|_, rx| rx.buffered() > 0);
            }
            if st.receivers.len() >= max {
                self.net.admission().refuse(budget::REFUSED_CONVERSATIONS);
                return Err(Rejection::TryLater);
            }
            let next = self.db.in_counter(&from).map_err(|e| {
                tracing::warn!("{e}");
                Rejection::TryLater
            })?;
            let config =
                direct::Config::default().with_max_buffered(budget::MAX_BUFFERED_PER_AUTHOR);
            let rx = Receiver::resume(self.identity.clone(), from, next, config);
            st.receivers.insert(from, rx);
        }
        let would_buffer = st.receivers[&from].next_seq() < msg.seq;
        if would_buffer {
            let held: usize = st.receivers.values().map(Receiver::buffered).sum();
            if held >= budget::MAX_BUFFERED_TOTAL {
                self.net.admission().refuse(budget::REFUSED_BUFFERED);
                return Err(Rejection::TryLater);
            }
        }
        let rx = st.receivers.get_mut(&from).expect("inserted above");
        let result = rx.handle_message(msg.clone(), t).map_err(|e| {
            tracing::debug!(%from, "dropped a direct message: {e}");
            e.rejection()
        })?;
        let next = rx.next_seq();
        match &result {
            Received::Delivered { messages, .. } => {
                if !self.store_received(from, next, messages.clone(), via) {
                    return Err(Rejection::TryLater);
                }
            }
            Received::Buffered { .. } => {
                if let Err(e) = self.db.buffer(&msg) {
                    tracing::warn!("{e}");
                    return Err(Rejection::TryLater);
                }
            }
            Received::Duplicate { .. } => {}
        }
        drop(st);
        Ok(result.receipt().clone())
    }

    /// Asks a peer that wrote to us for its profile if we do not know it, so that listings
    /// can show its nickname.
    fn learn_profile(self: &Arc<Self>, peer: PeerId) {
        if self.state.lock().unwrap().profiles.get(&peer).is_some() {
            return;
        }
        // At most one attempt per peer every PROFILE_RETRY (a peer may have no profile).
        {
            let mut asked = self.profile_asked.lock().unwrap();
            let now = std::time::Instant::now();
            if asked
                .get(&peer)
                .is_some_and(|at| now.duration_since(*at) < PROFILE_RETRY)
            {
                return;
            }
            if asked.len() >= 4096 {
                asked.retain(|_, at| now.duration_since(*at) < PROFILE_RETRY);
            }
            asked.insert(peer, now);
        }
        let chat = self.clone();
        tokio::spawn(async move {
            for delay in [0, 1, 3] {
                tokio::time::sleep(Duration::from_secs(delay)).await;
                match chat.exchange_one(peer).await {
                    Ok(()) => return,
                    Err(e) => tracing::debug!(%peer, "cannot learn the profile of a sender: {e}"),
                }
            }
        });
    }

    fn store_received(&self, from: PeerId, next: u64, msgs: Vec<DirectMessage>, via: &str) -> bool {
        let t = now().as_millis();
        let records = msgs
            .into_iter()
            .map(|m| {
                let rec = MessageRecord {
                    n: 0,
                    id: hex(&m.id),
                    direction: Direction::In,
                    peer_id: from.to_string(),
                    seq: m.seq,
                    sent_at: m.sent_at.as_millis(),
                    received_at: t,
                    text: m.body,
                    state: MessageState::Unread,
                    via: Some(via.to_owned()),
                    delivered_at: None,
                };
                (m.id, rec)
            })
            .collect();
        match self.db.received(&from, next, records) {
            Ok(_) => {
                self.changed.notify_waiters();
                true
            }
            Err(e) => {
                tracing::error!("cannot store a received message: {e}");
                false
            }
        }
    }

    /// Messages in both directions with local number above `after`, filtered; waits up to
    /// `wait` for one to appear. Received ones listed are marked read if `mark_read`.
    pub async fn messages(
        &self,
        filter: MessageFilter,
        after: u64,
        limit: usize,
        wait: Duration,
        mark_read: bool,
    ) -> Result<Vec<MessageRecord>, ChatError> {
        let limit = limit.clamp(1, MAX_LIST);
        let keep = |r: &MessageRecord| filter.keep(r);
        let found = self
            .long_poll(wait, || {
                Ok(if after == 0 && wait.is_zero() {
                    self.db.last_messages(limit, keep)?
                } else {
                    self.db.messages(after, limit, keep)?
                })
            })
            .await?;
        if mark_read {
            let ns: Vec<u64> = found
                .iter()
                .filter(|r| r.state == MessageState::Unread)
                .map(|r| r.n)
                .collect();
            self.db.mark_read(&ns)?;
        }
        Ok(found)
    }

    /// Runs `query` until it finds something, waking when a message or post is stored, for at
    /// most `wait` (bounded by [`MAX_WAIT`]); returns the last (possibly empty) result.
    async fn long_poll<T>(
        &self,
        wait: Duration,
        mut query: impl FnMut() -> Result<Vec<T>, ChatError>,
    ) -> Result<Vec<T>, ChatError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let notified = self.changed.notified();
            let found = query()?;
            if !found.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(found);
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = self.stop.cancelled() => return Ok(found),
            }
        }
    }

    // ---------------------------------------------------------------- offline mailbox

    /// Stores an envelope at the mailbox holders of its recipient; returns how many took it
    /// and what went wrong with the others.
    async fn store_in_mailbox(&self, envelope: Envelope) -> (usize, Vec<String>) {
        let key = crypto::mailbox_key(&envelope.to);
        let mut notes = Vec::new();
        let peers = self.closest_reachable(&key).await;
        let to = envelope.to;
        let candidates: Vec<PeerId> = peers
            .into_iter()
            .filter(|p| *p != to && *p != self.me)
            .collect();
        let holders: Vec<PeerId> = by_distance(candidates, &key)
            .into_iter()
            .take(self.config.mailbox_replicas)
            .collect();
        if holders.is_empty() {
            notes.push("no peers to hold the message: connect to the network first".into());
            return (0, notes);
        }
        let request = match MailboxRequest::Store(envelope).encode() {
            Ok(r) => r,
            Err(e) => {
                notes.push(e.to_string());
                return (0, notes);
            }
        };
        let answers = futures::future::join_all(holders.iter().map(|p| {
            self.net
                .request(*p, MAILBOX_PROTOCOL, request.clone(), REQUEST_TIMEOUT)
        }))
        .await;
        let mut stored = 0;
        for (peer, answer) in holders.iter().zip(answers) {
            match answer.map(|a| MailboxResponse::decode(&a)) {
                Ok(Ok(MailboxResponse::Stored)) => stored += 1,
                Ok(Ok(MailboxResponse::Refused(r))) => notes.push(format!(
                    "mailbox holder {} refused: {}",
                    short_peer_id(peer),
                    refusal_text(r)
                )),
                Ok(Ok(_)) | Ok(Err(_)) => notes.push(format!(
                    "mailbox holder {} answered nonsense",
                    short_peer_id(peer)
                )),
                Err(e) => notes.push(format!("mailbox holder {}: {e}", short_peer_id(peer))),
            }
        }
        (stored, notes)
    }

    /// The peers closest to a DHT key: from a lookup, or, if the lookup fails or takes too
    /// long (part of the network unreachable), the connected peers closest to it.
    async fn closest_reachable(&self, key: &[u8]) -> Vec<PeerId> {
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.net.closest_peers(key.to_vec())).await {
            Ok(Ok(p)) if !p.is_empty() => p,
            _ => {
                let connected = self
                    .net
                    .peers()
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| p.peer_id.parse().ok())
                    .collect();
                by_distance(connected, key)
            }
        }
    }

    fn on_mailbox(self: &Arc<Self>, req: &Request) -> Result<Vec<u8>, String> {
        self.admit(
            &self.limits.mailbox,
            req.peer,
            1.0,
            budget::REFUSED_MAILBOX_RATE,
        )?;
        let t = now();
        let response = match MailboxRequest::decode(&req.data) {
            Err(e) => {
                tracing::debug!(peer = %req.peer, "malformed mailbox request: {e}");
                MailboxResponse::Refused(Refusal::Invalid)
            }
            Ok(MailboxRequest::Store(env)) => {
                let copy = env.clone();
                // The lock is released before the fsync of the write below.
                let stored = self.state.lock().unwrap().mailbox.store(env, t);
                match stored {
                    Ok(mailbox::Stored::New) => match self.db.hold(&copy) {
                        Ok(()) => MailboxResponse::Stored,
                        Err(e) => {
                            tracing::warn!("{e}");
                            MailboxResponse::Refused(Refusal::HolderFull)
                        }
                    },
                    Ok(mailbox::Stored::Duplicate) => MailboxResponse::Stored,
                    Err(e) => {
                        tracing::debug!(peer = %req.peer, "refused to hold an envelope: {e}");
                        MailboxResponse::Refused(e.refusal())
                    }
                }
            }
            Ok(MailboxRequest::Fetch(f)) => {
                let mut st = self.state.lock().unwrap();
                match st.mailbox.fetch(&f, t) {
                    Ok(page) => MailboxResponse::Envelopes {
                        envelopes: page.envelopes,
                        remaining: page.remaining,
                    },
                    Err(e) => MailboxResponse::Refused(e.refusal()),
                }
            }
            Ok(MailboxRequest::Ack(a)) => {
                let acked = self.state.lock().unwrap().mailbox.ack(&a, t);
                match acked {
                    Ok(deleted) => {
                        if let Err(e) = self.db.release(&a.recipient, &a.ids) {
                            tracing::warn!("{e}");
                        }
                        MailboxResponse::Acked {
                            deleted: deleted as u32,
                        }
                    }
                    Err(e) => MailboxResponse::Refused(e.refusal()),
                }
            }
        };
        Ok(response.encode().unwrap_or_default())
    }

    /// Collects this node's offline mailbox from its holders; returns the number of new
    /// messages and receipts.
    pub async fn collect_mailbox(self: &Arc<Self>) -> usize {
        let key = crypto::mailbox_key(&self.me);
        let peers = self.closest_reachable(&key).await;
        let candidates = peers.into_iter().filter(|p| *p != self.me).collect();
        let holders: Vec<PeerId> = by_distance(candidates, &key)
            .into_iter()
            .take(FETCH_HOLDERS)
            .collect();
        // Tracked, so that a node stopping right after collecting still sends the receipts.
        let collect = futures::future::join_all(holders.into_iter().map(|h| self.collect_from(h)));
        let results = self.inflight.track_future(collect).await;
        results.into_iter().sum()
    }

    /// Sends receipts for messages collected from mailboxes back the way the messages came:
    /// to the senders' mailboxes (a sender that is online also gets them when it re-sends
    /// directly). Several holders hold copies of the same message: one receipt is enough.
    fn send_receipts(self: &Arc<Self>, receipts: Vec<Receipt>) {
        for r in receipts {
            {
                let mut sent = self.receipted.lock().unwrap();
                if sent.len() > 10_000 {
                    sent.clear();
                }
                if !sent.insert(r.message_id.0) {
                    continue;
                }
            }
            let chat = self.clone();
            self.inflight.spawn(async move {
                let sender = r.sender;
                let letter = Letter::Receipt(r);
                let sealed = Envelope::seal(&chat.identity, &letter, now(), &mut rand::rng());
                if let Ok(env) = sealed {
                    let (stored, notes) = chat.store_in_mailbox(env).await;
                    if stored == 0 {
                        tracing::debug!(%sender, ?notes, "could not store a receipt for the sender");
                    }
                }
            });
        }
    }

    /// Fetches, opens and acknowledges what one holder keeps for us; returns the number of
    /// new letters.
    async fn collect_from(self: &Arc<Self>, holder: PeerId) -> usize {
        let mut count = 0;
        let mut receipts = Vec::new();
        for _ in 0..MAX_FETCH_ROUNDS {
            let fetch = MailboxRequest::Fetch(FetchRequest::new(&self.identity, holder, now()));
            let Ok(bytes) = fetch.encode() else { break };
            let answer = self
                .net
                .request(holder, MAILBOX_PROTOCOL, bytes, REQUEST_TIMEOUT)
                .await;
            let Ok(Ok(MailboxResponse::Envelopes {
                envelopes,
                remaining,
            })) = answer.map(|a| MailboxResponse::decode(&a))
            else {
                break;
            };
            if envelopes.is_empty() {
                break;
            }
            // Opening (HPKE) and storing (redb, fsync) a page runs on a blocking thread.
            let chat = self.clone();
            let opened = tokio::task::spawn_blocking(move || chat.open_page(holder, envelopes));
            let Ok((ack, new, page_receipts)) = opened.await else {
                break;
            };
            count += new;
            receipts.extend(page_receipts);
            if !ack.is_empty() {
                for chunk in ack.chunks(crate::wire::MAX_ACK_IDS) {
                    let Ok(req) =
                        crate::wire::AckRequest::new(&self.identity, holder, now(), chunk.to_vec())
                    else {
                        continue;
                    };
                    if let Ok(bytes) = MailboxRequest::Ack(req).encode() {
                        let _ = self
                            .net
                            .request(holder, MAILBOX_PROTOCOL, bytes, REQUEST_TIMEOUT)
                            .await;
                    }
                }
            }
            self.send_receipts(std::mem::take(&mut receipts));
            if remaining == 0 || ack.is_empty() {
                break;
            }
        }
        count
    }

    /// Opens one page of envelopes collected from `holder`: delivers messages, applies
    /// receipts. Returns the ids to acknowledge, the number of new letters and the receipts
    /// to send back. Blocking (decryption and database writes).
    fn open_page(
        self: &Arc<Self>,
        holder: PeerId,
        envelopes: Vec<Envelope>,
    ) -> (Vec<MessageId>, usize, Vec<Receipt>) {
        let mut count = 0;
        let mut receipts = Vec::new();
        let mut ack = Vec::new();
        for env in envelopes {
            let id = env.id;
            match env.open(&self.identity) {
                Ok(Letter::Message(m)) => {
                    let from = m.from;
                    match self.accept_message(m, "mailbox") {
                        Ok(receipt) => {
                            count += 1;
                            ack.push(id);
                            self.learn_profile(from);
                            receipts.push(receipt);
                        }
                        // Buffer full: leave it with the holder for next time.
                        Err(Rejection::TryLater) => {}
                        Err(_) => ack.push(id),
                    }
                }
                Ok(Letter::Receipt(r)) => {
                    count += 1;
                    self.on_receipt(&r);
                    ack.push(id);
                }
                Err(e) => {
                    tracing::warn!(holder = %holder, "rejected an envelope from the mailbox: {e}");
                    ack.push(id);
                }
            }
        }
        (ack, count, receipts)
    }

    // ---------------------------------------------------------------- rooms

    async fn subscribe_room(self: &Arc<Self>, room: &RoomId) -> Result<(), ChatError> {
        let (tx, mut rx) = mpsc::channel::<agora_net::GossipMessage>(256);
        self.net.subscribe(&room.topic(), tx).await?;
        if let Err(e) = self.net.provide(room_dht_key(room)).await {
            tracing::debug!(%room, "cannot announce room membership: {e}");
        }
        let chat = Arc::downgrade(self);
        let room = room.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let Some(chat) = chat.upgrade() else { return };
                // The verdict goes first so that forwarding does not wait for the disk.
                let (verdict, new) = chat.on_room_gossip(&room, &m.data);
                let _ = chat.net.validate(m.id, m.source, verdict).await;
                if let Some(post) = new {
                    if let Err(e) = chat.db.add_posts(&room, &[post], None) {
                        tracing::warn!("{e}");
                    }
                    chat.changed.notify_waiters();
                }
            }
        });
        Ok(())
    }

    /// Judges a gossiped post; a new valid one is returned for storing.
    fn on_room_gossip(
        &self,
        room: &RoomId,
        data: &[u8],
    ) -> (MessageAcceptance, Option<RoomMessage>) {
        let msg = match RoomMessage::decode(data) {
            Ok(m) if &m.room == room => m,
            Ok(_) | Err(_) => return (MessageAcceptance::Reject, None),
        };
        let mut st = self.state.lock().unwrap();
        let Some(rs) = st.rooms.get_mut(room) else {
            return (MessageAcceptance::Ignore, None);
        };
        match rs.history.insert(msg.clone(), now()) {
            Ok(Inserted::New) => (MessageAcceptance::Accept, Some(msg)),
            Ok(Inserted::Duplicate) => (MessageAcceptance::Ignore, None),
            Err(RoomError::Invalid(e)) => {
                tracing::debug!(%room, "rejected a forged room post: {e}");
                (MessageAcceptance::Reject, None)
            }
            Err(_) => (MessageAcceptance::Ignore, None),
        }
    }

    /// Finds the room's members through the DHT, connects to them and merges their history.
    async fn discover_room(self: &Arc<Self>, room: &RoomId) -> JoinOutcome {
        let key = room_dht_key(room);
        let providers =
            match tokio::time::timeout(LOOKUP_TIMEOUT, self.net.find_providers(key, 20)).await {
                Ok(Ok(p)) => p,
                _ => Vec::new(),
            };
        let providers: Vec<PeerId> = providers.into_iter().filter(|p| *p != self.me).collect();
        // The gossip subscription exchange follows the connection by a moment.
        let mut members = Vec::new();
        for _ in 0..20 {
            members = self
                .net
                .topic_peers(&room.topic())
                .await
                .unwrap_or_default();
            if !members.is_empty() || providers.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut ask: Vec<PeerId> = members.clone();
        for p in providers {
            if !ask.contains(&p) {
                ask.push(p);
            }
        }
        ask.truncate(HISTORY_PEERS);
        let (history, rejected) = self.fetch_history(room, &ask).await;
        let outcome = JoinOutcome {
            room: room.to_string(),
            members: members.len(),
            history,
            rejected,
        };
        // Tell the members we are here.
        let chat = self.clone();
        tokio::spawn(async move {
            let peers = members;
            chat.exchange_with(peers).await;
        });
        outcome
    }

    /// Asks `peers` for the room's recent history and merges what verifies; returns the
    /// number of posts added and of forged ones dropped.
    async fn fetch_history(&self, room: &RoomId, peers: &[PeerId]) -> (usize, usize) {
        let request = {
            let st = self.state.lock().unwrap();
            st.rooms.get(room).map(|rs| rs.history.request(now()))
        };
        let Some(Ok(bytes)) = request.map(|r| r.encode()) else {
            return (0, 0);
        };
        let answers = futures::future::join_all(peers.iter().map(|p| {
            self.net
                .request(*p, HISTORY_PROTOCOL, bytes.clone(), REQUEST_TIMEOUT)
        }))
        .await;
        let (mut added, mut forged) = (0, 0);
        for answer in answers.into_iter().flatten() {
            let Ok(resp) = HistoryResponse::decode(&answer) else {
                continue;
            };
            if &resp.room != room {
                continue;
            }
            let mut st = self.state.lock().unwrap();
            let Some(rs) = st.rooms.get_mut(room) else {
                break;
            };
            let report = rs.history.merge(resp, now());
            forged += report.forged;
            if !report.added.is_empty() {
                added += report.added.len();
                if let Err(e) = self.db.add_posts(room, &report.added, None) {
                    tracing::warn!("{e}");
                }
            }
        }
        if added > 0 {
            self.changed.notify_waiters();
        }
        (added, forged)
    }

    /// Anti-entropy: for every joined room, asks the members `pick` chooses among the room's
    /// connected members for recent history, so posts missed while disconnected or
    /// partitioned are filled in.
    async fn sync_rooms(&self, pick: impl Fn(&[PeerId]) -> Vec<PeerId>) {
        let rooms: Vec<RoomId> = self.state.lock().unwrap().rooms.keys().cloned().collect();
        for room in rooms {
            let members = self
                .net
                .topic_peers(&room.topic())
                .await
                .unwrap_or_default();
            let ask = pick(&members);
            if ask.is_empty() {
                continue;
            }
            let (added, _) = self.fetch_history(&room, &ask).await;
            if added > 0 {
                tracing::info!(%room, added, "filled in missed room posts");
            }
        }
    }

    /// The periodic round: two members per room, rotating, so both sides of a healed split
    /// are asked soon.
    async fn sync_rooms_round(&self, turn: usize) {
        self.sync_rooms(|members| {
            let mut ask: Vec<PeerId> = (0..2)
                .filter_map(|i| members.get((turn + i) % members.len().max(1)).copied())
                .collect();
            ask.dedup();
            ask
        })
        .await;
    }

    /// Compares the history of every room `peer` shares with us, once its gossip
    /// subscriptions have had a moment to arrive.
    async fn sync_with(&self, peer: PeerId) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.sync_rooms(|members| {
            if members.contains(&peer) {
                vec![peer]
            } else {
                Vec::new()
            }
        })
        .await;
    }

    fn on_history(self: &Arc<Self>, req: &Request) -> Result<Vec<u8>, String> {
        self.admit(
            &self.limits.history,
            req.peer,
            1.0,
            budget::REFUSED_HISTORY_RATE,
        )?;
        let response = match HistoryRequest::decode(&req.data) {
            Ok(r) => {
                let st = self.state.lock().unwrap();
                match st.rooms.get(&r.room) {
                    Some(rs) => rs.history.answer(&r, now()),
                    None => HistoryResponse {
                        room: r.room,
                        messages: Vec::new(),
                    },
                }
            }
            Err(e) => {
                tracing::debug!(peer = %req.peer, "malformed history request: {e}");
                return Err("malformed history request".into());
            }
        };
        Ok(response.encode().unwrap_or_default())
    }

    pub fn parse_room(name: &str) -> Result<RoomId, ChatError> {
        RoomId::new(name.trim_start_matches('#')).map_err(|e| {
            ChatError::BadInput(format!(
                "{e} (room names are 1–64 characters of a-z, 0-9, '-', '_' and '.')"
            ))
        })
    }

    /// Joins a room: subscribes, announces membership, finds members and fetches history.
    pub async fn join(self: &Arc<Self>, room: &RoomId) -> Result<JoinOutcome, ChatError> {
        let fresh = {
            let mut st = self.state.lock().unwrap();
            if st.rooms.contains_key(room) {
                false
            } else {
                self.db.join_room(room, now().as_millis())?;
                st.rooms.insert(
                    room.clone(),
                    RoomState {
                        history: RoomHistory::new(room.clone(), room::Config::default()),
                        next_seq: 0,
                    },
                );
                true
            }
        };
        if fresh {
            self.subscribe_room(room).await?;
        }
        Ok(self.discover_room(room).await)
    }

    pub async fn leave(&self, room: &RoomId) -> Result<bool, ChatError> {
        let was = self.state.lock().unwrap().rooms.remove(room).is_some();
        if was {
            self.net.unsubscribe(&room.topic()).await?;
            self.net.stop_providing(room_dht_key(room)).await?;
            self.db.leave_room(room)?;
        }
        Ok(was)
    }

    /// Posts to a room (joining it first if needed).
    pub async fn post(
        self: &Arc<Self>,
        room: &RoomId,
        text: String,
    ) -> Result<PostOutcome, ChatError> {
        if !self.state.lock().unwrap().rooms.contains_key(room) {
            self.join(room).await?;
        }
        let msg = {
            let mut st = self.state.lock().unwrap();
            let rs = st
                .rooms
                .get_mut(room)
                .ok_or_else(|| ChatError::NotFound(format!("left room {room} meanwhile")))?;
            let msg = RoomMessage::new(&self.identity, room.clone(), rs.next_seq, now(), text)
                .map_err(|e| ChatError::BadInput(e.to_string()))?;
            rs.history
                .insert(msg.clone(), now())
                .map_err(|e| ChatError::BadInput(e.to_string()))?;
            rs.next_seq += 1;
            self.db
                .add_posts(room, std::slice::from_ref(&msg), Some(rs.next_seq))?;
            msg
        };
        self.changed.notify_waiters();
        let bytes = msg
            .encode()
            .map_err(|e| ChatError::BadInput(e.to_string()))?;
        let peers = self
            .net
            .topic_peers(&room.topic())
            .await
            .unwrap_or_default()
            .len();
        match self.net.publish(&room.topic(), bytes).await {
            Ok(_) => {}
            // Nobody else is in the room right now: the post is kept and served as history.
            Err(agora_net::Error::Gossip(e)) if e.contains("Insufficient") => {}
            Err(e) => return Err(e.into()),
        }
        Ok(PostOutcome {
            room: room.to_string(),
            seq: msg.seq,
            peers,
        })
    }

    /// Posts of a room with local number above `after` (arrival order); waits up to `wait`
    /// for one to appear.
    pub async fn read_room(
        &self,
        room: &RoomId,
        after: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<RoomPost>, ChatError> {
        if !self.state.lock().unwrap().rooms.contains_key(room) {
            return Err(ChatError::NotFound(format!(
                "not in room {room} (join it with `agora room join {room}`)"
            )));
        }
        let limit = limit.clamp(1, MAX_LIST);
        let posts = self
            .long_poll(wait, || {
                Ok(if after == 0 && wait.is_zero() {
                    self.db.last_posts(room, limit)?
                } else {
                    self.db.posts(room, after, limit)?
                })
            })
            .await?;
        let st = self.state.lock().unwrap();
        Ok(posts
            .into_iter()
            .map(|(n, m)| RoomPost {
                n,
                room: room.to_string(),
                peer_id: m.from.to_string(),
                short_id: short_peer_id(&m.from),
                nick: st.profiles.get(&m.from).map(|p| p.nick.clone()),
                seq: m.seq,
                sent_at: m.sent_at.as_millis(),
                mine: m.from == self.me,
                text: m.body,
            })
            .collect())
    }

    pub async fn rooms(&self) -> Vec<RoomView> {
        let rooms: Vec<(RoomId, usize)> = {
            let st = self.state.lock().unwrap();
            st.rooms
                .iter()
                .map(|(r, rs)| (r.clone(), rs.history.len()))
                .collect()
        };
        let mut out = Vec::new();
        for (room, messages) in rooms {
            let members = self
                .net
                .topic_peers(&room.topic())
                .await
                .unwrap_or_default()
                .len();
            out.push(RoomView {
                room: room.to_string(),
                members,
                messages,
            });
        }
        out
    }

    /// Members of a room: peers in its gossip topic and recent authors, with presence.
    pub async fn members(&self, room: &RoomId) -> Result<Vec<PeerView>, ChatError> {
        let topic_peers = self.net.topic_peers(&room.topic()).await?;
        let st = self.state.lock().unwrap();
        let rs = st.rooms.get(room).ok_or_else(|| {
            ChatError::NotFound(format!(
                "not in room {room} (join it with `agora room join {room}`)"
            ))
        })?;
        let connected: HashSet<PeerId> = topic_peers.iter().copied().collect();
        let mut peers: BTreeSet<PeerId> = topic_peers.into_iter().collect();
        peers.extend(rs.history.messages().map(|m| m.from));
        peers.remove(&self.me);
        let t = now();
        let mut out = vec![self.own_view(&st)];
        out.extend(peers.iter().map(|p| {
            let mut v = st.view(p, t);
            // Connected members of the topic are online even before their first heartbeat.
            if v.status == Status::Offline && connected.contains(p) && !st.down.contains_key(p) {
                v.status = Status::Online;
            }
            v
        }));
        Ok(out)
    }

    // ---------------------------------------------------------------- presence & profiles

    fn own_view(&self, st: &State) -> PeerView {
        PeerView {
            peer_id: self.me.to_string(),
            short_id: short_peer_id(&self.me),
            nick: st.profiles.get(&self.me).map(|p| p.nick.clone()),
            status: st.status,
            last_seen: Some(now().as_millis()),
            contact: Some("(you)".into()),
            is_contact: false,
        }
    }

    fn exchange(&self, st: &mut State, status: Status) -> PresenceExchange {
        PresenceExchange {
            presence: st.heartbeat.beat(status, now()),
            profile: st.profiles.get(&self.me).cloned(),
        }
    }

    /// Handles a peer's presence and profile; returns whether it changed its status.
    fn absorb(&self, ex: PresenceExchange) {
        if ex.verify().is_err() {
            return;
        }
        let peer = ex.presence.peer;
        if peer == self.me {
            return;
        }
        let t = now();
        let mut st = self.state.lock().unwrap();
        if st.presence.handle(ex.presence, t).is_ok() {
            st.down.remove(&peer);
            if !st.last_seen.contains_key(&peer) && st.last_seen.len() >= budget::MAX_LAST_SEEN {
                // Forget the peer seen longest ago that is not a contact.
                let oldest = st
                    .last_seen
                    .iter()
                    .filter(|(p, _)| !st.contacts.contains_key(p))
                    .min_by_key(|(_, at)| **at)
                    .map(|(p, _)| *p);
                if let Some(oldest) = oldest {
                    st.last_seen.remove(&oldest);
                    st.last_seen_dirty.remove(&oldest);
                }
            }
            st.last_seen.insert(peer, t.as_millis());
            st.last_seen_dirty.insert(peer);
        }
        // Only the peer's own profile: otherwise one exchange could fill the profile book.
        if let Some(profile) = ex.profile
            && profile.peer == peer
            && st.profiles.handle(profile.clone()).is_ok()
            && let Err(e) = self.db.put_profile(&profile)
        {
            tracing::warn!("{e}");
        }
    }

    fn on_presence(self: &Arc<Self>, req: &Request) -> Result<Vec<u8>, String> {
        self.admit(
            &self.limits.presence,
            req.peer,
            1.0,
            budget::REFUSED_PRESENCE_RATE,
        )?;
        let Ok(ex) = PresenceExchange::decode(&req.data) else {
            tracing::debug!(peer = %req.peer, "malformed presence");
            return Err("malformed presence exchange".into());
        };
        let peer = ex.presence.peer;
        // A peer speaks for its own presence only: otherwise one connection could fill the
        // presence and last-seen tables with any number of keys.
        if peer != req.peer {
            self.net.admission().refuse(budget::REFUSED_PRESENCE_PEER);
            return Err(format!(
                "{}: a presence must be the sending peer's own",
                budget::REFUSED_PRESENCE_PEER
            ));
        }
        let came_online = ex.presence.status != Status::Offline;
        self.absorb(ex);
        let reply = {
            let mut st = self.state.lock().unwrap();
            let status = st.status;
            self.exchange(&mut st, status)
        };
        // A peer that just came online may be owed messages.
        if came_online
            && self
                .state
                .lock()
                .unwrap()
                .sender
                .pending(&peer)
                .next()
                .is_some()
        {
            let chat = self.clone();
            tokio::spawn(async move { chat.retry_pending(Some(peer)).await });
        }
        Ok(reply.encode().unwrap_or_default())
    }

    /// Peers that care about our presence: contacts and members of our rooms.
    async fn presence_targets(&self) -> Vec<PeerId> {
        let (mut peers, rooms): (BTreeSet<PeerId>, Vec<RoomId>) = {
            let st = self.state.lock().unwrap();
            (
                st.contacts.keys().copied().collect(),
                st.rooms.keys().cloned().collect(),
            )
        };
        for room in rooms {
            peers.extend(
                self.net
                    .topic_peers(&room.topic())
                    .await
                    .unwrap_or_default(),
            );
        }
        peers.remove(&self.me);
        peers.into_iter().collect()
    }

    async fn beat_all(self: &Arc<Self>) {
        let targets = self.presence_targets().await;
        self.exchange_with(targets).await;
    }

    /// Exchanges presence with each peer (dialing it if needed), a bounded number at once.
    async fn exchange_with(self: &Arc<Self>, peers: Vec<PeerId>) {
        use futures::StreamExt;
        futures::stream::iter(peers)
            .for_each_concurrent(PRESENCE_FANOUT, |peer| {
                let chat = self.clone();
                async move {
                    if let Err(e) = chat.exchange_one(peer).await {
                        tracing::debug!(%peer, "presence exchange failed: {e}");
                    }
                }
            })
            .await;
    }

    async fn exchange_one(&self, peer: PeerId) -> Result<(), String> {
        let ex = {
            let mut st = self.state.lock().unwrap();
            let status = st.status;
            self.exchange(&mut st, status)
        };
        let bytes = ex.encode().map_err(|e| e.to_string())?;
        let answer = async {
            tokio::time::timeout(Duration::from_secs(5), self.net.connect(peer))
                .await
                .map_err(|_| "not found in time".to_string())?
                .map_err(|e| e.to_string())?;
            self.net
                .request(peer, PRESENCE_PROTOCOL, bytes, Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match answer {
            Ok(a) => {
                let ex = PresenceExchange::decode(&a).map_err(|e| e.to_string())?;
                if ex.presence.peer != peer {
                    return Err("answered with someone else's presence".into());
                }
                self.absorb(ex);
                Ok(())
            }
            Err(e) => {
                self.mark_down(peer);
                Err(e)
            }
        }
    }

    fn mark_down(&self, peer: PeerId) {
        let mut st = self.state.lock().unwrap();
        if st.down.len() >= budget::MAX_LAST_SEEN {
            // Peers that went down more than a day ago are offline by their expiry anyway.
            let cutoff = now().saturating_sub(Duration::from_secs(24 * 3600));
            st.down.retain(|_, at| *at > cutoff);
        }
        st.down.insert(peer, now());
    }

    /// A peer we saw online lost its connection: if it cannot be reached again it is offline.
    async fn probe(self: Arc<Self>, peer: PeerId) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Err(e) = self.exchange_one(peer).await {
            tracing::debug!(%peer, "peer went away: {e}");
        }
    }

    /// Finishes deliveries in flight (receipts on their way to mailboxes, bounded to 10 s)
    /// and tells the peers that care that this node goes offline (bounded to 2 s).
    pub async fn goodbye(self: &Arc<Self>) {
        self.inflight.close();
        if tokio::time::timeout(Duration::from_secs(10), self.inflight.wait())
            .await
            .is_err()
        {
            tracing::warn!("some delivery receipts could not be stored before stopping");
        }
        let targets = self.presence_targets().await;
        let ex = {
            let mut st = self.state.lock().unwrap();
            self.exchange(&mut st, Status::Offline)
        };
        let Ok(bytes) = ex.encode() else { return };
        let sends = targets.into_iter().map(|p| {
            self.net
                .request(p, PRESENCE_PROTOCOL, bytes.clone(), Duration::from_secs(2))
        });
        let _ =
            tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(sends)).await;
        self.flush_last_seen();
    }

    pub fn profile(&self, peer: Option<PeerId>) -> Result<ProfileView, ChatError> {
        let peer = peer.unwrap_or(self.me);
        let st = self.state.lock().unwrap();
        match st.profiles.get(&peer) {
            Some(p) => {
                let mut v = ProfileView::from(p);
                v.status = if peer == self.me {
                    st.status
                } else {
                    st.status_of(&peer, now())
                };
                Ok(v)
            }
            None if peer == self.me => Err(ChatError::NotFound(
                "you have no profile yet (set one with `agora profile set --nick NAME`)".into(),
            )),
            None => Err(ChatError::NotFound(format!(
                "no profile known for {peer} (add it as a contact or share a room with it)"
            ))),
        }
    }

    /// Fetches a peer's profile from the peer itself if we do not know it yet.
    pub async fn lookup_profile(&self, peer: PeerId) -> Result<ProfileView, ChatError> {
        if peer != self.me && self.profile(Some(peer)).is_err() {
            let _ = self.exchange_one(peer).await;
        }
        self.profile(Some(peer))
    }

    /// Sets nickname, status and/or about text; signs a new profile version and pushes it.
    pub async fn set_profile(
        self: &Arc<Self>,
        nick: Option<String>,
        status: Option<Status>,
        about: Option<String>,
    ) -> Result<ProfileView, ChatError> {
        let profile = {
            let mut st = self.state.lock().unwrap();
            let old = st.profiles.get(&self.me).cloned();
            let nick = match (nick, &old) {
                (Some(n), _) => n,
                (None, Some(p)) => p.nick.clone(),
                (None, None) => {
                    return Err(ChatError::BadInput(
                        "set a nickname first: agora profile set --nick NAME".into(),
                    ));
                }
            };
            let about = about
                .or(old.as_ref().map(|p| p.about.clone()))
                .unwrap_or_default();
            let status = status.unwrap_or(st.status);
            if status == Status::Offline {
                return Err(ChatError::BadInput(
                    "status can be online, away or busy (a running node is never offline)".into(),
                ));
            }
            let version = old
                .as_ref()
                .map_or(0, |p| p.version + 1)
                .max(now().as_millis());
            let profile = Profile::new(&self.identity, nick, about, status, version)
                .map_err(|e| ChatError::BadInput(e.to_string()))?;
            self.db.put_profile(&profile)?;
            self.db
                .put_setting("status", status.to_string().as_bytes())?;
            st.profiles.forget(&self.me);
            st.profiles
                .handle(profile.clone())
                .map_err(|e| ChatError::BadInput(e.to_string()))?;
            st.status = status;
            profile
        };
        let chat = self.clone();
        tokio::spawn(async move { chat.beat_all().await });
        Ok(ProfileView::from(&profile))
    }

    // ---------------------------------------------------------------- contacts & who

    pub async fn add_contact(
        self: &Arc<Self>,
        peer: PeerId,
        name: Option<String>,
    ) -> Result<PeerView, ChatError> {
        if peer == self.me {
            return Err(ChatError::BadInput(
                "you cannot add yourself as a contact".into(),
            ));
        }
        crypto::public_key(&peer).map_err(|e| {
            ChatError::BadInput(format!(
                "cannot add {peer}: {e} (Agora peer ids start with 12D3KooW)"
            ))
        })?;
        if let Some(n) = &name
            && (n.trim().is_empty() || n.len() > 64 || n.chars().any(char::is_control))
        {
            return Err(ChatError::BadInput(
                "contact names are 1–64 printable characters".into(),
            ));
        }
        let contact = Contact {
            peer_id: peer.to_string(),
            name,
            added_at: now().as_millis(),
        };
        self.db.put_contact(&contact)?;
        self.state.lock().unwrap().contacts.insert(peer, contact);
        // Learn its presence and profile now rather than at the next heartbeat.
        let _ = tokio::time::timeout(Duration::from_secs(6), self.exchange_one(peer)).await;
        let st = self.state.lock().unwrap();
        Ok(st.view(&peer, now()))
    }

    pub fn remove_contact(&self, peer: PeerId) -> Result<bool, ChatError> {
        let removed = self.db.remove_contact(&peer)?;
        self.state.lock().unwrap().contacts.remove(&peer);
        Ok(removed)
    }

    pub fn contacts(&self) -> Vec<PeerView> {
        let st = self.state.lock().unwrap();
        let t = now();
        st.contacts.keys().map(|p| st.view(p, t)).collect()
    }

    /// Everyone we know: contacts, room members, peers that sent us presence.
    pub async fn who(&self) -> Vec<PeerView> {
        let targets = self.presence_targets().await;
        let st = self.state.lock().unwrap();
        let t = now();
        let mut peers: BTreeSet<PeerId> = targets.into_iter().collect();
        peers.extend(st.contacts.keys().copied());
        peers.extend(st.presence.seen(t).map(|s| s.peer));
        for rs in st.rooms.values() {
            peers.extend(rs.history.messages().map(|m| m.from));
        }
        peers.remove(&self.me);
        peers.iter().map(|p| st.view(p, t)).collect()
    }
}

fn refusal_text(r: Refusal) -> &'static str {
    match r {
        Refusal::RecipientFull => "the recipient's mailbox is full",
        Refusal::SenderFull => "you have stored too many messages there (sender quota)",
        Refusal::HolderFull => "the holder has no room",
        Refusal::BadTime => "the message's time is off (check your clock)",
        Refusal::Invalid => "the request was invalid",
    }
}

/// Which messages a listing shows.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    /// Received (`In`), sent (`Out`) or both (`None`).
    pub direction: Option<Direction>,
    pub peer: Option<PeerId>,
    pub unread_only: bool,
}

impl MessageFilter {
    fn keep(&self, r: &MessageRecord) -> bool {
        self.direction.is_none_or(|d| d == r.direction)
            && self.peer.is_none_or(|p| p.to_string() == r.peer_id)
            && (!self.unread_only || r.state == MessageState::Unread)
    }
}
