//! Agora's ledger: accounts are ed25519 keys, transfers are signed by their sender and ordered
//! into blocks by a validator committee; the state machine here is pure and deterministic.

pub mod account;
pub mod amount;
pub mod block;
pub mod consensus;
pub mod contract;
pub mod market;
pub mod service;
pub mod state;
pub mod tx;

pub use account::{Account, AccountParseError, identity_signing_key};
pub use amount::{Amount, AmountError, Code, Currency, Issue, Rate};
pub use block::{Block, BlockError};
pub use market::{Fill, Line, MarketAction, MarketError, Offer, OfferFlags, OfferId, Outcome};
pub use state::{AccountState, Effect, Genesis, State, TxError, quorum};
pub use tx::{
    AccountTx, Action, Approval, CommitteeChange, CommitteeTx, Hash, SignedAccountTx, Tx,
};

/// Lowers the calling thread's priority (nice 10) for bulk work that can wait — writing
/// finalized blocks — so that the work on the path to finality (building, verifying and
/// voting on blocks) goes first when the cores are busy.
/// Still runs whenever a core is free. Best effort: ignored where refused or unsupported.
pub(crate) fn background_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// Keys and accounts for unit tests: account `i` is the key with seed bytes `i + 1`.
#[cfg(test)]
pub(crate) mod testing {
    use ed25519_dalek::SigningKey;

    pub fn key(i: u8) -> SigningKey {
        SigningKey::from_bytes(&[i + 1; 32])
    }

    pub fn account(i: u8) -> crate::Account {
        crate::Account::from_key(&key(i).verifying_key())
    }
}
