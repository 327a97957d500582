//! Storage pools through the API and the CLI, on real directories and real qemu-img.

mod common;

use std::process::Command;

use common::*;
use vessel_api::{CreatePoolRequest, PoolKind};

fn vessel(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vessel"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_default_pool_exists_and_pools_can_be_added_and_removed() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let default = client
        .get_pool("default")
        .await
        .expect("default pool made at first start");
    assert_eq!(default.kind, PoolKind::Dir);
    assert_eq!(
        default.path,
        daemon.data_dir.join("pools/default").to_string_lossy()
    );
    assert!(
        default.total_bytes > 0 && default.available_bytes <= default.total_bytes,
        "{default:?}"
    );
    assert_eq!(default.volumes, 0);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fast");
    let out = vessel(
        &daemon,
        &["pool", "create", "fast", "--path", &path.to_string_lossy()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(path.is_dir(), "the pool's directory is made");
    let list = String::from_utf8_lossy(&vessel(&daemon, &["pool", "list"]).stdout).into_owned();
    assert!(
        list.contains("default") && list.contains("fast") && list.contains("AVAILABLE"),
        "{list}"
    );

    // A volume file in the pool is counted, and keeps the pool from being deleted.
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path.join("disk1.qcow2"))
        .arg("16M")
        .status()
        .expect("qemu-img must be installed (apt-get install qemu-utils)");
    assert!(made.success());
    assert_eq!(client.get_pool("fast").await.unwrap().volumes, 1);
    let refused = client.delete_pool("fast").await.unwrap_err();
    assert!(
        refused.to_string().contains("disk1"),
        "names the volume: {refused}"
    );
    std::fs::remove_file(path.join("disk1.qcow2")).unwrap();

    client
        .delete_pool("fast")
        .await
        .expect("empty pool deletes");
    assert!(!path.exists(), "its empty directory is removed");
    assert!(client
        .get_pool("fast")
        .await
        .unwrap_err()
        .to_string()
        .contains("not found"));
    let default_stays = client.delete_pool("default").await.unwrap_err();
    assert!(
        default_stays.to_string().contains("cannot be deleted"),
        "{default_stays}"
    );
}

#[tokio::test]
async fn bad_pools_are_refused_and_leave_nothing_behind() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("p1");
    let request = |name: &str, path: &str| CreatePoolRequest {
        name: name.into(),
        kind: PoolKind::Dir,
        path: path.into(),
    };
    client
        .create_pool(&request("p1", &good.to_string_lossy()))
        .await
        .unwrap();

    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let fresh = dir.path().join("fresh");
    let cases = [
        (request("p2", "relative/dir"), "relative"),
        (
            request("p2", &format!("{}/../x", dir.path().display())),
            "'..'",
        ),
        (
            request("p2", &good.join("inner").to_string_lossy()),
            "overlaps pool \"p1\"",
        ),
        (
            request("p2", &dir.path().to_string_lossy()),
            "overlaps pool \"p1\"",
        ),
        (
            request("p2", &daemon.data_dir.join("mine").to_string_lossy()),
            "data dir",
        ),
        (request("p2", &file.to_string_lossy()), "not a directory"),
        (request("bad/name", &fresh.to_string_lossy()), "'/'"),
        (request("p1", &fresh.to_string_lossy()), "already exists"),
    ];
    for (req, expected) in cases {
        let err = client.create_pool(&req).await.unwrap_err();
        assert!(err.to_string().contains(expected), "{req:?}: {err}");
    }
    assert!(
        !fresh.exists(),
        "a refused create leaves no directory behind"
    );
    let names: Vec<String> = client
        .list_pools()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["default", "p1"]);
}

/// The host's name is chosen at the data dir's first start and kept: later starts without the
/// setting keep it (and the pools recorded under it), and a different one is refused with a
/// clear way out, before the daemon touches anything.
#[tokio::test]
async fn the_host_name_is_fixed_at_first_start() {
    let mut daemon = Daemon::start_with(&["--host-name", "alpha"]);
    let client = daemon.client();
    assert_eq!(client.host_info().await.unwrap().name, "alpha");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fast");
    client
        .create_pool(&CreatePoolRequest {
            name: "fast".into(),
            kind: PoolKind::Dir,
            path: path.to_string_lossy().into_owned(),
        })
        .await
        .unwrap();
    daemon.stop();

    daemon.extra_args = vec!["--host-name".into(), "beta".into()];
    let refused = daemon.command().output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("belongs to host \"alpha\"") && stderr.contains("--host-name alpha"),
        "{stderr}"
    );

    daemon.extra_args.clear();
    daemon.spawn();
    let client = daemon.client();
    assert_eq!(client.host_info().await.unwrap().name, "alpha");
    let out = vessel(&daemon, &["host", "info"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("alpha"), "{text}");
    assert_eq!(
        client.get_pool("fast").await.unwrap().path,
        path.to_string_lossy()
    );
}
