//! A VM's root disk made from an image when the VM is created: a linked clone (instant), a full
//! copy, or an encrypted copy with a key of its own. Copies report progress on the create
//! operation and can be cancelled; a cancelled or failed copy leaves no volume behind.

use std::sync::Arc;

use vessel_api::VmDisk;
use vessel_storage::{CloneMode, Format, ImportOptions, ImportSource, StoragePool, VolumeSpec};

use crate::common::errors::error_chain;
use crate::common::op_error::OpError;
use crate::ctx::Ctx;
use crate::storage::host_ops;
use crate::storage::keys;
use crate::vm::model::{op_key, OpRecord, Provision};

/// Makes `root` from the image in `plan`. Idempotent: a root volume that exists already (a
/// create re-run after a daemon restart) is taken as made, since volumes appear atomically.
/// Returns the virtual size of the disk made (what it takes of the project's disk quota).
/// A failure keeps its class: an image gone is `not_found`, a size that cannot hold the image
/// is `invalid_argument`, a failed copy is `operation_failed`.
pub async fn make_root_disk(
    ctx: &Arc<Ctx>,
    op_id: &str,
    plan: &Provision,
    root: &VmDisk,
) -> Result<u64, OpError> {
    let pool = crate::storage::pools::open_by_name(ctx, &root.pool).await?;
    if let Ok(existing) = pool.volume(&root.volume).await {
        return Ok(existing.virtual_size);
    }
    let image_pool = crate::storage::pools::open_by_name(ctx, &plan.image_pool).await?;
    let image = image_pool
        .volume(&plan.image)
        .await
        .map_err(|e| OpError::not_found(format!("image {}: {}", plan.image, error_chain(&e))))?;
    let size = plan.size_bytes.filter(|s| *s != image.virtual_size);
    if size.is_some_and(|s| s < image.virtual_size) {
        return Err(OpError::invalid(format!(
            "the disk size is smaller than image {} ({} bytes); give at least its size",
            plan.image, image.virtual_size
        )));
    }
    if !plan.full_clone && !plan.encrypted {
        let spec = VolumeSpec {
            name: root.volume.clone(),
            format: Format::Qcow2,
            size: plan.size_bytes,
            backing: Some(plan.image.clone()),
        };
        return pool
            .create_volume(&spec)
            .await
            .map(|made| made.virtual_size)
            .map_err(|e| OpError::failed(error_chain(&e)));
    }
    // A copy: long, so with progress and cancellation.
    let record = current_op(ctx, op_id).await?;
    let (progress, writer) = host_ops::track_progress(Arc::clone(ctx), record);
    let (cancel, _guard) = host_ops::cancellable(Arc::clone(ctx), op_id);
    let copy = async {
        let mut report = |percent: f64| progress.report(percent);
        if plan.encrypted {
            if root.pool != plan.image_pool {
                return Err(OpError::invalid(
                    "an encrypted root disk is made in the image's pool; leave out --pool",
                ));
            }
            let (key, _pending) = keys::create(ctx, &root.pool, &root.volume).await?;
            let made = async {
                let copy = pool
                    .clone_encrypted_volume(&plan.image, None, &root.volume, &key, &mut report)
                    .await?;
                match size {
                    Some(size) => {
                        pool.resize_encrypted_volume(&root.volume, &key, size, false)
                            .await
                    }
                    None => Ok(copy),
                }
            }
            .await;
            return match made {
                Ok(made) => Ok(made.virtual_size),
                Err(e) => {
                    let _ = pool.delete_volume(&root.volume).await;
                    let _ = keys::delete(ctx, &root.pool, &root.volume).await;
                    Err(OpError::failed(error_chain(&e)))
                }
            };
        }
        let made = if root.pool == plan.image_pool {
            pool.clone_volume(&plan.image, &root.volume, CloneMode::Full, &mut report)
                .await
        } else {
            let mut opts = ImportOptions::default();
            opts.format = Some(Format::Qcow2);
            pool.import_volume(
                &root.volume,
                ImportSource::File(image.path.clone()),
                &opts,
                &mut |p| {
                    if let Some(percent) = p.percent() {
                        progress.report(percent)
                    }
                },
            )
            .await
            .map(|imported| imported.info)
        };
        let copy = made.map_err(|e| OpError::failed(error_chain(&e)))?;
        let Some(size) = size else {
            return Ok(copy.virtual_size);
        };
        match pool.resize_volume(&root.volume, size, false).await {
            Ok(resized) => Ok(resized.virtual_size),
            Err(e) => {
                let _ = pool.delete_volume(&root.volume).await;
                Err(OpError::failed(error_chain(&e)))
            }
        }
    };
    let outcome = tokio::select! {
        outcome = copy => outcome,
        () = cancel.cancelled() => Err(OpError::failed("cancelled on request; nothing was kept")),
    };
    drop(progress);
    let _ = writer.await;
    if outcome.is_err() && plan.encrypted && pool.volume(&root.volume).await.is_err() {
        // A cancelled copy stopped before its own clean-up: no volume, so no key either.
        let _ = keys::delete(ctx, &root.pool, &root.volume).await;
    }
    outcome
}

async fn current_op(ctx: &Ctx, id: &str) -> Result<OpRecord, OpError> {
    let kv = ctx
        .store
        .get(&op_key(id))
        .await
        .map_err(|e| OpError::failed(e.to_string()))?
        .ok_or_else(|| OpError::not_found("the create operation vanished"))?;
    crate::vm::model::decode(&kv.key, &kv.value).map_err(|e| OpError::failed(e.to_string()))
}
