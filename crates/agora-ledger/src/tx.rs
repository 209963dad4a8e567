//! Transactions: what an account signs, and what a committee signs.
//!
//! Every signature covers a domain tag, the chain id (the genesis hash, so a transaction signed
//! for one network cannot be replayed on another) and the canonical postcard encoding of the body.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::{Deserialize, Serialize};

use crate::account::Account;

/// Longest memo a transfer may carry, in bytes.
pub const MAX_MEMO: usize = 256;
/// Largest encoded transaction accepted anywhere (a committee change with many approvals fits).
pub const MAX_TX_BYTES: usize = 16 * 1024;

const ACCOUNT_DOMAIN: &[u8] = b"agora-ledger/account-tx/1";
const COMMITTEE_DOMAIN: &[u8] = b"agora-ledger/committee-tx/1";

/// A 32-byte BLAKE3 hash (transactions, blocks, state roots, the chain id). Hex in
/// human-readable formats, 32 bytes otherwise.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            Hash::from_hex(&text).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
        } else {
            Ok(Hash(<[u8; 32]>::deserialize(d)?))
        }
    }
}

impl Hash {
    pub fn of(bytes: &[u8]) -> Self {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s.trim()).ok()?;
        Some(Hash(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..12])
    }
}

/// What an account asks the ledger to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Move `amount` base units from the signer to `to`.
    Transfer {
        to: Account,
        amount: u64,
        memo: Option<String>,
    },
    /// Trust lines, issued currencies, offers and cross-currency payments
    /// ([`crate::market`]).
    Market(crate::market::MarketAction),
    /// Deploy or call a contract ([`crate::contract`]).
    Contract(crate::contract::ContractAction),
}

impl Action {
    /// The other accounts the action names (a recipient, an issuer, a holder): each must be a
    /// usable key where transactions enter.
    pub fn counterparties(&self) -> Vec<Account> {
        use crate::market::MarketAction as M;
        match self {
            Action::Transfer { to, .. } => vec![*to],
            Action::Market(M::Pay { to, .. }) => vec![*to],
            Action::Market(M::TrustSet { issue, .. }) => vec![issue.issuer],
            Action::Market(M::Authorize { holder, .. }) => vec![*holder],
            Action::Market(_) | Action::Contract(_) => Vec::new(),
        }
    }
}

/// The body an account signs: who, in which order, what it pays to be included, and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountTx {
    pub from: Account,
    /// Must equal the account's sequence number in the state; each applied transaction adds one.
    pub seq: u64,
    /// Burned when the transaction is applied.
    pub fee: u64,
    pub action: Action,
}

/// An account transaction with the account's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAccountTx {
    pub body: AccountTx,
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
}

/// A change of the validator committee, effective at the next epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitteeChange {
    Add(Account),
    Remove(Account),
}

/// A committee change approved by current validators (at least the quorum: 2f + 1 of 3f + 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitteeTx {
    pub change: CommitteeChange,
    /// Must equal the state's committee nonce, so an approved change cannot be replayed.
    pub nonce: u64,
    pub approvals: Vec<Approval>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub validator: Account,
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
}

/// Anything a block can carry.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tx {
    Account(SignedAccountTx),
    Committee(CommitteeTx),
}

fn signing_message(domain: &[u8], chain: &Hash, body: &impl Serialize) -> Vec<u8> {
    let mut msg = Vec::with_capacity(domain.len() + 32 + 128);
    msg.extend_from_slice(domain);
    msg.extend_from_slice(&chain.0);
    msg.extend_from_slice(&postcard::to_allocvec(body).expect("encoding to a Vec cannot fail"));
    msg
}

impl AccountTx {
    pub fn signing_message(&self, chain: &Hash) -> Vec<u8> {
        signing_message(ACCOUNT_DOMAIN, chain, self)
    }

    pub fn sign(self, key: &SigningKey, chain: &Hash) -> SignedAccountTx {
        let signature = key.sign(&self.signing_message(chain)).to_bytes();
        SignedAccountTx {
            body: self,
            signature,
        }
    }
}

/// An account's key, decompressed for checking its transactions' signatures.
pub type TxKey = ed25519_zebra::VerificationKey;

/// The key of `account`, if its bytes encode a curve point.
pub fn tx_key(account: &Account) -> Option<TxKey> {
    TxKey::try_from(account.0).ok()
}

impl SignedAccountTx {
    /// Whether `from` signed this body for this chain.
    ///
    /// The rules are ZIP-215's (the `ed25519-zebra` crate): the cofactored verification
    /// equation and a canonical `s`. Under them a batch check ([`signatures_valid`]) accepts
    /// exactly the signatures that single checks accept, so validators that batch and
    /// validators that check one by one never disagree about a block. (`verify_strict`'s
    /// cofactorless rule has no batch form with that guarantee.) Every standard ed25519
    /// signature passes.
    pub fn signature_valid(&self, chain: &Hash) -> bool {
        tx_key(&self.body.from).is_some_and(|key| self.signature_valid_with(&key, chain))
    }

    /// The same with `from`'s key already decompressed (callers that cache keys).
    pub fn signature_valid_with(&self, key: &TxKey, chain: &Hash) -> bool {
        key.verify(
            &ed25519_zebra::Signature::from(self.signature),
            &self.body.signing_message(chain),
        )
        .is_ok()
    }
}

/// Checks the senders' signatures of many transactions at once: `result[i]` is
/// `txs[i].signature_valid(chain)`. One batch verification costs about half as much per
/// signature as single checks. When a batch fails, its halves are checked as batches in turn
/// (small ones one by one), so a few bad signatures among many — a hostile relay's — cost a
/// few more batches rather than a single check each. Same rules either way, so the same
/// verdicts.
pub fn signatures_valid(txs: &[&SignedAccountTx], chain: &Hash) -> Vec<bool> {
    use ed25519_zebra::{Signature as Sig, VerificationKeyBytes, batch};
    let items: Vec<batch::Item> = txs
        .iter()
        .map(|tx| {
            let message = tx.body.signing_message(chain);
            batch::Item::from((
                VerificationKeyBytes::from(tx.body.from.0),
                Sig::from(tx.signature),
                &message,
            ))
        })
        .collect();
    let mut valid = vec![false; items.len()];
    check_batch(&items, &mut valid);
    valid
}

/// Below this many signatures a failed batch is checked one by one.
const SMALLEST_BATCH: usize = 8;

fn check_batch(items: &[ed25519_zebra::batch::Item], valid: &mut [bool]) {
    if items.len() < SMALLEST_BATCH {
        for (item, valid) in items.iter().zip(valid.iter_mut()) {
            *valid = item.clone().verify_single().is_ok();
        }
        return;
    }
    let mut verifier = ed25519_zebra::batch::Verifier::new();
    for item in items {
        verifier.queue(item.clone());
    }
    if verifier.verify(commonware_utils::sys_rng()).is_ok() {
        valid.fill(true);
        return;
    }
    let half = items.len() / 2;
    let (left, right) = valid.split_at_mut(half);
    check_batch(&items[..half], left);
    check_batch(&items[half..], right);
}

impl CommitteeTx {
    pub fn signing_message(change: &CommitteeChange, nonce: u64, chain: &Hash) -> Vec<u8> {
        signing_message(COMMITTEE_DOMAIN, chain, &(change, nonce))
    }

    /// A validator's approval of `change` at `nonce`.
    pub fn approve(
        change: &CommitteeChange,
        nonce: u64,
        key: &SigningKey,
        chain: &Hash,
    ) -> Approval {
        Approval {
            validator: Account::from_key(&key.verifying_key()),
            signature: key
                .sign(&Self::signing_message(change, nonce, chain))
                .to_bytes(),
        }
    }
}

impl Approval {
    /// The encoding `agora ledger approve` prints (in hex) and `change` takes back.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding to a Vec cannot fail")
    }

    /// Decodes an approval, refusing oversized input and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        // A key, a signature and a little framing.
        if bytes.len() > 128 {
            return None;
        }
        match postcard::take_from_bytes::<Approval>(bytes) {
            Ok((approval, [])) => Some(approval),
            _ => None,
        }
    }

    pub fn valid_for(&self, change: &CommitteeChange, nonce: u64, chain: &Hash) -> bool {
        let Some(key) = self.validator.key() else {
            return false;
        };
        key.verify_strict(
            &CommitteeTx::signing_message(change, nonce, chain),
            &Signature::from_bytes(&self.signature),
        )
        .is_ok()
    }
}

impl Tx {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding to a Vec cannot fail")
    }

    /// Decodes a transaction, refusing oversized input and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, TxDecodeError> {
        if bytes.len() > MAX_TX_BYTES {
            return Err(TxDecodeError::TooLarge(bytes.len()));
        }
        let (tx, rest) =
            postcard::take_from_bytes::<Tx>(bytes).map_err(|_| TxDecodeError::Malformed)?;
        if !rest.is_empty() {
            return Err(TxDecodeError::Malformed);
        }
        Ok(tx)
    }

    /// The transaction's id: BLAKE3 of its encoding, signature included.
    pub fn hash(&self) -> Hash {
        Hash::of(&self.encode())
    }

    /// The account whose sequence this transaction uses, if any.
    pub fn sender(&self) -> Option<(Account, u64)> {
        match self {
            Tx::Account(signed) => Some((signed.body.from, signed.body.seq)),
            Tx::Committee(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxDecodeError {
    #[error("transaction of {0} bytes is over the {MAX_TX_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed transaction encoding")]
    Malformed,
}

mod sig_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(sig: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(sig)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        // postcard writes bytes as a length and the raw bytes, which is also how it reads a
        // Vec<u8>; owned decoding keeps this usable from any reader.
        let bytes: Vec<u8> = Deserialize::deserialize(d)?;
        bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"64 bytes"))
    }
}
