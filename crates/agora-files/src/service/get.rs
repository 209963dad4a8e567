//! Getting: finding providers, the multi-source download of a blob or a directory, and
//! exporting what the store holds.

use super::*;

/// DHT lookups for providers before a download reports "not found".
pub(super) const PROVIDER_LOOKUPS: usize = 3;

/// Most providers a download asks the DHT for.
pub(super) const MAX_PROVIDERS: usize = 16;

/// Further provider lookups when every provider found so far failed.
pub(super) const RETRY_LOOKUPS: usize = 2;

/// Files of a collection fetched at the same time.
pub(super) const ENTRIES_AT_ONCE: usize = 8;

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

impl Files {
    /// Starts a download of `target` (a hex hash or a ticket) to `out` (absolute).
    pub fn get(self: &Arc<Self>, target: &str, out: PathBuf) -> Result<Arc<Job>, FilesError> {
        self.get_limited(target, out, 0)
    }

    /// [`Files::get`] of a blob of at most `max_size` bytes (0: any): a bigger one fails
    /// before any byte is fetched or any disk reserved (its size is authenticated by its hash).
    pub fn get_limited(
        self: &Arc<Self>,
        target: &str,
        out: PathBuf,
        max_size: u64,
    ) -> Result<Arc<Job>, FilesError> {
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
        job.progress.max_size.store(max_size, Ordering::Relaxed);
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
                        FetchError::TooLarge { .. } => "too_large",
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

    pub(super) async fn providers(&self, hash: Hash, ticket: Option<&Ticket>) -> Vec<PeerId> {
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

    pub(super) async fn download(
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
        tracing::debug!(hash = %hash.to_hex(), out = %out.display(), "get started");
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
        let looking = std::time::Instant::now();
        let providers = if held.is_some() {
            Vec::new()
        } else {
            self.providers(hash, ticket.as_ref()).await
        };
        tracing::debug!(
            providers = providers.len(),
            ms = looking.elapsed().as_millis() as u64,
            "provider lookup done"
        );
        let root_meta = match held {
            Some(meta) => {
                progress.total.store(meta.size, Ordering::Relaxed);
                // A replica this get followed is handed over (renamed to `out`, one copy on
                // disk, no second write of the whole file); anything else is copied.
                if let Some(parent) = out.parent() {
                    fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                let handed = !out.exists()
                    && self
                        .store
                        .hand_over(&hash, out)
                        .map_err(|e| FetchError::Io {
                            path: out.to_owned(),
                            source: std::io::Error::other(e.to_string()),
                        })?;
                if !handed {
                    export(&self.store, &hash, &meta, out).map_err(io_err(out))?;
                }
                progress.done.store(meta.size, Ordering::Relaxed);
                self.store.get(&hash).ok().flatten().unwrap_or(meta)
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
                // The name goes to the keyword index in the background, as a share's does:
                // a DHT lookup per keyword took 2 s on 40–150 ms links, and the user's file
                // is in place already.
                let this = self.clone();
                let (name, size) = (meta.name.clone(), meta.size);
                tokio::spawn(async move { this.publish_name(&name, size, &hash).await });
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
    pub(super) async fn fetch_looking_further(
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

    pub(super) async fn fetch_entry(
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
}
