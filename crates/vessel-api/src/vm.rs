use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// QEMU machine type. `microvm` is the default for direct kernel boot (fast, minimal devices);
/// `q35` for disk boot (firmware, PCI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Machine {
    Microvm,
    Q35,
}

impl Machine {
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        }
    }
}

/// The VM's built-in NIC: none, or QEMU user-mode NAT. NICs on networks are in `nics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NicKind {
    None,
    User,
}

/// What the daemon does when the VM stops without being asked to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Leave it stopped (or crashed).
    #[default]
    Never,
    /// Restart after a crash (QEMU died, guest panicked); a clean guest power-off stays off.
    OnFailure,
    /// Restart whenever it stops without a stop request, including a guest power-off.
    Always,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }
}

/// How the VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Boot {
    /// Direct kernel boot: QEMU loads the kernel (and initrd) itself.
    Kernel {
        kernel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initrd: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cmdline: Option<String>,
    },
    /// Boot from a disk image through the firmware.
    Disk { disk: String },
    /// Boot from the VM's first attached disk (`disks[0]`, a pool volume) through the firmware:
    /// how VMs created from an image boot.
    FirstDisk,
}

/// The validated, stored description of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub boot: Boot,
    pub machine: Machine,
    pub nic: NicKind,
    pub restart_policy: RestartPolicy,
    /// Pool volumes attached as SCSI disks, in attach order. A Linux guest usually names them
    /// sda, sdb, ... in this order; their serial numbers are the volume names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<VmDisk>,
    /// A cloud-init NoCloud seed is attached (as a CD-ROM labelled `cidata`); its user-data is
    /// kept encrypted by the daemon, not in the spec.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cloud_init: bool,
    /// NICs on networks (taps on bridges, or user-mode NAT), in order: the guest names them
    /// eth0, eth1, ... after the `nic` of kind `user`, if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<crate::VmNic>,
}

/// A pool volume attached to a VM. It is a SCSI disk on the VM's virtio-scsi controller, which
/// takes disks while the VM runs (hot-plug) on every machine type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmDisk {
    pub pool: String,
    pub volume: String,
    /// The guest cannot write to the disk.
    #[serde(default)]
    pub read_only: bool,
    /// Several running VMs may use the volume at once (for cluster file systems). Without it,
    /// a volume is written by one running VM at a time, which QEMU's image locks enforce.
    #[serde(default)]
    pub shareable: bool,
    /// The volume was made for this VM (its root disk from an image) and is deleted with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_with_vm: bool,
}

/// `POST /v1/vms/{name}/disks`: attach a pool volume, also while the VM runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachDiskRequest {
    /// The volume's pool; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    pub volume: String,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub shareable: bool,
}

/// `POST /v1/vms`. Exactly one of `kernel`, `disk` or `image` must be given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// A kernel file on the daemon's host to boot directly (needs host.files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// An initrd file on the daemon's host (needs host.files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// An image of kind `kernel` to boot directly (instead of `kernel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_image: Option<String>,
    /// An image of kind `initrd` (instead of `initrd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// A disk image file on the daemon's host to boot from (needs host.files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<NicKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Start the VM once it is created.
    #[serde(default)]
    pub start: bool,
    /// Make the VM's root disk from this image (volume `<name>-root`) and boot from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Size of the root disk made from the image, in bytes; at least the image's size (which is
    /// the default). The guest grows its file system into it (cloud-init's growpart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size_bytes: Option<u64>,
    /// Copy the image instead of a linked clone (independent of it, slower to make).
    #[serde(default)]
    pub full_clone: bool,
    /// Encrypt the root disk with a key of its own (a full, encrypting copy of the image).
    #[serde(default)]
    pub encrypted: bool,
    /// The pool for the root disk; the image's pool when absent (linked clones must stay in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// cloud-init user-data (`#cloud-config` YAML or a script); attaches a NoCloud seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// cloud-init network-config (version 1 or 2); attaches a NoCloud seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<String>,
    /// NICs on networks, in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<crate::AddNicRequest>,
    /// The project the VM belongs to (its quota, who may see and change it); `default` when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// `PATCH /v1/vms/{name}`: only allowed while the VM is stopped. Absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditVmRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// A kernel file on the daemon's host (needs host.files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// An initrd file on the daemon's host (needs host.files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// A disk image file on the daemon's host (needs host.files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<NicKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
}

/// `POST /v1/vms/{name}/stop`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopVmRequest {
    /// Skip the ACPI power-down and end QEMU at once.
    #[serde(default)]
    pub force: bool,
    /// Seconds to wait for the guest to power off before forcing (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// The state the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Running,
    Paused,
    Stopped,
}

/// The state the daemon observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Stopped,
    Starting,
    Running,
    Paused,
    Stopping,
    /// QEMU died or the guest panicked without being asked to stop; `reason` says how.
    Crashed,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Crashed => "crashed",
        }
    }

    /// Whether a QEMU process exists for the VM in this state.
    pub fn has_process(self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Running | VmState::Paused | VmState::Stopping
        )
    }
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Running => "running",
            DesiredState::Paused => "paused",
            DesiredState::Stopped => "stopped",
        }
    }
}

/// A VM as the API shows it: its spec, what was asked, and what is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    pub spec: VmSpec,
    /// The project the VM belongs to.
    #[serde(default = "default_project")]
    pub project: String,
    pub desired_state: DesiredState,
    pub state: VmState,
    /// Why the VM is in its state, when that is not obvious (crash reason, last error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `kvm` or `tcg` while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    /// Restarts the daemon made under the restart policy.
    pub restart_count: u32,
    pub created_at_ms: u64,
    pub state_changed_at_ms: u64,
}

/// `POST /v1/vms/{name}/reboot`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebootVmRequest {
    /// Hard reset (same QEMU process) instead of a clean power-off and start.
    #[serde(default)]
    pub force: bool,
}

/// A snapshot of a VM: its disks (and, with `memory`, its running state) at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub name: String,
    pub created_at_ms: u64,
    /// The running state (RAM, devices) was saved too: reverting resumes the VM where it was.
    pub memory: bool,
    /// Bytes of saved running state (0 without `memory`).
    pub vm_state_bytes: u64,
    /// The snapshot the VM was at when this one was taken: the chain, newest last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The VM's current state descends from this snapshot (the last taken or reverted to).
    pub current: bool,
    /// The VM's settings when the snapshot was taken; a revert restores them.
    pub spec: VmSpec,
}

/// `POST /v1/vms/{name}/snapshots`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    pub name: String,
    /// Save the running state too (the VM must be running); the guest pauses while it is saved.
    #[serde(default)]
    pub memory: bool,
}

/// One network interface as the guest sees it (from the guest agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuestInterface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// `address/prefix`.
    pub addresses: Vec<String>,
}

/// `GET /v1/vms/{name}/guest`: what the guest agent reports, when the guest runs one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuestInfo {
    /// A QEMU guest agent answered in the guest.
    pub agent: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<GuestInterface>,
    /// Why there is nothing to show, when there is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

pub(crate) fn default_project() -> String {
    vessel_auth::DEFAULT_PROJECT.to_string()
}
