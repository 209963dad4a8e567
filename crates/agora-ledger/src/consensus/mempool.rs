//! Transactions waiting for a block: verified once on admission, ordered by sender and sequence.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use ed25519_dalek::VerifyingKey;

use crate::account::Account;
use crate::state::{State, TxError};
use crate::tx::{CommitteeTx, Hash, SignedAccountTx, Tx};

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

/// Most committee changes held at once (they need the current nonce, so only one can apply
/// per nonce; a few compete at most).
const MAX_COMMITTEE_TXS: usize = 16;

#[derive(Default)]
pub(crate) struct Mempool {
    limits: MempoolLimits,
    accounts: BTreeMap<(Account, u64), (Hash, Tx)>,
    hashes: HashMap<Hash, (Account, u64)>,
    /// Committee changes, each fully verified on admission (approvals included).
    committee: HashMap<Hash, CommitteeTx>,
    /// Decompressed keys of accounts seen (`None`: not a curve point), so each is decompressed
    /// once rather than for every transaction.
    keys: HashMap<Account, Option<VerifyingKey>>,
}

/// Past this many cached keys the cache starts over.
const MAX_CACHED_KEYS: usize = 200_000;

impl Mempool {
    pub fn new(limits: MempoolLimits) -> Self {
        Mempool {
            limits,
            ..Default::default()
        }
    }

    /// Admits a transaction checked against `state` (the last finalized state). Returns its hash
    /// and whether it was new. Signatures are verified here, once; blocks built from the
    /// mempool skip that check.
    pub fn admit(&mut self, tx: Tx, state: &State) -> Result<(Hash, bool), Rejected> {
        let hash = tx.hash();
        if self.hashes.contains_key(&hash) || self.committee.contains_key(&hash) {
            return Ok((hash, false));
        }
        if self.hashes.len() >= self.limits.max_txs {
            return Err(Rejected::Full);
        }
        match &tx {
            Tx::Account(signed) => {
                let body = &signed.body;
                let next = state.account(&body.from).seq;
                if body.seq > next && body.seq - next > self.limits.max_ahead {
                    return Err(Rejected::TooFarAhead {
                        seq: body.seq,
                        next,
                        max_ahead: self.limits.max_ahead,
                    });
                }
                state.check_queued(signed).map_err(Rejected::Invalid)?;
                let crate::tx::Action::Transfer { to, .. } = &body.action;
                if self.key(to).is_none() {
                    return Err(Rejected::Invalid(TxError::BadRecipient));
                }
                if !self.signed_by_sender(signed, &state.chain) {
                    return Err(Rejected::Invalid(TxError::BadSignature));
                }
                let key = (body.from, body.seq);
                if self.accounts.contains_key(&key) {
                    return Err(Rejected::Conflict { seq: body.seq });
                }
                self.accounts.insert(key, (hash, tx));
                self.hashes.insert(hash, key);
            }
            Tx::Committee(change) => {
                // Rare and cheap to check in full: nonce, usefulness and every approval.
                state.check(&tx, false).map_err(Rejected::Invalid)?;
                if self.committee.len() >= MAX_COMMITTEE_TXS {
                    return Err(Rejected::Full);
                }
                self.committee.insert(hash, change.clone());
            }
        }
        Ok((hash, true))
    }

    /// Whether a transaction in someone else's block is correctly signed: admitted here already
    /// (verified then), or verified now with the cached key.
    pub fn signature_checked(&mut self, tx: &Tx, chain: &Hash) -> bool {
        let hash = tx.hash();
        if self.hashes.contains_key(&hash) || self.committee.contains_key(&hash) {
            // (A committee change's approvals are verified again when it applies anyway.)
            return true;
        }
        match tx {
            Tx::Account(signed) => self.signed_by_sender(signed, chain),
            Tx::Committee(_) => false,
        }
    }

    /// Verifies the sender's signature with its cached key.
    fn signed_by_sender(&mut self, signed: &SignedAccountTx, chain: &Hash) -> bool {
        self.key(&signed.body.from)
            .is_some_and(|key| signed.signature_valid_with(&key, chain))
    }

    fn key(&mut self, account: &Account) -> Option<VerifyingKey> {
        if self.keys.len() >= MAX_CACHED_KEYS {
            self.keys.clear();
        }
        *self.keys.entry(*account).or_insert_with(|| account.key())
    }

    /// Candidates for a block on top of `state`, in an order that applies: committee changes
    /// for the current nonce, then each account's transactions by sequence. All signatures
    /// were verified on admission.
    pub fn candidates<'a>(&'a self, state: &'a State) -> impl Iterator<Item = (Tx, bool)> + 'a {
        let committee = self
            .committee
            .values()
            .filter(move |c| c.nonce == state.committee_nonce)
            .map(|c| (Tx::Committee(c.clone()), true));
        let accounts = self
            .accounts
            .iter()
            .filter(move |((account, seq), _)| *seq >= state.account(account).seq)
            .map(|(_, (_, tx))| (tx.clone(), true));
        committee.chain(accounts)
    }

    /// Whether anything could go into a block on top of `state`.
    pub fn has_candidates(&self, state: &State) -> bool {
        self.candidates(state).next().is_some()
    }

    /// Drops what `state` (newly finalized) makes impossible: used sequence numbers and
    /// committee nonces.
    pub fn prune(&mut self, state: &State) {
        self.committee
            .retain(|_, c| c.nonce >= state.committee_nonce);
        let hashes = &mut self.hashes;
        self.accounts.retain(|(account, seq), (hash, _)| {
            let keep = *seq >= state.account(account).seq;
            if !keep {
                hashes.remove(hash);
            }
            keep
        });
    }
}
