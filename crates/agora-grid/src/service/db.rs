//! What the grid keeps in the node's redb database: the jobs this node submitted (their whole
//! state, so a restarted submitter resumes), the reputation of workers, payments owed, and the
//! outcomes this node holds as a worker for submitters that have not taken them yet.

use std::sync::Arc;

use libp2p_identity::PeerId;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{
    proto::{Job, Reputation},
    wire::{Digest, Outcome, decode, encode},
};

/// Job id → postcard [`JobRecord`].
const JOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("grid_jobs");
/// Worker peer id bytes → postcard [`Reputation`].
const WORKERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("grid_workers");
/// Job id ‖ unit (LE) → postcard [`Held`].
const HELD: TableDefinition<&[u8], &[u8]> = TableDefinition::new("grid_held");
/// Worker-side counters: `units`, `fuel`, `failed`.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("grid_counters");

#[derive(Debug, thiserror::Error)]
#[error("grid database: {0}")]
pub struct DbError(String);

fn e(err: impl std::fmt::Display) -> DbError {
    DbError(err.to_string())
}

/// A submitted job with what the core does not know: names, payments, timestamps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    pub job: Job,
    /// Paid so far (all workers).
    pub paid: u64,
    /// Owed per worker and not yet paid.
    pub owed: Vec<(PeerId, u64)>,
    /// Accepted result blobs: unit → BLAKE3 of the result (kept in the files store).
    pub results: Vec<(u32, Digest)>,
    /// When it finished (ms since the epoch).
    pub finished_ms: Option<u64>,
    /// The most fuel an accepted unit used (what the next units probably need).
    pub max_fuel_seen: u64,
    /// Payments submitted to the ledger and not yet final.
    #[serde(default)]
    pub paying: u64,
}

/// An outcome this node computed as a worker and holds until the submitter has it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Held {
    pub submitter: PeerId,
    pub job: Digest,
    pub unit: u32,
    pub outcome: Outcome,
    pub result: Vec<u8>,
    pub commitment: Digest,
    /// Revealed to the submitter (kept until it says the unit is settled).
    pub revealed: bool,
    pub expires_ms: u64,
}

pub fn held_key(job: &Digest, unit: u32) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(job);
    k[32..].copy_from_slice(&unit.to_le_bytes());
    k
}

pub struct GridDb {
    db: Arc<agora_store::Db>,
}

impl GridDb {
    pub fn open(db: Arc<agora_store::Db>) -> Result<Self, DbError> {
        let tx = db.redb().begin_write().map_err(e)?;
        tx.open_table(JOBS).map_err(e)?;
        tx.open_table(WORKERS).map_err(e)?;
        tx.open_table(HELD).map_err(e)?;
        tx.open_table(COUNTERS).map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(Self { db })
    }

    /// Stores a job's record. `durable: false` for changes a crash may lose without harm (a
    /// commitment: the replica is running again and the worker commits again; a lease that
    /// ran out: it runs out again); assignments, results, reveals and payments are durable.
    pub fn put_job(&self, id: &Digest, record: &JobRecord, durable: bool) -> Result<(), DbError> {
        let mut tx = self.db.redb().begin_write().map_err(e)?;
        if !durable {
            tx.set_durability(redb::Durability::None).map_err(e)?;
        }
        tx.open_table(JOBS)
            .map_err(e)?
            .insert(id.as_slice(), encode(record).as_slice())
            .map_err(e)?;
        tx.commit().map_err(e)
    }

    pub fn remove_job(&self, id: &Digest) -> Result<(), DbError> {
        let tx = self.db.redb().begin_write().map_err(e)?;
        tx.open_table(JOBS)
            .map_err(e)?
            .remove(id.as_slice())
            .map_err(e)?;
        tx.commit().map_err(e)
    }

    /// Every stored job; one that does not decode is reported and skipped (never deleted).
    pub fn jobs(&self) -> Result<Vec<(Digest, JobRecord)>, DbError> {
        let tx = self.db.redb().begin_read().map_err(e)?;
        let table = tx.open_table(JOBS).map_err(e)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(e)? {
            let (k, v) = row.map_err(e)?;
            let Ok(id) = <Digest>::try_from(k.value()) else {
                continue;
            };
            match decode::<JobRecord>(v.value()) {
                Ok(r) => out.push((id, r)),
                Err(err) => tracing::warn!(job = %hex::encode(id), "cannot read stored job: {err}"),
            }
        }
        Ok(out)
    }

    pub fn put_worker(&self, peer: &PeerId, rep: &Reputation) -> Result<(), DbError> {
        let tx = self.db.redb().begin_write().map_err(e)?;
        tx.open_table(WORKERS)
            .map_err(e)?
            .insert(peer.to_bytes().as_slice(), encode(rep).as_slice())
            .map_err(e)?;
        tx.commit().map_err(e)
    }

    pub fn workers(&self) -> Result<Vec<(PeerId, Reputation)>, DbError> {
        let tx = self.db.redb().begin_read().map_err(e)?;
        let table = tx.open_table(WORKERS).map_err(e)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(e)? {
            let (k, v) = row.map_err(e)?;
            if let (Ok(p), Ok(r)) = (PeerId::from_bytes(k.value()), decode(v.value())) {
                out.push((p, r));
            }
        }
        Ok(out)
    }

    pub fn put_held(&self, held: &Held) -> Result<(), DbError> {
        let tx = self.db.redb().begin_write().map_err(e)?;
        tx.open_table(HELD)
            .map_err(e)?
            .insert(
                held_key(&held.job, held.unit).as_slice(),
                encode(held).as_slice(),
            )
            .map_err(e)?;
        tx.commit().map_err(e)
    }

    pub fn remove_held(&self, job: &Digest, unit: u32) -> Result<(), DbError> {
        let tx = self.db.redb().begin_write().map_err(e)?;
        tx.open_table(HELD)
            .map_err(e)?
            .remove(held_key(job, unit).as_slice())
            .map_err(e)?;
        tx.commit().map_err(e)
    }

    pub fn get_held(&self, job: &Digest, unit: u32) -> Result<Option<Held>, DbError> {
        let tx = self.db.redb().begin_read().map_err(e)?;
        let table = tx.open_table(HELD).map_err(e)?;
        Ok(table
            .get(held_key(job, unit).as_slice())
            .map_err(e)?
            .and_then(|v| decode(v.value()).ok()))
    }

    pub fn held(&self) -> Result<Vec<Held>, DbError> {
        let tx = self.db.redb().begin_read().map_err(e)?;
        let table = tx.open_table(HELD).map_err(e)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(e)? {
            let (_, v) = row.map_err(e)?;
            if let Ok(h) = decode(v.value()) {
                out.push(h);
            }
        }
        Ok(out)
    }

    /// Keeps a computed outcome and counts its unit and fuel, in one transaction.
    pub fn put_held_counted(&self, held: &Held) -> Result<(), DbError> {
        let tx = self.db.redb().begin_write().map_err(e)?;
        tx.open_table(HELD)
            .map_err(e)?
            .insert(
                held_key(&held.job, held.unit).as_slice(),
                encode(held).as_slice(),
            )
            .map_err(e)?;
        {
            let mut t = tx.open_table(COUNTERS).map_err(e)?;
            for (name, by) in [("units", 1), ("fuel", held.outcome.fuel())] {
                let now = t.get(name).map_err(e)?.map(|v| v.value()).unwrap_or(0);
                t.insert(name, now.saturating_add(by)).map_err(e)?;
            }
        }
        tx.commit().map_err(e)
    }

    pub fn counter(&self, name: &str) -> Result<u64, DbError> {
        let tx = self.db.redb().begin_read().map_err(e)?;
        let t = tx.open_table(COUNTERS).map_err(e)?;
        Ok(t.get(name).map_err(e)?.map(|v| v.value()).unwrap_or(0))
    }
}
