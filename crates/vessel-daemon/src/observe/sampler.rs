//! Performance figures of VMs and the host: sampled every `sample_interval_secs` for `/metrics`
//! and `vessel top`, and on demand for `vessel vm stats`. A sample reads a few /proc files per
//! VM (no QMP round trip for CPU and memory) plus one `query-blockstats` over a probe that shares
//! the VM's QMP connection, so sampling never waits for a VM's worker and never stalls a VM.

use std::sync::Arc;

use std::time::{Duration, Instant};

use vessel_api::{NicKind, VmState};
use vessel_metrics::{HostStats, VmStats};
use vessel_qemu::stats::StatsProbe;

use crate::ctx::Ctx;
pub use crate::observe::samples::Round;
use crate::vm::model::{now_ms, Loaded};

/// Samples one VM now. A stopped VM gets zeros with its state.
pub async fn sample_vm(ctx: &Ctx, vm: &Loaded) -> VmStats {
    let spec = &vm.record.spec;
    let mut stats = VmStats {
        name: spec.name.clone(),
        state: vm.status.state.as_str().to_string(),
        restarts_total: u64::from(vm.status.restart_count),
        vcpus: spec.cpus,
        memory_configured_bytes: spec.memory_mib * 1024 * 1024,
        sampled_at_ms: now_ms(),
        ..VmStats::default()
    };
    if spec.nic == NicKind::User {
        stats.network_note =
            Some("user-mode networking (QEMU's NAT) exposes no traffic counters".into());
    }
    let Some(pid) = vm.status.pid.filter(|_| vm.status.state.has_process()) else {
        return stats;
    };
    if matches!(vm.status.state, VmState::Running | VmState::Paused) {
        stats.uptime_seconds = now_ms().saturating_sub(vm.status.state_changed_at_ms) / 1000;
    }
    let probe = ctx.sampler.probe(&spec.name);
    let tids = vcpu_threads(ctx, &spec.name, pid, probe.as_deref()).await;
    {
        let mut state = ctx.sampler.state.lock();
        let state = &mut *state;
        match state.procfs.process(pid, &tids) {
            Ok(sample) => {
                let now = Instant::now();
                let clk = state.procfs.clk_tck();
                let prev = state
                    .vm_prev
                    .get(&spec.name)
                    .map(|(p, at)| (p, now.duration_since(*at)));
                stats.apply_process_sample(&sample, prev, clk);
                state.vm_prev.insert(spec.name.clone(), (sample, now));
            }
            Err(e) => {
                // The process ended, or a vCPU thread list went stale: ask again next time.
                state.vcpu_threads.remove(&spec.name);
                tracing::debug!(vm = %spec.name, error = %e, "cannot sample the QEMU process");
            }
        }
    }
    stats.nics = spec.nics.iter().filter_map(tap_counters).collect();
    if let Some(probe) = probe {
        match probe.block_stats().await {
            Ok(mut disks) => {
                for disk in &mut disks {
                    disk.device = device_name(&vm.record.spec, &disk.device);
                }
                stats.disks = disks;
            }
            Err(e) => tracing::debug!(vm = %spec.name, error = %e, "no block stats this round"),
        }
    }
    stats
}

/// A NIC's counters from its tap, turned round to the guest's view (the tap's tx is what the
/// guest received). None when the tap is not there (user-mode NIC, VM between starts).
fn tap_counters(nic: &vessel_api::VmNic) -> Option<vessel_metrics::NicStats> {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/class/net/{}/statistics/{name}", nic.tap))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(vessel_metrics::NicStats {
        name: nic.id.clone(),
        rx_bytes: read("tx_bytes")?,
        tx_bytes: read("rx_bytes")?,
        rx_packets: read("tx_packets")?,
        tx_packets: read("rx_packets")?,
    })
}

/// The disk's name for people: `pool/volume` for attached volumes, `boot` for a boot disk path.
fn device_name(spec: &vessel_api::VmSpec, node: &str) -> String {
    if node == vessel_qemu::snapshot::BOOT_DISK_NODE {
        return "boot".into();
    }
    spec.disks
        .iter()
        .find(|d| vessel_core::disk_node_name(&d.pool, &d.volume) == node)
        .map_or_else(|| node.to_string(), |d| format!("{}/{}", d.pool, d.volume))
}

/// The vCPU thread ids of the VM's QEMU (cached per process; asked over QMP once).
async fn vcpu_threads(ctx: &Ctx, vm: &str, pid: u32, probe: Option<&dyn StatsProbe>) -> Vec<u32> {
    if let Some((cached_pid, tids)) = ctx.sampler.state.lock().vcpu_threads.get(vm) {
        if *cached_pid == pid {
            return tids.clone();
        }
    }
    let Some(probe) = probe else {
        return Vec::new();
    };
    match probe.vcpu_threads().await {
        Ok(tids) => {
            ctx.sampler
                .state
                .lock()
                .vcpu_threads
                .insert(vm.to_string(), (pid, tids.clone()));
            tids
        }
        Err(_) => Vec::new(),
    }
}

/// Samples the host now, with the VMs' commitments from `vms`.
pub fn sample_host(ctx: &Ctx, vms: &[VmStats]) -> Result<HostStats, String> {
    let mut state = ctx.sampler.state.lock();
    let state = &mut *state;
    let sample = state.procfs.host().map_err(|e| e.to_string())?;
    let clk = state.procfs.clk_tck();
    let host = HostStats::from_sample(&sample, state.host_prev.as_ref(), vms, clk, now_ms());
    state.host_prev = Some(sample);
    Ok(host)
}

/// One round over every VM and the host.
pub async fn sample_all(ctx: &Ctx) -> Result<Round, String> {
    let loaded = ctx.view.all().await.map_err(|e| e.to_string())?;
    let mut vms = Vec::with_capacity(loaded.len());
    for vm in &loaded {
        vms.push(sample_vm(ctx, vm).await);
    }
    let host = sample_host(ctx, &vms)?;
    let round = Round { host, vms };
    ctx.sampler.state.lock().latest = Some(round.clone());
    Ok(round)
}

/// Samples every `period`, forever.
pub async fn run(ctx: Arc<Ctx>, period: Duration) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = sample_all(&ctx).await {
            tracing::warn!(error = %e, "sampling failed");
        }
    }
}

impl crate::ctx::Service {
    /// One VM's figures, sampled now.
    pub async fn vm_stats(&self, name: &str) -> Result<VmStats, vessel_api::ApiError> {
        vessel_core::validate_name("VM", name).map_err(vessel_api::ApiError::invalid)?;
        let vm = self
            .ctx
            .view
            .get(name)
            .await
            .map_err(|e| vessel_api::ApiError::internal(e.to_string()))?
            .ok_or_else(|| {
                vessel_api::ApiError::not_found(format!("VM {name:?} not found"))
                    .with_hint("list VMs with `vessel vm list`")
            })?;
        Ok(sample_vm(&self.ctx, &vm).await)
    }

    /// The latest sampling round; taken now if there is none yet.
    pub async fn latest_stats(&self) -> Result<Round, vessel_api::ApiError> {
        if let Some(round) = self.ctx.sampler.latest() {
            return Ok(round);
        }
        sample_all(&self.ctx)
            .await
            .map_err(vessel_api::ApiError::internal)
    }
}
