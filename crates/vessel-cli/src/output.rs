//! Rendering API values for people: plain tables, sizes, times. Pure functions; printing is
//! done by the callers.

use std::time::{SystemTime, UNIX_EPOCH};

use comfy_table::{presets, CellAlignment, ColumnConstraint, ContentArrangement, Table};
use serde::Serialize;
use vessel_api::{
    Boot, CheckVerdict, Event, HostCheck, HostInfo, NicKind, Operation, OperationStatus, Pool, Vm,
    Volume,
};

/// How results are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable tables and messages.
    #[default]
    Table,
    /// The API's JSON, pretty-printed, for scripts (e.g. piped into jq).
    Json,
}

/// Pretty JSON with a trailing newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("API types serialize to JSON");
    text.push('\n');
    text
}

/// A table in the style of `docker ps`: no borders, a plain header row, columns separated by
/// spaces, never wrapped (so that `grep` and `awk` see one row per line).
pub(crate) fn plain_table(header: Option<&[&str]>) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    if let Some(header) = header {
        table.set_header(header.iter().copied());
    }
    table
}

/// A table's text with the columns packed, control characters escaped (see [`escape`]).
pub(crate) fn finish(table: Table) -> String {
    finish_aligned(table, &[])
}

/// [`finish`], with the columns `right` aligned right (numbers).
pub(crate) fn finish_aligned(table: Table, right: &[usize]) -> String {
    let mut table = escaped(&table);
    for &index in right {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let columns = table.column_count();
    for (index, column) in table.column_iter_mut().enumerate() {
        let right = if index + 1 == columns { 0 } else { 3 };
        column.set_padding((0, right));
        column.set_constraint(ColumnConstraint::ContentWidth);
    }
    let mut text = table.trim_fmt();
    text.push('\n');
    text
}

/// A table as comfy-table draws it, with control characters escaped: for tables that keep
/// comfy-table's own spacing.
pub(crate) fn render(table: &Table) -> String {
    format!("{}\n", escaped(table))
}

/// A copy of `table` (a [`plain_table`]) whose cells have their control characters escaped.
/// Names cannot hold any, but much of what tables show is text from elsewhere (audit records
/// keep what a request sent, error messages, event texts): a newline there would forge a row,
/// an escape sequence would rewrite the terminal.
fn escaped(table: &Table) -> Table {
    let cells = |row: &comfy_table::Row| -> Vec<String> {
        row.cell_iter()
            .map(|cell| escape(&cell.content()))
            .collect()
    };
    let mut out = plain_table(None);
    if let Some(header) = table.header() {
        out.set_header(cells(header));
    }
    for row in table.row_iter() {
        out.add_row(cells(row));
    }
    out
}

/// `text` with every character that could steer a terminal ([`vessel_core::is_terminal_control`])
/// written as an escape: `\n`, `\r`, `\t`, else `\u{1b}`. A backslash stays as it is.
pub fn escape(text: &str) -> String {
    if !text.chars().any(vessel_core::is_terminal_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if vessel_core::is_terminal_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// A two-column key/value table without a header.
pub(crate) fn key_values(rows: Vec<(&str, String)>) -> String {
    let mut table = plain_table(None);
    for (key, value) in rows {
        table.add_row(vec![key.to_string(), value]);
    }
    finish(table)
}

/// `vessel vm list`.
pub fn vm_table(vms: &[Vm]) -> String {
    let mut table = plain_table(Some(&[
        "NAME", "STATE", "CPUS", "MEMORY", "BOOT", "PID", "RESTARTS",
    ]));
    for vm in vms {
        table.add_row(vec![
            vm.spec.name.clone(),
            state_with_goal(vm),
            vm.spec.cpus.to_string(),
            format_mib(vm.spec.memory_mib),
            boot_kind(&vm.spec.boot).to_string(),
            vm.pid.map_or_else(|| "-".into(), |pid| pid.to_string()),
            vm.restart_count.to_string(),
        ]);
    }
    finish_aligned(table, &[2, 3, 5, 6])
}

/// The observed state, with the desired one when they differ (`stopped->running`), so that a
/// VM the daemon is still working on shows as such.
fn state_with_goal(vm: &Vm) -> String {
    let state = vm.state.as_str();
    let desired = vm.desired_state.as_str();
    if state == desired || vm.state == vessel_api::VmState::Crashed {
        state.to_string()
    } else {
        format!("{state}->{desired}")
    }
}

/// `vessel vm show`.
pub fn vm_details(vm: &Vm, now_ms: u64) -> String {
    let spec = &vm.spec;
    let mut rows = vec![
        ("Name", spec.name.clone()),
        ("State", vm.state.as_str().to_string()),
        ("Desired state", vm.desired_state.as_str().to_string()),
        ("Reason", vm.reason.clone().unwrap_or_else(|| "-".into())),
        (
            "PID",
            vm.pid.map_or_else(|| "-".into(), |pid| pid.to_string()),
        ),
        (
            "Accelerator",
            vm.accelerator.clone().unwrap_or_else(|| "-".into()),
        ),
        ("CPUs", spec.cpus.to_string()),
        ("Memory", format_mib(spec.memory_mib)),
        ("Machine", spec.machine.as_str().to_string()),
        ("Boot", boot_kind(&spec.boot).to_string()),
    ];
    match &spec.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            rows.push(("Kernel", kernel.clone()));
            rows.push(("Initrd", initrd.clone().unwrap_or_else(|| "-".into())));
            rows.push(("Cmdline", cmdline.clone().unwrap_or_else(|| "-".into())));
        }
        Boot::Disk { disk } => rows.push(("Disk", disk.clone())),
        Boot::FirstDisk => {}
    }
    for disk in &spec.disks {
        let mut text = format!("{}/{}", disk.pool, disk.volume);
        if disk.read_only {
            text.push_str(" (read-only)");
        }
        if disk.shareable {
            text.push_str(" (shareable)");
        }
        rows.push(("Attached disk", text));
    }
    if spec.cloud_init {
        rows.push(("cloud-init", "NoCloud seed attached".into()));
    }
    rows.extend([
        ("NIC", nic_name(spec.nic).to_string()),
        ("Restart policy", spec.restart_policy.as_str().to_string()),
        ("Restarts", vm.restart_count.to_string()),
        ("Created", format_time(vm.created_at_ms, now_ms)),
        ("State changed", format_time(vm.state_changed_at_ms, now_ms)),
    ]);
    key_values(rows)
}

/// `vessel operation list`.
pub fn operation_table(operations: &[Operation], now_ms: u64) -> String {
    let mut table = plain_table(Some(&["ID", "VM", "ACTION", "STATUS", "CREATED", "ERROR"]));
    for op in operations {
        table.add_row(vec![
            op.id.clone(),
            op.vm.clone(),
            op.action.as_str().to_string(),
            status_name(op.status).to_string(),
            format_age(op.created_at_ms, now_ms),
            op.error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    finish(table)
}

pub use vessel_core::units::format_size_bytes as format_bytes;

/// `vessel pool list`.
pub fn pool_table(pools: &[Pool]) -> String {
    let mut table = plain_table(Some(&[
        "NAME",
        "KIND",
        "PATH",
        "SIZE",
        "USED",
        "AVAILABLE",
        "VOLUMES",
    ]));
    for pool in pools {
        table.add_row(vec![
            pool.name.clone(),
            pool.kind.as_str().to_string(),
            pool.path.clone(),
            format_bytes(pool.total_bytes),
            format_bytes(pool.used_bytes),
            format_bytes(pool.available_bytes),
            pool.volumes.to_string(),
        ]);
    }
    finish(table)
}

/// `vessel pool show`.
pub fn pool_details(pool: &Pool, now_ms: u64) -> String {
    key_values(vec![
        ("Name", pool.name.clone()),
        ("Kind", pool.kind.as_str().to_string()),
        ("Path", pool.path.clone()),
        ("Size", format_bytes(pool.total_bytes)),
        ("Used", format_bytes(pool.used_bytes)),
        ("Available", format_bytes(pool.available_bytes)),
        ("Volumes", pool.volumes.to_string()),
        ("Created", format_time(pool.created_at_ms, now_ms)),
    ])
}

/// `vessel volume list`.
pub fn volume_table(volumes: &[Volume]) -> String {
    let mut table = plain_table(Some(&[
        "POOL",
        "NAME",
        "FORMAT",
        "SIZE",
        "ALLOCATED",
        "BACKING",
        "USED BY",
    ]));
    for volume in volumes {
        table.add_row(vec![
            volume.pool.clone(),
            volume.name.clone(),
            volume.format.as_str().to_string(),
            format_bytes(volume.virtual_bytes),
            format_bytes(volume.allocated_bytes),
            volume.backing_volume.clone().unwrap_or_else(|| "-".into()),
            if volume.used_by.is_empty() {
                "-".into()
            } else {
                volume.used_by.join(",")
            },
        ]);
    }
    finish(table)
}

/// `vessel volume show`.
pub fn volume_details(volume: &Volume) -> String {
    let chain = if volume.backing_chain.is_empty() {
        "-".to_string()
    } else {
        volume.backing_chain.join(" <- ")
    };
    key_values(vec![
        ("Pool", volume.pool.clone()),
        ("Name", volume.name.clone()),
        ("Format", volume.format.as_str().to_string()),
        (
            "Encrypted",
            if volume.encrypted { "yes (LUKS)" } else { "no" }.to_string(),
        ),
        ("Path", volume.path.clone()),
        ("Virtual size", format_bytes(volume.virtual_bytes)),
        ("Allocated", format_bytes(volume.allocated_bytes)),
        (
            "Backing volume",
            volume.backing_volume.clone().unwrap_or_else(|| "-".into()),
        ),
        ("Backing chain", chain),
        (
            "Used by",
            if volume.used_by.is_empty() {
                "-".into()
            } else {
                volume.used_by.join(", ")
            },
        ),
    ])
}

/// `vessel event list`.
pub fn event_table(events: &[Event], now_ms: u64) -> String {
    let mut table = plain_table(Some(&["TIME", "VM", "EVENT"]));
    for event in events {
        table.add_row(vec![
            format_time(event.at_ms, now_ms),
            event.vm.clone(),
            event.message.clone(),
        ]);
    }
    finish(table)
}

/// `vessel operation show`.
pub fn operation_details(op: &Operation, now_ms: u64) -> String {
    let mut rows = vec![
        ("ID", op.id.clone()),
        ("VM", op.vm.clone()),
        ("Action", op.action.as_str().to_string()),
        ("Status", status_name(op.status).to_string()),
        ("Force", if op.force { "yes" } else { "no" }.to_string()),
    ];
    if let Some(timeout) = op.timeout_secs {
        rows.push(("Timeout", format!("{timeout}s")));
    }
    rows.push(("Created", format_time(op.created_at_ms, now_ms)));
    match op.finished_at_ms {
        Some(finished) => {
            rows.push(("Finished", format_time(finished, now_ms)));
            rows.push((
                "Duration",
                format_duration_ms(finished.saturating_sub(op.created_at_ms)),
            ));
        }
        None => rows.push(("Finished", "-".into())),
    }
    rows.push(("Error", op.error.clone().unwrap_or_else(|| "-".into())));
    key_values(rows)
}

/// `vessel host info`.
pub fn host_details(host: &HostInfo) -> String {
    key_values(vec![
        ("Name", host.name.clone()),
        ("Hostname", host.hostname.clone()),
        ("Vessel version", host.version.clone()),
        ("CPUs", host.cpus.to_string()),
        ("Memory", format_mib(host.memory_mib)),
        ("Accelerator", host.accelerator.clone()),
        ("Accelerator reason", host.accelerator_reason.clone()),
        ("QEMU version", host.qemu_version.clone()),
        ("VMs defined", host.vms_defined.to_string()),
        ("VMs running", host.vms_running.to_string()),
    ])
}

/// `vessel host check`: one line per check, then the accelerator verdict.
pub fn host_check_report(check: &HostCheck) -> String {
    let mut table = plain_table(None);
    for item in &check.items {
        table.add_row(vec![
            verdict_name(item.verdict).to_string(),
            item.name.clone(),
            item.detail.clone(),
        ]);
    }
    let mut text = if check.items.is_empty() {
        String::new()
    } else {
        finish(table)
    };
    text.push_str(&format!(
        "accelerator: {} ({})\n",
        check.accelerator, check.accelerator_reason
    ));
    text
}

/// Whether any host check failed.
pub fn host_check_failed(check: &HostCheck) -> bool {
    check
        .items
        .iter()
        .any(|item| item.verdict == CheckVerdict::Fail)
}

fn verdict_name(verdict: CheckVerdict) -> &'static str {
    match verdict {
        CheckVerdict::Pass => "PASS",
        CheckVerdict::Warn => "WARN",
        CheckVerdict::Fail => "FAIL",
    }
}

pub fn status_name(status: OperationStatus) -> &'static str {
    status.as_str()
}

fn nic_name(nic: NicKind) -> &'static str {
    match nic {
        NicKind::None => "none",
        NicKind::User => "user",
    }
}

pub fn boot_kind(boot: &Boot) -> &'static str {
    match boot {
        Boot::Kernel { .. } => "kernel",
        Boot::Disk { .. } => "disk",
        Boot::FirstDisk => "volume",
    }
}

/// A size in MiB the way users write it: `256M`, `1G`, `1536M`, `2T`.
pub fn format_mib(mib: u64) -> String {
    const GIB: u64 = 1024;
    const TIB: u64 = 1024 * 1024;
    if mib != 0 && mib % TIB == 0 {
        format!("{}T", mib / TIB)
    } else if mib != 0 && mib % GIB == 0 {
        format!("{}G", mib / GIB)
    } else {
        format!("{mib}M")
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// How long ago a moment was: `12s ago`, `3m ago`, `5h ago`, `4d ago`.
pub fn format_age(at_ms: u64, now_ms: u64) -> String {
    if at_ms == 0 {
        return "-".into();
    }
    let secs = now_ms.saturating_sub(at_ms) / 1000;
    if now_ms < at_ms || secs == 0 {
        "just now".into()
    } else if secs < 60 {
        format!("{secs}s ago")
    } else if secs < 3600 {
        format!("{}m ago", secs / 60)
    } else if secs < 48 * 3600 {
        format!("{}h ago", secs / 3600)
    } else {
        format!("{}d ago", secs / 86400)
    }
}

/// A moment as its age and its UTC date: `3m ago (2026-03-21 10:22:03 UTC)`.
pub fn format_time(at_ms: u64, now_ms: u64) -> String {
    if at_ms == 0 {
        return "-".into();
    }
    format!("{} ({})", format_age(at_ms, now_ms), format_utc(at_ms))
}

/// `2026-03-21 10:22:03 UTC`.
pub fn format_utc(at_ms: u64) -> String {
    let secs = at_ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86400) as i64);
    let rem = secs % 86400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A duration for people: `850ms`, `2.4s`, `3m12s`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        let secs = ms / 1000;
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

/// `vessel image list`.
pub fn image_table(images: &[vessel_api::Image]) -> String {
    let mut table = plain_table(Some(&[
        "NAME",
        "POOL",
        "KIND",
        "PUBLIC",
        "FORMAT",
        "SIZE",
        "ALLOCATED",
        "CLONES",
        "SHA256",
    ]));
    for image in images {
        table.add_row(vec![
            image.name.clone(),
            image.pool.clone(),
            image.kind.as_str().to_string(),
            if image.public { "yes" } else { "no" }.to_string(),
            image.format.as_str().to_string(),
            format_bytes(image.virtual_bytes),
            format_bytes(image.allocated_bytes),
            image.dependents.len().to_string(),
            image.sha256.chars().take(12).collect(),
        ]);
    }
    finish(table)
}

/// `vessel image show`.
pub fn image_details(image: &vessel_api::Image) -> String {
    key_values(vec![
        ("Name", image.name.clone()),
        ("Pool", image.pool.clone()),
        ("Project", image.project.clone()),
        ("Kind", image.kind.as_str().to_string()),
        (
            "Public",
            if image.public { "yes" } else { "no" }.to_string(),
        ),
        ("Format", image.format.as_str().to_string()),
        ("Virtual size", format_bytes(image.virtual_bytes)),
        ("Allocated", format_bytes(image.allocated_bytes)),
        ("SHA-256", image.sha256.clone()),
        ("Source", image.source.clone()),
        (
            "Linked clones",
            if image.dependents.is_empty() {
                "-".into()
            } else {
                image.dependents.join(", ")
            },
        ),
    ])
}

/// `vessel vm snapshot list`: oldest first, the current one marked.
pub fn snapshot_table(snapshots: &[vessel_api::Snapshot], now_ms: u64) -> String {
    let mut table = plain_table(Some(&["", "NAME", "PARENT", "TAKEN", "MEMORY"]));
    for s in snapshots {
        table.add_row(vec![
            if s.current { "*" } else { "" }.to_string(),
            s.name.clone(),
            s.parent.clone().unwrap_or_else(|| "-".into()),
            format_age(s.created_at_ms, now_ms),
            if s.memory {
                format_bytes(s.vm_state_bytes)
            } else {
                "-".into()
            },
        ]);
    }
    finish(table)
}

/// One event as a line of `vessel event list --follow`.
pub fn event_line(event: &Event) -> String {
    let vm = if event.vm.is_empty() { "-" } else { &event.vm };
    format!(
        "{}  {:<9} {:<16} {}\n",
        format_utc(event.at_ms),
        event.kind.as_str(),
        escape(vm),
        escape(&event.message)
    )
}

/// The guest agent's part of `vessel vm show`.
pub fn guest_details(guest: &vessel_api::GuestInfo) -> String {
    let mut rows = vec![(
        "Guest agent",
        if guest.agent {
            "running".to_string()
        } else {
            guest.note.clone().unwrap_or_else(|| "not running".into())
        },
    )];
    for iface in &guest.interfaces {
        rows.push((
            "Guest address",
            format!("{} {}", iface.name, iface.addresses.join(" ")),
        ));
    }
    key_values(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_escape_control_characters_so_no_row_can_be_forged() {
        let mut table = plain_table(Some(&["NAME", "RESULT"]));
        table.add_row(vec![
            "web\n1   ok\u{1b}[2J".to_string(),
            "denied: 401\u{202e}".to_string(),
        ]);
        table.add_row(vec!["plain".to_string(), "tab\there\r".to_string()]);
        let text = finish(table);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\u{202e}') && !text.contains('\r'));
        assert!(text.contains("web\\n1   ok\\u{1b}[2J"), "{text}");
        assert!(text.contains("tab\\there\\r"), "{text}");
        assert_eq!(escape("C:\\path ok"), "C:\\path ok");
    }
    use vessel_api::{
        CheckVerdict, DesiredState, HostCheckItem, Machine, OperationAction, RestartPolicy, VmSpec,
        VmState,
    };

    fn vm(name: &str, memory_mib: u64, boot: Boot, state: VmState, pid: Option<u32>) -> Vm {
        Vm {
            project: "default".into(),
            spec: VmSpec {
                name: name.into(),
                cpus: 2,
                memory_mib,
                boot,
                machine: Machine::Microvm,
                nic: NicKind::User,
                restart_policy: RestartPolicy::OnFailure,
                disks: vec![],
                cloud_init: false,
                nics: vec![],
            },
            desired_state: match state {
                VmState::Running => DesiredState::Running,
                _ => DesiredState::Stopped,
            },
            state,
            reason: None,
            pid,
            accelerator: pid.map(|_| "tcg".into()),
            restart_count: 1,
            created_at_ms: 1_700_000_000_000,
            state_changed_at_ms: 1_700_000_060_000,
        }
    }

    fn kernel() -> Boot {
        Boot::Kernel {
            kernel: "/boot/vmlinuz".into(),
            initrd: Some("/boot/initrd.img".into()),
            cmdline: None,
        }
    }

    #[test]
    fn vm_list_has_the_columns_and_formats_memory() {
        let vms = vec![
            vm("web1", 256, kernel(), VmState::Running, Some(4242)),
            vm(
                "db",
                2048,
                Boot::Disk {
                    disk: "/var/lib/db.qcow2".into(),
                },
                VmState::Stopped,
                None,
            ),
        ];
        let text = vm_table(&vms);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            ["NAME", "STATE", "CPUS", "MEMORY", "BOOT", "PID", "RESTARTS"]
        );
        assert!(lines[0].starts_with("NAME"), "no leading border: {text}");
        let web1: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            web1,
            ["web1", "running", "2", "256M", "kernel", "4242", "1"]
        );
        let db: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(db, ["db", "stopped", "2", "2G", "disk", "-", "1"]);
        assert!(!text.contains('|') && !text.contains('+'), "{text}");
        assert!(text.lines().all(|line| !line.ends_with(' ')), "{text:?}");
    }

    #[test]
    fn vm_list_shows_a_pending_change_of_state() {
        let mut starting = vm("web1", 256, kernel(), VmState::Starting, Some(1));
        starting.desired_state = DesiredState::Running;
        let text = vm_table(&[starting]);
        assert!(text.contains("starting->running"), "{text}");
    }

    #[test]
    fn empty_vm_list_is_just_the_header() {
        let text = vm_table(&[]);
        assert_eq!(text.lines().count(), 1);
        assert!(text.starts_with("NAME"));
    }

    #[test]
    fn vm_details_show_spec_state_and_ages() {
        let mut web1 = vm("web1", 1536, kernel(), VmState::Crashed, None);
        web1.reason = Some("QEMU was killed by signal 9".into());
        let now = 1_700_000_240_000;
        let text = vm_details(&web1, now);
        for expected in [
            "Desired state",
            "stopped",
            "QEMU was killed by signal 9",
            "1536M",
            "microvm",
            "/boot/vmlinuz",
            "/boot/initrd.img",
            "on-failure",
            "4m ago (2023-11-14 22:13:20 UTC)",
            "3m ago",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn memory_is_written_in_the_largest_whole_unit() {
        assert_eq!(format_mib(256), "256M");
        assert_eq!(format_mib(1024), "1G");
        assert_eq!(format_mib(1536), "1536M");
        assert_eq!(format_mib(4096), "4G");
        assert_eq!(format_mib(1024 * 1024), "1T");
        assert_eq!(format_mib(0), "0M");
    }

    #[test]
    fn ages_are_short_and_human() {
        let now = 10_000_000_000;
        assert_eq!(format_age(now, now), "just now");
        assert_eq!(format_age(now + 5000, now), "just now");
        assert_eq!(format_age(now - 12_000, now), "12s ago");
        assert_eq!(format_age(now - 180_000, now), "3m ago");
        assert_eq!(format_age(now - 5 * 3_600_000, now), "5h ago");
        assert_eq!(format_age(now - 4 * 86_400_000, now), "4d ago");
        assert_eq!(format_age(0, now), "-");
    }

    #[test]
    fn utc_dates_are_correct() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn host_check_lists_verdicts_then_the_accelerator() {
        let check = HostCheck {
            items: vec![
                HostCheckItem {
                    name: "kvm".into(),
                    verdict: CheckVerdict::Warn,
                    detail: "/dev/kvm exists but crashes guests".into(),
                },
                HostCheckItem {
                    name: "qemu".into(),
                    verdict: CheckVerdict::Pass,
                    detail: "QEMU 9.2.0".into(),
                },
            ],
            accelerator: "tcg".into(),
            accelerator_reason: "KVM failed a test boot".into(),
        };
        let text = host_check_report(&check);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("WARN   kvm"), "{text}");
        assert!(lines[1].starts_with("PASS   qemu"), "{text}");
        assert_eq!(lines[2], "accelerator: tcg (KVM failed a test boot)");
        assert!(!host_check_failed(&check));
    }

    #[test]
    fn operations_table_shows_status_and_error() {
        let op = Operation {
            id: "op-1".into(),
            vm: "web1".into(),
            resource: None,
            project: "default".into(),
            progress: None,
            result: None,
            action: OperationAction::Start,
            status: OperationStatus::Failed,
            error: Some("kernel not found".into()),
            error_code: None,
            force: false,
            timeout_secs: None,
            created_at_ms: 1_000_000,
            finished_at_ms: Some(1_002_400),
        };
        let text = operation_table(std::slice::from_ref(&op), 1_061_000);
        assert!(text.starts_with("ID"), "{text}");
        assert!(text.contains("failed"), "{text}");
        assert!(text.contains("1m ago"), "{text}");
        assert!(text.contains("kernel not found"), "{text}");
        let details = operation_details(&op, 1_061_000);
        assert!(details.contains("2.4s"), "{details}");
    }
}
