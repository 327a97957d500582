//! VM snapshots of a running QEMU, over QMP.
//!
//! A VM snapshot is an internal qcow2 snapshot with the same tag in every writable disk of the VM
//! (as Proxmox does for qcow2). A stopped VM's disks are snapshotted with `qemu-img snapshot`
//! (`vessel_storage::QemuImg::snapshot_*_all`); a running VM's through QEMU, here:
//!
//! | operation | QMP | guest |
//! | --- | --- | --- |
//! | disk-only snapshot | `transaction` of `blockdev-snapshot-internal-sync`, one action per disk: atomic across disks | IO drained and QEMU's big lock held for the command's duration (a few ms) |
//! | snapshot with memory | `snapshot-save` job (QEMU >= 6.0): disks + RAM + device state, the state stored in the `vmstate` disk | paused for the whole save (QEMU 7.2's save is not live) |
//! | revert to a memory snapshot | `snapshot-load` job | a VM started with `launch_paused` stays paused until `resume`; a running one goes on from the loaded state |
//! | delete | `blockdev-snapshot-delete-internal-sync` per disk | not paused |
//! | list | `query-named-block-nodes` (the node's `image.snapshots`) | — |
//!
//! Reverting to a disk-only snapshot needs the VM stopped (QEMU cannot swap a running guest's
//! disks under it): stop, `QemuImg::snapshot_apply_all`, start.
//!
//! Reverting to a memory snapshot: start the VM with the same spec (same devices and memory size:
//! the saved device state must fit the machine) through `Backend::launch_paused`, run
//! `snapshot_load`, then `resume`. `-loadvm TAG` on the command line would do the same, but its
//! failure (a wrong tag, a changed device list) is QEMU exiting at start-up with a line in its log,
//! while the job reports over QMP into a VM that is still there to be stopped cleanly; and it needs
//! no change to the command line. `snapshot_load` also works on a VM that is running: QEMU stops
//! it, loads, and lets it run on.
//!
//! Jobs are awaited without polling on a timer: the instance's event pump bumps a counter at every
//! `JOB_STATUS_CHANGE` event, and the waiter reads `query-jobs` after each bump until the job is
//! `concluded`, then reads its `error` and dismisses it (`job-dismiss`).
//!
//! Node names: a data disk is known by its `DiskFile::node_name`; a disk-booted VM's boot disk by
//! [`BOOT_DISK_NODE`]. [`vm_disk_nodes`] lists the nodes of a launch request's writable disks.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;
use vessel_api::Boot;
use vessel_qmp::{Qmp, QmpError};
use vessel_storage::{validate_snapshot_tag, SnapshotInfo};

use crate::{BackendError, LaunchRequest};

/// The block node of a disk-booted VM's boot disk (see `cmdline.rs`).
pub const BOOT_DISK_NODE: &str = "disk0";

/// How long a synchronous snapshot command may take. Creating or deleting an internal snapshot
/// updates refcounts for every allocated cluster, which takes a while on big, full images.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The job ids Vessel uses. A worker runs one operation per VM at a time, so one id per kind is
/// enough; a job left concluded by a cancelled wait is dismissed before the next one starts.
const SAVE_JOB: &str = "vessel-snapshot-save";
const LOAD_JOB: &str = "vessel-snapshot-load";

/// The nodes to snapshot for a VM launched with `request`: the boot disk (when it boots from a
/// disk) and every data disk that is not read-only. The first is where memory state goes.
pub fn vm_disk_nodes(request: &LaunchRequest) -> Vec<String> {
    disk_nodes(
        &request.spec.boot,
        request
            .disks
            .iter()
            .map(|d| (d.node_name.as_str(), d.read_only)),
    )
}

fn disk_nodes<'a>(boot: &Boot, disks: impl Iterator<Item = (&'a str, bool)>) -> Vec<String> {
    let mut nodes = Vec::new();
    if let Boot::Disk { .. } = boot {
        nodes.push(BOOT_DISK_NODE.to_string());
    }
    nodes.extend(
        disks
            .filter(|(_, read_only)| !read_only)
            .map(|(node, _)| node.to_string()),
    );
    nodes
}

pub(crate) fn unsupported() -> BackendError {
    BackendError::Snapshot("this backend does not support snapshots".to_string())
}

fn refused(reason: impl Into<String>) -> BackendError {
    BackendError::Snapshot(reason.into())
}

fn check_tag(tag: &str) -> Result<(), BackendError> {
    validate_snapshot_tag(tag).map_err(refused)
}

/// One block node as `query-named-block-nodes` describes it.
struct Node {
    name: String,
    driver: String,
    read_only: bool,
    snapshots: Vec<SnapshotInfo>,
}

async fn nodes(qmp: &Qmp) -> Result<Vec<Node>, BackendError> {
    let reply = qmp
        .execute("query-named-block-nodes", Some(json!({ "flat": true })))
        .await?;
    let list = reply.as_array().cloned().unwrap_or_default();
    let mut out = Vec::with_capacity(list.len());
    for n in list {
        let text = |key: &str| n.get(key).and_then(Value::as_str).unwrap_or_default();
        let snapshots = match n.get("image") {
            Some(image) => vessel_storage::qemu_img::snapshot::parse_snapshots(image)
                .map_err(|e| refused(format!("QEMU described its snapshots oddly: {e}")))?,
            None => Vec::new(),
        };
        out.push(Node {
            name: text("node-name").to_string(),
            driver: text("drv").to_string(),
            read_only: n.get("ro").and_then(Value::as_bool).unwrap_or(false),
            snapshots,
        });
    }
    Ok(out)
}

/// The named nodes, each checked to exist, be qcow2 and be writable.
async fn qcow2_nodes(qmp: &Qmp, names: &[String]) -> Result<Vec<Node>, BackendError> {
    if names.is_empty() {
        return Err(refused(
            "the VM has no writable disk to snapshot; snapshots need at least one qcow2 disk",
        ));
    }
    let mut all = nodes(qmp).await?;
    let mut picked = Vec::with_capacity(names.len());
    for name in names {
        let Some(i) = all.iter().position(|n| &n.name == name) else {
            return Err(refused(format!("the VM has no disk node {name:?}")));
        };
        let node = all.swap_remove(i);
        if node.driver != "qcow2" {
            return Err(refused(format!(
                "disk {name:?} is {}; snapshots need qcow2 (convert the volume to qcow2 or \
                 detach it before snapshotting the VM)",
                node.driver
            )));
        }
        if node.read_only {
            return Err(refused(format!(
                "disk {name:?} is read-only; leave it out of the snapshot"
            )));
        }
        picked.push(node);
    }
    Ok(picked)
}

fn tags(node: &Node) -> String {
    if node.snapshots.is_empty() {
        "(none)".to_string()
    } else {
        node.snapshots
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn exists_error(node: &Node, tag: &str) -> BackendError {
    refused(format!(
        "disk {:?} already has a snapshot {tag:?}; choose another name or delete it first",
        node.name
    ))
}

/// Disk-only snapshot, atomic across `node_names`. Returns the transaction's wall time.
pub(crate) async fn snapshot_disks(
    qmp: &Qmp,
    node_names: &[String],
    tag: &str,
) -> Result<Duration, BackendError> {
    check_tag(tag)?;
    let nodes = qcow2_nodes(qmp, node_names).await?;
    if let Some(node) = nodes
        .iter()
        .find(|n| n.snapshots.iter().any(|s| s.name == tag))
    {
        return Err(exists_error(node, tag));
    }
    let actions: Vec<Value> = node_names
        .iter()
        .map(|node| {
            json!({
                "type": "blockdev-snapshot-internal-sync",
                "data": { "device": node, "name": tag },
            })
        })
        .collect();
    let started = Instant::now();
    qmp.execute_with_timeout(
        "transaction",
        Some(json!({ "actions": actions })),
        COMMAND_TIMEOUT,
    )
    .await?;
    Ok(started.elapsed())
}

/// Snapshot with memory state: the `snapshot-save` job.
pub(crate) async fn save(
    qmp: &Qmp,
    jobs: &watch::Receiver<u64>,
    tag: &str,
    vmstate_node: &str,
    node_names: &[String],
) -> Result<(), BackendError> {
    check_tag(tag)?;
    check_vmstate_listed(vmstate_node, node_names)?;
    let nodes = qcow2_nodes(qmp, node_names).await?;
    if let Some(node) = nodes
        .iter()
        .find(|n| n.snapshots.iter().any(|s| s.name == tag))
    {
        return Err(exists_error(node, tag));
    }
    let arguments = json!({
        "job-id": SAVE_JOB,
        "tag": tag,
        "vmstate": vmstate_node,
        "devices": node_names,
    });
    run_job(qmp, jobs, "snapshot-save", SAVE_JOB, arguments).await
}

/// Revert to a snapshot with memory state: the `snapshot-load` job.
pub(crate) async fn load(
    qmp: &Qmp,
    jobs: &watch::Receiver<u64>,
    tag: &str,
    vmstate_node: &str,
    node_names: &[String],
) -> Result<(), BackendError> {
    check_tag(tag)?;
    check_vmstate_listed(vmstate_node, node_names)?;
    let nodes = qcow2_nodes(qmp, node_names).await?;
    for node in &nodes {
        let Some(snap) = node.snapshots.iter().find(|s| s.name == tag) else {
            return Err(refused(format!(
                "disk {:?} has no snapshot {tag:?}; its snapshots are: {}",
                node.name,
                tags(node)
            )));
        };
        if node.name == vmstate_node && !snap.has_vm_state() {
            return Err(refused(format!(
                "snapshot {tag:?} holds no memory state (it was taken disk-only); revert to it \
                 with the VM stopped"
            )));
        }
    }
    let arguments = json!({
        "job-id": LOAD_JOB,
        "tag": tag,
        "vmstate": vmstate_node,
        "devices": node_names,
    });
    run_job(qmp, jobs, "snapshot-load", LOAD_JOB, arguments).await
}

/// Deletes `tag` from every node in `node_names` that has it.
pub(crate) async fn delete(
    qmp: &Qmp,
    node_names: &[String],
    tag: &str,
) -> Result<(), BackendError> {
    check_tag(tag)?;
    let nodes = qcow2_nodes(qmp, node_names).await?;
    let holders: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.snapshots.iter().any(|s| s.name == tag))
        .collect();
    if holders.is_empty() {
        let known = nodes.first().map(tags).unwrap_or_else(|| "(none)".into());
        return Err(refused(format!(
            "the VM has no snapshot {tag:?}; its snapshots are: {known}"
        )));
    }
    for node in holders {
        qmp.execute_with_timeout(
            "blockdev-snapshot-delete-internal-sync",
            Some(json!({ "device": node.name, "name": tag })),
            COMMAND_TIMEOUT,
        )
        .await?;
    }
    Ok(())
}

/// The snapshots of one node, oldest first.
pub(crate) async fn list(qmp: &Qmp, node_name: &str) -> Result<Vec<SnapshotInfo>, BackendError> {
    let node = nodes(qmp)
        .await?
        .into_iter()
        .find(|n| n.name == node_name)
        .ok_or_else(|| refused(format!("the VM has no disk node {node_name:?}")))?;
    Ok(node.snapshots)
}

fn check_vmstate_listed(vmstate_node: &str, node_names: &[String]) -> Result<(), BackendError> {
    if node_names.iter().any(|n| n == vmstate_node) {
        Ok(())
    } else {
        Err(refused(format!(
            "the memory state's disk {vmstate_node:?} must be one of the snapshotted disks"
        )))
    }
}

/// Starts a job and waits for it to conclude; its error, if any, becomes the result. The job is
/// dismissed either way.
async fn run_job(
    qmp: &Qmp,
    jobs: &watch::Receiver<u64>,
    command: &str,
    job_id: &str,
    arguments: Value,
) -> Result<(), BackendError> {
    let mut changes = jobs.clone();
    if let Some(stale) = find_job(qmp, job_id).await? {
        if job_status(&stale) != "concluded" {
            return Err(refused(format!(
                "a {command} job is already running in this VM ({}); wait for it to finish",
                job_status(&stale)
            )));
        }
        dismiss(qmp, job_id).await?;
    }
    changes.borrow_and_update();
    qmp.execute(command, Some(arguments)).await?;
    loop {
        changes.borrow_and_update();
        let Some(job) = find_job(qmp, job_id).await? else {
            return Err(refused(format!(
                "the {command} job disappeared before it concluded"
            )));
        };
        if job_status(&job) == "concluded" {
            dismiss(qmp, job_id).await?;
            return match job.get("error").and_then(Value::as_str) {
                Some(error) => Err(refused(format!("{command} failed: {error}"))),
                None => Ok(()),
            };
        }
        if changes.changed().await.is_err() {
            // The event pump ended: QMP is gone, QEMU with it.
            return Err(QmpError::Closed.into());
        }
    }
}

async fn find_job(qmp: &Qmp, job_id: &str) -> Result<Option<Value>, BackendError> {
    let reply = qmp.execute("query-jobs", None).await?;
    Ok(reply
        .as_array()
        .and_then(|jobs| {
            jobs.iter()
                .find(|j| j.get("id").and_then(Value::as_str) == Some(job_id))
        })
        .cloned())
}

fn job_status(job: &Value) -> &str {
    job.get("status")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
}

async fn dismiss(qmp: &Qmp, job_id: &str) -> Result<(), BackendError> {
    qmp.execute("job-dismiss", Some(json!({ "id": job_id })))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_disk_comes_first_and_read_only_disks_are_left_out() {
        let disks = [("vd1", false), ("vd2", true), ("vd3", false)];
        let boot = Boot::Disk { disk: "/d".into() };
        assert_eq!(
            disk_nodes(&boot, disks.into_iter()),
            ["disk0", "vd1", "vd3"]
        );
        let boot = Boot::Kernel {
            kernel: "/k".into(),
            initrd: None,
            cmdline: None,
        };
        assert_eq!(disk_nodes(&boot, disks.into_iter()), ["vd1", "vd3"]);
    }

    #[test]
    fn the_vmstate_disk_must_be_snapshotted_too() {
        let nodes = vec!["vd1".to_string()];
        assert!(check_vmstate_listed("vd1", &nodes).is_ok());
        let err = check_vmstate_listed("vd9", &nodes).unwrap_err();
        assert!(err.to_string().contains("\"vd9\" must be one of"), "{err}");
    }
}
