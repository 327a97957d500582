//! QEMU events and exits: what the worker records when its QEMU pauses, resumes, resets or
//! ends, and whether the restart policy starts it again.

use std::time::{Duration, Instant};

use vessel_api::{DesiredState, VmState};
use vessel_core::{after_exit, ExitKind, RestartDecision};
use vessel_qemu::{InstanceEvent, RunFiles};

use super::{Live, OpResult, Worker};
use crate::vm::model::{now_ms, Loaded};

/// Restarts allowed within [`RESTART_WINDOW`] before the policy gives up on a crash loop.
const RESTART_BURST: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

impl Worker {
    pub(super) async fn on_event(&mut self, event: InstanceEvent) {
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
    pub(super) async fn on_exit(&mut self, detail: String, clean: bool) {
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

    pub(super) async fn after_exit(&mut self, kind: ExitKind, reason: Option<String>) -> OpResult {
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
        self.save(&status, desired).await
    }

    pub(super) fn may_restart(&mut self) -> bool {
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
}

pub(super) fn note_event(live: &mut Live, event: &InstanceEvent) {
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

pub(super) fn exit_kind(live: &Live, clean: bool) -> ExitKind {
    if live.stop_requested {
        ExitKind::Requested
    } else if live.guest_shutdown && !live.panicked && clean {
        ExitKind::GuestPowerOff
    } else {
        ExitKind::Crashed
    }
}

pub(super) fn exit_reason(
    kind: ExitKind,
    live: &Live,
    detail: &str,
    files: &RunFiles,
) -> Option<String> {
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

pub(super) fn remove_run_files(files: &RunFiles) {
    for path in [&files.qmp_socket, &files.console_socket, &files.pid_file] {
        let _ = std::fs::remove_file(path);
    }
}
