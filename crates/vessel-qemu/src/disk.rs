//! Data disks: pool volumes on the VM's virtio-scsi controller. The same JSON describes a disk on
//! the command line (`-blockdev`, `-device`) and in hot-plug (`blockdev-add`, `device_add`), so
//! a cold-plugged and a hot-plugged disk are the same thing to QEMU.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};
use vessel_api::Machine;
use vessel_storage::{Format, VolumeKey};

/// The id of the SCSI controller every VM has, so that disks can be hot-plugged on any machine.
pub const SCSI_CONTROLLER: &str = "scsi0";
/// SCSI serial numbers are at most 36 characters in QEMU; longer ones are refused.
const MAX_SERIAL_LEN: usize = 36;

/// A disk resolved to its file, ready to hand to QEMU.
#[derive(Debug, Clone)]
pub struct DiskFile {
    /// QEMU's block node name; the device id is derived from it (see [`DiskFile::device_id`]).
    pub node_name: String,
    pub path: PathBuf,
    /// Always given to QEMU, never probed.
    pub format: Format,
    pub read_only: bool,
    /// Several VMs may write the disk at once (`share-rw`).
    pub shareable: bool,
    /// What the guest sees as the disk's serial number (the volume's name).
    pub serial: String,
    /// The LUKS key of an encrypted volume. It reaches QEMU as a `secret` object read from an
    /// inherited pipe (cold plug) or over QMP (hot-plug), never on the command line.
    pub key: Option<Arc<VolumeKey>>,
}

impl DiskFile {
    pub fn device_id(&self) -> String {
        device_id(&self.node_name)
    }

    /// The id of the `secret` object holding the disk's key.
    pub fn secret_id(&self) -> String {
        format!("{}-key", self.node_name)
    }

    /// The `blockdev-add` arguments; also the `-blockdev` value in JSON syntax.
    pub fn blockdev(&self) -> Value {
        let mut node = json!({
            "driver": self.format.as_str(),
            "node-name": self.node_name,
            "read-only": self.read_only,
            "file": {
                "driver": "file",
                "filename": self.path.to_string_lossy(),
            },
        });
        if self.key.is_some() {
            node["encrypt"] = json!({ "format": "luks", "key-secret": self.secret_id() });
        }
        node
    }

    /// The `device_add` arguments; also the `-device` value in JSON syntax.
    pub fn device(&self) -> Value {
        let serial: String = self.serial.chars().take(MAX_SERIAL_LEN).collect();
        let mut device = json!({
            "driver": "scsi-hd",
            "bus": format!("{SCSI_CONTROLLER}.0"),
            "drive": self.node_name,
            "id": self.device_id(),
            "serial": serial,
        });
        if self.shareable {
            device["share-rw"] = Value::Bool(true);
        }
        device
    }
}

/// The device id of the disk whose block node is `node_name`.
pub fn device_id(node_name: &str) -> String {
    format!("{node_name}-dev")
}

/// The controller's `-device` value.
pub fn controller(machine: Machine) -> String {
    let kind = match machine {
        Machine::Microvm => "virtio-scsi-device",
        Machine::Q35 => "virtio-scsi-pci",
    };
    format!("{kind},id={SCSI_CONTROLLER}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> DiskFile {
        DiskFile {
            node_name: "vd0123".into(),
            path: "/pool/a,b.qcow2".into(),
            format: Format::Qcow2,
            read_only: true,
            shareable: false,
            serial: "x".repeat(50),
            key: None,
        }
    }

    #[test]
    fn json_syntax_needs_no_comma_escaping() {
        let b = disk().blockdev();
        assert_eq!(b["file"]["filename"], "/pool/a,b.qcow2");
        assert_eq!(b["driver"], "qcow2");
        assert_eq!(b["read-only"], true);
    }

    #[test]
    fn device_names_its_node_bus_and_a_short_serial() {
        let d = disk().device();
        assert_eq!(d["drive"], "vd0123");
        assert_eq!(d["id"], "vd0123-dev");
        assert_eq!(d["bus"], "scsi0.0");
        assert_eq!(d["serial"].as_str().unwrap().len(), 36);
        assert!(d.get("share-rw").is_none());
        let shared = DiskFile {
            shareable: true,
            ..disk()
        };
        assert_eq!(shared.device()["share-rw"], true);
    }
}
