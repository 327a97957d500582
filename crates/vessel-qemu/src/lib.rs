//! The QEMU backend.
//!
//! The daemon talks to hypervisors through [`Backend`] and [`Instance`]; QEMU is the first
//! implementation. A VM's QEMU runs in its own session (it survives a daemon crash) and is driven
//! over QMP. Its sockets are bound by the daemon and handed to QEMU as file descriptors, so the
//! daemon can connect the moment QEMU is exec'd, with no polling for a socket file to appear.

pub mod accel;
pub mod cmdline;
pub mod disk;
pub mod guest_agent;
pub mod host;
mod instance;
pub mod nic;
mod process;
pub mod snapshot;
pub mod stats;
pub mod uid;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

pub use accel::{detect_accelerator, Accel, AccelChoice};
pub use disk::{BackingFile, DiskFile, PluggedDisk};
pub use instance::QemuBackend;
pub use process::ProcessId;
pub use uid::{UidRange, DEFAULT_UID_BASE, UID_SLOTS};
use vessel_api::VmSpec;
use vessel_storage::SnapshotInfo;

/// Everything needed to launch one VM.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub spec: VmSpec,
    pub accel: Accel,
    /// Directory owned by this VM: sockets, pid file, QEMU's own log.
    pub run_dir: PathBuf,
    /// The spec's data disks, resolved to files, in the spec's order.
    pub disks: Vec<DiskFile>,
    /// The cloud-init seed image to attach, if the VM has one. QEMU opens it at start; the
    /// caller may remove the file once the VM runs.
    pub seed: Option<PathBuf>,
    /// The spec's NICs on networks, with their open taps.
    pub nics: Vec<nic::NicPlan>,
    /// The boot files, opened by the daemon: the kernel and then the initrd (kernel boot), or
    /// the disk (disk boot). QEMU inherits them and is given `/dev/fd/N`, so it opens no path
    /// the daemon did not open itself. Empty: QEMU opens the spec's paths (backend tests).
    pub boot_files: Vec<std::sync::Arc<std::fs::File>>,
}

/// The files of a VM's run directory, in one place so that launch and adopt agree.
#[derive(Debug, Clone)]
pub struct RunFiles {
    pub qmp_socket: PathBuf,
    pub console_socket: PathBuf,
    /// The guest agent's port; QEMU listens on it, the daemon connects when it needs the agent.
    pub agent_socket: PathBuf,
    pub pid_file: PathBuf,
    pub qemu_log: PathBuf,
}

impl RunFiles {
    pub fn in_dir(dir: &Path) -> Self {
        RunFiles {
            qmp_socket: dir.join("qmp.sock"),
            console_socket: dir.join("console.sock"),
            agent_socket: dir.join("qga.sock"),
            pid_file: dir.join("qemu.pid"),
            qemu_log: dir.join("qemu.log"),
        }
    }
}

/// Something that happened to a running instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceEvent {
    /// The vCPUs stopped (pause).
    Paused,
    Resumed,
    /// The guest was reset (reboot from inside, or a hard reset).
    Reset,
    /// The guest is shutting down. `guest` is true when the guest asked for it itself.
    Shutdown {
        guest: bool,
        reason: String,
    },
    GuestPanicked,
    /// A device was removed (the end of a hot-unplug); `device` is its id.
    DeviceDeleted {
        device: String,
    },
    /// The process is gone. `detail` says how (exit code or signal, and QEMU's last words).
    Exited {
        detail: String,
        clean: bool,
    },
}

/// Observed run state as the hypervisor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    /// vCPUs never started: a launch was cut short before its `cont`.
    Prelaunch,
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("could not prepare the VM's run directory {path}")]
    RunDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start {binary}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU exited during start-up: {detail}")]
    EarlyExit { detail: String },
    #[error("QMP failed")]
    Qmp(#[from] vessel_qmp::QmpError),
    #[error("the process {pid} is not this VM's QEMU any more ({why})")]
    NotAdoptable { pid: u32, why: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The backend cannot do this for this VM; the text says why and what to do instead.
    #[error("{0}")]
    Refused(String),
    /// A snapshot operation was refused or failed; the text says why (QEMU's words included).
    #[error("{0}")]
    Snapshot(String),
}

/// A hypervisor that can launch VMs and re-attach to ones launched before a daemon restart.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Starts the VM and returns once its vCPUs run.
    async fn launch(&self, request: &LaunchRequest) -> Result<Box<dyn Instance>, BackendError>;
    /// Re-attaches to a VM process started earlier (by this or a previous daemon).
    async fn adopt(
        &self,
        request: &LaunchRequest,
        pid: ProcessId,
    ) -> Result<Box<dyn Instance>, BackendError>;
    /// Like [`Backend::launch`], but the vCPUs stay stopped (QEMU's `prelaunch` state): the
    /// guest has not run a single instruction. For reverting to a snapshot with memory state:
    /// [`Instance::snapshot_load`], then [`Instance::resume`].
    async fn launch_paused(
        &self,
        request: &LaunchRequest,
    ) -> Result<Box<dyn Instance>, BackendError> {
        let _ = request;
        Err(BackendError::Snapshot(format!(
            "the {} backend cannot start a VM paused",
            self.name()
        )))
    }
}

/// A running VM process.
#[async_trait]
pub trait Instance: Send + Sync {
    fn pid(&self) -> ProcessId;
    /// The user the process runs as, when it runs as one of its own (see [`uid`]).
    fn uid(&self) -> Option<u32> {
        None
    }
    /// Events in order; the stream ends after [`InstanceEvent::Exited`].
    fn take_events(&mut self) -> Option<mpsc::UnboundedReceiver<InstanceEvent>>;
    /// The serial console's byte stream (first caller only).
    fn take_console(&mut self) -> Option<UnixStream>;
    async fn status(&self) -> Result<RunState, BackendError>;
    /// ACPI power button.
    async fn power_down(&self) -> Result<(), BackendError>;
    async fn pause(&self) -> Result<(), BackendError>;
    async fn resume(&self) -> Result<(), BackendError>;
    /// Hard reset, like pressing the reset button.
    async fn reset(&self) -> Result<(), BackendError>;
    /// Ends the process at once (SIGKILL).
    fn kill(&self) -> Result<(), BackendError>;
    /// Hot-plugs a disk. All or nothing: on error the VM has no trace of it.
    async fn attach_disk(&self, disk: &DiskFile) -> Result<(), BackendError>;
    /// Asks to unplug a disk's device. The device is gone at the matching
    /// [`InstanceEvent::DeviceDeleted`]; then [`Instance::remove_block_node`] closes the file.
    async fn unplug_disk(&self, node_name: &str) -> Result<(), BackendError>;
    /// Closes a disk's block node once its device is gone. Also what is left of a node that is
    /// already gone (its fd sets, its key): idempotent.
    async fn remove_block_node(&self, node_name: &str) -> Result<(), BackendError>;
    /// Every data disk QEMU holds something of (see [`disk::PluggedDisk`]), found by name:
    /// what a worker that re-adopted QEMU, or re-runs an attach or a detach cut short by a
    /// daemon restart, compares with the spec.
    async fn plugged_disks(&self) -> Result<Vec<disk::PluggedDisk>, BackendError> {
        Err(BackendError::Refused(
            "this backend cannot list its disks".into(),
        ))
    }
    /// Hot-plugs a NIC (q35 only: it goes on its PCIe root port). All or nothing.
    async fn attach_nic(
        &self,
        machine: vessel_api::Machine,
        nic: &nic::NicPlan,
    ) -> Result<(), BackendError>;
    /// Asks to unplug a NIC's device; it is gone at the matching [`InstanceEvent::DeviceDeleted`],
    /// then [`Instance::remove_nic_backend`] closes its tap.
    async fn unplug_nic(&self, nic_id: &str) -> Result<(), BackendError>;
    async fn remove_nic_backend(&self, nic_id: &str) -> Result<(), BackendError>;
    /// A handle for the statistics sampler, which works alongside the VM's worker.
    fn stats_probe(&self) -> std::sync::Arc<dyn stats::StatsProbe>;
    /// Grows a disk while the VM runs (QMP `block_resize`); the guest is told the new size.
    async fn resize_disk(&self, node_name: &str, size_bytes: u64) -> Result<(), BackendError>;

    // Snapshots (see [`snapshot`]): internal qcow2 snapshots named `tag` in the disks whose
    // format nodes are `nodes` ([`snapshot::vm_disk_nodes`]).

    /// Disk-only snapshot of the running VM: one atomic QMP `transaction` of
    /// `blockdev-snapshot-internal-sync` for all `nodes`. Returns how long the transaction took,
    /// during which guest IO is drained and QEMU holds its big lock: the guest's pause.
    async fn snapshot_disks(&self, nodes: &[String], tag: &str) -> Result<Duration, BackendError> {
        let _ = (nodes, tag);
        Err(snapshot::unsupported())
    }
    /// Snapshot with the running state (RAM, devices) saved into `vmstate_node`: the
    /// `snapshot-save` job. The guest is paused while its state is written and resumes after.
    async fn snapshot_save(
        &self,
        tag: &str,
        vmstate_node: &str,
        nodes: &[String],
    ) -> Result<(), BackendError> {
        let _ = (tag, vmstate_node, nodes);
        Err(snapshot::unsupported())
    }
    /// Reverts the VM to a snapshot taken with [`Instance::snapshot_save`]: disks, RAM and
    /// devices (the `snapshot-load` job). On a VM started with [`Backend::launch_paused`] it stays
    /// paused until [`Instance::resume`]; a running VM keeps running from the restored state.
    async fn snapshot_load(
        &self,
        tag: &str,
        vmstate_node: &str,
        nodes: &[String],
    ) -> Result<(), BackendError> {
        let _ = (tag, vmstate_node, nodes);
        Err(snapshot::unsupported())
    }
    /// Deletes snapshot `tag` from every disk in `nodes` that has it
    /// (`blockdev-snapshot-delete-internal-sync`); an error if none has it.
    async fn snapshot_delete(&self, nodes: &[String], tag: &str) -> Result<(), BackendError> {
        let _ = (nodes, tag);
        Err(snapshot::unsupported())
    }
    /// The snapshots of one disk as the running QEMU sees them (`query-named-block-nodes`).
    async fn snapshot_list(&self, node: &str) -> Result<Vec<SnapshotInfo>, BackendError> {
        let _ = node;
        Err(snapshot::unsupported())
    }
}
