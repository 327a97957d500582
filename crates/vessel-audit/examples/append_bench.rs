//! Audit append throughput: 20,000 records from 32 concurrent tasks into a SqliteStore on disk,
//! with the hash chain, checkpoints every 1000 records and group commit.
//!
//! Durability is SqliteStore's: WAL with synchronous=NORMAL, so an acknowledged append is in the
//! WAL (survives a killed process); a power loss may lose the newest commits, never corrupt.
//!
//! `cargo run --release -p vessel-audit --example append_bench [records] [tasks] [dir]`

use std::sync::Arc;
use std::time::Instant;

use vessel_audit::{verify_store, AuditEntry, AuditKey, AuditLog, AuditOptions};
use vessel_store::SqliteStore;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let records: u64 = args.next().map_or(20_000, |a| a.parse().expect("records"));
    let tasks: u64 = args.next().map_or(32, |a| a.parse().expect("tasks"));
    let dir = match args.next() {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("vessel.db")).expect("open store");
    let key = AuditKey::generate().expect("key");
    let public = key.public_key();
    let log = Arc::new(
        AuditLog::open(Arc::new(store.clone()), key, AuditOptions::default())
            .await
            .expect("open log"),
    );
    let per_task = records / tasks;
    let revision_before = vessel_store::Store::revision(&store).await.unwrap();
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                log.append(AuditEntry::now(
                    format!("user{}", t % 7),
                    "10.0.0.7:51234",
                    "vm.start",
                    format!("vm/web{i}"),
                    "ok",
                ))
                .await
                .expect("append");
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    let elapsed = start.elapsed();
    let total = per_task * tasks;
    let transactions = vessel_store::Store::revision(&store).await.unwrap() - revision_before;
    println!(
        "appended {total} records from {tasks} tasks in {:.3} s: {:.0} records/s \
         ({transactions} store transactions, {:.1} records per commit)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        total as f64 / transactions as f64
    );
    let start = Instant::now();
    let report = verify_store(&store, &public).await.expect("verify");
    println!(
        "verified {} records and {} checkpoints in {:.3} s: {}",
        report.records,
        report.valid_checkpoints,
        start.elapsed().as_secs_f64(),
        if report.is_clean() {
            "clean"
        } else {
            "TAMPERED"
        }
    );
    assert!(report.is_clean(), "{report}");
}
