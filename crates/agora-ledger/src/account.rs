//! Account addresses: an account is an ed25519 public key, written as a checksummed string.
//!
//! The text form is `ag` followed by base58 of the 32 key bytes and a 4-byte BLAKE3 checksum, in
//! the spirit of XRPL's `r...` addresses: a mistyped or truncated address is refused instead of
//! sending funds to a key nobody holds.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Prefix of every account's text form.
pub const PREFIX: &str = "ag";
const CHECKSUM_LEN: usize = 4;

/// An account: the 32 bytes of an ed25519 public key. Serialized as its text form in
/// human-readable formats (JSON genesis files, the API) and as 32 bytes otherwise.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Account(pub [u8; 32]);

impl Serialize for Account {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Account {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            // Any account, contracts included (they are hashes, not keys); where a key is
            // required (a genesis, a recipient) it is checked there.
            let text = String::deserialize(d)?;
            Account::parse_address(&text).map_err(serde::de::Error::custom)
        } else {
            Ok(Account(<[u8; 32]>::deserialize(d)?))
        }
    }
}

/// Why a string is not an account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountParseError {
    #[error("an account starts with \"{PREFIX}\"")]
    Prefix,
    #[error("an account is base58 after \"{PREFIX}\" (no 0, O, I or l)")]
    Base58,
    #[error("an account is 36 bytes of base58 (key and checksum); this one has {0}")]
    Length(usize),
    #[error("the account's checksum does not match: mistyped or truncated")]
    Checksum,
    #[error("the account is not a valid ed25519 public key")]
    Key,
}

fn checksum(key: &[u8; 32]) -> [u8; CHECKSUM_LEN] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"agora-account");
    hasher.update(key);
    let digest = hasher.finalize();
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest.as_bytes()[..CHECKSUM_LEN]);
    out
}

impl Account {
    /// The account of an ed25519 public key.
    pub fn from_key(key: &VerifyingKey) -> Self {
        Account(key.to_bytes())
    }

    /// The public key, if these bytes are a point on the curve.
    pub fn key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).ok()
    }

    /// Whether this account can safely hold funds: its key is a curve point of large order.
    /// A small-order key's "signatures" can be made by anyone under the ledger's verification
    /// rules (ZIP-215), so transfers to such an account are refused where they enter.
    pub fn is_usable(&self) -> bool {
        self.key().is_some_and(|key| !key.is_weak())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The account of a node: the ed25519 key of its libp2p identity.
    pub fn of_identity(keypair: &libp2p_identity::Keypair) -> Option<Self> {
        let key = keypair.public().try_into_ed25519().ok()?;
        Some(Account(key.to_bytes()))
    }
}

/// The signing key of a node's identity, which signs its account's transactions.
pub fn identity_signing_key(keypair: &libp2p_identity::Keypair) -> Option<SigningKey> {
    let ed = keypair.clone().try_into_ed25519().ok()?;
    let mut secret = [0u8; 32];
    secret.copy_from_slice(ed.secret().as_ref());
    Some(SigningKey::from_bytes(&secret))
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = [0u8; 32 + CHECKSUM_LEN];
        raw[..32].copy_from_slice(&self.0);
        raw[32..].copy_from_slice(&checksum(&self.0));
        write!(f, "{PREFIX}{}", bs58::encode(raw).into_string())
    }
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Account {
    /// Parses any account's text form, checksum included, without requiring a curve point:
    /// contract accounts are hashes, not keys (see [`crate::contract::contract_address`]).
    pub fn parse_address(s: &str) -> Result<Account, AccountParseError> {
        let body = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(AccountParseError::Prefix)?;
        let raw = bs58::decode(body)
            .into_vec()
            .map_err(|_| AccountParseError::Base58)?;
        if raw.len() != 32 + CHECKSUM_LEN {
            return Err(AccountParseError::Length(raw.len()));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&raw[..32]);
        if raw[32..] != checksum(&key) {
            return Err(AccountParseError::Checksum);
        }
        Ok(Account(key))
    }
}

impl FromStr for Account {
    type Err = AccountParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let account = Account::parse_address(s)?;
        account.key().ok_or(AccountParseError::Key)?;
        Ok(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(seed: u8) -> Account {
        Account::from_key(&SigningKey::from_bytes(&[seed; 32]).verifying_key())
    }

    #[test]
    fn text_form_round_trips() {
        for seed in 0..20 {
            let a = account(seed);
            let text = a.to_string();
            assert!(text.starts_with("ag"));
            assert_eq!(text.parse::<Account>().unwrap(), a);
        }
    }

    #[test]
    fn a_changed_character_is_caught_by_the_checksum() {
        let text = account(7).to_string();
        let mut caught = 0;
        let alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
        for (i, c) in text.char_indices().skip(2) {
            let other = alphabet.chars().find(|&x| x != c).unwrap();
            let mut changed = text.clone();
            changed.replace_range(i..i + 1, &other.to_string());
            if changed.parse::<Account>().is_err() {
                caught += 1;
            }
        }
        assert_eq!(caught, text.len() - 2);
    }

    #[test]
    fn malformed_accounts_get_a_clear_error() {
        let text = account(3).to_string();
        assert_eq!("xx".parse::<Account>(), Err(AccountParseError::Prefix));
        assert_eq!("ag0OIl".parse::<Account>(), Err(AccountParseError::Base58));
        assert!(matches!(
            text[..text.len() - 3].parse::<Account>(),
            Err(AccountParseError::Length(_)) | Err(AccountParseError::Checksum)
        ));
    }
}
