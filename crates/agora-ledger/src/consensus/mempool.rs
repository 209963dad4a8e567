//! Transactions waiting for a block: verified once on admission, ordered by sender and sequence.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::account::Account;
use crate::state::{State, TxError};
use crate::tx::{Hash, Tx};

#[derive(Clone, Copy, Debug)]
pub struct MempoolLimits {
    /// Most transactions held at once.
    pub max_txs: usize,
    /// How far past an account's next sequence number a transaction may be queued.
    pub max_ahead: u64,
}

impl Default for MempoolLimits {
    fn default() -> Self {
        MempoolLimits {
            max_txs: 100_000,
            max_ahead: 256,
        }
    }
}

/// Why the mempool did not take a transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Rejected {
    #[error("{0}")]
    Invalid(TxError),
    #[error("another transaction with sequence {seq} from this account is already pending")]
    Conflict { seq: u64 },
    #[error("sequence {seq} is more than {max_ahead} past the account's next ({next})")]
    TooFarAhead { seq: u64, next: u64, max_ahead: u64 },
    #[error("the mempool is full; try again shortly")]
    Full,
}

#[derive(Default)]
pub(crate) struct Mempool {
    limits: MempoolLimits,
    accounts: BTreeMap<(Account, u64), (Hash, Tx)>,
    /// Committee changes, by hash.
    others: BTreeMap<Hash, Tx>,
    hashes: HashMap<Hash, Option<(Account, u64)>>,
}

impl Mempool {
    pub fn new(limits: MempoolLimits) -> Self {
        Mempool {
            limits,
            ..Default::default()
        }
    }

    pub fn contains(&self, hash: &Hash) -> bool {
        self.hashes.contains_key(hash)
    }

    /// Admits a transaction checked against `state` (the last finalized state). Returns its hash
    /// and whether it was new. Signatures are verified here, once; blocks built from the
    /// mempool skip that check.
    pub fn admit(&mut self, tx: Tx, state: &State) -> Result<(Hash, bool), Rejected> {
        let hash = tx.hash();
        if self.hashes.contains_key(&hash) {
            return Ok((hash, false));
        }
        if self.hashes.len() >= self.limits.max_txs {
            return Err(Rejected::Full);
        }
        match &tx {
            Tx::Account(signed) => {
                let body = &signed.body;
                let next = state.account(&body.from).seq;
                if body.seq == next {
                    state.check(&tx, false).map_err(Rejected::Invalid)?;
                } else {
                    // Queued behind transactions not yet final: check what does not depend
                    // on them now, the rest when a block is built.
                    if body.seq < next {
                        return Err(Rejected::Invalid(TxError::WrongSequence {
                            expected: next,
                            got: body.seq,
                        }));
                    }
                    if body.seq - next > self.limits.max_ahead {
                        return Err(Rejected::TooFarAhead {
                            seq: body.seq,
                            next,
                            max_ahead: self.limits.max_ahead,
                        });
                    }
                    state.check_static(signed).map_err(Rejected::Invalid)?;
                    if !signed.signature_valid(&state.chain) {
                        return Err(Rejected::Invalid(TxError::BadSignature));
                    }
                }
                let key = (body.from, body.seq);
                if self.accounts.contains_key(&key) {
                    return Err(Rejected::Conflict { seq: body.seq });
                }
                self.accounts.insert(key, (hash, tx));
                self.hashes.insert(hash, Some(key));
            }
            Tx::Committee(_) => {
                state.check(&tx, false).map_err(Rejected::Invalid)?;
                self.others.insert(hash, tx);
                self.hashes.insert(hash, None);
            }
        }
        Ok((hash, true))
    }

    /// Candidates for a block on top of `state`, in an order that applies: committee changes,
    /// then each account's transactions by sequence. All signatures were verified on admission.
    pub fn candidates<'a>(&'a self, state: &'a State) -> impl Iterator<Item = (Tx, bool)> + 'a {
        let others = self.others.values().map(|tx| (tx.clone(), true));
        let accounts = self
            .accounts
            .iter()
            .filter(move |((account, seq), _)| *seq >= state.account(account).seq)
            .map(|(_, (_, tx))| (tx.clone(), true));
        others.chain(accounts)
    }

    /// Drops what `state` (newly finalized) makes impossible: used sequence numbers and
    /// committee changes that no longer apply.
    pub fn prune(&mut self, state: &State) {
        let hashes = &mut self.hashes;
        self.accounts.retain(|(account, seq), (hash, _)| {
            let keep = *seq >= state.account(account).seq;
            if !keep {
                hashes.remove(hash);
            }
            keep
        });
        self.others.retain(|hash, tx| {
            let keep = state.check(tx, true).is_ok();
            if !keep {
                hashes.remove(hash);
            }
            keep
        });
    }
}
