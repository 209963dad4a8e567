//! The node's data directory.
//!
//! A data directory belongs to exactly one running node. It holds:
//!
//! | file            | what                                                     | mode |
//! |-----------------|----------------------------------------------------------|------|
//! | `lock`          | exclusive advisory lock held while the node runs; its pid | 0644 |
//! | `identity.key`  | the node's ed25519 keypair (libp2p protobuf encoding)     | 0600 |
//! | `api.token`     | bearer token of the HTTP API (hex)                        | 0600 |
//! | `api.json`      | where the running node's API listens; removed at shutdown | 0644 |
//! | `node.redb`     | redb database: known peers (and later application state)  | 0600 |
//! | `config.toml`   | optional configuration, read by the CLI                   |      |
//!
//! Every file is written atomically (temporary file, fsync, rename), so a node killed at any
//! moment leaves either the old or the new content, never a torn file. Nothing here overwrites a
//! file it cannot parse: a corrupt identity is reported, not replaced, because replacing it would
//! silently change the node's peer id.

mod db;

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

pub use db::{Db, DbError, KnownPeer};
use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};

/// File names inside a data directory.
pub const LOCK_FILE: &str = "lock";
pub const IDENTITY_FILE: &str = "identity.key";
pub const TOKEN_FILE: &str = "api.token";
pub const API_INFO_FILE: &str = "api.json";
pub const DB_FILE: &str = "node.redb";
pub const CONFIG_FILE: &str = "config.toml";

/// Length of the API token in bytes (printed as twice as many hex digits).
const TOKEN_BYTES: usize = 32;
/// Largest identity file we are willing to read; an ed25519 protobuf keypair is 68 bytes.
const MAX_IDENTITY_FILE: u64 = 4096;

/// Errors of opening and using a data directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error(
        "data directory {path} is in use by another running agora node{pid}; stop that node or pass another --data-dir",
        pid = pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked { path: PathBuf, pid: Option<u32> },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error(
        "identity key {path} is corrupt ({reason}); it was left untouched. Restore it from a backup, or move it away to start with a new peer id"
    )]
    CorruptIdentity { path: PathBuf, reason: String },
    #[error("API token {path} is corrupt; delete it and a new token is made at the next start")]
    CorruptToken { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} is not valid: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What a running node publishes in `api.json` so that clients can find it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiInfo {
    /// `host:port` of the HTTP API.
    pub api: String,
    pub peer_id: String,
    pub pid: u32,
    /// Absolute path of the bearer token file.
    pub token_file: PathBuf,
}

/// An opened, locked data directory. The lock is released when this value is dropped (or the
/// process dies: the kernel drops advisory locks with the file descriptor).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory if needed (mode 0700) and takes its lock.
    ///
    /// Fails with [`Error::Locked`] if another process holds it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        fs::create_dir_all(path).map_err(|source| Error::CreateDir {
            path: path.to_owned(),
            source,
        })?;
        let path = path.canonicalize().map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let lock_path = path.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|source| Error::Lock {
                path: lock_path.clone(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                return Err(Error::Locked {
                    path,
                    pid: pid.trim().parse().ok(),
                });
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(Error::Lock {
                    path: lock_path,
                    source,
                });
            }
        }
        // Record who holds the lock, for the error message of the next one who tries.
        let pid = std::process::id().to_string();
        lock.set_len(0)
            .and_then(|()| lock.write_all(pid.as_bytes()))
            .map_err(|source| Error::Write {
                path: lock_path,
                source,
            })?;
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o700));
        Ok(Self { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Loads the node's keypair, creating a fresh ed25519 key on first start.
    pub fn load_or_create_identity(&self) -> Result<Keypair, Error> {
        let path = self.file(IDENTITY_FILE);
        match read_limited(&path, MAX_IDENTITY_FILE) {
            Ok(bytes) => {
                warn_if_readable_by_others(&path);
                Keypair::from_protobuf_encoding(&bytes).map_err(|e| Error::CorruptIdentity {
                    path,
                    reason: e.to_string(),
                })
            }
            Err(Error::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let key = Keypair::generate_ed25519();
                let bytes = key
                    .to_protobuf_encoding()
                    .expect("ed25519 keys always encode");
                write_atomic(&path, &bytes, 0o600)?;
                tracing::info!(path = %path.display(), "created a new identity key");
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }

    /// Loads the API bearer token, creating one on first start.
    pub fn load_or_create_token(&self) -> Result<String, Error> {
        let path = self.file(TOKEN_FILE);
        match read_limited(&path, 1024) {
            Ok(bytes) => {
                let token = String::from_utf8(bytes)
                    .map_err(|_| Error::CorruptToken { path: path.clone() })?
                    .trim()
                    .to_owned();
                if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Error::CorruptToken { path });
                }
                warn_if_readable_by_others(&path);
                Ok(token)
            }
            Err(Error::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let token = hex::encode(rand::random::<[u8; TOKEN_BYTES]>());
                write_atomic(&path, token.as_bytes(), 0o600)?;
                Ok(token)
            }
            Err(e) => Err(e),
        }
    }

    pub fn write_api_info(&self, info: &ApiInfo) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(info).expect("ApiInfo serialises");
        write_atomic(&self.file(API_INFO_FILE), &json, 0o644)
    }

    /// Removes `api.json` (at shutdown). A missing file is not an error.
    pub fn remove_api_info(&self) {
        let _ = fs::remove_file(self.file(API_INFO_FILE));
    }

    /// Opens (or creates) the node's redb database.
    pub fn open_db(&self) -> Result<Db, Error> {
        Ok(Db::open(&self.file(DB_FILE))?)
    }

    /// Total size in bytes of the regular files under the data directory.
    pub fn disk_usage(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.path)
    }
}

/// Reads `api.json` of the node that uses `data_dir` (without taking the lock).
pub fn read_api_info(data_dir: &Path) -> Result<ApiInfo, Error> {
    let path = data_dir.join(API_INFO_FILE);
    let bytes = read_limited(&path, 64 * 1024)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Parse {
        path,
        reason: e.to_string(),
    })
}

/// Reads a whole file, refusing files larger than `limit` bytes.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    let err = |source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(err)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(err)?;
    if bytes.len() as u64 > limit {
        return Err(Error::Parse {
            path: path.to_owned(),
            reason: format!("larger than {limit} bytes"),
        });
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written with
/// `mode`, synced, and renamed over `path`; then the directory is synced.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let err = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` is filtered by the umask at creation; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "secret file is readable by other users; run `chmod 600` on it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let d = DataDir::open(dir.path()).unwrap();
            d.load_or_create_identity().unwrap().public().to_peer_id()
        };
        let d = DataDir::open(dir.path()).unwrap();
        let again = d.load_or_create_identity().unwrap().public().to_peer_id();
        assert_eq!(first, again);
        let mode = fs::metadata(d.file(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn corrupt_identity_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        fs::write(d.file(IDENTITY_FILE), b"not a key").unwrap();
        let err = d.load_or_create_identity().unwrap_err();
        assert!(matches!(err, Error::CorruptIdentity { .. }), "{err}");
        assert!(err.to_string().contains("left untouched"));
        assert_eq!(fs::read(d.file(IDENTITY_FILE)).unwrap(), b"not a key");
    }

    #[test]
    fn second_open_of_a_locked_dir_fails_with_pid() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DataDir::open(dir.path()).unwrap();
        let err = DataDir::open(dir.path()).unwrap_err();
        match err {
            Error::Locked { pid, .. } => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Locked, got {other}"),
        }
        drop(_held);
        DataDir::open(dir.path()).expect("lock is released on drop");
    }

    #[test]
    fn token_is_stable_private_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        let t = d.load_or_create_token().unwrap();
        assert_eq!(t.len(), TOKEN_BYTES * 2);
        assert_eq!(d.load_or_create_token().unwrap(), t);
        let mode = fs::metadata(d.file(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(d.file(TOKEN_FILE), "short").unwrap();
        assert!(matches!(
            d.load_or_create_token(),
            Err(Error::CorruptToken { .. })
        ));
    }

    #[test]
    fn api_info_round_trips_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        let info = ApiInfo {
            api: "127.0.0.1:1234".into(),
            peer_id: "12D3KooW".into(),
            pid: 7,
            token_file: d.file(TOKEN_FILE),
        };
        d.write_api_info(&info).unwrap();
        assert_eq!(read_api_info(d.path()).unwrap(), info);
        d.remove_api_info();
        assert!(read_api_info(d.path()).is_err());
    }

    #[test]
    fn read_limited_refuses_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        fs::write(&p, vec![0u8; 100]).unwrap();
        assert!(read_limited(&p, 99).is_err());
        assert_eq!(read_limited(&p, 100).unwrap().len(), 100);
    }
}
