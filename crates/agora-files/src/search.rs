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

/// Why an entry or a request was refused; the name of each is the budget counted on
/// `agora_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Published in someone else's name.
    NotProvider,
    Malformed,
    /// The keyword is not one of the name's.
    KeywordNotInName,
    /// The provider has [`MAX_ENTRIES_PER_PROVIDER_PER_KEYWORD`] under this keyword.
    ProviderKeywordFull,
    /// The provider has [`MAX_ENTRIES_PER_PROVIDER`] in the index.
    ProviderFull,
    /// [`MAX_ENTRIES`] or [`MAX_KEYWORDS`] reached.
    IndexFull,
    /// The keyword is full of entries of providers that hold fewer of it than this one.
    KeywordFull,
}

impl Refused {
    /// The budget's name on `agora_refusals_total`.
    pub fn budget(self) -> &'static str {
        match self {
            Refused::NotProvider => "search.not_provider",
            Refused::Malformed => "search.malformed",
            Refused::KeywordNotInName => "search.keyword_not_in_name",
            Refused::ProviderKeywordFull => "search.provider_per_keyword",
            Refused::ProviderFull => "search.provider",
            Refused::IndexFull => "search.index",
            Refused::KeywordFull => "search.keyword",
        }
    }
}

/// One stored entry: the name's keywords computed once, and when it expires.
struct Held {
    entry: Entry,
    keywords: Vec<String>,
    expires: Instant,
}

/// The entries under one keyword, by (hash, provider).
type Slot = HashMap<(String, String), Held>;

/// The entries this node holds for others.
#[derive(Default)]
pub struct Index {
    by_keyword: HashMap<String, Slot>,
    /// Entries held per provider (all keywords).
    per_provider: HashMap<String, usize>,
    total: usize,
}

/// The answer to a request and the refusals it caused (for the node's counters).
pub struct Handled {
    pub response: Response,
    pub refused: Vec<Refused>,
}

impl Index {
    /// Applies a request from `from` at `now`.
    pub fn handle(&mut self, from: PeerId, request: Request, now: Instant) -> Handled {
        match request {
            Request::Publish { keyword, entries } => {
                if entries.len() > MAX_ENTRIES_PER_MESSAGE
                    || keyword.chars().count() > MAX_KEYWORD_CHARS
                {
                    return Handled {
                        response: Response::Refused(
                            "too many entries or too long a keyword".into(),
                        ),
                        refused: vec![Refused::Malformed],
                    };
                }
                let mut stored = 0;
                let mut refused = Vec::new();
                for entry in entries {
                    match self.publish(from, &keyword, entry, now) {
                        Ok(()) => stored += 1,
                        Err(r) => refused.push(r),
                    }
                }
                Handled {
                    response: Response::Stored(stored),
                    refused,
                }
            }
            Request::Query { keyword, all } => {
                if all.len() > MAX_KEYWORDS_PER_NAME
                    || std::iter::once(&keyword)
                        .chain(&all)
                        .any(|k| k.chars().count() > MAX_KEYWORD_CHARS)
                {
                    return Handled {
                        response: Response::Refused(format!(
                            "a query has at most {MAX_KEYWORDS_PER_NAME} keywords of at most \
                             {MAX_KEYWORD_CHARS} characters"
                        )),
                        refused: vec![Refused::Malformed],
                    };
                }
                Handled {
                    response: Response::Results(self.query(&keyword, &all, now)),
                    refused: Vec::new(),
                }
            }
        }
    }

    fn publish(
        &mut self,
        from: PeerId,
        keyword: &str,
        entry: Entry,
        now: Instant,
    ) -> Result<(), Refused> {
        if entry.provider != from.to_string() {
            return Err(Refused::NotProvider);
        }
        if entry.name.len() > MAX_NAME_BYTES || blake3::Hash::from_hex(&entry.hash).is_err() {
            return Err(Refused::Malformed);
        }
        let keywords = keywords(&entry.name);
        if !keywords.iter().any(|k| k == keyword) {
            return Err(Refused::KeywordNotInName);
        }
        let key = (entry.hash.clone(), entry.provider.clone());
        let held = Held {
            entry,
            keywords,
            expires: now + ENTRY_TTL,
        };
        // A republished entry replaces itself: no budget is spent.
        if let Some(old) = self
            .by_keyword
            .get_mut(keyword)
            .and_then(|slot| slot.get_mut(&key))
        {
            *old = held;
            return Ok(());
        }
        let provider = key.1.clone();
        if self.per_provider.get(&provider).copied().unwrap_or(0) >= MAX_ENTRIES_PER_PROVIDER {
            self.expire(now);
            if self.per_provider.get(&provider).copied().unwrap_or(0) >= MAX_ENTRIES_PER_PROVIDER {
                return Err(Refused::ProviderFull);
            }
        }
        let new_keyword = !self.by_keyword.contains_key(keyword);
        if self.total >= MAX_ENTRIES || (new_keyword && self.by_keyword.len() >= MAX_KEYWORDS) {
            self.expire(now);
            let new_keyword = !self.by_keyword.contains_key(keyword);
            if self.total >= MAX_ENTRIES || (new_keyword && self.by_keyword.len() >= MAX_KEYWORDS) {
                return Err(Refused::IndexFull);
            }
        }
        let slot = self.by_keyword.entry(keyword.to_owned()).or_default();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (_, p) in slot.keys() {
            *counts.entry(p.as_str()).or_default() += 1;
        }
        let mine = counts.get(provider.as_str()).copied().unwrap_or(0);
        if mine >= MAX_ENTRIES_PER_PROVIDER_PER_KEYWORD {
            return Err(Refused::ProviderKeywordFull);
        }
        if slot.len() >= MAX_ENTRIES_PER_KEYWORD {
            // Room is made at the expense of the provider holding the most of this keyword,
            // and only if it holds more than the newcomer: a flood of one publisher cannot
            // push out the lone entry of another.
            let (top, top_count) = counts
                .iter()
                .max_by_key(|(p, n)| (**n, *p))
                .map(|(p, n)| ((*p).to_owned(), *n))
                .expect("a full slot has providers");
            if top_count <= mine + 1 {
                return Err(Refused::KeywordFull);
            }
            let victim = slot
                .iter()
                .filter(|((_, p), _)| *p == top)
                .min_by_key(|(_, h)| h.expires)
                .map(|(k, _)| k.clone())
                .expect("the top provider has entries here");
            slot.remove(&victim);
            self.total -= 1;
            if let Some(n) = self.per_provider.get_mut(&top) {
                *n -= 1;
                if *n == 0 {
                    self.per_provider.remove(&top);
                }
            }
        }
        slot.insert(key, held);
        self.total += 1;
        *self.per_provider.entry(provider).or_default() += 1;
        Ok(())
    }

    /// Entries under `keyword` whose names contain every keyword in `all`.
    pub fn query(&self, keyword: &str, all: &[String], now: Instant) -> Vec<Entry> {
        let Some(slot) = self.by_keyword.get(keyword) else {
            return Vec::new();
        };
        slot.values()
            .filter(|h| h.expires > now)
            .filter(|h| all.iter().all(|k| h.keywords.contains(k)))
            .take(MAX_ENTRIES_PER_MESSAGE)
            .map(|h| h.entry.clone())
            .collect()
    }

    pub fn expire(&mut self, now: Instant) {
        for slot in self.by_keyword.values_mut() {
            slot.retain(|_, h| h.expires > now);
        }
        self.by_keyword.retain(|_, slot| !slot.is_empty());
        self.per_provider.clear();
        self.total = 0;
        for (_, provider) in self.by_keyword.values().flat_map(|slot| slot.keys()) {
            *self.per_provider.entry(provider.clone()).or_default() += 1;
            self.total += 1;
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
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
                assert!(matches!(r.response, Response::Stored(1)));
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
        assert!(matches!(r.response, Response::Stored(0)));
        assert_eq!(r.refused, [Refused::NotProvider]);
        // A keyword that is not in the name (index spam).
        let r = index.handle(
            me,
            Request::Publish {
                keyword: "free".into(),
                entries: vec![entry("song.mp3", me)],
            },
            now,
        );
        assert!(matches!(r.response, Response::Stored(0)));
        assert_eq!(r.refused, [Refused::KeywordNotInName]);
        assert!(index.query("song", &[], now).is_empty());
    }

    /// Publishes `name` under `keyword` as `p`; the entry's hash is that of `name`.
    fn publish(index: &mut Index, p: PeerId, keyword: &str, name: &str, now: Instant) -> Handled {
        index.handle(
            p,
            Request::Publish {
                keyword: keyword.into(),
                entries: vec![entry(name, p)],
            },
            now,
        )
    }

    #[test]
    fn a_keyword_holds_a_bounded_number_of_entries() {
        let now = Instant::now();
        let mut index = Index::default();
        for i in 0..MAX_ENTRIES_PER_KEYWORD + 10 {
            publish(
                &mut index,
                PeerId::random(),
                "spam",
                &format!("spam {i}"),
                now,
            );
        }
        assert_eq!(index.by_keyword["spam"].len(), MAX_ENTRIES_PER_KEYWORD);
        assert_eq!(index.len(), MAX_ENTRIES_PER_KEYWORD);
    }

    #[test]
    fn one_provider_cannot_fill_a_keyword_and_censor_a_real_file() {
        // Hardening item 2: one peer used to publish 1,000 entries under a keyword, after
        // which every other provider's entry was refused for 24 hours.
        let now = Instant::now();
        let mut index = Index::default();
        let flooder = PeerId::random();
        let mut refused = Vec::new();
        for i in 0..MAX_ENTRIES_PER_KEYWORD {
            let r = publish(
                &mut index,
                flooder,
                "matrix",
                &format!("matrix fake {i}"),
                now,
            );
            refused.extend(r.refused);
        }
        assert_eq!(
            index.by_keyword["matrix"].len(),
            MAX_ENTRIES_PER_PROVIDER_PER_KEYWORD
        );
        assert!(refused.iter().all(|r| *r == Refused::ProviderKeywordFull));
        let honest = PeerId::random();
        let r = publish(&mut index, honest, "matrix", "the matrix 1999.mkv", now);
        assert!(matches!(r.response, Response::Stored(1)));
        let hits = index.query("matrix", &["1999".into()], now);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].provider, honest.to_string());
    }

    #[test]
    fn a_full_keyword_makes_room_at_the_expense_of_its_biggest_publisher() {
        let now = Instant::now();
        let mut index = Index::default();
        // Many flooders, each at its per-keyword cap, fill the keyword.
        let flooders: Vec<PeerId> =
            (0..MAX_ENTRIES_PER_KEYWORD / MAX_ENTRIES_PER_PROVIDER_PER_KEYWORD + 1)
                .map(|_| PeerId::random())
                .collect();
        for (f, p) in flooders.iter().enumerate() {
            for i in 0..MAX_ENTRIES_PER_PROVIDER_PER_KEYWORD {
                publish(&mut index, *p, "song", &format!("song {f} {i}"), now);
            }
        }
        assert_eq!(index.by_keyword["song"].len(), MAX_ENTRIES_PER_KEYWORD);
        // An honest provider with one entry still gets in; a flooder loses one.
        let honest = PeerId::random();
        let r = publish(&mut index, honest, "song", "a real song.mp3", now);
        assert!(matches!(r.response, Response::Stored(1)), "{:?}", r.refused);
        assert_eq!(index.by_keyword["song"].len(), MAX_ENTRIES_PER_KEYWORD);
        assert_eq!(index.query("song", &["real".into()], now).len(), 1);
        // Republishing an entry it holds costs a provider nothing.
        let r = publish(&mut index, honest, "song", "a real song.mp3", now);
        assert!(matches!(r.response, Response::Stored(1)));
        assert_eq!(index.len(), MAX_ENTRIES_PER_KEYWORD);
    }

    #[test]
    fn one_provider_holds_a_bounded_number_of_entries_in_all() {
        let now = Instant::now();
        let mut index = Index::default();
        let p = PeerId::random();
        let mut refused = 0;
        for i in 0..MAX_ENTRIES_PER_PROVIDER + 5 {
            let kw = format!("kw{i}");
            refused += publish(&mut index, p, &kw, &format!("{kw} file"), now)
                .refused
                .len();
        }
        assert_eq!(index.len(), MAX_ENTRIES_PER_PROVIDER);
        assert_eq!(refused, 5);
        // Once its entries expire, it can publish again.
        let later = now + ENTRY_TTL + Duration::from_secs(1);
        let r = publish(&mut index, p, "fresh", "fresh file", later);
        assert!(matches!(r.response, Response::Stored(1)));
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn an_oversized_query_is_refused() {
        let mut index = Index::default();
        let all: Vec<String> = (0..MAX_KEYWORDS_PER_NAME + 1)
            .map(|i| format!("k{i}"))
            .collect();
        let r = index.handle(
            PeerId::random(),
            Request::Query {
                keyword: "k0".into(),
                all,
            },
            Instant::now(),
        );
        assert!(matches!(r.response, Response::Refused(_)));
        assert_eq!(r.refused, [Refused::Malformed]);
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
