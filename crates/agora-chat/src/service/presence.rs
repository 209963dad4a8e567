//! Presence and profiles over `/agora/presence/1.0.0`: heartbeats exchanged with contacts and
//! room members, absorbing peers' presence and profiles, last-seen times, marking peers down
//! and probing them, our own profile, contacts and `who`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use libp2p::StreamProtocol;
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use super::{Chat, ChatError, Event, Request, budget, db::Contact, now};
use crate::{
    crypto,
    proto::presence::{Heartbeat, PresenceTable, ProfileBook, short_peer_id},
    wire::{Frame, PresenceExchange, Profile, RoomId, Status, Timestamp},
};

pub const PRESENCE_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/presence/1.0.0");

/// Presence exchanges in flight at once.
const PRESENCE_FANOUT: usize = 16;
/// How long before a peer without a known profile is asked for it again.
const PROFILE_RETRY: Duration = Duration::from_secs(600);

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

/// What presence keeps (`Chat::presence`): what peers told us, our own heartbeat and status,
/// contacts, and what we concluded about peers (down, last seen).
pub(super) struct PresenceState {
    /// Peers' latest heartbeats.
    pub(super) table: PresenceTable,
    pub(super) profiles: ProfileBook,
    pub(super) heartbeat: Heartbeat,
    /// Our own status.
    pub(super) status: Status,
    pub(super) contacts: BTreeMap<PeerId, Contact>,
    /// Peers whose connection dropped and that could not be reached since, with when.
    pub(super) down: HashMap<PeerId, Timestamp>,
    /// When we last heard from each peer (persisted every minute and at shutdown).
    pub(super) last_seen: HashMap<PeerId, u64>,
    pub(super) last_seen_dirty: HashSet<PeerId>,
}

impl PresenceState {
    pub(super) fn status_of(&self, peer: &PeerId, now: Timestamp) -> Status {
        let seen = self.table.last_seen(peer);
        match self.down.get(peer) {
            Some(down) if seen.is_none_or(|s| s <= *down) => Status::Offline,
            _ => self.table.status(peer, now),
        }
    }

    pub(super) fn view(&self, peer: &PeerId, now: Timestamp) -> PeerView {
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

impl Chat {
    /// A peer's nickname (if we know its profile) and short id, for listings.
    pub fn names(&self, peer: &str) -> (Option<String>, String) {
        let Ok(peer) = peer.parse::<PeerId>() else {
            return (None, peer.to_owned());
        };
        let nick = self
            .presence
            .lock()
            .unwrap()
            .profiles
            .get(&peer)
            .map(|p| p.nick.clone());
        (nick, short_peer_id(&peer))
    }

    /// Resolves a peer id or a contact name.
    pub fn resolve_peer(&self, target: &str) -> Result<PeerId, ChatError> {
        if let Ok(peer) = target.parse::<PeerId>() {
            return Ok(peer);
        }
        let st = self.presence.lock().unwrap();
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

    pub fn profile(&self, peer: Option<PeerId>) -> Result<ProfileView, ChatError> {
        let peer = peer.unwrap_or(self.me);
        let st = self.presence.lock().unwrap();
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
            let mut st = self.presence.lock().unwrap();
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
        self.emit(Event::Profile {
            peer_id: self.me.to_string(),
        });
        let chat = self.clone();
        tokio::spawn(async move { chat.beat_all().await });
        Ok(ProfileView::from(&profile))
    }

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
        self.presence.lock().unwrap().contacts.insert(peer, contact);
        // Learn its presence and profile now rather than at the next heartbeat.
        let _ = tokio::time::timeout(Duration::from_secs(6), self.exchange_one(peer)).await;
        let st = self.presence.lock().unwrap();
        Ok(st.view(&peer, now()))
    }

    pub fn remove_contact(&self, peer: PeerId) -> Result<bool, ChatError> {
        let removed = self.db.remove_contact(&peer)?;
        self.presence.lock().unwrap().contacts.remove(&peer);
        Ok(removed)
    }

    pub fn contacts(&self) -> Vec<PeerView> {
        let st = self.presence.lock().unwrap();
        let t = now();
        st.contacts.keys().map(|p| st.view(p, t)).collect()
    }

    /// Everyone we know: contacts, room members, peers that sent us presence.
    pub async fn who(&self) -> Vec<PeerView> {
        let targets = self.presence_targets().await;
        let mut peers: BTreeSet<PeerId> = targets.into_iter().collect();
        for rs in self.rooms.lock().unwrap().values() {
            peers.extend(rs.history.messages().map(|m| m.from));
        }
        let st = self.presence.lock().unwrap();
        let t = now();
        peers.extend(st.contacts.keys().copied());
        peers.extend(st.table.seen(t).map(|s| s.peer));
        peers.remove(&self.me);
        peers.iter().map(|p| st.view(p, t)).collect()
    }

    pub(super) fn own_view(&self, st: &PresenceState) -> PeerView {
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

    pub(super) fn exchange(&self, st: &mut PresenceState, status: Status) -> PresenceExchange {
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
        let mut st = self.presence.lock().unwrap();
        let before = st.status_of(&peer, t);
        if st.table.handle(ex.presence, t).is_ok() {
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
        let after = st.status_of(&peer, t);
        if after != before {
            self.emit(Event::Presence {
                peer_id: peer.to_string(),
                status: after,
            });
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

    pub(super) fn on_presence(self: &Arc<Self>, req: &Request) -> Result<Vec<u8>, String> {
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
            let mut st = self.presence.lock().unwrap();
            let status = st.status;
            self.exchange(&mut st, status)
        };
        // A peer that just came online may be owed messages.
        if came_online {
            self.retry_if_owed(peer);
        }
        Ok(reply.encode().unwrap_or_default())
    }

    /// Peers that care about our presence: contacts and members of our rooms.
    pub(super) async fn presence_targets(&self) -> Vec<PeerId> {
        let mut peers: BTreeSet<PeerId> = self
            .presence
            .lock()
            .unwrap()
            .contacts
            .keys()
            .copied()
            .collect();
        let rooms: Vec<RoomId> = self.rooms.lock().unwrap().keys().cloned().collect();
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

    pub(super) async fn beat_all(self: &Arc<Self>) {
        let targets = self.presence_targets().await;
        self.exchange_with(targets).await;
    }

    /// Exchanges presence with each peer (dialing it if needed), a bounded number at once.
    pub(super) async fn exchange_with(self: &Arc<Self>, peers: Vec<PeerId>) {
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
            let mut st = self.presence.lock().unwrap();
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
        let mut st = self.presence.lock().unwrap();
        let before = st.status_of(&peer, now());
        if st.down.len() >= budget::MAX_LAST_SEEN {
            // Peers that went down more than a day ago are offline by their expiry anyway.
            let cutoff = now().saturating_sub(Duration::from_secs(24 * 3600));
            st.down.retain(|_, at| *at > cutoff);
        }
        st.down.insert(peer, now());
        if before != Status::Offline {
            self.emit(Event::Presence {
                peer_id: peer.to_string(),
                status: Status::Offline,
            });
        }
    }

    /// A peer we saw online lost its connection: if it cannot be reached again it is offline.
    pub(super) async fn probe(self: Arc<Self>, peer: PeerId) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Err(e) = self.exchange_one(peer).await {
            tracing::debug!(%peer, "peer went away: {e}");
        }
    }

    /// Asks a peer that wrote to us for its profile if we do not know it, so that listings
    /// can show its nickname.
    pub(super) fn learn_profile(self: &Arc<Self>, peer: PeerId) {
        if self.presence.lock().unwrap().profiles.get(&peer).is_some() {
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

    pub(super) fn flush_last_seen(&self) {
        let seen: Vec<(PeerId, u64)> = {
            let mut st = self.presence.lock().unwrap();
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
}
