//! Times `list` of a prefix against an existing database: `list_timing DB PREFIX`.
use std::time::Instant;
use vessel_store::{SqliteStore, Store};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let store = SqliteStore::open(std::path::Path::new(&args[1])).expect("open");
    for _ in 0..5 {
        let t = Instant::now();
        let (kvs, _) = store.list(&args[2]).await.expect("list");
        let bytes: usize = kvs.iter().map(|kv| kv.value.len()).sum();
        println!("{} keys, {bytes} bytes in {:?}", kvs.len(), t.elapsed());
    }
}
