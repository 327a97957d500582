//! Rates from two readings of monotonic counters.
//!
//! Every helper returns `None` instead of a number when the counters went backwards (the process
//! restarted, a pid was reused, a device was re-created) or no time passed: a missing value for
//! one sampling period is honest, a huge or negative rate is not.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::procfs::{CpuTimes, DiskCounters, NetCounters, ProcessSample, ThreadSample};

/// `cur - prev`, or `None` if the counter went backwards.
pub fn counter_delta(prev: u64, cur: u64) -> Option<u64> {
    cur.checked_sub(prev)
}

/// Increase per second of a counter over `elapsed`; `None` if it went backwards or no time passed.
pub fn per_second(prev: u64, cur: u64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    counter_delta(prev, cur).map(|d| d as f64 / secs)
}

/// CPU utilisation in percent of one core from two readings of a tick counter: 100 means one core
/// busy all the time, and a VM with several busy vCPUs goes above 100.
pub fn cpu_percent(
    prev_ticks: u64,
    cur_ticks: u64,
    elapsed: Duration,
    clk_tck: u64,
) -> Option<f64> {
    if clk_tck == 0 {
        return None;
    }
    per_second(prev_ticks, cur_ticks, elapsed).map(|t| t / clk_tck as f64 * 100.0)
}

/// Clock ticks to seconds.
pub fn ticks_to_seconds(ticks: u64, clk_tck: u64) -> f64 {
    if clk_tck == 0 {
        0.0
    } else {
        ticks as f64 / clk_tck as f64
    }
}

impl ProcessSample {
    /// utime + stime of all threads, in ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.utime_ticks + self.stime_ticks
    }

    /// Whether `other` is a reading of the same process (same pid and start time), so that
    /// differences between the two mean something.
    pub fn same_process(&self, other: &ProcessSample) -> bool {
        self.pid == other.pid && self.start_ticks == other.start_ticks
    }

    /// CPU use of the whole process since `prev`, in percent of one core.
    pub fn cpu_percent_since(
        &self,
        prev: &ProcessSample,
        elapsed: Duration,
        clk_tck: u64,
    ) -> Option<f64> {
        if !self.same_process(prev) {
            return None;
        }
        cpu_percent(prev.cpu_ticks(), self.cpu_ticks(), elapsed, clk_tck)
    }
}

impl ThreadSample {
    /// utime + stime, in ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.utime_ticks + self.stime_ticks
    }

    /// CPU use of this thread since `prev`, in percent of one core (at most about 100).
    pub fn cpu_percent_since(
        &self,
        prev: &ThreadSample,
        elapsed: Duration,
        clk_tck: u64,
    ) -> Option<f64> {
        if self.tid != prev.tid {
            return None;
        }
        cpu_percent(prev.cpu_ticks(), self.cpu_ticks(), elapsed, clk_tck)
    }

    /// Share of wall time this thread spent runnable but waiting for a CPU, in percent. For a vCPU
    /// thread this is what the guest would see as steal time.
    pub fn wait_percent_since(&self, prev: &ThreadSample, elapsed: Duration) -> Option<f64> {
        if self.tid != prev.tid {
            return None;
        }
        let ns = per_second(prev.run_delay_ns?, self.run_delay_ns?, elapsed)?;
        Some(ns / 1e7)
    }
}

impl CpuTimes {
    /// Host CPU busy share since `prev`, in percent of all CPUs (0–100). Needs no wall time: the
    /// tick counters of all modes together advance with it.
    pub fn busy_percent_since(&self, prev: &CpuTimes) -> Option<f64> {
        let total = counter_delta(prev.total(), self.total())?;
        let busy = counter_delta(prev.busy(), self.busy())?;
        if total == 0 {
            return None;
        }
        Some(busy as f64 / total as f64 * 100.0)
    }
}

/// Throughput of one host disk over a sampling period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskRates {
    pub read_bytes_per_second: f64,
    pub write_bytes_per_second: f64,
    pub read_ops_per_second: f64,
    pub write_ops_per_second: f64,
    /// Share of the period the device had I/O in flight, in percent.
    pub busy_percent: f64,
}

impl DiskCounters {
    /// Rates since `prev` (the same device), or `None` if any counter went backwards.
    pub fn rates_since(&self, prev: &DiskCounters, elapsed: Duration) -> Option<DiskRates> {
        if self.name != prev.name {
            return None;
        }
        Some(DiskRates {
            read_bytes_per_second: per_second(prev.read_bytes(), self.read_bytes(), elapsed)?,
            write_bytes_per_second: per_second(
                prev.written_bytes(),
                self.written_bytes(),
                elapsed,
            )?,
            read_ops_per_second: per_second(prev.reads_completed, self.reads_completed, elapsed)?,
            write_ops_per_second: per_second(
                prev.writes_completed,
                self.writes_completed,
                elapsed,
            )?,
            busy_percent: per_second(prev.io_time_ms, self.io_time_ms, elapsed)? / 10.0,
        })
    }
}

/// Throughput of one network interface over a sampling period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetRates {
    pub rx_bytes_per_second: f64,
    pub tx_bytes_per_second: f64,
    pub rx_packets_per_second: f64,
    pub tx_packets_per_second: f64,
}

impl NetCounters {
    /// Rates since `prev` (the same interface), or `None` if any counter went backwards.
    pub fn rates_since(&self, prev: &NetCounters, elapsed: Duration) -> Option<NetRates> {
        if self.name != prev.name {
            return None;
        }
        Some(NetRates {
            rx_bytes_per_second: per_second(prev.rx_bytes, self.rx_bytes, elapsed)?,
            tx_bytes_per_second: per_second(prev.tx_bytes, self.tx_bytes, elapsed)?,
            rx_packets_per_second: per_second(prev.rx_packets, self.rx_packets, elapsed)?,
            tx_packets_per_second: per_second(prev.tx_packets, self.tx_packets, elapsed)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn proc_sample(start: u64, utime: u64, stime: u64) -> ProcessSample {
        ProcessSample {
            pid: 10,
            start_ticks: start,
            rss_bytes: 0,
            utime_ticks: utime,
            stime_ticks: stime,
            num_threads: 1,
            threads: vec![],
        }
    }

    #[test]
    fn deltas_and_per_second() {
        assert_eq!(counter_delta(5, 8), Some(3));
        assert_eq!(counter_delta(8, 5), None);
        assert_eq!(per_second(100, 1100, 2 * SEC), Some(500.0));
        assert_eq!(per_second(100, 1100, Duration::ZERO), None);
        assert_eq!(per_second(1100, 100, SEC), None);
        assert_eq!(per_second(7, 7, SEC), Some(0.0));
    }

    #[test]
    fn cpu_percent_of_one_core_can_exceed_100() {
        // 300 ticks at 100 Hz in one second: three cores' worth.
        assert_eq!(cpu_percent(0, 300, SEC, 100), Some(300.0));
        assert_eq!(
            cpu_percent(0, 50, Duration::from_millis(500), 100),
            Some(100.0)
        );
        assert_eq!(cpu_percent(0, 50, SEC, 0), None);
        assert_eq!(ticks_to_seconds(250, 100), 2.5);
    }

    #[test]
    fn process_restart_or_pid_reuse_gives_none() {
        let a = proc_sample(1000, 500, 100);
        let b = proc_sample(1000, 600, 150);
        assert_eq!(b.cpu_percent_since(&a, 5 * SEC, 100), Some(30.0));
        // Same pid, new process: its counters started again from 0.
        let reused = proc_sample(2000, 10, 1);
        assert_eq!(reused.cpu_percent_since(&a, 5 * SEC, 100), None);
        // Same start time but counters went backwards: still no garbage.
        let back = proc_sample(1000, 10, 1);
        assert_eq!(back.cpu_percent_since(&a, 5 * SEC, 100), None);
    }

    #[test]
    fn thread_wait_percent() {
        let t = |delay| ThreadSample {
            tid: 5,
            utime_ticks: 0,
            stime_ticks: 0,
            run_time_ns: Some(0),
            run_delay_ns: delay,
            timeslices: Some(0),
        };
        // 250 ms of run-queue wait in 1 s.
        assert_eq!(
            t(Some(250_000_000)).wait_percent_since(&t(Some(0)), SEC),
            Some(25.0)
        );
        assert_eq!(t(None).wait_percent_since(&t(Some(0)), SEC), None);
        assert_eq!(t(Some(0)).wait_percent_since(&t(Some(10)), SEC), None);
    }

    #[test]
    fn host_cpu_busy_percent() {
        let a = CpuTimes {
            user: 100,
            idle: 100,
            ..CpuTimes::default()
        };
        let b = CpuTimes {
            user: 175,
            system: 25,
            idle: 200,
            guest: 50,
            ..CpuTimes::default()
        };
        // 100 busy of 200 ticks; guest is inside user and not counted twice.
        assert_eq!(b.busy_percent_since(&a), Some(50.0));
        assert_eq!(a.busy_percent_since(&b), None);
        assert_eq!(a.busy_percent_since(&a), None);
    }

    #[test]
    fn disk_and_nic_rates() {
        let d = |sectors, ops, io| DiskCounters {
            name: "vda".into(),
            reads_completed: ops,
            sectors_read: sectors,
            read_time_ms: 0,
            writes_completed: ops,
            sectors_written: sectors,
            write_time_ms: 0,
            io_time_ms: io,
        };
        let r = d(2048, 20, 500).rates_since(&d(0, 0, 0), 2 * SEC).unwrap();
        assert_eq!(r.read_bytes_per_second, 512.0 * 1024.0);
        assert_eq!(r.write_ops_per_second, 10.0);
        assert_eq!(r.busy_percent, 25.0);
        assert_eq!(d(0, 0, 0).rates_since(&d(1, 1, 1), SEC), None);

        let n = |bytes| NetCounters {
            name: "tap0".into(),
            rx_bytes: bytes,
            rx_packets: 1,
            rx_errors: 0,
            rx_drops: 0,
            tx_bytes: bytes,
            tx_packets: 1,
            tx_errors: 0,
            tx_drops: 0,
        };
        assert_eq!(
            n(1000).rates_since(&n(0), SEC).unwrap().tx_bytes_per_second,
            1000.0
        );
        assert_eq!(n(0).rates_since(&n(1000), SEC), None);
    }
}
