//! How VMs look in tables and detail views.

use vessel_api::{Boot, NicKind, Vm};

use crate::output::{finish_aligned, format_mib, format_time, key_values, or_dash, plain_table};

/// `VM web1 created; it is running`.
pub fn created_line(vm: &Vm) -> String {
    format!("VM {} created; it is {}\n", vm.spec.name, vm.state.as_str())
}

/// `VM web1 is running` (with the reason, when there is one).
pub fn state_line(vm: &Vm) -> String {
    match &vm.reason {
        Some(reason) => format!("VM {} is {} ({reason})\n", vm.spec.name, vm.state.as_str()),
        None => format!("VM {} is {}\n", vm.spec.name, vm.state.as_str()),
    }
}

/// `vessel vm list`.
pub fn vm_table(vms: &[Vm]) -> String {
    let mut table = plain_table(Some(&[
        "NAME", "STATE", "CPUS", "MEMORY", "BOOT", "PID", "RESTARTS",
    ]));
    for vm in vms {
        table.add_row(vec![
            vm.spec.name.clone(),
            state_with_goal(vm),
            vm.spec.cpus.to_string(),
            format_mib(vm.spec.memory_mib),
            boot_kind(&vm.spec.boot).to_string(),
            vm.pid.map_or_else(|| "-".into(), |pid| pid.to_string()),
            vm.restart_count.to_string(),
        ]);
    }
    finish_aligned(table, &[2, 3, 5, 6])
}

/// The observed state, with the desired one when they differ (`stopped->running`), so that a
/// VM the daemon is still working on shows as such.
fn state_with_goal(vm: &Vm) -> String {
    let state = vm.state.as_str();
    let desired = vm.desired_state.as_str();
    if state == desired || vm.state == vessel_api::VmState::Crashed {
        state.to_string()
    } else {
        format!("{state}->{desired}")
    }
}

/// `vessel vm show`.
pub fn vm_details(vm: &Vm, now_ms: u64) -> String {
    let spec = &vm.spec;
    let mut rows = vec![
        ("Name", spec.name.clone()),
        ("State", vm.state.as_str().to_string()),
        ("Desired state", vm.desired_state.as_str().to_string()),
        ("Reason", or_dash(vm.reason.as_deref())),
        (
            "PID",
            vm.pid.map_or_else(|| "-".into(), |pid| pid.to_string()),
        ),
        ("Accelerator", or_dash(vm.accelerator.as_deref())),
        ("CPUs", spec.cpus.to_string()),
        ("Memory", format_mib(spec.memory_mib)),
        ("Machine", spec.machine.as_str().to_string()),
        ("Boot", boot_kind(&spec.boot).to_string()),
    ];
    match &spec.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            rows.push(("Kernel", kernel.clone()));
            rows.push(("Initrd", or_dash(initrd.as_deref())));
            rows.push(("Cmdline", or_dash(cmdline.as_deref())));
        }
        Boot::Disk { disk } => rows.push(("Disk", disk.clone())),
        Boot::FirstDisk => {}
    }
    for disk in &spec.disks {
        let mut text = format!("{}/{}", disk.pool, disk.volume);
        if disk.read_only {
            text.push_str(" (read-only)");
        }
        if disk.shareable {
            text.push_str(" (shareable)");
        }
        rows.push(("Attached disk", text));
    }
    if spec.cloud_init {
        rows.push(("cloud-init", "NoCloud seed attached".into()));
    }
    rows.extend([
        ("NIC", nic_name(spec.nic).to_string()),
        ("Restart policy", spec.restart_policy.as_str().to_string()),
        ("Restarts", vm.restart_count.to_string()),
        ("Created", format_time(vm.created_at_ms, now_ms)),
        ("State changed", format_time(vm.state_changed_at_ms, now_ms)),
    ]);
    key_values(rows)
}

/// The guest agent's part of `vessel vm show`.
pub fn guest_details(guest: &vessel_api::GuestInfo) -> String {
    let mut rows = vec![(
        "Guest agent",
        if guest.agent {
            "running".to_string()
        } else {
            guest.note.clone().unwrap_or_else(|| "not running".into())
        },
    )];
    for iface in &guest.interfaces {
        rows.push((
            "Guest address",
            format!("{} {}", iface.name, iface.addresses.join(" ")),
        ));
    }
    key_values(rows)
}

fn nic_name(nic: NicKind) -> &'static str {
    match nic {
        NicKind::None => "none",
        NicKind::User => "user",
    }
}

pub fn boot_kind(boot: &Boot) -> &'static str {
    match boot {
        Boot::Kernel { .. } => "kernel",
        Boot::Disk { .. } => "disk",
        Boot::FirstDisk => "volume",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_api::{DesiredState, Machine, RestartPolicy, VmSpec, VmState};

    fn vm(name: &str, memory_mib: u64, boot: Boot, state: VmState, pid: Option<u32>) -> Vm {
        Vm {
            project: "default".into(),
            spec: VmSpec {
                name: name.into(),
                cpus: 2,
                memory_mib,
                boot,
                machine: Machine::Microvm,
                nic: NicKind::User,
                restart_policy: RestartPolicy::OnFailure,
                disks: vec![],
                cloud_init: false,
                nics: vec![],
            },
            desired_state: match state {
                VmState::Running => DesiredState::Running,
                _ => DesiredState::Stopped,
            },
            state,
            reason: None,
            pid,
            accelerator: pid.map(|_| "tcg".into()),
            restart_count: 1,
            created_at_ms: 1_700_000_000_000,
            state_changed_at_ms: 1_700_000_060_000,
        }
    }

    fn kernel() -> Boot {
        Boot::Kernel {
            kernel: "/boot/vmlinuz".into(),
            initrd: Some("/boot/initrd.img".into()),
            cmdline: None,
        }
    }

    #[test]
    fn vm_list_has_the_columns_and_formats_memory() {
        let vms = vec![
            vm("web1", 256, kernel(), VmState::Running, Some(4242)),
            vm(
                "db",
                2048,
                Boot::Disk {
                    disk: "/var/lib/db.qcow2".into(),
                },
                VmState::Stopped,
                None,
            ),
        ];
        let text = vm_table(&vms);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            ["NAME", "STATE", "CPUS", "MEMORY", "BOOT", "PID", "RESTARTS"]
        );
        assert!(lines[0].starts_with("NAME"), "no leading border: {text}");
        let web1: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            web1,
            ["web1", "running", "2", "256M", "kernel", "4242", "1"]
        );
        let db: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(db, ["db", "stopped", "2", "2G", "disk", "-", "1"]);
        assert!(!text.contains('|') && !text.contains('+'), "{text}");
        assert!(text.lines().all(|line| !line.ends_with(' ')), "{text:?}");
    }

    #[test]
    fn vm_list_shows_a_pending_change_of_state() {
        let mut starting = vm("web1", 256, kernel(), VmState::Starting, Some(1));
        starting.desired_state = DesiredState::Running;
        let text = vm_table(&[starting]);
        assert!(text.contains("starting->running"), "{text}");
    }

    #[test]
    fn empty_vm_list_is_just_the_header() {
        let text = vm_table(&[]);
        assert_eq!(text.lines().count(), 1);
        assert!(text.starts_with("NAME"));
    }

    #[test]
    fn vm_details_show_spec_state_and_ages() {
        let mut web1 = vm("web1", 1536, kernel(), VmState::Crashed, None);
        web1.reason = Some("QEMU was killed by signal 9".into());
        let now = 1_700_000_240_000;
        let text = vm_details(&web1, now);
        for expected in [
            "Desired state",
            "stopped",
            "QEMU was killed by signal 9",
            "1536M",
            "microvm",
            "/boot/vmlinuz",
            "/boot/initrd.img",
            "on-failure",
            "4m ago (2023-11-14 22:13:20 UTC)",
            "3m ago",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }
}
