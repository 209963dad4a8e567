//! The submitter's side of a job as a pure state machine: which unit goes to which worker,
//! commitments and reveals, the quorum that accepts a result, re-issue of lost or late
//! replicas, and the reputation of workers. No I/O, no clock (every call gets `now_ms`), no
//! randomness: the service drives it and persists what it returns.
//!
//! # The rules
//! - A unit runs on `replicas` distinct workers; a worker never holds two live replicas of one
//!   unit. It may be issued the unit again only if every earlier replica of it there ended
//!   (expired or lost) without a commitment: it never fixed an answer for the unit, so a new
//!   replica still gives it one answer at most. (An assignment whose answer never reached the
//!   worker, because this node stopped while sending it, expires unseen; with few workers the
//!   unit could otherwise never reach its quorum.) One that committed and then failed to reveal
//!   is never issued the unit again.
//! - A worker first commits to `BLAKE3(outcome digest ‖ its peer id)` ([`commitment`]), then
//!   reveals the outcome. A reveal that does not open the worker's own commitment is a fault:
//!   whoever copies another's revealed answer cannot have committed to it beforehand, and
//!   copying the commitment itself fails because the worker's id is inside it.
//! - Reveals are asked for once `quorum` commitments are in, so nobody reveals while fewer
//!   than a quorum of answers are fixed.
//! - A unit is decided when `quorum` reveals carry the same digest: accepted if that outcome
//!   is a result, failed with that error if it is an error (the same error on every honest
//!   peer). Workers that revealed another digest lose reputation. If every replica revealed
//!   and no digest has a quorum, one more replica is issued, up to `max_replicas`; past that
//!   the unit fails.
//! - An uncommitted replica whose worker disconnects or whose lease runs out is re-issued to
//!   another worker. A committed one stays: the worker holds its result and reveals later.
//! - A worker with [`MAX_FAULTS`] faults (wrong or unopened reveals) gets no more work.

use std::collections::{BTreeMap, HashMap};

use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use crate::wire::{Digest, JobSpec, Outcome};

/// Faults (reveals in a losing minority, reveals that do not open the commitment) after which
/// a worker gets no more work from this node.
pub const MAX_FAULTS: u32 = 3;
/// How long a committed replica may take to reveal once a quorum has committed (or after the
/// submitter restarted) before it counts as missed and the unit is issued again: a worker that
/// commits and never reveals cannot hold a unit hostage.
pub const REVEAL_GRACE_MS: u64 = 30_000;
/// How long a running replica stays assigned without a sign of life from its worker (a
/// progress message, sent every 15 s while it works): a worker that vanished without closing
/// its connection, or while this node was away, loses its replica after this.
pub const LIVENESS_MS: u64 = 60_000;
/// A unit is issued at most this many times its `max_replicas` (expired and lost replicas
/// count) before it fails as "no worker finished it": a unit nobody can finish in time, or
/// that throwaway identities keep taking and abandoning, cannot keep a job open forever.
pub const MAX_ISSUES_PER_REPLICA: usize = 3;
/// How many open units a worker's replica is chosen among (see [`Job::assign_spread`]).
pub const SPREAD: usize = 16;
/// Missed leases after which a worker gets no more work from this node for this job.
pub const MAX_MISSES_PER_JOB: u32 = 3;

/// What a worker commits to before it reveals: `BLAKE3(digest ‖ worker peer id bytes)`.
pub fn commitment(digest: &Digest, worker: &PeerId) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"agora-grid commitment v1");
    h.update(digest);
    h.update(&worker.to_bytes());
    *h.finalize().as_bytes()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    /// Running on the worker; no commitment yet.
    Running,
    /// Committed; the outcome is held by the worker until it is asked to reveal.
    Committed,
    /// Revealed and opened its commitment.
    Revealed,
    /// Lease ran out before a commitment; re-issued elsewhere.
    Expired,
    /// Worker disconnected before committing; re-issued elsewhere.
    Lost,
    /// Revealed something that does not open its commitment, or was in a losing minority.
    Faulty,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Replica {
    pub worker: PeerId,
    pub issued_ms: u64,
    pub lease_until_ms: u64,
    pub state: ReplicaState,
    pub commitment: Option<Digest>,
    pub digest: Option<Digest>,
    pub outcome: Option<Outcome>,
    /// When a committed replica must have revealed by (set once a quorum has committed).
    #[serde(default)]
    pub reveal_by_ms: Option<u64>,
    /// When a running replica counts as abandoned unless its worker reports progress.
    #[serde(default)]
    pub alive_until_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnitState {
    Open,
    /// A quorum agreed on a result.
    Accepted {
        digest: Digest,
        outcome: Outcome,
        peers: Vec<PeerId>,
    },
    /// A quorum agreed on an error (`digest` is that outcome's), or no quorum was reached
    /// within `max_replicas`, no worker finished it in [`MAX_ISSUES_PER_REPLICA`] × that many
    /// tries, or the job was cancelled (no `digest`).
    Failed {
        error: String,
        peers: Vec<PeerId>,
        #[serde(default)]
        digest: Option<Digest>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Unit {
    /// Replicas wanted now (grows by one per inconclusive round, up to `max_replicas`).
    pub wanted: u8,
    pub replicas: Vec<Replica>,
    pub state: UnitState,
}

impl Unit {
    fn live(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| {
                matches!(
                    r.state,
                    ReplicaState::Running | ReplicaState::Committed | ReplicaState::Revealed
                )
            })
            .count()
    }

    /// Replicas whose answer is fixed: committed or revealed.
    fn fixed(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| matches!(r.state, ReplicaState::Committed | ReplicaState::Revealed))
            .count()
    }

    /// `worker`'s latest replica of this unit: the live one, if it has one (earlier ones
    /// ended without a commitment, see [`Job::assign_spread`]).
    fn replica_mut(&mut self, worker: &PeerId) -> Option<&mut Replica> {
        self.replicas.iter_mut().rev().find(|r| &r.worker == worker)
    }

    fn replica(&self, worker: &PeerId) -> Option<&Replica> {
        self.replicas.iter().rev().find(|r| &r.worker == worker)
    }

    /// Whether `worker` may be issued this unit (again): none of its replicas of it is live
    /// or ever committed.
    fn may_take(&self, worker: &PeerId) -> bool {
        self.replicas
            .iter()
            .filter(|r| &r.worker == worker)
            .all(|r| {
                matches!(r.state, ReplicaState::Expired | ReplicaState::Lost)
                    && r.commitment.is_none()
            })
    }

    pub fn decided(&self) -> bool {
        !matches!(self.state, UnitState::Open)
    }

    /// Below a quorum of fixed answers (a replica dropped out), the committed replicas are no
    /// longer due to reveal: their deadline is set again when the quorum is back.
    fn requorum(&mut self, quorum: usize) {
        if self.fixed() < quorum {
            for r in self.replicas.iter_mut() {
                if r.state == ReplicaState::Committed {
                    r.reveal_by_ms = None;
                }
            }
        }
    }
}

/// A worker's record at this node, over all jobs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reputation {
    /// Replicas that were part of an accepted (or agreed-error) quorum.
    pub valid: u64,
    /// Faults: a losing minority or a reveal that did not open the commitment.
    pub faults: u32,
    /// Leases missed (expired or lost before a commitment).
    pub missed: u64,
    /// Fuel of the units it was credited for.
    pub fuel: u64,
    /// Paid to it (ledger base units).
    pub paid: u64,
    /// Owed to it and not yet paid.
    pub owed: u64,
}

impl Reputation {
    pub fn excluded(&self) -> bool {
        self.faults >= MAX_FAULTS
    }
}

/// Why a worker's message was refused. The text goes back on the wire.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no replica of unit {0} is assigned to you")]
    NotAssigned(u32),
    #[error("unit {0} does not exist")]
    NoSuchUnit(u32),
    #[error("your replica of unit {0} is no longer running (expired, lost or already committed)")]
    NotRunning(u32),
    #[error("you have not committed to unit {0}")]
    NotCommitted(u32),
    #[error("unit {0} is waiting for other commitments; you will be asked to reveal")]
    TooEarly(u32),
    #[error("the job is over")]
    JobOver,
}

/// What happened when a reveal was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevealEffect {
    /// The reveal did not open the worker's commitment: a fault.
    CommitmentMismatch,
    /// Recorded; the unit is still undecided.
    Pending,
    /// Recorded, and every live replica revealed without a quorum: one more was wanted.
    MoreReplicas { wanted: u8 },
    /// The unit was decided (see its state). `credited` agreed, `faulty` did not.
    Decided {
        credited: Vec<PeerId>,
        faulty: Vec<PeerId>,
    },
}

/// Answer to a commitment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitAck {
    /// Reveal now. Otherwise wait to be asked (or ask again later).
    pub reveal: bool,
    /// Workers that committed earlier and can now be asked to reveal.
    pub ask: Vec<PeerId>,
    /// The commitment is new (not a worker asking again): the state changed.
    pub new: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Running,
    Done,
    Cancelled,
}

/// One job as its submitter coordinates it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub spec: JobSpec,
    pub units: Vec<Unit>,
    pub status: JobStatus,
    /// Missed leases per worker in this job.
    pub misses: HashMap<PeerId, u32>,
    /// Where the scan for an open unit starts (units before it all have enough replicas or
    /// are decided).
    cursor: usize,
}

impl Job {
    pub fn new(spec: JobSpec) -> Self {
        let units = spec
            .units
            .iter()
            .map(|_| Unit {
                wanted: spec.replicas,
                replicas: Vec::new(),
                state: UnitState::Open,
            })
            .collect();
        Self {
            spec,
            units,
            status: JobStatus::Running,
            misses: HashMap::new(),
            cursor: 0,
        }
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        let mut accepted = 0;
        let mut failed = 0;
        for u in &self.units {
            match u.state {
                UnitState::Accepted { .. } => accepted += 1,
                UnitState::Failed { .. } => failed += 1,
                UnitState::Open => {}
            }
        }
        (accepted, failed, self.units.len() - accepted - failed)
    }

    /// Units that could use another replica now (for announcements).
    pub fn open_units(&self) -> usize {
        if self.status != JobStatus::Running {
            return 0;
        }
        self.units[self.cursor.min(self.units.len())..]
            .iter()
            .filter(|u| !u.decided() && u.live() < u.wanted as usize)
            .count()
    }

    fn finish_if_done(&mut self) {
        if self.status == JobStatus::Running && self.units.iter().all(Unit::decided) {
            self.status = JobStatus::Done;
        }
    }

    /// Gives `worker` a replica of the first unit that needs one and that `worker` never had.
    /// `None` when there is nothing for it (or it is excluded, see [`Reputation::excluded`]).
    pub fn assign(
        &mut self,
        worker: PeerId,
        submitter: &PeerId,
        reputation: &Reputation,
        now_ms: u64,
    ) -> Option<u32> {
        self.assign_spread(worker, submitter, reputation, now_ms, 0)
    }

    /// [`Job::assign`], choosing among the first [`SPREAD`] units that could take `worker` by
    /// `entropy` (random, from the caller): consecutive fetches by two identities of one
    /// attacker then rarely land on the same unit, so they rarely form its quorum alone.
    /// `entropy` 0 takes the first.
    pub fn assign_spread(
        &mut self,
        worker: PeerId,
        submitter: &PeerId,
        reputation: &Reputation,
        now_ms: u64,
        entropy: u64,
    ) -> Option<u32> {
        if self.status != JobStatus::Running
            || &worker == submitter
            || reputation.excluded()
            || self.misses.get(&worker).copied().unwrap_or(0) >= MAX_MISSES_PER_JOB
        {
            return None;
        }
        // Advance the cursor past units that need nothing more.
        while self.cursor < self.units.len() {
            let u = &self.units[self.cursor];
            if u.decided() || u.live() >= u.wanted as usize {
                self.cursor += 1;
            } else {
                break;
            }
        }
        let lease = self.spec.lease_ms;
        let max_issues = MAX_ISSUES_PER_REPLICA * self.spec.max_replicas as usize;
        let mut failed_now = false;
        let mut candidates: Vec<usize> = Vec::with_capacity(SPREAD);
        for (i, unit) in self.units.iter_mut().enumerate().skip(self.cursor) {
            if candidates.len() >= SPREAD {
                break;
            }
            if unit.decided() || unit.live() >= unit.wanted as usize || !unit.may_take(&worker) {
                continue;
            }
            if unit.replicas.len() >= max_issues {
                if unit.live() == 0 {
                    unit.state = UnitState::Failed {
                        error: format!(
                            "no worker finished it: issued {} times (lost, late or abandoned)",
                            unit.replicas.len()
                        ),
                        peers: vec![],
                        digest: None,
                    };
                    failed_now = true;
                }
                continue;
            }
            candidates.push(i);
        }
        if failed_now {
            self.finish_if_done();
        }
        let i = *candidates.get((entropy % SPREAD as u64) as usize % candidates.len().max(1))?;
        self.units[i].replicas.push(Replica {
            worker,
            issued_ms: now_ms,
            lease_until_ms: now_ms.saturating_add(lease),
            state: ReplicaState::Running,
            commitment: None,
            digest: None,
            outcome: None,
            reveal_by_ms: None,
            alive_until_ms: Some(now_ms.saturating_add(LIVENESS_MS)),
        });
        Some(i as u32)
    }

    /// A worker commits to the outcome of its replica of `unit`. Idempotent for the same
    /// commitment (a worker asking again whether it may reveal).
    pub fn commit(
        &mut self,
        worker: &PeerId,
        unit: u32,
        commitment: Digest,
        now_ms: u64,
    ) -> Result<CommitAck, Refusal> {
        if self.status == JobStatus::Cancelled {
            return Err(Refusal::JobOver);
        }
        let quorum = self.spec.quorum as usize;
        let u = self
            .units
            .get_mut(unit as usize)
            .ok_or(Refusal::NoSuchUnit(unit))?;
        let decided = u.decided();
        let r = u.replica_mut(worker).ok_or(Refusal::NotAssigned(unit))?;
        let mut new = match r.state {
            ReplicaState::Running if !decided => {
                r.state = ReplicaState::Committed;
                r.commitment = Some(commitment);
                true
            }
            ReplicaState::Committed if r.commitment == Some(commitment) => false,
            _ => return Err(Refusal::NotRunning(unit)),
        };
        let committed: Vec<PeerId> = u
            .replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Committed)
            .map(|r| r.worker)
            .collect();
        let reveal = u.fixed() >= quorum;
        if reveal {
            for r in u.replicas.iter_mut() {
                if r.state == ReplicaState::Committed && r.reveal_by_ms.is_none() {
                    r.reveal_by_ms = Some(now_ms.saturating_add(REVEAL_GRACE_MS));
                    new = true;
                }
            }
        }
        let ask = if reveal {
            committed.into_iter().filter(|w| w != worker).collect()
        } else {
            Vec::new()
        };
        Ok(CommitAck { reveal, ask, new })
    }

    /// Whether `digest` opens `worker`'s commitment for `unit` (checked before its result bytes
    /// are kept anywhere).
    pub fn opens(&self, worker: &PeerId, unit: u32, digest: &Digest) -> bool {
        self.units
            .get(unit as usize)
            .and_then(|u| u.replica(worker))
            .is_some_and(|r| r.commitment == Some(commitment(digest, worker)))
    }

    /// Whether `worker` may reveal its replica of `unit` now.
    pub fn may_reveal(&self, worker: &PeerId, unit: u32) -> Result<(), Refusal> {
        let u = self
            .units
            .get(unit as usize)
            .ok_or(Refusal::NoSuchUnit(unit))?;
        let r = u.replica(worker).ok_or(Refusal::NotAssigned(unit))?;
        if r.state != ReplicaState::Committed {
            return Err(Refusal::NotCommitted(unit));
        }
        if u.fixed() >= self.spec.quorum as usize || u.decided() {
            Ok(())
        } else {
            Err(Refusal::TooEarly(unit))
        }
    }

    /// A worker reveals its outcome. The caller has checked that a result's bytes hash to the
    /// outcome's result hash; this checks the commitment and decides the unit when it can.
    pub fn reveal(
        &mut self,
        worker: &PeerId,
        unit: u32,
        outcome: Outcome,
    ) -> Result<RevealEffect, Refusal> {
        self.may_reveal(worker, unit)?;
        let digest = outcome.digest();
        let quorum = self.spec.quorum as usize;
        let max_replicas = self.spec.max_replicas;
        let u = &mut self.units[unit as usize];
        let r = u.replica_mut(worker).expect("checked by may_reveal");
        if r.commitment != Some(commitment(&digest, worker)) {
            r.state = ReplicaState::Faulty;
            r.digest = Some(digest);
            // Its replica no longer counts: the unit may need another, and those still
            // holding an answer wait for a quorum of commitments again.
            self.cursor = self.cursor.min(unit as usize);
            u.requorum(quorum);
            return Ok(RevealEffect::CommitmentMismatch);
        }
        r.state = ReplicaState::Revealed;
        r.digest = Some(digest);
        r.outcome = Some(outcome);
        if u.decided() {
            // A late replica of a decided unit: credited if it agrees with the agreed outcome,
            // a fault if it contradicts one; nothing if nothing was agreed (no quorum, cancel).
            let agreed = match &u.state {
                UnitState::Accepted { digest: d, .. } => Some(*d),
                UnitState::Failed { digest: d, .. } => *d,
                UnitState::Open => None,
            };
            return Ok(match agreed {
                Some(d) if d == digest => RevealEffect::Decided {
                    credited: vec![*worker],
                    faulty: vec![],
                },
                Some(_) => {
                    let r = u.replica_mut(worker).expect("present");
                    r.state = ReplicaState::Faulty;
                    r.outcome = None;
                    RevealEffect::Decided {
                        credited: vec![],
                        faulty: vec![*worker],
                    }
                }
                None => RevealEffect::Decided {
                    credited: vec![],
                    faulty: vec![],
                },
            });
        }
        let mut groups: BTreeMap<Digest, Vec<PeerId>> = BTreeMap::new();
        for r in &u.replicas {
            if r.state == ReplicaState::Revealed {
                groups
                    .entry(r.digest.expect("revealed"))
                    .or_default()
                    .push(r.worker);
            }
        }
        if let Some((winner, peers)) = groups.iter().find(|(_, p)| p.len() >= quorum) {
            let winner = *winner;
            let peers = peers.clone();
            let outcome = u
                .replicas
                .iter()
                .find(|r| r.state == ReplicaState::Revealed && r.digest == Some(winner))
                .and_then(|r| r.outcome.clone())
                .expect("a revealed replica of the winning group holds its outcome");
            let mut faulty = Vec::new();
            for r in u.replicas.iter_mut() {
                if r.state == ReplicaState::Revealed && r.digest != Some(winner) {
                    r.state = ReplicaState::Faulty;
                    // What it claimed is not kept (an error text can be large).
                    r.outcome = None;
                    faulty.push(r.worker);
                }
            }
            u.state = match &outcome {
                Outcome::Ok { .. } => UnitState::Accepted {
                    digest: winner,
                    outcome,
                    peers: peers.clone(),
                },
                Outcome::Err { error, .. } => UnitState::Failed {
                    error: error.to_string(),
                    peers: peers.clone(),
                    digest: Some(winner),
                },
            };
            self.finish_if_done();
            return Ok(RevealEffect::Decided {
                credited: peers,
                faulty,
            });
        }
        let pending = u
            .replicas
            .iter()
            .any(|r| matches!(r.state, ReplicaState::Running | ReplicaState::Committed));
        let revealed: usize = groups.values().map(Vec::len).sum();
        if pending || revealed < u.wanted as usize {
            return Ok(RevealEffect::Pending);
        }
        // Every live replica revealed and no digest has a quorum.
        let needed = (u.wanted as usize + 1).max(revealed + 1);
        if needed <= max_replicas as usize {
            u.wanted = needed as u8;
            self.cursor = self.cursor.min(unit as usize);
            Ok(RevealEffect::MoreReplicas { wanted: u.wanted })
        } else {
            u.state = UnitState::Failed {
                error: format!(
                    "no {quorum} of {revealed} replicas agreed (up to {max_replicas} were tried)"
                ),
                peers: vec![],
                digest: None,
            };
            // Nobody is credited and nobody can be told apart: no fault either.
            self.finish_if_done();
            Ok(RevealEffect::Decided {
                credited: vec![],
                faulty: vec![],
            })
        }
    }

    /// Replicas still running past their lease, and committed ones that did not reveal within
    /// [`REVEAL_GRACE_MS`] of being asked, become [`ReplicaState::Expired`] and their units open
    /// again. Returns the workers that missed, one entry per replica.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(u32, PeerId)> {
        let mut missed = Vec::new();
        let quorum = self.spec.quorum as usize;
        for (i, u) in self.units.iter_mut().enumerate() {
            if u.decided() {
                continue;
            }
            for r in u.replicas.iter_mut() {
                let late = match r.state {
                    ReplicaState::Running => {
                        r.lease_until_ms <= now_ms || r.alive_until_ms.is_some_and(|t| t <= now_ms)
                    }
                    ReplicaState::Committed => r.reveal_by_ms.is_some_and(|t| t <= now_ms),
                    _ => false,
                };
                if late {
                    r.state = ReplicaState::Expired;
                    missed.push((i as u32, r.worker));
                }
            }
            if missed.last().is_some_and(|(unit, _)| *unit == i as u32) {
                u.requorum(quorum);
            }
        }
        self.note_misses(&missed);
        missed
    }

    /// `worker` went away: its running replicas are re-issued. Committed ones stay (it holds
    /// its result and will reveal when it is back).
    pub fn lost(&mut self, worker: &PeerId) -> Vec<u32> {
        let mut lost = Vec::new();
        for (i, u) in self.units.iter_mut().enumerate() {
            if u.decided() {
                continue;
            }
            for r in u.replicas.iter_mut() {
                if &r.worker == worker && r.state == ReplicaState::Running {
                    r.state = ReplicaState::Lost;
                    lost.push(i as u32);
                }
            }
        }
        let missed: Vec<_> = lost.iter().map(|u| (*u, *worker)).collect();
        self.note_misses(&missed);
        lost
    }

    /// One miss per worker per event: a worker that vanishes with a unit running and the next
    /// one waiting missed once, not twice.
    fn note_misses(&mut self, missed: &[(u32, PeerId)]) {
        if let Some(first) = missed.iter().map(|(u, _)| *u as usize).min() {
            self.cursor = self.cursor.min(first);
        }
        let workers: std::collections::BTreeSet<PeerId> = missed.iter().map(|(_, w)| *w).collect();
        for w in workers {
            *self.misses.entry(w).or_default() += 1;
        }
    }

    /// Stops the job: open units fail as cancelled; nothing more is assigned or accepted.
    pub fn cancel(&mut self) {
        if self.status != JobStatus::Running {
            return;
        }
        for u in &mut self.units {
            if !u.decided() {
                u.state = UnitState::Failed {
                    error: "cancelled".into(),
                    peers: vec![],
                    digest: None,
                };
            }
        }
        self.status = JobStatus::Cancelled;
    }

    /// Running replicas per worker (for the per-worker lease budget).
    pub fn running_of(&self, worker: &PeerId) -> usize {
        if self.status != JobStatus::Running {
            return 0;
        }
        self.units
            .iter()
            .filter(|u| !u.decided())
            .flat_map(|u| &u.replicas)
            .filter(|r| &r.worker == worker && r.state == ReplicaState::Running)
            .count()
    }

    /// The earliest lease or reveal deadline still open (when to call [`Job::expire`] next).
    pub fn next_expiry(&self) -> Option<u64> {
        self.units
            .iter()
            .filter(|u| !u.decided())
            .flat_map(|u| &u.replicas)
            .filter_map(|r| match r.state {
                ReplicaState::Running => Some(
                    r.alive_until_ms
                        .map_or(r.lease_until_ms, |a| a.min(r.lease_until_ms)),
                ),
                ReplicaState::Committed => r.reveal_by_ms,
                _ => None,
            })
            .min()
    }

    /// A worker says it is still working on its replica of `unit`.
    pub fn progress(&mut self, worker: &PeerId, unit: u32, now_ms: u64) -> Result<(), Refusal> {
        let u = self
            .units
            .get_mut(unit as usize)
            .ok_or(Refusal::NoSuchUnit(unit))?;
        let r = u.replica_mut(worker).ok_or(Refusal::NotAssigned(unit))?;
        if r.state != ReplicaState::Running {
            return Err(Refusal::NotRunning(unit));
        }
        r.alive_until_ms = Some(now_ms.saturating_add(LIVENESS_MS));
        Ok(())
    }

    /// After the submitter was away (restarted): running replicas get [`LIVENESS_MS`] from
    /// `now_ms` for their workers to report progress (the time they were away is not held
    /// against them), and reveal deadlines restart, so workers that held on can come back.
    pub fn resumed(&mut self, now_ms: u64) {
        for u in self.units.iter_mut().filter(|u| !u.decided()) {
            for r in u.replicas.iter_mut() {
                match r.state {
                    ReplicaState::Running => {
                        r.alive_until_ms = Some(now_ms.saturating_add(LIVENESS_MS));
                    }
                    ReplicaState::Committed if r.reveal_by_ms.is_some() => {
                        r.reveal_by_ms = Some(now_ms.saturating_add(REVEAL_GRACE_MS))
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
