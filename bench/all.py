#!/usr/bin/env python3
"""Runs every Vessel benchmark and writes docs/benchmarks.md fresh.

Usage: python3 bench/all.py [--quick] [--only NAME,...] [--vessel PATH] [--out FILE]
                            [--results FILE] [--no-wait-quiet] [--build-note TEXT]

Benchmarks (in this order): run, libvirt, import, snapshot, storage, density, metrics, network,
security, scheduler.
Needs a release build first:
    cargo build --release -p vessel
    cargo build --release -p vessel-metrics --examples
    cargo build --release -p vessel-storage --example import
    cargo build --release -p vessel-audit --example append_bench
    cargo build --release -p vessel-scheduler --example place_bench
(binaries from $CARGO_TARGET_DIR, else target/).

Each script runs as its own process and prints JSON; the results of all of them are kept in
bench/results.json (with --only, the others' earlier results are kept and reused) and rendered
into docs/benchmarks.md: the machine, then per benchmark a table of figures (median and spread,
target vs measured), the side-by-side comparisons, and the static notes of bench/notes/NAME.md.

--quick runs every benchmark with few runs and small sizes: a smoke check, not figures to keep
(the document says so). The scheduler benchmark needs only its example (no daemon, no vessel
binary: `--only scheduler` then keeps the machine's accelerator from the earlier results). libvirt is skipped with a note when virsh/libvirtd are not installed;
when they are installed but libvirtd is not running, this script starts virtlogd and libvirtd in
the foreground for the benchmark and stops them afterwards. Before each benchmark it waits until no
other benchmark (bench/storage.py, import.py, snapshot.py of someone else) runs on the machine.
"""
import argparse
import ast
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import common  # noqa: E402

ORDER = ["run", "libvirt", "import", "snapshot", "storage", "density", "metrics", "network",
         "security", "scheduler"]

# Benchmarks that run no daemon (pure library examples).
NO_DAEMON = {"scheduler"}

TITLES = {
    "run": "Foundation: start overhead, boot vs raw QEMU, daemon memory, list latency (bench/run.py)",
    "libvirt": "Boot vs libvirt (bench/libvirt.py)",
    "import": "Image import vs cp, library call (bench/import.py)",
    "snapshot": "Snapshots of a running VM (bench/snapshot.py)",
    "storage": "Storage through the daemon: VM create from an image, import vs cp (bench/storage.py)",
    "density": "Density and sampling cost: idle test guests (64 MiB asked) on one host (bench/density.py)",
    "metrics": "Metrics: per-VM sample cost and /metrics render time (bench/metrics.py)",
    "network": "Networks: TCP throughput on a managed bridge vs user-mode NAT, network create and NIC attach (bench/network.py)",
    "security": "Security: TLS + token overhead vs the unix socket, audit append throughput (bench/security.py)",
    "scheduler": "Scheduler: placements per second and packing quality on synthetic clusters (bench/scheduler.py)",
}


def args_for(name, quick):
    """Each script's arguments: full figures, or a quick smoke check."""
    full = {
        "run": ["--runs", "11"],
        "libvirt": ["--runs", "9"],
        "import": ["--runs", "5", "--size-mib", "1024"],
        "snapshot": ["--runs", "10", "--mem-runs", "5", "--data-mib", "500"],
        "storage": ["--runs", "20", "--full-runs", "3", "--import-runs", "5", "--size-mib", "1024"],
        "density": ["--max", "40", "--window", "60", "--pairs", "2"],
        "metrics": ["--repeat", "3", "--requests", "50", "--vms", "200"],
        "network": ["--runs", "11", "--mib", "8", "--create-runs", "10", "--nic-runs", "10"],
        "security": ["--requests", "5000", "--audited", "20000"],
        "scheduler": ["--runs", "5"],
    }
    fast = {
        "run": ["--runs", "3", "--list-vms", "200", "--list-requests", "100"],
        "libvirt": ["--runs", "2"],
        "import": ["--runs", "2", "--size-mib", "256"],
        "snapshot": ["--runs", "3", "--mem-runs", "1", "--data-mib", "100"],
        "storage": ["--runs", "5", "--full-runs", "1", "--import-runs", "1", "--size-mib", "256",
                    "--data-mib", "100"],
        "density": ["--max", "4", "--window", "10", "--pairs", "1", "--settle", "3"],
        "metrics": ["--repeat", "1", "--requests", "10", "--vms", "200"],
        "network": ["--runs", "1", "--mib", "2", "--create-runs", "3", "--nic-runs", "3"],
        "security": ["--requests", "500", "--audited", "2000"],
        "scheduler": ["--runs", "1", "--vms", "20000"],
    }
    return (fast if quick else full)[name]


# ---------------------------------------------------------------- machine


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def daemon_accel(vessel):
    try:
        d = common.Daemon(vessel)
        try:
            host = common.api(d.sock, "GET", "/v1/host")
            return host.get("accelerator") or host.get("accel") or json.dumps(host)[:120]
        finally:
            d.close()
    except Exception as e:  # noqa: BLE001
        return f"? ({e})"


def machine(vessel, previous=None):
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    try:
        with open("/etc/debian_version") as f:
            debian = f.read().strip()
    except OSError:
        debian = "?"
    if not os.path.exists(vessel) and previous:
        # Only daemon-less benchmarks run (no vessel binary): keep what the daemon said last time.
        accel = previous.get("accelerator", "?")
    else:
        accel = daemon_accel(vessel)
    dirty = sh("git", "-C", ROOT, "status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock")
    return {
        "cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(), "debian": debian,
        "qemu": sh("qemu-system-x86_64", "--version").splitlines()[0] if sh("qemu-system-x86_64", "--version") else "?",
        "accelerator": accel,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "commit": sh("git", "-C", ROOT, "rev-parse", "--short", "HEAD"),
        "tree_dirty": bool(dirty),
        "vessel": vessel,
    }


# ---------------------------------------------------------------- running


def others_running():
    out = sh("pgrep", "-f", "bench/storage.py|bench/import.py|bench/snapshot.py|bench/density.py|bench/network.py")
    mine = {os.getpid(), os.getppid()}
    return [p for p in out.split() if int(p) not in mine]


def wait_quiet(enabled, max_wait=1800):
    if not enabled:
        return 0
    t0 = time.time()
    told = False
    while others_running() and time.time() - t0 < max_wait:
        if not told:
            log(f"all: waiting for other benchmarks to finish (pids {' '.join(others_running())})")
            told = True
        time.sleep(10)
    return round(time.time() - t0)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class Libvirtd:
    """Makes libvirt reachable for the libvirt benchmark; stops only what it started."""

    def __init__(self):
        self.procs = []

    @staticmethod
    def installed():
        return all(shutil.which(x) for x in ("virsh", "libvirtd", "virtlogd"))

    @staticmethod
    def reachable():
        return subprocess.run(["virsh", "-q", "list"], capture_output=True, timeout=30).returncode == 0

    def ensure(self):
        if self.reachable():
            return "already running"
        if not sh("pidof", "virtlogd"):
            self.procs.append(subprocess.Popen(["virtlogd"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if not sh("pidof", "libvirtd"):
            self.procs.append(subprocess.Popen(["libvirtd"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.time() + 60
        while not self.reachable():
            if time.time() > deadline:
                raise RuntimeError("libvirtd did not come up")
            time.sleep(0.5)
        time.sleep(2)
        return "started by bench/all.py for this run"

    def stop(self):
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


def parse_output(name, text):
    """The JSON a script printed (the first JSON value in its output; libvirt.py prints a Python
    dict)."""
    text = text.strip()
    if name == "libvirt":
        return ast.literal_eval(text.splitlines()[-1])
    start = text.find("{")
    value, _ = json.JSONDecoder().raw_decode(text[start:])
    return value


def command(name, a):
    py = [sys.executable, os.path.join(HERE, f"{name}.py")]
    examples = os.path.join(os.path.dirname(os.path.dirname(a.vessel)), "release", "examples") \
        if os.path.basename(os.path.dirname(a.vessel)) == "release" else None
    extra = {
        "run": ["--vessel", a.vessel, "--json"],
        "libvirt": ["--vessel", a.vessel],
        "import": ["--json"] + (["--example", os.path.join(examples, "import")] if examples else []),
        "snapshot": ["--json"],
        "storage": ["--vessel", a.vessel],
        "density": ["--vessel", a.vessel, "--json"],
        "metrics": ["--vessel", a.vessel, "--json"] + (["--examples", examples] if examples else []),
        "network": ["--vessel", a.vessel, "--json"],
        "security": ["--vessel", a.vessel, "--json"] + (["--examples", examples] if examples else []),
        "scheduler": ["--json"] + (["--examples", examples] if examples else []),
    }[name]
    return py + extra + args_for(name, a.quick)


def run_one(name, a):
    entry = {"quick": a.quick, "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M")}
    lv = None
    if name == "libvirt":
        if not Libvirtd.installed():
            entry.update(status="skipped", note="libvirt is not installed on this machine (virsh, libvirtd, virtlogd)")
            return entry
        lv = Libvirtd()
        try:
            entry["libvirtd"] = lv.ensure()
        except Exception as e:  # noqa: BLE001
            lv.stop()
            entry.update(status="skipped", note=f"libvirt is installed but could not be started: {e}")
            return entry
    entry["waited_for_others_s"] = wait_quiet(not a.no_wait_quiet)
    cmd = command(name, a)
    entry["command"] = " ".join(["python3", os.path.relpath(cmd[1], ROOT)] + cmd[2:])
    log(f"all: {name}: {entry['command']}")
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        if lv:
            lv.stop()
    entry["seconds"] = round(time.time() - t0)
    if proc.returncode != 0:
        entry.update(status="failed", note=f"exit {proc.returncode}: " + proc.stderr.strip()[-1500:])
        return entry
    try:
        entry["result"] = parse_output(name, proc.stdout)
        entry["status"] = "ok"
    except Exception as e:  # noqa: BLE001
        entry.update(status="ok-text", note=f"output was not JSON ({e})", text=proc.stdout[-6000:])
    return entry


# ---------------------------------------------------------------- rendering


def f(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def spread(s, digits=1, unit=""):
    """min–max of a summary dict (median/min/max/p90 keys, with or without a _ms suffix)."""
    if not s:
        return "–"
    lo = s.get("min", s.get("min_ms"))
    hi = s.get("max", s.get("max_ms"))
    p90 = s.get("p90", s.get("p90_ms"))
    n = s.get("n", s.get("runs"))
    text = f"{f(lo, digits)}–{f(hi, digits)}{unit}"
    if p90 is not None:
        text += f", p90 {f(p90, digits)}{unit}"
    if n is not None:
        text += f", n={n}"
    return text


def med(s):
    return s.get("median", s.get("median_ms")) if s else None


def verdict(ok):
    return "yes" if ok else "**no**"


def table(rows, head=("figure", "target", "measured (median)", "spread", "met")):
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return out


def secs(xs):
    s = sorted(xs)
    n = len(s)
    m = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    return {"median": m, "min": s[0], "max": s[-1], "n": n}


def render_run(r):
    st, bo, me, li = r["start"], r["boot"], r["memory"], r["list"]
    rows = [
        ["start overhead: `vessel vm start` minus raw QEMU exec to QMP ready (per-run difference)",
         "<= 20 ms", f"**{f(st['overhead_median_ms'])} ms**", spread(st.get("overhead_ms"), 1, " ms"),
         verdict(st["overhead_median_ms"] <= 20)],
        ["`vessel vm start` (CLI process to state running)", "", f"{f(st['vessel_start_ms'])} ms",
         spread(st.get("vessel_ms"), 1, " ms"), ""],
        ["raw `qemu-system-x86_64` exec to QMP ready", "", f"{f(st['raw_launch_to_qmp_ms'])} ms",
         spread(st.get("raw_ms"), 1, " ms"), ""],
        ["boot to READY, Vessel / raw QEMU (ratio of medians; spread: per-run ratios)", "<= 1.05x",
         f"**{bo['ratio']:.2f}x**", spread(bo.get("pair_ratio"), 2, "x"), verdict(bo["ratio"] <= 1.05)],
        ["boot to READY through Vessel (microvm)", "", f"{bo['vessel_boot_ms'] / 1000:.2f} s",
         spread({k: v / 1000 if isinstance(v, float) else v for k, v in bo.get("vessel_ms", {}).items()}, 2, " s"), ""],
        ["boot to READY, raw QEMU (same kernel, initramfs, machine)", "", f"{bo['raw_boot_ms'] / 1000:.2f} s",
         spread({k: v / 1000 if isinstance(v, float) else v for k, v in bo.get("raw_ms", {}).items()}, 2, " s"), ""],
        ["daemon RSS, idle", "<= 12 MiB", f"**{me['idle_rss_mib']:.1f} MiB**", "one reading",
         verdict(me["idle_rss_mib"] <= 12)],
        ["daemon RSS, 50 VMs defined", "<= 16 MiB", f"**{me['fifty_vms_rss_mib']:.1f} MiB**", "one reading",
         verdict(me["fifty_vms_rss_mib"] <= 16)],
    ]
    if "idle_anon_mib" in me:
        rows += [
            ["of which private (RssAnon): idle / 50 VMs defined", "",
             f"{me['idle_anon_mib']:.1f} / {me['fifty_vms_anon_mib']:.1f} MiB",
             f"the rest is the {me['binary_mib']:.0f} MiB binary's clean file pages", ""],
        ]
    rows += [
        [f"`GET /v1/vms` with {li.get('vms', 1000)} VMs defined, {li.get('requests', 500)} requests, new connection each: p99",
         "p99 <= 5 ms", f"**p99 {li['p99_ms']:.2f} ms** (p50 {li['p50_ms']:.2f} ms)",
         f"max {f(li.get('max_ms'), 2)} ms", verdict(li["p99_ms"] <= 5)],
        [f"daemon RSS with {li.get('vms', 1000)} VMs defined", "", f"{li['rss_1000_vms_mib']:.1f} MiB", "one reading", ""],
    ]
    out = table(rows)
    out += ["", f"Vessel vs raw QEMU, same VM: start {f(st['vessel_start_ms'])} ms vs {f(st['raw_launch_to_qmp_ms'])} ms "
            f"to QMP ready; boot to READY {bo['vessel_boot_ms'] / 1000:.2f} s vs {bo['raw_boot_ms'] / 1000:.2f} s "
            f"({r.get('runs', '?')} interleaved runs each)."]
    return out


def render_libvirt(r):
    runs = r["runs_ms"]
    s = {k: secs([x / 1000 for x in v]) for k, v in runs.items()}
    v, q, m = s["virsh"]["median"], s["q35"]["median"], s["microvm"]["median"]
    rows = [
        ["boot to READY: `virsh start` of a default q35 domain", "", f"{v:.2f} s", spread(s["virsh"], 2, " s"), ""],
        ["boot to READY: `vessel vm start`, q35", "faster than virsh", f"**{q:.2f} s** ({q / v:.2f}x virsh)",
         spread(s["q35"], 2, " s"), verdict(q < v)],
        ["boot to READY: `vessel vm start`, microvm (default)", "faster than virsh", f"**{m:.2f} s** ({m / v:.2f}x virsh)",
         spread(s["microvm"], 2, " s"), verdict(m < v)],
        ["libvirtd RSS (one domain defined)", "", f"{r['libvirtd_rss_kib'] / 1024:.1f} MiB" if r.get("libvirtd_rss_kib") else "–",
         "one reading", ""],
    ]
    return table(rows)


def render_import(r):
    sec = r["seconds"]
    size = r["size_mib"]
    keys = [("`cp`", "cp"), ("`cp` + `sync FILE`", "cp_sync"),
            ("import: copy + SHA-256 + fsync (copy phase)", "import_copy_phase"),
            ("import: whole call (+ qemu-img validation)", "import")]
    out = [f"{size} MiB of random data, warm page cache, {r['runs']} interleaved runs.", ""]
    out += ["| | median s | spread s | MiB/s (median) | vs `cp` |", "| --- | --- | --- | --- | --- |"]
    cp = secs(sec["cp"])["median"]
    for label, k in keys:
        s = secs(sec[k])
        out.append(f"| {label} | {s['median']:.3f} | {spread(s, 3)} | {size / s['median']:.0f} | "
                   f"{cp / s['median'] * 100:.0f}% |")
    out += ["", f"Import vs cp: the import runs at **{r['ratio_import_vs_cp'] * 100:.0f}%** of `cp`'s speed and "
            f"**{r['ratio_import_vs_cp_sync'] * 100:.0f}%** of `cp` + `sync`'s (no numeric target was set; "
            "the import also hashes, fsyncs and validates)."]
    return out


def render_snapshot(r):
    di, dw, mm = r["disk_only_idle"], r["disk_only_guest_writing"], r["memory_128mib"]
    rows = [
        ["disk-only snapshot, guest idle: guest pause (`transaction`)", "–", f"**{f(med(di['guest_pause']), 2)} ms**",
         spread(di["guest_pause"], 2, " ms"), ""],
        ["disk-only snapshot, guest idle: whole create (with the node check)", "–", f"{f(med(di['create_total']), 2)} ms",
         spread(di["create_total"], 2, " ms"), ""],
        ["disk-only snapshot, guest writing: guest pause", "–", f"**{f(med(dw['guest_pause']), 2)} ms**",
         spread(dw["guest_pause"], 2, " ms"), ""],
        ["snapshot delete", "–", f"{f(med(di['delete']), 2)} ms", spread(di["delete"], 2, " ms"), ""],
        [f"snapshot with memory (128 MiB guest, {mm['vm_state_mib']} MiB state): guest pause (STOP→RESUME)", "–",
         f"**{f(med(mm['guest_pause']), 0)} ms**", spread(mm["guest_pause"], 0, " ms"), ""],
        ["snapshot with memory: whole `snapshot-save` job", "–", f"{f(med(mm['save_total']), 0)} ms",
         spread(mm["save_total"], 0, " ms"), ""],
    ]
    out = [f"{r.get('qemu', '')}; 1 GiB qcow2 data disk holding {r['setup']['data_mib']} MiB; the guest wrote "
           f"{dw.get('guest_wrote_mib', '?')} MiB during the busy runs. No numeric target was set.", ""]
    return out + table(rows)


def render_storage(r):
    out = []
    c = r.get("create")
    if c:
        lk = c["api_create_linked"]
        rows = [
            [f"VM create from an image (linked clone), API call", "<= 50 ms", f"**{f(lk['median_ms'], 2)} ms**",
             spread(lk, 2, " ms"), verdict(lk["median_ms"] <= 50)],
            ["the same, `vessel vm create` wall time", "", f"{f(c['cli_create_linked']['median_ms'], 2)} ms",
             spread(c["cli_create_linked"], 2, " ms"), ""],
            ["`vessel vm show` wall time (the CLI's floor)", "", f"{f(c['cli_vm_show_noop']['median_ms'], 2)} ms",
             spread(c["cli_vm_show_noop"], 2, " ms"), ""],
        ]
        if c.get("api_create_full_clone"):
            fc = c["api_create_full_clone"]
            rows.append(["full clone (a copy), API call, for comparison", "", f"{f(fc['median_ms'], 0)} ms",
                         spread(fc, 0, " ms"), ""])
        out += [f"Image: {c['image']['virtual_mib']} MiB virtual, {c['image']['allocated_mib']} MiB allocated; "
                f"a linked clone's root disk allocates {c['linked_clone_root']['allocated_kib']} KiB.", ""]
        out += table(rows)
    im = r.get("import")
    if im:
        sec, size = im["seconds"], im["size_mib"]
        cp = secs(sec["cp"])["median"]
        out += ["", f"Image import through the daemon vs `cp`, {size} MiB of random data, warm cache, {im['runs']} interleaved runs:", "",
                "| | median s | spread s | MiB/s (median) | vs `cp` |", "| --- | --- | --- | --- | --- |"]
        for label, k in [("`cp`", "cp"), ("`cp` + `sync FILE`", "cp_sync"),
                         ("import, API call (copy + SHA-256 + fsync + qemu-img check)", "import_api"),
                         ("`vessel image import` wall time (polls every 250 ms)", "import_cli")]:
            s = secs(sec[k])
            out.append(f"| {label} | {s['median']:.3f} | {spread(s, 3)} | {size / s['median']:.0f} | "
                       f"{cp / s['median'] * 100:.0f}% |")
        t = im.get("import_1mib_api")
        if t:
            out += ["", f"Import of a 1 MiB file (the fixed cost of an import operation), API call: median "
                    f"{f(t['median_ms'], 2)} ms ({spread(t, 2, ' ms')})."]
    return out


def render_density(r):
    w = r["idle_n_vms"]
    n = r["vms_started"]
    rows = [
        [f"idle test-guest VMs of {r.get('memory_mib_used', r['config']['memory_mib'])} MiB running (1 vCPU, TCG)", "–",
         f"**{n}** ({r['stop_reason']})", f"booted to READY: {r['vms_booted']}", ""],
        ["boot to READY of each VM, in turn", "–", f"{f(med(r['boot_s_summary']), 1)} s" if r.get("boot_s_summary") else "–",
         f"first {f(r.get('boot_s_first'), 1)} s, last {f(r.get('boot_s_last'), 1)} s; {spread(r.get('boot_s_summary'), 1, ' s')}", ""],
        ["host MemAvailable before → after", "–", f"{r['mem_available_before_mib'] / 1024:.1f} → "
         f"{r['mem_available_after_mib'] / 1024:.1f} GiB", f"{r['mem_available_used_per_vm_mib']} MiB per VM (shared machine: includes others' use)", ""],
        ["QEMU RSS per VM", "–", f"**{f(med(r['qemu_rss_mib']), 1)} MiB**", spread(r["qemu_rss_mib"], 1, " MiB"), ""],
        ["daemon RSS: 0 VMs → N VMs running", "–", f"{r['daemon_rss_0_vms_kib'] / 1024:.1f} → {r['daemon_rss_kib'] / 1024:.1f} MiB",
         "one reading each", ""],
        ["daemon RSS per running VM ((RSS with N − RSS with 0) / N)", "–", f"**{r['daemon_rss_per_vm_kib']:.0f} KiB**", "", ""],
        [f"daemon CPU, 0 VMs ({r['idle_0_vms']['seconds']:.0f} s window)", "–", f"{r['idle_0_vms']['daemon_pct_core']:.3f}% of a core", "one window", ""],
        [f"daemon CPU, {n} VMs idle, sampling every 5 s ({w['seconds']:.0f} s window)", "–",
         f"**{w['daemon_pct_core']:.3f}% of a core** ({w['daemon_pct_core_per_vm']:.4f}% per VM)", "one window", ""],
        [f"all QEMUs' CPU, {n} idle guests", "–", f"{w['qemu_pct_core_total']:.0f}% of a core ({w['qemu_pct_core_per_vm']:.1f}% per VM)",
         f"host busy: {w['host_busy_cores']:.2f} of {os.cpu_count()} cores", ""],
        ["guests still answering: `vessel vm list` running / typed `echo` answered", "all",
         f"{r['list_running']}/{r['list_total']} running, {r['console_answered']}/{r['list_total']} answered",
         f"answer in {spread(r.get('console_answer_s'), 2, ' s')}" if r.get("console_answer_s") else "",
         verdict(r["list_running"] == r["list_total"] == r["console_answered"] == n)],
    ]
    out = []
    p = r.get("probe")
    if p and not p["booted"]:
        out += [f"**The test guest does not boot with {p['memory_mib']} MiB**: no READY within {p['seconds']:.0f} s "
                f"(state `{p.get('state')}`: the 6.1 cloud kernel and the initramfs need more), so the VMs below "
                f"have {r.get('memory_mib_used')} MiB. In a check by hand through the daemon, 72 MiB booted 2 times of 3 (the "
                "third panicked: \"System is deadlocked on memory\"), 96 and 128 MiB 3 of 3.", ""]
    out += table(rows)
    s = r.get("sampling")
    if s:
        rows = [
            [f"daemon CPU, {s['vms']} VMs, sample_interval_secs = 3600 (sampling off)", "", f"{s['daemon_pct_core_off_median']:.3f}%",
             ", ".join(f"{x['daemon_pct_core']:.3f}" for x in s["windows_off"]) + "% (windows)", ""],
            [f"daemon CPU, {s['vms']} VMs, sample_interval_secs = 5", "", f"{s['daemon_pct_core_on_median']:.3f}%",
             ", ".join(f"{x['daemon_pct_core']:.3f}" for x in s["windows_on"]) + "% (windows)", ""],
            [f"sampling cost, {s['vms']} VMs (difference)", "", f"{s['cost_pct_core']:.3f}% of a core",
             f"tick resolution {s['tick_resolution_pct']}%", ""],
            ["sampling cost per VM", "", f"{s['cost_pct_core_per_vm']:.4f}% of a core", "", ""],
            ["sampling 50 VMs every 5 s (**extrapolated** from the per-VM cost)", "<= 1% of one core",
             f"**{s['cost_pct_core_50_vms_extrapolated']:.3f}%**", "", verdict(s["cost_pct_core_50_vms_extrapolated"] <= 1)],
        ]
        out += ["", f"Sampling cost with real VMs: the daemon restarted on the same data dir (VMs re-adopted), "
                f"{len(s['windows_on'])} windows of {s['windows_on'][0]['seconds']:.0f} s per setting, alternating. "
                f"{r.get('running_after_restarts', '?')} VMs still running after the restarts.", ""]
        out += table(rows, ("figure", "target", "measured (median of windows)", "windows", "met"))
    return out


def render_metrics(r):
    sa, re_, d = r["sample"], r["render"], r["daemon"]
    rows = [
        ["one VM sample (QEMU process with 4 threads: 9 /proc files), examples/sample", "<= 1 ms",
         f"**{f(med(sa['us_per_vm_sample']), 1)} µs**", spread(sa["us_per_vm_sample"], 1, " µs") + " (means of runs)",
         verdict(med(sa["us_per_vm_sample"]) <= 1000)],
        ["→ sampling 50 VMs every 5 s (sample cost × 50 / 5 s)", "<= 1% of one core",
         f"**{sa['pct_core_50_vms_every_5s']:.4f}%**", "", verdict(sa["pct_core_50_vms_every_5s"] <= 1)],
        ["one host sample (stat, meminfo, loadavg, diskstats, net/dev)", "", f"{f(med(sa['us_per_host_sample']), 1)} µs",
         spread(sa["us_per_host_sample"], 1, " µs"), ""],
        [f"render /metrics, {re_['vms']} synthetic VMs × 4 disks × 2 NICs ({re_['lines']} lines, {re_['bytes'] // 1024} KiB), examples/render",
         "<= 20 ms", f"**{f(med(re_['median_ms']), 3)} ms**", f"{f(re_['min_ms'], 3)}–{f(re_['max_ms'], 3)} ms over all renders",
         verdict(med(re_["median_ms"]) <= 20)],
        [f"`GET /metrics` from a daemon with {d['vms_defined']} VMs defined (stopped; {d['lines']} lines), Python over the unix socket, **includes HTTP**",
         "<= 20 ms", f"**{f(med(d['python_ms']), 2)} ms**", spread(d["python_ms"], 2, " ms"), verdict(med(d["python_ms"]) <= 20)],
        ["the same with `curl --unix-socket` (time_total, includes HTTP)", "<= 20 ms",
         f"{f(med(d['curl_ms']), 2)} ms" if d.get("curl_ms") else "–", spread(d.get("curl_ms"), 2, " ms"),
         verdict(med(d["curl_ms"]) <= 20) if d.get("curl_ms") else ""],
        ["the daemon's own `vessel_scrape_duration_seconds` (collecting the round)", "", f"{d['scrape_duration_ms']} ms", "one scrape", ""],
    ]
    return table(rows)


def render_network(r):
    tp, c = r["throughput"], r["config"]
    mbit = lambda s: f"{f(med(s), 0)} Mbit/s"
    rows = [
        ["VM to VM over the managed bridge (guest → guest)", "–", f"**{mbit(tp['vm_to_vm_bridge'])}**",
         spread(tp["vm_to_vm_bridge"], 0, " Mbit/s"), ""],
        ["VM to host over the managed bridge (guest → 10.50.0.1)", "–", f"**{mbit(tp['vm_to_host_bridge'])}**",
         spread(tp["vm_to_host_bridge"], 0, " Mbit/s"), ""],
        ["VM to host over QEMU user-mode NAT (guest → 10.0.2.2)", "–", f"**{mbit(tp['vm_to_host_user'])}**",
         spread(tp["vm_to_host_user"], 0, " Mbit/s"), ""],
        ["bridge / user-mode, VM to host (ratio of medians; spread: per-run ratios)", "–",
         f"**{tp['ratio_bridge_vs_user_vm_to_host']:.2f}x**", spread(tp.get("pair_ratio_bridge_vs_user"), 2, "x"), ""],
        ["VM to VM on the bridge / VM to host on user-mode (ratio of medians)", "–",
         f"**{tp['ratio_vm_to_vm_bridge_vs_user_vm_to_host']:.2f}x**", "", ""],
        ["cross-check, host clock (sink's first to last byte): VM to host, bridge / user-mode", "",
         f"{mbit(tp['host_clock_vm_to_host_bridge'])} / {mbit(tp['host_clock_vm_to_host_user'])}",
         f"{spread(tp['host_clock_vm_to_host_bridge'], 0)} / {spread(tp['host_clock_vm_to_host_user'], 0)}", ""],
    ]
    ctl = [
        ["`vessel network create` (managed, /24, DHCP server) wall time", "–",
         f"**{f(med(r['network_create_ms']), 1)} ms**", spread(r["network_create_ms"], 1, " ms"), ""],
        ["`vessel network delete` wall time", "", f"{f(med(r['network_delete_ms']), 1)} ms",
         spread(r["network_delete_ms"], 1, " ms"), ""],
        ["`vessel vm nic add` to a running q35 VM (hot-plug: tap + QMP device_add)", "–",
         f"**{f(med(r['nic_running']['add_ms']), 1)} ms**", spread(r["nic_running"]["add_ms"], 1, " ms"), ""],
        ["`vessel vm nic remove` from the running VM (device_del, guest acknowledges)", "",
         f"{f(med(r['nic_running']['remove_ms']), 1)} ms", spread(r["nic_running"]["remove_ms"], 1, " ms"), ""],
        ["`vessel vm nic add` to a stopped q35 VM (configuration only)", "–",
         f"**{f(med(r['nic_stopped']['add_ms']), 1)} ms**", spread(r["nic_stopped"]["add_ms"], 1, " ms"), ""],
        ["`vessel vm nic remove` from the stopped VM", "", f"{f(med(r['nic_stopped']['remove_ms']), 1)} ms",
         spread(r["nic_stopped"]["remove_ms"], 1, " ms"), ""],
        ["`vessel vm show` wall time (the CLI's floor)", "", f"{f(med(r['cli_vm_show_ms']), 1)} ms",
         spread(r["cli_vm_show_ms"], 1, " ms"), ""],
    ]
    out = [f"Same two guests ({c['vm']}, under TCG) for every path, {c['mib_per_transfer']} MiB per transfer, "
           f"{c['runs']} interleaved runs per path; Mbit/s from the sender guest's clock. No numeric target was set.", ""]
    out += table(rows)
    out += ["", "Control plane (wall time of the CLI process, including its own start and the HTTP round trip):", ""]
    out += table(ctl)
    return out


def render_security(r):
    g, a, lib = r["get_vms"], r["audited_requests"], r["append_library"]
    rows = [
        [f"`GET /v1/vms` ({g['vms']} VMs), unix socket, keep-alive, p50 / p99", "",
         f"{g['unix_ms']['p50']} / {g['unix_ms']['p99']} ms", f"n={g['requests']}", ""],
        ["the same over TLS on loopback with a bearer token (authenticated, authorized), p50 / p99", "",
         f"{g['tls_ms']['p50']} / {g['tls_ms']['p99']} ms", f"n={g['requests']}", ""],
        ["→ p99 overhead of TLS + token vs the unix socket", "<= 1 ms", f"**{g['p99_overhead_ms']} ms**",
         f"p50 overhead {g['p50_overhead_ms']} ms", verdict(g["p99_overhead_ms"] <= 1)],
        [f"audited requests through the daemon ({a['writers']} writers, refused creates: HTTP, middleware, handler, "
         f"append with the chain and a durable commit before each answer)", "", f"**{a['records_per_s']} records/s**",
         f"{a['records_added']} records in {a['seconds']} s; chain intact: {a['chain_intact']}", ""],
    ]
    if lib.get("records_per_s"):
        rows.append(["the audit log alone (examples/append_bench: 20,000 records, 32 tasks, SqliteStore on disk)",
                     ">= 5,000 records/s", f"**{lib['records_per_s']:.0f} records/s**", "one run",
                     verdict(lib["records_per_s"] >= 5000)])
    return table(rows)


def render_scheduler(r):
    c = r["config"]
    rows = []
    for x in r["results"]:
        rate, where = x["placements_per_s"], f"{x['strategy']}, {x['hosts']:,} hosts, {x['scenario']}"
        rate_target = ">= 5,000/s" if x["hosts"] >= 10000 else ""
        rows.append([f"placements/s (place + apply), {where}", rate_target,
                     f"**{rate['median']:,.0f}/s**" if rate_target else f"{rate['median']:,.0f}/s",
                     f"{rate['min']:,.0f}–{rate['max']:,.0f}/s, n={rate['runs']}",
                     verdict(rate["median"] >= 5000) if rate_target else ""])
        packed = x["strategy"] == "pack" and x["scenario"] == "mixed"
        used = (f"{x['hosts_used']:,} hosts used, bound {x['lower_bound']:,} ({x['over_bound_pct']:+.2f}%)"
                + (f", {x['refused']:,} refused" if x["refused"] else ""))
        rows.append([f"hosts used vs lower bound, {where}", "<= 3% over" if packed else "",
                     f"**{used}**" if packed else used,
                     f"dominant load of the hosts in use {x['host_load_pct']['min']}–{x['host_load_pct']['max']}%",
                     verdict(x["over_bound_pct"] <= 3.0 and x["refused"] == 0) if packed else ""])
    out = [f"{c['vms']:,} VMs of mixed sizes (seed {c['seed']}: {c['vcpu_demand']:,} vCPUs, "
           f"{c['memory_demand_gib']:,} GiB in all) placed one at a time on fresh clusters of identical hosts "
           f"({c['host_cpus']} CPUs × {c['cpu_ratio']} = {int(c['host_cpus'] * c['cpu_ratio'])} vCPUs, "
           f"{c['host_memory_gib']} GiB × {c['memory_ratio']}); {c['runs']} runs per line, release build, "
           f"one thread. Lower bound: the larger of total vCPU demand / vCPUs per host and total memory / "
           f"memory per host, rounded up.", ""]
    return out + table(rows)


RENDER = {"run": render_run, "libvirt": render_libvirt, "import": render_import, "snapshot": render_snapshot,
          "storage": render_storage, "density": render_density, "metrics": render_metrics,
          "network": render_network, "security": render_security, "scheduler": render_scheduler}


def notes(name):
    path = os.path.join(HERE, "notes", f"{name}.md")
    if os.path.exists(path):
        with open(path) as fh:
            return fh.read().strip().splitlines()
    return []


def render(doc, quick_any):
    m = doc["machine"]
    out = ["# Benchmarks", "",
           "Generated by `python3 bench/all.py` (do not edit by hand: the notes live in `bench/notes/*.md`, "
           "the raw results in `bench/results.json`).", ""]
    if quick_any:
        out += ["> **Some sections below come from `--quick` runs (few runs, small sizes): a smoke check, "
                "not figures to quote.**", ""]
    out += ["| machine | |", "| --- | --- |",
            f"| CPU | {m['cpu']} |", f"| cores | {m['cores']} |", f"| RAM | {m['ram_gib']} GiB |",
            f"| kernel | {m['kernel']} |", f"| Debian | {m['debian']} |", f"| QEMU | {m['qemu']} |",
            f"| accelerator | {m['accelerator']} |", f"| date | {m['date']} |",
            (f"| git commit | {m['commit']} (HEAD when the suite ran; the binaries: see build) |" if doc.get("build_note") else
             f"| git commit | {m['commit']}{' (working tree had uncommitted changes in crates/)' if m.get('tree_dirty') else ''} |")]
    if doc.get("build_note"):
        out.append(f"| build | {doc['build_note']} |")
    total = sum(e.get("seconds", 0) for e in doc["benchmarks"].values())
    out += [f"| suite wall time | {doc.get('wall_s', total) // 60} min {doc.get('wall_s', total) % 60} s "
            f"(benchmarks themselves: {total // 60} min {total % 60} s) |", ""]
    out += ["How to reproduce:", "", "```sh",
            "cargo build --release -p vessel",
            "cargo build --release -p vessel-metrics --examples",
            "cargo build --release -p vessel-storage --example import",
            "cargo build --release -p vessel-audit --example append_bench",
            "cargo build --release -p vessel-scheduler --example place_bench",
            "python3 bench/all.py                 # everything (about the time above); --quick for a smoke check",
            "python3 bench/all.py --only density,metrics   # re-run some, keep the others' results",
            "```", "", "Notes that apply to every section:", ""]
    out += notes("general") + [""]
    for name in ORDER:
        e = doc["benchmarks"].get(name)
        out += [f"## {TITLES[name]}", ""]
        if not e:
            out += ["Not run yet.", ""]
            continue
        meta = [f"measured {e['date']}"]
        if e.get("seconds") is not None:
            meta.append(f"took {e['seconds'] // 60} min {e['seconds'] % 60} s")
        if e.get("quick"):
            meta.append("**--quick**")
        if e.get("command"):
            meta.append(f"`{e['command']}`")
        if e.get("libvirtd"):
            meta.append(f"libvirtd {e['libvirtd']}")
        out += ["*" + "; ".join(meta) + "*", ""]
        if e["status"] == "ok":
            try:
                out += RENDER[name](e["result"])
            except Exception as ex:  # noqa: BLE001
                out += [f"(could not render the results: {ex!r}; see bench/results.json)"]
        elif e["status"] == "ok-text":
            out += [e.get("note", ""), "", "```", e.get("text", "").strip(), "```"]
        else:
            out += [f"**{e['status']}**: {e.get('note', '')}".replace("\n", " ")]
        n = notes(name)
        if n:
            out += ["", "Notes:", ""] + n
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="few runs, small sizes: a smoke check")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of: {','.join(ORDER)}")
    ap.add_argument("--vessel", default=common.default_vessel())
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    ap.add_argument("--results", default=os.path.join(HERE, "results.json"))
    ap.add_argument("--no-wait-quiet", action="store_true", help="do not wait for others' benchmarks")
    ap.add_argument("--build-note", default=None, help="a line for the header about the binary")
    ap.add_argument("--render-only", action="store_true", help="rewrite the document from --results")
    a = ap.parse_args()
    common.raise_on_sigterm()
    a.vessel = os.path.abspath(a.vessel)
    only = ORDER if not a.only else [x.strip() for x in a.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in ORDER]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; known: {', '.join(ORDER)}")
    if not os.path.exists(a.vessel) and any(n not in NO_DAEMON for n in only):
        raise SystemExit(f"{a.vessel} not found; build it with `cargo build --release -p vessel`")

    doc = {"benchmarks": {}}
    if os.path.exists(a.results) and (a.only or a.render_only):
        with open(a.results) as fh:
            doc = json.load(fh)
    if not a.render_only:
        t0 = time.time()
        doc["machine"] = machine(a.vessel, doc.get("machine"))
        if a.build_note:
            doc["build_note"] = a.build_note
        for name in only:
            doc["benchmarks"][name] = run_one(name, a)
            log(f"all: {name}: {doc['benchmarks'][name]['status']} in {doc['benchmarks'][name].get('seconds', 0)} s")
            with open(a.results, "w") as fh:
                json.dump(doc, fh, indent=1)
        doc["wall_s"] = round(time.time() - t0) if not a.only else doc.get("wall_s", round(time.time() - t0))
        with open(a.results, "w") as fh:
            json.dump(doc, fh, indent=1)
    quick_any = any(e.get("quick") for e in doc["benchmarks"].values())
    with open(a.out, "w") as fh:
        fh.write(render(doc, quick_any))
    log(f"all: wrote {os.path.relpath(a.out, ROOT)} and {os.path.relpath(a.results, ROOT)}")
    bad = [n for n in only if doc["benchmarks"].get(n, {}).get("status") == "failed"]
    if bad:
        log(f"all: failed: {', '.join(bad)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
