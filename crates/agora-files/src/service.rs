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

use crate::{
    Hash,
    collection::{Collection, Entry, MAX_COLLECTION_LEN, safe_relative_path},
    download::{self, FetchError, Progress},
    protocol::{self, MAX_CONCURRENT_SERVES},
    search,
    store::{BlobMeta, Kind, Store, StoreError},
    ticket::Ticket,
};

/// `/agora/replicate/1.0.0`: "please hold a replica of this blob" (JSON `{hash, size, name}`,
/// answered `{accepted, reason}`); the holder then fetches it like any download.
pub const REPLICATE_PROTOCOL: libp2p::StreamProtocol =
    libp2p::StreamProtocol::new("/agora/replicate/1.0.0");

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

#[derive(Debug, Serialize, serde::Deserialize)]
struct ReplicateRequest {
    hash: String,
    size: u64,
    name: String,
}

#[derive(Debug, Serialize, serde::Deserialize)]
struct ReplicateResponse {
    accepted: bool,
    reason: String,
}

/// How often every held blob is announced again in the DHT.
const REANNOUNCE_INTERVAL: Duration = Duration::from_secs(30 * 60);
/// DHT lookups for providers before a download reports "not found".
const PROVIDER_LOOKUPS: usize = 3;
/// Most providers a download asks the DHT for.
const MAX_PROVIDERS: usize = 16;
/// Further provider lookups when every provider found so far failed.
const RETRY_LOOKUPS: usize = 2;
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

/// Files of a collection fetched at the same time.
const ENTRIES_AT_ONCE: usize = 8;

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

/// How often a replica being fetched makes room under the quota for what it has verified.
const ROOM_CHECK: Duration = Duration::from_millis(200);

/// A replica being fetched.
#[derive(Clone)]
struct ReplicaFetch {
    /// Its progress (a `get` of the same blob follows it).
    progress: Arc<Progress>,
    /// The peer that asked for it (none when resumed after a restart).
    requester: Option<PeerId>,
}

impl ReplicaFetch {
    fn new(requester: Option<PeerId>) -> Self {
        ReplicaFetch {
            progress: Arc::new(Progress::default()),
            requester,
        }
    }

    /// Bytes under the quota (data and outboard) backed by verified data so far: nothing
    /// until the size is proven, then in proportion to the verified part.
    fn verified(&self) -> u64 {
        let total = self.progress.total.load(Ordering::Relaxed);
        let done = self.progress.done.load(Ordering::Relaxed).min(total);
        if total == 0 {
            return 0;
        }
        let needed = total + bao_tree::BaoTree::new(total, crate::BLOCK_SIZE).outboard_size();
        (u128::from(needed) * u128::from(done) / u128::from(total)) as u64
    }
}

/// What this node is fetching, under one lock, so that a replica and a `get` of the same blob
/// never both start.
#[derive(Default)]
struct Fetching {
    /// Replicas being fetched.
    replicas: HashMap<Hash, ReplicaFetch>,
    /// Blobs that `get`s are fetching, and how many gets each: a request to hold a replica of
    /// one is answered "already fetching" (the get's result is kept and announced).
    gets: HashMap<Hash, usize>,
}

/// A `get`'s claim on fetching a blob; released when dropped.
struct GetClaim {
    files: Arc<Files>,
    hash: Hash,
}

impl Drop for GetClaim {
    fn drop(&mut self) {
        let mut fetching = self.files.fetching.lock().unwrap();
        if let Some(n) = fetching.gets.get_mut(&self.hash) {
            *n -= 1;
            if *n == 0 {
                fetching.gets.remove(&self.hash);
            }
        }
    }
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
    /// Opens the store, serves `/agora/blobs/1.0.0` and announces every held blob.
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
        let mut incoming = net
            .stream_control()
            .accept(protocol::PROTOCOL)
            .map_err(|e| FilesError::BadTarget(e.to_string()))?;
        let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_SERVES));
        let peer_slots = PeerSlots::new(budget::MAX_SERVES_PER_PEER);
        let partials = files.partials.clone();
        // Blobs whose in-place file went away or changed: stop announcing them, or downloaders
        // keep finding this node in the DHT and keep being refused.
        let (stale_tx, mut stale_rx) = tokio::sync::mpsc::channel::<Hash>(protocol::STALE_QUEUE);
        tokio::spawn({
            let net = net.clone();
            async move {
                while let Some(hash) = stale_rx.recv().await {
                    tracing::info!(hash = %hash.to_hex(), "no longer announcing a blob whose file changed");
                    let _ = net.stop_providing(hash.as_bytes().to_vec()).await;
                }
            }
        });
        let serve_net = net.clone();
        tokio::spawn(async move {
            let net = serve_net;
            while let Some((peer, stream)) = incoming.next().await {
                // One peer holds at most MAX_SERVES_PER_PEER of the slots, so a slow reader
                // cannot take them all (each write also has a stall timeout).
                let admitted = match peer_slots.try_acquire(peer) {
                    None => Err(budget::REFUSED_SERVE_PEER),
                    Some(peer_slot) => slots
                        .clone()
                        .try_acquire_owned()
                        .map(|permit| (peer_slot, permit))
                        .map_err(|_| budget::REFUSED_SERVE_TOTAL),
                };
                let slots = match admitted {
                    Ok(slots) => slots,
                    Err(name) => {
                        net.admission().refuse(name);
                        tracing::debug!(%peer, budget = name, "blob request refused");
                        tokio::spawn(protocol::refuse_stream(stream, name));
                        continue;
                    }
                };
                let (store, partials, stale) = (store.clone(), partials.clone(), stale_tx.clone());
                tokio::spawn(async move {
                    let _slots = slots;
                    if let Err(e) =
                        protocol::serve_stream(store, partials, peer, stream, stale).await
                    {
                        tracing::debug!(%peer, "blob request failed: {e}");
                    }
                });
            }
        });
        let (tx, mut requests) = tokio::sync::mpsc::channel::<agora_net::InboundRequest>(64);
        net.serve(search::PROTOCOL, tx)
            .map_err(|e| FilesError::BadTarget(e.to_string()))?;
        tokio::spawn({
            let files = Arc::downgrade(&files);
            let net = net.clone();
            async move {
                while let Some(req) = requests.recv().await {
                    let Some(files) = files.upgrade() else { return };
                    if files.search_rate.check(&req.peer, 1.0).is_err() {
                        files.net.admission().refuse(budget::REFUSED_SEARCH_RATE);
                        req.reply.refuse(format!(
                            "{}: too many index requests; retry later",
                            budget::REFUSED_SEARCH_RATE
                        ));
                        continue;
                    }
                    let agora_net::InboundRequest { peer, data, reply } = req;
                    // Index work holds the index lock: off the async workers.
                    let handled =
                        tokio::task::spawn_blocking(move || {
                            match serde_json::from_slice::<search::Request>(&data) {
                                Ok(request) => files.index.lock().unwrap().handle(
                                    peer,
                                    request,
                                    std::time::Instant::now(),
                                ),
                                Err(e) => search::Handled {
                                    response: search::Response::Refused(format!(
                                        "malformed request: {e}"
                                    )),
                                    refused: vec![search::Refused::Malformed],
                                },
                            }
                        })
                        .await;
                    let Ok(handled) = handled else { continue };
                    for refused in &handled.refused {
                        net.admission().refuse(refused.budget());
                    }
                    let _ = reply.send(serde_json::to_vec(&handled.response).expect("serialises"));
                }
            }
        });
        let (tx, mut replicate_requests) =
            tokio::sync::mpsc::channel::<agora_net::InboundRequest>(16);
        net.serve(REPLICATE_PROTOCOL, tx)
            .map_err(|e| FilesError::BadTarget(e.to_string()))?;
        tokio::spawn({
            let files = Arc::downgrade(&files);
            async move {
                while let Some(req) = replicate_requests.recv().await {
                    let Some(files) = files.upgrade() else { return };
                    let agora_net::InboundRequest { peer, data, reply } = req;
                    // The store's database and the quota check read the disk: off the async
                    // workers.
                    let response =
                        tokio::task::spawn_blocking(move || files.on_replicate(peer, &data)).await;
                    if let Ok(response) = response {
                        let _ = reply.send(serde_json::to_vec(&response).expect("serialises"));
                    }
                }
            }
        });
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

    /// Replicas agreed to before a restart and not yet held are fetched on, from what they
    /// had verified.
    fn resume_pending_replicas(self: &Arc<Self>) {
        let pending = match self.store.pending_replicas() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("cannot read the pending replicas: {e}");
                return;
            }
        };
        let hashes: Vec<Hash> = pending.iter().map(|(h, _)| *h).collect();
        self.store.sweep_replica_partials(&hashes);
        for (hash, replica) in pending {
            if matches!(self.store.get(&hash), Ok(Some(m)) if !m.stale) {
                let _ = self.store.replica_settled(&hash);
                continue;
            }
            let fetch = ReplicaFetch::new(None);
            if self.start_replicating(hash, &fetch) {
                tracing::info!(hash = %hash.to_hex(), "resuming a replica");
                self.fetch_replica(hash, replica.name, Vec::new(), fetch.progress);
            }
        }
    }

    async fn announce_all(&self) {
        let Ok(list) = self.store.list() else { return };
        self.index.lock().unwrap().expire(std::time::Instant::now());
        for (hash, meta) in list {
            if !meta.stale {
                let _ = self.net.provide(hash.as_bytes().to_vec()).await;
                self.publish_name(&meta.name, meta.size, &hash).await;
            }
        }
    }

    /// A peer asks us to hold a replica. Its claim (a hash and a size) costs it nothing, so it
    /// reserves and evicts nothing: the request passes the peer's budgets and is accepted if
    /// the blob *could* fit (counting what eviction could free), and room is made only as
    /// verified data arrives ([`Self::fetch_replica`]).
    fn on_replicate(self: &Arc<Self>, from: PeerId, data: &[u8]) -> ReplicateResponse {
        let refuse = |reason: String| ReplicateResponse {
            accepted: false,
            reason,
        };
        let Ok(req) = serde_json::from_slice::<ReplicateRequest>(data) else {
            return refuse("malformed request".into());
        };
        let Ok(hash) = Hash::from_hex(&req.hash) else {
            return refuse("malformed hash".into());
        };
        if req.size > self.config.max_replica_size {
            return refuse(format!(
                "larger than {} bytes",
                self.config.max_replica_size
            ));
        }
        if matches!(self.store.get(&hash), Ok(Some(m)) if !m.stale) {
            return ReplicateResponse {
                accepted: true,
                reason: "already held".into(),
            };
        }
        // Fetching it already, as a replica or for a user's `get` (whose result is kept and
        // announced like a replica): once is enough.
        {
            let fetching = self.fetching.lock().unwrap();
            if self.partials.lock().unwrap().contains_key(&hash)
                || fetching.replicas.contains_key(&hash)
                || fetching.gets.contains_key(&hash)
            {
                return ReplicateResponse {
                    accepted: true,
                    reason: "already fetching".into(),
                };
            }
        }
        let refused = |name: &'static str, why: String| {
            self.net.admission().refuse(name);
            refuse(format!("{name}: {why}"))
        };
        if self.replicate_rate.check(&from, 1.0).is_err() {
            return refused(
                budget::REFUSED_REPLICATE_RATE,
                "too many replica requests; retry later".into(),
            );
        }
        let needed = req.size + bao_tree::BaoTree::new(req.size, crate::BLOCK_SIZE).outboard_size();
        let (in_flight, of_peer, verified) = {
            let fetching = self.fetching.lock().unwrap();
            let of_peer = fetching
                .replicas
                .values()
                .filter(|r| r.requester == Some(from))
                .count();
            let verified: u64 = fetching.replicas.values().map(ReplicaFetch::verified).sum();
            (fetching.replicas.len(), of_peer, verified)
        };
        if of_peer >= budget::MAX_REPLICAS_IN_FLIGHT_PER_PEER {
            return refused(
                budget::REFUSED_REPLICATE_PEER,
                format!(
                    "{} of your replicas are being fetched already",
                    budget::MAX_REPLICAS_IN_FLIGHT_PER_PEER
                ),
            );
        }
        if in_flight >= budget::MAX_REPLICAS_IN_FLIGHT {
            return refused(
                budget::REFUSED_REPLICATE_TOTAL,
                "too many replicas are being fetched; retry later".into(),
            );
        }
        match self
            .store
            .could_fit(verified + needed, self.config.storage_quota)
        {
            Ok(true) => {}
            Ok(false) => {
                return refused(
                    budget::REFUSED_REPLICATE_QUOTA,
                    format!(
                        "no room for {needed} bytes under the quota of {}",
                        self.config.storage_quota
                    ),
                );
            }
            Err(e) => return refuse(e.to_string()),
        }
        let fetch = ReplicaFetch::new(Some(from));
        if !self.start_replicating(hash, &fetch) {
            return ReplicateResponse {
                accepted: true,
                reason: "already fetching".into(),
            };
        }
        let pending = crate::store::PendingReplica {
            name: req.name,
            size: req.size,
        };
        if let Err(e) = self.store.replica_pending(&hash, &pending) {
            tracing::warn!("cannot record the replica of {}: {e}", hash.to_hex());
        }
        self.fetch_replica(hash, pending.name, vec![from], fetch.progress);
        ReplicateResponse {
            accepted: true,
            reason: "fetching".into(),
        }
    }

    /// Records that a replica of `hash` is being fetched; false if one already is, or a `get`
    /// is fetching it.
    fn start_replicating(&self, hash: Hash, fetch: &ReplicaFetch) -> bool {
        let mut fetching = self.fetching.lock().unwrap();
        if fetching.gets.contains_key(&hash) {
            return false;
        }
        match fetching.replicas.entry(hash) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(fetch.clone());
                true
            }
        }
    }

    /// Makes room under the quota for the verified part of every replica being fetched,
    /// evicting old cached replicas if needed. Errors when even eviction cannot make it fit.
    fn make_room_for_verified(&self) -> Result<(), String> {
        let verified: u64 = {
            let fetching = self.fetching.lock().unwrap();
            fetching.replicas.values().map(ReplicaFetch::verified).sum()
        };
        match self.store.make_room(verified, self.config.storage_quota) {
            Ok(evicted) => {
                for h in evicted {
                    tracing::info!(hash = %h.to_hex(), "evicted a cached replica to stay under the storage quota");
                }
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Claims the fetch of `hash` for a `get`, unless a replica of it is being fetched (which
    /// the get then follows instead).
    fn claim_get(self: &Arc<Self>, hash: Hash) -> Option<GetClaim> {
        let mut fetching = self.fetching.lock().unwrap();
        if fetching.replicas.contains_key(&hash) {
            return None;
        }
        *fetching.gets.entry(hash).or_default() += 1;
        Some(GetClaim {
            files: self.clone(),
            hash,
        })
    }

    /// Fetches a replica of `hash` into the store in the background (from `known` and the
    /// providers the DHT names), keeps it and announces it. The caller has recorded it with
    /// [`Self::start_replicating`]; the record goes when the fetch ends.
    fn fetch_replica(
        self: &Arc<Self>,
        hash: Hash,
        name: String,
        known: Vec<PeerId>,
        progress: Arc<Progress>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut providers = known.clone();
            providers.extend(
                this.providers(hash, None)
                    .await
                    .into_iter()
                    .filter(|p| !known.contains(p)),
            );
            let dest = this.store.data_path(&hash);
            let outboard = this.store.partial_outboard_path(&hash, &dest);
            let to = download::Destination {
                dest: &dest,
                outboard: &outboard,
                preallocate: false,
            };
            let fetch = download::fetch(&this.net, hash, providers, to, progress, &this.partials);
            tokio::pin!(fetch);
            // Room under the quota is made as verified data arrives, never for a claim.
            let mut room_check = tokio::time::interval(ROOM_CHECK);
            let result = loop {
                tokio::select! {
                    result = &mut fetch => break result.map_err(|e| e.to_string()),
                    _ = room_check.tick() => {
                        let this = this.clone();
                        let room = tokio::task::spawn_blocking(move || this.make_room_for_verified())
                            .await
                            .unwrap_or_else(|e| Err(e.to_string()));
                        if let Err(e) = room {
                            break Err(format!("no room under the storage quota: {e}"));
                        }
                    }
                }
            };
            if result.is_ok()
                && let Err(e) = this.make_room_for_verified()
            {
                tracing::warn!("replica of {} is over the quota: {e}", hash.to_hex());
            }
            match result {
                Ok(size) => {
                    if let Err(e) = this.store.adopt_download(&hash, size, &dest, &name, false) {
                        tracing::warn!("cannot keep replica {}: {e}", hash.to_hex());
                    } else {
                        tracing::info!(hash = %hash.to_hex(), "holding a replica");
                        let _ = this.net.provide(hash.as_bytes().to_vec()).await;
                    }
                }
                Err(e) => {
                    // Given up: free the space it reserved (whoever asks again starts over).
                    tracing::warn!("replica of {} failed: {e}", hash.to_hex());
                    let _ = std::fs::remove_file(download::partial_path(&dest));
                    let _ = std::fs::remove_file(this.store.partial_outboard_path(&hash, &dest));
                }
            }
            if let Err(e) = this.store.replica_settled(&hash) {
                tracing::warn!("cannot settle the replica of {}: {e}", hash.to_hex());
            }
            this.fetching.lock().unwrap().replicas.remove(&hash);
        });
    }

    /// Asks peers close to `hash` (other than `skip`) to hold replicas until `wanted` accepted.
    async fn replicate_to(
        &self,
        hash: &Hash,
        size: u64,
        name: &str,
        wanted: usize,
        skip: &[PeerId],
    ) -> usize {
        if wanted == 0 {
            return 0;
        }
        let me = self.net.local_peer_id();
        let peers = self
            .net
            .closest_peers(hash.as_bytes().to_vec())
            .await
            .unwrap_or_default();
        let request = serde_json::to_vec(&ReplicateRequest {
            hash: hash.to_hex().to_string(),
            size,
            name: name.to_owned(),
        })
        .expect("serialises");
        let mut accepted = 0;
        for peer in peers.into_iter().filter(|p| *p != me && !skip.contains(p)) {
            let answer = self
                .net
                .request(
                    peer,
                    REPLICATE_PROTOCOL,
                    request.clone(),
                    Duration::from_secs(10),
                )
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<ReplicateResponse>(&b).ok());
            match answer {
                Some(r) if r.accepted => accepted += 1,
                Some(r) => tracing::debug!(%peer, "replica refused: {}", r.reason),
                None => tracing::debug!(%peer, "no answer to a replica request"),
            }
            if accepted >= wanted {
                break;
            }
        }
        accepted
    }

    /// Repairs replication: every shared blob and every replica held here should have
    /// `replicas` providers besides this node; ask more peers when it has fewer.
    async fn check_replicas(&self) {
        let Ok(list) = self.store.list() else { return };
        let me = self.net.local_peer_id();
        for (hash, meta) in list {
            let replicated =
                meta.kind == Kind::Own || (meta.kind == Kind::Cached && meta.source.is_none());
            if meta.stale || !replicated || meta.size > self.config.max_replica_size {
                continue;
            }
            let mut providers = self
                .net
                .find_providers(hash.as_bytes().to_vec(), self.config.replicas + 4)
                .await
                .unwrap_or_default();
            providers.retain(|p| *p != me);
            if providers.len() < self.config.replicas {
                let missing = self.config.replicas - providers.len();
                let got = self
                    .replicate_to(&hash, meta.size, &meta.name, missing, &providers)
                    .await;
                tracing::info!(hash = %hash.to_hex(), providers = providers.len(), asked = missing, accepted = got, "repairing replication");
            }
        }
    }

    /// Stores index entries for `name` at the peers closest to each of its keywords, and in
    /// this node's own index.
    pub async fn publish_name(&self, name: &str, size: u64, hash: &Hash) {
        let me = self.net.local_peer_id();
        let entry = search::Entry {
            name: name.to_owned(),
            size,
            hash: hash.to_hex().to_string(),
            provider: me.to_string(),
        };
        for keyword in search::keywords(name) {
            let request = search::Request::Publish {
                keyword: keyword.clone(),
                entries: vec![entry.clone()],
            };
            let _ = self
                .index
                .lock()
                .unwrap()
                .handle(me, request, std::time::Instant::now());
            let peers = self
                .net
                .closest_peers(search::keyword_key(&keyword))
                .await
                .unwrap_or_default();
            let bytes = serde_json::to_vec(&search::Request::Publish {
                keyword,
                entries: vec![entry.clone()],
            })
            .expect("serialises");
            let sends = peers.into_iter().take(search::REPLICAS).map(|peer| {
                self.net.request(
                    peer,
                    search::PROTOCOL,
                    bytes.clone(),
                    Duration::from_secs(10),
                )
            });
            for result in futures::future::join_all(sends).await {
                if let Err(e) = result {
                    tracing::debug!("publishing a keyword failed: {e}");
                }
            }
        }
    }

    /// Searches the network for names containing every word of `query`.
    pub async fn search(&self, query: &str) -> Result<Vec<search::Hit>, FilesError> {
        let all = search::keywords(query);
        let Some(keyword) = all.iter().max_by_key(|k| k.chars().count()).cloned() else {
            return Err(FilesError::BadTarget(
                "give at least one word of two or more letters or digits".into(),
            ));
        };
        let me = self.net.local_peer_id();
        let mut entries =
            self.index
                .lock()
                .unwrap()
                .query(&keyword, &all, std::time::Instant::now());
        let peers = self
            .net
            .closest_peers(search::keyword_key(&keyword))
            .await
            .unwrap_or_default();
        let bytes = serde_json::to_vec(&search::Request::Query {
            keyword,
            all: all.clone(),
        })
        .expect("serialises");
        let asks = peers
            .into_iter()
            .filter(|p| *p != me)
            .take(search::REPLICAS * 2)
            .map(|peer| {
                self.net.request(
                    peer,
                    search::PROTOCOL,
                    bytes.clone(),
                    Duration::from_secs(10),
                )
            });
        for answer in futures::future::join_all(asks).await {
            if let Ok(Ok(search::Response::Results(found))) =
                answer.map(|b| serde_json::from_slice::<search::Response>(&b))
            {
                // An answer is untrusted: keep only entries that really match.
                entries.extend(
                    found
                        .into_iter()
                        .take(search::MAX_ENTRIES_PER_MESSAGE)
                        .filter(|e| {
                            let have = search::keywords(&e.name);
                            Hash::from_hex(&e.hash).is_ok() && all.iter().all(|k| have.contains(k))
                        }),
                );
            }
        }
        Ok(search::merge(entries))
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

    /// Node addresses for tickets.
    async fn ticket(&self, hash: Hash) -> String {
        let addrs = self
            .net
            .local_info()
            .await
            .map(|i| {
                i.addrs
                    .iter()
                    .chain(i.external_addrs.iter())
                    .filter_map(|a| a.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        Ticket {
            hash,
            peer: self.net.local_peer_id(),
            addrs,
        }
        .encode()
    }

    /// Starts sharing a file or directory. `path` must be absolute.
    pub fn share(self: &Arc<Self>, path: PathBuf, pin: bool, copy: bool) -> Arc<Job> {
        let (job, fresh) = self.new_job("share", format!("share:{}", path.display()));
        if !fresh {
            return job;
        }
        let this = self.clone();
        let job2 = job.clone();
        tokio::spawn(async move {
            let kind = if pin { Kind::Pinned } else { Kind::Own };
            let store = this.store.clone();
            let progress = job2.progress.clone();
            let result = tokio::task::spawn_blocking(move || {
                import_path(&store, &path, copy, kind, &progress)
            })
            .await
            .unwrap_or_else(|e| Err(FilesError::BadTarget(e.to_string())));
            match result {
                Ok((hash, size, name, hashes)) => {
                    for h in hashes.iter().chain([&hash]) {
                        if let Err(e) = this.net.provide(h.as_bytes().to_vec()).await {
                            tracing::warn!("cannot announce {}: {e}", h.to_hex());
                        }
                    }
                    this.publish_name(&name, size, &hash).await;
                    for h in hashes.iter().chain([&hash]) {
                        let meta = this.store.get(h).ok().flatten();
                        if let Some(meta) = meta.filter(|m| m.size <= this.config.max_replica_size)
                        {
                            this.replicate_to(h, meta.size, &meta.name, this.config.replicas, &[])
                                .await;
                        }
                    }
                    let ticket = this.ticket(hash).await;
                    job2.finish(JobState::Done {
                        result: serde_json::json!({
                            "hash": hash.to_hex().to_string(),
                            "ticket": ticket,
                            "size": size,
                            "name": name,
                        }),
                    });
                }
                Err(e) => job2.finish(JobState::Failed {
                    error: e.to_string(),
                    code: "share_failed",
                }),
            }
        });
        job
    }

    /// Starts a download of `target` (a hex hash or a ticket) to `out` (absolute).
    pub fn get(self: &Arc<Self>, target: &str, out: PathBuf) -> Result<Arc<Job>, FilesError> {
        let target = target.trim();
        let (hash, ticket) = if target.starts_with("agora1") {
            let t = Ticket::decode(target).map_err(FilesError::BadTarget)?;
            (t.hash, Some(t))
        } else {
            let hash = Hash::from_hex(target).map_err(|_| {
                FilesError::BadTarget(format!(
                    "{target:?} is neither a BLAKE3 hash (64 hex digits) nor a ticket (agora1…)"
                ))
            })?;
            (hash, None)
        };
        let (job, fresh) = self.new_job("get", format!("get:{}:{}", hash.to_hex(), out.display()));
        if !fresh {
            return Ok(job);
        }
        let this = self.clone();
        let job2 = job.clone();
        tokio::spawn(async move {
            let result = this.download(hash, ticket, &out, &job2.progress).await;
            job2.finish(match result {
                Ok(result) => JobState::Done { result },
                Err(e) => {
                    let code = match &e {
                        FetchError::NotFound(_) => "not_found",
                        FetchError::AllFailed { .. } => "providers_failed",
                        FetchError::Io { .. } => "io_error",
                    };
                    JobState::Failed {
                        error: e.to_string(),
                        code,
                    }
                }
            });
        });
        Ok(job)
    }

    async fn providers(&self, hash: Hash, ticket: Option<&Ticket>) -> Vec<PeerId> {
        let mut providers = Vec::new();
        if let Some(t) = ticket {
            for addr in &t.addrs {
                let addr = addr.clone().with_p2p(t.peer).unwrap_or_else(|a| a);
                if self.net.dial(addr).await.is_ok() {
                    break;
                }
            }
            providers.push(t.peer);
        }
        // A node that has just started may not be connected yet: wait for the network (up to
        // 10 s) and look again a few times before concluding nobody has the blob.
        for attempt in 0..PROVIDER_LOOKUPS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            self.net.wait_for_peers(Duration::from_secs(10)).await;
            match self
                .net
                .find_providers(hash.as_bytes().to_vec(), MAX_PROVIDERS)
                .await
            {
                Ok(found) => {
                    for p in found {
                        if !providers.contains(&p) {
                            providers.push(p);
                        }
                    }
                }
                Err(e) => tracing::warn!("provider lookup failed: {e}"),
            }
            if providers.iter().any(|p| *p != self.net.local_peer_id()) {
                break;
            }
        }
        let me = self.net.local_peer_id();
        providers.retain(|p| *p != me);
        providers
    }

    /// Resumes the fetch of a replica of `hash` that a restart interrupted (its partial file is
    /// still in the store), unless one is running.
    fn resume_replica(self: &Arc<Self>, hash: Hash, name: &str, ticket: Option<&Ticket>) {
        let dest = self.store.data_path(&hash);
        if !download::partial_path(&dest).exists() {
            return;
        }
        let fetch = ReplicaFetch::new(None);
        if self.start_replicating(hash, &fetch) {
            let known = ticket.map(|t| vec![t.peer]).unwrap_or_default();
            self.fetch_replica(hash, name.to_owned(), known, fetch.progress);
        }
    }

    /// Waits while a replica of `hash` is being fetched, showing its progress as this job's.
    async fn follow_replica(&self, hash: &Hash, progress: &Progress) {
        loop {
            let replica = self
                .fetching
                .lock()
                .unwrap()
                .replicas
                .get(hash)
                .map(|r| r.progress.clone());
            let Some(replica) = replica else { return };
            for (to, from) in [
                (&progress.total, &replica.total),
                (&progress.done, &replica.done),
            ] {
                to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            let peers = replica.peers.load(Ordering::Relaxed);
            progress.peers.store(peers, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn download(
        self: &Arc<Self>,
        hash: Hash,
        ticket: Option<Ticket>,
        out: &Path,
        progress: &Arc<Progress>,
    ) -> Result<serde_json::Value, FetchError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |e: std::io::Error| FetchError::Io { path, source: e }
        };
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Held means usable: a blob served from a file the user has since moved, deleted or
        // changed (a download's earlier destination, say) is fetched again.
        let usable = || {
            self.store
                .get(&hash)
                .ok()
                .flatten()
                .filter(|m| !m.stale && Store::source_fresh(m))
        };
        // A replica of this blob on its way here (the publisher pushes new shares to the
        // nodes nearest their hash) is followed rather than fetched a second time beside it;
        // one that a restart interrupted is resumed from what it verified, then followed.
        if usable().is_none() {
            self.resume_replica(hash, &name, ticket.as_ref());
        }
        // From the claim on, a request to hold a replica of this blob is answered "already
        // fetching" instead of starting a second transfer beside this one.
        let _claim = loop {
            self.follow_replica(&hash, progress).await;
            if usable().is_some() {
                break None;
            }
            if let Some(claim) = self.claim_get(hash) {
                break Some(claim);
            }
        };
        let held = usable();
        let providers = if held.is_some() {
            Vec::new()
        } else {
            self.providers(hash, ticket.as_ref()).await
        };
        let root_meta = match held {
            Some(meta) => {
                progress.total.store(meta.size, Ordering::Relaxed);
                export(&self.store, &hash, &meta, out).map_err(io_err(out))?;
                progress.done.store(meta.size, Ordering::Relaxed);
                meta
            }
            None => {
                if let Some(parent) = out.parent() {
                    fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                // Announce at once: other downloaders can fetch what is verified here.
                let _ = self.net.provide(hash.as_bytes().to_vec()).await;
                let size = self
                    .fetch_looking_further(hash, providers.clone(), out, progress)
                    .await;
                let size = match size {
                    Ok(size) => size,
                    Err(e) => {
                        // Stop advertising what we failed to get (unless held otherwise).
                        if !matches!(self.store.get(&hash), Ok(Some(_))) {
                            let _ = self.net.stop_providing(hash.as_bytes().to_vec()).await;
                        }
                        return Err(e);
                    }
                };
                self.store
                    .adopt_download(&hash, size, out, &name, false)
                    .map_err(|e| FetchError::Io {
                        path: out.to_owned(),
                        source: std::io::Error::other(e.to_string()),
                    })?;
                let _ = self.net.provide(hash.as_bytes().to_vec()).await;
                let meta = self.store.get(&hash).ok().flatten().expect("just adopted");
                self.publish_name(&meta.name, meta.size, &hash).await;
                meta
            }
        };
        // A collection: the listing landed at `out`; keep it in the store and fetch the tree.
        let listing = (root_meta.size <= MAX_COLLECTION_LEN)
            .then(|| download::read_file_limited(out, MAX_COLLECTION_LEN).ok())
            .flatten()
            .filter(|bytes| bytes.starts_with(b"{\"agora_collection\""));
        let Some(listing) = listing else {
            return Ok(serde_json::json!({
                "hash": hash.to_hex().to_string(),
                "size": root_meta.size,
                "path": out,
                "collection": false,
            }));
        };
        let collection = match Collection::parse(&listing) {
            Ok(c) => c,
            Err(e) => {
                // Nothing of a hostile listing is left behind, and nothing outside `out` was
                // touched: paths are checked before any is used.
                let _ = fs::remove_file(out);
                let _ = self.store.remove(&hash);
                return Err(FetchError::Io {
                    path: out.to_owned(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                });
            }
        };
        self.store
            .import_bytes(&listing, &name, Kind::Cached, true)
            .map_err(|e| FetchError::Io {
                path: out.to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?;
        fs::remove_file(out).map_err(io_err(out))?;
        fs::create_dir_all(out).map_err(io_err(out))?;
        let total: u64 = collection.entries.iter().map(|e| e.size).sum();
        progress.total.store(total, Ordering::Relaxed);
        progress.done.store(0, Ordering::Relaxed);
        // Each entry's destination, checked (by parse) to stay inside `out`.
        let mut dests = Vec::with_capacity(collection.entries.len());
        for entry in &collection.entries {
            let rel = safe_relative_path(&entry.path).expect("checked by parse");
            let dest = out.join(rel);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            dests.push(dest);
        }
        // Several files at a time (a tree of many small files would otherwise pay one provider
        // round trip and one announcement after another); a content that appears at several
        // paths is fetched once, then copied.
        let mut first_of = HashMap::new();
        for (i, entry) in collection.entries.iter().enumerate() {
            first_of.entry(&entry.hash).or_insert(i);
        }
        let unique: Vec<usize> = (0..collection.entries.len())
            .filter(|&i| first_of[&collection.entries[i].hash] == i)
            .collect();
        let file_progress: Vec<Arc<Progress>> = collection
            .entries
            .iter()
            .map(|_| Arc::new(Progress::default()))
            .collect();
        let watcher = {
            let (files, p) = (file_progress.clone(), progress.clone());
            tokio::spawn(async move {
                loop {
                    let done = files.iter().map(|f| f.done.load(Ordering::Relaxed)).sum();
                    let peers = files.iter().map(|f| f.peers.load(Ordering::Relaxed)).max();
                    p.done.store(done, Ordering::Relaxed);
                    p.peers.store(peers.unwrap_or(0), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        // Futures are made as slots free up: a listing may name 100,000 files, and each
        // fetch's state is kilobytes.
        let fetch_one = |i: usize| {
            let (entry, dest, fp) = (&collection.entries[i], &dests[i], &file_progress[i]);
            let providers = &providers;
            async move {
                let entry_hash = Hash::from_hex(&entry.hash).expect("checked by parse");
                let result = self
                    .fetch_entry(entry_hash, entry, providers, dest, fp)
                    .await;
                progress
                    .banned
                    .lock()
                    .unwrap()
                    .extend(fp.banned.lock().unwrap().drain(..));
                fp.done.store(entry.size, Ordering::Relaxed);
                result
            }
        };
        let mut waiting = unique.iter().copied();
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let fetched = loop {
            while in_flight.len() < ENTRIES_AT_ONCE {
                let Some(i) = waiting.next() else { break };
                in_flight.push(fetch_one(i));
            }
            match futures::StreamExt::next(&mut in_flight).await {
                Some(Ok(())) => {}
                // The first failure ends the get (files in flight keep their verified part
                // for a resume, as when the get is killed).
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            }
        };
        drop(in_flight);
        watcher.abort();
        fetched?;
        for (i, entry) in collection.entries.iter().enumerate() {
            let first = first_of[&entry.hash];
            if first != i {
                fs::copy(&dests[first], &dests[i]).map_err(io_err(&dests[i]))?;
            }
        }
        progress.done.store(total, Ordering::Relaxed);
        let _ = self.net.provide(hash.as_bytes().to_vec()).await;
        Ok(serde_json::json!({
            "hash": hash.to_hex().to_string(),
            "size": total,
            "path": out,
            "collection": true,
            "files": collection.entries.len(),
        }))
    }

    /// Downloads `hash` to `dest` from `providers`. Stale provider records are normal in a DHT
    /// (a holder whose file is gone, a node that left): if every provider failed, looks further,
    /// past them, up to [`RETRY_LOOKUPS`] times; each round resumes from what is verified.
    async fn fetch_looking_further(
        &self,
        hash: Hash,
        providers: Vec<PeerId>,
        dest: &Path,
        progress: &Arc<Progress>,
    ) -> Result<u64, FetchError> {
        let me = self.net.local_peer_id();
        let mut current = providers;
        let mut tried: Vec<PeerId> = Vec::new();
        let mut lookups = 0;
        loop {
            let outboard = self.store.partial_outboard_path(&hash, dest);
            let to = download::Destination {
                dest,
                outboard: &outboard,
                preallocate: true,
            };
            let result = download::fetch(
                &self.net,
                hash,
                current.clone(),
                to,
                progress.clone(),
                &self.partials,
            )
            .await;
            if !matches!(result, Err(FetchError::AllFailed { .. })) || lookups >= RETRY_LOOKUPS {
                return result;
            }
            lookups += 1;
            tried.append(&mut current);
            current = self
                .net
                .find_providers(hash.as_bytes().to_vec(), MAX_PROVIDERS * 4)
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|p| *p != me && !tried.contains(p))
                .collect();
            if current.is_empty() {
                return result;
            }
            tracing::info!("every provider found failed; trying {} more", current.len());
        }
    }

    async fn fetch_entry(
        &self,
        hash: Hash,
        entry: &Entry,
        root_providers: &[PeerId],
        dest: &Path,
        progress: &Arc<Progress>,
    ) -> Result<(), FetchError> {
        if let Ok(Some(meta)) = self.store.get(&hash)
            && !meta.stale
        {
            return export(&self.store, &hash, &meta, dest).map_err(|e| FetchError::Io {
                path: dest.to_owned(),
                source: e,
            });
        }
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The collection's providers normally hold every file in it (and the download finds
        // more as it goes); the file's own are looked up when there are none (the collection
        // was held here) or when they all fail.
        let providers = if root_providers.is_empty() {
            self.providers(hash, None).await
        } else {
            root_providers.to_vec()
        };
        let size = self
            .fetch_looking_further(hash, providers, dest, progress)
            .await?;
        if size != entry.size {
            tracing::warn!(path = %entry.path, "listed size {} differs from the verified size {size}", entry.size);
        }
        self.store
            .adopt_download(&hash, size, dest, &name, false)
            .map_err(|e| FetchError::Io {
                path: dest.to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let _ = self.net.provide(hash.as_bytes().to_vec()).await;
        Ok(())
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

/// Copies a held blob to `out` (temporary file, fsync, rename).
fn export(store: &Store, hash: &Hash, meta: &BlobMeta, out: &Path) -> std::io::Result<()> {
    let src = meta.source.clone().unwrap_or_else(|| store.data_path(hash));
    if src == out {
        return Ok(());
    }
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent)?;
    }
    let tmp = download::partial_path(out);
    let result = fs::copy(&src, &tmp)
        .and_then(|_| fs::File::open(&tmp)?.sync_all())
        .and_then(|()| fs::rename(&tmp, out));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

type Imported = (Hash, u64, String, Vec<Hash>);

/// Imports a file, or a directory as a collection. Returns the root hash, total size, name and
/// the hashes of the files inside (for a directory).
fn import_path(
    store: &Store,
    path: &Path,
    copy: bool,
    kind: Kind,
    progress: &Progress,
) -> Result<Imported, FilesError> {
    let meta = fs::metadata(path).map_err(|e| StoreError::Io {
        path: path.to_owned(),
        source: e,
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    if meta.is_file() {
        progress.total.store(meta.len(), Ordering::Relaxed);
        let (hash, size) = store.import_file(path, copy, kind, &progress.done)?;
        return Ok((hash, size, name, Vec::new()));
    }
    let mut files = Vec::new();
    walk(path, path, &mut files)?;
    let total: u64 = files.iter().map(|(_, _, s)| s).sum();
    progress.total.store(total, Ordering::Relaxed);
    let mut entries = Vec::new();
    let mut hashes = Vec::new();
    for (abs, rel, _) in files {
        let (hash, size) = store.import_file(&abs, copy, kind, &progress.done)?;
        hashes.push(hash);
        entries.push(Entry {
            path: rel,
            hash: hash.to_hex().to_string(),
            size,
        });
    }
    let collection = Collection::new(entries);
    let root = store.import_bytes(&collection.to_bytes(), &name, kind, true)?;
    Ok((root, total, name, hashes))
}

/// Regular files under `dir` with their `/`-separated relative paths. Symbolic links are
/// skipped: following them could publish files outside the shared tree.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String, u64)>) -> Result<(), FilesError> {
    let io = |e| StoreError::Io {
        path: dir.to_owned(),
        source: e,
    };
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let ft = entry.file_type().map_err(io)?;
        if ft.is_symlink() {
            tracing::warn!(path = %path.display(), "skipping symbolic link");
        } else if ft.is_dir() {
            walk(root, &path, out)?;
        } else if ft.is_file() {
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace(std::path::MAIN_SEPARATOR, "/");
            let size = entry.metadata().map_err(io)?.len();
            out.push((path, rel, size));
        }
    }
    Ok(())
}
