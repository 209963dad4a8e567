//! The pure (sans-IO) core: membership, documents, sync.

pub mod doc;
pub mod membership;
pub mod sync;
