#!/usr/bin/env python3
"""Vessel benchmarks (issue 2): start overhead, boot time vs raw QEMU, daemon memory, list latency.

Usage: python3 bench/run.py [--vessel target/release/vessel] [--guest-dir DIR] [--runs N]
                            [--list-vms N] [--list-requests N] [--json]

Everything runs on this machine in one go, side by side, with the same kernel, initramfs, machine
type and QEMU. Prints JSON (medians, plus each figure's runs summarized as median/p90/min/max in
the `*_ms` summaries); --json is accepted for uniformity with the other scripts (bench/all.py).
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time

READY = b"VESSEL-GUEST-READY"


def host_tsc_khz():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    return None


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("vessel")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def api(sock, method, path, body=None):
    conn = UnixHTTP(sock)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    if resp.status >= 300:
        raise RuntimeError(f"{method} {path}: {resp.status} {payload[:300]!r}")
    return json.loads(payload) if payload else None


class Daemon:
    def __init__(self, vessel):
        self.vessel = vessel
        self.tmp = tempfile.mkdtemp(prefix="vessel-bench-")
        self.sock = os.path.join(self.tmp, "vessel.sock")
        self.log = open(os.path.join(self.tmp, "daemon.log"), "w")
        self.proc = subprocess.Popen(
            [vessel, "--socket", self.sock, "daemon", "--data-dir", os.path.join(self.tmp, "data")],
            stdout=subprocess.DEVNULL, stderr=self.log, env={**os.environ, "VESSEL_LOG": "warn"})
        deadline = time.time() + 30
        while True:
            try:
                api(self.sock, "GET", "/v1/host")
                break
            except (FileNotFoundError, ConnectionRefusedError, RuntimeError):
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("daemon did not start")
                time.sleep(0.01)

    def rss_kib(self):
        return self.status_kib("VmRSS:")

    def status_kib(self, field):
        """A memory figure of /proc/PID/status (VmRSS:, RssAnon:, RssFile:), in KiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
        return 0

    def cli(self, *args):
        return subprocess.run([self.vessel, "--socket", self.sock, *args], check=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def close(self):
        try:
            for vm in api(self.sock, "GET", "/v1/vms"):
                if vm.get("pid"):
                    os.kill(vm["pid"], signal.SIGKILL)
        except Exception:
            pass
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def vm_body(name, guest, cmdline="quiet"):
    return {"name": name, "cpus": 1, "memory_mib": 256,
            "kernel": f"{guest}/vmlinuz", "initrd": f"{guest}/initramfs.img", "cmdline": cmdline}


def raw_qemu_args(guest, extra_append):
    append = "console=ttyS0 reboot=t"
    khz = host_tsc_khz()
    if khz:
        append += f" tsc_early_khz={khz}"
    return ["qemu-system-x86_64", "-no-user-config", "-nodefaults", "-display", "none",
            "-machine", "microvm,acpi=on", "-accel", "tcg", "-smp", "1", "-m", "256M", "-device", "pvpanic",
            "-kernel", f"{guest}/vmlinuz", "-initrd", f"{guest}/initramfs.img",
            "-append", f"{append} {extra_append}"]


def raw_launch_to_qmp_ready(guest):
    """exec of QEMU (vCPUs stopped, like Vessel's launch) to a finished QMP handshake."""
    tmp = tempfile.mkdtemp(prefix="vessel-bench-raw-")
    qmp = os.path.join(tmp, "qmp.sock")
    t0 = time.perf_counter()
    proc = subprocess.Popen(raw_qemu_args(guest, "quiet") + ["-S", "-serial", "null", "-qmp", f"unix:{qmp},server=on,wait=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    while True:
        try:
            s.connect(qmp)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.0005)
    f = s.makefile("rwb")
    f.readline()  # greeting
    f.write(b'{"execute":"qmp_capabilities"}\n')
    f.flush()
    f.readline()
    elapsed = time.perf_counter() - t0
    proc.kill()
    proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)
    return elapsed


def raw_boot_to_ready(guest):
    t0 = time.perf_counter()
    proc = subprocess.Popen(raw_qemu_args(guest, "quiet") + ["-serial", "stdio"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    buf = b""
    while READY not in buf:
        chunk = proc.stdout.read1(65536)
        if not chunk:
            raise RuntimeError("raw QEMU exited before READY")
        buf += chunk
    elapsed = time.perf_counter() - t0
    proc.kill()
    proc.wait()
    return elapsed


def api_log_count(d, name):
    """READY lines already in the VM's console log (earlier boots)."""
    conn = UnixHTTP(d.sock)
    conn.request("GET", f"/v1/vms/{name}/console/log")
    data = conn.getresponse().read()
    conn.close()
    return data.count(READY)


def median_ms(xs):
    return statistics.median(xs) * 1000


def p99_ms(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1000


def spread_ms(xs):
    """median, p90, min, max and count of a list of seconds, in milliseconds."""
    s = sorted(x * 1000 for x in xs)
    return {"median": round(statistics.median(s), 3), "p90": round(s[min(len(s) - 1, int(len(s) * 0.9))], 3),
            "min": round(s[0], 3), "max": round(s[-1], 3), "n": len(s)}


def bench_start_overhead(d, guest, runs):
    api(d.sock, "POST", "/v1/vms", vm_body("start-bench", guest))
    vessel, raw = [], []
    for _ in range(runs):
        raw.append(raw_launch_to_qmp_ready(guest))
        t0 = time.perf_counter()
        d.cli("vm", "start", "start-bench")
        vessel.append(time.perf_counter() - t0)
        d.cli("vm", "kill", "start-bench")
    overhead = [v - r for v, r in zip(vessel, raw)]
    return {"raw_launch_to_qmp_ms": median_ms(raw), "vessel_start_ms": median_ms(vessel),
            "overhead_median_ms": median_ms(overhead),
            "raw_ms": spread_ms(raw), "vessel_ms": spread_ms(vessel), "overhead_ms": spread_ms(overhead)}


def vessel_boot_once(d, name):
    """`vessel vm start NAME` to a new READY line on its console (followed through the API)."""
    before = api_log_count(d, name)
    t0 = time.perf_counter()
    d.cli("vm", "start", name)
    conn = UnixHTTP(d.sock)
    conn.request("GET", f"/v1/vms/{name}/console/log?follow=true")
    resp = conn.getresponse()
    buf = b""
    while buf.count(READY) <= before:
        chunk = resp.read1(65536)
        if not chunk:
            raise RuntimeError("console ended")
        buf += chunk
    elapsed = time.perf_counter() - t0
    conn.close()
    d.cli("vm", "kill", name)
    return elapsed


def bench_boot(d, guest, runs):
    api(d.sock, "POST", "/v1/vms", vm_body("boot-bench", guest))
    vessel, raw = [], []
    for _ in range(runs):
        raw.append(raw_boot_to_ready(guest))
        vessel.append(vessel_boot_once(d, "boot-bench"))
    return {"raw_boot_ms": median_ms(raw), "vessel_boot_ms": median_ms(vessel),
            "ratio": statistics.median(vessel) / statistics.median(raw),
            "raw_ms": spread_ms(raw), "vessel_ms": spread_ms(vessel),
            "pair_ratio": {k: round(v / 1000, 3) for k, v in
                           spread_ms([v / r for v, r in zip(vessel, raw)]).items() if k != "n"}}


def bench_memory(vessel, guest):
    d = Daemon(vessel)
    try:
        time.sleep(1.0)  # let start-up allocations settle
        idle = d.rss_kib()
        idle_anon = d.status_kib("RssAnon:")
        for i in range(50):
            api(d.sock, "POST", "/v1/vms", vm_body(f"mem{i}", guest))
        time.sleep(1.0)
        fifty = d.rss_kib()
        fifty_anon = d.status_kib("RssAnon:")
        binary = os.path.getsize(os.path.realpath(vessel))
        return {"idle_rss_mib": idle / 1024, "fifty_vms_rss_mib": fifty / 1024,
                "idle_anon_mib": idle_anon / 1024, "fifty_vms_anon_mib": fifty_anon / 1024,
                "binary_mib": binary / 1024 / 1024}
    finally:
        d.close()


def bench_list(vessel, guest, requests=500, vms=1000):
    d = Daemon(vessel)
    try:
        for i in range(vms):
            api(d.sock, "POST", "/v1/vms?wait=false", vm_body(f"list{i:04}", guest))
        assert len(api(d.sock, "GET", "/v1/vms")) == vms
        # Measure a quiet daemon: wait until the create operations have all been carried out.
        deadline = time.time() + 120
        while any(op["status"] in ("pending", "running") for op in api(d.sock, "GET", "/v1/operations")):
            if time.time() > deadline:
                raise RuntimeError("create operations did not finish")
            time.sleep(0.2)
        lat = []
        for _ in range(requests):
            conn = UnixHTTP(d.sock)
            t0 = time.perf_counter()
            conn.request("GET", "/v1/vms")
            resp = conn.getresponse()
            resp.read()
            lat.append(time.perf_counter() - t0)
            conn.close()
        return {"p50_ms": median_ms(lat), "p99_ms": p99_ms(lat), "rss_1000_vms_mib": d.rss_kib() / 1024,
                "vms": vms, "requests": requests, "max_ms": max(lat) * 1000}
    finally:
        d.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vessel", default="target/release/vessel")
    ap.add_argument("--guest-dir", default=os.environ.get("VESSEL_TEST_GUEST_DIR", os.path.expanduser("~/.cache/vessel/test-guest")))
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--list-vms", type=int, default=1000)
    ap.add_argument("--list-requests", type=int, default=500)
    ap.add_argument("--json", action="store_true", help="print only JSON (the default output already is)")
    a = ap.parse_args()
    vessel = os.path.abspath(a.vessel)
    results = {"runs": a.runs}
    results["list"] = bench_list(vessel, a.guest_dir, a.list_requests, a.list_vms)
    d = Daemon(vessel)
    try:
        results["start"] = bench_start_overhead(d, a.guest_dir, a.runs)
        results["boot"] = bench_boot(d, a.guest_dir, a.runs)
    finally:
        d.close()
    results["memory"] = bench_memory(vessel, a.guest_dir)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
