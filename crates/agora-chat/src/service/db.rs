//! What messaging keeps on disk, in the node's redb database: messages in both directions,
//! counters (sequence numbers per conversation and room), the outbox of unacknowledged
//! messages, buffered out-of-order messages, contacts, profiles, rooms and their posts,
//! envelopes held for others, and when peers were last seen.
//!
//! Values are postcard (signed wire types, stored exactly as received so signatures stay
//! checkable) or JSON (local records).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use libp2p_identity::PeerId;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{
    proto::mailbox::MailboxStore,
    wire::{DirectMessage, Envelope, Frame, MessageId, Profile, RoomId, RoomMessage},
};

/// Local number `n` → [`MessageRecord`] (JSON). `n` grows with every stored message, so it is
/// the cursor of `inbox --follow`.
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("chat_messages");
/// Message id → `n`, to update the state of sent messages when receipts come back.
const MESSAGE_IDS: TableDefinition<&[u8], u64> = TableDefinition::new("chat_message_ids");
/// `out/<peer>`, `in/<peer>`, `room/<room>`, `posts` → next number.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("chat_counters");
/// Message id → signed message we sent and have no receipt for.
const OUTBOX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chat_outbox");
/// Message id → signed message received ahead of a gap, not yet shown.
const BUFFERED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chat_buffered");
/// Peer id → [`Contact`] (JSON).
const CONTACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("chat_contacts");
/// Peer id → its newest signed profile (ours too).
const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("chat_profiles");
/// Small settings: `status`.
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("chat_settings");
/// Room name → joined-at time in ms (u64 LE).
const ROOMS: TableDefinition<&str, u64> = TableDefinition::new("chat_rooms");
/// (room, n) → signed post.
const ROOM_POSTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("chat_room_posts");
/// Recipient bytes ++ envelope id → envelope we hold for that recipient.
const HELD: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chat_held");
/// Peer id → when we last heard from it (ms).
const LAST_SEEN: TableDefinition<&str, u64> = TableDefinition::new("chat_last_seen");

#[derive(Debug, thiserror::Error)]
#[error("chat database: {0}")]
pub struct DbError(String);

fn e(err: impl std::fmt::Display) -> DbError {
    DbError(err.to_string())
}

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

/// Where a message is: received ones are unread or read; sent ones are queued (not yet
/// anywhere but here), stored (in the recipient's offline mailbox) or delivered (receipt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    Unread,
    Read,
    Queued,
    Stored,
    Delivered,
}

/// One message as the node keeps and shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub n: u64,
    pub id: String,
    pub direction: Direction,
    /// The other side of the conversation.
    pub peer_id: String,
    pub seq: u64,
    /// Sender's clock, ms since the Unix epoch.
    pub sent_at: u64,
    /// Our clock when it arrived (received) or was written (sent), ms.
    pub received_at: u64,
    pub text: String,
    pub state: MessageState,
    /// `direct` or `mailbox` for received messages.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub via: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub delivered_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub peer_id: String,
    pub name: Option<String>,
    pub added_at: u64,
}

/// The chat tables of a node's database.
#[derive(Clone)]
pub struct ChatDb {
    db: Arc<agora_store::Db>,
}

fn out_key(peer: &PeerId) -> String {
    format!("out/{peer}")
}

fn in_key(peer: &PeerId) -> String {
    format!("in/{peer}")
}

fn room_key(room: &RoomId) -> String {
    format!("room/{room}")
}

fn held_key(env: &Envelope) -> Vec<u8> {
    let mut k = env.to.to_bytes();
    k.extend_from_slice(&env.id.0);
    k
}

impl ChatDb {
    pub fn open(db: Arc<agora_store::Db>) -> Result<Self, DbError> {
        let tx = db.redb().begin_write().map_err(e)?;
        tx.open_table(MESSAGES).map_err(e)?;
        tx.open_table(MESSAGE_IDS).map_err(e)?;
        tx.open_table(COUNTERS).map_err(e)?;
        tx.open_table(OUTBOX).map_err(e)?;
        tx.open_table(BUFFERED).map_err(e)?;
        tx.open_table(CONTACTS).map_err(e)?;
        tx.open_table(PROFILES).map_err(e)?;
        tx.open_table(SETTINGS).map_err(e)?;
        tx.open_table(ROOMS).map_err(e)?;
        tx.open_table(ROOM_POSTS).map_err(e)?;
        tx.open_table(HELD).map_err(e)?;
        tx.open_table(LAST_SEEN).map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(Self { db })
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let tx = self.db.redb().begin_write().map_err(e)?;
        let out = f(&tx)?;
        tx.commit().map_err(e)?;
        Ok(out)
    }

    fn read(&self) -> Result<redb::ReadTransaction, DbError> {
        self.db.redb().begin_read().map_err(e)
    }

    // ---- counters ----

    fn next_n(tx: &redb::WriteTransaction, name: &str) -> Result<u64, DbError> {
        let mut t = tx.open_table(COUNTERS).map_err(e)?;
        let n = t.get(name).map_err(e)?.map(|v| v.value()).unwrap_or(1);
        t.insert(name, n + 1).map_err(e)?;
        Ok(n)
    }

    fn set_counter(tx: &redb::WriteTransaction, name: &str, v: u64) -> Result<(), DbError> {
        tx.open_table(COUNTERS)
            .map_err(e)?
            .insert(name, v)
            .map_err(e)?;
        Ok(())
    }

    /// Counters with a prefix (`in/`, `out/`, `room/`), keyed by what follows it.
    pub fn counters(&self, prefix: &str) -> Result<Vec<(String, u64)>, DbError> {
        let tx = self.read()?;
        let t = tx.open_table(COUNTERS).map_err(e)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(e)? {
            let (k, v) = item.map_err(e)?;
            if let Some(rest) = k.value().strip_prefix(prefix) {
                out.push((rest.to_owned(), v.value()));
            }
        }
        Ok(out)
    }

    /// The next expected seq of messages from `peer` (0 for a peer never heard from).
    pub fn in_counter(&self, peer: &PeerId) -> Result<u64, DbError> {
        let tx = self.read()?;
        let t = tx.open_table(COUNTERS).map_err(e)?;
        Ok(t.get(in_key(peer).as_str())
            .map_err(e)?
            .map_or(0, |v| v.value()))
    }

    // ---- direct messages ----

    fn insert_record(
        tx: &redb::WriteTransaction,
        mut rec: MessageRecord,
        id: &MessageId,
    ) -> Result<MessageRecord, DbError> {
        rec.n = Self::next_n(tx, "messages")?;
        let json = serde_json::to_vec(&rec).map_err(e)?;
        tx.open_table(MESSAGES)
            .map_err(e)?
            .insert(rec.n, json.as_slice())
            .map_err(e)?;
        tx.open_table(MESSAGE_IDS)
            .map_err(e)?
            .insert(id.0.as_slice(), rec.n)
            .map_err(e)?;
        Ok(rec)
    }

    /// A message we just signed: into the outbox, the counter past it, a record (queued).
    pub fn sent(&self, msg: &DirectMessage, rec: MessageRecord) -> Result<MessageRecord, DbError> {
        let bytes = msg.encode().map_err(e)?;
        self.write(|tx| {
            tx.open_table(OUTBOX)
                .map_err(e)?
                .insert(msg.id.0.as_slice(), bytes.as_slice())
                .map_err(e)?;
            Self::set_counter(tx, &out_key(&msg.to), msg.seq + 1)?;
            Self::insert_record(tx, rec, &msg.id)
        })
    }

    /// Messages delivered in order from `peer`: records (unread), the counter, and the
    /// buffered copies they replace.
    pub fn received(
        &self,
        peer: &PeerId,
        next_seq: u64,
        records: Vec<(MessageId, MessageRecord)>,
    ) -> Result<Vec<MessageRecord>, DbError> {
        self.write(|tx| {
            let mut out = Vec::new();
            for (id, rec) in records {
                tx.open_table(BUFFERED)
                    .map_err(e)?
                    .remove(id.0.as_slice())
                    .map_err(e)?;
                out.push(Self::insert_record(tx, rec, &id)?);
            }
            Self::set_counter(tx, &in_key(peer), next_seq)?;
            Ok(out)
        })
    }

    pub fn buffer(&self, msg: &DirectMessage) -> Result<(), DbError> {
        let bytes = msg.encode().map_err(e)?;
        self.write(|tx| {
            tx.open_table(BUFFERED)
                .map_err(e)?
                .insert(msg.id.0.as_slice(), bytes.as_slice())
                .map_err(e)?;
            Ok(())
        })
    }

    pub fn buffered(&self) -> Result<Vec<DirectMessage>, DbError> {
        Self::all_frames(&self.read()?, BUFFERED)
    }

    pub fn outbox(&self) -> Result<Vec<DirectMessage>, DbError> {
        Self::all_frames(&self.read()?, OUTBOX)
    }

    fn all_frames<T: Frame>(
        tx: &redb::ReadTransaction,
        def: TableDefinition<&[u8], &[u8]>,
    ) -> Result<Vec<T>, DbError> {
        let t = tx.open_table(def).map_err(e)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(e)? {
            let (_, v) = item.map_err(e)?;
            match T::decode(v.value()) {
                Ok(m) => out.push(m),
                Err(err) => tracing::warn!("skipping an unreadable stored chat frame: {err}"),
            }
        }
        Ok(out)
    }

    /// Updates the state of a stored message by id; returns the updated record.
    pub fn set_state(
        &self,
        id: &MessageId,
        state: MessageState,
        at: Option<u64>,
    ) -> Result<Option<MessageRecord>, DbError> {
        self.write(|tx| {
            if state == MessageState::Delivered {
                tx.open_table(OUTBOX)
                    .map_err(e)?
                    .remove(id.0.as_slice())
                    .map_err(e)?;
            }
            let Some(n) = tx
                .open_table(MESSAGE_IDS)
                .map_err(e)?
                .get(id.0.as_slice())
                .map_err(e)?
                .map(|v| v.value())
            else {
                return Ok(None);
            };
            let mut t = tx.open_table(MESSAGES).map_err(e)?;
            let Some(mut rec) = t
                .get(n)
                .map_err(e)?
                .and_then(|v| serde_json::from_slice::<MessageRecord>(v.value()).ok())
            else {
                return Ok(None);
            };
            // Never move a delivered message back to stored.
            if rec.state == MessageState::Delivered && state != MessageState::Delivered {
                return Ok(Some(rec));
            }
            rec.state = state;
            if state == MessageState::Delivered {
                rec.delivered_at = at;
            }
            let json = serde_json::to_vec(&rec).map_err(e)?;
            t.insert(n, json.as_slice()).map_err(e)?;
            Ok(Some(rec))
        })
    }

    /// Records with `n > after` matching `keep`, oldest first, at most `limit`.
    pub fn messages(
        &self,
        after: u64,
        limit: usize,
        keep: impl Fn(&MessageRecord) -> bool,
    ) -> Result<Vec<MessageRecord>, DbError> {
        let tx = self.read()?;
        let t = tx.open_table(MESSAGES).map_err(e)?;
        let mut out = Vec::new();
        for item in t.range(after.saturating_add(1)..).map_err(e)? {
            let (_, v) = item.map_err(e)?;
            if let Ok(rec) = serde_json::from_slice::<MessageRecord>(v.value())
                && keep(&rec)
            {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The newest `limit` records matching `keep`, oldest first.
    pub fn last_messages(
        &self,
        limit: usize,
        keep: impl Fn(&MessageRecord) -> bool,
    ) -> Result<Vec<MessageRecord>, DbError> {
        let tx = self.read()?;
        let t = tx.open_table(MESSAGES).map_err(e)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(e)?.rev() {
            let (_, v) = item.map_err(e)?;
            if let Ok(rec) = serde_json::from_slice::<MessageRecord>(v.value())
                && keep(&rec)
            {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Marks received messages read.
    pub fn mark_read(&self, ns: &[u64]) -> Result<(), DbError> {
        if ns.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut t = tx.open_table(MESSAGES).map_err(e)?;
            for n in ns {
                let rec = t
                    .get(*n)
                    .map_err(e)?
                    .and_then(|v| serde_json::from_slice::<MessageRecord>(v.value()).ok());
                if let Some(mut rec) = rec
                    && rec.state == MessageState::Unread
                {
                    rec.state = MessageState::Read;
                    let json = serde_json::to_vec(&rec).map_err(e)?;
                    t.insert(*n, json.as_slice()).map_err(e)?;
                }
            }
            Ok(())
        })
    }

    // ---- contacts, profiles, settings, last seen ----

    pub fn put_contact(&self, c: &Contact) -> Result<(), DbError> {
        let json = serde_json::to_vec(c).map_err(e)?;
        self.write(|tx| {
            tx.open_table(CONTACTS)
                .map_err(e)?
                .insert(c.peer_id.as_str(), json.as_slice())
                .map_err(e)?;
            Ok(())
        })
    }

    pub fn remove_contact(&self, peer: &PeerId) -> Result<bool, DbError> {
        self.write(|tx| {
            Ok(tx
                .open_table(CONTACTS)
                .map_err(e)?
                .remove(peer.to_string().as_str())
                .map_err(e)?
                .is_some())
        })
    }

    pub fn contacts(&self) -> Result<Vec<Contact>, DbError> {
        let tx = self.read()?;
        let t = tx.open_table(CONTACTS).map_err(e)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(e)? {
            let (_, v) = item.map_err(e)?;
            if let Ok(c) = serde_json::from_slice(v.value()) {
                out.push(c);
            }
        }
        Ok(out)
    }

    pub fn put_profile(&self, p: &Profile) -> Result<(), DbError> {
        let bytes = p.encode().map_err(e)?;
        self.write(|tx| {
            tx.open_table(PROFILES)
                .map_err(e)?
                .insert(p.peer.to_string().as_str(), bytes.as_slice())
                .map_err(e)?;
            Ok(())
        })
    }

    pub fn profiles(&self) -> Result<Vec<Profile>, DbError> {
        let tx = self.read()?;
        let t = tx.open_table(PROFILES).map_err(e)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(e)? {
            let (_, v) = item.map_err(e)?;
            match Profile::decode(v.value()) {
                Ok(p) if p.verify().is_ok() => out.push(p),
                _ => tracing::warn!("skipping a stored profile that does not verify"),
            }
        }
        Ok(out)
    }

    pub fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, DbError> {
        let tx = self.read()?;
        let t = tx.open_table(SETTINGS).map_err(e)?;
        Ok(t.get(key).map_err(e)?.map(|v| v.value().to_vec()))
    }

    pub fn put_setting(&self, key: &str, value: &[u8]) -> Result<(), DbError> {
        self.write(|tx| {
            tx.open_table(SETTINGS)
                .map_err(e)?
                .insert(key, value)
                .map_err(e)?;
            Ok(())
        })
    }

    pub fn put_last_seen(&self, seen: &[(PeerId, u64)]) -> Result<(), DbError> {
        if seen.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut t = tx.open_table(LAST_SEEN).map_err(e)?;
            for (peer, at) in seen {
                t.insert(peer.to_string().as_str(), *at).map_err(e)?;
            }
            Ok(())
        })
    }

    pub fn last_seen(&self) -> Result<Vec<(PeerId, u64)>, DbError> {
        let tx = self.read()?;
        let t = tx.open_table(LAST_SEEN).map_err(e)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(e)? {
            let (k, v) = item.map_err(e)?;
            if let Ok(peer) = k.value().parse() {
                out.push((peer, v.value()));
            }
        }
        Ok(out)
    }

    // ---- rooms ----

    pub fn join_room(&self, room: &RoomId, at: u64) -> Result<(), DbError> {
        self.write(|tx| {
            tx.open_table(ROOMS)
                .map_err(e)?
                .insert(room.as_str(), at)
                .map_err(e)?;
            Ok(())
        })
    }

    /// Forgets a room and its posts.
    pub fn leave_room(&self, room: &RoomId) -> Result<(), DbError> {
        self.write(|tx| {
            tx.open_table(ROOMS)
                .map_err(e)?
                .remove(room.as_str())
                .map_err(e)?;
            let mut posts = tx.open_table(ROOM_POSTS).map_err(e)?;
            posts
                .retain_in((room.as_str(), 0)..=(room.as_str(), u64::MAX), |_, _| false)
                .map_err(e)?;
            Ok(())
        })
    }

    pub fn rooms(&self) -> Result<Vec<RoomId>, DbError> {
        let tx = self.read()?;
        let t = tx.open_table(ROOMS).map_err(e)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(e)? {
            let (k, _) = item.map_err(e)?;
            if let Ok(room) = RoomId::new(k.value()) {
                out.push(room);
            }
        }
        Ok(out)
    }

    /// Stores verified posts of a room; `own_seq` advances our own counter in the same
    /// transaction. Returns each post's local number.
    pub fn add_posts(
        &self,
        room: &RoomId,
        posts: &[RoomMessage],
        own_next_seq: Option<u64>,
    ) -> Result<Vec<u64>, DbError> {
        let encoded = posts
            .iter()
            .map(|p| p.encode().map_err(e))
            .collect::<Result<Vec<_>, _>>()?;
        self.write(|tx| {
            let mut ns = Vec::new();
            for bytes in &encoded {
                let n = Self::next_n(tx, "posts")?;
                tx.open_table(ROOM_POSTS)
                    .map_err(e)?
                    .insert((room.as_str(), n), bytes.as_slice())
                    .map_err(e)?;
                ns.push(n);
            }
            if let Some(seq) = own_next_seq {
                Self::set_counter(tx, &room_key(room), seq)?;
            }
            Ok(ns)
        })
    }

    /// Posts of a room with local number above `after`, in arrival order, at most `limit`.
    pub fn posts(
        &self,
        room: &RoomId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, RoomMessage)>, DbError> {
        let tx = self.read()?;
        let t = tx.open_table(ROOM_POSTS).map_err(e)?;
        let mut out = Vec::new();
        let range = (room.as_str(), after.saturating_add(1))..=(room.as_str(), u64::MAX);
        for item in t.range(range).map_err(e)? {
            let (k, v) = item.map_err(e)?;
            if let Ok(m) = RoomMessage::decode(v.value()) {
                out.push((k.value().1, m));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The newest `limit` posts of a room, in arrival order.
    pub fn last_posts(
        &self,
        room: &RoomId,
        limit: usize,
    ) -> Result<Vec<(u64, RoomMessage)>, DbError> {
        let tx = self.read()?;
        let t = tx.open_table(ROOM_POSTS).map_err(e)?;
        let mut out = Vec::new();
        let range = (room.as_str(), 0)..=(room.as_str(), u64::MAX);
        for item in t.range(range).map_err(e)?.rev() {
            let (k, v) = item.map_err(e)?;
            if let Ok(m) = RoomMessage::decode(v.value()) {
                out.push((k.value().1, m));
                if out.len() >= limit {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Deletes all but the newest `keep` posts of a room.
    pub fn prune_posts(&self, room: &RoomId, keep: usize) -> Result<usize, DbError> {
        self.write(|tx| {
            let mut t = tx.open_table(ROOM_POSTS).map_err(e)?;
            let range = (room.as_str(), 0)..=(room.as_str(), u64::MAX);
            let total = t.range(range.clone()).map_err(e)?.count();
            let drop = total.saturating_sub(keep);
            if drop == 0 {
                return Ok(0);
            }
            let mut seen = 0;
            t.retain_in(range, |_, _| {
                seen += 1;
                seen > drop
            })
            .map_err(e)?;
            Ok(drop)
        })
    }

    pub fn own_room_seq(&self, room: &RoomId) -> Result<u64, DbError> {
        let tx = self.read()?;
        let t = tx.open_table(COUNTERS).map_err(e)?;
        Ok(t.get(room_key(room).as_str())
            .map_err(e)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    // ---- envelopes held for others ----

    pub fn hold(&self, env: &Envelope) -> Result<(), DbError> {
        let bytes = env.encode().map_err(e)?;
        self.write(|tx| {
            tx.open_table(HELD)
                .map_err(e)?
                .insert(held_key(env).as_slice(), bytes.as_slice())
                .map_err(e)?;
            Ok(())
        })
    }

    pub fn release(&self, recipient: &PeerId, ids: &[MessageId]) -> Result<(), DbError> {
        self.write(|tx| {
            let mut t = tx.open_table(HELD).map_err(e)?;
            for id in ids {
                let mut k = recipient.to_bytes();
                k.extend_from_slice(&id.0);
                t.remove(k.as_slice()).map_err(e)?;
            }
            Ok(())
        })
    }

    pub fn held(&self) -> Result<Vec<Envelope>, DbError> {
        Self::all_frames(&self.read()?, HELD)
    }

    /// Drops the held envelopes `mailbox` no longer holds (expired, or refused at start), in
    /// one pass; returns how many.
    pub fn retain_held_by(&self, mailbox: &MailboxStore) -> Result<usize, DbError> {
        let mut held: HashMap<PeerId, HashSet<MessageId>> = HashMap::new();
        self.write(|tx| {
            let mut t = tx.open_table(HELD).map_err(e)?;
            let mut dropped = 0;
            t.retain(|_, v| {
                let ok = Envelope::decode(v).is_ok_and(|env| {
                    held.entry(env.to)
                        .or_insert_with(|| mailbox.held_ids(&env.to).into_iter().collect())
                        .contains(&env.id)
                });
                if !ok {
                    dropped += 1;
                }
                ok
            })
            .map_err(e)?;
            Ok(dropped)
        })
    }
}
