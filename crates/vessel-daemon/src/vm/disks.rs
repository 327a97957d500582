//! A VM's data disks: attaching and detaching pool volumes (also while the VM runs), and
//! resolving the spec's disks to files when QEMU starts.

use std::sync::Arc;

use vessel_api::{ApiError, AttachDiskRequest, Operation, VmDisk, VmSpec};
use vessel_core::{disk_node_name, validate_name};
use vessel_qemu::{BackingFile, DiskFile};
use vessel_storage::{DirPool, StoragePool};

use crate::common::op_error::OpError;
use crate::ctx::Ctx;
use crate::ctx::Service;
use crate::storage::pools::DEFAULT_POOL;
use crate::vm::model::Loaded;
use crate::vm::model::Payload;

impl Service {
    /// Attaches a pool volume; hot-plugged when the VM runs.
    pub async fn attach_disk(
        &self,
        vm: &str,
        request: &AttachDiskRequest,
    ) -> Result<Operation, ApiError> {
        let disk = VmDisk {
            pool: request.pool.clone().unwrap_or_else(|| DEFAULT_POOL.into()),
            volume: request.volume.clone(),
            read_only: request.read_only,
            shareable: request.shareable,
            delete_with_vm: false,
        };
        validate_name("volume", &disk.volume).map_err(ApiError::invalid)?;
        // The volume must exist now, in the VM's project; the worker checks again when it
        // plugs it in (and at every start).
        let project = self.load(vm).await?.record.project;
        crate::storage::ownership::require_in_project(
            &self.ctx,
            &disk.pool,
            &disk.volume,
            &project,
        )
        .await?;
        self.submit(vm, Payload::AttachDisk(disk)).await
    }

    pub async fn detach_disk(
        &self,
        vm: &str,
        pool: &str,
        volume: &str,
    ) -> Result<Operation, ApiError> {
        validate_name("pool", pool).map_err(ApiError::invalid)?;
        validate_name("volume", volume).map_err(ApiError::invalid)?;
        let disk = VmDisk {
            pool: pool.into(),
            volume: volume.into(),
            read_only: false,
            shareable: false,
            delete_with_vm: false,
        };
        self.submit(vm, Payload::DetachDisk(disk)).await
    }
}

/// Finds the pool handle for a disk's pool.
async fn pool_of(ctx: &Ctx, pool: &str) -> Result<Arc<DirPool>, OpError> {
    Ok(crate::storage::pools::open_by_name(ctx, pool).await?)
}

/// One disk of a VM of `project`, resolved to its file. A volume of another project is
/// refused here too, whatever route put it into the spec: this is what QEMU gets to open.
/// A failure keeps its class (a volume gone is `not_found`, one of another project is refused
/// as the request would be), its message naming the disk.
pub async fn resolve_disk(ctx: &Ctx, project: &str, disk: &VmDisk) -> Result<DiskFile, OpError> {
    let named = |e: OpError| OpError {
        message: format!("disk {}/{}: {}", disk.pool, disk.volume, e.message),
        ..e
    };
    crate::storage::ownership::require_in_project(ctx, &disk.pool, &disk.volume, project)
        .await
        .map_err(|e| named(e.into()))?;
    let pool = pool_of(ctx, &disk.pool).await.map_err(named)?;
    let info = pool.volume(&disk.volume).await.map_err(|e| {
        named(match e {
            vessel_storage::PoolError::NotFound { .. } => OpError::not_found(e.to_string()),
            e => OpError::failed(e.to_string()),
        })
    })?;
    if info.backing_chain.len() > vessel_qemu::disk::MAX_BACKING_DEPTH {
        return Err(OpError::invalid(format!(
            "disk {}/{}: its backing chain is {} images deep; at most {} are supported (make a full clone)",
            disk.pool,
            disk.volume,
            info.backing_chain.len(),
            vessel_qemu::disk::MAX_BACKING_DEPTH
        )));
    }
    Ok(DiskFile {
        node_name: disk_node_name(&disk.pool, &disk.volume),
        // Named to QEMU with their formats: QEMU then neither follows the qcow2 header's names
        // nor probes a format, and a hot-plugged disk's chain can be passed as fds.
        backing: info
            .backing_chain
            .iter()
            .map(|image| BackingFile {
                path: image.path.clone(),
                format: image.format,
            })
            .collect(),
        path: info.path,
        format: info.format,
        read_only: disk.read_only,
        shareable: disk.shareable,
        serial: disk.volume.clone(),
        key: if info.encrypted {
            Some(
                crate::storage::keys::get(ctx, &disk.pool, &disk.volume)
                    .await
                    .map_err(|e| named(OpError::failed(e)))?,
            )
        } else {
            None
        },
    })
}

/// All disks of a spec of a VM of `project`, resolved, in order.
pub async fn resolve_disks(
    ctx: &Ctx,
    project: &str,
    spec: &VmSpec,
) -> Result<Vec<DiskFile>, OpError> {
    let mut files = Vec::with_capacity(spec.disks.len());
    for disk in &spec.disks {
        files.push(resolve_disk(ctx, project, disk).await?);
    }
    Ok(files)
}

/// Running VMs other than `vm` whose use of the volume conflicts with `disk`. A volume is used
/// by one running VM at a time, unless every user only reads it or every user shares it; these
/// are the combinations QEMU's image locks allow, so this check names the VM holding the lock
/// before QEMU refuses.
pub fn conflicting_users(vms: &[Loaded], vm: &str, disk: &VmDisk) -> Vec<String> {
    vms.iter()
        .filter(|other| other.record.spec.name != vm && other.status.state.has_process())
        .filter(|other| {
            other.record.spec.disks.iter().any(|d| {
                d.pool == disk.pool
                    && d.volume == disk.volume
                    && !(d.read_only && disk.read_only)
                    && !(d.shareable && disk.shareable)
            })
        })
        .map(|other| other.record.spec.name.clone())
        .collect()
}

/// Deletes a volume that was made for a VM, with its key if it is encrypted.
pub async fn delete_owned(ctx: &Ctx, disk: &VmDisk) -> Result<(), OpError> {
    let pool = pool_of(ctx, &disk.pool).await?;
    match pool.delete_volume(&disk.volume).await {
        Ok(()) | Err(vessel_storage::PoolError::NotFound { .. }) => {}
        Err(e) => return Err(OpError::failed(e.to_string())),
    }
    crate::storage::ownership::remove(ctx, &disk.pool, &disk.volume).await?;
    Ok(crate::storage::keys::delete(ctx, &disk.pool, &disk.volume).await?)
}
