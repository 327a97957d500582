//! Acceptance test: boots the Debian cloud image (scripts/build-cloud-image.sh) under QEMU TCG with
//! a seed made by this crate, and checks on the serial console that cloud-init found and used it:
//! the hostname comes from meta-data, user-data's runcmd ran, vendor-data's bootcmd ran,
//! network-config's static address is on eth0, the seed the guest sees is an iso9660 labelled
//! cidata, and cloud-init finished without errors.
//!
//! Ignored by default (60-120 s of TCG, needs QEMU and the cached image). Run with
//!
//!     VESSEL_CLOUD_IMAGE_DIR=~/.cache/vessel/cloud-image \
//!       cargo test -p vessel-cloudinit --test boot_cloud_image -- --ignored --nocapture
//!
//! Like scripts/cloud-image/smoke-test.sh, the root disk is a qcow2 overlay on the cached image,
//! which stays untouched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vessel_cloudinit::{write_seed_image, MetaData, SeedFiles};

const HOSTNAME: &str = "vessel-iso-vm";
const TIMEOUT: Duration = Duration::from_secs(420);

const USER_DATA: &str = r#"#cloud-config
runcmd:
  - 'echo "VESSEL-ISO-RAN hostname=$(hostname)" > /dev/ttyS0'
  - 'echo "VESSEL-ISO-SEED $(blkid -t LABEL=cidata -o value -s TYPE)" > /dev/ttyS0'
  - 'echo "VESSEL-ISO-NET $(ip -o -4 addr show dev eth0)" > /dev/ttyS0'
  - [sh, -c, '(cloud-init status --wait --long 2>&1 | sed "s/^/VESSEL-STATUS /" > /dev/ttyS0) </dev/null >/dev/null 2>&1 &']
final_message: "VESSEL-ISO-FINAL cloud-init $VERSION finished after $UPTIME s"
"#;

const VENDOR_DATA: &str = r#"#cloud-config
bootcmd:
  - 'echo VESSEL-ISO-VENDOR > /dev/ttyS0'
"#;

/// A documentation address (RFC 5737) that nothing else would put on eth0.
const NETWORK_CONFIG: &str = r#"version: 1
config:
  - type: physical
    name: eth0
    subnets:
      - type: static
        address: 192.0.2.77/24
"#;

/// What must appear on the serial console, each with what it proves.
const MARKERS: &[(&str, &str)] = &[
    (
        "VESSEL-ISO-RAN hostname=vessel-iso-vm",
        "user-data runcmd ran, hostname from meta-data",
    ),
    (
        "VESSEL-ISO-SEED iso9660",
        "the cidata volume the guest sees is iso9660",
    ),
    ("VESSEL-ISO-VENDOR", "vendor-data bootcmd ran"),
    ("inet 192.0.2.77/24", "network-config applied"),
    ("VESSEL-ISO-FINAL", "cloud-init final stage"),
    (
        "VESSEL-STATUS status: done",
        "cloud-init status done (no errors)",
    ),
    ("vessel-iso-vm login:", "getty shows the new hostname"),
];

/// Kills QEMU when the test ends, however it ends.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn image_dir() -> PathBuf {
    let dir = std::env::var_os("VESSEL_CLOUD_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cache/vessel/cloud-image")
        });
    assert!(
        dir.join("debian-cloud.qcow2").is_file(),
        "{}/debian-cloud.qcow2 missing: run scripts/build-cloud-image.sh or set \
         VESSEL_CLOUD_IMAGE_DIR",
        dir.display()
    );
    dir
}

fn boot_with_seed(seed_device: &[&str]) {
    let images = image_dir();
    let work = tempfile::tempdir().unwrap();
    let seed = work.path().join("seed.iso");
    let root = work.path().join("root.qcow2");
    let serial = work.path().join("serial.log");

    let unique = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    write_seed_image(
        &SeedFiles {
            user_data: Some(USER_DATA.as_bytes().to_vec()),
            meta_data: MetaData {
                instance_id: format!("iid-vessel-iso-{}-{unique}", std::process::id()),
                local_hostname: HOSTNAME.into(),
            },
            network_config: Some(NETWORK_CONFIG.as_bytes().to_vec()),
            vendor_data: Some(VENDOR_DATA.as_bytes().to_vec()),
        },
        &seed,
    )
    .unwrap();

    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(images.join("debian-cloud.qcow2").canonicalize().unwrap())
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success(), "qemu-img create failed");

    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-M", "q35", "-m", "512M", "-smp", "1"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=root,format=qcow2,discard=unmap",
            root.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=root,bootindex=0"])
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=seed,format=raw,readonly=on",
            seed.display()
        ))
        .args(seed_device)
        .args(["-nic", "user,model=virtio-net-pci,restrict=on"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.path().join("qemu.err")).unwrap());
    eprintln!("boot: {cmd:?}");
    let started = Instant::now();
    let mut qemu = Qemu(cmd.spawn().expect("qemu-system-x86_64"));

    let mut seen: Vec<Option<Duration>> = vec![None; MARKERS.len()];
    loop {
        let log =
            String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).replace('\r', "");
        for (i, (marker, what)) in MARKERS.iter().enumerate() {
            if seen[i].is_none() && log.contains(marker) {
                seen[i] = Some(started.elapsed());
                eprintln!(
                    "boot: {:6.1} s  {marker:?}  ({what})",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        if seen.iter().all(Option::is_some) {
            break;
        }
        let exited = qemu.0.try_wait().unwrap();
        if exited.is_some() || started.elapsed() > TIMEOUT {
            let missing: Vec<&str> = MARKERS
                .iter()
                .zip(&seen)
                .filter(|(_, s)| s.is_none())
                .map(|((m, _), _)| *m)
                .collect();
            let tail: Vec<&str> = log.lines().rev().take(120).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let qemu_err =
                std::fs::read_to_string(work.path().join("qemu.err")).unwrap_or_default();
            panic!(
                "{} after {:.0} s; missing {missing:?}\nQEMU stderr: {qemu_err}\n----- serial log (tail) -----\n{}",
                if exited.is_some() {
                    "QEMU exited"
                } else {
                    "timeout"
                },
                started.elapsed().as_secs_f64(),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    for line in log.lines().filter(|l| l.contains("VESSEL-")) {
        eprintln!("boot: console: {}", line.trim_end());
    }
    eprintln!("boot: PASS after {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
#[ignore = "boots a VM under TCG (1-2 min); needs QEMU and scripts/build-cloud-image.sh's image"]
fn boot_cloud_image_with_iso_seed_on_virtio_disk() {
    boot_with_seed(&["-device", "virtio-blk-pci,drive=seed"]);
}

#[test]
#[ignore = "boots a VM under TCG (1-2 min); needs QEMU and scripts/build-cloud-image.sh's image"]
fn boot_cloud_image_with_iso_seed_on_cdrom() {
    // A SCSI CD-ROM on virtio-scsi. (Not q35's AHCI: Debian's cloud kernel has no ahci driver.)
    boot_with_seed(&[
        "-device",
        "virtio-scsi-pci,id=scsi0",
        "-device",
        "scsi-cd,drive=seed,bus=scsi0.0",
    ]);
}
