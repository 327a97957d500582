//! Storage pools: where volumes live.
//!
//! [`StoragePool`] is the interface the daemon will use; [`DirPool`] keeps volumes as files in a
//! directory. LVM-thin and Ceph RBD pools can implement the same trait later.
//!
//! # Encrypted volumes
//!
//! An encrypted volume is qcow2 with LUKS encryption inside, unlocked by its own random
//! [`VolumeKey`] ([`VolumeKey::generate`] for each new volume). Pools never keep keys: the
//! `*_encrypted_*` methods take the plaintext key for the one call, and the caller stores it
//! wrapped by the master key (`vessel_secrets::Keyring::wrap_volume_key`). Describing a volume
//! needs no key ([`VolumeInfo::encrypted`]). Encrypted volumes are always self-contained: they
//! cannot be linked clones or the base of one, since QEMU would then need several volumes' keys
//! to open one disk; a full clone re-encrypts the data under the new volume's own key.

mod dir;
mod statvfs;

use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::format::Format;
use crate::import::{
    ExportOptions, ExportedFile, ImportOptions, ImportProgress, ImportSource, ImportedVolume,
};
use crate::qemu_img::{ImageInfo, QemuImgError};
pub use dir::DirPool;
use vessel_secrets::VolumeKey;

/// A pool's space, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolUsage {
    pub total: u64,
    pub used: u64,
    /// What an unprivileged writer can still use (excludes the filesystem's root reserve).
    pub available: u64,
}

/// One volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub format: Format,
    pub path: PathBuf,
    /// The size the guest sees.
    pub virtual_size: u64,
    /// Bytes the volume occupies in the pool (its own file only, not its backing chain).
    pub allocated_size: u64,
    /// The volume in this pool that this one is a linked clone of, if any.
    pub backing_volume: Option<String>,
    /// The images below this one, nearest first (empty for a self-contained volume).
    pub backing_chain: Vec<ImageInfo>,
    /// LUKS-encrypted: attaching it to a VM or copying it needs its key.
    pub encrypted: bool,
    /// The file has no write bit (mode 0444): an image, imported with
    /// [`ImportOptions::read_only`]. VMs use it through clones; resizing it is refused. Deleting
    /// it works as for any volume.
    #[serde(default)]
    pub read_only: bool,
}

/// A volume to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub name: String,
    pub format: Format,
    /// Required without a backing volume; with one it defaults to the backing volume's size and
    /// may not be smaller.
    pub size: Option<u64>,
    /// Make the volume a linked clone (qcow2 overlay) of this volume of the same pool.
    pub backing: Option<String>,
}

impl VolumeSpec {
    /// A self-contained volume of `size` bytes.
    pub fn new(name: impl Into<String>, format: Format, size: u64) -> Self {
        Self {
            name: name.into(),
            format,
            size: Some(size),
            backing: None,
        }
    }
}

/// How to clone a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloneMode {
    /// A qcow2 overlay on top of the source: instant, but the source must then stay.
    Linked,
    /// An independent copy in the source's format.
    Full,
}

/// What went wrong in a pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error(
        "volume {name:?} already exists in pool {pool:?}; choose another name or delete it first"
    )]
    AlreadyExists { pool: String, name: String },
    #[error("volume {name:?} does not exist in pool {pool:?}")]
    NotFound { pool: String, name: String },
    #[error(
        "volume {name:?} is the backing file of {}; delete those volumes or make them full \
         copies first", dependents.join(", ")
    )]
    InUse {
        name: String,
        dependents: Vec<String>,
    },
    #[error(
        "pool {pool:?} has {} free but this needs {}; free some space or use another pool",
        crate::size::format_size_bytes(*available), crate::size::format_size_bytes(*needed)
    )]
    NoSpace {
        pool: String,
        needed: u64,
        available: u64,
    },
    #[error("pool directory {path} is not usable")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    QemuImg(#[from] QemuImgError),
}

/// A place that holds volumes. Every mutation is all-or-nothing: a failed or cancelled call leaves
/// the pool as it was.
#[async_trait]
pub trait StoragePool: Send + Sync {
    /// The pool's name, used in error messages.
    fn name(&self) -> &str;

    /// Space in the pool.
    async fn capacity(&self) -> Result<PoolUsage, PoolError>;

    /// Creates a volume; `AlreadyExists` when the name is taken.
    async fn create_volume(&self, spec: &VolumeSpec) -> Result<VolumeInfo, PoolError>;

    /// Clones `src` into a new volume `dst`. A full clone reports progress in percent.
    /// Encrypted volumes cannot be linked-cloned, and their full clones need
    /// [`clone_encrypted_volume`](Self::clone_encrypted_volume).
    async fn clone_volume(
        &self,
        src: &str,
        dst: &str,
        mode: CloneMode,
        progress: &mut (dyn FnMut(f64) + Send),
    ) -> Result<VolumeInfo, PoolError>;

    /// Changes a volume's virtual size; shrinking needs `shrink`. An encrypted volume needs
    /// [`resize_encrypted_volume`](Self::resize_encrypted_volume).
    async fn resize_volume(
        &self,
        name: &str,
        new_size: u64,
        shrink: bool,
    ) -> Result<VolumeInfo, PoolError>;

    /// Creates an encrypted volume (qcow2 with LUKS inside) unlocked by `key`, which should be a
    /// fresh [`VolumeKey::generate`]. `spec.format` must be qcow2 and `spec.backing` empty.
    async fn create_encrypted_volume(
        &self,
        spec: &VolumeSpec,
        key: &VolumeKey,
    ) -> Result<VolumeInfo, PoolError>;

    /// A full clone of `src` into a new volume `dst`, encrypted with `dst_key` (its own key;
    /// the data is re-encrypted on the way). `src_key` is the source's key if the source is
    /// encrypted; an unencrypted source needs none and is encrypted by the copy. The clone is
    /// qcow2 whatever the source's format. Reports progress in percent.
    async fn clone_encrypted_volume(
        &self,
        src: &str,
        src_key: Option<&VolumeKey>,
        dst: &str,
        dst_key: &VolumeKey,
        progress: &mut (dyn FnMut(f64) + Send),
    ) -> Result<VolumeInfo, PoolError>;

    /// [`resize_volume`](Self::resize_volume) for an encrypted volume, unlocked with `key`.
    async fn resize_encrypted_volume(
        &self,
        name: &str,
        key: &VolumeKey,
        new_size: u64,
        shrink: bool,
    ) -> Result<VolumeInfo, PoolError>;

    /// Deletes a volume; refused while other volumes are linked clones of it.
    async fn delete_volume(&self, name: &str) -> Result<(), PoolError>;

    /// One volume.
    async fn volume(&self, name: &str) -> Result<VolumeInfo, PoolError>;

    /// The names of all volumes, sorted, without inspecting the images (cheap: for counts and
    /// "still holds" checks).
    async fn volume_names(&self) -> Result<Vec<String>, PoolError>;

    /// All volumes, by name.
    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, PoolError>;

    /// A volume's virtual size, read from its file's header without running qemu-img (cheap:
    /// for accounting over every volume of a pool).
    async fn virtual_size(&self, name: &str) -> Result<u64, PoolError>;

    /// The volume's file, where QEMU opens it. File and LVM pools have paths; an RBD pool will
    /// need a different locator, which is when this becomes an enum.
    async fn volume_path(&self, name: &str) -> Result<PathBuf, PoolError>;

    /// Imports a disk image (a host file or an http(s) URL) as a new volume `name`: streams it
    /// into the pool while hashing it, checks `opts.expected_sha256`, refuses anything that is
    /// not a self-contained raw or qcow2 image, converts it to `opts.format` if given, and
    /// publishes it (mode 0444 with `opts.read_only`). All or nothing: a failure, a dropped
    /// future or a tripped `opts.cancel` leaves no partial volume. See [`crate::import`].
    async fn import_volume(
        &self,
        name: &str,
        source: ImportSource,
        opts: &ImportOptions,
        progress: &mut (dyn FnMut(ImportProgress) + Send),
    ) -> Result<ImportedVolume, PoolError>;

    /// Writes volume `name` to `dest` as one standalone qcow2 file (its backing chain
    /// flattened), compressed with `opts.compress`. `dest` must not exist unless
    /// `opts.overwrite`; it appears complete or not at all. An encrypted volume needs
    /// `opts.key` and is written decrypted. Returns the file's size and SHA-256.
    async fn export_volume(
        &self,
        name: &str,
        dest: &Path,
        opts: &ExportOptions<'_>,
        progress: &mut (dyn FnMut(ImportProgress) + Send),
    ) -> Result<ExportedFile, PoolError>;
}
