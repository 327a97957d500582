//! [`SqliteStore`]: the embedded, single-host [`Store`].
//!
//! One OS thread owns the only connection and serves requests from a channel, one at a time. That
//! gives a total order of reads and writes without any locking in Rust, keeps blocking SQLite calls
//! off the async runtime, and lets the thread publish each committed transaction to watchers in
//! exactly commit order.

mod schema;
mod watch;
mod worker;

use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::{
    validate_key, validate_lease_ttl, validate_prefix, validate_watch, KeyValue, LeaseId, Store,
    StoreError, Txn, TxnResult, Watch, WatchEvent,
};

/// Tuning of a [`SqliteStore`]; `Default` is what the daemon uses.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How many of the newest revisions keep their history for watches to replay. Older history
    /// is discarded as writes go on (in steps of a tenth of this, so that not every write pays).
    pub history_revisions: i64,
    /// How long to wait for a lock held by someone else before failing. With the single-owner lock
    /// this only matters when a second process tries to open the same database.
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            history_revisions: 10_000,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// A [`Store`] in one SQLite file. Cheap to clone: clones share the database thread, which stops
/// when the last clone is dropped (watches do not keep it alive; they end with
/// [`StoreError::Closed`]).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens the store at `path`, creating the file if needed, with default options.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens the store at `path` with explicit options. Fails if another process has it open, or if
    /// it was written by a newer schema version than this build knows.
    pub fn open_with(path: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        if options.history_revisions < 1 {
            return Err(StoreError::Backend(format!(
                "history_revisions must be at least 1, got {}",
                options.history_revisions
            )));
        }
        let conn = schema::open(path, options.busy_timeout)?;
        let worker = worker::Worker::new(conn, options.history_revisions)?;
        let (requests, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("vessel-store".into())
            .spawn(move || worker.run(inbox))
            .map_err(|err| StoreError::Backend(format!("start the store thread: {err}")))?;
        tracing::debug!(path = %path.display(), "store opened");
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.display().to_string(),
                requests: Some(requests),
                thread: Some(thread),
            }),
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        validate_key(key)?;
        let key = key.to_owned();
        self.inner.call(|reply| Request::Get { key, reply }).await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        validate_prefix(prefix)?;
        let prefix = prefix.to_owned();
        self.inner
            .call(|reply| Request::List { prefix, reply })
            .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        txn.validate()?;
        self.inner.call(|reply| Request::Txn { txn, reply }).await
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watch, StoreError> {
        validate_watch(prefix, start_revision)?;
        let sub = self
            .inner
            .call(|reply| Request::Subscribe { reply })
            .await?;
        if start_revision != 0 && start_revision < sub.compacted {
            return Err(StoreError::Compacted {
                requested: start_revision,
                oldest: sub.compacted,
            });
        }
        let stream = watch::SqliteWatch::new(
            Arc::downgrade(&self.inner),
            prefix.to_owned(),
            start_revision,
            sub,
        );
        Ok(Watch::new(stream))
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        self.inner.call(|reply| Request::Revision { reply }).await
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.inner
            .call(|reply| Request::Compact { revision, reply })
            .await
    }

    async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseId, StoreError> {
        validate_lease_ttl(ttl_secs)?;
        self.inner
            .call(|reply| Request::LeaseGrant { ttl_secs, reply })
            .await
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<i64, StoreError> {
        self.inner
            .call(|reply| Request::LeaseKeepAlive { lease, reply })
            .await
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner
            .call(|reply| Request::LeaseRevoke { lease, reply })
            .await
    }

    async fn lease_time_to_live(&self, lease: LeaseId) -> Result<Option<i64>, StoreError> {
        self.inner
            .call(|reply| Request::LeaseTimeToLive { lease, reply })
            .await
    }
}

/// The shared handle to the database thread. Dropping it closes the request channel and waits for
/// the thread to finish what it was given, so the file is closed (and its lock released) by the
/// time the last `SqliteStore` clone is gone: reopening right after is safe.
struct Inner {
    path: String,
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Inner {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or(StoreError::Closed)?;
        requests.send(make(reply)).map_err(|_| StoreError::Closed)?;
        // A dropped reply means the thread died (it only panics on a bug); report it as closed.
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(path = %self.path, "store thread panicked");
            }
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A request to the database thread.
enum Request {
    Get {
        key: String,
        reply: Reply<Option<KeyValue>>,
    },
    List {
        prefix: String,
        reply: Reply<(Vec<KeyValue>, i64)>,
    },
    Txn {
        txn: Txn,
        reply: Reply<TxnResult>,
    },
    Revision {
        reply: Reply<i64>,
    },
    Compact {
        revision: i64,
        reply: Reply<()>,
    },
    /// Subscribe to committed batches and learn the revision and compaction point at that instant.
    Subscribe {
        reply: Reply<Subscription>,
    },
    LeaseGrant {
        ttl_secs: i64,
        reply: Reply<LeaseId>,
    },
    LeaseKeepAlive {
        lease: LeaseId,
        reply: Reply<i64>,
    },
    LeaseRevoke {
        lease: LeaseId,
        reply: Reply<()>,
    },
    LeaseTimeToLive {
        lease: LeaseId,
        reply: Reply<Option<i64>>,
    },
    /// Read history for a watch that is catching up.
    History {
        prefix: String,
        from: i64,
        reply: Reply<HistoryPage>,
    },
}

/// All changes of one committed transaction, as published to live watches.
#[derive(Debug)]
struct Batch {
    revision: i64,
    /// Sorted by key, the same order in which history replays them.
    events: Vec<WatchEvent>,
}

struct Subscription {
    batches: tokio::sync::broadcast::Receiver<Arc<Batch>>,
    revision: i64,
    compacted: i64,
}

struct HistoryPage {
    events: Vec<WatchEvent>,
    /// The first revision not covered by this page.
    next: i64,
    /// The store revision when the page was read.
    revision: i64,
}

/// Adds "what were we doing" to SQLite errors.
trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, StoreError>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|err| StoreError::Backend(format!("{}: {err}", what())))
    }
}

/// The smallest string greater than every string that starts with `prefix`, or `None` if there is
/// none (empty prefix, or only U+10FFFF chars). With it a prefix scan is the index range
/// `prefix <= key < end`. SQLite compares TEXT bytewise, and UTF-8 byte order is code point order,
/// so "next code point of the last char" is the bound.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            // Skip the surrogate gap, which holds no chars.
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(c as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_bounds_exactly_the_prefixed_keys() {
        assert_eq!(prefix_end("vms/a").as_deref(), Some("vms/b"));
        assert_eq!(prefix_end("").as_deref(), None);
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10FFFF}").as_deref(), None);
        let end = prefix_end("vms/a").unwrap();
        for key in ["vms/a", "vms/a/x", "vms/ab", "vms/a\u{10FFFF}\u{10FFFF}"] {
            assert!(key < end.as_str(), "{key}");
        }
        assert!("vms/b" >= end.as_str());
    }
}
