//! The project of each volume: `volprojects/<pool>/<volume>` holds its name. Volumes have no
//! record of their own (the pool's directory is the truth about which exist), so this is kept
//! beside them: written when a volume is created (or cloned, or made as a VM's root disk),
//! removed when it is deleted. A volume without an entry (made before projects existed, or
//! imported) belongs to `default`.

use std::collections::HashMap;

use vessel_api::ApiError;
use vessel_store::{Op, Store};

use crate::service::store_error;

pub const PREFIX: &str = "volprojects/";

pub fn key(pool: &str, volume: &str) -> String {
    format!("{PREFIX}{pool}/{volume}")
}

pub fn put(pool: &str, volume: &str, project: &str) -> Op {
    Op::Put(key(pool, volume), project.as_bytes().to_vec())
}

/// The project of one volume.
pub async fn get(store: &dyn Store, pool: &str, volume: &str) -> Result<String, ApiError> {
    let kv = store.get(&key(pool, volume)).await.map_err(store_error)?;
    Ok(kv
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .unwrap_or_else(crate::model::default_project))
}

/// The projects of a pool's volumes that have an entry, by volume name.
pub async fn of_pool(store: &dyn Store, pool: &str) -> Result<HashMap<String, String>, ApiError> {
    let prefix = format!("{PREFIX}{pool}/");
    let (kvs, _) = store.list(&prefix).await.map_err(store_error)?;
    Ok(kvs
        .into_iter()
        .map(|kv| {
            let name = kv.key[prefix.len()..].to_string();
            (name, String::from_utf8_lossy(&kv.value).into_owned())
        })
        .collect())
}

/// Records `project` for a volume (one transaction of its own).
pub async fn set(
    store: &dyn Store,
    pool: &str,
    volume: &str,
    project: &str,
) -> Result<(), ApiError> {
    let txn = vessel_store::Txn::new().then(put(pool, volume, project));
    store.txn(txn).await.map_err(store_error)?;
    Ok(())
}

/// Forgets a deleted volume's project.
pub async fn remove(store: &dyn Store, pool: &str, volume: &str) -> Result<(), ApiError> {
    store
        .delete(&key(pool, volume))
        .await
        .map_err(store_error)?;
    Ok(())
}
