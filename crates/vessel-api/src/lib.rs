//! Wire types of Vessel's REST API (`/v1`).
//!
//! Everything that crosses the HTTP boundary is defined here once and used by both the daemon and
//! the CLI. Request types reject unknown fields so that a typo in a client is an error, not a
//! silently ignored setting.

mod auth;
mod error;
mod host;
mod image;
mod network;
mod operation;
mod pool;
mod vm;

pub use auth::{
    AuditRecord, AuditVerifyReport, CreateProjectRequest, CreateTokenRequest, CreateUserRequest,
    CreatedToken, Grant, IssueCertRequest, IssuedCert, Project, Quota, Role, TokenInfo, Usage,
    User, Whoami,
};
pub use error::{ApiError, ErrorBody, ErrorCode};
pub use host::{CheckVerdict, HostCheck, HostCheckItem, HostInfo, MasterKeyRotation};
pub use image::{
    ExportVolumeRequest, ExportedVolume, Image, ImageKind, ImportImageRequest, ImportVolumeRequest,
};
pub use network::{
    AddNicRequest, CreateNetworkRequest, IngressPolicy, IngressRule, Network, NetworkKind,
    RuleProtocol, UpdateNetworkRequest, VmNic,
};
pub use operation::{Accepted, Event, EventKind, Operation, OperationAction, OperationStatus};
pub use pool::{
    CloneVolumeRequest, CreatePoolRequest, CreateVolumeRequest, Pool, PoolKind,
    ResizeVolumeRequest, Volume, VolumeFormat,
};
pub use vm::{
    AttachDiskRequest, Boot, CreateSnapshotRequest, CreateVmRequest, DesiredState, EditVmRequest,
    GuestInfo, GuestInterface, Machine, NicKind, RebootVmRequest, RestartPolicy, Snapshot,
    StopVmRequest, Vm, VmDisk, VmSpec, VmState,
};

/// The API version prefix every route lives under.
pub const API_PREFIX: &str = "/v1";

/// Largest request body the daemon accepts. VM specs are small; anything larger is a mistake or
/// an attack.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
