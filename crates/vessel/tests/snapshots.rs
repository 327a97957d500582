//! VM snapshots with real guests: taken offline and live, with and without memory, reverted,
//! deleted, with the chain kept.

mod common;

use common::*;
use vessel_api::{
    AttachDiskRequest, CreateSnapshotRequest, CreateVolumeRequest, StopVmRequest, VmState,
    VolumeFormat,
};
use vessel_cli::{Client, Outcome, VmAction};

async fn vm_with_disk(client: &Client, vm: &str) {
    client
        .create_volume(
            "default",
            &CreateVolumeRequest {
                name: format!("{vm}-data"),
                format: VolumeFormat::Qcow2,
                size_bytes: Some(16 << 20),
                backing: None,
                encrypted: false,
                project: None,
            },
        )
        .await
        .unwrap();
    create(client, &guest_vm(vm)).await;
    let attach = AttachDiskRequest {
        pool: None,
        volume: format!("{vm}-data"),
        read_only: false,
        shareable: false,
    };
    assert!(matches!(
        client.attach_disk(vm, &attach, true).await,
        Ok(Outcome::Done(_))
    ));
}

async fn snapshot(client: &Client, vm: &str, name: &str, memory: bool) {
    let request = CreateSnapshotRequest {
        name: name.into(),
        memory,
    };
    match client.create_snapshot(vm, &request, true).await {
        Ok(Outcome::Done(_)) => {}
        other => panic!("snapshot {name} of {vm}: {other:?}"),
    }
}

async fn revert(client: &Client, vm: &str, name: &str) -> vessel_api::Vm {
    match client.revert_snapshot(vm, name, true).await {
        Ok(Outcome::Done(vm)) => vm,
        other => panic!("revert {vm} to {name}: {other:?}"),
    }
}

/// Writes `word` to the start of the guest's disk and waits until it is on the disk.
async fn write_mark(client: &Client, vm: &str, word: &str, n: u32) {
    run_in_guest(
        client,
        vm,
        &format!("echo {word} >/dev/sda; sync; echo wrote-$(({n}*10))"),
    )
    .await;
    await_console(client, vm, &format!("wrote-{}", n * 10), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverting_a_disk_snapshot_brings_back_the_old_data() {
    let daemon = Daemon::start();
    let client = daemon.client();
    vm_with_disk(&client, "snap1").await;
    act(&client, "snap1", VmAction::Start).await;
    await_console(&client, "snap1", "VESSEL-GUEST-READY", 1).await;
    write_mark(&client, "snap1", "OLDMARK", 1).await;
    act(&client, "snap1", VmAction::Stop(StopVmRequest::default())).await;

    snapshot(&client, "snap1", "before", false).await; // offline
    act(&client, "snap1", VmAction::Start).await;
    await_console(&client, "snap1", "VESSEL-GUEST-READY", 2).await;
    write_mark(&client, "snap1", "NEWMARK", 2).await;
    snapshot(&client, "snap1", "after", false).await; // live, disk-only
    assert_eq!(
        client.get_vm("snap1").await.unwrap().state,
        VmState::Running,
        "a disk snapshot does not stop the VM"
    );

    let list = client.list_snapshots("snap1").await.unwrap();
    let names: Vec<_> = list.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["before", "after"]);
    assert_eq!(list[1].parent.as_deref(), Some("before"), "the chain");
    assert!(list[1].current && !list[0].current);

    // Reverting a running VM to a disk-only snapshot stops it.
    let reverted = revert(&client, "snap1", "before").await;
    assert_eq!(reverted.state, VmState::Stopped);
    act(&client, "snap1", VmAction::Start).await;
    await_console(&client, "snap1", "VESSEL-GUEST-READY", 3).await;
    run_in_guest(&client, "snap1", "head -c 7 /dev/sda | tr A-Z a-z; echo").await;
    let console = await_console(&client, "snap1", "oldmark", 1).await;
    assert!(!console.contains("newmark"), "{console}");
    assert!(client.list_snapshots("snap1").await.unwrap()[0].current);

    // Deleting one keeps the other and the chain.
    assert!(matches!(
        client.delete_snapshot("snap1", "before", true).await,
        Ok(Outcome::Done(_))
    ));
    let list = client.list_snapshots("snap1").await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].name.as_str(), list[0].parent.as_deref()),
        ("after", None)
    );

    // Bad requests are refused with the reason.
    let numeric = client
        .create_snapshot(
            "snap1",
            &CreateSnapshotRequest {
                name: "123".into(),
                memory: false,
            },
            true,
        )
        .await
        .unwrap_err();
    assert!(numeric.to_string().contains("digits"), "{numeric}");
    let missing = client
        .revert_snapshot("snap1", "nope", true)
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("no snapshot"), "{missing}");
    let twice = client
        .create_snapshot(
            "snap1",
            &CreateSnapshotRequest {
                name: "after".into(),
                memory: false,
            },
            true,
        )
        .await
        .unwrap_err();
    assert!(twice.to_string().contains("already"), "{twice}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_snapshot_resumes_the_guest_where_it_was() {
    let daemon = Daemon::start();
    let client = daemon.client();
    vm_with_disk(&client, "live1").await;
    act(&client, "live1", VmAction::Start).await;
    let boot_id = boot_ids(&await_boots(&client, "live1", 1).await)
        .pop()
        .unwrap();
    run_in_guest(
        &client,
        "live1",
        "echo kept >/run/before; echo noted-$((5*5))",
    )
    .await;
    await_console(&client, "live1", "noted-25", 1).await;

    snapshot(&client, "live1", "warm", true).await;
    let list = client.list_snapshots("live1").await.unwrap();
    assert!(list[0].memory && list[0].vm_state_bytes > 0, "{list:?}");
    run_in_guest(
        &client,
        "live1",
        "echo lost >/run/after; echo noted-$((6*6))",
    )
    .await;
    await_console(&client, "live1", "noted-36", 1).await;

    let reverted = revert(&client, "live1", "warm").await;
    assert_eq!(
        reverted.state,
        VmState::Running,
        "a memory revert resumes the VM"
    );
    // The same boot (no new READY line), with what it had then and not what came after.
    run_in_guest(
        &client,
        "live1",
        "cat /run/vessel-boot-id /run/before; ls /run/after 2>&1 | tr a-z A-Z; echo checked-$((7*7))",
    )
    .await;
    let console = await_console(&client, "live1", "checked-49", 1).await;
    assert_eq!(
        boot_ids(&console).len(),
        1,
        "the guest did not boot again:\n{console}"
    );
    // What the guest printed after the revert (the last thing it printed before is noted-36).
    let tail = &console[console.rfind("noted-36").unwrap()..];
    assert!(tail.contains(&boot_id), "{tail}");
    assert!(tail.contains("kept"), "{tail}");
    assert!(
        tail.contains("NO SUCH FILE"),
        "the later file is gone: {tail}"
    );
}
