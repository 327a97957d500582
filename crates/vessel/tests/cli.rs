//! The `vessel` command line end to end: the real binary against a real daemon and guest.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::*;

fn vessel(daemon: &Daemon, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vessel"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .output()
        .expect("run vessel")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_console_and_stop_through_the_cli() {
    let daemon = Daemon::start();
    let guest = guest();
    let kernel = guest.kernel.to_string_lossy();
    let initrd = guest.initrd.to_string_lossy();
    let out = vessel(
        &daemon,
        &[
            "vm",
            "create",
            "cli1",
            "--memory",
            "128M",
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--cmdline",
            "quiet",
            "--start",
            "--output",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let vm: vessel_api::Vm =
        serde_json::from_slice(&out.stdout).expect("create --output json prints the VM");
    assert_eq!(
        (vm.spec.memory_mib, vm.state),
        (128, vessel_api::VmState::Running)
    );

    let list = vessel(&daemon, &["vm", "list"]);
    let table = text(&list.stdout);
    assert!(
        table.lines().next().unwrap_or_default().contains("NAME"),
        "{table}"
    );
    assert!(
        table.contains("cli1") && table.contains("running"),
        "{table}"
    );

    await_console(&daemon.client(), "cli1", "VESSEL-GUEST-READY", 1).await;
    // `vessel vm console` with a pipe for stdin: the command reaches the guest's shell and its
    // output comes back.
    let mut console = Command::new(env!("CARGO_BIN_EXE_vessel"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["vm", "console", "cli1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    console
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo cli-$((20+22))\n")
        .unwrap();
    let out = console.wait_with_output().unwrap();
    assert!(
        text(&out.stdout).contains("cli-42"),
        "stdout: {} stderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let events = vessel(&daemon, &["event", "list", "--vm", "cli1"]);
    let events = text(&events.stdout);
    assert!(
        events.contains("EVENT") && events.contains("started (QEMU pid"),
        "{events}"
    );

    let stop = vessel(&daemon, &["vm", "stop", "cli1"]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    let show = vessel(&daemon, &["vm", "show", "cli1", "--output", "json"]);
    let vm: vessel_api::Vm = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(vm.state, vessel_api::VmState::Stopped);
}

#[test]
fn exit_codes_tell_errors_apart() {
    let daemon = Daemon::start();
    let missing = vessel(&daemon, &["vm", "show", "ghost"]);
    assert_eq!(
        missing.status.code(),
        Some(3),
        "not found: {}",
        text(&missing.stderr)
    );
    assert!(text(&missing.stderr).contains("not found"));
    let bad = vessel(
        &daemon,
        &["vm", "create", "bad/name", "--kernel", "/nonexistent"],
    );
    assert_eq!(bad.status.code(), Some(2), "invalid: {}", text(&bad.stderr));
    let unreachable = Command::new(env!("CARGO_BIN_EXE_vessel"))
        .args(["--socket", "/nonexistent/vessel.sock", "vm", "list"])
        .output()
        .unwrap();
    assert_eq!(
        unreachable.status.code(),
        Some(7),
        "{}",
        text(&unreachable.stderr)
    );
    assert!(text(&unreachable.stderr).contains("/nonexistent/vessel.sock"));
    // `host check` works before any daemon exists: it checks this host directly.
    let local = Command::new(env!("CARGO_BIN_EXE_vessel"))
        .args(["--socket", "/nonexistent/vessel.sock", "host", "check"])
        .output()
        .unwrap();
    assert_eq!(local.status.code(), Some(0), "{}", text(&local.stderr));
    assert!(
        text(&local.stdout).contains("PASS   QEMU"),
        "{}",
        text(&local.stdout)
    );
    assert!(text(&local.stderr).contains("checking this host directly"));
    let help = Command::new(env!("CARGO_BIN_EXE_vessel"))
        .args(["vm", "create", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(text(&help.stdout).contains("--restart-policy"));
}
