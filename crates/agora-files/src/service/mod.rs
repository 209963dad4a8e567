//! The file-sharing service: serves blobs, runs share and download jobs, announces providers.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use agora_net::{
    Handle,
    admission::{PeerSlots, SharedRateLimiter},
};
use futures::StreamExt;
use libp2p::PeerId;
use serde::Serialize;
use tokio::sync::Semaphore;

mod get;
mod index;
mod replicate;
mod serve;
mod share;

use replicate::Fetching;
pub use replicate::{REPLICATE_PROTOCOL, ReplicateRequest, ReplicateResponse};

use crate::{
    Hash,
    collection::{Collection, Entry, MAX_COLLECTION_LEN, safe_relative_path},
    download::{self, FetchError, Progress},
    protocol::{self, MAX_CONCURRENT_SERVES},
    search,
    store::{BlobMeta, Kind, Store, StoreError},
    ticket::Ticket,
};

/// Replication and storage settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bytes the store may hold for others (replicas) plus all outboards; cached replicas are
    /// evicted, oldest first, to stay under it. Own shares and pins are never evicted.
    pub storage_quota: u64,
    /// Replicas kept of each shared blob besides the publisher's copy.
    pub replicas: usize,
    /// How often held blobs are checked for enough replicas (and repaired).
    pub replica_check: Duration,
    /// Largest blob accepted as a replica.
    pub max_replica_size: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            storage_quota: 10 * 1024 * 1024 * 1024,
            replicas: 3,
            replica_check: Duration::from_secs(600),
            max_replica_size: 4 * 1024 * 1024 * 1024,
        }
    }
}

/// How often every held blob is announced again in the DHT.
const REANNOUNCE_INTERVAL: Duration = Duration::from_secs(30 * 60);
/// Finished jobs kept for clients to read.
const MAX_FINISHED_JOBS: usize = 256;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum JobState {
    Running,
    Done { result: serde_json::Value },
    Failed { error: String, code: &'static str },
}

/// A long-running share or download, polled by clients for progress.
pub struct Job {
    pub id: u64,
    pub kind: &'static str,
    /// Deduplicates concurrent identical requests.
    key: String,
    pub progress: Arc<Progress>,
    state: Mutex<JobState>,
}

#[derive(Debug, Serialize)]
pub struct JobView {
    pub id: u64,
    pub kind: &'static str,
    #[serde(flatten)]
    pub state: JobState,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub peers: usize,
    pub banned: Vec<String>,
}

impl Job {
    pub fn view(&self) -> JobView {
        JobView {
            id: self.id,
            kind: self.kind,
            state: self.state.lock().unwrap().clone(),
            done_bytes: self.progress.done.load(Ordering::Relaxed),
            total_bytes: self.progress.total.load(Ordering::Relaxed),
            peers: self.progress.peers.load(Ordering::Relaxed),
            banned: self.progress.banned.lock().unwrap().clone(),
        }
    }

    fn finish(&self, state: JobState) {
        *self.state.lock().unwrap() = state;
    }

    fn running(&self) -> bool {
        matches!(*self.state.lock().unwrap(), JobState::Running)
    }
}

/// One held blob, as `agora files` lists it.
#[derive(Debug, Serialize)]
pub struct FileView {
    pub hash: String,
    pub name: String,
    pub size: u64,
    pub kind: Kind,
    pub collection: bool,
    pub stale: bool,
    pub path: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{0}")]
    BadTarget(String),
    #[error("{0} is not held by this node; fetch it first with `agora get`")]
    NotHeld(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Admission budgets of file sharing: what one peer may make this node hold or do. Each
/// refusal is counted on `agora_refusals_total` under the matching `REFUSED_*` name.
pub mod budget {
    use agora_net::admission::Rate;

    /// Replica requests one peer may make: 2 a second, bursts of 128 (a new share asks each
    /// of its closest peers once per file; refused ones are asked again by repair rounds).
    pub const REPLICATE_REQUESTS: Rate = Rate::new(2.0, 128.0);
    /// Replicas asked for by one peer that are being fetched at once.
    pub const MAX_REPLICAS_IN_FLIGHT_PER_PEER: usize = 16;
    /// Replicas being fetched at once, for all peers together.
    pub const MAX_REPLICAS_IN_FLIGHT: usize = 64;
    /// Index requests (publish, query) one peer may make: 20 a second, bursts of 400.
    pub const SEARCH_REQUESTS: Rate = Rate::new(20.0, 400.0);
    /// Blob streams served to one peer at once (of [`MAX_CONCURRENT_SERVES`](crate::protocol::MAX_CONCURRENT_SERVES) in all).
    pub const MAX_SERVES_PER_PEER: usize = 8;
    /// Peers each rate budget tracks at once.
    pub const MAX_RATE_PEERS: usize = 4096;

    pub const REFUSED_REPLICATE_RATE: &str = "files.replicate.peer_rate";
    pub const REFUSED_REPLICATE_PEER: &str = "files.replicate.peer_in_flight";
    pub const REFUSED_REPLICATE_TOTAL: &str = "files.replicate.in_flight";
    pub const REFUSED_REPLICATE_QUOTA: &str = "files.replicate.quota";
    pub const REFUSED_SEARCH_RATE: &str = "search.peer_rate";
    pub const REFUSED_SERVE_PEER: &str = "files.serve.peer";
    pub const REFUSED_SERVE_TOTAL: &str = "files.serve.total";
}

pub struct Files {
    net: Handle,
    store: Store,
    config: Config,
    index: Mutex<search::Index>,
    partials: protocol::Partials,
    fetching: Mutex<Fetching>,
    jobs: Mutex<HashMap<u64, Arc<Job>>>,
    next_job: AtomicU64,
    replicate_rate: SharedRateLimiter<PeerId>,
    search_rate: SharedRateLimiter<PeerId>,
}

impl Files {
    /// Opens the store, serves `/agora/blobs/1.1.0` (and `1.0.0`) and announces every held blob.
    pub fn start(
        net: Handle,
        data_dir: &Path,
        db: Arc<agora_store::Db>,
        config: Config,
    ) -> Result<Arc<Self>, FilesError> {
        let store = Store::open(data_dir, db)?;
        let files = Arc::new(Self {
            net: net.clone(),
            store: store.clone(),
            config,
            index: Mutex::new(search::Index::default()),
            partials: protocol::Partials::default(),
            fetching: Mutex::new(Fetching::default()),
            jobs: Mutex::new(HashMap::new()),
            next_job: AtomicU64::new(1),
            replicate_rate: SharedRateLimiter::new(
                budget::REPLICATE_REQUESTS,
                budget::MAX_RATE_PEERS,
            ),
            search_rate: SharedRateLimiter::new(budget::SEARCH_REQUESTS, budget::MAX_RATE_PEERS),
        });
        serve::serve_blobs(&files)?;
        index::serve_index(&files)?;
        replicate::serve_replicate(&files)?;
        tokio::spawn({
            let interval = files.config.replica_check;
            let files = Arc::downgrade(&files);
            async move {
                let mut tick = tokio::time::interval(interval);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(files) = files.upgrade() else { return };
                    files.check_replicas().await;
                }
            }
        });
        tokio::spawn({
            let files = Arc::downgrade(&files);
            async move {
                let mut tick = tokio::time::interval(REANNOUNCE_INTERVAL);
                loop {
                    tick.tick().await;
                    let Some(files) = files.upgrade() else { return };
                    files.announce_all().await;
                }
            }
        });
        files.resume_pending_replicas();
        Ok(files)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn job(&self, id: u64) -> Option<JobView> {
        self.jobs.lock().unwrap().get(&id).map(|j| j.view())
    }

    fn new_job(&self, kind: &'static str, key: String) -> (Arc<Job>, bool) {
        let mut jobs = self.jobs.lock().unwrap();
        if let Some(job) = jobs.values().find(|j| j.key == key && j.running()) {
            return (job.clone(), false);
        }
        if jobs.len() >= MAX_FINISHED_JOBS {
            let mut finished: Vec<u64> = jobs
                .values()
                .filter(|j| !j.running())
                .map(|j| j.id)
                .collect();
            finished.sort();
            for id in finished.iter().take(jobs.len() + 1 - MAX_FINISHED_JOBS) {
                jobs.remove(id);
            }
        }
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        let job = Arc::new(Job {
            id,
            kind,
            key,
            progress: Arc::new(Progress::default()),
            state: Mutex::new(JobState::Running),
        });
        jobs.insert(id, job.clone());
        (job, true)
    }

    /// Replicas being fetched now (asked for by peers, or resumed after a restart).
    pub fn replicas_in_flight(&self) -> usize {
        self.fetching.lock().unwrap().replicas.len()
    }

    pub fn list(&self) -> Result<Vec<FileView>, FilesError> {
        let mut out: Vec<FileView> = self
            .store
            .list()?
            .into_iter()
            .map(|(hash, meta)| FileView {
                hash: hash.to_hex().to_string(),
                name: meta.name,
                size: meta.size,
                kind: meta.kind,
                collection: meta.collection,
                stale: meta.stale,
                path: meta.source,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.hash.cmp(&b.hash)));
        Ok(out)
    }

    /// Stops sharing a blob and forgets it (the user's own file is left alone).
    pub async fn unshare(&self, hash: &str) -> Result<BlobMeta, FilesError> {
        let hash = parse_hash(hash)?;
        let meta = self
            .store
            .remove(&hash)?
            .ok_or_else(|| FilesError::NotHeld(hash.to_hex().to_string()))?;
        let _ = self.net.stop_providing(hash.as_bytes().to_vec()).await;
        Ok(meta)
    }

    /// Marks a held blob as pinned (never evicted).
    pub fn pin(&self, hash: &str) -> Result<BlobMeta, FilesError> {
        let hash = parse_hash(hash)?;
        let mut meta = self
            .store
            .get(&hash)?
            .ok_or_else(|| FilesError::NotHeld(hash.to_hex().to_string()))?;
        if meta.kind == Kind::Cached {
            meta.kind = Kind::Pinned;
            self.store.put(&hash, &meta)?;
        }
        Ok(meta)
    }
}

fn parse_hash(s: &str) -> Result<Hash, FilesError> {
    Hash::from_hex(s.trim())
        .map_err(|_| FilesError::BadTarget(format!("{s:?} is not a BLAKE3 hash (64 hex digits)")))
}
