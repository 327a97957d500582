//! The client against a real QEMU (`-machine none`, no guest), so what is
//! tested is QEMU's actual QMP behaviour rather than our idea of it.

use std::io;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use vessel_qmp::{EventStream, Qmp, QmpError, QmpEvent};

const QEMU: &str = "qemu-system-x86_64";
/// From spawn to a negotiated QMP connection. Generous: the machine has two
/// cores and other tests run in parallel.
const STARTUP: Duration = Duration::from_secs(20);
/// For any single step once QEMU is up.
const STEP: Duration = Duration::from_secs(10);

struct Vm {
    child: Child,
    qmp: Qmp,
    events: EventStream,
    _dir: tempfile::TempDir,
}

async fn start_qemu() -> Vm {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("qmp.sock");
    let spawned = Command::new(QEMU)
        .args(["-machine", "none", "-nodefaults", "-display", "none", "-S"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
            "{QEMU} is not on PATH. These tests need a real QEMU: install it with \
             `apt-get install -y qemu-system-x86 qemu-utils`"
        ),
        Err(e) => panic!("could not start {QEMU}: {e}"),
    };

    // QEMU creates the socket shortly after start; poll for it rather than
    // guessing a delay, and give up at a fixed deadline.
    let deadline = Instant::now() + STARTUP;
    loop {
        match Qmp::connect(&socket, STEP).await {
            Ok((qmp, events)) => {
                return Vm {
                    child,
                    qmp,
                    events,
                    _dir: dir,
                }
            }
            Err(QmpError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                if let Some(status) = child.try_wait().unwrap() {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = pipe.read_to_string(&mut stderr).await;
                    }
                    panic!("{QEMU} exited with {status} before QMP was ready: {stderr}");
                }
                assert!(
                    Instant::now() < deadline,
                    "{} did not accept connections within {STARTUP:?} (last error: {e})",
                    socket.display()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("QMP handshake with {QEMU} failed: {e}"),
        }
    }
}

async fn next_event_named(events: &mut EventStream, name: &str) -> QmpEvent {
    let search = async {
        while let Some(event) = events.next().await {
            if event.event == name {
                return event;
            }
        }
        panic!("event stream ended before {name}");
    };
    tokio::time::timeout(STEP, search)
        .await
        .unwrap_or_else(|_| panic!("no {name} event within {STEP:?}"))
}

async fn status(qmp: &Qmp) -> String {
    let reply = qmp.execute("query-status", None).await.unwrap();
    reply["status"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn greeting_reports_qemu_7_or_newer_and_vm_starts_stopped() {
    let vm = start_qemu().await;
    let version = &vm.qmp.greeting().version;
    assert!(version.major >= 7, "unexpected QEMU version {version:?}");
    let status = status(&vm.qmp).await;
    assert!(
        status == "prelaunch" || status == "paused",
        "status with -S: {status}"
    );
    // Same numbers through a command as in the greeting.
    let reported = vm.qmp.execute("query-version", None).await.unwrap();
    assert_eq!(reported["qemu"]["major"], json!(version.major));
}

#[tokio::test]
async fn cont_and_stop_emit_resume_and_stop_events() {
    let mut vm = start_qemu().await;
    vm.qmp.execute("cont", None).await.unwrap();
    let resume = next_event_named(&mut vm.events, "RESUME").await;
    assert!(resume.timestamp_micros > 0);
    assert_eq!(status(&vm.qmp).await, "running");

    vm.qmp.execute("stop", None).await.unwrap();
    next_event_named(&mut vm.events, "STOP").await;
    assert_eq!(status(&vm.qmp).await, "paused");
}

#[tokio::test]
async fn unknown_command_is_refused_with_command_not_found() {
    let vm = start_qemu().await;
    match vm.qmp.execute("vessel-no-such-command", None).await {
        Err(QmpError::Command { class, desc }) => {
            assert_eq!(class, "CommandNotFound");
            assert!(desc.contains("vessel-no-such-command"), "{desc}");
        }
        other => panic!("expected CommandNotFound, got {other:?}"),
    }
    // A refused command leaves the connection usable.
    assert!(!vm.qmp.is_closed());
    status(&vm.qmp).await;
}

#[tokio::test]
async fn concurrent_executes_each_get_their_own_reply() {
    let vm = start_qemu().await;
    // query-command-line-options echoes the option it was asked about, which
    // makes every reply attributable to its request.
    let options = ["machine", "drive", "chardev", "netdev", "device", "object"];
    let mut tasks = Vec::new();
    for option in options {
        let qmp = vm.qmp.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let reply = qmp
                    .execute(
                        "query-command-line-options",
                        Some(json!({ "option": option })),
                    )
                    .await
                    .unwrap();
                assert_eq!(reply[0]["option"], option, "reply for another request");
            }
        }));
    }
    // Large replies (the schema is ~200 KiB on one line) in the same mix.
    let schema = {
        let qmp = vm.qmp.clone();
        tokio::spawn(async move { qmp.execute("query-qmp-schema", None).await.unwrap() })
    };
    let machine_type = {
        let qmp = vm.qmp.clone();
        tokio::spawn(async move {
            qmp.execute(
                "qom-get",
                Some(json!({"path": "/machine", "property": "type"})),
            )
            .await
            .unwrap()
        })
    };
    for task in tasks {
        task.await.unwrap();
    }
    let schema = schema.await.unwrap();
    assert!(schema
        .as_array()
        .unwrap()
        .iter()
        .any(|entry| entry["name"] == "query-status"));
    assert_eq!(machine_type.await.unwrap(), Value::from("none-machine"));
}

#[tokio::test]
async fn quit_emits_shutdown_then_connection_closes_and_event_stream_ends() {
    let mut vm = start_qemu().await;
    // QEMU may close the socket right after the SHUTDOWN event, racing its
    // own reply to quit; either outcome means quit was accepted.
    match vm.qmp.execute("quit", None).await {
        Ok(_) | Err(QmpError::Closed) => {}
        Err(e) => panic!("quit failed: {e}"),
    }
    let shutdown = next_event_named(&mut vm.events, "SHUTDOWN").await;
    assert_eq!(shutdown.data["reason"], "host-qmp-quit");

    tokio::time::timeout(STEP, vm.qmp.closed())
        .await
        .expect("closed() did not resolve after quit");
    assert!(vm.qmp.is_closed());
    let rest = tokio::time::timeout(STEP, async {
        let mut rest = Vec::new();
        while let Some(event) = vm.events.next().await {
            rest.push(event.event);
        }
        rest
    })
    .await
    .expect("event stream did not end after the connection closed");
    assert!(!rest.contains(&"SHUTDOWN".to_owned()), "{rest:?}");
    assert!(matches!(
        vm.qmp.execute("query-status", None).await,
        Err(QmpError::Closed)
    ));

    let exit = tokio::time::timeout(STEP, vm.child.wait())
        .await
        .expect("QEMU did not exit after quit")
        .unwrap();
    assert!(exit.success(), "QEMU exit status {exit}");
}
