//! Directories: a collection blob lists (relative path, hash, size) of every file.
//!
//! The listing is canonical JSON (`{"agora_collection":1,"entries":[…]}`, entries sorted by
//! path), so the same tree always gets the same id. A listing from the network is untrusted:
//! [`Collection::parse`] bounds its size and rejects any path that could escape the download
//! directory (absolute, `..`, empty or `.` components, backslashes, NUL).

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Hash;

/// Largest collection listing accepted.
pub const MAX_COLLECTION_LEN: u64 = 16 * 1024 * 1024;
/// Most files in one collection.
pub const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// Relative path with `/` separators.
    pub path: String,
    pub hash: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Collection {
    pub agora_collection: u32,
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CollectionError {
    #[error("collection listing is not valid: {0}")]
    Malformed(String),
    #[error("collection entry {0:?} would escape the destination directory")]
    UnsafePath(String),
    #[error("collection has more than {MAX_ENTRIES} entries")]
    TooMany,
}

impl Collection {
    pub fn new(mut entries: Vec<Entry>) -> Self {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Self {
            agora_collection: 1,
            entries,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("collection serialises")
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, CollectionError> {
        if bytes.len() as u64 > MAX_COLLECTION_LEN {
            return Err(CollectionError::Malformed("too large".into()));
        }
        let c: Collection =
            serde_json::from_slice(bytes).map_err(|e| CollectionError::Malformed(e.to_string()))?;
        if c.agora_collection != 1 {
            return Err(CollectionError::Malformed(format!(
                "unknown version {}",
                c.agora_collection
            )));
        }
        if c.entries.len() > MAX_ENTRIES {
            return Err(CollectionError::TooMany);
        }
        let mut seen = std::collections::HashSet::new();
        for e in &c.entries {
            safe_relative_path(&e.path)?;
            Hash::from_hex(&e.hash)
                .map_err(|_| CollectionError::Malformed(format!("bad hash {:?}", e.hash)))?;
            if !seen.insert(e.path.as_str()) {
                return Err(CollectionError::Malformed(format!(
                    "duplicate path {:?}",
                    e.path
                )));
            }
        }
        Ok(c)
    }
}

/// Checks that `path` is a plain relative path and returns it as a `PathBuf`.
pub fn safe_relative_path(path: &str) -> Result<PathBuf, CollectionError> {
    let unsafe_path = || CollectionError::UnsafePath(path.to_owned());
    if path.is_empty() || path.contains('\\') || path.contains('\0') || path.starts_with('/') {
        return Err(unsafe_path());
    }
    let mut out = PathBuf::new();
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(unsafe_path());
        }
        match Path::new(part).components().next() {
            Some(Component::Normal(c)) => out.push(c),
            _ => return Err(unsafe_path()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Entry {
        Entry {
            path: path.into(),
            hash: blake3::hash(b"x").to_hex().to_string(),
            size: 1,
        }
    }

    #[test]
    fn canonical_and_round_trips() {
        let a = Collection::new(vec![entry("b"), entry("a/c")]);
        let b = Collection::new(vec![entry("a/c"), entry("b")]);
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_eq!(Collection::parse(&a.to_bytes()).unwrap(), a);
    }

    #[test]
    fn escaping_paths_are_rejected() {
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
            "",
            "a/",
            "x\0y",
        ] {
            let c = Collection::new(vec![entry(bad)]);
            assert!(
                matches!(
                    Collection::parse(&c.to_bytes()),
                    Err(CollectionError::UnsafePath(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn malformed_listings_are_rejected() {
        assert!(Collection::parse(b"not json").is_err());
        assert!(Collection::parse(br#"{"agora_collection":2,"entries":[]}"#).is_err());
        let dup = Collection::new(vec![entry("a"), entry("a")]);
        assert!(Collection::parse(&dup.to_bytes()).is_err());
        let bad_hash = r#"{"agora_collection":1,"entries":[{"path":"a","hash":"zz","size":1}]}"#;
        assert!(Collection::parse(bad_hash.as_bytes()).is_err());
    }
}
