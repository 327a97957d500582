//! What snapshots take of their project's disk quota. Internal snapshots live inside the VM's
//! qcow2 files, so no volume entry grows when one is taken, yet the files do: a memory snapshot
//! stores the guest's RAM (its `vm_state`), and every snapshot pins the clusters its disks held
//! then, which the guest's later writes cannot overwrite but only copy.
//!
//! Each snapshot is charged `snapcharges/<vm>/<snapshot>` = its project and bytes, counted by
//! `projects::usage` with the volumes:
//! - **before** it is taken, the estimate is reserved in the same compare-and-swap commit as the
//!   quota check (so racing snapshots and creates cannot together exceed the limit): the VM's
//!   memory size for a memory snapshot (the state QEMU saves is the guest's RAM and a little
//!   device state) plus the bytes its writable pool disks have allocated (the worst case of what
//!   it pins: the guest rewrites all of it afterwards);
//! - **after**, the charge is settled to what was measured: the vm_state size QEMU reports
//!   plus those allocated bytes; a snapshot that failed gives its reservation back;
//! - deleting the snapshot (or its VM) removes the charge; at start, charges without a
//!   snapshot go and snapshots recorded before charges existed are charged their vm_state.

use serde::{Deserialize, Serialize};
use vessel_api::{ApiError, Usage};
use vessel_storage::StoragePool;
use vessel_store::{Compare, Op, Store, Txn};

use crate::common::errors::store_error;
use crate::ctx::Ctx;
use crate::vm::model::{decode, encode, snapshot_key, VmRecord};

pub const PREFIX: &str = "snapcharges/";

pub fn key(vm: &str, snapshot: &str) -> String {
    format!("{PREFIX}{vm}/{snapshot}")
}

/// All charges of one VM (deleted with it).
pub fn vm_prefix(vm: &str) -> String {
    format!("{PREFIX}{vm}/")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCharge {
    pub project: String,
    pub bytes: u64,
}

/// The bytes the VM's writable pool disks have allocated now: what a snapshot pins.
pub async fn pinned_bytes(ctx: &Ctx, vm: &VmRecord) -> Result<u64, String> {
    let mut total = 0u64;
    for disk in vm.spec.disks.iter().filter(|d| !d.read_only) {
        let pool = crate::storage::pools::open_by_name(ctx, &disk.pool)
            .await
            .map_err(|e| e.message)?;
        let info = pool
            .volume(&disk.volume)
            .await
            .map_err(|e| format!("disk {}/{}: {e}", disk.pool, disk.volume))?;
        total = total.saturating_add(info.allocated_size);
    }
    Ok(total)
}

/// The estimate reserved before a snapshot is taken (see the module's description), from the
/// bytes its disks pin.
pub fn estimate(vm: &VmRecord, memory: bool, pinned: u64) -> u64 {
    let memory_mib = if memory { vm.spec.memory_mib } else { 0 };
    state_estimate(memory_mib).saturating_add(pinned)
}

/// A memory snapshot's state: the guest's RAM (the device state QEMU adds is small).
fn state_estimate(memory_mib: u64) -> u64 {
    memory_mib.saturating_mul(1 << 20)
}

/// Refuses at once (409 `quota_exceeded`) a snapshot whose estimate does not fit now; the
/// worker reserves it atomically when it takes the snapshot.
pub async fn check(ctx: &Ctx, vm: &VmRecord, memory: bool) -> Result<(), ApiError> {
    let pinned = pinned_bytes(ctx, vm).await.map_err(ApiError::internal)?;
    let bytes = estimate(vm, memory, pinned);
    crate::access::projects::reserve(ctx.store.as_ref(), &vm.project, &disk(bytes))
        .await
        .map(drop)
}

fn disk(bytes: u64) -> Usage {
    Usage {
        disk_bytes: bytes,
        ..Usage::default()
    }
}

/// Reserves `bytes` for snapshot `snapshot` of `vm` in its project: checks the quota and writes
/// the charge in one transaction. A charge left by a snapshot that was never recorded (a crash
/// in between) is replaced.
pub async fn reserve(
    store: &dyn Store,
    vm: &VmRecord,
    snapshot: &str,
    bytes: u64,
) -> Result<(), ApiError> {
    let name = &vm.spec.name;
    let charge = SnapshotCharge {
        project: vm.project.clone(),
        bytes,
    };
    for _ in 0..crate::access::projects::MAX_ATTEMPTS {
        let existing = store.get(&key(name, snapshot)).await.map_err(store_error)?;
        let unchanged = match &existing {
            Some(kv) => {
                if crate::common::records::exists(store, &snapshot_key(name, snapshot)).await? {
                    return Err(ApiError::conflict(format!(
                        "VM {name:?} already has a snapshot {snapshot:?}"
                    )));
                }
                Compare::ModRevision(kv.key.clone(), kv.mod_revision)
            }
            None => Compare::Missing(key(name, snapshot)),
        };
        // A leftover charge is being replaced: only the difference needs room.
        let held = existing
            .map(|kv| decode::<SnapshotCharge>(&kv.key, &kv.value).map_or(0, |c| c.bytes))
            .unwrap_or(0);
        let guard =
            crate::access::projects::reserve(store, &vm.project, &disk(bytes.saturating_sub(held)))
                .await?;
        let txn = guard
            .apply(Txn::new())
            .when(unchanged)
            .then(Op::Put(key(name, snapshot), encode(&charge)));
        if store.txn(txn).await.map_err(store_error)?.succeeded {
            return Ok(());
        }
    }
    Err(crate::access::projects::contended(&vm.project))
}

/// Sets a taken snapshot's charge to what it was measured to take.
pub async fn settle(
    store: &dyn Store,
    vm: &VmRecord,
    snapshot: &str,
    bytes: u64,
) -> Result<(), ApiError> {
    let charge = SnapshotCharge {
        project: vm.project.clone(),
        bytes,
    };
    store
        .put(&key(&vm.spec.name, snapshot), encode(&charge))
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Gives a snapshot's charge back (the snapshot failed or was deleted).
pub async fn release(store: &dyn Store, vm: &str, snapshot: &str) -> Result<(), ApiError> {
    let txn = Txn::new().then(Op::Delete(key(vm, snapshot)));
    store.txn(txn).await.map_err(store_error)?;
    Ok(())
}

/// What a project's snapshots take of its disk quota.
pub async fn project_bytes(store: &dyn Store, project: &str) -> Result<u64, ApiError> {
    let (kvs, _) = store.list(PREFIX).await.map_err(store_error)?;
    Ok(kvs
        .iter()
        .filter_map(|kv| decode::<SnapshotCharge>(&kv.key, &kv.value).ok())
        .filter(|c| c.project == project)
        .fold(0u64, |sum, c| sum.saturating_add(c.bytes)))
}

/// At start, before any request: a charge without its snapshot (a crash between the
/// reservation and the record) goes; a snapshot recorded before charges existed is charged its
/// vm_state (what it pins of the disks was not measured then).
pub async fn reconcile(ctx: &Ctx) -> anyhow::Result<()> {
    let store = ctx.store.as_ref();
    let (charges, _) = store.list(PREFIX).await?;
    let (snapshots, _) = store.list(crate::vm::model::SNAPSHOTS_PREFIX).await?;
    let (vms, _) = store.list(crate::vm::model::VMS_PREFIX).await?;
    let vms = crate::vm::model::group_vms(&vms)?;
    let project_of = |vm: &str| {
        vms.iter()
            .find(|l| l.record.spec.name == vm)
            .map(|l| l.record.project.clone())
    };
    let mut txn = Txn::new();
    for kv in &charges {
        let rest = &kv.key[PREFIX.len()..];
        let recorded = snapshots
            .iter()
            .any(|s| s.key[crate::vm::model::SNAPSHOTS_PREFIX.len()..] == *rest);
        if !recorded {
            txn = txn.then(Op::Delete(kv.key.clone()));
        }
    }
    for kv in &snapshots {
        let Ok(record) = decode::<crate::vm::snapshots::SnapshotRecord>(&kv.key, &kv.value) else {
            continue; // the head pointer (`snapshots/<vm>`), not a record
        };
        let rest = &kv.key[crate::vm::model::SNAPSHOTS_PREFIX.len()..];
        let Some((vm, _)) = rest.split_once('/') else {
            continue;
        };
        let charged = charges.iter().any(|c| c.key[PREFIX.len()..] == *rest);
        if let (false, Some(project)) = (charged, project_of(vm)) {
            let charge = SnapshotCharge {
                project,
                bytes: record.vm_state_bytes,
            };
            txn = txn.then(Op::Put(key(vm, &record.name), encode(&charge)));
        }
    }
    if !txn.success.is_empty() {
        store.txn(txn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_snapshot_is_estimated_at_the_vms_memory_and_never_wraps() {
        assert_eq!(state_estimate(96), 96 * (1 << 20));
        assert_eq!(state_estimate(0), 0);
        assert_eq!(state_estimate(u64::MAX), u64::MAX, "saturates, never wraps");
    }
}
