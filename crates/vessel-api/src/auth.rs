//! Wire types of identities, tokens, projects and the audit log.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
pub use vessel_auth::{Grant, Quota, Role, Usage};

/// `GET /v1/whoami`: the identity the daemon sees for this request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Whoami {
    pub identity: String,
    pub grants: Vec<Grant>,
    /// `unix`, or the client's address.
    pub source: String,
    /// How the caller signed in: `unix`, `token` or `certificate`.
    pub method: String,
}

/// A user: a name and roles in projects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub name: String,
    pub grants: Vec<Grant>,
    pub created_at_ms: u64,
    /// SHA-256 fingerprints of the client certificates issued to the user.
    #[serde(default)]
    pub certificates: Vec<String>,
}

/// `POST /v1/users`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub name: String,
    /// Roles per project; `*` as the project means every project and the host.
    #[serde(default)]
    pub grants: Vec<Grant>,
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub user: String,
    #[serde(default)]
    pub description: String,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Narrows the user's grants; empty means all of them.
    #[serde(default)]
    pub scope: Vec<Grant>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub user: String,
    #[serde(default)]
    pub description: String,
    /// Seconds until the token expires; never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
    #[serde(default)]
    pub scope: Vec<Grant>,
}

/// The answer to `POST /v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub token: TokenInfo,
    /// `vsl_<id>_<secret>`: keep it safe, it is not stored and cannot be shown again.
    pub secret: String,
}

/// `POST /v1/users/{name}/certs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueCertRequest {
    /// Validity in days (default 365).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<u32>,
}

/// A client certificate with its private key: shown once, not kept by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IssuedCert {
    pub user: String,
    pub fingerprint: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The daemon's CA certificate, to verify the server with.
    pub ca_pem: String,
}

/// A project: its limits and what it uses now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Project {
    pub name: String,
    pub quota: Quota,
    pub usage: Usage,
    pub created_at_ms: u64,
}

/// `POST /v1/projects`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    pub name: String,
    #[serde(default)]
    pub quota: Quota,
}

/// One audit record, as `GET /v1/audit` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    pub seq: u64,
    pub at_ms: u64,
    pub identity: String,
    pub source: String,
    pub action: String,
    pub target: String,
    pub result: String,
    /// SHA-256 of the record, hex.
    pub hash: String,
}

/// `GET /v1/audit/verify`: whether the chain and its signed checkpoints are intact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditVerifyReport {
    pub records: u64,
    pub last_seq: u64,
    pub valid_checkpoints: u64,
    pub last_verified_checkpoint: u64,
    /// Records up to this seq were pruned by the retention policy (0: none), as a signed
    /// statement in the log says; the retained chain starts after it.
    #[serde(default)]
    pub pruned_through: u64,
    /// What is wrong, one line per problem, naming the record; empty for an intact log.
    pub issues: Vec<String>,
    /// The Ed25519 public key that verifies the checkpoints, hex.
    pub public_key: String,
}
