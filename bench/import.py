#!/usr/bin/env python3
"""Vessel benchmark: image import throughput vs `cp` of the same file on the same disk.

Usage: python3 bench/import.py [--example PATH] [--size-mib N] [--runs N] [--dir DIR] [--json]

Builds nothing: pass the release example binary (default
$CARGO_TARGET_DIR/release/examples/import, else target/release/examples/import), built with
`cargo build --release -p vessel-storage --example import`.

The source is a file of random (non-zero) bytes, so the import's zero-block skipping does not
help it. Each run alternates `cp SRC DST`, `cp SRC DST; sync DST` and the import (which reads the
file, writes it, computes its SHA-256 in the same pass, fsyncs it, then validates it with
qemu-img), with `sync` between runs so that one run's dirty pages do not slow the next. The page
cache is warm for all of them (the source fits in memory): this measures the copy machinery, not
the disk. Prints JSON and a Markdown table; with --json only the JSON (for bench/all.py).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

MIB = 1 << 20


def default_example():
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    return os.path.join(target, "release", "examples", "import")


def make_source(path, size_mib):
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MIB))
    subprocess.run(["sync"], check=True)


def timed(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_cp(src, dst, sync):
    start = time.perf_counter()
    subprocess.run(["cp", src, dst], check=True)
    if sync:
        subprocess.run(["sync", dst], check=True)
    seconds = time.perf_counter() - start
    os.remove(dst)
    subprocess.run(["sync"], check=True)
    return seconds


def run_import(example, src, pool_dir):
    out = subprocess.run([example, src, pool_dir], check=True, capture_output=True, text=True)
    subprocess.run(["sync"], check=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--example", default=default_example())
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where the files go (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print only JSON")
    args = ap.parse_args()
    if not os.path.exists(args.example):
        raise SystemExit(
            f"{args.example} not found; build it with "
            "`cargo build --release -p vessel-storage --example import`"
        )
    work = tempfile.mkdtemp(prefix="vessel-bench-import-", dir=args.dir)
    try:
        src = os.path.join(work, "source.img")
        dst = os.path.join(work, "copy.img")
        pool_dir = os.path.join(work, "pool")
        make_source(src, args.size_mib)
        size = os.path.getsize(src)
        # Warm the page cache and both code paths once, untimed.
        run_cp(src, dst, sync=False)
        run_import(args.example, src, pool_dir)

        cp, cp_sync, imp, imp_copy = [], [], [], []
        digest = None
        for _ in range(args.runs):
            cp.append(run_cp(src, dst, sync=False))
            cp_sync.append(run_cp(src, dst, sync=True))
            r = run_import(args.example, src, pool_dir)
            imp.append(r["seconds"])
            imp_copy.append(r["copy_seconds"])
            digest = r["sha256"]
        expected = subprocess.run(
            ["sha256sum", src], check=True, capture_output=True, text=True
        ).stdout.split()[0]
        assert digest == expected, f"import digest {digest} != sha256sum {expected}"

        def mibps(seconds):
            return size / MIB / seconds

        med = {k: statistics.median(v) for k, v in
               {"cp": cp, "cp_sync": cp_sync, "import": imp, "import_copy": imp_copy}.items()}
        results = {
            "size_mib": size // MIB,
            "runs": args.runs,
            "seconds": {"cp": cp, "cp_sync": cp_sync, "import": imp, "import_copy_phase": imp_copy},
            "median_seconds": med,
            "median_mib_per_s": {k: mibps(v) for k, v in med.items()},
            "ratio_import_vs_cp": med["cp"] / med["import"],
            "ratio_import_vs_cp_sync": med["cp_sync"] / med["import"],
        }
        print(json.dumps(results, indent=2))
        if args.json:
            return
        print()
        print(f"| {size // MIB} MiB, random data, warm cache, median of {args.runs} | seconds | MiB/s | vs cp |")
        print("| --- | --- | --- | --- |")
        for label, key in [
            ("`cp`", "cp"),
            ("`cp` + `sync FILE`", "cp_sync"),
            ("import: copy + SHA-256 + fsync (copy phase)", "import_copy"),
            ("import: whole call (+ qemu-img validation)", "import"),
        ]:
            print(f"| {label} | {med[key]:.3f} | {mibps(med[key]):.0f} | "
                  f"{med['cp'] / med[key] * 100:.0f}% |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
