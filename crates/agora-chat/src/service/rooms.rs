//! Rooms: gossipsub topics whose members find each other through DHT provider records on the
//! room's key. Joining, leaving, posting and reading; validating gossiped posts; answering and
//! asking for history over `/agora/room-history/1.0.0`, and the periodic room sync that fills
//! in posts missed while disconnected.

use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
    time::Duration,
};

use libp2p::{StreamProtocol, gossipsub::MessageAcceptance};
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{
    Chat, ChatError, Event, LOOKUP_TIMEOUT, MAX_LIST, REQUEST_TIMEOUT, Request, budget, now,
    presence::PeerView,
};
use crate::{
    proto::{
        presence::short_peer_id,
        room::{self, Inserted, RoomError, RoomHistory},
    },
    wire::{Frame, HistoryRequest, HistoryResponse, RoomId, RoomMessage, Status},
};

pub const HISTORY_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/room-history/1.0.0");

/// Room members asked for history on join.
const HISTORY_PEERS: usize = 3;
/// Posts of one room from gossip waiting to be validated (gossipsub awaits the verdict).
const ROOM_GOSSIP_QUEUE: usize = 256;
/// Posts kept on disk per room.
pub(super) const MAX_STORED_POSTS: usize = 10_000;
/// How often each room's history is compared with one member's.
pub(super) const ROOM_SYNC_INTERVAL: Duration = Duration::from_secs(30);

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
pub(super) struct RoomState {
    pub(super) history: RoomHistory,
    pub(super) next_seq: u64,
}

fn room_dht_key(room: &RoomId) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(b"agora-room/1/");
    h.update(room.as_str().as_bytes());
    h.finalize().as_bytes().to_vec()
}

impl Chat {
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
            let mut joined = self.rooms.lock().unwrap();
            if joined.contains_key(room) {
                false
            } else {
                self.db.join_room(room, now().as_millis())?;
                joined.insert(
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
        let was = self.rooms.lock().unwrap().remove(room).is_some();
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
        if !self.rooms.lock().unwrap().contains_key(room) {
            self.join(room).await?;
        }
        let msg = {
            let mut joined = self.rooms.lock().unwrap();
            let rs = joined
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
        self.emit(Event::RoomPost {
            room: room.to_string(),
            count: 1,
        });
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
        if !self.rooms.lock().unwrap().contains_key(room) {
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
        let presence = self.presence.lock().unwrap();
        Ok(posts
            .into_iter()
            .map(|(n, m)| RoomPost {
                n,
                room: room.to_string(),
                peer_id: m.from.to_string(),
                short_id: short_peer_id(&m.from),
                nick: presence.profiles.get(&m.from).map(|p| p.nick.clone()),
                seq: m.seq,
                sent_at: m.sent_at.as_millis(),
                mine: m.from == self.me,
                text: m.body,
            })
            .collect())
    }

    pub async fn rooms(&self) -> Vec<RoomView> {
        let rooms: Vec<(RoomId, usize)> = {
            let joined = self.rooms.lock().unwrap();
            joined
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
        let authors: Vec<PeerId> = {
            let joined = self.rooms.lock().unwrap();
            let rs = joined.get(room).ok_or_else(|| {
                ChatError::NotFound(format!(
                    "not in room {room} (join it with `agora room join {room}`)"
                ))
            })?;
            rs.history.messages().map(|m| m.from).collect()
        };
        let connected: HashSet<PeerId> = topic_peers.iter().copied().collect();
        let mut peers: BTreeSet<PeerId> = topic_peers.into_iter().collect();
        peers.extend(authors);
        peers.remove(&self.me);
        let t = now();
        let st = self.presence.lock().unwrap();
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

    pub(super) async fn subscribe_room(self: &Arc<Self>, room: &RoomId) -> Result<(), ChatError> {
        let (tx, mut rx) = mpsc::channel::<agora_net::GossipMessage>(ROOM_GOSSIP_QUEUE);
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
                    chat.emit(Event::RoomPost {
                        room: room.to_string(),
                        count: 1,
                    });
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
        let mut joined = self.rooms.lock().unwrap();
        let Some(rs) = joined.get_mut(room) else {
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
    pub(super) async fn discover_room(self: &Arc<Self>, room: &RoomId) -> JoinOutcome {
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
            let joined = self.rooms.lock().unwrap();
            joined.get(room).map(|rs| rs.history.request(now()))
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
            let mut joined = self.rooms.lock().unwrap();
            let Some(rs) = joined.get_mut(room) else {
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
            self.emit(Event::RoomPost {
                room: room.to_string(),
                count: added,
            });
        }
        (added, forged)
    }

    /// Anti-entropy: for every joined room, asks the members `pick` chooses among the room's
    /// connected members for recent history, so posts missed while disconnected or
    /// partitioned are filled in.
    async fn sync_rooms(&self, pick: impl Fn(&[PeerId]) -> Vec<PeerId>) {
        let rooms: Vec<RoomId> = self.rooms.lock().unwrap().keys().cloned().collect();
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
    pub(super) async fn sync_rooms_round(&self, turn: usize) {
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
    pub(super) async fn sync_with(&self, peer: PeerId) {
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

    pub(super) fn on_history(self: &Arc<Self>, req: &Request) -> Result<Vec<u8>, String> {
        self.admit(
            &self.limits.history,
            req.peer,
            1.0,
            budget::REFUSED_HISTORY_RATE,
        )?;
        let response = match HistoryRequest::decode(&req.data) {
            Ok(r) => {
                let joined = self.rooms.lock().unwrap();
                match joined.get(&r.room) {
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
}
