//! Data disks: pool volumes on the VM's virtio-scsi controller. The same JSON describes a disk on
//! the command line (`-blockdev`, `-device`) and in hot-plug (`blockdev-add`, `device_add`), so
//! a cold-plugged and a hot-plugged disk are the same thing to QEMU.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use vessel_api::Machine;
use vessel_storage::{Format, VolumeKey};

/// The id of the SCSI controller every VM has, so that disks can be hot-plugged on any machine.
pub const SCSI_CONTROLLER: &str = "scsi0";
/// SCSI serial numbers are at most 36 characters in QEMU; longer ones are refused.
const MAX_SERIAL_LEN: usize = 36;
/// The longest backing chain a disk may have; deeper ones are refused (a chain is a linked clone
/// of an image, maybe of a clone: a few levels, never dozens).
pub const MAX_BACKING_DEPTH: usize = 16;

/// An image below a disk (a linked clone's backing file), opened read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingFile {
    pub path: PathBuf,
    /// Always given to QEMU, never probed.
    pub format: Format,
}

/// One file QEMU opens for a disk, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskFileUse<'a> {
    pub path: &'a Path,
    /// Opened for writing (the disk's own file of a writable disk), else read-only.
    pub writable: bool,
}

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
    /// The images below the disk's own file, nearest first (empty for a self-contained volume).
    /// They are named to QEMU explicitly, with their formats, instead of QEMU following the
    /// names in the qcow2 headers: a hot-plugged disk's files are fds (`/dev/fdset/N`), from
    /// which no relative backing name could be resolved, and QEMU, running as its own user by
    /// then, could not open the pool's files by name anyway.
    pub backing: Vec<BackingFile>,
}

impl DiskFile {
    pub fn device_id(&self) -> String {
        device_id(&self.node_name)
    }

    /// The id of the `secret` object holding the disk's key.
    pub fn secret_id(&self) -> String {
        format!("{}-key", self.node_name)
    }

    /// The files QEMU opens for this disk: its own, then its backing chain, nearest first.
    pub fn files(&self) -> Vec<DiskFileUse<'_>> {
        std::iter::once(DiskFileUse {
            path: &self.path,
            writable: !self.read_only,
        })
        .chain(self.backing.iter().map(|b| DiskFileUse {
            path: &b.path,
            writable: false,
        }))
        .collect()
    }

    /// The `-blockdev` value in JSON syntax: QEMU opens the files by path (as root, at start).
    pub fn blockdev(&self) -> Value {
        let paths: Vec<String> = self
            .files()
            .iter()
            .map(|f| f.path.to_string_lossy().into_owned())
            .collect();
        self.blockdev_with(&paths)
    }

    /// The `blockdev-add` arguments, with QEMU's file names for [`DiskFile::files`], in the same
    /// order: paths, or `/dev/fdset/N` for files the daemon opened and passed as fds.
    pub fn blockdev_with(&self, filenames: &[String]) -> Value {
        assert_eq!(filenames.len(), 1 + self.backing.len(), "one name per file");
        let mut node = json!({
            "driver": self.format.as_str(),
            "node-name": self.node_name,
            "read-only": self.read_only,
            "file": { "driver": "file", "filename": filenames[0] },
        });
        if let Some(backing) = backing_node(&self.backing, &filenames[1..]) {
            node["backing"] = backing;
        }
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

/// The backing chain as nested nodes, read-only, each with its format; the last image's own
/// header has no backing file (the chain was read to its end), so QEMU opens nothing more.
fn backing_node(chain: &[BackingFile], filenames: &[String]) -> Option<Value> {
    let (image, below) = chain.split_first()?;
    let mut node = json!({
        "driver": image.format.as_str(),
        "read-only": true,
        "file": { "driver": "file", "filename": filenames[0] },
    });
    if let Some(next) = backing_node(below, &filenames[1..]) {
        node["backing"] = next;
    }
    Some(node)
}

/// What a QEMU holds for one data disk (found by its names, so also by a daemon that never
/// saw the disk plugged): its device, its block node, the fd sets of its files, its key.
/// A disk that is fully plugged has a device and a node; any other mix is what a hot-plug or
/// an unplug cut short leaves behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluggedDisk {
    pub node_name: String,
    pub device: bool,
    pub node: bool,
    pub fdsets: bool,
    pub secret: bool,
}

impl PluggedDisk {
    /// The device and its node are there: the disk is in use by the guest.
    pub fn complete(&self) -> bool {
        self.device && self.node
    }
}

/// Whether `name` is a data disk's node name (`vd` and 16 hex digits, see
/// `vessel_core::disk_node_name`).
pub fn is_disk_node_name(name: &str) -> bool {
    name.len() == 18 && name.starts_with("vd") && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
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
            backing: vec![],
        }
    }

    #[test]
    fn disk_node_names_are_recognized() {
        assert!(is_disk_node_name("vd0123456789abcdef"));
        assert!(!is_disk_node_name("vd0123456789abcde"));
        assert!(!is_disk_node_name("vd0123456789abcdeg"));
        assert!(!is_disk_node_name("#block123"));
        assert!(!is_disk_node_name("vd0123456789abcdef-dev"));
    }

    #[test]
    fn json_syntax_needs_no_comma_escaping() {
        let b = disk().blockdev();
        assert_eq!(b["file"]["filename"], "/pool/a,b.qcow2");
        assert_eq!(b["driver"], "qcow2");
        assert_eq!(b["read-only"], true);
    }

    #[test]
    fn a_backing_chain_is_named_explicitly_read_only_with_formats() {
        let d = DiskFile {
            read_only: false,
            backing: vec![
                BackingFile {
                    path: "/pool/mid.qcow2".into(),
                    format: Format::Qcow2,
                },
                BackingFile {
                    path: "/pool/base.raw".into(),
                    format: Format::Raw,
                },
            ],
            ..disk()
        };
        let files = d.files();
        assert_eq!(files.len(), 3);
        assert!(files[0].writable && !files[1].writable && !files[2].writable);
        let b = d.blockdev();
        assert_eq!(b["file"]["filename"], "/pool/a,b.qcow2");
        assert_eq!(b["backing"]["driver"], "qcow2");
        assert_eq!(b["backing"]["read-only"], true);
        assert_eq!(b["backing"]["file"]["filename"], "/pool/mid.qcow2");
        assert_eq!(b["backing"]["backing"]["driver"], "raw");
        assert_eq!(
            b["backing"]["backing"]["file"]["filename"],
            "/pool/base.raw"
        );
        assert!(b["backing"]["backing"].get("backing").is_none());
        let names = ["/dev/fdset/1", "/dev/fdset/2", "/dev/fdset/3"].map(String::from);
        let hot = d.blockdev_with(&names);
        assert_eq!(hot["file"]["filename"], "/dev/fdset/1");
        assert_eq!(
            hot["backing"]["backing"]["file"]["filename"],
            "/dev/fdset/3"
        );
        assert!(disk().blockdev().get("backing").is_none());
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
