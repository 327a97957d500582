#!/usr/bin/env python3
"""Metrics: the cost of sampling a VM and of rendering /metrics.

Usage: python3 bench/metrics.py [--vessel PATH] [--examples DIR] [--vms 200] [--requests 50]
                                [--repeat 3] [--json]

Needs the release binary and the vessel-metrics examples:
    cargo build --release -p vessel && cargo build --release -p vessel-metrics --examples
(--examples defaults to $CARGO_TARGET_DIR/release/examples, else target/release/examples).

(a) `examples/sample`: reading one process with 4 threads from /proc as the daemon samples a QEMU
    (stat + 4 x (task stat + schedstat)); µs per VM sample, and that x 50 VMs / 5 s as % of one core
    (target: <= 1%). The example runs --repeat times; the median of its means is reported.
(b) `examples/render`: rendering /metrics for 200 synthetic VMs with 4 disks and 2 NICs each
    (target: <= 20 ms), --repeat invocations of 100 renders each.
(c) a real daemon with --vms VMs DEFINED (stopped: created through the API, never booted; so no
    disks or NIC counters, fewer series than (b)): `GET /metrics` over the unix socket, --requests
    times, new connection each, timed in Python from request to whole body, and with
    `curl --unix-socket` (its time_total). Both include HTTP; the daemon's own figure for
    collecting the round (vessel_scrape_duration_seconds) is reported too.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import api  # noqa: E402


def default_examples():
    return os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "examples")


def run_sample(examples, repeat):
    means, host = [], []
    for _ in range(repeat):
        out = subprocess.run([os.path.join(examples, "sample"), "2000"], check=True,
                             capture_output=True, text=True).stdout
        means.append(float(re.search(r"mean ([\d.]+) µs over \d+ runs; rss", out).group(1)))
        host.append(float(re.search(r"host sample .*: mean ([\d.]+) µs", out).group(1)))
    med = common.summary(means, 2)
    return {"us_per_vm_sample": med, "us_per_host_sample": common.summary(host, 1),
            "pct_core_50_vms_every_5s": round(med["median"] * 50 / 5e6 * 100, 4),
            "output": out.strip()}


def run_render(examples, repeat, vms=200):
    medians, mins, maxs, text = [], [], [], ""
    for _ in range(repeat):
        text = subprocess.run([os.path.join(examples, "render"), str(vms), "100"], check=True,
                              capture_output=True, text=True).stdout
        m = re.search(r"(\d+) bytes, (\d+) lines; median ([\d.]+) ms, min ([\d.]+) ms, max ([\d.]+) ms", text)
        medians.append(float(m.group(3)))
        mins.append(float(m.group(4)))
        maxs.append(float(m.group(5)))
        size, lines = int(m.group(1)), int(m.group(2))
    return {"vms": vms, "bytes": size, "lines": lines, "median_ms": common.summary(medians, 3),
            "min_ms": min(mins), "max_ms": max(maxs), "output": text.strip()}


def run_daemon(vessel, guest, vms, requests):
    d = common.Daemon(vessel)
    try:
        for i in range(vms):
            api(d.sock, "POST", "/v1/vms?wait=false",
                common.test_guest_vm(f"m{i:03}", guest, 64))
        deadline = time.time() + 300
        while any(op["status"] in ("pending", "running") for op in api(d.sock, "GET", "/v1/operations")):
            if time.time() > deadline:
                raise RuntimeError("create operations did not finish")
            time.sleep(0.2)
        time.sleep(6)  # at least one sampling round (every 5 s) with all of them
        body = api(d.sock, "GET", "/metrics")
        assert body.count(b"vessel_vm_memory_configured_bytes{") == vms, body[:300]
        py = []
        for _ in range(requests):
            conn = common.UnixHTTP(d.sock)
            conn.connect()
            t0 = time.perf_counter()
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            resp.read()
            py.append(time.perf_counter() - t0)
            conn.close()
        curl = []
        if shutil.which("curl"):
            for _ in range(requests):
                out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}",
                                      "--unix-socket", d.sock, "http://x/metrics"],
                                     check=True, capture_output=True, text=True).stdout
                curl.append(float(out))
        body = api(d.sock, "GET", "/metrics").decode()
        scrape = re.search(r"^vessel_scrape_duration_seconds ([\d.e+-]+)$", body, re.M)
        return {"vms_defined": vms, "bytes": len(body), "lines": body.count("\n"),
                "python_ms": common.summary([x * 1000 for x in py], 3),
                "curl_ms": common.summary([x * 1000 for x in curl], 3) if curl else None,
                "scrape_duration_ms": round(float(scrape.group(1)) * 1000, 4) if scrape else None,
                "daemon_rss_mib": round(d.rss_kib() / 1024, 1)}
    finally:
        d.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vessel", default=common.default_vessel())
    ap.add_argument("--guest-dir", default=common.default_guest())
    ap.add_argument("--examples", default=default_examples())
    ap.add_argument("--vms", type=int, default=200)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print only JSON")
    a = ap.parse_args()
    common.raise_on_sigterm()
    for ex in ("sample", "render"):
        if not os.path.exists(os.path.join(a.examples, ex)):
            raise SystemExit(f"{a.examples}/{ex} not found; build it with "
                             "`cargo build --release -p vessel-metrics --examples`")
    r = {"sample": run_sample(a.examples, a.repeat), "render": run_render(a.examples, a.repeat)}
    r["daemon"] = run_daemon(os.path.abspath(a.vessel), a.guest_dir, a.vms, a.requests)
    print(json.dumps(r, indent=2))
    if not a.json:
        print(f"\nsample: {r['sample']['us_per_vm_sample']['median']} µs per VM -> "
              f"{r['sample']['pct_core_50_vms_every_5s']}% of a core for 50 VMs every 5 s")
        print(f"render 200 synthetic VMs: median {r['render']['median_ms']['median']} ms")
        print(f"GET /metrics, {a.vms} VMs defined: median {r['daemon']['python_ms']['median']} ms (Python), "
              f"{r['daemon']['curl_ms']['median'] if r['daemon']['curl_ms'] else '-'} ms (curl)")


if __name__ == "__main__":
    main()
