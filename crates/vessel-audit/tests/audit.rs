//! The audit log against a real SqliteStore file: appends, group commit, durability, and every kind
//! of tampering done directly to the stored data.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use tempfile::TempDir;
use vessel_audit::{
    checkpoint_key, record_key, verify, verify_store, AuditEntry, AuditError, AuditKey, AuditLog,
    AuditOptions, AuditRecord, Checkpoint, Header, Issue, ListFilter, VerifyReport,
    CHECKPOINTS_PREFIX, HEADER_KEY, HEAD_KEY, RECORDS_PREFIX,
};
use vessel_store::{SqliteStore, Store};

const IDENTITIES: [&str; 3] = ["alice", "bob", "carol"];
const ACTIONS: [&str; 4] = ["vm.start", "vm.stop", "pool.create", "vm.delete"];

fn entry(i: u64) -> AuditEntry {
    AuditEntry {
        at_ms: 1_700_000_000_000 + i * 1000,
        identity: IDENTITIES[(i % 3) as usize].into(),
        source: "unix:uid=1000".into(),
        action: ACTIONS[(i % 4) as usize].into(),
        target: format!("vm/web{i}"),
        result: if i % 5 == 0 {
            "denied: missing permission vm.start".into()
        } else {
            "ok".into()
        },
    }
}

struct Fixture {
    _dir: TempDir,
    db: PathBuf,
    store: SqliteStore,
    public: VerifyingKey,
}

impl Fixture {
    async fn report(&self) -> VerifyReport {
        verify_store(&self.store, &self.public).await.unwrap()
    }

    async fn record(&self, seq: u64) -> AuditRecord {
        let kv = self.store.get(&record_key(seq)).await.unwrap().unwrap();
        serde_json::from_slice(&kv.value).unwrap()
    }

    async fn put_json<T: serde::Serialize>(&self, key: &str, value: &T) {
        self.store
            .put(key, serde_json::to_vec(value).unwrap())
            .await
            .unwrap();
    }
}

fn options(checkpoint_every: u64) -> AuditOptions {
    AuditOptions {
        checkpoint_every,
        ..AuditOptions::default()
    }
}

/// A log of `n` records with a checkpoint every `every`, written and closed.
async fn written_log(n: u64, every: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("vessel.db");
    let store = SqliteStore::open(&db).unwrap();
    let key = AuditKey::generate().unwrap();
    let public = key.public_key();
    let log = AuditLog::open(Arc::new(store.clone()), key, options(every))
        .await
        .unwrap();
    for i in 1..=n {
        assert_eq!(log.append(entry(i)).await.unwrap(), i);
    }
    log.shutdown().await;
    Fixture {
        _dir: dir,
        db,
        store,
        public,
    }
}

#[tokio::test]
async fn intact_log_verifies_clean_with_its_checkpoints() {
    let f = written_log(25, 10).await;
    let report = f.report().await;
    assert_eq!(report.issues, vec![]);
    assert_eq!(report.records, 25);
    assert_eq!(report.last_seq, 25);
    assert_eq!(report.valid_checkpoints, 2);
    assert_eq!(report.last_verified_checkpoint, 20);
    assert!(report.to_string().contains("OK"));
}

#[tokio::test]
async fn field_edited_in_the_sqlite_file_is_reported_as_edited() {
    let f = written_log(25, 10).await;
    let mut record = f.record(5).await;
    record.identity = "mallory".into();
    let value = serde_json::to_vec(&record).unwrap();
    let Fixture {
        _dir: dir,
        db,
        store,
        public,
    } = f;
    // Close the store (its last clone joins its thread and releases the lock), then edit the file
    // as an attacker with write access to the data dir would.
    drop(store);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let changed = conn
        .execute(
            "UPDATE kv SET value = ?1 WHERE key = ?2",
            rusqlite::params![value, record_key(5)],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    let f = Fixture {
        store: SqliteStore::open(&db).unwrap(),
        _dir: dir,
        db,
        public,
    };
    assert_eq!(f.report().await.issues, vec![Issue::Edited { seq: 5 }]);
}

#[tokio::test]
async fn deleted_record_is_reported_with_its_place() {
    let f = written_log(25, 10).await;
    assert!(f.store.delete(&record_key(7)).await.unwrap());
    assert_eq!(
        f.report().await.issues,
        vec![Issue::Deleted {
            after_seq: 6,
            missing: 7..8
        }]
    );
}

#[tokio::test]
async fn forged_record_inserted_between_3_and_4_is_reported_as_inserted() {
    let f = written_log(25, 10).await;
    // Shift records 4..=25 one key up, unchanged, and put a well-formed forgery at key 4: it links
    // to record 3 and carries a correct hash of its own content.
    for seq in (4..=25).rev() {
        let record = f.record(seq).await;
        f.put_json(&record_key(seq + 1), &record).await;
    }
    let three = f.record(3).await;
    let forged = AuditRecord::chain(
        4,
        AuditEntry {
            identity: "mallory".into(),
            ..entry(4)
        },
        three.hash,
    );
    f.put_json(&record_key(4), &forged).await;
    assert_eq!(f.report().await.issues, vec![Issue::Inserted { seq: 4 }]);
}

#[tokio::test]
async fn forged_record_that_links_nowhere_is_reported_as_inserted() {
    let f = written_log(25, 10).await;
    // Replace record 12 by a self-consistent record with a made-up predecessor hash.
    let forged = AuditRecord::chain(12, entry(99), [7u8; 32]);
    f.put_json(&record_key(12), &forged).await;
    let issues = f.report().await.issues;
    assert!(issues.contains(&Issue::Inserted { seq: 12 }), "{issues:?}");
}

#[tokio::test]
async fn swapped_records_are_reported_as_reordered() {
    let f = written_log(25, 10).await;
    let (ten, eleven) = (f.record(10).await, f.record(11).await);
    f.put_json(&record_key(10), &eleven).await;
    f.put_json(&record_key(11), &ten).await;
    assert_eq!(
        f.report().await.issues,
        vec![Issue::Reordered {
            seq_a: 10,
            seq_b: 11
        }]
    );
}

#[tokio::test]
async fn record_moved_out_of_order_is_reported_as_moved() {
    let f = written_log(25, 10).await;
    let (five, six, seven) = (f.record(5).await, f.record(6).await, f.record(7).await);
    f.put_json(&record_key(5), &seven).await;
    f.put_json(&record_key(6), &five).await;
    f.put_json(&record_key(7), &six).await;
    assert_eq!(f.report().await.issues, vec![Issue::Moved { seq: 7 }]);
}

#[tokio::test]
async fn edit_with_recomputed_hash_is_located_at_the_edited_record() {
    let f = written_log(25, 10).await;
    let mut five = f.record(5).await;
    five.result = "ok".into();
    five.identity = "mallory".into();
    five.hash = vessel_audit::record_hash(&five);
    f.put_json(&record_key(5), &five).await;
    assert_eq!(f.report().await.issues, vec![Issue::Edited { seq: 5 }]);
}

#[tokio::test]
async fn tail_rewritten_consistently_after_a_checkpoint_fails_the_next_checkpoint() {
    let f = written_log(25, 10).await;
    // Rewrite 11..=25 with recomputed hashes, linked from the untouched record 10, and the head:
    // the chain alone is then perfect.
    let mut prev = f.record(10).await.hash;
    for seq in 11..=25 {
        let original = f.record(seq).await;
        let rewritten = AuditRecord::chain(
            seq,
            AuditEntry {
                at_ms: original.at_ms,
                identity: original.identity,
                source: original.source,
                action: original.action,
                target: original.target,
                result: "ok".into(),
            },
            prev,
        );
        prev = rewritten.hash;
        f.put_json(&record_key(seq), &rewritten).await;
    }
    f.put_json(
        HEAD_KEY,
        &serde_json::json!({ "seq": 25, "hash": hex(&prev) }),
    )
    .await;
    let report = f.report().await;
    assert_eq!(
        report.issues,
        vec![Issue::CheckpointMismatch {
            seq: 20,
            rewritten_after: 10
        }]
    );
    assert_eq!(report.last_verified_checkpoint, 10);
}

#[tokio::test]
async fn flipped_signature_byte_is_reported_as_bad_signature() {
    let f = written_log(25, 10).await;
    let kv = f.store.get(&checkpoint_key(10)).await.unwrap().unwrap();
    let mut checkpoint: Checkpoint = serde_json::from_slice(&kv.value).unwrap();
    checkpoint.signature[17] ^= 0x01;
    f.put_json(&checkpoint_key(10), &checkpoint).await;
    assert_eq!(
        f.report().await.issues,
        vec![Issue::BadCheckpointSignature { seq: 10 }]
    );
}

#[tokio::test]
async fn deleted_checkpoint_is_reported_as_missing() {
    let f = written_log(25, 10).await;
    f.store.delete(&checkpoint_key(10)).await.unwrap();
    assert_eq!(
        f.report().await.issues,
        vec![Issue::MissingCheckpoint { seq: 10 }]
    );
}

#[tokio::test]
async fn edited_header_is_reported() {
    let f = written_log(5, 10).await;
    let kv = f.store.get(HEADER_KEY).await.unwrap().unwrap();
    let mut header: Header = serde_json::from_slice(&kv.value).unwrap();
    // Raising the interval would hide deleted checkpoints if the header were not signed.
    header.checkpoint_every = 1_000_000;
    f.put_json(HEADER_KEY, &header).await;
    assert_eq!(f.report().await.issues, vec![Issue::BadHeaderSignature]);
}

#[tokio::test]
async fn deleting_the_newest_records_is_caught_only_by_a_head_kept_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("vessel.db")).unwrap();
    let key = AuditKey::generate().unwrap();
    let public = key.public_key();
    let log = AuditLog::open(Arc::new(store.clone()), key, options(10))
        .await
        .unwrap();
    for i in 1..=25 {
        log.append(entry(i)).await.unwrap();
    }
    // What the daemon would export (log it remotely, print it): a signed checkpoint of the head.
    let exported = log.checkpoint().await.unwrap().unwrap();
    assert_eq!(exported.seq, 25);
    log.shutdown().await;

    for seq in 21..=25 {
        store.delete(&record_key(seq)).await.unwrap();
    }
    store.delete(&checkpoint_key(25)).await.unwrap();
    let report = verify_store(&store, &public).await.unwrap();
    // The head key still says 25: a careless attacker is caught by it.
    assert_eq!(
        report.issues,
        vec![Issue::HeadAhead {
            head_seq: 25,
            last_seq: 20
        }]
    );

    // A careful one rewrites the head too: the data alone is then a valid shorter log.
    let twenty = {
        let kv = store.get(&record_key(20)).await.unwrap().unwrap();
        serde_json::from_slice::<AuditRecord>(&kv.value).unwrap()
    };
    store
        .put(
            HEAD_KEY,
            serde_json::to_vec(&serde_json::json!({ "seq": 20, "hash": hex(&twenty.hash) }))
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(verify_store(&store, &public).await.unwrap().is_clean());

    // With the exported checkpoint, the truncation shows.
    let header: Header =
        serde_json::from_slice(&store.get(HEADER_KEY).await.unwrap().unwrap().value).unwrap();
    let records = list_values::<AuditRecord>(&store, RECORDS_PREFIX).await;
    let mut checkpoints = list_values::<Checkpoint>(&store, CHECKPOINTS_PREFIX).await;
    checkpoints.push(exported);
    let report = verify(&header, records, checkpoints, &public);
    assert_eq!(
        report.issues,
        vec![Issue::Truncated {
            last_seq: 20,
            checkpoint_seq: 25
        }]
    );
}

#[tokio::test]
async fn checkpoints_by_another_key_do_not_verify() {
    let f = written_log(25, 10).await;
    let other = AuditKey::generate().unwrap().public_key();
    let issues = verify_store(&f.store, &other).await.unwrap().issues;
    assert_eq!(
        issues,
        vec![
            Issue::BadHeaderSignature,
            Issue::BadCheckpointSignature { seq: 10 },
            Issue::BadCheckpointSignature { seq: 20 },
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_unique_contiguous_seqs_and_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("vessel.db")).unwrap();
    let key = AuditKey::generate().unwrap();
    let public = key.public_key();
    let log = Arc::new(
        AuditLog::open(Arc::new(store.clone()), key, options(100))
            .await
            .unwrap(),
    );
    let revision_before = store.revision().await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50 {
                seqs.push(log.append(entry(t * 1000 + i)).await.unwrap());
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=3200).collect::<Vec<u64>>());
    // One store revision per transaction: far fewer transactions than appends means the appends
    // shared commits.
    let transactions = store.revision().await.unwrap() - revision_before;
    assert!(transactions < 3200 / 4, "{transactions} transactions");
    let report = verify_store(&store, &public).await.unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.valid_checkpoints, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_one_store_do_not_interleave_their_chains() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("audit.key");
    let store = SqliteStore::open(&dir.path().join("vessel.db")).unwrap();
    let a = Arc::new(
        AuditLog::open(
            Arc::new(store.clone()),
            AuditKey::load_or_create(&key_path).unwrap(),
            options(50),
        )
        .await
        .unwrap(),
    );
    let b = Arc::new(
        AuditLog::open(
            Arc::new(store.clone()),
            AuditKey::load_or_create(&key_path).unwrap(),
            options(50),
        )
        .await
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let log = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                seqs.push(log.append(entry(t * 100 + i)).await.unwrap());
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<u64>>());
    let public = AuditKey::load(&key_path).unwrap().public_key();
    let report = verify_store(&store, &public).await.unwrap();
    assert!(report.is_clean(), "{report}");
}

#[tokio::test]
async fn acknowledged_records_survive_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("vessel.db");
    let key_path = dir.path().join("audit.key");
    {
        let store = SqliteStore::open(&db).unwrap();
        let log = AuditLog::open(
            Arc::new(store.clone()),
            AuditKey::load_or_create(&key_path).unwrap(),
            options(1000),
        )
        .await
        .unwrap();
        for i in 1..=100 {
            log.append(entry(i)).await.unwrap();
        }
        // No shutdown: an acknowledged append is committed, whatever happens to the writer next.
        drop(log);
        drop(store);
    }
    // The store thread may still hold the file until the writer task drops its clone.
    let store = reopen(&db).await;
    let key = AuditKey::load(&key_path).unwrap();
    let public = key.public_key();
    let report = verify_store(&store, &public).await.unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.last_seq, 100);
    let log = AuditLog::open(Arc::new(store.clone()), key, options(1000))
        .await
        .unwrap();
    assert_eq!(log.append(entry(101)).await.unwrap(), 101);
    log.shutdown().await;
    assert!(verify_store(&store, &public).await.unwrap().is_clean());
}

async fn reopen(db: &std::path::Path) -> SqliteStore {
    for _ in 0..100 {
        match SqliteStore::open(db) {
            Ok(store) => return store,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    SqliteStore::open(db).unwrap()
}

#[tokio::test]
async fn a_log_refuses_to_open_with_another_key() {
    let f = written_log(3, 10).await;
    let err = AuditLog::open(
        Arc::new(f.store.clone()),
        AuditKey::generate().unwrap(),
        options(10),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, AuditError::WrongKey { .. }), "{err}");
}

#[tokio::test]
async fn list_filters_by_time_identity_action_and_limit() {
    let f = written_log(40, 1000).await;
    let all = vessel_audit::list(&f.store, &ListFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 40);
    let filter = ListFilter {
        since_ms: Some(entry(11).at_ms),
        identity: Some("alice".into()),
        action: Some("vm.".into()),
        limit: Some(3),
    };
    let got = vessel_audit::list(&f.store, &filter).await.unwrap();
    let matching: Vec<u64> = (11..=40).filter(|i| i % 3 == 0 && i % 4 != 2).collect();
    let expected = matching[matching.len() - 3..].to_vec();
    assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), expected);
    let exact = ListFilter {
        action: Some("pool.create".into()),
        ..ListFilter::default()
    };
    let got = vessel_audit::list(&f.store, &exact).await.unwrap();
    assert!(got.iter().all(|r| r.action == "pool.create"));
    assert_eq!(got.len(), 10);
}

#[test]
fn key_file_is_created_private_and_reloads_to_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/audit.key");
    let key = AuditKey::load_or_create(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = AuditKey::load_or_create(&path).unwrap();
    assert_eq!(key.public_key_hex(), again.public_key_hex());
    assert_eq!(
        vessel_audit::parse_public_key(&key.public_key_hex()).unwrap(),
        key.public_key()
    );
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("audit.key")]);
}

#[test]
fn group_or_world_readable_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.key");
    AuditKey::load_or_create(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = AuditKey::load(&path).unwrap_err();
    assert!(
        matches!(err, AuditError::KeyPermissions { mode: 0o644, .. }),
        "{err}"
    );
    // load_or_create must not replace it either: a readable key may be compromised, not missing.
    assert!(AuditKey::load_or_create(&path).is_err());
}

#[test]
fn truncated_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.key");
    AuditKey::load_or_create(&path).unwrap();
    let text = std::fs::read(&path).unwrap();
    std::fs::write(&path, &text[..40]).unwrap();
    assert!(matches!(
        AuditKey::load(&path).unwrap_err(),
        AuditError::Key { .. }
    ));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn list_values<T: serde::de::DeserializeOwned>(store: &SqliteStore, prefix: &str) -> Vec<T> {
    let (kvs, _) = store.list(prefix).await.unwrap();
    kvs.iter()
        .map(|kv| serde_json::from_slice(&kv.value).unwrap())
        .collect()
}

/// Retention: pruning by count and by age keeps a log that verifies from its retained part, and
/// tampering with what is retained (or with the pruning statement) is still found.
#[tokio::test]
async fn pruned_log_verifies_from_its_retained_part_and_tampering_is_still_found() {
    use vessel_audit::{Pruned, Retention, PRUNED_KEY};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("vessel.db")).unwrap();
    let key = AuditKey::generate().unwrap();
    let public = key.public_key();
    let log = AuditLog::open(
        Arc::new(store.clone()),
        key,
        AuditOptions {
            checkpoint_every: 10,
            max_batch: 16,
            ..AuditOptions::default()
        },
    )
    .await
    .unwrap();
    // 1..=60 are old (entry() stamps 2023); 61..=100 are stamped now.
    for i in 1..=60 {
        log.append(entry(i)).await.unwrap();
    }
    for i in 61..=100 {
        log.append(AuditEntry::now(
            "alice",
            "unix",
            "vm.start",
            format!("vm/{i}"),
            "ok",
        ))
        .await
        .unwrap();
    }
    assert_eq!(log.prune(Retention::default()).await.unwrap(), 0);
    // Keep the newest 70: 1..=30 go, in two transactions of at most 16.
    let pruned = log
        .prune(Retention {
            keep_records: Some(70),
            keep_days: None,
        })
        .await
        .unwrap();
    assert_eq!(pruned, 30);
    let f = Fixture {
        _dir: dir,
        db: PathBuf::new(),
        store,
        public,
    };
    let report = f.report().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        (report.records, report.last_seq, report.pruned_through),
        (70, 100, 30)
    );
    assert!(f.store.get(&record_key(30)).await.unwrap().is_none());
    assert!(f.store.get(&checkpoint_key(30)).await.unwrap().is_none());
    assert!(f.store.get(&checkpoint_key(40)).await.unwrap().is_some());
    // By age: everything stamped in 2023 (up to 60) goes, what was stamped now stays.
    let pruned = log
        .prune(Retention {
            keep_days: Some(30),
            keep_records: None,
        })
        .await
        .unwrap();
    assert_eq!(pruned, 30);
    let report = f.report().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.records, report.pruned_through), (40, 60));
    log.checkpoint().await.unwrap();

    // A retained record edited: found.
    let original = f.record(75).await;
    let mut edited = original.clone();
    edited.identity = "mallory".into();
    f.put_json(&record_key(75), &edited).await;
    assert_eq!(f.report().await.issues, vec![Issue::Edited { seq: 75 }]);
    f.put_json(&record_key(75), &original).await;
    assert!(f.report().await.is_clean());
    // The oldest retained records deleted as if pruned: a gap after the signed start.
    let first = f.record(61).await;
    f.store.delete(&record_key(61)).await.unwrap();
    assert_eq!(
        f.report().await.issues,
        vec![Issue::Deleted {
            after_seq: 60,
            missing: 61..62
        }]
    );
    f.put_json(&record_key(61), &first).await;
    // The statement moved on (to hide that 61 was deleted): its signature fails.
    let kv = f.store.get(PRUNED_KEY).await.unwrap().unwrap();
    let mut statement: Pruned = serde_json::from_slice(&kv.value).unwrap();
    let genuine = statement.clone();
    statement.seq = 61;
    statement.hash = first.hash;
    f.put_json(PRUNED_KEY, &statement).await;
    let issues = f.report().await.issues;
    assert!(
        issues.contains(&Issue::BadPrunedSignature { seq: 61 }),
        "{issues:?}"
    );
    f.put_json(PRUNED_KEY, &genuine).await;
    // A forged record below the start: inserted.
    let mut forged = f.record(75).await;
    forged.seq = 5;
    f.put_json(&record_key(5), &forged).await;
    assert_eq!(f.report().await.issues, vec![Issue::Inserted { seq: 5 }]);
    let _ = f.db;
}
