//! Vessel's storage layer.
//!
//! - [`qemu_img`]: a typed async wrapper over the `qemu-img` binary. Every call names the image
//!   format explicitly, so qemu-img never probes a raw image (a guest that writes a qcow2 header
//!   into a raw disk must not be able to make the host open it as qcow2 with a backing file).
//! - [`pool`]: the [`StoragePool`] trait and [`DirPool`], volumes as files in a directory.
//! - [`import`]: image import (file or URL, hashed, validated) and volume export.
//! - [`size`]: disk sizes with units (the parser lives in `vessel_core::units`).
//! - Encryption: LUKS inside qcow2 with a per-volume [`VolumeKey`] that reaches qemu-img only
//!   through a [`SecretPipe`] (see [`qemu_img`] and [`pool`]); keys are wrapped and stored by the
//!   caller with `vessel_secrets`.

pub mod format;
pub mod import;
pub mod pool;
pub mod qemu_img;
pub mod size;

pub use format::{detect_format, Format};
pub use import::address::{IpNet, UrlPolicy};
pub use import::http::precheck_url;
pub use import::{
    CancelToken, ExportOptions, ExportedFile, ImportOptions, ImportPhase, ImportProgress,
    ImportSource, ImportedVolume,
};
pub use pool::{CloneMode, DirPool, PoolError, PoolUsage, StoragePool, VolumeInfo, VolumeSpec};
pub use qemu_img::snapshot::{validate_snapshot_tag, SnapshotDisk, SnapshotError, SnapshotInfo};
pub use qemu_img::{CheckReport, ConvertJob, ImageInfo, Measurement, QemuImg, QemuImgError};
/// The key type of encrypted volumes and the pipe that hands keys to qemu-img and QEMU.
pub use vessel_secrets::{SecretPipe, VolumeKey};
