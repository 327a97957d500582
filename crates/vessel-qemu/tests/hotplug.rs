//! Disk hot-plug against the real QEMU (TCG) and the Vessel test guest: an attach or a detach
//! cut short (by a daemon kill between its QMP steps) is finished or undone by running it again,
//! and what QEMU holds of a disk is found by name ([`Instance::plugged_disks`]).

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

use vessel_qemu::{Backend, InstanceEvent, PluggedDisk, QemuBackend};
use vessel_storage::{Format, QemuImg};

/// Whether the process has `path` open.
fn has_open(pid: u32, path: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).ok().as_deref() == Some(path))
}

impl Vm {
    async fn plugged(&self) -> Vec<PluggedDisk> {
        self.instance.plugged_disks().await.unwrap()
    }

    /// Asks for the device's unplug and waits until QEMU has removed it.
    async fn unplug_device(&mut self, node: &str) {
        self.instance.unplug_disk(node).await.unwrap();
        let device = vessel_qemu::disk::device_id(node);
        let wait = async {
            while let Some(event) = self.events.recv().await {
                if matches!(&event, InstanceEvent::DeviceDeleted { device: d } if *d == device) {
                    return;
                }
            }
            panic!("QEMU exited during the unplug");
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("DEVICE_DELETED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_or_detach_cut_short_is_finished_or_undone_by_running_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.qcow2");
    QemuImg::new()
        .create(&data, Format::Qcow2, Some(16 * MIB), None)
        .await
        .unwrap();
    let data = std::fs::canonicalize(&data).unwrap();
    let req = request("hotplug-test", &dir.path().join("run"), vec![]);
    let mut vm = Vm::new(QemuBackend::default().launch(&req).await.unwrap());
    vm.wait_for(0, "VESSEL-GUEST-READY").await;
    let pid = vm.instance.pid().pid;
    let node = "vd00000000000000a1";
    let file = disk(node, &data, Format::Qcow2);
    assert!(vm.plugged().await.is_empty());

    vm.instance.attach_disk(&file).await.unwrap();
    let plugged = vm.plugged().await;
    assert_eq!(plugged.len(), 1, "{plugged:?}");
    assert!(
        plugged[0].complete() && plugged[0].fdsets && !plugged[0].secret,
        "{plugged:?}"
    );
    assert!(has_open(pid, &data));

    // An attach cut short after the hot-plug, run again: the disk stays as it is.
    vm.instance.attach_disk(&file).await.unwrap();
    let again = vm.plugged().await;
    assert_eq!(again, plugged);

    // A detach cut short between device_del and blockdev-del: the node (and the file) stays.
    vm.unplug_device(node).await;
    let half = vm.plugged().await;
    assert_eq!(half.len(), 1, "{half:?}");
    assert!(
        !half[0].device && half[0].node && !half[0].complete(),
        "{half:?}"
    );
    assert!(has_open(pid, &data));

    // An attach run over those pieces clears them and plugs the disk from scratch.
    vm.instance.attach_disk(&file).await.unwrap();
    let replugged = vm.plugged().await;
    assert_eq!(replugged.len(), 1, "{replugged:?}");
    assert!(replugged[0].complete(), "{replugged:?}");

    // A detach run to the end, then its last step again (the re-run of a detach cut short
    // after blockdev-del): nothing of the disk is left, and the second time is no error.
    vm.unplug_device(node).await;
    vm.instance.remove_block_node(node).await.unwrap();
    vm.instance.remove_block_node(node).await.unwrap();
    assert!(vm.plugged().await.is_empty(), "{:?}", vm.plugged().await);
    assert!(!has_open(pid, &data), "QEMU still has the volume open");

    // And the disk can be plugged again.
    vm.instance.attach_disk(&file).await.unwrap();
    assert!(vm.plugged().await[0].complete());
    vm.kill().await;
}
