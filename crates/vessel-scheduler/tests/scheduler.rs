//! The scheduler's behaviour: filters and their reasons, pinning, groups, strategies,
//! determinism, the refusal's text, and (over seeded random clusters) that applying placements
//! never commits beyond the ratios and that packing stays near the lower bound.

use vessel_scheduler::{
    fits_after, Accel, ApplyError, Cluster, Host, HostState, Overcommit, PlaceError, Reason,
    Settings, Strategy, VmRequest,
};

use vessel_scheduler::synthetic::SplitMix64 as Rng;

const GIB: u64 = 1024;

fn settings(strategy: Strategy) -> Settings {
    Settings {
        strategy,
        overcommit: Overcommit::default(),
    }
}

fn cluster(hosts: Vec<Host>, strategy: Strategy) -> Cluster {
    Cluster::new(hosts, settings(strategy)).unwrap()
}

fn used(mut host: Host, cpus: u64, memory_mib: u64) -> Host {
    host.usage.cpus = cpus;
    host.usage.memory_mib = memory_mib;
    host
}

fn in_state(mut host: Host, state: HostState) -> Host {
    host.state = state;
    host
}

/// The refusal's reasons as text, "host: reason" each.
fn refusal(c: &Cluster, vm: &VmRequest) -> Vec<String> {
    match c.place(vm) {
        Err(PlaceError::NoHostFits { filtered }) => {
            filtered.iter().map(|f| f.to_string()).collect()
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn memory_filter_says_what_is_free_and_what_is_needed() {
    let c = cluster(
        vec![used(Host::new("a", 8, 4 * GIB), 0, 2 * GIB + 512)],
        Strategy::Pack,
    );
    let vm = VmRequest::new("web1", 1, 2 * GIB);
    assert_eq!(refusal(&c, &vm), ["a: 1.5 GiB memory free, needs 2 GiB"]);
}

#[test]
fn memory_sizes_that_would_read_alike_are_given_in_mib() {
    let c = cluster(
        vec![used(Host::new("a", 8, 4 * GIB), 0, 4 * GIB - 1535)],
        Strategy::Pack,
    );
    let vm = VmRequest::new("web1", 1, 1536);
    assert_eq!(
        refusal(&c, &vm),
        ["a: 1535 MiB memory free, needs 1536 MiB"]
    );
}

#[test]
fn cpu_filter_counts_the_overcommit_ratio() {
    // 2 CPUs × 4.0 = 8 vCPUs, 6 committed: 2 free.
    let c = cluster(
        vec![used(Host::new("b", 2, 64 * GIB), 6, 0)],
        Strategy::Pack,
    );
    let vm = VmRequest::new("web1", 4, GIB);
    assert_eq!(
        refusal(&c, &vm),
        ["b: 2 vCPUs free (2 CPUs × 4.0 overcommit), needs 4"]
    );
    assert!(c.place(&VmRequest::new("web2", 2, GIB)).is_ok());
}

#[test]
fn overcommit_ratios_set_the_limits() {
    let host = Host::new("a", 4, 8 * GIB);
    let strict = Overcommit {
        cpu: 1.0,
        memory: 1.0,
    };
    let loose = Overcommit {
        cpu: 4.0,
        memory: 1.5,
    };
    assert!(fits_after(&host, &VmRequest::new("v", 4, GIB), &strict).is_ok());
    assert!(matches!(
        fits_after(&host, &VmRequest::new("v", 5, GIB), &strict),
        Err(Reason::Cpu {
            free: 4,
            needs: 5,
            ..
        })
    ));
    assert!(fits_after(&host, &VmRequest::new("v", 16, GIB), &loose).is_ok());
    assert!(fits_after(&host, &VmRequest::new("v", 17, GIB), &loose).is_err());
    assert!(fits_after(&host, &VmRequest::new("v", 1, 12 * GIB), &loose).is_ok());
    assert!(matches!(
        fits_after(&host, &VmRequest::new("v", 1, 12 * GIB + 1), &loose),
        Err(Reason::Memory {
            free_mib: 12288,
            ..
        })
    ));
    assert!(fits_after(&host, &VmRequest::new("v", 1, 8 * GIB + 1), &strict).is_err());
    let defaults = Overcommit::default();
    assert_eq!((defaults.cpu, defaults.memory), (4.0, 1.0));
}

#[test]
fn hosts_in_maintenance_or_unreachable_get_no_vm() {
    let c = cluster(
        vec![
            in_state(Host::new("a", 64, 256 * GIB), HostState::Maintenance),
            in_state(Host::new("b", 64, 256 * GIB), HostState::Unreachable),
        ],
        Strategy::Spread,
    );
    let vm = VmRequest::new("web1", 1, GIB);
    assert_eq!(refusal(&c, &vm), ["a: in maintenance", "b: unreachable"]);
}

#[test]
fn a_pin_to_a_host_in_maintenance_is_refused_with_that_reason() {
    let c = cluster(
        vec![
            in_state(Host::new("a", 64, 256 * GIB), HostState::Maintenance),
            in_state(Host::new("b", 64, 256 * GIB), HostState::Unreachable),
            Host::new("c", 64, 256 * GIB),
        ],
        Strategy::Pack,
    );
    let mut vm = VmRequest::new("web1", 1, GIB);
    vm.host = Some("a".into());
    assert_eq!(
        c.place(&vm).unwrap_err().to_string(),
        "no host fits: a: in maintenance"
    );
    assert_eq!(
        c.explain(&vm).unwrap_err().to_string(),
        "no host fits: a: in maintenance"
    );
    vm.host = Some("b".into());
    assert_eq!(
        c.place(&vm).unwrap_err().to_string(),
        "no host fits: b: unreachable"
    );
}

#[test]
fn a_pin_to_an_unknown_host_names_it() {
    let c = cluster(vec![Host::new("a", 64, 256 * GIB)], Strategy::Pack);
    let mut vm = VmRequest::new("web1", 1, GIB);
    vm.host = Some("zz9".into());
    let err = c.place(&vm).unwrap_err();
    assert_eq!(err, PlaceError::UnknownHost { host: "zz9".into() });
    assert_eq!(
        err.to_string(),
        "no host fits: no host named zz9 in the cluster"
    );
}

#[test]
fn a_pin_is_obeyed_over_the_score_and_still_checks_room() {
    let c = cluster(
        vec![
            used(Host::new("a", 8, 16 * GIB), 30, 15 * GIB),
            Host::new("b", 8, 16 * GIB),
        ],
        Strategy::Spread,
    );
    let mut vm = VmRequest::new("web1", 1, 512);
    vm.host = Some("a".into());
    assert_eq!(c.place(&vm).unwrap().host, "a");
    vm.memory_mib = 2 * GIB;
    assert_eq!(refusal(&c, &vm), ["a: 1 GiB memory free, needs 2 GiB"]);
}

#[test]
fn machine_type_and_accelerator_filters_name_what_the_host_has() {
    let mut a = Host::new("a", 8, 16 * GIB);
    a.machine_types = ["pc".to_string()].into_iter().collect();
    let mut b = Host::new("b", 8, 16 * GIB);
    b.accelerators = [Accel::Tcg].into_iter().collect();
    let c = cluster(vec![a, b], Strategy::Pack);
    let mut vm = VmRequest::new("web1", 1, GIB);
    vm.machine = Some("q35".into());
    vm.accelerator = Some(Accel::Kvm);
    assert_eq!(
        refusal(&c, &vm),
        ["a: no machine type q35 (has pc)", "b: no kvm (has tcg)"]
    );
    vm.accelerator = None;
    assert_eq!(c.place(&vm).unwrap().host, "b");
    vm.machine = None;
    vm.accelerator = Some(Accel::Kvm);
    assert_eq!(c.place(&vm).unwrap().host, "a");
}

#[test]
fn pool_network_and_label_filters_name_what_is_missing() {
    let mut a = Host::new("a", 8, 16 * GIB);
    a.networks.insert("lan".into());
    a.labels.insert("zone".into(), "b".into());
    let mut b = Host::new("b", 8, 16 * GIB);
    b.pools.insert("fast".into());
    let mut c_host = Host::new("c", 8, 16 * GIB);
    c_host.pools.insert("fast".into());
    let mut d = c_host.clone();
    d.name = "d".into();
    d.networks.insert("lan".into());
    c_host.networks.insert("lan".into());
    c_host.labels.insert("zone".into(), "b".into());
    d.labels.insert("zone".into(), "a".into());
    let c = cluster(vec![a, b, c_host, d], Strategy::Pack);
    let mut vm = VmRequest::new("web1", 1, GIB);
    vm.pools.insert("fast".into());
    vm.networks.insert("lan".into());
    vm.labels.insert("zone".into(), "a".into());
    assert_eq!(c.place(&vm).unwrap().host, "d");
    vm.labels.insert("rack".into(), "r1".into());
    assert_eq!(
        refusal(&c, &vm),
        [
            "a: lacks pool fast",
            "b: lacks network lan",
            "c: lacks label rack=r1",
            "d: lacks label rack=r1"
        ]
    );
    vm.labels.remove("rack");
    vm.labels.insert("zone".into(), "c".into());
    assert_eq!(refusal(&c, &vm)[2], "c: label zone=b, needs zone=c");
}

#[test]
fn anti_affinity_spreads_a_group_and_refuses_when_no_host_is_left() {
    let hosts = (1..=3)
        .map(|i| Host::new(&format!("h{i}"), 64, 256 * GIB))
        .collect();
    let mut c = cluster(hosts, Strategy::Pack);
    let mut seen = Vec::new();
    for i in 1..=3 {
        let mut vm = VmRequest::new(&format!("web-{i}"), 1, GIB);
        vm.anti_affinity = Some("web".into());
        let p = c.place(&vm).unwrap();
        c.apply(&p.host, &vm).unwrap();
        seen.push(p.host);
    }
    seen.sort();
    assert_eq!(
        seen,
        ["h1", "h2", "h3"],
        "pack would otherwise fill one host"
    );
    let mut vm = VmRequest::new("web-4", 1, GIB);
    vm.anti_affinity = Some("web".into());
    let reasons = refusal(&c, &vm);
    assert_eq!(reasons.len(), 3);
    for r in &reasons {
        assert!(
            r.contains("of anti-affinity group web") && r.contains(": runs web-"),
            "{r}"
        );
    }
    // A VM outside the group still goes to the fullest host.
    assert!(c.place(&VmRequest::new("db", 1, GIB)).is_ok());
}

#[test]
fn affinity_prefers_hosts_that_run_the_group_and_falls_back_when_they_are_full() {
    let mut g = Host::new("g", 8, 16 * GIB);
    g.usage
        .groups
        .entry("db".into())
        .or_default()
        .insert("db-1".into());
    g.usage.cpus = 1;
    g.usage.memory_mib = 14 * GIB;
    let fuller = used(Host::new("f", 8, 16 * GIB), 30, 15 * GIB);
    let empty = Host::new("e", 8, 16 * GIB);
    for strategy in [Strategy::Pack, Strategy::Spread] {
        let c = cluster(vec![g.clone(), fuller.clone(), empty.clone()], strategy);
        let mut vm = VmRequest::new("db-2", 1, GIB);
        vm.affinity = Some("db".into());
        let p = c.place(&vm).unwrap();
        assert_eq!(p.host, "g", "{strategy}");
        assert!(p.score.affinity);
        assert_eq!(c.explain(&vm).unwrap().host, "g");
        // Without the group, pack picks f and spread picks e.
        let plain = c.place(&VmRequest::new("x", 1, GIB)).unwrap();
        assert_eq!(
            plain.host,
            if strategy == Strategy::Pack { "f" } else { "e" }
        );
        // The group's host is full: placed elsewhere, not refused.
        vm.memory_mib = 4 * GIB;
        let p = c.place(&vm).unwrap();
        assert_eq!(p.host, "e");
        assert!(!p.score.affinity);
    }
}

#[test]
fn pack_and_spread_choose_differently() {
    let hosts = vec![
        used(Host::new("a", 16, 64 * GIB), 8, 8 * GIB),
        used(Host::new("b", 16, 64 * GIB), 40, 40 * GIB),
        Host::new("c", 16, 64 * GIB),
    ];
    let vm = VmRequest::new("web1", 2, 4 * GIB);
    assert_eq!(
        cluster(hosts.clone(), Strategy::Pack)
            .place(&vm)
            .unwrap()
            .host,
        "b"
    );
    assert_eq!(
        cluster(hosts, Strategy::Spread).place(&vm).unwrap().host,
        "c"
    );
}

#[test]
fn pack_puts_a_memory_heavy_vm_where_memory_is_left_over() {
    // x and y are equally loaded in sum; x has CPU to spare, y memory. A memory-heavy VM
    // belongs on y, where it uses the room that CPU-heavy VMs would leave stranded.
    let x = used(Host::new("x", 16, 64 * GIB), 32, 48 * GIB);
    let y = used(Host::new("y", 16, 64 * GIB), 48, 32 * GIB);
    let c = cluster(vec![x, y], Strategy::Pack);
    assert_eq!(c.place(&VmRequest::new("m", 1, 8 * GIB)).unwrap().host, "y");
    assert_eq!(c.place(&VmRequest::new("c", 8, GIB)).unwrap().host, "x");
}

#[test]
fn ties_are_broken_by_host_name_whatever_the_input_order() {
    for strategy in [Strategy::Pack, Strategy::Spread] {
        let names = ["m", "c", "x", "a", "q"];
        let hosts: Vec<Host> = names.iter().map(|n| Host::new(n, 8, 16 * GIB)).collect();
        let mut reversed = hosts.clone();
        reversed.reverse();
        let vm = VmRequest::new("v", 1, GIB);
        assert_eq!(cluster(hosts, strategy).place(&vm).unwrap().host, "a");
        assert_eq!(cluster(reversed, strategy).place(&vm).unwrap().host, "a");
    }
}

#[test]
fn the_same_input_gives_the_same_placements() {
    let run = || {
        let (mut c, vms) = random_cluster(7, 40, 600, Strategy::Pack);
        let mut out = Vec::new();
        for vm in &vms {
            if let Ok(p) = c.place(vm) {
                c.apply(&p.host, vm).unwrap();
                out.push(p.host);
            }
        }
        out
    };
    assert_eq!(run(), run());
}

#[test]
fn the_refusal_is_one_line_listing_each_host() {
    let c = cluster(
        vec![
            used(Host::new("a", 8, 4 * GIB), 0, 2 * GIB + 512),
            in_state(Host::new("b", 8, 64 * GIB), HostState::Maintenance),
        ],
        Strategy::Pack,
    );
    let err = c.place(&VmRequest::new("web1", 1, 2 * GIB)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no host fits: a: 1.5 GiB memory free, needs 2 GiB; b: in maintenance"
    );
    assert_eq!(
        cluster(vec![], Strategy::Pack)
            .place(&VmRequest::new("v", 1, 1))
            .unwrap_err()
            .to_string(),
        "no host fits: the cluster has no hosts"
    );
}

#[test]
fn a_refusal_over_many_hosts_lists_twenty_and_counts_the_rest() {
    let hosts = (0..50)
        .map(|i| Host::new(&format!("h{i:02}"), 1, GIB))
        .collect();
    let text = cluster(hosts, Strategy::Pack)
        .place(&VmRequest::new("v", 1, 2 * GIB))
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with("no host fits: h00: 1 GiB memory free, needs 2 GiB; h01: "),
        "{text}"
    );
    assert!(
        text.ends_with("h19: 1 GiB memory free, needs 2 GiB; and 30 more hosts"),
        "{text}"
    );
    assert!(!text.contains('\n'));
}

#[test]
fn explain_lists_every_filtered_host_and_agrees_with_place() {
    let c = cluster(
        vec![
            in_state(Host::new("a", 8, 16 * GIB), HostState::Maintenance),
            used(Host::new("b", 8, 16 * GIB), 0, 16 * GIB),
            Host::new("c", 8, 16 * GIB),
        ],
        Strategy::Pack,
    );
    let vm = VmRequest::new("v", 1, GIB);
    let p = c.explain(&vm).unwrap();
    assert_eq!(p.host, "c");
    let reasons: Vec<String> = p.filtered.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        reasons,
        ["a: in maintenance", "b: 0 MiB memory free, needs 1 GiB"]
    );
    assert_eq!(c.place(&vm).unwrap().host, "c");
}

#[test]
fn a_stale_placement_does_not_apply_and_versions_move() {
    let mut c = cluster(vec![Host::new("a", 1, 4 * GIB)], Strategy::Pack);
    let first = VmRequest::new("v1", 1, 3 * GIB);
    let second = VmRequest::new("v2", 1, 3 * GIB);
    let p1 = c.place(&first).unwrap();
    let p2 = c.place(&second).unwrap();
    assert_eq!((p1.usage_version, p2.usage_version), (0, 0));
    assert_eq!(c.apply(&p1.host, &first).unwrap(), 1);
    // The second placement was made on version 0; the host has moved on and has no room.
    assert_ne!(c.host("a").unwrap().usage.version, p2.usage_version);
    match c.apply(&p2.host, &second) {
        Err(ApplyError::DoesNotFit(f)) => {
            assert_eq!(f.to_string(), "a: 1 GiB memory free, needs 3 GiB")
        }
        other => panic!("{other:?}"),
    }
    let usage = &c.host("a").unwrap().usage;
    assert!(fits_after(c.host("a").unwrap(), &second, &Overcommit::default()).is_err());
    assert_eq!(
        (usage.cpus, usage.memory_mib, usage.version),
        (1, 3 * GIB, 1)
    );
    assert_eq!(c.release("a", &first).unwrap(), 2);
    assert!(c.apply("a", &second).is_ok());
    assert!(matches!(
        c.apply("nope", &second),
        Err(ApplyError::UnknownHost { .. })
    ));
}

#[test]
fn a_host_going_into_maintenance_stops_taking_vms() {
    let mut c = cluster(
        vec![Host::new("a", 8, 16 * GIB), Host::new("b", 8, 16 * GIB)],
        Strategy::Spread,
    );
    let vm = VmRequest::new("v", 1, GIB);
    assert_eq!(c.place(&vm).unwrap().host, "a");
    c.set_state("a", HostState::Maintenance).unwrap();
    assert_eq!(c.place(&vm).unwrap().host, "b");
    c.set_state("b", HostState::Unreachable).unwrap();
    assert_eq!(refusal(&c, &vm), ["a: in maintenance", "b: unreachable"]);
    c.set_state("a", HostState::Ready).unwrap();
    assert_eq!(c.place(&vm).unwrap().host, "a");
}

#[test]
fn duplicate_host_names_are_refused() {
    let err = Cluster::new(
        vec![Host::new("a", 1, 1), Host::new("a", 2, 2)],
        settings(Strategy::Pack),
    );
    assert_eq!(err.unwrap_err().to_string(), "host a is listed twice");
}

#[test]
fn reasons_and_usage_records_round_trip_through_json() {
    let reason = Reason::Memory {
        free_mib: 1536,
        needs_mib: 2048,
    };
    let json = serde_json::to_string(&reason).unwrap();
    assert_eq!(
        json,
        r#"{"kind":"memory","free_mib":1536,"needs_mib":2048}"#
    );
    assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), reason);
    let mut vm = VmRequest::new("v", 2, GIB);
    vm.anti_affinity = Some("web".into());
    let usage = Host::new("a", 4, 4 * GIB).usage.with(&vm);
    let back: vessel_scheduler::HostUsage =
        serde_json::from_str(&serde_json::to_string(&usage).unwrap()).unwrap();
    assert_eq!(back, usage);
    assert_eq!(back.without(&vm).groups.len(), 0);
}

// ---------------------------------------------------------------- seeded random clusters

/// Hosts of different sizes, some in maintenance, with pools, labels, machine types; requests
/// of mixed sizes, some with constraints, pins and groups.
fn random_cluster(
    seed: u64,
    hosts: usize,
    vms: usize,
    strategy: Strategy,
) -> (Cluster, Vec<VmRequest>) {
    let mut rng = Rng(seed);
    let overcommit = Overcommit {
        cpu: [1.0, 2.0, 4.0][rng.below(3) as usize],
        memory: [1.0, 1.25][rng.below(2) as usize],
    };
    let list: Vec<Host> = (0..hosts)
        .map(|i| {
            let mut h = Host::new(
                &format!("h{i:03}"),
                [4, 8, 16, 32][rng.below(4) as usize],
                (4 + rng.below(60)) * GIB,
            );
            if rng.below(10) == 0 {
                h.state = HostState::Maintenance;
            }
            if rng.below(2) == 0 {
                h.pools.insert("fast".into());
            }
            if rng.below(3) == 0 {
                h.machine_types.remove("q35");
            }
            h.labels
                .insert("zone".into(), ["a", "b"][rng.below(2) as usize].into());
            h
        })
        .collect();
    let requests = (0..vms)
        .map(|i| {
            let mut vm = VmRequest::new(&format!("vm{i}"), 1 << rng.below(4), 256 << rng.below(6));
            match rng.below(12) {
                0 => vm.anti_affinity = Some(format!("g{}", rng.below(5))),
                1 => vm.affinity = Some(format!("g{}", rng.below(5))),
                2 => drop(vm.pools.insert("fast".into())),
                3 => vm.machine = Some("q35".into()),
                4 => drop(vm.labels.insert("zone".into(), "a".into())),
                5 => vm.host = Some(format!("h{:03}", rng.below(hosts as u64 + 2))),
                _ => {}
            }
            vm
        })
        .collect();
    (
        Cluster::new(
            list,
            Settings {
                strategy,
                overcommit,
            },
        )
        .unwrap(),
        requests,
    )
}

#[test]
fn applying_placements_never_commits_beyond_the_ratios() {
    for seed in 0..12 {
        for strategy in [Strategy::Pack, Strategy::Spread] {
            let (mut c, vms) = random_cluster(seed, 30, 1500, strategy);
            let oc = c.settings().overcommit;
            let (mut placed, mut refused) = (0, 0);
            for vm in &vms {
                let fast = c.place(vm);
                let full = c.explain(vm);
                match (&fast, &full) {
                    (Ok(a), Ok(b)) => assert_eq!(
                        a.host, b.host,
                        "seed {seed}: place and explain disagree on {vm:?}"
                    ),
                    (Err(a), Err(b)) => assert_eq!(a, b),
                    _ => panic!("seed {seed}: place {fast:?} vs explain {full:?}"),
                }
                match fast {
                    Ok(p) => {
                        let host = c.host(&p.host).unwrap();
                        assert_eq!(host.state, HostState::Ready);
                        c.apply(&p.host, vm).unwrap();
                        placed += 1;
                    }
                    Err(PlaceError::NoHostFits { filtered }) => {
                        refused += 1;
                        // A refusal names every host (or the pinned one), each with a real reason.
                        let expected = if vm.host.is_some() {
                            1
                        } else {
                            c.hosts().len()
                        };
                        assert_eq!(filtered.len(), expected);
                        for f in &filtered {
                            assert!(fits_after(c.host(&f.host).unwrap(), vm, &oc).is_err());
                        }
                    }
                    Err(PlaceError::UnknownHost { host }) => assert!(c.host(&host).is_none()),
                }
                for h in c.hosts() {
                    assert!(
                        h.usage.cpus <= h.cpu_limit(&oc),
                        "seed {seed}: {} over its vCPUs",
                        h.name
                    );
                    assert!(
                        h.usage.memory_mib <= h.memory_limit_mib(&oc),
                        "seed {seed}: {} over memory",
                        h.name
                    );
                }
            }
            assert!(
                placed > 50 && refused > 10,
                "seed {seed}: {placed} placed, {refused} refused"
            );
            for h in c.hosts() {
                if h.state != HostState::Ready {
                    assert_eq!(h.usage.cpus, 0, "{} is in maintenance but took VMs", h.name);
                }
                for (group, members) in &h.usage.groups {
                    let anti = vms
                        .iter()
                        .filter(|v| members.contains(&v.name))
                        .filter(|v| v.anti_affinity.as_ref() == Some(group))
                        .count();
                    assert!(
                        anti <= 1,
                        "seed {seed}: {} runs {anti} VMs of anti-affinity group {group}",
                        h.name
                    );
                }
            }
        }
    }
}

#[test]
fn packing_stays_within_3_percent_of_the_lower_bound() {
    // 320 identical hosts (32 CPUs × 4.0 = 128 vCPUs, 256 GiB: 2 GiB per vCPU) and 10,000 VMs
    // of mixed shapes (1, 2 or 4 GiB per vCPU: CPU-heavy, balanced, memory-heavy), about 85% of
    // the cluster.
    let mut rng = Rng(42);
    let hosts = (0..320)
        .map(|i| Host::new(&format!("h{i:03}"), 32, 256 * GIB))
        .collect();
    let mut c = cluster(hosts, Strategy::Pack);
    let (mut cpu, mut mem) = (0u64, 0u64);
    for i in 0..10_000 {
        let cpus = [1, 1, 2, 2, 4, 8][rng.below(6) as usize];
        let memory = cpus * [1, 2, 4][rng.below(3) as usize] * GIB;
        let vm = VmRequest::new(&format!("vm{i}"), cpus as u32, memory);
        let p = c
            .place(&vm)
            .unwrap_or_else(|e| panic!("vm{i}: {}", e.to_string().len()));
        c.apply(&p.host, &vm).unwrap();
        cpu += cpus;
        mem += memory;
    }
    let bound = (cpu as f64 / 128.0)
        .max(mem as f64 / (256.0 * GIB as f64))
        .ceil();
    let used = c.hosts().iter().filter(|h| h.usage.cpus > 0).count() as f64;
    assert!(used >= bound);
    println!("{used} hosts used, lower bound {bound}");
    assert!(
        used <= bound * 1.03,
        "{used} hosts used, lower bound {bound}"
    );
}
