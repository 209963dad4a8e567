//! Room under the storage quota. Cached replicas (data the store owns, not pinned, not the
//! node's own shares) are the only thing ever evicted, oldest first, and only as many as
//! needed. The service asks [`could_fit`] when a peer asks for a replica (a claim: nothing is
//! evicted then) and [`plan`] as verified data of replicas arrives.

/// A blob that may be evicted: its id, the bytes it takes under the quota (data and
/// outboard), and when it was added (older goes first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<H> {
    pub id: H,
    pub bytes: u64,
    pub added: u64,
}

/// Not even evicting every candidate makes `needed` fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{needed} more bytes do not fit under the quota of {quota}")]
pub struct NoRoom {
    pub needed: u64,
    pub quota: u64,
}

/// Whether `needed` more bytes could fit under `quota` if every candidate were evicted.
pub fn could_fit<H>(usage: u64, candidates: &[Candidate<H>], needed: u64, quota: u64) -> bool {
    let evictable: u64 = candidates.iter().map(|c| c.bytes).sum();
    usage.saturating_sub(evictable).saturating_add(needed) <= quota
}

/// The candidates to evict, oldest first, so that `usage + needed` fits under `quota`: none
/// when it fits already, and the shortest prefix of the oldest otherwise.
pub fn plan<H: Copy>(
    usage: u64,
    mut candidates: Vec<Candidate<H>>,
    needed: u64,
    quota: u64,
) -> Result<Vec<H>, NoRoom> {
    let mut over = usage.saturating_add(needed).saturating_sub(quota);
    if over == 0 {
        return Ok(Vec::new());
    }
    candidates.sort_by_key(|c| c.added);
    let mut chosen = Vec::new();
    for c in candidates {
        if over == 0 {
            break;
        }
        over = over.saturating_sub(c.bytes);
        chosen.push(c.id);
    }
    if over > 0 {
        return Err(NoRoom { needed, quota });
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn c(id: u8, bytes: u64, added: u64) -> Candidate<u8> {
        Candidate { id, bytes, added }
    }

    #[test]
    fn nothing_is_evicted_while_it_fits() {
        assert_eq!(plan(50, vec![c(1, 10, 0)], 50, 100), Ok(vec![]));
    }

    #[test]
    fn the_oldest_go_first_and_no_more_than_needed() {
        let cands = vec![c(1, 30, 5), c(2, 30, 1), c(3, 30, 3)];
        assert_eq!(plan(90, cands, 20, 100), Ok(vec![2]));
        let cands = vec![c(1, 30, 5), c(2, 30, 1), c(3, 30, 3)];
        assert_eq!(plan(90, cands, 45, 100), Ok(vec![2, 3]));
    }

    #[test]
    fn no_room_evicts_nothing() {
        let cands = vec![c(1, 10, 0)];
        assert_eq!(
            plan(90, cands.clone(), 30, 100),
            Err(NoRoom {
                needed: 30,
                quota: 100
            })
        );
        assert!(!could_fit(90, &cands, 30, 100));
        assert!(could_fit(90, &cands, 20, 100));
    }

    proptest! {
        /// A plan always makes the bytes fit, evicts only candidates, the oldest first, and
        /// would not fit without its last eviction; `could_fit` says exactly when one exists.
        #[test]
        fn a_plan_is_the_shortest_oldest_prefix_that_fits(
            sizes in prop::collection::vec((1u64..1_000, 0u64..100), 0..20),
            pinned in 0u64..5_000,
            needed in 0u64..5_000,
            quota in 0u64..10_000,
        ) {
            let cands: Vec<Candidate<usize>> = sizes
                .iter()
                .enumerate()
                .map(|(i, (bytes, added))| Candidate { id: i, bytes: *bytes, added: *added })
                .collect();
            let usage = pinned + cands.iter().map(|c| c.bytes).sum::<u64>();
            let fits = could_fit(usage, &cands, needed, quota);
            match plan(usage, cands.clone(), needed, quota) {
                Err(_) => prop_assert!(!fits),
                Ok(chosen) => {
                    prop_assert!(fits);
                    let freed: u64 = chosen.iter().map(|i| cands[*i].bytes).sum();
                    prop_assert!(usage + needed - freed <= quota);
                    if let Some(last) = chosen.last() {
                        prop_assert!(usage + needed - (freed - cands[*last].bytes) > quota);
                    }
                    // Oldest first: nothing left behind is older than something taken.
                    let newest_taken = chosen.iter().map(|i| cands[*i].added).max();
                    if let Some(newest) = newest_taken {
                        let kept_older = cands
                            .iter()
                            .filter(|c| !chosen.contains(&c.id))
                            .any(|c| c.added < newest);
                        prop_assert!(!kept_older);
                    }
                }
            }
        }
    }
}
