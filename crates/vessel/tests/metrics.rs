//! Performance figures of a real guest: CPU and disk counters move when the guest works, and
//! `/metrics` is valid Prometheus text (checked by promtool).

mod common;

use std::time::Instant;

use common::*;
use vessel_api::{AttachDiskRequest, CreateVolumeRequest, VolumeFormat};
use vessel_cli::Outcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_follow_what_the_guest_does_and_metrics_pass_promtool() {
    let daemon = Daemon::start();
    let client = daemon.client();
    client
        .create_volume(
            "default",
            &CreateVolumeRequest {
                name: "metdata".into(),
                format: VolumeFormat::Qcow2,
                size_bytes: Some(64 << 20),
                backing: None,
                encrypted: false,
                project: None,
            },
        )
        .await
        .unwrap();
    create(&client, &guest_vm("met1")).await;
    let attach = AttachDiskRequest {
        pool: None,
        volume: "metdata".into(),
        read_only: false,
        shareable: false,
    };
    assert!(matches!(
        client.attach_disk("met1", &attach, true).await,
        Ok(Outcome::Done(_))
    ));
    let stopped = client.vm_stats("met1").await.unwrap();
    assert_eq!(
        (stopped.state.as_str(), stopped.cpu_seconds_total),
        ("stopped", 0.0)
    );
    let missing = client.vm_stats("nope").await.unwrap_err();
    assert!(missing.to_string().contains("not found"), "{missing}");

    act(&client, "met1", vessel_cli::VmAction::Start).await;
    await_console(&client, "met1", "VESSEL-GUEST-READY", 1).await;

    // Disk: 8 MiB written by the guest show up on its disk.
    let before = client.vm_stats("met1").await.unwrap();
    let disk = |s: &vessel_metrics::VmStats| {
        s.disks
            .iter()
            .find(|d| d.device == "default/metdata")
            .cloned()
            .unwrap_or_else(|| panic!("no stats for the disk: {:?}", s.disks))
    };
    run_in_guest(
        &client,
        "met1",
        "dd if=/dev/zero of=/dev/sda bs=1M count=8 conv=fsync 2>/dev/null; echo dd-$((2*4))-done",
    )
    .await;
    await_console(&client, "met1", "dd-8-done", 1).await;
    let after = client.vm_stats("met1").await.unwrap();
    let written = disk(&after).write_bytes - disk(&before).write_bytes;
    assert!(written >= 8 << 20, "wrote {written} bytes");
    assert!(disk(&after).write_ops > disk(&before).write_ops);

    // CPU: a busy loop in the guest burns vCPU time at about the rate of the wall clock.
    let idle_start = client.vm_stats("met1").await.unwrap();
    let started = Instant::now();
    run_in_guest(
        &client,
        "met1",
        "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo burned-$((5*5))",
    )
    .await;
    await_console(&client, "met1", "burned-25", 1).await;
    let wall = started.elapsed().as_secs_f64();
    let busy = client.vm_stats("met1").await.unwrap();
    let burned = busy.vcpu_seconds_total - idle_start.vcpu_seconds_total;
    assert!(
        burned >= 0.5 * wall,
        "the vCPU ran {burned:.2} s during a {wall:.2} s busy loop"
    );
    assert!(busy.cpu_percent.is_some() && busy.memory_rss_bytes > 0);

    // /metrics: valid for promtool, with the VM's series.
    let text = client.metrics_text().await.unwrap();
    assert!(
        text.contains("vessel_vm_cpu_seconds_total{vm=\"met1\"}"),
        "{text}"
    );
    assert!(text.contains("vessel_host_cpus"), "{text}");
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/install-deps.sh installs it)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&checked.stdout).to_string()
        + &String::from_utf8_lossy(&checked.stderr);
    assert!(
        checked.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );

    let host = client.host_stats().await.unwrap();
    assert!(host.cpus >= 1 && host.memory_total_bytes > 0);
}
