//! Opening the database file: connection settings, the single-owner lock and schema migrations.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, TransactionBehavior};

use super::Context;
use crate::StoreError;

/// Schema migrations, applied in order. Entry `i` takes the schema from version `i` to `i + 1`
/// (`PRAGMA user_version` holds the version). Never edit an entry that has shipped: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "
    -- Current state: one row per live key. A rowid table (not WITHOUT ROWID) because values run
    -- up to 1 MiB, which a WITHOUT ROWID b-tree would push into overflow pages row by row.
    CREATE TABLE kv (
        key        TEXT    NOT NULL PRIMARY KEY,
        value      BLOB    NOT NULL,
        create_rev INTEGER NOT NULL,
        mod_rev    INTEGER NOT NULL,
        version    INTEGER NOT NULL
    );

    -- Store-wide counters: 'revision' is the revision of the last write transaction, 'compacted'
    -- the oldest revision whose history is still kept (watches may start there or later).
    CREATE TABLE meta (
        name  TEXT    NOT NULL PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO meta (name, value) VALUES ('revision', 0), ('compacted', 1);

    -- Every change, for watches that start in the past. kind: 0 = put, 1 = delete.
    -- Bounded by compaction, so it holds the newest revisions only.
    CREATE TABLE history (
        rev        INTEGER NOT NULL,
        key        TEXT    NOT NULL,
        kind       INTEGER NOT NULL CHECK (kind IN (0, 1)),
        value      BLOB    NOT NULL,
        create_rev INTEGER NOT NULL,
        version    INTEGER NOT NULL
    );
    -- Unique: a transaction changes each key at most once (Txn::validate refuses the rest).
    CREATE UNIQUE INDEX history_by_rev ON history (rev, key);
    ",
    // 2: leases. A key remembers the lease it was put with (0: none); a lease is its id and time
    // to live. Deadlines are not stored: they live in the owning process's monotonic clock, and a
    // reopened store gives every lease its full time to live again (as etcd does on a restart or
    // a leader change), so a restart never expires a holder that had no chance to renew.
    "
    ALTER TABLE kv ADD COLUMN lease INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE history ADD COLUMN lease INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX kv_by_lease ON kv (lease) WHERE lease != 0;
    CREATE TABLE leases (
        id  INTEGER NOT NULL PRIMARY KEY,
        ttl INTEGER NOT NULL
    );
    -- Lease ids are never reused, so a holder of an expired lease cannot renew a newer one.
    INSERT INTO meta (name, value) VALUES ('lease_seq', 0);
    ",
];

/// The schema version this build writes and understands.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Opens (creating if needed) the database at `path`, takes the single-owner lock, and brings the
/// schema up to [`SCHEMA_VERSION`].
pub(super) fn open(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let shown = path.display().to_string();
    let mut conn = Connection::open(path).context(|| format!("open database {shown}"))?;
    configure(&conn, busy_timeout).map_err(|err| lock_error(err, &shown))?;
    migrate(&mut conn, &shown)?;
    Ok(conn)
}

fn configure(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy_timeout)?;
    // One process owns the database: watches are fed by an in-process broadcast of committed
    // changes, so a write by anyone else would never reach them. EXCLUSIVE locking makes a second
    // opener fail instead of silently breaking that; it also keeps the WAL index in heap memory
    // (no -shm file). It must be set before WAL mode is entered for the latter to hold.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    // WAL with synchronous=NORMAL: a commit is in the WAL file (the OS page cache) before it
    // returns, so a killed process loses nothing committed; only a power loss may lose the newest
    // commits, and never corrupts the file. Readers are not blocked by the writer either.
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode stayed {mode:?}; WAL is required"
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // The default page cache is 2 MiB, smaller than a listing of 1,000 1 KiB values plus its
    // index, so every list would go back to the OS for pages. 64 MiB is an upper bound, filled
    // only as pages are used.
    conn.pragma_update(None, "cache_size", -64 * 1024)?;
    // A write transaction takes the exclusive lock now rather than at the first real write, so a
    // second opener is refused at open time, not later in the middle of its work.
    conn.execute_batch("BEGIN IMMEDIATE; COMMIT;")?;
    Ok(())
}

fn lock_error(err: rusqlite::Error, path: &str) -> StoreError {
    let busy = matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    );
    if busy {
        StoreError::Backend(format!(
            "database {path} is in use by another process (is another Vessel daemon running on \
             it?): {err}"
        ))
    } else {
        StoreError::Backend(format!("configure database {path}: {err}"))
    }
}

fn migrate(conn: &mut Connection, path: &str) -> Result<(), StoreError> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .context(|| format!("read schema version of {path}"))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let target = index as i64 + 1;
        // One transaction per step, version bump included: a crash mid-migration leaves the
        // database at the previous version, and the step runs again on the next open.
        apply_migration(conn, sql, target)
            .context(|| format!("migrate {path} to schema version {target}"))?;
        tracing::info!(path, version = target, "store schema migrated");
    }
    Ok(())
}

fn apply_migration(conn: &mut Connection, sql: &str, target: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(sql)?;
    tx.pragma_update(None, "user_version", target)?;
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_database_gets_the_newest_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("s.db"), Duration::from_millis(100)).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn reopening_a_current_database_migrates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(open(&path, Duration::from_millis(100)).unwrap());
        // Migration 1 would fail with "table kv already exists" if it ran twice.
        drop(open(&path, Duration::from_millis(100)).unwrap());
    }
}
