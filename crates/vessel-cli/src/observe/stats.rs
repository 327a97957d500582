//! `vessel vm stats`, `vessel host stats` and `vessel top`: performance figures for people.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use vessel_metrics::{HostStats, VmStats};

use crate::client::StatsRound;
use crate::output::{format_bytes, format_duration_ms};
use crate::{CliError, Context, OutputFormat};

/// `vessel vm stats`
#[derive(Debug, Clone, Args)]
pub struct VmStatsArgs {
    /// Name of the VM.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Sample again every SECS seconds until Ctrl-C (rates over the interval).
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<u64>,
}

/// What `vessel top` sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortBy {
    Cpu,
    Memory,
    Disk,
    Network,
    Name,
}

/// `vessel top`
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// Sort the VMs by this, biggest first.
    #[arg(long, short = 's', value_enum, default_value = "cpu")]
    pub sort: SortBy,
    /// Seconds between refreshes.
    #[arg(long, value_name = "SECS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
    /// Print one screen and exit (for scripts and logs).
    #[arg(long)]
    pub once: bool,
}

/// Per-second rates of one VM between two samples.
#[derive(Debug, Clone, Copy, Default)]
struct Rates {
    disk_read: f64,
    disk_write: f64,
    net_rx: f64,
    net_tx: f64,
}

fn rates(prev: Option<&VmStats>, cur: &VmStats) -> Rates {
    let Some(prev) = prev else {
        return Rates::default();
    };
    let secs = cur.sampled_at_ms.saturating_sub(prev.sampled_at_ms) as f64 / 1000.0;
    if secs <= 0.0 {
        return Rates::default();
    }
    let per = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
    let sum = |v: &VmStats, f: fn(&vessel_metrics::DiskStats) -> u64| v.disks.iter().map(f).sum();
    let nsum = |v: &VmStats, f: fn(&vessel_metrics::NicStats) -> u64| v.nics.iter().map(f).sum();
    Rates {
        disk_read: per(sum(cur, |d| d.read_bytes), sum(prev, |d| d.read_bytes)),
        disk_write: per(sum(cur, |d| d.write_bytes), sum(prev, |d| d.write_bytes)),
        net_rx: per(nsum(cur, |n| n.rx_bytes), nsum(prev, |n| n.rx_bytes)),
        net_tx: per(nsum(cur, |n| n.tx_bytes), nsum(prev, |n| n.tx_bytes)),
    }
}

fn rate(bytes_per_sec: f64) -> String {
    format!("{}/s", format_bytes(bytes_per_sec as u64))
}

fn percent(p: Option<f64>) -> String {
    p.map_or_else(|| "-".into(), |p| format!("{p:.1}%"))
}

/// `vessel vm stats` as text.
fn vm_text(vm: &VmStats, r: Rates) -> String {
    let mut out = format!(
        "VM {}  {}  up {}  restarts {}\n\
         CPU     {} of one core ({} vCPUs); QEMU {:.1} s, vCPUs {:.1} s, waiting for a host CPU {:.2} s\n\
         Memory  {} configured, {} resident{}\n",
        vm.name,
        vm.state,
        format_duration_ms(vm.uptime_seconds * 1000),
        vm.restarts_total,
        percent(vm.cpu_percent),
        vm.vcpus,
        vm.cpu_seconds_total,
        vm.vcpu_seconds_total,
        vm.vcpu_wait_seconds_total,
        format_bytes(vm.memory_configured_bytes),
        format_bytes(vm.memory_rss_bytes),
        vm.balloon_bytes
            .map_or_else(String::new, |b| format!(", balloon {}", format_bytes(b))),
    );
    for d in &vm.disks {
        let latency = |ns: u64, ops: u64| {
            if ops == 0 {
                "-".to_string()
            } else {
                format!("{:.2} ms", ns as f64 / ops as f64 / 1e6)
            }
        };
        out.push_str(&format!(
            "Disk    {:<24} read {} in {} ops ({} avg), written {} in {} ops ({} avg)\n",
            d.device,
            format_bytes(d.read_bytes),
            d.read_ops,
            latency(d.read_time_ns, d.read_ops),
            format_bytes(d.write_bytes),
            d.write_ops,
            latency(d.write_time_ns, d.write_ops),
        ));
    }
    if !vm.disks.is_empty() && (r.disk_read > 0.0 || r.disk_write > 0.0) {
        out.push_str(&format!(
            "        now: read {}, write {}\n",
            rate(r.disk_read),
            rate(r.disk_write)
        ));
    }
    for n in &vm.nics {
        out.push_str(&format!(
            "Network {:<24} received {} ({} packets), sent {} ({} packets)\n",
            n.name,
            format_bytes(n.rx_bytes),
            n.rx_packets,
            format_bytes(n.tx_bytes),
            n.tx_packets
        ));
    }
    if let Some(note) = &vm.network_note {
        out.push_str(&format!("Network {note}\n"));
    }
    out
}

/// `vessel host stats` as text.
pub fn host_text(h: &HostStats) -> String {
    let states: Vec<String> = h
        .vms_by_state
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    let mut out = format!(
        "CPU     {} CPUs, {} busy, load {:.2} {:.2} {:.2}\n\
         Memory  {} total, {} available\n\
         VMs     {}\n\
         Commit  {} vCPUs on {} CPUs ({:.2}x), {} of memory ({:.2}x)\n",
        h.cpus,
        percent(h.cpu_percent),
        h.load1,
        h.load5,
        h.load15,
        format_bytes(h.memory_total_bytes),
        format_bytes(h.memory_available_bytes),
        if states.is_empty() {
            "none".to_string()
        } else {
            states.join(", ")
        },
        h.vcpus_committed,
        h.cpus,
        h.vcpu_overcommit_ratio,
        format_bytes(h.memory_committed_bytes),
        h.memory_overcommit_ratio,
    );
    for d in &h.disks {
        out.push_str(&format!(
            "Disk    {:<12} read {}, written {}\n",
            d.device,
            format_bytes(d.read_bytes),
            format_bytes(d.write_bytes)
        ));
    }
    for n in &h.nics {
        out.push_str(&format!(
            "Network {:<12} received {}, sent {}\n",
            n.name,
            format_bytes(n.rx_bytes),
            format_bytes(n.tx_bytes)
        ));
    }
    out
}

/// One `vessel top` screen.
fn top_text(round: &StatsRound, prev: &HashMap<String, VmStats>, sort: SortBy) -> String {
    let mut rows: Vec<(&VmStats, Rates)> = round
        .vms
        .iter()
        .map(|vm| (vm, rates(prev.get(&vm.name), vm)))
        .collect();
    let key = |(vm, r): &(&VmStats, Rates)| -> f64 {
        match sort {
            SortBy::Cpu => vm.cpu_percent.unwrap_or(0.0),
            SortBy::Memory => vm.memory_rss_bytes as f64,
            SortBy::Disk => r.disk_read + r.disk_write,
            SortBy::Network => r.net_rx + r.net_tx,
            SortBy::Name => 0.0,
        }
    };
    rows.sort_by(|a, b| {
        key(b)
            .total_cmp(&key(a))
            .then_with(|| a.0.name.cmp(&b.0.name))
    });
    let mut out = host_text(&round.host);
    out.push('\n');
    out.push_str(&format!(
        "{:<20} {:<9} {:>7} {:>10} {:>10} {:>11} {:>11} {:>11} {:>11}\n",
        "NAME", "STATE", "CPU", "MEMORY", "CONFIG", "DISK READ", "DISK WRITE", "NET RX", "NET TX"
    ));
    for (vm, r) in rows {
        out.push_str(&format!(
            "{:<20} {:<9} {:>7} {:>10} {:>10} {:>11} {:>11} {:>11} {:>11}\n",
            vm.name,
            vm.state,
            percent(vm.cpu_percent),
            format_bytes(vm.memory_rss_bytes),
            format_bytes(vm.memory_configured_bytes),
            rate(r.disk_read),
            rate(r.disk_write),
            rate(r.net_rx),
            rate(r.net_tx),
        ));
    }
    out
}

pub(crate) async fn vm_stats(ctx: &Context, args: &VmStatsArgs) -> Result<ExitCode, CliError> {
    let mut prev: Option<VmStats> = None;
    loop {
        let stats = ctx.client.vm_stats(&args.name).await?;
        match ctx.output {
            OutputFormat::Json => ctx.print(&crate::output::json(&stats))?,
            OutputFormat::Table => {
                let r = rates(prev.as_ref(), &stats);
                ctx.print(&vm_text(&stats, r))?;
            }
        }
        let Some(secs) = args.watch else {
            return Ok(ExitCode::SUCCESS);
        };
        prev = Some(stats);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(secs.max(1))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
        if ctx.output == OutputFormat::Table {
            ctx.print("\n")?;
        }
    }
}

pub(crate) async fn top(ctx: &Context, args: &TopArgs) -> Result<ExitCode, CliError> {
    let mut prev: HashMap<String, VmStats> = HashMap::new();
    loop {
        let round = ctx.client.all_stats().await?;
        match ctx.output {
            OutputFormat::Json => ctx.print(&crate::output::json(&round))?,
            OutputFormat::Table if args.once => ctx.print(&top_text(&round, &prev, args.sort))?,
            // Home, clear screen, then the table: a refreshing view like top(1).
            OutputFormat::Table => ctx.print(&format!(
                "\x1b[H\x1b[2J{}",
                top_text(&round, &prev, args.sort)
            ))?,
        }
        if args.once {
            return Ok(ExitCode::SUCCESS);
        }
        prev = round.vms.into_iter().map(|v| (v.name.clone(), v)).collect();
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(args.interval)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str, cpu: f64, written: u64, at_ms: u64) -> VmStats {
        VmStats {
            name: name.into(),
            state: "running".into(),
            cpu_percent: Some(cpu),
            disks: vec![vessel_metrics::DiskStats {
                device: "default/d".into(),
                write_bytes: written,
                ..Default::default()
            }],
            sampled_at_ms: at_ms,
            ..Default::default()
        }
    }

    #[test]
    fn top_sorts_by_the_chosen_figure_and_computes_rates() {
        let round = StatsRound {
            host: HostStats::default(),
            vms: vec![vm("coldvm", 1.0, 4 << 20, 3000), vm("hotvm", 90.0, 0, 3000)],
        };
        let prev = HashMap::from([("coldvm".to_string(), vm("coldvm", 1.0, 0, 1000))]);
        let by_cpu = top_text(&round, &prev, SortBy::Cpu);
        assert!(
            by_cpu.find("hotvm").unwrap() < by_cpu.find("coldvm").unwrap(),
            "{by_cpu}"
        );
        let by_disk = top_text(&round, &prev, SortBy::Disk);
        assert!(
            by_disk.find("coldvm").unwrap() < by_disk.find("hotvm").unwrap(),
            "{by_disk}"
        );
        assert!(by_disk.contains("2 MiB/s"), "4 MiB in 2 s: {by_disk}");
    }
}
