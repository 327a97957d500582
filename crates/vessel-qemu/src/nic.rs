//! NICs on networks: a virtio-net device per NIC, backed by a tap the daemon made (its fd is
//! inherited at start, or passed over QMP for hot-plug) or by QEMU's user-mode NAT. The same
//! JSON describes a device on the command line and in `device_add`.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use serde_json::{json, Value};
use vessel_api::Machine;

/// How many NICs a VM can have; q35 VMs get one PCIe root port per NIC slot at start, which is
/// what makes hot-plug possible (devices on the root bus cannot be hot-plugged).
pub const NIC_SLOTS: usize = 8;

/// A NIC ready to hand to QEMU.
#[derive(Debug, Clone)]
pub struct NicPlan {
    /// `nic0` ... `nic7`.
    pub id: String,
    pub mac: String,
    pub backend: NicBackend,
}

#[derive(Debug, Clone)]
pub enum NicBackend {
    /// QEMU's user-mode NAT.
    User,
    /// An open tap (TUNSETIFF done by the daemon): QEMU never needs the privilege to make one.
    Tap(Arc<OwnedFd>),
}

pub fn netdev_id(nic_id: &str) -> String {
    format!("hn-{nic_id}")
}

pub fn device_id(nic_id: &str) -> String {
    format!("dev-{nic_id}")
}

/// The root port of a NIC's slot (q35).
pub fn root_port_id(nic_id: &str) -> Option<String> {
    let slot: usize = nic_id.strip_prefix("nic")?.parse().ok()?;
    (slot < NIC_SLOTS).then(|| format!("rp{slot}"))
}

/// The root ports of a q35 VM (none on microvm, which has no PCI).
pub fn root_ports(machine: Machine) -> Vec<String> {
    match machine {
        Machine::Microvm => Vec::new(),
        Machine::Q35 => (0..NIC_SLOTS)
            .map(|slot| format!("pcie-root-port,id=rp{slot},chassis={},bus=pcie.0", slot + 1))
            .collect(),
    }
}

/// `-netdev` for a NIC whose tap QEMU inherits as `fd` (or user-mode NAT).
pub fn netdev_arg(nic: &NicPlan, fd: Option<i32>) -> String {
    match (&nic.backend, fd) {
        // QEMU reads the tap's flags (IFF_VNET_HDR) from the fd itself.
        (NicBackend::Tap(_), Some(fd)) => {
            format!("tap,id={},fd={fd}", netdev_id(&nic.id))
        }
        _ => format!("user,id={}", netdev_id(&nic.id)),
    }
}

/// The device, on its root port (q35) or on the virtio-mmio bus (microvm).
pub fn device(machine: Machine, nic: &NicPlan) -> Value {
    let mut device = json!({
        "driver": match machine {
            Machine::Microvm => "virtio-net-device",
            Machine::Q35 => "virtio-net-pci",
        },
        "id": device_id(&nic.id),
        "netdev": netdev_id(&nic.id),
        "mac": nic.mac,
    });
    if machine == Machine::Q35 {
        if let Some(port) = root_port_id(&nic.id) {
            device["bus"] = port.into();
        }
    }
    device
}

/// The name a hot-plugged tap's fd gets inside QEMU (`getfd`).
pub fn fd_name(nic_id: &str) -> String {
    format!("fd-{nic_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> NicPlan {
        NicPlan {
            id: id.into(),
            mac: "52:54:00:00:00:01".into(),
            backend: NicBackend::User,
        }
    }

    #[test]
    fn q35_nics_sit_on_their_root_port() {
        let d = device(Machine::Q35, &user("nic3"));
        assert_eq!(d["bus"], "rp3");
        assert_eq!(d["driver"], "virtio-net-pci");
        assert_eq!(d["netdev"], "hn-nic3");
        assert_eq!(d["mac"], "52:54:00:00:00:01");
        assert_eq!(root_ports(Machine::Q35).len(), NIC_SLOTS);
        assert!(root_ports(Machine::Microvm).is_empty());
    }

    #[test]
    fn microvm_nics_are_mmio_devices() {
        let d = device(Machine::Microvm, &user("nic0"));
        assert_eq!(d["driver"], "virtio-net-device");
        assert!(d.get("bus").is_none());
    }

    #[test]
    fn netdev_for_taps_names_the_inherited_fd() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let tap = NicPlan {
            backend: NicBackend::Tap(Arc::new(OwnedFd::from(a))),
            ..user("nic1")
        };
        assert_eq!(netdev_arg(&tap, Some(9)), "tap,id=hn-nic1,fd=9");
        assert_eq!(netdev_arg(&user("nic0"), None), "user,id=hn-nic0");
        assert_eq!(root_port_id("nic9"), None);
    }
}
