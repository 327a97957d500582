//! Disks attached to a VM: which changes to a VM's disk list are valid.

use vessel_api::{VmDisk, VmSpec};

use crate::name::validate_name;

/// Most disks a VM may have. One virtio-scsi controller takes many more; this keeps specs and
/// command lines small and is more than any VM on a single host needs.
pub const MAX_DISKS: usize = 16;

/// The spec with `disk` attached last; the spec is unchanged on error.
pub fn attach_disk(spec: &VmSpec, disk: VmDisk) -> Result<VmSpec, String> {
    if find_disk(spec, &disk.pool, &disk.volume).is_some() {
        return Err(format!(
            "volume {:?} of pool {:?} is already attached to VM {:?}",
            disk.volume, disk.pool, spec.name
        ));
    }
    let mut new = spec.clone();
    new.disks.push(disk);
    validate_disks(&new.disks)?;
    Ok(new)
}

/// The spec without the disk that is `volume` of `pool`.
pub fn detach_disk(spec: &VmSpec, pool: &str, volume: &str) -> Result<VmSpec, String> {
    let index = find_disk(spec, pool, volume).ok_or_else(|| {
        format!(
            "volume {volume:?} of pool {pool:?} is not attached to VM {:?}; `vessel vm show {}` lists its disks",
            spec.name, spec.name
        )
    })?;
    if index == 0 && spec.boot == vessel_api::Boot::FirstDisk {
        return Err(format!(
            "volume {volume:?} is VM {:?}'s boot disk; it stays as long as the VM boots from it",
            spec.name
        ));
    }
    let mut new = spec.clone();
    new.disks.remove(index);
    Ok(new)
}

pub fn find_disk(spec: &VmSpec, pool: &str, volume: &str) -> Option<usize> {
    spec.disks
        .iter()
        .position(|d| d.pool == pool && d.volume == volume)
}

/// Checks a VM's disk list: valid names, no volume twice, not too many.
pub fn validate_disks(disks: &[VmDisk]) -> Result<(), String> {
    if disks.len() > MAX_DISKS {
        return Err(format!(
            "a VM can have at most {MAX_DISKS} disks; detach one first"
        ));
    }
    for (i, disk) in disks.iter().enumerate() {
        validate_name("pool", &disk.pool)?;
        validate_name("volume", &disk.volume)?;
        if disks[..i]
            .iter()
            .any(|d| d.pool == disk.pool && d.volume == disk.volume)
        {
            return Err(format!(
                "volume {:?} of pool {:?} is attached twice",
                disk.volume, disk.pool
            ));
        }
    }
    Ok(())
}

/// The name QEMU knows a disk by (block node and, prefixed, the device). Derived from the pool
/// and volume, so that a daemon that re-adopts a running QEMU finds the same names; hashed,
/// because QEMU limits node names to 31 characters.
pub fn disk_node_name(pool: &str, volume: &str) -> String {
    format!("vd{:016x}", stable_hash(pool, volume))
}

/// FNV-1a of `a/b`: stable across releases and platforms, unlike std's hasher, so names derived
/// from it (block nodes, taps) stay the same for a VM's whole life.
pub fn stable_hash(a: &str, b: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.bytes().chain([b'/']).chain(b.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_api::{Boot, Machine, NicKind, RestartPolicy};

    fn spec() -> VmSpec {
        VmSpec {
            name: "web1".into(),
            cpus: 1,
            memory_mib: 128,
            boot: Boot::Disk { disk: "/d".into() },
            machine: Machine::Q35,
            nic: NicKind::None,
            restart_policy: RestartPolicy::Never,
            disks: vec![],
            cloud_init: false,
            nics: vec![],
        }
    }

    fn disk(pool: &str, volume: &str) -> VmDisk {
        VmDisk {
            pool: pool.into(),
            volume: volume.into(),
            read_only: false,
            shareable: false,
            delete_with_vm: false,
        }
    }

    #[test]
    fn attach_then_detach_round_trips() {
        let attached = attach_disk(&spec(), disk("default", "data")).unwrap();
        assert_eq!(attached.disks, vec![disk("default", "data")]);
        let detached = detach_disk(&attached, "default", "data").unwrap();
        assert_eq!(detached, spec());
    }

    #[test]
    fn a_volume_attaches_once() {
        let attached = attach_disk(&spec(), disk("default", "data")).unwrap();
        let err = attach_disk(&attached, disk("default", "data")).unwrap_err();
        assert!(err.contains("already attached"), "{err}");
        // The same volume name in another pool is another volume.
        assert!(attach_disk(&attached, disk("fast", "data")).is_ok());
    }

    #[test]
    fn detaching_what_is_not_attached_says_so() {
        let err = detach_disk(&spec(), "default", "nope").unwrap_err();
        assert!(err.contains("not attached"), "{err}");
    }

    #[test]
    fn names_are_checked_and_the_count_is_capped() {
        assert!(attach_disk(&spec(), disk("default", "../etc")).is_err());
        let mut s = spec();
        for i in 0..MAX_DISKS {
            s = attach_disk(&s, disk("default", &format!("d{i}"))).unwrap();
        }
        let err = attach_disk(&s, disk("default", "one-more")).unwrap_err();
        assert!(err.contains("at most"), "{err}");
    }

    #[test]
    fn node_names_are_stable_distinct_and_short() {
        let a = disk_node_name("default", "data");
        assert_eq!(a, disk_node_name("default", "data"));
        assert_ne!(a, disk_node_name("default", "data2"));
        assert_ne!(
            disk_node_name("fast", "data"),
            a,
            "the pool is part of the name"
        );
        assert!(a.len() <= 31 && a.starts_with(|c: char| c.is_ascii_alphabetic()));
    }
}
