#!/usr/bin/env python3
"""Vessel benchmark: storage through the daemon — VM create with a linked clone of an image, and
image import throughput vs `cp`.

Usage: python3 bench/storage.py [--vessel PATH] [--runs N] [--import-runs N] [--size-mib N]
                                [--data-mib N] [--dir DIR] [--skip-import]

--vessel defaults to $VESSEL_BIN, else $CARGO_TARGET_DIR/release/vessel, else target/release/vessel
(build it with `cargo build --release -p vessel`). A release daemon runs on a fresh data dir under
--dir (default: a temp dir; the pool, the sources and the `cp` copies are all on that one file
system) and is driven over its unix socket.

(a) VM create from an image (target: <= 50 ms median). The image is a --size-mib (1 GiB) qcow2 with
    --data-mib (500 MiB) of written data, imported with the API. Each run creates a stopped VM
    `--image IMG` (the root disk is a linked clone: a qcow2 overlay, `<vm>-root`). Timed: the
    `POST /v1/vms` call from Python (request to response, no process start), and separately the
    `vessel vm create` CLI's wall time (process start and all). For comparison, a few full clones
    (`full_clone: true`: a copy of the image's data) through the API.
(b) Image import of a --size-mib file of random bytes (no zero blocks to skip) vs `cp` and
    `cp` + `sync FILE` of the same file on the same disk. The import reads the file, writes it
    into the pool, computes its SHA-256 in the same pass, fsyncs, then checks it with qemu-img.
    Each run alternates cp, cp+sync, the API call (`POST /v1/images`, waiting for the result) and
    `vessel image import` (which follows the operation, polling every 250 ms, so its wall time is
    rounded up to the poll); `sync` between runs. Also the API call for a 1 MiB file: the fixed
    cost of an import operation. The page cache is warm (the source fits in
    memory): this measures the copy machinery, not the disk.

bench/import.py measures the same import without the daemon (the vessel-storage example binary);
bench/snapshot.py measures snapshots of a running VM (not repeated here).

Prints JSON, then Markdown tables (paste into docs/benchmarks.md).
"""
import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

MIB = 1 << 20


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout=600):
        super().__init__("vessel", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
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


def timed_api(sock, method, path, body=None):
    """One API call on a fresh connection; seconds from sending the request to the whole response
    (the connect is made before the clock starts)."""
    conn = UnixHTTP(sock)
    conn.connect()
    data = json.dumps(body).encode() if body is not None else None
    t0 = time.perf_counter()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = resp.read()
    elapsed = time.perf_counter() - t0
    conn.close()
    if resp.status >= 300:
        raise RuntimeError(f"{method} {path}: {resp.status} {payload[:300]!r}")
    return elapsed, (json.loads(payload) if payload else None)


class Daemon:
    def __init__(self, vessel, work):
        self.vessel = vessel
        self.dir = os.path.join(work, "daemon")
        os.makedirs(self.dir)
        self.sock = os.path.join(self.dir, "vessel.sock")
        self.log = open(os.path.join(self.dir, "daemon.log"), "w")
        self.proc = subprocess.Popen(
            [vessel, "--socket", self.sock, "daemon", "--data-dir", os.path.join(self.dir, "data")],
            stdout=subprocess.DEVNULL, stderr=self.log, env={**os.environ, "VESSEL_LOG": "warn"})
        deadline = time.time() + 30
        while True:
            try:
                api(self.sock, "GET", "/v1/host")
                break
            except (FileNotFoundError, ConnectionRefusedError, RuntimeError):
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"daemon did not start; see {self.log.name}")
                time.sleep(0.01)

    def cli(self, *args):
        return subprocess.run([self.vessel, "--socket", self.sock, *args], check=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def timed_cli(self, *args):
        t0 = time.perf_counter()
        out = self.cli(*args)
        return time.perf_counter() - t0, out

    def close(self):
        self.proc.kill()
        self.proc.wait()


def stats_ms(xs):
    xs = sorted(xs)
    return {
        "median_ms": round(statistics.median(xs) * 1000, 2),
        "p90_ms": round(xs[min(len(xs) - 1, int(len(xs) * 0.9))] * 1000, 2),
        "min_ms": round(xs[0] * 1000, 2),
        "max_ms": round(xs[-1] * 1000, 2),
        "runs": len(xs),
    }


def sha256sum(path):
    return subprocess.run(["sha256sum", path], check=True, capture_output=True,
                          text=True).stdout.split()[0]


def make_qcow2_image(path, size_mib, data_mib):
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, f"{size_mib}M"], check=True)
    # Written in 64 MiB steps with a changing pattern: real, allocated clusters.
    off = 0
    step = 64
    while off < data_mib:
        n = min(step, data_mib - off)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                        f"write -P {0x41 + (off // step) % 26} {off}M {n}M", path],
                       check=True, stdout=subprocess.DEVNULL)
        off += n
    subprocess.run(["sync"], check=True)


def make_random_file(path, size_mib):
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MIB))
    subprocess.run(["sync"], check=True)


def bench_create(d, work, runs, size_mib, data_mib, full_runs):
    src = os.path.join(work, "base.qcow2")
    make_qcow2_image(src, size_mib, data_mib)
    image = api(d.sock, "POST", "/v1/images", {"name": "base", "source": src})
    body = lambda name, **kw: {"name": name, "cpus": 1, "memory_mib": 128, "image": "base", **kw}

    # One untimed create of each kind warms the daemon's code paths.
    api(d.sock, "POST", "/v1/vms", body("warm-api"))
    d.cli("vm", "create", "warm-cli", "--image", "base", "--memory", "128M")

    api_s, cli_s = [], []
    for i in range(runs):
        # Alternate so that any drift (pool directory growth, store size) hits both alike.
        seconds, vm = timed_api(d.sock, "POST", "/v1/vms", body(f"lc{i}"))
        assert vm["state"] == "stopped", vm
        api_s.append(seconds)
        seconds, _ = d.timed_cli("vm", "create", f"cli{i}", "--image", "base", "--memory", "128M")
        cli_s.append(seconds)
    root = api(d.sock, "GET", "/v1/pools/default/volumes/lc0-root")
    assert root.get("backing_volume") == "base", root

    full_s = []
    for i in range(full_runs):
        seconds, _ = timed_api(d.sock, "POST", "/v1/vms", body(f"full{i}", full_clone=True))
        full_s.append(seconds)
    full_root = api(d.sock, "GET", "/v1/pools/default/volumes/full0-root") if full_runs else None
    # The CLI's own cost: a request that does nothing (GET of one VM).
    noop_s = [d.timed_cli("vm", "show", "lc0", "--output", "json")[0] for _ in range(runs)]
    return {
        "image": {"virtual_mib": image["virtual_bytes"] // MIB,
                  "allocated_mib": image["allocated_bytes"] // MIB},
        "linked_clone_root": {"virtual_mib": root["virtual_bytes"] // MIB,
                              "allocated_kib": root["allocated_bytes"] // 1024},
        "api_create_linked": stats_ms(api_s),
        "cli_create_linked": stats_ms(cli_s),
        "cli_vm_show_noop": stats_ms(noop_s),
        "api_create_full_clone": stats_ms(full_s) if full_s else None,
        "full_clone_root_allocated_mib": full_root["allocated_bytes"] // MIB if full_root else None,
    }


def run_cp(src, dst, sync):
    t0 = time.perf_counter()
    subprocess.run(["cp", src, dst], check=True)
    if sync:
        subprocess.run(["sync", dst], check=True)
    seconds = time.perf_counter() - t0
    os.remove(dst)
    subprocess.run(["sync"], check=True)
    return seconds


def bench_import(d, work, runs, size_mib):
    src = os.path.join(work, "source.raw")
    dst = os.path.join(work, "copy.raw")
    make_random_file(src, size_mib)
    size = os.path.getsize(src)
    digest = sha256sum(src)

    def via_api(name):
        seconds, image = timed_api(d.sock, "POST", "/v1/images", {"name": name, "source": src})
        assert image["sha256"] == digest, image
        api(d.sock, "DELETE", f"/v1/images/{name}")
        subprocess.run(["sync"], check=True)
        return seconds

    def via_cli(name):
        seconds, out = d.timed_cli("--output", "json", "image", "import", name, src)
        assert json.loads(out.stdout)["sha256"] == digest, out.stdout
        api(d.sock, "DELETE", f"/v1/images/{name}")
        subprocess.run(["sync"], check=True)
        return seconds

    # Warm the page cache and every path once, untimed.
    run_cp(src, dst, sync=False)
    via_api("warm")

    # The fixed cost of an import operation, whatever its size: a 1 MiB file.
    tiny = os.path.join(work, "tiny.raw")
    make_random_file(tiny, 1)
    tiny_s = []
    for i in range(runs):
        seconds, _ = timed_api(d.sock, "POST", "/v1/images", {"name": f"tiny{i}", "source": tiny})
        api(d.sock, "DELETE", f"/v1/images/tiny{i}")
        tiny_s.append(seconds)

    cp, cp_sync, imp_api, imp_cli = [], [], [], []
    for i in range(runs):
        cp.append(run_cp(src, dst, sync=False))
        cp_sync.append(run_cp(src, dst, sync=True))
        imp_api.append(via_api(f"api{i}"))
        imp_cli.append(via_cli(f"cli{i}"))
    med = {k: statistics.median(v) for k, v in
           {"cp": cp, "cp_sync": cp_sync, "import_api": imp_api, "import_cli": imp_cli}.items()}
    return {
        "size_mib": size // MIB,
        "runs": runs,
        "seconds": {"cp": cp, "cp_sync": cp_sync, "import_api": imp_api, "import_cli": imp_cli},
        "median_seconds": med,
        "median_mib_per_s": {k: size / MIB / v for k, v in med.items()},
        "import_api_vs_cp": med["cp"] / med["import_api"],
        "import_api_vs_cp_sync": med["cp_sync"] / med["import_api"],
        "import_1mib_api": stats_ms(tiny_s),
    }


def default_vessel():
    if os.environ.get("VESSEL_BIN"):
        return os.environ["VESSEL_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    return os.path.join(target, "release", "vessel")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vessel", default=default_vessel())
    ap.add_argument("--runs", type=int, default=20, help="VM creates per kind")
    ap.add_argument("--full-runs", type=int, default=3, help="full-clone creates (0: none)")
    ap.add_argument("--import-runs", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--data-mib", type=int, default=500)
    ap.add_argument("--dir", default=None, help="where everything goes (default: a temp dir)")
    ap.add_argument("--skip-import", action="store_true")
    a = ap.parse_args()
    vessel = os.path.abspath(a.vessel)
    if not os.path.exists(vessel):
        raise SystemExit(f"{vessel} not found; build it with `cargo build --release -p vessel`")
    work = tempfile.mkdtemp(prefix="vessel-bench-storage-", dir=a.dir)
    d = Daemon(vessel, work)
    results = {}
    try:
        results["create"] = bench_create(d, work, a.runs, a.size_mib, a.data_mib, a.full_runs)
        if not a.skip_import:
            results["import"] = bench_import(d, work, a.import_runs, a.size_mib)
    finally:
        d.close()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))

    c = results["create"]
    print()
    print(f"VM create from a {c['image']['virtual_mib']} MiB image "
          f"({c['image']['allocated_mib']} MiB allocated), stopped, {c['api_create_linked']['runs']} runs:")
    print()
    print("| | median ms | p90 ms | min ms | max ms |")
    print("| --- | --- | --- | --- | --- |")
    for label, key in [("linked clone, API call (`POST /v1/vms`)", "api_create_linked"),
                       ("linked clone, `vessel vm create` wall time", "cli_create_linked"),
                       ("`vessel vm show` wall time (CLI floor)", "cli_vm_show_noop"),
                       ("full clone, API call (for comparison)", "api_create_full_clone")]:
        s = c[key]
        if s:
            print(f"| {label} | {s['median_ms']} | {s['p90_ms']} | {s['min_ms']} | {s['max_ms']} |")
    if "import" in results:
        r = results["import"]
        med = r["median_seconds"]
        print()
        print(f"| {r['size_mib']} MiB, random data, warm cache, median of {r['runs']} | seconds | MiB/s | vs cp |")
        print("| --- | --- | --- | --- |")
        for label, key in [("`cp`", "cp"), ("`cp` + `sync FILE`", "cp_sync"),
                           ("import, API call (copy + SHA-256 + fsync + qemu-img check)", "import_api"),
                           ("`vessel image import` wall time (polls every 250 ms)", "import_cli")]:
            print(f"| {label} | {med[key]:.3f} | {r['median_mib_per_s'][key]:.0f} | "
                  f"{med['cp'] / med[key] * 100:.0f}% |")
        t = r["import_1mib_api"]
        print()
        print(f"Import of a 1 MiB file (the fixed cost of an import), API call: median "
              f"{t['median_ms']} ms (min {t['min_ms']}, max {t['max_ms']}, {t['runs']} runs).")


if __name__ == "__main__":
    main()
