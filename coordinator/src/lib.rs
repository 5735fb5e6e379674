//! `sift-coordinator`: matcher membership with heartbeat failure detection, the ring and its
//! versions, and the admin requests, behind a QUIC endpoint. The coordinator is off the data
//! path: clients and matchers fetch and watch the ring, then talk to each other directly.
//!
//! [`membership`] is the pure core (time passed in as milliseconds); [`server`] is the shell
//! that moves frames between QUIC streams and the core's task.

pub mod membership;
pub mod server;

pub use membership::{Change, Membership, MembershipError, TransitionConfig};
pub use server::{ClusterState, Coordinator, CoordinatorConfig};
