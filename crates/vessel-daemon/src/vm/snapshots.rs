//! VM snapshots: internal qcow2 snapshots with one name in every writable disk of the VM, taken
//! offline with qemu-img or live over QMP (disk-only: one atomic transaction; with memory: the
//! `snapshot-save` job). The store keeps each snapshot's record (`snapshots/<vm>/<name>`: when,
//! its parent, the VM's spec then) and the VM's current one (`snapshots/<vm>`), which makes the
//! chain; the disks keep the data.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vessel_api::{ApiError, Boot, CreateSnapshotRequest, Operation, Snapshot, VmSpec};
use vessel_core::validate_name;
use vessel_qemu::DiskFile;
use vessel_storage::{Format, VolumeKey};
use vessel_store::{Compare, Op, Txn};

use crate::common::errors::internal;
use crate::common::op_error::OpError;
use crate::ctx::Ctx;
use crate::ctx::Service;
use crate::vm::model::Payload;
use crate::vm::model::{
    decode, encode, snapshot_head_key, snapshot_key, snapshots_prefix, VmRecord,
};

/// A snapshot as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub name: String,
    pub created_at_ms: u64,
    pub memory: bool,
    pub vm_state_bytes: u64,
    pub parent: Option<String>,
    pub spec: VmSpec,
}

/// Snapshot names follow VM names, and an all-digit name is refused: QEMU reads it as a
/// snapshot id.
pub fn validate_snapshot_name(name: &str) -> Result<(), String> {
    validate_name("snapshot", name)?;
    if name.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "snapshot name {name:?} is all digits, which QEMU takes for a snapshot id; add a letter"
        ));
    }
    Ok(())
}

impl Service {
    pub async fn list_snapshots(&self, vm: &str) -> Result<Vec<Snapshot>, ApiError> {
        self.get_vm(vm).await?;
        let (records, head) = load(&self.ctx, vm).await.map_err(ApiError::internal)?;
        let mut list: Vec<Snapshot> = records
            .into_iter()
            .map(|r| Snapshot {
                current: head.as_deref() == Some(r.name.as_str()),
                name: r.name,
                created_at_ms: r.created_at_ms,
                memory: r.memory,
                vm_state_bytes: r.vm_state_bytes,
                parent: r.parent,
                spec: r.spec,
            })
            .collect();
        list.sort_by_key(|s| s.created_at_ms);
        Ok(list)
    }

    pub async fn create_snapshot(
        &self,
        vm: &str,
        request: &CreateSnapshotRequest,
    ) -> Result<Operation, ApiError> {
        validate_snapshot_name(&request.name).map_err(ApiError::invalid)?;
        if self.snapshot_record(vm, &request.name).await?.is_some() {
            return Err(ApiError::conflict(format!(
                "VM {vm:?} already has a snapshot {:?}; choose another name or delete it first",
                request.name
            )));
        }
        // What it would take of the disk quota must fit now (the worker reserves it).
        let record = self.load(vm).await?.record;
        crate::vm::snapshot_quota::check(&self.ctx, &record, request.memory).await?;
        self.submit(vm, Payload::SnapshotCreate(request.clone()))
            .await
    }

    pub async fn revert_snapshot(&self, vm: &str, name: &str) -> Result<Operation, ApiError> {
        let snapshot = self.existing_snapshot(vm, name).await?;
        // A revert that restores more CPUs or memory than the VM has now is a growth: refused
        // at once when it does not fit; the worker checks again atomically with its write.
        let current = self.load(vm).await?.record;
        crate::access::projects::reserve_growth(
            self.ctx.store.as_ref(),
            &current,
            &restored(&current, &snapshot),
        )
        .await?;
        let name = name.to_string();
        self.submit(vm, Payload::SnapshotRevert { name }).await
    }

    pub async fn delete_snapshot(&self, vm: &str, name: &str) -> Result<Operation, ApiError> {
        self.existing_snapshot(vm, name).await?;
        let name = name.to_string();
        self.submit(vm, Payload::SnapshotDelete { name }).await
    }

    async fn existing_snapshot(&self, vm: &str, name: &str) -> Result<SnapshotRecord, ApiError> {
        validate_snapshot_name(name).map_err(ApiError::invalid)?;
        self.get_vm(vm).await?;
        self.snapshot_record(vm, name).await?.ok_or_else(|| {
            ApiError::not_found(format!("VM {vm:?} has no snapshot {name:?}"))
                .with_hint(format!("list them with `vessel vm snapshot list {vm}`"))
        })
    }

    async fn snapshot_record(
        &self,
        vm: &str,
        name: &str,
    ) -> Result<Option<SnapshotRecord>, ApiError> {
        find(&self.ctx, vm, name).await.map_err(internal)
    }
}

/// A VM's snapshot records and its current snapshot.
pub async fn load(ctx: &Ctx, vm: &str) -> Result<(Vec<SnapshotRecord>, Option<String>), String> {
    let (kvs, _) = ctx
        .store
        .list(&snapshots_prefix(vm))
        .await
        .map_err(|e| e.to_string())?;
    let records = kvs
        .iter()
        .map(|kv| decode::<SnapshotRecord>(&kv.key, &kv.value))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    let head = match ctx
        .store
        .get(&snapshot_head_key(vm))
        .await
        .map_err(|e| e.to_string())?
    {
        Some(kv) => Some(decode::<String>(&kv.key, &kv.value).map_err(|e| e.to_string())?),
        None => None,
    };
    Ok((records, head))
}

/// The VM's snapshot `name`, if it has one.
async fn find(ctx: &Ctx, vm: &str, name: &str) -> anyhow::Result<Option<SnapshotRecord>> {
    let kv = ctx.store.get(&snapshot_key(vm, name)).await?;
    kv.map(|kv| decode(&kv.key, &kv.value)).transpose()
}

/// A snapshot of the VM, for its worker; one deleted meanwhile is `not_found`.
pub async fn record(ctx: &Ctx, vm: &str, name: &str) -> Result<SnapshotRecord, OpError> {
    find(ctx, vm, name)
        .await
        .map_err(|e| OpError::failed(e.to_string()))?
        .ok_or_else(|| OpError::not_found(format!("VM {vm} has no snapshot {name}")))
}

/// Stores a new snapshot as the VM's current one; a snapshot of that name recorded meanwhile
/// is a conflict.
pub async fn save_new(ctx: &Ctx, vm: &str, record: &SnapshotRecord) -> Result<(), OpError> {
    let txn = Txn::new()
        .when(Compare::Missing(snapshot_key(vm, &record.name)))
        .then(Op::Put(snapshot_key(vm, &record.name), encode(record)))
        .then(Op::Put(snapshot_head_key(vm), encode(&record.name)));
    let written = ctx
        .store
        .txn(txn)
        .await
        .map_err(|e| OpError::failed(e.to_string()))?;
    if !written.succeeded {
        return Err(OpError::conflict(format!(
            "VM {vm} already has a snapshot {}",
            record.name
        )));
    }
    Ok(())
}

/// The VM's record after a revert: the snapshot's spec (its disks, CPUs, memory...). NICs
/// stay as they are now: their addresses and MACs are reserved for the present ones, and a NIC
/// removed since may have given its address to another VM.
pub fn restored(vm: &VmRecord, snapshot: &SnapshotRecord) -> VmRecord {
    let mut restored = vm.clone();
    restored.spec = snapshot.spec.clone();
    restored.spec.nics = vm.spec.nics.clone();
    restored
}

/// What a revert writes besides the VM's spec: the snapshot becomes the current one.
pub fn reverted_head(vm: &str, snapshot: &str) -> Txn {
    Txn::new().then(Op::Put(snapshot_head_key(vm), encode(&snapshot)))
}

/// Forgets a snapshot; its children get its parent, and if it was current, its parent is.
pub async fn forget(ctx: &Ctx, vm: &str, name: &str) -> Result<(), String> {
    let (records, head) = load(ctx, vm).await?;
    let gone = records
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| format!("VM {vm} has no snapshot {name}"))?;
    let mut txn = Txn::new().then(Op::Delete(snapshot_key(vm, name)));
    for child in records.iter().filter(|r| r.parent.as_deref() == Some(name)) {
        let mut moved = child.clone();
        moved.parent = gone.parent.clone();
        txn = txn.then(Op::Put(snapshot_key(vm, &child.name), encode(&moved)));
    }
    if head.as_deref() == Some(name) {
        txn = match &gone.parent {
            Some(parent) => txn.then(Op::Put(snapshot_head_key(vm), encode(parent))),
            None => txn.then(Op::Delete(snapshot_head_key(vm))),
        };
    }
    ctx.store.txn(txn).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// The files of a stopped VM's writable disks, for qemu-img.
pub struct OfflineDisk {
    pub path: PathBuf,
    pub format: Format,
    pub key: Option<Arc<VolumeKey>>,
}

pub async fn offline_disks(
    spec: &VmSpec,
    resolved: &[DiskFile],
) -> Result<Vec<OfflineDisk>, String> {
    let mut disks = Vec::new();
    if let Boot::Disk { disk } = &spec.boot {
        let path = PathBuf::from(disk);
        let format = vessel_storage::detect_format(&path)
            .await
            .map_err(|e| format!("disk {disk}: {e}"))?;
        disks.push(OfflineDisk {
            path,
            format,
            key: None,
        });
    }
    disks.extend(
        resolved
            .iter()
            .filter(|d| !d.read_only)
            .map(|d| OfflineDisk {
                path: d.path.clone(),
                format: d.format,
                key: d.key.clone(),
            }),
    );
    if disks.is_empty() {
        return Err("the VM has no writable disk to snapshot".into());
    }
    Ok(disks)
}

/// What to do to a stopped VM's disks.
#[derive(Debug, Clone, Copy)]
pub enum Offline {
    Create,
    Revert,
    Delete,
}

/// Creates, reverts to or deletes snapshot `tag` in every writable disk of a stopped VM, with
/// qemu-img (all disks or none, as far as qemu-img allows: see `snapshot_*_all`).
pub async fn offline(
    spec: &VmSpec,
    disks: &[DiskFile],
    tag: &str,
    action: Offline,
) -> Result<(), String> {
    let files = offline_disks(spec, disks).await?;
    let targets: Vec<_> = files
        .iter()
        .map(|f| vessel_storage::SnapshotDisk {
            path: &f.path,
            format: f.format,
            key: f.key.as_deref(),
        })
        .collect();
    let qemu_img = vessel_storage::QemuImg::new();
    match action {
        Offline::Create => qemu_img.snapshot_create_all(&targets, tag).await,
        Offline::Revert => qemu_img.snapshot_apply_all(&targets, tag).await,
        Offline::Delete => qemu_img.snapshot_delete_all(&targets, tag).await,
    }
    .map_err(|e| crate::common::errors::error_chain(&e))
}
