//! The reconciler's dispatcher: it watches the store for new operations and hands each to its
//! VM's worker, and at start-up re-adopts running VMs and resumes interrupted operations. It
//! takes only its own host's operations (`OpRecord::host`): with several daemons on one store,
//! each carries out the work of its host.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use tokio::sync::mpsc;
use vessel_api::{OperationAction, OperationStatus};
use vessel_store::{EventKind, Op, Txn};

use crate::ctx::Ctx;
use crate::vm::model::{decode, encode, now_ms, op_key, OpRecord, OPS_PREFIX, VMS_PREFIX};
use crate::vm::worker::{Worker, WorkerMsg};

/// How long start-up waits for running VMs to be re-adopted before serving the API.
const ADOPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How often every VM is reconciled even when nothing asked for it.
const RESYNC_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

/// Finished operations kept for `vessel operation list`; older ones are pruned at start-up.
const FINISHED_OPS_KEPT: usize = 1000;

pub struct Controller {
    ctx: Arc<Ctx>,
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<WorkerMsg>>>,
}

impl Controller {
    pub fn new(ctx: Arc<Ctx>) -> Arc<Controller> {
        Arc::new(Controller {
            ctx,
            workers: Mutex::new(HashMap::new()),
        })
    }

    fn dispatch(&self, vm: &str, msg: WorkerMsg) {
        if vm.is_empty() {
            return; // a host operation: its own task runs it, no VM worker
        }
        let mut workers = self.workers.lock();
        let tx = workers
            .entry(vm.to_string())
            .or_insert_with(|| Worker::spawn(vm.to_string(), Arc::clone(&self.ctx)));
        if tx.send(msg).is_err() {
            tracing::error!(vm, "VM worker is gone");
        }
    }

    /// Re-adopts VMs, resumes or fails interrupted operations, then follows new operations.
    /// Returns once start-up work has been dispatched; following continues in a task.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        let store = &self.ctx.store;
        let (ops, revision) = store.list(OPS_PREFIX).await?;
        let host = &self.ctx.config.host_name;
        let mut ops = ops
            .iter()
            .map(|kv| Ok((kv.key.clone(), decode::<OpRecord>(&kv.key, &kv.value)?)))
            .filter(|op| !matches!(op, Ok((_, r)) if !r.is_for(host)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Operations the previous daemon was running are re-queued or failed first, so that
        // re-adoption knows which VMs still have work queued.
        for (_, record) in ops.iter_mut() {
            if record.operation.status == OperationStatus::Running {
                self.recover_interrupted(record).await?;
            }
        }
        let queued: HashSet<String> = ops
            .iter()
            .filter(|(_, r)| r.operation.status == OperationStatus::Pending)
            .map(|(_, r)| r.operation.vm.clone())
            .collect();
        let (vms, _) = store.list(VMS_PREFIX).await?;
        let mut adopted = Vec::new();
        for kv in vms.iter().filter(|kv| kv.key.ends_with("/spec")) {
            let name = &kv.key[VMS_PREFIX.len()..kv.key.len() - "/spec".len()];
            let (tx, rx) = tokio::sync::oneshot::channel();
            // A VM with queued operations converges through them (with their own options); the
            // others converge now (e.g. after a failed reboot, towards their desired state).
            let converge = !queued.contains(name);
            self.dispatch(
                name,
                WorkerMsg::Reconcile {
                    adopted: Some(tx),
                    converge,
                },
            );
            adopted.push(rx);
        }
        // Serve the API only once running VMs are re-adopted, so that no client sees the state a
        // previous daemon left behind. Bounded: a VM that cannot be adopted in time is reported by
        // its worker later.
        let all = futures::future::join_all(adopted);
        if tokio::time::timeout(ADOPT_TIMEOUT, all).await.is_err() {
            tracing::warn!(
                "re-adopting VMs took longer than {} s; serving the API anyway",
                ADOPT_TIMEOUT.as_secs()
            );
        }
        let mut finished = Vec::new();
        for (key, record) in ops {
            if record.operation.status == OperationStatus::Pending {
                self.dispatch(
                    &record.operation.vm.clone(),
                    WorkerMsg::Op(record.operation.id.clone()),
                );
            } else if record.operation.status.is_terminal() {
                finished.push((record.operation.created_at_ms, key));
            }
        }
        self.prune(finished).await?;
        tokio::spawn(Arc::clone(self).resync_periodically());
        tokio::spawn(Arc::clone(self).follow_operations(revision + 1));
        Ok(())
    }

    /// Hands every new pending operation to its VM's worker, for as long as the store is open.
    /// A watch that fails (the store compacted the revisions it needed, as etcd does, or its
    /// connection is gone for good) is replaced, never given up: the pending operations are
    /// listed again and dispatched (a worker skips one it already ran), and a new watch starts
    /// right after that listing, so no request is skipped.
    async fn follow_operations(self: Arc<Self>, mut from: i64) {
        loop {
            match self.ctx.store.watch(OPS_PREFIX, from).await {
                Ok(mut watch) => loop {
                    match watch.next().await {
                        Ok(event) => self.dispatch_if_pending(&event),
                        Err(vessel_store::StoreError::Closed) => return, // shutting down
                        Err(e) => {
                            tracing::warn!(error = %e, "operation watch failed; listing pending operations again");
                            break;
                        }
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot watch operations; listing them again"),
            }
            match self.dispatch_all_pending().await {
                Ok(revision) => from = revision + 1,
                Err(e) => {
                    tracing::error!(error = %e, "cannot list operations; retrying in 1 s");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn dispatch_if_pending(&self, event: &vessel_store::WatchEvent) {
        if event.kind != EventKind::Put {
            return;
        }
        match decode::<OpRecord>(&event.kv.key, &event.kv.value) {
            Ok(r)
                if r.operation.status == OperationStatus::Pending
                    && r.is_for(&self.ctx.config.host_name) =>
            {
                self.dispatch(&r.operation.vm, WorkerMsg::Op(r.operation.id));
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "unreadable operation"),
        }
    }

    /// Dispatches every pending operation in the store; returns the revision it listed at.
    async fn dispatch_all_pending(&self) -> anyhow::Result<i64> {
        let (ops, revision) = self.ctx.store.list(OPS_PREFIX).await?;
        for kv in &ops {
            self.dispatch_if_pending(&vessel_store::WatchEvent {
                kind: EventKind::Put,
                kv: kv.clone(),
            });
        }
        Ok(revision)
    }

    /// Every [`RESYNC_PERIOD`], every VM's worker looks at the world again and converges. Events
    /// and operations drive the VMs; this is the safety net for anything they missed, as in
    /// any level-triggered controller.
    async fn resync_periodically(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(RESYNC_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate; start-up already reconciled
        loop {
            ticks.tick().await;
            let names: Vec<String> = self.workers.lock().keys().cloned().collect();
            for name in names {
                self.dispatch(
                    &name,
                    WorkerMsg::Reconcile {
                        adopted: None,
                        converge: true,
                    },
                );
            }
        }
    }

    /// An operation that was running when the daemon died. Convergent ones (start, stop,
    /// pause, ...) are run again: they are idempotent. A reboot is not, so it is failed with
    /// the reason; the VM's state is whatever reconcile finds.
    async fn recover_interrupted(&self, record: &mut OpRecord) -> anyhow::Result<()> {
        if record.operation.vm.is_empty() {
            // A host operation (import, export): its task died with the daemon, and opening the
            // pool removed its temporary files.
            record.operation.status = OperationStatus::Failed;
            record.operation.error = Some(
                "the daemon restarted during the operation; nothing was kept, run it again".into(),
            );
            record.operation.finished_at_ms = Some(now_ms());
        } else if record.operation.action == OperationAction::Reboot {
            record.operation.status = OperationStatus::Failed;
            record.operation.error =
                Some("the daemon restarted during the reboot; check the VM's state and reboot again if needed".into());
            record.operation.finished_at_ms = Some(now_ms());
        } else {
            record.operation.status = OperationStatus::Pending;
            record.resumed = true;
        }
        let txn = Txn::new().then(Op::Put(op_key(&record.operation.id), encode(record)));
        self.ctx.store.txn(txn).await?;
        Ok(())
    }

    async fn prune(&self, mut finished: Vec<(u64, String)>) -> anyhow::Result<()> {
        if finished.len() <= FINISHED_OPS_KEPT {
            return Ok(());
        }
        finished.sort();
        let excess = finished.len() - FINISHED_OPS_KEPT;
        let mut txn = Txn::new();
        for (_, key) in finished.into_iter().take(excess) {
            txn = txn.then(Op::Delete(key));
        }
        self.ctx.store.txn(txn).await?;
        Ok(())
    }
}
