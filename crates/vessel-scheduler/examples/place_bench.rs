//! Placement throughput and packing quality on synthetic clusters.
//!
//! Usage: place_bench [--hosts 1000,10000] [--vms 100000] [--runs 5] [--seed 1]
//!
//! For each cluster size and each strategy (pack, spread): `--runs` times, a fresh cluster of
//! identical hosts (96 CPUs, 768 GiB; overcommit 4.0 CPU, 1.0 memory: 384 vCPUs, 768 GiB of
//! room each) takes the same `--vms` requests of mixed sizes, one at a time: `Cluster::place`,
//! then `Cluster::apply`. Only that loop is timed. Prints JSON: placements/s (median, min, max),
//! hosts used, the lower bound (the larger of total vCPU demand / vCPUs per host and total memory
//! demand / memory per host, rounded up), the percentage over it, refusals, and the spread of
//! host loads (the dominant fraction used, over the hosts in use).

use std::time::Instant;

use vessel_scheduler::synthetic::SplitMix64 as Rng;
use vessel_scheduler::{Cluster, Host, Overcommit, Settings, Strategy, VmRequest};

const HOST_CPUS: u32 = 96;
const HOST_MEMORY_MIB: u64 = 768 * 1024;

/// Mixed sizes: 1, 2, 4 or 8 vCPUs, and 1, 2 or 4 GiB per vCPU (compute, general and memory
/// families), so that some VMs are CPU-heavy and others memory-heavy for the host's shape (2 GiB
/// of room per vCPU of room).
///
/// With `constrained`, some requests also carry rules: 5% need pool `fast` (one host in ten has
/// it), 25% need label `zone=a` (half the hosts), 10% are in anti-affinity groups of about 5
/// VMs, 5% in affinity groups of about 10. The sizes are the same as without.
fn requests(n: usize, seed: u64, constrained: bool) -> Vec<VmRequest> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let cpus = rng.pick(&[(1u32, 35), (2, 30), (4, 25), (8, 10)]);
            let gib_per_cpu = rng.pick(&[(1u64, 40), (2, 30), (4, 30)]);
            let memory_mib = u64::from(cpus) * gib_per_cpu * 1024;
            let mut vm = VmRequest::new(&format!("vm{i}"), cpus, memory_mib);
            let rule = rng.next_u64() % 100;
            if constrained {
                match rule {
                    0..5 => drop(vm.pools.insert("fast".to_string())),
                    5..30 => drop(vm.labels.insert("zone".to_string(), "a".to_string())),
                    30..40 => vm.anti_affinity = Some(format!("aa{}", i % 2000)),
                    40..45 => vm.affinity = Some(format!("af{}", i % 500)),
                    _ => {}
                }
            }
            vm
        })
        .collect()
}

/// With `constrained`: one host in ten has pool `fast`, labels `zone=a` and `zone=b` alternate,
/// one host in fifty is in maintenance.
fn cluster(hosts: usize, strategy: Strategy, constrained: bool) -> Cluster {
    let hosts = (0..hosts)
        .map(|i| {
            let mut host = Host::new(&format!("h{i:05}"), HOST_CPUS, HOST_MEMORY_MIB);
            if constrained {
                if i % 10 == 0 {
                    host.pools.insert("fast".to_string());
                }
                host.labels
                    .insert("zone".to_string(), ["a", "b"][i % 2].to_string());
                if i % 50 == 7 {
                    host.state = vessel_scheduler::HostState::Maintenance;
                }
            }
            host
        })
        .collect();
    Cluster::new(
        hosts,
        Settings {
            strategy,
            overcommit: Overcommit::default(),
        },
    )
    .expect("unique names")
}

struct Run {
    per_s: f64,
    used: usize,
    refused: usize,
    min_load: f64,
    max_load: f64,
}

fn run(hosts: usize, strategy: Strategy, vms: &[VmRequest], constrained: bool) -> Run {
    let mut c = cluster(hosts, strategy, constrained);
    let mut refused = 0;
    let t0 = Instant::now();
    for vm in vms {
        match c.place(vm) {
            Ok(p) => {
                c.apply(&p.host, vm).expect("a placement applies");
            }
            Err(_) => refused += 1,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let oc = Overcommit::default();
    let loads: Vec<f64> = c
        .hosts()
        .iter()
        .filter(|h| h.usage.cpus > 0)
        .map(|h| {
            let cpu = h.usage.cpus as f64 / h.cpu_limit(&oc) as f64;
            let mem = h.usage.memory_mib as f64 / h.memory_limit_mib(&oc) as f64;
            cpu.max(mem)
        })
        .collect();
    Run {
        per_s: vms.len() as f64 / secs,
        used: c.hosts().iter().filter(|h| h.usage.cpus > 0).count(),
        refused,
        min_load: loads.iter().copied().fold(f64::INFINITY, f64::min),
        max_load: loads.iter().copied().fold(0.0, f64::max),
    }
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> = arg(&args, "--hosts", "1000,10000")
        .split(',')
        .map(|s| s.parse().expect("--hosts"))
        .collect();
    let n: usize = arg(&args, "--vms", "100000").parse().expect("--vms");
    let runs: usize = arg(&args, "--runs", "5").parse().expect("--runs");
    let seed: u64 = arg(&args, "--seed", "1").parse().expect("--seed");
    let plain = requests(n, seed, false);
    let constrained = requests(n, seed, true);
    let vms = &plain;
    assert!(plain
        .iter()
        .zip(&constrained)
        .all(|(a, b)| (a.cpus, a.memory_mib) == (b.cpus, b.memory_mib)));
    let oc = Overcommit::default();
    let cpu_room = (f64::from(HOST_CPUS) * oc.cpu).floor();
    let mem_room = (HOST_MEMORY_MIB as f64 * oc.memory).floor();
    let cpu_demand: u64 = vms.iter().map(|v| u64::from(v.cpus)).sum();
    let mem_demand: u64 = vms.iter().map(|v| v.memory_mib).sum();
    let bound = (cpu_demand as f64 / cpu_room)
        .max(mem_demand as f64 / mem_room)
        .ceil() as usize;

    let mut results = Vec::new();
    for (scenario, vms) in [("mixed", &plain), ("constrained", &constrained)] {
        for &hosts in &sizes {
            for strategy in [Strategy::Pack, Strategy::Spread] {
                let is_constrained = scenario == "constrained";
                let all: Vec<Run> = (0..runs)
                    .map(|_| run(hosts, strategy, vms, is_constrained))
                    .collect();
                let mut rates: Vec<f64> = all.iter().map(|r| r.per_s).collect();
                rates.sort_by(f64::total_cmp);
                let median = if rates.len() % 2 == 1 {
                    rates[rates.len() / 2]
                } else {
                    (rates[rates.len() / 2 - 1] + rates[rates.len() / 2]) / 2.0
                };
                let last = all.last().expect("at least one run");
                let over = (last.used as f64 / bound as f64 - 1.0) * 100.0;
                results.push(format!(
                concat!(
                    "    {{\"scenario\": \"{}\", \"hosts\": {}, \"strategy\": \"{}\", ",
                    "\"placements_per_s\": {{\"median\": {:.0}, \"min\": {:.0}, \"max\": {:.0}, \"runs\": {}}}, ",
                    "\"hosts_used\": {}, \"lower_bound\": {}, \"over_bound_pct\": {:.2}, \"refused\": {}, ",
                    "\"host_load_pct\": {{\"min\": {:.1}, \"max\": {:.1}}}}}"
                ),
                scenario,
                hosts,
                strategy,
                median,
                rates[0],
                rates[rates.len() - 1],
                runs,
                last.used,
                bound,
                over,
                last.refused,
                last.min_load * 100.0,
                last.max_load * 100.0,
            ));
            }
        }
    }
    println!("{{");
    println!(
        "  \"config\": {{\"vms\": {n}, \"seed\": {seed}, \"runs\": {runs}, \"host_cpus\": {HOST_CPUS}, \
         \"host_memory_gib\": {}, \"cpu_ratio\": {:.1}, \"memory_ratio\": {:.1}, \"window\": {}, \
         \"vcpu_demand\": {cpu_demand}, \"memory_demand_gib\": {}}},",
        HOST_MEMORY_MIB / 1024,
        oc.cpu,
        oc.memory,
        vessel_scheduler::WINDOW,
        mem_demand / 1024
    );
    println!("  \"results\": [\n{}\n  ]", results.join(",\n"));
    println!("}}");
}
