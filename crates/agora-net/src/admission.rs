//! Admission control: the budgets every inbound path checks before it changes any state, and
//! the refusal counters behind them.
//!
//! Each application names its budgets as constants next to the code that checks them (the
//! README's security section lists them all). What they share lives here:
//!
//! - [`Refusals`]: one Prometheus counter family, `agora_refusals_total{budget="…"}`, that every
//!   refusal increments under the name of the budget that refused it. It is reached through
//!   [`Handle::admission`](crate::Handle::admission), so every service counts in the same place.
//! - [`RateLimiter`]: a token bucket per key (a peer, an author key) in a table of bounded size.
//!   A bucket that has refilled completely carries no information, so the table makes room by
//!   forgetting full buckets; when every bucket is partly spent (a flood of new keys), a new key
//!   is refused rather than an old key's spending forgotten.
//! - [`PeerSlots`]: how many requests of one peer are in flight at once.
//!
//! None of these allocate per request beyond one table entry per key, and every table has a
//! named bound.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
    time::Instant,
};

use libp2p::PeerId;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

/// The label of a refusal counter: the budget's name, e.g. `chat.direct.peer_rate`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabel {
    budget: &'static str,
}

/// The node's refusal counters, one per budget. Cheap to clone; every clone counts into the
/// same family.
#[derive(Clone, Default)]
pub struct Refusals {
    family: Family<BudgetLabel, Counter>,
}

impl std::fmt::Debug for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refusals").finish_non_exhaustive()
    }
}

impl Refusals {
    /// Registers the family as `agora_refusals_total` in `registry`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.sub_registry_with_prefix("agora").register(
            "refusals",
            "Inbound work refused by an admission budget, by budget name",
            self.family.clone(),
        );
    }

    /// Counts one refusal by `budget`.
    pub fn refuse(&self, budget: &'static str) {
        self.family.get_or_create(&BudgetLabel { budget }).inc();
        tracing::debug!(budget, "refused by admission budget");
    }

    /// How many refusals `budget` has counted (for tests and status output).
    pub fn count(&self, budget: &'static str) -> u64 {
        self.family.get_or_create(&BudgetLabel { budget }).get()
    }
}

/// A token bucket: `burst` tokens at most, refilled at `per_sec` tokens a second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

impl Rate {
    pub const fn new(per_sec: f64, burst: f64) -> Self {
        Rate { per_sec, burst }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(&self, rate: Rate, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate.per_sec).min(rate.burst)
    }
}

/// Why a [`RateLimiter`] said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateRefusal {
    /// This key spent its budget; it refills with time.
    Exhausted,
    /// The table of keys is full of keys that are all spending: a new key must wait.
    TooManyKeys,
}

/// Token buckets per key in a table of at most `max_keys` entries. Not internally locked: put
/// it behind the lock of the state it guards, or use [`SharedRateLimiter`].
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        RateLimiter {
            rate,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes `cost` tokens from `key`'s bucket if it has them. Nothing is taken on a refusal.
    pub fn check(&mut self, key: &K, cost: f64, now: Instant) -> Result<(), RateRefusal> {
        let rate = self.rate;
        if let Some(bucket) = self.buckets.get_mut(key) {
            let tokens = bucket.refilled(rate, now);
            if tokens < cost {
                return Err(RateRefusal::Exhausted);
            }
            *bucket = Bucket {
                tokens: tokens - cost,
                at: now,
            };
            return Ok(());
        }
        if cost > rate.burst {
            return Err(RateRefusal::Exhausted);
        }
        if self.buckets.len() >= self.max_keys {
            // A full bucket is the same as no bucket: forget those.
            self.buckets
                .retain(|_, b| b.refilled(rate, now) < rate.burst);
            if self.buckets.len() >= self.max_keys {
                return Err(RateRefusal::TooManyKeys);
            }
        }
        self.buckets.insert(
            key.clone(),
            Bucket {
                tokens: rate.burst - cost,
                at: now,
            },
        );
        Ok(())
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// A [`RateLimiter`] behind its own lock, for paths that hold no other lock.
#[derive(Debug)]
pub struct SharedRateLimiter<K>(Mutex<RateLimiter<K>>);

impl<K: Hash + Eq + Clone> SharedRateLimiter<K> {
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        SharedRateLimiter(Mutex::new(RateLimiter::new(rate, max_keys)))
    }

    pub fn check(&self, key: &K, cost: f64) -> Result<(), RateRefusal> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(key, cost, Instant::now())
    }

    /// [`Self::check`] for an inbound request: a refusal is counted on `refusals` as `budget`
    /// and comes back as the reason to send on the wire, naming the budget.
    pub fn admit(
        &self,
        key: &K,
        cost: f64,
        refusals: &Refusals,
        budget: &'static str,
    ) -> Result<(), String> {
        self.check(key, cost).map_err(|refusal| {
            refusals.refuse(budget);
            match refusal {
                RateRefusal::Exhausted => format!("{budget}: too many requests; retry later"),
                RateRefusal::TooManyKeys => {
                    format!("{budget}: too many peers at once; retry later")
                }
            }
        })
    }
}

/// Requests in flight per peer, at most `per_peer` each. The table holds only peers with a
/// request in flight, so it is bounded by whatever bounds the requests themselves.
#[derive(Debug, Clone)]
pub struct PeerSlots {
    per_peer: usize,
    inflight: Arc<Mutex<HashMap<PeerId, usize>>>,
}

/// One request's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct PeerSlot {
    peer: PeerId,
    inflight: Arc<Mutex<HashMap<PeerId, usize>>>,
}

impl PeerSlots {
    pub fn new(per_peer: usize) -> Self {
        PeerSlots {
            per_peer: per_peer.max(1),
            inflight: Arc::default(),
        }
    }

    /// A slot for one request of `peer`, or `None` when it has `per_peer` in flight already.
    pub fn try_acquire(&self, peer: PeerId) -> Option<PeerSlot> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let n = inflight.entry(peer).or_insert(0);
        if *n >= self.per_peer {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peer,
            inflight: self.inflight.clone(),
        })
    }

    /// Requests of `peer` in flight now.
    pub fn inflight(&self, peer: &PeerId) -> usize {
        let inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        inflight.get(peer).copied().unwrap_or(0)
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = inflight.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                inflight.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_refuses_past_its_burst_and_refills_with_time() {
        let mut limiter = RateLimiter::new(Rate::new(10.0, 5.0), 8);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(limiter.check(&1u8, 1.0, t0), Ok(()));
        }
        assert_eq!(limiter.check(&1, 1.0, t0), Err(RateRefusal::Exhausted));
        // Another key has its own budget.
        assert_eq!(limiter.check(&2, 1.0, t0), Ok(()));
        // 10 tokens a second: 0.3 s later three more.
        let t1 = t0 + Duration::from_millis(300);
        for _ in 0..3 {
            assert_eq!(limiter.check(&1, 1.0, t1), Ok(()));
        }
        assert_eq!(limiter.check(&1, 1.0, t1), Err(RateRefusal::Exhausted));
    }

    #[test]
    fn a_cost_above_the_burst_is_refused_without_a_bucket() {
        let mut limiter = RateLimiter::new(Rate::new(1.0, 4.0), 8);
        assert_eq!(
            limiter.check(&1u8, 5.0, Instant::now()),
            Err(RateRefusal::Exhausted)
        );
        assert!(limiter.is_empty());
    }

    #[test]
    fn the_table_forgets_full_buckets_but_refuses_new_keys_while_all_are_spending() {
        let mut limiter = RateLimiter::new(Rate::new(1.0, 2.0), 3);
        let t0 = Instant::now();
        for key in 0..3u32 {
            limiter.check(&key, 1.0, t0).unwrap();
        }
        // Every tracked key is mid-spend: a fourth key cannot push one out.
        assert_eq!(limiter.check(&99, 1.0, t0), Err(RateRefusal::TooManyKeys));
        assert_eq!(limiter.len(), 3);
        // A second later each has refilled to its burst: they are forgotten to make room.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(limiter.check(&99, 1.0, t1), Ok(()));
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn peer_slots_are_counted_per_peer_and_freed_on_drop() {
        let slots = PeerSlots::new(2);
        let (a, b) = (PeerId::random(), PeerId::random());
        let s1 = slots.try_acquire(a).unwrap();
        let _s2 = slots.try_acquire(a).unwrap();
        assert!(slots.try_acquire(a).is_none());
        assert!(slots.try_acquire(b).is_some());
        drop(s1);
        assert_eq!(slots.inflight(&a), 1);
        assert!(slots.try_acquire(a).is_some());
    }

    #[test]
    fn refusals_are_counted_by_budget() {
        let refusals = Refusals::default();
        let mut registry = Registry::default();
        refusals.register(&mut registry);
        refusals.refuse("test.budget");
        refusals.refuse("test.budget");
        assert_eq!(refusals.count("test.budget"), 2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("agora_refusals_total{budget=\"test.budget\"} 2"),
            "{text}"
        );
    }
}
