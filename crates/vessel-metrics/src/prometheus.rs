//! Prometheus text exposition format (version 0.0.4) of [`HostStats`] and [`VmStats`].
//!
//! Hand-written rather than built on `prometheus-client`: the stats already exist as plain
//! structs, so a registry would only copy them into its own types on every scrape. Writing
//! straight into one pre-sized `String` keeps a 200-VM scrape around a millisecond.
//!
//! Output is deterministic: families in a fixed order, VMs sorted by name, disks and interfaces
//! sorted by name within a VM, labels in a fixed order. A family with no samples is left out
//! entirely (no orphan `# HELP`).

use std::fmt::Write as _;
use std::time::Duration;

use crate::model::{is_active_state, DiskStats, HostStats, NicStats, VmStats, KNOWN_STATES};

/// The `Content-Type` of the output, for the HTTP handler.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the host and its VMs. `sample_duration`, if given, is exported as
/// `vessel_scrape_duration_seconds`: how long collecting these statistics took.
///
/// VM names are expected to be unique (the daemon guarantees it); duplicates would produce
/// duplicate series.
pub fn render(host: &HostStats, vms: &[VmStats], sample_duration: Option<Duration>) -> String {
    let disks: usize = vms.iter().map(|v| v.disks.len()).sum();
    let nics: usize = vms.iter().map(|v| v.nics.len()).sum();
    // About 80 bytes a sample; too big is cheaper than growing a large string twice.
    let samples = 4096 / 80 + vms.len() * (16 + KNOWN_STATES.len()) + disks * 8 + nics * 4;
    let mut out = String::with_capacity(samples * 80);
    render_into(&mut out, host, vms, sample_duration);
    out
}

/// [`render`] into an existing buffer (appends), so a caller can reuse its allocation.
pub fn render_into(
    out: &mut String,
    host: &HostStats,
    vms: &[VmStats],
    sample_duration: Option<Duration>,
) {
    let mut views: Vec<VmView<'_>> = vms
        .iter()
        .map(|vm| {
            let mut disks: Vec<&DiskStats> = vm.disks.iter().collect();
            disks.sort_by(|a, b| a.device.cmp(&b.device));
            let mut nics: Vec<&NicStats> = vm.nics.iter().collect();
            nics.sort_by(|a, b| a.name.cmp(&b.name));
            VmView { vm, disks, nics }
        })
        .collect();
    views.sort_by(|a, b| a.vm.name.cmp(&b.vm.name));

    let mut w = Writer { out };
    render_host(&mut w, host);
    render_vms(&mut w, &views);
    if let Some(d) = sample_duration {
        w.header(
            "vessel_scrape_duration_seconds",
            Kind::Gauge,
            "Time the daemon spent collecting these statistics.",
        );
        w.sample("vessel_scrape_duration_seconds", &[], d.as_secs_f64());
    }
}

struct VmView<'a> {
    vm: &'a VmStats,
    disks: Vec<&'a DiskStats>,
    nics: Vec<&'a NicStats>,
}

fn render_host(w: &mut Writer<'_>, h: &HostStats) {
    w.single(
        "vessel_host_cpus",
        Kind::Gauge,
        "Online host CPUs.",
        u64::from(h.cpus),
    );
    w.header(
        "vessel_host_cpu_seconds_total",
        Kind::Counter,
        "Host CPU time by mode, summed over all CPUs (guest time is part of user).",
    );
    for (mode, secs) in h.cpu_seconds_total.modes() {
        w.sample("vessel_host_cpu_seconds_total", &[("mode", mode)], secs);
    }
    w.single(
        "vessel_host_memory_total_bytes",
        Kind::Gauge,
        "Host memory (MemTotal).",
        h.memory_total_bytes,
    );
    w.single(
        "vessel_host_memory_available_bytes",
        Kind::Gauge,
        "Host memory available without swapping (MemAvailable).",
        h.memory_available_bytes,
    );
    w.single(
        "vessel_host_load1",
        Kind::Gauge,
        "Host load average over 1 minute.",
        h.load1,
    );
    w.single(
        "vessel_host_load5",
        Kind::Gauge,
        "Host load average over 5 minutes.",
        h.load5,
    );
    w.single(
        "vessel_host_load15",
        Kind::Gauge,
        "Host load average over 15 minutes.",
        h.load15,
    );
    w.single(
        "vessel_host_vcpus_committed",
        Kind::Gauge,
        "vCPUs of the VMs that have a QEMU process.",
        h.vcpus_committed,
    );
    w.single(
        "vessel_host_memory_committed_bytes",
        Kind::Gauge,
        "Configured memory of the VMs that have a QEMU process.",
        h.memory_committed_bytes,
    );
    w.single(
        "vessel_host_vcpu_overcommit_ratio",
        Kind::Gauge,
        "Committed vCPUs per host CPU.",
        h.vcpu_overcommit_ratio,
    );
    w.single(
        "vessel_host_memory_overcommit_ratio",
        Kind::Gauge,
        "Committed VM memory per byte of host memory.",
        h.memory_overcommit_ratio,
    );
    if !h.vms_by_state.is_empty() {
        w.header("vessel_host_vms", Kind::Gauge, "VMs by observed state.");
        for (state, n) in &h.vms_by_state {
            w.sample("vessel_host_vms", &[("state", state)], u64::from(*n));
        }
    }

    let mut disks: Vec<_> = h.disks.iter().collect();
    disks.sort_by(|a, b| a.device.cmp(&b.device));
    type DiskField = fn(&crate::model::HostDiskStats) -> Value;
    let disk_families: [(&str, Kind, &str, DiskField); 5] = [
        (
            "vessel_host_disk_read_bytes_total",
            Kind::Counter,
            "Bytes read from a host disk.",
            |d| d.read_bytes.into(),
        ),
        (
            "vessel_host_disk_write_bytes_total",
            Kind::Counter,
            "Bytes written to a host disk.",
            |d| d.write_bytes.into(),
        ),
        (
            "vessel_host_disk_read_ops_total",
            Kind::Counter,
            "Reads completed by a host disk.",
            |d| d.read_ops.into(),
        ),
        (
            "vessel_host_disk_write_ops_total",
            Kind::Counter,
            "Writes completed by a host disk.",
            |d| d.write_ops.into(),
        ),
        (
            "vessel_host_disk_io_time_seconds_total",
            Kind::Counter,
            "Time a host disk had I/O in flight; its rate is the disk's utilisation.",
            |d| Value::F(d.io_time_ms as f64 / 1e3),
        ),
    ];
    for (name, kind, help, get) in disk_families {
        if disks.is_empty() {
            break;
        }
        w.header(name, kind, help);
        for d in &disks {
            w.sample(name, &[("device", &d.device)], get(d));
        }
    }

    let mut nics: Vec<_> = h.nics.iter().collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    type NicField = fn(&crate::model::HostNicStats) -> u64;
    let nic_families: [(&str, &str, NicField); 8] = [
        (
            "vessel_host_network_receive_bytes_total",
            "Bytes received by a host interface.",
            |n| n.rx_bytes,
        ),
        (
            "vessel_host_network_transmit_bytes_total",
            "Bytes sent by a host interface.",
            |n| n.tx_bytes,
        ),
        (
            "vessel_host_network_receive_packets_total",
            "Packets received by a host interface.",
            |n| n.rx_packets,
        ),
        (
            "vessel_host_network_transmit_packets_total",
            "Packets sent by a host interface.",
            |n| n.tx_packets,
        ),
        (
            "vessel_host_network_receive_errors_total",
            "Receive errors of a host interface.",
            |n| n.rx_errors,
        ),
        (
            "vessel_host_network_transmit_errors_total",
            "Transmit errors of a host interface.",
            |n| n.tx_errors,
        ),
        (
            "vessel_host_network_receive_drops_total",
            "Received packets a host interface dropped.",
            |n| n.rx_drops,
        ),
        (
            "vessel_host_network_transmit_drops_total",
            "Outgoing packets a host interface dropped.",
            |n| n.tx_drops,
        ),
    ];
    for (name, help, get) in nic_families {
        if nics.is_empty() {
            break;
        }
        w.header(name, Kind::Counter, help);
        for n in &nics {
            w.sample(name, &[("interface", &n.name)], get(n));
        }
    }
}

type VmField = fn(&VmStats) -> Option<Value>;

/// Per-VM families with only the `vm` label, in output order.
const VM_FAMILIES: &[(&str, Kind, &str, VmField)] = &[
    (
        "vessel_vm_up",
        Kind::Gauge,
        "1 if the VM has a QEMU process, else 0.",
        |v| Some(Value::U(u64::from(is_active_state(&v.state)))),
    ),
    (
        "vessel_vm_restarts_total",
        Kind::Counter,
        "Times the restart policy restarted the VM.",
        |v| Some(v.restarts_total.into()),
    ),
    (
        "vessel_vm_uptime_seconds",
        Kind::Gauge,
        "Seconds since the VM's QEMU process started.",
        |v| Some(v.uptime_seconds.into()),
    ),
    ("vessel_vm_vcpus", Kind::Gauge, "Configured vCPUs.", |v| {
        Some(u64::from(v.vcpus).into())
    }),
    (
        "vessel_vm_cpu_seconds_total",
        Kind::Counter,
        "CPU time of the VM's QEMU process, all threads, user and system.",
        |v| Some(v.cpu_seconds_total.into()),
    ),
    (
        "vessel_vm_vcpu_seconds_total",
        Kind::Counter,
        "CPU time of the VM's vCPU threads.",
        |v| Some(v.vcpu_seconds_total.into()),
    ),
    (
        "vessel_vm_vcpu_wait_seconds_total",
        Kind::Counter,
        "Time the VM's vCPU threads waited on a host run queue (host-side steal time).",
        |v| Some(v.vcpu_wait_seconds_total.into()),
    ),
    (
        "vessel_vm_memory_configured_bytes",
        Kind::Gauge,
        "Configured guest memory.",
        |v| Some(v.memory_configured_bytes.into()),
    ),
    (
        "vessel_vm_memory_rss_bytes",
        Kind::Gauge,
        "Resident memory of the VM's QEMU process.",
        |v| Some(v.memory_rss_bytes.into()),
    ),
    (
        "vessel_vm_memory_balloon_bytes",
        Kind::Gauge,
        "Guest memory size after ballooning.",
        |v| v.balloon_bytes.map(Value::U),
    ),
];

type VmDiskField = fn(&DiskStats) -> Value;

const VM_DISK_FAMILIES: &[(&str, &str, VmDiskField)] = &[
    (
        "vessel_vm_disk_read_bytes_total",
        "Bytes the guest read from a disk.",
        |d| d.read_bytes.into(),
    ),
    (
        "vessel_vm_disk_write_bytes_total",
        "Bytes the guest wrote to a disk.",
        |d| d.write_bytes.into(),
    ),
    (
        "vessel_vm_disk_read_ops_total",
        "Read requests the guest completed on a disk.",
        |d| d.read_ops.into(),
    ),
    (
        "vessel_vm_disk_write_ops_total",
        "Write requests the guest completed on a disk.",
        |d| d.write_ops.into(),
    ),
    (
        "vessel_vm_disk_flush_ops_total",
        "Flush requests the guest completed on a disk.",
        |d| d.flush_ops.into(),
    ),
    (
        "vessel_vm_disk_read_time_seconds_total",
        "Sum of read latencies; divided by read ops it is the mean read latency.",
        |d| Value::F(d.read_time_ns as f64 / 1e9),
    ),
    (
        "vessel_vm_disk_write_time_seconds_total",
        "Sum of write latencies.",
        |d| Value::F(d.write_time_ns as f64 / 1e9),
    ),
    (
        "vessel_vm_disk_flush_time_seconds_total",
        "Sum of flush latencies.",
        |d| Value::F(d.flush_time_ns as f64 / 1e9),
    ),
];

type VmNicField = fn(&NicStats) -> u64;

const VM_NIC_FAMILIES: &[(&str, &str, VmNicField)] = &[
    (
        "vessel_vm_network_receive_bytes_total",
        "Bytes the guest received on an interface.",
        |n| n.rx_bytes,
    ),
    (
        "vessel_vm_network_transmit_bytes_total",
        "Bytes the guest sent on an interface.",
        |n| n.tx_bytes,
    ),
    (
        "vessel_vm_network_receive_packets_total",
        "Packets the guest received on an interface.",
        |n| n.rx_packets,
    ),
    (
        "vessel_vm_network_transmit_packets_total",
        "Packets the guest sent on an interface.",
        |n| n.tx_packets,
    ),
];

fn render_vms(w: &mut Writer<'_>, vms: &[VmView<'_>]) {
    if vms.is_empty() {
        return;
    }
    w.header(
        "vessel_vm_state",
        Kind::Gauge,
        "1 for the VM's observed state, 0 for the other states.",
    );
    for v in vms {
        let name = v.vm.name.as_str();
        let current = v.vm.state.as_str();
        for state in KNOWN_STATES {
            let on = u64::from(*state == current);
            w.sample("vessel_vm_state", &[("vm", name), ("state", state)], on);
        }
        if !KNOWN_STATES.contains(&current) {
            w.sample("vessel_vm_state", &[("vm", name), ("state", current)], 1u64);
        }
    }

    for &(family, kind, help, get) in VM_FAMILIES {
        if !vms.iter().any(|v| get(v.vm).is_some()) {
            continue;
        }
        w.header(family, kind, help);
        for v in vms {
            if let Some(value) = get(v.vm) {
                w.sample(family, &[("vm", &v.vm.name)], value);
            }
        }
    }

    if vms.iter().any(|v| !v.disks.is_empty()) {
        for &(family, help, get) in VM_DISK_FAMILIES {
            w.header(family, Kind::Counter, help);
            for v in vms {
                for d in &v.disks {
                    w.sample(family, &[("vm", &v.vm.name), ("device", &d.device)], get(d));
                }
            }
        }
    }

    if vms.iter().any(|v| !v.nics.is_empty()) {
        for &(family, help, get) in VM_NIC_FAMILIES {
            w.header(family, Kind::Counter, help);
            for v in vms {
                for n in &v.nics {
                    w.sample(
                        family,
                        &[("vm", &v.vm.name), ("interface", &n.name)],
                        get(n),
                    );
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// A sample value: integers print exactly, floats as the shortest text that reads back the same.
#[derive(Clone, Copy)]
enum Value {
    U(u64),
    F(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::U(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::F(v)
    }
}

struct Writer<'a> {
    out: &'a mut String,
}

impl Writer<'_> {
    /// `# HELP` and `# TYPE`. Help texts are our own constants: no backslash or newline to escape.
    fn header(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(!help.contains(['\\', '\n']));
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Value>) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label_value(self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        match value.into() {
            Value::U(v) => {
                let _ = write!(self.out, "{v}");
            }
            Value::F(v) if v.is_nan() => self.out.push_str("NaN"),
            Value::F(v) if v.is_infinite() => {
                self.out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" })
            }
            Value::F(v) => {
                let _ = write!(self.out, "{v}");
            }
        }
        self.out.push('\n');
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Into<Value>) {
        self.header(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Appends `v` escaped as a label value: backslash, double quote and newline, per the format.
pub fn escape_label_value(out: &mut String, v: &str) {
    if !v.contains(['\\', '"', '\n']) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic;

    fn escaped(v: &str) -> String {
        let mut s = String::new();
        escape_label_value(&mut s, v);
        s
    }

    #[test]
    fn label_escaping() {
        assert_eq!(escaped("web1"), "web1");
        assert_eq!(escaped(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escaped("line\nbreak"), r"line\nbreak");
        assert_eq!(escaped("ünïcode {}=,"), "ünïcode {}=,");
    }

    #[test]
    fn escaped_in_output() {
        let mut vms = synthetic::vms(1, 1, 0);
        vms[0].name = "we\"ird\\\nname".into();
        let text = render(&synthetic::host(&vms), &vms, None);
        assert!(
            text.contains(r#"vessel_vm_up{vm="we\"ird\\\nname"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn zero_counter_is_rendered() {
        let mut vms = synthetic::vms(1, 0, 0);
        vms[0].restarts_total = 0;
        vms[0].cpu_seconds_total = 0.0;
        let text = render(&synthetic::host(&vms), &vms, None);
        assert!(text.contains("vessel_vm_restarts_total{vm=\"vm-0000\"} 0\n"));
        assert!(text.contains("vessel_vm_cpu_seconds_total{vm=\"vm-0000\"} 0\n"));
    }

    #[test]
    fn empty_vm_list_has_host_families_only() {
        let text = render(&synthetic::host(&[]), &[], None);
        assert!(text.contains("# TYPE vessel_host_cpus gauge\nvessel_host_cpus 64\n"));
        assert!(text.contains("vessel_host_vms{state=\"running\"} 0\n"));
        assert!(!text.contains("vessel_vm_"), "{text}");
        assert!(!text.contains("vessel_scrape_duration_seconds"));
        let text = render(
            &synthetic::host(&[]),
            &[],
            Some(Duration::from_millis(1500)),
        );
        assert!(text.ends_with("vessel_scrape_duration_seconds 1.5\n"));
    }

    #[test]
    fn every_family_has_help_and_type_and_is_contiguous() {
        let vms = synthetic::vms(5, 2, 2);
        let text = render(&synthetic::host(&vms), &vms, Some(Duration::from_millis(3)));
        let mut seen = std::collections::HashSet::new();
        let mut current = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                current = rest.split(' ').next().unwrap();
                assert!(seen.insert(current), "{current} appears twice");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert!(rest.starts_with(current), "{line}");
                let kind = rest.rsplit(' ').next().unwrap();
                assert_eq!(kind == "counter", current.ends_with("_total"), "{line}");
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            assert_eq!(name, current, "sample outside its family: {line}");
        }
        assert!(seen.len() > 40, "{}", seen.len());
    }

    #[test]
    fn sorted_and_stable() {
        let mut vms = synthetic::vms(3, 2, 0);
        vms[0].disks.reverse();
        let a = render(&synthetic::host(&vms), &vms, None);
        vms.reverse();
        let b = render(&synthetic::host(&vms), &vms, None);
        assert_eq!(a, b, "input order must not matter");

        let ups: Vec<_> = a
            .lines()
            .filter(|l| l.starts_with("vessel_vm_up{"))
            .collect();
        assert_eq!(
            ups,
            [
                "vessel_vm_up{vm=\"vm-0000\"} 1",
                "vessel_vm_up{vm=\"vm-0001\"} 1",
                "vessel_vm_up{vm=\"vm-0002\"} 1"
            ]
        );
        let reads: Vec<_> = a
            .lines()
            .filter(|l| l.starts_with("vessel_vm_disk_read_ops_total{vm=\"vm-0002\""))
            .collect();
        assert_eq!(
            reads,
            [
                "vessel_vm_disk_read_ops_total{vm=\"vm-0002\",device=\"disk0\"} 3000",
                "vessel_vm_disk_read_ops_total{vm=\"vm-0002\",device=\"disk1\"} 3000"
            ]
        );
    }

    #[test]
    fn state_series_and_optional_families() {
        let mut vms = synthetic::vms(2, 0, 0);
        vms[0].state = "crashed".into();
        vms[1].state = "migrating".into();
        for vm in &mut vms {
            vm.balloon_bytes = None;
        }
        let text = render(&synthetic::host(&vms), &vms, None);
        let name0 = &vms[0].name;
        assert!(text.contains(&format!(
            "vessel_vm_state{{vm=\"{name0}\",state=\"crashed\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "vessel_vm_state{{vm=\"{name0}\",state=\"running\"}} 0\n"
        )));
        assert!(text.contains("state=\"migrating\"} 1\n"));
        assert!(text.contains(&format!("vessel_vm_up{{vm=\"{name0}\"}} 0\n")));
        // No VM has a balloon, disks or NICs: those families are absent, not empty.
        assert!(!text.contains("balloon"));
        assert!(!text.contains("vessel_vm_disk_"));
        assert!(!text.contains("vessel_vm_network_"));
    }

    #[test]
    fn float_values() {
        let mut vms = synthetic::vms(1, 0, 0);
        vms[0].vcpu_wait_seconds_total = 0.1 + 0.2;
        vms[0].cpu_seconds_total = f64::NAN;
        vms[0].vcpu_seconds_total = f64::INFINITY;
        let text = render(&synthetic::host(&vms), &vms, None);
        assert!(text
            .contains("vessel_vm_vcpu_wait_seconds_total{vm=\"vm-0000\"} 0.30000000000000004\n"));
        assert!(text.contains("vessel_vm_cpu_seconds_total{vm=\"vm-0000\"} NaN\n"));
        assert!(text.contains("vessel_vm_vcpu_seconds_total{vm=\"vm-0000\"} +Inf\n"));
    }
}
