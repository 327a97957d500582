//! Internal qcow2 snapshots of stopped VMs' disks, against the real qemu-img and qemu-io.

mod common;

use std::path::Path;
use std::process::Command;

use common::{guest_write, qemu_img, qemu_io_encrypted, require};
use vessel_storage::{Format, SnapshotDisk, SnapshotError, VolumeKey};

const MIB: u64 = 1 << 20;

/// Whether `len` bytes at `offset` all hold `pattern`, as the guest would read them.
fn reads_pattern(path: &Path, pattern: u8, offset: u64, len: u64) -> bool {
    require("qemu-io");
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("read -P {pattern:#x} {offset} {len}"))
        .arg(path)
        .output()
        .expect("run qemu-io");
    let stdout = String::from_utf8_lossy(&out.stdout);
    out.status.success() && !stdout.contains("verification failed")
}

#[tokio::test]
async fn create_write_apply_restores_the_old_data_and_delete_removes_it() {
    let img = qemu_img();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.qcow2");
    img.create(&disk, Format::Qcow2, Some(64 * MIB), None)
        .await
        .unwrap();
    guest_write(&disk, Format::Qcow2, 0x11, 0, MIB);

    img.snapshot_create(&disk, Format::Qcow2, "before", None)
        .await
        .unwrap();
    guest_write(&disk, Format::Qcow2, 0x22, 0, MIB);
    assert!(reads_pattern(&disk, 0x22, 0, MIB));

    let list = img
        .snapshot_list(&disk, Format::Qcow2, false)
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "before");
    assert!(!list[0].has_vm_state());
    assert!(list[0].date_secs > 1_600_000_000, "{:?}", list[0]);

    img.snapshot_apply(&disk, Format::Qcow2, "before", None)
        .await
        .unwrap();
    assert!(reads_pattern(&disk, 0x11, 0, MIB), "the old data is back");

    img.snapshot_delete(&disk, Format::Qcow2, "before", None)
        .await
        .unwrap();
    assert!(img
        .snapshot_list(&disk, Format::Qcow2, false)
        .await
        .unwrap()
        .is_empty());
    assert!(reads_pattern(&disk, 0x11, 0, MIB), "delete keeps the data");
    let report = img.check(&disk, Format::Qcow2).await.unwrap();
    assert!(report.is_clean() && report.leaks == 0, "{report:?}");
}

#[tokio::test]
async fn errors_say_what_is_wrong() {
    let img = qemu_img();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.qcow2");
    img.create(&disk, Format::Qcow2, Some(16 * MIB), None)
        .await
        .unwrap();
    for tag in ["a1", "b2"] {
        img.snapshot_create(&disk, Format::Qcow2, tag, None)
            .await
            .unwrap();
    }

    let err = img
        .snapshot_apply(&disk, Format::Qcow2, "nope", None)
        .await
        .unwrap_err();
    assert!(matches!(err, SnapshotError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .ends_with("has no snapshot \"nope\"; its snapshots are: a1, b2"),
        "{err}"
    );
    let err = img
        .snapshot_delete(&disk, Format::Qcow2, "nope", None)
        .await
        .unwrap_err();
    assert!(matches!(err, SnapshotError::NotFound { .. }), "{err:?}");

    let err = img
        .snapshot_create(&disk, Format::Qcow2, "a1", None)
        .await
        .unwrap_err();
    assert!(matches!(err, SnapshotError::Exists { .. }), "{err:?}");
    assert_eq!(
        img.snapshot_list(&disk, Format::Qcow2, false)
            .await
            .unwrap()
            .len(),
        2,
        "no duplicate was made"
    );

    for tag in ["42", "-x", "a b", ""] {
        let err = img
            .snapshot_create(&disk, Format::Qcow2, tag, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, SnapshotError::InvalidTag(_)),
            "{tag:?}: {err:?}"
        );
    }
    let err = img
        .snapshot_create(&disk, Format::Qcow2, "7", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("all digits"), "{err}");

    let raw = dir.path().join("r.raw");
    img.create(&raw, Format::Raw, Some(MIB), None)
        .await
        .unwrap();
    let err = img
        .snapshot_create(&raw, Format::Raw, "s1", None)
        .await
        .unwrap_err();
    assert!(matches!(err, SnapshotError::NeedsQcow2 { .. }), "{err:?}");
    assert!(err
        .to_string()
        .contains("r.raw is a raw disk; snapshots need qcow2"));
    assert!(img
        .snapshot_list(&raw, Format::Raw, false)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn an_image_held_by_a_running_qemu_is_in_use_but_can_be_listed_with_force_share() {
    let img = qemu_img();
    require("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.qcow2");
    img.create(&disk, Format::Qcow2, Some(16 * MIB), None)
        .await
        .unwrap();
    img.snapshot_create(&disk, Format::Qcow2, "s1", None)
        .await
        .unwrap();
    // qemu-io in interactive mode keeps the image open with QEMU's write lock, like a VM.
    // It opens the image before it reads a command, so its answer to `info` means the lock
    // is held. (Polling with `qemu-img snapshot -l` instead races: a listing that opens the
    // image at the moment qemu-io does makes qemu-io fail to take its write lock.)
    let mut holder = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2"])
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The pipes stay open until the end: a closed stdout would kill qemu-io by SIGPIPE.
    let mut holder_out = std::io::BufReader::new(holder.stdout.take().unwrap());
    {
        use std::io::{BufRead, Write};
        let stdin = holder.stdin.as_mut().unwrap();
        stdin.write_all(b"info\n").unwrap();
        stdin.flush().unwrap();
        let opened = (&mut holder_out)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("format name: qcow2"));
        assert!(opened, "qemu-io did not open the image");
    }
    let err = img
        .snapshot_list(&disk, Format::Qcow2, false)
        .await
        .unwrap_err();
    assert!(matches!(err, SnapshotError::InUse { .. }), "{err:?}");
    let list = img.snapshot_list(&disk, Format::Qcow2, true).await.unwrap();
    assert_eq!(list[0].name, "s1");
    let err = img
        .snapshot_create(&disk, Format::Qcow2, "s2", None)
        .await
        .unwrap_err();
    assert!(matches!(err, SnapshotError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains("in use by a running VM"), "{err}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    drop(holder_out);
}

#[tokio::test]
async fn encrypted_images_snapshot_with_their_key() {
    let img = qemu_img();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("e.qcow2");
    let key = VolumeKey::generate().unwrap();
    img.create_encrypted(&disk, Format::Qcow2, 16 * MIB, &key)
        .await
        .unwrap();
    qemu_io_encrypted(&disk, &key, "write -P 0x33 0 65536").unwrap();

    // Every qemu-img snapshot operation opens the image for IO, so it needs the key.
    let err = img
        .snapshot_create(&disk, Format::Qcow2, "s1", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotError::QemuImg(vessel_storage::QemuImgError::KeyNeeded { .. })
        ),
        "{err:?}"
    );
    img.snapshot_create(&disk, Format::Qcow2, "s1", Some(&key))
        .await
        .unwrap();
    qemu_io_encrypted(&disk, &key, "write -P 0x44 0 65536").unwrap();
    // Listing needs no key.
    let list = img
        .snapshot_list(&disk, Format::Qcow2, false)
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    img.snapshot_apply(&disk, Format::Qcow2, "s1", Some(&key))
        .await
        .unwrap();
    qemu_io_encrypted(&disk, &key, "read -P 0x33 0 65536").unwrap();
    img.snapshot_delete(&disk, Format::Qcow2, "s1", Some(&key))
        .await
        .unwrap();
    assert!(img
        .snapshot_list(&disk, Format::Qcow2, false)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn all_disks_of_a_vm_snapshot_together_or_not_at_all() {
    let img = qemu_img();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    for p in [&a, &b] {
        img.create(p, Format::Qcow2, Some(16 * MIB), None)
            .await
            .unwrap();
        guest_write(p, Format::Qcow2, 0x55, 0, MIB);
    }
    let disks = [
        SnapshotDisk {
            path: &a,
            format: Format::Qcow2,
            key: None,
        },
        SnapshotDisk {
            path: &b,
            format: Format::Qcow2,
            key: None,
        },
    ];
    // A tag that one disk already has refuses the whole VM snapshot, touching neither disk.
    img.snapshot_create(&b, Format::Qcow2, "taken", None)
        .await
        .unwrap();
    let err = img.snapshot_create_all(&disks, "taken").await.unwrap_err();
    assert!(matches!(err, SnapshotError::Exists { .. }), "{err:?}");
    assert!(img
        .snapshot_list(&a, Format::Qcow2, false)
        .await
        .unwrap()
        .is_empty());

    img.snapshot_create_all(&disks, "vm1").await.unwrap();
    for p in [&a, &b] {
        guest_write(p, Format::Qcow2, 0x66, 0, MIB);
    }
    img.snapshot_apply_all(&disks, "vm1").await.unwrap();
    for p in [&a, &b] {
        assert!(reads_pattern(p, 0x55, 0, MIB));
    }
    // "taken" exists on b only: reverting the VM to it is refused before any disk changes.
    let err = img.snapshot_apply_all(&disks, "taken").await.unwrap_err();
    assert!(matches!(err, SnapshotError::NotFound { .. }), "{err:?}");

    img.snapshot_delete_all(&disks, "vm1").await.unwrap();
    img.snapshot_delete_all(&disks, "taken").await.unwrap();
    for p in [&a, &b] {
        assert!(img
            .snapshot_list(p, Format::Qcow2, false)
            .await
            .unwrap()
            .is_empty());
    }
    let err = img.snapshot_delete_all(&disks, "vm1").await.unwrap_err();
    assert!(matches!(err, SnapshotError::NotFound { .. }), "{err:?}");

    // A raw disk anywhere in the VM refuses the snapshot, naming the disk.
    let raw = dir.path().join("c.raw");
    img.create(&raw, Format::Raw, Some(MIB), None)
        .await
        .unwrap();
    let with_raw = [
        disks[0],
        SnapshotDisk {
            path: &raw,
            format: Format::Raw,
            key: None,
        },
    ];
    let err = img.snapshot_create_all(&with_raw, "vm2").await.unwrap_err();
    assert!(err.to_string().contains("c.raw is a raw disk"), "{err}");
    assert!(img
        .snapshot_list(&a, Format::Qcow2, false)
        .await
        .unwrap()
        .is_empty());
}
