//! The sampler's memory, held by `Ctx` (its own file so that it depends on nothing that
//! depends on `Ctx`); `sampler.rs` fills it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use vessel_metrics::{HostSample, HostStats, ProcFs, ProcessSample, VmStats};
use vessel_qemu::stats::StatsProbe;

/// The sampler's memory: last samples (for rates), known vCPU threads, the latest round.
#[derive(Default)]
pub struct Sampler {
    pub(super) state: Mutex<State>,
    /// Probes of running VMs, registered by their workers.
    pub(super) probes: Mutex<HashMap<String, Arc<dyn StatsProbe>>>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) procfs: ProcFs,
    pub(super) host_prev: Option<HostSample>,
    pub(super) vm_prev: HashMap<String, (ProcessSample, Instant)>,
    pub(super) vcpu_threads: HashMap<String, (u32, Vec<u32>)>,
    pub(super) latest: Option<Round>,
}

/// One round of samples: what `/metrics` and `GET /v1/stats` serve.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Round {
    pub host: HostStats,
    pub vms: Vec<VmStats>,
}

impl Sampler {
    pub fn register(&self, vm: &str, probe: Arc<dyn StatsProbe>) {
        self.probes.lock().insert(vm.to_string(), probe);
    }

    pub fn forget(&self, vm: &str) {
        self.probes.lock().remove(vm);
        let mut state = self.state.lock();
        state.vm_prev.remove(vm);
        state.vcpu_threads.remove(vm);
    }

    pub(super) fn probe(&self, vm: &str) -> Option<Arc<dyn StatsProbe>> {
        self.probes.lock().get(vm).cloned()
    }

    /// The latest round, if one was taken.
    pub fn latest(&self) -> Option<Round> {
        self.state.lock().latest.clone()
    }
}
