//! Store migrations run at start, before anything else reads the keys they move.
//!
//! [`to_host_keys`]: data dirs written before hosts had names keep host-local objects under
//! global keys (`pools/<name>`, `volprojects/<pool>/<volume>`, `volkeys/<pool>/<volume>`).
//! They move under this host's name (`pools/<host>/<name>`, ...: see ARCHITECTURE.md's store
//! layout) in one transaction, so a crash leaves either the old layout or the new one, and a
//! second start finds nothing to move. Operation records need no move: one without a host is
//! this host's (see `OpRecord::host`).

use vessel_store::{KeyValue, Op, Store, Txn};

use crate::storage::{keys, ownership, pools};

/// A key family that moved: its prefix, how many `/`-separated parts followed it in the old
/// layout (the new one has one more, the host), and the new key of the old parts.
type Family = (&'static str, usize, fn(&str, &[&str]) -> String);

/// Moves every old-style host-local key under `host`; returns how many moved.
pub async fn to_host_keys(store: &dyn Store, host: &str) -> anyhow::Result<usize> {
    let mut moves = Vec::new();
    let families: [Family; 3] = [
        (pools::POOLS_PREFIX, 1, |host, p| {
            pools::pool_key(host, p[0])
        }),
        (ownership::PREFIX, 2, |host, p| {
            ownership::key(host, p[0], p[1])
        }),
        (keys::VOLKEYS_PREFIX, 2, |host, p| {
            keys::volkey_key(host, p[0], p[1])
        }),
    ];
    for (prefix, old_parts, new_key) in families {
        let (kvs, _) = store.list(prefix).await?;
        for kv in &kvs {
            let parts: Vec<&str> = kv.key[prefix.len()..].split('/').collect();
            if parts.len() == old_parts {
                moves.push((kv.clone(), new_key(host, &parts)));
            }
        }
    }
    if moves.is_empty() {
        return Ok(0);
    }
    let mut txn = Txn::new();
    for (KeyValue { key, value, .. }, new) in &moves {
        txn = txn
            .then(Op::Delete(key.clone()))
            .then(Op::Put(new.clone(), value.clone()));
    }
    store.txn(txn).await?;
    for (old, new) in &moves {
        tracing::info!(from = %old.key, to = %new, "store key moved under this host's name");
    }
    tracing::info!(
        host,
        moved = moves.len(),
        "host-local store keys migrated to the per-host layout"
    );
    Ok(moves.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_store::SqliteStore;

    async fn put(store: &SqliteStore, key: &str, value: &str) {
        store.put(key, value.as_bytes().to_vec()).await.unwrap();
    }

    async fn all(store: &SqliteStore) -> Vec<(String, String)> {
        let (kvs, _) = store.list("").await.unwrap();
        kvs.into_iter()
            .map(|kv| (kv.key, String::from_utf8(kv.value).unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn old_host_local_keys_move_under_the_host_once_and_the_rest_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("vessel.db")).unwrap();
        put(&store, "pools/default", r#"{"name":"default"}"#).await;
        put(&store, "pools/fast", r#"{"name":"fast"}"#).await;
        put(&store, "volprojects/default/data1", r#"{"project":"dev"}"#).await;
        put(&store, "volprojects/fast/root", "default").await;
        put(&store, "volkeys/default/secret", r#"{"wrapped":1}"#).await;
        // Not host-local: untouched.
        put(&store, "vms/web/spec", "{}").await;
        put(&store, "images/debian", r#"{"pool":"default"}"#).await;
        put(&store, "projects/dev", "{}").await;

        assert_eq!(to_host_keys(&store, "alpha").await.unwrap(), 5);
        assert_eq!(
            all(&store).await,
            [
                ("images/debian", r#"{"pool":"default"}"#),
                ("pools/alpha/default", r#"{"name":"default"}"#),
                ("pools/alpha/fast", r#"{"name":"fast"}"#),
                ("projects/dev", "{}"),
                ("vms/web/spec", "{}"),
                ("volkeys/alpha/default/secret", r#"{"wrapped":1}"#),
                ("volprojects/alpha/default/data1", r#"{"project":"dev"}"#),
                ("volprojects/alpha/fast/root", "default"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );

        // A second start changes nothing, not even the revision.
        let revision = store.revision().await.unwrap();
        assert_eq!(to_host_keys(&store, "alpha").await.unwrap(), 0);
        assert_eq!(store.revision().await.unwrap(), revision);
    }

    #[test]
    fn an_operation_without_a_host_is_the_reading_daemons_and_one_with_a_host_only_its() {
        let old: crate::vm::model::OpRecord = serde_json::from_value(serde_json::json!({
            "id": "x", "vm": "web", "action": "start", "status": "pending", "created_at_ms": 1
        }))
        .unwrap();
        assert!(old.is_for("alpha") && old.is_for("beta"));
        let mut new = old.clone();
        new.host = "alpha".into();
        assert!(new.is_for("alpha") && !new.is_for("beta"));
        let stored: serde_json::Value =
            serde_json::from_slice(&crate::vm::model::encode(&new)).unwrap();
        assert_eq!(stored["host"], "alpha");
    }

    #[tokio::test]
    async fn a_new_data_dir_has_nothing_to_move() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("vessel.db")).unwrap();
        assert_eq!(to_host_keys(&store, "alpha").await.unwrap(), 0);
        assert_eq!(store.revision().await.unwrap(), 0);
    }
}
