//! The event log: what happened, newest last, bounded. `events/<seq>` holds each event; the
//! sequence number comes from a counter key (`eventseq`) bumped in the same transaction that
//! writes the event, so several daemons on one store never write the same number and none is
//! skipped (a process-local counter, as before, would collide once a cluster shares a store).

use vessel_api::Event;
use vessel_store::{Compare, Op, Store, StoreError, Txn};

pub const EVENTS_PREFIX: &str = "events/";
/// The last sequence number handed out (outside `events/`, so that listing events never sees it).
pub const EVENT_SEQ_KEY: &str = "eventseq";
/// How many events the store keeps; older ones are dropped as new ones come.
pub const EVENTS_KEPT: u64 = 2000;
/// Writers racing for the counter retry; this many lost races in a row is a store in trouble.
const MAX_ATTEMPTS: u32 = 100;

pub fn event_key(seq: u64) -> String {
    format!("{EVENTS_PREFIX}{seq:020}")
}

/// Appends `event` and returns its sequence number; the event `kept` places back goes.
pub async fn append(store: &dyn Store, event: &Event, kept: u64) -> Result<u64, StoreError> {
    let body = serde_json::to_vec(event).expect("events always serialize");
    for _ in 0..MAX_ATTEMPTS {
        let (last, revision) = last_seq(store).await?;
        let seq = last + 1;
        let mut txn = Txn::new()
            .when(Compare::ModRevision(EVENT_SEQ_KEY.into(), revision))
            .then(Op::Put(EVENT_SEQ_KEY.into(), seq.to_string().into_bytes()))
            .then(Op::Put(event_key(seq), body.clone()));
        if seq > kept {
            txn = txn.then(Op::Delete(event_key(seq - kept)));
        }
        if store.txn(txn).await?.succeeded {
            return Ok(seq);
        }
    }
    Err(StoreError::Backend(format!(
        "the event counter changed {MAX_ATTEMPTS} times in a row while an event was recorded"
    )))
}

/// The last sequence number and the counter's revision (0: no counter yet). A data dir from
/// before the counter existed starts it from its newest event.
async fn last_seq(store: &dyn Store) -> Result<(u64, i64), StoreError> {
    if let Some(kv) = store.get(EVENT_SEQ_KEY).await? {
        let last = std::str::from_utf8(&kv.value)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| StoreError::Backend(format!("corrupt record at {EVENT_SEQ_KEY}")))?;
        return Ok((last, kv.mod_revision));
    }
    let (events, _) = store.list(EVENTS_PREFIX).await?;
    let newest = events
        .last()
        .and_then(|kv| kv.key[EVENTS_PREFIX.len()..].parse::<u64>().ok())
        .unwrap_or(0);
    Ok((newest, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vessel_api::EventKind;
    use vessel_store::SqliteStore;

    fn event(n: u32) -> Event {
        Event::new(EventKind::Info, format!("vm{n}"), "x", 1)
    }

    async fn keys(store: &dyn Store) -> Vec<u64> {
        let (events, _) = store.list(EVENTS_PREFIX).await.unwrap();
        events
            .iter()
            .map(|kv| kv.key[EVENTS_PREFIX.len()..].parse().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn writers_racing_on_one_store_get_distinct_consecutive_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let writer = |base: u32| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut got = Vec::new();
                for n in 0..40 {
                    got.push(
                        append(store.as_ref(), &event(base + n), 1000)
                            .await
                            .unwrap(),
                    );
                }
                got
            })
        };
        let (a, b, c) = (writer(0), writer(100), writer(200));
        let mut all: Vec<u64> = [a.await.unwrap(), b.await.unwrap(), c.await.unwrap()].concat();
        all.sort_unstable();
        assert_eq!(all, (1..=120).collect::<Vec<u64>>());
        assert_eq!(keys(store.as_ref()).await, all);
    }

    #[tokio::test]
    async fn an_old_data_dir_continues_after_its_newest_event_and_old_events_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        // As the previous version wrote them: events without a counter.
        for seq in [7u64, 8, 9] {
            let put = Op::Put(event_key(seq), serde_json::to_vec(&event(0)).unwrap());
            store.txn(Txn::new().then(put)).await.unwrap();
        }
        assert_eq!(append(&store, &event(1), 3).await.unwrap(), 10);
        assert_eq!(append(&store, &event(2), 3).await.unwrap(), 11);
        assert_eq!(keys(&store).await, vec![9, 10, 11]);
    }
}
