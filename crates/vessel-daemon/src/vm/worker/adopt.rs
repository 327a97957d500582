//! Re-adoption after a daemon restart: a QEMU started by a previous daemon is taken over (or
//! found gone), and the recorded state is corrected from what the process says.

use vessel_api::VmState;
use vessel_core::ExitKind;
use vessel_qemu::{Instance, ProcessId, RunFiles};

use super::exits::remove_run_files;
use super::{OpResult, Worker};
use crate::common::errors::error_chain;
use crate::vm::model::{Loaded, VmRecord, VmStatus};

impl Worker {
    /// Looks at the world: adopts a QEMU that a previous daemon started (or notices that it died
    /// meanwhile), then records the state its process is in. The worker does one thing at a
    /// time, so no operation of this VM runs now: a transitional state in the record was left by
    /// one that a daemon restart cut short, and is replaced by what the process says.
    pub(super) async fn observe(&mut self) -> OpResult {
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
    pub(super) fn unrecorded_process(&self) -> Option<ProcessId> {
        ProcessId::from_pid_file(&RunFiles::in_dir(&self.ctx.vm_dir(&self.name)).pid_file)
    }

    pub(super) async fn adopt_unrecorded(
        &mut self,
        vm: &VmRecord,
        status: &VmStatus,
        pid: ProcessId,
    ) -> OpResult {
        match self.reattach(vm, pid).await {
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
    pub(super) async fn settle_state(&mut self) -> OpResult {
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
        self.set_state(state, reason).await
    }

    pub(super) async fn adopt(
        &mut self,
        vm: &VmRecord,
        status: &VmStatus,
        pid: ProcessId,
    ) -> OpResult {
        match self.reattach(vm, pid).await {
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

    /// Connects to the QEMU `pid` if it runs this VM. Adoption attaches to what runs: the
    /// disks are already in QEMU.
    async fn reattach(
        &self,
        vm: &VmRecord,
        pid: ProcessId,
    ) -> Result<Box<dyn Instance>, vessel_qemu::BackendError> {
        let request = self.launch_request(vm, Vec::new());
        self.ctx.backend.adopt(&request, pid).await
    }

    /// Takes charge of a QEMU that a previous daemon started: console, events, its identity in
    /// the status (the state is settled next, from the process).
    pub(super) async fn take_adopted(
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
