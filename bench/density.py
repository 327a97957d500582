#!/usr/bin/env python3
"""Density: how many idle test-guest VMs of 64 MiB one host runs, the daemon's own CPU and memory
per VM while they run, and what the daemon's periodic sampling of them costs.

Usage: python3 bench/density.py [--vessel PATH] [--guest-dir DIR] [--max N] [--floor-mib MIB]
                                [--boot-timeout S] [--window S] [--pairs N] [--no-wait] [--json]

A release daemon runs on a temp data dir (sample_interval_secs = 5, the default). VMs of the test
guest (1 vCPU, 64 MiB, kernel + busybox initramfs, cmdline "quiet", no disk, no NIC) are created
and started one by one; each start waits for VESSEL-GUEST-READY on the VM's console (followed
through the API), or with --no-wait only for the state `running`. It stops at --max VMs, when the
host's MemAvailable falls below --floor-mib, or when one boot takes longer than --boot-timeout.

Then, with N VMs idle:
- memory: host MemAvailable before/after, each QEMU's RSS, the daemon's RSS (total, and its growth
  over the 0-VM daemon divided by N);
- CPU over a --window seconds window: the daemon's utime+stime delta from /proc/PID/stat (% of one
  core), and the QEMUs' (under TCG an idle guest still costs host CPU);
- answers: every VM is `running` in `vessel vm list`, and each guest's shell answers a line typed
  on its console (attach over the API, `echo ANSWER-$((6*7))`, wait for ANSWER-42);
- sampling cost: the daemon is restarted on the same data dir (QEMU survives and is re-adopted)
  with sample_interval_secs = 3600 (sampling effectively off) and = 5, alternately, --pairs times;
  the difference of the daemon's CPU between the two is what sampling N VMs costs, scaled per VM
  and extrapolated to 50 VMs.

Every VM is killed and deleted at the end, also on an error or Ctrl-C. Prints JSON with --json,
else a short report.
"""
import argparse
import json
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import READY, api  # noqa: E402


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def wait_ready(sock, name, timeout):
    """Follows the VM's console log until READY; returns True, or False after `timeout` s."""
    conn = common.UnixHTTP(sock, timeout=timeout)
    deadline = time.time() + timeout
    try:
        conn.request("GET", f"/v1/vms/{name}/console/log?follow=true")
        resp = conn.getresponse()
        buf = b""
        while READY not in buf:
            conn.sock.settimeout(max(0.1, deadline - time.time()))
            try:
                chunk = resp.read1(65536)
            except socket.timeout:
                return False
            if not chunk:
                return False
            buf = buf[-64:] + chunk
        return True
    finally:
        conn.close()


def wait_running(sock, name, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        vm = api(sock, "GET", f"/v1/vms/{name}")
        if vm["state"] == "running":
            return True
        time.sleep(0.2)
    return False


def console_answers(sock, name, timeout=60):
    """Attaches to the VM's console and types a line; seconds until the guest's shell answered,
    or None."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock)
        s.sendall((f"GET /v1/vms/{name}/console HTTP/1.1\r\nHost: vessel\r\n"
                   "Connection: Upgrade\r\nUpgrade: vessel-console\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                return None
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            return None
        buf = head.split(b"\r\n\r\n", 1)[1]
        t0 = time.perf_counter()
        s.sendall(b"echo ANSWER-$((6*7))\n")
        deadline = time.time() + timeout
        while b"ANSWER-42" not in buf:
            if time.time() > deadline:
                return None
            chunk = s.recv(65536)
            if not chunk:
                return None
            buf += chunk
        return time.perf_counter() - t0
    except (OSError, socket.timeout):
        return None
    finally:
        s.close()


def cpu_window(d, qemu_pids, seconds):
    """% of one core used by the daemon and by all QEMUs over `seconds`."""
    def qemu_cpu():
        total = 0.0
        for pid in qemu_pids:
            try:
                total += common.proc_cpu_seconds(pid)
            except OSError:
                pass
        return total

    with open("/proc/stat") as f:
        host0 = [int(x) for x in f.readline().split()[1:]]
    d0, q0, t0 = d.cpu_seconds(), qemu_cpu(), time.perf_counter()
    time.sleep(seconds)
    d1, q1, t1 = d.cpu_seconds(), qemu_cpu(), time.perf_counter()
    with open("/proc/stat") as f:
        host1 = [int(x) for x in f.readline().split()[1:]]
    wall = t1 - t0
    delta = [b - a for a, b in zip(host0, host1)]
    idle = delta[3] + delta[4]
    busy_cores = (sum(delta) - idle) / common.CLK_TCK / wall
    return {"seconds": round(wall, 2), "daemon_cpu_s": round(d1 - d0, 3),
            "daemon_pct_core": round((d1 - d0) / wall * 100, 3),
            "qemu_pct_core_total": round((q1 - q0) / wall * 100, 1),
            "host_busy_cores": round(busy_cores, 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vessel", default=common.default_vessel())
    ap.add_argument("--guest-dir", default=common.default_guest())
    ap.add_argument("--max", type=int, default=40, help="VMs to start at most")
    ap.add_argument("--memory-mib", type=int, default=64)
    ap.add_argument("--fallback-mib", type=int, default=96,
                    help="memory to use when a first VM of --memory-mib does not boot (0: none)")
    ap.add_argument("--probe-timeout", type=float, default=60,
                    help="seconds the first VM of --memory-mib gets to print READY")
    ap.add_argument("--floor-mib", type=int, default=2048, help="stop when MemAvailable is below")
    ap.add_argument("--boot-timeout", type=float, default=120)
    ap.add_argument("--settle", type=float, default=10, help="seconds before each CPU window")
    ap.add_argument("--window", type=float, default=60, help="seconds of each CPU window")
    ap.add_argument("--pairs", type=int, default=2,
                    help="sampling off/on window pairs (0: no sampling-cost measurement)")
    ap.add_argument("--no-wait", action="store_true", help="wait for `running`, not READY")
    ap.add_argument("--json", action="store_true", help="print only JSON")
    a = ap.parse_args()
    common.raise_on_sigterm()
    vessel = os.path.abspath(a.vessel)
    if not os.path.exists(vessel):
        raise SystemExit(f"{vessel} not found; build it with `cargo build --release -p vessel`")

    r = {"config": {"max": a.max, "memory_mib": a.memory_mib, "floor_mib": a.floor_mib,
                    "boot_timeout_s": a.boot_timeout, "window_s": a.window, "pairs": a.pairs,
                    "wait_for": "running" if a.no_wait else "READY"}}
    d = common.Daemon(vessel, sample_interval_secs=5)
    try:
        time.sleep(1.0)
        r["daemon_rss_0_vms_kib"] = d.rss_kib()
        r["mem_available_before_mib"] = round(common.mem_available_mib())
        r["idle_0_vms"] = cpu_window(d, [], min(a.window, 20))

        memory = a.memory_mib
        if not a.no_wait:
            # Does the test guest boot at all with --memory-mib? (The 6.1 cloud kernel and the
            # initramfs need a bit more than 64 MiB.)
            api(d.sock, "POST", "/v1/vms", common.test_guest_vm("probe", a.guest_dir, memory))
            t0 = time.perf_counter()
            api(d.sock, "POST", "/v1/vms/probe/start")
            booted = wait_ready(d.sock, "probe", a.probe_timeout)
            r["probe"] = {"memory_mib": memory, "booted": booted,
                          "seconds": round(time.perf_counter() - t0, 2)}
            if not booted:
                tail = api(d.sock, "GET", "/v1/vms/probe/console/log")
                r["probe"]["console_tail"] = tail[-400:].decode(errors="replace") if isinstance(tail, bytes) else str(tail)[-400:]
                r["probe"]["state"] = api(d.sock, "GET", "/v1/vms/probe")["state"]
                log(f"density: a {memory} MiB guest did not print READY in {a.probe_timeout:.0f} s")
                if a.fallback_mib:
                    memory = a.fallback_mib
            api(d.sock, "DELETE", "/v1/vms/probe?force=true")
            time.sleep(1)
        r["memory_mib_used"] = memory
        boots, stop_reason = [], f"reached --max {a.max}"
        started = 0
        for i in range(a.max):
            avail = common.mem_available_mib()
            if avail < a.floor_mib:
                stop_reason = f"MemAvailable {avail:.0f} MiB below the {a.floor_mib} MiB floor"
                break
            name = f"dens{i:03}"
            api(d.sock, "POST", "/v1/vms", common.test_guest_vm(name, a.guest_dir, memory))
            t0 = time.perf_counter()
            api(d.sock, "POST", f"/v1/vms/{name}/start?wait=false" if a.no_wait else f"/v1/vms/{name}/start")
            ok = (wait_running(d.sock, name, a.boot_timeout) if a.no_wait
                  else wait_ready(d.sock, name, a.boot_timeout))
            elapsed = time.perf_counter() - t0
            started += 1
            if not ok:
                stop_reason = f"VM {i + 1} did not boot within {a.boot_timeout:.0f} s"
                break
            boots.append(elapsed)
            log(f"density: {name} up in {elapsed:.1f} s (MemAvailable {avail:.0f} MiB)")
        r["stop_reason"] = stop_reason
        r["vms_started"] = started
        r["vms_booted"] = len(boots)
        r["boot_s"] = [round(b, 2) for b in boots]
        r["boot_s_summary"] = common.summary(boots, 2)
        if boots:
            r["boot_s_first"] = round(boots[0], 2)
            r["boot_s_last"] = round(boots[-1], 2)
        n = started

        time.sleep(a.settle)
        vms = api(d.sock, "GET", "/v1/vms")
        pids = [vm["pid"] for vm in vms if vm.get("pid")]
        rss = [common.proc_rss_kib(p) / 1024 for p in pids]
        r["qemu_rss_mib"] = common.summary(rss, 1)
        r["mem_available_after_mib"] = round(common.mem_available_mib())
        r["mem_available_used_per_vm_mib"] = round(
            (r["mem_available_before_mib"] - r["mem_available_after_mib"]) / max(n, 1), 1)
        r["daemon_rss_kib"] = d.rss_kib()
        r["daemon_rss_per_vm_kib"] = round((r["daemon_rss_kib"] - r["daemon_rss_0_vms_kib"]) / max(n, 1), 1)
        log(f"density: {n} VMs; measuring {a.window:.0f} s of idle")
        r["idle_n_vms"] = cpu_window(d, pids, a.window)
        r["idle_n_vms"]["daemon_pct_core_per_vm"] = round(r["idle_n_vms"]["daemon_pct_core"] / max(n, 1), 4)
        r["idle_n_vms"]["qemu_pct_core_per_vm"] = round(r["idle_n_vms"]["qemu_pct_core_total"] / max(n, 1), 2)

        listed = json.loads(d.cli("--output", "json", "vm", "list").stdout)
        r["list_running"] = sum(1 for vm in listed if vm["state"] == "running")
        r["list_total"] = len(listed)
        answers = [console_answers(d.sock, vm["spec"]["name"]) for vm in listed]
        ok = [x for x in answers if x is not None]
        r["console_answered"] = len(ok)
        r["console_answer_s"] = common.summary(ok, 3)

        if a.pairs > 0 and n > 0:
            off, on = [], []
            for k in range(a.pairs):
                for interval, into in ((3600, off), (5, on)):
                    log(f"density: sampling window {k + 1}/{a.pairs}, sample_interval_secs={interval}")
                    d.restart(interval)
                    time.sleep(a.settle)
                    into.append(cpu_window(d, pids, a.window))
            off_pct = statistics.median(w["daemon_pct_core"] for w in off)
            on_pct = statistics.median(w["daemon_pct_core"] for w in on)
            cost = on_pct - off_pct
            r["sampling"] = {
                "vms": n, "windows_off": off, "windows_on": on,
                "daemon_pct_core_off_median": round(off_pct, 3),
                "daemon_pct_core_on_median": round(on_pct, 3),
                "cost_pct_core": round(cost, 3),
                "cost_pct_core_per_vm": round(cost / n, 4),
                "cost_pct_core_50_vms_extrapolated": round(cost / n * 50, 3),
                "tick_resolution_pct": round(100 / common.CLK_TCK / a.window, 3),
            }
            listed = api(d.sock, "GET", "/v1/vms")
            r["running_after_restarts"] = sum(1 for vm in listed if vm["state"] == "running")
    except KeyboardInterrupt:
        log("density: interrupted; cleaning up")
        raise
    finally:
        t0 = time.perf_counter()
        d.close()
        r["cleanup_s"] = round(time.perf_counter() - t0, 1)
    if a.json:
        print(json.dumps(r, indent=2))
        return
    print(json.dumps(r, indent=2))
    w = r["idle_n_vms"]
    print(f"\n{r['vms_started']} VMs of {r['memory_mib_used']} MiB ({r['stop_reason']}); "
          f"QEMU RSS median {r['qemu_rss_mib']['median']} MiB; daemon RSS "
          f"{r['daemon_rss_kib'] / 1024:.1f} MiB ({r['daemon_rss_per_vm_kib']} KiB per VM); daemon CPU "
          f"{w['daemon_pct_core']}% of a core over {w['seconds']} s; QEMUs {w['qemu_pct_core_total']}%")


if __name__ == "__main__":
    main()
