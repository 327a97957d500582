//! Test harness: a real `vessel daemon` process on a temporary data dir, the real test guest
//! (built from Debian packages by scripts/build-test-guest.sh), and helpers that await what the
//! guest prints.

#![allow(dead_code)]

pub mod netns;
pub mod remote;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use vessel_api::{CreateVmRequest, RestartPolicy, Vm, VmState};
use vessel_cli::{Client, Outcome};

/// Generous: ten TCG guests booting at once on two cores take a while.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// The test guest, built once per test process (the script itself caches across runs).
pub fn guest() -> &'static Guest {
    static GUEST: OnceLock<Guest> = OnceLock::new();
    GUEST.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = std::env::var_os("VESSEL_TEST_GUEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var("HOME").unwrap_or("/root".into()))
                    .join(".cache/vessel/test-guest")
            });
        let status = Command::new("bash")
            .arg(root.join("scripts/build-test-guest.sh"))
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/build-test-guest.sh");
        assert!(status.success(), "scripts/build-test-guest.sh failed");
        Guest {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initramfs.img"),
        }
    })
}

/// The `vessel` binary the tests run: this build's, or `VESSEL_TEST_BIN` (scripts/soak.sh runs
/// a copy, so that rebuilding the tree meanwhile does not change what it tests).
pub fn vessel_bin() -> PathBuf {
    std::env::var_os("VESSEL_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vessel")))
}

pub struct Daemon {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    /// The network namespace the daemon (and so its VMs) runs in, if not the test's own.
    pub netns: Option<String>,
    /// More `vessel daemon` arguments (e.g. `--listen`).
    pub extra_args: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Daemon {
    /// A daemon on a fresh data dir, with more `vessel daemon` arguments.
    pub fn start_with(extra_args: &[&str]) -> Daemon {
        Self::start_in(None, extra_args)
    }

    /// A daemon on a fresh data dir.
    pub fn start() -> Daemon {
        Self::start_in(None, &[])
    }

    /// A daemon on a fresh data dir inside network namespace `netns` (`ip netns exec`), so that
    /// the bridges, taps and rules it makes stay there.
    pub fn start_in_netns(netns: &str) -> Daemon {
        Self::start_in(Some(netns.to_string()), &[])
    }

    /// A daemon on an existing data dir (e.g. an extracted fixture), optionally inside network
    /// namespace `netns`; its socket and log (`daemon.log`) sit next to the data dir.
    pub fn start_on(data_dir: &Path, netns: Option<&str>, extra_args: &[&str]) -> Daemon {
        let mut daemon = Daemon {
            child: None,
            data_dir: data_dir.to_path_buf(),
            socket: data_dir.with_file_name("vessel.sock"),
            netns: netns.map(str::to_string),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            _tmp: None,
        };
        daemon.spawn();
        daemon
    }

    fn start_in(netns: Option<String>, extra_args: &[&str]) -> Daemon {
        Self::try_start_in(netns, extra_args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A daemon on a fresh data dir, or why it exited during start-up (with its log).
    pub fn try_start_with(extra_args: &[&str]) -> Result<Daemon, String> {
        Self::try_start_in(None, extra_args)
    }

    fn try_start_in(netns: Option<String>, extra_args: &[&str]) -> Result<Daemon, String> {
        let tmp = tempfile::Builder::new()
            .prefix("vessel-test-")
            .tempdir()
            .expect("tempdir");
        let mut daemon = Daemon {
            child: None,
            data_dir: tmp.path().join("data"),
            socket: tmp.path().join("vessel.sock"),
            netns,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            _tmp: Some(tmp),
        };
        daemon.try_spawn()?;
        Ok(daemon)
    }

    pub fn command(&self) -> Command {
        let mut cmd = match &self.netns {
            // `ip netns exec` execs the daemon: the child's pid is the daemon's.
            Some(netns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec"]).arg(netns).arg(vessel_bin());
                cmd
            }
            None => Command::new(vessel_bin()),
        };
        cmd.arg("daemon")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.extra_args);
        cmd.env("VESSEL_LOG", "info,vessel_daemon=debug");
        cmd
    }

    /// Starts (or restarts) the daemon process and waits until its API answers.
    pub fn spawn(&mut self) {
        self.try_spawn().unwrap_or_else(|e| panic!("{e}"));
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_file_name("daemon.log"))
            .expect("daemon log");
        let child = self
            .command()
            .stderr(log)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn vessel daemon");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "daemon exited during start-up ({status}); log:\n{}",
                    self.log()
                ));
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not open its socket; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_file_name("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// A clean stop (SIGTERM): the daemon finishes what it does at shutdown (the audit log's
    /// last checkpoint); its VMs keep running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill only sends a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait().expect("reap daemon");
        }
    }

    /// kill -9 of the daemon; its VMs keep running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill daemon");
            child.wait().expect("reap daemon");
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Pids of QEMU processes that belong to this daemon's data dir.
    pub fn qemu_pids(&self) -> Vec<u32> {
        let marker = self.data_dir.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            let zombie = std::fs::read_to_string(entry.path().join("stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true);
            if cmdline.starts_with("qemu-system") && cmdline.contains(&marker) && !zombie {
                pids.push(pid);
            }
        }
        pids
    }

    pub fn qemu_pids_of(&self, vm: &str) -> Vec<u32> {
        let dir = self
            .data_dir
            .join("vms")
            .join(vm)
            .to_string_lossy()
            .into_owned()
            + "/";
        self.qemu_pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&dir))
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        for pid in self.qemu_pids() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// The uid a VM's QEMU runs as (`/proc/PID/status`), checked to be one of the daemon's
/// default range: every QEMU runs as a user of its own.
pub fn qemu_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("QEMU's status");
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .expect("a Uid line");
    // vessel_qemu::DEFAULT_UID_BASE and UID_SLOTS: the daemon's default range.
    let base: u32 = 0x7000_0000;
    assert!(
        uid >= base && uid - base < 65_536,
        "QEMU runs as uid {uid}, outside the range from {base}"
    );
    uid
}

/// A request for an unencrypted volume in the caller's default project: `size` for a new one,
/// or `backing` for a linked clone (its size then is the backing volume's).
pub fn volume_request(
    name: &str,
    format: vessel_api::VolumeFormat,
    size: Option<u64>,
    backing: Option<&str>,
) -> vessel_api::CreateVolumeRequest {
    vessel_api::CreateVolumeRequest {
        name: name.into(),
        format,
        size_bytes: size,
        backing: backing.map(str::to_string),
        encrypted: false,
        project: None,
    }
}

/// A kernel-boot VM of the test guest.
pub fn guest_vm(name: &str) -> CreateVmRequest {
    let guest = guest();
    CreateVmRequest {
        name: name.into(),
        cpus: 1,
        memory_mib: 128,
        kernel: Some(guest.kernel.to_string_lossy().into_owned()),
        initrd: Some(guest.initrd.to_string_lossy().into_owned()),
        cmdline: Some("quiet".into()),
        restart_policy: Some(RestartPolicy::Never),
        ..Default::default()
    }
}

pub async fn create(client: &Client, request: &CreateVmRequest) -> Vm {
    match client.create_vm(request, true).await {
        Ok(Outcome::Done(vm)) => vm,
        Ok(Outcome::Accepted(_)) => panic!("create with wait returned 202"),
        Err(e) => panic!("create {} failed: {e}", request.name),
    }
}

pub async fn act(client: &Client, name: &str, action: vessel_cli::VmAction) -> Vm {
    match client.vm_action(name, &action, true).await {
        Ok(Outcome::Done(vm)) => vm,
        Ok(Outcome::Accepted(_)) => panic!("{action:?} with wait returned 202"),
        Err(e) => panic!("{action:?} of {name} failed: {e}"),
    }
}

/// Follows the VM's console until `needle` has appeared `count` times; returns all output seen.
pub async fn await_console(client: &Client, vm: &str, needle: &str, count: usize) -> String {
    await_console_until(client, vm, &format!("{needle:?} x{count}"), |text| {
        text.matches(needle).count() >= count
    })
    .await
}

/// Follows the VM's console until `count` boots have printed their whole READY line; returns
/// all output seen. (Console output arrives in chunks: a line can be cut anywhere.)
pub async fn await_boots(client: &Client, vm: &str, count: usize) -> String {
    await_console_until(client, vm, &format!("{count} boot ids"), |text| {
        boot_ids(text).len() >= count
    })
    .await
}

/// Follows the VM's console until `done` holds for everything seen so far.
pub async fn await_console_until(
    client: &Client,
    vm: &str,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    await_console_within(client, vm, what, BOOT_TIMEOUT, done).await
}

/// [`await_console_until`] with its own time limit.
pub async fn await_console_within(
    client: &Client,
    vm: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let follow = async {
        let mut body = client.console_log(vm, true).await.expect("console log");
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("console stream").into_data() {
                seen.extend_from_slice(&data);
                let text = String::from_utf8_lossy(&seen);
                if done(&text) {
                    return text.into_owned();
                }
            }
        }
        panic!("console of {vm} ended before {what} appeared");
    };
    match tokio::time::timeout(limit, follow).await {
        Ok(text) => text,
        Err(_) => {
            let log = client.console_log(vm, false).await.expect("console log");
            let bytes = log
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            panic!(
                "{what} did not appear on {vm}'s console within {limit:?}; console so far:\n{}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}

/// Waits until the VM's observed state satisfies `done` (the daemon writes state changes as they
/// happen; this polls the API for them with a deadline).
pub async fn await_vm(client: &Client, vm: &str, what: &str, done: impl Fn(&Vm) -> bool) -> Vm {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let current = client.get_vm(vm).await.expect("get vm");
        if done(&current) {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "{vm} never became {what}; last seen: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn await_state(client: &Client, vm: &str, state: VmState) -> Vm {
    await_vm(client, vm, state.as_str(), |v| v.state == state).await
}

/// The boot ids the guest printed, in order; only whole ones: 32 hex digits with something after
/// them (a chunk of console output can end in the middle of an id, and typed input can follow an
/// id before its newline does).
pub fn boot_ids(console: &str) -> Vec<String> {
    console
        .split("VESSEL-GUEST-READY boot=")
        .skip(1)
        .filter_map(|rest| {
            let id = rest.get(..32)?;
            let complete = id.chars().all(|c| c.is_ascii_hexdigit()) && rest.len() > 32;
            complete.then(|| id.to_string())
        })
        .collect()
}

/// Creates a started test-guest VM and waits until the guest reached userspace.
pub async fn booted(client: &Client, request: CreateVmRequest) -> Vm {
    let name = request.name.clone();
    let vm = create(
        client,
        &CreateVmRequest {
            start: true,
            ..request
        },
    )
    .await;
    await_console(client, &name, "VESSEL-GUEST-READY", 1).await;
    vm
}

pub const BOOT_SECTOR_MARKER: &[u8] = b"VESSEL-DISK-BOOT\r\n\0";

/// A boot sector: `cli; xor ax,ax; mov ds,ax; mov si,msg; mov dx,0x3f8; next: lodsb; test al,al;
/// jz done; out dx,al; jmp next; done: hlt; jmp done; msg: db "VESSEL-DISK-BOOT",13,10,0`.
pub fn boot_sector() -> Vec<u8> {
    let msg_at: u16 = 0x7c00 + 22;
    let mut code = vec![0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0xbe];
    code.extend_from_slice(&msg_at.to_le_bytes());
    code.extend_from_slice(&[
        0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xf4, 0xeb, 0xfd,
    ]);
    assert_eq!(code.len(), 22);
    code.extend_from_slice(BOOT_SECTOR_MARKER);
    code.resize(510, 0);
    code.extend_from_slice(&[0x55, 0xaa]);
    code.resize(1024 * 1024, 0);
    code
}

/// Types a shell command on the VM's serial console (the test guest runs a shell there).
pub async fn run_in_guest(client: &Client, vm: &str, command: &str) {
    use tokio::io::AsyncWriteExt;
    // Input typed before the guest's shell runs can be flushed with the tty: wait for the
    // shell's prompt after the latest boot.
    await_console_until(client, vm, "the shell prompt", |text| {
        text.rsplit("VESSEL-GUEST-READY")
            .next()
            .is_some_and(|boot| boot.contains("vessel-guest# "))
    })
    .await;
    let mut console = client.console_attach(vm).await.expect("attach console");
    console
        .write_all(format!("{command}\n").as_bytes())
        .await
        .unwrap();
    console.flush().await.unwrap();
}
