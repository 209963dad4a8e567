//! Sharing: hashing a file or directory into the store (a collection for a directory) and
//! the ticket that names it.

use super::*;

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

impl Files {
    /// This node's addresses as tickets carry them (listen and external).
    pub async fn ticket_addrs(&self) -> Vec<agora_net::Multiaddr> {
        self.net
            .local_info()
            .await
            .map(|i| {
                i.addrs
                    .iter()
                    .chain(i.external_addrs.iter())
                    .filter_map(|a| a.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A ticket for `hash` on this node.
    pub(super) async fn ticket(&self, hash: Hash) -> String {
        let addrs = self.ticket_addrs().await;
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
}
