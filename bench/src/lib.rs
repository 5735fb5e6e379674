//! `sift-bench`: Sift's load-testing harness. The same load generator drives Sift and the
//! systems people would pick instead — NATS, Redis pub/sub and MQTT (Mosquitto) — so every
//! comparison is side by side, in one run, with the same payloads, rates and subscriber
//! counts.
//!
//! - [`plan`]: the scenarios (fan-in, fan-out, latency, patterns, filters, scale) and what
//!   each run should deliver;
//! - [`target`]: the adapters (Sift's SDK, async-nats, redis-rs, rumqttc);
//! - [`mod@run`]: one run, closed loop at max rate or open loop at a fixed rate, ending in a
//!   [`run::RunResult`] JSON line;
//! - [`suite`]: starts what it needs on loopback, runs every scenario against every target
//!   several times, stops what it started, and writes the reports ([`report`]).
//!
//! The pure parts — [`tally`] (rates, ratio, percentiles), [`plan`], [`stamp`] — are tested
//! directly.

/// The chaos harness: a real cluster under load and faults, checked from client-side histories.
pub mod chaos;
pub mod cluster;
pub mod collect;
pub mod modes;
pub mod plan;
pub mod procs;
pub mod progress;
pub mod report;
pub mod run;
pub mod sim;
pub mod stamp;
pub mod suite;
pub mod tally;
pub mod target;
pub mod window;

pub use plan::{Params, Scenario};
pub use run::{run, RunOptions, RunResult};
pub use target::{Target, TargetKind};
