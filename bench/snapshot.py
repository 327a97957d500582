#!/usr/bin/env python3
"""Vessel benchmark: snapshots of a running VM (QEMU 7.2, TCG, the Vessel test guest).

Usage: python3 bench/snapshot.py [--guest-dir DIR] [--runs N] [--mem-runs N] [--data-mib N] [--json]

The VM is the test guest (q35, 1 vCPU, 128 MiB, direct kernel boot) with a 1 GiB qcow2 data disk on
the virtio-scsi controller, as Vessel starts it, holding --data-mib MiB of written data. The QMP
commands are the ones vessel-qemu's snapshot functions send (crates/vessel-qemu/src/snapshot.rs):

- disk-only snapshot: `query-named-block-nodes` (Vessel's check that every disk is qcow2 and the
  tag is new), then a `transaction` of `blockdev-snapshot-internal-sync`. The guest's pause is the
  transaction: QEMU drains the disk's IO and holds its big lock (vCPUs that exit to QEMU wait on
  it) for the command; it does not stop the VM (no STOP/RESUME events), so the pause is measured
  as the command's wall time on the host (an upper bound: it includes the QMP round trip), once
  with the guest idle and once with the guest writing to the disk the whole time.
- snapshot with memory: the `snapshot-save` job (awaited through JOB_STATUS_CHANGE events). QEMU
  stops the VM for the whole save; the pause is RESUME minus STOP from the events' own
  timestamps (microseconds, QEMU's host clock).
- delete: `blockdev-snapshot-delete-internal-sync` (not a pause: reported for completeness).

Prints JSON: medians (and min/max) in milliseconds. --json is accepted for uniformity with the
other scripts (bench/all.py): the output is JSON either way.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

READY = b"VESSEL-GUEST-READY"


class Qmp:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.f = self.sock.makefile("rwb")
        self.events = []
        self.f.readline()  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name, args=None):
        msg = {"execute": name}
        if args is not None:
            msg["arguments"] = args
        self.f.write((json.dumps(msg) + "\n").encode())
        self.f.flush()
        while True:
            reply = json.loads(self.f.readline())
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise RuntimeError(f"{name}: {reply['error']}")
            return reply["return"]

    def wait_event(self, pred, timeout=300):
        deadline = time.time() + timeout
        while True:
            for i, e in enumerate(self.events):
                if pred(e):
                    return self.events.pop(i)
            if time.time() > deadline:
                raise RuntimeError("event did not arrive")
            self.sock.settimeout(max(0.01, deadline - time.time()))
            line = self.f.readline()
            self.sock.settimeout(None)
            if line:
                self.events.append(json.loads(line))


class Vm:
    def __init__(self, guest_dir, disk, tmp, memory_mib=128):
        self.qmp_path = os.path.join(tmp, "qmp.sock")
        self.con_path = os.path.join(tmp, "console.sock")
        blockdev = {"driver": "qcow2", "node-name": "vd0", "read-only": False,
                    "file": {"driver": "file", "filename": disk}}
        device = {"driver": "scsi-hd", "bus": "scsi0.0", "drive": "vd0", "id": "vd0-dev", "serial": "data"}
        self.proc = subprocess.Popen([
            "qemu-system-x86_64", "-no-user-config", "-nodefaults", "-display", "none", "-S",
            "-machine", "q35", "-accel", "tcg", "-smp", "1", "-m", f"{memory_mib}M",
            "-chardev", f"socket,id=qmp,path={self.qmp_path},server=on,wait=off",
            "-mon", "chardev=qmp,mode=control",
            "-chardev", f"socket,id=console,path={self.con_path},server=on,wait=off",
            "-serial", "chardev:console", "-device", "pvpanic",
            "-kernel", os.path.join(guest_dir, "vmlinuz"),
            "-initrd", os.path.join(guest_dir, "initramfs.img"),
            "-append", "console=ttyS0 quiet vessel.noecho",
            "-device", "virtio-scsi-pci,id=scsi0",
            "-blockdev", json.dumps(blockdev), "-device", json.dumps(device),
        ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while not (os.path.exists(self.qmp_path) and os.path.exists(self.con_path)):
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("QEMU did not start")
            time.sleep(0.01)
        self.qmp = Qmp(self.qmp_path)
        self.con = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.con.connect(self.con_path)
        self.out = b""
        self.qmp.cmd("cont")
        self.console_wait(READY, 180)

    def console_wait(self, needle, timeout=60):
        deadline = time.time() + timeout
        start = len(self.out)
        while needle not in self.out[start - len(needle) if start > len(needle) else 0:]:
            if time.time() > deadline:
                raise RuntimeError(f"guest did not print {needle!r}")
            self.con.settimeout(1)
            try:
                data = self.con.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise RuntimeError("console closed")
            self.out += data

    def type(self, line):
        self.con.sendall(line.encode() + b"\n")

    def close(self):
        self.proc.kill()
        self.proc.wait()


def stats(xs):
    return {"median_ms": round(statistics.median(xs) * 1000, 2),
            "min_ms": round(min(xs) * 1000, 2), "max_ms": round(max(xs) * 1000, 2), "runs": len(xs)}


def disk_snapshot(vm, tag):
    """What vessel-qemu's snapshot_disks does; returns (total, transaction) seconds."""
    t0 = time.perf_counter()
    nodes = vm.qmp.cmd("query-named-block-nodes", {"flat": True})
    node = next(n for n in nodes if n["node-name"] == "vd0")
    assert node["drv"] == "qcow2"
    assert all(s["name"] != tag for s in node.get("image", {}).get("snapshots", []))
    t1 = time.perf_counter()
    vm.qmp.cmd("transaction", {"actions": [
        {"type": "blockdev-snapshot-internal-sync", "data": {"device": "vd0", "name": tag}}]})
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def delete_snapshot(vm, tag):
    t0 = time.perf_counter()
    vm.qmp.cmd("blockdev-snapshot-delete-internal-sync", {"device": "vd0", "name": tag})
    return time.perf_counter() - t0


def memory_snapshot(vm, tag):
    """snapshot-save as vessel-qemu runs it; returns (job wall time, STOP->RESUME pause)."""
    vm.qmp.events.clear()
    t0 = time.perf_counter()
    vm.qmp.cmd("snapshot-save", {"job-id": "vessel-snapshot-save", "tag": tag,
                                 "vmstate": "vd0", "devices": ["vd0"]})
    vm.qmp.wait_event(lambda e: e["event"] == "JOB_STATUS_CHANGE" and e["data"]["status"] == "concluded")
    total = time.perf_counter() - t0
    jobs = vm.qmp.cmd("query-jobs")
    job = next(j for j in jobs if j["id"] == "vessel-snapshot-save")
    if "error" in job:
        raise RuntimeError(job["error"])
    vm.qmp.cmd("job-dismiss", {"id": "vessel-snapshot-save"})
    stop = vm.qmp.wait_event(lambda e: e["event"] == "STOP")
    resume = vm.qmp.wait_event(lambda e: e["event"] == "RESUME")
    us = lambda e: e["timestamp"]["seconds"] * 1_000_000 + e["timestamp"]["microseconds"]
    return total, (us(resume) - us(stop)) / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--guest-dir", default=os.environ.get(
        "VESSEL_TEST_GUEST_DIR", os.path.expanduser("~/.cache/vessel/test-guest")))
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--mem-runs", type=int, default=5)
    ap.add_argument("--data-mib", type=int, default=500)
    ap.add_argument("--json", action="store_true", help="print only JSON (the default output already is)")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="vessel-snapbench-")
    results = {"qemu": subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                                      text=True).stdout.splitlines()[0]}
    try:
        disk = os.path.join(tmp, "data.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "1G"], check=True)
        t0 = time.perf_counter()
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {a.data_mib}M", disk],
                       check=True, stdout=subprocess.DEVNULL)
        results["setup"] = {"data_mib": a.data_mib, "write_s": round(time.perf_counter() - t0, 2)}
        vm = Vm(a.guest_dir, disk, tmp)
        try:
            totals, pauses, deletes = [], [], []
            for i in range(a.runs):
                total, pause = disk_snapshot(vm, f"idle{i}")
                totals.append(total)
                pauses.append(pause)
            for i in range(a.runs):
                deletes.append(delete_snapshot(vm, f"idle{i}"))
            results["disk_only_idle"] = {"create_total": stats(totals), "guest_pause": stats(pauses),
                                         "delete": stats(deletes)}

            # The guest writes to the disk the whole time (1 MiB blocks, flushed).
            vm.type("while :; do dd if=/dev/zero of=/dev/sda bs=1M count=32 seek=600 conv=fsync "
                    "2>/dev/null; done &")
            time.sleep(2)
            totals, pauses = [], []
            for i in range(a.runs):
                total, pause = disk_snapshot(vm, f"busy{i}")
                totals.append(total)
                pauses.append(pause)
                time.sleep(0.2)
            vm.type("kill %1; awk '$3 == \"sda\" { print \"SDA-WRITTEN-MIB\", int($10 / 2048) }' /proc/diskstats")
            vm.console_wait(b"SDA-WRITTEN-MIB")
            vm.console_wait(b"\n")
            written = int(vm.out.split(b"SDA-WRITTEN-MIB")[-1].split()[0])
            results["disk_only_guest_writing"] = {"create_total": stats(totals), "guest_pause": stats(pauses),
                                                  "guest_wrote_mib": written}
            for i in range(a.runs):
                delete_snapshot(vm, f"busy{i}")

            vm.type("echo QUIET-$((1+1))")
            vm.console_wait(b"QUIET-2")
            totals, pauses = [], []
            for i in range(a.mem_runs):
                total, pause = memory_snapshot(vm, f"mem{i}")
                totals.append(total)
                pauses.append(pause)
            info = vm.qmp.cmd("query-named-block-nodes", {"flat": True})
            snaps = next(n for n in info if n["node-name"] == "vd0")["image"]["snapshots"]
            state = [s["vm-state-size"] for s in snaps if s["name"].startswith("mem")]
            results["memory_128mib"] = {"save_total": stats(totals), "guest_pause": stats(pauses),
                                        "vm_state_mib": round(statistics.median(state) / 2**20, 1)}
        finally:
            vm.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
