//! The etcd watch: a task pumps etcd's stream into a bounded channel and survives connection loss.
//!
//! The whole state of a watch is `next`, the first revision not yet delivered. Every response
//! from etcd holds whole revisions (no fragmenting is asked for), so after a response is passed on
//! `next` is one past its last event; progress notifications move it on while nothing under the
//! prefix changes, so that a reconnect after a long quiet time does not ask for compacted history.
//! When the stream breaks, the task waits a moment and creates the watch again from `next`; if
//! etcd has compacted `next` away in the meantime, the watch ends with `Compacted` and the consumer
//! re-lists. The channel is bounded, so a slow consumer holds etcd back (gRPC flow control, then
//! etcd's own catch-up from history) instead of growing memory.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, EventType, GetOptions, WatchOptions, WatchRequestSender, WatchResponseStream,
};
use tokio::sync::mpsc;
use vessel_store::{EventKind, KeyValue, StoreError, WatchEvent, WatchStream};

use crate::error::from_etcd;
use crate::{prefix_end, strip_namespace};

/// Events buffered between the pump and the consumer.
const CHANNEL_EVENTS: usize = 256;
/// How long the creation of a watch (or the cancellation of a compacted one) may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits between attempts to re-create a broken watch: it starts short and doubles up to this.
const MAX_RETRY: Duration = Duration::from_secs(2);

pub(crate) struct EtcdWatch {
    events: mpsc::Receiver<Result<WatchEvent, StoreError>>,
    pump: tokio::task::JoinHandle<()>,
    failed: Option<StoreError>,
}

impl Drop for EtcdWatch {
    fn drop(&mut self) {
        // Dropping the pump drops etcd's stream, which cancels the watch on the server.
        self.pump.abort();
    }
}

/// What a watch looks at: the range in etcd's keyspace and how to read keys back.
#[derive(Clone)]
struct Target {
    namespace: String,
    start: Vec<u8>,
    end: Vec<u8>,
}

impl EtcdWatch {
    pub(crate) async fn start(
        client: Client,
        namespace: String,
        full_prefix: Vec<u8>,
        start_revision: i64,
    ) -> Result<Self, StoreError> {
        let target = Target {
            namespace,
            end: prefix_end(&full_prefix),
            start: full_prefix,
        };
        if start_revision != 0 {
            refuse_if_compacted(&client, &target, start_revision).await?;
        }
        let (stream, created_at) = create(&client, &target, start_revision).await?;
        let next = if start_revision == 0 {
            created_at + 1
        } else {
            start_revision
        };
        let (sender, events) = mpsc::channel(CHANNEL_EVENTS);
        let pump = Pump {
            client,
            target,
            next,
            sender,
        };
        Ok(Self {
            events,
            pump: tokio::spawn(pump.run(stream)),
            failed: None,
        })
    }
}

#[async_trait]
impl WatchStream for EtcdWatch {
    async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        // `recv` is cancel-safe: a dropped call takes no event out of the channel.
        let result = self.events.recv().await.unwrap_or(Err(StoreError::Closed));
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }
}

/// Fails with `Compacted` (and the oldest revision still kept) if `revision` is compacted.
/// A read at that revision tells whether it is; etcd's watch then tells the oldest one.
async fn refuse_if_compacted(
    client: &Client,
    target: &Target,
    revision: i64,
) -> Result<(), StoreError> {
    let options = GetOptions::new()
        .with_range(target.end.clone())
        .with_count_only()
        .with_revision(revision);
    let read = client
        .kv_client()
        .get(target.start.clone(), Some(options))
        .await;
    match read.map_err(|err| from_etcd("check the watch's start".into(), err)) {
        Err(StoreError::Compacted { .. }) => {
            let oldest = compaction_point(client, target, revision).await?;
            Err(StoreError::Compacted {
                requested: revision,
                oldest,
            })
        }
        // A future revision is fine: the watch waits for it.
        Ok(_) | Err(StoreError::InvalidRevision { .. }) => Ok(()),
        Err(err) => Err(err),
    }
}

/// The oldest revision etcd keeps, learnt from the cancellation of a watch at a compacted one.
async fn compaction_point(
    client: &Client,
    target: &Target,
    revision: i64,
) -> Result<i64, StoreError> {
    let (mut stream, _) = match create(client, target, revision).await {
        Err(StoreError::Compacted { oldest, .. }) => return Ok(oldest),
        other => other?,
    };
    let cancelled = tokio::time::timeout(CREATE_TIMEOUT, async {
        loop {
            match stream.responses.message().await {
                Ok(Some(response)) if response.compact_revision() > 0 => {
                    return Ok(response.compact_revision());
                }
                Ok(Some(_)) => continue,
                Ok(None) => return Err(StoreError::Closed),
                Err(err) => return Err(from_etcd("watch a compacted revision".into(), err)),
            }
        }
    });
    cancelled.await.unwrap_or_else(|_| {
        Err(StoreError::Backend(
            "etcd did not say which revision it compacted to".into(),
        ))
    })
}

/// An etcd watch: its request half is kept open for as long as its responses are read (closing it
/// is how a client says it is done).
struct EtcdStream {
    _requests: WatchRequestSender,
    responses: WatchResponseStream,
}

/// Creates an etcd watch and waits for its creation; returns the stream and the store revision
/// at creation.
async fn create(
    client: &Client,
    target: &Target,
    start_revision: i64,
) -> Result<(EtcdStream, i64), StoreError> {
    let options = WatchOptions::new()
        .with_range(target.end.clone())
        .with_start_revision(start_revision)
        .with_progress_notify();
    let what = || format!("watch from revision {start_revision}");
    let (requests, mut stream) = client
        .watch_client()
        .watch(target.start.clone(), Some(options))
        .await
        .map_err(|err| from_etcd(what(), err))?
        .split();
    let created = tokio::time::timeout(CREATE_TIMEOUT, stream.message())
        .await
        .map_err(|_| StoreError::Backend(format!("{}: etcd did not create it", what())))?
        .map_err(|err| from_etcd(what(), err))?
        .ok_or(StoreError::Closed)?;
    if created.compact_revision() > 0 {
        return Err(StoreError::Compacted {
            requested: start_revision,
            oldest: created.compact_revision(),
        });
    }
    if !created.created() || created.canceled() {
        return Err(StoreError::Backend(format!(
            "{}: etcd refused it: {}",
            what(),
            created.cancel_reason()
        )));
    }
    let revision = created.header().map_or(0, |h| h.revision());
    let stream = EtcdStream {
        _requests: requests,
        responses: stream,
    };
    Ok((stream, revision))
}

struct Pump {
    client: Client,
    target: Target,
    /// The first revision not yet delivered.
    next: i64,
    sender: mpsc::Sender<Result<WatchEvent, StoreError>>,
}

impl Pump {
    async fn run(mut self, mut stream: EtcdStream) {
        loop {
            let ended = match stream.responses.message().await {
                Ok(Some(response)) => match self.deliver(response).await {
                    Delivery::Continue => continue,
                    Delivery::ConsumerGone => return,
                    Delivery::Broken(reason) => reason,
                },
                Ok(None) => "etcd closed the stream".to_owned(),
                Err(err) => err.to_string(),
            };
            tracing::warn!(
                next = self.next,
                "store watch interrupted ({ended}); resuming"
            );
            match self.resume().await {
                Ok(resumed) => stream = resumed,
                Err(err) => {
                    let _ = self.sender.send(Err(err)).await;
                    return;
                }
            }
        }
    }

    async fn deliver(&mut self, response: etcd_client::WatchResponse) -> Delivery {
        if response.compact_revision() > 0 {
            // etcd cancels a watch that fell behind its compaction: history is lost to it.
            let err = StoreError::Compacted {
                requested: self.next,
                oldest: response.compact_revision(),
            };
            let _ = self.sender.send(Err(err)).await;
            return Delivery::ConsumerGone;
        }
        if response.canceled() {
            return Delivery::Broken(format!("etcd cancelled it: {}", response.cancel_reason()));
        }
        let mut last = None;
        for event in response.events() {
            let event = match convert(&self.target.namespace, event) {
                Ok(event) => event,
                Err(err) => {
                    let _ = self.sender.send(Err(err)).await;
                    return Delivery::ConsumerGone;
                }
            };
            last = Some(event.revision());
            if self.sender.send(Ok(event)).await.is_err() {
                return Delivery::ConsumerGone;
            }
        }
        self.next = match last {
            Some(revision) => revision + 1,
            // A progress notification: nothing under the prefix up to its revision.
            None => self
                .next
                .max(response.header().map_or(0, |h| h.revision()) + 1),
        };
        Delivery::Continue
    }

    /// Re-creates the watch from `next`, retrying while etcd cannot be reached (or the consumer
    /// is still there to want it).
    async fn resume(&self) -> Result<EtcdStream, StoreError> {
        let mut wait = Duration::from_millis(50);
        loop {
            if self.sender.is_closed() {
                return Err(StoreError::Closed);
            }
            match create(&self.client, &self.target, self.next).await {
                Ok((stream, _)) => return Ok(stream),
                Err(err @ StoreError::Compacted { .. }) => return Err(err),
                Err(err) => {
                    tracing::debug!(next = self.next, "store watch not resumed yet: {err}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_RETRY);
                }
            }
        }
    }
}

enum Delivery {
    Continue,
    ConsumerGone,
    Broken(String),
}

fn convert(namespace: &str, event: &etcd_client::Event) -> Result<WatchEvent, StoreError> {
    let kv = event
        .kv()
        .ok_or_else(|| StoreError::Backend("etcd sent a watch event without a key".into()))?;
    let key = strip_namespace(namespace, kv.key())?;
    Ok(match event.event_type() {
        EventType::Put => WatchEvent {
            kind: EventKind::Put,
            kv: KeyValue {
                key,
                value: kv.value().to_vec(),
                create_revision: kv.create_revision(),
                mod_revision: kv.mod_revision(),
                version: kv.version(),
                lease: kv.lease(),
            },
        },
        // etcd's delete events carry the delete's revision and zeroes, as the trait wants.
        EventType::Delete => WatchEvent {
            kind: EventKind::Delete,
            kv: KeyValue {
                key,
                value: Vec::new(),
                create_revision: 0,
                mod_revision: kv.mod_revision(),
                version: 0,
                lease: 0,
            },
        },
    })
}
