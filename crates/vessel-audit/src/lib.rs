//! Vessel's audit log: who did what, from where, to what, with which result.
//!
//! - Every record is linked into a SHA-256 hash chain: its hash covers its own fields and the
//!   previous record's hash ([`record_hash`], over a length-prefixed canonical encoding, not JSON,
//!   whose key order and escaping are not canonical). The first record links to a per-log genesis
//!   value derived from a random log id kept in the log's header, so two logs' chains differ.
//! - Every [`AuditOptions::checkpoint_every`] records, and on [`AuditLog::checkpoint`], the writer
//!   signs the `(seq, hash)` of the newest record with an Ed25519 key ([`AuditKey`]); a signed
//!   checkpoint pins everything up to it, because that hash commits to the whole chain before it.
//! - [`AuditLog::append`] uses group commit: one writer task puts whatever is queued into a single
//!   store transaction, so thousands of appends per second share one commit. The transaction
//!   compares the log's head, so two writers on one shared store cannot interleave their chains.
//! - [`verify`] is a pure function over records and checkpoints that says record by record what is
//!   wrong ([`Issue`]); [`verify_store`] reads a store (also a copy of a data dir) and calls it.
//!
//! - Retention ([`AuditLog::prune`] with a [`Retention`]): the oldest records (and the checkpoints
//!   among them) are deleted, and a signed [`Pruned`] statement names the last one removed and its
//!   hash. Verification then starts the chain there: the first retained record must link to that
//!   hash, so deleting more of the oldest records, or putting back an older statement, shows as a
//!   deletion, and a forged statement fails its signature.
//!
//! Store layout: `audit/header` ([`Header`]), `audit/head` (newest seq and hash, the CAS point),
//! `audit/records/<seq:020>` ([`AuditRecord`] as JSON), `audit/checkpoints/<seq:020>`
//! ([`Checkpoint`] as JSON), `audit/pruned` ([`Pruned`], once something was pruned). Seqs start
//! at 1.

mod hex;
mod key;
mod log;
mod query;
mod verify;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use key::{key_id, parse_public_key, AuditKey};
pub use log::{AuditLog, AuditOptions, Retention};
pub use query::{list, ListFilter};
pub use verify::{verify, verify_retained, verify_store, Issue, VerifyReport};

/// A 32-byte SHA-256 hash.
pub type Hash = [u8; 32];

pub const HEADER_KEY: &str = "audit/header";
pub const HEAD_KEY: &str = "audit/head";
pub const RECORDS_PREFIX: &str = "audit/records/";
pub const CHECKPOINTS_PREFIX: &str = "audit/checkpoints/";
pub const PRUNED_KEY: &str = "audit/pruned";

/// The key of record `seq`; zero-padded so that key order is seq order.
pub fn record_key(seq: u64) -> String {
    format!("{RECORDS_PREFIX}{seq:020}")
}

/// The key of the checkpoint that signs record `seq`.
pub fn checkpoint_key(seq: u64) -> String {
    format!("{CHECKPOINTS_PREFIX}{seq:020}")
}

/// What a caller appends; the log adds seq and hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Milliseconds since the Unix epoch when the request was decided.
    pub at_ms: u64,
    /// Who asked (a user or token name; `-` for an unauthenticated request).
    pub identity: String,
    /// Where the request came from (peer address, or `unix:` with the peer's uid).
    pub source: String,
    /// What was asked, e.g. `vm.start`.
    pub action: String,
    /// What it was asked of, e.g. `vm/web1`.
    pub target: String,
    /// `ok`, `denied: <why>` or `error: <what>`.
    pub result: String,
}

impl AuditEntry {
    /// An entry stamped with the current time.
    pub fn now(
        identity: impl Into<String>,
        source: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        result: impl Into<String>,
    ) -> Self {
        Self {
            at_ms: now_ms(),
            identity: identity.into(),
            source: source.into(),
            action: action.into(),
            target: target.into(),
            result: result.into(),
        }
    }
}

/// One record of the chain, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub seq: u64,
    pub at_ms: u64,
    pub identity: String,
    pub source: String,
    pub action: String,
    pub target: String,
    pub result: String,
    #[serde(with = "hex::serde32")]
    pub prev_hash: Hash,
    #[serde(with = "hex::serde32")]
    pub hash: Hash,
}

impl AuditRecord {
    /// Builds the record that follows `prev_hash` at `seq`, with its hash.
    pub fn chain(seq: u64, entry: AuditEntry, prev_hash: Hash) -> Self {
        let mut record = Self {
            seq,
            at_ms: entry.at_ms,
            identity: entry.identity,
            source: entry.source,
            action: entry.action,
            target: entry.target,
            result: entry.result,
            prev_hash,
            hash: [0; 32],
        };
        record.hash = record_hash(&record);
        record
    }

    /// Whether the stored hash is the hash of the stored content.
    pub fn hash_is_valid(&self) -> bool {
        record_hash(self) == self.hash
    }
}

/// The hash of a record's content (everything but `hash` itself).
///
/// Canonical encoding: a domain tag, then seq and time as big-endian u64, then each string as a
/// big-endian u64 byte length followed by its bytes, then the previous hash. Length prefixes make
/// the encoding injective: moving bytes from one field to the next changes the hash.
pub fn record_hash(record: &AuditRecord) -> Hash {
    let mut h = Sha256::new();
    h.update(b"vessel-audit-record-v1\0");
    h.update(record.seq.to_be_bytes());
    h.update(record.at_ms.to_be_bytes());
    for field in [
        &record.identity,
        &record.source,
        &record.action,
        &record.target,
        &record.result,
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.update(record.prev_hash);
    h.finalize().into()
}

/// The log's first record, written once when the log is created. Signed, so that nobody can
/// swap the log id (and with it the genesis value) or lower the checkpoint interval unnoticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub version: u32,
    /// Random, per log: the genesis value is derived from it.
    #[serde(with = "hex::serde16")]
    pub log_id: [u8; 16],
    pub created_ms: u64,
    /// A checkpoint is written for every record whose seq is a multiple of this.
    pub checkpoint_every: u64,
    pub key_id: String,
    #[serde(with = "hex::serde64")]
    pub signature: [u8; 64],
}

impl Header {
    /// The `prev_hash` of record 1.
    pub fn genesis(&self) -> Hash {
        genesis(&self.log_id)
    }

    pub(crate) fn signed_message(&self) -> Vec<u8> {
        let mut m = b"vessel-audit-header-v1\0".to_vec();
        m.extend_from_slice(&self.version.to_be_bytes());
        m.extend_from_slice(&self.log_id);
        m.extend_from_slice(&self.created_ms.to_be_bytes());
        m.extend_from_slice(&self.checkpoint_every.to_be_bytes());
        m
    }

    /// Whether `public_key` signed this header.
    pub fn signature_is_valid(&self, public_key: &VerifyingKey) -> bool {
        public_key
            .verify(
                &self.signed_message(),
                &Signature::from_bytes(&self.signature),
            )
            .is_ok()
    }
}

/// The genesis value of the log with this id.
pub fn genesis(log_id: &[u8; 16]) -> Hash {
    let mut h = Sha256::new();
    h.update(b"vessel-audit-genesis");
    h.update(log_id);
    h.finalize().into()
}

/// A signed statement "record `seq` of log `log_id` has hash `hash`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    #[serde(with = "hex::serde32")]
    pub hash: Hash,
    pub at_ms: u64,
    /// Which key signed it ([`key_id`] of the public key), so a verifier can tell a checkpoint made
    /// by another key from a forged one.
    pub key_id: String,
    #[serde(with = "hex::serde64")]
    pub signature: [u8; 64],
}

impl Checkpoint {
    /// The signed bytes. The log id is included so a checkpoint cannot be moved to another log
    /// signed by the same key; the time is not, it is only informative.
    pub fn signed_message(log_id: &[u8; 16], seq: u64, hash: &Hash) -> Vec<u8> {
        seq_hash_message(b"vessel-audit-checkpoint-v1\0", log_id, seq, hash)
    }

    /// Whether `public_key` signed this checkpoint for the log `log_id`.
    pub fn signature_is_valid(&self, log_id: &[u8; 16], public_key: &VerifyingKey) -> bool {
        let message = Self::signed_message(log_id, self.seq, &self.hash);
        signed_by(public_key, &message, &self.signature)
    }
}

/// The bytes of a signed statement about record `seq` (with hash `hash`) of log `log_id`; `tag`
/// says which statement it is, so that one kind cannot be passed off as another.
fn seq_hash_message(tag: &[u8], log_id: &[u8; 16], seq: u64, hash: &Hash) -> Vec<u8> {
    let mut m = tag.to_vec();
    m.extend_from_slice(log_id);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

fn signed_by(public_key: &VerifyingKey, message: &[u8], signature: &[u8; 64]) -> bool {
    public_key
        .verify(message, &Signature::from_bytes(signature))
        .is_ok()
}

/// A signed statement "records 1 to `seq` of log `log_id` were pruned; record `seq` had hash
/// `hash`": where the retained chain starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pruned {
    pub seq: u64,
    #[serde(with = "hex::serde32")]
    pub hash: Hash,
    /// When the pruning was done (informative, not signed).
    pub at_ms: u64,
    pub key_id: String,
    #[serde(with = "hex::serde64")]
    pub signature: [u8; 64],
}

impl Pruned {
    /// The signed bytes: another domain tag than a checkpoint's, so that a checkpoint's signature
    /// cannot be passed off as permission to prune.
    pub fn signed_message(log_id: &[u8; 16], seq: u64, hash: &Hash) -> Vec<u8> {
        seq_hash_message(b"vessel-audit-pruned-v1\0", log_id, seq, hash)
    }

    /// Whether `public_key` signed this statement for the log `log_id`.
    pub fn signature_is_valid(&self, log_id: &[u8; 16], public_key: &VerifyingKey) -> bool {
        let message = Self::signed_message(log_id, self.seq, &self.hash);
        key_id(public_key) == self.key_id && signed_by(public_key, &message, &self.signature)
    }
}

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("audit store access failed")]
    Store(#[source] vessel_store::StoreError),
    #[error("audit key file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("audit key file {path} is readable by group or others (mode {mode:o}); run chmod 600")]
    KeyPermissions { path: String, mode: u32 },
    #[error("audit key file {path} io failed during {op}")]
    KeyIo {
        path: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no randomness available: {0}")]
    Random(String),
    #[error("audit data under {key} is malformed: {reason}")]
    Malformed { key: String, reason: String },
    #[error("the audit log has no header (audit/header); it was never created or was deleted")]
    NoHeader,
    #[error(
        "the audit log header was signed by key {found}, but this daemon's audit key is {expected}"
    )]
    WrongKey { expected: String, found: String },
    #[error("another writer kept changing the audit log head; gave up after {0} attempts")]
    Contended(u32),
    #[error("the audit log writer has stopped")]
    Closed,
}

impl From<vessel_store::StoreError> for AuditError {
    fn from(e: vessel_store::StoreError) -> Self {
        AuditError::Store(e)
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), AuditError> {
    getrandom::fill(buf).map_err(|e| AuditError::Random(e.to_string()))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    key: &str,
    value: &[u8],
) -> Result<T, AuditError> {
    serde_json::from_slice(value).map_err(|e| AuditError::Malformed {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail (no maps with non-string keys, no I/O).
    serde_json::to_vec(value).expect("audit types serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(identity: &str, source: &str) -> AuditEntry {
        AuditEntry {
            at_ms: 1,
            identity: identity.into(),
            source: source.into(),
            action: "vm.start".into(),
            target: "vm/a".into(),
            result: "ok".into(),
        }
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_hash() {
        // Plain concatenation would hash "ab" + "c" and "a" + "bc" alike; length prefixes do not.
        let a = AuditRecord::chain(1, entry("ab", "c"), [0; 32]);
        let b = AuditRecord::chain(1, entry("a", "bc"), [0; 32]);
        assert_ne!(a.hash, b.hash);
        assert!(a.hash_is_valid() && b.hash_is_valid());
    }

    #[test]
    fn record_json_round_trips_with_hex_hashes() {
        let record = AuditRecord::chain(7, entry("alice", "unix:uid=0"), genesis(&[3; 16]));
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains(&hex::encode(&record.hash)), "{json}");
        let back: AuditRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn different_log_ids_give_different_genesis_values() {
        assert_ne!(genesis(&[1; 16]), genesis(&[2; 16]));
    }
}
