//! Volumes: disk images in a pool. The pool's directory is the source of truth for which volumes
//! exist; a VM uses a volume when its disk path is the volume's file.

use vessel_api::{
    ApiError, Boot, CloneVolumeRequest, CreateVolumeRequest, ErrorCode, ResizeVolumeRequest,
    Volume, VolumeFormat,
};
use vessel_core::validate_name;
use vessel_storage::{CloneMode, DirPool, Format, PoolError, StoragePool, VolumeInfo, VolumeSpec};

use std::sync::Arc;

use crate::common::op_error::OpError;
use crate::ctx::Service;
use crate::storage::copy::{self, Copy, CopyKeys};
use crate::storage::keys;
use crate::vm::model::Loaded;
use crate::vm::model::Payload;

pub(crate) fn to_format(format: VolumeFormat) -> Format {
    match format {
        VolumeFormat::Qcow2 => Format::Qcow2,
        VolumeFormat::Raw => Format::Raw,
    }
}

pub(crate) fn from_format(format: Format) -> VolumeFormat {
    match format {
        Format::Qcow2 => VolumeFormat::Qcow2,
        Format::Raw => VolumeFormat::Raw,
    }
}

/// A pool error as the API reports it.
pub(crate) fn api_error(e: PoolError) -> ApiError {
    let code = match &e {
        PoolError::InvalidName(_) | PoolError::InvalidRequest(_) => ErrorCode::InvalidArgument,
        PoolError::AlreadyExists { .. } => ErrorCode::AlreadyExists,
        PoolError::NotFound { .. } => ErrorCode::NotFound,
        PoolError::InUse { .. } | PoolError::NoSpace { .. } => ErrorCode::Conflict,
        _ if lock_held(&e) => ErrorCode::Conflict,
        PoolError::Io { .. } | PoolError::QemuImg(_) => ErrorCode::Internal,
    };
    ApiError::new(code, crate::common::errors::error_chain(&e))
}

/// What a request for a missing volume is answered.
pub(crate) fn not_found(pool: &str, name: &str) -> ApiError {
    api_error(PoolError::NotFound {
        pool: pool.into(),
        name: name.into(),
    })
}

/// A resize in progress: while it lives, another resize of the same volume is refused with a
/// clean 409 instead of racing it for qemu-img's write lock (a 500).
struct Resizing<'a> {
    ctx: &'a crate::ctx::Ctx,
    key: String,
}

impl<'a> Resizing<'a> {
    fn begin(ctx: &'a crate::ctx::Ctx, pool: &str, name: &str) -> Result<Self, ApiError> {
        let key = format!("{pool}/{name}");
        if !ctx.resizing.lock().insert(key.clone()) {
            return Err(ApiError::conflict(format!(
                "volume {name:?} of pool {pool:?} is being resized by another request"
            ))
            .with_hint("wait for it to finish, then check the size with `vessel volume show`"));
        }
        Ok(Resizing { ctx, key })
    }
}

impl Drop for Resizing<'_> {
    fn drop(&mut self) {
        self.ctx.resizing.lock().remove(&self.key);
    }
}

/// Whether qemu-img failed because another process holds the image's lock (QEMU, or another
/// qemu-img): that is the volume being in use, a conflict, not the daemon failing.
fn lock_held(e: &PoolError) -> bool {
    matches!(e, PoolError::QemuImg(vessel_storage::QemuImgError::Failed { stderr, .. })
        if stderr.contains("Failed to get") && stderr.contains("lock"))
}

/// VMs that boot from the volume's file or have the volume attached.
fn users_of(vms: &[Loaded], pool: &str, volume: &str, path: &std::path::Path) -> Vec<String> {
    vms.iter()
        .filter(|vm| {
            let spec = &vm.record.spec;
            matches!(&spec.boot, Boot::Disk { disk } if std::path::Path::new(disk) == path)
                || spec
                    .disks
                    .iter()
                    .any(|d| d.pool == pool && d.volume == volume)
        })
        .map(|vm| vm.record.spec.name.clone())
        .collect()
}

fn view(pool: &str, info: VolumeInfo, vms: &[Loaded], project: String) -> Volume {
    Volume {
        pool: pool.to_string(),
        project,
        used_by: users_of(vms, pool, &info.name, &info.path),
        name: info.name,
        format: from_format(info.format),
        path: info.path.to_string_lossy().into_owned(),
        virtual_bytes: info.virtual_size,
        allocated_bytes: info.allocated_size,
        backing_volume: info.backing_volume,
        backing_chain: info
            .backing_chain
            .iter()
            .map(|i| i.path.to_string_lossy().into_owned())
            .collect(),
        encrypted: info.encrypted,
    }
}

impl Service {
    async fn vms(&self) -> Result<Vec<Loaded>, ApiError> {
        self.ctx
            .view
            .all()
            .await
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    /// The volumes of a pool in the projects `visible` shows.
    pub async fn list_volumes(
        &self,
        pool: &str,
        visible: &vessel_auth::Visibility,
    ) -> Result<Vec<Volume>, ApiError> {
        let dir = self.open_pool(pool).await?;
        let vms = self.vms().await?;
        let volumes = dir.list_volumes().await.map_err(api_error)?;
        let projects = crate::storage::ownership::of_pool(&self.ctx, pool).await?;
        Ok(volumes
            .into_iter()
            .map(|v| {
                let project = projects
                    .get(&v.name)
                    .cloned()
                    .unwrap_or_else(crate::vm::model::default_project);
                view(pool, v, &vms, project)
            })
            .filter(|v| visible.shows(&v.project))
            .collect())
    }

    pub async fn get_volume(&self, pool: &str, name: &str) -> Result<Volume, ApiError> {
        validate_name("volume", name).map_err(ApiError::invalid)?;
        let dir = self.open_pool(pool).await?;
        let info = dir.volume(name).await.map_err(api_error)?;
        let project = crate::storage::ownership::get(&self.ctx, pool, name).await?;
        Ok(view(pool, info, &self.vms().await?, project))
    }

    /// Creates an empty volume, or a linked clone when `backing` is given. Its size is reserved
    /// against the project's disk quota first (see `volume_projects`).
    pub async fn create_volume(
        &self,
        pool: &str,
        request: &CreateVolumeRequest,
    ) -> Result<Volume, ApiError> {
        validate_name("volume", &request.name).map_err(ApiError::invalid)?;
        let dir = self.open_pool(pool).await?;
        let project = request
            .project
            .clone()
            .unwrap_or_else(crate::vm::model::default_project);
        crate::access::projects::load(self.ctx.store.as_ref(), &project).await?;
        let spec = VolumeSpec {
            name: request.name.clone(),
            format: to_format(request.format),
            size: request.size_bytes,
            backing: request.backing.clone(),
        };
        // A linked clone's backing must be the project's own volume: a clone of another
        // project's volume would read its data and pin it against deletion.
        if let Some(backing) = &spec.backing {
            validate_name("volume", backing).map_err(ApiError::invalid)?;
            crate::storage::ownership::require_in_project(&self.ctx, pool, backing, &project)
                .await?;
        }
        let bytes = match (spec.size, &spec.backing) {
            (Some(size), _) => size,
            (None, Some(backing)) => dir.volume(backing).await.map_err(api_error)?.virtual_size,
            (None, None) => {
                return Err(
                    ApiError::invalid("a new volume needs a size (size_bytes), e.g. 20G")
                        .with_hint("vessel volume create NAME --size 20G"),
                )
            }
        };
        let pending =
            crate::storage::ownership::reserve_new(&self.ctx, pool, &spec.name, &project, bytes)
                .await?;
        let info = match self.make_volume(&dir, pool, &spec, request.encrypted).await {
            Ok(info) => info,
            Err(e) => {
                pending.failed().await;
                return Err(e);
            }
        };
        pending.made(info.virtual_size).await?;
        Ok(view(pool, info, &self.vms().await?, project))
    }

    async fn make_volume(
        &self,
        dir: &DirPool,
        pool: &str,
        spec: &VolumeSpec,
        encrypted: bool,
    ) -> Result<VolumeInfo, ApiError> {
        if !encrypted {
            return dir.create_volume(spec).await.map_err(api_error);
        }
        if dir.volume(&spec.name).await.is_ok() {
            return Err(api_error(PoolError::AlreadyExists {
                pool: pool.into(),
                name: spec.name.clone(),
            }));
        }
        // The key is stored (wrapped) first, so an encrypted volume never exists without its
        // key; if the volume cannot be made, the key goes again.
        let (key, _pending) = keys::create(&self.ctx, pool, &spec.name).await?;
        match dir.create_encrypted_volume(spec, &key).await {
            Ok(info) => Ok(info),
            Err(e) => {
                keys::delete(&self.ctx, pool, &spec.name).await?;
                Err(api_error(e))
            }
        }
    }

    /// Starts a clone: a linked one is instant, a full copy reports progress and can be
    /// cancelled. An encrypted volume is copied in full under a new key of its own. The
    /// operation's result is the new volume.
    pub async fn clone_volume(
        &self,
        pool: &str,
        source: &str,
        request: &CloneVolumeRequest,
    ) -> Result<vessel_api::Operation, ApiError> {
        validate_name("volume", source).map_err(ApiError::invalid)?;
        validate_name("volume", &request.name).map_err(ApiError::invalid)?;
        let dir = self.open_pool(pool).await?;
        let src = dir.volume(source).await.map_err(api_error)?;
        if src.encrypted && request.linked {
            return Err(ApiError::invalid(format!(
                "volume {source:?} is encrypted; encrypted volumes are copied in full, each with its own key (drop --linked)"
            )));
        }
        // The copy belongs to the source's project, and its size is reserved in that project's
        // disk quota before the copy starts; a failed copy gives it back.
        let project = crate::storage::ownership::get(&self.ctx, pool, source).await?;
        let pending = crate::storage::ownership::reserve_new(
            &self.ctx,
            pool,
            &request.name,
            &project,
            src.virtual_size,
        )
        .await?;
        self.start_clone(dir, &src, request, project, pending).await
    }

    async fn start_clone(
        &self,
        dir: Arc<DirPool>,
        src: &VolumeInfo,
        request: &CloneVolumeRequest,
        project: String,
        pending: crate::storage::ownership::PendingVolume,
    ) -> Result<vessel_api::Operation, ApiError> {
        let pool = dir.name().to_string();
        let keys = match src.encrypted {
            true => Some(CopyKeys::make(&self.ctx, &pool, src, &pool, &request.name).await?),
            false => None,
        };
        let record = crate::storage::host_ops::begin(
            &self.ctx,
            vessel_api::OperationAction::CloneVolume,
            format!("volume/{pool}/{}", request.name),
            &project,
        )
        .await?;
        let operation = record.operation.clone();
        let cancel = vessel_storage::CancelToken::new();
        let (service, src, name, linked) = (
            self.clone(),
            src.clone(),
            request.name.clone(),
            request.linked,
        );
        crate::storage::host_ops::run(
            Arc::clone(&self.ctx),
            record,
            cancel,
            move |progress| async move {
                let mut report = |percent: f64| progress.report(percent);
                let made = if linked {
                    dir.clone_volume(&src.name, &name, CloneMode::Linked, &mut report)
                        .await
                        .map_err(api_error)
                } else {
                    let copy = Copy {
                        source_pool: &dir,
                        source: &src,
                        pool: &dir,
                        name: &name,
                        size: None,
                        keys: keys.as_ref(),
                    };
                    copy::full_copy(&service.ctx, copy, &mut report).await
                };
                let info = match made {
                    Ok(info) => info,
                    Err(e) => {
                        pending.failed().await;
                        return Err(OpError::from(e));
                    }
                };
                pending.made(info.virtual_size).await?;
                let vms = service.vms().await?;
                serde_json::to_value(view(&pool, info, &vms, project))
                    .map_err(|e| OpError::from(e.to_string()))
            },
        );
        Ok(operation)
    }

    /// Offline resize: refused while a running VM uses the volume.
    pub async fn resize_volume(
        &self,
        pool: &str,
        name: &str,
        request: &ResizeVolumeRequest,
    ) -> Result<Volume, ApiError> {
        validate_name("volume", name).map_err(ApiError::invalid)?;
        let dir = self.open_pool(pool).await?;
        let _resizing = Resizing::begin(&self.ctx, pool, name)?;
        let current = dir.volume(name).await.map_err(api_error)?;
        let path = current.path.clone();
        let vms = self.vms().await?;
        let running: Vec<String> = users_of(&vms, pool, name, &path)
            .into_iter()
            .filter(|user| {
                vms.iter()
                    .any(|vm| &vm.record.spec.name == user && vm.status.state.has_process())
            })
            .collect();
        // A growth is reserved against the project's disk quota first; whatever then happens,
        // the entry ends up with the size the volume has on disk.
        crate::storage::ownership::reserve_resize(
            &self.ctx,
            pool,
            name,
            current.virtual_size,
            request.size_bytes,
        )
        .await?;
        let resized = if running.is_empty() {
            self.resize_offline(&dir, pool, name, request, &current, &vms)
                .await
        } else {
            self.resize_online(pool, name, request, &current, running)
                .await
        };
        let on_disk = match &resized {
            Ok(volume) => volume.virtual_bytes,
            Err(_) => dir.volume(name).await.map_err(api_error)?.virtual_size,
        };
        crate::storage::ownership::record_size(&self.ctx, pool, name, on_disk).await?;
        resized
    }

    async fn resize_offline(
        &self,
        dir: &DirPool,
        pool: &str,
        name: &str,
        request: &ResizeVolumeRequest,
        current: &VolumeInfo,
        vms: &[Loaded],
    ) -> Result<Volume, ApiError> {
        let info = if current.encrypted {
            let key = keys::get(&self.ctx, pool, name)
                .await
                .map_err(ApiError::internal)?;
            dir.resize_encrypted_volume(name, &key, request.size_bytes, request.shrink)
                .await
        } else {
            dir.resize_volume(name, request.size_bytes, request.shrink)
                .await
        }
        .map_err(api_error)?;
        let project = crate::storage::ownership::get(&self.ctx, pool, name).await?;
        Ok(view(pool, info, vms, project))
    }

    /// Grows the disk of a running VM: its worker resizes it through QEMU (`block_resize`), and
    /// the guest sees the new size at once.
    async fn resize_online(
        &self,
        pool: &str,
        name: &str,
        request: &ResizeVolumeRequest,
        current: &VolumeInfo,
        running: Vec<String>,
    ) -> Result<Volume, ApiError> {
        if request.size_bytes < current.virtual_size {
            return Err(ApiError::conflict(format!(
                "volume {name:?} is in use by running VM {}; shrinking needs the VM stopped (and the guest's file system shrunk first)",
                running.join(", ")
            )));
        }
        if current.read_only {
            return Err(ApiError::conflict(format!(
                "volume {name:?} is read-only (an image); clone it first"
            )));
        }
        let [vm] = running.as_slice() else {
            return Err(ApiError::conflict(format!(
                "volume {name:?} is shared by running VMs {}; stop all but one to resize it",
                running.join(", ")
            )));
        };
        let resize = Payload::ResizeDisk {
            disk: vessel_api::VmDisk {
                pool: pool.into(),
                volume: name.into(),
                read_only: false,
                shareable: false,
                delete_with_vm: false,
            },
            size_bytes: request.size_bytes,
        };
        let op = self.submit(vm, resize).await?;
        let done = self.wait(&op.id).await?;
        if done.error.is_some() {
            return Err(done.failure(&format!("online resize of volume {name:?} failed")));
        }
        self.get_volume(pool, name).await
    }

    /// Deletes a volume no VM uses and no linked clone depends on.
    pub async fn delete_volume(&self, pool: &str, name: &str) -> Result<(), ApiError> {
        let current = self.get_volume(pool, name).await?;
        if self.is_image_volume(pool, name).await? {
            return Err(ApiError::conflict(format!(
                "volume {name:?} is the image {name:?}; delete it with `vessel image delete {name}`"
            )));
        }
        if !current.used_by.is_empty() {
            return Err(ApiError::conflict(format!(
                "volume {name:?} is the disk of VM {}; delete the VM or give it another disk first",
                current.used_by.join(", ")
            )));
        }
        self.open_pool(pool)
            .await?
            .delete_volume(name)
            .await
            .map_err(api_error)?;
        crate::storage::ownership::remove(&self.ctx, pool, name).await?;
        // After the volume: a key without a volume is harmless, a volume without its key is lost.
        keys::delete(&self.ctx, pool, name).await
    }

    async fn open_pool(&self, pool: &str) -> Result<std::sync::Arc<DirPool>, ApiError> {
        let record = self.pool_record(pool).await?;
        crate::storage::pools::open(&self.ctx, &record).await
    }
}
