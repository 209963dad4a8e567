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
