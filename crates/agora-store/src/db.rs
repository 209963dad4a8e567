//! The node's redb database. For now it remembers peers across restarts; application crates add
//! their own tables.

use std::{
    path::{Path, PathBuf},
    str::FromStr,
};

use libp2p::{Multiaddr, PeerId};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

/// peer id (base58) → JSON-encoded [`PeerRecord`].
const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");

/// How many peers are remembered; the least recently seen are forgotten first.
pub const MAX_KNOWN_PEERS: usize = 1024;
/// How many addresses are remembered per peer.
pub const MAX_ADDRS_PER_PEER: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "database {path} cannot be opened: {source}. If it is corrupt, move it away; the node then starts with an empty one"
    )]
    Open { path: PathBuf, source: redb::Error },
    #[error("database error: {0}")]
    Redb(#[from] redb::Error),
}

impl DbError {
    fn redb(e: impl Into<redb::Error>) -> Self {
        Self::Redb(e.into())
    }
}

/// A peer that this node has been connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownPeer {
    pub peer_id: PeerId,
    pub addrs: Vec<Multiaddr>,
    /// Unix time in seconds when the peer was last connected.
    pub last_seen: u64,
}

#[derive(Serialize, Deserialize)]
struct PeerRecord {
    addrs: Vec<String>,
    last_seen: u64,
}

pub struct Db {
    db: redb::Database,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let db = redb::Database::create(path).map_err(|e| DbError::Open {
            path: path.to_owned(),
            source: e.into(),
        })?;
        let tx = db.begin_write().map_err(DbError::redb)?;
        tx.open_table(PEERS).map_err(DbError::redb)?;
        tx.commit().map_err(DbError::redb)?;
        Ok(Self { db })
    }

    /// The underlying redb database, for application crates to keep their own tables in the
    /// node's one database file.
    pub fn redb(&self) -> &redb::Database {
        &self.db
    }

    /// Records peers (merging with what is stored) and forgets the oldest beyond
    /// [`MAX_KNOWN_PEERS`]. One transaction: all or nothing.
    pub fn save_peers(&self, peers: &[KnownPeer]) -> Result<(), DbError> {
        let tx = self.db.begin_write().map_err(DbError::redb)?;
        {
            let mut table = tx.open_table(PEERS).map_err(DbError::redb)?;
            for peer in peers {
                let addrs: Vec<String> = peer
                    .addrs
                    .iter()
                    .take(MAX_ADDRS_PER_PEER)
                    .map(|a| a.to_string())
                    .collect();
                if addrs.is_empty() {
                    continue;
                }
                let record = PeerRecord {
                    addrs,
                    last_seen: peer.last_seen,
                };
                let bytes = serde_json::to_vec(&record).expect("record serialises");
                table
                    .insert(peer.peer_id.to_base58().as_str(), bytes.as_slice())
                    .map_err(DbError::redb)?;
            }
            let len = table.len().map_err(DbError::redb)? as usize;
            if len > MAX_KNOWN_PEERS {
                let mut seen: Vec<(u64, String)> = Vec::with_capacity(len);
                for entry in table.iter().map_err(DbError::redb)? {
                    let (k, v) = entry.map_err(DbError::redb)?;
                    let last = serde_json::from_slice::<PeerRecord>(v.value())
                        .map(|r| r.last_seen)
                        .unwrap_or(0);
                    seen.push((last, k.value().to_owned()));
                }
                seen.sort();
                for (_, key) in seen.iter().take(len - MAX_KNOWN_PEERS) {
                    table.remove(key.as_str()).map_err(DbError::redb)?;
                }
            }
        }
        tx.commit().map_err(DbError::redb)
    }

    /// All remembered peers, most recently seen first. Records that do not parse are skipped
    /// with a warning (they may come from a newer version).
    pub fn known_peers(&self) -> Result<Vec<KnownPeer>, DbError> {
        let tx = self.db.begin_read().map_err(DbError::redb)?;
        let table = tx.open_table(PEERS).map_err(DbError::redb)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(DbError::redb)? {
            let (k, v) = entry.map_err(DbError::redb)?;
            let parsed = PeerId::from_str(k.value())
                .ok()
                .zip(serde_json::from_slice::<PeerRecord>(v.value()).ok());
            let Some((peer_id, record)) = parsed else {
                tracing::warn!(key = k.value(), "skipping unreadable known-peer record");
                continue;
            };
            let addrs = record.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            out.push(KnownPeer {
                peer_id,
                addrs,
                last_seen: record.last_seen,
            });
        }
        out.sort_by_key(|p| std::cmp::Reverse(p.last_seen));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(last_seen: u64) -> KnownPeer {
        KnownPeer {
            peer_id: PeerId::random(),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
            last_seen,
        }
    }

    #[test]
    fn peers_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (a, b) = (peer(10), peer(20));
        Db::open(&path)
            .unwrap()
            .save_peers(&[a.clone(), b.clone()])
            .unwrap();
        let got = Db::open(&path).unwrap().known_peers().unwrap();
        assert_eq!(got, vec![b, a]);
    }

    #[test]
    fn oldest_peers_are_forgotten_beyond_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let peers: Vec<_> = (0..MAX_KNOWN_PEERS as u64 + 5).map(peer).collect();
        db.save_peers(&peers).unwrap();
        let got = db.known_peers().unwrap();
        assert_eq!(got.len(), MAX_KNOWN_PEERS);
        assert_eq!(got.last().unwrap().last_seen, 5);
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, vec![0xAB; 10_000]).unwrap();
        let err = Db::open(&path).unwrap_err();
        assert!(err.to_string().contains("move it away"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), vec![0xAB; 10_000]);
    }
}
