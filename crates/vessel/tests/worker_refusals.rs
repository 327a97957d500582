//! Refusals the VM worker finds after a request was accepted keep their class all the way to
//! the CLI. The request's own checks are tested elsewhere; here the worker necessarily finds
//! the refusal, because the growth that takes the quota happens while the request waits in the
//! VM's queue (a VM's operations run one at a time).
//!
//! How the queue is held: the daemon finds `qemu-img` on its PATH, and this test puts a
//! `qemu-img` in front that, for `qemu-img snapshot` only, says so through a FIFO and waits for
//! a word through another before running the real one. So an offline snapshot of VM `a` keeps
//! `a`'s worker busy exactly as long as the test wants, while `a` stays stopped (and so
//! editable). Its own binary: PATH is process-wide.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vessel_api::{
    AttachDiskRequest, CreateProjectRequest, CreateSnapshotRequest, CreateVmRequest, ErrorCode,
    OperationAction, OperationStatus, Quota, VolumeFormat,
};
use vessel_cli::Outcome;

const MIB: u64 = 1 << 20;
/// How long the test waits for the held `qemu-img` to show up; the wrapper itself gives up
/// after [`WRAPPER_PATIENCE`], so nothing it starts outlives a failed test for long.
const FIFO_TIMEOUT: Duration = Duration::from_secs(120);
const WRAPPER_PATIENCE: &str = "300";

/// A directory with the `qemu-img` wrapper and its two FIFOs (`entered`: the wrapper says it
/// holds a snapshot; `go`: the test lets it run).
struct Hold {
    dir: tempfile::TempDir,
}

impl Hold {
    fn new() -> Hold {
        let real = which("qemu-img");
        let dir = tempfile::tempdir().unwrap();
        for fifo in ["entered", "go"] {
            let path = dir.path().join(fifo);
            let path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: mkfifo on a NUL-terminated path we own.
            assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        }
        let script = format!(
            r#"#!/bin/sh
# Holds the first `qemu-img snapshot` until the test writes to {dir}/go.
if [ "$1" = snapshot ] && [ -p {dir}/entered ]; then
    timeout {WRAPPER_PATIENCE} sh -c 'echo held > {dir}/entered'
    rm -f {dir}/entered
    timeout {WRAPPER_PATIENCE} cat {dir}/go > /dev/null
fi
exec {real} "$@"
"#,
            dir = dir.path().display(),
            real = real.display(),
        );
        let wrapper = dir.path().join("qemu-img");
        std::fs::write(&wrapper, script).unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        Hold { dir }
    }

    /// Waits until the wrapper holds a snapshot (it writes to `entered` only then).
    async fn entered(&self) {
        let path = self.dir.path().join("entered");
        let read = fifo_io(move || {
            let mut word = String::new();
            std::fs::File::open(path)?.read_to_string(&mut word)?;
            Ok(word)
        })
        .await;
        assert_eq!(read.trim(), "held");
    }

    /// Lets the held snapshot run.
    async fn release(&self) {
        let path = self.dir.path().join("go");
        fifo_io(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)?
                .write_all(b"go\n")?;
            Ok(String::new())
        })
        .await;
    }
}

/// Blocking FIFO I/O on a thread of its own, with a deadline (the thread is left behind only
/// if the test fails anyway).
async fn fifo_io(io: impl FnOnce() -> std::io::Result<String> + Send + 'static) -> String {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(io());
    });
    tokio::time::timeout(FIFO_TIMEOUT, rx)
        .await
        .expect("the qemu-img wrapper never reached the FIFO")
        .unwrap()
        .expect("FIFO I/O")
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

/// A kernel file that is never booted: the VMs here stay stopped.
fn fake_kernel(dir: &Path) -> String {
    let kernel = dir.join("fake-kernel");
    std::fs::write(&kernel, b"not booted").unwrap();
    kernel.to_string_lossy().into_owned()
}

fn stopped_vm(name: &str, kernel: &str) -> CreateVmRequest {
    CreateVmRequest {
        name: name.into(),
        cpus: 1,
        memory_mib: 64,
        kernel: Some(kernel.into()),
        project: Some("race".into()),
        ..Default::default()
    }
}

fn cli(daemon: &Daemon) -> Command {
    let mut command = Command::new(vessel_bin());
    command
        .args(["--socket", daemon.socket.to_str().unwrap()])
        .env_remove("VESSEL_REMOTE")
        .env_remove("VESSEL_SOCKET");
    command
}

/// Waits until the daemon has accepted an edit of `vm` (its operation is recorded, pending
/// behind the VM's earlier one); returns its id.
async fn accepted_edit(client: &vessel_cli::Client, vm: &str) -> String {
    let deadline = Instant::now() + FIFO_TIMEOUT;
    loop {
        let ops = client.list_operations().await.unwrap();
        if let Some(op) = ops
            .iter()
            .find(|op| op.vm == vm && op.action == OperationAction::Edit)
        {
            assert_eq!(op.status, OperationStatus::Pending, "{op:?}");
            return op.id.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the edit of {vm} was never accepted: {ops:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Issue 15: a quota refusal found by the worker (a racing growth) reaches the CLI as exit
/// code 4, its operation records `quota_exceeded`, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_refusal_found_by_the_worker_reaches_the_cli_as_exit_4() {
    let hold = Hold::new();
    let path = std::env::join_paths(
        std::iter::once(hold.dir.path().to_path_buf())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    // This binary has this one test: nothing else spawns processes meanwhile.
    std::env::set_var("PATH", path);
    let kernels = tempfile::tempdir().unwrap();
    let kernel = fake_kernel(kernels.path());
    let config = kernels.path().join("vessel.toml");
    std::fs::write(&config, format!("kernel_dirs = [{:?}]\n", kernels.path())).unwrap();
    let daemon = Daemon::start_with(&["--config", config.to_str().unwrap()]);
    let client = daemon.client();

    // Room for three vCPUs: a (1) and b (1) use two.
    client
        .create_project(&CreateProjectRequest {
            name: "race".into(),
            quota: Quota {
                vcpus: Some(3),
                ..Default::default()
            },
        })
        .await
        .unwrap();
    create(&client, &stopped_vm("a", &kernel)).await;
    create(&client, &stopped_vm("b", &kernel)).await;
    let disk = vessel_api::CreateVolumeRequest {
        project: Some("race".into()),
        ..volume_request("adisk", VolumeFormat::Qcow2, Some(MIB), None)
    };
    client.create_volume("default", &disk).await.unwrap();
    let attach = AttachDiskRequest {
        pool: None,
        volume: "adisk".into(),
        read_only: false,
        shareable: false,
    };
    client.attach_disk("a", &attach, true).await.unwrap();

    // a's worker takes an offline snapshot, held inside qemu-img; a stays stopped.
    let snapshot = CreateSnapshotRequest {
        name: "held".into(),
        memory: false,
    };
    let Outcome::Accepted(snapshot_op) =
        client.create_snapshot("a", &snapshot, false).await.unwrap()
    else {
        panic!("a snapshot without waiting is accepted, not done")
    };
    hold.entered().await;

    // The edit of a fits now, so the request accepts it; it waits behind the snapshot.
    let edit_a = cli(&daemon)
        .args(["vm", "edit", "a", "--cpus", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let edit_id = accepted_edit(&client, "a").await;

    // Meanwhile b grows into the room (its worker is idle): the project is at 3 of 3.
    let edit_b = cli(&daemon)
        .args(["vm", "edit", "b", "--cpus", "2"])
        .output()
        .unwrap();
    assert!(edit_b.status.success(), "{edit_b:?}");
    assert_eq!(client.get_project("race").await.unwrap().usage.vcpus, 3);

    // The snapshot finishes; then a's worker finds the quota taken.
    hold.release().await;
    let edit_a = tokio::task::spawn_blocking(move || edit_a.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&edit_a.stderr);
    assert_eq!(edit_a.status.code(), Some(4), "{edit_a:?}");
    assert!(
        stderr.contains("project \"race\" is at its vcpus quota: limit 3, in use 3"),
        "{stderr}"
    );

    // The operation says which class of failure it was; the CLI shows it.
    let op = client.get_operation(&edit_id).await.unwrap();
    assert_eq!(op.status, OperationStatus::Failed, "{op:?}");
    assert_eq!(op.error_code, Some(ErrorCode::QuotaExceeded), "{op:?}");
    let shown = cli(&daemon)
        .args(["operation", "show", &edit_id, "--output", "json"])
        .output()
        .unwrap();
    assert!(shown.status.success(), "{shown:?}");
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["error_code"], "quota_exceeded", "{shown}");

    // Nothing changed: a keeps its one vCPU, b has two, the snapshot was taken.
    assert_eq!(client.get_vm("a").await.unwrap().spec.cpus, 1);
    assert_eq!(client.get_vm("b").await.unwrap().spec.cpus, 2);
    assert_eq!(client.get_project("race").await.unwrap().usage.vcpus, 3);
    let snapshot_op = client
        .get_operation(&snapshot_op.operation.id)
        .await
        .unwrap();
    assert_eq!(
        snapshot_op.status,
        OperationStatus::Succeeded,
        "{snapshot_op:?}"
    );
    assert_eq!(client.list_snapshots("a").await.unwrap().len(), 1);
}
