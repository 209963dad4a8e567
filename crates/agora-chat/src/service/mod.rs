//! The messaging service: drives the sans-I/O core ([`crate::proto`]) over the node's libp2p
//! swarm ([`agora_net::Handle`]) and keeps everything that must survive a restart in redb
//! ([`db`]). One module per sub-protocol:
//!
//! - [`direct`] — direct messages over `/agora/chat/1.0.0`: sending, receiving, receipts,
//!   retries of the outbox. Messages go directly when the recipient answers (the network finds
//!   it by peer id through the DHT, through a relay if needed); otherwise they are sealed to
//!   the recipient and stored in its mailbox. Unacknowledged messages stay in the outbox and
//!   are re-sent directly when the recipient is seen again.
//! - [`mailbox`] — offline mailboxes over `/agora/mailbox/1.0.0`: storing sealed envelopes at
//!   the peers closest to the recipient's mailbox key ([`crate::crypto::mailbox_key`]),
//!   holding them for others, and collecting our own at start and every
//!   [`Config::mailbox_check`]; receipts for messages collected from it travel back the same
//!   way (sealed into the sender's mailbox).
//! - [`rooms`] — rooms are gossipsub topics; members find each other through DHT provider
//!   records on the room's key and a joiner asks members for history over
//!   `/agora/room-history/1.0.0`.
//! - [`presence`] — presence and profiles are exchanged over `/agora/presence/1.0.0` with
//!   contacts and room members only, every [`Config::heartbeat_interval`]; a peer whose
//!   connection drops and that cannot be reached again is shown offline at once, one that
//!   stops sending heartbeats after their expiry (60 s). Contacts and `who` live here too.
//!
//! This module holds what they share: [`Config`], [`budget`], [`ChatError`], the [`Chat`]
//! struct, [`Chat::start`], the request loop ([`Chat::serve`]), admission and the background
//! tasks.
//!
//! # State and locks
//!
//! Each sub-protocol owns its state behind its own lock, so that, say, a flood of mailbox
//! stores does not contend with presence or direct messages:
//!
//! | lock             | owner        | holds                                                  |
//! |------------------|--------------|--------------------------------------------------------|
//! | `Chat::direct`   | [`direct`]   | the sender (counters, outbox) and the receivers        |
//! | `Chat::mailbox`  | [`mailbox`]  | the envelopes held for others                          |
//! | `Chat::rooms`    | [`rooms`]    | the joined rooms' histories and own sequence numbers   |
//! | `Chat::presence` | [`presence`] | presence table, profiles, heartbeat, status, contacts, |
//! |                  |              | peers down, last seen                                  |
//!
//! No code path holds two of them at once today: what needs two parts (`members`, `who`,
//! presence targets, housekeeping) takes them one after the other and works on copies. Should
//! two ever be needed together, take them in the order of the table — `direct`, `mailbox`,
//! `rooms`, `presence` — with the leaf locks `receipted` and `profile_asked` last. None is a
//! tokio lock: never hold one across an `.await`. Handlers may write to redb while holding
//! their part's lock (a conversation's counter and its stored messages must move together).

pub mod db;
mod direct;
mod mailbox;
mod presence;
mod rooms;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agora_net::{
    Handle, InboundRequest,
    admission::{Rate, SharedRateLimiter},
};
use libp2p::{StreamProtocol, kad::KBucketKey};
use libp2p_identity::PeerId;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    crypto::Identity,
    proto::{
        direct::{self as direct_proto, Sender},
        mailbox::{self as mailbox_proto, MailboxStore},
        presence::{Heartbeat, PresenceTable, ProfileBook},
        room::{self, RoomHistory},
    },
    wire::{DirectMessage, Frame, RoomId, Status, Timestamp},
};
pub use db::{ChatDb, Contact, DbError, Direction, MessageRecord, MessageState};
use direct::DirectState;
pub use direct::{CHAT_PROTOCOL, MessageFilter, SendOutcome};
pub use mailbox::MAILBOX_PROTOCOL;
use presence::PresenceState;
pub use presence::{PRESENCE_PROTOCOL, PeerView, ProfileView};
pub use rooms::{HISTORY_PROTOCOL, JoinOutcome, PostOutcome, RoomPost, RoomView};
use rooms::{MAX_STORED_POSTS, ROOM_SYNC_INTERVAL, RoomState};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests of one protocol waiting for its handler.
const REQUEST_QUEUE: usize = 64;
/// How long a DHT lookup for mailbox holders or room members may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
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
    pub mailbox: mailbox_proto::Config,
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
            mailbox: mailbox_proto::Config::default(),
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

/// Peers sorted by XOR distance to a DHT key, nearest first.
fn by_distance(mut peers: Vec<PeerId>, key: &[u8]) -> Vec<PeerId> {
    let target = KBucketKey::new(key.to_vec());
    peers.sort_by_key(|p| KBucketKey::from(*p).distance(&target));
    peers.dedup();
    peers
}

/// Events buffered for a slow subscriber of [`Chat::events`] before it lags.
pub const EVENT_CAP: usize = 256;

/// Something that changed in messaging, for live views (the dashboard's server-sent events).
/// Each says what to fetch again; the listings stay the source of truth.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// `count` direct messages from `peer_id` were stored, unread.
    MessageReceived { peer_id: String, count: usize },
    /// A direct message to `peer_id` was written (state `queued`).
    MessageSent { peer_id: String, id: String },
    /// An own message changed state: `stored` (at mailbox holders) or `delivered`.
    MessageState {
        peer_id: String,
        id: String,
        state: MessageState,
    },
    /// Received messages were marked read (by a listing with `mark_read`).
    MessagesRead { count: usize },
    /// `count` posts of `room` were stored (own, gossiped or from a history sync).
    RoomPost { room: String, count: usize },
    /// A peer's presence changed.
    Presence { peer_id: String, status: Status },
    /// This node's profile (nickname, status, about) changed.
    Profile { peer_id: String },
}

/// The messaging service of a node.
pub struct Chat {
    net: Handle,
    identity: Identity,
    me: PeerId,
    db: ChatDb,
    config: Config,
    // The sub-protocols' state, one lock each; lock order: direct, mailbox, rooms, presence
    // (see the module docs).
    /// Direct messages: sender and receivers ([`direct`]).
    direct: Mutex<DirectState>,
    /// Held while a received message is applied to its conversation and stored (taken only
    /// on blocking threads, before `direct`): the conversation is out of `direct` meanwhile,
    /// so async tasks never wait on `direct` across the database's fsync.
    delivering: Mutex<()>,
    /// Envelopes held for others ([`mailbox`]).
    mailbox: Mutex<MailboxStore>,
    /// Joined rooms ([`rooms`]).
    rooms: Mutex<BTreeMap<RoomId, RoomState>>,
    /// Presence, profiles, contacts, last seen ([`presence`]).
    presence: Mutex<PresenceState>,
    /// Woken whenever a message or post is stored (long-polling listings wait on it).
    changed: Notify,
    /// What changed, for live views ([`Chat::events`]).
    events: broadcast::Sender<Event>,
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

        let mut sender = Sender::new(identity.clone(), direct_proto::Config::default());
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
            direct: Mutex::new(DirectState { sender, receivers }),
            delivering: Mutex::new(()),
            mailbox: Mutex::new(mailbox),
            rooms: Mutex::new(rooms),
            presence: Mutex::new(PresenceState {
                table: PresenceTable::default(),
                profiles,
                heartbeat: Heartbeat::new(identity),
                status,
                contacts,
                down: HashMap::new(),
                last_seen,
                last_seen_dirty: HashSet::new(),
            }),
            changed: Notify::new(),
            events: broadcast::channel(EVENT_CAP).0,
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

        let rooms: Vec<RoomId> = chat.rooms.lock().unwrap().keys().cloned().collect();
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

    /// Subscribes to what changes in messaging: messages stored, sent, delivered and read,
    /// room posts, presence and the own profile.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn emit(&self, event: Event) {
        // Nobody listening is fine.
        let _ = self.events.send(event);
    }

    pub fn peer_id(&self) -> PeerId {
        self.me
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
        limiter.admit(&peer, cost, self.net.admission(), name)
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
                    // Both write the database (fsync): on a blocking thread.
                    _ = house.tick() => {
                        let chat = chat.clone();
                        let _ = tokio::task::spawn_blocking(move || chat.housekeeping()).await;
                    }
                    _ = flush.tick() => {
                        let chat = chat.clone();
                        let _ = tokio::task::spawn_blocking(move || chat.flush_last_seen()).await;
                    }
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
                            let presence = chat.presence.lock().unwrap();
                            presence.status_of(&peer, now()) != Status::Offline
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
                        chat.retry_if_owed(peer);
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

    /// Expires what each sub-protocol holds, one lock at a time.
    fn housekeeping(&self) {
        let t = now();
        self.presence.lock().unwrap().table.expire(t);
        {
            let mut direct = self.direct.lock().unwrap();
            let mut late = Vec::new();
            for rx in direct.receivers.values_mut() {
                if rx.poll_timeout().is_some_and(|at| at <= t) {
                    late.extend(rx.handle_timeout(t));
                }
            }
            // Messages whose gap timed out are shown now, in order.
            let mut by_peer: BTreeMap<PeerId, Vec<DirectMessage>> = BTreeMap::new();
            for m in late {
                by_peer.entry(m.from).or_default().push(m);
            }
            for (peer, msgs) in by_peer {
                let next = direct.receivers.get(&peer).map_or(0, |r| r.next_seq());
                self.store_received(peer, next, msgs, "direct");
            }
        }
        {
            let mut held = self.mailbox.lock().unwrap();
            if held.expire(t) > 0
                && let Err(e) = self.db.retain_held_by(&held)
            {
                tracing::warn!("{e}");
            }
        }
        for room in self.rooms.lock().unwrap().values_mut() {
            room.history.expire(t);
        }
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
            let mut presence = self.presence.lock().unwrap();
            self.exchange(&mut presence, Status::Offline)
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
}
