//! `SqliteStore` against the conformance suite, plus what only a file-backed store can show:
//! persistence, crash safety, schema versioning, single ownership, bounded history, read speed.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vessel_store::{conformance, Compare, Op, SqliteOptions, SqliteStore, Store, StoreError, Txn};

macro_rules! sqlite_conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
            conformance::$name(store).await;
        }
    )*};
}

vessel_store::for_each_conformance_test!(sqlite_conformance);

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("store.db")
}

#[tokio::test]
async fn data_and_history_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let (first, second) = {
        let store = SqliteStore::open(&path).unwrap();
        let first = store
            .put("vms/web1/spec", b"{\"cpus\":2}".to_vec())
            .await
            .unwrap();
        let second = store
            .put("vms/web1/spec", b"{\"cpus\":4}".to_vec())
            .await
            .unwrap();
        (first, second)
    };

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.revision().await.unwrap(), second);
    let kv = store.get("vms/web1/spec").await.unwrap().unwrap();
    assert_eq!(kv.value, b"{\"cpus\":4}");
    assert_eq!((kv.create_revision, kv.version), (first, 2));
    // History persists too, so a reconciler can resume its watch where it stopped.
    let mut watch = store.watch("vms/", first).await.unwrap();
    assert_eq!(watch.next().await.unwrap().revision(), first);
    assert_eq!(watch.next().await.unwrap().revision(), second);
    let third = store.put("vms/web2/spec", Vec::new()).await.unwrap();
    assert_eq!(third, second + 1);
    assert_eq!(watch.next().await.unwrap().revision(), third);
}

/// The child half of `committed_txns_survive_sigkill_of_the_writer`: when started with the env var
/// set, it writes numbered transactions forever and prints each committed revision.
#[test]
fn sigkill_writer_child() {
    let Ok(path) = std::env::var("VESSEL_STORE_SIGKILL_DB") else {
        return; // An ordinary test run: nothing to do.
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(Path::new(&path)).unwrap();
        let mut out = std::io::stdout().lock();
        for n in 0u64.. {
            let key = format!("seq/{n:08}");
            let txn = Txn::new()
                .when(Compare::Missing(key.clone()))
                .then(Op::Put(key, n.to_string().into_bytes()))
                .then(Op::Put("last".into(), n.to_string().into_bytes()));
            let result = store.txn(txn).await.unwrap();
            // Printed only after txn() returned, i.e. after the commit.
            writeln!(out, "committed {n} {}", result.revision).unwrap();
            out.flush().unwrap();
        }
    });
}

#[test]
fn committed_txns_survive_sigkill_of_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VESSEL_STORE_SIGKILL_DB", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut committed = Vec::new();
    let parse = |line: &str| -> Option<(u64, i64)> {
        let mut words = line.strip_prefix("committed ")?.split(' ');
        Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
    };
    // Kill it mid-stream, while it is busy writing.
    while committed.len() < 300 {
        let line = lines.next().expect("child ended early").unwrap();
        committed.extend(parse(&line));
    }
    child.kill().unwrap(); // SIGKILL on Unix: no destructors, no final flushes.
    child.wait().unwrap();
    // Lines already in the pipe were printed after their commits: they count too.
    committed.extend(lines.map_while(Result::ok).filter_map(|line| parse(&line)));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(&path).unwrap();
        let current = store.revision().await.unwrap();
        for &(n, revision) in &committed {
            let kv = store
                .get(&format!("seq/{n:08}"))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("committed txn {n} (revision {revision}) was lost"));
            assert_eq!(kv.mod_revision, revision);
            assert_eq!(kv.value, n.to_string().into_bytes());
        }
        let &(last_n, last_revision) = committed.last().unwrap();
        assert!(current >= last_revision);
        let (kvs, _) = store.list("seq/").await.unwrap();
        // At most one more txn (committed but not yet printed) than was reported.
        assert!(kvs.len() as u64 == last_n + 1 || kvs.len() as u64 == last_n + 2);
        // The reopened store is fully usable.
        store.put("after", b"crash".to_vec()).await.unwrap();
    });
}

#[test]
fn database_from_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    drop(SqliteStore::open(&path).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
    }
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 999, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("999"), "{message}");
    assert!(message.contains("newer"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[test]
fn second_open_of_the_same_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(50),
        ..SqliteOptions::default()
    };
    let first = SqliteStore::open_with(&path, options.clone()).unwrap();
    let err = SqliteStore::open_with(&path, options.clone()).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    // Once the owner is gone, the file opens again.
    drop(first);
    SqliteStore::open_with(&path, options).unwrap();
}

#[tokio::test]
async fn history_is_compacted_automatically() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        history_revisions: 50,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(&db_path(&dir), options).unwrap();
    let first = store.put("k", b"0".to_vec()).await.unwrap();
    for i in 1..200 {
        store.put("k", i.to_string().into_bytes()).await.unwrap();
    }
    let current = store.revision().await.unwrap();
    match store.watch("", first).await {
        Err(StoreError::Compacted { oldest, .. }) => {
            // Keeps at least the configured window, and at most a tenth more.
            let kept = current - oldest + 1;
            assert!(
                (50..=55).contains(&kept),
                "oldest {oldest}, current {current}"
            );
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    let mut watch = store.watch("", current - 49).await.unwrap();
    for revision in current - 49..=current {
        assert_eq!(watch.next().await.unwrap().revision(), revision);
    }
}

#[tokio::test]
async fn watch_ends_with_closed_when_the_store_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&db_path(&dir)).unwrap();
    let mut watch = store.watch("", 0).await.unwrap();
    drop(store);
    let result = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
    assert!(matches!(result, Ok(Err(StoreError::Closed))), "{result:?}");
}

#[tokio::test]
async fn store_is_usable_as_a_trait_object() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db_path(&dir)).unwrap());
    assert!(store.create("a", b"1".to_vec()).await.unwrap());
    assert_eq!(store.list("").await.unwrap().0.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_runs_the_suite_on_fresh_stores() {
    let dir = tempfile::tempdir().unwrap();
    let counter = AtomicUsize::new(0);
    conformance::run_all(|| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        SqliteStore::open(&dir.path().join(format!("{n}.db"))).unwrap()
    })
    .await;
    assert!(counter.load(Ordering::Relaxed) > 10);
}

#[tokio::test]
async fn listing_1000_keys_returns_exactly_the_prefix_in_order() {
    // The speed of this listing is measured in bench/ (GET /v1/vms with 1,000 VMs), not here.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&db_path(&dir)).unwrap();
    // Ten transactions of 100 keys, plus neighbours that the scan must not touch.
    for chunk in 0..10 {
        let mut txn = Txn::new();
        for i in 0..100 {
            let key = format!("vms/{:04}/spec", chunk * 100 + i);
            txn = txn.then(Op::Put(key, vec![b'x'; 1024]));
            txn = txn.then(Op::Put(format!("other/{chunk}/{i}"), vec![b'y'; 1024]));
        }
        store.txn(txn).await.unwrap();
    }
    let (kvs, revision) = store.list("vms/").await.unwrap();
    assert_eq!(kvs.len(), 1000);
    assert_eq!(revision, 10);
    assert!(kvs.windows(2).all(|w| w[0].key < w[1].key), "sorted by key");
    assert!(kvs
        .iter()
        .all(|kv| kv.key.starts_with("vms/") && kv.value.len() == 1024));
}

/// Leases are in the file: after a reopen (a daemon restart) a lease and its keys are still
/// there with a full TTL again (the store cannot know how long it was closed, and ending a
/// host's lease because the daemon restarted would be wrong), a lease id is never handed out
/// twice, and the lease still expires if nobody keeps it alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_reopen_and_expire_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let lease = {
        let store = SqliteStore::open(&path).unwrap();
        let lease = store.lease_grant(2).await.unwrap();
        let txn = Txn::new().then(Op::PutWithLease("hosts/a".into(), b"up".to_vec(), lease));
        store.txn(txn).await.unwrap();
        lease
    };
    let store = SqliteStore::open(&path).unwrap();
    let kv = store
        .get("hosts/a")
        .await
        .unwrap()
        .expect("the leased key survives a reopen");
    assert_eq!(kv.lease, lease);
    assert_eq!(store.lease_time_to_live(lease).await.unwrap(), Some(2));
    let other = store.lease_grant(2).await.unwrap();
    assert_ne!(other, lease, "lease ids are not reused after a reopen");
    store.lease_revoke(other).await.unwrap();

    let mut watch = store.watch("hosts/", 0).await.unwrap();
    let gone = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the lease expires within its TTL")
        .unwrap();
    assert_eq!(gone.kv.key, "hosts/a");
    assert_eq!(gone.kind, vessel_store::EventKind::Delete);
    assert_eq!(store.lease_time_to_live(lease).await.unwrap(), None);
}
