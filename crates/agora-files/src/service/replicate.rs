//! Both sides of replication: answering `/agora/replicate/1.0.0` (budgets checked, nothing
//! reserved or evicted for a claim; room made as verified data arrives), fetching replicas,
//! asking peers to hold ours, and the periodic repair.

use super::*;

/// `/agora/replicate/1.0.0`: "please hold a replica of this blob" ([`ReplicateRequest`],
/// answered by a [`ReplicateResponse`], postcard); the holder then fetches it like any download.
pub const REPLICATE_PROTOCOL: libp2p::StreamProtocol =
    libp2p::StreamProtocol::new("/agora/replicate/1.0.0");

/// A request to hold a replica: the blob's hash (hex), its claimed size and its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ReplicateRequest {
    pub hash: String,
    pub size: u64,
    pub name: String,
}

/// The answer: accepted or not, and why (a refusal names the budget that refused it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ReplicateResponse {
    pub accepted: bool,
    pub reason: String,
}

/// How often a replica being fetched makes room under the quota for what it has verified (if
/// it verified more since the last time: each check reads the store's table of blobs).
pub(super) const ROOM_CHECK: Duration = Duration::from_secs(1);
/// Replica requests waiting for the handler; more are refused.
const REPLICATE_QUEUE: usize = 16;

/// A replica being fetched.
#[derive(Clone)]
pub(super) struct ReplicaFetch {
    /// Its progress (a `get` of the same blob follows it).
    pub(super) progress: Arc<Progress>,
    /// The peer that asked for it (none when resumed after a restart).
    pub(super) requester: Option<PeerId>,
}

impl ReplicaFetch {
    pub(super) fn new(requester: Option<PeerId>) -> Self {
        ReplicaFetch {
            progress: Arc::new(Progress::default()),
            requester,
        }
    }

    /// Bytes under the quota (data and outboard) backed by verified data so far: nothing
    /// until the size is proven, then in proportion to the verified part.
    pub(super) fn verified(&self) -> u64 {
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
pub(super) struct Fetching {
    /// Replicas being fetched.
    pub(super) replicas: HashMap<Hash, ReplicaFetch>,
    /// Blobs that `get`s are fetching, and how many gets each: a request to hold a replica of
    /// one is answered "already fetching" (the get's result is kept and announced).
    pub(super) gets: HashMap<Hash, usize>,
}

/// A `get`'s claim on fetching a blob; released when dropped.
pub(super) struct GetClaim {
    pub(super) files: Arc<Files>,
    pub(super) hash: Hash,
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

/// Answers `/agora/replicate/1.0.0`, one request at a time on a blocking thread (the store's
/// database and the quota check read the disk).
pub(super) fn serve_replicate(files: &Arc<Files>) -> Result<(), FilesError> {
    let net = files.net.clone();
    let (tx, mut replicate_requests) =
        tokio::sync::mpsc::channel::<agora_net::InboundRequest>(REPLICATE_QUEUE);
    net.serve(REPLICATE_PROTOCOL, tx)
        .map_err(|e| FilesError::BadTarget(e.to_string()))?;
    tokio::spawn({
        let files = Arc::downgrade(files);
        async move {
            while let Some(req) = replicate_requests.recv().await {
                let Some(files) = files.upgrade() else { return };
                let agora_net::InboundRequest { peer, data, reply } = req;
                // The store's database and the quota check read the disk: off the async
                // workers.
                let response =
                    tokio::task::spawn_blocking(move || files.on_replicate(peer, &data)).await;
                if let Ok(response) = response {
                    let _ = reply.send(crate::wire::encode(&response));
                }
            }
        }
    });
    Ok(())
}

impl Files {
    /// Replicas agreed to before a restart and not yet held are fetched on, from what they
    /// had verified.
    pub(super) fn resume_pending_replicas(self: &Arc<Self>) {
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

    /// A peer asks us to hold a replica. Its claim (a hash and a size) costs it nothing, so it
    /// reserves and evicts nothing: the request passes the peer's budgets and is accepted if
    /// the blob *could* fit (counting what eviction could free), and room is made only as
    /// verified data arrives ([`Self::fetch_replica`]).
    pub(super) fn on_replicate(self: &Arc<Self>, from: PeerId, data: &[u8]) -> ReplicateResponse {
        let refuse = |reason: String| ReplicateResponse {
            accepted: false,
            reason,
        };
        let Ok(req) = crate::wire::decode::<ReplicateRequest>(data) else {
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
        if let Err(reason) = self.replicate_rate.admit(
            &from,
            1.0,
            self.net.admission(),
            budget::REFUSED_REPLICATE_RATE,
        ) {
            return refuse(reason);
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
    pub(super) fn start_replicating(&self, hash: Hash, fetch: &ReplicaFetch) -> bool {
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
    pub(super) fn make_room_for_verified(&self) -> Result<(), String> {
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
    pub(super) fn claim_get(self: &Arc<Self>, hash: Hash) -> Option<GetClaim> {
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
    pub(super) fn fetch_replica(
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
            tracing::debug!(hash = %hash.to_hex(), providers = providers.len(), "replica fetch started");
            let dest = this.store.data_path(&hash);
            let outboard = this.store.partial_outboard_path(&hash, &dest);
            let to = download::Destination {
                dest: &dest,
                outboard: &outboard,
                preallocate: false,
            };
            let watched = progress.clone();
            let fetch = download::fetch(&this.net, hash, providers, to, progress, &this.partials);
            tokio::pin!(fetch);
            // Room under the quota is made as verified data arrives, never for a claim.
            let mut room_check = tokio::time::interval(ROOM_CHECK);
            let mut checked = 0;
            let result = loop {
                tokio::select! {
                    result = &mut fetch => break result.map_err(|e| e.to_string()),
                    _ = room_check.tick() => {
                        let done = watched.done.load(Ordering::Relaxed);
                        if done == checked {
                            continue;
                        }
                        checked = done;
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
    pub(super) async fn replicate_to(
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
        let request = crate::wire::encode(&ReplicateRequest {
            hash: hash.to_hex().to_string(),
            size,
            name: name.to_owned(),
        });
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
                .and_then(|b| crate::wire::decode::<ReplicateResponse>(&b).ok());
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
    pub(super) async fn check_replicas(&self) {
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

    /// Resumes the fetch of a replica of `hash` that a restart interrupted (its partial file is
    /// still in the store), unless one is running.
    pub(super) fn resume_replica(
        self: &Arc<Self>,
        hash: Hash,
        name: &str,
        ticket: Option<&Ticket>,
    ) {
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
    pub(super) async fn follow_replica(&self, hash: &Hash, progress: &Progress) {
        let mut following = false;
        loop {
            let replica = self
                .fetching
                .lock()
                .unwrap()
                .replicas
                .get(hash)
                .map(|r| r.progress.clone());
            let Some(replica) = replica else { return };
            if !following {
                following = true;
                tracing::debug!(hash = %hash.to_hex(), "following the replica fetch of this blob");
            }
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
}
