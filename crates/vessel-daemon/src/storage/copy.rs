//! The one routine that copies a volume in full, for both callers: a VM's root disk made from an
//! image (`vm/provision.rs`) and a full clone of a volume (`volumes.rs`). A copy is long, so it
//! reports progress; an encrypted copy gets a key of its own; whatever fails, nothing of the
//! copy is left behind (no volume, no key).

use std::sync::Arc;

use vessel_api::ApiError;
use vessel_secrets::VolumeKey;
use vessel_storage::{
    CloneMode, DirPool, Format, ImportOptions, ImportSource, PoolError, StoragePool, VolumeInfo,
};

use crate::ctx::Ctx;
use crate::storage::keys::{self, PendingKey};
use crate::storage::volumes::api_error;

/// The keys of an encrypted copy: the source's (when it is encrypted itself) and the copy's own,
/// made and stored (wrapped) before the copy starts, so an encrypted volume never exists without
/// its key.
pub struct CopyKeys {
    source: Option<Arc<VolumeKey>>,
    target: VolumeKey,
    _pending: PendingKey,
}

impl CopyKeys {
    /// Reads the key of `source` (if it is encrypted) and makes one for the copy `name` in `pool`.
    pub async fn make(
        ctx: &Arc<Ctx>,
        source_pool: &str,
        source: &VolumeInfo,
        pool: &str,
        name: &str,
    ) -> Result<CopyKeys, ApiError> {
        let source_key = if source.encrypted {
            let key = keys::get(ctx, source_pool, &source.name)
                .await
                .map_err(ApiError::internal)?;
            Some(key)
        } else {
            None
        };
        let (target, pending) = keys::create(ctx, pool, name).await?;
        Ok(CopyKeys {
            source: source_key,
            target,
            _pending: pending,
        })
    }
}

/// A full copy of `source` (a volume of `source_pool`) as the new volume `name` of `pool`.
pub struct Copy<'a> {
    pub source_pool: &'a DirPool,
    pub source: &'a VolumeInfo,
    pub pool: &'a DirPool,
    pub name: &'a str,
    /// Grown to this virtual size once copied; the source's size when absent.
    pub size: Option<u64>,
    /// Given: the copy is encrypted under these keys (in the source's pool only).
    pub keys: Option<&'a CopyKeys>,
}

/// Makes the copy, reporting progress in percent. A failed copy leaves no volume and no key;
/// the error keeps the pool's class (a full pool is a conflict, not the daemon failing).
pub async fn full_copy(
    ctx: &Ctx,
    copy: Copy<'_>,
    report: &mut (dyn FnMut(f64) + Send),
) -> Result<VolumeInfo, ApiError> {
    let made = make(&copy, report).await;
    if made.is_err() && copy.keys.is_some() {
        let _ = keys::delete(ctx, copy.pool.name(), copy.name).await;
    }
    made.map_err(api_error)
}

async fn make(
    copy: &Copy<'_>,
    report: &mut (dyn FnMut(f64) + Send),
) -> Result<VolumeInfo, PoolError> {
    let (pool, name, source) = (copy.pool, copy.name, &copy.source.name);
    let same_pool = copy.source_pool.name() == pool.name();
    let made = match copy.keys {
        Some(_) if !same_pool => {
            return Err(PoolError::InvalidRequest(format!(
                "an encrypted copy of {source:?} is made in its own pool {:?}",
                copy.source_pool.name()
            )))
        }
        Some(keys) => {
            pool.clone_encrypted_volume(source, keys.source.as_deref(), name, &keys.target, report)
                .await?
        }
        None if same_pool => {
            pool.clone_volume(source, name, CloneMode::Full, report)
                .await?
        }
        None => {
            let mut opts = ImportOptions::default();
            opts.format = Some(Format::Qcow2);
            let from = ImportSource::File(copy.source.path.clone());
            let mut progress = |p: vessel_storage::ImportProgress| {
                if let Some(percent) = p.percent() {
                    report(percent)
                }
            };
            pool.import_volume(name, from, &opts, &mut progress)
                .await?
                .info
        }
    };
    let Some(size) = copy.size.filter(|size| *size != made.virtual_size) else {
        return Ok(made);
    };
    let resized = match copy.keys {
        Some(keys) => {
            pool.resize_encrypted_volume(name, &keys.target, size, false)
                .await
        }
        None => pool.resize_volume(name, size, false).await,
    };
    if resized.is_err() {
        // The copy is ours (it did not exist before): it goes with the failure.
        let _ = pool.delete_volume(name).await;
    }
    resized
}
