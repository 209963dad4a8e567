//! The grid service: the submitter side ([`submit`]: jobs this node coordinates) and the worker
//! side ([`worker`]: units this node runs for others) over one protocol,
//! [`PROTOCOL`](crate::wire::PROTOCOL), on the node's request layer.
//!
//! # State and locks
//! `Grid::submit` holds the jobs and the workers' reputations; `Grid::work` the worker side's
//! sources, measured speed and running count. No path holds both; neither is held across an
//! `.await`. Database writes happen on blocking threads, with the lock held where the stored
//! state must match memory (a job's record).

mod db;
mod submit;
mod worker;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agora_files::Files;
use agora_ledger::service::Ledger;
use agora_net::{Handle, InboundRequest, admission::SharedRateLimiter};
use libp2p_identity::PeerId;
use serde::Serialize;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::wire::{self, Request, Response};
use budget::REFUSED_ANNOUNCE_RATE;
pub use db::{DbError, Held, JobRecord};
pub use submit::{JobView, RunOptions, UnitView, WorkerView};
pub use worker::WorkerStatus;

/// What a node gives to the grid.
#[derive(Clone, Debug)]
pub struct Config {
    /// Run units for others (`--no-grid` turns it off).
    pub enabled: bool,
    /// Units run at once (`--grid-cpus`), each on its own idle-priority thread.
    pub cpus: usize,
    /// Most linear memory one unit may use here (`--grid-memory`).
    pub memory: u64,
    /// How long a computed outcome is held for a submitter that has not taken it.
    pub hold: Duration,
    /// How often the submitter announces open units and checks leases.
    pub tick: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            cpus: 1,
            memory: 256 * 1024 * 1024,
            hold: Duration::from_secs(24 * 3600),
            tick: Duration::from_secs(1),
        }
    }
}

/// Admission budgets of the grid: what one peer may make this node hold or do. Every refusal
/// is counted on `agora_refusals_total` under the matching `REFUSED_*` name.
pub mod budget {
    use agora_net::admission::Rate;

    /// Fetch requests one worker may make to a submitter: 20 a second, bursts of 200.
    pub const FETCHES: Rate = Rate::new(20.0, 200.0);
    /// Commits, reveals and settled-queries one peer may send: 100 a second, bursts of 1,000.
    pub const MESSAGES: Rate = Rate::new(100.0, 1000.0);
    /// Bytes of revealed results one worker may send: 8 MiB a second, bursts of 64 MiB.
    pub const RESULT_BYTES: Rate = Rate::new(8.0 * 1024.0 * 1024.0, 64.0 * 1024.0 * 1024.0);
    /// Replicas one worker may have running (uncommitted) at a submitter, all jobs together…
    pub const MAX_RUNNING_PER_WORKER: usize = 16;
    /// …and one that has no accepted unit here yet (identities cost nothing).
    pub const MAX_RUNNING_UNPROVEN: usize = 4;
    /// Error text an outcome may carry (a trap message); the worker truncates to it.
    pub const MAX_ERROR_TEXT: usize = 512;
    /// Workers whose reputation a submitter keeps (the least useful are forgotten first).
    pub const MAX_WORKERS: usize = 10_000;
    /// Submitters a worker remembers as sources of work (announced or found in the DHT).
    pub const MAX_SOURCES: usize = 256;
    /// Announcements and offers of one submitter that count: one a second, bursts of 20 (more
    /// are ignored or refused).
    pub const ANNOUNCES: Rate = Rate::new(1.0, 20.0);
    /// Outcomes a worker holds for absent submitters, and their bytes.
    pub const MAX_HELD: usize = 4096;
    pub const MAX_HELD_BYTES: u64 = 512 * 1024 * 1024;
    /// Held outcomes for one submitter.
    pub const MAX_HELD_PER_SUBMITTER: usize = 1024;
    pub const MAX_HELD_BYTES_PER_SUBMITTER: u64 = MAX_HELD_BYTES / 8;
    /// Jobs a node keeps (finished ones are dropped oldest first beyond it).
    pub const MAX_JOBS: usize = 1024;
    /// Peers each rate budget tracks at once.
    pub const MAX_RATE_PEERS: usize = 4096;

    pub const REFUSED_FETCH_RATE: &str = "grid.fetch.peer_rate";
    pub const REFUSED_MESSAGE_RATE: &str = "grid.message.peer_rate";
    pub const REFUSED_RESULT_BYTES: &str = "grid.reveal.bytes";
    pub const REFUSED_RESULT: &str = "grid.reveal.result";
    pub const REFUSED_UNASSIGNED: &str = "grid.unassigned";
    pub const REFUSED_PULL: &str = "grid.pull.not_submitter";
    pub const REFUSED_ANNOUNCE_RATE: &str = "grid.announce.peer_rate";
}

#[derive(Debug, thiserror::Error)]
pub enum GridError {
    #[error("{0}")]
    BadJob(String),
    #[error("no job {0}")]
    NoSuchJob(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the program is not a valid job: {0}")]
    Program(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("file sharing: {0}")]
    Files(String),
    #[error("the sandbox: {0}")]
    Sandbox(String),
    #[error("network: {0}")]
    Net(String),
}

/// Something that happened to a job or a unit, for `/v1/events`.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GridEvent {
    UnitDecided {
        job: String,
        unit: u32,
        accepted: bool,
    },
    JobFinished {
        job: String,
        status: String,
    },
    WorkerFault {
        peer: String,
        reason: String,
    },
    UnitRun {
        job: String,
        unit: u32,
        fuel: u64,
        ok: bool,
    },
}

pub struct Grid {
    net: Handle,
    files: Arc<Files>,
    ledger: Option<Arc<Ledger>>,
    db: Arc<db::GridDb>,
    config: Config,
    dir: PathBuf,
    me: PeerId,
    submit: Mutex<submit::SubmitState>,
    work: Mutex<worker::WorkState>,
    /// Wakes the worker loop (a new source, a slot freed).
    wake: Notify,
    /// Wakes waiters on job progress.
    changed: Notify,
    events: broadcast::Sender<GridEvent>,
    fetch_rate: SharedRateLimiter<PeerId>,
    message_rate: SharedRateLimiter<PeerId>,
    bytes_rate: SharedRateLimiter<PeerId>,
    announce_rate: SharedRateLimiter<PeerId>,
    runner: worker::Runner,
    /// A payment round is running.
    paying: std::sync::atomic::AtomicBool,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Grid {
    /// Loads stored jobs and held outcomes, serves the grid protocol, and starts the
    /// submitter's timers and (unless disabled) the worker.
    pub async fn start(
        net: Handle,
        files: Arc<Files>,
        ledger: Option<Arc<Ledger>>,
        store: Arc<agora_store::Db>,
        data_dir: &Path,
        config: Config,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, GridError> {
        let db = Arc::new({
            let store = store.clone();
            tokio::task::spawn_blocking(move || db::GridDb::open(store))
                .await
                .map_err(|e| GridError::Sandbox(e.to_string()))??
        });
        let dir = data_dir.join("grid");
        std::fs::create_dir_all(&dir).map_err(|source| GridError::Io {
            path: dir.clone(),
            source,
        })?;
        let submit = {
            let db = db.clone();
            tokio::task::spawn_blocking(move || submit::SubmitState::load(&db))
                .await
                .map_err(|e| GridError::Sandbox(e.to_string()))??
        };
        let work = {
            let db = db.clone();
            tokio::task::spawn_blocking(move || worker::WorkState::load(&db))
                .await
                .map_err(|e| GridError::Sandbox(e.to_string()))??
        };
        let runner = worker::Runner::start(&dir, config.cpus.max(1), config.memory)?;
        let (events, _) = broadcast::channel(256);
        let grid = Arc::new(Self {
            me: net.local_peer_id(),
            net: net.clone(),
            files,
            ledger,
            db,
            config,
            dir,
            submit: Mutex::new(submit),
            work: Mutex::new(work),
            wake: Notify::new(),
            changed: Notify::new(),
            events,
            fetch_rate: SharedRateLimiter::new(budget::FETCHES, budget::MAX_RATE_PEERS),
            message_rate: SharedRateLimiter::new(budget::MESSAGES, budget::MAX_RATE_PEERS),
            bytes_rate: SharedRateLimiter::new(budget::RESULT_BYTES, budget::MAX_RATE_PEERS),
            announce_rate: SharedRateLimiter::new(budget::ANNOUNCES, budget::MAX_RATE_PEERS),
            runner,
            paying: std::sync::atomic::AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(64);
        net.serve(wire::PROTOCOL, tx)
            .map_err(|e| GridError::Net(e.to_string()))?;
        tokio::spawn(grid.clone().serve(rx, stop.clone()));
        tokio::spawn(grid.clone().submitter_loop(stop.clone()));
        if grid.config.enabled {
            let (gtx, grx) = mpsc::channel(64);
            net.subscribe(wire::ANNOUNCE_TOPIC, gtx)
                .await
                .map_err(|e| GridError::Net(e.to_string()))?;
            tokio::spawn(grid.clone().announcements(grx, stop.clone()));
            tokio::spawn(grid.clone().worker_loop(stop.clone()));
            tokio::spawn(grid.clone().held_loop(stop.clone()));
        }
        Ok(grid)
    }

    pub fn events(&self) -> broadcast::Receiver<GridEvent> {
        self.events.subscribe()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn emit(&self, event: GridEvent) {
        let _ = self.events.send(event);
        self.changed.notify_waiters();
    }

    /// Waits until something changes in a job (or `timeout`).
    pub async fn wait_change(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.changed.notified()).await;
    }

    /// Waits up to `timeout` for a change while job `id` runs (a change between the check and
    /// the wait is not missed).
    pub async fn wait_job(&self, id: &str, timeout: Duration) {
        let notified = self.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.job_status(id) == Some(crate::proto::JobStatus::Running) {
            let _ = tokio::time::timeout(timeout, notified).await;
        }
    }

    async fn serve(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<InboundRequest>,
        stop: CancellationToken,
    ) {
        loop {
            let req = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => return },
                () = stop.cancelled() => return,
            };
            let grid = self.clone();
            // Each request on its own task: reveals write to disk, pulls wait on nothing.
            tokio::spawn(async move {
                let InboundRequest { peer, data, reply } = req;
                let request = match wire::decode::<Request>(&data) {
                    Ok(r) => r,
                    Err(e) => return reply.refuse(e),
                };
                match grid.handle(peer, request).await {
                    Ok(response) => {
                        let _ = reply.send(wire::encode(&response));
                    }
                    Err(reason) => reply.refuse(reason),
                }
            });
        }
    }

    async fn handle(self: &Arc<Self>, peer: PeerId, request: Request) -> Result<Response, String> {
        let refusals = self.net.admission();
        match request {
            Request::Fetch {
                slots,
                fuel_per_sec,
                memory,
            } => {
                self.fetch_rate
                    .admit(&peer, 1.0, refusals, budget::REFUSED_FETCH_RATE)?;
                Ok(self
                    .clone()
                    .on_fetch(peer, slots, fuel_per_sec, memory)
                    .await)
            }
            Request::Commit {
                job,
                unit,
                commitment,
            } => {
                self.message_rate
                    .admit(&peer, 1.0, refusals, budget::REFUSED_MESSAGE_RATE)?;
                self.clone().on_commit(peer, job, unit, commitment).await
            }
            Request::Reveal {
                job,
                unit,
                outcome,
                result,
            } => {
                self.message_rate
                    .admit(&peer, 1.0, refusals, budget::REFUSED_MESSAGE_RATE)?;
                self.bytes_rate.admit(
                    &peer,
                    result.len() as f64,
                    refusals,
                    budget::REFUSED_RESULT_BYTES,
                )?;
                self.clone()
                    .on_reveal(peer, job, unit, outcome, result)
                    .await
            }
            Request::Settled { job, unit } => {
                self.message_rate
                    .admit(&peer, 1.0, refusals, budget::REFUSED_MESSAGE_RATE)?;
                Ok(self.on_settled(peer, job, unit))
            }
            Request::Progress { job, unit } => {
                self.message_rate
                    .admit(&peer, 1.0, refusals, budget::REFUSED_MESSAGE_RATE)?;
                Ok(self.on_progress(peer, job, unit))
            }
            Request::Offer(announce) => {
                self.announce_rate
                    .admit(&peer, 1.0, refusals, REFUSED_ANNOUNCE_RATE)?;
                if self.config.enabled && announce.open_units > 0 {
                    self.add_source(peer, true);
                }
                Ok(Response::Pending)
            }
            Request::Pull { job, unit } => {
                self.message_rate
                    .admit(&peer, 1.0, refusals, budget::REFUSED_MESSAGE_RATE)?;
                let grid = self.clone();
                Self::blocking(move || grid.on_pull(peer, job, unit)).await
            }
        }
    }

    pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(f)
            .await
            .expect("grid blocking task panicked")
    }
}

impl Grid {
    /// Gauges for `/metrics` in the Prometheus text format (`agora_grid_*`).
    pub fn metrics_text(&self) -> String {
        let (jobs, validated, failed, open, workers, excluded) = {
            let s = self.submit.lock().unwrap();
            let mut t = (0, 0, 0, 0, s.workers.len(), 0);
            for r in s.jobs.values() {
                if r.job.status == crate::proto::JobStatus::Running {
                    t.0 += 1;
                }
                let (v, f, o) = r.job.counts();
                t.1 += v;
                t.2 += f;
                t.3 += o;
            }
            t.5 = s.workers.values().filter(|r| r.excluded()).count();
            t
        };
        let w = self.worker_status();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP agora_grid_{name} {help}\n# TYPE agora_grid_{name} gauge\nagora_grid_{name} {value}\n"
            ));
        };
        gauge(
            "jobs_running",
            "Jobs this node coordinates that are running",
            jobs,
        );
        gauge(
            "units_validated",
            "Units of this node's jobs accepted by a quorum",
            validated as u64,
        );
        gauge(
            "units_failed",
            "Units of this node's jobs that failed",
            failed as u64,
        );
        gauge(
            "units_open",
            "Units of this node's jobs not decided yet",
            open as u64,
        );
        gauge(
            "workers_known",
            "Workers this node keeps a reputation of",
            workers as u64,
        );
        gauge(
            "workers_excluded",
            "Workers excluded for repeated faults",
            excluded as u64,
        );
        gauge(
            "worker_running",
            "Units this node runs for others now",
            w.running as u64,
        );
        gauge(
            "worker_units_run",
            "Units this node has run for others",
            w.units_run,
        );
        gauge(
            "worker_fuel_run",
            "Fuel this node has spent on others' units",
            w.fuel_run,
        );
        gauge(
            "worker_fuel_per_sec",
            "This node's measured sandbox speed",
            w.fuel_per_sec,
        );
        gauge(
            "worker_held",
            "Outcomes held for absent submitters",
            w.held as u64,
        );
        out
    }
}
