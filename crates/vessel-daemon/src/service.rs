//! The daemon's request logic, between the thin HTTP layer and the store: validate with
//! vessel-core, record desired state and an operation in one transaction, wait for the
//! reconciler to finish it.

use std::sync::Arc;

use vessel_api::{
    ApiError, CreateVmRequest, DesiredState, EditVmRequest, ErrorCode, HostInfo, Operation,
    OperationAction, OperationStatus, Vm, VmState,
};
use vessel_core::{check_action, spec_from_create, validate_name};
use vessel_store::{Compare, Op, StoreError, Txn};

use crate::ctx::Ctx;
use crate::model::{
    decode, encode, now_ms, op_key, spec_key, status_key, vm_view, OpRecord, VmRecord, VmStatus,
    OPS_PREFIX, VMS_PREFIX,
};
use crate::worker::check_files;

/// How often a request retries its transaction when another request changed the VM in between.
const TXN_ATTEMPTS: usize = 5;

#[derive(Clone)]
pub struct Service {
    pub ctx: Arc<Ctx>,
}

/// Options of an action request.
#[derive(Debug, Clone, Default)]
pub struct ActionOptions {
    pub force: bool,
    pub timeout_secs: Option<u64>,
    pub edit: Option<EditVmRequest>,
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::internal(format!("the store failed: {e}"))
}

fn internal(e: anyhow::Error) -> ApiError {
    ApiError::internal(e.to_string())
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("VM {name:?} not found"))
        .with_hint("list VMs with `vessel vm list`")
}

impl Service {
    pub async fn list_vms(&self) -> Result<Vec<Vm>, ApiError> {
        let (kvs, _) = self.ctx.store.list(VMS_PREFIX).await.map_err(store_error)?;
        let mut vms = Vec::with_capacity(kvs.len() / 2);
        let mut pending_spec: Option<VmRecord> = None;
        // Keys sort as vms/<name>/spec then vms/<name>/status, so each spec precedes its status.
        for kv in &kvs {
            if kv.key.ends_with("/spec") {
                if let Some(record) = pending_spec.take() {
                    vms.push(vm_view(&record, &VmStatus::stopped(record.created_at_ms)));
                }
                pending_spec = Some(decode(&kv.key, &kv.value).map_err(internal)?);
            } else if kv.key.ends_with("/status") {
                if let Some(record) = pending_spec.take() {
                    let status: VmStatus = decode(&kv.key, &kv.value).map_err(internal)?;
                    vms.push(vm_view(&record, &status));
                }
            }
        }
        if let Some(record) = pending_spec {
            vms.push(vm_view(&record, &VmStatus::stopped(record.created_at_ms)));
        }
        Ok(vms)
    }

    /// The VM's records and the spec's mod revision (for compare-and-swap).
    async fn load(&self, name: &str) -> Result<(VmRecord, VmStatus, i64), ApiError> {
        validate_name("VM", name).map_err(ApiError::invalid)?;
        let store = &self.ctx.store;
        let spec = store
            .get(&spec_key(name))
            .await
            .map_err(store_error)?
            .ok_or_else(|| not_found(name))?;
        let record: VmRecord = decode(&spec.key, &spec.value).map_err(internal)?;
        let status = match store.get(&status_key(name)).await.map_err(store_error)? {
            Some(kv) => decode(&kv.key, &kv.value).map_err(internal)?,
            None => VmStatus::stopped(record.created_at_ms),
        };
        Ok((record, status, spec.mod_revision))
    }

    pub async fn get_vm(&self, name: &str) -> Result<Vm, ApiError> {
        let (record, status, _) = self.load(name).await?;
        Ok(vm_view(&record, &status))
    }

    /// Records a new VM (and its create operation) atomically; a duplicate name changes nothing.
    pub async fn create_vm(&self, request: &CreateVmRequest) -> Result<Operation, ApiError> {
        validate_name("VM", &request.name).map_err(ApiError::invalid)?;
        let spec = spec_from_create(request, self.ctx.host).map_err(ApiError::invalid)?;
        let desired = if request.start {
            DesiredState::Running
        } else {
            DesiredState::Stopped
        };
        let now = now_ms();
        let record = VmRecord {
            spec,
            desired,
            created_at_ms: now,
        };
        check_files(&record)
            .map_err(|e| ApiError::invalid(e).with_hint("give a path the daemon can read"))?;
        let op = new_op(
            &request.name,
            OperationAction::Create,
            desired,
            ActionOptions::default(),
        );
        let txn = Txn::new()
            .when(Compare::Missing(spec_key(&request.name)))
            .then(Op::Put(spec_key(&request.name), encode(&record)))
            .then(Op::Put(
                status_key(&request.name),
                encode(&VmStatus::stopped(now)),
            ))
            .then(Op::Put(op_key(&op.operation.id), encode(&op)));
        let result = self.ctx.store.txn(txn).await.map_err(store_error)?;
        if !result.succeeded {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("a VM named {:?} already exists", request.name),
            )
            .with_hint("choose another name, or delete the existing VM first"));
        }
        Ok(op.operation)
    }

    /// Checks an action against the VM's current state and records it (with the desired state it
    /// implies) for the VM's worker.
    pub async fn submit(
        &self,
        name: &str,
        action: OperationAction,
        options: ActionOptions,
    ) -> Result<Operation, ApiError> {
        for _ in 0..TXN_ATTEMPTS {
            let (mut record, status, revision) = self.load(name).await?;
            check_action(action, status.state, options.force).map_err(ApiError::conflict)?;
            if let Some(edit) = &options.edit {
                let spec = vessel_core::apply_edit(&record.spec, edit, self.ctx.host)
                    .map_err(ApiError::invalid)?;
                check_files(&VmRecord {
                    spec,
                    ..record.clone()
                })
                .map_err(|e| ApiError::invalid(e).with_hint("give a path the daemon can read"))?;
            }
            let target = desired_after(action, status.state);
            let op = new_op(
                name,
                action,
                target.unwrap_or(record.desired),
                options.clone(),
            );
            let mut txn = Txn::new()
                .when(Compare::ModRevision(spec_key(name), revision))
                .then(Op::Put(op_key(&op.operation.id), encode(&op)));
            if let Some(target) = target {
                record.desired = target;
                txn = txn.then(Op::Put(spec_key(name), encode(&record)));
            }
            if self
                .ctx
                .store
                .txn(txn)
                .await
                .map_err(store_error)?
                .succeeded
            {
                return Ok(op.operation);
            }
        }
        Err(ApiError::conflict(format!(
            "VM {name:?} kept changing while the request was recorded"
        ))
        .with_hint("retry"))
    }

    /// Waits until the operation has finished and returns it.
    pub async fn wait(&self, id: &str) -> Result<Operation, ApiError> {
        let key = op_key(id);
        let mut watch = self.ctx.store.watch(&key, 0).await.map_err(store_error)?;
        let mut current = self.get_operation(id).await?;
        while !current.status.is_terminal() {
            let event = watch.next().await.map_err(store_error)?;
            if event.kv.key == key && !event.kv.value.is_empty() {
                current = decode::<OpRecord>(&key, &event.kv.value)
                    .map_err(internal)?
                    .operation;
            }
        }
        Ok(current)
    }

    pub async fn get_operation(&self, id: &str) -> Result<Operation, ApiError> {
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        {
            return Err(ApiError::invalid(format!("{id:?} is not an operation id")));
        }
        let kv = self
            .ctx
            .store
            .get(&op_key(id))
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                ApiError::not_found(format!("operation {id} not found"))
                    .with_hint("list operations with `vessel operation list`")
            })?;
        Ok(decode::<OpRecord>(&kv.key, &kv.value)
            .map_err(internal)?
            .operation)
    }

    pub async fn list_operations(&self) -> Result<Vec<Operation>, ApiError> {
        let (kvs, _) = self.ctx.store.list(OPS_PREFIX).await.map_err(store_error)?;
        let mut ops = kvs
            .iter()
            .map(|kv| decode::<OpRecord>(&kv.key, &kv.value).map(|r| r.operation))
            .collect::<Result<Vec<_>, _>>()
            .map_err(internal)?;
        ops.sort_by_key(|op| op.created_at_ms);
        Ok(ops)
    }

    pub async fn host_info(&self) -> Result<HostInfo, ApiError> {
        let vms = self.list_vms().await?;
        Ok(HostInfo {
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            cpus: self.ctx.host.cpus,
            memory_mib: self.ctx.host.memory_mib,
            accelerator: self.ctx.accel.accel.as_str().to_string(),
            accelerator_reason: self.ctx.accel.reason.clone(),
            qemu_version: self.ctx.qemu_version.clone(),
            vms_defined: vms.len() as u32,
            vms_running: vms.iter().filter(|vm| vm.state.has_process()).count() as u32,
        })
    }
}

/// The desired state an action sets, if it sets one.
fn desired_after(action: OperationAction, state: VmState) -> Option<DesiredState> {
    match action {
        OperationAction::Start | OperationAction::Resume => Some(DesiredState::Running),
        OperationAction::Stop | OperationAction::Kill => Some(DesiredState::Stopped),
        OperationAction::Pause if state.has_process() => Some(DesiredState::Paused),
        _ => None,
    }
}

fn new_op(
    vm: &str,
    action: OperationAction,
    target: DesiredState,
    options: ActionOptions,
) -> OpRecord {
    OpRecord {
        operation: Operation {
            id: uuid::Uuid::new_v4().to_string(),
            vm: vm.to_string(),
            action,
            status: OperationStatus::Pending,
            error: None,
            force: options.force || action == OperationAction::Kill,
            timeout_secs: options.timeout_secs,
            created_at_ms: now_ms(),
            finished_at_ms: None,
        },
        target: Some(target),
        edit: options.edit,
    }
}
