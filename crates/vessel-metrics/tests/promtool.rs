//! The rendered exposition must pass `promtool check metrics`, lint included: it is what
//! Prometheus itself would accept and what its naming conventions expect.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use vessel_metrics::{prometheus, synthetic};

/// Runs `promtool check metrics` on `text`; Err with its output if it reports anything.
fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("NOT_INSTALLED".into());
        }
        Err(e) => panic!("running promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exit 1 is a parse error, 3 a lint problem; both fail, and so does any output on success
    // (a future promtool might warn without changing its exit code).
    if out.status.success() && report.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics: {}\n{report}", out.status))
    }
}

/// Checks, or explains how to get promtool. Never passes silently without it, unless asked to.
fn check(text: &str) {
    match promtool_check(text) {
        Ok(()) => {}
        Err(e) if e == "NOT_INSTALLED" => {
            if std::env::var("VESSEL_SKIP_PROMTOOL").as_deref() == Ok("1") {
                eprintln!("promtool not installed; skipped because VESSEL_SKIP_PROMTOOL=1");
                return;
            }
            panic!(
                "promtool is not installed: run scripts/install-deps.sh as root (it installs the \
                 Debian package `prometheus`), or set VESSEL_SKIP_PROMTOOL=1 to skip this check"
            );
        }
        Err(e) => panic!("{e}\n--- exposition ---\n{text}"),
    }
}

#[test]
fn promtool_accepts_full_exposition() {
    let mut vms = synthetic::vms(20, 4, 2);
    // Hostile label values, an unknown state, a VM with no disks or NICs, a zero counter.
    vms[0].name = "quote\"back\\slash\nnewline".into();
    vms[1].state = "migrating".into();
    vms[2].disks.clear();
    vms[2].nics.clear();
    vms[2].network_note = Some("user-mode networking has no counters".into());
    vms[3].restarts_total = 0;
    vms[4].disks[0].device = "ide0-hd0 \"x\"".into();
    let host = synthetic::host(&vms);
    check(&prometheus::render(
        &host,
        &vms,
        Some(Duration::from_micros(1234)),
    ));
}

#[test]
fn promtool_accepts_host_only_exposition() {
    let mut host = synthetic::host(&[]);
    host.disks.clear();
    host.nics.clear();
    check(&prometheus::render(&host, &[], None));
}

#[test]
fn promtool_rejects_a_bad_exposition() {
    // Guards the guard: a counter without `_total` must fail, so a broken promtool call (wrong
    // arguments, output ignored) cannot make the tests above pass vacuously.
    let bad = "# HELP foo_count x\n# TYPE foo_count counter\nfoo_count 1\n";
    match promtool_check(bad) {
        Err(e) if e == "NOT_INSTALLED" => check(bad),
        Err(_) => {}
        Ok(()) => panic!("promtool accepted a lint problem"),
    }
}
