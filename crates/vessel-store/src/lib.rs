//! Vessel's state store: an etcd-shaped key-value model behind the [`Store`] trait.
//!
//! The model follows etcd v3, simplified:
//! - keys are UTF-8 strings such as `vms/web1/spec`, values are bytes;
//! - one store-wide `revision` grows by exactly one per transaction that changed something, and every
//!   put or delete of that transaction carries that revision;
//! - every key has a `create_revision`, a `mod_revision` and a `version` (writes since creation);
//! - transactions are compare-and-swap: if all [`Compare`]s hold the `success` ops run, otherwise the
//!   `failure` ops, and either all ops of the chosen branch apply or none;
//! - a watch streams the changes under a key prefix from a given revision on, in revision order,
//!   without loss or duplicates, replaying history first if asked to start in the past;
//! - a lease is granted with a time to live and kept alive by its holder; keys put with a lease are
//!   deleted (one revision, seen by watches as deletes) when it expires or is revoked. Liveness of
//!   a host in a cluster is exactly this: its record is put with its lease.
//!
//! [`SqliteStore`] is the embedded single-host implementation. [`conformance`] holds the one test suite
//! that every implementation must pass (see [`for_each_conformance_test!`]).

pub mod conformance;
mod sqlite;
mod watch;

use async_trait::async_trait;

pub use sqlite::{SqliteOptions, SqliteStore};
pub use watch::{Watch, WatchStream};

/// The longest key accepted, in bytes. etcd's default request limit is far larger; this one keeps
/// keys index-friendly and catches accidental values-as-keys.
pub const MAX_KEY_BYTES: usize = 1024;
/// The largest value accepted, in bytes. VM specs and status records are a few KiB; anything near a
/// MiB belongs in a file, not in the store (and etcd's own default request limit is 1.5 MiB).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// A lease's id; 0 means "no lease".
pub type LeaseId = i64;

/// The shortest lease accepted, in seconds. etcd raises shorter ones to its own minimum (1.5 s
/// rounded up with its default election timeout), so a shorter one would mean different things
/// on the two implementations.
pub const MIN_LEASE_TTL_SECS: i64 = 2;
/// The longest lease accepted, in seconds (etcd's own limit is 9,000,000,000).
pub const MAX_LEASE_TTL_SECS: i64 = 24 * 3600;

/// One key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key (it changes when a deleted key is created again).
    pub create_revision: i64,
    /// Revision of the last write to the key.
    pub mod_revision: i64,
    /// Number of writes since the key was created; 1 right after creation.
    pub version: i64,
    /// The lease the key was last put with, 0 if none: the key goes when the lease does.
    pub lease: LeaseId,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals this one; 0 means "the key does not exist".
    ModRevision(String, i64),
    /// The key exists.
    Exists(String),
    /// The key does not exist.
    Missing(String),
    /// The key exists and holds exactly this value.
    Value(String, Vec<u8>),
}

impl Compare {
    /// The key this condition looks at.
    pub fn key(&self) -> &str {
        match self {
            Compare::ModRevision(key, _)
            | Compare::Exists(key)
            | Compare::Missing(key)
            | Compare::Value(key, _) => key,
        }
    }
}

/// A write in a transaction.
///
/// Like etcd, one branch may not touch a key twice with a put (two puts, or a put and a delete that
/// covers it): the result would depend on op order and a watch could not report it as one event.
/// Overlapping deletes are fine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Put without a lease (a key put earlier with a lease loses it, as in etcd).
    Put(String, Vec<u8>),
    /// Put attached to a lease: the key is deleted when the lease expires or is revoked. The whole
    /// transaction fails with [`StoreError::LeaseNotFound`] if the lease does not exist (any more).
    PutWithLease(String, Vec<u8>, LeaseId),
    /// Delete one key; deleting a missing key is not an error and changes nothing.
    Delete(String),
    /// Delete every key that starts with this prefix (the empty prefix deletes everything).
    DeletePrefix(String),
}

/// A compare-and-swap transaction: if every compare holds, `success` runs, otherwise `failure`.
///
/// ```
/// use vessel_store::{Compare, Op, Txn};
/// let txn = Txn::new()
///     .when(Compare::ModRevision("vms/web1/spec".into(), 7))
///     .then(Op::Put("vms/web1/spec".into(), b"{}".to_vec()))
///     .otherwise(Op::Put("vms/web1/conflicts".into(), b"1".to_vec()));
/// assert_eq!(txn.compares.len(), 1);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a condition; all conditions must hold for `success` to run.
    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }

    /// Adds an op to run when every condition holds.
    pub fn then(mut self, op: Op) -> Self {
        self.success.push(op);
        self
    }

    /// Adds an op to run when some condition does not hold.
    pub fn otherwise(mut self, op: Op) -> Self {
        self.failure.push(op);
        self
    }

    /// Checks keys, sizes and conflicting ops before anything touches storage, so that every
    /// implementation refuses the same transactions with the same errors.
    pub fn validate(&self) -> Result<(), StoreError> {
        for compare in &self.compares {
            validate_key(compare.key())?;
        }
        validate_ops(&self.success)?;
        validate_ops(&self.failure)
    }
}

/// The outcome of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held (and so `success` ran rather than `failure`).
    pub succeeded: bool,
    /// The store revision after the transaction: the transaction's own revision if it changed
    /// anything, otherwise the unchanged current revision.
    pub revision: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For `Put`, the key as written. For `Delete`, the key with an empty value,
    /// `mod_revision` = the delete's revision, and `create_revision` and `version` 0 (as etcd does).
    pub kv: KeyValue,
}

impl WatchEvent {
    /// The revision of the transaction that made this change.
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

/// Why a store operation failed.
///
/// Non-exhaustive: implementations (etcd, later) may need more cases, and callers should treat
/// unknown ones like `Backend`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage underneath failed; the text says which operation and why.
    #[error("store backend failed: {0}")]
    Backend(String),
    /// A watch asked for history that has been discarded. Re-list and watch from the list revision.
    #[error("revision {requested} is compacted; the oldest revision still available is {oldest}")]
    Compacted { requested: i64, oldest: i64 },
    /// The store was shut down (or its worker died) while the request was pending.
    #[error("the store is closed")]
    Closed,
    #[error("a key must not be empty")]
    EmptyKey,
    #[error("key {key_start:?}... is {size} bytes long; keys may be at most {max} bytes")]
    KeyTooLarge {
        /// The first characters of the key, to tell which one it was without echoing 1 KiB+.
        key_start: String,
        size: usize,
        max: usize,
    },
    #[error("value for key {key:?} is {size} bytes; values may be at most {max} bytes")]
    ValueTooLarge {
        key: String,
        size: usize,
        max: usize,
    },
    /// The transaction is malformed (for example, it puts the same key twice).
    #[error("invalid transaction: {0}")]
    InvalidTxn(String),
    /// A revision argument is negative or in the future.
    #[error("invalid revision {requested}: {reason}")]
    InvalidRevision { requested: i64, reason: String },
    /// The lease does not exist: it was never granted, expired or was revoked. A holder that gets
    /// this has lost every key it kept with the lease and must start over with a new one.
    #[error("lease {0:x} does not exist (it expired or was revoked)")]
    LeaseNotFound(LeaseId),
    #[error("a lease's time to live must be {min} to {max} seconds, got {requested}")]
    InvalidLeaseTtl { requested: i64, min: i64, max: i64 },
    /// The database was written by a newer Vessel; opening it with this one could corrupt it.
    #[error(
        "database {path} has schema version {found}, but this build of Vessel only knows versions up \
         to {supported}; it was written by a newer Vessel, so run that version (or restore a backup)"
    )]
    SchemaTooNew {
        path: String,
        found: i64,
        supported: i64,
    },
}

/// An etcd-shaped key-value store. See the crate documentation for the model.
///
/// Object safe: the daemon holds an `Arc<dyn Store>`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The key's current value and revisions, or `None` if it does not exist.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// All keys with this prefix, sorted by key, and the store revision they were read at.
    ///
    /// The prefix is a plain string prefix: `vms/a` also matches `vms/ab`; use `vms/a/` to get the
    /// children of `vms/a` only.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError>;

    /// Runs a compare-and-swap transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError>;

    /// Events for keys under `prefix` with revision >= `start_revision` (0 = only future events), in
    /// revision order, none lost, none duplicated. A typical reconciler lists, then watches from the
    /// list revision + 1.
    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watch, StoreError>;

    /// The current store revision (0 for an empty, never-written store).
    async fn revision(&self) -> Result<i64, StoreError>;

    /// Discards the history of revisions older than `revision`: watches starting before it then fail
    /// with [`StoreError::Compacted`]. Compacting to an already compacted revision does nothing.
    /// Implementations may also compact on their own to bound their history.
    async fn compact(&self, revision: i64) -> Result<(), StoreError>;

    /// Grants a lease that lives `ttl_secs` seconds unless kept alive.
    async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseId, StoreError>;

    /// Resets the lease's time to live to its full length; returns that length in seconds, or
    /// [`StoreError::LeaseNotFound`] if the lease is gone (its keys are gone with it).
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<i64, StoreError>;

    /// Ends the lease now and deletes its keys (one revision). Revoking a missing lease is
    /// [`StoreError::LeaseNotFound`].
    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// The lease's remaining time to live in whole seconds (rounded up), or `None` if it is gone.
    /// Only a hint: it is the store's view, and etcd resets it on a leader change.
    async fn lease_time_to_live(&self, lease: LeaseId) -> Result<Option<i64>, StoreError>;

    /// Writes one key unconditionally; returns the revision of the write.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        let result = self
            .txn(Txn::new().then(Op::Put(key.to_owned(), value)))
            .await?;
        Ok(result.revision)
    }

    /// Deletes one key; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        // The existence check and the delete are one transaction, so the answer is exact even
        // with concurrent writers.
        let txn = Txn::new()
            .when(Compare::Exists(key.to_owned()))
            .then(Op::Delete(key.to_owned()));
        Ok(self.txn(txn).await?.succeeded)
    }

    /// Writes the key only if it does not exist; returns whether it was written.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when(Compare::Missing(key.to_owned()))
            .then(Op::Put(key.to_owned(), value));
        Ok(self.txn(txn).await?.succeeded)
    }
}

/// Checks a lease's requested time to live against the limits every implementation shares.
pub fn validate_lease_ttl(ttl_secs: i64) -> Result<(), StoreError> {
    if (MIN_LEASE_TTL_SECS..=MAX_LEASE_TTL_SECS).contains(&ttl_secs) {
        return Ok(());
    }
    Err(StoreError::InvalidLeaseTtl {
        requested: ttl_secs,
        min: MIN_LEASE_TTL_SECS,
        max: MAX_LEASE_TTL_SECS,
    })
}

/// Checks one key against the limits every implementation shares.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    validate_prefix(key)
}

/// Like [`validate_key`], but the empty string is allowed (it means "every key").
pub fn validate_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(StoreError::KeyTooLarge {
            key_start: prefix.chars().take(40).collect(),
            size: prefix.len(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

/// Checks the arguments of [`Store::watch`] (every implementation refuses the same ones).
pub fn validate_watch(prefix: &str, start_revision: i64) -> Result<(), StoreError> {
    validate_prefix(prefix)?;
    if start_revision < 0 {
        return Err(StoreError::InvalidRevision {
            requested: start_revision,
            reason: "a watch starts at revision 0 (now) or later".into(),
        });
    }
    Ok(())
}

fn validate_ops(ops: &[Op]) -> Result<(), StoreError> {
    let mut put_keys: Vec<&str> = Vec::new();
    for op in ops {
        match op {
            Op::Put(key, value) | Op::PutWithLease(key, value, _) => {
                validate_key(key)?;
                if value.len() > MAX_VALUE_BYTES {
                    return Err(StoreError::ValueTooLarge {
                        key: key.clone(),
                        size: value.len(),
                        max: MAX_VALUE_BYTES,
                    });
                }
                put_keys.push(key);
            }
            Op::Delete(key) => validate_key(key)?,
            Op::DeletePrefix(prefix) => validate_prefix(prefix)?,
        }
    }
    // Transactions are small (a handful of ops), so the quadratic check is cheaper than a set.
    for (i, key) in put_keys.iter().enumerate() {
        if put_keys[..i].contains(key) {
            return Err(StoreError::InvalidTxn(format!("key {key:?} is put twice")));
        }
        let deleted = ops.iter().any(|op| match op {
            Op::Delete(k) => k == key,
            Op::DeletePrefix(prefix) => key.starts_with(prefix.as_str()),
            Op::Put(..) | Op::PutWithLease(..) => false,
        });
        if deleted {
            return Err(StoreError::InvalidTxn(format!(
                "key {key:?} is both put and deleted"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_and_delete_of_one_key_in_one_branch_is_invalid() {
        let txn = Txn::new()
            .then(Op::Put("a/b".into(), vec![]))
            .then(Op::DeletePrefix("a/".into()));
        assert!(matches!(txn.validate(), Err(StoreError::InvalidTxn(_))));
    }

    #[test]
    fn same_key_in_both_branches_is_valid() {
        let txn = Txn::new()
            .then(Op::Put("a".into(), vec![]))
            .otherwise(Op::Delete("a".into()));
        txn.validate().unwrap();
    }

    #[test]
    fn overlapping_deletes_are_valid() {
        let txn = Txn::new()
            .then(Op::Delete("a/b".into()))
            .then(Op::DeletePrefix("a/".into()));
        txn.validate().unwrap();
    }
}
