//! The SQLite store's watch: history replay, then live batches, with one cursor.
//!
//! The whole watch is one number, `next`: the first revision not yet delivered. Two sources can
//! advance it. In catch-up mode it reads history pages from the database thread. In live mode it
//! takes batches from the broadcast the thread publishes on every commit; batches below `next` are
//! duplicates of what history delivered and are skipped. The receiver was subscribed before any
//! history was read, so every revision after the subscription is in the broadcast (or the
//! broadcast reports a lag), and everything before it is in history: nothing falls between.
//! A lag, or any gap in the revisions (a bug, but cheap to heal), sends the watch back to
//! catch-up mode from `next`, so a slow consumer loses nothing; if its history has been compacted
//! meanwhile it ends with `Compacted`.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use tokio::sync::broadcast::{self, error::RecvError};

use super::{Batch, Inner, Request, Subscription};
use crate::{StoreError, WatchEvent, WatchStream};

pub(super) struct SqliteWatch {
    /// Weak so that an open watch does not keep the database open after the store is dropped.
    store: Weak<Inner>,
    prefix: String,
    /// The first revision not yet delivered (or buffered in `pending`).
    next: i64,
    live: bool,
    batches: broadcast::Receiver<Arc<Batch>>,
    pending: VecDeque<WatchEvent>,
    /// Set once the watch has failed; every later call returns it again.
    failed: Option<StoreError>,
}

impl SqliteWatch {
    pub(super) fn new(
        store: Weak<Inner>,
        prefix: String,
        start_revision: i64,
        sub: Subscription,
    ) -> Self {
        // Start 0 means "after now": the subscription revision is exactly "now", so live batches
        // from the next revision on are all that is wanted. A start in the past needs history.
        let (next, live) = if start_revision == 0 {
            (sub.revision + 1, true)
        } else {
            (start_revision, start_revision > sub.revision)
        };
        Self {
            store,
            prefix,
            next,
            live,
            batches: sub.batches,
            pending: VecDeque::new(),
            failed: None,
        }
    }

    async fn catch_up(&mut self) -> Result<(), StoreError> {
        let store = self.store.upgrade().ok_or(StoreError::Closed)?;
        let prefix = self.prefix.clone();
        let from = self.next;
        let page = store
            .call(|reply| Request::History {
                prefix,
                from,
                reply,
            })
            .await?;
        self.pending.extend(page.events);
        self.next = page.next;
        if page.next > page.revision {
            self.live = true;
        }
        Ok(())
    }

    async fn receive(&mut self) -> Result<(), StoreError> {
        match self.batches.recv().await {
            Ok(batch) if batch.revision < self.next => {}
            Ok(batch) if batch.revision == self.next => {
                let prefix = self.prefix.as_str();
                let matching = batch.events.iter().filter(|e| e.kv.key.starts_with(prefix));
                self.pending.extend(matching.cloned());
                self.next += 1;
            }
            Ok(batch) => {
                tracing::warn!(
                    expected = self.next,
                    got = batch.revision,
                    "watch saw a revision gap; re-reading history"
                );
                self.live = false;
            }
            Err(RecvError::Lagged(skipped)) => {
                tracing::debug!(
                    skipped,
                    from = self.next,
                    "watch lagged; re-reading history"
                );
                self.live = false;
            }
            Err(RecvError::Closed) => return Err(StoreError::Closed),
        }
        Ok(())
    }
}

#[async_trait]
impl WatchStream for SqliteWatch {
    async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            if let Some(err) = &self.failed {
                return Err(err.clone());
            }
            let step = if self.live {
                self.receive().await
            } else {
                self.catch_up().await
            };
            if let Err(err) = step {
                self.failed = Some(err.clone());
                return Err(err);
            }
        }
    }
}
