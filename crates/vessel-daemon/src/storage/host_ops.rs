//! Long host-level work (image and volume imports, exports) as operations: recorded in the store
//! like VM operations, run in their own task, with progress, a result, and cancellation.
//!
//! They are not tied to a VM, so no VM worker runs them; the controller skips operations whose
//! `vm` is empty. One that was running when the daemon died is failed at start-up: its temporary
//! files are gone (pools clear them when opened), so nothing half-made remains.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use vessel_api::{ApiError, Operation, OperationAction, OperationStatus};
use vessel_storage::CancelToken;
use vessel_store::{Op, Txn};

use crate::common::errors::store_error;
use crate::ctx::Ctx;
use crate::vm::model::{encode, now_ms, op_key, OpRecord, Payload};

/// Progress is written to the store at most this often (and on every whole 5 %).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// Records a new running host operation and returns it.
/// `project` is that of what it works on (who may see and cancel it).
pub async fn begin(
    ctx: &Ctx,
    action: OperationAction,
    target: String,
    project: &str,
) -> Result<OpRecord, ApiError> {
    let record = OpRecord {
        operation: Operation {
            id: uuid::Uuid::new_v4().to_string(),
            vm: String::new(),
            resource: Some(target),
            project: project.to_string(),
            progress: Some(0.0),
            result: None,
            action,
            status: OperationStatus::Running,
            error: None,
            error_code: None,
            force: false,
            timeout_secs: None,
            created_at_ms: now_ms(),
            finished_at_ms: None,
        },
        target: None,
        payload: Payload::Host(action),
        resumed: false,
        host: ctx.config.host_name.clone(),
    };
    put(ctx, &record).await?;
    Ok(record)
}

async fn put(ctx: &Ctx, record: &OpRecord) -> Result<(), ApiError> {
    let txn = Txn::new().then(Op::Put(op_key(&record.operation.id), encode(record)));
    ctx.store.txn(txn).await.map_err(store_error)?;
    Ok(())
}

/// Where a long task reports its progress, in percent. Cheap and synchronous: the store is
/// written by a separate task, at most every [`PROGRESS_INTERVAL`].
#[derive(Clone)]
pub struct Progress(tokio::sync::watch::Sender<f64>);

impl Progress {
    pub fn report(&self, percent: f64) {
        self.0.send_replace((percent * 10.0).round() / 10.0);
    }
}

async fn write_progress(
    ctx: Arc<Ctx>,
    mut record: OpRecord,
    mut updates: tokio::sync::watch::Receiver<f64>,
) {
    let mut written = None;
    // Ends as soon as every sender is gone, i.e. when the work finished or was dropped, so the
    // operation's final write never waits for a pause here.
    while updates.changed().await.is_ok() {
        loop {
            let percent = *updates.borrow_and_update();
            if written != Some(percent) {
                record.operation.progress = Some(percent);
                if let Err(e) = put(&ctx, &record).await {
                    tracing::warn!(error = %e.message, "cannot record progress");
                }
                written = Some(percent);
            }
            // At most one write per interval; changes meanwhile are taken after it.
            let pause = tokio::time::sleep(PROGRESS_INTERVAL);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    changed = updates.changed() => if changed.is_err() { return },
                }
            }
            if *updates.borrow() == percent {
                break;
            }
        }
    }
}

/// Progress reporting for an operation that some other task (a VM worker) runs: the returned
/// handle ends once every [`Progress`] clone is dropped; await it before the final write.
pub fn track_progress(ctx: Arc<Ctx>, record: OpRecord) -> (Progress, tokio::task::JoinHandle<()>) {
    let (sender, updates) = tokio::sync::watch::channel(0.0);
    (
        Progress(sender),
        tokio::spawn(write_progress(ctx, record, updates)),
    )
}

/// Registers a cancel token for operation `id` until the guard is dropped.
pub fn cancellable(ctx: Arc<Ctx>, id: &str) -> (CancelToken, CancelGuard) {
    let token = CancelToken::new();
    ctx.cancels.lock().insert(id.to_string(), token.clone());
    (
        token,
        CancelGuard {
            ctx,
            id: id.to_string(),
        },
    )
}

pub struct CancelGuard {
    ctx: Arc<Ctx>,
    id: String,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.ctx.cancels.lock().remove(&self.id);
    }
}

/// Runs `work` as operation `record` in its own task: registers a cancel token, records
/// progress and the outcome (result, error, or cancelled), and unregisters. Cancelling drops the
/// work's future, which is how pools and qemu-img runs clean up after themselves.
pub fn run<W, F, E>(ctx: Arc<Ctx>, mut record: OpRecord, cancel: CancelToken, work: W)
where
    W: FnOnce(Progress) -> F + Send + 'static,
    F: Future<Output = Result<serde_json::Value, E>> + Send + 'static,
    E: Into<crate::common::op_error::OpError> + Send + 'static,
{
    let id = record.operation.id.clone();
    ctx.cancels.lock().insert(id.clone(), cancel.clone());
    let (sender, updates) = tokio::sync::watch::channel(0.0);
    let writer = tokio::spawn(write_progress(Arc::clone(&ctx), record.clone(), updates));
    tokio::spawn(async move {
        let outcome = tokio::select! {
            outcome = work(Progress(sender)) => Some(outcome),
            () = cancel.cancelled() => None,
        };
        // The work may see the token first and fail because of it: that is still a cancel.
        let outcome = outcome.filter(|o| o.is_ok() || !cancel.is_cancelled());
        ctx.cancels.lock().remove(&id);
        // The last progress write lands before the final one, never after it.
        let _ = writer.await;
        record.operation.finished_at_ms = Some(now_ms());
        match outcome {
            Some(Ok(result)) => {
                record.operation.status = OperationStatus::Succeeded;
                record.operation.progress = Some(100.0);
                record.operation.result = Some(result);
            }
            Some(Err(error)) => {
                record.operation.status = OperationStatus::Failed;
                error.into().record(&mut record.operation);
            }
            None => {
                record.operation.status = OperationStatus::Cancelled;
                record.operation.error = Some("cancelled on request; nothing was kept".into());
            }
        }
        if let Err(e) = put(&ctx, &record).await {
            tracing::error!(op = %id, error = %e.message, "cannot record the end of an operation");
        }
    });
}

/// Cancels a running long operation.
pub fn cancel(ctx: &Ctx, id: &str) -> bool {
    match ctx.cancels.lock().get(id) {
        Some(token) => {
            token.cancel();
            true
        }
        None => false,
    }
}
