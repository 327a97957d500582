//! VM snapshots of running guests, against the real QEMU (TCG) and the Vessel test guest
//! (scripts/build-test-guest.sh): disk-only snapshots of a running VM, snapshots with memory
//! state restored into a fresh QEMU, deletion while running, and the errors.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vessel_qemu::{Backend, QemuBackend, RunState};
use vessel_storage::{Format, QemuImg};

/// Whether `len` bytes at `offset` of a qcow2 image all hold `pattern`.
fn reads_pattern(path: &Path, pattern: u8, offset: u64, len: u64) -> bool {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("read -P {pattern:#x} {offset} {len}"))
        .arg(path)
        .output()
        .expect("run qemu-io");
    out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("verification failed")
}

fn write_pattern(path: &Path, pattern: u8, offset: u64, len: u64) {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P {pattern:#x} {offset} {len}"))
        .arg(path)
        .output()
        .expect("run qemu-io");
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_vm_snapshots_its_disks_atomically_and_briefly() {
    let img = QemuImg::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.qcow2");
    let raw = dir.path().join("raw.raw");
    img.create(&data, Format::Qcow2, Some(64 * MIB), None)
        .await
        .unwrap();
    img.create(&raw, Format::Raw, Some(MIB), None)
        .await
        .unwrap();
    write_pattern(&data, 0x11, 0, 65536);
    let req = request(
        "snap-test",
        &dir.path().join("run"),
        vec![
            disk("vd0", &data, Format::Qcow2),
            disk("vr0", &raw, Format::Raw),
        ],
    );
    let mut vm = Vm::new(QemuBackend::default().launch(&req).await.unwrap());
    vm.wait_for(0, "VESSEL-GUEST-READY").await;

    let nodes = vec!["vd0".to_string()];
    let pause = vm.instance.snapshot_disks(&nodes, "s1").await.unwrap();
    eprintln!("disk-only snapshot: the guest was paused for {pause:?}");
    assert!(pause < Duration::from_secs(2), "{pause:?}");
    assert_eq!(vm.instance.status().await.unwrap(), RunState::Running);
    let list = vm.instance.snapshot_list("vd0").await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "s1");
    assert!(!list[0].has_vm_state());
    assert!(list[0].vm_clock_nanos > 0, "{:?}", list[0]);
    // The offline listing reads it too, while QEMU holds the image (force-share).
    let offline = img.snapshot_list(&data, Format::Qcow2, true).await.unwrap();
    assert_eq!(offline[0].name, "s1");

    // The guest overwrites the data after the snapshot. Linux names SCSI disks in the order
    // their probes finish, not always in attach order: find vd0 by its size (64 MiB).
    vm.run(
        "for d in /sys/block/sd*; do [ $(cat $d/size) = 131072 ] && dev=${d##*/}; done; \
         dd if=/dev/zero of=/dev/$dev bs=65536 count=1 conv=fsync 2>/dev/null; echo WROTE-$((1+1))",
        "WROTE-2",
    )
    .await;

    // Errors, while running.
    let err = vm.instance.snapshot_disks(&nodes, "s1").await.unwrap_err();
    assert!(
        err.to_string().contains("already has a snapshot \"s1\""),
        "{err}"
    );
    let err = vm.instance.snapshot_disks(&nodes, "42").await.unwrap_err();
    assert!(err.to_string().contains("all digits"), "{err}");
    let both = vec!["vd0".to_string(), "vr0".to_string()];
    let err = vm.instance.snapshot_disks(&both, "s2").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("disk \"vr0\" is raw; snapshots need qcow2"),
        "{err}"
    );
    let err = vm
        .instance
        .snapshot_disks(&["vd9".to_string()], "s2")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no disk node \"vd9\""), "{err}");
    let err = vm
        .instance
        .snapshot_load("nope", "vd0", &nodes)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("has no snapshot \"nope\"; its snapshots are: s1"),
        "{err}"
    );
    let err = vm
        .instance
        .snapshot_load("s1", "vd0", &nodes)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("holds no memory state"), "{err}");
    let err = vm
        .instance
        .snapshot_delete(&nodes, "nope")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("its snapshots are: s1"), "{err}");

    // Delete while running.
    vm.instance.snapshot_disks(&nodes, "s2").await.unwrap();
    vm.instance.snapshot_delete(&nodes, "s2").await.unwrap();
    let names: Vec<String> = vm
        .instance
        .snapshot_list("vd0")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["s1"]);

    vm.kill().await;
    // Offline: the snapshot is there, the current data is the guest's zeros, and reverting
    // brings back what the disk held at the snapshot.
    let list = img
        .snapshot_list(&data, Format::Qcow2, false)
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert!(reads_pattern(&data, 0x00, 0, 65536));
    img.snapshot_apply(&data, Format::Qcow2, "s1", None)
        .await
        .unwrap();
    assert!(reads_pattern(&data, 0x11, 0, 65536));
    let report = img.check(&data, Format::Qcow2).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_memory_brings_the_running_guest_back() {
    let img = QemuImg::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.qcow2");
    img.create(&data, Format::Qcow2, Some(64 * MIB), None)
        .await
        .unwrap();
    let req = request(
        "snap-test",
        &dir.path().join("run"),
        vec![disk("vd0", &data, Format::Qcow2)],
    );
    let nodes = vec!["vd0".to_string()];
    let mut vm = Vm::new(QemuBackend::default().launch(&req).await.unwrap());
    let boot_id = vm.boot_id().await;
    vm.run("echo KEEP >/run/kept; echo READY-$((1+1))", "READY-2")
        .await;

    vm.instance
        .snapshot_save("mem1", "vd0", &nodes)
        .await
        .unwrap();
    assert_eq!(vm.instance.status().await.unwrap(), RunState::Running);
    // What happens after the snapshot is not part of it.
    vm.run("echo GONE >/run/later; echo AFTER-$((2+2))", "AFTER-4")
        .await;
    let list = vm.instance.snapshot_list("vd0").await.unwrap();
    assert_eq!(list[0].name, "mem1");
    assert!(list[0].has_vm_state(), "{:?}", list[0]);
    // A second save with the same tag is refused before QEMU starts a job.
    let err = vm
        .instance
        .snapshot_save("mem1", "vd0", &nodes)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already has"), "{err}");
    vm.kill().await;

    let offline = img
        .snapshot_list(&data, Format::Qcow2, false)
        .await
        .unwrap();
    assert!(offline[0].vm_state_bytes > 10 * MIB, "{:?}", offline[0]);

    // Revert: a fresh QEMU that has not run the guest, the state loaded into it, then resumed.
    let mut vm = Vm::new(QemuBackend::default().launch_paused(&req).await.unwrap());
    assert_ne!(vm.instance.status().await.unwrap(), RunState::Running);
    vm.instance
        .snapshot_load("mem1", "vd0", &nodes)
        .await
        .unwrap();
    assert_ne!(vm.instance.status().await.unwrap(), RunState::Running);
    vm.instance.resume().await.unwrap();
    let out = vm
        .run(
            "cat /run/vessel-boot-id /run/kept; cat /run/later 2>/dev/null || echo NO-LATER; \
             echo BACK-$((3+3))",
            "BACK-6",
        )
        .await;
    assert!(out.contains(&boot_id), "same boot as before: {out:?}");
    assert!(out.contains("KEEP") && out.contains("NO-LATER"), "{out:?}");
    assert!(
        !vm.output().contains("VESSEL-GUEST-READY"),
        "the guest must not boot again: {}",
        vm.output()
    );

    // Loading into a running VM works too: QEMU stops it, loads, and lets it run on.
    vm.run("echo GONE >/run/later; echo AGAIN-$((4+4))", "AGAIN-8")
        .await;
    vm.instance
        .snapshot_load("mem1", "vd0", &nodes)
        .await
        .unwrap();
    assert_eq!(vm.instance.status().await.unwrap(), RunState::Running);
    let out = vm
        .run(
            "cat /run/later 2>/dev/null || echo NO-LATER; echo LIVE-$((5+5))",
            "LIVE-10",
        )
        .await;
    assert!(out.contains("NO-LATER"), "{out:?}");

    vm.instance.snapshot_delete(&nodes, "mem1").await.unwrap();
    assert!(vm.instance.snapshot_list("vd0").await.unwrap().is_empty());
    vm.kill().await;
    let report = img.check(&data, Format::Qcow2).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}
