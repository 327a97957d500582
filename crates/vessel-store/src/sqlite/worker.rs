//! The database thread: owns the connection and executes requests one at a time.

use std::collections::HashMap;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::broadcast;

use super::{prefix_end, Batch, Context, HistoryPage, Reply, Request, Subscription};
use crate::{Compare, EventKind, KeyValue, LeaseId, Op, StoreError, Txn, TxnResult, WatchEvent};

/// How many committed batches the live broadcast keeps for slow watchers. A watcher that falls
/// further behind re-reads history, so this trades memory (batches hold values) for re-reads.
const BROADCAST_CAPACITY: usize = 256;

/// How many revisions one history read covers, so that a watch replaying a long history does not
/// hold all of it in memory at once.
const HISTORY_PAGE_REVISIONS: i64 = 128;

const KIND_PUT: i64 = 0;
const KIND_DELETE: i64 = 1;

pub(super) struct Worker {
    conn: Connection,
    batches: broadcast::Sender<Arc<Batch>>,
    /// Mirrors of the `meta` rows. This connection is the only writer (the file is locked), so
    /// the copies cannot go stale, and reads need not touch `meta`.
    revision: i64,
    compacted: i64,
    history_revisions: i64,
    /// Live leases and when each ends, on this process's monotonic clock.
    leases: HashMap<LeaseId, Lease>,
}

struct Lease {
    ttl_secs: i64,
    deadline: Instant,
}

impl Lease {
    fn new(ttl_secs: i64) -> Self {
        Self {
            ttl_secs,
            deadline: Instant::now() + Duration::from_secs(ttl_secs.unsigned_abs()),
        }
    }
}

impl Worker {
    pub(super) fn new(conn: Connection, history_revisions: i64) -> Result<Self, StoreError> {
        let revision = read_meta(&conn, "revision")?;
        let compacted = read_meta(&conn, "compacted")?;
        let leases = read_leases(&conn)?;
        let (batches, _) = broadcast::channel(BROADCAST_CAPACITY);
        Ok(Self {
            conn,
            batches,
            revision,
            compacted,
            history_revisions,
            leases,
        })
    }

    /// Serves requests until every sender is gone, then closes the connection (by dropping it).
    /// Between requests it ends the leases whose time is up, so expiry is timely even when idle.
    pub(super) fn run(mut self, inbox: mpsc::Receiver<Request>) {
        loop {
            self.expire_leases();
            let request = match self.next_deadline() {
                Some(deadline) => {
                    match inbox.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(request) => request,
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match inbox.recv() {
                    Ok(request) => request,
                    Err(_) => break,
                },
            };
            self.handle(request);
        }
        tracing::debug!("store thread stopping");
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().map(|lease| lease.deadline).min()
    }

    fn expire_leases(&mut self) {
        let now = Instant::now();
        let due: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            match self.end_lease(id) {
                Ok(()) => tracing::debug!(lease = id, "store lease expired"),
                // The lease stays in memory and is tried again at the next turn of the loop.
                Err(err) => tracing::error!(lease = id, "cannot expire lease: {err}"),
            }
        }
    }

    /// Deletes the lease and every key put with it, as one revision (none if it had no keys), and
    /// publishes the deletes to watches.
    fn end_lease(&mut self, id: LeaseId) -> Result<(), StoreError> {
        let revision = self.revision + 1;
        let what = || format!("end lease {id:x}");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context(what)?;
        let keys = tx
            .prepare_cached("DELETE FROM kv WHERE lease = ?1 RETURNING key")
            .and_then(|mut stmt| {
                stmt.query_map([id], |row| row.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .context(what)?;
        tx.execute("DELETE FROM leases WHERE id = ?1", [id])
            .context(what)?;
        let mut events: Vec<WatchEvent> = keys
            .into_iter()
            .map(|key| delete_event(key, revision))
            .collect();
        let batch = if events.is_empty() {
            None
        } else {
            events.sort_by(|a, b| a.kv.key.cmp(&b.kv.key));
            record_history(&tx, &events)?;
            set_meta(&tx, "revision", revision)?;
            Some(Arc::new(Batch { revision, events }))
        };
        tx.commit().context(what)?;
        self.leases.remove(&id);
        if let Some(batch) = batch {
            self.revision = revision;
            let _ = self.batches.send(batch);
        }
        Ok(())
    }

    fn lease_grant(&mut self, ttl_secs: i64) -> Result<LeaseId, StoreError> {
        let what = || "grant a lease".to_owned();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context(what)?;
        let id = read_meta(&tx, "lease_seq")? + 1;
        set_meta(&tx, "lease_seq", id)?;
        tx.execute(
            "INSERT INTO leases (id, ttl) VALUES (?1, ?2)",
            params![id, ttl_secs],
        )
        .context(what)?;
        tx.commit().context(what)?;
        self.leases.insert(id, Lease::new(ttl_secs));
        Ok(id)
    }

    /// A live lease, or `LeaseNotFound`. A lease past its deadline is ended here first, so no
    /// caller can use (or renew) a lease that has run out but not yet been swept.
    fn live_lease(&mut self, id: LeaseId) -> Result<&mut Lease, StoreError> {
        let expired = self
            .leases
            .get(&id)
            .is_some_and(|lease| lease.deadline <= Instant::now());
        if expired {
            self.end_lease(id)?;
        }
        self.leases
            .get_mut(&id)
            .ok_or(StoreError::LeaseNotFound(id))
    }

    fn lease_keep_alive(&mut self, id: LeaseId) -> Result<i64, StoreError> {
        let lease = self.live_lease(id)?;
        *lease = Lease::new(lease.ttl_secs);
        Ok(lease.ttl_secs)
    }

    fn lease_revoke(&mut self, id: LeaseId) -> Result<(), StoreError> {
        self.live_lease(id)?;
        self.end_lease(id)
    }

    fn lease_time_to_live(&mut self, id: LeaseId) -> Result<Option<i64>, StoreError> {
        match self.live_lease(id) {
            Ok(lease) => {
                let left = lease.deadline.saturating_duration_since(Instant::now());
                Ok(Some(left.as_millis().div_ceil(1000) as i64))
            }
            Err(StoreError::LeaseNotFound(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn handle(&mut self, request: Request) {
        // A send fails only when the caller stopped waiting (its future was dropped); the work is
        // done either way, so there is nothing to do about it.
        match request {
            Request::Get { key, reply } => send(reply, self.get(&key)),
            Request::List { prefix, reply } => send(reply, self.list(&prefix)),
            Request::Txn { txn, reply } => {
                let result = self.txn(&txn);
                // Publish before replying: once a writer learns its revision, a watch started
                // afterwards with start 0 must not see that revision again (it is already past).
                let result = result.map(|(result, batch)| {
                    if let Some(batch) = batch {
                        // Err only means nobody is subscribed right now.
                        let _ = self.batches.send(batch);
                    }
                    result
                });
                send(reply, result);
            }
            Request::Revision { reply } => send(reply, Ok(self.revision)),
            Request::Compact { revision, reply } => send(reply, self.compact(revision)),
            Request::Subscribe { reply } => {
                // Subscribing here, between two requests, makes the subscription and the revision
                // returned with it one instant: every later commit is in the receiver.
                let sub = Subscription {
                    batches: self.batches.subscribe(),
                    revision: self.revision,
                    compacted: self.compacted,
                };
                send(reply, Ok(sub));
            }
            Request::History {
                prefix,
                from,
                reply,
            } => send(reply, self.history(&prefix, from)),
            Request::LeaseGrant { ttl_secs, reply } => send(reply, self.lease_grant(ttl_secs)),
            Request::LeaseKeepAlive { lease, reply } => send(reply, self.lease_keep_alive(lease)),
            Request::LeaseRevoke { lease, reply } => send(reply, self.lease_revoke(lease)),
            Request::LeaseTimeToLive { lease, reply } => {
                send(reply, self.lease_time_to_live(lease))
            }
        }
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT key, value, create_rev, mod_rev, version, lease FROM kv WHERE key = ?1",
            )
            .context(|| format!("get {key:?}"))?;
        stmt.query_row([key], read_kv)
            .optional()
            .context(|| format!("get {key:?}"))
    }

    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let what = || format!("list prefix {prefix:?}");
        // Two statements rather than `key < NULL` tricks, so that each is a plain index range scan.
        let kvs = match prefix_end(prefix) {
            Some(end) => {
                let mut stmt = self
                    .conn
                    .prepare_cached(
                        "SELECT key, value, create_rev, mod_rev, version, lease FROM kv
                         WHERE key >= ?1 AND key < ?2 ORDER BY key",
                    )
                    .context(what)?;
                let rows = stmt
                    .query_map(params![prefix, end], read_kv)
                    .context(what)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().context(what)?
            }
            None => {
                let mut stmt = self
                    .conn
                    .prepare_cached(
                        "SELECT key, value, create_rev, mod_rev, version, lease FROM kv
                         WHERE key >= ?1 ORDER BY key",
                    )
                    .context(what)?;
                let rows = stmt.query_map([prefix], read_kv).context(what)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().context(what)?
            }
        };
        // Every read and write runs on this thread, so no write can fall between the scan and
        // taking the revision: the list is exactly the state at that revision.
        Ok((kvs, self.revision))
    }

    /// Runs one transaction; returns its result and, if it changed anything, the batch to publish.
    fn txn(&mut self, txn: &Txn) -> Result<(TxnResult, Option<Arc<Batch>>), StoreError> {
        self.expire_leases();
        let what = || "transaction".to_owned();
        let revision = self.revision + 1;
        let compacted = self.auto_compact_target(revision);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context(what)?;
        let mut succeeded = true;
        for compare in &txn.compares {
            if !compare_holds(&tx, compare)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        // Leases past their deadline were ended before the transaction began (expire_leases), so
        // the map holds exactly the live ones.
        for op in ops {
            if let Op::PutWithLease(_, _, lease) = op {
                if !self.leases.contains_key(lease) {
                    return Err(StoreError::LeaseNotFound(*lease));
                }
            }
        }
        let mut events = Vec::new();
        for op in ops {
            apply(&tx, op, revision, &mut events)?;
        }
        if events.is_empty() {
            // Nothing changed (no ops, or deletes of missing keys): like etcd, the revision stays.
            // Dropping `tx` rolls back, which is a no-op here.
            let result = TxnResult {
                succeeded,
                revision: self.revision,
            };
            return Ok((result, None));
        }
        events.sort_by(|a, b| a.kv.key.cmp(&b.kv.key));
        record_history(&tx, &events)?;
        set_meta(&tx, "revision", revision)?;
        if let Some(oldest) = compacted {
            discard_history(&tx, oldest)?;
        }
        // Any error above dropped `tx` uncommitted: all ops of the branch apply, or none.
        tx.commit()
            .context(|| format!("commit revision {revision}"))?;
        self.revision = revision;
        if let Some(oldest) = compacted {
            tracing::debug!(oldest, "store history compacted");
            self.compacted = oldest;
        }
        let result = TxnResult {
            succeeded,
            revision,
        };
        Ok((result, Some(Arc::new(Batch { revision, events }))))
    }

    /// The new oldest kept revision if history has grown past its bound, else `None`. Waiting for a
    /// tenth of the bound to accumulate makes the cost one larger delete now and then instead of a
    /// small one on every write.
    fn auto_compact_target(&self, revision: i64) -> Option<i64> {
        let keep = self.history_revisions;
        let slack = (keep / 10).max(1);
        let kept = revision - self.compacted + 1;
        (kept > keep + slack).then_some(revision - keep + 1)
    }

    fn compact(&mut self, revision: i64) -> Result<(), StoreError> {
        if revision > self.revision {
            return Err(StoreError::InvalidRevision {
                requested: revision,
                reason: format!(
                    "compaction must not go beyond the current revision {}",
                    self.revision
                ),
            });
        }
        if revision <= self.compacted {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context(|| format!("compact to {revision}"))?;
        discard_history(&tx, revision)?;
        tx.commit()
            .context(|| format!("commit compaction to {revision}"))?;
        self.compacted = revision;
        Ok(())
    }

    /// Up to [`HISTORY_PAGE_REVISIONS`] revisions of history under `prefix`, starting at `from`.
    fn history(&self, prefix: &str, from: i64) -> Result<HistoryPage, StoreError> {
        if from < self.compacted {
            return Err(StoreError::Compacted {
                requested: from,
                oldest: self.compacted,
            });
        }
        let to = (from + HISTORY_PAGE_REVISIONS).min(self.revision + 1);
        let what = || format!("read history of {prefix:?} from revision {from}");
        let mut events = Vec::new();
        if from < to {
            // The (rev, key) index serves the revision range; the key bounds filter within it.
            // Bounds, not substr(): SQLite's length() and substr() stop at a NUL character, while
            // comparisons are bytewise, like Rust's.
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT rev, key, kind, value, create_rev, version, lease FROM history
                     WHERE rev >= ?1 AND rev < ?2 AND key >= ?3 AND (?4 IS NULL OR key < ?4)
                     ORDER BY rev, key",
                )
                .context(what)?;
            let end = prefix_end(prefix);
            let rows = stmt
                .query_map(params![from, to, prefix, end], read_event)
                .context(what)?;
            for row in rows {
                events.push(row.context(what)?);
            }
        }
        Ok(HistoryPage {
            events,
            next: to.max(from),
            revision: self.revision,
        })
    }
}

fn send<T>(reply: Reply<T>, result: Result<T, StoreError>) {
    let _ = reply.send(result);
}

fn read_meta(conn: &Connection, name: &str) -> Result<i64, StoreError> {
    conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |row| {
        row.get(0)
    })
    .context(|| format!("read {name} from meta"))
}

/// Every lease in the file, each with its full time to live from now (see schema migration 2).
fn read_leases(conn: &Connection) -> Result<HashMap<LeaseId, Lease>, StoreError> {
    let what = || "read leases".to_owned();
    let mut stmt = conn.prepare("SELECT id, ttl FROM leases").context(what)?;
    let rows = stmt
        .query_map([], |row| Ok((row.get(0)?, Lease::new(row.get(1)?))))
        .context(what)?;
    rows.collect::<rusqlite::Result<HashMap<_, _>>>()
        .context(what)
}

fn set_meta(conn: &Connection, name: &str, value: i64) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE meta SET value = ?2 WHERE name = ?1")
        .and_then(|mut stmt| stmt.execute(params![name, value]))
        .map(drop)
        .context(|| format!("set {name} to {value}"))
}

fn read_kv(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: row.get(0)?,
        value: row.get(1)?,
        create_revision: row.get(2)?,
        mod_revision: row.get(3)?,
        version: row.get(4)?,
        lease: row.get(5)?,
    })
}

fn read_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<WatchEvent> {
    let kind = if row.get::<_, i64>(2)? == KIND_DELETE {
        EventKind::Delete
    } else {
        EventKind::Put
    };
    Ok(WatchEvent {
        kind,
        kv: KeyValue {
            key: row.get(1)?,
            value: row.get(3)?,
            create_revision: row.get(4)?,
            mod_revision: row.get(0)?,
            version: row.get(5)?,
            lease: row.get(6)?,
        },
    })
}

fn compare_holds(conn: &Connection, compare: &Compare) -> Result<bool, StoreError> {
    let key = compare.key();
    let what = || format!("compare on {key:?}");
    let mut stmt = conn
        .prepare_cached("SELECT mod_rev, value FROM kv WHERE key = ?1")
        .context(what)?;
    let current: Option<(i64, Vec<u8>)> = stmt
        .query_row([key], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
        .context(what)?;
    Ok(match compare {
        Compare::ModRevision(_, expected) => current.map_or(0, |(mod_rev, _)| mod_rev) == *expected,
        Compare::Exists(_) => current.is_some(),
        Compare::Missing(_) => current.is_none(),
        Compare::Value(_, expected) => current.is_some_and(|(_, value)| value == *expected),
    })
}

fn apply(
    conn: &Connection,
    op: &Op,
    revision: i64,
    events: &mut Vec<WatchEvent>,
) -> Result<(), StoreError> {
    match op {
        Op::Put(key, value) => put(conn, key, value, 0, revision, events)?,
        Op::PutWithLease(key, value, lease) => put(conn, key, value, *lease, revision, events)?,
        Op::Delete(key) => {
            let what = || format!("delete {key:?}");
            let mut stmt = conn
                .prepare_cached("DELETE FROM kv WHERE key = ?1 RETURNING key")
                .context(what)?;
            let deleted = stmt
                .query_map([key], |row| row.get::<_, String>(0))
                .context(what)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .context(what)?;
            events.extend(deleted.into_iter().map(|key| delete_event(key, revision)));
        }
        Op::DeletePrefix(prefix) => {
            let what = || format!("delete prefix {prefix:?}");
            let deleted = match prefix_end(prefix) {
                Some(end) => conn
                    .prepare_cached("DELETE FROM kv WHERE key >= ?1 AND key < ?2 RETURNING key")
                    .and_then(|mut stmt| {
                        stmt.query_map(params![prefix, end], |row| row.get::<_, String>(0))?
                            .collect::<rusqlite::Result<Vec<_>>>()
                    }),
                None => conn
                    .prepare_cached("DELETE FROM kv WHERE key >= ?1 RETURNING key")
                    .and_then(|mut stmt| {
                        stmt.query_map([prefix], |row| row.get::<_, String>(0))?
                            .collect::<rusqlite::Result<Vec<_>>>()
                    }),
            }
            .context(what)?;
            events.extend(deleted.into_iter().map(|key| delete_event(key, revision)));
        }
    }
    Ok(())
}

fn put(
    conn: &Connection,
    key: &str,
    value: &[u8],
    lease: LeaseId,
    revision: i64,
    events: &mut Vec<WatchEvent>,
) -> Result<(), StoreError> {
    let what = || format!("put {key:?}");
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO kv (key, value, create_rev, mod_rev, version, lease)
             VALUES (?1, ?2, ?3, ?3, 1, ?4)
             ON CONFLICT (key) DO UPDATE
                SET value = excluded.value, mod_rev = excluded.mod_rev,
                    version = version + 1, lease = excluded.lease
             RETURNING create_rev, version",
        )
        .context(what)?;
    let (create_revision, version) = stmt
        .query_row(params![key, value, revision, lease], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .context(what)?;
    events.push(WatchEvent {
        kind: EventKind::Put,
        kv: KeyValue {
            key: key.to_owned(),
            value: value.to_vec(),
            create_revision,
            mod_revision: revision,
            version,
            lease,
        },
    });
    Ok(())
}

fn delete_event(key: String, revision: i64) -> WatchEvent {
    WatchEvent {
        kind: EventKind::Delete,
        kv: KeyValue {
            key,
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            lease: 0,
        },
    }
}

fn record_history(conn: &Connection, events: &[WatchEvent]) -> Result<(), StoreError> {
    let what = || "record history".to_owned();
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO history (rev, key, kind, value, create_rev, version, lease)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .context(what)?;
    for event in events {
        let kind = match event.kind {
            EventKind::Put => KIND_PUT,
            EventKind::Delete => KIND_DELETE,
        };
        let kv = &event.kv;
        stmt.execute(params![
            kv.mod_revision,
            kv.key,
            kind,
            kv.value,
            kv.create_revision,
            kv.version,
            kv.lease
        ])
        .context(what)?;
    }
    Ok(())
}

/// Deletes history older than `oldest` and records `oldest` as the first watchable revision.
fn discard_history(conn: &Connection, oldest: i64) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM history WHERE rev < ?1")
        .and_then(|mut stmt| stmt.execute([oldest]))
        .context(|| format!("discard history before revision {oldest}"))?;
    set_meta(conn, "compacted", oldest)
}
