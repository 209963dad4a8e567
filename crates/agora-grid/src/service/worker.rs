//! The worker's side: units this node runs for others. Sources of work (announced submitters,
//! DHT providers of the grid key), fetching units within the node's limits, running them on
//! idle-priority threads in the sandbox, committing, revealing, and holding outcomes for
//! submitters that are away.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc as std_mpsc},
    time::{Duration, Instant},
};

use agora_files::ticket::Ticket;
use agora_wasm::{RunError, RunInput, Sandbox, ValidatedModule};
use libp2p_identity::PeerId;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Grid, GridError, GridEvent, budget, db::Held, now_ms};
use crate::{
    proto::commitment,
    wire::{
        self, Assignment, Digest, MAX_INPUT, MAX_PROGRAM, MAX_RESULT, Outcome, Request, Response,
        RunFailure,
    },
};

/// How long one grid request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long fetching a program or input may take.
const BLOB_TIMEOUT: Duration = Duration::from_secs(300);
/// Refusals after which a held outcome is of no use to its submitter (the texts of
/// [`crate::proto::Refusal`]).
const FINAL_REFUSALS: [&str; 5] = [
    "no replica of unit",
    "no longer running",
    "have not committed",
    "does not exist",
    "the job is over",
];
/// Bytes of compiled modules kept in `grid/modules`.
const MAX_MODULE_CACHE: u64 = 1024 * 1024 * 1024;
/// How often a worker reports progress on a unit it works on.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);
/// How often held outcomes are offered again.
const HELD_EVERY: Duration = Duration::from_secs(5);
/// How often the DHT is asked for submitters.
const DHT_EVERY: Duration = Duration::from_secs(30);
/// Compiled modules and sandboxes kept.
const MAX_MODULES: usize = 16;
const MAX_SANDBOXES: usize = 4;
/// Bytes of fetched programs and inputs kept in `grid/blobs`.
const MAX_BLOB_CACHE: u64 = 2 * 1024 * 1024 * 1024;

#[derive(Debug)]
struct Source {
    retry_at: Instant,
    failures: u32,
    /// "No work" answers in a row: each doubles the wait before asking again (up to 8×),
    /// until an offer (a new job, a new connection) or work resets it.
    idle: u32,
}

pub(super) struct WorkState {
    sources: HashMap<PeerId, Source>,
    /// The units taking slots (fetching inputs or running): a unit issued again while this
    /// node still works on it (its submitter gave up on the first issue) is not run a second
    /// time beside it.
    in_progress: std::collections::HashSet<(Digest, u32)>,
    /// Units in the sandbox now.
    executing: usize,
    /// Measured speed (fuel per second, moving average); 0 until the first unit.
    fuel_per_sec: f64,
    units_run: u64,
    fuel_run: u64,
    /// Held outcomes: (job, unit) → (submitter, bytes, next try).
    held: HashMap<(Digest, u32), HeldMeta>,
}

#[derive(Debug, Clone)]
struct HeldMeta {
    submitter: PeerId,
    bytes: u64,
    next_try: Instant,
    backoff: Duration,
}

impl WorkState {
    pub fn load(db: &super::db::GridDb) -> Result<Self, GridError> {
        let now = Instant::now();
        let held = db
            .held()?
            .into_iter()
            .map(|h| {
                (
                    (h.job, h.unit),
                    HeldMeta {
                        submitter: h.submitter,
                        bytes: h.result.len() as u64,
                        next_try: now,
                        backoff: HELD_EVERY,
                    },
                )
            })
            .collect();
        Ok(Self {
            sources: HashMap::new(),
            in_progress: Default::default(),
            executing: 0,
            fuel_per_sec: 0.0,
            units_run: db.counter("units")?,
            fuel_run: db.counter("fuel")?,
            held,
        })
    }

    fn held_bytes(&self) -> u64 {
        self.held.values().map(|h| h.bytes).sum()
    }

    /// Whether this node may take more work from `submitter` (its held outcomes are bounded,
    /// in all and per submitter, so one submitter that never takes them blocks only itself).
    fn may_hold_for(&self, submitter: &PeerId) -> bool {
        let (count, bytes) = self
            .held
            .values()
            .filter(|h| &h.submitter == submitter)
            .fold((0, 0), |(c, b), h| (c + 1, b + h.bytes));
        self.held.len() < budget::MAX_HELD
            && self.held_bytes() < budget::MAX_HELD_BYTES
            && count < budget::MAX_HELD_PER_SUBMITTER
            && bytes < budget::MAX_HELD_BYTES_PER_SUBMITTER
    }
}

/// The worker as `agora grid status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerStatus {
    pub enabled: bool,
    pub cpus: usize,
    pub memory: u64,
    /// Slots taken: units being fetched or run.
    pub running: usize,
    /// Units in the sandbox now.
    pub executing: usize,
    pub fuel_per_sec: u64,
    pub units_run: u64,
    pub fuel_run: u64,
    pub held: usize,
    pub sources: usize,
    /// Received in ledger transfers marked as grid payments (`None` without a ledger).
    pub earned: Option<u64>,
}

struct Task {
    memory: u64,
    module: Digest,
    program: Arc<Vec<u8>>,
    input: RunInput,
    done: oneshot::Sender<(Result<agora_wasm::RunOutput, RunError>, Duration)>,
}

/// The threads that run units, at idle priority, one per `--grid-cpus`.
pub(super) struct Runner {
    tasks: Mutex<std_mpsc::Sender<Task>>,
    shared: Arc<RunnerShared>,
}

/// Compiled modules by (memory limit, program hash): a module belongs to its sandbox's engine.
type ModuleCache = Vec<((u64, Digest), Arc<ValidatedModule>)>;

struct RunnerShared {
    cache: PathBuf,
    max_memory: u64,
    sandboxes: Mutex<Vec<(u64, Arc<Sandbox>)>>,
    modules: Mutex<ModuleCache>,
}

impl RunnerShared {
    fn sandbox(&self, memory: u64) -> Result<Arc<Sandbox>, String> {
        let mut s = self.sandboxes.lock().unwrap();
        if let Some((_, sb)) = s.iter().find(|(m, _)| *m == memory) {
            return Ok(sb.clone());
        }
        let sb = Arc::new(
            Sandbox::new(
                agora_wasm::Config::new(&self.cache)
                    .with_max_memory(memory as usize)
                    .with_max_output(MAX_RESULT)
                    // Above any deadline: the lease decides when a unit is late.
                    .with_wall_guard(Duration::from_millis(wire::MAX_LEASE_MS + 60_000)),
            )
            .map_err(|e| e.to_string())?,
        );
        if s.len() >= MAX_SANDBOXES {
            s.remove(0);
        }
        s.push((memory, sb.clone()));
        Ok(sb)
    }

    fn module(
        &self,
        sandbox: &Sandbox,
        memory: u64,
        hash: Digest,
        bytes: &[u8],
    ) -> Result<Arc<ValidatedModule>, String> {
        let mut m = self.modules.lock().unwrap();
        if let Some((_, module)) = m.iter().find(|(k, _)| *k == (memory, hash)) {
            return Ok(module.clone());
        }
        drop(m);
        let module = Arc::new(sandbox.validate(bytes).map_err(|e| e.to_string())?);
        m = self.modules.lock().unwrap();
        if m.len() >= MAX_MODULES {
            m.remove(0);
        }
        m.push(((memory, hash), module.clone()));
        Ok(module)
    }
}

/// Lowers the calling thread to idle priority (SCHED_IDLE; nice 19 if that is refused), so
/// units never slow the user's own work.
fn idle_priority() {
    // SAFETY: plain syscalls on the calling thread with a valid, initialised parameter.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 19);
        }
    }
}

impl Runner {
    pub fn start(dir: &Path, threads: usize, max_memory: u64) -> Result<Self, GridError> {
        let (tx, rx) = std_mpsc::channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(RunnerShared {
            cache: dir.join("modules"),
            max_memory,
            sandboxes: Mutex::new(Vec::new()),
            modules: Mutex::new(Vec::new()),
        });
        for i in 0..threads {
            let rx = rx.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("grid-unit-{i}"))
                .spawn(move || {
                    idle_priority();
                    loop {
                        let task = match rx.lock().unwrap().recv() {
                            Ok(t) => t,
                            Err(_) => return,
                        };
                        let mut took = Duration::ZERO;
                        let result = shared
                            .sandbox(task.memory)
                            .and_then(|sb| {
                                let m =
                                    shared.module(&sb, task.memory, task.module, &task.program)?;
                                Ok((sb, m))
                            })
                            .map_err(|e| RunError::Trap {
                                message: format!("host: {e}"),
                                fuel_used: 0,
                            })
                            .and_then(|(sb, m)| {
                                // Only the run counts towards the measured speed.
                                let started = Instant::now();
                                let r = sb.run(&m, task.input);
                                took = started.elapsed();
                                r
                            });
                        let _ = task.done.send((result, took));
                    }
                })
                .map_err(|source| GridError::Io {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        Ok(Self {
            tasks: Mutex::new(tx),
            shared,
        })
    }

    /// Checks that `wasm` is a job the sandbox accepts (imports, features), as a worker would.
    pub fn validate(&self, wasm: &[u8], memory: u64) -> Result<(), String> {
        let sb = self
            .shared
            .sandbox(memory.min(self.shared.max_memory.max(memory)))?;
        sb.validate(wasm).map(|_| ()).map_err(|e| e.to_string())
    }

    async fn run(
        &self,
        memory: u64,
        module: Digest,
        program: Arc<Vec<u8>>,
        input: RunInput,
    ) -> (Result<agora_wasm::RunOutput, RunError>, Duration) {
        let (done, rx) = oneshot::channel();
        let task = Task {
            memory,
            module,
            program,
            input,
            done,
        };
        if self.tasks.lock().unwrap().send(task).is_err() {
            return (
                Err(RunError::Trap {
                    message: "host: the grid threads stopped".into(),
                    fuel_used: 0,
                }),
                Duration::ZERO,
            );
        }
        rx.await.unwrap_or((
            Err(RunError::Trap {
                message: "host: the unit thread died".into(),
                fuel_used: 0,
            }),
            Duration::ZERO,
        ))
    }
}

/// The outcome replicas compare. Host failures (the wall-clock guard, a module that does not
/// validate here) are not outcomes: the worker reports nothing and the lease runs out.
fn outcome_of(
    result: Result<agora_wasm::RunOutput, RunError>,
) -> Result<(Outcome, Vec<u8>), String> {
    match result {
        Ok(out) => Ok((
            Outcome::Ok {
                result: *blake3::hash(&out.stdout).as_bytes(),
                size: out.stdout.len() as u64,
                fuel: out.fuel_used,
            },
            out.stdout,
        )),
        Err(e) => {
            let (error, fuel) = match e {
                RunError::OutOfFuel { fuel } => (RunFailure::OutOfFuel, fuel),
                RunError::OutOfMemory { limit, .. } => (
                    RunFailure::OutOfMemory {
                        limit: limit as u64,
                    },
                    0,
                ),
                RunError::Trap {
                    mut message,
                    fuel_used,
                } if !message.starts_with("host: ") => {
                    // Deterministic truncation: every honest peer cuts the same text.
                    if message.len() > budget::MAX_ERROR_TEXT {
                        let mut end = budget::MAX_ERROR_TEXT;
                        while !message.is_char_boundary(end) {
                            end -= 1;
                        }
                        message.truncate(end);
                    }
                    (RunFailure::Trap { message }, fuel_used)
                }
                RunError::Exit {
                    code, fuel_used, ..
                } => (RunFailure::Exit { code }, fuel_used),
                RunError::OutputCap { limit, .. } => (
                    RunFailure::OutputCap {
                        limit: limit as u64,
                    },
                    0,
                ),
                other => return Err(other.to_string()),
            };
            Ok((Outcome::Err { error, fuel }, Vec::new()))
        }
    }
}

impl Grid {
    pub fn worker_status(&self) -> WorkerStatus {
        let w = self.work.lock().unwrap();
        WorkerStatus {
            enabled: self.config.enabled,
            cpus: self.config.cpus,
            memory: self.config.memory,
            running: w.in_progress.len(),
            executing: w.executing,
            fuel_per_sec: w.fuel_per_sec as u64,
            units_run: w.units_run,
            fuel_run: w.fuel_run,
            held: w.held.len(),
            sources: w.sources.len(),
            earned: None,
        }
    }

    /// What this node received as grid payments, from its ledger history.
    pub fn earned(&self) -> Option<u64> {
        let ledger = self.ledger.as_ref()?;
        let me = ledger.account();
        let history = ledger.history(&me, 10_000).ok()?;
        Some(
            history
                .iter()
                .filter_map(|r| match &r.tx {
                    agora_ledger::tx::Tx::Account(signed) => match &signed.body.action {
                        agora_ledger::tx::Action::Transfer { to, amount, memo }
                            if *to == me
                                && memo.as_deref().is_some_and(|m| m.starts_with("agora grid")) =>
                        {
                            Some(*amount)
                        }
                        _ => None,
                    },
                    _ => None,
                })
                .sum(),
        )
    }

    /// `urgent`: a direct offer (new work now): ask at once. Periodic announcements only make
    /// a peer a source; they do not cut short its backoff.
    pub(super) fn add_source(&self, peer: PeerId, urgent: bool) {
        if peer == self.me {
            return;
        }
        let mut w = self.work.lock().unwrap();
        if let Some(s) = w.sources.get_mut(&peer) {
            if urgent {
                s.retry_at = Instant::now();
                s.failures = 0;
                s.idle = 0;
            }
        } else {
            if w.sources.len() >= budget::MAX_SOURCES {
                // Forget the source that failed most.
                if let Some(victim) = w
                    .sources
                    .iter()
                    .max_by_key(|(_, s)| (s.failures, s.retry_at))
                    .map(|(p, _)| *p)
                {
                    w.sources.remove(&victim);
                }
            }
            w.sources.insert(
                peer,
                Source {
                    retry_at: Instant::now(),
                    failures: 0,
                    idle: 0,
                },
            );
        }
        drop(w);
        self.wake.notify_one();
    }

    pub(super) async fn worker_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut last_dht = Instant::now() - DHT_EVERY + Duration::from_secs(2);
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = stop.cancelled() => return,
            }
            if last_dht.elapsed() >= DHT_EVERY {
                last_dht = Instant::now();
                let grid = self.clone();
                tokio::spawn(async move {
                    if let Ok(found) = grid.net.find_providers(wire::grid_key(), 32).await {
                        for p in found {
                            grid.add_source(p, false);
                        }
                    }
                });
            }
            loop {
                let pick = {
                    let w = self.work.lock().unwrap();
                    // Twice the threads: inputs of the next units arrive while these run.
                    let free = (2 * self.config.cpus).saturating_sub(w.in_progress.len());
                    if free == 0 {
                        None
                    } else {
                        let now = Instant::now();
                        w.sources
                            .iter()
                            .filter(|(p, s)| s.retry_at <= now && w.may_hold_for(p))
                            .min_by_key(|(_, s)| s.retry_at)
                            .map(|(p, _)| (*p, free, w.fuel_per_sec as u64))
                    }
                };
                let Some((source, free, fuel_per_sec)) = pick else {
                    break;
                };
                // Not asked again before this one answers.
                if let Some(s) = self.work.lock().unwrap().sources.get_mut(&source) {
                    s.retry_at = Instant::now() + REQUEST_TIMEOUT;
                }
                let request = Request::Fetch {
                    slots: free.min(wire::MAX_SLOTS as usize) as u8,
                    fuel_per_sec,
                    memory: self.config.memory,
                };
                let response = self
                    .net
                    .request(
                        source,
                        wire::PROTOCOL,
                        wire::encode(&request),
                        REQUEST_TIMEOUT,
                    )
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|b| wire::decode::<Response>(&b));
                let mut w = self.work.lock().unwrap();
                match response {
                    Ok(Response::Assign(list)) => {
                        let mut took = 0;
                        for a in list.into_iter().take(free) {
                            if w.held.contains_key(&(a.job, a.unit))
                                || w.in_progress.contains(&(a.job, a.unit))
                            {
                                // (Job ids are chosen by submitters: one cannot replace
                                // what this node holds for another.) A unit already in
                                // progress here commits to the new issue when it is done.
                                continue;
                            }
                            if let Err(why) = self.acceptable(&a, fuel_per_sec) {
                                tracing::debug!(%source, "declining a grid unit: {why}");
                                continue;
                            }
                            tracing::debug!(%source, job = %hex::encode(a.job), unit = a.unit, "grid unit taken");
                            w.in_progress.insert((a.job, a.unit));
                            took += 1;
                            tokio::spawn(self.clone().execute(source, a));
                        }
                        if let Some(s) = w.sources.get_mut(&source) {
                            s.failures = 0;
                            s.idle = 0;
                            s.retry_at = if took > 0 {
                                Instant::now()
                            } else {
                                Instant::now() + Duration::from_secs(5)
                            };
                        }
                    }
                    Ok(Response::NoWork { retry_ms }) => {
                        if let Some(s) = w.sources.get_mut(&source) {
                            s.failures = 0;
                            let wait = retry_ms.clamp(500, 60_000) << s.idle.min(3);
                            s.idle += 1;
                            s.retry_at = Instant::now() + Duration::from_millis(wait.min(120_000));
                        }
                    }
                    Ok(other) => {
                        tracing::debug!(%source, "unexpected answer to a fetch: {other:?}");
                        w.sources.remove(&source);
                    }
                    Err(e) => {
                        tracing::debug!(%source, "grid fetch failed: {e}");
                        let drop_it = match w.sources.get_mut(&source) {
                            Some(s) => {
                                s.failures += 1;
                                s.retry_at = Instant::now()
                                    + Duration::from_secs(2u64.pow(s.failures.min(5)));
                                s.failures >= 8
                            }
                            None => false,
                        };
                        if drop_it {
                            w.sources.remove(&source);
                        }
                    }
                }
            }
        }
    }

    /// A worker's own limits on what a submitter hands it.
    fn acceptable(&self, a: &Assignment, fuel_per_sec: u64) -> Result<(), String> {
        if a.memory > self.config.memory {
            return Err(format!("needs {} bytes of memory", a.memory));
        }
        if a.program_size > MAX_PROGRAM || a.input_size > MAX_INPUT {
            return Err("program or input too large".into());
        }
        if fuel_per_sec > 0 && a.expected_fuel / fuel_per_sec > a.lease_ms / 1000 {
            return Err(format!(
                "{} fuel (what accepted units needed) cannot finish within {} ms at {fuel_per_sec} fuel/s",
                a.expected_fuel, a.lease_ms
            ));
        }
        Ok(())
    }

    async fn execute(self: Arc<Self>, submitter: PeerId, a: Assignment) {
        // Signs of life while the unit is fetched and run.
        let progress = tokio::spawn({
            let grid = self.clone();
            let (job, unit) = (a.job, a.unit);
            async move {
                let mut tick = tokio::time::interval(PROGRESS_EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let _ = grid
                        .request(submitter, Request::Progress { job, unit })
                        .await;
                }
            }
        });
        let result = self.clone().execute_inner(submitter, &a).await;
        progress.abort();
        if let Err(e) = result {
            tracing::warn!(%submitter, job = %hex::encode(a.job), unit = a.unit, "grid unit not done: {e}");
        }
        self.work
            .lock()
            .unwrap()
            .in_progress
            .remove(&(a.job, a.unit));
        self.wake.notify_one();
    }

    async fn execute_inner(
        self: Arc<Self>,
        submitter: PeerId,
        a: &Assignment,
    ) -> Result<(), String> {
        let program = self
            .fetch_blob(a.program, a.program_size, submitter)
            .await?;
        let input = if a.input_inline.len() as u64 == a.input_size
            && blake3::hash(&a.input_inline).as_bytes() == &a.input
        {
            a.input_inline.clone()
        } else {
            self.fetch_blob(a.input, a.input_size, submitter).await?
        };
        let run_input = RunInput::new(input, a.fuel).with_seed(a.seed);
        self.work.lock().unwrap().executing += 1;
        let (result, took) = self
            .runner
            .run(a.memory, a.program, Arc::new(program), run_input)
            .await;
        self.work.lock().unwrap().executing -= 1;
        let (outcome, bytes) = outcome_of(result)?;
        let fuel = outcome.fuel();
        {
            let mut w = self.work.lock().unwrap();
            // Tiny units say little about speed (instantiation dominates).
            if took >= Duration::from_millis(50) && fuel > 0 {
                let rate = fuel as f64 / took.as_secs_f64();
                w.fuel_per_sec = if w.fuel_per_sec == 0.0 {
                    rate
                } else {
                    0.7 * w.fuel_per_sec + 0.3 * rate
                };
            }
            w.units_run += 1;
            w.fuel_run += fuel;
        }
        self.emit(GridEvent::UnitRun {
            job: hex::encode(a.job),
            unit: a.unit,
            fuel,
            ok: matches!(outcome, Outcome::Ok { .. }),
        });
        let held = Held {
            submitter,
            job: a.job,
            unit: a.unit,
            commitment: commitment(&outcome.digest(), &self.me),
            outcome,
            result: bytes,
            revealed: false,
            expires_ms: now_ms() + self.config.hold.as_millis() as u64,
        };
        // Kept before it is committed: a worker that restarts still has what it committed to.
        let db = self.db.clone();
        let h = held.clone();
        Self::blocking(move || db.put_held_counted(&h).map_err(|e| e.to_string())).await?;
        self.work.lock().unwrap().held.insert(
            (a.job, a.unit),
            HeldMeta {
                submitter,
                bytes: held.result.len() as u64,
                next_try: Instant::now() + HELD_EVERY,
                backoff: HELD_EVERY,
            },
        );
        self.offer(held).await;
        Ok(())
    }

    /// Commits a held outcome and reveals it when the submitter says so; keeps it otherwise.
    async fn offer(&self, held: Held) {
        let key = (held.job, held.unit);
        let outcome = if held.revealed {
            self.request(
                held.submitter,
                Request::Settled {
                    job: held.job,
                    unit: held.unit,
                },
            )
            .await
        } else {
            match self
                .request(
                    held.submitter,
                    Request::Commit {
                        job: held.job,
                        unit: held.unit,
                        commitment: held.commitment,
                    },
                )
                .await
            {
                Ok(Response::Committed { reveal: true }) => {
                    self.request(
                        held.submitter,
                        Request::Reveal {
                            job: held.job,
                            unit: held.unit,
                            outcome: held.outcome.clone(),
                            result: held.result.clone(),
                        },
                    )
                    .await
                }
                other => other,
            }
        };
        tracing::debug!(
            submitter = %held.submitter,
            job = %hex::encode(held.job),
            unit = held.unit,
            revealed = held.revealed,
            "held outcome offered: {outcome:?}"
        );
        let drop_it = match &outcome {
            Ok(Response::Revealed { .. }) | Ok(Response::Gone) => true,
            Ok(_) => false,
            // Only a final refusal (its replica expired, was re-issued, never existed) drops
            // it; a busy or rate-limited submitter is asked again later.
            Err(e) => e.starts_with("refused") && FINAL_REFUSALS.iter().any(|f| e.contains(f)),
        };
        if drop_it {
            self.drop_held(key).await;
        } else {
            let mut w = self.work.lock().unwrap();
            if let Some(m) = w.held.get_mut(&key) {
                if outcome.is_err() {
                    m.backoff = (m.backoff * 2).min(Duration::from_secs(120));
                }
                m.next_try = Instant::now() + m.backoff;
            }
        }
    }

    async fn drop_held(&self, key: (Digest, u32)) {
        self.work.lock().unwrap().held.remove(&key);
        let db = self.db.clone();
        let _ = Self::blocking(move || db.remove_held(&key.0, key.1)).await;
    }

    async fn request(&self, peer: PeerId, request: Request) -> Result<Response, String> {
        match self
            .net
            .request(
                peer,
                wire::PROTOCOL,
                wire::encode(&request),
                REQUEST_TIMEOUT,
            )
            .await
        {
            Ok(bytes) => wire::decode(&bytes),
            Err(agora_net::Error::Refused(reason)) => Err(format!("refused: {reason}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Offers held outcomes again (a submitter that was away, a pull that never came).
    pub(super) async fn held_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut events = self.net.events();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                event = events.recv() => {
                    // A submitter that comes back is offered its outcomes at once.
                    if let Ok(agora_net::Event::PeerConnected { peer_id, .. }) = event
                        && let Ok(peer) = peer_id.parse::<PeerId>()
                    {
                        let mut w = self.work.lock().unwrap();
                        for m in w.held.values_mut().filter(|m| m.submitter == peer) {
                            m.next_try = Instant::now();
                            m.backoff = HELD_EVERY;
                        }
                    }
                    continue;
                }
                () = stop.cancelled() => return,
            }
            let now = Instant::now();
            let due: Vec<(Digest, u32)> = {
                let w = self.work.lock().unwrap();
                w.held
                    .iter()
                    .filter(|(_, m)| m.next_try <= now)
                    .map(|(k, _)| *k)
                    .take(64)
                    .collect()
            };
            if due.is_empty() {
                continue;
            }
            let db = self.db.clone();
            let all: Vec<Held> = Self::blocking(move || {
                due.iter()
                    .filter_map(|(job, unit)| db.get_held(job, *unit).ok().flatten())
                    .collect()
            })
            .await;
            let now_ms = now_ms();
            for held in all {
                if held.expires_ms <= now_ms {
                    self.drop_held((held.job, held.unit)).await;
                    continue;
                }
                if let Some(m) = self
                    .work
                    .lock()
                    .unwrap()
                    .held
                    .get_mut(&(held.job, held.unit))
                {
                    m.next_try = Instant::now() + m.backoff;
                }
                let grid = self.clone();
                tokio::spawn(async move { grid.offer(held).await });
            }
        }
    }

    /// A submitter asks for the outcome this node committed to.
    pub(super) fn on_pull(&self, peer: PeerId, job: Digest, unit: u32) -> Result<Response, String> {
        let known = self
            .work
            .lock()
            .unwrap()
            .held
            .get(&(job, unit))
            .map(|m| m.submitter);
        match known {
            None => Ok(Response::Gone),
            Some(s) if s != peer => {
                self.net.admission().refuse(budget::REFUSED_PULL);
                Err("you are not the submitter of that unit".into())
            }
            Some(_) => match self.db.get_held(&job, unit).map_err(|e| e.to_string())? {
                None => Ok(Response::Gone),
                Some(mut h) => {
                    // Kept (marked revealed) until the submitter says the unit is settled: if
                    // it crashes before storing the reveal it pulls again.
                    if !h.revealed {
                        h.revealed = true;
                        let _ = self.db.put_held(&h);
                    }
                    Ok(Response::Reveal {
                        outcome: h.outcome,
                        result: h.result,
                    })
                }
            },
        }
    }

    /// The bytes of a program or input: from the local store if held, else fetched verified
    /// from the submitter (or any provider).
    async fn fetch_blob(
        &self,
        hash: Digest,
        size: u64,
        submitter: PeerId,
    ) -> Result<Vec<u8>, String> {
        let h = blake3::Hash::from_bytes(hash);
        let store = self.files.store().clone();
        let local = Self::blocking(move || -> Option<Vec<u8>> {
            store.get(&h).ok().flatten()?;
            store.read_small(&h, size).ok()
        })
        .await;
        if let Some(bytes) = local
            && blake3::hash(&bytes) == h
        {
            return Ok(bytes);
        }
        let dir = self.dir.join("blobs");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let out = dir.join(h.to_hex().as_str());
        let ticket = Ticket {
            hash: h,
            peer: submitter,
            addrs: Vec::new(),
        };
        let job = self
            .files
            .get_limited(&ticket.encode(), out.clone(), size.max(1))
            .map_err(|e| e.to_string())?;
        tracing::debug!(blob = %h.to_hex(), job = job.id, "fetching a blob");
        let deadline = Instant::now() + BLOB_TIMEOUT;
        loop {
            match job.view().state {
                agora_files::JobState::Running => {}
                agora_files::JobState::Done { .. } => break,
                agora_files::JobState::Failed { error, .. } => {
                    return Err(format!("cannot fetch blob {}: {error}", h.to_hex()));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("fetching blob {} took too long", h.to_hex()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let modules = self.dir.join("modules");
        let bytes = Self::blocking(move || {
            let bytes = agora_store::read_limited(&out, size).map_err(|e| e.to_string());
            prune_cache(out.parent().expect("in a dir"), MAX_BLOB_CACHE);
            prune_cache(&modules, MAX_MODULE_CACHE);
            bytes
        })
        .await?;
        if blake3::hash(&bytes) != h {
            return Err(format!("blob {} does not match its hash", h.to_hex()));
        }
        Ok(bytes)
    }
}

/// Keeps a cache directory (`grid/blobs`, `grid/modules`) under `max` bytes, oldest files
/// first.
fn prune_cache(dir: &Path, max: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, m.len(), e.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, len, path) in files {
        if total <= max {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}
