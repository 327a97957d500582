#!/usr/bin/env python3
"""Scheduler: placements per second and packing quality on synthetic clusters (issue 16).

Usage: python3 bench/scheduler.py [--examples DIR] [--hosts 1000,10000] [--vms 100000]
                                  [--runs 5] [--seed 1] [--json]

Builds nothing: runs the release example of the vessel-scheduler crate
(cargo build --release -p vessel-scheduler --example place_bench), which prints JSON, and
adds the verdicts against the issue's targets. For each cluster size (identical hosts: 96 CPUs,
768 GiB; default overcommit 4.0 CPU, 1.0 memory) and each strategy, --runs fresh clusters take the
same --vms requests of mixed sizes one at a time (place, then apply; only that loop is timed).
Two scenarios: "mixed" (sizes only) and "constrained" (the same sizes, with pools, labels,
anti-affinity and affinity groups, 2% of hosts in maintenance). Figures: placements/s (median,
min, max over the runs), hosts used, the lower bound (the larger of total vCPU demand / vCPUs per
host and total memory demand / memory per host, rounded up) and the percentage over it.
Targets (issue 16): >= 5,000 placements/s at 10,000 hosts; pack within 3% of the lower bound.
"""
import argparse
import json
import os
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "examples"))
    ap.add_argument("--hosts", default="1000,10000")
    ap.add_argument("--vms", type=int, default=100000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    binary = os.path.join(a.examples, "place_bench")
    if not os.path.exists(binary):
        raise SystemExit(f"{binary} not found; build it with "
                         "`cargo build --release -p vessel-scheduler --example place_bench`")
    out = subprocess.run([binary, "--hosts", a.hosts, "--vms", str(a.vms), "--runs", str(a.runs),
                          "--seed", str(a.seed)], check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    for r in result["results"]:
        r["rate_target_met"] = r["placements_per_s"]["median"] >= 5000 if r["hosts"] >= 10000 else None
        r["packing_target_met"] = (r["over_bound_pct"] <= 3.0 and r["refused"] == 0) \
            if r["strategy"] == "pack" and r["scenario"] == "mixed" else None
    if a.json:
        print(json.dumps(result, indent=2))
        return
    for r in result["results"]:
        print(f"{r['scenario']:12} {r['hosts']:>6} hosts {r['strategy']:6} "
              f"{r['placements_per_s']['median']:>9.0f} placements/s "
              f"(min {r['placements_per_s']['min']:.0f}, max {r['placements_per_s']['max']:.0f}); "
              f"{r['hosts_used']} hosts used, bound {r['lower_bound']} ({r['over_bound_pct']:+.2f}%), "
              f"{r['refused']} refused", file=sys.stdout)


if __name__ == "__main__":
    main()
