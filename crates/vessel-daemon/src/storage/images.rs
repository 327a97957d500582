//! Images: read-only volumes that VMs are created from. The store keeps each image's record
//! (`images/<name>`: where it came from, its digest); its bytes are the volume of the same name
//! in its pool, with mode 0444. Imports and exports are long host operations
//! ([`crate::storage::host_ops`]) with progress and cancellation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vessel_api::{
    ApiError, ErrorCode, ExportVolumeRequest, ExportedVolume, Image, ImageKind, ImportImageRequest,
    ImportVolumeRequest, Operation, OperationAction,
};
use vessel_auth::host_files::DirKind;
use vessel_auth::{Identity, Permission, Scope};
use vessel_core::validate_name;
use vessel_storage::{
    CancelToken, DirPool, ExportOptions, ImportOptions, ImportSource, ImportedVolume, StoragePool,
};
use vessel_store::{Op, Txn};

use crate::common::errors::store_error;
use crate::common::op_error::OpError;
use crate::ctx::Ctx;
use crate::ctx::Service;
use crate::storage::host_ops;
use crate::storage::ownership::PendingVolume;
use crate::storage::pools::DEFAULT_POOL;
use crate::storage::volumes::{api_error, from_format, to_format};
use crate::vm::model::{decode, encode, now_ms};

pub const IMAGES_PREFIX: &str = "images/";

pub(crate) fn image_key(name: &str) -> String {
    format!("{IMAGES_PREFIX}{name}")
}

/// An image as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub pool: String,
    pub sha256: String,
    pub source: String,
    pub created_at_ms: u64,
    /// Images from before projects existed belong to `default`.
    #[serde(default = "crate::vm::model::default_project")]
    pub project: String,
    /// A disk (default), or a kernel or initrd that VMs boot with.
    #[serde(default)]
    pub kind: ImageKind,
    /// Usable and visible in every project; made so by host admins only.
    #[serde(default)]
    pub public: bool,
}

pub(crate) fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("image {name:?} not found"))
        .with_hint("list images with `vessel image list`, import one with `vessel image import`")
}

/// An import to run: where it goes, what it reads (and the file it reads through, held open
/// while it runs), and whose disk quota it counts against.
struct Import {
    pool: Arc<DirPool>,
    name: String,
    source: ImportSource,
    held: Option<std::fs::File>,
    opts: ImportOptions,
    project: String,
}

/// Starts `import` as host operation `action` on `resource`, cancellable. The volume is
/// imported, then counted against the project's disk quota (its size is known only once it is
/// done): one that does not fit is deleted again, and the operation fails with the refusal's
/// code (409 `quota_exceeded`). Then `finish` makes the operation's result of it. A failed
/// import keeps the pool's verdict: a source the request named badly (a refused address, a
/// redirect to one, a file that is not an image) is the caller's 400, not a 500.
async fn start_import<F, Fut>(
    ctx: &Arc<Ctx>,
    (action, resource): (OperationAction, String),
    mut import: Import,
    finish: F,
) -> Result<Operation, ApiError>
where
    F: FnOnce(ImportedVolume, PendingVolume) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<serde_json::Value, OpError>> + Send + 'static,
{
    let record = host_ops::begin(ctx, action, resource, &import.project).await?;
    let operation = record.operation.clone();
    let cancel = CancelToken::new();
    import.opts.cancel = Some(cancel.clone());
    let task_ctx = Arc::clone(ctx);
    host_ops::run(
        Arc::clone(ctx),
        record,
        cancel,
        move |progress| async move {
            let Import {
                pool,
                name,
                source,
                held: _held,
                opts,
                project,
            } = import;
            let imported = pool
                .import_volume(&name, source, &opts, &mut track(progress))
                .await
                .map_err(api_error)?;
            let size = imported.info.virtual_size;
            let reserved = crate::storage::ownership::reserve_new(
                &task_ctx,
                pool.name(),
                &name,
                &project,
                size,
            )
            .await;
            match reserved {
                Ok(pending) => finish(imported, pending).await,
                Err(e) => {
                    let _ = pool.delete_volume(&name).await;
                    Err(e.into())
                }
            }
        },
    );
    Ok(operation)
}

/// An import's source as the pool reads it, and what must stay alive while it does: a file
/// inside an allow-listed directory is opened here, beneath it (`host_paths`), and read through
/// its fd, so nothing swapped in after the check is read. A URL gets the caller's address policy.
fn open_source(
    ctx: &Ctx,
    identity: &Identity,
    source: &str,
    opts: &mut ImportOptions,
) -> Result<(ImportSource, Option<std::fs::File>), ApiError> {
    match parse_source(source)? {
        ImportSource::File(path) => {
            let dirs = crate::storage::host_paths::dirs(&ctx.config, DirKind::Import);
            if crate::storage::host_paths::confine(dirs, &path).is_none() {
                return Ok((ImportSource::File(path), None));
            }
            let file = crate::storage::host_paths::open_read(&ctx.config, DirKind::Import, &path)
                .map_err(|e| crate::storage::host_paths::open_failed("source", &path, &e))?;
            use std::os::fd::AsRawFd;
            let through = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            Ok((ImportSource::File(through), Some(file)))
        }
        ImportSource::Url(url) => {
            opts.url_policy = url_policy(ctx, identity);
            vessel_storage::precheck_url(&url, &opts.url_policy).map_err(api_error)?;
            Ok((ImportSource::Url(url), None))
        }
    }
}

/// Host admins may download from anywhere; everyone else from public addresses (or what the
/// configuration allows).
fn url_policy(ctx: &Ctx, identity: &Identity) -> vessel_storage::UrlPolicy {
    if identity.check(Permission::HostFiles, Scope::Host).is_ok() {
        vessel_storage::UrlPolicy::anywhere()
    } else {
        ctx.config.url_policy.clone()
    }
}

/// A file on the daemon's host (absolute path) or an http(s) URL.
fn parse_source(source: &str) -> Result<ImportSource, ApiError> {
    if source.starts_with("http://") || source.starts_with("https://") {
        return Ok(ImportSource::Url(source.to_string()));
    }
    if source.contains("://") {
        return Err(ApiError::invalid(format!(
            "source {source:?} uses a scheme Vessel cannot fetch; give an http:// or https:// URL or an absolute path on the daemon's host"
        )));
    }
    if !source.starts_with('/') || source.len() > 4096 || source.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "source {source:?} is not an absolute path; the daemon reads it on its host, so give the full path"
        )));
    }
    Ok(ImportSource::File(PathBuf::from(source)))
}

/// Reports an import's or export's progress as one percentage over its phases.
fn track(progress: host_ops::Progress) -> impl FnMut(vessel_storage::ImportProgress) + Send {
    use vessel_storage::ImportPhase;
    move |p| {
        // Copying dominates; verifying and converting are quicker passes.
        let (start, span) = match p.phase {
            ImportPhase::Downloading | ImportPhase::Copying => (0.0, 80.0),
            ImportPhase::Verifying => (80.0, 10.0),
            ImportPhase::Converting => (90.0, 10.0),
        };
        if let Some(percent) = p.percent() {
            progress.report(start + span * percent / 100.0);
        }
    }
}

impl Service {
    async fn image_record(&self, name: &str) -> Result<Option<ImageRecord>, ApiError> {
        let kv = self
            .ctx
            .store
            .get(&image_key(name))
            .await
            .map_err(store_error)?;
        kv.map(|kv| decode(&kv.key, &kv.value))
            .transpose()
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    async fn image_view(&self, record: ImageRecord) -> Result<Image, ApiError> {
        let pool = crate::storage::pools::open_by_name(&self.ctx, &record.pool).await?;
        let info = pool.volume(&record.name).await.map_err(api_error)?;
        let dependents = pool
            .list_volumes()
            .await
            .map_err(api_error)?
            .into_iter()
            .filter(|v| v.backing_volume.as_deref() == Some(record.name.as_str()))
            .map(|v| v.name)
            .collect();
        Ok(Image {
            name: record.name,
            project: record.project,
            pool: record.pool,
            kind: record.kind,
            public: record.public,
            format: from_format(info.format),
            virtual_bytes: info.virtual_size,
            allocated_bytes: info.allocated_size,
            sha256: record.sha256,
            source: record.source,
            created_at_ms: record.created_at_ms,
            dependents,
        })
    }

    /// The images `visible` shows: those of its projects, and every public one.
    pub async fn list_images(
        &self,
        visible: &vessel_auth::Visibility,
    ) -> Result<Vec<Image>, ApiError> {
        let (kvs, _) = self
            .ctx
            .store
            .list(IMAGES_PREFIX)
            .await
            .map_err(store_error)?;
        let mut images = Vec::new();
        for kv in kvs {
            let record: ImageRecord =
                decode(&kv.key, &kv.value).map_err(|e| ApiError::internal(e.to_string()))?;
            if visible.shows_image(&record.project, record.public) {
                images.push(self.image_view(record).await?);
            }
        }
        Ok(images)
    }

    pub async fn get_image(&self, name: &str) -> Result<Image, ApiError> {
        self.image_view(self.image_location(name).await?).await
    }

    /// The pool and volume name of an image, for cloning VMs' disks from it.
    pub(crate) async fn image_location(&self, name: &str) -> Result<ImageRecord, ApiError> {
        validate_name("image", name).map_err(ApiError::invalid)?;
        self.image_record(name)
            .await?
            .ok_or_else(|| not_found(name))
    }

    /// An image a VM of `project` may use as `kind`: its own project's, or a public one. Another
    /// project's image is 404 to a caller who may not read that project (as if it did not
    /// exist), else 403.
    pub(crate) async fn usable_image(
        &self,
        name: &str,
        kind: ImageKind,
        project: &str,
        identity: &Identity,
    ) -> Result<ImageRecord, ApiError> {
        let record = self.image_location(name).await?;
        if record.project != project && !record.public {
            if identity
                .check(Permission::ImageRead, Scope::Project(&record.project))
                .is_err()
            {
                return Err(not_found(name));
            }
            return Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "image {name:?} belongs to another project and is not public; a VM of \
                     project {project:?} may use its own project's images and public ones"
                ),
            )
            .with_hint("import the image into this project, or ask a host admin to publish it (`vessel image import ... --public`)"));
        }
        if record.kind != kind {
            return Err(ApiError::invalid(format!(
                "image {name:?} is a {} image, not a {} image",
                record.kind.as_str(),
                kind.as_str()
            )));
        }
        Ok(record)
    }

    /// The file of a kernel or initrd image, for a VM of `project` to boot with.
    pub(crate) async fn boot_file(
        &self,
        name: &str,
        kind: ImageKind,
        project: &str,
        identity: &Identity,
    ) -> Result<String, ApiError> {
        let record = self.usable_image(name, kind, project, identity).await?;
        let pool = crate::storage::pools::open_by_name(&self.ctx, &record.pool).await?;
        let info = pool.volume(name).await.map_err(api_error)?;
        Ok(info.path.to_string_lossy().into_owned())
    }

    /// Starts importing an image; the operation's result is the [`Image`].
    pub async fn import_image(
        &self,
        request: &ImportImageRequest,
        identity: &Identity,
    ) -> Result<Operation, ApiError> {
        validate_name("image", &request.name).map_err(ApiError::invalid)?;
        if request.public {
            require_host_admin(identity, "only host admins make images public")?;
        }
        let mut opts = ImportOptions::default();
        let (source, held) = open_source(&self.ctx, identity, &request.source, &mut opts)?;
        let pool_name = request.pool.clone().unwrap_or_else(|| DEFAULT_POOL.into());
        let project = request
            .project
            .clone()
            .unwrap_or_else(crate::vm::model::default_project);
        crate::storage::ownership::check_room(self.ctx.store.as_ref(), &project).await?;
        let pool = crate::storage::pools::open_by_name(&self.ctx, &pool_name).await?;
        if self.image_record(&request.name).await?.is_some() {
            return Err(ApiError::conflict(format!(
                "an image named {:?} already exists",
                request.name
            ))
            .with_hint("delete it first with `vessel image delete`, or choose another name"));
        }
        opts.expected_sha256 = request.sha256.clone();
        opts.read_only = true;
        opts.opaque = !request.kind.is_disk();
        validate_digest(request.sha256.as_deref())?;
        let service = self.clone();
        let (name, source_text) = (request.name.clone(), request.source.clone());
        let (kind, public) = (request.kind, request.public);
        let import = Import {
            pool: Arc::clone(&pool),
            name: name.clone(),
            source,
            held,
            opts,
            project: project.clone(),
        };
        let what = (OperationAction::ImportImage, format!("image/{name}"));
        start_import(
            &self.ctx,
            what,
            import,
            move |imported, pending| async move {
                let size = imported.info.virtual_size;
                let image = ImageRecord {
                    name: name.clone(),
                    pool: pool_name,
                    sha256: imported.sha256,
                    source: source_text,
                    created_at_ms: now_ms(),
                    project,
                    kind,
                    public,
                };
                let key = image_key(&name);
                let stored = service.ctx.store.create(&key, encode(&image)).await;
                if !matches!(stored, Ok(true)) {
                    // Raced with another import of the name: keep theirs, drop ours.
                    let _ = pool.delete_volume(&name).await;
                    pending.failed().await;
                    return Err(format!("an image named {name:?} was imported meanwhile").into());
                }
                pending.made(size).await?;
                let view = service.image_view(image).await?;
                serde_json::to_value(view).map_err(|e| OpError::from(e.to_string()))
            },
        )
        .await
    }

    /// Deletes an image that no volume depends on and no VM boots with. A public image is
    /// deleted by host admins only.
    pub async fn delete_image(&self, name: &str, identity: &Identity) -> Result<(), ApiError> {
        let record = self.image_location(name).await?;
        if record.public {
            require_host_admin(identity, &format!("image {name:?} is public"))?;
        }
        if !record.kind.is_disk() {
            self.refuse_if_booted(&record).await?;
        }
        let pool = crate::storage::pools::open_by_name(&self.ctx, &record.pool).await?;
        match pool.delete_volume(name).await {
            Ok(()) | Err(vessel_storage::PoolError::NotFound { .. }) => {}
            Err(e) => return Err(api_error(e)),
        }
        let txn = Txn::new()
            .then(Op::Delete(image_key(name)))
            .then(Op::Delete(crate::storage::ownership::key(
                &self.ctx.config.host_name,
                &record.pool,
                name,
            )));
        self.ctx.store.txn(txn).await.map_err(store_error)?;
        Ok(())
    }

    /// Refuses to delete a kernel or initrd image that a VM boots with.
    async fn refuse_if_booted(&self, record: &ImageRecord) -> Result<(), ApiError> {
        let pool = crate::storage::pools::open_by_name(&self.ctx, &record.pool).await?;
        let Ok(info) = pool.volume(&record.name).await else {
            return Ok(());
        };
        let file = info.path.to_string_lossy();
        for vm in self
            .ctx
            .view
            .all()
            .await
            .map_err(crate::common::errors::internal)?
        {
            if let vessel_api::Boot::Kernel { kernel, initrd, .. } = &vm.record.spec.boot {
                if *kernel == file || initrd.as_deref() == Some(&*file) {
                    return Err(ApiError::conflict(format!(
                        "image {:?} is what VM {:?} boots with",
                        record.name, vm.record.spec.name
                    ))
                    .with_hint("delete the VM or give it another kernel first"));
                }
            }
        }
        Ok(())
    }

    /// Whether `volume` of `pool` is an image's volume (deleted only as the image).
    pub(crate) async fn is_image_volume(&self, pool: &str, volume: &str) -> Result<bool, ApiError> {
        Ok(self
            .image_record(volume)
            .await?
            .is_some_and(|image| image.pool == pool))
    }

    /// Starts importing a file or URL as a writable volume; the result is the volume.
    pub async fn import_volume(
        &self,
        pool_name: &str,
        request: &ImportVolumeRequest,
        identity: &Identity,
    ) -> Result<Operation, ApiError> {
        validate_name("volume", &request.name).map_err(ApiError::invalid)?;
        let mut opts = ImportOptions::default();
        let (source, held) = open_source(&self.ctx, identity, &request.source, &mut opts)?;
        validate_digest(request.sha256.as_deref())?;
        let project = request
            .project
            .clone()
            .unwrap_or_else(crate::vm::model::default_project);
        crate::storage::ownership::check_room(self.ctx.store.as_ref(), &project).await?;
        let pool = crate::storage::pools::open_by_name(&self.ctx, pool_name).await?;
        opts.expected_sha256 = request.sha256.clone();
        opts.format = request.format.map(to_format);
        let (service, name) = (self.clone(), request.name.clone());
        let pool_name = pool_name.to_string();
        let import = Import {
            pool,
            name: name.clone(),
            source,
            held,
            opts,
            project,
        };
        let what = (
            OperationAction::ImportVolume,
            format!("volume/{pool_name}/{name}"),
        );
        start_import(
            &self.ctx,
            what,
            import,
            move |imported, pending| async move {
                pending.made(imported.info.virtual_size).await?;
                let volume = service.get_volume(&pool_name, &name).await?;
                serde_json::to_value(volume).map_err(|e| OpError::from(e.to_string()))
            },
        )
        .await
    }

    /// Starts exporting a volume to a standalone qcow2 file on the host.
    pub async fn export_volume(
        &self,
        pool_name: &str,
        name: &str,
        request: &ExportVolumeRequest,
    ) -> Result<Operation, ApiError> {
        validate_name("volume", name).map_err(ApiError::invalid)?;
        let dest =
            match parse_source(&request.path)? {
                ImportSource::File(path) => path,
                ImportSource::Url(_) => return Err(ApiError::invalid(
                    "export writes a file on the daemon's host; give an absolute path, not a URL",
                )),
            };
        let pool = crate::storage::pools::open_by_name(&self.ctx, pool_name).await?;
        let info = pool.volume(name).await.map_err(api_error)?;
        let key = if info.encrypted {
            Some(
                crate::storage::keys::get(&self.ctx, pool_name, name)
                    .await
                    .map_err(ApiError::internal)?,
            )
        } else {
            None
        };
        let project = crate::storage::ownership::get(&self.ctx, pool_name, name).await?;
        let record = host_ops::begin(
            &self.ctx,
            OperationAction::ExportVolume,
            format!("volume/{pool_name}/{name}"),
            &project,
        )
        .await?;
        let operation = record.operation.clone();
        let (compress, overwrite, name) = (request.compress, request.overwrite, name.to_string());
        let cancel = CancelToken::new();
        let token = cancel.clone();
        host_ops::run(
            Arc::clone(&self.ctx),
            record,
            cancel,
            move |progress| async move {
                let mut opts = ExportOptions::default();
                opts.compress = compress;
                opts.overwrite = overwrite;
                opts.key = key.as_deref();
                opts.cancel = Some(token);
                let file = pool
                    .export_volume(&name, Path::new(&dest), &opts, &mut track(progress))
                    .await
                    .map_err(api_error)?;
                serde_json::to_value(ExportedVolume {
                    path: file.path.to_string_lossy().into_owned(),
                    bytes: file.size,
                    sha256: file.sha256,
                })
                .map_err(|e| OpError::from(e.to_string()))
            },
        );
        Ok(operation)
    }
}

/// Public images are the host admins' (`host.admin`): the 403 says why it is needed.
fn require_host_admin(identity: &Identity, why: &str) -> Result<(), ApiError> {
    identity
        .check(Permission::HostAdmin, Scope::Host)
        .map_err(|denied| {
            let mut e = crate::access::caller::permission_denied(denied);
            e.message = format!("{why}: {}", e.message);
            e
        })
}

fn validate_digest(digest: Option<&str>) -> Result<(), ApiError> {
    match digest {
        Some(d) if d.len() != 64 || !d.chars().all(|c| c.is_ascii_hexdigit()) => {
            Err(ApiError::invalid(format!(
                "sha256 {d:?} is not 64 hex digits; give the digest `sha256sum FILE` prints"
            )))
        }
        _ => Ok(()),
    }
}

/// The project of an image and whether it is public (`None`: no such image).
pub async fn project_of(s: &Service, name: &str) -> Option<(String, bool)> {
    let record = s.image_record(name).await.ok()??;
    Some((record.project, record.public))
}
