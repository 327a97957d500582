//! Plain statistics records: what the daemon fills from /proc and QMP, what `/metrics` renders, and
//! what an API response can carry as JSON.
//!
//! They hold no daemon types so the API crate can re-export them as they are. Units are in the
//! field names (`_bytes`, `_seconds`, `_ns`); `_total` marks a counter that only grows for the life
//! of one QEMU process, everything else is a current value (a gauge).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::procfs::{HostSample, ProcessSample};
use crate::rate::ticks_to_seconds;

/// VM states in which a QEMU process exists, mirroring `VmState::has_process` of the API crate (a
/// dependency on it would be circular). They count towards the host's committed resources and
/// make `vessel_vm_up` 1.
pub const ACTIVE_STATES: &[&str] = &["starting", "running", "paused", "stopping"];

/// Every VM state, so that `vessel_vm_state` and `vessel_host_vms` show a 0 for the states a VM is
/// not in (alerts on "crashed" need the series to exist before it turns 1). Mirrors
/// `VmState::as_str`; a state not listed still renders.
pub const KNOWN_STATES: &[&str] = &[
    "stopped", "starting", "running", "paused", "stopping", "crashed",
];

/// Whether a VM in `state` has a QEMU process.
pub fn is_active_state(state: &str) -> bool {
    ACTIVE_STATES.contains(&state)
}

/// Statistics of one VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmStats {
    pub name: String,
    /// Observed state, as the API spells it ("running", "stopped", …).
    pub state: String,
    /// Seconds since the current QEMU process started; 0 without one.
    pub uptime_seconds: u64,
    /// Times the restart policy restarted the VM after an exit.
    pub restarts_total: u64,
    /// Configured vCPUs.
    pub vcpus: u32,
    /// CPU time of the QEMU process, all threads (vCPUs, I/O, emulator), user + system.
    pub cpu_seconds_total: f64,
    /// CPU time of the vCPU threads alone: what the guest itself ran.
    pub vcpu_seconds_total: f64,
    /// CPU use of the QEMU process over the last sampling period, in percent of one core (above
    /// 100 with several busy vCPUs); `None` on the first sample of a process.
    pub cpu_percent: Option<f64>,
    /// Time the vCPU threads spent runnable but waiting for a host CPU (schedstat run delay): the
    /// host-side view of the guest's steal time. Grows when the host is overcommitted.
    pub vcpu_wait_seconds_total: f64,
    pub memory_configured_bytes: u64,
    /// Resident memory of the QEMU process: guest RAM the guest has touched plus QEMU's own.
    pub memory_rss_bytes: u64,
    /// Guest memory size after ballooning (QMP `query-balloon` `actual`); `None` without a
    /// balloon device.
    pub balloon_bytes: Option<u64>,
    pub disks: Vec<DiskStats>,
    pub nics: Vec<NicStats>,
    /// Why `nics` is empty when it is, e.g. user-mode networking (slirp) exposes no counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_note: Option<String>,
    /// When the sample was taken, milliseconds since the Unix epoch.
    pub sampled_at_ms: u64,
}

/// Counters of one VM disk, from QMP `query-blockstats` (totals since QEMU started).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStats {
    /// The guest-facing device name (the drive's id, e.g. "disk0" or "vda").
    pub device: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
    pub flush_ops: u64,
    /// Sum of the latencies of all completed reads (`rd_total_time_ns`); divided by `read_ops`
    /// it is the mean read latency.
    pub read_time_ns: u64,
    /// `wr_total_time_ns`.
    pub write_time_ns: u64,
    /// `flush_total_time_ns`.
    pub flush_time_ns: u64,
}

/// Counters of one VM network interface, totals since it appeared, from the guest's point of view:
/// `rx` is what the guest received. (A host tap device counts the other way round: its tx is the
/// guest's rx.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicStats {
    pub name: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl VmStats {
    /// Fills the CPU and memory fields from a [`ProcessSample`] whose `threads` are the VM's vCPU
    /// threads; `prev` (an earlier sample and the wall time since) gives `cpu_percent`.
    pub fn apply_process_sample(
        &mut self,
        cur: &ProcessSample,
        prev: Option<(&ProcessSample, Duration)>,
        clk_tck: u64,
    ) {
        self.cpu_seconds_total = ticks_to_seconds(cur.cpu_ticks(), clk_tck);
        let vcpu_ticks: u64 = cur.threads.iter().map(|t| t.cpu_ticks()).sum();
        self.vcpu_seconds_total = ticks_to_seconds(vcpu_ticks, clk_tck);
        let wait_ns: u64 = cur.threads.iter().filter_map(|t| t.run_delay_ns).sum();
        self.vcpu_wait_seconds_total = wait_ns as f64 / 1e9;
        self.memory_rss_bytes = cur.rss_bytes;
        self.cpu_percent = prev.and_then(|(p, elapsed)| cur.cpu_percent_since(p, elapsed, clk_tck));
    }
}

/// Statistics of the host and of what its VMs ask of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostStats {
    /// Online CPUs.
    pub cpus: u32,
    /// Busy share of all CPUs over the last sampling period (0–100); `None` on the first sample.
    pub cpu_percent: Option<f64>,
    /// Cumulative CPU time by mode, summed over all CPUs.
    pub cpu_seconds_total: HostCpuSeconds,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub disks: Vec<HostDiskStats>,
    pub nics: Vec<HostNicStats>,
    /// vCPUs of the VMs that have a QEMU process ([`ACTIVE_STATES`]).
    pub vcpus_committed: u64,
    /// Configured memory of the VMs that have a QEMU process.
    pub memory_committed_bytes: u64,
    /// `vcpus_committed / cpus`: above 1 the vCPUs compete for host CPUs.
    pub vcpu_overcommit_ratio: f64,
    /// `memory_committed_bytes / memory_total_bytes`: above 1 the host relies on guests not
    /// touching all their memory.
    pub memory_overcommit_ratio: f64,
    /// Number of VMs in each state; every known state is present, with 0 if need be.
    pub vms_by_state: BTreeMap<String, u32>,
    /// When the sample was taken, milliseconds since the Unix epoch.
    pub sampled_at_ms: u64,
}

/// Host CPU time by mode, seconds summed over all CPUs. `guest` time is part of `user`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HostCpuSeconds {
    pub user: f64,
    pub nice: f64,
    pub system: f64,
    pub idle: f64,
    pub iowait: f64,
    pub irq: f64,
    pub softirq: f64,
    pub steal: f64,
}

impl HostCpuSeconds {
    /// (mode, seconds) pairs in a fixed order, for rendering.
    pub fn modes(&self) -> [(&'static str, f64); 8] {
        [
            ("idle", self.idle),
            ("iowait", self.iowait),
            ("irq", self.irq),
            ("nice", self.nice),
            ("softirq", self.softirq),
            ("steal", self.steal),
            ("system", self.system),
            ("user", self.user),
        ]
    }
}

/// Counters of one host disk (whole disks from /proc/diskstats).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDiskStats {
    pub device: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
    /// Milliseconds during which the device had I/O in flight.
    pub io_time_ms: u64,
}

/// Counters of one host network interface (/proc/net/dev).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNicStats {
    pub name: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_drops: u64,
    pub tx_drops: u64,
}

impl HostStats {
    /// Builds host statistics from a host sample (and the previous one, for `cpu_percent`) and
    /// the statistics of every VM, stopped ones included (they count in `vms_by_state`).
    pub fn from_sample(
        cur: &HostSample,
        prev: Option<&HostSample>,
        vms: &[VmStats],
        clk_tck: u64,
        sampled_at_ms: u64,
    ) -> HostStats {
        let secs = |t| ticks_to_seconds(t, clk_tck);
        let c = &cur.cpu;
        let mut vms_by_state: BTreeMap<String, u32> =
            KNOWN_STATES.iter().map(|s| (s.to_string(), 0)).collect();
        let (mut vcpus_committed, mut memory_committed_bytes) = (0u64, 0u64);
        for vm in vms {
            *vms_by_state.entry(vm.state.clone()).or_default() += 1;
            if is_active_state(&vm.state) {
                vcpus_committed += u64::from(vm.vcpus);
                memory_committed_bytes += vm.memory_configured_bytes;
            }
        }
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        HostStats {
            cpus: cur.cpus,
            cpu_percent: prev.and_then(|p| c.busy_percent_since(&p.cpu)),
            cpu_seconds_total: HostCpuSeconds {
                user: secs(c.user),
                nice: secs(c.nice),
                system: secs(c.system),
                idle: secs(c.idle),
                iowait: secs(c.iowait),
                irq: secs(c.irq),
                softirq: secs(c.softirq),
                steal: secs(c.steal),
            },
            memory_total_bytes: cur.memory.total_bytes,
            memory_available_bytes: cur.memory.available_bytes,
            load1: cur.load.one,
            load5: cur.load.five,
            load15: cur.load.fifteen,
            disks: cur
                .disks
                .iter()
                .map(|d| HostDiskStats {
                    device: d.name.clone(),
                    read_bytes: d.read_bytes(),
                    write_bytes: d.written_bytes(),
                    read_ops: d.reads_completed,
                    write_ops: d.writes_completed,
                    io_time_ms: d.io_time_ms,
                })
                .collect(),
            nics: cur
                .nics
                .iter()
                .map(|n| HostNicStats {
                    name: n.name.clone(),
                    rx_bytes: n.rx_bytes,
                    tx_bytes: n.tx_bytes,
                    rx_packets: n.rx_packets,
                    tx_packets: n.tx_packets,
                    rx_errors: n.rx_errors,
                    tx_errors: n.tx_errors,
                    rx_drops: n.rx_drops,
                    tx_drops: n.tx_drops,
                })
                .collect(),
            vcpus_committed,
            memory_committed_bytes,
            vcpu_overcommit_ratio: ratio(vcpus_committed, u64::from(cur.cpus)),
            memory_overcommit_ratio: ratio(memory_committed_bytes, cur.memory.total_bytes),
            vms_by_state,
            sampled_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::{CpuTimes, DiskCounters, LoadAvg, MemInfo, ThreadSample};

    fn thread(tid: u32, ticks: u64, delay_ns: u64) -> ThreadSample {
        ThreadSample {
            tid,
            utime_ticks: ticks,
            stime_ticks: 0,
            run_time_ns: Some(ticks * 10_000_000),
            run_delay_ns: Some(delay_ns),
            timeslices: Some(1),
        }
    }

    #[test]
    fn apply_process_sample() {
        let prev = ProcessSample {
            pid: 1,
            start_ticks: 9,
            rss_bytes: 1,
            utime_ticks: 100,
            stime_ticks: 0,
            num_threads: 4,
            threads: vec![],
        };
        let cur = ProcessSample {
            rss_bytes: 1 << 30,
            utime_ticks: 250,
            stime_ticks: 50,
            threads: vec![thread(2, 120, 500_000_000), thread(3, 80, 1_500_000_000)],
            ..prev.clone()
        };
        let mut vm = VmStats::default();
        vm.apply_process_sample(&cur, Some((&prev, Duration::from_secs(2))), 100);
        assert_eq!(vm.cpu_seconds_total, 3.0);
        assert_eq!(vm.vcpu_seconds_total, 2.0);
        assert_eq!(vm.vcpu_wait_seconds_total, 2.0);
        assert_eq!(vm.memory_rss_bytes, 1 << 30);
        assert_eq!(vm.cpu_percent, Some(100.0));
        vm.apply_process_sample(&cur, None, 100);
        assert_eq!(vm.cpu_percent, None);
    }

    #[test]
    fn host_stats_commitment_and_states() {
        let sample = HostSample {
            cpus: 4,
            cpu: CpuTimes {
                user: 300,
                idle: 100,
                ..CpuTimes::default()
            },
            memory: MemInfo {
                total_bytes: 8 << 30,
                available_bytes: 2 << 30,
                ..MemInfo::default()
            },
            load: LoadAvg {
                one: 1.0,
                five: 2.0,
                fifteen: 3.0,
                runnable: 1,
                tasks: 10,
            },
            disks: vec![DiskCounters {
                name: "vda".into(),
                reads_completed: 1,
                sectors_read: 2,
                read_time_ms: 0,
                writes_completed: 3,
                sectors_written: 4,
                write_time_ms: 0,
                io_time_ms: 5,
            }],
            nics: vec![],
        };
        let vm = |state: &str, vcpus| VmStats {
            name: state.into(),
            state: state.into(),
            vcpus,
            memory_configured_bytes: 4 << 30,
            ..VmStats::default()
        };
        let vms = [
            vm("running", 4),
            vm("paused", 2),
            vm("stopped", 8),
            vm("weird", 1),
        ];
        let h = HostStats::from_sample(&sample, None, &vms, 100, 42);
        assert_eq!(h.vcpus_committed, 6);
        assert_eq!(h.memory_committed_bytes, 8 << 30);
        assert_eq!(h.vcpu_overcommit_ratio, 1.5);
        assert_eq!(h.memory_overcommit_ratio, 1.0);
        assert_eq!(h.cpu_seconds_total.user, 3.0);
        assert_eq!(h.cpu_percent, None);
        assert_eq!(h.vms_by_state["running"], 1);
        assert_eq!(h.vms_by_state["crashed"], 0);
        assert_eq!(h.vms_by_state["weird"], 1);
        assert_eq!(h.disks[0].write_bytes, 4 * 512);
        assert_eq!(h.sampled_at_ms, 42);

        let mut later = sample.clone();
        later.cpu.user += 50;
        later.cpu.idle += 50;
        let h = HostStats::from_sample(&later, Some(&sample), &[], 100, 43);
        assert_eq!(h.cpu_percent, Some(50.0));
        assert_eq!(h.vcpu_overcommit_ratio, 0.0);
    }

    #[test]
    fn json_round_trip_and_field_names() {
        let vms = crate::synthetic::vms(1, 1, 1);
        let json = serde_json::to_value(&vms[0]).unwrap();
        for key in [
            "cpu_seconds_total",
            "vcpu_wait_seconds_total",
            "memory_rss_bytes",
            "uptime_seconds",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert!(json.get("network_note").is_none(), "None note is left out");
        let back: VmStats = serde_json::from_value(json).unwrap();
        assert_eq!(back, vms[0]);
        let host = crate::synthetic::host(&vms);
        let back: HostStats = serde_json::from_str(&serde_json::to_string(&host).unwrap()).unwrap();
        assert_eq!(back, host);
    }
}
