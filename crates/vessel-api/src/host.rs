use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckVerdict {
    Pass,
    Warn,
    Fail,
}

/// One line of `vessel host check`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostCheckItem {
    pub name: String,
    pub verdict: CheckVerdict,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostCheck {
    pub items: Vec<HostCheckItem>,
    /// The accelerator `auto` resolves to on this host, and why.
    pub accelerator: String,
    pub accelerator_reason: String,
}

/// What the daemon knows about the host it runs on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostInfo {
    /// This host's name in the store, fixed at the data dir's first start (`--host-name`, else
    /// the system hostname then); what its pools and volume keys are recorded under.
    #[serde(default)]
    pub name: String,
    /// The system hostname now.
    pub hostname: String,
    pub version: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub accelerator: String,
    pub accelerator_reason: String,
    pub qemu_version: String,
    pub vms_defined: u32,
    pub vms_running: u32,
}

/// `POST /v1/host/master-key/rotate`: what the rotation did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MasterKeyRotation {
    /// Stored secrets (volume keys) re-wrapped under the new master key.
    pub rewrapped: usize,
    /// Id of the master key now in use.
    pub key_id: String,
}
