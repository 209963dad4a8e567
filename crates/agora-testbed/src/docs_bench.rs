//! `agora-testbed docs-bench`: what Agora's documents (`agora-docs`) cost against automerge
//! alone, and whether replicas converge, all figures from one run on this machine.
//!
//! Everything runs in process, without a network or a node: it measures the document layer
//! (automerge, the signed changes, the membership checks and [`agora_docs::proto::sync`]), not
//! the transport or the store.
//!
//! # 1. The editing trace
//! The automerge-perf trace (`edit-by-index/editing-trace.js`: 259,778 single-character edits
//! of one text, 182,315 inserts and 77,463 deletes, 104,852 characters at the end) is not
//! shipped here, so [`Trace::generate`] makes one of the same shape from a seed:
//!
//! - exactly 259,778 edits, of which (259,778 + 104,852) / 2 = 182,315 inserts and 77,463
//!   deletes, so the final text has 104,852 characters;
//! - the edits come in bursts at a moving cursor: a typing run (geometric length, mean
//!   [`MEAN_TYPING`] characters) inserts at the cursor and moves it right; a delete run (mean
//!   [`MEAN_DELETE`]) is backspaces (delete left of the cursor, moving it left) or, one run in
//!   [`FORWARD_ONE_IN`], the Delete key (at the cursor);
//! - before a burst the cursor jumps, one burst in [`JUMP_ONE_IN`], to a uniformly random
//!   position of the text;
//! - whether a burst deletes is drawn with the probability that keeps the remaining deletes and
//!   inserts in proportion (remaining deletes ÷ [`MEAN_DELETE`] against remaining inserts ÷
//!   [`MEAN_TYPING`]), so the counts come out exact without a distorted tail; deletes never
//!   exceed the text;
//! - the characters are English-like (letters by frequency, spaces, some newlines and
//!   punctuation), all ASCII;
//! - a model (a gap buffer) replays the edits to give the expected final text, which both
//!   replays must produce.
//!
//! The trace goes through three variants, each in a child process of this binary (so that
//! their heaps are not shared; the peak RSS is the child's `VmHWM`):
//!
//! - **automerge alone**: `AutoCommit`, `splice_text` per edit, one commit at the end — what
//!   automerge's own Rust benchmark does (`rust/edit-trace/benches/main.rs`, `replay autotx`);
//!   the JavaScript automerge-perf scripts make one transaction per edit, which measures commit
//!   overhead rather than the CRDT;
//! - **Agora**: [`agora_docs::Document`] with the edits grouped into signed changes of N edits
//!   (an editor commits per burst of typing, not per keystroke; N = 100 gives ~2,600 changes);
//! - **automerge, a commit per N edits**: the same change structure without signatures or
//!   membership checks, to tell what the signed envelope costs from what more changes cost.
//!
//! Each variant replays, saves, drops the document and loads it again: automerge with `save()`
//! and `load()`, Agora with what the node stores and loads at start — [`Document::snapshot`]
//! (automerge's `save()` with the signatures and a digest) and [`Document::restore`]. Agora's
//! load from its signed changes alone (`Document::load`, which verifies every signature: what a
//! node without a snapshot does) is measured after, outside the peaks. The peak RSS is taken in two
//! windows, replay + save and load (`/proc/self/clear_refs` resets `VmHWM` between them), so
//! that it is the peak of one document's life, not of two documents held at once. Times are
//! both wall and CPU time of the thread; ratios and targets use CPU time, which other processes
//! on a shared machine do not inflate. The variants run [`Options::rounds`] times, taking turns,
//! and each figure is the median of its runs. One change per edit (N = 1) is also run, on a prefix of
//! the trace ([`PER_EDIT_PREFIX`] edits) for both Agora and automerge with a commit per edit:
//! `Document::load` of the whole trace's 259,778 changes would take hours (it is quadratic).
//!
//! # 2. Two divergent replicas
//! Two members start from the same synced base text; each makes [`Options::divergent`] small
//! signed changes the other lacks. Then a [`Session`] pair brings them together in memory, both
//! directions, in rounds (an opening message, then a reply and a next message per round), with
//! no remembered heads (the Bloom filter path). Bytes are counted per message as encoded on the
//! wire (postcard), split into change chunks, signatures, Bloom filters and hashes. Finally one
//! member makes one small change and resyncs given the heads it remembers from the sync: all
//! the bytes sent against the change's size.
//!
//! # 3. Five members under partitions
//! Five members (owner and four editors) hold a replica each. [`Options::ops`] times a random
//! member makes a random small edit (a signed change); every ~500 operations (400–600) the
//! members are split anew into 1–3 random groups; after an edit, one time in
//! [`SYNC_ONE_IN`], the editing member syncs with a random member of its group (remembering
//! each peer's heads as a node does). At the end the partition heals: all pairs sync, pass
//! after pass, until a pass moves nothing. Every replica must then hold the same text, the same
//! heads and every change; a run that does not is an error.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agora_docs::proto::sync::{MAX_ROUNDS, Session, SyncMsg};
use agora_docs::{Action, DocId, Document, Kind, Role, SignedChange, Snapshot, Space, SpaceId};
use anyhow::{Context, Result, bail, ensure};
use automerge::{
    AutoCommit, Change, ChangeHash, ObjType, ROOT, ReadDoc, transaction::Transactable,
};
use libp2p::{PeerId, identity::ed25519};
use serde_json::{Value, json};

/// The automerge-perf trace's length, in edits.
pub const TRACE_EDITS: usize = 259_778;
/// The automerge-perf trace's final text length, in characters.
pub const TRACE_FINAL_LEN: usize = 104_852;
/// The seed of the generated trace (fixed: every run replays the same trace).
pub const TRACE_SEED: u64 = 1;
/// Mean length of a typing run, in characters.
pub const MEAN_TYPING: f64 = 14.0;
/// Mean length of a delete run, in characters.
pub const MEAN_DELETE: f64 = 6.0;
/// One burst in this many starts with a jump of the cursor.
pub const JUMP_ONE_IN: usize = 8;
/// One delete run in this many is forward (the Delete key) rather than backspaces.
pub const FORWARD_ONE_IN: usize = 10;
/// Edits replayed with a change per edit in a full run: a prefix, because `Document::load`
/// applies changes one at a time and each application walks the whole text (quadratic; the
/// whole trace would take hours to load).
pub const PER_EDIT_PREFIX: usize = 10_000;
/// One edit in this many is followed by a sync in the partition runs.
pub const SYNC_ONE_IN: usize = 10;
/// Members of the partition runs.
pub const MEMBERS: usize = 5;
/// Passes over all pairs at most when the partition heals.
const HEAL_PASSES: usize = 10;
/// The signing tag of `agora_docs`' changes (its `proto::doc` docs), to time verification alone.
const SIGN_TAG: &[u8] = b"agora-docs/change/1\0";

pub struct Options {
    /// Edits of the trace replayed (a prefix in a quick run).
    pub trace_edits: usize,
    /// Edits per signed change.
    pub group: usize,
    /// Runs of each trace variant (the median of each figure is reported).
    pub rounds: usize,
    /// Edits replayed with one change per edit.
    pub per_edit: usize,
    /// Changes each of the two divergent replicas makes.
    pub divergent: usize,
    /// Operations of one partition run.
    pub ops: usize,
    /// Seeds of the partition runs.
    pub seeds: Vec<u64>,
}

impl Options {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                trace_edits: 5_000,
                group: 100,
                rounds: 1,
                per_edit: 500,
                divergent: 300,
                ops: 600,
                seeds: vec![1, 2],
            }
        } else {
            Self {
                trace_edits: TRACE_EDITS,
                group: 100,
                rounds: 3,
                per_edit: PER_EDIT_PREFIX,
                divergent: 10_000,
                ops: 10_000,
                seeds: vec![1, 2, 3, 4, 5],
            }
        }
    }
}

// ---- randomness ----

/// Seeded splitmix64, so that every run repeats.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed ^ 0xd0c5_be4c_0000_0000)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// In [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A geometric length ≥ 1 with the given mean.
    fn geometric(&mut self, mean: f64) -> usize {
        let u = 1.0 - self.unit();
        1 + (u.ln() / (1.0 - 1.0 / mean).ln()) as usize
    }

    /// An English-like character.
    fn letter(&mut self) -> u8 {
        const LETTERS: &[u8] =
            b"eeeeeeeeeeeettttttttttaaaaaaaaooooooooiiiiiiinnnnnnnsssssshhhhhhrrrrrr\
                                 ddddllllcccuuummmwwffggyyppbbvkjxqz";
        match self.below(100) {
            0..=16 => b' ',
            17 => b'\n',
            18 => b',',
            19 => b'.',
            _ => LETTERS[self.below(LETTERS.len())],
        }
    }
}

// ---- the trace ----

/// One single-character edit: insert `ch` at `pos`, or delete the character at `pos` when
/// `ch` is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edit {
    pub pos: u32,
    pub ch: u8,
}

/// Single-character strings of every byte, so that an edit is a `&str` without allocating.
static BYTES: [u8; 128] = {
    let mut b = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        b[i] = i as u8;
        i += 1;
    }
    b
};

impl Edit {
    /// As `(pos, del, text)` for `splice_text` and `Document::splice`.
    fn as_splice(&self) -> (usize, isize, &'static str) {
        if self.ch == 0 {
            (self.pos as usize, 1, "")
        } else {
            let i = usize::from(self.ch & 0x7f);
            let s = std::str::from_utf8(&BYTES[i..=i]).expect("ASCII");
            (self.pos as usize, 0, s)
        }
    }
}

pub struct Trace {
    pub edits: Vec<Edit>,
}

impl Trace {
    /// The synthetic automerge-perf trace (see the module docs).
    pub fn generate(seed: u64) -> Self {
        Self::generate_shape(TRACE_EDITS, TRACE_FINAL_LEN, seed)
    }

    /// `n` edits ending with `final_len` characters (`n + final_len` must be even).
    pub fn generate_shape(n: usize, final_len: usize, seed: u64) -> Self {
        let inserts = (n + final_len) / 2;
        let deletes = n - inserts;
        let mut rng = Rng::new(seed);
        let (mut ri, mut rd) = (inserts, deletes);
        let (mut len, mut cur) = (0usize, 0usize);
        let mut edits = Vec::with_capacity(n);
        while ri + rd > 0 {
            if len > 0 && rng.below(JUMP_ONE_IN) == 0 {
                cur = rng.below(len + 1);
            }
            let p_delete = if rd == 0 || len == 0 {
                0.0
            } else if ri == 0 {
                1.0
            } else {
                let d = rd as f64 / MEAN_DELETE;
                d / (d + ri as f64 / MEAN_TYPING)
            };
            if rng.unit() < p_delete {
                let k = rng.geometric(MEAN_DELETE).min(rd);
                let forward = cur == 0 || (cur < len && rng.below(FORWARD_ONE_IN) == 0);
                let k = if forward {
                    let k = k.min(len - cur);
                    for _ in 0..k {
                        edits.push(Edit {
                            pos: cur as u32,
                            ch: 0,
                        });
                    }
                    k
                } else {
                    let k = k.min(cur);
                    for _ in 0..k {
                        cur -= 1;
                        edits.push(Edit {
                            pos: cur as u32,
                            ch: 0,
                        });
                    }
                    k
                };
                len -= k;
                rd -= k;
            } else {
                let k = rng.geometric(MEAN_TYPING).min(ri);
                for _ in 0..k {
                    edits.push(Edit {
                        pos: cur as u32,
                        ch: rng.letter(),
                    });
                    cur += 1;
                }
                len += k;
                ri -= k;
            }
        }
        Self { edits }
    }
}

/// The text after `edits`, by a gap buffer (`left` before the cursor, `right` after it,
/// reversed). Panics on an edit outside the text (a generator bug).
pub fn model_text(edits: &[Edit]) -> Vec<u8> {
    let (mut left, mut right) = (Vec::new(), Vec::new());
    for e in edits {
        let pos = e.pos as usize;
        while left.len() > pos {
            right.push(left.pop().expect("non-empty"));
        }
        while left.len() < pos {
            left.push(right.pop().expect("edit position beyond the text"));
        }
        if e.ch == 0 {
            right.pop().expect("delete beyond the text");
        } else {
            left.push(e.ch);
        }
    }
    right.reverse();
    left.extend(right);
    left
}

/// The peak resident set of this process (`VmHWM`), in KiB.
fn vm_hwm_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")
}

/// Starts a new peak-RSS window: `VmHWM` restarts from the current RSS (`/proc/self/clear_refs`
/// "5", Linux ≥ 4.0). False when not allowed; the peak then stays the process's.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak RSS of the current window, in MiB.
fn peak_mib() -> Result<f64> {
    Ok(mib(vm_hwm_kib()?))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wall and CPU time of a phase. Both are reported: other builds may share the machine, and
/// CPU time does not count the time they held the core, so ratios and targets use it.
#[derive(Clone, Copy, Debug, Default)]
struct Timed {
    wall: Duration,
    cpu: Duration,
}

impl Timed {
    /// Sets `<name>_ms` (wall) and `<name>_cpu_ms` in `v`.
    fn put(self, v: &mut Value, name: &str) {
        v[format!("{name}_ms")] = json!(ms(self.wall));
        v[format!("{name}_cpu_ms")] = json!(ms(self.cpu));
    }
}

impl std::ops::AddAssign for Timed {
    fn add_assign(&mut self, o: Timed) {
        self.wall += o.wall;
        self.cpu += o.cpu;
    }
}

/// Runs `f`, timing it.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Timed) {
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let out = f();
    let t = Timed {
        wall: wall.elapsed(),
        cpu: thread_cpu().saturating_sub(cpu),
    };
    (out, t)
}

/// The 1-minute load average: how busy the machine was.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

fn key(n: u8) -> ed25519::Keypair {
    ed25519::Keypair::from(
        ed25519::SecretKey::try_from_bytes([n; 32]).expect("any 32 bytes are an ed25519 secret"),
    )
}

fn peer(k: &ed25519::Keypair) -> PeerId {
    libp2p::identity::PublicKey::from(k.public()).to_peer_id()
}

fn signing_message(space: &SpaceId, doc: &DocId, hash: &ChangeHash) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGN_TAG.len() + 96);
    m.extend_from_slice(SIGN_TAG);
    m.extend_from_slice(&space.0);
    m.extend_from_slice(&doc.0);
    m.extend_from_slice(&hash.0);
    m
}

// ---- part 1, in a child process ----

/// Runs one variant of the trace in this process and returns its figures (the child side).
/// `variant`: `automerge` (a commit every `group` edits, or one at the end when 0) or `agora`
/// (a signed change every `group` edits).
pub fn child(variant: &str, edits: usize, group: usize) -> Result<Value> {
    let trace = Trace::generate(TRACE_SEED);
    ensure!(
        edits <= trace.edits.len(),
        "--edits {edits}: the trace has {} edits",
        trace.edits.len()
    );
    let edits = &trace.edits[..edits];
    let base = vm_hwm_kib()?;
    let windows = reset_peak();
    let mut v = match variant {
        "automerge" => automerge_trace(edits, group)?,
        "agora" => agora_trace(edits, group.max(1))?,
        _ => bail!("unknown variant {variant:?}: automerge or agora"),
    };
    v["edits"] = json!(edits.len());
    v["base_rss_mib"] = json!(mib(base));
    v["rss_windows"] = json!(windows);
    let peak = v["replay_peak_rss_mib"]
        .as_f64()
        .unwrap_or(0.0)
        .max(v["load_peak_rss_mib"].as_f64().unwrap_or(0.0));
    v["peak_rss_mib"] = json!(peak);
    Ok(v)
}

fn automerge_trace(edits: &[Edit], group: usize) -> Result<Value> {
    let (replayed, replay) = timed(|| -> Result<_> {
        let mut doc = AutoCommit::new();
        let text = doc.put_object(ROOT, "text", ObjType::Text)?;
        let mut commits = 0;
        for (i, e) in edits.iter().enumerate() {
            let (pos, del, s) = e.as_splice();
            doc.splice_text(&text, pos, del, s)?;
            if group > 0 && (i + 1) % group == 0 && doc.commit().is_some() {
                commits += 1;
            }
        }
        if doc.commit().is_some() {
            commits += 1;
        }
        Ok((doc, text, commits))
    });
    let (mut doc, text, commits) = replayed?;
    let (bytes, save) = timed(|| doc.save());
    let before = doc.text(&text)?;
    let replay_peak = peak_mib()?;
    drop(doc);
    reset_peak();
    let (loaded, load) = timed(|| AutoCommit::load(&bytes));
    let loaded = loaded?;
    let (_, obj) = loaded.get(ROOT, "text")?.context("no text after load")?;
    let after = loaded.text(&obj)?;
    ensure!(after == before, "automerge: the loaded text differs");
    let load_peak = peak_mib()?;
    let mut v = json!({
        "replay_peak_rss_mib": replay_peak,
        "load_peak_rss_mib": load_peak,
        "variant": "automerge",
        "group": group,
        "changes": commits,
        "save_bytes": bytes.len(),
        "text_len": after.len(),
        "text_blake3": blake3::hash(after.as_bytes()).to_hex().to_string(),
    });
    replay.put(&mut v, "replay");
    save.put(&mut v, "save");
    load.put(&mut v, "load");
    Ok(v)
}

fn agora_trace(edits: &[Edit], group: usize) -> Result<Value> {
    let owner = key(1);
    let me = peer(&owner);
    let (space, _) = Space::create("bench", &owner, 1)?;
    let (doc, replay) = timed(|| -> Result<Document> {
        let (mut doc, _) = Document::create(&space, Kind::Note, "trace", &owner, 1)?;
        let mut splices = Vec::with_capacity(group);
        for (i, chunk) in edits.chunks(group).enumerate() {
            splices.clear();
            splices.extend(chunk.iter().map(Edit::as_splice));
            doc.splice(&space, &owner, 2 + i as i64, &splices)?
                .context("a group of edits changed nothing")?;
        }
        Ok(doc)
    });
    let mut doc = doc?;
    // What the node stores: automerge's save() with the signatures, postcard-encoded.
    let (saved, save) = timed(|| doc.snapshot().to_bytes());
    let (stored, changes_time) = timed(|| doc.changes(&[]));
    ensure!(stored.len() == doc.len(), "changes() left some out");
    let stored_bytes: usize = stored.iter().map(|c| c.bytes.len() + c.sig.len()).sum();
    let before = doc.text()?;
    let (space_id, doc_id) = (space.id(), doc.id());
    let replay_peak = peak_mib()?;
    drop(doc);
    reset_peak();

    // The load a restarting node does: the stored snapshot, its digest checked.
    let (loaded, load) = timed(|| -> Result<Document> {
        let snap = Snapshot::from_bytes(&saved)?;
        Ok(Document::restore(space_id, doc_id, &me, snap, Vec::new())?)
    });
    let loaded = loaded?;
    ensure!(loaded.text()? == before, "agora: the restored text differs");
    let load_peak = peak_mib()?;
    drop(loaded);

    // Not in the peaks: building the document from its signed changes alone (a node with no
    // snapshot: what a member that receives the whole document does), and of that the
    // signatures' share.
    let public = owner.public();
    let (verified, verify) = timed(|| {
        stored.iter().all(|s| {
            Change::from_bytes(s.bytes.clone()).is_ok_and(|c| {
                public.verify(&signing_message(&space_id, &doc_id, &c.hash()), &s.sig)
            })
        })
    });
    ensure!(
        verified,
        "a signature does not verify with the documented signing message"
    );
    let n_changes = stored.len();
    reset_peak();
    let (from_changes, changes_load) = timed(|| Document::load(space_id, doc_id, &me, stored));
    ensure!(
        from_changes?.text()? == before,
        "agora: the text loaded from changes differs"
    );
    let changes_load_peak = peak_mib()?;
    let mut v = json!({
        "replay_peak_rss_mib": replay_peak,
        "load_peak_rss_mib": load_peak,
        "changes_load_peak_rss_mib": changes_load_peak,
        "variant": "agora",
        "group": group,
        "changes": n_changes,
        "save_bytes": saved.len(),
        "stored_bytes": stored_bytes,
        "verify_share": round3(verify.cpu.as_secs_f64() / changes_load.cpu.as_secs_f64()),
        "text_len": before.len(),
        "text_blake3": blake3::hash(before.as_bytes()).to_hex().to_string(),
    });
    replay.put(&mut v, "replay");
    save.put(&mut v, "save");
    changes_time.put(&mut v, "changes");
    load.put(&mut v, "load");
    changes_load.put(&mut v, "changes_load");
    verify.put(&mut v, "changes_load_verify");
    Ok(v)
}

/// Runs a variant in a child process of this binary and returns its figures.
fn spawn_child(variant: &str, edits: usize, group: usize) -> Result<Value> {
    let exe = std::env::current_exe().context("cannot find this binary to run a child")?;
    eprintln!("docs-bench: {variant}, {edits} edits, group {group} (child process)");
    let out = Command::new(&exe)
        .args(["docs-bench", "--child", variant])
        .args(["--edits", &edits.to_string(), "--group", &group.to_string()])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the {variant} child failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .with_context(|| format!("the {variant} child printed no JSON: {text}"))?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "docs-bench: {variant}: replay {:.0} ms, save {:.0} ms, load {:.0} ms (CPU), peak {:.1} MiB",
        f("replay_cpu_ms"),
        f("save_cpu_ms"),
        f("load_cpu_ms"),
        f("peak_rss_mib")
    );
    Ok(v)
}

/// The runs of one variant as one: each number the median of the runs' (the first run's
/// other fields), with the replay's samples and the number of runs.
fn medians(runs: &[Value]) -> Value {
    let mut out = runs.first().cloned().unwrap_or_default();
    if let Value::Object(m) = &mut out {
        for (k, v) in m.iter_mut() {
            let mut xs: Vec<f64> = runs.iter().filter_map(|r| r[k].as_f64()).collect();
            if v.is_f64() && xs.len() == runs.len() {
                xs.sort_by(f64::total_cmp);
                *v = json!(xs[xs.len() / 2]);
            }
        }
    }
    out["runs"] = json!(runs.len());
    out["replay_cpu_samples_ms"] = runs.iter().map(|r| r["replay_cpu_ms"].clone()).collect();
    out
}

/// `a[k] / b[k]`, rounded.
fn ratio(a: &Value, b: &Value, k: &str) -> Value {
    match (a[k].as_f64(), b[k].as_f64()) {
        (Some(x), Some(y)) if y > 0.0 => json!(round3(x / y)),
        _ => Value::Null,
    }
}

fn ratios(agora: &Value, reference: &Value) -> Value {
    json!({
        "replay": ratio(agora, reference, "replay_cpu_ms"),
        "save": ratio(agora, reference, "save_cpu_ms"),
        "save_bytes": ratio(agora, reference, "save_bytes"),
        "load": ratio(agora, reference, "load_cpu_ms"),
        "peak_rss": ratio(agora, reference, "peak_rss_mib"),
    })
}

/// A part's figures, or `{"error": …}` with the error also added to `errors`: one failure
/// does not hide the other figures, and still fails the run ([`failed`]).
fn part(errors: &mut Vec<String>, what: &str, r: Result<Value>) -> Value {
    match r {
        Ok(v) => v,
        Err(e) => {
            let e = format!("{what}: {e:#}");
            eprintln!("docs-bench: FAILED {e}");
            errors.push(e.clone());
            json!({ "error": e })
        }
    }
}

fn run_trace(opts: &Options, errors: &mut Vec<String>) -> Value {
    let trace = Trace::generate(TRACE_SEED);
    let inserts = trace.edits.iter().filter(|e| e.ch != 0).count();
    let expected = |n: usize| {
        let text = model_text(&trace.edits[..n]);
        (text.len(), blake3::hash(&text).to_hex().to_string())
    };
    let check = |v: &Value, (len, hash): &(usize, String)| -> Result<()> {
        ensure!(
            v["text_len"].as_u64() == Some(*len as u64) && v["text_blake3"].as_str() == Some(hash),
            "{} (group {}) ended with a text other than the model's",
            v["variant"],
            v["group"]
        );
        Ok(())
    };
    let full = expected(opts.trace_edits);
    let prefix = expected(opts.per_edit);
    // (variant, edits, group, expected text): the rounds take turns, so that a change in the
    // machine's load touches every variant alike.
    let specs = [
        ("automerge", opts.trace_edits, 0, &full),
        ("agora", opts.trace_edits, opts.group, &full),
        ("automerge", opts.trace_edits, opts.group, &full),
        ("automerge", opts.per_edit, 1, &prefix),
        ("agora", opts.per_edit, 1, &prefix),
    ];
    let mut samples: Vec<Result<Vec<Value>>> = specs.iter().map(|_| Ok(Vec::new())).collect();
    for round in 0..opts.rounds {
        for ((name, edits, group, want), out) in specs.iter().zip(&mut samples) {
            let Ok(runs) = out else { continue };
            eprintln!("docs-bench: round {}/{}", round + 1, opts.rounds);
            match spawn_child(name, *edits, *group).and_then(|v| check(&v, want).map(|()| v)) {
                Ok(v) => runs.push(v),
                Err(e) => *out = Err(e),
            }
        }
    }
    let mut results = specs
        .iter()
        .zip(samples)
        .map(|((name, edits, group, _), r)| {
            part(
                errors,
                &format!("trace, {name}, {edits} edits, group {group}"),
                r.map(|runs| medians(&runs)),
            )
        });
    let mut next = || results.next().unwrap_or_default();
    let (automerge, agora, automerge_grouped) = (next(), next(), next());
    let (automerge_per_edit, agora_per_edit) = (next(), next());
    let replayed = &trace.edits[..opts.trace_edits];
    let replayed_inserts = replayed.iter().filter(|e| e.ch != 0).count();
    json!({
        "seed": TRACE_SEED,
        "edits": trace.edits.len(),
        "inserts": inserts,
        "deletes": trace.edits.len() - inserts,
        "final_len": model_text(&trace.edits).len(),
        "replayed": {"edits": replayed.len(), "inserts": replayed_inserts,
                     "deletes": replayed.len() - replayed_inserts, "final_len": full.0},
        "group": opts.group,
        "automerge": automerge,
        "agora": agora,
        "agora_vs_automerge": ratios(&agora, &automerge),
        "automerge_grouped": automerge_grouped,
        "agora_vs_automerge_grouped": ratios(&agora, &automerge_grouped),
        "per_edit": {
            "edits": opts.per_edit,
            "automerge": automerge_per_edit,
            "agora": agora_per_edit,
            "agora_vs_automerge": ratios(&agora_per_edit, &automerge_per_edit),
        },
    })
}

// ---- sync, parts 2 and 3 ----

/// What the messages of one or more sessions carried, as encoded on the wire.
#[derive(Clone, Copy, Debug, Default)]
struct Traffic {
    messages: usize,
    wire: usize,
    changes: usize,
    change_bytes: usize,
    sig_bytes: usize,
    bloom_bytes: usize,
    hash_bytes: usize,
}

impl Traffic {
    fn add(&mut self, m: &SyncMsg) {
        self.messages += 1;
        self.wire += agora_docs::wire::encode(m).len();
        self.changes += m.changes.len();
        self.change_bytes += m.changes.iter().map(|c| c.bytes.len()).sum::<usize>();
        self.sig_bytes += m.changes.iter().map(|c| c.sig.len()).sum::<usize>();
        self.bloom_bytes += m.bloom.as_ref().map_or(0, Vec::len);
        self.hash_bytes += 32 * (m.heads.len() + m.need.len());
    }

    fn json(&self) -> Value {
        json!({
            "messages": self.messages,
            "wire_bytes": self.wire,
            "changes": self.changes,
            "change_bytes": self.change_bytes,
            "sig_bytes": self.sig_bytes,
            "bloom_bytes": self.bloom_bytes,
            "hash_bytes": self.hash_bytes,
        })
    }
}

/// One session of `a` (opening, with the heads it remembers of `b`) with `b`, in memory,
/// until both are quiet or [`MAX_ROUNDS`] rounds passed, like the tests of
/// `agora_docs::proto::sync`. Returns the rounds, whether they converged and the time spent in
/// the sessions (not in counting bytes); adds to `traffic`; remembers each side's view of the
/// other's heads once quiet, as the node does.
fn session(
    a: &mut Document,
    b: &mut Document,
    space: &Space,
    a_knows: &mut Option<Vec<ChangeHash>>,
    b_knows: &mut Option<Vec<ChangeHash>>,
    traffic: &mut Traffic,
) -> Result<(usize, bool, Timed)> {
    let (mut sa, mut sb) = (Session::default(), Session::default());
    let (mut msg, mut busy) = timed(|| sa.start(a, a_knows.as_deref()));
    traffic.add(&msg);
    for round in 1..=MAX_ROUNDS {
        let ((got_b, reply), t) = timed(|| sb.step(b, space, msg));
        busy += t;
        ensure!(got_b.refused.is_empty(), "refused: {:?}", got_b.refused);
        traffic.add(&reply);
        let quiet = reply.is_quiet();
        if quiet {
            *b_knows = Some(sb.their_heads.clone());
        }
        let ((got_a, next), t) = timed(|| sa.step(a, space, reply));
        busy += t;
        ensure!(got_a.refused.is_empty(), "refused: {:?}", got_a.refused);
        if next.is_quiet() {
            *a_knows = Some(sa.their_heads.clone());
        }
        if quiet && next.is_quiet() && a.heads() == b.heads() {
            return Ok((round, true, busy));
        }
        traffic.add(&next);
        msg = next;
    }
    Ok((MAX_ROUNDS, false, busy))
}

/// A random small edit of a note: 1–`max_insert` characters inserted, or one time in four
/// 1–3 deleted, at a random position. Always a change.
fn small_edit(
    doc: &mut Document,
    space: &Space,
    key: &ed25519::Keypair,
    now: i64,
    rng: &mut Rng,
    max_insert: usize,
) -> Result<SignedChange> {
    let am = doc.automerge();
    let (_, text) = am.get(ROOT, "text")?.context("a note without text")?;
    let len = am.length(&text);
    let change = if len > 0 && rng.below(4) == 0 {
        let pos = rng.below(len);
        let del = (1 + rng.below(3)).min(len - pos);
        doc.splice(space, key, now, &[(pos, del as isize, "")])?
    } else {
        let n = 1 + rng.below(max_insert);
        let s: String = (0..n).map(|_| char::from(rng.letter())).collect();
        doc.splice(space, key, now, &[(rng.below(len + 1), 0, s.as_str())])?
    };
    change.context("a small edit changed nothing")
}

/// The owner and `n - 1` editors, a space they are in, and a note everyone holds.
fn members(n: u8) -> Result<(Space, Vec<ed25519::Keypair>, Vec<Document>)> {
    let keys: Vec<ed25519::Keypair> = (1..=n).map(key).collect();
    let (mut space, _) = Space::create("bench", &keys[0], 1)?;
    for k in &keys[1..] {
        space.act(
            Action::Add {
                member: peer(k),
                role: Role::Editor,
            },
            &keys[0],
            2,
        )?;
    }
    let (first, genesis) = Document::create(&space, Kind::Note, "shared", &keys[0], 3)?;
    let mut docs = vec![first];
    for k in &keys[1..] {
        let mut d = Document::empty(space.id(), docs[0].id(), &peer(k));
        let r = d.receive(&space, vec![genesis.clone()]);
        ensure!(r.applied.len() == 1, "the first change was not applied");
        docs.push(d);
    }
    Ok((space, keys, docs))
}

/// Both of `v[i]` and `v[j]` mutably (`i != j`).
fn pair<T>(v: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    assert_ne!(i, j);
    if i < j {
        let (l, r) = v.split_at_mut(j);
        (&mut l[i], &mut r[0])
    } else {
        let (l, r) = v.split_at_mut(i);
        (&mut r[0], &mut l[j])
    }
}

fn run_divergent(n: usize) -> Result<Value> {
    let (space, keys, mut docs) = members(2)?;
    let mut rng = Rng::new(7);
    // The common base: a text of 2,000 characters, synced.
    let base: String = (0..2000).map(|_| char::from(rng.letter())).collect();
    docs[0]
        .splice(&space, &keys[0], 4, &[(0, 0, base.as_str())])?
        .context("the base changed nothing")?;
    let (mut ka, mut kb) = (None, None);
    let (a, b) = pair(&mut docs, 0, 1);
    session(a, b, &space, &mut ka, &mut kb, &mut Traffic::default())?;
    ensure!(a.heads() == b.heads(), "the base did not sync");

    let (edited, edit_time) = timed(|| -> Result<()> {
        for i in 0..n {
            small_edit(a, &space, &keys[0], 10 + i as i64, &mut rng, 5)?;
            small_edit(b, &space, &keys[1], 10 + i as i64, &mut rng, 5)?;
        }
        Ok(())
    });
    edited?;

    // Cold: neither remembers the other's heads.
    let mut cold = Traffic::default();
    let (mut ka, mut kb) = (None, None);
    let (rounds, done, busy) = session(a, b, &space, &mut ka, &mut kb, &mut cold)?;
    ensure!(
        done,
        "{n} divergent changes each did not converge in {MAX_ROUNDS} rounds"
    );
    ensure!(
        a.text()? == b.text()? && a.len() == 2 + 2 * n,
        "the divergent replicas differ after the sync"
    );

    // One small change, then a resync with the heads remembered from that sync.
    let remembered = ka.clone().context("no heads remembered")?;
    let change = small_edit(a, &space, &keys[0], 99_999, &mut Rng::new(8), 1)?;
    let mut resync = Traffic::default();
    let mut ka = Some(remembered);
    let (resync_rounds, done, _) = session(a, b, &space, &mut ka, &mut kb, &mut resync)?;
    ensure!(
        done && a.heads() == b.heads(),
        "the resync did not converge"
    );

    let signed = change.bytes.len() + change.sig.len();
    let mut cold = json!({"rounds": rounds, "traffic": cold.json()});
    busy.put(&mut cold, "sync");
    let mut v = json!({
        "changes_each": n,
        "cold": cold,
        "resync": {
            "rounds": resync_rounds,
            "change_bytes": change.bytes.len(),
            "signed_change_bytes": signed,
            "traffic": resync.json(),
            "wire_vs_change": round3(resync.wire as f64 / change.bytes.len() as f64),
            "wire_vs_signed_change": round3(resync.wire as f64 / signed as f64),
        },
    });
    edit_time.put(&mut v, "edit");
    Ok(v)
}

fn run_partitions(seed: u64, ops: usize) -> Result<Value> {
    let (v, t) = timed(|| partitions(seed, ops));
    let mut v = v?;
    t.put(&mut v, "run");
    Ok(v)
}

/// The members' replicas and what each remembers of the others.
struct Members {
    space: Space,
    docs: Vec<Document>,
    /// `known[i][j]`: the heads `i` remembers of `j`.
    known: Vec<Vec<Option<Vec<ChangeHash>>>>,
}

impl Members {
    /// A session of `i` (opening) with `j`; whether it finished within [`MAX_ROUNDS`].
    fn sync(&mut self, i: usize, j: usize, traffic: &mut Traffic) -> Result<bool> {
        let (mut ki, mut kj) = (self.known[i][j].take(), self.known[j][i].take());
        let (a, b) = pair(&mut self.docs, i, j);
        let (_, done, _) = session(a, b, &self.space, &mut ki, &mut kj, traffic)?;
        (self.known[i][j], self.known[j][i]) = (ki, kj);
        Ok(done)
    }
}

fn partitions(seed: u64, ops: usize) -> Result<Value> {
    let (space, keys, docs) = members(MEMBERS as u8)?;
    let mut m = Members {
        space,
        docs,
        known: vec![vec![None; MEMBERS]; MEMBERS],
    };
    let mut rng = Rng::new(seed);
    let mut group = [0usize; MEMBERS];
    let mut next_split = 0;
    let (mut splits, mut syncs, mut unfinished) = (0, 0, 0);
    let mut traffic = Traffic::default();
    for op in 0..ops {
        if op == next_split {
            let groups = 1 + rng.below(3);
            for g in group.iter_mut() {
                *g = rng.below(groups);
            }
            splits += 1;
            next_split += 400 + rng.below(201);
        }
        let i = rng.below(MEMBERS);
        small_edit(
            &mut m.docs[i],
            &m.space,
            &keys[i],
            10 + op as i64,
            &mut rng,
            8,
        )?;
        if rng.below(SYNC_ONE_IN) == 0 {
            let peers: Vec<usize> = (0..MEMBERS)
                .filter(|&j| j != i && group[j] == group[i])
                .collect();
            if !peers.is_empty() {
                let j = peers[rng.below(peers.len())];
                unfinished += usize::from(!m.sync(i, j, &mut traffic)?);
                syncs += 1;
            }
        }
    }
    // Heal: all pairs, until a pass moves nothing.
    let pairs: Vec<(usize, usize)> = (0..MEMBERS)
        .flat_map(|i| (i + 1..MEMBERS).map(move |j| (i, j)))
        .collect();
    let mut passes = 0;
    loop {
        passes += 1;
        let before = traffic.changes;
        for &(i, j) in &pairs {
            unfinished += usize::from(!m.sync(i, j, &mut traffic)?);
        }
        if traffic.changes == before {
            break;
        }
        ensure!(
            passes < HEAL_PASSES,
            "seed {seed}: still moving changes after {HEAL_PASSES} passes"
        );
    }
    let text = m.docs[0].text()?;
    let heads = m.docs[0].heads();
    let mut converged = true;
    for d in &mut m.docs {
        converged &= d.text()? == text && d.heads() == heads && d.len() == ops + 1;
        converged &= d.pending() == 0;
    }
    Ok(json!({
        "seed": seed,
        "ops": ops,
        "converged": converged,
        "partitions": splits,
        "syncs": syncs,
        "sessions_over_max_rounds": unfinished,
        "heal_passes": passes,
        "changes_sent": traffic.changes,
        "wire_bytes": traffic.wire,
        "text_len": text.len(),
    }))
}

/// The whole benchmark: the trace (child processes), the divergent pair, the partition runs.
/// An error when a text differs from the model or replicas do not converge.
/// A part that fails (a child, a text other than the model's, replicas that do not converge,
/// a refused change) is recorded in `errors` and the run goes on; see [`failed`].
pub fn run(opts: &Options) -> Result<Value> {
    let load_before = loadavg();
    let mut errors = Vec::new();
    let trace = run_trace(opts, &mut errors);
    eprintln!(
        "docs-bench: two replicas, {} divergent changes each",
        opts.divergent
    );
    let divergent = part(
        &mut errors,
        "divergent replicas",
        run_divergent(opts.divergent),
    );
    if divergent.get("error").is_none() {
        eprintln!(
            "docs-bench: converged in {} ms (CPU), {} rounds, {} bytes",
            divergent["cold"]["sync_cpu_ms"],
            divergent["cold"]["rounds"],
            divergent["cold"]["traffic"]["wire_bytes"]
        );
    }
    let mut runs = Vec::new();
    for &seed in &opts.seeds {
        eprintln!(
            "docs-bench: {MEMBERS} members under partitions, {} operations, seed {seed}",
            opts.ops
        );
        let mut r = part(
            &mut errors,
            &format!("partitions, seed {seed}"),
            run_partitions(seed, opts.ops),
        );
        if r.get("error").is_some() {
            r["seed"] = json!(seed);
            r["converged"] = json!(false);
        } else {
            eprintln!(
                "docs-bench: converged: {}, {} syncs, {} ms (CPU)",
                r["converged"], r["syncs"], r["run_cpu_ms"]
            );
            if r["converged"] != json!(true) {
                errors.push(format!("partitions, seed {seed}: did not converge: {r}"));
            }
        }
        runs.push(r);
    }
    let all = runs.iter().all(|r| r["converged"] == json!(true));
    Ok(json!({
        "in_process": true,
        "loadavg": [load_before, loadavg()],
        "note": "everything in process, no network: the document layer (automerge, signed changes, membership checks, sync sessions)",
        "trace": trace,
        "divergent": divergent,
        "partitions": {"members": MEMBERS, "ops": opts.ops, "sync_one_in": SYNC_ONE_IN,
                       "runs": runs, "all_converged": all},
        "errors": errors,
    }))
}

/// Whether a part of the run failed (then `agora-testbed docs-bench` exits 1).
pub fn failed(v: &Value) -> bool {
    v["errors"].as_array().is_some_and(|e| !e.is_empty())
}

/// Prints the result: the JSON object, or a table like `agora-testbed bench`'s.
pub fn print(v: &Value, json_out: bool) {
    if json_out {
        println!("{v}");
        return;
    }
    println!("{}\n", v["note"].as_str().unwrap_or_default());
    println!("| figure | value | ratio |\n|---|---|---|");
    for (a, b, c) in rows(v) {
        println!("| {a} | {b} | {c} |");
    }
}

/// The figures as rows of `agora-testbed bench`'s table: (figure, value, ratio). Times are
/// CPU time (wall time in parentheses), ratios Agora ÷ automerge of CPU time.
pub fn rows(v: &Value) -> Vec<(String, String, String)> {
    let f = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
    let kib = |x: &Value| f(x) / 1024.0;
    let met = |x: f64, max: f64| if x <= max { "met" } else { "MISSED" };
    // "a / b ms (a' / b' wall)" for the figure `k` of two variants.
    let pair_ms = |a: &Value, b: &Value, k: &str| {
        format!(
            "{:.0} / {:.0} ms ({:.0} / {:.0} wall)",
            f(&a[format!("{k}_cpu_ms")]),
            f(&b[format!("{k}_cpu_ms")]),
            f(&a[format!("{k}_ms")]),
            f(&b[format!("{k}_ms")])
        )
    };
    // A part that failed shows as its error (in the rows at the end), not as NaNs.
    let ok = |x: &Value| x.is_object() && x.get("error").is_none();
    let t = &v["trace"];
    let (am, ag, r) = (&t["automerge"], &t["agora"], &t["agora_vs_automerge"]);
    let rg = &t["agora_vs_automerge_grouped"];
    let rp = &t["replayed"];
    let mut rows = Vec::new();
    if ok(am) && ok(ag) {
        rows.extend([
        (
            format!(
                "docs: editing trace ({} edits: {} inserts, {} deletes → {} chars), replay: \
                 automerge alone, one commit / Agora, {} edits per signed change ({} changes); \
                 medians of {} runs",
                rp["edits"],
                rp["inserts"],
                rp["deletes"],
                rp["final_len"],
                t["group"],
                ag["changes"],
                ag["runs"]
            ),
            pair_ms(am, ag, "replay"),
            format!(
                "{:.2} × automerge; {:.2} × automerge with a commit per {} edits; Agora ≤ 2 s: {}",
                f(&r["replay"]),
                f(&rg["replay"]),
                t["group"],
                met(f(&ag["replay_cpu_ms"]), 2000.0)
            ),
        ),
        (
            "docs: trace save(): automerge / Agora's stored snapshot (save() and signatures), \
             time and size"
                .into(),
            format!(
                "{}, {:.0} / {:.0} KiB",
                pair_ms(am, ag, "save"),
                kib(&am["save_bytes"]),
                kib(&ag["save_bytes"])
            ),
            format!(
                "{:.2} × time, {:.2} × size; Agora ≤ 200 ms: {}; its signed changes one by one: \
                 {:.0} KiB",
                f(&r["save"]),
                f(&r["save_bytes"]),
                met(f(&ag["save_cpu_ms"]), 200.0),
                kib(&ag["stored_bytes"])
            ),
        ),
        (
            "docs: trace load: automerge from save() / Agora from its stored snapshot".into(),
            pair_ms(am, ag, "load"),
            format!(
                "{:.2} × automerge; Agora ≤ 300 ms: {}; from its {} signed changes instead \
                 (no snapshot): {:.0} ms, signatures {:.1}% of it",
                f(&r["load"]),
                met(f(&ag["load_cpu_ms"]), 300.0),
                ag["changes"],
                f(&ag["changes_load_cpu_ms"]),
                f(&ag["verify_share"]) * 100.0,
            ),
        ),
        (
            "docs: trace peak RSS (VmHWM of a child process each; max of replay+save and load)"
                .into(),
            format!(
                "{:.1} / {:.1} MiB",
                f(&am["peak_rss_mib"]),
                f(&ag["peak_rss_mib"])
            ),
            format!(
                "{:.2} × automerge ({:.1} MiB with a commit per {} edits); Agora ≤ 100 MiB: {}; \
                 replay {:.1} / {:.1}, load {:.1} / {:.1} MiB (Agora from its signed changes: \
                 {:.1} MiB); {:.1} MiB before the document",
                f(&r["peak_rss"]),
                f(&t["automerge_grouped"]["peak_rss_mib"]),
                t["group"],
                met(f(&ag["peak_rss_mib"]), 100.0),
                f(&am["replay_peak_rss_mib"]),
                f(&ag["replay_peak_rss_mib"]),
                f(&am["load_peak_rss_mib"]),
                f(&ag["load_peak_rss_mib"]),
                f(&ag["changes_load_peak_rss_mib"]),
                f(&ag["base_rss_mib"])
            ),
        ),
    ]);
    }
    let p = &t["per_edit"];
    let (pam, pag) = (&p["automerge"], &p["agora"]);
    if ok(pam) && ok(pag) {
        rows.push((
        format!(
            "docs: a change per edit, first {} edits: automerge, a commit each / Agora, a signed \
             change each",
            p["edits"]
        ),
        format!(
            "replay {}, load {}",
            pair_ms(pam, pag, "replay"),
            pair_ms(pam, pag, "load")
        ),
        format!(
            "{:.2} × replay, {:.2} × load (Agora from its signed changes instead: {:.0} ms, \
             signatures {:.1}% of it); peak {:.1} / {:.1} MiB",
            f(&p["agora_vs_automerge"]["replay"]),
            f(&p["agora_vs_automerge"]["load"]),
            f(&pag["changes_load_cpu_ms"]),
            f(&pag["verify_share"]) * 100.0,
            f(&pam["peak_rss_mib"]),
            f(&pag["peak_rss_mib"])
        ),
    ));
    }
    let d = &v["divergent"];
    if ok(d) {
        let s = &d["cold"];
        let tr = &s["traffic"];
        rows.push((
            format!(
                "docs: 2 replicas × {} divergent changes, Session sync both ways (no remembered \
                 heads: Bloom filters)",
                d["changes_each"]
            ),
            format!(
                "{:.0} ms ({:.0} wall), {} rounds, {:.0} KiB",
                f(&s["sync_cpu_ms"]),
                f(&s["sync_ms"]),
                s["rounds"],
                kib(&tr["wire_bytes"])
            ),
            format!(
                "{} messages: changes {:.0} KiB + signatures {:.0} KiB + Bloom {:.1} KiB + \
                 hashes {:.1} KiB",
                tr["messages"],
                kib(&tr["change_bytes"]),
                kib(&tr["sig_bytes"]),
                kib(&tr["bloom_bytes"]),
                kib(&tr["hash_bytes"])
            ),
        ));
        let rs = &d["resync"];
        rows.push((
            "docs: one small change after that sync, resync with the remembered heads".into(),
            format!(
                "{} bytes sent for a {}-byte change ({} signed)",
                rs["traffic"]["wire_bytes"], rs["change_bytes"], rs["signed_change_bytes"]
            ),
            format!(
                "{:.2} × the change (target ≤ 2: {}), {:.2} × the signed change; {} round",
                f(&rs["wire_vs_change"]),
                met(f(&rs["wire_vs_change"]), 2.0),
                f(&rs["wire_vs_signed_change"]),
                rs["rounds"]
            ),
        ));
    }
    let pt = &v["partitions"];
    let runs = pt["runs"].as_array().cloned().unwrap_or_default();
    let converged = runs
        .iter()
        .filter(|r| r["converged"] == json!(true))
        .count();
    let seeds: Vec<String> = runs.iter().map(|r| r["seed"].to_string()).collect();
    let syncs: u64 = runs.iter().filter_map(|r| r["syncs"].as_u64()).sum();
    let cpu: f64 = runs.iter().map(|r| f(&r["run_cpu_ms"])).sum();
    rows.push((
        format!(
            "docs: {} members, {} random edits under random partitions, seeds {}",
            pt["members"],
            pt["ops"],
            seeds.join(", ")
        ),
        format!("{converged}/{} converged", runs.len()),
        format!(
            "identical text and heads after healing; {syncs} syncs within partitions; {:.1} s \
             CPU in all",
            cpu / 1000.0
        ),
    ));
    for e in v["errors"].as_array().into_iter().flatten() {
        rows.push((
            "docs: FAILED".into(),
            e.as_str()
                .unwrap_or_default()
                .replace('|', "\\|")
                .replace('\n', " "),
            String::new(),
        ));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_has_the_shape_of_automerge_perf() {
        let t = Trace::generate(TRACE_SEED);
        assert_eq!(t.edits.len(), TRACE_EDITS);
        let inserts = t.edits.iter().filter(|e| e.ch != 0).count();
        assert_eq!(inserts, 182_315);
        assert_eq!(model_text(&t.edits).len(), TRACE_FINAL_LEN);
        assert_eq!(Trace::generate(TRACE_SEED).edits, t.edits, "deterministic");
    }

    #[test]
    fn the_model_applies_inserts_and_deletes() {
        let e = |pos, ch| Edit { pos, ch };
        let edits = [e(0, b'a'), e(1, b'c'), e(1, b'b'), e(0, 0), e(2, b'd')];
        assert_eq!(model_text(&edits), b"bcd");
    }

    #[test]
    fn edits_splice_as_single_characters() {
        assert_eq!(Edit { pos: 3, ch: b'x' }.as_splice(), (3, 0, "x"));
        assert_eq!(Edit { pos: 4, ch: 0 }.as_splice(), (4, 1, ""));
    }

    #[test]
    fn a_small_partition_run_converges() {
        let r = run_partitions(3, 300).unwrap();
        assert_eq!(r["converged"], json!(true), "{r}");
    }
}
