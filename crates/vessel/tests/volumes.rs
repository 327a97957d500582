//! Volumes in pools through the API: real files, real qemu-img, and a VM booting from one.

mod common;

use common::*;
use vessel_api::{CloneVolumeRequest, ResizeVolumeRequest, VmState, VolumeFormat};
use vessel_cli::VmAction;

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn volumes_are_created_cloned_resized_and_deleted() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let data = client
        .create_volume(
            "default",
            &volume_request("data1", VolumeFormat::Qcow2, Some(16 * MIB), None),
        )
        .await
        .unwrap();
    assert_eq!(
        (data.format, data.virtual_bytes),
        (VolumeFormat::Qcow2, 16 * MIB)
    );
    assert!(std::path::Path::new(&data.path).starts_with(daemon.data_dir.join("pools/default")));

    let linked = client
        .create_volume(
            "default",
            &volume_request("child1", VolumeFormat::Qcow2, None, Some("data1")),
        )
        .await
        .unwrap();
    assert_eq!(linked.backing_volume.as_deref(), Some("data1"));
    assert_eq!(
        linked.virtual_bytes,
        16 * MIB,
        "a linked clone takes its base's size"
    );
    assert_eq!(linked.backing_chain, vec![data.path.clone()]);
    let refused = client.delete_volume("default", "data1").await.unwrap_err();
    assert!(
        refused.to_string().contains("child1"),
        "names the dependent: {refused}"
    );

    let copy = client
        .clone_volume(
            "default",
            "data1",
            &CloneVolumeRequest {
                name: "copy1".into(),
                linked: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(copy.backing_volume, None, "a full clone stands alone");

    let grown = client
        .resize_volume(
            "default",
            "copy1",
            &ResizeVolumeRequest {
                size_bytes: 32 * MIB,
                shrink: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(grown.virtual_bytes, 32 * MIB);
    let shrink = client
        .resize_volume(
            "default",
            "copy1",
            &ResizeVolumeRequest {
                size_bytes: 8 * MIB,
                shrink: false,
            },
        )
        .await
        .unwrap_err();
    assert!(shrink.to_string().contains("shrink"), "{shrink}");

    let names: Vec<String> = client
        .list_volumes("default")
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["child1", "copy1", "data1"]);
    for name in ["child1", "copy1", "data1"] {
        client.delete_volume("default", name).await.unwrap();
    }
    assert!(client.list_volumes("default").await.unwrap().is_empty());
    assert_eq!(client.get_pool("default").await.unwrap().volumes, 0);
}

#[tokio::test]
async fn bad_volume_requests_are_refused_and_change_nothing() {
    let daemon = Daemon::start();
    let client = daemon.client();
    client
        .create_volume(
            "default",
            &volume_request("v1", VolumeFormat::Raw, Some(MIB), None),
        )
        .await
        .unwrap();
    let cases = [
        (
            volume_request("a/b", VolumeFormat::Qcow2, Some(MIB), None),
            "'/'",
        ),
        (
            volume_request("..", VolumeFormat::Qcow2, Some(MIB), None),
            "start with",
        ),
        (
            volume_request("nosize", VolumeFormat::Qcow2, None, None),
            "needs a size",
        ),
        (
            volume_request("odd", VolumeFormat::Qcow2, Some(1000), None),
            "512",
        ),
        (
            volume_request("v1", VolumeFormat::Qcow2, Some(MIB), None),
            "already exists",
        ),
        (
            volume_request("orphan", VolumeFormat::Qcow2, None, Some("missing")),
            "missing",
        ),
    ];
    for (request, expected) in cases {
        let err = client.create_volume("default", &request).await.unwrap_err();
        assert!(err.to_string().contains(expected), "{request:?}: {err}");
    }
    let unknown_pool = client
        .create_volume(
            "nopool",
            &volume_request("x", VolumeFormat::Qcow2, Some(MIB), None),
        )
        .await
        .unwrap_err();
    assert!(
        unknown_pool
            .to_string()
            .contains("pool \"nopool\" not found"),
        "{unknown_pool}"
    );
    let names: Vec<String> = client
        .list_volumes("default")
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["v1"], "nothing half-made");
    let pool_dir = daemon.data_dir.join("pools/default");
    let files: Vec<_> = std::fs::read_dir(&pool_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files.len(), 1, "no temporary files left: {files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_boots_from_a_pool_volume_which_is_then_in_use() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let vol = client
        .create_volume(
            "default",
            &volume_request("boot1", VolumeFormat::Raw, Some(MIB), None),
        )
        .await
        .unwrap();
    std::fs::write(&vol.path, boot_sector()).unwrap();
    let request = vessel_api::CreateVmRequest {
        name: "volvm".into(),
        cpus: 1,
        memory_mib: 64,
        disk: Some(vol.path.clone()),
        start: true,
        ..Default::default()
    };
    create(&client, &request).await;
    await_console(&client, "volvm", "VESSEL-DISK-BOOT", 1).await;
    assert_eq!(
        client.get_volume("default", "boot1").await.unwrap().used_by,
        ["volvm"]
    );
    // While the VM runs the volume grows online, through QEMU; shrinking must wait.
    let grown = client
        .resize_volume(
            "default",
            "boot1",
            &ResizeVolumeRequest {
                size_bytes: 2 * MIB,
                shrink: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(grown.virtual_bytes, 2 * MIB, "online resize");
    let shrink = client
        .resize_volume(
            "default",
            "boot1",
            &ResizeVolumeRequest {
                size_bytes: MIB,
                shrink: true,
            },
        )
        .await
        .unwrap_err();
    assert!(shrink.to_string().contains("running VM volvm"), "{shrink}");
    let delete = client.delete_volume("default", "boot1").await.unwrap_err();
    assert!(delete.to_string().contains("volvm"), "{delete}");
    let stopped = act(&client, "volvm", VmAction::Kill).await;
    assert_eq!(stopped.state, VmState::Stopped);
    let grown = client
        .resize_volume(
            "default",
            "boot1",
            &ResizeVolumeRequest {
                size_bytes: 3 * MIB,
                shrink: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        grown.virtual_bytes,
        3 * MIB,
        "offline resize works once the VM is stopped"
    );
    client.delete_vm("volvm", false, true).await.unwrap();
    client
        .delete_volume("default", "boot1")
        .await
        .expect("no longer in use");
}

#[test]
fn the_volume_commands_work_from_the_cli() {
    let daemon = Daemon::start();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vessel"))
            .arg("--socket")
            .arg(&daemon.socket)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = run(&["volume", "create", "cli-vol", "--size", "16M"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(&["volume", "clone", "cli-vol", "cli-child", "--linked"]);
    assert_eq!(code, Some(0), "{err}");
    let (_, table, _) = run(&["volume", "list"]);
    assert!(
        table.contains("cli-vol") && table.contains("16 MiB"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("cli-child") && l.contains("cli-vol")),
        "backing shown: {table}"
    );
    let (code, _, err) = run(&["volume", "delete", "cli-vol"]);
    assert_eq!(code, Some(4), "a base with dependents is a conflict: {err}");
    let (code, json, _) = run(&["volume", "show", "cli-child", "-o", "json"]);
    assert_eq!(code, Some(0));
    let shown: vessel_api::Volume = serde_json::from_str(&json).unwrap();
    assert_eq!(shown.backing_volume.as_deref(), Some("cli-vol"));
    let (code, _, err) = run(&["volume", "create", "x", "--size", "12Q"]);
    assert_eq!(code, Some(2), "{err}");
}
