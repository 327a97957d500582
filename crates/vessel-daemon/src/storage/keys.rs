//! Keys of encrypted volumes. Each encrypted volume has its own random key; the store keeps it
//! only wrapped by the host's master key (`volkeys/<host>/<pool>/<volume>`: the master key is
//! the host's own file, so its wrapped keys are too), bound to the volume's name, so neither the
//! database nor a copy of it reveals a key, and a wrapped key moved to another volume does not
//! open.

use std::sync::Arc;

use vessel_api::ApiError;
use vessel_secrets::{Keyring, VolumeKey, WrappedSecret};
use vessel_storage::StoragePool;
use vessel_store::{Compare, Op, Txn};

use crate::common::errors::store_error;
use crate::ctx::Ctx;
use crate::vm::model::{decode, encode};

pub const VOLKEYS_PREFIX: &str = "volkeys/";

pub fn volkey_key(host: &str, pool: &str, volume: &str) -> String {
    format!("{VOLKEYS_PREFIX}{host}/{pool}/{volume}")
}

/// The master key file, created (0600) at first start.
pub fn load_keyring(data_dir: &std::path::Path) -> anyhow::Result<Keyring> {
    Keyring::load_or_create(data_dir.join("master.key"))
        .map_err(|e| anyhow::anyhow!("cannot load the master key: {e}"))
}

/// A key being made for a volume that is being made: while it lives, the key record is in use
/// even though the volume does not exist yet.
pub struct PendingKey {
    ctx: Arc<Ctx>,
    record: String,
}

impl Drop for PendingKey {
    fn drop(&mut self) {
        self.ctx.pending_keys.lock().remove(&self.record);
    }
}

/// Makes a key for a new volume and stores it wrapped. Hold the returned guard until the volume
/// exists (or its creation failed and the key was deleted). A leftover key of a volume that does
/// not exist (a crash between storing the key and publishing the volume) is replaced; the key of
/// an existing volume never is.
pub async fn create(
    ctx: &Arc<Ctx>,
    pool: &str,
    volume: &str,
) -> Result<(VolumeKey, PendingKey), ApiError> {
    let record = volkey_key(&ctx.config.host_name, pool, volume);
    if !ctx.pending_keys.lock().insert(record.clone()) {
        return Err(ApiError::conflict(format!(
            "volume {volume:?} of pool {pool:?} is being created by another request"
        )));
    }
    let pending = PendingKey {
        ctx: Arc::clone(ctx),
        record: record.clone(),
    };
    let key = VolumeKey::generate().map_err(|e| ApiError::internal(e.to_string()))?;
    let wrapped = ctx
        .keyring
        .read()
        .await
        .wrap_volume_key(pool, volume, &key)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut guard = Compare::Missing(record.clone());
    if let Some(old) = ctx.store.get(&record).await.map_err(store_error)? {
        let exists = crate::storage::pools::open_by_name(ctx, pool)
            .await?
            .volume(volume)
            .await
            .is_ok();
        if exists {
            return Err(ApiError::conflict(format!(
                "volume {volume:?} of pool {pool:?} already exists"
            )));
        }
        guard = Compare::ModRevision(record.clone(), old.mod_revision);
    }
    let txn = Txn::new()
        .when(guard)
        .then(Op::Put(record, encode(&wrapped)));
    if !ctx.store.txn(txn).await.map_err(store_error)?.succeeded {
        return Err(ApiError::conflict(format!(
            "the key of volume {volume:?} of pool {pool:?} changed meanwhile; try again"
        )));
    }
    Ok((key, pending))
}

/// The key of an encrypted volume.
pub async fn get(ctx: &Ctx, pool: &str, volume: &str) -> Result<Arc<VolumeKey>, String> {
    let record = volkey_key(&ctx.config.host_name, pool, volume);
    let kv = ctx
        .store
        .get(&record)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!("volume {pool}/{volume} is encrypted but the daemon has no key for it")
        })?;
    let wrapped: WrappedSecret = decode(&kv.key, &kv.value).map_err(|e| e.to_string())?;
    let key = ctx
        .keyring
        .read()
        .await
        .unwrap_volume_key(pool, volume, &wrapped)
        .map_err(|e| format!("the key of volume {pool}/{volume} cannot be opened: {e}"))?;
    Ok(Arc::new(key))
}

pub async fn delete(ctx: &Ctx, pool: &str, volume: &str) -> Result<(), ApiError> {
    let txn = Txn::new().then(Op::Delete(volkey_key(&ctx.config.host_name, pool, volume)));
    ctx.store.txn(txn).await.map_err(store_error)?;
    Ok(())
}

/// Replaces the master key: every stored volume key is re-wrapped under a new one, then the new
/// key replaces the old file. A crash part-way leaves both keys on disk and every record
/// readable with one of them; the next rotation finishes the job.
pub async fn rotate_master_key(ctx: &Ctx) -> Result<vessel_api::MasterKeyRotation, ApiError> {
    let mut keyring = ctx.keyring.write().await;
    keyring
        .begin_rotation()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let prefix = format!("{VOLKEYS_PREFIX}{}/", ctx.config.host_name);
    let (kvs, _) = ctx.store.list(&prefix).await.map_err(store_error)?;
    let mut rewrapped = 0;
    for kv in &kvs {
        let wrapped: WrappedSecret =
            decode(&kv.key, &kv.value).map_err(|e| ApiError::internal(e.to_string()))?;
        if !keyring.needs_rewrap(&wrapped) {
            continue;
        }
        let (pool, volume) = kv.key[prefix.len()..]
            .split_once('/')
            .ok_or_else(|| ApiError::internal(format!("malformed key record {}", kv.key)))?;
        let aad = vessel_secrets::volume_aad(pool, volume);
        let new = keyring
            .rewrap(&wrapped, &aad)
            .map_err(|e| ApiError::internal(format!("re-wrapping {}: {e}", kv.key)))?;
        // Only if the record is unchanged since the listing: a volume deleted meanwhile keeps
        // its record deleted. (New keys cannot appear: creating one needs the keyring, which
        // this rotation holds.)
        let txn = Txn::new()
            .when(Compare::ModRevision(kv.key.clone(), kv.mod_revision))
            .then(Op::Put(kv.key.clone(), encode(&new)));
        ctx.store.txn(txn).await.map_err(store_error)?;
        rewrapped += 1;
    }
    keyring
        .finish_rotation()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    tracing::info!(rewrapped, key_id = %keyring.current().id(), "master key rotated");
    Ok(vessel_api::MasterKeyRotation {
        rewrapped,
        key_id: keyring.current().id().to_string(),
    })
}
