//! Start, stop, kill, reboot, pause and resume, and converging a VM to its desired state.

use std::time::{Duration, Instant};

use vessel_api::{Boot, DesiredState, VmState};
use vessel_qemu::{Instance, InstanceEvent, LaunchRequest, ProcessId};

use super::exits::note_event;
use super::{store_failed, Live, OpResult, Worker};
use crate::common::errors::error_chain;
use crate::common::op_error::OpError;
use crate::vm::cloud_init;
use crate::vm::disks;
use crate::vm::model::{now_ms, Loaded, VmRecord, VmStatus};

impl Worker {
    /// Drives the VM to its desired state. Safe to call at any time; does nothing when the VM
    /// already is where it should be.
    pub(super) async fn converge(&mut self, force: bool, timeout: Duration) -> OpResult {
        let Loaded {
            desired, status, ..
        } = self.load_existing().await?;
        match (desired, self.live.is_some()) {
            (DesiredState::Running, false) => self.start(false).await,
            (DesiredState::Running, true) if status.state == VmState::Paused => self.resume().await,
            (DesiredState::Paused, true) if status.state != VmState::Paused => self.pause().await,
            (DesiredState::Paused, false) => Err(OpError::conflict(
                "the VM is not running, so it cannot be paused; start it first",
            )),
            (DesiredState::Stopped, true) => self.stop(force, timeout, "stop").await,
            // Nothing to do; the record still has to say what the process is.
            _ => self.settle_state().await,
        }
    }

    pub(super) async fn start(&mut self, restart: bool) -> OpResult {
        let Loaded {
            record: vm,
            mut status,
            ..
        } = self.load_existing().await?;
        if let Err(problem) = check_files(&vm) {
            return Err(self.start_failed(&status, OpError::failed(problem)).await);
        }
        let request = match self.prepare_launch(&vm).await {
            Ok(request) => request,
            Err(problem) => return Err(self.start_failed(&status, problem).await),
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
                let problem =
                    OpError::failed(format!("QEMU could not start the VM: {}", error_chain(&e)));
                return Err(self.start_failed(&status, problem).await);
            }
        };
        self.adopt_started(instance, restart).await
    }

    /// Records why a start failed (the VM stays stopped, and nobody wants it running any more)
    /// and returns the failure, or the store's if the record could not be written.
    async fn start_failed(&self, status: &VmStatus, problem: OpError) -> OpError {
        let stopped = failed_start(status, &problem.message);
        match self.save(&stopped, Some(DesiredState::Stopped)).await {
            Ok(()) => problem,
            Err(e) => e,
        }
    }

    /// Takes charge of a QEMU this worker just started: console, events, recorded status.
    pub(super) async fn adopt_started(
        &mut self,
        instance: Box<dyn Instance>,
        restart: bool,
    ) -> OpResult {
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
    pub(super) fn take_charge(&mut self, mut instance: Box<dyn Instance>) -> (ProcessId, String) {
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

    pub(super) fn launch_request(
        &self,
        vm: &VmRecord,
        disks: Vec<vessel_qemu::DiskFile>,
    ) -> LaunchRequest {
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
    pub(super) async fn prepare_launch(&self, vm: &VmRecord) -> Result<LaunchRequest, OpError> {
        let disks = disks::resolve_disks(&self.ctx, &vm.project, &vm.spec).await?;
        let vms = self.ctx.view.all().await.map_err(store_failed)?;
        for disk in &vm.spec.disks {
            let users = disks::conflicting_users(&vms, &self.name, disk);
            if !users.is_empty() {
                return Err(OpError::conflict(format!(
                    "volume {:?} of pool {:?} is in use by running VM {}; stop it or detach the volume there first",
                    disk.volume,
                    disk.pool,
                    users.join(", ")
                )));
            }
        }
        let mut request = self.launch_request(vm, disks);
        request.boot_files =
            crate::storage::host_paths::open_boot_files(&self.ctx.config, &vm.spec.boot)
                .map_err(OpError::failed)?;
        request.nics = crate::network::host::plan_nics(&self.ctx, &vm.spec)
            .await
            .map_err(OpError::failed)?;
        request.seed = cloud_init::write_seed(&self.ctx, vm, &request.run_dir)
            .await
            .map_err(OpError::failed)?;
        Ok(request)
    }

    pub(super) fn attach(&self, instance: &mut Box<dyn Instance>) {
        if let Some(console) = instance.take_console() {
            self.ctx.console(&self.name).attach(console);
        }
    }

    /// ACPI power-down, then a forced kill if the guest does not go within `timeout` (a guest
    /// may ignore the button: no acpid yet, or none at all). An event says which happened;
    /// `purpose` ("stop", "reboot", ...) names what the power-off was for.
    pub(super) async fn stop(&mut self, force: bool, timeout: Duration, purpose: &str) -> OpResult {
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

    pub(super) async fn kill_and_reap(&mut self) -> OpResult {
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        live.stop_requested = true;
        live.instance
            .kill()
            .map_err(|e| OpError::failed(format!("could not kill QEMU: {}", error_chain(&e))))?;
        match self.wait_for_exit(Duration::from_secs(30)).await {
            Some((detail, clean)) => {
                self.on_exit(detail, clean).await;
                Ok(())
            }
            None => Err(OpError::timeout("QEMU did not exit within 30 s of SIGKILL")),
        }
    }

    /// Waits for the process to end, noting shutdown events on the way.
    pub(super) async fn wait_for_exit(&mut self, timeout: Duration) -> Option<(String, bool)> {
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

    pub(super) async fn pause(&mut self) -> OpResult {
        let live = self.live.as_ref().ok_or_else(not_running)?;
        live.instance
            .pause()
            .await
            .map_err(|e| OpError::failed(format!("pause failed: {}", error_chain(&e))))?;
        self.set_state(VmState::Paused, None).await
    }

    pub(super) async fn resume(&mut self) -> OpResult {
        let live = self.live.as_ref().ok_or_else(not_running)?;
        live.instance
            .resume()
            .await
            .map_err(|e| OpError::failed(format!("resume failed: {}", error_chain(&e))))?;
        self.set_state(VmState::Running, None).await
    }

    pub(super) async fn hard_reset(&mut self) -> OpResult {
        let live = self.live.as_ref().ok_or_else(not_running_start_it)?;
        live.instance
            .reset()
            .await
            .map_err(|e| OpError::failed(format!("reset failed: {}", error_chain(&e))))?;
        self.ctx.event(&self.name, "hard reset").await;
        Ok(())
    }

    /// Clean reboot: ACPI power-down (forced after the timeout), then a fresh start, so that a
    /// spec edited meanwhile takes effect — like Proxmox's reboot.
    pub(super) async fn clean_reboot(&mut self, timeout: Duration) -> OpResult {
        if self.live.is_none() {
            return Err(not_running_start_it());
        }
        self.stop(false, timeout, "reboot").await?;
        self.save(
            &self.load_existing().await?.status,
            Some(DesiredState::Running),
        )
        .await?;
        self.start(false).await
    }
}

/// `, uid N` for the events of a QEMU that runs as its own user.
pub(super) fn describe_uid(instance: &dyn Instance) -> String {
    instance
        .uid()
        .map(|uid| format!(", uid {uid}"))
        .unwrap_or_default()
}

pub(super) fn failed_start(status: &VmStatus, problem: &str) -> VmStatus {
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

/// An action that needs QEMU found none: the VM stopped before the operation ran.
pub(super) fn not_running() -> OpError {
    OpError::conflict("the VM is not running")
}

fn not_running_start_it() -> OpError {
    OpError::conflict("the VM is not running; start it instead")
}
