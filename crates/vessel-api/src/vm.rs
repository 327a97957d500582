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

/// Network interface of the VM. Only QEMU user-mode NAT exists until managed networks land.
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
    /// Pool volumes attached as SCSI disks, in attach order (the guest sees sda, sdb, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<VmDisk>,
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

/// `POST /v1/vms`. Exactly one of `kernel` or `disk` must be given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
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
}

/// `PATCH /v1/vms/{name}`: only allowed while the VM is stopped. Absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditVmRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
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
