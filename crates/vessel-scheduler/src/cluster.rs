//! The cluster view the scheduler places into: hosts sorted by name, an index of the ready
//! hosts ordered by load, and an index of which hosts run which groups.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::filter::{fits_after, Filtered};
use crate::model::{Host, HostState, HostUsage, Settings, Strategy, VmRequest};

/// How many fitting hosts, taken in load order, are compared by the strategy's score. A small
/// window keeps a placement cheap at 10,000 hosts; it is wide enough for pack to find a host
/// whose leftover resources the VM complements (see `docs/scheduler.md`).
pub const WINDOW: usize = 8;

/// How much pack's score weighs a placement that leaves a host's free CPU and free memory more
/// unequal, against how full it makes the host (measured: `docs/scheduler.md`).
const LOPSIDED_WEIGHT: f64 = 0.5;

/// One fraction (0..=1 of a host's limit) in the load key's fixed point.
const ONE: u64 = 1 << 30;

/// Where the VM goes, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub host: String,
    /// The version of the host's usage record the choice was made on: the daemon commits the
    /// placement only if the record is still at this version (compare-and-swap), after
    /// rechecking with [`crate::fits_after`].
    pub usage_version: u64,
    pub score: Score,
    /// Every host that was filtered out, in name order, with its reason. Filled by
    /// [`Cluster::explain`] (the dry run); [`Cluster::place`] leaves it empty (it looks at only
    /// as many hosts as it needs).
    pub filtered: Vec<Filtered>,
}

/// How the chosen host was scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub strategy: Strategy,
    /// Chosen among the hosts that already run the VM's affinity group.
    pub affinity: bool,
    /// The host's committed vCPUs and memory after the placement, as fractions of its limits.
    pub cpu_after: f64,
    pub memory_after: f64,
    /// The strategy's score of the chosen host (lower is better): for pack, minus the host's
    /// CPU + memory fractions after the placement, plus half the growth of the gap between them;
    /// for spread, the dominant (larger) fraction used after the placement.
    pub value: f64,
    /// How many fitting hosts were compared.
    pub compared: usize,
}

/// A request the scheduler refuses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlaceError {
    /// `--host` names a host the cluster does not have.
    UnknownHost { host: String },
    /// No host passes the filters; every host's reason, in name order.
    NoHostFits { filtered: Vec<Filtered> },
}

/// How many reasons the one-line refusal lists before it summarizes.
const SHOWN_REASONS: usize = 20;

impl fmt::Display for PlaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlaceError::UnknownHost { host } => {
                write!(f, "no host fits: no host named {host} in the cluster")
            }
            PlaceError::NoHostFits { filtered } if filtered.is_empty() => {
                f.write_str("no host fits: the cluster has no hosts")
            }
            PlaceError::NoHostFits { filtered } => {
                f.write_str("no host fits: ")?;
                for (i, item) in filtered.iter().take(SHOWN_REASONS).enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{item}")?;
                }
                if filtered.len() > SHOWN_REASONS {
                    write!(f, "; and {} more hosts", filtered.len() - SHOWN_REASONS)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for PlaceError {}

/// Why [`Cluster::apply`] refused.
#[derive(Debug, Clone, PartialEq)]
pub enum ApplyError {
    UnknownHost {
        host: String,
    },
    /// The host cannot take the VM (any more): the placement is stale.
    DoesNotFit(Filtered),
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::UnknownHost { host } => write!(f, "no host named {host} in the cluster"),
            ApplyError::DoesNotFit(filtered) => write!(f, "{filtered}"),
        }
    }
}

impl std::error::Error for ApplyError {}

/// Two hosts with one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateHost(pub String);

impl fmt::Display for DuplicateHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host {} is listed twice", self.0)
    }
}

impl std::error::Error for DuplicateHost {}

/// The hosts of a cluster, indexed for placement. Pure data: the caller builds it from the
/// store's host records and feeds changes back ([`Cluster::apply`], [`Cluster::set_usage`]).
#[derive(Debug, Clone)]
pub struct Cluster {
    settings: Settings,
    /// Sorted by name: a host's index is its rank by name, so ties broken by index are ties
    /// broken by name.
    hosts: Vec<Host>,
    by_name: BTreeMap<String, usize>,
    /// (order key, host index) of every ready host, in the strategy's preference order:
    /// fullest first for pack, emptiest first for spread.
    order: BTreeSet<(u64, usize)>,
    /// Each host's current key in `order` (None: not ready, not indexed).
    keys: Vec<Option<u64>>,
    /// Group name -> the hosts that run at least one of its VMs.
    groups: BTreeMap<String, BTreeSet<usize>>,
}

impl Cluster {
    pub fn new(mut hosts: Vec<Host>, settings: Settings) -> Result<Cluster, DuplicateHost> {
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        let mut by_name = BTreeMap::new();
        for (i, host) in hosts.iter().enumerate() {
            if by_name.insert(host.name.clone(), i).is_some() {
                return Err(DuplicateHost(host.name.clone()));
            }
        }
        let mut cluster = Cluster {
            settings,
            keys: vec![None; hosts.len()],
            hosts,
            by_name,
            order: BTreeSet::new(),
            groups: BTreeMap::new(),
        };
        for i in 0..cluster.hosts.len() {
            cluster.index(i);
        }
        Ok(cluster)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The hosts, in name order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.by_name.get(name).map(|&i| &self.hosts[i])
    }

    /// Chooses a host for `vm`. Fast: walks the load index only until it has [`WINDOW`] fitting
    /// hosts, so `filtered` stays empty; a refusal scans every host and gives every reason.
    pub fn place(&self, vm: &VmRequest) -> Result<Placement, PlaceError> {
        if let Some(pinned) = &vm.host {
            return self.place_pinned(pinned, vm);
        }
        let oc = &self.settings.overcommit;
        if let Some(window) = self.affinity_window(vm) {
            return Ok(self
                .choose(&window, vm, true, Vec::new())
                .expect("a fitting host"));
        }
        let window: Vec<usize> = self
            .order
            .iter()
            .map(|&(_, i)| i)
            .filter(|&i| fits_after(&self.hosts[i], vm, oc).is_ok())
            .take(WINDOW)
            .collect();
        match self.choose(&window, vm, false, Vec::new()) {
            Some(placement) => Ok(placement),
            None => Err(PlaceError::NoHostFits {
                filtered: self.all_reasons(vm),
            }),
        }
    }

    /// The dry run: the same choice as [`Cluster::place`], made by a scan of every host, with
    /// every filtered host's reason. (A pinned request considers only its host, as in `place`.)
    pub fn explain(&self, vm: &VmRequest) -> Result<Placement, PlaceError> {
        if let Some(pinned) = &vm.host {
            return self.place_pinned(pinned, vm);
        }
        let oc = &self.settings.overcommit;
        let mut filtered = Vec::new();
        let mut fitting = Vec::new();
        for (i, host) in self.hosts.iter().enumerate() {
            match fits_after(host, vm, oc) {
                Ok(()) => fitting.push(i),
                Err(reason) => filtered.push(Filtered {
                    host: host.name.clone(),
                    reason,
                }),
            }
        }
        if fitting.is_empty() {
            return Err(PlaceError::NoHostFits { filtered });
        }
        if let Some(window) = self.affinity_window(vm) {
            return Ok(self
                .choose(&window, vm, true, filtered)
                .expect("a fitting host"));
        }
        fitting.sort_by_key(|&i| (self.keys[i], i));
        fitting.truncate(WINDOW);
        Ok(self
            .choose(&fitting, vm, false, filtered)
            .expect("a fitting host"))
    }

    fn place_pinned(&self, pinned: &str, vm: &VmRequest) -> Result<Placement, PlaceError> {
        let Some(&i) = self.by_name.get(pinned) else {
            return Err(PlaceError::UnknownHost {
                host: pinned.to_string(),
            });
        };
        match fits_after(&self.hosts[i], vm, &self.settings.overcommit) {
            Ok(()) => Ok(self
                .choose(&[i], vm, false, Vec::new())
                .expect("one candidate")),
            Err(reason) => Err(PlaceError::NoHostFits {
                filtered: vec![Filtered {
                    host: pinned.to_string(),
                    reason,
                }],
            }),
        }
    }

    /// Affinity is a preference: when hosts that run the group fit, the choice is made among
    /// them only (the first [`WINDOW`] in preference order); otherwise (none runs it yet, or none
    /// has room) the normal choice applies.
    fn affinity_window(&self, vm: &VmRequest) -> Option<Vec<usize>> {
        let hosts = self.groups.get(vm.affinity.as_ref()?)?;
        let oc = &self.settings.overcommit;
        let mut fitting: Vec<usize> = hosts
            .iter()
            .copied()
            .filter(|&i| fits_after(&self.hosts[i], vm, oc).is_ok())
            .collect();
        fitting.sort_by_key(|&i| (self.keys[i], i));
        fitting.truncate(WINDOW);
        (!fitting.is_empty()).then_some(fitting)
    }

    /// The best of `window` (fitting hosts in preference order) by the strategy's score; ties
    /// go to the earlier one (fuller for pack, emptier for spread, then by name).
    fn choose(
        &self,
        window: &[usize],
        vm: &VmRequest,
        affinity: bool,
        filtered: Vec<Filtered>,
    ) -> Option<Placement> {
        let mut best: Option<(f64, usize)> = None;
        for &i in window {
            let value = self.score(&self.hosts[i], vm);
            if best.is_none_or(|(b, _)| value < b) {
                best = Some((value, i));
            }
        }
        let (value, i) = best?;
        let host = &self.hosts[i];
        let (cpu_after, memory_after) = fractions_after(host, vm, &self.settings);
        Some(Placement {
            host: host.name.clone(),
            usage_version: host.usage.version,
            score: Score {
                strategy: self.settings.strategy,
                affinity,
                cpu_after,
                memory_after,
                value,
                compared: window.len(),
            },
            filtered,
        })
    }

    fn score(&self, host: &Host, vm: &VmRequest) -> f64 {
        let (cpu_after, memory_after) = fractions_after(host, vm, &self.settings);
        match self.settings.strategy {
            // The fuller the host after the placement (CPU + memory fractions), the better;
            // minus half of how much more lopsided its leftover room gets, so that among hosts
            // about as full a VM goes where it uses what the host has most of, and CPU-heavy and
            // memory-heavy VMs share hosts instead of stranding room.
            Strategy::Pack => {
                let (cpu_before, memory_before) = fractions(host, &self.settings);
                let lopsided =
                    (cpu_after - memory_after).abs() - (cpu_before - memory_before).abs();
                -(cpu_after + memory_after) + LOPSIDED_WEIGHT * lopsided
            }
            Strategy::Spread => cpu_after.max(memory_after),
        }
    }

    /// Every host's reason for not taking `vm` (for a refusal: all hosts fail).
    fn all_reasons(&self, vm: &VmRequest) -> Vec<Filtered> {
        let oc = &self.settings.overcommit;
        self.hosts
            .iter()
            .filter_map(|h| {
                fits_after(h, vm, oc).err().map(|reason| Filtered {
                    host: h.name.clone(),
                    reason,
                })
            })
            .collect()
    }

    /// Records `vm` on `host` (after the same check as [`crate::fits_after`], so the cluster
    /// never commits beyond the ratios). Returns the host's new usage version.
    pub fn apply(&mut self, host: &str, vm: &VmRequest) -> Result<u64, ApplyError> {
        let i = self.lookup(host)?;
        fits_after(&self.hosts[i], vm, &self.settings.overcommit).map_err(|reason| {
            ApplyError::DoesNotFit(Filtered {
                host: host.to_string(),
                reason,
            })
        })?;
        let usage = self.hosts[i].usage.with(vm);
        Ok(self.replace_usage(i, usage))
    }

    /// Removes `vm` from `host` (deleted, or moved away). Returns the new usage version.
    pub fn release(&mut self, host: &str, vm: &VmRequest) -> Result<u64, ApplyError> {
        let i = self.lookup(host)?;
        let usage = self.hosts[i].usage.without(vm);
        Ok(self.replace_usage(i, usage))
    }

    /// Replaces a host's usage record (the daemon read a newer one from the store).
    pub fn set_usage(&mut self, host: &str, usage: HostUsage) -> Result<(), ApplyError> {
        let i = self.lookup(host)?;
        self.replace_usage(i, usage);
        Ok(())
    }

    /// Changes a host's state (maintenance, unreachable, ready again).
    pub fn set_state(&mut self, host: &str, state: HostState) -> Result<(), ApplyError> {
        let i = self.lookup(host)?;
        self.unindex(i);
        self.hosts[i].state = state;
        self.index(i);
        Ok(())
    }

    fn lookup(&self, host: &str) -> Result<usize, ApplyError> {
        self.by_name
            .get(host)
            .copied()
            .ok_or_else(|| ApplyError::UnknownHost {
                host: host.to_string(),
            })
    }

    fn replace_usage(&mut self, i: usize, usage: HostUsage) -> u64 {
        self.unindex(i);
        self.hosts[i].usage = usage;
        self.index(i);
        self.hosts[i].usage.version
    }

    fn index(&mut self, i: usize) {
        let host = &self.hosts[i];
        for group in host.usage.groups.keys() {
            self.groups.entry(group.clone()).or_default().insert(i);
        }
        if host.state == HostState::Ready {
            let key = order_key(host, &self.settings);
            self.order.insert((key, i));
            self.keys[i] = Some(key);
        }
    }

    fn unindex(&mut self, i: usize) {
        for group in self.hosts[i].usage.groups.keys() {
            if let Some(hosts) = self.groups.get_mut(group) {
                hosts.remove(&i);
                if hosts.is_empty() {
                    self.groups.remove(group);
                }
            }
        }
        if let Some(key) = self.keys[i].take() {
            self.order.remove(&(key, i));
        }
    }
}

/// Committed vCPUs and memory as fractions of the host's limits (1.0 when a limit is 0).
fn fractions(host: &Host, settings: &Settings) -> (f64, f64) {
    let oc = &settings.overcommit;
    (
        fraction(host.usage.cpus, host.cpu_limit(oc)),
        fraction(host.usage.memory_mib, host.memory_limit_mib(oc)),
    )
}

fn fractions_after(host: &Host, vm: &VmRequest, settings: &Settings) -> (f64, f64) {
    let oc = &settings.overcommit;
    (
        fraction(host.usage.cpus + u64::from(vm.cpus), host.cpu_limit(oc)),
        fraction(
            host.usage.memory_mib + vm.memory_mib,
            host.memory_limit_mib(oc),
        ),
    )
}

fn fraction(used: u64, limit: u64) -> f64 {
    if limit == 0 {
        1.0
    } else {
        used as f64 / limit as f64
    }
}

/// The host's place in the preference order: its load (CPU fraction + memory fraction, fixed
/// point), inverted for pack so that the fullest host comes first.
fn order_key(host: &Host, settings: &Settings) -> u64 {
    let oc = &settings.overcommit;
    let part = |used: u64, limit: u64| -> u64 {
        if limit == 0 {
            return ONE;
        }
        ((u128::from(used) * u128::from(ONE)) / u128::from(limit)).min(u128::from(ONE)) as u64
    };
    let load = part(host.usage.cpus, host.cpu_limit(oc))
        + part(host.usage.memory_mib, host.memory_limit_mib(oc));
    match settings.strategy {
        Strategy::Pack => 2 * ONE - load,
        Strategy::Spread => load,
    }
}
