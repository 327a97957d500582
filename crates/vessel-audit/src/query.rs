//! `vessel audit list`: records filtered by time, identity and action.

use vessel_store::Store;

use crate::{decode, AuditError, AuditRecord, RECORDS_PREFIX};

/// Which records [`list`] returns. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only records at or after this time (milliseconds since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Only records of exactly this identity.
    pub identity: Option<String>,
    /// Only records of this action; a value ending in `.` is a prefix (`vm.` matches `vm.start`).
    pub action: Option<String>,
    /// At most this many records: the newest ones that match.
    pub limit: Option<usize>,
}

impl ListFilter {
    pub fn matches(&self, record: &AuditRecord) -> bool {
        if self.since_ms.is_some_and(|since| record.at_ms < since) {
            return false;
        }
        if self
            .identity
            .as_deref()
            .is_some_and(|identity| record.identity != identity)
        {
            return false;
        }
        match self.action.as_deref() {
            Some(prefix) if prefix.ends_with('.') => record.action.starts_with(prefix),
            Some(action) => record.action == action,
            None => true,
        }
    }
}

/// The records matching `filter`, oldest first.
///
/// Reads every record: the store has prefix listing but no range reads, so a `since` cannot seek.
/// Fine for the sizes an audit log on one host reaches between rotations; a time index is the
/// next step if it is not.
pub async fn list(store: &dyn Store, filter: &ListFilter) -> Result<Vec<AuditRecord>, AuditError> {
    let (kvs, _) = store.list(RECORDS_PREFIX).await?;
    let mut out = Vec::new();
    for kv in kvs {
        let record: AuditRecord = decode(&kv.key, &kv.value)?;
        if filter.matches(&record) {
            out.push(record);
        }
    }
    if let Some(limit) = filter.limit {
        let skip = out.len().saturating_sub(limit);
        out.drain(..skip);
    }
    Ok(out)
}
