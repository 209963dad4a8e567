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
//! name; it keeps at most [`MAX_ENTRIES_PER_KEYWORD`] entries per keyword and
//! [`MAX_KEYWORDS`] keywords, each for [`ENTRY_TTL`] unless republished.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/search/1.0.0");
/// Keywords taken from one name.
pub const MAX_KEYWORDS_PER_NAME: usize = 16;
/// Longest keyword kept, in characters.
pub const MAX_KEYWORD_CHARS: usize = 64;
/// Longest file name in an entry, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;
pub const MAX_ENTRIES_PER_KEYWORD: usize = 1000;
pub const MAX_KEYWORDS: usize = 100_000;
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

/// The entries under one keyword, by (hash, provider), with their expiry.
type Slot = HashMap<(String, String), (Entry, Instant)>;

/// The entries this node holds for others.
#[derive(Default)]
pub struct Index {
    by_keyword: HashMap<String, Slot>,
}

impl Index {
    /// Applies a request from `from` at `now`.
    pub fn handle(&mut self, from: PeerId, request: Request, now: Instant) -> Response {
        match request {
            Request::Publish { keyword, entries } => {
                if entries.len() > MAX_ENTRIES_PER_MESSAGE {
                    return Response::Refused("too many entries".into());
                }
                let mut stored = 0;
                for entry in entries {
                    if self.publish(from, &keyword, entry, now).is_ok() {
                        stored += 1;
                    }
                }
                Response::Stored(stored)
            }
            Request::Query { keyword, all } => Response::Results(self.query(&keyword, &all, now)),
        }
    }

    fn publish(
        &mut self,
        from: PeerId,
        keyword: &str,
        entry: Entry,
        now: Instant,
    ) -> Result<(), &'static str> {
        if entry.provider != from.to_string() {
            return Err("entries are published by their provider");
        }
        if entry.name.len() > MAX_NAME_BYTES || blake3::Hash::from_hex(&entry.hash).is_err() {
            return Err("malformed entry");
        }
        if !keywords(&entry.name).iter().any(|k| k == keyword) {
            return Err("keyword not in the name");
        }
        if !self.by_keyword.contains_key(keyword) && self.by_keyword.len() >= MAX_KEYWORDS {
            self.expire(now);
            if self.by_keyword.len() >= MAX_KEYWORDS {
                return Err("index full");
            }
        }
        let slot = self.by_keyword.entry(keyword.to_owned()).or_default();
        let key = (entry.hash.clone(), entry.provider.clone());
        if !slot.contains_key(&key) && slot.len() >= MAX_ENTRIES_PER_KEYWORD {
            slot.retain(|_, (_, expires)| *expires > now);
            if slot.len() >= MAX_ENTRIES_PER_KEYWORD {
                return Err("keyword full");
            }
        }
        slot.insert(key, (entry, now + ENTRY_TTL));
        Ok(())
    }

    /// Entries under `keyword` whose names contain every keyword in `all`.
    pub fn query(&self, keyword: &str, all: &[String], now: Instant) -> Vec<Entry> {
        let Some(slot) = self.by_keyword.get(keyword) else {
            return Vec::new();
        };
        slot.values()
            .filter(|(_, expires)| *expires > now)
            .map(|(e, _)| e)
            .filter(|e| {
                let have = keywords(&e.name);
                all.iter().all(|k| have.contains(k))
            })
            .take(MAX_ENTRIES_PER_MESSAGE)
            .cloned()
            .collect()
    }

    pub fn expire(&mut self, now: Instant) {
        for slot in self.by_keyword.values_mut() {
            slot.retain(|_, (_, expires)| *expires > now);
        }
        self.by_keyword.retain(|_, slot| !slot.is_empty());
    }
}

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
    use super::*;

    fn entry(name: &str, provider: PeerId) -> Entry {
        Entry {
            name: name.into(),
            size: 10,
            hash: blake3::hash(name.as_bytes()).to_hex().to_string(),
            provider: provider.to_string(),
        }
    }

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
    fn query_intersects_keywords() {
        let p = PeerId::random();
        let now = Instant::now();
        let mut index = Index::default();
        for name in [
            "holiday photos 2024.zip",
            "holiday video.mp4",
            "work photos.tar",
        ] {
            for kw in keywords(name) {
                let r = index.handle(
                    p,
                    Request::Publish {
                        keyword: kw,
                        entries: vec![entry(name, p)],
                    },
                    now,
                );
                assert!(matches!(r, Response::Stored(1)));
            }
        }
        let hits = index.query("photos", &["photos".into(), "holiday".into()], now);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].name, "holiday photos 2024.zip");
        assert_eq!(index.query("photos", &["photos".into()], now).len(), 2);
        // Entries expire.
        assert!(
            index
                .query("photos", &[], now + ENTRY_TTL + Duration::from_secs(1))
                .is_empty()
        );
    }

    #[test]
    fn forged_and_unrelated_entries_are_refused() {
        let (me, other) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        let mut index = Index::default();
        // Publishing in someone else's name.
        let r = index.handle(
            me,
            Request::Publish {
                keyword: "song".into(),
                entries: vec![entry("song.mp3", other)],
            },
            now,
        );
        assert!(matches!(r, Response::Stored(0)));
        // A keyword that is not in the name (index spam).
        let r = index.handle(
            me,
            Request::Publish {
                keyword: "free".into(),
                entries: vec![entry("song.mp3", me)],
            },
            now,
        );
        assert!(matches!(r, Response::Stored(0)));
        assert!(index.query("song", &[], now).is_empty());
    }

    #[test]
    fn a_keyword_holds_a_bounded_number_of_entries() {
        let now = Instant::now();
        let mut index = Index::default();
        for i in 0..MAX_ENTRIES_PER_KEYWORD + 10 {
            let p = PeerId::random();
            let name = format!("spam {i}");
            index.handle(
                p,
                Request::Publish {
                    keyword: "spam".into(),
                    entries: vec![entry(&name, p)],
                },
                now,
            );
        }
        assert_eq!(index.by_keyword["spam"].len(), MAX_ENTRIES_PER_KEYWORD);
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
