//! An always-current, in-memory view of the VMs, fed by a watch on the store (what Kubernetes
//! calls an informer). Reads of VM lists come from here: they cost a copy of pre-serialized JSON
//! instead of a table scan plus decoding and encoding every record.
//!
//! Read-your-writes: a reader first asks the store for its current revision and waits until the
//! view has caught up to it, so a VM created by a finished request is always in the list.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::{broadcast, watch};
use vessel_api::{
    DesiredState, Event, Event as StreamEvent, EventKind as StreamKind, OperationStatus,
};
use vessel_store::{EventKind, Store, WatchEvent};

use crate::common::events::EVENTS_PREFIX;
use crate::vm::model::{
    decode, group_vms, now_ms, Loaded, OpRecord, VmRecord, VmStatus, OPS_PREFIX, VMS_PREFIX,
};

/// One VM's records as the view holds them, and its API JSON once it has a spec.
#[derive(Default)]
struct Entry {
    record: Option<VmRecord>,
    desired: Option<DesiredState>,
    status: Option<VmStatus>,
    json: Option<Bytes>,
}

impl Entry {
    fn loaded(&self) -> Option<Loaded> {
        let record = self.record.clone()?;
        let status = self
            .status
            .clone()
            .unwrap_or_else(|| VmStatus::stopped(record.created_at_ms));
        Some(Loaded {
            record,
            desired: self.desired.unwrap_or(DesiredState::Stopped),
            status,
        })
    }

    fn refresh_json(&mut self) {
        self.json = self
            .loaded()
            .map(|l| Bytes::from(serde_json::to_vec(&l.view()).expect("VM serializes")));
    }

    fn is_empty(&self) -> bool {
        self.record.is_none() && self.desired.is_none() && self.status.is_none()
    }
}

pub struct VmView {
    store: Arc<dyn Store>,
    vms: RwLock<BTreeMap<String, Entry>>,
    /// The store revision the view reflects.
    revision: watch::Sender<i64>,
    /// The event stream (`GET /v1/events?follow=true`): recorded events, state changes and
    /// operation changes, all derived here from the one watch on the store. Bounded: a slow
    /// subscriber misses events (and is told so) instead of holding anyone up.
    bus: broadcast::Sender<Event>,
    /// The last status seen of each unfinished operation, so that a stream gets one event per
    /// status change and not one per progress update.
    op_status: parking_lot::Mutex<HashMap<String, OperationStatus>>,
}

impl VmView {
    /// Loads the current VMs and starts following the store.
    pub async fn start(store: Arc<dyn Store>, bus_capacity: usize) -> anyhow::Result<Arc<VmView>> {
        let (revision, _) = watch::channel(0);
        let (bus, _) = broadcast::channel(bus_capacity.max(1));
        let view = Arc::new(VmView {
            store,
            vms: RwLock::new(BTreeMap::new()),
            revision,
            bus,
            op_status: parking_lot::Mutex::new(HashMap::new()),
        });
        let from = view.load_all().await?;
        tokio::spawn(Arc::clone(&view).follow(from));
        Ok(view)
    }

    /// Replaces the view with a fresh listing; returns the revision to watch from.
    async fn load_all(&self) -> anyhow::Result<i64> {
        let (kvs, revision) = self.store.list(VMS_PREFIX).await?;
        let mut vms = BTreeMap::new();
        for loaded in group_vms(&kvs)? {
            let mut entry = Entry {
                record: Some(loaded.record.clone()),
                desired: Some(loaded.desired),
                status: Some(loaded.status.clone()),
                json: None,
            };
            entry.refresh_json();
            vms.insert(loaded.record.spec.name.clone(), entry);
        }
        *self.vms.write() = vms;
        self.revision.send_replace(revision);
        Ok(revision + 1)
    }

    /// Applies every change in the store, in order. The watch covers all keys (not just `vms/`)
    /// so that the view's revision advances with the store's and readers never wait in vain.
    async fn follow(self: Arc<Self>, mut from: i64) {
        loop {
            match self.store.watch("", from).await {
                Ok(mut watch) => match self.follow_watch(&mut watch).await {
                    Ok(()) => return, // the store closed: the daemon is shutting down
                    Err(e) => tracing::warn!(error = %e, "VM view lost its watch; reloading"),
                },
                Err(e) => tracing::warn!(error = %e, "VM view cannot watch the store; reloading"),
            }
            match self.load_all().await {
                Ok(next) => from = next,
                Err(e) => {
                    tracing::error!(error = %e, "VM view cannot reload; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Applies events a whole transaction at a time: the revision readers wait for is published
    /// only once every event of that revision is in, so no reader sees half a transaction.
    async fn follow_watch(
        &self,
        watch: &mut vessel_store::Watch,
    ) -> Result<(), vessel_store::StoreError> {
        let mut pending: Option<WatchEvent> = None;
        loop {
            let first = match pending.take() {
                Some(event) => event,
                None => match watch.next().await {
                    Ok(event) => event,
                    Err(vessel_store::StoreError::Closed) => return Ok(()),
                    Err(e) => return Err(e),
                },
            };
            let revision = first.revision();
            self.apply(&first);
            // The rest of a transaction's events arrive together, so they are ready at once;
            // `next` is cancel-safe, so polling it once and dropping it loses nothing.
            while let Some(next) = watch.next().now_or_never() {
                let event = next?;
                if event.revision() != revision {
                    pending = Some(event);
                    break;
                }
                self.apply(&event);
            }
            self.revision.send_if_modified(|r| {
                let newer = revision > *r;
                *r = (*r).max(revision);
                newer
            });
        }
    }

    /// A new subscriber to the event stream; it sees what happens from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.bus.subscribe()
    }

    fn publish(&self, event: Event) {
        // No receivers is fine: nobody is following.
        let _ = self.bus.send(event);
    }

    /// Recorded events and operation changes go to the stream as they are.
    fn publish_derived(&self, event: &WatchEvent) {
        if event.kind != EventKind::Put {
            return;
        }
        let key = &event.kv.key;
        if key.starts_with(EVENTS_PREFIX) {
            match decode::<Event>(key, &event.kv.value) {
                Ok(recorded) => self.publish(recorded),
                Err(e) => tracing::warn!(error = %e, "unreadable event record"),
            }
        } else if key.starts_with(OPS_PREFIX) {
            let Ok(record) = decode::<OpRecord>(key, &event.kv.value) else {
                return;
            };
            let op = record.operation;
            let mut seen = self.op_status.lock();
            if seen.get(&op.id) == Some(&op.status) {
                return; // a progress update
            }
            if op.status.is_terminal() {
                seen.remove(&op.id);
            } else {
                seen.insert(op.id.clone(), op.status);
            }
            drop(seen);
            let target = if op.vm.is_empty() {
                op.resource.clone().unwrap_or_default()
            } else {
                op.vm.clone()
            };
            let mut message = format!("{} {} {}", op.action.as_str(), target, op.status.as_str());
            if let Some(error) = &op.error {
                message.push_str(&format!(": {error}"));
            }
            let mut out = StreamEvent::new(StreamKind::Operation, op.vm.clone(), message, now_ms())
                .in_project(Some(op.project.clone()));
            out.operation = Some(op.id);
            out.action = Some(op.action);
            out.status = Some(op.status);
            self.publish(out);
        }
    }

    fn apply(&self, event: &WatchEvent) {
        self.publish_derived(event);
        let Some(rest) = event.kv.key.strip_prefix(VMS_PREFIX) else {
            return;
        };
        let Some((name, field)) = rest.split_once('/') else {
            return;
        };
        let put = event.kind == EventKind::Put;
        let mut vms = self.vms.write();
        let entry = vms.entry(name.to_string()).or_default();
        let result: anyhow::Result<()> = (|| {
            match field {
                "spec" => {
                    entry.record = put
                        .then(|| decode(&event.kv.key, &event.kv.value))
                        .transpose()?
                }
                "desired" => {
                    entry.desired = put
                        .then(|| decode(&event.kv.key, &event.kv.value))
                        .transpose()?
                }
                "status" => {
                    let before = entry.status.as_ref().map(|s| s.state);
                    entry.status = put
                        .then(|| decode(&event.kv.key, &event.kv.value))
                        .transpose()?;
                    if let Some(status) = entry.status.as_ref().filter(|s| Some(s.state) != before)
                    {
                        let mut message = status.state.as_str().to_string();
                        if let Some(reason) = &status.reason {
                            message.push_str(&format!(" ({reason})"));
                        }
                        let project = entry.record.as_ref().map(|r| r.project.clone());
                        let mut out = StreamEvent::new(StreamKind::State, name, message, now_ms())
                            .in_project(project);
                        out.state = Some(status.state);
                        self.publish(out);
                    }
                }
                _ => return Ok(()),
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!(error = %e, "VM view skipped an unreadable record");
        }
        if entry.is_empty() {
            vms.remove(name);
        } else {
            entry.refresh_json();
        }
    }

    /// Waits until the view reflects every write the store had committed when this was called.
    async fn catch_up(&self) -> anyhow::Result<()> {
        let target = self.store.revision().await?;
        let mut rx = self.revision.subscribe();
        rx.wait_for(|r| *r >= target).await?;
        Ok(())
    }

    /// `[vm, vm, ...]` as the API returns it, sorted by name: the VMs of the projects `visible`
    /// shows.
    pub async fn list_json(&self, visible: &vessel_auth::Visibility) -> anyhow::Result<Bytes> {
        self.catch_up().await?;
        let vms = self.vms.read();
        let shown = || {
            vms.values()
                .filter(|e| e.record.as_ref().is_some_and(|r| visible.shows(&r.project)))
                .filter_map(|e| e.json.as_ref())
        };
        let total: usize = shown().map(|j| j.len() + 1).sum();
        let mut out = Vec::with_capacity(total + 2);
        out.push(b'[');
        for json in shown() {
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(json);
        }
        out.push(b']');
        Ok(Bytes::from(out))
    }

    /// One VM, current as of the call.
    pub async fn get(&self, name: &str) -> anyhow::Result<Option<Loaded>> {
        self.catch_up().await?;
        Ok(self.vms.read().get(name).and_then(Entry::loaded))
    }

    /// The project of a VM, current as of the call (`None`: no such VM).
    pub async fn project_of(&self, name: &str) -> anyhow::Result<Option<String>> {
        self.catch_up().await?;
        let vms = self.vms.read();
        Ok(vms
            .get(name)
            .and_then(|e| e.record.as_ref())
            .map(|r| r.project.clone()))
    }

    /// All VMs, current as of the call.
    pub async fn all(&self) -> anyhow::Result<Vec<Loaded>> {
        self.catch_up().await?;
        Ok(self.vms.read().values().filter_map(Entry::loaded).collect())
    }
}
