//! A VM's root disk made from an image when the VM is created: a linked clone (instant), a full
//! copy, or an encrypted copy with a key of its own. Copies report progress on the create
//! operation and can be cancelled; a cancelled or failed copy leaves no volume behind.

use std::sync::Arc;

use vessel_api::VmDisk;
use vessel_storage::{Format, StoragePool, VolumeSpec};

use crate::common::op_error::OpError;
use crate::ctx::Ctx;
use crate::storage::copy::{self, Copy, CopyKeys};
use crate::storage::host_ops;
use crate::storage::keys;
use crate::storage::volumes::api_error;
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
    let image = image_pool.volume(&plan.image).await.map_err(|e| {
        let mut e = api_error(e);
        e.message = format!("image {}: {}", plan.image, e.message);
        e
    })?;
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
        let made = pool.create_volume(&spec).await.map_err(api_error)?;
        return Ok(made.virtual_size);
    }
    if plan.encrypted && root.pool != plan.image_pool {
        return Err(OpError::invalid(
            "an encrypted root disk is made in the image's pool; leave out --pool",
        ));
    }
    let keys = match plan.encrypted {
        true => {
            Some(CopyKeys::make(ctx, &plan.image_pool, &image, &root.pool, &root.volume).await?)
        }
        false => None,
    };
    // A copy: long, so with progress and cancellation.
    let record = current_op(ctx, op_id).await?;
    let (progress, writer) = host_ops::track_progress(Arc::clone(ctx), record);
    let (cancel, _guard) = host_ops::cancellable(Arc::clone(ctx), op_id);
    let mut report = |percent: f64| progress.report(percent);
    let copy = copy::full_copy(
        ctx,
        Copy {
            source_pool: &image_pool,
            source: &image,
            pool: &pool,
            name: &root.volume,
            size,
            keys: keys.as_ref(),
        },
        &mut report,
    );
    let outcome = tokio::select! {
        outcome = copy => outcome.map(|made| made.virtual_size).map_err(OpError::from),
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
