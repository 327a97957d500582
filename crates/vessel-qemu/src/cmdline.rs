//! The QEMU command line for a VM spec. Pure: no IO, so every flag is unit-tested.

use vessel_api::{Boot, Machine, NicKind, VmSpec};
use vessel_storage::Format;

use crate::accel::Accel;
use crate::disk::{self, DiskFile};
use crate::nic::{self, NicBackend, NicPlan};

/// File descriptor numbers the QMP and console listening sockets have inside QEMU.
pub const QMP_FD: i32 = 3;
pub const CONSOLE_FD: i32 = 4;
/// The listening socket of the guest agent's port.
pub const AGENT_FD: i32 = 5;
/// The first fd of the secret pipes (volume keys) QEMU inherits, one per encrypted disk in disk
/// order; QEMU reads each with a `secret` object, so no key is ever on the command line.
pub const SECRET_FD_BASE: i32 = 6;

/// Inputs of the command line that are not in the spec.
#[derive(Debug, Clone)]
pub struct CmdlineInputs<'a> {
    pub spec: &'a VmSpec,
    pub accel: Accel,
    pub pid_file: &'a str,
    /// The disk's format, always named to QEMU: never let QEMU probe a raw image, or a guest
    /// could write a qcow2 header into it and make the host open arbitrary backing files.
    pub disk_format: Option<Format>,
    /// The host's TSC frequency; a TCG guest's TSC runs at it.
    pub host_tsc_khz: Option<u64>,
    /// Data disks, on the SCSI controller, in this order.
    pub disks: &'a [DiskFile],
    /// A cloud-init NoCloud seed image (ISO 9660 labelled `cidata`), attached as a CD-ROM.
    pub seed: Option<&'a str>,
    /// NICs on networks, in order. Their taps are inherited right after the secret pipes.
    pub nics: &'a [NicPlan],
    /// The uid (and gid, the same number) QEMU switches to once it has opened its files; `None`:
    /// it keeps the daemon's (see [`crate::uid`]).
    pub runas: Option<u32>,
    /// The boot files are inherited right after the taps (kernel, then initrd; or the disk)
    /// and named `/dev/fd/N`: QEMU 7.2 reads `-kernel`/`-initrd` by file name only (no fd
    /// sets), and opening `/dev/fd/N` reopens the file the daemon opened, whatever its path
    /// has become since. `false`: the spec's paths.
    pub boot_fds: bool,
}

/// QEMU's option parser splits on commas; a literal comma is written twice.
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// The argument vector (without the program name).
pub fn build(inputs: &CmdlineInputs<'_>) -> Vec<String> {
    let spec = inputs.spec;
    let mut args: Vec<String> = Vec::with_capacity(48);
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(|s| s.to_string()));

    push(&[
        "-name",
        &format!("guest={},debug-threads=on", escape(&spec.name)),
    ]);
    push(&["-no-user-config", "-nodefaults", "-display", "none"]);
    // Start with vCPUs stopped: the daemon attaches to the console before the guest prints its
    // first byte, then resumes.
    push(&["-S"]);
    push(&["-machine", &machine_option(spec.machine)]);
    push(&["-accel", inputs.accel.as_str()]);
    if inputs.accel == Accel::Kvm {
        push(&["-cpu", "host"]);
    }
    push(&[
        "-smp",
        &spec.cpus.to_string(),
        "-m",
        &format!("{}M", spec.memory_mib),
    ]);
    push(&[
        "-chardev",
        &format!("socket,id=qmp,fd={QMP_FD},server=on,wait=off"),
    ]);
    push(&["-mon", "chardev=qmp,mode=control"]);
    push(&[
        "-chardev",
        &format!("socket,id=console,fd={CONSOLE_FD},server=on,wait=off"),
    ]);
    push(&["-serial", "chardev:console"]);
    // The guest agent's port, used when the guest runs qemu-guest-agent.
    push(&[
        "-chardev",
        &format!("socket,id=qga,fd={AGENT_FD},server=on,wait=off"),
    ]);
    push(&[
        "-device",
        &format!("{},id=vser0", device(spec.machine, "virtio-serial")),
    ]);
    push(&[
        "-device",
        "virtserialport,bus=vser0.0,chardev=qga,name=org.qemu.guest_agent.0",
    ]);
    // Written by QEMU while still root; QEMU cannot remove it once it runs as its own user (the
    // run dir is root's), so the daemon removes it after the exit.
    push(&["-pidfile", inputs.pid_file]);
    push(&["-sandbox", &sandbox(inputs.runas.is_some())]);
    if let Some(uid) = inputs.runas {
        // Numeric uid:gid (QEMU 7.2 and later): no passwd entry needed. QEMU opens every file of
        // its command line first, then drops to this user before the guest runs.
        push(&["-runas", &format!("{uid}:{uid}")]);
    }
    push(&["-msg", "timestamp=on"]);
    // A guest kernel that panics tells QEMU through this device (GUEST_PANICKED), so the VM is
    // reported as crashed instead of hanging forever as "running".
    push(&["-device", "pvpanic"]);
    let taps = inputs
        .nics
        .iter()
        .filter(|n| matches!(n.backend, NicBackend::Tap(_)))
        .count();
    let secrets = inputs.disks.iter().filter(|d| d.key.is_some()).count();
    let first_boot_fd = SECRET_FD_BASE + (secrets + taps) as i32;
    boot_args(inputs, first_boot_fd, &mut args);
    // Every VM gets the controller, so that a disk can be hot-plugged into a VM started without.
    args.extend(["-device".into(), disk::controller(spec.machine)]);
    let mut secret_fd = SECRET_FD_BASE;
    let boot_first = spec.boot == Boot::FirstDisk;
    for (i, d) in inputs.disks.iter().enumerate() {
        if d.key.is_some() {
            args.extend([
                "-object".into(),
                format!(
                    "secret,id={},file=/dev/fd/{secret_fd},format=raw",
                    d.secret_id()
                ),
            ]);
            secret_fd += 1;
        }
        args.extend(["-blockdev".into(), d.blockdev().to_string()]);
        let mut device = d.device();
        if boot_first && i == 0 {
            device["bootindex"] = 1.into();
        }
        args.extend(["-device".into(), device.to_string()]);
    }
    if let Some(seed) = inputs.seed {
        let node = serde_json::json!({
            "driver": "raw",
            "node-name": "cidata",
            "read-only": true,
            "file": { "driver": "file", "filename": seed },
        });
        args.extend(["-blockdev".into(), node.to_string()]);
        args.extend([
            "-device".into(),
            format!(
                "scsi-cd,bus={}.0,drive=cidata,id=cidata-dev",
                disk::SCSI_CONTROLLER
            ),
        ]);
    }
    nic_args(inputs, secret_fd, &mut args);
    if spec.nic == NicKind::User {
        args.extend(["-netdev".into(), "user,id=net0".into()]);
        args.extend([
            "-device".into(),
            format!("{},netdev=net0", device(spec.machine, "virtio-net")),
        ]);
    }
    args
}

/// Root ports (q35) and the NICs on networks; taps are inherited from `first_tap_fd` on, in
/// NIC order.
fn nic_args(inputs: &CmdlineInputs<'_>, first_tap_fd: i32, args: &mut Vec<String>) {
    let machine = inputs.spec.machine;
    for port in nic::root_ports(machine) {
        args.extend(["-device".into(), port]);
    }
    let mut tap_fd = first_tap_fd;
    for plan in inputs.nics {
        let fd = match plan.backend {
            NicBackend::Tap(_) => {
                tap_fd += 1;
                Some(tap_fd - 1)
            }
            NicBackend::User => None,
        };
        args.extend(["-netdev".into(), nic::netdev_arg(plan, fd)]);
        args.extend(["-device".into(), nic::device(machine, plan).to_string()]);
    }
}

/// The seccomp policy. QEMU never needs to spawn processes, gain privileges or use obsolete
/// syscalls; seccomp turns an exploit's attempt to do so into a crash.
///
/// With `-runas`, the set*id syscalls must stay allowed: QEMU installs the filter before it
/// switches users, and `elevateprivileges=deny` (and `children`, which in QEMU 7.2 denies the
/// same syscalls and adds no_new_privs) kill it with SIGSYS at the switch. Allowing them gives
/// nothing away: after the switch QEMU's real, effective and saved uids and gids are all its
/// own non-zero ids and it has no capability (see `process::drop_privileges`), so set*id can
/// only "change" to those same ids, and QEMU itself checks that setuid(0) fails.
fn sandbox(switches_user: bool) -> String {
    let elevate = if switches_user { "allow" } else { "deny" };
    format!("on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny")
}

fn machine_option(machine: Machine) -> String {
    match machine {
        // ACPI on so that `system_powerdown` reaches the guest as a power button press.
        Machine::Microvm => "microvm,acpi=on".to_string(),
        Machine::Q35 => "q35".to_string(),
    }
}

/// microvm has only virtio-mmio; q35 uses PCI.
fn device(machine: Machine, kind: &str) -> String {
    match machine {
        Machine::Microvm => format!("{kind}-device"),
        Machine::Q35 => format!("{kind}-pci"),
    }
}

/// Kernel command line: the serial console, what the machine type needs, then the user's options
/// (last, so that they win where the kernel takes the last occurrence).
pub fn kernel_cmdline(inputs: &CmdlineInputs<'_>, user: Option<&str>) -> String {
    let mut line = String::from("console=ttyS0");
    if inputs.spec.machine == Machine::Microvm {
        // microvm has no PC reset hardware; a triple fault is how its guests reboot.
        line.push_str(" reboot=t");
        // Without PIT calibration, HPET or a PM timer, a TCG guest on microvm cannot measure its
        // TSC and hangs early in boot; tell it the rate (under KVM, kvm-clock does this).
        if let (Accel::Tcg, Some(khz)) = (inputs.accel, inputs.host_tsc_khz) {
            line.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    if let Some(extra) = user.filter(|u| !u.is_empty()) {
        line.push(' ');
        line.push_str(extra);
    }
    line
}

fn boot_args(inputs: &CmdlineInputs<'_>, first_fd: i32, args: &mut Vec<String>) {
    // The n-th boot file: its inherited fd, or the spec's path.
    let file = |n: i32, path: &str| {
        if inputs.boot_fds {
            format!("/dev/fd/{}", first_fd + n)
        } else {
            path.to_string()
        }
    };
    match &inputs.spec.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            args.extend(["-kernel".into(), file(0, kernel)]);
            if let Some(initrd) = initrd {
                args.extend(["-initrd".into(), file(1, initrd)]);
            }
            args.extend(["-append".into(), kernel_cmdline(inputs, cmdline.as_deref())]);
        }
        Boot::Disk { disk } => {
            let format = inputs.disk_format.unwrap_or(Format::Raw);
            args.extend([
                "-blockdev".into(),
                format!(
                    "driver=file,node-name=disk0-file,filename={},cache.direct=off",
                    escape(&file(0, disk))
                ),
            ]);
            args.extend([
                "-blockdev".into(),
                format!("driver={},node-name=disk0,file=disk0-file", format.as_str()),
            ]);
            args.extend([
                "-device".into(),
                format!(
                    "{},drive=disk0,bootindex=1",
                    device(inputs.spec.machine, "virtio-blk")
                ),
            ]);
        }
        // The first data disk gets the boot index (see `build`).
        Boot::FirstDisk => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_api::RestartPolicy;

    fn spec(boot: Boot, machine: Machine) -> VmSpec {
        VmSpec {
            name: "web,1".into(),
            cpus: 2,
            memory_mib: 256,
            boot,
            machine,
            nic: NicKind::User,
            restart_policy: RestartPolicy::Never,
            disks: vec![],
            cloud_init: false,
            nics: vec![],
        }
    }

    fn joined(spec: &VmSpec, accel: Accel) -> String {
        build(&CmdlineInputs {
            spec,
            accel,
            pid_file: "/run/x.pid",
            disk_format: Some(Format::Qcow2),
            host_tsc_khz: Some(2_000_000),
            disks: &[],
            seed: None,
            nics: &[],
            runas: None,
            boot_fds: false,
        })
        .join(" ")
    }

    #[test]
    fn kernel_boot_on_microvm_uses_mmio_devices_and_serial_console() {
        let boot = Boot::Kernel {
            kernel: "/k".into(),
            initrd: Some("/i".into()),
            cmdline: Some("quiet".into()),
        };
        let line = joined(&spec(boot, Machine::Microvm), Accel::Tcg);
        assert!(line.contains("-machine microvm,acpi=on"), "{line}");
        assert!(
            line.contains(
                "-kernel /k -initrd /i -append console=ttyS0 reboot=t tsc_early_khz=2000000 quiet"
            ),
            "{line}"
        );
        assert!(line.contains("virtio-net-device,netdev=net0"), "{line}");
        assert!(line.contains("-accel tcg"), "{line}");
        assert!(!line.contains("-cpu host"), "{line}");
        assert!(line.contains("-smp 2 -m 256M"), "{line}");
        assert!(line.contains(" -S "), "vCPUs must start stopped: {line}");
        assert!(line.contains("-device pvpanic"), "{line}");
    }

    #[test]
    fn inherited_boot_files_are_named_by_fd_after_the_secrets_and_taps() {
        let spec = spec(
            Boot::Kernel {
                kernel: "/k".into(),
                initrd: Some("/i".into()),
                cmdline: None,
            },
            Machine::Microvm,
        );
        let args = build(&CmdlineInputs {
            spec: &spec,
            accel: Accel::Tcg,
            pid_file: "/run/x/qemu.pid",
            disk_format: None,
            host_tsc_khz: None,
            disks: &[],
            seed: None,
            nics: &[],
            runas: None,
            boot_fds: true,
        })
        .join(" ");
        let first = SECRET_FD_BASE;
        assert!(
            args.contains(&format!(
                "-kernel /dev/fd/{first} -initrd /dev/fd/{}",
                first + 1
            )),
            "{args}"
        );
        assert!(!args.contains(" /k") && !args.contains(" /i"), "{args}");
    }

    #[test]
    fn disk_boot_on_q35_names_the_format_and_uses_pci() {
        let line = joined(
            &spec(
                Boot::Disk {
                    disk: "/d,x.qcow2".into(),
                },
                Machine::Q35,
            ),
            Accel::Kvm,
        );
        assert!(
            line.contains("filename=/d,,x.qcow2"),
            "commas must be escaped: {line}"
        );
        assert!(line.contains("driver=qcow2,node-name=disk0"), "{line}");
        assert!(line.contains("virtio-blk-pci,drive=disk0"), "{line}");
        assert!(line.contains("-accel kvm -cpu host"), "{line}");
    }

    #[test]
    fn data_disks_sit_on_the_scsi_controller_in_order() {
        let disks =
            [("vda1", Format::Raw), ("vdb2", Format::Qcow2)].map(|(node, format)| DiskFile {
                node_name: node.into(),
                path: format!("/p/{node}").into(),
                format,
                read_only: false,
                shareable: false,
                serial: node.into(),
                key: (node == "vdb2")
                    .then(|| std::sync::Arc::new(vessel_storage::VolumeKey::generate().unwrap())),
                backing: vec![],
            });
        let s = spec(Boot::Disk { disk: "/d".into() }, Machine::Q35);
        let (tap, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let nics = [
            NicPlan {
                id: "nic0".into(),
                mac: "52:54:00:00:00:01".into(),
                backend: NicBackend::Tap(std::sync::Arc::new(tap.into())),
            },
            NicPlan {
                id: "nic1".into(),
                mac: "52:54:00:00:00:02".into(),
                backend: NicBackend::User,
            },
        ];
        let args = build(&CmdlineInputs {
            spec: &s,
            accel: Accel::Tcg,
            pid_file: "/run/x.pid",
            disk_format: None,
            host_tsc_khz: None,
            disks: &disks,
            seed: Some("/run/vm/cidata.iso"),
            nics: &nics,
            runas: None,
            boot_fds: false,
        });
        let line = args.join(" ");
        // One encrypted disk takes fd 6, so the tap is the next one.
        assert!(line.contains("-netdev tap,id=hn-nic0,fd=7"), "{line}");
        assert!(line.contains("-netdev user,id=hn-nic1"), "{line}");
        assert!(line.contains(r#""bus":"rp1""#), "{line}");
        assert!(line.contains("pcie-root-port,id=rp7"), "{line}");
        assert!(line.contains("-device virtio-scsi-pci,id=scsi0"), "{line}");
        let a = line.find(r#""node-name":"vda1""#).expect("first disk");
        let b = line.find(r#""node-name":"vdb2""#).expect("second disk");
        assert!(a < b, "{line}");
        assert!(line.contains(r#""drive":"vdb2""#), "{line}");
        assert!(line.contains("scsi-cd,bus=scsi0.0,drive=cidata"), "{line}");
        // The encrypted disk's key comes through the first secret fd, never as an argument.
        assert!(
            line.contains("-object secret,id=vdb2-key,file=/dev/fd/6,format=raw"),
            "{line}"
        );
        assert!(line.contains(r#""key-secret":"vdb2-key""#), "{line}");
        let passphrase = disks[1].key.as_ref().unwrap().luks_passphrase();
        assert!(!line.contains(passphrase.as_str()), "no key in the args");
    }

    #[test]
    fn runas_switches_to_the_vms_own_uid_and_gid_and_lets_qemu_do_so() {
        let s = spec(Boot::Disk { disk: "/d".into() }, Machine::Q35);
        let plain = joined(&s, Accel::Tcg);
        assert!(!plain.contains("-runas"), "{plain}");
        assert!(
            plain.contains(
                "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
            ),
            "{plain}"
        );
        let line = build(&CmdlineInputs {
            spec: &s,
            accel: Accel::Tcg,
            pid_file: "/run/x.pid",
            disk_format: None,
            host_tsc_khz: None,
            disks: &[],
            seed: None,
            nics: &[],
            runas: Some(1_879_048_193),
            boot_fds: false,
        })
        .join(" ");
        assert!(line.contains("-runas 1879048193:1879048193"), "{line}");
        assert!(
            line.contains(
                "-sandbox on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"
            ),
            "the switch is a setuid: {line}"
        );
    }

    #[test]
    fn names_with_commas_cannot_inject_options() {
        let line = joined(
            &spec(Boot::Disk { disk: "/d".into() }, Machine::Q35),
            Accel::Tcg,
        );
        assert!(line.contains("guest=web,,1,debug-threads=on"), "{line}");
    }
}
