//! `agora-testbed sim`: Kademlia at scales one machine cannot run as processes.
//!
//! A model of the DHT Agora runs (libp2p-kad with its defaults: k = 20, α = 3), in one
//! process: node ids and the XOR metric come from libp2p-kad itself ([`KBucketKey`]: SHA-256
//! of the peer id), routing tables are 256 k-buckets that keep their oldest live entries (as
//! libp2p-kad does by pinging the least recently seen before evicting it), and every node joins
//! the way an Agora node does: a lookup of its own id through a bootstrap peer, learning every
//! peer it hears of and being learnt by every peer it asks. Lookups are iterative: each round
//! asks the α closest not yet asked, and the lookup ends when the k closest known have answered.
//! Churn kills a fraction of the nodes after the tables are built; the dead stay in others'
//! tables and cost a timed-out request when asked, as in a real network.
//!
//! This is a model of the protocol, not the libp2p code running: it measures how hops, success
//! and messages per lookup grow with the network, which the loopback and namespace tests cannot.

use std::collections::{BTreeSet, HashMap, HashSet};

use libp2p::{PeerId, kad::KBucketKey};
use serde_json::{Value, json};

const K: usize = 20;
const ALPHA: usize = 3;

struct Node {
    key: KBucketKey<PeerId>,
    /// Bucket index (0 = farthest half … 255) → up to K peers, oldest first.
    buckets: HashMap<u32, Vec<usize>>,
    alive: bool,
}

struct Net {
    nodes: Vec<Node>,
}

/// What one lookup cost.
struct Lookup {
    found: bool,
    /// Rounds until the target's address was first learnt (the hops that matter for reaching
    /// a peer by id).
    found_at: Option<usize>,
    /// Rounds until the query ended (the K closest answered).
    rounds: usize,
    messages: usize,
}

impl Net {
    fn bucket(&self, of: usize, other: usize) -> Option<u32> {
        self.nodes[of].key.distance(&self.nodes[other].key).ilog2()
    }

    /// Adds `other` to `of`'s table unless its bucket is full of live peers.
    fn learn(&mut self, of: usize, other: usize) {
        if of == other {
            return;
        }
        let Some(b) = self.bucket(of, other) else {
            return;
        };
        let (nodes, me) = (&self.nodes, &self.nodes[of]);
        let (present, len, dead) = match me.buckets.get(&b) {
            Some(bucket) => (
                bucket.contains(&other),
                bucket.len(),
                bucket.iter().position(|p| !nodes[*p].alive),
            ),
            None => (false, 0, None),
        };
        if present {
            return;
        }
        let bucket = self.nodes[of].buckets.entry(b).or_default();
        if len < K {
            bucket.push(other);
        } else if let Some(i) = dead {
            // The least recently seen entry did not answer its ping: replaced.
            bucket.remove(i);
            bucket.push(other);
        }
    }

    /// The K peers in `of`'s table closest to `target`.
    fn closest(&self, of: usize, target: &KBucketKey<PeerId>) -> Vec<usize> {
        let mut all: Vec<usize> = self.nodes[of].buckets.values().flatten().copied().collect();
        all.sort_by_key(|p| self.nodes[*p].key.distance(target));
        all.truncate(K);
        all
    }

    /// An iterative lookup of `target` from `from`; `learn` makes the asked peers and the
    /// asker learn each other (as during joins).
    fn lookup(&mut self, from: usize, target: usize, learn: bool) -> Lookup {
        let tkey = self.nodes[target].key;
        let mut known: BTreeSet<(libp2p::kad::KBucketDistance, usize)> = self
            .closest(from, &tkey)
            .into_iter()
            .map(|p| (self.nodes[p].key.distance(&tkey), p))
            .collect();
        let mut asked: HashSet<usize> = HashSet::new();
        let mut answered: HashSet<usize> = HashSet::new();
        let (mut rounds, mut messages) = (0, 0);
        let mut found_at = known.iter().any(|(_, p)| *p == target).then_some(0);
        loop {
            // Done when the K closest known have all answered (or failed).
            let frontier: Vec<usize> = known
                .iter()
                .map(|(_, p)| *p)
                .filter(|p| !asked.contains(p))
                .take(ALPHA)
                .collect();
            let k_closest_done = known
                .iter()
                .filter(|(_, p)| !asked.contains(p) || answered.contains(p))
                .take(K)
                .all(|(_, p)| asked.contains(p));
            if frontier.is_empty() || k_closest_done || rounds > 64 {
                break;
            }
            rounds += 1;
            for p in frontier {
                asked.insert(p);
                messages += 1;
                if !self.nodes[p].alive {
                    continue;
                }
                answered.insert(p);
                let reply = self.closest(p, &tkey);
                if learn {
                    self.learn(p, from);
                    self.learn(from, p);
                }
                for q in reply {
                    if q == target && found_at.is_none() {
                        found_at = Some(rounds);
                    }
                    if q != from {
                        known.insert((self.nodes[q].key.distance(&tkey), q));
                        if learn {
                            self.learn(from, q);
                        }
                    }
                }
            }
        }
        let found = from == target
            || answered.contains(&target)
            || known.iter().any(|(_, p)| *p == target) && self.nodes[target].alive;
        Lookup {
            found,
            found_at,
            rounds,
            messages,
        }
    }
}

/// Seeded xorshift, so that runs (the simulation, the scenarios) repeat with `--seed`.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A peer id drawn from the seed (an ed25519 key from 32 seeded bytes), so a run repeats.
    fn peer_id(&mut self) -> PeerId {
        let mut bytes = [0u8; 32];
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        libp2p::identity::Keypair::ed25519_from_bytes(bytes)
            .expect("any 32 bytes are an ed25519 secret")
            .public()
            .to_peer_id()
    }
}

fn pct(sorted: &[usize], p: usize) -> usize {
    sorted
        .get((sorted.len().saturating_sub(1)) * p / 100)
        .copied()
        .unwrap_or(0)
}

/// Builds a network of `n` nodes by joins, applies churn, runs `lookups` lookups of random
/// live peers from random live peers.
pub fn run_one(n: usize, churn: f64, lookups: usize, seed: u64) -> Value {
    let mut rng = Rng::new(seed);
    let mut net = Net {
        nodes: (0..n)
            .map(|_| Node {
                key: KBucketKey::from(rng.peer_id()),
                buckets: HashMap::new(),
                alive: true,
            })
            .collect(),
    };
    // Joins, in order: each new node knows one earlier node and looks itself up through it.
    let mut join_messages = 0;
    for i in 1..n {
        let boot = rng.below(i);
        net.learn(i, boot);
        net.learn(boot, i);
        join_messages += net.lookup(i, i, true).messages;
    }
    // Churn: a fraction of the nodes vanish without a word.
    let mut dead = 0;
    let want_dead = ((n as f64) * churn).round() as usize;
    while dead < want_dead {
        let v = rng.below(n);
        if net.nodes[v].alive {
            net.nodes[v].alive = false;
            dead += 1;
        }
    }
    let live: Vec<usize> = (0..n).filter(|i| net.nodes[*i].alive).collect();
    let (mut ok, mut rounds, mut messages, mut hops) = (0, Vec::new(), Vec::new(), Vec::new());
    for _ in 0..lookups {
        let from = live[rng.below(live.len())];
        let mut target = live[rng.below(live.len())];
        while target == from && live.len() > 1 {
            target = live[rng.below(live.len())];
        }
        let l = net.lookup(from, target, false);
        ok += usize::from(l.found);
        if let Some(h) = l.found_at {
            hops.push(h);
        }
        rounds.push(l.rounds);
        messages.push(l.messages);
    }
    rounds.sort_unstable();
    messages.sort_unstable();
    hops.sort_unstable();
    let table: usize = net
        .nodes
        .iter()
        .map(|n| n.buckets.values().map(Vec::len).sum::<usize>())
        .sum::<usize>()
        / n.max(1);
    json!({
        "nodes": n,
        "churn": churn,
        "lookups": lookups,
        "success": ok as f64 / lookups.max(1) as f64,
        "hops_p50": pct(&hops, 50),
        "hops_p95": pct(&hops, 95),
        "hops_max": hops.last().copied().unwrap_or(0),
        "rounds_p50": pct(&rounds, 50),
        "rounds_p95": pct(&rounds, 95),
        "messages_mean": messages.iter().sum::<usize>() as f64 / lookups.max(1) as f64,
        "messages_p95": pct(&messages, 95),
        "routing_table_mean": table,
        "join_messages_mean": join_messages as f64 / n.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_networks_find_every_peer_in_few_hops_and_runs_repeat_by_seed() {
        let a = run_one(200, 0.0, 200, 7);
        assert_eq!(a["success"].as_f64(), Some(1.0), "{a}");
        assert!(a["hops_p50"].as_u64().unwrap() <= 2, "{a}");
        assert_eq!(run_one(200, 0.0, 200, 7), a, "same seed, same figures");
        // With 30% of the nodes gone silently lookups still succeed, at a cost.
        let churned = run_one(200, 0.3, 200, 7);
        assert_eq!(churned["success"].as_f64(), Some(1.0), "{churned}");
        assert!(
            churned["messages_mean"].as_f64() > a["messages_mean"].as_f64(),
            "{churned}"
        );
    }
}
