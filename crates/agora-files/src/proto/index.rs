//! The keyword index a node holds for others: entries `{name, size, hash, provider}` under
//! each keyword, with the budgets that keep one publisher from filling it or censoring a real
//! file (see [`crate::search`] for the protocol). Pure: the time comes in as `now`.

use std::{collections::HashMap, time::Instant};

use libp2p::PeerId;

use crate::search::{
    ENTRY_TTL, Entry, MAX_ENTRIES, MAX_ENTRIES_PER_KEYWORD, MAX_ENTRIES_PER_MESSAGE,
    MAX_ENTRIES_PER_PROVIDER, MAX_ENTRIES_PER_PROVIDER_PER_KEYWORD, MAX_KEYWORD_CHARS,
    MAX_KEYWORDS, MAX_KEYWORDS_PER_NAME, MAX_NAME_BYTES, Request, Response, keywords,
};

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

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    /// An entry for `name` published by `provider` (its hash is the name's).
    pub(crate) fn entry(name: &str, provider: PeerId) -> Entry {
        Entry {
            name: name.into(),
            size: 10,
            hash: blake3::hash(name.as_bytes()).to_hex().to_string(),
            provider: provider.to_string(),
        }
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

    proptest! {
        /// Whatever a few providers publish, under whatever keywords, the index keeps its
        /// budgets and its counts agree with what it holds.
        #[test]
        fn any_publishing_keeps_the_budgets(
            ops in prop::collection::vec((0usize..4, 0usize..3, 0u32..400), 1..300),
        ) {
            let providers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
            let words = ["alpha", "beta", "gamma"];
            let now = Instant::now();
            let mut index = Index::default();
            for (p, w, n) in ops {
                let name = format!("{} file {n}", words[w]);
                let r = index.handle(
                    providers[p],
                    Request::Publish { keyword: words[w].into(), entries: vec![entry(&name, providers[p])] },
                    now,
                );
                prop_assert!(matches!(r.response, Response::Stored(_)));
            }
            let mut total = 0;
            let mut per_provider: HashMap<String, usize> = HashMap::new();
            for slot in index.by_keyword.values() {
                prop_assert!(slot.len() <= MAX_ENTRIES_PER_KEYWORD);
                let mut mine: HashMap<&str, usize> = HashMap::new();
                for (_, p) in slot.keys() {
                    *mine.entry(p.as_str()).or_default() += 1;
                    *per_provider.entry(p.clone()).or_default() += 1;
                    total += 1;
                }
                prop_assert!(mine.values().all(|n| *n <= MAX_ENTRIES_PER_PROVIDER_PER_KEYWORD));
            }
            prop_assert_eq!(total, index.len());
            prop_assert_eq!(&per_provider, &index.per_provider);
        }
    }
}
