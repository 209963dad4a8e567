//! Ordering blocks with Commonware's simplex BFT engine.
//!
//! The engine orders block digests; this module is the application around it: it builds blocks
//! from its mempool when this validator leads a view, verifies other validators' blocks against
//! the parent's state, moves whole blocks between validators on a fourth channel, and turns
//! finalization certificates into finalized blocks in height order.
//!
//! Everything here is generic over Commonware's runtime and p2p traits, so the same code runs
//! on the tokio runtime over Agora's libp2p connections and in Commonware's deterministic
//! runtime over its simulated network (see `tests/consensus_sim.rs`).

mod app;
mod engine;
mod mempool;
mod wire;

pub use app::{
    AppConfig, BUDGET_CLAIMED_BLOCKS, BUDGET_UNSOLICITED_BLOCKS, Base, ENGINE_MAILBOX,
    FINALIZED_OUTPUT, Finalized, HeldBlocks, MAX_CLAIMED_BLOCKS, MAX_UNSOLICITED_BLOCKS_PER_SENDER,
    MAX_UNSOLICITED_BYTES_PER_SENDER, Mailbox, NODE_MAILBOX, Submitted,
};
pub use engine::{Channels, OnCommittee, Running, ValidatorConfig, start_validator};
pub use mempool::{MempoolLimits, Rejected};
pub use wire::BlockMsg;

use commonware_codec::{Copying, ReadExt as _};
use commonware_cryptography::Signer as _;

use crate::{Account, Genesis, Hash};

/// Block digests as the engine sees them: our BLAKE3 block hash.
pub type Digest = commonware_cryptography::blake3::Digest;
/// Validator keys as the engine sees them (the same ed25519 keys as accounts and peer ids).
pub type PublicKey = commonware_cryptography::ed25519::PublicKey;
pub type PrivateKey = commonware_cryptography::ed25519::PrivateKey;
/// Simplex with ed25519 votes: a certificate is 2f + 1 attributable signatures.
pub type Scheme = commonware_consensus::simplex::scheme::ed25519::Scheme;
/// A finalization certificate for a block digest.
pub type Finalization = commonware_consensus::simplex::types::Finalization<Scheme, Digest>;
pub type Activity = commonware_consensus::simplex::types::Activity<Scheme, Digest>;
pub type Context = commonware_consensus::simplex::types::Context<Digest, PublicKey>;

/// Channel numbers on the consensus transport.
pub const CHANNEL_VOTES: u64 = 0;
pub const CHANNEL_CERTIFICATES: u64 = 1;
pub const CHANNEL_RESOLVER: u64 = 2;
pub const CHANNEL_BLOCKS: u64 = 3;

pub fn digest(hash: Hash) -> Digest {
    commonware_cryptography::blake3::Digest(hash.0)
}

pub fn hash(digest: &Digest) -> Hash {
    Hash(digest.0)
}

/// The namespace every vote of this chain is signed under: votes for one chain can never count
/// on another.
pub fn namespace(chain: &Hash) -> Vec<u8> {
    format!("agora-ledger/{}", chain.to_hex()).into_bytes()
}

/// The digest consensus starts from: the chain id stands for the genesis block.
pub fn genesis_digest(genesis: &Genesis) -> Digest {
    digest(genesis.chain_id())
}

pub fn public_key(account: &Account) -> Option<PublicKey> {
    PublicKey::read(&mut Copying(&account.0[..])).ok()
}

pub fn account(key: &PublicKey) -> Account {
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(key.as_ref());
    Account(bytes)
}

/// A consensus private key from an ed25519 secret (the node's identity key).
pub fn private_key(secret: &[u8; 32]) -> PrivateKey {
    PrivateKey::read(&mut Copying(&secret[..])).expect("any 32 bytes are an ed25519 secret")
}

pub fn account_of(key: &PrivateKey) -> Account {
    account(&key.public_key())
}

/// The committee as the engine wants it: sorted and deduplicated.
pub fn committee_set(
    validators: &[Account],
) -> Result<commonware_utils::ordered::Set<PublicKey>, String> {
    let keys = validators
        .iter()
        .map(|v| public_key(v).ok_or_else(|| format!("validator {v} is not an ed25519 key")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(commonware_utils::ordered::Set::from_iter_dedup(keys))
}
