//! `EtcdStore` against the store conformance suite on a real etcd (one per test), plus what only
//! a networked store can show: namespaces, large paged listings, a watch that survives an etcd
//! restart, and connection errors.

mod support;

use std::time::Duration;

use support::EtcdServer;
use vessel_store::{conformance, Op, Store, StoreError, Txn};
use vessel_store_etcd::{EtcdOptions, EtcdStore};

macro_rules! etcd_conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let server = EtcdServer::start();
            let store = server.store().await;
            conformance::$name(store).await;
        }
    )*};
}

vessel_store::for_each_conformance_test!(etcd_conformance);

async fn next_event(watch: &mut vessel_store::Watch) -> vessel_store::WatchEvent {
    tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("a watch event within 20 s")
        .expect("a watch event, not an error")
}

/// Two stores on one etcd with different namespaces share nothing: not keys, not lists, not
/// watch events (but revisions are etcd's, so they count both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_keep_two_stores_apart() {
    let server = EtcdServer::start();
    let a = EtcdStore::connect(server.options("/a/")).await.unwrap();
    let b = EtcdStore::connect(server.options("/b/")).await.unwrap();
    let mut watch_b = b.watch("vms/", 0).await.unwrap();
    a.put("vms/x", b"from a".to_vec()).await.unwrap();
    let written = b.put("vms/y", b"from b".to_vec()).await.unwrap();
    assert_eq!(b.get("vms/x").await.unwrap(), None);
    let (listed, _) = b.list("").await.unwrap();
    let keys: Vec<_> = listed.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        ["vms/y"],
        "b lists only its own keys, without the namespace"
    );
    let event = next_event(&mut watch_b).await;
    assert_eq!(
        (event.kv.key.as_str(), event.revision()),
        ("vms/y", written)
    );
    b.txn(Txn::new().then(Op::DeletePrefix("vms/".into())))
        .await
        .unwrap();
    assert_eq!(b.get("vms/y").await.unwrap(), None);
    assert!(
        a.get("vms/x").await.unwrap().is_some(),
        "b's delete of all its keys spares a's"
    );
}

/// Lists larger than one page (500 keys) come back whole, sorted, and read at one revision even
/// while another writer keeps writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_many_pages_is_one_consistent_snapshot() {
    let server = EtcdServer::start();
    let store = server.store().await;
    for chunk in 0..13 {
        let mut txn = Txn::new();
        for i in chunk * 100..(chunk + 1) * 100 {
            txn = txn.then(Op::Put(format!("k/{i:05}"), vec![b'x'; 100]));
        }
        store.txn(txn).await.unwrap();
    }
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                store
                    .put(&format!("k/{:05}", 90_000 + i), vec![1])
                    .await
                    .unwrap();
            }
        })
    };
    let (listed, revision) = store.list("k/").await.unwrap();
    writer.await.unwrap();
    assert!(listed.len() >= 1300, "{} keys", listed.len());
    assert!(listed.windows(2).all(|w| w[0].key < w[1].key), "sorted");
    assert!(
        listed.iter().all(|kv| kv.mod_revision <= revision),
        "no key newer than the list's revision"
    );
    let written_by_then = listed
        .iter()
        .filter(|kv| kv.key.as_str() >= "k/90000")
        .count();
    assert_eq!(
        listed.len(),
        1300 + written_by_then,
        "every key of the first 1300 is there"
    );
}

/// kill -9 of etcd under a watch: writes made after it comes back (on the same data) reach the
/// watch, which resumes where it was: no event lost, none twice. Requests while it is down fail
/// with an error instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_survives_an_etcd_restart() {
    let mut server = EtcdServer::start();
    let mut options = server.options("/vessel-test/");
    options.request_timeout = Duration::from_secs(2);
    let store = EtcdStore::connect(options).await.unwrap();
    let mut watch = store.watch("w/", 0).await.unwrap();
    let first = store.put("w/1", b"1".to_vec()).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), first);

    server.kill();
    let down = store.put("w/down", b"x".to_vec()).await;
    assert!(
        matches!(&down, Err(StoreError::Backend(_))),
        "a write with etcd down fails: {down:?}"
    );
    server.spawn();

    // The client reconnects on its own; the first writes may still meet the old connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let second = loop {
        match store.put("w/2", b"2".to_vec()).await {
            Ok(revision) => break revision,
            Err(err) if std::time::Instant::now() < deadline => {
                eprintln!("etcd not back yet: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("etcd did not come back: {err}"),
        }
    };
    let third = store.put("w/3", b"3".to_vec()).await.unwrap();
    let mut seen = Vec::new();
    while seen.last() != Some(&third) {
        let event = next_event(&mut watch).await;
        seen.push(event.revision());
    }
    // w/down may or may not have been written before the kill took effect; either way each
    // revision arrives once and in order.
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert!(seen.contains(&second), "{seen:?}");
}

/// A store that cannot reach etcd says so, naming the endpoint, within the connect timeout.
#[tokio::test]
async fn connecting_to_a_dead_endpoint_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut options = EtcdOptions::new(vec![endpoint.clone()]);
    options.connect_timeout = Duration::from_secs(1);
    options.request_timeout = Duration::from_secs(1);
    let err = EtcdStore::connect(options).await.unwrap_err();
    assert!(err.to_string().contains(&endpoint), "{err}");
    let err = EtcdStore::connect(EtcdOptions::new(vec![]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no etcd endpoint"), "{err}");
}
