//! `vessel host check`: what this host offers for virtualization, one verdict per line, in the
//! spirit of libvirt's virt-host-validate.

use std::path::Path;
use std::process::Command;

use vessel_api::{CheckVerdict, HostCheck, HostCheckItem};

use crate::accel::{detect_accelerator, kvm_unusable_reason, Accel};

fn item(name: &str, verdict: CheckVerdict, detail: impl Into<String>) -> HostCheckItem {
    HostCheckItem {
        name: name.into(),
        verdict,
        detail: detail.into(),
    }
}

/// Runs every check. `qemu_binary` is the emulator the daemon would use.
pub fn check_host(qemu_binary: &str) -> HostCheck {
    let choice = detect_accelerator();
    let mut items = vec![
        qemu_version_item(qemu_binary),
        machine_types_item(qemu_binary),
        qemu_img_item(),
    ];
    items.push(kvm_item());
    items.push(path_item(
        "tun device",
        "/dev/net/tun",
        "needed for tap NICs on bridges (modprobe tun)",
    ));
    items.push(module_item(
        "bridge",
        "needed for bridged and managed networks (modprobe bridge)",
    ));
    items.push(path_item(
        "vhost-net",
        "/dev/vhost-net",
        "faster virtio networking (modprobe vhost_net)",
    ));
    items.push(tool_item(
        "nftables",
        "nft",
        "needed for the firewall of bridge, managed and VXLAN networks (apt-get install nftables)",
    ));
    items.push(tool_item(
        "tc",
        "tc",
        "needed for NIC bandwidth limits (apt-get install iproute2)",
    ));
    items.push(cgroups_item());
    HostCheck {
        items,
        accelerator: choice.accel.as_str().into(),
        accelerator_reason: choice.reason,
    }
}

/// `qemu-system-x86_64 --version` as "7.2.22", if QEMU is installed.
pub fn qemu_version(qemu_binary: &str) -> Option<String> {
    let out = Command::new(qemu_binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next()?;
    first
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .map(str::to_string)
}

fn qemu_version_item(qemu_binary: &str) -> HostCheckItem {
    match qemu_version(qemu_binary) {
        Some(version) => item("QEMU", CheckVerdict::Pass, format!("{qemu_binary} {version}")),
        None => item(
            "QEMU",
            CheckVerdict::Fail,
            format!("{qemu_binary} not found or not runnable; install it (apt-get install qemu-system-x86 qemu-utils)"),
        ),
    }
}

fn machine_types_item(qemu_binary: &str) -> HostCheckItem {
    let Ok(out) = Command::new(qemu_binary)
        .args(["-machine", "help"])
        .output()
    else {
        return item("machine types", CheckVerdict::Fail, "QEMU is not runnable");
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let has = |m: &str| text.lines().any(|l| l.split_whitespace().next() == Some(m));
    let missing: Vec<&str> = ["microvm", "q35"].into_iter().filter(|m| !has(m)).collect();
    if missing.is_empty() {
        item(
            "machine types",
            CheckVerdict::Pass,
            "microvm and q35 available",
        )
    } else {
        item(
            "machine types",
            CheckVerdict::Fail,
            format!("missing: {}", missing.join(", ")),
        )
    }
}

/// Whether a tool the networks need runs (`TOOL -V`, which nft and tc both answer).
fn tool_item(name: &str, tool: &str, why: &str) -> HostCheckItem {
    match Command::new(tool).arg("-V").output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            item(
                name,
                CheckVerdict::Pass,
                text.lines().next().unwrap_or(tool).trim().to_string(),
            )
        }
        _ => item(name, CheckVerdict::Warn, format!("{tool} not found; {why}")),
    }
}

fn qemu_img_item() -> HostCheckItem {
    match Command::new("qemu-img").arg("--version").output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            item(
                "qemu-img",
                CheckVerdict::Pass,
                text.lines().next().unwrap_or("").to_string(),
            )
        }
        _ => item(
            "qemu-img",
            CheckVerdict::Warn,
            "not found; disk image work needs it (apt-get install qemu-utils)",
        ),
    }
}

fn kvm_item() -> HostCheckItem {
    match kvm_unusable_reason(Path::new("/dev/kvm"), Path::new("/sys/module")) {
        None => item(
            "KVM",
            CheckVerdict::Pass,
            format!("/dev/kvm usable; accelerator {}", Accel::Kvm.as_str()),
        ),
        Some(why) => item(
            "KVM",
            CheckVerdict::Warn,
            format!("{why}; VMs run under TCG (much slower)"),
        ),
    }
}

fn path_item(name: &str, path: &str, why: &str) -> HostCheckItem {
    if Path::new(path).exists() {
        item(name, CheckVerdict::Pass, format!("{path} present"))
    } else {
        item(name, CheckVerdict::Warn, format!("{path} missing: {why}"))
    }
}

fn module_item(module: &str, why: &str) -> HostCheckItem {
    if Path::new("/sys/module").join(module).exists() {
        return item(module, CheckVerdict::Pass, "kernel module loaded");
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let modules_dir = Path::new("/lib/modules").join(release.trim());
    if modules_dir.exists() {
        item(
            module,
            CheckVerdict::Warn,
            format!("module not loaded: {why}"),
        )
    } else {
        item(
            module,
            CheckVerdict::Warn,
            format!("module not loaded and no module tree for this kernel: {why}"),
        )
    }
}

fn cgroups_item() -> HostCheckItem {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        return item(
            "cgroups",
            CheckVerdict::Pass,
            format!("cgroup v2: {}", controllers.trim()),
        );
    }
    let v1: Vec<&str> = ["cpu", "memory", "blkio", "pids"]
        .into_iter()
        .filter(|c| root.join(c).exists())
        .collect();
    if v1.is_empty() {
        item(
            "cgroups",
            CheckVerdict::Warn,
            "no cgroup hierarchy found: per-VM resource limits unavailable",
        )
    } else {
        item(
            "cgroups",
            CheckVerdict::Warn,
            format!(
                "cgroup v1 only ({}); v2 is preferred for per-VM limits",
                v1.join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_qemu_fails_with_an_install_hint() {
        let check = qemu_version_item("/nonexistent/qemu-system-x86_64");
        assert_eq!(check.verdict, CheckVerdict::Fail);
        assert!(check.detail.contains("apt-get install"), "{}", check.detail);
    }

    #[test]
    fn installed_qemu_reports_its_version_and_machines() {
        let version = qemu_version("qemu-system-x86_64")
            .expect("qemu-system-x86_64 must be installed for tests");
        assert!(
            version.chars().next().is_some_and(|c| c.is_ascii_digit()),
            "{version}"
        );
        assert_eq!(
            machine_types_item("qemu-system-x86_64").verdict,
            CheckVerdict::Pass
        );
    }
}
