//! One worker task per VM. Everything that changes a VM — operations, QEMU events, process exit,
//! re-adoption after a restart — goes through its worker, one thing at a time. That is what
//! serializes conflicting requests: there is never a second QEMU for one VM because only this
//! task starts QEMU for it, and it does so only after seeing that none runs.

mod adopt;
mod create;
mod delete;
mod devices;
mod edit;
mod exits;
mod lifecycle;
mod snapshots;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vessel_api::{DesiredState, OperationStatus, VmState};
use vessel_qemu::{Instance, InstanceEvent};
use vessel_store::{Compare, Op, Txn};

use crate::common::op_error::OpError;
use crate::ctx::Ctx;
use crate::vm::model::{
    decode, desired_key, encode, load_vm, now_ms, op_key, spec_key, status_key, Loaded, OpRecord,
    Payload, VmRecord, VmStatus,
};

pub use lifecycle::check_files;

pub enum WorkerMsg {
    /// Carry out the operation with this id.
    Op(String),
    /// Look at the world (adopt a QEMU left by a previous daemon); `adopted` hears when that is
    /// done. Then, if `converge`, drive the VM to its desired state (start-up leaves that to the
    /// VM's unfinished operations when it has some, so that they run with their own options).
    Reconcile {
        adopted: Option<tokio::sync::oneshot::Sender<()>>,
        converge: bool,
    },
}

/// A running QEMU and what we learned about how it is ending.
struct Live {
    instance: Box<dyn Instance>,
    events: mpsc::UnboundedReceiver<InstanceEvent>,
    stop_requested: bool,
    guest_shutdown: bool,
    panicked: bool,
}

pub struct Worker {
    name: String,
    ctx: Arc<Ctx>,
    live: Option<Live>,
    recent_restarts: VecDeque<Instant>,
}

enum Next {
    Msg(Option<WorkerMsg>),
    Event(Option<InstanceEvent>),
}

type OpResult = Result<(), OpError>;

impl Worker {
    pub fn spawn(name: String, ctx: Arc<Ctx>) -> mpsc::UnboundedSender<WorkerMsg> {
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker {
            name,
            ctx,
            live: None,
            recent_restarts: VecDeque::new(),
        };
        tokio::spawn(worker.run(rx));
        tx
    }

    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<WorkerMsg>) {
        loop {
            let next = tokio::select! {
                msg = inbox.recv() => Next::Msg(msg),
                event = next_event(&mut self.live) => Next::Event(event),
            };
            match next {
                Next::Msg(None) => break,
                Next::Msg(Some(WorkerMsg::Op(id))) => self.run_op(&id).await,
                Next::Msg(Some(WorkerMsg::Reconcile { adopted, converge })) => {
                    if let Err(e) = self.observe().await {
                        tracing::error!(vm = %self.name, error = %e, "could not re-adopt the VM");
                    }
                    if let Some(adopted) = adopted {
                        let _ = adopted.send(());
                    }
                    let timeout = Duration::from_secs(self.ctx.config.stop_timeout_secs);
                    if converge {
                        if let Err(e) = self.converge(false, timeout).await {
                            tracing::error!(vm = %self.name, error = %e, "reconcile failed");
                        }
                    }
                }
                Next::Event(Some(event)) => self.on_event(event).await,
                Next::Event(None) => {
                    // The event stream ended without an Exited event; treat the process as gone.
                    self.on_exit("the QEMU event stream ended".into(), false)
                        .await;
                }
            }
        }
    }

    async fn load(&self) -> Result<Option<Loaded>, OpError> {
        load_vm(self.ctx.store.as_ref(), &self.name)
            .await
            .map_err(store_failed)
    }

    /// The VM's records; a VM deleted meanwhile is `not_found`.
    async fn load_existing(&self) -> Result<Loaded, OpError> {
        self.load()
            .await?
            .ok_or_else(|| OpError::not_found(format!("VM {} no longer exists", self.name)))
    }

    /// Writes the observed status, and optionally the desired state with it in one transaction.
    async fn save(&self, status: &VmStatus, desired: Option<DesiredState>) -> OpResult {
        let mut txn = Txn::new().when(Compare::Exists(spec_key(&self.name)));
        txn = txn.then(Op::Put(status_key(&self.name), encode(status)));
        if let Some(desired) = desired {
            txn = txn.then(Op::Put(desired_key(&self.name), encode(&desired)));
        }
        self.ctx.store.txn(txn).await.map_err(store_failed)?;
        Ok(())
    }

    async fn set_state(&self, state: VmState, reason: Option<String>) -> OpResult {
        let Loaded { mut status, .. } = self.load_existing().await?;
        if status.state != state || status.reason != reason {
            status.state = state;
            status.reason = reason;
            status.state_changed_at_ms = now_ms();
            self.save(&status, None).await?;
        }
        Ok(())
    }

    /// `txn` with the write of the VM's spec, on the condition that the VM still exists.
    fn with_spec(&self, txn: Txn, vm: &VmRecord) -> Txn {
        txn.when(Compare::Exists(spec_key(&self.name)))
            .then(Op::Put(spec_key(&self.name), encode(vm)))
    }

    async fn put_spec(&self, vm: &VmRecord) -> OpResult {
        let txn = self.with_spec(Txn::new(), vm);
        self.ctx.store.txn(txn).await.map_err(store_failed)?;
        Ok(())
    }

    async fn run_op(&mut self, id: &str) {
        let record = match self.ctx.store.get(&op_key(id)).await {
            Ok(Some(kv)) => match decode::<OpRecord>(&kv.key, &kv.value) {
                Ok(record) => record,
                Err(e) => return tracing::error!(op = id, error = %e, "unreadable operation"),
            },
            Ok(None) => return,
            Err(e) => return tracing::error!(op = id, error = %e, "cannot read operation"),
        };
        if record.operation.status != OperationStatus::Pending {
            return; // dispatched twice (watch and bootstrap); already handled
        }
        let mut record = record;
        record.operation.status = OperationStatus::Running;
        self.put_op(&record).await;
        let result = self.execute(&record).await;
        record.operation.finished_at_ms = Some(now_ms());
        match result {
            Ok(()) => record.operation.status = OperationStatus::Succeeded,
            Err(error) => {
                tracing::warn!(vm = %self.name, op = id, action = record.operation.action.as_str(), "{error}");
                record.operation.status = OperationStatus::Failed;
                error.record(&mut record.operation);
            }
        }
        self.put_op(&record).await;
    }

    async fn put_op(&self, record: &OpRecord) {
        let txn = Txn::new().then(Op::Put(op_key(&record.operation.id), encode(record)));
        if let Err(e) = self.ctx.store.txn(txn).await {
            tracing::error!(op = %record.operation.id, error = %e, "cannot record operation");
        }
    }

    /// Hands the operation to its handler. Each handler returns an [`OpError`] whose code says
    /// whose fault a failure is, so that a refusal found here is answered like one found by the
    /// request (409 for a conflict or a quota, 400 for bad input, 404 for something gone).
    async fn execute(&mut self, record: &OpRecord) -> OpResult {
        let op = &record.operation;
        let default_timeout = Duration::from_secs(self.ctx.config.stop_timeout_secs);
        match &record.payload {
            Payload::Reboot { force: true } => self.hard_reset().await,
            Payload::Reboot { force: false } => self.clean_reboot(default_timeout).await,
            Payload::Edit(edit) => self.apply_edit(edit).await,
            Payload::AttachDisk(disk) => self.attach_disk(disk, record.resumed).await,
            Payload::DetachDisk(disk) => self.detach_disk(disk, record.resumed).await,
            Payload::ResizeDisk { disk, size_bytes } => self.resize_disk(disk, *size_bytes).await,
            Payload::SnapshotCreate(request) => self.snapshot_create(request).await,
            Payload::SnapshotRevert { name } => self.snapshot_revert(name, default_timeout).await,
            Payload::SnapshotDelete { name } => self.snapshot_delete(name).await,
            Payload::AddNic(nic) => self.add_nic(nic).await,
            Payload::RemoveNic(nic) => self.remove_nic(nic).await,
            Payload::Delete { force } => self.delete(*force).await,
            Payload::Create {
                provision: Some(plan),
            } => {
                self.provision(&op.id, plan).await?;
                self.converge(false, default_timeout).await
            }
            Payload::Stop {
                force,
                timeout_secs,
            } => {
                let timeout = timeout_secs.map_or(default_timeout, Duration::from_secs);
                self.converge_unless_superseded(record.target, *force, timeout)
                    .await
            }
            Payload::Kill => {
                self.converge_unless_superseded(record.target, true, default_timeout)
                    .await
            }
            Payload::Create { provision: None }
            | Payload::Start
            | Payload::Pause
            | Payload::Resume
            | Payload::Restart => {
                self.converge_unless_superseded(record.target, false, default_timeout)
                    .await
            }
            Payload::Host(action) => Err(OpError::failed(format!(
                "{} is a host operation; a VM's worker does not carry it out",
                action.as_str()
            ))),
        }
    }

    /// Drives the VM to the desired state the request set, unless a later request has changed
    /// it since (that request's operation does the work).
    async fn converge_unless_superseded(
        &mut self,
        target: Option<DesiredState>,
        force: bool,
        timeout: Duration,
    ) -> OpResult {
        let Loaded { desired, .. } = self.load_existing().await?;
        if target.is_some_and(|target| target != desired) {
            return Err(OpError::conflict(format!(
                "superseded by a later request: the desired state is now {}",
                desired.as_str()
            )));
        }
        self.converge(force, timeout).await
    }
}

/// Waits for the next instance event, or forever when no instance runs.
async fn next_event(live: &mut Option<Live>) -> Option<InstanceEvent> {
    match live {
        Some(live) => live.events.recv().await,
        None => std::future::pending().await,
    }
}

/// A store failure: the operation failed, not the caller.
fn store_failed(e: impl std::fmt::Display) -> OpError {
    OpError::failed(e.to_string())
}

/// Whether the VM's state (now, when the operation runs) allows the action: a refusal is a
/// conflict, as when the request finds it.
fn check_action(action: vessel_api::OperationAction, state: VmState) -> OpResult {
    vessel_core::check_action(action, state, false).map_err(OpError::conflict)
}
