//! Boot from a disk image through the firmware (q35 + SeaBIOS), raw and qcow2.
//!
//! The disk holds a real 512-byte x86 boot sector that the BIOS loads and runs: it writes a
//! marker to the first serial port and halts. So the test sees the firmware boot the VM's disk,
//! not a kernel QEMU loaded by itself.

mod common;

use std::process::Command;

use common::*;
use vessel_api::{Machine, VmState};
use vessel_cli::VmAction;

async fn boots_from(daemon: &Daemon, name: &str, disk: &std::path::Path, format: &str) {
    let client = daemon.client();
    let request = vessel_api::CreateVmRequest {
        name: name.into(),
        cpus: 1,
        memory_mib: 64,
        disk: Some(disk.to_string_lossy().into_owned()),
        start: true,
        ..Default::default()
    };
    let vm = create(&client, &request).await;
    assert_eq!(vm.spec.machine, Machine::Q35, "disk boot defaults to q35");
    assert_eq!(vm.state, VmState::Running);
    await_console(&client, name, "VESSEL-DISK-BOOT", 1).await;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", vm.pid.unwrap())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(&format!("driver={format},node-name=disk0")),
        "the format is named, never probed: {cmdline}"
    );
    let killed = act(&client, name, VmAction::Kill).await;
    assert_eq!(killed.state, VmState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_boots_raw_and_qcow2_disks() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("boot.raw");
    std::fs::write(&raw, boot_sector()).unwrap();
    boots_from(&daemon, "diskraw", &raw, "raw").await;

    let qcow2 = dir.path().join("boot.qcow2");
    let converted = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .expect("qemu-img must be installed (apt-get install qemu-utils)");
    assert!(converted.success());
    boots_from(&daemon, "diskqcow2", &qcow2, "qcow2").await;
}
