//! The ledger's state machine: pure and deterministic. Given the same state and the same
//! transactions every node computes the same result and the same state root.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::account::Account;
use crate::market::{Market, MarketError, Outcome};
use crate::tx::{Action, CommitteeChange, CommitteeTx, Hash, MAX_MEMO, SignedAccountTx, Tx};

/// Each trust line and resting offer holds back this many times the minimum fee of its owner's
/// AGR (the owner reserve: state costs something to keep).
pub const OWNER_RESERVE_FEES: u64 = 100;

/// What the genesis file says: the chain's name, its first committee, the initial balances and
/// the fixed rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    /// A human name; it is part of the chain id, so two devnets never accept each other's blocks.
    pub chain: String,
    pub validators: Vec<Account>,
    pub balances: Vec<(Account, u64)>,
    /// The smallest fee a transaction may offer; fees are burned.
    pub min_fee: u64,
    /// Blocks per epoch; committee changes take effect at the next epoch boundary.
    pub epoch_length: u64,
}

impl Genesis {
    /// The chain id: BLAKE3 of the canonical encoding of the genesis. Every signature covers it.
    pub fn chain_id(&self) -> Hash {
        let mut bytes = b"agora-ledger/genesis/1".to_vec();
        bytes.extend(postcard::to_allocvec(self).expect("encoding to a Vec cannot fail"));
        Hash::of(&bytes)
    }

    /// Checks the rules a genesis must keep for the ledger to work at all.
    pub fn validate(&self) -> Result<(), String> {
        if self.validators.is_empty() {
            return Err("the genesis names no validators".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for v in &self.validators {
            if !seen.insert(v) {
                return Err(format!("validator {v} is named twice"));
            }
            if !v.is_usable() {
                return Err(format!("validator {v} is not a usable ed25519 key"));
            }
        }
        if self.epoch_length == 0 {
            return Err("epoch_length must be at least 1".into());
        }
        let mut total: u64 = 0;
        let mut accounts = std::collections::BTreeSet::new();
        for (account, amount) in &self.balances {
            if !accounts.insert(account) {
                return Err(format!("account {account} is funded twice"));
            }
            if !account.is_usable() {
                return Err(format!(
                    "account {account} is not a usable ed25519 key (anyone could spend from it)"
                ));
            }
            total = total
                .checked_add(*amount)
                .ok_or("the genesis balances overflow u64")?;
        }
        Ok(())
    }
}

/// An account's entry in the state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    pub balance: u64,
    /// The sequence number the account's next transaction must carry.
    pub seq: u64,
}

/// Why a transaction cannot be applied to a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum TxError {
    #[error("bad signature")]
    BadSignature,
    #[error("wrong sequence number: the account's next is {expected}, the transaction has {got}")]
    WrongSequence { expected: u64, got: u64 },
    #[error("insufficient funds: balance {balance}, amount plus fee {needed}")]
    InsufficientFunds { balance: u64, needed: u64 },
    #[error("the recipient's balance would overflow")]
    Overflow,
    #[error("fee {fee} is below the minimum {min}")]
    FeeTooLow { fee: u64, min: u64 },
    #[error("memo of {0} bytes is over the {MAX_MEMO}-byte limit")]
    MemoTooLong(usize),
    #[error("an account cannot pay itself")]
    SelfPayment,
    #[error("amount must be more than zero")]
    ZeroAmount,
    #[error("the recipient is not a usable ed25519 key (not a curve point, or of small order)")]
    BadRecipient,
    #[error("committee change nonce {got} is not the current {expected}")]
    WrongNonce { expected: u64, got: u64 },
    #[error("committee change has {got} valid approvals from current validators; {needed} needed")]
    NotEnoughApprovals { got: usize, needed: usize },
    #[error("committee change does nothing or would leave no validator")]
    UselessChange,
    #[error("{0}")]
    Market(Box<MarketError>),
    #[error("{0}")]
    Contract(crate::contract::ContractError),
}

/// What applying a transaction did.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    Transferred {
        from: Account,
        to: Account,
        amount: u64,
        fee: u64,
    },
    CommitteeChanged {
        change: CommitteeChange,
        effective_epoch: u64,
    },
    /// A market transaction: included and its fee burned; `outcome` says what it did (or why
    /// it changed nothing else).
    Market {
        from: Account,
        fee: u64,
        outcome: Outcome,
    },
    /// A contract deploy or call: included and the fee for the gas it used charged (also when
    /// it failed, which then changed nothing else).
    Contract {
        from: Account,
        fee: u64,
        outcome: crate::contract::ContractOutcome,
    },
}

/// The whole ledger state after some block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub chain: Hash,
    pub min_fee: u64,
    pub epoch_length: u64,
    /// Height of the last applied block (0 = genesis).
    pub height: u64,
    pub accounts: BTreeMap<Account, AccountState>,
    /// Sum of all fees burned so far.
    pub burned: u64,
    /// The committee of the current epoch.
    pub committee: Vec<Account>,
    /// The committee from the next epoch on (equal to `committee` when nothing is pending).
    pub next_committee: Vec<Account>,
    pub committee_nonce: u64,
    /// AGR each trust line or resting offer holds back ([`OWNER_RESERVE_FEES`] × min fee).
    pub owner_reserve: u64,
    pub market: Market,
    pub contracts: crate::contract::Contracts,
    /// The time of the block being built or applied (contracts read it); not in the root,
    /// the block header carries it.
    pub block_time_ms: u64,
}

/// Largest f with 3f + 1 <= n: how many faulty validators a committee of n tolerates.
pub fn max_faulty(n: usize) -> usize {
    n.saturating_sub(1) / 3
}

/// Approvals needed from a committee of n: n - f (2f + 1 when n = 3f + 1).
pub fn quorum(n: usize) -> usize {
    n - max_faulty(n)
}

impl State {
    pub fn genesis(genesis: &Genesis) -> Self {
        let mut accounts = BTreeMap::new();
        for (account, balance) in &genesis.balances {
            accounts.insert(
                *account,
                AccountState {
                    balance: *balance,
                    seq: 0,
                },
            );
        }
        let mut committee = genesis.validators.clone();
        committee.sort();
        State {
            chain: genesis.chain_id(),
            min_fee: genesis.min_fee,
            epoch_length: genesis.epoch_length,
            height: 0,
            accounts,
            burned: 0,
            next_committee: committee.clone(),
            committee,
            committee_nonce: 0,
            owner_reserve: genesis.min_fee.saturating_mul(OWNER_RESERVE_FEES),
            market: Market::default(),
            contracts: Default::default(),
            block_time_ms: 0,
        }
    }

    pub fn account(&self, account: &Account) -> AccountState {
        self.accounts.get(account).copied().unwrap_or_default()
    }

    /// The epoch a block at `height` belongs to (heights 1..=L are epoch 0).
    pub fn epoch_of(&self, height: u64) -> u64 {
        height.saturating_sub(1) / self.epoch_length
    }

    /// The last height of `epoch`.
    pub fn epoch_end(&self, epoch: u64) -> u64 {
        (epoch + 1).saturating_mul(self.epoch_length)
    }

    /// Whether block `height` is the last of its epoch (the next committee takes over after it).
    pub fn ends_epoch(&self, height: u64) -> bool {
        height.is_multiple_of(self.epoch_length)
    }

    /// AGR of `account` held back by the lines and offers it owns.
    pub fn reserve_of(&self, account: &Account) -> u64 {
        let owned = self.market.owned.get(account).copied().unwrap_or(0) as u64;
        owned.saturating_mul(self.owner_reserve)
    }

    /// Sum of all balances.
    pub fn supply(&self) -> u128 {
        self.accounts.values().map(|a| a.balance as u128).sum()
    }

    /// Checks a transaction against this state without changing it. `signature_checked` lets
    /// the caller skip the signature check for a transaction it already verified.
    pub fn check(&self, tx: &Tx, signature_checked: bool) -> Result<(), TxError> {
        match tx {
            Tx::Account(signed) => self.check_account(signed, signature_checked).map(|_| ()),
            Tx::Committee(c) => self.check_committee(c, signature_checked),
        }
    }

    /// The checks of an account transaction that depend neither on the sender's balance nor on
    /// its sequence number: fee, memo, amount, not to itself.
    pub fn check_static(&self, signed: &SignedAccountTx) -> Result<(), TxError> {
        let body = &signed.body;
        if body.fee < self.min_fee {
            return Err(TxError::FeeTooLow {
                fee: body.fee,
                min: self.min_fee,
            });
        }
        let (to, amount, memo) = match &body.action {
            Action::Transfer { to, amount, memo } => (to, amount, memo),
            Action::Market(m) => {
                return m
                    .check_static(&body.from)
                    .map_err(|e| TxError::Market(Box::new(e)));
            }
            Action::Contract(c) => {
                return c
                    .check_static(body.fee, self.min_fee)
                    .map_err(TxError::Contract);
            }
        };
        if let Some(memo) = memo
            && memo.len() > MAX_MEMO
        {
            return Err(TxError::MemoTooLong(memo.len()));
        }
        if *amount == 0 {
            return Err(TxError::ZeroAmount);
        }
        if *to == body.from {
            return Err(TxError::SelfPayment);
        }
        // Whether `to` is a point on the curve is checked where transactions enter (mempool,
        // `pay`), not here: decompressing a key costs as much as a quarter of a signature check,
        // and execution stays deterministic without it (a transfer to a key nobody can hold
        // only burns the amount).
        Ok(())
    }

    /// Checks an account transaction that may be queued behind transactions of its sender not
    /// final yet (the signature aside): in full if it carries the next sequence number, else
    /// what does not depend on those before it — the rest is checked when a block is built.
    pub fn check_queued(&self, signed: &SignedAccountTx) -> Result<(), TxError> {
        let next = self.account(&signed.body.from).seq;
        match signed.body.seq.cmp(&next) {
            std::cmp::Ordering::Equal => self.check_account(signed, true).map(|_| ()),
            std::cmp::Ordering::Less => Err(TxError::WrongSequence {
                expected: next,
                got: signed.body.seq,
            }),
            std::cmp::Ordering::Greater => self.check_static(signed),
        }
    }

    fn check_account(
        &self,
        signed: &SignedAccountTx,
        signature_checked: bool,
    ) -> Result<(AccountState, u64), TxError> {
        self.check_static(signed)?;
        let body = &signed.body;
        let sender = self.account(&body.from);
        if body.seq != sender.seq {
            return Err(TxError::WrongSequence {
                expected: sender.seq,
                got: body.seq,
            });
        }
        let needed = match &body.action {
            Action::Transfer { to, amount, .. } => {
                let needed = amount.checked_add(body.fee).ok_or(TxError::Overflow)?;
                // What lines and offers hold back is not for transfers.
                let reserve = self.reserve_of(&body.from);
                if sender.balance < needed.saturating_add(reserve) {
                    return Err(TxError::InsufficientFunds {
                        balance: sender.balance.saturating_sub(reserve),
                        needed,
                    });
                }
                if self.account(to).balance.checked_add(*amount).is_none() {
                    return Err(TxError::Overflow);
                }
                needed
            }
            // The fee may come out of the reserve; the rest is decided when it runs.
            Action::Market(_) => body.fee,
            // The most the fee can be, and the value sent.
            Action::Contract(crate::contract::ContractAction::Call { value, .. }) => {
                body.fee.checked_add(*value).ok_or(TxError::Overflow)?
            }
            Action::Contract(_) => body.fee,
        };
        if sender.balance < needed {
            return Err(TxError::InsufficientFunds {
                balance: sender.balance,
                needed,
            });
        }
        if !signature_checked && !signed.signature_valid(&self.chain) {
            return Err(TxError::BadSignature);
        }
        Ok((sender, needed))
    }

    fn check_committee(&self, c: &CommitteeTx, signature_checked: bool) -> Result<(), TxError> {
        if c.nonce != self.committee_nonce {
            return Err(TxError::WrongNonce {
                expected: self.committee_nonce,
                got: c.nonce,
            });
        }
        let useless = match &c.change {
            CommitteeChange::Add(v) => !v.is_usable() || self.next_committee.contains(v),
            CommitteeChange::Remove(v) => {
                !self.next_committee.contains(v) || self.next_committee.len() == 1
            }
        };
        if useless {
            return Err(TxError::UselessChange);
        }
        let mut approvers = std::collections::BTreeSet::new();
        for approval in &c.approvals {
            if self.committee.contains(&approval.validator)
                && (signature_checked || approval.valid_for(&c.change, c.nonce, &self.chain))
            {
                approvers.insert(approval.validator);
            }
        }
        let needed = quorum(self.committee.len());
        if approvers.len() < needed {
            return Err(TxError::NotEnoughApprovals {
                got: approvers.len(),
                needed,
            });
        }
        if signature_checked
            && c.approvals
                .iter()
                .any(|a| !a.valid_for(&c.change, c.nonce, &self.chain))
        {
            // Cheap to recheck (rare transaction); never let a forged approval ride on a cache.
            return Err(TxError::BadSignature);
        }
        Ok(())
    }

    /// Applies one transaction, or leaves the state untouched and says why not.
    pub fn apply(&mut self, tx: &Tx, signature_checked: bool) -> Result<Effect, TxError> {
        match tx {
            Tx::Account(signed) => {
                let (sender, needed) = self.check_account(signed, signature_checked)?;
                let body = &signed.body;
                let (to, amount) = match &body.action {
                    Action::Transfer { to, amount, .. } => (to, amount),
                    Action::Market(m) => {
                        let mut txn = crate::market::Txn::new(self);
                        txn.charge(body.from, body.fee);
                        let outcome = txn.run(body.from, body.seq, m);
                        txn.commit();
                        return Ok(Effect::Market {
                            from: body.from,
                            fee: body.fee,
                            outcome,
                        });
                    }
                    Action::Contract(c) => return Ok(self.apply_contract(body, c)),
                };
                self.accounts.insert(
                    body.from,
                    AccountState {
                        balance: sender.balance - needed,
                        seq: sender.seq + 1,
                    },
                );
                let recipient = self.accounts.entry(*to).or_default();
                recipient.balance += amount;
                self.burned += body.fee;
                Ok(Effect::Transferred {
                    from: body.from,
                    to: *to,
                    amount: *amount,
                    fee: body.fee,
                })
            }
            Tx::Committee(c) => {
                self.check_committee(c, signature_checked)?;
                match &c.change {
                    CommitteeChange::Add(v) => {
                        self.next_committee.push(*v);
                        self.next_committee.sort();
                    }
                    CommitteeChange::Remove(v) => self.next_committee.retain(|x| x != v),
                }
                self.committee_nonce += 1;
                Ok(Effect::CommitteeChanged {
                    change: c.change.clone(),
                    effective_epoch: self.epoch_of(self.height + 1) + 1,
                })
            }
        }
    }

    /// Closes block `height`: if it is the last of its epoch, the next committee takes over.
    pub fn finish_block(&mut self, height: u64) {
        self.height = height;
        if self.ends_epoch(height) {
            self.committee = self.next_committee.clone();
        }
    }

    /// Merkle root over every account (sorted by key) and the ledger's other fields.
    pub fn root(&self) -> Hash {
        let mut level: Vec<[u8; 32]> = self
            .accounts
            .iter()
            .map(|(account, state)| {
                let mut h = blake3::Hasher::new();
                h.update(&[0]);
                h.update(&account.0);
                h.update(&state.balance.to_le_bytes());
                h.update(&state.seq.to_le_bytes());
                *h.finalize().as_bytes()
            })
            .collect();
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => {
                        let mut h = blake3::Hasher::new();
                        h.update(&[1]);
                        h.update(l);
                        h.update(r);
                        *h.finalize().as_bytes()
                    }
                    [one] => *one,
                    _ => unreachable!(),
                })
                .collect();
        }
        let accounts_root = level.first().copied().unwrap_or([0; 32]);
        let mut h = blake3::Hasher::new();
        h.update(b"agora-ledger/state/2");
        h.update(&self.chain.0);
        h.update(&self.height.to_le_bytes());
        h.update(&accounts_root);
        h.update(&self.burned.to_le_bytes());
        h.update(&self.committee_nonce.to_le_bytes());
        h.update(&self.owner_reserve.to_le_bytes());
        h.update(
            blake3::hash(&postcard::to_allocvec(&self.contracts).expect("encoding cannot fail"))
                .as_bytes(),
        );
        // The market: its small maps whole, offers and lines through their kept hashes.
        h.update(&self.market.digest());
        for v in self
            .committee
            .iter()
            .chain([&Account([0xff; 32])])
            .chain(&self.next_committee)
        {
            h.update(&v.0);
        }
        Hash(*h.finalize().as_bytes())
    }
}
