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
use vessel_api::{ApiError, DesiredState, Operation, OperationAction, Usage, Vm, VmSpec, VmState};

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
///
/// Stored as the API's [`Operation`] (flattened) with `payload` beside it. Records written
/// before the payload existed carry the same facts in optional fields (`edit`, `disk`,
/// `snapshot`, ...); [`StoredOp`] reads both shapes, so an operation left pending by the
/// previous version still runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredOp", into = "StoredOp")]
pub struct OpRecord {
    pub operation: Operation,
    /// The desired state this request set; a later request that changes it supersedes this one.
    pub target: Option<DesiredState>,
    /// What the operation is to do.
    pub payload: Payload,
    /// Set when the operation is run again after a daemon restart cut it short: part of its
    /// work may be done (a disk attach or detach finds its spec change already made).
    pub resumed: bool,
    /// The host that carries it out (the one that runs the VM, or holds the pool of a host
    /// operation); only its daemon dispatches it. Empty in records written before hosts had
    /// names: those are this host's (see [`OpRecord::is_for`]).
    pub host: String,
}

impl OpRecord {
    /// Whether the daemon of `host` carries this operation out.
    pub fn is_for(&self, host: &str) -> bool {
        self.host.is_empty() || self.host == host
    }
}

/// What an operation is to do, with what it needs for that: one variant per action a VM's
/// worker carries out. Host operations (imports, exports, copies) run in a host task and carry
/// nothing here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// A create; from an image, how to make the root disk.
    Create {
        provision: Option<Provision>,
    },
    Start,
    Stop {
        force: bool,
        timeout_secs: Option<u64>,
    },
    Kill,
    /// `force`: a hard reset instead of a power-off and a fresh start.
    Reboot {
        force: bool,
    },
    Pause,
    Resume,
    Restart,
    Edit(vessel_api::EditVmRequest),
    /// `force`: kill a running VM first.
    Delete {
        force: bool,
    },
    AttachDisk(vessel_api::VmDisk),
    DetachDisk(vessel_api::VmDisk),
    /// Growing a disk of the running VM to `size_bytes`.
    ResizeDisk {
        disk: vessel_api::VmDisk,
        size_bytes: u64,
    },
    SnapshotCreate(vessel_api::CreateSnapshotRequest),
    SnapshotRevert {
        name: String,
    },
    SnapshotDelete {
        name: String,
    },
    /// The NIC to add, its address and MAC already reserved.
    AddNic(vessel_api::VmNic),
    RemoveNic(vessel_api::VmNic),
    /// An import, export or copy, carried out by a host task.
    Host(OperationAction),
}

impl Payload {
    /// The action, as the API names it.
    pub fn action(&self) -> OperationAction {
        use OperationAction as A;
        match self {
            Payload::Create { .. } => A::Create,
            Payload::Start => A::Start,
            Payload::Stop { .. } => A::Stop,
            Payload::Kill => A::Kill,
            Payload::Reboot { .. } => A::Reboot,
            Payload::Pause => A::Pause,
            Payload::Resume => A::Resume,
            Payload::Restart => A::Restart,
            Payload::Edit(_) => A::Edit,
            Payload::Delete { .. } => A::Delete,
            Payload::AttachDisk(_) => A::AttachDisk,
            Payload::DetachDisk(_) => A::DetachDisk,
            Payload::ResizeDisk { .. } => A::ResizeDisk,
            Payload::SnapshotCreate(_) => A::SnapshotCreate,
            Payload::SnapshotRevert { .. } => A::SnapshotRevert,
            Payload::SnapshotDelete { .. } => A::SnapshotDelete,
            Payload::AddNic(_) => A::AddNic,
            Payload::RemoveNic(_) => A::RemoveNic,
            Payload::Host(action) => *action,
        }
    }

    /// The request's force flag, as the API shows it (a kill always forces).
    pub fn force(&self) -> bool {
        match self {
            Payload::Stop { force, .. } | Payload::Reboot { force } | Payload::Delete { force } => {
                *force
            }
            Payload::Kill => true,
            _ => false,
        }
    }

    /// How long a stop may wait for the guest, as the API shows it.
    pub fn timeout_secs(&self) -> Option<u64> {
        match self {
            Payload::Stop { timeout_secs, .. } => *timeout_secs,
            _ => None,
        }
    }

    /// The payload of a record from before payloads, from its action and optional fields.
    fn from_legacy(operation: &Operation, legacy: Legacy) -> Result<Payload, String> {
        use OperationAction as A;
        let missing = |what: &str| {
            format!(
                "operation {} ({}) has no {what}",
                operation.id,
                operation.action.as_str()
            )
        };
        let snapshot = || legacy.snapshot.clone().ok_or_else(|| missing("snapshot"));
        let disk = || legacy.disk.clone().ok_or_else(|| missing("disk"));
        let nic = || legacy.nic.clone().ok_or_else(|| missing("NIC"));
        let force = operation.force;
        Ok(match operation.action {
            A::Create => Payload::Create {
                provision: legacy.provision,
            },
            A::Start => Payload::Start,
            A::Stop => Payload::Stop {
                force,
                timeout_secs: operation.timeout_secs,
            },
            A::Kill => Payload::Kill,
            A::Reboot => Payload::Reboot { force },
            A::Pause => Payload::Pause,
            A::Resume => Payload::Resume,
            A::Restart => Payload::Restart,
            A::Edit => Payload::Edit(legacy.edit.ok_or_else(|| missing("edit"))?),
            A::Delete => Payload::Delete { force },
            A::AttachDisk => Payload::AttachDisk(disk()?),
            A::DetachDisk => Payload::DetachDisk(disk()?),
            A::ResizeDisk => Payload::ResizeDisk {
                disk: disk()?,
                size_bytes: legacy.size_bytes.ok_or_else(|| missing("size"))?,
            },
            A::SnapshotCreate => Payload::SnapshotCreate(snapshot()?),
            A::SnapshotRevert => Payload::SnapshotRevert {
                name: snapshot()?.name,
            },
            A::SnapshotDelete => Payload::SnapshotDelete {
                name: snapshot()?.name,
            },
            A::AddNic => Payload::AddNic(nic()?),
            A::RemoveNic => Payload::RemoveNic(nic()?),
            action @ (A::ImportImage | A::ImportVolume | A::ExportVolume | A::CloneVolume) => {
                Payload::Host(action)
            }
        })
    }
}

/// An operation record as it sits in the store (see [`OpRecord`]).
#[derive(Serialize, Deserialize)]
struct StoredOp {
    #[serde(flatten)]
    operation: Operation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<DesiredState>,
    /// Absent from records written before payloads; those have [`Legacy`] fields instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload: Option<Payload>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    resumed: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    host: String,
    #[serde(flatten, skip_serializing)]
    legacy: Legacy,
}

/// The optional fields that carried an operation's arguments before [`Payload`]; read only.
#[derive(Default, Deserialize)]
struct Legacy {
    #[serde(default)]
    edit: Option<vessel_api::EditVmRequest>,
    #[serde(default)]
    disk: Option<vessel_api::VmDisk>,
    #[serde(default)]
    provision: Option<Provision>,
    #[serde(default)]
    snapshot: Option<vessel_api::CreateSnapshotRequest>,
    #[serde(default)]
    size_bytes: Option<u64>,
    #[serde(default)]
    nic: Option<vessel_api::VmNic>,
}

impl TryFrom<StoredOp> for OpRecord {
    type Error = String;

    fn try_from(stored: StoredOp) -> Result<Self, String> {
        let payload = match stored.payload {
            Some(payload) => payload,
            None => Payload::from_legacy(&stored.operation, stored.legacy)?,
        };
        Ok(OpRecord {
            operation: stored.operation,
            target: stored.target,
            payload,
            resumed: stored.resumed,
            host: stored.host,
        })
    }
}

impl From<OpRecord> for StoredOp {
    fn from(record: OpRecord) -> Self {
        StoredOp {
            operation: record.operation,
            target: record.target,
            payload: Some(record.payload),
            resumed: record.resumed,
            host: record.host,
            legacy: Legacy::default(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn legacy(extra: serde_json::Value) -> OpRecord {
        let mut record = json!({
            "id": "5a1d6a32-0c1e-4b8e-9d55-1f0e6f7d0a11",
            "vm": "web",
            "project": "default",
            "status": "pending",
            "force": false,
            "created_at_ms": 1764900000000u64,
            "target": "stopped"
        });
        record
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let bytes = serde_json::to_vec(&record).unwrap();
        decode("ops/5a1d6a32", &bytes).expect("a record of the previous version loads")
    }

    /// Records as the previous version wrote them (the action's arguments in optional fields
    /// beside the operation) load with their payload.
    #[test]
    fn records_of_the_previous_version_load_with_their_payload() {
        let disk = json!({"pool": "default", "volume": "data", "read_only": false});
        let edit = legacy(json!({"action": "edit", "edit": {"cpus": 2, "memory_mib": 256}}));
        let Payload::Edit(request) = &edit.payload else {
            panic!("{edit:?}")
        };
        assert_eq!((request.cpus, request.memory_mib), (Some(2), Some(256)));
        assert_eq!(edit.target, Some(DesiredState::Stopped));
        assert_eq!(edit.operation.vm, "web");

        let attach = legacy(json!({"action": "attach_disk", "disk": disk, "resumed": true}));
        assert!(matches!(&attach.payload, Payload::AttachDisk(d) if d.volume == "data"));
        assert!(attach.resumed);

        let resize = legacy(json!({"action": "resize_disk", "disk": disk, "size_bytes": 4096}));
        assert!(matches!(
            &resize.payload,
            Payload::ResizeDisk { disk, size_bytes: 4096 } if disk.volume == "data"
        ));

        let revert = legacy(json!({
            "action": "snapshot_revert", "snapshot": {"name": "before", "memory": false}
        }));
        assert_eq!(
            revert.payload,
            Payload::SnapshotRevert {
                name: "before".into()
            }
        );

        let stop = legacy(json!({"action": "stop", "force": true, "timeout_secs": 5}));
        assert_eq!(
            stop.payload,
            Payload::Stop {
                force: true,
                timeout_secs: Some(5)
            }
        );

        let create = legacy(json!({
            "action": "create",
            "provision": {"image": "debian", "image_pool": "default", "size_bytes": null,
                          "full_clone": true, "encrypted": false}
        }));
        assert!(matches!(
            &create.payload,
            Payload::Create { provision: Some(p) } if p.image == "debian" && p.full_clone
        ));

        let nic = json!({"id": "net1", "network": "lan", "mac": "52:54:00:12:34:56",
                         "ipv4": "10.0.0.5", "tap": "vs-web-net1"});
        let add = legacy(json!({"action": "add_nic", "nic": nic}));
        assert!(
            matches!(&add.payload, Payload::AddNic(n) if n.id == "net1"),
            "{add:?}"
        );

        let import = legacy(json!({"action": "import_image", "vm": "", "resource": "debian"}));
        assert_eq!(import.payload, Payload::Host(OperationAction::ImportImage));
    }

    /// A record is written with its payload and reads back the same; the API's view of it (the
    /// flattened operation) is unchanged.
    #[test]
    fn a_record_round_trips_with_its_payload() {
        let record = legacy(json!({"action": "delete", "force": true}));
        assert_eq!(record.payload, Payload::Delete { force: true });
        let stored = serde_json::to_value(&record).unwrap();
        assert_eq!(stored["payload"], json!({"delete": {"force": true}}));
        assert_eq!(stored["action"], "delete");
        assert_eq!(stored["force"], true);
        assert!(stored.get("edit").is_none(), "{stored}");
        let back: OpRecord = serde_json::from_value(stored).unwrap();
        assert_eq!(back, record);
        let operation: Operation = serde_json::from_value(serde_json::to_value(&record).unwrap())
            .expect("the API reads a stored record as an operation");
        assert_eq!(operation, record.operation);
    }

    /// A record of the previous version that lacks what its action needs is refused by name,
    /// not run with a default.
    #[test]
    fn a_legacy_record_without_its_arguments_is_refused_clearly() {
        let bytes = serde_json::to_vec(&json!({
            "id": "op-1", "vm": "web", "action": "attach_disk", "status": "pending",
            "created_at_ms": 1
        }))
        .unwrap();
        let error = decode::<OpRecord>("ops/op-1", &bytes)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("operation op-1 (attach-disk) has no disk"),
            "{error}"
        );
    }
}
