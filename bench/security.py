#!/usr/bin/env python3
"""Security: the cost of TLS + token authentication, and audit append throughput.

Usage: python3 bench/security.py [--vessel PATH] [--requests 2000] [--vms 20] [--writers 8]
                                 [--audited 20000] [--examples DIR] [--json]

Needs the release binary (cargo build --release -p vessel) and, for (c), the vessel-audit
example (cargo build --release -p vessel-audit --example append_bench).

(a) `GET /v1/vms` (--vms VMs defined, never started) over the unix socket and over TLS on
    loopback with a bearer token, each on one keep-alive connection, --requests times, the two
    interleaved in rounds of 100 so that drift hits both alike. Figures: p50 and p99 per path
    and the p99 overhead of TLS (target: <= 1 ms). Each TLS request is authenticated (token
    digest lookup, user lookup) and authorized (permission table) like any remote request.
(b) Audited requests through the daemon: --writers threads, each on its own keep-alive unix
    connection, send `POST /v1/projects` with an empty name (refused 400: nothing is created,
    but the request is appended to the audit log, hash chain and durable commit included, before
    the answer); records/s over --audited requests. This is the whole request path (HTTP,
    middleware, handler, append), so it is a lower bound of the log's own rate.
(c) The audit log alone (examples/append_bench: 20,000 records from 32 tasks into a SqliteStore on
    disk, group commit; target: >= 5,000 records/s).
"""
import argparse
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import api  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class TlsDaemon(common.Daemon):
    """A release daemon with the remote API on a loopback port."""

    def __init__(self, vessel):
        self.port = free_port()
        super().__init__(vessel)

    def start(self):
        with open(self.config, "w") as f:
            f.write(f"sample_interval_secs = {self.sample_interval_secs}\n")
            f.write(f'listen = "127.0.0.1:{self.port}"\n')
        self.log = open(os.path.join(self.work, "daemon.log"), "a")
        self.proc = subprocess.Popen(
            [self.vessel, "--socket", self.sock, "daemon", "--data-dir", self.data,
             "--config", self.config],
            stdout=subprocess.DEVNULL, stderr=self.log, env={**os.environ, "VESSEL_LOG": "warn"})
        deadline = time.time() + 120
        while True:
            try:
                api(self.sock, "GET", "/v1/host", timeout=5)
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except (FileNotFoundError, ConnectionRefusedError, RuntimeError, socket.timeout, OSError):
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"daemon did not start; see {self.log.name}")
                time.sleep(0.01)


def percentile(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p))]


def timed_get(conn, path, headers):
    t0 = time.perf_counter()
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    dt = time.perf_counter() - t0
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
    return dt


def latency(d, token, requests, vms):
    kernel = os.path.join(d.work, "fake-kernel")
    with open(kernel, "w") as f:
        f.write("never booted\n")
    for i in range(vms):
        api(d.sock, "POST", "/v1/vms", {"name": f"b{i}", "cpus": 1, "memory_mib": 64, "kernel": kernel})
    ctx = ssl.create_default_context(cafile=os.path.join(d.data, "tls", "ca.crt"))
    tls = http.client.HTTPSConnection("127.0.0.1", d.port, context=ctx, timeout=30)
    unix = common.UnixHTTP(d.sock, 30)
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(50):  # warm both connections (handshake, caches)
        timed_get(unix, "/v1/vms", {})
        timed_get(tls, "/v1/vms", auth)
    u, t = [], []
    done = 0
    while done < requests:
        n = min(100, requests - done)
        u += [timed_get(unix, "/v1/vms", {}) for _ in range(n)]
        t += [timed_get(tls, "/v1/vms", auth) for _ in range(n)]
        done += n
    ms = lambda v: round(v * 1000, 3)
    return {
        "requests": requests, "vms": vms,
        "unix_ms": {"p50": ms(percentile(u, 0.5)), "p99": ms(percentile(u, 0.99))},
        "tls_ms": {"p50": ms(percentile(t, 0.5)), "p99": ms(percentile(t, 0.99))},
        "p50_overhead_ms": ms(percentile(t, 0.5) - percentile(u, 0.5)),
        "p99_overhead_ms": ms(percentile(t, 0.99) - percentile(u, 0.99)),
    }


def audited(d, writers, total):
    per = total // writers
    errors = []

    def run():
        conn = common.UnixHTTP(d.sock, 60)
        body = json.dumps({"name": ""}).encode()
        try:
            for _ in range(per):
                conn.request("POST", "/v1/projects", body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 400:
                    errors.append(resp.status)
        except Exception as e:  # noqa: BLE001
            errors.append(str(e))

    before = len(api(d.sock, "GET", "/v1/audit?limit=1000000"))
    threads = [threading.Thread(target=run) for _ in range(writers)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    dt = time.perf_counter() - t0
    after = len(api(d.sock, "GET", "/v1/audit?limit=1000000"))
    if errors:
        raise RuntimeError(f"audited requests failed: {errors[:5]}")
    verify = api(d.sock, "GET", "/v1/audit/verify")
    return {"writers": writers, "requests": per * writers, "records_added": after - before,
            "seconds": round(dt, 3), "records_per_s": round((after - before) / dt),
            "chain_intact": not verify["issues"], "records_verified": verify["records"]}


def append_bench(examples):
    path = os.path.join(examples, "append_bench")
    if not os.path.exists(path):
        return {"skipped": f"{path} not built"}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        out = subprocess.run([path, "20000", "32", tmp], check=True, capture_output=True, text=True).stdout
    m = re.search(r"([\d.]+) records/s", out)
    return {"records_per_s": float(m.group(1)) if m else None, "output": out.strip()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vessel", default=common.default_vessel())
    ap.add_argument("--examples", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "examples"))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--vms", type=int, default=20)
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--audited", type=int, default=20000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    d = TlsDaemon(a.vessel)
    try:
        api(d.sock, "POST", "/v1/users", {"name": "bench", "grants": [{"project": "*", "role": "viewer"}]})
        token = api(d.sock, "POST", "/v1/tokens", {"user": "bench"})["secret"]
        result = {
            "get_vms": latency(d, token, a.requests, a.vms),
            "audited_requests": audited(d, a.writers, a.audited),
            "append_library": append_bench(a.examples),
        }
    finally:
        d.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
