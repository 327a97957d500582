//! Made-up but plausible statistics, for timing the renderer and for tests of code that consumes
//! stats (the daemon's `/metrics` handler) without running VMs.

use std::collections::BTreeMap;

use crate::model::{
    DiskStats, HostCpuSeconds, HostDiskStats, HostNicStats, HostStats, NicStats, VmStats,
    KNOWN_STATES,
};

/// `count` VMs named `vm-0000`… (in reverse order, so sorting is exercised), each with `disks`
/// disks and `nics` interfaces; states cycle through [`KNOWN_STATES`], mostly "running".
pub fn vms(count: usize, disks: usize, nics: usize) -> Vec<VmStats> {
    (0..count)
        .rev()
        .map(|i| {
            let n = i as u64 + 1;
            let state = if i % 10 == 9 {
                KNOWN_STATES[i / 10 % KNOWN_STATES.len()]
            } else {
                "running"
            };
            VmStats {
                name: format!("vm-{i:04}"),
                state: state.to_owned(),
                uptime_seconds: 3600 * n,
                restarts_total: n % 3,
                vcpus: 2 + (i % 4) as u32,
                cpu_seconds_total: 1234.56 * n as f64,
                vcpu_seconds_total: 1100.25 * n as f64,
                cpu_percent: Some(37.5),
                vcpu_wait_seconds_total: 12.345678 * n as f64,
                memory_configured_bytes: 4 << 30,
                memory_rss_bytes: (3 << 30) + n * 4096,
                balloon_bytes: (i % 2 == 0).then_some(4 << 30),
                disks: (0..disks)
                    .map(|d| DiskStats {
                        device: format!("disk{d}"),
                        read_bytes: 1_000_000 * n + d as u64,
                        write_bytes: 2_000_000 * n,
                        read_ops: 1000 * n,
                        write_ops: 2000 * n,
                        flush_ops: 10 * n,
                        read_time_ns: 5_000_000_000 * n,
                        write_time_ns: 7_000_000_000 * n,
                        flush_time_ns: 100_000_000 * n,
                    })
                    .collect(),
                nics: (0..nics)
                    .map(|k| NicStats {
                        name: format!("net{k}"),
                        rx_bytes: 10_000 * n,
                        tx_bytes: 20_000 * n,
                        rx_packets: 100 * n,
                        tx_packets: 200 * n,
                    })
                    .collect(),
                network_note: None,
                sampled_at_ms: 1_700_000_000_000,
            }
        })
        .collect()
}

/// A 64-CPU, 512 GiB host with two disks and three interfaces, carrying `vms`.
pub fn host(vms: &[VmStats]) -> HostStats {
    let mut vms_by_state: BTreeMap<String, u32> =
        KNOWN_STATES.iter().map(|s| (s.to_string(), 0)).collect();
    for vm in vms {
        *vms_by_state.entry(vm.state.clone()).or_default() += 1;
    }
    HostStats {
        cpus: 64,
        cpu_percent: Some(42.0),
        cpu_seconds_total: HostCpuSeconds {
            user: 1e6,
            nice: 10.0,
            system: 2e5,
            idle: 5e6,
            iowait: 300.0,
            irq: 0.0,
            softirq: 120.5,
            steal: 0.0,
        },
        memory_total_bytes: 512 << 30,
        memory_available_bytes: 100 << 30,
        load1: 12.5,
        load5: 11.0,
        load15: 9.75,
        disks: ["nvme1n1", "nvme0n1"]
            .iter()
            .map(|d| HostDiskStats {
                device: d.to_string(),
                read_bytes: 1 << 40,
                write_bytes: 1 << 41,
                read_ops: 10_000_000,
                write_ops: 20_000_000,
                io_time_ms: 123_456_789,
            })
            .collect(),
        nics: ["eth0", "br0", "tap-vm-0000"]
            .iter()
            .map(|n| HostNicStats {
                name: n.to_string(),
                rx_bytes: 1 << 35,
                tx_bytes: 1 << 34,
                rx_packets: 1 << 25,
                tx_packets: 1 << 24,
                rx_errors: 0,
                tx_errors: 3,
                rx_drops: 17,
                tx_drops: 0,
            })
            .collect(),
        vcpus_committed: vms.iter().map(|v| u64::from(v.vcpus)).sum(),
        memory_committed_bytes: vms.iter().map(|v| v.memory_configured_bytes).sum(),
        vcpu_overcommit_ratio: 1.5,
        memory_overcommit_ratio: 0.9,
        vms_by_state,
        sampled_at_ms: 1_700_000_000_000,
    }
}
