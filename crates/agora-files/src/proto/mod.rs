//! The pure core of file sharing: decisions with no I/O, no clock and no randomness of their
//! own, each unit- and property-tested (the service in [`crate::service`] drives them).
//!
//! - [`picker`]: which pieces of a download to ask which provider for.
//! - [`meter`]: how fast each provider delivers, and so how much to ask of it at once.
//! - [`index`]: the keyword index held for others, and its budgets.
//! - [`seeding`]: super-seeding, so a swarm gets every piece of a blob from its seeder once
//!   before any twice.
//! - [`eviction`]: whether a blob could fit under the storage quota, and which cached
//!   replicas to evict to make room for verified data.

pub mod eviction;
pub mod index;
pub mod meter;
pub mod picker;
pub mod seeding;
