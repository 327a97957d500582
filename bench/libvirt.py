#!/usr/bin/env python3
"""Boot to guest userspace: Vessel vs libvirt (`virsh start`), same kernel, initramfs, QEMU, TCG.

Needs libvirt (see shared host-facts: libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients;
virtlogd and libvirtd running; qemu.conf user/group root). Usage:
    python3 bench/libvirt.py [--vessel target/release/vessel] [--runs 5]
Prints medians for virsh (q35), Vessel with q35 and Vessel with its default microvm.
"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time

import importlib.util

spec = importlib.util.spec_from_file_location("bench", os.path.join(os.path.dirname(__file__), "run.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

READY = b"VESSEL-GUEST-READY"

DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{guest}/vmlinuz</kernel>
    <initrd>{guest}/initramfs.img</initrd>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <serial type='file'><source path='{log}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def wait_for_ready(path, deadline):
    while time.time() < deadline:
        try:
            with open(path, "rb") as f:
                if READY in f.read():
                    return True
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    return False


class Virsh:
    """One libvirt domain, defined once, booted once per run."""

    def __init__(self, guest):
        self.tmp = tempfile.mkdtemp(prefix="vessel-virsh-")
        self.log = os.path.join(self.tmp, "serial.log")
        xml = os.path.join(self.tmp, "domain.xml")
        with open(xml, "w") as f:
            f.write(DOMAIN.format(name="vessel-bench", guest=guest, log=self.log))
        subprocess.run(["virsh", "-q", "define", xml], check=True, stdout=subprocess.DEVNULL)

    def boot(self):
        if os.path.exists(self.log):
            os.remove(self.log)
        t0 = time.perf_counter()
        subprocess.run(["virsh", "-q", "start", "vessel-bench"], check=True, stdout=subprocess.DEVNULL)
        if not wait_for_ready(self.log, time.time() + 120):
            raise RuntimeError("libvirt guest never reached READY")
        elapsed = time.perf_counter() - t0
        subprocess.run(["virsh", "-q", "destroy", "vessel-bench"], check=True, stdout=subprocess.DEVNULL)
        return elapsed

    def close(self):
        subprocess.run(["virsh", "-q", "undefine", "vessel-bench"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def libvirtd_rss_kib():
    pid = subprocess.run(["pidof", "libvirtd"], capture_output=True, text=True).stdout.split()
    if not pid:
        return None
    with open(f"/proc/{pid[0]}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vessel", default="target/release/vessel")
    ap.add_argument("--guest-dir", default=os.environ.get("VESSEL_TEST_GUEST_DIR", os.path.expanduser("~/.cache/vessel/test-guest")))
    ap.add_argument("--runs", type=int, default=9)
    a = ap.parse_args()
    virsh = Virsh(a.guest_dir)
    d = bench.Daemon(os.path.abspath(a.vessel))
    times = {"virsh": [], "q35": [], "microvm": []}
    try:
        for machine in ("q35", "microvm"):
            body = bench.vm_body(f"cmp-{machine}", a.guest_dir)
            body["machine"] = machine
            bench.api(d.sock, "POST", "/v1/vms", body)
        # Interleaved, so that drift in the host's speed hits all three alike.
        for _ in range(a.runs):
            times["virsh"].append(virsh.boot())
            times["q35"].append(bench.vessel_boot_once(d, "cmp-q35"))
            times["microvm"].append(bench.vessel_boot_once(d, "cmp-microvm"))
    finally:
        d.close()
        virsh.close()
    med = lambda xs: round(statistics.median(xs) * 1000)
    print({"virsh_start_to_ready_ms": med(times["virsh"]), "vessel_q35_ms": med(times["q35"]),
           "vessel_microvm_ms": med(times["microvm"]), "runs_ms": {k: [round(x * 1000) for x in v] for k, v in times.items()},
           "libvirtd_rss_kib": libvirtd_rss_kib()})


if __name__ == "__main__":
    main()
