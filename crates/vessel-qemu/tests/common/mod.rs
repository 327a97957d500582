//! What the tests of vessel-qemu share: the test guest (scripts/build-test-guest.sh), a launch
//! request for it, and a running VM with its console log and a way to type into it.

#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Notify;
use vessel_api::VmSpec;
use vessel_qemu::{Accel, DiskFile, Instance, InstanceEvent, LaunchRequest};
use vessel_storage::Format;

pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
pub const MIB: u64 = 1 << 20;

/// The test guest's kernel and initramfs, built (or found cached) by the script.
pub fn guest() -> (PathBuf, PathBuf) {
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
    (dir.join("vmlinuz"), dir.join("initramfs.img"))
}

pub fn disk(node: &str, path: &Path, format: Format) -> DiskFile {
    DiskFile {
        node_name: node.into(),
        path: path.to_path_buf(),
        format,
        read_only: false,
        shareable: false,
        serial: node.into(),
        key: None,
        backing: vec![],
    }
}

pub fn request(name: &str, run_dir: &Path, disks: Vec<DiskFile>) -> LaunchRequest {
    let (kernel, initrd) = guest();
    // From JSON, so that spec fields added later (with defaults) need no change here.
    let spec: VmSpec = serde_json::from_value(serde_json::json!({
        "name": name,
        "cpus": 1,
        "memory_mib": 128,
        "boot": {
            "type": "kernel",
            "kernel": kernel,
            "initrd": initrd,
            "cmdline": "quiet vessel.noecho",
        },
        "machine": "q35",
        "nic": "none",
        "restart_policy": "never",
    }))
    .expect("a valid spec");
    LaunchRequest {
        spec,
        accel: Accel::Tcg,
        run_dir: run_dir.to_path_buf(),
        disks,
        seed: None,
        nics: vec![],
        boot_files: vec![],
    }
}

/// A running VM with its console log and a way to type into it.
pub struct Vm {
    pub instance: Box<dyn Instance>,
    pub events: tokio::sync::mpsc::UnboundedReceiver<InstanceEvent>,
    log: Arc<(Mutex<Vec<u8>>, Notify)>,
    pub input: OwnedWriteHalf,
}

impl Vm {
    pub fn new(mut instance: Box<dyn Instance>) -> Vm {
        let events = instance.take_events().unwrap();
        let (mut output, input) = instance.take_console().unwrap().into_split();
        let log = Arc::new((Mutex::new(Vec::new()), Notify::new()));
        let sink = Arc::clone(&log);
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = output.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.0.lock().unwrap().extend_from_slice(&buf[..n]);
                sink.1.notify_waiters();
            }
        });
        Vm {
            instance,
            events,
            log,
            input,
        }
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.log.0.lock().unwrap()).into_owned()
    }

    /// Waits until the console printed `needle` after byte `from`; returns the text from `from`.
    pub async fn wait_for(&self, from: usize, needle: &str) -> String {
        let wait = async {
            loop {
                let notified = self.log.1.notified();
                let text = {
                    let log = self.log.0.lock().unwrap();
                    String::from_utf8_lossy(&log[from.min(log.len())..]).into_owned()
                };
                if text.contains(needle) {
                    return text;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(BOOT_TIMEOUT, wait).await {
            Ok(text) => text,
            Err(_) => panic!(
                "the guest did not print {needle:?}; console:\n{}",
                self.output()
            ),
        }
    }

    pub fn len(&self) -> usize {
        self.log.0.lock().unwrap().len()
    }

    /// Runs a shell line in the guest and returns what it printed. The line must end by printing
    /// `done` (computed by the shell, so that an echo of the typed line cannot match it).
    pub async fn run(&mut self, line: &str, done: &str) -> String {
        let from = self.len();
        self.input
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.wait_for(from, done).await
    }

    /// The boot id of the READY line.
    pub async fn boot_id(&self) -> String {
        const READY: &str = "VESSEL-GUEST-READY boot=";
        let text = self.wait_for(0, READY).await;
        let start = text.find(READY).unwrap() + READY.len();
        let rest = self.wait_for(start, "\n").await;
        let id: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
        assert_eq!(id.len(), 32, "{rest:?}");
        id
    }

    pub async fn kill(mut self) {
        self.instance.kill().unwrap();
        while let Some(event) = self.events.recv().await {
            if let InstanceEvent::Exited { .. } = event {
                return;
            }
        }
    }
}
