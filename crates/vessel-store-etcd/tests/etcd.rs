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
