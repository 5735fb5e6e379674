//! `sift-matcher-core`: Sift's matching engine, a pure library with no tokio and no I/O.
//!
//! [`Engine`] holds subscriptions (topic or pattern, filter, expiry, group, delivery mode)
//! and answers, for each event, which of them match. It is an index, not a scan:
//!
//! - exact topics are found by hash, patterns by one walk of a token trie (like a NATS
//!   sublist);
//! - inside a topic, each filter is compiled to a compact program and planned: an event only
//!   evaluates filters whose access keys it hits — equality and `in` through hash postings,
//!   ranges through ordered maps and width-classed intervals, prefixes and suffixes (and
//!   anchored regexes, by their literal) through hashed affixes, the other regexes of one
//!   attribute in one `RegexSet` pass; filters with no usable key are evaluated for every
//!   event;
//! - expiry is a hierarchical timing wheel (O(1) per expiry); groups pick one member per
//!   event (round robin, or rendezvous hashing on a key attribute).
//!
//! ARCHITECTURE.md has the full design and its invariants.

mod attrs;
pub mod delivery;
mod engine;
pub mod gossip;
mod groups;
pub mod handoff;
mod index;
mod keys;
pub mod node;
pub mod peers;
mod plan;
mod prog;
mod regex_pool;
pub mod replica;
mod trie;
mod types;
mod wheel;

pub use engine::Engine;
pub use types::*;
