//! The owner and size of each volume: `volprojects/<host>/<pool>/<volume>` holds a
//! [`VolumeEntry`] (its project and virtual size). Keyed by host like the pools; a project's
//! disk usage counts the entries of every host. Volumes have no record of their own (the pool's directory is
//! the truth about which exist), so this is kept beside them, and it is what the disk quota
//! counts.
//!
//! The entry is written *before* the volume is made or grown, in the same transaction as the
//! quota check (see `projects::reserve`): that makes it the reservation, so two requests racing
//! for the last bytes of a project's disk quota cannot both win, even when making the volume
//! takes minutes (a full copy). A failed make or resize puts the entry back to what is on disk;
//! a crash in between is repaired at the next start by [`reconcile`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vessel_api::{ApiError, ErrorCode, Usage};
use vessel_storage::StoragePool;
use vessel_store::{Compare, Op, Store, Txn};

use crate::common::errors::store_error;
use crate::ctx::Ctx;

pub const PREFIX: &str = "volprojects/";

pub fn key(host: &str, pool: &str, volume: &str) -> String {
    format!("{PREFIX}{host}/{pool}/{volume}")
}

/// The prefix of one host's entries.
fn host_prefix(host: &str) -> String {
    format!("{PREFIX}{host}/")
}

/// What the store knows of one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeEntry {
    pub project: String,
    /// The size the guest sees (what the disk quota counts: provisioned, not allocated, so that
    /// a thin volume filling up never takes a project over its quota behind its back).
    pub virtual_bytes: u64,
}

impl VolumeEntry {
    pub fn new(project: &str, virtual_bytes: u64) -> Self {
        VolumeEntry {
            project: project.to_string(),
            virtual_bytes,
        }
    }
}

/// Entries written before sizes were kept hold only the project's name; their size is filled in
/// by [`reconcile`] at start.
fn decode_entry(bytes: &[u8]) -> VolumeEntry {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| VolumeEntry::new(&String::from_utf8_lossy(bytes), 0))
}

pub fn put(host: &str, pool: &str, volume: &str, entry: &VolumeEntry) -> Op {
    Op::Put(key(host, pool, volume), crate::vm::model::encode(entry))
}

/// The entry of one volume and its mod revision, if it has one.
async fn entry(
    store: &dyn Store,
    host: &str,
    pool: &str,
    volume: &str,
) -> Result<Option<(VolumeEntry, i64)>, ApiError> {
    let kv = store
        .get(&key(host, pool, volume))
        .await
        .map_err(store_error)?;
    Ok(kv.map(|kv| (decode_entry(&kv.value), kv.mod_revision)))
}

/// Whether a volume (or a reservation for one) has an entry.
pub async fn exists(ctx: &Ctx, pool: &str, volume: &str) -> Result<bool, ApiError> {
    Ok(
        entry(ctx.store.as_ref(), &ctx.config.host_name, pool, volume)
            .await?
            .is_some(),
    )
}

/// The project of one volume (`default` for a volume without an entry).
pub async fn get(ctx: &Ctx, pool: &str, volume: &str) -> Result<String, ApiError> {
    Ok(
        entry(ctx.store.as_ref(), &ctx.config.host_name, pool, volume)
            .await?
            .map(|(e, _)| e.project)
            .unwrap_or_else(crate::vm::model::default_project),
    )
}

/// Refuses a volume that is not `project`'s. A VM uses, and a linked clone is backed by,
/// volumes of its own project only (issue 13: a VM of one project must never read or write
/// another's volume, nor pin it). A volume of another project is answered exactly as a
/// missing one, so the refusal tells nothing about other projects.
pub async fn require_in_project(
    ctx: &Ctx,
    pool: &str,
    volume: &str,
    project: &str,
) -> Result<(), ApiError> {
    let owner = match entry(ctx.store.as_ref(), &ctx.config.host_name, pool, volume).await? {
        Some((entry, _)) => entry.project,
        None => crate::vm::model::default_project(),
    };
    let exists = match crate::storage::pools::open_by_name(ctx, pool).await {
        Ok(dir) => dir.volume(volume).await.is_ok(),
        Err(_) => false,
    };
    if exists && owner == project {
        return Ok(());
    }
    Err(not_in_project(pool, volume, project))
}

/// The one answer for a volume that is missing or in another project.
pub fn not_in_project(pool: &str, volume: &str, project: &str) -> ApiError {
    ApiError::not_found(format!(
        "volume {volume:?} not found in pool {pool:?} of project {project:?}"
    ))
    .with_hint("a VM, and a linked clone's backing, use volumes of their own project only; list them with `vessel volume list`")
}

/// The projects of a pool's volumes that have an entry, by volume name.
pub async fn of_pool(ctx: &Ctx, pool: &str) -> Result<HashMap<String, String>, ApiError> {
    let prefix = format!("{}{pool}/", host_prefix(&ctx.config.host_name));
    let (kvs, _) = ctx.store.list(&prefix).await.map_err(store_error)?;
    Ok(kvs
        .into_iter()
        .map(|kv| {
            let name = kv.key[prefix.len()..].to_string();
            (name, decode_entry(&kv.value).project)
        })
        .collect())
}

/// What a project's volumes take of its disk quota, and how many there are (on every host).
pub async fn project_disk(store: &dyn Store, project: &str) -> Result<(u64, u64), ApiError> {
    let (kvs, _) = store.list(PREFIX).await.map_err(store_error)?;
    Ok(kvs
        .iter()
        .map(|kv| decode_entry(&kv.value))
        .filter(|e| e.project == project)
        .fold((0, 0), |(bytes, count), e| {
            (bytes.saturating_add(e.virtual_bytes), count + 1)
        }))
}

/// Refuses at once an import into a project already at its disk quota (an import's size is
/// only known once it is done; it is then reserved, and deleted again if it does not fit).
pub async fn check_room(store: &dyn Store, project: &str) -> Result<(), ApiError> {
    let one_byte = Usage {
        disk_bytes: 1,
        ..Usage::default()
    };
    crate::access::projects::reserve(store, project, &one_byte)
        .await
        .map(drop)
}

fn already_exists(pool: &str, volume: &str) -> ApiError {
    ApiError::new(
        ErrorCode::AlreadyExists,
        format!("a volume named {volume:?} already exists in pool {pool:?} (or is being made)"),
    )
    .with_hint("choose another name, or delete the existing volume first")
}

/// Reserves a new volume of `bytes` for `project`: checks the disk quota and writes the entry
/// in one transaction. Refused if the name is taken (by a volume or a reservation).
pub async fn reserve_new(
    ctx: &Ctx,
    pool: &str,
    volume: &str,
    project: &str,
    bytes: u64,
) -> Result<PendingVolume, ApiError> {
    let (store, host) = (ctx.store.as_ref(), ctx.config.host_name.as_str());
    let need = Usage {
        disk_bytes: bytes,
        ..Usage::default()
    };
    for _ in 0..crate::access::projects::MAX_ATTEMPTS {
        let guard = crate::access::projects::reserve(store, project, &need).await?;
        let txn = guard
            .apply(Txn::new())
            .when(Compare::Missing(key(host, pool, volume)))
            .then(put(host, pool, volume, &VolumeEntry::new(project, bytes)));
        if store.txn(txn).await.map_err(store_error)?.succeeded {
            return Ok(PendingVolume::new(ctx, pool, volume));
        }
        if entry(store, host, pool, volume).await?.is_some() {
            return Err(already_exists(pool, volume));
        }
    }
    Err(crate::access::projects::contended(project))
}

/// Reserves a volume's new size before it is grown (a growth is checked against the quota; a
/// shrink needs no check and is recorded by [`record_size`] once done). A volume without an
/// entry (a file put into the pool while the daemon ran) is taken as `default`'s, at
/// `on_disk` bytes, and gets one.
pub async fn reserve_resize(
    ctx: &Ctx,
    pool: &str,
    volume: &str,
    on_disk: u64,
    new_bytes: u64,
) -> Result<(), ApiError> {
    let (store, host) = (ctx.store.as_ref(), ctx.config.host_name.as_str());
    for _ in 0..crate::access::projects::MAX_ATTEMPTS {
        let (current, unchanged) = match entry(store, host, pool, volume).await? {
            Some((current, revision)) => (
                current,
                Compare::ModRevision(key(host, pool, volume), revision),
            ),
            None => (
                VolumeEntry::new(&crate::vm::model::default_project(), on_disk),
                Compare::Missing(key(host, pool, volume)),
            ),
        };
        let growth = new_bytes.saturating_sub(current.virtual_bytes);
        if growth == 0 {
            return Ok(());
        }
        let need = Usage {
            disk_bytes: growth,
            ..Usage::default()
        };
        let guard = crate::access::projects::reserve(store, &current.project, &need).await?;
        let txn = guard.apply(Txn::new()).when(unchanged).then(put(
            host,
            pool,
            volume,
            &VolumeEntry::new(&current.project, new_bytes),
        ));
        if store.txn(txn).await.map_err(store_error)?.succeeded {
            return Ok(());
        }
    }
    Err(busy(pool, volume))
}

fn busy(pool: &str, volume: &str) -> ApiError {
    ApiError::conflict(format!(
        "volume {volume:?} of pool {pool:?} changed too often while this request was recorded"
    ))
    .with_hint("try again")
}

/// Records the size a volume has on disk now (after it was made, resized, or failed to be).
pub async fn record_size(
    ctx: &Ctx,
    pool: &str,
    volume: &str,
    virtual_bytes: u64,
) -> Result<(), ApiError> {
    record_size_in(
        ctx.store.as_ref(),
        &ctx.config.host_name,
        pool,
        volume,
        virtual_bytes,
    )
    .await
}

async fn record_size_in(
    store: &dyn Store,
    host: &str,
    pool: &str,
    volume: &str,
    virtual_bytes: u64,
) -> Result<(), ApiError> {
    for _ in 0..crate::access::projects::MAX_ATTEMPTS {
        let Some((mut current, revision)) = entry(store, host, pool, volume).await? else {
            return Ok(());
        };
        if current.virtual_bytes == virtual_bytes {
            return Ok(());
        }
        current.virtual_bytes = virtual_bytes;
        let txn = Txn::new()
            .when(Compare::ModRevision(key(host, pool, volume), revision))
            .then(put(host, pool, volume, &current));
        if store.txn(txn).await.map_err(store_error)?.succeeded {
            return Ok(());
        }
    }
    Err(busy(pool, volume))
}

/// A reservation whose volume is still being made: dropped without [`PendingVolume::made`]
/// (the make failed, or was cancelled and its future dropped), it gives the reservation back.
#[must_use = "dropping it gives the reservation back"]
pub struct PendingVolume {
    store: Arc<dyn Store>,
    host: String,
    pool: String,
    volume: String,
    armed: bool,
}

impl PendingVolume {
    fn new(ctx: &Ctx, pool: &str, volume: &str) -> Self {
        PendingVolume {
            store: Arc::clone(&ctx.store),
            host: ctx.config.host_name.clone(),
            pool: pool.to_string(),
            volume: volume.to_string(),
            armed: true,
        }
    }

    /// The volume exists: the entry stays, with the size it was made with.
    pub async fn made(mut self, virtual_bytes: u64) -> Result<(), ApiError> {
        self.armed = false;
        record_size_in(
            self.store.as_ref(),
            &self.host,
            &self.pool,
            &self.volume,
            virtual_bytes,
        )
        .await
    }

    /// The volume was not made: the reservation goes now (awaited, so that a retry of the
    /// same name right after the error finds it free).
    pub async fn failed(mut self) {
        self.armed = false;
        if let Err(e) = remove_in(self.store.as_ref(), &self.host, &self.pool, &self.volume).await {
            tracing::warn!(pool = %self.pool, volume = %self.volume, error = %e.message, "could not give back a volume reservation");
        }
    }
}

impl Drop for PendingVolume {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, host, pool, volume) = (
            Arc::clone(&self.store),
            std::mem::take(&mut self.host),
            std::mem::take(&mut self.pool),
            std::mem::take(&mut self.volume),
        );
        // Drop cannot await; the removal is a single delete, done on the runtime.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = remove_in(store.as_ref(), &host, &pool, &volume).await {
                    tracing::warn!(pool, volume, error = %e.message, "could not give back a volume reservation");
                }
            });
        }
    }
}

/// Forgets a deleted volume (or a reservation whose volume was never made).
pub async fn remove(ctx: &Ctx, pool: &str, volume: &str) -> Result<(), ApiError> {
    remove_in(ctx.store.as_ref(), &ctx.config.host_name, pool, volume).await
}

async fn remove_in(
    store: &dyn Store,
    host: &str,
    pool: &str,
    volume: &str,
) -> Result<(), ApiError> {
    store
        .delete(&key(host, pool, volume))
        .await
        .map_err(store_error)?;
    Ok(())
}

/// At start, before any request: makes the entries match the pools. A volume without an entry
/// (imported by hand, or from before entries existed) gets one: the project of the image it is,
/// else of a VM that uses it, else `default`. An entry whose size differs from the file (a
/// crash during a resize) takes the file's. An entry without a volume (a crash while one was
/// being made) goes, unless a VM's spec names the volume: a create interrupted by the crash
/// makes that root disk when it is run again. Entries of pools that no longer exist go too.
pub async fn reconcile(ctx: &Ctx) -> anyhow::Result<()> {
    let (store, host) = (ctx.store.as_ref(), ctx.config.host_name.as_str());
    let (pools, _) = store
        .list(&crate::storage::pools::host_prefix(host))
        .await?;
    let (owner, wanted) = known_owners(store).await?;
    let mut ops = Vec::new();
    let mut by_pool = entries_by_pool(store, host, &mut ops).await?;
    for kv in &pools {
        let record: crate::storage::pools::PoolRecord =
            crate::vm::model::decode(&kv.key, &kv.value)?;
        let pool = crate::storage::pools::open(ctx, &record)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let mut entries = by_pool.remove(&record.name).unwrap_or_default();
        // Sizes from the files' headers: no qemu-img run per volume at start.
        for name in pool.volume_names().await? {
            let size = pool.virtual_size(&name).await?;
            let id = (record.name.clone(), name);
            let project = match entries.remove(&id.1) {
                Some(e) if e.virtual_bytes == size => continue,
                Some(e) => e.project,
                None => owner
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(crate::vm::model::default_project),
            };
            ops.push(put(host, &id.0, &id.1, &VolumeEntry::new(&project, size)));
        }
        for name in entries.into_keys() {
            if !wanted.contains(&(record.name.clone(), name.clone())) {
                ops.push(Op::Delete(key(host, &record.name, &name)));
            }
        }
    }
    // What is left are entries of pools deleted while a reservation was pending.
    for (pool, entries) in by_pool {
        ops.extend(
            entries
                .into_keys()
                .map(|name| Op::Delete(key(host, &pool, &name))),
        );
    }
    if !ops.is_empty() {
        tracing::info!(
            changes = ops.len(),
            "volume accounting brought in line with the pools"
        );
        let mut txn = Txn::new();
        for op in ops {
            txn = txn.then(op);
        }
        store.txn(txn).await?;
    }
    Ok(())
}

/// Volume (pool, name) → project, from the images and the VMs' disks; and the volumes some VM's
/// spec names (kept even without a file: an interrupted create makes them again).
async fn known_owners(
    store: &dyn Store,
) -> anyhow::Result<(HashMap<(String, String), String>, HashSet<(String, String)>)> {
    let (vm_kvs, _) = store.list(crate::vm::model::VMS_PREFIX).await?;
    let vms = crate::vm::model::group_vms(&vm_kvs)?;
    let (image_kvs, _) = store.list(crate::storage::images::IMAGES_PREFIX).await?;
    let mut owner = HashMap::new();
    for kv in &image_kvs {
        let image: crate::storage::images::ImageRecord =
            crate::vm::model::decode(&kv.key, &kv.value)?;
        owner.insert((image.pool, image.name), image.project);
    }
    let mut wanted = HashSet::new();
    for vm in &vms {
        for disk in &vm.record.spec.disks {
            let id = (disk.pool.clone(), disk.volume.clone());
            wanted.insert(id.clone());
            owner.entry(id).or_insert_with(|| vm.record.project.clone());
        }
    }
    Ok((owner, wanted))
}

/// Every entry of this host, read once, grouped by pool then volume; a key this module never
/// writes is deleted (through `ops`).
async fn entries_by_pool(
    store: &dyn Store,
    host: &str,
    ops: &mut Vec<Op>,
) -> anyhow::Result<HashMap<String, HashMap<String, VolumeEntry>>> {
    let prefix = host_prefix(host);
    let (all, _) = store.list(&prefix).await?;
    let mut by_pool: HashMap<String, HashMap<String, VolumeEntry>> = HashMap::new();
    for kv in all {
        let Some((pool, name)) = kv.key[prefix.len()..].split_once('/') else {
            ops.push(Op::Delete(kv.key));
            continue;
        };
        by_pool
            .entry(pool.to_string())
            .or_default()
            .insert(name.to_string(), decode_entry(&kv.value));
    }
    Ok(by_pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_project_and_size_and_old_ones_still_read() {
        let e = VolumeEntry::new("dev", 1 << 30);
        let bytes = crate::vm::model::encode(&e);
        assert_eq!(decode_entry(&bytes), e);
        assert_eq!(decode_entry(b"dev"), VolumeEntry::new("dev", 0));
    }
}
