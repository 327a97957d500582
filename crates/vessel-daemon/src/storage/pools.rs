//! Storage pools: where volumes live. The store holds each pool's record under the name of the
//! host whose directory it is (`pools/<host>/<name>`); the pool's directory holds its volumes.
//! A `default` directory pool is made at first start. A daemon sees its own host's pools only.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vessel_api::{ApiError, CreatePoolRequest, ErrorCode, Pool, PoolKind};
use vessel_core::validate_name;
use vessel_storage::{DirPool, QemuImg, StoragePool};

use crate::common::errors::store_error;
use crate::ctx::Ctx;
use crate::ctx::Service;
use crate::storage::volumes::api_error;
use crate::vm::model::{decode, encode, now_ms};

pub const POOLS_PREFIX: &str = "pools/";
pub const DEFAULT_POOL: &str = "default";

pub fn pool_key(host: &str, name: &str) -> String {
    format!("{POOLS_PREFIX}{host}/{name}")
}

/// The prefix of one host's pool records.
pub fn host_prefix(host: &str) -> String {
    format!("{POOLS_PREFIX}{host}/")
}

/// A pool as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub name: String,
    pub kind: PoolKind,
    pub path: PathBuf,
    pub created_at_ms: u64,
}

/// Makes the `default` pool under the data dir if it does not exist yet.
pub async fn ensure_default_pool(ctx: &Ctx) -> anyhow::Result<()> {
    let path = ctx.config.data_dir.join("pools").join(DEFAULT_POOL);
    std::fs::create_dir_all(&path)?;
    let record = PoolRecord {
        name: DEFAULT_POOL.into(),
        kind: PoolKind::Dir,
        path,
        created_at_ms: now_ms(),
    };
    ctx.store
        .create(
            &pool_key(&ctx.config.host_name, DEFAULT_POOL),
            encode(&record),
        )
        .await?;
    Ok(())
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("pool {name:?} not found"))
        .with_hint("list pools with `vessel pool list`")
}

async fn open_uncached(record: &PoolRecord) -> Result<DirPool, ApiError> {
    DirPool::open(record.name.clone(), record.path.clone(), QemuImg::new())
        .await
        .map_err(|e| {
            ApiError::internal(format!(
                "pool {:?} at {} cannot be opened: {e}",
                record.name,
                record.path.display()
            ))
        })
}

/// The daemon's one handle on a pool. Opened once per daemon run: opening clears temporary
/// files a crash left behind, which must never happen while a request is building one, and the
/// handle's lock serializes name checks across requests.
pub(crate) async fn open(ctx: &Ctx, record: &PoolRecord) -> Result<Arc<DirPool>, ApiError> {
    let mut pools = ctx.pools.lock().await;
    if let Some((path, pool)) = pools.get(&record.name) {
        if *path == record.path {
            return Ok(Arc::clone(pool));
        }
    }
    let pool = Arc::new(open_uncached(record).await?);
    pools.insert(
        record.name.clone(),
        (record.path.clone(), Arc::clone(&pool)),
    );
    Ok(pool)
}

async fn pool_record(ctx: &Ctx, name: &str) -> Result<PoolRecord, ApiError> {
    validate_name("pool", name).map_err(ApiError::invalid)?;
    let kv = ctx
        .store
        .get(&pool_key(&ctx.config.host_name, name))
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found(name))?;
    decode(&kv.key, &kv.value).map_err(|e| ApiError::internal(e.to_string()))
}

/// The handle of the pool named `name`.
pub(crate) async fn open_by_name(ctx: &Ctx, name: &str) -> Result<Arc<DirPool>, ApiError> {
    open(ctx, &pool_record(ctx, name).await?).await
}

/// Logs every pool outside the data dir that group or others may enter (its modes are the host
/// admin's to set; see `file_modes`).
pub async fn warn_open_pools(ctx: &Ctx) {
    let Ok((kvs, _)) = ctx.store.list(&host_prefix(&ctx.config.host_name)).await else {
        return;
    };
    for kv in kvs {
        let Ok(record) = decode::<PoolRecord>(&kv.key, &kv.value) else {
            continue;
        };
        if record.path.starts_with(&ctx.config.data_dir) {
            continue;
        }
        if let Some(problem) = crate::access::file_modes::pool_dir_problem(&record.path) {
            tracing::warn!(pool = %record.name, "{problem}");
        }
    }
}

/// The API view: the record plus the pool's space and volume count, read now.
async fn view(pool: &DirPool, record: &PoolRecord) -> Result<Pool, ApiError> {
    let usage = pool.capacity().await.map_err(api_error)?;
    let volumes = pool.volume_names().await.map_err(api_error)?;
    Ok(Pool {
        name: record.name.clone(),
        kind: record.kind,
        path: record.path.to_string_lossy().into_owned(),
        total_bytes: usage.total,
        used_bytes: usage.used,
        available_bytes: usage.available,
        volumes: volumes.len() as u32,
        created_at_ms: record.created_at_ms,
    })
}

/// A pool directory must be absolute and plain (no `..`), so that overlap checks on paths mean
/// what they say.
fn validate_pool_path(path: &str) -> Result<PathBuf, ApiError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(ApiError::invalid(format!(
            "pool path {path:?} is relative; give an absolute path"
        )));
    }
    if path.len() > 4096 || path.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "pool path is too long or contains control characters",
        ));
    }
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(ApiError::invalid(format!(
            "pool path {path:?} contains '.' or '..'; give a plain absolute path"
        )));
    }
    Ok(p.components().collect())
}

fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

impl Service {
    async fn pool_records(&self) -> Result<Vec<PoolRecord>, ApiError> {
        let (kvs, _) = self
            .ctx
            .store
            .list(&host_prefix(&self.ctx.config.host_name))
            .await
            .map_err(store_error)?;
        kvs.iter()
            .map(|kv| {
                decode::<PoolRecord>(&kv.key, &kv.value)
                    .map_err(|e| ApiError::internal(e.to_string()))
            })
            .collect()
    }

    pub(crate) async fn pool_record(&self, name: &str) -> Result<PoolRecord, ApiError> {
        pool_record(&self.ctx, name).await
    }

    pub async fn list_pools(&self) -> Result<Vec<Pool>, ApiError> {
        let mut pools = Vec::new();
        for record in self.pool_records().await? {
            pools.push(view(&*open(&self.ctx, &record).await?, &record).await?);
        }
        Ok(pools)
    }

    pub async fn get_pool(&self, name: &str) -> Result<Pool, ApiError> {
        let record = self.pool_record(name).await?;
        view(&*open(&self.ctx, &record).await?, &record).await
    }

    /// Records a new directory pool, creating its directory if needed. A refused request leaves
    /// no directory behind that it made.
    pub async fn create_pool(&self, request: &CreatePoolRequest) -> Result<Pool, ApiError> {
        validate_name("pool", &request.name).map_err(ApiError::invalid)?;
        let path = validate_pool_path(&request.path)?;
        if overlaps(&path, &self.ctx.config.data_dir) {
            return Err(ApiError::invalid(format!(
                "pool path {} overlaps the daemon's data dir {}; choose a directory outside it",
                path.display(),
                self.ctx.config.data_dir.display()
            )));
        }
        if let Some(other) = self
            .pool_records()
            .await?
            .into_iter()
            .find(|r| overlaps(&path, &r.path))
        {
            return Err(ApiError::invalid(format!(
                "pool path {} overlaps pool {:?} at {}; pools must not nest",
                path.display(),
                other.name,
                other.path.display()
            )));
        }
        match std::fs::metadata(&path) {
            Ok(meta) if !meta.is_dir() => {
                return Err(ApiError::invalid(format!(
                    "pool path {} exists and is not a directory",
                    path.display()
                )))
            }
            _ => {}
        }
        let created_dir = !path.exists();
        if let Some(problem) = crate::access::file_modes::pool_dir_problem(&path) {
            tracing::warn!(pool = %request.name, "{problem}");
        }
        let record = PoolRecord {
            name: request.name.clone(),
            kind: request.kind,
            path: path.clone(),
            created_at_ms: now_ms(),
        };
        // Not through the daemon's pool handles: the name is not this pool's until the
        // transaction below succeeds.
        let pool = match open_uncached(&record).await {
            Ok(dir) => view(&dir, &record).await,
            Err(e) => Err(e),
        };
        let pool = match pool {
            Ok(pool) => pool,
            Err(e) => {
                if created_dir {
                    let _ = std::fs::remove_dir(&path);
                }
                return Err(e);
            }
        };
        let key = pool_key(&self.ctx.config.host_name, &request.name);
        let created = self.ctx.store.create(&key, encode(&record)).await;
        if !created.map_err(store_error)? {
            if created_dir {
                let _ = std::fs::remove_dir(&path);
            }
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("a pool named {:?} already exists", request.name),
            ));
        }
        Ok(pool)
    }

    /// Forgets a pool that holds no volumes, and removes its directory if that is empty.
    pub async fn delete_pool(&self, name: &str) -> Result<(), ApiError> {
        let record = self.pool_record(name).await?;
        if name == DEFAULT_POOL {
            return Err(ApiError::conflict("the default pool cannot be deleted"));
        }
        let names = open(&self.ctx, &record)
            .await?
            .volume_names()
            .await
            .map_err(api_error)?;
        if !names.is_empty() {
            return Err(ApiError::conflict(format!(
                "pool {name:?} still holds volumes: {}",
                names.join(", ")
            ))
            .with_hint("delete or move the volumes first"));
        }
        let key = pool_key(&self.ctx.config.host_name, name);
        if !self.ctx.store.delete(&key).await.map_err(store_error)? {
            return Err(not_found(name));
        }
        self.ctx.pools.lock().await.remove(name);
        // Only an empty directory goes; anything else in it is not ours to remove.
        let _ = std::fs::remove_dir(&record.path);
        Ok(())
    }
}
