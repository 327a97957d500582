//! How the daemon's state sits in the store. One place for key names and record shapes.
//!
//! - `vms/<name>/spec`    [`VmRecord`]: the spec (what the user described)
//! - `vms/<name>/desired` [`DesiredState`]: what the user asked for; its own key so that a
//!   start or stop is a blind write that never races with an edit of the spec
//! - `vms/<name>/status` [`VmStatus`]: the observed state (what the reconciler saw)
//! - `ops/<id>`          [`vessel_api::Operation`]: one per request, until pruned
//! - `events/<seq>`      [`Event`]: what happened, newest last, bounded (see `common/events.rs`)
//! - `networks/`, `ipam/`, `macs/`: see [`crate::network::service`]

use serde::{Deserialize, Serialize};
pub use vessel_api::Event;
use vessel_api::{ApiError, DesiredState, Operation, Usage, Vm, VmSpec, VmState};

pub const VMS_PREFIX: &str = "vms/";
pub const OPS_PREFIX: &str = "ops/";

pub fn spec_key(name: &str) -> String {
    format!("{VMS_PREFIX}{name}/spec")
}

pub fn desired_key(name: &str) -> String {
    format!("{VMS_PREFIX}{name}/desired")
}

pub fn status_key(name: &str) -> String {
    format!("{VMS_PREFIX}{name}/status")
}

pub fn vm_prefix(name: &str) -> String {
    format!("{VMS_PREFIX}{name}/")
}

pub fn op_key(id: &str) -> String {
    format!("{OPS_PREFIX}{id}")
}

/// The user's description of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub spec: VmSpec,
    pub created_at_ms: u64,
    /// The VM's project; records from before projects existed belong to `default`.
    #[serde(default = "default_project")]
    pub project: String,
}

pub fn default_project() -> String {
    vessel_auth::DEFAULT_PROJECT.to_string()
}

/// The reconciler's side of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    pub state: VmState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The QEMU process, identified by pid and start time (pids get reused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    #[serde(default)]
    pub restart_count: u32,
    pub state_changed_at_ms: u64,
}

impl VmStatus {
    pub fn stopped(now_ms: u64) -> Self {
        VmStatus {
            state: VmState::Stopped,
            reason: None,
            pid: None,
            pid_start_time: None,
            accelerator: None,
            restart_count: 0,
            state_changed_at_ms: now_ms,
        }
    }
}

/// The API view of a VM from its two records.
pub fn vm_view(record: &VmRecord, desired: DesiredState, status: &VmStatus) -> Vm {
    Vm {
        spec: record.spec.clone(),
        project: record.project.clone(),
        desired_state: desired,
        state: status.state,
        reason: status.reason.clone(),
        pid: status.pid,
        accelerator: status.accelerator.clone(),
        restart_count: status.restart_count,
        created_at_ms: record.created_at_ms,
        state_changed_at_ms: status.state_changed_at_ms,
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records always serialize")
}

pub fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("corrupt record at {key}: {e}"))
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An operation as stored: the API's view plus what the worker needs to carry it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpRecord {
    #[serde(flatten)]
    pub operation: Operation,
    /// The desired state this request set; a later request that changes it supersedes this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<DesiredState>,
    /// The edit to apply, for edit operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit: Option<vessel_api::EditVmRequest>,
    /// The disk to attach or detach, for disk operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<vessel_api::VmDisk>,
    /// For a create from an image: how to make the root disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision: Option<Provision>,
    /// For snapshot operations: which snapshot (and, for a create, with memory or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<vessel_api::CreateSnapshotRequest>,
    /// For a disk resize: the new size in bytes (the disk is `disk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// For NIC operations: the NIC to add (already reserved) or remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<vessel_api::VmNic>,
    /// Set when the operation is run again after a daemon restart cut it short: part of its
    /// work may be done (a disk attach or detach finds its spec change already made).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// The host that carries it out (the one that runs the VM, or holds the pool of a host
    /// operation); only its daemon dispatches it. Empty in records written before hosts had
    /// names: those are this host's (see [`OpRecord::is_for`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
}

impl OpRecord {
    /// Whether the daemon of `host` carries this operation out.
    pub fn is_for(&self, host: &str) -> bool {
        self.host.is_empty() || self.host == host
    }
}

/// A VM's snapshots live outside `vms/` so that a snapshot name can never be read as one of
/// the VM's own records: `snapshots/<vm>/<name>`.
pub const SNAPSHOTS_PREFIX: &str = "snapshots/";

pub fn snapshots_prefix(vm: &str) -> String {
    format!("{SNAPSHOTS_PREFIX}{vm}/")
}

pub fn snapshot_key(vm: &str, name: &str) -> String {
    format!("{SNAPSHOTS_PREFIX}{vm}/{name}")
}

/// The snapshot the VM's current state descends from: `snapshots/<vm>` (no trailing slash).
pub fn snapshot_head_key(vm: &str) -> String {
    format!("{SNAPSHOTS_PREFIX}{vm}")
}

/// How a create makes the VM's root disk (`spec.disks[0]`) from an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provision {
    pub image: String,
    /// The image's pool (a linked clone lives in it too).
    pub image_pool: String,
    /// Root disk size; the image's when absent.
    pub size_bytes: Option<u64>,
    pub full_clone: bool,
    pub encrypted: bool,
}

/// Where a VM's cloud-init data is kept, wrapped by the master key (it may hold passwords).
pub fn cloud_init_key(name: &str) -> String {
    format!("{VMS_PREFIX}{name}/cloudinit")
}

/// A VM's cloud-init data, as wrapped and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudInitData {
    pub user_data: Option<String>,
    pub network_config: Option<String>,
}

/// A VM's three records, read together in one consistent listing.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub record: VmRecord,
    pub desired: DesiredState,
    pub status: VmStatus,
}

impl Loaded {
    pub fn view(&self) -> Vm {
        vm_view(&self.record, self.desired, &self.status)
    }
}

/// Groups a listing of `vms/` (sorted by key) into VMs. A VM whose spec is missing is skipped: it
/// is being deleted or was never fully created.
pub fn group_vms(kvs: &[vessel_store::KeyValue]) -> anyhow::Result<Vec<Loaded>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < kvs.len() {
        let name = vm_name_of(&kvs[i].key);
        let (mut record, mut desired, mut status) = (None, DesiredState::Stopped, None);
        while i < kvs.len() && vm_name_of(&kvs[i].key) == name {
            let kv = &kvs[i];
            match kv.key.rsplit('/').next() {
                Some("spec") => record = Some(decode::<VmRecord>(&kv.key, &kv.value)?),
                Some("desired") => desired = decode(&kv.key, &kv.value)?,
                Some("status") => status = Some(decode::<VmStatus>(&kv.key, &kv.value)?),
                _ => {}
            }
            i += 1;
        }
        if let Some(record) = record {
            let status = status.unwrap_or_else(|| VmStatus::stopped(record.created_at_ms));
            out.push(Loaded {
                record,
                desired,
                status,
            });
        }
    }
    Ok(out)
}

fn vm_name_of(key: &str) -> &str {
    let rest = key.strip_prefix(VMS_PREFIX).unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

/// Reads one VM's records.
pub async fn load_vm(
    store: &dyn vessel_store::Store,
    name: &str,
) -> anyhow::Result<Option<Loaded>> {
    let (kvs, _) = store.list(&vm_prefix(name)).await?;
    Ok(group_vms(&kvs)?.into_iter().next())
}

/// Options of an action request.
#[derive(Debug, Clone, Default)]
pub struct ActionOptions {
    pub force: bool,
    pub timeout_secs: Option<u64>,
    pub edit: Option<vessel_api::EditVmRequest>,
    /// The disk of an attach or detach.
    pub disk: Option<vessel_api::VmDisk>,
    /// The snapshot of a snapshot operation.
    pub snapshot: Option<vessel_api::CreateSnapshotRequest>,
    /// The new size of a disk resize.
    pub size_bytes: Option<u64>,
    /// The NIC of an add or remove.
    pub nic: Option<vessel_api::VmNic>,
}

/// What one VM counts against its project's quota.
pub fn vm_usage(record: &VmRecord) -> Usage {
    Usage {
        vms: 1,
        vcpus: u64::from(record.spec.cpus),
        memory_mib: record.spec.memory_mib,
        ..Usage::default()
    }
}

/// What a project's VMs count against its quota (the VMs' quota counter).
pub async fn project_usage(
    store: &dyn vessel_store::Store,
    project: &str,
) -> Result<Usage, ApiError> {
    let (kvs, _) = store
        .list(VMS_PREFIX)
        .await
        .map_err(crate::common::errors::store_error)?;
    let mut total = Usage::default();
    let vms = group_vms(&kvs).map_err(crate::common::errors::internal)?;
    for vm in vms.iter().filter(|vm| vm.record.project == project) {
        total.add(&vm_usage(&vm.record));
    }
    Ok(total)
}
