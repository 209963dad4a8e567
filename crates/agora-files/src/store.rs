//! The blob store: outboards and metadata in the node's data directory.
//!
//! | what                         | where                                   |
//! |------------------------------|-----------------------------------------|
//! | metadata                     | redb table `blobs` (hex hash → JSON)    |
//! | outboard (pre-order, 16 KiB) | `<data-dir>/blobs/<hex>.obao`           |
//! | data, when held by the store | `<data-dir>/blobs/<hex>.data`           |
//! | data, when shared in place   | the user's file, checked before serving |
//! | partial outboard             | `<data-dir>/blobs/<hex>.<dest>.obao.part` |
//!
//! A shared file is not copied unless asked: the store remembers its path, length and
//! modification time, and refuses to serve it once either changed (the outboard would no
//! longer match). Downloads write their data next to the destination and, once complete,
//! are recorded the same way, so a file is never stored twice.

use std::{
    fs::{self, File},
    io::{self, Read},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use agora_store::Db;
use bao_tree::{
    BaoTree,
    io::{outboard::PreOrderOutboard, sync::CreateOutboard},
};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{BLOCK_SIZE, Hash, proto::eviction};

const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
/// Replicas accepted and not yet held: hex hash -> JSON [`PendingReplica`].
const PENDING_REPLICAS: TableDefinition<&str, &[u8]> = TableDefinition::new("pending_replicas");

/// A replica this node agreed to hold and is still fetching (resumed after a restart).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingReplica {
    pub name: String,
    pub size: u64,
}

/// Why a blob is held.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Shared by this node's user. Never evicted.
    Own,
    /// Pinned by this node's user. Never evicted.
    Pinned,
    /// Downloaded or replicated; may be evicted.
    Cached,
}

/// What the store knows about a blob.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlobMeta {
    pub size: u64,
    /// File name (for collections: the directory name).
    pub name: String,
    pub kind: Kind,
    /// The data lives in the user's file at this path (not copied into the store).
    pub source: Option<PathBuf>,
    /// Modification time of `source` (ns since the epoch) when it was hashed.
    pub source_mtime_ns: Option<u128>,
    /// A collection (directory listing) rather than a file.
    #[serde(default)]
    pub collection: bool,
    /// The source changed after it was hashed: not served any more.
    #[serde(default)]
    pub stale: bool,
    pub added: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} changed while it was being hashed; share it again once it is complete")]
    ChangedWhileHashing(PathBuf),
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("store database: {0}")]
    Db(String),
    #[error("blob {0} is not in the store")]
    Unknown(String),
    #[error(
        "the shared file {0} changed after it was shared; it is no longer served (share it again)"
    )]
    Stale(PathBuf),
    #[error("storage quota of {quota} bytes leaves no room for {needed} more")]
    QuotaFull { needed: u64, quota: u64 },
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mtime_ns(meta: &fs::Metadata) -> Option<u128> {
    meta.modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_nanos())
}

/// A complete blob opened for reading.
pub struct OpenBlob {
    pub data: File,
    pub outboard: PreOrderOutboard<File>,
    pub size: u64,
    /// The data was hashed by this node long enough ago ([`RECHECK_AFTER_SECS`]) that it
    /// is hashed again as it is sent, so bytes that rotted on disk are not passed on.
    pub recheck: bool,
}

/// How long after a node verified a blob's data (hashed it to share it, or verified it as it
/// arrived) it sends that data without hashing it again. Every receiver verifies what it gets
/// anyway; the re-hash only keeps a node from passing on its own rotted bytes, which is
/// vanishingly rare within an hour of hashing, while a fresh blob's first hour is when most of
/// its uploads happen (a swarm right after a share), each upload otherwise paying a second
/// BLAKE3 pass.
pub const RECHECK_AFTER_SECS: u64 = 3600;

#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    db: Arc<Db>,
}

impl Store {
    pub fn open(data_dir: &Path, db: Arc<Db>) -> Result<Self, StoreError> {
        let dir = data_dir.join("blobs");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let tx = db.redb().begin_write().map_err(db_err)?;
        tx.open_table(BLOBS).map_err(db_err)?;
        tx.open_table(PENDING_REPLICAS).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Self { dir, db })
    }

    pub fn data_path(&self, hash: &Hash) -> PathBuf {
        self.dir.join(format!("{}.data", hash.to_hex()))
    }

    pub fn outboard_path(&self, hash: &Hash) -> PathBuf {
        self.dir.join(format!("{}.obao", hash.to_hex()))
    }

    /// The outboard of a download of `hash` to `dest` while it is incomplete. One per
    /// destination, so two downloads of the same blob (a replica and a user's `get`) never
    /// share, or rename away, each other's partial state.
    pub fn partial_outboard_path(&self, hash: &Hash, dest: &Path) -> PathBuf {
        let tag = blake3::hash(dest.as_os_str().as_encoded_bytes());
        self.dir.join(format!(
            "{}.{}.obao.part",
            hash.to_hex(),
            &tag.to_hex()[..16]
        ))
    }

    pub fn get(&self, hash: &Hash) -> Result<Option<BlobMeta>, StoreError> {
        let tx = self.db.redb().begin_read().map_err(db_err)?;
        let table = tx.open_table(BLOBS).map_err(db_err)?;
        let Some(value) = table.get(hash.to_hex().as_str()).map_err(db_err)? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(db_err)
    }

    pub fn put(&self, hash: &Hash, meta: &BlobMeta) -> Result<(), StoreError> {
        self.insert_json(BLOBS, hash, meta)
    }

    /// Records a replica this node agreed to fetch, until [`Self::replica_settled`].
    pub fn replica_pending(&self, hash: &Hash, pending: &PendingReplica) -> Result<(), StoreError> {
        self.insert_json(PENDING_REPLICAS, hash, pending)
    }

    /// Forgets a pending replica (held now, or given up).
    pub fn replica_settled(&self, hash: &Hash) -> Result<(), StoreError> {
        let tx = self.db.redb().begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(PENDING_REPLICAS).map_err(db_err)?;
            table.remove(hash.to_hex().as_str()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// The replicas agreed to and not yet held.
    pub fn pending_replicas(&self) -> Result<Vec<(Hash, PendingReplica)>, StoreError> {
        self.read_all(PENDING_REPLICAS, "pending replica")
    }

    /// Deletes the partial files of replica fetches that are not in `pending` (left by a
    /// version that did not record them, or whose record was lost): nothing would ever resume
    /// or remove them, and they hold the space they reserved. Returns how many were deleted.
    /// Partial outboards of users' downloads (keyed by their destination) are not touched.
    pub fn sweep_replica_partials(&self, pending: &[Hash]) -> usize {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut swept = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(hex) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".data.agora-part"))
            else {
                continue;
            };
            let Ok(hash) = Hash::from_hex(hex) else {
                continue;
            };
            if pending.contains(&hash) {
                continue;
            }
            let outboard = self.partial_outboard_path(&hash, &self.data_path(&hash));
            if fs::remove_file(entry.path()).is_ok() {
                let _ = fs::remove_file(outboard);
                tracing::info!(hash = %hex, "deleted the partial file of a replica nobody is fetching");
                swept += 1;
            }
        }
        swept
    }

    pub fn list(&self) -> Result<Vec<(Hash, BlobMeta)>, StoreError> {
        self.read_all(BLOBS, "blob record")
    }

    /// Stores `value` as JSON under `hash` in `table`.
    fn insert_json<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        hash: &Hash,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).expect("store records serialise");
        let tx = self.db.redb().begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(table).map_err(db_err)?;
            table
                .insert(hash.to_hex().as_str(), bytes.as_slice())
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Every record of `table`; unreadable ones (`what`, for the log) are skipped.
    fn read_all<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        what: &str,
    ) -> Result<Vec<(Hash, T)>, StoreError> {
        let tx = self.db.redb().begin_read().map_err(db_err)?;
        let table = tx.open_table(table).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            match (Hash::from_hex(k.value()), serde_json::from_slice(v.value())) {
                (Ok(hash), Ok(value)) => out.push((hash, value)),
                _ => tracing::warn!(key = k.value(), "skipping unreadable {what}"),
            }
        }
        Ok(out)
    }

    /// Forgets a blob and deletes the files the store owns (never the user's own file).
    pub fn remove(&self, hash: &Hash) -> Result<Option<BlobMeta>, StoreError> {
        let tx = self.db.redb().begin_write().map_err(db_err)?;
        let old = {
            let mut table = tx.open_table(BLOBS).map_err(db_err)?;
            let old = table.remove(hash.to_hex().as_str()).map_err(db_err)?;
            old.and_then(|v| serde_json::from_slice::<BlobMeta>(v.value()).ok())
        };
        tx.commit().map_err(db_err)?;
        let _ = fs::remove_file(self.outboard_path(hash));
        let _ = fs::remove_file(self.data_path(hash));
        Ok(old)
    }

    /// Hashes a file (computing its outboard), optionally copies it into the store, and records
    /// it. Blocking: call from `spawn_blocking`. `progress` counts bytes hashed.
    pub fn import_file(
        &self,
        path: &Path,
        copy: bool,
        kind: Kind,
        progress: &AtomicU64,
    ) -> Result<(Hash, u64), StoreError> {
        let before = fs::metadata(path).map_err(io_err(path))?;
        if !before.is_file() {
            return Err(StoreError::NotAFile(path.to_owned()));
        }
        let size = before.len();
        let file = File::open(path).map_err(io_err(path))?;
        let outboard = parallel_outboard(&file, size, progress).map_err(io_err(path))?;
        let after = fs::metadata(path).map_err(io_err(path))?;
        if after.len() != size || mtime_ns(&after) != mtime_ns(&before) {
            return Err(StoreError::ChangedWhileHashing(path.to_owned()));
        }
        let hash = outboard.root;
        let ob_path = self.outboard_path(&hash);
        agora_store::write_atomic(&ob_path, &outboard.data, 0o644)
            .map_err(|e| StoreError::Db(e.to_string()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (source, source_mtime_ns) = if copy {
            let dest = self.data_path(&hash);
            let tmp = dest.with_extension("data.tmp");
            fs::copy(path, &tmp)
                .and_then(|_| File::open(&tmp)?.sync_all())
                .and_then(|()| fs::rename(&tmp, &dest))
                .map_err(|e| {
                    let _ = fs::remove_file(&tmp);
                    StoreError::Io {
                        path: dest.clone(),
                        source: e,
                    }
                })?;
            (None, None)
        } else {
            let abs = path.canonicalize().map_err(io_err(path))?;
            (Some(abs), mtime_ns(&after))
        };
        // Keep the stronger claim if the blob is already held.
        let kind = match self.get(&hash)? {
            Some(old)
                if old.kind == Kind::Own || old.kind == Kind::Pinned && kind == Kind::Cached =>
            {
                old.kind
            }
            _ => kind,
        };
        self.put(
            &hash,
            &BlobMeta {
                size,
                name,
                kind,
                source,
                source_mtime_ns,
                collection: false,
                stale: false,
                added: now_secs(),
            },
        )?;
        Ok((hash, size))
    }

    /// Stores a small in-memory blob (a collection listing) inside the store.
    pub fn import_bytes(
        &self,
        bytes: &[u8],
        name: &str,
        kind: Kind,
        collection: bool,
    ) -> Result<Hash, StoreError> {
        let outboard =
            PreOrderOutboard::<Vec<u8>>::create_sized(bytes, bytes.len() as u64, BLOCK_SIZE)
                .map_err(io_err(&self.dir))?;
        let hash = outboard.root;
        let write = |p: &Path, b: &[u8]| {
            agora_store::write_atomic(p, b, 0o644).map_err(|e| StoreError::Db(e.to_string()))
        };
        write(&self.outboard_path(&hash), &outboard.data)?;
        write(&self.data_path(&hash), bytes)?;
        self.put(
            &hash,
            &BlobMeta {
                size: bytes.len() as u64,
                name: name.to_owned(),
                kind,
                source: None,
                source_mtime_ns: None,
                collection,
                stale: false,
                added: now_secs(),
            },
        )?;
        Ok(hash)
    }

    /// Records a blob whose data was downloaded and verified at `path` and whose outboard is
    /// complete at `partial_outboard`.
    pub fn adopt_download(
        &self,
        hash: &Hash,
        size: u64,
        path: &Path,
        name: &str,
        collection: bool,
    ) -> Result<(), StoreError> {
        let ob = self.partial_outboard_path(hash, path);
        let final_ob = self.outboard_path(hash);
        fs::rename(&ob, &final_ob).map_err(io_err(&ob))?;
        let meta = fs::metadata(path).map_err(io_err(path))?;
        let kind = match self.get(hash)? {
            Some(old) if old.kind != Kind::Cached => old.kind,
            _ => Kind::Cached,
        };
        // Data downloaded into the store itself (a replica) is the store's, not a user file.
        let (source, source_mtime_ns) = if path == self.data_path(hash) {
            (None, None)
        } else {
            (Some(path.to_owned()), mtime_ns(&meta))
        };
        self.put(
            hash,
            &BlobMeta {
                size,
                name: name.to_owned(),
                kind,
                source,
                source_mtime_ns,
                collection,
                stale: false,
                added: now_secs(),
            },
        )
    }

    /// Hands the data file the store owns for `hash` (a replica it fetched) over to `to`: the
    /// file is renamed there and becomes the blob's source, as if it had been downloaded to
    /// `to`. `Ok(false)` when there is nothing to hand over (the blob is a user file already)
    /// or the rename is impossible (another filesystem); the caller then copies.
    pub fn hand_over(&self, hash: &Hash, to: &Path) -> Result<bool, StoreError> {
        let Some(mut meta) = self.get(hash)? else {
            return Ok(false);
        };
        if meta.source.is_some() {
            return Ok(false);
        }
        let from = self.data_path(hash);
        if fs::rename(&from, to).is_err() {
            return Ok(false);
        }
        let moved = fs::metadata(to).map_err(io_err(to))?;
        meta.source = Some(to.to_owned());
        meta.source_mtime_ns = mtime_ns(&moved);
        if let Err(e) = self.put(hash, &meta) {
            // The store still names its own path: put the file back there.
            let _ = fs::rename(to, &from);
            return Err(e);
        }
        Ok(true)
    }

    /// Bytes the store itself holds: data it owns (copies, replicas) and every outboard.
    pub fn usage(&self) -> Result<u64, StoreError> {
        Ok(self
            .list()?
            .iter()
            .map(|(_, m)| {
                let outboard = BaoTree::new(m.size, BLOCK_SIZE).outboard_size();
                outboard + if m.source.is_none() { m.size } else { 0 }
            })
            .sum())
    }

    /// Whether `needed` more bytes could fit under `quota`, counting what evicting every
    /// cached replica would free. Evicts nothing.
    pub fn could_fit(&self, needed: u64, quota: u64) -> Result<bool, StoreError> {
        let candidates = self.eviction_candidates()?;
        Ok(eviction::could_fit(
            self.usage()?,
            &candidates,
            needed,
            quota,
        ))
    }

    /// Cached blobs whose data the store owns: the only ones ever evicted.
    fn eviction_candidates(&self) -> Result<Vec<eviction::Candidate<Hash>>, StoreError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|(_, m)| m.kind == Kind::Cached && m.source.is_none())
            .map(|(id, m)| eviction::Candidate {
                id,
                bytes: m.size + BaoTree::new(m.size, BLOCK_SIZE).outboard_size(),
                added: m.added,
            })
            .collect())
    }

    /// Makes room for `needed` more bytes under `quota` by evicting cached blobs whose data the
    /// store owns, least recently added first ([`eviction::plan`]). Own shares and pins are
    /// never evicted. Returns the evicted hashes, or an error if even evicting every candidate
    /// would not be enough (then nothing is evicted).
    pub fn make_room(&self, needed: u64, quota: u64) -> Result<Vec<Hash>, StoreError> {
        let usage = self.usage()?;
        if usage + needed <= quota {
            return Ok(Vec::new());
        }
        let chosen =
            eviction::plan(usage, self.eviction_candidates()?, needed, quota).map_err(|e| {
                StoreError::QuotaFull {
                    needed: e.needed,
                    quota: e.quota,
                }
            })?;
        for hash in &chosen {
            self.remove(hash)?;
        }
        Ok(chosen)
    }

    /// Whether the file a blob is served from in place (a share without `--copy`, a
    /// download's destination) is still there, unchanged (size and modification time).
    /// Blobs whose data the store owns are always fresh.
    pub fn source_fresh(meta: &BlobMeta) -> bool {
        match &meta.source {
            None => true,
            Some(source) => fs::metadata(source)
                .map(|m| m.len() == meta.size && mtime_ns(&m) == meta.source_mtime_ns)
                .unwrap_or(false),
        }
    }

    /// Opens a complete blob for serving. A shared-in-place file that changed is marked stale
    /// and refused.
    pub fn open_blob(&self, hash: &Hash) -> Result<OpenBlob, StoreError> {
        let mut meta = self
            .get(hash)?
            .ok_or_else(|| StoreError::Unknown(hash.to_hex().to_string()))?;
        let data_path = match &meta.source {
            Some(p) => p.clone(),
            None => self.data_path(hash),
        };
        if let Some(source) = meta.source.clone()
            && (meta.stale || !Self::source_fresh(&meta))
        {
            if !meta.stale {
                meta.stale = true;
                self.put(hash, &meta)?;
                tracing::warn!(path = %source.display(), "shared file changed; no longer serving it");
            }
            return Err(StoreError::Stale(source));
        }
        let data = File::open(&data_path).map_err(io_err(&data_path))?;
        let ob_path = self.outboard_path(hash);
        let ob_file = File::open(&ob_path).map_err(io_err(&ob_path))?;
        Ok(OpenBlob {
            data,
            outboard: PreOrderOutboard {
                root: *hash,
                tree: BaoTree::new(meta.size, BLOCK_SIZE),
                data: ob_file,
            },
            size: meta.size,
            recheck: now_secs().saturating_sub(meta.added) >= RECHECK_AFTER_SECS,
        })
    }

    /// Reads a whole small blob (a collection) that the store holds.
    pub fn read_small(&self, hash: &Hash, limit: u64) -> Result<Vec<u8>, StoreError> {
        let blob = self.open_blob(hash)?;
        if blob.size > limit {
            return Err(StoreError::Db(format!(
                "blob {} is {} bytes, more than the {limit} allowed here",
                hash.to_hex(),
                blob.size
            )));
        }
        let mut out = Vec::with_capacity(blob.size as usize);
        (&blob.data)
            .take(blob.size)
            .read_to_end(&mut out)
            .map_err(io_err(&self.dir))?;
        Ok(out)
    }
}

/// Computes the pre-order outboard of `file` on every core.
///
/// The chaining value of each 16 KiB group depends only on its bytes and offset, so groups are
/// hashed in parallel (1 MiB batches handed out to threads), then combined up the tree in one
/// cheap serial pass (one parent per group). The result is byte-identical to bao-tree's
/// single-threaded encoder (see the tests), at about twice its speed on two cores.
pub fn parallel_outboard(
    file: &File,
    size: u64,
    progress: &AtomicU64,
) -> io::Result<PreOrderOutboard<Vec<u8>>> {
    use std::os::unix::fs::FileExt;

    use bao_tree::{io::outboard::PostOrderMemOutboard, iter::BaoChunk};
    use blake3::hazmat::{HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};

    const GROUPS_PER_BATCH: u64 = 64;
    let group = BLOCK_SIZE.bytes() as u64;
    let tree = BaoTree::new(size, BLOCK_SIZE);
    let blocks = tree.blocks();
    if blocks <= 1 {
        let mut data = Vec::with_capacity(size as usize);
        file.take(size).read_to_end(&mut data)?;
        if data.len() as u64 != size {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank"));
        }
        progress.fetch_add(size, Ordering::Relaxed);
        return Ok(PreOrderOutboard {
            root: blake3::hash(&data),
            tree,
            data: Vec::new(),
        });
    }
    let batches = blocks.div_ceil(GROUPS_PER_BATCH);
    let next = AtomicU64::new(0);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(batches as usize);
    let mut cvs = vec![[0u8; 32]; blocks as usize];
    /// Each thread's hashed batches: (batch index, chaining values of its groups).
    type Batches = Vec<(u64, Vec<[u8; 32]>)>;
    let results: Vec<io::Result<Batches>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut buf = vec![0u8; (GROUPS_PER_BATCH * group) as usize];
                    let mut done = Vec::new();
                    loop {
                        let batch = next.fetch_add(1, Ordering::Relaxed);
                        if batch >= batches {
                            return Ok(done);
                        }
                        let start = batch * GROUPS_PER_BATCH * group;
                        let len = (size - start).min(buf.len() as u64) as usize;
                        file.read_exact_at(&mut buf[..len], start)?;
                        let batch_cvs: Vec<[u8; 32]> = buf[..len]
                            .chunks(group as usize)
                            .enumerate()
                            .map(|(i, bytes)| {
                                let mut hasher = blake3::Hasher::new();
                                hasher.set_input_offset(start + i as u64 * group);
                                hasher.update(bytes);
                                hasher.finalize_non_root()
                            })
                            .collect();
                        progress.fetch_add(len as u64, Ordering::Relaxed);
                        done.push((batch, batch_cvs));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("hashing thread panicked"))
            .collect()
    });
    for result in results {
        for (batch, batch_cvs) in result? {
            let first = (batch * GROUPS_PER_BATCH) as usize;
            cvs[first..first + batch_cvs.len()].copy_from_slice(&batch_cvs);
        }
    }
    let mut post_order = Vec::with_capacity(tree.outboard_size() as usize);
    let mut stack: Vec<[u8; 32]> = Vec::new();
    let mut root = None;
    for item in tree.post_order_chunks_iter() {
        match item {
            BaoChunk::Leaf { start_chunk, .. } => {
                stack.push(cvs[(start_chunk.0 >> BLOCK_SIZE.chunk_log()) as usize]);
            }
            BaoChunk::Parent { is_root, .. } => {
                let right = stack.pop().expect("post order has two children");
                let left = stack.pop().expect("post order has two children");
                post_order.extend_from_slice(&left);
                post_order.extend_from_slice(&right);
                if is_root {
                    root = Some(merge_subtrees_root(&left, &right, Mode::Hash));
                } else {
                    stack.push(merge_subtrees_non_root(&left, &right, Mode::Hash));
                }
            }
        }
    }
    let root = root.expect("a tree of two or more groups has a root parent");
    let pre = PostOrderMemOutboard {
        root,
        tree,
        data: post_order,
    }
    .flip();
    Ok(PreOrderOutboard {
        root,
        tree,
        data: pre.data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("db")).unwrap());
        let store = Store::open(dir.path(), db).unwrap();
        (dir, store)
    }

    #[test]
    fn replica_partials_nobody_fetches_are_swept_and_others_kept() {
        let (dir, store) = store();
        let (orphan, pending) = (blake3::hash(b"orphan"), blake3::hash(b"pending"));
        let mut files = Vec::new();
        for hash in [orphan, pending] {
            let data = crate::download::partial_path(&store.data_path(&hash));
            let outboard = store.partial_outboard_path(&hash, &store.data_path(&hash));
            fs::write(&data, b"partial").unwrap();
            fs::write(&outboard, b"outboard").unwrap();
            files.push((data, outboard));
        }
        // A user's download elsewhere keeps its partial outboard in the store too.
        let users = store.partial_outboard_path(&orphan, &dir.path().join("out.bin"));
        fs::write(&users, b"outboard").unwrap();

        assert_eq!(store.sweep_replica_partials(&[pending]), 1);
        assert!(!files[0].0.exists() && !files[0].1.exists(), "orphan swept");
        assert!(files[1].0.exists() && files[1].1.exists(), "pending kept");
        assert!(users.exists(), "a user's download is not a replica");
        assert_eq!(store.sweep_replica_partials(&[pending]), 0);
    }

    #[test]
    fn import_matches_blake3_and_detects_changes() {
        let (dir, store) = store();
        let path = dir.path().join("file.bin");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        fs::write(&path, &data).unwrap();
        let progress = AtomicU64::new(0);
        let (hash, size) = store
            .import_file(&path, false, Kind::Own, &progress)
            .unwrap();
        assert_eq!(
            hash,
            blake3::hash(&data),
            "the id is the plain BLAKE3 hash, as b3sum prints"
        );
        assert_eq!(size, data.len() as u64);
        assert_eq!(progress.load(Ordering::Relaxed), size);
        let meta = store.get(&hash).unwrap().unwrap();
        assert_eq!(meta.name, "file.bin");
        assert_eq!(meta.kind, Kind::Own);
        assert!(store.open_blob(&hash).is_ok());

        // The user edits the file: it is no longer served.
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(&path, b"something else").unwrap();
        assert!(matches!(store.open_blob(&hash), Err(StoreError::Stale(_))));
        assert!(store.get(&hash).unwrap().unwrap().stale);
    }

    #[test]
    fn copied_import_survives_the_original() {
        let (dir, store) = store();
        let path = dir.path().join("a.txt");
        fs::write(&path, b"hello world").unwrap();
        let (hash, _) = store
            .import_file(&path, true, Kind::Pinned, &AtomicU64::new(0))
            .unwrap();
        fs::remove_file(&path).unwrap();
        let blob = store.open_blob(&hash).unwrap();
        assert_eq!(blob.size, 11);
        assert_eq!(store.read_small(&hash, 100).unwrap(), b"hello world");
        store.remove(&hash).unwrap();
        assert!(store.get(&hash).unwrap().is_none());
        assert!(!store.data_path(&hash).exists());
    }

    #[test]
    fn parallel_outboard_equals_the_reference_encoder() {
        let dir = tempfile::tempdir().unwrap();
        let group = 16 * 1024;
        for size in [
            0,
            1,
            1024,
            group,
            group + 1,
            2 * group,
            3 * group - 7,
            64 * group + 5,
            200 * group + 999,
        ] {
            let data: Vec<u8> = (0..size as u64).map(|i| (i * 31 % 251) as u8).collect();
            let path = dir.path().join(format!("f{size}"));
            fs::write(&path, &data).unwrap();
            let progress = AtomicU64::new(0);
            let ours =
                parallel_outboard(&File::open(&path).unwrap(), size as u64, &progress).unwrap();
            let reference =
                PreOrderOutboard::<Vec<u8>>::create_sized(&data[..], size as u64, BLOCK_SIZE)
                    .unwrap();
            assert_eq!(ours.root, blake3::hash(&data), "size {size}");
            assert_eq!(ours.root, reference.root, "size {size}");
            assert_eq!(ours.data, reference.data, "size {size}");
            assert_eq!(progress.load(Ordering::Relaxed), size as u64);
        }
    }

    #[test]
    fn eviction_takes_oldest_cached_store_data_and_spares_pins_and_shares() {
        let (dir, store) = store();
        let kib = |n: usize| vec![n as u8; n * 1024];
        let mut hashes = Vec::new();
        for (i, kind) in [Kind::Cached, Kind::Pinned, Kind::Cached, Kind::Own]
            .into_iter()
            .enumerate()
        {
            let path = dir.path().join(format!("f{i}"));
            fs::write(&path, kib(100 + i)).unwrap();
            let (h, _) = store
                .import_file(&path, true, kind, &AtomicU64::new(0))
                .unwrap();
            let mut meta = store.get(&h).unwrap().unwrap();
            meta.added = i as u64; // a strict order for the test
            store.put(&h, &meta).unwrap();
            hashes.push(h);
        }
        let usage = store.usage().unwrap();
        assert!(usage > 400 * 1024);
        // Room for 50 KiB more under the current usage: the oldest cached blob goes.
        let evicted = store.make_room(50 * 1024, usage).unwrap();
        assert_eq!(evicted, vec![hashes[0]]);
        // Asking for more than all cached data can free fails and evicts nothing.
        assert!(matches!(
            store.make_room(10 * 1024 * 1024, usage),
            Err(StoreError::QuotaFull { .. })
        ));
        assert!(store.get(&hashes[2]).unwrap().is_some());
        assert!(store.get(&hashes[1]).unwrap().is_some(), "pinned stays");
        assert!(store.get(&hashes[3]).unwrap().is_some(), "own share stays");
    }

    #[test]
    fn not_a_file_and_missing_file_are_errors() {
        let (dir, store) = store();
        let err = store
            .import_file(dir.path(), false, Kind::Own, &AtomicU64::new(0))
            .unwrap_err();
        assert!(matches!(err, StoreError::NotAFile(_)));
        let err = store
            .import_file(
                &dir.path().join("nope"),
                false,
                Kind::Own,
                &AtomicU64::new(0),
            )
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
