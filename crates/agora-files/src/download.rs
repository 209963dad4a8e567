//! Multi-source verified download of one blob.
//!
//! The missing part of the blob is cut into 256 KiB pieces. Workers per provider take pieces
//! and fetch them over [`PROTOCOL`], as many at a time as that provider delivers in about
//! two seconds (its [`Meter`]: a fast provider gets 4 MiB requests back to back, a slow or
//! lossy one a single piece at a time, so it never holds much of the download hostage);
//! every chunk group is verified against the blob's hash before it is written at its offset
//! in `<dest>.agora-part`, and every verified parent hash is saved in the partial outboard.
//! A provider that sends a bad chunk group is banned for this download at that group; one that
//! stalls (no byte for [`STALL_TIMEOUT`]) is dropped and its pieces go back to the queue. A
//! piece in flight at one provider for much longer than another would take is duplicated
//! there (a straggler), and when the queue is empty idle workers duplicate pieces still in
//! flight elsewhere (end game); a duplicate asks only for what has not arrived yet, and the
//! request that loses the race stops once all its pieces are done. A restarted download
//! finds what is already verified by re-hashing the partial file against the partial
//! outboard and fetches only the rest.
//! The destination appears, by rename, only when every group is verified, and after the
//! last write to it: writes of stragglers still in flight are shut out first
//! (`Target::close`).
//! Verified data goes to the disk with `O_DIRECT` where the file system allows it
//! (`write_run`).

use std::{
    fs::{File, OpenOptions},
    io::{self, Read},
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use agora_net::Handle;
use bao_tree::{
    BaoTree, ChunkNum, ChunkRanges,
    io::{
        BaoContentItem, DecodeError, Leaf, Parent,
        fsm::{ResponseDecoder, ResponseDecoderNext},
        outboard::PreOrderOutboard,
    },
};
use libp2p::PeerId;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::{
    BLOCK_SIZE, Hash,
    aligned::DIRECT_ALIGN,
    proto::{meter::Meter, picker::Picker},
    protocol::{PROTOCOL, PROTOCOL_ONE_SHOT, Request, Response, read_limited_frame, write_frame},
};

/// Size of a piece, in 1 KiB chunks (256 KiB, as the seeder counts them).
const PIECE_CHUNKS: u64 = crate::proto::seeding::PIECE_CHUNKS;
const PIECE_BYTES: u64 = PIECE_CHUNKS * 1024;
/// Pieces a downloader takes one after another before its order jumps elsewhere (1 MiB).
const RUN_PIECES: u64 = 4;
/// Largest run of verified data written with one pwrite.
const COALESCE: usize = 1024 * 1024;
/// Most pieces asked for in one request (4 MiB), from a provider fast enough to deliver them
/// within [`crate::proto::meter::HORIZON`]. Each request is a new stream, whose yamux window starts at
/// 256 KiB and grows as it is read: 4 MiB responses ran a loopback get at 445–560 MiB/s
/// against 406–491 for 2 MiB ones (same run; 8 requests of 2 MiB gave 477–491).
const MAX_PIECES_PER_REQUEST: usize = 16;
/// Requests in flight per provider at most, so the link is not idle between a response and
/// the next request; fewer when [`Meter::room`] says the provider has enough to do.
const REQUESTS_PER_PROVIDER: usize = 4;
/// Bytes asked of a provider whose rate is not known yet.
const FIRST_ALLOWANCE: u64 = 2 * PIECE_BYTES;
/// A piece in flight elsewhere for this long, and for twice as long as this provider would
/// take, may be duplicated here before the end game (see [`Picker::take`]).
const STRAGGLER_AFTER: Duration = Duration::from_secs(4);
/// How long a worker waits before asking again a provider that had nothing it needs (a
/// partial one) or hinted only at pieces it has (a super-seeder).
const LOOK_AGAIN: Duration = Duration::from_millis(100);
/// How often a request reports what it delivered and looks whether its pieces were done
/// elsewhere.
const REPORT_EVERY: Duration = Duration::from_millis(50);
/// Longest wait for a stream to a provider (opening one to an unreachable peer can wait for a
/// dial that never completes).
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// A provider that sends nothing for this long is dropped.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the DHT is asked again for providers during a download.
const REDISCOVER_INTERVAL: Duration = Duration::from_secs(2);
/// The first of those lookups, after which the wait doubles up to [`REDISCOVER_INTERVAL`].
const FIRST_REDISCOVERY: Duration = Duration::from_millis(250);
/// Longest a re-discovery lookup may take.
const REDISCOVER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a worker waits on a provider that is itself still downloading and has nothing new.
const PARTIAL_PATIENCE: Duration = Duration::from_secs(30);
/// Attempts per provider before it is dropped for this download.
const MAX_FAILURES: u32 = 3;
/// Requests a provider may drop unanswered, one after another, before a worker gives up on it.
/// A busy provider drops streams that arrive in a burst (libp2p-stream keeps one inbound
/// stream waiting per protocol and drops the rest), so these are retried soon, and many.
const MAX_REFUSALS: u32 = 50;

/// Live counters of a download, read by the API for progress bars.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
    pub peers: AtomicUsize,
    pub banned: Mutex<Vec<String>>,
    /// Largest size the caller accepts (0: any). Checked against the authenticated size
    /// before anything is allocated or fetched.
    pub max_size: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no provider of {0} was found")]
    NotFound(String),
    #[error("no provider could deliver {hash}: {reasons}")]
    AllFailed { hash: String, reasons: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{hash} is {size} bytes, more than the {max} accepted here")]
    TooLarge { hash: String, size: u64, max: u64 },
}

/// What one request to one provider ended with.
enum Outcome {
    Ok,
    /// The provider sent data that does not match the hash: ban it.
    Lied(String),
    /// Transient (stall, reset, busy): retry elsewhere.
    Failed(String),
    /// The provider dropped the request unanswered (too many streams at once): retry soon.
    Refused(String),
    /// Writing here failed (disk full, permissions): no provider can help; stop.
    Local(io::Error),
    /// The provider is downloading it too and has only these ranges so far.
    Partial(ChunkRanges),
    /// Every piece asked for was done by another provider first: stopped.
    Cancelled,
    /// The provider has it all but super-seeds: it serves these ranges now (see
    /// [`crate::proto::seeding`]).
    Hint(ChunkRanges),
}

/// A download in progress, whose verified ranges other downloaders may fetch.
#[derive(Debug)]
pub struct Partial {
    pub hash: Hash,
    pub size: u64,
    pub data_path: PathBuf,
    pub outboard_path: PathBuf,
    /// Verified chunk ranges (whole 16 KiB groups).
    pub have: Mutex<ChunkRanges>,
}

impl Partial {
    /// Opens the partial files if every group `ranges` asks for is verified here; `None` if
    /// not. A request past the end means the last group, as the encoder reads it.
    pub fn open_if_has(
        &self,
        ranges: &ChunkRanges,
        have: &ChunkRanges,
    ) -> Option<io::Result<crate::store::OpenBlob>> {
        let tree = BaoTree::new(self.size, BLOCK_SIZE);
        let all = ChunkRanges::from(ChunkNum(0)..tree.chunks());
        let mut required = ranges.clone() & all.clone();
        if !(ranges.clone() - all).is_empty() {
            let last_group = (tree.chunks().0.saturating_sub(1) >> BLOCK_SIZE.chunk_log())
                << BLOCK_SIZE.chunk_log();
            required |= ChunkRanges::from(ChunkNum(last_group)..tree.chunks());
        }
        if !(required - have.clone()).is_empty() {
            return None;
        }
        let open = || -> io::Result<crate::store::OpenBlob> {
            Ok(crate::store::OpenBlob {
                data: File::open(&self.data_path)?,
                outboard: PreOrderOutboard {
                    root: self.hash,
                    tree,
                    data: File::open(&self.outboard_path)?,
                },
                size: self.size,
                // Every group here was verified by this node during this download.
                recheck: false,
            })
        };
        Some(open())
    }
}

/// Removes a download from the served partials when it ends, however it ends.
struct Registered<'a> {
    partials: &'a crate::protocol::Partials,
    hash: Hash,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.partials.lock().unwrap().remove(&self.hash);
    }
}

/// Path of the partial data file of a download to `dest`.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".agora-part");
    dest.with_file_name(name)
}

struct Target {
    hash: Hash,
    tree: BaoTree,
    data: File,
    /// The same file opened with `O_DIRECT`, where the file system allows it (see
    /// [`write_run`]).
    direct: Option<File>,
    outboard_path: PathBuf,
    /// The served partial state, updated as groups verify.
    have: Mutex<Option<Arc<Partial>>>,
    /// Whether writes are still taken. Every write to the data or the outboard holds the read
    /// side; the download closes it (write side) before the file is synced and moved into
    /// place, so the write of a straggler (an end-game duplicate whose task was aborted while
    /// its blocking write ran) can never reach the user's file after it appeared, nor change
    /// its modification time.
    open: std::sync::RwLock<bool>,
}

impl Target {
    /// Permission to write, held for the length of one write.
    fn write_permit(&self) -> io::Result<std::sync::RwLockReadGuard<'_, bool>> {
        let open = self.open.read().unwrap_or_else(|e| e.into_inner());
        if !*open {
            return Err(io::Error::other("the download already finished"));
        }
        Ok(open)
    }

    /// Refuses every later write, once the ones in progress are done.
    fn close(&self) {
        *self.open.write().unwrap_or_else(|e| e.into_inner()) = false;
    }

    /// The chunk ranges verified and written so far.
    fn verified(&self) -> ChunkRanges {
        match self.have.lock().unwrap().as_ref() {
            Some(partial) => partial.have.lock().unwrap().clone(),
            None => ChunkRanges::empty(),
        }
    }

    fn outboard(&self) -> io::Result<PreOrderOutboard<File>> {
        Ok(PreOrderOutboard {
            root: self.hash,
            tree: self.tree,
            data: OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.outboard_path)?,
        })
    }
}

/// Where a download goes.
pub struct Destination<'a> {
    /// The file, written as `dest.agora-part` and renamed once verified.
    pub dest: &'a Path,
    /// The partial outboard.
    pub outboard: &'a Path,
    /// Whether the data file's blocks are allocated up front (faster writes, and a full disk
    /// is reported before any byte is fetched). Replicas asked for by other peers are not:
    /// their blocks are taken as verified data arrives, so a claimed size reserves no disk.
    pub preallocate: bool,
}

/// Downloads `hash` from `providers` into `to.dest` (atomically, by rename, once verified).
/// Returns the blob's size.
pub async fn fetch(
    net: &Handle,
    hash: Hash,
    providers: Vec<PeerId>,
    to: Destination<'_>,
    progress: Arc<Progress>,
    partials: &crate::protocol::Partials,
) -> Result<u64, FetchError> {
    let Destination {
        dest,
        outboard: outboard_path,
        preallocate,
    } = to;
    let hex = hash.to_hex().to_string();
    if providers.is_empty() {
        return Err(FetchError::NotFound(hex));
    }
    // 1. Learn the size, authenticated by the blob's last chunk group. All providers are
    // asked at once and the first verified answer wins, so one that stalls costs nothing.
    // If every one of them is a downloader that lacks the last group so far (downloaders
    // that start together announce themselves at once, and a provider lookup may return
    // only them), someone else has the blob: look for more providers and ask again, for a
    // bounded time.
    let mut providers = providers;
    let mut to_ask = providers.clone();
    let mut reasons = std::collections::BTreeMap::<PeerId, String>::new();
    let mut wait = FIRST_REDISCOVERY;
    let patience = tokio::time::Instant::now() + PARTIAL_PATIENCE;
    let size = loop {
        let mut asks: futures::stream::FuturesUnordered<_> = to_ask
            .drain(..)
            .map(|peer| async move {
                // One retry after a failure (a connection can close under load: limits, a
                // redial race); more, sooner, after refusals (a burst of streams).
                let (mut failures, mut refusals) = (0, 0);
                loop {
                    let result = fetch_size(net, hash, peer).await;
                    match result {
                        Err(SizeError::Refused(_)) if refusals < MAX_REFUSALS => {
                            refusals += 1;
                            refusal_backoff(refusals).await;
                        }
                        Err(SizeError::Failed(_)) if failures == 0 => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        result => return (peer, result),
                    }
                }
            })
            .collect();
        let mut size = None;
        while let Some((peer, result)) = futures::StreamExt::next(&mut asks).await {
            match result {
                Ok(s) => {
                    size = Some(s);
                    break;
                }
                Err(e) => {
                    if matches!(e, SizeError::Partial) {
                        to_ask.push(peer);
                    }
                    reasons.insert(peer, e.to_string());
                }
            }
        }
        drop(asks);
        if let Some(size) = size {
            break size;
        }
        if to_ask.is_empty() || tokio::time::Instant::now() >= patience {
            let reasons: Vec<String> = reasons.iter().map(|(p, e)| format!("{p}: {e}")).collect();
            return Err(FetchError::AllFailed {
                hash: hex,
                reasons: reasons.join("; "),
            });
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(REDISCOVER_INTERVAL);
        for peer in lookup_providers(net, hash).await {
            if !providers.contains(&peer) {
                providers.push(peer);
                to_ask.push(peer);
            }
        }
    };
    tracing::debug!(size, "size verified");
    let max = progress.max_size.load(Ordering::Relaxed);
    if max > 0 && size > max {
        return Err(FetchError::TooLarge {
            hash: hex,
            size,
            max,
        });
    }
    progress.total.store(size, Ordering::Relaxed);

    // 2. Open (or reopen, to resume) the partial files and find what is already verified.
    let part = partial_path(dest);
    let tree = BaoTree::new(size, BLOCK_SIZE);
    let open = |p: &Path, len: u64| -> io::Result<File> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)?;
        if f.metadata()?.len() != len {
            f.set_len(len)?;
        }
        Ok(f)
    };
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| FetchError::Io { path, source }
    };
    let fresh = !part.exists();
    let data = open(&part, size).map_err(io_err(&part))?;
    // Reserve the blocks now: a full disk is a clear error before any byte is fetched, and
    // writes into allocated blocks skip the file system's per-page delayed allocation (a
    // quarter of the downloader's CPU went to page-cache writes). A file system without
    // fallocate just goes on.
    let allocated = if preallocate {
        rustix::fs::fallocate(&data, rustix::fs::FallocateFlags::empty(), 0, size)
    } else {
        Ok(())
    };
    match allocated {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::NOSPC || e == rustix::io::Errno::DQUOT => {
            drop(data);
            if fresh {
                let _ = std::fs::remove_file(&part);
            }
            return Err(io_err(&part)(e.into()));
        }
        Err(_) => {}
    }
    open(outboard_path, tree.outboard_size()).map_err(io_err(outboard_path))?;
    let direct = open_direct(&part);
    let target = Arc::new(Target {
        hash,
        tree,
        data,
        direct,
        outboard_path: outboard_path.to_owned(),
        have: Mutex::new(None),
        open: std::sync::RwLock::new(true),
    });
    let have = {
        let target = target.clone();
        tokio::task::spawn_blocking(move || -> io::Result<ChunkRanges> {
            let ob = target.outboard()?;
            let mut have = ChunkRanges::empty();
            for r in bao_tree::io::sync::valid_ranges(&ob, &target.data, &ChunkRanges::all()) {
                have |= ChunkRanges::from(r?);
            }
            Ok(have)
        })
        .await
        .expect("valid_ranges does not panic")
        .map_err(io_err(&part))?
    };
    let all = ChunkRanges::from(ChunkNum(0)..tree.chunks());
    let missing = all.clone() - have.clone();
    // Serve what is verified to other downloaders while this one runs (unless another
    // download of the same blob already does).
    let partial = Arc::new(Partial {
        hash,
        size,
        data_path: part.clone(),
        outboard_path: outboard_path.to_owned(),
        have: Mutex::new(have.clone()),
    });
    let _registered = {
        let mut map = partials.lock().unwrap();
        (!map.contains_key(&hash)).then(|| {
            map.insert(hash, partial.clone());
            Registered { partials, hash }
        })
    };
    let have_bytes = size - ranges_bytes(&missing, size);
    progress.done.store(have_bytes, Ordering::Relaxed);
    if have_bytes > 0 {
        tracing::info!(hash = %hex, have_bytes, "resuming download");
    }

    // 3. Cut what is missing into pieces and let one worker per provider fetch them.
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < tree.chunks().0 {
        let end = (start + PIECE_CHUNKS).min(tree.chunks().0);
        let piece = missing.clone() & ChunkRanges::from(ChunkNum(start)..ChunkNum(end));
        if !piece.is_empty() {
            pieces.push(piece);
        }
        start = end;
    }
    // Each downloader takes the pieces in its own order, so that downloaders starting together
    // soon hold different pieces and can trade them instead of all asking the seeder for the
    // same ones. The order is a hash of this node's id and the piece's run of [`RUN_PIECES`]:
    // spread, yet repeatable, and a run's pieces stay together, so what a downloader holds
    // (and tells the others) is a few long ranges rather than many scattered pieces, and the
    // pieces others ask of it in one request are contiguous.
    let me_bytes = net.local_peer_id().to_bytes();
    pieces.sort_by_cached_key(|r| {
        let first = r.boundaries().first().map(|c| c.0).unwrap_or(0);
        let mut h = blake3::Hasher::new();
        h.update(&me_bytes);
        h.update(&(first / (PIECE_CHUNKS * RUN_PIECES)).to_le_bytes());
        (*h.finalize().as_bytes(), first)
    });
    *target.have.lock().unwrap() = Some(partial.clone());
    let work = Arc::new(Mutex::new(Picker::new(pieces)));
    let reasons = Arc::new(Mutex::new(Vec::<String>::new()));
    let local_error = Arc::new(Mutex::new(None::<io::Error>));
    let mut workers = tokio::task::JoinSet::new();
    let spawn_for = |workers: &mut tokio::task::JoinSet<()>, peer: PeerId| {
        let meter = Arc::new(Mutex::new(Meter::default()));
        // What this provider has, if it said it is still downloading too, or what it serves
        // now, if it super-seeds: learned by any of its workers, used by all.
        let known = Arc::new(Mutex::new(Known::default()));
        for _ in 0..REQUESTS_PER_PROVIDER {
            let (net, work, target, progress, reasons, local_error, meter, known) = (
                net.clone(),
                work.clone(),
                target.clone(),
                progress.clone(),
                reasons.clone(),
                local_error.clone(),
                meter.clone(),
                known.clone(),
            );
            workers.spawn(async move {
                progress.peers.fetch_add(1, Ordering::Relaxed);
                let (mut failures, mut refusals) = (0, 0);
                let mut idle_since: Option<(tokio::time::Instant, u64)> = None;
                let mut link = Link::default();
                loop {
                    let banned = progress.banned.lock().unwrap().contains(&peer.to_string());
                    if banned || local_error.lock().unwrap().is_some() {
                        break;
                    }
                    // As much as keeps this provider busy for the horizon; nothing more while
                    // it has that much to do.
                    let now = std::time::Instant::now();
                    let (n, stragglers_after) = {
                        let meter = meter.lock().unwrap();
                        let room = meter.room(PIECE_BYTES, FIRST_ALLOWANCE, now);
                        let eta = meter.eta(PIECE_BYTES, now);
                        let n = ((room / PIECE_BYTES) as usize).min(MAX_PIECES_PER_REQUEST);
                        (n, eta.map(|eta| (eta * 2).max(STRAGGLER_AFTER)))
                    };
                    if n == 0 {
                        tokio::time::sleep(REPORT_EVERY).await;
                        continue;
                    }
                    let Known {
                        has: peer_has,
                        hinted,
                    } = known.lock().unwrap().clone();
                    let taken = work.lock().unwrap().take(
                        n,
                        peer_has.as_ref(),
                        peer,
                        now,
                        stragglers_after,
                    );
                    let Some((idx, ranges)) = taken else {
                        if work.lock().unwrap().complete() {
                            break;
                        }
                        if peer_has.is_none() {
                            // Everything left is in flight, some of it from this provider: a
                            // request that fails puts its pieces back, so stay until the end.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        // A partial provider has nothing we need yet: look again shortly, but not
                        // forever. A super-seeder has it all: ask it for a fresh hint, for as long
                        // as the download runs.
                        let done = progress.done.load(Ordering::Relaxed);
                        if !hinted && stuck(&mut idle_since, done) {
                            break;
                        }
                        tokio::time::sleep(LOOK_AGAIN).await;
                        // Ask afresh, unless another worker learned something newer meanwhile.
                        let mut known = known.lock().unwrap();
                        if known.has == peer_has {
                            known.has = None;
                        }
                        continue;
                    };
                    // A duplicate asks only for what has not arrived from the first provider.
                    let verified = target.verified();
                    let ranges = ranges - verified;
                    let asked = tokio::time::Instant::now();
                    let bytes = ranges_bytes(&ranges, target.tree.size());
                    let outcome = if ranges.is_empty() {
                        Outcome::Ok
                    } else {
                        let done_elsewhere = || work.lock().unwrap().all_done(&idx);
                        let request = Ask {
                            peer,
                            ranges,
                            meter: &meter,
                            done_elsewhere: &done_elsewhere,
                        };
                        fetch_ranges(&net, &target, request, &mut link, &progress).await
                    };
                    let ok = matches!(outcome, Outcome::Ok);
                    tracing::debug!(
                        %peer,
                        bytes,
                        ok,
                        ms = asked.elapsed().as_millis() as u64,
                        "request ended"
                    );
                    work.lock().unwrap().finish(&idx, ok, peer);
                    match outcome {
                        Outcome::Cancelled => {}
                        Outcome::Ok => {
                            (failures, refusals) = (0, 0);
                            idle_since = None;
                        }
                        Outcome::Hint(serves) => {
                            let same = peer_has.as_ref() == Some(&serves);
                            *known.lock().unwrap() = Known {
                                has: Some(serves),
                                hinted: true,
                            };
                            if same {
                                tokio::time::sleep(LOOK_AGAIN).await;
                            }
                        }
                        Outcome::Partial(has) => {
                            work.lock().unwrap().others_have |= has.clone();
                            if stuck(&mut idle_since, progress.done.load(Ordering::Relaxed)) {
                                break;
                            }
                            let same = peer_has.as_ref() == Some(&has);
                            known.lock().unwrap().has = Some(has);
                            if same {
                                tokio::time::sleep(LOOK_AGAIN).await;
                            }
                        }
                        Outcome::Local(e) => {
                            local_error.lock().unwrap().get_or_insert(e);
                            break;
                        }
                        Outcome::Lied(why) => {
                            let mut banned = progress.banned.lock().unwrap();
                            if !banned.contains(&peer.to_string()) {
                                tracing::warn!(%peer, "banning provider: {why}");
                                banned.push(peer.to_string());
                                let mut reasons = reasons.lock().unwrap();
                                reasons.push(format!("{peer} sent bad data ({why})"));
                            }
                            break;
                        }
                        Outcome::Refused(why) => {
                            refusals += 1;
                            tracing::debug!(%peer, refusals, "request refused: {why}");
                            if refusals >= MAX_REFUSALS {
                                reasons.lock().unwrap().push(format!("{peer}: {why}"));
                                break;
                            }
                            refusal_backoff(refusals).await;
                        }
                        Outcome::Failed(why) => {
                            failures += 1;
                            tracing::debug!(%peer, failures, "request failed: {why}");
                            if failures >= MAX_FAILURES {
                                reasons.lock().unwrap().push(format!("{peer}: {why}"));
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(200 * failures as u64)).await;
                        }
                    }
                }
                progress.peers.fetch_sub(1, Ordering::Relaxed);
            });
        }
    };
    let mut known: std::collections::HashSet<PeerId> = providers.iter().copied().collect();
    for peer in &providers {
        spawn_for(&mut workers, *peer);
    }
    // Providers that appear while we download (other downloaders announce themselves at their
    // start) are added as they are found, as a BitTorrent client re-asks its tracker.
    // Soon at first, then less often: downloaders that start together announce themselves
    // at their start, and each second spent not knowing of the others is a second in which
    // they all fetch from the seeder.
    let mut rediscover_every = FIRST_REDISCOVERY;
    let rediscover = tokio::time::sleep(rediscover_every);
    tokio::pin!(rediscover);
    loop {
        tokio::select! {
            joined = workers.join_next() => {
                if joined.is_none() {
                    break;
                }
                if work.lock().unwrap().complete() {
                    workers.abort_all();
                    break;
                }
            }
            () = &mut rediscover => {
                rediscover_every = (rediscover_every * 2).min(REDISCOVER_INTERVAL);
                rediscover.as_mut().reset(tokio::time::Instant::now() + rediscover_every);
                if work.lock().unwrap().complete() {
                    workers.abort_all();
                    break;
                }
                for peer in lookup_providers(net, hash).await {
                    if known.insert(peer) {
                        tracing::debug!(%peer, "new provider");
                        spawn_for(&mut workers, peer);
                    }
                }
            }
        }
    }
    // Once every piece is in, stragglers (a stalled provider, a duplicate in the end game)
    // were not waited for (above).
    if let Some(source) = local_error.lock().unwrap().take() {
        return Err(FetchError::Io { path: part, source });
    }
    if !work.lock().unwrap().complete() {
        return Err(FetchError::AllFailed {
            hash: hex,
            reasons: reasons.lock().unwrap().join("; "),
        });
    }

    // 4. Every group verified as it arrived; sync and move into place.
    target.close();
    target.data.sync_all().map_err(io_err(&part))?;
    std::fs::rename(&part, dest).map_err(io_err(dest))?;
    Ok(size)
}

/// Whether a worker waiting on a partial provider should give up: only once the whole
/// download (`done` bytes so far) has not moved for [`PARTIAL_PATIENCE`]. While other
/// providers still deliver, this one may soon hold what is missing; a download that gave up
/// early also stopped serving its verified part, and on slow links that failed the rest of a
/// swarm in turn.
fn stuck(idle: &mut Option<(tokio::time::Instant, u64)>, done: u64) -> bool {
    let now = tokio::time::Instant::now();
    let (since, at) = idle.get_or_insert((now, done));
    if *at != done {
        (*since, *at) = (now, done);
    }
    since.elapsed() > PARTIAL_PATIENCE
}

fn ranges_bytes(ranges: &ChunkRanges, size: u64) -> u64 {
    ranges
        .boundaries()
        .chunks(2)
        .map(|p| {
            let start = p[0].to_bytes().min(size);
            let end = p.get(1).map(|e| e.to_bytes()).unwrap_or(size).min(size);
            end - start
        })
        .sum()
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    /// The stream was dropped before any response: the provider took too many streams at
    /// once (libp2p-stream keeps one waiting per protocol and drops the rest). Worth
    /// retrying soon.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

/// Sleeps a little before retrying a refused request: longer after each refusal in a row, with
/// jitter so that requests dropped in one burst do not come back in one burst.
async fn refusal_backoff(refusals: u32) {
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 20)
        .unwrap_or(0);
    let ms = 10 * u64::from(refusals.min(10)) + u64::from(jitter);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

async fn open_request(
    net: &Handle,
    peer: PeerId,
    request: &Request,
    link: &mut Link,
) -> Result<(libp2p::Stream, Response), RequestError> {
    // A kept stream the provider has closed meanwhile (idle, restarted) fails at once: then
    // once more on a new stream.
    if let Some(mut stream) = link.stream.take()
        && let Ok(response) = exchange(&mut stream, request, false).await
    {
        return busy_refused(stream, response, link);
    }
    let mut control = net.stream_control();
    let protocol = if link.one_shot {
        PROTOCOL_ONE_SHOT
    } else {
        PROTOCOL
    };
    let mut stream = match open_stream(&mut control, peer, protocol).await? {
        Ok(stream) => stream,
        // An older provider: one request per stream, from now on.
        Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_)) if !link.one_shot => {
            link.one_shot = true;
            open_stream(&mut control, peer, PROTOCOL_ONE_SHOT)
                .await?
                .map_err(|e| RequestError::Failed(e.to_string()))?
        }
        Err(e) => return Err(RequestError::Failed(e.to_string())),
    };
    let response = exchange(&mut stream, request, link.one_shot).await?;
    busy_refused(stream, response, link)
}

/// A [`Response::Busy`] is a refusal (the stream stays for the next request).
fn busy_refused(
    stream: libp2p::Stream,
    response: Response,
    link: &mut Link,
) -> Result<(libp2p::Stream, Response), RequestError> {
    match response {
        Response::Busy(why) => {
            link.keep(stream);
            Err(RequestError::Refused(why))
        }
        response => Ok((stream, response)),
    }
}

async fn open_stream(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    protocol: libp2p::StreamProtocol,
) -> Result<Result<libp2p::Stream, libp2p_stream::OpenStreamError>, RequestError> {
    tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, protocol))
        .await
        .map_err(|_| {
            RequestError::Failed("no stream within the timeout (provider unreachable?)".into())
        })
}

/// Writes `request` and reads the response frame.
async fn exchange(
    stream: &mut libp2p::Stream,
    request: &Request,
    one_shot: bool,
) -> Result<Response, RequestError> {
    // A dropped stream shows as a write error or an end before the response frame; a
    // malformed frame is the provider's fault.
    let unanswered = |e: io::Error| match e.kind() {
        io::ErrorKind::InvalidData => RequestError::Failed(e.to_string()),
        _ => RequestError::Refused(e.to_string()),
    };
    write_frame(stream, request).await.map_err(unanswered)?;
    if one_shot {
        futures::AsyncWriteExt::close(stream)
            .await
            .map_err(unanswered)?;
    }
    let frame = tokio::time::timeout(
        STALL_TIMEOUT,
        read_limited_frame(stream, crate::protocol::MAX_RESPONSE_HEADER),
    )
    .await
    .map_err(|_| RequestError::Failed("no response within the timeout".into()))?
    .map_err(unanswered)?;
    crate::wire::decode(&frame).map_err(|e| RequestError::Failed(format!("bad response: {e}")))
}

/// A download worker's stream to its provider, kept between requests
/// ([`crate::protocol::PROTOCOL`]): a request on it costs no stream to open and negotiate,
/// and its flow-control window stays as large as it grew.
#[derive(Default)]
pub(crate) struct Link {
    stream: Option<libp2p::Stream>,
    /// The provider speaks only [`PROTOCOL_ONE_SHOT`]: a stream per request.
    one_shot: bool,
}

impl Link {
    /// Keeps `stream` for the next request, if the provider takes several per stream.
    fn keep(&mut self, stream: libp2p::Stream) {
        if !self.one_shot {
            self.stream = Some(stream);
        }
    }

    /// Keeps the stream a response was read from to its end.
    fn keep_read(&mut self, reader: ResponseReader) {
        self.keep(reader.into_inner().into_inner().into_inner());
    }
}

/// The providers of `hash` (other than this node) a fresh lookup finds. Bounded: a lookup
/// among dead peers must not hold up a download.
async fn lookup_providers(net: &Handle, hash: Hash) -> Vec<PeerId> {
    let me = net.local_peer_id();
    let lookup = net.find_providers(hash.as_bytes().to_vec(), 16);
    match tokio::time::timeout(REDISCOVER_TIMEOUT, lookup).await {
        Ok(Ok(found)) => found.into_iter().filter(|p| *p != me).collect(),
        _ => Vec::new(),
    }
}

/// Why a provider did not tell the size.
#[derive(Debug, thiserror::Error)]
enum SizeError {
    /// It is downloading the blob too and lacks the last chunk group so far.
    #[error("has only part of it so far")]
    Partial,
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

impl From<RequestError> for SizeError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Refused(why) => SizeError::Refused(why),
            RequestError::Failed(why) => SizeError::Failed(why),
        }
    }
}

/// Asks for the last chunk group only and verifies it, which authenticates the size.
async fn fetch_size(net: &Handle, hash: Hash, peer: PeerId) -> Result<u64, SizeError> {
    // A range starting past any real end is truncated to the last chunk group by both sides.
    let ranges = ChunkRanges::from(ChunkNum(u64::MAX >> 12)..);
    let request = Request::new(&hash, &ranges);
    let (stream, response) = open_request(net, peer, &request, &mut Link::default()).await?;
    let size = match response {
        Response::Size(size) => size,
        Response::NotFound => return Err(SizeError::Failed("does not have it".into())),
        Response::Unavailable(why) => return Err(SizeError::Failed(why)),
        // A super-seeder serves the size probe; a hint here is a peer that does not.
        Response::Partial { .. } | Response::Hint { .. } => return Err(SizeError::Partial),
        Response::Busy(why) => return Err(SizeError::Refused(why)),
    };
    let mut decoder = response_decoder(hash, ranges, BaoTree::new(size, BLOCK_SIZE), stream);
    loop {
        match decoder.next().await {
            ResponseDecoderNext::More((next, item)) => {
                decoder = next;
                item.map_err(|e| SizeError::Failed(format!("size {size} does not verify: {e}")))?;
            }
            ResponseDecoderNext::Done(_) => return Ok(size),
        }
    }
}

/// A provider's response stream, its leaves read into page-aligned memory
/// ([`crate::aligned`]), failing when it stalls. It is not buffered: a buffer would cost a copy
/// of every leaf, and the 64-byte parent pairs come one per 16 KiB leaf.
type ResponseReader =
    crate::aligned::LeafReader<Stalling<tokio_util::compat::Compat<libp2p::Stream>>>;

/// Decodes and verifies a response stream as it arrives.
fn response_decoder(
    hash: Hash,
    ranges: ChunkRanges,
    tree: BaoTree,
    stream: libp2p::Stream,
) -> ResponseDecoder<ResponseReader> {
    let reader = crate::aligned::LeafReader::new(Stalling::new(stream.compat()));
    ResponseDecoder::new(hash, ranges, tree, reader)
}

/// What a download knows of a provider's pieces, shared by the provider's workers.
#[derive(Clone, Default)]
struct Known {
    /// What it has, if it said it is still downloading too, or what it serves now, if it
    /// super-seeds; `None` when it has not said (a full provider, or asked afresh).
    has: Option<ChunkRanges>,
    /// It super-seeds: it has everything, and may serve more later.
    hinted: bool,
}

/// One request of a download to one provider.
struct Ask<'a> {
    peer: PeerId,
    ranges: ChunkRanges,
    /// The provider's meter: told when the request starts, what arrives, and how it ends.
    meter: &'a Mutex<Meter>,
    /// Whether every piece of this request was done by another provider (it can stop).
    done_elsewhere: &'a (dyn Fn() -> bool + Sync),
}

/// Fetches and verifies one request, keeping the provider's meter up to date.
async fn fetch_ranges(
    net: &Handle,
    target: &Arc<Target>,
    ask: Ask<'_>,
    link: &mut Link,
    progress: &Arc<Progress>,
) -> Outcome {
    let bytes = ranges_bytes(&ask.ranges, target.tree.size());
    ask.meter
        .lock()
        .unwrap()
        .start(bytes, std::time::Instant::now());
    let mut delivered = 0u64;
    let outcome = fetch_metered(net, target, &ask, link, progress, &mut delivered).await;
    ask.meter
        .lock()
        .unwrap()
        .end(bytes.saturating_sub(delivered), std::time::Instant::now());
    outcome
}

async fn fetch_metered(
    net: &Handle,
    target: &Arc<Target>,
    ask: &Ask<'_>,
    link: &mut Link,
    progress: &Arc<Progress>,
    delivered: &mut u64,
) -> Outcome {
    let (peer, ranges) = (ask.peer, ask.ranges.clone());
    let request = Request::new(&target.hash, &ranges);
    let (stream, response) = match open_request(net, peer, &request, link).await {
        Ok(ok) => ok,
        Err(RequestError::Refused(why)) => return Outcome::Refused(why),
        Err(RequestError::Failed(why)) => return Outcome::Failed(why),
    };
    // An answer without data leaves the stream ready for the next request.
    let answered = match response {
        Response::Size(s) if s == target.tree.size() => None,
        Response::Size(s) => {
            return Outcome::Lied(format!("claims size {s}, not {}", target.tree.size()));
        }
        Response::NotFound => Some(Outcome::Failed("does not have it".into())),
        Response::Unavailable(why) => Some(Outcome::Failed(why)),
        Response::Partial { have, .. } => {
            Some(Outcome::Partial(crate::protocol::pairs_to_ranges(&have)))
        }
        Response::Hint { have } => Some(Outcome::Hint(crate::protocol::pairs_to_ranges(&have))),
        Response::Busy(why) => Some(Outcome::Refused(why)),
    };
    if let Some(outcome) = answered {
        link.keep(stream);
        return outcome;
    }
    // Decoded and verified here, on the runtime (BLAKE3 of a 16 KiB group is a few
    // microseconds); each run of verified leaves, with the parent hashes that came with it,
    // goes to the disk in one blocking task.
    let mut decoder = response_decoder(target.hash, ranges, target.tree, stream);
    let mut batch = Batch::default();
    // The write of the previous batch, still going while the next one is read: the stream
    // keeps flowing (its window is only reopened as it is read) while the disk works.
    let mut writing: Option<Write> = None;
    // Leaf bytes not yet reported to the meter, and when they last were.
    let (mut unreported, mut reported) = (0u64, std::time::Instant::now());
    loop {
        let now = std::time::Instant::now();
        if now.duration_since(reported) >= REPORT_EVERY {
            ask.meter.lock().unwrap().delivered(unreported, now);
            *delivered += unreported;
            (unreported, reported) = (0, now);
            if (ask.done_elsewhere)() {
                return match batch.finish(writing, target, progress).await {
                    Err(e) => Outcome::Local(e),
                    Ok(()) => Outcome::Cancelled,
                };
            }
        }
        let item = match decoder.next().await {
            ResponseDecoderNext::More((next, item)) => {
                decoder = next;
                item
            }
            ResponseDecoderNext::Done(reader) => {
                link.keep_read(reader);
                break;
            }
        };
        match item {
            Ok(BaoContentItem::Parent(Parent { node, pair })) => batch.parents.push((node, pair)),
            Ok(BaoContentItem::Leaf(Leaf { offset, data })) => {
                let contiguous = offset == batch.offset + batch.len as u64;
                if !contiguous || batch.len + data.len() > COALESCE {
                    if let Err(e) = batch.hand_over(&mut writing, target, progress).await {
                        return Outcome::Local(e);
                    }
                    batch.offset = offset;
                }
                batch.len += data.len();
                unreported += data.len() as u64;
                batch.leaves.push(data);
            }
            Err(e) => {
                // What verified before the error is kept.
                if let Err(e) = batch.finish(writing, target, progress).await {
                    return Outcome::Local(e);
                }
                return match e {
                    DecodeError::LeafHashMismatch(_) | DecodeError::ParentHashMismatch(_) => {
                        Outcome::Lied(describe(&e, &target.tree))
                    }
                    e => Outcome::Failed(e.to_string()),
                };
            }
        }
    }
    ask.meter
        .lock()
        .unwrap()
        .delivered(unreported, std::time::Instant::now());
    *delivered += unreported;
    match batch.finish(writing, target, progress).await {
        Err(e) => Outcome::Local(e),
        Ok(()) => Outcome::Ok,
    }
}

/// A batch being written in a blocking task: its length and offset, counted once it is on
/// disk.
struct Write {
    task: tokio::task::JoinHandle<io::Result<()>>,
    len: usize,
    offset: u64,
}

impl Write {
    /// Waits for the write, then counts it as done and offers its ranges to other downloaders.
    async fn settle(self, target: &Arc<Target>, progress: &Arc<Progress>) -> io::Result<()> {
        self.task.await.map_err(io::Error::other)??;
        if self.len > 0 {
            progress.done.fetch_add(self.len as u64, Ordering::Relaxed);
            if let Some(partial) = target.have.lock().unwrap().clone() {
                let start = ChunkNum(self.offset / 1024);
                let end = ChunkNum((self.offset + self.len as u64).div_ceil(1024));
                *partial.have.lock().unwrap() |= ChunkRanges::from(start..end);
            }
        }
        Ok(())
    }
}

/// Verified parents and a contiguous run of verified leaves (at most [`COALESCE`] bytes at
/// `offset`), not yet on disk.
#[derive(Default)]
struct Batch {
    parents: Vec<(bao_tree::TreeNode, (blake3::Hash, blake3::Hash))>,
    leaves: Vec<bytes::Bytes>,
    len: usize,
    offset: u64,
}

impl Batch {
    /// Starts writing the batch in a blocking task (nothing when it is empty).
    fn start(&mut self, target: &Arc<Target>) -> Option<Write> {
        if self.parents.is_empty() && self.leaves.is_empty() {
            return None;
        }
        let batch = std::mem::take(self);
        let (len, offset) = (batch.len, batch.offset);
        let target = target.clone();
        let task = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let _permit = target.write_permit()?;
            if !batch.parents.is_empty() {
                save_parents(&target.outboard()?, &batch.parents)?;
            }
            if !batch.leaves.is_empty() {
                write_run(
                    &target.data,
                    target.direct.as_ref(),
                    &batch.leaves,
                    len,
                    offset,
                )?;
            }
            Ok(())
        });
        Some(Write { task, len, offset })
    }

    /// Waits for the write before (one at a time per response), then starts this batch's.
    async fn hand_over(
        &mut self,
        writing: &mut Option<Write>,
        target: &Arc<Target>,
        progress: &Arc<Progress>,
    ) -> io::Result<()> {
        if let Some(previous) = writing.take() {
            previous.settle(target, progress).await?;
        }
        *writing = self.start(target);
        Ok(())
    }

    /// Writes the batch after the one still being written, and waits for both.
    async fn finish(
        mut self,
        mut writing: Option<Write>,
        target: &Arc<Target>,
        progress: &Arc<Progress>,
    ) -> io::Result<()> {
        self.hand_over(&mut writing, target, progress).await?;
        match writing {
            Some(last) => last.settle(target, progress).await,
            None => Ok(()),
        }
    }
}

/// Saves verified hash pairs in a pre-order outboard, one write per run of adjacent pairs.
///
/// The parents of a run of leaves lie together in pre-order (a 1 MiB run's 63 inner nodes are
/// one span), so this is a few writes per run instead of a 64-byte write per 16 KiB leaf (65,536
/// system calls per GiB downloaded). Pairs the outboard does not store (bao-tree's
/// `pre_order_offset` is `None`) are skipped, as `PreOrderOutboard::save` does.
fn save_parents(
    outboard: &PreOrderOutboard<File>,
    parents: &[(bao_tree::TreeNode, (blake3::Hash, blake3::Hash))],
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut at: Vec<(u64, &(blake3::Hash, blake3::Hash))> = parents
        .iter()
        .filter_map(|(node, pair)| Some((outboard.tree.pre_order_offset(*node)? * 64, pair)))
        .collect();
    at.sort_unstable_by_key(|(offset, _)| *offset);
    at.dedup_by_key(|(offset, _)| *offset);
    let mut run: Vec<u8> = Vec::with_capacity(at.len() * 64);
    let mut start = 0;
    for (i, (offset, (left, right))) in at.iter().enumerate() {
        if i > 0 && *offset != start + run.len() as u64 {
            outboard.data.write_all_at(&run, start)?;
            run.clear();
        }
        if run.is_empty() {
            start = *offset;
        }
        run.extend_from_slice(left.as_bytes());
        run.extend_from_slice(right.as_bytes());
    }
    if !run.is_empty() {
        outboard.data.write_all_at(&run, start)?;
    }
    Ok(())
}

/// Opens `path` for writing with `O_DIRECT`, or `None` where the file system refuses it.
fn open_direct(path: &Path) -> Option<File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::WRONLY | OFlags::DIRECT | OFlags::CLOEXEC;
    rustix::fs::open(path, flags, Mode::empty())
        .ok()
        .map(File::from)
}

/// Writes a run of verified leaves (`len` bytes, at most [`COALESCE`]) at `offset` of the
/// partial file.
///
/// Whole blocks go with `O_DIRECT` (as they are when they were read into page-aligned memory,
/// see [`crate::aligned`]; otherwise copied once into an aligned buffer): from the network to
/// the disk without the page cache, whose fresh pages cost the downloader more CPU than
/// decrypting and verifying together (on a VM each new page-cache page can also fault in the
/// host), and which a 1 GiB download would otherwise flush the user's cache with. The tail of
/// the blob (less than a block), and every write on a file system without `O_DIRECT`, go
/// through the page cache with `pwritev`. Readers of the partial file see either: a direct
/// write drops any cached copy of its range.
fn write_run(
    data: &File,
    direct: Option<&File>,
    run: &[bytes::Bytes],
    len: usize,
    offset: u64,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let whole = len / DIRECT_ALIGN * DIRECT_ALIGN;
    let Some(direct) = direct else {
        return write_vectored_at(data, run, offset);
    };
    if whole == 0 || !offset.is_multiple_of(DIRECT_ALIGN as u64) || len > COALESCE {
        return write_vectored_at(data, run, offset);
    }
    // Leaves read into page-aligned leaf buffers go to the disk as they are; a short last leaf (the
    // blob's end) through the cache.
    let short_tail = run
        .last()
        .is_some_and(|b| !b.len().is_multiple_of(DIRECT_ALIGN));
    let (pages, tail) = run.split_at(run.len() - usize::from(short_tail));
    if crate::aligned::pages(pages) {
        match write_vectored_at(direct, pages, offset) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                return write_vectored_at(data, run, offset);
            }
            Err(e) => return Err(e),
        }
        let written: usize = pages.iter().map(|b| b.len()).sum();
        return write_vectored_at(data, tail, offset + written as u64);
    }
    ALIGNED.with_borrow_mut(|buf| {
        // Allocated once per thread, with room to start at an aligned address.
        if buf.is_empty() {
            *buf = vec![0u8; COALESCE + DIRECT_ALIGN];
        }
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let buf = &mut buf[start..start + COALESCE];
        let mut filled = 0;
        for b in run {
            buf[filled..filled + b.len()].copy_from_slice(b);
            filled += b.len();
        }
        if let Err(e) = direct.write_all_at(&buf[..whole], offset) {
            // A file system may take the open and refuse the alignment: go through the cache.
            if e.raw_os_error() != Some(rustix::io::Errno::INVAL.raw_os_error()) {
                return Err(e);
            }
            return write_vectored_at(data, run, offset);
        }
        if whole < len {
            data.write_all_at(&buf[whole..len], offset + whole as u64)?;
        }
        Ok(())
    })
}

thread_local! {
    /// [`write_run`]'s aligned buffer: one per (blocking) thread that writes, instead of a
    /// fresh zeroed megabyte for every run.
    static ALIGNED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes `bufs` back to back at `offset`, with as few `pwritev` calls as the kernel allows.
fn write_vectored_at(file: &File, bufs: &[bytes::Bytes], mut offset: u64) -> io::Result<()> {
    let mut first = 0;
    let mut skip = 0;
    while first < bufs.len() {
        let slices: Vec<io::IoSlice<'_>> = std::iter::once(&bufs[first][skip..])
            .chain(bufs[first + 1..].iter().map(|b| &b[..]))
            .take(IOV_MAX)
            .map(io::IoSlice::new)
            .collect();
        let written = rustix::io::pwritev(file, &slices, offset)?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        offset += written as u64;
        // Skip what was written: whole buffers, then part of one.
        let mut left = written;
        while first < bufs.len() && left >= bufs[first].len() - skip {
            left -= bufs[first].len() - skip;
            first += 1;
            skip = 0;
        }
        skip += left;
    }
    Ok(())
}

/// Most buffers one `pwritev` takes on Linux.
const IOV_MAX: usize = 1024;

fn describe(e: &DecodeError, tree: &BaoTree) -> String {
    match e {
        DecodeError::LeafHashMismatch(c) => {
            let start = c.to_bytes();
            let end = (start + BLOCK_SIZE.bytes() as u64).min(tree.size());
            format!("chunk group at bytes {start}..{end} does not match the hash")
        }
        DecodeError::ParentHashMismatch(n) => {
            let r = n.chunk_range();
            format!(
                "hashes for bytes {}..{} do not match",
                r.start.to_bytes(),
                r.end.to_bytes().min(tree.size())
            )
        }
        other => other.to_string(),
    }
}

/// A reader that fails with `TimedOut` when no byte arrives for [`STALL_TIMEOUT`].
struct Stalling<R> {
    inner: R,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<R> Stalling<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(STALL_TIMEOUT)),
        }
    }

    fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Stalling<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + STALL_TIMEOUT;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the provider stalled",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Reads a whole small file (used for collections after download).
pub fn read_file_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut out = Vec::new();
    f.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "too large"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_path_sits_beside_the_destination() {
        assert_eq!(
            partial_path(Path::new("/x/y/file.iso")),
            PathBuf::from("/x/y/file.iso.agora-part")
        );
    }

    /// Pairs saved a run at a time land where bao-tree's own `save` puts them, one at a time:
    /// the whole outboard, and a subset with gaps, given in any order and with repeats.
    #[test]
    fn parents_saved_in_runs_match_bao_tree() {
        use bao_tree::{
            BlockSize, ChunkRanges,
            io::{
                outboard::PreOrderMemOutboard,
                sync::{Outboard, OutboardMut},
            },
            iter::BaoChunk,
        };
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 5000)
            .map(|i| (i % 251) as u8)
            .collect();
        let full = PreOrderMemOutboard::create(&data, BlockSize::from_chunk_log(4));
        let parents: Vec<_> = full
            .tree
            .ranges_pre_order_chunks_iter_ref(&ChunkRanges::all(), 0)
            .filter_map(|item| match item {
                BaoChunk::Parent { node, .. } => Some((node, full.load(node).unwrap().unwrap())),
                BaoChunk::Leaf { .. } => None,
            })
            .collect();
        assert!(parents.len() > 190, "{} parents", parents.len());
        let open = |name: &str| {
            let path = dir.path().join(name);
            let file = File::create_new(&path).unwrap();
            file.set_len(full.data.len() as u64).unwrap();
            let outboard = PreOrderOutboard {
                root: full.root,
                tree: full.tree,
                data: file,
            };
            (path, outboard)
        };
        let subset: Vec<_> = parents
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 5 != 2)
            .map(|(_, p)| *p)
            .collect();
        for (name, chosen) in [("all", &parents), ("subset", &subset)] {
            let (runs, outboard) = open(&format!("{name}-runs"));
            for batch in chosen.chunks(37) {
                let mut batch = batch.to_vec();
                batch.reverse();
                batch.push(batch[0]);
                save_parents(&outboard, &batch).unwrap();
            }
            let (one_by_one, mut outboard) = open(&format!("{name}-one"));
            for (node, pair) in chosen {
                outboard.save(*node, pair).unwrap();
            }
            let runs = std::fs::read(runs).unwrap();
            assert!(runs == std::fs::read(one_by_one).unwrap(), "{name}");
            if name == "all" {
                assert!(runs == full.data, "the whole outboard");
            }
        }
    }

    #[test]
    fn vectored_writes_land_back_to_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // More buffers than one pwritev takes, of uneven sizes, at an offset.
        let bufs: Vec<bytes::Bytes> = (0..IOV_MAX + 300)
            .map(|i| bytes::Bytes::from(vec![(i % 251) as u8; 1 + i % 7]))
            .collect();
        write_vectored_at(&file, &bufs, 100).unwrap();
        let expected: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(&written[..100], &[0u8; 100][..]);
        assert_eq!(&written[100..], &expected[..]);
    }

    /// Leaves copied anywhere in memory (written through the aligned buffer) and leaves read
    /// into page-aligned arenas (written as they are), with and without `O_DIRECT`.
    #[test]
    fn runs_are_written_whole_blocks_direct_and_the_tail_buffered() {
        use iroh_io::AsyncStreamReader;
        let dir = tempfile::tempdir().unwrap();
        let size = 2 * COALESCE + 16 * 1024 + 1000;
        let content: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
        let leaves = |start: usize, end: usize, arena: bool| -> Vec<bytes::Bytes> {
            let mut reader = crate::aligned::LeafReader::new(&content[start..end]);
            let leaves: Vec<bytes::Bytes> = (start..end)
                .step_by(16 * 1024)
                .map(|o| match arena {
                    true => futures::executor::block_on(reader.read_bytes(16 * 1024)).unwrap(),
                    false => bytes::Bytes::copy_from_slice(&content[o..(o + 16 * 1024).min(end)]),
                })
                .collect();
            let whole = &leaves[..(end - start) / (16 * 1024)];
            assert_eq!(crate::aligned::pages(whole), arena);
            leaves
        };
        let runs = [
            (COALESCE, 2 * COALESCE),
            (2 * COALESCE, size),
            (0, COALESCE),
        ];
        for (use_direct, arena) in [(true, false), (true, true), (false, true)] {
            let path = dir.path().join(format!("part-{use_direct}-{arena}"));
            let data = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            data.set_len(size as u64).unwrap();
            let direct = use_direct.then(|| open_direct(&path)).flatten();
            if use_direct && direct.is_none() {
                eprintln!("this file system refuses O_DIRECT; only the fallback is exercised");
            }
            for (start, end) in runs {
                write_run(
                    &data,
                    direct.as_ref(),
                    &leaves(start, end, arena),
                    end - start,
                    start as u64,
                )
                .unwrap();
            }
            assert!(
                std::fs::read(&path).unwrap() == content,
                "direct: {use_direct}, arena: {arena}"
            );
        }
    }

    #[test]
    fn byte_count_of_ranges() {
        let r = ChunkRanges::from(ChunkNum(0)..ChunkNum(2)) | ChunkRanges::from(ChunkNum(3)..);
        assert_eq!(ranges_bytes(&r, 3500), 2048 + (3500 - 3072));
    }
}
