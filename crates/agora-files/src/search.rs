//! Keyword search, as eMule's Kad does it.
//!
//! A file name is split into keywords (lower case, split on anything that is not a letter or a
//! digit, words of two or more characters). For each keyword the publisher stores an index
//! entry `{name, size, hash, provider}` at the peers closest to `BLAKE3("agora-kw:" + keyword)`
//! in the DHT, over [`PROTOCOL`]. A searcher asks the peers closest to one of its keywords (the
//! longest: usually the rarest) for entries whose names contain *all* its keywords, merges the
//! answers by hash and counts distinct providers.
//!
//! A holder accepts an entry only if its provider is the peer that sent it (the connection is
//! authenticated, so nobody can publish in another's name) and the keyword really is in the
//! name. Its budgets: [`MAX_ENTRIES_PER_PROVIDER_PER_KEYWORD`] entries of one provider under
//! one keyword and [`MAX_ENTRIES_PER_PROVIDER`] in all, [`MAX_ENTRIES_PER_KEYWORD`] per
//! keyword, [`MAX_ENTRIES`] and [`MAX_KEYWORDS`] in all, each entry for [`ENTRY_TTL`] unless
//! republished. A full keyword makes room by dropping an entry of the provider that holds the
//! most of it, so one publisher (or a few) cannot push a real file out of a keyword; a query
//! names at most [`MAX_KEYWORDS_PER_NAME`] keywords and is answered from keywords computed
//! once, when the entry was stored.

use std::{collections::HashMap, time::Duration};

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/search/1.0.0");
/// Keywords taken from one name.
pub const MAX_KEYWORDS_PER_NAME: usize = 16;
/// Longest keyword kept, in characters.
pub const MAX_KEYWORD_CHARS: usize = 64;
/// Longest file name in an entry, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;
/// Entries under one keyword, from all providers.
pub const MAX_ENTRIES_PER_KEYWORD: usize = 1000;
/// Entries one provider may have under one keyword.
pub const MAX_ENTRIES_PER_PROVIDER_PER_KEYWORD: usize = 32;
/// Entries one provider may have in this node's index.
pub const MAX_ENTRIES_PER_PROVIDER: usize = 2_000;
/// Entries held in all (each at most [`MAX_NAME_BYTES`] of name).
pub const MAX_ENTRIES: usize = 50_000;
/// Distinct keywords held.
pub const MAX_KEYWORDS: usize = 20_000;
/// Entries per publish request and per answer.
pub const MAX_ENTRIES_PER_MESSAGE: usize = 200;
/// How long an entry lives without being republished.
pub const ENTRY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Peers an entry is stored at, per keyword.
pub const REPLICAS: usize = 5;

/// The keywords of a name: lower case, split on non-alphanumerics, two characters or more.
pub fn keywords(name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in name
        .split(|c: char| !c.is_alphanumeric())
        .map(|w| w.to_lowercase())
    {
        let len = word.chars().count();
        if (2..=MAX_KEYWORD_CHARS).contains(&len) && !out.contains(&word) {
            out.push(word);
            if out.len() == MAX_KEYWORDS_PER_NAME {
                break;
            }
        }
    }
    out
}

/// The DHT key under which entries for `keyword` are stored.
pub fn keyword_key(keyword: &str) -> Vec<u8> {
    blake3::hash(format!("agora-kw:{keyword}").as_bytes())
        .as_bytes()
        .to_vec()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    /// Hex BLAKE3 hash.
    pub hash: String,
    /// Peer id of the provider that published it.
    pub provider: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Publish {
        keyword: String,
        entries: Vec<Entry>,
    },
    Query {
        keyword: String,
        all: Vec<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Stored(usize),
    Results(Vec<Entry>),
    Refused(String),
}

/// One search hit, merged over every answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Hit {
    pub name: String,
    pub size: u64,
    pub hash: String,
    pub providers: usize,
}

pub use crate::proto::index::{Handled, Index, Refused};

/// Merges answers by hash, counting distinct providers; most-provided first.
pub fn merge(entries: impl IntoIterator<Item = Entry>) -> Vec<Hit> {
    let mut by_hash: HashMap<String, (Entry, Vec<String>)> = HashMap::new();
    for e in entries {
        let slot = by_hash
            .entry(e.hash.clone())
            .or_insert_with(|| (e.clone(), Vec::new()));
        if !slot.1.contains(&e.provider) {
            slot.1.push(e.provider);
        }
    }
    let mut hits: Vec<Hit> = by_hash
        .into_values()
        .map(|(e, providers)| Hit {
            name: e.name,
            size: e.size,
            hash: e.hash,
            providers: providers.len(),
        })
        .collect();
    hits.sort_by(|a, b| b.providers.cmp(&a.providers).then(a.name.cmp(&b.name)));
    hits
}

#[cfg(test)]
mod tests {
    use libp2p::PeerId;

    use super::*;
    use crate::proto::index::tests::entry;

    #[test]
    fn names_split_into_normalised_keywords() {
        assert_eq!(
            keywords("The_Matrix.Reloaded-(2003) [1080p].MKV"),
            ["the", "matrix", "reloaded", "2003", "1080p", "mkv"]
        );
        assert_eq!(keywords("a b ÉTÉ été"), ["été"]);
        assert!(keywords("!!! - x").is_empty());
    }

    #[test]
    fn merge_counts_distinct_providers() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let hits = merge([
            entry("x.iso", a),
            entry("x.iso", b),
            entry("x.iso", a),
            entry("y.iso", a),
        ]);
        assert_eq!(hits[0].name, "x.iso");
        assert_eq!(hits[0].providers, 2);
        assert_eq!(hits[1].providers, 1);
    }
}
