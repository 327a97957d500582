//! The filters: whether one host can take one VM, and if not, why (a sentence with figures).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{Accel, Host, HostState, Overcommit, VmRequest};

/// Why a host cannot take the VM. `Display` is the human sentence without the host's name
/// ([`Filtered`] adds it): "1.5 GiB memory free, needs 2 GiB".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Not ready (maintenance or unreachable).
    State {
        state: HostState,
    },
    MachineType {
        wanted: String,
        has: Vec<String>,
    },
    Accelerator {
        wanted: Accel,
        has: Vec<Accel>,
    },
    Pool {
        pool: String,
    },
    Network {
        network: String,
    },
    /// `has` is the host's value of that label, if it has the label at all.
    Label {
        key: String,
        wanted: String,
        has: Option<String>,
    },
    /// The host runs `vm`, a member of the VM's anti-affinity group.
    AntiAffinity {
        group: String,
        vm: String,
    },
    /// Not enough vCPUs left under the CPU overcommit ratio.
    Cpu {
        free: u64,
        needs: u64,
        cpus: u32,
        ratio: f64,
    },
    /// Not enough memory left under the memory overcommit ratio.
    Memory {
        free_mib: u64,
        needs_mib: u64,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::State {
                state: HostState::Maintenance,
            } => f.write_str("in maintenance"),
            Reason::State { state } => write!(f, "{state}"),
            Reason::MachineType { wanted, has } => {
                write!(f, "no machine type {wanted} (has {})", list(has))
            }
            Reason::Accelerator { wanted, has } => write!(f, "no {wanted} (has {})", list(has)),
            Reason::Pool { pool } => write!(f, "lacks pool {pool}"),
            Reason::Network { network } => write!(f, "lacks network {network}"),
            Reason::Label {
                key,
                wanted,
                has: None,
            } => write!(f, "lacks label {key}={wanted}"),
            Reason::Label {
                key,
                wanted,
                has: Some(has),
            } => {
                write!(f, "label {key}={has}, needs {key}={wanted}")
            }
            Reason::AntiAffinity { group, vm } => {
                write!(f, "runs {vm} of anti-affinity group {group}")
            }
            Reason::Cpu {
                free,
                needs,
                cpus,
                ratio,
            } => write!(
                f,
                "{free} vCPU{} free ({cpus} CPUs × {ratio:.1} overcommit), needs {needs}",
                if *free == 1 { "" } else { "s" }
            ),
            Reason::Memory {
                free_mib,
                needs_mib,
            } => {
                let (free, needs) = memory_pair(*free_mib, *needs_mib);
                write!(f, "{free} memory free, needs {needs}")
            }
        }
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_string();
    }
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A memory size for people: "2 GiB", "1.5 GiB", "512 MiB".
pub fn memory(mib: u64) -> String {
    if mib >= 1024 && mib % 1024 == 0 {
        format!("{} GiB", mib / 1024)
    } else if mib >= 1024 {
        let text = format!("{:.1}", mib as f64 / 1024.0);
        format!("{} GiB", text.trim_end_matches(".0"))
    } else {
        format!("{mib} MiB")
    }
}

/// Two sizes that must not read alike when they differ (1535 and 1536 MiB both round to
/// 1.5 GiB): then both are given in MiB.
fn memory_pair(a: u64, b: u64) -> (String, String) {
    let (x, y) = (memory(a), memory(b));
    if x == y && a != b {
        (format!("{a} MiB"), format!("{b} MiB"))
    } else {
        (x, y)
    }
}

/// A host that was filtered out, and why. `Display`: "a: 1.5 GiB memory free, needs 2 GiB".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Filtered {
    pub host: String,
    pub reason: Reason,
}

impl fmt::Display for Filtered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.host, self.reason)
    }
}

/// Whether `host`, in its current state and with its current usage, can take `vm`: every filter,
/// in the order a person would look (state, abilities, placement rules, room). The first that
/// fails is the reason. This is also the recheck before a compare-and-swap commit: call it on the
/// host record read in the transaction's snapshot.
pub fn fits_after(host: &Host, vm: &VmRequest, overcommit: &Overcommit) -> Result<(), Reason> {
    if host.state != HostState::Ready {
        return Err(Reason::State { state: host.state });
    }
    static_fit(host, vm)?;
    anti_affinity(host, vm)?;
    capacity(host, vm, overcommit)
}

/// The filters on what the host is and has (not what it runs).
pub(crate) fn static_fit(host: &Host, vm: &VmRequest) -> Result<(), Reason> {
    if let Some(machine) = &vm.machine {
        if !host.machine_types.contains(machine) {
            return Err(Reason::MachineType {
                wanted: machine.clone(),
                has: host.machine_types.iter().cloned().collect(),
            });
        }
    }
    if let Some(accel) = vm.accelerator {
        if !host.accelerators.contains(&accel) {
            return Err(Reason::Accelerator {
                wanted: accel,
                has: host.accelerators.iter().copied().collect(),
            });
        }
    }
    if let Some(pool) = vm.pools.iter().find(|p| !host.pools.contains(*p)) {
        return Err(Reason::Pool { pool: pool.clone() });
    }
    if let Some(network) = vm.networks.iter().find(|n| !host.networks.contains(*n)) {
        return Err(Reason::Network {
            network: network.clone(),
        });
    }
    for (key, wanted) in &vm.labels {
        let has = host.labels.get(key);
        if has != Some(wanted) {
            return Err(Reason::Label {
                key: key.clone(),
                wanted: wanted.clone(),
                has: has.cloned(),
            });
        }
    }
    Ok(())
}

pub(crate) fn anti_affinity(host: &Host, vm: &VmRequest) -> Result<(), Reason> {
    let Some(group) = &vm.anti_affinity else {
        return Ok(());
    };
    // A VM does not repel itself (a re-placement of a VM the record still lists).
    match host
        .usage
        .groups
        .get(group)
        .and_then(|m| m.iter().find(|v| **v != vm.name))
    {
        Some(other) => Err(Reason::AntiAffinity {
            group: group.clone(),
            vm: other.clone(),
        }),
        None => Ok(()),
    }
}

pub(crate) fn capacity(host: &Host, vm: &VmRequest, overcommit: &Overcommit) -> Result<(), Reason> {
    let free_mib = host.memory_free_mib(overcommit);
    if vm.memory_mib > free_mib {
        return Err(Reason::Memory {
            free_mib,
            needs_mib: vm.memory_mib,
        });
    }
    let free = host.cpus_free(overcommit);
    if u64::from(vm.cpus) > free {
        return Err(Reason::Cpu {
            free,
            needs: u64::from(vm.cpus),
            cpus: host.cpus,
            ratio: overcommit.cpu,
        });
    }
    Ok(())
}
