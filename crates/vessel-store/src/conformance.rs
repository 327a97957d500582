//! The behaviour every [`Store`] implementation must show, written once.
//!
//! Each test is a `pub async fn name<S: Store>(store: S)` that takes a fresh, empty store and
//! panics on a violation. An implementation's test file runs all of them, one `#[test]` each,
//! through [`for_each_conformance_test!`](crate::for_each_conformance_test), so a test added here
//! runs against every implementation without touching their files:
//!
//! ```ignore
//! macro_rules! sqlite_conformance {
//!     ($($name:ident),* $(,)?) => {$(
//!         #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//!         async fn $name() {
//!             let dir = tempfile::tempdir().unwrap();
//!             let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
//!             vessel_store::conformance::$name(store).await;
//!         }
//!     )*};
//! }
//! vessel_store::for_each_conformance_test!(sqlite_conformance);
//! ```
//!
//! The tests assume nothing about absolute revision numbers (etcd starts at 1, SQLite at 0), only
//! about how they move. They need a multi-threaded tokio runtime (`tokio::spawn` for concurrent
//! writers).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    Compare, EventKind, KeyValue, Op, Store, StoreError, Txn, Watch, WatchEvent, MAX_KEY_BYTES,
    MAX_LEASE_TTL_SECS, MAX_VALUE_BYTES, MIN_LEASE_TTL_SECS,
};

/// Calls `$callback! { test_a, test_b, ... }` with the name of every conformance test.
#[macro_export]
macro_rules! for_each_conformance_test {
    ($callback:ident) => {
        $callback! {
            get_put_delete,
            revision_counts_write_transactions,
            recreated_key_starts_a_new_life,
            list_is_sorted_and_scoped_to_prefix,
            list_handles_non_ascii_prefixes,
            keys_with_nul_characters_work,
            create_only_writes_missing_keys,
            cas_on_mod_revision_takes_success_or_failure_branch,
            compare_exists_missing_and_value,
            txn_applies_all_ops_or_none,
            conflicting_ops_in_one_branch_are_rejected,
            oversized_keys_and_values_are_rejected,
            delete_prefix_removes_only_that_prefix,
            concurrent_cas_increments_lose_no_update,
            watch_from_zero_sees_only_future_events,
            watch_replays_history_then_goes_live,
            watch_is_scoped_to_prefix,
            watch_reports_every_change_of_a_transaction,
            watch_with_concurrent_writers_sees_every_revision_in_order,
            slow_watcher_loses_no_event,
            cancelled_watch_next_loses_no_event,
            watch_from_future_revision_waits_for_it,
            watch_before_compaction_is_refused,
            leased_keys_expire_and_watches_see_the_deletes,
            kept_alive_lease_outlives_its_ttl,
            revoking_a_lease_deletes_its_keys_in_one_revision,
            put_with_a_missing_lease_fails_and_writes_nothing,
            lease_ttl_out_of_bounds_is_refused,
        }
    };
}

/// Runs every conformance test, each on a fresh store from `make`.
pub async fn run_all<S: Store>(make: impl Fn() -> S) {
    macro_rules! run_each {
        ($($name:ident),* $(,)?) => {$(
            tracing::info!(test = stringify!($name), "conformance");
            $name(make()).await;
        )*};
    }
    for_each_conformance_test!(run_each);
}

/// Long enough for a loaded CI machine, short enough that a lost event fails rather than hangs.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long "no further event arrives" is watched for.
const QUIET: Duration = Duration::from_millis(200);

fn bytes(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

async fn next_event(watch: &mut Watch) -> WatchEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
        Ok(Ok(event)) => event,
        Ok(Err(err)) => panic!("watch failed: {err}"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

async fn assert_quiet(watch: &mut Watch) {
    if let Ok(result) = tokio::time::timeout(QUIET, watch.next()).await {
        panic!("expected no further watch event, got {result:?}");
    }
}

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

async fn get(store: &impl Store, key: &str) -> Option<KeyValue> {
    store.get(key).await.unwrap()
}

pub async fn get_put_delete<S: Store>(store: S) {
    assert_eq!(get(&store, "a").await, None);
    let start = store.revision().await.unwrap();

    let r1 = store.put("a", bytes("one")).await.unwrap();
    assert_eq!(r1, start + 1);
    let kv = get(&store, "a").await.unwrap();
    let expected = KeyValue {
        key: "a".into(),
        value: bytes("one"),
        create_revision: r1,
        mod_revision: r1,
        version: 1,
        lease: 0,
    };
    assert_eq!(kv, expected);

    let r2 = store.put("a", bytes("two")).await.unwrap();
    assert_eq!(r2, r1 + 1);
    let kv = get(&store, "a").await.unwrap();
    assert_eq!((kv.value, kv.create_revision), (bytes("two"), r1));
    assert_eq!((kv.mod_revision, kv.version), (r2, 2));

    // An empty value is a value, not a deletion.
    store.put("a", Vec::new()).await.unwrap();
    assert_eq!(get(&store, "a").await.unwrap().value, Vec::<u8>::new());

    assert!(store.delete("a").await.unwrap());
    assert_eq!(get(&store, "a").await, None);
    let after_delete = store.revision().await.unwrap();
    assert!(!store.delete("a").await.unwrap(), "second delete");
    assert_eq!(store.revision().await.unwrap(), after_delete);

    assert!(matches!(store.get("").await, Err(StoreError::EmptyKey)));
}

pub async fn revision_counts_write_transactions<S: Store>(store: S) {
    let start = store.revision().await.unwrap();
    let txn = Txn::new()
        .then(Op::Put("x".into(), bytes("1")))
        .then(Op::Put("y".into(), bytes("2")));
    let result = store.txn(txn).await.unwrap();
    assert!(result.succeeded);
    assert_eq!(result.revision, start + 1, "one revision per transaction");
    assert_eq!(get(&store, "x").await.unwrap().mod_revision, start + 1);
    assert_eq!(get(&store, "y").await.unwrap().mod_revision, start + 1);
    assert_eq!(store.revision().await.unwrap(), start + 1);

    // Transactions that change nothing leave the revision alone.
    let empty = store.txn(Txn::new()).await.unwrap();
    assert_eq!((empty.succeeded, empty.revision), (true, start + 1));
    let failed = Txn::new()
        .when(Compare::Missing("x".into()))
        .then(Op::Put("z".into(), bytes("3")));
    let failed = store.txn(failed).await.unwrap();
    assert_eq!((failed.succeeded, failed.revision), (false, start + 1));
    let delete_missing = Txn::new().then(Op::Delete("nope".into()));
    assert_eq!(store.txn(delete_missing).await.unwrap().revision, start + 1);
    assert_eq!(store.revision().await.unwrap(), start + 1);
    assert_eq!(get(&store, "z").await, None);

    assert_eq!(store.put("x", bytes("4")).await.unwrap(), start + 2);
}

pub async fn recreated_key_starts_a_new_life<S: Store>(store: S) {
    let first = store.put("k", bytes("1")).await.unwrap();
    store.put("k", bytes("2")).await.unwrap();
    assert!(store.delete("k").await.unwrap());
    let again = store.put("k", bytes("3")).await.unwrap();
    let kv = get(&store, "k").await.unwrap();
    assert!(again > first);
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (again, again, 1)
    );
}

pub async fn list_is_sorted_and_scoped_to_prefix<S: Store>(store: S) {
    for key in [
        "vms/ab",
        "vms/a/spec",
        "vmsx",
        "vms/b",
        "vms/a",
        "vm",
        "vms/a/disk",
    ] {
        store.put(key, bytes(key)).await.unwrap();
    }
    let current = store.revision().await.unwrap();

    let (kvs, revision) = store.list("vms/a/").await.unwrap();
    assert_eq!(keys(&kvs), ["vms/a/disk", "vms/a/spec"]);
    assert_eq!(revision, current);
    assert_eq!(kvs[0].value, bytes("vms/a/disk"));

    // A plain string prefix: "vms/a" matches "vms/ab" too; the trailing "/" is what scopes.
    let (kvs, _) = store.list("vms/a").await.unwrap();
    assert_eq!(keys(&kvs), ["vms/a", "vms/a/disk", "vms/a/spec", "vms/ab"]);

    let (kvs, _) = store.list("vms/").await.unwrap();
    assert_eq!(
        keys(&kvs),
        ["vms/a", "vms/a/disk", "vms/a/spec", "vms/ab", "vms/b"]
    );

    let (kvs, _) = store.list("").await.unwrap();
    let all = [
        "vm",
        "vms/a",
        "vms/a/disk",
        "vms/a/spec",
        "vms/ab",
        "vms/b",
        "vmsx",
    ];
    assert_eq!(keys(&kvs), all);

    let (kvs, revision) = store.list("hosts/").await.unwrap();
    assert!(kvs.is_empty());
    assert_eq!(revision, current);
}

pub async fn list_handles_non_ascii_prefixes<S: Store>(store: S) {
    let all = [
        "u/1",
        "ü/1",
        "ü/2",
        "üz",
        "\u{10FFFF}",
        "\u{10FFFF}/x",
        "\u{D7FF}a",
    ];
    for key in all {
        store.put(key, bytes(key)).await.unwrap();
    }
    let (kvs, _) = store.list("ü/").await.unwrap();
    assert_eq!(keys(&kvs), ["ü/1", "ü/2"]);
    let (kvs, _) = store.list("ü").await.unwrap();
    assert_eq!(keys(&kvs), ["ü/1", "ü/2", "üz"]);
    // The largest code point has no successor: the scan must still end correctly.
    let (kvs, _) = store.list("\u{10FFFF}").await.unwrap();
    assert_eq!(keys(&kvs), ["\u{10FFFF}", "\u{10FFFF}/x"]);
    let (kvs, _) = store.list("\u{D7FF}").await.unwrap();
    assert_eq!(keys(&kvs), ["\u{D7FF}a"]);
    // Sorted by UTF-8 bytes, which is code point order.
    let (kvs, _) = store.list("").await.unwrap();
    let mut sorted = all.to_vec();
    sorted.sort_unstable();
    assert_eq!(keys(&kvs), sorted);
}

pub async fn keys_with_nul_characters_work<S: Store>(store: S) {
    // Keys are any UTF-8, NUL included (etcd keys are arbitrary bytes); a backend must not
    // truncate them at the NUL as C string functions do.
    let from = store.revision().await.unwrap() + 1;
    for key in ["n\0/1", "n\0/2", "n/1", "n\0"] {
        store.put(key, bytes(key)).await.unwrap();
    }
    assert_eq!(get(&store, "n\0/1").await.unwrap().value, bytes("n\0/1"));
    let (kvs, _) = store.list("n\0/").await.unwrap();
    assert_eq!(keys(&kvs), ["n\0/1", "n\0/2"]);
    let mut watch = store.watch("n\0/", from).await.unwrap();
    assert_eq!(next_event(&mut watch).await.kv.key, "n\0/1");
    assert_eq!(next_event(&mut watch).await.kv.key, "n\0/2");
    assert_quiet(&mut watch).await;
}

pub async fn create_only_writes_missing_keys<S: Store>(store: S) {
    assert!(store.create("c", bytes("first")).await.unwrap());
    let before = store.revision().await.unwrap();
    assert!(!store.create("c", bytes("second")).await.unwrap());
    assert_eq!(get(&store, "c").await.unwrap().value, bytes("first"));
    assert_eq!(store.revision().await.unwrap(), before);
}

pub async fn cas_on_mod_revision_takes_success_or_failure_branch<S: Store>(store: S) {
    let r1 = store.put("k", bytes("v1")).await.unwrap();
    let cas = |expected: i64, value: &str| {
        Txn::new()
            .when(Compare::ModRevision("k".into(), expected))
            .then(Op::Put("k".into(), bytes(value)))
            .otherwise(Op::Put("conflicts/k".into(), bytes(value)))
    };

    let won = store.txn(cas(r1, "v2")).await.unwrap();
    assert!(won.succeeded);
    assert_eq!(won.revision, r1 + 1);
    assert_eq!(get(&store, "k").await.unwrap().value, bytes("v2"));
    assert_eq!(get(&store, "conflicts/k").await, None);

    // The same expectation is now stale: the failure branch runs, and it is a write too.
    let lost = store.txn(cas(r1, "v3")).await.unwrap();
    assert!(!lost.succeeded);
    assert_eq!(lost.revision, r1 + 2);
    assert_eq!(get(&store, "k").await.unwrap().value, bytes("v2"));
    assert_eq!(get(&store, "conflicts/k").await.unwrap().value, bytes("v3"));

    // mod_revision 0 means "does not exist".
    let absent = Txn::new()
        .when(Compare::ModRevision("new".into(), 0))
        .then(Op::Put("new".into(), bytes("n")));
    assert!(store.txn(absent.clone()).await.unwrap().succeeded);
    assert!(!store.txn(absent).await.unwrap().succeeded);
}

pub async fn compare_exists_missing_and_value<S: Store>(store: S) {
    store.put("here", bytes("yes")).await.unwrap();
    let check = |compare: Compare| Txn::new().when(compare);
    let holds = |compare| {
        let txn = check(compare);
        let store = &store;
        async move { store.txn(txn).await.unwrap().succeeded }
    };
    assert!(holds(Compare::Exists("here".into())).await);
    assert!(!holds(Compare::Exists("gone".into())).await);
    assert!(holds(Compare::Missing("gone".into())).await);
    assert!(!holds(Compare::Missing("here".into())).await);
    assert!(holds(Compare::Value("here".into(), bytes("yes"))).await);
    assert!(!holds(Compare::Value("here".into(), bytes("no"))).await);
    assert!(!holds(Compare::Value("gone".into(), Vec::new())).await);
    // Every compare must hold.
    let both = Txn::new()
        .when(Compare::Exists("here".into()))
        .when(Compare::Exists("gone".into()));
    assert!(!store.txn(both).await.unwrap().succeeded);
}

pub async fn txn_applies_all_ops_or_none<S: Store>(store: S) {
    store.put("acct/a", bytes("10")).await.unwrap();
    store.put("old/1", bytes("x")).await.unwrap();
    let before = store.revision().await.unwrap();

    // A failed compare applies none of the success ops.
    let blocked = Txn::new()
        .when(Compare::Exists("acct/a".into()))
        .when(Compare::Value("acct/a".into(), bytes("999")))
        .then(Op::Put("acct/a".into(), bytes("0")))
        .then(Op::Put("acct/b".into(), bytes("10")));
    assert!(!store.txn(blocked).await.unwrap().succeeded);
    assert_eq!(get(&store, "acct/a").await.unwrap().value, bytes("10"));
    assert_eq!(get(&store, "acct/b").await, None);

    // A refused op (too large) refuses the whole transaction, earlier ops included.
    let refused = Txn::new()
        .then(Op::Put("acct/c".into(), bytes("1")))
        .then(Op::Put("acct/d".into(), vec![0; MAX_VALUE_BYTES + 1]));
    assert!(store.txn(refused).await.is_err());
    assert_eq!(get(&store, "acct/c").await, None);
    assert_eq!(store.revision().await.unwrap(), before);

    // A mixed transaction applies every op at one revision.
    let moved = Txn::new()
        .when(Compare::Value("acct/a".into(), bytes("10")))
        .then(Op::Put("acct/a".into(), bytes("0")))
        .then(Op::Put("acct/b".into(), bytes("10")))
        .then(Op::DeletePrefix("old/".into()));
    let result = store.txn(moved).await.unwrap();
    assert!(result.succeeded);
    assert_eq!(result.revision, before + 1);
    assert_eq!(
        get(&store, "acct/a").await.unwrap().mod_revision,
        before + 1
    );
    assert_eq!(
        get(&store, "acct/b").await.unwrap().mod_revision,
        before + 1
    );
    assert_eq!(get(&store, "old/1").await, None);
}

pub async fn conflicting_ops_in_one_branch_are_rejected<S: Store>(store: S) {
    let before = store.revision().await.unwrap();
    let twice = Txn::new()
        .then(Op::Put("k".into(), bytes("1")))
        .then(Op::Put("k".into(), bytes("2")));
    let err = store.txn(twice).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidTxn(_)), "{err}");
    let put_and_delete = Txn::new()
        .then(Op::Put("vms/a/spec".into(), bytes("1")))
        .then(Op::DeletePrefix("vms/a/".into()));
    let err = store.txn(put_and_delete).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidTxn(_)), "{err}");
    // Even in the branch that would not run: a transaction is checked as a whole.
    let bad_failure = Txn::new()
        .then(Op::Put("ok".into(), bytes("1")))
        .otherwise(Op::Put("k".into(), bytes("1")))
        .otherwise(Op::Delete("k".into()));
    assert!(store.txn(bad_failure).await.is_err());
    assert_eq!(store.revision().await.unwrap(), before);
    assert_eq!(get(&store, "k").await, None);
}

pub async fn oversized_keys_and_values_are_rejected<S: Store>(store: S) {
    let longest = "k".repeat(MAX_KEY_BYTES);
    store.put(&longest, bytes("fits")).await.unwrap();
    assert_eq!(get(&store, &longest).await.unwrap().value, bytes("fits"));

    let too_long = "k".repeat(MAX_KEY_BYTES + 1);
    let err = store.put(&too_long, bytes("x")).await.unwrap_err();
    assert!(matches!(err, StoreError::KeyTooLarge { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&(MAX_KEY_BYTES + 1).to_string()),
        "{message}"
    );
    assert!(message.contains(&MAX_KEY_BYTES.to_string()), "{message}");
    assert!(store.get(&too_long).await.is_err());
    assert!(store.list(&too_long).await.is_err());

    let largest = vec![7u8; MAX_VALUE_BYTES];
    store.put("big", largest.clone()).await.unwrap();
    assert_eq!(get(&store, "big").await.unwrap().value, largest);

    let err = store
        .put("big", vec![0; MAX_VALUE_BYTES + 1])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ValueTooLarge { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("\"big\""), "names the key: {message}");
    assert!(
        message.contains(&(MAX_VALUE_BYTES + 1).to_string()),
        "{message}"
    );
    assert!(message.contains(&MAX_VALUE_BYTES.to_string()), "{message}");
    assert!(matches!(
        store.put("", bytes("x")).await,
        Err(StoreError::EmptyKey)
    ));
}

pub async fn delete_prefix_removes_only_that_prefix<S: Store>(store: S) {
    for key in ["vms/a/1", "vms/a/2", "vms/ab", "vms/a", "vms/b/1"] {
        store.put(key, bytes(key)).await.unwrap();
    }
    let before = store.revision().await.unwrap();
    let result = store
        .txn(Txn::new().then(Op::DeletePrefix("vms/a/".into())))
        .await
        .unwrap();
    assert_eq!(
        result.revision,
        before + 1,
        "one revision for the whole prefix"
    );
    let (kvs, _) = store.list("").await.unwrap();
    assert_eq!(keys(&kvs), ["vms/a", "vms/ab", "vms/b/1"]);

    let nothing = store
        .txn(Txn::new().then(Op::DeletePrefix("vms/zzz/".into())))
        .await
        .unwrap();
    assert_eq!(nothing.revision, before + 1, "deleting nothing is no write");

    store
        .txn(Txn::new().then(Op::DeletePrefix(String::new())))
        .await
        .unwrap();
    assert!(store.list("").await.unwrap().0.is_empty());
}

pub async fn concurrent_cas_increments_lose_no_update<S: Store>(store: S) {
    const TASKS: usize = 4;
    const INCREMENTS: usize = 25;
    let store = Arc::new(store);
    store.put("counter", bytes("0")).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS {
                // Read, compute, write if unchanged; retry on conflict. Lost updates would show as
                // a final count below TASKS * INCREMENTS.
                loop {
                    let kv = store.get("counter").await.unwrap().unwrap();
                    let n: usize = String::from_utf8(kv.value).unwrap().parse().unwrap();
                    let txn = Txn::new()
                        .when(Compare::ModRevision("counter".into(), kv.mod_revision))
                        .then(Op::Put("counter".into(), bytes(&(n + 1).to_string())));
                    if store.txn(txn).await.unwrap().succeeded {
                        break;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let kv = get(&*store, "counter").await.unwrap();
    assert_eq!(kv.value, bytes(&(TASKS * INCREMENTS).to_string()));
    assert_eq!(kv.version, (TASKS * INCREMENTS) as i64 + 1);
}

pub async fn watch_from_zero_sees_only_future_events<S: Store>(store: S) {
    store.put("w/old", bytes("old")).await.unwrap();
    let mut watch = store.watch("w/", 0).await.unwrap();
    let r = store.put("w/new", bytes("new")).await.unwrap();
    let event = next_event(&mut watch).await;
    assert_eq!(event.kind, EventKind::Put);
    assert_eq!(event.kv, get(&store, "w/new").await.unwrap());
    assert_eq!(event.revision(), r);

    let deleted_at = store.revision().await.unwrap() + 1;
    assert!(store.delete("w/old").await.unwrap());
    let event = next_event(&mut watch).await;
    assert_eq!(event.kind, EventKind::Delete);
    assert_eq!(event.kv.key, "w/old");
    assert_eq!(event.kv.mod_revision, deleted_at);
    assert!(event.kv.value.is_empty());
    assert_quiet(&mut watch).await;

    assert!(store.watch("w/", -1).await.is_err());
}

pub async fn watch_replays_history_then_goes_live<S: Store>(store: S) {
    let mut revisions = Vec::new();
    for i in 1..=5 {
        revisions.push(
            store
                .put(&format!("h/{i}"), bytes(&i.to_string()))
                .await
                .unwrap(),
        );
        store.put("other", bytes(&i.to_string())).await.unwrap();
    }
    store.put("h/1", bytes("again")).await.unwrap();
    assert!(store.delete("h/2").await.unwrap());

    let mut watch = store.watch("h/", revisions[1]).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let event = next_event(&mut watch).await;
        seen.push((event.kind, event.kv.key, event.kv.mod_revision));
    }
    let replay: Vec<_> = seen.iter().map(|(_, key, _)| key.as_str()).collect();
    assert_eq!(replay, ["h/2", "h/3", "h/4", "h/5", "h/1", "h/2"]);
    assert_eq!(seen[0].2, revisions[1]);
    assert_eq!(seen[5].0, EventKind::Delete);
    assert!(seen.windows(2).all(|w| w[0].2 < w[1].2), "{seen:?}");

    let live = store.put("h/6", bytes("6")).await.unwrap();
    let event = next_event(&mut watch).await;
    assert_eq!((event.kv.key.as_str(), event.revision()), ("h/6", live));
    assert_quiet(&mut watch).await;

    // Replay carries full key metadata, as it was at that revision.
    let mut watch = store.watch("h/1", revisions[0]).await.unwrap();
    let first = next_event(&mut watch).await;
    assert_eq!((first.kv.value, first.kv.version), (bytes("1"), 1));
    let second = next_event(&mut watch).await;
    assert_eq!((second.kv.value, second.kv.version), (bytes("again"), 2));
    assert_eq!(second.kv.create_revision, revisions[0]);
}

pub async fn watch_is_scoped_to_prefix<S: Store>(store: S) {
    let mut children = store.watch("vms/a/", 0).await.unwrap();
    let mut plain = store.watch("vms/a", 0).await.unwrap();
    let mut one = store.watch("vms/ab", 0).await.unwrap();
    for key in ["vms/ab", "vms/a", "vms/b/1", "vms/a/spec"] {
        store.put(key, bytes(key)).await.unwrap();
    }
    assert_eq!(next_event(&mut children).await.kv.key, "vms/a/spec");
    for expected in ["vms/ab", "vms/a", "vms/a/spec"] {
        assert_eq!(next_event(&mut plain).await.kv.key, expected);
    }
    assert_eq!(next_event(&mut one).await.kv.key, "vms/ab");
    assert_quiet(&mut children).await;
    assert_quiet(&mut plain).await;
    assert_quiet(&mut one).await;
}

pub async fn watch_reports_every_change_of_a_transaction<S: Store>(store: S) {
    store.put("t/0", bytes("0")).await.unwrap();
    store.put("t/old/1", bytes("1")).await.unwrap();
    store.put("t/old/2", bytes("2")).await.unwrap();
    let from = store.revision().await.unwrap() + 1;
    let mut live = store.watch("t/", 0).await.unwrap();
    let txn = Txn::new()
        .then(Op::Put("t/2".into(), bytes("b")))
        .then(Op::Put("t/1".into(), bytes("a")))
        .then(Op::Delete("t/0".into()))
        .then(Op::DeletePrefix("t/old/".into()));
    let revision = store.txn(txn).await.unwrap().revision;
    let mut replayed = store.watch("t/", from).await.unwrap();
    for watch in [&mut live, &mut replayed] {
        let mut events = Vec::new();
        for _ in 0..5 {
            events.push(next_event(watch).await);
        }
        assert!(events.iter().all(|e| e.revision() == revision));
        let mut changes: Vec<_> = events.iter().map(|e| (e.kv.key.as_str(), e.kind)).collect();
        // The order of events within one revision is not part of the contract.
        changes.sort_unstable_by_key(|(key, _)| *key);
        let expected = [
            ("t/0", EventKind::Delete),
            ("t/1", EventKind::Put),
            ("t/2", EventKind::Put),
            ("t/old/1", EventKind::Delete),
            ("t/old/2", EventKind::Delete),
        ];
        assert_eq!(changes, expected);
        assert_quiet(watch).await;
    }
}

pub async fn watch_with_concurrent_writers_sees_every_revision_in_order<S: Store>(store: S) {
    const WRITERS: usize = 4;
    const WRITES: usize = 50;
    let store = Arc::new(store);
    let first = store.revision().await.unwrap() + 1;
    let mut from_start = store.watch("c/", 0).await.unwrap();

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            for i in 0..WRITES {
                store
                    .put(&format!("c/{w}/{i:03}"), bytes("x"))
                    .await
                    .unwrap();
                // Noise outside the prefix takes revisions the watch must skip, not wait for.
                if i % 5 == 0 {
                    store.put(&format!("noise/{w}"), bytes("y")).await.unwrap();
                }
            }
        }));
    }
    // A second watch joins from the first revision while the writers run: it has to replay,
    // then switch to live events, under load.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut joining = store.watch("c/", first).await.unwrap();

    for watch in [&mut from_start, &mut joining] {
        let mut last_revision = 0;
        let mut last_index: HashMap<String, i64> = HashMap::new();
        for _ in 0..WRITERS * WRITES {
            let event = next_event(watch).await;
            assert!(event.revision() > last_revision, "revisions must increase");
            last_revision = event.revision();
            let (writer, index) = event.kv.key["c/".len()..].split_once('/').unwrap();
            let index: i64 = index.parse().unwrap();
            let previous = last_index.insert(writer.to_owned(), index);
            assert_eq!(previous.map_or(0, |p| p + 1), index, "writer {writer}");
        }
        assert_quiet(watch).await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
}

pub async fn slow_watcher_loses_no_event<S: Store>(store: S) {
    // More transactions than an implementation is likely to buffer for one watcher; a watcher
    // that falls behind must catch up from history (or fail), never skip.
    const WRITES: usize = 1_000;
    let mut watch = store.watch("s/", 0).await.unwrap();
    let first = store.revision().await.unwrap() + 1;
    for i in 0..WRITES {
        store
            .put(&format!("s/{}", i % 10), bytes(&i.to_string()))
            .await
            .unwrap();
    }
    for i in 0..WRITES {
        let event = next_event(&mut watch).await;
        assert_eq!(event.revision(), first + i as i64);
        assert_eq!(event.kv.value, bytes(&i.to_string()));
    }
    assert_quiet(&mut watch).await;
}

pub async fn cancelled_watch_next_loses_no_event<S: Store>(store: S) {
    // Watches sit in `select!` next to shutdown signals, so dropping a pending `next()` must not
    // consume an event. Cancel many calls mid-flight, in replay and live, then read everything.
    const WRITES: i64 = 40;
    let first = store.revision().await.unwrap() + 1;
    for i in 0..WRITES / 2 {
        store.put("x/k", bytes(&i.to_string())).await.unwrap();
    }
    let mut watch = store.watch("x/", first).await.unwrap();
    let mut seen = Vec::new();
    for i in WRITES / 2..WRITES {
        for _ in 0..3 {
            if let Ok(result) = tokio::time::timeout(Duration::ZERO, watch.next()).await {
                seen.push(result.unwrap().revision());
            }
        }
        store.put("x/k", bytes(&i.to_string())).await.unwrap();
    }
    while seen.len() < WRITES as usize {
        seen.push(next_event(&mut watch).await.revision());
    }
    let expected: Vec<i64> = (first..first + WRITES).collect();
    assert_eq!(seen, expected);
    assert_quiet(&mut watch).await;
}

pub async fn watch_from_future_revision_waits_for_it<S: Store>(store: S) {
    let now = store.revision().await.unwrap();
    let mut watch = store.watch("f/", now + 3).await.unwrap();
    store.put("f/1", bytes("1")).await.unwrap();
    store.put("f/2", bytes("2")).await.unwrap();
    store.put("f/3", bytes("3")).await.unwrap();
    let event = next_event(&mut watch).await;
    assert_eq!((event.kv.key.as_str(), event.revision()), ("f/3", now + 3));
    assert_quiet(&mut watch).await;
}

pub async fn watch_before_compaction_is_refused<S: Store>(store: S) {
    let mut revisions = Vec::new();
    for i in 0..10 {
        revisions.push(store.put(&format!("p/{i}"), bytes("v")).await.unwrap());
    }
    store.compact(revisions[5]).await.unwrap();

    match store.watch("p/", revisions[2]).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!((requested, oldest), (revisions[2], revisions[5]));
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    // From the compaction point on, history is intact.
    let mut watch = store.watch("p/", revisions[5]).await.unwrap();
    for expected in &revisions[5..] {
        assert_eq!(next_event(&mut watch).await.revision(), *expected);
    }
    // Compacting again to an older point changes nothing; beyond the present is refused.
    store.compact(revisions[1]).await.unwrap();
    assert!(matches!(
        store.watch("p/", revisions[4]).await,
        Err(StoreError::Compacted { .. })
    ));
    let future = store.revision().await.unwrap() + 1;
    assert!(store.compact(future).await.is_err());
    // Watching the present never needs history.
    let mut watch = store.watch("p/", 0).await.unwrap();
    let r = store.put("p/x", bytes("v")).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), r);
}

pub async fn leased_keys_expire_and_watches_see_the_deletes<S: Store>(store: S) {
    let lease = store.lease_grant(MIN_LEASE_TTL_SECS).await.unwrap();
    assert_ne!(lease, 0);
    let mut watch = store.watch("l/", 0).await.unwrap();
    let txn = Txn::new()
        .then(Op::PutWithLease("l/leased".into(), bytes("1"), lease))
        .then(Op::Put("l/plain".into(), bytes("2")));
    let put = store.txn(txn).await.unwrap().revision;
    assert_eq!(get(&store, "l/leased").await.unwrap().lease, lease);
    assert_eq!(get(&store, "l/plain").await.unwrap().lease, 0);
    let ttl = store.lease_time_to_live(lease).await.unwrap();
    assert!(
        ttl.is_some_and(|t| (1..=MIN_LEASE_TTL_SECS).contains(&t)),
        "{ttl:?}"
    );
    for _ in 0..2 {
        assert_eq!(next_event(&mut watch).await.revision(), put);
    }
    // Nobody keeps it alive: the store ends it on its own, and watches see its key go.
    let gone = next_event(&mut watch).await;
    assert_eq!(
        (gone.kind, gone.kv.key.as_str()),
        (EventKind::Delete, "l/leased")
    );
    assert!(gone.revision() > put);
    assert_eq!(get(&store, "l/leased").await, None);
    assert!(get(&store, "l/plain").await.is_some());
    assert_eq!(store.lease_time_to_live(lease).await.unwrap(), None);
    assert!(matches!(
        store.lease_keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(l)) if l == lease
    ));
    // A put with the dead lease fails whole.
    let txn = Txn::new().then(Op::PutWithLease("l/again".into(), bytes("3"), lease));
    assert!(matches!(
        store.txn(txn).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert_quiet(&mut watch).await;
}

pub async fn kept_alive_lease_outlives_its_ttl<S: Store>(store: S) {
    let lease = store.lease_grant(MIN_LEASE_TTL_SECS).await.unwrap();
    let txn = Txn::new().then(Op::PutWithLease("k/host".into(), bytes("up"), lease));
    store.txn(txn).await.unwrap();
    // Renew at a third of the TTL, as a host does, for more than twice the TTL.
    let renew = Duration::from_millis(MIN_LEASE_TTL_SECS as u64 * 1000 / 3);
    let until =
        tokio::time::Instant::now() + Duration::from_secs(MIN_LEASE_TTL_SECS as u64 * 5 / 2);
    while tokio::time::Instant::now() < until {
        let ttl = store.lease_keep_alive(lease).await.unwrap();
        assert_eq!(ttl, MIN_LEASE_TTL_SECS);
        tokio::time::sleep(renew).await;
    }
    assert_eq!(get(&store, "k/host").await.unwrap().value, bytes("up"));
    store.lease_revoke(lease).await.unwrap();
    assert_eq!(get(&store, "k/host").await, None);
}

pub async fn revoking_a_lease_deletes_its_keys_in_one_revision<S: Store>(store: S) {
    let lease = store.lease_grant(60).await.unwrap();
    let mut txn = Txn::new();
    for i in 0..3 {
        txn = txn.then(Op::PutWithLease(format!("r/{i}"), bytes("x"), lease));
    }
    store.txn(txn).await.unwrap();
    // A later put without the lease detaches that key from it.
    store.put("r/1", bytes("kept")).await.unwrap();
    let before = store.revision().await.unwrap();
    let mut watch = store.watch("r/", 0).await.unwrap();
    store.lease_revoke(lease).await.unwrap();
    assert_eq!(store.revision().await.unwrap(), before + 1);
    let mut deleted = Vec::new();
    for _ in 0..2 {
        let event = next_event(&mut watch).await;
        assert_eq!(
            (event.kind, event.revision()),
            (EventKind::Delete, before + 1)
        );
        deleted.push(event.kv.key);
    }
    deleted.sort();
    assert_eq!(deleted, ["r/0", "r/2"]);
    assert_quiet(&mut watch).await;
    assert_eq!(get(&store, "r/1").await.unwrap().value, bytes("kept"));
    assert!(matches!(
        store.lease_revoke(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    // Revoking a lease that holds no key changes nothing else.
    let empty = store.lease_grant(60).await.unwrap();
    store.lease_revoke(empty).await.unwrap();
    assert_eq!(store.revision().await.unwrap(), before + 1);
}

pub async fn put_with_a_missing_lease_fails_and_writes_nothing<S: Store>(store: S) {
    let before = store.revision().await.unwrap();
    let never_granted = 0x5eed_0000_0001;
    let txn = Txn::new()
        .then(Op::Put("m/plain".into(), bytes("1")))
        .then(Op::PutWithLease(
            "m/leased".into(),
            bytes("2"),
            never_granted,
        ));
    match store.txn(txn).await {
        Err(StoreError::LeaseNotFound(lease)) => assert_eq!(lease, never_granted),
        other => panic!("expected LeaseNotFound, got {other:?}"),
    }
    assert_eq!(get(&store, "m/plain").await, None);
    assert_eq!(store.revision().await.unwrap(), before);
    assert_eq!(store.lease_time_to_live(never_granted).await.unwrap(), None);
    // A missing lease on the branch that does not run is no error.
    let txn = Txn::new()
        .when(Compare::Exists("m/none".into()))
        .then(Op::PutWithLease(
            "m/leased".into(),
            bytes("2"),
            never_granted,
        ))
        .otherwise(Op::Put("m/plain".into(), bytes("1")));
    assert!(!store.txn(txn).await.unwrap().succeeded);
    assert!(get(&store, "m/plain").await.is_some());
}

pub async fn lease_ttl_out_of_bounds_is_refused<S: Store>(store: S) {
    for ttl in [-1, 0, MIN_LEASE_TTL_SECS - 1, MAX_LEASE_TTL_SECS + 1] {
        assert!(
            matches!(
                store.lease_grant(ttl).await,
                Err(StoreError::InvalidLeaseTtl { requested, .. }) if requested == ttl
            ),
            "ttl {ttl}"
        );
    }
}
