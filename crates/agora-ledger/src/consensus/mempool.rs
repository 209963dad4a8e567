//! Transactions waiting for a block: verified once on admission, ordered by sender and sequence.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::account::Account;
use crate::state::{State, TxError};
use crate::tx::{CommitteeTx, Hash, SignedAccountTx, Tx, signatures_valid};

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
    /// Whether accounts seen have usable keys ([`Account::is_usable`]), so each key is
    /// decompressed once rather than for every transaction.
    keys: HashMap<Account, bool>,
    /// Transactions whose signatures this validator verified in a block it checked before
    /// they reached its mempool: when the relayed copy arrives it is not verified again.
    verified: HashSet<Hash>,
}

/// Past this many cached keys the cache starts over.
const MAX_CACHED_KEYS: usize = 200_000;
/// Past this many remembered block-verified transactions the memory starts over (a
/// forgotten one is merely verified once more).
const MAX_VERIFIED: usize = 200_000;

impl Mempool {
    pub fn new(limits: MempoolLimits) -> Self {
        Mempool {
            limits,
            ..Default::default()
        }
    }

    /// Admits transactions checked against `state` (the last finalized state): one answer
    /// each, in order, as if admitted one by one — the hash and whether it was new. The
    /// senders' signatures are verified here, once, in one batch; blocks built from the
    /// mempool skip that check.
    pub fn admit_batch(
        &mut self,
        txs: Vec<Tx>,
        state: &State,
    ) -> Vec<Result<(Hash, bool), Rejected>> {
        self.admit(txs, state, false)
    }

    /// [`Self::admit_batch`] for transfers whose signatures the caller already verified (off
    /// the consensus thread): only the cheap checks run here.
    pub fn admit_verified(
        &mut self,
        txs: Vec<Tx>,
        state: &State,
    ) -> Vec<Result<(Hash, bool), Rejected>> {
        self.admit(txs, state, true)
    }

    fn admit(
        &mut self,
        txs: Vec<Tx>,
        state: &State,
        signatures_verified: bool,
    ) -> Vec<Result<(Hash, bool), Rejected>> {
        let mut answers: Vec<Option<Result<(Hash, bool), Rejected>>> = vec![None; txs.len()];
        // Transfers that passed every other check, waiting for their signatures.
        let mut to_verify: Vec<(usize, Hash)> = Vec::new();
        let mut seen = HashSet::new();
        for (i, tx) in txs.iter().enumerate() {
            let hash = tx.hash();
            if self.hashes.contains_key(&hash)
                || self.committee.contains_key(&hash)
                || !seen.insert(hash)
            {
                answers[i] = Some(Ok((hash, false)));
                continue;
            }
            match tx {
                Tx::Account(signed) => match self.precheck(signed, state) {
                    Ok(()) => to_verify.push((i, hash)),
                    Err(e) => answers[i] = Some(Err(e)),
                },
                Tx::Committee(change) => {
                    // Rare and cheap to check in full: nonce, usefulness and every approval.
                    answers[i] = Some(match state.check(tx, false) {
                        Err(e) => Err(Rejected::Invalid(e)),
                        Ok(()) if self.committee.len() >= MAX_COMMITTEE_TXS => Err(Rejected::Full),
                        Ok(()) => {
                            self.committee.insert(hash, change.clone());
                            Ok((hash, true))
                        }
                    });
                }
            }
        }
        let signed: Vec<&SignedAccountTx> = to_verify
            .iter()
            .map(|(i, _)| match &txs[*i] {
                Tx::Account(signed) => signed,
                Tx::Committee(_) => unreachable!("only transfers wait for a signature check"),
            })
            .collect();
        let valid = if signatures_verified {
            vec![true; signed.len()]
        } else {
            signatures_valid(&signed, &state.chain)
        };
        drop(signed);
        let mut txs: Vec<Option<Tx>> = txs.into_iter().map(Some).collect();
        for ((i, hash), valid) in to_verify.into_iter().zip(valid) {
            let tx = txs[i].take().expect("each index once");
            answers[i] = Some(if valid {
                self.insert(tx, hash)
            } else {
                Err(Rejected::Invalid(TxError::BadSignature))
            });
        }
        answers
            .into_iter()
            .map(|a| a.expect("every transaction answered"))
            .collect()
    }

    /// Everything about a transfer but its signature and conflicts with held ones.
    fn precheck(&mut self, signed: &SignedAccountTx, state: &State) -> Result<(), Rejected> {
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
        for to in body.action.counterparties() {
            if !self.usable(&to) {
                return Err(Rejected::Invalid(TxError::BadRecipient));
            }
        }
        if !self.usable(&body.from) {
            return Err(Rejected::Invalid(TxError::BadSignature));
        }
        Ok(())
    }

    /// Holds a checked transfer unless another one took its sequence number.
    fn insert(&mut self, tx: Tx, hash: Hash) -> Result<(Hash, bool), Rejected> {
        let Some(key) = tx.sender() else {
            unreachable!("only transfers are inserted here");
        };
        if self.accounts.contains_key(&key) {
            return Err(Rejected::Conflict { seq: key.1 });
        }
        if self.hashes.len() >= self.limits.max_txs {
            return Err(Rejected::Full);
        }
        self.accounts.insert(key, (hash, tx));
        self.hashes.insert(hash, key);
        Ok((hash, true))
    }

    /// Which of a block's transactions are correctly signed by their senders: those admitted
    /// here already (verified then), the others verified now in one batch. Committee changes
    /// are left to execution, which checks their approvals.
    pub fn signatures_checked(&mut self, txs: &[Tx], chain: &Hash) -> Vec<bool> {
        let mut checked = vec![false; txs.len()];
        let mut unchecked = Vec::new();
        for (i, tx) in txs.iter().enumerate() {
            let Tx::Account(signed) = tx else { continue };
            if self.hashes.contains_key(&tx.hash()) {
                checked[i] = true;
            } else {
                unchecked.push((i, signed));
            }
        }
        let signed: Vec<&SignedAccountTx> = unchecked.iter().map(|(_, s)| *s).collect();
        for ((i, _), valid) in unchecked.iter().zip(signatures_valid(&signed, chain)) {
            checked[*i] = valid;
            if valid {
                if self.verified.len() >= MAX_VERIFIED {
                    self.verified.clear();
                }
                self.verified.insert(txs[*i].hash());
            }
        }
        checked
    }

    /// Whether a relayed transaction needs no signature check here: it is held already, its
    /// signature was verified in a block, or `state` (the last finalized) used its sequence
    /// number. The relayer checked it too; this only saves the work of checking it twice.
    pub fn known(&self, tx: &Tx, state: &State) -> bool {
        let Tx::Account(signed) = tx else {
            return false;
        };
        if signed.body.seq < state.account(&signed.body.from).seq {
            return true;
        }
        let hash = tx.hash();
        self.hashes.contains_key(&hash) || self.verified.contains(&hash)
    }

    /// [`Account::is_usable`], remembered: decompressing a key costs a quarter of a
    /// signature check.
    fn usable(&mut self, account: &Account) -> bool {
        if self.keys.len() >= MAX_CACHED_KEYS {
            self.keys.clear();
        }
        *self
            .keys
            .entry(*account)
            .or_insert_with(|| account.is_usable())
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
        let verified = &mut self.verified;
        if verified.len() > MAX_VERIFIED / 2 {
            // Most of them are final by now; start over rather than track each one's sender.
            verified.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Genesis;
    use crate::testing::{account, key};
    use crate::tx::{AccountTx, Action, SignedAccountTx};

    fn state() -> State {
        State::genesis(&Genesis {
            chain: "mempool".into(),
            validators: vec![account(9)],
            balances: (0..4).map(|i| (account(i), 1_000)).collect(),
            min_fee: 1,
            epoch_length: 100,
        })
    }

    fn signed(state: &State, from: u8, to: Account, amount: u64, seq: u64) -> SignedAccountTx {
        AccountTx {
            from: account(from),
            seq,
            fee: 1,
            action: Action::Transfer {
                to,
                amount,
                memo: None,
            },
        }
        .sign(&key(from), &state.chain)
    }

    fn pay(state: &State, from: u8, to: u8, amount: u64, seq: u64) -> Tx {
        Tx::Account(signed(state, from, account(to), amount, seq))
    }

    #[test]
    fn a_batch_gets_one_answer_per_transaction_in_order() {
        let state = state();
        let mut pool = Mempool::new(MempoolLimits::default());
        let good = pay(&state, 0, 1, 5, 0);
        let mut forged = signed(&state, 1, account(2), 5, 0);
        forged.signature[0] ^= 1;
        let twin = pay(&state, 0, 2, 7, 0);
        let queued = pay(&state, 0, 1, 6, 1);
        let too_far = pay(&state, 2, 1, 6, 10_000);
        let answers = pool.admit_batch(
            vec![
                good.clone(),
                Tx::Account(forged),
                good.clone(),
                twin,
                queued.clone(),
                too_far,
            ],
            &state,
        );
        assert_eq!(answers[0], Ok((good.hash(), true)));
        assert_eq!(
            answers[1],
            Err(Rejected::Invalid(TxError::BadSignature)),
            "a forged signature fails alone; the batch falls back to single checks"
        );
        assert_eq!(
            answers[2],
            Ok((good.hash(), false)),
            "a duplicate is not new"
        );
        assert_eq!(answers[3], Err(Rejected::Conflict { seq: 0 }));
        assert_eq!(answers[4], Ok((queued.hash(), true)));
        assert!(matches!(answers[5], Err(Rejected::TooFarAhead { .. })));
        let candidates: Vec<Hash> = pool.candidates(&state).map(|(tx, _)| tx.hash()).collect();
        assert_eq!(candidates, vec![good.hash(), queued.hash()]);
        // Admitted transactions count as checked in a block; others are checked now.
        let mut other = signed(&state, 3, account(0), 1, 0);
        let valid_elsewhere = Tx::Account(other.clone());
        let Action::Transfer { amount, .. } = &mut other.body.action else {
            unreachable!("a transfer")
        };
        *amount = 2;
        let checked =
            pool.signatures_checked(&[good, valid_elsewhere, Tx::Account(other)], &state.chain);
        assert_eq!(checked, vec![true, true, false]);
    }

    #[test]
    fn a_relayed_copy_of_what_a_block_verified_is_known_and_a_forgery_is_not() {
        let state = state();
        let mut pool = Mempool::new(MempoolLimits::default());
        let in_block = pay(&state, 0, 1, 5, 0);
        let mut forged = signed(&state, 1, account(2), 5, 0);
        forged.signature[0] ^= 1;
        let forged = Tx::Account(forged);
        let unseen = pay(&state, 2, 1, 5, 0);
        assert!(!pool.known(&in_block, &state), "nothing verified yet");
        let checked = pool.signatures_checked(&[in_block.clone(), forged.clone()], &state.chain);
        assert_eq!(checked, vec![true, false]);
        assert!(
            pool.known(&in_block, &state),
            "its signature held in a block"
        );
        assert!(
            !pool.known(&forged, &state),
            "a failed check is not remembered"
        );
        assert!(!pool.known(&unseen, &state));
        let admitted = pay(&state, 3, 1, 5, 0);
        assert_eq!(
            pool.admit_batch(vec![admitted.clone()], &state)[0],
            Ok((admitted.hash(), true))
        );
        assert!(pool.known(&admitted, &state), "held in the mempool");
        // A sequence number the finalized state already used: stale, never verified.
        let mut later = state.clone();
        later.accounts.get_mut(&account(2)).expect("funded").seq = 1;
        assert!(pool.known(&unseen, &later));
    }

    #[test]
    fn transfers_to_or_from_small_order_keys_are_refused() {
        let state = state();
        let mut pool = Mempool::new(MempoolLimits::default());
        // The identity point: under ZIP-215 anyone can "sign" for it, so it must never hold
        // funds.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = Account(identity);
        assert!(weak.key().is_some() && !weak.is_usable());
        let to_weak = Tx::Account(signed(&state, 0, weak, 5, 0));
        assert_eq!(
            pool.admit_batch(vec![to_weak], &state)[0],
            Err(Rejected::Invalid(TxError::BadRecipient))
        );
        // Its trivial signature (R = identity, s = 0) is valid under the rules...
        let from_weak = SignedAccountTx {
            body: AccountTx {
                from: weak,
                seq: 0,
                fee: 1,
                action: Action::Transfer {
                    to: account(0),
                    amount: 1,
                    memo: None,
                },
            },
            signature: {
                let mut s = [0u8; 64];
                s[..32].copy_from_slice(&identity);
                s
            },
        };
        assert!(from_weak.signature_valid(&state.chain));
        assert_eq!(
            crate::tx::signatures_valid(&[&from_weak, &from_weak], &state.chain),
            vec![true, true],
            "batch and single checks agree"
        );
        // ...so even with funds there (a block of a dishonest proposer could pay it) the
        // mempool refuses to spend from it.
        let mut state = state;
        state.accounts.insert(
            weak,
            crate::state::AccountState {
                balance: 100,
                seq: 0,
            },
        );
        assert_eq!(
            pool.admit_batch(vec![Tx::Account(from_weak)], &state)[0],
            Err(Rejected::Invalid(TxError::BadSignature))
        );
    }
}
