//! Pool volumes as VM disks: attached while stopped or hot-plugged into a running guest, with
//! what the guest wrote read back. Real QEMU, real guest, real image files.

mod common;

use common::*;
use vessel_api::{AttachDiskRequest, CreateVolumeRequest, StopVmRequest, VmState, VolumeFormat};
use vessel_cli::{Outcome, VmAction};

const MIB: u64 = 1024 * 1024;

async fn new_volume(client: &vessel_cli::Client, name: &str) {
    client
        .create_volume(
            "default",
            &volume_request(name, VolumeFormat::Qcow2, Some(16 * MIB), None),
        )
        .await
        .unwrap_or_else(|e| panic!("create volume {name}: {e}"));
}

fn attach_request(volume: &str) -> AttachDiskRequest {
    AttachDiskRequest {
        pool: None,
        volume: volume.into(),
        read_only: false,
        shareable: false,
    }
}

async fn attach(client: &vessel_cli::Client, vm: &str, volume: &str) -> vessel_api::Vm {
    match client.attach_disk(vm, &attach_request(volume), true).await {
        Ok(Outcome::Done(vm)) => vm,
        other => panic!("attach {volume} to {vm}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_attached_while_stopped_keeps_what_the_guest_wrote() {
    let daemon = Daemon::start();
    let client = daemon.client();
    new_volume(&client, "data1").await;
    create(&client, &guest_vm("disk1")).await;
    let vm = attach(&client, "disk1", "data1").await;
    assert_eq!(vm.spec.disks.len(), 1);
    let volume = client.get_volume("default", "data1").await.unwrap();
    assert_eq!(volume.used_by, vec!["disk1".to_string()]);
    let refused = client.delete_volume("default", "data1").await.unwrap_err();
    assert!(refused.to_string().contains("disk1"), "{refused}");

    act(&client, "disk1", VmAction::Start).await;
    let console = await_console(&client, "disk1", "VESSEL-GUEST-READY", 1).await;
    assert!(
        console.contains("VESSEL-DISKS sda:16384"),
        "the guest sees the 16 MiB volume as sda:\n{console}"
    );
    // Written through the guest's page cache and flushed to the volume.
    run_in_guest(
        &client,
        "disk1",
        "echo MARK-$((6*7))-first >/dev/sda; sync; echo written-$((1+1))",
    )
    .await;
    await_console(&client, "disk1", "written-2", 1).await;
    act(&client, "disk1", VmAction::Stop(StopVmRequest::default())).await;

    // A fresh QEMU and a fresh guest read it back from the file.
    act(&client, "disk1", VmAction::Start).await;
    await_console(&client, "disk1", "VESSEL-GUEST-READY", 2).await;
    run_in_guest(&client, "disk1", "head -c 14 /dev/sda; echo").await;
    await_console(&client, "disk1", "MARK-42-first", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_plug_shows_the_disk_in_the_running_guest_and_unplug_removes_it() {
    let daemon = Daemon::start();
    let client = daemon.client();
    new_volume(&client, "hot1").await;
    let vm = booted(&client, guest_vm("plug1")).await;
    let console = await_console(&client, "plug1", "VESSEL-DISKS", 1).await;
    assert!(
        !console.contains("sda"),
        "no disk before the plug:\n{console}"
    );

    let attached = attach(&client, "plug1", "hot1").await;
    assert_eq!(attached.pid, vm.pid, "hot-plug keeps the QEMU process");
    assert_eq!(attached.state, VmState::Running);
    // The guest kernel scans the new LUN; the guest's shell waits for the disk to appear.
    run_in_guest(
        &client,
        "plug1",
        "until grep -q sda /proc/partitions; do sleep 0.1; done; echo plugged-$((2*2))",
    )
    .await;
    await_console(&client, "plug1", "plugged-4", 1).await;

    // Online resize: QEMU grows the disk and the guest sees the new size.
    let grown = client
        .resize_volume(
            "default",
            "hot1",
            &vessel_api::ResizeVolumeRequest {
                size_bytes: 32 * MIB,
                shrink: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(grown.virtual_bytes, 32 * MIB);
    run_in_guest(
        &client,
        "plug1",
        "until [ $(cat /sys/block/sda/size) = 65536 ]; do sleep 0.1; done; echo grown-$((4*4))",
    )
    .await;
    await_console(&client, "plug1", "grown-16", 1).await;
    let shrink = client
        .resize_volume(
            "default",
            "hot1",
            &vessel_api::ResizeVolumeRequest {
                size_bytes: 8 * MIB,
                shrink: true,
            },
        )
        .await
        .unwrap_err();
    assert!(shrink.to_string().contains("stopped"), "{shrink}");

    let detached = match client.detach_disk("plug1", "default", "hot1", true).await {
        Ok(Outcome::Done(vm)) => vm,
        other => panic!("detach: {other:?}"),
    };
    assert!(detached.spec.disks.is_empty());
    assert_eq!(detached.pid, vm.pid);
    run_in_guest(
        &client,
        "plug1",
        "while grep -q sda /proc/partitions; do sleep 0.1; done; echo unplugged-$((3*3))",
    )
    .await;
    await_console(&client, "plug1", "unplugged-9", 1).await;
    // QEMU closed the file: the volume is free again and can be deleted.
    assert!(client
        .get_volume("default", "hot1")
        .await
        .unwrap()
        .used_by
        .is_empty());
    client.delete_volume("default", "hot1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_is_written_by_one_running_vm_at_a_time() {
    let daemon = Daemon::start();
    let client = daemon.client();
    new_volume(&client, "excl1").await;
    booted(&client, guest_vm("owner1")).await;
    booted(&client, guest_vm("other1")).await;
    attach(&client, "owner1", "excl1").await;
    let refused = client
        .attach_disk("other1", &attach_request("excl1"), true)
        .await
        .unwrap_err();
    let text = refused.to_string();
    assert!(
        text.contains("owner1"),
        "names the VM that holds it: {text}"
    );
    assert!(
        client.get_vm("other1").await.unwrap().spec.disks.is_empty(),
        "a refused attach changes nothing"
    );
    // Not even for reading while another VM writes it.
    let read_only = AttachDiskRequest {
        read_only: true,
        ..attach_request("excl1")
    };
    let refused = client
        .attach_disk("other1", &read_only, true)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("owner1"), "{refused}");
    // Readers share: once the writer lets go, two VMs read it at once.
    match client.detach_disk("owner1", "default", "excl1", true).await {
        Ok(Outcome::Done(_)) => {}
        other => panic!("detach: {other:?}"),
    }
    for vm in ["owner1", "other1"] {
        match client.attach_disk(vm, &read_only, true).await {
            Ok(Outcome::Done(vm)) => assert!(vm.spec.disks[0].read_only),
            other => panic!("read-only attach to {vm}: {other:?}"),
        }
    }
    // Unknown volumes and double attachments are refused with the reason.
    let missing = client
        .attach_disk("owner1", &attach_request("nope"), true)
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("nope"), "{missing}");
    let twice = client
        .attach_disk("owner1", &read_only, true)
        .await
        .unwrap_err();
    assert!(twice.to_string().contains("already attached"), "{twice}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_volume_hides_its_data_and_survives_key_rotation() {
    let mut daemon = Daemon::start();
    let client = daemon.client();
    let volume = client
        .create_volume(
            "default",
            &CreateVolumeRequest {
                name: "secret1".into(),
                format: VolumeFormat::Qcow2,
                size_bytes: Some(16 * MIB),
                backing: None,
                encrypted: true,
                project: None,
            },
        )
        .await
        .unwrap();
    assert!(volume.encrypted);
    let master = daemon.data_dir.join("master.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&master).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the master key file is owner-only");

    create(&client, &guest_vm("crypt1")).await;
    attach(&client, "crypt1", "secret1").await;
    act(&client, "crypt1", VmAction::Start).await;
    await_console(&client, "crypt1", "VESSEL-GUEST-READY", 1).await;
    run_in_guest(
        &client,
        "crypt1",
        "echo SECRET-MARK-$((6*7))-xyzzy >/dev/sda; sync; echo written-$((2+1))",
    )
    .await;
    await_console(&client, "crypt1", "written-3", 1).await;
    act(&client, "crypt1", VmAction::Stop(StopVmRequest::default())).await;
    let raw = std::fs::read(&volume.path).unwrap();
    assert!(
        !raw.windows(b"SECRET-MARK-42".len())
            .any(|w| w == b"SECRET-MARK-42"),
        "the marker must not be in the volume file in plain text"
    );

    // A wrong key does not open it.
    let wrong = std::process::Command::new("qemu-io")
        .args([
            "--object",
            "secret,id=k,data=not-the-key",
            "--image-opts",
            &format!(
                "driver=qcow2,file.filename={},encrypt.key-secret=k",
                volume.path
            ),
            "-c",
            "read 0 512",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&wrong.stderr).to_string()
        + &String::from_utf8_lossy(&wrong.stdout);
    assert!(said.contains("Invalid password"), "{said}");

    // Rotate the master key, restart the daemon on the new key file, and read the data back.
    let rotation = client.rotate_master_key().await.unwrap();
    assert_eq!(rotation.rewrapped, 1);
    daemon.kill9();
    daemon.spawn();
    let client = daemon.client();
    act(&client, "crypt1", VmAction::Start).await;
    await_console(&client, "crypt1", "VESSEL-GUEST-READY", 2).await;
    run_in_guest(&client, "crypt1", "head -c 20 /dev/sda; echo").await;
    await_console(&client, "crypt1", "SECRET-MARK-42-xyzzy", 1).await;

    // Hot-unplug and hot-plug again: the key then reaches QEMU over QMP.
    match client
        .detach_disk("crypt1", "default", "secret1", true)
        .await
    {
        Ok(Outcome::Done(_)) => {}
        other => panic!("detach: {other:?}"),
    }
    attach(&client, "crypt1", "secret1").await;
    run_in_guest(
        &client,
        "crypt1",
        "until grep -q sda /proc/partitions; do sleep 0.1; done; head -c 14 /dev/sda | tr A-Z a-z; echo",
    )
    .await;
    await_console(&client, "crypt1", "secret-mark-42", 1).await;
}

/// QEMU runs as its own user, so a hot-plugged disk's files reach it as fds the daemon opened;
/// a linked clone's backing chain too (QEMU could neither open it by name nor resolve its
/// relative names from an fd). Chain: top (qcow2) -> mid (qcow2) -> base (raw).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_plugged_linked_clone_reads_its_backing_chain() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let base = client
        .create_volume(
            "default",
            &volume_request("base", VolumeFormat::Raw, Some(16 * MIB), None),
        )
        .await
        .unwrap();
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&base.path)
            .unwrap();
        file.write_all(b"BASE-MARK-42").unwrap();
    }
    let mid = client
        .create_volume(
            "default",
            &volume_request("mid", VolumeFormat::Qcow2, None, Some("base")),
        )
        .await
        .unwrap();
    // 512 bytes of 'M' in the middle layer only.
    let wrote = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x4d 512 512", &mid.path])
        .output()
        .unwrap();
    assert!(wrote.status.success(), "{wrote:?}");
    client
        .create_volume(
            "default",
            &volume_request("top", VolumeFormat::Qcow2, None, Some("mid")),
        )
        .await
        .unwrap();

    let vm = booted(&client, guest_vm("chain1")).await;
    let qemu = vm.pid.unwrap();
    qemu_uid(qemu);
    attach(&client, "chain1", "top").await;
    run_in_guest(
        &client,
        "chain1",
        "until grep -q sda /proc/partitions; do sleep 0.1; done; head -c 12 /dev/sda; echo; \
         dd if=/dev/sda bs=512 skip=1 count=1 2>/dev/null | head -c 8; echo; \
         echo TOP-$((6*7))-written >/dev/sda; sync; echo done-$((5*5))",
    )
    .await;
    let console = await_console(&client, "chain1", "done-25", 1).await;
    assert!(console.contains("BASE-MARK-42"), "from base:\n{console}");
    assert!(console.contains("MMMMMMMM"), "from mid:\n{console}");
    // The guest's write went to the top layer; the layers below are unchanged.
    run_in_guest(&client, "chain1", "head -c 15 /dev/sda; echo").await;
    await_console(&client, "chain1", "TOP-42-written", 1).await;
    let base_bytes = std::fs::read(&base.path).unwrap();
    assert!(base_bytes.starts_with(b"BASE-MARK-42"));
    // Read through mid, offset 0 still shows base's bytes: mid holds nothing there either.
    let through_mid = std::process::Command::new("qemu-io")
        .args(["-r", "-U", "-f", "qcow2", "-c", "read -v 0 12", &mid.path])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&through_mid.stdout)
            .contains("42 41 53 45 2d 4d 41 52 4b 2d 34 32"),
        "BASE-MARK-42 through mid: {through_mid:?}"
    );

    match client.detach_disk("chain1", "default", "top", true).await {
        Ok(Outcome::Done(_)) => {}
        other => panic!("detach: {other:?}"),
    }
    // No fd of QEMU still refers to a file of the chain: the fd sets went with the disk.
    let pool_dir = std::path::Path::new(&base.path)
        .parent()
        .unwrap()
        .to_owned();
    let open: Vec<_> = std::fs::read_dir(format!("/proc/{qemu}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.starts_with(&pool_dir))
        .collect();
    assert!(open.is_empty(), "QEMU still has {open:?} open");
}
