//! `agora-testbed grid-sim`: grid computing with 10,000 workers, in one process, on virtual
//! time.
//!
//! One big job (R = 2, quorum 2, up to 5 replicas, the default `agora grid run` options but a
//! 30-minute lease) is coordinated by the real submitter state machine,
//! [`agora_grid::proto::Job`]: every assignment, commitment, reveal, lease and liveness expiry
//! and lost worker goes through it, and the submitter's bookkeeping around it (reputation per
//! worker with the table cap of [`MAX_WORKERS`], the deadline-aware assignment on the largest
//! fuel accepted so far, the asks for reveals) is done the way
//! `agora_grid::service::submit` does it. What is modelled is everything around that core:
//!
//! - **Workers** have one thread each (the default `--grid-cpus 1`) and a speed drawn
//!   lognormally around 1e9 fuel/s. Like the service's worker they hold twice as many units as
//!   threads (the next one waits for the thread, its input already there): a worker with a free
//!   slot fetches; with nothing for it, it asks again after the service's `RETRY_MS`. It runs
//!   a unit for `fuel / speed`, reports progress every 15 s on every unit it holds, commits,
//!   reveals when the commit answer says so or when the submitter asks (`CommitAck::ask`), and
//!   otherwise holds its outcome, offering it again when it is back after an absence.
//! - **Churn**: each worker alternates online and offline periods (exponential; 20 minutes
//!   online on average, and offline long enough that a fraction `churn` is away at any time).
//!   A worker that leaves abandons its running unit (the fuel burnt so far is wasted) and loses
//!   every message in flight. Most departures are seen by the submitter at once (a closed
//!   connection: `Job::lost`); a quarter are silent, and the replica runs out of liveness.
//!   A committed worker that is away cannot reveal; its reveal deadline may pass.
//! - **Cheaters** (a fraction `cheaters` of the workers, exactly) take as long as an honest
//!   run, so that they look like honest workers and their share of the CPU is visible. Four in
//!   five are *liars*: each commits to and reveals its own wrong result. One in five are
//!   *copiers*: they commit to a guess and then reveal the honest outcome (as if copied from
//!   another worker's reveal), which must not open their commitment.
//! - **Network**: every message takes 20–150 ms; nothing else is lost than what a departure
//!   takes with it.
//!
//! The report says whether the job completed, whether any wrong result was accepted (it must
//! not), what happened to the cheaters, and the CPU spent per useful CPU (one honest run of
//! each accepted unit): R = 2 costs 2.0, and the rest is split by the fate of each replica —
//! cheaters' runs, runs lost to churn, runs past their lease on slow workers, honest runs
//! stranded after a copier's failed reveal (see [`Cpu::stranded`]), and runs that turned out
//! not to be needed. Same seed, same report.

use std::{
    cmp::Ordering,
    collections::{BTreeSet, BinaryHeap, HashMap, VecDeque},
    fmt,
};

use agora_grid::{
    proto::{
        Job, JobStatus, MAX_MISSES_PER_JOB, Refusal, ReplicaState, Reputation, RevealEffect,
        UnitState, commitment,
    },
    service::budget::{MAX_RUNNING_PER_WORKER, MAX_WORKERS},
    wire::{Digest, JobSpec, MAX_UNITS, Outcome, UnitSpec},
};
use libp2p::PeerId;
use serde_json::{Value, json};

/// What the run varies; the rest of the model is fixed (see the module docs).
#[derive(Clone, Debug)]
pub struct Config {
    pub workers: usize,
    pub units: usize,
    /// Fraction of the workers offline at any time.
    pub churn: f64,
    /// Fraction of the workers that cheat.
    pub cheaters: f64,
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            workers: 10_000,
            units: 20_000,
            churn: 0.3,
            cheaters: 0.1,
            seed: 1,
        }
    }
}

impl Config {
    /// Checks the ranges; the error says which flag is wrong.
    pub fn check(&self) -> Result<(), String> {
        if !(2..=1_000_000).contains(&self.workers) {
            return Err(format!("--workers {}: must be 2..=1000000", self.workers));
        }
        if !(1..=MAX_UNITS).contains(&self.units) {
            return Err(format!(
                "--units {}: must be 1..={MAX_UNITS} (the most units of one job)",
                self.units
            ));
        }
        if !(0.0..0.95).contains(&self.churn) {
            return Err(format!("--churn {}: must be in [0, 0.95)", self.churn));
        }
        if !(0.0..0.5).contains(&self.cheaters) {
            return Err(format!(
                "--cheaters {}: must be in [0, 0.5) (a quorum of 2 assumes honest workers are most)",
                self.cheaters
            ));
        }
        Ok(())
    }
}

// The model. Constants private to the service are repeated here with their source.

/// Lease of the simulated job (`agora grid run --lease 1800`): long enough for the slowest
/// workers to finish most units, short enough to matter.
const LEASE_MS: u64 = 30 * 60_000;
/// Fuel each replica may burn (no unit needs more: no honest run fails).
const FUEL_CAP: u64 = 2_000_000_000_000;
const UNIT_FUEL_MEDIAN: f64 = 1e11;
const UNIT_FUEL_SIGMA: f64 = 0.6;
const SPEED_MEDIAN: f64 = 1e9;
const SPEED_SIGMA: f64 = 0.5;
/// Mean online period of a worker.
const SESSION_MS: f64 = 20.0 * 60_000.0;
/// Fraction of cheaters that copy (the others lie).
const COPIERS: f64 = 0.2;
/// Fraction of departures the submitter does not see (no closed connection).
const SILENT: f64 = 0.25;
/// One-way delay of a message.
const LATENCY_MS: (u64, u64) = (20, 150);
/// `service::submit::RETRY_MS`: a worker with nothing to do asks again after this.
const RETRY_MS: u64 = 2_000;
/// `service::worker::PROGRESS_EVERY`.
const PROGRESS_EVERY_MS: u64 = 15_000;
/// Units a worker holds at once: `service::worker::worker_loop` asks for twice its threads,
/// and a worker has one thread.
const SLOTS: usize = 2;
/// Gives up if the job is not done by then (it always is).
const HORIZON_MS: u64 = 7 * 24 * 3_600_000;

/// Seeded SplitMix64: the whole run follows from `--seed`.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        // Box-Muller.
        let (u1, u2) = (1.0 - self.unit(), self.unit());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        median * (sigma * z).exp()
    }

    fn exponential(&mut self, mean: f64) -> u64 {
        (-mean * (1.0 - self.unit()).ln()) as u64
    }
}

/// A peer id drawn from the seed: a SHA-256 multihash, like the id of a large key.
fn peer_id(seed: u64, n: u64) -> PeerId {
    let mut h = blake3::Hasher::new();
    h.update(b"agora grid-sim peer");
    h.update(&seed.to_le_bytes());
    h.update(&n.to_le_bytes());
    let mut bytes = vec![0x12, 0x20];
    bytes.extend_from_slice(h.finalize().as_bytes());
    PeerId::from_bytes(&bytes).expect("a sha2-256 multihash is a peer id")
}

fn digest_of(parts: &[&[u8]]) -> Digest {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p);
    }
    *h.finalize().as_bytes()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Honest,
    /// Commits to and reveals its own wrong result.
    Liar,
    /// Commits to a guess, then reveals the honest outcome it copied.
    Copier,
}

struct Run {
    unit: u32,
    start: u64,
    end: u64,
}

struct Worker {
    peer: PeerId,
    kind: Kind,
    /// Fuel per second.
    speed: f64,
    online: bool,
    /// Bumped when the worker leaves: messages of an earlier session are lost.
    session: u32,
    /// Has a measured speed (after its first run), which the submitter's deadline check uses.
    measured: bool,
    run: Option<Run>,
    /// Units assigned and waiting for the thread.
    queue: VecDeque<u32>,
    /// Units taken and not yet through their first commit (and reveal): `running` in
    /// `service::worker`, what the worker's free slots are counted against.
    tasks: usize,
    /// A fetch is on its way (or waits out a "no work" answer).
    fetching: bool,
    /// Outcomes computed and not yet revealed or refused.
    held: Vec<u32>,
    /// Units assigned to it whose replica may still be running at the submitter.
    live: Vec<u32>,
    assigned: u32,
    /// Units it revealed with the submitter accepting the reveal (cheaters only).
    revealed: Vec<u32>,
}

/// What the simulation knows of one replica beyond the core's state.
#[derive(Clone, Copy, Default)]
struct Rec {
    /// Fuel burnt (the whole unit once run; elapsed × speed if abandoned).
    spent: f64,
    done: bool,
    /// The worker left while running it.
    abandoned: bool,
    committed: bool,
    /// Its worker's reveal was refused as too early (the unit fell below a quorum of
    /// commitments after it was asked).
    too_early: bool,
    /// Expired because of an absence: abandoned by its worker, or committed and not revealed
    /// in time while its worker was away.
    expired_away: bool,
}

/// The submitter's reputation table (`SubmitState::workers` and `worker_entry`): at most
/// [`MAX_WORKERS`] entries; a new worker displaces the least proven one without faults or
/// debts, or gets nothing if there is none. Ties go to the lowest index (the service's choice
/// among ties follows its hash map's order).
struct Reputations {
    table: Vec<Option<Reputation>>,
    len: usize,
    /// Entries that may be forgotten, least proven first: (valid, fuel, worker).
    evictable: BTreeSet<(u64, u64, u32)>,
    forgotten: u64,
}

impl Reputations {
    fn new(workers: usize) -> Self {
        Self {
            table: vec![None; workers],
            len: 0,
            evictable: BTreeSet::new(),
            forgotten: 0,
        }
    }

    fn key(w: u32, r: &Reputation) -> Option<(u64, u64, u32)> {
        (r.faults == 0 && r.owed == 0).then_some((r.valid, r.fuel, w))
    }

    /// `worker_entry(w)` followed by `change`; false if there was no room.
    fn update(&mut self, w: u32, change: impl FnOnce(&mut Reputation)) -> bool {
        if self.table[w as usize].is_none() {
            if self.len >= MAX_WORKERS {
                let Some(victim) = self.evictable.pop_first() else {
                    return false;
                };
                self.table[victim.2 as usize] = None;
                self.len -= 1;
                self.forgotten += 1;
            }
            let fresh = Reputation::default();
            self.evictable.extend(Self::key(w, &fresh));
            self.table[w as usize] = Some(fresh);
            self.len += 1;
        }
        let r = self.table[w as usize].as_mut().expect("just made");
        if let Some(k) = Self::key(w, r) {
            self.evictable.remove(&k);
        }
        change(r);
        if let Some(k) = Self::key(w, r) {
            self.evictable.insert(k);
        }
        true
    }

    /// `worker_entry(w).cloned()`, as a fetch does it.
    fn view(&mut self, w: u32) -> Option<Reputation> {
        if let Some(r) = &self.table[w as usize] {
            return Some(r.clone());
        }
        self.update(w, |_| {})
            .then(|| self.table[w as usize].clone().expect("present"))
    }

    fn get(&self, w: u32) -> Reputation {
        self.table[w as usize].clone().unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    /// The worker leaves or comes back.
    Churn {
        w: u32,
    },
    /// The submitter's timer: expire leases and reveal deadlines.
    Tick,
    // At the submitter (sent by a worker in session `s`).
    /// Asks for as many units as the worker has free slots.
    Fetch {
        w: u32,
        s: u32,
    },
    Progress {
        w: u32,
        s: u32,
        unit: u32,
    },
    Commit {
        w: u32,
        s: u32,
        unit: u32,
        fresh: bool,
    },
    Reveal {
        w: u32,
        s: u32,
        unit: u32,
    },
    // At a worker.
    /// The answer to a fetch: the first `n` of `units`.
    Assigned {
        w: u32,
        s: u32,
        units: [u32; SLOTS],
        n: u8,
    },
    /// A unit's first commit (and reveal) is over: its slot is free.
    TaskEnd {
        w: u32,
        s: u32,
    },
    Done {
        w: u32,
        s: u32,
        unit: u32,
    },
    /// The answer to a commit: `Some(reveal)`, or `None` if refused.
    Committed {
        w: u32,
        s: u32,
        unit: u32,
        fresh: bool,
        reveal: Option<bool>,
    },
    /// The submitter asks for a held outcome.
    Pull {
        w: u32,
        unit: u32,
    },
}

/// Bits of [`Scheduled::key`] below the time: the sequence number.
const SEQ_BITS: u32 = 34;

struct Scheduled {
    /// Time (ms, at most [`HORIZON_MS`] + 1 < 2^30) above [`SEQ_BITS`], sequence number below:
    /// one compare orders events by time, then in the order they were scheduled.
    key: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: the heap pops the earliest (then the first scheduled).
    fn cmp(&self, other: &Self) -> Ordering {
        other.key.cmp(&self.key)
    }
}

#[derive(Default)]
struct Counts {
    events: u64,
    fetches: u64,
    no_work: u64,
    deadline_skips: u64,
    no_room: u64,
    assigned: u64,
    departures: u64,
    silent_departures: u64,
    lost: u64,
    expired_abandoned: u64,
    expired_lease: u64,
    expired_committed: u64,
    expired_stranded: u64,
    reveal_too_early: u64,
    commit_refused: u64,
    reveal_refused: u64,
    mismatches: u64,
    outvoted: u64,
    more_replicas: u64,
    late_credits: u64,
}

struct Sim {
    cfg: Config,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    job: Job,
    submitter: PeerId,
    workers: Vec<Worker>,
    index: HashMap<PeerId, u32>,
    reps: Reputations,
    fuel: Vec<u64>,
    truth: Vec<Outcome>,
    truth_digest: Vec<Digest>,
    recs: HashMap<(u32, u32), Rec>,
    /// `JobRecord::max_fuel_seen`.
    max_fuel_seen: u64,
    decided_at: Vec<u64>,
    /// How long each replica that started would run (fuel / speed).
    runs_ms: Vec<u64>,
    counts: Counts,
}

impl Sim {
    fn new(cfg: &Config) -> Self {
        let mut rng = Rng::new(cfg.seed);
        let seed = cfg.seed;
        let fuel: Vec<u64> = (0..cfg.units)
            .map(|_| {
                (rng.lognormal(UNIT_FUEL_MEDIAN, UNIT_FUEL_SIGMA) as u64)
                    .clamp(1_000_000_000, FUEL_CAP)
            })
            .collect();
        let truth: Vec<Outcome> = (0..cfg.units)
            .map(|i| Outcome::Ok {
                result: digest_of(&[b"truth", &seed.to_le_bytes(), &(i as u64).to_le_bytes()]),
                size: 4096,
                fuel: fuel[i],
            })
            .collect();
        let truth_digest = truth.iter().map(Outcome::digest).collect();
        let submitter = peer_id(seed, u64::MAX);
        let spec = JobSpec {
            submitter,
            program: digest_of(&[b"program"]),
            program_size: 1 << 20,
            units: (0..cfg.units)
                .map(|i| UnitSpec {
                    name: format!("unit-{i}"),
                    input: digest_of(&[b"input", &(i as u64).to_le_bytes()]),
                    size: 1 << 16,
                })
                .collect(),
            replicas: 2,
            quorum: 2,
            max_replicas: 5,
            fuel: FUEL_CAP,
            memory: 64 << 20,
            lease_ms: LEASE_MS,
            pay: 0,
            created_ms: 0,
        };
        spec.check().expect("the simulated job is valid");
        // Exactly round(cheaters × workers) cheaters, a fifth of them copiers.
        let n_cheaters = (cfg.cheaters * cfg.workers as f64).round() as usize;
        let n_copiers = (COPIERS * n_cheaters as f64).round() as usize;
        let mut order: Vec<usize> = (0..cfg.workers).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let mut kinds = vec![Kind::Honest; cfg.workers];
        for (k, &w) in order.iter().take(n_cheaters).enumerate() {
            kinds[w] = if k < n_copiers {
                Kind::Copier
            } else {
                Kind::Liar
            };
        }
        let workers: Vec<Worker> = (0..cfg.workers)
            .map(|i| Worker {
                peer: peer_id(seed, i as u64),
                kind: kinds[i],
                speed: rng.lognormal(SPEED_MEDIAN, SPEED_SIGMA).clamp(1e8, 1e10),
                online: true,
                session: 0,
                measured: false,
                run: None,
                queue: VecDeque::new(),
                tasks: 0,
                fetching: false,
                held: Vec::new(),
                live: Vec::new(),
                assigned: 0,
                revealed: Vec::new(),
            })
            .collect();
        let index = workers
            .iter()
            .enumerate()
            .map(|(i, w)| (w.peer, i as u32))
            .collect();
        let mut sim = Self {
            cfg: cfg.clone(),
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            job: Job::new(spec),
            submitter,
            workers,
            index,
            reps: Reputations::new(cfg.workers),
            fuel,
            truth,
            truth_digest,
            recs: HashMap::new(),
            max_fuel_seen: 0,
            decided_at: Vec::new(),
            runs_ms: Vec::new(),
            counts: Counts::default(),
        };
        for w in 0..cfg.workers as u32 {
            // Start in the stationary state: away with probability `churn`.
            let away = cfg.churn > 0.0 && sim.rng.chance(cfg.churn);
            if cfg.churn > 0.0 {
                let mean = if away { sim.away_mean() } else { SESSION_MS };
                let at = sim.rng.exponential(mean);
                sim.at(at, Ev::Churn { w });
            }
            if away {
                sim.workers[w as usize].online = false;
            } else {
                // Workers hear of the job within an announcement period.
                let at = sim.rng.between(0, 2_000);
                sim.workers[w as usize].fetching = true;
                sim.at(at, Ev::Fetch { w, s: 0 });
            }
        }
        sim.at(Self::tick_ms(), Ev::Tick);
        sim
    }

    fn tick_ms() -> u64 {
        agora_grid::Config::default().tick.as_millis() as u64
    }

    fn away_mean(&self) -> f64 {
        SESSION_MS * self.cfg.churn / (1.0 - self.cfg.churn)
    }

    fn at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        debug_assert!(self.seq < 1 << SEQ_BITS);
        // Anything past the horizon is never run.
        self.queue.push(Scheduled {
            key: (at.min(HORIZON_MS + 1) << SEQ_BITS) | self.seq,
            ev,
        });
    }

    /// Schedules `ev` one message delay from now.
    fn send(&mut self, ev: Ev) {
        let at = self.now + self.lat();
        self.at(at, ev);
    }

    fn lat(&mut self) -> u64 {
        self.rng.between(LATENCY_MS.0, LATENCY_MS.1)
    }

    /// The message was sent in an earlier session of `w`: it was lost when `w` left.
    fn stale(&self, w: u32, s: u32) -> bool {
        let wk = &self.workers[w as usize];
        !wk.online || wk.session != s
    }

    fn rec(&mut self, unit: u32, w: u32) -> &mut Rec {
        self.recs.entry((unit, w)).or_default()
    }

    /// What `w` commits to for `unit`: the honest digest, or its own wrong one.
    fn committed_digest(&self, w: u32, unit: u32) -> Digest {
        match self.workers[w as usize].kind {
            Kind::Honest => self.truth_digest[unit as usize],
            Kind::Liar | Kind::Copier => self.lie(w, unit).digest(),
        }
    }

    fn revealed_outcome(&self, w: u32, unit: u32) -> Outcome {
        match self.workers[w as usize].kind {
            Kind::Honest | Kind::Copier => self.truth[unit as usize].clone(),
            Kind::Liar => self.lie(w, unit),
        }
    }

    fn lie(&self, w: u32, unit: u32) -> Outcome {
        Outcome::Ok {
            result: digest_of(&[
                b"lie",
                &self.cfg.seed.to_le_bytes(),
                &w.to_le_bytes(),
                &unit.to_le_bytes(),
            ]),
            size: 4096,
            fuel: self.fuel[unit as usize],
        }
    }

    fn run(&mut self) {
        while let Some(Scheduled { key, ev }) = self.queue.pop() {
            let at = key >> SEQ_BITS;
            if at > HORIZON_MS {
                break;
            }
            self.now = at;
            self.counts.events += 1;
            self.handle(ev);
            if self.job.status != JobStatus::Running {
                break;
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Churn { w } => self.churn(w),
            Ev::Tick => self.tick(),
            Ev::Fetch { w, s } => self.fetch(w, s),
            Ev::Progress { w, s, unit } => self.progress(w, s, unit),
            Ev::Commit { w, s, unit, fresh } => self.commit(w, s, unit, fresh),
            Ev::Reveal { w, s, unit } => self.reveal(w, s, unit),
            Ev::Assigned { w, s, units, n } => self.assigned(w, s, &units[..n as usize]),
            Ev::TaskEnd { w, s } => {
                if !self.stale(w, s) {
                    let wk = &mut self.workers[w as usize];
                    wk.tasks = wk.tasks.saturating_sub(1);
                    self.maybe_fetch(w);
                }
            }
            Ev::Done { w, s, unit } => self.done(w, s, unit),
            Ev::Committed {
                w,
                s,
                unit,
                fresh,
                reveal,
            } => self.committed(w, s, unit, fresh, reveal),
            Ev::Pull { w, unit } => self.pull(w, unit),
        }
    }

    fn churn(&mut self, w: u32) {
        let now = self.now;
        if self.workers[w as usize].online {
            self.counts.departures += 1;
            let silent = self.rng.chance(SILENT);
            let wk = &mut self.workers[w as usize];
            wk.online = false;
            wk.session += 1;
            wk.tasks = 0;
            wk.fetching = false;
            let queued: Vec<u32> = wk.queue.drain(..).collect();
            if let Some(run) = wk.run.take() {
                let spent = ((now - run.start) as f64 / 1000.0 * wk.speed)
                    .min(self.fuel[run.unit as usize] as f64);
                let rec = self.rec(run.unit, w);
                rec.abandoned = true;
                rec.spent = spent;
            }
            for unit in queued {
                self.rec(unit, w).abandoned = true;
            }
            if silent {
                self.counts.silent_departures += 1;
            } else {
                // `Grid::worker_lost`. Calling `Job::lost` only when the worker has a running
                // replica changes nothing (it is a no-op otherwise) and saves a scan of the job.
                if self.running_of(w) > 0 {
                    let peer = self.workers[w as usize].peer;
                    let lost = self.job.lost(&peer).len() as u64;
                    self.workers[w as usize].live.clear();
                    if lost > 0 {
                        self.counts.lost += lost;
                        self.reps.update(w, |r| r.missed += lost);
                    }
                }
            }
            let away = self.rng.exponential(self.away_mean());
            self.at(now + away, Ev::Churn { w });
        } else {
            let wk = &mut self.workers[w as usize];
            wk.online = true;
            let s = wk.session;
            // Held outcomes are offered again at once (`held_loop` on reconnection), and the
            // worker looks for work.
            for unit in wk.held.clone() {
                self.send(Ev::Commit {
                    w,
                    s,
                    unit,
                    fresh: false,
                });
            }
            self.maybe_fetch(w);
            let stay = self.rng.exponential(SESSION_MS);
            self.at(now + stay, Ev::Churn { w });
        }
    }

    /// `Grid::expire_leases`.
    fn tick(&mut self) {
        let now = self.now;
        if self.job.next_expiry().is_some_and(|t| t <= now) {
            for (unit, peer) in self.job.expire(now) {
                let w = self.index[&peer];
                let rec = self.rec(unit, w);
                let (committed, abandoned, too_early) =
                    (rec.committed, rec.abandoned, rec.too_early);
                rec.expired_away = abandoned || (committed && !too_early);
                if committed && too_early {
                    self.counts.expired_stranded += 1;
                } else if committed {
                    self.counts.expired_committed += 1;
                } else if abandoned {
                    self.counts.expired_abandoned += 1;
                } else {
                    self.counts.expired_lease += 1;
                }
                self.reps.update(w, |r| r.missed += 1);
            }
        }
        self.at(now + Self::tick_ms(), Ev::Tick);
    }

    /// Replicas of `w` running at the submitter (`Job::running_of`, from the units it got).
    fn running_of(&mut self, w: u32) -> usize {
        let peer = self.workers[w as usize].peer;
        let job = &self.job;
        self.workers[w as usize].live.retain(|u| {
            job.units[*u as usize]
                .replicas
                .iter()
                .any(|r| r.worker == peer && r.state == ReplicaState::Running)
        });
        self.workers[w as usize].live.len()
    }

    /// `worker_loop`: with a free slot and no request out, ask the submitter for work.
    fn maybe_fetch(&mut self, w: u32) {
        let wk = &mut self.workers[w as usize];
        if !wk.online || wk.fetching || wk.tasks >= SLOTS {
            return;
        }
        wk.fetching = true;
        let s = wk.session;
        self.send(Ev::Fetch { w, s });
    }

    /// `Grid::on_fetch`. The worker's free slots are taken as they are when the request arrives
    /// (a slot that frees while it travels is asked for at once by the worker's loop anyway).
    fn fetch(&mut self, w: u32, s: u32) {
        if self.stale(w, s) {
            return;
        }
        self.counts.fetches += 1;
        let slots = SLOTS.saturating_sub(self.workers[w as usize].tasks);
        let room = slots.min(MAX_RUNNING_PER_WORKER.saturating_sub(self.running_of(w)));
        let mut units = [0; SLOTS];
        let mut n = 0;
        if room > 0 {
            match self.reps.view(w) {
                None => self.counts.no_room += 1,
                Some(rep) => {
                    let wk = &self.workers[w as usize];
                    let fuel_per_sec = if wk.measured { wk.speed as u64 } else { 0 };
                    let expected = self.max_fuel_seen;
                    let peer = wk.peer;
                    if fuel_per_sec > 0
                        && expected > 0
                        && expected / fuel_per_sec > self.job.spec.lease_ms / 1000
                    {
                        self.counts.deadline_skips += 1;
                    } else {
                        while n < room {
                            let Some(u) = self.job.assign(peer, &self.submitter, &rep, self.now)
                            else {
                                break;
                            };
                            units[n] = u;
                            n += 1;
                            self.counts.assigned += 1;
                            let wk = &mut self.workers[w as usize];
                            wk.assigned += 1;
                            wk.live.push(u);
                            self.recs.insert((u, w), Rec::default());
                        }
                    }
                }
            }
        }
        if n == 0 {
            // "No work, ask again in `RETRY_MS`": the worker's next request, scheduled here
            // rather than through an event for the answer (most events of a run's tail are
            // these). A slot that frees meanwhile waits for it, as in the service.
            self.counts.no_work += 1;
            let again = self.now + self.lat() + RETRY_MS + self.lat();
            self.at(again, Ev::Fetch { w, s });
            return;
        }
        self.send(Ev::Assigned {
            w,
            s,
            units,
            n: n as u8,
        });
    }

    fn assigned(&mut self, w: u32, s: u32, units: &[u32]) {
        if self.stale(w, s) {
            return;
        }
        let now = self.now;
        let wk = &mut self.workers[w as usize];
        // After units the worker asks again at once for the slots still free.
        wk.fetching = false;
        wk.tasks += units.len();
        wk.queue.extend(units);
        for &unit in units {
            // Signs of life from the start, while it waits for the thread too.
            let at = now + PROGRESS_EVERY_MS + self.lat();
            self.at(at, Ev::Progress { w, s, unit });
        }
        self.start_next(w);
        self.maybe_fetch(w);
    }

    /// The thread takes the next unit, if it is free.
    fn start_next(&mut self, w: u32) {
        let now = self.now;
        let wk = &mut self.workers[w as usize];
        if wk.run.is_some() {
            return;
        }
        let Some(unit) = wk.queue.pop_front() else {
            return;
        };
        let run_ms = (self.fuel[unit as usize] as f64 / wk.speed * 1000.0).ceil() as u64;
        let end = now + run_ms.max(1);
        wk.run = Some(Run {
            unit,
            start: now,
            end,
        });
        let s = wk.session;
        self.runs_ms.push(run_ms);
        self.at(end, Ev::Done { w, s, unit });
    }

    /// `Grid::on_progress`.
    fn progress(&mut self, w: u32, s: u32, unit: u32) {
        if self.stale(w, s) {
            return;
        }
        let peer = self.workers[w as usize].peer;
        // Refused if the replica expired: the worker runs on regardless, as the service's does.
        let _ = self.job.progress(&peer, unit, self.now);
        let wk = &self.workers[w as usize];
        let waiting = wk.queue.contains(&unit);
        let running = wk
            .run
            .as_ref()
            .is_some_and(|r| r.unit == unit && self.now + PROGRESS_EVERY_MS < r.end);
        if waiting || running {
            let at = self.now + PROGRESS_EVERY_MS;
            self.at(at, Ev::Progress { w, s, unit });
        }
    }

    fn done(&mut self, w: u32, s: u32, unit: u32) {
        if self.stale(w, s) {
            return;
        }
        let fuel = self.fuel[unit as usize] as f64;
        let wk = &mut self.workers[w as usize];
        wk.run = None;
        wk.measured = true;
        wk.held.push(unit);
        let rec = self.rec(unit, w);
        rec.spent = fuel;
        rec.done = true;
        self.send(Ev::Commit {
            w,
            s,
            unit,
            fresh: true,
        });
        self.start_next(w);
    }

    /// `Grid::on_commit`.
    fn commit(&mut self, w: u32, s: u32, unit: u32, fresh: bool) {
        if self.stale(w, s) {
            return;
        }
        let peer = self.workers[w as usize].peer;
        let c = commitment(&self.committed_digest(w, unit), &peer);
        let reveal = match self.job.commit(&peer, unit, c, self.now) {
            Ok(ack) => {
                self.rec(unit, w).committed = true;
                for other in ack.ask {
                    let o = self.index[&other];
                    self.send(Ev::Pull { w: o, unit });
                }
                Some(ack.reveal)
            }
            Err(_) => {
                self.counts.commit_refused += 1;
                None
            }
        };
        self.send(Ev::Committed {
            w,
            s,
            unit,
            fresh,
            reveal,
        });
    }

    /// `offer` on the worker: reveal if told to, drop the outcome if refused, and (for a unit
    /// just run) free the slot once the exchange is over.
    fn committed(&mut self, w: u32, s: u32, unit: u32, fresh: bool, reveal: Option<bool>) {
        if self.stale(w, s) {
            return;
        }
        let mut exchange = 0;
        match reveal {
            Some(true) => {
                let at = self.now + self.lat();
                exchange = at - self.now + self.lat();
                self.at(at, Ev::Reveal { w, s, unit });
            }
            Some(false) => {}
            None => self.workers[w as usize].held.retain(|u| *u != unit),
        }
        if fresh {
            let at = self.now + exchange;
            self.at(at, Ev::TaskEnd { w, s });
        }
    }

    /// `Grid::on_pull` on the worker. A pull to a worker that is away fails; the worker offers
    /// the outcome itself when it is back.
    fn pull(&mut self, w: u32, unit: u32) {
        let wk = &self.workers[w as usize];
        if wk.online && wk.held.contains(&unit) {
            let s = wk.session;
            self.send(Ev::Reveal { w, s, unit });
        }
    }

    /// `Grid::on_reveal`: the reputation bookkeeping around `Job::reveal`.
    fn reveal(&mut self, w: u32, s: u32, unit: u32) {
        if self.stale(w, s) || !self.workers[w as usize].held.contains(&unit) {
            // Lost, or already revealed (asked twice).
            return;
        }
        let peer = self.workers[w as usize].peer;
        let outcome = self.revealed_outcome(w, unit);
        let was_open = !self.job.units[unit as usize].decided();
        let effect = match self.job.reveal(&peer, unit, outcome) {
            Err(Refusal::TooEarly(_)) => {
                // Asked to reveal, but a commitment counted then has since failed: the worker
                // keeps its outcome and is asked again once a quorum has committed (the
                // service's `pull_stragglers`), if its reveal deadline has not passed by then.
                self.counts.reveal_too_early += 1;
                self.rec(unit, w).too_early = true;
                return;
            }
            Err(_) => {
                self.counts.reveal_refused += 1;
                self.workers[w as usize].held.retain(|u| *u != unit);
                return;
            }
            Ok(effect) => effect,
        };
        let wk = &mut self.workers[w as usize];
        wk.held.retain(|u| *u != unit);
        if wk.kind != Kind::Honest {
            wk.revealed.push(unit);
        }
        let (credited, faulty) = match effect {
            RevealEffect::CommitmentMismatch => {
                self.counts.mismatches += 1;
                (Vec::new(), vec![peer])
            }
            RevealEffect::Decided { credited, faulty } => {
                self.counts.outvoted += faulty.len() as u64;
                if was_open {
                    self.decided_at.push(self.now);
                } else {
                    self.counts.late_credits += credited.len() as u64;
                }
                (credited, faulty)
            }
            RevealEffect::MoreReplicas { .. } => {
                self.counts.more_replicas += 1;
                (Vec::new(), Vec::new())
            }
            RevealEffect::Pending => (Vec::new(), Vec::new()),
        };
        let fuel = match &self.job.units[unit as usize].state {
            UnitState::Accepted { outcome, .. } => outcome.fuel(),
            _ => 0,
        };
        self.max_fuel_seen = self.max_fuel_seen.max(fuel);
        let pay = self.job.spec.pay;
        for p in credited {
            self.reps.update(self.index[&p], |r| {
                r.valid += 1;
                r.fuel = r.fuel.saturating_add(fuel);
                r.owed = r.owed.saturating_add(pay);
            });
        }
        for p in faulty {
            self.reps
                .update(self.index[&p], |r| r.faults = r.faults.saturating_add(1));
        }
    }

    fn report(mut self) -> Report {
        let (accepted, failed, open) = self.job.counts();
        self.runs_ms.sort_unstable();
        let mut r = Report {
            config: self.cfg.clone(),
            done: self.job.status == JobStatus::Done,
            virtual_ms: self.now,
            units: self.job.units.len(),
            accepted,
            failed,
            open,
            wrong_accepted: 0,
            decided_ms: [50, 90, 99, 100].map(|p| percentile(&self.decided_at, p)),
            run_ms: [50, 99, 100].map(|p| percentile(&self.runs_ms, p)),
            cheaters: 0,
            liars: 0,
            copiers: 0,
            cheaters_took_part: 0,
            cheaters_revealed: 0,
            cheaters_with_faults: 0,
            cheaters_excluded: 0,
            cheaters_unpunished: 0,
            honest_with_faults: 0,
            fault_mismatch: 0,
            barred_by_misses: self
                .job
                .misses
                .values()
                .filter(|m| **m >= MAX_MISSES_PER_JOB)
                .count(),
            reputations_forgotten: self.reps.forgotten,
            cpu: Cpu::default(),
            events: self.counts.events,
            fetches: self.counts.fetches,
            no_work: self.counts.no_work,
            deadline_skips: self.counts.deadline_skips,
            no_room: self.counts.no_room,
            replicas: self.counts.assigned,
            departures: self.counts.departures,
            silent_departures: self.counts.silent_departures,
            lost: self.counts.lost,
            expired_abandoned: self.counts.expired_abandoned,
            expired_lease: self.counts.expired_lease,
            expired_committed: self.counts.expired_committed,
            expired_stranded: self.counts.expired_stranded,
            reveal_too_early: self.counts.reveal_too_early,
            commit_refused: self.counts.commit_refused,
            reveal_refused: self.counts.reveal_refused,
            mismatches: self.counts.mismatches,
            outvoted: self.counts.outvoted,
            more_replicas: self.counts.more_replicas,
            late_credits: self.counts.late_credits,
        };
        for (i, u) in self.job.units.iter().enumerate() {
            if let UnitState::Accepted { digest, .. } = &u.state {
                if *digest == self.truth_digest[i] {
                    r.cpu.useful += self.fuel[i] as f64;
                } else {
                    r.wrong_accepted += 1;
                }
            }
            for replica in &u.replicas {
                let w = self.index[&replica.worker];
                let rec = self.recs.get(&(i as u32, w)).copied().unwrap_or_default();
                // A replica still running when the job ends runs to completion.
                let spent = if rec.done || rec.abandoned {
                    rec.spent
                } else {
                    self.fuel[i] as f64
                };
                let bucket = if self.workers[w as usize].kind != Kind::Honest {
                    &mut r.cpu.cheaters
                } else if rec.abandoned {
                    &mut r.cpu.churn
                } else {
                    match (&u.state, replica.state) {
                        (UnitState::Failed { .. }, _) => &mut r.cpu.failed,
                        (UnitState::Accepted { peers, .. }, ReplicaState::Revealed) => {
                            if peers.contains(&replica.worker) {
                                &mut r.cpu.quorum
                            } else {
                                &mut r.cpu.late
                            }
                        }
                        (_, ReplicaState::Lost) => &mut r.cpu.churn,
                        (_, ReplicaState::Expired) if rec.expired_away => &mut r.cpu.churn,
                        (_, ReplicaState::Expired) if rec.committed => &mut r.cpu.stranded,
                        (_, ReplicaState::Expired) => &mut r.cpu.lease,
                        _ => &mut r.cpu.superseded,
                    }
                };
                *bucket += spent;
                r.cpu.total += spent;
            }
        }
        for (i, wk) in self.workers.iter().enumerate() {
            let rep = self.reps.get(i as u32);
            if wk.kind == Kind::Honest {
                r.honest_with_faults += usize::from(rep.faults > 0);
                continue;
            }
            r.cheaters += 1;
            match wk.kind {
                Kind::Liar => r.liars += 1,
                _ => r.copiers += 1,
            }
            r.cheaters_took_part += usize::from(wk.assigned > 0);
            r.cheaters_revealed += usize::from(!wk.revealed.is_empty());
            r.cheaters_with_faults += usize::from(rep.faults > 0);
            r.cheaters_excluded += usize::from(rep.excluded());
            // Every reveal of a unit that was accepted is a fault, and nothing else is.
            let punishable = wk
                .revealed
                .iter()
                .filter(|u| {
                    matches!(
                        self.job.units[**u as usize].state,
                        UnitState::Accepted { .. }
                    )
                })
                .count() as u32;
            r.cheaters_unpunished += usize::from(punishable > 0 && rep.faults == 0);
            r.fault_mismatch += usize::from(punishable != rep.faults);
        }
        r
    }
}

/// CPU spent, in fuel, by the fate of each replica.
#[derive(Clone, Debug, Default)]
pub struct Cpu {
    pub total: f64,
    /// One honest run per accepted unit.
    pub useful: f64,
    /// Honest replicas in the quorum that accepted their unit (R × useful).
    pub quorum: f64,
    /// Every replica a cheater ran.
    pub cheaters: f64,
    /// Honest runs abandoned by a departing worker, lost with it, or whose reveal deadline
    /// passed while it was away.
    pub churn: f64,
    /// Honest runs that outlasted their lease on a slow worker.
    pub lease: f64,
    /// Honest runs committed and asked to reveal, whose reveal was then refused as too early
    /// (a copier's failed reveal took the unit below a quorum of commitments) and whose reveal
    /// deadline passed before a new replica committed.
    pub stranded: f64,
    /// Honest replicas revealed after their unit was decided (credited, not needed).
    pub late: f64,
    /// Honest replicas of units decided before they committed or revealed.
    pub superseded: f64,
    /// Honest replicas of units that failed (no quorum within the replica limit).
    pub failed: f64,
}

impl Cpu {
    fn per_useful(&self, x: f64) -> f64 {
        if self.useful > 0.0 {
            x / self.useful
        } else {
            0.0
        }
    }

    /// Total CPU per useful CPU.
    pub fn ratio(&self) -> f64 {
        self.per_useful(self.total)
    }

    /// The same without the cheaters' own runs.
    pub fn honest_ratio(&self) -> f64 {
        self.per_useful(self.total - self.cheaters)
    }

    /// Overhead beyond R that is neither cheating nor churn.
    fn other(&self) -> f64 {
        self.lease + self.stranded + self.late + self.superseded + self.failed
    }
}

/// What a run found. The same config gives the same report.
#[derive(Clone, Debug)]
pub struct Report {
    pub config: Config,
    /// The job reached `JobStatus::Done`.
    pub done: bool,
    pub virtual_ms: u64,
    pub units: usize,
    pub accepted: usize,
    pub failed: usize,
    pub open: usize,
    /// Accepted units whose digest is not the honest one. Must be 0.
    pub wrong_accepted: usize,
    /// When 50, 90, 99 and 100 % of the decided units were decided (virtual ms).
    pub decided_ms: [u64; 4],
    /// How long replicas ran (fuel / speed of their worker): median, 99th percentile, longest.
    pub run_ms: [u64; 3],
    pub cheaters: usize,
    pub liars: usize,
    pub copiers: usize,
    pub cheaters_took_part: usize,
    pub cheaters_revealed: usize,
    pub cheaters_with_faults: usize,
    pub cheaters_excluded: usize,
    /// Cheaters that revealed a unit that was accepted and have no fault. Must be 0.
    pub cheaters_unpunished: usize,
    /// Must be 0.
    pub honest_with_faults: usize,
    /// Cheaters whose faults differ from their reveals of accepted units (0 unless their
    /// record was forgotten, with more than `MAX_WORKERS` workers).
    pub fault_mismatch: usize,
    /// Workers that got no more work from the job after `MAX_MISSES_PER_JOB` missed leases.
    pub barred_by_misses: usize,
    pub reputations_forgotten: u64,
    pub cpu: Cpu,
    pub events: u64,
    pub fetches: u64,
    pub no_work: u64,
    pub deadline_skips: u64,
    pub no_room: u64,
    pub replicas: u64,
    pub departures: u64,
    pub silent_departures: u64,
    pub lost: u64,
    pub expired_abandoned: u64,
    pub expired_lease: u64,
    pub expired_committed: u64,
    /// Committed replicas that expired after their reveal was refused as too early.
    pub expired_stranded: u64,
    pub reveal_too_early: u64,
    pub commit_refused: u64,
    pub reveal_refused: u64,
    pub mismatches: u64,
    pub outvoted: u64,
    pub more_replicas: u64,
    pub late_credits: u64,
}

/// Runs the simulation to the end of the job (or [`HORIZON_MS`]).
pub fn run(cfg: &Config) -> Report {
    let mut sim = Sim::new(cfg);
    sim.run();
    sim.report()
}

/// The `p`th percentile of sorted `v` (0 if empty).
fn percentile(v: &[u64], p: usize) -> u64 {
    match v.len() {
        0 => 0,
        n => v[(n * p).div_ceil(100).clamp(1, n) - 1],
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Report {
    pub fn to_json(&self) -> Value {
        let c = &self.cpu;
        json!({
            "config": {
                "workers": self.config.workers,
                "units": self.config.units,
                "churn": self.config.churn,
                "cheaters": self.config.cheaters,
                "seed": self.config.seed,
                "replicas": 2, "quorum": 2, "max_replicas": 5,
                "lease_ms": LEASE_MS,
                "session_ms": SESSION_MS as u64,
                "silent_departures": SILENT,
                "copiers_of_cheaters": COPIERS,
            },
            "done": self.done,
            "virtual_ms": self.virtual_ms,
            "units": {
                "total": self.units,
                "accepted": self.accepted,
                "failed": self.failed,
                "open": self.open,
                "wrong_accepted": self.wrong_accepted,
                "decided_ms": {
                    "p50": self.decided_ms[0],
                    "p90": self.decided_ms[1],
                    "p99": self.decided_ms[2],
                    "p100": self.decided_ms[3],
                },
                "run_ms": {
                    "p50": self.run_ms[0],
                    "p99": self.run_ms[1],
                    "max": self.run_ms[2],
                },
            },
            "cheaters": {
                "total": self.cheaters,
                "liars": self.liars,
                "copiers": self.copiers,
                "took_part": self.cheaters_took_part,
                "revealed": self.cheaters_revealed,
                "with_faults": self.cheaters_with_faults,
                "excluded": self.cheaters_excluded,
                "unpunished": self.cheaters_unpunished,
                "outvoted": self.outvoted,
                "commitment_mismatches": self.mismatches,
                "more_replicas": self.more_replicas,
            },
            "honest_with_faults": self.honest_with_faults,
            "churn": {
                "departures": self.departures,
                "silent_departures": self.silent_departures,
                "replicas_lost": self.lost,
                "expired_liveness": self.expired_abandoned,
                "expired_reveal_deadline": self.expired_committed,
                "barred_by_misses": self.barred_by_misses,
            },
            "replicas": {
                "issued": self.replicas,
                "expired_lease": self.expired_lease,
                "commit_refused": self.commit_refused,
                "reveal_refused": self.reveal_refused,
                "reveal_too_early": self.reveal_too_early,
                "expired_after_too_early": self.expired_stranded,
                "late_credits": self.late_credits,
            },
            "fetches": {
                "total": self.fetches,
                "no_work": self.no_work,
                "deadline_skips": self.deadline_skips,
                "no_reputation_room": self.no_room,
                "reputations_forgotten": self.reputations_forgotten,
            },
            "cpu": {
                "total_fuel": c.total as u64,
                "useful_fuel": c.useful as u64,
                "ratio": round3(c.ratio()),
                "honest_ratio": round3(c.honest_ratio()),
                "per_useful": {
                    "quorum": round3(c.per_useful(c.quorum)),
                    "cheaters": round3(c.per_useful(c.cheaters)),
                    "churn": round3(c.per_useful(c.churn)),
                    "lease": round3(c.per_useful(c.lease)),
                    "stranded": round3(c.per_useful(c.stranded)),
                    "late": round3(c.per_useful(c.late)),
                    "superseded": round3(c.per_useful(c.superseded)),
                    "failed": round3(c.per_useful(c.failed)),
                },
            },
            "events": self.events,
        })
    }
}

fn hms(ms: u64) -> String {
    let s = ms / 1000;
    format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cfg = &self.config;
        let c = &self.cpu;
        writeln!(
            f,
            "grid-sim seed {}: {} workers ({:.0}% away at any time, {} cheaters: {} liars, {} copiers), \
             {} units, R=2 quorum 2 max 5, lease {} min",
            cfg.seed,
            cfg.workers,
            cfg.churn * 100.0,
            self.cheaters,
            self.liars,
            self.copiers,
            cfg.units,
            LEASE_MS / 60_000
        )?;
        writeln!(
            f,
            "job         {} after {} virtual: {} accepted, {} failed, {} open of {}; \
             decided 50% {}, 90% {}, 99% {}, 100% {}; a run takes {} (p99 {}, longest {})",
            if self.done { "done" } else { "NOT DONE" },
            hms(self.virtual_ms),
            self.accepted,
            self.failed,
            self.open,
            self.units,
            hms(self.decided_ms[0]),
            hms(self.decided_ms[1]),
            hms(self.decided_ms[2]),
            hms(self.decided_ms[3]),
            hms(self.run_ms[0]),
            hms(self.run_ms[1]),
            hms(self.run_ms[2]),
        )?;
        writeln!(
            f,
            "correct     wrong results accepted: {}; honest workers with faults: {}",
            self.wrong_accepted, self.honest_with_faults
        )?;
        writeln!(
            f,
            "cheaters    {} took part, {} revealed, {} with faults, {} excluded, {} unpunished; \
             {} outvoted, {} commitment mismatches, {} extra replicas asked",
            self.cheaters_took_part,
            self.cheaters_revealed,
            self.cheaters_with_faults,
            self.cheaters_excluded,
            self.cheaters_unpunished,
            self.outvoted,
            self.mismatches,
            self.more_replicas
        )?;
        writeln!(
            f,
            "churn       {} departures ({} silent): {} replicas lost, {} expired without signs of \
             life, {} committed missed the reveal deadline; {} workers barred from the job by misses",
            self.departures,
            self.silent_departures,
            self.lost,
            self.expired_abandoned,
            self.expired_committed,
            self.barred_by_misses
        )?;
        writeln!(
            f,
            "replicas    {} issued, {} past their lease, {} commits refused, {} reveals refused as \
             too early ({} of those expired); {} fetches ({} no work, {} skipped as too slow, {} no \
             room in the reputation table, {} forgotten)",
            self.replicas,
            self.expired_lease,
            self.commit_refused,
            self.reveal_too_early,
            self.expired_stranded,
            self.fetches,
            self.no_work,
            self.deadline_skips,
            self.no_room,
            self.reputations_forgotten
        )?;
        write!(
            f,
            "cpu         total/useful {:.3} (honest only {:.3}) = R {:.3} + cheaters {:.3} + churn \
             {:.3} + other {:.3} (past lease {:.3}, stranded {:.3}, late {:.3}, superseded {:.3}, \
             failed units {:.3})",
            c.ratio(),
            c.honest_ratio(),
            c.per_useful(c.quorum),
            c.per_useful(c.cheaters),
            c.per_useful(c.churn),
            c.per_useful(c.other()),
            c.per_useful(c.lease),
            c.per_useful(c.stranded),
            c.per_useful(c.late),
            c.per_useful(c.superseded),
            c.per_useful(c.failed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> Config {
        Config {
            workers: 500,
            units: 1_000,
            seed,
            ..Config::default()
        }
    }

    #[test]
    fn a_small_grid_decides_every_unit_right_and_punishes_every_cheater() {
        for seed in [1, 2] {
            let r = run(&small(seed));
            let why = format!("seed {seed}:\n{r}");
            assert!(r.done, "{why}");
            assert_eq!(r.open, 0, "{why}");
            assert_eq!(r.accepted + r.failed, r.units, "{why}");
            assert_eq!(r.wrong_accepted, 0, "{why}");
            assert_eq!(r.honest_with_faults, 0, "{why}");
            assert!(r.cheaters_revealed > 0, "cheaters must take part: {why}");
            assert_eq!(r.cheaters_unpunished, 0, "{why}");
            assert_eq!(r.fault_mismatch, 0, "{why}");
            assert!(r.cheaters_excluded > 0, "{why}");
            assert!(r.mismatches > 0 && r.outvoted > 0, "{why}");
            assert!(r.departures > 0 && r.lost > 0, "churn must happen: {why}");
            let c = &r.cpu;
            assert!(
                (c.quorum - 2.0 * c.useful).abs() < 1.0,
                "the quorum is two honest runs per accepted unit: {why}"
            );
            assert!(c.ratio() >= 2.0 && c.ratio() < 4.0, "{why}");
            assert!(c.cheaters > 0.0 && c.churn > 0.0, "{why}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_report() {
        let cfg = Config {
            workers: 200,
            units: 300,
            seed: 7,
            ..Config::default()
        };
        assert_eq!(run(&cfg).to_json(), run(&cfg).to_json());
    }

    #[test]
    fn without_churn_or_cheaters_the_cost_is_r() {
        let r = run(&Config {
            workers: 200,
            units: 300,
            churn: 0.0,
            cheaters: 0.0,
            seed: 3,
        });
        assert!(r.done);
        assert_eq!(r.accepted, 300);
        assert_eq!(r.departures, 0);
        // Only runs past their lease on slow workers cost more than R.
        let c = &r.cpu;
        assert_eq!(c.cheaters + c.churn, 0.0, "{r}");
        assert!(c.ratio() >= 2.0 && c.ratio() < 2.2, "{r}");
    }

    #[test]
    fn a_reputation_table_too_small_for_the_workers_forgets_the_least_proven() {
        let mut reps = Reputations::new(MAX_WORKERS + 2);
        for w in 0..MAX_WORKERS as u32 {
            assert!(reps.update(w, |r| r.valid = u64::from(w % 7 != 0)));
        }
        // A faulty one stays; worker 0 (valid 0, lowest index) is forgotten first.
        reps.update(7, |r| r.faults = 1);
        assert!(reps.update(MAX_WORKERS as u32, |_| {}));
        assert!(reps.table[0].is_none() && reps.table[7].is_some());
        assert_eq!(reps.forgotten, 1);
        assert!(reps.view(MAX_WORKERS as u32 + 1).is_some());
        assert!(reps.table[14].is_none(), "next least proven without faults");
    }
}
