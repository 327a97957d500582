//! Performance statistics for Vessel: cheap sampling of QEMU processes and of the host from /proc,
//! plain stats records the daemon fills (and the API can return), and their Prometheus rendering.
//!
//! Why a crate of its own, with no daemon types: everything here is pure or reads only /proc, so
//! it can be tested and timed alone. The daemon owns the QMP queries and the sampling loop and
//! hands their results in as plain values.
//!
//! Cost targets (see `examples/`): sampling one VM well under 1 ms (50 VMs every 5 s within 1% of
//! a core), rendering `/metrics` for 200 VMs well under 20 ms.

pub mod model;
pub mod procfs;
pub mod prometheus;
pub mod rate;
pub mod synthetic;

pub use model::{
    DiskStats, HostCpuSeconds, HostDiskStats, HostNicStats, HostStats, NicStats, VmStats,
    ACTIVE_STATES, KNOWN_STATES,
};
pub use procfs::{
    clock_ticks_per_second, page_size, HostSample, ProcError, ProcFs, ProcessSample, ThreadSample,
};
pub use rate::{counter_delta, cpu_percent, per_second};
