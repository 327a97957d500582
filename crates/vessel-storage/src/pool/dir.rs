//! A pool that keeps each volume as a file `<name>.qcow2` or `<name>.raw` in one directory.
//!
//! Every new volume is built in a hidden temporary file (`.vessel-tmp-*`) in the pool directory
//! and published by linking it to its name, so a failed or cancelled create, clone or copy
//! leaves no partial volume: the temporary file is removed on drop, and leftovers from a crash
//! are removed when the pool is opened. Volume names start with a letter or digit, so a hidden
//! file can never be taken for a volume.
//!
//! A volume's format comes from its file name, never from its contents: a guest can write a
//! qcow2 header into a raw disk, and reading that as qcow2 would let it name any host file as its
//! backing file.
//!
//! Encrypted volumes are `<name>.qcow2` files with LUKS inside; whether a volume is encrypted is
//! read from its qcow2 header (`qemu-img info`), and keys only pass through (see
//! [`super`](crate::pool)).

mod import;

use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::{statvfs, CloneMode, PoolError, PoolUsage, StoragePool, VolumeInfo, VolumeSpec};
use crate::format::{read_qcow2_backing_file, read_virtual_size, Format};
use crate::import::{
    ExportOptions, ExportedFile, ImportOptions, ImportProgress, ImportSource, ImportedVolume,
};
use crate::qemu_img::{ConvertJob, ImageInfo, QemuImg};
use crate::size::check_volume_size;
use vessel_secrets::VolumeKey;

const TEMP_PREFIX: &str = ".vessel-tmp-";

/// A directory of volume files.
#[derive(Debug)]
pub struct DirPool {
    name: String,
    dir: PathBuf,
    qemu_img: QemuImg,
    /// Held while checking and changing which volumes exist (publishing a new volume, deleting
    /// one), so that a linked clone cannot be published on top of a volume being deleted and two
    /// creates of one name cannot both succeed. Long copies run outside it.
    names: Mutex<()>,
}

/// A volume file being built; removed on drop unless it was published.
struct TempVolume {
    path: PathBuf,
}

impl Drop for TempVolume {
    fn drop(&mut self) {
        // After a publish the temporary name is only a second link to the volume, so removing it
        // is right in every case; a missing file (qemu-img failed before creating it) is fine.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl DirPool {
    /// Opens the pool in `dir`, creating the directory if needed and removing temporary files
    /// that a crash left behind.
    pub async fn open(
        name: impl Into<String>,
        dir: impl Into<PathBuf>,
        qemu_img: QemuImg,
    ) -> Result<Self, PoolError> {
        let dir = dir.into();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_error(&dir, e))?;
        remove_stale_temp_files(&dir).await?;
        Ok(Self {
            name: name.into(),
            dir,
            qemu_img,
            names: Mutex::new(()),
        })
    }

    /// The pool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file_path(&self, name: &str, format: Format) -> PathBuf {
        self.dir.join(format!("{name}.{}", format.extension()))
    }

    fn new_temp(&self, format: Format) -> TempVolume {
        let file = format!(
            "{TEMP_PREFIX}{}.{}",
            uuid::Uuid::new_v4(),
            format.extension()
        );
        TempVolume {
            path: self.dir.join(file),
        }
    }

    /// The file and format of an existing volume.
    async fn locate(&self, name: &str) -> Result<(PathBuf, Format), PoolError> {
        check_name(name)?;
        match self.find(name).await? {
            Some(found) => Ok(found),
            None => Err(PoolError::NotFound {
                pool: self.name.clone(),
                name: name.to_string(),
            }),
        }
    }

    async fn find(&self, name: &str) -> Result<Option<(PathBuf, Format)>, PoolError> {
        for format in Format::ALL {
            let path = self.file_path(name, format);
            if tokio::fs::try_exists(&path)
                .await
                .map_err(|e| io_error(&path, e))?
            {
                return Ok(Some((path, format)));
            }
        }
        Ok(None)
    }

    async fn ensure_free(&self, name: &str) -> Result<(), PoolError> {
        check_name(name)?;
        match self.find(name).await? {
            Some(_) => Err(PoolError::AlreadyExists {
                pool: self.name.clone(),
                name: name.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Gives the finished temporary file its volume name. `backing`, if any, must still exist:
    /// it is checked under the same lock that delete takes.
    async fn publish(
        &self,
        temp: TempVolume,
        name: &str,
        format: Format,
        backing: Option<&str>,
    ) -> Result<(), PoolError> {
        let _names = self.names.lock().await;
        self.ensure_free(name).await?;
        if let Some(backing) = backing {
            self.locate(backing).await?;
        }
        let path = self.file_path(name, format);
        link_no_replace(&temp.path, &path).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => PoolError::AlreadyExists {
                pool: self.name.clone(),
                name: name.to_string(),
            },
            _ => io_error(&path, e),
        })?;
        drop(temp);
        sync_dir(&self.dir).await
    }

    async fn create_checked(
        &self,
        spec: &VolumeSpec,
        key: Option<&VolumeKey>,
    ) -> Result<VolumeInfo, PoolError> {
        if key.is_some() {
            check_encryptable(spec)?;
        }
        self.ensure_free(&spec.name).await?;
        let backing = match &spec.backing {
            Some(b) => Some(self.backing_for(b, spec).await?),
            None => None,
        };
        let size = volume_size(spec, backing.as_ref().map(|b| b.2))?;
        let temp = self.new_temp(spec.format);
        // The overlay names its backing file relative to the pool directory, so a pool can be
        // moved or mounted elsewhere without breaking its linked clones.
        let backing_arg = backing
            .as_ref()
            .map(|(file, format, _)| (Path::new(file), *format));
        match key {
            Some(key) => {
                self.qemu_img
                    .create_encrypted(&temp.path, spec.format, size, key)
                    .await?
            }
            None => {
                self.qemu_img
                    .create(&temp.path, spec.format, Some(size), backing_arg)
                    .await?
            }
        }
        self.publish(temp, &spec.name, spec.format, spec.backing.as_deref())
            .await?;
        self.volume(&spec.name).await
    }

    /// The backing volume's file name, format and virtual size.
    async fn backing_for(
        &self,
        backing: &str,
        spec: &VolumeSpec,
    ) -> Result<(String, Format, u64), PoolError> {
        if spec.format != Format::Qcow2 {
            return Err(PoolError::InvalidRequest(format!(
                "volume {:?} can only be a linked clone of {backing:?} as qcow2; \
                 create it with format qcow2",
                spec.name
            )));
        }
        let (path, format) = self.locate(backing).await?;
        let info = self.qemu_img.info(&path, Some(format)).await?;
        if info.encrypted {
            return Err(PoolError::InvalidRequest(format!(
                "volume {backing:?} is encrypted, and an encrypted volume cannot be the backing \
                 file of a linked clone; make a full clone of it instead"
            )));
        }
        let file = file_name(&path);
        Ok((file, format, info.virtual_size))
    }

    /// A full copy of `src` as `dst`: in the source's format, or encrypted qcow2 with `dst_key`.
    async fn full_clone(
        &self,
        src: &str,
        src_key: Option<&VolumeKey>,
        dst: &str,
        dst_key: Option<&VolumeKey>,
        progress: &mut (dyn FnMut(f64) + Send),
    ) -> Result<VolumeInfo, PoolError> {
        let (src_path, format) = self.locate(src).await?;
        self.ensure_free(dst).await?;
        let encrypted = self.qemu_img.info(&src_path, Some(format)).await?.encrypted;
        if encrypted && (src_key.is_none() || dst_key.is_none()) {
            return Err(PoolError::InvalidRequest(format!(
                "volume {src:?} is encrypted: copying it needs its key, and the copy is \
                 encrypted with a key of its own; make an encrypted clone"
            )));
        }
        // A key offered for an unencrypted source has nothing to unlock.
        let src_key = src_key.filter(|_| encrypted);
        let dst_format = if dst_key.is_some() {
            Format::Qcow2
        } else {
            format
        };
        let temp = self.new_temp(dst_format);
        let mut job = ConvertJob::new(&src_path, format, &temp.path, dst_format);
        job.src_key = src_key;
        job.dst_key = dst_key;
        let needed = self.qemu_img.measure_convert(&job).await?.required;
        self.ensure_space(needed).await?;
        self.qemu_img.convert(&job, &mut *progress).await?;
        self.publish(temp, dst, dst_format, None).await?;
        self.volume(dst).await
    }

    async fn resize_checked(
        &self,
        name: &str,
        key: Option<&VolumeKey>,
        new_size: u64,
        shrink: bool,
    ) -> Result<VolumeInfo, PoolError> {
        check_volume_size(new_size).map_err(PoolError::InvalidRequest)?;
        let (path, format) = self.locate(name).await?;
        if is_read_only_file(&path).await? {
            return Err(PoolError::InvalidRequest(format!(
                "volume {name:?} is read-only (an image); clone it first and resize the clone"
            )));
        }
        let info = self.qemu_img.info(&path, Some(format)).await?;
        if info.encrypted && key.is_none() {
            return Err(PoolError::InvalidRequest(format!(
                "volume {name:?} is encrypted: resizing it needs its key"
            )));
        }
        if new_size < info.virtual_size {
            // Linked clones read the base's clusters; cutting the base would cut their data.
            let dependents = self.dependents(&path).await?;
            if !dependents.is_empty() {
                return Err(PoolError::InUse {
                    name: name.to_string(),
                    dependents,
                });
            }
        }
        match key.filter(|_| info.encrypted) {
            Some(key) => {
                self.qemu_img
                    .resize_encrypted(&path, format, new_size, shrink, key)
                    .await?
            }
            None => {
                self.qemu_img
                    .resize(&path, format, new_size, shrink)
                    .await?
            }
        }
        self.volume(name).await
    }

    async fn ensure_space(&self, needed: u64) -> Result<(), PoolError> {
        let available = self.capacity().await?.available;
        if needed > available {
            return Err(PoolError::NoSpace {
                pool: self.name.clone(),
                needed,
                available,
            });
        }
        Ok(())
    }

    /// Names of the volumes whose qcow2 header names `target` as backing file.
    async fn dependents(&self, target: &Path) -> Result<Vec<String>, PoolError> {
        let target = canonical(target).await;
        let mut found = Vec::new();
        for (name, path, format) in self.volume_files().await? {
            if format != Format::Qcow2 || path == target {
                continue;
            }
            let backing = read_qcow2_backing_file(&path)
                .await
                .map_err(|e| io_error(&path, e))?;
            let Some(backing) = backing else { continue };
            let resolved = crate::qemu_img::resolve_backing(&path, &backing);
            if canonical(&resolved).await == target {
                found.push(name);
            }
        }
        found.sort();
        Ok(found)
    }

    /// Every `(name, path, format)` of a volume file in the directory.
    async fn volume_files(&self) -> Result<Vec<(String, PathBuf, Format)>, PoolError> {
        let mut entries = tokio::fs::read_dir(&self.dir)
            .await
            .map_err(|e| io_error(&self.dir, e))?;
        let mut files = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| io_error(&self.dir, e))?
        {
            let path = entry.path();
            if let Some((name, format)) = parse_volume_file(&path) {
                files.push((name, path, format));
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(files)
    }

    fn volume_name_of(&self, path: &Path) -> Option<String> {
        let parent = path.parent()?;
        if parent != self.dir {
            return None;
        }
        parse_volume_file(path).map(|(name, _)| name)
    }
}

#[async_trait]
impl StoragePool for DirPool {
    fn name(&self) -> &str {
        &self.name
    }

    async fn capacity(&self) -> Result<PoolUsage, PoolError> {
        statvfs::usage(&self.dir).map_err(|e| io_error(&self.dir, e))
    }

    async fn create_volume(&self, spec: &VolumeSpec) -> Result<VolumeInfo, PoolError> {
        self.create_checked(spec, None).await
    }

    async fn create_encrypted_volume(
        &self,
        spec: &VolumeSpec,
        key: &VolumeKey,
    ) -> Result<VolumeInfo, PoolError> {
        self.create_checked(spec, Some(key)).await
    }

    async fn clone_encrypted_volume(
        &self,
        src: &str,
        src_key: Option<&VolumeKey>,
        dst: &str,
        dst_key: &VolumeKey,
        progress: &mut (dyn FnMut(f64) + Send),
    ) -> Result<VolumeInfo, PoolError> {
        self.full_clone(src, src_key, dst, Some(dst_key), progress)
            .await
    }

    async fn resize_encrypted_volume(
        &self,
        name: &str,
        key: &VolumeKey,
        new_size: u64,
        shrink: bool,
    ) -> Result<VolumeInfo, PoolError> {
        self.resize_checked(name, Some(key), new_size, shrink).await
    }

    async fn clone_volume(
        &self,
        src: &str,
        dst: &str,
        mode: CloneMode,
        progress: &mut (dyn FnMut(f64) + Send),
    ) -> Result<VolumeInfo, PoolError> {
        match mode {
            CloneMode::Linked => {
                let spec = VolumeSpec {
                    name: dst.to_string(),
                    format: Format::Qcow2,
                    size: None,
                    backing: Some(src.to_string()),
                };
                let info = self.create_checked(&spec, None).await?;
                progress(100.0);
                Ok(info)
            }
            CloneMode::Full => self.full_clone(src, None, dst, None, progress).await,
        }
    }

    async fn resize_volume(
        &self,
        name: &str,
        new_size: u64,
        shrink: bool,
    ) -> Result<VolumeInfo, PoolError> {
        self.resize_checked(name, None, new_size, shrink).await
    }

    async fn delete_volume(&self, name: &str) -> Result<(), PoolError> {
        let _names = self.names.lock().await;
        let (path, _) = self.locate(name).await?;
        let dependents = self.dependents(&path).await?;
        if !dependents.is_empty() {
            return Err(PoolError::InUse {
                name: name.to_string(),
                dependents,
            });
        }
        tokio::fs::remove_file(&path)
            .await
            .map_err(|e| io_error(&path, e))?;
        sync_dir(&self.dir).await
    }

    async fn volume(&self, name: &str) -> Result<VolumeInfo, PoolError> {
        let (path, format) = self.locate(name).await?;
        let mut chain = self.qemu_img.backing_chain(&path, Some(format)).await?;
        let top = chain.remove(0);
        let backing_volume = top
            .backing_path
            .as_deref()
            .and_then(|p| self.volume_name_of(p));
        let mut info = volume_info(name, top, backing_volume, chain);
        info.read_only = is_read_only_file(&path).await?;
        Ok(info)
    }

    async fn volume_names(&self) -> Result<Vec<String>, PoolError> {
        let mut names: Vec<String> = self
            .volume_files()
            .await?
            .into_iter()
            .map(|(name, _, _)| name)
            .collect();
        names.sort();
        Ok(names)
    }

    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, PoolError> {
        let mut volumes = Vec::new();
        for (name, _, _) in self.volume_files().await? {
            volumes.push(self.volume(&name).await?);
        }
        Ok(volumes)
    }

    async fn virtual_size(&self, name: &str) -> Result<u64, PoolError> {
        let (path, format) = self.locate(name).await?;
        read_virtual_size(&path, format)
            .await
            .map_err(|e| io_error(&path, e))
    }

    async fn volume_path(&self, name: &str) -> Result<PathBuf, PoolError> {
        self.locate(name).await.map(|(path, _)| path)
    }

    async fn import_volume(
        &self,
        name: &str,
        source: ImportSource,
        opts: &ImportOptions,
        progress: &mut (dyn FnMut(ImportProgress) + Send),
    ) -> Result<ImportedVolume, PoolError> {
        self.import_checked(name, source, opts, progress).await
    }

    async fn export_volume(
        &self,
        name: &str,
        dest: &Path,
        opts: &ExportOptions<'_>,
        progress: &mut (dyn FnMut(ImportProgress) + Send),
    ) -> Result<ExportedFile, PoolError> {
        self.export_checked(name, dest, opts, progress).await
    }
}

/// Whether a volume's file has no write bit (an image; see [`VolumeInfo::read_only`]).
async fn is_read_only_file(path: &Path) -> Result<bool, PoolError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| io_error(path, e))?;
    Ok(import::is_read_only(&meta))
}

fn volume_info(
    name: &str,
    top: ImageInfo,
    backing_volume: Option<String>,
    backing_chain: Vec<ImageInfo>,
) -> VolumeInfo {
    VolumeInfo {
        name: name.to_string(),
        format: top.format,
        virtual_size: top.virtual_size,
        allocated_size: top.actual_size.unwrap_or(0),
        encrypted: top.encrypted,
        read_only: false,
        path: top.path,
        backing_volume,
        backing_chain,
    }
}

/// Encrypted volumes are qcow2 (LUKS inside qcow2) and self-contained.
fn check_encryptable(spec: &VolumeSpec) -> Result<(), PoolError> {
    if spec.format != Format::Qcow2 {
        return Err(PoolError::InvalidRequest(format!(
            "volume {:?}: encryption needs qcow2 (LUKS inside qcow2); create it with format qcow2",
            spec.name
        )));
    }
    if let Some(backing) = &spec.backing {
        return Err(PoolError::InvalidRequest(format!(
            "volume {:?} cannot be both encrypted and a linked clone of {backing:?}; make an \
             encrypted full clone instead",
            spec.name
        )));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), PoolError> {
    vessel_core::validate_name("volume", name).map_err(PoolError::InvalidName)
}

/// The size a new volume gets: the requested one, or the backing volume's; never smaller than
/// the backing volume, whose data would then be partly out of the guest's reach.
fn volume_size(spec: &VolumeSpec, backing_size: Option<u64>) -> Result<u64, PoolError> {
    let size = match (spec.size, backing_size) {
        (Some(size), Some(base)) if size < base => {
            return Err(PoolError::InvalidRequest(format!(
                "volume {:?} would be {size} bytes, smaller than its backing volume ({base} \
                 bytes); give at least {base} bytes",
                spec.name
            )))
        }
        (Some(size), _) => size,
        (None, Some(base)) => base,
        (None, None) => {
            return Err(PoolError::InvalidRequest(format!(
                "volume {:?} needs a size, e.g. 20G",
                spec.name
            )))
        }
    };
    check_volume_size(size).map_err(PoolError::InvalidRequest)?;
    Ok(size)
}

/// `name.qcow2` / `name.raw` with a valid volume name; anything else in the directory is not a
/// volume (hidden temporary files, stray files).
fn parse_volume_file(path: &Path) -> Option<(String, Format)> {
    let file = path.file_name()?.to_str()?;
    let (name, ext) = file.rsplit_once('.')?;
    let format = Format::ALL.into_iter().find(|f| f.extension() == ext)?;
    vessel_core::validate_name("volume", name).ok()?;
    Some((name.to_string(), format))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Links `from` to `to`, failing with `AlreadyExists` instead of replacing `to` (which `rename`
/// would silently do). Filesystems without hard links fall back to `rename`; the caller holds
/// the names lock and has checked that `to` is free.
fn link_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(_) => std::fs::rename(from, to),
    }
}

/// Makes a new or removed name durable: without it a crash can undo a create or delete that was
/// reported as done.
async fn sync_dir(dir: &Path) -> Result<(), PoolError> {
    let file = tokio::fs::File::open(dir)
        .await
        .map_err(|e| io_error(dir, e))?;
    file.sync_all().await.map_err(|e| io_error(dir, e))
}

async fn canonical(path: &Path) -> PathBuf {
    tokio::fs::canonicalize(path)
        .await
        .unwrap_or_else(|_| path.to_path_buf())
}

async fn remove_stale_temp_files(dir: &Path) -> Result<(), PoolError> {
    let mut entries = tokio::fs::read_dir(dir)
        .await
        .map_err(|e| io_error(dir, e))?;
    while let Some(entry) = entries.next_entry().await.map_err(|e| io_error(dir, e))? {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            tracing::info!(path = %entry.path().display(), "removing a temporary volume file left by an interrupted operation");
            let path = entry.path();
            tokio::fs::remove_file(&path)
                .await
                .map_err(|e| io_error(&path, e))?;
        }
    }
    Ok(())
}

fn io_error(path: &Path, source: io::Error) -> PoolError {
    PoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_named_volume_files_are_volumes() {
        let p = |s: &str| parse_volume_file(Path::new(s));
        assert_eq!(p("/p/web.qcow2"), Some(("web".to_string(), Format::Qcow2)));
        assert_eq!(p("/p/db.1.raw"), Some(("db.1".to_string(), Format::Raw)));
        assert_eq!(p("/p/.vessel-tmp-x.qcow2"), None);
        assert_eq!(p("/p/notes.txt"), None);
        assert_eq!(p("/p/qcow2"), None);
    }

    #[test]
    fn a_clone_may_not_be_smaller_than_its_base() {
        let mut spec = VolumeSpec::new("c", Format::Qcow2, 1 << 20);
        spec.backing = Some("b".to_string());
        assert!(matches!(
            volume_size(&spec, Some(2 << 20)),
            Err(PoolError::InvalidRequest(_))
        ));
        spec.size = None;
        assert_eq!(volume_size(&spec, Some(2 << 20)).unwrap(), 2 << 20);
    }
}
