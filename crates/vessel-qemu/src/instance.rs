//! [`Backend`] and [`Instance`] for QEMU.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use vessel_api::{Boot, Machine};
use vessel_qmp::{EventStream, Qmp, QmpEvent};
use vessel_storage::SnapshotInfo;

use crate::cmdline::{self, CmdlineInputs};
use crate::disk::{is_disk_node_name, PluggedDisk};
use crate::nic::{NicBackend, NicPlan};
use crate::process::{self, ExitWatch, InheritedSockets, ProcessId};
use crate::snapshot;
use crate::uid::{QemuUids, UidLease, UidRange};
use crate::{
    Backend, BackendError, DiskFile, Instance, InstanceEvent, LaunchRequest, RunFiles, RunState,
};

/// How long QEMU may take from exec to a finished QMP handshake. Generous because a loaded
/// TCG host can be slow; a QEMU that fails exits, which ends the wait early.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The QEMU backend.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    binary: String,
    /// Leave the vCPUs stopped after start-up ([`Backend::launch_paused`]).
    start_paused: bool,
    /// The uids of this backend's QEMUs, each running as its own user; `None`: QEMU keeps the
    /// daemon's user (separate users are off, or the daemon is not root).
    uids: Option<Arc<QemuUids>>,
}

impl QemuBackend {
    pub fn new(binary: impl Into<String>) -> Self {
        QemuBackend {
            binary: binary.into(),
            start_paused: false,
            uids: None,
        }
    }

    /// Runs each QEMU as a user of its own from `range` (needs a root daemon).
    pub fn with_uid_range(mut self, range: Option<UidRange>) -> Self {
        self.uids = range.map(QemuUids::new);
        self
    }
}

impl Default for QemuBackend {
    fn default() -> Self {
        QemuBackend::new("qemu-system-x86_64")
    }
}

#[async_trait]
impl Backend for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<Box<dyn Instance>, BackendError> {
        let files = RunFiles::in_dir(&request.run_dir);
        prepare_run_dir(&request.run_dir, &files)?;
        let disk_format = match &request.spec.boot {
            Boot::Disk { disk } => Some(vessel_storage::detect_format(Path::new(disk)).await?),
            Boot::Kernel { .. } | Boot::FirstDisk => None,
        };
        // One pipe per encrypted disk, in disk order, as the command line expects them.
        let secrets = request
            .disks
            .iter()
            .filter_map(|d| d.key.as_ref().map(|key| (d.secret_id(), key)))
            .map(|(id, key)| vessel_storage::SecretPipe::for_volume_key(id, key))
            .collect::<std::io::Result<Vec<_>>>()?;
        let sockets = InheritedSockets {
            qmp: UnixListener::bind(&files.qmp_socket)?,
            console: UnixListener::bind(&files.console_socket)?,
            agent: UnixListener::bind(&files.agent_socket)?,
            secrets: secrets.iter().map(|s| s.fd()).collect(),
            taps: request
                .nics
                .iter()
                .filter_map(|n| match &n.backend {
                    crate::nic::NicBackend::Tap(fd) => Some(fd.as_raw_fd()),
                    crate::nic::NicBackend::User => None,
                })
                .collect(),
            boot: request.boot_files.iter().map(|f| f.as_raw_fd()).collect(),
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&files.qemu_log)?;
        let pid_file = files.pid_file.to_string_lossy().into_owned();
        let lease = self.uids.as_ref().map(|uids| uids.lease()).transpose()?;
        let seed = request
            .seed
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        let args = cmdline::build(&CmdlineInputs {
            spec: &request.spec,
            accel: request.accel,
            pid_file: &pid_file,
            disk_format,
            host_tsc_khz: host_tsc_khz(),
            disks: &request.disks,
            seed: seed.as_deref(),
            nics: &request.nics,
            runas: lease.as_ref().map(UidLease::uid),
            boot_fds: !request.boot_files.is_empty(),
        });
        tracing::debug!(vm = %request.spec.name, ?args, "launching QEMU");
        let child = process::spawn(&self.binary, &args, sockets, log, lease.is_some()).map_err(
            |source| BackendError::Spawn {
                binary: self.binary.clone(),
                source,
            },
        )?;
        drop(secrets);
        let pid = child.id().unwrap_or_default();
        let exit = ExitWatch::Child(child);
        let attached = match attach(&files).await {
            Ok(attached) => attached,
            Err(e) => return Err(early_exit(exit, lease, &files, e).await),
        };
        let id = ProcessId::of(pid).map_err(|_| BackendError::EarlyExit {
            detail: process::last_log_line(&files.qemu_log)
                .unwrap_or_else(|| "QEMU vanished".into()),
        })?;
        let instance = QemuInstance::new(id, attached, exit, lease);
        if !self.start_paused {
            instance.qmp.execute("cont", None).await?;
        }
        Ok(Box::new(instance))
    }

    async fn launch_paused(
        &self,
        request: &LaunchRequest,
    ) -> Result<Box<dyn Instance>, BackendError> {
        let paused = QemuBackend {
            start_paused: true,
            ..self.clone()
        };
        paused.launch(request).await
    }

    async fn adopt(
        &self,
        request: &LaunchRequest,
        id: ProcessId,
    ) -> Result<Box<dyn Instance>, BackendError> {
        if !id.is_alive() {
            return Err(BackendError::NotAdoptable {
                pid: id.pid,
                why: "it is not running".into(),
            });
        }
        let marker = format!("guest={},", request.spec.name.replace(',', ",,"));
        let cmdline = id.cmdline()?;
        if !cmdline.iter().any(|arg| arg.starts_with(&marker)) {
            return Err(BackendError::NotAdoptable {
                pid: id.pid,
                why: "its command line names another VM".into(),
            });
        }
        let mut exit = ExitWatch::pidfd(id.pid)?;
        let files = RunFiles::in_dir(&request.run_dir);
        let attached = match attach(&files).await {
            Ok(attached) => attached,
            Err(e) => {
                // Our VM's QEMU, but nobody can drive it: ended, so that it is never left
                // running without an owner (nor next to a second QEMU the restart policy starts).
                process::kill(id)?;
                let _ = tokio::time::timeout(Duration::from_secs(30), exit.wait()).await;
                return Err(e);
            }
        };
        // Its uid stays taken until it exits, so that no VM started from now on gets it.
        let lease = self.uids.as_ref().and_then(|uids| uids.recover(id.pid));
        Ok(Box::new(QemuInstance::new(id, attached, exit, lease)))
    }
}

/// The host's TSC rate in kHz, from the kernel's "cpu MHz" figure.
fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse::<f64>()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

fn prepare_run_dir(dir: &Path, files: &RunFiles) -> Result<(), BackendError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| BackendError::RunDir {
            path: dir.to_path_buf(),
            source,
        })?;
    for stale in [
        &files.qmp_socket,
        &files.console_socket,
        &files.agent_socket,
    ] {
        match std::fs::remove_file(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BackendError::RunDir {
                    path: stale.clone(),
                    source,
                })
            }
        }
    }
    Ok(())
}

struct Attached {
    qmp: Qmp,
    events: EventStream,
    console: UnixStream,
}

/// Connects to QMP (handshake) and to the console socket.
async fn attach(files: &RunFiles) -> Result<Attached, BackendError> {
    let stream = UnixStream::connect(&files.qmp_socket).await?;
    let (qmp, events) = Qmp::handshake(stream, HANDSHAKE_TIMEOUT).await?;
    let console = UnixStream::connect(&files.console_socket).await?;
    Ok(Attached {
        qmp,
        events,
        console,
    })
}

/// Turns a failed start into QEMU's own explanation, once the process is gone. Its uid is
/// freed only then: a QEMU still running keeps it until it exits.
async fn early_exit(
    mut exit: ExitWatch,
    lease: Option<UidLease>,
    files: &RunFiles,
    cause: BackendError,
) -> BackendError {
    let waited = tokio::time::timeout(Duration::from_secs(5), exit.wait()).await;
    if waited.is_err() {
        tokio::spawn(async move {
            exit.wait().await;
            drop(lease);
        });
    }
    match (waited, process::last_log_line(&files.qemu_log)) {
        (Ok((how, _)), Some(line)) => BackendError::EarlyExit {
            detail: format!("{line} ({how})"),
        },
        (Ok((how, _)), None) => BackendError::EarlyExit { detail: how },
        (Err(_), _) => cause,
    }
}

struct QemuInstance {
    id: ProcessId,
    /// Its own uid, if it runs as one (the lease itself lives with the exit watch).
    uid: Option<u32>,
    qmp: Qmp,
    events: Option<mpsc::UnboundedReceiver<InstanceEvent>>,
    console: Option<UnixStream>,
    /// Bumped by the event pump at every `JOB_STATUS_CHANGE`: what job waits wake up on.
    jobs: watch::Receiver<u64>,
}

impl QemuInstance {
    /// Drops the key object of a disk, if it has one (an unencrypted disk has none: the error
    /// QEMU gives then is expected and ignored).
    async fn remove_secret(&self, node_name: &str) {
        let id = format!("{node_name}-key");
        let _ = self
            .qmp
            .execute("object-del", Some(serde_json::json!({ "id": id })))
            .await;
    }

    fn new(id: ProcessId, attached: Attached, exit: ExitWatch, lease: Option<UidLease>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (jobs_tx, jobs) = watch::channel(0);
        let uid = lease.as_ref().map(UidLease::uid);
        tokio::spawn(pump_events(attached.events, exit, lease, tx, jobs_tx));
        QemuInstance {
            id,
            uid,
            qmp: attached.qmp,
            events: Some(rx),
            console: Some(attached.console),
            jobs,
        }
    }
}

/// The `opaque` tag of the fd sets of a disk's files. QEMU keeps it with each fd, so the sets
/// are found again by name (`query-fdsets`), also by a daemon that re-adopted the VM and never
/// saw them added.
fn fdset_tag(node_name: &str) -> String {
    format!("vessel-disk:{node_name}")
}

/// Opens a hot-plugged disk's files in the daemon and passes them to QEMU (`add-fd`, the fd
/// over SCM_RIGHTS), one fd set per file; returns QEMU's names for them (`/dev/fdset/N`), in
/// the order of [`DiskFile::files`].
///
/// QEMU runs as its own user by now and may not open the pool's files by path: a running
/// QEMU never opens a path. A file it may write gets two fds in its set, read-only and
/// read-write: QEMU picks the fd whose access mode matches its open, and it reopens an image
/// with the other mode when the permissions it needs change. On error, some sets may be added:
/// the caller removes them with [`remove_disk_fdsets`].
async fn add_disk_fdsets(qmp: &Qmp, disk: &DiskFile) -> Result<Vec<String>, BackendError> {
    let tag = fdset_tag(&disk.node_name);
    let mut filenames = Vec::new();
    for file in disk.files() {
        let mut set = add_fd(qmp, &tag, None, open_for(file.path, false)?).await?;
        if file.writable {
            set = add_fd(qmp, &tag, Some(set), open_for(file.path, true)?).await?;
        }
        filenames.push(format!("/dev/fdset/{set}"));
    }
    Ok(filenames)
}

/// One of a disk's files, opened by the daemon for QEMU: read-only, or read-write.
fn open_for(path: &Path, write: bool) -> std::io::Result<std::os::fd::OwnedFd> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map(Into::into)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))
}

/// Passes `fd` to QEMU into fd set `set` (a new one when `None`); returns the set's id.
async fn add_fd(
    qmp: &Qmp,
    tag: &str,
    set: Option<u64>,
    fd: std::os::fd::OwnedFd,
) -> Result<u64, BackendError> {
    let mut arguments = serde_json::json!({ "opaque": tag });
    if let Some(id) = set {
        arguments["fdset-id"] = id.into();
    }
    let reply = qmp.execute_with_fd("add-fd", Some(arguments), fd).await?;
    reply
        .get("fdset-id")
        .and_then(Value::as_u64)
        .ok_or_else(|| BackendError::Refused(format!("add-fd answered without an fd set: {reply}")))
}

/// Removes the fd sets of a disk's files (see [`add_disk_fdsets`]); QEMU closes their fds once
/// no block node uses them. Nothing to do for a disk that has none (cold-plugged at start).
async fn remove_disk_fdsets(qmp: &Qmp, node_name: &str) {
    let tag = fdset_tag(node_name);
    let sets = match qmp.execute("query-fdsets", None).await {
        Ok(sets) => sets,
        Err(e) => {
            tracing::warn!(node = node_name, error = %e, "could not list QEMU's fd sets");
            return;
        }
    };
    for id in fdsets_tagged(&sets, &tag) {
        if let Err(e) = qmp
            .execute("remove-fd", Some(serde_json::json!({ "fdset-id": id })))
            .await
        {
            tracing::warn!(node = node_name, fdset = id, error = %e, "could not remove an fd set");
        }
    }
}

/// The ids of the fd sets (a `query-fdsets` reply) that hold an fd tagged `tag`.
fn fdsets_tagged(sets: &Value, tag: &str) -> Vec<u64> {
    sets.as_array()
        .into_iter()
        .flatten()
        .filter(|set| {
            set.get("fds")
                .and_then(Value::as_array)
                .is_some_and(|fds| fds.iter().any(|fd| fd.get("opaque") == Some(&tag.into())))
        })
        .filter_map(|set| set.get("fdset-id").and_then(Value::as_u64))
        .collect()
}

/// The data disks QEMU holds something of, from its answers to `qom-list /machine/peripheral`,
/// `query-named-block-nodes`, `query-fdsets` and `qom-list /objects`; by node name.
fn plugged_disks(
    devices: &Value,
    nodes: &Value,
    fdsets: &Value,
    objects: &Value,
) -> Vec<PluggedDisk> {
    let mut found: std::collections::BTreeMap<String, PluggedDisk> = Default::default();
    fn entry<'a>(
        found: &'a mut std::collections::BTreeMap<String, PluggedDisk>,
        node: &str,
    ) -> &'a mut PluggedDisk {
        found
            .entry(node.to_string())
            .or_insert_with(|| PluggedDisk {
                node_name: node.to_string(),
                ..Default::default()
            })
    }
    let names = |list: &Value, key: &str| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item.get(key).and_then(Value::as_str))
            .map(str::to_string)
            .collect()
    };
    for id in names(devices, "name") {
        if let Some(node) = id.strip_suffix("-dev").filter(|n| is_disk_node_name(n)) {
            entry(&mut found, node).device = true;
        }
    }
    for node in names(nodes, "node-name") {
        if is_disk_node_name(&node) {
            entry(&mut found, &node).node = true;
        }
    }
    for set in fdsets.as_array().into_iter().flatten() {
        for fd in set
            .get("fds")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let tag = fd.get("opaque").and_then(Value::as_str).unwrap_or_default();
            if let Some(node) = tag
                .strip_prefix("vessel-disk:")
                .filter(|n| is_disk_node_name(n))
            {
                entry(&mut found, node).fdsets = true;
            }
        }
    }
    for id in names(objects, "name") {
        if let Some(node) = id.strip_suffix("-key").filter(|n| is_disk_node_name(n)) {
            entry(&mut found, node).secret = true;
        }
    }
    found.into_values().collect()
}

/// Forwards QMP events as [`InstanceEvent`]s and, once QMP is gone, the process's exit. The
/// process's uid is freed when it has exited.
async fn pump_events(
    mut events: EventStream,
    mut exit: ExitWatch,
    lease: Option<UidLease>,
    tx: mpsc::UnboundedSender<InstanceEvent>,
    jobs: watch::Sender<u64>,
) {
    while let Some(event) = events.next().await {
        if event.event == "JOB_STATUS_CHANGE" {
            jobs.send_modify(|n| *n = n.wrapping_add(1));
        }
        if let Some(mapped) = map_event(&event) {
            let _ = tx.send(mapped);
        }
    }
    let (detail, clean) = exit.wait().await;
    drop(lease);
    let _ = tx.send(InstanceEvent::Exited { detail, clean });
}

fn map_event(event: &QmpEvent) -> Option<InstanceEvent> {
    let data = &event.data;
    match event.event.as_str() {
        "STOP" => Some(InstanceEvent::Paused),
        "RESUME" => Some(InstanceEvent::Resumed),
        "RESET" => Some(InstanceEvent::Reset),
        "GUEST_PANICKED" => Some(InstanceEvent::GuestPanicked),
        "DEVICE_DELETED" => {
            data.get("device")
                .and_then(Value::as_str)
                .map(|device| InstanceEvent::DeviceDeleted {
                    device: device.to_string(),
                })
        }
        "SHUTDOWN" => Some(InstanceEvent::Shutdown {
            guest: data.get("guest").and_then(Value::as_bool).unwrap_or(false),
            reason: data
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
        }),
        other => {
            tracing::trace!(event = other, "QMP event not mapped");
            None
        }
    }
}

#[async_trait]
impl Instance for QemuInstance {
    fn pid(&self) -> ProcessId {
        self.id
    }

    fn uid(&self) -> Option<u32> {
        self.uid
    }

    fn take_events(&mut self) -> Option<mpsc::UnboundedReceiver<InstanceEvent>> {
        self.events.take()
    }

    fn take_console(&mut self) -> Option<UnixStream> {
        self.console.take()
    }

    async fn status(&self) -> Result<RunState, BackendError> {
        let reply = self.qmp.execute("query-status", None).await?;
        Ok(match reply.get("status").and_then(Value::as_str) {
            Some("running") => RunState::Running,
            Some("paused") => RunState::Paused,
            Some("prelaunch") => RunState::Prelaunch,
            _ => RunState::Other,
        })
    }

    async fn power_down(&self) -> Result<(), BackendError> {
        self.qmp.execute("system_powerdown", None).await?;
        Ok(())
    }

    async fn pause(&self) -> Result<(), BackendError> {
        self.qmp.execute("stop", None).await?;
        Ok(())
    }

    async fn resume(&self) -> Result<(), BackendError> {
        self.qmp.execute("cont", None).await?;
        Ok(())
    }

    async fn reset(&self) -> Result<(), BackendError> {
        self.qmp.execute("system_reset", None).await?;
        Ok(())
    }

    fn kill(&self) -> Result<(), BackendError> {
        process::kill(self.id)?;
        Ok(())
    }

    async fn attach_disk(&self, disk: &DiskFile) -> Result<(), BackendError> {
        // An attach cut short (by a daemon kill) may have left some of this disk in QEMU: a
        // complete one is kept, the pieces of an incomplete one are removed before starting over.
        if let Some(found) = self
            .plugged_disks()
            .await?
            .into_iter()
            .find(|d| d.node_name == disk.node_name)
        {
            if found.complete() {
                return Ok(());
            }
            tracing::info!(node = %disk.node_name, ?found, "removing what an interrupted hot-plug left");
            if found.device {
                // A device without its node cannot be: QEMU refuses to remove a node in use.
                return Err(BackendError::Refused(format!(
                    "disk {}: QEMU has its device but not its block node",
                    disk.node_name
                )));
            }
            self.remove_block_node(&disk.node_name).await?;
        }
        if let Some(key) = &disk.key {
            // Over the QMP socket (owner-only), which the client never logs arguments of.
            self.qmp
                .execute(
                    "object-add",
                    Some(serde_json::json!({
                        "qom-type": "secret",
                        "id": disk.secret_id(),
                        "data": key.luks_passphrase().as_str(),
                        "format": "raw",
                    })),
                )
                .await?;
        }
        let added = async {
            let filenames = add_disk_fdsets(&self.qmp, disk).await?;
            self.qmp
                .execute("blockdev-add", Some(disk.blockdev_with(&filenames)))
                .await?;
            Ok::<(), BackendError>(())
        }
        .await;
        if let Err(e) = added {
            remove_disk_fdsets(&self.qmp, &disk.node_name).await;
            self.remove_secret(&disk.node_name).await;
            return Err(e);
        }
        if let Err(e) = self.qmp.execute("device_add", Some(disk.device())).await {
            // Leave nothing behind: the node would keep the image file open and locked.
            if let Err(undo) = self.remove_block_node(&disk.node_name).await {
                tracing::warn!(node = %disk.node_name, error = %undo, "could not undo blockdev-add");
            }
            return Err(e.into());
        }
        Ok(())
    }

    async fn attach_nic(&self, machine: Machine, nic: &NicPlan) -> Result<(), BackendError> {
        if machine != Machine::Q35 {
            return Err(BackendError::Refused(
                "NIC hot-plug needs a q35 VM (microvm has no PCI hot-plug); stop the VM, add the NIC, start it".into(),
            ));
        }
        let netdev = match &nic.backend {
            NicBackend::Tap(fd) => {
                let fd = fd.try_clone()?;
                let name = crate::nic::fd_name(&nic.id);
                self.qmp
                    .execute_with_fd("getfd", Some(serde_json::json!({ "fdname": name })), fd)
                    .await?;
                serde_json::json!({ "type": "tap", "id": crate::nic::netdev_id(&nic.id), "fd": name })
            }
            NicBackend::User => {
                serde_json::json!({ "type": "user", "id": crate::nic::netdev_id(&nic.id) })
            }
        };
        self.qmp.execute("netdev_add", Some(netdev)).await?;
        let device = crate::nic::device(machine, nic);
        if let Err(e) = self.qmp.execute("device_add", Some(device)).await {
            if let Err(undo) = self.remove_nic_backend(&nic.id).await {
                tracing::warn!(nic = %nic.id, error = %undo, "could not undo netdev_add");
            }
            return Err(e.into());
        }
        Ok(())
    }

    async fn unplug_nic(&self, nic_id: &str) -> Result<(), BackendError> {
        self.qmp
            .execute(
                "device_del",
                Some(serde_json::json!({ "id": crate::nic::device_id(nic_id) })),
            )
            .await?;
        Ok(())
    }

    async fn remove_nic_backend(&self, nic_id: &str) -> Result<(), BackendError> {
        self.qmp
            .execute(
                "netdev_del",
                Some(serde_json::json!({ "id": crate::nic::netdev_id(nic_id) })),
            )
            .await?;
        Ok(())
    }

    async fn unplug_disk(&self, node_name: &str) -> Result<(), BackendError> {
        self.qmp
            .execute(
                "device_del",
                Some(serde_json::json!({ "id": crate::disk::device_id(node_name) })),
            )
            .await?;
        Ok(())
    }

    async fn plugged_disks(&self) -> Result<Vec<PluggedDisk>, BackendError> {
        let devices = self
            .qmp
            .execute(
                "qom-list",
                Some(serde_json::json!({ "path": "/machine/peripheral" })),
            )
            .await?;
        let nodes = self
            .qmp
            .execute(
                "query-named-block-nodes",
                Some(serde_json::json!({ "flat": true })),
            )
            .await?;
        let fdsets = self.qmp.execute("query-fdsets", None).await?;
        let objects = self
            .qmp
            .execute("qom-list", Some(serde_json::json!({ "path": "/objects" })))
            .await?;
        Ok(plugged_disks(&devices, &nodes, &fdsets, &objects))
    }

    fn stats_probe(&self) -> std::sync::Arc<dyn crate::stats::StatsProbe> {
        std::sync::Arc::new(crate::stats::QmpProbe(self.qmp.clone()))
    }

    async fn resize_disk(&self, node_name: &str, size_bytes: u64) -> Result<(), BackendError> {
        self.qmp
            .execute(
                "block_resize",
                Some(serde_json::json!({ "node-name": node_name, "size": size_bytes })),
            )
            .await?;
        Ok(())
    }

    async fn remove_block_node(&self, node_name: &str) -> Result<(), BackendError> {
        if let Err(e) = self
            .qmp
            .execute(
                "blockdev-del",
                Some(serde_json::json!({ "node-name": node_name })),
            )
            .await
        {
            // Already gone (an unplug cut short after it): only the leftovers below remain.
            let still_there = self
                .plugged_disks()
                .await?
                .iter()
                .any(|d| d.node_name == node_name && d.node);
            if still_there {
                return Err(e.into());
            }
        }
        // The node's own fds are closed now; these are the daemon's copies QEMU still keeps.
        remove_disk_fdsets(&self.qmp, node_name).await;
        self.remove_secret(node_name).await;
        Ok(())
    }

    async fn snapshot_disks(&self, nodes: &[String], tag: &str) -> Result<Duration, BackendError> {
        snapshot::snapshot_disks(&self.qmp, nodes, tag).await
    }

    async fn snapshot_save(
        &self,
        tag: &str,
        vmstate_node: &str,
        nodes: &[String],
    ) -> Result<(), BackendError> {
        snapshot::save(&self.qmp, &self.jobs, tag, vmstate_node, nodes).await
    }

    async fn snapshot_load(
        &self,
        tag: &str,
        vmstate_node: &str,
        nodes: &[String],
    ) -> Result<(), BackendError> {
        snapshot::load(&self.qmp, &self.jobs, tag, vmstate_node, nodes).await
    }

    async fn snapshot_delete(&self, nodes: &[String], tag: &str) -> Result<(), BackendError> {
        snapshot::delete(&self.qmp, nodes, tag).await
    }

    async fn snapshot_list(&self, node: &str) -> Result<Vec<SnapshotInfo>, BackendError> {
        snapshot::list(&self.qmp, node).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(name: &str, data: Value) -> QmpEvent {
        QmpEvent {
            event: name.into(),
            data,
            timestamp_micros: 0,
        }
    }

    #[test]
    fn plugged_disks_are_found_by_their_names() {
        let a = "vd00000000000000aa";
        let b = "vd00000000000000bb";
        let c = "vd00000000000000cc";
        let devices = serde_json::json!([
            {"name": "type", "type": "string"},
            {"name": format!("{a}-dev"), "type": "child<scsi-hd>"},
            {"name": "nic0-dev", "type": "child<virtio-net-pci>"},
        ]);
        let nodes = serde_json::json!([
            {"node-name": a}, {"node-name": "#block123"}, {"node-name": b},
        ]);
        let fdsets = serde_json::json!([
            {"fdset-id": 1, "fds": [{"fd": 30, "opaque": format!("vessel-disk:{b}")}]},
            {"fdset-id": 2, "fds": [{"fd": 31, "opaque": format!("vessel-disk:{c}")}]},
        ]);
        let objects = serde_json::json!([{"name": format!("{c}-key")}, {"name": "rng0"}]);
        let found = plugged_disks(&devices, &nodes, &fdsets, &objects);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].complete() && found[0].node_name == a);
        assert!(!found[1].complete() && found[1].node && found[1].fdsets);
        assert!(!found[2].node && !found[2].device && found[2].fdsets && found[2].secret);
    }

    #[test]
    fn a_disks_fd_sets_are_found_by_their_tag() {
        let sets = json!([
            {"fdset-id": 1, "fds": [{"fd": 30, "opaque": "vessel-disk:vd1"}, {"fd": 31, "opaque": "vessel-disk:vd1"}]},
            {"fdset-id": 2, "fds": [{"fd": 32, "opaque": "vessel-disk:vd12"}]},
            {"fdset-id": 3, "fds": [{"fd": 33}]},
            {"fdset-id": 4, "fds": [{"fd": 34, "opaque": "vessel-disk:vd1"}]},
        ]);
        assert_eq!(fdsets_tagged(&sets, &fdset_tag("vd1")), vec![1, 4]);
        assert_eq!(fdsets_tagged(&sets, &fdset_tag("vd9")), Vec::<u64>::new());
    }

    #[test]
    fn guest_power_off_maps_to_a_guest_shutdown() {
        let mapped = map_event(&event(
            "SHUTDOWN",
            json!({"guest": true, "reason": "guest-shutdown"}),
        ));
        assert_eq!(
            mapped,
            Some(InstanceEvent::Shutdown {
                guest: true,
                reason: "guest-shutdown".into()
            })
        );
        assert_eq!(
            map_event(&event("STOP", json!({}))),
            Some(InstanceEvent::Paused)
        );
        assert_eq!(map_event(&event("POWERDOWN", json!({}))), None);
    }
}
