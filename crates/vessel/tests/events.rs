//! The event stream (`GET /v1/events?follow=true`) with a real VM: state changes in order,
//! operations, alerts, and a client that stops reading holding nobody up.

mod common;

use common::*;
use vessel_api::{EventKind, StopVmRequest, VmState};
use vessel_cli::VmAction;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_sees_start_stop_and_crash_in_order_while_a_stalled_client_waits() {
    let daemon = Daemon::start();
    let client = daemon.client();
    // A client that subscribes and never reads.
    let _stalled = client.follow_events(None, &[]).await.unwrap();
    let mut stream = client.follow_events(Some("ev1"), &[]).await.unwrap();

    booted(&client, guest_vm("ev1")).await;
    act(&client, "ev1", VmAction::Stop(StopVmRequest::default())).await;
    let vm = act(&client, "ev1", VmAction::Start).await;
    await_console(&client, "ev1", "VESSEL-GUEST-READY", 2).await;
    // A crash nobody asked for.
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(vm.pid.unwrap() as i32, libc::SIGKILL) };
    await_state(&client, "ev1", VmState::Crashed).await;

    let mut states = Vec::new();
    let mut operations = Vec::new();
    let mut alert = None;
    while alert.is_none() || states.last() != Some(&VmState::Crashed) {
        let event = tokio::time::timeout(BOOT_TIMEOUT, stream.next())
            .await
            .expect("the stream goes on")
            .unwrap()
            .expect("the stream is open");
        assert_eq!(event.vm, "ev1", "the stream is filtered by VM: {event:?}");
        match event.kind {
            EventKind::State => states.push(event.state.unwrap()),
            EventKind::Operation => operations.push((event.action.unwrap(), event.status.unwrap())),
            EventKind::Alert => alert = Some(event.message),
            EventKind::Lagged => panic!("a reading client must not lag: {event:?}"),
            EventKind::Info => {}
        }
    }
    use VmState::*;
    assert_eq!(
        states,
        [Stopped, Starting, Running, Stopping, Stopped, Starting, Running, Crashed],
        "created stopped, then every change in order"
    );
    assert!(alert.unwrap().contains("SIGKILL"), "the crash is an alert");
    use vessel_api::{OperationAction as A, OperationStatus as S};
    for expected in [
        (A::Create, S::Succeeded),
        (A::Stop, S::Succeeded),
        (A::Start, S::Succeeded),
    ] {
        assert!(
            operations.contains(&expected),
            "{expected:?} in {operations:?}"
        );
    }
    // The daemon serves other clients all along.
    assert_eq!(client.list_vms().await.unwrap().len(), 1);
}
