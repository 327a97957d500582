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
    /// Absolute path of the pool's directory; created if missing.
    pub path: String,
}
