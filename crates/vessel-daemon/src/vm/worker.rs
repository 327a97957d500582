//! One worker task per VM. Everything that changes a VM — operations, QEMU events, process exit,
//! re-adoption after a restart — goes through its worker, one thing at a time. That is what
//! serializes conflicting requests: there is never a second QEMU for one VM because only this
//! task starts QEMU for it, and it does so only after seeing that none runs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vessel_api::{Boot, DesiredState, OperationAction, OperationStatus, VmState};
use vessel_core::{after_exit, ExitKind, RestartDecision};
use vessel_qemu::{Instance, InstanceEvent, LaunchRequest, ProcessId, RunFiles};
use vessel_store::{Compare, Op, Txn};

use crate::common::errors::error_chain;
use crate::common::op_error::OpError;
use crate::ctx::Ctx;
use crate::vm::cloud_init;
use crate::vm::disks;
use crate::vm::model::{
    decode, desired_key, encode, load_vm, now_ms, op_key, spec_key, status_key, vm_prefix, Loaded,
    OpRecord, VmRecord, VmStatus,
};
use crate::vm::provision;
use crate::vm::snapshot_quota;
use crate::vm::snapshots;

/// Restarts allowed within [`RESTART_WINDOW`] before the policy gives up on a crash loop.
const RESTART_BURST: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How long a guest may take to let go of a hot-unplugged disk.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(30);

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

    // ----- store access -------------------------------------------------------------------

    async fn load(&self) -> Result<Option<Loaded>, String> {
        load_vm(self.ctx.store.as_ref(), &self.name)
            .await
            .map_err(|e| e.to_string())
    }

    async fn load_existing(&self) -> Result<Loaded, String> {
        self.load()
            .await?
            .ok_or_else(|| format!("VM {} no longer exists", self.name))
    }

    /// Writes the observed status, and optionally the desired state with it in one transaction.
    async fn save(&self, status: &VmStatus, desired: Option<DesiredState>) -> Result<(), String> {
        let mut txn = Txn::new().when(Compare::Exists(spec_key(&self.name)));
        txn = txn.then(Op::Put(status_key(&self.name), encode(status)));
        if let Some(desired) = desired {
            txn = txn.then(Op::Put(desired_key(&self.name), encode(&desired)));
        }
        self.ctx.store.txn(txn).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn set_state(&self, state: VmState, reason: Option<String>) -> Result<(), String> {
        let Loaded { mut status, .. } = self.load_existing().await?;
        if status.state != state || status.reason != reason {
            status.state = state;
            status.reason = reason;
            status.state_changed_at_ms = now_ms();
            self.save(&status, None).await?;
        }
        Ok(())
    }

    // ----- operations -----------------------------------------------------------------------

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

    async fn execute(&mut self, record: &OpRecord) -> OpResult {
        let op = &record.operation;
        let timeout =
            Duration::from_secs(op.timeout_secs.unwrap_or(self.ctx.config.stop_timeout_secs));
        match op.action {
            OperationAction::Reboot if op.force => self.hard_reset().await,
            OperationAction::Reboot => self.clean_reboot(timeout).await,
            OperationAction::Edit => self.apply_edit(record).await,
            OperationAction::AttachDisk => self.attach_disk(record).await,
            OperationAction::ResizeDisk => self.resize_disk(record).await,
            OperationAction::SnapshotCreate => self.snapshot_create(record).await,
            OperationAction::SnapshotRevert => self.snapshot_revert(record, timeout).await,
            OperationAction::SnapshotDelete => self.snapshot_delete(record).await,
            OperationAction::Create if record.provision.is_some() => {
                self.provision(record).await?;
                self.converge(op.force, timeout).await
            }
            OperationAction::DetachDisk => self.detach_disk(record).await,
            OperationAction::AddNic => self.add_nic(record).await,
            OperationAction::RemoveNic => self.remove_nic(record).await,
            OperationAction::Delete => self.delete(op.force).await,
            _ => {
                let Loaded { desired, .. } = self.load_existing().await?;
                if let Some(target) = record.target {
                    if desired != target {
                        return Err(format!(
                            "superseded by a later request: the desired state is now {}",
                            desired.as_str()
                        )
                        .into());
                    }
                }
                self.converge(op.force, timeout).await
            }
        }
    }

    /// Drives the VM to its desired state. Safe to call at any time; does nothing when the VM
    /// already is where it should be.
    async fn converge(&mut self, force: bool, timeout: Duration) -> OpResult {
        let Loaded {
            desired, status, ..
        } = self.load_existing().await?;
        match (desired, self.live.is_some()) {
            (DesiredState::Running, false) => self.start(false).await,
            (DesiredState::Running, true) if status.state == VmState::Paused => self.resume().await,
            (DesiredState::Paused, true) if status.state != VmState::Paused => self.pause().await,
            (DesiredState::Paused, false) => {
                Err("the VM is not running, so it cannot be paused; start it first".into())
            }
            (DesiredState::Stopped, true) => self.stop(force, timeout, "stop").await,
            // Nothing to do; the record still has to say what the process is.
            _ => self.settle_state().await,
        }
    }

    async fn start(&mut self, restart: bool) -> OpResult {
        let Loaded {
            record: vm,
            mut status,
            ..
        } = self.load_existing().await?;
        if let Err(problem) = check_files(&vm) {
            self.save(
                &failed_start(&status, &problem),
                Some(DesiredState::Stopped),
            )
            .await?;
            return Err(problem.into());
        }
        let request = match self.prepare_launch(&vm).await {
            Ok(request) => request,
            Err(problem) => {
                self.save(
                    &failed_start(&status, &problem),
                    Some(DesiredState::Stopped),
                )
                .await?;
                return Err(problem.into());
            }
        };
        status.state = VmState::Starting;
        status.reason = None;
        self.save(&status, None).await?;
        let launched = self.ctx.backend.launch(&request).await;
        // QEMU has the seed open (or failed); the plaintext user-data leaves the disk either way.
        if let Some(seed) = &request.seed {
            let _ = std::fs::remove_file(seed);
        }
        let instance = match launched {
            Ok(instance) => instance,
            Err(e) => {
                let problem = format!("QEMU could not start the VM: {}", error_chain(&e));
                self.save(
                    &failed_start(&status, &problem),
                    Some(DesiredState::Stopped),
                )
                .await?;
                return Err(problem.into());
            }
        };
        self.adopt_started(instance, restart).await
    }

    /// Takes charge of a QEMU this worker just started: console, events, recorded status.
    async fn adopt_started(&mut self, instance: Box<dyn Instance>, restart: bool) -> OpResult {
        let (pid, uid) = self.take_charge(instance);
        let Loaded { mut status, .. } = self.load_existing().await?;
        status.state = VmState::Running;
        status.reason = None;
        status.pid = Some(pid.pid);
        status.pid_start_time = Some(pid.start_time);
        status.accelerator = Some(self.ctx.accel.accel.as_str().to_string());
        status.state_changed_at_ms = now_ms();
        if restart {
            status.restart_count += 1;
        }
        self.save(&status, None).await?;
        self.ctx
            .event(&self.name, format!("started (QEMU pid {}{})", pid.pid, uid))
            .await;
        Ok(())
    }

    /// Makes `instance` this worker's live QEMU: its console, statistics and events. Returns its
    /// identity and, for events, its uid.
    fn take_charge(&mut self, mut instance: Box<dyn Instance>) -> (ProcessId, String) {
        self.attach(&mut instance);
        self.ctx
            .sampler
            .register(&self.name, instance.stats_probe());
        let pid = instance.pid();
        let uid = describe_uid(instance.as_ref());
        let events = instance.take_events().expect("fresh instance has events");
        self.live = Some(Live {
            instance,
            events,
            stop_requested: false,
            guest_shutdown: false,
            panicked: false,
        });
        (pid, uid)
    }

    fn launch_request(&self, vm: &VmRecord, disks: Vec<vessel_qemu::DiskFile>) -> LaunchRequest {
        LaunchRequest {
            spec: vm.spec.clone(),
            accel: self.ctx.accel.accel,
            run_dir: self.ctx.vm_dir(&self.name),
            disks,
            seed: None,
            nics: Vec::new(),
            boot_files: Vec::new(),
        }
    }

    /// Resolves the disks and checks that no other running VM writes one of them.
    async fn prepare_launch(&self, vm: &VmRecord) -> Result<LaunchRequest, String> {
        let disks = disks::resolve_disks(&self.ctx, &vm.project, &vm.spec).await?;
        let vms = self.ctx.view.all().await.map_err(|e| e.to_string())?;
        for disk in &vm.spec.disks {
            let users = disks::conflicting_users(&vms, &self.name, disk);
            if !users.is_empty() {
                return Err(format!(
                    "volume {:?} of pool {:?} is in use by running VM {}; stop it or detach the volume there first",
                    disk.volume,
                    disk.pool,
                    users.join(", ")
                ));
            }
        }
        let mut request = self.launch_request(vm, disks);
        request.boot_files =
            crate::storage::host_paths::open_boot_files(&self.ctx.config, &vm.spec.boot)?;
        request.nics = crate::network::host::plan_nics(&self.ctx, &vm.spec).await?;
        request.seed = cloud_init::write_seed(&self.ctx, vm, &request.run_dir).await?;
        Ok(request)
    }

    fn attach(&self, instance: &mut Box<dyn Instance>) {
        if let Some(console) = instance.take_console() {
            self.ctx.console(&self.name).attach(console);
        }
    }

    /// ACPI power-down, then a forced kill if the guest does not go within `timeout` (a guest
    /// may ignore the button: no acpid yet, or none at all). An event says which happened;
    /// `purpose` ("stop", "reboot", ...) names what the power-off was for.
    async fn stop(&mut self, force: bool, timeout: Duration, purpose: &str) -> OpResult {
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        live.stop_requested = true;
        if force {
            return self.kill_and_reap().await;
        }
        self.set_state(VmState::Stopping, None).await?;
        let live = self.live.as_mut().expect("checked above");
        let pressed = Instant::now();
        let why_forced = match live.instance.power_down().await {
            Err(e) => format!(
                "the ACPI power button could not be pressed ({})",
                error_chain(&e)
            ),
            Ok(()) => match self.wait_for_exit(timeout).await {
                Some((detail, clean)) => {
                    let after = pressed.elapsed().as_secs_f64();
                    self.on_exit(detail, clean).await;
                    self.ctx
                        .event(
                            &self.name,
                            format!("{purpose}: the guest powered off {after:.1} s after the ACPI power button"),
                        )
                        .await;
                    return Ok(());
                }
                None => format!(
                    "the guest did not power off within {} s of the ACPI power button",
                    timeout.as_secs()
                ),
            },
        };
        self.ctx
            .event(
                &self.name,
                format!("{purpose}: {why_forced}; forced stop (QEMU killed)"),
            )
            .await;
        self.kill_and_reap().await
    }

    async fn kill_and_reap(&mut self) -> OpResult {
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        live.stop_requested = true;
        live.instance
            .kill()
            .map_err(|e| format!("could not kill QEMU: {}", error_chain(&e)))?;
        match self.wait_for_exit(Duration::from_secs(30)).await {
            Some((detail, clean)) => {
                self.on_exit(detail, clean).await;
                Ok(())
            }
            None => Err("QEMU did not exit within 30 s of SIGKILL".into()),
        }
    }

    /// Waits for the process to end, noting shutdown events on the way.
    async fn wait_for_exit(&mut self, timeout: Duration) -> Option<(String, bool)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let live = self.live.as_mut()?;
            match tokio::time::timeout_at(deadline, live.events.recv()).await {
                Err(_) => return None,
                Ok(None) => return Some(("the QEMU event stream ended".into(), false)),
                Ok(Some(InstanceEvent::Exited { detail, clean })) => return Some((detail, clean)),
                Ok(Some(other)) => note_event(live, &other),
            }
        }
    }

    async fn pause(&mut self) -> OpResult {
        let live = self.live.as_ref().ok_or("the VM is not running")?;
        live.instance
            .pause()
            .await
            .map_err(|e| format!("pause failed: {}", error_chain(&e)))?;
        Ok(self.set_state(VmState::Paused, None).await?)
    }

    async fn resume(&mut self) -> OpResult {
        let live = self.live.as_ref().ok_or("the VM is not running")?;
        live.instance
            .resume()
            .await
            .map_err(|e| format!("resume failed: {}", error_chain(&e)))?;
        Ok(self.set_state(VmState::Running, None).await?)
    }

    async fn hard_reset(&mut self) -> OpResult {
        let live = self
            .live
            .as_ref()
            .ok_or("the VM is not running; start it instead")?;
        live.instance
            .reset()
            .await
            .map_err(|e| format!("reset failed: {}", error_chain(&e)))?;
        self.ctx.event(&self.name, "hard reset").await;
        Ok(())
    }

    /// Clean reboot: ACPI power-down (forced after the timeout), then a fresh start, so that a
    /// spec edited meanwhile takes effect — like Proxmox's reboot.
    async fn clean_reboot(&mut self, timeout: Duration) -> OpResult {
        if self.live.is_none() {
            return Err("the VM is not running; start it instead".into());
        }
        self.stop(false, timeout, "reboot").await?;
        self.save(
            &self.load_existing().await?.status,
            Some(DesiredState::Running),
        )
        .await?;
        self.start(false).await
    }

    async fn apply_edit(&mut self, record: &OpRecord) -> OpResult {
        let edit = record
            .edit
            .as_ref()
            .ok_or("edit operation without an edit")?;
        let Loaded {
            record: mut vm,
            status,
            ..
        } = self.load_existing().await?;
        vessel_core::check_action(OperationAction::Edit, status.state, false)?;
        let before = vm.clone();
        vm.spec = vessel_core::apply_edit(&vm.spec, edit, self.ctx.host)?;
        check_files(&vm)?;
        self.put_spec_within_quota(&before, &vm, Txn::new()).await?;
        self.ctx.event(&self.name, "spec edited").await;
        Ok(())
    }

    /// Writes an edited (or reverted) spec, with `also` in the same transaction. When it grows
    /// the VM, the project's quota is checked again here, in the same transaction as the write
    /// (the request's check ran earlier, and another edit or create may have used the room
    /// since): of two racing growths only one can fit.
    async fn put_spec_within_quota(
        &self,
        before: &VmRecord,
        after: &VmRecord,
        also: Txn,
    ) -> OpResult {
        let store = self.ctx.store.as_ref();
        for _ in 0..crate::access::projects::MAX_ATTEMPTS {
            // A refusal keeps its code: the request is answered 409, not 500.
            let guard = crate::access::projects::reserve_growth(store, before, after).await?;
            let guarded = guard.is_some();
            let mut txn = also
                .clone()
                .when(Compare::Exists(spec_key(&self.name)))
                .then(Op::Put(spec_key(&self.name), encode(after)));
            if let Some(guard) = guard {
                txn = guard.apply(txn);
            }
            if self
                .ctx
                .store
                .txn(txn)
                .await
                .map_err(|e| e.to_string())?
                .succeeded
            {
                return Ok(());
            }
            if !guarded {
                return Err("the VM was deleted during the edit".into());
            }
        }
        Err(crate::access::projects::contended(&before.project).into())
    }

    /// Makes a new VM's root disk from its image. On failure the whole create is undone: the
    /// VM's records, its cloud-init data and anything made for the disk go, as if the request
    /// had never been made.
    async fn provision(&mut self, record: &OpRecord) -> OpResult {
        let plan = record.provision.as_ref().ok_or("nothing to provision")?;
        let vm = self.load_existing().await?.record;
        let root = vm
            .spec
            .disks
            .first()
            .ok_or("the VM has no root disk")?
            .clone();
        let made = provision::make_root_disk(&self.ctx, &record.operation.id, plan, &root).await;
        let virtual_bytes = match made {
            Ok(bytes) => bytes,
            Err(problem) => {
                self.undo_create(&vm, &root).await;
                return Err(problem);
            }
        };
        // The reservation made with the VM becomes the size the disk was made with.
        crate::storage::ownership::record_size(&self.ctx, &root.pool, &root.volume, virtual_bytes)
            .await?;
        Ok(())
    }

    /// Undoes a create whose root disk could not be made: the VM's records, its cloud-init
    /// data, its disk's quota reservation and its NICs' addresses go.
    async fn undo_create(&mut self, vm: &VmRecord, root: &vessel_api::VmDisk) {
        let mut txn = Txn::new()
            .then(Op::DeletePrefix(vm_prefix(&self.name)))
            .then(Op::Delete(crate::storage::ownership::key(
                &self.ctx.config.host_name,
                &root.pool,
                &root.volume,
            )));
        for nic in &vm.spec.nics {
            txn = crate::network::service::release(txn, nic);
        }
        if let Err(e) = self.ctx.store.txn(txn).await {
            tracing::error!(vm = %self.name, error = %e, "could not undo a failed create");
        }
        self.ctx.forget_console(&self.name);
    }

    /// Grows a disk of the running VM through QEMU.
    async fn resize_disk(&mut self, record: &OpRecord) -> OpResult {
        let disk = record
            .disk
            .as_ref()
            .ok_or("resize operation without a disk")?;
        let size = record.size_bytes.ok_or("resize operation without a size")?;
        let live = self
            .live
            .as_ref()
            .ok_or("the VM stopped meanwhile; resize the volume again (offline)")?;
        let Loaded { record: vm, .. } = self.load_existing().await?;
        let node = if vm
            .spec
            .disks
            .iter()
            .any(|d| d.pool == disk.pool && d.volume == disk.volume)
        {
            vessel_core::disk_node_name(&disk.pool, &disk.volume)
        } else {
            vessel_qemu::snapshot::BOOT_DISK_NODE.to_string()
        };
        live.instance
            .resize_disk(&node, size)
            .await
            .map_err(|e| format!("QEMU could not resize the disk: {}", error_chain(&e)))?;
        self.ctx
            .event(
                &self.name,
                format!("disk {}/{} grown to {size} bytes", disk.pool, disk.volume),
            )
            .await;
        Ok(())
    }

    // ----- snapshots ------------------------------------------------------------------------

    /// The QMP node names of the running VM's writable disks (the first holds memory state).
    async fn live_disk_nodes(&self, vm: &VmRecord) -> Result<Vec<String>, String> {
        let disks = disks::resolve_disks(&self.ctx, &vm.project, &vm.spec).await?;
        let nodes = vessel_qemu::snapshot::vm_disk_nodes(&self.launch_request(vm, disks));
        if nodes.is_empty() {
            return Err("the VM has no writable disk to snapshot".into());
        }
        Ok(nodes)
    }

    /// Takes the snapshot (live over QMP, or offline with qemu-img); returns the size of the
    /// memory state it saved (0 without memory).
    async fn take_snapshot(
        &self,
        request: &vessel_api::CreateSnapshotRequest,
        vm: &VmRecord,
    ) -> Result<u64, OpError> {
        let mut vm_state_bytes = 0;
        match &self.live {
            Some(live) => {
                let nodes = self.live_disk_nodes(vm).await?;
                if request.memory {
                    live.instance
                        .snapshot_save(&request.name, &nodes[0], &nodes)
                        .await
                        .map_err(|e| error_chain(&e))?;
                    vm_state_bytes = live
                        .instance
                        .snapshot_list(&nodes[0])
                        .await
                        .ok()
                        .and_then(|list| list.into_iter().find(|s| s.name == request.name))
                        .map_or(0, |s| s.vm_state_bytes);
                } else {
                    // With a guest agent, the guest's file systems are frozen for the snapshot,
                    // so it holds no half-written file-system state; without one it is
                    // crash-consistent (all disks at one instant).
                    let agent = crate::vm::guest::agent(&self.ctx, &self.name);
                    let pid = live.instance.pid().pid;
                    let frozen = if crate::vm::guest::agent_answers(&self.ctx, &self.name, pid, &agent).await {
                        match agent.freeze().await {
                            Ok(n) => {
                                self.ctx
                                    .event(
                                        &self.name,
                                        format!("{n} guest file systems frozen for snapshot {}", request.name),
                                    )
                                    .await;
                                true
                            }
                            Err(e) => {
                                tracing::warn!(vm = %self.name, error = %e, "could not freeze the guest's file systems; the snapshot is crash-consistent");
                                false
                            }
                        }
                    } else {
                        false
                    };
                    let taken = live.instance.snapshot_disks(&nodes, &request.name).await;
                    if frozen {
                        if let Err(e) = agent.thaw().await {
                            self.ctx
                                .alert(&self.name, format!("could not thaw the guest's file systems after a snapshot: {e}"))
                                .await;
                        }
                    }
                    let pause = taken.map_err(|e| error_chain(&e))?;
                    tracing::info!(vm = %self.name, snapshot = %request.name, pause_ms = pause.as_millis() as u64, "disk snapshot taken");
                }
            }
            None if request.memory => {
                return Err(
                    "the VM is not running, so there is no running state to save; drop --memory or start it".into(),
                )
            }
            None => {
                let disks = disks::resolve_disks(&self.ctx, &vm.project, &vm.spec).await?;
                snapshots::offline(&vm.spec, &disks, &request.name, snapshots::Offline::Create)
                    .await?;
            }
        }
        Ok(vm_state_bytes)
    }

    async fn snapshot_create(&mut self, record: &OpRecord) -> OpResult {
        let request = record
            .snapshot
            .clone()
            .ok_or("snapshot operation without a snapshot")?;
        let Loaded { record: vm, .. } = self.load_existing().await?;
        let (_, head) = snapshots::load(&self.ctx, &self.name).await?;
        // Its share of the disk quota is reserved before it is taken (a refusal keeps its
        // code: 409 quota_exceeded), and settled to what it measured after.
        let store = self.ctx.store.as_ref();
        let pinned = snapshot_quota::pinned_bytes(&self.ctx, &vm).await?;
        let estimate = snapshot_quota::estimate(&vm, request.memory, pinned);
        snapshot_quota::reserve(store, &vm, &request.name, estimate).await?;
        let vm_state_bytes = match self.take_snapshot(&request, &vm).await {
            Ok(bytes) => bytes,
            Err(e) => {
                if let Err(undo) = snapshot_quota::release(store, &self.name, &request.name).await {
                    tracing::warn!(vm = %self.name, error = %undo.message, "could not give back a snapshot's reservation");
                }
                return Err(e);
            }
        };
        snapshot_quota::settle(store, &vm, &request.name, vm_state_bytes + pinned).await?;
        let saved = snapshots::SnapshotRecord {
            name: request.name.clone(),
            created_at_ms: now_ms(),
            memory: request.memory,
            vm_state_bytes,
            parent: head,
            spec: vm.spec.clone(),
        };
        snapshots::save_new(&self.ctx, &self.name, &saved).await?;
        self.ctx
            .event(&self.name, format!("snapshot {} taken", request.name))
            .await;
        Ok(())
    }

    /// Reverts to a snapshot. Whatever ran is discarded. With memory state the VM resumes
    /// where the snapshot left it (running); a disk-only revert leaves the VM stopped.
    async fn snapshot_revert(&mut self, record: &OpRecord, timeout: Duration) -> OpResult {
        let request = record
            .snapshot
            .clone()
            .ok_or("snapshot operation without a snapshot")?;
        let snapshot = snapshots::record(&self.ctx, &self.name, &request.name).await?;
        // Refused before anything is stopped when the restored CPUs and memory do not fit the
        // project's quota; checked again atomically with the write below.
        let current = self.load_existing().await?.record;
        crate::access::projects::reserve_growth(
            self.ctx.store.as_ref(),
            &current,
            &snapshots::restored(&current, &snapshot),
        )
        .await?;
        if self.live.is_some() {
            // The current state is being thrown away: no need to wait for a clean shutdown.
            self.save(
                &self.load_existing().await?.status,
                Some(DesiredState::Stopped),
            )
            .await?;
            self.stop(true, timeout, "snapshot revert").await?;
        }
        let Loaded { record: vm, .. } = self.load_existing().await?;
        // The snapshot's spec: the disks (and settings) the snapshot was taken with.
        let restored = snapshots::restored(&vm, &snapshot);
        let head = snapshots::reverted_head(&self.name, &snapshot.name);
        self.put_spec_within_quota(&vm, &restored, head).await?;
        let Loaded { record: vm, .. } = self.load_existing().await?;
        let disks = disks::resolve_disks(&self.ctx, &vm.project, &vm.spec).await?;
        if snapshot.memory {
            let request = self.prepare_launch(&vm).await?;
            let nodes = vessel_qemu::snapshot::vm_disk_nodes(&request);
            let launched = self.ctx.backend.launch_paused(&request).await;
            if let Some(seed) = &request.seed {
                let _ = std::fs::remove_file(seed);
            }
            let instance = launched
                .map_err(|e| format!("QEMU could not start the VM: {}", error_chain(&e)))?;
            if let Err(e) = instance
                .snapshot_load(&snapshot.name, &nodes[0], &nodes)
                .await
            {
                let _ = instance.kill();
                return Err(format!("loading the snapshot failed: {}", error_chain(&e)).into());
            }
            instance
                .resume()
                .await
                .map_err(|e| format!("resume failed: {}", error_chain(&e)))?;
            self.adopt_started(instance, false).await?;
            self.save(
                &self.load_existing().await?.status,
                Some(DesiredState::Running),
            )
            .await?;
        } else {
            snapshots::offline(&vm.spec, &disks, &snapshot.name, snapshots::Offline::Revert)
                .await?;
        }
        self.ctx
            .event(
                &self.name,
                format!("reverted to snapshot {}", snapshot.name),
            )
            .await;
        Ok(())
    }

    async fn snapshot_delete(&mut self, record: &OpRecord) -> OpResult {
        let request = record
            .snapshot
            .clone()
            .ok_or("snapshot operation without a snapshot")?;
        let snapshot = snapshots::record(&self.ctx, &self.name, &request.name).await?;
        // The disks it was taken on (disks attached since do not have it).
        let spec = snapshot.spec.clone();
        match &self.live {
            Some(live) => {
                let Loaded { record: mut vm, .. } = self.load_existing().await?;
                vm.spec.disks.retain(|d| spec.disks.contains(d));
                let nodes = self.live_disk_nodes(&vm).await?;
                live.instance
                    .snapshot_delete(&nodes, &snapshot.name)
                    .await
                    .map_err(|e| error_chain(&e))?;
            }
            None => {
                let project = self.load_existing().await?.record.project;
                let disks = disks::resolve_disks(&self.ctx, &project, &spec).await?;
                snapshots::offline(&spec, &disks, &snapshot.name, snapshots::Offline::Delete)
                    .await?;
            }
        }
        snapshots::forget(&self.ctx, &self.name, &snapshot.name).await?;
        snapshot_quota::release(self.ctx.store.as_ref(), &self.name, &snapshot.name).await?;
        self.ctx
            .event(&self.name, format!("snapshot {} deleted", snapshot.name))
            .await;
        Ok(())
    }

    async fn attach_disk(&mut self, record: &OpRecord) -> OpResult {
        let disk = record
            .disk
            .clone()
            .ok_or("attach operation without a disk")?;
        let Loaded {
            record: mut vm,
            status,
            ..
        } = self.load_existing().await?;
        vessel_core::check_action(OperationAction::AttachDisk, status.state, false)?;
        // Re-run after a daemon restart: the spec may list the disk already (the restart came
        // after the spec write); what remains is to make sure QEMU has it.
        let done = record.resumed
            && vessel_core::disks::find_disk(&vm.spec, &disk.pool, &disk.volume).is_some();
        if !done {
            vm.spec = vessel_core::attach_disk(&vm.spec, disk.clone())?;
        }
        crate::storage::ownership::require_in_project(
            &self.ctx,
            &disk.pool,
            &disk.volume,
            &vm.project,
        )
        .await?;
        if let Some(live) = &self.live {
            let vms = self.ctx.view.all().await.map_err(|e| e.to_string())?;
            let users = disks::conflicting_users(&vms, &self.name, &disk);
            if !users.is_empty() {
                return Err(format!(
                    "volume {:?} is in use by running VM {}",
                    disk.volume,
                    users.join(", ")
                )
                .into());
            }
            let file = disks::resolve_disk(&self.ctx, &vm.project, &disk).await?;
            live.instance
                .attach_disk(&file)
                .await
                .map_err(|e| format!("hot-plug failed: {}", error_chain(&e)))?;
        }
        self.put_spec(&vm).await?;
        self.ctx
            .event(
                &self.name,
                format!("disk {}/{} attached", disk.pool, disk.volume),
            )
            .await;
        Ok(())
    }

    async fn detach_disk(&mut self, record: &OpRecord) -> OpResult {
        let disk = record
            .disk
            .clone()
            .ok_or("detach operation without a disk")?;
        let Loaded {
            record: mut vm,
            status,
            ..
        } = self.load_existing().await?;
        vessel_core::check_action(OperationAction::DetachDisk, status.state, false)?;
        // Re-run after a daemon restart: the spec may not list the disk any more (the restart
        // came after the spec write); what remains is to make sure QEMU has nothing of it.
        let done = record.resumed
            && vessel_core::disks::find_disk(&vm.spec, &disk.pool, &disk.volume).is_none();
        if !done {
            vm.spec = vessel_core::detach_disk(&vm.spec, &disk.pool, &disk.volume)?;
        }
        if self.live.is_some() {
            self.unplug(&vessel_core::disk_node_name(&disk.pool, &disk.volume))
                .await?;
        }
        self.put_spec(&vm).await?;
        self.ctx
            .event(
                &self.name,
                format!("disk {}/{} detached", disk.pool, disk.volume),
            )
            .await;
        Ok(())
    }

    async fn add_nic(&mut self, record: &OpRecord) -> OpResult {
        let nic = record
            .nic
            .clone()
            .ok_or("add-nic operation without a NIC")?;
        let result = self.plug_nic(nic.clone()).await;
        if result.is_err() {
            // Give the address and MAC back: the request failed as a whole.
            let txn = crate::network::service::release(Txn::new(), &nic);
            if let Err(e) = self.ctx.store.txn(txn).await {
                tracing::warn!(vm = %self.name, error = %e, "could not release a failed NIC's address");
            }
        }
        result
    }

    /// Records the NIC (so that its port rules exist before its tap does), then hot-plugs it
    /// into a running VM; a failed hot-plug takes the record back.
    async fn plug_nic(&mut self, mut nic: vessel_api::VmNic) -> OpResult {
        let Loaded {
            record: mut vm,
            status,
            ..
        } = self.load_existing().await?;
        vessel_core::check_action(OperationAction::AddNic, status.state, false)?;
        if vm.spec.nics.len() >= vessel_core::network::MAX_NICS {
            return Err(format!(
                "the VM has {} NICs, the most it can have",
                vessel_core::network::MAX_NICS
            )
            .into());
        }
        // Another add may have taken the planned id since.
        if vm.spec.nics.iter().any(|n| n.id == nic.id) {
            nic.id = vessel_core::network::next_nic_id(&vm.spec);
            nic.tap = vessel_core::network::tap_name(&self.name, &nic.id);
        }
        let before = vm.clone();
        vm.spec.nics.push(nic.clone());
        self.put_spec(&vm).await?;
        self.ctx.net.sync(&self.ctx).await;
        if let Some(live) = &self.live {
            let plugged = async {
                let plan = crate::network::host::plan_nic(&self.ctx, &self.name, &nic).await?;
                live.instance
                    .attach_nic(vm.spec.machine, &plan)
                    .await
                    .map_err(|e| format!("hot-plug failed: {}", error_chain(&e)))
            }
            .await;
            if let Err(problem) = plugged {
                self.put_spec(&before).await?;
                self.ctx.net.sync(&self.ctx).await;
                return Err(problem.into());
            }
        }
        self.ctx
            .event(
                &self.name,
                format!(
                    "NIC {} ({}) added on network {}{}",
                    nic.id,
                    nic.mac,
                    nic.network,
                    nic.ipv4
                        .as_deref()
                        .map(|ip| format!(" with address {ip}"))
                        .unwrap_or_default()
                ),
            )
            .await;
        Ok(())
    }

    async fn remove_nic(&mut self, record: &OpRecord) -> OpResult {
        let nic = record
            .nic
            .clone()
            .ok_or("remove-nic operation without a NIC")?;
        let Loaded {
            record: mut vm,
            status,
            ..
        } = self.load_existing().await?;
        vessel_core::check_action(OperationAction::RemoveNic, status.state, false)?;
        let (spec, removed) = vessel_core::network::remove_nic(&vm.spec, &nic.id)?;
        if self.live.is_some() {
            self.unplug_nic(&removed.id).await?;
        }
        vm.spec = spec;
        let txn = crate::network::service::release(
            Txn::new()
                .when(Compare::Exists(spec_key(&self.name)))
                .then(Op::Put(spec_key(&self.name), encode(&vm))),
            &removed,
        );
        self.ctx.store.txn(txn).await.map_err(|e| e.to_string())?;
        self.ctx.net.sync(&self.ctx).await;
        self.ctx
            .event(
                &self.name,
                format!("NIC {} ({}) removed", removed.id, removed.mac),
            )
            .await;
        Ok(())
    }

    /// Hot-unplugs a NIC: the device goes (the guest is told), then its backend, which closes
    /// the tap.
    async fn unplug_nic(&mut self, nic_id: &str) -> OpResult {
        self.running_instance("the VM is not running")?
            .unplug_nic(nic_id)
            .await
            .map_err(|e| format!("hot-unplug failed: {}", error_chain(&e)))?;
        self.await_released(vessel_qemu::nic::device_id(nic_id), "NIC", "remove it")
            .await?;
        self.running_instance("the VM stopped during the unplug")?
            .remove_nic_backend(nic_id)
            .await
            .map_err(|e| format!("could not close the NIC's tap: {}", error_chain(&e)).into())
    }

    /// Hot-unplugs a disk: the device goes (the guest is told), then the block node, which
    /// closes the file.
    ///
    /// Idempotent: what QEMU no longer has (an unplug cut short by a daemon restart, or a
    /// hot-plug that never finished) is skipped, and what is left of the disk is removed.
    async fn unplug(&mut self, node_name: &str) -> OpResult {
        let Some(found) = self.disk_in_qemu(node_name).await? else {
            return Ok(());
        };
        if found.device {
            let asked = self
                .running_instance("the VM is not running")?
                .unplug_disk(node_name)
                .await;
            match asked {
                Ok(()) => {
                    self.await_released(
                        vessel_qemu::disk::device_id(node_name),
                        "disk",
                        "detach it",
                    )
                    .await?
                }
                // Gone in the meantime: nothing to wait for.
                Err(e) => {
                    if self
                        .disk_in_qemu(node_name)
                        .await?
                        .is_some_and(|d| d.device)
                    {
                        return Err(format!("hot-unplug failed: {}", error_chain(&e)).into());
                    }
                }
            }
        }
        self.running_instance("the VM stopped during the unplug")?
            .remove_block_node(node_name)
            .await
            .map_err(|e| format!("could not close the disk: {}", error_chain(&e)).into())
    }

    /// What the running QEMU holds of the disk whose node is `node_name`, if anything.
    async fn disk_in_qemu(
        &self,
        node_name: &str,
    ) -> Result<Option<vessel_qemu::PluggedDisk>, String> {
        let disks = self
            .running_instance("the VM is not running")?
            .plugged_disks()
            .await
            .map_err(|e| format!("could not list the VM's disks: {}", error_chain(&e)))?;
        Ok(disks.into_iter().find(|d| d.node_name == node_name))
    }

    /// Makes a re-adopted QEMU's disks what the spec says: what QEMU holds of a disk the spec
    /// does not list (a hot-plug cut short before the spec write, a detach cut short after it)
    /// is removed, which closes the volume's file and releases its lock; a disk the spec lists
    /// that QEMU lacks (or has only part of) is plugged in. An attach or detach that was cut
    /// short is re-run after this and finds its work done or redoes it.
    async fn converge_disks(&mut self, spec: &vessel_api::VmSpec, project: &str) {
        let found = match self.running_instance("the VM is not running") {
            Ok(instance) => match instance.plugged_disks().await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(vm = %self.name, error = %error_chain(&e), "cannot list the disks of a re-adopted QEMU");
                    return;
                }
            },
            Err(_) => return,
        };
        let wanted: Vec<(String, &vessel_api::VmDisk)> = spec
            .disks
            .iter()
            .map(|d| (vessel_core::disk_node_name(&d.pool, &d.volume), d))
            .collect();
        for extra in found
            .iter()
            .filter(|f| !wanted.iter().any(|(node, _)| *node == f.node_name))
        {
            let message = match self.unplug(&extra.node_name).await {
                Ok(()) => format!(
                    "disk node {} removed from QEMU: the spec does not list it (a disk attach or detach cut short by a daemon restart)",
                    extra.node_name
                ),
                Err(e) => format!(
                    "could not remove disk node {} that the spec does not list: {e}",
                    extra.node_name
                ),
            };
            self.ctx.event(&self.name, message).await;
        }
        for (node, disk) in wanted {
            if found.iter().any(|f| f.node_name == node && f.complete()) {
                continue;
            }
            let plugged = async {
                let file = disks::resolve_disk(&self.ctx, project, disk).await?;
                self.running_instance("the VM is not running")?
                    .attach_disk(&file)
                    .await
                    .map_err(|e| format!("hot-plug failed: {}", error_chain(&e)))
            }
            .await;
            let message = match plugged {
                Ok(()) => format!(
                    "disk {}/{} plugged into QEMU again: the spec lists it (a disk detach or attach cut short by a daemon restart)",
                    disk.pool, disk.volume
                ),
                Err(e) => format!(
                    "disk {}/{} is in the spec but not in QEMU, and could not be plugged in: {e}",
                    disk.pool, disk.volume
                ),
            };
            self.ctx.event(&self.name, message).await;
        }
    }

    /// The QEMU of the running VM, or `why` it is not there.
    fn running_instance(&self, why: &str) -> Result<&dyn Instance, String> {
        Ok(self.live.as_ref().ok_or(why)?.instance.as_ref())
    }

    /// Waits until the guest has released a device being hot-unplugged (`DEVICE_DELETED`).
    async fn await_released(&mut self, device: String, what: &str, instead: &str) -> OpResult {
        let gone = self
            .wait_for_event(
                UNPLUG_TIMEOUT,
                |event| matches!(event, InstanceEvent::DeviceDeleted { device: d } if *d == device),
            )
            .await?;
        if !gone {
            return Err(format!(
                "the guest did not release the {what} within {} s; try again, or stop the VM and {instead} then",
                UNPLUG_TIMEOUT.as_secs()
            ).into());
        }
        Ok(())
    }

    /// Waits for an instance event that matches, handling the others as usual (an exit ends the
    /// wait with an error). Returns false on timeout.
    async fn wait_for_event(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&InstanceEvent) -> bool,
    ) -> Result<bool, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let live = self.live.as_mut().ok_or("the VM is not running")?;
            let event = match tokio::time::timeout_at(deadline, live.events.recv()).await {
                Err(_) => return Ok(false),
                Ok(event) => event,
            };
            match event {
                Some(event) if wanted(&event) => return Ok(true),
                Some(event @ InstanceEvent::Exited { .. }) => {
                    self.on_event(event).await;
                    return Err("QEMU exited while waiting".into());
                }
                Some(event) => self.on_event(event).await,
                None => {
                    self.on_exit("the QEMU event stream ended".into(), false)
                        .await;
                    return Err("QEMU exited while waiting".into());
                }
            }
        }
    }

    async fn put_spec(&self, vm: &VmRecord) -> OpResult {
        let txn = Txn::new()
            .when(Compare::Exists(spec_key(&self.name)))
            .then(Op::Put(spec_key(&self.name), encode(vm)));
        self.ctx.store.txn(txn).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn delete(&mut self, force: bool) -> OpResult {
        let Some(Loaded { status, record, .. }) = self.load().await? else {
            return Ok(());
        };
        vessel_core::check_action(OperationAction::Delete, status.state, force)?;
        if self.live.is_some() {
            self.kill_and_reap().await?;
        }
        let mut txn = Txn::new()
            .then(Op::DeletePrefix(vm_prefix(&self.name)))
            .then(Op::DeletePrefix(crate::vm::model::snapshots_prefix(
                &self.name,
            )))
            .then(Op::DeletePrefix(snapshot_quota::vm_prefix(&self.name)))
            .then(Op::Delete(crate::vm::model::snapshot_head_key(&self.name)));
        for nic in &record.spec.nics {
            txn = crate::network::service::release(txn, nic);
        }
        self.ctx.store.txn(txn).await.map_err(|e| e.to_string())?;
        if !record.spec.nics.is_empty() {
            self.ctx.net.sync(&self.ctx).await;
        }
        self.ctx.forget_console(&self.name);
        // Volumes made for the VM (its root disk from an image) go with it, after its records:
        // a leftover volume is visible and deletable, a VM pointing at a deleted volume is not.
        for disk in record.spec.disks.iter().filter(|d| d.delete_with_vm) {
            if let Err(e) = disks::delete_owned(&self.ctx, disk).await {
                tracing::warn!(vm = %self.name, volume = %disk.volume, error = %e, "could not delete the VM's volume");
            }
        }
        let dir = self.ctx.vm_dir(&self.name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(vm = %self.name, error = %e, "could not remove {}", dir.display());
            }
        }
        self.ctx
            .event_in(&record.project, &self.name, "deleted")
            .await;
        Ok(())
    }

    // ----- events and exits -----------------------------------------------------------------

    async fn on_event(&mut self, event: InstanceEvent) {
        let result = match &event {
            InstanceEvent::Exited { detail, clean } => {
                self.on_exit(detail.clone(), *clean).await;
                Ok(())
            }
            InstanceEvent::Paused => self.set_state(VmState::Paused, None).await,
            InstanceEvent::Resumed => self.set_state(VmState::Running, None).await,
            InstanceEvent::Reset => {
                self.ctx.event(&self.name, "guest reset").await;
                Ok(())
            }
            other => {
                if let Some(live) = self.live.as_mut() {
                    note_event(live, other);
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!(vm = %self.name, error = %e, "could not record {event:?}");
        }
    }

    /// The process is gone: record why, clean up, and restart if the policy says so.
    async fn on_exit(&mut self, detail: String, clean: bool) {
        let Some(live) = self.live.take() else { return };
        self.ctx.sampler.forget(&self.name);
        let files = RunFiles::in_dir(&self.ctx.vm_dir(&self.name));
        let kind = exit_kind(&live, clean);
        let reason = exit_reason(kind, &live, &detail, &files);
        remove_run_files(&files);
        if let Err(e) = self.after_exit(kind, reason).await {
            tracing::error!(vm = %self.name, error = %e, "could not handle QEMU exit");
        }
    }

    async fn after_exit(&mut self, kind: ExitKind, reason: Option<String>) -> OpResult {
        let Some(Loaded {
            record: vm,
            mut status,
            desired,
            ..
        }) = self.load().await?
        else {
            return Ok(());
        };
        // An exit while nobody wants the VM running (a stop was requested, perhaps by a daemon
        // that died since) is never restarted.
        let kind = if desired == DesiredState::Stopped {
            ExitKind::Requested
        } else {
            kind
        };
        status.state = vessel_core::state_after_exit(kind);
        status.reason = reason.clone();
        status.pid = None;
        status.pid_start_time = None;
        status.accelerator = None;
        status.state_changed_at_ms = now_ms();
        if let Some(reason) = &reason {
            let message = format!("{}: {reason}", status.state.as_str());
            if kind == ExitKind::Crashed {
                self.ctx.alert(&self.name, message).await;
            } else {
                self.ctx.event(&self.name, message).await;
            }
        }
        let decision = after_exit(vm.spec.restart_policy, kind);
        if decision == RestartDecision::Restart && self.may_restart() {
            self.save(&status, None).await?;
            self.ctx
                .event(
                    &self.name,
                    format!(
                        "restarting (restart policy {})",
                        vm.spec.restart_policy.as_str()
                    ),
                )
                .await;
            return self.start(true).await;
        }
        if decision == RestartDecision::Restart {
            status.reason = Some(format!(
                "{}; restarted {RESTART_BURST} times within {} s, giving up (fix the cause, then vessel vm start)",
                reason.unwrap_or_default(),
                RESTART_WINDOW.as_secs()
            ));
            self.ctx
                .alert(
                    &self.name,
                    format!(
                        "restart policy gave up after {RESTART_BURST} restarts within {} s",
                        RESTART_WINDOW.as_secs()
                    ),
                )
                .await;
        }
        // Nobody wants it running any more: make desired match, so no reconcile restarts it.
        let desired = (kind != ExitKind::Requested).then_some(DesiredState::Stopped);
        Ok(self.save(&status, desired).await?)
    }

    fn may_restart(&mut self) -> bool {
        let now = Instant::now();
        while self
            .recent_restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            self.recent_restarts.pop_front();
        }
        if self.recent_restarts.len() >= RESTART_BURST {
            return false;
        }
        self.recent_restarts.push_back(now);
        true
    }

    // ----- reconcile ------------------------------------------------------------------------

    /// Looks at the world: adopts a QEMU that a previous daemon started (or notices that it died
    /// meanwhile), then records the state its process is in. The worker does one thing at a
    /// time, so no operation of this VM runs now: a transitional state in the record was left by
    /// one that a daemon restart cut short, and is replaced by what the process says.
    async fn observe(&mut self) -> OpResult {
        let Some(Loaded {
            record: vm, status, ..
        }) = self.load().await?
        else {
            return Ok(());
        };
        if self.live.is_none() {
            if let (Some(pid), Some(start_time)) = (status.pid, status.pid_start_time) {
                self.adopt(&vm, &status, ProcessId { pid, start_time })
                    .await?;
            } else if let Some(pid) = self.unrecorded_process() {
                self.adopt_unrecorded(&vm, &status, pid).await?;
            }
        }
        self.settle_state().await
    }

    /// A QEMU of this VM whose pid was never recorded: a start cut short by a daemon crash after
    /// QEMU was spawned. QEMU wrote its pid file before that; `adopt` checks that the process's
    /// command line names this VM.
    fn unrecorded_process(&self) -> Option<ProcessId> {
        ProcessId::from_pid_file(&RunFiles::in_dir(&self.ctx.vm_dir(&self.name)).pid_file)
    }

    async fn adopt_unrecorded(
        &mut self,
        vm: &VmRecord,
        status: &VmStatus,
        pid: ProcessId,
    ) -> OpResult {
        let request = self.launch_request(vm, Vec::new());
        match self.ctx.backend.adopt(&request, pid).await {
            Ok(instance) => self.take_adopted(vm, status, instance).await,
            // Not (or no longer) this VM's QEMU: a stale pid file whose pid was reused.
            Err(e) => {
                tracing::info!(vm = %self.name, pid = pid.pid, error = %error_chain(&e), "pid file names no QEMU of this VM");
                Ok(())
            }
        }
    }

    /// Writes the state derived from the process (`vessel_core::settled_state`). Called only
    /// when no operation of this VM runs.
    async fn settle_state(&mut self) -> OpResult {
        let process = match self.live.as_ref() {
            None => vessel_core::ProcessState::Gone,
            Some(live) => match live.instance.status().await {
                Ok(vessel_qemu::RunState::Paused) => vessel_core::ProcessState::Paused,
                Ok(vessel_qemu::RunState::Prelaunch) => {
                    // Its launch was cut short before the vCPUs ran: start it afresh instead.
                    self.ctx
                        .event(&self.name, "QEMU never started its vCPUs (a start cut short by a daemon restart); stopping it")
                        .await;
                    self.kill_and_reap().await?;
                    vessel_core::ProcessState::Gone
                }
                Ok(_) => vessel_core::ProcessState::Running,
                // QEMU is going away: its exit event will be handled next.
                Err(e) => {
                    tracing::debug!(vm = %self.name, error = %error_chain(&e), "query-status failed");
                    return Ok(());
                }
            },
        };
        let Loaded { status, .. } = self.load_existing().await?;
        let state = vessel_core::settled_state(status.state, process);
        if state == status.state {
            return Ok(());
        }
        let reason = (!state.has_process() && status.state.has_process()).then(|| {
            format!(
                "the daemon restarted while the VM was {}, and no QEMU runs for it",
                status.state.as_str()
            )
        });
        self.ctx
            .event(
                &self.name,
                format!(
                    "state {} corrected to {} (from its QEMU)",
                    status.state.as_str(),
                    state.as_str()
                ),
            )
            .await;
        Ok(self.set_state(state, reason).await?)
    }

    async fn adopt(&mut self, vm: &VmRecord, status: &VmStatus, pid: ProcessId) -> OpResult {
        // Adoption attaches to what runs; the disks are already in QEMU.
        let request = self.launch_request(vm, Vec::new());
        match self.ctx.backend.adopt(&request, pid).await {
            Ok(instance) => self.take_adopted(vm, status, instance).await,
            Err(e) => {
                // Gone while the daemon was away (or not drivable, and so killed by `adopt`).
                // A power-off that was under way ended as asked.
                let kind = if status.state == VmState::Stopping {
                    ExitKind::Requested
                } else {
                    ExitKind::Crashed
                };
                let reason = format!(
                    "QEMU (pid {}) exited while the daemon was not running ({})",
                    pid.pid,
                    error_chain(&e)
                );
                remove_run_files(&RunFiles::in_dir(&self.ctx.vm_dir(&self.name)));
                self.after_exit(kind, Some(reason)).await
            }
        }
    }

    /// Takes charge of a QEMU that a previous daemon started: console, events, its identity in
    /// the status (the state is settled next, from the process).
    async fn take_adopted(
        &mut self,
        vm: &VmRecord,
        status: &VmStatus,
        instance: Box<dyn Instance>,
    ) -> OpResult {
        // A stop cut short is re-run as an operation (which presses the button again); until
        // then nobody is stopping this QEMU.
        let (pid, uid) = self.take_charge(instance);
        // Its taps outlived the daemon with QEMU; make sure they are on their bridges.
        crate::network::host::readopt_taps(&self.ctx, &vm.spec).await;
        self.converge_disks(&vm.spec, &vm.project).await;
        let mut status = status.clone();
        status.pid = Some(pid.pid);
        status.pid_start_time = Some(pid.start_time);
        status.accelerator = Some(self.ctx.accel.accel.as_str().to_string());
        self.save(&status, None).await?;
        self.ctx
            .event(
                &self.name,
                format!(
                    "re-adopted QEMU pid {}{uid} after a daemon restart",
                    pid.pid
                ),
            )
            .await;
        Ok(())
    }
}

/// `, uid N` for the events of a QEMU that runs as its own user.
fn describe_uid(instance: &dyn Instance) -> String {
    instance
        .uid()
        .map(|uid| format!(", uid {uid}"))
        .unwrap_or_default()
}

/// Waits for the next instance event, or forever when no instance runs.
async fn next_event(live: &mut Option<Live>) -> Option<InstanceEvent> {
    match live {
        Some(live) => live.events.recv().await,
        None => std::future::pending().await,
    }
}

fn note_event(live: &mut Live, event: &InstanceEvent) {
    match event {
        InstanceEvent::Shutdown {
            guest: true,
            reason,
        } if reason == "guest-shutdown" => live.guest_shutdown = true,
        InstanceEvent::Shutdown { reason, .. } if reason == "guest-panic" => live.panicked = true,
        InstanceEvent::GuestPanicked => live.panicked = true,
        _ => {}
    }
}

fn exit_kind(live: &Live, clean: bool) -> ExitKind {
    if live.stop_requested {
        ExitKind::Requested
    } else if live.guest_shutdown && !live.panicked && clean {
        ExitKind::GuestPowerOff
    } else {
        ExitKind::Crashed
    }
}

fn exit_reason(kind: ExitKind, live: &Live, detail: &str, files: &RunFiles) -> Option<String> {
    match kind {
        ExitKind::Requested => None,
        ExitKind::GuestPowerOff => Some("the guest powered itself off".into()),
        ExitKind::Crashed if live.panicked => Some("the guest kernel panicked".into()),
        ExitKind::Crashed => {
            let last_words = std::fs::read_to_string(&files.qemu_log)
                .ok()
                .and_then(|log| {
                    log.lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .map(str::to_string)
                });
            Some(match last_words {
                Some(line) => format!("QEMU {detail}; its last message: {line}"),
                None => format!("QEMU {detail}"),
            })
        }
    }
}

fn remove_run_files(files: &RunFiles) {
    for path in [&files.qmp_socket, &files.console_socket, &files.pid_file] {
        let _ = std::fs::remove_file(path);
    }
}

fn failed_start(status: &VmStatus, problem: &str) -> VmStatus {
    VmStatus {
        state: VmState::Stopped,
        reason: Some(format!("start failed: {problem}")),
        pid: None,
        pid_start_time: None,
        accelerator: None,
        restart_count: status.restart_count,
        state_changed_at_ms: now_ms(),
    }
}

/// The files a VM boots from must exist and be readable by the daemon.
pub fn check_files(vm: &VmRecord) -> Result<(), String> {
    let files: Vec<(&str, &str)> = match &vm.spec.boot {
        Boot::Kernel { kernel, initrd, .. } => {
            let mut f = vec![("kernel", kernel.as_str())];
            if let Some(initrd) = initrd {
                f.push(("initrd", initrd.as_str()));
            }
            f
        }
        Boot::Disk { disk } => vec![("disk", disk.as_str())],
        Boot::FirstDisk => vec![],
    };
    for (what, path) in files {
        match std::fs::File::open(path).and_then(|f| f.metadata()) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Err(format!("{what} {path} is not a regular file")),
            Err(e) => return Err(format!("{what} {path} cannot be read: {e}")),
        }
    }
    Ok(())
}
