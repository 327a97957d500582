//! A real distribution end to end: the Debian 12 cloud image built by
//! scripts/build-cloud-image.sh (debootstrap, linux-image-cloud-amd64, cloud-init) is imported
//! through the API, a VM is made from it as a linked clone with user-data, and it boots from its
//! own disk through the firmware (SeaBIOS -> GRUB -> kernel, root disk on virtio-scsi). The
//! serial console shows that cloud-init ran: the hostname is the VM's name, a user-data command
//! ran, and growpart grew the root file system into the larger disk.
//!
//! Slow (a full systemd + cloud-init boot under TCG, about 1-2 minutes; a cold image build adds
//! 2-3 minutes, cached in ${VESSEL_CLOUD_IMAGE_DIR:-~/.cache/vessel/cloud-image}). Needs root
//! and network for the build.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use vessel_api::{CreateVmRequest, ImportImageRequest, NicKind, RestartPolicy, VmState};
use vessel_cli::{Client, Outcome};

const GIB: u64 = 1024 * 1024 * 1024;
/// A systemd + cloud-init boot under TCG took 50-120 s on a 2-core host, depending on its load.
const CLOUD_BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// The cloud image's directory, built once per test process (the script caches across runs).
fn cloud_image_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = std::env::var_os("VESSEL_CLOUD_IMAGE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var("HOME").unwrap_or("/root".into()))
                    .join(".cache/vessel/cloud-image")
            });
        let started = Instant::now();
        let status = Command::new("bash")
            .arg(root.join("scripts/build-cloud-image.sh"))
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/build-cloud-image.sh");
        assert!(
            status.success(),
            "scripts/build-cloud-image.sh failed (it needs root and network access to \
             deb.debian.org)"
        );
        eprintln!(
            "cloud image ready in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            dir.display()
        );
        dir
    })
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// Follows the VM's console until every needle has appeared; returns the console text and, per
/// needle, the time it first appeared (from the call).
async fn await_all(client: &Client, vm: &str, needles: &[&str]) -> (String, Vec<Duration>) {
    let started = Instant::now();
    let found: Vec<std::cell::Cell<Option<Duration>>> =
        needles.iter().map(|_| std::cell::Cell::new(None)).collect();
    let text = await_console_within(
        client,
        vm,
        &format!("{needles:?}"),
        CLOUD_BOOT_TIMEOUT,
        |text| {
            for (needle, at) in needles.iter().zip(&found) {
                if at.get().is_none() && text.contains(needle) {
                    at.set(Some(started.elapsed()));
                }
            }
            found.iter().all(|at| at.get().is_some())
        },
    )
    .await;
    (text, found.iter().filter_map(|at| at.get()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debian_cloud_image_boots_from_its_disk_and_runs_cloud_init() {
    let image_dir = cloud_image_dir();
    let source = image_dir.join("debian-cloud.qcow2");
    let digest = sha256_of(&source);

    let daemon = Daemon::start();
    let client = daemon.client();

    let import_started = Instant::now();
    let image = match client
        .import_image(
            &ImportImageRequest {
                name: "debian12".into(),
                source: source.to_string_lossy().into_owned(),
                sha256: Some(digest.clone()),
                ..Default::default()
            },
            true,
        )
        .await
    {
        Ok(Outcome::Done(image)) => image,
        other => panic!("import the cloud image: {other:?}"),
    };
    eprintln!(
        "imported {} MiB in {:.1} s",
        image.allocated_bytes >> 20,
        import_started.elapsed().as_secs_f64()
    );
    assert_eq!(image.sha256, digest);
    assert!(image.virtual_bytes < 2 * GIB, "{image:?}");

    // The marker's output differs from its text in the user-data ($(hostname), $((6*7)), df), so
    // only a command that really ran can produce it.
    let user_data = "#cloud-config\n\
        runcmd:\n  \
        - [sh, -c, 'echo \"VESSEL-CLOUD-RAN host=$(hostname) sum=$((6*7)) \
        rootfs=$(df -BM --output=size / | tail -n1 | tr -d \" \")\" > /dev/ttyS0']\n";
    let request = CreateVmRequest {
        name: "cloudvm1".into(),
        cpus: 2,
        memory_mib: 512,
        image: Some("debian12".into()),
        disk_size_bytes: Some(2 * GIB),
        nic: Some(NicKind::User),
        user_data: Some(user_data.into()),
        restart_policy: Some(RestartPolicy::Never),
        start: true,
        ..Default::default()
    };
    let started = Instant::now();
    let vm = create(&client, &request).await;
    let create_took = started.elapsed();
    assert_eq!(vm.state, VmState::Running);

    // The root disk is a linked clone of the image, grown to the size asked for.
    let root = client.get_volume("default", "cloudvm1-root").await.unwrap();
    assert_eq!(root.backing_volume.as_deref(), Some("debian12"), "{root:?}");
    assert_eq!(root.virtual_bytes, 2 * GIB, "{root:?}");
    assert!(
        root.allocated_bytes < 64 * 1024 * 1024,
        "a linked clone holds only the guest's writes: {root:?}"
    );

    // No kernel given: QEMU boots the firmware, which boots the root disk.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", vm.pid.unwrap())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(!cmdline.contains("-kernel"), "{cmdline}");
    assert!(
        cmdline.contains("scsi-cd"),
        "the cloud-init seed: {cmdline}"
    );

    let (console, at) = await_all(
        &client,
        "cloudvm1",
        &["cloudvm1 login:", "VESSEL-CLOUD-RAN host=cloudvm1 sum=42 "],
    )
    .await;
    eprintln!(
        "cloudvm1: created and started in {:.1} s; then the login prompt after {:.1} s, the \
         runcmd output after {:.1} s",
        create_took.as_secs_f64(),
        at[0].as_secs_f64(),
        at[1].as_secs_f64()
    );
    // The firmware loaded GRUB from the disk (it prints nothing of its own with no menu, but the
    // kernel it started says which command line GRUB's config gave it).
    assert!(
        console.contains("root=LABEL=vessel-root"),
        "the kernel came from GRUB on the disk:\n{console}"
    );
    // growpart + resize2fs grew the root fs from about 1 GiB to about 2 GiB. The marker line may
    // have arrived in pieces: wait for its end.
    let marker = "VESSEL-CLOUD-RAN host=cloudvm1 sum=42 rootfs=";
    let console = await_console_within(
        &client,
        "cloudvm1",
        "the whole marker line",
        CLOUD_BOOT_TIMEOUT,
        |text| {
            text.split(marker)
                .nth(1)
                .is_some_and(|rest| rest.contains('\n'))
        },
    )
    .await;
    let rootfs_mib: u64 = console
        .split("VESSEL-CLOUD-RAN host=cloudvm1 sum=42 rootfs=")
        .nth(1)
        .and_then(|rest| rest.split('M').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rootfs size in the marker:\n{console}"));
    assert!(
        (1700..2048).contains(&rootfs_mib),
        "the root fs was not grown into the 2 GiB disk: {rootfs_mib} MiB"
    );

    let vm = client.get_vm("cloudvm1").await.unwrap();
    assert_eq!(vm.state, VmState::Running, "{vm:?}");

    // The image runs qemu-guest-agent: the guest's address shows, and a live snapshot freezes
    // the guest's file systems around it. The agent starts late in the boot; ask until it
    // answers (a guest without one answers "no" within half a second).
    let deadline = Instant::now() + CLOUD_BOOT_TIMEOUT;
    let guest = loop {
        let guest = client.guest_info("cloudvm1").await.unwrap();
        if guest.agent || Instant::now() > deadline {
            break guest;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(guest.agent, "{guest:?}");
    let addresses: Vec<&str> = guest
        .interfaces
        .iter()
        .flat_map(|i| i.addresses.iter().map(String::as_str))
        .collect();
    assert!(
        addresses.contains(&"10.0.2.15/24"),
        "user-mode networking's DHCP address: {guest:?}"
    );
    let snapshot = vessel_api::CreateSnapshotRequest {
        name: "frozen".into(),
        memory: false,
    };
    assert!(matches!(
        client.create_snapshot("cloudvm1", &snapshot, true).await,
        Ok(Outcome::Done(_))
    ));
    let events = client.list_events(Some("cloudvm1"), 50).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("file systems frozen")),
        "{events:?}"
    );
}
