//! Disk hot-plug against the real QEMU (TCG) and the Vessel test guest: an attach or a detach
//! cut short (by a daemon kill between its QMP steps) is finished or undone by running it again,
//! and what QEMU holds of a disk is found by name ([`Instance::plugged_disks`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Notify;
use vessel_api::VmSpec;
use vessel_qemu::{
    Accel, Backend, DiskFile, Instance, InstanceEvent, LaunchRequest, PluggedDisk, QemuBackend,
};
use vessel_storage::{Format, QemuImg};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const MIB: u64 = 1 << 20;

/// The test guest's kernel and initramfs, built (or found cached) by the script.
fn guest() -> (PathBuf, PathBuf) {
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

fn disk(node: &str, path: &Path, format: Format) -> DiskFile {
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

fn request(run_dir: &Path, disks: Vec<DiskFile>) -> LaunchRequest {
    let (kernel, initrd) = guest();
    // From JSON, so that spec fields added later (with defaults) need no change here.
    let spec: VmSpec = serde_json::from_value(serde_json::json!({
        "name": "hotplug-test",
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
struct Vm {
    instance: Box<dyn Instance>,
    events: tokio::sync::mpsc::UnboundedReceiver<InstanceEvent>,
    log: Arc<(Mutex<Vec<u8>>, Notify)>,
    /// Kept open: the guest's console input.
    _input: OwnedWriteHalf,
}

impl Vm {
    fn new(mut instance: Box<dyn Instance>) -> Vm {
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
            _input: input,
        }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.log.0.lock().unwrap()).into_owned()
    }

    /// Waits until the console printed `needle` after byte `from`; returns the text from `from`.
    async fn wait_for(&self, from: usize, needle: &str) -> String {
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

    async fn kill(mut self) {
        self.instance.kill().unwrap();
        while let Some(event) = self.events.recv().await {
            if let InstanceEvent::Exited { .. } = event {
                return;
            }
        }
    }
}

/// Whether the process has `path` open.
fn has_open(pid: u32, path: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).ok().as_deref() == Some(path))
}

impl Vm {
    async fn plugged(&self) -> Vec<PluggedDisk> {
        self.instance.plugged_disks().await.unwrap()
    }

    /// Asks for the device's unplug and waits until QEMU has removed it.
    async fn unplug_device(&mut self, node: &str) {
        self.instance.unplug_disk(node).await.unwrap();
        let device = vessel_qemu::disk::device_id(node);
        let wait = async {
            while let Some(event) = self.events.recv().await {
                if matches!(&event, InstanceEvent::DeviceDeleted { device: d } if *d == device) {
                    return;
                }
            }
            panic!("QEMU exited during the unplug");
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("DEVICE_DELETED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_or_detach_cut_short_is_finished_or_undone_by_running_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.qcow2");
    QemuImg::new()
        .create(&data, Format::Qcow2, Some(16 * MIB), None)
        .await
        .unwrap();
    let data = std::fs::canonicalize(&data).unwrap();
    let req = request(&dir.path().join("run"), vec![]);
    let mut vm = Vm::new(QemuBackend::default().launch(&req).await.unwrap());
    vm.wait_for(0, "VESSEL-GUEST-READY").await;
    let pid = vm.instance.pid().pid;
    let node = "vd00000000000000a1";
    let file = disk(node, &data, Format::Qcow2);
    assert!(vm.plugged().await.is_empty());

    vm.instance.attach_disk(&file).await.unwrap();
    let plugged = vm.plugged().await;
    assert_eq!(plugged.len(), 1, "{plugged:?}");
    assert!(
        plugged[0].complete() && plugged[0].fdsets && !plugged[0].secret,
        "{plugged:?}"
    );
    assert!(has_open(pid, &data));

    // An attach cut short after the hot-plug, run again: the disk stays as it is.
    vm.instance.attach_disk(&file).await.unwrap();
    let again = vm.plugged().await;
    assert_eq!(again, plugged);

    // A detach cut short between device_del and blockdev-del: the node (and the file) stays.
    vm.unplug_device(node).await;
    let half = vm.plugged().await;
    assert_eq!(half.len(), 1, "{half:?}");
    assert!(
        !half[0].device && half[0].node && !half[0].complete(),
        "{half:?}"
    );
    assert!(has_open(pid, &data));

    // An attach run over those pieces clears them and plugs the disk from scratch.
    vm.instance.attach_disk(&file).await.unwrap();
    let replugged = vm.plugged().await;
    assert_eq!(replugged.len(), 1, "{replugged:?}");
    assert!(replugged[0].complete(), "{replugged:?}");

    // A detach run to the end, then its last step again (the re-run of a detach cut short
    // after blockdev-del): nothing of the disk is left, and the second time is no error.
    vm.unplug_device(node).await;
    vm.instance.remove_block_node(node).await.unwrap();
    vm.instance.remove_block_node(node).await.unwrap();
    assert!(vm.plugged().await.is_empty(), "{:?}", vm.plugged().await);
    assert!(!has_open(pid, &data), "QEMU still has the volume open");

    // And the disk can be plugged again.
    vm.instance.attach_disk(&file).await.unwrap();
    assert!(vm.plugged().await[0].complete());
    vm.kill().await;
}
