use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a pool stores its volumes. Only directories exist so far; LVM-thin and Ceph RBD can follow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    /// Volumes are qcow2 or raw files in a directory.
    #[default]
    Dir,
}

impl PoolKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Dir => "dir",
        }
    }
}

/// A storage pool with its space, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Pool {
    pub name: String,
    pub kind: PoolKind,
    /// The directory of a `dir` pool.
    pub path: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    /// Volumes in the pool.
    pub volumes: u32,
    pub created_at_ms: u64,
}

/// `POST /v1/pools`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePoolRequest {
    pub name: String,
    #[serde(default)]
    pub kind: PoolKind,
    /// Absolute path of the pool's directory on the daemon's host; created if missing.
    pub path: String,
}

/// Disk image format of a volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeFormat {
    /// Copy-on-write, sparse, supports linked clones and snapshots.
    #[default]
    Qcow2,
    /// A plain byte-for-byte image.
    Raw,
}

impl VolumeFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeFormat::Qcow2 => "qcow2",
            VolumeFormat::Raw => "raw",
        }
    }
}

/// A volume in a pool, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    pub pool: String,
    pub name: String,
    /// The project the volume belongs to.
    #[serde(default = "crate::vm::default_project")]
    pub project: String,
    pub format: VolumeFormat,
    /// The volume's file; a VM's `disk` can point here.
    pub path: String,
    /// The size the guest sees.
    pub virtual_bytes: u64,
    /// Bytes the volume's own file occupies (not counting what it shares with its backing chain).
    pub allocated_bytes: u64,
    /// The volume of the same pool this one is a linked clone of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_volume: Option<String>,
    /// The files below this one, nearest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backing_chain: Vec<String>,
    /// VMs whose disk is this volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
    /// LUKS-encrypted with the volume's own key (kept wrapped by the host's master key).
    #[serde(default)]
    pub encrypted: bool,
}

/// `POST /v1/pools/{pool}/volumes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeRequest {
    pub name: String,
    #[serde(default)]
    pub format: VolumeFormat,
    /// Virtual size in bytes (a multiple of 512). Optional for a linked clone, which defaults to
    /// its backing volume's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Make the new volume a linked clone (qcow2) of this volume of the same pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing: Option<String>,
    /// Encrypt the volume (LUKS inside qcow2) with a new random key of its own.
    #[serde(default)]
    pub encrypted: bool,
    /// The project the volume belongs to; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// `POST /v1/pools/{pool}/volumes/{name}/resize`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeVolumeRequest {
    pub size_bytes: u64,
    /// Allow making the volume smaller (data past the new end is lost).
    #[serde(default)]
    pub shrink: bool,
}

/// `POST /v1/pools/{pool}/volumes/{name}/clone`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneVolumeRequest {
    /// Name of the new volume, in the same pool.
    pub name: String,
    /// A linked clone (instant qcow2 overlay; the source must then stay) instead of a full copy.
    #[serde(default)]
    pub linked: bool,
}
