//! Reading records from the store as the API needs them: a store failure becomes the daemon's
//! 500 in one way everywhere.

use vessel_api::ApiError;
use vessel_store::Store;

use crate::common::errors::store_error;

/// Whether `key` holds a record now (a create that lost a race asks this to say why).
pub async fn exists(store: &dyn Store, key: &str) -> Result<bool, ApiError> {
    Ok(store.get(key).await.map_err(store_error)?.is_some())
}
