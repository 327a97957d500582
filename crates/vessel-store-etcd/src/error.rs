//! etcd's errors in the store's terms.

use vessel_store::StoreError;

/// A backend failure: what was being done, and etcd's (or the transport's) reason.
pub(crate) fn backend(what: String, err: etcd_client::Error) -> StoreError {
    StoreError::Backend(format!("{what}: {err}"))
}

/// Maps the errors the store model names (compaction, a missing lease) to their variants; the
/// rest are backend failures. etcd reports them as gRPC statuses with fixed messages (etcd's
/// `rpctypes` and `mvcc` error texts, stable across 3.x).
pub(crate) fn from_etcd(what: String, err: etcd_client::Error) -> StoreError {
    if let etcd_client::Error::GRpcStatus(status) = &err {
        let message = status.message();
        if message.contains("required revision has been compacted") {
            // The oldest revision is not in this error; callers that need it ask the watch.
            return StoreError::Compacted {
                requested: 0,
                oldest: 0,
            };
        }
        if message.contains("required revision is a future revision") {
            return StoreError::InvalidRevision {
                requested: 0,
                reason: format!("{what}: the revision is in the future"),
            };
        }
        if message.contains("requested lease not found") {
            return StoreError::LeaseNotFound(0);
        }
    }
    backend(what, err)
}
