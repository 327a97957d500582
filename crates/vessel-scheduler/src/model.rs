//! The scheduler's inputs: hosts with their capacity and usage, the VM request, the settings.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Whether a host takes new VMs. Only `Ready` hosts do, pinned or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    Ready,
    Maintenance,
    Unreachable,
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostState::Ready => "ready",
            HostState::Maintenance => "maintenance",
            HostState::Unreachable => "unreachable",
        })
    }
}

/// A QEMU accelerator a host can run VMs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// How the scheduler chooses among the hosts that fit (a cluster setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Fill the fullest host that fits: as few hosts as possible in use.
    #[default]
    Pack,
    /// Fill the emptiest host: load balanced across all hosts.
    Spread,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Pack => "pack",
            Strategy::Spread => "spread",
        })
    }
}

/// How many vCPUs per physical CPU and how much VM memory per byte of host memory may be
/// committed (cluster settings). The defaults are OpenStack Nova's since Stein
/// (`initial_cpu_allocation_ratio` 4.0, `initial_ram_allocation_ratio` 1.0): CPU time is shared
/// gracefully, memory is not (an overcommitted host swaps or OOM-kills guests).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Overcommit {
    pub cpu: f64,
    pub memory: f64,
}

impl Default for Overcommit {
    fn default() -> Self {
        Overcommit {
            cpu: 4.0,
            memory: 1.0,
        }
    }
}

/// The cluster settings the scheduler uses.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Settings {
    pub strategy: Strategy,
    pub overcommit: Overcommit,
}

/// What is committed to VMs on a host. The daemon keeps one such record per host
/// (`hosts/<name>/usage`) and commits a placement together with the new record by
/// compare-and-swap on it, so two racing creates cannot both take the last room.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostUsage {
    /// vCPUs committed to the VMs placed on the host.
    pub cpus: u64,
    /// Memory committed to them, in MiB.
    pub memory_mib: u64,
    /// Group name -> the names of the host's VMs in that group (affinity and anti-affinity
    /// groups share one namespace; the request says which rule applies).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, BTreeSet<String>>,
    /// Bumped by every change ([`HostUsage::with`], [`HostUsage::without`]): the value the
    /// caller compares before it commits a placement.
    pub version: u64,
}

impl HostUsage {
    /// The record after `vm` is placed on the host (version + 1). Does not check that it fits:
    /// see [`crate::fits_after`].
    pub fn with(&self, vm: &VmRequest) -> HostUsage {
        let mut next = self.clone();
        next.cpus += u64::from(vm.cpus);
        next.memory_mib += vm.memory_mib;
        for group in vm.groups() {
            next.groups
                .entry(group.to_string())
                .or_default()
                .insert(vm.name.clone());
        }
        next.version += 1;
        next
    }

    /// The record after `vm` has left the host (deleted or moved away; version + 1).
    pub fn without(&self, vm: &VmRequest) -> HostUsage {
        let mut next = self.clone();
        next.cpus = next.cpus.saturating_sub(u64::from(vm.cpus));
        next.memory_mib = next.memory_mib.saturating_sub(vm.memory_mib);
        for group in vm.groups() {
            if let Some(members) = next.groups.get_mut(group) {
                members.remove(&vm.name);
                if members.is_empty() {
                    next.groups.remove(group);
                }
            }
        }
        next.version += 1;
        next
    }
}

/// One candidate host as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub state: HostState,
    /// Physical CPUs (threads) the host offers VMs.
    pub cpus: u32,
    /// Memory the host offers VMs, in MiB (after its own reserve).
    pub memory_mib: u64,
    pub usage: HostUsage,
    /// Machine types its QEMU supports (`pc`, `q35`, `microvm`, ...).
    pub machine_types: BTreeSet<String>,
    /// Accelerators it can run (a KVM host can also run TCG).
    pub accelerators: BTreeSet<Accel>,
    pub pools: BTreeSet<String>,
    pub networks: BTreeSet<String>,
    pub labels: BTreeMap<String, String>,
}

impl Host {
    /// A ready host with the given capacity, nothing used, and the usual QEMU abilities
    /// (machine types `pc`, `q35`, `microvm`; accelerators `kvm` and `tcg`), no pools, networks
    /// or labels. Handy for tests and benchmarks; the daemon fills every field itself.
    pub fn new(name: &str, cpus: u32, memory_mib: u64) -> Host {
        Host {
            name: name.to_string(),
            state: HostState::Ready,
            cpus,
            memory_mib,
            usage: HostUsage::default(),
            machine_types: ["pc", "q35", "microvm"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            accelerators: [Accel::Kvm, Accel::Tcg].into_iter().collect(),
            pools: BTreeSet::new(),
            networks: BTreeSet::new(),
            labels: BTreeMap::new(),
        }
    }

    /// vCPUs that may be committed on this host: CPUs × the CPU overcommit ratio, rounded down.
    pub fn cpu_limit(&self, overcommit: &Overcommit) -> u64 {
        scaled(u64::from(self.cpus), overcommit.cpu)
    }

    /// MiB that may be committed on this host: memory × the memory overcommit ratio.
    pub fn memory_limit_mib(&self, overcommit: &Overcommit) -> u64 {
        scaled(self.memory_mib, overcommit.memory)
    }

    /// vCPUs still free under the ratio (0 when already over it).
    pub fn cpus_free(&self, overcommit: &Overcommit) -> u64 {
        self.cpu_limit(overcommit).saturating_sub(self.usage.cpus)
    }

    /// MiB still free under the ratio (0 when already over it).
    pub fn memory_free_mib(&self, overcommit: &Overcommit) -> u64 {
        self.memory_limit_mib(overcommit)
            .saturating_sub(self.usage.memory_mib)
    }
}

/// `value × ratio`, rounded down; a negative or NaN ratio counts as 0.
fn scaled(value: u64, ratio: f64) -> u64 {
    if ratio.is_nan() || ratio <= 0.0 {
        return 0;
    }
    // f64 is exact for the integers involved (CPUs, MiB: far below 2^53).
    (value as f64 * ratio).floor() as u64
}

/// The VM to place.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VmRequest {
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Machine type the VM needs; `None`: any (the host's default).
    #[serde(default)]
    pub machine: Option<String>,
    /// Accelerator the VM needs; `None`: any.
    #[serde(default)]
    pub accelerator: Option<Accel>,
    #[serde(default)]
    pub pools: BTreeSet<String>,
    #[serde(default)]
    pub networks: BTreeSet<String>,
    /// Labels the host must carry, each with exactly this value.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `--host`: only this host is considered.
    #[serde(default)]
    pub host: Option<String>,
    /// No two VMs of this group on one host.
    #[serde(default)]
    pub anti_affinity: Option<String>,
    /// Prefer hosts that already run VMs of this group (a preference, not a requirement).
    #[serde(default)]
    pub affinity: Option<String>,
}

impl VmRequest {
    /// A request for `cpus` vCPUs and `memory_mib` MiB with no other constraint.
    pub fn new(name: &str, cpus: u32, memory_mib: u64) -> VmRequest {
        VmRequest {
            name: name.to_string(),
            cpus,
            memory_mib,
            ..VmRequest::default()
        }
    }

    /// The groups this VM is recorded under on its host.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        let affinity = self
            .affinity
            .as_deref()
            .filter(|a| Some(*a) != self.anti_affinity.as_deref());
        self.anti_affinity.as_deref().into_iter().chain(affinity)
    }
}
