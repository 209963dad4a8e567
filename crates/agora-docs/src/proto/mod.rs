//! The pure (sans-IO) core: membership, documents, sync.

pub mod doc;
pub mod holder;
pub mod keys;
pub mod membership;
pub mod sync;
