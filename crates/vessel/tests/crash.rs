//! Every VM converges after any crash: the state is derived from the process after a daemon
//! kill -9 (issue 14's reboot-then-start sequence), a power-off the guest ignores ends in a
//! forced stop that the events name, and a seeded randomized test of lifecycle requests, daemon
//! kills and QEMU kills checks the invariants once everything settled (docs/vm-lifecycle.md).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use vessel_api::{DesiredState, OperationStatus, RestartPolicy, StopVmRequest, Vm, VmState};
use vessel_cli::{ClientError, Outcome, VmAction};

/// A daemon whose stop timeout (the ACPI power-down wait, for reboots too) is `secs`.
fn daemon_with_stop_timeout(secs: u64) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("vessel.toml");
    std::fs::write(&config, format!("stop_timeout_secs = {secs}\n")).expect("write config");
    let daemon = Daemon::start_with(&["--config", config.to_str().unwrap()]);
    (daemon, dir)
}

/// Makes the guest ignore the ACPI power button, as a guest without acpid does: kills its acpid
/// once boot number `boot` (acpid runs from before its READY line) is up.
async fn deafen(client: &vessel_cli::Client, vm: &str, boot: usize) {
    let before = await_boots(client, vm, boot).await;
    let done = before.matches("acpid-gone-42").count() + 1;
    run_in_guest(
        client,
        vm,
        "kill $(cat /run/acpid.pid); echo acpid-gone-$((40+2))",
    )
    .await;
    await_console(client, vm, "acpid-gone-42", done).await;
}

/// `vm stop --timeout SECS`, waited for.
async fn stop_within(client: &vessel_cli::Client, vm: &str, secs: u64) -> Vm {
    let request = StopVmRequest {
        force: false,
        timeout_secs: Some(secs),
    };
    act(client, vm, VmAction::Stop(request)).await
}

async fn events_of(client: &vessel_cli::Client, vm: &str) -> Vec<String> {
    client
        .list_events(Some(vm), 200)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.message)
        .collect()
}

/// Issue 14: a reboot's power-off phase recorded "stopping", a daemon kill -9 cut it short, and
/// the guest kept running; the next `vm start` succeeded and the VM stayed "stopping" for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_cut_short_by_a_daemon_kill_then_start_leaves_the_vm_running() {
    let mut daemon = Daemon::start();
    let client = daemon.client();
    let vm = booted(
        &client,
        vessel_api::CreateVmRequest {
            restart_policy: Some(RestartPolicy::OnFailure),
            ..guest_vm("c4")
        },
    )
    .await;
    // The guest ignores the button, so the reboot stays in its power-off phase (30 s default).
    deafen(&client, "c4", 1).await;
    let accepted = client
        .vm_action("c4", &VmAction::Reboot { force: false }, false)
        .await
        .expect("reboot");
    let Outcome::Accepted(reboot) = accepted else {
        panic!("reboot --no-wait returned the VM");
    };
    await_state(&client, "c4", VmState::Stopping).await;
    daemon.kill9();
    daemon.spawn();
    let client = daemon.client();
    // The API is served after re-adoption: the state already comes from the QEMU.
    let adopted = client.get_vm("c4").await.expect("get vm");
    assert_eq!(adopted.state, VmState::Running, "{adopted:?}");
    assert_eq!(adopted.pid, vm.pid, "the same QEMU, re-adopted");
    let reboot = client
        .get_operation(&reboot.operation.id)
        .await
        .expect("operation");
    assert_eq!(reboot.status, OperationStatus::Failed, "{reboot:?}");
    let started = act(&client, "c4", VmAction::Start).await;
    assert_eq!(started.state, VmState::Running, "{started:?}");
    assert_eq!(started.desired_state, DesiredState::Running);
    assert_eq!(daemon.qemu_pids_of("c4"), vec![vm.pid.unwrap()]);
    assert_eq!(started.restart_count, 0, "nothing crashed");
    let events = events_of(&client, "c4").await;
    assert!(
        events
            .iter()
            .any(|e| e == "state stopping corrected to running (from its QEMU)"),
        "{events:?}"
    );
    // And the VM is fully controllable again: the guest answers, a stop with the button works
    // (the re-adopted guest still ignores it: the stop is forced after its timeout).
    run_in_guest(&client, "c4", "echo still-here-$((6*7))").await;
    await_console(&client, "c4", "still-here-42", 1).await;
    let stopped = stop_within(&client, "c4", 1).await;
    assert_eq!(stopped.state, VmState::Stopped);
    assert!(daemon.qemu_pids_of("c4").is_empty());
}

/// A power-off the guest ignores ends with the forced stop after the timeout, for `vm stop` and
/// for the clean reboot alike; the events say whether the guest powered off or was forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_power_off_ends_in_a_forced_stop_that_the_event_names() {
    let (daemon, _config) = daemon_with_stop_timeout(2);
    let client = daemon.client();
    let first = booted(&client, guest_vm("deaf")).await;
    deafen(&client, "deaf", 1).await;
    let rebooted = act(&client, "deaf", VmAction::Reboot { force: false }).await;
    assert_eq!(rebooted.state, VmState::Running);
    assert_ne!(
        rebooted.pid, first.pid,
        "a fresh QEMU after the forced power-off"
    );
    let events = events_of(&client, "deaf").await;
    assert!(
        events.iter().any(|e| e
            == "reboot: the guest did not power off within 2 s of the ACPI power button; forced stop (QEMU killed)"),
        "{events:?}"
    );
    // The new boot has acpid again: a plain stop is a clean power-off, and says so.
    await_boots(&client, "deaf", 2).await;
    let stopped = act(&client, "deaf", VmAction::Stop(StopVmRequest::default())).await;
    assert_eq!(stopped.state, VmState::Stopped);
    let events = events_of(&client, "deaf").await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("stop: the guest powered off ")
                && e.ends_with(" s after the ACPI power button")),
        "{events:?}"
    );
    // Started again and deaf again: `vm stop` forces after its own timeout.
    act(&client, "deaf", VmAction::Start).await;
    deafen(&client, "deaf", 3).await;
    let stopped = stop_within(&client, "deaf", 1).await;
    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(stopped.desired_state, DesiredState::Stopped);
    assert!(daemon.qemu_pids_of("deaf").is_empty());
    let events = events_of(&client, "deaf").await;
    assert!(
        events.iter().any(|e| e
            == "stop: the guest did not power off within 1 s of the ACPI power button; forced stop (QEMU killed)"),
        "{events:?}"
    );
}

// ----- the randomized crash test ----------------------------------------------------------------

/// splitmix64: a tiny seeded generator, so that a seed names one sequence of requests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one seed's run did.
#[derive(Default, Debug)]
struct Tally {
    requests: usize,
    refused: usize,
    /// Operations that ran to the end, by action and result ("attach-disk succeeded": 3).
    finished: BTreeMap<String, usize>,
    daemon_kills: usize,
    qemu_kills: usize,
}

/// The VMs of a run and their restart policies.
const VMS: [(&str, RestartPolicy); 3] = [
    ("r1", RestartPolicy::OnFailure),
    ("r2", RestartPolicy::OnFailure),
    ("r3", RestartPolicy::Never),
];

/// Seeds the suite runs: `VESSEL_CRASH_SEEDS` (comma-separated) replays or adds seeds; the
/// default is a fixed few, so that CI is repeatable.
fn seeds() -> Vec<u64> {
    match std::env::var("VESSEL_CRASH_SEEDS") {
        Ok(list) => list
            .split(',')
            .map(|s| s.trim().parse().expect("VESSEL_CRASH_SEEDS: numbers"))
            .collect(),
        Err(_) => vec![1, 2, 3],
    }
}

/// Steps per seed (`VESSEL_CRASH_STEPS`, default 40): requests, daemon kills, QEMU kills.
fn steps() -> usize {
    std::env::var("VESSEL_CRASH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40)
}

fn random_action(rng: &mut Rng) -> VmAction {
    match rng.below(8) {
        0 | 1 => VmAction::Start,
        2 => VmAction::Stop(StopVmRequest::default()),
        3 => VmAction::Stop(StopVmRequest {
            force: true,
            timeout_secs: None,
        }),
        4 => VmAction::Kill,
        5 => VmAction::Reboot { force: false },
        6 => VmAction::Pause,
        _ => VmAction::Resume,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_lifecycle_with_daemon_and_qemu_kills_converges() {
    run_seeds(Mix::Lifecycle).await;
}

/// The same with disk attach/detach and snapshots in the mix. Soak seed 369666284 found a disk
/// attach cut short by a daemon kill after the hot-plug and before the spec write (the volume
/// open in QEMU but absent from the spec, and the re-run attach failing on the node QEMU already
/// had): attach and detach now resume from what QEMU holds, and re-adoption makes QEMU's disks
/// what the spec says (docs/vm-lifecycle.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_volumes_and_snapshots_with_daemon_and_qemu_kills_converge() {
    run_seeds(Mix::WithVolumes).await;
}

/// Seed 369666284's state, made directly: a disk attach cut short by a daemon kill -9 after
/// QEMU's hot-plug and before the spec write (QEMU has `a`, the spec does not, the attach is
/// recorded as running), and a detach cut short after the spec write and before the unplug (QEMU
/// has `d`, the spec does not, the detach is recorded as running). After the restart both
/// operations succeed: `a` is attached (in the spec, open in QEMU), `d` is detached (in neither),
/// and `d` can be attached again at once (QEMU released its lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_attach_and_detach_cut_short_by_a_daemon_kill_converge() {
    let mut daemon = Daemon::start();
    let client = daemon.client();
    for name in ["a", "d"] {
        let request = volume_request(name, vessel_api::VolumeFormat::Qcow2, Some(16 << 20), None);
        client
            .create_volume("default", &request)
            .await
            .expect("volume");
    }
    let vm = booted(&client, guest_vm("c5")).await;
    for name in ["a", "d"] {
        let request = vessel_api::AttachDiskRequest {
            pool: None,
            volume: name.into(),
            read_only: false,
            shareable: false,
        };
        client
            .attach_disk("c5", &request, true)
            .await
            .expect("attach");
    }
    let pid = vm.pid.expect("pid");
    let volumes = client.list_volumes("default").await.expect("volumes");
    let both: BTreeSet<&str> = ["a", "d"].into();
    assert_eq!(open_volumes(pid, &volumes), both);

    // The kill, then the store as the cut-short operations left it.
    daemon.kill9();
    {
        let conn = rusqlite::Connection::open(daemon.data_dir.join("vessel.db")).unwrap();
        let get = |key: &str| -> serde_json::Value {
            let value: Vec<u8> = conn
                .query_row("SELECT value FROM kv WHERE key = ?1", [key], |row| {
                    row.get(0)
                })
                .unwrap();
            serde_json::from_slice(&value).unwrap()
        };
        // Offline, as the store's rows (a new key at the current revision).
        let put = |key: &str, value: &serde_json::Value| {
            let value = serde_json::to_vec(value).unwrap();
            let updated = conn
                .execute(
                    "UPDATE kv SET value = ?2 WHERE key = ?1",
                    rusqlite::params![key, value],
                )
                .unwrap();
            if updated == 0 {
                conn.execute(
                    "INSERT INTO kv (key, value, create_rev, mod_rev, version) \
                     SELECT ?1, ?2, value, value, 1 FROM meta WHERE name = 'revision'",
                    rusqlite::params![key, value],
                )
                .unwrap();
            }
        };
        let mut spec = get("vms/c5/spec");
        spec["spec"]["disks"]
            .as_array_mut()
            .unwrap()
            .retain(|d| d["volume"] != "a" && d["volume"] != "d");
        put("vms/c5/spec", &spec);
        let mut ops = conn
            .prepare("SELECT key FROM kv WHERE key LIKE 'ops/%'")
            .unwrap();
        let keys: Vec<String> = ops
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for key in keys {
            let mut op = get(&key);
            // An operation's arguments are its payload, one variant per action.
            let attached = &op["payload"]["attach_disk"]["volume"];
            if attached == "a" {
                op["status"] = "running".into();
                op["finished_at_ms"] = serde_json::Value::Null;
                put(&key, &op);
            } else if attached == "d" {
                let mut detach = op.clone();
                detach["id"] = "cut-short-detach".into();
                detach["action"] = "detach_disk".into();
                // As the previous version wrote records (the disk in a field of its own, no
                // payload): a cut-short operation of that version still runs after an upgrade.
                detach.as_object_mut().unwrap().remove("payload");
                detach["disk"] = op["payload"]["attach_disk"].clone();
                detach["status"] = "running".into();
                detach["finished_at_ms"] = serde_json::Value::Null;
                put("ops/cut-short-detach", &detach);
            }
        }
    }
    daemon.spawn();
    let vms = settle(0, &client).await;
    for op in client.list_operations().await.expect("operations") {
        if op.vm == "c5" {
            assert_eq!(
                op.status,
                OperationStatus::Succeeded,
                "{} {:?}",
                op.action.as_str(),
                op.error
            );
        }
    }
    let vm = vms.iter().find(|v| v.spec.name == "c5").expect("c5");
    assert_eq!(vm.pid, Some(pid), "the same QEMU, re-adopted");
    let disks: Vec<&str> = vm.spec.disks.iter().map(|d| d.volume.as_str()).collect();
    assert!(disks.contains(&"a") && !disks.contains(&"d"), "{disks:?}");
    let only_a: BTreeSet<&str> = ["a"].into();
    assert_eq!(open_volumes(pid, &volumes), only_a);
    let events = events_of(&client, "c5").await;
    assert!(
        events.iter().any(|e| e.contains("removed from QEMU")),
        "{events:#?}"
    );
    // Each cut-short operation counted once: the attach was re-run, the detach found its work.
    assert!(
        events.iter().any(|e| e.contains("disk default/d detached")),
        "{events:#?}"
    );
    // `d` is free: it can be attached again at once.
    let request = vessel_api::AttachDiskRequest {
        pool: None,
        volume: "d".into(),
        read_only: false,
        shareable: false,
    };
    client
        .attach_disk("c5", &request, true)
        .await
        .expect("attach d again");
    assert_eq!(open_volumes(pid, &volumes), both);
}

/// Which requests a run makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mix {
    /// start, stop, stop --force, kill, reboot, pause, resume.
    Lifecycle,
    /// Those and, half of the time, disk attach/detach and snapshot create/revert/delete.
    WithVolumes,
}

async fn run_seeds(mix: Mix) {
    let started = Instant::now();
    let mut totals = Tally::default();
    let seeds = seeds();
    for &seed in &seeds {
        let t0 = Instant::now();
        let tally = run_seed(seed, mix).await;
        println!("crash test seed {seed} ({mix:?}): {}", tally.summary(t0));
        totals.add(tally);
    }
    let passed = seeds.len();
    println!(
        "crash test ({mix:?}): {passed} seeds passed, {}",
        totals.summary(started)
    );
}

impl Tally {
    /// "R requests (F refused), D daemon kills, Q QEMU kills, T s" and the operations by result
    /// (scripts/soak.sh reads the first line).
    fn summary(&self, since: Instant) -> String {
        format!(
            "{} requests ({} refused), {} daemon kills, {} QEMU kills, {:.0} s\n  operations: {:?}",
            self.requests,
            self.refused,
            self.daemon_kills,
            self.qemu_kills,
            since.elapsed().as_secs_f64(),
            self.finished
        )
    }

    fn add(&mut self, other: Tally) {
        self.requests += other.requests;
        self.refused += other.refused;
        self.daemon_kills += other.daemon_kills;
        self.qemu_kills += other.qemu_kills;
        for (key, count) in other.finished {
            *self.finished.entry(key).or_default() += count;
        }
    }
}

/// The volumes of a `WithVolumes` run (16 MiB qcow2 in the default pool).
const VOLUMES: [&str; 3] = ["v1", "v2", "v3"];

/// A random disk or snapshot request for `vm`, with `--no-wait`; what it was and the answer.
async fn random_volume_request(
    client: &vessel_cli::Client,
    vm: &str,
    rng: &mut Rng,
    snapshots: &mut u32,
) -> (String, Result<(), ClientError>) {
    let volume = VOLUMES[rng.below(VOLUMES.len() as u64) as usize];
    // One of the snapshots asked for so far (some were refused or deleted: those get a 404).
    let snapshot = format!("s{}", 1 + rng.below(u64::from(*snapshots).max(1)));
    let (what, answer) = match rng.below(5) {
        0 | 1 => {
            let request = vessel_api::AttachDiskRequest {
                pool: None,
                volume: volume.into(),
                read_only: false,
                shareable: false,
            };
            (
                format!("attach {volume}"),
                client.attach_disk(vm, &request, false).await,
            )
        }
        2 => (
            format!("detach {volume}"),
            client.detach_disk(vm, "default", volume, false).await,
        ),
        3 => {
            *snapshots += 1;
            let request = vessel_api::CreateSnapshotRequest {
                name: format!("s{snapshots}"),
                memory: false,
            };
            (
                format!("snapshot s{snapshots}"),
                client.create_snapshot(vm, &request, false).await,
            )
        }
        _ if rng.below(2) == 0 => (
            format!("revert to {snapshot}"),
            client.revert_snapshot(vm, &snapshot, false).await,
        ),
        _ => (
            format!("delete snapshot {snapshot}"),
            client.delete_snapshot(vm, &snapshot, false).await,
        ),
    };
    (what, answer.map(|_| ()))
}

/// After a `WithVolumes` run: every volume is still there; no volume is written by two running
/// VMs; each running VM's QEMU has exactly its spec's volumes open; every snapshot's parent
/// exists.
async fn check_volumes(seed: u64, client: &vessel_cli::Client, vms: &[Vm]) {
    let replay = format!("seed {seed} (replay: VESSEL_CRASH_SEEDS={seed})");
    let volumes = client.list_volumes("default").await.expect("volumes");
    let names: BTreeSet<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    for volume in VOLUMES {
        assert!(
            names.contains(volume),
            "{replay}: volume {volume} lost: {names:?}"
        );
    }
    let mut writers: BTreeMap<&str, &str> = BTreeMap::new();
    for vm in vms {
        let name = vm.spec.name.as_str();
        let disks: BTreeSet<&str> = vm.spec.disks.iter().map(|d| d.volume.as_str()).collect();
        if let Some(pid) = vm.pid.filter(|_| vm.state.has_process()) {
            for disk in &disks {
                if let Some(other) = writers.insert(disk, name) {
                    panic!("{replay}: volume {disk} is written by running VMs {other} and {name}");
                }
            }
            let open = open_volumes(pid, &volumes);
            assert_eq!(
                open, disks,
                "{replay}: {name}'s QEMU has these volumes open, its spec names those"
            );
        }
        let snapshots = client.list_snapshots(name).await.expect("snapshots");
        let taken: BTreeSet<&str> = snapshots.iter().map(|s| s.name.as_str()).collect();
        for snapshot in &snapshots {
            if let Some(parent) = &snapshot.parent {
                assert!(
                    taken.contains(parent.as_str()),
                    "{replay}: {name}'s snapshot {} names a parent that is gone: {snapshots:?}",
                    snapshot.name
                );
            }
        }
    }
}

/// The volumes (of `volumes`) whose files the process has open.
fn open_volumes(pid: u32, volumes: &[vessel_api::Volume]) -> BTreeSet<&str> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("QEMU's fds");
    let targets: BTreeSet<PathBuf> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .collect();
    volumes
        .iter()
        .filter(|v| targets.contains(&PathBuf::from(&v.path)))
        .map(|v| v.name.as_str())
        .collect()
}

/// One seed: random requests with `--no-wait` at random short intervals, kill -9 of the daemon
/// (restarted at once) and now and then of a QEMU; then everything settles and the invariants
/// are checked. A failure names the seed: `VESSEL_CRASH_SEEDS=<seed>` replays its sequence (the
/// timing, and so the interleaving, differs from run to run).
async fn run_seed(seed: u64, mix: Mix) -> Tally {
    let (mut daemon, _config) = daemon_with_stop_timeout(3);
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    let mut qemu_kills: BTreeMap<&str, u32> = BTreeMap::new();
    let mut snapshots = 0;
    {
        let client = daemon.client();
        if mix == Mix::WithVolumes {
            for volume in VOLUMES {
                let request = volume_request(
                    volume,
                    vessel_api::VolumeFormat::Qcow2,
                    Some(16 << 20),
                    None,
                );
                client
                    .create_volume("default", &request)
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: create volume {volume}: {e}"));
            }
        }
        for (name, policy) in VMS {
            let request = vessel_api::CreateVmRequest {
                start: true,
                restart_policy: Some(policy),
                ..guest_vm(name)
            };
            client
                .create_vm(&request, false)
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: create {name}: {e}"));
        }
    }
    for _ in 0..steps() {
        let roll = rng.below(100);
        if roll < 20 {
            daemon.kill9();
            tally.daemon_kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
            daemon.spawn();
        } else if roll < 28 {
            let (name, _) = VMS[rng.below(VMS.len() as u64) as usize];
            if let Some(pid) = daemon.qemu_pids_of(name).first() {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
                *qemu_kills.entry(name).or_default() += 1;
                tally.qemu_kills += 1;
            }
        } else {
            let (name, _) = VMS[rng.below(VMS.len() as u64) as usize];
            tally.requests += 1;
            let client = daemon.client();
            let what = if mix == Mix::WithVolumes && rng.below(2) == 0 {
                random_volume_request(&client, name, &mut rng, &mut snapshots).await
            } else {
                let action = random_action(&mut rng);
                let answer = client.vm_action(name, &action, false).await.map(|_| ());
                (format!("{action:?}"), answer)
            };
            match what {
                (_, Ok(())) => {}
                // Refusals (a pause of a stopped VM, a detach of a disk not attached...) are
                // answers too; nothing else is.
                (_, Err(ClientError::Api { status, .. })) if (400..500).contains(&status) => {
                    tally.refused += 1
                }
                (what, Err(e)) => panic!("seed {seed}: {what} of {name}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
    }
    let client = daemon.client();
    let vms = settle(seed, &client).await;
    check_invariants(seed, &daemon, &vms, &qemu_kills);
    if mix == Mix::WithVolumes {
        check_volumes(seed, &client, &vms).await;
    }
    for op in client.list_operations().await.expect("operations") {
        let key = format!("{} {}", op.action.as_str(), op.status.as_str());
        *tally.finished.entry(key).or_default() += 1;
        if let Some(error) = &op.error {
            println!("  {} {} failed: {error}", op.vm, op.action.as_str());
        }
    }
    // A daemon restart on a settled host changes nothing: the same QEMUs (pid and start time)
    // are re-adopted, in the same states.
    let before: Vec<_> = vms.iter().map(identity).collect();
    daemon.kill9();
    daemon.spawn();
    let client = daemon.client();
    let vms = settle(seed, &client).await;
    let after: Vec<_> = vms.iter().map(identity).collect();
    assert_eq!(
        before, after,
        "seed {seed} (replay: VESSEL_CRASH_SEEDS={seed}): a restart of a settled daemon changed VMs"
    );
    check_invariants(seed, &daemon, &vms, &qemu_kills);
    if mix == Mix::WithVolumes {
        check_volumes(seed, &client, &vms).await;
    }
    tally
}

/// A VM's state and its QEMU by pid and start time.
fn identity(vm: &Vm) -> (String, VmState, Option<(u32, Option<u64>)>) {
    let process = vm.pid.map(|pid| (pid, process_start_time(pid)));
    (vm.spec.name.clone(), vm.state, process)
}

/// Waits until no operation is pending or running and no VM is in a transitional state or
/// away from its desired state (a restart under the policy is no operation: it follows a QEMU
/// exit). Fails, naming the seed, if that does not happen within the limit.
async fn settle(seed: u64, client: &vessel_cli::Client) -> Vec<Vm> {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let ops = client.list_operations().await.expect("operations");
        let vms = client.list_vms().await.expect("vms");
        let busy: Vec<_> = ops
            .iter()
            .filter(|o| !o.status.is_terminal())
            .map(|o| format!("{} {} {}", o.vm, o.action.as_str(), o.status.as_str()))
            .collect();
        let unsettled: Vec<_> = vms.iter().filter(|v| !converged(v)).collect();
        if busy.is_empty() && unsettled.is_empty() {
            return vms;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: never settled (replay: VESSEL_CRASH_SEEDS={seed}); operations not finished: {busy:?}; VMs: {unsettled:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The VM rests where it was asked to be. A VM asked to be paused that is not running stays
/// down: a pause never starts one.
fn converged(vm: &Vm) -> bool {
    match vm.desired_state {
        DesiredState::Running => vm.state == VmState::Running,
        DesiredState::Paused => matches!(
            vm.state,
            VmState::Paused | VmState::Stopped | VmState::Crashed
        ),
        DesiredState::Stopped => matches!(vm.state, VmState::Stopped | VmState::Crashed),
    }
}

fn check_invariants(seed: u64, daemon: &Daemon, vms: &[Vm], qemu_kills: &BTreeMap<&str, u32>) {
    let replay = format!("seed {seed} (replay: VESSEL_CRASH_SEEDS={seed})");
    let names: BTreeSet<&str> = vms.iter().map(|v| v.spec.name.as_str()).collect();
    let expected: BTreeSet<&str> = VMS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, expected, "{replay}: no VM lost");
    let mut owned = BTreeSet::new();
    for vm in vms {
        let name = vm.spec.name.as_str();
        let qemus = daemon.qemu_pids_of(name);
        assert!(
            !matches!(vm.state, VmState::Starting | VmState::Stopping),
            "{replay}: {name} rests in a transitional state: {vm:?}"
        );
        if vm.state.has_process() {
            let pid = vm
                .pid
                .unwrap_or_else(|| panic!("{replay}: {name} has no pid: {vm:?}"));
            assert_eq!(
                qemus,
                vec![pid],
                "{replay}: {name} is {} with exactly its recorded QEMU",
                vm.state.as_str()
            );
            assert!(
                process_start_time(pid).is_some(),
                "{replay}: {name}'s QEMU {pid} is gone"
            );
            owned.insert(pid);
        } else {
            assert!(
                qemus.is_empty() && vm.pid.is_none(),
                "{replay}: {name} is {} but QEMU runs: {qemus:?}, {vm:?}",
                vm.state.as_str()
            );
        }
        let kills = qemu_kills.get(name).copied().unwrap_or(0);
        match vm.spec.restart_policy {
            RestartPolicy::Never => assert_eq!(
                vm.restart_count, 0,
                "{replay}: {name} has restart policy never"
            ),
            _ => assert!(
                vm.restart_count <= kills,
                "{replay}: {name} restarted {} times for {kills} QEMU kills",
                vm.restart_count
            ),
        }
    }
    let all: BTreeSet<u32> = daemon.qemu_pids().into_iter().collect();
    assert_eq!(
        all, owned,
        "{replay}: every QEMU of this daemon belongs to a VM that should run it"
    );
}

/// A process's start time (field 22 of /proc/PID/stat), if it runs.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/stat"))).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}
