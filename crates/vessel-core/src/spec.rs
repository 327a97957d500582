//! Turning requests into valid VM specs.

use vessel_api::{Boot, CreateVmRequest, EditVmRequest, Machine, NicKind, VmSpec};

use crate::name::validate_name;

/// Smallest memory a VM may have: below this no Linux kernel boots.
pub const MIN_MEMORY_MIB: u64 = 32;
/// QEMU's own hard limit on vCPUs for the machine types we use.
pub const MAX_CPUS: u32 = 255;
/// x86 Linux truncates the kernel command line at 2048 bytes; keep room for what Vessel appends.
pub const MAX_CMDLINE_LEN: usize = 1900;
pub const MAX_PATH_LEN: usize = 4096;

/// What the host can give a single VM; passed in so that validation stays pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCapacity {
    pub cpus: u32,
    pub memory_mib: u64,
}

/// Builds a spec from a create request, filling defaults, and validates it.
pub fn spec_from_create(req: &CreateVmRequest, host: HostCapacity) -> Result<VmSpec, String> {
    if req.disk.is_some() && req.image.is_some() {
        return Err("give either a disk (--disk PATH) or an image (--image NAME), not both".into());
    }
    let image_only = [
        (req.disk_size_bytes.is_some(), "disk size"),
        (req.full_clone, "full clone"),
        (req.encrypted, "encrypted"),
        (req.pool.is_some(), "pool"),
    ];
    if req.image.is_none() {
        if let Some((_, what)) = image_only.iter().find(|(given, _)| *given) {
            return Err(format!(
                "{what} applies to the root disk made from an image; give --image too"
            ));
        }
    }
    // A VM made from an image gets the image's clone as its first disk. It boots from it
    // through the firmware, or, with a kernel given too, the kernel boots with it attached.
    let disks: Vec<vessel_api::VmDisk> = req
        .image
        .iter()
        .map(|_| vessel_api::VmDisk {
            pool: req.pool.clone().unwrap_or_else(|| "default".into()),
            volume: root_volume_name(&req.name),
            read_only: false,
            shareable: false,
            delete_with_vm: true,
        })
        .collect();
    let boot = match (&req.kernel, &req.disk) {
        (None, None) if req.image.is_some() => {
            if req.initrd.is_some() || req.cmdline.is_some() {
                return Err(
                    "initrd and cmdline only apply to kernel boot; give --kernel too, or drop them"
                        .into(),
                );
            }
            Boot::FirstDisk
        }
        (Some(kernel), None) => Boot::Kernel {
            kernel: kernel.clone(),
            initrd: req.initrd.clone(),
            cmdline: req.cmdline.clone(),
        },
        (None, Some(disk)) => {
            if req.initrd.is_some() || req.cmdline.is_some() {
                return Err("initrd and cmdline only apply to kernel boot; drop them or use --kernel instead of --disk".into());
            }
            Boot::Disk { disk: disk.clone() }
        }
        (Some(_), Some(_)) => {
            return Err(
                "give either a kernel (direct kernel boot) or a disk (boot from disk), not both"
                    .into(),
            )
        }
        (None, None) => {
            return Err(
                "the VM has nothing to boot: give a kernel (--kernel PATH), a disk (--disk PATH) or an image (--image NAME)"
                    .into(),
            )
        }
    };
    let spec = VmSpec {
        name: req.name.clone(),
        cpus: req.cpus,
        memory_mib: req.memory_mib,
        machine: req.machine.unwrap_or_else(|| default_machine(&boot)),
        boot,
        nic: req.nic.unwrap_or(NicKind::None),
        restart_policy: req.restart_policy.unwrap_or_default(),
        disks,
        cloud_init: req.user_data.is_some() || req.network_config.is_some(),
        // NICs on networks need the daemon (addresses, MACs): it adds them with `network::add_nic`.
        nics: Vec::new(),
    };
    validate_spec(&spec, host)?;
    Ok(spec)
}

/// The name of the root volume made for VM `vm` from an image.
pub fn root_volume_name(vm: &str) -> String {
    format!("{vm}-root")
}

/// Direct kernel boot gets the fast minimal machine; disks need firmware and PCI.
pub fn default_machine(boot: &Boot) -> Machine {
    match boot {
        Boot::Kernel { .. } => Machine::Microvm,
        Boot::Disk { .. } | Boot::FirstDisk => Machine::Q35,
    }
}

/// Applies an edit to a spec and validates the result; the old spec is untouched on error.
pub fn apply_edit(
    spec: &VmSpec,
    edit: &EditVmRequest,
    host: HostCapacity,
) -> Result<VmSpec, String> {
    let mut new = spec.clone();
    if let Some(cpus) = edit.cpus {
        new.cpus = cpus;
    }
    if let Some(memory) = edit.memory_mib {
        new.memory_mib = memory;
    }
    if let Some(policy) = edit.restart_policy {
        new.restart_policy = policy;
    }
    if let Some(nic) = edit.nic {
        new.nic = nic;
    }
    if let Some(machine) = edit.machine {
        new.machine = machine;
    }
    new.boot = edit_boot(&spec.boot, edit)?;
    validate_spec(&new, host)?;
    Ok(new)
}

fn edit_boot(boot: &Boot, edit: &EditVmRequest) -> Result<Boot, String> {
    let kernel_fields = edit.kernel.is_some() || edit.initrd.is_some() || edit.cmdline.is_some();
    if edit.disk.is_some() && kernel_fields {
        return Err("give either kernel settings or a disk, not both".into());
    }
    if let Some(disk) = &edit.disk {
        return Ok(Boot::Disk { disk: disk.clone() });
    }
    if !kernel_fields {
        return Ok(boot.clone());
    }
    match boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => Ok(Boot::Kernel {
            kernel: edit.kernel.clone().unwrap_or_else(|| kernel.clone()),
            initrd: edit.initrd.clone().or_else(|| initrd.clone()),
            cmdline: edit.cmdline.clone().or_else(|| cmdline.clone()),
        }),
        Boot::Disk { .. } | Boot::FirstDisk => match &edit.kernel {
            Some(kernel) => Ok(Boot::Kernel {
                kernel: kernel.clone(),
                initrd: edit.initrd.clone(),
                cmdline: edit.cmdline.clone(),
            }),
            None => {
                Err("the VM boots from a disk; set --kernel to switch it to kernel boot".into())
            }
        },
    }
}

/// Checks every field of a spec against the rules and the host's capacity.
pub fn validate_spec(spec: &VmSpec, host: HostCapacity) -> Result<(), String> {
    validate_name("VM", &spec.name)?;
    let max_cpus = host.cpus.clamp(1, MAX_CPUS);
    if spec.cpus == 0 || spec.cpus > max_cpus {
        return Err(format!(
            "cpus is {}; a VM on this host can have 1 to {max_cpus} vCPUs (the host has {} CPUs)",
            spec.cpus, host.cpus
        ));
    }
    if spec.memory_mib < MIN_MEMORY_MIB {
        return Err(format!(
            "memory is {} MiB; the minimum is {MIN_MEMORY_MIB} MiB",
            spec.memory_mib
        ));
    }
    if spec.memory_mib > host.memory_mib {
        return Err(format!(
            "memory is {} MiB but the host has only {} MiB; give less memory",
            spec.memory_mib, host.memory_mib
        ));
    }
    match &spec.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            validate_path("kernel", kernel)?;
            if let Some(initrd) = initrd {
                validate_path("initrd", initrd)?;
            }
            if let Some(cmdline) = cmdline {
                validate_cmdline(cmdline)?;
            }
        }
        Boot::Disk { disk } => validate_path("disk", disk)?,
        Boot::FirstDisk if spec.disks.is_empty() => {
            return Err("the VM boots from its first disk but has no disk attached".into())
        }
        Boot::FirstDisk => {}
    }
    if spec.machine == Machine::Microvm && !matches!(spec.boot, Boot::Kernel { .. }) {
        return Err("the microvm machine has no firmware to boot a disk; use --machine q35".into());
    }
    crate::disks::validate_disks(&spec.disks)
}

fn validate_path(what: &str, path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err(format!("{what} path is empty"));
    }
    if !path.starts_with('/') {
        return Err(format!("{what} path {path:?} is relative; give an absolute path (the daemon has its own working directory)"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("{what} path is longer than {MAX_PATH_LEN} bytes"));
    }
    if path.chars().any(char::is_control) {
        return Err(format!("{what} path {path:?} contains control characters"));
    }
    Ok(())
}

fn validate_cmdline(cmdline: &str) -> Result<(), String> {
    if cmdline.len() > MAX_CMDLINE_LEN {
        return Err(format!(
            "kernel command line is {} bytes; the limit is {MAX_CMDLINE_LEN}",
            cmdline.len()
        ));
    }
    if cmdline.chars().any(char::is_control) {
        return Err("kernel command line contains control characters (newline, tab...)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_api::RestartPolicy;

    const HOST: HostCapacity = HostCapacity {
        cpus: 4,
        memory_mib: 8192,
    };

    fn kernel_request() -> CreateVmRequest {
        CreateVmRequest {
            name: "web1".into(),
            cpus: 1,
            memory_mib: 256,
            kernel: Some("/boot/vmlinuz".into()),
            ..Default::default()
        }
    }

    #[test]
    fn kernel_boot_defaults_to_microvm_and_never_restart() {
        let spec = spec_from_create(&kernel_request(), HOST).unwrap();
        assert_eq!(spec.machine, Machine::Microvm);
        assert_eq!(spec.restart_policy, RestartPolicy::Never);
        assert_eq!(spec.nic, NicKind::None);
    }

    #[test]
    fn disk_boot_defaults_to_q35() {
        let req = CreateVmRequest {
            kernel: None,
            disk: Some("/var/lib/d.qcow2".into()),
            ..kernel_request()
        };
        assert_eq!(spec_from_create(&req, HOST).unwrap().machine, Machine::Q35);
    }

    #[test]
    fn bad_sizes_are_rejected_with_the_limit() {
        let zero = CreateVmRequest {
            cpus: 0,
            ..kernel_request()
        };
        assert!(spec_from_create(&zero, HOST)
            .unwrap_err()
            .contains("1 to 4 vCPUs"));
        let many = CreateVmRequest {
            cpus: 1000,
            ..kernel_request()
        };
        assert!(spec_from_create(&many, HOST).is_err());
        let tiny = CreateVmRequest {
            memory_mib: 1,
            ..kernel_request()
        };
        assert!(spec_from_create(&tiny, HOST)
            .unwrap_err()
            .contains("minimum"));
        let huge = CreateVmRequest {
            memory_mib: 1 << 30,
            ..kernel_request()
        };
        assert!(spec_from_create(&huge, HOST)
            .unwrap_err()
            .contains("host has only 8192 MiB"));
    }

    #[test]
    fn boot_source_must_be_exactly_one() {
        let none = CreateVmRequest {
            kernel: None,
            ..kernel_request()
        };
        assert!(spec_from_create(&none, HOST)
            .unwrap_err()
            .contains("nothing to boot"));
        let both = CreateVmRequest {
            disk: Some("/d".into()),
            ..kernel_request()
        };
        assert!(spec_from_create(&both, HOST)
            .unwrap_err()
            .contains("not both"));
    }

    #[test]
    fn relative_paths_and_control_characters_are_rejected() {
        let rel = CreateVmRequest {
            kernel: Some("vmlinuz".into()),
            ..kernel_request()
        };
        assert!(spec_from_create(&rel, HOST)
            .unwrap_err()
            .contains("relative"));
        let nl = CreateVmRequest {
            cmdline: Some("a\nb".into()),
            ..kernel_request()
        };
        assert!(spec_from_create(&nl, HOST).unwrap_err().contains("control"));
    }

    #[test]
    fn edit_changes_only_given_fields_and_revalidates() {
        let spec = spec_from_create(&kernel_request(), HOST).unwrap();
        let edited = apply_edit(
            &spec,
            &EditVmRequest {
                cpus: Some(2),
                ..Default::default()
            },
            HOST,
        )
        .unwrap();
        assert_eq!(edited.cpus, 2);
        assert_eq!(edited.memory_mib, spec.memory_mib);
        assert_eq!(edited.boot, spec.boot);
        let bad = EditVmRequest {
            memory_mib: Some(0),
            ..Default::default()
        };
        assert!(apply_edit(&spec, &bad, HOST).is_err());
        let cmdline = EditVmRequest {
            cmdline: Some("quiet".into()),
            ..Default::default()
        };
        match apply_edit(&spec, &cmdline, HOST).unwrap().boot {
            Boot::Kernel {
                kernel, cmdline, ..
            } => {
                assert_eq!(kernel, "/boot/vmlinuz");
                assert_eq!(cmdline.as_deref(), Some("quiet"));
            }
            other => panic!("boot changed kind: {other:?}"),
        }
    }
}
