//! The VM lifecycle: which actions each state allows, and what a stop that nobody asked for
//! leads to under the restart policy.

use vessel_api::{OperationAction, RestartPolicy, VmState};

/// How a VM's QEMU process came to an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// A user asked for stop or kill.
    Requested,
    /// The guest powered itself off (clean SHUTDOWN from the guest).
    GuestPowerOff,
    /// QEMU died, was killed, or the guest panicked.
    Crashed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    Restart,
    StayDown,
}

/// What the restart policy says after an exit.
pub fn after_exit(policy: RestartPolicy, exit: ExitKind) -> RestartDecision {
    match (policy, exit) {
        (_, ExitKind::Requested) => RestartDecision::StayDown,
        (RestartPolicy::Always, _) => RestartDecision::Restart,
        (RestartPolicy::OnFailure, ExitKind::Crashed) => RestartDecision::Restart,
        _ => RestartDecision::StayDown,
    }
}

/// The state a VM rests in after an exit that is not followed by a restart.
pub fn state_after_exit(exit: ExitKind) -> VmState {
    match exit {
        ExitKind::Crashed => VmState::Crashed,
        ExitKind::Requested | ExitKind::GuestPowerOff => VmState::Stopped,
    }
}

/// What the VM's process says about itself (QMP `query-status`), or that there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    Running,
    Paused,
    /// No QEMU runs for the VM.
    Gone,
}

/// The observed state of a VM while no operation works on it, derived from its process alone.
/// `recorded` is what the store says; a transitional state in it (starting, stopping) was left by
/// an operation that is no longer running (cut short by a daemon restart), so it never survives:
/// a live QEMU is running or paused as it says, no QEMU is stopped (or crashed, when the record
/// already says so: the crash's reason stays).
pub fn settled_state(recorded: VmState, process: ProcessState) -> VmState {
    match (process, recorded) {
        (ProcessState::Running, _) => VmState::Running,
        (ProcessState::Paused, _) => VmState::Paused,
        (ProcessState::Gone, VmState::Crashed) => VmState::Crashed,
        (ProcessState::Gone, _) => VmState::Stopped,
    }
}

/// Whether `action` may be requested while the VM is in `state`. `force` is the request's force
/// flag (delete of a running VM). Actions that are already satisfied (start of a running VM,
/// stop of a stopped one) are allowed: they succeed without doing anything.
pub fn check_action(action: OperationAction, state: VmState, force: bool) -> Result<(), String> {
    let running = state.has_process();
    match action {
        OperationAction::Create
        | OperationAction::Start
        | OperationAction::Stop
        | OperationAction::Kill
        | OperationAction::Restart => Ok(()),
        OperationAction::Reboot if state == VmState::Running => Ok(()),
        OperationAction::Reboot => Err(format!(
            "the VM is {}; only a running VM can be rebooted (start it instead)",
            state.as_str()
        )),
        OperationAction::Pause if matches!(state, VmState::Running | VmState::Paused) => Ok(()),
        OperationAction::Pause => Err(format!(
            "the VM is {}; only a running VM can be paused",
            state.as_str()
        )),
        OperationAction::Resume if matches!(state, VmState::Running | VmState::Paused) => Ok(()),
        OperationAction::Resume => Err(format!(
            "the VM is {}; only a paused VM can be resumed (start it instead)",
            state.as_str()
        )),
        OperationAction::Edit if !running => Ok(()),
        OperationAction::Edit => Err(format!(
            "the VM is {}; stop it before editing (vessel vm stop NAME)",
            state.as_str()
        )),
        // Hot-plug needs the VM settled: not while QEMU is coming up or going down.
        OperationAction::AttachDisk
        | OperationAction::DetachDisk
        | OperationAction::ResizeDisk
        | OperationAction::AddNic
        | OperationAction::RemoveNic
            if !matches!(state, VmState::Starting | VmState::Stopping) =>
        {
            Ok(())
        }
        OperationAction::AttachDisk
        | OperationAction::DetachDisk
        | OperationAction::ResizeDisk
        | OperationAction::AddNic
        | OperationAction::RemoveNic => Err(format!(
            "the VM is {}; wait until it is running or stopped, then try again",
            state.as_str()
        )),
        OperationAction::SnapshotCreate
        | OperationAction::SnapshotRevert
        | OperationAction::SnapshotDelete
            if !matches!(state, VmState::Starting | VmState::Stopping) =>
        {
            Ok(())
        }
        OperationAction::SnapshotCreate
        | OperationAction::SnapshotRevert
        | OperationAction::SnapshotDelete => Err(format!(
            "the VM is {}; wait until it is running or stopped, then try again",
            state.as_str()
        )),
        OperationAction::ImportImage
        | OperationAction::ImportVolume
        | OperationAction::ExportVolume
        | OperationAction::CloneVolume => {
            Err("that operation is not an action on a VM".to_string())
        }
        OperationAction::Delete if !running || force => Ok(()),
        OperationAction::Delete => Err(format!(
            "the VM is {}; stop it first, or delete with --force to kill it",
            state.as_str()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_stops_never_restart() {
        for policy in [
            RestartPolicy::Never,
            RestartPolicy::OnFailure,
            RestartPolicy::Always,
        ] {
            assert_eq!(
                after_exit(policy, ExitKind::Requested),
                RestartDecision::StayDown
            );
        }
    }

    #[test]
    fn on_failure_restarts_crashes_but_not_power_off() {
        assert_eq!(
            after_exit(RestartPolicy::OnFailure, ExitKind::Crashed),
            RestartDecision::Restart
        );
        assert_eq!(
            after_exit(RestartPolicy::OnFailure, ExitKind::GuestPowerOff),
            RestartDecision::StayDown
        );
    }

    #[test]
    fn always_restarts_power_off_and_never_restarts_nothing() {
        assert_eq!(
            after_exit(RestartPolicy::Always, ExitKind::GuestPowerOff),
            RestartDecision::Restart
        );
        assert_eq!(
            after_exit(RestartPolicy::Never, ExitKind::Crashed),
            RestartDecision::StayDown
        );
        assert_eq!(state_after_exit(ExitKind::Crashed), VmState::Crashed);
    }

    #[test]
    fn running_vm_cannot_be_edited_or_deleted_without_force() {
        assert!(check_action(OperationAction::Edit, VmState::Running, false)
            .unwrap_err()
            .contains("stop it"));
        assert!(
            check_action(OperationAction::Delete, VmState::Running, false)
                .unwrap_err()
                .contains("--force")
        );
        assert!(check_action(OperationAction::Delete, VmState::Running, true).is_ok());
        assert!(check_action(OperationAction::Delete, VmState::Crashed, false).is_ok());
    }

    #[test]
    fn settled_state_comes_from_the_process_never_from_an_interrupted_operation() {
        use VmState::*;
        for recorded in [Stopped, Starting, Running, Paused, Stopping, Crashed] {
            assert_eq!(settled_state(recorded, ProcessState::Running), Running);
            assert_eq!(settled_state(recorded, ProcessState::Paused), Paused);
            let gone = settled_state(recorded, ProcessState::Gone);
            assert!(
                !gone.has_process(),
                "{recorded:?} without QEMU gave {gone:?}"
            );
        }
        // The reported case: a reboot's power-off phase recorded "stopping", the daemon was
        // killed, the guest kept running.
        assert_eq!(settled_state(Stopping, ProcessState::Running), Running);
        assert_eq!(settled_state(Crashed, ProcessState::Gone), Crashed);
        assert_eq!(settled_state(Starting, ProcessState::Gone), Stopped);
    }

    #[test]
    fn pause_resume_reboot_need_a_live_vm() {
        assert!(check_action(OperationAction::Pause, VmState::Stopped, false).is_err());
        assert!(check_action(OperationAction::Resume, VmState::Stopped, false).is_err());
        assert!(check_action(OperationAction::Reboot, VmState::Paused, false).is_err());
        assert!(check_action(OperationAction::Reboot, VmState::Running, false).is_ok());
    }
}
