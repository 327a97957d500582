//! Vessel's scheduler: which host of a cluster a new VM goes to, or why none can take it.
//!
//! Pure like `vessel-core`: no IO, no async, no store, no clock, no randomness. The same hosts
//! and request always give the same answer (ties are broken by host name).
//!
//! - [`fits_after`] is every filter applied to one host: state (only ready hosts take VMs, even
//!   pinned ones), machine type, accelerator, pools, networks, labels, anti-affinity, and room
//!   under the overcommit ratios. A failure is a [`Reason`] whose `Display` is a sentence with
//!   figures.
//! - [`Cluster`] holds the hosts, indexed by load, and chooses: [`Cluster::place`] (fast) or
//!   [`Cluster::explain`] (the dry run, with every filtered host's reason; same choice).
//!   [`Cluster::apply`] records a placement on the host's usage.
//! - [`HostUsage`] is the record the daemon commits by compare-and-swap with the VM's
//!   placement; [`Placement::usage_version`] is the version it compares.
//!
//! The strategies, the reasons and the measured figures: `docs/scheduler.md`.

mod cluster;
mod filter;
mod model;
pub mod synthetic;

pub use cluster::{ApplyError, Cluster, DuplicateHost, PlaceError, Placement, Score, WINDOW};
pub use filter::{fits_after, memory, Filtered, Reason};
pub use model::{Accel, Host, HostState, HostUsage, Overcommit, Settings, Strategy, VmRequest};
