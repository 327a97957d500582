//! Import and export for [`DirPool`] (the rules are in [`crate::import`]).
//!
//! An import streams into `.vessel-tmp-<uuid>.import` in the pool directory, a conversion (if
//! any) writes `.vessel-tmp-<uuid>.<format>`, and only the finished, validated file is published
//! under the volume's name. An export writes `.vessel-tmp-export-<uuid>.qcow2` next to its
//! destination and renames it into place. Each temporary file is removed when its guard drops,
//! so an error or a dropped future leaves nothing behind.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{io_error, link_no_replace, sync_dir, DirPool, TempVolume, TEMP_PREFIX};
use crate::format::Format;
use crate::import::copy::{self, FeedError};
use crate::import::validate::{self, Invalid};
use crate::import::{
    cancellable, http, parse_sha256, sniff, to_hex, ExportOptions, ExportedFile, ImportOptions,
    ImportPhase, ImportProgress, ImportSource, ImportedVolume, DEFAULT_STALL_TIMEOUT,
};
use crate::pool::{statvfs, PoolError, StoragePool};
use crate::qemu_img::ConvertJob;

type Progress<'a> = &'a mut (dyn FnMut(ImportProgress) + Send);

/// How often a file copy reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Mode of an image's file: read-only for everyone (see [`crate::VolumeInfo::read_only`]).
pub(super) const READ_ONLY_MODE: u32 = 0o444;

/// Whether a volume file is read-only: no write bit set for anyone.
pub(super) fn is_read_only(meta: &std::fs::Metadata) -> bool {
    meta.permissions().mode() & 0o222 == 0
}

impl DirPool {
    pub(super) async fn import_checked(
        &self,
        name: &str,
        source: ImportSource,
        opts: &ImportOptions,
        progress: Progress<'_>,
    ) -> Result<ImportedVolume, PoolError> {
        let what = format!("import of {name:?} from {source}");
        cancellable(
            opts.cancel.as_ref(),
            &what,
            self.import_inner(name, source, opts, progress),
        )
        .await
    }

    async fn import_inner(
        &self,
        name: &str,
        source: ImportSource,
        opts: &ImportOptions,
        progress: Progress<'_>,
    ) -> Result<ImportedVolume, PoolError> {
        let expected = opts
            .expected_sha256
            .as_deref()
            .map(parse_sha256)
            .transpose()?;
        // Fail before a long download when the name is taken (publish checks again).
        self.ensure_free(name).await?;
        let stall = opts.stall_timeout.unwrap_or(DEFAULT_STALL_TIMEOUT);

        let temp = self.new_import_temp("import");
        let (bytes, digest) = match &source {
            ImportSource::File(path) => self.copy_file(path, &temp, opts, progress).await?,
            ImportSource::Url(url) => self.download(url, &temp, opts, stall, progress).await?,
        };
        let sha256 = to_hex(&digest);

        progress(ImportProgress {
            phase: ImportPhase::Verifying,
            done: 0,
            total: Some(bytes),
        });
        if let Some(expected) = expected.filter(|e| *e != sha256) {
            return Err(PoolError::InvalidRequest(format!(
                "the SHA-256 of {source} is {sha256}, but {expected} was expected: it is damaged \
                 or not the file you meant; nothing was imported"
            )));
        }
        let src_format = if opts.opaque {
            Format::Raw
        } else {
            self.validate_import(&temp.path, &source).await?
        };
        progress(ImportProgress {
            phase: ImportPhase::Verifying,
            done: bytes,
            total: Some(bytes),
        });

        let target = opts.format.unwrap_or(src_format);
        let publish = if target == src_format {
            temp
        } else {
            let converted = self
                .convert_import(&temp.path, src_format, target, progress)
                .await?;
            drop(temp);
            converted
        };
        if opts.read_only {
            set_mode(&publish.path, READ_ONLY_MODE).await?;
        }
        self.publish(publish, name, target, None).await?;
        let info = self.volume(name).await?;
        Ok(ImportedVolume {
            info,
            sha256,
            source_bytes: bytes,
        })
    }

    fn new_import_temp(&self, what: &str) -> TempVolume {
        TempVolume {
            path: self
                .dir
                .join(format!("{TEMP_PREFIX}{}.{what}", uuid::Uuid::new_v4())),
        }
    }

    /// Copies a host file into `temp`; bytes read and their SHA-256.
    async fn copy_file(
        &self,
        path: &Path,
        temp: &TempVolume,
        opts: &ImportOptions,
        progress: Progress<'_>,
    ) -> Result<(u64, [u8; 32]), PoolError> {
        let (src, len, allocated) = open_source(path)?;
        check_limit(len, opts.max_bytes, &path.display().to_string())?;
        // A sparse source needs only its allocated bytes: zero blocks are not written.
        self.ensure_space(allocated.min(len)).await?;
        let (feed, drain) =
            copy::pipeline(create_temp(&temp.path)?).map_err(|e| io_error(&temp.path, e))?;
        let report = |done| ImportProgress {
            phase: ImportPhase::Copying,
            done,
            total: Some(len),
        };
        progress(report(0));
        let mut reader = copy::read_file(src, feed, drain.stop_flag(), opts.max_bytes)
            .map_err(|e| io_error(&temp.path, e))?;
        let mut ticker = tokio::time::interval(PROGRESS_EVERY);
        let read = loop {
            tokio::select! {
                result = &mut reader => {
                    break result.unwrap_or(Err(FeedError::SinkGone));
                }
                _ = ticker.tick() => progress(report(drain.written())),
            }
        };
        let source = path.display().to_string();
        let done = self
            .finish_copy(read, drain, &temp.path, &source, Some(len))
            .await?;
        progress(report(done.0));
        Ok(done)
    }

    /// Downloads `url` into `temp`; bytes received and their SHA-256.
    async fn download(
        &self,
        url: &str,
        temp: &TempVolume,
        opts: &ImportOptions,
        stall: Duration,
        progress: Progress<'_>,
    ) -> Result<(u64, [u8; 32]), PoolError> {
        let download = http::open(url, stall, &opts.url_policy).await?;
        let total = download.total;
        if let Some(total) = total {
            check_limit(total, opts.max_bytes, url)?;
            self.ensure_space(total).await?;
        }
        let (mut feed, drain) =
            copy::pipeline(create_temp(&temp.path)?).map_err(|e| io_error(&temp.path, e))?;
        let report = |done| ImportProgress {
            phase: ImportPhase::Downloading,
            done,
            total,
        };
        progress(report(0));
        let received = download
            .copy_into(&mut feed, stall, opts.max_bytes, &mut |done| {
                progress(report(done))
            })
            .await;
        drop(feed);
        self.finish_copy(received, drain, &temp.path, url, total)
            .await
    }

    /// Waits for the writer after the producer ended, and turns what went wrong into the error
    /// that says it best.
    async fn finish_copy(
        &self,
        produced: Result<u64, FeedError>,
        drain: copy::Drain,
        temp: &Path,
        source: &str,
        total: Option<u64>,
    ) -> Result<(u64, [u8; 32]), PoolError> {
        match produced {
            Err(FeedError::Source(message)) => {
                return Err(PoolError::InvalidRequest(if message.contains(source) {
                    message
                } else {
                    format!("reading {source} failed: {message}")
                }))
            }
            Err(FeedError::TooLarge { limit }) => {
                return Err(too_large(source, limit));
            }
            Ok(_) | Err(FeedError::SinkGone) => {}
        }
        let written_so_far = drain.written();
        match drain.finish().await {
            Ok((written, digest)) => match produced {
                Ok(read) if read == written => Ok((written, digest)),
                _ => Err(io_error(
                    temp,
                    io::Error::other(format!(
                        "the copy of {source} stopped after {written} bytes"
                    )),
                )),
            },
            Err(e) if is_no_space(&e) => {
                let available = self.capacity().await.map(|u| u.available).unwrap_or(0);
                Err(PoolError::NoSpace {
                    pool: self.name.clone(),
                    needed: total.unwrap_or(written_so_far).max(written_so_far),
                    available,
                })
            }
            Err(e) => Err(io_error(temp, e)),
        }
    }

    /// The imported file's format, once it is known to be a usable raw or qcow2 image.
    async fn validate_import(
        &self,
        path: &Path,
        source: &ImportSource,
    ) -> Result<Format, PoolError> {
        let head = sniff::head(path).map_err(|e| io_error(path, e))?;
        if head.is_empty() {
            return Err(not_an_image(source, "it is empty"));
        }
        if let Some(reason) = sniff::refusal(&head) {
            return Err(not_an_image(source, &reason));
        }
        match validate::validate(&self.qemu_img, path).await {
            Ok(info) => Ok(info.format),
            Err(Invalid::NotAnImage(reason)) => Err(not_an_image(source, &reason)),
            Err(Invalid::QemuImg(e)) => Err(e.into()),
        }
    }

    /// Converts the imported file into `target` in a new temporary file.
    async fn convert_import(
        &self,
        src: &Path,
        src_format: Format,
        target: Format,
        progress: Progress<'_>,
    ) -> Result<TempVolume, PoolError> {
        let converted = self.new_temp(target);
        let job = ConvertJob::new(src, src_format, &converted.path, target);
        let needed = self.qemu_img.measure_convert(&job).await?.required;
        self.ensure_space(needed).await?;
        let size = self
            .qemu_img
            .info(src, Some(src_format))
            .await?
            .virtual_size;
        let report = |percent: f64| ImportProgress {
            phase: ImportPhase::Converting,
            done: (size as f64 * percent / 100.0) as u64,
            total: Some(size),
        };
        progress(report(0.0));
        self.qemu_img
            .convert(&job, |percent| progress(report(percent)))
            .await?;
        sync_file(&converted.path).await?;
        Ok(converted)
    }

    pub(super) async fn export_checked(
        &self,
        name: &str,
        dest: &Path,
        opts: &ExportOptions<'_>,
        progress: Progress<'_>,
    ) -> Result<ExportedFile, PoolError> {
        let what = format!("export of {name:?} to {}", dest.display());
        cancellable(
            opts.cancel.as_ref(),
            &what,
            self.export_inner(name, dest, opts, progress),
        )
        .await
    }

    async fn export_inner(
        &self,
        name: &str,
        dest: &Path,
        opts: &ExportOptions<'_>,
        progress: Progress<'_>,
    ) -> Result<ExportedFile, PoolError> {
        let (src, format) = self.locate(name).await?;
        let info = self.qemu_img.info(&src, Some(format)).await?;
        if info.encrypted && opts.key.is_none() {
            return Err(PoolError::InvalidRequest(format!(
                "volume {name:?} is encrypted: exporting it needs its key, and the exported file \
                 is then written decrypted (plain qcow2)"
            )));
        }
        let dir = export_dir(dest, opts.overwrite).await?;
        let temp = TempVolume {
            path: dir.join(format!(
                "{TEMP_PREFIX}export-{}.qcow2",
                uuid::Uuid::new_v4()
            )),
        };
        let mut job = ConvertJob::new(&src, format, &temp.path, Format::Qcow2);
        job.compress = opts.compress;
        job.src_key = opts.key.filter(|_| info.encrypted);
        if !opts.compress {
            // Compressed output is smaller than measured; only an uncompressed one is checked.
            let needed = self.qemu_img.measure_convert(&job).await?.required;
            let available = statvfs::usage(&dir)
                .map_err(|e| io_error(&dir, e))?
                .available;
            if needed > available {
                return Err(PoolError::InvalidRequest(format!(
                    "{} has {} free but the export needs {}; free some space, export \
                     compressed, or choose another place",
                    dir.display(),
                    crate::size::format_size_bytes(available),
                    crate::size::format_size_bytes(needed)
                )));
            }
        }
        let size = info.virtual_size;
        let report = |percent: f64| ImportProgress {
            phase: ImportPhase::Converting,
            done: (size as f64 * percent / 100.0) as u64,
            total: Some(size),
        };
        progress(report(0.0));
        self.qemu_img
            .convert(&job, |percent| progress(report(percent)))
            .await?;

        progress(ImportProgress {
            phase: ImportPhase::Verifying,
            done: 0,
            total: None,
        });
        let (file_size, digest) = copy::hash_file(&temp.path)
            .await
            .map_err(|e| io_error(&temp.path, e))?;
        progress(ImportProgress {
            phase: ImportPhase::Verifying,
            done: file_size,
            total: Some(file_size),
        });
        sync_file(&temp.path).await?;
        let placed = if opts.overwrite {
            std::fs::rename(&temp.path, dest)
        } else {
            link_no_replace(&temp.path, dest)
        };
        placed.map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => exists(dest),
            _ => io_error(dest, e),
        })?;
        drop(temp);
        sync_dir(&dir).await?;
        Ok(ExportedFile {
            path: dest.to_path_buf(),
            size: file_size,
            sha256: to_hex(&digest),
        })
    }
}

/// Opens a host file to import: the file, its length and the bytes it occupies.
fn open_source(path: &Path) -> Result<(std::fs::File, u64, u64), PoolError> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| {
        PoolError::InvalidRequest(match e.kind() {
            io::ErrorKind::NotFound => {
                format!("file {shown} does not exist on the daemon's host; check the path")
            }
            io::ErrorKind::PermissionDenied => {
                format!("the daemon may not read {shown}; make it readable")
            }
            _ => format!("cannot open {shown}: {e}"),
        })
    })?;
    let meta = file.metadata().map_err(|e| io_error(path, e))?;
    if !meta.is_file() {
        return Err(PoolError::InvalidRequest(format!(
            "{shown} is not a regular file; give the path of an image file"
        )));
    }
    Ok((file, meta.len(), meta.blocks() * 512))
}

fn create_temp(path: &Path) -> Result<std::fs::File, PoolError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io_error(path, e))
}

fn check_limit(size: u64, limit: Option<u64>, source: &str) -> Result<(), PoolError> {
    match limit {
        Some(limit) if size > limit => Err(too_large(source, limit)),
        _ => Ok(()),
    }
}

fn too_large(source: &str, limit: u64) -> PoolError {
    PoolError::InvalidRequest(format!(
        "{source} is larger than the limit of {} ({limit} bytes); raise the limit if it is \
         the right file",
        crate::size::format_size_bytes(limit)
    ))
}

fn not_an_image(source: &ImportSource, reason: &str) -> PoolError {
    PoolError::InvalidRequest(format!(
        "{source} is not a disk image Vessel can import: {reason}; nothing was imported"
    ))
}

fn exists(dest: &Path) -> PoolError {
    PoolError::InvalidRequest(format!(
        "{} already exists; choose another path or allow overwriting it",
        dest.display()
    ))
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// The directory an export is written in; `dest` must be a new file unless `overwrite`.
async fn export_dir(dest: &Path, overwrite: bool) -> Result<PathBuf, PoolError> {
    if dest.file_name().is_none() {
        return Err(PoolError::InvalidRequest(format!(
            "{} does not name a file; give the path of the file to write",
            dest.display()
        )));
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match tokio::fs::metadata(&dir).await {
        Ok(meta) if meta.is_dir() => {}
        _ => {
            return Err(PoolError::InvalidRequest(format!(
                "directory {} does not exist; create it first",
                dir.display()
            )))
        }
    }
    match tokio::fs::symlink_metadata(dest).await {
        Ok(meta) if meta.is_dir() => Err(PoolError::InvalidRequest(format!(
            "{} is a directory; give the path of the file to write",
            dest.display()
        ))),
        Ok(_) if !overwrite => Err(exists(dest)),
        _ => Ok(dir),
    }
}

async fn set_mode(path: &Path, mode: u32) -> Result<(), PoolError> {
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .await
        .map_err(|e| io_error(path, e))
}

async fn sync_file(path: &Path) -> Result<(), PoolError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| io_error(path, e))?;
    file.sync_all().await.map_err(|e| io_error(path, e))
}
