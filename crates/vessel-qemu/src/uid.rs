//! The user each VM's QEMU runs as.
//!
//! QEMU starts as root (it opens its disks, kernel, initrd and seed then) and switches to a
//! user of its own with `-runas UID:GID` before the guest runs its first instruction. Each VM
//! gets its own uid (and a gid of the same number), so that a compromised QEMU cannot signal,
//! trace or read the memory of another VM's QEMU, nor open files another QEMU made. The uids
//! need no passwd entries: QEMU takes them as numbers.
//!
//! Which uid a VM gets is decided here: the smallest slot of the range that no QEMU of this
//! daemon holds and no process on the host runs as. It is kept in memory only; after a daemon
//! restart, each re-adopted QEMU's uid is read back from `/proc/PID/status`
//! ([`QemuUids::recover`]), and the scan of the host's processes covers QEMUs that are not
//! re-adopted yet (or that another daemon runs).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex};

/// The first uid of the default range: 0x7000_0000. It lies far from the ranges others hand
/// out: login users (1000 and up), subordinate ids for user namespaces (/etc/subuid, usually
/// from 100000 in blocks of 65536) and systemd's dynamic and container users (61184-65519,
/// 524288-1879048191, which ends just below this base). Uids from 2^31 on are avoided: some
/// tools still store uids in signed 32-bit integers.
pub const DEFAULT_UID_BASE: u32 = 0x7000_0000;
/// How many VMs of one daemon can run at once with uids of their own.
pub const UID_SLOTS: u32 = 65_536;

/// A range of uids for QEMU processes: `base` to `base + UID_SLOTS - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    base: u32,
}

impl UidRange {
    /// A range starting at `base`; it must end below 2^31 and leave out root.
    pub fn new(base: u32) -> Result<UidRange, String> {
        if base == 0 {
            return Err("the QEMU uid range cannot start at 0 (root)".into());
        }
        if u64::from(base) + u64::from(UID_SLOTS) > 1 << 31 {
            return Err(format!(
                "the QEMU uid range {base}..{} would reach 2^31; choose a base below {}",
                u64::from(base) + u64::from(UID_SLOTS),
                (1u64 << 31) - u64::from(UID_SLOTS)
            ));
        }
        Ok(UidRange { base })
    }

    pub fn base(&self) -> u32 {
        self.base
    }

    /// Whether `uid` is one of this range's.
    pub fn contains(&self, uid: u32) -> bool {
        uid >= self.base && uid - self.base < UID_SLOTS
    }
}

/// The uid of the smallest slot that is not `taken`; `None` when every slot is.
pub fn choose_uid(range: UidRange, taken: &BTreeSet<u32>) -> Option<u32> {
    (0..UID_SLOTS)
        .map(|slot| range.base + slot)
        .find(|uid| !taken.contains(uid))
}

/// The uids this daemon's QEMUs hold, shared by the backend and every lease.
#[derive(Debug)]
pub struct QemuUids {
    range: UidRange,
    /// uid -> how many leases hold it (normally one; a count keeps a release by one holder
    /// from freeing a uid another still uses).
    held: Mutex<BTreeMap<u32, usize>>,
}

impl QemuUids {
    pub fn new(range: UidRange) -> Arc<QemuUids> {
        Arc::new(QemuUids {
            range,
            held: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn range(&self) -> UidRange {
        self.range
    }

    /// A uid for a QEMU about to start: not held by another of this daemon's QEMUs, and not
    /// the uid of any process on the host.
    pub fn lease(self: &Arc<Self>) -> io::Result<UidLease> {
        let running = uids_of_processes(self.range);
        let mut held = self.held.lock().expect("uid lock");
        let mut taken: BTreeSet<u32> = held.keys().copied().collect();
        taken.extend(running);
        let uid = choose_uid(self.range, &taken).ok_or_else(|| {
            io::Error::other(format!(
                "all {UID_SLOTS} QEMU uids from {} on are in use",
                self.range.base
            ))
        })?;
        *held.entry(uid).or_default() += 1;
        Ok(UidLease {
            uids: Arc::clone(self),
            uid,
        })
    }

    /// The uid of a QEMU started by an earlier daemon (re-adoption), held again until it exits.
    /// `None` if it does not run as a uid of this range (it was started with separate users
    /// off, or the range changed).
    pub fn recover(self: &Arc<Self>, pid: u32) -> Option<UidLease> {
        let uid = uid_of(pid).ok()?;
        if !self.range.contains(uid) {
            return None;
        }
        *self.held.lock().expect("uid lock").entry(uid).or_default() += 1;
        Some(UidLease {
            uids: Arc::clone(self),
            uid,
        })
    }

    fn release(&self, uid: u32) {
        let mut held = self.held.lock().expect("uid lock");
        if let Some(count) = held.get_mut(&uid) {
            *count -= 1;
            if *count == 0 {
                held.remove(&uid);
            }
        }
    }
}

/// A uid held for one QEMU process; dropping it (once the process is gone) frees the slot.
#[derive(Debug)]
pub struct UidLease {
    uids: Arc<QemuUids>,
    uid: u32,
}

impl UidLease {
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        self.uids.release(self.uid);
    }
}

/// The real uid of a process, from `/proc/PID/status`.
pub fn uid_of(pid: u32) -> io::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_ids(&status, "Uid:")
        .and_then(|ids| ids.first().copied())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Uid line in status"))
}

/// The ids of a `Uid:` or `Gid:` line of `/proc/PID/status`: real, effective, saved, fs.
fn parse_status_ids(status: &str, key: &str) -> Option<Vec<u32>> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .split_whitespace()
        .map(|id| id.parse().ok())
        .collect()
}

/// The uids of `range` that some process on the host runs as (any of its real, effective,
/// saved or file-system uids). Processes that vanish during the scan are skipped.
fn uids_of_processes(range: UidRange) -> BTreeSet<u32> {
    let mut found = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if let Some(ids) = parse_status_ids(&status, "Uid:") {
            found.extend(ids.into_iter().filter(|uid| range.contains(*uid)));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_free_slot_is_chosen() {
        let range = UidRange::new(DEFAULT_UID_BASE).unwrap();
        let base = DEFAULT_UID_BASE;
        assert_eq!(choose_uid(range, &BTreeSet::new()), Some(base));
        let taken = BTreeSet::from([base, base + 1, base + 3]);
        assert_eq!(choose_uid(range, &taken), Some(base + 2));
        // uids outside the range do not matter.
        let taken = BTreeSet::from([0, 1000, base - 1]);
        assert_eq!(choose_uid(range, &taken), Some(base));
    }

    #[test]
    fn a_full_range_has_no_slot() {
        let range = UidRange::new(1_000_000).unwrap();
        let all: BTreeSet<u32> = (0..UID_SLOTS).map(|s| 1_000_000 + s).collect();
        assert_eq!(choose_uid(range, &all), None);
        let mut one_free = all.clone();
        one_free.remove(&(1_000_000 + UID_SLOTS - 1));
        assert_eq!(
            choose_uid(range, &one_free),
            Some(1_000_000 + UID_SLOTS - 1)
        );
    }

    #[test]
    fn ranges_leave_out_root_and_stay_below_2_pow_31() {
        assert!(UidRange::new(0).is_err());
        assert!(UidRange::new((1 << 31) - UID_SLOTS).is_ok());
        assert!(UidRange::new((1 << 31) - UID_SLOTS + 1).is_err());
        assert!(UidRange::new(u32::MAX).is_err());
        let range = UidRange::new(DEFAULT_UID_BASE).unwrap();
        assert!(range.contains(DEFAULT_UID_BASE));
        assert!(range.contains(DEFAULT_UID_BASE + UID_SLOTS - 1));
        assert!(!range.contains(DEFAULT_UID_BASE + UID_SLOTS));
        assert!(!range.contains(DEFAULT_UID_BASE - 1));
    }

    #[test]
    fn leases_are_distinct_and_a_released_slot_is_reused() {
        // A base no process on this host runs as.
        let uids = QemuUids::new(UidRange::new(2_000_000_000).unwrap());
        let a = uids.lease().unwrap();
        let b = uids.lease().unwrap();
        assert_eq!(a.uid(), 2_000_000_000);
        assert_eq!(b.uid(), 2_000_000_001);
        drop(a);
        let c = uids.lease().unwrap();
        assert_eq!(c.uid(), 2_000_000_000, "the smallest free slot again");
        drop((b, c));
        assert!(uids.held.lock().unwrap().is_empty());
    }

    #[test]
    fn status_lines_are_parsed() {
        let status =
            "Name:\tqemu\nUid:\t1879048193\t1879048193\t1879048193\t1879048193\nGid:\t5\t5\t5\t5\n";
        assert_eq!(parse_status_ids(status, "Uid:"), Some(vec![1879048193; 4]));
        assert_eq!(parse_status_ids(status, "Gid:"), Some(vec![5; 4]));
        assert_eq!(parse_status_ids("Name:\tx\n", "Uid:"), None);
        // This test process runs as someone, and recover ignores uids outside the range.
        let me = std::process::id();
        assert!(uid_of(me).is_ok());
        let uids = QemuUids::new(UidRange::new(2_000_000_000).unwrap());
        assert!(uids.recover(me).is_none());
    }
}
