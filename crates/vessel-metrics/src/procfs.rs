//! Small hand-written readers for the few /proc files the daemon samples.
//!
//! Why by hand: the daemon samples every running VM every few seconds, and the budget is about a
//! millisecond per VM. A general procfs crate parses every field of every file into owned structs;
//! here each file is read into one reused buffer and only the needed fields are picked out of it,
//! so a sample costs a few syscalls and almost no allocation.
//!
//! Every parser is a pure `fn(&str) -> Result<_, ParseError>` so it can be tested against captured
//! text; [`ProcFs`] adds the file reading, with a configurable root so tests can point it at a fake
//! tree.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What went wrong parsing one /proc file: a short, static description of the missing or bad field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub &'static str);

/// Reading or parsing a /proc (or /sys) file failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: ParseError },
}

impl ProcError {
    /// Whether the process or thread no longer exists. The daemon races with QEMU exiting, so this
    /// is an expected outcome (skip the VM this round), not a failure worth logging loudly.
    pub fn is_gone(&self) -> bool {
        match self {
            ProcError::Io { source, .. } => {
                source.kind() == io::ErrorKind::NotFound
                    || source.raw_os_error() == Some(libc::ESRCH)
            }
            ProcError::Parse { .. } => false,
        }
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of utime/stime in /proc/PID/stat and of
/// /proc/stat. Almost always 100, but it is a kernel build choice, so ask.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a configuration value.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// The page size in bytes (`sysconf(_SC_PAGESIZE)`), the unit of the rss field of /proc/PID/stat.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a configuration value.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as u64
    } else {
        4096
    }
}

// ---------------------------------------------------------------------------------------------
// Samples
// ---------------------------------------------------------------------------------------------

/// One reading of a process (a QEMU) and of some of its threads (its vCPUs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessSample {
    pub pid: u32,
    /// Start time in clock ticks after boot (field 22). Rates compare it so that a pid reused by a
    /// new process is never mistaken for the old one's counters.
    pub start_ticks: u64,
    /// Resident set size in bytes (field 24 times the page size: the same counter as VmRSS in
    /// /proc/PID/status and `resident` in statm, one read fewer).
    pub rss_bytes: u64,
    /// User CPU time of all threads, living and dead, in clock ticks (field 14).
    pub utime_ticks: u64,
    /// System CPU time of all threads in clock ticks (field 15).
    pub stime_ticks: u64,
    /// Number of threads (field 20).
    pub num_threads: u32,
    /// The threads asked for, in the order asked.
    pub threads: Vec<ThreadSample>,
}

/// One reading of a thread: /proc/PID/task/TID/stat and .../schedstat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadSample {
    pub tid: u32,
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    /// Time spent on a CPU in ns (schedstat field 1); `None` when the kernel has no schedstat.
    pub run_time_ns: Option<u64>,
    /// Time spent runnable but waiting on a run queue in ns (schedstat field 2). For a vCPU thread
    /// this is the host-side equivalent of steal time: the guest wanted to run and could not.
    pub run_delay_ns: Option<u64>,
    /// Number of timeslices run on a CPU (schedstat field 3).
    pub timeslices: Option<u64>,
}

/// One reading of the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSample {
    /// Online CPUs (the `cpuN` lines of /proc/stat).
    pub cpus: u32,
    /// The aggregate `cpu` line of /proc/stat.
    pub cpu: CpuTimes,
    pub memory: MemInfo,
    pub load: LoadAvg,
    /// Whole disks only: partitions, loop, ram and zram devices are left out.
    pub disks: Vec<DiskCounters>,
    /// Every interface except `lo`.
    pub nics: Vec<NetCounters>,
}

/// The aggregate CPU times of /proc/stat, in clock ticks summed over all CPUs.
///
/// `guest` and `guest_nice` are already included in `user` and `nice` (the kernel counts them
/// twice), so they are kept for information and left out of [`CpuTimes::total`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
    pub guest: u64,
    pub guest_nice: u64,
}

impl CpuTimes {
    /// All ticks, guest excluded (it is inside user/nice already).
    pub fn total(&self) -> u64 {
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }

    /// Ticks spent doing something: everything but idle and iowait.
    pub fn busy(&self) -> u64 {
        self.total() - self.idle - self.iowait
    }
}

/// The /proc/meminfo lines the daemon needs, converted to bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemInfo {
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// MemAvailable: the kernel's estimate of memory usable without swapping. Falls back to
    /// free + buffers + cached on kernels older than 3.14, which lack the line.
    pub available_bytes: u64,
    pub buffers_bytes: u64,
    pub cached_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_free_bytes: u64,
}

/// /proc/loadavg.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadAvg {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
    /// Currently runnable scheduling entities.
    pub runnable: u32,
    /// Scheduling entities that exist.
    pub tasks: u32,
}

/// One line of /proc/diskstats. Sectors are always 512 bytes there, whatever the device's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCounters {
    pub name: String,
    pub reads_completed: u64,
    pub sectors_read: u64,
    pub read_time_ms: u64,
    pub writes_completed: u64,
    pub sectors_written: u64,
    pub write_time_ms: u64,
    /// Milliseconds during which the device had I/O in flight (utilisation = its rate / 1000).
    pub io_time_ms: u64,
}

impl DiskCounters {
    /// Size of a /proc/diskstats sector, fixed by the kernel ABI.
    pub const SECTOR_BYTES: u64 = 512;

    pub fn read_bytes(&self) -> u64 {
        self.sectors_read.saturating_mul(Self::SECTOR_BYTES)
    }

    pub fn written_bytes(&self) -> u64 {
        self.sectors_written.saturating_mul(Self::SECTOR_BYTES)
    }
}

/// One interface of /proc/net/dev.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_drops: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_drops: u64,
}

// ---------------------------------------------------------------------------------------------
// Pure parsers
// ---------------------------------------------------------------------------------------------

/// The fields of /proc/PID/stat (or /proc/PID/task/TID/stat) that sampling needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidStat {
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub num_threads: u32,
    pub start_ticks: u64,
    pub rss_pages: u64,
}

/// Parses /proc/PID/stat.
///
/// Field 2, `comm`, is the thread name in parentheses and may itself contain spaces and
/// parentheses (QEMU names vCPU threads "CPU 0/KVM"; any process may rename its threads to anything),
/// so the fixed fields are found after the *last* `)`.
pub fn parse_pid_stat(text: &str) -> Result<PidStat, ParseError> {
    let close = text.rfind(')').ok_or(ParseError("no ')' after comm"))?;
    let mut f = [None::<&str>; 5];
    // Fields after comm are numbered from 3 (state) as in proc(5); we need 14 utime, 15 stime,
    // 20 num_threads, 22 starttime and 24 rss.
    for (i, tok) in text[close + 1..]
        .split_ascii_whitespace()
        .take(24 - 2)
        .enumerate()
    {
        let slot = match i + 3 {
            14 => 0,
            15 => 1,
            20 => 2,
            22 => 3,
            24 => 4,
            _ => continue,
        };
        f[slot] = Some(tok);
    }
    // Parsed in field order, so a truncated line names the first missing field.
    let utime_ticks = parse_u64(f[0], "utime (field 14)")?;
    let stime_ticks = parse_u64(f[1], "stime (field 15)")?;
    let num_threads = parse_u64(f[2], "num_threads (field 20)")?;
    let start_ticks = parse_u64(f[3], "starttime (field 22)")?;
    // rss is a signed long; a kernel never reports it negative, but do not let one bad sample
    // become 2^64 bytes.
    let rss_pages = f[4]
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(ParseError("rss (field 24)"))?
        .max(0) as u64;
    Ok(PidStat {
        utime_ticks,
        stime_ticks,
        num_threads: u32::try_from(num_threads)
            .map_err(|_| ParseError("num_threads (field 20)"))?,
        start_ticks,
        rss_pages,
    })
}

/// The three fields of /proc/PID/task/TID/schedstat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedStat {
    pub run_time_ns: u64,
    pub run_delay_ns: u64,
    pub timeslices: u64,
}

/// Parses /proc/…/schedstat: "run_time_ns run_delay_ns timeslices".
pub fn parse_schedstat(text: &str) -> Result<SchedStat, ParseError> {
    let mut it = text.split_ascii_whitespace();
    let mut next = |what| parse_u64(it.next(), what);
    Ok(SchedStat {
        run_time_ns: next("schedstat run time")?,
        run_delay_ns: next("schedstat run delay")?,
        timeslices: next("schedstat timeslices")?,
    })
}

/// Parses /proc/stat: the aggregate `cpu` line and the number of `cpuN` lines.
pub fn parse_stat(text: &str) -> Result<(CpuTimes, u32), ParseError> {
    let mut cpu = None;
    let mut cpus = 0u32;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            // The cpu lines come first; nothing after them is needed.
            if cpu.is_some() {
                break;
            }
            continue;
        };
        if rest.starts_with(' ') {
            let mut it = rest.split_ascii_whitespace();
            let mut next = |what| parse_u64(it.next(), what);
            let mut t = CpuTimes {
                user: next("cpu user")?,
                nice: next("cpu nice")?,
                system: next("cpu system")?,
                idle: next("cpu idle")?,
                ..CpuTimes::default()
            };
            // Fields added over kernel versions (iowait 2.5.41, irq/softirq 2.6.0, steal 2.6.11,
            // guest 2.6.24, guest_nice 2.6.33): missing means zero.
            let mut opt = || it.next().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            t.iowait = opt();
            t.irq = opt();
            t.softirq = opt();
            t.steal = opt();
            t.guest = opt();
            t.guest_nice = opt();
            cpu = Some(t);
        } else if rest.starts_with(|c: char| c.is_ascii_digit()) {
            cpus += 1;
        }
    }
    let cpu = cpu.ok_or(ParseError("no aggregate cpu line"))?;
    Ok((cpu, cpus.max(1)))
}

/// Parses /proc/meminfo (values in kB, converted to bytes).
pub fn parse_meminfo(text: &str) -> Result<MemInfo, ParseError> {
    let mut m = MemInfo::default();
    let mut have_total = false;
    let mut available = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => {
                have_total = true;
                &mut m.total_bytes
            }
            "MemFree" => &mut m.free_bytes,
            "MemAvailable" => available.insert(0),
            "Buffers" => &mut m.buffers_bytes,
            "Cached" => &mut m.cached_bytes,
            "SwapTotal" => &mut m.swap_total_bytes,
            "SwapFree" => &mut m.swap_free_bytes,
            _ => continue,
        };
        let kb = parse_u64(rest.split_ascii_whitespace().next(), "meminfo value")?;
        *slot = kb.saturating_mul(1024);
    }
    if !have_total {
        return Err(ParseError("no MemTotal"));
    }
    m.available_bytes =
        available.unwrap_or_else(|| m.free_bytes + m.buffers_bytes + m.cached_bytes);
    Ok(m)
}

/// Parses /proc/loadavg: "0.50 0.40 0.30 2/345 6789".
pub fn parse_loadavg(text: &str) -> Result<LoadAvg, ParseError> {
    let mut it = text.split_ascii_whitespace();
    let mut load = |what| -> Result<f64, ParseError> {
        it.next()
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or(ParseError(what))
    };
    let one = load("load1")?;
    let five = load("load5")?;
    let fifteen = load("load15")?;
    let (runnable, tasks) = it
        .next()
        .and_then(|s| s.split_once('/'))
        .ok_or(ParseError("runnable/tasks"))?;
    Ok(LoadAvg {
        one,
        five,
        fifteen,
        runnable: runnable.parse().map_err(|_| ParseError("runnable"))?,
        tasks: tasks.parse().map_err(|_| ParseError("tasks"))?,
    })
}

/// Parses /proc/diskstats, keeping the lines for which `keep(name)` is true.
pub fn parse_diskstats(
    text: &str,
    mut keep: impl FnMut(&str) -> bool,
) -> Result<Vec<DiskCounters>, ParseError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        // major, minor
        if it.nth(1).is_none() {
            continue;
        }
        let name = it.next().ok_or(ParseError("diskstats device name"))?;
        if !keep(name) {
            continue;
        }
        let mut f = [0u64; 10];
        for v in &mut f {
            *v = parse_u64(it.next(), "diskstats counter")?;
        }
        // reads, reads merged, sectors read, ms reading, writes, writes merged, sectors written,
        // ms writing, in flight, ms doing I/O.
        out.push(DiskCounters {
            name: name.to_owned(),
            reads_completed: f[0],
            sectors_read: f[2],
            read_time_ms: f[3],
            writes_completed: f[4],
            sectors_written: f[6],
            write_time_ms: f[7],
            io_time_ms: f[9],
        });
    }
    Ok(out)
}

/// Parses /proc/net/dev, keeping the interfaces for which `keep(name)` is true.
pub fn parse_net_dev(
    text: &str,
    mut keep: impl FnMut(&str) -> bool,
) -> Result<Vec<NetCounters>, ParseError> {
    let mut out = Vec::new();
    // Two header lines, then "  name: rx_bytes rx_packets rx_errs rx_drop fifo frame compressed
    // multicast tx_bytes tx_packets tx_errs tx_drop …". Interface names cannot contain ':'.
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if !keep(name) {
            continue;
        }
        let mut f = [0u64; 12];
        let mut it = rest.split_ascii_whitespace();
        for v in &mut f {
            *v = parse_u64(it.next(), "net/dev counter")?;
        }
        out.push(NetCounters {
            name: name.to_owned(),
            rx_bytes: f[0],
            rx_packets: f[1],
            rx_errors: f[2],
            rx_drops: f[3],
            tx_bytes: f[8],
            tx_packets: f[9],
            tx_errors: f[10],
            tx_drops: f[11],
        });
    }
    Ok(out)
}

/// Block devices in /proc/diskstats that are not disks worth reporting: loop devices (images
/// mounted by tools), RAM disks and zram (compressed swap in RAM).
pub fn is_virtual_block_device(name: &str) -> bool {
    ["loop", "ram", "zram"].iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn parse_u64(s: Option<&str>, what: &'static str) -> Result<u64, ParseError> {
    s.and_then(|s| s.parse::<u64>().ok())
        .ok_or(ParseError(what))
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// Reads samples from a /proc (and /sys) tree, reusing one buffer for every file.
///
/// Methods take `&mut self` because of that buffer: give each sampling task its own `ProcFs`
/// rather than sharing one behind a lock.
#[derive(Debug)]
pub struct ProcFs {
    proc_root: PathBuf,
    sys_root: PathBuf,
    buf: String,
    page_size: u64,
    clk_tck: u64,
}

impl Default for ProcFs {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcFs {
    /// The real /proc and /sys.
    pub fn new() -> Self {
        Self::with_roots("/proc", "/sys")
    }

    /// Another tree laid out like /proc and /sys (tests, or a host's /proc mounted elsewhere).
    pub fn with_roots(proc_root: impl Into<PathBuf>, sys_root: impl Into<PathBuf>) -> Self {
        ProcFs {
            proc_root: proc_root.into(),
            sys_root: sys_root.into(),
            buf: String::with_capacity(4096),
            page_size: page_size(),
            clk_tck: clock_ticks_per_second(),
        }
    }

    /// Clock ticks per second, cached.
    pub fn clk_tck(&self) -> u64 {
        self.clk_tck
    }

    /// Page size in bytes, cached.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Samples a process and the threads `tids` (typically its vCPU threads, whose ids QMP
    /// `query-cpus-fast` reports as `thread-id`).
    ///
    /// A thread that has gone is an error rather than silently left out, so that the sum over
    /// threads never drops and looks like a counter reset; the caller re-queries the thread ids.
    pub fn process(&mut self, pid: u32, tids: &[u32]) -> Result<ProcessSample, ProcError> {
        let path = self.proc_root.join(format!("{pid}/stat"));
        let stat = self.read_parse(&path, parse_pid_stat)?;
        let mut threads = Vec::with_capacity(tids.len());
        for &tid in tids {
            threads.push(self.thread(pid, tid)?);
        }
        Ok(ProcessSample {
            pid,
            start_ticks: stat.start_ticks,
            rss_bytes: stat.rss_pages.saturating_mul(self.page_size),
            utime_ticks: stat.utime_ticks,
            stime_ticks: stat.stime_ticks,
            num_threads: stat.num_threads,
            threads,
        })
    }

    /// Samples one thread of `pid`.
    pub fn thread(&mut self, pid: u32, tid: u32) -> Result<ThreadSample, ProcError> {
        let mut path = self.proc_root.join(format!("{pid}/task/{tid}/stat"));
        let stat = self.read_parse(&path, parse_pid_stat)?;
        path.set_file_name("schedstat");
        // Kernels without CONFIG_SCHED_INFO have no schedstat file: CPU time still works.
        let sched = match self.read_parse(&path, parse_schedstat) {
            Ok(s) => Some(s),
            // Tell "no schedstat in this kernel" from "the thread just went": the task
            // directory is still there only in the first case.
            Err(ProcError::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound
                    && path.parent().is_some_and(Path::exists) =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        Ok(ThreadSample {
            tid,
            utime_ticks: stat.utime_ticks,
            stime_ticks: stat.stime_ticks,
            run_time_ns: sched.map(|s| s.run_time_ns),
            run_delay_ns: sched.map(|s| s.run_delay_ns),
            timeslices: sched.map(|s| s.timeslices),
        })
    }

    /// The thread ids of a process, sorted.
    pub fn thread_ids(&self, pid: u32) -> Result<Vec<u32>, ProcError> {
        let path = self.proc_root.join(format!("{pid}/task"));
        let io_err = |source| ProcError::Io {
            path: path.clone(),
            source,
        };
        let mut tids = Vec::new();
        for entry in std::fs::read_dir(&path).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            if let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                tids.push(tid);
            }
        }
        tids.sort_unstable();
        Ok(tids)
    }

    /// Samples the host: CPU, memory, load, whole disks and network interfaces.
    pub fn host(&mut self) -> Result<HostSample, ProcError> {
        let (cpu, cpus) = self.read_parse(&self.proc_root.join("stat"), parse_stat)?;
        let memory = self.read_parse(&self.proc_root.join("meminfo"), parse_meminfo)?;
        let load = self.read_parse(&self.proc_root.join("loadavg"), parse_loadavg)?;

        // Whole disks are the ones /sys/block lists (partitions live under their disk). Without
        // a readable /sys/block (some containers) keep every non-virtual device rather than none.
        let sys_block = self.sys_root.join("block");
        let have_sys_block = sys_block.is_dir();
        let path = self.proc_root.join("diskstats");
        self.read(&path)?;
        let disks = parse_diskstats(&self.buf, |name| {
            !is_virtual_block_device(name)
                && (!have_sys_block || sys_block.join(name.replace('/', "!")).exists())
        })
        .map_err(|source| ProcError::Parse {
            path: path.clone(),
            source,
        })?;

        let nics = self.read_parse(&self.proc_root.join("net/dev"), |t| {
            parse_net_dev(t, |n| n != "lo")
        })?;
        Ok(HostSample {
            cpus,
            cpu,
            memory,
            load,
            disks,
            nics,
        })
    }

    fn read(&mut self, path: &Path) -> Result<(), ProcError> {
        self.buf.clear();
        File::open(path)
            .and_then(|mut f| f.read_to_string(&mut self.buf))
            .map(drop)
            .map_err(|source| ProcError::Io {
                path: path.to_owned(),
                source,
            })
    }

    fn read_parse<T>(
        &mut self,
        path: &Path,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<T, ProcError> {
        self.read(path)?;
        parse(&self.buf).map_err(|source| ProcError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a 2-CPU Debian 12 VM (6.1 kernel); diskstats_host is a bare-metal host with an
    // NVMe disk, partitions, device mapper, loop, ram and zram devices.
    const STAT: &str = include_str!("../testdata/stat");
    const MEMINFO: &str = include_str!("../testdata/meminfo");
    const LOADAVG: &str = include_str!("../testdata/loadavg");
    const DISKSTATS: &str = include_str!("../testdata/diskstats_host");
    const NET_DEV: &str = include_str!("../testdata/net_dev");

    /// A QEMU vCPU thread's stat, comm "CPU 0/KVM".
    const VCPU_STAT: &str = "4242 (CPU 0/KVM) S 1 4200 4200 0 -1 4194560 12 0 0 0 \
        7351 1204 0 0 20 0 9 0 1170463 3133440 262144 18446744073709551615 1 1 0 0 0 0 \
        0 0 0 0 0 0 -1 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn pid_stat_fields() {
        let s = parse_pid_stat(VCPU_STAT).unwrap();
        assert_eq!(
            s,
            PidStat {
                utime_ticks: 7351,
                stime_ticks: 1204,
                num_threads: 9,
                start_ticks: 1170463,
                rss_pages: 262144,
            }
        );
    }

    #[test]
    fn pid_stat_comm_with_spaces_and_parentheses() {
        // A guest or user can name a thread anything up to 15 bytes, ")" and spaces included.
        let text = VCPU_STAT.replace("(CPU 0/KVM)", "(a) b (c) 1 2 3)");
        let s = parse_pid_stat(&text).unwrap();
        assert_eq!(
            (s.utime_ticks, s.stime_ticks, s.rss_pages),
            (7351, 1204, 262144)
        );
        let text = VCPU_STAT.replace("(CPU 0/KVM)", "())");
        assert_eq!(parse_pid_stat(&text).unwrap().utime_ticks, 7351);
    }

    #[test]
    fn pid_stat_rejects_truncated_and_garbage() {
        assert_eq!(
            parse_pid_stat("1 (x) S 1 2 3"),
            Err(ParseError("utime (field 14)"))
        );
        assert!(parse_pid_stat("no parenthesis at all").is_err());
        assert!(parse_pid_stat(&VCPU_STAT.replace("7351", "73x1")).is_err());
        assert_eq!(parse_pid_stat(""), Err(ParseError("no ')' after comm")));
    }

    #[test]
    fn pid_stat_negative_rss_is_zero() {
        let text = VCPU_STAT.replace(" 262144 ", " -5 ");
        assert_eq!(parse_pid_stat(&text).unwrap().rss_pages, 0);
    }

    #[test]
    fn schedstat() {
        assert_eq!(
            parse_schedstat("123456789 98765 4321\n").unwrap(),
            SchedStat {
                run_time_ns: 123456789,
                run_delay_ns: 98765,
                timeslices: 4321
            }
        );
        assert!(parse_schedstat("1 2\n").is_err());
    }

    #[test]
    fn stat_captured() {
        let (cpu, cpus) = parse_stat(STAT).unwrap();
        assert_eq!(cpus, 2);
        assert_eq!(
            cpu,
            CpuTimes {
                user: 1527566,
                nice: 0,
                system: 167781,
                idle: 623767,
                iowait: 6690,
                irq: 0,
                softirq: 2146,
                steal: 9630,
                guest: 0,
                guest_nice: 0,
            }
        );
        assert_eq!(cpu.busy(), 1527566 + 167781 + 2146 + 9630);
    }

    #[test]
    fn stat_old_kernel_and_missing_line() {
        let (cpu, cpus) = parse_stat("cpu  10 20 30 40\ncpu0 10 20 30 40\nintr 0\n").unwrap();
        assert_eq!(cpus, 1);
        assert_eq!((cpu.user, cpu.idle, cpu.steal), (10, 40, 0));
        assert!(parse_stat("intr 0\nctxt 5\n").is_err());
    }

    #[test]
    fn meminfo_captured() {
        let m = parse_meminfo(MEMINFO).unwrap();
        let kb = |key: &str| -> u64 {
            let line = MEMINFO.lines().find(|l| l.starts_with(key)).unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
                * 1024
        };
        assert_eq!(m.total_bytes, kb("MemTotal:"));
        assert_eq!(m.available_bytes, kb("MemAvailable:"));
        assert_eq!(m.free_bytes, kb("MemFree:"));
        assert_eq!(m.cached_bytes, kb("Cached:"));
        assert_eq!(m.swap_total_bytes, kb("SwapTotal:"));
        assert!(m.available_bytes <= m.total_bytes);
    }

    #[test]
    fn meminfo_without_memavailable_estimates_it() {
        let m =
            parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 50 kB\n")
                .unwrap();
        assert_eq!(m.available_bytes, 160 * 1024);
        assert!(parse_meminfo("MemFree: 100 kB\n").is_err());
    }

    #[test]
    fn loadavg() {
        let l = parse_loadavg(LOADAVG).unwrap();
        assert!(l.one >= 0.0 && l.tasks >= l.runnable);
        let l = parse_loadavg("0.50 1.25 10.00 3/456 7890\n").unwrap();
        assert_eq!(
            (l.one, l.five, l.fifteen, l.runnable, l.tasks),
            (0.5, 1.25, 10.0, 3, 456)
        );
        assert!(parse_loadavg("0.50 1.25\n").is_err());
    }

    #[test]
    fn diskstats_all_and_filtered() {
        let all = parse_diskstats(DISKSTATS, |_| true).unwrap();
        assert_eq!(all.len(), 9);
        let nvme = &all[2];
        assert_eq!(
            nvme,
            &DiskCounters {
                name: "nvme0n1".into(),
                reads_completed: 1843217,
                sectors_read: 118204112,
                read_time_ms: 402211,
                writes_completed: 2208114,
                sectors_written: 290114660,
                write_time_ms: 1886032,
                io_time_ms: 1220388,
            }
        );
        assert_eq!(nvme.read_bytes(), 118204112 * 512);
        // Old 14-field format (sda) parses too.
        assert_eq!(all[5].name, "sda");
        assert_eq!(all[5].io_time_ms, 9120);

        let real: Vec<_> = parse_diskstats(DISKSTATS, |n| !is_virtual_block_device(n))
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(
            real,
            ["nvme0n1", "nvme0n1p1", "nvme0n1p2", "sda", "sda1", "dm-0"]
        );
        // The captured VM: loop and zram devices go, vda stays.
        let vm: Vec<_> = parse_diskstats(include_str!("../testdata/diskstats"), |n| {
            !is_virtual_block_device(n)
        })
        .unwrap();
        assert_eq!(vm.len(), 1);
        assert_eq!(vm[0].name, "vda");
    }

    #[test]
    fn virtual_block_devices() {
        for n in ["loop0", "loop12", "ram0", "zram0"] {
            assert!(is_virtual_block_device(n), "{n}");
        }
        for n in ["vda", "sda", "nvme0n1", "dm-0", "ramdisk", "loopy", "md0"] {
            assert!(!is_virtual_block_device(n), "{n}");
        }
    }

    #[test]
    fn net_dev_captured_and_synthetic() {
        let all = parse_net_dev(NET_DEV, |_| true).unwrap();
        assert!(all.iter().any(|n| n.name == "lo"));
        assert!(parse_net_dev(NET_DEV, |n| n != "lo")
            .unwrap()
            .iter()
            .all(|n| n.name != "lo"));

        let text = "Inter-|   Receive |  Transmit\n face |bytes packets|bytes packets\n\
            tap0: 100 2 3 4 0 0 0 0 500 6 7 8 0 0 0 0\n\
            eth0:1234 5 0 0 0 0 0 0 99 1 0 0 0 0 0 0\n";
        let nics = parse_net_dev(text, |_| true).unwrap();
        assert_eq!(
            nics[0],
            NetCounters {
                name: "tap0".into(),
                rx_bytes: 100,
                rx_packets: 2,
                rx_errors: 3,
                rx_drops: 4,
                tx_bytes: 500,
                tx_packets: 6,
                tx_errors: 7,
                tx_drops: 8,
            }
        );
        // Old kernels print no space after the colon when the number is wide.
        assert_eq!((nics[1].name.as_str(), nics[1].rx_bytes), ("eth0", 1234));
        assert!(parse_net_dev("h\nh\nx: 1 2\n", |_| true).is_err());
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn fake_tree_process_and_threads() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        write(
            &proc.join("4200/stat"),
            &VCPU_STAT.replace("4242 (CPU 0/KVM)", "4200 (qemu-system-x86)"),
        );
        write(&proc.join("4200/task/4242/stat"), VCPU_STAT);
        write(
            &proc.join("4200/task/4242/schedstat"),
            "5000000000 250000000 1000\n",
        );
        // A kernel without schedstat: CPU time still comes from stat.
        write(&proc.join("4200/task/4243/stat"), VCPU_STAT);

        let mut fs = ProcFs::with_roots(&proc, dir.path().join("sys"));
        let s = fs.process(4200, &[4242, 4243]).unwrap();
        assert_eq!(s.pid, 4200);
        assert_eq!(s.rss_bytes, 262144 * fs.page_size());
        assert_eq!(
            (s.utime_ticks, s.stime_ticks, s.num_threads),
            (7351, 1204, 9)
        );
        assert_eq!(s.threads.len(), 2);
        assert_eq!(s.threads[0].run_delay_ns, Some(250000000));
        assert_eq!(s.threads[0].run_time_ns, Some(5000000000));
        assert_eq!(s.threads[1].run_delay_ns, None);
        assert_eq!(fs.thread_ids(4200).unwrap(), [4242, 4243]);

        let gone = fs.process(4200, &[9999]).unwrap_err();
        assert!(gone.is_gone(), "{gone}");
        let gone = fs.process(1, &[]).unwrap_err();
        assert!(gone.is_gone(), "{gone}");
        assert!(gone.to_string().contains("1/stat"), "{gone}");

        write(&proc.join("77/stat"), "77 (x) S 1");
        let bad = fs.process(77, &[]).unwrap_err();
        assert!(!bad.is_gone());
        assert!(bad.to_string().contains("utime"), "{bad}");
    }

    #[test]
    fn fake_tree_host_keeps_whole_disks() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        let sys = dir.path().join("sys");
        write(&proc.join("stat"), STAT);
        write(&proc.join("meminfo"), MEMINFO);
        write(&proc.join("loadavg"), LOADAVG);
        write(&proc.join("diskstats"), DISKSTATS);
        write(&proc.join("net/dev"), NET_DEV);
        for d in ["nvme0n1", "sda", "dm-0", "loop0", "ram0", "zram0"] {
            std::fs::create_dir_all(sys.join("block").join(d)).unwrap();
        }
        let mut fs = ProcFs::with_roots(&proc, &sys);
        let h = fs.host().unwrap();
        assert_eq!(h.cpus, 2);
        let disks: Vec<_> = h.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(disks, ["nvme0n1", "sda", "dm-0"]);
        assert!(h.nics.iter().all(|n| n.name != "lo"));

        // Without /sys/block, partitions cannot be told apart: keep them rather than nothing.
        let mut fs = ProcFs::with_roots(&proc, dir.path().join("nosys"));
        assert_eq!(fs.host().unwrap().disks.len(), 6);
    }

    #[test]
    fn live_own_process() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{mpsc, Arc};

        // A thread that burns CPU for a while, so its counters must move.
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let burner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                tx.send(unsafe { libc::gettid() } as u32).unwrap();
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                x
            })
        };
        let tid = rx.recv().unwrap();
        let pid = std::process::id();
        let mut fs = ProcFs::new();
        assert!(fs.thread_ids(pid).unwrap().contains(&tid));
        let first = fs.process(pid, &[tid]).unwrap();
        let t0 = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let second = fs.process(pid, &[tid]).unwrap();
        let elapsed = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        burner.join().unwrap();

        assert!(second.rss_bytes > 0);
        assert!(second.num_threads >= 2);
        assert!(second.same_process(&first));
        assert!(second.threads[0].cpu_ticks() > first.threads[0].cpu_ticks());
        assert!(second.threads[0].run_time_ns > first.threads[0].run_time_ns);
        // The burner ran most of the 300 ms (on a loaded 2-core box maybe less).
        let pct = second.threads[0]
            .cpu_percent_since(&first.threads[0], elapsed, fs.clk_tck())
            .unwrap();
        assert!((10.0..=110.0).contains(&pct), "{pct}");
        assert!(
            second
                .cpu_percent_since(&first, elapsed, fs.clk_tck())
                .unwrap()
                >= pct - 5.0
        );
    }

    #[test]
    fn live_host() {
        let h = ProcFs::new().host().unwrap();
        assert!(h.cpus >= 1);
        assert!(h.memory.total_bytes > 0 && h.memory.available_bytes <= h.memory.total_bytes);
        assert!(h.cpu.total() > 0);
        assert!(h.nics.iter().all(|n| n.name != "lo"));
        assert!(h.disks.iter().all(|d| !is_virtual_block_device(&d.name)));
        assert!(clock_ticks_per_second() > 0 && page_size() >= 4096);
    }
}
