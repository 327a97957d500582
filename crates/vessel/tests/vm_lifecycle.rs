//! VM lifecycle against a real daemon and real QEMU (TCG), checked by what the guest prints.

mod common;

use common::*;
use vessel_api::{DesiredState, RestartPolicy, StopVmRequest, VmState};
use vessel_cli::VmAction;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_boots_to_userspace_and_its_console_is_logged() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let vm = create(
        &client,
        &vessel_api::CreateVmRequest {
            start: true,
            ..guest_vm("boot1")
        },
    )
    .await;
    assert_eq!(vm.state, VmState::Running);
    assert_eq!(
        vm.accelerator.as_deref(),
        Some("tcg"),
        "this host's KVM cannot run Linux guests"
    );
    let console = await_console(&client, "boot1", "VESSEL-GUEST-READY", 1).await;
    assert!(console.contains("VESSEL-MODULES"), "{console}");
    assert_eq!(
        daemon.qemu_pids_of("boot1"),
        vec![vm.pid.unwrap()],
        "exactly the reported QEMU runs"
    );
    let log = std::fs::read_to_string(daemon.data_dir.join("vms/boot1/console.log")).unwrap();
    assert!(
        log.contains("VESSEL-GUEST-READY"),
        "the console log file holds the output"
    );
    // QEMU runs as a user of its own, without any capability, cannot regain one, and under
    // seccomp. Only CAP_SETUID and CAP_SETGID stay in its bounding set (it needed them to
    // switch users); with no_new_privs and no exec allowed they cannot come back.
    let uid = qemu_uid(vm.pid.unwrap());
    let status = std::fs::read_to_string(format!("/proc/{}/status", vm.pid.unwrap())).unwrap();
    let ids = format!("\t{uid}\t{uid}\t{uid}\t{uid}\n");
    for line in [
        format!("Uid:{ids}"),
        format!("Gid:{ids}"),
        format!("Groups:\t{uid} \n"),
        "CapInh:\t0000000000000000".into(),
        "CapEff:\t0000000000000000".into(),
        "CapPrm:\t0000000000000000".into(),
        "CapBnd:\t00000000000000c0".into(),
        "CapAmb:\t0000000000000000".into(),
        "NoNewPrivs:\t1".into(),
        "Seccomp:\t2".into(),
    ] {
        assert!(
            status.contains(&line),
            "QEMU's status lacks {line:?}:\n{status}"
        );
    }
    // A second VM's QEMU runs as another user of the range: one QEMU cannot signal, trace or
    // read another.
    let second = booted(&client, guest_vm("boot2")).await;
    let uid2 = qemu_uid(second.pid.unwrap());
    assert_ne!(uid, uid2, "each VM has its own uid");
    // The daemon names the uid when it starts QEMU.
    let events = client.list_events(Some("boot2"), 50).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains(&format!("uid {uid2})"))),
        "{events:?}"
    );
    // QEMU wrote its pid file as root before the switch and cannot remove it (the run dir is
    // root's); the daemon does, once the VM stops.
    let pid_file = daemon.data_dir.join("vms/boot2/qemu.pid");
    assert!(pid_file.exists(), "QEMU writes its pid file");
    act(
        &client,
        "boot2",
        VmAction::Stop(StopVmRequest {
            force: true,
            ..Default::default()
        }),
    )
    .await;
    assert!(!pid_file.exists(), "the daemon removes the pid file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acpi_stop_powers_the_guest_off_cleanly() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let vm = booted(&client, guest_vm("stop1")).await;
    let stopped = act(&client, "stop1", VmAction::Stop(StopVmRequest::default())).await;
    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(stopped.desired_state, DesiredState::Stopped);
    assert_eq!(stopped.pid, None);
    // The guest's acpid ran its power-button action: this was a clean ACPI shutdown, not a kill.
    let console = await_console(&client, "stop1", "VESSEL-GUEST-POWEROFF", 1).await;
    assert!(console.contains("VESSEL-GUEST-POWEROFF"));
    assert!(
        !std::path::Path::new(&format!("/proc/{}", vm.pid.unwrap()))
            .join("exe")
            .exists(),
        "QEMU is gone"
    );
    let ops = client.list_operations().await.unwrap();
    let stop = ops
        .iter()
        .find(|o| o.action == vessel_api::OperationAction::Stop)
        .unwrap();
    assert_eq!(stop.status, vessel_api::OperationStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_keep_the_same_qemu() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let vm = booted(&client, guest_vm("pause1")).await;
    let paused = act(&client, "pause1", VmAction::Pause).await;
    assert_eq!(paused.state, VmState::Paused);
    assert_eq!(paused.desired_state, DesiredState::Paused);
    let err = client
        .vm_action("pause1", &VmAction::Reboot { force: false }, true)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("paused"), "{err}");
    let resumed = act(&client, "pause1", VmAction::Resume).await;
    assert_eq!(resumed.state, VmState::Running);
    assert_eq!(resumed.pid, vm.pid, "pause/resume keep the process");
    // The guest runs again: it answers on its console.
    let mut console = client.console_attach("pause1").await.expect("attach");
    use tokio::io::AsyncWriteExt;
    console
        .write_all(b"echo resumed-$((40+2))\n")
        .await
        .unwrap();
    await_console(&client, "pause1", "resumed-42", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_boots_the_guest_again() {
    let daemon = Daemon::start();
    let client = daemon.client();
    booted(&client, guest_vm("reboot1")).await;
    // Clean reboot: ACPI power-off, then a fresh QEMU.
    let rebooted = act(&client, "reboot1", VmAction::Reboot { force: false }).await;
    assert_eq!(rebooted.state, VmState::Running);
    let console = await_console(&client, "reboot1", "VESSEL-GUEST-READY", 2).await;
    // Hard reset: same QEMU, the guest boots again.
    let reset = act(&client, "reboot1", VmAction::Reboot { force: true }).await;
    assert_eq!(
        reset.pid, rebooted.pid,
        "a hard reset keeps the QEMU process"
    );
    let console2 = await_boots(&client, "reboot1", 3).await;
    let ids = boot_ids(&console2);
    assert_eq!(ids.len(), 3, "{console}");
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2],
        "each boot has its own id: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_kill9_and_restart_readopts_the_running_vm() {
    let mut daemon = Daemon::start();
    let client = daemon.client();
    let vm = booted(&client, guest_vm("adopt1")).await;
    daemon.kill9();
    assert_eq!(
        daemon.qemu_pids_of("adopt1"),
        vec![vm.pid.unwrap()],
        "QEMU outlives the daemon"
    );
    daemon.spawn();
    let client = daemon.client();
    let adopted = await_state(&client, "adopt1", VmState::Running).await;
    assert_eq!(
        adopted.pid, vm.pid,
        "the same QEMU process, not a second start"
    );
    assert_eq!(daemon.qemu_pids_of("adopt1").len(), 1);
    // The re-adopted VM is fully controllable: its console and an ACPI stop work.
    let mut console = client.console_attach("adopt1").await.expect("attach");
    use tokio::io::AsyncWriteExt;
    console.write_all(b"echo adopted-$((6*7))\n").await.unwrap();
    await_console(&client, "adopt1", "adopted-42", 1).await;
    // The new daemon took the re-adopted QEMU's uid back from /proc: a VM started now gets
    // another one.
    let uid = qemu_uid(vm.pid.unwrap());
    let events = client.list_events(Some("adopt1"), 50).await.unwrap();
    assert!(
        events.iter().any(|e| e.message.contains("re-adopted")
            && e.message.contains(&format!("uid {uid} "))),
        "{events:?}"
    );
    let fresh = booted(&client, guest_vm("adopt2")).await;
    assert_ne!(qemu_uid(fresh.pid.unwrap()), uid, "a uid of its own");
    let stopped = act(&client, "adopt1", VmAction::Stop(StopVmRequest::default())).await;
    assert_eq!(stopped.state, VmState::Stopped);
    assert!(daemon.qemu_pids_of("adopt1").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_kill9_is_a_crash_and_the_restart_policy_decides() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let never = create(
        &client,
        &vessel_api::CreateVmRequest {
            start: true,
            ..guest_vm("never1")
        },
    )
    .await;
    let restart = vessel_api::CreateVmRequest {
        start: true,
        restart_policy: Some(RestartPolicy::OnFailure),
        ..guest_vm("onfail1")
    };
    let onfail = create(&client, &restart).await;
    await_console(&client, "never1", "VESSEL-GUEST-READY", 1).await;
    await_console(&client, "onfail1", "VESSEL-GUEST-READY", 1).await;
    for pid in [never.pid.unwrap(), onfail.pid.unwrap()] {
        // SAFETY: kill(2) has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    }
    let crashed = await_state(&client, "never1", VmState::Crashed).await;
    let reason = crashed.reason.unwrap_or_default();
    assert!(
        reason.contains("signal 9"),
        "the reason names the kill: {reason}"
    );
    assert_eq!(crashed.desired_state, DesiredState::Stopped);
    let events = client.list_events(Some("never1"), 100).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.starts_with("crashed: QEMU killed by signal 9")),
        "the crash is an event: {events:?}"
    );
    assert!(events.iter().all(|e| e.vm == "never1"));
    let restarted = await_vm(&client, "onfail1", "restarted", |v| {
        v.restart_count == 1 && v.state == VmState::Running
    })
    .await;
    assert_ne!(restarted.pid, onfail.pid, "a new QEMU");
    await_console(&client, "onfail1", "VESSEL-GUEST-READY", 2).await;
    assert!(daemon.qemu_pids_of("never1").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_power_off_stops_unless_policy_is_always() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let off = vessel_api::CreateVmRequest {
        start: true,
        cmdline: Some("quiet vessel.poweroff".into()),
        restart_policy: Some(RestartPolicy::OnFailure),
        ..guest_vm("off1")
    };
    create(&client, &off).await;
    let stopped = await_state(&client, "off1", VmState::Stopped).await;
    assert_eq!(
        stopped.reason.as_deref(),
        Some("the guest powered itself off")
    );
    assert_eq!(
        stopped.restart_count, 0,
        "on-failure does not restart a clean power-off"
    );
    let always = vessel_api::CreateVmRequest {
        restart_policy: Some(RestartPolicy::Always),
        name: "always1".into(),
        ..off
    };
    create(&client, &always).await;
    await_vm(&client, "always1", "restarted", |v| v.restart_count >= 1).await;
    await_console(&client, "always1", "VESSEL-GUEST-READY", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_vms_started_at_once_all_reach_guest_userspace() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let names: Vec<String> = (0..10).map(|i| format!("many{i}")).collect();
    let creates = names.iter().map(|name| {
        let client = client.clone();
        let request = vessel_api::CreateVmRequest {
            start: true,
            memory_mib: 96,
            ..guest_vm(name)
        };
        async move { create(&client, &request).await }
    });
    let vms = futures::future::join_all(creates).await;
    assert!(vms.iter().all(|vm| vm.state == VmState::Running));
    let boots = names.iter().map(|name| {
        let client = client.clone();
        async move { await_console(&client, name, "VESSEL-GUEST-READY", 1).await }
    });
    futures::future::join_all(boots).await;
    assert_eq!(daemon.qemu_pids().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_never_run_two_qemus_for_one_vm() {
    let daemon = Daemon::start();
    let client = daemon.client();
    create(&client, &guest_vm("race1")).await;
    let starts = (0..8).map(|_| {
        let client = client.clone();
        async move { client.vm_action("race1", &VmAction::Start, true).await }
    });
    for result in futures::future::join_all(starts).await {
        let vessel_cli::Outcome::Done(vm) = result.expect("start") else {
            panic!("accepted")
        };
        assert_eq!(vm.state, VmState::Running);
    }
    assert_eq!(daemon.qemu_pids_of("race1").len(), 1);
    // start and stop racing: the last request decides, and the VM ends where it says.
    let (a, b) = tokio::join!(
        client.vm_action("race1", &VmAction::Kill, true),
        client.vm_action("race1", &VmAction::Start, true)
    );
    let _ = (a, b);
    let vm = client.get_vm("race1").await.unwrap();
    let expected_running = vm.desired_state == DesiredState::Running;
    assert_eq!(vm.state == VmState::Running, expected_running, "{vm:?}");
    assert_eq!(
        daemon.qemu_pids_of("race1").len(),
        usize::from(expected_running)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_refused_while_running_unless_forced() {
    let daemon = Daemon::start();
    let client = daemon.client();
    create(
        &client,
        &vessel_api::CreateVmRequest {
            start: true,
            ..guest_vm("del1")
        },
    )
    .await;
    let err = client.delete_vm("del1", false, true).await.unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    client.get_vm("del1").await.expect("still there");
    client
        .delete_vm("del1", true, true)
        .await
        .expect("forced delete");
    assert!(daemon.qemu_pids_of("del1").is_empty());
    assert!(
        !daemon.data_dir.join("vms/del1").exists(),
        "run dir removed"
    );
    let err = client.get_vm("del1").await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_applies_while_stopped_and_is_refused_while_running() {
    let daemon = Daemon::start();
    let client = daemon.client();
    create(&client, &guest_vm("edit1")).await;
    let edit = vessel_api::EditVmRequest {
        cpus: Some(2),
        memory_mib: Some(160),
        ..Default::default()
    };
    let vessel_cli::Outcome::Done(vm) = client.edit_vm("edit1", &edit, true).await.unwrap() else {
        panic!()
    };
    assert_eq!((vm.spec.cpus, vm.spec.memory_mib), (2, 160));
    act(&client, "edit1", VmAction::Start).await;
    let console = await_console(&client, "edit1", "VESSEL-GUEST-READY", 1).await;
    assert!(!console.is_empty());
    let err = client.edit_vm("edit1", &edit, true).await.unwrap_err();
    assert!(err.to_string().contains("stop it before editing"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_cut_short_by_a_daemon_crash_is_finished_after_restart() {
    let mut daemon = Daemon::start();
    let client = daemon.client();
    let vm = booted(&client, guest_vm("inflight1")).await;
    // A paused guest cannot answer the ACPI power button, so this stop stays in flight until its
    // timeout forces it.
    act(&client, "inflight1", VmAction::Pause).await;
    let stop = VmAction::Stop(StopVmRequest {
        force: false,
        timeout_secs: Some(8),
    });
    let vessel_cli::Outcome::Accepted(accepted) =
        client.vm_action("inflight1", &stop, false).await.unwrap()
    else {
        panic!("--no-wait returns the operation")
    };
    let id = accepted.operation.id;
    let deadline = std::time::Instant::now() + BOOT_TIMEOUT;
    while client.get_operation(&id).await.unwrap().status != vessel_api::OperationStatus::Running {
        assert!(
            std::time::Instant::now() < deadline,
            "the stop never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    daemon.kill9();
    assert_eq!(
        daemon.qemu_pids_of("inflight1"),
        vec![vm.pid.unwrap()],
        "QEMU survives the daemon"
    );
    daemon.spawn();
    let client = daemon.client();
    let deadline = std::time::Instant::now() + BOOT_TIMEOUT;
    let op = loop {
        let op = client.get_operation(&id).await.unwrap();
        if op.status.is_terminal() {
            break op;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the interrupted stop never finished: {op:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(op.status, vessel_api::OperationStatus::Succeeded, "{op:?}");
    let stopped = client.get_vm("inflight1").await.unwrap();
    assert_eq!(stopped.state, VmState::Stopped, "{stopped:?}");
    assert!(daemon.qemu_pids_of("inflight1").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_kernel_panic_is_a_crash() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let panicking = vessel_api::CreateVmRequest {
        start: true,
        cmdline: Some("quiet vessel.panic".into()),
        ..guest_vm("panic1")
    };
    create(&client, &panicking).await;
    await_console(&client, "panic1", "VESSEL-GUEST-PANIC", 1).await;
    let crashed = await_state(&client, "panic1", VmState::Crashed).await;
    assert_eq!(crashed.reason.as_deref(), Some("the guest kernel panicked"));
    assert!(daemon.qemu_pids_of("panic1").is_empty());
}
