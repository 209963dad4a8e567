//! The submitter's side: jobs this node coordinates. Submission (validate the program, store
//! program and inputs as blobs), handing out replicas, commitments, reveals, lease expiry,
//! pulls of held outcomes, announcements and payments.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use agora_files::store::Kind;
use libp2p::gossipsub::MessageAcceptance;
use libp2p_identity::PeerId;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Grid, GridError, GridEvent, budget, db::JobRecord, now_ms};
use crate::{
    proto::{Job, JobStatus, Refusal, ReplicaState, Reputation, RevealEffect, UnitState},
    wire::{
        self, Announce, Assignment, Digest, JobSpec, MAX_INPUT, MAX_PROGRAM, MAX_RESULT, Outcome,
        Request, Response, RunFailure, UnitSpec,
    },
};
use agora_ledger::service::LedgerError;

/// How long a pull of a held outcome may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often committed replicas that may reveal are pulled again.
const PULL_EVERY: Duration = Duration::from_secs(5);
/// How often owed payments are sent.
const PAY_EVERY: Duration = Duration::from_secs(2);
/// How often a submitter with open units announces them.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
/// Connected peers told of a new job directly.
const MAX_OFFERS: usize = 64;
/// How long a worker waits before asking again when there is nothing for it now…
const RETRY_MS: u64 = 2_000;
/// …and when this node has no open unit at all.
const IDLE_RETRY_MS: u64 = 30_000;

/// What `agora grid run` asks for.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub program: PathBuf,
    pub inputs: Vec<PathBuf>,
    pub replicas: u8,
    pub quorum: u8,
    pub max_replicas: u8,
    pub fuel: u64,
    pub memory: u64,
    pub lease: Duration,
    pub pay: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            program: PathBuf::new(),
            inputs: Vec::new(),
            replicas: 2,
            quorum: 2,
            max_replicas: 5,
            fuel: 10_000_000_000,
            memory: 64 * 1024 * 1024,
            lease: Duration::from_secs(600),
            pay: 0,
        }
    }
}

pub(super) struct SubmitState {
    pub jobs: BTreeMap<Digest, JobRecord>,
    pub workers: HashMap<PeerId, Reputation>,
    /// Units being pulled now (not pulled twice at once).
    pulling: HashSet<(Digest, u32, PeerId)>,
    providing: bool,
}

impl SubmitState {
    pub fn load(db: &super::db::GridDb) -> Result<Self, GridError> {
        let now = now_ms();
        let jobs = db
            .jobs()?
            .into_iter()
            .map(|(id, mut r)| {
                // Workers get their full time again after this node was away.
                r.job.resumed(now);
                (id, r)
            })
            .collect();
        let workers = db.workers()?.into_iter().collect();
        Ok(Self {
            jobs,
            workers,
            pulling: HashSet::new(),
            providing: false,
        })
    }

    fn open_units(&self) -> usize {
        self.jobs.values().map(|r| r.job.open_units()).sum()
    }

    /// What this node says about its open units (gossip and offers).
    fn announcement(&self) -> Announce {
        Announce {
            open_units: self.open_units().min(u32::MAX as usize) as u32,
            max_fuel: self
                .jobs
                .values()
                .filter(|r| r.job.status == JobStatus::Running)
                .map(|r| r.job.spec.fuel)
                .max()
                .unwrap_or(0),
        }
    }

    /// Changes `peer`'s reputation with `change` and stores it (nothing if the table is full of
    /// workers that must stay, see [`Self::worker_entry`]).
    fn update_worker(
        &mut self,
        db: &super::db::GridDb,
        peer: PeerId,
        change: impl FnOnce(&mut Reputation),
    ) {
        if let Some(rep) = self.worker_entry(peer) {
            change(rep);
            if let Err(e) = db.put_worker(&peer, rep) {
                tracing::warn!(%peer, "cannot store a grid worker's reputation: {e}");
            }
        }
    }

    /// The reputation of `peer`, made room for if it is new (the least proven worker without
    /// faults or debts is forgotten). `None` if the table is full of workers that must stay.
    fn worker_entry(&mut self, peer: PeerId) -> Option<&mut Reputation> {
        if !self.workers.contains_key(&peer) && self.workers.len() >= budget::MAX_WORKERS {
            let victim = self
                .workers
                .iter()
                .filter(|(_, r)| r.owed == 0)
                .min_by_key(|(_, r)| (r.valid, r.fuel))
                .map(|(p, _)| *p)?;
            self.workers.remove(&victim);
        }
        Some(self.workers.entry(peer).or_default())
    }
}

/// One unit as `agora grid status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct UnitView {
    pub index: u32,
    pub input: String,
    pub input_hash: String,
    pub state: &'static str,
    pub result_hash: Option<String>,
    pub peers: Vec<String>,
    pub fuel: Option<u64>,
    pub error: Option<String>,
    pub replicas: usize,
}

/// A job as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    pub job: String,
    pub status: JobStatus,
    pub program: String,
    pub units: usize,
    pub validated: usize,
    pub failed: usize,
    pub open: usize,
    pub replicas: u8,
    pub quorum: u8,
    pub fuel: u64,
    pub memory: u64,
    pub pay: u64,
    pub paid: u64,
    pub owed: u64,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    /// Every unit (`grid status`), only the decided ones, or none (`grid jobs`).
    pub results: Vec<UnitView>,
}

/// A worker as `agora grid workers` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerView {
    pub peer: String,
    pub valid: u64,
    pub faults: u32,
    pub missed: u64,
    pub fuel: u64,
    pub paid: u64,
    pub owed: u64,
    pub excluded: bool,
    pub running: usize,
}

/// Which units a [`JobView`] lists.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Units {
    None,
    Decided,
    All,
}

fn view(record: &JobRecord, units: Units) -> JobView {
    let job = &record.job;
    let (validated, failed, open) = job.counts();
    let results = job
        .units
        .iter()
        .enumerate()
        .filter(|(_, u)| units == Units::All || units == Units::Decided && u.decided())
        .map(|(i, u)| {
            let spec = &job.spec.units[i];
            let (state, result_hash, peers, fuel, error) = match &u.state {
                UnitState::Open => ("open", None, vec![], None, None),
                UnitState::Accepted { outcome, peers, .. } => match outcome {
                    Outcome::Ok { result, fuel, .. } => (
                        "accepted",
                        Some(hex::encode(result)),
                        peers.clone(),
                        Some(*fuel),
                        None,
                    ),
                    Outcome::Err { .. } => ("failed", None, peers.clone(), None, None),
                },
                UnitState::Failed { error, peers, .. } => {
                    let fuel = u
                        .replicas
                        .iter()
                        .find(|r| r.state == ReplicaState::Revealed)
                        .and_then(|r| r.outcome.as_ref())
                        .map(Outcome::fuel);
                    ("failed", None, peers.clone(), fuel, Some(error.clone()))
                }
            };
            UnitView {
                index: i as u32,
                input: spec.name.clone(),
                input_hash: hex::encode(spec.input),
                state,
                result_hash,
                peers: peers.iter().map(|p| p.to_string()).collect(),
                fuel,
                error,
                replicas: u.replicas.len(),
            }
        })
        .collect();
    JobView {
        job: hex::encode(job.spec.id()),
        status: job.status,
        program: hex::encode(job.spec.program),
        units: job.units.len(),
        validated,
        failed,
        open,
        replicas: job.spec.replicas,
        quorum: job.spec.quorum,
        fuel: job.spec.fuel,
        memory: job.spec.memory,
        pay: job.spec.pay,
        paid: record.paid,
        owed: record.owed.iter().map(|(_, a)| a).sum::<u64>() + record.paying,
        created_ms: job.spec.created_ms,
        finished_ms: record.finished_ms,
        results,
    }
}

pub fn parse_job_id(s: &str) -> Result<Digest, GridError> {
    let bytes = hex::decode(s.trim())
        .map_err(|_| GridError::NoSuchJob(format!("{s:?} (a job id is 64 hex digits)")))?;
    bytes
        .try_into()
        .map_err(|_| GridError::NoSuchJob(format!("{s:?} (a job id is 64 hex digits)")))
}

/// Reads a program given as `.wasm` or `.wat` text.
fn read_program(path: &Path) -> Result<Vec<u8>, GridError> {
    let bytes = agora_store::read_limited(path, MAX_PROGRAM).map_err(|e| GridError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes);
    }
    wat::parse_bytes(&bytes)
        .map(|b| b.into_owned())
        .map_err(|e| {
            GridError::Program(format!(
                "{} is neither wasm nor valid wat: {e}",
                path.display()
            ))
        })
}

impl Grid {
    /// Submits a job: validates the program, stores program and inputs as blobs, persists the
    /// job and announces it. Returns its id at once; progress through [`Grid::job`].
    pub async fn submit(self: &Arc<Self>, opts: RunOptions) -> Result<JobView, GridError> {
        if opts.inputs.is_empty() {
            return Err(GridError::BadJob(
                "no inputs: give --input FILE (repeatable) or --inputs DIR".into(),
            ));
        }
        if opts.pay > 0 && self.ledger.is_none() {
            return Err(GridError::BadJob(
                "--pay needs a ledger, and this node follows none (start it with --genesis)".into(),
            ));
        }
        let mut names = HashSet::new();
        for p in &opts.inputs {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.is_empty() {
                return Err(GridError::BadJob(format!("{} is not a file", p.display())));
            }
            if !names.insert(name.clone()) {
                return Err(GridError::BadJob(format!(
                    "two inputs are named {name:?}; results are written as <input name>.out, so names must differ"
                )));
            }
        }
        let grid = self.clone();
        let spec = Self::blocking(move || -> Result<JobSpec, GridError> {
            let program = read_program(&opts.program)?;
            grid.runner
                .validate(&program, opts.memory)
                .map_err(GridError::Program)?;
            let store = grid.files.store();
            let name = opts
                .program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "program.wasm".into());
            let program_hash = store
                .import_bytes(&program, &name, Kind::Pinned, false)
                .map_err(|e| GridError::Files(e.to_string()))?;
            let mut units = Vec::new();
            for path in &opts.inputs {
                let meta = std::fs::metadata(path).map_err(|source| GridError::Io {
                    path: path.clone(),
                    source,
                })?;
                if !meta.is_file() {
                    return Err(GridError::BadJob(format!(
                        "{} is not a file",
                        path.display()
                    )));
                }
                if meta.len() > MAX_INPUT {
                    return Err(GridError::BadJob(format!(
                        "{} is {} bytes; a unit's input may be at most {MAX_INPUT}",
                        path.display(),
                        meta.len()
                    )));
                }
                let (hash, size) = store
                    .import_file(path, true, Kind::Pinned, &AtomicU64::new(0))
                    .map_err(|e| GridError::Files(format!("{}: {e}", path.display())))?;
                units.push(UnitSpec {
                    name: path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    input: *hash.as_bytes(),
                    size,
                });
            }
            let spec = JobSpec {
                submitter: grid.me,
                program: *program_hash.as_bytes(),
                program_size: program.len() as u64,
                units,
                replicas: opts.replicas,
                quorum: opts.quorum,
                max_replicas: opts.max_replicas.max(opts.replicas),
                fuel: opts.fuel,
                memory: opts.memory,
                lease_ms: opts.lease.as_millis() as u64,
                pay: opts.pay,
                created_ms: now_ms(),
            };
            spec.check().map_err(GridError::BadJob)?;
            let id = spec.id();
            let record = JobRecord {
                job: Job::new(spec.clone()),
                paid: 0,
                owed: Vec::new(),
                results: Vec::new(),
                finished_ms: None,
                max_fuel_seen: 0,
                paying: 0,
            };
            let mut s = grid.submit.lock().unwrap();
            grid.db.put_job(&id, &record, true)?;
            s.jobs.insert(id, record);
            // Keep at most MAX_JOBS: drop the oldest finished ones.
            while s.jobs.len() > budget::MAX_JOBS {
                let Some(old) = s
                    .jobs
                    .iter()
                    .filter(|(_, r)| {
                        r.job.status != JobStatus::Running && r.owed.is_empty() && r.paying == 0
                    })
                    .min_by_key(|(_, r)| r.job.spec.created_ms)
                    .map(|(id, _)| *id)
                else {
                    break;
                };
                s.jobs.remove(&old);
                let _ = std::fs::remove_dir_all(grid.spool_dir(&old));
                grid.db.remove_job(&old)?;
            }
            Ok(spec)
        })
        .await?;
        tracing::info!(job = %hex::encode(spec.id()), units = spec.units.len(), "grid job submitted");
        self.announce().await;
        // Peers we are connected to hear of it at once (gossip may have no mesh yet).
        self.offer_connected().await;
        self.job(&hex::encode(spec.id()), true)
    }

    pub fn job(&self, id: &str, detail: bool) -> Result<JobView, GridError> {
        let id = parse_job_id(id)?;
        let s = self.submit.lock().unwrap();
        s.jobs
            .get(&id)
            .map(|r| view(r, if detail { Units::All } else { Units::Decided }))
            .ok_or_else(|| GridError::NoSuchJob(hex::encode(id)))
    }

    /// Whether job `id` (hex) is known and its status.
    pub fn job_status(&self, id: &str) -> Option<JobStatus> {
        let id = parse_job_id(id).ok()?;
        self.submit
            .lock()
            .unwrap()
            .jobs
            .get(&id)
            .map(|r| r.job.status)
    }

    pub fn jobs(&self) -> Vec<JobView> {
        let s = self.submit.lock().unwrap();
        let mut v: Vec<_> = s.jobs.values().map(|r| view(r, Units::None)).collect();
        v.sort_by_key(|j| std::cmp::Reverse(j.created_ms));
        v
    }

    pub fn workers(&self) -> Vec<WorkerView> {
        let s = self.submit.lock().unwrap();
        let mut v: Vec<_> = s
            .workers
            .iter()
            .map(|(p, r)| WorkerView {
                peer: p.to_string(),
                valid: r.valid,
                faults: r.faults,
                missed: r.missed,
                fuel: r.fuel,
                paid: r.paid,
                owed: r.owed,
                excluded: r.excluded(),
                running: s.jobs.values().map(|j| j.job.running_of(p)).sum(),
            })
            .collect();
        v.sort_by(|a, b| b.valid.cmp(&a.valid).then(a.peer.cmp(&b.peer)));
        v
    }

    pub async fn cancel(self: &Arc<Self>, id: &str) -> Result<JobView, GridError> {
        let id = parse_job_id(id)?;
        let grid = self.clone();
        let view = Self::blocking(move || -> Result<JobView, GridError> {
            let mut s = grid.submit.lock().unwrap();
            let record = s
                .jobs
                .get_mut(&id)
                .ok_or_else(|| GridError::NoSuchJob(hex::encode(id)))?;
            record.job.cancel();
            let _ = std::fs::remove_dir_all(grid.spool_dir(&id));
            record.finished_ms.get_or_insert(now_ms());
            grid.db.put_job(&id, record, true)?;
            Ok(view(record, Units::Decided))
        })
        .await?;
        self.emit(GridEvent::JobFinished {
            job: view.job.clone(),
            status: "cancelled".into(),
        });
        Ok(view)
    }

    /// Writes every accepted result of job `id` to `out/<input name>.out`. Returns the files.
    pub async fn export_results(&self, id: &str, out: PathBuf) -> Result<Vec<PathBuf>, GridError> {
        let id = parse_job_id(id)?;
        let (names, results) = {
            let s = self.submit.lock().unwrap();
            let r = s
                .jobs
                .get(&id)
                .ok_or_else(|| GridError::NoSuchJob(hex::encode(id)))?;
            let names: Vec<String> = r.job.spec.units.iter().map(|u| u.name.clone()).collect();
            (names, r.results.clone())
        };
        let store = self.files.store().clone();
        Self::blocking(move || -> Result<Vec<PathBuf>, GridError> {
            std::fs::create_dir_all(&out).map_err(|source| GridError::Io {
                path: out.clone(),
                source,
            })?;
            let mut written = Vec::new();
            for (unit, hash) in results {
                let Some(name) = names.get(unit as usize) else {
                    continue;
                };
                let bytes = store
                    .read_small(&blake3::Hash::from_bytes(hash), MAX_RESULT as u64)
                    .map_err(|e| GridError::Files(e.to_string()))?;
                let path = out.join(format!("{name}.out"));
                agora_store::write_atomic(&path, &bytes, 0o644).map_err(|e| GridError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                written.push(path);
            }
            Ok(written)
        })
        .await
    }

    pub(super) async fn on_fetch(
        self: Arc<Self>,
        worker: PeerId,
        slots: u8,
        fuel_per_sec: u64,
        memory: u64,
    ) -> Response {
        let slots = slots.min(wire::MAX_SLOTS) as usize;
        let grid = self.clone();
        let given = Self::blocking(move || {
            let mut s = grid.submit.lock().unwrap();
            let now = now_ms();
            let running: usize = s.jobs.values().map(|j| j.job.running_of(&worker)).sum();
            let Some(rep) = s.worker_entry(worker).cloned() else {
                return Vec::new();
            };
            // A new identity costs nothing: until one of its results is accepted here it may
            // hold only a few replicas.
            let cap = if rep.valid == 0 {
                budget::MAX_RUNNING_UNPROVEN
            } else {
                budget::MAX_RUNNING_PER_WORKER
            };
            let room = slots.min(cap.saturating_sub(running));
            if room == 0 {
                return Vec::new();
            }
            let mut order: Vec<(u64, Digest)> = s
                .jobs
                .iter()
                .filter(|(_, r)| r.job.status == JobStatus::Running)
                .map(|(id, r)| (r.job.spec.created_ms, *id))
                .collect();
            order.sort();
            let mut given = Vec::new();
            for (_, id) in order {
                let record = s.jobs.get_mut(&id).expect("listed");
                let spec = &record.job.spec;
                // Deadline-aware: only units the worker can finish within their lease at the
                // speed it measured (0 = not measured yet), judged by the fuel accepted units
                // of this job needed (unknown before the first), within its memory.
                let expected = record.max_fuel_seen;
                if spec.memory > memory
                    || (fuel_per_sec > 0
                        && expected > 0
                        && expected / fuel_per_sec > spec.lease_ms / 1000)
                {
                    continue;
                }
                let mut changed = false;
                while given.len() < room {
                    let Some(unit) = record.job.assign_spread(
                        worker,
                        &grid.me,
                        &rep,
                        now,
                        rand::random::<u64>(),
                    ) else {
                        break;
                    };
                    changed = true;
                    let spec = &record.job.spec;
                    let u = &spec.units[unit as usize];
                    given.push(Assignment {
                        job: id,
                        unit,
                        program: spec.program,
                        program_size: spec.program_size,
                        input: u.input,
                        input_size: u.size,
                        fuel: spec.fuel,
                        memory: spec.memory,
                        lease_ms: spec.lease_ms,
                        expected_fuel: expected,
                        seed: spec.seed(unit),
                        input_inline: Vec::new(),
                    });
                }
                // Durable: a worker keeps computing what it was given while this node is away,
                // and its result must find its replica after a restart.
                if changed && let Err(e) = grid.db.put_job(&id, record, true) {
                    tracing::warn!("cannot store grid job: {e}");
                }
                if given.len() >= room {
                    break;
                }
            }
            drop(s);
            // Small inputs travel inside the assignment (read outside the lock).
            let store = grid.files.store();
            let mut inline = 0;
            for a in &mut given {
                if a.input_size <= wire::MAX_INLINE_INPUT
                    && inline + a.input_size <= wire::MAX_INLINE_TOTAL
                    && let Ok(bytes) =
                        store.read_small(&blake3::Hash::from_bytes(a.input), a.input_size)
                {
                    inline += a.input_size;
                    a.input_inline = bytes;
                }
            }
            given
        })
        .await;
        if given.is_empty() {
            // With nothing open anywhere, workers hear of new work by announcement or offer:
            // they need not ask often.
            let open = self.submit.lock().unwrap().open_units();
            Response::NoWork {
                retry_ms: if open == 0 { IDLE_RETRY_MS } else { RETRY_MS },
            }
        } else {
            let units: Vec<u32> = given.iter().map(|a| a.unit).collect();
            tracing::debug!(%worker, ?units, "grid units assigned");
            Response::Assign(given)
        }
    }

    pub(super) async fn on_commit(
        self: Arc<Self>,
        worker: PeerId,
        job: Digest,
        unit: u32,
        commitment: Digest,
    ) -> Result<Response, String> {
        let grid = self.clone();
        let ack = Self::blocking(move || {
            let mut s = grid.submit.lock().unwrap();
            let Some(record) = s.jobs.get_mut(&job) else {
                return Ok(None);
            };
            let ack = record.job.commit(&worker, unit, commitment, now_ms());
            if ack.as_ref().is_ok_and(|a| a.new)
                && let Err(e) = grid.db.put_job(&job, record, false)
            {
                tracing::warn!("cannot store grid job: {e}");
            }
            ack.map(Some)
        })
        .await;
        tracing::debug!(%worker, job = %hex::encode(job), unit, "commitment: {ack:?}");
        match ack {
            Ok(None) => Ok(Response::Gone),
            Ok(Some(ack)) => {
                for other in ack.ask {
                    self.clone().spawn_pull(job, unit, other);
                }
                Ok(Response::Committed { reveal: ack.reveal })
            }
            Err(refusal) => {
                self.net.admission().refuse(budget::REFUSED_UNASSIGNED);
                Err(refusal.to_string())
            }
        }
    }

    pub(super) async fn on_reveal(
        self: Arc<Self>,
        worker: PeerId,
        job: Digest,
        unit: u32,
        outcome: Outcome,
        result: Vec<u8>,
    ) -> Result<Response, String> {
        // The bytes must be what the outcome claims before anything is kept.
        match &outcome {
            Outcome::Ok {
                result: hash, size, ..
            } => {
                if result.len() as u64 != *size
                    || result.len() > MAX_RESULT
                    || blake3::hash(&result).as_bytes() != hash
                {
                    self.net.admission().refuse(budget::REFUSED_RESULT);
                    return Err("the result bytes do not match the revealed hash and size".into());
                }
            }
            Outcome::Err { error, .. } => {
                if !result.is_empty() {
                    self.net.admission().refuse(budget::REFUSED_RESULT);
                    return Err("an error outcome carries no result bytes".into());
                }
                if let RunFailure::Trap { message } = error
                    && message.len() > budget::MAX_ERROR_TEXT
                {
                    self.net.admission().refuse(budget::REFUSED_RESULT);
                    return Err(format!(
                        "an error text over {} bytes (workers truncate to it)",
                        budget::MAX_ERROR_TEXT
                    ));
                }
            }
        }
        let opens = {
            let s = self.submit.lock().unwrap();
            match s.jobs.get(&job) {
                None => return Ok(Response::Gone),
                Some(r) => match r.job.may_reveal(&worker, unit) {
                    Ok(()) => {
                        r.job.status == JobStatus::Running
                            && r.job.opens(&worker, unit, &outcome.digest())
                    }
                    // Its answer is fixed; a quorum of commitments is not (a replica dropped
                    // out): it keeps holding and is asked again.
                    Err(Refusal::TooEarly(_)) => return Ok(Response::Pending),
                    Err(refusal) => {
                        drop(s);
                        self.net.admission().refuse(budget::REFUSED_UNASSIGNED);
                        return Err(refusal.to_string());
                    }
                },
            }
        };
        let grid = self.clone();
        let worker_bytes_hash = match &outcome {
            Outcome::Ok { result: h, .. } => Some(*h),
            Outcome::Err { .. } => None,
        };
        let (effect, decided_event, finished) = Self::blocking(move || {
            // Spool the verified bytes first (only a reveal that opens its commitment, of a
            // running job): if this reveal wins, they become the result.
            if opens
                && let Outcome::Ok { result: hash, .. } = &outcome
                && let Err(e) = spool(&grid.spool_path(&job, hash), &result, &worker)
            {
                // The job may have ended meanwhile (its spool removed): then nothing needs
                // these bytes.
                let running = grid
                    .submit
                    .lock()
                    .unwrap()
                    .jobs
                    .get(&job)
                    .is_some_and(|r| r.job.status == JobStatus::Running);
                if running {
                    return Err(format!("cannot keep the result: {e}"));
                }
            }
            let mut s = grid.submit.lock().unwrap();
            let Some(record) = s.jobs.get_mut(&job) else {
                return Ok::<_, String>((None, None, false));
            };
            let effect = record
                .job
                .reveal(&worker, unit, outcome)
                .map_err(|e| e.to_string())?;
            let mut decided_event = None;
            let mut credited = Vec::new();
            let mut faulty = Vec::new();
            match &effect {
                RevealEffect::CommitmentMismatch => faulty.push(worker),
                RevealEffect::Decided {
                    credited: c,
                    faulty: f,
                } => {
                    credited = c.clone();
                    faulty = f.clone();
                    let u = &record.job.units[unit as usize];
                    if let UnitState::Accepted {
                        outcome: Outcome::Ok { result: hash, .. },
                        ..
                    } = &u.state
                    {
                        if !record.results.iter().any(|(i, _)| *i == unit) {
                            // Into the files store: the result is a blob like any other.
                            let bytes = std::fs::read(grid.spool_path(&job, hash))
                                .ok()
                                .filter(|b| blake3::hash(b).as_bytes() == hash)
                                .or_else(|| {
                                    (worker_bytes_hash == Some(*hash)).then(|| result.clone())
                                })
                                .ok_or("the spooled result is gone or damaged")?;
                            let name = format!("{}.out", record.job.spec.units[unit as usize].name);
                            grid.files
                                .store()
                                .import_bytes(&bytes, &name, Kind::Own, false)
                                .map_err(|e| format!("cannot store the result: {e}"))?;
                            record.results.push((unit, *hash));
                        }
                        decided_event = Some(true);
                    } else if u.decided() {
                        decided_event = Some(false);
                    }
                }
                _ => {}
            }
            let fuel = match &record.job.units[unit as usize].state {
                UnitState::Accepted { outcome, .. } => outcome.fuel(),
                _ => 0,
            };
            record.max_fuel_seen = record.max_fuel_seen.max(fuel);
            let pay = record.job.spec.pay;
            for p in &credited {
                if pay > 0 {
                    match record.owed.iter_mut().find(|(w, _)| w == p) {
                        Some((_, a)) => *a += pay,
                        None => record.owed.push((*p, pay)),
                    }
                }
            }
            let finished = record.job.status != JobStatus::Running && record.finished_ms.is_none();
            if finished {
                record.finished_ms = Some(now_ms());
                let _ = std::fs::remove_dir_all(grid.spool_dir(&job));
            }
            if let Err(e) = grid.db.put_job(&job, record, true) {
                tracing::warn!("cannot store grid job: {e}");
            }
            for p in &credited {
                s.update_worker(&grid.db, *p, |rep| {
                    rep.valid += 1;
                    rep.fuel = rep.fuel.saturating_add(fuel);
                    rep.owed = rep.owed.saturating_add(pay);
                });
            }
            for p in &faulty {
                s.update_worker(&grid.db, *p, |rep| {
                    rep.faults = rep.faults.saturating_add(1)
                });
            }
            Ok((Some((effect, faulty)), decided_event, finished))
        })
        .await?;
        let Some((effect, faulty)) = effect else {
            return Ok(Response::Gone);
        };
        let job_hex = hex::encode(job);
        for p in faulty {
            let reason = if effect == RevealEffect::CommitmentMismatch {
                "the reveal does not open its commitment"
            } else {
                "outvoted by the quorum"
            };
            tracing::warn!(peer = %p, job = %job_hex, unit, "grid worker fault: {reason}");
            self.emit(GridEvent::WorkerFault {
                peer: p.to_string(),
                reason: reason.into(),
            });
        }
        if let Some(accepted) = decided_event {
            self.emit(GridEvent::UnitDecided {
                job: job_hex.clone(),
                unit,
                accepted,
            });
        }
        if finished {
            self.emit(GridEvent::JobFinished {
                job: job_hex,
                status: "done".into(),
            });
        }
        self.changed.notify_waiters();
        if matches!(
            effect,
            RevealEffect::CommitmentMismatch | RevealEffect::MoreReplicas { .. }
        ) {
            self.offer_connected().await;
        }
        Ok(match effect {
            RevealEffect::CommitmentMismatch => Response::Revealed {
                decided: false,
                accepted: false,
            },
            RevealEffect::Decided { credited, .. } => Response::Revealed {
                decided: true,
                accepted: credited.contains(&worker),
            },
            _ => Response::Revealed {
                decided: false,
                accepted: false,
            },
        })
    }

    /// In memory only: a restart gives every running replica its liveness time anyway.
    pub(super) fn on_progress(&self, worker: PeerId, job: Digest, unit: u32) -> Response {
        let mut s = self.submit.lock().unwrap();
        let alive = s
            .jobs
            .get_mut(&job)
            .is_some_and(|r| r.job.progress(&worker, unit, now_ms()).is_ok());
        if alive {
            Response::Pending
        } else {
            Response::Gone
        }
    }

    pub(super) fn on_settled(&self, _worker: PeerId, job: Digest, unit: u32) -> Response {
        let s = self.submit.lock().unwrap();
        match s
            .jobs
            .get(&job)
            .and_then(|r| r.job.units.get(unit as usize))
        {
            Some(u) if !u.decided() => Response::Pending,
            _ => Response::Gone,
        }
    }

    /// Where verified result bytes of `job` wait until their unit is decided.
    fn spool_dir(&self, job: &Digest) -> PathBuf {
        self.dir.join("spool").join(hex::encode(job))
    }

    fn spool_path(&self, job: &Digest, result: &Digest) -> PathBuf {
        self.spool_dir(job).join(hex::encode(result))
    }

    /// Asks `worker` to reveal its held outcome of `unit`.
    fn spawn_pull(self: Arc<Self>, job: Digest, unit: u32, worker: PeerId) {
        if !self
            .submit
            .lock()
            .unwrap()
            .pulling
            .insert((job, unit, worker))
        {
            return;
        }
        tokio::spawn(async move {
            let response = self
                .net
                .request(
                    worker,
                    wire::PROTOCOL,
                    wire::encode(&Request::Pull { job, unit }),
                    PULL_TIMEOUT,
                )
                .await;
            match response.map(|b| wire::decode::<Response>(&b)) {
                Ok(Ok(Response::Reveal { outcome, result })) => {
                    if let Err(e) = self
                        .clone()
                        .on_reveal(worker, job, unit, outcome, result)
                        .await
                    {
                        tracing::debug!(%worker, "pulled reveal refused: {e}");
                    }
                }
                Ok(other) => tracing::debug!(%worker, "pull answered {other:?}"),
                Err(e) => tracing::debug!(%worker, "pull failed: {e}"),
            }
            self.submit
                .lock()
                .unwrap()
                .pulling
                .remove(&(job, unit, worker));
        });
    }

    /// Tells the peers this node is connected to (up to [`MAX_OFFERS`]) that it has open units:
    /// on a new job, and when units open again (lost, late or disputed replicas), so workers
    /// backing off after "no work" come back at once.
    async fn offer_connected(self: &Arc<Self>) {
        if let Ok(peers) = self.net.peers().await {
            for p in peers.into_iter().take(MAX_OFFERS) {
                if let Ok(peer) = p.peer_id.parse::<PeerId>() {
                    self.clone().spawn_offer(peer);
                }
            }
        }
    }

    /// Tells `peer` this node has open units (if it has).
    fn spawn_offer(self: Arc<Self>, peer: PeerId) {
        let announce = self.submit.lock().unwrap().announcement();
        if announce.open_units == 0 || peer == self.me {
            return;
        }
        tokio::spawn(async move {
            let offer = Request::Offer(announce);
            let _ = self
                .net
                .request(peer, wire::PROTOCOL, wire::encode(&offer), PULL_TIMEOUT)
                .await;
        });
    }

    /// Publishes an announcement if there are open units, and provides the grid key in the DHT
    /// while there are.
    pub(super) async fn announce(&self) {
        let (announce, start, stop) = {
            let mut s = self.submit.lock().unwrap();
            let announce = s.announcement();
            let open = announce.open_units;
            let start = open > 0 && !s.providing;
            let stop = open == 0 && s.providing;
            s.providing = open > 0;
            (announce, start, stop)
        };
        if start {
            let _ = self.net.provide(wire::grid_key()).await;
        }
        if stop {
            let _ = self.net.stop_providing(wire::grid_key()).await;
        }
        if announce.open_units > 0 {
            // No peers in the mesh yet is normal on a fresh network: the next tick retries.
            let _ = self
                .net
                .publish(wire::ANNOUNCE_TOPIC, wire::encode(&announce))
                .await;
        }
    }

    /// The submitter's timers: lease expiry, lost workers, pulls, announcements, payments.
    pub(super) async fn submitter_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut events = self.net.events();
        let mut tick = tokio::time::interval(self.config.tick);
        let mut last_pull = Instant::now();
        let mut last_pay = Instant::now();
        let mut last_announce = Instant::now() - ANNOUNCE_EVERY;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                event = events.recv() => {
                    match event {
                        Ok(agora_net::Event::PeerDisconnected { peer_id }) => {
                            if let Ok(peer) = peer_id.parse::<PeerId>() {
                                self.worker_lost(peer).await;
                            }
                        }
                        Ok(agora_net::Event::PeerIdentified { peer_id, .. }) => {
                            if let Ok(peer) = peer_id.parse::<PeerId>() {
                                self.clone().spawn_offer(peer);
                            }
                        }
                        _ => {}
                    }
                    continue;
                }
                () = stop.cancelled() => return,
            }
            self.expire_leases().await;
            if last_announce.elapsed() >= ANNOUNCE_EVERY {
                last_announce = Instant::now();
                self.announce().await;
            }
            if last_pull.elapsed() >= PULL_EVERY {
                last_pull = Instant::now();
                self.pull_stragglers();
            }
            if last_pay.elapsed() >= PAY_EVERY {
                last_pay = Instant::now();
                // On a task of its own: a slow ledger must not hold up leases and pulls.
                if !self.paying.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    let grid = self.clone();
                    tokio::spawn(async move {
                        grid.clone().pay_owed().await;
                        grid.paying
                            .store(false, std::sync::atomic::Ordering::Release);
                    });
                }
            }
        }
    }

    async fn worker_lost(self: &Arc<Self>, peer: PeerId) {
        // The connection may come back at once (a redial): only a peer that stays away loses
        // its running replicas.
        if self
            .net
            .peers()
            .await
            .is_ok_and(|ps| ps.iter().any(|p| p.peer_id == peer.to_string()))
        {
            return;
        }
        let grid = self.clone();
        let lost = Self::blocking(move || {
            let mut s = grid.submit.lock().unwrap();
            let mut lost = 0;
            for (id, record) in s.jobs.iter_mut() {
                if record.job.status != JobStatus::Running {
                    continue;
                }
                let units = record.job.lost(&peer);
                if !units.is_empty() {
                    lost += units.len();
                    let _ = grid.db.put_job(id, record, false);
                }
            }
            if lost > 0 {
                s.update_worker(&grid.db, peer, |rep| rep.missed += lost as u64);
            }
            lost
        })
        .await;
        if lost > 0 {
            tracing::info!(%peer, units = lost, "grid worker gone; its running units are issued again");
            self.changed.notify_waiters();
            self.offer_connected().await;
        }
    }

    async fn expire_leases(self: &Arc<Self>) {
        let now = now_ms();
        let due = {
            let s = self.submit.lock().unwrap();
            s.jobs
                .values()
                .filter(|r| r.job.status == JobStatus::Running)
                .filter_map(|r| r.job.next_expiry())
                .any(|t| t <= now)
        };
        if !due {
            return;
        }
        let grid = self.clone();
        let reopened = Self::blocking(move || {
            let mut s = grid.submit.lock().unwrap();
            let mut missed = Vec::new();
            for (id, record) in s.jobs.iter_mut() {
                if record.job.status != JobStatus::Running {
                    continue;
                }
                let m = record.job.expire(now);
                if !m.is_empty() {
                    let _ = grid.db.put_job(id, record, false);
                    missed.extend(m.into_iter().map(|(_, w)| w));
                }
            }
            let reopened = !missed.is_empty();
            for w in missed {
                s.update_worker(&grid.db, w, |rep| rep.missed += 1);
            }
            reopened
        })
        .await;
        if reopened {
            self.offer_connected().await;
        }
    }

    /// Committed replicas that may reveal but have not (their pull failed, or this node
    /// restarted): ask again.
    fn pull_stragglers(self: &Arc<Self>) {
        let mut todo = Vec::new();
        {
            let s = self.submit.lock().unwrap();
            for (id, record) in &s.jobs {
                if record.job.status != JobStatus::Running {
                    continue;
                }
                for (i, u) in record.job.units.iter().enumerate() {
                    for r in &u.replicas {
                        if r.state == ReplicaState::Committed
                            && record.job.may_reveal(&r.worker, i as u32).is_ok()
                        {
                            todo.push((*id, i as u32, r.worker));
                        }
                    }
                }
            }
        }
        for (job, unit, worker) in todo.into_iter().take(256) {
            self.clone().spawn_pull(job, unit, worker);
        }
    }

    /// Pays what is owed, one transfer per worker for all its accepted units (batched).
    async fn pay_owed(self: Arc<Self>) {
        let Some(ledger) = self.ledger.clone() else {
            return;
        };
        let owed: Vec<(PeerId, u64)> = {
            let s = self.submit.lock().unwrap();
            let mut by_worker: HashMap<PeerId, u64> = HashMap::new();
            for r in s.jobs.values() {
                for (p, a) in &r.owed {
                    *by_worker.entry(*p).or_default() += a;
                }
            }
            by_worker.into_iter().filter(|(_, a)| *a > 0).collect()
        };
        for (peer, _) in owed {
            let Some(account) = account_of(&peer) else {
                tracing::warn!(%peer, "cannot pay a worker whose id is not an ed25519 key");
                continue;
            };
            // Moved from owed to paying before the transfer is submitted: a crash in between
            // under-pays (the amount stays in `paying`) rather than paying twice.
            let grid = self.clone();
            let taken = Self::blocking(move || {
                let mut s = grid.submit.lock().unwrap();
                let mut taken = Vec::new();
                for (id, r) in s.jobs.iter_mut() {
                    if let Some(pos) = r.owed.iter().position(|(p, _)| *p == peer) {
                        let (_, a) = r.owed.remove(pos);
                        r.paying += a;
                        taken.push((*id, a, a / r.job.spec.pay.max(1)));
                        let _ = grid.db.put_job(id, r, true);
                    }
                }
                taken
            })
            .await;
            let total: u64 = taken.iter().map(|(_, a, _)| a).sum();
            if total == 0 {
                continue;
            }
            let units: u64 = taken.iter().map(|(_, _, u)| u).sum();
            let memo = format!("agora grid: {units} unit(s)");
            let result = ledger.pay(account, total, Some(memo), None).await;
            // Final, or perhaps final (no answer in time: paying again could pay twice): paid.
            // Refused before it reached a block: owed again.
            let paid = match &result {
                Ok(p) => {
                    tracing::info!(%peer, amount = total, tx = %p.hash, "paid grid worker");
                    true
                }
                Err(e @ LedgerError::NotFinal(_)) => {
                    tracing::warn!(%peer, amount = total, "grid payment not final in time; counted as paid, not sent again: {e}");
                    true
                }
                Err(e) => {
                    tracing::warn!(%peer, amount = total, "grid payment failed, owed again: {e}");
                    false
                }
            };
            let grid = self.clone();
            Self::blocking(move || {
                let mut s = grid.submit.lock().unwrap();
                for (id, a, _) in taken {
                    if let Some(r) = s.jobs.get_mut(&id) {
                        r.paying = r.paying.saturating_sub(a);
                        if paid {
                            r.paid += a;
                        } else {
                            match r.owed.iter_mut().find(|(p, _)| *p == peer) {
                                Some((_, o)) => *o += a,
                                None => r.owed.push((peer, a)),
                            }
                        }
                        let _ = grid.db.put_job(&id, r, true);
                    }
                }
                if paid {
                    s.update_worker(&grid.db, peer, |rep| {
                        rep.owed = rep.owed.saturating_sub(total);
                        rep.paid += total;
                    });
                }
            })
            .await;
        }
    }

    /// Gossip announcements: their signed author becomes a source of work (bounded).
    pub(super) async fn announcements(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::Receiver<agora_net::GossipMessage>,
        stop: CancellationToken,
    ) {
        loop {
            let msg = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => return },
                () = stop.cancelled() => return,
            };
            let verdict = match (msg.author, wire::decode::<Announce>(&msg.data)) {
                (Some(author), Ok(a)) if author != self.me => {
                    if self
                        .announce_rate
                        .admit(
                            &author,
                            1.0,
                            self.net.admission(),
                            "grid.announce.peer_rate",
                        )
                        .is_ok()
                        && a.open_units > 0
                    {
                        self.add_source(author, false);
                    }
                    MessageAcceptance::Accept
                }
                (Some(_), Ok(_)) => MessageAcceptance::Ignore,
                _ => MessageAcceptance::Reject,
            };
            let _ = self.net.validate(msg.id, msg.source, verdict).await;
        }
    }
}

/// Keeps verified result bytes at `path` (durably: a reveal recorded in the job's state must
/// find its bytes after a crash). Identical bytes may arrive from several reveals at once:
/// each writes its own temporary file and renames it over the same name.
fn spool(path: &Path, bytes: &[u8], worker: &PeerId) -> std::io::Result<()> {
    use std::io::Write;
    if std::fs::read(path).is_ok_and(|b| b == bytes) {
        return Ok(());
    }
    let dir = path.parent().expect("spool paths have a parent");
    std::fs::create_dir_all(dir)?;
    // Unique per write: the same worker may reveal the same bytes for several units at once.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.{worker}.{n}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The ledger account of a peer: its ed25519 identity key.
pub fn account_of(peer: &PeerId) -> Option<agora_ledger::Account> {
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let key = libp2p_identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    let ed = key.try_into_ed25519().ok()?;
    Some(agora_ledger::Account(ed.to_bytes()))
}
