use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::VolumeFormat;

/// What an image holds: a disk that VMs are made from, or a kernel or initrd that VMs boot
/// with (`vessel vm create --kernel-image K --initrd-image I`), so that tenants can boot a kernel
/// without naming a file on the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    #[default]
    Disk,
    Kernel,
    Initrd,
}

impl ImageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Disk => "disk",
            ImageKind::Kernel => "kernel",
            ImageKind::Initrd => "initrd",
        }
    }

    pub fn is_disk(&self) -> bool {
        *self == ImageKind::Disk
    }
}

/// A disk image: a read-only volume that VMs are created from (linked or full clones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub name: String,
    /// The project the image belongs to (who may see, use and delete it).
    #[serde(default = "crate::vm::default_project")]
    pub project: String,
    /// The pool that holds the image's volume (of the same name).
    pub pool: String,
    #[serde(default, skip_serializing_if = "ImageKind::is_disk")]
    pub kind: ImageKind,
    /// Every project may see and use it (only host admins make images public).
    #[serde(default)]
    pub public: bool,
    pub format: VolumeFormat,
    pub virtual_bytes: u64,
    pub allocated_bytes: u64,
    /// SHA-256 of the imported bytes, lowercase hex.
    pub sha256: String,
    /// The file or URL it was imported from.
    pub source: String,
    pub created_at_ms: u64,
    /// Volumes that are linked clones of the image; it cannot be deleted while they exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependents: Vec<String>,
}

/// `POST /v1/images`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportImageRequest {
    pub name: String,
    /// An absolute path on the daemon's host, or an `http://` / `https://` URL.
    pub source: String,
    /// The SHA-256 the source must have (64 hex digits); the import fails on a mismatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The pool to keep it in; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The project the image belongs to; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// A disk (the default), or a kernel or initrd to boot VMs with (kept as the bytes given).
    #[serde(default, skip_serializing_if = "ImageKind::is_disk")]
    pub kind: ImageKind,
    /// Every project may see and use it; needs `host.admin`.
    #[serde(default)]
    pub public: bool,
}

/// `POST /v1/pools/{pool}/volumes/import`: a file or URL as a new (writable) volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportVolumeRequest {
    pub name: String,
    /// An absolute path on the daemon's host, or an `http://` / `https://` URL.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Store it in this format; the source's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<VolumeFormat>,
    /// The project the volume belongs to (its disk quota counts it); `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// `POST /v1/pools/{pool}/volumes/{name}/export`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportVolumeRequest {
    /// Absolute path of the file to write on the daemon's host (a standalone qcow2; needs
    /// host.files, or a new file in one of the daemon's export_dirs).
    pub path: String,
    /// Compress the qcow2 (default true).
    #[serde(default = "yes")]
    pub compress: bool,
    /// Replace the file if it exists.
    #[serde(default)]
    pub overwrite: bool,
}

fn yes() -> bool {
    true
}

/// The result of an export, in the operation's `result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportedVolume {
    pub path: String,
    pub bytes: u64,
    /// SHA-256 of the written file (what `sha256sum` prints).
    pub sha256: String,
}
