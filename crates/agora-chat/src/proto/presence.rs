//! Presence and profiles.
//!
//! A node signs a [`Presence`] heartbeat every [`HEARTBEAT_INTERVAL`], valid for
//! [`HEARTBEAT_TTL`], and sends it to the peers that care (contacts, shared rooms). A
//! [`PresenceTable`] shows a peer offline once its last heartbeat expires (a node killed without
//! a goodbye is offline within 60 s) or at once on a signed offline heartbeat (clean shutdown).
//! Heartbeats carry an increasing `seq`, so an old "online" replayed after a goodbye is ignored,
//! and one replayed later has expired anyway.

use crate::crypto::{Identity, VerifyError};
use crate::wire::{Presence, Profile, Status, Timestamp};
use libp2p_identity::PeerId;
use std::collections::HashMap;
use std::time::Duration;

/// How often a node sends its heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(20);
/// How long a heartbeat keeps its sender shown online: three intervals, so one or two lost
/// heartbeats do not flap the status.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(60);

/// Signs this node's heartbeats with increasing sequence numbers.
#[derive(Debug)]
pub struct Heartbeat {
    identity: Identity,
    last_seq: u64,
}

impl Heartbeat {
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            last_seq: 0,
        }
    }

    /// A heartbeat valid for [`HEARTBEAT_TTL`].
    pub fn beat(&mut self, status: Status, now: Timestamp) -> Presence {
        let seq = self.next_seq(now);
        Presence::new(
            &self.identity,
            status,
            seq,
            now.saturating_add(HEARTBEAT_TTL),
        )
    }

    /// The signed goodbye sent on a clean shutdown.
    pub fn goodbye(&mut self, now: Timestamp) -> Presence {
        self.beat(Status::Offline, now)
    }

    /// The time in milliseconds, so that seqs keep increasing across restarts without stored
    /// state; bumped when two heartbeats fall in the same millisecond.
    fn next_seq(&mut self, now: Timestamp) -> u64 {
        self.last_seq = now.as_millis().max(self.last_seq + 1);
        self.last_seq
    }
}

/// Limits of a [`PresenceTable`].
#[derive(Debug, Clone)]
pub struct Config {
    max_ttl: Duration,
    max_peers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_ttl: 2 * HEARTBEAT_TTL,
            max_peers: 4096,
        }
    }
}

impl Config {
    /// Longest validity a heartbeat may claim: a peer cannot stay "online" for a day with one
    /// message.
    pub fn with_max_ttl(mut self, d: Duration) -> Self {
        self.max_ttl = d;
        self
    }

    pub fn with_max_peers(mut self, n: usize) -> Self {
        self.max_peers = n;
        self
    }
}

/// A status change caused by a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update {
    pub peer: PeerId,
    pub previous: Status,
    pub current: Status,
}

/// Why a heartbeat was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    #[error("heartbeat seq {seq} is not newer than {known}: replayed or reordered")]
    Stale { seq: u64, known: u64 },
    #[error("heartbeat already expired at {expires_at:?}")]
    Expired { expires_at: Timestamp },
    #[error("heartbeat claims validity until {expires_at:?}, beyond the allowed {max:?}")]
    TooLong {
        expires_at: Timestamp,
        max: Duration,
    },
    #[error("presence table is full ({max} peers online); forget some peers first")]
    Full { max: usize },
}

#[derive(Debug, Clone)]
struct Entry {
    status: Status,
    seq: u64,
    expires_at: Timestamp,
    last_seen: Timestamp,
    /// Offline already announced by `expire`, so it is reported once.
    reported_offline: bool,
}

impl Entry {
    fn status(&self, now: Timestamp) -> Status {
        if now >= self.expires_at {
            Status::Offline
        } else {
            self.status
        }
    }
}

/// A peer as `agora who` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub peer: PeerId,
    pub status: Status,
    /// When we last accepted a heartbeat from it.
    pub last_seen: Timestamp,
}

/// Known peers' presence.
#[derive(Debug, Default)]
pub struct PresenceTable {
    config: Config,
    entries: HashMap<PeerId, Entry>,
}

impl PresenceTable {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            entries: HashMap::new(),
        }
    }

    pub fn handle(&mut self, p: Presence, now: Timestamp) -> Result<Update, PresenceError> {
        p.verify()?;
        if let Some(e) = self.entries.get(&p.peer)
            && p.seq <= e.seq
        {
            return Err(PresenceError::Stale {
                seq: p.seq,
                known: e.seq,
            });
        }
        if p.status != Status::Offline && p.expires_at <= now {
            return Err(PresenceError::Expired {
                expires_at: p.expires_at,
            });
        }
        if p.expires_at > now.saturating_add(self.config.max_ttl) {
            return Err(PresenceError::TooLong {
                expires_at: p.expires_at,
                max: self.config.max_ttl,
            });
        }
        if !self.entries.contains_key(&p.peer) && self.entries.len() >= self.config.max_peers {
            self.evict_one_offline(now)?;
        }
        let previous = self.status(&p.peer, now);
        let entry = Entry {
            status: p.status,
            seq: p.seq,
            expires_at: p.expires_at,
            last_seen: now,
            reported_offline: p.status == Status::Offline,
        };
        self.entries.insert(p.peer, entry);
        Ok(Update {
            peer: p.peer,
            previous,
            current: p.status,
        })
    }

    pub fn status(&self, peer: &PeerId, now: Timestamp) -> Status {
        self.entries
            .get(peer)
            .map_or(Status::Offline, |e| e.status(now))
    }

    pub fn last_seen(&self, peer: &PeerId) -> Option<Timestamp> {
        self.entries.get(peer).map(|e| e.last_seen)
    }

    /// Peers whose heartbeat ran out since the last call, each reported once.
    pub fn expire(&mut self, now: Timestamp) -> Vec<PeerId> {
        let mut gone = Vec::new();
        for (peer, e) in &mut self.entries {
            if !e.reported_offline && now >= e.expires_at {
                e.reported_offline = true;
                gone.push(*peer);
            }
        }
        gone
    }

    /// When the next peer goes offline if no heartbeat arrives: call [`Self::expire`] then.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.entries
            .values()
            .filter(|e| !e.reported_offline)
            .map(|e| e.expires_at)
            .min()
    }

    pub fn forget(&mut self, peer: &PeerId) {
        self.entries.remove(peer);
    }

    /// Every known peer, as of `now`.
    pub fn seen(&self, now: Timestamp) -> impl Iterator<Item = Seen> + '_ {
        self.entries.iter().map(move |(peer, e)| Seen {
            peer: *peer,
            status: e.status(now),
            last_seen: e.last_seen,
        })
    }

    fn evict_one_offline(&mut self, now: Timestamp) -> Result<(), PresenceError> {
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.status(now) == Status::Offline)
            .min_by_key(|(_, e)| e.last_seen)
            .map(|(p, _)| *p);
        match victim {
            Some(p) => {
                self.entries.remove(&p);
                Ok(())
            }
            None => Err(PresenceError::Full {
                max: self.config.max_peers,
            }),
        }
    }
}

/// The last eight characters of a peer id's base58 form. Every ed25519 peer id starts with the
/// same `12D3KooW`, so the tail is the part that tells peers apart.
pub fn short_peer_id(peer: &PeerId) -> String {
    let s = peer.to_base58();
    s[s.len().saturating_sub(8)..].to_string()
}

/// `nick (short id)`, or the short id alone. Nicknames are not unique, so the id always shows.
pub fn display_name(peer: &PeerId, nick: Option<&str>) -> String {
    match nick {
        Some(n) => format!("{n} ({})", short_peer_id(peer)),
        None => short_peer_id(peer),
    }
}

/// What a profile did to the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileUpdate {
    New,
    Replaced { previous_version: u64 },
}

/// Why a profile was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    #[error("profile version {got} is not newer than the known version {have}")]
    Stale { have: u64, got: u64 },
    #[error("profile book is full ({max} peers)")]
    Full { max: usize },
}

/// The newest verified profile of each known peer.
#[derive(Debug)]
pub struct ProfileBook {
    max_profiles: usize,
    profiles: HashMap<PeerId, Profile>,
}

impl Default for ProfileBook {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl ProfileBook {
    pub fn new(max_profiles: usize) -> Self {
        Self {
            max_profiles,
            profiles: HashMap::new(),
        }
    }

    pub fn handle(&mut self, profile: Profile) -> Result<ProfileUpdate, ProfileError> {
        profile.verify()?;
        let update = match self.profiles.get(&profile.peer) {
            // Equal versions with different content mean the owner equivocated: keep the first.
            Some(old) if profile.version <= old.version => {
                return Err(ProfileError::Stale {
                    have: old.version,
                    got: profile.version,
                });
            }
            Some(old) => ProfileUpdate::Replaced {
                previous_version: old.version,
            },
            None if self.profiles.len() >= self.max_profiles => {
                return Err(ProfileError::Full {
                    max: self.max_profiles,
                });
            }
            None => ProfileUpdate::New,
        };
        self.profiles.insert(profile.peer, profile);
        Ok(update)
    }

    pub fn get(&self, peer: &PeerId) -> Option<&Profile> {
        self.profiles.get(peer)
    }

    pub fn forget(&mut self, peer: &PeerId) {
        self.profiles.remove(peer);
    }

    /// `nick (short id)` if we have its profile.
    pub fn display_name(&self, peer: &PeerId) -> String {
        display_name(peer, self.get(peer).map(|p| p.nick.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: Timestamp = Timestamp(1_700_000_000_000);
    const SEC: Duration = Duration::from_secs(1);

    fn alice() -> Identity {
        Identity::from_seed([1; 32])
    }
    fn at(secs: u32) -> Timestamp {
        T0.saturating_add(SEC * secs)
    }

    #[test]
    fn heartbeat_expiry_shows_offline_within_60s() {
        let (mut hb, mut t) = (Heartbeat::new(alice()), PresenceTable::default());
        let a = alice().peer_id();
        assert_eq!(
            t.status(&a, T0),
            Status::Offline,
            "unknown peers are offline"
        );
        let u = t.handle(hb.beat(Status::Online, T0), T0).unwrap();
        assert_eq!((u.previous, u.current), (Status::Offline, Status::Online));
        assert_eq!(t.poll_timeout(), Some(at(60)));
        assert_eq!(t.status(&a, at(59)), Status::Online);
        assert!(t.expire(at(59)).is_empty());
        // The node dies without a goodbye.
        assert_eq!(t.status(&a, at(60)), Status::Offline);
        assert_eq!(t.expire(at(60)), vec![a]);
        assert!(t.expire(at(61)).is_empty(), "reported once");
        assert_eq!(t.last_seen(&a), Some(T0));
    }

    #[test]
    fn goodbye_is_immediate_and_old_heartbeats_cannot_undo_it() {
        let (mut hb, mut t) = (Heartbeat::new(alice()), PresenceTable::default());
        let online = hb.beat(Status::Busy, T0);
        t.handle(online.clone(), T0).unwrap();
        // Goodbye in the same millisecond still gets a higher seq.
        let bye = hb.goodbye(T0);
        assert!(bye.seq > online.seq);
        t.handle(bye, T0).unwrap();
        assert_eq!(t.status(&alice().peer_id(), T0), Status::Offline);
        assert!(matches!(
            t.handle(online, at(1)),
            Err(PresenceError::Stale { .. })
        ));
        assert!(
            t.expire(at(100)).is_empty(),
            "an explicit goodbye was already an offline event"
        );
    }

    #[test]
    fn forged_and_overlong_heartbeats_are_rejected() {
        let mut t = PresenceTable::default();
        let mallory = Identity::from_seed([66; 32]);
        let mut forged = Heartbeat::new(mallory).beat(Status::Online, T0);
        forged.peer = alice().peer_id();
        assert!(matches!(
            t.handle(forged, T0),
            Err(PresenceError::Invalid(_))
        ));
        let forever = Presence::new(&alice(), Status::Online, 1, at(86_400));
        assert!(matches!(
            t.handle(forever, T0),
            Err(PresenceError::TooLong { .. })
        ));
        let expired = Presence::new(&alice(), Status::Online, 2, at(10));
        assert!(matches!(
            t.handle(expired, at(10)),
            Err(PresenceError::Expired { .. })
        ));
        assert_eq!(t.seen(T0).count(), 0);
    }

    #[test]
    fn table_is_bounded_and_evicts_offline_peers_first() {
        let mut t = PresenceTable::new(Config::default().with_max_peers(2));
        let mut hbs: Vec<_> = (1..=3)
            .map(|n| Heartbeat::new(Identity::from_seed([n; 32])))
            .collect();
        t.handle(hbs[0].beat(Status::Online, T0), T0).unwrap();
        t.handle(hbs[1].beat(Status::Online, at(30)), at(30))
            .unwrap();
        assert_eq!(
            t.handle(hbs[2].beat(Status::Online, at(31)), at(31)),
            Err(PresenceError::Full { max: 2 })
        );
        // Once the first has expired its slot can be reused.
        t.handle(hbs[2].beat(Status::Online, at(61)), at(61))
            .unwrap();
        let seen: Vec<_> = t.seen(at(61)).map(|s| s.status).collect();
        assert_eq!(seen, vec![Status::Online; 2]);
    }

    #[test]
    fn profiles_newer_replaces_older_forged_rejected() {
        let mut book = ProfileBook::default();
        let a = alice();
        let v1 = Profile::new(&a, "alice".into(), "hi".into(), Status::Online, 1).unwrap();
        let v2 = Profile::new(&a, "alice2".into(), String::new(), Status::Away, 2).unwrap();
        assert_eq!(book.handle(v1.clone()), Ok(ProfileUpdate::New));
        assert_eq!(
            book.handle(v2),
            Ok(ProfileUpdate::Replaced {
                previous_version: 1
            })
        );
        assert_eq!(
            book.handle(v1),
            Err(ProfileError::Stale { have: 2, got: 1 })
        );
        let mut forged = Profile::new(
            &Identity::from_seed([66; 32]),
            "alice".into(),
            String::new(),
            Status::Online,
            9,
        )
        .unwrap();
        forged.peer = a.peer_id();
        assert!(matches!(book.handle(forged), Err(ProfileError::Invalid(_))));
        let mut tampered =
            Profile::new(&a, "alice".into(), String::new(), Status::Online, 3).unwrap();
        tampered.nick = "bob".into();
        assert!(book.handle(tampered).is_err());
        assert_eq!(book.get(&a.peer_id()).unwrap().nick, "alice2");
    }

    #[test]
    fn display_shows_nick_and_short_id() {
        let a = alice().peer_id();
        let short = short_peer_id(&a);
        assert_eq!(short.len(), 8);
        assert!(a.to_base58().ends_with(&short));
        let mut book = ProfileBook::default();
        assert_eq!(book.display_name(&a), short);
        book.handle(
            Profile::new(&alice(), "alice".into(), String::new(), Status::Online, 1).unwrap(),
        )
        .unwrap();
        assert_eq!(book.display_name(&a), format!("alice ({short})"));
    }

    proptest! {
        /// Whatever order heartbeats arrive in, the table ends with the highest seq's status and
        /// never shows a peer online after every heartbeat it accepted has expired.
        #[test]
        fn table_follows_the_newest_heartbeat(
            beats in proptest::collection::vec((0u8..4, 0u32..60), 1..20),
            swaps in proptest::collection::vec(any::<prop::sample::Index>(), 20),
        ) {
            let statuses = [Status::Online, Status::Away, Status::Busy, Status::Offline];
            let mut hb = Heartbeat::new(alice());
            let mut sent: Vec<Presence> = beats.iter().map(|(s, t)| hb.beat(statuses[*s as usize], at(*t))).collect();
            // Deliver in a shuffled order, all at T0 (none has expired on arrival).
            let n = sent.len();
            for (i, j) in swaps.iter().take(n).enumerate() {
                sent.swap(i, j.index(n));
            }
            let mut t = PresenceTable::default();
            let mut best: Option<&Presence> = None;
            for p in &sent {
                if t.handle(p.clone(), T0).is_ok() {
                    prop_assert!(best.is_none_or(|b| p.seq > b.seq));
                    best = Some(p);
                }
            }
            let best = best.unwrap();
            prop_assert_eq!(t.status(&alice().peer_id(), T0), best.status);
            prop_assert_eq!(t.status(&alice().peer_id(), best.expires_at), Status::Offline);
        }
    }
}
